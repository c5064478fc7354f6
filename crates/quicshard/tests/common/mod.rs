//! Test handlers shared by the engine tests: a server that serves a deterministic pseudo-random
//! payload of the requested length on each bidirectional stream (request: 8-byte big-endian
//! length), and a client that requests one payload per connection and checks every byte.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use quicshard::quinn_proto::{ConnectionError, Dir, StreamId, VarInt, WriteError};
use quicshard::{ConnId, Engine, Handler, Remote, ShardCtx, ShardId};

/// A request for this many bytes makes the server handler panic.
pub const PANIC_SIZE: u64 = 13;

/// Byte `i` of every payload.
pub fn byte_at(i: u64) -> u8 {
    let mut x = i
        .wrapping_add(0x1234_5678)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    (x >> 17) as u8
}

#[derive(Default)]
struct Serving {
    req: Vec<u8>,
    total: Option<u64>,
    sent: u64,
    finished: bool,
}

/// Called by [`Server`] when a connection closes (`Handler::on_closed`).
pub type CloseHook = Box<dyn FnMut(&mut ShardCtx<'_>, ConnId, &ConnectionError) + Send>;

/// Serves payloads; panics on a request of [`PANIC_SIZE`] bytes.
#[derive(Default)]
pub struct Server {
    streams: HashMap<(ConnId, StreamId), Serving>,
    buf: Vec<u8>,
    on_closed: Option<CloseHook>,
}

impl Server {
    /// A server that also runs `hook` for each connection that closes.
    pub fn with_close_hook(
        hook: impl FnMut(&mut ShardCtx<'_>, ConnId, &ConnectionError) + Send + 'static,
    ) -> Self {
        Self {
            on_closed: Some(Box::new(hook)),
            ..Self::default()
        }
    }

    fn pump(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        let Some(st) = self.streams.get_mut(&(conn, stream)) else {
            return;
        };
        let Some(total) = st.total else { return };
        let Some(c) = ctx.connection(conn) else {
            return;
        };
        while st.sent < total {
            let n = (total - st.sent).min(16 * 1024) as usize;
            self.buf.clear();
            self.buf.extend((0..n as u64).map(|i| byte_at(st.sent + i)));
            match c.send_stream(stream).write(&self.buf) {
                Ok(w) => st.sent += w as u64,
                Err(WriteError::Blocked) => return,
                Err(_) => {
                    self.streams.remove(&(conn, stream));
                    return;
                }
            }
        }
        if !st.finished {
            st.finished = true;
            let _ = c.send_stream(stream).finish();
            self.streams.remove(&(conn, stream));
        }
    }
}

impl Handler for Server {
    fn on_stream_opened(&mut self, _ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        self.streams.entry((conn, stream)).or_default();
    }

    fn on_stream_readable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        let Some(st) = self.streams.get_mut(&(conn, stream)) else {
            return;
        };
        let Some(c) = ctx.connection(conn) else {
            return;
        };
        let mut recv = c.recv_stream(stream);
        if let Ok(mut chunks) = recv.read(true) {
            while let Ok(Some(ch)) = chunks.next(usize::MAX) {
                st.req.extend_from_slice(&ch.bytes);
            }
            let _ = chunks.finalize();
        }
        if st.total.is_none() && st.req.len() >= 8 {
            let total = u64::from_be_bytes(st.req[..8].try_into().unwrap());
            assert_ne!(
                total, PANIC_SIZE,
                "test handler panics on request {PANIC_SIZE}"
            );
            st.total = Some(total);
            self.pump(ctx, conn, stream);
        }
    }

    fn on_stream_writable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        self.pump(ctx, conn, stream);
    }

    fn on_closed(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, reason: &ConnectionError) {
        if let Some(hook) = &mut self.on_closed {
            hook(ctx, conn, reason);
        }
    }
}

/// How one download ended.
#[derive(Debug)]
pub struct Outcome {
    pub tag: u64,
    pub result: Result<u64, String>,
}

struct Download {
    tag: u64,
    want: u64,
    got: u64,
    stream: Option<StreamId>,
    done: bool,
}

/// Downloads one payload per connection and reports an [`Outcome`].
pub struct Client {
    downloads: HashMap<ConnId, Download>,
    out: Sender<Outcome>,
    /// Switch each connection to a new server CID once this many bytes arrived.
    switch_cid_after: Option<u64>,
}

impl Client {
    pub fn new(out: Sender<Outcome>) -> Self {
        Self {
            downloads: HashMap::new(),
            out,
            switch_cid_after: None,
        }
    }

    /// A client that moves each connection to a new server CID (`ShardCtx::switch_remote_cid`)
    /// once `after` bytes of its download arrived.
    pub fn switching_cid_after(out: Sender<Outcome>, after: u64) -> Self {
        Self {
            switch_cid_after: Some(after),
            ..Self::new(out)
        }
    }

    fn report(&mut self, conn: ConnId, result: Result<u64, String>) {
        if let Some(d) = self.downloads.get_mut(&conn) {
            if !d.done {
                d.done = true;
                let _ = self.out.send(Outcome { tag: d.tag, result });
            }
        }
    }
}

impl Handler for Client {
    fn on_connection(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId) {
        let Some(d) = self.downloads.get_mut(&conn) else {
            return;
        };
        let Some(c) = ctx.connection(conn) else {
            return;
        };
        let Some(s) = c.streams().open(Dir::Bi) else {
            return;
        };
        d.stream = Some(s);
        let mut send = c.send_stream(s);
        let req = d.want.to_be_bytes();
        assert_eq!(send.write(&req), Ok(8));
        let _ = send.finish();
    }

    fn on_stream_readable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        let Some(d) = self.downloads.get_mut(&conn) else {
            return;
        };
        let got_before = d.got;
        let Some(c) = ctx.connection(conn) else {
            return;
        };
        let mut finished = false;
        let mut bad = None;
        if let Ok(mut chunks) = c.recv_stream(stream).read(true) {
            loop {
                match chunks.next(usize::MAX) {
                    Ok(Some(ch)) => {
                        for (i, b) in ch.bytes.iter().enumerate() {
                            let off = ch.offset + i as u64;
                            if *b != byte_at(off) && bad.is_none() {
                                bad = Some(off);
                            }
                        }
                        d.got += ch.bytes.len() as u64;
                    }
                    Ok(None) => {
                        finished = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let _ = chunks.finalize();
        }
        if let Some(after) = self.switch_cid_after {
            if got_before < after && d.got >= after {
                assert!(
                    ctx.switch_remote_cid(conn),
                    "the connection is on this shard"
                );
            }
        }
        let result = if let Some(off) = bad {
            Some(Err(format!("byte {off} differs")))
        } else if finished {
            Some(if d.got == d.want {
                Ok(d.got)
            } else {
                Err(format!("got {} of {}", d.got, d.want))
            })
        } else {
            None
        };
        if let Some(r) = result {
            ctx.close(conn, 0, b"done");
            self.report(conn, r);
        }
    }

    fn on_closed(
        &mut self,
        _ctx: &mut ShardCtx<'_>,
        conn: ConnId,
        reason: &quicshard::quinn_proto::ConnectionError,
    ) {
        self.report(conn, Err(format!("closed: {reason}")));
    }
}

/// Starts `count` downloads of `size(tag)` bytes from `server`, round-robin over client shards.
pub fn start_downloads(
    remote: &Remote<Client>,
    server: SocketAddr,
    count: u64,
    size: impl Fn(u64) -> u64,
) {
    for tag in 0..count {
        let shard = ShardId(tag as usize % remote.shards());
        start_download(remote, shard, server, tag, size(tag));
    }
}

/// Starts one download of `want` bytes from `server` on client shard `shard`, reported as `tag`.
pub fn start_download(
    remote: &Remote<Client>,
    shard: ShardId,
    server: SocketAddr,
    tag: u64,
    want: u64,
) {
    remote
        .run_on(shard, move |ctx, h| {
            let conn = ctx.connect(server, "localhost").expect("connect");
            h.downloads.insert(
                conn,
                Download {
                    tag,
                    want,
                    got: 0,
                    stream: None,
                    done: false,
                },
            );
        })
        .expect("run_on");
}

/// Collects `count` outcomes or fails after `timeout`.
pub fn collect(rx: &Receiver<Outcome>, count: u64, timeout: Duration) -> Vec<Outcome> {
    let deadline = Instant::now() + timeout;
    let mut v = Vec::new();
    while (v.len() as u64) < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(o) => v.push(o),
            Err(_) => panic!(
                "only {} of {count} downloads finished in {timeout:?}",
                v.len()
            ),
        }
    }
    v
}

/// A client engine trusting `server`'s self-signed certificate, of the server's address family.
pub fn client_engine<H: Handler>(
    server: &Engine<H>,
    shards: usize,
) -> (Engine<Client>, Receiver<Outcome>) {
    let cfg = quicshard::tls::client_config_trusting(server.certificate().unwrap(), &[]).unwrap();
    // same address family as the server
    let listen = if server.local_addr().is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    client_engine_with(cfg, shards, listen.parse().unwrap())
}

/// A client engine with `cfg`, listening on `listen`; its client sockets bind the unspecified
/// address of `listen`'s family (so `[::1]:0` makes an IPv6 client).
pub fn client_engine_with(
    cfg: quicshard::quinn_proto::ClientConfig,
    shards: usize,
    listen: SocketAddr,
) -> (Engine<Client>, Receiver<Outcome>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let engine = Engine::builder(move |_| Client::new(tx.clone()))
        .shards(shards)
        .listen(listen)
        .client_config(cfg)
        .start()
        .unwrap();
    (engine, rx)
}

/// Polls `cond` every 5 ms until it holds or `timeout` passes (then fails with `what`).
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Transport config with room for many concurrent streams per connection.
pub fn transport() -> quicshard::quinn_proto::TransportConfig {
    let mut t = quicshard::quinn_proto::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(16));
    t
}
