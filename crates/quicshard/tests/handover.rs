//! Zero-downtime handover between engines ([`Builder::handover`]): a successor takes the port,
//! new connections land on it, the old engine finishes its own, tickets resume across it, and
//! the failure cases stay safe. The engines run in one test process; the handover protocol,
//! sockets and descriptors are the same as between processes.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use quicshard::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use quicshard::{Engine, StartError};

const TIMEOUT: Duration = Duration::from_secs(30);
const SHARDS: usize = 2;

struct Fixture {
    dir: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("quicshard-handover-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (chain, key) = quicshard::tls::self_signed(&["localhost"]).unwrap();
        Self { dir, chain, key }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("handover.sock")
    }

    /// A server engine with handover at the fixture's path, `shards` shards.
    fn server(&self, shards: usize) -> Result<Engine<Server>, StartError> {
        let tls =
            quicshard::tls::server_config(self.chain.clone(), self.key.clone_key(), &[]).unwrap();
        self.server_with(shards, tls)
    }

    fn server_with(
        &self,
        shards: usize,
        tls: quicshard::rustls::ServerConfig,
    ) -> Result<Engine<Server>, StartError> {
        Engine::builder(|_| Server::default())
            .shards(shards)
            .listen("127.0.0.1:0".parse().unwrap())
            .server_tls(tls)
            .handover(self.path())
            .start()
    }

    fn client(&self) -> (Engine<Client>, crossbeam_channel::Receiver<Outcome>) {
        let cfg = quicshard::tls::client_config_trusting(&self.chain, &[]).unwrap();
        client_engine_with(cfg, 2, "127.0.0.1:0".parse().unwrap())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn accepted(e: &Engine<Server>) -> u64 {
    e.stats().iter().map(|s| s.connections_accepted).sum()
}

fn all_ok(outcomes: &[Outcome]) {
    for o in outcomes {
        assert!(
            o.result.is_ok(),
            "download {} failed: {:?}",
            o.tag,
            o.result
        );
    }
}

fn downloads(client: &Engine<Client>, server: SocketAddr, tags: std::ops::Range<u64>, size: u64) {
    for tag in tags {
        let shard = quicshard::ShardId(tag as usize % 2);
        start_download(&client.remote(), shard, server, tag, size);
    }
}

#[test]
fn a_successor_takes_new_connections_while_the_old_one_finishes_its_own() {
    let f = Fixture::new("takeover");
    let a = f.server(SHARDS).unwrap();
    assert_eq!(a.handover().unwrap().generation(), 1);
    let addr = a.local_addr();
    // a client that holds only a's session tickets (sent before the response, so they are in
    // once its download finished) for the resumption check on b
    let (resumer, resumed_rx) = f.client();
    downloads(&resumer, addr, 0..1, 1024);
    all_ok(&collect(&resumed_rx, 1, TIMEOUT));
    let (client, rx) = f.client();
    // established connections with large downloads in flight across the takeover
    downloads(&client, addr, 0..7, 8 << 20);
    wait_for("a's eight connections", TIMEOUT, || accepted(&a) == 8);

    let b = f.server(SHARDS).unwrap();
    let hb = b.handover().unwrap();
    assert_eq!(hb.generation(), 2);
    assert!(hb.predecessor_running());
    // the old engine learns it was replaced from the new one's last message
    wait_for("a replaced", TIMEOUT, || a.handover().unwrap().replaced());
    assert_eq!(b.local_addr(), addr, "the same port");
    assert!(b.bpf_attached());

    // new connections land on b
    downloads(&client, addr, 7..15, 64 << 10);
    let outcomes = collect(&rx, 15, TIMEOUT);
    all_ok(&outcomes);
    assert_eq!(accepted(&a), 8, "a accepted nothing after the switch");
    assert_eq!(accepted(&b), 8);
    // a's ticket resumes on b
    let resumed = || b.stats().iter().map(|s| s.resumptions).sum::<u64>();
    let before = resumed();
    downloads(&resumer, addr, 1..2, 1024);
    all_ok(&collect(&resumed_rx, 1, TIMEOUT));
    assert_eq!(resumed(), before + 1, "a's ticket did not resume on b");

    let (_, drained) = a.drain(TIMEOUT);
    assert_eq!(drained.closed_at_timeout, 0, "{drained:?}");
    wait_for("b sees a exit", TIMEOUT, || !hb.predecessor_running());

    // and once more: a third engine replaces the second
    let c = f.server(SHARDS).unwrap();
    assert_eq!(c.handover().unwrap().generation(), 3);
    wait_for("b replaced", TIMEOUT, || b.handover().unwrap().replaced());
    downloads(&client, addr, 15..19, 64 << 10);
    all_ok(&collect(&rx, 4, TIMEOUT));
    assert_eq!(accepted(&c), 4);
    assert_eq!(accepted(&b), 9);
    let (_, drained) = b.drain(TIMEOUT);
    assert_eq!(drained.closed_at_timeout, 0);
}

#[test]
fn a_drain_timeout_closes_what_is_left() {
    let f = Fixture::new("timeout");
    let a = f.server(SHARDS).unwrap();
    let (client, rx) = f.client();
    // a download far too large to finish within the drain timeout
    downloads(&client, a.local_addr(), 0..1, 1 << 40);
    wait_for("a's connection", TIMEOUT, || accepted(&a) == 1);
    let _b = f.server(SHARDS).unwrap();
    let (_, drained) = a.drain(Duration::from_millis(200));
    assert_eq!((drained.open_at_start, drained.closed_at_timeout), (1, 1));
    // closed with CONNECTION_CLOSE ("shutdown"), unless that datagram was lost on the saturated
    // path: then the client times out; either way the download did not finish
    let o = collect(&rx, 1, TIMEOUT);
    let err = o[0].result.as_ref().unwrap_err();
    assert!(
        err.contains("shutdown") || err.contains("timed out"),
        "{err}"
    );
}

#[test]
fn successors_are_refused_while_the_predecessor_drains_or_with_another_shard_count() {
    let f = Fixture::new("busy");
    let a = f.server(SHARDS).unwrap();
    let b = f.server(SHARDS).unwrap();
    match f.server(SHARDS) {
        Err(StartError::Handover(e)) => {
            assert!(
                e.to_string().contains("still draining its own predecessor"),
                "{e}"
            )
        }
        other => panic!("a third engine started while a drains: {:?}", other.err()),
    }
    match f.server(3) {
        Err(StartError::Handover(e)) => assert!(e.to_string().contains("2 shards"), "{e}"),
        other => panic!("an engine with 3 shards took over: {:?}", other.err()),
    }
    assert!(!b.handover().unwrap().replaced());
    drop(a);
    drop(b);
}

/// Speaks the first step of the protocol by hand (a `Hello` for `shards`) and returns the raw
/// answer's tag.
fn hello_then_vanish(path: &Path, shards: u16) -> u8 {
    let mut s = UnixStream::connect(path).unwrap();
    let [hi, lo] = shards.to_be_bytes();
    s.write_all(&[0, 0, 0, 4, b'H', 1, hi, lo]).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    body[0]
}

#[test]
fn a_successor_that_dies_before_serving_leaves_the_old_one_accepting() {
    let f = Fixture::new("dies");
    let a = f.server(SHARDS).unwrap();
    // got the state and the sockets, then went away
    assert_eq!(hello_then_vanish(&f.path(), SHARDS as u16), b'S');
    let (client, rx) = f.client();
    downloads(&client, a.local_addr(), 0..4, 64 << 10);
    all_ok(&collect(&rx, 4, TIMEOUT));
    assert_eq!(accepted(&a), 4);
    assert!(!a.handover().unwrap().replaced());
    // and a real successor still can take over
    let b = f.server(SHARDS).unwrap();
    assert_eq!(b.handover().unwrap().generation(), 2);
}

#[test]
fn a_successor_that_exits_while_the_old_one_drains_gives_the_port_back() {
    let f = Fixture::new("back");
    let a = f.server(SHARDS).unwrap();
    let (client, rx) = f.client();
    // a connection that keeps a draining
    downloads(&client, a.local_addr(), 0..1, 1 << 40);
    wait_for("a's connection", TIMEOUT, || accepted(&a) == 1);
    let b = f.server(SHARDS).unwrap();
    let ha = a.handover().unwrap();
    wait_for("a replaced", TIMEOUT, || ha.replaced());
    drop(b);
    wait_for("a serves again", TIMEOUT, || !ha.replaced());
    // wait_drained returns at once when the engine serves again
    let d = a.wait_drained(TIMEOUT);
    assert_eq!(d.closed_at_timeout, 1, "the long download is still open");
    downloads(&client, a.local_addr(), 1..4, 64 << 10);
    let done: Vec<_> = collect(&rx, 3, TIMEOUT);
    all_ok(&done);
    assert_eq!(accepted(&a), 4, "new connections on a again");
    // and a new successor can take over from a
    let c = f.server(SHARDS).unwrap();
    assert_eq!(c.handover().unwrap().generation(), 2);
    wait_for("a replaced again", TIMEOUT, || ha.replaced());
}

#[test]
fn a_socket_left_by_a_crashed_server_is_replaced() {
    let f = Fixture::new("stale");
    // a listener that went away without removing its file
    drop(std::os::unix::net::UnixListener::bind(f.path()).unwrap());
    assert!(f.path().exists());
    let a = f.server(SHARDS).unwrap();
    assert_eq!(a.handover().unwrap().generation(), 1);
    let (client, rx) = f.client();
    downloads(&client, a.local_addr(), 0..2, 1024);
    all_ok(&collect(&rx, 2, TIMEOUT));
    drop(a);
    assert!(!f.path().exists(), "the engine removes its own socket file");
}

#[test]
fn a_server_without_handover_on_the_same_port_is_refused() {
    let f = Fixture::new("port");
    let a = f.server(SHARDS).unwrap();
    let other = Engine::builder(|_| Server::default())
        .shards(SHARDS)
        .listen(a.local_addr())
        .start();
    assert!(
        matches!(other, Err(StartError::Bind { .. })),
        "{:?}",
        other.err()
    );
    // nor does a fresh handover engine at another path share it
    let g = Fixture::new("port2");
    let tls = quicshard::tls::server_config(g.chain.clone(), g.key.clone_key(), &[]).unwrap();
    let other = Engine::builder(|_| Server::default())
        .shards(SHARDS)
        .listen(a.local_addr())
        .server_tls(tls)
        .handover(g.path())
        .start();
    assert!(
        matches!(other, Err(StartError::Bind { .. })),
        "{:?}",
        other.err()
    );
}

/// A sans-IO quinn-proto client whose ClientHello spans several Initial datagrams (many long
/// ALPN offers), on a UDP socket of its own.
struct BigHello {
    ep: quicshard::quinn_proto::Endpoint,
    conn: quicshard::quinn_proto::Connection,
    handle: quicshard::quinn_proto::ConnectionHandle,
    sock: std::net::UdpSocket,
    server: SocketAddr,
}

const PROBE_ALPN: &[u8] = b"probe";

impl BigHello {
    fn new(server: SocketAddr) -> Self {
        use quicshard::quinn_proto::{Endpoint, EndpointConfig};
        let mut alpn: Vec<Vec<u8>> = (0..6)
            .map(|i| format!("x{i}{}", "-".repeat(198)).into_bytes())
            .collect();
        alpn.push(PROBE_ALPN.to_vec());
        let refs: Vec<&[u8]> = alpn.iter().map(Vec::as_slice).collect();
        let cfg = quicshard::tls::insecure_client_config(&refs).unwrap();
        let mut ep = Endpoint::new(
            std::sync::Arc::new(EndpointConfig::default()),
            None,
            true,
            None,
        );
        let (handle, conn) = ep
            .connect(std::time::Instant::now(), cfg, server, "localhost")
            .unwrap();
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        Self {
            ep,
            conn,
            handle,
            sock,
            server,
        }
    }

    /// The datagrams the connection wants to send now.
    fn transmits(&mut self) -> Vec<Vec<u8>> {
        let now = std::time::Instant::now();
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(t) = self.conn.poll_transmit(now, 1, &mut buf) {
            out.push(buf[..t.size].to_vec());
            buf.clear();
        }
        out
    }

    fn send(&self, d: &[u8]) {
        self.sock.send_to(d, self.server).unwrap();
    }

    /// Runs the connection until its handshake completes (true) or `limit` passes.
    fn complete(&mut self, limit: Duration) -> bool {
        use quicshard::quinn_proto::{DatagramEvent, Event};
        let deadline = std::time::Instant::now() + limit;
        let mut buf = [0u8; 65_536];
        while std::time::Instant::now() < deadline {
            if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                let now = std::time::Instant::now();
                let mut resp = Vec::new();
                let data = bytes::BytesMut::from(&buf[..n]);
                if let Some(DatagramEvent::ConnectionEvent(h, ev)) =
                    self.ep.handle(now, from, None, None, data, &mut resp)
                {
                    assert_eq!(h, self.handle);
                    self.conn.handle_event(ev);
                }
            }
            let now = std::time::Instant::now();
            if self.conn.poll_timeout().is_some_and(|t| t <= now) {
                self.conn.handle_timeout(now);
            }
            while let Some(e) = self.conn.poll_endpoint_events() {
                let _ = self.ep.handle_event(self.handle, e);
            }
            while let Some(ev) = self.conn.poll() {
                match ev {
                    Event::Connected => return true,
                    Event::ConnectionLost { reason } => panic!("lost: {reason}"),
                    _ => {}
                }
            }
            for d in self.transmits() {
                self.send(&d);
            }
        }
        false
    }
}

/// A first flight of two Initial datagrams whose first reached the old engine before the
/// takeover and whose second reaches the new one after it: the new one sends it on to the old
/// one (its grace period), which completes the handshake; the new engine accepts nothing.
#[test]
fn a_first_flight_split_by_the_switch_reaches_one_engine() {
    let f = Fixture::new("flight");
    let tls = || {
        quicshard::tls::server_config(f.chain.clone(), f.key.clone_key(), &[PROBE_ALPN]).unwrap()
    };
    let a = f.server_with(SHARDS, tls()).unwrap();
    let mut client = BigHello::new(a.local_addr());
    let flight = client.transmits();
    assert!(flight.len() >= 2, "the ClientHello should span datagrams");
    client.send(&flight[0]);
    wait_for("a accepted the first datagram", TIMEOUT, || {
        accepted(&a) == 1
    });
    let b = f.server_with(SHARDS, tls()).unwrap();
    wait_for("a replaced", TIMEOUT, || a.handover().unwrap().replaced());
    for d in &flight[1..] {
        client.send(d);
    }
    assert!(client.complete(TIMEOUT), "the handshake did not complete");
    assert_eq!(accepted(&a), 1);
    assert_eq!(
        accepted(&b),
        0,
        "b must not start a second connection from the same flight"
    );
}
