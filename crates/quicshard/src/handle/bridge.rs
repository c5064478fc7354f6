//! The shard side of handle mode: [`HandleHandler`], the built-in [`Handler`] that bridges
//! quinn-proto events to pipes and connection queues, and services what the app queued
//! (`run_ready`, posted to the shard at most once per burst by the [`ShardQueue`]).
//!
//! Per connection it keeps the [`ConnShared`] and the pipes of each live stream; a stream's entry
//! goes once the shard is done with both of its pipes, a connection's once it is closed (every
//! pipe and blocked app call is then failed with the reason).
//!
//! [`Shards`] is how the app side and the shard side post work to a shard (a closure on the
//! shard's `HandleHandler`).
//!
//! A *mixed* engine (`HandleEngine::builder_mixed`) gives each shard's
//! `HandleHandler` a [`Fallback`]: a callback [`Handler`] that gets, whole, every connection whose
//! negotiated ALPN is not one of the handle protocols. The choice is made once, at the
//! connection's first callback (`on_connection`, or a stream event carrying 0-RTT data, which
//! comes earlier); from then on every callback for that `ConnId` is forwarded to the fallback and
//! the handle side never sees the connection.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use quinn_proto::{ConnectionError, Dir, StreamId, VarInt};

use super::conn_shared::{ConnShared, StreamPair};
use super::error::ConnectError;
use super::hub::{ConnectReply, Hub};
use super::notify::Responder;
use super::pipe::{PipeDir, QuicRecv, QuicSend, RecvEnd, StreamPipe};
use super::progress::ProgressLink;
use super::queue::{Ready, ShardQueue};
use crate::handler::{ConnId, Handler, Remote, ShardCtx, ShardId};
use crate::shard::mailbox::Msg;

/// How the handles and the shards of one handle-mode engine post work to a shard: the shards'
/// mailboxes (set when the engine starts, before any handle exists) and the engine's progress
/// link (an app thread waits or drives while a mailbox is full).
pub(crate) struct Shards {
    remote: OnceLock<Remote<HandleHandler>>,
    progress: ProgressLink,
}

impl Shards {
    pub(crate) fn new(progress: ProgressLink) -> Self {
        Self {
            remote: OnceLock::new(),
            progress,
        }
    }

    /// Connects to the started engine's shards.
    pub(crate) fn set_remote(&self, remote: Remote<HandleHandler>) {
        let _ = self.remote.set(remote);
    }

    /// Runs `f` on `shard`. From an app thread this waits while the mailbox is full; from a
    /// shard thread (e.g. a handle dropped there) it does not, and a full mailbox loses the
    /// message (logged). `Err` once the shard has stopped.
    pub(crate) fn post(
        &self,
        shard: ShardId,
        f: impl FnOnce(&mut ShardCtx<'_>, &mut HandleHandler) + Send + 'static,
    ) -> Result<(), ()> {
        // invariant: handles (the only app-side callers) come from a started engine, which set
        // `remote`
        let Some(remote) = self.remote.get() else {
            return Err(());
        };
        let mb = remote.mailboxes.get(shard.0).ok_or(())?;
        let msg = Msg::Run(Box::new(f));
        let r = if crate::shard::current_shard().is_some() {
            mb.try_send(msg)
        } else {
            self.progress.send(mb, msg)
        };
        r.map_err(|e| {
            if matches!(e, crate::shard::mailbox::SendError::Full(_)) {
                tracing::warn!(shard = shard.0, "handle wake-up lost: shard mailbox full");
            }
        })
    }
}

/// The [`Handler`] of a handle-mode engine (see [`HandleEngine`](crate::HandleEngine)).
/// Applications do not call it; it is public because it names the core engine's type under
/// the handle layer, `Engine<HandleHandler>`.
pub struct HandleHandler {
    hub: Arc<Hub>,
    queue: Arc<ShardQueue>,
    conns: HashMap<ConnId, ConnSide>,
    connecting: HashMap<ConnId, Responder<ConnectReply>>,
    scratch: Vec<Ready>,
    fallback: Option<Fallback>,
}

/// The callback handler of a mixed engine's shard and the connections delegated to it.
struct Fallback {
    /// Connections negotiating one of these stay with the handles.
    handle_alpns: Arc<[Vec<u8>]>,
    handler: Box<dyn Handler + Send>,
    conns: HashSet<ConnId>,
}

struct ConnSide {
    shared: Arc<ConnShared>,
    streams: HashMap<StreamId, StreamSide>,
    /// Every app handle is gone: close once all sent data is acknowledged.
    linger: bool,
}

#[derive(Default)]
struct StreamSide {
    send: Option<Arc<StreamPipe>>,
    recv: Option<Arc<StreamPipe>>,
}

struct QuinnSend<'a> {
    conn: &'a mut quinn_proto::Connection,
    id: StreamId,
}

impl QuicSend for QuinnSend<'_> {
    fn write(&mut self, data: Bytes) -> Result<usize, quinn_proto::WriteError> {
        // quinn-proto keeps the chunk (shared memory), no copy
        let mut chunk = [data];
        self.conn
            .send_stream(self.id)
            .write_chunks(&mut chunk)
            .map(|w| w.bytes)
    }
    fn finish(&mut self) {
        let _ = self.conn.send_stream(self.id).finish();
    }
    fn reset(&mut self, code: VarInt) {
        let _ = self.conn.send_stream(self.id).reset(code);
    }
    fn stopped(&mut self) -> Option<VarInt> {
        self.conn.send_stream(self.id).stopped().ok().flatten()
    }
}

struct QuinnRecv<'a> {
    conn: &'a mut quinn_proto::Connection,
    id: StreamId,
}

impl QuicRecv for QuinnRecv<'_> {
    fn read(&mut self, max: usize, push: &mut dyn FnMut(&[u8])) -> RecvEnd {
        let mut rs = self.conn.recv_stream(self.id);
        let Ok(mut chunks) = rs.read(true) else {
            return RecvEnd::Closed;
        };
        let mut left = max;
        let end = loop {
            if left == 0 {
                break RecvEnd::More;
            }
            match chunks.next(left) {
                Ok(Some(ch)) => {
                    left -= ch.bytes.len();
                    push(&ch.bytes);
                }
                Ok(None) => break RecvEnd::Fin,
                Err(quinn_proto::ReadError::Blocked) => break RecvEnd::Blocked,
                Err(quinn_proto::ReadError::Reset(code)) => break RecvEnd::Reset(code),
            }
        };
        // the shard flushes the connection after this callback: credit goes out then
        let _ = chunks.finalize();
        end
    }
    fn stop(&mut self, code: VarInt) {
        let _ = self.conn.recv_stream(self.id).stop(code);
    }
}

impl HandleHandler {
    pub(crate) fn new(shard: ShardId, hub: Arc<Hub>, shards: Arc<Shards>) -> Self {
        let s = shards.clone();
        let post = Box::new(move || {
            s.post(shard, |ctx, me: &mut HandleHandler| me.run_ready(ctx))
                .is_ok()
        });
        let queue = Arc::new(ShardQueue::new(post).with_progress(hub.progress.clone()));
        Self {
            hub,
            queue,
            conns: HashMap::new(),
            connecting: HashMap::new(),
            scratch: Vec::new(),
            fallback: None,
        }
    }

    /// A mixed engine's shard handler: connections whose ALPN is not in `handle_alpns` go to
    /// `fallback`.
    pub(crate) fn with_fallback(
        shard: ShardId,
        hub: Arc<Hub>,
        shards: Arc<Shards>,
        handle_alpns: Arc<[Vec<u8>]>,
        fallback: Box<dyn Handler + Send>,
    ) -> Self {
        let mut h = Self::new(shard, hub, shards);
        h.fallback = Some(Fallback {
            handle_alpns,
            handler: fallback,
            conns: HashSet::new(),
        });
        h
    }

    /// The fallback handler if `conn` belongs to it, deciding on the connection's first event:
    /// an incoming connection (not one of our `connect`s, not already served by handles) whose
    /// ALPN is not a handle protocol. The first event is `on_connection`, or a stream event of
    /// 0-RTT data, which comes before the handshake completes; the server knows the ALPN from
    /// the ClientHello either way.
    fn delegated(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId) -> Option<&mut dyn Handler> {
        let f = self.fallback.as_mut()?;
        if !f.conns.contains(&conn) {
            if self.connecting.contains_key(&conn) || self.conns.contains_key(&conn) {
                return None;
            }
            let alpn = ctx.connection(conn).and_then(|c| {
                c.crypto_session()
                    .handshake_data()?
                    .downcast::<quinn_proto::crypto::rustls::HandshakeData>()
                    .ok()?
                    .protocol
            });
            if alpn.is_some_and(|a| f.handle_alpns.contains(&a)) {
                return None;
            }
            f.conns.insert(conn);
        }
        Some(f.handler.as_mut())
    }

    /// The connection's side state, created on first sight (`None` for a closed connection).
    fn ensure(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId) -> Option<&mut ConnSide> {
        if !self.conns.contains_key(&conn) {
            let c = ctx.connection(conn)?;
            if c.is_closed() {
                return None;
            }
            let shared = ConnShared::new(
                conn,
                c.remote_address(),
                self.queue.clone(),
                c.datagrams().max_size(),
            );
            self.conns.insert(
                conn,
                ConnSide {
                    shared,
                    streams: HashMap::new(),
                    linger: false,
                },
            );
        }
        self.conns.get_mut(&conn)
    }

    /// Creates the pipes of a new stream and registers them.
    fn new_stream(&mut self, conn: ConnId, id: StreamId, send: bool, recv: bool) -> StreamPair {
        let cap = self.hub.config.pipe_capacity;
        let mk = |dir| StreamPipe::new(conn, id, dir, cap, self.queue.clone());
        let side = StreamSide {
            send: send.then(|| mk(PipeDir::Send)),
            recv: recv.then(|| mk(PipeDir::Recv)),
        };
        let pair = StreamPair {
            send: side.send.clone(),
            recv: side.recv.clone(),
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.streams.insert(id, side);
        }
        pair
    }

    fn pipe(&self, conn: ConnId, id: StreamId, dir: PipeDir) -> Option<Arc<StreamPipe>> {
        let s = self.conns.get(&conn)?.streams.get(&id)?;
        match dir {
            PipeDir::Send => s.send.clone(),
            PipeDir::Recv => s.recv.clone(),
        }
    }

    fn service_pipe(&mut self, ctx: &mut ShardCtx<'_>, pipe: &Arc<StreamPipe>) {
        let done = match ctx.connection(pipe.conn) {
            None => {
                pipe.fail(&ConnectionError::LocallyClosed);
                true
            }
            Some(c) => match pipe.dir {
                PipeDir::Send => pipe.service_send(&mut QuinnSend {
                    conn: c,
                    id: pipe.id,
                }),
                PipeDir::Recv => pipe.service_recv(&mut QuinnRecv {
                    conn: c,
                    id: pipe.id,
                }),
            },
        };
        if done {
            self.forget_if_done(pipe.conn, pipe.id);
            self.check_linger(ctx, pipe.conn);
        }
    }

    /// A lingering connection closes once no send pipe has work left and quinn-proto has no
    /// unacknowledged stream data.
    fn check_linger(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId) {
        let Some(side) = self.conns.get(&conn) else {
            return;
        };
        let pipes_done = side
            .streams
            .values()
            .all(|s| s.send.as_ref().is_none_or(|p| p.is_done()));
        if !side.linger || !pipes_done {
            return;
        }
        let now = ctx.now();
        let Some(c) = ctx.connection(conn) else {
            return;
        };
        if c.streams().send_streams() == 0 {
            c.close(now, VarInt::from_u32(0), Bytes::new());
            self.lost(conn, &ConnectionError::LocallyClosed);
        }
    }

    fn forget_if_done(&mut self, conn: ConnId, id: StreamId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let finished = c.streams.get(&id).is_some_and(|s| {
            s.send.as_ref().is_none_or(|p| p.is_done())
                && s.recv.as_ref().is_none_or(|p| p.is_done())
        });
        if finished {
            c.streams.remove(&id);
        }
    }

    fn service_conn(&mut self, ctx: &mut ShardCtx<'_>, shared: &Arc<ConnShared>) {
        let req = shared.take_requests();
        let id = shared.id;
        let now = ctx.now();
        let Some(c) = ctx.connection(id) else {
            self.lost(id, &ConnectionError::LocallyClosed);
            shared.fail(&ConnectionError::LocallyClosed);
            return;
        };
        if let Some((code, reason)) = req.close {
            c.close(now, code, reason);
            self.lost(id, &ConnectionError::LocallyClosed);
            return;
        }
        if req.linger {
            if let Some(side) = self.conns.get_mut(&id) {
                side.linger = true;
            }
            // streams the app never took are dropped like the handles it did take
            for pair in shared.take_unclaimed() {
                for p in pair.send.iter().chain(pair.recv.iter()) {
                    p.app_dropped(VarInt::from_u32(0));
                }
            }
            self.check_linger(ctx, id);
            return;
        }
        let Some(c) = ctx.connection(id) else {
            return;
        };
        for d in req.datagrams {
            let _ = c.datagrams().send(d, true);
        }
        shared.set_max_datagram(c.datagrams().max_size());
        let mut opened = Vec::new();
        for dir in [Dir::Bi, Dir::Uni] {
            for _ in 0..req.open[dir as usize] {
                match c.streams().open(dir) {
                    Some(s) => opened.push((dir, s)),
                    // the peer's limit: on_stream_available retries
                    None => break,
                }
            }
        }
        for (dir, s) in opened {
            let pair = self.new_stream(id, s, true, dir == Dir::Bi);
            shared.push_opened(dir, pair);
        }
    }

    /// Services everything the app queued since the last run.
    fn run_ready(&mut self, ctx: &mut ShardCtx<'_>) {
        let mut items = std::mem::take(&mut self.scratch);
        self.queue.take(&mut items);
        for item in items.drain(..) {
            match item {
                Ready::Pipe(p) => self.service_pipe(ctx, &p),
                Ready::Conn(c) => self.service_conn(ctx, &c),
            }
        }
        self.scratch = items;
    }

    /// `Engine::connect` on this shard.
    pub(crate) fn connect(
        &mut self,
        ctx: &mut ShardCtx<'_>,
        addr: SocketAddr,
        name: &str,
        tx: Responder<ConnectReply>,
    ) {
        match ctx.connect(addr, name) {
            Ok(id) => {
                self.connecting.insert(id, tx);
            }
            Err(e) => {
                let _ = tx.send(Err(ConnectError::Connect(e)));
            }
        }
    }

    /// The connection is gone: fail its pipes and its blocked app calls.
    fn lost(&mut self, conn: ConnId, err: &ConnectionError) {
        if let Some(side) = self.conns.remove(&conn) {
            for s in side.streams.values() {
                for p in s.send.iter().chain(s.recv.iter()) {
                    p.fail(err);
                }
            }
            side.shared.fail(err);
        }
    }
}

impl Handler for HandleHandler {
    fn on_connection(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId) {
        if let Some(f) = self.delegated(ctx, conn) {
            return f.on_connection(ctx, conn);
        }
        let Some(side) = self.ensure(ctx, conn) else {
            return;
        };
        let shared = side.shared.clone();
        if let Some(c) = ctx.connection(conn) {
            shared.set_max_datagram(c.datagrams().max_size());
        }
        match self.connecting.remove(&conn) {
            Some(tx) => {
                if tx.send(Ok(shared)).is_err() {
                    // the app gave up waiting (deadline): nobody will use this connection
                    self.lost(conn, &ConnectionError::LocallyClosed);
                    ctx.close(conn, 0, b"connect abandoned");
                }
            }
            None => self.hub.push_incoming(shared),
        }
    }

    fn on_stream_opened(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        if let Some(f) = self.delegated(ctx, conn) {
            return f.on_stream_opened(ctx, conn, stream);
        }
        let Some(side) = self.ensure(ctx, conn) else {
            return;
        };
        let shared = side.shared.clone();
        let dir = stream.dir();
        let pair = self.new_stream(conn, stream, dir == Dir::Bi, true);
        shared.push_incoming(dir, pair);
    }

    fn on_stream_readable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        if let Some(f) = self.delegated(ctx, conn) {
            return f.on_stream_readable(ctx, conn, stream);
        }
        if let Some(p) = self.pipe(conn, stream, PipeDir::Recv) {
            self.service_pipe(ctx, &p);
        }
    }

    fn on_stream_writable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        if let Some(f) = self.delegated(ctx, conn) {
            return f.on_stream_writable(ctx, conn, stream);
        }
        if let Some(p) = self.pipe(conn, stream, PipeDir::Send) {
            self.service_pipe(ctx, &p);
        }
    }

    fn on_stream_finished(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        if let Some(f) = self.delegated(ctx, conn) {
            return f.on_stream_finished(ctx, conn, stream);
        }
        self.check_linger(ctx, conn);
    }

    fn on_stream_available(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, dir: Dir) {
        if let Some(f) = self.delegated(ctx, conn) {
            return f.on_stream_available(ctx, conn, dir);
        }
        if let Some(side) = self.conns.get(&conn) {
            let shared = side.shared.clone();
            self.service_conn(ctx, &shared);
        }
    }

    fn on_datagram(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, datagram: Bytes) {
        if let Some(f) = self.delegated(ctx, conn) {
            return f.on_datagram(ctx, conn, datagram);
        }
        if let Some(side) = self.ensure(ctx, conn) {
            side.shared.push_datagram(datagram);
        }
    }

    fn on_closed(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, reason: &ConnectionError) {
        if let Some(f) = self.delegated(ctx, conn) {
            f.on_closed(ctx, conn, reason);
            if let Some(f) = self.fallback.as_mut() {
                f.conns.remove(&conn);
            }
            return;
        }
        if let Some(tx) = self.connecting.remove(&conn) {
            let _ = tx.send(Err(ConnectError::Handshake(reason.clone())));
        }
        self.lost(conn, reason);
    }
}

impl Drop for HandleHandler {
    /// The shard stopped: everything still open is lost; `connect` callers get `EngineStopped`.
    fn drop(&mut self) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.lost(id, &ConnectionError::LocallyClosed);
        }
        // queued objects hold the queue (pipe → queue → pipe): break the cycle
        self.queue.take(&mut self.scratch);
        self.scratch.clear();
    }
}
