//! Benchmark servers for `scripts/bench` (issues #9 and #5). The protocols they speak (constants,
//! the perf pattern, request parsing) are `quicshard-apps`', the same code `quicshard serve` runs.
//!
//! - `quinn-baseline` ([`quinn_server`]): the same `hq-interop`, `perf` and `echo` protocols as
//!   `quicshard serve`, on quinn 0.11's high-level API (tokio), with the same TLS settings
//!   ([`tls::server_config`]) and quinn-proto's default transport parameters, as `serve` uses.
//! - `handles-server` ([`handles`]): `perf` only, on quicshard's thread-safe handles, either
//!   blocking (std threads, `std::io::Read`/`Write`) or async (tokio tasks), so bulk transfer
//!   through the handles can be compared with the callback API (`quicshard serve`).
//!
//! - `quinn-loadgen` ([`loadgen`]): request/response and handshake load on quinn's client API, so
//!   both servers are also measured by a generator that is not quicshard's own.
//!
//! The servers print `listening on IP:PORT` on stdout when ready and exit 0 on SIGINT/SIGTERM.

pub mod handles;
pub mod loadgen;
pub mod quinn_server;
pub mod signals;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags both servers share with `quicshard serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// UDP address to serve on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:4433")]
    pub listen: SocketAddr,
    /// PEM certificate chain (default: a self-signed certificate for localhost).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key for --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Threads: quinn-baseline's tokio workers, handles-server's shards (default: one per core).
    #[arg(long)]
    pub shards: Option<usize>,
}

impl CommonArgs {
    /// `--shards`, or one per core.
    pub fn threads(&self) -> usize {
        self.shards
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .clamp(1, 256)
    }
}

/// A fatal start-up error: printed on stderr by the binaries, which then exit 1.
#[derive(Debug)]
pub struct Fatal(pub String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for Fatal {
    fn from(e: E) -> Self {
        Fatal(e.to_string())
    }
}
