//! A stream pipe: the bounded single-producer / single-consumer byte buffer between an app thread
//! and the owning shard for one direction of one QUIC stream (seed 001's "App Send" / "App Recv"
//! pipes), plus the few control flags that travel with the bytes (FIN, RESET_STREAM,
//! STOP_SENDING, connection loss).
//!
//! A send pipe is written by the app ([`StreamPipe::write`]) and drained into quinn-proto by the
//! shard ([`StreamPipe::service_send`]); a receive pipe is filled from quinn-proto by the shard
//! ([`StreamPipe::service_recv`]) and read by the app ([`StreamPipe::read`]).
//!
//! # Guarantees
//! - **Monotonic availability.** Only the app adds to a send pipe and only the app takes from a
//!   receive pipe, so [`StreamPipe::write_available`] / [`StreamPipe::read_available`] can only
//!   grow behind the app's back: after they report `n`, `n` bytes move without blocking (or the
//!   call fails at once, e.g. the peer reset the stream).
//! - **Backpressure, no unbounded buffering.** A pipe holds at most its capacity. The shard reads
//!   from quinn-proto only into free space; when a receive pipe is full the rest stays in
//!   quinn-proto, whose stream window then stops growing, so QUIC flow control holds the peer.
//! - **Coalesced wake-ups.** The app asks the shard for service only on the transitions that need
//!   it (send: empty → non-empty, FIN, reset, drop; receive: the shard was starved for space and
//!   half the pipe is free again, stop, drop), and only when the pipe is not already queued. The
//!   shard wakes the app only when the app is blocked on the pipe (see [`super::notify`]); a
//!   blocked writer is woken once half the pipe is free or it is empty, not per chunk.
//!
//! # Implementation notes
//! One mutex per pipe. Each side holds it for one copy; the shard's copy into quinn-proto
//! happens under it, which costs the app at most one such copy of waiting. quinn-proto is reached
//! through the small [`QuicSend`] / [`QuicRecv`] traits so the loom model can stand in for it.

use std::sync::Arc;

use bytes::Bytes;
use quinn_proto::{ConnectionError, StreamId, VarInt};

use super::buf::{Ring, SendBuf};
use super::error::{ReadError, WriteError};
use super::notify::{Block, Waiters, Wake};
use super::progress::ProgressLink;
use super::sync::{lock, Mutex};
use super::waitable::Waitable;
use crate::handler::ConnId;

/// Which way the bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PipeDir {
    /// App → QUIC.
    Send,
    /// QUIC → app.
    Recv,
}

/// quinn-proto's send side of one stream, as the pipe needs it.
pub(crate) trait QuicSend {
    /// `Ok(n)` bytes taken; `Blocked` (flow control, a `Writable` event follows), `Stopped`, or
    /// `ClosedStream`.
    fn write(&mut self, data: Bytes) -> Result<usize, quinn_proto::WriteError>;
    fn finish(&mut self);
    fn reset(&mut self, code: VarInt);
    /// The peer's STOP_SENDING code, if it sent one.
    fn stopped(&mut self) -> Option<VarInt>;
}

/// How a [`QuicRecv::read`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvEnd {
    /// `max` bytes were moved; there may be more.
    More,
    /// Nothing more for now (a `Readable` event follows new data).
    Blocked,
    /// The peer's FIN: every byte has been moved.
    Fin,
    /// The peer reset the stream.
    Reset(VarInt),
    /// quinn-proto no longer knows the stream.
    Closed,
}

/// quinn-proto's receive side of one stream, as the pipe needs it.
pub(crate) trait QuicRecv {
    /// Moves up to `max` bytes, in order, into `push`.
    fn read(&mut self, max: usize, push: &mut dyn FnMut(&[u8])) -> RecvEnd;
    fn stop(&mut self, code: VarInt);
}

/// Where a pipe asks its shard for service (the shard's ready queue, `super::queue`).
pub(crate) trait PipeQueue: Send + Sync {
    /// Queues `pipe` for the shard (the caller checked it is not queued: its `pending` flag).
    fn kick_pipe(&self, pipe: Arc<StreamPipe>);
    /// How a wait on the shard's objects makes progress.
    fn progress(&self) -> &ProgressLink;
}

/// One direction of one stream; shared by the app handle and the shard.
pub(crate) struct StreamPipe {
    pub(crate) conn: ConnId,
    pub(crate) id: StreamId,
    pub(crate) dir: PipeDir,
    cap: usize,
    queue: Arc<dyn PipeQueue>,
    state: Mutex<PipeState>,
}

#[derive(Default)]
pub(crate) struct PipeState {
    /// Recv: the bytes the shard moved in.
    ring: Ring,
    /// Send: the bytes the app wrote.
    out: SendBuf,
    /// Send: the app finished (FIN follows the buffered bytes). Recv: the peer's FIN arrived
    /// (after the buffered bytes).
    fin: bool,
    /// Send: the app reset with this code. Recv: the peer reset with this code.
    reset: Option<VarInt>,
    /// Send: the peer sent STOP_SENDING with this code. Recv: the app stopped with this code.
    stop: Option<VarInt>,
    /// The connection is gone.
    lost: Option<ConnectionError>,
    /// In the shard's queue, not yet serviced.
    pending: bool,
    /// Recv: the shard left bytes in quinn-proto because the pipe was full.
    starved: bool,
    /// The shard has nothing more to do for this pipe (but see `reset_sent`).
    done: bool,
    /// `reset` is known to quinn-proto (send: passed to it; recv: it came from there).
    reset_sent: bool,
    waiters: Waiters,
}

impl PipeState {
    /// Marks the pipe as needing service; `true` if the caller must queue it.
    fn request_service(&mut self) -> bool {
        // a reset after FIN still has to reach quinn-proto (allowed until the FIN is acked)
        let wanted = !self.done || (self.reset.is_some() && !self.reset_sent);
        wanted && !std::mem::replace(&mut self.pending, true)
    }
}

/// Ready: send, room for a byte; receive, a byte or the end; either, an error to report.
impl Waitable for StreamPipe {
    type State = PipeState;
    fn state(&self) -> &Mutex<PipeState> {
        &self.state
    }
    fn waiters(s: &mut PipeState) -> &mut Waiters {
        &mut s.waiters
    }
    fn is_ready(&self, s: &PipeState) -> bool {
        Self::ready(self.dir, self.cap, s)
    }
    fn link(&self) -> &ProgressLink {
        self.queue.progress()
    }
}

impl StreamPipe {
    pub(crate) fn new(
        conn: ConnId,
        id: StreamId,
        dir: PipeDir,
        cap: usize,
        queue: Arc<dyn PipeQueue>,
    ) -> Arc<Self> {
        Arc::new(Self {
            conn,
            id,
            dir,
            cap: cap.max(1),
            queue,
            state: Mutex::new(crate::ranks::PIPE, PipeState::default()),
        })
    }

    fn kick(self: &Arc<Self>) {
        self.queue.kick_pipe(self.clone());
    }

    /// How a wait on this pipe gets its shard to make progress.
    pub(crate) fn progress(&self) -> &ProgressLink {
        self.queue.progress()
    }

    // ----- app side -----

    /// Bytes a write can take now without blocking (0 once the direction failed or ended).
    pub(crate) fn write_available(&self) -> usize {
        let s = lock(&self.state);
        if s.lost.is_some() || s.stop.is_some() || s.fin || s.reset.is_some() {
            return 0;
        }
        self.cap - s.out.len()
    }

    /// Bytes a read can return now without blocking.
    pub(crate) fn read_available(&self) -> usize {
        let s = lock(&self.state);
        if s.reset.is_some() || s.stop.is_some() {
            return 0;
        }
        s.ring.len
    }

    /// Copies as much of `data` as fits. `Ok(None)`: the pipe is full (registered `how`).
    pub(crate) fn write(
        self: &Arc<Self>,
        data: &[u8],
        how: Block<'_>,
    ) -> Result<Option<usize>, WriteError> {
        self.write_with(data.is_empty(), how, |out, cap| out.push(data, cap))
    }

    /// Takes as much of `data` as fits without copying it, advancing `data` past what it took.
    /// `Ok(None)`: the pipe is full (registered `how`).
    pub(crate) fn write_bytes(
        self: &Arc<Self>,
        data: &mut Bytes,
        how: Block<'_>,
    ) -> Result<Option<usize>, WriteError> {
        self.write_with(data.is_empty(), how, |out, cap| out.push_bytes(data, cap))
    }

    fn write_with(
        self: &Arc<Self>,
        empty: bool,
        how: Block<'_>,
        push: impl FnOnce(&mut SendBuf, usize) -> usize,
    ) -> Result<Option<usize>, WriteError> {
        let mut s = lock(&self.state);
        if let Some(e) = &s.lost {
            return Err(WriteError::ConnectionLost(e.clone()));
        }
        if let Some(code) = s.stop {
            return Err(WriteError::Stopped(code));
        }
        if s.fin || s.reset.is_some() {
            return Err(WriteError::ClosedStream);
        }
        if empty {
            return Ok(Some(0));
        }
        let was_empty = s.out.len() == 0;
        let n = push(&mut s.out, self.cap);
        if n == 0 {
            s.waiters.block(how);
            return Ok(None);
        }
        let kick = was_empty && s.request_service();
        drop(s);
        if kick {
            self.kick();
        }
        Ok(Some(n))
    }

    /// Moves bytes into `out`. `Ok(Some(0))` is the end of the stream (or an empty `out`);
    /// `Ok(None)`: nothing yet (registered `how`).
    pub(crate) fn read(
        self: &Arc<Self>,
        out: &mut [u8],
        how: Block<'_>,
    ) -> Result<Option<usize>, ReadError> {
        let mut s = lock(&self.state);
        if let Some(code) = s.reset {
            return Err(ReadError::Reset(code));
        }
        if s.stop.is_some() {
            return Err(ReadError::ClosedStream);
        }
        if out.is_empty() {
            return Ok(Some(0));
        }
        if s.ring.len > 0 {
            let n = s.ring.pop(out);
            let kick = s.starved && self.cap - s.ring.len >= self.cap.div_ceil(2) && {
                s.starved = false;
                s.request_service()
            };
            if s.ring.len == 0 && s.done {
                s.ring.clear();
            }
            drop(s);
            if kick {
                self.kick();
            }
            return Ok(Some(n));
        }
        if s.fin {
            return Ok(Some(0));
        }
        if let Some(e) = &s.lost {
            return Err(ReadError::ConnectionLost(e.clone()));
        }
        s.waiters.block(how);
        Ok(None)
    }

    fn ready(dir: PipeDir, cap: usize, s: &PipeState) -> bool {
        let terminal = s.lost.is_some() || s.reset.is_some() || s.stop.is_some();
        match dir {
            PipeDir::Send => terminal || s.fin || s.out.len() < cap,
            PipeDir::Recv => terminal || s.fin || s.ring.len > 0,
        }
    }

    /// Send: FIN after the buffered bytes. Idempotent.
    pub(crate) fn finish(self: &Arc<Self>) -> Result<(), WriteError> {
        self.control(|s| {
            if let Some(e) = &s.lost {
                return Err(WriteError::ConnectionLost(e.clone()));
            }
            if let Some(code) = s.stop {
                return Err(WriteError::Stopped(code));
            }
            if s.reset.is_some() {
                return Err(WriteError::ClosedStream);
            }
            s.fin = true;
            Ok(())
        })
    }

    /// Send: abandon the stream with RESET_STREAM(`code`); buffered bytes are dropped.
    pub(crate) fn reset(self: &Arc<Self>, code: VarInt) -> Result<(), WriteError> {
        self.control(|s| {
            if let Some(e) = &s.lost {
                return Err(WriteError::ConnectionLost(e.clone()));
            }
            if s.reset.is_some() || s.stop.is_some() {
                return Err(WriteError::ClosedStream);
            }
            s.reset = Some(code);
            s.out.clear();
            Ok(())
        })
    }

    /// Recv: STOP_SENDING(`code`); buffered bytes are dropped.
    pub(crate) fn stop(self: &Arc<Self>, code: VarInt) -> Result<(), ReadError> {
        self.control(|s| {
            if s.stop.is_some() {
                return Err(ReadError::ClosedStream);
            }
            if let Some(e) = &s.lost {
                return Err(ReadError::ConnectionLost(e.clone()));
            }
            s.stop = Some(code);
            s.ring.clear();
            Ok(())
        })
    }

    /// The app dropped its handle: a send pipe finishes, a receive pipe not yet at its end stops
    /// with `stop` (0 unless the app chose another code; quinn's handles use 0).
    pub(crate) fn app_dropped(self: &Arc<Self>, stop: VarInt) {
        let _ = self.control(|s| {
            let open = s.lost.is_none() && s.reset.is_none() && s.stop.is_none() && !s.fin;
            if open {
                match self.dir {
                    PipeDir::Send => s.fin = true,
                    PipeDir::Recv => {
                        s.stop = Some(stop);
                        s.ring.clear();
                    }
                }
                Ok(())
            } else {
                Err(())
            }
        });
    }

    /// Applies an app control change and asks the shard for service if it succeeded.
    fn control<E>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut PipeState) -> Result<(), E>,
    ) -> Result<(), E> {
        let kick = {
            let mut s = lock(&self.state);
            f(&mut s)?;
            s.request_service()
        };
        if kick {
            self.kick();
        }
        Ok(())
    }

    // ----- shard side -----

    /// Shard: moves buffered bytes into quinn-proto until it blocks; then FIN or RESET as asked.
    /// Returns whether the shard is done with this pipe.
    pub(crate) fn service_send(&self, q: &mut dyn QuicSend) -> bool {
        let wake;
        {
            let mut s = lock(&self.state);
            s.pending = false;
            if s.lost.is_some() {
                s.done = true;
                return true;
            }
            if let Some(code) = s.reset {
                if !std::mem::replace(&mut s.reset_sent, true) {
                    q.reset(code);
                }
                s.done = true;
                return true;
            }
            if s.done {
                return true;
            }
            let before = s.out.len();
            if let Some(code) = q.stopped() {
                s.stop = Some(code);
            }
            while s.stop.is_none() {
                let Some(chunk) = s.out.front() else {
                    break;
                };
                match q.write(chunk) {
                    Ok(0) | Err(quinn_proto::WriteError::Blocked) => break,
                    Ok(n) => s.out.consume_front(n),
                    Err(quinn_proto::WriteError::Stopped(code)) => s.stop = Some(code),
                    Err(quinn_proto::WriteError::ClosedStream) => {
                        s.stop = Some(VarInt::from_u32(0))
                    }
                }
            }
            if s.stop.is_some() {
                s.out.clear();
                s.done = true;
                wake = s.waiters.take();
            } else {
                if s.out.len() == 0 && s.fin {
                    q.finish();
                    s.done = true;
                    s.out.clear();
                }
                let len = s.out.len();
                let free = self.cap - len;
                let freed = len < before;
                wake = if freed && (len == 0 || free >= self.cap.div_ceil(2)) {
                    s.waiters.take()
                } else {
                    Wake::default()
                };
            }
        }
        wake_and(wake, self)
    }

    /// Shard: moves bytes from quinn-proto into free space; records FIN / reset; passes STOP on.
    /// Returns whether the shard is done with this pipe.
    pub(crate) fn service_recv(&self, q: &mut dyn QuicRecv) -> bool {
        let wake;
        {
            let mut s = lock(&self.state);
            s.pending = false;
            if s.done {
                return true;
            }
            if s.lost.is_some() {
                s.done = true;
                return true;
            }
            if let Some(code) = s.stop {
                q.stop(code);
                s.done = true;
                return true;
            }
            let free = self.cap - s.ring.len;
            if free == 0 {
                s.starved = true;
                return false;
            }
            let before = s.ring.len;
            let cap = self.cap;
            let ring = &mut s.ring;
            let end = q.read(free, &mut |b| {
                let n = ring.push(b, cap);
                debug_assert_eq!(n, b.len(), "QuicRecv::read moved more than max");
            });
            match end {
                RecvEnd::More => s.starved = true,
                RecvEnd::Blocked => {}
                RecvEnd::Fin => {
                    s.fin = true;
                    s.done = true;
                }
                RecvEnd::Reset(code) => {
                    s.reset = Some(code);
                    s.reset_sent = true;
                    s.ring.clear();
                    s.done = true;
                }
                RecvEnd::Closed => {
                    // quinn-proto forgot the stream without telling us how it ended
                    s.reset = Some(VarInt::from_u32(0));
                    s.reset_sent = true;
                    s.ring.clear();
                    s.done = true;
                }
            }
            wake = if s.ring.len > before || s.done {
                s.waiters.take()
            } else {
                Wake::default()
            };
        }
        wake_and(wake, self)
    }

    /// Shard: the connection is gone. Wakes a blocked app.
    pub(crate) fn fail(&self, err: &ConnectionError) {
        let wake = {
            let mut s = lock(&self.state);
            if s.lost.is_none() {
                s.lost = Some(err.clone());
            }
            s.done = true;
            s.waiters.take()
        };
        wake.wake();
    }

    /// Whether the shard is done with this pipe.
    pub(crate) fn is_done(&self) -> bool {
        lock(&self.state).done
    }
}

fn wake_and(wake: Wake, pipe: &StreamPipe) -> bool {
    wake.wake();
    pipe.is_done()
}
