//! The one preallocated packet pool shared by every pipeline stage, and its sizing.
//!
//! This module owns [`Packet`] (a fixed-size buffer plus its metadata), [`Pool`] (the lock-free
//! free list, filled once at start) and [`Sizes`] (the queue and pool sizes computed with the
//! SCION border router's formulas). A packet is moved by ownership (`Box<Packet>`) from the
//! receiver through the processor and forwarder queues and back to the pool; nothing on the hot
//! path allocates.
//!
//! # Sizing
//! ```text
//! processor_queue = max(ceil(receivers * read_batch / processors), read_batch)
//! forward_queue   = processor_queue
//! slow_queue      = read_batch
//! pool = receivers * read_batch + processors * (processor_queue + 1)
//!      + forwarders * (forward_queue + write_batch) + slow_path * (slow_queue + 1)
//! ```
//! The last term is ours: the router's slow path copies packets, ours holds pool buffers.
//!
//! The inline pipeline (no processors or forwarders; each receiver routes and sends its own
//! batch, and takes the slow path's routed packets from a queue of `forward_queue = read_batch`):
//! ```text
//! pool = receivers * (read_batch + write_batch + forward_queue) + slow_path * (slow_queue + 1)
//! ```
//! Per worker: the buffers its reader holds plus those it read into the send batch (together at
//! most `read_batch`), up to `write_batch` it drained from its queue into that batch, and a full
//! queue behind them.

use std::net::SocketAddr;

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

/// Room before the payload so DSR can prepend an inner IPv6 + UDP header in place.
pub const HEADROOM: usize = 48;
/// Largest datagram accepted. QUIC datagrams are at most 1500 bytes on common paths; a longer
/// one is truncated by the kernel (`MSG_TRUNC`) and dropped as oversize.
pub const MAX_PAYLOAD: usize = 2000;
/// Bytes of one buffer.
pub const BUF_LEN: usize = HEADROOM + MAX_PAYLOAD;

/// Queue and pool sizes, computed from the thread counts and batch sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Sizes {
    /// Capacity of each processor's queue.
    pub processor_queue: usize,
    /// Capacity of each forwarder's queue.
    pub forward_queue: usize,
    /// Capacity of each slow-path worker's queue.
    pub slow_queue: usize,
    /// Buffers in the pool: the most packets that can be in flight at once.
    pub pool: usize,
}

impl Sizes {
    /// Computes the sizes (see the module doc). Every argument is at least 1 in a valid config;
    /// zeros are treated as 1.
    pub fn compute(
        receivers: usize,
        processors: usize,
        forwarders: usize,
        slow_path: usize,
        read_batch: usize,
        write_batch: usize,
    ) -> Self {
        let [r, p, f, rb, wb] =
            [receivers, processors, forwarders, read_batch, write_batch].map(|v| v.max(1));
        let processor_queue = (r * rb).div_ceil(p).max(rb);
        let forward_queue = processor_queue;
        let slow_queue = rb;
        let pool = r * rb
            + p * (processor_queue + 1)
            + f * (forward_queue + wb)
            + slow_path * (slow_queue + 1);
        Self {
            processor_queue,
            forward_queue,
            slow_queue,
            pool,
        }
    }

    /// Computes the sizes of the inline pipeline (see the module doc); `processor_queue` is 0.
    pub fn compute_inline(
        receivers: usize,
        slow_path: usize,
        read_batch: usize,
        write_batch: usize,
    ) -> Self {
        let [r, rb, wb] = [receivers, read_batch, write_batch].map(|v| v.max(1));
        Self {
            processor_queue: 0,
            forward_queue: rb,
            slow_queue: rb,
            pool: r * (rb + wb + rb) + slow_path * (rb + 1),
        }
    }

    /// The sizes for a configuration.
    pub fn for_config(c: &crate::LbConfig) -> Self {
        match c.pipeline {
            crate::Pipeline::Staged => Self::compute(
                c.receivers,
                c.processors,
                c.forwarders,
                c.slow_path,
                c.read_batch,
                c.write_batch,
            ),
            crate::Pipeline::Inline => {
                Self::compute_inline(c.receivers, c.slow_path, c.read_batch, c.write_batch)
            }
        }
    }
}

/// One datagram buffer and what the stages learned about it.
pub struct Packet {
    buf: [u8; BUF_LEN],
    len: usize,
    /// Who sent it (the client).
    pub client: SocketAddr,
    /// Where the processor decided to send it, once routed.
    pub target: Option<SocketAddr>,
    /// Inline pipeline: the worker that read it, which also sends it (its proxy sessions live
    /// there), even when the slow path routed it.
    pub worker: usize,
}

impl Packet {
    fn new() -> Box<Self> {
        Box::new(Self {
            buf: [0; BUF_LEN],
            len: 0,
            client: SocketAddr::from(([0, 0, 0, 0], 0)),
            target: None,
            worker: 0,
        })
    }

    /// The whole receive area (after the headroom), to read a datagram into.
    pub fn recv_area(&mut self) -> &mut [u8] {
        &mut self.buf[HEADROOM..]
    }

    /// Sets the payload length after a read. Panics if `len > MAX_PAYLOAD` (a caller bug).
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= MAX_PAYLOAD, "payload length {len} > {MAX_PAYLOAD}");
        self.len = len;
    }

    /// The datagram payload.
    pub fn payload(&self) -> &[u8] {
        &self.buf[HEADROOM..HEADROOM + self.len]
    }

    /// The headroom and the payload, to prepend a header of at most [`HEADROOM`] bytes.
    pub fn headroom_and_payload(&mut self) -> (&mut [u8; HEADROOM], &[u8]) {
        let (head, rest) = self.buf.split_at_mut(HEADROOM);
        let head: &mut [u8; HEADROOM] = head
            .try_into()
            .expect("split_at_mut(HEADROOM) yields HEADROOM bytes");
        (head, &rest[..self.len])
    }

    /// The payload with the `prefix_len` headroom bytes just before it (a prepended header).
    /// Panics if `prefix_len > HEADROOM` (a caller bug).
    pub fn with_prefix(&self, prefix_len: usize) -> &[u8] {
        &self.buf[HEADROOM - prefix_len..HEADROOM + self.len]
    }
}

/// The preallocated free list of packet buffers, shared by reference.
///
/// The free list is a bounded crossbeam channel (array flavour, lock-free `try_send`/`try_recv`);
/// the workspace carries crossbeam-channel but not crossbeam-queue's `ArrayQueue`.
pub struct Pool {
    tx: crossbeam_channel::Sender<Box<Packet>>,
    rx: crossbeam_channel::Receiver<Box<Packet>>,
    size: usize,
    misses: CachePadded<AtomicU64>,
}

impl Pool {
    /// Allocates `size` buffers, once.
    pub fn new(size: usize) -> Self {
        let (tx, rx) = crossbeam_channel::bounded(size.max(1));
        for _ in 0..size {
            // Cannot fail: the channel holds exactly `size` items.
            let _ = tx.try_send(Packet::new());
        }
        Self {
            tx,
            rx,
            size,
            misses: CachePadded::new(AtomicU64::new(0)),
        }
    }

    /// Takes a buffer, or `None` (counted) if every buffer is in flight.
    pub fn get(&self) -> Option<Box<Packet>> {
        let p = self.rx.try_recv().ok();
        if p.is_none() {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    /// Returns a buffer. A buffer that did not come from this pool is dropped if the pool is
    /// already full.
    pub fn put(&self, mut p: Box<Packet>) {
        p.len = 0;
        p.target = None;
        let _ = self.tx.try_send(p);
    }

    /// Buffers in the pool in total.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Buffers free right now.
    pub fn free(&self) -> usize {
        self.rx.len()
    }

    /// How often [`Pool::get`] found no buffer.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_hand_computed_values() {
        // 1 receiver, 1 processor, 1 forwarder, 1 slow, batches 256:
        // pq = max(ceil(256/1), 256) = 256; pool = 256 + 1*257 + 1*(256+256) + 1*257 = 1282
        let s = Sizes::compute(1, 1, 1, 1, 256, 256);
        assert_eq!(s.processor_queue, 256);
        assert_eq!(s.pool, 1282);
        // 4 receivers, 3 processors, 2 forwarders, 1 slow, rb 64, wb 32:
        // pq = max(ceil(256/3)=86, 64) = 86; pool = 256 + 3*87 + 2*(86+32) + 65 = 818
        let s = Sizes::compute(4, 3, 2, 1, 64, 32);
        assert_eq!(s.processor_queue, 86);
        assert_eq!(s.forward_queue, 86);
        assert_eq!(s.pool, 256 + 261 + 236 + 65);
        // more processors than receivers: the queue never drops below one read batch.
        // pq = max(ceil(1*10/8)=2, 10) = 10; pool = 10 + 8*11 + 1*(10+5) + 2*11 = 135
        let s = Sizes::compute(1, 8, 1, 2, 10, 5);
        assert_eq!(s.processor_queue, 10);
        assert_eq!(s.pool, 135);
        // inline, 2 receivers, 1 slow, rb 64, wb 32: pool = 2*(64+32+64) + 65 = 385
        let s = Sizes::compute_inline(2, 1, 64, 32);
        assert_eq!((s.processor_queue, s.forward_queue, s.pool), (0, 64, 385));
    }

    #[test]
    fn pool_hands_out_each_buffer_once() {
        let pool = Pool::new(3);
        let a: Vec<_> = (0..3).map(|_| pool.get().unwrap()).collect();
        assert!(pool.get().is_none());
        assert_eq!(pool.misses(), 1);
        assert_eq!(pool.free(), 0);
        for p in a {
            pool.put(p);
        }
        assert_eq!(pool.free(), 3);
        pool.put(Packet::new()); // a stray buffer: dropped, the pool stays bounded
        assert_eq!(pool.free(), 3);
    }

    #[test]
    fn packet_payload_and_prefix() {
        let pool = Pool::new(1);
        let mut p = pool.get().unwrap();
        p.recv_area()[..3].copy_from_slice(b"abc");
        p.set_len(3);
        assert_eq!(p.payload(), b"abc");
        let (head, payload) = p.headroom_and_payload();
        head[HEADROOM - 2..].copy_from_slice(b"xy");
        assert_eq!(payload, b"abc");
        assert_eq!(p.with_prefix(2), b"xyabc");
    }
}
