//! `quicshard impair`: a userspace UDP impairment proxy (loss, delay, jitter, reordering,
//! corruption, duplication, a rate limit with a drop-tail queue, blackouts), for testing QUIC
//! over bad networks where the kernel has no netem.
//!
//! The decisions are made by the sans-IO `quicshard_impair::Impairment` (seeded, virtual-clock
//! tested, shared with the simulator of `quicshard-testkit`);
//! this module is its I/O: one thread running a small mio loop over two UDP sockets.
//!
//! - The *listen* socket faces the client. The client is the last address that sent to it: the
//!   first sender becomes the client, and when another address sends, the proxy switches to it
//!   (a client whose NAT rebound, or a new client). On a switch the proxy also moves to a fresh
//!   *upstream* socket, so the server sees a new source port too — a NAT rebinding.
//! - The *upstream* socket is connected to `--forward`; only the server's datagrams come back.
//!
//! Up is client → server, down is server → client. The main thread waits for SIGINT/SIGTERM,
//! stops the loop through a `mio::Waker` and prints the counters on stderr.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::{signals, Failure};
use quicshard_impair::{Config, Dir, Impairment, Params};

/// mio token of the client-facing socket.
const LISTEN: Token = Token(0);
/// mio token of the server-facing socket.
const UPSTREAM: Token = Token(1);
/// mio token of the stop waker.
const WAKE: Token = Token(2);
/// Datagrams read per socket per loop iteration. Why: a flood on one side must not starve the
/// other side or the release of due datagrams.
const RECV_PER_ITER: usize = 256;
/// Socket buffers asked for (capped by `net.core.{r,w}mem_max`). Why: the loop is one thread;
/// bursts of a fast sender queue in the kernel while it is busy with the other direction.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_536;

/// Arguments of `quicshard impair`.
#[derive(clap::Args)]
#[command(after_help = "\
Up is client -> server, down is server -> client. Every impairment applies to both directions; \
--loss, --delay and --rate can be overridden per direction with --loss-up/--loss-down, \
--delay-up/--delay-down and --rate-up/--rate-down.

Per datagram, in this order: blackout, loss, corrupt (one bit), duplicate (the copy takes its own \
place in the queue), rate limit (drop-tail queue of --queue datagrams, UDP payload bytes), \
delay +- jitter (jitter never reorders), reorder (held back --reorder-gap ms more, so later \
datagrams overtake it). At most 20000 datagrams / 32 MiB wait per direction; beyond that they \
count as dropped_queue.

The client is the last address that sent to --listen; a new one replaces it and the proxy moves \
to a new upstream port (the server sees a NAT rebinding). Prints `listening on IP:PORT` when \
ready; on SIGINT/SIGTERM prints per-direction counters on stderr and exits 0.")]
pub(crate) struct Args {
    /// UDP address clients send to (port 0: any free port).
    #[arg(long)]
    listen: SocketAddr,
    /// The server's UDP address.
    #[arg(long)]
    forward: SocketAddr,
    /// Drop this percentage of datagrams.
    #[arg(long, value_name = "PCT", value_parser = percent, default_value_t = 0.0)]
    loss: f64,
    /// --loss for client -> server only.
    #[arg(long, value_name = "PCT", value_parser = percent)]
    loss_up: Option<f64>,
    /// --loss for server -> client only.
    #[arg(long, value_name = "PCT", value_parser = percent)]
    loss_down: Option<f64>,
    /// Apply the loss only to the first N datagrams of each direction (the handshake).
    #[arg(long, value_name = "N")]
    handshake_loss: Option<u64>,
    /// One-way delay in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    delay: u64,
    /// --delay for client -> server only.
    #[arg(long, value_name = "MS")]
    delay_up: Option<u64>,
    /// --delay for server -> client only.
    #[arg(long, value_name = "MS")]
    delay_down: Option<u64>,
    /// Uniform jitter of +- MS around the delay.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    jitter: u64,
    /// Reorder this percentage of datagrams.
    #[arg(long, value_name = "PCT", value_parser = percent, default_value_t = 0.0)]
    reorder: f64,
    /// How much longer a reordered datagram is held back.
    #[arg(long, value_name = "MS", default_value_t = 10)]
    reorder_gap: u64,
    /// Flip one random bit in this percentage of datagrams.
    #[arg(long, value_name = "PCT", value_parser = percent, default_value_t = 0.0)]
    corrupt: f64,
    /// Duplicate this percentage of datagrams.
    #[arg(long, value_name = "PCT", value_parser = percent, default_value_t = 0.0)]
    duplicate: f64,
    /// Rate limit in Mbit/s (UDP payload), with a drop-tail queue of --queue datagrams.
    #[arg(long, value_name = "MBIT", value_parser = mbit)]
    rate: Option<f64>,
    /// --rate for client -> server only.
    #[arg(long, value_name = "MBIT", value_parser = mbit)]
    rate_up: Option<f64>,
    /// --rate for server -> client only.
    #[arg(long, value_name = "MBIT", value_parser = mbit)]
    rate_down: Option<f64>,
    /// Queue limit of the rate limiter, in datagrams.
    #[arg(long, value_name = "PACKETS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    queue: u32,
    /// Seed of the random decisions (default: random; printed with the counters).
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Drop everything from T1 to T2 seconds after start (repeatable), e.g. 2-3.5.
    #[arg(long, value_name = "T1-T2", value_parser = window)]
    blackout: Vec<Window>,
}

/// A blackout window `[t1, t2)` since start.
#[derive(Debug, Clone, Copy)]
struct Window(Duration, Duration);

fn percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err("must be a percentage from 0 to 100".into()),
    }
}

fn mbit(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        // at least 1 kbit/s; at most 1 Tbit/s
        Ok(r) if (0.001..=1e6).contains(&r) => Ok(r),
        _ => Err("must be a rate in Mbit/s from 0.001 to 1000000".into()),
    }
}

fn window(s: &str) -> Result<Window, String> {
    let bad = || "must be T1-T2, seconds since start with T1 < T2, e.g. 2-3.5".to_string();
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let secs = |x: &str| {
        x.trim()
            .parse::<f64>()
            .ok()
            .and_then(|v| Duration::try_from_secs_f64(v).ok())
    };
    match (secs(a), secs(b)) {
        (Some(a), Some(b)) if a < b => Ok(Window(a, b)),
        _ => Err(bad()),
    }
}

impl Args {
    fn params(&self, dir: Dir) -> Params {
        let (loss, delay, rate) = match dir {
            Dir::Up => (self.loss_up, self.delay_up, self.rate_up),
            Dir::Down => (self.loss_down, self.delay_down, self.rate_down),
        };
        Params {
            loss: loss.unwrap_or(self.loss) / 100.0,
            delay: Duration::from_millis(delay.unwrap_or(self.delay)),
            jitter: Duration::from_millis(self.jitter),
            reorder: self.reorder / 100.0,
            reorder_gap: Duration::from_millis(self.reorder_gap),
            corrupt: self.corrupt / 100.0,
            duplicate: self.duplicate / 100.0,
            rate_bps: rate.or(self.rate).map(|m| (m * 1e6).round() as u64),
            queue: self.queue as usize,
            handshake_loss: self.handshake_loss,
        }
    }

    fn config(&self, seed: u64) -> Config {
        Config {
            up: self.params(Dir::Up),
            down: self.params(Dir::Down),
            blackouts: self.blackout.iter().map(|w| (w.0, w.1)).collect(),
            seed,
            ..Config::default()
        }
    }
}

/// What the I/O side counted (the core counts the impairments).
#[derive(Debug, Default)]
struct IoCounts {
    /// Times a new client address replaced the previous one.
    client_switches: u64,
    /// Server datagrams released before any client was known (dropped).
    no_client: u64,
    /// Datagrams the socket refused (dropped).
    send_errors: u64,
    /// Receive errors (e.g. ICMP port unreachable reported on the upstream socket).
    recv_errors: u64,
}

pub(crate) fn run(args: Args) -> Result<(), Failure> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let config = args.config(seed);
    let listen = std::net::UdpSocket::bind(args.listen)
        .map_err(|e| Failure::Refused(format!("cannot bind {}: {e}", args.listen)))?;
    let local = listen
        .local_addr()
        .map_err(|e| Failure::Refused(format!("--listen: {e}")))?;
    let setup = |e: io::Error| Failure::Refused(format!("impair setup: {e}"));
    tune(&listen).map_err(setup)?;
    let upstream = upstream_socket(args.forward)
        .map_err(|e| Failure::Refused(format!("--forward {}: {e}", args.forward)))?;
    let poll = Poll::new().map_err(setup)?;
    let waker = Waker::new(poll.registry(), WAKE).map_err(setup)?;
    let stop = Arc::new(AtomicBool::new(false));
    signals::block_termination().map_err(|e| Failure::Refused(format!("signals: {e}")))?;
    let proxy = Proxy {
        poll,
        listen: UdpSocket::from_std(listen),
        upstream,
        forward: args.forward,
        client: None,
        io: IoCounts::default(),
        core: Impairment::new(config, Instant::now()),
    };
    let s = stop.clone();
    let thread = std::thread::Builder::new()
        .name("impair".into())
        .spawn(move || {
            let mut proxy = proxy;
            let r = proxy.run(&s);
            if r.is_err() {
                // wake the main thread's sigwait: the proxy cannot go on
                // SAFETY: kill(2) on our own process id.
                unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
            }
            r.map(|()| proxy)
        })
        .map_err(setup)?;
    println!("listening on {local}");
    tracing::info!(%local, forward = %args.forward, seed, "impairing");
    signals::wait_termination().map_err(|e| Failure::Refused(format!("signals: {e}")))?;
    stop.store(true, Ordering::Relaxed);
    let _ = waker.wake();
    let proxy = thread
        .join()
        .map_err(|_| Failure::Refused("impair: the proxy thread panicked".into()))?
        .map_err(|e| Failure::Refused(format!("impair: {e}")))?;
    for dir in Dir::BOTH {
        eprintln!(
            "{}: {} pending={}",
            dir.name(),
            proxy.core.counts(dir),
            proxy.core.pending(dir)
        );
    }
    let io = &proxy.io;
    eprintln!(
        "io: client_switches={} no_client={} send_errors={} recv_errors={} seed={seed}",
        io.client_switches, io.no_client, io.send_errors, io.recv_errors
    );
    Ok(())
}

/// Larger socket buffers; failure only costs drops under bursts, so it is ignored.
fn tune(s: &std::net::UdpSocket) -> io::Result<()> {
    let r = socket2::SockRef::from(s);
    let _ = r.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = r.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    s.set_nonblocking(true)
}

/// A fresh socket on an ephemeral port, connected to the server.
fn upstream_socket(forward: SocketAddr) -> io::Result<UdpSocket> {
    let any = if forward.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    };
    let s = std::net::UdpSocket::bind(any)?;
    s.connect(forward)?;
    tune(&s)?;
    Ok(UdpSocket::from_std(s))
}

/// The proxy thread's state.
struct Proxy {
    poll: Poll,
    listen: UdpSocket,
    upstream: UdpSocket,
    forward: SocketAddr,
    client: Option<SocketAddr>,
    io: IoCounts,
    core: Impairment,
}

impl Proxy {
    /// The loop: wait for a socket, the next release or the stop waker; read both sockets under
    /// a budget; send what is due. Returns when `stop` is set.
    fn run(&mut self, stop: &AtomicBool) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut self.listen, LISTEN, Interest::READABLE)?;
        self.poll
            .registry()
            .register(&mut self.upstream, UPSTREAM, Interest::READABLE)?;
        let mut events = Events::with_capacity(16);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut more = false;
        while !stop.load(Ordering::Relaxed) {
            let timeout = if more {
                Some(Duration::ZERO)
            } else {
                self.core
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(Instant::now()))
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            // Edge-triggered readiness: read both sockets every time, until WouldBlock or the
            // budget (then poll without blocking next time).
            more = self.read_listen(&mut buf)?;
            more |= self.read_upstream(&mut buf);
            let now = Instant::now();
            while let Some(t) = self.core.poll_transmit(now) {
                self.send(t.dir, &t.data);
            }
        }
        Ok(())
    }

    /// Client datagrams; `true` if the budget ran out before `WouldBlock`.
    fn read_listen(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let now = Instant::now();
        for _ in 0..RECV_PER_ITER {
            match self.listen.recv_from(buf) {
                Ok((n, from)) => {
                    if self.client != Some(from) {
                        self.switch_client(from)?;
                    }
                    self.core.handle(now, Dir::Up, buf[..n].to_vec());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(_) => self.io.recv_errors += 1,
            }
        }
        Ok(true)
    }

    /// Server datagrams; `true` if the budget ran out before `WouldBlock`.
    fn read_upstream(&mut self, buf: &mut [u8]) -> bool {
        let now = Instant::now();
        for _ in 0..RECV_PER_ITER {
            match self.upstream.recv(buf) {
                Ok(n) => {
                    self.core.handle(now, Dir::Down, buf[..n].to_vec());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => self.io.recv_errors += 1,
            }
        }
        true
    }

    /// A new client address: remember it and, if it replaces another, move upstream.
    fn switch_client(&mut self, from: SocketAddr) -> io::Result<()> {
        if self.client.is_some() {
            self.io.client_switches += 1;
            let mut fresh = upstream_socket(self.forward)?;
            self.poll
                .registry()
                .register(&mut fresh, UPSTREAM, Interest::READABLE)?;
            let _ = self.poll.registry().deregister(&mut self.upstream);
            self.upstream = fresh;
            tracing::info!(client = %from, "new client address; new upstream port");
        }
        self.client = Some(from);
        Ok(())
    }

    fn send(&mut self, dir: Dir, data: &[u8]) {
        let r = match dir {
            Dir::Up => self.upstream.send(data),
            Dir::Down => match self.client {
                Some(c) => self.listen.send_to(data, c),
                None => {
                    self.io.no_client += 1;
                    return;
                }
            },
        };
        if r.is_err() {
            self.io.send_errors += 1;
        }
    }
}
