//! Async use: `futures_io::AsyncRead` / `AsyncWrite` on the stream handles (and tokio's, with
//! the `tokio` feature), and async versions of the waiting operations (open, datagrams; accept
//! and connect are [`HandleEngine`](crate::HandleEngine)'s). Any executor works, including a multi-threaded tokio runtime: the shard wakes the
//! task's `Waker` registered in the pipe when the pipe changes in its favour; nothing polls.
//!
//! For code that implements poll-based traits over the handles (the `quicshard-h3` crate's
//! `h3::quic` implementation): [`RecvStream::poll_recv`], [`SendStream::poll_send`],
//! [`Connection::poll_accept_bi`] / [`Connection::poll_accept_uni`] and a [`StreamOpener`].
//!
//! Dropping a future cancels cleanly: an abandoned `open` leaves its stream to the next opener,
//! an abandoned `connect` closes the connection if it completes later.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use quinn_proto::Dir;

use super::conn::{Connection, StreamHalves};
use super::error::{ConnError, ReadError, WriteError};
use super::notify::Block;
use super::stream::{RecvStream, SendStream};

fn ready<T, E>(r: Result<Option<T>, E>) -> Poll<Result<T, E>> {
    match r {
        Ok(Some(v)) => Poll::Ready(Ok(v)),
        Ok(None) => Poll::Pending,
        Err(e) => Poll::Ready(Err(e)),
    }
}

impl RecvStream {
    /// Polls for bytes: `Ready(Ok(n))` with `n > 0` bytes copied into `out`, `Ready(Ok(0))` at
    /// the end of the stream (or if `out` is empty), `Pending` with the task's waker registered
    /// (the shard wakes it when data, FIN or a reset arrives). For callers that implement their
    /// own traits over the handles (e.g. `h3::quic`); most code uses `AsyncRead` or
    /// [`RecvStream::read_async`].
    pub fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<Result<usize, ReadError>> {
        ready(self.poll_read_inner(out, Block::Task(cx.waker())))
    }

    /// Reads some bytes; `Ok(0)` at the end of the stream.
    pub async fn read_async(&mut self, out: &mut [u8]) -> Result<usize, ReadError> {
        poll_fn(|cx| self.poll_recv(cx, out)).await
    }

    /// Reads to the end of the stream, failing if it would exceed `limit` bytes.
    pub async fn read_to_end_async(&mut self, limit: usize) -> Result<Vec<u8>, ReadError> {
        let mut v = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = self.read_async(&mut buf).await?;
            if n == 0 {
                return Ok(v);
            }
            if v.len() + n > limit {
                let _ = self.stop(quinn_proto::VarInt::from_u32(0));
                return Err(ReadError::ClosedStream);
            }
            v.extend_from_slice(&buf[..n]);
        }
    }
}

impl SendStream {
    /// Polls to write some of `data`: `Ready(Ok(n))` with `n > 0` bytes taken (0 only for empty
    /// `data`), `Pending` with the task's waker registered while the pipe is full. Errors are
    /// final (`Stopped(code)`, `ClosedStream`, `ConnectionLost`). The non-`Pin` building block
    /// behind `AsyncWrite` and [`SendStream::write_async`].
    pub fn poll_send(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<Result<usize, WriteError>> {
        ready(self.poll_write_inner(data, Block::Task(cx.waker())))
    }

    /// Writes some of `data`, waiting for room.
    pub async fn write_async(&mut self, data: &[u8]) -> Result<usize, WriteError> {
        poll_fn(|cx| self.poll_send(cx, data)).await
    }

    /// Writes all of `data`.
    pub async fn write_all_async(&mut self, mut data: &[u8]) -> Result<(), WriteError> {
        while !data.is_empty() {
            let n = self.write_async(data).await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Writes all of `data` without copying it (see [`SendStream::write_bytes`]).
    pub async fn write_all_bytes_async(&mut self, mut data: Bytes) -> Result<(), WriteError> {
        while !data.is_empty() {
            poll_fn(|cx| ready(self.poll_write_bytes_inner(&mut data, Block::Task(cx.waker()))))
                .await?;
        }
        Ok(())
    }
}

impl futures_io::AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_recv(cx, buf).map_err(Into::into)
    }
}

impl futures_io::AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_send(cx, buf).map_err(Into::into)
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    /// Finishes the stream (FIN after the buffered bytes).
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().finish().map_err(Into::into))
    }
}

#[cfg(feature = "tokio")]
impl tokio::io::AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let out = buf.initialize_unfilled();
        match self.poll_recv(cx, out) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(feature = "tokio")]
impl tokio::io::AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_send(cx, buf).map_err(Into::into)
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().finish().map_err(Into::into))
    }
}

impl Connection {
    async fn pair_async(&self, dir: Dir, open: bool) -> Result<StreamHalves, ConnError> {
        /// Withdraws a waiting opener whose future is dropped.
        struct Waiting<'a>(&'a Connection, Dir, bool);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                if self.2 {
                    self.0.cancel_open(self.1);
                }
            }
        }
        let mut w = Waiting(self, dir, false);
        poll_fn(|cx| ready(self.poll_pair(dir, open, &mut w.2, Block::Task(cx.waker())))).await
    }

    /// Opens a bidirectional stream.
    pub async fn open_bi_async(&self) -> Result<(SendStream, RecvStream), ConnError> {
        Ok(bi(self.pair_async(Dir::Bi, true).await?))
    }
    /// Opens a unidirectional stream.
    pub async fn open_uni_async(&self) -> Result<SendStream, ConnError> {
        Ok(uni_send(self.pair_async(Dir::Uni, true).await?))
    }
    /// The next bidirectional stream the peer opened.
    pub async fn accept_bi_async(&self) -> Result<(SendStream, RecvStream), ConnError> {
        Ok(bi(self.pair_async(Dir::Bi, false).await?))
    }
    /// The next unidirectional stream the peer opened.
    pub async fn accept_uni_async(&self) -> Result<RecvStream, ConnError> {
        Ok(uni_recv(self.pair_async(Dir::Uni, false).await?))
    }

    fn poll_accept(&self, cx: &mut Context<'_>, dir: Dir) -> Poll<Result<StreamHalves, ConnError>> {
        let mut unused = false;
        ready(self.poll_pair(dir, false, &mut unused, Block::Task(cx.waker())))
    }
    /// Polls for the next bidirectional stream the peer opened; `Pending` registers the task,
    /// which is woken when one arrives or the connection ends (then the error says why).
    pub fn poll_accept_bi(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(SendStream, RecvStream), ConnError>> {
        self.poll_accept(cx, Dir::Bi).map_ok(bi)
    }
    /// Polls for the next unidirectional stream the peer opened (see
    /// [`Connection::poll_accept_bi`]).
    pub fn poll_accept_uni(&self, cx: &mut Context<'_>) -> Poll<Result<RecvStream, ConnError>> {
        self.poll_accept(cx, Dir::Uni).map_ok(uni_recv)
    }
    /// A [`StreamOpener`]: opens streams from `poll_*` code (trait implementations that cannot
    /// hold a future).
    pub fn opener(&self) -> StreamOpener {
        StreamOpener {
            conn: self.clone(),
            waiting: [false; 2],
        }
    }

    /// Waits until the connection ends; see [`Connection::closed_until`].
    pub async fn closed_async(&self) -> quinn_proto::ConnectionError {
        poll_fn(|cx| match self.poll_closed(Block::Task(cx.waker())) {
            Some(e) => Poll::Ready(e),
            None => Poll::Pending,
        })
        .await
    }

    /// The next datagram from the peer.
    pub async fn read_datagram_async(&self) -> Result<Bytes, ConnError> {
        poll_fn(|cx| ready(self.poll_datagram(Block::Task(cx.waker())))).await
    }
}

fn bi(h: StreamHalves) -> (SendStream, RecvStream) {
    match h {
        (Some(s), Some(r)) => (s, r),
        // invariant: the shard builds bidirectional pairs with both pipes
        _ => unreachable!("bidirectional stream without both pipes"),
    }
}

fn uni_send(h: StreamHalves) -> SendStream {
    // invariant: a locally opened unidirectional stream has only a send pipe
    h.0.expect("opened uni stream has a send pipe")
}

fn uni_recv(h: StreamHalves) -> RecvStream {
    // invariant: a peer-opened unidirectional stream has only a receive pipe
    h.1.expect("incoming uni stream has a recv pipe")
}

/// Opens streams of one connection from `poll_*` code, e.g. an implementation of a trait like
/// `h3::quic::OpenStreams` that cannot store a future. Each direction has at most one open in
/// progress; `Pending` registers the task, woken when the stream is open (the peer's stream limit
/// may hold it back). Dropping the opener withdraws a pending open: the stream the shard opens
/// for it goes to the next opener.
pub struct StreamOpener {
    conn: Connection,
    /// Per direction: this opener is counted as waiting by the connection.
    waiting: [bool; 2],
}

impl std::fmt::Debug for StreamOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamOpener")
            .field("conn", &self.conn)
            .finish()
    }
}

impl StreamOpener {
    fn poll_open(
        &mut self,
        cx: &mut Context<'_>,
        dir: Dir,
    ) -> Poll<Result<StreamHalves, ConnError>> {
        let waiting = &mut self.waiting[dir as usize];
        ready(
            self.conn
                .poll_pair(dir, true, waiting, Block::Task(cx.waker())),
        )
    }
    /// Polls to open a bidirectional stream.
    pub fn poll_open_bi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(SendStream, RecvStream), ConnError>> {
        self.poll_open(cx, Dir::Bi).map_ok(bi)
    }
    /// Polls to open a unidirectional stream.
    pub fn poll_open_uni(&mut self, cx: &mut Context<'_>) -> Poll<Result<SendStream, ConnError>> {
        self.poll_open(cx, Dir::Uni).map_ok(uni_send)
    }
    /// The connection the streams are opened on.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

impl Drop for StreamOpener {
    fn drop(&mut self) {
        for dir in [Dir::Bi, Dir::Uni] {
            if self.waiting[dir as usize] {
                self.conn.cancel_open(dir);
            }
        }
    }
}
