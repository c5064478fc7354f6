//! Stream handles: [`SendStream`] and [`RecvStream`], each the app's end of one
//! [`StreamPipe`](super::pipe) (`Send + Sync`, movable to any thread), with `std::io::Write` /
//! `std::io::Read`. Every blocking method honours the handle's non-blocking switch
//! (`WouldBlock`) and its timeout (`TimedOut`); the `_until` variants take an explicit deadline.
//!
//! Dropping a `SendStream` finishes the stream (FIN after the buffered bytes); dropping a
//! `RecvStream` before the end stops it with code 0, as quinn's handles do, or with the code set by
//! [`RecvStream::set_stop_on_drop`]. Each stream keeps its connection open.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn_proto::{StreamId, VarInt};

use super::app_conn::AppConn;
use super::blocking::{sealed, wait_for, Opts, Pipe, Stall, Target};
use super::error::{ReadError, WriteError};
use super::notify::Block;
use super::pipe::StreamPipe;
use super::waitable::Wait;

/// The sending half of a stream.
pub struct SendStream {
    pipe: Arc<StreamPipe>,
    opts: Opts,
    _conn: Arc<AppConn>,
}

/// The receiving half of a stream.
pub struct RecvStream {
    pipe: Arc<StreamPipe>,
    opts: Opts,
    stop_on_drop: VarInt,
    _conn: Arc<AppConn>,
}

impl std::fmt::Debug for SendStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendStream")
            .field("id", &self.pipe.id)
            .finish()
    }
}

impl std::fmt::Debug for RecvStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvStream")
            .field("id", &self.pipe.id)
            .finish()
    }
}

fn wstall(s: Stall) -> WriteError {
    match s {
        Stall::WouldBlock => WriteError::WouldBlock,
        Stall::TimedOut => WriteError::TimedOut,
    }
}

fn rstall(s: Stall) -> ReadError {
    match s {
        Stall::WouldBlock => ReadError::WouldBlock,
        Stall::TimedOut => ReadError::TimedOut,
    }
}

impl SendStream {
    pub(crate) fn new(pipe: Arc<StreamPipe>, conn: Arc<AppConn>) -> Self {
        Self {
            pipe,
            opts: Opts::default(),
            _conn: conn,
        }
    }

    /// The QUIC stream ID.
    pub fn id(&self) -> StreamId {
        self.pipe.id
    }
    /// Non-blocking mode: writes that would wait fail with `WouldBlock`.
    pub fn set_nonblocking(&self, on: bool) {
        self.opts.set_nonblocking(on);
    }
    /// Default timeout of blocking writes (`None`: wait forever).
    pub fn set_timeout(&self, t: Option<Duration>) {
        self.opts.set_timeout(t);
    }

    /// Bytes a write takes now without blocking. It only grows until this handle writes (0 once
    /// the stream ended or failed: a write then fails at once).
    pub fn write_available(&self) -> usize {
        self.pipe.write_available()
    }

    /// Writes some of `data` (at least one byte unless `data` is empty), waiting for room.
    pub fn write(&mut self, data: &[u8]) -> Result<usize, WriteError> {
        self.write_until(data, None)
    }

    /// [`SendStream::write`] with a deadline.
    pub fn write_until(
        &mut self,
        data: &[u8],
        deadline: Option<Instant>,
    ) -> Result<usize, WriteError> {
        let p = &self.pipe;
        wait_for(
            self.opts.nonblocking(),
            self.opts.deadline(deadline),
            p.progress(),
            |how| p.write(data, how),
            |sig| p.unblock_thread(sig),
            wstall,
        )
    }

    /// Writes all of `data`. On an error some prefix may have been written.
    pub fn write_all_until(
        &mut self,
        mut data: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), WriteError> {
        let deadline = self.opts.deadline(deadline);
        while !data.is_empty() {
            let n = self.write_until(data, deadline)?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Writes some of `data` without copying it (at least one byte unless `data` is empty),
    /// waiting for room, and advances `data` past what was taken. The pipe keeps the `Bytes`
    /// and quinn-proto sends from the same memory; pieces under 1 KiB are copied.
    pub fn write_bytes(&mut self, data: &mut Bytes) -> Result<usize, WriteError> {
        let p = &self.pipe;
        wait_for(
            self.opts.nonblocking(),
            self.opts.deadline(None),
            p.progress(),
            |how| p.write_bytes(data, how),
            |sig| p.unblock_thread(sig),
            wstall,
        )
    }

    /// Writes all of `data` without copying it (see [`SendStream::write_bytes`]), waiting until
    /// `deadline`. On an error some prefix may have been written.
    pub fn write_all_bytes_until(
        &mut self,
        mut data: Bytes,
        deadline: Option<Instant>,
    ) -> Result<(), WriteError> {
        let deadline = self.opts.deadline(deadline);
        let p = self.pipe.clone();
        while !data.is_empty() {
            wait_for(
                self.opts.nonblocking(),
                deadline,
                p.progress(),
                |how| p.write_bytes(&mut data, how),
                |sig| p.unblock_thread(sig),
                wstall,
            )?;
        }
        Ok(())
    }

    /// Ends the stream: FIN goes out after the buffered bytes. Never blocks; idempotent.
    pub fn finish(&mut self) -> Result<(), WriteError> {
        self.pipe.finish()
    }

    /// Abandons the stream with RESET_STREAM(`code`); buffered bytes are dropped.
    pub fn reset(&mut self, code: VarInt) -> Result<(), WriteError> {
        self.pipe.reset(code)
    }

    pub(crate) fn poll_write_inner(
        &self,
        data: &[u8],
        how: Block<'_>,
    ) -> Result<Option<usize>, WriteError> {
        self.pipe.write(data, how)
    }

    pub(crate) fn poll_write_bytes_inner(
        &self,
        data: &mut Bytes,
        how: Block<'_>,
    ) -> Result<Option<usize>, WriteError> {
        self.pipe.write_bytes(data, how)
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        self.pipe.app_dropped(VarInt::from_u32(0));
    }
}

impl RecvStream {
    pub(crate) fn new(pipe: Arc<StreamPipe>, conn: Arc<AppConn>) -> Self {
        Self {
            pipe,
            opts: Opts::default(),
            stop_on_drop: VarInt::from_u32(0),
            _conn: conn,
        }
    }

    /// The QUIC stream ID.
    pub fn id(&self) -> StreamId {
        self.pipe.id
    }
    /// The STOP_SENDING code sent if this handle is dropped before the stream ended (default
    /// 0). An application protocol has its own: HTTP/3 uses H3_NO_ERROR when a server answered
    /// without reading the whole request (RFC 9114, section 4.1.2).
    pub fn set_stop_on_drop(&mut self, code: VarInt) {
        self.stop_on_drop = code;
    }
    /// Non-blocking mode: reads that would wait fail with `WouldBlock`.
    pub fn set_nonblocking(&self, on: bool) {
        self.opts.set_nonblocking(on);
    }
    /// Default timeout of blocking reads (`None`: wait forever).
    pub fn set_timeout(&self, t: Option<Duration>) {
        self.opts.set_timeout(t);
    }

    /// Bytes a read returns now without blocking. It only grows until this handle reads.
    pub fn read_available(&self) -> usize {
        self.pipe.read_available()
    }

    /// Reads some bytes, waiting for at least one; `Ok(0)` at the end of the stream.
    pub fn read(&mut self, out: &mut [u8]) -> Result<usize, ReadError> {
        self.read_until(out, None)
    }

    /// [`RecvStream::read`] with a deadline.
    pub fn read_until(
        &mut self,
        out: &mut [u8],
        deadline: Option<Instant>,
    ) -> Result<usize, ReadError> {
        let p = &self.pipe;
        wait_for(
            self.opts.nonblocking(),
            self.opts.deadline(deadline),
            p.progress(),
            |how| p.read(out, how),
            |sig| p.unblock_thread(sig),
            rstall,
        )
    }

    /// Reads to the end of the stream, failing if it would exceed `limit` bytes.
    pub fn read_to_end_until(
        &mut self,
        limit: usize,
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>, ReadError> {
        let deadline = self.opts.deadline(deadline);
        let mut v = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = self.read_until(&mut buf, deadline)?;
            if n == 0 {
                return Ok(v);
            }
            if v.len() + n > limit {
                let _ = self.stop(VarInt::from_u32(0));
                return Err(ReadError::ClosedStream);
            }
            v.extend_from_slice(&buf[..n]);
        }
    }

    /// Stops the stream with STOP_SENDING(`code`): the peer should stop sending; unread bytes
    /// are dropped.
    pub fn stop(&mut self, code: VarInt) -> Result<(), ReadError> {
        self.pipe.stop(code)
    }

    pub(crate) fn poll_read_inner(
        &self,
        out: &mut [u8],
        how: Block<'_>,
    ) -> Result<Option<usize>, ReadError> {
        self.pipe.read(out, how)
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        self.pipe.app_dropped(self.stop_on_drop);
    }
}

impl io::Write for SendStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(SendStream::write(self, buf)?)
    }
    /// Bytes are handed to the shard as they are written; there is nothing to flush.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Read for RecvStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(RecvStream::read(self, buf)?)
    }
}

impl sealed::Sealed for SendStream {
    fn target(&self) -> Target<'_> {
        Target::new(&*self.pipe)
    }
}
impl Pipe for SendStream {}
impl sealed::Sealed for RecvStream {
    fn target(&self) -> Target<'_> {
        Target::new(&*self.pipe)
    }
}
impl Pipe for RecvStream {}
