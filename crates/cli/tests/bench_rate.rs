//! `quicshard bench --mode rr --rate R` (the open loop) against `quicshard serve` on loopback:
//! the schedule is kept (achieved rate, every request issued and completed), the latency report
//! is complete and ordered, latency counts from the due time (a blackout shows in p90, which
//! measuring from the stream's opening would hide), outstanding requests are capped and the
//! excess reported, and bad arguments are refused.

mod common;

use std::time::{Duration, Instant};

use common::{bench_json, qs, serve_one_shard as serve, Proc};

/// `quicshard bench --json --mode rr` against 127.0.0.1:PORT with `args`; the parsed report.
fn bench(port: u16, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--mode", "rr"];
    all.extend_from_slice(args);
    bench_json(port, &all)
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Checks the counters of a run where every scheduled request should complete.
fn assert_all_completed(r: &serde_json::Value, scheduled: u64) {
    let o = &r["open_loop"];
    assert_eq!(o["scheduled"], scheduled, "{r}");
    assert_eq!(o["issued"], scheduled, "{r}");
    assert_eq!(o["completed"], scheduled, "{r}");
    assert_eq!(r["requests"], scheduled, "{r}");
    assert_eq!(o["late"], 0, "{r}");
    assert_eq!(o["not_issued"], 0, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["connection_errors"], 0, "{r}");
    assert_eq!(r["bytes"], scheduled * 1024, "{r}");
}

#[test]
fn fixed_rate_is_kept_and_latency_reported() {
    let server = serve();
    let r = bench(
        server.port,
        &["--rate", "2000", "--duration", "2", "--connections", "4"],
    );
    assert_all_completed(&r, 4000);
    let target = f(&r["open_loop"]["target_per_s"]);
    assert_eq!(target, 2000.0, "{r}");
    for achieved in [&r["open_loop"]["achieved_per_s"], &r["requests_per_s"]] {
        let achieved = f(achieved);
        assert!(
            (achieved - target).abs() <= 0.1 * target,
            "achieved {achieved} req/s for a target of {target}: {r}"
        );
    }
    let elapsed = f(&r["elapsed_s"]);
    assert!((1.9..2.5).contains(&elapsed), "elapsed {elapsed}: {r}");
    let l = &r["latency_ms"];
    let (p50, p99, p999, max) = (f(&l["p50"]), f(&l["p99"]), f(&l["p999"]), f(&l["max"]));
    assert!(
        0.0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max,
        "latency out of order: {l}"
    );
    // 1 KiB each way on loopback, 2000 per second: far below any queueing
    assert!(p50 < 50.0, "p50 {p50} ms: {r}");
    assert_eq!(r["handshakes"], 4, "{r}");
    let stopped = server.stop();
    assert!(stopped.status.success(), "serve exit: {:?}", stopped.status);
}

/// `quicshard impair` in front of `server`, dark during `window` (seconds, `FROM-TO`).
fn blackout(server: &Proc, window: &str) -> Proc {
    let fwd = format!("127.0.0.1:{}", server.port);
    Proc::start(&[
        "impair",
        "--listen",
        "127.0.0.1:0",
        "--forward",
        &fwd,
        "--blackout",
        window,
    ])
}

/// A 300 ms blackout in the middle of the run: every request due during it waits for the
/// network to come back, and the open loop counts that wait from the due time. About 600
/// requests of 4000 (15%) are due in the blackout, so p90 shows it. Only the first 100 of them
/// get a stream (the server's stream limit); the other 500 wait for one, so measuring from
/// the stream's opening (coordinated omission) would hide them and leave p90 at a fraction of a
/// millisecond, as would a closed loop.
#[test]
fn latency_counts_from_the_due_time() {
    let server = serve();
    let proxy = blackout(&server, "1.0-1.3");
    // one client shard: the proxy follows one client address
    let r = bench(
        proxy.port,
        &[
            "--rate",
            "2000",
            "--duration",
            "2",
            "--connections",
            "1",
            "--shards",
            "1",
        ],
    );
    assert_all_completed(&r, 4000);
    let l = &r["latency_ms"];
    let (p50, p90, p99) = (f(&l["p50"]), f(&l["p90"]), f(&l["p99"]));
    assert!(p50 < 50.0, "p50 {p50} ms: {r}");
    assert!(p90 >= 50.0, "p90 {p90} ms does not show the blackout: {r}");
    assert!(p99 >= 200.0, "p99 {p99} ms does not show the blackout: {r}");
    drop(proxy);
    let stopped = server.stop();
    assert!(stopped.status.success(), "serve exit: {:?}", stopped.status);
}

/// The network goes dark for good after 0.5 s: requests pile up to the 4096 outstanding cap,
/// later ones are counted as not issued, and those still outstanding at the end as late; the
/// run still ends on time.
#[test]
fn outstanding_requests_are_capped_and_reported() {
    let server = serve();
    let proxy = blackout(&server, "0.5-60");
    let t = Instant::now();
    let r = bench(
        proxy.port,
        &["--rate", "4000", "--duration", "2", "--shards", "1"],
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    let o = &r["open_loop"];
    let n = |k: &str| o[k].as_u64().unwrap_or_else(|| panic!("{k}: {r}"));
    assert_eq!(n("scheduled"), 8000, "{r}");
    assert_eq!(n("issued") + n("not_issued"), 8000, "{r}");
    assert_eq!(n("completed"), r["requests"].as_u64().unwrap(), "{r}");
    assert!(
        n("completed") > 0,
        "nothing completed before the blackout: {r}"
    );
    assert!(n("not_issued") > 0, "the cap was never reached: {r}");
    assert_eq!(n("late"), n("issued") - n("completed"), "{r}");
    assert_eq!(n("late"), n("max_outstanding"), "{r}");
    let err = r["first_error"].as_str().unwrap_or_default();
    assert!(err.contains("outstanding"), "{r}");
    drop(proxy);
    drop(server);
}

#[test]
fn bad_rate_arguments_are_refused() {
    for args in [
        &["--rate", "0"][..],
        &["--rate=-5"],
        &["--rate", "100", "--mode", "bulk"],
        &["--rate", "100", "--alpn", "h3", "--path", "/x"],
    ] {
        let o = qs()
            .args(["bench", "--connect", "127.0.0.1:9", "--insecure"])
            .args(args)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("--rate"), "{args:?}: {err}");
    }
}
