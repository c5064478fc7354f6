//! The callback API: a [`Handler`] per shard, [`ShardCtx`] to reach that shard's connections, and
//! [`Remote`] to run code on a shard from any thread.
//!
//! A `Handler` is created on its shard's thread by the engine's factory (`Fn(ShardId) -> H`) and
//! only ever called there, so it needs no locks and need not be `Send`. Every callback gets a
//! [`ShardCtx`], which is `!Send` and, in debug builds, also checks the calling thread; through it
//! the handler drives connections with quinn-proto's own stream API
//! ([`ShardCtx::connection`] returns `&mut quinn_proto::Connection`). After a callback returns, the
//! shard flushes every connection the callback touched (transmits, timers).
//!
//! A callback that panics is caught: the connection it was called for is closed with the
//! application error code [`HANDLER_PANIC_CODE`], the panic is counted (`handler_panics`), and the
//! shard goes on. The handler value itself may be left inconsistent by the panic.
//!
//! # Events are hints
//! `on_stream_readable` / `on_stream_writable` may be spurious (e.g. readable is also reported
//! right after `on_stream_opened`); read or write until quinn-proto says `Blocked`.

//!
//! The interface itself ([`Handler`], [`ShardCtx`], [`ConnId`], [`ShardId`]) belongs to the shard
//! layer (`shard/callback.rs`); this module adds [`Remote`] on top of the shards' mailboxes.

use std::net::SocketAddr;
use std::sync::Arc;

pub use crate::shard::callback::{ConnId, Handler, ShardCtx, ShardId, HANDLER_PANIC_CODE};
use crate::shard::mailbox::{MailboxTx, Msg, SendError};

/// Why a [`Remote`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// No shard with this index: use `0..shards()`.
    #[error("no shard {0}")]
    NoSuchShard(usize),
    /// The shard's mailbox is full: it is overloaded; retry later.
    #[error("shard mailbox full")]
    Full,
    /// The shard has stopped (engine shut down, or its thread died).
    #[error("shard stopped")]
    Closed,
    /// A blocking call was made from the thread that runs the target shard (its own, or one it
    /// shares with its group), where it would deadlock; use
    /// [`ShardCtx`] methods directly instead.
    #[error("blocking Remote call from the target shard's own thread would deadlock")]
    WouldDeadlock,
    /// quinn-proto refused to create the connection.
    #[error("connect: {0}")]
    Connect(#[from] quinn_proto::ConnectError),
}

/// A handle usable from any thread to reach the shards. `Clone + Send + Sync`.
pub struct Remote<H> {
    pub(crate) mailboxes: Arc<[MailboxTx<H>]>,
}

impl<H> Clone for Remote<H> {
    fn clone(&self) -> Self {
        Self {
            mailboxes: self.mailboxes.clone(),
        }
    }
}

impl<H: Handler> Remote<H> {
    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.mailboxes.len()
    }

    /// Runs `f` on `shard`'s thread with that shard's context and handler, soon (at the shard's
    /// next loop iteration). Does not block: a full mailbox is [`RemoteError::Full`].
    pub fn run_on<F>(&self, shard: ShardId, f: F) -> Result<(), RemoteError>
    where
        F: FnOnce(&mut ShardCtx<'_>, &mut H) + Send + 'static,
    {
        let mb = self
            .mailboxes
            .get(shard.0)
            .ok_or(RemoteError::NoSuchShard(shard.0))?;
        mb.try_send(Msg::Run(Box::new(f))).map_err(|e| match e {
            SendError::Full(_) => RemoteError::Full,
            SendError::Closed(_) => RemoteError::Closed,
        })
    }

    /// Opens a client connection on `shard` (on its unshared socket) and waits for its `ConnId`
    /// (not for the handshake: `Handler::on_connection` reports that). Blocks until the shard
    /// answers; calling it from that shard's own thread is [`RemoteError::WouldDeadlock`].
    pub fn connect(
        &self,
        shard: ShardId,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<ConnId, RemoteError> {
        if crate::shard::group::runs_here(shard.0) {
            return Err(RemoteError::WouldDeadlock);
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let name = server_name.to_owned();
        self.run_on(shard, move |ctx, _h| {
            let _ = tx.send(ctx.connect(addr, &name));
        })?;
        match rx.recv() {
            Ok(r) => Ok(r?),
            Err(_) => Err(RemoteError::Closed),
        }
    }
}
