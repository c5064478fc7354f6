//! The staged pipeline's receivers and processors.
//!
//! This module owns the receiver and processor thread loops and [`Wake`], the processors'
//! batched wake-up. A receiver reads a batch ([`super::read::Reader`]), hashes each packet's
//! `(DCID, client address)` onto a processor queue ([`dispatch`]) and wakes each processor it
//! fed once; a processor routes a batch under one router lock and queues each packet for the
//! forwarder of its client.

use std::io;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use super::forward::Forwarder;
use super::read::Reader;
use super::stats::add;
use super::{expire, io_err, route_packet, Error, Forwarders, Lb, Shared, STOP_CHECK};
use crate::config::LbConfig;
use crate::parse::{self, classify, Path};
use crate::pool::Packet;
use crate::route::fnv1a;

/// Starts the forwarders, processors and receivers; returns the forwarders for the slow path.
pub(super) fn start(
    lb: &mut Lb,
    config: &LbConfig,
    socket: &UdpSocket,
    slow_tx: &Sender<Box<Packet>>,
) -> Result<Forwarders, Error> {
    let (shared, sizes) = (lb.shared.clone(), lb.sizes);
    let (proc_tx, proc_rx): (Vec<_>, Vec<_>) = (0..config.processors)
        .map(|_| bounded(sizes.processor_queue))
        .unzip();
    let mut fwd_tx = Vec::new();
    for i in 0..config.forwarders {
        let (tx, rx) = bounded(sizes.forward_queue);
        let f = Forwarder::new(config, shared.clone(), socket, rx, None)?;
        lb.wakers.push(f.waker());
        fwd_tx.push(tx);
        lb.spawn(format!("lb-fwd-{i}"), move || f.run())?;
    }
    let fwd = Forwarders {
        tx: fwd_tx,
        wakers: lb.wakers.clone(),
        by_worker: false,
    };
    let wakes: Arc<[Wake]> = (0..config.processors).map(|_| Wake::default()).collect();
    for (i, rx) in proc_rx.into_iter().enumerate() {
        let (s, fwd, slow) = (shared.clone(), fwd.clone(), slow_tx.clone());
        let batch = config.read_batch;
        let wakes = wakes.clone();
        lb.spawn(format!("lb-proc-{i}"), move || {
            let _ = wakes[i].thread.set(std::thread::current());
            processor(&s, &rx, &wakes[i], &fwd, &slow, batch)
        })?;
    }
    for i in 0..config.receivers {
        let sock = socket.try_clone().map_err(io_err("clone listen socket"))?;
        let (s, txs, slow) = (shared.clone(), proc_tx.clone(), slow_tx.clone());
        let batch = config.read_batch;
        let wakes = wakes.clone();
        lb.spawn(format!("lb-recv-{i}"), move || {
            receiver(&s, &sock, &txs, &wakes, &slow, batch)
        })?;
    }
    Ok(fwd)
}

/// How a processor sleeps and is woken: at most one wake-up per receiver batch, not one per
/// packet. Why: a processor blocked in the queue's own blocking receive is woken by every
/// `try_send`; with datagrams trickling in a few at a time, that is a context switch per packet,
/// which dominated the load balancer's CPU per packet (`scripts/bench-lb`).
///
/// The processor sets `sleeping`, looks at its queue once more, then parks; a receiver, after
/// dispatching a whole batch, unparks each processor it fed whose flag it flips from true to
/// false. Both flag operations are `SeqCst` read-modify-writes and `unpark` before `park` makes
/// the park return at once, so a packet queued before the receiver saw `sleeping == false` is
/// always seen by the processor's re-check.
#[derive(Default)]
struct Wake {
    sleeping: AtomicBool,
    thread: std::sync::OnceLock<std::thread::Thread>,
}

impl Wake {
    fn wake(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }

    /// Parks until woken or `STOP_CHECK` passed, unless `ready()` says there is work.
    fn sleep(&self, ready: impl Fn() -> bool) {
        self.sleeping.store(true, Ordering::SeqCst);
        if !ready() {
            std::thread::park_timeout(STOP_CHECK);
        }
        self.sleeping.store(false, Ordering::SeqCst);
    }
}

fn receiver(
    s: &Shared,
    sock: &UdpSocket,
    procs: &[Sender<Box<Packet>>],
    wakes: &[Wake],
    slow: &Sender<Box<Packet>>,
    batch: usize,
) {
    let c = &s.counters.receivers;
    let mut touched = vec![false; procs.len()];
    let mut reader = Reader::new(batch);
    while !s.stop.load(Ordering::Relaxed) {
        let read = reader.read(s, sock, |p| {
            if let Some(i) = dispatch(s, p, procs, slow) {
                touched[i] = true;
            }
        });
        if let Err(e) = read {
            if !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                add(&c.recv_errors, 1);
            }
        }
        for (i, t) in touched.iter_mut().enumerate() {
            if std::mem::take(t) {
                wakes[i].wake();
            }
        }
    }
    reader.release(s);
}

/// Hashes a received packet onto a processor queue, or the slow path if its header is
/// malformed or unusual. A full queue drops it (counted). Returns the processor it was queued
/// for (to be woken after the batch).
pub(super) fn dispatch(
    s: &Shared,
    p: Box<Packet>,
    procs: &[Sender<Box<Packet>>],
    slow: &Sender<Box<Packet>>,
) -> Option<usize> {
    let c = &s.counters.receivers;
    let hdr = parse::parse(p.payload(), |first| s.lens.get(first));
    let proc_index = match hdr.map(|h| (classify(&h), h.dcid())) {
        Ok((Path::Fast, dcid)) => {
            let mut b = [0; 18];
            let k = crate::route::addr_bytes(&p.client, &mut b);
            Some((fnv1a(s.seed, &[dcid, &b[..k]]) % procs.len() as u64) as usize)
        }
        _ => None,
    };
    let (q, ok, full) = match proc_index {
        Some(i) => (&procs[i], &c.to_processors, &c.dropped_processor_queue_full),
        None => (slow, &c.to_slow_path, &c.dropped_slow_queue_full),
    };
    match q.try_send(p) {
        Ok(()) => {
            add(ok, 1);
            proc_index
        }
        Err(TrySendError::Full(p) | TrySendError::Disconnected(p)) => {
            add(full, 1);
            s.pool.put(p);
            None
        }
    }
}

fn processor(
    s: &Shared,
    rx: &Receiver<Box<Packet>>,
    wake: &Wake,
    fwd: &Forwarders,
    slow: &Sender<Box<Packet>>,
    batch: usize,
) {
    let c = &s.counters.processors;
    let mut packets = Vec::with_capacity(batch);
    let mut touched = vec![false; fwd.tx.len()];
    while !s.stop.load(Ordering::Relaxed) {
        packets.extend(rx.try_iter().take(batch));
        if packets.is_empty() {
            wake.sleep(|| !rx.is_empty());
            continue;
        }
        let now = Instant::now();
        let mut router = s.router();
        for p in packets.drain(..) {
            let Some(p) = route_packet(s, &mut router, now, p, slow) else {
                continue;
            };
            match fwd.push(s.seed, p) {
                Ok(i) => {
                    add(&c.routed, 1);
                    touched[i] = true;
                }
                Err(p) => {
                    add(&c.dropped_forward_queue_full, 1);
                    s.pool.put(p);
                }
            }
        }
        expire(&mut router, now);
        drop(router);
        fwd.wake(&mut touched);
    }
}
