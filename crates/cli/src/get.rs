//! `quicshard get`: downloads URLs of one authority over one connection (hq-interop), streams in
//! parallel, each file written under `--output` by its base name.

use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use quicshard::ShardId;

use crate::apps::client::{self, Event, Plan, Request};
use crate::apps::ALPN_HQ;
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
    /// Write TLS secrets here (NSS key log format), for Wireshark.
    #[arg(long)]
    keylog: Option<PathBuf>,
    /// https://HOST:PORT/PATH, all of the same authority.
    #[arg(required = true)]
    urls: Vec<String>,
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
        std::env::set_var("SSLKEYLOGFILE", k);
    }
    let client_cfg = tlsfiles::client(
        args.insecure,
        args.ca.as_deref(),
        &[ALPN_HQ],
        args.keylog.is_some(),
    )?;
    let engine =
        client::engine(addr, client_cfg, Some(1)).map_err(|e| Failure::Refused(e.to_string()))?;
    let total = requests.len() as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} files {bytes} {msg}")
            .expect("valid template"),
    );
    let (tx, rx) = crossbeam_channel::bounded(1024);
    let plan = Plan {
        addr,
        server_name: host.clone(),
        requests,
        repeat: None,
        concurrency: PARALLEL,
        events: tx,
    };
    engine
        .remote()
        .run_on(ShardId(0), move |ctx, c| c.start(ctx, plan))
        .map_err(|e| Failure::Refused(e.to_string()))?;
    let (mut ok, mut errors) = (0u64, Vec::new());
    loop {
        match rx.recv_timeout(IDLE_LIMIT) {
            Ok(Event::Connected { .. }) => {}
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
                errors.push(format!("no progress for {} s", IDLE_LIMIT.as_secs()));
                break;
            }
        }
    }
    bar.finish_and_clear();
    engine.shutdown(Duration::from_secs(1));
    if ok == total && errors.is_empty() {
        eprintln!("downloaded {ok} file(s) to {}", args.output.display());
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
