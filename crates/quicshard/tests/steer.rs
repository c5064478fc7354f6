//! Steering on real loopback sockets: the attached BPF program delivers each datagram to the socket
//! `owner_shard` predicts, falls back to the kernel's 4-tuple hash, and sees the UDP payload.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use quicshard::steer::{attach, bind_group, steering_program, ShardKey};

/// The shard key of every program here.
const KEY: [u8; 16] = *b"steer-test-key!!";

fn owner_shard(datagram: &[u8], cid_len: usize, n: usize) -> Option<usize> {
    quicshard::steer::owner_shard(datagram, cid_len, n, &ShardKey::from_bytes(KEY))
}

fn program(cid_len: usize, n: usize) -> Vec<libc::sock_filter> {
    steering_program(cid_len, n, &ShardKey::from_bytes(KEY))
}

const SHARDS: usize = 4;
/// Not 8, so a client's typical 8-byte Initial DCID takes the "client-chosen DCID" branch.
const CID_LEN: usize = 12;
/// How long to wait for datagrams that were sent; loopback delivers them far sooner.
const DEADLINE: Duration = Duration::from_secs(5);
/// Datagrams sent before draining, well below what one default-size socket buffer holds.
const BATCH: usize = 64;

/// A received datagram: (socket index in the group, source, payload).
type Received = (usize, SocketAddr, Vec<u8>);

fn group() -> Vec<UdpSocket> {
    group_on("127.0.0.1:0")
}

fn group_on(addr: &str) -> Vec<UdpSocket> {
    let group = bind_group(addr.parse().unwrap(), SHARDS).unwrap();
    let addr = group[0].local_addr().unwrap();
    assert_ne!(addr.port(), 0);
    assert!(group.iter().all(|s| s.local_addr().unwrap() == addr));
    group
}

fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// Attaches `program`, or says why not and returns false when the kernel forbids it (EPERM).
fn attach_or_skip(socket: &UdpSocket, program: &[libc::sock_filter]) -> bool {
    match attach(socket, program) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            eprintln!("skipping the BPF part: SO_ATTACH_REUSEPORT_CBPF not permitted: {e}");
            false
        }
        Err(e) => panic!("SO_ATTACH_REUSEPORT_CBPF failed: {e}"),
    }
}

/// Reads every socket of the group until `expected` datagrams arrived or [`DEADLINE`] passed,
/// then once more, so extra datagrams show up too.
fn receive(group: &[UdpSocket], expected: usize) -> Vec<Received> {
    let mut poll = Poll::new().unwrap();
    for (i, socket) in group.iter().enumerate() {
        let fd = socket.as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&fd), Token(i), Interest::READABLE)
            .unwrap();
    }
    let mut events = Events::with_capacity(SHARDS);
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    loop {
        drain(group, &mut got);
        let now = Instant::now();
        if got.len() >= expected || now >= deadline {
            break;
        }
        poll.poll(&mut events, Some(deadline - now)).unwrap();
    }
    drain(group, &mut got);
    got
}

fn drain(group: &[UdpSocket], got: &mut Vec<Received>) {
    let mut buf = [0u8; 2048];
    for (i, socket) in group.iter().enumerate() {
        loop {
            match socket.recv_from(&mut buf) {
                Ok((len, from)) => got.push((i, from, buf[..len].to_vec())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("recv on socket {i}: {e}"),
            }
        }
    }
}

/// Sends each `(client, payload)` in batches and returns where each arrived, asserting that
/// every datagram arrived exactly once.
fn send_and_receive(
    group: &[UdpSocket],
    datagrams: &[(&UdpSocket, Vec<u8>)],
) -> BTreeMap<(SocketAddr, Vec<u8>), usize> {
    let to = group[0].local_addr().unwrap();
    let mut arrived = BTreeMap::new();
    for batch in datagrams.chunks(BATCH) {
        for (client, payload) in batch {
            assert_eq!(client.send_to(payload, to).unwrap(), payload.len());
        }
        let got = receive(group, batch.len());
        assert_eq!(got.len(), batch.len(), "lost or extra datagrams");
        for (socket, from, payload) in got {
            let previous = arrived.insert((from, payload), socket);
            assert!(previous.is_none(), "datagram received twice");
        }
    }
    let sent: BTreeSet<_> = datagrams
        .iter()
        .map(|(c, p)| (c.local_addr().unwrap(), p.clone()))
        .collect();
    assert_eq!(
        sent,
        arrived.keys().cloned().collect(),
        "received other datagrams than sent"
    );
    arrived
}

fn short(dcid: &[u8], seq: u16) -> Vec<u8> {
    [&[0x41][..], dcid, &seq.to_be_bytes(), b"payload"].concat()
}

fn long(dcid: &[u8], seq: u16) -> Vec<u8> {
    let len = u8::try_from(dcid.len()).unwrap();
    [
        &[0xc3, 0, 0, 0, 1, len][..],
        dcid,
        &[2],
        &seq.to_be_bytes(),
        b"token+payload",
    ]
    .concat()
}

#[test]
fn bpf_steers_every_datagram_to_its_owner() {
    let group = group();
    if !attach_or_skip(&group[SHARDS - 1], &program(CID_LEN, SHARDS)) {
        return;
    }
    let client = client();
    let mut datagrams = Vec::new();
    for b in 0..=255u8 {
        let seq = u16::from(b);
        // Octets before the shard byte vary too, so the kernel's word loads are checked.
        let mut cid = [0x5a; CID_LEN];
        cid[2] = b.wrapping_mul(37);
        cid[CID_LEN - 2] = b ^ 0x81;
        cid[CID_LEN - 1] = b;
        datagrams.push((&client, short(&cid, seq)));
        datagrams.push((&client, long(&cid, seq)));
        // Client-chosen Initial DCIDs of other lengths: steered by their first byte.
        let mut initial = vec![0xa5; 1 + usize::from(b) % 20];
        initial[0] = b;
        datagrams.push((&client, long(&initial, seq)));
    }
    let arrived = send_and_receive(&group, &datagrams);
    let mut per_socket = [0usize; SHARDS];
    for ((_, payload), socket) in &arrived {
        let owner = owner_shard(payload, CID_LEN, SHARDS).expect("every datagram here steers");
        assert_eq!(
            *socket, owner,
            "datagram {payload:02x?} went to the wrong socket"
        );
        per_socket[*socket] += 1;
    }
    assert!(
        per_socket.iter().all(|&n| n > 0),
        "every socket owns some: {per_socket:?}"
    );
}

/// Datagrams the rule cannot steer fall back to the 4-tuple hash, not to socket 0.
#[test]
fn bpf_falls_back_to_the_kernel_hash() {
    let group = group();
    let clients: Vec<UdpSocket> = (0..16).map(|_| client()).collect();
    // Learn each client's hash socket before any program is attached.
    let probes: Vec<_> = clients.iter().map(|c| (c, b"probe".to_vec())).collect();
    let hashed: BTreeMap<SocketAddr, usize> = send_and_receive(&group, &probes)
        .into_iter()
        .map(|((from, _), socket)| (from, socket))
        .collect();
    assert!(
        hashed.values().any(|&s| s != 0),
        "all 16 clients hash to socket 0: {hashed:?}"
    );

    if !attach_or_skip(&group[0], &program(CID_LEN, SHARDS)) {
        return;
    }
    let cid = [0x03; CID_LEN];
    let fallbacks = [
        vec![],
        short(&cid, 0)[..CID_LEN].to_vec(),
        long(&cid, 0)[..5 + CID_LEN].to_vec(),
        long(&[], 0),
        long(&[0x03; 21], 0),
    ];
    let mut datagrams = Vec::new();
    for client in &clients {
        for payload in &fallbacks {
            assert_eq!(
                owner_shard(payload, CID_LEN, SHARDS),
                None,
                "{payload:02x?}"
            );
            datagrams.push((client, payload.clone()));
        }
    }
    for ((from, payload), socket) in send_and_receive(&group, &datagrams) {
        assert_eq!(
            socket, hashed[&from],
            "fallback {payload:02x?} from {from} left the hash"
        );
    }
}

#[test]
fn without_bpf_the_kernel_hash_delivers_everything() {
    let group = group();
    let clients: Vec<UdpSocket> = (0..8).map(|_| client()).collect();
    let mut datagrams = Vec::new();
    for client in &clients {
        for b in 0..16u8 {
            let mut cid = [0x11; CID_LEN];
            cid[CID_LEN - 1] = b;
            datagrams.push((client, short(&cid, u16::from(b))));
        }
    }
    let mut socket_of = BTreeMap::new();
    for ((from, _), socket) in send_and_receive(&group, &datagrams) {
        let first = *socket_of.entry(from).or_insert(socket);
        assert_eq!(
            socket, first,
            "the 4-tuple hash sent one client's datagrams to two sockets"
        );
    }
}

/// For `SO_ATTACH_REUSEPORT_CBPF` offset 0 and `BPF_LEN` are the UDP payload, not the IP or
/// UDP header: a program returning `byte[0] % 4` (then `len % 4`) must follow the payload.
#[test]
fn filter_sees_the_udp_payload() {
    let ldb0 = libc::sock_filter {
        code: (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    };
    let ld_len = libc::sock_filter {
        code: (libc::BPF_LD | libc::BPF_W | libc::BPF_LEN) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    };
    let mod_n = libc::sock_filter {
        code: (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: SHARDS as u32,
    };
    let ret_a = libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_A) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    };
    let client = client();

    let by_byte = group();
    if !attach_or_skip(&by_byte[0], &[ldb0, mod_n, ret_a]) {
        return;
    }
    let datagrams: Vec<_> = (0..32u8)
        .map(|i| (&client, vec![i, 0xee, 0xee, i]))
        .collect();
    for ((_, payload), socket) in send_and_receive(&by_byte, &datagrams) {
        assert_eq!(
            socket,
            usize::from(payload[0]) % SHARDS,
            "byte 0 is not the payload's"
        );
    }

    let by_len = group();
    assert!(attach_or_skip(&by_len[0], &[ld_len, mod_n, ret_a]));
    let datagrams: Vec<_> = (1..=32u8)
        .map(|len| (&client, vec![len; usize::from(len)]))
        .collect();
    for ((_, payload), socket) in send_and_receive(&by_len, &datagrams) {
        assert_eq!(
            socket,
            payload.len() % SHARDS,
            "BPF_LEN is not the payload length"
        );
    }
}

#[test]
fn ipv6_group_steers_too() {
    let group = group_on("[::1]:0");
    if !attach_or_skip(&group[1], &program(CID_LEN, SHARDS)) {
        return;
    }
    let client = UdpSocket::bind("[::1]:0").unwrap();
    let datagrams: Vec<_> = (0..64u8)
        .map(|b| {
            let mut cid = [0x66; CID_LEN];
            cid[CID_LEN - 1] = b;
            (&client, short(&cid, u16::from(b)))
        })
        .collect();
    for ((_, payload), socket) in send_and_receive(&group, &datagrams) {
        assert_eq!(Some(socket), owner_shard(&payload, CID_LEN, SHARDS));
    }
}

#[test]
fn empty_group_is_an_error() {
    let err = bind_group("127.0.0.1:0".parse().unwrap(), 0).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}
