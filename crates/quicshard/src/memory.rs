//! The memory budget: what one connection may make the engine hold, and what one shard may hold
//! for all of its connections together.
//!
//! A connection's memory that a peer controls is quinn-proto's buffers: stream data written but
//! not yet acknowledged (at most the send window, whatever the peer's flow-control credit: a
//! client that stops reading makes a server hold that much) and received data the application
//! has not read (at most `receive_window` for the connection, `stream_receive_window` for one
//! stream). [`MemoryBudget`] sets those windows instead of quinn-proto's defaults (10 MB send
//! window, unlimited connection receive window).
//!
//! The send window is shared out: one shard's connections together get `send_pool` bytes, each
//! at most `send_window` (enough for one fast connection at 50 ms RTT) and at least
//! [`MIN_SEND_WINDOW`], in power-of-two steps ([`MemoryBudget::send_window_for`]). The shard
//! sets every connection's window (`Connection::set_send_window`) when the share changes, which
//! happens only while fewer than `send_pool / MIN_SEND_WINDOW` connections are open. A peer that
//! acknowledges keeps the shard within its pool; one that also stops acknowledging holds what its
//! window allowed when the data was written.
//!
//! A shard admits a new connection only while `send_pool` plus its connections times
//! [`MemoryBudget::per_connection`] (the receive window, the smallest send window and a fixed
//! [`CONNECTION_OVERHEAD`]) stays within [`MemoryBudget::per_shard`]; beyond it new connections
//! are refused (CONNECTION_REFUSED) and counted in `refused_memory`.
//!
//! The defaults and how they were chosen (throughput at loopback and 50 ms RTT against the
//! window) are in `docs/ARCHITECTURE.md` (section "Bounds an attacker meets").

use quinn_proto::{TransportConfig, VarInt};

/// What one connection costs besides its windows (quinn-proto's connection state, the TLS
/// session, the engine's entry): measured at 27.6 KB per idle connection, rounded up.
pub const CONNECTION_OVERHEAD: u64 = 32 * 1024;

/// Default largest send window of one connection: stream data it holds until acknowledged.
/// 2 MiB matched quinn-proto's 10 MB at 50 ms RTT where 1 MiB lost 11 % and 512 KiB half (see
/// the measurements in `docs/ARCHITECTURE.md`).
pub const DEFAULT_SEND_WINDOW: u64 = 2 * 1024 * 1024;
/// Default send pool of one shard, shared by its connections: 8 connections get the full
/// [`DEFAULT_SEND_WINDOW`], 64 or more get [`MIN_SEND_WINDOW`].
pub const DEFAULT_SEND_POOL: u64 = 16 * 1024 * 1024;
/// The smallest send window a connection is given, however many share the pool (or the
/// largest, if that is smaller).
pub const MIN_SEND_WINDOW: u64 = 256 * 1024;
/// Default connection receive window (received data not yet read by the application).
pub const DEFAULT_RECEIVE_WINDOW: u64 = 1024 * 1024;
/// Default receive window of one stream (quinn-proto's own default is 1.25 MB).
pub const DEFAULT_STREAM_RECEIVE_WINDOW: u64 = 1024 * 1024;
/// Default budget of one shard for all of its connections: 16 GiB, i.e. the send pool and about
/// 12,700 connections that each fill their receive window and the smallest send window (the
/// 10,000 idle connections of `docs/BENCHMARKS.md` fit on one shard).
pub const DEFAULT_PER_SHARD: u64 = 16 << 30;

/// Per-connection windows and the per-shard bound (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// The most bytes of stream data one connection keeps until the peer acknowledges them
    /// (quinn-proto `send_window`): writes beyond it block.
    pub send_window: u64,
    /// Bytes of unacknowledged stream data one shard's connections share (see the module docs).
    pub send_pool: u64,
    /// Bytes a peer may send on a connection ahead of the application reading them
    /// (quinn-proto `receive_window`, transport parameter initial_max_data).
    pub receive_window: u64,
    /// Bytes a peer may send on one stream ahead of the application reading them
    /// (quinn-proto `stream_receive_window`); at most `receive_window`.
    pub stream_receive_window: u64,
    /// Bytes one shard may commit to all of its connections; a new connection is refused when
    /// `send_pool` plus the shard's connections times [`MemoryBudget::per_connection`] would
    /// exceed it.
    pub per_shard: u64,
}

impl Default for MemoryBudget {
    fn default() -> Self {
        Self {
            send_window: DEFAULT_SEND_WINDOW,
            send_pool: DEFAULT_SEND_POOL,
            receive_window: DEFAULT_RECEIVE_WINDOW,
            stream_receive_window: DEFAULT_STREAM_RECEIVE_WINDOW,
            per_shard: DEFAULT_PER_SHARD,
        }
    }
}

/// Why a [`MemoryBudget`] is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryBudgetError {
    /// A window is 0 or above 2^62 - 1 (QUIC's largest flow-control value).
    #[error("memory budget: {0} must be between 1 and 2^62-1 bytes")]
    Window(&'static str),
    /// `stream_receive_window` exceeds `receive_window`: one stream could never use it.
    #[error("memory budget: the stream receive window must not exceed the connection's")]
    StreamAboveConnection,
    /// `per_shard` does not hold the send pool and one connection's bound.
    #[error("memory budget: per shard ({per_shard} bytes) is below the send pool plus one connection ({needed} bytes)")]
    ShardBelowConnection {
        /// The per-shard budget given.
        per_shard: u64,
        /// The send pool plus one connection's bound.
        needed: u64,
    },
}

impl MemoryBudget {
    /// What one connection adds to a shard's commitment beyond the send pool: its receive
    /// window, the smallest send window and [`CONNECTION_OVERHEAD`].
    pub fn per_connection(&self) -> u64 {
        self.receive_window
            .saturating_add(self.min_send_window())
            .saturating_add(CONNECTION_OVERHEAD)
    }

    /// How many connections one shard may hold within `per_shard`.
    pub fn max_connections(&self) -> usize {
        let room = self.per_shard.saturating_sub(self.send_pool);
        usize::try_from(room / self.per_connection().max(1)).unwrap_or(usize::MAX)
    }

    /// The send window of each of `n` connections of one shard: the pool's share, a power of
    /// two, between [`MIN_SEND_WINDOW`] and `send_window`.
    pub fn send_window_for(&self, n: usize) -> u64 {
        let share = self.send_pool / (n.max(1) as u64);
        if share >= self.send_window {
            return self.send_window;
        }
        let pow2 = if share == 0 {
            0
        } else {
            1u64 << (63 - share.leading_zeros())
        };
        pow2.max(self.min_send_window())
    }

    fn min_send_window(&self) -> u64 {
        MIN_SEND_WINDOW.min(self.send_window)
    }

    /// Checks the values (the builder calls this at start).
    pub fn validate(&self) -> Result<(), MemoryBudgetError> {
        for (name, v) in [
            ("the send window", self.send_window),
            ("the receive window", self.receive_window),
            ("the stream receive window", self.stream_receive_window),
        ] {
            if v == 0 || v > VarInt::MAX.into_inner() {
                return Err(MemoryBudgetError::Window(name));
            }
        }
        if self.stream_receive_window > self.receive_window {
            return Err(MemoryBudgetError::StreamAboveConnection);
        }
        let needed = self.send_pool.saturating_add(self.per_connection());
        if self.per_shard < needed {
            return Err(MemoryBudgetError::ShardBelowConnection {
                per_shard: self.per_shard,
                needed,
            });
        }
        Ok(())
    }

    /// Sets the three windows on `t` (replacing whatever it had).
    pub(crate) fn apply(&self, t: &mut TransportConfig) {
        // validated: every window is a VarInt
        let var = |v: u64| VarInt::from_u64(v).unwrap_or(VarInt::MAX);
        t.send_window(self.send_window)
            .receive_window(var(self.receive_window))
            .stream_receive_window(var(self.stream_receive_window));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shard_budget_counts_whole_connections() {
        let b = MemoryBudget {
            send_window: 64 * 1024,
            send_pool: 1 << 20,
            receive_window: 32 * 1024,
            stream_receive_window: 32 * 1024,
            per_shard: (1 << 20) + 10 * (128 * 1024) + 5,
        };
        assert_eq!(b.per_connection(), 128 * 1024);
        assert_eq!(b.max_connections(), 10);
        assert_eq!(b.validate(), Ok(()));
        assert_eq!(MemoryBudget::default().validate(), Ok(()));
    }

    #[test]
    fn the_send_pool_is_shared_in_power_of_two_windows() {
        let b = MemoryBudget::default();
        assert_eq!(b.send_window_for(0), DEFAULT_SEND_WINDOW);
        assert_eq!(b.send_window_for(8), DEFAULT_SEND_WINDOW);
        assert_eq!(b.send_window_for(9), DEFAULT_SEND_WINDOW / 2);
        assert_eq!(b.send_window_for(17), DEFAULT_SEND_WINDOW / 4);
        assert_eq!(b.send_window_for(64), MIN_SEND_WINDOW);
        assert_eq!(b.send_window_for(100_000), MIN_SEND_WINDOW);
        for n in 1..200 {
            let w = b.send_window_for(n);
            assert!(w.is_power_of_two());
            assert!(
                n as u64 * w <= b.send_pool || w == MIN_SEND_WINDOW,
                "{n}: {w}"
            );
        }
        let small = MemoryBudget {
            send_window: 100_000,
            ..b
        };
        assert_eq!(
            small.send_window_for(1_000),
            100_000,
            "never above the largest"
        );
    }

    #[test]
    fn bad_budgets_are_refused() {
        let ok = MemoryBudget::default();
        let zero = MemoryBudget {
            send_window: 0,
            ..ok
        };
        assert!(matches!(zero.validate(), Err(MemoryBudgetError::Window(_))));
        let stream = MemoryBudget {
            stream_receive_window: ok.receive_window + 1,
            ..ok
        };
        assert_eq!(
            stream.validate(),
            Err(MemoryBudgetError::StreamAboveConnection)
        );
        let shard = MemoryBudget {
            per_shard: ok.send_pool + 1000,
            ..ok
        };
        assert!(matches!(
            shard.validate(),
            Err(MemoryBudgetError::ShardBelowConnection { .. })
        ));
    }
}
