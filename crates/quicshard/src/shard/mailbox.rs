//! A shard's mailbox: one bounded crossbeam channel per shard plus the `mio::Waker` (an eventfd)
//! of the thread that runs it. The shards of a [group](super::group) share their thread's one
//! waker (mio allows one per poller): mail for any member gives every member a turn, and each
//! looks into its own channel.
//!
//! Wake-ups are coalesced: a sender writes the eventfd only when it flips the shared `armed` flag
//! from false to true (the mailbox went from "drained" to "has mail"); the shard clears the flag
//! only when it finds the channel empty, then looks once more. Both flag operations are `SeqCst`
//! read-modify-writes, so a message pushed before a sender sees `armed == true` is always seen by
//! the shard's re-check. The channel and wakers are wired up once at start-up (N mailboxes, every
//! shard and every `Remote` holds a sender to each: O(N²) handles, no allocation afterwards).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use quinn_proto::EcnCodepoint;

use super::callback::RunFn;

/// Messages per mailbox. Why: deep enough to absorb a burst of handoffs for one GRO batch per
/// shard (BATCH_SIZE × GRO segments ≈ 2k) while bounding the memory a stalled shard can pin.
pub(crate) const MAILBOX_CAPACITY: usize = 4096;

/// What one shard (or an app thread) can ask of a shard.
pub(crate) enum Msg<H> {
    /// A datagram received by another shard whose DCID belongs to this one.
    Datagram(Handoff),
    /// Run a closure with this shard's context and handler (`Remote::run_on`).
    Run(RunFn<H>),
    /// Stop accepting, close every connection, drain until `deadline`, then exit.
    Shutdown { deadline: Instant },
}

/// A forwarded datagram: bytes plus what `Endpoint::handle` needs besides them.
pub(crate) struct Handoff {
    pub(crate) data: BytesMut,
    pub(crate) remote: SocketAddr,
    pub(crate) local_ip: Option<IpAddr>,
    pub(crate) ecn: Option<EcnCodepoint>,
    /// Forwarded by the other process of a handover (`shared/forward.rs`): never
    /// forwarded back by the successor's grace rule.
    pub(crate) from_peer: bool,
}

/// Why a message was not delivered; the message is handed back.
pub(crate) enum SendError<T> {
    Full(T),
    Closed(T),
}

/// The sending side of one shard's mailbox.
pub(crate) struct MailboxTx<H> {
    tx: Sender<Msg<H>>,
    waker: Arc<mio::Waker>,
    armed: Arc<AtomicBool>,
}

impl<H> Clone for MailboxTx<H> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            waker: self.waker.clone(),
            armed: self.armed.clone(),
        }
    }
}

/// The receiving side, owned by the shard.
pub(crate) struct MailboxRx<H> {
    rx: Receiver<Msg<H>>,
    armed: Arc<AtomicBool>,
}

/// A mailbox whose senders wake the receiving shard's thread with `waker`.
pub(crate) fn mailbox<H>(waker: Arc<mio::Waker>) -> (MailboxTx<H>, MailboxRx<H>) {
    let (tx, rx) = crossbeam_channel::bounded(MAILBOX_CAPACITY);
    let armed = Arc::new(AtomicBool::new(false));
    (
        MailboxTx {
            tx,
            waker,
            armed: armed.clone(),
        },
        MailboxRx { rx, armed },
    )
}

impl<H> MailboxTx<H> {
    /// Queues `msg` without blocking; wakes the shard on the empty → non-empty transition.
    pub(crate) fn try_send(&self, msg: Msg<H>) -> Result<(), SendError<Msg<H>>> {
        self.tx.try_send(msg).map_err(|e| match e {
            TrySendError::Full(m) => SendError::Full(m),
            TrySendError::Disconnected(m) => SendError::Closed(m),
        })?;
        self.wake();
        Ok(())
    }

    /// Queues `msg`, blocking while the mailbox is full. Never call from a shard thread.
    pub(crate) fn send_blocking(&self, msg: Msg<H>) -> Result<(), SendError<Msg<H>>> {
        self.tx.send(msg).map_err(|e| SendError::Closed(e.0))?;
        self.wake();
        Ok(())
    }

    /// Whether mail may be waiting (sent and not yet seen by an emptying receive).
    pub(crate) fn has_mail(&self) -> bool {
        self.armed.load(SeqCst)
    }

    /// Wakes the receiving shard's thread even without mail (its poll returns, and every shard
    /// of the thread looks at its deadlines again).
    pub(crate) fn nudge(&self) {
        if let Err(e) = self.waker.wake() {
            tracing::warn!(error = %e, "mailbox waker failed");
        }
    }

    fn wake(&self) {
        if !self.armed.swap(true, SeqCst) {
            if let Err(e) = self.waker.wake() {
                tracing::warn!(error = %e, "mailbox waker failed");
            }
        }
    }
}

impl<H> MailboxRx<H> {
    /// The next message, or `None` once the mailbox is empty (which disarms it).
    pub(crate) fn recv(&self) -> Option<Msg<H>> {
        if let Ok(m) = self.rx.try_recv() {
            return Some(m);
        }
        self.armed.swap(false, SeqCst);
        // a sender that saw `armed == true` pushed before our swap: look once more
        self.rx.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_once_per_empty_to_nonempty_transition() {
        let mut poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(7)).unwrap());
        let (tx, rx) = mailbox::<()>(waker);
        let mut events = mio::Events::with_capacity(8);
        for _ in 0..3 {
            tx.try_send(Msg::Shutdown {
                deadline: Instant::now(),
            })
            .ok()
            .unwrap();
        }
        poll.poll(&mut events, Some(std::time::Duration::from_secs(1)))
            .unwrap();
        assert_eq!(events.iter().count(), 1);
        let mut n = 0;
        while rx.recv().is_some() {
            n += 1;
        }
        assert_eq!(n, 3);
        // drained and disarmed: no wake pending
        poll.poll(&mut events, Some(std::time::Duration::from_millis(10)))
            .unwrap();
        assert_eq!(events.iter().count(), 0);
        tx.try_send(Msg::Shutdown {
            deadline: Instant::now(),
        })
        .ok()
        .unwrap();
        poll.poll(&mut events, Some(std::time::Duration::from_secs(1)))
            .unwrap();
        assert_eq!(events.iter().count(), 1);
    }

    #[test]
    fn mailboxes_sharing_a_waker_each_wake_it() {
        let mut poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(2)).unwrap());
        let (a, b) = (mailbox::<()>(waker.clone()), mailbox::<()>(waker));
        let mut events = mio::Events::with_capacity(8);
        let shutdown = || Msg::Shutdown {
            deadline: Instant::now(),
        };
        for (tx, rx) in [&a, &b] {
            tx.try_send(shutdown()).ok().unwrap();
            poll.poll(&mut events, Some(std::time::Duration::from_secs(1)))
                .unwrap();
            let tokens: Vec<_> = events.iter().map(|e| e.token()).collect();
            assert_eq!(tokens, [mio::Token(2)]);
            assert!(rx.recv().is_some() && rx.recv().is_none());
        }
        // a's mailbox is disarmed, b's too: the next message to either wakes again
        a.0.try_send(shutdown()).ok().unwrap();
        poll.poll(&mut events, Some(std::time::Duration::from_secs(1)))
            .unwrap();
        assert_eq!(events.iter().count(), 1);
    }
}
