//! A shard's two UDP sockets and its I/O buffers: batched receive (recvmmsg + GRO through
//! quinn-udp) and a batched transmit queue per socket.
//!
//! - [`LISTEN`]: the shard's member of the `SO_REUSEPORT` group on the shared port;
//! - [`CLIENT`]: an unshared socket on an ephemeral port for connections this shard initiates
//!   (and for any peer that reaches the shard directly, e.g. a preferred address).
//!
//! Receive buffers are allocated once per shard and reused. Datagrams handed to quinn-proto are
//! copied into the shard's [`Arena`](super::arena::Arena), never allocated one by one.
//!
//! # Sending
//! Connections write transmits straight into their socket's queue of [`TX_BATCH`] reusable
//! buffers ([`Sock::reserve`], [`Sock::next_buf`], [`Sock::commit`]). The queue is flushed when
//! full and once per loop iteration, after every dirty connection was driven, so the datagrams of
//! one iteration to many destinations leave in one syscall: a `sendmmsg` ([`super::sys`]) of the
//! whole queue in order, single datagrams and GSO batches (`UDP_SEGMENT`) alike. If `sendmmsg`
//! fails a transmit with `EINVAL`/`EIO`, that transmit goes through quinn-udp's `sendmsg`, which
//! has the fallbacks (it turns GSO off for the socket when the device cannot do it). If quinn-udp
//! sends it, the kernel refuses our control messages: the socket sends everything through
//! quinn-udp from then on. If quinn-udp fails too, the transmit itself was bad (e.g. port 0) and
//! is dropped.
//!
//! When the kernel takes only part of the queue (`WouldBlock`, or a partial `sendmmsg` followed by
//! `WouldBlock`), the rest stays queued and the socket is *blocked*: connections that want to send
//! wait on it ([`Sock::waiters`]) until it is writable and the queue drained. The socket counts
//! what it sends: `datagrams_out` (when the kernel takes them), `send_calls`, `dropped_send_error`.
//!
//! A UDP socket is registered for readability only, and for writability too only while it is
//! blocked. Why: with edge-triggered epoll every freed send buffer (on loopback: every datagram,
//! during the send itself; on a NIC: every TX completion) raises a writable edge, and each one
//! woke the shard for an iteration with nothing to do.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use quinn_udp::{EcnCodepoint, Transmit, UdpSockRef, UdpSocketState, BATCH_SIZE};

use super::mem::{MemPort, MEM_GSO_SEGMENTS};
pub(crate) use super::rx::RxBufs;
use super::sys::{MmsgBufs, OutMsg, TX_BATCH};
use crate::stats::Counters;

/// Index of the shard's member of the reuseport group.
pub(crate) const LISTEN: usize = 0;
/// Index of the shard's unshared client socket.
pub(crate) const CLIENT: usize = 1;

/// Capacity each transmit buffer starts with: one full-size datagram. Buffers that held a GSO
/// batch keep their larger capacity for the next one.
const TX_BUF_BYTES: usize = 1500;

/// One socket (UDP, or one end of an in-memory link) with its transmit queue and readiness
/// bookkeeping.
pub(crate) struct Sock {
    io: SockIo,
    /// Edge-triggered readiness not yet consumed by a `WouldBlock`.
    pub(crate) readable: bool,
    /// Connection slots waiting for this socket to become writable.
    pub(crate) waiters: Vec<u32>,
    tx: TxQueue,
    stats: Arc<Counters>,
}

/// What a [`Sock`] sends through and receives from.
enum SockIo {
    Udp(Udp),
    /// The direct backend's in-memory transport: never blocks, not registered with mio.
    Mem(MemPort),
}

/// A UDP socket with its quinn-udp state.
struct Udp {
    socket: mio::net::UdpSocket,
    state: UdpSocketState,
    mmsg: MmsgBufs,
    /// `false` once `sendmmsg` was refused with `EINVAL`/`EIO`: quinn-udp sends everything.
    mmsg_ok: bool,
    /// Where the socket is registered (a clone of the shard's registry) and under which token;
    /// `None` until [`Sock::register`].
    registry: Option<(mio::Registry, mio::Token)>,
    /// The registration includes writability (only while the queue is blocked).
    writable_interest: bool,
}

/// Queued transmits `entries[head..len]`; `entries` always holds `TX_BATCH` reusable buffers.
/// Invariant: when not blocked, `head == 0` (a flush either empties the queue or blocks it).
struct TxQueue {
    entries: Box<[TxEntry]>,
    head: usize,
    len: usize,
    blocked: bool,
}

struct TxEntry {
    buf: Vec<u8>,
    destination: SocketAddr,
    ecn: Option<EcnCodepoint>,
    /// `Some` only for a real GSO batch (more than one segment).
    segment_size: Option<usize>,
    src_ip: Option<IpAddr>,
}

impl TxEntry {
    fn datagrams(&self) -> u64 {
        self.segment_size
            .map_or(1, |s| self.buf.len().div_ceil(s) as u64)
    }

    fn transmit(&self) -> Transmit<'_> {
        Transmit {
            destination: self.destination,
            ecn: self.ecn,
            contents: &self.buf,
            segment_size: self.segment_size,
            src_ip: self.src_ip,
        }
    }
}

impl Sock {
    /// Wraps a non-blocking std socket; `stats` are the owning shard's counters.
    pub(crate) fn new(socket: std::net::UdpSocket, stats: Arc<Counters>) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        let udp = Udp {
            socket: mio::net::UdpSocket::from_std(socket),
            state,
            mmsg: MmsgBufs::new(),
            mmsg_ok: true,
            registry: None,
            writable_interest: false,
        };
        Ok(Self::with_io(SockIo::Udp(udp), stats))
    }

    /// One end of an in-memory link (the direct backend's memory transport).
    pub(crate) fn memory(port: MemPort, stats: Arc<Counters>) -> Self {
        Self::with_io(SockIo::Mem(port), stats)
    }

    fn with_io(io: SockIo, stats: Arc<Counters>) -> Self {
        let entries = (0..TX_BATCH)
            .map(|_| TxEntry {
                buf: Vec::with_capacity(TX_BUF_BYTES),
                destination: SocketAddr::from(([0, 0, 0, 0], 0)),
                ecn: None,
                segment_size: None,
                src_ip: None,
            })
            .collect();
        Self {
            io,
            readable: true,
            waiters: Vec::new(),
            tx: TxQueue {
                entries,
                head: 0,
                len: 0,
                blocked: false,
            },
            stats,
        }
    }

    /// Registers a UDP socket with `registry` for readability (writability is added while the
    /// socket is blocked); a memory port has nothing to register.
    pub(crate) fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
    ) -> io::Result<()> {
        match &mut self.io {
            SockIo::Udp(u) => {
                registry.register(&mut u.socket, token, mio::Interest::READABLE)?;
                u.registry = Some((registry.try_clone()?, token));
                u.writable_interest = false;
                Ok(())
            }
            SockIo::Mem(_) => Ok(()),
        }
    }

    /// The UDP socket's descriptor (`None` for a memory port).
    pub(crate) fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        match &self.io {
            SockIo::Udp(u) => Some(u.socket.as_raw_fd()),
            SockIo::Mem(_) => None,
        }
    }

    /// Marks a UDP socket readable, so the next turn reads it until `WouldBlock` (a turn given
    /// without a readiness event, by a helping thread).
    pub(crate) fn assume_readable(&mut self) {
        if let SockIo::Udp(_) = &self.io {
            self.readable = true;
        }
    }

    /// Whether this is a memory port with datagrams waiting.
    pub(crate) fn has_memory_input(&self) -> bool {
        matches!(&self.io, SockIo::Mem(m) if m.has_inbound())
    }

    /// For a memory port, which has no readiness events: readable while datagrams wait.
    pub(crate) fn refresh_readable(&mut self) {
        if let SockIo::Mem(m) = &self.io {
            self.readable = m.has_inbound();
        }
    }

    /// GSO segments per send (1 without GSO).
    pub(crate) fn max_gso_segments(&self) -> usize {
        match &self.io {
            SockIo::Udp(u) => u.state.max_gso_segments().max(1),
            SockIo::Mem(_) => MEM_GSO_SEGMENTS,
        }
    }

    /// GRO segments per receive (1 without GRO).
    pub(crate) fn gro_segments(&self) -> usize {
        match &self.io {
            SockIo::Udp(u) => u.state.gro_segments().max(1),
            SockIo::Mem(_) => 1,
        }
    }

    /// Whether unsent transmits wait for the socket to become writable.
    pub(crate) fn is_blocked(&self) -> bool {
        self.tx.blocked
    }

    /// Whether a receive that returned `n` messages emptied the socket, so the next read can
    /// wait for the next readiness event. For UDP, a `recvmmsg` that returns fewer messages than
    /// it had buffers for stopped at `EAGAIN` (an unconnected socket without `IP_RECVERR` has no
    /// other error to stop at), and every datagram queued after that raises a new edge. Why:
    /// the draining read that only returned `EAGAIN` was a quarter of a shard's syscalls. A
    /// memory port reports its readiness itself ([`Sock::refresh_readable`]): never.
    pub(crate) fn drained_by(&self, n: usize) -> bool {
        matches!(self.io, SockIo::Udp(_)) && n < BATCH_SIZE
    }

    /// One `recvmmsg` into `rx`; returns the number of messages (each maybe GRO-coalesced).
    pub(crate) fn recv(&self, rx: &mut RxBufs) -> io::Result<usize> {
        let u = match &self.io {
            SockIo::Udp(u) => u,
            SockIo::Mem(m) => return m.recv(rx),
        };
        let stride = rx.buf_len;
        let mut iovs: [IoSliceMut<'_>; BATCH_SIZE] = {
            let mut chunks = rx.bufs.chunks_mut(stride);
            std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()))
        };
        u.state
            .recv(UdpSockRef::from(&u.socket), &mut iovs, &mut rx.metas)
    }

    /// Makes room for one more transmit (flushing a full queue); `false` if the socket is
    /// blocked and the caller must wait for it.
    pub(crate) fn reserve(&mut self) -> bool {
        if self.tx.len == TX_BATCH {
            self.flush();
        }
        !self.tx.blocked
    }

    /// The buffer for the next transmit, empty. Only after [`Sock::reserve`] returned `true`.
    pub(crate) fn next_buf(&mut self) -> &mut Vec<u8> {
        let buf = &mut self.tx.entries[self.tx.len].buf;
        buf.clear();
        buf
    }

    /// Queues the transmit just written into [`Sock::next_buf`].
    pub(crate) fn commit(&mut self, t: &quinn_proto::Transmit) {
        let e = &mut self.tx.entries[self.tx.len];
        e.buf.truncate(t.size);
        e.destination = t.destination;
        e.ecn = t.ecn.and_then(|e| EcnCodepoint::from_bits(e as u8));
        e.segment_size = t.segment_size.filter(|&s| s > 0 && t.size > s);
        e.src_ip = t.src_ip;
        self.tx.len += 1;
    }

    /// Queues a copy of `contents` (an endpoint response); `false` if the socket is blocked and
    /// the response was not queued.
    pub(crate) fn queue_copy(&mut self, t: &quinn_proto::Transmit, contents: &[u8]) -> bool {
        if !self.reserve() {
            return false;
        }
        self.next_buf().extend_from_slice(contents);
        self.commit(t);
        true
    }

    /// Sends queued transmits until the queue is empty (`true`) or the kernel would block
    /// (`false`; the rest stays queued and the socket is blocked).
    pub(crate) fn flush(&mut self) -> bool {
        match &mut self.io {
            SockIo::Udp(u) => u.flush(&mut self.tx, &self.stats),
            SockIo::Mem(m) => {
                let q = &mut self.tx;
                for e in &q.entries[q.head..q.len] {
                    m.send(e.destination, &e.buf, e.segment_size, &self.stats);
                }
                q.head = 0;
                q.len = 0;
                true
            }
        }
    }
}

impl Udp {
    /// [`Sock::flush`] for a UDP socket: [`Udp::send_queue`], then writability interest exactly
    /// while the queue is blocked.
    fn flush(&mut self, q: &mut TxQueue, stats: &Counters) -> bool {
        let done = self.send_queue(q, stats);
        self.want_writable(!done);
        done
    }

    /// Adds or removes writability from the registration. Adding it while the socket is already
    /// writable raises an event at once (epoll re-checks readiness on `EPOLL_CTL_MOD`), so a
    /// buffer freed between the `WouldBlock` and this call is not missed.
    fn want_writable(&mut self, on: bool) {
        if self.writable_interest == on {
            return;
        }
        let Some((registry, token)) = &self.registry else {
            return;
        };
        let interest = if on {
            mio::Interest::READABLE | mio::Interest::WRITABLE
        } else {
            mio::Interest::READABLE
        };
        match registry.reregister(&mut self.socket, *token, interest) {
            Ok(()) => self.writable_interest = on,
            // the blocked queue is retried every iteration; timers keep the shard turning
            Err(e) => tracing::warn!(error = %e, "cannot change the socket's epoll interest"),
        }
    }

    /// Sends queued transmits until the queue is empty (`true`) or the kernel would block.
    /// Normally one `sendmmsg` takes the whole queue, GSO batches included.
    fn send_queue(&mut self, q: &mut TxQueue, stats: &Counters) -> bool {
        while q.head < q.len {
            if !self.mmsg_ok {
                match self.send_one(&q.entries[q.head], stats) {
                    Err(()) => {
                        q.blocked = true;
                        return false;
                    }
                    Ok(_) => q.head += 1,
                }
                continue;
            }
            let run = q.entries[q.head..q.len].iter().map(|e| OutMsg {
                destination: e.destination,
                ecn: e.ecn.map_or(0, |c| c as u8),
                src_ip: e.src_ip,
                // a segment is at most one UDP payload (`commit` keeps only real batches)
                segment_size: e.segment_size.map(|s| s as u16),
                contents: &e.buf,
            });
            stats.send_calls.fetch_add(1, Relaxed);
            match self.mmsg.send(self.socket.as_raw_fd(), run) {
                Ok(n) => {
                    let sent = q.entries[q.head..q.head + n].iter().map(TxEntry::datagrams);
                    stats.datagrams_out.fetch_add(sent.sum(), Relaxed);
                    q.head += n;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    q.blocked = true;
                    return false;
                }
                Err(err) if matches!(err.raw_os_error(), Some(libc::EINVAL | libc::EIO)) => {
                    // our control messages, or this one transmit (e.g. port 0, or GSO the
                    // device cannot do)? quinn-udp, with its fallbacks (it turns GSO off for the
                    // socket), tells: if it can send it, stop using sendmmsg on this socket
                    match self.send_one(&q.entries[q.head], stats) {
                        Err(()) => {
                            q.blocked = true;
                            return false;
                        }
                        Ok(true) => {
                            tracing::info!(error = %err, "sendmmsg refused; using quinn-udp");
                            self.mmsg_ok = false;
                        }
                        Ok(false) => {}
                    }
                    q.head += 1;
                }
                Err(err) => {
                    // that one transmit failed (e.g. EMSGSIZE for an MTU probe): drop it
                    let e = &q.entries[q.head];
                    send_failed(stats, &err, e.destination, e.datagrams());
                    q.head += 1;
                }
            }
        }
        q.head = 0;
        q.len = 0;
        q.blocked = false;
        true
    }

    /// Sends one transmit through quinn-udp: `Ok(true)` sent, `Ok(false)` failed and dropped
    /// (counted), `Err(())` the kernel would block.
    fn send_one(&mut self, e: &TxEntry, stats: &Counters) -> Result<bool, ()> {
        stats.send_calls.fetch_add(1, Relaxed);
        match self
            .state
            .try_send(UdpSockRef::from(&self.socket), &e.transmit())
        {
            Ok(()) => {
                stats.datagrams_out.fetch_add(e.datagrams(), Relaxed);
                Ok(true)
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Err(()),
            Err(err) => {
                send_failed(stats, &err, e.destination, e.datagrams());
                Ok(false)
            }
        }
    }
}

/// Counts a dropped transmit of `datagrams` (more than one: a GSO batch); logs it unless it is
/// the expected EMSGSIZE of a single MTU probe. A batch refused with EMSGSIZE is a bug (the
/// drive caps batches at one UDP datagram's size): warned.
fn send_failed(stats: &Counters, err: &io::Error, destination: SocketAddr, datagrams: u64) {
    stats.dropped_send_error.fetch_add(1, Relaxed);
    if err.raw_os_error() != Some(libc::EMSGSIZE) {
        tracing::debug!(error = %err, dest = %destination, "send failed");
    } else if datagrams > 1 {
        tracing::warn!(dest = %destination, datagrams, "GSO batch refused as too large");
    }
}

#[cfg(test)]
mod tests;
