//! The synchronisation facade of the handle layer (STYLE §13): every mutex, condition variable and
//! atomic that app threads and shard threads share goes through here, so a loom model
//! (`RUSTFLAGS="--cfg loom"`, see `tests/loom_pipe.rs`) can replace them with loom's checked
//! versions. `Arc` stays `std`'s: reference counts are not part of any wake-up protocol here.
//!
//! Poisoning is ignored ([`lock`]): every critical section below leaves its state consistent
//! between statements, so a panic in one app thread must not take the pipe away from the shard.
#![allow(unexpected_cfgs)]

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicUsize},
    Condvar, Mutex, MutexGuard,
};
pub(crate) use std::sync::atomic::Ordering;
#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicUsize},
    Condvar, Mutex, MutexGuard,
};

/// Locks `m`, ignoring poison.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
