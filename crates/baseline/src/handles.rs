//! `handles-server`: the `perf` protocol on quicshard's thread-safe handles (issue #5's
//! benchmark), to compare with the same protocol on the callback API (`quicshard serve`).
//!
//! - `--api blocking`: an acceptor thread, a thread per connection (`accept_bi` until the client
//!   closes) and a thread per stream using `std::io::Read` and `write_all_bytes_until`;
//! - `--api async`: a multi-threaded tokio runtime (`--workers` threads), a task per connection
//!   and per stream using the `*_async` methods.
//!
//! Both write the response as `Bytes` slices of a static pattern table in chunks of
//! [`proto::CHUNK`](quicshard_apps::CHUNK) bytes, without copying, as `serve` does. Only `perf` is offered (ALPN `perf`): that is what `quicshard bench` speaks.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quicshard::handle::{Connection, HandleConfig, RecvStream, SendStream};
use quicshard::quinn_proto::VarInt;
use quicshard::HandleEngine;

use crate::{signals, CommonArgs, Fatal};
use quicshard_apps::{self as proto, ALPN_PERF, BAD_REQUEST};

/// How long the engine drains connections on shutdown (as `serve`).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// Blocking calls give up after this long without progress (a benchmark must not hang).
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the blocking acceptor checks for shutdown.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// Which handle API serves the streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Api {
    /// std threads, `std::io::Read` / `Write`.
    Blocking,
    /// tokio tasks, `read_async` / `write_all_async`.
    Async,
}

/// Arguments of `handles-server`.
#[derive(clap::Parser, Debug)]
#[command(about = "perf server on quicshard's thread-safe handles (blocking or async)")]
pub struct Args {
    /// The flags shared with `quicshard serve`.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Which handle API serves the streams.
    #[arg(long, value_enum, default_value_t = Api::Blocking)]
    pub api: Api,
    /// tokio worker threads for `--api async` (default: as many as shards).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Do not attach the BPF steering program.
    #[arg(long)]
    pub no_bpf: bool,
    /// Bytes buffered per stream direction between the app and the shard, in KiB (the engine's
    /// `HandleConfig::pipe_capacity`).
    #[arg(long, default_value_t = 256)]
    pub pipe_kib: usize,
}

/// Serves until SIGINT/SIGTERM.
pub fn run(args: Args) -> Result<(), Fatal> {
    let c = &args.common;
    let tls = crate::tls::server_config(c.cert.as_deref(), c.key.as_deref(), &[ALPN_PERF])?;
    signals::block()?;
    let config = HandleConfig {
        pipe_capacity: args.pipe_kib.max(1) * 1024,
    };
    let engine = HandleEngine::builder_with(config)
        .listen(c.listen)
        .shards(c.threads())
        .bpf(!args.no_bpf)
        .server_tls(tls)
        .start()?;
    println!("listening on {}", engine.local_addr());
    let engine = Arc::new(engine);
    match args.api {
        Api::Blocking => {
            let stop = Arc::new(AtomicBool::new(false));
            let (e, s) = (engine.clone(), stop.clone());
            let acceptor = std::thread::spawn(move || accept_blocking(&e, &s));
            signals::wait()?;
            stop.store(true, Ordering::Relaxed);
            let _ = acceptor.join();
        }
        Api::Async => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.workers.unwrap_or(c.threads()).max(1))
                .enable_all()
                .build()?;
            let e = engine.clone();
            rt.spawn(async move {
                loop {
                    let conn = e.accept_async().await;
                    tokio::spawn(serve_async(conn));
                }
            });
            signals::wait()?;
            rt.shutdown_timeout(Duration::from_millis(100));
        }
    }
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.shutdown(DRAIN_TIMEOUT);
    }
    Ok(())
}

fn accept_blocking(engine: &HandleEngine, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(conn) = engine.accept_until(Some(Instant::now() + STOP_CHECK)) {
            std::thread::spawn(move || serve_blocking(conn));
        }
    }
}

/// A connection: a thread per stream until the client closes it.
fn serve_blocking(conn: Connection) {
    loop {
        match conn.accept_bi() {
            Ok((send, recv)) => {
                std::thread::spawn(move || perf_blocking(send, recv));
            }
            // the client closed the connection (or the engine stopped): nothing more to accept
            Err(_) => return,
        }
    }
}

fn perf_blocking(mut send: SendStream, mut recv: RecvStream) {
    send.set_timeout(Some(STALL_TIMEOUT));
    recv.set_timeout(Some(STALL_TIMEOUT));
    let mut len = [0u8; 8];
    let mut drain = vec![0u8; 64 * 1024];
    let upload_ok = recv.read_exact(&mut len).is_ok()
        && loop {
            match recv.read(&mut drain) {
                Ok(0) => break true,
                Ok(_) => {}
                Err(_) => break false,
            }
        };
    if !upload_ok {
        let _ = send.reset(VarInt::from_u32(BAD_REQUEST));
        return;
    }
    let (total, mut sent) = (u64::from_be_bytes(len), 0u64);
    while sent < total {
        // the static table as `Bytes`: the pipe and quinn-proto keep it without copying
        let chunk = proto::pattern(sent, total - sent);
        if send
            .write_all_bytes_until(Bytes::from_static(chunk), None)
            .is_err()
        {
            return;
        }
        sent += chunk.len() as u64;
    }
    let _ = send.finish();
}

/// A connection: a task per stream until the client closes it.
async fn serve_async(conn: Connection) {
    loop {
        match conn.accept_bi_async().await {
            Ok((send, recv)) => {
                tokio::spawn(perf_async(send, recv));
            }
            // the client closed the connection (or the engine stopped): nothing more to accept
            Err(_) => return,
        }
    }
}

async fn perf_async(mut send: SendStream, mut recv: RecvStream) {
    let mut len = [0u8; 8];
    let mut have = 0;
    let mut drain = vec![0u8; 64 * 1024];
    let upload_ok = loop {
        match recv.read_async(&mut drain).await {
            Ok(0) => break have == 8,
            Ok(n) => {
                let take = (8 - have).min(n);
                len[have..have + take].copy_from_slice(&drain[..take]);
                have += take;
            }
            Err(_) => break false,
        }
    };
    if !upload_ok {
        let _ = send.reset(VarInt::from_u32(BAD_REQUEST));
        return;
    }
    let (total, mut sent) = (u64::from_be_bytes(len), 0u64);
    while sent < total {
        let chunk = proto::pattern(sent, total - sent);
        if send
            .write_all_bytes_async(Bytes::from_static(chunk))
            .await
            .is_err()
        {
            return;
        }
        sent += chunk.len() as u64;
    }
    let _ = send.finish();
}
