//! Encoding and decoding one QUIC-LB configuration's connection IDs.
//!
//! A CID is `first octet || f(server_id || nonce) || extra`, where `f` is the identity
//! (plaintext), one AES block (single pass) or the four-pass Feistel network, and the first octet
//! carries the config rotation bits in its top three bits and either `cid_len - 1` or random bits
//! below (draft-21 §3). Decoding reads only the first `lb_len` octets; extra octets are ignored.
//!
//! # Panics
//! Nothing here panics on any input: lengths are checked before any slice is taken.

use crate::cipher::{Cipher, SCRATCH};
use crate::config::{Config, Mode, MAX_BODY_LEN, UNROUTABLE_CONFIG_ID};

/// Encodes and decodes the CIDs of one [`Config`], holding its expanded AES key.
///
/// # Examples
/// ```
/// use quic_lb::{Codec, Config};
/// let key = [0x8f; 16];
/// let codec = Codec::new(Config::new(1, 3, 5, Some(key)).unwrap());
/// let mut cid = [0u8; 20];
/// let n = codec.encode(&[0xaa, 0xbb, 0xcc], &[1, 2, 3, 4, 5], 0, &mut cid).unwrap();
/// let d = codec.decode(&cid[..n]).unwrap();
/// assert_eq!(d.config_id(), 1);
/// assert_eq!(d.server_id(), &[0xaa, 0xbb, 0xcc]);
/// assert_eq!(d.nonce(), &[1, 2, 3, 4, 5]);
/// ```
#[derive(Clone)]
pub struct Codec {
    config: Config,
    cipher: Option<Cipher>,
}

/// A decoded CID: its config codepoint, server ID and nonce.
#[derive(Clone, Copy)]
pub struct Decoded {
    config_id: u8,
    /// Server ID and nonce at `[..plaintext_len]`; the rest is the cipher's scratch space.
    plaintext: [u8; SCRATCH],
    server_id_len: u8,
    nonce_len: u8,
}

/// A server ID, copied out of a CID: small, `Copy`, usable as a map key. Equality, ordering and
/// hashing look only at its octets.
#[derive(Clone, Copy, Default)]
pub struct ServerId {
    bytes: [u8; MAX_BODY_LEN],
    len: u8,
}

/// Why a CID cannot be routed by its QUIC-LB contents (draft-21 §3: such CIDs are handled by the
/// load balancer's fallback).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unroutable {
    /// The config rotation bits are 0b111: the server chose an unroutable CID on purpose.
    #[error("unroutable: config rotation bits are 0b111 (reserved)")]
    Reserved,
    /// No configuration is installed for these config rotation bits.
    #[error("unroutable: no config for config rotation bits {0}")]
    UnknownConfig(u8),
    /// The CID is shorter than the config's QUIC-LB part.
    #[error("unroutable: CID is {len} bytes, config needs at least {need}")]
    TooShort {
        /// Octets in the CID.
        len: usize,
        /// Octets the config reads.
        need: usize,
    },
}

/// Why a CID could not be encoded: an argument does not fit the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The server ID must be exactly `server_id_len` octets.
    #[error("server_id is {got} bytes but the config's server_id_len is {want}")]
    ServerIdLen {
        /// Octets given.
        got: usize,
        /// Octets the config needs.
        want: usize,
    },
    /// The nonce must be exactly `nonce_len` octets.
    #[error("nonce is {got} bytes but the config's nonce_len is {want}")]
    NonceLen {
        /// Octets given.
        got: usize,
        /// Octets the config needs.
        want: usize,
    },
    /// The output buffer must hold at least `lb_len` octets.
    #[error("output buffer is {got} bytes, need {want}")]
    Buffer {
        /// Octets available.
        got: usize,
        /// Octets needed.
        want: usize,
    },
}

/// The config rotation bits of a CID's first octet.
pub fn config_bits(first_octet: u8) -> u8 {
    first_octet >> 5
}

impl Codec {
    /// A codec for `config`, expanding its key once.
    pub fn new(config: Config) -> Self {
        Self {
            cipher: config.key().map(|k| Cipher::new(k, config.plaintext_len())),
            config,
        }
    }

    /// The configuration this codec implements.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Writes the QUIC-LB part of a CID (`lb_len` octets) into `out` and returns `lb_len`.
    ///
    /// `random` supplies the low five bits of the first octet when the config does not
    /// self-encode the length. Extra octets (`extra_len`) are the caller's to write after it.
    pub fn encode(
        &self,
        server_id: &[u8],
        nonce: &[u8],
        random: u8,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        let c = &self.config;
        if server_id.len() != c.server_id_len() {
            return Err(EncodeError::ServerIdLen {
                got: server_id.len(),
                want: c.server_id_len(),
            });
        }
        if nonce.len() != c.nonce_len() {
            return Err(EncodeError::NonceLen {
                got: nonce.len(),
                want: c.nonce_len(),
            });
        }
        let lb_len = c.lb_len();
        let Some(out) = out.get_mut(..lb_len) else {
            return Err(EncodeError::Buffer {
                got: out.len(),
                want: lb_len,
            });
        };
        let low = if c.self_encodes_length() {
            (c.cid_len() - 1) as u8
        } else {
            random
        };
        out[0] = (c.config_id() << 5) | (low & 0x1f);
        let mut buf = [0u8; SCRATCH];
        buf[..server_id.len()].copy_from_slice(server_id);
        buf[server_id.len()..c.plaintext_len()].copy_from_slice(nonce);
        self.encrypt(&mut buf);
        out[1..].copy_from_slice(&buf[..c.plaintext_len()]);
        Ok(lb_len)
    }

    /// Decodes server ID and nonce. Reads only the first `lb_len` octets of `cid`.
    pub fn decode(&self, cid: &[u8]) -> Result<Decoded, Unroutable> {
        self.decode_inner(cid, false)
    }

    /// Decodes only the server ID: what a load balancer needs. In four-pass mode with a server
    /// ID no longer than the nonce this takes three AES operations instead of four.
    pub fn decode_server_id(&self, cid: &[u8]) -> Result<ServerId, Unroutable> {
        self.decode_inner(cid, true).map(|d| d.server_id_owned())
    }

    fn decode_inner(&self, cid: &[u8], server_id_only: bool) -> Result<Decoded, Unroutable> {
        let c = &self.config;
        let first = *cid.first().ok_or(Unroutable::TooShort {
            len: 0,
            need: c.lb_len(),
        })?;
        let bits = config_bits(first);
        if bits == UNROUTABLE_CONFIG_ID {
            return Err(Unroutable::Reserved);
        }
        if bits != c.config_id() {
            return Err(Unroutable::UnknownConfig(bits));
        }
        let body = cid.get(1..c.lb_len()).ok_or(Unroutable::TooShort {
            len: cid.len(),
            need: c.lb_len(),
        })?;
        let mut d = Decoded {
            config_id: bits,
            plaintext: [0; SCRATCH],
            server_id_len: c.server_id_len() as u8,
            nonce_len: c.nonce_len() as u8,
        };
        match (&self.cipher, c.mode()) {
            (Some(cipher), Mode::FourPass) => {
                let left_only = server_id_only && c.server_id_len() <= c.nonce_len();
                cipher.decrypt_four_pass_from(body, &mut d.plaintext, left_only);
            }
            (Some(cipher), Mode::SinglePass) => {
                // a constant-length copy: one 16-octet store the AES load can forward from
                d.plaintext[..16].copy_from_slice(&body[..16]);
                cipher.decrypt_single(&mut d.plaintext);
            }
            _ => d.plaintext[..body.len()].copy_from_slice(body),
        }
        if server_id_only {
            // Only the server ID is meaningful: don't hand out a half-decrypted nonce.
            d.nonce_len = 0;
        }
        Ok(d)
    }

    fn encrypt(&self, body: &mut [u8; SCRATCH]) {
        let Some(cipher) = &self.cipher else { return };
        match self.config.mode() {
            Mode::SinglePass => cipher.encrypt_single(body),
            _ => cipher.encrypt_four_pass(body),
        }
    }
}

impl Decoded {
    /// The config rotation codepoint the CID carried.
    pub fn config_id(&self) -> u8 {
        self.config_id
    }
    /// The server ID.
    pub fn server_id(&self) -> &[u8] {
        &self.plaintext[..self.server_id_len as usize]
    }
    /// The nonce (empty after [`Codec::decode_server_id`]).
    pub fn nonce(&self) -> &[u8] {
        let s = self.server_id_len as usize;
        &self.plaintext[s..s + self.nonce_len as usize]
    }
    /// The server ID as an owned, `Copy` value.
    pub fn server_id_owned(&self) -> ServerId {
        // A fixed-size copy: octets past the length are ignored by ServerId's Eq/Ord/Hash.
        let mut bytes = [0; MAX_BODY_LEN];
        bytes.copy_from_slice(&self.plaintext[..MAX_BODY_LEN]);
        ServerId {
            bytes,
            len: self.server_id_len,
        }
    }
}

impl std::fmt::Debug for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoded")
            .field("config_id", &self.config_id)
            .field("server_id", &Hex(self.server_id()))
            .field("nonce", &Hex(self.nonce()))
            .finish()
    }
}

impl ServerId {
    /// A server ID from 1..=19 octets; `None` if empty or longer.
    pub fn new(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() || bytes.len() > MAX_BODY_LEN {
            return None;
        }
        let mut s = Self {
            bytes: [0; MAX_BODY_LEN],
            len: bytes.len() as u8,
        };
        s.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(s)
    }
    /// The octets.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl PartialEq for ServerId {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for ServerId {}

impl std::hash::Hash for ServerId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialOrd for ServerId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ServerId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::fmt::Debug for ServerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerId({})", Hex(self.as_bytes()))
    }
}

impl std::fmt::Display for ServerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Hex(self.as_bytes()).fmt(f)
    }
}

/// Lowercase hex display of a byte slice.
pub struct Hex<'a>(pub &'a [u8]);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}
