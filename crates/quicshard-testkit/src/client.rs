//! One simulated client: a seeded `quinn_proto::Endpoint` at its own address making the
//! [`app`](crate::app) transfer, once or several times in a row (the later connections resume
//! the session, with 0-RTT when the server allows it). Sans-IO like the rest: the simulator
//! hands it datagrams and its clock, and takes what it sends.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, ConnectionId, ConnectionIdGenerator, DatagramEvent,
    Dir, EndpointConfig, Event, StreamEvent, StreamId, VarInt, WriteError,
};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::app::{pattern, HEADER_LEN};
use crate::tls::SERVER_NAME;

/// Datagrams a client's `poll_transmit` may batch (GSO segments), split by the client.
const MAX_DATAGRAMS: usize = 10;

/// A client that has sent nothing for this long sends a PING. Why: as a client behind a NAT
/// should; a receiving client that is silent when its NAT rebinds is otherwise never heard
/// from again (the server's datagrams go to the old mapping) and the connection times out.
const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// Length of the clients' own CIDs.
const CLIENT_CID_LEN: usize = 8;

/// A client's CIDs, from a seeded PRNG (quinn-proto's default draws from the OS).
struct SeededCids(StdRng);

impl ConnectionIdGenerator for SeededCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut b = [0u8; CLIENT_CID_LEN];
        self.0.fill_bytes(&mut b);
        ConnectionId::new(&b)
    }
    fn cid_len(&self) -> usize {
        CLIENT_CID_LEN
    }
    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// What one client does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) upload: u64,
    pub(crate) download: u64,
    /// Connections made one after another.
    pub(crate) connections: u32,
}

/// How a client's connections ended.
#[derive(Debug, Default, Clone)]
pub(crate) struct Outcome {
    /// Transfers completed and checked.
    pub(crate) completed: u32,
    /// Connections whose 0-RTT data the server accepted.
    pub(crate) zero_rtt_accepted: u32,
    /// The first failure, if any.
    pub(crate) failure: Option<String>,
}

/// One simulated client (see the module docs).
pub(crate) struct Client {
    /// Where it sends from now (a NAT rebinding changes it).
    pub(crate) addr: SocketAddr,
    endpoint: quinn_proto::Endpoint,
    config: ClientConfig,
    server: SocketAddr,
    plan: Plan,
    conn: Option<(ConnectionHandle, Connection)>,
    stream: Option<StreamId>,
    /// Octets of the request written (header included); whether FIN was sent.
    written: u64,
    finished: bool,
    /// Octets of the response received; whether it is complete.
    received: u64,
    done: bool,
    /// Connections started.
    started: u32,
    /// Whether the current connection has received anything (the first flight is what it
    /// sent before).
    heard: bool,
    pub(crate) outcome: Outcome,
    /// A datagram arrived since the last [`Client::poll`]: it needs one now.
    input: bool,
    buf: Vec<u8>,
}

impl Client {
    pub(crate) fn new(
        addr: SocketAddr,
        server: SocketAddr,
        seed: u64,
        tls: &Arc<rustls::ClientConfig>,
        plan: Plan,
    ) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut reset = [0u8; 64];
        rng.fill_bytes(&mut reset);
        let mut ep = EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &reset,
        )));
        let cid_seed = rng.next_u64();
        let cids = Arc::new(Mutex::new(StdRng::seed_from_u64(cid_seed)));
        ep.cid_generator(move || {
            // invariant: nothing panics while holding the lock
            let s = cids.lock().expect("cid seed lock").next_u64();
            Box::new(SeededCids(StdRng::seed_from_u64(s)))
        });
        let mut endpoint_seed = [0u8; 32];
        rng.fill_bytes(&mut endpoint_seed);
        let endpoint = quinn_proto::Endpoint::new(Arc::new(ep), None, true, Some(endpoint_seed));
        // a session cache of its own: rustls keeps a few tickets per server name, which clients
        // sharing one cache would take from each other
        let mut tls = (**tls).clone();
        tls.resumption = rustls::client::Resumption::in_memory_sessions(4);
        // invariant: the rustls config is TLS 1.3 with an AES-128-GCM suite (tls::client_config)
        let quic = quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls)
            .expect("the simulation's TLS config suits QUIC");
        let mut config = ClientConfig::new(Arc::new(quic));
        let mut transport = quinn_proto::TransportConfig::default();
        transport.keep_alive_interval(Some(KEEP_ALIVE));
        config.transport_config(Arc::new(transport));
        let dcids = Mutex::new(StdRng::seed_from_u64(rng.next_u64()));
        config.initial_dst_cid_provider(Arc::new(move || {
            let mut b = [0u8; 16];
            dcids.lock().expect("dcid lock").fill_bytes(&mut b);
            ConnectionId::new(&b)
        }));
        Self {
            addr,
            endpoint,
            config,
            server,
            plan,
            conn: None,
            stream: None,
            written: 0,
            finished: false,
            received: 0,
            done: false,
            started: 0,
            heard: false,
            outcome: Outcome::default(),
            input: false,
            buf: Vec::new(),
        }
    }

    /// Whether every planned connection ended (completed or failed).
    pub(crate) fn is_finished(&self) -> bool {
        self.conn.is_none()
            && (self.started >= self.plan.connections || self.outcome.failure.is_some())
    }

    /// Whether the current connection resumed a session and has not heard from the server yet
    /// (its datagrams now are its first flight, 0-RTT included).
    pub(crate) fn in_resumed_first_flight(&self) -> bool {
        self.started > 1 && !self.heard && self.conn.is_some()
    }

    /// When the client next needs [`Client::poll`] without new input.
    pub(crate) fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        if self.input || (self.conn.is_none() && !self.is_finished()) {
            return Some(now);
        }
        self.conn.as_mut().and_then(|(_, c)| c.poll_timeout())
    }

    /// A datagram from `from` arrived at `now`.
    pub(crate) fn handle(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.input = true;
        let mut resp = Vec::new();
        match self
            .endpoint
            .handle(now, from, None, None, BytesMut::from(data), &mut resp)
        {
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                if let Some((h, c)) = &mut self.conn {
                    if *h == ch {
                        self.heard = true;
                        c.handle_event(ev);
                    }
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                let _ = self.endpoint.refuse(incoming, &mut resp);
            }
            Some(DatagramEvent::Response(_)) | None => {}
        }
    }

    /// Runs the client at `now`: starts the next connection, fires its timer, handles its
    /// events, writes the request; each datagram it sends goes to `send` (destination: the
    /// server).
    pub(crate) fn poll(&mut self, now: Instant, send: &mut impl FnMut(&[u8])) {
        self.input = false;
        if self.conn.is_none() {
            if self.is_finished() {
                return;
            }
            self.connect(now);
        }
        let Some((ch, conn)) = &mut self.conn else {
            return;
        };
        if conn.poll_timeout().is_some_and(|t| t <= now) {
            conn.handle_timeout(now);
        }
        while let Some(ev) = conn.poll_endpoint_events() {
            if let Some(cev) = self.endpoint.handle_event(*ch, ev) {
                conn.handle_event(cev);
            }
        }
        self.events(now);
        self.write_request();
        let Some((ch, conn)) = &mut self.conn else {
            return;
        };
        self.buf.clear();
        while let Some(t) = conn.poll_transmit(now, MAX_DATAGRAMS, &mut self.buf) {
            let seg = t.segment_size.unwrap_or(t.size).max(1);
            for d in self.buf[..t.size].chunks(seg) {
                send(d);
            }
            self.buf.clear();
        }
        if conn.is_drained() {
            // the endpoint forgets the connection on its last event
            while let Some(ev) = conn.poll_endpoint_events() {
                let _ = self.endpoint.handle_event(*ch, ev);
            }
            self.conn = None;
        }
    }

    fn connect(&mut self, now: Instant) {
        self.started += 1;
        (self.stream, self.written, self.finished) = (None, 0, false);
        (self.received, self.done, self.heard) = (0, false, false);
        match self
            .endpoint
            .connect(now, self.config.clone(), self.server, SERVER_NAME)
        {
            Ok((ch, conn)) => {
                self.conn = Some((ch, conn));
                // with a resumable session, the request goes out as 0-RTT data
                if self.conn.as_ref().is_some_and(|(_, c)| c.has_0rtt()) {
                    self.open();
                }
            }
            Err(e) => self.fail(format!("connect: {e}")),
        }
    }

    fn open(&mut self) {
        if let Some((_, c)) = &mut self.conn {
            if self.stream.is_none() {
                self.stream = c.streams().open(Dir::Bi);
            }
        }
    }

    fn fail(&mut self, why: String) {
        if self.outcome.failure.is_none() {
            self.outcome.failure = Some(why);
        }
    }

    fn events(&mut self, now: Instant) {
        loop {
            let Some((_, conn)) = &mut self.conn else {
                return;
            };
            let Some(ev) = conn.poll() else { return };
            match ev {
                Event::Connected => {
                    if conn.accepted_0rtt() {
                        self.outcome.zero_rtt_accepted += 1;
                    }
                    // 0-RTT data the server refused is lost: quinn-proto keeps the stream
                    // only if it was accepted
                    if self.stream.is_some() && !conn.accepted_0rtt() {
                        (self.stream, self.written, self.finished) = (None, 0, false);
                    }
                    self.open();
                }
                Event::Stream(StreamEvent::Readable { id }) if Some(id) == self.stream => {
                    self.read(now)
                }
                Event::ConnectionLost { reason } if !self.done => {
                    self.fail(format!("connection lost: {reason}"));
                }
                _ => {}
            }
        }
    }

    fn write_request(&mut self) {
        let (Some((_, conn)), Some(id)) = (&mut self.conn, self.stream) else {
            return;
        };
        let total = HEADER_LEN as u64 + self.plan.upload;
        let mut buf = [0u8; 4096];
        while self.written < total {
            let n = (total - self.written).min(buf.len() as u64) as usize;
            for (k, b) in buf[..n].iter_mut().enumerate() {
                let i = self.written + k as u64;
                *b = match i.checked_sub(HEADER_LEN as u64) {
                    Some(j) => pattern(j),
                    None => self.plan.download.to_be_bytes()[i as usize],
                };
            }
            match conn.send_stream(id).write(&buf[..n]) {
                Ok(w) => self.written += w as u64,
                Err(WriteError::Blocked) => return,
                Err(e) => {
                    let why = format!("write: {e}");
                    self.fail(why);
                    return;
                }
            }
        }
        if !self.finished {
            self.finished = conn.send_stream(id).finish().is_ok();
        }
    }

    fn read(&mut self, now: Instant) {
        let (Some((_, conn)), Some(id)) = (&mut self.conn, self.stream) else {
            return;
        };
        let mut bad = None;
        let mut fin = false;
        if let Ok(mut chunks) = conn.recv_stream(id).read(true) {
            loop {
                match chunks.next(usize::MAX) {
                    Ok(Some(chunk)) => {
                        for (k, &b) in chunk.bytes.iter().enumerate() {
                            if b != pattern(chunk.offset + k as u64) && bad.is_none() {
                                bad = Some(format!("octet {} is wrong", chunk.offset + k as u64));
                            }
                        }
                        self.received += chunk.bytes.len() as u64;
                    }
                    Ok(None) => {
                        fin = true;
                        break;
                    }
                    Err(quinn_proto::ReadError::Blocked) => break,
                    Err(quinn_proto::ReadError::Reset(code)) => {
                        bad = Some(format!("response reset with {code}"));
                        break;
                    }
                }
            }
            let _ = chunks.finalize();
        }
        if let Some(why) = bad {
            conn.close(now, VarInt::from_u32(1), bytes::Bytes::from_static(b"bad"));
            self.fail(why);
            return;
        }
        if fin && !self.done {
            if self.received != self.plan.download {
                let why = format!("{} of {} octets", self.received, self.plan.download);
                self.fail(why);
                return;
            }
            self.done = true;
            self.outcome.completed += 1;
            conn.close(now, VarInt::from_u32(0), bytes::Bytes::from_static(b"done"));
        }
    }
}
