//! Thread-safe handles (DESIGN §5.2, seed 001's worker concurrency model): [`Connection`],
//! [`SendStream`] and [`RecvStream`] are `Send + Sync` and usable from any thread, while the
//! connection itself stays on its shard. Each stream direction is a bounded pipe between the app
//! and the shard ([`pipe`](self#modules)); availability is monotonic and backpressure reaches
//! the peer through QUIC flow control.
//!
//! Start an engine with [`HandleEngine::builder`]; then [`HandleEngine::accept`] /
//! [`HandleEngine::connect`] hand out connections. Four ways to wait:
//! - **blocking**: `std::io::Read` / `Write`, the `_until(deadline)` variants, per-handle
//!   `set_timeout`, and [`block_until`] over several [`Pipe`]s;
//! - **non-blocking**: `set_nonblocking(true)` (`WouldBlock`) plus a [`Poller`] whose fd an
//!   application's own epoll / mio loop watches;
//! - **async**: `futures_io::AsyncRead` / `AsyncWrite` (tokio's with the `tokio` feature) and
//!   `*_async` methods;
//! - the callback API ([`Handler`](crate::Handler)) stays available for engines not in handle
//!   mode, and next to handles in a mixed engine ([`HandleEngine::builder_mixed`]).
//!
//! # Examples
//! ```no_run
//! use std::io::{Read, Write};
//! use quicshard::HandleEngine;
//! let server = HandleEngine::builder().shards(2).start().unwrap();
//! std::thread::scope(|s| {
//!     s.spawn(|| {
//!         let conn = server.accept().unwrap();
//!         let (mut send, mut recv) = conn.accept_bi().unwrap();
//!         let mut buf = Vec::new();
//!         recv.read_to_end(&mut buf).unwrap();
//!         send.write_all(&buf).unwrap(); // echo
//!     });
//! });
//! ```
//!
//! # Implementation notes
//! Three tiers, each file naming only its own tier's earlier files and the tiers below it (no
//! import cycle: `tests/layers.rs`); `README.md` here lists them in order:
//! - **shared core** (named by both sides, names neither): `sync` (the loom facade), `buf`,
//!   `error`, `registration` (a poller's eventfd and one handle's membership), `notify`
//!   (waiters, thread signals, one-shot answers), `progress` (how a waiting app thread gets a
//!   shard to make progress: worker threads, or the app-driven direct backend), `waitable` (the
//!   one generic waitable: register / unblock / poller written once), `pipe` (the byte pipe and
//!   its wake-up rules), `conn_shared` (one connection's shared state), `queue` (a shard's
//!   coalesced ready queue), `hub` (what one engine's handles and shards share: the accept
//!   queue);
//! - **shard side**: `bridge` ([`HandleHandler`], and posting closures to a shard);
//! - **application side**: `blocking` (the wait loop, [`Pipe`], [`block_until`]),
//!   `nonblocking` ([`Poller`]), `app_conn`, `stream` and `conn` (the handles), `async_io`,
//!   `engine` ([`HandleEngine`]).
//!
//! An app call that needs the shard queues its object in the shard's ready queue, which posts
//! one `Remote::run_on`-style message per burst; the shard wakes app threads, tasks or pollers
//! only when they are blocked on the object that changed.
#![allow(unexpected_cfgs)] // cfg(loom): see sync.rs

mod app_conn;
mod async_io;
mod blocking;
mod bridge;
mod buf;
mod conn;
mod conn_shared;
mod engine;
mod error;
mod hub;
#[cfg(loom)]
#[doc(hidden)]
pub mod model;
mod nonblocking;
mod notify;
mod pipe;
mod progress;
mod queue;
mod registration;
mod stream;
mod sync;
mod waitable;

pub use async_io::StreamOpener;
pub use blocking::{block_until, Pipe};
pub use bridge::HandleHandler;
pub use conn::Connection;
pub use engine::{HandleBuilder, HandleEngine, HandleLayer};
pub use error::{AcceptError, ConnError, ConnectError, ReadError, WriteError};
pub use hub::HandleConfig;
pub use nonblocking::Poller;
pub(crate) use notify::ThreadSignal;
pub(crate) use progress::{send_driving, Driven, Progress};
pub use stream::{RecvStream, SendStream};
