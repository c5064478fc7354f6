//! Driving one connection: endpoint events, application events (handler callbacks, each under
//! `catch_unwind`), transmits (GSO batches under a budget), the next timer, and removal once
//! drained. The order follows quinn-proto's `Connection` docs: after any input, poll endpoint
//! events, then app events, then transmits, endpoint events once more, then `poll_timeout`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use quinn_proto::{ConnectionError, ConnectionHandle, Event, StreamEvent, VarInt};

use super::callback::{ConnId, Handler, ShardCtx, HANDLER_PANIC_CODE};
use super::conns::Entry;
use super::timers::Timer;
use super::{Shard, EVENT_PASSES_PER_DRIVE, TRANSMITS_PER_DRIVE};

/// The largest UDP payload (IPv4: 65,535 − 8-byte UDP header − 20-byte IP header): the bound on
/// one GSO batch.
const MAX_UDP_PAYLOAD: usize = 65_507;

impl<H: Handler> Shard<H> {
    /// Flushes everything pending on `slot`.
    pub(super) fn drive(&mut self, slot: u32) {
        if self.core.conns.get_mut(slot).is_none() {
            return;
        }
        self.core.driving = Some(slot);
        self.endpoint_events(slot);
        let mut events = std::mem::take(&mut self.events_buf);
        for _ in 0..EVENT_PASSES_PER_DRIVE {
            events.clear();
            let Some(e) = self.core.conns.get_mut(slot) else {
                break;
            };
            while let Some(ev) = e.conn.poll() {
                events.push(ev);
            }
            if events.is_empty() {
                break;
            }
            for ev in events.drain(..) {
                self.dispatch(slot, ev);
            }
        }
        self.events_buf = events;
        let again = self.transmit(slot);
        self.endpoint_events(slot);
        self.core.driving = None;

        let core = &mut self.core;
        let gen = core.conns.gen(slot);
        let Some(e) = core.conns.get_mut(slot) else {
            return;
        };
        // quinn-proto emits `Drained` exactly when the connection becomes drained; the endpoint
        // already forgot it in `endpoint_events`
        if e.drained {
            if !e.closed_reported {
                e.closed_reported = true;
                log_close(core.id, e, &ConnectionError::LocallyClosed, core.now);
                let id = core.conns.id(core.id, slot);
                self.call(id, |h, ctx| {
                    h.on_closed(ctx, id, &ConnectionError::LocallyClosed)
                });
            }
            let core = &mut self.core;
            core.conns.remove(slot);
            let w = core.shared.memory.send_window_for(core.conns.len());
            core.conns.fit_send_window(w, None);
            core.stats.connections_closed.fetch_add(1, Relaxed);
            core.publish_gauges();
            return;
        }
        // a server connection knows once it read the ClientHello whether it took early data
        if !e.zero_rtt_counted && e.conn.has_0rtt() && e.conn.side().is_server() {
            e.zero_rtt_counted = true;
            core.stats.zero_rtt_accepted.fetch_add(1, Relaxed);
        }
        let t = e.conn.poll_timeout();
        if t != e.timer {
            e.timer = t;
            if let Some(at) = t {
                core.timers.push(Timer { at, slot, gen });
            }
        }
        if again {
            core.conns.mark_dirty(slot);
        }
    }

    /// Hands the connection's endpoint events to the endpoint, and the answers back.
    fn endpoint_events(&mut self, slot: u32) {
        let core = &mut self.core;
        let Some(e) = core.conns.get_mut(slot) else {
            return;
        };
        while let Some(ev) = e.conn.poll_endpoint_events() {
            let drained = ev.is_drained();
            if let Some(cev) = core
                .endpoint
                .handle_event(ConnectionHandle(slot as usize), ev)
            {
                e.conn.handle_event(cev);
            }
            if drained {
                e.drained = true;
            }
        }
    }

    /// One application event → handler callbacks.
    fn dispatch(&mut self, slot: u32, ev: Event) {
        let id = self.core.conns.id(self.core.id, slot);
        match ev {
            Event::Connected => {
                let core = &mut self.core;
                core.stats.handshakes.fetch_add(1, Relaxed);
                if let Some(e) = core.conns.get_mut(slot) {
                    // the client's Finished arrived: its address is validated
                    e.amp.validate();
                    let took = core.now.saturating_duration_since(e.started);
                    core.stats.handshake_time.record(took);
                }
                core.conns.handshake_done(slot);
                core.stats
                    .handshakes_in_progress
                    .store(core.conns.handshaking() as u64, Relaxed);
                self.call(id, |h, ctx| h.on_connection(ctx, id));
            }
            Event::ConnectionLost { reason } => {
                if let Some(e) = self.core.conns.get_mut(slot) {
                    if e.closed_reported {
                        return;
                    }
                    e.closed_reported = true;
                    e.peer_closed = matches!(
                        reason,
                        ConnectionError::ConnectionClosed(_)
                            | ConnectionError::ApplicationClosed(_)
                    );
                    if e.peer_closed {
                        self.core.stats.closed_by_peer.fetch_add(1, Relaxed);
                    }
                    log_close(self.core.id, e, &reason, self.core.now);
                }
                self.call(id, |h, ctx| h.on_closed(ctx, id, &reason));
            }
            Event::Stream(StreamEvent::Opened { dir }) => loop {
                let Some(e) = self.core.conns.get_mut(slot) else {
                    return;
                };
                let Some(stream) = e.conn.streams().accept(dir) else {
                    break;
                };
                self.call(id, |h, ctx| h.on_stream_opened(ctx, id, stream));
                self.call(id, |h, ctx| h.on_stream_readable(ctx, id, stream));
            },
            Event::Stream(StreamEvent::Readable { id: stream }) => {
                self.call(id, |h, ctx| h.on_stream_readable(ctx, id, stream));
            }
            Event::Stream(StreamEvent::Writable { id: stream })
            | Event::Stream(StreamEvent::Stopped { id: stream, .. }) => {
                self.call(id, |h, ctx| h.on_stream_writable(ctx, id, stream));
            }
            Event::Stream(StreamEvent::Finished { id: stream }) => {
                self.call(id, |h, ctx| h.on_stream_finished(ctx, id, stream));
            }
            Event::DatagramReceived => loop {
                let Some(e) = self.core.conns.get_mut(slot) else {
                    return;
                };
                let Some(d) = e.conn.datagrams().recv() else {
                    break;
                };
                self.call(id, |h, ctx| h.on_datagram(ctx, id, d));
            },
            Event::Stream(StreamEvent::Available { dir }) => {
                self.call(id, |h, ctx| h.on_stream_available(ctx, id, dir));
            }
            Event::HandshakeDataReady | Event::DatagramsUnblocked => {}
        }
    }

    /// Runs one callback for `id`; a panic closes that connection and is counted.
    fn call(&mut self, id: ConnId, f: impl FnOnce(&mut H, &mut ShardCtx<'_>)) {
        let Self { core, handler, .. } = self;
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut ctx = ShardCtx::new(core);
            f(handler, &mut ctx)
        }));
        if r.is_err() {
            let core = &mut self.core;
            core.stats.handler_panics.fetch_add(1, Relaxed);
            tracing::warn!(
                shard = core.id,
                slot = id.slot,
                "handler panicked; closing the connection"
            );
            let now = core.now;
            if let Some(e) = core.conns.get_gen_mut(id.slot, id.gen) {
                e.conn.close(
                    now,
                    VarInt::from_u32(HANDLER_PANIC_CODE),
                    Bytes::from_static(b"handler panic"),
                );
                core.conns.mark_dirty(id.slot);
            }
        }
    }

    /// Queues what the connection has to send on its socket; `true` if the budget stopped it
    /// early. A blocked socket keeps the connection as a waiter until it can send again.
    ///
    /// A connection the peer closed sends nothing. quinn-proto would answer the peer's
    /// CONNECTION_CLOSE with one of its own, which RFC 9000 (section 10.2.2) allows but does not
    /// ask for: the peer is closing and waits out its own timer either way. Skipping it saves a
    /// datagram per connection the client ends, the usual end of a connection to a server.
    fn transmit(&mut self, slot: u32) -> bool {
        let core = &mut self.core;
        let Some(e) = core.conns.get_mut(slot) else {
            return false;
        };
        if e.peer_closed {
            return false;
        }
        let sock = &mut self.socks[e.sock];
        // a GSO batch is one UDP datagram to the kernel: at most 65,507 payload bytes (IPv4);
        // a bigger one fails whole with EMSGSIZE
        let mtu = usize::from(e.conn.current_mtu()).max(1);
        let max = sock.max_gso_segments().min((MAX_UDP_PAYLOAD / mtu).max(1));
        for _ in 0..TRANSMITS_PER_DRIVE {
            if !sock.reserve() {
                sock.waiters.push(slot);
                return false;
            }
            // before the address is validated, only as many whole datagrams as 3x the bytes
            // received covers (`amplify`); below one MTU, one datagram is tried and sent only
            // if it fits; the rest waits for the client's next datagram
            let (max, fit) = match e.amp.allowance(mtu) {
                None => (max, u64::MAX),
                Some(0) if e.amp.left() == 0 => {
                    if e.amp.block() {
                        core.stats.amplification_blocked.fetch_add(1, Relaxed);
                    }
                    return false;
                }
                Some(0) => (1, e.amp.left()),
                Some(n) => (n.min(max), u64::MAX),
            };
            let Some(t) = e.conn.poll_transmit(core.now, max, sock.next_buf()) else {
                return false;
            };
            if t.size as u64 > fit {
                // not committed: quinn-proto will count it lost and resend its frames
                if e.amp.block() {
                    core.stats.amplification_blocked.fetch_add(1, Relaxed);
                }
                return false;
            }
            e.amp.on_sent(t.size);
            sock.commit(&t);
        }
        true
    }
}

/// The `info` line for a closing connection (once per connection, when its handler learns of
/// the close): peer, shard, side, age, UDP bytes each way and the reason. Nothing is formatted
/// unless a subscriber takes `info` for this module.
fn log_close(shard: usize, e: &Entry, reason: &ConnectionError, now: std::time::Instant) {
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    let stats = e.conn.stats();
    tracing::info!(
        peer = %e.conn.remote_address(),
        shard,
        side = if e.conn.side().is_server() { "server" } else { "client" },
        duration_ms = now.saturating_duration_since(e.started).as_millis() as u64,
        bytes_in = stats.udp_rx.bytes,
        bytes_out = stats.udp_tx.bytes,
        reason = %reason,
        "connection closed"
    );
}
