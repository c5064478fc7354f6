//! The `h3::quic` traits over quicshard's async handles: [`H3Connection`] (a
//! [`quicshard::handle::Connection`]), [`Opener`], [`BidiStream`], [`SendStream`] and
//! [`RecvStream`]. Nothing here runs a task or touches a runtime: every method polls a handle,
//! whose shard wakes the registered waker when the pipe or queue changes in the task's favour.
//!
//! Errors keep their QUIC meaning for h3: a peer's CONNECTION_CLOSE with an application code
//! becomes `ApplicationClose { error_code }`, an idle timeout `Timeout`, RESET_STREAM and
//! STOP_SENDING `StreamTerminated { error_code }`; everything else is `Undefined` / `Unknown`
//! (h3 treats those like a terminated stream or a failed connection).
//!
//! On a connection whose peer did not send `max_datagram_frame_size`, the start of each stream
//! the peer opens is checked for SETTINGS_H3_DATAGRAM = 1 (`settings.rs`): the connection
//! is then closed with H3_SETTINGS_ERROR (RFC 9297 §2.1.1), which h3 0.0.8 does not do itself.

use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h3::error::Code;
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};
use quicshard::handle::{self, ConnError, ReadError, StreamOpener, WriteError};
use quinn_proto::{ConnectionError, VarInt};

use crate::settings::{ControlPeek, Verdict, H3_SETTINGS_ERROR};

/// Bytes asked for per `poll_data` call: one chunk h3 parses at a time.
const READ_CHUNK: usize = 16 * 1024;

fn varint(code: u64) -> VarInt {
    // h3 codes are QUIC varints; anything larger is a bug in the caller: send the largest
    VarInt::from_u64(code).unwrap_or(VarInt::MAX)
}

fn stream_id(id: quinn_proto::StreamId) -> StreamId {
    // invariant: a QUIC stream ID is a varint, which h3's StreamId accepts
    StreamId::try_from(VarInt::from(id).into_inner()).expect("QUIC stream IDs are varints")
}

fn lost(e: &ConnectionError) -> ConnectionErrorIncoming {
    match e {
        ConnectionError::ApplicationClosed(c) => ConnectionErrorIncoming::ApplicationClose {
            error_code: c.error_code.into_inner(),
        },
        ConnectionError::TimedOut => ConnectionErrorIncoming::Timeout,
        other => ConnectionErrorIncoming::Undefined(Arc::new(other.clone())),
    }
}

fn conn_error(e: ConnError) -> ConnectionErrorIncoming {
    match e {
        ConnError::ConnectionLost(c) => lost(&c),
        other => ConnectionErrorIncoming::Undefined(Arc::new(other)),
    }
}

fn open_error(e: ConnError) -> StreamErrorIncoming {
    StreamErrorIncoming::ConnectionErrorIncoming {
        connection_error: conn_error(e),
    }
}

fn write_error(e: WriteError) -> StreamErrorIncoming {
    match e {
        WriteError::Stopped(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        WriteError::ConnectionLost(c) => StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: lost(&c),
        },
        other => StreamErrorIncoming::Unknown(Box::new(other)),
    }
}

fn read_error(e: ReadError) -> StreamErrorIncoming {
    match e {
        ReadError::Reset(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        ReadError::ConnectionLost(c) => StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: lost(&c),
        },
        other => StreamErrorIncoming::Unknown(Box::new(other)),
    }
}

/// A QUIC connection for h3: `h3::server::Connection::new(H3Connection::new(conn))` or
/// `h3::client::new(H3Connection::new(conn))`.
#[derive(Debug)]
pub struct H3Connection {
    conn: handle::Connection,
    opener: Opener,
}

impl H3Connection {
    /// Wraps a handle-mode connection (from `Engine::accept_async` or `connect_async`).
    pub fn new(conn: handle::Connection) -> Self {
        let opener = Opener(conn.opener());
        Self { conn, opener }
    }

    /// The underlying connection handle.
    pub fn connection(&self) -> &handle::Connection {
        &self.conn
    }
}

impl<B: Buf> quic::Connection<B> for H3Connection {
    type RecvStream = RecvStream;
    type OpenStreams = Opener;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<RecvStream, ConnectionErrorIncoming>> {
        let r = ready!(self.conn.poll_accept_uni(cx)).map_err(conn_error)?;
        let mut stream = RecvStream::new(r, Code::H3_NO_ERROR);
        // RFC 9297 §2.1.1: a peer without max_datagram_frame_size must not enable h3 datagrams
        if self.conn.max_datagram_size().is_none() {
            stream.watch = Some(Box::new(Watch {
                peek: ControlPeek::default(),
                conn: self.conn.clone(),
            }));
        }
        Poll::Ready(Ok(stream))
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream<B>, ConnectionErrorIncoming>> {
        self.conn
            .poll_accept_bi(cx)
            .map_ok(|(s, r)| BidiStream::new(s, r, Code::H3_NO_ERROR))
            .map_err(conn_error)
    }

    fn opener(&self) -> Opener {
        Opener(self.conn.opener())
    }
}

impl<B: Buf> quic::OpenStreams<B> for H3Connection {
    type BidiStream = BidiStream<B>;
    type SendStream = SendStream<B>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream<B>, StreamErrorIncoming>> {
        quic::OpenStreams::<B>::poll_open_bidi(&mut self.opener, cx)
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<SendStream<B>, StreamErrorIncoming>> {
        quic::OpenStreams::<B>::poll_open_send(&mut self.opener, cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        quic::OpenStreams::<B>::close(&mut self.opener, code, reason);
    }
}

/// Opens streams for h3 (its `SendRequest` and control streams); one per clone of the
/// connection's opener.
#[derive(Debug)]
pub struct Opener(StreamOpener);

/// A clone opens streams on the same connection, with its own pending opens.
impl Clone for Opener {
    fn clone(&self) -> Self {
        Self(self.0.connection().opener())
    }
}

impl<B: Buf> quic::OpenStreams<B> for Opener {
    type BidiStream = BidiStream<B>;
    type SendStream = SendStream<B>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream<B>, StreamErrorIncoming>> {
        self.0
            .poll_open_bi(cx)
            .map_ok(|(s, r)| BidiStream::new(s, r, Code::H3_REQUEST_CANCELLED))
            .map_err(open_error)
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<SendStream<B>, StreamErrorIncoming>> {
        self.0
            .poll_open_uni(cx)
            .map_ok(SendStream::new)
            .map_err(open_error)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        self.0.connection().close(varint(code.value()), reason);
    }
}

/// The sending half of a stream: h3 hands it one [`WriteBuf`] at a time (`send_data`), which
/// `poll_ready` copies into the stream's pipe.
pub struct SendStream<B: Buf> {
    stream: handle::SendStream,
    writing: Option<WriteBuf<B>>,
}

impl<B: Buf> std::fmt::Debug for SendStream<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendStream")
            .field("stream", &self.stream)
            .field("writing", &self.writing.as_ref().map(Buf::remaining))
            .finish()
    }
}

impl<B: Buf> SendStream<B> {
    fn new(stream: handle::SendStream) -> Self {
        Self {
            stream,
            writing: None,
        }
    }
}

impl<B: Buf> quic::SendStream<B> for SendStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        while let Some(buf) = self.writing.as_mut() {
            if !buf.has_remaining() {
                self.writing = None;
                break;
            }
            match ready!(self.stream.poll_send(cx, buf.chunk())) {
                Ok(n) => buf.advance(n),
                Err(e) => {
                    // the stream is over (stopped, reset, lost): the write is dropped, and the
                    // next one gets the same error
                    self.writing = None;
                    return Poll::Ready(Err(write_error(e)));
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        if self.writing.as_ref().is_some_and(Buf::has_remaining) {
            return Err(StreamErrorIncoming::Unknown(
                "send_data before poll_ready finished the previous write".into(),
            ));
        }
        self.writing = Some(data.into());
        Ok(())
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        ready!(self.poll_ready(cx))?;
        Poll::Ready(self.stream.finish().map_err(write_error))
    }

    fn reset(&mut self, reset_code: u64) {
        self.writing = None;
        let _ = self.stream.reset(varint(reset_code));
    }

    fn send_id(&self) -> StreamId {
        stream_id(self.stream.id())
    }
}

/// The receiving half of a stream: each `poll_data` returns what the pipe holds, up to 16 KiB.
///
/// Dropped before its end, it stops the stream with an HTTP/3 code instead of the handle's 0:
/// H3_NO_ERROR for streams the peer opened (a server that answered without reading the rest of
/// the request, RFC 9114 section 4.1.2), H3_REQUEST_CANCELLED for requests this side opened.
#[derive(Debug)]
pub struct RecvStream {
    stream: handle::RecvStream,
    scratch: Vec<u8>,
    /// A peer's unidirectional stream on a connection without datagram support: its start is
    /// checked for SETTINGS_H3_DATAGRAM ([`crate::settings`]) until the answer is known.
    watch: Option<Box<Watch>>,
}

/// The SETTINGS_H3_DATAGRAM check of one stream.
struct Watch {
    peek: ControlPeek,
    conn: handle::Connection,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("peek", &self.peek).finish()
    }
}

impl RecvStream {
    fn new(mut stream: handle::RecvStream, stop_on_drop: Code) -> Self {
        stream.set_stop_on_drop(varint(stop_on_drop.value()));
        Self {
            stream,
            scratch: Vec::new(),
            watch: None,
        }
    }

    /// Feeds `bytes` to the SETTINGS_H3_DATAGRAM check: `Err` once it found the setting, after
    /// closing the connection with H3_SETTINGS_ERROR.
    fn check(&mut self, bytes: &[u8]) -> Result<(), StreamErrorIncoming> {
        let Some(w) = self.watch.as_mut() else {
            return Ok(());
        };
        match w.peek.feed(bytes) {
            Verdict::NeedMore if !bytes.is_empty() => Ok(()),
            Verdict::NeedMore | Verdict::Nothing => {
                self.watch = None;
                Ok(())
            }
            Verdict::DatagramsOn => {
                w.conn.close(
                    varint(H3_SETTINGS_ERROR),
                    b"SETTINGS_H3_DATAGRAM without max_datagram_frame_size",
                );
                self.watch = None;
                Err(StreamErrorIncoming::ConnectionErrorIncoming {
                    connection_error: ConnectionErrorIncoming::ApplicationClose {
                        error_code: H3_SETTINGS_ERROR,
                    },
                })
            }
        }
    }
}

impl quic::RecvStream for RecvStream {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        if self.scratch.is_empty() {
            self.scratch = vec![0; READ_CHUNK];
        }
        let n = ready!(self.stream.poll_recv(cx, &mut self.scratch)).map_err(read_error)?;
        let data = (n > 0).then(|| Bytes::copy_from_slice(&self.scratch[..n]));
        self.check(data.as_deref().unwrap_or(&[]))?;
        Poll::Ready(Ok(data))
    }

    fn stop_sending(&mut self, error_code: u64) {
        let _ = self.stream.stop(varint(error_code));
    }

    fn recv_id(&self) -> StreamId {
        stream_id(self.stream.id())
    }
}

/// A bidirectional stream (a request stream), splittable into its halves.
#[derive(Debug)]
pub struct BidiStream<B: Buf> {
    send: SendStream<B>,
    recv: RecvStream,
}

impl<B: Buf> BidiStream<B> {
    fn new(send: handle::SendStream, recv: handle::RecvStream, stop_on_drop: Code) -> Self {
        Self {
            send: SendStream::new(send),
            recv: RecvStream::new(recv, stop_on_drop),
        }
    }
}

impl<B: Buf> quic::SendStream<B> for BidiStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }
    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }
    fn reset(&mut self, reset_code: u64) {
        self.send.reset(reset_code);
    }
    fn send_id(&self) -> StreamId {
        self.send.send_id()
    }
}

impl<B: Buf> quic::RecvStream for BidiStream<B> {
    type Buf = Bytes;
    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        self.recv.poll_data(cx)
    }
    fn stop_sending(&mut self, error_code: u64) {
        self.recv.stop_sending(error_code);
    }
    fn recv_id(&self) -> StreamId {
        self.recv.recv_id()
    }
}

impl<B: Buf> quic::BidiStream<B> for BidiStream<B> {
    type SendStream = SendStream<B>;
    type RecvStream = RecvStream;
    fn split(self) -> (SendStream<B>, RecvStream) {
        (self.send, self.recv)
    }
}
