//! [`HandleEngine`]: the engine of the handle model, and every method that model adds to the
//! core [`Engine`] (which it derefs to for the rest: addresses, counters, TLS reload, injection).
//!
//! - [`HandleEngine::builder`] / [`HandleEngine::builder_with`]: every shard runs the built-in
//!   [`HandleHandler`], which bridges quinn-proto to thread-safe [`Connection`] and stream
//!   handles; configure it like any [`Builder`], `start()` gives a `HandleEngine` on the worker
//!   backend (shard threads), `start_direct` (see [`crate::direct`]) one on the direct backend.
//! - [`HandleEngine::builder_mixed`]: handles for the connections whose negotiated ALPN is one of
//!   `handle_alpns`; every other connection is handed, whole and for its entire life, to the
//!   shard's fallback callback [`Handler`], e.g. HTTP/3 over the handles next to callback
//!   protocols on one port. Client connections made with `connect` always stay handles.
//! - Waiting for a connection: [`HandleEngine::accept`] (`_until`, `try_`, `_async`),
//!   [`HandleEngine::connect`] (`_until`, `_async`); the engine is a [`Pipe`] (ready: a
//!   connection to accept).
//! - The direct backend's own loop: [`HandleEngine::poll_fd`], [`HandleEngine::next_deadline`],
//!   [`HandleEngine::tick`] (on a worker-backend engine `None`, `None`, `false`).
//!
//! # Examples
//! ```no_run
//! use quicshard::HandleEngine;
//! let server = HandleEngine::builder().shards(2).start().unwrap();
//! let cert = server.certificate().unwrap();
//! let tls = quicshard::tls::client_config_trusting(cert, &[]).unwrap();
//! let client = HandleEngine::builder().shards(1).client_config(tls).start().unwrap();
//! let conn = client.connect(server.local_addr(), "localhost").unwrap();
//! let (mut send, _recv) = conn.open_bi().unwrap();
//! send.write_all_until(b"hello", None).unwrap();
//! let accepted = server.accept().unwrap();
//! ```
//!
//! A mixed engine:
//! ```no_run
//! use quicshard::{HandleEngine, Handler, ShardId};
//! struct Echo;
//! impl Handler for Echo {}
//! let engine = HandleEngine::builder_mixed(Default::default(), &[b"h3"], |_shard: ShardId| {
//!     Box::new(Echo) as Box<dyn Handler + Send>
//! })
//! .alpn(&[b"h3", b"echo"])
//! .start()
//! .unwrap();
//! let h3_conn = engine.accept().unwrap(); // only connections that negotiated "h3"
//! ```

use std::future::poll_fn;
use std::net::SocketAddr;
use std::ops::Deref;
use std::os::fd::RawFd;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use super::blocking::{sealed, wait_for, Pipe, Stall, Target};
use super::bridge::{HandleHandler, Shards};
use super::conn::Connection;
use super::conn_shared::ConnShared;
use super::error::{AcceptError, ConnectError};
use super::hub::{ConnectReply, HandleConfig, Hub};
use super::notify::{Block, Canceled, Slot};
use super::progress::Driven;
use super::waitable::Wait;
use crate::engine::{Builder, Engine, Layer};
use crate::handler::{Handler, ShardId};
use crate::stats::ShardStats;

/// The handle layer on a [`Builder`]: its `start()` gives a [`HandleEngine`]. Made by
/// [`HandleEngine::builder`].
#[derive(Clone)]
pub struct HandleLayer {
    pub(crate) hub: Arc<Hub>,
    pub(crate) shards: Arc<Shards>,
}

impl HandleLayer {
    fn new(config: HandleConfig) -> Self {
        let hub = Arc::new(Hub::new(config));
        let shards = Arc::new(Shards::new(hub.progress().clone()));
        Self { hub, shards }
    }
}

/// A [`Builder`] of a [`HandleEngine`].
pub type HandleBuilder = Builder<HandleHandler, HandleLayer>;

impl Layer<HandleHandler> for HandleLayer {
    type Engine = HandleEngine;
    fn wrap(self, engine: Engine<HandleHandler>) -> HandleEngine {
        HandleEngine::new(engine, self, None)
    }
}

/// A running engine of the handle model (see the module docs of [`crate::handle`]). Derefs to the core
/// [`Engine`] for what every engine has.
pub struct HandleEngine {
    core: Engine<HandleHandler>,
    hub: Arc<Hub>,
    shards: Arc<Shards>,
    /// App-driven backend only: its driver and this engine's shard in it.
    driven: Option<(Arc<dyn Driven>, usize)>,
}

impl HandleEngine {
    /// A builder of a handle-model engine with the default [`HandleConfig`].
    pub fn builder() -> HandleBuilder {
        Self::builder_with(HandleConfig::default())
    }

    /// [`HandleEngine::builder`] with explicit handle settings.
    pub fn builder_with(config: HandleConfig) -> HandleBuilder {
        let layer = HandleLayer::new(config);
        let l = layer.clone();
        Engine::builder(move |shard| HandleHandler::new(shard, l.hub.clone(), l.shards.clone()))
            .with_layer(layer)
    }

    /// A builder of a mixed engine: handles for connections that negotiate one of
    /// `handle_alpns`, and on each shard a callback handler made by `fallback` (on that shard's
    /// thread) for every other connection. The server's ALPN list ([`Builder::alpn`] or the TLS
    /// config) must offer both kinds of protocols.
    pub fn builder_mixed<F>(
        config: HandleConfig,
        handle_alpns: &[&[u8]],
        fallback: F,
    ) -> HandleBuilder
    where
        F: Fn(ShardId) -> Box<dyn Handler + Send> + Send + Sync + 'static,
    {
        let layer = HandleLayer::new(config);
        let alpns: Arc<[Vec<u8>]> = handle_alpns.iter().map(|a| a.to_vec()).collect();
        let l = layer.clone();
        Engine::builder(move |shard| {
            let (hub, shards) = (l.hub.clone(), l.shards.clone());
            HandleHandler::with_fallback(shard, hub, shards, alpns.clone(), fallback(shard))
        })
        .with_layer(layer)
    }

    /// Wraps a started core engine; `driven`: the app-driven backend running its shard.
    pub(crate) fn new(
        core: Engine<HandleHandler>,
        layer: HandleLayer,
        driven: Option<(Arc<dyn Driven>, usize)>,
    ) -> Self {
        layer.shards.set_remote(core.remote());
        Self {
            core,
            hub: layer.hub,
            shards: layer.shards,
            driven,
        }
    }

    fn connection(&self, c: Arc<ConnShared>) -> Connection {
        Connection::new(c, Arc::downgrade(&self.shards))
    }

    /// Waits for the next incoming connection (handshake complete).
    pub fn accept(&self) -> Result<Connection, AcceptError> {
        self.accept_until(None)
    }

    /// [`HandleEngine::accept`] with a deadline (`None`: forever).
    pub fn accept_until(&self, deadline: Option<Instant>) -> Result<Connection, AcceptError> {
        self.accept_inner(false, deadline)
    }

    /// The next incoming connection if one is waiting, else `WouldBlock`.
    pub fn try_accept(&self) -> Result<Connection, AcceptError> {
        self.accept_inner(true, None)
    }

    fn accept_inner(
        &self,
        nonblocking: bool,
        deadline: Option<Instant>,
    ) -> Result<Connection, AcceptError> {
        let hub = &self.hub;
        let c = wait_for(
            nonblocking,
            deadline,
            hub.progress(),
            |how| Ok(hub.accept(how)),
            |sig| hub.unblock_thread(sig),
            |s| match s {
                Stall::WouldBlock => AcceptError::WouldBlock,
                Stall::TimedOut => AcceptError::TimedOut,
            },
        )?;
        Ok(self.connection(c))
    }

    /// Waits for the next incoming connection.
    pub async fn accept_async(&self) -> Connection {
        poll_fn(|cx| match self.hub.accept(Block::Task(cx.waker())) {
            Some(c) => Poll::Ready(self.connection(c)),
            None => Poll::Pending,
        })
        .await
    }

    /// Opens a client connection (on the shards in turn) and waits until its handshake
    /// completes or fails.
    pub fn connect(&self, addr: SocketAddr, server_name: &str) -> Result<Connection, ConnectError> {
        self.connect_until(addr, server_name, None)
    }

    /// [`HandleEngine::connect`] with a deadline. On `TimedOut` the attempt is closed if it
    /// completes later.
    pub fn connect_until(
        &self,
        addr: SocketAddr,
        server_name: &str,
        deadline: Option<Instant>,
    ) -> Result<Connection, ConnectError> {
        let slot = self.start_connect(addr, server_name)?;
        let r = wait_for(
            false,
            deadline,
            self.hub.progress(),
            |how| Ok(slot.poll(how)),
            |sig| slot.unblock_thread(sig),
            |_| ConnectError::TimedOut,
        );
        let r = match r {
            Ok(r) => r,
            Err(e) => match slot.abandon() {
                Some(r) => Ok(r),
                None => return Err(e),
            },
        };
        finish_connect(r, &self.shards)
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
        finish_connect(r, &self.shards)
    }

    /// Asks a shard to connect; the slot gets the outcome.
    fn start_connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Arc<Slot<ConnectReply>>, ConnectError> {
        let shard = self.hub.next_connect_shard(self.core.shards());
        let (slot, tx) = Slot::new();
        let name = server_name.to_owned();
        self.shards
            .post(shard, move |ctx, h| h.connect(ctx, addr, &name, tx))
            .map_err(|_| ConnectError::EngineStopped)?;
        Ok(slot)
    }

    /// Whether this engine runs on the direct backend ([`crate::direct`]).
    pub fn is_direct(&self) -> bool {
        self.driven.is_some()
    }

    /// A file descriptor that becomes readable when the engine has input (UDP direct engines
    /// only; a memory pair is not pollable). Watch it for reading in your own epoll / mio loop
    /// and call [`HandleEngine::tick`] when it is readable or [`HandleEngine::next_deadline`]
    /// passed.
    pub fn poll_fd(&self) -> Option<RawFd> {
        self.driven.as_ref().and_then(|(d, _)| d.poll_fd())
    }

    /// When the engine next needs [`HandleEngine::tick`] even without input (timers; now if
    /// work was left over), as of its last turn. `None`: no timer is armed.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.driven.as_ref().and_then(|(d, _)| d.next_deadline())
    }

    /// Runs the engine's pending work (input, timers, output) without blocking. Returns `false`
    /// if another thread was driving it at that moment (that thread does the work).
    pub fn tick(&self) -> bool {
        self.driven.as_ref().is_some_and(|(d, _)| d.tick())
    }

    /// Stops accepting, closes every connection with CONNECTION_CLOSE, drains until all are
    /// drained or `timeout` passed, stops the shards; returns the final counters.
    pub fn shutdown(mut self, timeout: Duration) -> Vec<ShardStats> {
        self.stop(timeout);
        self.core.stats()
    }

    fn stop(&mut self, timeout: Duration) {
        if let Some((driven, index)) = self.driven.take() {
            driven.shutdown(index, Instant::now() + timeout);
        }
        self.core.stop(timeout);
    }
}

impl Deref for HandleEngine {
    type Target = Engine<HandleHandler>;
    fn deref(&self) -> &Engine<HandleHandler> {
        &self.core
    }
}

impl Drop for HandleEngine {
    fn drop(&mut self) {
        // the core engine stops its shard threads itself; an app-driven shard is stopped here
        if let Some((driven, index)) = self.driven.take() {
            driven.shutdown(index, Instant::now());
        }
    }
}

impl sealed::Sealed for HandleEngine {
    fn target(&self) -> Target<'_> {
        Target::new(&*self.hub)
    }
}
/// Ready when a connection waits to be accepted.
impl Pipe for HandleEngine {}

/// Turns a shard's connect answer into a handle.
fn finish_connect(
    r: Result<ConnectReply, Canceled>,
    shards: &Arc<Shards>,
) -> Result<Connection, ConnectError> {
    match r {
        Ok(Ok(c)) => Ok(Connection::new(c, Arc::downgrade(shards))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ConnectError::EngineStopped),
    }
}

/// Abandons a pending connect when its future is dropped.
struct ConnectGuard(Option<Arc<Slot<ConnectReply>>>);

impl Drop for ConnectGuard {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            // an answer that already arrived becomes a handle, whose drop closes it
            if let Some(Ok(c)) = slot.abandon() {
                drop(Connection::new(c, Weak::new()));
            }
        }
    }
}
