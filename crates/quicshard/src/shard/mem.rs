//! The in-memory datagram transport of the direct backend: two bounded queues standing in for a
//! UDP path between two engines in one process (tests, examples, simulations). Each end is a
//! [`MemPort`] with its own fake address; a [`Sock`](super::io::Sock) wraps it like a UDP
//! socket. Not pollable: the driver ticks both ends (see `crate::direct`).
//!
//! A GSO batch is split into its datagrams on the way in, as the kernel would. Datagrams to any
//! address but the peer's, and datagrams arriving at a full queue, are dropped and counted
//! (`dropped_send_error`, `dropped_link_full`). Buffers are recycled through a free list, so a
//! steady flow allocates nothing.
//!
//! A [`network`] port has no fixed peer: it sends to any address, and the other end is a
//! simulated network (`crate::testing`) that takes each datagram with its destination
//! ([`MemPort::take`]) and delivers datagrams from any source ([`MemPort::deliver`]).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use ranked_lock::{Mutex, MutexGuard};

use quinn_udp::{RecvMeta, BATCH_SIZE};

use super::io::RxBufs;
use crate::stats::Counters;

/// Datagrams queued per direction. Why: a few congestion windows of full-size datagrams (1024 ×
/// 1.2 kB ≈ 1.2 MB), so a bulk transfer between two ticks is not cut short, while memory stays
/// bounded; beyond it the link drops like a full router queue.
pub(crate) const LINK_CAPACITY: usize = 1024;

/// GSO segments a memory port accepts per transmit. Why: exercises the engine's GSO path (one
/// buffer, many datagrams) as a real socket would, with the split done here.
pub(crate) const MEM_GSO_SEGMENTS: usize = 10;

/// One direction of a link.
struct Queue {
    state: Mutex<QueueState>,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            state: Mutex::new(crate::ranks::MEM_LINK, QueueState::default()),
        }
    }
}

#[derive(Default)]
struct QueueState {
    /// `(from, to, datagram)`.
    items: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Buffers of delivered datagrams, reused by the next sends.
    free: Vec<Vec<u8>>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock()
    }
}

/// One end of an in-memory link.
pub(crate) struct MemPort {
    local: SocketAddr,
    /// `None`: a [`network`] port, which sends anywhere.
    peer: Option<SocketAddr>,
    inbound: Arc<Queue>,
    outbound: Arc<Queue>,
}

/// A link between `a` and `b`: the first port has address `a` and reaches `b`, the second the
/// other way round.
pub(crate) fn link(a: SocketAddr, b: SocketAddr) -> (MemPort, MemPort) {
    let (ab, ba) = (Arc::new(Queue::default()), Arc::new(Queue::default()));
    (
        MemPort {
            local: a,
            peer: Some(b),
            inbound: ba.clone(),
            outbound: ab.clone(),
        },
        MemPort {
            local: b,
            peer: Some(a),
            inbound: ab,
            outbound: ba,
        },
    )
}

/// A port at `local` that sends to any address, and the network's end of it (see the module
/// docs).
pub(crate) fn network(local: SocketAddr) -> (MemPort, MemPort) {
    let (mut port, mut net) = link(local, local);
    port.peer = None;
    net.peer = None;
    (port, net)
}

impl MemPort {
    /// This end's address.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Whether datagrams wait to be received.
    pub(crate) fn has_inbound(&self) -> bool {
        !self.inbound.lock().items.is_empty()
    }

    /// Moves up to `BATCH_SIZE` waiting datagrams into `rx` (one per message); `WouldBlock` when
    /// none wait.
    pub(crate) fn recv(&self, rx: &mut RxBufs) -> io::Result<usize> {
        let mut q = self.inbound.lock();
        let mut n = 0;
        while n < BATCH_SIZE {
            let Some((from, _, data)) = q.items.pop_front() else {
                break;
            };
            let buf = rx.buf_mut(n);
            let len = data.len().min(buf.len());
            buf[..len].copy_from_slice(&data[..len]);
            let meta = &mut rx.metas[n];
            *meta = RecvMeta::default();
            meta.addr = from;
            meta.len = len;
            meta.stride = len;
            meta.dst_ip = Some(self.local.ip());
            q.free.push(data);
            n += 1;
        }
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Sends `contents` (a GSO batch of `segment_size` datagrams, or one) to `destination`.
    pub(crate) fn send(
        &self,
        destination: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
        stats: &Counters,
    ) {
        let seg = segment_size.unwrap_or(contents.len()).max(1);
        stats.send_calls.fetch_add(1, Relaxed);
        if self.peer.is_some_and(|p| p != destination) {
            // like an unreachable address: the datagrams are lost
            let n = contents.len().div_ceil(seg) as u64;
            stats.dropped_send_error.fetch_add(n.max(1), Relaxed);
            return;
        }
        let mut q = self.outbound.lock();
        for d in contents.chunks(seg) {
            if q.items.len() >= LINK_CAPACITY {
                stats.dropped_link_full.fetch_add(1, Relaxed);
                continue;
            }
            let mut buf = q.free.pop().unwrap_or_default();
            buf.clear();
            buf.extend_from_slice(d);
            q.items.push_back((self.local, destination, buf));
            stats.datagrams_out.fetch_add(1, Relaxed);
        }
    }

    /// The network's end: takes the oldest datagram the port sent, copied into `out`; returns
    /// its source and destination.
    pub(crate) fn take(&self, out: &mut Vec<u8>) -> Option<(SocketAddr, SocketAddr)> {
        let mut q = self.inbound.lock();
        let (from, to, data) = q.items.pop_front()?;
        out.clear();
        out.extend_from_slice(&data);
        q.free.push(data);
        Some((from, to))
    }

    /// The network's end: delivers `data` from `from` to the port; `false` if its queue is full
    /// (the datagram is dropped).
    pub(crate) fn deliver(&self, from: SocketAddr, data: &[u8]) -> bool {
        let mut q = self.outbound.lock();
        if q.items.len() >= LINK_CAPACITY {
            return false;
        }
        let mut buf = q.free.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(data);
        q.items.push_back((from, self.local, buf));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> (SocketAddr, SocketAddr) {
        (
            "192.0.2.1:1".parse().unwrap(),
            "192.0.2.2:2".parse().unwrap(),
        )
    }

    #[test]
    fn splits_gso_batches_and_keeps_order() {
        let (a, b) = addrs();
        let (pa, pb) = link(a, b);
        let stats = Counters::default();
        pa.send(b, b"aaaabbbbcc", Some(4), &stats);
        pa.send(b, b"d", None, &stats);
        let mut rx = RxBufs::new(1);
        assert_eq!(pb.recv(&mut rx).unwrap(), 4);
        let got: Vec<&[u8]> = (0..4).map(|i| rx.message(i)).collect();
        assert_eq!(got, [&b"aaaa"[..], b"bbbb", b"cc", b"d"]);
        assert!((0..4).all(|i| rx.metas[i].addr == a));
        assert_eq!(
            pb.recv(&mut rx).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert!(!pa.has_inbound(), "nothing went the other way");
        assert_eq!(stats.snapshot().datagrams_out, 4);
    }

    #[test]
    fn a_full_queue_and_a_wrong_address_drop_and_count() {
        let (a, b) = addrs();
        let (pa, pb) = link(a, b);
        let stats = Counters::default();
        for i in 0..LINK_CAPACITY + 5 {
            pa.send(b, &(i as u32).to_be_bytes(), None, &stats);
        }
        pa.send("192.0.2.9:9".parse().unwrap(), b"lost", None, &stats);
        let s = stats.snapshot();
        assert_eq!(s.dropped_link_full, 5);
        assert_eq!(s.dropped_send_error, 1);
        assert_eq!(s.datagrams_out, LINK_CAPACITY as u64);
        // the first LINK_CAPACITY arrive, in order
        let mut rx = RxBufs::new(1);
        let mut next = 0u32;
        while let Ok(n) = pb.recv(&mut rx) {
            for i in 0..n {
                assert_eq!(rx.message(i), next.to_be_bytes());
                next += 1;
            }
        }
        assert_eq!(next as usize, LINK_CAPACITY);
    }

    #[test]
    fn a_network_port_sends_anywhere_and_receives_from_anyone() {
        let (a, b) = addrs();
        let c: SocketAddr = "192.0.2.3:3".parse().unwrap();
        let (port, net) = network(a);
        let stats = Counters::default();
        port.send(b, b"to b", None, &stats);
        port.send(c, b"to c", None, &stats);
        let mut out = Vec::new();
        assert_eq!(net.take(&mut out), Some((a, b)));
        assert_eq!(out, b"to b");
        assert_eq!(net.take(&mut out), Some((a, c)));
        assert_eq!(net.take(&mut out), None);
        assert!(net.deliver(c, b"from c"));
        let mut rx = RxBufs::new(1);
        assert_eq!(port.recv(&mut rx).unwrap(), 1);
        assert_eq!((rx.message(0), rx.metas[0].addr), (&b"from c"[..], c));
        assert_eq!(stats.snapshot().dropped_send_error, 0);
    }
}
