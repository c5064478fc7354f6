//! The one SETTINGS rule h3 0.0.8 does not enforce: RFC 9297 §2.1.1, "An endpoint that receives
//! SETTINGS_H3_DATAGRAM with a value of 1 ... without the max_datagram_frame_size transport
//! parameter MUST close the connection with H3_SETTINGS_ERROR".
//!
//! [`ControlPeek`] watches the first bytes of a peer's unidirectional stream as h3 reads them
//! (stream type, then the control stream's first frame) and reports whether that stream is a
//! control stream whose SETTINGS frame sets SETTINGS_H3_DATAGRAM to 1. It copies at most
//! [`PEEK_LIMIT`] bytes; h3 itself still parses and validates everything. The stream wrapper in
//! [`crate::quic`] closes the connection when the peer did not send `max_datagram_frame_size`.

/// Unidirectional stream type of the control stream (RFC 9114 §6.2.1).
const CONTROL_STREAM: u64 = 0x00;
/// Frame type SETTINGS (RFC 9114 §7.2.4).
const SETTINGS_FRAME: u64 = 0x04;
/// SETTINGS_H3_DATAGRAM (RFC 9297 §2.1.1).
pub(crate) const SETTINGS_H3_DATAGRAM: u64 = 0x33;
/// H3_SETTINGS_ERROR (RFC 9114 §8.1).
pub(crate) const H3_SETTINGS_ERROR: u64 = 0x109;
/// Bytes of a stream's start kept to find the SETTINGS frame. Why: a SETTINGS frame is a few
/// dozen bytes in practice; one larger than this is left to h3 unchecked rather than buffered.
pub(crate) const PEEK_LIMIT: usize = 1024;

/// What the start of a peer's unidirectional stream says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not enough bytes yet.
    NeedMore,
    /// A control stream whose SETTINGS enable HTTP/3 datagrams.
    DatagramsOn,
    /// Anything else (another stream type, no such setting, a frame too large to peek at).
    Nothing,
}

/// The start of one unidirectional stream, up to [`PEEK_LIMIT`] bytes.
#[derive(Debug, Default)]
pub(crate) struct ControlPeek {
    seen: Vec<u8>,
}

impl ControlPeek {
    /// Feeds the next bytes of the stream; once the answer is not [`Verdict::NeedMore`] the
    /// caller stops feeding.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Verdict {
        let room = PEEK_LIMIT - self.seen.len();
        self.seen.extend_from_slice(&bytes[..bytes.len().min(room)]);
        match judge(&self.seen) {
            Verdict::NeedMore if self.seen.len() == PEEK_LIMIT => Verdict::Nothing,
            v => v,
        }
    }
}

/// A QUIC variable-length integer at the start of `b`: the value and its length.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let len = 1usize << (first >> 6);
    let bytes = b.get(..len)?;
    let mut v = u64::from(first & 0x3f);
    for &x in &bytes[1..] {
        v = (v << 8) | u64::from(x);
    }
    Some((v, len))
}

fn judge(b: &[u8]) -> Verdict {
    let Some((kind, a)) = varint(b) else {
        return Verdict::NeedMore;
    };
    if kind != CONTROL_STREAM {
        return Verdict::Nothing;
    }
    let Some((frame, f)) = varint(&b[a..]) else {
        return Verdict::NeedMore;
    };
    if frame != SETTINGS_FRAME {
        return Verdict::Nothing; // h3 answers H3_MISSING_SETTINGS itself
    }
    let Some((len, l)) = varint(&b[a + f..]) else {
        return Verdict::NeedMore;
    };
    let start = a + f + l;
    let Some(mut payload) = usize::try_from(len)
        .ok()
        .and_then(|len| b.get(start..start.checked_add(len)?))
    else {
        return Verdict::NeedMore;
    };
    while !payload.is_empty() {
        // a malformed payload is h3's to refuse (H3_FRAME_ERROR)
        let Some((id, i)) = varint(payload) else {
            return Verdict::Nothing;
        };
        let Some((value, v)) = varint(&payload[i..]) else {
            return Verdict::Nothing;
        };
        if id == SETTINGS_H3_DATAGRAM && value == 1 {
            return Verdict::DatagramsOn;
        }
        payload = &payload[i + v..];
    }
    Verdict::Nothing
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control stream's start: type, SETTINGS with `pairs`.
    fn control(pairs: &[(u8, u8)]) -> Vec<u8> {
        let mut payload = Vec::new();
        for &(id, v) in pairs {
            payload.extend([id, v]);
        }
        let mut b = vec![0x00, 0x04, payload.len() as u8];
        b.extend(payload);
        b
    }

    #[test]
    fn finds_h3_datagram_one_byte_at_a_time() {
        let bytes = control(&[(0x01, 0), (0x33, 1), (0x07, 0)]);
        let mut p = ControlPeek::default();
        let verdicts: Vec<Verdict> = bytes.iter().map(|b| p.feed(&[*b])).collect();
        assert_eq!(verdicts.last(), Some(&Verdict::DatagramsOn));
        assert!(verdicts[..verdicts.len() - 1]
            .iter()
            .all(|v| *v == Verdict::NeedMore));
    }

    #[test]
    fn other_streams_and_values_are_nothing() {
        let judge_all = |b: &[u8]| ControlPeek::default().feed(b);
        assert_eq!(judge_all(&control(&[(0x33, 0)])), Verdict::Nothing);
        assert_eq!(judge_all(&control(&[(0x06, 1)])), Verdict::Nothing);
        assert_eq!(judge_all(&control(&[])), Verdict::Nothing);
        // a QPACK encoder stream, a push stream, a frame other than SETTINGS
        assert_eq!(judge_all(&[0x02, 0x33, 0x01]), Verdict::Nothing);
        assert_eq!(judge_all(&[0x01]), Verdict::Nothing);
        assert_eq!(judge_all(&[0x00, 0x07, 0x01, 0x00]), Verdict::Nothing);
        // a two-byte setting ID (0x33 encoded long) still counts
        assert_eq!(
            judge_all(&[0x00, 0x04, 0x03, 0x40, 0x33, 0x01]),
            Verdict::DatagramsOn
        );
    }

    #[test]
    fn a_huge_frame_is_not_buffered() {
        let mut p = ControlPeek::default();
        // SETTINGS claiming 16383 bytes of payload
        assert_eq!(p.feed(&[0x00, 0x04, 0x7f, 0xff]), Verdict::NeedMore);
        let chunk = [0x21u8; 512];
        assert_eq!(p.feed(&chunk), Verdict::NeedMore);
        assert_eq!(p.feed(&chunk), Verdict::Nothing);
        assert!(p.seen.len() <= PEEK_LIMIT);
    }
}
