//! The load generator behind `bench` and `demo`: plans connections on a client engine's shards,
//! collects their events, and summarizes them with HDR histograms. This file runs the closed
//! loops; `loadgen/openloop.rs` (`bench --rate`) reuses its launcher, event accounting and report.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use quicshard::{Remote, RemoteError, ShardId};

use crate::apps::client::{Client, Event, Plan, Request, Schedule};

pub(crate) mod openloop;

/// What kind of load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// Each stream downloads `size` bytes.
    Bulk,
    /// A new connection per request (one small download each).
    Handshake,
    /// Request/response: `size` bytes up, `size` bytes down.
    Rr,
    /// Connections that complete their handshake and stay idle until `--duration` ends (server
    /// memory per idle connection).
    Idle,
}

/// When a run ends.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Limit {
    /// After this many requests (over all connections).
    Requests(u64),
    /// After this long.
    Duration(Duration),
}

/// A load to generate.
#[derive(Clone, Debug)]
pub(crate) struct Params {
    pub(crate) addr: SocketAddr,
    pub(crate) server_name: String,
    pub(crate) mode: Mode,
    pub(crate) connections: usize,
    pub(crate) streams: usize,
    pub(crate) size: u64,
    pub(crate) limit: Limit,
}

/// What a run measured.
pub(crate) struct Report {
    pub(crate) mode: Mode,
    pub(crate) elapsed: Duration,
    pub(crate) requests: u64,
    pub(crate) failed: u64,
    pub(crate) bytes: u64,
    pub(crate) handshakes: u64,
    pub(crate) connection_errors: u64,
    pub(crate) first_error: Option<String>,
    /// Request latency in microseconds.
    pub(crate) latency: Histogram<u64>,
    /// Handshake time in microseconds (connect to handshake complete).
    pub(crate) handshake: Histogram<u64>,
    /// What the open loop (`bench --rate`) scheduled and issued; `None` for closed loops.
    pub(crate) open_loop: Option<OpenLoop>,
    /// Handshakes that checked a server certificate, i.e. were not resumed (`None`: not
    /// counted).
    pub(crate) full_handshakes: Option<u64>,
}

/// The schedule of an open-loop run. Completed requests are `Report::requests`, failed ones
/// `Report::failed`; `issued` = completed + failed + `late`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OpenLoop {
    /// Requests per second asked for.
    pub(crate) target_per_s: f64,
    /// Requests due in the run (`--duration` × rate, or `--requests`).
    pub(crate) scheduled: u64,
    /// Requests handed to a connection.
    pub(crate) issued: u64,
    /// Due requests not issued: the outstanding cap was reached, or no connection was open.
    pub(crate) not_issued: u64,
    /// Issued requests still outstanding when the run ended.
    pub(crate) late: u64,
    /// The cap on outstanding requests.
    pub(crate) max_outstanding: u64,
}

/// Quantiles of the request latency listed in `--json` output.
const LATENCY_QUANTILES: &[f64] = &[
    0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999,
    1.0,
];

/// How long launching one connection retries while its shard's mailbox is full.
const LAUNCH_RETRY: Duration = Duration::from_secs(5);

/// How long a run may go past its limit waiting for stragglers before it gives up.
const GRACE: Duration = Duration::from_secs(10);

/// Events the client handlers may queue for the load generator's thread.
pub(crate) const EVENTS_CAPACITY: usize = 1 << 16;

impl Report {
    /// An empty report (also used by the h3 bench, `apps/h3_client.rs`).
    pub(crate) fn new(mode: Mode) -> Self {
        Report {
            mode,
            elapsed: Duration::ZERO,
            requests: 0,
            failed: 0,
            bytes: 0,
            handshakes: 0,
            connection_errors: 0,
            first_error: None,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            handshake: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            open_loop: None,
            full_handshakes: None,
        }
    }

    /// Accounts one event from the client handlers; returns whether it closed a connection.
    pub(crate) fn record(&mut self, ev: Event, bar: &ProgressBar) -> bool {
        match ev {
            Event::Connected { handshake } => {
                self.handshakes += 1;
                let _ = self.handshake.record((handshake.as_micros() as u64).max(1));
            }
            Event::Done { bytes, latency } => {
                self.requests += 1;
                self.bytes += bytes;
                let _ = self.latency.record((latency.as_micros() as u64).max(1));
                bar.inc(1);
            }
            Event::Failed { reason } => {
                self.failed += 1;
                self.first_error.get_or_insert(reason);
            }
            Event::Closed { error } => {
                if let Some(e) = error {
                    self.connection_errors += 1;
                    self.first_error.get_or_insert(e);
                }
                return true;
            }
        }
        false
    }

    pub(crate) fn throughput_mbit(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }
    pub(crate) fn per_second(&self, n: u64) -> f64 {
        n as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    pub(crate) fn percentile_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
    pub(crate) fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1000.0
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "mode": self.mode,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "requests": self.requests,
            "failed": self.failed,
            "bytes": self.bytes,
            "handshakes": self.handshakes,
            "handshakes_per_s": self.per_second(self.handshakes),
            "full_handshakes": self.full_handshakes,
            "requests_per_s": self.per_second(self.requests),
            "throughput_mbit_s": self.throughput_mbit(),
            "connection_errors": self.connection_errors,
            "first_error": self.first_error,
            "handshake_ms": {
                "p50": self.handshake.value_at_quantile(0.5) as f64 / 1000.0,
                "p99": self.handshake.value_at_quantile(0.99) as f64 / 1000.0,
            },
            "latency_ms": {
                "p50": self.percentile_ms(0.5),
                "p90": self.percentile_ms(0.9),
                "p99": self.percentile_ms(0.99),
                "p999": self.percentile_ms(0.999),
                "max": self.max_ms(),
            },
            "open_loop": self.open_loop.map(|o| serde_json::json!({
                "target_per_s": o.target_per_s,
                "achieved_per_s": self.per_second(self.requests),
                "scheduled": o.scheduled,
                "issued": o.issued,
                "completed": self.requests,
                "late": o.late,
                "not_issued": o.not_issued,
                "max_outstanding": o.max_outstanding,
            })),
            // the latency distribution, for plots: [quantile, microseconds]
            "latency_us_quantiles": LATENCY_QUANTILES
                .iter()
                .map(|&q| (q, self.latency.value_at_quantile(q)))
                .collect::<Vec<_>>(),
        })
    }

    pub(crate) fn print(&self) {
        println!(
            "{:?}: {} requests ({} failed) in {:.2} s; {:.0} req/s, {:.0} handshakes/s, {:.1} Mbit/s",
            self.mode,
            self.requests,
            self.failed,
            self.elapsed.as_secs_f64(),
            self.per_second(self.requests),
            self.per_second(self.handshakes),
            self.throughput_mbit()
        );
        println!(
            "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}; connection errors {}",
            self.percentile_ms(0.5),
            self.percentile_ms(0.9),
            self.percentile_ms(0.99),
            self.percentile_ms(0.999),
            self.max_ms(),
            self.connection_errors
        );
        if let Some(o) = &self.open_loop {
            println!(
                "  open loop: target {:.0} req/s, achieved {:.0}; scheduled {}, issued {}, \
                 completed {}, late {}, not issued {} (cap {} outstanding)",
                o.target_per_s,
                self.per_second(self.requests),
                o.scheduled,
                o.issued,
                self.requests,
                o.late,
                o.not_issued,
                o.max_outstanding
            );
        }
        if self.handshakes > 0 {
            let full = self.full_handshakes.map_or(String::new(), |n| {
                format!("; {n} of {} handshakes full (not resumed)", self.handshakes)
            });
            println!(
                "  handshake ms: p50 {:.2}  p99 {:.2}{full}",
                self.handshake.value_at_quantile(0.5) as f64 / 1000.0,
                self.handshake.value_at_quantile(0.99) as f64 / 1000.0,
            );
        }
        if let Some(e) = &self.first_error {
            println!("  first error: {e}");
        }
    }
}

/// The request each stream of a `p.mode` load makes.
pub(crate) fn request(p: &Params) -> Request {
    match p.mode {
        Mode::Bulk => Request::Perf {
            upload: 0,
            download: p.size,
        },
        Mode::Handshake => Request::Perf {
            upload: 0,
            download: p.size.min(1024),
        },
        Mode::Rr => Request::Perf {
            upload: p.size,
            download: p.size,
        },
        // never sent: idle connections open no stream
        Mode::Idle => Request::Perf {
            upload: 0,
            download: 0,
        },
    }
}

/// Starts connections of one load on the client engine's shards, round-robin.
pub(crate) struct Launcher<'a> {
    remote: &'a Remote<Client>,
    p: &'a Params,
    events: Sender<Event>,
    next_shard: usize,
}

impl<'a> Launcher<'a> {
    /// Connections started by this launcher report to `events`.
    pub(crate) fn new(remote: &'a Remote<Client>, p: &'a Params, events: Sender<Event>) -> Self {
        Launcher {
            remote,
            p,
            events,
            next_shard: 0,
        }
    }

    /// Starts one connection on the next shard; its shard, or `None` if the shard refused.
    pub(crate) fn launch(
        &mut self,
        requests: std::collections::VecDeque<Request>,
        repeat: Option<(Request, Instant)>,
        streams: usize,
        schedule: Option<Schedule>,
    ) -> Option<ShardId> {
        let shard = ShardId(self.next_shard % self.remote.shards().max(1));
        self.next_shard += 1;
        // A burst of thousands of new connections can fill a shard's mailbox (4096 messages);
        // it drains within milliseconds, so retry for up to LAUNCH_RETRY.
        let give_up = Instant::now() + LAUNCH_RETRY;
        loop {
            let plan = Plan {
                addr: self.p.addr,
                server_name: self.p.server_name.clone(),
                requests: requests.clone(),
                repeat: repeat.clone(),
                concurrency: streams,
                events: self.events.clone(),
            };
            let schedule = schedule.clone();
            match self.remote.run_on(shard, move |ctx, client| {
                client.start_with(ctx, plan, schedule)
            }) {
                Ok(()) => return Some(shard),
                Err(RemoteError::Full) if Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return None,
            }
        }
    }
}

/// Runs `p` on the client engine behind `remote`, spreading connections over its shards.
pub(crate) fn run(remote: &Remote<Client>, p: &Params, bar: &ProgressBar) -> Report {
    let (tx, rx) = crossbeam_channel::bounded(EVENTS_CAPACITY);
    let start = Instant::now();
    let deadline = match p.limit {
        Limit::Duration(d) => Some(start + d),
        Limit::Requests(_) => None,
    };
    let total = match p.limit {
        Limit::Requests(n) => n,
        Limit::Duration(_) => u64::MAX,
    };
    let request = request(p);
    let mut r = Report::new(p.mode);
    let mut launched_requests = 0u64;
    let mut open_conns = 0usize;
    let mut launcher = Launcher::new(remote, p, tx);
    let mut launch =
        |requests, repeat, streams| launcher.launch(requests, repeat, streams, None).is_some();
    // Initial connections.
    let per_conn_streams = match p.mode {
        Mode::Handshake => 1,
        Mode::Idle => 0,
        _ => p.streams.max(1),
    };
    for i in 0..p.connections.max(1) {
        let (requests, repeat) = match (p.mode, deadline) {
            (Mode::Handshake, _) => {
                if launched_requests >= total {
                    break;
                }
                launched_requests += 1;
                (std::iter::once(request.clone()).collect(), None)
            }
            (_, Some(d)) => (Default::default(), Some((request.clone(), d))),
            (_, None) => {
                let share = total / p.connections as u64
                    + u64::from((i as u64) < total % p.connections as u64);
                launched_requests += share;
                (
                    std::iter::repeat_n(request.clone(), share as usize).collect(),
                    None,
                )
            }
        };
        if launch(requests, repeat, per_conn_streams) {
            open_conns += 1;
        }
    }
    let hard_stop = deadline.unwrap_or(start + Duration::from_secs(3600)) + GRACE;
    while open_conns > 0 {
        // idle connections stay open until the deadline; the engine's shutdown closes them
        if p.mode == Mode::Idle && deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let timeout = hard_stop.saturating_duration_since(Instant::now());
        let ev = match rx.recv_timeout(timeout.min(Duration::from_millis(200))) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) if Instant::now() < hard_stop => {
                bar.tick();
                continue;
            }
            Err(_) => {
                r.first_error.get_or_insert_with(|| {
                    format!("{open_conns} connections did not finish in time")
                });
                r.connection_errors += open_conns as u64;
                break;
            }
        };
        let finished_request = matches!(ev, Event::Done { .. } | Event::Failed { .. });
        if r.record(ev, bar) {
            open_conns -= 1;
        }
        // Handshake mode: a connection's slot frees when its request completes, not when it has
        // drained (that takes three PTOs and is not what is being measured).
        if p.mode == Mode::Handshake
            && finished_request
            && launched_requests < total
            && deadline.is_none_or(|d| Instant::now() < d)
        {
            launched_requests += 1;
            if launch(std::iter::once(request.clone()).collect(), None, 1) {
                open_conns += 1;
            }
        }
    }
    r.elapsed = start.elapsed();
    r
}
