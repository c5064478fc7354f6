//! Per-stage counters: atomics written by the pipeline threads, snapshots read by the CLI.
//!
//! Each stage has a `*Counters` struct of relaxed `AtomicU64`s (one writer class per stage,
//! read only for reporting) and a `*Stats` snapshot that derives `serde::Serialize`, so the CLI
//! can print it on exit and write it as JSON with `--stats-file`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::pool::Sizes;
use crate::route::{RouteStats, TableSizes};

/// Declares a counters struct of `AtomicU64`s and its serializable snapshot.
macro_rules! counters {
    ($(#[$doc:meta])* $atomic:ident => $snap:ident { $($(#[$fdoc:meta])* $field:ident,)* }) => {
        #[derive(Default)]
        pub(crate) struct $atomic {
            $(pub(crate) $field: AtomicU64,)*
        }

        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
        pub struct $snap {
            $($(#[$fdoc])* pub $field: u64,)*
        }

        impl $atomic {
            pub(crate) fn snapshot(&self) -> $snap {
                $snap { $($field: self.$field.load(Ordering::Relaxed),)* }
            }
        }
    };
}

/// Adds `n` to a counter.
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

counters! {
    /// Receiver stage counters.
    ReceiverCounters => ReceiverStats {
        /// Datagrams read from the listen socket.
        received,
        /// Handed to a processor.
        to_processors,
        /// Handed to the slow path (malformed or unusual).
        to_slow_path,
        /// Dropped: the chosen processor's queue was full.
        dropped_processor_queue_full,
        /// Dropped: the slow path's queue was full.
        dropped_slow_queue_full,
        /// Dropped: no free buffer in the pool.
        dropped_pool_empty,
        /// Dropped: the datagram filled the whole buffer and may have been truncated.
        dropped_oversize,
        /// Socket errors other than timeouts.
        recv_errors,
    }
}

counters! {
    /// Processor stage counters (routing counters are in [`RouteStats`]).
    ProcessorCounters => ProcessorStats {
        /// Datagrams routed to a backend.
        routed,
        /// Dropped: no live backend for a new flow.
        dropped_no_backend,
        /// Dropped: the chosen forwarder's queue was full.
        dropped_forward_queue_full,
        /// Handed to the slow path (inline pipeline: malformed or unusual; staged: the header
        /// no longer parsed after a reload).
        to_slow_path,
        /// Dropped: the slow path's queue was full.
        dropped_slow_queue_full,
    }
}

counters! {
    /// Slow-path counters.
    SlowCounters => SlowPathStats {
        /// Datagrams the slow path took.
        received,
        /// Routed by the 4-tuple fallback (unknown versions) or the full router.
        routed,
        /// Dropped: empty datagram.
        dropped_empty,
        /// Dropped: shorter than its header.
        dropped_too_short,
        /// Dropped: a CID longer than 20 bytes in a known version.
        dropped_cid_too_long,
        /// Dropped: a version negotiation packet from a client.
        dropped_version_negotiation,
        /// Dropped: no live backend.
        dropped_no_backend,
        /// Dropped: the chosen forwarder's queue was full.
        dropped_forward_queue_full,
    }
}

counters! {
    /// Forwarder stage counters.
    ForwarderCounters => ForwarderStats {
        /// Datagrams sent to a backend.
        forwarded,
        /// Sends that failed (including a full socket buffer).
        send_errors,
        /// Dropped: the proxy session limit was reached.
        dropped_session_limit,
        /// Dropped: the datagram could not be encapsulated.
        dropped_encap,
        /// Proxy sessions opened.
        sessions_opened,
        /// Proxy sessions closed after idling.
        sessions_expired,
        /// Backend replies relayed to clients (proxy mode).
        replies_relayed,
        /// Relay errors (reading from a backend or writing to a client).
        reply_errors,
    }
}

/// Everything the load balancer counts, by stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Queue and pool sizes computed at start.
    pub sizes: Sizes,
    /// Pool buffers free at the time of the snapshot.
    pub pool_free: usize,
    /// Receivers.
    pub receivers: ReceiverStats,
    /// Processors.
    pub processors: ProcessorStats,
    /// Routing decisions (fallback decisions included).
    pub routing: RouteStats,
    /// Fallback table sizes.
    pub tables: TableSizes,
    /// Slow path.
    pub slow_path: SlowPathStats,
    /// Forwarders.
    pub forwarders: ForwarderStats,
    /// Proxy sessions open at the time of the snapshot.
    pub sessions: u64,
}

/// All the stage counters, shared by the threads.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) receivers: ReceiverCounters,
    pub(crate) processors: ProcessorCounters,
    pub(crate) slow: SlowCounters,
    pub(crate) forwarders: ForwarderCounters,
    /// Gauge: sessions open across forwarders.
    pub(crate) sessions: AtomicU64,
}
