//! Observability of `serve`, `get` and `lb` as processes: qlog traces (`--qlog-dir`, `QLOGDIR`),
//! TLS key logs (`SSLKEYLOGFILE`), Prometheus metrics (`--metrics`, parsed by Python
//! prometheus-client's OpenMetrics parser), the `--stats-file` check at start-up, and logs (no
//! ANSI colour into a pipe, `--log-format json`, a bad `RUST_LOG`, the connection-close line).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{qs, tempdir, venv_python, Proc};

/// `quicshard serve` on loopback with `shards` shards, an empty root and `extra` flags; the
/// process and the stdout lines after the ready line (`more` of them).
fn serve(shards: &str, extra: &[&str], env: &[(&str, &Path)], more: usize) -> (Proc, Vec<String>) {
    let root = tempdir("obs-root");
    std::fs::write(root.join("f.txt"), b"observability\n").unwrap();
    let mut cmd = qs();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--shards", shards])
        .args(["--root", root.to_str().unwrap()])
        .args(extra)
        .env_remove("QLOGDIR")
        .env_remove("SSLKEYLOGFILE")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::start_with(&mut cmd, more)
}

/// `quicshard get` of `/f.txt` from the server on `port`: one connection; fails the test if the
/// download fails.
fn get(port: u16, extra: &[&str], env: &[(&str, &Path)]) {
    let out = tempdir("obs-out");
    let mut cmd = qs();
    cmd.args(["get", "--insecure", "--output", out.to_str().unwrap()])
        .args(extra)
        .arg(format!("https://127.0.0.1:{port}/f.txt"))
        .env_remove("QLOGDIR")
        .env_remove("SSLKEYLOGFILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "get: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        std::fs::read(out.join("f.txt")).unwrap(),
        b"observability\n"
    );
}

/// The files of `dir`, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// The records of a JSON-SEQ file (RFC 7464: RS, JSON text, LF), each parsed.
fn json_seq(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.split('\u{1e}')
        .filter(|r| !r.trim().is_empty())
        .map(|r| {
            serde_json::from_str(r.trim_end())
                .unwrap_or_else(|e| panic!("{}: record {r:?}: {e}", path.display()))
        })
        .collect()
}

/// The ODCIDs (hex) of the traces in `dir` ending in `_ROLE.sqlog`; every trace is checked:
/// a JSON-SEQ header, then events with a time and a name, packets both sent and received.
fn traces(dir: &Path, role: &str) -> BTreeSet<String> {
    let mut odcids = BTreeSet::new();
    for f in files(dir) {
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        let odcid = name
            .strip_suffix(&format!("_{role}.sqlog"))
            .unwrap_or_else(|| panic!("{name}: not a {role} trace"));
        assert!(
            odcid.len() >= 16 && odcid.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}"
        );
        let records = json_seq(&f);
        assert_eq!(records[0]["qlog_format"], "JSON-SEQ", "{name}: header");
        let names: BTreeSet<&str> = records[1..]
            .iter()
            .map(|e| {
                assert!(e["time"].is_number(), "{name}: event without time: {e}");
                e["name"].as_str().unwrap_or_else(|| panic!("{name}: {e}"))
            })
            .collect();
        for want in ["transport:packet_sent", "transport:packet_received"] {
            assert!(names.contains(want), "{name}: no {want} in {names:?}");
        }
        odcids.insert(odcid.to_string());
    }
    odcids
}

#[test]
fn qlog_writes_one_trace_per_connection_and_side() {
    let (sdir, cdir, env_dir) = (tempdir("qlog-s"), tempdir("qlog-c"), tempdir("qlog-env"));
    // the flag wins over QLOGDIR
    let (server, _) = serve(
        "2",
        &["--qlog-dir", sdir.to_str().unwrap()],
        &[("QLOGDIR", &env_dir)],
        0,
    );
    get(server.port, &["--qlog-dir", cdir.to_str().unwrap()], &[]);
    // QLOGDIR alone is honoured
    get(server.port, &[], &[("QLOGDIR", &cdir)]);
    // traces are complete once the connections are gone
    let o = server.stop();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        files(&env_dir).is_empty(),
        "QLOGDIR used despite --qlog-dir"
    );
    let server_side = traces(&sdir, "server");
    let client_side = traces(&cdir, "client");
    assert_eq!(server_side.len(), 2, "{server_side:?}");
    assert_eq!(
        server_side, client_side,
        "both sides name a connection by its ODCID"
    );
}

/// The NSS key log lines of `path`: `(label, client random, secret)`.
fn key_log(path: &Path) -> BTreeSet<(String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 3, "{l:?}");
            assert_eq!(f[1].len(), 64, "client random: {l:?}");
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

#[test]
fn sslkeylogfile_is_honoured_by_serve_and_get_with_identical_secrets() {
    let dir = tempdir("keylog");
    let (skeys, ckeys) = (dir.join("server.keys"), dir.join("client.keys"));
    let (server, _) = serve("1", &[], &[("SSLKEYLOGFILE", &skeys)], 0);
    get(server.port, &[], &[("SSLKEYLOGFILE", &ckeys)]);
    get(server.port, &[], &[("SSLKEYLOGFILE", &ckeys)]);
    server.stop();
    let (s, c) = (key_log(&skeys), key_log(&ckeys));
    assert_eq!(s, c, "server and client logged different secrets");
    let randoms: BTreeSet<&str> = s.iter().map(|(_, r, _)| r.as_str()).collect();
    assert_eq!(
        randoms.len(),
        2,
        "one client random per connection: {randoms:?}"
    );
    for r in randoms {
        let labels: BTreeSet<&str> = s
            .iter()
            .filter(|(_, cr, _)| cr == r)
            .map(|(l, _, _)| l.as_str())
            .collect();
        for want in [
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
            "SERVER_HANDSHAKE_TRAFFIC_SECRET",
            "CLIENT_TRAFFIC_SECRET_0",
            "SERVER_TRAFFIC_SECRET_0",
        ] {
            assert!(labels.contains(want), "{r}: no {want} in {labels:?}");
        }
    }
}

/// `GET /metrics` at `url` (`http://ADDR/metrics`): the status line and the body.
fn scrape(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /{path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The metrics page parsed by prometheus-client's OpenMetrics parser: sample name → (labels as
/// `k=v,...` → value), and family name → type.
type Samples = BTreeMap<String, BTreeMap<String, f64>>;
fn parse_openmetrics(body: &str) -> (Samples, BTreeMap<String, String>) {
    let py = venv_python("prometheus_client");
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
samples, types = {}, {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    types[fam.name] = fam.type
    for s in fam.samples:
        key = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        samples.setdefault(s.name, {})[key] = s.value
print(json.dumps({"samples": samples, "types": types}))
"#;
    let mut child = Command::new(py)
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let o: Output = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "the OpenMetrics parser refused the page: {}\n{body}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    (
        serde_json::from_value(v["samples"].clone()).unwrap(),
        serde_json::from_value(v["types"].clone()).unwrap(),
    )
}

/// The sum of a sample over its label sets (0 if absent).
fn total(samples: &Samples, name: &str) -> f64 {
    samples.get(name).map_or(0.0, |m| m.values().sum())
}

#[test]
fn serve_metrics_count_every_connection_and_parse_as_openmetrics() {
    const N: usize = 3;
    let (server, lines) = serve("2", &["--metrics", "127.0.0.1:0"], &[], 1);
    let url = lines[0].strip_prefix("metrics on ").unwrap().to_string();
    for _ in 0..N {
        get(server.port, &[], &[]);
    }
    let (status, body) = scrape(&url);
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let (samples, types) = parse_openmetrics(&body);
    let n = N as f64;
    assert_eq!(total(&samples, "quicshard_connections_accepted_total"), n);
    assert_eq!(total(&samples, "quicshard_handshakes_total"), n);
    assert_eq!(
        total(&samples, "quicshard_handshake_duration_seconds_count"),
        n
    );
    assert_eq!(
        samples["quicshard_handshake_duration_seconds_bucket"]["le=+Inf,shard=0"]
            + samples["quicshard_handshake_duration_seconds_bucket"]["le=+Inf,shard=1"],
        n
    );
    // every ShardStats field, per shard, with its type
    for (field, _) in quicshard::ShardStats::default().fields() {
        let gauge = quicshard::stats::GAUGES.contains(&field);
        let family = format!("quicshard_{field}");
        let want = if gauge { "gauge" } else { "counter" };
        assert_eq!(
            types.get(&family).map(String::as_str),
            Some(want),
            "{family}"
        );
        let sample = if gauge {
            family
        } else {
            format!("{family}_total")
        };
        let shards: Vec<&String> = samples[&sample].keys().collect();
        assert_eq!(shards, ["shard=0", "shard=1"], "{sample}");
    }
    assert_eq!(types["quicshard_handshake_duration_seconds"], "histogram");
    // anything but GET /metrics is refused
    let (status, _) = scrape(&url.replace("/metrics", "/other"));
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let o = server.stop();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A proxy-mode load balancer config with one (absent) backend, in `dir`.
fn lb_config(dir: &Path) -> PathBuf {
    let config = dir.join("lb.toml");
    std::fs::write(
        &config,
        r#"listen = "127.0.0.1:0"
mode = "proxy"
[[quic_lb]]
id = 1
server_id_len = 2
nonce_len = 8
key = "8f95f09245765f80256934e50c66207f"
[[backend]]
server_id = "0a01"
address = "127.0.0.1:9"
"#,
    )
    .unwrap();
    config
}

#[test]
fn lb_metrics_count_datagrams_and_parse_as_openmetrics() {
    const N: u64 = 5;
    let dir = tempdir("lb-metrics");
    let config = lb_config(&dir);
    let (lb, lines) = Proc::start_with(
        qs().args(["lb", "--config", config.to_str().unwrap()])
            .args(["--metrics", "127.0.0.1:0"]),
        1,
    );
    let url = lines[0].strip_prefix("metrics on ").unwrap().to_string();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..N {
        sock.send_to(&[0x40; 40], ("127.0.0.1", lb.port)).unwrap();
    }
    // the receivers count asynchronously: scrape until they saw all N (bounded)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (samples, types) = loop {
        let (status, body) = scrape(&url);
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        let (samples, types) = parse_openmetrics(&body);
        if total(&samples, "quicshard_lb_receivers_received_total") >= N as f64
            || std::time::Instant::now() > deadline
        {
            break (samples, types);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(
        total(&samples, "quicshard_lb_receivers_received_total"),
        N as f64
    );
    assert_eq!(types["quicshard_lb_receivers_received"], "counter");
    assert_eq!(types["quicshard_lb_sizes_pool"], "gauge");
    assert_eq!(types["quicshard_lb_sessions"], "gauge");
    let o = lb.stop();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Asserts `o` failed with exit status 2 and one line on stderr containing `needle`.
fn one_line_usage_error(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{err}");
    assert!(
        o.stdout.is_empty(),
        "started anyway: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn stats_file_in_a_missing_directory_fails_at_start_up() {
    let missing = tempdir("stats").join("no/such/dir/stats.json");
    let m = missing.to_str().unwrap();
    let o = qs()
        .args(["serve", "--listen", "127.0.0.1:0", "--stats-file", m])
        .output()
        .unwrap();
    one_line_usage_error(&o, "--stats-file");
    let config = lb_config(&tempdir("stats-lb"));
    let o = qs()
        .args([
            "lb",
            "--config",
            config.to_str().unwrap(),
            "--stats-file",
            m,
        ])
        .output()
        .unwrap();
    one_line_usage_error(&o, "--stats-file");
}

#[test]
fn invalid_rust_log_is_a_one_line_error() {
    let o = qs()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "quicshard=loud")
        .output()
        .unwrap();
    one_line_usage_error(&o, "RUST_LOG");
}

/// Serve with `RUST_LOG=info` and `extra` flags, one download, stop: the server's stderr.
fn serve_log(extra: &[&str]) -> String {
    let root = tempdir("log-root");
    std::fs::write(root.join("f.txt"), b"observability\n").unwrap();
    let mut cmd = qs();
    cmd.args(extra)
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "1"])
        .args(["--root", root.to_str().unwrap()])
        .env("RUST_LOG", "info");
    let (server, _) = Proc::start_with(&mut cmd, 0);
    get(server.port, &[], &[]);
    let o = server.stop();
    assert!(o.status.success());
    String::from_utf8(o.stderr).unwrap()
}

#[test]
fn text_logs_into_a_pipe_have_no_colour_and_a_close_line() {
    let err = serve_log(&[]);
    assert!(!err.contains("\x1b["), "ANSI escapes in piped logs:\n{err}");
    let close = err
        .lines()
        .find(|l| l.contains("connection closed"))
        .unwrap_or_else(|| panic!("no close line:\n{err}"));
    for field in [
        "peer=127.0.0.1:",
        "shard=0",
        "duration_ms=",
        "bytes_in=",
        "bytes_out=",
        "reason=",
    ] {
        assert!(close.contains(field), "{field} missing: {close}");
    }
    assert!(close.contains(" INFO "), "{close}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let err = serve_log(&["--log-format", "json"]);
    let events: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let close = events
        .iter()
        .find(|e| e["fields"]["message"] == "connection closed")
        .unwrap_or_else(|| panic!("no close event:\n{err}"));
    assert_eq!(close["level"], "INFO");
    let f = &close["fields"];
    assert_eq!(f["shard"], 0);
    assert!(f["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{f}");
    assert!(
        f["bytes_in"].as_u64().unwrap() > 0 && f["bytes_out"].as_u64().unwrap() > 0,
        "{f}"
    );
    assert!(f["duration_ms"].is_u64() && f["reason"].is_string(), "{f}");
    assert!(!err.contains("\x1b["), "{err}");
}
