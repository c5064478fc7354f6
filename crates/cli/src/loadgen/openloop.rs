//! The open-loop (fixed-rate) request/response load behind `bench --rate`: owns the schedule
//! (request `i` is due at `start + i / rate`, whatever the responses do), the round-robin over
//! the connections, the cap on outstanding requests and the coalesced wake-ups of the client
//! shards. Latency counts from each request's due time, so a slow server (or a late load
//! generator) cannot hide queueing by delaying the next request (no coordinated omission).
//!
//! The load generator's thread pushes due times into one bounded queue per connection
//! ([`Schedule`]) and asks each shard that got new ones to run [`Client::issue_scheduled`]
//! through `Remote::run_on`, at most once until that shard has run it (an `AtomicBool` per
//! shard, as the engine's mailbox coalesces its eventfd): one boxed closure per batch and
//! shard, nothing per request. Everything is bounded: each queue holds its share of
//! [`MAX_OUTSTANDING`] (a request that finds it full is counted as not issued), requests due
//! while `MAX_OUTSTANDING` are outstanding are counted as not issued, and requests still
//! outstanding [`DRAIN`] after the schedule ends are counted as late. Late and not issued
//! requests are not in the latency histogram: they are reported next to it.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use indicatif::ProgressBar;
use quicshard::{Remote, ShardId};

use super::{Launcher, Limit, OpenLoop, Params, Report, EVENTS_CAPACITY};
use crate::apps::client::{Client, Event, Schedule};

/// Requests issued and not yet completed, at most (`bench --help` says so too).
const MAX_OUTSTANDING: u64 = 4096;

/// How long the connections have to complete their handshakes before the schedule starts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long requests may take to complete after the schedule ends before they count as late
/// (`bench --help` says so too).
const DRAIN: Duration = Duration::from_secs(1);

/// How soon a wake-up refused by a full shard mailbox is tried again.
const WAKE_RETRY: Duration = Duration::from_millis(1);

/// One open-loop connection, as the load generator sees it.
struct Target {
    due: Sender<Instant>,
    shard: ShardId,
    /// The handler dropped the queue's receiving side: the connection is gone.
    gone: bool,
}

/// The shards' coalesced wake-ups.
struct Wakes {
    /// Set while a wake-up is queued on the shard and has not started running.
    queued: Vec<Arc<AtomicBool>>,
    /// Due times were pushed to the shard since its last wake-up was queued.
    dirty: Vec<bool>,
}

impl Wakes {
    fn new(shards: usize) -> Self {
        Wakes {
            queued: (0..shards)
                .map(|_| Arc::new(AtomicBool::new(false)))
                .collect(),
            dirty: vec![false; shards],
        }
    }

    /// Queues `issue_scheduled` on every dirty shard that has none queued; returns whether some
    /// shard's mailbox was full (then call again soon).
    fn flush(&mut self, remote: &Remote<Client>) -> bool {
        let mut again = false;
        for (s, dirty) in self.dirty.iter_mut().enumerate() {
            // a wake-up queued and not started yet will see what was pushed before this swap
            if !*dirty || self.queued[s].swap(true, SeqCst) {
                *dirty = false;
                continue;
            }
            let queued = self.queued[s].clone();
            let sent = remote.run_on(ShardId(s), move |ctx, client| {
                queued.store(false, SeqCst);
                client.issue_scheduled(ctx);
            });
            match sent {
                Ok(()) => *dirty = false,
                Err(_) => {
                    self.queued[s].store(false, SeqCst);
                    again = true;
                }
            }
        }
        again
    }
}

/// Runs `p` (rr) at `rate` requests per second over `p.connections` connections.
pub(crate) fn run(remote: &Remote<Client>, p: &Params, rate: f64, bar: &ProgressBar) -> Report {
    let mut r = Report::new(p.mode);
    let scheduled = match p.limit {
        Limit::Requests(n) => n,
        Limit::Duration(d) => (d.as_secs_f64() * rate).round() as u64,
    };
    let mut stats = OpenLoop {
        target_per_s: rate,
        scheduled,
        max_outstanding: MAX_OUTSTANDING,
        ..OpenLoop::default()
    };
    let (tx, rx) = crossbeam_channel::bounded(EVENTS_CAPACITY);
    let request = super::request(p);
    let per_conn = (MAX_OUTSTANDING as usize).div_ceil(p.connections).max(16);
    let mut launcher = Launcher::new(remote, p, tx);
    let mut targets = Vec::with_capacity(p.connections);
    for _ in 0..p.connections {
        let (due, queue) = crossbeam_channel::bounded(per_conn);
        let schedule = Schedule {
            due: queue,
            request: request.clone(),
        };
        if let Some(shard) = launcher.launch(Default::default(), None, usize::MAX, Some(schedule)) {
            targets.push(Target {
                due,
                shard,
                gone: false,
            });
        }
    }
    drop(launcher);
    let mut open_conns = targets.len();
    // the schedule starts once every connection is up (or gave up)
    let connect_deadline = Instant::now() + CONNECT_TIMEOUT;
    while (r.handshakes as usize) + (targets.len() - open_conns) < targets.len() {
        match rx.recv_deadline(connect_deadline) {
            Ok(ev) => open_conns -= usize::from(r.record(ev, bar)),
            Err(_) => break,
        }
    }
    let mut wakes = Wakes::new(remote.shards());
    let start = Instant::now();
    let due_at = |i: u64| start + Duration::from_secs_f64(i as f64 / rate);
    let mut next = 0u64;
    let mut rr = 0usize;
    let mut last_done = start;
    let mut retry_wake = false;
    while next < scheduled && open_conns > 0 {
        let now = Instant::now();
        while next < scheduled && due_at(next) <= now {
            let outstanding = stats.issued.saturating_sub(r.requests + r.failed);
            let issued = outstanding < MAX_OUTSTANDING
                && issue(&mut targets, &mut rr, due_at(next), &mut wakes.dirty);
            if issued {
                stats.issued += 1;
            } else {
                stats.not_issued += 1;
            }
            next += 1;
        }
        if wakes.flush(remote) {
            retry_wake = true;
        }
        let mut wait_until = due_at(next);
        if retry_wake {
            wait_until = wait_until.min(Instant::now() + WAKE_RETRY);
            retry_wake = false;
        }
        open_conns -= receive(&rx, wait_until, &mut r, &mut last_done, bar);
    }
    stats.not_issued += scheduled - next;
    // no more due times: each connection closes once its last request completes
    let schedule_end = start + Duration::from_secs_f64(scheduled as f64 / rate);
    targets.clear();
    wakes.dirty.fill(true);
    let drain_deadline = schedule_end.max(Instant::now()) + DRAIN;
    while open_conns > 0 && Instant::now() < drain_deadline {
        let mut wait_until = drain_deadline;
        if wakes.flush(remote) {
            wait_until = wait_until.min(Instant::now() + WAKE_RETRY);
        }
        open_conns -= receive(&rx, wait_until, &mut r, &mut last_done, bar);
    }
    stats.late = stats.issued.saturating_sub(r.requests + r.failed);
    if stats.late > 0 {
        r.first_error.get_or_insert_with(|| {
            format!(
                "{} requests still outstanding {} ms after the schedule ended",
                stats.late,
                DRAIN.as_millis()
            )
        });
    }
    r.elapsed = last_done.max(schedule_end) - start;
    r.open_loop = Some(stats);
    r
}

/// Queues request due at `due` on the next open connection (round-robin from `rr`), marking
/// its shard dirty; `false` if no connection took it (its queue full, or none left).
fn issue(targets: &mut [Target], rr: &mut usize, due: Instant, dirty: &mut [bool]) -> bool {
    for _ in 0..targets.len() {
        let t = &mut targets[*rr % targets.len()];
        *rr += 1;
        if t.gone {
            continue;
        }
        match t.due.try_send(due) {
            Ok(()) => {
                dirty[t.shard.0] = true;
                return true;
            }
            Err(TrySendError::Full(_)) => return false,
            Err(TrySendError::Disconnected(_)) => t.gone = true,
        }
    }
    false
}

/// Accounts the events that arrive until `until` (at least one wait, however short); returns how
/// many connections closed.
fn receive(
    rx: &Receiver<Event>,
    until: Instant,
    r: &mut Report,
    last_done: &mut Instant,
    bar: &ProgressBar,
) -> usize {
    let mut closed = 0;
    let mut deadline = until;
    loop {
        // disconnected only once every connection has reported `Closed`
        let Ok(ev) = rx.recv_deadline(deadline) else {
            return closed;
        };
        let done = matches!(ev, Event::Done { .. });
        if r.record(ev, bar) {
            closed += 1;
        }
        if done {
            *last_done = Instant::now();
        }
        // drain what is already queued, then go back to the schedule
        deadline = Instant::now().min(until);
    }
}
