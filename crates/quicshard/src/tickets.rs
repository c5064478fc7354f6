//! Session tickets shared by every shard: the stateless ticketer with key rotation (1-RTT
//! resumption, the default) and the single-use [`TicketStore`] that makes 0-RTT safe across
//! shards ([`Builder::zero_rtt`](crate::Builder::zero_rtt)).
//!
//! rustls accepts early data only with stateful tickets, and takes a ticket out of the store when
//! it is used (`StoresServerSessions::take`). One store shared by all shards is therefore the
//! anti-replay store the engine needs: a 0-RTT ClientHello replayed to any shard finds its ticket
//! gone, and that handshake falls back to a full one (no early data, no resumption). The store
//! is bounded (oldest tickets are evicted first) and split into independently locked parts so
//! shards rarely contend.
//!
//! Without 0-RTT, tickets are stateless: encrypted under a key every shard shares, replaced on a
//! timer (`KeyedTicketer` in `tickets/keyed.rs`: the key of each period is derived from one master secret, so the
//! processes of a handover share it too; a ticket stays valid for one to two key lifetimes).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use ranked_lock::Mutex;
use rustls::server::StoresServerSessions;

mod aead;
mod keyed;

pub(crate) use keyed::KeyedTicketer;

/// Independently locked parts of the store. Why: a handshake takes one part's lock twice (put,
/// take); 16 parts keep two shards' handshakes from meeting on a lock most of the time.
const PARTS: usize = 16;

/// Default capacity of the store. Why: about 64k resumable clients at ~200 bytes each (≈13 MB);
/// beyond that the oldest tickets go and those clients do a full handshake.
pub const DEFAULT_TICKET_CAPACITY: usize = 65_536;

/// Default lifetime of a stateless ticket key.
pub const DEFAULT_TICKET_KEY_LIFETIME: Duration = Duration::from_secs(6 * 60 * 60);

/// Counters of the shared ticket store (see [`Engine::ticket_stats`](crate::Engine)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TicketStats {
    /// Tickets issued (stored).
    pub issued: u64,
    /// Tickets presented and found: resumptions (each at most once).
    pub resumed: u64,
    /// Tickets presented and not found: replayed, evicted or unknown. Each such handshake fell
    /// back to a full one without early data.
    pub refused: u64,
    /// Tickets evicted unused to stay within capacity.
    pub evicted: u64,
}

/// The single-use ticket store shared by all shards (see the module docs).
#[derive(Debug)]
pub struct TicketStore {
    parts: Box<[Mutex<Part>]>,
    /// Per part.
    capacity: usize,
    issued: AtomicU64,
    resumed: AtomicU64,
    refused: AtomicU64,
    evicted: AtomicU64,
}

#[derive(Debug, Default)]
struct Part {
    map: HashMap<Vec<u8>, Vec<u8>>,
    /// Insertion order, for eviction; may name tickets already taken (skipped).
    order: VecDeque<Vec<u8>>,
}

impl TicketStore {
    /// A store for about `capacity` tickets.
    pub fn new(capacity: usize) -> Self {
        Self {
            parts: (0..PARTS)
                .map(|_| Mutex::new(crate::ranks::TICKETS, Part::default()))
                .collect(),
            capacity: capacity.div_ceil(PARTS).max(1),
            issued: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    fn part(&self, key: &[u8]) -> &Mutex<Part> {
        // keys are random ticket identifiers: their first byte spreads them evenly
        let i = key.first().map_or(0, |&b| b as usize % PARTS);
        &self.parts[i]
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TicketStats {
        TicketStats {
            issued: self.issued.load(Relaxed),
            resumed: self.resumed.load(Relaxed),
            refused: self.refused.load(Relaxed),
            evicted: self.evicted.load(Relaxed),
        }
    }
}

impl StoresServerSessions for TicketStore {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let mut p = self.part(&key).lock();
        while p.map.len() >= self.capacity {
            let Some(old) = p.order.pop_front() else {
                break;
            };
            if p.map.remove(&old).is_some() {
                self.evicted.fetch_add(1, Relaxed);
            }
        }
        // `order` holds taken keys until they reach the front: bound it too
        if p.order.len() >= 2 * self.capacity {
            let Part { map, order } = &mut *p;
            order.retain(|k| map.contains_key(k));
        }
        p.order.push_back(key.clone());
        p.map.insert(key, value);
        self.issued.fetch_add(1, Relaxed);
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        // TLS 1.2 session-ID resumption only (QUIC is TLS 1.3): single use as well
        self.take(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let v = self.part(key).lock().map.remove(key);
        if v.is_some() {
            self.resumed.fetch_add(1, Relaxed);
            crate::stats::count_resumption();
        } else {
            self.refused.fetch_add(1, Relaxed);
            crate::stats::count_ticket_refused();
        }
        v
    }

    fn can_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_taken_once() {
        let s = TicketStore::new(64);
        assert!(s.put(vec![1; 32], b"session".to_vec()));
        assert_eq!(s.take(&[1; 32]).as_deref(), Some(&b"session"[..]));
        assert_eq!(s.take(&[1; 32]), None, "replay");
        assert_eq!(s.get(&[1; 32]), None);
        let st = s.stats();
        assert_eq!((st.issued, st.resumed, st.refused), (1, 1, 2));
    }

    #[test]
    fn capacity_evicts_the_oldest_and_stays_bounded() {
        let s = TicketStore::new(PARTS * 4); // 4 per part
                                             // every key lands in part 0: first byte 0
        for i in 0..100u8 {
            let mut k = vec![0u8; 32];
            k[1] = i;
            s.put(k, vec![i]);
        }
        let st = s.stats();
        assert_eq!(st.issued, 100);
        assert_eq!(st.evicted, 96);
        let p = s.parts[0].lock();
        assert_eq!(p.map.len(), 4);
        assert!(p.order.len() <= 8);
        drop(p);
        // the newest four survive
        for i in 96..100u8 {
            let mut k = vec![0u8; 32];
            k[1] = i;
            assert_eq!(s.take(&k), Some(vec![i]));
        }
    }

    #[test]
    fn taken_keys_do_not_grow_the_order_queue() {
        let s = TicketStore::new(PARTS * 4);
        for i in 0..1000u16 {
            let mut k = vec![0u8; 32];
            k[1..3].copy_from_slice(&i.to_be_bytes());
            s.put(k.clone(), vec![1]);
            assert!(s.take(&k).is_some());
        }
        assert!(s.parts[0].lock().order.len() <= 8);
        assert_eq!(s.stats().evicted, 0);
    }
}
