//! `serve --config FILE` and SIGHUP: the TOML file (the flags' names as keys, relative paths from
//! the file's directory) under the command-line flags, and the reload that applies what can
//! change without a restart: the certificate and key, read again from their files, for the
//! handshakes that start afterwards ([`quicshard::Engine::set_server_tls`]). A reload that changes
//! anything else is refused with the setting's name, and the running configuration stays.

use quicshard::HandleEngine;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::Args;
use crate::apps::SERVER_ALPNS;
use crate::{signals, tlsfiles, Failure};

/// The keys a `--config` file may set: each flag of `serve` by its long name.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    listen: Option<SocketAddr>,
    shards: Option<usize>,
    threads: Option<usize>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    root: Option<PathBuf>,
    stats_file: Option<PathBuf>,
    no_bpf: Option<bool>,
    retry: Option<bool>,
    retry_threshold: Option<usize>,
    max_connections: Option<usize>,
    idle_timeout: Option<u32>,
    max_streams: Option<u32>,
    stream_window: Option<u32>,
    conn_window: Option<u32>,
    server_id: Option<String>,
    quic_lb_config: Option<PathBuf>,
    quic_lb_id: Option<u8>,
    decap: Option<SocketAddr>,
    zero_rtt: Option<bool>,
    preferred_address: Option<bool>,
    h3_max_requests: Option<usize>,
    no_turn_sharing: Option<bool>,
    handshakes_per_turn: Option<usize>,
    handshake_queue: Option<usize>,
    send_window: Option<u64>,
    send_pool: Option<u64>,
    memory_budget: Option<u64>,
    metrics: Option<SocketAddr>,
    qlog_dir: Option<PathBuf>,
    handover: Option<PathBuf>,
    drain_timeout: Option<u64>,
}

/// The settings `serve` runs with: `cli` over `--config`'s file (if any) over the defaults.
pub(super) fn effective(cli: &Args) -> Result<Args, Failure> {
    let mut args = cli.clone();
    if let Some(path) = &cli.config {
        let file = read(path)?;
        merge(&mut args, file, path.parent().unwrap_or(Path::new(".")));
    }
    if args.cert.is_some() != args.key.is_some() {
        return Err(Failure::Usage(
            "--cert and --key go together (on the command line or in --config)".into(),
        ));
    }
    Ok(args)
}

fn read(path: &Path) -> Result<File, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("--config {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        // toml's message spans lines (it quotes the line): keep its first, which names the key
        let first = e
            .message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .to_string();
        let at = e.span().map_or(String::new(), |s| {
            format!(" (line {})", text[..s.start].lines().count().max(1))
        });
        Failure::Usage(format!("--config {}{at}: {first}", path.display()))
    })
}

/// Fills every setting the command line left unset from `file`; relative paths are taken from
/// `dir` (the file's directory).
fn merge(args: &mut Args, file: File, dir: &Path) {
    let path = |p: Option<PathBuf>| p.map(|p| dir.join(p));
    // flags with a default: the file wins only when the flag was left at it
    if args.listen == default_listen() {
        args.listen = file.listen.unwrap_or(args.listen);
    }
    if args.drain_timeout == super::DEFAULT_DRAIN_TIMEOUT_SECS {
        args.drain_timeout = file.drain_timeout.unwrap_or(args.drain_timeout);
    }
    if args.h3_max_requests == quicshard_h3::files::DEFAULT_MAX_CONCURRENT {
        args.h3_max_requests = file.h3_max_requests.unwrap_or(args.h3_max_requests);
    }
    args.shards = args.shards.or(file.shards);
    args.threads = args.threads.or(file.threads);
    if args.cert.is_none() && args.key.is_none() {
        args.cert = path(file.cert);
        args.key = path(file.key);
    }
    args.root = args.root.take().or(path(file.root));
    args.stats_file = args.stats_file.take().or(path(file.stats_file));
    args.no_bpf |= file.no_bpf.unwrap_or(false);
    args.retry |= file.retry.unwrap_or(false);
    args.retry_threshold = args.retry_threshold.or(file.retry_threshold);
    args.max_connections = args.max_connections.or(file.max_connections);
    args.idle_timeout = args.idle_timeout.or(file.idle_timeout);
    args.max_streams = args.max_streams.or(file.max_streams);
    args.stream_window = args.stream_window.or(file.stream_window);
    args.conn_window = args.conn_window.or(file.conn_window);
    args.server_id = args.server_id.take().or(file.server_id);
    args.quic_lb_config = args.quic_lb_config.take().or(path(file.quic_lb_config));
    args.quic_lb_id = args.quic_lb_id.or(file.quic_lb_id);
    args.decap = args.decap.or(file.decap);
    args.zero_rtt |= file.zero_rtt.unwrap_or(false);
    args.preferred_address |= file.preferred_address.unwrap_or(false);
    args.no_turn_sharing |= file.no_turn_sharing.unwrap_or(false);
    args.handshakes_per_turn = args.handshakes_per_turn.or(file.handshakes_per_turn);
    args.handshake_queue = args.handshake_queue.or(file.handshake_queue);
    args.send_window = args.send_window.or(file.send_window);
    args.send_pool = args.send_pool.or(file.send_pool);
    args.memory_budget = args.memory_budget.or(file.memory_budget);
    args.metrics = args.metrics.or(file.metrics);
    args.qlog_dir = args.qlog_dir.take().or(path(file.qlog_dir));
    args.handover = args.handover.take().or(path(file.handover));
}

/// `--listen`'s default.
pub(super) fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4433))
}

/// The first setting (by flag name) that differs between `running` and `new`, the certificate
/// and key aside.
fn needs_restart(running: &Args, new: &Args) -> Option<&'static str> {
    macro_rules! first_changed {
        ($($field:ident => $flag:literal),* $(,)?) => {
            $(if running.$field != new.$field { return Some($flag); })*
        };
    }
    first_changed!(
        listen => "listen", shards => "shards", threads => "threads", root => "root",
        stats_file => "stats-file", no_bpf => "no-bpf", retry => "retry",
        retry_threshold => "retry-threshold", max_connections => "max-connections",
        idle_timeout => "idle-timeout", max_streams => "max-streams",
        stream_window => "stream-window", conn_window => "conn-window", server_id => "server-id",
        quic_lb_config => "quic-lb-config", quic_lb_id => "quic-lb-id", decap => "decap",
        zero_rtt => "zero-rtt", preferred_address => "preferred-address",
        h3_max_requests => "h3-max-requests", no_turn_sharing => "no-turn-sharing",
        handshakes_per_turn => "handshakes-per-turn", handshake_queue => "handshake-queue",
        send_window => "send-window", send_pool => "send-pool", memory_budget => "memory-budget",
        metrics => "metrics", qlog_dir => "qlog-dir", handover => "handover",
    );
    None
}

/// Waits for SIGINT or SIGTERM (returned), reloading on every SIGHUP; a reload that fails or
/// would need a restart is logged as one line and changes nothing.
pub(super) fn serve_until_termination(
    engine: &HandleEngine,
    cli: &Args,
    running: &mut Args,
) -> Result<End, Failure> {
    let signal = |e| Failure::Refused(format!("signals: {e}"));
    loop {
        let sig = match engine.handover() {
            // a successor's takeover ends serving too: look every 50 ms
            Some(h) => match signals::wait_any_for(HANDOVER_POLL).map_err(signal)? {
                Some(sig) => sig,
                None if h.replaced() => return Ok(End::Replaced),
                None => continue,
            },
            None => signals::wait_any().map_err(signal)?,
        };
        if !signals::is_reload(sig) {
            return Ok(End::Signal(sig));
        }
        match reload(engine, cli, running) {
            Ok(what) => tracing::warn!("reloaded: {what}"),
            Err(why) => tracing::error!("reload refused, the running configuration stays: {why}"),
        }
    }
}

/// How often a server with `--handover` looks whether a successor took over.
const HANDOVER_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Why serving ended.
pub(super) enum End {
    /// SIGINT or SIGTERM.
    Signal(i32),
    /// A successor took over (`--handover`): drain, then exit.
    Replaced,
}

/// One reload: the new settings, checked against the running ones, then the certificate.
fn reload(engine: &HandleEngine, cli: &Args, running: &mut Args) -> Result<String, String> {
    let new = effective(cli).map_err(|f| match f {
        Failure::Usage(m) | Failure::Refused(m) => m,
    })?;
    if let Some(flag) = needs_restart(running, &new) {
        return Err(format!("{flag} cannot change without a restart"));
    }
    let (Some(cert), Some(key)) = (&new.cert, &new.key) else {
        return Ok("nothing to reload (the certificate is the built-in self-signed one)".into());
    };
    let tls = tlsfiles::server_from_files(cert, key, SERVER_ALPNS).map_err(|f| match f {
        Failure::Usage(m) | Failure::Refused(m) => m,
    })?;
    engine.set_server_tls(tls).map_err(|e| e.to_string())?;
    let done = format!(
        "certificate {} and key {} serve new handshakes",
        cert.display(),
        key.display()
    );
    *running = new;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn cli(flags: &[&str]) -> Args {
        Cli::parse_from([&["serve"], flags].concat()).args
    }

    fn file(text: &str) -> File {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn flags_override_the_file_and_paths_are_from_its_directory() {
        let mut a = cli(&["--shards", "2"]);
        let f = file("shards = 4\nthreads = 1\nlisten = \"127.0.0.1:9\"\ncert = \"c.pem\"\nkey = \"/k.pem\"\nretry = true");
        merge(&mut a, f, Path::new("/etc/qs"));
        assert_eq!(a.shards, Some(2));
        assert_eq!(a.threads, Some(1));
        assert_eq!(a.listen, "127.0.0.1:9".parse().unwrap());
        assert_eq!(a.cert.as_deref(), Some(Path::new("/etc/qs/c.pem")));
        assert_eq!(a.key.as_deref(), Some(Path::new("/k.pem")));
        assert!(a.retry);
        let mut b = cli(&["--listen", "127.0.0.1:7"]);
        merge(&mut b, file("listen = \"127.0.0.1:9\""), Path::new("."));
        assert_eq!(b.listen, "127.0.0.1:7".parse().unwrap());
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<File>("shard = 2").is_err());
        assert!(toml::from_str::<File>("shards = \"two\"").is_err());
    }

    #[test]
    fn only_certificate_and_key_may_change() {
        let a = cli(&["--cert", "a.pem", "--key", "a.key"]);
        let b = cli(&["--cert", "b.pem", "--key", "b.key"]);
        assert_eq!(needs_restart(&a, &b), None);
        let c = cli(&["--cert", "a.pem", "--key", "a.key", "--shards", "3"]);
        assert_eq!(needs_restart(&a, &c), Some("shards"));
    }
}
