//! How shard turns are run: turn sharing between shard threads (a shard whose own thread is
//! busy elsewhere gets its turn from a running thread) and the stall accounting (a long turn is
//! a stall only if the thread had the CPU for it).

mod common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use quicshard::{Engine, Remote, ShardId};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Four shards on two threads: thread 0 runs shards 0 and 1, thread 1 runs shards 2 and 3.
fn four_on_two(sharing: bool) -> Engine<Server> {
    Engine::builder(|_| Server::default())
        .shards(4)
        .threads(2)
        .listen("127.0.0.1:0".parse().unwrap())
        .turn_sharing(sharing)
        .start()
        .unwrap()
}

/// Holds `shard`'s own thread (named `own`) inside a turn of that shard until the returned flag is set;
/// returns once it is held. A helper may give the shard the turn instead (a thread is briefly
/// busy after start-up, and a busy thread helps): then the hold is released and tried again,
/// because a helper held in a turn blocks the shard's own thread on the turn lock, which is not
/// the situation the tests set up.
fn hold(srv: &Engine<Server>, shard: usize, own: &str) -> Arc<AtomicBool> {
    for _ in 0..100 {
        let release = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::bounded(1);
        let r = release.clone();
        srv.remote()
            .run_on(ShardId(shard), move |_, _| {
                let name = std::thread::current().name().unwrap_or("").to_owned();
                tx.send(name).unwrap();
                while !r.load(SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
            .unwrap();
        let name = rx.recv_timeout(TIMEOUT).expect("the shard never ran");
        if name == own {
            return release;
        }
        release.store(true, SeqCst);
    }
    panic!("shard {shard} never ran on its own thread");
}

/// Mail for shard 0 that posts itself again until `stop`.
fn busy(remote: Remote<Server>, stop: Arc<AtomicBool>) {
    let again = remote.clone();
    let _ = remote.run_on(ShardId(0), move |_, _| {
        if !stop.load(SeqCst) {
            busy(again, stop);
        }
    });
}

/// Asks shard 3 for the name of the thread that runs it, while thread 1 is blocked in shard 2
/// and thread 0 is kept busy by mail for shard 0; releases shard 2 only after the answer came
/// or `patience` passed. Returns (thread name, whether it came before the release).
fn ask_shard_3(srv: &Engine<Server>, patience: Duration) -> (String, bool) {
    let release = hold(srv, 2, "quicshard-2-3");
    let (tx, rx) = crossbeam_channel::bounded(1);
    let released = release.clone();
    srv.remote()
        .run_on(ShardId(3), move |ctx, _| {
            assert_eq!(ctx.shard(), ShardId(3));
            let name = std::thread::current().name().unwrap_or("").to_owned();
            tx.send((name, !released.load(SeqCst))).unwrap();
        })
        .unwrap();
    // mail that posts itself again keeps thread 0 busy (its polls return at once), as traffic
    // on its shards would: only a busy thread helps
    let stop = Arc::new(AtomicBool::new(false));
    busy(srv.remote(), stop.clone());
    let answer = rx.recv_timeout(patience).ok();
    stop.store(true, SeqCst);
    release.store(true, SeqCst);
    answer.unwrap_or_else(|| rx.recv_timeout(TIMEOUT).expect("shard 3 never ran"))
}

#[test]
fn a_running_thread_gives_a_waiting_shard_its_turn() {
    let srv = four_on_two(true);
    let (thread, before_release) = ask_shard_3(&srv, TIMEOUT);
    assert!(before_release, "shard 3 waited for its own thread");
    assert_eq!(thread, "quicshard-0-1", "shard 3 ran on thread 0");
    assert!(srv.stats()[3].helped_turns >= 1, "{:?}", srv.stats()[3]);
    assert_eq!(srv.stats()[2].helped_turns, 0);
}

#[test]
fn without_turn_sharing_a_shard_waits_for_its_own_thread() {
    let srv = four_on_two(false);
    let (thread, before_release) = ask_shard_3(&srv, Duration::from_millis(300));
    assert!(!before_release, "shard 3 ran while its thread was blocked");
    assert_eq!(thread, "quicshard-2-3");
    assert!(srv.stats().iter().all(|s| s.helped_turns == 0));
}

#[test]
fn a_long_turn_is_a_stall_only_when_it_used_the_cpu() {
    let srv = Engine::builder(|_| Server::default())
        .shards(2)
        .threads(2)
        .listen("127.0.0.1:0".parse().unwrap())
        .turn_sharing(false)
        .start()
        .unwrap();
    let (tx, rx) = crossbeam_channel::bounded(2);
    let spin = tx.clone();
    // shard 0 computes for 80 ms: a stall of the engine's own
    srv.remote()
        .run_on(ShardId(0), move |_, _| {
            let start = Instant::now();
            let mut x = 0u64;
            while start.elapsed() < Duration::from_millis(80) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            spin.send(x).unwrap();
        })
        .unwrap();
    // shard 1's thread is off the CPU for 80 ms (as a descheduled thread would be)
    srv.remote()
        .run_on(ShardId(1), move |_, _| {
            std::thread::sleep(Duration::from_millis(80));
            tx.send(0).unwrap();
        })
        .unwrap();
    for _ in 0..2 {
        rx.recv_timeout(TIMEOUT).expect("a shard did not run");
    }
    wait_for("both long turns accounted", TIMEOUT, || {
        let s = srv.stats();
        (0..2).all(|i| s[i].stalled_turns + s[i].descheduled_turns >= 1)
    });
    let s = srv.stats();
    // the sleeping turn used no CPU: descheduled, whatever the machine's load
    assert_eq!(
        (s[1].stalled_turns, s[1].descheduled_turns),
        (0, 1),
        "{:?}",
        s[1]
    );
    assert!(
        s[1].cpu_micros < 40_000 && s[1].busy_micros >= 80_000,
        "{:?}",
        s[1]
    );
    // the computing turn is a stall when the thread had the CPU for half of it (on a quiet
    // machine, always; a loaded one may take the CPU away, and then it is descheduled)
    assert_eq!(s[0].stalled_turns + s[0].descheduled_turns, 1, "{:?}", s[0]);
    // (the counters also hold the shard's short turns: a margin of a tenth either way)
    let share = s[0].cpu_micros as f64 / s[0].busy_micros as f64;
    if s[0].stalled_turns == 1 {
        assert!(share >= 0.45, "{:?}", s[0]);
    } else {
        assert!(share < 0.55, "{:?}", s[0]);
    }
}

/// `n` client Initials (one per client, each from its own address), made by quinn-proto
/// clients that never hear back.
fn initials(n: usize, server: std::net::SocketAddr) -> Vec<(Vec<u8>, std::net::SocketAddr)> {
    use quicshard::quinn_proto::{ClientConfig, Endpoint, EndpointConfig};
    let cfg: ClientConfig = quicshard::tls::insecure_client_config(&[]).unwrap();
    let now = Instant::now();
    (0..n)
        .map(|i| {
            let mut ep = Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None);
            let (_, mut conn) = ep.connect(now, cfg.clone(), server, "localhost").unwrap();
            let mut buf = Vec::new();
            let t = conn.poll_transmit(now, 1, &mut buf).expect("an Initial");
            buf.truncate(t.size);
            let from = format!("127.0.{}.{}:{}", 1 + i / 250, 1 + i % 250, 40_000 + i);
            (buf, from.parse().unwrap())
        })
        .collect()
}

#[test]
fn a_burst_of_initials_is_admitted_per_turn_queued_then_refused() {
    let srv = Engine::builder(|_| Server::default())
        .shards(1)
        .listen("127.0.0.1:0".parse().unwrap())
        .admission(quicshard::Admission {
            per_turn: 2,
            queue: 3,
        })
        .start()
        .unwrap();
    // hold the shard in a turn while 10 Initials reach its mailbox: the turn that goes on
    // after the hold takes all of them at once
    let release = hold(&srv, 0, "quicshard-0");
    let mut inj = srv.injector();
    for (d, from) in initials(10, srv.local_addr()) {
        inj.inject(&d, from, None).unwrap();
    }
    release.store(true, SeqCst);
    wait_for("every Initial answered", TIMEOUT, || {
        let s = srv.stats()[0];
        s.connections_accepted + s.handshakes_refused == 10 && s.handshakes_queued == 0
    });
    let s = srv.stats()[0];
    // 2 accepted in the burst's turn, 3 waited for later turns, 5 found the queue full
    assert_eq!(s.handshakes_refused, 5, "{s:?}");
    assert_eq!(s.handshakes_deferred, 3, "{s:?}");
    assert_eq!(s.connections_accepted, 5, "{s:?}");
}
