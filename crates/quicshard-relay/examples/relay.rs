//! The pub/sub relay of this crate on the callback API (`src/server.rs`, protocol in `src/protocol.rs`),
//! checked end to end in one process: a 4-shard relay, 200 subscribers and 10 publishers on two
//! topics over loopback, one subscriber that reads deliberately slowly. Exits 0 only if
//!
//! - every other subscriber received every message of its topic, in order, intact;
//! - the slow subscriber fell off the end of the bounded log and was told (`LAGGED`), while the
//!   others went on (they never wait for it);
//! - the logs stayed within their bound and the process's peak RSS under [`MAX_RSS_KIB`];
//! - the counters show the coalescing: in the network phase far fewer wake-ups per shard than
//!   publishes, and in the burst phase (1,000 publishes on shard 0 while the other shards are
//!   held busy) exactly one wake-up per other shard.
//!
//! Publishers send in rounds of bursts; a round starts once every fast subscriber has the
//! previous one, so a fast subscriber is never more than a round (< the log) behind, however
//! slow the machine. `quicshard relay` serves the same relay (`crates/cli/src/relay.rs`).
//!
//! `cargo run --release -p quicshard-relay --example relay`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use quicshard::handle::{Connection, HandleConfig};
use quicshard::quinn_proto::TransportConfig;
use quicshard::HandleEngine;
use quicshard::ShardId;

use quicshard_relay::client::{payload, Checker, ClientError, Publisher, Subscription};
use quicshard_relay::protocol::{ALPN, DELIVERY_HEADER};
use quicshard_relay::server::{self, Shared};
use quicshard_relay::topic::LogLimits;

const SHARDS: usize = 4;
const SUBSCRIBERS: usize = 200;
const PUBLISHERS: usize = 10;
/// Publisher `p` and subscriber `s` use topic `p % 2` / `s % 2`.
const TOPICS: [&str; 2] = ["news", "sports"];
/// Rounds of the network phase; each publisher sends one burst per round.
const ROUNDS: u32 = 4;
/// Messages per publisher per round.
const PER_ROUND: u32 = 100;
/// Payload bytes of every message.
const PAYLOAD: usize = 256;
/// Messages published on shard 0 in the burst phase (to topic 0).
const BURST: u32 = 1000;
/// The publisher number the burst's messages carry.
const BURST_PUBLISHER: u16 = PUBLISHERS as u16;
/// Messages each topic's log keeps: more than one round of a topic (500) and the burst.
const LOG_MESSAGES: usize = 1024;
/// Bytes each topic's log keeps.
const LOG_BYTES: usize = 4 << 20;
/// The slow subscriber (on topic 0) reads one message per pause until the fast ones are done.
const SLOW: usize = 0;
const SLOW_READ_PAUSE: Duration = Duration::from_millis(50);
/// Client pipes and stream receive window: small, so the slow subscriber's backlog outside the
/// relay's log is small (about 16 + 16 + 32 KiB with the relay's send window).
const CLIENT_BUFFER: usize = 16 * 1024;
/// Bound of every wait.
const STEP_TIMEOUT: Duration = Duration::from_secs(45);
/// Peak RSS allowed for the whole process (relay, 210 client connections and their threads).
const MAX_RSS_KIB: u64 = 256 * 1024;

/// What a subscriber thread reports.
enum Event {
    Ready,
    /// A fast subscriber has every message of the rounds so far.
    Progress,
    Done(usize, Result<(u64, bool), String>),
}

fn topic_of(i: usize) -> usize {
    i % TOPICS.len()
}

fn publishers_of(topic: usize) -> u32 {
    (0..PUBLISHERS).filter(|&p| topic_of(p) == topic).count() as u32
}

/// Messages a subscriber of `topic` receives in all.
fn expected(topic: usize) -> u64 {
    let network = u64::from(publishers_of(topic) * ROUNDS * PER_ROUND);
    network + if topic == 0 { u64::from(BURST) } else { 0 }
}

fn subscriber(id: usize, conn: Connection, slow: Option<Arc<AtomicBool>>, tx: Sender<Event>) {
    let deadline = Instant::now() + 4 * STEP_TIMEOUT;
    let topic = topic_of(id);
    let run = || -> Result<(u64, bool), String> {
        let mut sub =
            Subscription::open(&conn, TOPICS[topic], deadline).map_err(|e| e.to_string())?;
        let _ = tx.send(Event::Ready);
        let round = u64::from(publishers_of(topic) * PER_ROUND);
        let mut checker = Checker::default();
        while checker.received < expected(topic) {
            if slow
                .as_ref()
                .is_some_and(|fast_done| !fast_done.load(Ordering::Acquire))
            {
                std::thread::sleep(SLOW_READ_PAUSE); // deliberately slow, not a synchronisation
            }
            match sub.next(deadline) {
                Ok(Some((seq, p))) => checker.check(seq, &p)?,
                Ok(None) => return Err(format!("stream ended after {}", checker.received)),
                Err(ClientError::Lagged) => return Ok((checker.received, true)),
                Err(e) => return Err(format!("after {}: {e}", checker.received)),
            }
            let n = checker.received;
            if slow.is_none() && n % round == 0 && n <= round * u64::from(ROUNDS) {
                let _ = tx.send(Event::Progress);
            }
        }
        if checker.from(BURST_PUBLISHER) != if topic == 0 { BURST } else { 0 } {
            return Err("burst messages missing".into());
        }
        Ok((checker.received, false))
    };
    let r = run();
    let _ = tx.send(Event::Done(id, r));
}

fn publisher(id: usize, conn: Connection, go: Receiver<u32>) -> Result<(), String> {
    let deadline = Instant::now() + 4 * STEP_TIMEOUT;
    let mut p =
        Publisher::open(&conn, TOPICS[topic_of(id)], deadline).map_err(|e| e.to_string())?;
    for _ in 0..ROUNDS {
        let round = go.recv_timeout(STEP_TIMEOUT).map_err(|e| e.to_string())?;
        let msgs: Vec<_> = (round * PER_ROUND..(round + 1) * PER_ROUND)
            .map(|n| payload(id as u16, n, PAYLOAD))
            .collect();
        p.send(&msgs, deadline).map_err(|e| e.to_string())?;
    }
    p.finish(deadline).map_err(|e| e.to_string())
}

/// The subscribers' events and what their ends reported so far.
struct Events {
    rx: Receiver<Event>,
    /// The slow subscriber's end: (messages read in order, lagged).
    slow: Option<(u64, bool)>,
    /// Fast subscribers that received everything, and the messages they read.
    fast: usize,
    fast_received: u64,
}

impl Events {
    /// Records a subscriber's end; a fast subscriber that did not get everything is a failure.
    fn done(&mut self, id: usize, r: Result<(u64, bool), String>) -> Result<(), String> {
        let (received, lagged) = r.map_err(|e| format!("subscriber {id}: {e}"))?;
        if id == SLOW {
            self.slow = Some((received, lagged));
        } else if lagged || received != expected(topic_of(id)) {
            return Err(format!(
                "subscriber {id}: {received} messages, lagged {lagged}"
            ));
        } else {
            self.fast += 1;
            self.fast_received += received;
        }
        Ok(())
    }

    /// Waits for `n` events matching `want`, recording ends on the way.
    fn wait(&mut self, n: usize, what: &str, want: fn(&Event) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        let mut got = 0;
        while got < n {
            let ev = self
                .rx
                .recv_deadline(deadline)
                .map_err(|_| format!("{what}: {got} of {n} before the deadline"))?;
            got += usize::from(want(&ev));
            if let Event::Done(id, r) = ev {
                self.done(id, r)?;
            }
        }
        Ok(())
    }
}

/// Per shard: (wake-ups posted, coalesced, run).
fn wakeups(shared: &Shared) -> Vec<(u64, u64, u64)> {
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let c = shared.counters.iter();
    c.map(|c| {
        (
            g(&c.wakeups_posted),
            g(&c.wakeups_coalesced),
            g(&c.wakeups_run),
        )
    })
    .collect()
}

fn sum(shared: &Shared, f: fn(&server::ShardCounters) -> &std::sync::atomic::AtomicU64) -> u64 {
    shared
        .counters
        .iter()
        .map(|c| f(c).load(Ordering::Relaxed))
        .sum()
}

/// Runs a no-op on every shard and waits for it: every wake-up posted before has run.
fn barrier(remote: &quicshard::Remote<server::Relay>) -> Result<(), String> {
    let (tx, rx) = crossbeam_channel::bounded(SHARDS);
    for s in 0..SHARDS {
        let tx = tx.clone();
        remote
            .run_on(ShardId(s), move |_, _| {
                let _ = tx.send(());
            })
            .map_err(|e| e.to_string())?;
    }
    (0..SHARDS).try_for_each(|_| rx.recv_timeout(STEP_TIMEOUT).map_err(|e| e.to_string()))
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or("");
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() -> Result<(), String> {
    let started = Instant::now();
    let limits = LogLimits {
        max_messages: LOG_MESSAGES,
        max_bytes: LOG_BYTES,
        max_topics: 16,
    };
    let shared = Shared::new(SHARDS, limits);
    // a thread per shard even on fewer cores: the burst phase below holds shards 1.. busy in
    // blocking closures, which in a shard group would stall shard 0 too
    let relay = server::builder(&shared)
        .shards(SHARDS)
        .threads(SHARDS)
        .start()
        .map_err(|e| e.to_string())?;
    shared.set_remote(relay.remote());
    let addr = relay.local_addr();

    let tls = quicshard::tls::client_config_trusting(relay.certificate().unwrap_or(&[]), &[ALPN])
        .map_err(|e| e.to_string())?;
    // the budget's windows apply to `connect` once a transport is given
    let memory = quicshard::MemoryBudget {
        stream_receive_window: CLIENT_BUFFER as u64,
        ..quicshard::MemoryBudget::default()
    };
    let clients: Arc<HandleEngine> = Arc::new(
        HandleEngine::builder_with(HandleConfig {
            pipe_capacity: CLIENT_BUFFER,
        })
        .shards(2)
        .client_config(tls)
        .transport(TransportConfig::default())
        .memory(memory)
        .start()
        .map_err(|e| e.to_string())?,
    );
    let connect = move |clients: &HandleEngine| {
        clients.connect_until(addr, "localhost", Some(Instant::now() + STEP_TIMEOUT))
    };

    // subscribers first: each is registered (OK) before anything is published
    let (tx, events) = crossbeam_channel::unbounded();
    let fast_done = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for id in 0..SUBSCRIBERS {
        let (tx, clients) = (tx.clone(), clients.clone());
        let slow = (id == SLOW).then(|| fast_done.clone());
        threads.push(
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || match connect(&clients) {
                    Ok(conn) => subscriber(id, conn, slow, tx),
                    Err(e) => drop(tx.send(Event::Done(id, Err(format!("connect: {e}"))))),
                })
                .map_err(|e| e.to_string())?,
        );
    }
    let mut events = Events {
        rx: events,
        slow: None,
        fast: 0,
        fast_received: 0,
    };
    events.wait(SUBSCRIBERS, "subscribed", |e| matches!(e, Event::Ready))?;

    // network phase: ROUNDS bursts per publisher, each round once the fast subscribers have the last
    let mut gos = Vec::new();
    let mut pubs = Vec::new();
    for id in 0..PUBLISHERS {
        let (go_tx, go_rx) = crossbeam_channel::bounded(ROUNDS as usize);
        gos.push(go_tx);
        let clients = clients.clone();
        pubs.push(std::thread::spawn(move || {
            let conn = connect(&clients).map_err(|e| format!("connect: {e}"))?;
            publisher(id, conn, go_rx)
        }));
    }
    for round in 0..ROUNDS {
        for g in &gos {
            g.send(round).map_err(|_| "a publisher is gone")?;
        }
        let what = format!("round {round}");
        events.wait(SUBSCRIBERS - 1, &what, |e| matches!(e, Event::Progress))?;
    }
    for (id, p) in pubs.into_iter().enumerate() {
        p.join()
            .map_err(|_| "publisher panicked")?
            .map_err(|e| format!("publisher {id}: {e}"))?;
    }
    let network = u64::from(ROUNDS * PER_ROUND) * PUBLISHERS as u64;
    let published = sum(&shared, |c| &c.published);
    if published != network {
        return Err(format!(
            "relay counted {published} publishes, {network} sent"
        ));
    }
    barrier(&relay.remote())?;
    let after_network = wakeups(&shared);
    for (s, (posted, coalesced, run)) in after_network.iter().enumerate() {
        println!("network phase: shard {s}: {network} publishes, {posted} wake-ups posted, {coalesced} coalesced, {run} run");
        // a shard's wake-up reads everything published before it: one per several publishes
        if *posted * 4 > network {
            return Err(format!(
                "shard {s}: {posted} wake-ups for {network} publishes: not coalesced"
            ));
        }
    }

    // burst phase: hold shards 1.. busy, publish BURST messages one by one on shard 0
    let remote = relay.remote();
    let (held_tx, held) = crossbeam_channel::bounded(SHARDS);
    let (release, released) = crossbeam_channel::bounded::<()>(0);
    for s in 1..SHARDS {
        let (held_tx, released) = (held_tx.clone(), released.clone());
        remote
            .run_on(ShardId(s), move |_, _| {
                let _ = held_tx.send(());
                let _ = released.recv_timeout(STEP_TIMEOUT); // until `release` is dropped
            })
            .map_err(|e| e.to_string())?;
    }
    for _ in 1..SHARDS {
        held.recv_timeout(STEP_TIMEOUT)
            .map_err(|e| format!("holding shards: {e}"))?;
    }
    let topic = shared.topics.get(TOPICS[0]).ok_or("no topic 0")?;
    let (done_tx, done) = crossbeam_channel::bounded(1);
    remote
        .run_on(ShardId(0), move |ctx, relay| {
            for n in 0..BURST {
                relay.publish(ctx, &topic, &[payload(BURST_PUBLISHER, n, PAYLOAD)]);
            }
            let _ = done_tx.send(());
        })
        .map_err(|e| e.to_string())?;
    done.recv_timeout(STEP_TIMEOUT)
        .map_err(|e| format!("burst: {e}"))?;
    let after_burst = wakeups(&shared);
    drop(release);
    for s in 1..SHARDS {
        let posted = after_burst[s].0 - after_network[s].0;
        let coalesced = after_burst[s].1 - after_network[s].1;
        println!("burst phase: shard {s}: {BURST} publishes, {posted} wake-up posted, {coalesced} coalesced");
        if posted != 1 || coalesced != u64::from(BURST) - 1 {
            return Err(format!(
                "shard {s}: burst cost {posted} wake-ups ({coalesced} coalesced)"
            ));
        }
    }

    // every fast subscriber has everything; then the slow one may read on to its LAGGED
    let fast_left = SUBSCRIBERS - 1 - events.fast;
    events.wait(
        fast_left,
        "fast subscribers done",
        |e| matches!(e, Event::Done(id, _) if *id != SLOW),
    )?;
    fast_done.store(true, Ordering::Release);
    if events.slow.is_none() {
        events.wait(1, "slow subscriber done", |e| {
            matches!(e, Event::Done(SLOW, _))
        })?;
    }
    for t in threads {
        t.join().map_err(|_| "subscriber panicked")?;
    }
    let (slow_received, slow_lagged) = events.slow.ok_or("no slow report")?;
    let fast_received = events.fast_received;
    println!(
        "slow subscriber: read {slow_received} of {} in order, then lagged: {slow_lagged}",
        expected(0)
    );
    if !slow_lagged {
        return Err("the slow subscriber did not fall off the log".into());
    }

    // counters and memory
    barrier(&relay.remote())?;
    for (s, c) in shared.counters.iter().enumerate() {
        let f = c.fields();
        let line: Vec<_> = f.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("shard {s}: {}", line.join(" "));
        let get = |name| f.iter().find(|(k, _)| *k == name).map_or(0, |(_, v)| *v);
        if get("subscribers") == 0 {
            return Err(format!(
                "shard {s} has no subscriber: connections not spread"
            ));
        }
        if get("wakeups_posted") != get("wakeups_run") {
            return Err(format!("shard {s}: wake-ups posted and run differ"));
        }
    }
    let delivered = sum(&shared, |c| &c.delivered);
    let checks = [
        (
            "subscribers",
            sum(&shared, |c| &c.subscribers),
            SUBSCRIBERS as u64,
        ),
        (
            "publishers",
            sum(&shared, |c| &c.publishers),
            PUBLISHERS as u64,
        ),
        (
            "published",
            sum(&shared, |c| &c.published),
            network + u64::from(BURST),
        ),
        ("lagged", sum(&shared, |c| &c.lagged), 1),
        ("post_failures", sum(&shared, |c| &c.post_failures), 0),
        ("refused", sum(&shared, |c| &c.refused), 0),
    ];
    for (name, got, want) in checks {
        if got != want {
            return Err(format!("counter {name}: {got}, expected {want}"));
        }
    }
    if delivered < fast_received || delivered > fast_received + expected(0) {
        return Err(format!(
            "delivered {delivered}, fast subscribers read {fast_received}"
        ));
    }
    for name in TOPICS {
        let (msgs, bytes) = shared.topics.get(name).ok_or("topic")?.max_seen();
        println!("log {name}: at most {msgs} messages, {bytes} bytes (bound {LOG_MESSAGES})");
        if msgs > LOG_MESSAGES as u64 || bytes > (LOG_MESSAGES * (DELIVERY_HEADER + PAYLOAD)) as u64
        {
            return Err(format!("log {name} exceeded its bound"));
        }
    }
    let rss = peak_rss_kib();
    println!(
        "peak RSS {} MiB (bound {} MiB)",
        rss / 1024,
        MAX_RSS_KIB / 1024
    );
    if rss > MAX_RSS_KIB {
        return Err(format!("peak RSS {rss} KiB over {MAX_RSS_KIB} KiB"));
    }
    drop(Arc::try_unwrap(clients).map(|c| c.shutdown(Duration::from_secs(2))));
    relay.shutdown(Duration::from_secs(2));
    println!(
        "relay: {SUBSCRIBERS} subscribers x {PUBLISHERS} publishers on {SHARDS} shards: {fast_received} messages delivered in order to the fast subscribers, verified in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
