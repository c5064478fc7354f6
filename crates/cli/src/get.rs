//! `quicshard get`: downloads URLs of one authority over one connection (h3, or hq-interop),
//! streams in parallel, each body written under `--output` at its URL's path ([`target`]) or to
//! standard output in URL order. The host's addresses are tried in turn until one completes a
//! handshake ([`connect_each`]).

mod progress;
mod target;

use std::collections::VecDeque;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use quicshard::ShardId;

pub(crate) use progress::Progress;
use target::{Authority, Output};

use crate::apps::client::{self, Event, Plan, Request};
use crate::apps::h3_client::{self, Download, Fetch, GetOptions};
use crate::apps::{ALPN_H3, ALPN_HQ};
use crate::tlsfiles::{self, CertChecks};
use crate::Failure;

/// Streams open at once.
const PARALLEL: usize = 64;

/// Arguments of `quicshard get`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Accept any server certificate (no authentication).
    #[arg(long, conflicts_with = "ca")]
    insecure: bool,
    /// Trust only the CA certificates in this PEM file (default: the system's trust store, or
    /// the files SSL_CERT_FILE and SSL_CERT_DIR name).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Directory the files are written to, each at its URL's path (`https://h/a/n.txt` to
    /// DIR/a/n.txt; a path ending in `/` to index.html there); `-` writes the bodies to standard
    /// output in URL order. Two URLs that would write the same file are refused before
    /// anything is downloaded.
    #[arg(long, default_value = ".", value_name = "DIR")]
    output: String,
    /// Seconds each address may take to complete its handshake, and the longest time without
    /// progress after it.
    #[arg(long, default_value_t = 30, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// Use these addresses for HOST:PORT instead of resolving HOST (as curl's --resolve), tried in
    /// order: `localhost:4433:[::1],127.0.0.1`.
    #[arg(long, value_name = "HOST:PORT:ADDR[,ADDR]")]
    resolve: Option<String>,
    /// Write TLS secrets here (NSS key log format), for Wireshark; overrides $SSLKEYLOGFILE,
    /// which is honoured without it.
    #[arg(long)]
    keylog: Option<PathBuf>,
    /// Write a qlog trace of every connection into DIR (default: $QLOGDIR, else none).
    #[arg(long, value_name = "DIR")]
    qlog_dir: Option<PathBuf>,
    /// Offer only the TLS_CHACHA20_POLY1305_SHA256 cipher suite.
    #[arg(long)]
    chacha20: bool,
    /// Force a key update on the connection after the first file arrives.
    #[arg(long)]
    key_update: bool,
    /// Move the connection to a new server-issued connection ID once BYTES of response bodies
    /// arrived (retiring the old one), as RFC 9000 §9.5 asks of a client after a NAT rebinding:
    /// a tool for testing that a balancer keeps such a client on its server. Fails unless the
    /// move happened (the server issued a spare CID and the download was long enough).
    #[arg(long, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1..))]
    new_cid_after: Option<u64>,
    /// Download everything again over a second connection that resumes the first one's TLS
    /// session; fails unless the second handshake was resumed.
    #[arg(long)]
    resume: bool,
    /// Like --resume, sending the second connection's requests in 0-RTT; fails unless the server
    /// accepted them.
    #[arg(long)]
    zero_rtt: bool,
    /// Application protocol: `h3` or `hq-interop`. Default: offer both and use h3 if the server
    /// picks it (else the connection is closed and hq-interop used on a new one); --key-update,
    /// --new-cid-after, --resume and --zero-rtt are hq-interop only and imply it.
    #[arg(long, value_enum)]
    alpn: Option<Alpn>,
    /// https://HOST[:PORT]/PATH[?QUERY], all of the same host and port; HOST may be an IPv6
    /// literal in brackets.
    #[arg(required = true)]
    urls: Vec<String>,
}

/// The application protocols `get` speaks.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Alpn {
    /// HTTP/3.
    H3,
    /// HTTP/0.9 over QUIC, as the interop runner uses it.
    #[value(name = "hq-interop")]
    HqInterop,
}

/// Why one address gave no download.
enum Attempt {
    /// Every file arrived: the summary line.
    Done(String),
    /// No handshake with this address (why): the next address may do better.
    NoHandshake(String),
}

pub(crate) fn run(args: Args) -> Result<(), Failure> {
    let output = Output::from(args.output.as_str());
    let (authority, targets) = target::plan(&args.urls, &output)?;
    // standard output: the bodies go to numbered files of a private directory first
    let scratch = match output {
        Output::Stdout => Some(
            tempfile::Builder::new()
                .prefix("quicshard-get")
                .tempdir()
                .map_err(|e| Failure::Refused(format!("temporary directory: {e}")))?,
        ),
        Output::Dir(_) => None,
    };
    let dests: Vec<PathBuf> = match (&output, &scratch) {
        (Output::Dir(dir), _) => targets.iter().map(|t| dir.join(&t.file)).collect(),
        (Output::Stdout, Some(tmp)) => (0..targets.len())
            .map(|i| tmp.path().join(i.to_string()))
            .collect(),
        (Output::Stdout, None) => unreachable!("a scratch directory was made for stdout"),
    };
    for d in &dests {
        if let Some(parent) = d.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Failure::Usage(format!("--output: {}: {e}", parent.display())))?;
        }
    }
    let requests: VecDeque<Request> = (targets.iter().zip(&dests))
        .map(|(t, dest)| Request::Get {
            path: t.request.clone(),
            dest: dest.clone(),
        })
        .collect();
    let addrs = addresses(&authority, args.resolve.as_deref())?;
    if let Some(k) = &args.keylog {
        std::env::set_var(crate::diag::KEYLOG_ENV, k);
    }
    crate::diag::qlog_setup(args.qlog_dir.as_deref())?;
    let connections = if args.resume || args.zero_rtt { 2 } else { 1 };
    let mut progress = Progress::new((requests.len() * connections) as u64);
    let summary = connect_each(&args, &addrs, &authority, &requests, &progress)?;
    progress.finish();
    if output == Output::Stdout {
        to_stdout(&dests)?;
    }
    let place = match &output {
        Output::Dir(dir) => dir.display().to_string(),
        Output::Stdout => "standard output".into(),
    };
    eprintln!("downloaded {} file(s) to {place} {summary}", requests.len());
    Ok(())
}

/// The addresses to try for `authority`: `--resolve`'s when it names this host and port, else
/// every address the resolver returns (IPv6 and IPv4, in its order).
fn addresses(authority: &Authority, resolve: Option<&str>) -> Result<Vec<SocketAddr>, Failure> {
    let Authority { host, port } = authority;
    if let Some(spec) = resolve {
        let bad = |why: &str| Failure::Usage(format!("--resolve {spec}: {why}"));
        let (name, rest) = spec
            .split_once(':')
            .ok_or_else(|| bad("expected HOST:PORT:ADDR[,ADDR...]"))?;
        let (p, list) = rest
            .split_once(':')
            .ok_or_else(|| bad("expected HOST:PORT:ADDR[,ADDR...]"))?;
        let p: u16 = p.parse().map_err(|_| bad("bad port"))?;
        let addrs = list
            .split(',')
            .map(|a| {
                a.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, p))
                    .map_err(|_| bad(&format!("{a} is not an IP address")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if name.eq_ignore_ascii_case(host) && p == *port {
            return Ok(addrs);
        }
    }
    let addrs: Vec<SocketAddr> = (host.as_str(), *port)
        .to_socket_addrs()
        .map_err(|e| Failure::Refused(format!("{host}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(Failure::Refused(format!("{host}: no address")));
    }
    Ok(addrs)
}

/// Tries `addrs` in turn until one completes a handshake, then downloads everything from it: the
/// summary line, or an error naming every address tried and what happened there. A refused
/// certificate ends the search (every address serves the same name).
fn connect_each(
    args: &Args,
    addrs: &[SocketAddr],
    authority: &Authority,
    requests: &VecDeque<Request>,
    progress: &Progress,
) -> Result<String, Failure> {
    let mut tried = Vec::new();
    for &addr in addrs {
        match attempt(args, addr, authority, requests, progress)? {
            Attempt::Done(summary) => return Ok(summary),
            Attempt::NoHandshake(why) => tried.push(format!("{addr}: {why}")),
        }
    }
    Err(Failure::Refused(format!(
        "no connection to {}: {}",
        authority.to_header(),
        tried.join("; ")
    )))
}

/// A handshake that failed because the certificate was refused is final, in one sentence.
fn refused_certificate(
    checks: &CertChecks,
    addr: SocketAddr,
    host: &str,
    why: String,
) -> Result<Attempt, Failure> {
    match checks.refusal() {
        Some(sentence) => Err(Failure::Refused(format!("{host} ({addr}): {sentence}"))),
        None => Ok(Attempt::NoHandshake(why)),
    }
}

/// The downloads over `addr`: h3 when offered and picked, else hq-interop.
fn attempt(
    args: &Args,
    addr: SocketAddr,
    authority: &Authority,
    requests: &VecDeque<Request>,
    progress: &Progress,
) -> Result<Attempt, Failure> {
    let host = authority.host.as_str();
    let timeout = Duration::from_secs(args.timeout);
    let tuning = tlsfiles::ClientTuning {
        chacha20_only: args.chacha20,
        early_data: args.zero_rtt,
        ..Default::default()
    };
    if let Some(done) = try_h3(args, addr, authority, requests, &tuning, progress)? {
        return Ok(done);
    }
    let (client_cfg, cert_checks) = tlsfiles::client_tuned(
        args.insecure,
        args.ca.as_deref(),
        &[ALPN_HQ],
        crate::diag::keylog_wanted(),
        &tuning,
    )?;
    let extras = client::Extras {
        key_update: args.key_update,
        zero_rtt: args.zero_rtt,
        switch_cid_after: args.new_cid_after,
        ..Default::default()
    };
    let report = extras.report.clone();
    let engine = client::engine_with(addr, client_cfg, Some(1), extras)
        .map_err(|e| Failure::Refused(e.to_string()))?;
    let connections = if args.resume || args.zero_rtt { 2 } else { 1 };
    // Ok(Err(_)): no handshake at this address
    let mut result: Result<Result<(), Attempt>, Failure> = Ok(Ok(()));
    for first in [true, false].into_iter().take(connections) {
        result = match fetch(&engine, addr, host, requests.clone(), timeout, progress) {
            Ok(()) => Ok(Ok(())),
            // only the first connection's address is still open to question
            Err(Fetched::NoHandshake(why)) if first => {
                refused_certificate(&cert_checks, addr, host, why).map(Err)
            }
            Err(Fetched::NoHandshake(why)) => Err(Failure::Refused(why)),
            Err(Fetched::Failed(f)) => Err(f),
        };
        if !matches!(result, Ok(Ok(()))) {
            break;
        }
    }
    engine.shutdown(Duration::from_secs(1));
    match result {
        Ok(Ok(())) => {}
        Ok(Err(no_handshake)) => return Ok(no_handshake),
        Err(f) => return Err(f),
    }
    let checks = cert_checks.full.load(Ordering::Relaxed);
    if connections == 2 && checks != 1 {
        return Err(Failure::Refused(format!(
            "second connection not resumed: {checks} full certificate checks in 2 handshakes"
        )));
    }
    let (sent, accepted) = (
        report.zero_rtt_sent.load(Ordering::Relaxed),
        report.zero_rtt_accepted.load(Ordering::Relaxed),
    );
    if args.zero_rtt && (sent, accepted) != (1, 1) {
        return Err(Failure::Refused(format!(
            "0-RTT: sent on {sent} connection(s), accepted on {accepted}"
        )));
    }
    if args.key_update && report.key_updates.load(Ordering::Relaxed) == 0 {
        return Err(Failure::Refused("no key update was initiated".into()));
    }
    let moves = report.cid_moves.load(Ordering::Relaxed);
    if let (Some(bytes), true) = (args.new_cid_after, moves < connections as u64) {
        return Err(Failure::Refused(format!(
            "--new-cid-after {bytes}: {moves} of {connections} connection(s) moved to a new \
             connection ID (a shorter download, or a server that issued no spare ID)"
        )));
    }
    Ok(Attempt::Done(format!(
        "from {addr} over {connections} connection(s); key updates {}, 0-RTT {accepted}, \
         CID moves {moves}",
        report.key_updates.load(Ordering::Relaxed),
    )))
}

/// The h3 path (`--alpn h3`, or the default when no hq-interop-only flag is set): `Some` when
/// h3 did the downloads or could not connect, `None` when hq-interop should (the server did not
/// pick h3).
fn try_h3(
    args: &Args,
    addr: SocketAddr,
    authority: &Authority,
    requests: &VecDeque<Request>,
    tuning: &tlsfiles::ClientTuning,
    progress: &Progress,
) -> Result<Option<Attempt>, Failure> {
    let hq_only = args.key_update || args.new_cid_after.is_some() || args.resume || args.zero_rtt;
    let offer: &[&[u8]] = match (args.alpn, hq_only) {
        (Some(Alpn::HqInterop), _) | (None, true) => return Ok(None),
        (Some(Alpn::H3), true) => {
            return Err(Failure::Usage(
                "--key-update, --new-cid-after, --resume and --zero-rtt need --alpn hq-interop"
                    .into(),
            ))
        }
        (Some(Alpn::H3), false) => &[ALPN_H3],
        (None, false) => &[ALPN_H3, ALPN_HQ],
    };
    let (cfg, checks) = tlsfiles::client_tuned(
        args.insecure,
        args.ca.as_deref(),
        offer,
        crate::diag::keylog_wanted(),
        tuning,
    )?;
    let files: Vec<Download> = requests
        .iter()
        .filter_map(|r| match r {
            Request::Get { path, dest } => Some(Download {
                path: path.clone(),
                dest: dest.clone(),
            }),
            Request::Perf { .. } => None,
        })
        .collect();
    let opts = GetOptions {
        h3_only: args.alpn == Some(Alpn::H3),
        connect_limit: Duration::from_secs(args.timeout),
        progress,
    };
    let host = &authority.host;
    match h3_client::get(addr, host, &authority.to_header(), cfg, &files, &opts)? {
        Fetch::NotH3 => Ok(None),
        Fetch::NoHandshake(why) => refused_certificate(&checks, addr, host, why).map(Some),
        Fetch::H3(r) => {
            r?;
            Ok(Some(Attempt::Done(format!(
                "from {addr} over 1 connection(s) (h3)"
            ))))
        }
    }
}

/// Copies the downloaded bodies to standard output, in order.
fn to_stdout(files: &[PathBuf]) -> Result<(), Failure> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for f in files {
        let copy = |f: &Path, out: &mut dyn Write| -> std::io::Result<u64> {
            std::io::copy(&mut std::fs::File::open(f)?, out)
        };
        copy(f, &mut out).map_err(|e| Failure::Refused(format!("standard output: {e}")))?;
    }
    out.flush()
        .map_err(|e| Failure::Refused(format!("standard output: {e}")))
}

/// What the client's connections show when it gives up waiting: quinn-proto's counters per
/// connection (asked of the shard; empty if it does not answer within a second).
fn stall_report(engine: &quicshard::Engine<client::Client>) -> String {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let asked = engine.remote().run_on(ShardId(0), move |ctx, _| {
        let conns: Vec<String> = (ctx.connection_ids().into_iter())
            .filter_map(|id| ctx.connection(id).map(|c| c.stats()))
            .map(|s| {
                format!(
                    "{} datagrams sent, {} received, {} packets lost, rtt {:?}",
                    s.udp_tx.datagrams, s.udp_rx.datagrams, s.path.lost_packets, s.path.rtt
                )
            })
            .collect();
        let _ = tx.send(if conns.is_empty() {
            "no connection left".to_string()
        } else {
            conns.join("; ")
        });
    });
    match asked {
        Ok(()) => rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// How an hq-interop connection fell short.
enum Fetched {
    /// The handshake did not complete (why): nothing was downloaded.
    NoHandshake(String),
    /// Something failed after the handshake.
    Failed(Failure),
}

/// Downloads `requests` over one new connection; `Ok` iff every file arrived whole. Gives up when
/// nothing happens for `timeout`.
fn fetch(
    engine: &quicshard::Engine<client::Client>,
    addr: SocketAddr,
    host: &str,
    requests: VecDeque<Request>,
    timeout: Duration,
    progress: &Progress,
) -> Result<(), Fetched> {
    let total = requests.len() as u64;
    let (tx, rx) = crossbeam_channel::bounded(1024);
    let plan = Plan {
        addr,
        server_name: host.to_string(),
        requests,
        repeat: None,
        concurrency: PARALLEL,
        events: tx,
    };
    engine
        .remote()
        .run_on(ShardId(0), move |ctx, c| c.start(ctx, plan))
        .map_err(|e| Fetched::Failed(Failure::Refused(e.to_string())))?;
    let (mut ok, mut errors, mut connected) = (0u64, Vec::new(), false);
    loop {
        match rx.recv_timeout(timeout) {
            Ok(Event::Connected { .. }) => connected = true,
            Ok(Event::Done { bytes, .. }) => {
                ok += 1;
                progress.bytes(bytes);
                progress.file_done();
            }
            Ok(Event::Failed { reason }) => errors.push(reason),
            Ok(Event::Closed { error }) => {
                if !connected {
                    let why = error.unwrap_or_else(|| "closed during the handshake".into());
                    return Err(Fetched::NoHandshake(why));
                }
                errors.extend(error);
                break;
            }
            Err(_) if !connected => {
                return Err(Fetched::NoHandshake(format!(
                    "no handshake within {} s ({})",
                    timeout.as_secs(),
                    stall_report(engine)
                )))
            }
            Err(_) => {
                errors.push(format!(
                    "no progress for {} s after the handshake ({})",
                    timeout.as_secs(),
                    stall_report(engine)
                ));
                break;
            }
        }
    }
    if ok == total && errors.is_empty() {
        Ok(())
    } else {
        Err(Fetched::Failed(Failure::Refused(format!(
            "{ok} of {total} files downloaded; {}",
            errors
                .first()
                .map_or("connection ended early", String::as_str)
        ))))
    }
}
