//! Async handles on a multi-threaded tokio runtime: an echo server (a task per connection and per
//! stream) and 8 client connections × 4 streams of 256 KiB, every byte checked. The shards wake
//! the tasks' wakers; nothing polls. Exits 0 on success.
//!
//! `cargo run -p quicshard --example tokio_echo`

use std::sync::Arc;
use std::time::{Duration, Instant};

use quicshard::handle::ConnError;
use quicshard::quinn_proto::{TransportConfig, VarInt};
use quicshard::HandleEngine;

const CLIENTS: usize = 8;
const STREAMS: usize = 4;
const BYTES: usize = 256 * 1024;

fn byte(client: usize, stream: usize, i: usize) -> u8 {
    (i.wrapping_mul(17) ^ client.wrapping_mul(5) ^ stream.wrapping_mul(11)) as u8
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut transport = TransportConfig::default();
    transport.max_concurrent_bidi_streams(VarInt::from_u32(16));
    let server = Arc::new(
        HandleEngine::builder()
            .shards(4)
            .transport(transport)
            .start()
            .expect("server"),
    );
    let tls = quicshard::tls::client_config_trusting(server.certificate().unwrap(), &[]).unwrap();
    let client = Arc::new(
        HandleEngine::builder()
            .shards(2)
            .client_config(tls)
            .start()
            .expect("client"),
    );
    let addr = server.local_addr();
    let started = Instant::now();

    let srv = server.clone();
    let acceptor = tokio::spawn(async move {
        for _ in 0..CLIENTS {
            let conn = srv.accept_async().await;
            tokio::spawn(async move {
                loop {
                    let (mut send, mut recv) = match conn.accept_bi_async().await {
                        Ok(s) => s,
                        Err(ConnError::ConnectionLost(_)) => return,
                        Err(e) => panic!("accept: {e}"),
                    };
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 32 * 1024];
                        loop {
                            let n = recv.read_async(&mut buf).await.expect("read");
                            if n == 0 {
                                break;
                            }
                            send.write_all_async(&buf[..n]).await.expect("write");
                        }
                        send.finish().expect("finish");
                    });
                }
            });
        }
    });

    let work = async {
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let client = client.clone();
            clients.push(tokio::spawn(async move {
                let conn = client
                    .connect_async(addr, "localhost")
                    .await
                    .expect("connect");
                let mut streams = Vec::new();
                for st in 0..STREAMS {
                    let conn = conn.clone();
                    streams.push(tokio::spawn(async move {
                        let (mut send, mut recv) = conn.open_bi_async().await.expect("open");
                        let data: Vec<u8> = (0..BYTES).map(|i| byte(c, st, i)).collect();
                        let writer = tokio::spawn(async move {
                            send.write_all_async(&data).await.expect("write");
                            send.finish().expect("finish");
                        });
                        let back = recv.read_to_end_async(BYTES).await.expect("read");
                        writer.await.unwrap();
                        assert!(
                            back.len() == BYTES
                                && back.iter().enumerate().all(|(i, b)| *b == byte(c, st, i)),
                            "client {c} stream {st}: echo differs"
                        );
                    }));
                }
                for s in streams {
                    s.await.unwrap();
                }
                conn.close(VarInt::from_u32(0), b"done");
            }));
        }
        for c in clients {
            c.await.unwrap();
        }
        acceptor.await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(120), work)
        .await
        .expect("tokio_echo timed out");
    println!(
        "tokio_echo: {CLIENTS} clients x {STREAMS} streams, {} KiB echoed and verified in {:?}",
        CLIENTS * STREAMS * BYTES / 1024,
        started.elapsed()
    );
}
