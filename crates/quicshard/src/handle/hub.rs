//! The [`Hub`] every shard's `HandleHandler` and every handle of one handle-mode engine share:
//! configuration, the accept queue (a [`Waitable`]), the shard to connect from next, and the
//! engine's [`ProgressLink`]. Core tier: it names neither the app-side handles nor the shard
//! side.

use std::collections::VecDeque;
use std::sync::Arc;

use super::conn_shared::ConnShared;
use super::error::ConnectError;
use super::notify::{Block, Waiters};
use super::progress::ProgressLink;
use super::sync::{lock, AtomicUsize, Mutex, Ordering};
use super::waitable::Waitable;
use crate::handler::ShardId;

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
    accept: Mutex<AcceptState>,
    next_shard: AtomicUsize,
    /// How app threads get the shards to make progress (set by an app-driven backend).
    pub(crate) progress: ProgressLink,
}

#[derive(Default)]
pub(crate) struct AcceptState {
    queue: VecDeque<Arc<ConnShared>>,
    waiters: Waiters,
}

/// The answer a shard gives to `connect`.
pub(crate) type ConnectReply = Result<Arc<ConnShared>, ConnectError>;

/// Ready: a connection waits to be accepted.
impl Waitable for Hub {
    type State = AcceptState;
    fn state(&self) -> &Mutex<AcceptState> {
        &self.accept
    }
    fn waiters(s: &mut AcceptState) -> &mut Waiters {
        &mut s.waiters
    }
    fn is_ready(&self, s: &AcceptState) -> bool {
        !s.queue.is_empty()
    }
    fn link(&self) -> &ProgressLink {
        &self.progress
    }
}

impl Hub {
    pub(crate) fn new(config: HandleConfig) -> Self {
        Self {
            config,
            accept: Mutex::new(crate::ranks::HUB_ACCEPT, AcceptState::default()),
            next_shard: AtomicUsize::new(0),
            progress: ProgressLink::default(),
        }
    }

    pub(crate) fn progress(&self) -> &ProgressLink {
        &self.progress
    }

    /// The shard the next `connect` runs on (round robin over `shards`).
    pub(crate) fn next_connect_shard(&self, shards: usize) -> ShardId {
        ShardId(self.next_shard.fetch_add(1, Ordering::Relaxed) % shards.max(1))
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
}
