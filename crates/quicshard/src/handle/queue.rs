//! [`ShardQueue`]: one shard's queue of handle objects (stream pipes, connections) that need the
//! shard's service, with a coalesced wake-up: only the push that finds the queue disarmed posts a
//! message to the shard; the shard disarms when it takes the queue. Pipes and connections reach
//! it through the small traits they define ([`PipeQueue`], [`ConnQueue`]), so they do not name
//! each other through it.

use std::sync::Arc;

use super::conn_shared::{ConnQueue, ConnShared};
use super::pipe::{PipeQueue, StreamPipe};
use super::progress::ProgressLink;
use super::sync::{lock, Mutex};

/// An object the shard must look at.
pub(crate) enum Ready {
    /// A stream pipe: data, FIN, reset or stop to pass between the pipe and quinn-proto.
    Pipe(Arc<StreamPipe>),
    /// A connection: open requests, datagrams to send, close.
    Conn(Arc<ConnShared>),
}

/// How a [`ShardQueue`] reaches its shard: posts one "service your queue" message; `false` if it
/// could not (the shard stopped, or its mailbox is full and the caller may not block).
pub(crate) type PostFn = Box<dyn Fn() -> bool + Send + Sync>;

/// One shard's queue of objects needing service (see the module docs).
pub(crate) struct ShardQueue {
    state: Mutex<QueueState>,
    post: PostFn,
    /// How a blocked app thread gets this shard to make progress.
    progress: ProgressLink,
}

#[derive(Default)]
struct QueueState {
    items: Vec<Ready>,
    armed: bool,
}

impl ShardQueue {
    pub(crate) fn new(post: PostFn) -> Self {
        Self {
            state: Mutex::new(crate::ranks::SHARD_QUEUE, QueueState::default()),
            post,
            progress: ProgressLink::default(),
        }
    }

    /// Blocked waits on this shard's objects make progress through `progress`.
    pub(crate) fn with_progress(mut self, progress: ProgressLink) -> Self {
        self.progress = progress;
        self
    }

    /// Queues `item` (the caller already checked the item is not queued: its `pending` flag).
    pub(crate) fn kick(&self, item: Ready) {
        let first = {
            let mut s = lock(&self.state);
            s.items.push(item);
            !std::mem::replace(&mut s.armed, true)
        };
        if first && !(self.post)() {
            // nobody will come for the queue: let the next kick try again
            lock(&self.state).armed = false;
        }
    }

    /// Shard side: takes everything queued and disarms.
    pub(crate) fn take(&self, into: &mut Vec<Ready>) {
        let mut s = lock(&self.state);
        s.armed = false;
        into.append(&mut s.items);
    }
}

impl PipeQueue for ShardQueue {
    fn kick_pipe(&self, pipe: Arc<StreamPipe>) {
        self.kick(Ready::Pipe(pipe));
    }
    fn progress(&self) -> &ProgressLink {
        &self.progress
    }
}

impl ConnQueue for ShardQueue {
    fn kick_conn(&self, conn: Arc<ConnShared>) {
        self.kick(Ready::Conn(conn));
    }
    fn progress(&self) -> &ProgressLink {
        &self.progress
    }
}
