//! Send batching: when one loop iteration has datagrams for many connections, they leave in few
//! `sendmmsg` calls (GSO off on the server, so every transmit is one datagram and the ratio
//! `datagrams_out / send_calls` measures `sendmmsg` batching alone); and with GSO on, no batch
//! is too big for the kernel.

mod common;

use std::time::Duration;

use common::*;
use quicshard::{Engine, ShardStats};

const TIMEOUT: Duration = Duration::from_secs(90);
const CONNS: u64 = 64;

#[test]
fn many_small_responses_share_send_calls() {
    let _ = tracing_subscriber::fmt::try_init();
    let mut t = transport();
    t.enable_segmentation_offload(false);
    let srv = Engine::builder(|_| Server::default())
        .shards(2)
        .transport(t)
        .start()
        .unwrap();
    let (cli, rx) = client_engine(&srv, 1);
    // all requests are queued before the client shard runs them: its first iteration makes
    // 64 Initials, the server shards answer them together, and so on in lockstep
    start_downloads(&cli.remote(), srv.local_addr(), CONNS, |_| 3000);
    for o in collect(&rx, CONNS, TIMEOUT) {
        assert_eq!(o.result, Ok(3000), "download {}", o.tag);
    }
    let client = ShardStats::sum(&cli.shutdown(Duration::from_secs(5)));
    let server = ShardStats::sum(&srv.shutdown(Duration::from_secs(5)));
    let ratio = |s: &ShardStats| s.datagrams_out as f64 / s.send_calls.max(1) as f64;
    eprintln!(
        "server: {} datagrams in {} send calls ({:.1}/call); client: {} in {} ({:.1}/call)",
        server.datagrams_out,
        server.send_calls,
        ratio(&server),
        client.datagrams_out,
        client.send_calls,
        ratio(&client)
    );
    assert_eq!(server.dropped_send_error, 0, "{server:#?}");
    // observed 12-15 datagrams per call; one per call is what sending each transmit alone gives
    assert!(
        server.datagrams_out >= 2 * server.send_calls,
        "little batching on the server: {server:#?}"
    );
    // the client sends its 64 Initials from one iteration: at least that batch is shared
    assert!(
        client.send_calls < client.datagrams_out,
        "no batching on the client: {client:#?}"
    );
}

/// A bulk download with GSO on: every GSO batch the server builds fits in one UDP datagram
/// (65,507 bytes), so the kernel refuses none (`EMSGSIZE` used to drop whole 55-segment batches).
#[test]
fn gso_batches_fit_a_udp_datagram() {
    let srv = Engine::builder(|_| Server::default())
        .shards(1)
        .transport(transport())
        .start()
        .unwrap();
    let (cli, rx) = client_engine(&srv, 1);
    start_downloads(&cli.remote(), srv.local_addr(), 1, |_| 32 << 20);
    for o in collect(&rx, 1, TIMEOUT) {
        assert_eq!(o.result, Ok(32 << 20), "download {}", o.tag);
    }
    let _ = cli.shutdown(Duration::from_secs(5));
    let server = ShardStats::sum(&srv.shutdown(Duration::from_secs(5)));
    assert_eq!(server.dropped_send_error, 0, "{server:#?}");
}
