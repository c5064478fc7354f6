//! Giving memory back after a burst: once enough connections closed since the last time and the
//! shard is about to block (no work left over), it shrinks its own tables (the connection slab's
//! empty tail, the dirty queue, stale timers) and asks glibc to return free heap pages to the
//! kernel (`malloc_trim(0)`). Without it, glibc keeps the freed memory of thousands of closed
//! connections resident indefinitely (measured: all of a 3,000-connection burst's growth still
//! resident 11 s after the last one closed).
//!
//! `malloc_trim` walks every malloc arena, which takes milliseconds with a large heap, so it runs
//! at most once per [`MIN_INTERVAL`] per shard and only after [`MIN_CLOSED`] closures: a steady
//! trickle of connections costs one trim a second at most, an idle shard none.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::callback::Handler;
use super::Shard;

/// Closures since the last trim that make the next one worth its cost. Why: each closed
/// connection frees about 28 KB; 64 of them are ~2 MB, below which a trim returns little.
const MIN_CLOSED: u64 = 64;
/// Shortest time between two trims of one shard. Why: bounds the trim's cost to a few ms per
/// second while still returning a burst's memory within seconds of its end.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// When the shard last gave memory back.
#[derive(Debug, Default)]
pub(crate) struct Reclaim {
    /// `connections_closed` at the last trim.
    closed_at_last: u64,
    last: Option<Instant>,
}

impl Reclaim {
    /// Whether a trim is due at `now` with `closed` connections closed in total; if so, records
    /// it as done.
    fn due(&mut self, now: Instant, closed: u64) -> bool {
        if closed.saturating_sub(self.closed_at_last) < MIN_CLOSED {
            return false;
        }
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < MIN_INTERVAL)
        {
            return false;
        }
        self.closed_at_last = closed;
        self.last = Some(now);
        true
    }
}

impl Reclaim {
    /// When a trim that waits only for [`MIN_INTERVAL`] becomes due (so an idle shard wakes up
    /// for it; `now` if it never trimmed); `None` if none is pending.
    pub(crate) fn deadline(&self, closed: u64, now: Instant) -> Option<Instant> {
        if closed.saturating_sub(self.closed_at_last) < MIN_CLOSED {
            return None;
        }
        Some(self.last.map_or(now, |t| t + MIN_INTERVAL))
    }
}

impl<H: Handler> Shard<H> {
    /// Called when an iteration left no work behind: gives memory back if a trim is due.
    pub(super) fn reclaim(&mut self) {
        let core = &mut self.core;
        let closed = core.stats.connections_closed.load(Relaxed);
        if !self.reclaim.due(core.now, closed) {
            return;
        }
        core.conns.shrink();
        let conns = &mut core.conns;
        core.timers.shrink(|t| {
            conns
                .get_gen_mut(t.slot, t.gen)
                .is_some_and(|e| e.timer == Some(t.at))
        });
        trim_heap();
        core.stats.memory_trims.fetch_add(1, Relaxed);
    }
}

/// Returns free heap memory to the kernel (glibc's `malloc_trim`; a no-op elsewhere).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator; it takes the allocator's
    // own locks and touches no memory we own.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_after_enough_closures_at_most_once_per_interval() {
        let t0 = Instant::now();
        let mut r = Reclaim::default();
        assert!(!r.due(t0, MIN_CLOSED - 1), "too few closures");
        assert!(r.due(t0, MIN_CLOSED));
        assert!(!r.due(t0, MIN_CLOSED), "nothing closed since");
        assert!(
            !r.due(t0 + MIN_INTERVAL / 2, 3 * MIN_CLOSED),
            "too soon after the last"
        );
        assert_eq!(
            r.deadline(3 * MIN_CLOSED, t0),
            Some(t0 + MIN_INTERVAL),
            "wake up for it"
        );
        assert!(r.due(t0 + MIN_INTERVAL, 3 * MIN_CLOSED));
        assert_eq!(r.deadline(3 * MIN_CLOSED, t0), None);
    }
}
