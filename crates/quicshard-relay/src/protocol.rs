//! The relay's wire protocol (ALPN `relay`), shared by the relay server, its clients, the
//! `relay` example and `quicshard relay`.
//!
//! A client opens a stream and sends one request line, `SUB topic\n` or `PUB topic\n` (a topic is
//! 1..=[`MAX_TOPIC`] bytes of printable ASCII without spaces).
//!
//! - `PUB` (bidirectional or unidirectional stream): the client then sends publish frames,
//!   `u32 length (big endian) || payload` (at most [`MAX_PAYLOAD`] bytes), and FIN when done.
//!   The relay finishes its side of a bidirectional stream once it has taken every message.
//! - `SUB` (bidirectional stream only): the relay answers [`OK_LINE`] once the subscription is
//!   registered; every message published to the topic after that point follows as a delivery
//!   frame, `u64 seq || u32 length || payload` (big endian), where `seq` is the message's place in
//!   the topic's log (consecutive for a subscriber that keeps up). A subscriber that falls off
//!   the end of the topic's bounded log has the stream reset with [`LAGGED`].
//!
//! A malformed request or frame resets / stops the stream with [`BAD_REQUEST`].

use std::sync::Arc;

/// The ALPN protocol name.
pub const ALPN: &[u8] = b"relay";
/// Longest topic name.
pub const MAX_TOPIC: usize = 128;
/// Longest request line, newline included.
pub const MAX_REQUEST: usize = MAX_TOPIC + 5;
/// Largest payload of one message.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Bytes before a publish frame's payload (its length).
pub const PUBLISH_HEADER: usize = 4;
/// Bytes before a delivery frame's payload (sequence number and length).
pub const DELIVERY_HEADER: usize = 12;
/// What the relay answers to `SUB` once the subscription is registered.
pub const OK_LINE: &[u8] = b"OK\n";
/// Stream error code: the subscriber fell off the end of the topic's log.
pub const LAGGED: u32 = 0x4c;
/// Stream error code: a malformed request line or frame.
pub const BAD_REQUEST: u32 = 0x40;

/// A message as the relay stores and sends it: an encoded delivery frame, shared by every
/// subscriber that receives it.
pub type Frame = Arc<Vec<u8>>;

/// What a client asks for on its first stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Receive the messages of this topic.
    Sub(String),
    /// Send messages to this topic.
    Pub(String),
}

impl Request {
    /// The request line, newline included.
    pub fn encode(&self) -> Vec<u8> {
        let (verb, topic) = match self {
            Self::Sub(t) => ("SUB", t),
            Self::Pub(t) => ("PUB", t),
        };
        format!("{verb} {topic}\n").into_bytes()
    }

    /// Parses a request line without its newline.
    pub fn parse(line: &[u8]) -> Result<Self, &'static str> {
        let line = std::str::from_utf8(line).map_err(|_| "request is not UTF-8")?;
        let (verb, topic) = line.split_once(' ').ok_or("request is not `VERB topic`")?;
        if topic.is_empty() || topic.len() > MAX_TOPIC {
            return Err("topic length out of range");
        }
        if !topic.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("topic is not printable ASCII");
        }
        match verb {
            "SUB" => Ok(Self::Sub(topic.to_owned())),
            "PUB" => Ok(Self::Pub(topic.to_owned())),
            _ => Err("verb is neither SUB nor PUB"),
        }
    }
}

/// Appends a publish frame carrying `payload` to `out`.
pub fn encode_publish(payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// A delivery frame for message `seq`.
pub fn delivery_frame(seq: u64, payload: &[u8]) -> Frame {
    let mut f = Vec::with_capacity(DELIVERY_HEADER + payload.len());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    Arc::new(f)
}

/// Splits a byte stream of publish frames into payloads; keeps at most one partial frame.
#[derive(Debug, Default)]
pub struct PublishDecoder {
    buf: Vec<u8>,
}

impl PublishDecoder {
    /// Adds `data`; appends every payload it completes to `out`. A length above [`MAX_PAYLOAD`]
    /// is an error (the stream is garbage from there on).
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), &'static str> {
        self.buf.extend_from_slice(data);
        let mut at = 0;
        while self.buf.len() - at >= PUBLISH_HEADER {
            let mut len = [0; PUBLISH_HEADER];
            len.copy_from_slice(&self.buf[at..at + PUBLISH_HEADER]);
            let len = u32::from_be_bytes(len) as usize;
            if len > MAX_PAYLOAD {
                return Err("publish frame longer than the maximum payload");
            }
            if self.buf.len() - at < PUBLISH_HEADER + len {
                break;
            }
            out.push(self.buf[at + PUBLISH_HEADER..at + PUBLISH_HEADER + len].to_vec());
            at += PUBLISH_HEADER + len;
        }
        self.buf.drain(..at);
        Ok(())
    }

    /// Whether a partial frame is buffered (an error if the stream ends here).
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }
}
