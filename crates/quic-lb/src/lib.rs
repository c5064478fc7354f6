//! QUIC-LB connection IDs (draft-ietf-quic-load-balancers-21).
//!
//! A server encodes its server ID into every connection ID it issues so that any QUIC-LB load
//! balancer can route packets to it, whatever address the client uses. [`Config`] is what the
//! load balancer and servers agree on; [`Codec`] encodes and decodes one config's CIDs in
//! plaintext, single-pass or four-pass AES mode; [`Decoder`] holds one codec per config rotation
//! codepoint; [`Generator`] issues fresh CIDs for a server. Nothing here allocates, does I/O,
//! reads the clock, or uses unseeded randomness.
//!
//! # Examples
//! ```
//! use quic_lb::{Codec, Config};
//! let codec = Codec::new(Config::new(0, 3, 4, Some([0x8f; 16])).unwrap());
//! let mut cid = [0u8; quic_lb::MAX_CID_LEN];
//! let len = codec.encode(&[1, 2, 3], &[4, 5, 6, 7], 0, &mut cid).unwrap();
//! assert_eq!(len, 8);
//! assert_eq!(codec.decode(&cid[..len]).unwrap().server_id(), &[1, 2, 3]);
//! ```
#![forbid(unsafe_code)]

mod cipher;
mod codec;
mod config;
mod decoder;
mod generator;

pub use codec::{config_bits, Codec, Decoded, EncodeError, Hex, ServerId, Unroutable};
pub use config::{
    Config, ConfigError, Mode, MAX_BODY_LEN, MAX_CID_LEN, MIN_NONCE_LEN, UNROUTABLE_CONFIG_ID,
};
pub use decoder::Decoder;
pub use generator::{GenerateError, Generator};
