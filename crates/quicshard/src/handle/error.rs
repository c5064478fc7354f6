//! Errors of the handle operations, one type per kind of operation (STYLE §9). Each converts to
//! `std::io::Error` with a fitting `ErrorKind` (`WouldBlock`, `TimedOut`, `ConnectionReset`, ...)
//! for the `std::io` / `futures_io` / tokio trait impls.

use std::io;

use quinn_proto::{ConnectionError, VarInt};

/// Why a write, `finish` or `reset` on a [`SendStream`](super::SendStream) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The peer sent STOP_SENDING with this code: it reads no more. Stop writing this stream.
    #[error("stopped by peer: code {0}")]
    Stopped(VarInt),
    /// This side already finished or reset the stream. Open a new stream for more data.
    #[error("stream already finished or reset")]
    ClosedStream,
    /// The connection is closed (reason inside); nothing more can be sent on it.
    #[error("connection lost: {0}")]
    ConnectionLost(ConnectionError),
    /// Non-blocking mode and the pipe is full: wait for the handle to become ready (poller,
    /// `block_until`) and retry.
    #[error("operation would block")]
    WouldBlock,
    /// The deadline passed before any byte could be written. Retry or give up.
    #[error("timed out")]
    TimedOut,
}

/// Why a read or `stop` on a [`RecvStream`](super::RecvStream) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The peer reset the stream (RESET_STREAM) with this code; unread data is discarded.
    #[error("reset by peer: code {0}")]
    Reset(VarInt),
    /// This side stopped the stream (STOP_SENDING) already.
    #[error("stream already stopped")]
    ClosedStream,
    /// The connection is closed (reason inside) before the stream ended.
    #[error("connection lost: {0}")]
    ConnectionLost(ConnectionError),
    /// Non-blocking mode and nothing to read yet: wait for readiness and retry.
    #[error("operation would block")]
    WouldBlock,
    /// The deadline passed with nothing to read.
    #[error("timed out")]
    TimedOut,
}

/// Why a connection operation (open, accept, datagrams, stats) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    /// The connection is closed (reason inside).
    #[error("connection lost: {0}")]
    ConnectionLost(ConnectionError),
    /// Non-blocking mode and nothing ready: wait for readiness and retry.
    #[error("operation would block")]
    WouldBlock,
    /// The deadline passed.
    #[error("timed out")]
    TimedOut,
    /// The engine has stopped; nothing on it can make progress.
    #[error("engine stopped")]
    EngineStopped,
    /// The datagram is larger than the path allows (`Connection::max_datagram_size`).
    #[error("datagram too large")]
    DatagramTooLarge,
    /// The peer does not accept datagrams (or they are disabled locally).
    #[error("datagrams not supported by the peer")]
    DatagramsUnsupported,
}

/// Why [`HandleEngine::connect`](crate::HandleEngine::connect) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// quinn-proto refused to start the connection (bad server name, no CIDs, stopping).
    #[error("connect: {0}")]
    Connect(#[from] quinn_proto::ConnectError),
    /// The handshake failed or the connection was closed before it completed.
    #[error("handshake failed: {0}")]
    Handshake(ConnectionError),
    /// The deadline passed before the handshake completed (the attempt goes on and is closed
    /// by its idle timeout).
    #[error("timed out")]
    TimedOut,
    /// Non-blocking variant only: the handshake is still in progress.
    #[error("operation would block")]
    WouldBlock,
    /// The engine has stopped.
    #[error("engine stopped")]
    EngineStopped,
}

/// Why [`HandleEngine::accept`](crate::HandleEngine::accept) returned no connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    /// Non-blocking variant: no connection is waiting.
    #[error("operation would block")]
    WouldBlock,
    /// The deadline passed.
    #[error("timed out")]
    TimedOut,
}

fn lost_kind(e: &ConnectionError) -> io::ErrorKind {
    match e {
        ConnectionError::TimedOut => io::ErrorKind::TimedOut,
        ConnectionError::LocallyClosed => io::ErrorKind::NotConnected,
        _ => io::ErrorKind::ConnectionReset,
    }
}

impl From<WriteError> for io::Error {
    fn from(e: WriteError) -> Self {
        let kind = match &e {
            WriteError::Stopped(_) => io::ErrorKind::ConnectionReset,
            WriteError::ClosedStream => io::ErrorKind::NotConnected,
            WriteError::ConnectionLost(c) => lost_kind(c),
            WriteError::WouldBlock => io::ErrorKind::WouldBlock,
            WriteError::TimedOut => io::ErrorKind::TimedOut,
        };
        io::Error::new(kind, e)
    }
}

impl From<ReadError> for io::Error {
    fn from(e: ReadError) -> Self {
        let kind = match &e {
            ReadError::Reset(_) => io::ErrorKind::ConnectionReset,
            ReadError::ClosedStream => io::ErrorKind::NotConnected,
            ReadError::ConnectionLost(c) => lost_kind(c),
            ReadError::WouldBlock => io::ErrorKind::WouldBlock,
            ReadError::TimedOut => io::ErrorKind::TimedOut,
        };
        io::Error::new(kind, e)
    }
}

impl From<ConnError> for io::Error {
    fn from(e: ConnError) -> Self {
        let kind = match &e {
            ConnError::ConnectionLost(c) => lost_kind(c),
            ConnError::WouldBlock => io::ErrorKind::WouldBlock,
            ConnError::TimedOut => io::ErrorKind::TimedOut,
            ConnError::EngineStopped => io::ErrorKind::NotConnected,
            ConnError::DatagramTooLarge | ConnError::DatagramsUnsupported => {
                io::ErrorKind::InvalidInput
            }
        };
        io::Error::new(kind, e)
    }
}
