//! Fuzzing, on stable Rust with proptest, of the load balancer's per-datagram path: the invariant
//! header parser (`parse::parse` with the router's short-header CID lengths), `classify`, and
//! routing (`Router::route` / `route_by_tuple`) with three QUIC-LB configs (four-pass,
//! single-pass, plaintext) and three backends.
//!
//! The inputs are structured: short and long headers around CIDs encoded for a backend under
//! each config, CIDs with one byte changed, random CIDs of every length up to 40, lying length
//! bytes, v1 / v2 / version negotiation / unknown versions, then random byte flips and
//! truncation, plus plain random bytes.
//!
//! `FUZZ_CASES` sets the number of cases (default 20 000), e.g. for a long run:
//! `FUZZ_CASES=10000000 cargo test --release -p quicshard-lb --test fuzz_parse`.

use quicshard_fuzzkit::{self as fuzzkit, Damage};

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use quicshard_lb::parse::{classify, parse, Header, Malformed, Path, SlowReason, KNOWN_VERSIONS};
use quicshard_lb::route::{FourTuple, RouteBy, Router};
use quicshard_lb::LbConfig;

const BACKENDS: [[u8; 2]; 3] = [[0x0a, 0x0a], [0x0b, 0x0b], [0x0c, 0x0c]];

/// Three configs with 2-octet server IDs: id 0 four-pass (10-octet CIDs), id 1 single-pass
/// (17), id 2 plaintext (7).
fn lb_config() -> &'static LbConfig {
    static CFG: OnceLock<LbConfig> = OnceLock::new();
    CFG.get_or_init(|| {
        LbConfig::from_toml(
            r#"
listen = "10.0.0.1:443"
[[quic_lb]]
id = 0
server_id_len = 2
nonce_len = 7
key = "8f95f09245765f80256934e50c66207f"
[[quic_lb]]
id = 1
server_id_len = 2
nonce_len = 14
key = "fdf726a9893ec05c0632d3956680baf0"
[[quic_lb]]
id = 2
server_id_len = 2
nonce_len = 4
[[backend]]
server_id = "0a0a"
address = "192.0.2.1:4433"
[[backend]]
server_id = "0b0b"
address = "192.0.2.2:4433"
[[backend]]
server_id = "0c0c"
address = "192.0.2.3:4433"
"#,
        )
        .expect("valid config")
    })
}

/// Where a header's DCID comes from.
#[derive(Debug, Clone)]
enum Dcid {
    /// Encoded for backend `backend % 3` under config `config % 3`; optionally one byte XORed.
    Ours {
        config: usize,
        backend: usize,
        nonce: [u8; 14],
        random: u8,
        flip: Option<(usize, u8)>,
    },
    /// Random bytes, up to 40 (longer than QUIC v1 allows).
    Random(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Shape {
    Short {
        first: u8,
        dcid: Dcid,
        payload: Vec<u8>,
    },
    Long {
        first: u8,
        version: u32,
        /// The DCID / SCID length bytes, if they lie.
        dcid_len: Option<u8>,
        scid_len: Option<u8>,
        dcid: Dcid,
        scid: Vec<u8>,
        rest: Vec<u8>,
    },
    Raw(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Recipe {
    shape: Shape,
    damage: Damage,
    client_port: u16,
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=max)
}

fn dcid() -> impl Strategy<Value = Dcid> {
    prop_oneof![
        3 => (
            any::<usize>(),
            any::<usize>(),
            any::<[u8; 14]>(),
            any::<u8>(),
            proptest::option::weighted(0.3, (any::<usize>(), 1u8..=255)),
        )
            .prop_map(|(config, backend, nonce, random, flip)| Dcid::Ours {
                config,
                backend,
                nonce,
                random,
                flip,
            }),
        1 => bytes(40).prop_map(Dcid::Random),
    ]
}

fn recipe() -> impl Strategy<Value = Recipe> {
    let short = (any::<u8>(), dcid(), bytes(40)).prop_map(|(first, dcid, payload)| Shape::Short {
        first,
        dcid,
        payload,
    });
    let version = prop_oneof![
        Just(KNOWN_VERSIONS[0]),
        Just(KNOWN_VERSIONS[1]),
        Just(0u32),
        any::<u32>()
    ];
    let long = (
        any::<u8>(),
        version,
        proptest::option::weighted(0.15, any::<u8>()),
        proptest::option::weighted(0.15, any::<u8>()),
        dcid(),
        prop_oneof![4 => bytes(20), 1 => bytes(30)],
        bytes(40),
    )
        .prop_map(
            |(first, version, dcid_len, scid_len, dcid, scid, rest)| Shape::Long {
                first,
                version,
                dcid_len,
                scid_len,
                dcid,
                scid,
                rest,
            },
        );
    let shape = prop_oneof![4 => short, 4 => long, 1 => bytes(64).prop_map(Shape::Raw)];
    (shape, fuzzkit::damage(1..=2), any::<u16>()).prop_map(|(shape, damage, client_port)| Recipe {
        shape,
        damage,
        client_port,
    })
}

/// The datagram, and the backend its DCID names if that CID is intact and where the parser
/// looks for it.
struct Built {
    data: Vec<u8>,
    intact_backend: Option<usize>,
}

fn build(r: &Recipe) -> Built {
    let cfg = lb_config();
    let cid_of = |d: &Dcid| -> (Vec<u8>, Option<usize>) {
        match d {
            Dcid::Ours {
                config,
                backend,
                nonce,
                random,
                flip,
            } => {
                let c = cfg.quic_lb[config % cfg.quic_lb.len()].config;
                let codec = quic_lb::Codec::new(c);
                let b = backend % BACKENDS.len();
                let mut out = [0u8; quic_lb::MAX_CID_LEN];
                let n = codec
                    .encode(&BACKENDS[b], &nonce[..c.nonce_len()], *random, &mut out)
                    .expect("encodes");
                let mut cid = out[..n].to_vec();
                match flip {
                    Some((i, mask)) => {
                        let i = i % cid.len();
                        cid[i] ^= mask;
                        (cid, None)
                    }
                    None => (cid, Some(b)),
                }
            }
            Dcid::Random(b) => (b.clone(), None),
        }
    };
    let (mut data, mut intact, header_len) = match &r.shape {
        Shape::Short {
            first,
            dcid,
            payload,
        } => {
            let (cid, intact) = cid_of(dcid);
            let len = 1 + cid.len();
            ([&[first & 0x7f][..], &cid, payload].concat(), intact, len)
        }
        Shape::Long {
            first,
            version,
            dcid_len,
            scid_len,
            dcid,
            scid,
            rest,
        } => {
            let (cid, mut intact) = cid_of(dcid);
            let dl = dcid_len.unwrap_or(cid.len() as u8);
            if usize::from(dl) != cid.len() || !KNOWN_VERSIONS.contains(version) {
                intact = None;
            }
            let mut d = vec![first | 0x80];
            d.extend_from_slice(&version.to_be_bytes());
            d.push(dl);
            d.extend_from_slice(&cid);
            d.push(scid_len.unwrap_or(scid.len() as u8));
            d.extend_from_slice(scid);
            d.extend_from_slice(rest);
            if scid_len.is_some_and(|l| usize::from(l) != scid.len()) {
                intact = None;
            }
            // the SCID must be whole too for the header to parse
            (d, intact, 7 + cid.len() + scid.len())
        }
        Shape::Raw(b) => (b.clone(), None, 0),
    };
    if !r.damage.apply(&mut data, header_len) {
        intact = None;
    }
    Built {
        data,
        intact_backend: intact,
    }
}

/// Where a header ends in `d`, by RFC 8999 (the parser must agree).
fn header_end(h: &Header<'_>) -> usize {
    match *h {
        Header::Short { dcid } => 1 + dcid.len(),
        Header::Long { dcid, scid, .. } => 7 + dcid.len() + scid.len(),
    }
}

/// Checks one parse result against the wire format.
fn check_parse(
    d: &[u8],
    r: &Result<Header<'_>, Malformed>,
    short_len: usize,
) -> Result<(), TestCaseError> {
    match *r {
        Err(Malformed::Empty) => prop_assert!(d.is_empty()),
        Err(Malformed::TooShort { len, need }) => {
            prop_assert_eq!(len, d.len());
            prop_assert!(need > len, "need {} <= len {}", need, len);
        }
        Err(Malformed::CidTooLong(n)) => {
            prop_assert!(n > 20);
            prop_assert!(d[0] & 0x80 != 0);
            let v = u32::from_be_bytes(d[1..5].try_into().unwrap());
            prop_assert!(KNOWN_VERSIONS.contains(&v));
        }
        Ok(Header::Short { dcid }) => {
            prop_assert!(d[0] & 0x80 == 0);
            prop_assert_eq!(dcid, &d[1..1 + short_len.min(20)]);
        }
        Ok(Header::Long {
            version,
            dcid,
            scid,
        }) => {
            prop_assert!(d[0] & 0x80 != 0);
            prop_assert_eq!(version, u32::from_be_bytes(d[1..5].try_into().unwrap()));
            let dl = usize::from(d[5]);
            prop_assert_eq!(dcid, &d[6..6 + dl]);
            let sl = usize::from(d[6 + dl]);
            prop_assert_eq!(scid, &d[7 + dl..7 + dl + sl]);
            if KNOWN_VERSIONS.contains(&version) {
                prop_assert!(dl <= 20 && sl <= 20);
            }
        }
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Coverage {
    cases: u64,
    short: u64,
    long_fast: u64,
    unknown_version: u64,
    version_negotiation: u64,
    too_short: u64,
    cid_too_long: u64,
    by_cid: u64,
    by_fallback: u64,
}

#[test]
fn parse_classify_route() {
    let cov = RefCell::new(Coverage::default());
    let start = Instant::now();
    let now = Instant::now();
    let local: SocketAddr = "10.0.0.1:443".parse().unwrap();
    let backends: Vec<SocketAddr> = lb_config().backends.iter().map(|b| b.address).collect();
    // one router for many cases (its tables fill up as a real one's would), renewed now and then
    let router = RefCell::new((Router::new(lb_config(), 7), 0u32));
    let mut runner = TestRunner::new(fuzzkit::fuzz_config());
    let result = runner.run(&recipe(), |r| {
        let b = build(&r);
        let d = &b.data[..];
        let mut guard = router.borrow_mut();
        let (router, uses) = &mut *guard;
        *uses += 1;
        if *uses > 100_000 {
            *router = Router::new(lb_config(), 7);
            *uses = 0;
        }
        let short_len = d.get(1).map_or(0, |&f| router.short_dcid_len(f));
        let parsed = router.parse(d);
        prop_assert_eq!(parsed, parse(d, |f| router.short_dcid_len(f)));
        check_parse(d, &parsed, short_len)?;
        let mut c = cov.borrow_mut();
        c.cases += 1;
        let h = match parsed {
            Ok(h) => h,
            Err(Malformed::TooShort { .. } | Malformed::Empty) => {
                c.too_short += 1;
                prop_assert!(b.intact_backend.is_none());
                return Ok(());
            }
            Err(Malformed::CidTooLong(_)) => {
                c.cid_too_long += 1;
                return Ok(());
            }
        };
        // the header is a prefix property: more bytes change nothing, fewer break it
        let end = header_end(&h);
        prop_assert!(end <= d.len());
        prop_assert_eq!(router.parse(&d[..end]), Ok(h));
        let mut longer = d.to_vec();
        longer.extend_from_slice(&[0xee; 9]);
        prop_assert_eq!(router.parse(&longer), Ok(h));
        if end > 0 {
            prop_assert!(router.parse(&d[..end - 1]).is_err());
        }
        let tuple = FourTuple {
            client: SocketAddr::from(([198, 51, 100, 7], r.client_port)),
            local,
        };
        let path = classify(&h);
        match (h, path) {
            (Header::Short { .. }, Path::Fast) => c.short += 1,
            (Header::Long { version, .. }, Path::Fast) => {
                prop_assert!(KNOWN_VERSIONS.contains(&version));
                c.long_fast += 1;
            }
            (Header::Long { version: 0, .. }, Path::Slow(SlowReason::VersionNegotiation)) => {
                c.version_negotiation += 1;
                return Ok(());
            }
            (Header::Long { version, .. }, Path::Slow(SlowReason::UnknownVersion)) => {
                prop_assert!(version != 0 && !KNOWN_VERSIONS.contains(&version));
                c.unknown_version += 1;
                let decision = router
                    .route_by_tuple(now, tuple)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(backends.contains(&decision.address));
                return Ok(());
            }
            (h, p) => return Err(TestCaseError::fail(format!("{h:?} classified {p:?}"))),
        }
        // every backend is up: a fast-path packet always gets one, by its CID when intact
        let decision = router
            .route(now, tuple, &h)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(backends.contains(&decision.address));
        if let Some(want) = b.intact_backend {
            prop_assert_eq!(decision.by, RouteBy::Cid);
            prop_assert_eq!(decision.server_id.as_bytes(), &BACKENDS[want][..]);
        }
        if decision.by == RouteBy::Cid {
            c.by_cid += 1;
        } else {
            c.by_fallback += 1;
        }
        Ok(())
    });
    let cov = cov.into_inner();
    fuzzkit::finish(
        result,
        &cov,
        cov.cases,
        start,
        500,
        &[
            ("short", cov.short),
            ("long_fast", cov.long_fast),
            ("unknown_version", cov.unknown_version),
            ("version_negotiation", cov.version_negotiation),
            ("too_short", cov.too_short),
            ("cid_too_long", cov.cid_too_long),
            ("by_cid", cov.by_cid),
            ("by_fallback", cov.by_fallback),
        ],
    );
}
