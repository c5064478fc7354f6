//! The virtual clock: a monotonic `Instant` (an epoch taken once plus a virtual offset) and the
//! wall time derived from it, for everyone that reads time in a simulation: the shards (through
//! their caller), the clients, quinn-proto's tokens ([`quinn_proto::TimeSource`]) and rustls'
//! tickets ([`rustls::time_provider::TimeProvider`]).
//!
//! The wall time starts at a fixed date, so tickets and tokens are the same bytes in every run
//! of a seed.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::UnixTime;

/// Seconds since the Unix epoch of the simulation's start (2026-01-01T00:00:00Z).
pub const WALL_START_SECS: u64 = 1_767_225_600;

/// A virtual clock shared by the simulator and the configs that read time.
#[derive(Debug, Clone)]
pub struct Clock {
    epoch: Instant,
    /// Nanoseconds since `epoch`.
    offset: Arc<AtomicU64>,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock at virtual time 0.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            offset: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.offset.load(Relaxed))
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.offset.load(Relaxed))
    }

    /// Moves the clock to `t` (never backwards).
    pub fn advance_to(&self, t: Instant) {
        let nanos = t.saturating_duration_since(self.epoch).as_nanos();
        self.offset
            .fetch_max(u64::try_from(nanos).unwrap_or(u64::MAX), Relaxed);
    }

    /// The virtual wall time.
    pub fn system_time(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(WALL_START_SECS) + self.elapsed()
    }
}

impl quinn_proto::TimeSource for Clock {
    fn now(&self) -> SystemTime {
        self.system_time()
    }
}

impl rustls::time_provider::TimeProvider for Clock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(
            self.system_time()
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_monotonically_and_drives_the_wall_time() {
        let c = Clock::new();
        let t0 = c.now();
        c.advance_to(t0 + Duration::from_secs(3));
        c.advance_to(t0 + Duration::from_secs(1));
        assert_eq!(c.elapsed(), Duration::from_secs(3));
        let wall = c.system_time().duration_since(SystemTime::UNIX_EPOCH);
        assert_eq!(wall.unwrap().as_secs(), WALL_START_SECS + 3);
    }
}
