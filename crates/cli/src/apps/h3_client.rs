//! HTTP/3 clients of `get` and `bench`: a handle-mode client engine and a small tokio runtime
//! driving [`quicshard_h3::client`].
//!
//! - `get`: one connection, up to [`PARALLEL`] GETs at once, each body written to its file; a
//!   status other than 200 is a failure that names the status (the partial file is removed).
//!   Offering `h3` and `hq-interop` together, a server that picks `hq-interop` gets its
//!   connection closed and `get` falls back to its hq-interop client ([`Fetch::NotH3`]).
//! - `bench --alpn h3 --mode rr`: each connection runs `--streams` loops, each a GET of one
//!   fixed resource (`--path`, a file under the server's `--root`) after the other; latency is
//!   request sent → body complete, throughput counts body bytes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use http::{Method, StatusCode};
use quicshard::handle::Connection;
use quicshard::HandleEngine;
use quicshard_h3::client::{self, SendRequest};
use ranked_lock::{Mutex, Rank};

use super::ALPN_H3;
use crate::get::Progress;
use crate::loadgen::{Limit, Params, Report};
use crate::Failure;

/// The bench report the h3 request tasks share (the only lock of an h3 bench run).
const REPORT_RANK: Rank = Rank::new(1, "h3 bench report");

/// GETs in flight at once on one connection.
const PARALLEL: usize = 64;
/// How long a bench handshake may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(30);
/// How long the connection may take to close after the last request.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);
/// How long a bench run may go past its limit for stragglers.
const GRACE: Duration = Duration::from_secs(10);

/// A client engine in handle mode on an ephemeral port of `server`'s address family.
fn engine(
    server: SocketAddr,
    config: quinn_proto::ClientConfig,
    shards: Option<usize>,
) -> Result<HandleEngine, Failure> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let mut b = HandleEngine::builder()
        .listen(local)
        .client_config(config)
        .bpf(false);
    b = crate::diag::with_qlog(b);
    if let Some(n) = shards {
        b = b.shards(n);
    }
    b.start().map_err(|e| Failure::Refused(e.to_string()))
}

fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("h3-client")
        .enable_all()
        .build()
        .map_err(|e| Failure::Refused(format!("tokio runtime: {e}")))
}

async fn connect(
    engine: &HandleEngine,
    addr: SocketAddr,
    server_name: &str,
    limit: Duration,
) -> Result<Connection, String> {
    match tokio::time::timeout(limit, engine.connect_async(addr, server_name)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no handshake within {} s", limit.as_secs_f64())),
    }
}

/// One file to download.
pub(crate) struct Download {
    /// The request path (without the leading `/`, as `get` parses URLs).
    pub(crate) path: String,
    /// Where the body goes.
    pub(crate) dest: PathBuf,
}

/// What [`get`] did.
pub(crate) enum Fetch {
    /// The server negotiated h3: every file arrived (`Ok(count)`) or what failed.
    H3(Result<usize, Failure>),
    /// The server picked another ALPN (only when `h3_only` is false).
    NotH3,
    /// No connection: the handshake failed or did not complete in time (why).
    NoHandshake(String),
}

/// How [`get`] connects and reports.
pub(crate) struct GetOptions<'a> {
    /// Fail when the server does not pick h3 (else [`Fetch::NotH3`]).
    pub(crate) h3_only: bool,
    /// How long the handshake may take.
    pub(crate) connect_limit: Duration,
    /// Told of every body byte and finished file.
    pub(crate) progress: &'a Progress,
}

/// `get` over h3: downloads `files` from `authority` over one connection.
pub(crate) fn get(
    addr: SocketAddr,
    server_name: &str,
    authority: &str,
    config: quinn_proto::ClientConfig,
    files: &[Download],
    opts: &GetOptions<'_>,
) -> Result<Fetch, Failure> {
    let engine = engine(addr, config, Some(1))?;
    let rt = runtime(1)?;
    let r = get_on(&engine, &rt, addr, server_name, authority, files, opts);
    drop(rt);
    engine.shutdown(Duration::from_secs(1));
    r
}

fn get_on(
    engine: &HandleEngine,
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    server_name: &str,
    authority: &str,
    files: &[Download],
    opts: &GetOptions<'_>,
) -> Result<Fetch, Failure> {
    let conn = match rt.block_on(connect(engine, addr, server_name, opts.connect_limit)) {
        Ok(c) => c,
        Err(why) => return Ok(Fetch::NoHandshake(why)),
    };
    // asks the shard (blocking, outside the runtime)
    let alpn = conn.alpn().map_err(|e| Failure::Refused(e.to_string()))?;
    if alpn.as_deref() != Some(ALPN_H3) {
        conn.close(quinn_proto::VarInt::from_u32(0), b"");
        if !opts.h3_only {
            return Ok(Fetch::NotH3);
        }
        let got = alpn.map_or("none".into(), |a| String::from_utf8_lossy(&a).into_owned());
        return Err(Failure::Refused(format!("server chose ALPN {got}, not h3")));
    }
    Ok(Fetch::H3(rt.block_on(download(
        conn,
        authority,
        files,
        opts.progress,
    ))))
}

async fn download(
    conn: Connection,
    authority: &str,
    files: &[Download],
    progress: &Progress,
) -> Result<usize, Failure> {
    let (send, drive) = client::connect(conn)
        .await
        .map_err(|e| Failure::Refused(format!("h3: {e}")))?;
    let driver = tokio::spawn(drive);
    let results: Vec<Result<(), String>> = stream::iter(files)
        .map(|f| get_one(send.clone(), authority, f, progress))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    drop(send);
    // the last sender closes the connection (H3_NO_ERROR); wait until the close went out
    let _ = tokio::time::timeout(CLOSE_LIMIT, driver).await;
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if errors.is_empty() {
        return Ok(files.len());
    }
    // one line: how many arrived, then each failure with its status
    Err(Failure::Refused(format!(
        "{} of {} files downloaded; {}",
        files.len() - errors.len(),
        files.len(),
        errors.join("; ")
    )))
}

async fn get_one(
    mut send: SendRequest,
    authority: &str,
    f: &Download,
    progress: &Progress,
) -> Result<(), String> {
    use std::io::Write;
    let what = format!("GET /{}", f.path);
    let file = std::fs::File::create(&f.dest).map_err(|e| format!("{}: {e}", f.dest.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let r = client::fetch(&mut send, Method::GET, authority, &f.path, |b| {
        progress.bytes(b.len() as u64);
        out.write_all(b)
    })
    .await;
    let r = match r {
        Ok(got) if got.status == StatusCode::OK => {
            progress.file_done();
            out.flush().map_err(|e| format!("{what}: {e}"))
        }
        Ok(got) => Err(format!("{what}: status {}", got.status)),
        Err(e) => Err(format!("{what}: {e}")),
    };
    if r.is_err() {
        drop(out);
        let _ = std::fs::remove_file(&f.dest);
    }
    r
}

/// `bench --alpn h3 --mode rr`: GETs of `path` on `p.connections` connections with `p.streams`
/// request loops each.
pub(crate) fn bench(
    p: &Params,
    config: quinn_proto::ClientConfig,
    shards: Option<usize>,
    path: &str,
) -> Result<Report, Failure> {
    let engine = Arc::new(engine(p.addr, config, shards)?);
    let rt = runtime(2)?;
    let start = Instant::now();
    let deadline = match p.limit {
        Limit::Duration(d) => Some(start + d),
        Limit::Requests(_) => None,
    };
    let budget = Arc::new(AtomicU64::new(match p.limit {
        Limit::Requests(n) => n,
        Limit::Duration(_) => u64::MAX,
    }));
    let report = Arc::new(Mutex::new(REPORT_RANK, Report::new(p.mode)));
    let hard_stop = deadline.unwrap_or(start + Duration::from_secs(3600)) + GRACE;
    rt.block_on(async {
        let conns = (0..p.connections).map(|_| {
            let run = Run {
                engine: engine.clone(),
                p: p.clone(),
                path: path.to_string(),
                deadline,
                budget: budget.clone(),
                report: report.clone(),
            };
            tokio::spawn(run.connection())
        });
        let all = futures_util::future::join_all(conns);
        if tokio::time::timeout_at(hard_stop.into(), all)
            .await
            .is_err()
        {
            let mut r = report.lock();
            r.first_error
                .get_or_insert_with(|| "connections did not finish in time".into());
        }
    });
    drop(rt);
    let mut r = Arc::try_unwrap(report)
        .map_err(|_| Failure::Refused("bench tasks outlived the runtime".into()))?
        .into_inner();
    r.elapsed = start.elapsed();
    if let Ok(e) = Arc::try_unwrap(engine) {
        e.shutdown(Duration::from_secs(1));
    }
    Ok(r)
}

/// One bench connection's settings and shared counters.
struct Run {
    engine: Arc<HandleEngine>,
    p: Params,
    path: String,
    deadline: Option<Instant>,
    /// Requests still to start (over all connections).
    budget: Arc<AtomicU64>,
    report: Arc<Mutex<Report>>,
}

impl Run {
    fn error(&self, e: String) {
        let mut r = self.report.lock();
        r.connection_errors += 1;
        r.first_error.get_or_insert(e);
    }

    async fn connection(self) {
        let t0 = Instant::now();
        let conn = match connect(
            &self.engine,
            self.p.addr,
            &self.p.server_name,
            CONNECT_LIMIT,
        )
        .await
        {
            Ok(c) => c,
            Err(e) => return self.error(e),
        };
        let hs = t0.elapsed();
        {
            let mut r = self.report.lock();
            r.handshakes += 1;
            let _ = r.handshake.record((hs.as_micros() as u64).max(1));
        }
        let (send, drive) = match client::connect(conn).await {
            Ok(x) => x,
            Err(e) => return self.error(format!("h3: {e}")),
        };
        let driver = tokio::spawn(drive);
        let loops = (0..self.p.streams).map(|_| self.request_loop(send.clone()));
        futures_util::future::join_all(loops).await;
        drop(send);
        let _ = tokio::time::timeout(CLOSE_LIMIT, driver).await;
    }

    /// Takes one request from the budget unless the run is over.
    fn next(&self) -> bool {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        self.budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    async fn request_loop(&self, mut send: SendRequest) {
        let authority = self.p.server_name.clone();
        while self.next() {
            let t = Instant::now();
            let r = client::fetch(&mut send, Method::GET, &authority, &self.path, |_| Ok(())).await;
            let latency = t.elapsed();
            let mut rep = self.report.lock();
            match r {
                Ok(got) if got.status == StatusCode::OK => {
                    rep.requests += 1;
                    rep.bytes += got.body_len;
                    let _ = rep.latency.record((latency.as_micros() as u64).max(1));
                }
                Ok(got) => {
                    rep.failed += 1;
                    rep.first_error
                        .get_or_insert_with(|| format!("GET {}: status {}", self.path, got.status));
                }
                Err(e) => {
                    rep.failed += 1;
                    rep.first_error
                        .get_or_insert_with(|| format!("GET {}: {e}", self.path));
                    // the connection is likely gone: stop this loop
                    return;
                }
            }
        }
    }
}
