//! The stateless ticketer: one ticket key per period of `lifetime`, derived from a master
//! secret, so every process that holds the secret (the two sides of a handover,
//! [`crate::handover`]) seals and opens the same tickets without talking to each other.
//!
//! Period `e` is `unix_time / lifetime`. Tickets are sealed under period `e`'s key and opened
//! under `e`'s or `e - 1`'s, so a ticket stays valid for at least one and at most two lifetimes.
//! The time is the wall clock because two processes must agree on it; [`KeyedTicketer::at`]
//! takes it from the caller (the tests' virtual clock).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ranked_lock::Mutex;
use rustls::server::ProducesTickets;

use super::aead::AeadTicketKey;

/// The keys of the current and the previous period.
struct Keys {
    period: u64,
    current: Arc<AeadTicketKey>,
    previous: Arc<AeadTicketKey>,
}

/// See the module docs.
pub(crate) struct KeyedTicketer {
    master: ring::hkdf::Prk,
    lifetime_secs: u64,
    keys: Mutex<Keys>,
}

impl std::fmt::Debug for KeyedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedTicketer")
            .field("lifetime_secs", &self.lifetime_secs)
            .finish_non_exhaustive()
    }
}

impl KeyedTicketer {
    /// Keys derived from `master`, one per `lifetime` (whole seconds, at least 1).
    pub(crate) fn new(master: &[u8; 32], lifetime: Duration) -> Self {
        let master =
            ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"quicshard tickets").extract(master);
        let lifetime_secs = lifetime.as_secs().clamp(1, u64::from(u32::MAX));
        let keys = Mutex::new(crate::ranks::TICKET_KEYS, Self::keys_of(&master, u64::MAX));
        Self {
            master,
            lifetime_secs,
            keys,
        }
    }

    fn keys_of(master: &ring::hkdf::Prk, period: u64) -> Keys {
        Keys {
            period,
            current: Arc::new(AeadTicketKey::derived(master, period)),
            previous: Arc::new(AeadTicketKey::derived(master, period.wrapping_sub(1))),
        }
    }

    /// The keys of the period `unix_secs` falls in.
    fn at(&self, unix_secs: u64) -> (Arc<AeadTicketKey>, Arc<AeadTicketKey>) {
        let period = unix_secs / self.lifetime_secs;
        let mut k = self.keys.lock();
        if k.period != period {
            *k = Self::keys_of(&self.master, period);
        }
        (k.current.clone(), k.previous.clone())
    }

    fn now(&self) -> (Arc<AeadTicketKey>, Arc<AeadTicketKey>) {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.at(secs)
    }

    #[cfg(test)]
    fn seal_at(&self, unix_secs: u64, plain: &[u8]) -> Option<Vec<u8>> {
        self.at(unix_secs).0.encrypt(plain)
    }

    #[cfg(test)]
    fn open_at(&self, unix_secs: u64, ticket: &[u8]) -> Option<Vec<u8>> {
        let (current, previous) = self.at(unix_secs);
        current.decrypt(ticket).or_else(|| previous.decrypt(ticket))
    }
}

impl ProducesTickets for KeyedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    /// The ticket lifetime told to clients: the shortest a ticket lives.
    fn lifetime(&self) -> u32 {
        // invariant: clamped to u32 in `new`
        self.lifetime_secs as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.now().0.encrypt(plain)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let (current, previous) = self.now();
        current.decrypt(ticket).or_else(|| previous.decrypt(ticket))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3600;

    #[test]
    fn a_ticket_lives_through_the_next_period_but_not_the_one_after() {
        let t = KeyedTicketer::new(&[7; 32], Duration::from_secs(HOUR));
        let issued = 1_000 * HOUR + 59 * 60; // a minute before the period ends
        let ticket = t.seal_at(issued, b"session").unwrap();
        assert_eq!(t.open_at(issued, &ticket).as_deref(), Some(&b"session"[..]));
        assert!(t.open_at(issued + 60, &ticket).is_some(), "next period");
        assert!(
            t.open_at(issued + HOUR, &ticket).is_some(),
            "still next period"
        );
        assert_eq!(t.open_at(1_002 * HOUR, &ticket), None, "two periods on");
    }

    #[test]
    fn the_same_master_opens_the_other_processes_tickets_and_another_does_not() {
        let (a, b) = (
            KeyedTicketer::new(&[1; 32], Duration::from_secs(HOUR)),
            KeyedTicketer::new(&[1; 32], Duration::from_secs(HOUR)),
        );
        let other = KeyedTicketer::new(&[2; 32], Duration::from_secs(HOUR));
        let at = 500 * HOUR;
        let ticket = a.seal_at(at, b"plain").unwrap();
        assert_eq!(b.open_at(at + 10, &ticket).as_deref(), Some(&b"plain"[..]));
        assert_eq!(other.open_at(at, &ticket), None);
        // sealed with a fresh nonce each time
        assert_ne!(a.seal_at(at, b"plain"), a.seal_at(at, b"plain"));
    }

    #[test]
    fn the_wall_clock_path_round_trips() {
        let t = KeyedTicketer::new(&[3; 32], Duration::from_secs(HOUR));
        assert!(t.enabled());
        assert_eq!(t.lifetime(), HOUR as u32);
        let c = t.encrypt(b"x").unwrap();
        assert_eq!(t.decrypt(&c).as_deref(), Some(&b"x"[..]));
    }
}
