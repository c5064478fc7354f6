//! `quicshard relay` as a process: publishers and subscribers over loopback (every message, in
//! order, on the right topic only), a subscriber that does not read reset with LAGGED, the
//! per-shard counters and exit 0 on SIGTERM, and one-line errors for bad flags. The clients are `crates/quicshard-relay`'s.

mod common;

use quicshard_relay::{client, protocol};

use quicshard::HandleEngine;
use std::process::Output;
use std::time::{Duration, Instant};

use client::{payload, Checker, Publisher, Subscription};
use common::{qs, Proc};

/// Bound of every client call.
const TIMEOUT: Duration = Duration::from_secs(20);
/// Messages per publisher, sent in two bursts.
const MESSAGES: u32 = 60;
const PAYLOAD: usize = 100;
/// (topic, publishers, subscribers).
const TOPICS: [(&str, u16, usize); 2] = [("alpha", 2, 3), ("beta", 1, 2)];

fn clients() -> HandleEngine {
    let tls = quicshard::tls::insecure_client_config(&[protocol::ALPN]).unwrap();
    HandleEngine::builder()
        .shards(2)
        .client_config(tls)
        .start()
        .unwrap()
}

#[test]
fn publishers_reach_every_subscriber_in_order_and_sigterm_exits_0() {
    let relay = Proc::start(&["relay", "--listen", "127.0.0.1:0", "--shards", "2"]);
    let addr = format!("127.0.0.1:{}", relay.port).parse().unwrap();
    let engine = clients();
    let deadline = Instant::now() + TIMEOUT;
    let connect = || {
        engine
            .connect_until(addr, "localhost", Some(deadline))
            .unwrap()
    };

    // every subscriber is registered (OK) before the first publish
    let mut subs = Vec::new();
    for (t, &(topic, _, n)) in TOPICS.iter().enumerate() {
        for _ in 0..n {
            let conn = connect();
            let sub = Subscription::open(&conn, topic, deadline).unwrap();
            subs.push((t, conn, sub));
        }
    }
    let mut pubs = Vec::new();
    let mut publisher_id = 0u16;
    for (t, &(topic, n, _)) in TOPICS.iter().enumerate() {
        for _ in 0..n {
            let conn = connect();
            let p = Publisher::open(&conn, topic, deadline).unwrap();
            pubs.push((t, publisher_id, conn, p));
            publisher_id += 1;
        }
    }
    for half in [0..MESSAGES / 2, MESSAGES / 2..MESSAGES] {
        for (_, id, _, p) in &mut pubs {
            let msgs: Vec<_> = half.clone().map(|n| payload(*id, n, PAYLOAD)).collect();
            p.send(&msgs, deadline).unwrap();
        }
    }
    for (_, _, _conn, p) in pubs.drain(..) {
        p.finish(deadline).unwrap(); // the relay took every message
    }

    for (t, _conn, sub) in &mut subs {
        let mut checker = Checker::default();
        let want = u64::from(TOPICS[*t].1) * u64::from(MESSAGES);
        while checker.received < want {
            let (seq, p) = sub.next(deadline).unwrap().expect("stream open");
            checker.check(seq, &p).unwrap();
        }
        // each of this topic's publishers, all of its messages; none of the other topic's
        let first: u16 = TOPICS[..*t].iter().map(|x| x.1).sum();
        for id in 0..publisher_id {
            let mine = (first..first + TOPICS[*t].1).contains(&id);
            assert_eq!(
                checker.from(id),
                if mine { MESSAGES } else { 0 },
                "publisher {id}"
            );
        }
    }
    drop(subs);
    engine.shutdown(Duration::from_secs(1));

    let out = relay.stop();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "exit {:?}: {err}", out.status);
    let counter = |name| counter(&err, name);
    let published: u64 = TOPICS.iter().map(|t| u64::from(t.1)).sum::<u64>() * u64::from(MESSAGES);
    let delivered: u64 = TOPICS
        .iter()
        .map(|t| t.2 as u64 * u64::from(t.1) * u64::from(MESSAGES))
        .sum();
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("relay shard "))
            .count(),
        2,
        "{err}"
    );
    assert_eq!(counter("published"), published, "{err}");
    assert_eq!(counter("delivered"), delivered, "{err}");
    assert_eq!(counter("subscribers"), 5, "{err}");
    assert_eq!(counter("publishers"), 3, "{err}");
    assert_eq!(
        counter("lagged") + counter("refused") + counter("post_failures"),
        0,
        "{err}"
    );
    assert_eq!(counter("wakeups_posted"), counter("wakeups_run"), "{err}");
}

/// The counter `name` summed over the `relay shard N: k=v ...` lines of `stderr`.
fn counter(stderr: &str, name: &str) -> u64 {
    stderr
        .lines()
        .filter(|l| l.starts_with("relay shard "))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .map(|v| v.parse::<u64>().unwrap())
        .sum()
}

#[test]
fn a_subscriber_that_does_not_read_is_reset_with_lagged() {
    let relay = Proc::start(&["relay", "--listen", "127.0.0.1:0", "--log-messages", "8"]);
    let addr = format!("127.0.0.1:{}", relay.port).parse().unwrap();
    // small client buffers: what the subscriber does not read stays in the relay's log
    let t = quicshard::quinn_proto::TransportConfig::default();
    let memory = quicshard::MemoryBudget {
        stream_receive_window: 16 * 1024,
        ..quicshard::MemoryBudget::default()
    };
    let engine = HandleEngine::builder_with(quicshard::handle::HandleConfig {
        pipe_capacity: 16 * 1024,
    })
    .shards(1)
    .client_config(quicshard::tls::insecure_client_config(&[protocol::ALPN]).unwrap())
    .transport(t)
    .memory(memory)
    .start()
    .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let connect = || {
        engine
            .connect_until(addr, "localhost", Some(deadline))
            .unwrap()
    };
    let sub_conn = connect();
    let mut sub = Subscription::open(&sub_conn, "slow", deadline).unwrap();
    let pub_conn = connect();
    let mut p = Publisher::open(&pub_conn, "slow", deadline).unwrap();
    // 400 KB: far beyond the client's buffers, the relay's send window and the 8-message log
    let msgs: Vec<_> = (0..400).map(|n| payload(0, n, 1000)).collect();
    p.send(&msgs, deadline).unwrap();
    p.finish(deadline).unwrap();
    let mut checker = Checker::default();
    let end = loop {
        match sub.next(deadline) {
            Ok(Some((seq, m))) => checker.check(seq, &m).unwrap(),
            other => break other,
        }
    };
    assert!(matches!(end, Err(client::ClientError::Lagged)), "{end:?}");
    assert!(checker.received < 400, "read {} of 400", checker.received);
    drop((sub, sub_conn, pub_conn));
    engine.shutdown(Duration::from_secs(1));
    let out = relay.stop();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    assert_eq!(counter(&err, "lagged"), 1, "{err}");
    assert_eq!(counter(&err, "published"), 400, "{err}");
}

fn one_line_error(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(err.trim_end().lines().count(), 1, "stderr: {err}");
    err
}

#[test]
fn bad_flags_are_one_line_and_exit_2() {
    let cases: [(&[&str], &str); 6] = [
        (&["relay", "--bogus"], "--bogus"),
        (&["relay", "--listen", "nonsense"], "nonsense"),
        (&["relay", "--shards", "0"], "--shards"),
        (&["relay", "--log-messages", "0"], "--log-messages"),
        (&["relay", "--cert", "/nonexistent.pem"], "--key"),
        (
            &[
                "relay",
                "--listen",
                "127.0.0.1:0",
                "--cert",
                "/nonexistent.pem",
                "--key",
                "/nonexistent.pem",
            ],
            "--cert",
        ),
    ];
    for (args, needle) in cases {
        let o = qs().args(args).output().unwrap();
        let err = one_line_error(&o);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
