//! Floods against `quicshard serve` as a process: garbage datagrams of every kind while
//! legitimate downloads run, and a flood of Initials against the load-based Retry policy.
//!
//! Every flood is bounded in count and time and stops by itself; all traffic is on loopback.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{qs, tempdir};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// A `quicshard serve` process whose stderr goes to a file (a flood must never block it on a
/// full pipe); killed on drop unless stopped.
struct Server {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(args: &[&str], dir: &Path) -> Self {
        let log = dir.join("serve.log");
        let mut child = qs()
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("serve {args:?}: first line {line:?}"));
        Self {
            child: Some(child),
            port,
            log,
        }
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("running")
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Resident memory in KiB (`VmRSS` of /proc/PID/status).
    fn rss_kib(&mut self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child().id()))
            .expect("server process is gone");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    fn alive(&mut self) -> bool {
        self.child().try_wait().unwrap().is_none()
    }

    /// SIGTERM, then wait (bounded): the process must exit 0.
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status =
            wait_deadline(&mut child, Duration::from_secs(20)).expect("serve did not exit");
        assert!(
            status.success(),
            "serve exit {status:?}: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for `child` until `limit`, polling; `None` (and the child killed) if it did not exit.
fn wait_deadline(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Starts `quicshard get` of `url` into `out`.
fn spawn_get(url: &str, out: &Path) -> Child {
    qs().args(["get", "--insecure", "--output", out.to_str().unwrap(), url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (bounded) for a `get` and checks the file it wrote.
fn check_get(mut child: Child, out: &Path, name: &str, want: &[u8], limit: Duration) {
    let status = wait_deadline(&mut child, limit).unwrap_or_else(|| panic!("get {name} hung"));
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err);
    assert!(status.success(), "get {name} into {}: {err}", out.display());
    let got = std::fs::read(out.join(name)).unwrap();
    assert!(
        got == want,
        "{name}: {} bytes differ from the {} sent",
        got.len(),
        want.len()
    );
}

/// Kernel receive drops of every UDP socket bound to `port` (/proc/net/udp, last column).
fn kernel_drops(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(cols.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port).then(|| cols.last()?.parse::<u64>().ok())?
        })
        .sum()
}

/// Sum of one counter over the shards of a `--stats-file`.
fn total(stats: &serde_json::Value, key: &str) -> u64 {
    stats["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[key].as_u64().unwrap_or_else(|| panic!("no {key} in {s}")))
        .sum()
}

// ---- garbage -------------------------------------------------------------------------------

/// The kinds of garbage the flood sends, in rotation.
#[derive(Debug, Clone, Copy)]
enum Garbage {
    /// Random bytes, 0 to 1500 of them (including empty datagrams).
    Random,
    /// A short header with an 18-byte unknown CID and a random payload.
    ShortUnknownCid,
    /// A short header cut before the end of its CID.
    ShortTruncated,
    /// A long header of an unknown version, 20 to 1500 bytes.
    LongBadVersion,
    /// A long header cut inside its invariant fields.
    LongTruncated,
    /// A QUIC v1 Initial under 1200 bytes.
    InitialTooShort,
    /// A QUIC v1 Initial of 1200+ bytes with a random token and a random (undecryptable) payload.
    InitialBogusToken,
    /// 1500 to 9000 random bytes.
    Oversized,
}

const KINDS: [Garbage; 8] = [
    Garbage::Random,
    Garbage::ShortUnknownCid,
    Garbage::ShortTruncated,
    Garbage::LongBadVersion,
    Garbage::LongTruncated,
    Garbage::InitialTooShort,
    Garbage::InitialBogusToken,
    Garbage::Oversized,
];

/// Versions quinn-proto speaks (v1 and drafts 29..=32): a "bad version" avoids them.
fn known_version(v: u32) -> bool {
    v == 1 || (0xff00_001d..=0xff00_0020).contains(&v)
}

/// Appends a QUIC varint (at most 2 bytes here).
fn varint2(out: &mut Vec<u8>, v: usize) {
    assert!(v < 16384);
    out.extend_from_slice(&[0x40 | (v >> 8) as u8, v as u8]);
}

/// A QUIC v1 Initial of exactly `total` bytes (at least 64): random 8..=20-byte DCID, random
/// SCID, `token`, a 1-byte packet number and a payload cut from `noise`.
fn initial(rng: &mut SmallRng, noise: &[u8], token: &[u8], total: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(total);
    p.push(0xc0); // long header, fixed bit, type Initial, 1-byte packet number
    p.extend_from_slice(&1u32.to_be_bytes());
    let dcid_len = rng.random_range(8..=20);
    p.push(dcid_len as u8);
    p.extend((0..dcid_len).map(|_| rng.random::<u8>()));
    let scid_len = rng.random_range(0..=20);
    p.push(scid_len as u8);
    p.extend((0..scid_len).map(|_| rng.random::<u8>()));
    varint2(&mut p, token.len());
    p.extend_from_slice(token);
    let rest = total.saturating_sub(p.len() + 2).max(1);
    varint2(&mut p, rest);
    let off = rng.random_range(0..noise.len() - rest);
    p.extend_from_slice(&noise[off..off + rest]);
    p
}

/// Builds one datagram of `kind`.
fn garbage(kind: Garbage, rng: &mut SmallRng, noise: &[u8]) -> Vec<u8> {
    let cut = |rng: &mut SmallRng, len: usize| {
        let off = rng.random_range(0..noise.len() - len);
        noise[off..off + len].to_vec()
    };
    match kind {
        Garbage::Random => {
            let len = rng.random_range(0..=1500);
            cut(rng, len)
        }
        Garbage::ShortUnknownCid => {
            let len = rng.random_range(20..1200);
            let mut p = cut(rng, len);
            p[0] = 0x40 | (p[0] & 0x3f);
            p
        }
        Garbage::ShortTruncated => {
            let len = rng.random_range(1..=18);
            let mut p = cut(rng, len);
            p[0] = 0x40 | (p[0] & 0x3f);
            p
        }
        Garbage::LongBadVersion => {
            let len = rng.random_range(24..=1500);
            let mut p = cut(rng, len);
            p[0] |= 0xc0;
            let mut v: u32 = rng.random();
            while known_version(v) || v == 0 {
                v = rng.random();
            }
            p[1..5].copy_from_slice(&v.to_be_bytes());
            p[5] = 8;
            p[14] = 8;
            p
        }
        Garbage::LongTruncated => {
            let len = rng.random_range(1..=6);
            let mut p = cut(rng, len);
            p[0] |= 0xc0;
            if len >= 5 {
                p[1..5].copy_from_slice(&1u32.to_be_bytes()[..4.min(len - 1)]);
            }
            p
        }
        Garbage::InitialTooShort => {
            let total = rng.random_range(64..1200);
            initial(rng, noise, &[], total)
        }
        Garbage::InitialBogusToken => {
            let token_len = rng.random_range(16..=80);
            let token = cut(rng, token_len);
            let total = rng.random_range(1200..=1400);
            initial(rng, noise, &token, total)
        }
        Garbage::Oversized => {
            let len = rng.random_range(1500..=9000);
            cut(rng, len)
        }
    }
}

/// How a flood went.
#[derive(Debug)]
struct FloodReport {
    sent: u64,
    elapsed: Duration,
}

/// Sends datagrams made by `make(i)` to `target` from `ports` sockets in rotation until `count`
/// were sent, `limit` passed or `stop` is set, at most `max_rate` per second if given;
/// `progress` counts them as they go.
#[allow(clippy::too_many_arguments)]
fn flood(
    target: SocketAddr,
    ports: usize,
    count: u64,
    limit: Duration,
    max_rate: Option<u64>,
    progress: &AtomicU64,
    stop: &AtomicBool,
    mut make: impl FnMut(u64) -> Vec<u8>,
) -> FloodReport {
    let socks: Vec<UdpSocket> = (0..ports)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for s in &socks {
        // nobody reads the answers (version negotiation, resets, Retries): do not keep them
        let _ = socket2::SockRef::from(s).set_recv_buffer_size(4096);
    }
    let start = Instant::now();
    let mut sent = 0;
    while sent < count && !stop.load(Ordering::Relaxed) {
        if sent % 1024 == 0 && start.elapsed() >= limit {
            break;
        }
        if let Some(rate) = max_rate {
            // pacing, not waiting for a condition: datagram `sent` is due at sent / rate
            let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(ahead) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(ahead);
            }
        }
        let d = make(sent);
        // errors (e.g. a full socket buffer) only mean this datagram did not go out
        let _ = socks[sent as usize % ports].send_to(&d, target);
        sent += 1;
        progress.store(sent, Ordering::Relaxed);
    }
    FloodReport {
        sent,
        elapsed: start.elapsed(),
    }
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Garbage datagrams sent by the flood.
const GARBAGE_COUNT: u64 = 500_000;
/// The flood stops after this even if it has not sent them all.
const FLOOD_LIMIT: Duration = Duration::from_secs(60);
/// Concurrent downloads during the flood, each of `DOWNLOAD_SIZE` bytes.
const DOWNLOADS: usize = 10;
const DOWNLOAD_SIZE: usize = 4 << 20;
/// RSS growth allowed across the flood.
const RSS_GROWTH_LIMIT_KIB: u64 = 50 << 10;

#[test]
fn garbage_flood_during_downloads() {
    let dir = tempdir("flood");
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    let data: Vec<u8> = (0..DOWNLOAD_SIZE)
        .map(|i| (i * 13 + i / 1021) as u8)
        .collect();
    std::fs::write(root.join("four.bin"), &data).unwrap();
    let stats_file = dir.join("stats.json");
    let mut server = Server::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "4",
            "--root",
            root.to_str().unwrap(),
            "--stats-file",
            stats_file.to_str().unwrap(),
        ],
        &dir,
    );
    let url = format!("https://localhost:{}/four.bin", server.port);
    let rss_before = server.rss_kib();
    let drops_before = kernel_drops(server.port);

    let (progress, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (p, s, target) = (progress.clone(), stop.clone(), server.addr());
    let flooder = std::thread::spawn(move || {
        let mut rng = SmallRng::seed_from_u64(0xf100d);
        let noise: Vec<u8> = (0..1 << 20).map(|_| rng.random()).collect();
        let mut counts = [0u64; KINDS.len()];
        let report = flood(target, 256, GARBAGE_COUNT, FLOOD_LIMIT, None, &p, &s, |i| {
            let k = i as usize % KINDS.len();
            counts[k] += 1;
            garbage(KINDS[k], &mut rng, &noise)
        });
        (report, counts)
    });
    // the downloads start (handshakes included) while the flood is already running
    assert!(wait_until(Duration::from_secs(30), || progress
        .load(Ordering::Relaxed)
        >= 20_000));
    let gets: Vec<(Child, PathBuf)> = (0..DOWNLOADS)
        .map(|i| {
            let out = dir.join(format!("out{i}"));
            (spawn_get(&url, &out), out)
        })
        .collect();
    // how far the flood was when each download ended (bounded wait; checked below)
    let mut gets: Vec<(Child, PathBuf, Option<u64>)> =
        gets.into_iter().map(|(c, o)| (c, o, None)).collect();
    let end = Instant::now() + Duration::from_secs(120);
    while Instant::now() < end && gets.iter().any(|g| g.2.is_none()) {
        for g in gets.iter_mut().filter(|g| g.2.is_none()) {
            if g.0.try_wait().unwrap().is_some() {
                g.2 = Some(progress.load(Ordering::Relaxed));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (report, counts) = flooder.join().unwrap();
    let ended_at: Vec<Option<u64>> = gets.iter().map(|g| g.2).collect();
    for (child, out, _) in gets {
        check_get(child, &out, "four.bin", &data, Duration::from_secs(1));
    }
    assert!(server.alive(), "the server died");
    let rss_after = server.rss_kib();
    let kdrops = kernel_drops(server.port) - drops_before;
    // still serving after the flood
    let out = dir.join("after");
    check_get(
        spawn_get(&url, &out),
        &out,
        "four.bin",
        &data,
        Duration::from_secs(60),
    );
    stop.store(true, Ordering::Relaxed);
    server.stop();

    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stats_file).unwrap()).unwrap();
    let get = |k: &str| total(&stats, k);
    let (malformed, unknown, endpoint) = (
        get("dropped_malformed"),
        get("dropped_unknown_cid"),
        get("dropped_endpoint"),
    );
    eprintln!(
        "flood: {} garbage datagrams ({:?} per kind {:?}) in {:?} ({:.0}/s); the downloads \
         ended after {ended_at:?} of them; server: datagrams_in {} out {}, dropped_malformed {malformed} \
         dropped_unknown_cid {unknown} dropped_endpoint {endpoint} dropped_queue_full {} \
         handoffs_out {}; kernel receive drops on the port {kdrops}; VmRSS {} -> {} KiB",
        report.sent,
        counts,
        KINDS,
        report.elapsed,
        report.sent as f64 / report.elapsed.as_secs_f64(),
        get("datagrams_in"),
        get("datagrams_out"),
        get("dropped_queue_full"),
        get("handoffs_out"),
        rss_before,
        rss_after,
    );
    assert_eq!(report.sent, GARBAGE_COUNT, "the flood was cut short");
    assert_eq!(get("connections_accepted"), DOWNLOADS as u64 + 1);
    // every kind of garbage is counted by reason
    assert!(malformed > 0 && unknown > 0 && endpoint > 0);
    // the datagrams that reached the shards were mostly counted as drops: garbage the endpoint
    // answers (version negotiation to unknown versions of 1200+ bytes, stateless resets) is the
    // rest, together with the downloads' own datagrams
    let reached = report.sent.saturating_sub(kdrops);
    let counted = malformed + unknown + endpoint;
    assert!(
        counted as f64 >= 0.6 * reached as f64,
        "{counted} counted drops of ~{reached} garbage datagrams that reached the shards"
    );
    assert!(
        rss_after < rss_before + RSS_GROWTH_LIMIT_KIB,
        "VmRSS grew from {rss_before} to {rss_after} KiB"
    );
}

// ---- handshake flood -----------------------------------------------------------------------

/// `n` genuine client Initials (ClientHello for hq-interop, padded to 1200+ bytes, a random
/// 20-byte DCID each), made by quinn-proto's client with an insecure config; nobody will answer
/// what the server sends back.
fn real_initials(n: usize, server: SocketAddr) -> Vec<Vec<u8>> {
    use quicshard::quinn_proto::{Endpoint, EndpointConfig};
    let cfg = quicshard::tls::insecure_client_config(&[b"hq-interop"]).unwrap();
    let mut out = Vec::with_capacity(n);
    let now = Instant::now();
    let mut buf = Vec::new();
    while out.len() < n {
        // a fresh endpoint now and then: each one remembers every connection it started
        let mut ep = Endpoint::new(Arc::new(EndpointConfig::default()), None, false, None);
        for _ in 0..1000.min(n - out.len()) {
            let (_, mut conn) = ep.connect(now, cfg.clone(), server, "localhost").unwrap();
            buf.clear();
            let t = conn.poll_transmit(now, 1, &mut buf).expect("an Initial");
            out.push(buf[..t.size].to_vec());
        }
    }
    out
}

/// Initials in the handshake flood.
const INITIAL_COUNT: u64 = 20_000;
/// At most this many Initials per second: the flood lasts at least 5 s even in a release build,
/// long enough for the real client's whole download to happen during it.
const INITIAL_RATE: u64 = 4000;
/// Shards of the server under the handshake flood, and its `--retry-threshold`.
const HS_SHARDS: u64 = 2;
const RETRY_THRESHOLD: u64 = 32;

#[test]
fn initial_flood_switches_to_retry_and_a_real_client_gets_through() {
    let dir = tempdir("hsflood");
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    let data: Vec<u8> = (0..1_000_000usize)
        .map(|i| (i * 7 + i / 997) as u8)
        .collect();
    std::fs::write(root.join("one.bin"), &data).unwrap();
    let stats_file = dir.join("stats.json");
    let mut server = Server::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--shards",
            &HS_SHARDS.to_string(),
            "--retry-threshold",
            &RETRY_THRESHOLD.to_string(),
            "--root",
            root.to_str().unwrap(),
            "--stats-file",
            stats_file.to_str().unwrap(),
        ],
        &dir,
    );
    let rss_before = server.rss_kib();
    let (progress, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (p, s, target) = (progress.clone(), stop.clone(), server.addr());
    let flooder = std::thread::spawn(move || {
        // made as they go (quinn-proto's client, a fresh TLS ClientHello each): about 2700 per
        // second in a debug build
        let mut batch = Vec::new();
        let rate = Some(INITIAL_RATE);
        flood(target, 64, INITIAL_COUNT, FLOOD_LIMIT, rate, &p, &s, |_| {
            if batch.is_empty() {
                batch = real_initials(100, target);
            }
            batch.pop().unwrap()
        })
    });
    // a real client, once the flood has filled the shards' handshake budget
    assert!(wait_until(Duration::from_secs(30), || progress
        .load(Ordering::Relaxed)
        >= 2000));
    let out = dir.join("out");
    let started_at = progress.load(Ordering::Relaxed);
    let get = spawn_get(&format!("https://localhost:{}/one.bin", server.port), &out);
    let mut get = Some(get);
    let mut ended_at = None;
    let end = Instant::now() + Duration::from_secs(90);
    while ended_at.is_none() && Instant::now() < end {
        if get.as_mut().unwrap().try_wait().unwrap().is_some() {
            ended_at = Some(progress.load(Ordering::Relaxed));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check_get(
        get.take().unwrap(),
        &out,
        "one.bin",
        &data,
        Duration::from_secs(1),
    );
    let report = flooder.join().unwrap();
    assert!(server.alive(), "the server died");
    let rss_after = server.rss_kib();
    let kdrops = kernel_drops(server.port);
    stop.store(true, Ordering::Relaxed);
    server.stop();
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stats_file).unwrap()).unwrap();
    let get = |k: &str| total(&stats, k);
    let (accepted, retries) = (get("connections_accepted"), get("retry_sent"));
    eprintln!(
        "handshake flood: {} Initials in {:?} ({:.0}/s); the real download ran from Initial \
         {started_at} to {ended_at:?}; server: accepted {accepted} handshakes {} retry_sent \
         {retries} refused {} dropped_endpoint {} datagrams_in {} out {}; kernel receive drops \
         {kdrops}; VmRSS {rss_before} -> {rss_after} KiB",
        report.sent,
        report.elapsed,
        report.sent as f64 / report.elapsed.as_secs_f64(),
        get("handshakes"),
        get("connections_refused"),
        get("dropped_endpoint"),
        get("datagrams_in"),
        get("datagrams_out"),
    );
    assert_eq!(report.sent, INITIAL_COUNT, "the flood was cut short");
    assert!(
        ended_at.is_some_and(|e| e < INITIAL_COUNT),
        "the real download must finish while the flood is still running"
    );
    // at most `threshold` half-open flood connections per shard (they live until their idle
    // timeout, 30 s, longer than the flood), plus the real client
    assert!(
        accepted <= HS_SHARDS * RETRY_THRESHOLD + 1,
        "{accepted} connections accepted"
    );
    assert!(
        accepted > RETRY_THRESHOLD,
        "{accepted}: the flood's first Initials are accepted"
    );
    // every other Initial that reached a shard was answered with a Retry (the real client got
    // one too, and came back with its token)
    assert!(
        retries + accepted + kdrops >= INITIAL_COUNT,
        "retry_sent {retries} + accepted {accepted} + kernel drops {kdrops} < {INITIAL_COUNT}"
    );
    assert!(
        rss_after < rss_before + RSS_GROWTH_LIMIT_KIB,
        "VmRSS grew from {rss_before} to {rss_after} KiB"
    );
}
