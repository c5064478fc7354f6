//! The direct backend (DESIGN §5.3; seed 001's blocking models without background threads): the
//! same thread-safe handles as [`HandleEngine::builder`], but no shard thread. The engine runs
//! on the application's threads: a blocking handle call runs the engine's I/O itself until it can
//! return (the driver is the handle layer's `Progress` for these engines), and an application
//! that owns its event loop drives it with [`HandleEngine::poll_fd`],
//! [`HandleEngine::next_deadline`] and [`HandleEngine::tick`].
//!
//! - **Transports**: a UDP socket ([`HandleBuilder::start_direct`](crate::handle::HandleBuilder::start_direct)), or an in-memory datagram pair of
//!   two engines ([`memory_pair`]; not pollable — the application ticks, and a blocking call on
//!   either engine drives both).
//! - **Locking** ([`DirectConfig::locking`], default on): several app threads share the engine;
//!   whichever is blocked drives it while the others wait for their objects (the contentive
//!   model). Off, the engine belongs to the first thread that drives it, and a blocking call or
//!   tick from another thread panics.
//! - **Timer assist** ([`DirectConfig::timer_assist`]): one helper thread runs the engine when a
//!   timer is due and no app thread is driving it, so retransmissions and idle timeouts keep time
//!   while the application computes. Needs locking.
//!
//! One shard per engine (no steering, no handoff). The engines' counters are
//! [`Engine::stats`](crate::Engine::stats) as usual.
//!
//! # Examples
//! ```
//! use quicshard::direct::{memory_pair, DirectConfig};
//! use quicshard::HandleEngine;
//! let (server, client) = memory_pair(
//!     HandleEngine::builder(),
//!     HandleEngine::builder(),
//!     DirectConfig::default(),
//! )
//! .unwrap();
//! // no thread was started: this call runs both engines until the handshake completes
//! let conn = client.connect(server.local_addr(), "localhost").unwrap();
//! let (mut send, mut recv) = conn.open_bi().unwrap();
//! send.write_all_until(b"ping", None).unwrap();
//! send.finish().unwrap();
//! let peer = server.accept().unwrap();
//! let (mut back, mut incoming) = peer.accept_bi().unwrap();
//! assert_eq!(incoming.read_to_end_until(64, None).unwrap(), b"ping");
//! back.write_all_until(b"pong", None).unwrap();
//! back.finish().unwrap();
//! assert_eq!(recv.read_to_end_until(64, None).unwrap(), b"pong");
//! ```

mod driver;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

use driver::Direct;

use crate::engine::{Engine, StartError};
use crate::handle::{
    send_driving, Driven, HandleBuilder, HandleEngine, HandleHandler, HandleLayer, Progress,
    ThreadSignal,
};
use crate::handler::{Remote, ShardId};
use crate::shard::io::{Sock, CLIENT, LISTEN};
use crate::shard::mailbox::{mailbox, Msg};
use crate::shard::{self, mem, ShardParts, WAKER_TOKEN};
use crate::stats::Counters;

/// Settings of the direct backend (see the [module docs](self)).
#[derive(Debug, Clone, Copy)]
pub struct DirectConfig {
    /// Several app threads may drive the engine (one at a time, handing over). Default on.
    pub locking: bool,
    /// Start one thread that runs due timers while no app thread drives. Default off; needs
    /// `locking`.
    pub timer_assist: bool,
}

impl Default for DirectConfig {
    fn default() -> Self {
        Self {
            locking: true,
            timer_assist: false,
        }
    }
}

/// Address of the first engine of a [`memory_pair`] (TEST-NET-1, never routed).
pub const MEMORY_ADDR_A: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 443);
/// Address of the second engine of a [`memory_pair`].
pub const MEMORY_ADDR_B: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 443);

impl HandleBuilder {
    /// Starts the engine on the direct backend over a UDP socket bound to the listen address:
    /// no thread (unless [`DirectConfig::timer_assist`]); blocking handle calls and
    /// [`HandleEngine::tick`] run it. The shard count is ignored: a direct engine has one shard.
    pub fn start_direct(mut self, cfg: DirectConfig) -> Result<HandleEngine, StartError> {
        check(&cfg)?;
        let listen = UdpSocket::bind(self.listen).map_err(|source| StartError::Bind {
            addr: self.listen,
            source,
        })?;
        let local_addr = listen.local_addr()?;
        let client_ip = match local_addr {
            SocketAddr::V4(_) => std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        let client = UdpSocket::bind(SocketAddr::new(client_ip, 0))?;
        let stats = Arc::new(Counters::default());
        let socks = [
            Sock::new(listen, stats.clone())?,
            Sock::new(client, stats.clone())?,
        ];
        let half = self.half(socks, CLIENT, stats, local_addr)?;
        let mailbox = half.engine.remote.mailboxes[0].clone();
        let direct = Arc::new(Direct::new(
            vec![half.shard],
            vec![mailbox],
            cfg.locking,
            true,
        )?);
        spawn_assist(&cfg, &direct)?;
        Ok(finish((half.engine, half.layer), &direct, 0))
    }

    /// Builds one engine's shard on the calling thread.
    fn half(
        &mut self,
        socks: [Sock; 2],
        client_sock: usize,
        stats: Arc<Counters>,
        local_addr: SocketAddr,
    ) -> Result<Half, StartError> {
        let (shared, certificate) = self.configure(1)?;
        let poll = mio::Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER_TOKEN)?);
        let (tx, rx) = mailbox::<HandleHandler>(waker);
        let peers: Arc<[_]> = vec![tx].into();
        let parts = ShardParts {
            id: 0,
            poller: shard::Poller::Own(poll),
            socks,
            client_sock,
            preferred: None,
            mailbox: rx,
            peers: peers.clone(),
            shared: shared.clone(),
            stats: stats.clone(),
        };
        let handler = {
            let _scope = shard::ShardScope::enter(0, &stats);
            (self.factory)(ShardId(0))
        };
        let shard = shard::build_unspawned(parts, handler)?;
        let engine = Engine {
            remote: Remote { mailboxes: peers },
            threads: Vec::new(),
            stats: vec![stats],
            local_addr,
            certificate,
            bpf_attached: false,
            cid_len: shared.cid.cid_len(),
            shared,
            handover: None,
        };
        Ok(Half {
            engine,
            shard,
            layer: self.layer.clone(),
        })
    }
}

/// One engine of the direct backend before its driver exists.
struct Half {
    engine: Engine<HandleHandler>,
    shard: shard::Shard<HandleHandler>,
    layer: HandleLayer,
}

/// The handle engine of shard `index` of `direct`: its handles make progress by driving.
fn finish(
    (engine, layer): (Engine<HandleHandler>, HandleLayer),
    direct: &Arc<Direct>,
    index: usize,
) -> HandleEngine {
    let progress: Arc<dyn Progress> = direct.clone();
    layer.hub.progress().set(Arc::downgrade(&progress));
    HandleEngine::new(engine, layer, Some((direct.clone(), index)))
}

fn check(cfg: &DirectConfig) -> Result<(), StartError> {
    if cfg.timer_assist && !cfg.locking {
        return Err(StartError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the direct backend's timer assist needs locking",
        )));
    }
    Ok(())
}

fn spawn_assist(cfg: &DirectConfig, direct: &Arc<Direct>) -> std::io::Result<()> {
    if cfg.timer_assist {
        let d = direct.clone();
        // detached: it ends once every shard of the driver has shut down
        std::thread::Builder::new()
            .name("quicshard-assist".into())
            .spawn(move || d.assist_loop())?;
    }
    Ok(())
}

/// Two engines on the direct backend joined by an in-memory datagram link, at
/// [`MEMORY_ADDR_A`] and [`MEMORY_ADDR_B`] (their builders' listen addresses are ignored). One
/// driver runs both: a blocking call on either engine, or [`HandleEngine::tick`] on either, makes both
/// progress. Unless `b` has its own client config, `b` trusts the certificate `a` generated (the
/// usual set-up: `a` serves, `b` connects). Datagrams beyond the link's queue (1024 per direction) are dropped and counted in
/// `dropped_link_full`.
pub fn memory_pair(
    mut a: HandleBuilder,
    mut b: HandleBuilder,
    cfg: DirectConfig,
) -> Result<(HandleEngine, HandleEngine), StartError> {
    check(&cfg)?;
    let (pa, pb) = mem::link(MEMORY_ADDR_A, MEMORY_ADDR_B);
    let mut halves: Vec<Half> = Vec::with_capacity(2);
    for (builder, port) in [(&mut a, pa), (&mut b, pb)] {
        if let (Some(first), None) = (halves.first(), &builder.client_config) {
            if let Some(cert) = first.engine.certificate() {
                let alpn: Vec<&[u8]> = builder.alpn.iter().map(Vec::as_slice).collect();
                builder.client_config = Some(crate::tls::client_config_trusting(cert, &alpn)?);
            }
        }
        let addr = port.local_addr();
        // the second socket is never used: client connections share the one port
        let (unused, _) = mem::link(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), addr);
        let stats = Arc::new(Counters::default());
        let socks = [
            Sock::memory(port, stats.clone()),
            Sock::memory(unused, stats.clone()),
        ];
        halves.push(builder.half(socks, LISTEN, stats, addr)?);
    }
    let (hb, ha) = (halves.pop(), halves.pop());
    let (Some(ha), Some(hb)) = (ha, hb) else {
        unreachable!("two halves were built")
    };
    let mailboxes = vec![
        ha.engine.remote.mailboxes[0].clone(),
        hb.engine.remote.mailboxes[0].clone(),
    ];
    let direct = Arc::new(Direct::new(
        vec![ha.shard, hb.shard],
        mailboxes,
        cfg.locking,
        false,
    )?);
    spawn_assist(&cfg, &direct)?;
    Ok((
        finish((ha.engine, ha.layer), &direct, 0),
        finish((hb.engine, hb.layer), &direct, 1),
    ))
}

/// The direct backend is the handle layer's [`Progress`] for its engines: a waiting app thread
/// drives the engine.
impl Progress for Direct {
    fn wait(&self, sig: &Arc<ThreadSignal>, deadline: Option<Instant>) -> bool {
        Direct::wait(self, sig, deadline)
    }

    fn tick(&self) -> bool {
        Direct::tick(self)
    }
}

impl Driven for Direct {
    fn poll_fd(&self) -> Option<RawFd> {
        Direct::poll_fd(self)
    }

    fn next_deadline(&self) -> Option<Instant> {
        Direct::next_deadline(self)
    }

    fn shutdown(&self, index: usize, deadline: Instant) {
        if let Some(mb) = self.mailbox(index) {
            // a closed mailbox means the shard already stopped
            let _ = send_driving(self, &mb, Msg::Shutdown { deadline });
        }
        self.run_until_stopped(index);
    }
}
