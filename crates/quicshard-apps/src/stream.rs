//! Moving bytes between quinn-proto streams and response bodies, bounded and without blocking;
//! the perf pattern those bodies carry.

use std::fs::File;
use std::io::Read;

use bytes::Bytes;
use quinn_proto::{Connection, ReadError, StreamId, VarInt, WriteError};

/// How much a stream buffers between reading a body and the stream accepting it.
pub const CHUNK: usize = 64 * 1024;

/// What a response stream still has to send.
pub enum Body {
    /// A file's remaining bytes.
    File(File),
    /// `n` more pattern bytes (perf downloads).
    Pattern(u64),
    /// Bytes queued by the protocol itself (echo).
    Queue {
        /// The peer finished: the body ends with the queue.
        done: bool,
    },
}

/// A response in progress: the body and the bytes read from it but not yet accepted by QUIC.
pub struct Outgoing {
    /// What is left to read.
    pub body: Body,
    /// Bytes read from the body, not yet accepted by QUIC from `pos` on.
    pub pending: Vec<u8>,
    /// How much of `pending` QUIC has accepted.
    pub pos: usize,
    /// Body bytes QUIC has accepted.
    pub sent: u64,
    /// FIN was sent: pumping again is a no-op.
    finished: bool,
}

/// What [`Outgoing::pump`] left behind.
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped {
    /// Flow control stopped us; wait for writable.
    Blocked,
    /// An echo queue is empty but the request is still open.
    Starved,
    /// Everything was written and the stream finished.
    Finished,
    /// The peer stopped the stream or it is gone.
    Gone,
}

/// The byte at `offset` of a perf download: cheap to make, and checkable by the client.
pub fn pattern_byte(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// Period of the perf pattern (a prime, so it does not line up with any buffer size).
const PATTERN_PERIOD: usize = 251;

/// Up to `max` (at most [`CHUNK`]) pattern bytes starting at `offset`, from a table built once.
/// Why: making or checking the pattern a byte at a time (`% 251` each) cost a third of the
/// server's CPU in bulk transfers; a slice of the table is a `memcmp`, and (as `Bytes`) no copy
/// at all.
pub fn pattern(offset: u64, max: u64) -> &'static [u8] {
    static TABLE: std::sync::OnceLock<&'static [u8]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let t: Vec<u8> = (0..(CHUNK + PATTERN_PERIOD) as u64)
            .map(pattern_byte)
            .collect();
        // one table for the life of the process, shared by every perf stream
        Box::leak(t.into_boxed_slice())
    });
    let start = (offset % PATTERN_PERIOD as u64) as usize;
    &table[start..start + max.min(CHUNK as u64) as usize]
}

/// [`pattern`] as `Bytes` pointing into the static table: quinn-proto keeps it without copying.
fn pattern_bytes(offset: u64, n: usize) -> Bytes {
    Bytes::from_static(pattern(offset, n as u64))
}

/// The offset of the first byte of `bytes` (which starts at `offset` of the body) that is not
/// the pattern's.
pub fn pattern_mismatch(offset: u64, bytes: &[u8]) -> Option<u64> {
    let mut done = 0;
    for piece in bytes.chunks(CHUNK) {
        let want = pattern(offset + done as u64, piece.len() as u64);
        if piece != want {
            let i = piece
                .iter()
                .zip(want)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Some(offset + (done + i) as u64);
        }
        done += piece.len();
    }
    None
}

impl Outgoing {
    /// A response about to send `body`.
    pub fn new(body: Body) -> Self {
        Self {
            body,
            pending: Vec::with_capacity(CHUNK),
            pos: 0,
            sent: 0,
            finished: false,
        }
    }

    /// Room left in the echo queue before the reader must stop (backpressure).
    pub fn queue_room(&self) -> usize {
        CHUNK.saturating_sub(self.pending.len() - self.pos)
    }

    /// Appends to the echo queue, first dropping the part already sent so the buffer stays
    /// within about two chunks.
    pub fn enqueue(&mut self, bytes: &[u8]) {
        if self.pos >= CHUNK {
            self.pending.drain(..self.pos);
            self.pos = 0;
        }
        self.pending.extend_from_slice(bytes);
    }

    /// Writes as much as the stream takes, refilling from the body; finishes at the end.
    pub fn pump(&mut self, conn: &mut Connection, id: StreamId) -> Pumped {
        if self.finished {
            return Pumped::Finished;
        }
        loop {
            if let Some(p) = self.pump_pattern(conn, id) {
                return p;
            }
            if self.pos == self.pending.len() {
                self.pending.clear();
                self.pos = 0;
                match self.refill() {
                    Ok(true) => {}
                    Ok(false) => {
                        if matches!(self.body, Body::Queue { done: false }) {
                            return Pumped::Starved;
                        }
                        return match conn.send_stream(id).finish() {
                            Ok(()) => {
                                self.finished = true;
                                Pumped::Finished
                            }
                            Err(_) => Pumped::Gone,
                        };
                    }
                    Err(_) => {
                        let _ = conn
                            .send_stream(id)
                            .reset(VarInt::from_u32(crate::BAD_REQUEST));
                        return Pumped::Gone;
                    }
                }
            }
            match conn.send_stream(id).write(&self.pending[self.pos..]) {
                Ok(n) => {
                    self.pos += n;
                    self.sent += n as u64;
                }
                Err(WriteError::Blocked) => return Pumped::Blocked,
                Err(_) => return Pumped::Gone,
            }
        }
    }

    /// A pattern body goes to quinn-proto as slices of the static table (no copy); `None` once
    /// it is all written (or the body is not a pattern), else why it stopped.
    fn pump_pattern(&mut self, conn: &mut Connection, id: StreamId) -> Option<Pumped> {
        let Body::Pattern(left) = &mut self.body else {
            return None;
        };
        while *left > 0 {
            let n = (*left).min(CHUNK as u64) as usize;
            let mut chunk = [pattern_bytes(self.sent, n)];
            match conn.send_stream(id).write_chunks(&mut chunk) {
                Ok(w) => {
                    self.sent += w.bytes as u64;
                    *left -= w.bytes as u64;
                }
                Err(WriteError::Blocked) => return Some(Pumped::Blocked),
                Err(_) => return Some(Pumped::Gone),
            }
        }
        None
    }

    /// Fills `pending` from the body; `Ok(false)` when the body has nothing more now.
    fn refill(&mut self) -> std::io::Result<bool> {
        match &mut self.body {
            Body::File(f) => {
                self.pending.resize(CHUNK, 0);
                let n = f.read(&mut self.pending)?;
                self.pending.truncate(n);
                Ok(n > 0)
            }
            // written straight from the table by `pump_pattern`
            Body::Pattern(_) => Ok(false),
            Body::Queue { .. } => Ok(false),
        }
    }
}

/// What reading a stream produced.
pub struct ReadOutcome {
    /// The peer finished the stream.
    pub fin: bool,
    /// The peer reset the stream with this code.
    pub reset: Option<VarInt>,
}

/// Reads what is available (at most `limit` bytes), handing each chunk to `sink`.
pub fn read_stream(
    conn: &mut Connection,
    id: StreamId,
    limit: usize,
    mut sink: impl FnMut(&[u8]),
) -> ReadOutcome {
    let mut out = ReadOutcome {
        fin: false,
        reset: None,
    };
    let mut recv = conn.recv_stream(id);
    let Ok(mut chunks) = recv.read(true) else {
        // already finished or reset and consumed: nothing more will come
        out.fin = true;
        return out;
    };
    let mut left = limit;
    while left > 0 {
        match chunks.next(left) {
            Ok(Some(chunk)) => {
                left -= chunk.bytes.len();
                sink(&chunk.bytes);
            }
            Ok(None) => {
                out.fin = true;
                break;
            }
            Err(ReadError::Blocked) => break,
            Err(ReadError::Reset(code)) => {
                out.reset = Some(code);
                break;
            }
        }
    }
    let _ = chunks.finalize();
    out
}
