//! A shard's two UDP sockets and its I/O buffers: batched receive (recvmmsg + GRO) and segmented
//! send (GSO) through quinn-udp.
//!
//! - [`LISTEN`]: the shard's member of the `SO_REUSEPORT` group on the shared port;
//! - [`CLIENT`]: an unshared socket on an ephemeral port for connections this shard initiates
//!   (and for any peer that reaches the shard directly, e.g. a preferred address).
//!
//! Receive buffers are allocated once per shard and reused. Datagrams handed to quinn-proto are
//! copied into an arena `BytesMut` ([`Arena`]) and split off it, so a receive allocates only when
//! the arena's chunk is used up (about once per [`ARENA_CHUNK`] bytes), never per datagram.
//! A send that hits `WouldBlock` is parked in the socket's single pending slot; the connections
//! that wanted to send wait on the socket until it is writable again.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use bytes::BytesMut;
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState, BATCH_SIZE};

/// Index of the shard's member of the reuseport group.
pub(crate) const LISTEN: usize = 0;
/// Index of the shard's unshared client socket.
pub(crate) const CLIENT: usize = 1;

/// Bytes per arena chunk. Why: large enough that the allocation is amortised over hundreds of
/// datagrams, small enough that a few long-lived stream buffers pinning a chunk waste little.
pub(crate) const ARENA_CHUNK: usize = 1 << 20;

/// The shortest buffer per received message: one maximal UDP payload.
const MIN_RX_BUF: usize = 1 << 16;

/// Bytes per GRO segment we reserve room for.
const GRO_SEGMENT_BYTES: usize = 1500;

/// Result of one send attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Handed to the kernel (or parked as pending); the count of datagrams (GSO segments).
    Ok(usize),
    /// The socket is full; the transmit was parked and the caller must wait for writability.
    Parked(usize),
    /// Refused for another reason (counted and dropped: QUIC recovers from loss).
    Dropped,
}

/// One UDP socket with its quinn-udp state and readiness bookkeeping.
pub(crate) struct Sock {
    pub(crate) socket: mio::net::UdpSocket,
    state: UdpSocketState,
    /// Edge-triggered readiness not yet consumed by a `WouldBlock`.
    pub(crate) readable: bool,
    /// A parked transmit the kernel has not taken yet.
    pending: Option<Pending>,
    /// Connection slots waiting for this socket to become writable.
    pub(crate) waiters: Vec<u32>,
}

struct Pending {
    buf: Vec<u8>,
    destination: SocketAddr,
    ecn: Option<quinn_udp::EcnCodepoint>,
    segment_size: Option<usize>,
    src_ip: Option<std::net::IpAddr>,
}

impl Sock {
    /// Wraps a non-blocking std socket.
    pub(crate) fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        Ok(Self {
            socket: mio::net::UdpSocket::from_std(socket),
            state,
            readable: true,
            pending: None,
            waiters: Vec::new(),
        })
    }

    /// GSO segments per send (1 without GSO).
    pub(crate) fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments().max(1)
    }

    /// GRO segments per receive (1 without GRO).
    pub(crate) fn gro_segments(&self) -> usize {
        self.state.gro_segments().max(1)
    }

    /// Whether a parked transmit blocks further sends.
    pub(crate) fn is_blocked(&self) -> bool {
        self.pending.is_some()
    }

    /// One `recvmmsg` into `rx`; returns the number of messages (each maybe GRO-coalesced).
    pub(crate) fn recv(&self, rx: &mut RxBufs) -> io::Result<usize> {
        let stride = rx.buf_len;
        let mut iovs: [IoSliceMut<'_>; BATCH_SIZE] = {
            let mut chunks = rx.bufs.chunks_mut(stride);
            std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()))
        };
        self.state
            .recv(UdpSockRef::from(&self.socket), &mut iovs, &mut rx.metas)
    }

    /// Sends `contents` (one datagram or a GSO batch) to `t.destination`.
    pub(crate) fn send(&mut self, t: &quinn_proto::Transmit, contents: &[u8]) -> Sent {
        let datagrams = match t.segment_size {
            Some(s) if s > 0 => contents.len().div_ceil(s),
            _ => 1,
        };
        if self.pending.is_some() {
            return Sent::Dropped;
        }
        let ecn = t
            .ecn
            .and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8));
        let ut = Transmit {
            destination: t.destination,
            ecn,
            contents,
            segment_size: t.segment_size,
            src_ip: t.src_ip,
        };
        match self.state.try_send(UdpSockRef::from(&self.socket), &ut) {
            Ok(()) => Sent::Ok(datagrams),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.pending = Some(Pending {
                    buf: contents.to_vec(),
                    destination: t.destination,
                    ecn,
                    segment_size: t.segment_size,
                    src_ip: t.src_ip,
                });
                Sent::Parked(datagrams)
            }
            // EMSGSIZE is expected for MTU probes; anything else is logged at debug level
            Err(e) => {
                if e.raw_os_error() != Some(libc::EMSGSIZE) {
                    tracing::debug!(error = %e, dest = %t.destination, "send failed");
                }
                Sent::Dropped
            }
        }
    }

    /// Retries the parked transmit. `Ok(true)` when the socket is free again.
    pub(crate) fn flush_pending(&mut self) -> bool {
        let Some(p) = &self.pending else { return true };
        let ut = Transmit {
            destination: p.destination,
            ecn: p.ecn,
            contents: &p.buf,
            segment_size: p.segment_size,
            src_ip: p.src_ip,
        };
        match self.state.try_send(UdpSockRef::from(&self.socket), &ut) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            _ => {
                self.pending = None;
                true
            }
        }
    }
}

/// Per-shard receive buffers: `BATCH_SIZE` messages of `buf_len` bytes each, plus their metadata.
pub(crate) struct RxBufs {
    bufs: Vec<u8>,
    pub(crate) buf_len: usize,
    pub(crate) metas: [RecvMeta; BATCH_SIZE],
}

impl RxBufs {
    /// Buffers big enough for `gro_segments` coalesced datagrams per message.
    pub(crate) fn new(gro_segments: usize) -> Self {
        let buf_len = (gro_segments * GRO_SEGMENT_BYTES).max(MIN_RX_BUF);
        Self {
            bufs: vec![0; buf_len * BATCH_SIZE],
            buf_len,
            metas: [RecvMeta::default(); BATCH_SIZE],
        }
    }

    /// The bytes of message `i` (its first `metas[i].len` bytes).
    pub(crate) fn message(&self, i: usize) -> &[u8] {
        let start = i * self.buf_len;
        &self.bufs[start..start + self.metas[i].len.min(self.buf_len)]
    }
}

/// A bump allocator for datagrams handed to quinn-proto: copy in, split off, reuse the chunk
/// once every datagram split from it has been dropped.
#[derive(Default)]
pub(crate) struct Arena {
    chunk: BytesMut,
}

impl Arena {
    /// A `BytesMut` holding a copy of `data`.
    pub(crate) fn copy(&mut self, data: &[u8]) -> BytesMut {
        if self.chunk.capacity() < data.len() {
            // reclaims the old chunk in place when nothing references it any more
            self.chunk.reserve(ARENA_CHUNK.max(data.len()));
        }
        self.chunk.extend_from_slice(data);
        self.chunk.split_to(data.len())
    }
}
