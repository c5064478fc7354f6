//! Blocking handles with plain std threads: an echo server (a thread per connection, a thread
//! per stream, `std::io::copy`) and 8 client threads × 4 streams, each stream 256 KiB, every
//! byte checked. Exits 0 on success.
//!
//! `cargo run -p quicshard --example blocking_echo`

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use quicshard::handle::{ConnError, Connection};
use quicshard::quinn_proto::{TransportConfig, VarInt};
use quicshard::HandleEngine;

const CLIENTS: usize = 8;
const STREAMS: usize = 4;
const BYTES: usize = 256 * 1024;
/// Every blocking call gives up after this (an example must not hang).
const TIMEOUT: Duration = Duration::from_secs(60);

fn byte(client: usize, stream: usize, i: usize) -> u8 {
    (i.wrapping_mul(31) ^ client.wrapping_mul(7) ^ stream.wrapping_mul(13)) as u8
}

fn serve(conn: Connection) {
    conn.set_timeout(Some(TIMEOUT));
    let mut workers = Vec::new();
    loop {
        match conn.accept_bi() {
            Ok((mut send, mut recv)) => workers.push(std::thread::spawn(move || {
                send.set_timeout(Some(TIMEOUT));
                recv.set_timeout(Some(TIMEOUT));
                std::io::copy(&mut recv, &mut send).expect("echo");
                // dropping `send` finishes the stream
            })),
            // the client closes the connection when it has read everything
            Err(ConnError::ConnectionLost(_)) => break,
            Err(e) => panic!("accept_bi: {e}"),
        }
    }
    for w in workers {
        w.join().unwrap();
    }
}

fn main() {
    let mut transport = TransportConfig::default();
    transport.max_concurrent_bidi_streams(VarInt::from_u32(16));
    let server = HandleEngine::builder()
        .shards(4)
        .transport(transport)
        .start()
        .expect("server");
    let tls = quicshard::tls::client_config_trusting(server.certificate().unwrap(), &[]).unwrap();
    let client = HandleEngine::builder()
        .shards(2)
        .client_config(tls)
        .start()
        .expect("client");
    let addr = server.local_addr();
    let started = Instant::now();

    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..CLIENTS {
                let conn = server
                    .accept_until(Some(Instant::now() + TIMEOUT))
                    .expect("accept");
                s.spawn(move || serve(conn));
            }
        });
        for c in 0..CLIENTS {
            let client = &client;
            s.spawn(move || {
                let conn = client
                    .connect_until(addr, "localhost", Some(Instant::now() + TIMEOUT))
                    .expect("connect");
                std::thread::scope(|s2| {
                    for st in 0..STREAMS {
                        let conn = &conn;
                        s2.spawn(move || {
                            let (mut send, mut recv) = conn.open_bi().expect("open");
                            send.set_timeout(Some(TIMEOUT));
                            recv.set_timeout(Some(TIMEOUT));
                            let data: Vec<u8> = (0..BYTES).map(|i| byte(c, st, i)).collect();
                            // write and read concurrently: the echo comes back while we send
                            let writer = std::thread::spawn(move || {
                                send.write_all(&data).expect("write");
                                send.finish().expect("finish");
                            });
                            let mut back = Vec::with_capacity(BYTES);
                            recv.read_to_end(&mut back).expect("read");
                            writer.join().unwrap();
                            assert_eq!(back.len(), BYTES, "client {c} stream {st}: length");
                            assert!(
                                back.iter().enumerate().all(|(i, b)| *b == byte(c, st, i)),
                                "client {c} stream {st}: bytes differ"
                            );
                        });
                    }
                });
                conn.close(VarInt::from_u32(0), b"done");
            });
        }
    });

    let total = CLIENTS * STREAMS * BYTES;
    println!(
        "blocking_echo: {CLIENTS} clients x {STREAMS} streams, {} KiB echoed and verified in {:?}",
        total / 1024,
        started.elapsed()
    );
    client.shutdown(Duration::from_secs(2));
    server.shutdown(Duration::from_secs(2));
}
