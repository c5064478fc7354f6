//! Waiting for SIGINT / SIGTERM (and SIGHUP, for reloads) on the main thread.
//!
//! [`block_termination`] must run before any thread is spawned, so every thread inherits a mask
//! that blocks these signals; the main thread then takes them synchronously with `sigwait`, and
//! no async-signal-safety concerns arise.

use std::io;

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a zeroed sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread and the threads it spawns afterwards.
pub(crate) fn block_termination() -> io::Result<()> {
    let set = termination_set();
    // SAFETY: `set` is a valid, initialised signal set; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits until SIGINT or SIGTERM arrives (ignoring SIGHUP); returns its number.
pub(crate) fn wait_termination() -> io::Result<i32> {
    loop {
        let sig = wait_any()?;
        if sig != libc::SIGHUP {
            return Ok(sig);
        }
    }
}

/// Whether `sig` asks for a reload.
pub(crate) fn is_reload(sig: i32) -> bool {
    sig == libc::SIGHUP
}

/// Waits until SIGINT, SIGTERM or SIGHUP arrives; returns its number.
pub(crate) fn wait_any() -> io::Result<i32> {
    let set = termination_set();
    let mut sig = 0;
    // SAFETY: `set` is valid and `sig` is a valid out-pointer.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(sig)
}

/// Waits up to `timeout` for SIGINT, SIGTERM or SIGHUP; its number, or `None` at the timeout.
pub(crate) fn wait_any_for(timeout: std::time::Duration) -> io::Result<Option<i32>> {
    let set = termination_set();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    loop {
        // SAFETY: `set` and `ts` are valid for the call; no siginfo is asked for.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
        if sig >= 0 {
            return Ok(Some(sig));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(None),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}
