//! The [`Engine`] and its [`Builder`]: configuration, start-up (bind, BPF, wiring the mailbox
//! mesh, spawning shard threads), counters and graceful shutdown.
//!
//! # Examples
//! ```no_run
//! use quicshard::{Engine, Handler, ShardId};
//! struct Nop;
//! impl Handler for Nop {}
//! let engine = Engine::builder(|_shard: ShardId| Nop)
//!     .shards(2)
//!     .listen("127.0.0.1:0".parse().unwrap())
//!     .start()
//!     .unwrap();
//! println!("listening on {}", engine.local_addr());
//! let stats = engine.shutdown(std::time::Duration::from_secs(1));
//! assert_eq!(stats.len(), 2);
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quinn_proto::{ClientConfig, TransportConfig};
use rustls::pki_types::CertificateDer;

use crate::cid::{CidConfig, CidConfigError};
use crate::handler::{Handler, Remote, ShardId};
use crate::memory::{MemoryBudget, MemoryBudgetError};
use crate::qlog::{Qlog, TransportFactory};
use crate::shard::io::{Sock, CLIENT};
use crate::shard::mailbox::{mailbox, Msg};
use crate::shard::{self, ShardParts, WAKER_TOKEN};
use crate::shared::{build_server_config, Shared, Tickets};
use crate::stats::{Counters, HistogramSnapshot, ShardStats, StatsReader};
use crate::steer;
use crate::tickets::{TicketStats, TicketStore};
use crate::tls::{self, TlsError};

/// Default per-shard connection limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;

/// Receive and send buffer asked for on each shard's client socket, as `steer::bind_group` asks
/// for the listen sockets. Why: one shard's downloads all arrive on this one socket; with the
/// default (~200 KiB) a debug-build client loses hundreds of datagrams per bulk download on
/// loopback. The kernel caps it at `net.core.{r,w}mem_max`.
const CLIENT_SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Why [`Builder::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound (in use, not local, no permission). Pick another
    /// address or port, or stop the process holding it.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The CID configuration (QUIC-LB config, server ID or shard count) is invalid.
    #[error(transparent)]
    Cid(#[from] CidConfigError),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The memory budget is inconsistent (a zero window, a shard budget below one connection).
    #[error(transparent)]
    Memory(#[from] MemoryBudgetError),
    /// The qlog directory ([`Builder::qlog_dir`]) is not a usable directory, or qlog cannot be
    /// combined with the transport configuration given.
    #[error("qlog: {0}")]
    Qlog(std::io::Error),
    /// The handover ([`Builder::handover`]) failed; the process does not serve.
    #[error(transparent)]
    Handover(#[from] crate::handover::HandoverError),
    /// Creating a poller, waker, socket state or thread failed (resource limits).
    #[error("shard setup: {0}")]
    Io(#[from] std::io::Error),
}

/// A handover error as a start error: a port someone holds is the same refusal as without a
/// handover.
fn handover_error(e: crate::handover::HandoverError) -> StartError {
    match e {
        crate::handover::HandoverError::Bind { addr, source } => StartError::Bind { addr, source },
        other => StartError::Handover(other),
    }
}

type Factory<H> = Arc<dyn Fn(ShardId) -> H + Send + Sync>;

/// What [`Builder::start`] returns for a layer built on the engine: the layer's own engine type,
/// made from the started [`Engine`]. `()` is no layer (the callback engine itself); the handle
/// layer's is [`HandleEngine`](crate::HandleEngine). The engine knows nothing of its layers: a
/// layer sets its handler factory and wraps the result.
pub trait Layer<H: Handler> {
    /// The engine type the layer hands out.
    type Engine;
    /// Wraps the started engine.
    fn wrap(self, engine: Engine<H>) -> Self::Engine;
}

impl<H: Handler> Layer<H> for () {
    type Engine = Engine<H>;
    fn wrap(self, engine: Engine<H>) -> Engine<H> {
        engine
    }
}

/// Configures and starts an [`Engine`] (or a [`Layer`]'s engine, `L`).
pub struct Builder<H, L = ()> {
    pub(crate) factory: Factory<H>,
    shards: usize,
    pub(crate) listen: SocketAddr,
    server_tls: Option<rustls::ServerConfig>,
    pub(crate) client_config: Option<ClientConfig>,
    transport: Option<TransportConfig>,
    transport_factory: Option<TransportFactory>,
    qlog_dir: Option<std::path::PathBuf>,
    key_log: Option<Arc<dyn rustls::KeyLog>>,
    quic_lb: Option<(quic_lb::Config, Vec<u8>)>,
    /// `None`: a random key.
    shard_key: Option<crate::steer::ShardKey>,
    bpf: bool,
    retry: bool,
    retry_threshold: Option<usize>,
    max_connections: usize,
    admission: crate::Admission,
    pub(crate) alpn: Vec<Vec<u8>>,
    zero_rtt: bool,
    preferred_address: bool,
    ticket_capacity: usize,
    ticket_key_lifetime: Duration,
    /// `None`: as many as there are shards, at most one per core.
    threads: Option<usize>,
    /// `None`: batch scheduling exactly when there are more threads than cores.
    batch_scheduling: Option<bool>,
    turn_sharing: bool,
    memory: MemoryBudget,
    /// `None`: random.
    secrets: Option<crate::Secrets>,
    handover: Option<std::path::PathBuf>,
    /// From a predecessor: its CID layout in this process's slot.
    inherited_cid: Option<CidConfig>,
    /// The layer [`Builder::start`] wraps the engine in.
    pub(crate) layer: L,
}

impl<H: Handler, L> Builder<H, L> {
    /// Number of shards. Default: `std::thread::available_parallelism()`. 1..=256.
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n;
        self
    }
    /// Number of threads the shards run on. Each thread runs a fixed, contiguous group of shards
    /// for its whole life, so a handler that blocks stalls the other shards of its thread.
    /// Default: one thread per shard, but no more threads than
    /// `std::thread::available_parallelism()`. Why: shard threads beyond the cores only preempt
    /// each other, at a measured +11% CPU per handshake (8 threads on 2 cores). A value above the
    /// shard count means one thread per shard; 0 means the default.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = (n > 0).then_some(n);
        self
    }
    /// The shared UDP address. Default `127.0.0.1:0` (an ephemeral loopback port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }
    /// The server TLS config. The engine replaces its ticketer with a stateless one shared by all
    /// shards and disables the stateful session cache. Default: a self-signed certificate for
    /// `localhost` (see [`Engine::certificate`]) with the [`Builder::alpn`] protocols.
    pub fn server_tls(mut self, tls: rustls::ServerConfig) -> Self {
        self.server_tls = Some(tls);
        self
    }
    /// The client config for `connect`. Default: trust only this engine's self-signed
    /// certificate (useful for loopback tests; see [`crate::tls`] for others).
    pub fn client_config(mut self, cfg: ClientConfig) -> Self {
        self.client_config = Some(cfg);
        self
    }
    /// Transport parameters for incoming connections and for `connect` (replacing the client
    /// config's). Default: quinn-proto's defaults (the client config's own for `connect`).
    pub fn transport(mut self, t: TransportConfig) -> Self {
        self.transport = Some(t);
        self
    }
    /// Like [`Builder::transport`], from a function that makes one config per connection when a
    /// connection needs its own (qlog traces, [`Builder::qlog_dir`]); replaces
    /// [`Builder::transport`]. Default: none.
    pub fn transport_factory(
        mut self,
        f: impl Fn() -> TransportConfig + Send + Sync + 'static,
    ) -> Self {
        self.transport = Some(f());
        self.transport_factory = Some(Arc::new(f));
        self
    }
    /// Write a qlog trace of every connection (server and client side) into `dir`, an existing
    /// directory: `<original DCID in hex>_server.sqlog` or `..._client.sqlog`, JSON-SEQ (see
    /// [`crate::qlog`]). Each traced connection's transport config comes from
    /// [`Builder::transport_factory`] (quinn-proto's defaults without one; a config given to
    /// [`Builder::transport`] alone cannot be copied, so [`Builder::start`] refuses it with qlog
    /// on). Default: off.
    pub fn qlog_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.qlog_dir = Some(dir.into());
        self
    }
    /// Where the server TLS config (given or default) logs its secrets, e.g.
    /// `rustls::KeyLogFile` (NSS key log format, `SSLKEYLOGFILE`). Default: rustls' default (none).
    pub fn key_log(mut self, log: Arc<dyn rustls::KeyLog>) -> Self {
        self.key_log = Some(log);
        self
    }
    /// QUIC-LB config and this server's ID. Default: a random 2-octet server ID and a random
    /// single-pass key (18-octet CIDs). The config must leave one octet for the shard byte.
    pub fn quic_lb(mut self, config: quic_lb::Config, server_id: &[u8]) -> Self {
        self.quic_lb = Some((config, server_id.to_vec()));
        self
    }
    /// The key that masks the shard byte of every CID (see [`crate::steer`]): the steering
    /// program's constants. A process that takes over this engine's connections must use the
    /// same key, shard count and QUIC-LB config, or it steers their datagrams to the wrong shard.
    /// Default: a random key ([`Engine::shard_key`] reads it back).
    pub fn shard_key(mut self, key: crate::steer::ShardKey) -> Self {
        self.shard_key = Some(key);
        self
    }
    /// Attach the BPF steering program. Default on. Off, the kernel's 4-tuple hash picks the
    /// socket and the shards hand off what lands on the wrong one.
    pub fn bpf(mut self, on: bool) -> Self {
        self.bpf = on;
        self
    }
    /// Answer every Initial without a valid token with a Retry. Default off.
    pub fn retry(mut self, on: bool) -> Self {
        self.retry = on;
        self
    }
    /// Load-based address validation: while `n` or more handshakes are in progress on a shard,
    /// that shard answers Initials without a valid token with a Retry; below `n` it accepts them
    /// directly (no extra round trip). A flood of Initials from spoofed addresses then holds at
    /// most about `n` half-open connections per shard; the rest costs one stateless Retry each.
    /// `0` behaves like [`Builder::retry`]`(true)`, which takes precedence. Default: off.
    pub fn retry_threshold(mut self, n: usize) -> Self {
        self.retry_threshold = Some(n);
        self
    }
    /// How each shard admits new connections: at most `per_turn` accepted per loop turn, after
    /// the turn's datagrams for established connections; up to `queue` more wait for later
    /// turns, and an Initial beyond those is refused with CONNECTION_REFUSED. Accepting is
    /// where a handshake's ECDHE and signature are computed, so this bounds how long a burst
    /// of handshakes can hold established connections (counters: `handshakes_queued`,
    /// `handshakes_deferred`, `handshakes_refused`). Default [`Admission::default`]: 4 per
    /// turn, 1,024 waiting.
    ///
    /// [`Admission::default`]: crate::Admission
    pub fn admission(mut self, a: crate::Admission) -> Self {
        self.admission = crate::Admission {
            per_turn: a.per_turn.max(1),
            queue: a.queue,
        };
        self
    }
    /// The memory budget ([`crate::memory`]): the send and receive windows of every connection
    /// (they replace those of [`Builder::transport`]) and the bound on one shard's connections
    /// together, beyond which new ones are refused (counted in `refused_memory`).
    /// Default: [`MemoryBudget::default`].
    pub fn memory(mut self, budget: MemoryBudget) -> Self {
        self.memory = budget;
        self
    }
    /// Connections per shard beyond which new ones are refused. Default 100 000.
    pub fn max_connections_per_shard(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }
    /// Accept 0-RTT: session tickets become single-use entries of one store shared by all
    /// shards (the anti-replay store; see [`crate::tickets`]), so a ticket resumes on any shard
    /// and a replayed 0-RTT ClientHello falls back to a full handshake wherever it lands.
    /// Default off: stateless tickets, 1-RTT resumption.
    pub fn zero_rtt(mut self, on: bool) -> Self {
        self.zero_rtt = on;
        self
    }
    /// Advertise each shard's own socket (the listen IP, the shard's client port) as the
    /// server's preferred address: a client that migrates there (ngtcp2's does) then talks to
    /// its shard directly, without steering. Needs a specific listen IP (not `0.0.0.0` / `::`);
    /// otherwise a warning is logged and nothing is advertised. Default off.
    pub fn preferred_address(mut self, on: bool) -> Self {
        self.preferred_address = on;
        self
    }
    /// Tickets the 0-RTT store keeps; the oldest go first. Default
    /// [`DEFAULT_TICKET_CAPACITY`](crate::tickets::DEFAULT_TICKET_CAPACITY).
    pub fn ticket_capacity(mut self, n: usize) -> Self {
        self.ticket_capacity = n;
        self
    }
    /// How long a stateless ticket key is used before a fresh random one replaces it (tickets
    /// stay valid for two lifetimes). Default 6 hours. Without 0-RTT only.
    pub fn ticket_key_lifetime(mut self, d: Duration) -> Self {
        self.ticket_key_lifetime = d;
        self
    }
    /// Run the shard threads under `SCHED_BATCH` (Linux; elsewhere ignored): a thread woken by a
    /// datagram does not preempt the thread running on its core but waits for its turn, and
    /// meanwhile more datagrams queue up for the same wake-up. With more shards than cores the
    /// shards only preempt each other: batching cuts wake-ups and context switches per
    /// handshake (at 8 shard threads on 2 cores, about a third fewer), at the price of up to
    /// one scheduler slice of extra latency. Default: on exactly when there are more threads
    /// ([`Builder::threads`]) than `std::thread::available_parallelism()`.
    pub fn batch_scheduling(mut self, on: bool) -> Self {
        self.batch_scheduling = Some(on);
        self
    }
    /// Turn sharing between shard threads (default on): a running shard thread gives a turn to
    /// another thread's shard whose input has waited more than 100 µs, so the connections of a
    /// shard whose thread waits for a CPU are served by a thread that has one. Each shard stays
    /// single-threaded (a turn lock), and `Handler` callbacks may then run on another shard
    /// thread than their shard's own. Off: every shard is only ever run by its own thread.
    pub fn turn_sharing(mut self, on: bool) -> Self {
        self.turn_sharing = on;
        self
    }
    /// The secrets the engine's tokens, stateless resets, session tickets and shard byte are made
    /// with ([`crate::Secrets`]). Default: random. A predecessor's replace them in a handover.
    pub fn secrets(mut self, secrets: crate::Secrets) -> Self {
        self.secrets = Some(secrets);
        self
    }
    /// Zero-downtime upgrades through the Unix socket at `path` ([`crate::handover`]): if a
    /// running engine listens there, this one takes over its port, secrets and CID layout (it
    /// must have the same shard count), and the old one stops accepting and drains
    /// ([`Handover::replaced`](crate::Handover::replaced), [`Engine::drain`]); otherwise this
    /// engine starts fresh. Either way it then listens at `path` for its own successor. Needs
    /// BPF steering and at most 128 shards. Default: off.
    ///
    /// ```no_run
    /// # use quicshard::{Engine, Handler};
    /// # struct App;
    /// # impl Handler for App {}
    /// use std::time::Duration;
    /// // the same code in the old and in the new binary
    /// let engine = Engine::builder(|_| App)
    ///     .listen("0.0.0.0:4433".parse().unwrap())
    ///     .handover("/run/app.sock")
    ///     .start()
    ///     .expect("start or take over");
    /// let handover = engine.handover().unwrap();
    /// while !handover.replaced() {
    ///     std::thread::sleep(Duration::from_millis(100)); // or the application's own loop
    /// }
    /// // a successor serves new connections: finish ours, then exit
    /// let (_stats, drained) = engine.drain(Duration::from_secs(60));
    /// assert_eq!(drained.closed_at_timeout, 0);
    /// ```
    pub fn handover(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.handover = Some(path.into());
        self
    }
    /// ALPN protocols for the default TLS configs. Default none.
    pub fn alpn(mut self, protocols: &[&[u8]]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// The configuration every shard shares (CIDs for `n` shards, TLS, transport), and the
    /// self-signed certificate if the engine made one.
    pub(crate) fn configure(
        &mut self,
        n: usize,
    ) -> Result<(Arc<Shared>, Option<Vec<CertificateDer<'static>>>), StartError> {
        let mut secrets = self.secrets.clone().unwrap_or_else(crate::Secrets::random);
        let cid = match (self.inherited_cid.take(), &self.quic_lb) {
            (Some(cid), _) => cid,
            (None, Some((cfg, sid))) => CidConfig::new(*cfg, sid, n)?,
            (None, None) => CidConfig::standalone(n)?,
        };
        if let Some(key) = self.shard_key {
            secrets.shard_key = key;
        }
        let cid = cid.with_shard_key(secrets.shard_key);
        let alpn: Vec<&[u8]> = self.alpn.iter().map(|p| p.as_slice()).collect();
        let mut certificate = None;
        let mut server_tls = match self.server_tls.take() {
            Some(t) => t,
            None => {
                let (chain, key) = tls::self_signed(&["localhost"])?;
                certificate = Some(chain.clone());
                tls::server_config(chain, key, &alpn)?
            }
        };
        if let Some(log) = &self.key_log {
            server_tls.key_log = log.clone();
        }
        let qlog = match self.qlog_dir.take() {
            Some(_) if self.transport.is_some() && self.transport_factory.is_none() => {
                return Err(StartError::Qlog(std::io::Error::other(
                    "qlog needs Builder::transport_factory instead of Builder::transport",
                )))
            }
            Some(dir) => {
                // every traced connection's config gets the memory budget's windows too
                let (base, memory) = (self.transport_factory.clone(), self.memory);
                let factory: TransportFactory = Arc::new(move || {
                    let mut t = base.as_ref().map_or_else(TransportConfig::default, |f| f());
                    memory.apply(&mut t);
                    t
                });
                Some(Qlog::new(dir, Some(factory)).map_err(StartError::Qlog)?)
            }
            None => None,
        };
        let tickets = if self.zero_rtt {
            Tickets::ZeroRtt(Arc::new(TicketStore::new(self.ticket_capacity)))
        } else {
            Tickets::Stateless {
                key_lifetime: self.ticket_key_lifetime,
            }
        };
        self.memory.validate()?;
        let given = self.transport.is_some();
        let mut transport = self.transport.take().unwrap_or_default();
        self.memory.apply(&mut transport);
        let transport = Arc::new(transport);
        let (server_config, server_tickets) =
            build_server_config(server_tls, transport.clone(), &tickets, &secrets)?;
        let mut client_config = match self.client_config.take() {
            Some(c) => c,
            None => tls::client_config_trusting(certificate.as_deref().unwrap_or(&[]), &alpn)?,
        };
        if given {
            client_config.transport_config(transport.clone());
        }
        let shared = Arc::new(Shared {
            server_config: Some(server_config),
            endpoint_config: secrets.endpoint_config(),
            client_config,
            cid,
            retry: self.retry,
            retry_threshold: self.retry_threshold,
            max_connections: self.max_connections,
            admission: self.admission,
            memory: self.memory,
            tickets,
            server_tickets: Some(server_tickets),
            qlog,
            secrets,
            retire: Arc::default(),
            seed: None,
        });
        Ok((shared, certificate))
    }

    /// The same configuration for another layer.
    pub(crate) fn with_layer<L2>(self, layer: L2) -> Builder<H, L2> {
        Builder {
            factory: self.factory,
            shards: self.shards,
            listen: self.listen,
            server_tls: self.server_tls,
            client_config: self.client_config,
            transport: self.transport,
            transport_factory: self.transport_factory,
            qlog_dir: self.qlog_dir,
            key_log: self.key_log,
            quic_lb: self.quic_lb,
            shard_key: self.shard_key,
            bpf: self.bpf,
            retry: self.retry,
            retry_threshold: self.retry_threshold,
            max_connections: self.max_connections,
            admission: self.admission,
            alpn: self.alpn,
            zero_rtt: self.zero_rtt,
            preferred_address: self.preferred_address,
            ticket_capacity: self.ticket_capacity,
            ticket_key_lifetime: self.ticket_key_lifetime,
            threads: self.threads,
            batch_scheduling: self.batch_scheduling,
            turn_sharing: self.turn_sharing,
            memory: self.memory,
            secrets: self.secrets,
            handover: self.handover,
            inherited_cid: self.inherited_cid,
            layer,
        }
    }
}

impl<H: Handler, L: Layer<H>> Builder<H, L> {
    /// Binds, attaches BPF, spawns the shard threads.
    pub fn start(mut self) -> Result<L::Engine, StartError> {
        let n = self.shards;
        let plan = match &self.handover {
            Some(path) => {
                Some(crate::handover::Plan::prepare(path, n, self.listen).map_err(handover_error)?)
            }
            None => None,
        };
        if let Some((secrets, cid)) = plan.as_ref().and_then(|p| p.inherited()) {
            if self.quic_lb.is_some() || self.shard_key.is_some() {
                tracing::warn!(
                    "handover: the running server's QUIC-LB config, server ID and shard key are \
                     kept; this process's own are ignored"
                );
            }
            self.secrets = Some(secrets);
            self.shard_key = None;
            self.inherited_cid = Some(cid);
        }
        let (shared, certificate) = self.configure(n)?;
        let listen = match &plan {
            Some(p) => p.listen_sockets()?,
            None => steer::bind_group(self.listen, n).map_err(|source| StartError::Bind {
                addr: self.listen,
                source,
            })?,
        };
        let local_addr = listen[0].local_addr()?;
        let client_ip = match local_addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let clients = (0..n)
            .map(|_| UdpSocket::bind(SocketAddr::new(client_ip, 0)))
            .collect::<Result<Vec<_>, _>>()?;
        for c in &clients {
            // ignored like the listen group's: a smaller buffer only costs drops under bursts
            let c = socket2::SockRef::from(c);
            let _ = c.set_recv_buffer_size(CLIENT_SOCKET_BUFFER_BYTES);
            let _ = c.set_send_buffer_size(CLIENT_SOCKET_BUFFER_BYTES);
        }
        let advertise = self.preferred_address && !local_addr.ip().is_unspecified();
        if self.preferred_address && !advertise {
            tracing::warn!(
                %local_addr,
                "no preferred address advertised: the listen address is unspecified"
            );
        }
        // with a handover the plan attaches its two-slot program once the shards run
        let bpf_attached = plan.is_none()
            && self.bpf
            && n > 1
            && {
                let program =
                    steer::steering_program(shared.cid.cid_len(), n, shared.cid.shard_key());
                match steer::attach(&listen[0], &program) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "BPF steering not attached; shards will hand off datagrams");
                        false
                    }
                }
            };

        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let n_threads = self.threads.unwrap_or(cores).clamp(1, n);
        // one poller and one mailbox waker per thread: a shard alone owns them, a group's
        // members share them (each under its own socket tokens; a lone shard's base is 0)
        let mut groups = Vec::with_capacity(n_threads);
        let mut pollers = Vec::with_capacity(n);
        let mut txs = Vec::with_capacity(n);
        let mut rxs = Vec::with_capacity(n);
        for g in 0..n_threads {
            let (a, b) = shard::group::members(g, n, n_threads);
            let poll = mio::Poll::new()?;
            let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER_TOKEN)?);
            for k in 0..b - a {
                let base = shard::group::TOKENS_PER_SHARD * k;
                let (tx, rx) = mailbox::<H>(waker.clone());
                txs.push(tx);
                rxs.push(rx);
                if b - a > 1 {
                    let registry = poll.registry().try_clone()?;
                    pollers.push(shard::Poller::Group { registry, base });
                }
            }
            if b - a == 1 {
                pollers.push(shard::Poller::Own(poll));
                groups.push((None, 1));
            } else {
                groups.push((Some(poll), b - a));
            }
        }
        let peers: Arc<[_]> = txs.into();
        let stats: Vec<Arc<Counters>> = (0..n).map(|_| Arc::default()).collect();
        let batch = self.batch_scheduling.unwrap_or(n_threads > cores);
        let parts = pollers
            .into_iter()
            .zip(rxs)
            .zip(listen)
            .zip(clients)
            .enumerate();
        let mut all = Vec::with_capacity(n);
        for (id, (((poller, mailbox), listen), client)) in parts {
            let preferred_port = match client.local_addr() {
                Ok(a) if advertise => Some(a.port()),
                _ => None,
            };
            all.push(ShardParts {
                id,
                poller,
                socks: [
                    Sock::new(listen, stats[id].clone())?,
                    Sock::new(client, stats[id].clone())?,
                ],
                client_sock: CLIENT,
                preferred: preferred_port.map(|p| SocketAddr::new(local_addr.ip(), p)),
                mailbox,
                peers: peers.clone(),
                shared: shared.clone(),
                stats: stats[id].clone(),
            });
        }
        let desks: Arc<[_]> = all
            .iter()
            .map(|p| {
                let fds = p.socks.iter().filter_map(|s| s.raw_fd()).collect();
                shard::help::Desk::new(fds, peers[p.id].clone())
            })
            .collect();
        let mut threads = Vec::with_capacity(n_threads);
        let mut rest = all.into_iter();
        for (poll, size) in groups {
            let group: Vec<_> = rest.by_ref().take(size).collect();
            threads.push(shard::spawn(
                group,
                poll,
                self.factory.clone(),
                desks.clone(),
                batch,
                self.turn_sharing,
            )?);
        }
        let mut engine = Engine {
            remote: Remote { mailboxes: peers },
            threads,
            stats,
            local_addr,
            certificate,
            bpf_attached,
            cid_len: shared.cid.cid_len(),
            shared,
            handover: None,
        };
        if let Some(plan) = plan {
            let mut injector = engine.injector().for_peer();
            let shared = &engine.shared;
            let handover = plan
                .finish(
                    shared.secrets.clone(),
                    shared.cid.clone(),
                    shared.retire.clone(),
                    Box::new(move |payload, remote, local| {
                        let _ = injector.inject(payload, remote, local);
                    }),
                )
                .map_err(handover_error)?;
            engine.bpf_attached = true;
            engine.handover = Some(handover);
        }
        Ok(self.layer.wrap(engine))
    }
}

/// A running engine: N shards serving one UDP port, each on its thread or in a group of shards
/// sharing one ([`Builder::threads`]), or unspawned shards that an app-driven backend runs
/// (`crate::direct`, which then owns their shutdown).
pub struct Engine<H: Handler> {
    pub(crate) remote: Remote<H>,
    pub(crate) threads: Vec<JoinHandle<()>>,
    pub(crate) stats: Vec<Arc<Counters>>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) certificate: Option<Vec<CertificateDer<'static>>>,
    pub(crate) bpf_attached: bool,
    pub(crate) cid_len: usize,
    /// What every shard shares (configuration, the ticket store).
    pub(crate) shared: Arc<Shared>,
    /// With [`Builder::handover`].
    pub(crate) handover: Option<crate::Handover>,
}

impl<H: Handler> Engine<H> {
    /// A builder; `factory` creates each shard's handler on that shard's thread.
    pub fn builder<F>(factory: F) -> Builder<H>
    where
        F: Fn(ShardId) -> H + Send + Sync + 'static,
    {
        Builder {
            factory: Arc::new(factory),
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            server_tls: None,
            client_config: None,
            transport: None,
            transport_factory: None,
            qlog_dir: None,
            key_log: None,
            quic_lb: None,
            shard_key: None,
            bpf: true,
            retry: false,
            retry_threshold: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            admission: crate::Admission::default(),
            alpn: Vec::new(),
            zero_rtt: false,
            preferred_address: false,
            ticket_capacity: crate::tickets::DEFAULT_TICKET_CAPACITY,
            ticket_key_lifetime: crate::tickets::DEFAULT_TICKET_KEY_LIFETIME,
            threads: None,
            batch_scheduling: None,
            turn_sharing: true,
            memory: MemoryBudget::default(),
            secrets: None,
            handover: None,
            inherited_cid: None,
            layer: (),
        }
    }

    /// The shared UDP address (with the actual port if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
    /// A handle to reach the shards from any thread.
    pub fn remote(&self) -> Remote<H> {
        self.remote.clone()
    }
    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.stats.len()
    }
    /// The self-signed certificate chain, if the engine generated its TLS config.
    pub fn certificate(&self) -> Option<&[CertificateDer<'static>]> {
        self.certificate.as_deref()
    }
    /// Whether the BPF steering program is attached.
    pub fn bpf_attached(&self) -> bool {
        self.bpf_attached
    }
    /// Length of the CIDs this engine issues (QUIC-LB part + shard byte).
    pub fn cid_len(&self) -> usize {
        self.cid_len
    }
    /// The key masking the shard byte of this engine's CIDs ([`Builder::shard_key`]).
    pub fn shard_key(&self) -> crate::steer::ShardKey {
        *self.shared.cid.shard_key()
    }
    /// The 0-RTT ticket store's counters (`None` without [`Builder::zero_rtt`]).
    pub fn ticket_stats(&self) -> Option<TicketStats> {
        match &self.shared.tickets {
            Tickets::ZeroRtt(store) => Some(store.stats()),
            Tickets::Stateless { .. } => None,
        }
    }

    /// A snapshot of every shard's counters, in shard order.
    pub fn stats(&self) -> Vec<ShardStats> {
        self.stats.iter().map(|c| c.snapshot()).collect()
    }

    /// Every shard's handshake durations (connection accepted or initiated to handshake
    /// complete), in shard order; buckets as in [`crate::stats::HANDSHAKE_BUCKETS_MICROS`].
    pub fn handshake_times(&self) -> Vec<HistogramSnapshot> {
        self.stats_reader().handshake_times()
    }

    /// A reader of the counters that any thread can keep (see [`StatsReader`]).
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader::new(&self.stats)
    }

    /// The handover state, with [`Builder::handover`].
    pub fn handover(&self) -> Option<&crate::Handover> {
        self.handover.as_ref()
    }

    /// Waits until every connection has closed by itself or `timeout` passed (after a successor
    /// took over, [`Builder::handover`]: this engine accepts none), or until the engine serves
    /// new connections again because its successor exited ([`Handover::replaced`] is false
    /// again). Returns how many were open when the wait began and when it ended.
    ///
    /// [`Handover::replaced`]: crate::Handover::replaced
    pub fn wait_drained(&self, timeout: Duration) -> crate::handover::Drained {
        let open = || self.stats().iter().map(|s| s.connections_open).sum::<u64>();
        let open_at_start = open();
        let deadline = Instant::now() + timeout;
        // taken back: the successor exited before the drain ended (see `crate::handover`)
        let taken_back = || self.handover().is_some_and(|h| !h.replaced());
        // the shards publish their open-connection gauge as connections close: a drain of
        // seconds needs no finer notice than a look every 10 ms
        while open() > 0 && Instant::now() < deadline && !taken_back() {
            std::thread::sleep(Duration::from_millis(10));
        }
        crate::handover::Drained {
            open_at_start,
            closed_at_timeout: open(),
        }
    }

    /// [`Engine::wait_drained`], then [`Engine::shutdown`] (the connections left are closed
    /// with CONNECTION_CLOSE). Returns the final counters and the drain's.
    pub fn drain(self, timeout: Duration) -> (Vec<ShardStats>, crate::handover::Drained) {
        let drained = self.wait_drained(timeout);
        (self.shutdown(Duration::from_secs(1)), drained)
    }

    /// Stops accepting, closes every connection with CONNECTION_CLOSE, drains until all are
    /// drained or `timeout` passed, joins the threads; returns the final counters.
    pub fn shutdown(mut self, timeout: Duration) -> Vec<ShardStats> {
        self.stop(timeout);
        self.stats()
    }

    /// Tells every shard to stop by now + `timeout` and joins the shard threads. A shard that
    /// already stopped (an app-driven backend stops its own first) is skipped.
    pub(crate) fn stop(&mut self, timeout: Duration) {
        if let Some(h) = self.handover.take() {
            h.close();
        }
        let deadline = Instant::now() + timeout;
        for mb in self.remote.mailboxes.iter() {
            // a closed mailbox means the shard already exited
            let _ = mb.send_blocking(Msg::Shutdown { deadline });
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a shard thread panicked");
            }
        }
    }
}

impl<H: Handler> Drop for Engine<H> {
    fn drop(&mut self) {
        if !self.threads.is_empty() || self.handover.is_some() {
            self.stop(Duration::ZERO);
        }
    }
}
