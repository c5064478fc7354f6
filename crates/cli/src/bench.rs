//! `quicshard bench`: a load generator on the engine (client connections spread over shards):
//! closed loops (`loadgen.rs`), or an open loop at a fixed rate (`--rate`, `loadgen/openloop.rs`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use indicatif::ProgressBar;

use crate::apps::client;
use crate::apps::{h3_client, ALPN_H3, ALPN_PERF};
use crate::loadgen::{self, Limit, Mode, Params};
use crate::{tlsfiles, Failure};

/// Arguments of `quicshard bench`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Server address (HOST:PORT); it must speak the perf protocol (`quicshard serve` does).
    #[arg(long)]
    connect: String,
    /// TLS server name (default: the host of --connect).
    #[arg(long)]
    server_name: Option<String>,
    /// Accept any server certificate (required unless the server's certificate is trusted via --ca).
    #[arg(long)]
    insecure: bool,
    /// Trust the CA certificates in this PEM file.
    #[arg(long, conflicts_with = "insecure")]
    ca: Option<std::path::PathBuf>,
    /// Concurrent connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Concurrent streams per connection (closed loops; --rate opens a stream per request).
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Bytes per request (bulk: downloaded; rr: each way).
    #[arg(long, default_value_t = 1024)]
    size: u64,
    /// Run this many seconds (with --rate: the schedule's length).
    #[arg(long, conflicts_with = "requests")]
    duration: Option<f64>,
    /// Run this many requests (default 1000 if --duration is absent; with --rate: schedule this
    /// many).
    #[arg(long)]
    requests: Option<u64>,
    /// Open loop (--mode rr, perf): issue this many requests per second in all, on a fixed
    /// schedule that does not wait for responses (request i is due at start + i/RATE), each on a
    /// new stream, round-robin over the connections. Latency counts from each request's due time,
    /// so queueing shows (no coordinated omission). At most 4096 requests are outstanding: due
    /// requests beyond that are reported as not issued; requests still outstanding 1 s after the
    /// schedule ends are reported as late.
    #[arg(long)]
    rate: Option<f64>,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Rr)]
    mode: Mode,
    /// Turn TLS session resumption off: every connection does a full handshake (certificate and
    /// signature). By default the client keeps up to 4096 tickets per server, so every connection
    /// after the first --connections resumes. The report counts the full handshakes.
    #[arg(long)]
    full_handshakes: bool,
    /// Client shard threads (default: one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Protocol: `perf` (quinn's perf protocol), or `h3`: with --mode rr each request is an
    /// HTTP/3 GET of --path (its body size is what the server's file has; --size is ignored).
    #[arg(long, value_enum, default_value_t = BenchAlpn::Perf)]
    alpn: BenchAlpn,
    /// The resource --alpn h3 GETs, e.g. /1k.bin (a file under the server's --root).
    #[arg(long)]
    path: Option<String>,
    /// Write a qlog trace of every connection into DIR (default: $QLOGDIR, else none).
    #[arg(long, value_name = "DIR")]
    qlog_dir: Option<std::path::PathBuf>,
}

/// The protocols `bench` generates load with.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BenchAlpn {
    /// quinn's perf protocol.
    Perf,
    /// HTTP/3 GETs (`--mode rr` only).
    H3,
}

pub(crate) fn run(args: Args) -> Result<(), Failure> {
    crate::diag::qlog_setup(args.qlog_dir.as_deref())?;
    let addr: SocketAddr = args
        .connect
        .to_socket_addrs()
        .map_err(|e| Failure::Usage(format!("--connect {}: {e}", args.connect)))?
        .next()
        .ok_or_else(|| Failure::Usage(format!("--connect {}: no address", args.connect)))?;
    let host = args
        .connect
        .rsplit_once(':')
        .map_or(args.connect.as_str(), |(h, _)| h);
    let server_name = args
        .server_name
        .clone()
        .unwrap_or_else(|| host.trim_matches(['[', ']']).to_string());
    if args.connections == 0 || args.streams == 0 {
        return Err(Failure::Usage(
            "--connections and --streams must be at least 1".into(),
        ));
    }
    let limit = match (args.duration, args.requests) {
        (Some(d), _) if d > 0.0 && d.is_finite() => Limit::Duration(Duration::from_secs_f64(d)),
        (Some(d), _) => return Err(Failure::Usage(format!("--duration {d}: must be positive"))),
        (None, Some(n)) => Limit::Requests(n),
        (None, None) => Limit::Requests(1000),
    };
    if args.mode == Mode::Idle && !matches!(limit, Limit::Duration(_)) {
        return Err(Failure::Usage("--mode idle needs --duration".into()));
    }
    match args.rate {
        Some(r) if !(r > 0.0 && r.is_finite()) => {
            return Err(Failure::Usage(format!("--rate {r}: must be positive")))
        }
        Some(_) if args.mode != Mode::Rr || args.alpn != BenchAlpn::Perf => {
            return Err(Failure::Usage(
                "--rate needs --mode rr with --alpn perf".into(),
            ))
        }
        _ => {}
    }
    let params = Params {
        addr,
        server_name,
        mode: args.mode,
        connections: args.connections,
        streams: args.streams,
        size: args.size,
        limit,
    };
    if args.alpn == BenchAlpn::H3 {
        return bench_h3(&args, &params);
    }
    // 0-RTT keys when a ticket allows them, as `tlsfiles::client`; counts full handshakes
    let tuning = tlsfiles::ClientTuning {
        early_data: true,
        resumption: if args.full_handshakes {
            tlsfiles::Resumption::Off
        } else {
            tlsfiles::Resumption::Many
        },
        ..Default::default()
    };
    let (client_cfg, full) = tlsfiles::client_tuned(
        args.insecure,
        args.ca.as_deref(),
        &[ALPN_PERF],
        false,
        &tuning,
    )?;
    let engine = client::engine(addr, client_cfg, args.shards)
        .map_err(|e| Failure::Refused(e.to_string()))?;
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    let mut report = match args.rate {
        Some(rate) => loadgen::openloop::run(&engine.remote(), &params, rate, &bar),
        None => loadgen::run(&engine.remote(), &params, &bar),
    };
    report.full_handshakes = Some(full.full.load(std::sync::atomic::Ordering::Relaxed) as u64);
    bar.finish_and_clear();
    engine.shutdown(Duration::from_secs(1));
    finish(&args, &report)
}

/// Prints the report; fails if no request completed.
fn finish(args: &Args, report: &loadgen::Report) -> Result<(), Failure> {
    if args.json {
        println!("{}", report.to_json());
    } else {
        report.print();
    }
    if report.requests == 0 && !(args.mode == Mode::Idle && report.handshakes > 0) {
        return Err(Failure::Refused(format!(
            "no request completed: {}",
            report.first_error.as_deref().unwrap_or("unknown error")
        )));
    }
    Ok(())
}

/// `--alpn h3`: HTTP/3 GETs of `--path` (see `apps/h3_client.rs`).
fn bench_h3(args: &Args, params: &Params) -> Result<(), Failure> {
    if args.mode != Mode::Rr {
        return Err(Failure::Usage("--alpn h3 supports --mode rr only".into()));
    }
    let path = args.path.as_deref().ok_or_else(|| {
        Failure::Usage("--alpn h3 needs --path /FILE (a file under the server's --root)".into())
    })?;
    let cfg = tlsfiles::client(args.insecure, args.ca.as_deref(), &[ALPN_H3], false)?;
    let report = h3_client::bench(params, cfg, args.shards, path)?;
    finish(args, &report)
}
