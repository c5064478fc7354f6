//! Sans-IO parsing of just the QUIC invariant header fields a load balancer needs.
//!
//! This module owns [`Header`] (short or long header with its connection IDs), [`Malformed`]
//! (why a datagram has no usable header) and [`classify`] (fast path or slow path). It follows
//! RFC 8999 (version-independent properties): a long header is
//! `first | version(4) | dcid_len | dcid | scid_len | scid | ...`; a short header is
//! `first | dcid | ...` where the DCID length is not on the wire. The caller supplies it from the
//! first octet of the DCID (its config rotation bits select a QUIC-LB config's CID length).
//!
//! # Panics
//! Nothing here panics on any input: every slice is taken with a checked `get`.

/// Long header form bit (RFC 8999 §5.1).
const LONG_HEADER_BIT: u8 = 0x80;
/// Offset of the DCID length octet in a long header.
const LONG_DCID_LEN_OFFSET: usize = 5;
/// Longest CID in QUIC v1 and v2 (RFC 9000 §17.2).
pub const MAX_V1_CID_LEN: usize = 20;
/// QUIC version 1 (RFC 9000).
pub const VERSION_1: u32 = 0x0000_0001;
/// QUIC version 2 (RFC 9369).
pub const VERSION_2: u32 = 0x6b33_43cf;
/// Versions whose CID lengths and semantics we know; others take the slow path.
pub const KNOWN_VERSIONS: [u32; 2] = [VERSION_1, VERSION_2];

/// The invariant fields of a QUIC packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header<'a> {
    /// A short header packet: only the DCID.
    Short {
        /// Destination connection ID, of the length the caller gave for its first octet.
        dcid: &'a [u8],
    },
    /// A long header packet.
    Long {
        /// The version field (0 is version negotiation).
        version: u32,
        /// Destination connection ID.
        dcid: &'a [u8],
        /// Source connection ID.
        scid: &'a [u8],
    },
}

impl<'a> Header<'a> {
    /// The destination connection ID.
    pub fn dcid(&self) -> &'a [u8] {
        match *self {
            Header::Short { dcid } | Header::Long { dcid, .. } => dcid,
        }
    }
}

/// Why a datagram carries no usable QUIC header. Caused by the network; such datagrams are
/// counted and dropped (or routed by address only, see [`classify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// A zero-length datagram.
    #[error("empty datagram")]
    Empty,
    /// The datagram ends before the header fields it announces.
    #[error("datagram of {len} bytes is too short: the header needs {need}")]
    TooShort {
        /// Bytes in the datagram.
        len: usize,
        /// Bytes the header needs.
        need: usize,
    },
    /// A known version with a CID longer than 20 bytes.
    #[error("connection ID of {0} bytes is too long for a known version")]
    CidTooLong(usize),
}

/// Which worker handles a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Processors: decode the CID, fall back to the tables.
    Fast,
    /// Slow path: route by address only.
    Slow(SlowReason),
}

/// Why a parsed packet takes the slow path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowReason {
    /// A long header of a version we do not know: its CIDs may mean anything, so it is routed
    /// by the 4-tuple fallback only.
    UnknownVersion,
    /// A version negotiation packet (version 0): clients never send one; dropped.
    VersionNegotiation,
}

/// Parses the invariant header. `short_dcid_len(first_dcid_octet)` gives the DCID length of a
/// short header packet (at most 20).
pub fn parse(
    datagram: &[u8],
    short_dcid_len: impl FnOnce(u8) -> usize,
) -> Result<Header<'_>, Malformed> {
    let first = *datagram.first().ok_or(Malformed::Empty)?;
    let too_short = |need| Malformed::TooShort {
        len: datagram.len(),
        need,
    };
    if first & LONG_HEADER_BIT == 0 {
        let dcid_first = *datagram.get(1).ok_or(too_short(2))?;
        let len = short_dcid_len(dcid_first).min(MAX_V1_CID_LEN);
        let dcid = datagram.get(1..1 + len).ok_or(too_short(1 + len))?;
        return Ok(Header::Short { dcid });
    }
    let version_bytes = datagram.get(1..5).ok_or(too_short(6))?;
    let version = u32::from_be_bytes([
        version_bytes[0],
        version_bytes[1],
        version_bytes[2],
        version_bytes[3],
    ]);
    let known = KNOWN_VERSIONS.contains(&version);
    let dcid_len = usize::from(*datagram.get(LONG_DCID_LEN_OFFSET).ok_or(too_short(6))?);
    if known && dcid_len > MAX_V1_CID_LEN {
        return Err(Malformed::CidTooLong(dcid_len));
    }
    let dcid_start = LONG_DCID_LEN_OFFSET + 1;
    let dcid_end = dcid_start + dcid_len;
    let dcid = datagram
        .get(dcid_start..dcid_end)
        .ok_or(too_short(dcid_end + 1))?;
    let scid_len = usize::from(*datagram.get(dcid_end).ok_or(too_short(dcid_end + 1))?);
    if known && scid_len > MAX_V1_CID_LEN {
        return Err(Malformed::CidTooLong(scid_len));
    }
    let scid_end = dcid_end + 1 + scid_len;
    let scid = datagram
        .get(dcid_end + 1..scid_end)
        .ok_or(too_short(scid_end))?;
    Ok(Header::Long {
        version,
        dcid,
        scid,
    })
}

/// Chooses the worker for a parsed header.
pub fn classify(header: &Header<'_>) -> Path {
    match *header {
        Header::Short { .. } => Path::Fast,
        Header::Long { version: 0, .. } => Path::Slow(SlowReason::VersionNegotiation),
        Header::Long { version, .. } if KNOWN_VERSIONS.contains(&version) => Path::Fast,
        Header::Long { .. } => Path::Slow(SlowReason::UnknownVersion),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn long(version: u32, dcid: &[u8], scid: &[u8]) -> Vec<u8> {
        let mut v = vec![0xc0];
        v.extend_from_slice(&version.to_be_bytes());
        v.push(dcid.len() as u8);
        v.extend_from_slice(dcid);
        v.push(scid.len() as u8);
        v.extend_from_slice(scid);
        v.extend_from_slice(&[0; 20]);
        v
    }

    #[test]
    fn short_header_uses_the_callers_length() {
        let d = [0x40, 0x21, 2, 3, 4, 5, 6, 7, 8, 9];
        let h = parse(&d, |first| {
            assert_eq!(first, 0x21);
            4
        })
        .unwrap();
        assert_eq!(
            h,
            Header::Short {
                dcid: &[0x21, 2, 3, 4]
            }
        );
        assert_eq!(classify(&h), Path::Fast);
        assert_eq!(
            parse(&d, |_| 12),
            Err(Malformed::TooShort { len: 10, need: 13 })
        );
        assert_eq!(
            parse(&[0x40], |_| 4),
            Err(Malformed::TooShort { len: 1, need: 2 })
        );
        assert_eq!(parse(&[], |_| 4), Err(Malformed::Empty));
    }

    #[test]
    fn long_header_fields() {
        let d = long(VERSION_1, &[1, 2, 3], &[9; 8]);
        let h = parse(&d, |_| unreachable!()).unwrap();
        assert_eq!(
            h,
            Header::Long {
                version: 1,
                dcid: &[1, 2, 3],
                scid: &[9; 8]
            }
        );
        assert_eq!(h.dcid(), &[1, 2, 3]);
        assert_eq!(classify(&h), Path::Fast);
        let v2 = long(VERSION_2, &[], &[]);
        assert_eq!(classify(&parse(&v2, |_| 0).unwrap()), Path::Fast);
        let vn = long(0, &[1], &[2]);
        assert_eq!(
            classify(&parse(&vn, |_| 0).unwrap()),
            Path::Slow(SlowReason::VersionNegotiation)
        );
    }

    #[test]
    fn unknown_versions_may_have_long_cids() {
        let d = long(0x1a2a_3a4a, &[7; 40], &[8; 30]);
        let h = parse(&d, |_| 0).unwrap();
        assert_eq!(h.dcid().len(), 40);
        assert_eq!(classify(&h), Path::Slow(SlowReason::UnknownVersion));
        assert_eq!(
            parse(&long(VERSION_1, &[7; 21], &[]), |_| 0),
            Err(Malformed::CidTooLong(21))
        );
        assert_eq!(
            parse(&long(VERSION_1, &[7; 4], &[1; 21]), |_| 0),
            Err(Malformed::CidTooLong(21))
        );
    }

    #[test]
    fn truncated_long_headers() {
        let d = long(VERSION_1, &[1, 2, 3, 4], &[5, 6]);
        // Header is 1 + 4 + 1 + 4 + 1 + 2 = 13 bytes.
        for cut in 0..13 {
            assert!(parse(&d[..cut], |_| 0).is_err(), "cut {cut}");
        }
        assert!(parse(&d[..13], |_| 0).is_ok());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), n in 0usize..40) {
            if let Ok(h) = parse(&bytes, |_| n) {
                prop_assert!(h.dcid().len() <= bytes.len());
                let _ = classify(&h);
            }
        }
    }
}
