//! One shard: an event loop with its own sockets, `quinn_proto::Endpoint`, connections, timer
//! heap and mailbox, on a thread of its own or in a [`group`] of shards sharing one thread (and
//! that thread's poller). The shard owns all of it for its whole life; nothing here is shared
//! except the mailbox senders and the counters.
//!
//! # The loop
//! Each iteration reads the same way (STYLE §2): block in `mio::Poll` until the next deadline
//! (or not at all if the previous iteration left work behind); then drain inputs — the two
//! sockets ([`inbound`]), the mailbox, due timers — each under its budget; then poll outputs —
//! drive every dirty connection ([`drive`]): endpoint events, application events (handler
//! callbacks), transmits, the next timeout. A budget that stops before `WouldBlock` makes the
//! next poll non-blocking, because edge-triggered readiness will not fire again.
//!
//! Transmits are queued per socket while connections are driven and flushed at the end of the
//! iteration (and whenever a queue fills), so one iteration's datagrams leave in few syscalls.
//!
//! Sub-state lives in submodules: [`io`] sockets and buffers, [`arena`] the memory received
//! datagrams are copied into, [`sys`] the raw `sendmmsg`, [`mailbox`], [`timers`], [`conns`];
//! [`group`] runs several shards on one thread.

mod admit;
pub(crate) mod amplify;
pub(crate) mod arena;
pub(crate) mod callback;
pub(crate) mod conns;
mod drive;
pub(crate) mod group;
pub(crate) mod help;
pub(crate) mod inbound;
pub(crate) mod io;
pub(crate) mod mailbox;
pub(crate) mod mem;
mod parts;
mod reclaim;
mod rx;
mod sys;
pub(crate) mod timers;

use std::cell::Cell;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn_proto::{Connection, Endpoint, VarInt};

use crate::cid::ShardCidGenerator;
use crate::handler::{ConnId, Handler, ShardCtx};
use crate::shared::Shared;
use crate::stats::Counters;
use admit::AdmitQueue;
use arena::Arena;
use conns::ConnTable;
use io::{RxBufs, Sock, CLIENT, LISTEN};
use mailbox::{MailboxRx, MailboxTx, Msg};
pub(crate) use parts::{build_unspawned, spawn, Poller, ShardParts};
use timers::Timers;

/// mio token of the listen socket.
pub(crate) const LISTEN_TOKEN: mio::Token = mio::Token(LISTEN);
/// mio token of the client socket.
pub(crate) const CLIENT_TOKEN: mio::Token = mio::Token(CLIENT);
/// mio token of the mailbox waker.
pub(crate) const WAKER_TOKEN: mio::Token = mio::Token(2);

/// `recvmmsg` calls per socket per iteration. Why: each returns up to `BATCH_SIZE` messages of up
/// to 64 GRO segments; 8 calls (≈256 messages) keep a flood on one socket from starving the
/// mailbox, timers and transmits, while amortising the poll syscall over many datagrams.
const RECV_CALLS_PER_ITER: usize = 8;
/// Mailbox messages per iteration. Why: handoffs and `run_on` closures must not starve the
/// shard's own sockets; 256 drains a full GRO batch of handoffs in a few iterations.
const MAILBOX_PER_ITER: usize = 256;
/// Due timers fired per iteration. Why: a burst of simultaneous deadlines (e.g. many idle
/// timeouts) is spread over iterations instead of stalling I/O.
const TIMERS_PER_ITER: usize = 1024;
/// Connections driven per iteration. Why: one iteration's output work stays bounded, so input
/// (acks!) is read regularly even with thousands of busy connections.
const CONNS_PER_ITER: usize = 256;
/// `poll_transmit` calls (each up to a GSO batch) per connection per drive. Why: one bulk sender
/// cannot monopolise the socket; it is re-queued behind the others.
const TRANSMITS_PER_DRIVE: usize = 16;
/// An iteration's work longer than this is a stall. Why: at 50 ms, timers and acks of every
/// other connection on the shard are late by a noticeable fraction of an RTT. It is a warning
/// only when the thread had the CPU for at least half of it ([`STALL_CPU_SHARE`]); otherwise
/// the thread was descheduled, which the engine cannot fix.
const STALL_WARNING: Duration = Duration::from_millis(50);
/// The share of a long turn's wall time the thread must have run for the turn to count as a
/// stall of the engine's own (see [`STALL_WARNING`]).
const STALL_CPU_SHARE: f64 = 0.5;
/// Application-event passes per drive. Why: a callback can trigger more events on its own
/// connection; a few passes pick those up without letting a handler loop forever.
const EVENT_PASSES_PER_DRIVE: usize = 4;

thread_local! {
    static CURRENT_SHARD: Cell<Option<usize>> = const { Cell::new(None) };
    /// The thread's CPU time (µs) at the end of its last shard turn: a turn's CPU is the
    /// difference at its end (one clock read per turn; the `poll` in between costs little).
    static TURN_CPU: Cell<u64> = const { Cell::new(0) };
}

/// Starts the calling thread's turn CPU clock (see `TURN_CPU`): at a shard thread's start, and
/// before each direct-backend iteration, whose thread runs other code between turns.
pub(crate) fn start_turn_cpu_clock() {
    TURN_CPU.with(|c| c.set(sys::thread_cpu_micros()));
}

/// What a turn longer than [`STALL_WARNING`] was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LongTurn {
    /// The thread had the CPU for at least [`STALL_CPU_SHARE`] of it: the engine's own stall.
    Stalled,
    /// It did not: the thread was descheduled (or blocked) for most of it.
    Descheduled,
}

/// Classifies a turn of `busy` wall time that used `cpu` of thread CPU time (`None`: not long).
fn long_turn(busy: Duration, cpu: Duration) -> Option<LongTurn> {
    if busy <= STALL_WARNING {
        return None;
    }
    Some(
        if cpu.as_secs_f64() >= busy.as_secs_f64() * STALL_CPU_SHARE {
            LongTurn::Stalled
        } else {
            LongTurn::Descheduled
        },
    )
}

/// The shard index if the calling thread is a shard thread.
pub(crate) fn current_shard() -> Option<usize> {
    CURRENT_SHARD.with(|c| c.get())
}

/// Marks the calling thread as running shard `id` (for `current_shard` and the counters of deep
/// callbacks) until dropped, then restores what was there: a shard thread enters once, the
/// direct backend's driver around every iteration.
pub(crate) struct ShardScope {
    prev: Option<usize>,
    prev_counters: Option<Arc<Counters>>,
}

impl ShardScope {
    pub(crate) fn enter(id: usize, stats: &Arc<Counters>) -> Self {
        let prev = CURRENT_SHARD.with(|c| c.replace(Some(id)));
        let prev_counters = crate::stats::swap_thread_counters(Some(stats.clone()));
        Self {
            prev,
            prev_counters,
        }
    }
}

impl Drop for ShardScope {
    fn drop(&mut self) {
        CURRENT_SHARD.with(|c| c.set(self.prev));
        crate::stats::swap_thread_counters(self.prev_counters.take());
    }
}

/// Shard state reachable from handler callbacks through [`ShardCtx`].
pub(crate) struct Core {
    pub(crate) id: usize,
    pub(crate) owner: ThreadId,
    pub(crate) now: Instant,
    pub(crate) endpoint: Endpoint,
    pub(crate) conns: ConnTable,
    pub(crate) timers: Timers,
    pub(crate) shared: Arc<Shared>,
    pub(crate) stats: Arc<Counters>,
    /// `Some(deadline)` once shutdown began.
    pub(crate) stopping: Option<Instant>,
    /// The address this shard advertises as the server's preferred address, if any.
    pub(crate) preferred: Option<std::net::SocketAddr>,
    /// The slot being driven: touching it does not re-queue it (the drive flushes it anyway).
    pub(crate) driving: Option<u32>,
    /// Validates DCIDs of short-header packets before the endpoint sees them.
    pub(crate) cid_check: ShardCidGenerator,
    /// Scratch buffer for endpoint responses (Retry, version negotiation, resets, refusals).
    pub(crate) resp_buf: Vec<u8>,
    /// The socket `connect` uses: [`CLIENT`], or [`LISTEN`] on a memory link (one port).
    pub(crate) client_sock: usize,
    /// With qlog on: this shard's server config, which each traced connection copies.
    pub(crate) qlog_server_config: Option<Arc<quinn_proto::ServerConfig>>,
}

impl Core {
    /// Publishes the gauges that follow the connection table: open connections and handshakes
    /// in progress (after a connection is added, completes its handshake or is removed).
    pub(crate) fn publish_gauges(&self) {
        self.stats
            .connections_open
            .store(self.conns.len() as u64, Relaxed);
        self.stats
            .handshakes_in_progress
            .store(self.conns.handshaking() as u64, Relaxed);
    }

    pub(crate) fn touch(&mut self, id: ConnId) -> Option<&mut Connection> {
        if id.shard as usize != self.id {
            return None;
        }
        self.conns.get_gen_mut(id.slot, id.gen)?;
        if self.driving != Some(id.slot) {
            self.conns.mark_dirty(id.slot);
        }
        self.conns.get_gen_mut(id.slot, id.gen).map(|e| &mut e.conn)
    }

    pub(crate) fn conn_ids(&self) -> Vec<ConnId> {
        self.conns
            .slots()
            .map(|s| self.conns.id(self.id, s))
            .collect()
    }

    pub(crate) fn connect(
        &mut self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<ConnId, quinn_proto::ConnectError> {
        if self.stopping.is_some() {
            return Err(quinn_proto::ConnectError::EndpointStopping);
        }
        let cfg = match &self.shared.qlog {
            Some(q) => q.client_config(&self.shared.client_config, self.now),
            None => self.shared.client_config.clone(),
        };
        let (ch, conn) = self.endpoint.connect(self.now, cfg, addr, server_name)?;
        let slot = ch.0 as u32;
        self.conns.insert(ch.0, conn, self.client_sock, self.now);
        let w = self.shared.memory.send_window_for(self.conns.len());
        self.conns.fit_send_window(w, Some(slot));
        self.stats.connections_initiated.fetch_add(1, Relaxed);
        self.stats
            .connections_open
            .store(self.conns.len() as u64, Relaxed);
        Ok(self.conns.id(self.id, slot))
    }
}

/// Everything a shard thread owns.
pub(crate) struct Shard<H> {
    core: Core,
    handler: H,
    /// The shard's own poller while it has one: the direct backend's shards keep it; a spawned
    /// shard's thread takes it ([`group`] runs every spawned shard).
    poll: Option<mio::Poll>,
    /// The token of the shard's first source in its poller ([`LISTEN`]; then [`CLIENT`] and the
    /// waker): 0 with its own poller, `3 * index` in a group's.
    token_base: usize,
    socks: [Sock; 2],
    rx: RxBufs,
    arena: Arena,
    events_buf: Vec<quinn_proto::Event>,
    mailbox: MailboxRx<H>,
    /// Mail may be waiting (the waker fired and we have not seen the mailbox empty since).
    mail_pending: bool,
    peers: Arc<[MailboxTx<H>]>,
    /// The last iteration left work behind (a budget stopped it, or a flush unblocked
    /// connections): the next one must not block.
    carry: bool,
    /// New connections waiting for admission, and this turn's count.
    admit: AdmitQueue,
    /// When memory was last given back ([`reclaim`]).
    reclaim: reclaim::Reclaim,
    /// `now` comes from a simulated clock (`crate::testing`): a turn's wall and CPU time mean
    /// nothing, so they are not accounted.
    virtual_clock: bool,
}

impl<H: Handler> Shard<H> {
    /// One turn of the loop (see the module docs): blocks in `poll` for at most `max_wait`
    /// (`None`: until the next deadline; never when work was left over), then drains inputs and
    /// drives outputs at the time `clock` gives once the poll returned. Returns `false` once the
    /// shard has shut down.
    pub(crate) fn iterate(
        &mut self,
        events: &mut mio::Events,
        max_wait: Option<Duration>,
        clock: impl Fn() -> Instant,
    ) -> bool {
        // the caller's thread runs application code between iterations: the turn's CPU counts
        // from here
        start_turn_cpu_clock();
        let timeout = if self.carry {
            Some(Duration::ZERO)
        } else {
            match (self.next_timeout(clock()), max_wait) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        let Some(poll) = &mut self.poll else {
            tracing::error!(
                shard = self.core.id,
                "a grouped shard has no poller of its own"
            );
            return false;
        };
        if let Err(e) = poll.poll(events, timeout) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::error!(shard = self.core.id, error = %e, "poll failed; shard exits");
                return false;
            }
        }
        self.turn(events, clock())
    }

    /// The rest of a loop turn after the poll: takes this shard's `events` (those with its
    /// tokens; a group passes all of its thread's), drains inputs and drives outputs without
    /// blocking, at `now` (the caller's clock: `Instant::now()` on the shard threads, a virtual
    /// clock in a simulation). Returns `false` once the shard has shut down.
    pub(crate) fn turn(&mut self, events: &mio::Events, now: Instant) -> bool {
        self.core.now = now;
        self.core.owner = std::thread::current().id();
        let mut writable = [false; 2];
        for ev in events.iter() {
            let Some(t) = ev.token().0.checked_sub(self.token_base) else {
                continue;
            };
            match mio::Token(t) {
                WAKER_TOKEN => self.mail_pending = true,
                LISTEN_TOKEN | CLIENT_TOKEN => {
                    self.socks[t].readable |= ev.is_readable() || ev.is_error();
                    writable[t] |= ev.is_writable();
                }
                _ => {}
            }
        }
        let mut more = false;
        for (s, w) in writable.into_iter().enumerate() {
            if w || self.socks[s].is_blocked() {
                self.flush_socket(s);
            }
        }
        // inputs
        for s in [LISTEN, CLIENT] {
            self.socks[s].refresh_readable();
            if self.socks[s].readable && !self.recv_socket(s) {
                more = true;
            }
        }
        if self.mail_pending && !self.drain_mailbox() {
            more = true;
        }
        if !self.fire_timers() {
            more = true;
        }
        // new connections, after this turn's input for established ones
        if !self.admit() {
            more = true;
        }
        // outputs
        if !self.drive_dirty() {
            more = true;
        }
        // connections a flush unblocked must be driven next time
        let mut woke = false;
        for s in [LISTEN, CLIENT] {
            woke |= self.flush_socket(s);
        }
        self.carry = more || woke;
        if !self.carry {
            self.reclaim();
        }
        if let Some(deadline) = self.core.stopping {
            if self.core.conns.len() == 0 || self.core.now >= deadline {
                return false;
            }
        }
        if more {
            self.core.stats.budget_exhausted.fetch_add(1, Relaxed);
        }
        if !self.virtual_clock {
            self.account_turn();
        }
        true
    }

    /// Adds the turn's wall and CPU time to the counters and tells a stall (the turn used the
    /// CPU for most of a long time) from a descheduled thread.
    fn account_turn(&mut self) {
        let busy = self.core.now.elapsed();
        let cpu_now = sys::thread_cpu_micros();
        let cpu = cpu_now.saturating_sub(TURN_CPU.with(|c| c.replace(cpu_now)));
        let stats = &self.core.stats;
        stats
            .busy_micros
            .fetch_add(busy.as_micros() as u64, Relaxed);
        stats.cpu_micros.fetch_add(cpu, Relaxed);
        let cpu = Duration::from_micros(cpu);
        match long_turn(busy, cpu) {
            None => {}
            Some(LongTurn::Stalled) => {
                stats.stalled_turns.fetch_add(1, Relaxed);
                tracing::warn!(
                    shard = self.core.id,
                    ?busy,
                    ?cpu,
                    "shard loop iteration stalled"
                );
            }
            Some(LongTurn::Descheduled) => {
                stats.descheduled_turns.fetch_add(1, Relaxed);
                tracing::debug!(
                    shard = self.core.id,
                    ?busy,
                    ?cpu,
                    "shard loop iteration descheduled"
                );
            }
        }
    }

    /// Before a turn given without readiness events ([`help`]): every input counts as ready.
    pub(crate) fn prepare_help(&mut self) {
        for s in &mut self.socks {
            s.assume_readable();
        }
        self.mail_pending = true;
    }

    /// `now` will come from a simulated clock ([`crate::testing`]): turns are not timed.
    pub(crate) fn use_virtual_clock(&mut self) {
        self.virtual_clock = true;
    }

    /// Publishes the final gauge once the shard stopped.
    pub(crate) fn finish(&mut self) {
        self.core
            .stats
            .connections_open
            .store(self.core.conns.len() as u64, Relaxed);
    }

    /// When the shard next needs a turn without new input: now if work was left over, else the
    /// next timer or the shutdown deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if self.carry || self.socks.iter().any(|s| s.has_memory_input()) {
            return Some(self.core.now);
        }
        let closed = self.core.stats.connections_closed.load(Relaxed);
        [
            self.core.timers.next_deadline(),
            self.core.stopping,
            self.reclaim.deadline(closed, self.core.now),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub(crate) fn id(&self) -> usize {
        self.core.id
    }

    pub(crate) fn stats(&self) -> &Arc<Counters> {
        &self.core.stats
    }

    /// The shard's `mio::Poll`, readable from outside while events wait (the direct driver
    /// watches it).
    pub(crate) fn poll(&self) -> Option<&mio::Poll> {
        self.poll.as_ref()
    }

    /// Flushes socket `s`'s transmit queue; once it is empty, re-queues the connections that
    /// waited for it. Returns whether any did (they need a drive).
    fn flush_socket(&mut self, s: usize) -> bool {
        let sock = &mut self.socks[s];
        if !sock.flush() || sock.waiters.is_empty() {
            return false;
        }
        for slot in std::mem::take(&mut sock.waiters) {
            self.core.conns.mark_dirty(slot);
        }
        true
    }

    /// How long `poll` may block from `now`: until the next timer or the shutdown deadline.
    fn next_timeout(&self, now: Instant) -> Option<Duration> {
        let next = self.next_deadline()?;
        Some(next.saturating_duration_since(now))
    }

    /// Its thread's mailbox waker fired (a group's is shared by all members): look into the
    /// mailbox on the next turn.
    pub(crate) fn mail_arrived(&mut self) {
        self.mail_pending = true;
    }

    /// Drains the mailbox under its budget; `false` if mail is left.
    fn drain_mailbox(&mut self) -> bool {
        for _ in 0..MAILBOX_PER_ITER {
            let Some(msg) = self.mailbox.recv() else {
                self.mail_pending = false;
                return true;
            };
            match msg {
                Msg::Datagram(h) => self.on_handoff(h),
                Msg::Run(f) => {
                    let Self { core, handler, .. } = self;
                    let r = catch_unwind(AssertUnwindSafe(|| {
                        let mut ctx = ShardCtx::new(core);
                        f(&mut ctx, handler)
                    }));
                    if r.is_err() {
                        self.core.stats.handler_panics.fetch_add(1, Relaxed);
                    }
                }
                Msg::Shutdown { deadline } => self.begin_shutdown(deadline),
            }
        }
        false
    }

    /// Stops accepting and closes every connection with CONNECTION_CLOSE (code 0).
    fn begin_shutdown(&mut self, deadline: Instant) {
        let core = &mut self.core;
        core.stopping = Some(core.stopping.map_or(deadline, |d| d.min(deadline)));
        core.endpoint.set_server_config(None);
        self.refuse_waiting();
        let core = &mut self.core;
        let slots: Vec<u32> = core.conns.slots().collect();
        for slot in slots {
            if let Some(e) = core.conns.get_mut(slot) {
                e.conn.close(
                    core.now,
                    VarInt::from_u32(0),
                    Bytes::from_static(b"shutdown"),
                );
            }
            core.conns.mark_dirty(slot);
        }
    }

    /// Fires due timers under the budget; `false` if due timers are left.
    fn fire_timers(&mut self) -> bool {
        let core = &mut self.core;
        let now = core.now;
        for _ in 0..TIMERS_PER_ITER {
            let Some(t) = core.timers.pop_due(now) else {
                let conns = &mut core.conns;
                let live = conns.len();
                core.timers.compact(live, |t| {
                    conns
                        .get_gen_mut(t.slot, t.gen)
                        .is_some_and(|e| e.timer == Some(t.at))
                });
                return true;
            };
            if let Some(e) = core.conns.get_gen_mut(t.slot, t.gen) {
                if e.timer == Some(t.at) {
                    e.timer = None;
                    e.conn.handle_timeout(now);
                    core.conns.mark_dirty(t.slot);
                }
            }
        }
        false
    }

    /// Drives queued connections under the budget; `false` if some are left.
    fn drive_dirty(&mut self) -> bool {
        for _ in 0..CONNS_PER_ITER {
            let Some(slot) = self.core.conns.pop_dirty() else {
                return true;
            };
            self.drive(slot);
        }
        !self.core.conns.has_dirty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_turn_is_a_stall_only_with_half_its_time_on_the_cpu() {
        let ms = Duration::from_millis;
        assert_eq!(long_turn(ms(50), ms(50)), None);
        assert_eq!(long_turn(ms(80), ms(80)), Some(LongTurn::Stalled));
        assert_eq!(long_turn(ms(80), ms(40)), Some(LongTurn::Stalled));
        assert_eq!(long_turn(ms(80), ms(39)), Some(LongTurn::Descheduled));
        assert_eq!(long_turn(ms(500), ms(0)), Some(LongTurn::Descheduled));
    }
}
