//! Unit tests of the router: routing order, health, expiry, reload, hashing.

use super::*;
use crate::parse::VERSION_1;

const KEY: &str = "8f95f09245765f80256934e50c66207f";
const A: [u8; 2] = [0x0a, 0x0a];
const B: [u8; 2] = [0x0b, 0x0b];
const C: [u8; 2] = [0x0c, 0x0c];

fn config(extra: &str) -> LbConfig {
    let text = format!(
        r#"
listen = "10.0.0.1:443"
[[quic_lb]]
id = 0
server_id_len = 2
nonce_len = 6
key = "{KEY}"
[[backend]]
server_id = "0a0a"
address = "192.0.2.1:4433"
[[backend]]
server_id = "0b0b"
address = "192.0.2.2:4433"
[[backend]]
server_id = "0c0c"
address = "192.0.2.3:4433"
[timers]
flow_idle_secs = 10
{extra}"#
    );
    LbConfig::from_toml(&text).unwrap()
}

fn router() -> Router {
    Router::new(&config(""), 0x1234_5678)
}

fn tuple(port: u16) -> FourTuple {
    FourTuple {
        client: SocketAddr::from(([198, 51, 100, 7], port)),
        local: "10.0.0.1:443".parse().unwrap(),
    }
}

/// A CID for `sid` under the config with `id` in `cfg`.
fn cid(cfg: &LbConfig, id: u8, sid: &[u8], nonce: u8) -> Vec<u8> {
    let q = cfg
        .quic_lb
        .iter()
        .find(|q| q.config.config_id() == id)
        .unwrap();
    let codec = Codec::new(q.config);
    let mut out = vec![0; q.config.cid_len()];
    let nonce = vec![nonce; q.config.nonce_len()];
    codec.encode(sid, &nonce, 0, &mut out).unwrap();
    out
}

fn short(dcid: &[u8]) -> Header<'_> {
    Header::Short { dcid }
}

fn long<'a>(dcid: &'a [u8], scid: &'a [u8]) -> Header<'a> {
    Header::Long {
        version: VERSION_1,
        dcid,
        scid,
    }
}

/// A 0b111 CID distinct per `p`.
fn unroutable(p: u16) -> [u8; 9] {
    let [h, l] = p.to_be_bytes();
    [0xe0, h, l, 0, 0, 0, 0, 0, 0]
}

fn sid(b: [u8; 2]) -> ServerId {
    ServerId::new(&b).unwrap()
}

#[test]
fn routable_cid_goes_to_its_server() {
    let cfg = config("");
    let mut r = router();
    let now = Instant::now();
    for (s, port) in [(A, 1), (B, 2), (C, 3)] {
        let d = cid(&cfg, 0, &s, port as u8);
        let got = r.route(now, tuple(port), &short(&d)).unwrap();
        assert_eq!((got.server_id, got.by), (sid(s), RouteBy::Cid));
        // Same CID from any address and in a long header: same backend.
        let got = r.route(now, tuple(99), &long(&d, &[1, 2, 3, 4])).unwrap();
        assert_eq!((got.server_id, got.by), (sid(s), RouteBy::Cid));
    }
    assert_eq!(r.stats().routed_by_cid, 6);
    assert_eq!(
        r.table_sizes(),
        TableSizes::default(),
        "CID routing records nothing"
    );
}

#[test]
fn reserved_codepoint_is_unroutable_and_sticky_per_tuple() {
    let mut r = router();
    let now = Instant::now();
    let d = [0xe7, 1, 2, 3, 4, 5, 6, 7, 8];
    let first = r.route(now, tuple(5), &short(&d)).unwrap();
    assert_eq!(first.by, RouteBy::Hash);
    for i in 0..10u8 {
        // Other 0b111 CIDs from the same 4-tuple: the 4-tuple table.
        let d2 = [0xe0 | i, i, i, i, i, i, i, i, i];
        let again = r.route(now, tuple(5), &short(&d2)).unwrap();
        assert_eq!(again.server_id, first.server_id);
    }
    let s = r.stats();
    assert_eq!(
        (s.cid_reserved, s.fallback_hash, s.routed_by_cid),
        (11, 1, 0)
    );
    assert_eq!(s.fallback_tuple_hits, 10);
    assert_eq!(s.fallback_table_hits, 10);
}

#[test]
fn unknown_server_id_falls_through_and_dcid_table_follows_migration() {
    let cfg = config("");
    let mut r = router();
    let now = Instant::now();
    let d = cid(&cfg, 0, &[0xee, 0xee], 1);
    let first = r.route(now, tuple(1), &short(&d)).unwrap();
    assert_eq!(first.by, RouteBy::Hash);
    assert_eq!(r.stats().cid_unknown_server, 1);
    // The client migrates: new port, same DCID.
    let moved = r.route(now, tuple(2), &short(&d)).unwrap();
    assert_eq!(
        (moved.server_id, moved.by),
        (first.server_id, RouteBy::Dcid)
    );
    // Unknown config codepoint 3 also falls back.
    let d3 = [0x60, 1, 2, 3, 4, 5, 6, 7, 8];
    r.route(now, tuple(3), &short(&d3)).unwrap();
    assert_eq!(r.stats().cid_unknown_config, 1);
}

#[test]
fn long_header_table_order() {
    let mut r = router();
    let now = Instant::now();
    // Flow 1 from tuple(1): Initial with random DCID d1, client SCID s1 -> hashed to X.
    let (d1, s1) = ([0x11; 8], [0x51; 8]);
    let x = r.route(now, tuple(1), &long(&d1, &s1)).unwrap();
    assert_eq!(x.by, RouteBy::Hash);
    assert_eq!(
        r.table_sizes(),
        TableSizes {
            tuple_scid: 1,
            dcid: 1,
            tuple: 1
        }
    );
    // Make X's rivals the only candidates for a new flow from tuple(2) with DCID d2 -> Y != X.
    r.set_down(&x.server_id, true);
    let d2 = [0xe2; 9];
    let y = r.route(now, tuple(2), &short(&d2)).unwrap();
    assert_ne!(y.server_id, x.server_id);
    r.set_down(&x.server_id, false);
    // tuple(1) with DCID d2: the DCID table (Y) beats the 4-tuple table (X).
    let got = r.route(now, tuple(1), &short(&d2)).unwrap();
    assert_eq!((got.server_id, got.by), (y.server_id, RouteBy::Dcid));
    // tuple(1), SCID s1, DCID d2: the 4-tuple + SCID table (X) beats the DCID table (Y).
    let got = r.route(now, tuple(1), &long(&d2, &s1)).unwrap();
    assert_eq!((got.server_id, got.by), (x.server_id, RouteBy::TupleScid));
    // tuple(1), new SCID, new DCID: a new connection on the same client port, placed by the
    // hash of the 4-tuple and SCID, not by the 4-tuple table.
    let got = r
        .route(now, tuple(1), &long(&[0x33; 8], &[0x44; 8]))
        .unwrap();
    assert_eq!(got.by, RouteBy::Hash);
    // tuple(1), empty SCID, new DCID: the 4-tuple names the connection: the 4-tuple table (X).
    let got = r.route(now, tuple(1), &long(&[0x34; 8], &[])).unwrap();
    assert_eq!((got.server_id, got.by), (x.server_id, RouteBy::Tuple));
    let s = r.stats();
    assert_eq!(
        (
            s.fallback_dcid_hits,
            s.fallback_tuple_scid_hits,
            s.fallback_tuple_hits
        ),
        (1, 1, 1)
    );
}

#[test]
fn connections_sharing_a_client_port_spread_over_backends() {
    let mut r = router();
    let now = Instant::now();
    let mut counts = HashMap::new();
    for i in 0..300u16 {
        let [h, l] = i.to_be_bytes();
        let (dcid, scid) = ([0x11, h, l, 1, 2, 3, 4, 5], [0x22, h, l, 9, 8, 7, 6, 5]);
        let first = r.route(now, tuple(7), &long(&dcid, &scid)).unwrap();
        assert_eq!(first.by, RouteBy::Hash);
        // the rest of the client's first flight (same DCID and SCID) follows
        let again = r.route(now, tuple(7), &long(&dcid, &scid)).unwrap();
        assert_eq!(
            (again.server_id, again.by),
            (first.server_id, RouteBy::TupleScid)
        );
        *counts.entry(first.server_id).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n > 60), "{counts:?}");
}

#[test]
fn down_backend_gets_no_new_flows_but_keeps_its_flows() {
    let cfg = config("");
    let mut r = router();
    let now = Instant::now();
    // An existing fallback flow on A (find a tuple hashed to A).
    let port = (1..1000)
        .find(|&p| r.clone_hash(&tuple(p)) == Some(sid(A)))
        .unwrap();
    r.route(now, tuple(port), &short(&[0xe0; 9])).unwrap();
    assert!(r.set_down(&sid(A), true));
    assert!(!r.set_down(&sid([9, 9]), true));
    for p in 1000..1300 {
        let d = r.route(now, tuple(p), &short(&unroutable(p))).unwrap();
        assert_ne!(d.server_id, sid(A), "new flow placed on a down backend");
    }
    // Its table flow and its CID-routed flows keep going.
    assert_eq!(
        r.route(now, tuple(port), &short(&[0xe1; 9]))
            .unwrap()
            .server_id,
        sid(A)
    );
    let d = cid(&cfg, 0, &A, 7);
    assert_eq!(
        r.route(now, tuple(5000), &short(&d)).unwrap().server_id,
        sid(A)
    );
    // Everyone down: new flows are dropped and counted, old ones still go.
    r.set_down(&sid(B), true);
    r.set_down(&sid(C), true);
    assert_eq!(
        r.route(now, tuple(6000), &short(&unroutable(6000))),
        Err(NoBackend)
    );
    assert_eq!(r.stats().dropped_no_backend, 1);
    assert_eq!(
        r.route(now, tuple(port), &short(&[0xe1; 9]))
            .unwrap()
            .server_id,
        sid(A)
    );
    // Marked down in the config file works the same.
    let r2 = Router::new(&config("").with_down(&A), 1);
    assert!(r2.backends.iter().any(|b| b.down));
}

#[test]
fn removed_backend_loses_its_flows() {
    let cfg = config("");
    let mut r = router();
    let now = Instant::now();
    let port = (1..1000)
        .find(|&p| r.clone_hash(&tuple(p)) == Some(sid(C)))
        .unwrap();
    r.route(now, tuple(port), &short(&[0xe0; 9])).unwrap();
    let mut smaller = cfg.clone();
    smaller.backends.retain(|b| b.server_id != sid(C));
    r.apply_config(&smaller);
    // The table entry is stale: the flow is re-hashed to a remaining backend.
    let d = r.route(now, tuple(port), &short(&[0xe0; 9])).unwrap();
    assert_ne!(d.server_id, sid(C));
    assert_eq!(d.by, RouteBy::Hash);
    assert_eq!(r.stats().stale_entries, 2, "its DCID and 4-tuple entries");
    // CIDs naming C fall through to the fallback.
    let c = cid(&cfg, 0, &C, 1);
    assert_ne!(r.route(now, tuple(1), &short(&c)).unwrap().by, RouteBy::Cid);
    assert_eq!(r.stats().cid_unknown_server, 1);
}

#[test]
fn idle_flows_expire() {
    let mut r = router();
    let t0 = Instant::now();
    assert_eq!(r.poll_timeout(), None);
    let first = r.route(t0, tuple(1), &short(&[0xe0; 9])).unwrap();
    let sweep = r.poll_timeout().unwrap();
    assert!(sweep > t0 && sweep <= t0 + Duration::from_secs(10));
    // Traffic refreshes the timer.
    let t1 = t0 + Duration::from_secs(8);
    assert_eq!(
        r.route(t1, tuple(1), &short(&[0xe0; 9])).unwrap().by,
        RouteBy::Dcid
    );
    assert_eq!(r.poll_expired(t0 + Duration::from_secs(15)), 0);
    assert_eq!(r.table_sizes().tuple, 1);
    // Idle for 10 s after t1: gone, both lazily and by the sweep.
    let t2 = t1 + Duration::from_secs(10);
    assert_eq!(r.lookup(t2, tuple(1), None, None), None);
    assert_eq!(r.poll_expired(t2), 2, "tuple and dcid entries");
    assert_eq!(r.table_sizes(), TableSizes::default());
    assert_eq!(r.poll_timeout(), None);
    assert_eq!(r.stats().expired_entries, 2);
    // A new packet is a new flow; the hash puts it on the same backend.
    let again = r.route(t2, tuple(1), &short(&[0xe0; 9])).unwrap();
    assert_eq!(
        (again.server_id, again.by),
        (first.server_id, RouteBy::Hash)
    );
}

#[test]
fn reload_adds_a_codepoint_without_breaking_flows() {
    let cfg = config("");
    let mut r = router();
    let now = Instant::now();
    let old = cid(&cfg, 0, &B, 1);
    let fallback = r.route(now, tuple(9), &short(&[0xe0; 9])).unwrap();
    let newer = config("[[quic_lb]]\nid = 1\nserver_id_len = 2\nnonce_len = 10\n");
    let new_cid = cid(&newer, 1, &C, 2);
    assert_ne!(
        r.route(now, tuple(1), &short(&new_cid)).unwrap().by,
        RouteBy::Cid
    );
    r.apply_config(&newer);
    assert_eq!(r.short_dcid_len(0x20), 13);
    assert_eq!(r.short_dcid_len(0x00), 9);
    let got = r.route(now, tuple(1), &short(&new_cid)).unwrap();
    assert_eq!((got.server_id, got.by), (sid(C), RouteBy::Cid));
    let got = r.route(now, tuple(1), &short(&old)).unwrap();
    assert_eq!((got.server_id, got.by), (sid(B), RouteBy::Cid));
    let got = r.route(now, tuple(9), &short(&[0xe0; 13])).unwrap();
    assert_eq!(
        (got.server_id, got.by),
        (fallback.server_id, RouteBy::Tuple)
    );
}

#[test]
fn short_dcid_len_follows_config_bits() {
    let mut c = config("");
    c.unroutable_cid_len = 5;
    let r = Router::new(&c, 0);
    assert_eq!(r.short_dcid_len(0x1f), 9);
    assert_eq!(r.short_dcid_len(0xe0), 5);
    assert_eq!(r.short_dcid_len(0x40), 5);
    let h = r.parse(&[0x40, 0xe0, 1, 2, 3, 4, 9, 9]).unwrap();
    assert_eq!(h.dcid(), &[0xe0, 1, 2, 3, 4]);
}

#[test]
fn hash_is_balanced_seeded_and_consistent() {
    let mut r = router();
    let mut counts = HashMap::new();
    let placed: Vec<_> = (0..3000)
        .map(|p| r.clone_hash(&tuple(p)).unwrap())
        .collect();
    for s in &placed {
        *counts.entry(*s).or_insert(0) += 1;
    }
    for (s, n) in &counts {
        assert!(*n > 800, "{s} got {n} of 3000");
    }
    // Another seed places flows differently.
    let other = Router::new(&config(""), 99);
    let moved = (0..3000)
        .filter(|&p| other.clone_hash(&tuple(p)).unwrap() != placed[p as usize])
        .count();
    assert!(moved > 1000);
    // Taking B out moves only B's flows.
    r.set_down(&sid(B), true);
    for (p, before) in placed.iter().enumerate() {
        let after = r.clone_hash(&tuple(p as u16)).unwrap();
        if *before != sid(B) {
            assert_eq!(after, *before);
        }
    }
}

#[test]
fn fnv1a_known_values() {
    // FNV-1a 64 of "a" with an empty prefix is 0xaf63dc4c8601ec8c; the seed comes first.
    let mut h = FNV_OFFSET;
    for b in b"a" {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    assert_eq!(h, 0xaf63_dc4c_8601_ec8c);
    assert_ne!(fnv1a(0, &[b"a"]), fnv1a(1, &[b"a"]));
    assert_eq!(fnv1a(7, &[b"ab", b"c"]), fnv1a(7, &[b"abc"]));
}

impl Router {
    fn clone_hash(&self, t: &FourTuple) -> Option<ServerId> {
        self.hash(t, None).map(|i| self.backends[i].server_id)
    }
}

impl LbConfig {
    fn with_down(mut self, s: &[u8]) -> Self {
        for b in &mut self.backends {
            if b.server_id.as_bytes() == s {
                b.down = true;
            }
        }
        self
    }
}
