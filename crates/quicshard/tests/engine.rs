//! End-to-end tests of the engine over loopback UDP: a 4-shard server, a client engine.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use quicshard::{Engine, ShardId, ShardStats, HANDLER_PANIC_CODE};

const TIMEOUT: Duration = Duration::from_secs(90);

fn server(bpf: bool, retry: bool) -> Engine<Server> {
    server_on("127.0.0.1:0", bpf, retry)
}

fn server_on(listen: &str, bpf: bool, retry: bool) -> Engine<Server> {
    server_threads(listen, bpf, retry, 0)
}

/// A 4-shard server on `threads` threads (0: the default).
fn server_threads(listen: &str, bpf: bool, retry: bool, threads: usize) -> Engine<Server> {
    Engine::builder(|_| Server::default())
        .shards(4)
        .threads(threads)
        .listen(listen.parse().unwrap())
        .bpf(bpf)
        .retry(retry)
        .transport(transport())
        .start()
        .unwrap()
}

fn download_all(listen: &str, bpf: bool) -> Vec<ShardStats> {
    download_on(listen, bpf, 0)
}

/// 200 downloads from a 4-shard server on `threads` threads (0: the default).
fn download_on(listen: &str, bpf: bool, threads: usize) -> Vec<ShardStats> {
    let _ = tracing_subscriber::fmt::try_init();
    let srv = server_threads(listen, bpf, false, threads);
    assert_eq!(srv.bpf_attached(), bpf, "BPF attach state");
    let (cli, rx) = client_engine(&srv, 2);
    const N: u64 = 200;
    start_downloads(&cli.remote(), srv.local_addr(), N, |_| 64 * 1024);
    let outcomes = collect(&rx, N, TIMEOUT);
    let failed: Vec<_> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    for o in &outcomes {
        assert_eq!(o.result.as_ref().ok(), Some(&(64 * 1024)));
    }
    let cstats = cli.shutdown(Duration::from_secs(5));
    let stats = srv.shutdown(Duration::from_secs(5));
    eprintln!(
        "server: {stats:#?}\nclient total: {:#?}",
        ShardStats::sum(&cstats)
    );
    for (i, s) in stats.iter().enumerate() {
        assert!(
            s.connections_accepted > 0,
            "shard {i} accepted no connection"
        );
        assert_eq!(s.handler_panics, 0);
    }
    let total = ShardStats::sum(&stats);
    assert_eq!(total.connections_accepted, N);
    assert_eq!(total.handshakes, N);
    assert_eq!(total.connections_open, 0, "all drained at shutdown");
    assert_eq!(
        total.handoffs_in + total.dropped_queue_full,
        total.handoffs_out
    );
    stats
}

#[test]
fn download_200_connections_bpf() {
    let stats = download_all("127.0.0.1:0", true);
    let total = ShardStats::sum(&stats);
    assert_eq!(total.handoffs_in_short, 0, "BPF steers every short header");
    assert_eq!(total.handoffs_out_short, 0);
}

#[test]
fn four_shards_on_one_thread() {
    // the server's one thread runs shards 0..=3 (named so); each still accepts its connections
    let stats = download_on("127.0.0.1:0", true, 1);
    assert!(stats.iter().all(|s| s.connections_accepted > 0));
}

#[test]
fn a_thread_per_shard_and_groups_of_two_without_bpf() {
    for threads in [4, 2] {
        let stats = download_on("127.0.0.1:0", false, threads);
        let total = ShardStats::sum(&stats);
        assert!(total.handoffs_in > 0, "{threads} threads: {total:?}");
    }
}

#[test]
fn shards_run_on_their_group_threads() {
    // each shard reports the name of the thread it runs on, and which shard its context is;
    // without turn sharing, where any running shard thread may give a waiting shard a turn
    let layout = |threads: usize| {
        let srv = Engine::builder(|_| Server::default())
            .shards(5)
            .threads(threads)
            .turn_sharing(false)
            .start()
            .unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in 0..5 {
            let tx = tx.clone();
            srv.remote()
                .run_on(ShardId(i), move |ctx, _| {
                    let name = std::thread::current().name().unwrap_or("").to_owned();
                    tx.send((i, ctx.shard().0, name)).unwrap();
                })
                .unwrap();
        }
        let mut got: Vec<_> = (0..5)
            .map(|_| rx.recv_timeout(TIMEOUT).expect("a shard did not run"))
            .collect();
        got.sort();
        got.into_iter()
            .map(|(i, ctx, name)| {
                assert_eq!(i, ctx, "ran in the wrong shard's context");
                name
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(layout(1), ["quicshard-0-4"; 5]);
    assert_eq!(
        layout(2),
        [
            "quicshard-0-1",
            "quicshard-0-1",
            "quicshard-2-4",
            "quicshard-2-4",
            "quicshard-2-4"
        ]
    );
    let each: Vec<String> = (0..5).map(|i| format!("quicshard-{i}")).collect();
    assert_eq!(layout(5), each);
    assert_eq!(layout(9), each, "more threads than shards: one each");
}

#[test]
fn blocking_connect_to_a_shard_of_the_same_thread_is_refused() {
    let srv = Engine::builder(|_| Server::default())
        .shards(2)
        .threads(1)
        .start()
        .unwrap();
    let remote = srv.remote();
    let addr = srv.local_addr();
    let (tx, rx) = crossbeam_channel::bounded(1);
    srv.remote()
        .run_on(ShardId(0), move |_, _| {
            let r = remote.connect(ShardId(1), addr, "localhost");
            tx.send(matches!(r, Err(quicshard::RemoteError::WouldDeadlock)))
                .unwrap();
        })
        .unwrap();
    assert!(rx.recv_timeout(TIMEOUT).unwrap(), "connect did not refuse");
}

#[test]
fn download_200_connections_no_bpf() {
    let stats = download_all("127.0.0.1:0", false);
    let total = ShardStats::sum(&stats);
    // the 4-tuple hash agrees with the CID's shard for about 1 connection in 4
    assert!(total.handoffs_in > 0, "no handoffs without BPF: {total:?}");
}

#[test]
fn download_200_connections_ipv6() {
    let stats = download_all("[::1]:0", true);
    let total = ShardStats::sum(&stats);
    assert_eq!(
        total.handoffs_in_short, 0,
        "BPF steers IPv6 short headers too"
    );
    assert_eq!(total.handoffs_out_short, 0);
}

#[test]
fn download_ipv6_no_bpf() {
    let stats = download_all("[::1]:0", false);
    let total = ShardStats::sum(&stats);
    assert!(total.handoffs_in > 0, "no handoffs without BPF: {total:?}");
}

#[test]
fn handler_panic_closes_only_its_connection() {
    let srv = server(true, false);
    let (cli, rx) = client_engine(&srv, 2);
    const N: u64 = 20;
    let size = |tag| if tag == 7 { PANIC_SIZE } else { 10_000 };
    start_downloads(&cli.remote(), srv.local_addr(), N, size);
    let outcomes = collect(&rx, N, TIMEOUT);
    for o in &outcomes {
        if o.tag == 7 {
            let e = o.result.as_ref().unwrap_err();
            assert!(
                e.contains(&format!("{HANDLER_PANIC_CODE}")) || e.contains("handler panic"),
                "{e}"
            );
        } else {
            assert_eq!(o.result, Ok(10_000), "tag {}", o.tag);
        }
    }
    drop(cli);
    let total = ShardStats::sum(&srv.shutdown(Duration::from_secs(5)));
    assert_eq!(total.handler_panics, 1);
}

#[test]
fn retry_then_complete() {
    let srv = server(true, true);
    let (cli, rx) = client_engine(&srv, 2);
    const N: u64 = 20;
    start_downloads(&cli.remote(), srv.local_addr(), N, |_| 20_000);
    for o in collect(&rx, N, TIMEOUT) {
        assert_eq!(o.result, Ok(20_000), "tag {}", o.tag);
    }
    drop(cli);
    let total = ShardStats::sum(&srv.shutdown(Duration::from_secs(5)));
    assert_eq!(total.retry_sent, N, "one Retry per connection");
    assert_eq!(total.connections_accepted, N);
}

#[test]
fn port_in_use_is_a_clean_error() {
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let r = Engine::builder(|_| Server::default())
        .shards(2)
        .listen(addr)
        .start();
    match r {
        Err(quicshard::StartError::Bind { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse)
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("bound a port in use"),
    }
}

#[test]
fn garbage_is_counted_and_dropped() {
    let srv = server(true, false);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = srv.local_addr();
    sock.send_to(&[], to).unwrap(); // empty
    sock.send_to(&[0x40, 1, 2, 3, 4], to).unwrap(); // short header, too short for a DCID
    let mut bad_cid = vec![0x40, 0xff]; // config bits 0b111: never ours
    bad_cid.extend(std::iter::repeat_n(0xab, 60));
    for last in 0..8u8 {
        bad_cid[srv.cid_len()] = last; // reach every shard
        sock.send_to(&bad_cid, to).unwrap();
    }
    let mut long = vec![0xc0, 0, 0, 0, 1, 0x50]; // long header, DCID length 80 (> 20)
    long.extend([0u8; 100]);
    sock.send_to(&long, to).unwrap();
    sock.send_to(&[0xc0, 0, 0, 0, 1, 5, 1, 2], to).unwrap(); // truncated DCID
    let total = || ShardStats::sum(&srv.stats());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for("garbage counted", Duration::from_secs(10), || {
            let t = total();
            t.dropped_malformed >= 2 && t.dropped_unknown_cid >= 8 && t.datagrams_in >= 12
        })
    }));
    assert!(r.is_ok(), "{:#?}", srv.stats());
    // still serving
    let (cli, rx) = client_engine(&srv, 1);
    start_downloads(&cli.remote(), srv.local_addr(), 4, |_| 5_000);
    for o in collect(&rx, 4, TIMEOUT) {
        assert_eq!(o.result, Ok(5_000));
    }
}

#[test]
fn connection_limit_refuses_and_shutdown_closes() {
    let srv = Engine::builder(|_| Server::default())
        .shards(1)
        .max_connections_per_shard(1)
        .start()
        .unwrap();
    // The server sends its shutdown CONNECTION_CLOSE once; the endless download below can have
    // filled the client's socket at that moment, and then the client, with nothing to send,
    // learns of the end only by idling out. A 3 s idle timeout keeps that case short.
    let mut cfg = quicshard::tls::client_config_trusting(srv.certificate().unwrap(), &[]).unwrap();
    let mut t = quicshard::quinn_proto::TransportConfig::default();
    t.max_idle_timeout(Some(Duration::from_secs(3).try_into().unwrap()));
    cfg.transport_config(Arc::new(t));
    let (cli, rx) = client_engine_with(cfg, 1, "127.0.0.1:0".parse().unwrap());
    let remote = cli.remote();
    // an endless download keeps the only slot busy
    start_downloads(&remote, srv.local_addr(), 1, |_| u64::MAX / 2);
    wait_for("first handshake", TIMEOUT, || {
        srv.stats()[0].handshakes == 1
    });
    start_downloads(&remote, srv.local_addr(), 1, |_| 1000);
    let refused = collect(&rx, 1, TIMEOUT).remove(0);
    let e = refused.result.unwrap_err();
    assert!(e.contains("refused"), "{e}");
    let stats = srv.shutdown(Duration::from_secs(5));
    assert_eq!(stats[0].connections_refused, 1);
    assert_eq!(stats[0].connections_open, 0, "drained before the timeout");
    let closed = collect(&rx, 1, TIMEOUT).remove(0);
    let e = closed.result.unwrap_err();
    // every outcome error starts with "closed: "; the reason is what counts
    assert!(e.contains("shutdown") || e.contains("timed out"), "{e}");
    drop(cli);
}

#[test]
fn ticket_from_one_shard_resumes_on_another() {
    use quicshard::quinn_proto::ConnectionId;
    use std::sync::atomic::{AtomicU8, Ordering};
    let srv = server(true, false);
    assert!(srv.bpf_attached());
    // 20-octet initial DCIDs (not our 18) are steered by their first octet: 0, then 1, ...
    let next = Arc::new(AtomicU8::new(0));
    let mut cfg = quicshard::tls::client_config_trusting(srv.certificate().unwrap(), &[]).unwrap();
    cfg.initial_dst_cid_provider(Arc::new(move || {
        let mut b = [0x5a; 20];
        b[0] = next.fetch_add(1, Ordering::Relaxed);
        ConnectionId::new(&b)
    }));
    let (tx, rx) = crossbeam_channel::unbounded();
    let cli = Engine::builder(move |_| Client::new(tx.clone()))
        .shards(1)
        .client_config(cfg)
        .start()
        .unwrap();
    start_downloads(&cli.remote(), srv.local_addr(), 1, |_| 1000);
    assert_eq!(collect(&rx, 1, TIMEOUT)[0].result, Ok(1000));
    start_downloads(&cli.remote(), srv.local_addr(), 1, |_| 1000);
    assert_eq!(collect(&rx, 1, TIMEOUT)[0].result, Ok(1000));
    drop(cli);
    let stats = srv.shutdown(Duration::from_secs(5));
    assert_eq!(stats[0].connections_accepted, 1, "{stats:#?}");
    assert_eq!(stats[1].connections_accepted, 1, "{stats:#?}");
    assert_eq!(stats[0].resumptions, 0);
    assert_eq!(stats[1].resumptions, 1, "shard 1 resumed shard 0's ticket");
}
