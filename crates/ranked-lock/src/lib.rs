//! Ranked locks (DESIGN §4, seed 000): every [`Mutex`] has a [`Rank`] — a level and a name — and a
//! thread may only take a lock whose level is *higher* than every level it already holds. Taking
//! one of lower or equal level panics with both names, in release builds too, so a lock-order
//! inversion shows up the first time the inverted path runs, not the day it deadlocks.
//!
//! A project lists its ranks in one table (one `const` per kind of lock), which documents the
//! order. Levels are `0..64`: each thread keeps the set of held levels as one bit mask plus the
//! names, so the check is a thread-local load, a shift and a compare (see `benches/lock.rs`).
//! Poisoning is ignored: [`Mutex::lock`] returns the guard of a poisoned mutex too.
//!
//! # Examples
//! ```
//! use ranked_lock::{Mutex, Rank};
//! const OUTER: Rank = Rank::new(1, "outer");
//! const INNER: Rank = Rank::new(2, "inner");
//! let a = Mutex::new(OUTER, 1);
//! let b = Mutex::new(INNER, 2);
//! let ga = a.lock();
//! let gb = b.lock(); // 1 < 2: fine
//! assert_eq!(*ga + *gb, 3);
//! ```
//! ```should_panic
//! use ranked_lock::{Mutex, Rank};
//! let a = Mutex::new(Rank::new(1, "outer"), ());
//! let b = Mutex::new(Rank::new(2, "inner"), ());
//! let _gb = b.lock();
//! let _ga = a.lock(); // panics: "taking lock `outer` (rank 1) while holding `inner` (rank 2)"
//! ```

use std::cell::Cell;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

/// A lock's place in the order: its level (`0..64`, lower is taken first) and a name for the
/// panic message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rank {
    level: u8,
    name: &'static str,
}

impl Rank {
    /// A rank. Panics (at compile time in a `const`) if `level` is 64 or more.
    pub const fn new(level: u8, name: &'static str) -> Self {
        assert!(level < 64, "rank levels are 0..64");
        Self { level, name }
    }

    /// The level.
    pub const fn level(&self) -> u8 {
        self.level
    }

    /// The name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

/// What the calling thread holds: a bit per level, and the name of the lock holding each level.
struct Held {
    mask: Cell<u64>,
    names: [Cell<&'static str>; 64],
}

thread_local! {
    static HELD: Held = const {
        Held {
            mask: Cell::new(0),
            names: [const { Cell::new("") }; 64],
        }
    };
}

/// Records that the thread takes `rank`; panics if it holds a lock of equal or higher level.
#[inline]
fn acquire(rank: Rank) {
    HELD.with(|h| {
        let mask = h.mask.get();
        if mask >> rank.level != 0 {
            let top = 63 - mask.leading_zeros() as usize;
            violation(rank, top as u8, h.names[top].get());
        }
        h.mask.set(mask | 1 << rank.level);
        h.names[rank.level as usize].set(rank.name);
    });
}

#[inline]
fn release(rank: Rank) {
    // try_with: a guard dropped during thread-local destruction must not panic
    let _ = HELD.try_with(|h| h.mask.set(h.mask.get() & !(1 << rank.level)));
}

#[cold]
#[inline(never)]
fn violation(taking: Rank, held_level: u8, held_name: &str) -> ! {
    panic!(
        "lock order violation: taking lock `{}` (rank {}) while holding `{}` (rank {})",
        taking.name, taking.level, held_name, held_level
    );
}

/// Whether the calling thread holds a lock of `rank`'s level (for assertions and tests).
pub fn holds(rank: Rank) -> bool {
    HELD.with(|h| h.mask.get() >> rank.level & 1 == 1)
}

/// A `std::sync::Mutex` with a [`Rank`].
#[derive(Debug, Default)]
pub struct Mutex<T: ?Sized> {
    rank: Rank,
    inner: std::sync::Mutex<T>,
}

impl Default for Rank {
    fn default() -> Self {
        Rank::new(0, "unranked")
    }
}

impl<T> Mutex<T> {
    /// A mutex of `rank` holding `value`.
    pub const fn new(rank: Rank, value: T) -> Self {
        Self {
            rank,
            inner: std::sync::Mutex::new(value),
        }
    }

    /// The value, consuming the mutex.
    pub fn into_inner(self) -> T {
        self.inner
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Locks, after checking the order (panics on a violation, before blocking).
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        acquire(self.rank);
        let guard = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        MutexGuard {
            rank: self.rank,
            guard: Some(guard),
        }
    }

    /// Locks if no other thread holds the lock, without blocking: `None` if one does. The order
    /// is checked as for [`Mutex::lock`] (a violation panics even when the lock is free), so a
    /// path that takes locks out of order is caught whichever way it takes them.
    ///
    /// ```
    /// use ranked_lock::{Mutex, Rank};
    /// let m = Mutex::new(Rank::new(3, "turn"), 0);
    /// let g = m.lock();
    /// std::thread::scope(|s| {
    ///     s.spawn(|| assert!(m.try_lock().is_none()));
    /// });
    /// drop(g);
    /// assert_eq!(*m.try_lock().unwrap(), 0);
    /// ```
    #[inline]
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        acquire(self.rank);
        let guard = match self.inner.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                release(self.rank);
                return None;
            }
        };
        Some(MutexGuard {
            rank: self.rank,
            guard: Some(guard),
        })
    }

    /// This mutex's rank.
    pub fn rank(&self) -> Rank {
        self.rank
    }
}

/// The guard of a ranked [`Mutex`]; dropping it releases the lock and its rank.
pub struct MutexGuard<'a, T: ?Sized> {
    rank: Rank,
    /// `None` only inside [`Condvar`]'s waits, which hand it to std's condition variable.
    guard: Option<std::sync::MutexGuard<'a, T>>,
}

const TAKEN: &str = "guard present outside a condvar wait";

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard.as_deref().expect(TAKEN)
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_deref_mut().expect(TAKEN)
    }
}

impl<T: ?Sized> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        if self.guard.is_some() {
            release(self.rank);
        }
    }
}

/// A condition variable for ranked mutexes: while waiting, the thread does not hold the lock,
/// so its rank is released and re-taken around the wait.
#[derive(Debug, Default)]
pub struct Condvar(std::sync::Condvar);

impl Condvar {
    /// A condition variable.
    pub const fn new() -> Self {
        Self(std::sync::Condvar::new())
    }

    /// Waits for a notification (spurious wake-ups possible).
    pub fn wait<'a, T>(&self, mut g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        let inner = g.guard.take().expect(TAKEN);
        release(g.rank);
        let inner = self
            .0
            .wait(inner)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        acquire(g.rank);
        g.guard = Some(inner);
        g
    }

    /// Waits for a notification or `timeout`; `true` if it timed out.
    pub fn wait_timeout<'a, T>(
        &self,
        mut g: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> (MutexGuard<'a, T>, bool) {
        let inner = g.guard.take().expect(TAKEN);
        release(g.rank);
        let (inner, r) = self
            .0
            .wait_timeout(inner, timeout)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        acquire(g.rank);
        g.guard = Some(inner);
        (g, r.timed_out())
    }

    /// Wakes one waiter.
    pub fn notify_one(&self) {
        self.0.notify_one();
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.0.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Rank = Rank::new(1, "a");
    const B: Rank = Rank::new(2, "b");
    const C: Rank = Rank::new(40, "c");

    fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
        let e = std::panic::catch_unwind(f).expect_err("must panic");
        e.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    #[test]
    fn in_order_is_fine_and_release_order_is_free() {
        let (a, b, c) = (Mutex::new(A, 0), Mutex::new(B, 0), Mutex::new(C, 0));
        let ga = a.lock();
        let gb = b.lock();
        let gc = c.lock();
        drop(gb); // out of order
        assert!(holds(A) && !holds(B) && holds(C));
        drop(ga);
        drop(gc);
        assert!(!holds(A) && !holds(C));
        // and again, now B alone then C
        let _gb = b.lock();
        let _gc = c.lock();
    }

    #[test]
    fn lower_rank_while_holding_higher_panics_with_both_names() {
        let msg = panic_message(|| {
            let (a, c) = (Mutex::new(A, ()), Mutex::new(C, ()));
            let _gc = c.lock();
            let _ga = a.lock();
        });
        assert_eq!(
            msg,
            "lock order violation: taking lock `a` (rank 1) while holding `c` (rank 40)"
        );
    }

    #[test]
    fn try_lock_checks_the_order_and_a_refusal_holds_nothing() {
        let (a, c) = (Mutex::new(A, ()), Mutex::new(C, ()));
        let gc = c.lock();
        std::thread::scope(|s| {
            s.spawn(|| {
                assert!(c.try_lock().is_none());
                // the refused rank is not left behind: a lower one may still be taken
                assert!(!holds(C));
                let _ga = a.lock();
            });
        });
        let msg = panic_message(|| {
            let _ga = a.try_lock();
        });
        assert!(
            msg.contains("taking lock `a` (rank 1) while holding `c` (rank 40)"),
            "{msg}"
        );
        drop(gc);
        assert!(a.try_lock().is_some() && !holds(A));
    }

    #[test]
    fn equal_rank_panics_even_for_another_mutex() {
        let msg = panic_message(|| {
            let (x, y) = (Mutex::new(B, ()), Mutex::new(B, ()));
            let _gx = x.lock();
            let _gy = y.lock();
        });
        assert!(
            msg.contains("taking lock `b` (rank 2) while holding `b` (rank 2)"),
            "{msg}"
        );
    }

    #[test]
    fn a_panic_releases_the_ranks_it_held() {
        let a = Mutex::new(A, ());
        let _ = std::panic::catch_unwind(|| {
            let _g = a.lock();
            panic!("inside");
        });
        assert!(!holds(A));
        let _g = a.lock(); // not poisoned for us either
    }

    #[test]
    fn condvar_wait_gives_the_rank_back_while_waiting() {
        use std::sync::Arc;
        let m = Arc::new((Mutex::new(B, false), Condvar::new()));
        let m2 = m.clone();
        let t = std::thread::spawn(move || {
            let (lock, cv) = &*m2;
            let mut g = lock.lock();
            while !*g {
                g = cv.wait(g);
            }
            assert!(holds(B));
        });
        {
            let (lock, cv) = &*m;
            *lock.lock() = true;
            cv.notify_all();
        }
        t.join().unwrap();
        let (lock, cv) = &*m;
        let g = lock.lock();
        let (g, timed_out) = cv.wait_timeout(g, Duration::from_millis(1));
        assert!(timed_out && holds(B));
        drop(g);
        assert!(!holds(B));
    }

    #[test]
    fn ranks_are_per_thread() {
        // this thread holds C; another thread may still take A (below C)
        let c = Mutex::new(C, ());
        let g = c.lock();
        let t = std::thread::spawn(|| {
            let a = Mutex::new(A, ());
            let _ga = a.lock();
            holds(A) && !holds(C)
        });
        assert!(t.join().unwrap());
        drop(g);
    }
}
