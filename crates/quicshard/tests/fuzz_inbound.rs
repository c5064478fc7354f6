//! Fuzzing, on stable Rust with proptest, of everything a datagram meets before quinn-proto's
//! `Endpoint`: the steering rule (`steer::owner_shard`, checked against the kernel's BPF program
//! run by an interpreter), the handoff decision, and the short-header CID check with the shards'
//! real CID generators (`validate`).
//!
//! The inputs are structured: short and long headers around CIDs the shards really issued, CIDs
//! with one byte changed, random CIDs of every length, lying length bytes, known and unknown
//! versions, then random byte flips and truncation, plus plain random bytes.
//!
//! `FUZZ_CASES` sets the number of cases (default 20 000), e.g. for a long run:
//! `FUZZ_CASES=10000000 cargo test --release -p quicshard --test fuzz_inbound`.

use quicshard_fuzzkit::{self as fuzzkit, Damage};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use quicshard::cid::{CidConfig, ShardCidGenerator};
use quicshard::quinn_proto::{ConnectionId, ConnectionIdGenerator};
use quicshard::steer::{owner_shard, steering_program, BPF_FALLBACK};
use quicshard::testing::{check_before_endpoint, handoff_target, run_bpf, EarlyDrop};

/// The engine's CID layout: a QUIC-LB config (plaintext or encrypted) plus the shard byte.
#[derive(Debug, Clone)]
struct Layout {
    config_id: u8,
    sid_len: usize,
    nonce_len: usize,
    key: Option<[u8; 16]>,
    self_encoded_len: bool,
    n: usize,
    me: usize,
    seed: u64,
}

fn layout() -> impl Strategy<Value = Layout> {
    (
        0u8..=6,
        1usize..=6,
        4usize..=12,
        proptest::option::of(any::<[u8; 16]>()),
        any::<bool>(),
        prop_oneof![Just(1usize), 2usize..=8, Just(256usize)],
        any::<usize>(),
        any::<u64>(),
    )
        .prop_map(
            |(config_id, sid_len, nonce_len, key, self_encoded_len, n, me, seed)| Layout {
                config_id,
                sid_len,
                nonce_len,
                key,
                self_encoded_len,
                n,
                me: me % n,
                seed,
            },
        )
}

impl Layout {
    /// At most 6 + 12 octets of server ID and nonce: room for the config octet and the shard byte.
    fn cid_config(&self) -> CidConfig {
        let cfg = quic_lb::Config::new(self.config_id, self.sid_len, self.nonce_len, self.key)
            .expect("valid lengths")
            .with_self_encoded_length(self.self_encoded_len);
        CidConfig::new(cfg, &vec![0x5a; self.sid_len], self.n).expect("layout fits")
    }
}

/// Where a header's DCID comes from.
#[derive(Debug, Clone)]
enum Dcid {
    /// Issued by shard `shard % n`; optionally one byte XORed (`(index, mask)`, mask != 0).
    Ours {
        shard: usize,
        flip: Option<(usize, u8)>,
    },
    /// Random bytes of any length up to 24.
    Random(Vec<u8>),
}

/// The shape of a test datagram before mutation.
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
        /// The DCID length byte, if it lies about the DCID that follows.
        len_byte: Option<u8>,
        dcid: Dcid,
        scid: Vec<u8>,
        rest: Vec<u8>,
    },
    Raw(Vec<u8>),
}

/// A datagram recipe: a shape, then damage (byte flips at random positions, then a cut).
#[derive(Debug, Clone)]
struct Recipe {
    shape: Shape,
    damage: Damage,
}

fn dcid() -> impl Strategy<Value = Dcid> {
    prop_oneof![
        3 => (any::<usize>(), proptest::option::of((any::<usize>(), 1u8..=255)))
            .prop_map(|(shard, flip)| Dcid::Ours { shard, flip }),
        1 => proptest::collection::vec(any::<u8>(), 0..=24).prop_map(Dcid::Random),
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=max)
}

fn recipe() -> impl Strategy<Value = Recipe> {
    let short = (any::<u8>(), dcid(), bytes(40)).prop_map(|(first, dcid, payload)| Shape::Short {
        first,
        dcid,
        payload,
    });
    let version = prop_oneof![Just(1u32), Just(0), Just(0x6b33_43cf), any::<u32>()];
    let long = (
        any::<u8>(),
        version,
        proptest::option::weighted(0.2, any::<u8>()),
        dcid(),
        bytes(22),
        bytes(40),
    )
        .prop_map(|(first, version, len_byte, dcid, scid, rest)| Shape::Long {
            first,
            version,
            len_byte,
            dcid,
            scid,
            rest,
        });
    let shape = prop_oneof![4 => short, 4 => long, 1 => bytes(64).prop_map(Shape::Raw)];
    (shape, fuzzkit::damage(0..=2)).prop_map(|(shape, damage)| Recipe { shape, damage })
}

/// What the recipe built, and what we know about it.
struct Built {
    data: Vec<u8>,
    /// The shard that issued the DCID if it is intact, where the rule looks for it, and the
    /// datagram is long enough to hold it.
    intact_owner: Option<usize>,
}

fn build(r: &Recipe, n: usize, gens: &mut dyn FnMut(usize) -> ConnectionId) -> Built {
    let mut cid_of = |d: &Dcid| -> (Vec<u8>, Option<usize>) {
        match d {
            Dcid::Ours { shard, flip } => {
                let shard = shard % n;
                let mut cid = gens(shard).to_vec();
                let mut intact = Some(shard);
                if let Some((i, mask)) = flip {
                    let i = i % cid.len();
                    cid[i] ^= mask;
                    intact = None;
                }
                (cid, intact)
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
            let data = [&[first & 0x7f][..], &cid, payload].concat();
            (data, intact, 1 + cid.len())
        }
        Shape::Long {
            first,
            version,
            len_byte,
            dcid,
            scid,
            rest,
        } => {
            let (cid, mut intact) = cid_of(dcid);
            let len = len_byte.unwrap_or(cid.len() as u8);
            if usize::from(len) != cid.len() {
                intact = None;
            }
            let mut data = vec![first | 0x80];
            data.extend_from_slice(&version.to_be_bytes());
            data.push(len);
            data.extend_from_slice(&cid);
            data.push(scid.len() as u8);
            data.extend_from_slice(scid);
            data.extend_from_slice(rest);
            (data, intact, 6 + cid.len())
        }
        Shape::Raw(b) => (b.clone(), None, 0),
    };
    if !r.damage.apply(&mut data, header_len) {
        intact = None;
    }
    Built {
        data,
        intact_owner: intact,
    }
}

/// The generators of shards `me` and (lazily) any other, with fixed seeds.
struct Gens {
    cfg: CidConfig,
    seed: u64,
    made: Vec<Option<ShardCidGenerator>>,
}

impl Gens {
    fn get(&mut self, shard: usize) -> &mut ShardCidGenerator {
        if self.made.len() <= shard {
            self.made.resize_with(shard + 1, || None);
        }
        let (cfg, seed) = (&self.cfg, self.seed);
        self.made[shard].get_or_insert_with(|| cfg.generator_seeded(shard, seed ^ shard as u64))
    }
}

/// How often each outcome came up: proof that the generators reach every branch.
#[derive(Debug, Default)]
struct Coverage {
    cases: u64,
    steered: u64,
    fallback: u64,
    handed_off: u64,
    malformed: u64,
    unknown_cid: u64,
    to_endpoint_short: u64,
    to_endpoint_long: u64,
    intact_ours: u64,
}

#[test]
fn inbound_path_before_the_endpoint() {
    let cov = std::cell::RefCell::new(Coverage::default());
    let start = std::time::Instant::now();
    let mut runner = proptest::test_runner::TestRunner::new(fuzzkit::fuzz_config());
    let result = runner.run(&(layout(), recipe()), |(l, r)| {
        let cfg = l.cid_config();
        let (n, me, cid_len, key) = (l.n, l.me, cfg.cid_len(), *cfg.shard_key());
        prop_assert!(cid_len <= 20);
        let mut gens = Gens {
            cfg,
            seed: l.seed,
            made: Vec::new(),
        };
        let b = build(&r, n, &mut |s| gens.get(s).generate_cid());
        let d = &b.data[..];

        // 1. the steering rule: in range, and exactly what the kernel's BPF program does
        let owner = owner_shard(d, cid_len, n, &key);
        if let Some(o) = owner {
            prop_assert!(o < n);
        }
        let bpf = run_bpf(&steering_program(cid_len, n, &key), d).map_err(TestCaseError::fail)?;
        prop_assert!(
            bpf == BPF_FALLBACK || (bpf as usize) < n,
            "bpf returned {}",
            bpf
        );
        prop_assert_eq!(Some(bpf as usize).filter(|&i| i < n), owner);

        // 2. the handoff decision on shard `me`
        let target = handoff_target(d, cid_len, n, &key, me);
        let want = if n > 1 {
            owner.filter(|&o| o != me)
        } else {
            None
        };
        prop_assert_eq!(target, want);

        // 3. the check before the endpoint, with shard `me`'s real generator
        let gen_me = gens.get(me);
        let check = check_before_endpoint(d, cid_len, |c| gen_me.validate(c).is_ok());
        let short_dcid = match d.first() {
            Some(&f) if f & 0x80 == 0 => d.get(1..1 + cid_len),
            _ => None,
        };
        let valid_on_me = short_dcid.map(|c| gen_me.validate(&ConnectionId::new(c)).is_ok());
        match (d.first(), short_dcid, valid_on_me) {
            (None, _, _) => prop_assert_eq!(check, Err(EarlyDrop::Malformed)),
            (Some(&f), None, _) if f & 0x80 == 0 => {
                prop_assert_eq!(check, Err(EarlyDrop::Malformed))
            }
            (Some(_), Some(_), Some(false)) => prop_assert_eq!(check, Err(EarlyDrop::UnknownCid)),
            _ => prop_assert_eq!(check, Ok(())),
        }

        // 4. a short header that reaches shard `me`'s endpoint is steered to `me`: a CID that
        //    validates on one shard never lands on another (no stateless reset from the wrong
        //    shard)
        if check.is_ok() && d.first().is_some_and(|&f| f & 0x80 == 0) && n > 1 {
            prop_assert_eq!(owner, Some(me));
        }

        {
            let mut c = cov.borrow_mut();
            c.cases += 1;
            c.steered += u64::from(owner.is_some());
            c.fallback += u64::from(owner.is_none());
            c.handed_off += u64::from(target.is_some());
            match check {
                Err(EarlyDrop::Malformed) => c.malformed += 1,
                Err(EarlyDrop::UnknownCid) => c.unknown_cid += 1,
                Ok(()) if short_dcid.is_some() => c.to_endpoint_short += 1,
                Ok(()) => c.to_endpoint_long += 1,
            }
            c.intact_ours += u64::from(b.intact_owner.is_some());
        }

        // 5. an intact CID a shard issued is steered to that shard and passes only its check
        if let Some(t) = b.intact_owner {
            if n > 1 {
                prop_assert_eq!(owner, Some(t));
            }
            if d[0] & 0x80 == 0 {
                prop_assert_eq!(check.is_ok(), t == me);
                let gen_t = gens.get(t);
                prop_assert!(
                    check_before_endpoint(d, cid_len, |c| gen_t.validate(c).is_ok()).is_ok()
                );
            }
        }
        Ok(())
    });
    let cov = cov.into_inner();
    // every branch was reached (certain at the default case count)
    fuzzkit::finish(
        result,
        &cov,
        cov.cases,
        start,
        200,
        &[
            ("steered", cov.steered),
            ("fallback", cov.fallback),
            ("handed_off", cov.handed_off),
            ("malformed", cov.malformed),
            ("unknown_cid", cov.unknown_cid),
            ("to_endpoint_short", cov.to_endpoint_short),
            ("to_endpoint_long", cov.to_endpoint_long),
            ("intact_ours", cov.intact_ours),
        ],
    );
}
