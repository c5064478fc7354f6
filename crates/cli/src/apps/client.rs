//! The client side of hq-interop and perf, as one engine [`Handler`] per shard, driven by plans
//! submitted with `Remote::run_on` and reporting to the submitting thread over a bounded channel.
//! An open-loop connection (`bench --rate`, see `loadgen/openloop.rs`) also has a [`Schedule`]: a bounded
//! queue of due times the load generator fills and [`Client::issue_scheduled`] turns into streams.
//!
//! [`Handler`]: quicshard::Handler

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use quicshard::{ConnId, Handler, ShardCtx};
use quinn_proto::{ConnectionError, Dir, StreamId};

use super::stream::{pattern_mismatch, read_stream, Body, Outgoing, Pumped};

/// A client engine for connections to `server` (its sockets bound to the wildcard address of the
/// server's family), with `shards` shards or one per core.
pub(crate) fn engine(
    server: SocketAddr,
    config: quinn_proto::ClientConfig,
    shards: Option<usize>,
) -> Result<quicshard::Engine<Client>, quicshard::StartError> {
    engine_with(server, config, shards, Extras::default())
}

/// Interop extras of a client engine: forced key updates, 0-RTT and a move to a new server
/// CID, with counters of what happened.
#[derive(Clone, Default)]
pub(crate) struct Extras {
    /// Force one key update per connection after its first completed request.
    pub(crate) key_update: bool,
    /// Open the plan's streams in 0-RTT when the resumed session allows it.
    pub(crate) zero_rtt: bool,
    /// Move each connection to a new server-issued CID (`ShardCtx::switch_remote_cid`) once
    /// this many response bytes arrived on it.
    pub(crate) switch_cid_after: Option<u64>,
    /// What happened, shared with the thread that started the engine.
    pub(crate) report: Arc<Report>,
}

/// Counters of [`Extras`] events over all connections of an engine.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Key updates initiated.
    pub(crate) key_updates: AtomicU64,
    /// Connections that sent requests in 0-RTT.
    pub(crate) zero_rtt_sent: AtomicU64,
    /// Of those, connections whose 0-RTT the server accepted.
    pub(crate) zero_rtt_accepted: AtomicU64,
    /// Connections that sent a RETIRE_CONNECTION_ID frame: they moved to a new server CID
    /// (counted when they close, from quinn-proto's frame counters).
    pub(crate) cid_moves: AtomicU64,
}

/// [`engine`] with [`Extras`].
pub(crate) fn engine_with(
    server: SocketAddr,
    config: quinn_proto::ClientConfig,
    shards: Option<usize>,
    extras: Extras,
) -> Result<quicshard::Engine<Client>, quicshard::StartError> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let mut builder = quicshard::Engine::builder(move |_| Client {
        conns: HashMap::new(),
        extras: extras.clone(),
        scratch: Vec::new(),
    })
    .listen(local)
    .client_config(config);
    builder = crate::diag::with_qlog(builder);
    if let Some(n) = shards {
        builder = builder.shards(n.clamp(1, 256));
    }
    builder.start()
}

/// One request on its own stream.
#[derive(Clone, Debug)]
pub(crate) enum Request {
    /// hq-interop: `GET /path`, the body written to `dest`.
    Get { path: String, dest: PathBuf },
    /// perf: upload `upload` bytes, download `download` bytes (verified against the pattern).
    Perf { upload: u64, download: u64 },
}

/// What one connection should do.
pub(crate) struct Plan {
    pub(crate) addr: SocketAddr,
    pub(crate) server_name: String,
    pub(crate) requests: VecDeque<Request>,
    /// Keep repeating `repeat` until this instant (duration-bounded runs).
    pub(crate) repeat: Option<(Request, Instant)>,
    /// Streams open at once.
    pub(crate) concurrency: usize,
    pub(crate) events: Sender<Event>,
}

/// The open-loop part of a connection's work (`bench --rate`): each due time queued on `due` is
/// one `request` on a new stream, opened as soon as the shard runs [`Client::issue_scheduled`]
/// (or a stream frees up), its latency counted from the due time. The connection stays open
/// until the load generator drops the sending side and everything queued has completed.
#[derive(Clone)]
pub(crate) struct Schedule {
    pub(crate) due: Receiver<Instant>,
    pub(crate) request: Request,
}

/// Progress reports to the thread that submitted the plan.
#[derive(Debug)]
pub(crate) enum Event {
    /// The handshake completed after this long.
    Connected { handshake: Duration },
    /// A request completed: bytes received, time from stream open (open loop: from its due
    /// time) to FIN.
    Done { bytes: u64, latency: Duration },
    /// A request failed.
    Failed { reason: String },
    /// The connection finished its plan (`error` is `None` if everything succeeded).
    Closed { error: Option<String> },
}

struct Active {
    request: Request,
    started: Instant,
    out: Outgoing,
    received: u64,
    file: Option<File>,
    bad: Option<String>,
}

struct Conn {
    plan: Plan,
    started: Instant,
    active: HashMap<StreamId, Active>,
    failed: bool,
    /// Requests went out in 0-RTT.
    early: bool,
    /// The forced key update was done (or is not wanted).
    key_updated: bool,
    /// Response bytes received over all streams.
    received: u64,
    /// The move to a new server CID was made (or is not wanted).
    cid_switched: bool,
    /// Open loop: where due times come from (such a plan has no queued or repeated requests).
    schedule: Option<Schedule>,
    /// A due time taken from the schedule that found no stream to open (MAX_STREAMS).
    held: Option<Instant>,
    /// The schedule's sender is gone: no more due times will come.
    schedule_ended: bool,
}

impl Conn {
    /// The next due request of the schedule, if any is queued.
    fn next_scheduled(&mut self) -> Option<(Request, Instant)> {
        let s = self.schedule.as_ref()?;
        let due = match self.held.take().map_or_else(|| s.due.try_recv(), Ok) {
            Ok(due) => due,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => {
                self.schedule_ended = true;
                return None;
            }
        };
        Some((s.request.clone(), due))
    }

    /// Whether the schedule may still bring requests.
    fn scheduled_pending(&self) -> bool {
        self.held.is_some() || (self.schedule.is_some() && !self.schedule_ended)
    }
}

/// Per-shard client state.
#[derive(Default)]
pub(crate) struct Client {
    conns: HashMap<ConnId, Conn>,
    extras: Extras,
    /// Reused by `issue_scheduled` (no allocation per batch).
    scratch: Vec<ConnId>,
}

impl Client {
    /// Starts `plan` on this shard. Called through `Remote::run_on`.
    pub(crate) fn start(&mut self, ctx: &mut ShardCtx<'_>, plan: Plan) {
        self.start_with(ctx, plan, None);
    }

    /// [`Client::start`], plus an open-loop `schedule`.
    pub(crate) fn start_with(
        &mut self,
        ctx: &mut ShardCtx<'_>,
        plan: Plan,
        schedule: Option<Schedule>,
    ) {
        match ctx.connect(plan.addr, &plan.server_name) {
            Ok(id) => {
                let started = ctx.now();
                self.conns.insert(
                    id,
                    Conn {
                        plan,
                        started,
                        active: HashMap::new(),
                        failed: false,
                        early: false,
                        key_updated: !self.extras.key_update,
                        received: 0,
                        cid_switched: self.extras.switch_cid_after.is_none(),
                        schedule,
                        held: None,
                        schedule_ended: false,
                    },
                );
                let early =
                    self.extras.zero_rtt && ctx.connection(id).is_some_and(|c| c.has_0rtt());
                if let (true, Some(c)) = (early, self.conns.get_mut(&id)) {
                    c.early = true;
                    self.extras
                        .report
                        .zero_rtt_sent
                        .fetch_add(1, Ordering::Relaxed);
                    self.open_more(ctx, id);
                }
            }
            Err(e) => {
                let _ = plan.events.send(Event::Closed {
                    error: Some(format!("connect: {e}")),
                });
            }
        }
    }

    /// Opens streams for the requests the load generator scheduled on this shard's open-loop
    /// connections since the last call. Called through `Remote::run_on`, once per batch.
    pub(crate) fn issue_scheduled(&mut self, ctx: &mut ShardCtx<'_>) {
        let mut ids = std::mem::take(&mut self.scratch);
        ids.extend(
            self.conns
                .iter()
                .filter(|(_, c)| c.schedule.is_some())
                .map(|(id, _)| *id),
        );
        for &id in &ids {
            // before the handshake, `on_connection` opens what is queued
            if ctx.connection(id).is_some_and(|q| !q.is_handshaking()) {
                self.open_more(ctx, id);
            }
        }
        ids.clear();
        self.scratch = ids;
    }

    /// Opens streams for queued, repeated or scheduled requests up to the plan's concurrency;
    /// closes the connection when nothing is left.
    fn open_more(&mut self, ctx: &mut ShardCtx<'_>, id: ConnId) {
        let now = ctx.now();
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(conn) = ctx.connection(id) else {
            return;
        };
        while c.active.len() < c.plan.concurrency {
            let next = c
                .plan
                .requests
                .pop_front()
                .map(|r| (r, now))
                .or_else(|| match &c.plan.repeat {
                    Some((r, until)) if now < *until => Some((r.clone(), now)),
                    _ => None,
                })
                .or_else(|| c.next_scheduled());
            let Some((request, started)) = next else {
                break;
            };
            let Some(sid) = conn.streams().open(Dir::Bi) else {
                match c.schedule {
                    Some(_) => c.held = Some(started),
                    None => c.plan.requests.push_front(request),
                }
                break;
            };
            let (payload, file) = match &request {
                Request::Get { path, dest } => match File::create(dest) {
                    Ok(f) => (format!("GET /{path}\r\n").into_bytes(), Some(f)),
                    Err(e) => {
                        let _ = c.plan.events.send(Event::Failed {
                            reason: format!("{}: {e}", dest.display()),
                        });
                        c.failed = true;
                        continue;
                    }
                },
                Request::Perf { upload, download } => {
                    let mut p = download.to_be_bytes().to_vec();
                    p.resize(8 + *upload as usize, 0);
                    (p, None)
                }
            };
            let mut out = Outgoing::new(Body::Queue { done: true });
            out.pending = payload;
            let mut a = Active {
                request,
                started,
                out,
                received: 0,
                file,
                bad: None,
            };
            a.out.pump(conn, sid);
            c.active.insert(sid, a);
        }
        if c.active.is_empty() && c.plan.requests.is_empty() {
            let repeating = matches!(&c.plan.repeat, Some((_, until)) if now < *until);
            if !repeating && !c.scheduled_pending() {
                ctx.close(id, 0, b"done");
            }
        }
    }

    fn on_stream(&mut self, ctx: &mut ShardCtx<'_>, id: ConnId, sid: StreamId) {
        let now = ctx.now();
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(conn) = ctx.connection(id) else {
            return;
        };
        let Some(a) = c.active.get_mut(&sid) else {
            return;
        };
        if a.out.pump(conn, sid) == Pumped::Gone && a.bad.is_none() {
            a.bad = Some("request stream stopped by the server".into());
        }
        let (received, file, bad) = (&mut a.received, &mut a.file, &mut a.bad);
        let before = *received;
        let outcome = read_stream(conn, sid, usize::MAX, |bytes| {
            if let Some(f) = file.as_mut() {
                if let Err(e) = f.write_all(bytes) {
                    *bad = Some(format!("write: {e}"));
                }
            } else if bad.is_none() {
                if let Some(at) = pattern_mismatch(*received, bytes) {
                    *bad = Some(format!("wrong byte at offset {at}"));
                }
            }
            *received += bytes.len() as u64;
        });
        if let Some(code) = outcome.reset {
            a.bad = Some(format!("stream reset by the server (code {code})"));
        }
        c.received += a.received - before;
        let done = outcome.fin || outcome.reset.is_some();
        if !c.cid_switched && c.received >= self.extras.switch_cid_after.unwrap_or(0) {
            c.cid_switched = true;
            ctx.switch_remote_cid(id);
        }
        if !done {
            return;
        }
        let a = c.active.remove(&sid).expect("looked up above");
        if let (false, Some(conn)) = (c.key_updated, ctx.connection(id)) {
            c.key_updated = true;
            conn.force_key_update();
            self.extras
                .report
                .key_updates
                .fetch_add(1, Ordering::Relaxed);
        }
        let expected = match a.request {
            Request::Perf { download, .. } => Some(download),
            Request::Get { .. } => None,
        };
        let event = match (a.bad, expected) {
            (Some(reason), _) => Some(reason),
            (None, Some(n)) if n != a.received => Some(format!("got {} of {n} bytes", a.received)),
            _ => None,
        };
        let event = match event {
            Some(reason) => {
                c.failed = true;
                Event::Failed { reason }
            }
            None => Event::Done {
                bytes: a.received,
                latency: now - a.started,
            },
        };
        let _ = c.plan.events.send(event);
        self.open_more(ctx, id);
    }
}

impl Handler for Client {
    fn on_connection(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId) {
        let now = ctx.now();
        if let Some(c) = self.conns.get(&conn) {
            if c.early && ctx.connection(conn).is_some_and(|q| q.accepted_0rtt()) {
                self.extras
                    .report
                    .zero_rtt_accepted
                    .fetch_add(1, Ordering::Relaxed);
            }
            let _ = c.plan.events.send(Event::Connected {
                handshake: now - c.started,
            });
        }
        self.open_more(ctx, conn);
    }

    fn on_stream_readable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        self.on_stream(ctx, conn, stream);
    }

    fn on_stream_writable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        self.on_stream(ctx, conn, stream);
    }

    fn on_stream_available(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, dir: Dir) {
        // the server raised its stream limit (MAX_STREAMS): open what waited for it
        if dir == Dir::Bi {
            self.open_more(ctx, conn);
        }
    }

    fn on_stream_finished(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, _stream: StreamId) {
        // MAX_STREAMS may have arrived meanwhile: try queued requests again
        self.open_more(ctx, conn);
    }

    fn on_closed(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, reason: &ConnectionError) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let retired = ctx
            .connection(conn)
            .map_or(0, |q| q.stats().frame_tx.retire_connection_id);
        if retired > 0 {
            self.extras.report.cid_moves.fetch_add(1, Ordering::Relaxed);
        }
        let clean = matches!(reason, ConnectionError::LocallyClosed)
            && c.active.is_empty()
            && c.plan.requests.is_empty()
            && !c.failed;
        let error = (!clean).then(|| match reason {
            ConnectionError::LocallyClosed if c.failed => "a request failed".to_string(),
            ConnectionError::LocallyClosed => "closed with requests outstanding".to_string(),
            other => other.to_string(),
        });
        let _ = c.plan.events.send(Event::Closed { error });
    }
}
