//! Validated QUIC-LB configurations: what a load balancer and its servers agree on.
//!
//! A [`Config`] is one configuration of draft-ietf-quic-load-balancers-21 §3: a config rotation
//! codepoint, the server ID and nonce lengths, an optional AES-128 key, whether the first octet
//! self-encodes the CID length, and how many extra octets the server appends after the QUIC-LB
//! part. Every constructor validates; an invalid config is a [`ConfigError`] naming the field.

/// The longest connection ID QUIC v1 allows (RFC 9000 §17.2).
pub const MAX_CID_LEN: usize = 20;

/// The config rotation codepoint reserved for unroutable connection IDs (draft-21 §3.1).
pub const UNROUTABLE_CONFIG_ID: u8 = 0b111;

/// Smallest nonce the draft allows (draft-21 §5.2: at least 4 octets).
pub const MIN_NONCE_LEN: usize = 4;

/// Largest `server_id_len + nonce_len + extra_len`: the CID minus its first octet.
pub const MAX_BODY_LEN: usize = MAX_CID_LEN - 1;

/// Which algorithm a config uses, implied by its key and lengths (draft-21 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No key: server ID and nonce appear in the clear.
    Plaintext,
    /// Key and `server_id_len + nonce_len == 16`: one AES-128-ECB block.
    SinglePass,
    /// Key and any other length: a four-pass Feistel network built on AES-128-ECB.
    FourPass,
}

/// A validated QUIC-LB configuration.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Config {
    config_id: u8,
    server_id_len: u8,
    nonce_len: u8,
    extra_len: u8,
    key: Option<[u8; 16]>,
    self_encode_length: bool,
}

/// Why a configuration was refused. Each message names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `config_id` must be 0..=6; 7 (0b111) marks unroutable CIDs. Pick another codepoint.
    #[error("config_id {0} is out of range: must be 0..=6 (7 is reserved for unroutable CIDs)")]
    ConfigId(u8),
    /// `server_id_len` must be at least 1.
    #[error("server_id_len {0} is out of range: must be at least 1")]
    ServerIdLen(usize),
    /// `nonce_len` must be at least 4.
    #[error("nonce_len {0} is out of range: must be at least 4")]
    NonceLen(usize),
    /// `server_id_len + nonce_len (+ extra_len)` must fit in a 20-octet CID after the first octet.
    #[error("server_id_len + nonce_len + extra_len = {0} is too long: must be at most 19")]
    TooLong(usize),
    /// A key must be exactly 16 octets (AES-128).
    #[error("key must be 16 bytes (32 hex digits), got {0} bytes")]
    KeyLen(usize),
    /// A server ID handed to a generator must be exactly `server_id_len` octets.
    #[error("server_id is {got} bytes but the config's server_id_len is {want}")]
    ServerIdMismatch {
        /// Octets given.
        got: usize,
        /// Octets the config needs.
        want: usize,
    },
}

impl Config {
    /// A config with the length self-encoded in the first octet and no extra octets.
    ///
    /// # Examples
    /// ```
    /// let c = quic_lb::Config::new(0, 3, 4, None).unwrap();
    /// assert_eq!(c.cid_len(), 8);
    /// assert!(quic_lb::Config::new(7, 3, 4, None).is_err());
    /// ```
    pub fn new(
        config_id: u8,
        server_id_len: usize,
        nonce_len: usize,
        key: Option<[u8; 16]>,
    ) -> Result<Self, ConfigError> {
        if config_id >= UNROUTABLE_CONFIG_ID {
            return Err(ConfigError::ConfigId(config_id));
        }
        if server_id_len == 0 {
            return Err(ConfigError::ServerIdLen(server_id_len));
        }
        if nonce_len < MIN_NONCE_LEN {
            return Err(ConfigError::NonceLen(nonce_len));
        }
        check_body_len(server_id_len + nonce_len)?;
        Ok(Self {
            config_id,
            // both fit in u8: their sum is at most 19 (checked above)
            server_id_len: server_id_len as u8,
            nonce_len: nonce_len as u8,
            extra_len: 0,
            key,
            self_encode_length: true,
        })
    }

    /// Like [`Config::new`], with the key as a slice whose length is checked.
    pub fn with_key_slice(
        config_id: u8,
        server_id_len: usize,
        nonce_len: usize,
        key: Option<&[u8]>,
    ) -> Result<Self, ConfigError> {
        let key = match key {
            None => None,
            Some(k) => Some(<[u8; 16]>::try_from(k).map_err(|_| ConfigError::KeyLen(k.len()))?),
        };
        Self::new(config_id, server_id_len, nonce_len, key)
    }

    /// Declares `extra` octets that the server appends after the QUIC-LB part (the engine appends
    /// a shard byte). They count in the self-encoded length; decoders ignore them.
    pub fn with_extra_len(mut self, extra: usize) -> Result<Self, ConfigError> {
        check_body_len(self.server_id_len as usize + self.nonce_len as usize + extra)?;
        self.extra_len = extra as u8;
        Ok(self)
    }

    /// Whether the low five bits of the first octet carry `cid_len - 1` (default) or random bits.
    pub fn with_self_encoded_length(mut self, on: bool) -> Self {
        self.self_encode_length = on;
        self
    }

    /// The config rotation codepoint, 0..=6.
    pub fn config_id(&self) -> u8 {
        self.config_id
    }
    /// Octets of server ID.
    pub fn server_id_len(&self) -> usize {
        self.server_id_len as usize
    }
    /// Octets of nonce.
    pub fn nonce_len(&self) -> usize {
        self.nonce_len as usize
    }
    /// Octets the server appends after the QUIC-LB part.
    pub fn extra_len(&self) -> usize {
        self.extra_len as usize
    }
    /// The AES-128 key, if the config encrypts.
    pub fn key(&self) -> Option<&[u8; 16]> {
        self.key.as_ref()
    }
    /// Whether the first octet self-encodes the CID length.
    pub fn self_encodes_length(&self) -> bool {
        self.self_encode_length
    }
    /// `server_id_len + nonce_len`: the octets the cipher covers.
    pub fn plaintext_len(&self) -> usize {
        self.server_id_len() + self.nonce_len()
    }
    /// `1 + server_id_len + nonce_len`: the octets a decoder reads.
    pub fn lb_len(&self) -> usize {
        1 + self.plaintext_len()
    }
    /// The whole CID length: the QUIC-LB part plus the extra octets.
    pub fn cid_len(&self) -> usize {
        self.lb_len() + self.extra_len()
    }
    /// The algorithm this config uses.
    pub fn mode(&self) -> Mode {
        match self.key {
            None => Mode::Plaintext,
            Some(_) if self.plaintext_len() == 16 => Mode::SinglePass,
            Some(_) => Mode::FourPass,
        }
    }
}

/// Keys stay out of logs.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("config_id", &self.config_id)
            .field("server_id_len", &self.server_id_len)
            .field("nonce_len", &self.nonce_len)
            .field("extra_len", &self.extra_len)
            .field("mode", &self.mode())
            .field("self_encode_length", &self.self_encode_length)
            .finish()
    }
}

fn check_body_len(len: usize) -> Result<(), ConfigError> {
    if len > MAX_BODY_LEN {
        return Err(ConfigError::TooLong(len));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        assert_eq!(Config::new(7, 3, 4, None), Err(ConfigError::ConfigId(7)));
        assert_eq!(Config::new(0, 0, 4, None), Err(ConfigError::ServerIdLen(0)));
        assert_eq!(Config::new(0, 3, 3, None), Err(ConfigError::NonceLen(3)));
        assert_eq!(Config::new(0, 10, 10, None), Err(ConfigError::TooLong(20)));
        assert_eq!(
            Config::with_key_slice(0, 3, 4, Some(&[0; 15])),
            Err(ConfigError::KeyLen(15))
        );
        let c = Config::new(0, 9, 10, None).unwrap();
        assert_eq!(c.with_extra_len(1), Err(ConfigError::TooLong(20)));
        assert!(ConfigError::NonceLen(3).to_string().contains("nonce_len"));
    }

    #[test]
    fn mode_follows_key_and_length() {
        let k = Some([1; 16]);
        assert_eq!(Config::new(0, 3, 4, None).unwrap().mode(), Mode::Plaintext);
        assert_eq!(Config::new(0, 8, 8, k).unwrap().mode(), Mode::SinglePass);
        assert_eq!(Config::new(0, 3, 4, k).unwrap().mode(), Mode::FourPass);
        assert_eq!(
            Config::new(1, 2, 14, None)
                .unwrap()
                .with_extra_len(1)
                .unwrap()
                .cid_len(),
            18
        );
    }
}
