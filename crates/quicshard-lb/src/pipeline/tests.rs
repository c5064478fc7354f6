//! Unit tests of the receivers' dispatch: queue choice and counted drops.

use super::staged::dispatch;
use super::*;
use crossbeam_channel::bounded;

fn shared(pool: usize) -> Shared {
    let config = LbConfig::from_toml(
        "listen = \"127.0.0.1:1\"\n[[backend]]\nserver_id = \"0a\"\naddress = \"127.0.0.1:2\"",
    )
    .unwrap();
    let lens = CidLens(Default::default());
    lens.set(&config);
    Shared {
        stop: AtomicBool::new(false),
        router: Mutex::new(ROUTER_RANK, Router::new(&config, 1)),
        config: Mutex::new(CONFIG_RANK, config),
        lens,
        pool: Pool::new(pool),
        counters: Counters::default(),
        seed: 7,
        local: "127.0.0.1:1".parse().unwrap(),
    }
}

fn packet(s: &Shared, bytes: &[u8]) -> Box<Packet> {
    let mut p = s.pool.get().unwrap();
    p.recv_area()[..bytes.len()].copy_from_slice(bytes);
    p.set_len(bytes.len());
    p.client = "127.0.0.1:9".parse().unwrap();
    p
}

#[test]
fn full_queues_drop_count_and_return_buffers() {
    let s = shared(4);
    let (ptx, prx) = bounded(1);
    let (stx, srx) = bounded(1);
    let short = [0x40, 0xe0, 1, 2, 3, 4, 5, 6, 7, 8];
    let procs = [ptx];
    dispatch(&s, packet(&s, &short), &procs, &stx);
    dispatch(&s, packet(&s, &short), &procs, &stx);
    dispatch(&s, packet(&s, &[]), &[], &stx);
    dispatch(&s, packet(&s, &[0xc0]), &[], &stx);
    let c = s.counters.receivers.snapshot();
    assert_eq!((c.to_processors, c.dropped_processor_queue_full), (1, 1));
    assert_eq!((c.to_slow_path, c.dropped_slow_queue_full), (1, 1));
    assert_eq!(s.pool.free(), 2, "dropped packets went back to the pool");
    assert_eq!(prx.len() + srx.len(), 2);
}

#[test]
fn same_flow_same_processor() {
    let s = shared(8);
    let queues: Vec<_> = (0..4).map(|_| bounded(8)).collect();
    let txs: Vec<_> = queues.iter().map(|(t, _)| t.clone()).collect();
    let (stx, _srx) = bounded(1);
    for _ in 0..3 {
        dispatch(
            &s,
            packet(&s, &[0x40, 0xe0, 1, 2, 3, 4, 5, 6, 7, 8]),
            &txs,
            &stx,
        );
    }
    let lens: Vec<usize> = queues.iter().map(|(_, r)| r.len()).collect();
    assert!(lens.contains(&3), "{lens:?}");
}
