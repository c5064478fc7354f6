//! The shard thread's own system calls: the batched `sendmmsg(2)` of its transmit path
//! ([`MmsgBufs`], from the `quicshard-udp` crate, which the load balancer shares; quinn-udp is the
//! fallback, see [`super::io`]), [`set_batch_scheduling`], the thread's scheduling policy, and
//! [`thread_cpu_micros`], its CPU clock.

pub(crate) use quicshard_udp::{MmsgBufs, OutMsg, TX_BATCH};

/// Puts the calling thread under `SCHED_BATCH` (Linux; a no-op elsewhere). Failure only costs
/// the batching, so it is logged, not returned.
pub(crate) fn set_batch_scheduling() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for the call
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
            let e = std::io::Error::last_os_error();
            tracing::debug!(error = %e, "SCHED_BATCH refused; shard keeps the default policy");
        }
    }
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`), in microseconds; 0 where
/// the clock is missing. One system call (about 0.3 µs here): the shard loop reads it once per
/// turn, to tell a turn that worked long from one whose thread was descheduled.
pub(crate) fn thread_cpu_micros() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to write
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}
