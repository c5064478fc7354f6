//! `quicshard demo`: a server and a load generator on loopback, three phases, then a report.

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use quicshard::{tls, Engine};

use crate::apps::client::Client;
use crate::apps::server::Server;
use crate::apps::{ALPN_PERF, SERVER_ALPNS};
use crate::loadgen::{self, Limit, Mode, Params, Report};
use crate::serve::print_stats;
use crate::Failure;

/// Arguments of `quicshard demo`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Server shards (default: one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// Seconds for each timed phase (bulk, request/response).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
}

pub(crate) fn run(args: Args) -> Result<(), Failure> {
    if !(args.duration > 0.0 && args.duration <= 600.0) {
        return Err(Failure::Usage(format!(
            "--duration {}: must be in (0, 600]",
            args.duration
        )));
    }
    let mut builder = Engine::builder(|_| Server::new(None)).alpn(SERVER_ALPNS);
    if let Some(n) = crate::count_flag("shards", args.shards)? {
        builder = builder.shards(n);
    }
    let server = builder
        .start()
        .map_err(|e| Failure::Refused(e.to_string()))?;
    let roots = server
        .certificate()
        .expect("self-signed by default")
        .to_vec();
    let client_cfg = tls::client_config_trusting(&roots, &[ALPN_PERF])
        .map_err(|e| Failure::Refused(e.to_string()))?;
    let client = Engine::builder(|_| Client::default())
        .client_config(client_cfg)
        .start()
        .map_err(|e| Failure::Refused(e.to_string()))?;
    println!(
        "server on {} with {} shards (BPF steering {}), CIDs of {} bytes",
        server.local_addr(),
        server.shards(),
        if server.bpf_attached() { "on" } else { "off" },
        server.cid_len()
    );
    let d = Duration::from_secs_f64(args.duration);
    let base = Params {
        addr: server.local_addr(),
        server_name: "localhost".into(),
        mode: Mode::Handshake,
        connections: 32,
        streams: 1,
        size: 1,
        limit: Limit::Requests(2000),
    };
    let phases = [
        (
            "handshake burst: 2000 connections, 32 at a time",
            base.clone(),
        ),
        (
            "bulk: 4 connections x 4 streams of 4 MiB",
            Params {
                mode: Mode::Bulk,
                connections: 4,
                streams: 4,
                size: 4 << 20,
                limit: Limit::Duration(d),
                ..base.clone()
            },
        ),
        (
            "request/response: 16 connections x 4 streams, 1 KiB each way",
            Params {
                mode: Mode::Rr,
                connections: 16,
                streams: 4,
                size: 1024,
                limit: Limit::Duration(d),
                ..base.clone()
            },
        ),
    ];
    let multi = MultiProgress::new();
    let mut reports: Vec<Report> = Vec::new();
    for (title, params) in phases {
        let bar = multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed}] {pos} requests")
                .expect("valid template"),
        );
        bar.set_message(title);
        bar.enable_steady_tick(Duration::from_millis(100));
        let r = loadgen::run(&client.remote(), &params, &bar);
        bar.finish_and_clear();
        println!("\n== {title}");
        r.print();
        reports.push(r);
    }
    client.shutdown(Duration::from_secs(1));
    let stats = server.shutdown(Duration::from_secs(2));
    println!("\n== connections per server shard");
    let total: u64 = stats.iter().map(|s| s.connections_accepted).sum();
    for (i, s) in stats.iter().enumerate() {
        let share = 100.0 * s.connections_accepted as f64 / total.max(1) as f64;
        println!(
            "  shard {i}: {:>6} connections ({share:>5.1} %), handoffs in {}",
            s.connections_accepted, s.handoffs_in
        );
    }
    print_stats(&stats);
    let failed: u64 = reports.iter().map(|r| r.failed + r.connection_errors).sum();
    if failed > 0 || reports.iter().any(|r| r.requests == 0) {
        return Err(Failure::Refused(format!(
            "demo finished with {failed} failures"
        )));
    }
    Ok(())
}
