//! Async use: `futures_io::AsyncRead` / `AsyncWrite` on the stream handles (and tokio's, with
//! the `tokio` feature), and async versions of the waiting operations (accept, open, connect,
//! datagrams). Any executor works, including a multi-threaded tokio runtime: the shard wakes the
//! task's `Waker` registered in the pipe when the pipe changes in its favour; nothing polls.
//!
//! Dropping a future cancels cleanly: an abandoned `open` leaves its stream to the next opener,
//! an abandoned `connect` closes the connection if it completes later.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use quinn_proto::Dir;

use super::bridge::HandleHandler;
use super::conn::{Connection, StreamHalves};
use super::error::{ConnError, ConnectError, ReadError, WriteError};
use super::hub::{finish_connect, ConnectReply};
use super::notify::{Block, Slot};
use super::stream::{RecvStream, SendStream};
use crate::engine::Engine;

fn ready<T, E>(r: Result<Option<T>, E>) -> Poll<Result<T, E>> {
    match r {
        Ok(Some(v)) => Poll::Ready(Ok(v)),
        Ok(None) => Poll::Pending,
        Err(e) => Poll::Ready(Err(e)),
    }
}

impl RecvStream {
    fn poll_read_priv(
        &self,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<Result<usize, ReadError>> {
        ready(self.poll_read_inner(out, Block::Task(cx.waker())))
    }

    /// Reads some bytes; `Ok(0)` at the end of the stream.
    pub async fn read_async(&mut self, out: &mut [u8]) -> Result<usize, ReadError> {
        poll_fn(|cx| self.poll_read_priv(cx, out)).await
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
    fn poll_write_priv(
        &self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<Result<usize, WriteError>> {
        ready(self.poll_write_inner(data, Block::Task(cx.waker())))
    }

    /// Writes some of `data`, waiting for room.
    pub async fn write_async(&mut self, data: &[u8]) -> Result<usize, WriteError> {
        poll_fn(|cx| self.poll_write_priv(cx, data)).await
    }

    /// Writes all of `data`.
    pub async fn write_all_async(&mut self, mut data: &[u8]) -> Result<(), WriteError> {
        while !data.is_empty() {
            let n = self.write_async(data).await?;
            data = &data[n..];
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
        self.poll_read_priv(cx, buf).map_err(Into::into)
    }
}

impl futures_io::AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_priv(cx, buf).map_err(Into::into)
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
        match self.poll_read_priv(cx, out) {
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
        self.poll_write_priv(cx, buf).map_err(Into::into)
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
        match self.pair_async(Dir::Bi, true).await? {
            (Some(s), Some(r)) => Ok((s, r)),
            _ => unreachable!("bidirectional stream without both pipes"),
        }
    }
    /// Opens a unidirectional stream.
    pub async fn open_uni_async(&self) -> Result<SendStream, ConnError> {
        let (s, _) = self.pair_async(Dir::Uni, true).await?;
        // invariant: a locally opened unidirectional stream has only a send pipe
        Ok(s.expect("opened uni stream has a send pipe"))
    }
    /// The next bidirectional stream the peer opened.
    pub async fn accept_bi_async(&self) -> Result<(SendStream, RecvStream), ConnError> {
        match self.pair_async(Dir::Bi, false).await? {
            (Some(s), Some(r)) => Ok((s, r)),
            _ => unreachable!("bidirectional stream without both pipes"),
        }
    }
    /// The next unidirectional stream the peer opened.
    pub async fn accept_uni_async(&self) -> Result<RecvStream, ConnError> {
        let (_, r) = self.pair_async(Dir::Uni, false).await?;
        // invariant: a peer-opened unidirectional stream has only a receive pipe
        Ok(r.expect("incoming uni stream has a recv pipe"))
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

/// Abandons a pending connect when its future is dropped.
struct ConnectGuard(Option<Arc<Slot<ConnectReply>>>);

impl Drop for ConnectGuard {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            // an answer that already arrived becomes a handle, whose drop closes it
            if let Some(r) = slot.abandon() {
                let _ = finish_connect(Ok(r));
            }
        }
    }
}

impl Engine<HandleHandler> {
    /// Waits for the next incoming connection.
    pub async fn accept_async(&self) -> Connection {
        poll_fn(|cx| match self.poll_accept(Block::Task(cx.waker())) {
            Some(c) => Poll::Ready(c),
            None => Poll::Pending,
        })
        .await
    }

    /// Opens a client connection and waits for its handshake.
    pub async fn connect_async(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Connection, ConnectError> {
        let mut guard = ConnectGuard(Some(self.start_connect(addr, server_name)?));
        let r = poll_fn(|cx| {
            // invariant: the guard holds the slot until this future completes
            let slot = guard.0.as_ref().expect("pending connect slot");
            match slot.poll(Block::Task(cx.waker())) {
                Some(r) => Poll::Ready(r),
                None => Poll::Pending,
            }
        })
        .await;
        guard.0 = None;
        finish_connect(r)
    }
}
