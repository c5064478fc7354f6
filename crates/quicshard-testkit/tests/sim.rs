//! The engine in the deterministic simulator: handshakes and transfers under each impairment,
//! NAT rebinding and migration across shards, Retry across shards, 0-RTT replay, 1,000
//! connections. Every scenario runs twice and must give the same digest: a failure here is
//! replayed exactly by its seed (`examples/simulate.rs --trace` prints what happened).

use std::time::Duration;

use quicshard::stats::ShardStats;
use quicshard_impair::Params;
use quicshard_testkit::{simulate, Report, SimConfig, Steering};

/// Runs `cfg` twice; both runs must agree on every datagram, and every transfer must complete.
fn run(cfg: SimConfig) -> Report {
    let a = simulate(cfg.clone()).expect("set-up");
    let b = simulate(cfg).expect("set-up");
    assert_eq!(a.digest, b.digest, "a seed must replay the same datagrams");
    assert_eq!(a.delivered, b.delivered);
    assert!(
        a.failures.is_empty(),
        "failures: {:#?}\npaths: {:?}",
        a.failures,
        a.paths
    );
    assert_eq!(a.completed, a.planned);
    a
}

fn impaired(seed: u64, impair: Params) -> SimConfig {
    SimConfig {
        seed,
        shards: 4,
        clients: 40,
        download: 60_000,
        impair: Params {
            delay: Duration::from_millis(10),
            ..impair
        },
        ..SimConfig::default()
    }
}

fn total(stats: &[ShardStats], f: impl Fn(&ShardStats) -> u64) -> u64 {
    stats.iter().map(f).sum()
}

#[test]
fn the_same_seed_gives_the_same_digest_and_another_seed_another() {
    let cfg = |seed| SimConfig {
        seed,
        clients: 50,
        impair: Params {
            loss: 0.05,
            delay: Duration::from_millis(10),
            ..Params::default()
        },
        ..SimConfig::default()
    };
    let wall = std::time::Instant::now();
    let a = run(cfg(7));
    // two runs of several virtual seconds each (loss makes the tail wait for timeouts)
    assert!(
        a.virtual_time > wall.elapsed(),
        "virtual time {:?} runs ahead of the wall's {:?}",
        a.virtual_time,
        wall.elapsed()
    );
    let c = run(cfg(8));
    assert_ne!(a.digest, c.digest);
    assert!(a.paths[0].dropped_loss > 0 && a.paths[1].dropped_loss > 0);
}

#[test]
fn transfers_complete_under_loss() {
    let r = run(impaired(
        11,
        Params {
            loss: 0.1,
            ..Params::default()
        },
    ));
    assert!(r.paths[0].dropped_loss > 0 && r.paths[1].dropped_loss > 0);
}

#[test]
fn transfers_complete_under_delay_and_jitter() {
    let r = run(impaired(
        12,
        Params {
            delay: Duration::from_millis(80),
            jitter: Duration::from_millis(30),
            ..Params::default()
        },
    ));
    assert!(r.virtual_time > Duration::from_millis(4 * 80));
}

#[test]
fn transfers_complete_under_reordering() {
    let r = run(impaired(
        13,
        Params {
            reorder: 0.2,
            reorder_gap: Duration::from_millis(15),
            ..Params::default()
        },
    ));
    assert!(r.paths[0].reordered > 0 && r.paths[1].reordered > 0);
}

#[test]
fn transfers_complete_under_duplication() {
    let r = run(impaired(
        14,
        Params {
            duplicate: 0.2,
            ..Params::default()
        },
    ));
    assert!(r.paths[0].duplicated > 0 && r.paths[1].duplicated > 0);
}

#[test]
fn transfers_complete_under_corruption() {
    let r = run(impaired(
        15,
        Params {
            corrupt: 0.05,
            ..Params::default()
        },
    ));
    assert!(r.paths[0].corrupted > 0 && r.paths[1].corrupted > 0);
}

#[test]
fn transfers_complete_through_a_rate_limited_queue() {
    let r = run(impaired(
        16,
        Params {
            rate_bps: Some(20_000_000),
            queue: 30,
            ..Params::default()
        },
    ));
    assert!(r.paths[1].forwarded > 40 * 40, "{:?}", r.paths[1]);
}

/// A rebinding mid-transfer: with the steering program, the short headers from the new address
/// still reach their shard directly; the server validates the new path and the transfer ends.
#[test]
fn nat_rebinding_mid_transfer_keeps_each_connection_on_its_shard() {
    let r = run(SimConfig {
        seed: 21,
        clients: 30,
        download: 2_000_000,
        rebind_at: Some(Duration::from_millis(150)),
        impair: Params {
            delay: Duration::from_millis(10),
            ..Params::default()
        },
        ..SimConfig::default()
    });
    assert!(r.unroutable > 0, "datagrams to the old addresses were sent");
    assert_eq!(total(&r.shards, |s| s.handoffs_in_short), 0);
}

/// The same rebinding where the kernel steers by address (no program): the new address lands
/// on other shards, which hand every datagram to the connection's shard.
#[test]
fn nat_rebinding_migrates_across_shards_by_handoff() {
    let r = run(SimConfig {
        seed: 22,
        clients: 30,
        download: 2_000_000,
        steering: Steering::Hash,
        rebind_at: Some(Duration::from_millis(150)),
        impair: Params {
            delay: Duration::from_millis(10),
            ..Params::default()
        },
        ..SimConfig::default()
    });
    assert!(r.unroutable > 0);
    assert!(total(&r.shards, |s| s.handoffs_in_short) > 0);
}

/// Every connection gets a Retry while the kernel steers by address: both of a client's
/// Initials land on whatever shard its address hashes to and are handed off, the first to the
/// shard its DCID names, the second to the shard the Retry's source CID names; the token
/// validates there.
#[test]
fn retry_works_when_initials_land_on_other_shards() {
    let r = run(SimConfig {
        seed: 31,
        clients: 60,
        steering: Steering::Hash,
        retry: true,
        impair: Params {
            delay: Duration::from_millis(5),
            loss: 0.02,
            ..Params::default()
        },
        ..SimConfig::default()
    });
    assert!(total(&r.shards, |s| s.retry_sent) >= 60);
    let long_handoffs = total(&r.shards, |s| s.handoffs_in - s.handoffs_in_short);
    assert!(long_handoffs > 0, "Initials were handed off");
}

/// Each client connects twice; the second connection sends its request as 0-RTT, and its first
/// flight is replayed from another address (landing on any shard). The single-use ticket store
/// accepts each ticket's early data once: the replays fall back to full handshakes.
#[test]
fn a_replayed_zero_rtt_flight_is_not_accepted_twice() {
    let clients = 20;
    let r = run(SimConfig {
        seed: 41,
        clients,
        connections_per_client: 2,
        steering: Steering::Hash,
        replay_zero_rtt: true,
        impair: Params {
            delay: Duration::from_millis(10),
            ..Params::default()
        },
        ..SimConfig::default()
    });
    let accepted = total(&r.shards, |s| s.zero_rtt_accepted);
    assert_eq!(
        r.zero_rtt_accepted, clients as u64,
        "every resumption used 0-RTT"
    );
    assert_eq!(accepted, clients as u64, "no replay was accepted");
    assert!(total(&r.shards, |s| s.tickets_refused) >= clients as u64);
}

#[test]
fn a_thousand_connections_complete_with_loss() {
    let r = run(SimConfig {
        seed: 51,
        clients: 1000,
        download: 10_000,
        impair: Params {
            loss: 0.02,
            delay: Duration::from_millis(20),
            ..Params::default()
        },
        ..SimConfig::default()
    });
    assert_eq!(total(&r.shards, |s| s.connections_accepted), 1000);
    // every shard took part
    assert!(r.shards.iter().all(|s| s.connections_accepted > 100));
}
