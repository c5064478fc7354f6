//! The server side of hq-interop, perf and echo, as one engine [`Handler`] per shard.
//!
//! [`Handler`]: quicshard::Handler

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quicshard::{ConnId, Handler, ShardCtx};
use quinn_proto::{Connection, Dir, StreamId, VarInt};

use crate::stream::{read_stream, Body, Outgoing, Pumped, CHUNK};
use crate::{
    alpn, open_under, parse_get, ALPN_ECHO, ALPN_HQ, ALPN_PERF, BAD_REQUEST, HQ_NOT_FOUND,
    MAX_REQUEST,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Hq,
    Perf,
    Echo,
}

/// One request/response stream.
struct Exchange {
    /// hq: the request line so far; perf: the 8-byte length.
    request: Vec<u8>,
    /// The response in progress (echo: the queue of bytes to send back).
    response: Option<Outgoing>,
    request_done: bool,
}

/// Per-shard server state: each connection's protocol and open exchanges.
pub struct Server {
    root: Option<Arc<PathBuf>>,
    conns: HashMap<ConnId, (Proto, HashMap<StreamId, Exchange>)>,
}

impl Server {
    /// A server serving files under `root` (canonical), if any.
    pub fn new(root: Option<Arc<PathBuf>>) -> Self {
        Self {
            root,
            conns: HashMap::new(),
        }
    }

    fn proto(conn: &Connection) -> Option<Proto> {
        match alpn(conn)?.as_slice() {
            ALPN_HQ => Some(Proto::Hq),
            ALPN_PERF => Some(Proto::Perf),
            ALPN_ECHO => Some(Proto::Echo),
            _ => None,
        }
    }

    /// The connection's protocol and exchanges, set up on first use; a connection without a
    /// known ALPN is closed.
    fn state(
        &mut self,
        ctx: &mut ShardCtx<'_>,
        id: ConnId,
    ) -> Option<&mut (Proto, HashMap<StreamId, Exchange>)> {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.conns.entry(id) {
            match Self::proto(ctx.connection(id)?) {
                Some(p) => {
                    slot.insert((p, HashMap::new()));
                }
                None => {
                    ctx.close(id, 0x178, b"no application protocol");
                    return None;
                }
            }
        }
        self.conns.get_mut(&id)
    }

    fn drive(&mut self, ctx: &mut ShardCtx<'_>, id: ConnId, sid: StreamId) {
        let root = self.root.clone();
        let Some((proto, streams)) = self.state(ctx, id) else {
            return;
        };
        let proto = *proto;
        let Some(conn) = ctx.connection(id) else {
            return;
        };
        let ex = streams.entry(sid).or_insert_with(|| Exchange {
            request: Vec::new(),
            response: None,
            request_done: false,
        });
        // Read and write in turn: an echo reads at most a queue's worth at a time, and data the
        // peer already sent raises no new readable event, so keep going while reads progress.
        let root = root.as_deref().map(|p| p.as_path());
        let done = loop {
            let room_before = ex
                .response
                .as_ref()
                .map_or(usize::MAX, Outgoing::queue_room);
            let read = if ex.request_done {
                0
            } else {
                read_request(proto, conn, sid, ex, root)
            };
            let done = ex.response.as_mut().map(|out| out.pump(conn, sid));
            // The queue drained: if the last read could have been cut short by a full queue (or
            // got data), more may be buffered; a read into an empty queue that finds nothing
            // means the next data will raise its own readable event.
            let maybe_more = read > 0 || room_before < CHUNK;
            if !(done == Some(Pumped::Starved) && maybe_more) {
                break done;
            }
        };
        if matches!(done, Some(Pumped::Finished | Pumped::Gone)) || ex_is_dead(ex) {
            streams.remove(&sid);
        }
    }
}

impl Server {
    /// Whether `stream` has an exchange in progress (events for finished ones are ignored).
    fn is_open(&self, conn: ConnId, stream: StreamId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|(_, s)| s.contains_key(&stream))
    }
}

fn ex_is_dead(ex: &Exchange) -> bool {
    ex.request_done && ex.response.is_none()
}

/// Reads request bytes and, once the request is complete, starts the response. Returns how many
/// bytes it read.
fn read_request(
    proto: Proto,
    conn: &mut Connection,
    sid: StreamId,
    ex: &mut Exchange,
    root: Option<&Path>,
) -> usize {
    let limit = match (proto, &ex.response) {
        (Proto::Echo, Some(out)) => out.queue_room(),
        (Proto::Echo, None) => CHUNK,
        _ => usize::MAX,
    };
    let mut too_long = false;
    let mut read = 0;
    let outcome = {
        let request = &mut ex.request;
        let response = &mut ex.response;
        read_stream(conn, sid, limit, |bytes| {
            read += bytes.len();
            match proto {
                Proto::Hq => {
                    if request.len() + bytes.len() > MAX_REQUEST {
                        too_long = true;
                    } else {
                        request.extend_from_slice(bytes);
                    }
                }
                Proto::Perf => {
                    // keep only the 8-byte length; the rest of the upload is drained
                    let want = 8usize.saturating_sub(request.len());
                    request.extend_from_slice(&bytes[..want.min(bytes.len())]);
                }
                Proto::Echo => {
                    let out =
                        response.get_or_insert_with(|| Outgoing::new(Body::Queue { done: false }));
                    out.enqueue(bytes);
                }
            }
        })
    };
    if outcome.reset.is_some() || too_long {
        if too_long {
            let _ = conn.recv_stream(sid).stop(VarInt::from_u32(BAD_REQUEST));
        }
        let _ = conn.send_stream(sid).reset(VarInt::from_u32(BAD_REQUEST));
        ex.request_done = true;
        ex.response = None;
        return read;
    }
    let line_complete = proto == Proto::Hq && ex.request.windows(2).any(|w| w == b"\r\n");
    if !(outcome.fin || line_complete) {
        return read;
    }
    ex.request_done = true;
    if line_complete && !outcome.fin {
        // the request is complete; the rest of the stream is not needed
        let _ = conn.recv_stream(sid).stop(VarInt::from_u32(0));
    }
    ex.response = match proto {
        Proto::Echo => {
            let mut out = ex
                .response
                .take()
                .unwrap_or_else(|| Outgoing::new(Body::Queue { done: true }));
            out.body = Body::Queue { done: true };
            Some(out)
        }
        Proto::Perf => match <[u8; 8]>::try_from(&ex.request[..]) {
            Ok(len) => Some(Outgoing::new(Body::Pattern(u64::from_be_bytes(len)))),
            Err(_) => reset(conn, sid, BAD_REQUEST),
        },
        Proto::Hq => match parse_get(&ex.request).and_then(|p| open_under(root?, p)) {
            Some(file) => Some(Outgoing::new(Body::File(file))),
            None => reset(conn, sid, HQ_NOT_FOUND),
        },
    };
    read
}

fn reset(conn: &mut Connection, sid: StreamId, code: u32) -> Option<Outgoing> {
    let _ = conn.send_stream(sid).reset(VarInt::from_u32(code));
    None
}

impl Handler for Server {
    fn on_connection(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId) {
        self.state(ctx, conn);
    }

    fn on_stream_opened(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        // every protocol here answers on the request's stream: a client's unidirectional stream
        // has no way back, so it is refused (STOP_SENDING) and never served
        if stream.dir() == Dir::Uni {
            if let Some(c) = ctx.connection(conn) {
                let _ = c.recv_stream(stream).stop(VarInt::from_u32(BAD_REQUEST));
            }
            return;
        }
        self.drive(ctx, conn, stream);
    }

    fn on_stream_readable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        if self.is_open(conn, stream) {
            self.drive(ctx, conn, stream);
        }
    }

    fn on_stream_writable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        if self.is_open(conn, stream) {
            self.drive(ctx, conn, stream);
        }
    }

    fn on_closed(
        &mut self,
        _ctx: &mut ShardCtx<'_>,
        conn: ConnId,
        _reason: &quinn_proto::ConnectionError,
    ) {
        self.conns.remove(&conn);
    }
}
