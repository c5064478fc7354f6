//! A shard's callback interface (the types [`crate::handler`] makes public): the [`Handler`]
//! trait, [`ShardCtx`] over the shard's [`Core`], and the names of shards and connections.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use quinn_proto::{Connection, ConnectionError, Dir, StreamId, VarInt};

use super::Core;

/// The application error code used to close a connection whose handler callback panicked.
pub const HANDLER_PANIC_CODE: u32 = 0x0fff_fffe;

/// Index of a shard, `0..shards`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub usize);

/// A connection, named by its shard and slot. `Copy + Send`: it may cross threads, but it can only
/// be resolved to the connection on its own shard ([`ShardCtx::connection`]). A stale `ConnId`
/// (its connection is gone and the slot reused) resolves to `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub(crate) shard: u32,
    pub(crate) slot: u32,
    pub(crate) gen: u32,
}

impl ConnId {
    /// The shard that owns this connection.
    pub fn shard(&self) -> ShardId {
        ShardId(self.shard as usize)
    }
}

/// Application callbacks for one shard's connections. All methods default to doing nothing.
#[allow(unused_variables)]
pub trait Handler: Send + 'static {
    /// A connection (incoming or created by `connect`) completed its handshake.
    fn on_connection(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId) {}
    /// The peer opened a stream; it is already accepted (`streams().accept`).
    fn on_stream_opened(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {}
    /// A stream may have data (or a FIN, or a reset) to read.
    fn on_stream_readable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {}
    /// A stream that was blocked (flow control, or stopped by the peer) may accept writes.
    fn on_stream_writable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {}
    /// The peer's stream limit rose: a stream of this direction may be opened again.
    fn on_stream_available(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, dir: Dir) {}
    /// Everything sent on a stream was acknowledged.
    fn on_stream_finished(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {}
    /// An unreliable datagram arrived.
    fn on_datagram(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, datagram: Bytes) {}
    /// The connection is closed (by the peer, an error, a timeout, or locally). Called once; the
    /// connection stays reachable through `ctx.connection` until it is drained.
    fn on_closed(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, reason: &ConnectionError) {}
}

/// Access to the calling shard's connections. `!Send`: it exists only on its shard's thread.
pub struct ShardCtx<'a> {
    pub(crate) core: &'a mut Core,
    _not_send: PhantomData<*const ()>,
}

impl<'a> ShardCtx<'a> {
    pub(crate) fn new(core: &'a mut Core) -> Self {
        Self {
            core,
            _not_send: PhantomData,
        }
    }

    #[inline]
    fn check_thread(&self) {
        debug_assert_eq!(
            std::thread::current().id(),
            self.core.owner,
            "ShardCtx used off its shard's thread"
        );
    }

    /// This shard.
    pub fn shard(&self) -> ShardId {
        self.check_thread();
        ShardId(self.core.id)
    }

    /// The time of the current loop iteration; pass it to quinn-proto calls that need `now`.
    pub fn now(&self) -> Instant {
        self.check_thread();
        self.core.now
    }

    /// The connection, if it is alive and owned by this shard. The shard will flush it (transmit,
    /// re-arm its timer) after the current callback or closure returns.
    pub fn connection(&mut self, conn: ConnId) -> Option<&mut Connection> {
        self.check_thread();
        self.core.touch(conn)
    }

    /// The IDs of all connections on this shard (including closing ones).
    pub fn connection_ids(&self) -> Vec<ConnId> {
        self.check_thread();
        self.core.conn_ids()
    }

    /// Opens a client connection from this shard's unshared socket.
    pub fn connect(
        &mut self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<ConnId, quinn_proto::ConnectError> {
        self.check_thread();
        self.core.connect(addr, server_name)
    }

    /// Moves the connection to a connection ID of the peer's that it has not used yet: the
    /// current one is retired (RETIRE_CONNECTION_ID) and a PING goes out at once under the new
    /// one. RFC 9000 §9.5 asks this of a client whose local address changed, so that an
    /// observer cannot link its two paths by the CID; `quicshard get --new-cid-after` uses it to
    /// test that a balancer keeps such a client on its server. `false` if the connection is not
    /// on this shard.
    ///
    /// The peer must have issued a spare ID (NEW_CONNECTION_ID; quinn-proto, and so quicshard,
    /// issues up to four after the handshake, as the client's `active_connection_id_limit`
    /// allows); without one the connection keeps its current ID and only
    /// the PING is sent. A move that happened shows as a RETIRE_CONNECTION_ID frame sent
    /// (`stats().frame_tx.retire_connection_id`).
    pub fn switch_remote_cid(&mut self, conn: ConnId) -> bool {
        match self.connection(conn) {
            Some(c) => {
                c.local_address_changed();
                true
            }
            None => false,
        }
    }

    /// Closes a connection with an application error code. No-op for unknown connections.
    pub fn close(&mut self, conn: ConnId, code: u32, reason: &[u8]) {
        let now = self.now();
        if let Some(c) = self.connection(conn) {
            c.close(now, VarInt::from_u32(code), Bytes::copy_from_slice(reason));
        }
    }
}

/// A closure run on a shard by [`Remote::run_on`].
pub(crate) type RunFn<H> = Box<dyn FnOnce(&mut ShardCtx<'_>, &mut H) + Send>;
