//! The inline (run-to-completion) pipeline: each worker reads, routes and sends its own batches.
//!
//! This module owns [`Source`], the receive side of an inline worker, and [`start`]. A worker
//! is a [`Forwarder`] with a `Source`: its poll also watches the worker's own listen socket (one
//! of an `SO_REUSEPORT` group when there are several workers), and each readable batch is read
//! into pool buffers, routed under one router lock and appended to the forwarder's send batch.
//! A datagram thus crosses no queue and no thread on its way through. Malformed and unusual
//! datagrams still go to the slow-path workers, which hand routed ones back through the queue and
//! waker of the worker that read them (so a client's proxy sessions all live in one worker).
//!
//! Why: on a machine with fewer cores than stage threads, each hop between stages is a wake-up
//! and a context switch, which cost more than the routing itself (`scripts/bench-lb`).
//!
//! # Implementation notes
//! The socket is non-blocking and readiness is edge-triggered: after a read that returned fewer
//! datagrams than a batch the queue was empty, so the next read waits for a new event; after a
//! full batch [`Source::more`] is set and the worker reads again without sleeping.

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use crossbeam_channel::{bounded, Sender};

use super::forward::Forwarder;
use super::read::Reader;
use super::stats::add;
use super::{expire, io_err, route_packet, Error, Forwarders, Lb, Shared};
use crate::config::LbConfig;
use crate::pool::Packet;

/// An inline worker's listen socket and read state.
pub(super) struct Source {
    sock: UdpSocket,
    reader: Reader,
    slow: Sender<Box<Packet>>,
    batch: usize,
    /// This worker's index, stamped on every packet it reads.
    worker: usize,
    /// The socket may hold datagrams no event will announce: read before sleeping.
    pub(super) more: bool,
}

impl Source {
    fn new(
        sock: UdpSocket,
        slow: Sender<Box<Packet>>,
        batch: usize,
        worker: usize,
    ) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(Self {
            sock,
            reader: Reader::new(batch),
            slow,
            batch,
            worker,
            more: true,
        })
    }

    pub(super) fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Reads one batch and appends its routed packets to `out`; the rest went to the slow path
    /// or were dropped (counted).
    #[allow(clippy::vec_box)]
    pub(super) fn read(&mut self, s: &Shared, now: Instant, out: &mut Vec<Box<Packet>>) {
        let c = &s.counters;
        // Taken at the first packet, held for the batch.
        let mut router = None;
        let (slow, worker) = (&self.slow, self.worker);
        let read = self.reader.read(s, &self.sock, |mut p| {
            p.worker = worker;
            let r = router.get_or_insert_with(|| s.router());
            if let Some(p) = route_packet(s, r, now, p, slow) {
                add(&c.processors.routed, 1);
                out.push(p);
            }
        });
        if let Some(r) = router.as_mut() {
            expire(r, now);
        }
        self.more = match read {
            Ok(n) => n == self.batch,
            Err(e) => {
                if e.kind() != io::ErrorKind::WouldBlock {
                    add(&c.receivers.recv_errors, 1);
                }
                false
            }
        };
    }

    /// Gives the held buffers back to the pool (at thread exit).
    pub(super) fn release(&mut self, s: &Shared) {
        self.reader.release(s);
    }
}

/// Binds one more socket per extra worker and starts the workers; returns them as the
/// forwarders the slow path hands routed packets to.
pub(super) fn start(
    lb: &mut Lb,
    config: &LbConfig,
    socket: UdpSocket,
    slow_tx: &Sender<Box<Packet>>,
) -> Result<Forwarders, Error> {
    let (shared, sizes) = (lb.shared.clone(), lb.sizes);
    let mut sockets = vec![socket];
    for _ in 1..config.receivers {
        sockets.push(super::bind_listen(shared.local, true)?);
    }
    let mut tx = Vec::new();
    for (i, sock) in sockets.into_iter().enumerate() {
        let (t, rx) = bounded(sizes.forward_queue);
        let source = Source::new(
            sock.try_clone().map_err(io_err("clone listen socket"))?,
            slow_tx.clone(),
            config.read_batch,
            i,
        )
        .map_err(io_err("listen socket"))?;
        let f = Forwarder::new(config, shared.clone(), &sock, rx, Some(source))?;
        lb.wakers.push(f.waker());
        tx.push(t);
        lb.spawn(format!("lb-inline-{i}"), move || f.run())?;
    }
    Ok(Forwarders {
        tx,
        wakers: lb.wakers.clone(),
        by_worker: true,
    })
}
