//! [`Connection`]: the app's `Clone + Send + Sync` handle on one connection's
//! [`ConnShared`](super::conn_shared): open / accept streams, datagrams, close, stats, with the
//! blocking, non-blocking and deadline variants.
//!
//! Dropping the last handle of a connection (the `Connection` clones and its streams) closes it
//! with code 0 once every stream's data is acknowledged (a peer that never reads keeps it open
//! until it idles out); [`Connection::close`] closes at once.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn_proto::{ConnectionError, ConnectionStats, Dir, VarInt};

use super::app_conn::AppConn;
use super::blocking::{sealed, wait_for, Opts, Pipe, Stall, Target};
use super::bridge::Shards;
use super::conn_shared::{ConnShared, StreamPair};
use super::error::ConnError;
use super::notify::{Block, Slot};
use super::stream::{RecvStream, SendStream};
use super::waitable::Wait;
use crate::handler::ConnId;
/// The app's handles of one stream (a unidirectional stream has one of them).
pub(crate) type StreamHalves = (Option<SendStream>, Option<RecvStream>);

/// A QUIC connection, usable from any thread (`Clone + Send + Sync`; clones share the
/// non-blocking switch and timeout). Blocking methods honour [`Connection::set_nonblocking`]
/// (then they fail with `WouldBlock`) and [`Connection::set_timeout`]; the `_until` variants take
/// an explicit deadline.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<AppConn>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.inner.shared.id)
            .field("remote", &self.inner.shared.remote)
            .finish()
    }
}

fn stall(s: Stall) -> ConnError {
    match s {
        Stall::WouldBlock => ConnError::WouldBlock,
        Stall::TimedOut => ConnError::TimedOut,
    }
}

impl Connection {
    pub(crate) fn new(shared: Arc<ConnShared>, shards: Weak<Shards>) -> Self {
        Self {
            inner: Arc::new(AppConn {
                shared,
                opts: Opts::default(),
                shards,
            }),
        }
    }

    fn streams(&self, p: StreamPair) -> StreamHalves {
        (
            p.send.map(|s| SendStream::new(s, self.inner.clone())),
            p.recv.map(|r| RecvStream::new(r, self.inner.clone())),
        )
    }

    fn bi(&self, p: StreamPair) -> (SendStream, RecvStream) {
        match self.streams(p) {
            (Some(s), Some(r)) => (s, r),
            // invariant: the shard builds bidirectional pairs with both pipes
            _ => unreachable!("bidirectional stream without both pipes"),
        }
    }

    fn uni_send(&self, p: StreamPair) -> SendStream {
        // invariant: a locally opened unidirectional stream has only a send pipe
        self.streams(p)
            .0
            .expect("opened uni stream has a send pipe")
    }

    fn uni_recv(&self, p: StreamPair) -> RecvStream {
        // invariant: a peer-opened unidirectional stream has only a receive pipe
        self.streams(p)
            .1
            .expect("incoming uni stream has a recv pipe")
    }

    /// The connection's name on its shard (for the callback API and logs).
    pub fn id(&self) -> ConnId {
        self.inner.shared.id
    }
    /// The peer's address (as of the handshake).
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.shared.remote
    }
    /// Non-blocking mode: operations that would wait fail with `WouldBlock` instead.
    pub fn set_nonblocking(&self, on: bool) {
        self.inner.opts.set_nonblocking(on);
    }
    /// Default timeout of blocking operations (`None`: wait forever).
    pub fn set_timeout(&self, t: Option<Duration>) {
        self.inner.opts.set_timeout(t);
    }

    fn pair(
        &self,
        dir: Dir,
        deadline: Option<Instant>,
        open: bool,
    ) -> Result<StreamPair, ConnError> {
        let c = &self.inner.shared;
        if open && self.inner.opts.nonblocking() {
            return c.nb_open(dir);
        }
        let mut waiting = false;
        let r = wait_for(
            self.inner.opts.nonblocking(),
            self.inner.opts.deadline(deadline),
            c.progress(),
            |how| {
                if open {
                    c.open(dir, how, &mut waiting)
                } else {
                    c.accept(dir, how)
                }
            },
            |sig| c.unblock_thread(sig),
            stall,
        );
        if waiting {
            c.open_cancel(dir);
        }
        r
    }

    /// Opens a bidirectional stream (waits while the peer's stream limit is reached).
    pub fn open_bi(&self) -> Result<(SendStream, RecvStream), ConnError> {
        self.open_bi_until(None)
    }
    /// [`Connection::open_bi`] with a deadline.
    pub fn open_bi_until(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(SendStream, RecvStream), ConnError> {
        Ok(self.bi(self.pair(Dir::Bi, deadline, true)?))
    }
    /// Opens a unidirectional stream.
    pub fn open_uni(&self) -> Result<SendStream, ConnError> {
        self.open_uni_until(None)
    }
    /// [`Connection::open_uni`] with a deadline.
    pub fn open_uni_until(&self, deadline: Option<Instant>) -> Result<SendStream, ConnError> {
        Ok(self.uni_send(self.pair(Dir::Uni, deadline, true)?))
    }
    /// The next bidirectional stream the peer opened.
    pub fn accept_bi(&self) -> Result<(SendStream, RecvStream), ConnError> {
        self.accept_bi_until(None)
    }
    /// [`Connection::accept_bi`] with a deadline.
    pub fn accept_bi_until(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(SendStream, RecvStream), ConnError> {
        Ok(self.bi(self.pair(Dir::Bi, deadline, false)?))
    }
    /// The next unidirectional stream the peer opened.
    pub fn accept_uni(&self) -> Result<RecvStream, ConnError> {
        self.accept_uni_until(None)
    }
    /// [`Connection::accept_uni`] with a deadline.
    pub fn accept_uni_until(&self, deadline: Option<Instant>) -> Result<RecvStream, ConnError> {
        Ok(self.uni_recv(self.pair(Dir::Uni, deadline, false)?))
    }

    /// Queues an unreliable datagram (the oldest queued one is dropped if 256 are waiting).
    /// Never blocks.
    pub fn send_datagram(&self, data: Bytes) -> Result<(), ConnError> {
        self.inner.shared.send_datagram(data)
    }

    /// The next datagram from the peer.
    pub fn read_datagram(&self) -> Result<Bytes, ConnError> {
        self.read_datagram_until(None)
    }
    /// [`Connection::read_datagram`] with a deadline.
    pub fn read_datagram_until(&self, deadline: Option<Instant>) -> Result<Bytes, ConnError> {
        let c = &self.inner.shared;
        wait_for(
            self.inner.opts.nonblocking(),
            self.inner.opts.deadline(deadline),
            c.progress(),
            |how| c.read_datagram(how),
            |sig| c.unblock_thread(sig),
            stall,
        )
    }

    /// The largest datagram the path and peer accept now (`None`: datagrams unsupported).
    pub fn max_datagram_size(&self) -> Option<usize> {
        self.inner.shared.max_datagram()
    }

    /// Closes the connection with an application error code and reason. Blocked and later
    /// operations fail with `ConnectionLost(LocallyClosed)`. Does not wait.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        self.inner.shared.close(code, reason);
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        self.inner.shared.lost()
    }

    /// Waits until the connection ends (by either side, or a timeout) and returns why. A server
    /// that wants the client to have read everything waits here before dropping its last handle:
    /// dropping closes the connection once our data is acknowledged, which does not mean the
    /// peer's application has read it.
    pub fn closed_until(&self, deadline: Option<Instant>) -> Result<ConnectionError, ConnError> {
        let c = &self.inner.shared;
        wait_for(
            false,
            deadline,
            c.progress(),
            |how| Ok(c.closed(how)),
            |sig| c.unblock_thread(sig),
            stall,
        )
    }

    /// quinn-proto's counters for this connection (asks the shard and waits for the answer).
    pub fn stats(&self) -> Result<ConnectionStats, ConnError> {
        self.query(|conn| conn.stats())
    }

    /// The application protocol (ALPN) the handshake negotiated, if any (asks the shard and
    /// waits for the answer).
    pub fn alpn(&self) -> Result<Option<Vec<u8>>, ConnError> {
        self.query(|conn| {
            conn.crypto_session()
                .handshake_data()?
                .downcast::<quinn_proto::crypto::rustls::HandshakeData>()
                .ok()?
                .protocol
        })
    }

    /// Runs `f` on the connection on its shard and waits for the answer.
    fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut quinn_proto::Connection) -> T + Send + 'static,
    ) -> Result<T, ConnError> {
        let c = &self.inner.shared;
        let (slot, tx) = Slot::new();
        let id = c.id;
        let shards = self
            .inner
            .shards
            .upgrade()
            .ok_or(ConnError::EngineStopped)?;
        shards
            .post(id.shard(), move |ctx, _h| {
                if let Some(conn) = ctx.connection(id) {
                    let _ = tx.send(f(conn));
                }
            })
            .map_err(|_| ConnError::EngineStopped)?;
        let r = wait_for(
            false,
            None,
            c.progress(),
            |how| Ok::<_, ConnError>(slot.poll(how)),
            |sig| slot.unblock_thread(sig),
            stall,
        )?;
        r.map_err(|_| match self.close_reason() {
            Some(e) => ConnError::ConnectionLost(e),
            None => ConnError::EngineStopped,
        })
    }

    // ----- async building blocks (see async_io.rs) -----

    pub(crate) fn poll_pair(
        &self,
        dir: Dir,
        open: bool,
        requested: &mut bool,
        how: Block<'_>,
    ) -> Result<Option<StreamHalves>, ConnError> {
        let c = &self.inner.shared;
        let p = if open {
            c.open(dir, how, requested)?
        } else {
            c.accept(dir, how)?
        };
        Ok(p.map(|p| self.streams(p)))
    }

    pub(crate) fn cancel_open(&self, dir: Dir) {
        self.inner.shared.open_cancel(dir);
    }

    pub(crate) fn poll_datagram(&self, how: Block<'_>) -> Result<Option<Bytes>, ConnError> {
        self.inner.shared.read_datagram(how)
    }

    pub(crate) fn poll_closed(&self, how: Block<'_>) -> Option<ConnectionError> {
        self.inner.shared.closed(how)
    }
}

impl sealed::Sealed for Connection {
    fn target(&self) -> Target<'_> {
        Target::new(&*self.inner.shared)
    }
}
impl Pipe for Connection {}
