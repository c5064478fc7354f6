//! Handle conformance suite: the behaviour every handle backend must show (ordering, FIN, reset,
//! stop, deadlines, WouldBlock and backpressure, monotonic availability, close while blocked,
//! `block_until`, datagrams), written once in `cases` and instantiated per backend by
//! `conformance!`: the worker backend on 1 shard, and on 4 shards with 1000-byte pipes; the direct
//! backend over the in-memory link, with and without locking. Engine-level behaviour is in `handles_modes.rs`.
//!
//! Every wait is bounded by a deadline; nothing sleeps and hopes.

mod handles_common;

use std::io::Read;
use std::time::{Duration, Instant};

use handles_common::*;
use quicshard::direct::DirectConfig;
use quicshard::handle::{block_until, ConnError, Connection, HandleConfig, ReadError, WriteError};
use quicshard::quinn_proto::{ConnectionError, VarInt};

/// The cases, each taking the server and client side of one fresh connection.
mod cases {
    use super::*;

    pub(crate) fn ordering(s: Connection, c: Connection) {
        let data = payload(1, 1 << 20);
        let echo = std::thread::spawn(move || {
            let (mut send, mut recv) = s.accept_bi_until(deadline()).unwrap();
            let got = recv.read_to_end_until(4 << 20, deadline()).unwrap();
            send.write_all_until(&got, deadline()).unwrap();
            send.finish().unwrap();
            // the reader closes once it has everything
            s.closed_until(deadline()).unwrap();
        });
        let (mut send, mut recv) = c.open_bi_until(deadline()).unwrap();
        let (mut off, mut k) = (0, 1usize);
        while off < data.len() {
            let n = (k * 7919 % 20_000 + 1).min(data.len() - off);
            send.write_all_until(&data[off..off + n], deadline())
                .unwrap();
            off += n;
            k += 1;
        }
        send.finish().unwrap();
        let back = recv.read_to_end_until(4 << 20, deadline()).unwrap();
        assert!(
            back == data,
            "echo differs ({} of {} bytes)",
            back.len(),
            data.len()
        );
        let stats = c.stats().unwrap();
        assert!(stats.udp_tx.bytes > data.len() as u64, "{stats:?}");
        c.close(VarInt::from_u32(0), b"done");
        echo.join().unwrap();
    }

    pub(crate) fn fin(s: Connection, c: Connection) {
        let (mut send, _recv) = c.open_bi_until(deadline()).unwrap();
        send.finish().unwrap();
        send.finish().unwrap(); // idempotent
        assert_eq!(send.write(b"x"), Err(WriteError::ClosedStream));
        let (_s, mut recv) = s.accept_bi_until(deadline()).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(recv.read_until(&mut buf, deadline()), Ok(0));
        assert_eq!(
            recv.read_until(&mut buf, deadline()),
            Ok(0),
            "EOF is sticky"
        );
        // unidirectional, with data
        let mut u = c.open_uni_until(deadline()).unwrap();
        u.write_all_until(b"hello", deadline()).unwrap();
        drop(u); // dropping finishes
        let mut r = s.accept_uni_until(deadline()).unwrap();
        assert_eq!(r.read_to_end_until(64, deadline()).unwrap(), b"hello");
    }

    /// Copied writes and zero-copy `Bytes` writes (large and small) arrive in order.
    pub(crate) fn write_bytes_in_order(s: Connection, c: Connection) {
        let big = bytes::Bytes::from(payload(9, 100_000));
        let (mut send, _recv) = c.open_bi_until(deadline()).unwrap();
        send.write_all_until(b"head", deadline()).unwrap();
        send.write_all_bytes_until(big.clone(), deadline()).unwrap();
        send.write_all_bytes_until(bytes::Bytes::from_static(b"small"), deadline())
            .unwrap();
        send.write_all_until(b"tail", deadline()).unwrap();
        send.finish().unwrap();
        let (_s, mut recv) = s.accept_bi_until(deadline()).unwrap();
        let got = recv.read_to_end_until(1 << 20, deadline()).unwrap();
        let mut want = b"head".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"smalltail");
        assert!(
            got == want,
            "{} of {} bytes, order lost",
            got.len(),
            want.len()
        );
    }

    pub(crate) fn reset(s: Connection, c: Connection) {
        let (mut send, _recv) = c.open_bi_until(deadline()).unwrap();
        send.write_all_until(&[1; 1000], deadline()).unwrap();
        let (_s, mut recv) = s.accept_bi_until(deadline()).unwrap();
        send.reset(VarInt::from_u32(7)).unwrap();
        assert_eq!(send.write(b"x"), Err(WriteError::ClosedStream));
        let mut buf = [0u8; 4096];
        let err = loop {
            match recv.read_until(&mut buf, deadline()) {
                Ok(0) => panic!("reset stream ended cleanly"),
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert_eq!(err, ReadError::Reset(VarInt::from_u32(7)));
    }

    pub(crate) fn stop(s: Connection, c: Connection) {
        let (mut send, _recv) = c.open_bi_until(deadline()).unwrap();
        send.write_all_until(b"first", deadline()).unwrap();
        let (_s, mut recv) = s.accept_bi_until(deadline()).unwrap();
        recv.stop(VarInt::from_u32(9)).unwrap();
        assert_eq!(recv.read(&mut [0; 8]), Err(ReadError::ClosedStream));
        // the error that ends writing until the peer's STOP_SENDING arrives
        let write_until_error = |send: &mut quicshard::handle::SendStream| loop {
            if let Err(e) = send.write_until(&[2u8; 8192], deadline()) {
                break e;
            }
        };
        let err = write_until_error(&mut send);
        assert_eq!(err, WriteError::Stopped(VarInt::from_u32(9)));
        // dropping a receive handle before the end stops with 0, or with the code it was given
        for code in [None, Some(VarInt::from_u32(0x100))] {
            let (mut send, _recv) = c.open_bi_until(deadline()).unwrap();
            send.write_all_until(b"first", deadline()).unwrap();
            let (_s, mut recv) = s.accept_bi_until(deadline()).unwrap();
            if let Some(code) = code {
                recv.set_stop_on_drop(code);
            }
            drop(recv);
            let err = write_until_error(&mut send);
            let want = code.unwrap_or(VarInt::from_u32(0));
            assert_eq!(err, WriteError::Stopped(want));
        }
    }

    pub(crate) fn deadlines(s: Connection, c: Connection) {
        let (mut send, mut recv) = c.open_bi_until(deadline()).unwrap();
        let t0 = Instant::now();
        let r = recv.read_until(&mut [0; 8], Some(t0 + Duration::from_millis(100)));
        assert_eq!(r, Err(ReadError::TimedOut));
        let el = t0.elapsed();
        assert!(
            el >= Duration::from_millis(100) && el < Duration::from_secs(10),
            "{el:?}"
        );
        recv.set_timeout(Some(Duration::from_millis(50)));
        let e = Read::read(&mut recv, &mut [0; 8]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        let t0 = Instant::now();
        let r = s.accept_uni_until(Some(t0 + Duration::from_millis(100)));
        assert_eq!(r.err(), Some(ConnError::TimedOut));
        // still usable after timeouts
        send.write_all_until(b"late", deadline()).unwrap();
        let (_s, mut srecv) = s.accept_bi_until(deadline()).unwrap();
        let mut buf = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            got += srecv.read_until(&mut buf[got..], deadline()).unwrap();
        }
        assert_eq!(&buf, b"late");
    }

    pub(crate) fn would_block_and_backpressure(s: Connection, c: Connection) {
        let (mut send, mut recv) = c.open_bi_until(deadline()).unwrap();
        send.set_nonblocking(true);
        recv.set_nonblocking(true);
        assert_eq!(recv.read(&mut [0; 8]), Err(ReadError::WouldBlock));
        let e = Read::read(&mut recv, &mut [0; 8]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        // the peer does not read: QUIC flow control plus the pipe bound what we can write
        let chunk = vec![3u8; 64 * 1024];
        let mut total = 0usize;
        let start = Instant::now();
        loop {
            match send.write(&chunk) {
                Ok(n) => total += n,
                Err(WriteError::WouldBlock) => {
                    // the shard may still be moving bytes into QUIC: wait until it stops
                    if !block_until(&[&send], Some(Instant::now() + Duration::from_millis(300))) {
                        break;
                    }
                }
                Err(e) => panic!("{e}"),
            }
            assert!(total < 64 << 20, "no backpressure: {total} bytes written");
            assert!(start.elapsed() < LONG, "backpressure never settled");
        }
        assert_eq!(send.write_available(), 0);
        assert_eq!(send.write(b"x"), Err(WriteError::WouldBlock));
        // the peer reads everything: the writer becomes ready and may write write_available()
        let (_s, mut srecv) = s.accept_bi_until(deadline()).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < total {
            got += srecv.read_until(&mut buf, deadline()).unwrap();
        }
        assert_eq!(got, total);
        assert!(
            block_until(&[&send], deadline()),
            "writer never became ready"
        );
        let n = send.write_available();
        assert!(n > 0);
        assert_eq!(
            send.write(&vec![4u8; n]),
            Ok(n),
            "monotonic write_available"
        );
    }

    pub(crate) fn read_available_is_monotonic(s: Connection, c: Connection) {
        let (mut send, _recv) = c.open_bi_until(deadline()).unwrap();
        send.write_all_until(&payload(5, 10_000), deadline())
            .unwrap();
        let (_s, mut recv) = s.accept_bi_until(deadline()).unwrap();
        recv.set_nonblocking(true);
        let mut got = Vec::new();
        while got.len() < 10_000 {
            assert!(block_until(&[&recv], deadline()));
            let n = recv.read_available();
            assert!(n > 0, "ready but nothing available");
            let mut buf = vec![0u8; n];
            assert_eq!(recv.read(&mut buf), Ok(n), "read_available promised {n}");
            got.extend_from_slice(&buf);
        }
        assert_eq!(got, payload(5, 10_000));
    }

    pub(crate) fn close_while_blocked(s: Connection, c: Connection) {
        let (_send, mut recv) = c.open_bi_until(deadline()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            tx.send(()).unwrap();
            recv.read(&mut [0; 8])
        });
        let s2 = s.clone();
        let acc = std::thread::spawn(move || s2.accept_uni());
        rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(20)); // let it block (either order is correct)
        c.close(VarInt::from_u32(42), b"bye");
        let r = t.join().unwrap();
        assert_eq!(
            r,
            Err(ReadError::ConnectionLost(ConnectionError::LocallyClosed))
        );
        // the peer's blocked accept learns the application close
        match acc.join().unwrap() {
            Err(ConnError::ConnectionLost(ConnectionError::ApplicationClosed(a))) => {
                assert_eq!(a.error_code, VarInt::from_u32(42));
                assert_eq!(&a.reason[..], b"bye");
            }
            other => panic!("{other:?}"),
        }
        assert!(c.open_bi().is_err());
    }

    pub(crate) fn block_until_many(s: Connection, c: Connection) {
        let (mut a, _ar) = c.open_bi_until(deadline()).unwrap();
        let (mut b, _br) = c.open_bi_until(deadline()).unwrap();
        a.write_all_until(b"a", deadline()).unwrap();
        let (_sa, mut ra) = s.accept_bi_until(deadline()).unwrap();
        b.write_all_until(b"b", deadline()).unwrap();
        let (_sb, mut rb) = s.accept_bi_until(deadline()).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(ra.read_until(&mut buf, deadline()), Ok(1));
        assert_eq!(rb.read_until(&mut buf, deadline()), Ok(1));
        // neither ready: times out
        let t0 = Instant::now();
        assert!(!block_until(
            &[&ra, &rb],
            Some(t0 + Duration::from_millis(50))
        ));
        let waiter = std::thread::spawn(move || {
            let ok = block_until(&[&ra, &rb], deadline());
            (ok, ra.read_available(), rb.read_available())
        });
        b.write_all_until(b"bb", deadline()).unwrap();
        let (ok, na, nb) = waiter.join().unwrap();
        assert!(ok);
        assert_eq!(na, 0);
        assert!(nb > 0);
    }

    pub(crate) fn datagrams(s: Connection, c: Connection) {
        let max = c.max_datagram_size().expect("datagrams enabled");
        assert!(max > 100);
        assert_eq!(
            c.send_datagram(vec![0u8; max + 1].into()),
            Err(ConnError::DatagramTooLarge)
        );
        // unreliable: resend until one arrives
        let d = s.clone();
        let rx = std::thread::spawn(move || d.read_datagram_until(deadline()));
        let end = Instant::now() + LONG;
        while !rx.is_finished() && Instant::now() < end {
            c.send_datagram(bytes::Bytes::from_static(b"ping")).unwrap();
            block_until(&[&s], Some(Instant::now() + Duration::from_millis(20)));
        }
        assert_eq!(&rx.join().unwrap().unwrap()[..], b"ping");
    }
}

macro_rules! conformance {
    ($backend:ident, $setup:expr) => {
        conformance!($backend, $setup; ordering, fin, write_bytes_in_order, reset, stop, deadlines,
            would_block_and_backpressure, read_available_is_monotonic, close_while_blocked,
            block_until_many, datagrams);
    };
    ($backend:ident, $setup:expr; $($case:ident),+) => {
        mod $backend {
            use super::*;
            fn run(case: fn(Connection, Connection)) {
                let (guard, s, c) = $setup;
                case(s, c);
                drop(guard);
            }
            $(
                #[test]
                fn $case() {
                    run(cases::$case)
                }
            )+
        }
    };
}

fn worker(server_shards: usize, cfg: HandleConfig) -> (Pair, Connection, Connection) {
    let p = Pair::new(server_shards, 1, cfg);
    let (s, c) = p.connect();
    (p, s, c)
}

conformance!(worker_1_shard, worker(1, HandleConfig::default()));
conformance!(
    worker_4_shards_small_pipes,
    worker(
        4,
        HandleConfig {
            pipe_capacity: 1000
        }
    )
);

/// The direct backend: both engines joined by the in-memory link, driven by the test's own
/// threads (no engine thread exists).
fn direct(locking: bool) -> (Pair, Connection, Connection) {
    let cfg = DirectConfig {
        locking,
        timer_assist: false,
    };
    let p = Pair::memory(HandleConfig::default(), cfg);
    let (s, c) = p.connect();
    (p, s, c)
}

conformance!(direct_locking, direct(true));
// Without locking only the thread that created the pair may drive it, so the cases that block on
// a second thread (an echo thread, a waiter, a blocked reader closed from elsewhere) are the
// locking backend's alone.
conformance!(direct_no_locking, direct(false); fin, write_bytes_in_order, reset, stop, deadlines,
    would_block_and_backpressure, read_available_is_monotonic);
