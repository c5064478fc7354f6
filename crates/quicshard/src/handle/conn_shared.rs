//! [`ConnShared`]: the state the app and the owning shard share for one connection — queues of
//! incoming and opened streams, datagrams both ways, the close / linger request, the loss reason
//! — with the app-side operations (under its one mutex, registering waiters) and the shard-side
//! ones (taking requests, pushing streams and datagrams, failing).
//!
//! Opening a stream is a request to the shard (quinn-proto allocates stream IDs). Openers that
//! find no stream in `opened` count themselves in `open_waiting`, and requests are topped up so
//! that `open_requested + opened.len() >= open_waiting`; the shard opens as many streams as are
//! requested (or as the peer's limit allows, retrying on `on_stream_available`) and pushes them
//! to `opened`. Any opener may take any queued stream; the invariant keeps every waiting one
//! covered. An opener that gives up (deadline, dropped future) leaves its stream to the next.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use quinn_proto::{ConnectionError, Dir, VarInt};

use super::error::ConnError;
use super::notify::{Block, Waiters};
use super::pipe::StreamPipe;
use super::progress::ProgressLink;
use super::sync::{lock, Mutex};
use super::waitable::Waitable;
use crate::handler::ConnId;

/// Datagrams queued per direction before the oldest is dropped. Why: datagrams are unreliable and
/// latency-sensitive; a stalled reader or a congested path must not pin memory, and the newest
/// datagram is the most useful one.
pub(crate) const DATAGRAM_QUEUE: usize = 256;

/// The pipes of one stream, as handed to the app.
pub(crate) struct StreamPair {
    pub(crate) send: Option<Arc<StreamPipe>>,
    pub(crate) recv: Option<Arc<StreamPipe>>,
}

/// What the app asked of the shard for a connection, taken by [`ConnShared::take_requests`].
pub(crate) struct ConnRequests {
    pub(crate) close: Option<(VarInt, Bytes)>,
    /// Every app handle is gone: close once all sent data is acknowledged.
    pub(crate) linger: bool,
    pub(crate) datagrams: VecDeque<Bytes>,
    pub(crate) open: [usize; 2],
}

/// Where a connection asks its shard for service (the shard's ready queue, `super::queue`).
pub(crate) trait ConnQueue: Send + Sync {
    /// Queues `conn` for the shard (the caller checked it is not queued: its `pending` flag).
    fn kick_conn(&self, conn: Arc<ConnShared>);
    /// How a wait on the shard's objects makes progress.
    fn progress(&self) -> &ProgressLink;
}

/// One connection's app/shard shared state.
pub(crate) struct ConnShared {
    pub(crate) id: ConnId,
    pub(crate) remote: SocketAddr,
    queue: Arc<dyn ConnQueue>,
    state: Mutex<ConnState>,
}

#[derive(Default)]
pub(crate) struct ConnState {
    incoming: [VecDeque<StreamPair>; 2],
    opened: [VecDeque<StreamPair>; 2],
    open_requested: [usize; 2],
    /// Openers waiting for a stream.
    open_waiting: [usize; 2],
    /// A non-blocking `open_*` is counted in `open_waiting`.
    nb_open: [bool; 2],
    datagrams_in: VecDeque<Bytes>,
    datagrams_out: VecDeque<Bytes>,
    max_datagram: Option<usize>,
    close: Option<(VarInt, Bytes)>,
    linger: bool,
    lost: Option<ConnectionError>,
    pending: bool,
    waiters: Waiters,
}

impl ConnState {
    fn ready(&self) -> bool {
        self.lost.is_some()
            || !self.datagrams_in.is_empty()
            || self.incoming.iter().any(|q| !q.is_empty())
            || self.opened.iter().any(|q| !q.is_empty())
    }

    fn request_service(&mut self) -> bool {
        !std::mem::replace(&mut self.pending, true)
    }
}

/// Ready: a stream to accept or take, a datagram, or the connection is gone.
impl Waitable for ConnShared {
    type State = ConnState;
    fn state(&self) -> &Mutex<ConnState> {
        &self.state
    }
    fn waiters(s: &mut ConnState) -> &mut Waiters {
        &mut s.waiters
    }
    fn is_ready(&self, s: &ConnState) -> bool {
        s.ready()
    }
    fn link(&self) -> &ProgressLink {
        self.queue.progress()
    }
}

impl ConnShared {
    pub(crate) fn new(
        id: ConnId,
        remote: SocketAddr,
        queue: Arc<dyn ConnQueue>,
        max_datagram: Option<usize>,
    ) -> Arc<Self> {
        let state = ConnState {
            max_datagram,
            ..ConnState::default()
        };
        Arc::new(Self {
            id,
            remote,
            queue,
            state: Mutex::new(crate::ranks::CONN, state),
        })
    }

    fn with_request(self: &Arc<Self>, f: impl FnOnce(&mut ConnState)) {
        let kick = {
            let mut s = lock(&self.state);
            f(&mut s);
            s.request_service()
        };
        if kick {
            self.queue.kick_conn(self.clone());
        }
    }

    // ----- app side -----

    pub(crate) fn accept(&self, dir: Dir, how: Block<'_>) -> Result<Option<StreamPair>, ConnError> {
        let mut s = lock(&self.state);
        if let Some(p) = s.incoming[dir as usize].pop_front() {
            return Ok(Some(p));
        }
        if let Some(e) = &s.lost {
            return Err(ConnError::ConnectionLost(e.clone()));
        }
        s.waiters.block(how);
        Ok(None)
    }

    /// One attempt of an opener. `waiting`: this opener is counted in `open_waiting` (set on
    /// its first miss, cleared when it gets a stream; a caller that gives up calls
    /// [`ConnShared::open_cancel`]). Requests are topped up so that every waiting opener has a
    /// stream queued or requested, whichever opener ends up taking which stream.
    pub(crate) fn open(
        self: &Arc<Self>,
        dir: Dir,
        how: Block<'_>,
        waiting: &mut bool,
    ) -> Result<Option<StreamPair>, ConnError> {
        let d = dir as usize;
        let (got, kick) = {
            let mut s = lock(&self.state);
            if let Some(e) = &s.lost {
                return Err(ConnError::ConnectionLost(e.clone()));
            }
            let got = s.opened[d].pop_front();
            if got.is_some() {
                if std::mem::take(waiting) {
                    s.open_waiting[d] -= 1;
                }
            } else {
                if !std::mem::replace(waiting, true) {
                    s.open_waiting[d] += 1;
                }
                s.waiters.block(how);
            }
            let have = s.open_requested[d] + s.opened[d].len();
            let kick = if s.open_waiting[d] > have {
                s.open_requested[d] += s.open_waiting[d] - have;
                s.request_service()
            } else {
                false
            };
            (got, kick)
        };
        if kick {
            self.queue.kick_conn(self.clone());
        }
        Ok(got)
    }

    /// An opener counted as waiting gave up.
    pub(crate) fn open_cancel(&self, dir: Dir) {
        let mut s = lock(&self.state);
        let w = &mut s.open_waiting[dir as usize];
        *w = w.saturating_sub(1);
    }

    pub(crate) fn nb_open(self: &Arc<Self>, dir: Dir) -> Result<StreamPair, ConnError> {
        let mut waiting = lock(&self.state).nb_open[dir as usize];
        let r = self.open(dir, Block::Flag, &mut waiting);
        lock(&self.state).nb_open[dir as usize] = waiting;
        r?.ok_or(ConnError::WouldBlock)
    }

    pub(crate) fn read_datagram(&self, how: Block<'_>) -> Result<Option<Bytes>, ConnError> {
        let mut s = lock(&self.state);
        if let Some(d) = s.datagrams_in.pop_front() {
            return Ok(Some(d));
        }
        if let Some(e) = &s.lost {
            return Err(ConnError::ConnectionLost(e.clone()));
        }
        s.waiters.block(how);
        Ok(None)
    }

    pub(crate) fn closed(&self, how: Block<'_>) -> Option<ConnectionError> {
        let mut s = lock(&self.state);
        if s.lost.is_none() {
            s.waiters.block(how);
        }
        s.lost.clone()
    }

    pub(crate) fn close(self: &Arc<Self>, code: VarInt, reason: &[u8]) {
        let mut wake = None;
        self.with_request(|s| {
            if s.lost.is_none() {
                s.lost = Some(ConnectionError::LocallyClosed);
                s.close = Some((code, Bytes::copy_from_slice(reason)));
                wake = Some(s.waiters.take());
            }
        });
        if let Some(w) = wake {
            w.wake();
        }
    }

    // ----- shard side -----

    pub(crate) fn take_requests(&self) -> ConnRequests {
        let mut s = lock(&self.state);
        s.pending = false;
        ConnRequests {
            close: s.close.take(),
            linger: std::mem::take(&mut s.linger),
            datagrams: std::mem::take(&mut s.datagrams_out),
            open: s.open_requested,
        }
    }

    /// Streams the app never took (incoming, or opened for an opener that gave up).
    pub(crate) fn take_unclaimed(&self) -> Vec<StreamPair> {
        let mut s = lock(&self.state);
        let s = &mut *s;
        s.incoming
            .iter_mut()
            .chain(s.opened.iter_mut())
            .flat_map(|q| q.drain(..))
            .collect()
    }

    pub(crate) fn push_incoming(&self, dir: Dir, pair: StreamPair) {
        let wake = {
            let mut s = lock(&self.state);
            s.incoming[dir as usize].push_back(pair);
            s.waiters.take()
        };
        wake.wake();
    }

    pub(crate) fn push_opened(&self, dir: Dir, pair: StreamPair) {
        let wake = {
            let mut s = lock(&self.state);
            let r = &mut s.open_requested[dir as usize];
            *r = r.saturating_sub(1);
            s.opened[dir as usize].push_back(pair);
            s.waiters.take()
        };
        wake.wake();
    }

    pub(crate) fn push_datagram(&self, d: Bytes) {
        let wake = {
            let mut s = lock(&self.state);
            if s.datagrams_in.len() >= DATAGRAM_QUEUE {
                s.datagrams_in.pop_front();
            }
            s.datagrams_in.push_back(d);
            s.waiters.take()
        };
        wake.wake();
    }

    pub(crate) fn set_max_datagram(&self, max: Option<usize>) {
        lock(&self.state).max_datagram = max;
    }

    /// The connection is gone: pending work is dropped, blocked app calls wake with the reason.
    pub(crate) fn fail(&self, err: &ConnectionError) {
        let wake = {
            let mut s = lock(&self.state);
            if s.lost.is_none() {
                s.lost = Some(err.clone());
            }
            s.datagrams_out.clear();
            s.open_requested = [0; 2];
            s.open_waiting = [0; 2];
            s.waiters.take()
        };
        wake.wake();
    }

    pub(crate) fn is_lost(&self) -> bool {
        lock(&self.state).lost.is_some()
    }

    pub(crate) fn lost(&self) -> Option<ConnectionError> {
        lock(&self.state).lost.clone()
    }

    pub(crate) fn max_datagram(&self) -> Option<usize> {
        lock(&self.state).max_datagram
    }

    /// App: queues a datagram for the shard (the oldest is dropped beyond [`DATAGRAM_QUEUE`]).
    pub(crate) fn send_datagram(self: &Arc<Self>, data: Bytes) -> Result<(), ConnError> {
        let mut err = None;
        self.with_request(|s| {
            if let Some(e) = &s.lost {
                err = Some(ConnError::ConnectionLost(e.clone()));
                return;
            }
            match s.max_datagram {
                None => err = Some(ConnError::DatagramsUnsupported),
                Some(m) if data.len() > m => err = Some(ConnError::DatagramTooLarge),
                Some(_) => {
                    if s.datagrams_out.len() >= DATAGRAM_QUEUE {
                        s.datagrams_out.pop_front();
                    }
                    s.datagrams_out.push_back(data);
                }
            }
        });
        err.map_or(Ok(()), Err)
    }

    /// App: every handle is gone; close once all sent data is acknowledged.
    pub(crate) fn linger(self: &Arc<Self>) {
        self.with_request(|s| s.linger = true);
    }

    /// See [`ShardQueue::direct`].
    pub(crate) fn progress(&self) -> &ProgressLink {
        self.queue.progress()
    }
}
