//! `quicshard lb`: the QUIC-LB load balancer, configured by TOML, reloaded on SIGHUP; or, with
//! `--emit-nftables`, the nftables ruleset that routes the same file's plaintext configs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use quicshard_lb::{Lb, LbConfig};

use crate::{signals, Failure};

/// Arguments of `quicshard lb`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The TOML configuration (listen, mode, workers, [[quic_lb]], [[backend]], [timers]).
    #[arg(long)]
    config: PathBuf,
    /// Write the counters as JSON here on exit (checked writable at start-up).
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Print an nftables ruleset (for `nft -f`) routing the file's plaintext [[quic_lb]] configs
    /// to its [[backend]]s at `listen`, then exit; no balancer is started. Encrypted configs are
    /// refused.
    #[arg(long, conflicts_with = "stats_file")]
    emit_nftables: bool,
    /// Serve Prometheus metrics on http://ADDR/metrics (TCP).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

/// A configuration file's error as one line naming the file once (a read error already names
/// it, as its key).
pub(crate) fn config_error(path: &std::path::Path, e: &quicshard_lb::ConfigError) -> String {
    if e.key == path.display().to_string() {
        e.to_string()
    } else {
        format!("{}: {e}", path.display())
    }
}

pub(crate) fn run(args: Args) -> Result<(), Failure> {
    let config = LbConfig::from_file(&args.config)
        .map_err(|e| Failure::Usage(config_error(&args.config, &e)))?;
    crate::diag::check_stats_file(args.stats_file.as_deref())?;
    if args.emit_nftables {
        let rules = quicshard_lb::nftables::ruleset(&config)
            .map_err(|e| Failure::Refused(format!("{}: {e}", args.config.display())))?;
        print!("{rules}");
        return Ok(());
    }
    signals::block_termination().map_err(|e| Failure::Refused(format!("signals: {e}")))?;
    let lb = Arc::new(Lb::start(config).map_err(|e| Failure::Refused(e.to_string()))?);
    let metrics = match args.metrics {
        Some(addr) => {
            let lb = lb.clone();
            let stats = move || serde_json::to_value(lb.stats()).unwrap_or_default();
            Some(crate::metrics::start(
                addr,
                crate::metrics::LbCollector(Box::new(stats)),
            )?)
        }
        None => None,
    };
    println!("listening on {}", lb.local_addr());
    if let Some(m) = &metrics {
        println!("metrics on http://{}/metrics", m.addr());
    }
    loop {
        let sig = signals::wait_any().map_err(|e| Failure::Refused(format!("signals: {e}")))?;
        if !signals::is_reload(sig) {
            break;
        }
        // A bad new config leaves the running one in place.
        match LbConfig::from_file(&args.config)
            .map_err(|e| e.to_string())
            .and_then(|c| lb.reload(c).map_err(|e| e.to_string()))
        {
            Ok(()) => tracing::warn!(config = %args.config.display(), "reloaded"),
            Err(e) => {
                tracing::error!(config = %args.config.display(), "reload refused, keeping the running config: {e}")
            }
        }
    }
    // the metrics thread's collector holds the other reference to the load balancer
    if let Some(m) = metrics {
        m.stop();
    }
    let stats = lb.stats();
    match Arc::try_unwrap(lb) {
        Ok(lb) => lb.shutdown(),
        Err(_) => tracing::error!("load balancer still referenced; its threads stop at exit"),
    }
    let json = serde_json::to_value(stats).map_err(|e| Failure::Refused(format!("stats: {e}")))?;
    if let Some(path) = &args.stats_file {
        std::fs::write(path, json.to_string())
            .map_err(|e| Failure::Refused(format!("--stats-file {}: {e}", path.display())))?;
    }
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&json).unwrap_or_default()
    );
    Ok(())
}
