//! The secrets an engine's connections depend on beyond their own keys: the shard key (the
//! steering program's constants), the token key (Retry and NEW_TOKEN tokens), the stateless
//! reset key and the session-ticket master secret. They are drawn at random once per engine,
//! and handed to the successor in a handover ([`crate::handover`]), so that tokens, stateless
//! resets, resumption and steering keep working across it.

use std::sync::Arc;

use crate::steer::ShardKey;

/// See the module docs. `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secrets {
    pub(crate) shard_key: ShardKey,
    pub(crate) token: [u8; 32],
    pub(crate) reset: [u8; 32],
    pub(crate) tickets: [u8; 32],
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

impl Secrets {
    /// Length of [`Secrets::to_bytes`].
    pub const LEN: usize = ShardKey::LEN + 3 * 32;

    /// Fresh secrets from the OS random source.
    pub fn random() -> Self {
        Self {
            shard_key: ShardKey::random(),
            token: rand::random(),
            reset: rand::random(),
            tickets: rand::random(),
        }
    }

    /// The secrets as octets (for a handover).
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        let k = ShardKey::LEN;
        out[..k].copy_from_slice(&self.shard_key.to_bytes());
        out[k..k + 32].copy_from_slice(&self.token);
        out[k + 32..k + 64].copy_from_slice(&self.reset);
        out[k + 64..].copy_from_slice(&self.tickets);
        out
    }

    /// The secrets [`Secrets::to_bytes`] wrote.
    pub fn from_bytes(b: &[u8; Self::LEN]) -> Self {
        let k = ShardKey::LEN;
        let part = |at: usize| -> [u8; 32] { b[at..at + 32].try_into().expect("32 octets") };
        Self {
            shard_key: ShardKey::from_bytes(b[..k].try_into().expect("16 octets")),
            token: part(k),
            reset: part(k + 32),
            tickets: part(k + 64),
        }
    }

    /// The shard key.
    pub fn shard_key(&self) -> ShardKey {
        self.shard_key
    }

    /// quinn-proto's handshake token key (HKDF-SHA256 of the token secret, as quinn-proto's
    /// own random one is).
    pub(crate) fn token_key(&self) -> Arc<dyn quinn_proto::crypto::HandshakeTokenKey> {
        Arc::new(ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(&self.token))
    }

    /// The endpoint config with this stateless reset key.
    pub(crate) fn endpoint_config(&self) -> quinn_proto::EndpointConfig {
        quinn_proto::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &self.reset,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_hides_itself() {
        let s = Secrets::random();
        assert_eq!(Secrets::from_bytes(&s.to_bytes()), s);
        assert_ne!(Secrets::random(), s);
        assert_eq!(format!("{s:?}"), "Secrets(..)");
    }
}
