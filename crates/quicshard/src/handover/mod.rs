//! Zero-downtime upgrade: a new process takes over an engine's port while the old one finishes
//! its connections ([`Builder::handover`](crate::Builder::handover)).
//!
//! # Layout
//! With handover on, the port's `SO_REUSEPORT` group holds two *slots* of `n` sockets: slot
//! `s`'s shard `i` is group index `s * n + i`. Each process runs in one slot and holds the
//! descriptors of all `2n` sockets, and hands all of them to its successor, so no socket of the
//! group ever closes while a successor runs: the kernel moves the last socket into the index of
//! a closed one, and the steering program's indices would then point at the wrong sockets.
//! Every CID carries its process's slot in the top bit of its masked shard byte
//! ([`crate::steer`]); the steering program ([`Group::Slots`]) sends our CIDs to their slot and
//! client-chosen DCIDs (new connections) to the active slot.
//!
//! # Protocol
//! `PATH` is a Unix stream socket. A starting engine connects to it:
//! - nobody listens (no file, or a file left by a crashed process: `ECONNREFUSED`): it binds both
//!   slots as a fresh group (which fails, as without handover, if anyone else holds the port),
//!   runs in slot 0 as generation 1, and listens at `PATH` for a successor;
//! - a predecessor listens: the new process says `Hello` (version, shard count); the old one
//!   answers with its state (generation, slot, [`Secrets`], QUIC-LB config and server ID) and
//!   the group's `2n` descriptors (`SCM_RIGHTS`), or `Busy` (another shard count; it is itself
//!   still draining its own predecessor, whose slot the new process would need). The new process
//!   starts its shards in the other slot, then sends `Ready` with a socket to forward on; the
//!   old one *retires* (from then on a datagram that would start a connection there is
//!   forwarded to the new process, `forward.rs`) and answers `Retired`; the new one attaches the
//!   two-slot program (new connections now reach it directly) and sends `Switched`; the old
//!   process is then *replaced* ([`Handover::replaced`]) and drains ([`Engine::drain`](crate::Engine::drain)). The new process
//!   replaces the file at `PATH` with its own listener.
//! - Failure is safe: until `Switched`, the old process's program still steers everything to
//!   it, and if the new process goes away before that, the old one cancels its retirement and
//!   keeps accepting. When the old process exits (its end of the stream closes), the new one
//!   attaches a program that sends the other slot's CIDs to its own shards too (their
//!   connections are gone: unknown CIDs), and accepts successors again.
//!
//! # The first flight
//! A client's first flight reaches one process: its Initial datagrams carry the same DCID.
//! Before the old process retires it accepts them; once retired it forwards those of
//! connections it does not have to the new process. For a grace period after the switch
//! (`GRACE`, 2 s) the new process sends a datagram from its sockets that would start a connection
//! to the old one first, which keeps it if it has the connection (the rest of a first flight it
//! began accepting before it retired) and otherwise sends it back to be accepted. So a first
//! flight split by the switch still reaches one process (`a_first_flight_split_by_the_switch`
//! in `tests/handover.rs`).

mod wire;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::cid::CidConfig;
use crate::secrets::Secrets;
use crate::shared::forward::{self, Retire};
use crate::steer::{self, Group};
use wire::{Msg, State, VERSION};

/// How long after the switch the successor sends datagrams that would start a connection to
/// the old process first ([`forward`]). Why: a client's first flight leaves at once (its
/// datagrams arrive microseconds apart); a lost one is sent again after a probe timeout, about
/// a second at quinn-proto's initial RTT of 333 ms; 2 s covers that first retransmission.
const GRACE: Duration = Duration::from_secs(2);

/// How long a process waits for the other side's next message during a handover. Why: the new
/// process's `Ready` comes after its shards started (milliseconds; seconds on a loaded machine).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a handover could not start (the process then does not serve).
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The running server refused to hand over.
    #[error("the server at {path} refused the handover: {why}", path = path.display())]
    Refused {
        /// The handover socket.
        path: PathBuf,
        /// What the running server said.
        why: String,
    },
    /// A socket or protocol operation failed.
    #[error("handover at {path}: {source}", path = path.display())]
    Io {
        /// The handover socket.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The port could not be bound (a fresh start): someone else holds it.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The listen address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// Handover needs room for the slot bit.
    #[error("handover needs at most {max} shards, not {0}", max = steer::MAX_SLOTTED_SHARDS)]
    Shards(usize),
}

/// Counters of one process's handovers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandoverStats {
    /// This process's generation: 1 for a fresh start, one more than its predecessor's.
    pub generation: u32,
    /// Whether a successor took over.
    pub replaced: bool,
    /// Datagrams this process forwarded to its successor after retiring (new connections'
    /// first flights that reached it), and those dropped on the way.
    pub forwarded_out: u64,
    /// Of those, dropped (the successor's socket was full or gone).
    pub forward_dropped: u64,
    /// Datagrams its predecessor forwarded to this process.
    pub forwarded_in: u64,
    /// How long this process's takeover took, from connecting to the predecessor to the switch
    /// of the steering program (engine start-up included), in microseconds; 0 for a fresh start.
    pub takeover_micros: u64,
}

/// How a replaced engine's drain went ([`Engine::drain`](crate::Engine::drain)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Connections open when the drain began (kept by this process after the handover).
    pub open_at_start: u64,
    /// Of those, still open at the drain timeout: closed with CONNECTION_CLOSE.
    pub closed_at_timeout: u64,
}

/// Delivers a datagram the predecessor forwarded (payload, client address, local IP) to the
/// engine.
pub(crate) type Inject = Box<dyn FnMut(&[u8], SocketAddr, Option<std::net::IpAddr>) + Send>;

/// Where a starting engine stands.
pub(crate) struct Plan {
    path: PathBuf,
    n: usize,
    /// All `2n` sockets of the group, in group order.
    sockets: Vec<UdpSocket>,
    /// The predecessor's stream and state, if one hands over.
    from: Option<(UnixStream, State)>,
    /// When the takeover began.
    started: std::time::Instant,
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> HandoverError + '_ {
    move |source| HandoverError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Plan {
    /// Connects to `path`: a takeover if a predecessor answers, else a fresh group of two slots
    /// of `n` sockets on `listen`.
    pub(crate) fn prepare(
        path: &Path,
        n: usize,
        listen: SocketAddr,
    ) -> Result<Self, HandoverError> {
        let started = std::time::Instant::now();
        if n > steer::MAX_SLOTTED_SHARDS {
            return Err(HandoverError::Shards(n));
        }
        let stream = match UnixStream::connect(path) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                let sockets =
                    steer::bind_group(listen, 2 * n).map_err(|source| HandoverError::Bind {
                        addr: listen,
                        source,
                    })?;
                return Ok(Self {
                    path: path.to_owned(),
                    n,
                    sockets,
                    from: None,
                    started,
                });
            }
            Err(e) => return Err(io_err(path)(e)),
        };
        let err = io_err(path);
        stream.set_read_timeout(Some(STEP_TIMEOUT)).map_err(&err)?;
        let shards = u16::try_from(n).expect("at most 128 shards");
        wire::send(
            &stream,
            &Msg::Hello {
                version: VERSION,
                shards,
            },
            &[],
        )
        .map_err(&err)?;
        let mut fds = Vec::new();
        let state = match wire::recv(&stream, &mut fds).map_err(&err)? {
            Msg::State(s) => s,
            Msg::Busy(why) => {
                return Err(HandoverError::Refused {
                    path: path.to_owned(),
                    why,
                })
            }
            other => return Err(err(protocol(&other))),
        };
        if fds.len() != 2 * n {
            return Err(err(io::Error::other(format!(
                "got {} sockets for {n} shards",
                fds.len()
            ))));
        }
        let sockets = fds.into_iter().map(UdpSocket::from).collect();
        Ok(Self {
            path: path.to_owned(),
            n,
            sockets,
            from: Some((stream, state)),
            started,
        })
    }

    /// The slot this process runs in.
    pub(crate) fn slot(&self) -> u8 {
        self.from.as_ref().map_or(0, |(_, s)| 1 - s.slot)
    }

    /// The predecessor's secrets and CID layout (in this process's slot), if one hands over.
    pub(crate) fn inherited(&self) -> Option<(Secrets, CidConfig)> {
        let (_, s) = self.from.as_ref()?;
        let cid = s.cid.clone().with_slot(self.slot()).ok()?;
        Some((s.secrets.clone(), cid))
    }

    /// This process's slot's sockets (the shards' listen sockets), as copies of the
    /// descriptors the plan keeps.
    pub(crate) fn listen_sockets(&self) -> io::Result<Vec<UdpSocket>> {
        let base = usize::from(self.slot()) * self.n;
        self.sockets[base..base + self.n]
            .iter()
            .map(|s| {
                s.set_nonblocking(true)?;
                s.try_clone()
            })
            .collect()
    }

    /// Completes the start once the engine's shards run: attaches the steering program, takes
    /// over from the predecessor (if any) and listens at the path for a successor.
    /// `inject` delivers a datagram forwarded by the predecessor to the engine.
    pub(crate) fn finish(
        self,
        secrets: Secrets,
        cid: CidConfig,
        retire: Arc<Retire>,
        inject: Inject,
    ) -> Result<Handover, HandoverError> {
        let err = io_err(&self.path);
        let slot = self.slot();
        let generation = self.from.as_ref().map_or(1, |(_, s)| s.generation + 1);
        let inner = Arc::new(Inner {
            path: self.path.clone(),
            n: self.n,
            slot,
            generation,
            secrets,
            cid,
            sockets: self.sockets,
            retire,
            predecessor: AtomicBool::new(self.from.is_some()),
            replaced: AtomicBool::new(false),
            forwarded_in: AtomicU64::new(0),
            takeover_micros: AtomicU64::new(0),
            inject: ranked_lock::Mutex::new(crate::ranks::HANDOVER_INJECT, None),
            open: ranked_lock::Mutex::new(crate::ranks::HANDOVER_OPEN, Vec::new()),
            closing: AtomicBool::new(false),
            listener_ino: AtomicU64::new(0),
        });
        match self.from {
            None => {
                inner.attach(false).map_err(&err)?;
                *inner.inject.lock() = Some(inject);
            }
            Some((stream, _)) => {
                let (ours, theirs) = forward::pair().map_err(&err)?;
                wire::send(&stream, &Msg::Ready, &[theirs.as_raw_fd()]).map_err(&err)?;
                drop(theirs);
                match wire::recv(&stream, &mut Vec::new()).map_err(&err)? {
                    Msg::Retired => {}
                    other => return Err(err(protocol(&other))),
                }
                inner.attach(true).map_err(&err)?;
                wire::send(&stream, &Msg::Switched, &[]).map_err(&err)?;
                let took = self.started.elapsed().as_micros();
                inner
                    .takeover_micros
                    .store(u64::try_from(took).unwrap_or(u64::MAX), Ordering::Relaxed);
                let to_old = ours.try_clone().map_err(&err)?;
                inner
                    .retire
                    .grace(to_old, std::time::Instant::now() + GRACE);
                inner.open.lock().push(stream.as_raw_fd());
                spawn_predecessor_watch(inner.clone(), stream, ours, inject).map_err(&err)?;
            }
        }
        inner.listen().map_err(&err)?;
        Ok(Handover { inner })
    }
}

fn protocol(got: &Msg) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected message {got:?}"),
    )
}

/// What the handover threads and the engine share.
struct Inner {
    path: PathBuf,
    n: usize,
    slot: u8,
    generation: u32,
    secrets: Secrets,
    cid: CidConfig,
    sockets: Vec<UdpSocket>,
    retire: Arc<Retire>,
    /// The predecessor still runs (its slot is taken).
    predecessor: AtomicBool,
    replaced: AtomicBool,
    forwarded_in: AtomicU64,
    takeover_micros: AtomicU64,
    /// Delivers what the successor sends back (taken by the one successor that takes over).
    inject: ranked_lock::Mutex<Option<Inject>>,
    /// The descriptors to shut down when the engine stops: the listener at the path, the
    /// stream to the successor (which then sees its predecessor's exit) and the one to the
    /// predecessor (which then sees its successor's).
    open: ranked_lock::Mutex<Vec<std::os::fd::RawFd>>,
    /// The engine is stopping: a stream's end is not a peer's exit.
    closing: AtomicBool,
    /// The inode of the socket file this process bound, to remove only its own.
    listener_ino: AtomicU64,
}

impl Inner {
    /// Attaches the two-slot program: our CIDs by their slot while the predecessor runs
    /// (`both`), else all to us.
    fn attach(&self, both: bool) -> io::Result<()> {
        let group = Group::Slots {
            active: self.slot,
            by_cid: both,
        };
        let program = steer::program(self.cid.cid_len(), self.n, self.cid.shard_key(), group);
        steer::attach(&self.sockets[0], &program)
    }

    /// Replaces whatever is at the path with this process's listener, and serves successors.
    fn listen(self: &Arc<Self>) -> io::Result<()> {
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path)?;
        if let Ok(m) = std::fs::metadata(&self.path) {
            use std::os::unix::fs::MetadataExt;
            self.listener_ino.store(m.ino(), Ordering::Relaxed);
        }
        self.open.lock().push(listener.as_raw_fd());
        let this = self.clone();
        std::thread::Builder::new()
            .name("quicshard-handover".into())
            .spawn(move || this.serve_successors(listener))?;
        Ok(())
    }

    fn serve_successors(self: Arc<Self>, listener: UnixListener) {
        self.serve_successors_on(&listener);
        // its descriptor closes now: no longer one to shut down
        self.forget(listener.as_raw_fd());
    }

    /// Waits until the other process's end of `stream` closes. `true` if it exited while this
    /// engine runs; `false` if this engine is stopping (its own end was shut down).
    fn peer_exited(&self, stream: &UnixStream) -> bool {
        let _ = stream.set_read_timeout(None);
        let _ = wire::recv(stream, &mut Vec::new());
        self.forget(stream.as_raw_fd());
        !self.closing.load(Ordering::Acquire)
    }

    /// Forgets a descriptor that is about to close (after `close` is done with it, if running).
    fn forget(&self, fd: std::os::fd::RawFd) {
        self.open.lock().retain(|&f| f != fd);
    }

    fn serve_successors_on(self: &Arc<Self>, listener: &UnixListener) {
        for stream in listener.incoming() {
            let Ok(stream) = stream else {
                // shut down (the engine stopped)
                return;
            };
            match self.hand_over(&stream) {
                Ok(true) => {
                    // kept open until this process stops: the successor then sees its end
                    self.open.lock().push(stream.as_raw_fd());
                    let this = self.clone();
                    let _ = std::thread::Builder::new()
                        .name("quicshard-handover".into())
                        .spawn(move || this.watch_successor(stream));
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    self.retire.cancel();
                    tracing::warn!(error = %e, "handover to a successor failed; still serving");
                }
            }
        }
    }

    /// Waits for the successor's end of the stream. If it exits while this process still runs
    /// (it crashed, or was stopped while this one drains), this process takes the port back:
    /// it accepts new connections again, steers all of them to itself, is no longer replaced,
    /// and listens at the path for the next successor.
    fn watch_successor(self: Arc<Self>, stream: UnixStream) {
        if !self.peer_exited(&stream) {
            return;
        }
        self.retire.cancel();
        if let Err(e) = self.attach(false) {
            tracing::error!(error = %e, "the successor exited and the steering program could not be taken back");
            return;
        }
        self.replaced.store(false, Ordering::Release);
        tracing::warn!("the successor exited; this process serves new connections again");
        if let Err(e) = self.listen() {
            tracing::warn!(error = %e, "cannot listen for a successor again");
        }
    }

    /// One successor's attempt; `true` once it serves.
    fn hand_over(self: &Arc<Self>, stream: &UnixStream) -> io::Result<bool> {
        stream.set_read_timeout(Some(STEP_TIMEOUT))?;
        let mut fds = Vec::new();
        let busy = |why: String| wire::send(stream, &Msg::Busy(why), &[]).map(|()| false);
        match wire::recv(stream, &mut fds)? {
            Msg::Hello { version, .. } if version != VERSION => {
                return busy(format!(
                    "protocol version {version}, this server speaks {VERSION}"
                ))
            }
            Msg::Hello { shards, .. } if usize::from(shards) != self.n => {
                return busy(format!(
                    "it runs {} shards; start its successor with {} shards",
                    self.n, self.n
                ))
            }
            Msg::Hello { .. } => {}
            other => return Err(protocol(&other)),
        }
        if self.predecessor.load(Ordering::Acquire) {
            return busy(format!(
                "it is still draining its own predecessor (generation {}); try again once that \
                 process has exited",
                self.generation - 1
            ));
        }
        let state = State {
            generation: self.generation,
            slot: self.slot,
            secrets: self.secrets.clone(),
            cid: self.cid.clone(),
        };
        let fds: Vec<_> = self.sockets.iter().map(|s| s.as_raw_fd()).collect();
        wire::send(stream, &Msg::State(state), &fds)?;
        let mut got: Vec<OwnedFd> = Vec::new();
        match wire::recv(stream, &mut got)? {
            Msg::Ready if got.len() == 1 => {}
            other => return Err(protocol(&other)),
        }
        let to = socket2::Socket::from(got.remove(0));
        let back = to.try_clone()?;
        self.retire.begin(to);
        // what the successor sends in its grace period comes back on the same socket
        if let Some(mut inject) = self.inject.lock().take() {
            let this = self.clone();
            let _ = std::thread::Builder::new()
                .name("quicshard-forwarded".into())
                .spawn(move || {
                    forward::receive(&back, |p, r, l| inject(p, r, l));
                    // that successor is gone: the next one gets it
                    *this.inject.lock() = Some(inject);
                });
        }
        wire::send(stream, &Msg::Retired, &[])?;
        match wire::recv(stream, &mut Vec::new())? {
            Msg::Switched => {}
            other => return Err(protocol(&other)),
        }
        self.replaced.store(true, Ordering::Release);
        tracing::info!(
            generation = self.generation + 1,
            "a successor took over; draining this process's connections"
        );
        Ok(true)
    }
}

/// Reads the predecessor's stream until it closes (the old process exited): then frees its slot
/// for a successor. Meanwhile injects what it forwards.
fn spawn_predecessor_watch(
    inner: Arc<Inner>,
    stream: UnixStream,
    forwarded: socket2::Socket,
    mut inject: Inject,
) -> io::Result<()> {
    let counter = inner.clone();
    std::thread::Builder::new()
        .name("quicshard-forwarded".into())
        .spawn(move || {
            forward::receive(&forwarded, |payload, remote, local| {
                counter.forwarded_in.fetch_add(1, Ordering::Relaxed);
                inject(payload, remote, local);
            });
        })?;
    std::thread::Builder::new()
        .name("quicshard-handover".into())
        .spawn(move || {
            if !inner.peer_exited(&stream) {
                // this engine stops: its end closed the stream, the predecessor takes back
                return;
            }
            inner.retire.end_grace();
            if let Err(e) = inner.attach(false) {
                tracing::warn!(error = %e, "steering program not replaced after the predecessor exited");
            }
            inner.predecessor.store(false, Ordering::Release);
            tracing::info!("the predecessor exited");
        })?;
    Ok(())
}

/// An engine's handover state ([`Engine::handover`](crate::Engine::handover)).
pub struct Handover {
    inner: Arc<Inner>,
}

impl Handover {
    /// This process's generation (1 for a fresh start).
    pub fn generation(&self) -> u32 {
        self.inner.generation
    }

    /// Whether a successor took over: the engine accepts no new connections (they go to the
    /// successor) and should drain ([`Engine::drain`](crate::Engine::drain)).
    pub fn replaced(&self) -> bool {
        self.inner.replaced.load(Ordering::Acquire)
    }

    /// Whether the predecessor still runs (drains its connections).
    pub fn predecessor_running(&self) -> bool {
        self.inner.predecessor.load(Ordering::Acquire)
    }

    /// The counters.
    pub fn stats(&self) -> HandoverStats {
        let (forwarded_out, forward_dropped) = self.inner.retire.counts();
        HandoverStats {
            generation: self.inner.generation,
            replaced: self.replaced(),
            forwarded_out,
            forward_dropped,
            forwarded_in: self.inner.forwarded_in.load(Ordering::Relaxed),
            takeover_micros: self.inner.takeover_micros.load(Ordering::Relaxed),
        }
    }

    /// Stops listening for successors and removes the socket file if it is still this
    /// process's own (not a successor's).
    pub(crate) fn close(&self) {
        self.inner.closing.store(true, Ordering::Release);
        for &fd in self.inner.open.lock().iter() {
            // SAFETY: shutting down sockets we own (they stay open until dropped): the accept
            // loop ends with an error, the successor reads the end of its stream
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        use std::os::unix::fs::MetadataExt;
        let ours = self.inner.listener_ino.load(Ordering::Relaxed);
        if std::fs::metadata(&self.inner.path).is_ok_and(|m| m.ino() == ours) {
            let _ = std::fs::remove_file(&self.inner.path);
        }
    }
}
