//! The relay server: a callback [`Handler`] per shard. It owns its shard's publisher and
//! subscriber streams; the messages live in the shared topic logs (`topic.rs`).
//!
//! A publish is appended to the topic's log by the publisher's shard, which then delivers to its
//! own subscribers at once and marks every other shard's pending flag for the topic, posting a
//! wake-up ([`Remote::run_on`]) only when the flag was clear. A woken shard clears the flag and
//! pumps its subscribers of the topic from their cursors.
//!
//! # Slow subscribers
//! A subscriber gets only what QUIC flow control lets the relay write: when its stream is
//! blocked, its cursor stops while the log moves on, and nothing is buffered for it beyond the
//! connection's send window ([`SEND_WINDOW`]). When the log drops the message at its cursor it
//! has fallen off the end: the relay resets its stream with `LAGGED` and forgets it (it may
//! subscribe again). Publishers and the other subscribers never wait for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use quicshard::quinn_proto::{ConnectionError, Dir, ReadError, StreamId, VarInt, WriteError};
use quicshard::{Builder, ConnId, Engine, Handler, Remote, ShardCtx, ShardId};

use crate::protocol::{
    Frame, PublishDecoder, Request, ALPN, BAD_REQUEST, LAGGED, MAX_REQUEST, OK_LINE,
};
use crate::topic::{LogLimits, Topic, Topics};

/// Bytes the relay keeps per connection for data not yet acknowledged (quinn-proto's
/// `send_window`). Why: this bounds what a slow subscriber costs the relay; the rest of its
/// backlog is the shared log.
pub const SEND_WINDOW: u64 = 32 * 1024;
/// Bytes a publisher may send on one stream ahead of the relay reading them. Why: the relay reads
/// everything available in one callback; this bounds one callback's batch.
const STREAM_WINDOW: u32 = 128 * 1024;
/// Messages a subscriber takes from the log per lock. Why: short lock holds; the loop goes on
/// until the subscriber is caught up or blocked.
const READ_BATCH: usize = 64;

/// Counters of one shard (atomics: a wake-up is counted by the shard that posts it).
#[derive(Debug, Default)]
pub struct ShardCounters {
    /// Messages publishers on this shard put into logs.
    pub published: AtomicU64,
    /// Messages fully handed to QUIC for a subscriber on this shard.
    pub delivered: AtomicU64,
    /// Wake-ups posted to this shard (`run_on`).
    pub wakeups_posted: AtomicU64,
    /// Notifications for this shard that found its flag already set (no post).
    pub wakeups_coalesced: AtomicU64,
    /// Wake-ups this shard ran.
    pub wakeups_run: AtomicU64,
    /// Posts that failed (mailbox full or shard gone); the flag is cleared again.
    pub post_failures: AtomicU64,
    /// Subscriptions accepted on this shard.
    pub subscribers: AtomicU64,
    /// Publisher streams accepted on this shard.
    pub publishers: AtomicU64,
    /// Subscribers reset because they fell off the end of the log.
    pub lagged: AtomicU64,
    /// Streams refused (bad request, unknown verb, too many topics, SUB on a uni stream).
    pub refused: AtomicU64,
}

impl ShardCounters {
    /// `(name, value)` of every counter, for printing.
    pub fn fields(&self) -> [(&'static str, u64); 10] {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("published", g(&self.published)),
            ("delivered", g(&self.delivered)),
            ("wakeups_posted", g(&self.wakeups_posted)),
            ("wakeups_coalesced", g(&self.wakeups_coalesced)),
            ("wakeups_run", g(&self.wakeups_run)),
            ("post_failures", g(&self.post_failures)),
            ("subscribers", g(&self.subscribers)),
            ("publishers", g(&self.publishers)),
            ("lagged", g(&self.lagged)),
            ("refused", g(&self.refused)),
        ]
    }
}

/// What every shard's handler shares.
pub struct Shared {
    /// The topics and their logs.
    pub topics: Topics,
    /// One set of counters per shard.
    pub counters: Box<[ShardCounters]>,
    /// Set once the engine has started (see [`Shared::set_remote`]).
    remote: OnceLock<Remote<Relay>>,
}

impl Shared {
    /// Shared state for `shards` shards.
    pub fn new(shards: usize, limits: LogLimits) -> Arc<Self> {
        Arc::new(Self {
            topics: Topics::new(shards, limits),
            counters: (0..shards).map(|_| ShardCounters::default()).collect(),
            remote: OnceLock::new(),
        })
    }

    /// Gives the handlers the way to wake each other. Call right after `start`: until then a
    /// publish reaches only its own shard's subscribers (no flag is set, so nothing is lost
    /// later).
    pub fn set_remote(&self, remote: Remote<Relay>) {
        let _ = self.remote.set(remote);
    }
}

/// A relay engine builder: ALPN `relay`, the relay's transport limits, `shared` for every shard.
pub fn builder(shared: &Arc<Shared>) -> Builder<Relay> {
    let memory = quicshard::MemoryBudget {
        send_window: SEND_WINDOW,
        stream_receive_window: u64::from(STREAM_WINDOW),
        ..quicshard::MemoryBudget::default()
    };
    let shared = shared.clone();
    Engine::builder(move |shard: ShardId| Relay {
        shard: shard.0,
        shared: shared.clone(),
        streams: HashMap::new(),
        subs: HashMap::new(),
        scratch: Vec::new(),
    })
    .alpn(&[ALPN])
    .memory(memory)
}

/// A subscriber's delivery state.
struct Sub {
    topic: Arc<Topic>,
    /// The next message to write.
    cursor: u64,
    /// The unwritten rest of a message QUIC took only part of: (frame, bytes written).
    partial: Option<(Frame, usize)>,
}

/// What a stream of this shard is.
enum Stream {
    /// The request line is still arriving.
    Request(Vec<u8>),
    /// A publisher: its frames go to `topic`.
    Pub {
        topic: Arc<Topic>,
        decoder: PublishDecoder,
    },
    /// A subscriber of this topic id (its state is in `Relay::subs`).
    Sub(usize),
    /// Refused or dropped by the relay: what the peer still sends is discarded, and the entry
    /// goes once the peer's side ends (FIN or reset) or the connection closes.
    Closed,
}

/// How a subscriber's pump ended.
enum Pumped {
    /// Caught up with the log, or blocked by flow control: keep it.
    Keep,
    /// Lagged or stopped by the peer: forget it (the stream entry stays `Closed` until the
    /// peer's side ends).
    Drop,
    /// The connection is gone: forget the stream too.
    Gone,
}

type Key = (ConnId, StreamId);

/// One shard's relay handler.
pub struct Relay {
    shard: usize,
    shared: Arc<Shared>,
    streams: HashMap<Key, Stream>,
    /// Subscribers by topic id.
    subs: HashMap<usize, HashMap<Key, Sub>>,
    /// Reused buffer for frames read from a log.
    scratch: Vec<Frame>,
}

impl Relay {
    fn counters(&self) -> &ShardCounters {
        &self.shared.counters[self.shard]
    }

    /// Publishes `payloads` to `topic` from this shard: append, notify the other shards (one
    /// post per clear flag), deliver to this shard's subscribers.
    pub fn publish<P: AsRef<[u8]>>(
        &mut self,
        ctx: &mut ShardCtx<'_>,
        topic: &Arc<Topic>,
        payloads: &[P],
    ) {
        if payloads.is_empty() {
            return;
        }
        topic.append(payloads);
        self.counters()
            .published
            .fetch_add(payloads.len() as u64, Ordering::Relaxed);
        if let Some(remote) = self.shared.remote.get() {
            for shard in (0..self.shared.counters.len()).filter(|&s| s != self.shard) {
                notify(&self.shared, remote, topic, shard);
            }
        }
        self.pump_topic(ctx, topic.id);
    }

    /// A wake-up: clear the flag, then deliver what this shard's subscribers of `topic` miss.
    fn wake(&mut self, ctx: &mut ShardCtx<'_>, topic: &Topic) {
        self.counters().wakeups_run.fetch_add(1, Ordering::Relaxed);
        topic.clear(self.shard);
        self.pump_topic(ctx, topic.id);
    }

    fn pump_topic(&mut self, ctx: &mut ShardCtx<'_>, topic: usize) {
        let Some(mut subs) = self.subs.remove(&topic) else {
            return;
        };
        subs.retain(|key, sub| {
            let pumped = self.pump(ctx, *key, sub);
            self.keep(*key, pumped)
        });
        if !subs.is_empty() {
            self.subs.insert(topic, subs);
        }
    }

    /// Records how a subscriber's pump ended; whether it stays subscribed.
    fn keep(&mut self, key: Key, pumped: Pumped) -> bool {
        match pumped {
            Pumped::Keep => return true,
            Pumped::Drop => self.streams.insert(key, Stream::Closed),
            Pumped::Gone => self.streams.remove(&key),
        };
        false
    }

    /// Writes what `sub` misses until it is caught up or blocked.
    fn pump(&mut self, ctx: &mut ShardCtx<'_>, (conn, stream): Key, sub: &mut Sub) -> Pumped {
        let counters = &self.shared.counters[self.shard];
        let Some(c) = ctx.connection(conn) else {
            return Pumped::Gone;
        };
        let mut send = c.send_stream(stream);
        loop {
            if let Some((frame, done)) = &mut sub.partial {
                match send.write(&frame[*done..]) {
                    Ok(n) => *done += n,
                    Err(WriteError::Blocked) => {}
                    Err(_) => return Pumped::Drop,
                }
                if *done < frame.len() {
                    // still blocked: the subscriber stays unless the log dropped its next message
                    if sub.topic.is_behind(sub.cursor) {
                        break;
                    }
                    return Pumped::Keep;
                }
                sub.partial = None;
                counters.delivered.fetch_add(1, Ordering::Relaxed);
            }
            self.scratch.clear();
            if sub
                .topic
                .read_from(sub.cursor, READ_BATCH, &mut self.scratch)
                .is_err()
            {
                break;
            }
            if self.scratch.is_empty() {
                return Pumped::Keep;
            }
            for frame in self.scratch.drain(..) {
                let n = match send.write(&frame) {
                    Ok(n) => n,
                    Err(WriteError::Blocked) => 0,
                    Err(_) => return Pumped::Drop,
                };
                if n == 0 {
                    return Pumped::Keep; // blocked before this message: the cursor stays
                }
                sub.cursor += 1;
                if n < frame.len() {
                    sub.partial = Some((frame, n));
                    return Pumped::Keep;
                }
                counters.delivered.fetch_add(1, Ordering::Relaxed);
            }
        }
        // fell off the end of the log
        counters.lagged.fetch_add(1, Ordering::Relaxed);
        let _ = send.reset(VarInt::from_u32(LAGGED));
        Pumped::Drop
    }

    /// Reads a stream: the request line first, then publish frames.
    fn read(&mut self, ctx: &mut ShardCtx<'_>, key: Key) {
        let (conn, stream) = key;
        let Some(c) = ctx.connection(conn) else {
            return;
        };
        let mut data = Vec::new();
        let mut fin = false;
        match c.recv_stream(stream).read(true) {
            Ok(mut chunks) => {
                loop {
                    match chunks.next(usize::MAX) {
                        Ok(Some(ch)) => data.extend_from_slice(&ch.bytes),
                        // the end, or reset by the peer: nothing more will come
                        Ok(None) | Err(ReadError::Reset(_)) => {
                            fin = true;
                            break;
                        }
                        Err(ReadError::Blocked) => break,
                    }
                }
                let _ = chunks.finalize();
            }
            Err(_) => fin = true, // already ended and gone
        }
        if data.is_empty() && !self.streams.contains_key(&key) {
            return; // a spurious event for a stream already done with (or an empty one)
        }
        let request = match self
            .streams
            .entry(key)
            .or_insert_with(|| Stream::Request(Vec::new()))
        {
            Stream::Request(line) => {
                line.extend_from_slice(&data);
                match line.iter().position(|&b| b == b'\n') {
                    Some(nl) => {
                        let mut line = std::mem::take(line);
                        let rest = line.split_off(nl + 1);
                        line.truncate(nl);
                        Some((Request::parse(&line), rest))
                    }
                    None if line.len() >= MAX_REQUEST || fin => {
                        Some((Err("request line too long or cut"), Vec::new()))
                    }
                    None => None,
                }
            }
            Stream::Pub { .. } => return self.on_publish_data(ctx, key, &data, fin),
            Stream::Sub(_) => return, // what a subscriber sends after its request is ignored
            Stream::Closed => {
                if fin {
                    self.streams.remove(&key);
                }
                return;
            }
        };
        match request {
            None => {}
            Some((Ok(Request::Pub(name)), rest)) => self.start_pub(ctx, key, &name, &rest, fin),
            Some((Ok(Request::Sub(name)), _)) if stream.dir() == Dir::Bi => {
                self.start_sub(ctx, key, &name)
            }
            Some(_) => {
                self.refuse(ctx, key);
                if fin {
                    self.streams.remove(&key);
                }
            }
        }
    }

    fn start_pub(&mut self, ctx: &mut ShardCtx<'_>, key: Key, name: &str, rest: &[u8], fin: bool) {
        let Some(topic) = self.shared.topics.get_or_create(name) else {
            return self.refuse(ctx, key);
        };
        self.counters().publishers.fetch_add(1, Ordering::Relaxed);
        let decoder = PublishDecoder::default();
        self.streams.insert(key, Stream::Pub { topic, decoder });
        self.on_publish_data(ctx, key, rest, fin);
    }

    fn on_publish_data(&mut self, ctx: &mut ShardCtx<'_>, key: Key, data: &[u8], fin: bool) {
        let Some(Stream::Pub { topic, decoder }) = self.streams.get_mut(&key) else {
            return;
        };
        let topic = topic.clone();
        let mut payloads = Vec::new();
        let bad = decoder.push(data, &mut payloads).is_err() || (fin && decoder.has_partial());
        self.publish(ctx, &topic, &payloads);
        if bad {
            return self.refuse(ctx, key);
        }
        if fin {
            self.streams.remove(&key);
            if key.1.dir() == Dir::Bi {
                if let Some(c) = ctx.connection(key.0) {
                    let _ = c.send_stream(key.1).finish();
                }
            }
        }
    }

    fn start_sub(&mut self, ctx: &mut ShardCtx<'_>, key: Key, name: &str) {
        let Some(topic) = self.shared.topics.get_or_create(name) else {
            return self.refuse(ctx, key);
        };
        let Some(c) = ctx.connection(key.0) else {
            return;
        };
        // a fresh stream has far more credit than the three bytes of OK
        if !matches!(c.send_stream(key.1).write(OK_LINE), Ok(n) if n == OK_LINE.len()) {
            return self.refuse(ctx, key);
        }
        self.counters().subscribers.fetch_add(1, Ordering::Relaxed);
        self.streams.insert(key, Stream::Sub(topic.id));
        let sub = Sub {
            cursor: topic.next_seq(),
            topic,
            partial: None,
        };
        self.subs.entry(sub.topic.id).or_default().insert(key, sub);
    }

    fn refuse(&mut self, ctx: &mut ShardCtx<'_>, (conn, stream): Key) {
        self.counters().refused.fetch_add(1, Ordering::Relaxed);
        self.streams.insert((conn, stream), Stream::Closed);
        if let Some(c) = ctx.connection(conn) {
            let code = VarInt::from_u32(BAD_REQUEST);
            let _ = c.recv_stream(stream).stop(code);
            if stream.dir() == Dir::Bi {
                let _ = c.send_stream(stream).reset(code);
            }
        }
    }
}

/// Marks `topic` pending for `shard` and posts it a wake-up if the flag was clear.
fn notify(shared: &Shared, remote: &Remote<Relay>, topic: &Arc<Topic>, shard: usize) {
    let counters = &shared.counters[shard];
    if !topic.mark(shard) {
        counters.wakeups_coalesced.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let t = topic.clone();
    match remote.run_on(ShardId(shard), move |ctx, relay| relay.wake(ctx, &t)) {
        Ok(()) => {
            counters.wakeups_posted.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {
            // nobody will clear it: clear it so that the next publish posts again
            counters.post_failures.fetch_add(1, Ordering::Relaxed);
            topic.clear(shard);
        }
    }
}

impl Handler for Relay {
    fn on_stream_readable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        self.read(ctx, (conn, stream));
    }

    fn on_stream_writable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        let key = (conn, stream);
        let Some(&Stream::Sub(topic)) = self.streams.get(&key) else {
            return;
        };
        let Some(mut sub) = self.subs.get_mut(&topic).and_then(|s| s.remove(&key)) else {
            return;
        };
        let pumped = self.pump(ctx, key, &mut sub);
        if self.keep(key, pumped) {
            self.subs.entry(topic).or_default().insert(key, sub);
        }
    }

    fn on_closed(&mut self, _ctx: &mut ShardCtx<'_>, conn: ConnId, _reason: &ConnectionError) {
        self.streams.retain(|k, _| k.0 != conn);
        for subs in self.subs.values_mut() {
            subs.retain(|k, _| k.0 != conn);
        }
    }
}
