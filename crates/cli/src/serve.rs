//! `quicshard serve`: files (hq-interop), perf and echo on N shards until SIGINT/SIGTERM; settings
//! from flags over a `--config` file, the certificate reloaded on SIGHUP ([`config`]).

mod config;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quicshard::ShardStats;

use crate::apps::{h3_server, SERVER_ALPNS};
use crate::{signals, tlsfiles, Failure};

/// How long a graceful shutdown waits for responses in flight to be acknowledged before it closes
/// the connections.
const RESPONSE_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often that wait asks the shards for their unacknowledged streams.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// `--drain-timeout`'s default: how long a replaced server waits for its connections.
const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 60;
/// How long a graceful shutdown waits for connections to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Arguments of `quicshard serve`.
#[derive(clap::Args, Clone)]
pub(crate) struct Args {
    /// TOML file with any of these settings, keyed by flag name (`shards = 4`,
    /// `cert = "cert.pem"`; relative paths from the file's directory); flags override it.
    /// SIGHUP reads it again and reloads the certificate and key for new handshakes; a change
    /// to any other setting is refused (it needs a restart).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// UDP address to serve on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// Shards (default: one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// Threads the shards run on, each running a fixed group of shards (default: one per
    /// shard, at most one per core; a value of at least --shards gives every shard its own).
    #[arg(long)]
    threads: Option<usize>,
    /// PEM certificate chain (default: a self-signed certificate for localhost).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key for --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Directory served by hq-interop (GET /path); without it every GET is not found.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Zero-downtime upgrades through the Unix socket PATH: if a `quicshard serve` with the same
    /// PATH runs, take over its port (it stops accepting, drains its connections and exits 0);
    /// else start fresh. Either way, listen at PATH for a successor. Needs the same --shards
    /// (at most 128) as the running server; its QUIC-LB config, server ID and keys are kept.
    #[arg(long, value_name = "PATH")]
    handover: Option<PathBuf>,
    /// With --handover: once replaced, how long to wait for this server's connections to close
    /// by themselves before closing the rest with CONNECTION_CLOSE.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_DRAIN_TIMEOUT_SECS)]
    drain_timeout: u64,
    /// Write per-shard counters as JSON here on exit (checked writable at start-up).
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR/metrics (TCP).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Write a qlog trace of every connection into DIR (default: $QLOGDIR, else none).
    #[arg(long, value_name = "DIR")]
    qlog_dir: Option<PathBuf>,
    /// Do not attach the BPF steering program (the kernel hash plus handoff only).
    #[arg(long)]
    no_bpf: bool,
    /// Never give a shard's turn to another shard's thread (turn sharing is on by default: a
    /// running shard thread serves another thread's shard whose input waited over 100 µs).
    #[arg(long)]
    no_turn_sharing: bool,
    /// Send a Retry to every new client (address validation).
    #[arg(long)]
    retry: bool,
    /// Send Retries only while N or more handshakes are in progress on a shard (load-based
    /// address validation against Initial floods).
    #[arg(long, value_name = "N", conflicts_with = "retry")]
    retry_threshold: Option<usize>,
    /// Connections per shard beyond which new ones are refused (CONNECTION_REFUSED).
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// New connections each shard accepts per loop turn, after the turn's traffic on
    /// established connections (each costs an ECDHE and a signature) [default: 4].
    #[arg(long, value_name = "N")]
    handshakes_per_turn: Option<usize>,
    /// New connections that may wait per shard for a later turn; beyond them an Initial is
    /// refused with CONNECTION_REFUSED [default: 1024].
    #[arg(long, value_name = "N")]
    handshake_queue: Option<usize>,
    /// Close connections idle for this many milliseconds (transport parameter max_idle_timeout).
    #[arg(long, value_name = "MS")]
    idle_timeout: Option<u32>,
    /// Bidirectional streams a client may have open at once (initial_max_streams_bidi).
    #[arg(long, value_name = "N")]
    max_streams: Option<u32>,
    /// Bytes a client may send on one stream ahead of the server reading them (default
    /// 1 MiB; at most --conn-window).
    #[arg(long, value_name = "BYTES")]
    stream_window: Option<u32>,
    /// Bytes a client may send on one connection ahead of the server reading them (default
    /// 1 MiB).
    #[arg(long, value_name = "BYTES")]
    conn_window: Option<u32>,
    /// The most response data one connection holds until its client acknowledges it (default
    /// 2 MiB); connections share --send-pool, each getting at least 256 KiB.
    #[arg(long, value_name = "BYTES")]
    send_window: Option<u64>,
    /// Unacknowledged response data one shard's connections hold together (default 16 MiB): what
    /// clients that stop reading cost.
    #[arg(long, value_name = "BYTES")]
    send_pool: Option<u64>,
    /// Bytes one shard may commit to its connections: the send pool plus, per connection, its
    /// --conn-window, its smallest send window and 32 KiB; new connections beyond it are refused
    /// (default 16 GiB).
    #[arg(long, value_name = "BYTES")]
    memory_budget: Option<u64>,
    /// This server's QUIC-LB server ID (hex); needs --quic-lb-config.
    #[arg(long, requires = "quic_lb_config")]
    server_id: Option<String>,
    /// A load balancer's TOML file: its [[quic_lb]] tables are read, the rest ignored.
    #[arg(long, requires = "server_id")]
    quic_lb_config: Option<PathBuf>,
    /// Which [[quic_lb]] codepoint to issue CIDs with (default: the last table in the file).
    #[arg(long, requires = "quic_lb_config")]
    quic_lb_id: Option<u8>,
    /// Direct server return: also read IP-in-UDP datagrams from a `quicshard lb` in dsr mode on
    /// this UDP address; each client datagram inside is served as if it had arrived on --listen
    /// and answered from there straight to the client. Bind it to an address only the load
    /// balancer can reach: whoever can send here can make the server send to any address.
    #[arg(long)]
    decap: Option<SocketAddr>,
    /// Accept 0-RTT: single-use session tickets in one store shared by all shards (a replayed
    /// 0-RTT flight falls back to a full handshake on any shard).
    #[arg(long)]
    zero_rtt: bool,
    /// Advertise each shard's own port (on the --listen IP) as the preferred address; clients
    /// that migrate there reach their shard directly.
    #[arg(long)]
    preferred_address: bool,
    /// HTTP/3: requests of one connection handled at once; further request streams wait.
    #[arg(long, value_name = "N", default_value_t = quicshard_h3::files::DEFAULT_MAX_CONCURRENT)]
    h3_max_requests: usize,
}

/// The QUIC-LB config and server ID from `--quic-lb-config` / `--server-id` / `--quic-lb-id`.
fn quic_lb(args: &Args) -> Result<Option<(quic_lb::Config, Vec<u8>)>, Failure> {
    let (Some(path), Some(sid)) = (&args.quic_lb_config, &args.server_id) else {
        return Ok(None);
    };
    let sid =
        hex::decode(sid).map_err(|e| Failure::Usage(format!("--server-id {sid}: not hex: {e}")))?;
    let entries = quicshard_lb::config::quic_lb_from_file(path)
        .map_err(|e| Failure::Usage(crate::lb::config_error(path, &e)))?;
    let entry = match args.quic_lb_id {
        Some(id) => entries.iter().find(|e| e.config.config_id() == id),
        None => entries.last(),
    }
    .ok_or_else(|| {
        Failure::Usage(format!(
            "{}: no [[quic_lb]] table{}",
            path.display(),
            args.quic_lb_id
                .map_or(String::new(), |id| format!(" with id {id}"))
        ))
    })?;
    if sid.len() != entry.config.server_id_len() {
        return Err(Failure::Usage(format!(
            "--server-id is {} bytes but quic_lb id {} has server_id_len {}",
            sid.len(),
            entry.config.config_id(),
            entry.config.server_id_len()
        )));
    }
    Ok(Some((entry.config, sid)))
}

/// Waits until no hq-interop, perf or echo connection has stream data its client has not
/// acknowledged, or `timeout` passed, so that every response the server finished reaches the
/// client before `Engine::shutdown` closes the connections; returns the streams still pending,
/// or `None` if a shard did not answer (it is not waited on).
/// h3 connections are left to the h3 service's own drain (their control streams never end).
fn drain_responses<H: quicshard::Handler>(
    engine: &quicshard::Engine<H>,
    timeout: Duration,
) -> Option<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let (tx, rx) = crossbeam_channel::bounded(engine.shards());
        for shard in 0..engine.shards() {
            let tx = tx.clone();
            let asked = engine
                .remote()
                .run_on(quicshard::ShardId(shard), move |ctx, _| {
                    let _ = tx.send(unacked_streams(ctx));
                });
            if asked.is_err() {
                return Some(0); // the shard is gone: nothing left to drain there
            }
        }
        drop(tx);
        let mut pending = 0;
        for _ in 0..engine.shards() {
            match rx.recv_timeout(timeout) {
                Ok(n) => pending += n,
                Err(_) => return None, // a shard did not answer: do not wait on it
            }
        }
        if pending == 0 || Instant::now() >= deadline {
            return Some(pending);
        }
        std::thread::sleep(DRAIN_POLL);
    }
}

/// Streams of this shard's open, non-h3 connections that may have unacknowledged data.
fn unacked_streams(ctx: &mut quicshard::ShardCtx<'_>) -> usize {
    let mut pending = 0;
    for id in ctx.connection_ids() {
        let Some(c) = ctx.connection(id) else {
            continue;
        };
        if !c.is_closed() && crate::apps::alpn(c).as_deref() != Some(crate::apps::ALPN_H3) {
            pending += c.streams().send_streams();
        }
    }
    pending
}

/// A maker of the transport config of the limit flags, if any is set (a maker: traced
/// connections each need their own config). The windows come from the memory budget
/// ([`memory`]), which the engine applies to every config.
fn transport(
    args: &Args,
) -> Option<impl Fn() -> quinn_proto::TransportConfig + Send + Sync + 'static> {
    use quinn_proto::VarInt;
    let (idle, streams) = (args.idle_timeout, args.max_streams);
    if idle.is_none() && streams.is_none() {
        return None;
    }
    Some(move || {
        let mut t = quinn_proto::TransportConfig::default();
        if let Some(ms) = idle {
            t.max_idle_timeout(Some(VarInt::from_u32(ms).into()));
        }
        if let Some(n) = streams {
            t.max_concurrent_bidi_streams(VarInt::from_u32(n));
        }
        t
    })
}

/// The memory budget of the window flags (the engine's defaults for those not given).
fn memory(args: &Args) -> Result<quicshard::MemoryBudget, Failure> {
    let d = quicshard::MemoryBudget::default();
    let receive_window = args.conn_window.map_or(d.receive_window, u64::from);
    let m = quicshard::MemoryBudget {
        send_window: args.send_window.unwrap_or(d.send_window),
        send_pool: args.send_pool.unwrap_or(d.send_pool),
        receive_window,
        stream_receive_window: args
            .stream_window
            .map_or(d.stream_receive_window.min(receive_window), u64::from),
        per_shard: args.memory_budget.unwrap_or(d.per_shard),
    };
    if args
        .stream_window
        .is_some_and(|s| u64::from(s) > receive_window)
    {
        return Err(Failure::Usage(
            "--stream-window must not exceed --conn-window".into(),
        ));
    }
    m.validate().map_err(|e| {
        Failure::Usage(format!(
            "{e} (see --send-window, --send-pool, --conn-window, --stream-window, --memory-budget)"
        ))
    })?;
    Ok(m)
}

pub(crate) fn run(cli: Args) -> Result<(), Failure> {
    let mut args = config::effective(&cli)?;
    let root = match &args.root {
        Some(r) => Some(Arc::new(
            r.canonicalize()
                .ok()
                .filter(|p| p.is_dir())
                .ok_or_else(|| {
                    Failure::Usage(format!("--root {}: not a directory", r.display()))
                })?,
        )),
        None => None,
    };
    crate::diag::check_stats_file(args.stats_file.as_deref())?;
    crate::diag::qlog_setup(args.qlog_dir.as_deref())?;
    let h3_root = root.clone();
    let mut builder = h3_server::builder(root)
        .listen(args.listen)
        .alpn(SERVER_ALPNS)
        .bpf(!args.no_bpf)
        .turn_sharing(!args.no_turn_sharing)
        .retry(args.retry)
        .zero_rtt(args.zero_rtt)
        .preferred_address(args.preferred_address);
    if args.handshakes_per_turn.is_some() || args.handshake_queue.is_some() {
        let d = quicshard::Admission::default();
        let per_turn = match crate::count_flag("handshakes-per-turn", args.handshakes_per_turn)? {
            Some(n) => n,
            None => d.per_turn,
        };
        builder = builder.admission(quicshard::Admission {
            per_turn,
            queue: args.handshake_queue.unwrap_or(d.queue),
        });
    }
    if let Some(n) = args.retry_threshold {
        builder = builder.retry_threshold(n);
    }
    if let Some(n) = args.max_connections {
        builder = builder.max_connections_per_shard(n);
    }
    builder = builder.memory(memory(&args)?);
    if let Some(t) = transport(&args) {
        builder = builder.transport_factory(t);
    }
    builder = crate::diag::with_keylog(crate::diag::with_qlog(builder));
    if let Some(n) = crate::count_flag("shards", args.shards)? {
        builder = builder.shards(n);
    }
    if let Some(n) = crate::count_flag("threads", args.threads)? {
        builder = builder.threads(n);
    }
    if let Some((config, sid)) = quic_lb(&args)? {
        builder = builder.quic_lb(config, &sid);
    }
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        builder = builder.server_tls(tlsfiles::server_from_files(cert, key, SERVER_ALPNS)?);
    }
    if let Some(path) = &args.handover {
        builder = builder.handover(path);
    }
    signals::block_termination().map_err(|e| Failure::Refused(format!("signals: {e}")))?;
    let engine = Arc::new(
        builder
            .start()
            .map_err(|e| Failure::Refused(e.to_string()))?,
    );
    let h3_root = h3_root.as_deref().map(|p| p.as_path());
    let h3 = h3_server::spawn(&engine, h3_root, args.h3_max_requests)?;
    let decap = match args.decap {
        Some(addr) => Some(decap::start(addr, engine.local_addr(), engine.injector())?),
        None => None,
    };
    let metrics = match args.metrics {
        Some(addr) => Some(crate::metrics::start(
            addr,
            crate::metrics::EngineCollector(engine.stats_reader()),
        )?),
        None => None,
    };
    println!("listening on {}", engine.local_addr());
    if let Some(m) = &metrics {
        println!("metrics on http://{}/metrics", m.addr());
    }
    tracing::info!(
        shards = engine.shards(),
        bpf = engine.bpf_attached(),
        cid_len = engine.cid_len(),
        generation = engine.handover().map(|h| h.generation()),
        "serving"
    );
    let drained = loop {
        match config::serve_until_termination(&engine, &cli, &mut args)? {
            config::End::Signal(sig) => {
                tracing::info!(signal = sig, "shutting down");
                break None;
            }
            config::End::Replaced => {
                let timeout = Duration::from_secs(args.drain_timeout);
                tracing::info!(?timeout, "replaced by a successor; draining");
                let d = engine.wait_drained(timeout);
                if engine.handover().is_some_and(|h| !h.replaced()) {
                    tracing::warn!(
                        "the successor exited before this server drained: serving again"
                    );
                    continue;
                }
                tracing::info!(
                    open_at_start = d.open_at_start,
                    closed_at_timeout = d.closed_at_timeout,
                    "drained"
                );
                break Some(d);
            }
        }
    };
    // stop feeding the shards before they drain
    let decap = decap.map(decap::Decap::stop);
    match drain_responses(&engine, RESPONSE_DRAIN_TIMEOUT) {
        Some(0) => {}
        Some(unacked) => eprintln!(
            "shutdown: {unacked} stream(s) still unacknowledged after {} s; closing anyway",
            RESPONSE_DRAIN_TIMEOUT.as_secs()
        ),
        None => eprintln!("shutdown: a shard did not answer the drain check; closing anyway"),
    }
    let engine_handover = engine.handover().map(|h| h.stats());
    let stats = h3.shutdown(engine, DRAIN_TIMEOUT);
    if let Some(m) = metrics {
        m.stop();
    }
    let mut json = stats_json(&stats);
    if let Some(h) = engine_handover {
        json["handover"] = handover_json(h, drained);
        eprintln!("handover: {}", json["handover"]);
    }
    if let Some(d) = &decap {
        json["decap"] = d.to_json();
        eprintln!("decap: {}", d.to_json());
    }
    if let Some(path) = &args.stats_file {
        std::fs::write(path, json.to_string())
            .map_err(|e| Failure::Refused(format!("--stats-file {}: {e}", path.display())))?;
    }
    print_stats(&stats);
    Ok(())
}

/// `{"generation": 2, "replaced": true, "forwarded_out": ..., "open_at_drain": ...}`: the
/// connections open when the drain began, those that closed by themselves (`drained`) and those
/// closed at the drain timeout.
fn handover_json(
    h: quicshard::HandoverStats,
    drained: Option<quicshard::handover::Drained>,
) -> serde_json::Value {
    let d = drained.unwrap_or_default();
    serde_json::json!({
        "generation": h.generation,
        "replaced": h.replaced,
        "forwarded_out": h.forwarded_out,
        "forward_dropped": h.forward_dropped,
        "forwarded_in": h.forwarded_in,
        "takeover_ms": h.takeover_micros as f64 / 1e3,
        "open_at_drain": d.open_at_start,
        "drained": d.open_at_start - d.closed_at_timeout,
        "closed_at_drain_timeout": d.closed_at_timeout,
    })
}

/// `{"shards": [{"shard": 0, ...counters}, ...]}`.
pub(crate) fn stats_json(stats: &[ShardStats]) -> serde_json::Value {
    let shards: Vec<_> = stats
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut m = serde_json::Map::new();
            m.insert("shard".into(), i.into());
            for (name, v) in s.fields() {
                m.insert(name.into(), v.into());
            }
            let dropped = s.dropped_malformed
                + s.dropped_unknown_cid
                + s.dropped_endpoint
                + s.dropped_queue_full
                + s.dropped_budget
                + s.dropped_send_error;
            m.insert("dropped".into(), dropped.into());
            serde_json::Value::Object(m)
        })
        .collect();
    serde_json::json!({ "shards": shards })
}

/// One line per shard on stderr (stdout carries only the `listening on` and `metrics on` lines).
pub(crate) fn print_stats(stats: &[ShardStats]) {
    for (i, s) in stats.iter().enumerate() {
        eprintln!(
            "shard {i}: accepted {} handshakes {} datagrams in {} out {} handoffs in {} out {} retry {} panics {}",
            s.connections_accepted, s.handshakes, s.datagrams_in, s.datagrams_out, s.handoffs_in, s.handoffs_out, s.retry_sent, s.handler_panics
        );
    }
}

/// `--decap`: the backend side of the load balancer's DSR mode.
///
/// One thread reads the decap socket; each datagram is an encapsulation made by
/// `quicshard_lb::encap` (inner IP + UDP header naming the client and the virtual address, then
/// the client's datagram). The client datagram is posted to its owning shard through an
/// [`quicshard::Injector`] with the client as the remote address and the virtual address as the
/// local one, so the shard answers the client directly from its listen socket. Datagrams that do
/// not decapsulate, or whose virtual address is not the listen address, are counted and dropped.
mod decap {
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::Duration;

    use quicshard::{InjectStats, Injector};

    use quicshard::handle::HandleHandler;

    use crate::Failure;

    /// How long a read blocks before the thread checks for shutdown.
    const STOP_CHECK: Duration = Duration::from_millis(100);
    /// Receive buffer asked for on the decap socket (capped by `net.core.rmem_max`). Why: the
    /// load balancer sends in `sendmmsg` bursts; the default buffer drops part of a burst while
    /// the thread is descheduled.
    const SOCKET_BUFFER_BYTES: usize = 4 << 20;

    /// What the decap thread counted.
    #[derive(Debug, Default, Clone, Copy)]
    pub(super) struct Counts {
        /// Datagrams read from the decap socket.
        received: u64,
        /// Dropped: not a valid encapsulation (`quicshard_lb::encap::EncapError`).
        decap_errors: u64,
        /// Dropped: the inner destination is not the listen address.
        wrong_destination: u64,
        /// Socket errors other than timeouts.
        recv_errors: u64,
    }

    /// The running decap thread.
    pub(super) struct Decap {
        stop: Arc<AtomicBool>,
        thread: JoinHandle<Counts>,
        injector: Injector<HandleHandler>,
    }

    /// The decap thread's final counters and the injector's.
    pub(super) struct Stopped {
        counts: Counts,
        inject: InjectStats,
    }

    /// Binds `addr` and starts the thread feeding `injector`; `listen` is the engine's address,
    /// which every inner destination must match (its IP only if `listen` has a specific one).
    pub(super) fn start(
        addr: SocketAddr,
        listen: SocketAddr,
        injector: Injector<HandleHandler>,
    ) -> Result<Decap, Failure> {
        let sock =
            UdpSocket::bind(addr).map_err(|e| Failure::Refused(format!("--decap {addr}: {e}")))?;
        let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        sock.set_read_timeout(Some(STOP_CHECK))
            .map_err(|e| Failure::Refused(format!("--decap {addr}: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (s, inj) = (stop.clone(), injector.clone());
        let thread = std::thread::Builder::new()
            .name("decap".into())
            .spawn(move || run(&sock, listen, inj, &s))
            .map_err(|e| Failure::Refused(format!("--decap: spawn: {e}")))?;
        tracing::info!(%addr, %listen, "decapsulating DSR datagrams");
        Ok(Decap {
            stop,
            thread,
            injector,
        })
    }

    fn run(
        sock: &UdpSocket,
        listen: SocketAddr,
        mut inj: Injector<HandleHandler>,
        stop: &AtomicBool,
    ) -> Counts {
        let mut c = Counts::default();
        // One maximal UDP payload: nothing is ever truncated.
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => {
                    c.recv_errors += 1;
                    continue;
                }
            };
            c.received += 1;
            let Ok((repr, payload)) = quicshard_lb::encap::decap(&buf[..n]) else {
                c.decap_errors += 1;
                continue;
            };
            if !serves(listen, repr.dst) {
                c.wrong_destination += 1;
                continue;
            }
            // Dropped datagrams are counted by the injector; the client retransmits.
            let _ = inj.inject(payload, repr.src, Some(repr.dst.ip()));
        }
        c
    }

    /// Whether a datagram sent to `dst` is for the engine listening on `listen`.
    fn serves(listen: SocketAddr, dst: SocketAddr) -> bool {
        dst.port() == listen.port()
            && dst.is_ipv4() == listen.is_ipv4()
            && (listen.ip().is_unspecified() || listen.ip() == dst.ip())
    }

    impl Decap {
        /// Stops and joins the thread.
        pub(super) fn stop(self) -> Stopped {
            self.stop.store(true, Ordering::Relaxed);
            let counts = self.thread.join().unwrap_or_else(|_| {
                tracing::error!("decap thread panicked");
                Counts::default()
            });
            Stopped {
                counts,
                inject: self.injector.stats(),
            }
        }
    }

    impl Stopped {
        pub(super) fn to_json(&self) -> serde_json::Value {
            let (c, i) = (&self.counts, &self.inject);
            serde_json::json!({
                "received": c.received,
                "injected": i.injected,
                "injected_by_address_hash": i.hashed,
                "dropped_decap_error": c.decap_errors,
                "dropped_wrong_destination": c.wrong_destination,
                "dropped_queue_full": i.dropped_queue_full,
                "dropped_other": i.dropped_empty + i.dropped_closed,
                "recv_errors": c.recv_errors,
            })
        }
    }

    #[cfg(test)]
    mod tests {
        use super::serves;

        #[test]
        fn destination_must_be_the_listen_address() {
            let p = |s: &str| s.parse().unwrap();
            assert!(serves(p("10.99.0.100:443"), p("10.99.0.100:443")));
            assert!(serves(p("0.0.0.0:443"), p("10.99.0.100:443")));
            assert!(!serves(p("10.99.0.100:443"), p("10.99.0.101:443")));
            assert!(!serves(p("10.99.0.100:443"), p("10.99.0.100:444")));
            assert!(!serves(p("[::]:443"), p("10.99.0.100:443")));
        }
    }
}
