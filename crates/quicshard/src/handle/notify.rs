//! Who wakes whom across the app/shard boundary: the app side's [`Waiters`] (blocked threads, a
//! task's `Waker`, a [`Poller`](super::Poller) registration), the shard side's
//! [`ShardQueue`](super::queue::ShardQueue) (objects waiting for service, one coalesced mailbox
//! message per burst), and [`Slot`], a one-shot answer from a shard to an app thread.
//!
//! # Implementation notes
//! Both directions are edge-triggered and coalesced, and both decisions are taken under the
//! mutex of the object whose state changed, so no wake-up can be lost between "check" and "wait":
//! - shard → app: an app operation that finds its object not ready marks it `blocked` and
//!   registers how to be woken, under the object's lock. The shard, when it changes that object
//!   in the app's favour, takes the registrations ([`Waiters::take`]) under the same lock and
//!   wakes them after unlocking ([`Wake::wake`]). No registration, no wake-up.
//! - app → shard: an object asks for service only when it is not already queued (its `pending`
//!   flag, under its lock); the [`ShardQueue`](super::queue::ShardQueue) posts one message to the shard's mailbox only on
//!   its empty → non-empty transition (`armed`, under the queue lock).

use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use super::registration::Registration;
use super::sync::{lock, Condvar, Mutex};

/// One app thread's wake-up: a flag and a condition variable. Fresh per blocking call.
pub(crate) struct ThreadSignal {
    fired: Mutex<bool>,
    cv: Condvar,
    /// Direct backend: set while this thread drives the engine (blocked in its poll rather than
    /// on `cv`), so a notification from another thread interrupts the poll.
    poke: std::sync::OnceLock<Arc<mio::Waker>>,
}

impl ThreadSignal {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            fired: Mutex::new(crate::ranks::SIGNAL, false),
            cv: Condvar::new(),
            poke: std::sync::OnceLock::new(),
        })
    }

    pub(crate) fn notify(&self) {
        *lock(&self.fired) = true;
        self.cv.notify_one();
        if let Some(w) = self.poke.get() {
            if let Err(e) = w.wake() {
                tracing::warn!(error = %e, "direct driver waker failed");
            }
        }
    }

    /// Makes [`ThreadSignal::notify`] also wake `waker` (the direct driver's poll).
    pub(crate) fn set_poke(&self, waker: &Arc<mio::Waker>) {
        let _ = self.poke.set(waker.clone());
    }

    /// Whether the signal fired (and resets it), without waiting.
    pub(crate) fn take_fired(&self) -> bool {
        std::mem::take(&mut *lock(&self.fired))
    }

    /// Waits until notified (`true`, and the flag is reset) or `deadline` passes (`false`).
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        let mut fired = lock(&self.fired);
        loop {
            if *fired {
                *fired = false;
                return true;
            }
            fired = match deadline {
                None => self.cv.wait(fired),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    self.cv.wait_timeout(fired, d - now).0
                }
            };
        }
    }
}

/// How an app operation that finds its object not ready wants to be woken.
#[derive(Clone, Copy)]
pub(crate) enum Block<'a> {
    /// Non-blocking: only mark the object blocked, so a registered poller hears of the change.
    Flag,
    /// A thread about to wait on this signal.
    Thread(&'a Arc<ThreadSignal>),
    /// A task: wake this waker.
    Task(&'a Waker),
}

/// The app side's registrations on one object. Lives inside the object's mutex.
#[derive(Default)]
pub(crate) struct Waiters {
    /// The app saw the object not ready and has not been woken since: the edge.
    blocked: bool,
    threads: Vec<Arc<ThreadSignal>>,
    /// Tasks; several for objects shared by many tasks (a connection's accept / open queues).
    wakers: Vec<Waker>,
    poll: Option<Arc<Registration>>,
}

impl Waiters {
    /// Records that the app found the object not ready.
    pub(crate) fn block(&mut self, how: Block<'_>) {
        self.blocked = true;
        match how {
            Block::Flag => {}
            Block::Thread(s) => {
                if !self.threads.iter().any(|t| Arc::ptr_eq(t, s)) {
                    self.threads.push(s.clone());
                }
            }
            Block::Task(w) => {
                if !self.wakers.iter().any(|old| old.will_wake(w)) {
                    self.wakers.push(w.clone());
                }
            }
        }
    }

    /// Forgets a thread that stopped waiting (deadline, or another object became ready).
    pub(crate) fn unblock_thread(&mut self, s: &Arc<ThreadSignal>) {
        self.threads.retain(|t| !Arc::ptr_eq(t, s));
    }

    /// Sets (or clears) the poller registration. Returns the wake-up for a registration made
    /// while the object is `ready`: a poller reports initial readiness.
    pub(crate) fn set_poll(&mut self, reg: Option<Arc<Registration>>, ready: bool) -> Wake {
        self.poll = reg;
        if ready {
            self.blocked = true;
            self.take()
        } else {
            self.blocked = true;
            Wake::default()
        }
    }

    /// The object changed in the app's favour: whom to wake. Call [`Wake::wake`] after unlocking.
    pub(crate) fn take(&mut self) -> Wake {
        if !std::mem::take(&mut self.blocked) {
            return Wake::default();
        }
        Wake {
            threads: std::mem::take(&mut self.threads),
            wakers: std::mem::take(&mut self.wakers),
            poll: self.poll.clone(),
        }
    }
}

/// Wake-ups collected under a lock, delivered after it is released.
#[derive(Default)]
#[must_use = "call wake() after unlocking"]
pub(crate) struct Wake {
    threads: Vec<Arc<ThreadSignal>>,
    wakers: Vec<Waker>,
    poll: Option<Arc<Registration>>,
}

impl Wake {
    pub(crate) fn wake(self) {
        for t in self.threads {
            t.notify();
        }
        for w in self.wakers {
            w.wake();
        }
        if let Some(r) = self.poll {
            r.notify();
        }
    }
}

/// A one-shot answer from a shard, waited for by an app thread or task.
pub(crate) struct Slot<T> {
    state: Mutex<SlotState<T>>,
}

struct SlotState<T> {
    value: Option<T>,
    /// The responder was dropped without answering (the shard stopped).
    canceled: bool,
    /// The app stopped waiting: an answer must be handed back to the shard.
    abandoned: bool,
    waiters: Waiters,
}

/// The shard's end of a [`Slot`]. Dropping it unanswered cancels the slot.
pub(crate) struct Responder<T>(Option<Arc<Slot<T>>>);

/// A [`Slot`]'s responder was dropped: the shard stopped before answering.
#[derive(Debug)]
pub(crate) struct Canceled;

impl<T> Slot<T> {
    pub(crate) fn new() -> (Arc<Self>, Responder<T>) {
        let slot = Arc::new(Self {
            state: Mutex::new(
                crate::ranks::SLOT,
                SlotState {
                    value: None,
                    canceled: false,
                    abandoned: false,
                    waiters: Waiters::default(),
                },
            ),
        });
        (slot.clone(), Responder(Some(slot)))
    }

    /// The answer if it is there; otherwise registers `how` and returns `None`.
    pub(crate) fn poll(&self, how: Block<'_>) -> Option<Result<T, Canceled>> {
        let mut s = lock(&self.state);
        if let Some(v) = s.value.take() {
            return Some(Ok(v));
        }
        if s.canceled {
            return Some(Err(Canceled));
        }
        s.waiters.block(how);
        None
    }

    pub(crate) fn unblock_thread(&self, sig: &Arc<ThreadSignal>) {
        lock(&self.state).waiters.unblock_thread(sig);
    }

    /// App: stop waiting. A later answer goes back to the shard ([`Responder::send`]).
    pub(crate) fn abandon(&self) -> Option<T> {
        let mut s = lock(&self.state);
        s.abandoned = true;
        s.value.take()
    }

    fn complete(&self, v: Option<T>) -> Result<(), T> {
        let wake = {
            let mut s = lock(&self.state);
            match v {
                Some(v) if s.abandoned => return Err(v),
                Some(v) => s.value = Some(v),
                None => s.canceled = true,
            }
            s.waiters.take()
        };
        wake.wake();
        Ok(())
    }
}

impl<T> Responder<T> {
    /// Answers; hands `v` back if the app stopped waiting.
    pub(crate) fn send(mut self, v: T) -> Result<(), T> {
        match self.0.take() {
            Some(slot) => slot.complete(Some(v)),
            None => Err(v),
        }
    }
}

impl<T> Drop for Responder<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            let _ = slot.complete(None);
        }
    }
}
