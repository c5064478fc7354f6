//! Turn sharing: a shard thread that is running gives a turn to another thread's shard whose
//! input has waited too long, so that the shard's connections do not wait for their own thread
//! to get a CPU.
//!
//! # Why
//! A shard's connections progress only when some thread runs the shard's turn. When the kernel
//! places a shard thread on a crowded CPU (on a 2-core machine with the load generator beside
//! the server: one shard thread and both client threads on one CPU, the other shard alone on
//! the other), that shard waits 300-400 µs for the CPU after every wake-up while the other
//! thread has time to spare: measured as one shard thread running 0.3 s and the other 1.8 s of
//! a 2.5 s window, with the first one's connections making the p99. quinn on tokio does not
//! have this problem because any worker runs any connection's task; this is the same idea at
//! the granularity of a whole shard, which keeps each shard single-threaded.
//!
//! # How
//! Every shard sits in a [`Desk`] shared by all shard threads: the shard behind its turn lock
//! (held for a whole turn, by its own thread or a helper), when its last turn ended, its next
//! deadline, and its sockets' descriptors. After its own turns a thread looks, at most every
//! [`HELP_CHECK`], at the other shards whose last turn ended more than [`HELP_AFTER`] ago; one
//! `poll(2)` with a zero timeout tells which of them have datagrams waiting, and the desks'
//! deadlines and mailboxes the rest. It takes such a shard's turn lock without waiting
//! (`try_lock`: if the owner has it, the owner is running) and gives it a turn with every input
//! marked ready. A shard's own thread that wakes while a helper has its lock waits for that
//! turn to end (turns are bounded by the loop budgets).
//!
//! If a helped turn leaves the shard with an earlier deadline than the one its own thread
//! sleeps until, the helper wakes that thread (its mailbox waker), so no timer fires late.
//! A thread that is asleep helps no one: helping costs only threads that are running anyway,
//! and a starved shard's thread was woken by its datagrams already.

use std::os::fd::RawFd;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use super::mailbox::MailboxTx;
use super::{Shard, ShardScope};
use crate::handler::Handler;

/// A shard whose last turn ended longer ago than this and that has input waiting gets a turn
/// from a helper. Why: long enough that a shard whose thread is running is never helped (its
/// turns are tens of µs apart under load), short enough to cut the 300-400 µs waits for a CPU
/// that made the p99.
pub(crate) const HELP_AFTER: Duration = Duration::from_micros(100);
/// A thread looks for shards to help at most this often. Why: each look at stale shards is a
/// `poll(2)` (about 1 µs); at most 20,000 of them per second per running thread.
pub(crate) const HELP_CHECK: Duration = Duration::from_micros(50);

/// A thread whose last `poll` returned within this time is busy and may help; one that slept
/// longer does not look for shards to help in that iteration. Why: at light load every thread
/// sleeps between datagrams, the CPUs are not contended, and a look would mostly find the
/// datagram that is about to wake the other shard's own thread (two wake-ups for one datagram:
/// CPU per request at 5,000 requests/s rose by half without this gate).
pub(crate) const BUSY_POLL: Duration = Duration::from_micros(20);

/// `u64::MAX` in a deadline or sleep field: none.
const NEVER: u64 = u64::MAX;

/// Microseconds since the first call in this process: the clock of the desks' atomics.
pub(crate) fn micros(t: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    t.saturating_duration_since(epoch).as_micros() as u64
}

/// One shard as every shard thread sees it.
pub(crate) struct Desk<H> {
    /// The shard, once its thread built it; `None` before and after its life. The turn lock is
    /// a plain `std` mutex, outside the ranked order (`ranks.rs`): it is held around a whole
    /// turn, so every lock a handler takes nests inside it whatever its rank, and it is only
    /// ever taken at the top of a shard thread's loop, holding nothing else.
    shard: std::sync::Mutex<Option<Shard<H>>>,
    /// When its last turn ended ([`micros`]).
    serviced: AtomicU64,
    /// Its next deadline ([`micros`]; [`NEVER`]).
    due: AtomicU64,
    /// Until when its thread sleeps in `poll` ([`micros`]; 0 while awake, [`NEVER`] without a
    /// timeout).
    sleeps_until: AtomicU64,
    /// Its UDP sockets, for the readiness check.
    fds: Vec<RawFd>,
    /// Its mailbox: whether mail waits, and the waker of its thread.
    mailbox: MailboxTx<H>,
}

impl<H: Handler> Desk<H> {
    pub(crate) fn new(fds: Vec<RawFd>, mailbox: MailboxTx<H>) -> Self {
        Self {
            shard: std::sync::Mutex::new(None),
            serviced: AtomicU64::new(0),
            due: AtomicU64::new(0),
            sleeps_until: AtomicU64::new(0),
            fds,
            mailbox,
        }
    }

    /// Takes the turn lock, waiting for a helper's turn to end.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Option<Shard<H>>> {
        self.shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the turn lock if nobody runs the shard.
    fn try_lock(&self) -> Option<MutexGuard<'_, Option<Shard<H>>>> {
        match self.shard.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Records the end of a turn of `shard` (by anyone) at `now`.
    pub(crate) fn publish(&self, shard: &Shard<H>, now: Instant) {
        self.serviced.store(micros(now), Relaxed);
        let due = shard.next_deadline().map_or(NEVER, micros);
        self.due.store(due, Relaxed);
    }

    /// The shard's next deadline as published.
    pub(crate) fn due(&self) -> u64 {
        self.due.load(Relaxed)
    }

    /// Its thread goes to sleep until `until` ([`micros`], [`NEVER`]), or is awake (0).
    pub(crate) fn set_sleep(&self, until: u64) {
        self.sleeps_until.store(until, Relaxed);
    }
}

/// What one thread keeps for helping.
pub(crate) struct Helper<H> {
    desks: Arc<[Desk<H>]>,
    /// The thread's own shards (`own.0..own.1`), which it never helps.
    own: (usize, usize),
    /// Where the next search starts, so every stale shard gets its share of help.
    next: usize,
    /// Not before this ([`micros`]) does the thread look again.
    next_check: u64,
    /// Scratch: the `pollfd`s of the shards being checked, and their desk indices.
    pollfds: Vec<libc::pollfd>,
    owners: Vec<usize>,
    /// Scratch: the shards found in need of a turn.
    ready: Vec<usize>,
    /// An empty event list for helped turns (their inputs are marked ready instead).
    no_events: mio::Events,
}

impl<H: Handler> Helper<H> {
    pub(crate) fn new(desks: Arc<[Desk<H>]>, own: (usize, usize)) -> Self {
        let fds = desks.iter().map(|d| d.fds.len()).sum();
        let n = desks.len();
        Self {
            desks,
            own,
            next: own.1,
            next_check: 0,
            pollfds: Vec::with_capacity(fds),
            owners: Vec::with_capacity(fds),
            ready: Vec::with_capacity(n),
            no_events: mio::Events::with_capacity(1),
        }
    }

    /// Gives a turn to each other shard that waited longer than [`HELP_AFTER`] with input
    /// ready and whose turn lock is free. Returns how many turns it gave.
    pub(crate) fn help(&mut self, now: Instant) -> usize {
        let now_us = micros(now);
        if now_us < self.next_check || self.desks.len() <= self.own.1 - self.own.0 {
            return 0;
        }
        self.next_check = now_us + HELP_CHECK.as_micros() as u64;
        let stale_before = now_us.saturating_sub(HELP_AFTER.as_micros() as u64);
        let n = self.desks.len();
        self.pollfds.clear();
        self.owners.clear();
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        for k in 0..n {
            let j = (self.next + k) % n;
            if (self.own.0..self.own.1).contains(&j) {
                continue;
            }
            let d = &self.desks[j];
            if d.serviced.load(Relaxed) > stale_before {
                continue;
            }
            if d.due() <= stale_before || d.mailbox.has_mail() {
                ready.push(j);
                continue;
            }
            for &fd in &d.fds {
                self.pollfds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
                self.owners.push(j);
            }
        }
        if !self.pollfds.is_empty() {
            // SAFETY: `pollfds` is a valid array of `len` pollfd structs for the whole call.
            let r = unsafe {
                libc::poll(
                    self.pollfds.as_mut_ptr(),
                    self.pollfds.len() as libc::nfds_t,
                    0,
                )
            };
            if r > 0 {
                for (p, &j) in self.pollfds.iter().zip(&self.owners) {
                    if p.revents != 0 && !ready.contains(&j) {
                        ready.push(j);
                    }
                }
            }
        }
        let mut given = 0;
        for &j in &ready {
            self.next = j + 1;
            let d = &self.desks[j];
            let Some(mut g) = d.try_lock() else {
                continue;
            };
            let Some(shard) = g.as_mut() else { continue };
            let alive = {
                let _scope = ShardScope::enter(shard.id(), shard.stats());
                shard.prepare_help();
                shard.turn(&self.no_events, Instant::now())
            };
            given += 1;
            shard.stats().helped_turns.fetch_add(1, Relaxed);
            if !alive {
                shard.finish();
                *g = None;
                d.due.store(NEVER, Relaxed);
                d.mailbox.nudge();
                continue;
            }
            let end = Instant::now();
            d.publish(shard, end);
            drop(g);
            if d.due() < d.sleeps_until.load(Relaxed) {
                d.mailbox.nudge();
            }
        }
        self.ready = ready;
        given
    }
}
