//! The DSR encapsulation: IP-in-UDP carrying the client's datagram with its addresses.
//!
//! This module owns the wire format between the load balancer and a backend in `dsr` mode. The
//! LB sends the backend one UDP datagram whose payload is an inner IPv4 or IPv6 header plus a UDP
//! header (source: the client's address; destination: the virtual address the client sent to),
//! followed by the client's datagram. The backend (`serve --decap`) parses it, hands the client
//! datagram to QUIC as if it came from the client, and answers from the virtual address.
//!
//! Two levels, as in smoltcp: [`EncapPacket`] is a checked zero-copy view over bytes whose
//! accessors never panic once [`EncapPacket::new_checked`] succeeded; [`EncapRepr`] is the
//! validated meaning with [`EncapRepr::parse`], [`EncapRepr::emit`] and
//! [`EncapRepr::buffer_len`]. The inner UDP checksum is always filled in and checked; the IPv4
//! header checksum too. Fragments and IPv4 options are refused.
//!
//! # Panics
//! [`EncapRepr::emit`] panics if its header buffer is not exactly `header_len()` bytes (a caller
//! bug). Nothing panics on untrusted input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Field offsets of the inner headers.
mod field {
    /// IPv4 header length (no options).
    pub(super) const IPV4_LEN: usize = 20;
    /// IPv6 header length.
    pub(super) const IPV6_LEN: usize = 40;
    /// UDP header length.
    pub(super) const UDP_LEN: usize = 8;
    /// IPv4 total length.
    pub(super) const V4_TOTAL_LEN: std::ops::Range<usize> = 2..4;
    /// IPv4 flags and fragment offset.
    pub(super) const V4_FRAG: std::ops::Range<usize> = 6..8;
    /// IPv4 protocol.
    pub(super) const V4_PROTO: usize = 9;
    /// IPv4 source and destination.
    pub(super) const V4_SRC: std::ops::Range<usize> = 12..16;
    pub(super) const V4_DST: std::ops::Range<usize> = 16..20;
    /// IPv6 payload length.
    pub(super) const V6_PAYLOAD_LEN: std::ops::Range<usize> = 4..6;
    /// IPv6 next header.
    pub(super) const V6_NEXT: usize = 6;
    /// IPv6 source and destination.
    pub(super) const V6_SRC: std::ops::Range<usize> = 8..24;
    pub(super) const V6_DST: std::ops::Range<usize> = 24..40;
}

/// IP protocol number of UDP.
const PROTO_UDP: u8 = 0x11;
/// TTL / hop limit of the inner header (never routed; any nonzero value works).
const INNER_TTL: u8 = 0x40;
/// IPv4 "don't fragment" flag.
const V4_DONT_FRAGMENT: u16 = 0x4000;
/// Longest client datagram an inner IPv4 header can describe.
const MAX_INNER_PAYLOAD: usize = 0xffff - field::IPV4_LEN - field::UDP_LEN;

/// Why bytes are not a valid encapsulated datagram (a misconfigured sender or corruption: drop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncapError {
    /// Shorter than the headers it announces.
    #[error("truncated encapsulated datagram")]
    Truncated,
    /// The IP version nibble is not 4 or 6.
    #[error("inner IP version {0} is not 4 or 6")]
    Version(u8),
    /// IPv4 options, fragments, or lengths that disagree.
    #[error("malformed inner header: {0}")]
    Header(&'static str),
    /// The inner protocol is not UDP.
    #[error("inner protocol {0} is not UDP")]
    NotUdp(u8),
    /// An inner checksum is wrong.
    #[error("bad inner checksum")]
    Checksum,
    /// Source and destination are of different address families.
    #[error("client and virtual addresses are of different families")]
    MixedFamilies,
    /// The client datagram is too long for an inner header.
    #[error("client datagram of {0} bytes is too long to encapsulate")]
    TooLong(usize),
}

/// A checked view of an encapsulated datagram.
#[derive(Debug, Clone, Copy)]
pub struct EncapPacket<T: AsRef<[u8]>> {
    buffer: T,
    ip_len: usize,
    total: usize,
}

impl<T: AsRef<[u8]>> EncapPacket<T> {
    /// Checks version, header and length fields so that no accessor can panic.
    pub fn new_checked(buffer: T) -> Result<Self, EncapError> {
        let b = buffer.as_ref();
        let first = *b.first().ok_or(EncapError::Truncated)?;
        let (ip_len, total) = match first >> 4 {
            4 => {
                if first & 0x0f != 5 {
                    return Err(EncapError::Header("IPv4 options are not supported"));
                }
                let h = b.get(..field::IPV4_LEN).ok_or(EncapError::Truncated)?;
                if be16(&h[field::V4_FRAG]) & 0x3fff != 0 {
                    return Err(EncapError::Header("IPv4 fragment"));
                }
                if h[field::V4_PROTO] != PROTO_UDP {
                    return Err(EncapError::NotUdp(h[field::V4_PROTO]));
                }
                (field::IPV4_LEN, usize::from(be16(&h[field::V4_TOTAL_LEN])))
            }
            6 => {
                let h = b.get(..field::IPV6_LEN).ok_or(EncapError::Truncated)?;
                if h[field::V6_NEXT] != PROTO_UDP {
                    return Err(EncapError::NotUdp(h[field::V6_NEXT]));
                }
                let payload = usize::from(be16(&h[field::V6_PAYLOAD_LEN]));
                (field::IPV6_LEN, field::IPV6_LEN + payload)
            }
            v => return Err(EncapError::Version(v)),
        };
        if total < ip_len + field::UDP_LEN {
            return Err(EncapError::Header("IP length shorter than the headers"));
        }
        if total > b.len() {
            return Err(EncapError::Truncated);
        }
        let udp_len = usize::from(be16(&b[ip_len + 4..ip_len + 6]));
        if udp_len != total - ip_len {
            return Err(EncapError::Header("UDP length disagrees with IP length"));
        }
        Ok(Self {
            buffer,
            ip_len,
            total,
        })
    }

    fn b(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.total]
    }

    /// The inner source (the client).
    pub fn src(&self) -> SocketAddr {
        let b = self.b();
        let port = be16(&b[self.ip_len..self.ip_len + 2]);
        SocketAddr::new(self.ip(field::V4_SRC, field::V6_SRC), port)
    }

    /// The inner destination (the virtual address).
    pub fn dst(&self) -> SocketAddr {
        let b = self.b();
        let port = be16(&b[self.ip_len + 2..self.ip_len + 4]);
        SocketAddr::new(self.ip(field::V4_DST, field::V6_DST), port)
    }

    fn ip(&self, v4: std::ops::Range<usize>, v6: std::ops::Range<usize>) -> IpAddr {
        let b = self.b();
        if self.ip_len == field::IPV4_LEN {
            let o: [u8; 4] = b[v4].try_into().expect("range is 4 bytes");
            IpAddr::V4(Ipv4Addr::from(o))
        } else {
            let o: [u8; 16] = b[v6].try_into().expect("range is 16 bytes");
            IpAddr::V6(Ipv6Addr::from(o))
        }
    }

    /// The client's datagram.
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.ip_len + field::UDP_LEN..]
    }

    /// Whether the inner checksums are right.
    pub fn verify_checksums(&self) -> bool {
        let b = self.b();
        if self.ip_len == field::IPV4_LEN && checksum(&[&b[..field::IPV4_LEN]]) != 0 {
            return false;
        }
        let udp = &b[self.ip_len..];
        let stored = be16(&udp[6..8]);
        let (src, dst) = (self.src().ip(), self.dst().ip());
        stored == 0 && self.ip_len == field::IPV4_LEN
            || udp_checksum(src, dst, &udp[..6], &udp[8..]) == stored
    }
}

/// The meaning of an encapsulated datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncapRepr {
    /// The client's address.
    pub src: SocketAddr,
    /// The virtual address the client sent to.
    pub dst: SocketAddr,
    /// Length of the client's datagram.
    pub payload_len: usize,
}

impl EncapRepr {
    /// A repr for one client datagram; the families must match.
    pub fn new(src: SocketAddr, dst: SocketAddr, payload_len: usize) -> Result<Self, EncapError> {
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(EncapError::MixedFamilies);
        }
        if payload_len > MAX_INNER_PAYLOAD {
            return Err(EncapError::TooLong(payload_len));
        }
        Ok(Self {
            src,
            dst,
            payload_len,
        })
    }

    /// Parses a checked view, verifying checksums.
    pub fn parse<T: AsRef<[u8]>>(p: &EncapPacket<T>) -> Result<Self, EncapError> {
        if !p.verify_checksums() {
            return Err(EncapError::Checksum);
        }
        Self::new(p.src(), p.dst(), p.payload().len())
    }

    /// Bytes of the inner IP and UDP headers.
    pub fn header_len(&self) -> usize {
        field::UDP_LEN
            + if self.src.is_ipv4() {
                field::IPV4_LEN
            } else {
                field::IPV6_LEN
            }
    }

    /// Bytes of the whole encapsulated datagram.
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload_len
    }

    /// Writes the headers into `header` (exactly `header_len()` bytes) for `payload`, which
    /// follows them on the wire. Panics if `header` has the wrong length or `payload` is not
    /// `payload_len` bytes.
    pub fn emit(&self, header: &mut [u8], payload: &[u8]) {
        assert_eq!(header.len(), self.header_len(), "header buffer length");
        assert_eq!(payload.len(), self.payload_len, "payload length");
        let udp_len = (field::UDP_LEN + self.payload_len) as u16;
        let ip_len = self.header_len() - field::UDP_LEN;
        header.fill(0);
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let h = &mut header[..ip_len];
                h[0] = 0x45;
                h[field::V4_TOTAL_LEN].copy_from_slice(&(udp_len + ip_len as u16).to_be_bytes());
                h[field::V4_FRAG].copy_from_slice(&V4_DONT_FRAGMENT.to_be_bytes());
                h[8] = INNER_TTL;
                h[field::V4_PROTO] = PROTO_UDP;
                h[field::V4_SRC].copy_from_slice(&s.octets());
                h[field::V4_DST].copy_from_slice(&d.octets());
                let c = checksum(&[h]);
                h[10..12].copy_from_slice(&c.to_be_bytes());
            }
            (s, d) => {
                let (s, d) = (v6(s), v6(d));
                let h = &mut header[..ip_len];
                h[0] = 0x60;
                h[field::V6_PAYLOAD_LEN].copy_from_slice(&udp_len.to_be_bytes());
                h[field::V6_NEXT] = PROTO_UDP;
                h[7] = INNER_TTL;
                h[field::V6_SRC].copy_from_slice(&s.octets());
                h[field::V6_DST].copy_from_slice(&d.octets());
            }
        }
        let u = &mut header[ip_len..];
        u[0..2].copy_from_slice(&self.src.port().to_be_bytes());
        u[2..4].copy_from_slice(&self.dst.port().to_be_bytes());
        u[4..6].copy_from_slice(&udp_len.to_be_bytes());
        let c = udp_checksum(self.src.ip(), self.dst.ip(), &u[..6], payload);
        u[6..8].copy_from_slice(&c.to_be_bytes());
    }
}

/// Checks and parses an encapsulated datagram: the client's address, the virtual address and
/// the client's datagram.
pub fn decap(datagram: &[u8]) -> Result<(EncapRepr, &[u8]), EncapError> {
    let p = EncapPacket::new_checked(datagram)?;
    let repr = EncapRepr::parse(&p)?;
    let start = repr.header_len();
    Ok((repr, &datagram[start..start + repr.payload_len]))
}

/// Encapsulates `payload` into `out`, returning the bytes written (a convenience over
/// [`EncapRepr::emit`] for callers without headroom).
pub fn encap(
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
    out: &mut [u8],
) -> Result<usize, EncapError> {
    let repr = EncapRepr::new(src, dst, payload.len())?;
    let out = out
        .get_mut(..repr.buffer_len())
        .ok_or(EncapError::Truncated)?;
    let (h, p) = out.split_at_mut(repr.header_len());
    p.copy_from_slice(payload);
    repr.emit(h, payload);
    Ok(repr.buffer_len())
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// The Internet checksum (RFC 1071) of the concatenated parts.
///
/// Sums big-endian 32-bit words into a 64-bit accumulator and folds at the end: since
/// `2^16 = 1 (mod 2^16 - 1)`, a 32-bit word adds the same as its two 16-bit halves. A part of odd
/// length carries its last byte over to pair with the next part's first.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u64;
    let mut odd: Option<u8> = None;
    for part in parts {
        let mut p = *part;
        if let Some(hi) = odd.take() {
            match p.split_first() {
                Some((&lo, rest)) => {
                    sum += u64::from(u16::from_be_bytes([hi, lo]));
                    p = rest;
                }
                None => {
                    odd = Some(hi);
                    continue;
                }
            }
        }
        let mut words = p.chunks_exact(4);
        for w in &mut words {
            sum += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
        }
        let mut rest = words.remainder();
        if let [hi, lo, tail @ ..] = rest {
            sum += u64::from(u16::from_be_bytes([*hi, *lo]));
            rest = tail;
        }
        if let [b] = rest {
            odd = Some(*b);
        }
    }
    if let Some(hi) = odd {
        sum += u64::from(hi) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// UDP checksum with the IPv4 or IPv6 pseudo-header; never 0 (0 means "none" in IPv4).
fn udp_checksum(src: IpAddr, dst: IpAddr, udp_head: &[u8], payload: &[u8]) -> u16 {
    let len = ((udp_head.len() + 2 + payload.len()) as u32).to_be_bytes();
    let c = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => checksum(&[
            &s.octets(),
            &d.octets(),
            &[0, PROTO_UDP],
            &len[2..],
            udp_head,
            &[0, 0],
            payload,
        ]),
        (s, d) => checksum(&[
            &v6(s).octets(),
            &v6(d).octets(),
            &len,
            &[0, 0, 0, PROTO_UDP],
            udp_head,
            &[0, 0],
            payload,
        ]),
    };
    if c == 0 {
        0xffff
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(src: &str, dst: &str, payload: &[u8]) {
        let (src, dst) = (src.parse().unwrap(), dst.parse().unwrap());
        let mut buf = vec![0; 2100];
        let n = encap(src, dst, payload, &mut buf).unwrap();
        let (repr, got) = decap(&buf[..n]).unwrap();
        assert_eq!((repr.src, repr.dst, got), (src, dst, payload));
        assert_eq!(repr.buffer_len(), n);
        // Trailing bytes beyond the IP length are ignored.
        assert_eq!(decap(&buf[..n + 5]).unwrap().1, payload);
    }

    #[test]
    fn ipv4_and_ipv6_round_trip() {
        round_trip("198.51.100.7:50000", "10.0.0.1:443", b"hello quic");
        round_trip("[2001:db8::7]:50000", "[2001:db8::1]:443", &[0xab; 1200]);
        round_trip("198.51.100.7:1", "10.0.0.1:2", b"");
        round_trip("198.51.100.7:1", "10.0.0.1:2", b"odd");
    }

    /// RFC 1071 byte by byte: the reference the word-wise [`checksum`] must match.
    fn checksum_bytewise(parts: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        let mut sum = 0u32;
        for pair in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    proptest::proptest! {
        #[test]
        fn checksum_matches_bytewise(
            parts in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 0..5)
        ) {
            let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
            proptest::prop_assert_eq!(checksum(&refs), checksum_bytewise(&refs));
        }
    }

    #[test]
    fn ipv4_header_checksum_matches_a_known_header() {
        // The classic example header from RFC 1071 discussions: checksum of a valid header is 0.
        let mut buf = [0; 64];
        let n = encap(
            "192.168.0.1:1000".parse().unwrap(),
            "192.168.0.199:2000".parse().unwrap(),
            b"x",
            &mut buf,
        )
        .unwrap();
        assert_eq!(checksum(&[&buf[..20]]), 0);
        assert_eq!(n, 29);
        assert_eq!(&buf[..4], &[0x45, 0, 0, 29]);
    }

    #[test]
    fn refuses_bad_input() {
        let src: SocketAddr = "198.51.100.7:5".parse().unwrap();
        let dst: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        assert_eq!(EncapRepr::new(src, v6, 1), Err(EncapError::MixedFamilies));
        let mut buf = [0; 64];
        let n = encap(src, dst, b"data", &mut buf).unwrap();
        assert_eq!(decap(&buf[..n - 1]).unwrap_err(), EncapError::Truncated);
        let mut bad = buf;
        bad[n - 1] ^= 1;
        assert_eq!(decap(&bad[..n]).unwrap_err(), EncapError::Checksum);
        let mut bad = buf;
        bad[0] = 0x55;
        assert_eq!(decap(&bad[..n]).unwrap_err(), EncapError::Version(5));
        let mut bad = buf;
        bad[0] = 0x46;
        assert!(matches!(decap(&bad[..n]), Err(EncapError::Header(_))));
        let mut bad = buf;
        bad[9] = 6;
        assert_eq!(decap(&bad[..n]).unwrap_err(), EncapError::NotUdp(6));
        let mut bad = buf;
        bad[6] = 0x20; // more fragments
        assert!(matches!(decap(&bad[..n]), Err(EncapError::Header(_))));
        assert_eq!(decap(&[]).unwrap_err(), EncapError::Truncated);
        assert_eq!(
            encap(src, dst, b"data", &mut [0; 10]),
            Err(EncapError::Truncated)
        );
    }

    proptest! {
        #[test]
        fn decap_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = decap(&bytes);
        }

        #[test]
        fn round_trips(
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            a in any::<[u8; 16]>(),
            b in any::<[u8; 16]>(),
            p in any::<u16>(),
            q in any::<u16>(),
            four in any::<bool>(),
        ) {
            let (src, dst) = if four {
                (
                    SocketAddr::from(([a[0], a[1], a[2], a[3]], p)),
                    SocketAddr::from(([b[0], b[1], b[2], b[3]], q)),
                )
            } else {
                (SocketAddr::from((a, p)), SocketAddr::from((b, q)))
            };
            let mut buf = vec![0; 400];
            let n = encap(src, dst, &payload, &mut buf).unwrap();
            let (repr, got) = decap(&buf[..n]).unwrap();
            prop_assert_eq!((repr.src, repr.dst, got), (src, dst, &payload[..]));
        }
    }
}
