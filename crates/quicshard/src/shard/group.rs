//! Several shards on one thread. When an engine has more shards than threads
//! ([`Builder::threads`](crate::Builder::threads); by default, when there are more shards than
//! cores), each thread runs a fixed, contiguous group of shards for its whole life. Every shard
//! keeps what it owns — poller, sockets, endpoint, connections, timers, mailbox — and its
//! connections stay on it; only the thread is shared.
//!
//! The group has one poller: every member registers its sockets there under its own tokens (`3 *
//! index` on), and the group's one mailbox waker (mio allows one per poller) is member 0's waker
//! token. The thread waits on the poller, then gives a non-blocking turn ([`Shard::turn`]) to each
//! member that has events, whose next deadline has come, or which left work over; the waker gives
//! every member a turn with its mailbox to look into. Why: shard threads beyond the cores only
//! preempt each other, and each handshake then costs a sleep and a wake-up per flight on every
//! shard it touches (measured at 8 threads on 2 cores: 1.3 voluntary context switches per handshake
//! against 0.1 at 1 shard, +11% CPU per handshake). A group keeps the shards' independence
//! (steering, QUIC-LB shard IDs, per-shard counters) without the switches, and one poller (not one
//! per member, watched by another) keeps it at one `epoll_wait` per round.
//! The price: a handler that blocks stalls the other shards of its group too.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::help::{self, Desk, Helper};
use super::{ShardScope, WAKER_TOKEN};
use crate::handler::Handler;

thread_local! {
    /// The shard IDs (`start..end`) the calling thread runs, if it runs a group.
    static GROUP: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

/// Whether shard `id` runs on the calling thread (the shard now in scope, or one of the
/// thread's group): a blocking call to it from here would deadlock.
pub(crate) fn runs_here(id: usize) -> bool {
    super::current_shard() == Some(id)
        || GROUP.with(|g| g.get().is_some_and(|(a, b)| (a..b).contains(&id)))
}

/// Shard IDs `start..end` of group `g` when `shards` are spread over `threads` groups: contiguous
/// and as even as possible.
pub(crate) fn members(g: usize, shards: usize, threads: usize) -> (usize, usize) {
    (g * shards / threads, (g + 1) * shards / threads)
}

/// Tokens reserved for each member in the group's poller: [`LISTEN`](super::io::LISTEN),
/// [`CLIENT`](super::io::CLIENT) and a waker's (only member 0's is used: the group's waker).
pub(crate) const TOKENS_PER_SHARD: usize = 3;

/// Runs the shards `ids.0..ids.1` (built and placed in their `desks`; member `k` registered its
/// sources at tokens `TOKENS_PER_SHARD * k` on in `poll`) on the calling thread until all of
/// them stopped. With `share` the thread also gives turns to other threads' shards that wait
/// ([`help`](super::help)).
pub(crate) fn run<H: Handler>(
    desks: Arc<[Desk<H>]>,
    ids: (usize, usize),
    mut poll: mio::Poll,
    share: bool,
) {
    GROUP.with(|g| g.set(Some(ids)));
    let own = &desks[ids.0..ids.1];
    let mut helper = share.then(|| Helper::new(desks.clone(), ids));
    let mut live = vec![true; own.len()];
    let mut events = mio::Events::with_capacity(TOKENS_PER_SHARD * own.len() + 16);
    // every member gets a first turn
    let mut spoke = vec![true; own.len()];
    let mut mail = vec![false; own.len()];
    while live.iter().any(|&l| l) {
        let timeout = if spoke.iter().any(|&r| r) {
            Some(Duration::ZERO)
        } else {
            let next = own
                .iter()
                .zip(&live)
                .filter(|(_, &l)| l)
                .map(|(d, _)| d.due())
                .min()
                .unwrap_or(u64::MAX);
            if share {
                own.iter().for_each(|d| d.set_sleep(next));
            }
            (next != u64::MAX)
                .then(|| Duration::from_micros(next.saturating_sub(help::micros(Instant::now()))))
        };
        let polled_at = Instant::now();
        let polled = poll.poll(&mut events, timeout);
        if share {
            own.iter().for_each(|d| d.set_sleep(0));
        }
        if let Err(e) = polled {
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::error!(group = ?ids, error = %e, "group poll failed; its shards exit");
                break;
            }
        }
        for ev in events.iter() {
            if ev.token() == WAKER_TOKEN {
                // mail for some member (or a helper's nudge): each looks into its own mailbox
                spoke.iter_mut().for_each(|r| *r = true);
                mail.iter_mut().for_each(|m| *m = true);
            } else if let Some(r) = spoke.get_mut(ev.token().0 / TOKENS_PER_SHARD) {
                *r = true;
            }
        }
        let now = Instant::now();
        let now_us = help::micros(now);
        for (k, desk) in own.iter().enumerate() {
            if !live[k] || (!spoke[k] && desk.due() > now_us) {
                continue;
            }
            spoke[k] = false;
            let mut g = desk.lock();
            let Some(shard) = g.as_mut() else {
                live[k] = false;
                continue;
            };
            let _scope = ShardScope::enter(shard.id(), shard.stats());
            if std::mem::take(&mut mail[k]) {
                shard.mail_arrived();
            }
            if shard.turn(&events, Instant::now()) {
                desk.publish(shard, Instant::now());
            } else {
                shard.finish();
                *g = None;
                live[k] = false;
            }
        }
        if let Some(h) = &mut helper {
            // only a busy thread helps: one that slept in this poll has CPU time to spare, and
            // so, most likely, has the machine, whose idle CPU then runs a waiting shard's
            // thread itself
            if now.saturating_duration_since(polled_at) < help::BUSY_POLL {
                h.help(Instant::now());
            }
        }
    }
    GROUP.with(|g| g.set(None));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_cover_every_shard_once_and_evenly() {
        for shards in 1..=20 {
            for threads in 1..=shards {
                let mut next = 0;
                for g in 0..threads {
                    let (a, b) = members(g, shards, threads);
                    assert_eq!(a, next, "{shards} shards on {threads} threads, group {g}");
                    let size = b - a;
                    assert!(
                        size == shards / threads || size == shards.div_ceil(threads),
                        "{shards} on {threads}: group {g} has {size}"
                    );
                    next = b;
                }
                assert_eq!(next, shards);
            }
        }
    }

    #[test]
    fn runs_here_knows_the_group() {
        assert!(!runs_here(3));
        GROUP.with(|g| g.set(Some((2, 5))));
        assert!(runs_here(2) && runs_here(4));
        assert!(!runs_here(5) && !runs_here(1));
        GROUP.with(|g| g.set(None));
        assert!(!runs_here(2));
    }
}
