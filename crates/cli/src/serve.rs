//! `quicshard serve`: files (hq-interop), perf and echo on N shards until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quicshard::{Engine, ShardStats};

use crate::apps::server::Server;
use crate::apps::SERVER_ALPNS;
use crate::{signals, tlsfiles, Failure};

/// How long a graceful shutdown waits for connections to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Arguments of `quicshard serve`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// UDP address to serve on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// Shard threads (default: one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// PEM certificate chain (default: a self-signed certificate for localhost).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key for --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Directory served by hq-interop (GET /path); without it every GET is not found.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Write per-shard counters as JSON here on exit.
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Do not attach the BPF steering program (the kernel hash plus handoff only).
    #[arg(long)]
    no_bpf: bool,
    /// Send a Retry to every new client (address validation).
    #[arg(long)]
    retry: bool,
    /// This server's QUIC-LB server ID (hex); needs --quic-lb-config.
    #[arg(long, requires = "quic_lb_config")]
    server_id: Option<String>,
    /// A load balancer's TOML file: its [[quic_lb]] tables are read, the rest ignored.
    #[arg(long, requires = "server_id")]
    quic_lb_config: Option<PathBuf>,
    /// Which [[quic_lb]] codepoint to issue CIDs with (default: the last table in the file).
    #[arg(long, requires = "quic_lb_config")]
    quic_lb_id: Option<u8>,
}

/// The QUIC-LB config and server ID from `--quic-lb-config` / `--server-id` / `--quic-lb-id`.
fn quic_lb(args: &Args) -> Result<Option<(quic_lb::Config, Vec<u8>)>, Failure> {
    let (Some(path), Some(sid)) = (&args.quic_lb_config, &args.server_id) else {
        return Ok(None);
    };
    let sid =
        hex::decode(sid).map_err(|e| Failure::Usage(format!("--server-id {sid}: not hex: {e}")))?;
    let entries = quicshard_lb::config::quic_lb_from_file(path)
        .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
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

pub(crate) fn run(args: Args) -> Result<(), Failure> {
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
    let mut builder = Engine::builder(move |_| Server::new(root.clone()))
        .listen(args.listen)
        .alpn(SERVER_ALPNS)
        .bpf(!args.no_bpf)
        .retry(args.retry);
    if let Some(n) = args.shards {
        if n == 0 || n > 256 {
            return Err(Failure::Usage(format!("--shards {n}: must be 1..=256")));
        }
        builder = builder.shards(n);
    }
    if let Some((config, sid)) = quic_lb(&args)? {
        builder = builder.quic_lb(config, &sid);
    }
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        builder = builder.server_tls(tlsfiles::server_from_files(cert, key, SERVER_ALPNS)?);
    }
    signals::block_termination().map_err(|e| Failure::Refused(format!("signals: {e}")))?;
    let engine = builder
        .start()
        .map_err(|e| Failure::Refused(e.to_string()))?;
    println!("listening on {}", engine.local_addr());
    tracing::info!(
        shards = engine.shards(),
        bpf = engine.bpf_attached(),
        cid_len = engine.cid_len(),
        "serving"
    );
    let sig = signals::wait_termination().map_err(|e| Failure::Refused(format!("signals: {e}")))?;
    tracing::info!(signal = sig, "shutting down");
    let stats = engine.shutdown(DRAIN_TIMEOUT);
    if let Some(path) = &args.stats_file {
        std::fs::write(path, stats_json(&stats).to_string())
            .map_err(|e| Failure::Refused(format!("--stats-file {}: {e}", path.display())))?;
    }
    print_stats(&stats);
    Ok(())
}

/// `{"shards": [{"shard": 0, ...counters}, ...]}`.
pub(crate) fn stats_json(stats: &[ShardStats]) -> serde_json::Value {
    let shards: Vec<_> = stats
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({
                "shard": i,
                "connections_accepted": s.connections_accepted,
                "connections_open": s.connections_open,
                "connections_closed": s.connections_closed,
                "connections_refused": s.connections_refused,
                "handshakes": s.handshakes,
                "datagrams_in": s.datagrams_in,
                "datagrams_out": s.datagrams_out,
                "handoffs_in": s.handoffs_in,
                "handoffs_out": s.handoffs_out,
                "handoffs_in_short": s.handoffs_in_short,
                "dropped": s.dropped_malformed + s.dropped_unknown_cid + s.dropped_queue_full + s.dropped_budget + s.dropped_send_error,
                "dropped_malformed": s.dropped_malformed,
                "dropped_unknown_cid": s.dropped_unknown_cid,
                "dropped_queue_full": s.dropped_queue_full,
                "dropped_send_error": s.dropped_send_error,
                "retry_sent": s.retry_sent,
                "handler_panics": s.handler_panics,
            })
        })
        .collect();
    serde_json::json!({ "shards": shards })
}

/// One line per shard on stderr (stdout carries only the `listening on` line).
pub(crate) fn print_stats(stats: &[ShardStats]) {
    for (i, s) in stats.iter().enumerate() {
        eprintln!(
            "shard {i}: accepted {} handshakes {} datagrams in {} out {} handoffs in {} out {} retry {} panics {}",
            s.connections_accepted, s.handshakes, s.datagrams_in, s.datagrams_out, s.handoffs_in, s.handoffs_out, s.retry_sent, s.handler_panics
        );
    }
}
