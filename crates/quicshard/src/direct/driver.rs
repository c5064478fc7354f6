//! [`Direct`]: the driver of the direct backend. It owns one or two unspawned shards (one engine
//! on a UDP socket, or both engines of an in-memory pair) and lends them to whichever app thread
//! needs progress: a blocked handle call, [`HandleEngine::tick`](crate::HandleEngine::tick), shutdown, or the
//! timer-assist thread.
//!
//! # Who drives
//! A *gate* (a busy flag and a list of waiting signals, under one mutex) decides: a thread that
//! needs progress takes the gate if it is free and runs a turn — block in the driver's poll until
//! an event, the next timer or its own deadline, then run every shard's loop iteration until no
//! shard has work left. A thread that finds the gate taken waits on its own signal instead; the
//! driver's turn wakes it through the handle objects (the usual coalesced wake-ups), and
//! releasing the gate wakes every waiter, so one of them takes over if it still needs progress.
//! The gate's decisions are taken under its mutex, so a release cannot slip between a waiter's
//! "busy" and its registration.
//!
//! The driver blocks on a `mio::Poll` of its own that watches each shard's poll descriptor
//! (epoll nests) and a waker: a signal notified by another app thread while its owner drives
//! pokes the waker, so no wake-up waits for a timer.
//!
//! Without `locking`, the engine belongs to the first thread that drives it; a blocking call or
//! tick from any other thread panics with a message saying so (cheaper than a lost wake-up).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use ranked_lock::{Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use crate::handle::HandleHandler;
use crate::handle::ThreadSignal;
use crate::shard::mailbox::MailboxTx;
use crate::shard::{Shard, ShardScope};

/// Token of the driver's waker in its poll; shard `i` has token `i + 1`.
const WAKE_TOKEN: mio::Token = mio::Token(0);

/// Loop iterations per shard in one turn. Why: a turn ends when no shard has work left, but a
/// pair of engines can keep each other busy (a bulk transfer); the bound returns control to the
/// calling thread regularly so it can see that its own call is ready.
const ITERATIONS_PER_TURN: usize = 64;

/// See the module docs.
pub(crate) struct Direct {
    gate: Mutex<Gate>,
    core: Mutex<Core>,
    waker: Arc<mio::Waker>,
    locking: bool,
    /// The fd an app's own event loop may watch (`None` for a memory pair: not pollable).
    poll_fd: Option<RawFd>,
    assist: Mutex<Assist>,
    assist_cv: Condvar,
    /// Each shard's mailbox, for shutdown.
    mailboxes: Vec<MailboxTx<HandleHandler>>,
}

#[derive(Default)]
struct Gate {
    busy: bool,
    /// Without locking: the one thread allowed to drive.
    owner: Option<ThreadId>,
    waiting: Vec<Arc<ThreadSignal>>,
}

struct Core {
    shards: Vec<Option<Shard<HandleHandler>>>,
    poll: mio::Poll,
    events: mio::Events,
    shard_events: mio::Events,
}

/// What the driver publishes after each turn, for `next_deadline` and the timer-assist thread.
#[derive(Default)]
struct Assist {
    deadline: Option<Instant>,
    /// Bumped at every publication.
    turns: u64,
    stop: bool,
}

/// A held gate: the shards, lent to the calling thread until dropped.
pub(crate) struct Turn<'a> {
    direct: &'a Direct,
    core: Option<MutexGuard<'a, Core>>,
    /// What to publish on release: the shards' next deadline, and whether all of them stopped.
    outcome: Option<(Option<Instant>, bool)>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.core.take());
        let waiting = {
            let mut g = self.direct.gate();
            g.busy = false;
            std::mem::take(&mut g.waiting)
        };
        for w in waiting {
            w.notify();
        }
        // published after the release: whoever hears of this turn finds the gate free
        if let Some((deadline, all_stopped)) = self.outcome {
            let mut a = self.direct.assist();
            a.deadline = deadline;
            a.turns += 1;
            a.stop |= all_stopped;
            self.direct.assist_cv.notify_all();
        }
    }
}

impl Direct {
    /// A driver for `shards`; `pollable` says whether their input shows on their poll fds
    /// (UDP) or not (memory links).
    pub(crate) fn new(
        shards: Vec<Shard<HandleHandler>>,
        mailboxes: Vec<MailboxTx<HandleHandler>>,
        locking: bool,
        pollable: bool,
    ) -> std::io::Result<Self> {
        let poll = mio::Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE_TOKEN)?);
        for (i, s) in shards.iter().enumerate() {
            let fd = s
                .poll()
                .ok_or_else(|| std::io::Error::other("a direct shard needs its own poller"))?
                .as_raw_fd();
            poll.registry().register(
                &mut mio::unix::SourceFd(&fd),
                mio::Token(i + 1),
                mio::Interest::READABLE,
            )?;
        }
        let poll_fd = pollable.then(|| poll.as_raw_fd());
        Ok(Self {
            gate: Mutex::new(crate::ranks::DIRECT_GATE, Gate::default()),
            core: Mutex::new(
                crate::ranks::DIRECT_CORE,
                Core {
                    shards: shards.into_iter().map(Some).collect(),
                    poll,
                    events: mio::Events::with_capacity(8),
                    shard_events: mio::Events::with_capacity(16),
                },
            ),
            waker,
            locking,
            poll_fd,
            assist: Mutex::new(crate::ranks::DIRECT_ASSIST, Assist::default()),
            assist_cv: Condvar::new(),
            mailboxes,
        })
    }

    fn gate(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock()
    }

    /// Takes the gate if it is free; otherwise registers `waiter` (if any) to hear of the
    /// release. Panics without locking when called from another thread than the owner.
    fn try_turn(&self, waiter: Option<&Arc<ThreadSignal>>) -> Option<Turn<'_>> {
        let mut g = self.gate();
        if !self.locking {
            let me = std::thread::current().id();
            let owner = *g.owner.get_or_insert(me);
            assert!(
                owner == me,
                "quicshard: a direct engine without locking was driven from a second thread; \
                 build it with DirectConfig {{ locking: true, .. }} to share it between threads"
            );
        }
        if g.busy {
            if let Some(w) = waiter {
                if !g.waiting.iter().any(|x| Arc::ptr_eq(x, w)) {
                    g.waiting.push(w.clone());
                }
            }
            return None;
        }
        g.busy = true;
        drop(g);
        let core = self.core.lock();
        Some(Turn {
            direct: self,
            core: Some(core),
            outcome: None,
        })
    }

    fn forget_waiter(&self, w: &Arc<ThreadSignal>) {
        self.gate().waiting.retain(|x| !Arc::ptr_eq(x, w));
    }

    /// The blocking wait of a handle call in direct mode (the handle layer's `Progress::wait`):
    /// `true` when `sig` fired or the engine made progress (the caller re-checks), `false` when
    /// `deadline` passed.
    pub(crate) fn wait(&self, sig: &Arc<ThreadSignal>, deadline: Option<Instant>) -> bool {
        if sig.take_fired() {
            return true;
        }
        match self.try_turn(Some(sig)) {
            Some(mut turn) => {
                sig.set_poke(&self.waker);
                self.run_turn(&mut turn, Some(deadline));
                drop(turn);
                sig.take_fired() || deadline.is_none_or(|d| Instant::now() < d)
            }
            None => {
                let fired = sig.wait(deadline);
                if !fired {
                    self.forget_waiter(sig);
                }
                fired
            }
        }
    }

    /// Runs whatever work is pending without blocking; `false` if another thread was driving
    /// (it does the work).
    pub(crate) fn tick(&self) -> bool {
        let Some(mut turn) = self.try_turn(None) else {
            return false;
        };
        self.run_turn(&mut turn, None);
        true
    }

    /// One turn. `block`: `Some(deadline)` to wait first for an event, the next timer or
    /// `deadline` (`None`: no limit of its own); `None` not to wait.
    fn run_turn(&self, turn: &mut Turn<'_>, block: Option<Option<Instant>>) {
        // invariant: a Turn holds the core until dropped
        let core = turn.core.as_mut().expect("turn holds the core");
        let Core {
            shards,
            poll,
            events,
            shard_events,
        } = &mut **core;
        if let Some(deadline) = block {
            let now = Instant::now();
            let wake = [next_deadline(shards), deadline]
                .into_iter()
                .flatten()
                .min();
            let timeout = wake.map(|w| w.saturating_duration_since(now));
            if let Err(e) = poll.poll(events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "direct driver poll failed");
                }
            }
        }
        for _ in 0..ITERATIONS_PER_TURN {
            for slot in shards.iter_mut() {
                let Some(shard) = slot else { continue };
                let _scope = ShardScope::enter(shard.id(), shard.stats());
                if !shard.iterate(shard_events, Some(Duration::ZERO), Instant::now) {
                    shard.finish();
                    *slot = None;
                }
            }
            let now = Instant::now();
            if next_deadline(shards).is_none_or(|d| d > now) {
                break;
            }
        }
        // every shard stopped: nothing left to assist
        turn.outcome = Some((next_deadline(shards), shards.iter().all(Option::is_none)));
    }

    fn assist(&self) -> MutexGuard<'_, Assist> {
        self.assist.lock()
    }

    /// A sender to shard `index`'s mailbox (`None` once it stopped).
    pub(crate) fn mailbox(&self, index: usize) -> Option<MailboxTx<HandleHandler>> {
        self.mailboxes.get(index).cloned()
    }

    /// When the engine next needs a turn, as of the last one.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.assist().deadline
    }

    /// The driver's poll fd (UDP only).
    pub(crate) fn poll_fd(&self) -> Option<RawFd> {
        self.poll_fd
    }

    /// Drives until shard `index` has shut down (it was told to; it stops once its connections
    /// drained or its deadline passed).
    pub(crate) fn run_until_stopped(&self, index: usize) {
        let sig = ThreadSignal::new();
        loop {
            if let Some(mut turn) = self.try_turn(Some(&sig)) {
                let core = turn.core.as_ref().expect("turn holds the core");
                if core.shards.get(index).is_none_or(Option::is_none) {
                    return;
                }
                sig.set_poke(&self.waker);
                self.run_turn(&mut turn, Some(None));
            } else {
                // the driver's turn (or its release) wakes us
                sig.wait(None);
            }
        }
    }

    /// The timer-assist thread's loop: whenever the published deadline passes and nobody drives,
    /// run a turn; exits once every shard has stopped. When another thread drives at that moment,
    /// it waits for that turn's publication, which comes after the gate's release.
    pub(crate) fn assist_loop(&self) {
        let mut a = self.assist();
        loop {
            if a.stop {
                return;
            }
            let seen = a.turns;
            let now = Instant::now();
            match a.deadline {
                Some(d) if d <= now => {
                    drop(a);
                    if !self.tick() {
                        // someone drives (and handles timers); wait for their turn to end
                        a = self.assist();
                        while a.turns == seen && !a.stop {
                            a = self.assist_cv.wait(a);
                        }
                        continue;
                    }
                    a = self.assist();
                }
                Some(d) => {
                    a = self.assist_cv.wait_timeout(a, d - now).0;
                }
                None => {
                    a = self.assist_cv.wait(a);
                }
            }
        }
    }
}

/// The earliest `next_deadline` of the live shards.
fn next_deadline(shards: &[Option<Shard<HandleHandler>>]) -> Option<Instant> {
    shards
        .iter()
        .flatten()
        .filter_map(|s| s.next_deadline())
        .min()
}
