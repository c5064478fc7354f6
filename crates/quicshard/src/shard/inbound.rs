//! Datagram input: receive batches from a socket, steer each datagram to its owning shard (hand
//! it off through the owner's mailbox if that is not us), and feed ours to the `Endpoint`:
//! connection events, new connections (accept / Retry / refuse), endpoint responses.
//!
//! Nothing here panics on network input: malformed or foreign datagrams are counted and dropped.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;

use bytes::BytesMut;
use quinn_proto::{ConnectionId, ConnectionIdGenerator, DatagramEvent, EcnCodepoint, Incoming};

use super::admit::send_response;
use super::amplify;
use super::io::{CLIENT, LISTEN};
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
                    if self.socks[s].drained_by(n) {
                        self.socks[s].readable = false;
                        return true;
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
        if s == LISTEN {
            let cid = &self.core.shared.cid;
            if let Some(owner) =
                handoff_target(&data, cid.cid_len(), n, cid.shard_key(), self.core.id)
            {
                let short = first & 0x80 == 0;
                let msg = Msg::Datagram(Handoff {
                    data,
                    remote,
                    local_ip,
                    ecn,
                    from_peer: false,
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
        self.deliver(s, data, remote, local_ip, ecn, false);
    }

    /// A datagram another shard forwarded to us.
    pub(super) fn on_handoff(&mut self, h: Handoff) {
        let stats = &self.core.stats;
        stats.handoffs_in.fetch_add(1, Relaxed);
        if h.data.first().is_some_and(|b| b & 0x80 == 0) {
            stats.handoffs_in_short.fetch_add(1, Relaxed);
        }
        self.deliver(LISTEN, h.data, h.remote, h.local_ip, h.ecn, h.from_peer);
    }

    /// Feeds one datagram we own to the endpoint (`from_peer`: forwarded by the other process
    /// of a handover).
    fn deliver(
        &mut self,
        s: usize,
        data: BytesMut,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        from_peer: bool,
    ) {
        let core = &mut self.core;
        let cid_check = &core.cid_check;
        let early = check_before_endpoint(&data, core.shared.cid.cid_len(), |cid| {
            cid_check.validate(cid).is_ok()
        });
        match early {
            Ok(()) => {}
            Err(EarlyDrop::Malformed) => {
                core.stats.dropped_malformed.fetch_add(1, Relaxed);
                return;
            }
            Err(EarlyDrop::UnknownCid) => {
                core.stats.dropped_unknown_cid.fetch_add(1, Relaxed);
                return;
            }
        }
        let short = data.first().is_some_and(|&b| b & 0x80 == 0);
        let len = data.len();
        let proves = amplify::proves_address(&data);
        // in a handover, a long header that would start a connection may go to the other
        // process: keep a copy until the endpoint tells (only then, see shared/forward.rs)
        let forward = !short && core.shared.retire.should_forward(core.now, from_peer);
        let retiring = forward.then(|| data.to_vec());
        // an Initial that may wait for admission must not pin a chunk of the shard's arena
        let data = self.admit.detach_if_waiting(data, &core.shared.admission);
        let now = core.now;
        core.resp_buf.clear();
        match core
            .endpoint
            .handle(now, remote, local_ip, ecn, data, &mut core.resp_buf)
        {
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                let slot = ch.0 as u32;
                if let Some(e) = core.conns.get_mut(slot) {
                    amplify_hook(e, remote, len, proves, ev);
                    // a server connection answers from the socket its peer now uses: the
                    // listen port, or this shard's own port once the client moved to the
                    // preferred address
                    if s != e.sock && e.conn.side().is_server() {
                        if s == CLIENT {
                            core.stats.preferred_address_moves.fetch_add(1, Relaxed);
                        }
                        e.sock = s;
                    }
                    core.conns.mark_dirty(slot);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => match retiring {
                Some(copy) if core.shared.retire.forward(&copy, remote, local_ip) => {
                    core.endpoint.ignore(incoming);
                }
                // not forwarded (the other process is gone): ours after all
                _ => self.on_incoming(s, incoming, len),
            },
            Some(DatagramEvent::Response(t)) => {
                if short {
                    // a stateless reset for a CID that looks like ours but is unknown
                    core.stats.dropped_unknown_cid.fetch_add(1, Relaxed);
                }
                send_response(&mut self.socks[s], core, &t);
            }
            // dropped, or kept for a new connection that waits for admission (quinn-proto
            // buffers a pending `Incoming`'s further datagrams)
            None => match retiring {
                // 0-RTT for no connection of ours: its Initial went to the successor too
                Some(copy)
                    if copy.first().is_some_and(|&b| b & 0x30 == 0x10)
                        && core.shared.retire.forward(&copy, remote, local_ip) => {}
                _ => {
                    core.stats.dropped_endpoint.fetch_add(1, Relaxed);
                }
            },
        }
    }

    /// A new Initial (in a datagram of `len` bytes): refuse it, answer with a Retry, or queue it
    /// for admission ([`super::admit`]).
    fn on_incoming(&mut self, s: usize, incoming: Incoming, len: usize) {
        // connections waiting for admission are handshakes in progress too
        let pending = self.admit.waiting();
        let core = &mut self.core;
        let sock = &mut self.socks[s];
        let Some(incoming) = super::admit::refuse_if_full(core, sock, incoming) else {
            return;
        };
        // Retry always, or (load-based) once enough handshakes are in progress on this shard.
        let retry = core.shared.retry
            || core
                .shared
                .retry_threshold
                .is_some_and(|n| core.conns.handshaking() + pending >= n);
        if retry && !incoming.remote_address_validated() {
            match core.endpoint.retry(incoming, &mut core.resp_buf) {
                Ok(t) => {
                    core.stats.retry_sent.fetch_add(1, Relaxed);
                    send_response(sock, core, &t);
                }
                Err(e) => core.endpoint.ignore(e.into_incoming()),
            }
            return;
        }
        self.enqueue_incoming(s, incoming, len);
    }
}

/// Hands a datagram of `len` bytes from `remote` to its connection, with the amplification
/// account (`amplify`): bytes from the connection's address count as received, and a datagram
/// that `proves` the address validates it once quinn-proto processed a frame of it.
fn amplify_hook(
    e: &mut super::conns::Entry,
    remote: SocketAddr,
    len: usize,
    proves: bool,
    ev: quinn_proto::ConnectionEvent,
) {
    if e.amp.is_validated() {
        e.conn.handle_event(ev);
        return;
    }
    if remote == e.conn.remote_address() {
        e.amp.on_received(len);
    }
    let before = proves.then(|| amplify::frames_received(&e.conn.stats()));
    e.conn.handle_event(ev);
    if before.is_some_and(|b| amplify::frames_received(&e.conn.stats()) > b) {
        e.amp.validate();
    }
}

/// Why a datagram is dropped before the endpoint sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyDrop {
    /// Empty, or a short header that ends inside its DCID.
    Malformed,
    /// A short header whose DCID this shard's generator does not `validate` (not one of ours, or
    /// another shard's).
    UnknownCid,
}

/// The shard a datagram received on the shared port must be handed to, if not `me`: the
/// steering rule ([`steer::owner_shard`]) when there are several shards; `None` to keep it.
pub fn handoff_target(
    data: &[u8],
    cid_len: usize,
    n_shards: usize,
    key: &steer::ShardKey,
    me: usize,
) -> Option<usize> {
    if n_shards <= 1 {
        return None;
    }
    steer::owner_shard(data, cid_len, n_shards, key)
        .filter(|&owner| owner != me && owner < n_shards)
}

/// The checks a datagram this shard keeps passes before `Endpoint::handle`: it is not empty and,
/// if it has a short header, its whole DCID (`cid_len` octets) is there and `validate` accepts
/// it. Why: quinn-proto answers an unknown short-header CID with a stateless reset, which would
/// kill the connection on the shard that really owns it. Long headers go to the endpoint. A
/// `cid_len` above 20 (never configured) makes every short header malformed.
pub fn check_before_endpoint(
    data: &[u8],
    cid_len: usize,
    validate: impl FnOnce(&ConnectionId) -> bool,
) -> Result<(), EarlyDrop> {
    let first = *data.first().ok_or(EarlyDrop::Malformed)?;
    if first & 0x80 == 0 {
        let dcid = data
            .get(1..1 + cid_len)
            .filter(|_| cid_len <= steer::MAX_CID_LEN)
            .ok_or(EarlyDrop::Malformed)?;
        if !validate(&ConnectionId::new(dcid)) {
            return Err(EarlyDrop::UnknownCid);
        }
    }
    Ok(())
}
