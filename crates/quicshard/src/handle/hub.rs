//! The [`Hub`] every shard's [`HandleHandler`] and every handle of one handle-mode engine share:
//! configuration, the accept queue, the shard to connect from next, and the way to post work to
//! a shard (through the engine's [`ProgressLink`]).

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use super::bridge::HandleHandler;
use super::conn::Connection;
use super::conn_shared::ConnShared;
use super::error::ConnectError;
use super::nonblocking::Registration;
use super::notify::{Block, Slot, ThreadSignal, Waiters};
use super::progress::ProgressLink;
use super::sync::{lock, AtomicUsize, Mutex, Ordering};
use crate::handler::{Remote, ShardCtx, ShardId};
use crate::shard::mailbox::Msg;

/// Handle-mode settings.
#[derive(Debug, Clone)]
pub struct HandleConfig {
    /// Bytes per stream direction buffered between the app and the shard at most. Default
    /// 256 KiB. Larger pipes mean fewer wake-ups per byte for bulk transfers (through the
    /// handles, 256 KiB cost 1.06x the callback API's CPU per GiB, 64 KiB 1.17x:
    /// `docs/BENCHMARKS.md`).
    /// Memory follows what a pipe holds, not its capacity: the buffer starts at one page and
    /// doubles as it fills.
    pub pipe_capacity: usize,
}

impl Default for HandleConfig {
    fn default() -> Self {
        Self {
            pipe_capacity: 256 * 1024,
        }
    }
}

/// What the shards and the handles of one handle-mode engine share.
pub(crate) struct Hub {
    pub(crate) config: HandleConfig,
    /// Set when the engine starts, before any handle exists.
    remote: OnceLock<Remote<HandleHandler>>,
    accept: Mutex<AcceptState>,
    next_shard: AtomicUsize,
    /// How app threads get the shards to make progress (set by an app-driven backend).
    pub(crate) progress: ProgressLink,
}

#[derive(Default)]
struct AcceptState {
    queue: VecDeque<Arc<ConnShared>>,
    waiters: Waiters,
}

/// The answer a shard gives to `connect`.
pub(crate) type ConnectReply = Result<Arc<ConnShared>, ConnectError>;

impl Hub {
    pub(crate) fn new(config: HandleConfig) -> Self {
        Self {
            config,
            remote: OnceLock::new(),
            accept: Mutex::new(crate::ranks::HUB_ACCEPT, AcceptState::default()),
            next_shard: AtomicUsize::new(0),
            progress: ProgressLink::default(),
        }
    }

    pub(crate) fn progress(&self) -> &ProgressLink {
        &self.progress
    }

    /// Connects the hub to its started engine's shards.
    pub(crate) fn set_remote(&self, remote: Remote<HandleHandler>) {
        let _ = self.remote.set(remote);
    }

    /// The shard the next `connect` runs on (round robin over `shards`).
    pub(crate) fn next_connect_shard(&self, shards: usize) -> ShardId {
        ShardId(self.next_shard.fetch_add(1, Ordering::Relaxed) % shards.max(1))
    }

    /// Runs `f` on `shard`. From an app thread this waits while the mailbox is full; from a
    /// shard thread (e.g. a handle dropped there) it does not, and a full mailbox loses the
    /// message (logged). `Err` once the shard has stopped.
    pub(crate) fn post(
        &self,
        shard: ShardId,
        f: impl FnOnce(&mut ShardCtx<'_>, &mut HandleHandler) + Send + 'static,
    ) -> Result<(), ()> {
        // invariant: handles (the only callers) come from a started engine, which set `remote`
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

    pub(crate) fn push_incoming(&self, c: Arc<ConnShared>) {
        let wake = {
            let mut s = lock(&self.accept);
            s.queue.push_back(c);
            s.waiters.take()
        };
        wake.wake();
    }

    pub(crate) fn accept(&self, how: Block<'_>) -> Option<Arc<ConnShared>> {
        let mut s = lock(&self.accept);
        // a connection that died while queued is still handed out: its handle reports why
        if let Some(c) = s.queue.pop_front() {
            return Some(c);
        }
        s.waiters.block(how);
        None
    }

    pub(crate) fn register_accept(&self, how: Block<'_>) -> bool {
        let mut s = lock(&self.accept);
        if !s.queue.is_empty() {
            return true;
        }
        s.waiters.block(how);
        false
    }

    pub(crate) fn unblock_accept(&self, sig: &Arc<ThreadSignal>) {
        lock(&self.accept).waiters.unblock_thread(sig);
    }

    pub(crate) fn set_poll_accept(&self, reg: Option<Arc<Registration>>) {
        let wake = {
            let mut s = lock(&self.accept);
            let ready = reg.is_some() && !s.queue.is_empty();
            s.waiters.set_poll(reg, ready)
        };
        wake.wake();
    }
}

/// Turns a shard's connect answer into a handle.
pub(crate) fn finish_connect(
    r: Result<ConnectReply, super::notify::Canceled>,
) -> Result<Connection, ConnectError> {
    match r {
        Ok(Ok(c)) => Ok(Connection::new(c)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ConnectError::EngineStopped),
    }
}

/// Abandons a pending connect when its future is dropped.
pub(crate) struct ConnectGuard(pub(crate) Option<Arc<Slot<ConnectReply>>>);

impl Drop for ConnectGuard {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            // an answer that already arrived becomes a handle, whose drop closes it
            if let Some(r) = slot.abandon() {
                let _ = finish_connect(Ok(r));
            }
        }
    }
}
