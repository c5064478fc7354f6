//! HTTP/3 through the `quicshard` binary: `serve` offers h3 next to hq-interop on one port,
//! `get --alpn h3|hq-interop` and the default choice, status codes on failure, and
//! `bench --alpn h3 --mode rr`.

mod common;

use std::path::Path;

use common::{bench_json, qs, tempdir, Proc};

fn write_files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for (name, size) in [("a.txt", 10usize), ("b.bin", 300_000), ("c.bin", 2_000_000)] {
        let data: Vec<u8> = (0..size).map(|i| (i * 13 + size) as u8).collect();
        std::fs::write(root.join(name), &data).unwrap();
        files.push((name.to_string(), data));
    }
    files
}

fn get(port: u16, alpn: &[&str], out: &Path, names: &[&str]) -> std::process::Output {
    qs().args(["get", "--insecure", "--output", out.to_str().unwrap()])
        .args(alpn)
        .args(
            names
                .iter()
                .map(|n| format!("https://localhost:{port}/{n}")),
        )
        .output()
        .unwrap()
}

#[test]
fn serve_speaks_h3_and_hq_on_one_port() {
    let root = tempdir("h3-root");
    let files = write_files(&root);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    let server = Proc::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--root",
        root.to_str().unwrap(),
    ]);
    for (alpn, used) in [
        (&["--alpn", "h3"][..], "(h3)"),
        (&[][..], "(h3)"),
        (&["--alpn", "hq-interop"][..], "key updates"),
    ] {
        let out = tempdir("h3-out");
        let o = get(server.port, alpn, &out, &names);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "get {alpn:?}: {err}");
        assert!(
            err.contains(used),
            "get {alpn:?} used the wrong protocol: {err}"
        );
        for (name, data) in &files {
            assert!(
                std::fs::read(out.join(name)).unwrap() == *data,
                "{alpn:?} {name}"
            );
        }
    }
    // a missing file and a path outside the root: non-zero exit, the status on one line
    let out = tempdir("h3-out");
    let o = get(
        server.port,
        &["--alpn", "h3"],
        &out,
        &["a.txt", "missing.txt", "../x"],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("1 of 3 files"), "{err}");
    assert!(
        err.contains("GET /missing.txt: status 404"),
        "status printed: {err}"
    );
    assert!(!out.join("missing.txt").exists(), "no partial file left");
    // bench: rr over h3
    let report = bench_json(
        server.port,
        &[
            "--alpn",
            "h3",
            "--mode",
            "rr",
            "--path",
            "/b.bin",
            "--connections",
            "2",
            "--streams",
            "3",
            "--requests",
            "60",
        ],
    );
    assert_eq!(report["requests"], 60, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["bytes"], 60 * 300_000, "{report}");
    assert_eq!(report["handshakes"], 2, "{report}");
    // a missing resource fails the bench with the status
    let o = qs()
        .args(["bench", "--connect", &format!("127.0.0.1:{}", server.port)])
        .args([
            "--insecure",
            "--alpn",
            "h3",
            "--path",
            "/nope",
            "--requests",
            "5",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let text = String::from_utf8_lossy(&o.stdout) + String::from_utf8_lossy(&o.stderr);
    assert!(text.contains("status 404"), "{text}");
    let stopped = server.stop();
    assert!(stopped.status.success(), "serve exit: {:?}", stopped.status);
}
