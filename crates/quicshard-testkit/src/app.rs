//! The transfer the simulated clients make, and the engine handler that serves it.
//!
//! A client opens one bidirectional stream and sends an 8-octet big-endian response length `N`,
//! then `upload` octets of [`pattern`], then FIN. The server ([`TransferServer`], on every
//! shard) checks the upload against the pattern and answers with `N` octets of the pattern and
//! FIN. The client checks the length and every octet of the answer.

use std::collections::HashMap;

use quicshard::quinn_proto::{ReadError, StreamId, VarInt, WriteError};
use quicshard::{ConnId, Handler, ShardCtx};

/// Octets of the request header (the response length).
pub const HEADER_LEN: usize = 8;

/// Application error code of a stream whose upload did not match the pattern.
pub const BAD_UPLOAD: u32 = 0x51;

/// Octet `i` of every upload and response.
pub fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// Octets written per `write` call. Why: the pattern is generated into a stack buffer of this
/// size; quinn-proto takes what its flow control allows.
const WRITE_CHUNK: usize = 4096;

/// One request's progress on the server.
#[derive(Default)]
struct Serve {
    header: [u8; HEADER_LEN],
    /// Octets received (header included).
    received: u64,
    fin: bool,
    /// Octets of the response written.
    sent: u64,
}

/// The server side of the transfer (see the module docs); one per shard.
#[derive(Default)]
pub struct TransferServer {
    streams: HashMap<(ConnId, StreamId), Serve>,
}

impl TransferServer {
    fn drive(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        let Some(c) = ctx.connection(conn) else {
            return;
        };
        let st = self.streams.entry((conn, stream)).or_default();
        if !st.fin {
            let mut bad = false;
            let mut recv = c.recv_stream(stream);
            if let Ok(mut chunks) = recv.read(true) {
                loop {
                    match chunks.next(usize::MAX) {
                        Ok(Some(chunk)) => {
                            for &b in chunk.bytes.iter() {
                                let i = st.received;
                                if let Some(h) = st.header.get_mut(i as usize) {
                                    *h = b;
                                } else if b != pattern(i - HEADER_LEN as u64) {
                                    bad = true;
                                }
                                st.received += 1;
                            }
                        }
                        Ok(None) => {
                            st.fin = true;
                            break;
                        }
                        Err(ReadError::Blocked) => break,
                        Err(ReadError::Reset(_)) => {
                            bad = true;
                            break;
                        }
                    }
                }
                let _ = chunks.finalize();
            }
            if bad || (st.fin && st.received < HEADER_LEN as u64) {
                let _ = c.recv_stream(stream).stop(VarInt::from_u32(BAD_UPLOAD));
                let _ = c.send_stream(stream).reset(VarInt::from_u32(BAD_UPLOAD));
                self.streams.remove(&(conn, stream));
                return;
            }
            if !st.fin {
                return;
            }
        }
        let want = u64::from_be_bytes(st.header);
        let mut buf = [0u8; WRITE_CHUNK];
        while st.sent < want {
            let n = (want - st.sent).min(WRITE_CHUNK as u64) as usize;
            for (k, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(st.sent + k as u64);
            }
            match c.send_stream(stream).write(&buf[..n]) {
                Ok(w) => st.sent += w as u64,
                Err(WriteError::Blocked) => return,
                Err(_) => {
                    self.streams.remove(&(conn, stream));
                    return;
                }
            }
        }
        let _ = c.send_stream(stream).finish();
        self.streams.remove(&(conn, stream));
    }
}

impl Handler for TransferServer {
    fn on_stream_opened(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        self.drive(ctx, conn, stream);
    }

    fn on_stream_readable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        self.drive(ctx, conn, stream);
    }

    fn on_stream_writable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        if self.streams.contains_key(&(conn, stream)) {
            self.drive(ctx, conn, stream);
        }
    }

    fn on_closed(
        &mut self,
        _ctx: &mut ShardCtx<'_>,
        conn: ConnId,
        _reason: &quicshard::quinn_proto::ConnectionError,
    ) {
        self.streams.retain(|(c, _), _| *c != conn);
    }
}
