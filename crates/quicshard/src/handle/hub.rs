//! Handle mode of the engine: the [`Hub`] every shard's [`HandleHandler`] and every handle share
//! (configuration, the accept queue, the way to post work to a shard), and the `Engine` methods
//! that only exist in handle mode: [`Engine::builder_handles`], `accept`, `connect`.
//!
//! # Examples
//! ```no_run
//! use quicshard::Engine;
//! let server = Engine::builder_handles().shards(2).start().unwrap();
//! let cert = server.certificate().unwrap();
//! let tls = quicshard::tls::client_config_trusting(cert, &[]).unwrap();
//! let client = Engine::builder_handles().shards(1).client_config(tls).start().unwrap();
//! let conn = client.connect(server.local_addr(), "localhost").unwrap();
//! let (mut send, _recv) = conn.open_bi().unwrap();
//! send.write_all_until(b"hello", None).unwrap();
//! let accepted = server.accept().unwrap();
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::blocking::{sealed, wait_for, Inner, Pipe, Stall, Target};
use super::bridge::HandleHandler;
use super::conn::Connection;
use super::conn_shared::ConnShared;
use super::error::{AcceptError, ConnectError};
use super::nonblocking::Registration;
use super::notify::{Block, DirectLink, Slot, ThreadSignal, Waiters};
use super::sync::{lock, AtomicUsize, Mutex, Ordering};
use crate::engine::{Builder, Engine};
use crate::handler::{Remote, ShardCtx, ShardId};
use crate::shard::mailbox::Msg;

/// Handle-mode settings.
#[derive(Debug, Clone)]
pub struct HandleConfig {
    /// Bytes per stream direction buffered between the app and the shard at most. Default
    /// 256 KiB. Larger pipes mean fewer wake-ups per byte for bulk transfers (through the
    /// handles, 256 KiB cost 1.06x the callback API's CPU per GiB, 64 KiB 1.17x:
    /// `docs/BENCHMARKS.md`).
    /// Memory follows what a pipe holds, not its capacity: the buffer starts at one page and
    /// doubles as it fills.
    pub pipe_capacity: usize,
}

impl Default for HandleConfig {
    fn default() -> Self {
        Self {
            pipe_capacity: 256 * 1024,
        }
    }
}

/// What the shards and the handles of one handle-mode engine share.
pub(crate) struct Hub {
    pub(crate) config: HandleConfig,
    /// Set by the first `Engine` handle-mode call, before any handle exists.
    remote: OnceLock<Remote<HandleHandler>>,
    accept: Mutex<AcceptState>,
    next_shard: AtomicUsize,
    /// Set when the engine runs on the direct backend (see `crate::direct`).
    pub(crate) direct: DirectLink,
}

#[derive(Default)]
struct AcceptState {
    queue: VecDeque<Arc<ConnShared>>,
    waiters: Waiters,
}

/// The answer a shard gives to `connect`.
pub(crate) type ConnectReply = Result<Arc<ConnShared>, ConnectError>;

impl Hub {
    fn new(config: HandleConfig) -> Self {
        Self {
            config,
            remote: OnceLock::new(),
            accept: Mutex::new(crate::ranks::HUB_ACCEPT, AcceptState::default()),
            next_shard: AtomicUsize::new(0),
            direct: DirectLink::default(),
        }
    }

    pub(crate) fn direct(&self) -> &DirectLink {
        &self.direct
    }

    /// Runs `f` on `shard`. From an app thread this waits while the mailbox is full; from a
    /// shard thread (e.g. a handle dropped there) it does not, and a full mailbox loses the
    /// message (logged). `Err` once the shard has stopped.
    pub(crate) fn post(
        &self,
        shard: ShardId,
        f: impl FnOnce(&mut ShardCtx<'_>, &mut HandleHandler) + Send + 'static,
    ) -> Result<(), ()> {
        // invariant: handles (the only callers) come from Engine methods, which set `remote`
        let Some(remote) = self.remote.get() else {
            return Err(());
        };
        let mb = remote.mailboxes.get(shard.0).ok_or(())?;
        let msg = Msg::Run(Box::new(f));
        let r = if crate::shard::current_shard().is_some() {
            mb.try_send(msg)
        } else if let Some(d) = self.direct.get().and_then(std::sync::Weak::upgrade) {
            d.send(mb, msg)
        } else {
            mb.send_blocking(msg)
        };
        r.map_err(|e| {
            if matches!(e, crate::shard::mailbox::SendError::Full(_)) {
                tracing::warn!(shard = shard.0, "handle wake-up lost: shard mailbox full");
            }
        })
    }

    pub(crate) fn push_incoming(&self, c: Arc<ConnShared>) {
        let wake = {
            let mut s = lock(&self.accept);
            s.queue.push_back(c);
            s.waiters.take()
        };
        wake.wake();
    }

    fn accept(&self, how: Block<'_>) -> Option<Arc<ConnShared>> {
        let mut s = lock(&self.accept);
        // a connection that died while queued is still handed out: its handle reports why
        if let Some(c) = s.queue.pop_front() {
            return Some(c);
        }
        s.waiters.block(how);
        None
    }

    pub(crate) fn register_accept(&self, how: Block<'_>) -> bool {
        let mut s = lock(&self.accept);
        if !s.queue.is_empty() {
            return true;
        }
        s.waiters.block(how);
        false
    }

    pub(crate) fn unblock_accept(&self, sig: &Arc<ThreadSignal>) {
        lock(&self.accept).waiters.unblock_thread(sig);
    }

    pub(crate) fn set_poll_accept(&self, reg: Option<Arc<Registration>>) {
        let wake = {
            let mut s = lock(&self.accept);
            let ready = reg.is_some() && !s.queue.is_empty();
            s.waiters.set_poll(reg, ready)
        };
        wake.wake();
    }
}

impl Engine<HandleHandler> {
    /// A builder for an engine in handle mode: the shards run the built-in [`HandleHandler`],
    /// which bridges quinn-proto to thread-safe [`Connection`] / stream handles. Configure it like
    /// any [`Builder`], then use [`Engine::accept`] and [`Engine::connect`].
    pub fn builder_handles() -> Builder<HandleHandler> {
        Self::builder_handles_with(HandleConfig::default())
    }

    /// [`Engine::builder_handles`] with explicit handle settings.
    pub fn builder_handles_with(config: HandleConfig) -> Builder<HandleHandler> {
        let hub = Arc::new(Hub::new(config));
        let h = hub.clone();
        let mut b = Engine::builder(move |shard| HandleHandler::new(shard, h.clone()));
        b.handles = Some(hub);
        b
    }

    pub(crate) fn hub(&self) -> &Arc<Hub> {
        // invariant: Engine<HandleHandler> is only built by builder_handles*, which sets it
        let hub = self.handles.as_ref().expect("handle-mode engine has a hub");
        hub.remote.get_or_init(|| self.remote());
        hub
    }

    /// Waits for the next incoming connection (handshake complete).
    pub fn accept(&self) -> Result<Connection, AcceptError> {
        self.accept_until(None)
    }

    /// [`Engine::accept`] with a deadline (`None`: forever).
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
        let hub = self.hub();
        let c = wait_for(
            nonblocking,
            deadline,
            &hub.direct,
            |how| Ok(hub.accept(how)),
            |sig| hub.unblock_accept(sig),
            |s| match s {
                Stall::WouldBlock => AcceptError::WouldBlock,
                Stall::TimedOut => AcceptError::TimedOut,
            },
        )?;
        Ok(Connection::new(c))
    }

    pub(crate) fn poll_accept(&self, how: Block<'_>) -> Option<Connection> {
        self.hub().accept(how).map(Connection::new)
    }

    /// Opens a client connection (on the shards in turn) and waits until its handshake
    /// completes or fails.
    pub fn connect(&self, addr: SocketAddr, server_name: &str) -> Result<Connection, ConnectError> {
        self.connect_until(addr, server_name, None)
    }

    /// [`Engine::connect`] with a deadline. On `TimedOut` the attempt is closed if it completes
    /// later.
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
            &self.hub().direct,
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
        finish_connect(r)
    }

    /// Asks a shard to connect; the slot gets the outcome.
    pub(crate) fn start_connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Arc<Slot<ConnectReply>>, ConnectError> {
        let hub = self.hub();
        let shard = ShardId(hub.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards());
        let (slot, tx) = Slot::new();
        let name = server_name.to_owned();
        hub.post(shard, move |ctx, h| h.connect(ctx, addr, &name, tx))
            .map_err(|_| ConnectError::EngineStopped)?;
        Ok(slot)
    }
}

/// Turns a shard's connect answer into a handle.
pub(crate) fn finish_connect(
    r: Result<ConnectReply, super::notify::Canceled>,
) -> Result<Connection, ConnectError> {
    match r {
        Ok(Ok(c)) => Ok(Connection::new(c)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ConnectError::EngineStopped),
    }
}

impl sealed::Sealed for Engine<HandleHandler> {
    fn target(&self) -> Target<'_> {
        Target(Inner::Accept(self.hub()))
    }
}
/// Ready when a connection waits to be accepted.
impl Pipe for Engine<HandleHandler> {}
