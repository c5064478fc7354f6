//! `quicshard bench --mode handshake` against `quicshard serve` on loopback: the load generator
//! measures the handshake it asks for. By default every connection after the first
//! `--connections` resumes a session (its ticket store does not run dry in bursts, as rustls'
//! 8-ticket cache did); `--full-handshakes` turns resumption off. The report counts both.

mod common;

use common::{bench_json, serve_one_shard};

/// `quicshard bench --json --mode handshake` against a fresh one-shard `quicshard serve`.
fn handshakes(args: &[&str]) -> serde_json::Value {
    let server = serve_one_shard();
    let mut all = vec!["--mode", "handshake", "--size", "1024"];
    all.extend_from_slice(args);
    bench_json(server.port, &all)
}

#[test]
fn every_connection_after_the_first_burst_resumes() {
    // 32 at a time is four times rustls' 8-ticket cache: with it, a burst of reconnections
    // found the cache empty and fell back to full handshakes
    let r = handshakes(&["--connections", "32", "--requests", "400"]);
    assert_eq!(r["handshakes"], 400, "{r}");
    assert_eq!(r["requests"], 400, "{r}");
    // at most the first 32 have no ticket (fewer if one of them finished before the last
    // started); the first has none
    let full = r["full_handshakes"].as_u64().unwrap();
    assert!((1..=32).contains(&full), "{full} full handshakes: {r}");
}

#[test]
fn full_handshakes_turns_resumption_off() {
    let r = handshakes(&[
        "--connections",
        "8",
        "--requests",
        "100",
        "--full-handshakes",
    ]);
    assert_eq!(r["handshakes"], 100, "{r}");
    assert_eq!(r["full_handshakes"], 100, "{r}");
}
