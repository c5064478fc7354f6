//! Stress: 32 app threads × 1000 short streams against a 4-shard server, all through handles.
//! Each stream carries (thread, sequence) and a payload derived from them; the server records
//! every (thread, sequence) it sees and echoes the stream; the client checks every echo. Nothing
//! may be lost or duplicated, within a bounded time.
//!
//! `QUICSHARD_STRESS_STREAMS` overrides the streams per thread (default 1000).

mod handles_common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handles_common::*;
use quicshard::handle::{ConnError, HandleConfig};
use quicshard::quinn_proto::VarInt;

const THREADS: u64 = 32;
const BOUND: Duration = Duration::from_secs(300);

fn body(thread: u64, seq: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + 200);
    v.extend_from_slice(&thread.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    let len = (seq * 37 + thread) % 200;
    v.extend((0..len).map(|i| pattern(thread * 1_000_003 + seq, i)));
    v
}

#[test]
fn thirty_two_threads_thousand_streams_each() {
    let streams: u64 = std::env::var("QUICSHARD_STRESS_STREAMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let end = Instant::now() + BOUND;
    let p = Arc::new(Pair::new(4, 2, HandleConfig::default()));
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let duplicates = Arc::new(Mutex::new(0u64));

    // server: one thread per connection, streams handled in order
    let srv = p.clone();
    let (seen2, dups2) = (seen.clone(), duplicates.clone());
    let acceptor = std::thread::spawn(move || {
        let mut workers = Vec::new();
        for _ in 0..THREADS {
            let conn = srv.server.accept_until(Some(end)).expect("accept");
            let (seen, dups) = (seen2.clone(), dups2.clone());
            workers.push(std::thread::spawn(move || loop {
                let (mut send, mut recv) = match conn.accept_bi_until(Some(end)) {
                    Ok(s) => s,
                    Err(ConnError::ConnectionLost(_)) => return,
                    Err(e) => panic!("server accept_bi: {e}"),
                };
                let req = recv
                    .read_to_end_until(1 << 16, Some(end))
                    .expect("server read");
                let key = (
                    u64::from_be_bytes(req[..8].try_into().unwrap()),
                    u64::from_be_bytes(req[8..16].try_into().unwrap()),
                );
                if !seen.lock().unwrap().insert(key) {
                    *dups.lock().unwrap() += 1;
                }
                send.write_all_until(&req, Some(end)).expect("server write");
            }));
        }
        for w in workers {
            w.join().unwrap();
        }
    });

    let clients: Vec<_> = (0..THREADS)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                let conn = p
                    .client
                    .connect_until(p.server.local_addr(), "localhost", Some(end))
                    .expect("connect");
                for seq in 0..streams {
                    let req = body(t, seq);
                    let (mut send, mut recv) = conn.open_bi_until(Some(end)).expect("open");
                    send.write_all_until(&req, Some(end)).expect("write");
                    send.finish().unwrap();
                    let back = recv.read_to_end_until(1 << 16, Some(end)).expect("read");
                    assert!(back == req, "thread {t} stream {seq}: echo differs");
                }
                conn.close(VarInt::from_u32(0), b"done");
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    acceptor.join().expect("server");
    assert!(Instant::now() < end, "over the time bound");
    let seen = seen.lock().unwrap();
    assert_eq!(*duplicates.lock().unwrap(), 0, "duplicated streams");
    assert_eq!(seen.len() as u64, THREADS * streams, "lost streams");
    for t in 0..THREADS {
        for s in 0..streams {
            assert!(
                seen.contains(&(t, s)),
                "stream ({t}, {s}) never reached the server"
            );
        }
    }
    let Ok(p) = Arc::try_unwrap(p) else {
        panic!("engines still shared")
    };
    let stats = p.server.shutdown(Duration::from_secs(5));
    let total = quicshard::ShardStats::sum(&stats);
    eprintln!("server: {total:?}");
    assert_eq!(total.connections_accepted, THREADS);
    assert!(
        stats.iter().all(|s| s.connections_accepted > 0),
        "every shard served"
    );
    p.client.shutdown(Duration::from_secs(5));
}
