//! The simulation: an engine's N shards ([`quicshard::testing::SimServer`]) and M clients on
//! one in-memory network, driven from one thread on a [`Clock`].
//!
//! # The network
//! Each client has its own path to the server: one [`Impairment`] (up: client → server, down:
//! server → client) whose datagrams carry their source address. A datagram the path releases
//! is *delivered*: up, to the shard the kernel would pick — the engine's steering program run
//! in the cBPF interpreter ([`Steering::Bpf`]; a verdict ≥ N falls back to the hash), or a hash
//! of the source address as without BPF ([`Steering::Hash`]) — down, to the client whose
//! address it was sent to (a datagram to an address no client has any more is dropped, as by
//! a NAT whose mapping changed). A rebinding ([`SimConfig::rebind_at`]) moves every client to
//! a new port at that virtual time.
//!
//! # The loop
//! At each virtual instant: every shard that has input, mail or a due deadline takes a turn;
//! what the shards sent enters the paths; every client runs (timers, events, sends); the paths
//! release what is due, which is delivered. This repeats at the same instant until nothing is
//! due, then the clock jumps to the earliest deadline of any shard, client or path. Everything
//! happens in index order, so a seed gives one sequence of datagrams: the [`Report::digest`]
//! is a SHA-256 over every delivered datagram (direction, receiver, octets) in order.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quicshard::stats::ShardStats;
use quicshard::testing::{run_bpf, SimServer, SimSetup};
use quicshard::Engine;
use quicshard_impair::{Config, Counts, Decision, Dir, Impairment, Params};

use crate::app::TransferServer;
use crate::client::{Client, Plan};
use crate::clock::Clock;

/// The shards' shared address.
pub const SERVER_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)), 443);

/// Where a replayed first flight comes from ([`SimConfig::replay_zero_rtt`]).
pub const REPLAY_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 66)), 666);

/// How long after the original a first flight is replayed. Why: after the original connection
/// has closed and drained, so the replay cannot join it and must present its ticket again.
pub const REPLAY_DELAY: Duration = Duration::from_secs(3);

/// Steps at one virtual instant before the simulation gives up. Why: a shard or client that
/// keeps asking for a turn at the same instant is a livelock, which must fail, not hang.
const STEPS_PER_INSTANT: usize = 100_000;

/// How datagrams to the shared port find their shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steering {
    /// The engine's steering program (what `Engine::start` attaches), in the cBPF interpreter.
    Bpf,
    /// A hash of the source address, as the kernel's `SO_REUSEPORT` without a program: most
    /// datagrams land on a foreign shard and are handed off.
    Hash,
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of everything: engine, TLS, clients, paths.
    pub seed: u64,
    /// Number of shards.
    pub shards: usize,
    /// Number of clients.
    pub clients: usize,
    /// Connections each client makes one after the other (the later ones resume).
    pub connections_per_client: u32,
    /// Octets each request uploads.
    pub upload: u64,
    /// Octets each response carries.
    pub download: u64,
    /// The impairments of every path, both directions.
    pub impair: Params,
    /// How datagrams find their shard.
    pub steering: Steering,
    /// The server sends a Retry to every new connection.
    pub retry: bool,
    /// Every client moves to a new port at this virtual time.
    pub rebind_at: Option<Duration>,
    /// The first flight of every resumed connection (its 0-RTT) is delivered a second time,
    /// from [`REPLAY_ADDR`], [`REPLAY_DELAY`] later.
    pub replay_zero_rtt: bool,
    /// Virtual time after which the simulation stops.
    pub time_limit: Duration,
    /// Print on stderr every datagram a client sends (and its fate on the path), every one
    /// delivered (virtual time, source, receiver, length, first octet) and every one sent to
    /// an address no client has any more, to read what a seed did.
    pub trace: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            shards: 4,
            clients: 10,
            connections_per_client: 1,
            upload: 1000,
            download: 20_000,
            impair: Params::default(),
            steering: Steering::Bpf,
            retry: false,
            rebind_at: None,
            replay_zero_rtt: false,
            time_limit: Duration::from_secs(600),
            trace: false,
        }
    }
}

/// What a simulation did.
#[derive(Debug, Clone)]
pub struct Report {
    /// SHA-256 of every delivered datagram, in order (see the module docs).
    pub digest: [u8; 32],
    /// Datagrams delivered.
    pub delivered: u64,
    /// Virtual time at the end.
    pub virtual_time: Duration,
    /// Transfers completed and checked.
    pub completed: u64,
    /// Transfers planned.
    pub planned: u64,
    /// Connections whose 0-RTT data the server accepted (as the clients saw it).
    pub zero_rtt_accepted: u64,
    /// The first failures, one per client that failed (at most 10).
    pub failures: Vec<String>,
    /// Every shard's counters at the end.
    pub shards: Vec<ShardStats>,
    /// Datagrams dropped because nobody had their destination address any more.
    pub unroutable: u64,
    /// What the paths did, summed over the clients: up (client → server) and down.
    pub paths: [Counts; 2],
}

impl Report {
    /// The digest in hex.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }
}

/// A failure to set the simulation up (a run itself reports failures in [`Report`]).
#[derive(Debug)]
pub struct SetupError(pub String);

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "simulation set-up failed: {}", self.0)
    }
}

impl std::error::Error for SetupError {}

/// A simulation in progress (see the module docs).
pub struct Simulation {
    cfg: SimConfig,
    clock: Clock,
    server: SimServer<TransferServer>,
    program: Vec<quicshard::testing::sock_filter>,
    clients: Vec<Client>,
    paths: Vec<Impairment<SocketAddr>>,
    by_addr: HashMap<SocketAddr, usize>,
    digest: ring::digest::Context,
    delivered: u64,
    unroutable: u64,
    rebound: bool,
    /// First flights to replay: when, and the datagram (in time order).
    replays: std::collections::VecDeque<(Instant, Vec<u8>)>,
    buf: Vec<u8>,
}

impl Simulation {
    /// Builds the engine's shards and the clients for `cfg`.
    pub fn new(cfg: SimConfig) -> Result<Self, SetupError> {
        let clock = Clock::new();
        let seed = cfg.seed;
        let err = |e: &dyn std::fmt::Display| SetupError(e.to_string());
        let server_tls = crate::tls::server_config(seed, &clock).map_err(|e| err(&e))?;
        let client_tls =
            crate::tls::client_config(seed ^ 0xc11e, seed, &clock).map_err(|e| err(&e))?;
        let key: [u8; 16] = crate::tls::SeededRandom::new(seed ^ 0x4c42).bytes();
        let lb = quic_lb_config(key).map_err(|e| SetupError(e.to_string()))?;
        let shard_key = quicshard::steer::ShardKey::from_bytes(
            crate::tls::SeededRandom::new(seed ^ 0x5348).bytes(),
        );
        let builder = Engine::builder(|_| TransferServer::default())
            .server_tls(server_tls)
            .quic_lb(lb, &[0x51, 0x53])
            .shard_key(shard_key)
            .retry(cfg.retry)
            // single-use tickets in a store all shards share, which accepts 0-RTT: the only
            // ticket mode whose tickets derive from the seed (the stateless ticketer's keys
            // come from the OS)
            .zero_rtt(true);
        let server = SimServer::new(
            builder,
            SimSetup {
                addr: SERVER_ADDR,
                shards: cfg.shards,
                seed,
                time: Arc::new(clock.clone()),
            },
        )
        .map_err(|e| err(&e))?;
        let program = server.steering_program();
        let client_tls = Arc::new(client_tls);
        let plan = Plan {
            upload: cfg.upload,
            download: cfg.download,
            connections: cfg.connections_per_client,
        };
        let mut clients = Vec::with_capacity(cfg.clients);
        let mut paths = Vec::with_capacity(cfg.clients);
        let mut by_addr = HashMap::with_capacity(cfg.clients);
        for k in 0..cfg.clients {
            let addr = client_addr(k, 0);
            let cseed = mix(seed ^ mix(k as u64 + 1));
            clients.push(Client::new(addr, SERVER_ADDR, cseed, &client_tls, plan));
            paths.push(Impairment::new(
                Config {
                    up: cfg.impair.clone(),
                    down: cfg.impair.clone(),
                    seed: cseed ^ 0x7061_7468,
                    ..Config::default()
                },
                clock.now(),
            ));
            by_addr.insert(addr, k);
        }
        Ok(Self {
            cfg,
            clock,
            server,
            program,
            clients,
            paths,
            by_addr,
            digest: ring::digest::Context::new(&ring::digest::SHA256),
            delivered: 0,
            unroutable: 0,
            rebound: false,
            replays: std::collections::VecDeque::new(),
            buf: Vec::new(),
        })
    }

    /// Runs until every client finished or the time limit, and reports.
    pub fn run(mut self) -> Report {
        let start = self.clock.now();
        let limit = start + self.cfg.time_limit;
        // every shard's first turn at virtual time 0 (a built shard's clock is the wall's)
        for i in 0..self.server.shards() {
            self.server.turn(i, start);
        }
        let mut stuck = None;
        loop {
            let now = self.clock.now();
            let mut steps = 0;
            loop {
                self.step(now);
                steps += 1;
                match self.next_event(now) {
                    Some(t) if t <= now && steps < STEPS_PER_INSTANT => continue,
                    Some(t) if t <= now => {
                        stuck = Some(format!("livelock at {:?}", now - start));
                        break;
                    }
                    _ => break,
                }
            }
            let finished = self.clients.iter().all(Client::is_finished) && self.replays.is_empty();
            if stuck.is_some() || finished {
                break;
            }
            match self.next_event(now) {
                Some(t) if t <= limit => self.clock.advance_to(t),
                Some(_) => {
                    stuck = Some("time limit reached".into());
                    break;
                }
                None => {
                    stuck = Some("nothing left to do, transfers incomplete".into());
                    break;
                }
            }
        }
        self.report(stuck)
    }

    /// One pass at `now` (see the module docs).
    fn step(&mut self, now: Instant) {
        if let Some(at) = self.cfg.rebind_at {
            if !self.rebound && now >= self.clock_start() + at {
                self.rebind();
            }
        }
        for i in 0..self.server.shards() {
            let due =
                self.server.has_mail(i) || self.server.next_deadline(i).is_some_and(|d| d <= now);
            if due {
                self.server.turn(i, now);
            }
            while let Some(to) = self.server.take(i, &mut self.buf) {
                match self.by_addr.get(&to) {
                    Some(&k) => {
                        let data = std::mem::take(&mut self.buf);
                        self.paths[k].handle_tagged(now, Dir::Down, data, SERVER_ADDR);
                    }
                    None => {
                        if self.cfg.trace {
                            let t = self.clock.elapsed().as_secs_f64();
                            eprintln!("{t:>12.6}s shard {i} sends to {to}: unroutable");
                        }
                        self.unroutable += 1;
                    }
                }
            }
        }
        let replay = self.cfg.replay_zero_rtt;
        for (k, c) in self.clients.iter_mut().enumerate() {
            let (from, path) = (c.addr, &mut self.paths[k]);
            let mut sent = Vec::new();
            let trace = self.cfg.trace.then(|| self.clock.elapsed());
            c.poll(now, &mut |d: &[u8]| {
                let fate = path.handle_tagged(now, Dir::Up, d.to_vec(), from);
                if let Some(t) = trace {
                    let fate = match fate {
                        Decision::Scheduled { .. } => "on its way",
                        Decision::Loss => "lost",
                        Decision::Queue => "dropped: queue full",
                        Decision::Blackout => "dropped: blackout",
                    };
                    let t = t.as_secs_f64();
                    eprintln!("{t:>12.6}s client {k} sends {} octets: {fate}", d.len());
                }
                if replay {
                    sent.push(d.to_vec());
                }
            });
            // still nothing heard since the connection began: what it sent is its first flight
            if c.in_resumed_first_flight() {
                self.replays
                    .extend(sent.into_iter().map(|d| (now + REPLAY_DELAY, d)));
            }
        }
        while self.replays.front().is_some_and(|r| r.0 <= now) {
            let Some((_, d)) = self.replays.pop_front() else {
                break;
            };
            self.deliver_up(REPLAY_ADDR, &d);
        }
        for k in 0..self.paths.len() {
            while let Some(tx) = self.paths[k].poll_transmit(now) {
                match tx.dir {
                    Dir::Up => self.deliver_up(tx.tag, &tx.data),
                    Dir::Down => {
                        self.record(1, k, tx.tag, &tx.data);
                        self.clients[k].handle(now, tx.tag, &tx.data);
                    }
                }
            }
        }
    }

    fn clock_start(&self) -> Instant {
        self.clock.now() - self.clock.elapsed()
    }

    /// Every client moves to the next port; its old address is gone.
    fn rebind(&mut self) {
        self.rebound = true;
        for (k, c) in self.clients.iter_mut().enumerate() {
            self.by_addr.remove(&c.addr);
            c.addr = client_addr(k, 1);
            self.by_addr.insert(c.addr, k);
        }
    }

    /// Delivers a client → server datagram to the shard the kernel would pick.
    fn deliver_up(&mut self, from: SocketAddr, data: &[u8]) {
        let n = self.server.shards();
        let shard = match self.cfg.steering {
            Steering::Bpf => match run_bpf(&self.program, data) {
                Ok(v) if (v as usize) < n => v as usize,
                _ => hash_addr(from) % n,
            },
            Steering::Hash => hash_addr(from) % n,
        };
        self.record(0, shard, from, data);
        // a full queue drops, like a full socket buffer; the engine counts nothing then
        let _ = self.server.deliver(shard, from, data);
    }

    /// Adds a delivered datagram to the digest (`dir` 0: to shard `to`, 1: to client `to`).
    fn record(&mut self, dir: u8, to: usize, from: SocketAddr, data: &[u8]) {
        if self.cfg.trace {
            let what = ["shard", "client"][usize::from(dir)];
            let t = self.clock.elapsed().as_secs_f64();
            let first = data.first().copied().unwrap_or(0);
            eprintln!(
                "{t:>12.6}s {from} -> {what} {to}: {} octets, first {first:#04x}",
                data.len()
            );
        }
        self.delivered += 1;
        self.digest.update(&[dir]);
        self.digest.update(&(to as u32).to_be_bytes());
        self.digest.update(&(data.len() as u32).to_be_bytes());
        self.digest.update(data);
    }

    /// The earliest time anything needs to run.
    fn next_event(&mut self, now: Instant) -> Option<Instant> {
        let shards = (0..self.server.shards()).filter_map(|i| {
            if self.server.has_mail(i) {
                Some(now)
            } else {
                self.server.next_deadline(i)
            }
        });
        let clients: Vec<Instant> = self
            .clients
            .iter_mut()
            .filter_map(|c| c.poll_timeout(now))
            .collect();
        let paths = self.paths.iter().filter_map(|p| p.poll_timeout());
        let rebind = self
            .cfg
            .rebind_at
            .filter(|_| !self.rebound)
            .map(|at| self.clock_start() + at);
        let replay = self.replays.front().map(|r| r.0);
        shards
            .chain(clients)
            .chain(paths)
            .chain(rebind)
            .chain(replay)
            .min()
    }

    fn report(self, stuck: Option<String>) -> Report {
        let mut failures: Vec<String> = self
            .clients
            .iter()
            .enumerate()
            .filter_map(|(k, c)| {
                c.outcome
                    .failure
                    .as_ref()
                    .map(|f| format!("client {k}: {f}"))
            })
            .take(10)
            .collect();
        if let Some(s) = stuck {
            failures.insert(0, s);
        }
        let mut paths = [Counts::default(); 2];
        for p in &self.paths {
            for (dir, sum) in Dir::BOTH.into_iter().zip(&mut paths) {
                add_counts(sum, &p.counts(dir));
            }
        }
        let digest = self.digest.finish();
        let mut d = [0u8; 32];
        d.copy_from_slice(digest.as_ref());
        Report {
            digest: d,
            delivered: self.delivered,
            virtual_time: self.clock.elapsed(),
            completed: self
                .clients
                .iter()
                .map(|c| u64::from(c.outcome.completed))
                .sum(),
            planned: self.cfg.clients as u64 * u64::from(self.cfg.connections_per_client),
            zero_rtt_accepted: self
                .clients
                .iter()
                .map(|c| u64::from(c.outcome.zero_rtt_accepted))
                .sum(),
            failures,
            shards: self.server.stats(),
            unroutable: self.unroutable,
            paths,
        }
    }
}

/// Runs the simulation of `cfg` (see [`Simulation`]).
pub fn simulate(cfg: SimConfig) -> Result<Report, SetupError> {
    Ok(Simulation::new(cfg)?.run())
}

/// The QUIC-LB config of the simulated server, as a standalone engine's: single-pass AES under
/// `key`, a 2-octet server ID, a 14-octet nonce.
fn quic_lb_config(key: [u8; 16]) -> Result<quic_lb::Config, quic_lb::ConfigError> {
    quic_lb::Config::new(0, 2, 14, Some(key))
}

fn add_counts(sum: &mut Counts, c: &Counts) {
    sum.received += c.received;
    sum.forwarded += c.forwarded;
    sum.dropped_loss += c.dropped_loss;
    sum.dropped_queue += c.dropped_queue;
    sum.dropped_blackout += c.dropped_blackout;
    sum.corrupted += c.corrupted;
    sum.duplicated += c.duplicated;
    sum.reordered += c.reordered;
}

/// Client `k`'s address, at port generation `gen` (a rebinding moves it to the next).
fn client_addr(k: usize, gen: u16) -> SocketAddr {
    let k = k as u32 + 1;
    let ip = Ipv4Addr::new(10, (k >> 16) as u8, (k >> 8) as u8, k as u8);
    SocketAddr::new(IpAddr::V4(ip), 40_000 + gen)
}

/// A stand-in for the kernel's 4-tuple hash (the server side is one address).
fn hash_addr(a: SocketAddr) -> usize {
    let ip = match a.ip() {
        IpAddr::V4(v) => u64::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v) as u64,
    };
    mix(ip << 16 | u64::from(a.port())) as usize
}

/// SplitMix64's finaliser.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
