//! Datagram input: receive batches from a socket, steer each datagram to its owning shard (hand
//! it off through the owner's mailbox if that is not us), and feed ours to the `Endpoint`:
//! connection events, new connections (accept / Retry / refuse), endpoint responses.
//!
//! Nothing here panics on network input: malformed or foreign datagrams are counted and dropped.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;

use bytes::BytesMut;
use quinn_proto::{ConnectionId, ConnectionIdGenerator, DatagramEvent, EcnCodepoint, Incoming};

use super::io::LISTEN;
use super::mailbox::{Handoff, Msg, SendError};
use super::{Handler, Shard, RECV_CALLS_PER_ITER};
use crate::steer;

impl<H: Handler> Shard<H> {
    /// Reads socket `s` under the budget; `true` when it reached `WouldBlock`.
    pub(super) fn recv_socket(&mut self, s: usize) -> bool {
        for _ in 0..RECV_CALLS_PER_ITER {
            match self.socks[s].recv(&mut self.rx) {
                Ok(n) => {
                    for i in 0..n {
                        let meta = self.rx.metas[i];
                        let ecn = meta.ecn.and_then(|e| EcnCodepoint::from_bits(e as u8));
                        let stride = if meta.stride == 0 {
                            meta.len
                        } else {
                            meta.stride
                        };
                        let len = meta.len.min(self.rx.buf_len);
                        if len == 0 {
                            let stats = &self.core.stats;
                            stats.datagrams_in.fetch_add(1, Relaxed);
                            stats.dropped_malformed.fetch_add(1, Relaxed);
                        }
                        let mut off = 0;
                        while off < len {
                            let end = (off + stride.max(1)).min(len);
                            // copy out so the receive buffers can be reused immediately
                            let seg = self.arena.copy(&self.rx.message(i)[off..end]);
                            self.on_datagram(s, seg, meta.addr, meta.dst_ip, ecn);
                            off = end;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.socks[s].readable = false;
                    return true;
                }
                Err(e) => {
                    // e.g. ECONNREFUSED from an ICMP error on the client socket: keep reading
                    tracing::debug!(shard = self.core.id, error = %e, "recv error");
                }
            }
        }
        false
    }

    /// One received datagram: steer, then deliver locally or hand off.
    fn on_datagram(
        &mut self,
        s: usize,
        data: BytesMut,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
    ) {
        let stats = &self.core.stats;
        stats.datagrams_in.fetch_add(1, Relaxed);
        let Some(&first) = data.first() else {
            stats.dropped_malformed.fetch_add(1, Relaxed);
            return;
        };
        let n = self.peers.len();
        // Only the shared port is steered: the client socket is this shard's alone.
        if s == LISTEN && n > 1 {
            let cid_len = self.core.shared.cid.cid_len();
            if let Some(owner) = steer::owner_shard(&data, cid_len, n) {
                if owner != self.core.id && owner < n {
                    let short = first & 0x80 == 0;
                    let msg = Msg::Datagram(Handoff {
                        data,
                        remote,
                        local_ip,
                        ecn,
                    });
                    match self.peers[owner].try_send(msg) {
                        Ok(()) => {
                            stats.handoffs_out.fetch_add(1, Relaxed);
                            if short {
                                stats.handoffs_out_short.fetch_add(1, Relaxed);
                            }
                        }
                        Err(SendError::Full(_) | SendError::Closed(_)) => {
                            stats.dropped_queue_full.fetch_add(1, Relaxed);
                        }
                    }
                    return;
                }
            }
        }
        self.deliver(s, data, remote, local_ip, ecn);
    }

    /// A datagram another shard forwarded to us.
    pub(super) fn on_handoff(&mut self, h: Handoff) {
        let stats = &self.core.stats;
        stats.handoffs_in.fetch_add(1, Relaxed);
        if h.data.first().is_some_and(|b| b & 0x80 == 0) {
            stats.handoffs_in_short.fetch_add(1, Relaxed);
        }
        self.deliver(LISTEN, h.data, h.remote, h.local_ip, h.ecn);
    }

    /// Feeds one datagram we own to the endpoint.
    fn deliver(
        &mut self,
        s: usize,
        data: BytesMut,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
    ) {
        let core = &mut self.core;
        let Some(&first) = data.first() else {
            core.stats.dropped_malformed.fetch_add(1, Relaxed);
            return;
        };
        let short = first & 0x80 == 0;
        if short {
            let cid_len = core.shared.cid.cid_len();
            let Some(dcid) = data.get(1..1 + cid_len) else {
                core.stats.dropped_malformed.fetch_add(1, Relaxed);
                return;
            };
            if core.cid_check.validate(&ConnectionId::new(dcid)).is_err() {
                core.stats.dropped_unknown_cid.fetch_add(1, Relaxed);
                return;
            }
        }
        let now = core.now;
        core.resp_buf.clear();
        match core
            .endpoint
            .handle(now, remote, local_ip, ecn, data, &mut core.resp_buf)
        {
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                let slot = ch.0 as u32;
                if let Some(e) = core.conns.get_mut(slot) {
                    e.conn.handle_event(ev);
                    core.conns.mark_dirty(slot);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => self.on_incoming(s, incoming),
            Some(DatagramEvent::Response(t)) => {
                if short {
                    // a stateless reset for a CID that looks like ours but is unknown
                    core.stats.dropped_unknown_cid.fetch_add(1, Relaxed);
                }
                send_response(&mut self.socks[s], core, &t);
            }
            None => {}
        }
    }

    /// A new Initial: accept it, answer with a Retry, or refuse it.
    fn on_incoming(&mut self, s: usize, incoming: Incoming) {
        let core = &mut self.core;
        let sock = &mut self.socks[s];
        core.resp_buf.clear();
        if core.stopping.is_some() || core.conns.len() >= core.shared.max_connections {
            if core.stopping.is_none() {
                core.stats.connections_refused.fetch_add(1, Relaxed);
            }
            let t = core.endpoint.refuse(incoming, &mut core.resp_buf);
            send_response(sock, core, &t);
            return;
        }
        if core.shared.retry && !incoming.remote_address_validated() {
            match core.endpoint.retry(incoming, &mut core.resp_buf) {
                Ok(t) => {
                    core.stats.retry_sent.fetch_add(1, Relaxed);
                    send_response(sock, core, &t);
                }
                Err(e) => core.endpoint.ignore(e.into_incoming()),
            }
            return;
        }
        match core
            .endpoint
            .accept(incoming, core.now, &mut core.resp_buf, None)
        {
            Ok((ch, conn)) => {
                core.conns.insert(ch.0, conn, s);
                core.stats.connections_accepted.fetch_add(1, Relaxed);
                core.stats
                    .connections_open
                    .store(core.conns.len() as u64, Relaxed);
            }
            Err(e) => {
                tracing::debug!(shard = core.id, cause = %e.cause, "accept failed");
                if let Some(t) = e.response {
                    send_response(sock, core, &t);
                }
            }
        }
    }
}

/// Queues an endpoint-generated packet from `core.resp_buf`; dropped if the socket is blocked
/// (best effort: the peer retries).
fn send_response(sock: &mut super::io::Sock, core: &super::Core, t: &quinn_proto::Transmit) {
    if !sock.queue_copy(t, &core.resp_buf[..t.size]) {
        core.stats.dropped_send_error.fetch_add(1, Relaxed);
    }
}
