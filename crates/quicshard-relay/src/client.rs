//! Relay clients over the engine's blocking handles, and the checked message format the relay
//! example and `crates/cli/tests/relay_cli.rs` publish: every payload names its publisher and
//! its number, and the rest of it is a function of the two, so a subscriber can verify each
//! message, that each publisher's messages arrive in order without a gap, and that the relay's
//! sequence numbers are consecutive.
//!
//! Every blocking call has a deadline (`deadline` arguments, or the stream's timeout).

use std::collections::HashMap;
use std::time::Instant;

use quicshard::handle::{ConnError, Connection, ReadError, RecvStream, SendStream, WriteError};

use crate::protocol::{encode_publish, Request, DELIVERY_HEADER, LAGGED, MAX_PAYLOAD, OK_LINE};

/// Why a client call failed.
#[derive(Debug)]
pub enum ClientError {
    /// Opening the stream failed.
    Conn(ConnError),
    /// Writing failed.
    Write(WriteError),
    /// Reading failed (a reset other than `LAGGED`, the connection, the deadline).
    Read(ReadError),
    /// The relay reset the subscription with `LAGGED`: this subscriber fell off the log.
    Lagged,
    /// The relay sent something the protocol does not allow.
    Protocol(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Conn(e) => write!(f, "open: {e}"),
            Self::Write(e) => write!(f, "write: {e}"),
            Self::Read(e) => write!(f, "read: {e}"),
            Self::Lagged => write!(f, "lagged"),
            Self::Protocol(m) => write!(f, "protocol: {m}"),
        }
    }
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` if the stream ended before the first byte.
fn read_exact(
    recv: &mut RecvStream,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<bool, ClientError> {
    let mut at = 0;
    while at < buf.len() {
        match recv.read_until(&mut buf[at..], Some(deadline)) {
            Ok(0) if at == 0 => return Ok(false),
            Ok(0) => return Err(ClientError::Protocol("stream ended inside a frame".into())),
            Ok(n) => at += n,
            Err(ReadError::Reset(code)) if code.into_inner() == u64::from(LAGGED) => {
                return Err(ClientError::Lagged)
            }
            Err(e) => return Err(ClientError::Read(e)),
        }
    }
    Ok(true)
}

/// A registered subscription: messages published from now on arrive in order.
pub struct Subscription {
    /// Kept open: finishing it is allowed, but there is nothing to say.
    _send: SendStream,
    recv: RecvStream,
}

impl Subscription {
    /// Subscribes to `topic` and waits for the relay's `OK`.
    pub fn open(conn: &Connection, topic: &str, deadline: Instant) -> Result<Self, ClientError> {
        let (mut send, mut recv) = conn
            .open_bi_until(Some(deadline))
            .map_err(ClientError::Conn)?;
        send.write_all_until(&Request::Sub(topic.into()).encode(), Some(deadline))
            .map_err(ClientError::Write)?;
        let mut ok = [0; OK_LINE.len()];
        if !read_exact(&mut recv, &mut ok, deadline)? || ok != OK_LINE {
            return Err(ClientError::Protocol(format!(
                "answer {ok:?} instead of OK"
            )));
        }
        Ok(Self { _send: send, recv })
    }

    /// The next message `(seq, payload)`; `None` if the relay ended the stream.
    pub fn next(&mut self, deadline: Instant) -> Result<Option<(u64, Vec<u8>)>, ClientError> {
        let mut head = [0; DELIVERY_HEADER];
        if !read_exact(&mut self.recv, &mut head, deadline)? {
            return Ok(None);
        }
        let seq = u64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(head[8..].try_into().expect("4 bytes")) as usize;
        if len > MAX_PAYLOAD {
            return Err(ClientError::Protocol(format!("payload of {len} bytes")));
        }
        let mut payload = vec![0; len];
        if !read_exact(&mut self.recv, &mut payload, deadline)? && len > 0 {
            return Err(ClientError::Protocol("stream ended inside a frame".into()));
        }
        Ok(Some((seq, payload)))
    }
}

/// A publisher stream on one topic.
pub struct Publisher {
    send: SendStream,
    recv: RecvStream,
}

impl Publisher {
    /// Opens a stream and sends `PUB topic`.
    pub fn open(conn: &Connection, topic: &str, deadline: Instant) -> Result<Self, ClientError> {
        let (mut send, recv) = conn
            .open_bi_until(Some(deadline))
            .map_err(ClientError::Conn)?;
        send.write_all_until(&Request::Pub(topic.into()).encode(), Some(deadline))
            .map_err(ClientError::Write)?;
        Ok(Self { send, recv })
    }

    /// Sends the payloads as one write (a burst).
    pub fn send(&mut self, payloads: &[Vec<u8>], deadline: Instant) -> Result<(), ClientError> {
        let mut buf = Vec::new();
        for p in payloads {
            encode_publish(p, &mut buf);
        }
        self.send
            .write_all_until(&buf, Some(deadline))
            .map_err(ClientError::Write)
    }

    /// Ends the stream and waits until the relay has taken every message (it finishes its side).
    pub fn finish(mut self, deadline: Instant) -> Result<(), ClientError> {
        self.send.finish().map_err(ClientError::Write)?;
        let mut rest = [0; 1];
        if read_exact(&mut self.recv, &mut rest, deadline)? {
            return Err(ClientError::Protocol(
                "the relay wrote on a PUB stream".into(),
            ));
        }
        Ok(())
    }
}

/// Bytes of a checked payload before its filler: publisher (u16) and number (u32).
const PAYLOAD_HEADER: usize = 6;

/// Message `number` of `publisher`, `len` bytes (at least 6).
pub fn payload(publisher: u16, number: u32, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len.max(PAYLOAD_HEADER));
    p.extend_from_slice(&publisher.to_be_bytes());
    p.extend_from_slice(&number.to_be_bytes());
    p.extend((PAYLOAD_HEADER..len).map(|i| filler(publisher, number, i)));
    p
}

fn filler(publisher: u16, number: u32, i: usize) -> u8 {
    (u32::from(publisher) * 31 + number * 7 + i as u32) as u8
}

/// Checks what one subscriber receives: consecutive sequence numbers, each publisher's messages
/// in order from 0, intact payloads.
#[derive(Debug, Default)]
pub struct Checker {
    next_seq: Option<u64>,
    next_number: HashMap<u16, u32>,
    /// Messages checked.
    pub received: u64,
}

impl Checker {
    /// Checks one message.
    pub fn check(&mut self, seq: u64, payload: &[u8]) -> Result<(), String> {
        if let Some(want) = self.next_seq {
            if seq != want {
                return Err(format!("seq {seq} after {}, expected {want}", want - 1));
            }
        }
        self.next_seq = Some(seq + 1);
        if payload.len() < PAYLOAD_HEADER {
            return Err(format!("seq {seq}: payload of {} bytes", payload.len()));
        }
        let publisher = u16::from_be_bytes([payload[0], payload[1]]);
        let number = u32::from_be_bytes(payload[2..6].try_into().expect("4 bytes"));
        let want = self.next_number.entry(publisher).or_insert(0);
        if number != *want {
            return Err(format!(
                "seq {seq}: publisher {publisher} message {number}, expected {want}"
            ));
        }
        *want += 1;
        if payload != self::payload(publisher, number, payload.len()).as_slice() {
            return Err(format!(
                "seq {seq}: publisher {publisher} message {number} corrupted"
            ));
        }
        self.received += 1;
        Ok(())
    }

    /// Messages received from `publisher`.
    pub fn from(&self, publisher: u16) -> u32 {
        self.next_number.get(&publisher).copied().unwrap_or(0)
    }
}
