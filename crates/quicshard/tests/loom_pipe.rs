//! Loom model of a pipe's notify logic: app-side waits (thread signals), the pipe's `pending`
//! flag, the shard queue's coalesced post, and the shard's service, with real pipe code and a
//! modelled mailbox / QUIC stream. A lost wake-up shows up as a loom deadlock.
//!
//! Run (not part of the normal suite; a separate target dir keeps the cfg from invalidating
//! other builds):
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=/work/target-loom \
//!     cargo test -p quicshard --test loom_pipe --release
//! ```
#![allow(unexpected_cfgs)]
#![cfg(loom)]

use quicshard::handle::model;

/// App writes 3 bytes through a 2-byte pipe in two writes, then FIN; the shard moves everything
/// to QUIC. Checks order, FIN, and that a burst costs at most one post per empty → non-empty
/// transition (here: at most 3 posts for 2 writes + FIN).
#[test]
fn send_pipe_no_lost_wakeup() {
    loom::model(|| {
        let (app, mut shard) = model::pipe(true, 2, &[]);
        let writer = loom::thread::spawn(move || {
            app.write_all(&[1, 2]);
            app.write_all(&[3]);
            app.finish();
        });
        let mut stopped = false;
        while !shard.fin {
            shard.wait_post();
            shard.service(&mut stopped);
        }
        writer.join().unwrap();
        assert_eq!(shard.quic, [1, 2, 3]);
        assert!(shard.posts() <= 3, "{} posts", shard.posts());
    });
}

/// QUIC holds 3 bytes + FIN; the pipe holds 2. The shard fills it, is starved, and must be
/// kicked by the app's read to deliver the rest; the app reads to the end.
#[test]
fn recv_pipe_backpressure_no_lost_wakeup() {
    loom::model(|| {
        let (app, mut shard) = model::pipe(false, 2, &[1, 2, 3]);
        let reader = loom::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 2];
            loop {
                let n = app.read(&mut buf);
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&buf[..n]);
            }
        });
        let mut stopped = false;
        // the Readable event
        let mut done = shard.service(&mut stopped);
        while !done {
            shard.wait_post();
            done = shard.service(&mut stopped);
        }
        assert_eq!(reader.join().unwrap(), [1, 2, 3]);
    });
}

/// A reader blocked on an empty pipe is woken by connection loss racing with a last delivery:
/// it sees the byte (if it arrived first) and then the error, never hangs.
#[test]
fn recv_pipe_loss_wakes_blocked_reader() {
    loom::model(|| {
        let (app, mut shard) = model::pipe(false, 2, &[7]);
        shard.fin = false; // no FIN: only the loss ends the stream
        let reader = loom::thread::spawn(move || {
            let mut buf = [0u8; 2];
            let mut got = Vec::new();
            while let Some(n) = app.try_read(&mut buf) {
                assert!(n > 0, "no FIN was sent");
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        let mut stopped = false;
        shard.service(&mut stopped);
        shard.fail();
        assert_eq!(reader.join().unwrap(), [7]);
    });
}
