//! Engine internals for the deterministic simulator (`crates/quicshard-testkit`); not a stable
//! API, hidden from the docs. Nothing here is needed to run an engine.
//!
//! [`SimServer`] is an engine's N shards without threads, sockets or a clock: each shard's one
//! port is an in-memory `network` port (`shard/mem.rs`) at the shared server address, whose
//! other end the simulator holds. The simulator delivers datagrams to a shard
//! ([`SimServer::deliver`], after running the steering program like the kernel would), takes
//! what the shards sent ([`SimServer::take`]), and gives each shard turns at its virtual time
//! ([`SimServer::turn`], [`SimServer::next_deadline`]). Handoffs between shards go through the
//! shards' mailboxes, as on threads.
//!
//! Given a seed, everything the engine draws itself is drawn from it: each shard's endpoint RNG,
//! its CID generators, the stateless-reset key and the Retry token key. TLS randomness and the
//! clocks of tokens and tickets are the caller's (the rustls config and the
//! [`TimeSource`](quinn_proto::TimeSource) it passes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use quinn_proto::{EndpointConfig, TimeSource};

use crate::engine::{Builder, StartError};
use crate::handler::{Handler, Remote, ShardId};
use crate::shard::io::{Sock, LISTEN};
use crate::shard::mailbox::mailbox;
use crate::shard::{self, mem::MemPort, Poller, Shard, ShardParts, ShardScope, WAKER_TOKEN};
use crate::stats::{Counters, ShardStats};

/// One instruction of the steering program.
pub use libc::sock_filter;

/// An engine's shards driven by a simulator (see the module docs).
pub struct SimServer<H: Handler> {
    shards: Vec<Shard<H>>,
    /// The network's end of each shard's port.
    nets: Vec<MemPort>,
    stats: Vec<Arc<Counters>>,
    remote: Remote<H>,
    addr: SocketAddr,
    cid_len: usize,
    shard_key: crate::steer::ShardKey,
    /// Always empty: a simulated shard has no readiness events (every input counts as ready).
    no_events: mio::Events,
}

/// What a [`SimServer`] is built with besides its builder.
pub struct SimSetup {
    /// The shards' shared address.
    pub addr: SocketAddr,
    /// Number of shards.
    pub shards: usize,
    /// Seed of everything the engine draws itself.
    pub seed: u64,
    /// The clock of Retry and address-validation tokens (the simulator's virtual clock).
    pub time: Arc<dyn TimeSource>,
}

impl<H: Handler> SimServer<H> {
    /// Builds the shards of `builder` (its listen address, shard and thread counts are ignored).
    /// The builder should name its QUIC-LB config and shard key and bring its own TLS config,
    /// or those are drawn from the OS.
    pub fn new(mut builder: Builder<H>, setup: SimSetup) -> Result<Self, StartError> {
        let n = setup.shards;
        let (mut shared, _certificate) = builder.configure(n)?;
        {
            let Some(s) = Arc::get_mut(&mut shared) else {
                unreachable!("configure returns the only reference")
            };
            s.seed = Some(setup.seed);
            let key = seeded_bytes::<64>(setup.seed, 1);
            s.endpoint_config = EndpointConfig::new(Arc::new(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                &key,
            )));
            if let Some(cfg) = &mut s.server_config {
                let cfg = Arc::make_mut(cfg);
                let token = seeded_bytes::<32>(setup.seed, 2);
                cfg.token_key(Arc::new(
                    ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(&token),
                ));
                cfg.time_source(setup.time.clone());
            }
        }
        let mut txs = Vec::with_capacity(n);
        let mut rxs = Vec::with_capacity(n);
        let mut polls = Vec::with_capacity(n);
        for _ in 0..n {
            let poll = mio::Poll::new()?;
            let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER_TOKEN)?);
            let (tx, rx) = mailbox::<H>(waker);
            txs.push(tx);
            rxs.push(rx);
            polls.push(poll);
        }
        let peers: Arc<[_]> = txs.into();
        let mut shards = Vec::with_capacity(n);
        let mut nets = Vec::with_capacity(n);
        let mut stats = Vec::with_capacity(n);
        for (id, (rx, poll)) in rxs.into_iter().zip(polls).enumerate() {
            let counters = Arc::new(Counters::default());
            let (port, net) = shard::mem::network(setup.addr);
            // the second socket is never used: client connections share the one port
            let (unused, _) = shard::mem::network(setup.addr);
            let parts = ShardParts {
                id,
                poller: Poller::Own(poll),
                socks: [
                    Sock::memory(port, counters.clone()),
                    Sock::memory(unused, counters.clone()),
                ],
                client_sock: LISTEN,
                preferred: None,
                mailbox: rx,
                peers: peers.clone(),
                shared: shared.clone(),
                stats: counters.clone(),
            };
            let handler = {
                let _scope = ShardScope::enter(id, &counters);
                (builder.factory)(ShardId(id))
            };
            let mut shard = shard::build_unspawned(parts, handler)?;
            shard.use_virtual_clock();
            shards.push(shard);
            nets.push(net);
            stats.push(counters);
        }
        Ok(Self {
            shards,
            nets,
            stats,
            remote: Remote { mailboxes: peers },
            addr: setup.addr,
            cid_len: shared.cid.cid_len(),
            shard_key: *shared.cid.shard_key(),
            no_events: mio::Events::with_capacity(1),
        })
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// The shards' shared address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The length of the engine's CIDs.
    pub fn cid_len(&self) -> usize {
        self.cid_len
    }

    /// The key of the shard byte's mask (the steering program's constants).
    pub fn shard_key(&self) -> crate::steer::ShardKey {
        self.shard_key
    }

    /// The engine's steering program, as `Engine::start` attaches it.
    pub fn steering_program(&self) -> Vec<libc::sock_filter> {
        crate::steer::steering_program(self.cid_len, self.shards.len(), &self.shard_key)
    }

    /// Sends to the shards' mailboxes, as from another thread.
    pub fn remote(&self) -> Remote<H> {
        self.remote.clone()
    }

    /// Gives shard `i` a turn at `now`: every input counts as ready (its port, its mailbox).
    /// Returns `false` once it has shut down.
    pub fn turn(&mut self, i: usize, now: Instant) -> bool {
        let shard = &mut self.shards[i];
        let _scope = ShardScope::enter(i, &self.stats[i]);
        shard.prepare_help();
        shard.turn(&self.no_events, now)
    }

    /// When shard `i` next needs a turn without new input (its last turn's time if it left
    /// work behind or has input waiting). Mail from another shard is not counted: after a turn
    /// that handed datagrams off, the simulator turns the owner.
    pub fn next_deadline(&self, i: usize) -> Option<Instant> {
        self.shards[i].next_deadline()
    }

    /// Whether another shard or thread may have left mail for shard `i` (it needs a turn).
    pub fn has_mail(&self, i: usize) -> bool {
        self.remote.mailboxes[i].has_mail()
    }

    /// Delivers a datagram from `from` to shard `i`'s port; `false` if its queue was full
    /// (dropped).
    pub fn deliver(&self, i: usize, from: SocketAddr, data: &[u8]) -> bool {
        self.nets[i].deliver(from, data)
    }

    /// The oldest datagram shard `i` sent, copied into `out`, with its destination.
    pub fn take(&self, i: usize, out: &mut Vec<u8>) -> Option<SocketAddr> {
        self.nets[i].take(out).map(|(_, to)| to)
    }

    /// Every shard's counters.
    pub fn stats(&self) -> Vec<ShardStats> {
        self.stats.iter().map(|c| c.snapshot()).collect()
    }
}

/// `N` bytes from `seed` for one use (`what`): SplitMix64 words.
fn seeded_bytes<const N: usize>(seed: u64, what: u64) -> [u8; N] {
    let mut out = [0u8; N];
    let mut z = seed ^ what.rotate_left(32);
    for chunk in out.chunks_mut(8) {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = z;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    out
}
