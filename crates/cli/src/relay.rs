//! `quicshard relay`: the pub/sub relay of `crates/quicshard-relay` (ALPN `relay`) on N shards
//! until SIGINT/SIGTERM. The protocol, the topic logs and the handler are that crate's, which its
//! `relay` example checks end to end, so the command and the example's self-check run the same
//! code; this module owns only the command line and the process life.

use quicshard_relay::{protocol, server, topic};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::{signals, tlsfiles, Failure};

/// How long a graceful shutdown waits for connections to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// Encoded bytes each topic's log keeps at most (with `--log-messages`, whichever is hit first).
const LOG_BYTES: usize = 4 << 20;

/// Arguments of `quicshard relay`.
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
    /// Messages each topic's log keeps; a subscriber further behind is reset with LAGGED.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    log_messages: usize,
    /// Topics the relay creates; SUB or PUB of a further topic is refused.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_topics: usize,
}

pub(crate) fn run(args: Args) -> Result<(), Failure> {
    let shards = match crate::count_flag("shards", args.shards)? {
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if args.log_messages == 0 || args.log_messages > 1 << 20 {
        return Err(Failure::Usage(format!(
            "--log-messages {}: must be 1..=1048576",
            args.log_messages
        )));
    }
    if args.max_topics == 0 || args.max_topics > 1 << 16 {
        return Err(Failure::Usage(format!(
            "--max-topics {}: must be 1..=65536",
            args.max_topics
        )));
    }
    let limits = topic::LogLimits {
        max_messages: args.log_messages,
        max_bytes: LOG_BYTES,
        max_topics: args.max_topics,
    };
    let shared = server::Shared::new(shards, limits);
    let mut builder = server::builder(&shared).listen(args.listen).shards(shards);
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        builder = builder.server_tls(tlsfiles::server_from_files(cert, key, &[protocol::ALPN])?);
    }
    signals::block_termination().map_err(|e| Failure::Refused(format!("signals: {e}")))?;
    let engine = builder
        .start()
        .map_err(|e| Failure::Refused(e.to_string()))?;
    shared.set_remote(engine.remote());
    println!("listening on {}", engine.local_addr());
    tracing::info!(shards, bpf = engine.bpf_attached(), "relaying");
    let sig = signals::wait_termination().map_err(|e| Failure::Refused(format!("signals: {e}")))?;
    tracing::info!(signal = sig, "shutting down");
    engine.shutdown(DRAIN_TIMEOUT);
    for (s, c) in shared.counters.iter().enumerate() {
        let fields: Vec<_> = c.fields().iter().map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!("relay shard {s}: {}", fields.join(" "));
    }
    Ok(())
}
