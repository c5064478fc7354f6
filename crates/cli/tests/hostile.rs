//! Clients that attack `quicshard serve`'s memory: silent readers (request a large file, then
//! neither read nor acknowledge anything) and more connections than the memory budget admits.
//!
//! The clients are sans-IO quinn-proto connections driven here over one UDP socket each, so a
//! client can stop dead at an exact point; the server is the `quicshard` binary, whose resident
//! memory (`/proc/PID/status` VmRSS) is what is measured.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{qs, tempdir, Proc};
use quinn_proto::{
    ClientConfig, Connection, ConnectionError, ConnectionHandle, DatagramEvent, Dir, Endpoint,
    EndpointConfig, Event, StreamId, TransportConfig, TransportErrorCode, VarInt,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(20);

/// One sans-IO client connection on a socket of its own.
struct Peer {
    ep: Endpoint,
    ch: ConnectionHandle,
    conn: Connection,
    sock: UdpSocket,
    stream: Option<StreamId>,
    /// Stream bytes of the response seen so far.
    got: usize,
    /// Why the connection ended, once it did.
    lost: Option<ConnectionError>,
}

impl Peer {
    /// A client of `server` (hq-interop) whose windows let the server send 16 MiB ahead.
    fn connect(server: SocketAddr) -> Self {
        let mut t = TransportConfig::default();
        t.stream_receive_window(VarInt::from_u32(16 << 20))
            .receive_window(VarInt::from_u32(16 << 20));
        let mut cfg: ClientConfig =
            quicshard::tls::insecure_client_config(&[b"hq-interop"]).unwrap();
        cfg.transport_config(Arc::new(t));
        let mut ep = Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None);
        let (ch, conn) = ep
            .connect(Instant::now(), cfg, server, "localhost")
            .unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        Self {
            ep,
            ch,
            conn,
            sock,
            stream: None,
            got: 0,
            lost: None,
        }
    }

    /// Sends what the connection has, reads what arrived, fires due timers.
    fn step(&mut self) {
        let now = Instant::now();
        if self.conn.poll_timeout().is_some_and(|t| t <= now) {
            self.conn.handle_timeout(now);
        }
        let mut buf = [0u8; 65_536];
        while let Ok((n, from)) = self.sock.recv_from(&mut buf) {
            let mut resp = Vec::new();
            let data = bytes::BytesMut::from(&buf[..n]);
            if let Some(DatagramEvent::ConnectionEvent(_, ev)) =
                self.ep.handle(now, from, None, None, data, &mut resp)
            {
                self.conn.handle_event(ev);
            }
        }
        while let Some(ev) = self.conn.poll_endpoint_events() {
            if let Some(cev) = self.ep.handle_event(self.ch, ev) {
                self.conn.handle_event(cev);
            }
        }
        while let Some(ev) = self.conn.poll() {
            if let Event::ConnectionLost { reason } = ev {
                self.lost = Some(reason);
            }
        }
        if let Some(s) = self.stream {
            // peek at the response without giving credit back: read, but never past what came
            if let Ok(mut chunks) = self.conn.recv_stream(s).read(true) {
                while let Ok(Some(c)) = chunks.next(usize::MAX) {
                    self.got += c.bytes.len();
                }
                let _ = chunks.finalize();
            }
        }
        let mut out = Vec::new();
        while let Some(t) = self.conn.poll_transmit(now, 1, &mut out) {
            let _ = self.sock.send_to(&out[..t.size], t.destination);
            out.clear();
        }
    }

    /// Sends `GET /path` on a new stream once connected.
    fn request(&mut self, path: &str) {
        let s = self.conn.streams().open(Dir::Bi).expect("a stream");
        let mut send = self.conn.send_stream(s);
        send.write(format!("GET {path}\r\n").as_bytes()).unwrap();
        send.finish().unwrap();
        self.stream = Some(s);
    }
}

/// Steps every peer until `done` holds for it, then leaves it alone (it neither reads nor
/// sends until the next `drive`); returns when `done` held for all (fails after [`TIMEOUT`]).
fn drive(peers: &mut [Peer], what: &str, mut done: impl FnMut(&mut Peer) -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    let mut finished = vec![false; peers.len()];
    loop {
        let mut all = true;
        for (p, f) in peers.iter_mut().zip(&mut finished) {
            if !*f {
                p.step();
                *f = done(p);
            }
            all &= *f;
        }
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The server's resident memory in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

fn server_addr(p: &Proc) -> SocketAddr {
    format!("127.0.0.1:{}", p.port).parse().unwrap()
}

/// 30 clients request a 5 MiB file and stop reading (and acknowledging) as soon as its first
/// bytes arrive: the server holds at most what its send pool allowed each when it wrote (the
/// default 16 MiB pool: 8 x 2 MiB, 8 x 1 MiB, 14 x 512 KiB = 31 MiB), not the whole responses
/// (quinn-proto's default 10 MB window: 150 MB here).
#[test]
fn silent_readers_cost_at_most_the_send_window() {
    const CLIENTS: usize = 30;
    const FILE: usize = 5 << 20;
    let root = tempdir("hostile-root");
    std::fs::write(root.join("big"), vec![0x5a; FILE]).unwrap();
    let server = Proc::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--root",
        root.to_str().unwrap(),
    ]);
    let addr = server_addr(&server);
    // warm up: one complete download, so the baseline includes what the first connection
    // allocates once (TLS, buffers, the file in the page cache is not ours)
    let mut warm = vec![Peer::connect(addr)];
    drive(&mut warm, "the warm-up handshake", |p| {
        !p.conn.is_handshaking()
    });
    warm[0].request("/big");
    drive(&mut warm, "the warm-up download", |p| p.got == FILE);
    drop(warm);
    let before = rss(server.pid());

    let mut peers: Vec<Peer> = (0..CLIENTS).map(|_| Peer::connect(addr)).collect();
    drive(&mut peers, "the handshakes", |p| !p.conn.is_handshaking());
    for p in &mut peers {
        p.request("/big");
    }
    // the server writes what its window takes in the callback that read the request, before
    // any byte of the response leaves: once each client saw a byte, the server holds its share
    drive(&mut peers, "the first response bytes", |p| p.got > 0);
    let grown = rss(server.pid()).saturating_sub(before);
    let budget = quicshard::MemoryBudget::default();
    let windows: u64 = (1..=CLIENTS).map(|n| budget.send_window_for(n)).sum();
    // plus per connection: the CLI's 64 KiB read chunk and connection state
    let bound = windows as usize + CLIENTS * ((64 << 10) + (64 << 10));
    assert!(
        grown as usize <= bound,
        "server RSS grew {grown} bytes for {CLIENTS} silent readers (bound {bound})"
    );
    drop(peers);
    let out = server.stop();
    assert!(out.status.success(), "{out:?}");
}

/// A shard budget that holds the send pool and three connections' bounds: the fourth and fifth
/// are refused with CONNECTION_REFUSED and counted in `refused_memory`; the three keep working.
#[test]
fn connections_beyond_the_memory_budget_are_refused() {
    let window = 256 * 1024u64;
    let pool = 1 << 20;
    let per_connection = 2 * window + quicshard::memory::CONNECTION_OVERHEAD;
    let budget = (pool + 3 * per_connection + 1000).to_string();
    let pool = pool.to_string();
    let w = window.to_string();
    let stats = tempdir("hostile-stats").join("stats.json");
    let server = Proc::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--send-window",
        &w,
        "--send-pool",
        &pool,
        "--conn-window",
        &w,
        "--stream-window",
        &w,
        "--memory-budget",
        &budget,
        "--stats-file",
        stats.to_str().unwrap(),
    ]);
    let addr = server_addr(&server);
    let mut admitted: Vec<Peer> = (0..3).map(|_| Peer::connect(addr)).collect();
    drive(&mut admitted, "three handshakes", |p| {
        !p.conn.is_handshaking()
    });
    let mut refused: Vec<Peer> = (0..2).map(|_| Peer::connect(addr)).collect();
    drive(&mut refused, "two refusals", |p| p.conn.is_closed());
    for p in &refused {
        match &p.lost {
            Some(ConnectionError::ConnectionClosed(c)) => {
                assert_eq!(
                    c.error_code,
                    TransportErrorCode::CONNECTION_REFUSED,
                    "{c:?}"
                );
            }
            other => panic!("refused with {other:?}"),
        }
    }
    for p in &admitted {
        assert!(!p.conn.is_closed(), "an admitted connection was closed");
    }
    drop(admitted);
    drop(refused);
    let out = server.stop();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    let shard = &v["shards"][0];
    assert_eq!(shard["refused_memory"], 2, "{v}");
    assert_eq!(shard["connections_refused"], 2, "{v}");
}

#[test]
fn a_budget_below_one_connection_is_a_usage_error() {
    let out = qs()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--memory-budget",
            "1000",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("per shard"), "{err}");
}

/// Many sans-IO client connections on one endpoint and one socket.
struct Swarm {
    ep: Endpoint,
    sock: UdpSocket,
    conns: std::collections::HashMap<ConnectionHandle, Connection>,
}

impl Swarm {
    fn new() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        socket2::SockRef::from(&sock)
            .set_recv_buffer_size(8 << 20)
            .unwrap();
        Self {
            ep: Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None),
            sock,
            conns: std::collections::HashMap::new(),
        }
    }

    fn connect(&mut self, server: SocketAddr, n: usize) {
        let cfg = quicshard::tls::insecure_client_config(&[b"hq-interop"]).unwrap();
        for _ in 0..n {
            let (ch, conn) = self
                .ep
                .connect(Instant::now(), cfg.clone(), server, "localhost")
                .unwrap();
            self.conns.insert(ch, conn);
        }
    }

    /// One round: read everything, fire timers, send everything; drained connections leave.
    fn step(&mut self) {
        let now = Instant::now();
        let mut buf = [0u8; 65_536];
        while let Ok((n, from)) = self.sock.recv_from(&mut buf) {
            let mut resp = Vec::new();
            let data = bytes::BytesMut::from(&buf[..n]);
            if let Some(DatagramEvent::ConnectionEvent(ch, ev)) =
                self.ep.handle(now, from, None, None, data, &mut resp)
            {
                if let Some(c) = self.conns.get_mut(&ch) {
                    c.handle_event(ev);
                }
            }
        }
        let mut out = Vec::new();
        let mut drained = Vec::new();
        for (&ch, c) in &mut self.conns {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
            }
            while let Some(ev) = c.poll_endpoint_events() {
                if ev.is_drained() {
                    drained.push(ch);
                }
                if let Some(cev) = self.ep.handle_event(ch, ev) {
                    c.handle_event(cev);
                }
            }
            while c.poll().is_some() {}
            while let Some(t) = c.poll_transmit(now, 1, &mut out) {
                let _ = self.sock.send_to(&out[..t.size], t.destination);
                out.clear();
            }
        }
        for ch in drained {
            self.conns.remove(&ch);
        }
    }

    /// Steps until `done` (fails after `timeout`).
    fn drive(&mut self, what: &str, timeout: Duration, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.step();
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A burst of 3,000 connections, all closed: within 10 s of the last one draining, the server
/// has given back at least half of the memory the burst grew it by (`memory_trims`; glibc kept
/// all of it resident before).
#[test]
fn memory_goes_back_after_a_burst_closes() {
    const BURST: usize = 3000;
    let server = Proc::start(&["serve", "--listen", "127.0.0.1:0", "--shards", "1"]);
    let addr = server_addr(&server);
    // warm-up: the first connections' one-time allocations are not the burst's
    let mut warm = Swarm::new();
    warm.connect(addr, 20);
    warm.drive("the warm-up handshakes", TIMEOUT, |s| {
        s.conns.values().all(|c| !c.is_handshaking())
    });
    for c in warm.conns.values_mut() {
        c.close(Instant::now(), VarInt::from_u32(0), bytes::Bytes::new());
    }
    warm.drive("the warm-up to drain", TIMEOUT, |s| s.conns.is_empty());
    let base = rss(server.pid());

    let mut swarm = Swarm::new();
    for _ in 0..(BURST / 250) {
        swarm.connect(addr, 250);
        swarm.drive("a step of the burst", Duration::from_secs(60), |s| {
            s.conns
                .values()
                .all(|c| !c.is_handshaking() || c.is_closed())
        });
    }
    let established = swarm.conns.values().filter(|c| !c.is_closed()).count();
    assert!(established >= BURST * 9 / 10, "{established} of {BURST}");
    let peak = rss(server.pid());
    let growth = peak.saturating_sub(base);
    assert!(
        growth > 20 << 20,
        "the burst grew the server by {growth} bytes only"
    );
    for c in swarm.conns.values_mut() {
        c.close(Instant::now(), VarInt::from_u32(0), bytes::Bytes::new());
    }
    swarm.drive("the burst to drain", Duration::from_secs(60), |s| {
        s.conns.is_empty()
    });
    // the server drains each connection at about the time its client does; then 10 s
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut now_rss = rss(server.pid());
    while now_rss > base + growth / 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        now_rss = rss(server.pid());
    }
    assert!(
        now_rss <= base + growth / 2,
        "10 s after {BURST} connections closed the server still holds {} of their {} bytes",
        now_rss - base,
        growth
    );
    let out = server.stop();
    assert!(out.status.success(), "{out:?}");
}
