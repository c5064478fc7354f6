//! A [`Poller`](super::Poller)'s shared half: its eventfd and ready list ([`PollerShared`]), and
//! one handle's membership in it ([`Registration`]), which the handle's [`Waiters`]
//! (super::notify::Waiters) notify. Core tier: the waitable objects name it, the app-side
//! `Poller` wraps it.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use super::sync::{lock, AtomicBool, Mutex, Ordering};

/// A poller's eventfd and its registrations with news.
pub(crate) struct PollerShared {
    fd: OwnedFd,
    /// Registrations with news, each at most once (its `queued` flag).
    ready: Mutex<Vec<Arc<Registration>>>,
}

/// One handle's membership in a poller.
pub(crate) struct Registration {
    poller: Arc<PollerShared>,
    token: usize,
    queued: AtomicBool,
}

impl Registration {
    pub(crate) fn new(poller: &Arc<PollerShared>, token: usize) -> Arc<Self> {
        Arc::new(Self {
            poller: poller.clone(),
            token,
            queued: AtomicBool::new(false),
        })
    }

    /// Queues the token; writes the eventfd on the list's empty → non-empty transition.
    pub(crate) fn notify(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut ready = lock(&self.poller.ready);
        ready.push(self.clone());
        if ready.len() == 1 {
            self.poller.signal();
        }
    }
}

impl PollerShared {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Self {
            fd,
            ready: Mutex::new(crate::ranks::POLLER, Vec::new()),
        }
    }

    /// Appends the tokens with news to `tokens`; resets the eventfd.
    pub(crate) fn drain(&self, tokens: &mut Vec<usize>) {
        let regs = {
            let mut ready = lock(&self.ready);
            self.reset();
            std::mem::take(&mut *ready)
        };
        for r in regs {
            // cleared before the app acts on the token, so a later change queues it again
            r.queued.store(false, Ordering::Release);
            tokens.push(r.token);
        }
    }

    /// Forgets queued registrations (breaks the registration → poller cycle).
    pub(crate) fn clear(&self) {
        lock(&self.ready).clear();
    }

    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd. A full counter (EAGAIN)
        // already means "readable", so the result needs no handling.
        let _ = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    fn reset(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64 from our own non-blocking eventfd;
        // EAGAIN (already zero) is fine.
        let _ = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut v as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

impl AsRawFd for PollerShared {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for PollerShared {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
