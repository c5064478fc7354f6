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
use std::time::{Duration, Instant};

use super::{Shard, ShardScope, WAKER_TOKEN};
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

/// Runs `shards` (IDs `ids.0..ids.1`, in order; member `k` registered its sources at tokens
/// `TOKENS_PER_SHARD * k` on) on the calling thread until all of them stopped.
pub(crate) fn run<H: Handler>(shards: Vec<Shard<H>>, mut poll: mio::Poll, ids: (usize, usize)) {
    GROUP.with(|g| g.set(Some(ids)));
    let mut live: Vec<Option<Shard<H>>> = shards.into_iter().map(Some).collect();
    let mut events = mio::Events::with_capacity(TOKENS_PER_SHARD * live.len() + 16);
    // every member gets a first turn
    let mut spoke = vec![true; live.len()];
    while live.iter().any(Option::is_some) {
        let timeout = if spoke.iter().any(|&r| r) {
            Some(Duration::ZERO)
        } else {
            let next = live.iter().flatten().filter_map(Shard::next_deadline).min();
            next.map(|d| d.saturating_duration_since(Instant::now()))
        };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::error!(group = ?ids, error = %e, "group poll failed; its shards exit");
                break;
            }
        }
        for ev in events.iter() {
            if ev.token() == WAKER_TOKEN {
                // mail for some member: each looks into its own mailbox
                for (shard, r) in live.iter_mut().zip(spoke.iter_mut()) {
                    if let Some(shard) = shard {
                        shard.mail_arrived();
                        *r = true;
                    }
                }
            } else if let Some(r) = spoke.get_mut(ev.token().0 / TOKENS_PER_SHARD) {
                *r = true;
            }
        }
        let now = Instant::now();
        for (slot, r) in live.iter_mut().zip(spoke.iter_mut()) {
            let Some(shard) = slot else { continue };
            if !*r && shard.next_deadline().is_none_or(|d| d > now) {
                continue;
            }
            *r = false;
            let _scope = ShardScope::enter(shard.id(), shard.stats());
            if !shard.turn(&events) {
                shard.finish();
                *slot = None;
            }
        }
    }
    for shard in live.iter_mut().flatten() {
        shard.finish();
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
