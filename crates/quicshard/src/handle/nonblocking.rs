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
use super::registration::{PollerShared, Registration};

/// A set of handles whose readiness changes are announced on one eventfd.
pub struct Poller {
    shared: Arc<PollerShared>,
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
            shared: Arc::new(PollerShared::new(fd)),
        })
    }

    /// Watches `pipe` under `token` (replacing any earlier poller registration of the handle).
    /// If it is ready now, the token is reported at once.
    pub fn register(&self, pipe: &dyn Pipe, token: usize) {
        let reg = Registration::new(&self.shared, token);
        pipe.target().wait().set_poll(Some(reg));
    }

    /// Stops watching `pipe`. A token already queued may still be reported once.
    pub fn deregister(&self, pipe: &dyn Pipe) {
        pipe.target().wait().set_poll(None);
    }

    /// Appends the tokens with news to `tokens` (cleared first) without blocking; resets the fd.
    pub fn drain(&self, tokens: &mut Vec<usize>) -> usize {
        tokens.clear();
        self.shared.drain(tokens);
        tokens.len()
    }

    /// Waits until the fd is readable or `timeout` passes, then [`Poller::drain`]s.
    pub fn wait(&self, tokens: &mut Vec<usize>, timeout: Option<Duration>) -> io::Result<usize> {
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        let mut pfd = libc::pollfd {
            fd: self.shared.as_raw_fd(),
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
        self.shared.clear();
    }
}

impl AsRawFd for Poller {
    fn as_raw_fd(&self) -> RawFd {
        self.shared.as_raw_fd()
    }
}

impl AsFd for Poller {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.shared.as_fd()
    }
}
