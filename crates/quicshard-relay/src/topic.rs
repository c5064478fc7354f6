//! Topics: what the relay's shards share. Each topic owns a bounded log of messages (the only
//! copy of a message, shared by every subscriber on every shard) and one pending flag per shard,
//! the coalesced, idempotent cross-shard notification of DESIGN §6: publishing marks every other
//! shard's flag, and only the mark that flips a flag from clear to set costs a wake-up
//! (`Remote::run_on`); the woken shard clears its flag *before* it reads the log, so a publish
//! racing with the wake-up either is read by it or posts a new one. A burst of 1,000 publishes
//! between two wake-ups of a shard therefore costs that shard one wake-up.
//!
//! Locks (ranked, in this order): the registry ([`TOPICS_RANK`]), then one topic's log
//! ([`LOG_RANK`]); neither is held across a callback into the engine.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use ranked_lock::{Mutex, Rank};

use crate::protocol::{delivery_frame, Frame};

/// The topic registry (name → topic); taken only to subscribe or publish the first time.
pub const TOPICS_RANK: Rank = Rank::new(1, "relay topic registry");
/// One topic's log; taken per batch of publishes and per batch a subscriber reads.
pub const LOG_RANK: Rank = Rank::new(2, "relay topic log");

/// Bounds of every topic's log: the relay's memory for messages is at most
/// `max_topics * (max_bytes + one frame)`.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// Messages a topic keeps; older ones are dropped (subscribers still behind them lag).
    pub max_messages: usize,
    /// Encoded bytes a topic keeps.
    pub max_bytes: usize,
    /// Topics the relay creates; requests for more are refused.
    pub max_topics: usize,
}

/// A subscriber's cursor fell behind the oldest message the log still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lagged {
    /// The oldest sequence number still in the log.
    pub oldest: u64,
}

/// The bounded log: messages `first_seq..first_seq + frames.len()`.
struct Log {
    first_seq: u64,
    frames: VecDeque<Frame>,
    bytes: usize,
}

/// One topic: its log and a pending flag per shard.
pub struct Topic {
    /// Index in the registry (stable for the relay's life).
    pub id: usize,
    log: Mutex<Log>,
    pending: Box<[AtomicBool]>,
    limits: LogLimits,
    /// High-water marks of the log (messages, bytes), for the memory checks.
    max_seen: (AtomicU64, AtomicU64),
}

impl Topic {
    fn new(id: usize, shards: usize, limits: LogLimits) -> Self {
        let log = Log {
            first_seq: 0,
            frames: VecDeque::new(),
            bytes: 0,
        };
        Self {
            id,
            log: Mutex::new(LOG_RANK, log),
            pending: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            limits,
            max_seen: (AtomicU64::new(0), AtomicU64::new(0)),
        }
    }

    /// Appends `payloads` in order (one lock for the batch), dropping the oldest messages beyond
    /// the limits.
    pub fn append<P: AsRef<[u8]>>(&self, payloads: &[P]) {
        let mut log = self.log.lock();
        for p in payloads {
            let seq = log.first_seq + log.frames.len() as u64;
            let frame = delivery_frame(seq, p.as_ref());
            log.bytes += frame.len();
            log.frames.push_back(frame);
            while log.frames.len() > self.limits.max_messages
                || (log.bytes > self.limits.max_bytes && log.frames.len() > 1)
            {
                // invariant: the loop condition needs a non-empty log
                let old = log.frames.pop_front().expect("log not empty");
                log.bytes -= old.len();
                log.first_seq += 1;
            }
        }
        self.max_seen
            .0
            .fetch_max(log.frames.len() as u64, Ordering::Relaxed);
        self.max_seen
            .1
            .fetch_max(log.bytes as u64, Ordering::Relaxed);
    }

    /// The sequence number the next message will get (where a new subscriber starts).
    pub fn next_seq(&self) -> u64 {
        let log = self.log.lock();
        log.first_seq + log.frames.len() as u64
    }

    /// Appends to `out` up to `max` messages from `cursor` on; `Lagged` if `cursor` is older
    /// than the oldest message kept.
    pub fn read_from(&self, cursor: u64, max: usize, out: &mut Vec<Frame>) -> Result<(), Lagged> {
        let log = self.log.lock();
        if cursor < log.first_seq {
            return Err(Lagged {
                oldest: log.first_seq,
            });
        }
        let skip = (cursor - log.first_seq) as usize;
        out.extend(log.frames.iter().skip(skip).take(max).cloned());
        Ok(())
    }

    /// Whether the log no longer holds message `cursor` (a subscriber there has lagged).
    pub fn is_behind(&self, cursor: u64) -> bool {
        cursor < self.log.lock().first_seq
    }

    /// Marks `shard` as having news; `true` if the flag was clear, i.e. the caller must post
    /// the shard one wake-up.
    pub fn mark(&self, shard: usize) -> bool {
        !self.pending[shard].swap(true, Ordering::AcqRel)
    }

    /// Clears `shard`'s flag; the shard calls it before reading the log.
    pub fn clear(&self, shard: usize) {
        // AcqRel: a publisher whose mark found the flag set (and so posted nothing) appended
        // before that mark; this swap reads from it, so the append is visible to our reads
        self.pending[shard].swap(false, Ordering::AcqRel);
    }

    /// The log's high-water marks: (messages, encoded bytes).
    pub fn max_seen(&self) -> (u64, u64) {
        (
            self.max_seen.0.load(Ordering::Relaxed),
            self.max_seen.1.load(Ordering::Relaxed),
        )
    }
}

/// The registry of topics, shared by all shards.
pub struct Topics {
    by_name: Mutex<HashMap<String, Arc<Topic>>>,
    shards: usize,
    limits: LogLimits,
}

impl Topics {
    /// An empty registry for `shards` shards.
    pub fn new(shards: usize, limits: LogLimits) -> Self {
        Self {
            by_name: Mutex::new(TOPICS_RANK, HashMap::new()),
            shards,
            limits,
        }
    }

    /// The topic called `name`, created if needed; `None` if it is new and the registry full.
    pub fn get_or_create(&self, name: &str) -> Option<Arc<Topic>> {
        let mut map = self.by_name.lock();
        if let Some(t) = map.get(name) {
            return Some(t.clone());
        }
        if map.len() >= self.limits.max_topics {
            return None;
        }
        let t = Arc::new(Topic::new(map.len(), self.shards, self.limits));
        map.insert(name.to_owned(), t.clone());
        Some(t)
    }

    /// The topic called `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.by_name.lock().get(name).cloned()
    }
}
