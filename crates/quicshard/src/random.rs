//! Randomness for rustls without a system call per draw: [`BufferedRandom`], the
//! `SecureRandom` of [`tls::provider`](crate::tls::provider).
//!
//! rustls asks its provider for a few bytes at a time: 32 for the ServerHello random, then for
//! each of a handshake's two session tickets a 32-byte nonce and a 4-byte age offset, and the
//! engine's ticketer ([`crate::tickets`]) 12 bytes of AEAD nonce per ticket. *ring*'s provider
//! makes each of these draws one `getrandom` system call: seven per resumed handshake, 0.23 to
//! 0.4 µs each on the project's benchmark machines, about as much as all of quicshard's own code
//! in a handshake.
//!
//! [`BufferedRandom`] draws [`POOL_BYTES`] at a time from the operating system (through *ring*)
//! into a pool per thread and hands them out in order. Every byte comes from the OS generator and
//! is handed out once: it is zeroed in the pool as it leaves, so the pool holds only bytes no
//! one has seen. After a `fork` the child discards what its pool holds (it would otherwise hand
//! out the same bytes as the parent), through a `pthread_atfork` handler installed with the
//! first pool. Draws of more than half a pool go to the OS directly.
//!
//! Not buffered: *ring* draws the ephemeral X25519 key itself, from the OS (its `SecureRandom`
//! is sealed), so a handshake still makes that one `getrandom` call.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Once;

use rustls::crypto::{GetRandomFailed, SecureRandom};

/// Bytes drawn from the OS at a time. Why: a resumed handshake draws about 130 bytes, so one
/// refill serves about 15 handshakes; a refill of 2 KiB costs about as much as two draws of 32
/// bytes (the call, not the bytes, is what costs).
pub const POOL_BYTES: usize = 2048;

/// rustls' `SecureRandom` over a per-thread pool of OS randomness (see the module docs).
///
/// ```
/// use quicshard::random::BUFFERED_RANDOM;
/// use quicshard::rustls::crypto::{CryptoProvider, SecureRandom};
///
/// let mut nonce = [0u8; 12];
/// BUFFERED_RANDOM.fill(&mut nonce).unwrap();
/// // a provider of one's own with this randomness (`tls::provider` is built this way)
/// let provider = CryptoProvider {
///     secure_random: &BUFFERED_RANDOM,
///     ..quicshard::tls::ring_provider()
/// };
/// assert!(provider.cipher_suites.len() >= 3);
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct BufferedRandom;

/// The one instance, for `CryptoProvider::secure_random` (which takes a `&'static`).
pub static BUFFERED_RANDOM: BufferedRandom = BufferedRandom;

impl SecureRandom for BufferedRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        if buf.len() > POOL_BYTES / 2 {
            return os_fill(buf);
        }
        install_fork_handler();
        POOL.with(|p| p.borrow_mut().fill(buf, fork_generation(), os_fill))
    }
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool::new()) };
}

/// The operating system's generator, through *ring* (`getrandom`).
pub(crate) fn os_fill(buf: &mut [u8]) -> Result<(), GetRandomFailed> {
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), buf)
        .map_err(|_| GetRandomFailed)
}

/// Counts forks in this process's ancestry as seen by the child: a pool filled under another
/// generation is discarded.
static FORKS: AtomicU64 = AtomicU64::new(0);

fn fork_generation() -> u64 {
    FORKS.load(Relaxed)
}

extern "C" fn after_fork_in_child() {
    FORKS.fetch_add(1, Relaxed);
}

fn install_fork_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a handler that only touches an atomic, which is async-signal-safe
        // as the child side of fork requires.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        if rc != 0 {
            // without the handler a forked child could repeat its parent's bytes: make every
            // pool look stale from now on, so each draw refills (correct, only slower)
            FORKS.store(u64::MAX, Relaxed);
        }
    });
}

/// One thread's pool: `bytes[next..]` have not been handed out, `bytes[..next]` are zero.
struct Pool {
    bytes: [u8; POOL_BYTES],
    next: usize,
    /// The fork generation `bytes` were drawn in.
    generation: u64,
}

impl Pool {
    const fn new() -> Self {
        Self {
            bytes: [0; POOL_BYTES],
            next: POOL_BYTES,
            generation: 0,
        }
    }

    /// Fills `out` (at most `POOL_BYTES` long) with bytes not handed out before, refilling from
    /// `source` when the pool runs short or was filled in another fork generation (or when
    /// `generation` is `u64::MAX`: no fork handler, so no pool can be trusted).
    fn fill(
        &mut self,
        out: &mut [u8],
        generation: u64,
        source: impl Fn(&mut [u8]) -> Result<(), GetRandomFailed>,
    ) -> Result<(), GetRandomFailed> {
        debug_assert!(out.len() <= POOL_BYTES);
        if generation != self.generation || generation == u64::MAX {
            self.discard();
            self.generation = generation;
        }
        let mut done = 0;
        while done < out.len() {
            if self.next == POOL_BYTES {
                source(&mut self.bytes)?;
                self.next = 0;
            }
            let n = (out.len() - done).min(POOL_BYTES - self.next);
            let taken = &mut self.bytes[self.next..self.next + n];
            out[done..done + n].copy_from_slice(taken);
            taken.fill(0);
            self.next += n;
            done += n;
        }
        Ok(())
    }

    fn discard(&mut self) {
        self.bytes[self.next..].fill(0);
        self.next = POOL_BYTES;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A source that fills with a running byte counter and counts its calls.
    fn counter_source<'a>(
        next: &'a Cell<u8>,
        calls: &'a Cell<usize>,
    ) -> impl Fn(&mut [u8]) -> Result<(), GetRandomFailed> + 'a {
        move |buf: &mut [u8]| {
            calls.set(calls.get() + 1);
            for b in buf {
                *b = next.get();
                next.set(next.get().wrapping_add(1));
            }
            Ok(())
        }
    }

    #[test]
    fn hands_out_the_source_bytes_in_order_once_each() {
        let (next, calls) = (Cell::new(0u8), Cell::new(0));
        let mut pool = Pool::new();
        let mut seen = Vec::new();
        // draws of odd sizes that straddle refills
        for len in [32, 4, 12, 1000, 999, 40, 1] {
            let mut out = vec![0xAA; len];
            pool.fill(&mut out, 0, counter_source(&next, &calls))
                .unwrap();
            seen.extend(out);
        }
        let expected: Vec<u8> = (0..seen.len()).map(|i| i as u8).collect();
        assert_eq!(seen, expected, "every source byte once, in order");
        assert_eq!(calls.get(), seen.len().div_ceil(POOL_BYTES));
        assert!(
            pool.bytes[..pool.next].iter().all(|&b| b == 0),
            "handed-out bytes are erased"
        );
    }

    #[test]
    fn a_new_fork_generation_discards_the_pool() {
        let (next, calls) = (Cell::new(0u8), Cell::new(0));
        let mut pool = Pool::new();
        let mut a = [0u8; 8];
        pool.fill(&mut a, 0, counter_source(&next, &calls)).unwrap();
        assert_eq!(a, [0, 1, 2, 3, 4, 5, 6, 7]);
        // as in a forked child: the rest of the parent's pool must not be handed out
        let mut b = [0u8; 8];
        pool.fill(&mut b, 1, counter_source(&next, &calls)).unwrap();
        assert_eq!(calls.get(), 2, "refilled");
        // the counter source wraps every 256 bytes; POOL_BYTES is a multiple of 256
        assert_eq!(
            b,
            [0, 1, 2, 3, 4, 5, 6, 7],
            "fresh source bytes, not [8, 9, ...]"
        );
    }

    /// A forked child must not hand out the bytes its parent's pool still holds.
    #[test]
    fn a_forked_child_does_not_repeat_its_parent() {
        let mut warm = [0u8; 16];
        BUFFERED_RANDOM.fill(&mut warm).unwrap(); // the pool now holds unused bytes
        let mut fds = [0i32; 2];
        // SAFETY: a pipe into a fixed array of two fds
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child only draws (no allocation: the pool is this thread's, already made),
        // writes to the pipe and leaves with _exit
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut c = [0u8; 32];
            let ok = BUFFERED_RANDOM.fill(&mut c).is_ok();
            // SAFETY: writes the 32 bytes of `c` to the pipe, then exits without unwinding
            unsafe {
                if ok {
                    libc::write(fds[1], c.as_ptr().cast(), c.len());
                }
                libc::_exit(0);
            }
        }
        let mut parent = [0u8; 32];
        BUFFERED_RANDOM.fill(&mut parent).unwrap();
        let mut child = [0u8; 32];
        // SAFETY: reads at most 32 bytes into `child`; waits for the child
        let n = unsafe {
            libc::close(fds[1]);
            let n = libc::read(fds[0], child.as_mut_ptr().cast(), child.len());
            libc::close(fds[0]);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            n
        };
        assert_eq!(n, 32, "the child drew and wrote");
        assert_ne!(parent, child, "parent and child drew the same bytes");
    }

    #[test]
    fn without_a_fork_handler_every_draw_refills() {
        let (next, calls) = (Cell::new(0u8), Cell::new(0));
        let mut pool = Pool::new();
        for _ in 0..3 {
            pool.fill(&mut [0u8; 4], u64::MAX, counter_source(&next, &calls))
                .unwrap();
        }
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn a_failing_source_fails_the_draw() {
        let mut pool = Pool::new();
        let r = pool.fill(&mut [0u8; 4], 0, |_: &mut [u8]| Err(GetRandomFailed));
        assert!(r.is_err());
    }

    #[test]
    fn draws_from_the_os_differ() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        BUFFERED_RANDOM.fill(&mut a).unwrap();
        BUFFERED_RANDOM.fill(&mut b).unwrap();
        assert_ne!(a, b);
        let mut big = vec![0u8; POOL_BYTES];
        BUFFERED_RANDOM.fill(&mut big).unwrap();
        assert!(big.iter().any(|&x| x != 0));
    }
}
