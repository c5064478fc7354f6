//! `quicshard serve --handover PATH` as processes: two takeovers under load (request/response on
//! established connections and a continuous stream of new handshakes) with no failed request
//! and no failed handshake; each replaced server exits 0 by itself; tickets from an old process
//! resume on the new one.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{qs, tempdir, Proc};

const LIMIT: Duration = Duration::from_secs(60);

fn serve(path: &str, stats: &str) -> Proc {
    Proc::start_with(
        qs().env("RUST_LOG", "quicshard::handover=info").args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--handover",
            path,
            "--drain-timeout",
            "30",
            "--stats-file",
            stats,
        ]),
        0,
    )
    .0
}

/// `quicshard bench` against `port` in the background, JSON report on stdout.
fn bench(port: u16, args: &[&str]) -> Child {
    let mut cmd: Command = qs();
    cmd.args(["bench", "--insecure", "--json", "--connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().unwrap()
}

/// The bench's report; fails on any failed request, connection error or extra full handshake.
fn bench_ok(child: Child, what: &str, full_handshakes: Option<u64>) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what}: {err}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["failed"], 0, "{what}: {r}");
    assert_eq!(r["connection_errors"], 0, "{what}: {r}");
    assert!(r["requests"].as_u64().unwrap() > 0, "{what}: {r}");
    // resumption works across the takeovers: at most each loop's first handshake is full
    // (a loop may resume another's ticket)
    if let Some(n) = full_handshakes {
        let full = r["full_handshakes"].as_u64().unwrap();
        assert!(full >= 1 && full <= n, "{what}: {r}");
    }
    r
}

fn stats(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn sum(stats: &serde_json::Value, counter: &str) -> u64 {
    stats["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[counter].as_u64().unwrap())
        .sum()
}

#[test]
fn two_takeovers_under_load_fail_nothing() {
    let dir = tempdir("handover");
    let sock = dir.join("serve.sock");
    let sock = sock.to_str().unwrap();
    let st = |n: &str| dir.join(format!("{n}.json"));
    let a = serve(sock, st("a").to_str().unwrap());
    let port = a.port;
    // new handshakes all along (each resuming a ticket once it has one), and request/response on
    // established connections, first on a
    let handshakes = bench(
        port,
        &[
            "--mode",
            "handshake",
            "--connections",
            "2",
            "--duration",
            "9",
        ],
    );
    let rr_a = bench(
        port,
        &["--mode", "rr", "--connections", "8", "--duration", "3"],
    );
    // place the takeover inside the load (the assertions hold whenever it happens)
    std::thread::sleep(Duration::from_millis(1000));
    let mut b = serve(sock, st("b").to_str().unwrap());
    assert_eq!(b.port, port, "the successor serves the same port");
    let rr_b = bench(
        port,
        &["--mode", "rr", "--connections", "8", "--duration", "4"],
    );
    // a finishes its own connections (rr_a ends) and exits 0 by itself
    let out = a.wait(LIMIT);
    assert!(
        out.status.success(),
        "a: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sa = stats(&st("a"));
    assert_eq!(sa["handover"]["replaced"], true, "{sa}");
    assert_eq!(sa["handover"]["generation"], 1);
    assert_eq!(sa["handover"]["closed_at_drain_timeout"], 0, "{sa}");
    bench_ok(rr_a, "rr on a", None);
    b.stderr_line("the predecessor exited", LIMIT);

    // the second takeover, while rr_b runs on b
    let c = serve(sock, st("c").to_str().unwrap());
    assert_eq!(c.port, port);
    let out = b.wait(LIMIT);
    assert!(
        out.status.success(),
        "b: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sb = stats(&st("b"));
    assert_eq!(sb["handover"]["generation"], 2);
    assert_eq!(sb["handover"]["replaced"], true);
    bench_ok(rr_b, "rr on b", None);
    let h = bench_ok(handshakes, "handshakes across both takeovers", Some(2));
    let out = c.stop();
    assert!(out.status.success());
    let sc = stats(&st("c"));
    assert_eq!(sc["handover"]["generation"], 3);
    // every process took new connections, and tickets of its predecessors resumed on b and c
    let accepted = [&sa, &sb, &sc].map(|s| sum(s, "connections_accepted"));
    assert!(accepted.iter().all(|&n| n > 0), "{accepted:?}");
    assert!(sum(&sb, "resumptions") > 0 && sum(&sc, "resumptions") > 0);
    assert_eq!(
        accepted.iter().sum::<u64>(),
        h["handshakes"].as_u64().unwrap() + 8 + 8,
        "every handshake was accepted by exactly one process"
    );
}

#[test]
fn handover_flags_are_checked() {
    let dir = tempdir("handover-flags");
    let sock = dir.join("s.sock");
    let a = serve(sock.to_str().unwrap(), dir.join("a.json").to_str().unwrap());
    // another shard count is refused by the running server, in one line
    let o = qs()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "3",
            "--handover",
        ])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("refused the handover") && err.contains("2 shards"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    drop(a);
}

#[test]
fn a_socket_left_by_a_killed_server_is_replaced() {
    let dir = tempdir("handover-killed");
    let sock = dir.join("s.sock");
    let stats_path = dir.join("b.json");
    let a = serve(sock.to_str().unwrap(), dir.join("a.json").to_str().unwrap());
    a.signal(libc::SIGKILL);
    drop(a);
    assert!(
        sock.exists(),
        "the killed server's socket file stays behind"
    );
    // the next server finds nobody behind it and starts fresh, as generation 1
    let b = serve(sock.to_str().unwrap(), stats_path.to_str().unwrap());
    let o = qs()
        .args([
            "bench",
            "--insecure",
            "--json",
            "--mode",
            "handshake",
            "--requests",
            "20",
        ])
        .args(["--connect", &format!("127.0.0.1:{}", b.port)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = b.stop();
    assert!(out.status.success());
    let s = stats(&stats_path);
    assert_eq!(s["handover"]["generation"], 1, "{s}");
    assert!(
        !sock.exists(),
        "a server removes its own socket file when it stops"
    );
}
