//! `quicshard get`: downloads URLs of one authority over one connection (hq-interop), streams in
//! parallel, each file written under `--output` by its base name.

use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use quicshard::ShardId;

use crate::apps::client::{self, Event, Plan, Request};
use crate::apps::h3_client::{self, Download, Fetch};
use crate::apps::{ALPN_H3, ALPN_HQ};
use crate::{tlsfiles, Failure};

/// Streams open at once.
const PARALLEL: usize = 64;
/// Give up if nothing at all happens for this long.
const IDLE_LIMIT: Duration = Duration::from_secs(30);

/// Arguments of `quicshard get`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Accept any server certificate (no authentication).
    #[arg(long, conflicts_with = "ca")]
    insecure: bool,
    /// Trust the CA certificates in this PEM file.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Directory the files are written to.
    #[arg(long, default_value = ".")]
    output: PathBuf,
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
    /// --resume and --zero-rtt are hq-interop only and imply it.
    #[arg(long, value_enum)]
    alpn: Option<Alpn>,
    /// https://HOST:PORT/PATH, all of the same authority.
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

/// `(host, port, path)` of an https URL.
fn parse_url(url: &str) -> Result<(String, u16, String), Failure> {
    let bad = |why: &str| Failure::Usage(format!("{url}: {why}"));
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| bad("not an https:// URL"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed [ in host"))?;
        (h.to_string(), p.strip_prefix(':').unwrap_or("443"))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p),
            None => (authority.to_string(), "443"),
        }
    };
    let port = port.parse().map_err(|_| bad("bad port"))?;
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((host, port, path.to_string()))
}

pub(crate) fn run(args: Args) -> Result<(), Failure> {
    let mut authority = None;
    let mut requests = VecDeque::new();
    std::fs::create_dir_all(&args.output)
        .map_err(|e| Failure::Usage(format!("--output {}: {e}", args.output.display())))?;
    for url in &args.urls {
        let (host, port, path) = parse_url(url)?;
        if authority.get_or_insert((host.clone(), port)) != &(host.clone(), port) {
            return Err(Failure::Usage(format!(
                "{url}: all URLs must have the same host and port"
            )));
        }
        let name = path
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("index.html");
        requests.push_back(Request::Get {
            path: path.clone(),
            dest: args.output.join(name),
        });
    }
    let (host, port) = authority.expect("at least one URL (clap requires it)");
    let addr: SocketAddr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| Failure::Usage(format!("{host}: {e}")))?
        .next()
        .ok_or_else(|| Failure::Usage(format!("{host}: no address")))?;
    if let Some(k) = &args.keylog {
        std::env::set_var(crate::diag::KEYLOG_ENV, k);
    }
    crate::diag::qlog_setup(args.qlog_dir.as_deref())?;
    let tuning = tlsfiles::ClientTuning {
        chacha20_only: args.chacha20,
        early_data: args.zero_rtt,
        ..Default::default()
    };
    if try_h3(&args, addr, &host, port, &requests, &tuning)? {
        return Ok(());
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
        ..Default::default()
    };
    let report = extras.report.clone();
    let engine = client::engine_with(addr, client_cfg, Some(1), extras)
        .map_err(|e| Failure::Refused(e.to_string()))?;
    let connections = if args.resume || args.zero_rtt { 2 } else { 1 };
    let mut result = Ok(());
    for _ in 0..connections {
        result = fetch(&engine, addr, &host, requests.clone());
        if result.is_err() {
            break;
        }
    }
    engine.shutdown(Duration::from_secs(1));
    result?;
    let checks = cert_checks.load(Ordering::Relaxed);
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
    eprintln!(
        "downloaded {} file(s) to {} over {connections} connection(s); key updates {}, 0-RTT {accepted}",
        requests.len(),
        args.output.display(),
        report.key_updates.load(Ordering::Relaxed),
    );
    Ok(())
}

/// The h3 path (`--alpn h3`, or the default when no hq-interop-only flag is set): `Ok(true)` when
/// h3 did the downloads, `Ok(false)` when hq-interop should (the server did not pick h3).
fn try_h3(
    args: &Args,
    addr: SocketAddr,
    host: &str,
    port: u16,
    requests: &VecDeque<Request>,
    tuning: &tlsfiles::ClientTuning,
) -> Result<bool, Failure> {
    let hq_only = args.key_update || args.resume || args.zero_rtt;
    let offer: &[&[u8]] = match (args.alpn, hq_only) {
        (Some(Alpn::HqInterop), _) | (None, true) => return Ok(false),
        (Some(Alpn::H3), true) => {
            return Err(Failure::Usage(
                "--key-update, --resume and --zero-rtt need --alpn hq-interop".into(),
            ))
        }
        (Some(Alpn::H3), false) => &[ALPN_H3],
        (None, false) => &[ALPN_H3, ALPN_HQ],
    };
    let (cfg, _) = tlsfiles::client_tuned(
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
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let h3_only = args.alpn == Some(Alpn::H3);
    match h3_client::get(addr, host, &authority, cfg, &files, h3_only)? {
        Fetch::NotH3 => Ok(false),
        Fetch::H3(r) => {
            let n = r?;
            eprintln!(
                "downloaded {n} file(s) to {} over 1 connection(s) (h3)",
                args.output.display()
            );
            Ok(true)
        }
    }
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

/// Downloads `requests` over one new connection; `Ok` iff every file arrived whole.
fn fetch(
    engine: &quicshard::Engine<client::Client>,
    addr: SocketAddr,
    host: &str,
    requests: VecDeque<Request>,
) -> Result<(), Failure> {
    let total = requests.len() as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} files {bytes} {msg}")
            .expect("valid template"),
    );
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
        .map_err(|e| Failure::Refused(e.to_string()))?;
    let (mut ok, mut errors, mut connected) = (0u64, Vec::new(), false);
    loop {
        match rx.recv_timeout(IDLE_LIMIT) {
            Ok(Event::Connected { .. }) => connected = true,
            Ok(Event::Done { .. }) => {
                ok += 1;
                bar.inc(1);
            }
            Ok(Event::Failed { reason }) => errors.push(reason),
            Ok(Event::Closed { error }) => {
                errors.extend(error);
                break;
            }
            Err(_) => {
                let stage = if connected {
                    "after the handshake"
                } else {
                    "before the handshake completed"
                };
                errors.push(format!(
                    "no progress for {} s {stage} ({})",
                    IDLE_LIMIT.as_secs(),
                    stall_report(engine)
                ));
                break;
            }
        }
    }
    bar.finish_and_clear();
    if ok == total && errors.is_empty() {
        Ok(())
    } else {
        Err(Failure::Refused(format!(
            "{ok} of {total} files downloaded; {}",
            errors
                .first()
                .map_or("connection ended early", String::as_str)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let (h, p, path) = parse_url("https://localhost:4433/a/b.txt").ok().unwrap();
        assert_eq!(
            (h.as_str(), p, path.as_str()),
            ("localhost", 4433, "a/b.txt")
        );
        let (h, p, _) = parse_url("https://[::1]:443/x").ok().unwrap();
        assert_eq!((h.as_str(), p), ("::1", 443));
        assert!(parse_url("http://x/y").is_err());
        assert!(parse_url("https://x:notaport/y").is_err());
    }
}
