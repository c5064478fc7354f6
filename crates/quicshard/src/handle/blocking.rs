//! Blocking semantics over the pipes: the wait loop every blocking handle operation uses, the
//! [`Pipe`] trait naming what can be waited on, and [`block_until`] to wait on several at once.
//!
//! # Implementation notes
//! A blocking call tries its operation with `Block::Thread(signal)`: if the object is not ready,
//! the signal is registered under the object's lock in the same critical section that saw it not
//! ready, so the shard's next favourable change wakes it. Deadlines are absolute `Instant`s; on
//! expiry the registration is withdrawn and the operation is tried once more before `TimedOut`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::notify::{Block, ThreadSignal};
use super::progress::ProgressLink;
use super::sync::{AtomicBool, AtomicU64, Ordering};
use super::waitable::Wait;

/// Why a blocking operation returned without a result.
pub(crate) enum Stall {
    WouldBlock,
    TimedOut,
}

/// Per-handle mode: non-blocking switch and default timeout.
#[derive(Default)]
pub(crate) struct Opts {
    nonblocking: AtomicBool,
    /// Nanoseconds; 0 = no timeout.
    timeout_ns: AtomicU64,
}

impl Opts {
    pub(crate) fn set_nonblocking(&self, on: bool) {
        self.nonblocking.store(on, Ordering::Relaxed);
    }
    pub(crate) fn set_timeout(&self, t: Option<Duration>) {
        let ns = t.map_or(0, |t| (t.as_nanos().min(u64::MAX as u128) as u64).max(1));
        self.timeout_ns.store(ns, Ordering::Relaxed);
    }
    pub(crate) fn nonblocking(&self) -> bool {
        self.nonblocking.load(Ordering::Relaxed)
    }
    /// The deadline for a call starting now: `explicit`, else now + the handle's timeout.
    pub(crate) fn deadline(&self, explicit: Option<Instant>) -> Option<Instant> {
        explicit.or_else(|| match self.timeout_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Instant::now().checked_add(Duration::from_nanos(ns)),
        })
    }
}

/// Runs `attempt` until it yields a value: once in non-blocking mode, else waiting on a thread
/// signal between tries until `deadline` ([`ProgressLink::wait`]: `progress` is the object's
/// shard's link). `unregister` withdraws the signal on expiry.
pub(crate) fn wait_for<T, E>(
    nonblocking: bool,
    deadline: Option<Instant>,
    progress: &ProgressLink,
    mut attempt: impl FnMut(Block<'_>) -> Result<Option<T>, E>,
    unregister: impl FnOnce(&Arc<ThreadSignal>),
    stall: impl Fn(Stall) -> E,
) -> Result<T, E> {
    if nonblocking {
        return attempt(Block::Flag)?.ok_or_else(|| stall(Stall::WouldBlock));
    }
    debug_assert!(
        crate::shard::current_shard().is_none(),
        "blocking handle call on a shard thread: the shard that must answer may be this one"
    );
    let sig = ThreadSignal::new();
    loop {
        if let Some(v) = attempt(Block::Thread(&sig))? {
            return Ok(v);
        }
        if !progress.wait(&sig, deadline) {
            unregister(&sig);
            return attempt(Block::Flag)?.ok_or_else(|| stall(Stall::TimedOut));
        }
    }
}

/// Something an app can wait on: a [`SendStream`](super::SendStream) (ready: it can take a
/// byte, or will fail at once), a [`RecvStream`](super::RecvStream) (ready: a byte, the end, or
/// an error to report), a [`Connection`](super::Connection) (ready: an incoming or opened
/// stream, a datagram, or closed) or a handle-mode [`Engine`](crate::Engine) (ready: a
/// connection to accept). Sealed: the set of pipes is the crate's.
pub trait Pipe: sealed::Sealed {}

pub(crate) mod sealed {
    /// The crate-private half of [`Pipe`](super::Pipe).
    #[allow(unreachable_pub)]
    pub trait Sealed {
        /// What to register on.
        fn target(&self) -> super::Target<'_>;
    }
}

/// The shared object behind a [`Pipe`] (opaque outside the crate): any waitable object.
#[allow(unreachable_pub)]
pub struct Target<'a>(&'a dyn Wait);

impl<'a> Target<'a> {
    pub(crate) fn new(object: &'a dyn Wait) -> Self {
        Self(object)
    }

    /// The object's wait operations.
    pub(crate) fn wait(&self) -> &'a dyn Wait {
        self.0
    }
}

/// Blocks until at least one of `pipes` is ready (see [`Pipe`]) or `deadline` passes. Returns
/// whether one is ready. With an empty list it just waits for the deadline (`None`: returns at
/// once). Readiness is a hint that the next operation will not block, not a reservation.
///
/// # Examples
/// ```no_run
/// # fn f(a: &quicshard::handle::RecvStream, b: &quicshard::handle::RecvStream) {
/// use std::time::{Duration, Instant};
/// use quicshard::handle::block_until;
/// if block_until(&[a, b], Some(Instant::now() + Duration::from_secs(1))) {
///     // a read on a or b will not block now (at least one of them)
/// }
/// # }
/// ```
pub fn block_until(pipes: &[&dyn Pipe], deadline: Option<Instant>) -> bool {
    if pipes.is_empty() {
        if let Some(d) = deadline {
            std::thread::sleep(d.saturating_duration_since(Instant::now()));
        }
        return false;
    }
    let sig = ThreadSignal::new();
    let first = pipes[0].target();
    let progress = first.wait().progress();
    let unregister_all = |sig: &Arc<ThreadSignal>| {
        for p in pipes {
            p.target().wait().unblock_thread(sig);
        }
    };
    loop {
        if pipes
            .iter()
            .any(|p| p.target().wait().register(Block::Thread(&sig)))
        {
            unregister_all(&sig);
            return true;
        }
        if !progress.wait(&sig, deadline) {
            unregister_all(&sig);
            return pipes
                .iter()
                .any(|p| p.target().wait().register(Block::Flag));
        }
    }
}
