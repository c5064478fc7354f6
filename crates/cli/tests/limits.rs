//! Limits of `quicshard serve`, each pushed past by a client that ignores it: connections per
//! shard, streams per connection, the idle timeout and the per-connection receive buffers (stream
//! and connection flow-control windows). Every exceeded limit must end that connection with the
//! right QUIC error, leave the server serving, and the server must exit 0 without a handler panic.
//!
//! The misbehaving client is aioquic (`tests/interop/limits_peer.py`) with its view of the
//! server's limits overwritten after the handshake: an independent stack sending what a hostile
//! client would.

mod common;

use std::process::Command;

use common::{aioquic_python, workspace_root, Proc};
use serde_json::Value;

/// RFC 9000 §20.1 transport error codes.
const CONNECTION_REFUSED: u64 = 0x2;
const FLOW_CONTROL_ERROR: u64 = 0x3;
const STREAM_LIMIT_ERROR: u64 = 0x4;

/// One connection as the peer saw it end.
#[derive(Debug)]
struct Outcome {
    connected: bool,
    error_code: Option<u64>,
    reason: String,
    elapsed: Option<f64>,
}

/// Runs `tests/interop/NAME ARGS --connect 127.0.0.1:PORT`, asserting exit 0; its stdout.
fn python(script: &str, args: &[&str], port: u16) -> String {
    let out = Command::new(aioquic_python())
        .arg(workspace_root().join("tests/interop").join(script))
        .args(args)
        .args(["--connect", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The limits peer's report: one outcome per connection.
fn peer(args: &[&str], port: u16) -> Vec<Outcome> {
    python("limits_peer.py", args, port)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
            Outcome {
                connected: v["connected"].as_bool().unwrap(),
                error_code: v["error_code"].as_u64(),
                reason: v["reason"].as_str().unwrap_or_default().to_string(),
                elapsed: v["elapsed"].as_f64(),
            }
        })
        .collect()
}

/// An honest client after the violation: 16 echo streams of 200 kB (more streams and bytes than
/// the limits allow at once) all come back whole.
fn still_serves(port: u16) {
    python(
        "aioquic_hq.py",
        &["echo", "--streams", "16", "--size", "200000"],
        port,
    );
}

/// `serve` on one shard with `limits`, and where its stats go.
fn serve(tag: &str, limits: &[&str]) -> (Proc, std::path::PathBuf) {
    let stats = common::tempdir(tag).join("stats.json");
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--stats-file",
        stats.to_str().unwrap(),
    ];
    args.extend_from_slice(limits);
    (Proc::start(&args), stats)
}

/// SIGTERM: exit 0, no handler panicked; the shard's counters.
fn stop(server: Proc, stats: &std::path::Path) -> Value {
    let out = server.stop();
    assert!(
        out.status.success(),
        "serve: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&std::fs::read(stats).unwrap()).unwrap();
    let shard = v["shards"][0].clone();
    assert_eq!(shard["handler_panics"], 0, "{shard}");
    shard
}

/// The single outcome of a one-connection run, closed by the server with `code`.
fn assert_closed_with(outcomes: &[Outcome], code: u64) {
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    let o = &outcomes[0];
    assert!(o.connected, "{o:?}");
    assert_eq!(o.error_code, Some(code), "{o:?}");
}

#[test]
fn connections_beyond_the_shard_limit_are_refused() {
    let (server, stats) = serve("limit-conns", &["--max-connections", "2"]);
    let outcomes = peer(&["connections", "--count", "3"], server.port);
    // the peer reports a refused connection at once and the held ones at the end
    assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    let refused: Vec<_> = outcomes.iter().filter(|o| !o.connected).collect();
    assert_eq!(refused.len(), 1, "{outcomes:?}");
    assert_eq!(
        refused[0].error_code,
        Some(CONNECTION_REFUSED),
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .filter(|o| o.connected)
            .all(|o| o.error_code.is_none()),
        "a connection within the limit was closed: {outcomes:?}"
    );
    let shard = stop(server, &stats);
    assert_eq!(shard["handshakes"], 2, "{shard}");
    assert!(
        shard["connections_refused"].as_u64().unwrap() >= 1,
        "{shard}"
    );
}

#[test]
fn streams_beyond_the_limit_are_a_stream_limit_error() {
    let (server, stats) = serve("limit-streams", &["--max-streams", "10"]);
    assert_closed_with(
        &peer(&["streams", "--open", "50"], server.port),
        STREAM_LIMIT_ERROR,
    );
    still_serves(server.port);
    stop(server, &stats);
}

#[test]
fn idle_connections_are_closed_by_the_server_timeout() {
    let (server, stats) = serve("limit-idle", &["--idle-timeout", "500"]);
    let outcomes = peer(&["idle"], server.port);
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    let o = &outcomes[0];
    // the peer asked for 60 s: only the server's 500 ms can end it this early (aioquic waits at
    // least 3 PTOs, so a little more than 500 ms)
    assert!(o.connected && o.reason == "Idle timeout", "{o:?}");
    let t = o.elapsed.unwrap();
    assert!((0.45..5.0).contains(&t), "idle close after {t} s: {o:?}");
    let shard = stop(server, &stats);
    assert_eq!(shard["handshakes"], 1, "{shard}");
}

#[test]
fn a_stream_past_its_window_is_a_flow_control_error() {
    // 1000 bytes at offset 100 000 of a stream with a 64 KiB window: the gap before them keeps
    // the server from reading, so its window cannot have moved
    let limits = ["--stream-window", "65536", "--conn-window", "16777216"];
    let (server, stats) = serve("limit-stream-window", &limits);
    let args = ["flow", "--bytes", "1000", "--offset", "100000"];
    assert_closed_with(&peer(&args, server.port), FLOW_CONTROL_ERROR);
    still_serves(server.port);
    stop(server, &stats);
}

#[test]
fn a_connection_past_its_window_is_a_flow_control_error() {
    // four streams each ending at 60 000, within the 64 KiB stream window; 240 000 together,
    // past the 128 KiB connection window
    let limits = ["--stream-window", "65536", "--conn-window", "131072"];
    let (server, stats) = serve("limit-conn-window", &limits);
    let args = [
        "flow",
        "--bytes",
        "20000",
        "--offset",
        "40000",
        "--streams",
        "4",
    ];
    assert_closed_with(&peer(&args, server.port), FLOW_CONTROL_ERROR);
    still_serves(server.port);
    stop(server, &stats);
}

/// Hostile input beyond the limits: a client-opened unidirectional stream on echo.
#[test]
fn a_unidirectional_stream_is_not_a_handler_panic() {
    let (server, stats) = serve("limit-uni", &[]);
    let outcomes = peer(
        &["flow", "--bytes", "1000", "--uni", "--timeout", "2"],
        server.port,
    );
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_ne!(
        outcomes[0].error_code,
        Some(quicshard::HANDLER_PANIC_CODE.into()),
        "{outcomes:?}"
    );
    still_serves(server.port);
    stop(server, &stats);
}

#[test]
fn bad_limit_flags_are_usage_errors() {
    let out = common::qs()
        .args([
            "serve",
            "--stream-window",
            "200000",
            "--conn-window",
            "100000",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
