//! Sans-IO tests of what the shards share: a Retry token issued by one shard's endpoint validates
//! on another shard's endpoint (one token key in the shared `ServerConfig`), and does not validate
//! on an endpoint whose `ServerConfig` has another key.
//!
//! With 0-RTT on, one single-use ticket store shared by the shards' configs lets a ticket resume
//! on any shard once: a 0-RTT flight replayed to a second shard falls back to a full handshake.
//!
//! In a running engine, the client's second Initial carries the Retry's source CID as its DCID,
//! and that CID has the issuing shard's shard byte, so steering (BPF or handoff) takes it back to
//! the same shard. A second Initial reaches another shard only when steering cannot apply (another
//! member of a load-balanced pool sharing this config, a fallback path); these tests exercise
//! exactly that case, without sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_proto::{
    Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event, Incoming,
    ServerConfig, TransportConfig,
};

use super::{build_server_config, Shared, Tickets};
use crate::cid::CidConfig;
use crate::steer::owner_shard;
use crate::tickets::TicketStore;
use crate::tls;

const SHARDS: usize = 2;
/// Shuttle rounds before the handshake must have completed (it needs about 4 without loss).
const MAX_ROUNDS: usize = 50;

fn stateless() -> Tickets {
    Tickets::Stateless {
        key_lifetime: crate::tickets::DEFAULT_TICKET_KEY_LIFETIME,
    }
}

fn client_addr() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}
fn server_addr() -> SocketAddr {
    "127.0.0.1:4433".parse().unwrap()
}

/// The engine's shared state for `SHARDS` shards, plus the material for a second server config.
fn shared() -> (Shared, rustls::ServerConfig) {
    let (chain, key) = tls::self_signed(&["localhost"]).unwrap();
    let server_tls = tls::server_config(chain.clone(), key.clone_key(), &[]).unwrap();
    let other_tls = tls::server_config(chain.clone(), key, &[]).unwrap();
    let (server_config, _) = build_server_config(
        server_tls,
        Arc::default(),
        &stateless(),
        &crate::Secrets::random(),
    )
    .unwrap();
    let shared = Shared {
        server_config: Some(server_config),
        endpoint_config: EndpointConfig::default(),
        client_config: tls::client_config_trusting(&chain, &[]).unwrap(),
        cid: CidConfig::standalone(SHARDS).unwrap(),
        retry: true,
        retry_threshold: None,
        max_connections: 16,
        admission: crate::Admission::default(),
        memory: crate::memory::MemoryBudget::default(),
        tickets: stateless(),
        server_tickets: None,
        qlog: None,
        secrets: crate::Secrets::random(),
        retire: Arc::default(),
        seed: None,
    };
    (shared, other_tls)
}

/// A server endpoint as shard `shard` builds it, with `config`.
fn shard_endpoint(shared: &Shared, shard: usize, config: Arc<ServerConfig>) -> Endpoint {
    Endpoint::new(shared.endpoint_config_for(shard), Some(config), true, None)
}

/// One side of the conversation: an endpoint and its one connection.
struct Side {
    ep: Endpoint,
    ch: ConnectionHandle,
    conn: Connection,
    connected: bool,
}

impl Side {
    /// Every datagram the connection wants to send now, one per transmit (no GSO).
    fn transmits(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            let Some(t) = self.conn.poll_transmit(now, 1, &mut buf) else {
                return out;
            };
            buf.truncate(t.size);
            out.push(buf);
        }
    }

    /// Feeds a datagram from `from` to the endpoint; it must belong to our connection.
    fn receive(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        match handle(&mut self.ep, now, from, datagram) {
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                assert_eq!(ch, self.ch);
                self.conn.handle_event(ev);
            }
            None => {}
            Some(_) => panic!("datagram did not reach the connection"),
        }
        self.pump(now);
    }

    /// Timers, endpoint events and application events after any input.
    fn pump(&mut self, now: Instant) {
        if self.conn.poll_timeout().is_some_and(|t| t <= now) {
            self.conn.handle_timeout(now);
        }
        while let Some(ev) = self.conn.poll_endpoint_events() {
            if let Some(cev) = self.ep.handle_event(self.ch, ev) {
                self.conn.handle_event(cev);
            }
        }
        while let Some(ev) = self.conn.poll() {
            match ev {
                Event::Connected => self.connected = true,
                Event::ConnectionLost { reason } => panic!("connection lost: {reason}"),
                _ => {}
            }
        }
    }
}

/// Moves datagrams both ways (`check` sees each, and whether the server sent it) until both sides
/// are connected and nothing is in flight, or `MAX_ROUNDS` passed.
fn shuttle(
    client: &mut Side,
    server: &mut Side,
    now: &mut Instant,
    mut check: impl FnMut(&[u8], bool),
) {
    for _ in 0..MAX_ROUNDS {
        let mut moved = false;
        for d in client.transmits(*now) {
            check(&d, false);
            moved = true;
            server.receive(*now, client_addr(), &d);
        }
        for d in server.transmits(*now) {
            check(&d, true);
            moved = true;
            client.receive(*now, server_addr(), &d);
        }
        if !moved && client.connected && server.connected {
            return;
        }
        *now += Duration::from_millis(1);
        client.pump(*now);
        server.pump(*now);
    }
}

fn handle(ep: &mut Endpoint, now: Instant, from: SocketAddr, data: &[u8]) -> Option<DatagramEvent> {
    let mut resp = Vec::new();
    ep.handle(now, from, None, None, BytesMut::from(data), &mut resp)
}

/// A new connection attempt, or a failure naming what came instead.
fn incoming(ev: Option<DatagramEvent>) -> Incoming {
    match ev {
        Some(DatagramEvent::NewConnection(i)) => i,
        Some(DatagramEvent::Response(_)) => panic!("endpoint answered with a response"),
        Some(DatagramEvent::ConnectionEvent(..)) => panic!("routed to an existing connection"),
        None => panic!("endpoint dropped the datagram"),
    }
}

/// The client's first Initial goes to shard 0, which answers with a Retry; returns the client
/// and its second Initial (carrying the token).
fn retried_by_shard_0(shared: &Shared, now: Instant) -> (Side, Vec<u8>) {
    let mut client = client_side(shared, now);
    let first = client.transmits(now);
    assert_eq!(first.len(), 1, "one Initial datagram");

    let config = shared.server_config.clone().unwrap();
    let mut shard0 = shard_endpoint(shared, 0, config);
    let inc = incoming(handle(&mut shard0, now, client_addr(), &first[0]));
    assert!(
        !inc.remote_address_validated(),
        "first Initial has no token"
    );
    let mut retry = Vec::new();
    let t = shard0
        .retry(inc, &mut retry)
        .unwrap_or_else(|_| panic!("Retry refused"));
    retry.truncate(t.size);

    client.receive(now, server_addr(), &retry);
    let second = client.transmits(now);
    assert_eq!(second.len(), 1, "one Initial datagram after the Retry");
    // the Retry's source CID is shard 0's, so the engine would steer this back to shard 0
    let cid_len = shared.cid.cid_len();
    assert_eq!(
        owner_shard(&second[0], cid_len, SHARDS, shared.cid.shard_key()),
        Some(0)
    );
    let second = second.into_iter().next().unwrap();
    (client, second)
}

#[test]
fn retry_from_shard_0_is_accepted_on_shard_1() {
    let (shared, _) = shared();
    let mut now = Instant::now();
    let (mut client, second) = retried_by_shard_0(&shared, now);

    let config = shared.server_config.clone().unwrap();
    let mut shard1 = shard_endpoint(&shared, 1, config);
    let inc = incoming(handle(&mut shard1, now, client_addr(), &second));
    assert!(
        inc.remote_address_validated(),
        "shard 1 validates shard 0's Retry token"
    );
    let mut server = accept(shard1, inc, now);

    // shuttle until both sides are connected; once the client has heard from shard 1, it
    // addresses shard 1's CIDs, which steer to shard 1
    let cid_len = shared.cid.cid_len();
    let mut heard_from_server = false;
    shuttle(&mut client, &mut server, &mut now, |d, from_server| {
        heard_from_server |= from_server;
        if heard_from_server && !from_server {
            assert_eq!(
                owner_shard(d, cid_len, SHARDS, shared.cid.shard_key()),
                Some(1)
            );
        }
    });
    assert!(client.connected, "client handshake did not complete");
    assert!(server.connected, "server handshake did not complete");
    assert_eq!(server.conn.remote_address(), client_addr());
}

#[test]
fn retry_token_does_not_validate_under_another_key() {
    let (shared, other_tls) = shared();
    let now = Instant::now();
    let (_client, second) = retried_by_shard_0(&shared, now);

    // same certificate, same shard layout, but a second `build_server_config`: another token key
    let (other, _) = build_server_config(
        other_tls,
        Arc::new(TransportConfig::default()),
        &stateless(),
        &crate::Secrets::random(),
    )
    .unwrap();
    let mut stranger = shard_endpoint(&shared, 1, other);
    let inc = incoming(handle(&mut stranger, now, client_addr(), &second));
    assert!(
        !inc.remote_address_validated(),
        "a token under another key must not validate"
    );
    assert!(inc.may_retry(), "treated as if it had no token: may Retry");
    stranger.ignore(inc);

    // control: the same datagram validates under the shared key
    let config = shared.server_config.clone().unwrap();
    let mut shard1 = shard_endpoint(&shared, 1, config);
    let inc = incoming(handle(&mut shard1, now, client_addr(), &second));
    assert!(inc.remote_address_validated());
    shard1.ignore(inc);
}

/// A client endpoint with one connection to `server_addr()`.
fn client_side(shared: &Shared, now: Instant) -> Side {
    let mut ep = Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None);
    let (ch, conn) = ep
        .connect(
            now,
            shared.client_config.clone(),
            server_addr(),
            "localhost",
        )
        .unwrap();
    Side {
        ep,
        ch,
        conn,
        connected: false,
    }
}

/// The server side of the connection `inc` on `ep`.
fn accept(mut ep: Endpoint, inc: Incoming, now: Instant) -> Side {
    let mut resp = Vec::new();
    let (ch, conn) = ep
        .accept(inc, now, &mut resp, None)
        .unwrap_or_else(|e| panic!("accept failed: {}", e.cause));
    let mut side = Side {
        ep,
        ch,
        conn,
        connected: false,
    };
    side.pump(now);
    side
}

/// Accepts `flight` (a client's first datagrams) on `ep` as coming from `from`.
fn accept_flight(mut ep: Endpoint, now: Instant, from: SocketAddr, flight: &[Vec<u8>]) -> Side {
    let inc = incoming(handle(&mut ep, now, from, &flight[0]));
    let mut side = accept(ep, inc, now);
    for d in &flight[1..] {
        side.receive(now, from, d);
    }
    side
}

#[test]
fn a_replayed_zero_rtt_flight_falls_back_on_another_shard() {
    let (chain, key) = tls::self_signed(&["localhost"]).unwrap();
    let store = Arc::new(TicketStore::new(64));
    let tickets = Tickets::ZeroRtt(store.clone());
    let server_tls = tls::server_config(chain.clone(), key, &[]).unwrap();
    let (config, _) = build_server_config(
        server_tls,
        Arc::default(),
        &tickets,
        &crate::Secrets::random(),
    )
    .unwrap();
    let shared = Shared {
        server_config: Some(config.clone()),
        endpoint_config: EndpointConfig::default(),
        client_config: tls::client_config_trusting(&chain, &[]).unwrap(),
        cid: CidConfig::standalone(SHARDS).unwrap(),
        retry: false,
        retry_threshold: None,
        max_connections: 16,
        admission: crate::Admission::default(),
        memory: crate::memory::MemoryBudget::default(),
        tickets,
        server_tickets: None,
        qlog: None,
        secrets: crate::Secrets::random(),
        retire: Arc::default(),
        seed: None,
    };
    let mut now = Instant::now();

    // a full handshake with shard 0 leaves the client a ticket
    let mut client = client_side(&shared, now);
    let first = client.transmits(now);
    let mut server = accept_flight(
        shard_endpoint(&shared, 0, config.clone()),
        now,
        client_addr(),
        &first,
    );
    shuttle(&mut client, &mut server, &mut now, |_, _| {});
    assert!(client.connected && server.connected);
    assert!(!server.conn.has_0rtt(), "no ticket yet: no 0-RTT");
    assert!(store.stats().issued >= 1, "{:?}", store.stats());

    // the next connection sends early data in its first flight
    let mut again = client_side(&shared, now);
    assert!(again.conn.has_0rtt(), "the client holds a ticket");
    let id = again.conn.streams().open(Dir::Bi).expect("a 0-RTT stream");
    again.conn.send_stream(id).write(b"early").unwrap();
    let flight = again.transmits(now);

    // shard 0 takes the ticket and the early data
    let a = accept_flight(
        shard_endpoint(&shared, 0, config.clone()),
        now,
        client_addr(),
        &flight,
    );
    assert!(a.conn.has_0rtt(), "shard 0 accepts 0-RTT");
    assert_eq!(store.stats().resumed, 1);

    // the same flight replayed to shard 1: the ticket is gone, no early data, full handshake
    let replay_from: SocketAddr = "127.0.0.1:40001".parse().unwrap();
    let mut b = accept_flight(
        shard_endpoint(&shared, 1, config),
        now,
        replay_from,
        &flight,
    );
    assert!(!b.conn.has_0rtt(), "shard 1 must refuse the replay");
    assert_eq!(store.stats().refused, 1, "{:?}", store.stats());
    assert!(
        b.conn.is_handshaking(),
        "shard 1 carries on with a full handshake"
    );
    assert!(
        !b.transmits(now).is_empty(),
        "shard 1 answers (ServerHello and certificate)"
    );

    // shard 0's connection completes with the early stream delivered
    let mut a = a;
    shuttle(&mut again, &mut a, &mut now, |_, _| {});
    assert!(again.connected && a.connected);
    assert!(
        again.conn.accepted_0rtt(),
        "the client sees its 0-RTT accepted"
    );
    let got = a.conn.streams().accept(Dir::Bi).expect("the early stream");
    let mut recv = a.conn.recv_stream(got);
    let mut chunks = recv.read(true).unwrap();
    let data = chunks.next(64).unwrap().expect("early bytes").bytes;
    assert_eq!(&data[..], b"early");
    let _ = chunks.finalize();
}
