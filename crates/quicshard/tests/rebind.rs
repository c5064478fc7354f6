//! Client NAT rebinding: a UDP relay between the client engine and a 4-shard server moves each
//! connection's client→server traffic to a new source port in the middle of a download, as a NAT
//! that lost its mapping would. Every download must complete, byte-exact, on its original server
//! connection: steered by the CID's shard byte (BPF) or handed off between shards (no BPF).
//!
//! Nothing is left to the kernel's luck: before the downloads, each relay socket is probed (one
//! malformed datagram, counted by the shard whose socket received it) to learn where the kernel's
//! 4-tuple hash puts it. Every old path lands on the connection's own shard and every new path on
//! another one, so without BPF each rebinding must be handed off, and with BPF the handoff count
//! must stay at zero although the hash alone would have picked the wrong shard.

mod common;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use crossbeam_channel::Receiver;
use mio::{Events, Interest, Poll, Token};
use quicshard::quinn_proto::ConnectionId;
use quicshard::{Engine, Handler, ShardId, ShardStats};

const SHARDS: usize = 4;
/// Connections, each through its own relay; two per shard.
const CONNS: usize = 8;
const SIZE: u64 = 1 << 20;
/// Server→client bytes a relay forwards before it rebinds: a quarter into the download.
const REBIND_AFTER: u64 = SIZE / 4;
const TIMEOUT: Duration = Duration::from_secs(90);
/// The relay thread exits by itself after this long, whatever happens to the test.
const RELAY_LIFETIME: Duration = Duration::from_secs(150);
/// Client keep-alive: after a lost PATH_CHALLENGE, the next PING re-triggers the migration
/// (see `rebind`).
const KEEP_ALIVE: Duration = Duration::from_millis(200);
/// Sockets bound while looking for one the kernel hashes to the wanted shard(s).
const PROBE_ATTEMPTS: usize = 200;

/// The shard whose socket the kernel picks for datagrams from `sock` (with BPF, for the ones the
/// program leaves to the hash): sends a 1-byte datagram, which is too short for a short header's
/// DCID and so is counted as malformed by the receiving shard, never handed off.
fn landing_shard<H: Handler>(srv: &Engine<H>, sock: &UdpSocket) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = srv.stats();
        sock.send_to(&[0], srv.local_addr()).unwrap();
        // resend if loopback dropped it (it should not)
        let resend = Instant::now() + Duration::from_millis(500);
        while Instant::now() < resend {
            let after = srv.stats();
            let hit =
                (0..SHARDS).find(|&s| after[s].dropped_malformed > before[s].dropped_malformed);
            if let Some(s) = hit {
                return s;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(Instant::now() < deadline, "probe datagrams never counted");
    }
}

/// A fresh loopback socket whose datagrams the kernel hashes to a shard satisfying `want`.
fn socket_landing<H: Handler>(srv: &Engine<H>, want: impl Fn(usize) -> bool) -> (UdpSocket, usize) {
    for _ in 0..PROBE_ATTEMPTS {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let s = landing_shard(srv, &sock);
        if want(s) {
            return (sock, s);
        }
    }
    panic!("no socket in {PROBE_ATTEMPTS} hashed to a wanted shard");
}

/// One connection's relay: the client talks to `front`; the relay talks to the server from `old`
/// until it has forwarded [`REBIND_AFTER`] bytes down, then from `new`.
struct Path {
    front: mio::net::UdpSocket,
    old: mio::net::UdpSocket,
    new: mio::net::UdpSocket,
    client: Option<SocketAddr>,
    rebound: bool,
    stats: PathStats,
}

#[derive(Debug, Default, Clone, Copy)]
struct PathStats {
    up_old: u64,
    up_new: u64,
    down_old_bytes: u64,
    down_new: u64,
    /// Server datagrams reaching the old port after the rebinding: dropped, like a NAT would.
    stale: u64,
    /// Datagrams a full socket refused (QUIC recovers).
    dropped: u64,
}

struct Relay {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<PathStats>>>,
}

impl Relay {
    /// Starts the relay thread; `paths` are (old, new) sockets toward `server`.
    fn start(server: SocketAddr, paths: Vec<(UdpSocket, UdpSocket)>) -> (Self, Vec<SocketAddr>) {
        let poll = Poll::new().unwrap();
        let mut fronts = Vec::new();
        let mut relays = Vec::new();
        for (i, (old, new)) in paths.into_iter().enumerate() {
            let front = UdpSocket::bind("127.0.0.1:0").unwrap();
            fronts.push(front.local_addr().unwrap());
            let mut socks = [front, old, new].map(|s| {
                s.set_nonblocking(true).unwrap();
                let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4 << 20);
                mio::net::UdpSocket::from_std(s)
            });
            for (k, s) in socks.iter_mut().enumerate() {
                poll.registry()
                    .register(s, Token(i * 3 + k), Interest::READABLE)
                    .unwrap();
            }
            let [front, old, new] = socks;
            relays.push(Path {
                front,
                old,
                new,
                client: None,
                rebound: false,
                stats: PathStats::default(),
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || relay_loop(poll, relays, server, &flag));
        let relay = Self {
            stop,
            thread: Some(thread),
        };
        (relay, fronts)
    }

    /// Stops the thread and returns each path's counters.
    fn finish(mut self) -> Vec<PathStats> {
        self.stop.store(true, Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Forwards until told to stop or [`RELAY_LIFETIME`] passed. Every wake-up drains every socket
/// (edge-triggered readiness needs a read to `WouldBlock`).
fn relay_loop(
    mut poll: Poll,
    mut paths: Vec<Path>,
    server: SocketAddr,
    stop: &AtomicBool,
) -> Vec<PathStats> {
    let deadline = Instant::now() + RELAY_LIFETIME;
    let mut events = Events::with_capacity(64);
    let mut buf = vec![0u8; 65536];
    while !stop.load(Relaxed) && Instant::now() < deadline {
        let _ = poll.poll(&mut events, Some(Duration::from_millis(50)));
        for p in &mut paths {
            p.pump(server, &mut buf);
        }
    }
    paths.into_iter().map(|p| p.stats).collect()
}

impl Path {
    fn pump(&mut self, server: SocketAddr, buf: &mut [u8]) {
        // client → server
        while let Some((n, from)) = recv(&self.front, buf) {
            self.client = Some(from);
            let (sock, count) = if self.rebound {
                (&self.new, &mut self.stats.up_new)
            } else {
                (&self.old, &mut self.stats.up_old)
            };
            *count += 1;
            self.stats.dropped += u64::from(!send(sock, &buf[..n], server));
        }
        // server → client, old port
        while let Some((n, _)) = recv(&self.old, buf) {
            if self.rebound {
                self.stats.stale += 1;
                continue;
            }
            self.stats.down_old_bytes += n as u64;
            if let Some(c) = self.client {
                self.stats.dropped += u64::from(!send(&self.front, &buf[..n], c));
            }
            if self.stats.down_old_bytes >= REBIND_AFTER {
                self.rebound = true;
            }
        }
        // server → client, new port
        while let Some((n, _)) = recv(&self.new, buf) {
            self.stats.down_new += 1;
            if let Some(c) = self.client {
                self.stats.dropped += u64::from(!send(&self.front, &buf[..n], c));
            }
        }
    }
}

fn recv(sock: &mio::net::UdpSocket, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
    match sock.recv_from(buf) {
        Ok(r) => Some(r),
        Err(e) if e.kind() == ErrorKind::WouldBlock => None,
        // e.g. ECONNREFUSED after the client engine is gone: nothing to do but go on
        Err(_) => None,
    }
}

/// `false` if the datagram was not sent (full socket buffer).
fn send(sock: &mio::net::UdpSocket, data: &[u8], to: SocketAddr) -> bool {
    sock.send_to(data, to).is_ok()
}

/// What a rebinding run leaves for the BPF-specific assertions.
struct Run {
    server: Vec<ShardStats>,
    /// The shard the kernel's hash picks for each connection's new path.
    new_landing: Vec<usize>,
}

fn rebind(bpf: bool) -> Run {
    let _ = tracing_subscriber::fmt::try_init();
    let (closed_tx, closed_rx) = crossbeam_channel::unbounded();
    // the test server also reports each connection's shard and final remote address
    let srv = Engine::builder(move |_| {
        let closed = closed_tx.clone();
        Server::with_close_hook(move |ctx, conn, _| {
            if let Some(c) = ctx.connection(conn) {
                let _ = closed.send((conn.shard(), c.remote_address()));
            }
        })
    })
    .shards(SHARDS)
    .bpf(bpf)
    .transport(transport())
    .start()
    .unwrap();
    assert_eq!(srv.bpf_attached(), bpf, "BPF attach state");

    // connection i lives on shard i % SHARDS (its Initial DCID starts with i, see below)
    let owner = |i: usize| i % SHARDS;
    let mut paths = Vec::new();
    let mut new_landing = Vec::new();
    for i in 0..CONNS {
        let (old, _) = socket_landing(&srv, |s| s == owner(i));
        let (new, landing) = socket_landing(&srv, |s| s != owner(i));
        new_landing.push(landing);
        paths.push((old, new));
    }
    let new_addrs: Vec<SocketAddr> = paths.iter().map(|(_, n)| n.local_addr().unwrap()).collect();
    let (relay, fronts) = Relay::start(srv.local_addr(), paths);

    // 20-octet Initial DCIDs (not the server's 18) are steered by their first octet: the i-th
    // connection made goes to shard i % SHARDS, with BPF by the program, without it by handoff
    // (here never needed: the old path already lands there)
    let next = Arc::new(AtomicU8::new(0));
    let mut cfg = quicshard::tls::client_config_trusting(srv.certificate().unwrap(), &[]).unwrap();
    cfg.initial_dst_cid_provider(Arc::new(move || {
        let mut b = [0x5a; 20];
        b[0] = next.fetch_add(1, Relaxed);
        ConnectionId::new(&b)
    }));
    // quinn-proto sends the new path's PATH_CHALLENGE once; if it is lost, path validation fails
    // after 3 PTOs and the server falls back to the old path, which the "NAT" no longer forwards.
    // A client that only receives would then never send again (ACKs need new data), so the
    // connection would die at its idle timeout. Keep-alive PINGs re-trigger the migration, as
    // they would for a real client behind a NAT.
    let mut client_transport = quicshard::quinn_proto::TransportConfig::default();
    client_transport.keep_alive_interval(Some(KEEP_ALIVE));
    cfg.transport_config(Arc::new(client_transport));
    // one client shard: connections are made in the order their `run_on`s are queued
    let (cli, rx) = client_engine_with(cfg, 1, "127.0.0.1:0".parse().unwrap());
    for (i, front) in fronts.iter().enumerate() {
        start_download(&cli.remote(), ShardId(0), *front, i as u64, SIZE);
    }
    let outcomes = collect(&rx, CONNS as u64, TIMEOUT);
    let closed = closed_reports(&closed_rx, CONNS);
    eprintln!("client total: {:?}", ShardStats::sum(&cli.stats()));
    drop(cli);
    let relay_stats = relay.finish();
    let server = srv.shutdown(Duration::from_secs(5));
    eprintln!("relays: {relay_stats:#?}\nserver: {server:#?}\nnew paths land on {new_landing:?}");
    for o in &outcomes {
        assert_eq!(o.result, Ok(SIZE), "download {}", o.tag);
    }

    for (i, r) in relay_stats.iter().enumerate() {
        assert!(
            r.up_old > 0 && r.up_new > 0,
            "path {i} did not rebind: {r:?}"
        );
        assert!(
            r.down_new > 0,
            "path {i}: the server never sent to the new port: {r:?}"
        );
        // the connection that ended on the new address is the one made on the owner shard
        let on_new: Vec<_> = closed.iter().filter(|c| c.1 == new_addrs[i]).collect();
        assert_eq!(
            on_new,
            [&(ShardId(owner(i)), new_addrs[i])],
            "path {i}: {closed:?}"
        );
    }
    let total = ShardStats::sum(&server);
    assert_eq!(
        total.connections_accepted, CONNS as u64,
        "no new connections"
    );
    assert_eq!(total.handshakes, CONNS as u64);
    assert_eq!(total.handler_panics, 0);
    assert_eq!(total.connections_refused, 0);
    for (s, st) in server.iter().enumerate() {
        assert_eq!(st.connections_accepted, 2, "shard {s}: {server:#?}");
    }
    Run {
        server,
        new_landing,
    }
}

/// Waits for `n` server-side `on_closed` reports.
fn closed_reports(rx: &Receiver<(ShardId, SocketAddr)>, n: usize) -> Vec<(ShardId, SocketAddr)> {
    let deadline = Instant::now() + TIMEOUT;
    let mut v = Vec::new();
    while v.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(r) => v.push(r),
            Err(_) => panic!("only {} of {n} server connections closed", v.len()),
        }
    }
    v
}

#[test]
fn rebinding_is_steered_by_cid_with_bpf() {
    let out = rebind(true);
    let total = ShardStats::sum(&out.server);
    // the hash alone would have put every new path on the wrong shard
    assert_eq!(total.handoffs_in_short, 0, "{total:?}");
    assert_eq!(total.handoffs_out_short, 0, "{total:?}");
    assert_eq!(total.handoffs_in, 0, "{total:?}");
}

#[test]
fn rebinding_is_handed_off_without_bpf() {
    let out = rebind(false);
    let wrong: BTreeSet<usize> = out.new_landing.iter().copied().collect();
    for (s, st) in out.server.iter().enumerate() {
        // every shard owns connections whose new path lands elsewhere
        assert!(st.handoffs_in_short > 0, "shard {s}: {:#?}", out.server);
        // only the shards the new paths hash to forward (old paths land on their owners)
        assert_eq!(
            st.handoffs_out_short > 0,
            wrong.contains(&s),
            "shard {s}: new paths land on {wrong:?}: {:#?}",
            out.server
        );
    }
    let total = ShardStats::sum(&out.server);
    assert_eq!(
        total.handoffs_in, total.handoffs_in_short,
        "only short headers"
    );
    assert_eq!(
        total.handoffs_in + total.dropped_queue_full,
        total.handoffs_out
    );
}
