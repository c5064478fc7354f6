//! Shared setup for the handle tests: a server and a client engine in handle mode on loopback.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::time::{Duration, Instant};

use quicshard::handle::{Connection, HandleConfig};
use quicshard::quinn_proto::{TransportConfig, VarInt};
use quicshard::HandleEngine;

/// Every test's overall bound.
pub const LONG: Duration = Duration::from_secs(60);

pub fn deadline() -> Option<Instant> {
    Some(Instant::now() + LONG)
}

/// Byte `i` of a test payload with seed `s`.
pub fn pattern(s: u64, i: u64) -> u8 {
    let mut x = (i ^ (s << 40))
        .wrapping_add(0x1234_5678)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    (x >> 17) as u8
}

pub fn payload(s: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern(s, i)).collect()
}

pub fn transport() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(64));
    t.max_concurrent_uni_streams(VarInt::from_u32(64));
    t.datagram_receive_buffer_size(Some(1 << 20));
    t
}

/// A server and a client engine in handle mode, the client trusting the server.
pub struct Pair {
    pub server: HandleEngine,
    pub client: HandleEngine,
}

impl Pair {
    pub fn new(server_shards: usize, client_shards: usize, cfg: HandleConfig) -> Self {
        let server = HandleEngine::builder_with(cfg.clone())
            .shards(server_shards)
            .transport(transport())
            .start()
            .unwrap();
        let tls =
            quicshard::tls::client_config_trusting(server.certificate().unwrap(), &[]).unwrap();
        let client = HandleEngine::builder_with(cfg)
            .shards(client_shards)
            .client_config(tls)
            .transport(transport())
            .start()
            .unwrap();
        Self { server, client }
    }

    /// Two engines on the direct backend, joined by the in-memory link (the client trusts the
    /// server's certificate).
    pub fn memory(cfg: HandleConfig, direct: quicshard::direct::DirectConfig) -> Self {
        let (server, client) = quicshard::direct::memory_pair(
            HandleEngine::builder_with(cfg.clone()).transport(transport()),
            HandleEngine::builder_with(cfg).transport(transport()),
            direct,
        )
        .unwrap();
        Self { server, client }
    }

    /// One connection: (server side, client side).
    pub fn connect(&self) -> (Connection, Connection) {
        let c = self
            .client
            .connect_until(self.server.local_addr(), "localhost", deadline())
            .unwrap();
        let s = self.server.accept_until(deadline()).unwrap();
        (s, c)
    }
}
