//! A load balancer's view: several configurations at once, one per config rotation codepoint.
//!
//! Config rotation (draft-21 §3.1) lets a new configuration be deployed while CIDs of the old one
//! are still in use: the decoder picks the codec by the CID's config rotation bits. Codepoint
//! 0b111 is never routable.

use crate::codec::{config_bits, Codec, Decoded, ServerId, Unroutable};
use crate::config::UNROUTABLE_CONFIG_ID;

/// Decodes CIDs of up to seven configurations, chosen by their config rotation bits.
///
/// # Examples
/// ```
/// use quic_lb::{Codec, Config, Decoder, Unroutable};
/// let mut decoder = Decoder::new();
/// decoder.insert(Codec::new(Config::new(2, 2, 6, None).unwrap()));
/// let cid = [0x47, 0xab, 0xcd, 1, 2, 3, 4, 5, 6];
/// assert_eq!(decoder.decode_server_id(&cid).unwrap().as_bytes(), &[0xab, 0xcd]);
/// assert_eq!(decoder.decode(&[0x07, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap_err(), Unroutable::UnknownConfig(0));
/// ```
#[derive(Clone, Default)]
pub struct Decoder {
    codecs: [Option<Codec>; UNROUTABLE_CONFIG_ID as usize],
}

impl Decoder {
    /// An empty decoder: every CID is unroutable until a codec is inserted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs `codec` at its config's codepoint, returning the codec it replaces.
    pub fn insert(&mut self, codec: Codec) -> Option<Codec> {
        let id = codec.config().config_id() as usize;
        self.codecs[id].replace(codec)
    }

    /// Removes the codec at `config_id`.
    pub fn remove(&mut self, config_id: u8) -> Option<Codec> {
        self.codecs.get_mut(config_id as usize)?.take()
    }

    /// The codec installed at `config_id`.
    pub fn get(&self, config_id: u8) -> Option<&Codec> {
        self.codecs.get(config_id as usize)?.as_ref()
    }

    /// Decodes server ID and nonce with the codec the CID's config bits select.
    pub fn decode(&self, cid: &[u8]) -> Result<Decoded, Unroutable> {
        self.select(cid)?.decode(cid)
    }

    /// Decodes only the server ID (three AES passes where the draft allows it).
    pub fn decode_server_id(&self, cid: &[u8]) -> Result<ServerId, Unroutable> {
        self.select(cid)?.decode_server_id(cid)
    }

    fn select(&self, cid: &[u8]) -> Result<&Codec, Unroutable> {
        let first = *cid
            .first()
            .ok_or(Unroutable::TooShort { len: 0, need: 1 })?;
        let bits = config_bits(first);
        if bits == UNROUTABLE_CONFIG_ID {
            return Err(Unroutable::Reserved);
        }
        self.get(bits).ok_or(Unroutable::UnknownConfig(bits))
    }
}
