//! Admission of new connections: a shard accepts at most [`Admission::per_turn`] new
//! connections per loop turn, after the turn's datagrams for established connections were
//! handled; the others wait in a bounded FIFO queue for later turns, and an Initial that finds
//! the queue full is refused (CONNECTION_REFUSED).
//!
//! # Why
//! Accepting is where a handshake's expensive part happens: quinn-proto feeds the ClientHello
//! to rustls, which computes the ECDHE share and signs the certificate verify message right
//! there (about 150 µs for a full handshake here). A burst of 100 Initials accepted in one turn
//! would hold every established connection of the shard for 15 ms. With a budget per turn,
//! established traffic waits for at most `per_turn` handshakes; new clients wait in the queue
//! instead (quinn-proto buffers their further datagrams with the pending `Incoming`), and a
//! flood beyond what the queue holds is refused at the cost of one stateless packet each.
//! Retry (`Builder::retry_threshold`) is decided on arrival, before the queue: it is cheap and
//! validates addresses before any state is kept.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;

use bytes::BytesMut;
use quinn_proto::Incoming;

use super::callback::Handler;
use super::io::Sock;
use super::{Core, Shard};
use crate::shared::Admission;

/// One new connection waiting to be accepted.
pub(crate) struct Waiting {
    incoming: Incoming,
    /// The socket its Initial arrived on.
    sock: usize,
    /// The Initial datagram's size (received bytes for the amplification limit).
    len: usize,
}

/// The shard's queue of new connections and this turn's budget.
pub(crate) struct AdmitQueue {
    waiting: VecDeque<Waiting>,
    /// New connections seen this turn (accepted at once or queued).
    pub(crate) this_turn: usize,
}

impl AdmitQueue {
    pub(crate) fn new(a: &Admission) -> Self {
        Self {
            waiting: VecDeque::with_capacity(a.queue + a.per_turn.max(1)),
            this_turn: 0,
        }
    }

    /// `data` itself, or, if it is a long-header Initial (version 1 type bits) that may end up
    /// waiting in the queue (this turn's budget is spent, or others wait already), a copy of it
    /// in its own allocation. Why: quinn-proto keeps a pending connection's first datagram (and
    /// buffers its next ones) until it is accepted, and a datagram split from the shard's arena
    /// pins the whole 1 MiB chunk it came from; a queue of such datagrams from a flood pinned
    /// hundreds of MiB. Copies are made only under handshake overload, at most one per queued
    /// connection and datagram quinn-proto buffers for it.
    pub(crate) fn detach_if_waiting(&self, data: BytesMut, a: &Admission) -> BytesMut {
        let initial = data.first().is_some_and(|&b| b & 0xf0 == 0xc0);
        if initial && (self.this_turn >= a.per_turn.max(1) || !self.waiting.is_empty()) {
            BytesMut::from(&data[..])
        } else {
            data
        }
    }

    /// New connections waiting for their turn.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

/// Refuses `incoming` with CONNECTION_REFUSED (counted) if the shard is stopping or at its
/// connection limit or memory budget (connections times one connection's bound); hands it back
/// otherwise. Checked when an Initial arrives and again when it is accepted.
pub(super) fn refuse_if_full(
    core: &mut Core,
    sock: &mut Sock,
    incoming: Incoming,
) -> Option<Incoming> {
    core.resp_buf.clear();
    let memory_full = core.conns.len() >= core.shared.memory.max_connections();
    if core.stopping.is_none() && core.conns.len() < core.shared.max_connections && !memory_full {
        return Some(incoming);
    }
    if core.stopping.is_none() {
        core.stats.connections_refused.fetch_add(1, Relaxed);
        if memory_full {
            core.stats.refused_memory.fetch_add(1, Relaxed);
        }
    }
    let t = core.endpoint.refuse(incoming, &mut core.resp_buf);
    send_response(sock, core, &t);
    None
}

impl<H: Handler> Shard<H> {
    /// A new Initial that passed the Retry and connection-limit checks: queued for the
    /// admission pass of this turn ([`Self::admit`]), or refused if the queue is full.
    pub(super) fn enqueue_incoming(&mut self, s: usize, incoming: Incoming, len: usize) {
        let limit = self.core.shared.admission;
        let q = &mut self.admit;
        q.this_turn += 1;
        // this turn's admission pass takes `per_turn` of them; at most `queue` wait beyond it
        if q.waiting.len() >= limit.queue + limit.per_turn.max(1) {
            let core = &mut self.core;
            core.stats.handshakes_refused.fetch_add(1, Relaxed);
            core.resp_buf.clear();
            let t = core.endpoint.refuse(incoming, &mut core.resp_buf);
            send_response(&mut self.socks[s], core, &t);
            return;
        }
        q.waiting.push_back(Waiting {
            incoming,
            sock: s,
            len,
        });
    }

    /// Accepts up to the per-turn budget of waiting connections, oldest first; those left wait
    /// for the next turn (counted as deferred). `false` if some are left.
    pub(super) fn admit(&mut self) -> bool {
        let per_turn = self.core.shared.admission.per_turn.max(1);
        for _ in 0..per_turn {
            let Some(w) = self.admit.waiting.pop_front() else {
                break;
            };
            self.accept(w.sock, w.incoming, w.len);
        }
        let left = self.admit.waiting.len();
        let stats = &self.core.stats;
        // the new connections of this turn that must wait for another
        let arrived = std::mem::take(&mut self.admit.this_turn);
        stats
            .handshakes_deferred
            .fetch_add(arrived.min(left) as u64, Relaxed);
        stats.handshakes_queued.store(left as u64, Relaxed);
        left == 0
    }

    /// Refuses every waiting connection (shutdown).
    pub(super) fn refuse_waiting(&mut self) {
        while let Some(w) = self.admit.waiting.pop_front() {
            let core = &mut self.core;
            core.resp_buf.clear();
            let t = core.endpoint.refuse(w.incoming, &mut core.resp_buf);
            send_response(&mut self.socks[w.sock], core, &t);
        }
        self.core.stats.handshakes_queued.store(0, Relaxed);
    }

    /// Accepts one new connection (its Initial datagram had `len` bytes): the handshake's first
    /// flight is computed here. The connection and memory limits are checked again: others may
    /// have been accepted since the Initial was queued.
    fn accept(&mut self, s: usize, incoming: Incoming, len: usize) {
        let core = &mut self.core;
        let Some(incoming) = refuse_if_full(core, &mut self.socks[s], incoming) else {
            return;
        };
        let validated = incoming.remote_address_validated();
        // with qlog on, the connection's own server config carries its trace
        let traced = match (&core.shared.qlog, &core.qlog_server_config) {
            (Some(q), Some(base)) => q.server_config(base, incoming.orig_dst_cid(), core.now),
            _ => None,
        };
        match core
            .endpoint
            .accept(incoming, core.now, &mut core.resp_buf, traced)
        {
            Ok((ch, conn)) => {
                core.conns.insert(ch.0, conn, s, core.now);
                let w = core.shared.memory.send_window_for(core.conns.len());
                core.conns.fit_send_window(w, Some(ch.0 as u32));
                if let Some(e) = core.conns.get_mut(ch.0 as u32) {
                    // what quinn-proto buffered for it while it waited is not counted: the
                    // amplification budget can only be smaller than the client's bytes allow
                    e.amp.on_received(len);
                    if validated {
                        e.amp.validate();
                    }
                }
                // slot < endpoint slab size, far below u32::MAX
                core.conns.start_handshake(ch.0 as u32);
                core.stats.connections_accepted.fetch_add(1, Relaxed);
                core.publish_gauges();
            }
            Err(e) => {
                tracing::debug!(shard = core.id, cause = %e.cause, "accept failed");
                match e.response {
                    Some(t) => send_response(&mut self.socks[s], core, &t),
                    // e.g. the Initial's packet protection failed: dropped without an answer
                    None => {
                        core.stats.dropped_endpoint.fetch_add(1, Relaxed);
                    }
                }
            }
        }
    }
}

/// Queues an endpoint-generated packet from `core.resp_buf`; dropped if the socket is blocked
/// (best effort: the peer retries).
pub(super) fn send_response(
    sock: &mut super::io::Sock,
    core: &super::Core,
    t: &quinn_proto::Transmit,
) {
    if !sock.queue_copy(t, &core.resp_buf[..t.size]) {
        core.stats.dropped_send_error.fetch_add(1, Relaxed);
    }
}
