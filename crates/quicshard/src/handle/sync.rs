//! The synchronisation facade of the handle layer (STYLE §13): every mutex, condition variable and
//! atomic that app threads and shard threads share goes through here, so a loom model
//! (`RUSTFLAGS="--cfg loom"`, see `tests/loom_pipe.rs`) can replace them with loom's checked
//! versions. `Arc` stays `std`'s: reference counts are not part of any wake-up protocol here.
//!
//! Mutexes are `ranked_lock`'s (their order is [`crate::ranks`]); poisoning is ignored ([`lock`]):
//! every critical section leaves its state consistent between statements, so a panic in one app
//! thread must not take the pipe away from the shard.
#![allow(unexpected_cfgs)]

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
#[cfg(not(loom))]
pub(crate) use ranked_lock::{Condvar, Mutex, MutexGuard};
pub(crate) use std::sync::atomic::Ordering;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

#[cfg(loom)]
pub(crate) use loom_shim::{Condvar, Mutex, MutexGuard};

/// Locks `m` (poison is ignored; the order is checked by `ranked_lock` outside loom).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
}

/// loom's mutex and condition variable behind `ranked_lock`'s API (ranks are not checked under
/// loom; loom checks the interleavings).
#[cfg(loom)]
mod loom_shim {
    use std::sync::PoisonError;
    use std::time::Duration;

    pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(_rank: ranked_lock::Rank, v: T) -> Self {
            Self(loom::sync::Mutex::new(v))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }

    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Self(loom::sync::Condvar::new())
        }
        pub(crate) fn wait<'a, T>(&self, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            self.0.wait(g).unwrap_or_else(PoisonError::into_inner)
        }
        pub(crate) fn wait_timeout<'a, T>(
            &self,
            g: MutexGuard<'a, T>,
            d: Duration,
        ) -> (MutexGuard<'a, T>, bool) {
            let (g, r) = self
                .0
                .wait_timeout(g, d)
                .unwrap_or_else(PoisonError::into_inner);
            (g, r.timed_out())
        }
        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }
    }
}
