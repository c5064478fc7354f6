//! Forwarding new connections from a retiring process to its successor.
//!
//! Once an old process has retired ([`Retire::begin`]), a datagram that would start a new
//! connection on one of its shards (quinn-proto answers it with `NewConnection`, or a 0-RTT
//! packet for no connection) is not accepted there: the shard sends it, with the client's
//! address, over a Unix `SOCK_SEQPACKET` socket (message boundaries, and an end-of-file when
//! the old process exits) to the successor, which injects it into its own engine
//! ([`Receiver`]). Every other datagram (its own connections') it keeps. The copy this needs is
//! made only while retired and only of long-header datagrams.
//!
//! A forwarded datagram is `family (4 or 6) | client IP (16) | client port (2) | local IP family
//! (0, 4 or 6) | local IP (16) | payload`.

use std::io::{self, IoSlice, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ranked_lock::Mutex;

use socket2::{Domain, Socket, Type};

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
    /// Taken only while retiring (a leaf: nothing is locked under it).
    to: Mutex<Option<Socket>>,
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

impl Default for Retire {
    fn default() -> Self {
        Self {
            on: AtomicBool::new(false),
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

    /// From now on, new connections go to `to`.
    pub(super) fn begin(&self, to: Socket) {
        let _ = to.set_nonblocking(true);
        let _ = to.set_send_buffer_size(SOCKET_BUFFER);
        *self.to.lock() = Some(to);
        self.on.store(true, Ordering::Release);
    }

    /// The successor went away before it served: accept new connections again.
    pub(super) fn cancel(&self) {
        self.on.store(false, Ordering::Release);
        *self.to.lock() = None;
    }

    /// Sends one datagram to the successor; counted, and dropped (counted) if its socket is
    /// full or gone (the client retransmits).
    pub(crate) fn forward(&self, payload: &[u8], remote: SocketAddr, local_ip: Option<IpAddr>) {
        let to = self.to.lock();
        let Some(to) = to.as_ref() else {
            return;
        };
        if payload.len() > MAX_DATAGRAM {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let head = header(remote, local_ip);
        match to.send_vectored(&[IoSlice::new(&head), IoSlice::new(payload)]) {
            Ok(_) => self.forwarded.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.dropped.fetch_add(1, Ordering::Relaxed),
        };
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
pub(super) fn pair() -> io::Result<(Socket, Socket)> {
    let (ours, theirs) = Socket::pair(Domain::UNIX, Type::SEQPACKET.cloexec(), None)?;
    let _ = ours.set_recv_buffer_size(SOCKET_BUFFER);
    Ok((ours, theirs))
}

/// Receives forwarded datagrams on `sock` and gives each to `deliver` until the old process's
/// end is closed. Returns how many it received and how many were malformed.
pub(super) fn receive(
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
        r.forward(b"lost", v4, None); // not retiring yet: no socket
        assert!(!r.is_on());
        r.begin(theirs);
        assert!(r.is_on());
        r.forward(b"first", v4, Some("192.0.2.1".parse().unwrap()));
        r.forward(b"second", v6, None);
        assert_eq!(r.counts(), (2, 0));
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
    fn a_short_header_is_malformed() {
        assert!(decode(&[4; HEADER - 1]).is_none());
        assert!(decode(&[9; HEADER]).is_none(), "unknown family");
    }
}
