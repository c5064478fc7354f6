//! The threaded pipelines, staged (receivers → processors → forwarders) or inline (each worker
//! reads, routes and sends its own batches), plus slow-path workers.
//!
//! This module owns [`Lb`] (start, stats, reload, shutdown), the routing of one packet and the
//! slow-path thread loop; [`staged`] owns the receiver and processor loops, [`inline`] the
//! run-to-completion workers, [`read`] the batched reads both use, [`forward`] the forwarders and
//! the proxy sessions, [`stats`] the counters. The staged pipeline:
//!
//! - **Receivers** (`receivers` threads, one cloned listen socket each) read up to `read_batch`
//!   datagrams per `recvmmsg` into pool buffers, parse the invariant header just enough to
//!   find the DCID,
//!   and hash `(DCID, client address)` with seeded FNV-1a onto a processor's bounded queue.
//!   Malformed and unusual datagrams go to a slow-path queue. A full queue drops and counts.
//! - **Processors** sleep until a receiver wakes them, once per received batch (see [`Wake`]),
//!   drain up to `read_batch` packets, take the router lock once per batch, route
//!   each, and push it to the forwarder chosen by the client address (so a client's proxy
//!   session lives in one forwarder), waking each forwarder touched once per batch.
//! - **Slow path** workers route unknown versions by the 4-tuple fallback and drop the rest with
//!   a counted reason.
//!
//! # Implementation notes
//! The [`Router`] is shared behind one mutex: its fallback tables must be seen by every
//! processor (a migrating client may hash to another processor), and a batch holds the lock for
//! one CID decode per packet. Batched socket calls live in the `quicshard-udp` crate.

mod forward;
mod inline;
mod read;
mod staged;
mod stats;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use ranked_lock::{Mutex, MutexGuard, Rank};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use quic_lb::ServerId;

pub use stats::{ForwarderStats, ProcessorStats, ReceiverStats, SlowPathStats, Stats};

use crate::config::{ForwardMode, LbConfig, Pipeline};
use crate::parse::{classify, Malformed, Path, SlowReason};
use crate::pool::{Packet, Pool, Sizes, MAX_PAYLOAD};
use crate::route::{fnv1a, FourTuple, Router};
use quicshard_udp::Received;
use stats::{add, Counters};

/// How long a blocked thread waits before checking for shutdown: bounds shutdown latency.
const STOP_CHECK: Duration = Duration::from_millis(50);
/// Socket buffer requested for the listen socket (capped by `net.core.rmem_max`).
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Why the load balancer could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket or thread could not be created. Remedy: check the address and permissions.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: io::Error,
    },
    /// A reload changed a setting that needs a restart (listen, mode, thread counts, batches).
    #[error("reload: {0} cannot change without a restart")]
    NotReloadable(&'static str),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io {
        context: context.into(),
        source,
    }
}

/// DCID lengths by config rotation codepoint (index 7: unknown and 0b111), read by receivers
/// without taking the router lock; written on reload.
struct CidLens([AtomicU8; 8]);

impl CidLens {
    fn set(&self, config: &LbConfig) {
        for (i, slot) in self.0.iter().enumerate() {
            let len = config
                .quic_lb
                .iter()
                .find(|q| usize::from(q.config.config_id()) == i)
                .map_or(config.unroutable_cid_len, |q| q.config.cid_len());
            slot.store(len as u8, Ordering::Relaxed);
        }
    }
    fn get(&self, first: u8) -> usize {
        usize::from(self.0[usize::from(quic_lb::config_bits(first))].load(Ordering::Relaxed))
    }
}

/// State shared by every pipeline thread.
/// Lock order (ranked_lock): a reload holds the configuration while it updates the router.
const CONFIG_RANK: Rank = Rank::new(10, "lb configuration");
/// The routing tables, taken by processors and the slow path per batch.
const ROUTER_RANK: Rank = Rank::new(20, "lb router");

struct Shared {
    stop: AtomicBool,
    router: Mutex<Router>,
    config: Mutex<LbConfig>,
    lens: CidLens,
    pool: Pool,
    counters: Counters,
    seed: u64,
    local: SocketAddr,
}

impl Shared {
    fn router(&self) -> MutexGuard<'_, Router> {
        // poison is ignored by ranked_lock: routing state is still consistent after a panicking
        // processor (every mutation is a single map insert)
        self.router.lock()
    }
}

/// A running load balancer. Dropping it stops the threads too.
pub struct Lb {
    shared: Arc<Shared>,
    sizes: Sizes,
    threads: Vec<JoinHandle<()>>,
    wakers: Vec<Arc<mio::Waker>>,
}

impl Lb {
    /// Binds `config.listen`, allocates the pool and starts every thread.
    pub fn start(config: LbConfig) -> Result<Self, Error> {
        let sizes = Sizes::for_config(&config);
        tracing::info!(
            pipeline = ?config.pipeline,
            receivers = config.receivers,
            processors = config.processors,
            forwarders = config.forwarders,
            slow_path = config.slow_path,
            read_batch = config.read_batch,
            write_batch = config.write_batch,
            processor_queue = sizes.processor_queue,
            forward_queue = sizes.forward_queue,
            slow_queue = sizes.slow_queue,
            pool = sizes.pool,
            "load balancer sizes"
        );
        let socket = bind_listen(config.listen, config.pipeline == Pipeline::Inline)?;
        let local = socket
            .local_addr()
            .map_err(io_err("listen socket address"))?;
        let lens = CidLens(Default::default());
        lens.set(&config);
        let seed = rand::random::<u64>();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            router: Mutex::new(ROUTER_RANK, Router::new(&config, seed)),
            lens,
            pool: Pool::new(sizes.pool),
            counters: Counters::default(),
            seed,
            local,
            config: Mutex::new(CONFIG_RANK, config.clone()),
        });
        let mut lb = Self {
            shared: shared.clone(),
            sizes,
            threads: Vec::new(),
            wakers: Vec::new(),
        };
        let (slow_tx, slow_rx) = bounded(sizes.slow_queue * config.slow_path);
        let fwd = match config.pipeline {
            Pipeline::Staged => staged::start(&mut lb, &config, &socket, &slow_tx)?,
            Pipeline::Inline => inline::start(&mut lb, &config, socket, &slow_tx)?,
        };
        for i in 0..config.slow_path {
            let (s, fwd, rx) = (shared.clone(), fwd.clone(), slow_rx.clone());
            lb.spawn(format!("lb-slow-{i}"), move || slow_path(&s, &rx, &fwd))?;
        }
        tracing::info!(%local, mode = ?config.mode, "load balancer started");
        Ok(lb)
    }

    fn spawn(&mut self, name: String, f: impl FnOnce() + Send + 'static) -> Result<(), Error> {
        let h = std::thread::Builder::new()
            .name(name.clone())
            .spawn(f)
            .map_err(io_err(format!("spawn {name}")))?;
        self.threads.push(h);
        Ok(())
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// The queue and pool sizes computed at start.
    pub fn sizes(&self) -> Sizes {
        self.sizes
    }

    /// A snapshot of every counter.
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        let (routing, tables) = {
            let r = s.router();
            (r.stats(), r.table_sizes())
        };
        Stats {
            sizes: self.sizes,
            pool_free: s.pool.free(),
            receivers: s.counters.receivers.snapshot(),
            processors: s.counters.processors.snapshot(),
            routing,
            tables,
            slow_path: s.counters.slow.snapshot(),
            forwarders: s.counters.forwarders.snapshot(),
            sessions: s.counters.sessions.load(Ordering::Relaxed),
        }
    }

    /// Applies a new configuration: QUIC-LB configs, backends (health included), timers and the
    /// unroutable CID length. Existing flows keep their routes while their backend exists.
    /// Listen address, mode, thread counts and batch sizes need a restart.
    pub fn reload(&self, config: LbConfig) -> Result<(), Error> {
        let mut current = self.shared.config.lock();
        let fixed = [
            ("listen", current.listen == config.listen),
            ("mode", current.mode == config.mode),
            ("pipeline", current.pipeline == config.pipeline),
            (
                "virtual_address",
                current.virtual_address == config.virtual_address,
            ),
            ("receivers", current.receivers == config.receivers),
            ("processors", current.processors == config.processors),
            ("forwarders", current.forwarders == config.forwarders),
            ("slow_path", current.slow_path == config.slow_path),
            ("read_batch", current.read_batch == config.read_batch),
            ("write_batch", current.write_batch == config.write_batch),
            ("max_sessions", current.max_sessions == config.max_sessions),
        ];
        if let Some((key, _)) = fixed.iter().find(|(_, same)| !same) {
            return Err(Error::NotReloadable(key));
        }
        self.shared.router().apply_config(&config);
        self.shared.lens.set(&config);
        tracing::info!(
            quic_lb = config.quic_lb.len(),
            backends = config.backends.len(),
            "configuration reloaded"
        );
        *current = config;
        Ok(())
    }

    /// Marks a backend down (no new flows) or up, e.g. from a health check. Returns false if no
    /// backend has that server ID.
    pub fn set_backend_down(&self, server_id: &ServerId, down: bool) -> bool {
        self.shared.router().set_down(server_id, down)
    }

    /// Stops every thread and waits for them.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // processors notice within STOP_CHECK (park_timeout)
        for w in &self.wakers {
            let _ = w.wake();
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a load balancer thread panicked");
            }
        }
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds a listen socket; `reuse_port` lets the inline pipeline's workers each bind their own
/// socket to the same address, the kernel spreading flows over them by 4-tuple hash.
fn bind_listen(addr: SocketAddr, reuse_port: bool) -> Result<UdpSocket, Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    let ctx = || format!("bind {addr}");
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(io_err(ctx()))?;
    // Best effort: the kernel caps these at rmem_max / wmem_max.
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    if reuse_port {
        s.set_reuse_port(true).map_err(io_err(ctx()))?;
    }
    s.bind(&addr.into()).map_err(io_err(ctx()))?;
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(STOP_CHECK))
        .map_err(io_err(ctx()))?;
    Ok(s)
}

/// The forwarders' queues and wakers, cloned into every processor and slow-path worker.
#[derive(Clone)]
struct Forwarders {
    tx: Vec<Sender<Box<Packet>>>,
    wakers: Vec<Arc<mio::Waker>>,
    /// Inline pipeline: a packet goes back to the worker that read it ([`Packet::worker`]).
    by_worker: bool,
}

impl Forwarders {
    /// The forwarder of a packet: fixed per client so its proxy session lives in one place
    /// (staged: a hash of the client address; inline: the worker whose socket the kernel chose
    /// for the client).
    fn index(&self, seed: u64, p: &Packet) -> usize {
        if self.by_worker {
            return p.worker % self.tx.len();
        }
        let mut b = [0; 18];
        let n = crate::route::addr_bytes(&p.client, &mut b);
        (fnv1a(seed, &[&b[..n]]) % self.tx.len() as u64) as usize
    }

    /// Queues a routed packet; on a full queue returns it.
    fn push(&self, seed: u64, p: Box<Packet>) -> Result<usize, Box<Packet>> {
        let i = self.index(seed, &p);
        match self.tx[i].try_send(p) {
            Ok(()) => Ok(i),
            Err(TrySendError::Full(p) | TrySendError::Disconnected(p)) => Err(p),
        }
    }

    fn wake(&self, touched: &mut [bool]) {
        for (i, t) in touched.iter_mut().enumerate() {
            if std::mem::take(t) {
                let _ = self.wakers[i].wake();
            }
        }
    }
}

/// Fills in a received packet's length and sender, or drops it (counted) if the kernel gave no
/// usable address or it may have been truncated.
fn accept(s: &Shared, mut p: Box<Packet>, r: &Received) -> Option<Box<Packet>> {
    let c = &s.counters.receivers;
    let Some(from) = r.from else {
        add(&c.recv_errors, 1);
        s.pool.put(p);
        return None;
    };
    if r.truncated || r.len > MAX_PAYLOAD {
        add(&c.dropped_oversize, 1);
        s.pool.put(p);
        return None;
    }
    p.set_len(r.len);
    p.client = from;
    Some(p)
}

/// Routes one packet with the router held: returns it with its target set, or `None` if it
/// went to the slow path (unusual or malformed) or was dropped for want of a backend (counted).
fn route_packet(
    s: &Shared,
    router: &mut Router,
    now: Instant,
    mut p: Box<Packet>,
    slow: &Sender<Box<Packet>>,
) -> Option<Box<Packet>> {
    let c = &s.counters.processors;
    let tuple = FourTuple {
        client: p.client,
        local: s.local,
    };
    let decision = match router.parse(p.payload()) {
        Ok(h) if classify(&h) == Path::Fast => router.route(now, tuple, &h),
        _ => {
            match slow.try_send(p) {
                Ok(()) => add(&c.to_slow_path, 1),
                Err(e) => {
                    add(&c.dropped_slow_queue_full, 1);
                    s.pool.put(e.into_inner());
                }
            }
            return None;
        }
    };
    let Ok(d) = decision else {
        add(&c.dropped_no_backend, 1);
        s.pool.put(p);
        return None;
    };
    p.target = Some(d.address);
    Some(p)
}

fn slow_path(s: &Shared, rx: &Receiver<Box<Packet>>, fwd: &Forwarders) {
    let c = &s.counters.slow;
    let mut touched = vec![false; fwd.tx.len()];
    while !s.stop.load(Ordering::Relaxed) {
        let Ok(mut p) = rx.recv_timeout(STOP_CHECK) else {
            continue;
        };
        add(&c.received, 1);
        let now = Instant::now();
        let tuple = FourTuple {
            client: p.client,
            local: s.local,
        };
        let decision = {
            let mut router = s.router();
            match router.parse(p.payload()) {
                Err(m) => Err(match m {
                    Malformed::Empty => &c.dropped_empty,
                    Malformed::TooShort { .. } => &c.dropped_too_short,
                    Malformed::CidTooLong(_) => &c.dropped_cid_too_long,
                }),
                Ok(h) => match classify(&h) {
                    Path::Slow(SlowReason::VersionNegotiation) => {
                        Err(&c.dropped_version_negotiation)
                    }
                    Path::Slow(SlowReason::UnknownVersion) => router
                        .route_by_tuple(now, tuple)
                        .map_err(|_| &c.dropped_no_backend),
                    Path::Fast => router
                        .route(now, tuple, &h)
                        .map_err(|_| &c.dropped_no_backend),
                },
            }
        };
        match decision {
            Err(counter) => {
                add(counter, 1);
                s.pool.put(p);
            }
            Ok(d) => {
                p.target = Some(d.address);
                match fwd.push(s.seed, p) {
                    Ok(i) => {
                        add(&c.routed, 1);
                        touched[i] = true;
                        fwd.wake(&mut touched);
                    }
                    Err(p) => {
                        add(&c.dropped_forward_queue_full, 1);
                        s.pool.put(p);
                    }
                }
            }
        }
    }
}

/// Expires idle fallback flows if one is due.
fn expire(router: &mut Router, now: Instant) {
    if router.poll_timeout().is_some_and(|t| now >= t) {
        router.poll_expired(now);
    }
}

/// Whether the mode needs replies relayed (proxy) or not (DSR).
fn relays(mode: ForwardMode) -> bool {
    mode == ForwardMode::Proxy
}

#[cfg(test)]
mod tests;
