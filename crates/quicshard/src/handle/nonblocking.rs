//! Non-blocking use: [`Poller`], a set of handles behind one eventfd, so an application's own
//! event loop (epoll, mio, ...) can drive many handles from one thread.
//!
//! Switch each handle to non-blocking mode (`set_nonblocking(true)`: operations fail with
//! `WouldBlock` instead of waiting) and register it with a token. The poller's fd becomes
//! readable when a registered handle may have become ready; [`Poller::drain`] (or
//! [`Poller::wait`]) then lists the tokens.
//!
//! # Edge-triggered
//! Like mio, a token is reported once per change after the handle was seen not ready: a handle
//! is reported when registered if it is ready then, and afterwards only after an operation on it
//! failed with `WouldBlock`. So on each reported token, operate until `WouldBlock`.
//!
//! # Examples
//! ```no_run
//! # fn f(mut recv: quicshard::handle::RecvStream) -> std::io::Result<()> {
//! use quicshard::handle::{Poller, ReadError};
//! let poller = Poller::new()?;
//! recv.set_nonblocking(true);
//! poller.register(&recv, 7);
//! let mut tokens = Vec::new();
//! let mut buf = [0u8; 4096];
//! loop {
//!     poller.wait(&mut tokens, None)?;
//!     for &t in &tokens {
//!         assert_eq!(t, 7);
//!         loop {
//!             match recv.read(&mut buf) {
//!                 Ok(0) => return Ok(()),
//!                 Ok(_n) => {}
//!                 Err(ReadError::WouldBlock) => break,
//!                 Err(e) => return Err(e.into()),
//!             }
//!         }
//!     }
//! }
//! # }
//! ```
//!
//! # Portability
//! Linux (eventfd).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use super::blocking::Pipe;
use super::sync::{lock, AtomicBool, Mutex, Ordering};

/// A set of handles whose readiness changes are announced on one eventfd.
pub struct Poller {
    shared: Arc<PollerShared>,
}

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

impl Poller {
    /// A poller with a fresh eventfd.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor we own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            shared: Arc::new(PollerShared {
                fd,
                ready: Mutex::new(crate::ranks::POLLER, Vec::new()),
            }),
        })
    }

    /// Watches `pipe` under `token` (replacing any earlier poller registration of the handle).
    /// If it is ready now, the token is reported at once.
    pub fn register(&self, pipe: &dyn Pipe, token: usize) {
        let reg = Arc::new(Registration {
            poller: self.shared.clone(),
            token,
            queued: AtomicBool::new(false),
        });
        pipe.target().set_poll(Some(reg));
    }

    /// Stops watching `pipe`. A token already queued may still be reported once.
    pub fn deregister(&self, pipe: &dyn Pipe) {
        pipe.target().set_poll(None);
    }

    /// Appends the tokens with news to `tokens` (cleared first) without blocking; resets the fd.
    pub fn drain(&self, tokens: &mut Vec<usize>) -> usize {
        tokens.clear();
        let regs = {
            let mut ready = lock(&self.shared.ready);
            self.shared.reset();
            std::mem::take(&mut *ready)
        };
        for r in regs {
            // cleared before the app acts on the token, so a later change queues it again
            r.queued.store(false, Ordering::Release);
            tokens.push(r.token);
        }
        tokens.len()
    }

    /// Waits until the fd is readable or `timeout` passes, then [`Poller::drain`]s.
    pub fn wait(&self, tokens: &mut Vec<usize>, timeout: Option<Duration>) -> io::Result<usize> {
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        let mut pfd = libc::pollfd {
            fd: self.shared.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(self.drain(tokens))
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // break the registration → poller cycle of queued tokens
        lock(&self.shared.ready).clear();
    }
}

impl AsRawFd for Poller {
    fn as_raw_fd(&self) -> RawFd {
        self.shared.fd.as_raw_fd()
    }
}

impl AsFd for Poller {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.shared.fd.as_fd()
    }
}
