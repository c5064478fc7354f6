//! What the engine prepares for a shard on the starting thread ([`ShardParts`]: sockets, mailbox,
//! the poller it registers with), and starting it: on a thread of its own, in a [`group`] of
//! shards sharing a thread, or unspawned for the direct backend.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use quinn_proto::Endpoint;

use super::arena::Arena;
use super::callback::{Handler, ShardId};
use super::conns::ConnTable;
use super::help::Desk;
use super::io::{RxBufs, Sock, CLIENT, LISTEN};
use super::mailbox::{MailboxRx, MailboxTx};
use super::timers::Timers;
use super::{group, sys, Core, Shard, ShardScope};
use crate::shared::Shared;
use crate::stats::Counters;

/// What `start` prepares for one shard on the main thread before spawning it.
pub(crate) struct ShardParts<H> {
    pub(crate) id: usize,
    /// Where the shard's sockets and mailbox waker are registered.
    pub(crate) poller: Poller,
    /// [`LISTEN`] and [`CLIENT`].
    pub(crate) socks: [Sock; 2],
    /// Which of `socks` client connections use.
    pub(crate) client_sock: usize,
    /// The address this shard advertises as its preferred address (its own socket), if any.
    pub(crate) preferred: Option<SocketAddr>,
    pub(crate) mailbox: MailboxRx<H>,
    pub(crate) peers: Arc<[MailboxTx<H>]>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) stats: Arc<Counters>,
}

/// The poller a shard's sources are registered with.
pub(crate) enum Poller {
    /// Its own: a shard with a thread of its own, or the direct backend's.
    Own(mio::Poll),
    /// Its group's thread's ([`group`]), shared with the other members: the shard's tokens
    /// start at `base`.
    Group {
        registry: mio::Registry,
        base: usize,
    },
}

impl Poller {
    /// The registry and the first token of the shard's sources.
    pub(crate) fn registry(&self) -> (&mio::Registry, usize) {
        match self {
            Poller::Own(p) => (p.registry(), 0),
            Poller::Group { registry, base } => (registry, *base),
        }
    }

    fn token_base(&self) -> usize {
        self.registry().1
    }
}

impl<H: Handler> ShardParts<H> {
    fn register(&mut self) -> std::io::Result<()> {
        let (registry, base) = self.poller.registry();
        self.socks[LISTEN].register(registry, mio::Token(base + LISTEN))?;
        self.socks[CLIENT].register(registry, mio::Token(base + CLIENT))
    }

    /// The shard, on the calling thread (which must be inside a [`ShardScope`] for `id`).
    fn build(self, handler: H) -> Shard<H> {
        let id = self.id;
        let shared = self.shared;
        let endpoint_config = shared.endpoint_config_for(id);
        let server_config = shared.server_config_for(self.preferred);
        let qlog_server_config = server_config.clone().filter(|_| shared.qlog.is_some());
        let rng_seed = shared.endpoint_rng_seed(id);
        let endpoint = Endpoint::new(endpoint_config, server_config, true, rng_seed);
        let token_base = self.poller.token_base();
        let shared_admission = shared.admission;
        let gro = self.socks[LISTEN]
            .gro_segments()
            .max(self.socks[CLIENT].gro_segments());
        let core = Core {
            id,
            owner: std::thread::current().id(),
            now: Instant::now(),
            endpoint,
            conns: ConnTable::default(),
            timers: Timers::default(),
            cid_check: shared.cid_check_for(id),
            shared,
            stats: self.stats,
            stopping: None,
            preferred: self.preferred,
            driving: None,
            resp_buf: Vec::new(),
            client_sock: self.client_sock,
            qlog_server_config,
        };
        Shard {
            core,
            handler,
            poll: match self.poller {
                Poller::Own(p) => Some(p),
                Poller::Group { .. } => None,
            },
            token_base,
            socks: self.socks,
            rx: RxBufs::new(gro),
            arena: Arena::default(),
            events_buf: Vec::new(),
            mailbox: self.mailbox,
            mail_pending: true,
            peers: self.peers,
            carry: true,
            admit: super::AdmitQueue::new(&shared_admission),
            reclaim: Default::default(),
            virtual_clock: false,
        }
    }
}

/// Spawns a thread (under `SCHED_BATCH` if `batch`, see
/// [`Builder::batch_scheduling`](crate::Builder::batch_scheduling)) that runs `group`: one shard,
/// or several in a [`group`] (contiguous IDs). Each shard's handler is created on it by
/// `factory`, and the shard placed in its desk in `desks`, where other threads can give it a
/// turn if `share` ([`help`](super::help)).
pub(crate) fn spawn<H, F>(
    mut group: Vec<ShardParts<H>>,
    group_poll: Option<mio::Poll>,
    factory: Arc<F>,
    desks: Arc<[Desk<H>]>,
    batch: bool,
    share: bool,
) -> std::io::Result<std::thread::JoinHandle<()>>
where
    H: Handler,
    F: Fn(ShardId) -> H + Send + Sync + ?Sized + 'static,
{
    let (Some(first), Some(last)) = (group.first(), group.last()) else {
        return Err(std::io::Error::other("a shard group cannot be empty"));
    };
    let ids = (first.id, last.id + 1);
    if group.len() > 1 && group_poll.is_none() {
        return Err(std::io::Error::other("a shard group needs its poller"));
    }
    for p in &mut group {
        p.register()?;
    }
    let name = if ids.1 - ids.0 > 1 {
        format!("quicshard-{}-{}", ids.0, ids.1 - 1)
    } else {
        format!("quicshard-{}", ids.0)
    };
    std::thread::Builder::new().name(name).spawn(move || {
        if batch {
            sys::set_batch_scheduling();
        }
        // each handler is made and each shard built inside its own scope
        let mut poll = group_poll;
        for parts in group {
            let id = parts.id;
            let _scope = ShardScope::enter(id, &parts.stats);
            let handler = factory(ShardId(id));
            let mut shard = parts.build(handler);
            // a lone shard's poller is the thread's
            if let Some(p) = shard.poll.take() {
                poll = Some(p);
            }
            *desks[id].lock() = Some(shard);
        }
        super::start_turn_cpu_clock();
        match poll {
            Some(poll) => group::run(desks, ids, poll, share),
            None => tracing::error!(group = ?ids, "a shard thread has no poller"),
        }
    })
}

/// A shard without a thread, for the direct backend: the caller drives it with
/// [`Shard::iterate`] inside a [`ShardScope`].
pub(crate) fn build_unspawned<H: Handler>(
    mut parts: ShardParts<H>,
    handler: H,
) -> std::io::Result<Shard<H>> {
    parts.register()?;
    let _scope = ShardScope::enter(parts.id, &parts.stats);
    Ok(parts.build(handler))
}
