//! Runs one deterministic simulation and prints the line a reviewer checks:
//! `digest=HEX virtual_s=F wall_s=F completed=N/M` (same seed, same digest).
//!
//! ```text
//! cargo run --release -p quicshard-testkit --example simulate -- --seed 7 --shards 4 --connections 200 --loss 0.05
//! ```
//! Exits 1 if a transfer did not complete (the failures go to stderr).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use quicshard_impair::Params;
use quicshard_testkit::{simulate, SimConfig, Steering};

/// A deterministic simulation of a quicshard engine and its clients on a virtual clock.
#[derive(Parser)]
struct Args {
    /// Seed of everything (engine, TLS, clients, impairments).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Shards of the engine.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    shards: u16,
    /// Connections (one client each).
    #[arg(long, default_value_t = 200)]
    connections: usize,
    /// Loss probability per datagram and direction (0.0-1.0).
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    loss: f64,
    /// One-way delay in milliseconds.
    #[arg(long, default_value_t = 10)]
    delay_ms: u64,
    /// Jitter in milliseconds (never reorders).
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Reordering probability (0.0-1.0).
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    reorder: f64,
    /// Duplication probability (0.0-1.0).
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    duplicate: f64,
    /// Corruption probability (0.0-1.0).
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    corrupt: f64,
    /// Octets each response carries.
    #[arg(long, default_value_t = 20_000)]
    download: u64,
    /// Steer by a hash of the source address instead of the engine's BPF program.
    #[arg(long)]
    hash_steering: bool,
    /// Send a Retry to every new connection.
    #[arg(long)]
    retry: bool,
    /// Every client moves to a new port at this virtual time (milliseconds).
    #[arg(long)]
    rebind_ms: Option<u64>,
    /// Print every datagram sent, delivered or unroutable on stderr.
    #[arg(long)]
    trace: bool,
}

fn probability(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not in 0.0..=1.0"))
    }
}

fn main() -> ExitCode {
    let a = Args::parse();
    let cfg = SimConfig {
        seed: a.seed,
        shards: usize::from(a.shards),
        clients: a.connections,
        download: a.download,
        impair: Params {
            loss: a.loss,
            delay: Duration::from_millis(a.delay_ms),
            jitter: Duration::from_millis(a.jitter_ms),
            reorder: a.reorder,
            duplicate: a.duplicate,
            corrupt: a.corrupt,
            ..Params::default()
        },
        steering: if a.hash_steering {
            Steering::Hash
        } else {
            Steering::Bpf
        },
        retry: a.retry,
        rebind_at: a.rebind_ms.map(Duration::from_millis),
        trace: a.trace,
        ..SimConfig::default()
    };
    let wall = Instant::now();
    let report = match simulate(cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for f in &report.failures {
        eprintln!("failure: {f}");
    }
    println!(
        "digest={} virtual_s={:.3} wall_s={:.3} completed={}/{}",
        report.digest_hex(),
        report.virtual_time.as_secs_f64(),
        wall.elapsed().as_secs_f64(),
        report.completed,
        report.planned
    );
    if report.completed == report.planned {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
