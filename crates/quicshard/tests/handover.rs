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
    let (client, rx) = f.client();
    // one finished download: the client holds a's session ticket (sent before the response)
    downloads(&client, addr, 0..1, 1024);
    all_ok(&collect(&rx, 1, TIMEOUT));
    // established connections with large downloads in flight across the takeover
    downloads(&client, addr, 1..7, 8 << 20);
    wait_for("a's seven connections", TIMEOUT, || accepted(&a) == 7);

    let b = f.server(SHARDS).unwrap();
    let hb = b.handover().unwrap();
    assert_eq!(hb.generation(), 2);
    assert!(hb.predecessor_running());
    // the old engine learns it was replaced from the new one's last message
    wait_for("a replaced", TIMEOUT, || a.handover().unwrap().replaced());
    assert_eq!(b.local_addr(), addr, "the same port");
    assert!(b.bpf_attached());

    // new connections (with tickets from a: resumption across the handover) land on b
    downloads(&client, addr, 7..15, 64 << 10);
    let outcomes = collect(&rx, 14, TIMEOUT);
    all_ok(&outcomes);
    assert_eq!(accepted(&a), 7, "a accepted nothing after the switch");
    assert_eq!(accepted(&b), 8);
    let resumed: u64 = b.stats().iter().map(|s| s.resumptions).sum();
    assert!(resumed >= 1, "no ticket from a resumed on b");

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
    assert_eq!(accepted(&b), 8);
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
    let o = collect(&rx, 1, TIMEOUT);
    let err = o[0].result.as_ref().unwrap_err();
    assert!(
        err.contains("shutdown"),
        "closed cleanly with the shutdown reason: {err}"
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
