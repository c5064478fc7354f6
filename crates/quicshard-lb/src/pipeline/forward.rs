//! Forwarders: send routed packets to backends, and in proxy mode relay the replies.
//!
//! This module owns [`Forwarder`], one thread each. Its loop is a `mio::Poll` with one
//! [`mio::Waker`] (rung by processors once per batch) and, in proxy mode, one registered socket
//! per client session. In the inline pipeline the poll also watches the worker's listen socket
//! ([`super::inline::Source`]), whose routed batches join the send batch. Each iteration: read
//! and route a batch (inline); drain up to `write_batch` queued packets and send them;
//! relay up to `write_batch` replies per readable session; close sessions idle for
//! `session_idle`; block until woken, a session is readable, or [`super::STOP_CHECK`].
//!
//! - **proxy**: a session is one ephemeral UDP socket per (client address, backend), connected
//!   to the backend, so a client port carrying connections to two backends gets two sessions.
//!   Replies read from it are sent to the client from the listen socket. At most `ceil(max_sessions / forwarders)`
//!   sessions per forwarder; beyond that new clients are dropped and counted.
//! - **dsr**: the inner IP + UDP header is written into the packet's headroom in place and the
//!   whole datagram sent to the backend from an unconnected socket.
//!
//! Consecutive packets of one proxy session in a send batch leave with one `sendmmsg` on the
//! session's socket.
//!
//! # Implementation notes
//! DSR packets, proxy replies and runs of proxy packets of one session go out with `sendmmsg`
//! (`quicshard_udp::BatchIo`). Replies use slots
//! owned by the forwarder, not the pool: they never cross threads.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use super::inline::Source;
use super::stats::{add, ForwarderCounters};
use super::{io_err, relays, Error, Shared, STOP_CHECK};
use crate::config::{ForwardMode, LbConfig};
use crate::encap::EncapRepr;
use crate::pool::{Packet, HEADROOM, MAX_PAYLOAD};
use quicshard_udp::BatchIo;

/// Token of the waker; sessions use their slot index.
const WAKER: Token = Token(usize::MAX);
/// Token of the inline pipeline's listen socket.
const LISTEN: Token = Token(usize::MAX - 1);
/// How often idle sessions are looked for.
const SESSION_SWEEP: Duration = Duration::from_millis(500);
/// Readiness events handled per poll.
const EVENTS: usize = 256;

/// One client's relay socket toward its backend.
struct Session {
    client: SocketAddr,
    target: SocketAddr,
    sock: mio::net::UdpSocket,
    last: Instant,
}

/// A forwarder thread's state.
pub(super) struct Forwarder {
    shared: Arc<Shared>,
    rx: Receiver<Box<Packet>>,
    /// Inline pipeline: the listen socket this thread reads and routes itself.
    source: Option<Source>,
    poll: Poll,
    waker: Arc<Waker>,
    listen: UdpSocket,
    mode: ForwardMode,
    virtual_address: SocketAddr,
    write_batch: usize,
    max_sessions: usize,
    session_idle: Duration,
    sessions: Vec<Option<Session>>,
    free: Vec<usize>,
    /// Open sessions by `(client, backend)`.
    by_flow: HashMap<(SocketAddr, SocketAddr), usize>,
    dsr: [Option<UdpSocket>; 2],
    io: BatchIo,
    /// Packets taken from the queue for one send batch (boxed: pool buffers move by pointer).
    #[allow(clippy::vec_box)]
    batch: Vec<Box<Packet>>,
    /// DSR: per packet of `batch`, the prepended header length (0: not sent).
    prefix: Vec<usize>,
    /// DSR: indices into `batch` of one address family.
    family: Vec<usize>,
    /// Proxy: `write_batch` reply slots of `MAX_PAYLOAD` bytes, sent with one `sendmmsg`.
    replies: Vec<u8>,
    /// Proxy: length and client of each filled reply slot.
    reply_meta: Vec<(usize, SocketAddr)>,
    /// Sessions that may still have replies queued (readiness is edge-triggered).
    ready: Vec<usize>,
}

impl Forwarder {
    pub(super) fn new(
        config: &LbConfig,
        shared: Arc<Shared>,
        listen: &UdpSocket,
        rx: Receiver<Box<Packet>>,
        source: Option<Source>,
    ) -> Result<Self, Error> {
        let poll = Poll::new().map_err(io_err("create poll"))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(io_err("create waker"))?);
        if let Some(src) = &source {
            poll.registry()
                .register(&mut SourceFd(&src.fd()), LISTEN, Interest::READABLE)
                .map_err(io_err("register listen socket"))?;
        }
        // An inline batch is a read batch plus what the slow path queued.
        let batch = config.write_batch + source.as_ref().map_or(0, |_| config.read_batch);
        Ok(Self {
            shared,
            rx,
            source,
            poll,
            waker,
            listen: listen.try_clone().map_err(io_err("clone listen socket"))?,
            mode: config.mode,
            virtual_address: config.virtual_address,
            write_batch: config.write_batch,
            max_sessions: config.max_sessions.div_ceil(config.forwarders),
            session_idle: config.timers.session_idle,
            sessions: Vec::new(),
            free: Vec::new(),
            by_flow: HashMap::new(),
            dsr: [None, None],
            io: BatchIo::new(batch),
            batch: Vec::with_capacity(batch),
            prefix: Vec::with_capacity(batch),
            family: Vec::with_capacity(batch),
            replies: match config.mode {
                ForwardMode::Proxy => vec![0; config.write_batch * MAX_PAYLOAD],
                ForwardMode::Dsr => Vec::new(),
            },
            reply_meta: Vec::with_capacity(config.write_batch),
            ready: Vec::new(),
        })
    }

    pub(super) fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS);
        let mut next_sweep = Instant::now() + SESSION_SWEEP;
        while !self.shared.stop.load(Ordering::Relaxed) {
            let busy = !self.ready.is_empty()
                || !self.rx.is_empty()
                || self.source.as_ref().is_some_and(|s| s.more);
            let timeout = if busy { Duration::ZERO } else { STOP_CHECK };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "forwarder poll failed");
                    return;
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    LISTEN => {
                        if let Some(src) = &mut self.source {
                            src.more = true;
                        }
                    }
                    Token(i) => self.ready.push(i),
                }
            }
            let now = Instant::now();
            if let Some(src) = self.source.as_mut().filter(|s| s.more) {
                src.read(&self.shared, now, &mut self.batch);
            }
            self.send_queued(now);
            self.relay_replies(now);
            if now >= next_sweep {
                self.expire_sessions(now);
                next_sweep = now + SESSION_SWEEP;
            }
        }
        if let Some(src) = &mut self.source {
            src.release(&self.shared);
        }
        let n = self.by_flow.len() as u64;
        self.shared
            .counters
            .sessions
            .fetch_sub(n, Ordering::Relaxed);
    }

    fn send_queued(&mut self, now: Instant) {
        let shared = self.shared.clone();
        let c = &shared.counters.forwarders;
        let mut batch = std::mem::take(&mut self.batch);
        batch.extend(self.rx.try_iter().take(self.write_batch));
        match self.mode {
            ForwardMode::Proxy => {
                // Consecutive packets of one session (a client sends in bursts) go out with one
                // sendmmsg on the session's socket.
                let mut start = 0;
                while start < batch.len() {
                    let key = (batch[start].client, batch[start].target);
                    let end = start
                        + batch[start..]
                            .iter()
                            .take_while(|p| (p.client, p.target) == key)
                            .count();
                    if let Some(t) = key.1 {
                        match self.send_proxy(&batch[start..end], t, now) {
                            Ok(Some((sent, failed))) => {
                                add(&c.forwarded, sent as u64);
                                add(&c.send_errors, failed as u64);
                            }
                            Ok(None) => {}
                            Err(_) => add(&c.send_errors, (end - start) as u64),
                        }
                    }
                    start = end;
                }
            }
            ForwardMode::Dsr => self.send_dsr(&mut batch),
        }
        for p in batch.drain(..) {
            shared.pool.put(p);
        }
        self.batch = batch;
    }

    /// Sends packets of one client to `target` through the client's session, opening it if
    /// needed: `Ok(Some((sent, failed)))`, or `Ok(None)` if the session limit dropped them
    /// (counted).
    #[allow(clippy::vec_box)]
    fn send_proxy(
        &mut self,
        packets: &[Box<Packet>],
        target: SocketAddr,
        now: Instant,
    ) -> io::Result<Option<(usize, usize)>> {
        let Some(client) = packets.first().map(|p| p.client) else {
            return Ok(Some((0, 0)));
        };
        let i = match self.by_flow.get(&(client, target)) {
            Some(&i) => i,
            None => match self.open(client, target, now)? {
                Some(i) => i,
                None => return Ok(None),
            },
        };
        let s = self.sessions[i]
            .as_mut()
            .expect("by_flow only names open sessions");
        s.last = now;
        Ok(Some(self.io.send(&s.sock, packets.len(), |k| {
            (packets[k].payload(), target)
        })))
    }

    fn open(
        &mut self,
        client: SocketAddr,
        target: SocketAddr,
        now: Instant,
    ) -> io::Result<Option<usize>> {
        let c = &self.shared.counters;
        if self.by_flow.len() >= self.max_sessions {
            add(&c.forwarders.dropped_session_limit, 1);
            return Ok(None);
        }
        let mut sock = mio::net::UdpSocket::bind(unspecified(&target))?;
        sock.connect(target)?;
        let i = self.free.pop().unwrap_or_else(|| {
            self.sessions.push(None);
            self.sessions.len() - 1
        });
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut sock, Token(i), Interest::READABLE)
        {
            self.free.push(i);
            return Err(e);
        }
        self.sessions[i] = Some(Session {
            client,
            target,
            sock,
            last: now,
        });
        self.by_flow.insert((client, target), i);
        add(&c.forwarders.sessions_opened, 1);
        add(&c.sessions, 1);
        Ok(Some(i))
    }

    /// Writes each packet's inner header into its headroom, then sends each address family's
    /// packets with one batched call.
    fn send_dsr(&mut self, batch: &mut [Box<Packet>]) {
        let c = &self.shared.counters.forwarders;
        self.prefix.clear();
        for p in batch.iter_mut() {
            let repr = EncapRepr::new(p.client, self.virtual_address, p.payload().len());
            let hl = match (repr, p.target) {
                (Ok(repr), Some(_)) => {
                    let hl = repr.header_len();
                    let (head, payload) = p.headroom_and_payload();
                    repr.emit(&mut head[HEADROOM - hl..], payload);
                    hl
                }
                (Err(_), _) => {
                    add(&c.dropped_encap, 1);
                    0
                }
                (_, None) => 0,
            };
            self.prefix.push(hl);
        }
        for v6 in [false, true] {
            self.family.clear();
            self.family.extend((0..batch.len()).filter(|&i| {
                self.prefix[i] > 0 && batch[i].target.is_some_and(|t| t.is_ipv6() == v6)
            }));
            if self.family.is_empty() {
                continue;
            }
            let slot = usize::from(v6);
            if self.dsr[slot].is_none() {
                let any = if v6 { "[::]:0" } else { "0.0.0.0:0" };
                match UdpSocket::bind(any) {
                    Ok(sock) => self.dsr[slot] = Some(sock),
                    Err(_) => {
                        add(&c.send_errors, self.family.len() as u64);
                        continue;
                    }
                }
            }
            let sock = self.dsr[slot].as_ref().expect("bound just above");
            let (family, prefix) = (&self.family, &self.prefix);
            let (sent, failed) = self.io.send(sock, family.len(), |k| {
                let i = family[k];
                let p = &batch[i];
                // Invariant: `family` lists only packets with a target.
                (
                    p.with_prefix(prefix[i]),
                    p.target.expect("filtered on target"),
                )
            });
            add(&c.forwarded, sent as u64);
            add(&c.send_errors, failed as u64);
        }
    }

    /// Relays up to `write_batch` replies from each ready session, in batches of
    /// `write_batch` per `sendmmsg` on the listen socket; sessions with more left stay ready for
    /// the next iteration (which then polls with a zero timeout).
    fn relay_replies(&mut self, now: Instant) {
        if !relays(self.mode) {
            self.ready.clear();
            return;
        }
        let c = &self.shared.counters.forwarders;
        let ready = std::mem::take(&mut self.ready);
        for &i in &ready {
            let Some(Some(s)) = self.sessions.get_mut(i) else {
                continue;
            };
            let mut drained = false;
            for _ in 0..self.write_batch {
                if self.reply_meta.len() == self.write_batch {
                    flush(
                        &mut self.io,
                        &self.listen,
                        &self.replies,
                        &mut self.reply_meta,
                        c,
                    );
                }
                let k = self.reply_meta.len();
                let slot = &mut self.replies[k * MAX_PAYLOAD..(k + 1) * MAX_PAYLOAD];
                match s.sock.recv(slot) {
                    Ok(n) => {
                        s.last = now;
                        self.reply_meta.push((n, s.client));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        drained = true;
                        break;
                    }
                    Err(_) => add(&c.reply_errors, 1),
                }
            }
            if !drained {
                self.ready.push(i);
            }
        }
        flush(
            &mut self.io,
            &self.listen,
            &self.replies,
            &mut self.reply_meta,
            c,
        );
    }

    fn expire_sessions(&mut self, now: Instant) {
        let c = &self.shared.counters;
        for i in 0..self.sessions.len() {
            let idle = self.sessions[i]
                .as_ref()
                .is_some_and(|s| now.duration_since(s.last) >= self.session_idle);
            if !idle {
                continue;
            }
            if let Some(mut s) = self.sessions[i].take() {
                let _ = self.poll.registry().deregister(&mut s.sock);
                self.by_flow.remove(&(s.client, s.target));
                self.free.push(i);
                add(&c.forwarders.sessions_expired, 1);
                c.sessions.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// Sends the filled reply slots to their clients from the listen socket.
fn flush(
    io: &mut BatchIo,
    listen: &UdpSocket,
    replies: &[u8],
    meta: &mut Vec<(usize, SocketAddr)>,
    c: &ForwarderCounters,
) {
    if meta.is_empty() {
        return;
    }
    let (sent, failed) = io.send(listen, meta.len(), |k| {
        let (len, client) = meta[k];
        (&replies[k * MAX_PAYLOAD..k * MAX_PAYLOAD + len], client)
    });
    add(&c.replies_relayed, sent as u64);
    add(&c.reply_errors, failed as u64);
    meta.clear();
}

/// The wildcard address of `addr`'s family, port 0.
fn unspecified(addr: &SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}
