//! `quicshard serve | get | bench` as processes: the ready line, downloads, stats on SIGTERM, and
//! one-line errors for bad input.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};

use common::{qs, tempdir, Proc};

/// `quicshard serve ARGS`.
fn serve(args: &[&str]) -> Proc {
    Proc::start(&[&["serve"], args].concat())
}

fn write_files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for (name, size) in [("a.txt", 10usize), ("b.bin", 300_000), ("c.bin", 2_000_000)] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
        std::fs::write(root.join(name), &data).unwrap();
        files.push((name.to_string(), data));
    }
    files
}

fn one_line_error(o: &Output) -> String {
    assert!(!o.status.success(), "expected failure");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(err.trim_end().lines().count(), 1, "stderr: {err}");
    err
}

#[test]
fn get_downloads_from_serve_and_stats_are_written_on_sigterm() {
    let root = tempdir("root");
    let out = tempdir("out");
    let stats = root.join("../stats.json");
    let files = write_files(&root);
    let server = serve(&[
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--root",
        root.to_str().unwrap(),
        "--stats-file",
        stats.to_str().unwrap(),
    ]);
    let urls: Vec<String> = files
        .iter()
        .map(|(n, _)| format!("https://localhost:{}/{n}", server.port))
        .collect();
    let o = qs()
        .args(["get", "--insecure", "--output", out.to_str().unwrap()])
        .args(&urls)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "get: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for (name, data) in &files {
        assert_eq!(&std::fs::read(out.join(name)).unwrap(), data, "{name}");
    }
    // a missing file and a path outside the root both fail the download
    for path in ["missing.txt", "../stats.json"] {
        let o = qs()
            .args(["get", "--insecure", "--output", out.to_str().unwrap()])
            .arg(format!("https://localhost:{}/{path}", server.port))
            .output()
            .unwrap();
        let err = one_line_error(&o);
        assert!(err.contains("0 of 1"), "{path}: {err}");
    }
    let stopped = server.stop();
    assert!(stopped.status.success(), "serve exit: {:?}", stopped.status);
    assert!(
        stopped.stdout.is_empty(),
        "only the ready line goes to stdout"
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    let shards = json["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    let accepted: u64 = shards
        .iter()
        .map(|s| s["connections_accepted"].as_u64().unwrap())
        .sum();
    assert_eq!(accepted, 3, "one connection per get");
    for key in [
        "shard",
        "datagrams_in",
        "datagrams_out",
        "handoffs_in",
        "handoffs_out",
        "dropped",
    ] {
        assert!(shards[0].get(key).is_some(), "missing {key}");
    }
}

#[test]
fn bench_reports_json() {
    let server = serve(&["--listen", "127.0.0.1:0", "--shards", "2"]);
    let o = qs()
        .args([
            "bench",
            "--connect",
            &format!("127.0.0.1:{}", server.port),
            "--insecure",
            "--connections",
            "4",
            "--streams",
            "2",
        ])
        .args([
            "--requests",
            "400",
            "--mode",
            "rr",
            "--size",
            "1024",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["requests"], 400);
    assert_eq!(r["failed"], 0);
    assert_eq!(r["bytes"], 400 * 1024);
    assert_eq!(r["handshakes"], 4);
    assert!(r["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    let o = qs()
        .args([
            "bench",
            "--connect",
            &format!("127.0.0.1:{}", server.port),
            "--insecure",
            "--connections",
            "3",
        ])
        .args(["--requests", "30", "--mode", "handshake", "--json"])
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (r["requests"].as_u64(), r["handshakes"].as_u64()),
        (Some(30), Some(30))
    );
    assert!(server.stop().status.success());
}

#[test]
fn bad_input_is_one_line_and_nonzero() {
    let dir = tempdir("bad");
    std::fs::write(dir.join("junk.pem"), "not a pem").unwrap();
    let junk = dir.join("junk.pem");
    let busy = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    // another quicshard server (an SO_REUSEPORT group of the same user) holds this one
    let other = serve(&["--listen", "127.0.0.1:0", "--shards", "2"]);
    let other_addr = format!("127.0.0.1:{}", other.port);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["serve", "--bogus"], "--bogus"),
        (vec!["serve", "--listen", "nonsense"], "nonsense"),
        (
            vec![
                "serve",
                "--cert",
                "/nonexistent.pem",
                "--key",
                "/nonexistent.pem",
                "--listen",
                "127.0.0.1:0",
            ],
            "--cert",
        ),
        (
            vec![
                "serve",
                "--cert",
                junk.to_str().unwrap(),
                "--key",
                junk.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ],
            "--cert",
        ),
        (vec!["serve", "--listen", &busy_addr], "cannot bind"),
        (vec!["serve", "--listen", &other_addr], "cannot bind"),
        (
            vec![
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--root",
                "/nonexistent-dir",
            ],
            "--root",
        ),
        (
            vec!["serve", "--listen", "127.0.0.1:0", "--shards", "0"],
            "--shards",
        ),
        (vec!["get", "--insecure", "http://localhost/x"], "https://"),
        (
            vec!["get", "--ca", "/nonexistent.pem", "https://localhost:1/x"],
            "--ca /nonexistent.pem: No such file",
        ),
        (
            vec!["bench", "--connect", "nowhere", "--insecure"],
            "--connect",
        ),
    ];
    for (args, needle) in cases {
        let o = qs().args(&args).stdin(Stdio::null()).output().unwrap();
        let err = one_line_error(&o);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
}
