//! End to end on loopback: the LB in proxy and DSR mode in front of fake UDP backends.
//!
//! Every wait polls with a deadline; nothing sleeps and hopes.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quic_lb::{Codec, Config};
use quicshard_lb::{encap, Lb, LbConfig, Pipeline, Stats};

const KEY: &str = "8f95f09245765f80256934e50c66207f";
const DEADLINE: Duration = Duration::from_secs(5);

/// What a fake backend received: sender and datagram.
type Seen = Vec<(SocketAddr, Vec<u8>)>;

/// A fake backend: answers every datagram with `tag ++ datagram` (proxy) or records it (DSR).
struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Seen>>,
}

impl Backend {
    fn start(tag: u8) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let mut reply = vec![tag];
                reply.extend_from_slice(&buf[..n]);
                sock.send_to(&reply, from).unwrap();
                seen.push((from, buf[..n].to_vec()));
            }
            seen
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// A two-backend config; `pipeline` is `"staged"` (2 processors) or `"inline"` (2 workers on
/// `SO_REUSEPORT` sockets).
fn config(mode: &str, pipeline: &str, a: SocketAddr, b: SocketAddr) -> LbConfig {
    let receivers = if pipeline == "inline" { 2 } else { 1 };
    LbConfig::from_toml(&format!(
        r#"
listen = "127.0.0.1:0"
mode = "{mode}"
pipeline = "{pipeline}"
receivers = {receivers}
virtual_address = "127.0.0.1:4433"
processors = 2
read_batch = 8
write_batch = 8
[[quic_lb]]
id = 0
server_id_len = 2
nonce_len = 6
key = "{KEY}"
[[backend]]
server_id = "0a0a"
address = "{a}"
[[backend]]
server_id = "0b0b"
address = "{b}"
"#
    ))
    .unwrap()
}

fn short_packet(config: &Config, sid: &[u8], n: u8) -> Vec<u8> {
    let mut cid = [0u8; 20];
    let len = Codec::new(*config)
        .encode(sid, &[n, 1, 2, 3, 4, 5], 0, &mut cid)
        .unwrap();
    let mut p = vec![0x40];
    p.extend_from_slice(&cid[..len]);
    p.extend_from_slice(b"payload");
    p
}

fn client() -> UdpSocket {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    c
}

/// Sends `p` until a reply arrives (UDP on loopback rarely drops, but never assume).
fn exchange(c: &UdpSocket, lb: SocketAddr, p: &[u8]) -> (SocketAddr, Vec<u8>) {
    let end = Instant::now() + DEADLINE;
    let mut buf = [0u8; 2048];
    while Instant::now() < end {
        c.send_to(p, lb).unwrap();
        if let Ok((n, from)) = c.recv_from(&mut buf) {
            return (from, buf[..n].to_vec());
        }
    }
    panic!("no reply within {DEADLINE:?}");
}

fn wait_stats(lb: &Lb, what: &str, ok: impl Fn(&Stats) -> bool) -> Stats {
    let end = Instant::now() + DEADLINE;
    loop {
        let s = lb.stats();
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}: {s:#?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn proxy_routes_by_cid_falls_back_and_drops_garbage() {
    proxy_case("staged");
}

#[test]
fn inline_proxy_routes_by_cid_falls_back_and_drops_garbage() {
    proxy_case("inline");
}

fn proxy_case(pipeline: &str) {
    let (a, b) = (Backend::start(b'A'), Backend::start(b'B'));
    let cfg = config("proxy", pipeline, a.addr, b.addr);
    let qcfg = cfg.quic_lb[0].config;
    let lb = Lb::start(cfg.clone()).unwrap();
    let addr = lb.local_addr();
    let sizes = lb.sizes();
    let queue = match cfg.pipeline {
        Pipeline::Staged => sizes.processor_queue,
        Pipeline::Inline => sizes.forward_queue,
    };
    assert_eq!(queue, 8);

    // Routable CIDs reach their backend; the echo comes back from the LB's address.
    let c = client();
    for n in 0..5 {
        for (sid, tag) in [([0x0a, 0x0a], b'A'), ([0x0b, 0x0b], b'B')] {
            let p = short_packet(&qcfg, &sid, n);
            let (from, reply) = exchange(&c, addr, &p);
            assert_eq!(from, addr);
            assert_eq!(reply[0], tag);
            assert_eq!(&reply[1..], &p[..]);
        }
    }

    // Unroutable CIDs (0b111) from one 4-tuple all go to one backend.
    let c2 = client();
    let tags: Vec<u8> = (0..10u8)
        .map(|i| {
            let mut p = vec![0x40, 0xe0 | i, i, i, i, i, i, i, i, i];
            p.extend_from_slice(b"unroutable");
            exchange(&c2, addr, &p).1[0]
        })
        .collect();
    assert!(tags.iter().all(|t| *t == tags[0]), "{tags:?}");

    // An unknown version takes the slow path and is routed by its 4-tuple.
    let mut unknown = vec![0xc0, 0x1a, 0x2a, 0x3a, 0x4a, 4, 1, 2, 3, 4, 0];
    unknown.extend_from_slice(&[0; 30]);
    let (_, reply) = exchange(&c2, addr, &unknown);
    assert_eq!(reply[0], tags[0]);

    // Garbage is counted and dropped.
    let g = client();
    g.send_to(&[], addr).unwrap();
    g.send_to(&[0x40; 2100], addr).unwrap(); // longer than a pool buffer's payload area
    g.send_to(&[0xc0, 0, 0, 0, 1, 30, 1, 2], addr).unwrap();
    g.send_to(&[0xc0, 0, 0, 0, 1, 10, 1, 2], addr).unwrap();
    g.send_to(&[0xc0, 0, 0, 0, 0, 1, 1, 1, 1], addr).unwrap();
    let s = wait_stats(&lb, "garbage drops", |s| {
        s.slow_path.dropped_empty == 1
            && s.receivers.dropped_oversize == 1
            && s.slow_path.dropped_too_short == 1
            && s.slow_path.dropped_cid_too_long == 1
            // counted just after the reply is sent, so possibly after the client saw it
            && s.forwarders.replies_relayed >= 21
            && s.slow_path.dropped_version_negotiation == 1
    });
    assert!(s.routing.routed_by_cid >= 10);
    assert!(s.routing.fallback_hash >= 1);
    assert!(s.routing.fallback_table_hits >= 9);
    assert_eq!(s.sessions, 3, "c to A, c to B, c2 to one backend");
    assert_eq!(s.tables.tuple, 1);
    let json = serialized(&s);
    assert!(json.contains("dropped_empty"));

    // Reload with a new codepoint: new CIDs route, old ones still do.
    let mut cfg2 = LbConfig::from_toml(&format!(
        "{}\n[[quic_lb]]\nid = 1\nserver_id_len = 2\nnonce_len = 7\n",
        toml_of(a.addr, b.addr)
    ))
    .unwrap();
    cfg2.listen = cfg.listen;
    cfg2.pipeline = cfg.pipeline;
    cfg2.receivers = cfg.receivers;
    lb.reload(cfg2.clone()).unwrap();
    let q1 = cfg2.quic_lb[1].config;
    let mut cid = [0u8; 20];
    let len = Codec::new(q1)
        .encode(&[0x0b, 0x0b], &[9; 7], 0, &mut cid)
        .unwrap();
    let mut p = vec![0x40];
    p.extend_from_slice(&cid[..len]);
    assert_eq!(exchange(&c, addr, &p).1[0], b'B');
    assert_eq!(
        exchange(&c, addr, &short_packet(&qcfg, &[0x0a, 0x0a], 1)).1[0],
        b'A'
    );
    let mut bad = cfg2.clone();
    bad.processors = 3;
    assert!(lb
        .reload(bad)
        .unwrap_err()
        .to_string()
        .contains("processors"));

    lb.shutdown();
    let (seen_a, seen_b) = (a.finish(), b.finish());
    assert!(
        seen_a.iter().all(|(from, _)| *from != addr),
        "backends see the LB's relay sockets"
    );
    assert!(!seen_a.is_empty() && !seen_b.is_empty());
}

#[test]
fn dsr_encapsulates_with_client_and_virtual_address() {
    dsr_case("staged");
}

#[test]
fn inline_dsr_encapsulates_with_client_and_virtual_address() {
    dsr_case("inline");
}

fn dsr_case(pipeline: &str) {
    let a = Backend::start(b'A');
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    b.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let cfg = config("dsr", pipeline, a.addr, b.local_addr().unwrap());
    let qcfg = cfg.quic_lb[0].config;
    let lb = Lb::start(cfg).unwrap();
    let c = client();
    let p = short_packet(&qcfg, &[0x0b, 0x0b], 3);
    let end = Instant::now() + DEADLINE;
    let mut buf = [0u8; 2048];
    let n = loop {
        assert!(Instant::now() < end, "backend B got nothing");
        c.send_to(&p, lb.local_addr()).unwrap();
        if let Ok((n, _)) = b.recv_from(&mut buf) {
            break n;
        }
    };
    let (repr, inner) = encap::decap(&buf[..n]).unwrap();
    assert_eq!(repr.src, c.local_addr().unwrap());
    assert_eq!(repr.dst, "127.0.0.1:4433".parse().unwrap());
    assert_eq!(inner, &p[..]);
    wait_stats(&lb, "a forwarded datagram", |s| s.forwarders.forwarded >= 1);
    lb.shutdown();
    assert!(a.finish().is_empty());
}

/// The body of the test config, to extend for a reload.
fn toml_of(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
virtual_address = "127.0.0.1:4433"
processors = 2
read_batch = 8
write_batch = 8
[[backend]]
server_id = "0a0a"
address = "{a}"
[[backend]]
server_id = "0b0b"
address = "{b}"
[[quic_lb]]
id = 0
server_id_len = 2
nonce_len = 6
key = "{KEY}"
"#
    )
}

/// Stats are serde::Serialize; check it with the TOML serializer (serde_json is the CLI's).
fn serialized(s: &Stats) -> String {
    toml::to_string(s).unwrap()
}
