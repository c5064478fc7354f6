//! Connection IDs: the QUIC-LB part from `quic_lb::Generator` followed by one shard byte.
//!
//! `cid = QUIC-LB part (1 + server_id_len + nonce_len octets) || shard byte`. The shard byte is
//! `shard ^ steer::shard_mask(key, QUIC-LB part)`: the shard masked by a keyed hash of the octets
//! before it (see [`crate::steer`] for the hash and the BPF program that inverts it). Every CID
//! has a fresh nonce, so to an observer without the key the shard byte is a uniform random octet,
//! independent of the shard and of the connection's other CIDs.
//! [`ShardCidGenerator`] implements `quinn_proto::ConnectionIdGenerator`; its `validate` rejects
//! CIDs with the wrong length, config rotation bits, self-encoded length or shard, so quinn-proto
//! drops such packets silently instead of answering with a stateless reset.
//!
//! [`CidConfig`] is what all shards share: the QUIC-LB config, the server ID, the shard count and
//! the [`ShardKey`].

use std::time::Duration;

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};
use rand::{rngs::SmallRng, Rng, SeedableRng};

pub use crate::steer::ShardKey;
use crate::steer::{shard_byte, shard_mask, MAX_SLOTTED_SHARDS};

/// Octets appended after the QUIC-LB part: the shard byte.
pub const SHARD_BYTE_LEN: usize = 1;

/// Largest shard count: the shard byte must leave at least one value per shard.
pub const MAX_SHARDS: usize = 256;

/// Default server ID length of a standalone server (no QUIC-LB config given).
pub const DEFAULT_SERVER_ID_LEN: usize = 2;
/// Default nonce length: with a 2-octet server ID, 16 octets are one AES block (single pass).
pub const DEFAULT_NONCE_LEN: usize = 14;

/// Why a CID configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum CidConfigError {
    /// The QUIC-LB config has no room for the shard byte, or the server ID has the wrong length.
    #[error("QUIC-LB config: {0}")]
    Config(#[from] quic_lb::ConfigError),
    /// Shard count must be in 1..=256: the shard byte holds the shard.
    #[error("shard count {0} is out of range: must be 1..=256")]
    Shards(usize),
    /// A handover slot needs a slot of 0 or 1 and at most 128 shards.
    #[error("slot {0} with {1} shards: a handover needs slot 0 or 1 and at most 128 shards")]
    Slot(u8, usize),
}

/// The CID layout shared by all shards of one engine.
#[derive(Debug, Clone)]
pub struct CidConfig {
    config: quic_lb::Config,
    server_id: Vec<u8>,
    n_shards: usize,
    key: ShardKey,
    /// The slot bit of every CID's shard byte ([`crate::steer::Group::Slots`]).
    slot: u8,
}

impl CidConfig {
    /// `config` must not declare extra octets yet: the shard byte is added here. The shard key
    /// is random ([`CidConfig::with_shard_key`] sets it).
    pub fn new(
        config: quic_lb::Config,
        server_id: &[u8],
        n_shards: usize,
    ) -> Result<Self, CidConfigError> {
        if n_shards == 0 || n_shards > MAX_SHARDS {
            return Err(CidConfigError::Shards(n_shards));
        }
        let config = config.with_extra_len(SHARD_BYTE_LEN)?;
        if server_id.len() != config.server_id_len() {
            return Err(quic_lb::ConfigError::ServerIdMismatch {
                got: server_id.len(),
                want: config.server_id_len(),
            }
            .into());
        }
        Ok(Self {
            config,
            server_id: server_id.to_vec(),
            n_shards,
            key: ShardKey::random(),
            slot: 0,
        })
    }

    /// The same layout issuing CIDs of `slot` (0 or 1; see [`crate::steer::Group::Slots`]).
    ///
    /// # Errors
    ///
    /// [`CidConfigError::Slot`] for slot 1 with more than 128 shards (no room for the bit) or a
    /// slot above 1.
    pub fn with_slot(mut self, slot: u8) -> Result<Self, CidConfigError> {
        if slot > 1 || (slot == 1 && self.n_shards > MAX_SLOTTED_SHARDS) {
            return Err(CidConfigError::Slot(slot, self.n_shards));
        }
        self.slot = slot;
        Ok(self)
    }

    /// The slot of this layout's CIDs.
    pub fn slot(&self) -> u8 {
        self.slot
    }

    /// The same layout with the shard byte masked under `key`.
    pub fn with_shard_key(mut self, key: ShardKey) -> Self {
        self.key = key;
        self
    }

    /// A standalone server: config ID 0, a random 2-octet server ID, a 14-octet nonce and a random
    /// AES key (single-pass encryption); 18-octet CIDs.
    pub fn standalone(n_shards: usize) -> Result<Self, CidConfigError> {
        let mut rng = rand::rng();
        let key: [u8; 16] = rng.random();
        let sid: [u8; DEFAULT_SERVER_ID_LEN] = rng.random();
        let config = quic_lb::Config::new(0, DEFAULT_SERVER_ID_LEN, DEFAULT_NONCE_LEN, Some(key))?;
        Self::new(config, &sid, n_shards)
    }

    /// The full CID length, shard byte included.
    pub fn cid_len(&self) -> usize {
        self.config.cid_len()
    }
    /// The QUIC-LB config (with the shard byte declared as one extra octet).
    pub fn lb_config(&self) -> &quic_lb::Config {
        &self.config
    }
    /// This server's ID.
    pub fn server_id(&self) -> &[u8] {
        &self.server_id
    }
    /// Number of shards.
    pub fn n_shards(&self) -> usize {
        self.n_shards
    }
    /// The key of the shard byte's mask (the steering program's constants).
    pub fn shard_key(&self) -> &ShardKey {
        &self.key
    }

    /// The generator for `shard`, seeded from the OS.
    pub fn generator(&self, shard: usize) -> ShardCidGenerator {
        let seed: u64 = rand::rng().random();
        self.generator_seeded(shard, seed)
    }

    /// The generator for `shard` with a fixed seed (deterministic tests).
    pub fn generator_seeded(&self, shard: usize, seed: u64) -> ShardCidGenerator {
        assert!(shard < self.n_shards, "shard {shard} out of range");
        let codec = quic_lb::Codec::new(self.config);
        // invariant: CidConfig::new checked the server ID length against the config
        let lb = quic_lb::Generator::new(codec, &self.server_id, seed)
            .expect("server id length checked in CidConfig::new");
        ShardCidGenerator {
            lb,
            shard,
            key: self.key,
            slot: self.slot,
            cid_len: self.config.cid_len(),
            rng: SmallRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
        }
    }
}

/// `quinn_proto::ConnectionIdGenerator` for one shard.
pub struct ShardCidGenerator {
    lb: quic_lb::Generator,
    shard: usize,
    key: ShardKey,
    slot: u8,
    cid_len: usize,
    rng: SmallRng,
}

impl ShardCidGenerator {
    /// The shard this generator issues CIDs for.
    pub fn shard(&self) -> usize {
        self.shard
    }

    fn check(&self, cid: &[u8]) -> bool {
        let config = self.lb.codec().config();
        if cid.len() != self.cid_len {
            return false;
        }
        let first = cid[0];
        if first >> 5 != config.config_id() {
            return false;
        }
        if config.self_encodes_length() && usize::from(first & 0x1f) != self.cid_len - 1 {
            return false;
        }
        let last = self.cid_len - 1;
        cid[last] ^ shard_mask(&self.key, &cid[..last]) == shard_byte(self.shard, self.slot)
    }
}

impl ConnectionIdGenerator for ShardCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut buf = [0u8; quic_lb::MAX_CID_LEN];
        let lb_len = match self.lb.generate(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                // Nonce space exhausted: still issue a CID this shard owns, random but with our
                // config bits, so steering works; the LB will treat it as unroutable-ish.
                tracing::error!(error = %e, "QUIC-LB generator failed; issuing a random CID");
                let config = self.lb.codec().config();
                self.rng.fill(&mut buf[..config.lb_len()]);
                let low = if config.self_encodes_length() {
                    (self.cid_len - 1) as u8
                } else {
                    buf[0] & 0x1f
                };
                buf[0] = (config.config_id() << 5) | low;
                config.lb_len()
            }
        };
        buf[lb_len] = shard_byte(self.shard, self.slot) ^ shard_mask(&self.key, &buf[..lb_len]);
        ConnectionId::new(&buf[..self.cid_len])
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if self.check(cid) {
            Ok(())
        } else {
            Err(InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        self.cid_len
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steer::{owner_shard, steering_program};
    use crate::testing::run_bpf;
    use proptest::prelude::*;

    const KEY: [u8; 16] = [0x3c; 16];

    /// Pearson's chi-square statistic of `counts` against the uniform distribution.
    fn chi_square(counts: &[u64]) -> f64 {
        let total: u64 = counts.iter().sum();
        let expected = total as f64 / counts.len() as f64;
        counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum()
    }

    /// 99.9th percentile of chi-square with 255 degrees of freedom (Wilson-Hilferty: 330.5).
    const CHI2_255_P999: f64 = 330.5;

    fn layouts() -> Vec<(&'static str, quic_lb::Config, Vec<u8>)> {
        vec![
            (
                "plaintext",
                quic_lb::Config::new(1, 3, 6, None).unwrap(),
                vec![1, 2, 3],
            ),
            (
                "single_pass",
                quic_lb::Config::new(2, 2, 14, Some([9; 16])).unwrap(),
                vec![4, 5],
            ),
            (
                "four_pass",
                quic_lb::Config::new(3, 3, 4, Some([7; 16])).unwrap(),
                vec![6, 7, 8],
            ),
        ]
    }

    #[test]
    fn shard_byte_is_uniform_and_unlinkable() {
        const CIDS: usize = 256 * 100;
        for (name, config, sid) in layouts() {
            for n in [2, 3, 8] {
                let cfg = CidConfig::new(config, &sid, n)
                    .unwrap()
                    .with_shard_key(ShardKey::from_bytes(KEY));
                let mut g = cfg.generator_seeded(1, n as u64);
                let last = cfg.cid_len() - 1;
                let (mut bytes, mut pairs) = ([0u64; 256], [0u64; 256]);
                let mut previous = None;
                for _ in 0..CIDS {
                    let b = g.generate_cid()[last];
                    bytes[usize::from(b)] += 1;
                    // Two CIDs of one connection (consecutive CIDs of one shard): an observer
                    // comparing their shard bytes sees a uniform difference.
                    if let Some(p) = previous.take() {
                        pairs[usize::from(b ^ p)] += 1;
                    } else {
                        previous = Some(b);
                    }
                }
                let (c1, c2) = (chi_square(&bytes), chi_square(&pairs));
                assert!(c1 < CHI2_255_P999, "{name} n={n}: shard bytes chi2 {c1}");
                assert!(c2 < CHI2_255_P999, "{name} n={n}: pair XOR chi2 {c2}");
            }
        }
    }

    fn layout() -> impl Strategy<Value = (quic_lb::Config, Vec<u8>)> {
        (
            0u8..=6,
            1usize..=6,
            4usize..=12,
            proptest::option::of(any::<[u8; 16]>()),
            any::<bool>(),
        )
            .prop_map(|(id, sid_len, nonce_len, key, self_len)| {
                let config = quic_lb::Config::new(id, sid_len, nonce_len, key)
                    .unwrap()
                    .with_self_encoded_length(self_len);
                (config, vec![0x5a; sid_len])
            })
    }

    proptest! {
        /// A CID of either handover slot goes to that slot's socket of its shard, and only its
        /// own slot's generator takes it.
        #[test]
        fn a_slotted_cid_steers_to_its_slot_and_is_only_valid_there(
            (config, sid) in layout(),
            n in prop_oneof![1usize..=8, Just(128usize)],
            shard in any::<usize>(),
            slot in 0u8..=1,
            seed in any::<u64>(),
        ) {
            let shard = shard % n;
            let base = CidConfig::new(config, &sid, n).unwrap();
            let cfg = base.clone().with_slot(slot).unwrap();
            let key = *cfg.shard_key();
            let other = base.with_slot(1 - slot).unwrap().generator_seeded(shard, seed);
            let group = crate::steer::Group::Slots { active: 1 - slot, by_cid: true };
            let program = crate::steer::program(cfg.cid_len(), n, &key, group);
            let mut g = cfg.generator_seeded(shard, seed);
            for _ in 0..4 {
                let cid = g.generate_cid();
                prop_assert!(g.validate(&cid).is_ok());
                prop_assert!(other.validate(&cid).is_err(), "the other slot's shard takes it");
                let short = [&[0x40][..], &cid, &[0; 24]].concat();
                let want = usize::from(slot) * n + shard;
                prop_assert_eq!(run_bpf(&program, &short).map_err(TestCaseError::fail)?, want as u32);
            }
        }

        /// The program in the interpreter, the Rust twin and the generator agree on every CID,
        /// in short and long headers, for every layout (plaintext and encrypted) and shard count.
        #[test]
        fn every_cid_steers_to_its_shard(
            (config, sid) in layout(),
            n in prop_oneof![1usize..=8, Just(255usize), Just(256usize)],
            shard in any::<usize>(),
            seed in any::<u64>(),
            key in any::<[u8; 16]>(),
        ) {
            let shard = shard % n;
            let key = ShardKey::from_bytes(key);
            let cfg = CidConfig::new(config, &sid, n).unwrap().with_shard_key(key);
            let cid_len = cfg.cid_len();
            let program = steering_program(cid_len, n, &key);
            let mut g = cfg.generator_seeded(shard, seed);
            for _ in 0..4 {
                let cid = g.generate_cid();
                prop_assert!(g.validate(&cid).is_ok());
                let short = [&[0x40][..], &cid, &[0; 24]].concat();
                let long = [&[0xc0, 0, 0, 0, 1, cid_len as u8][..], &cid, &[0; 24]].concat();
                for d in [short, long] {
                    prop_assert_eq!(owner_shard(&d, cid_len, n, &key), Some(shard));
                    prop_assert_eq!(run_bpf(&program, &d).map_err(TestCaseError::fail)?, shard as u32);
                }
            }
        }
    }

    #[test]
    fn generated_cids_validate_only_on_their_shard() {
        let cfg = CidConfig::standalone(4).unwrap();
        assert_eq!(cfg.cid_len(), 18);
        let mut gens: Vec<_> = (0..4)
            .map(|s| cfg.generator_seeded(s, s as u64 + 7))
            .collect();
        for s in 0..4 {
            for _ in 0..100 {
                let cid = gens[s].generate_cid();
                assert_eq!(cid.len(), 18);
                let short = [&[0x40][..], &cid].concat();
                assert_eq!(owner_shard(&short, 18, 4, cfg.shard_key()), Some(s));
                for (t, g) in gens.iter().enumerate() {
                    assert_eq!(g.validate(&cid).is_ok(), t == s);
                }
            }
        }
    }

    #[test]
    fn the_key_is_settable_and_used() {
        let config = quic_lb::Config::new(1, 2, 6, None).unwrap();
        let a = CidConfig::new(config, &[1, 2], 8).unwrap();
        let key = ShardKey::from_bytes(KEY);
        let b = a.clone().with_shard_key(key);
        assert_eq!(b.shard_key(), &key);
        assert_ne!(a.shard_key(), b.shard_key(), "new() draws a random key");
        // A generator under another key issues CIDs the first key does not steer to shard 5
        // (for some CID: the masks differ).
        let mut g = b.generator_seeded(5, 1);
        let misrouted = (0..16).any(|_| {
            let short = [&[0x40][..], &g.generate_cid()].concat();
            owner_shard(&short, b.cid_len(), 8, a.shard_key()) != Some(5)
        });
        assert!(misrouted);
    }

    #[test]
    fn validate_rejects_wrong_shape() {
        let cfg =
            CidConfig::new(quic_lb::Config::new(2, 3, 6, None).unwrap(), &[1, 2, 3], 3).unwrap();
        let mut g = cfg.generator_seeded(1, 9);
        let cid = g.generate_cid();
        assert!(g.validate(&cid).is_ok());
        let mut bad = cid.to_vec();
        bad[0] ^= 0x20; // config id
        assert!(g.validate(&ConnectionId::new(&bad)).is_err());
        assert!(g
            .validate(&ConnectionId::new(&cid[..cid.len() - 1]))
            .is_err());
        let mut bad = cid.to_vec();
        bad[cid.len() - 1] ^= 3; // unmasks to shard 2
        assert!(g.validate(&ConnectionId::new(&bad)).is_err());
        assert!(cfg
            .generator_seeded(2, 9)
            .validate(&ConnectionId::new(&bad))
            .is_ok());
        assert!(g.validate(&ConnectionId::new(&[0u8; 8])).is_err());
    }

    #[test]
    fn bad_configs_are_refused() {
        let c = quic_lb::Config::new(0, 9, 10, None).unwrap();
        assert!(CidConfig::new(c, &[0; 9], 4).is_err()); // no room for the shard byte
        let c = quic_lb::Config::new(0, 2, 4, None).unwrap();
        assert!(CidConfig::new(c, &[0; 3], 4).is_err());
        assert!(CidConfig::new(c, &[0; 2], 0).is_err());
        assert!(CidConfig::new(c, &[0; 2], 257).is_err());
    }
}
