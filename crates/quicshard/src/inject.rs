//! Injecting datagrams that did not arrive on the engine's sockets: [`Injector`].
//!
//! A direct-server-return backend receives client datagrams wrapped in an IP-in-UDP
//! encapsulation on a separate socket (`quicshard serve --decap`); once unwrapped, each must reach
//! the engine as if it had arrived on the listen socket from the client. [`Engine::injector`]
//! returns an [`Injector`] that does exactly that: it picks the owning shard with the kernel's
//! steering rule ([`steer::owner_shard`]; when the rule falls back, a hash of the client address,
//! which is deterministic per client as the kernel's 4-tuple hash is) and posts the datagram to
//! that shard's mailbox as the same `Msg::Datagram` handoff the shards use for datagrams the
//! kernel steered to the wrong shard. The shard feeds it to its endpoint unchanged; replies leave
//! from the listen socket, toward `remote`.
//!
//! Injected datagrams therefore also count as `handoffs_in` on the receiving shard; the
//! injector's own counters ([`InjectStats`]) tell how many were injected and dropped.
//!
//! # Implementation notes
//! The `impl Engine` block lives here (not in `engine.rs`) because it needs only the engine's
//! public accessors. Each injector copies datagrams into its own
//! [`Arena`](crate::shard::arena::Arena), as a shard's receive path does, which is
//! why [`Injector::inject`] takes `&mut self`; clones get their own arena and share the counters.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::engine::Engine;
use crate::handler::Handler;
use crate::shard::arena::Arena;
use crate::shard::mailbox::{Handoff, MailboxTx, Msg, SendError};
use crate::steer;

/// Why [`Injector::inject`] did not deliver a datagram; it is dropped (and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// The datagram is empty: it cannot be QUIC.
    #[error("empty datagram")]
    Empty,
    /// The owning shard's mailbox is full (the shard is overloaded); the peer retransmits.
    #[error("shard {0} mailbox is full")]
    Full(usize),
    /// The owning shard has exited (the engine is shutting down).
    #[error("shard {0} has stopped")]
    Closed(usize),
}

/// A snapshot of an injector's counters (shared by its clones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InjectStats {
    /// Datagrams posted to a shard.
    pub injected: u64,
    /// Of `injected`, those placed by the client-address hash because the steering rule fell
    /// back (not a parseable QUIC header).
    pub hashed: u64,
    /// Dropped: empty.
    pub dropped_empty: u64,
    /// Dropped: the owning shard's mailbox was full.
    pub dropped_queue_full: u64,
    /// Dropped: the owning shard had stopped.
    pub dropped_closed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    injected: AtomicU64,
    hashed: AtomicU64,
    dropped_empty: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_closed: AtomicU64,
}

/// Hands datagrams received elsewhere to the owning shard, as if they had arrived on the listen
/// socket. `Clone + Send`; see the module doc.
pub struct Injector<H> {
    mailboxes: Arc<[MailboxTx<H>]>,
    cid_len: usize,
    key: steer::ShardKey,
    counters: Arc<Counters>,
    arena: Arena,
    /// What it injects was forwarded by the other process of a handover.
    from_peer: bool,
}

impl<H> Clone for Injector<H> {
    fn clone(&self) -> Self {
        Self {
            mailboxes: self.mailboxes.clone(),
            cid_len: self.cid_len,
            key: self.key,
            counters: self.counters.clone(),
            arena: Arena::default(),
            from_peer: self.from_peer,
        }
    }
}

impl<H: Handler> Engine<H> {
    /// An [`Injector`] for this engine. Each call starts a new set of counters; clones of one
    /// injector share theirs.
    pub fn injector(&self) -> Injector<H> {
        Injector {
            mailboxes: self.remote().mailboxes,
            cid_len: self.cid_len(),
            key: self.shard_key(),
            counters: Arc::default(),
            arena: Arena::default(),
            from_peer: false,
        }
    }
}

impl<H> Injector<H> {
    /// This injector for datagrams the other process of a handover forwarded.
    pub(crate) fn for_peer(mut self) -> Self {
        self.from_peer = true;
        self
    }

    /// The shard that owns `payload` from `remote`: the steering rule, else a hash of `remote`.
    /// The bool tells whether the hash was used.
    pub fn owner(&self, payload: &[u8], remote: &SocketAddr) -> (usize, bool) {
        let n = self.mailboxes.len();
        match steer::owner_shard(payload, self.cid_len, n, &self.key) {
            Some(s) => (s, false),
            None => ((hash_addr(remote) % n.max(1) as u64) as usize, true),
        }
    }

    /// Posts `payload`, sent by `remote` to `local_ip` (the address the engine answers from;
    /// `None`: the listen socket's own), to its owning shard. Never blocks.
    pub fn inject(
        &mut self,
        payload: &[u8],
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
    ) -> Result<(), InjectError> {
        let c = &self.counters;
        if payload.is_empty() {
            c.dropped_empty.fetch_add(1, Relaxed);
            return Err(InjectError::Empty);
        }
        let (shard, hashed) = self.owner(payload, &remote);
        let msg = Msg::Datagram(Handoff {
            data: self.arena.copy(payload),
            remote,
            local_ip,
            ecn: None,
            from_peer: self.from_peer,
        });
        match self.mailboxes[shard].try_send(msg) {
            Ok(()) => {
                c.injected.fetch_add(1, Relaxed);
                if hashed {
                    c.hashed.fetch_add(1, Relaxed);
                }
                Ok(())
            }
            Err(SendError::Full(_)) => {
                c.dropped_queue_full.fetch_add(1, Relaxed);
                Err(InjectError::Full(shard))
            }
            Err(SendError::Closed(_)) => {
                c.dropped_closed.fetch_add(1, Relaxed);
                Err(InjectError::Closed(shard))
            }
        }
    }

    /// The counters of this injector and its clones.
    pub fn stats(&self) -> InjectStats {
        let c = &self.counters;
        InjectStats {
            injected: c.injected.load(Relaxed),
            hashed: c.hashed.load(Relaxed),
            dropped_empty: c.dropped_empty.load(Relaxed),
            dropped_queue_full: c.dropped_queue_full.load(Relaxed),
            dropped_closed: c.dropped_closed.load(Relaxed),
        }
    }
}

/// FNV-1a of the address (IP octets, then port): a deterministic shard per client address.
fn hash_addr(a: &SocketAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let ip = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    for b in ip.iter().chain(a.port().to_be_bytes().iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::Engine;

    struct Nop;
    impl Handler for Nop {}

    #[test]
    fn injected_datagrams_reach_the_owning_shard_and_are_counted() {
        // A given shard key is the one the engine (and its injector) steers with.
        let key = steer::ShardKey::from_bytes([9; 16]);
        let engine = Engine::builder(|_| Nop)
            .shards(2)
            .listen("127.0.0.1:0".parse().unwrap())
            .shard_key(key)
            .start()
            .unwrap();
        assert_eq!(engine.shard_key(), key);
        let mut inj = engine.injector();
        let client: SocketAddr = "192.0.2.7:5555".parse().unwrap();
        assert_eq!(inj.inject(&[], client, None), Err(InjectError::Empty));
        // A short header whose DCID is not one of ours: the shard drops it as unknown.
        let mut short = vec![0x40u8; 40];
        let last = engine.cid_len();
        // shard byte: shard 1
        short[last] = 1 ^ steer::shard_mask(&key, &short[1..last]);
        assert_eq!(inj.owner(&short, &client), (1, false));
        inj.inject(&short, client, None).unwrap();
        // Too short for the steering rule: placed by the client address, the same each time.
        let (s, hashed) = inj.owner(&[0xc0], &client);
        assert!(hashed && s < 2);
        assert_eq!(inj.clone().owner(&[0xc0], &client), (s, true));
        inj.clone().inject(&[0xc0], client, None).unwrap();
        let st = inj.stats();
        assert_eq!((st.injected, st.hashed, st.dropped_empty), (2, 1, 1));
        // Both reach a shard as handoffs; the short header is dropped as an unknown CID (the
        // one-byte long header is ignored by the endpoint without a counter).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let t = crate::ShardStats::sum(&engine.stats());
            if t.handoffs_in == 2 {
                assert_eq!(engine.stats()[1].handoffs_in_short, 1);
                assert_eq!(t.dropped_unknown_cid + t.dropped_malformed, 1);
                break;
            }
            assert!(Instant::now() < deadline, "handoffs_in {}", t.handoffs_in);
            std::thread::sleep(Duration::from_millis(5));
        }
        engine.shutdown(Duration::from_secs(1));
    }
}
