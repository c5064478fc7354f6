//! The callback API: a `Handler` per shard, running on the shard's thread with `&mut` access to
//! its connections, and `Remote::run_on` to run code on a shard from an app thread. An echo
//! server handler; a client handler that sends one request per connection and checks the echo;
//! the app thread starts 16 connections with `run_on` and collects the outcomes over a channel,
//! then asks every client shard for its count. Exits 0 on success.
//!
//! `cargo run -p quicshard --example callbacks`

use std::collections::HashMap;
use std::time::Duration;

use crossbeam_channel::Sender;
use quicshard::quinn_proto::{Dir, StreamId};
use quicshard::{ConnId, Engine, Handler, ShardCtx, ShardId};

const CONNECTIONS: u64 = 16;
const BYTES: usize = 64 * 1024;

fn request(tag: u64) -> Vec<u8> {
    (0..BYTES)
        .map(|i| (i as u64 ^ tag.wrapping_mul(97)) as u8)
        .collect()
}

/// Echoes every stream: what it reads it writes back; FIN after the peer's FIN.
#[derive(Default)]
struct EchoServer {
    /// Bytes read but not yet accepted by the send side, per stream; `true` once FIN was read.
    pending: HashMap<(ConnId, StreamId), (Vec<u8>, bool)>,
}

impl EchoServer {
    fn pump(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        let Some(c) = ctx.connection(conn) else {
            return;
        };
        let entry = self.pending.entry((conn, stream)).or_default();
        if let Ok(mut chunks) = c.recv_stream(stream).read(true) {
            loop {
                match chunks.next(usize::MAX) {
                    Ok(Some(ch)) => entry.0.extend_from_slice(&ch.bytes),
                    Ok(None) => {
                        entry.1 = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let _ = chunks.finalize();
        }
        let mut send = c.send_stream(stream);
        while !entry.0.is_empty() {
            match send.write(&entry.0) {
                Ok(n) => {
                    entry.0.drain(..n);
                }
                Err(_) => return, // blocked: on_stream_writable continues
            }
        }
        if entry.1 {
            let _ = send.finish();
            self.pending.remove(&(conn, stream));
        }
    }
}

impl Handler for EchoServer {
    fn on_stream_readable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        self.pump(ctx, conn, stream);
    }
    fn on_stream_writable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        self.pump(ctx, conn, stream);
    }
}

/// One request per connection; reports `(tag, echo matched)`.
struct Client {
    out: Sender<(u64, bool)>,
    tags: HashMap<ConnId, (u64, Vec<u8>, usize)>,
    done: u64,
}

impl Handler for Client {
    fn on_connection(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId) {
        let Some((tag, _, sent)) = self.tags.get_mut(&conn) else {
            return;
        };
        let req = request(*tag);
        let Some(c) = ctx.connection(conn) else {
            return;
        };
        let s = c.streams().open(Dir::Bi).expect("stream credit");
        *sent = c.send_stream(s).write(&req).unwrap_or(0);
        if *sent == req.len() {
            let _ = c.send_stream(s).finish();
        }
    }
    fn on_stream_writable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        let Some((tag, _, sent)) = self.tags.get_mut(&conn) else {
            return;
        };
        let req = request(*tag);
        let Some(c) = ctx.connection(conn) else {
            return;
        };
        if *sent < req.len() {
            *sent += c.send_stream(stream).write(&req[*sent..]).unwrap_or(0);
            if *sent == req.len() {
                let _ = c.send_stream(stream).finish();
            }
        }
    }
    fn on_stream_readable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        let Some((tag, got, _)) = self.tags.get_mut(&conn) else {
            return;
        };
        let Some(c) = ctx.connection(conn) else {
            return;
        };
        let mut fin = false;
        if let Ok(mut chunks) = c.recv_stream(stream).read(true) {
            while let Ok(r) = chunks.next(usize::MAX) {
                match r {
                    Some(ch) => got.extend_from_slice(&ch.bytes),
                    None => {
                        fin = true;
                        break;
                    }
                }
            }
            let _ = chunks.finalize();
        }
        if fin {
            let ok = *got == request(*tag);
            let _ = self.out.send((*tag, ok));
            self.done += 1;
            ctx.close(conn, 0, b"done");
        }
    }
}

fn main() {
    let server = Engine::builder(|_| EchoServer::default())
        .shards(2)
        .start()
        .expect("server");
    let tls = quicshard::tls::client_config_trusting(server.certificate().unwrap(), &[]).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let client = Engine::builder(move |_| Client {
        out: tx.clone(),
        tags: HashMap::new(),
        done: 0,
    })
    .shards(2)
    .client_config(tls)
    .start()
    .expect("client");

    // from this app thread: start each connection on a client shard with run_on
    let remote = client.remote();
    let addr = server.local_addr();
    for tag in 0..CONNECTIONS {
        let shard = ShardId(tag as usize % remote.shards());
        remote
            .run_on(shard, move |ctx, h| {
                let conn = ctx.connect(addr, "localhost").expect("connect");
                h.tags.insert(conn, (tag, Vec::new(), 0));
            })
            .expect("run_on");
    }
    let mut seen = vec![false; CONNECTIONS as usize];
    for _ in 0..CONNECTIONS {
        let (tag, ok) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("every connection reports");
        assert!(ok, "connection {tag}: echo differs");
        assert!(
            !std::mem::replace(&mut seen[tag as usize], true),
            "{tag} twice"
        );
    }
    // ask each shard, on its own thread, how many it completed
    let (ctx_tx, ctx_rx) = crossbeam_channel::unbounded();
    for s in 0..remote.shards() {
        let ctx_tx = ctx_tx.clone();
        remote
            .run_on(ShardId(s), move |ctx, h| {
                let _ = ctx_tx.send((ctx.shard(), h.done));
            })
            .expect("run_on");
    }
    let total: u64 = (0..remote.shards())
        .map(|_| ctx_rx.recv_timeout(Duration::from_secs(10)).unwrap().1)
        .sum();
    assert_eq!(total, CONNECTIONS);
    println!("callbacks: {CONNECTIONS} connections echoed {BYTES} bytes each, verified");
    client.shutdown(Duration::from_secs(2));
    server.shutdown(Duration::from_secs(2));
}
