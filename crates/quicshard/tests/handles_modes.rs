//! Handle-mode engine behaviour beyond the per-backend conformance suite (`handles.rs`): Send +
//! Sync, pollers, connect deadlines, shutdown waking blocked calls, `std::io` traits, async on a
//! multi-threaded tokio runtime, tokio's I/O traits (feature `tokio`), 0-RTT ticket resumption.
//!
//! Every wait is bounded by a deadline; nothing sleeps and hopes.

mod handles_common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use handles_common::*;
use quicshard::handle::{ConnError, Connection, HandleConfig, Poller, ReadError};
use quicshard::quinn_proto::VarInt;
use quicshard::HandleEngine;

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Connection>();
    check::<quicshard::handle::SendStream>();
    check::<quicshard::handle::RecvStream>();
    check::<Poller>();
    check::<quicshard::HandleEngine>();
}

#[test]
fn reset_after_finish_reaches_the_peer() {
    let p = Pair::new(1, 1, HandleConfig::default());
    let (s, c) = p.connect();
    // a reset right after FIN still goes to quinn-proto (if the FIN is not acknowledged yet):
    // the reader sees either all data and the FIN, or the reset; never a hang
    let (mut send, _r) = c.open_bi_until(deadline()).unwrap();
    send.write_all_until(&[5; 100_000], deadline()).unwrap();
    send.finish().unwrap();
    send.reset(VarInt::from_u32(3)).unwrap();
    let (_s, mut recv) = s.accept_bi_until(deadline()).unwrap();
    let mut buf = vec![0u8; 65536];
    let end = loop {
        match recv.read_until(&mut buf, deadline()) {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(e) => break Err(e),
        }
    };
    assert!(matches!(end, Ok(()) | Err(ReadError::Reset(_))), "{end:?}");
}

#[test]
fn poller_reports_ready_handles() {
    let p = Pair::new(2, 1, HandleConfig::default());
    let (s, c) = p.connect();
    let poller = Poller::new().unwrap();
    s.set_nonblocking(true);
    poller.register(&s, 1);
    poller.register(&p.server, 2);
    let mut tokens = Vec::new();
    // not ready yet: nothing reported
    assert_eq!(
        poller
            .wait(&mut tokens, Some(Duration::from_millis(30)))
            .unwrap(),
        0
    );
    let (mut send, _r) = c.open_bi_until(deadline()).unwrap();
    send.write_all_until(b"hi", deadline()).unwrap();
    assert_eq!(poller.wait(&mut tokens, Some(LONG)).unwrap(), 1);
    assert_eq!(tokens, [1]);
    let (_ss, mut recv) = s.accept_bi().unwrap();
    recv.set_nonblocking(true);
    poller.register(&recv, 3);
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < 2 {
        match recv.read(&mut buf[got..]) {
            Ok(n) => got += n,
            Err(ReadError::WouldBlock) => {
                poller.wait(&mut tokens, Some(LONG)).unwrap();
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(&buf[..2], b"hi");
    assert_eq!(s.accept_bi().err(), Some(ConnError::WouldBlock));
    // a second connection: the engine token fires
    assert_eq!(
        p.server.try_accept().err(),
        Some(quicshard::handle::AcceptError::WouldBlock)
    );
    let c2 = p
        .client
        .connect_until(p.server.local_addr(), "localhost", deadline())
        .unwrap();
    let end = Instant::now() + LONG;
    loop {
        poller.wait(&mut tokens, Some(LONG)).unwrap();
        if tokens.contains(&2) {
            break;
        }
        assert!(Instant::now() < end);
    }
    assert!(p.server.try_accept().is_ok());
    drop(c2);
}

#[test]
fn connect_deadline_and_refusal() {
    let p = Pair::new(1, 1, HandleConfig::default());
    // a bound UDP port nobody answers on
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let t0 = Instant::now();
    let r = p.client.connect_until(
        hole.local_addr().unwrap(),
        "localhost",
        Some(t0 + Duration::from_millis(200)),
    );
    assert_eq!(r.err(), Some(quicshard::handle::ConnectError::TimedOut));
    assert!(t0.elapsed() < Duration::from_secs(10));
    // bad server name: quinn-proto refuses at once
    let r = p
        .client
        .connect_until(p.server.local_addr(), "", deadline());
    assert!(
        matches!(r, Err(quicshard::handle::ConnectError::Connect(_))),
        "{r:?}"
    );
}

#[test]
fn shutdown_wakes_blocked_calls() {
    let p = Pair::new(2, 1, HandleConfig::default());
    let (s, c) = p.connect();
    let (_send, mut recv) = c.open_bi_until(deadline()).unwrap();
    let blocked_client = std::thread::spawn(move || recv.read(&mut [0; 8]));
    let s2 = s.clone();
    let blocked_server = std::thread::spawn(move || s2.accept_bi());
    let Pair { server, client } = p;
    server.shutdown(Duration::from_secs(5));
    assert!(matches!(
        blocked_server.join().unwrap(),
        Err(ConnError::ConnectionLost(_))
    ));
    assert!(matches!(
        blocked_client.join().unwrap(),
        Err(ReadError::ConnectionLost(_))
    ));
    client.shutdown(Duration::from_secs(5));
}

#[test]
fn std_io_traits() {
    let p = Pair::new(
        2,
        1,
        HandleConfig {
            pipe_capacity: 4096,
        },
    );
    let (s, c) = p.connect();
    let t = std::thread::spawn(move || {
        let (mut send, mut recv) = s.accept_bi_until(deadline()).unwrap();
        recv.set_timeout(Some(LONG));
        send.set_timeout(Some(LONG));
        let mut v = Vec::new();
        recv.read_to_end(&mut v).unwrap();
        send.write_all(&v).unwrap();
        drop(send);
        s.closed_until(deadline()).unwrap();
    });
    let (mut send, mut recv) = c.open_bi_until(deadline()).unwrap();
    send.set_timeout(Some(LONG));
    recv.set_timeout(Some(LONG));
    let data = payload(9, 300_000);
    send.write_all(&data).unwrap();
    send.flush().unwrap();
    drop(send);
    let mut back = Vec::new();
    recv.read_to_end(&mut back).unwrap();
    assert!(back == data);
    drop((recv, c)); // the last handles: the connection closes, the server's wait ends
    t.join().unwrap();
}

#[test]
fn async_echo_on_multithreaded_tokio() {
    let p = Pair::new(2, 2, HandleConfig::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(LONG, async {
            let server = std::sync::Arc::new(p.server);
            let srv = server.clone();
            let acceptor = tokio::spawn(async move {
                let conn = srv.accept_async().await;
                let mut tasks = Vec::new();
                for _ in 0..8 {
                    let (mut send, mut recv) = conn.accept_bi_async().await.unwrap();
                    tasks.push(tokio::spawn(async move {
                        let v = recv.read_to_end_async(1 << 20).await.unwrap();
                        send.write_all_async(&v).await.unwrap();
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
                conn.closed_async().await;
            });
            let conn = p
                .client
                .connect_async(server.local_addr(), "localhost")
                .await
                .unwrap();
            let mut tasks = Vec::new();
            for i in 0..8u64 {
                let conn = conn.clone();
                tasks.push(tokio::spawn(async move {
                    use futures_io_shim::*;
                    let (mut send, mut recv) = conn.open_bi_async().await.unwrap();
                    let data = payload(i, 100_000 + i as usize);
                    write_all(&mut send, &data).await;
                    drop(send);
                    let back = recv.read_to_end_async(1 << 20).await.unwrap();
                    assert!(back == data);
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            conn.close(VarInt::from_u32(0), b"done");
            acceptor.await.unwrap();
        })
        .await
        .expect("async echo timed out");
    });
}

/// Drives `futures_io::AsyncWrite` by hand (the tests do not depend on `futures`).
mod futures_io_shim {
    use std::pin::Pin;

    pub(crate) async fn write_all<W: futures_io::AsyncWrite + Unpin>(w: &mut W, mut data: &[u8]) {
        while !data.is_empty() {
            let n = std::future::poll_fn(|cx| Pin::new(&mut *w).poll_write(cx, data))
                .await
                .unwrap();
            data = &data[n..];
        }
        std::future::poll_fn(|cx| Pin::new(&mut *w).poll_close(cx))
            .await
            .unwrap();
    }
}

/// tokio's `AsyncRead` / `AsyncWrite` (feature `tokio`): `tokio::io::copy` as the echo.
#[cfg(feature = "tokio")]
#[test]
fn tokio_io_traits() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = Pair::new(
        2,
        1,
        HandleConfig {
            pipe_capacity: 8192,
        },
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(LONG, async {
            let server = std::sync::Arc::new(p.server);
            let srv = server.clone();
            let echo = tokio::spawn(async move {
                let conn = srv.accept_async().await;
                let (mut send, mut recv) = conn.accept_bi_async().await.unwrap();
                tokio::io::copy(&mut recv, &mut send).await.unwrap();
                send.shutdown().await.unwrap();
                conn.closed_async().await;
            });
            let conn = p
                .client
                .connect_async(server.local_addr(), "localhost")
                .await
                .unwrap();
            let (mut send, mut recv) = conn.open_bi_async().await.unwrap();
            let data = payload(3, 200_000);
            let d = data.clone();
            let writer = tokio::spawn(async move {
                AsyncWriteExt::write_all(&mut send, &d).await.unwrap();
                send.shutdown().await.unwrap();
            });
            let mut back = Vec::new();
            AsyncReadExt::read_to_end(&mut recv, &mut back)
                .await
                .unwrap();
            writer.await.unwrap();
            assert!(back == data);
            conn.close(VarInt::from_u32(0), b"done");
            echo.await.unwrap();
        })
        .await
        .expect("tokio echo timed out");
    });
}

/// Openers beyond the peer's stream limit wait (quinn-proto's `Available` event retries them);
/// 4 threads × 10 streams through a limit of 2 concurrent streams, each echoed and checked.
#[test]
fn open_waits_for_stream_credit() {
    let mut t = transport();
    t.max_concurrent_bidi_streams(VarInt::from_u32(2));
    let server = quicshard::HandleEngine::builder()
        .shards(2)
        .transport(t)
        .start()
        .unwrap();
    let tls = quicshard::tls::client_config_trusting(server.certificate().unwrap(), &[]).unwrap();
    let client = quicshard::HandleEngine::builder()
        .shards(1)
        .client_config(tls)
        .start()
        .unwrap();
    let c = client
        .connect_until(server.local_addr(), "localhost", deadline())
        .unwrap();
    let s = server.accept_until(deadline()).unwrap();
    let echo = std::thread::spawn(move || {
        let mut n = 0;
        loop {
            match s.accept_bi_until(deadline()) {
                Ok((mut send, mut recv)) => {
                    let v = recv.read_to_end_until(1 << 16, deadline()).unwrap();
                    send.write_all_until(&v, deadline()).unwrap();
                    n += 1;
                }
                Err(ConnError::ConnectionLost(_)) => return n,
                Err(e) => panic!("{e}"),
            }
        }
    });
    std::thread::scope(|sc| {
        for t in 0..4u64 {
            let c = &c;
            sc.spawn(move || {
                for i in 0..10u64 {
                    let (mut send, mut recv) = c.open_bi_until(deadline()).unwrap();
                    let data = payload(t * 100 + i, 3000);
                    send.write_all_until(&data, deadline()).unwrap();
                    send.finish().unwrap();
                    let back = recv.read_to_end_until(1 << 16, deadline()).unwrap();
                    assert!(back == data, "thread {t} stream {i}");
                }
            });
        }
    });
    c.close(VarInt::from_u32(0), b"done");
    assert_eq!(echo.join().unwrap(), 40);
}

/// With 0-RTT on, tickets live in the engine's single-use store: every connection after the
/// first resumes (once per ticket), and the shards' resumption counters agree with the store.
#[test]
fn zero_rtt_tickets_resume_once_each() {
    let server = HandleEngine::builder()
        .shards(2)
        .zero_rtt(true)
        .start()
        .unwrap();
    let tls = quicshard::tls::client_config_trusting(server.certificate().unwrap(), &[]).unwrap();
    let client = HandleEngine::builder()
        .shards(1)
        .client_config(tls)
        .start()
        .unwrap();
    const N: usize = 6;
    for i in 0..N {
        let c = client
            .connect_until(server.local_addr(), "localhost", deadline())
            .unwrap();
        let s = server.accept_until(deadline()).unwrap();
        // one round trip after the handshake: the client has read the server's tickets by then
        let (mut send, mut recv) = c.open_bi_until(deadline()).unwrap();
        send.write_all_until(&[i as u8; 100], deadline()).unwrap();
        send.finish().unwrap();
        let (mut back, mut incoming) = s.accept_bi_until(deadline()).unwrap();
        let got = incoming.read_to_end_until(1000, deadline()).unwrap();
        back.write_all_until(&got, deadline()).unwrap();
        back.finish().unwrap();
        assert_eq!(recv.read_to_end_until(1000, deadline()).unwrap(), got);
        c.close(VarInt::from_u32(0), b"done");
        let _ = s.closed_until(deadline());
    }
    let t = server
        .ticket_stats()
        .expect("0-RTT mode has a ticket store");
    assert!(t.issued >= N as u64, "{t:?}");
    assert_eq!(
        t.resumed,
        N as u64 - 1,
        "each later connection resumes: {t:?}"
    );
    assert_eq!(t.refused, 0, "{t:?}");
    let stats = server.shutdown(Duration::from_secs(1));
    let resumptions: u64 = stats.iter().map(|s| s.resumptions).sum();
    assert_eq!(resumptions, t.resumed);
    // the client offers 0-RTT whenever its ticket allows it, and each offer was accepted
    // (the engine's connect itself sends nothing early: it waits for the handshake)
    let zero_rtt: u64 = stats.iter().map(|s| s.zero_rtt_accepted).sum();
    assert_eq!(zero_rtt, t.resumed);
}

#[test]
fn stateless_tickets_have_no_store() {
    let server = HandleEngine::builder().shards(1).start().unwrap();
    assert_eq!(server.ticket_stats(), None);
}
