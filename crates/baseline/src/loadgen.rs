//! `quinn-loadgen`: a load generator on quinn 0.11's client API (tokio), written the way a quinn
//! user would, so that every server is also measured by a client that is not quicshard's own.
//!
//! It speaks quinn's `perf` protocol (8-byte big-endian download length, the upload, FIN; then
//! the download and FIN), the protocol `quicshard bench` uses, and prints the same JSON report
//! keys (`requests`, `requests_per_s`, `latency_ms.p99`, ...) so `scripts/bench` reads both.
//!
//! Two modes:
//! - `rr`: `--connections` connections, each with `--streams` request loops in flight; each loop
//!   opens a bidirectional stream, sends `--size` bytes, reads `--size` bytes back, and starts
//!   over (closed loop), until `--duration` ends.
//! - `handshake`: `--connections` loops, each opening a new connection, doing one request of
//!   `--size` bytes and closing it, until `--duration` ends (a handshake flood from valid clients).
//!   Resumption is off unless `--resume`, so each connection costs the server an ECDHE and a
//!   signature.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use quinn::{ClientConfig, Connection, Endpoint};

use crate::Fatal;
use quicshard_apps::{pattern, ALPN_PERF};

/// What kind of load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Request/response on long-lived connections.
    Rr,
    /// A new connection per request.
    Handshake,
}

/// Arguments of `quinn-loadgen`.
#[derive(clap::Parser, Debug)]
#[command(about = "quinn 0.11 load generator speaking the perf protocol (as `quicshard bench`)")]
pub struct Args {
    /// Server address.
    #[arg(long)]
    pub connect: SocketAddr,
    /// TLS server name.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Load kind.
    #[arg(long, value_enum, default_value = "rr")]
    pub mode: Mode,
    /// Connections (rr) or concurrent connection loops (handshake).
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Request loops per connection (rr).
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Bytes up and bytes down per request.
    #[arg(long, default_value_t = 1024)]
    pub size: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// tokio worker threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Resume sessions in handshake mode (default: every handshake is full).
    #[arg(long)]
    pub resume: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also print each connection's requests and p50/p99 latency (rr), on stderr: connections
    /// served more slowly than the others stand out.
    #[arg(long)]
    pub per_connection: bool,
}

/// What one run measured.
struct Report {
    requests: u64,
    failed: u64,
    bytes: u64,
    handshakes: u64,
    connection_errors: u64,
    first_error: Option<String>,
    latency: Histogram<u64>,
    handshake: Histogram<u64>,
}

impl Report {
    fn new() -> Self {
        Report {
            requests: 0,
            failed: 0,
            bytes: 0,
            handshakes: 0,
            connection_errors: 0,
            first_error: None,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            handshake: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        }
    }

    fn merge(&mut self, o: Report) {
        self.requests += o.requests;
        self.failed += o.failed;
        self.bytes += o.bytes;
        self.handshakes += o.handshakes;
        self.connection_errors += o.connection_errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        let _ = self.latency.add(&o.latency);
        let _ = self.handshake.add(&o.handshake);
    }

    fn error(&mut self, request: bool, e: impl std::fmt::Display) {
        if request {
            self.failed += 1;
        } else {
            self.connection_errors += 1;
        }
        self.first_error.get_or_insert_with(|| e.to_string());
    }

    fn to_json(&self, mode: Mode, elapsed: Duration) -> String {
        let s = elapsed.as_secs_f64().max(1e-9);
        let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let err = match &self.first_error {
            Some(e) => format!("{e:?}"),
            None => "null".into(),
        };
        format!(
            concat!(
                "{{\"generator\":\"quinn\",\"mode\":\"{}\",\"elapsed_s\":{},\"requests\":{},",
                "\"failed\":{},\"bytes\":{},\"handshakes\":{},\"handshakes_per_s\":{},",
                "\"requests_per_s\":{},\"throughput_mbit_s\":{},\"connection_errors\":{},",
                "\"first_error\":{},\"full_handshakes\":null,",
                "\"handshake_ms\":{{\"p50\":{},\"p99\":{}}},",
                "\"latency_ms\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}},",
                "\"open_loop\":null}}"
            ),
            match mode {
                Mode::Rr => "rr",
                Mode::Handshake => "handshake",
            },
            s,
            self.requests,
            self.failed,
            self.bytes,
            self.handshakes,
            self.handshakes as f64 / s,
            self.requests as f64 / s,
            self.bytes as f64 * 8.0 / s / 1e6,
            self.connection_errors,
            err,
            q(&self.handshake, 0.5),
            q(&self.handshake, 0.99),
            q(&self.latency, 0.5),
            q(&self.latency, 0.9),
            q(&self.latency, 0.99),
            q(&self.latency, 0.999),
            self.latency.max() as f64 / 1000.0,
        )
    }
}

/// Runs the load and prints the report; an error if nothing could be measured.
pub fn run(args: Args) -> Result<(), Fatal> {
    if args.connections == 0 || args.streams == 0 || args.duration.is_nan() || args.duration <= 0.0
    {
        return Err(Fatal(
            "--connections, --streams and --duration must be positive".into(),
        ));
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    let (report, elapsed) = rt.block_on(drive(&args))?;
    if args.json {
        println!("{}", report.to_json(args.mode, elapsed));
    } else {
        let s = elapsed.as_secs_f64();
        let q = |q: f64| report.latency.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{} requests ({} failed, {} connection errors) in {s:.2} s: {:.0} req/s, {:.0} handshakes/s; latency p50 {:.3} ms p99 {:.3} ms p99.9 {:.3} ms",
            report.requests,
            report.failed,
            report.connection_errors,
            report.requests as f64 / s,
            report.handshakes as f64 / s,
            q(0.5),
            q(0.99),
            q(0.999),
        );
        if let Some(e) = &report.first_error {
            println!("first error: {e}");
        }
    }
    Ok(())
}

fn client_config(resume: bool) -> Result<ClientConfig, Fatal> {
    use quicshard::{rustls, tls};
    // rustls' ring provider as a quinn user has it; the certificate is not checked (benchmarks)
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(tls::accept_any_cert(provider))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_PERF.to_vec()];
    if !resume {
        tls.resumption = rustls::client::Resumption::disabled();
    }
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| Fatal(format!("client TLS config: {e}")))?;
    Ok(ClientConfig::new(Arc::new(quic)))
}

async fn drive(args: &Args) -> Result<(Report, Duration), Fatal> {
    let bind: SocketAddr = if args.connect.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let mut endpoint = Endpoint::client(bind)?;
    endpoint.set_default_client_config(client_config(args.mode == Mode::Handshake && args.resume)?);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.connections {
        let (ep, addr, name, size, streams, mode) = (
            endpoint.clone(),
            args.connect,
            args.server_name.clone(),
            args.size,
            args.streams,
            args.mode,
        );
        tasks.spawn(async move {
            match mode {
                Mode::Rr => rr_connection(ep, addr, name, size, streams, end).await,
                Mode::Handshake => handshake_loop(ep, addr, name, size, end).await,
            }
        });
    }
    let mut report = Report::new();
    let mut each = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let r = r.map_err(|e| Fatal(format!("load task: {e}")))?;
        each.push((
            r.requests,
            r.latency.value_at_quantile(0.5),
            r.latency.value_at_quantile(0.99),
        ));
        report.merge(r);
    }
    if args.per_connection {
        each.sort_by_key(|e| e.0);
        for (n, p50, p99) in each {
            eprintln!("connection: {n} requests, p50 {p50} us, p99 {p99} us");
        }
    }
    let elapsed = start.elapsed();
    endpoint.close(0u32.into(), b"done");
    // bounded: the server may be gone
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok((report, elapsed))
}

/// One connection running `streams` closed request loops until `end`.
async fn rr_connection(
    ep: Endpoint,
    addr: SocketAddr,
    name: String,
    size: u64,
    streams: usize,
    end: Instant,
) -> Report {
    let mut report = Report::new();
    let t0 = Instant::now();
    let conn = match connect(&ep, addr, &name).await {
        Ok(c) => c,
        Err(e) => {
            report.error(false, e);
            return report;
        }
    };
    report.handshakes += 1;
    let _ = report
        .handshake
        .record((t0.elapsed().as_micros() as u64).max(1));
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let conn = conn.clone();
        loops.spawn(async move {
            let mut r = Report::new();
            while Instant::now() < end {
                let t = Instant::now();
                match request(&conn, size).await {
                    Ok(n) => {
                        r.requests += 1;
                        r.bytes += n;
                        let _ = r.latency.record((t.elapsed().as_micros() as u64).max(1));
                    }
                    Err(e) => {
                        r.error(true, e);
                        break;
                    }
                }
            }
            r
        });
    }
    while let Some(r) = loops.join_next().await {
        if let Ok(r) = r {
            report.merge(r);
        }
    }
    conn.close(0u32.into(), b"done");
    report
}

/// New connections, one request each, until `end`.
async fn handshake_loop(
    ep: Endpoint,
    addr: SocketAddr,
    name: String,
    size: u64,
    end: Instant,
) -> Report {
    let mut report = Report::new();
    while Instant::now() < end {
        let t = Instant::now();
        let conn = match connect(&ep, addr, &name).await {
            Ok(c) => c,
            Err(e) => {
                report.error(false, e);
                continue;
            }
        };
        report.handshakes += 1;
        let _ = report
            .handshake
            .record((t.elapsed().as_micros() as u64).max(1));
        match request(&conn, size).await {
            Ok(n) => {
                report.requests += 1;
                report.bytes += n;
                let _ = report
                    .latency
                    .record((t.elapsed().as_micros() as u64).max(1));
            }
            Err(e) => report.error(true, e),
        }
        conn.close(0u32.into(), b"done");
    }
    report
}

async fn connect(ep: &Endpoint, addr: SocketAddr, name: &str) -> Result<Connection, String> {
    let connecting = ep.connect(addr, name).map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
        Err(_) => Err(format!("connect {addr}: no handshake within 10 s")),
    }
}

/// One perf request: `size` bytes up, `size` bytes down (checked against the pattern).
async fn request(conn: &Connection, size: u64) -> Result<u64, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&size.to_be_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut left = size;
    let mut off = 0u64;
    while left > 0 {
        let chunk = pattern(off, left);
        send.write_all(chunk).await.map_err(|e| e.to_string())?;
        left -= chunk.len() as u64;
        off += chunk.len() as u64;
    }
    send.finish().map_err(|e| e.to_string())?;
    let mut got = 0u64;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), recv.read(&mut buf))
            .await
            .map_err(|_| "no response within 10 s".to_string())?
            .map_err(|e| e.to_string())?;
        let Some(n) = n else { break };
        if buf[..n] != *pattern(got, n as u64) {
            return Err(format!(
                "response bytes at offset {got} differ from the pattern"
            ));
        }
        got += n as u64;
    }
    if got != size {
        return Err(format!("response of {got} bytes, {size} asked for"));
    }
    Ok(got)
}
