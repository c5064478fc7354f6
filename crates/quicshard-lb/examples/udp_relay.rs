//! The baseline for `scripts/bench-lb`: the least a UDP load balancer must do. One thread reads
//! up to 256 datagrams per `recvmmsg` from LISTEN and writes them with one `sendmmsg` to TARGET;
//! no parsing, no routing, no queues. Runs until killed.
//!
//! ```sh
//! cargo run --release -p quicshard-lb --example udp_relay -- 127.0.0.1:5000 127.0.0.1:6000
//! ```

#[path = "common/mmsg.rs"]
mod mmsg;

use std::net::{SocketAddr, UdpSocket};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(target)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: udp_relay LISTEN TARGET");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("LISTEN: IPv4 socket address");
    let target: SocketAddr = target.parse().expect("TARGET: IPv4 socket address");
    let rx = UdpSocket::bind(listen).expect("bind LISTEN");
    let tx = UdpSocket::bind("0.0.0.0:0").expect("bind sender");
    tx.connect(target).expect("connect TARGET");
    for s in [&rx, &tx] {
        let s = socket2::SockRef::from(s);
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
    }
    println!("listening on {}", rx.local_addr().expect("local address"));
    let mut m = mmsg::Mmsg::new(256, 2048);
    loop {
        match m.recv(&rx) {
            Ok(n) => {
                m.send(&tx, n, false);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("recvmmsg: {e}"),
        }
    }
}
