//! Forwarding new connections between the two processes of a handover ([`crate::handover`]):
//! the shard side, which every shard checks, and the socket both processes use.
//!
//! Once an old process has retired ([`Retire::begin`]), a datagram that would start a new
//! connection on one of its shards (quinn-proto answers it with `NewConnection`, or a 0-RTT
//! packet for no connection) is not accepted there: the shard sends it, with the client's
//! address, over a Unix `SOCK_SEQPACKET` socket (message boundaries, and an end-of-file when
//! the old process exits) to the successor, which injects it into its own engine
//! ([`receive`]). Every other datagram (its own connections') it keeps.
//!
//! For a *grace* period after the switch ([`Retire::grace`]) the successor does the same the
//! other way for datagrams from its sockets: one that would start a connection goes to the old
//! process, which keeps it if it has the connection (the rest of a first flight whose first
//! datagram it accepted before it retired) and otherwise forwards it back; a datagram that came
//! from the other process is never sent back again. So a client's whole first flight reaches one
//! process, whichever side of the switch its datagrams fell on. If the other process is gone, a
//! datagram that cannot be forwarded is accepted where it is.
//!
//! The copy this needs is made only while retired or in the grace period, and only of
//! long-header datagrams.
//!
//! A forwarded datagram is `family (4 or 6) | client IP (16) | client port (2) | local IP family
//! (0, 4 or 6) | local IP (16) | payload`.

use std::io::{self, IoSlice, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ranked_lock::Mutex;

use socket2::{Domain, Socket, Type};

/// Microseconds since the first call in this process: the clock of [`Retire`]'s grace period.
fn micros(t: std::time::Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    u64::try_from(t.saturating_duration_since(epoch).as_micros()).unwrap_or(u64::MAX)
}

/// Octets before the payload.
const HEADER: usize = 1 + 16 + 2 + 1 + 16;
/// Largest forwarded datagram: the largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Socket buffer asked for on both ends. Why: a burst of new connections' first flights
/// (1,200-1,500 octets each) while the successor's receiver thread is descheduled.
const SOCKET_BUFFER: usize = 4 << 20;

/// The retiring state every shard of a process checks (one atomic load per long-header
/// datagram while not retiring).
#[derive(Debug)]
pub(crate) struct Retire {
    on: AtomicBool,
    /// The grace period's end ([`super::help::micros`]; 0: none).
    grace_until: AtomicU64,
    /// Taken only while retiring (a leaf: nothing is locked under it).
    to: Mutex<Option<Socket>>,
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

impl Default for Retire {
    fn default() -> Self {
        Self {
            on: AtomicBool::new(false),
            grace_until: AtomicU64::new(0),
            to: Mutex::new(crate::ranks::HANDOVER_FORWARD, None),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }
}

impl Retire {
    /// Whether new connections go to the successor.
    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    /// Whether a datagram that would start a connection at `now` goes to the other process:
    /// always once retired; in the grace period, unless it came from there.
    pub(crate) fn should_forward(&self, now: std::time::Instant, from_peer: bool) -> bool {
        self.is_on() || (!from_peer && micros(now) < self.grace_until.load(Ordering::Acquire))
    }

    /// The successor's side: until `until`, datagrams that would start a connection go to the
    /// predecessor over `to`.
    pub(crate) fn grace(&self, to: Socket, until: std::time::Instant) {
        let _ = to.set_send_buffer_size(SOCKET_BUFFER);
        *self.to.lock() = Some(to);
        self.grace_until.store(micros(until), Ordering::Release);
    }

    /// The predecessor exited: the grace period ends.
    pub(crate) fn end_grace(&self) {
        self.grace_until.store(0, Ordering::Release);
        if !self.is_on() {
            *self.to.lock() = None;
        }
    }

    /// From now on, new connections go to `to`.
    pub(crate) fn begin(&self, to: Socket) {
        // `to` stays blocking: a copy of it reads what comes back; sends do not wait
        let _ = to.set_send_buffer_size(SOCKET_BUFFER);
        *self.to.lock() = Some(to);
        self.on.store(true, Ordering::Release);
    }

    /// The successor went away before it served: accept new connections again.
    pub(crate) fn cancel(&self) {
        self.on.store(false, Ordering::Release);
        *self.to.lock() = None;
    }

    /// Sends one datagram to the other process; whether it went (counted either way). Not
    /// sent: no socket, the other process is gone, or its socket is full (the caller then
    /// keeps the datagram if it can, or the client retransmits).
    pub(crate) fn forward(
        &self,
        payload: &[u8],
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
    ) -> bool {
        let to = self.to.lock();
        let sent = match to.as_ref() {
            Some(to) if payload.len() <= MAX_DATAGRAM => {
                let head = header(remote, local_ip);
                // never waits: a shard thread sends (the descriptor is shared with a blocking
                // reader, so the flag is per call)
                to.send_vectored_with_flags(
                    &[IoSlice::new(&head), IoSlice::new(payload)],
                    libc::MSG_DONTWAIT,
                )
                .is_ok()
            }
            _ => false,
        };
        let counter = if sent { &self.forwarded } else { &self.dropped };
        counter.fetch_add(1, Ordering::Relaxed);
        sent
    }

    /// Datagrams forwarded, and dropped on the way.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.forwarded.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

fn ip_octets(ip: IpAddr) -> (u8, [u8; 16]) {
    match ip {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            (4, b)
        }
        IpAddr::V6(v6) => (6, v6.octets()),
    }
}

fn ip_from(family: u8, b: &[u8]) -> Option<IpAddr> {
    match family {
        4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?))),
        _ => None,
    }
}

/// The forwarded form's header.
fn header(remote: SocketAddr, local_ip: Option<IpAddr>) -> [u8; HEADER] {
    let mut buf = [0u8; HEADER];
    let (family, ip) = ip_octets(remote.ip());
    buf[0] = family;
    buf[1..17].copy_from_slice(&ip);
    buf[17..19].copy_from_slice(&remote.port().to_be_bytes());
    let (lf, lip) = local_ip.map_or((0, [0; 16]), ip_octets);
    buf[19] = lf;
    buf[20..36].copy_from_slice(&lip);
    buf
}

/// Reads the forwarded form: payload, client address, local IP.
fn decode(b: &[u8]) -> Option<(&[u8], SocketAddr, Option<IpAddr>)> {
    if b.len() < HEADER {
        return None;
    }
    let ip = ip_from(b[0], &b[1..17])?;
    let port = u16::from_be_bytes([b[17], b[18]]);
    let local = ip_from(b[19], &b[20..36]);
    Some((&b[HEADER..], SocketAddr::new(ip, port), local))
}

/// The successor's end: the socket pair's two ends (ours, and the one to hand to the old
/// process).
pub(crate) fn pair() -> io::Result<(Socket, Socket)> {
    let (ours, theirs) = Socket::pair(Domain::UNIX, Type::SEQPACKET.cloexec(), None)?;
    let _ = ours.set_recv_buffer_size(SOCKET_BUFFER);
    Ok((ours, theirs))
}

/// Receives forwarded datagrams on `sock` and gives each to `deliver` until the old process's
/// end is closed. Returns how many it received and how many were malformed.
pub(crate) fn receive(
    mut sock: &Socket,
    mut deliver: impl FnMut(&[u8], SocketAddr, Option<IpAddr>),
) -> (u64, u64) {
    let mut buf = vec![0u8; HEADER + MAX_DATAGRAM];
    let (mut got, mut bad) = (0, 0);
    loop {
        match sock.read(&mut buf) {
            // end of file: the old process closed its end (it never sends an empty message)
            Ok(0) => return (got, bad),
            Ok(n) => match decode(&buf[..n]) {
                Some((payload, remote, local)) => {
                    got += 1;
                    deliver(payload, remote, local);
                }
                None => bad += 1,
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return (got, bad),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_datagrams_keep_their_addresses() {
        let (ours, theirs) = pair().unwrap();
        let r = Retire::default();
        let v6: SocketAddr = "[2001:db8::1]:4433".parse().unwrap();
        let v4: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        assert!(!r.forward(b"lost", v4, None), "not retiring yet: no socket");
        assert!(!r.is_on());
        r.begin(theirs);
        assert!(r.is_on());
        assert!(r.forward(b"first", v4, Some("192.0.2.1".parse().unwrap())));
        assert!(r.forward(b"second", v6, None));
        assert_eq!(r.counts(), (2, 1));
        drop(r); // closes the old process's end
        let mut seen = Vec::new();
        let (got, bad) = receive(&ours, |p, a, l| seen.push((p.to_vec(), a, l)));
        assert_eq!((got, bad), (2, 0));
        assert_eq!(
            seen[0],
            (b"first".to_vec(), v4, Some("192.0.2.1".parse().unwrap()))
        );
        assert_eq!(seen[1], (b"second".to_vec(), v6, None));
    }

    #[test]
    fn the_grace_period_forwards_only_what_came_from_the_sockets() {
        let r = Retire::default();
        let now = std::time::Instant::now();
        assert!(!r.should_forward(now, false));
        let (_ours, theirs) = pair().unwrap();
        r.grace(theirs, now + std::time::Duration::from_secs(1));
        assert!(r.should_forward(now, false));
        assert!(
            !r.should_forward(now, true),
            "never back to where it came from"
        );
        assert!(
            !r.should_forward(now + std::time::Duration::from_secs(2), false),
            "over"
        );
        r.end_grace();
        assert!(!r.should_forward(now, false));
        assert!(
            !r.forward(b"x", "192.0.2.7:5000".parse().unwrap(), None),
            "no socket"
        );
    }

    #[test]
    fn a_short_header_is_malformed() {
        assert!(decode(&[4; HEADER - 1]).is_none());
        assert!(decode(&[9; HEADER]).is_none(), "unknown family");
    }
}
