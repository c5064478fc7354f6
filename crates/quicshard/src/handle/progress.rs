//! How an app thread that waits for a shard gets the shard to make progress: the handle layer's
//! small runtime abstraction ([`Progress`]), in the spirit of quinn's `Runtime` trait, which
//! separates its endpoint from the executor.
//!
//! - **Worker backend** ([`Workers`]): shard threads run the shards; a blocked app thread sleeps
//!   on its [`ThreadSignal`] until the shard's change wakes it, and a message to a full mailbox
//!   waits for the shard thread to drain it.
//! - **App-driven backends** (the direct backend, `crate::direct`): no shard thread; a blocked
//!   app thread drives the engine itself. They implement [`Progress`] and, for the engine's own
//!   calls (`tick`, `poll_fd`, shutdown), [`Driven`].
//!
//! Every handle object reaches its backend through its shard queue's [`ProgressLink`], set once
//! when an app-driven backend starts (its driver is built after the shards' handlers, which hold
//! the link); an unset link means the worker backend.

use std::os::fd::RawFd;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use super::notify::ThreadSignal;
use crate::shard::mailbox::{MailboxTx, Msg, SendError};

/// Makes progress on behalf of a waiting app thread (see the module docs).
pub(crate) trait Progress: Send + Sync {
    /// Waits until `sig` fires (`true`; also when the engine made progress: the caller checks
    /// its object again) or `deadline` passes (`false`).
    fn wait(&self, sig: &Arc<ThreadSignal>, deadline: Option<Instant>) -> bool;
    /// Runs the shards' pending work on the calling thread without blocking; `false` if it did
    /// not (another thread was driving; on the worker backend the shard threads do it).
    fn tick(&self) -> bool;
}

/// An app-driven backend as its engine sees it: one driver for one or more engines' shards.
pub(crate) trait Driven: Progress {
    /// A descriptor readable when the engine has input (`None`: not pollable).
    fn poll_fd(&self) -> Option<RawFd>;
    /// When the engine next needs a tick without input.
    fn next_deadline(&self) -> Option<Instant>;
    /// Tells shard `index` of the driver to stop by `deadline` and drives until it has.
    fn shutdown(&self, index: usize, deadline: Instant);
}

/// The worker backend: shard threads make the progress (see the module docs).
pub(crate) struct Workers;

impl Progress for Workers {
    fn wait(&self, sig: &Arc<ThreadSignal>, deadline: Option<Instant>) -> bool {
        sig.wait(deadline)
    }

    fn tick(&self) -> bool {
        false
    }
}

/// Queues `msg` in `mb` for an app-driven backend: while the mailbox is full, runs the engine
/// (or lets the thread driving it) drain it, instead of blocking a thread that may be the only
/// one able to drain it.
pub(crate) fn send_driving<H>(
    backend: &dyn Progress,
    mb: &MailboxTx<H>,
    mut msg: Msg<H>,
) -> Result<(), SendError<Msg<H>>> {
    loop {
        match mb.try_send(msg) {
            Err(SendError::Full(m)) => {
                msg = m;
                if !backend.tick() {
                    std::thread::yield_now();
                }
            }
            r => return r,
        }
    }
}

/// Where the handles of one engine find its backend (see the module docs). Weak: the driver
/// owns the shards, whose handlers own the queues holding this.
#[derive(Clone, Default)]
pub(crate) struct ProgressLink(Arc<OnceLock<Weak<dyn Progress>>>);

impl ProgressLink {
    /// Points the link at an app-driven backend (once; later calls are ignored).
    pub(crate) fn set(&self, backend: Weak<dyn Progress>) {
        let _ = self.0.set(backend);
    }

    /// [`Progress::wait`] on the engine's backend.
    pub(crate) fn wait(&self, sig: &Arc<ThreadSignal>, deadline: Option<Instant>) -> bool {
        match self.0.get().and_then(Weak::upgrade) {
            Some(p) => p.wait(sig, deadline),
            None => Workers.wait(sig, deadline),
        }
    }

    /// Queues `msg` in a shard's mailbox from an app thread, waiting while it is full: for the
    /// shard thread to drain it (workers), or driving ([`send_driving`]).
    pub(crate) fn send<H>(&self, mb: &MailboxTx<H>, msg: Msg<H>) -> Result<(), SendError<Msg<H>>> {
        match self.0.get().and_then(Weak::upgrade) {
            Some(p) => send_driving(&*p, mb, msg),
            None => mb.send_blocking(msg),
        }
    }
}
