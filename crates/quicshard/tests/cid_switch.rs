//! A client connection moving to a new server-issued CID mid-download
//! (`ShardCtx::switch_remote_cid`): a UDP relay between the client engine and the server records
//! the DCID of every short-header datagram the client sends. With the switch the relay sees a
//! second DCID after it and the download completes byte-exact on the same server connection;
//! without it, the client keeps one DCID for the whole download.

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use quicshard::{Engine, ShardId, ShardStats};

const SIZE: u64 = 1 << 20;
/// Bytes of the download after which the client switches.
const SWITCH_AFTER: u64 = SIZE / 4;
const TIMEOUT: Duration = Duration::from_secs(60);
/// The relay threads exit by themselves after this long, whatever happens to the test.
const RELAY_LIFETIME: Duration = Duration::from_secs(90);

/// Short-header datagrams a DCID must carry to count as used: a one-off DCID is a stateless
/// reset (random DCID), which a client may send for a late datagram after its connection is gone.
const USED: u64 = 3;

/// Forwards datagrams between one client and `server`; the client→server thread returns the
/// DCIDs (`cid_len` octets) the client's short-header datagrams used (at least [`USED`] times
/// each), in order of first appearance.
struct Relay {
    front: SocketAddr,
    stop: Arc<AtomicBool>,
    up: JoinHandle<Vec<Vec<u8>>>,
    down: JoinHandle<()>,
}

impl Relay {
    fn start(server: SocketAddr, cid_len: usize) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&front, &upstream] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let addr = front.local_addr().unwrap();
        let (front2, upstream2) = (front.try_clone().unwrap(), upstream.try_clone().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let client: Arc<OnceLock<SocketAddr>> = Arc::default();
        let deadline = Instant::now() + RELAY_LIFETIME;
        let running = {
            let stop = stop.clone();
            move || !stop.load(Relaxed) && Instant::now() < deadline
        };
        let up = {
            let (running, client) = (running.clone(), client.clone());
            std::thread::spawn(move || {
                let mut seen: Vec<(Vec<u8>, u64)> = Vec::new();
                let mut buf = [0u8; 65536];
                while running() {
                    let Ok((n, from)) = front.recv_from(&mut buf) else {
                        continue;
                    };
                    let _ = client.set(from);
                    // short header: first bit 0, the DCID right after the first octet
                    if buf[0] & 0x80 == 0 && n > cid_len {
                        let dcid = &buf[1..1 + cid_len];
                        match seen.iter_mut().find(|(s, _)| s == dcid) {
                            Some((_, n)) => *n += 1,
                            None => seen.push((dcid.to_vec(), 1)),
                        }
                    }
                    let _ = upstream.send_to(&buf[..n], server);
                }
                seen.into_iter()
                    .filter(|&(_, n)| n >= USED)
                    .map(|(dcid, _)| dcid)
                    .collect()
            })
        };
        let down = std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while running() {
                let Ok((n, _)) = upstream2.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(c) = client.get() {
                    let _ = front2.send_to(&buf[..n], c);
                }
            }
        });
        Self {
            front: addr,
            stop,
            up,
            down,
        }
    }

    /// Stops both threads; the client's short-header DCIDs.
    fn finish(self) -> Vec<Vec<u8>> {
        self.stop.store(true, Relaxed);
        self.down.join().unwrap();
        self.up.join().unwrap()
    }
}

/// One download of [`SIZE`] bytes through the relay; the DCIDs the client used and the server's
/// counters.
fn download(switch: bool) -> (Vec<Vec<u8>>, ShardStats) {
    let _ = tracing_subscriber::fmt::try_init();
    let srv = Engine::builder(|_| Server::default())
        .shards(1)
        .transport(transport())
        .start()
        .unwrap();
    let relay = Relay::start(srv.local_addr(), srv.cid_len());
    let cfg = quicshard::tls::client_config_trusting(srv.certificate().unwrap(), &[]).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let cli = Engine::builder(move |_| match switch {
        true => Client::switching_cid_after(tx.clone(), SWITCH_AFTER),
        false => Client::new(tx.clone()),
    })
    .shards(1)
    .listen("127.0.0.1:0".parse().unwrap())
    .client_config(cfg)
    .start()
    .unwrap();
    start_download(&cli.remote(), ShardId(0), relay.front, 0, SIZE);
    let outcomes = collect(&rx, 1, TIMEOUT);
    drop(cli);
    let dcids = relay.finish();
    let server = ShardStats::sum(&srv.shutdown(Duration::from_secs(5)));
    assert_eq!(outcomes[0].result, Ok(SIZE), "{server:?}");
    assert_eq!(server.connections_accepted, 1, "{server:?}");
    assert_eq!(server.handshakes, 1, "{server:?}");
    (dcids, server)
}

fn hex(cids: &[Vec<u8>]) -> BTreeSet<String> {
    cids.iter()
        .map(|c| c.iter().map(|b| format!("{b:02x}")).collect())
        .collect()
}

#[test]
fn switch_moves_the_client_to_a_new_dcid() {
    let (dcids, server) = download(true);
    assert_eq!(dcids.len(), 2, "DCIDs {:?}", hex(&dcids));
    // the new CID names the same connection: nothing was dropped as unknown
    assert_eq!(server.dropped_unknown_cid, 0, "{server:?}");
}

#[test]
fn without_switch_the_client_keeps_its_dcid() {
    let (dcids, _) = download(false);
    assert_eq!(dcids.len(), 1, "DCIDs {:?}", hex(&dcids));
}
