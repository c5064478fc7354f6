//! The strict anti-amplification limit (RFC 9000 §8.1): before a client's address is validated,
//! a server connection sends at most three times the bytes it received from that address.
//!
//! quinn-proto enforces the limit itself, but only checks that one byte of budget is left before
//! it starts a datagram, so a full datagram after a small one overshoots (3.05x was measured).
//! The engine therefore keeps its own account per connection ([`AmpBudget`]) and enforces it in
//! `Shard::transmit`, where every datagram passes: `poll_transmit` is called only when the budget
//! covers a whole batch of `current_mtu`-sized datagrams. With less than one MTU left, it asks
//! for one datagram and sends it only if it fits (a 64-byte NEW_CONNECTION_ID often does);
//! one that does not is discarded unsent, and quinn-proto, which counts it as lost, sends its
//! frames again once acknowledgments or its probe timer say so. Nothing is ever held back in a
//! queue.
//!
//! # What counts as validated (a conservative rule)
//! quinn-proto does not expose its own `validated` flag, so the engine decides from what it sees:
//! - a client connection is validated from the start (the rule binds servers);
//! - a server connection whose `Incoming` had a validated address (a Retry token or a NEW_TOKEN);
//! - a server connection whose handshake completed (`Event::Connected`: the client's Finished
//!   arrived in a Handshake packet);
//! - a server connection that processed at least one frame from a datagram made only of
//!   Handshake and 1-RTT packets ([`proves_address`]): their keys come from the server's first
//!   flight, which only the address's owner saw. Initial packets prove nothing (their keys derive
//!   from the client's own DCID) and neither does 0-RTT (replayable), so a datagram that contains
//!   one of them never validates, even coalesced with a genuine Handshake packet.
//!
//! Received bytes count every datagram the endpoint routed to the connection from its current
//! remote address (including the accepted Initial's datagram); sent bytes count every datagram
//! `poll_transmit` produced, retransmissions included. Endpoint-level answers (Retry, version
//! negotiation, stateless reset, refusal) do not go through a connection: quinn-proto sizes each
//! below the datagram that caused it. A path the client migrates to after the handshake is
//! validated by quinn-proto's own path validation (its check, not this one, applies there).

use quinn_proto::{ConnectionStats, Side};

/// The amplification factor RFC 9000 §8.1 allows.
const FACTOR: u64 = 3;

/// One connection's account of bytes received from and sent to an unvalidated address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AmpBudget {
    received: u64,
    sent: u64,
    validated: bool,
    /// The last transmit stopped for want of budget (for counting episodes, not calls).
    blocked: bool,
}

impl AmpBudget {
    /// A fresh account: a client is validated; a server is not until proven.
    pub(crate) fn new(side: Side) -> Self {
        Self {
            received: 0,
            sent: 0,
            validated: side.is_client(),
            blocked: false,
        }
    }

    /// Whether the limit no longer applies.
    pub(crate) fn is_validated(&self) -> bool {
        self.validated
    }

    /// The address is validated: no limit from now on.
    pub(crate) fn validate(&mut self) {
        self.validated = true;
    }

    /// A datagram of `len` bytes arrived from the connection's address.
    pub(crate) fn on_received(&mut self, len: usize) {
        self.received = self.received.saturating_add(len as u64);
    }

    /// A datagram (or GSO batch) of `len` bytes was sent.
    pub(crate) fn on_sent(&mut self, len: usize) {
        self.sent = self.sent.saturating_add(len as u64);
        self.blocked = false;
    }

    /// Bytes that may still be sent before validation (`u64::MAX` once validated).
    pub(crate) fn left(&self) -> u64 {
        if self.validated {
            return u64::MAX;
        }
        (self.received.saturating_mul(FACTOR)).saturating_sub(self.sent)
    }

    /// How many whole datagrams of `mtu` bytes may be produced now: `None` without a limit.
    /// With `Some(0)`, a smaller datagram may still fit in [`AmpBudget::left`].
    pub(crate) fn allowance(&self, mtu: usize) -> Option<usize> {
        if self.validated {
            return None;
        }
        Some(usize::try_from(self.left() / mtu.max(1) as u64).unwrap_or(usize::MAX))
    }

    /// The connection stopped for want of budget; `true` if it was sending until now (count
    /// one episode, not every attempt).
    pub(crate) fn block(&mut self) -> bool {
        !std::mem::replace(&mut self.blocked, true)
    }
}

/// The number of frames a connection has processed (every type quinn-proto counts; padding is
/// not counted): a rise across one datagram means some packet of it decrypted.
pub(crate) fn frames_received(s: &ConnectionStats) -> u64 {
    let f = &s.frame_rx;
    [
        f.acks,
        f.ack_frequency,
        f.crypto,
        f.connection_close,
        f.data_blocked,
        f.datagram,
        u64::from(f.handshake_done),
        f.immediate_ack,
        f.max_data,
        f.max_stream_data,
        f.max_streams_bidi,
        f.max_streams_uni,
        f.new_connection_id,
        f.new_token,
        f.path_challenge,
        f.path_response,
        f.ping,
        f.reset_stream,
        f.retire_connection_id,
        f.stream_data_blocked,
        f.streams_blocked_bidi,
        f.streams_blocked_uni,
        f.stop_sending,
        f.stream,
    ]
    .iter()
    .sum()
}

/// Whether every packet of `datagram` is a Handshake or a 1-RTT (short header) packet of a QUIC
/// version quinn-proto speaks, so that a frame processed from it proves the client holds keys
/// derived from the server's first flight. `false` for anything with an Initial, 0-RTT or Retry
/// packet, an unknown version, or a long header that does not parse. Never panics.
pub(crate) fn proves_address(datagram: &[u8]) -> bool {
    let mut rest = datagram;
    if rest.is_empty() {
        return false;
    }
    while let Some(&first) = rest.first() {
        if first & 0x80 == 0 {
            // a short header runs to the end of the datagram
            return true;
        }
        match handshake_packet_len(rest) {
            Some(n) => rest = &rest[n..],
            None => return false,
        }
    }
    true
}

/// The length of the Handshake packet at the start of `b` (v1 and the drafts quinn-proto speaks
/// share its type bits), `None` if it is not one or does not fit.
fn handshake_packet_len(b: &[u8]) -> Option<usize> {
    const HANDSHAKE: u8 = 0b10;
    let first = *b.first()?;
    if (first >> 4) & 0b11 != HANDSHAKE {
        return None;
    }
    let version = u32::from_be_bytes(b.get(1..5)?.try_into().ok()?);
    if !quinn_proto::DEFAULT_SUPPORTED_VERSIONS.contains(&version) {
        return None;
    }
    let mut at = 5;
    for _ in 0..2 {
        let cid_len = usize::from(*b.get(at)?);
        at = at.checked_add(1 + cid_len)?;
    }
    let (len, n) = varint(b.get(at..)?)?;
    let end = at.checked_add(n)?.checked_add(usize::try_from(len).ok()?)?;
    (end <= b.len()).then_some(end)
}

/// A QUIC variable-length integer at the start of `b` and its encoded length.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let n = 1usize << (first >> 6);
    let bytes = b.get(..n)?;
    let mut v = u64::from(first & 0x3f);
    for &x in &bytes[1..] {
        v = (v << 8) | u64::from(x);
    }
    Some((v, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long(ty: u8, version: u32, payload: usize) -> Vec<u8> {
        let mut p = vec![0xc0 | (ty << 4)];
        p.extend_from_slice(&version.to_be_bytes());
        p.extend_from_slice(&[4, 1, 2, 3, 4, 2, 9, 9]);
        if ty == 0 {
            p.push(0); // empty token
        }
        p.extend_from_slice(&[0x40 | (payload >> 8) as u8, payload as u8]);
        p.resize(p.len() + payload, 0xaa);
        p
    }

    #[test]
    fn budget_is_three_times_received_in_whole_datagrams() {
        let mut b = AmpBudget::new(Side::Server);
        assert_eq!(b.allowance(1200), Some(0));
        assert_eq!(b.left(), 0);
        assert!(b.block());
        assert!(!b.block(), "one episode");
        b.on_received(1200);
        assert_eq!(b.allowance(1200), Some(3));
        b.on_sent(1200);
        b.on_sent(64);
        assert_eq!(b.allowance(1200), Some(1));
        b.on_sent(1200);
        // 1,136 bytes are left: not a whole datagram, but a smaller one may fit
        assert_eq!(b.allowance(1200), Some(0));
        assert_eq!(b.left(), 1136);
        assert!(b.block(), "sending in between ended the last episode");
        b.validate();
        assert_eq!(b.allowance(1200), None);
        assert_eq!(AmpBudget::new(Side::Client).allowance(1200), None);
    }

    #[test]
    fn only_handshake_and_short_packets_prove_an_address() {
        let v1 = 1;
        let hs = long(2, v1, 40);
        assert!(proves_address(&hs));
        let mut hs_short = hs.clone();
        hs_short.extend_from_slice(&[0x40, 1, 2, 3]);
        assert!(proves_address(&hs_short));
        assert!(proves_address(&[0x40, 1, 2, 3]));
        assert!(!proves_address(&long(0, v1, 40)), "Initial");
        assert!(!proves_address(&long(1, v1, 40)), "0-RTT");
        // a garbage Handshake packet in front of a (forgeable) Initial
        let mut mixed = hs.clone();
        mixed.extend_from_slice(&long(0, v1, 40));
        assert!(!proves_address(&mixed));
        assert!(
            !proves_address(&long(2, 0x6b33_43cf, 40)),
            "QUIC v2 / unknown"
        );
        assert!(!proves_address(&hs[..hs.len() - 1]), "truncated");
        assert!(!proves_address(&[]));
        assert!(!proves_address(&[0xe0, 0, 0]));
    }
}
