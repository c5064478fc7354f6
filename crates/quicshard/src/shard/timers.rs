//! The shard's timer heap: one entry per (connection deadline), lazily invalidated.
//!
//! Each connection slot remembers the deadline it last armed; when quinn-proto's `poll_timeout`
//! changes, a new `(deadline, slot, generation)` entry is pushed and the old one becomes stale.
//! Popping skips entries whose slot generation or armed deadline no longer match. The heap is
//! rebuilt when stale entries dominate, so it stays O(connections).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// One armed deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Timer {
    pub(crate) at: Instant,
    pub(crate) slot: u32,
    pub(crate) gen: u32,
}

/// A min-heap of [`Timer`]s.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<Timer>>,
}

impl Timers {
    /// Arms a deadline (the caller records `at` in the slot to recognise it later).
    pub(crate) fn push(&mut self, t: Timer) {
        self.heap.push(Reverse(t));
    }

    /// The earliest entry (possibly stale).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|r| r.0.at)
    }

    /// Pops the earliest entry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        if self.heap.peek()?.0.at <= now {
            self.heap.pop().map(|r| r.0)
        } else {
            None
        }
    }

    /// Drops stale entries when the heap has grown past `4 × live + 64`.
    pub(crate) fn compact(&mut self, live: usize, mut is_live: impl FnMut(&Timer) -> bool) {
        if self.heap.len() > 4 * live + 64 {
            let v = std::mem::take(&mut self.heap).into_vec();
            self.heap = v.into_iter().filter(|r| is_live(&r.0)).collect();
        }
    }

    /// Drops every stale entry and the heap's unused capacity (after a burst closed).
    pub(crate) fn shrink(&mut self, mut is_live: impl FnMut(&Timer) -> bool) {
        let v = std::mem::take(&mut self.heap).into_vec();
        self.heap = v.into_iter().filter(|r| is_live(&r.0)).collect();
        self.heap.shrink_to_fit();
    }

    /// Stale and live entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_order_and_compacts() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        for i in (0..10u32).rev() {
            t.push(Timer {
                at: t0 + Duration::from_millis(i.into()),
                slot: i,
                gen: 0,
            });
        }
        assert_eq!(t.next_deadline(), Some(t0));
        assert_eq!(t.pop_due(t0).unwrap().slot, 0);
        assert!(t.pop_due(t0).is_none());
        let due: Vec<_> = std::iter::from_fn(|| t.pop_due(t0 + Duration::from_millis(3)))
            .map(|x| x.slot)
            .collect();
        assert_eq!(due, vec![1, 2, 3]);
        for i in 0..200 {
            t.push(Timer {
                at: t0,
                slot: 1000 + i,
                gen: 1,
            });
        }
        t.compact(1, |x| x.slot < 1000);
        assert_eq!(t.len(), 6);
    }
}
