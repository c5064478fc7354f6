//! The direct backend: two engines (server and client) joined by the in-memory datagram link,
//! run by this program's only thread. A blocking `connect` / `accept` drives both engines until
//! the handshake is done; then the thread owns the loop: it calls `tick` and moves bytes through
//! non-blocking handles — the client sends 8 streams of 256 KiB, the server echoes each. The
//! example checks every byte, that no thread was started (`/proc/self/task`), and that the link
//! dropped nothing. Exits 0 on success.
//!
//! `cargo run -p quicshard --example direct`

use std::time::{Duration, Instant};

use quicshard::direct::{memory_pair, DirectConfig};
use quicshard::handle::{ConnError, ReadError, RecvStream, SendStream, WriteError};
use quicshard::quinn_proto::VarInt;
use quicshard::HandleEngine;
use quicshard::ShardStats;

const STREAMS: u64 = 8;
const BYTES: usize = 256 * 1024;
const LIMIT: Duration = Duration::from_secs(60);

fn payload(tag: u64) -> Vec<u8> {
    (0..BYTES as u64)
        .map(|i| (i.wrapping_mul(31) ^ tag.wrapping_mul(0x9E37)) as u8)
        .collect()
}

/// One direction's progress: bytes to write from `data[off..]`, then FIN.
struct Out {
    send: SendStream,
    data: Vec<u8>,
    off: usize,
    finished: bool,
}

impl Out {
    /// Writes what the pipe takes now.
    fn pump(&mut self) {
        while self.off < self.data.len() {
            match self.send.write(&self.data[self.off..]) {
                Ok(n) => self.off += n,
                Err(WriteError::WouldBlock) => return,
                Err(e) => panic!("write: {e}"),
            }
        }
        if !self.finished {
            self.send.finish().expect("finish");
            self.finished = true;
        }
    }
}

/// Reads what arrived; `true` at the end of the stream.
fn drain(recv: &mut RecvStream, into: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match recv.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(ReadError::WouldBlock) => return false,
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// The server side of one echoed stream.
struct Echo {
    recv: RecvStream,
    got: Vec<u8>,
    out: Option<Out>,
    send: Option<SendStream>,
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count())
}

fn main() {
    let threads_before = threads();
    let cfg = DirectConfig {
        locking: false, // one thread does everything
        timer_assist: false,
    };
    let (server, client) =
        memory_pair(HandleEngine::builder(), HandleEngine::builder(), cfg).expect("pair");
    let deadline = Some(Instant::now() + LIMIT);

    // blocking calls drive both engines
    let conn = client
        .connect_until(server.local_addr(), "localhost", deadline)
        .expect("connect");
    let peer = server.accept_until(deadline).expect("accept");
    println!(
        "connected to {} over the in-memory link",
        conn.remote_address()
    );

    // from here on the thread owns the loop: non-blocking handles and tick()
    conn.set_nonblocking(true);
    peer.set_nonblocking(true);
    let mut outs = Vec::new();
    let mut backs = Vec::new();
    for tag in 0..STREAMS {
        let (send, recv) = loop {
            match conn.open_bi() {
                Ok(s) => break s,
                Err(ConnError::WouldBlock) => {
                    client.tick();
                }
                Err(e) => panic!("open: {e}"),
            }
        };
        send.set_nonblocking(true);
        recv.set_nonblocking(true);
        outs.push(Out {
            send,
            data: payload(tag),
            off: 0,
            finished: false,
        });
        backs.push((recv, Vec::new(), false));
    }
    let mut echoes: Vec<Echo> = Vec::new();
    let start = Instant::now();
    while backs.iter().any(|b| !b.2) {
        assert!(start.elapsed() < LIMIT, "echo did not finish in {LIMIT:?}");
        client.tick(); // drives both engines of the pair
        for o in &mut outs {
            o.pump();
        }
        loop {
            match peer.accept_bi() {
                Ok((send, recv)) => {
                    send.set_nonblocking(true);
                    recv.set_nonblocking(true);
                    echoes.push(Echo {
                        recv,
                        got: Vec::new(),
                        out: None,
                        send: Some(send),
                    });
                }
                Err(ConnError::WouldBlock) => break,
                Err(e) => panic!("accept_bi: {e}"),
            }
        }
        for e in &mut echoes {
            if e.out.is_none() && drain(&mut e.recv, &mut e.got) {
                let send = e.send.take().expect("send half");
                e.out = Some(Out {
                    send,
                    data: std::mem::take(&mut e.got),
                    off: 0,
                    finished: false,
                });
            }
            if let Some(o) = &mut e.out {
                o.pump();
            }
        }
        for (recv, got, done) in &mut backs {
            if !*done {
                *done = drain(recv, got);
            }
        }
    }
    for (tag, (_, got, _)) in backs.iter().enumerate() {
        assert!(
            *got == payload(tag as u64),
            "stream {tag}: echo differs ({} of {BYTES} bytes)",
            got.len()
        );
    }
    let took = start.elapsed();
    conn.close(VarInt::from_u32(0), b"done");
    let s = ShardStats::sum(&server.stats());
    let c = ShardStats::sum(&client.stats());
    drop(conn);
    drop(peer);
    client.shutdown(Duration::from_secs(1));
    server.shutdown(Duration::from_secs(1));
    assert_eq!(
        threads(),
        threads_before,
        "the direct backend started a thread"
    );
    assert_eq!(s.dropped_link_full + c.dropped_link_full, 0);
    println!(
        "echoed {} streams x {BYTES} bytes in {took:?} on one thread; datagrams: client out {}, server out {}",
        STREAMS, c.datagrams_out, s.datagrams_out
    );
    println!("ok");
}
