//! The impairment core on a virtual clock: every instant is `t0 + offset`, nothing sleeps.

use super::*;

const MS: Duration = Duration::from_millis(1);

/// A datagram numbered `i` (its first 8 bytes), `len` bytes long.
fn dgram(i: u64, len: usize) -> Vec<u8> {
    let mut d = vec![0u8; len.max(8)];
    d[..8].copy_from_slice(&i.to_be_bytes());
    d
}

fn number(d: &[u8]) -> u64 {
    u64::from_be_bytes(d[..8].try_into().unwrap())
}

/// Feeds `arrivals` (sorted by time) and releases everything, stepping the virtual clock to each
/// arrival and each release time exactly; returns `(release time, transmit)` in release order.
fn simulate(
    imp: &mut Impairment,
    arrivals: impl IntoIterator<Item = (Instant, Dir, Vec<u8>)>,
) -> Vec<(Instant, Transmit)> {
    let mut out = Vec::new();
    let mut arrivals = arrivals.into_iter().peekable();
    loop {
        let next_arrival = arrivals.peek().map(|a| a.0);
        match (imp.poll_timeout(), next_arrival) {
            (Some(t), a) if a.is_none_or(|a| t <= a) => {
                while let Some(tx) = imp.poll_transmit(t) {
                    out.push((t, tx));
                }
            }
            (_, Some(_)) => {
                let (t, dir, d) = arrivals.next().unwrap();
                imp.handle(t, dir, d);
            }
            (None, None) => return out,
            (Some(_), None) => unreachable!("covered by the first arm"),
        }
    }
}

/// `n` datagrams of `len` bytes, one every `gap`, from `t0`, travelling `dir`.
fn stream(
    t0: Instant,
    n: u64,
    gap: Duration,
    len: usize,
    dir: Dir,
) -> impl Iterator<Item = (Instant, Dir, Vec<u8>)> {
    (0..n).map(move |i| (t0 + gap * i as u32, dir, dgram(i, len)))
}

fn both(p: Params, seed: u64) -> Config {
    Config {
        up: p.clone(),
        down: p,
        seed,
        ..Config::default()
    }
}

#[test]
fn nothing_configured_forwards_everything_at_once_in_order() {
    let t0 = Instant::now();
    let mut imp = Impairment::new(Config::default(), t0);
    let out = simulate(&mut imp, stream(t0, 100, MS, 100, Dir::Up));
    assert_eq!(out.len(), 100);
    for (i, (t, tx)) in out.iter().enumerate() {
        assert_eq!(*t, t0 + MS * i as u32);
        assert_eq!(number(&tx.data), i as u64);
        assert_eq!(tx.dir, Dir::Up);
    }
    let c = imp.counts(Dir::Up);
    assert_eq!((c.received, c.forwarded), (100, 100));
    assert_eq!(imp.counts(Dir::Down), Counts::default());
    assert_eq!(imp.poll_timeout(), None);
}

#[test]
fn loss_rate_matches_and_is_deterministic() {
    let t0 = Instant::now();
    let p = Params {
        loss: 0.05,
        ..Params::default()
    };
    let mut imp = Impairment::new(both(p.clone(), 1), t0);
    let out = simulate(&mut imp, stream(t0, 10_000, MS, 50, Dir::Up));
    let c = imp.counts(Dir::Up);
    // loose statistical bounds: 5 % of 10 000 is 500, sigma ~ 22
    assert!((400..=600).contains(&c.dropped_loss), "{c}");
    assert_eq!(c.forwarded + c.dropped_loss, 10_000);
    assert_eq!(out.len() as u64, c.forwarded);
    // exact for this seed: the same decisions every run (StdRng is ChaCha12 in rand 0.9; a rand
    // upgrade may change the stream, then re-pin this number)
    assert_eq!(c.dropped_loss, 527, "seed 1 changed its decisions");
    // same seed, same decisions (which datagrams, not just how many)
    let mut again = Impairment::new(both(p.clone(), 1), t0);
    let out2 = simulate(&mut again, stream(t0, 10_000, MS, 50, Dir::Up));
    let ids =
        |o: &[(Instant, Transmit)]| o.iter().map(|(_, t)| number(&t.data)).collect::<Vec<_>>();
    assert_eq!(ids(&out), ids(&out2));
    // another seed, other datagrams
    let mut other = Impairment::new(both(p, 2), t0);
    let out3 = simulate(&mut other, stream(t0, 10_000, MS, 50, Dir::Up));
    assert_ne!(ids(&out), ids(&out3));
}

#[test]
fn decisions_do_not_depend_on_the_other_direction_or_other_impairments() {
    let t0 = Instant::now();
    let lossy = Params {
        loss: 0.3,
        ..Params::default()
    };
    let lost = |cfg: Config, with_down: bool| {
        let mut imp = Impairment::new(cfg, t0);
        let mut lost = Vec::new();
        for i in 0..2000u64 {
            let t = t0 + MS * i as u32;
            if imp.handle(t, Dir::Up, dgram(i, 40)) == Decision::Loss {
                lost.push(i);
            }
            if with_down {
                imp.handle(t, Dir::Down, dgram(i, 40));
            }
            while imp.poll_transmit(t).is_some() {}
        }
        lost
    };
    let plain = lost(both(lossy.clone(), 9), false);
    assert_eq!(plain, lost(both(lossy.clone(), 9), true));
    let busy = Params {
        corrupt: 0.5,
        duplicate: 0.5,
        reorder: 0.5,
        jitter: 3 * MS,
        delay: 5 * MS,
        ..lossy
    };
    assert_eq!(plain, lost(both(busy, 9), true));
}

#[test]
fn delay_adds_exactly_the_delay() {
    let t0 = Instant::now();
    let p = Params {
        delay: 20 * MS,
        ..Params::default()
    };
    let mut imp = Impairment::new(both(p, 0), t0);
    let arrivals: Vec<_> = (0..50u64)
        .map(|i| {
            (
                t0 + Duration::from_micros(i * i * 37),
                Dir::Down,
                dgram(i, 100),
            )
        })
        .collect();
    let sent: Vec<_> = arrivals.iter().map(|a| a.0).collect();
    let out = simulate(&mut imp, arrivals);
    assert_eq!(out.len(), 50);
    for (t, tx) in &out {
        assert_eq!(*t, sent[number(&tx.data) as usize] + 20 * MS);
    }
    // nothing is released a nanosecond early
    let mut imp = Impairment::new(
        both(
            Params {
                delay: 20 * MS,
                ..Params::default()
            },
            0,
        ),
        t0,
    );
    imp.handle(t0, Dir::Up, dgram(0, 10));
    assert!(imp
        .poll_transmit(t0 + 20 * MS - Duration::from_nanos(1))
        .is_none());
    assert_eq!(imp.poll_timeout(), Some(t0 + 20 * MS));
    assert!(imp.poll_transmit(t0 + 20 * MS).is_some());
}

#[test]
fn jitter_stays_in_bounds_and_keeps_order() {
    let t0 = Instant::now();
    let p = Params {
        delay: 20 * MS,
        jitter: 5 * MS,
        ..Params::default()
    };
    let mut imp = Impairment::new(both(p, 3), t0);
    let out = simulate(&mut imp, stream(t0, 2000, MS, 100, Dir::Up));
    assert_eq!(out.len(), 2000);
    let mut min_extra = Duration::MAX;
    for (i, (t, tx)) in out.iter().enumerate() {
        assert_eq!(number(&tx.data), i as u64, "jitter must not reorder");
        let extra = *t - (t0 + MS * i as u32);
        assert!(extra >= 15 * MS, "{extra:?}");
        // FIFO may hold a datagram behind its predecessor (released at most 25 ms after it left)
        assert!(extra <= 25 * MS, "{extra:?}");
        min_extra = min_extra.min(extra);
    }
    assert!(min_extra < 16 * MS, "jitter never went below the delay");
}

#[test]
fn reorder_changes_order_and_holds_back_by_the_gap() {
    let t0 = Instant::now();
    let p = Params {
        reorder: 0.1,
        reorder_gap: 5 * MS,
        ..Params::default()
    };
    let mut imp = Impairment::new(both(p, 4), t0);
    let mut held = Vec::new();
    let mut out = Vec::new();
    for i in 0..1000u64 {
        let t = t0 + MS * i as u32;
        while let Some(x) = imp.poll_transmit(t) {
            out.push(number(&x.data));
        }
        if let Decision::Scheduled {
            reordered: true,
            at,
            ..
        } = imp.handle(t, Dir::Up, dgram(i, 64))
        {
            assert_eq!(at, t + 5 * MS);
            held.push(i);
        }
        while let Some(x) = imp.poll_transmit(t) {
            out.push(number(&x.data));
        }
    }
    out.extend(
        simulate(&mut imp, [])
            .into_iter()
            .map(|(_, x)| number(&x.data)),
    );
    let c = imp.counts(Dir::Up);
    assert_eq!(c.reordered, held.len() as u64);
    assert!((60..=140).contains(&c.reordered), "{c}");
    assert_eq!(out.len(), 1000, "reordering loses nothing");
    let mut sorted = out.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    assert_ne!(out, sorted, "order changed");
    // every held datagram was overtaken by the next one (sent 1 ms later, released 4 ms earlier)
    let pos = |n: u64| out.iter().position(|&x| x == n).unwrap();
    for &h in held
        .iter()
        .filter(|&&h| h < 999 && !held.contains(&(h + 1)))
    {
        assert!(pos(h + 1) < pos(h), "{h} was not overtaken");
    }
}

#[test]
fn duplicate_duplicates() {
    let t0 = Instant::now();
    let p = Params {
        duplicate: 0.1,
        ..Params::default()
    };
    let mut imp = Impairment::new(both(p, 5), t0);
    let out = simulate(&mut imp, stream(t0, 5000, MS, 80, Dir::Down));
    let c = imp.counts(Dir::Down);
    assert!((400..=600).contains(&c.duplicated), "{c}");
    assert_eq!(c.forwarded, 5000 + c.duplicated);
    assert_eq!(out.len() as u64, c.forwarded);
    let mut seen = vec![0u32; 5000];
    for (_, tx) in &out {
        seen[number(&tx.data) as usize] += 1;
    }
    assert_eq!(
        seen.iter().filter(|&&n| n == 2).count() as u64,
        c.duplicated
    );
    assert!(seen.iter().all(|&n| n == 1 || n == 2));
}

#[test]
fn tags_travel_with_their_datagram_and_its_copy() {
    let t0 = Instant::now();
    let p = Params {
        duplicate: 0.3,
        reorder: 0.3,
        delay: MS,
        ..Params::default()
    };
    let mut imp: Impairment<u64> = Impairment::new(both(p, 9), t0);
    for i in 0..500u64 {
        imp.handle_tagged(t0 + MS * i as u32, Dir::Up, dgram(i, 40), i * 7);
    }
    let mut out = 0;
    while let Some(tx) = imp.poll_transmit(t0 + Duration::from_secs(10)) {
        assert_eq!(tx.tag, number(&tx.data) * 7);
        out += 1;
    }
    let c = imp.counts(Dir::Up);
    assert!(c.duplicated > 0 && c.reordered > 0, "{c}");
    assert_eq!(out, 500 + c.duplicated);
}

#[test]
fn corrupt_flips_exactly_one_bit() {
    let t0 = Instant::now();
    let p = Params {
        corrupt: 0.2,
        ..Params::default()
    };
    let mut imp = Impairment::new(both(p, 6), t0);
    let out = simulate(&mut imp, stream(t0, 2000, MS, 200, Dir::Up));
    let mut flipped = 0;
    for (i, (_, tx)) in out.iter().enumerate() {
        let want = dgram(i as u64, 200);
        let bits: u32 = want
            .iter()
            .zip(&tx.data)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum();
        assert!(bits <= 1);
        flipped += bits as u64;
    }
    // nothing is lost or reordered, so position i is datagram i even if its number was hit
    let c = imp.counts(Dir::Up);
    assert!((300..=500).contains(&c.corrupted), "{c}");
    assert_eq!(flipped, c.corrupted);
}

#[test]
fn rate_limit_bounds_throughput_and_drops_at_the_queue() {
    let t0 = Instant::now();
    // 10 Mbit/s: a 1250-byte datagram takes exactly 1 ms; 25 in the queue
    let p = Params {
        rate_bps: Some(10_000_000),
        queue: 25,
        ..Params::default()
    };
    let mut imp = Impairment::new(both(p, 7), t0);
    // offered: 20 Mbit/s for one second (2000 datagrams, one every 500 us)
    let out = simulate(
        &mut imp,
        stream(t0, 2000, Duration::from_micros(500), 1250, Dir::Up),
    );
    let c = imp.counts(Dir::Up);
    assert_eq!(c.forwarded + c.dropped_queue, 2000);
    // the link sends back to back: exactly one datagram per ms once the queue has formed
    for w in out.windows(2) {
        assert!(w[1].0 - w[0].0 >= MS, "faster than the rate");
    }
    let (first, last) = (out[0].0, out.last().unwrap().0);
    assert_eq!(
        first,
        t0 + MS,
        "the first datagram's own serialisation time"
    );
    assert_eq!(last - first, MS * (out.len() as u32 - 1));
    // 1 s of offered load + the 25 ms queue drained at 1 per ms
    assert!((1000..=1027).contains(&c.forwarded), "{c}");
    assert!(c.dropped_queue >= 970, "{c}");
    // no datagram waited longer than the queue allows (25 datagrams = 25 ms)
    let mut in_order = out.iter().map(|(t, x)| (number(&x.data), *t));
    let (n, t) = in_order.next_back().unwrap();
    assert!(t - (t0 + Duration::from_micros(500) * n as u32) <= 25 * MS);
}

#[test]
fn rate_and_delay_compose() {
    let t0 = Instant::now();
    let p = Params {
        rate_bps: Some(8_000_000), // 1000 bytes per ms
        queue: 1000,
        delay: 10 * MS,
        ..Params::default()
    };
    let mut imp = Impairment::new(both(p, 0), t0);
    // a burst of 10 at t0: released at 11, 12, ... 20 ms
    let out = simulate(&mut imp, (0..10).map(|i| (t0, Dir::Up, dgram(i, 1000))));
    let times: Vec<_> = out.iter().map(|(t, _)| *t - t0).collect();
    assert_eq!(times, (11..=20).map(|m| MS * m).collect::<Vec<_>>());
}

#[test]
fn blackout_drops_exactly_its_window() {
    let t0 = Instant::now();
    let cfg = Config {
        blackouts: vec![(Duration::from_secs(1), Duration::from_secs(2))],
        ..Config::default()
    };
    let mut imp = Impairment::new(cfg, t0);
    let arrivals = stream(t0, 3000, MS, 30, Dir::Up).chain(stream(t0, 3000, MS, 30, Dir::Down));
    let mut arrivals: Vec<_> = arrivals.collect();
    arrivals.sort_by_key(|a| a.0);
    let out = simulate(&mut imp, arrivals);
    for dir in Dir::BOTH {
        let c = imp.counts(dir);
        assert_eq!(c.dropped_blackout, 1000, "{dir:?} {c}");
        assert_eq!(c.forwarded, 2000);
    }
    let up: Vec<u64> = out
        .iter()
        .filter(|(_, x)| x.dir == Dir::Up)
        .map(|(_, x)| number(&x.data))
        .collect();
    assert!(up.contains(&999) && !up.contains(&1000));
    assert!(!up.contains(&1999) && up.contains(&2000));
}

#[test]
fn handshake_loss_touches_only_the_first_n() {
    let t0 = Instant::now();
    let p = Params {
        loss: 1.0,
        handshake_loss: Some(5),
        ..Params::default()
    };
    let mut imp = Impairment::new(both(p, 8), t0);
    let mut arrivals: Vec<_> = stream(t0, 100, MS, 30, Dir::Up)
        .chain(stream(t0, 100, MS, 30, Dir::Down))
        .collect();
    arrivals.sort_by_key(|a| a.0);
    let out = simulate(&mut imp, arrivals);
    for dir in Dir::BOTH {
        let c = imp.counts(dir);
        assert_eq!((c.dropped_loss, c.forwarded), (5, 95), "{dir:?}");
        let first = out.iter().find(|(_, x)| x.dir == dir).unwrap();
        assert_eq!(number(&first.1.data), 5);
    }
}

#[test]
fn pending_memory_is_bounded() {
    let t0 = Instant::now();
    let cfg = Config {
        up: Params {
            delay: Duration::from_secs(1),
            ..Params::default()
        },
        max_pending_packets: 100,
        max_pending_bytes: 1 << 20,
        ..Config::default()
    };
    let mut imp = Impairment::new(cfg.clone(), t0);
    for i in 0..150 {
        imp.handle(t0, Dir::Up, dgram(i, 10));
    }
    assert_eq!(imp.pending(Dir::Up), 100);
    assert_eq!(imp.counts(Dir::Up).dropped_queue, 50);
    // the byte bound too: 1 MiB of 64 KiB datagrams is 16
    let mut imp = Impairment::new(cfg, t0);
    for i in 0..20 {
        imp.handle(t0, Dir::Up, dgram(i, 65_536));
    }
    assert_eq!(imp.pending(Dir::Up), 16);
    // releasing frees room
    let out = simulate(&mut imp, []);
    assert_eq!(out.len(), 16);
    assert_eq!(imp.pending(Dir::Up), 0);
    assert!(matches!(
        imp.handle(t0 + Duration::from_secs(2), Dir::Up, dgram(0, 65_536)),
        Decision::Scheduled { .. }
    ));
}

#[test]
fn tx_time_is_exact_and_never_zero() {
    assert_eq!(tx_time(1250, 10_000_000), MS);
    assert_eq!(tx_time(1, u64::MAX), Duration::from_nanos(1));
    assert_eq!(tx_time(0, 1_000), Duration::from_nanos(1));
}
