//! Tests of the socket queue: order, failures, self-flushing, and epoll interest.
use super::*;
use std::net::UdpSocket;
use std::time::Duration;

fn transmit(to: SocketAddr, size: usize, segment_size: Option<usize>) -> quinn_proto::Transmit {
    quinn_proto::Transmit {
        destination: to,
        ecn: Some(quinn_proto::EcnCodepoint::Ect0),
        size,
        segment_size,
        src_ip: None,
    }
}

fn receiver() -> UdpSocket {
    let r = UdpSocket::bind("127.0.0.1:0").unwrap();
    r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    r
}

/// Queues `payload` as one transmit the way a connection does.
fn queue(sock: &mut Sock, to: SocketAddr, payload: &[u8], segment_size: Option<usize>) {
    assert!(sock.reserve());
    sock.next_buf().extend_from_slice(payload);
    sock.commit(&transmit(to, payload.len(), segment_size));
}

#[test]
fn flush_keeps_order_and_skips_a_failing_datagram() {
    let stats = Arc::new(Counters::default());
    let mut sock = Sock::new(UdpSocket::bind("127.0.0.1:0").unwrap(), stats.clone()).unwrap();
    let (a, b) = (receiver(), receiver());
    let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let gso = sock.max_gso_segments() > 1;
    queue(&mut sock, to_a, b"a0", None);
    queue(&mut sock, to_b, b"b0", None);
    // an IPv6 destination on an IPv4 socket: the kernel refuses this one datagram
    queue(&mut sock, "[::1]:9".parse().unwrap(), b"bad", None);
    queue(&mut sock, to_a, b"a1", None);
    // a GSO batch of three 4-byte segments (or three plain datagrams without GSO)
    if gso {
        queue(&mut sock, to_a, b"a2..a3..a4..", Some(4));
    } else {
        for p in [b"a2..", b"a3..", b"a4.."] {
            queue(&mut sock, to_a, p, None);
        }
    }
    queue(&mut sock, to_a, b"a5", None);
    queue(&mut sock, to_b, b"b1", None);
    assert!(sock.flush(), "loopback never blocks");
    assert!(!sock.is_blocked());

    let mut buf = [0u8; 64];
    for want in [&b"a0"[..], b"a1", b"a2..", b"a3..", b"a4..", b"a5"] {
        let n = a.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], want);
    }
    for want in [&b"b0"[..], b"b1"] {
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], want);
    }
    let s = stats.snapshot();
    assert_eq!(s.datagrams_out, 8);
    assert_eq!(s.dropped_send_error, 1);
    // [a0 b0] (stops at bad), [bad] fails (EAFNOSUPPORT: dropped, not retried through quinn-udp),
    // then one sendmmsg for the rest, the GSO batch included
    assert_eq!(s.send_calls, 3);
}

#[test]
fn gso_batches_and_single_datagrams_leave_in_one_call() {
    let stats = Arc::new(Counters::default());
    let mut sock = Sock::new(UdpSocket::bind("127.0.0.1:0").unwrap(), stats.clone()).unwrap();
    if sock.max_gso_segments() < 2 {
        eprintln!("no GSO on this kernel: nothing to test");
        return;
    }
    let (a, b) = (receiver(), receiver());
    let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    queue(&mut sock, to_a, b"a0", None);
    // 3 segments of 5 bytes and a short last one; 2 of 8
    queue(&mut sock, to_b, b"b0...b1...b2...b3", Some(5));
    queue(&mut sock, to_a, b"a1......a2......", Some(8));
    queue(&mut sock, to_b, b"b4", None);
    assert!(sock.flush());
    let mut buf = [0u8; 64];
    for (r, want) in [
        (&a, &[&b"a0"[..], b"a1......", b"a2......"][..]),
        (&b, &[&b"b0..."[..], b"b1...", b"b2...", b"b3", b"b4"][..]),
    ] {
        for w in want {
            let n = r.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], *w);
        }
    }
    let s = stats.snapshot();
    assert_eq!((s.send_calls, s.datagrams_out), (1, 8));
}

#[test]
fn a_bad_datagram_does_not_disable_sendmmsg() {
    let stats = Arc::new(Counters::default());
    let mut sock = Sock::new(UdpSocket::bind("127.0.0.1:0").unwrap(), stats.clone()).unwrap();
    let r = receiver();
    let to = r.local_addr().unwrap();
    // port 0: EINVAL from sendmmsg and from quinn-udp alike
    queue(&mut sock, "127.0.0.1:0".parse().unwrap(), b"bad", None);
    assert!(sock.flush());
    assert!(
        matches!(&sock.io, SockIo::Udp(u) if u.mmsg_ok),
        "the datagram was bad, not our control messages"
    );
    queue(&mut sock, to, b"x", None);
    queue(&mut sock, to, b"y", None);
    assert!(sock.flush());
    let s = stats.snapshot();
    // [bad] sendmmsg, [bad] quinn-udp, [x y] sendmmsg
    assert_eq!(
        (s.send_calls, s.datagrams_out, s.dropped_send_error),
        (3, 2, 1)
    );
}

#[test]
fn writability_is_watched_only_while_blocked() {
    let stats = Arc::new(Counters::default());
    let mut sock = Sock::new(UdpSocket::bind("127.0.0.1:0").unwrap(), stats).unwrap();
    let mut poll = mio::Poll::new().unwrap();
    sock.register(poll.registry(), mio::Token(0)).unwrap();
    let mut events = mio::Events::with_capacity(4);
    let mut wait = |poll: &mut mio::Poll| {
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        events.iter().map(|e| e.is_writable()).collect::<Vec<_>>()
    };
    let r = receiver();
    queue(&mut sock, r.local_addr().unwrap(), b"x", None);
    assert!(sock.flush());
    assert_eq!(
        wait(&mut poll),
        Vec::<bool>::new(),
        "a send must not wake the shard"
    );
    // blocking adds the interest: a socket already writable reports it at once
    let SockIo::Udp(u) = &mut sock.io else {
        unreachable!()
    };
    u.want_writable(true);
    assert_eq!(wait(&mut poll), [true]);
    assert!(
        sock.flush(),
        "an empty queue unblocks and drops the interest"
    );
    assert!(matches!(&sock.io, SockIo::Udp(u) if !u.writable_interest));
    assert!(sock.drained_by(BATCH_SIZE - 1) && !sock.drained_by(BATCH_SIZE));
}

#[test]
fn a_full_queue_flushes_itself() {
    let stats = Arc::new(Counters::default());
    let mut sock = Sock::new(UdpSocket::bind("127.0.0.1:0").unwrap(), stats.clone()).unwrap();
    let r = receiver();
    let to = r.local_addr().unwrap();
    for i in 0..TX_BATCH + 3 {
        queue(&mut sock, to, &(i as u32).to_be_bytes(), None);
    }
    assert_eq!(stats.snapshot().send_calls, 1, "flushed once when full");
    assert!(sock.flush());
    let mut buf = [0u8; 8];
    for i in 0..TX_BATCH + 3 {
        let n = r.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &(i as u32).to_be_bytes());
    }
    let s = stats.snapshot();
    assert_eq!((s.send_calls, s.datagrams_out), (2, TX_BATCH as u64 + 3));
}
