//! Encode and decode in each mode, beside one AES-128 block encryption measured in the same run,
//! so results read as "cost in AES blocks". Run: `cargo bench -p quic-lb --bench codec`.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use aes::cipher::{BlockEncrypt, KeyInit};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use quic_lb::{Codec, Config};

const KEY: [u8; 16] = [0x8f; 16];

fn cases() -> Vec<(&'static str, Config)> {
    vec![
        ("plaintext_3_4", Config::new(0, 3, 4, None).unwrap()),
        ("single_pass_8_8", Config::new(0, 8, 8, Some(KEY)).unwrap()),
        // server ID no longer than the nonce: three passes for the server ID
        ("four_pass_3_4", Config::new(0, 3, 4, Some(KEY)).unwrap()),
        // server ID longer than the nonce: four passes
        ("four_pass_10_5", Config::new(0, 10, 5, Some(KEY)).unwrap()),
    ]
}

fn bench(c: &mut Criterion) {
    let aes = aes::Aes128::new(&KEY.into());
    let mut block = aes::Block::default();
    c.bench_function("aes128_block", |b| {
        b.iter(|| {
            aes.encrypt_block(black_box(&mut block));
        })
    });
    for (name, config) in cases() {
        let codec = Codec::new(config);
        let sid = vec![0x11; config.server_id_len()];
        let nonce = vec![0x22; config.nonce_len()];
        let mut cid = [0u8; 20];
        let n = codec.encode(&sid, &nonce, 0, &mut cid).unwrap();
        c.bench_function(&format!("encode/{name}"), |b| {
            b.iter(|| {
                codec
                    .encode(black_box(&sid), black_box(&nonce), 0, &mut cid)
                    .unwrap()
            })
        });
        let cid = cid;
        c.bench_function(&format!("decode/{name}"), |b| {
            b.iter(|| codec.decode(black_box(&cid[..n])).unwrap())
        });
        c.bench_function(&format!("decode_server_id/{name}"), |b| {
            b.iter(|| codec.decode_server_id(black_box(&cid[..n])).unwrap())
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
