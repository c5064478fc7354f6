//! Sans-IO routing: which backend gets a datagram.
//!
//! This module owns [`Router`]: the QUIC-LB decoder (several configs at once, one per config
//! rotation codepoint), the backend set with health, the three fallback tables with per-flow idle
//! timers, and the routing counters. It never reads the clock (`now` comes from the caller) and
//! its hashing is seeded by the caller.
//!
//! # Routing order (draft-ietf-quic-load-balancers-21 §3 and its fallback)
//! 1. A routable DCID (config bits select an installed config) goes to the backend with that
//!    server ID, even if that backend is marked down: its flows keep going. An unknown server ID
//!    falls through. Codepoint 0b111 is never routable.
//! 2. Long headers: the 4-tuple + SCID table.
//! 3. The DCID table.
//! 4. The 4-tuple table, except for long headers with a non-empty SCID (see below).
//! 5. Rendezvous (highest random weight) hashing over live (not down) backends of the 4-tuple,
//!    plus the SCID for long headers that have one.
//!
//! A client that gives its connections non-empty SCIDs may run many of them over one UDP port
//! (quinn and quicshard clients do): the 4-tuple then does not name a connection, the 4-tuple and
//! SCID do. A long header whose (4-tuple, SCID) and DCID are unknown is a new connection, so it
//! is placed by the hash of both instead of following the 4-tuple's earlier connection, which
//! would put every connection from one client port on one backend. The placement is still
//! deterministic for the whole first flight (a client keeps its SCID, Retry included).
//!
//! Every fallback decision (2–5) is recorded in all tables that apply to the packet and its idle
//! timer restarted. Entries whose backend was removed are discarded when found. Expired entries
//! are ignored when found and removed by [`Router::poll_expired`].
//!
//! # Call order
//! `route*` for every datagram; `poll_expired(now)` once `now >= poll_timeout()`;
//! `apply_config` on reload.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quic_lb::{Codec, Decoder, ServerId, Unroutable, UNROUTABLE_CONFIG_ID};

use crate::config::LbConfig;
use crate::parse::{self, Header, Malformed};

/// Most entries per fallback table: bounds memory under a flood of spoofed 4-tuples. Past it,
/// new flows are still routed by hash but not recorded (counted in `table_full`).
pub const MAX_TABLE_ENTRIES: usize = 1 << 20;
/// Shortest interval between two sweeps of the tables.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// FNV-1a 64 offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64 prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over the seed first (so the hash does not stick at zero, as the SCION router design
/// notes), then each part.
pub fn fnv1a(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h = FNV_OFFSET;
    for b in seed
        .to_le_bytes()
        .iter()
        .chain(parts.iter().flat_map(|p| p.iter()))
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// splitmix64's finaliser: spreads FNV's weak low bits before comparing scores.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A socket address as bytes (IP octets then port), for hashing.
pub fn addr_bytes(addr: &SocketAddr, out: &mut [u8; 18]) -> usize {
    let n = match addr.ip() {
        std::net::IpAddr::V4(ip) => {
            out[..4].copy_from_slice(&ip.octets());
            4
        }
        std::net::IpAddr::V6(ip) => {
            out[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    out[n..n + 2].copy_from_slice(&addr.port().to_be_bytes());
    n + 2
}

/// A UDP flow as the LB sees it: the client's address and the LB's address it sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourTuple {
    /// The client's address.
    pub client: SocketAddr,
    /// The LB address the datagram arrived on.
    pub local: SocketAddr,
}

impl FourTuple {
    /// Seeded FNV-1a of the 4-tuple: the same flow always gives the same value.
    pub fn hash(&self, seed: u64) -> u64 {
        let (mut a, mut b) = ([0; 18], [0; 18]);
        let (na, nb) = (
            addr_bytes(&self.client, &mut a),
            addr_bytes(&self.local, &mut b),
        );
        fnv1a(seed, &[&a[..na], &b[..nb]])
    }
}

/// A connection ID of at most 20 bytes, owned, usable as a map key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CidKey {
    len: u8,
    bytes: [u8; parse::MAX_V1_CID_LEN],
}

impl CidKey {
    /// `None` for an empty CID or one longer than 20 bytes (never recorded).
    fn new(cid: &[u8]) -> Option<Self> {
        if cid.is_empty() || cid.len() > parse::MAX_V1_CID_LEN {
            return None;
        }
        let mut bytes = [0; parse::MAX_V1_CID_LEN];
        bytes[..cid.len()].copy_from_slice(cid);
        Some(Self {
            len: cid.len() as u8,
            bytes,
        })
    }
}

/// A fallback table entry.
#[derive(Debug, Clone, Copy)]
struct Flow {
    server_id: ServerId,
    expires: Instant,
}

/// One backend as the router knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Backend {
    server_id: ServerId,
    address: SocketAddr,
    down: bool,
}

/// Which rule chose the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteBy {
    /// The DCID's QUIC-LB server ID.
    Cid,
    /// The 4-tuple + SCID table (long headers).
    TupleScid,
    /// The DCID table.
    Dcid,
    /// The 4-tuple table.
    Tuple,
    /// Consistent hashing of the 4-tuple (a new flow).
    Hash,
}

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The backend's server ID.
    pub server_id: ServerId,
    /// The backend's address.
    pub address: SocketAddr,
    /// The rule that chose it.
    pub by: RouteBy,
}

/// No backend can take the datagram: every backend is down or removed and the flow has no
/// table entry. Remedy: bring a backend up; the datagram is dropped and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no live backend for a new flow")]
pub struct NoBackend;

/// Routing counters. Monotonic except where noted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RouteStats {
    /// Routed by the DCID's server ID.
    pub routed_by_cid: u64,
    /// Routable DCIDs whose server ID no backend has (fell through to the fallback).
    pub cid_unknown_server: u64,
    /// DCIDs with codepoint 0b111.
    pub cid_reserved: u64,
    /// DCIDs whose codepoint has no config, or too short for theirs.
    pub cid_unknown_config: u64,
    /// Hits in any fallback table (the sum of the three below).
    pub fallback_table_hits: u64,
    /// Hits in the 4-tuple + SCID table.
    pub fallback_tuple_scid_hits: u64,
    /// Hits in the DCID table.
    pub fallback_dcid_hits: u64,
    /// Hits in the 4-tuple table.
    pub fallback_tuple_hits: u64,
    /// New flows placed by consistent hashing.
    pub fallback_hash: u64,
    /// Table entries found pointing at a removed backend (discarded).
    pub stale_entries: u64,
    /// Table entries removed by idle expiry.
    pub expired_entries: u64,
    /// Flows not recorded because a table was full.
    pub table_full: u64,
    /// Datagrams dropped: no live backend for a new flow.
    pub dropped_no_backend: u64,
}

/// Current sizes of the fallback tables (gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableSizes {
    /// Entries in the 4-tuple + SCID table.
    pub tuple_scid: usize,
    /// Entries in the DCID table.
    pub dcid: usize,
    /// Entries in the 4-tuple table.
    pub tuple: usize,
}

/// The routing state of one load balancer. See the module doc for the order and call order.
pub struct Router {
    decoder: Decoder,
    cid_len: [Option<usize>; UNROUTABLE_CONFIG_ID as usize],
    unroutable_cid_len: usize,
    backends: Vec<Backend>,
    by_sid: HashMap<ServerId, usize>,
    seed: u64,
    flow_idle: Duration,
    tuple_scid: HashMap<(FourTuple, CidKey), Flow>,
    dcid: HashMap<CidKey, Flow>,
    tuple: HashMap<FourTuple, Flow>,
    next_sweep: Option<Instant>,
    stats: RouteStats,
}

impl Router {
    /// A router for `config`; `seed` keys the consistent hash (keep it across reloads).
    pub fn new(config: &LbConfig, seed: u64) -> Self {
        let mut r = Self {
            decoder: Decoder::new(),
            cid_len: [None; UNROUTABLE_CONFIG_ID as usize],
            unroutable_cid_len: config.unroutable_cid_len,
            backends: Vec::new(),
            by_sid: HashMap::new(),
            seed,
            flow_idle: config.timers.flow_idle,
            tuple_scid: HashMap::new(),
            dcid: HashMap::new(),
            tuple: HashMap::new(),
            next_sweep: None,
            stats: RouteStats::default(),
        };
        r.apply_config(config);
        r
    }

    /// Installs a new configuration. Codepoints and backends are replaced as a whole; flows
    /// whose codepoint and backend remain keep their routes, table entries stay valid while
    /// their backend exists, and the hash keeps its seed so placements of surviving backends
    /// do not move.
    pub fn apply_config(&mut self, config: &LbConfig) {
        self.decoder = Decoder::new();
        self.cid_len = [None; UNROUTABLE_CONFIG_ID as usize];
        for q in &config.quic_lb {
            self.cid_len[q.config.config_id() as usize] = Some(q.config.cid_len());
            self.decoder.insert(Codec::new(q.config));
        }
        self.unroutable_cid_len = config.unroutable_cid_len;
        self.flow_idle = config.timers.flow_idle;
        self.backends = config
            .backends
            .iter()
            .map(|b| Backend {
                server_id: b.server_id,
                address: b.address,
                down: b.down,
            })
            .collect();
        self.by_sid = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.server_id, i))
            .collect();
    }

    /// Marks a backend down (no new flows) or up. Returns false if no backend has `server_id`.
    pub fn set_down(&mut self, server_id: &ServerId, down: bool) -> bool {
        match self.by_sid.get(server_id) {
            Some(&i) => {
                self.backends[i].down = down;
                true
            }
            None => false,
        }
    }

    /// The DCID length of a short header whose DCID starts with `first`: the CID length of the
    /// config its rotation bits select, else `unroutable_cid_len`.
    pub fn short_dcid_len(&self, first: u8) -> usize {
        let bits = quic_lb::config_bits(first);
        self.cid_len
            .get(bits as usize)
            .copied()
            .flatten()
            .unwrap_or(self.unroutable_cid_len)
    }

    /// Parses a datagram's header with this router's short-header CID lengths.
    pub fn parse<'a>(&self, datagram: &'a [u8]) -> Result<Header<'a>, Malformed> {
        parse::parse(datagram, |first| self.short_dcid_len(first))
    }

    /// Routes a fast-path packet (see the module doc for the order).
    pub fn route(
        &mut self,
        now: Instant,
        tuple: FourTuple,
        header: &Header<'_>,
    ) -> Result<Decision, NoBackend> {
        let dcid = header.dcid();
        match self.decoder.decode_server_id(dcid) {
            Ok(sid) => match self.by_sid.get(&sid) {
                Some(&i) => {
                    self.stats.routed_by_cid += 1;
                    return Ok(self.decision(i, RouteBy::Cid));
                }
                None => self.stats.cid_unknown_server += 1,
            },
            Err(Unroutable::Reserved) => self.stats.cid_reserved += 1,
            Err(_) => self.stats.cid_unknown_config += 1,
        }
        let scid = match *header {
            Header::Long { scid, .. } => CidKey::new(scid),
            Header::Short { .. } => None,
        };
        self.fallback(now, tuple, scid, CidKey::new(dcid))
    }

    /// Routes by address only (the slow path: unknown versions): the 4-tuple table, then the
    /// hash.
    pub fn route_by_tuple(
        &mut self,
        now: Instant,
        tuple: FourTuple,
    ) -> Result<Decision, NoBackend> {
        self.fallback(now, tuple, None, None)
    }

    fn fallback(
        &mut self,
        now: Instant,
        tuple: FourTuple,
        scid: Option<CidKey>,
        dcid: Option<CidKey>,
    ) -> Result<Decision, NoBackend> {
        let found = self.lookup(now, tuple, scid, dcid);
        let (i, by) = match found {
            Some(hit) => hit,
            None => (
                self.hash(&tuple, scid.as_ref()).ok_or_else(|| {
                    self.stats.dropped_no_backend += 1;
                    NoBackend
                })?,
                RouteBy::Hash,
            ),
        };
        match by {
            RouteBy::TupleScid => self.stats.fallback_tuple_scid_hits += 1,
            RouteBy::Dcid => self.stats.fallback_dcid_hits += 1,
            RouteBy::Tuple => self.stats.fallback_tuple_hits += 1,
            RouteBy::Hash => self.stats.fallback_hash += 1,
            RouteBy::Cid => {}
        }
        if by != RouteBy::Hash {
            self.stats.fallback_table_hits += 1;
        }
        self.record(now, tuple, scid, dcid, self.backends[i].server_id);
        Ok(self.decision(i, by))
    }

    /// Looks the flow up in the tables in order; expired and stale entries are misses. With an
    /// SCID (a long header) the 4-tuple table is not consulted: see the module doc.
    fn lookup(
        &mut self,
        now: Instant,
        tuple: FourTuple,
        scid: Option<CidKey>,
        dcid: Option<CidKey>,
    ) -> Option<(usize, RouteBy)> {
        let by_sid = &self.by_sid;
        let stale = &mut self.stats.stale_entries;
        let mut live = |f: Option<&Flow>| -> Option<usize> {
            let f = f.filter(|f| f.expires > now)?;
            let i = by_sid.get(&f.server_id).copied();
            if i.is_none() {
                *stale += 1;
            }
            i
        };
        if let Some(s) = scid {
            if let Some(i) = live(self.tuple_scid.get(&(tuple, s))) {
                return Some((i, RouteBy::TupleScid));
            }
        }
        if let Some(d) = dcid {
            if let Some(i) = live(self.dcid.get(&d)) {
                return Some((i, RouteBy::Dcid));
            }
        }
        if scid.is_some() {
            return None;
        }
        live(self.tuple.get(&tuple)).map(|i| (i, RouteBy::Tuple))
    }

    /// Records (or refreshes) the flow in every table that applies.
    fn record(
        &mut self,
        now: Instant,
        tuple: FourTuple,
        scid: Option<CidKey>,
        dcid: Option<CidKey>,
        server_id: ServerId,
    ) {
        let flow = Flow {
            server_id,
            expires: now + self.flow_idle,
        };
        let full = &mut self.stats.table_full;
        fn put<K: std::hash::Hash + Eq>(m: &mut HashMap<K, Flow>, k: K, f: Flow, full: &mut u64) {
            if m.len() < MAX_TABLE_ENTRIES || m.contains_key(&k) {
                m.insert(k, f);
            } else {
                *full += 1;
            }
        }
        if let Some(s) = scid {
            put(&mut self.tuple_scid, (tuple, s), flow, full);
        }
        if let Some(d) = dcid {
            put(&mut self.dcid, d, flow, full);
        }
        put(&mut self.tuple, tuple, flow, full);
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + self.sweep_interval());
        }
    }

    /// Rendezvous hashing over live backends: the backend with the highest
    /// `mix(hash(tuple[, scid]) ^ hash(server_id))` wins, so removing a backend moves only its
    /// flows.
    fn hash(&self, tuple: &FourTuple, scid: Option<&CidKey>) -> Option<usize> {
        let mut h = tuple.hash(self.seed);
        if let Some(s) = scid {
            h = mix(h ^ fnv1a(self.seed, &[&s.bytes[..usize::from(s.len)]]));
        }
        self.backends
            .iter()
            .enumerate()
            .filter(|(_, b)| !b.down)
            .max_by_key(|(_, b)| {
                let s = fnv1a(self.seed, &[b.server_id.as_bytes()]);
                (mix(h ^ s), b.server_id)
            })
            .map(|(i, _)| i)
    }

    fn decision(&self, i: usize, by: RouteBy) -> Decision {
        let b = &self.backends[i];
        Decision {
            server_id: b.server_id,
            address: b.address,
            by,
        }
    }

    fn sweep_interval(&self) -> Duration {
        (self.flow_idle / 4).max(MIN_SWEEP_INTERVAL)
    }

    /// When [`Router::poll_expired`] should next be called, if any flow is recorded.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Removes table entries idle until `now` or pointing at removed backends; returns how many.
    pub fn poll_expired(&mut self, now: Instant) -> usize {
        let before = self.table_sizes();
        let by_sid = &self.by_sid;
        let keep = |f: &mut Flow| f.expires > now && by_sid.contains_key(&f.server_id);
        self.tuple_scid.retain(|_, f| keep(f));
        self.dcid.retain(|_, f| keep(f));
        self.tuple.retain(|_, f| keep(f));
        let after = self.table_sizes();
        let removed = before.tuple_scid + before.dcid + before.tuple
            - (after.tuple_scid + after.dcid + after.tuple);
        self.stats.expired_entries += removed as u64;
        self.next_sweep = (after != TableSizes::default()).then(|| now + self.sweep_interval());
        removed
    }

    /// The counters.
    pub fn stats(&self) -> RouteStats {
        self.stats
    }

    /// The fallback tables' sizes.
    pub fn table_sizes(&self) -> TableSizes {
        TableSizes {
            tuple_scid: self.tuple_scid.len(),
            dcid: self.dcid.len(),
            tuple: self.tuple.len(),
        }
    }
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
