//! Batched reads from a listen socket into pool buffers, shared by both pipelines.
//!
//! This module owns [`Reader`]: the buffers a receiving thread holds for its next `recvmmsg`
//! (`read_batch` of them, as the pool's sizing formulas assume) and the scratch space of the
//! batched call. A staged receiver hands each accepted packet to a processor queue; an inline
//! worker routes it on the spot. Both count what they read and drop what the pool or the
//! kernel made unusable, here, the same way.

use std::io;
use std::net::UdpSocket;

use super::stats::add;
use super::{accept, Shared};
use crate::pool::Packet;
use quicshard_udp::{BatchIo, Received};

/// A receiving thread's read state.
pub(super) struct Reader {
    io: BatchIo,
    /// Buffers for the next read (boxed: pool buffers move by pointer).
    #[allow(clippy::vec_box)]
    held: Vec<Box<Packet>>,
    got: Vec<Received>,
    batch: usize,
}

impl Reader {
    pub(super) fn new(batch: usize) -> Self {
        Self {
            io: BatchIo::new(batch),
            held: Vec::with_capacity(batch),
            got: Vec::with_capacity(batch),
            batch,
        }
    }

    /// Reads up to one batch (blocking for the first datagram only if `sock` is blocking) and
    /// passes each usable datagram to `each`. Returns how many datagrams were read: fewer than
    /// a batch means the socket's queue was empty when the call returned.
    ///
    /// With the pool empty, reads one datagram into a scratch buffer and drops it (counted), so
    /// the socket keeps draining.
    pub(super) fn read(
        &mut self,
        s: &Shared,
        sock: &UdpSocket,
        mut each: impl FnMut(Box<Packet>),
    ) -> io::Result<usize> {
        let c = &s.counters.receivers;
        while self.held.len() < self.batch {
            match s.pool.get() {
                Some(p) => self.held.push(p),
                None => break,
            }
        }
        if self.held.is_empty() {
            let mut scratch = [0u8; 64];
            sock.recv_from(&mut scratch)?;
            add(&c.received, 1);
            add(&c.dropped_pool_empty, 1);
            return Ok(1);
        }
        self.got.clear();
        self.io.recv(
            sock,
            self.held.iter_mut().map(|p| p.recv_area()),
            &mut self.got,
        )?;
        add(&c.received, self.got.len() as u64);
        for (p, r) in self.held.drain(..self.got.len()).zip(&self.got) {
            if let Some(p) = accept(s, p, r) {
                each(p);
            }
        }
        Ok(self.got.len())
    }

    /// Gives the held buffers back to the pool (at thread exit).
    pub(super) fn release(&mut self, s: &Shared) {
        for p in self.held.drain(..) {
            s.pool.put(p);
        }
    }
}
