//! Server-side CID generation that never reuses a nonce under one key.
//!
//! Plaintext configs fill the nonce with random octets (draft-21 §5.2.1: the nonce only needs to
//! make CIDs unlinkable to observers). Encrypted configs use a counter that starts at a random
//! value and wraps around; the generator reports exhaustion once every value has been used
//! (draft-21 §5.4.1: a nonce MUST NOT repeat under one key), so the server can move to a new
//! config. Randomness comes from a caller-provided seed: the generator never reads the OS.

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::codec::{Codec, ServerId};
use crate::config::{ConfigError, Mode, MAX_BODY_LEN};

/// Generates fresh CIDs for one server under one config.
///
/// # Examples
/// ```
/// use quic_lb::{Codec, Config, Generator};
/// let codec = Codec::new(Config::new(0, 2, 6, Some([7; 16])).unwrap());
/// let mut g = Generator::new(codec, &[0x12, 0x34], 42).unwrap();
/// let mut cid = [0u8; 20];
/// let n = g.generate(&mut cid).unwrap();
/// assert_eq!(g.codec().decode_server_id(&cid[..n]).unwrap().as_bytes(), &[0x12, 0x34]);
/// ```
pub struct Generator {
    codec: Codec,
    server_id: ServerId,
    rng: StdRng,
    /// Encrypted mode: the next nonce, big-endian.
    counter: [u8; MAX_BODY_LEN],
    /// Encrypted mode: the first nonce handed out; reaching it again means exhaustion.
    start: [u8; MAX_BODY_LEN],
    exhausted: bool,
}

/// Why no CID was generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    /// Every nonce of this config has been used under its key. Install a config with a new key
    /// (or a longer nonce) and a new codepoint.
    #[error("nonce space exhausted: every nonce of this config has been used; rotate the config")]
    Exhausted,
    /// The output buffer must hold at least `lb_len` octets.
    #[error("output buffer is {got} bytes, need {want}")]
    Buffer {
        /// Octets available.
        got: usize,
        /// Octets needed.
        want: usize,
    },
}

impl Generator {
    /// A generator for `server_id` (exactly `server_id_len` octets), seeded with `seed`.
    pub fn new(codec: Codec, server_id: &[u8], seed: u64) -> Result<Self, ConfigError> {
        let want = codec.config().server_id_len();
        let server_id = ServerId::new(server_id)
            .filter(|s| s.as_bytes().len() == want)
            .ok_or(ConfigError::ServerIdMismatch {
                got: server_id.len(),
                want,
            })?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut counter = [0; MAX_BODY_LEN];
        rng.fill_bytes(&mut counter[..codec.config().nonce_len()]);
        Ok(Self {
            codec,
            server_id,
            rng,
            start: counter,
            counter,
            exhausted: false,
        })
    }

    /// The codec this generator encodes with.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// The server ID every generated CID carries.
    pub fn server_id(&self) -> ServerId {
        self.server_id
    }

    /// Writes a fresh QUIC-LB part (`lb_len` octets) into `out` and returns `lb_len`; the caller
    /// writes any extra octets after it.
    pub fn generate(&mut self, out: &mut [u8]) -> Result<usize, GenerateError> {
        let config = *self.codec.config();
        let want = config.lb_len();
        if out.len() < want {
            return Err(GenerateError::Buffer {
                got: out.len(),
                want,
            });
        }
        let nonce_len = config.nonce_len();
        let mut nonce = [0; MAX_BODY_LEN];
        if config.mode() == Mode::Plaintext {
            self.rng.fill_bytes(&mut nonce[..nonce_len]);
        } else {
            if self.exhausted {
                return Err(GenerateError::Exhausted);
            }
            nonce = self.counter;
            increment(&mut self.counter[..nonce_len]);
            self.exhausted = self.counter == self.start;
        }
        let random = (self.rng.next_u32() & 0xff) as u8;
        let n = self
            .codec
            .encode(self.server_id.as_bytes(), &nonce[..nonce_len], random, out)
            .expect("lengths checked: server ID by new(), nonce and buffer above");
        Ok(n)
    }
}

/// Big-endian increment with wrap-around.
fn increment(n: &mut [u8]) {
    for b in n.iter_mut().rev() {
        let (v, carry) = b.overflowing_add(1);
        *b = v;
        if !carry {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use std::collections::HashSet;

    #[test]
    fn encrypted_nonces_never_repeat_and_exhaust() {
        let codec = Codec::new(Config::new(0, 1, 4, Some([3; 16])).unwrap());
        let mut g = Generator::new(codec, &[9], 1).unwrap();
        // Shrink the space: pretend only 1000 nonces remain before wrapping to the start.
        let mut n = u32::from_be_bytes(g.start[..4].try_into().unwrap());
        n = n.wrapping_sub(1000);
        g.counter[..4].copy_from_slice(&n.to_be_bytes());
        let mut seen = HashSet::new();
        let mut cid = [0u8; 20];
        for _ in 0..1000 {
            let len = g.generate(&mut cid).unwrap();
            let d = g.codec().decode(&cid[..len]).unwrap();
            assert_eq!(d.server_id(), &[9]);
            assert!(seen.insert(d.nonce().to_vec()), "nonce reused");
        }
        assert_eq!(g.generate(&mut cid), Err(GenerateError::Exhausted));
    }

    #[test]
    fn increment_wraps() {
        let mut n = [0x00, 0xff, 0xff];
        increment(&mut n);
        assert_eq!(n, [0x01, 0, 0]);
        let mut n = [0xff, 0xff];
        increment(&mut n);
        assert_eq!(n, [0, 0]);
    }

    #[test]
    fn server_id_length_is_checked() {
        let codec = Codec::new(Config::new(0, 2, 4, None).unwrap());
        assert!(Generator::new(codec, &[1], 0).is_err());
    }
}
