//! Per-shard counters: owned by one shard (the only writer), readable by any thread.
//!
//! Each shard writes its counters (atomics) with `Relaxed` atomic adds; [`crate::Engine::stats`] takes a
//! [`ShardStats`] snapshot at any time. The fields of one snapshot are not read atomically together,
//! so two counters may disagree by the events of one loop iteration.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

thread_local! {
    /// The counters of the shard running on this thread (set by the shard's scope), for code
    /// called from deep inside quinn-proto / rustls (the shared ticketer).
    static THREAD_COUNTERS: std::cell::RefCell<Option<Arc<Counters>>> =
        const { std::cell::RefCell::new(None) };
}

/// Makes `counters` the calling thread's shard counters (see [`count_resumption`]); returns the
/// previous ones.
pub(crate) fn swap_thread_counters(counters: Option<Arc<Counters>>) -> Option<Arc<Counters>> {
    THREAD_COUNTERS.with(|c| std::mem::replace(&mut *c.borrow_mut(), counters))
}

/// Counts a decrypted session ticket on the calling shard (no-op off shard threads).
pub(crate) fn count_resumption() {
    THREAD_COUNTERS.with(|c| {
        if let Some(c) = &*c.borrow() {
            c.resumptions.fetch_add(1, Relaxed);
        }
    });
}

/// Counts a refused single-use ticket on the calling shard (no-op off shard threads).
pub(crate) fn count_ticket_refused() {
    THREAD_COUNTERS.with(|c| {
        if let Some(c) = &*c.borrow() {
            c.tickets_refused.fetch_add(1, Relaxed);
        }
    });
}

/// The [`ShardStats`] fields that are gauges (a current level); every other field only grows.
pub const GAUGES: &[&str] = &["connections_open", "handshakes_in_progress"];

/// Upper bounds, in microseconds, of the handshake-duration histogram's buckets (the last bucket,
/// beyond them, is unbounded): from a loopback handshake (~1 ms) to a lossy long path.
pub const HANDSHAKE_BUCKETS_MICROS: [u64; 12] = [
    500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
    5_000_000,
];
const BUCKETS: usize = HANDSHAKE_BUCKETS_MICROS.len() + 1;

/// A fixed-bucket histogram of durations: atomics only, nothing allocated when recording.
#[derive(Debug, Default)]
pub(crate) struct DurationHistogram {
    counts: [AtomicU64; BUCKETS],
    sum_micros: AtomicU64,
}

impl DurationHistogram {
    /// Counts one duration (`Relaxed`; the shard is the only writer).
    pub(crate) fn record(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = HANDSHAKE_BUCKETS_MICROS.partition_point(|&b| b < micros);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: std::array::from_fn(|i| self.counts[i].load(Relaxed)),
            sum_micros: self.sum_micros.load(Relaxed),
        }
    }
}

/// A snapshot of one shard's handshake durations ([`crate::Engine::handshake_times`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Handshakes per bucket (not cumulative): `counts[i]` took at most
    /// `HANDSHAKE_BUCKETS_MICROS[i]` µs and more than the bound before; the last entry counts
    /// those beyond every bound.
    pub counts: [u64; BUCKETS],
    /// Sum of all durations, in microseconds.
    pub sum_micros: u64,
}

impl HistogramSnapshot {
    /// Handshakes counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Reads an engine's counters from any thread ([`crate::Engine::stats_reader`]), e.g. for a
/// metrics endpoint; it outlives the engine (the final values stay readable).
#[derive(Debug, Clone)]
pub struct StatsReader {
    shards: Arc<[Arc<Counters>]>,
}

impl StatsReader {
    pub(crate) fn new(shards: &[Arc<Counters>]) -> Self {
        Self {
            shards: shards.into(),
        }
    }

    /// A snapshot of every shard's counters, in shard order (as [`crate::Engine::stats`]).
    pub fn stats(&self) -> Vec<ShardStats> {
        self.shards.iter().map(|c| c.snapshot()).collect()
    }

    /// Every shard's handshake durations (as [`crate::Engine::handshake_times`]).
    pub fn handshake_times(&self) -> Vec<HistogramSnapshot> {
        self.shards
            .iter()
            .map(|c| c.handshake_time.snapshot())
            .collect()
    }
}

macro_rules! stats {
    ($( $(#[$doc:meta])* $name:ident, )*) => {
        /// A snapshot of one shard's counters.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct ShardStats {
            $( $(#[$doc])* pub $name: u64, )*
        }

        /// The live atomics behind [`ShardStats`]; the shard is the only writer.
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $( pub(crate) $name: AtomicU64, )*
            /// Handshake durations (not part of [`ShardStats`]: see [`HistogramSnapshot`]).
            pub(crate) handshake_time: DurationHistogram,
        }

        impl Counters {
            /// Reads every counter (`Relaxed`).
            pub(crate) fn snapshot(&self) -> ShardStats {
                ShardStats { $( $name: self.$name.load(Relaxed), )* }
            }
        }

        impl ShardStats {
            /// Every counter with its name, in declaration order (for JSON and logs).
            pub fn fields(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [$( (stringify!($name), self.$name), )*].into_iter()
            }

            /// Field-wise sum, for totals over shards.
            pub fn sum<'a>(all: impl IntoIterator<Item = &'a ShardStats>) -> ShardStats {
                let mut t = ShardStats::default();
                for s in all {
                    $( t.$name += s.$name; )*
                }
                t
            }
        }
    };
}

stats! {
    /// Incoming connections accepted by this shard's endpoint (server side).
    connections_accepted,
    /// Connections currently owned by this shard (server and client side); a gauge.
    connections_open,
    /// Accepted (server side) connections whose handshake has not completed; a gauge.
    handshakes_in_progress,
    /// Connections fully drained and removed from this shard.
    connections_closed,
    /// Connections the peer closed (CONNECTION_CLOSE received). The shard sends nothing more on
    /// them: not even the CONNECTION_CLOSE quinn-proto would answer with (RFC 9000 §10.2.2).
    closed_by_peer,
    /// Turns this shard got from another shard's thread because its own thread had not run it
    /// for a while with input waiting (turn sharing, `shard/help.rs`).
    helped_turns,
    /// New connections waiting for admission now (a gauge; see `Builder::admission`).
    handshakes_queued,
    /// New connections that waited for a later turn than the one their Initial arrived in,
    /// because the turn's admission budget was spent.
    handshakes_deferred,
    /// New connections refused with CONNECTION_REFUSED because the admission queue was full.
    handshakes_refused,
    /// Handshakes completed (server and client side).
    handshakes,
    /// Client connections created on this shard by `connect`.
    connections_initiated,
    /// Incoming connections refused because the per-shard connection limit or the memory budget
    /// was reached.
    connections_refused,
    /// Of `connections_refused`, those refused because one more connection would take the
    /// shard's connections times one connection's bound beyond its memory budget
    /// (`MemoryBudget::per_shard`).
    refused_memory,
    /// UDP datagrams received (after GRO splitting) on this shard's sockets.
    datagrams_in,
    /// UDP datagrams sent (counting each GSO segment), counted when the kernel takes them.
    datagrams_out,
    /// Send syscalls: one `sendmmsg` per flush of the socket's queue (single datagrams and GSO
    /// batches alike), one `sendmsg` per transmit sent through quinn-udp (the fallback),
    /// including calls that would block or failed. `datagrams_out / send_calls` is the batching
    /// factor.
    send_calls,
    /// Datagrams another shard forwarded here because this shard owns their DCID.
    handoffs_in,
    /// Datagrams this shard received but forwarded to the owning shard.
    handoffs_out,
    /// Of `handoffs_in`, those with a short header (should be 0 when BPF steering is attached).
    handoffs_in_short,
    /// Of `handoffs_out`, those with a short header (should be 0 when BPF steering is attached).
    handoffs_out_short,
    /// Datagrams too short or otherwise unparseable as QUIC.
    dropped_malformed,
    /// Short-header datagrams whose DCID is not one of ours (failed `validate`) or unknown.
    dropped_unknown_cid,
    /// Datagrams quinn-proto's endpoint dropped without a connection event or an answer: long
    /// headers it cannot parse, Initials under 1200 bytes, unknown versions under 1200 bytes
    /// (RFC 9000 §5.2.2), long headers for unknown connections, Initials whose header or packet
    /// protection fails, or the endpoint is saturated.
    dropped_endpoint,
    /// Datagrams dropped because the owning shard's mailbox was full.
    dropped_queue_full,
    /// Datagrams dropped because a budget forced it (reserved: currently always 0, budgets defer).
    dropped_budget,
    /// Datagrams dropped because the socket refused them (not `WouldBlock`).
    dropped_send_error,
    /// Datagrams the direct backend's in-memory link dropped because the peer's queue was full.
    dropped_link_full,
    /// Server connections whose client moved to this shard's preferred address (its own port):
    /// their datagrams now arrive, and replies leave, there.
    preferred_address_moves,
    /// Times a server connection stopped sending because the next datagram would have taken it
    /// past three times the bytes its unvalidated client address sent (RFC 9000 §8.1, enforced
    /// by the engine: see `shard/amplify.rs`); it resumes when the client sends more or its
    /// address is validated. Counted once per stop, not per attempt.
    amplification_blocked,
    /// Retry packets sent.
    retry_sent,
    /// Session tickets this shard decrypted: TLS resumptions, possibly of tickets another shard
    /// issued (one ticket key for all shards).
    resumptions,
    /// Single-use session tickets presented here that the shared store no longer held
    /// (replayed, evicted or unknown): those handshakes fell back to full ones (0-RTT mode).
    tickets_refused,
    /// Server connections that accepted their client's 0-RTT offer (early-data keys installed;
    /// whether the client then sent early data is up to it).
    zero_rtt_accepted,
    /// Handler callbacks that panicked (each closed its connection).
    handler_panics,
    /// Times the shard gave memory back after connections closed (shrank its tables and called
    /// `malloc_trim`; at most once a second, see `shard/reclaim.rs`).
    memory_trims,
    /// Loop iterations that ended with work left over (a budget stopped them).
    budget_exhausted,
    /// Microseconds spent working (not blocked in `poll`); compare with wall time for load.
    busy_micros,
    /// CPU microseconds the shard's turns used (thread CPU time, so time the thread was
    /// descheduled in a turn is not in it, while it is in `busy_micros`).
    cpu_micros,
    /// Turns that took longer than 50 ms of wall time while the thread had the CPU for at least
    /// half of it: real stalls, each logged as a warning.
    stalled_turns,
    /// Turns that took longer than 50 ms of wall time while the thread had the CPU for less than
    /// half of it: the thread was descheduled (the machine is overloaded), logged at debug.
    descheduled_turns,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_the_bucket_of_their_upper_bound() {
        let h = DurationHistogram::default();
        h.record(Duration::from_micros(500)); // on the first bound: first bucket
        h.record(Duration::from_micros(501));
        h.record(Duration::from_secs(60)); // beyond every bound
        let s = h.snapshot();
        assert_eq!(s.counts[0], 1);
        assert_eq!(s.counts[1], 1);
        assert_eq!(s.counts[HANDSHAKE_BUCKETS_MICROS.len()], 1);
        assert_eq!(s.count(), 3);
        assert_eq!(s.sum_micros, 500 + 501 + 60_000_000);
    }
}
