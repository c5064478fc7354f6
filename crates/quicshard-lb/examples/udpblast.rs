//! Load for `scripts/bench-lb`: a paced sender of QUIC short-header datagrams and a counting sink.
//!
//! ```sh
//! udpblast sink --listen 127.0.0.1:6000 --expect 2000000 --idle-ms 2000
//! udpblast send --to 127.0.0.1:5000 --count 2000000 --rate 250000 --flows 64 --size 1200 \
//!               --server-id 0a01 [--key HEX]
//! ```
//!
//! `send` uses `--flows` sockets (source ports); flow `i` sends short headers whose DCID is a
//! QUIC-LB CID (config id 0, 2-byte server ID, 8-byte nonce `i`, encrypted with `--key` when
//! given, else plaintext) for `--server-id`, plus a shard byte, then filler to `--size` bytes.
//! It sends batches of 32 per `sendmmsg`, paced to `--rate` datagrams per second, and prints
//! `sent N in S s`. `sink` counts datagrams until `--expect` arrived or none arrived for
//! `--idle-ms` after the first, then prints `received N in S s` (S from first to last).

#[path = "common/mmsg.rs"]
mod mmsg;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn num(args: &[String], name: &str, default: u64) -> u64 {
    arg(args, name).map_or(default, |v| v.parse().expect(name))
}

fn buffers(s: &UdpSocket) {
    let s = socket2::SockRef::from(s);
    let _ = s.set_recv_buffer_size(8 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
}

fn sink(args: &[String]) {
    let listen: SocketAddr = arg(args, "--listen")
        .expect("--listen")
        .parse()
        .expect("--listen");
    let expect = num(args, "--expect", u64::MAX);
    let idle = Duration::from_millis(num(args, "--idle-ms", 2000));
    let sock = UdpSocket::bind(listen).expect("bind");
    buffers(&sock);
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    println!("listening on {}", sock.local_addr().unwrap());
    let mut m = mmsg::Mmsg::new(256, 2048);
    let (mut got, mut first, mut last) = (0u64, None, Instant::now());
    while got < expect {
        match m.recv(&sock) {
            Ok(n) => {
                got += n as u64;
                last = Instant::now();
                first.get_or_insert(last);
            }
            Err(_) => {
                if first.is_some() && last.elapsed() > idle {
                    break;
                }
            }
        }
    }
    let secs = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    println!("received {got} in {secs:.3} s");
}

fn send(args: &[String]) {
    let to: SocketAddr = arg(args, "--to").expect("--to").parse().expect("--to");
    let count = num(args, "--count", 1_000_000);
    let rate = num(args, "--rate", 200_000).max(1);
    let flows = num(args, "--flows", 64).max(1) as usize;
    let size = num(args, "--size", 1200).clamp(32, 1500) as usize;
    let sid = hex::decode(arg(args, "--server-id").unwrap_or("0a01")).expect("--server-id");
    let key = arg(args, "--key").map(|k| hex::decode(k).expect("--key"));
    let cfg = quic_lb::Config::with_key_slice(0, sid.len(), 8, key.as_deref()).expect("config");
    let codec = quic_lb::Codec::new(cfg);
    let socks: Vec<UdpSocket> = (0..flows)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            buffers(&s);
            s
        })
        .collect();
    const BATCH: usize = 32;
    // One prepared batch per flow: the same datagram 32 times (contents do not matter past the
    // DCID; the packet number bytes vary per flow only).
    let mut batches: Vec<mmsg::Mmsg> = (0..flows)
        .map(|f| {
            let mut m = mmsg::Mmsg::new(BATCH, size);
            let mut cid = [0u8; quic_lb::MAX_CID_LEN];
            let nonce = (f as u64).to_be_bytes();
            let n = codec.encode(&sid, &nonce, 0, &mut cid).expect("encode");
            for i in 0..BATCH {
                let b = &mut m.bufs[i];
                b[0] = 0x40;
                b[1..1 + n].copy_from_slice(&cid[..n]);
                b[1 + n] = f as u8; // shard byte
                for (k, x) in b[2 + n..].iter_mut().enumerate() {
                    *x = (k as u8) ^ (i as u8);
                }
                m.lens[i] = size;
                m.set_dest(i, &mmsg::v4(to));
            }
            m
        })
        .collect();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut flow = 0;
    while sent < count {
        // pacing: never ahead of rate * elapsed
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        if sent >= due {
            // sleep rather than spin: the sender shares the cores with what it measures
            let ahead = (sent + BATCH as u64 - due) as f64 / rate as f64;
            std::thread::sleep(Duration::from_secs_f64(ahead.clamp(0.000_05, 0.01)));
            continue;
        }
        let n = (count - sent).min(BATCH as u64) as usize;
        sent += batches[flow].send(&socks[flow], n, true) as u64;
        flow = (flow + 1) % flows;
    }
    println!("sent {sent} in {:.3} s", start.elapsed().as_secs_f64());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("sink") => sink(&args),
        Some("send") => send(&args),
        _ => {
            eprintln!("usage: udpblast sink|send ... (see the source)");
            std::process::exit(2);
        }
    }
}
