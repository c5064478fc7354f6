//! Steering cost per datagram: the Rust twin of the BPF rule (`steer::owner_shard`, which every
//! shard runs on every datagram of the shared port to decide on a handoff) and the same rule in
//! the in-repo classic BPF interpreter (an upper bound of the kernel's program, which the kernel
//! JIT-compiles). Run: `cargo bench -p quicshard --bench steer`.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use quicshard::cid::CidConfig;
use quicshard::steer::{owner_shard, steering_program, ShardKey};
use quicshard::testing::run_bpf;

const SHARDS: usize = 4;

fn bench(c: &mut Criterion) {
    let key = ShardKey::from_bytes([0x5a; 16]);
    // The standalone layout (18-octet CIDs) and the longest one (20 octets).
    for (name, config, sid) in [
        (
            "single_pass_18",
            quic_lb::Config::new(0, 2, 14, Some([1; 16])).unwrap(),
            vec![1, 2],
        ),
        (
            "plaintext_20",
            quic_lb::Config::new(1, 4, 14, None).unwrap(),
            vec![1, 2, 3, 4],
        ),
    ] {
        let cfg = CidConfig::new(config, &sid, SHARDS)
            .unwrap()
            .with_shard_key(key);
        let cid_len = cfg.cid_len();
        let mut g = cfg.generator_seeded(3, 1);
        let cid = quinn_proto::ConnectionIdGenerator::generate_cid(&mut g);
        let short = [&[0x41][..], &cid, &[0u8; 1200][..]].concat();
        let long = [
            &[0xe0, 0, 0, 0, 1, cid_len as u8][..],
            &cid,
            &[0u8; 1200][..],
        ]
        .concat();
        assert_eq!(owner_shard(&short, cid_len, SHARDS, &key), Some(3));
        c.bench_function(&format!("owner_shard/short/{name}"), |b| {
            b.iter(|| owner_shard(black_box(&short), cid_len, SHARDS, &key))
        });
        c.bench_function(&format!("owner_shard/long/{name}"), |b| {
            b.iter(|| owner_shard(black_box(&long), cid_len, SHARDS, &key))
        });
        let program = steering_program(cid_len, SHARDS, &key);
        c.bench_function(&format!("bpf_interpreter/short/{name}"), |b| {
            b.iter(|| run_bpf(&program, black_box(&short)))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
