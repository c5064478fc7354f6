//! quicshard-impair: a sans-IO model of a bad network path (loss, delay, jitter, reordering,
//! corruption, duplication, a rate limit with a drop-tail queue, blackouts), seeded and driven
//! by its caller's clock. `quicshard impair` (the CLI's UDP proxy) and the deterministic
//! simulator (`quicshard-testkit`) both run their datagrams through it.
//!
//! Every datagram handed to [`Impairment::handle`] is decided at
//! once — dropped (blackout, loss, full queue) or scheduled for release at an instant — and
//! [`Impairment::poll_transmit`] hands out what is due. The core never reads the clock: the
//! caller passes `now` (the proxy passes `Instant::now()`, the simulator and the tests a
//! virtual clock).
//!
//! A datagram may carry a tag of the caller's ([`Impairment::handle_tagged`], e.g. its source
//! address), handed back with it in the [`Transmit`]; [`Impairment::handle`] is the untagged
//! form.
//!
//! # One datagram's path, per direction
//!
//! 1. **Blackout**: inside a `[t1, t2)` window (time since the core was created) it is dropped.
//! 2. **Loss**: dropped with probability `loss`; with `handshake_loss = Some(n)` only the first `n`
//!    datagrams received in this direction are subject to loss.
//! 3. **Corrupt**: with probability `corrupt`, one random bit is flipped.
//! 4. **Duplicate**: with probability `duplicate`, a second copy follows the original through the
//!    stages below (it takes its own place in the queue and its own share of the rate).
//! 5. **Rate**: with a rate, the datagram joins a drop-tail FIFO of at most `queue` datagrams
//!    (the one being serialised included) and leaves it `len * 8 / rate` after the previous one
//!    (UDP payload bytes): a token bucket one datagram deep, i.e. a link serialising at `rate`,
//!    so no burst ever exceeds the rate. Without a rate it passes at once.
//! 6. **Delay**: released `delay` after it left the rate stage, plus a uniform jitter in
//!    `[-jitter, +jitter]` (never before it left the rate stage). Jitter does not reorder: a
//!    datagram is never released before the one in front of it.
//! 7. **Reorder**: with probability `reorder`, the datagram is held back `reorder_gap` longer and
//!    leaves the FIFO order, so the datagrams behind it overtake it.
//!
//! # Determinism
//!
//! Each direction has its own `StdRng` seeded from the seed and the direction, and every datagram
//! draws the same fixed set of random numbers whatever happens to it: the decisions for the `i`-th
//! datagram of a direction depend only on the seed, `i`, its arrival time and length, never on
//! the other direction or on which impairments are enabled.
//!
//! # Bounded memory
//!
//! At most `max_pending_packets` datagrams and `max_pending_bytes` bytes wait per direction
//! (delay and rate stages together); beyond that they are dropped and counted as `dropped_queue`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Which way a datagram travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client → server: received on `--listen`, sent to `--forward`.
    Up = 0,
    /// Server → client.
    Down = 1,
}

impl Dir {
    /// Both directions, in index order.
    pub const BOTH: [Dir; 2] = [Dir::Up, Dir::Down];

    /// `up` or `down`.
    pub fn name(self) -> &'static str {
        match self {
            Dir::Up => "up",
            Dir::Down => "down",
        }
    }
}

/// The impairments of one direction. Probabilities are in `0.0..=1.0`.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// One-way delay added to every datagram.
    pub delay: Duration,
    /// Uniform jitter in `[-jitter, +jitter]` around `delay` (never reorders).
    pub jitter: Duration,
    /// Probability that a datagram is held back `reorder_gap` more, out of FIFO order.
    pub reorder: f64,
    /// How much longer a reordered datagram is held back.
    pub reorder_gap: Duration,
    /// Probability that one random bit of a datagram is flipped.
    pub corrupt: f64,
    /// Probability that a datagram is sent twice.
    pub duplicate: f64,
    /// Bits per second of UDP payload; `None`: unlimited.
    pub rate_bps: Option<u64>,
    /// Rate-stage queue limit in datagrams (only with a rate).
    pub queue: usize,
    /// Loss applies only to the first `n` datagrams of this direction.
    pub handshake_loss: Option<u64>,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            loss: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: 0.0,
            reorder_gap: Duration::from_millis(10),
            corrupt: 0.0,
            duplicate: 0.0,
            rate_bps: None,
            queue: 100,
            handshake_loss: None,
        }
    }
}

/// Everything the core needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The impairments of [`Dir::Up`].
    pub up: Params,
    /// The impairments of [`Dir::Down`].
    pub down: Params,
    /// `[t1, t2)` windows, as time since the core was created, in which everything is dropped.
    pub blackouts: Vec<(Duration, Duration)>,
    /// Seed of both directions' random streams.
    pub seed: u64,
    /// Per direction: datagrams waiting (rate and delay stages together).
    pub max_pending_packets: usize,
    /// Per direction: bytes waiting.
    pub max_pending_bytes: usize,
}

/// Default bound on waiting datagrams per direction. Why: 20 000 datagrams cover a
/// 1 Gbit/s × 200 ms bandwidth-delay product of 1250-byte datagrams.
pub const MAX_PENDING_PACKETS: usize = 20_000;
/// Default bound on waiting bytes per direction (the proxy's memory: two directions).
pub const MAX_PENDING_BYTES: usize = 32 << 20;

impl Default for Config {
    fn default() -> Self {
        Self {
            up: Params::default(),
            down: Params::default(),
            blackouts: Vec::new(),
            seed: 0,
            max_pending_packets: MAX_PENDING_PACKETS,
            max_pending_bytes: MAX_PENDING_BYTES,
        }
    }
}

/// What happened to one datagram given to [`Impairment::handle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Dropped: inside a blackout window.
    Blackout,
    /// Dropped: random loss.
    Loss,
    /// Dropped: the rate queue or the pending bound was full.
    Queue,
    /// Scheduled for release at `at`.
    Scheduled {
        /// When it is released.
        at: Instant,
        /// The duplicate's release (`None`: not duplicated, or the copy found the queue full).
        copy: Option<Instant>,
        /// One bit of it was flipped.
        corrupted: bool,
        /// It was held back out of FIFO order.
        reordered: bool,
    },
}

/// Per-direction counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Datagrams given to `handle`.
    pub received: u64,
    /// Datagrams released by `poll_transmit` (duplicates included).
    pub forwarded: u64,
    /// Random loss.
    pub dropped_loss: u64,
    /// Rate queue full or the pending bound reached (originals and copies).
    pub dropped_queue: u64,
    /// Inside a blackout window.
    pub dropped_blackout: u64,
    /// One bit flipped.
    pub corrupted: u64,
    /// Copies scheduled.
    pub duplicated: u64,
    /// Held back out of FIFO order.
    pub reordered: u64,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received={} forwarded={} dropped_loss={} dropped_queue={} dropped_blackout={} \
             corrupted={} duplicated={} reordered={}",
            self.received,
            self.forwarded,
            self.dropped_loss,
            self.dropped_queue,
            self.dropped_blackout,
            self.corrupted,
            self.duplicated,
            self.reordered
        )
    }
}

/// A datagram due for sending.
#[derive(Debug)]
pub struct Transmit<T = ()> {
    /// The way it travels.
    pub dir: Dir,
    /// Its bytes (one bit flipped if it was corrupted).
    pub data: Vec<u8>,
    /// The caller's tag given with it ([`Impairment::handle_tagged`]).
    pub tag: T,
}

/// The random numbers one datagram draws, always all of them, in this order.
struct Draws {
    loss: f64,
    corrupt: f64,
    corrupt_bit: u64,
    duplicate: f64,
    reorder: f64,
    jitter: f64,
    jitter_copy: f64,
}

impl Draws {
    fn new(rng: &mut StdRng) -> Self {
        Self {
            loss: rng.random(),
            corrupt: rng.random(),
            corrupt_bit: rng.random(),
            duplicate: rng.random(),
            reorder: rng.random(),
            jitter: rng.random(),
            jitter_copy: rng.random(),
        }
    }
}

/// A datagram waiting for its release; ordered by `(at, seq)`, smallest first in the heap.
struct Pending<T> {
    at: Instant,
    seq: u64,
    dir: Dir,
    data: Vec<u8>,
    tag: T,
}

impl<T> PartialEq for Pending<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<T> Eq for Pending<T> {}
impl<T> PartialOrd for Pending<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Pending<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        // reversed: BinaryHeap is a max-heap
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// One direction's state.
struct DirState {
    p: Params,
    rng: StdRng,
    counts: Counts,
    /// Departure times from the rate stage of the datagrams in it, oldest first.
    link: VecDeque<Instant>,
    /// Release time of the last datagram scheduled in FIFO order.
    fifo_release: Option<Instant>,
    pending_packets: usize,
    pending_bytes: usize,
}

/// Seed mixers, so the directions draw unrelated streams from one seed.
const DIR_SEED: [u64; 2] = [0x5155_4943_5348_5550, 0x5155_4943_444f_574e];

/// The impairment state of both directions; `T` is the tag datagrams carry
/// ([`Impairment::handle_tagged`]).
pub struct Impairment<T = ()> {
    start: Instant,
    blackouts: Vec<(Duration, Duration)>,
    max_pending_packets: usize,
    max_pending_bytes: usize,
    dirs: [DirState; 2],
    heap: BinaryHeap<Pending<T>>,
    seq: u64,
}

/// Serialisation time of `len` bytes at `rate_bps` (at least 1 ns, so a queue always drains).
fn tx_time(len: usize, rate_bps: u64) -> Duration {
    let nanos = (len as u128 * 8 * 1_000_000_000).div_ceil(u128::from(rate_bps.max(1)));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX).max(1))
}

impl Impairment {
    /// Decides the fate of one datagram arriving at `now` travelling `dir`.
    pub fn handle(&mut self, now: Instant, dir: Dir, data: Vec<u8>) -> Decision {
        self.handle_tagged(now, dir, data, ())
    }
}

impl<T: Clone> Impairment<T> {
    /// A core whose blackout windows count from `start`.
    pub fn new(config: Config, start: Instant) -> Self {
        let dir = |p: Params, i: usize| DirState {
            p,
            rng: StdRng::seed_from_u64(config.seed ^ DIR_SEED[i]),
            counts: Counts::default(),
            link: VecDeque::new(),
            fifo_release: None,
            pending_packets: 0,
            pending_bytes: 0,
        };
        Self {
            start,
            blackouts: config.blackouts,
            max_pending_packets: config.max_pending_packets,
            max_pending_bytes: config.max_pending_bytes,
            dirs: [dir(config.up, 0), dir(config.down, 1)],
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// Decides the fate of one datagram arriving at `now` travelling `dir`, which carries `tag`
    /// (a duplicate carries a clone).
    pub fn handle_tagged(&mut self, now: Instant, dir: Dir, mut data: Vec<u8>, tag: T) -> Decision {
        let since = now.saturating_duration_since(self.start);
        let blackout = self.blackouts.iter().any(|&(a, b)| since >= a && since < b);
        let (max_packets, max_bytes) = (self.max_pending_packets, self.max_pending_bytes);
        let st = &mut self.dirs[dir as usize];
        st.counts.received += 1;
        let draws = Draws::new(&mut st.rng);
        if blackout {
            st.counts.dropped_blackout += 1;
            return Decision::Blackout;
        }
        let lossy = st.p.handshake_loss.is_none_or(|n| st.counts.received <= n);
        if lossy && draws.loss < st.p.loss {
            st.counts.dropped_loss += 1;
            return Decision::Loss;
        }
        let corrupted = draws.corrupt < st.p.corrupt && !data.is_empty();
        if corrupted {
            let bit = draws.corrupt_bit % (data.len() as u64 * 8);
            data[(bit / 8) as usize] ^= 1 << (bit % 8);
            st.counts.corrupted += 1;
        }
        let reordered = draws.reorder < st.p.reorder;
        let len = data.len();
        let Some(at) = st.schedule(now, len, draws.jitter, reordered, max_packets, max_bytes)
        else {
            st.counts.dropped_queue += 1;
            return Decision::Queue;
        };
        if reordered {
            st.counts.reordered += 1;
        }
        let mut copy = None;
        if draws.duplicate < st.p.duplicate {
            match st.schedule(now, len, draws.jitter_copy, false, max_packets, max_bytes) {
                Some(t) => {
                    st.counts.duplicated += 1;
                    copy = Some(t);
                }
                None => st.counts.dropped_queue += 1,
            }
        }
        if let Some(t) = copy {
            self.push(t, dir, data.clone(), tag.clone());
        }
        self.push(at, dir, data, tag);
        Decision::Scheduled {
            at,
            copy,
            corrupted,
            reordered,
        }
    }

    fn push(&mut self, at: Instant, dir: Dir, data: Vec<u8>, tag: T) {
        self.seq += 1;
        self.heap.push(Pending {
            at,
            seq: self.seq,
            dir,
            data,
            tag,
        });
    }

    /// The next datagram due at `now`, if any (earliest release first; FIFO among equal times).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit<T>> {
        if self.heap.peek()?.at > now {
            return None;
        }
        let p = self.heap.pop()?;
        let st = &mut self.dirs[p.dir as usize];
        st.pending_packets -= 1;
        st.pending_bytes -= p.data.len();
        st.counts.forwarded += 1;
        Some(Transmit {
            dir: p.dir,
            data: p.data,
            tag: p.tag,
        })
    }

    /// When the next datagram is due (`None`: nothing waits).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.heap.peek().map(|p| p.at)
    }

    /// The counters of one direction.
    pub fn counts(&self, dir: Dir) -> Counts {
        self.dirs[dir as usize].counts
    }

    /// Datagrams of `dir` waiting for release.
    pub fn pending(&self, dir: Dir) -> usize {
        self.dirs[dir as usize].pending_packets
    }
}

impl DirState {
    /// Runs one datagram (or copy) of `len` bytes through the rate and delay stages; `None` if a
    /// queue or the pending bound is full.
    fn schedule(
        &mut self,
        now: Instant,
        len: usize,
        jitter_draw: f64,
        reordered: bool,
        max_packets: usize,
        max_bytes: usize,
    ) -> Option<Instant> {
        if self.pending_packets >= max_packets || self.pending_bytes + len > max_bytes {
            return None;
        }
        let depart = match self.p.rate_bps {
            Some(rate) => {
                while self.link.front().is_some_and(|&t| t <= now) {
                    self.link.pop_front();
                }
                if self.link.len() >= self.p.queue {
                    return None;
                }
                let start = self.link.back().map_or(now, |&t| t.max(now));
                let t = start + tx_time(len, rate);
                self.link.push_back(t);
                t
            }
            None => now,
        };
        let mut at = depart + self.p.delay;
        if !self.p.jitter.is_zero() {
            // uniform in [-jitter, +jitter), not before the rate stage released it
            let span = self.p.jitter.mul_f64(2.0 * jitter_draw);
            at = (at + span)
                .checked_sub(self.p.jitter)
                .map_or(depart, |t| t.max(depart));
        }
        if reordered {
            at += self.p.reorder_gap;
        } else {
            if let Some(prev) = self.fifo_release {
                at = at.max(prev);
            }
            self.fifo_release = Some(at);
        }
        self.pending_packets += 1;
        self.pending_bytes += len;
        Some(at)
    }
}

#[cfg(test)]
mod tests;
