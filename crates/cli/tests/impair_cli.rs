//! `quicshard impair` as a process: downloads through it under loss and delay, under a rate
//! limit, the counters it prints on SIGTERM, handshake-only loss and client switching, and
//! one-line errors for bad arguments.

mod common;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{qs, tempdir, Proc};

/// Writes `name` of `size` bytes under `root`; returns its content.
fn write_file(root: &Path, name: &str, size: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..size).map(|i| (i * 31 + i / 4093) as u8).collect();
    std::fs::write(root.join(name), &data).unwrap();
    data
}

/// `quicshard impair --listen 127.0.0.1:0 --forward 127.0.0.1:PORT ARGS`.
fn impair(forward_port: u16, args: &[&str]) -> Proc {
    let fwd = format!("127.0.0.1:{forward_port}");
    Proc::start(
        &[
            &["impair", "--listen", "127.0.0.1:0", "--forward", &fwd][..],
            args,
        ]
        .concat(),
    )
}

/// The `up:` / `down:` / `io:` lines printed on exit, as `line name -> counter -> value`.
fn counters(stderr: &[u8]) -> HashMap<String, HashMap<String, u64>> {
    let text = String::from_utf8_lossy(stderr);
    let mut all = HashMap::new();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(": ") else {
            continue;
        };
        if !["up", "down", "io"].contains(&name) {
            continue;
        }
        let kv = rest
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
            .collect();
        all.insert(name.to_string(), kv);
    }
    assert_eq!(all.len(), 3, "counters missing in: {text}");
    all
}

/// Stops `p` with SIGTERM; it must exit 0 and print only the ready line on stdout.
fn stop_with_counters(p: Proc) -> HashMap<String, HashMap<String, u64>> {
    let out = p.stop();
    assert!(
        out.status.success(),
        "impair exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "only the ready line goes to stdout");
    counters(&out.stderr)
}

/// `quicshard get` of one file through `port`; returns how long it took.
fn get(port: u16, name: &str, out: &Path) -> Duration {
    let t = Instant::now();
    let o = qs()
        .args(["get", "--insecure", "--output", out.to_str().unwrap()])
        .arg(format!("https://localhost:{port}/{name}"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "get: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    t.elapsed()
}

fn serve(root: &Path) -> Proc {
    Proc::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--root",
        root.to_str().unwrap(),
    ])
}

#[test]
fn download_through_loss_and_delay_is_byte_exact() {
    let (root, out) = (tempdir("imp-root"), tempdir("imp-out"));
    let data = write_file(&root, "two.bin", 2_000_000);
    let server = serve(&root);
    let proxy = impair(
        server.port,
        &["--loss", "5", "--delay", "20", "--seed", "1"],
    );
    let took = get(proxy.port, "two.bin", &out);
    assert!(
        std::fs::read(out.join("two.bin")).unwrap() == data,
        "content differs"
    );
    // 20 ms each way: the handshake and the transfer take at least a few round trips
    assert!(took >= Duration::from_millis(80), "{took:?}");
    let c = stop_with_counters(proxy);
    eprintln!(
        "2 MB through 5 % loss + 20 ms delay in {took:?}; up {:?}; down {:?}",
        c["up"], c["down"]
    );
    for dir in ["up", "down"] {
        let d = &c[dir];
        assert!(d["dropped_loss"] > 0, "{dir}: {d:?}");
        assert_eq!(
            d["received"],
            d["forwarded"] + d["dropped_loss"] + d["pending"],
            "{dir}: {d:?}"
        );
        let share = d["dropped_loss"] as f64 / d["received"] as f64;
        assert!((0.01..0.12).contains(&share), "{dir}: loss share {share}");
    }
    // 2 MB of payload went down, in datagrams of at most 1500 bytes
    assert!(
        c["down"]["forwarded"] >= 2_000_000 / 1500,
        "{:?}",
        c["down"]
    );
    assert_eq!(c["io"]["client_switches"], 0);
    assert!(server.stop().status.success());
}

#[test]
fn download_through_a_rate_limit_takes_at_least_the_rate_time() {
    let (root, out) = (tempdir("imp-rroot"), tempdir("imp-rout"));
    let size = 3_000_000;
    let data = write_file(&root, "three.bin", size);
    let server = serve(&root);
    let proxy = impair(
        server.port,
        &["--rate", "10", "--queue", "25", "--seed", "2"],
    );
    let took = get(proxy.port, "three.bin", &out);
    assert!(
        std::fs::read(out.join("three.bin")).unwrap() == data,
        "content differs"
    );
    let mbit = size as f64 * 8.0 / took.as_secs_f64() / 1e6;
    let c = stop_with_counters(proxy);
    eprintln!(
        "3 MB through --rate 10 --queue 25 in {took:?}: {mbit:.2} Mbit/s of file data; down {:?}",
        c["down"]
    );
    // The limiter serialises every byte of payload at 10 Mbit/s: 3 MB cannot arrive in less
    // than 2.4 s (deterministic: the link never sends faster, whatever the scheduling).
    let floor = Duration::from_secs_f64(size as f64 * 8.0 / 10e6);
    assert!(took >= floor, "{took:?} < {floor:?}");
    let d = &c["down"];
    assert_eq!(
        d["received"],
        d["forwarded"] + d["dropped_queue"] + d["pending"],
        "{d:?}"
    );
    assert!(server.stop().status.success());
}

/// A UDP echo server on a thread: echoes each datagram back and records the source addresses
/// until it receives `quit` (or `deadline` passes).
fn echo_server(deadline: Duration) -> (u16, std::thread::JoinHandle<Vec<String>>) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let t = std::thread::spawn(move || {
        let (end, mut from) = (Instant::now() + deadline, Vec::new());
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            if let Ok((len, a)) = s.recv_from(&mut buf) {
                if &buf[..len] == b"quit" {
                    break;
                }
                from.push(a.to_string());
                let _ = s.send_to(&buf[..len], a);
            }
        }
        from
    });
    (port, t)
}

/// Sends datagram `i` from `sock` until its echo comes back or `deadline` passes.
fn echo_once(sock: &UdpSocket, proxy: u16, i: u8, deadline: Instant) -> bool {
    let mut buf = [0u8; 16];
    while Instant::now() < deadline {
        sock.send_to(&[i; 10], ("127.0.0.1", proxy)).unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            if n == 10 && buf[0] == i {
                return true;
            }
        }
    }
    false
}

#[test]
fn handshake_loss_only_hits_the_first_datagrams_and_a_new_client_takes_over() {
    let (port, echo) = echo_server(Duration::from_secs(20));
    // all of the first 3 datagrams each way are lost, none after
    let proxy = impair(
        port,
        &["--loss", "100", "--handshake-loss", "3", "--seed", "3"],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    a.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    // one datagram at a time, resent until echoed: 3 lost up, then 3 echoes lost down
    assert!(echo_once(&a, proxy.port, 1, deadline));
    for i in 2..6 {
        assert!(echo_once(&a, proxy.port, i, deadline), "datagram {i}");
    }
    // a second client (another port): the proxy follows it, from a new upstream port
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    b.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    assert!(echo_once(&b, proxy.port, 9, deadline));
    let c = stop_with_counters(proxy);
    assert_eq!(c["up"]["dropped_loss"], 3, "{:?}", c["up"]);
    assert_eq!(c["down"]["dropped_loss"], 3, "{:?}", c["down"]);
    assert_eq!(c["io"]["client_switches"], 1);
    a.send_to(b"quit", ("127.0.0.1", port)).unwrap();
    let sources = echo.join().unwrap();
    let distinct: std::collections::HashSet<_> = sources.iter().collect();
    assert_eq!(
        distinct.len(),
        2,
        "the server saw a new source port: {sources:?}"
    );
}

#[test]
fn download_through_reordering_duplication_corruption_and_jitter() {
    let (root, out) = (tempdir("imp-mroot"), tempdir("imp-mout"));
    let data = write_file(&root, "mixed.bin", 1_000_000);
    let server = serve(&root);
    let proxy = impair(
        server.port,
        &[
            "--delay",
            "5",
            "--jitter",
            "3",
            "--reorder",
            "5",
            "--duplicate",
            "5",
            "--corrupt",
            "2",
            "--loss-up",
            "2",
            "--seed",
            "4",
        ],
    );
    get(proxy.port, "mixed.bin", &out);
    assert!(
        std::fs::read(out.join("mixed.bin")).unwrap() == data,
        "content differs"
    );
    let c = stop_with_counters(proxy);
    eprintln!(
        "1 MB through the mix: up {:?}; down {:?}",
        c["up"], c["down"]
    );
    let d = &c["down"];
    for k in ["reordered", "duplicated", "corrupted"] {
        assert!(d[k] > 0, "down {k}: {d:?}");
    }
    assert_eq!(c["down"]["dropped_loss"], 0, "--loss-up leaves down alone");
    assert!(c["up"]["dropped_loss"] > 0 || c["up"]["received"] < 50);
    assert_eq!(
        d["received"] + d["duplicated"],
        d["forwarded"] + d["pending"]
    );
    assert!(server.stop().status.success());
}

#[test]
fn blackout_drops_everything_in_its_window_only() {
    let (port, echo) = echo_server(Duration::from_secs(20));
    let proxy = impair(port, &["--blackout", "0.4-0.9", "--seed", "5"]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    // one datagram every ~10 ms for 1.3 s after the proxy became ready: before, during and
    // after the window
    let start = Instant::now();
    let (mut sent, mut echoed) = (0u64, 0u64);
    let mut times = Vec::new();
    let mut buf = [0u8; 16];
    while start.elapsed() < Duration::from_millis(1300) {
        sock.send_to(&sent.to_be_bytes(), ("127.0.0.1", proxy.port))
            .unwrap();
        sent += 1;
        times.push(start.elapsed().as_secs_f64());
        let until = Instant::now() + Duration::from_millis(10);
        while Instant::now() < until {
            if sock.recv(&mut buf).is_ok() {
                echoed += 1;
            }
        }
    }
    // collect the last echoes (bounded)
    let until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < until {
        if sock.recv(&mut buf).is_ok() {
            echoed += 1;
        }
    }
    sock.send_to(b"quit", ("127.0.0.1", port)).unwrap();
    echo.join().unwrap();
    let c = stop_with_counters(proxy);
    let up = &c["up"];
    eprintln!(
        "blackout: sent {sent}, echoed {echoed}; up {up:?}; down {:?}",
        c["down"]
    );
    assert_eq!(up["received"], sent);
    // The proxy's clock started a little before ours (at most ~0.1 s: it printed its ready line
    // before we read it), so what we sent in [0.4, 0.8) s fell in its window, and nothing we
    // sent before 0.3 s or after 0.9 s did.
    let count = |a: f64, b: f64| times.iter().filter(|&&t| t >= a && t < b).count() as u64;
    let dropped = up["dropped_blackout"];
    assert!(
        dropped >= count(0.4, 0.8) && dropped <= count(0.3, 0.9),
        "{dropped} dropped; sent in [0.4, 0.8): {}, in [0.3, 0.9): {}",
        count(0.4, 0.8),
        count(0.3, 0.9)
    );
    assert!(dropped > 0 && dropped < sent);
    assert_eq!(up["forwarded"] + up["dropped_blackout"], sent);
    // every echo the blackout let through came back, but for the last ones in flight
    let expected = c["down"]["forwarded"];
    assert!(echoed + 2 >= expected, "{echoed} echoes of {expected}");
}

#[test]
fn bad_arguments_are_one_line_and_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["--loss", "150"], "--loss"),
        (&["--duplicate=-1"], "--duplicate"),
        (&["--blackout", "3-2"], "--blackout"),
        (&["--blackout", "nonsense"], "--blackout"),
        (&["--rate", "0"], "--rate"),
        (&["--queue", "0"], "--queue"),
        (&["--forward", "nowhere"], "--forward"),
    ];
    for (args, needle) in cases {
        let mut all = vec!["impair", "--listen", "127.0.0.1:0"];
        if !args.contains(&"--forward") {
            all.extend(["--forward", "127.0.0.1:9"]);
        }
        all.extend(*args);
        let o = qs().args(&all).stdin(Stdio::null()).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(o.stdout.is_empty());
    }
    // a busy port is refused (exit 1, one line)
    let busy = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let o = qs()
        .args(["impair", "--listen", &addr, "--forward", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot bind"));
}
