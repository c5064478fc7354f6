//! Connection IDs: the QUIC-LB part from `quic_lb::Generator` followed by one shard byte.
//!
//! `cid = QUIC-LB part (1 + server_id_len + nonce_len octets) || shard byte`. The shard byte is
//! drawn at random among the values `v < 256 - 256 % N` with `v % N == shard`, so every shard byte
//! value is equally likely for its shard and the byte is not a constant that links a client's CIDs.
//! [`ShardCidGenerator`] implements `quinn_proto::ConnectionIdGenerator`; its `validate` rejects
//! CIDs with the wrong length, config rotation bits, self-encoded length or shard, so quinn-proto
//! drops such packets silently instead of answering with a stateless reset.
//!
//! [`CidConfig`] is what all shards share: the QUIC-LB config, the server ID and the shard count.

use std::time::Duration;

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};
use rand::{rngs::SmallRng, Rng, SeedableRng};

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
    /// Shard count must be in 1..=256 so each shard owns at least one shard-byte value.
    #[error("shard count {0} is out of range: must be 1..=256")]
    Shards(usize),
}

/// The CID layout shared by all shards of one engine.
#[derive(Debug, Clone)]
pub struct CidConfig {
    config: quic_lb::Config,
    server_id: Vec<u8>,
    n_shards: usize,
}

impl CidConfig {
    /// `config` must not declare extra octets yet: the shard byte is added here.
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
        })
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
            n_shards: self.n_shards,
            cid_len: self.config.cid_len(),
            rng: SmallRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
        }
    }
}

/// Values below this are valid shard bytes; at and above it, `v % n` would favour low shards.
pub fn shard_byte_limit(n_shards: usize) -> usize {
    256 - 256 % n_shards
}

/// A uniformly random shard byte for `shard` out of `n_shards`.
pub fn random_shard_byte(rng: &mut impl Rng, shard: usize, n_shards: usize) -> u8 {
    let per_shard = shard_byte_limit(n_shards) / n_shards;
    let i = rng.random_range(0..per_shard);
    // < 256: i * n + shard <= (per_shard - 1) * n + n - 1 = limit - 1 <= 255
    (i * n_shards + shard) as u8
}

/// `quinn_proto::ConnectionIdGenerator` for one shard.
pub struct ShardCidGenerator {
    lb: quic_lb::Generator,
    shard: usize,
    n_shards: usize,
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
        let shard_byte = usize::from(cid[self.cid_len - 1]);
        shard_byte < shard_byte_limit(self.n_shards) && shard_byte % self.n_shards == self.shard
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
        buf[lb_len] = random_shard_byte(&mut self.rng, self.shard, self.n_shards);
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

    #[test]
    fn shard_bytes_are_uniform_and_owned() {
        let mut rng = SmallRng::seed_from_u64(1);
        for n in [1, 2, 3, 4, 7, 200, 256] {
            for shard in 0..n {
                for _ in 0..50 {
                    let v = usize::from(random_shard_byte(&mut rng, shard, n));
                    assert_eq!(v % n, shard);
                    assert!(v < shard_byte_limit(n));
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
                assert_eq!(usize::from(cid[17]) % 4, s);
                for (t, g) in gens.iter().enumerate() {
                    assert_eq!(g.validate(&cid).is_ok(), t == s);
                }
            }
        }
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
        bad[cid.len() - 1] = 255; // >= 256 - 256 % 3 = 255
        assert!(g.validate(&ConnectionId::new(&bad)).is_err());
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
