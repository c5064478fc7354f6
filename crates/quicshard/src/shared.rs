//! State shared by all shards of one engine: read-mostly, built once at start-up.
//!
//! - one `Arc<quinn_proto::ServerConfig>`: one token key, so a Retry token issued by any shard
//!   validates on every shard; one rustls config whose stateless ticketer (one ticket key) lets a
//!   session ticket from one shard resume on any shard, with no stateful session cache;
//! - one `EndpointConfig` template with one stateless-reset key; each shard clones it and sets its
//!   own CID generator, so a stateless reset is the same whichever shard produces it;
//! - the client config used by `connect`, and the CID layout ([`CidConfig`]).

use std::sync::Arc;

use quinn_proto::{ClientConfig, EndpointConfig, ServerConfig, TransportConfig};

use crate::cid::CidConfig;
use crate::tls::TlsError;

/// How a shard admits new connections (see [`Builder::admission`](crate::Builder::admission)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// New connections accepted per loop turn (each one's first flight costs an ECDHE and, for
    /// a full handshake, a signature). At least 1.
    pub per_turn: usize,
    /// New connections that may wait for a later turn; an Initial beyond them is refused with
    /// CONNECTION_REFUSED. 0: none wait (refused at once beyond `per_turn`).
    pub queue: usize,
}

impl Default for Admission {
    /// 4 per turn (about 0.6 ms of full handshakes before established traffic is served
    /// again), 1,024 waiting per shard.
    fn default() -> Self {
        Self {
            per_turn: 4,
            queue: 1024,
        }
    }
}

/// Everything the shards share. Cloned into each shard thread behind an `Arc`.
pub(crate) struct Shared {
    /// `None` when the engine does not accept connections.
    pub(crate) server_config: Option<Arc<ServerConfig>>,
    /// Template: same reset key for all shards; each shard installs its own CID generator.
    pub(crate) endpoint_config: EndpointConfig,
    pub(crate) client_config: ClientConfig,
    pub(crate) cid: CidConfig,
    pub(crate) retry: bool,
    /// With `retry` off: send Retries once this many handshakes are in progress on a shard.
    pub(crate) retry_threshold: Option<usize>,
    pub(crate) max_connections: usize,
    /// How much handshake work a shard takes on per turn, and how many new connections wait.
    pub(crate) admission: Admission,
    /// Windows and the shard-wide bound on what connections may hold.
    pub(crate) memory: crate::memory::MemoryBudget,
    /// How sessions resume across shards.
    pub(crate) tickets: Tickets,
    /// The ticket state of `server_config`'s rustls config, for a replacement config
    /// ([`crate::reload`]); `None` when the engine accepts no connections.
    pub(crate) server_tickets: Option<ServerTickets>,
    /// Per-connection qlog traces, if on.
    pub(crate) qlog: Option<crate::qlog::Qlog>,
    /// The engine's secrets (handed to a successor, [`crate::handover`]).
    pub(crate) secrets: crate::Secrets,
    /// Whether new connections go to the other process of a handover (`shard/forward.rs`).
    pub(crate) retire: Arc<forward::Retire>,
    /// A simulation's seed ([`crate::testing`]): each shard's endpoint RNG and CID generators
    /// derive from it and the shard's index. `None`: from the OS.
    pub(crate) seed: Option<u64>,
}

impl Shared {
    /// The endpoint config for one shard: the shared template with that shard's CID generator.
    /// The server config of a shard that advertises `preferred` (its own socket) as the
    /// server's preferred address (RFC 9000 §9.6), or the shared one.
    pub(crate) fn server_config_for(
        &self,
        preferred: Option<std::net::SocketAddr>,
    ) -> Option<Arc<ServerConfig>> {
        Some(with_preferred(self.server_config.as_ref()?, preferred))
    }

    pub(crate) fn endpoint_config_for(&self, shard: usize) -> Arc<EndpointConfig> {
        let mut cfg = self.endpoint_config.clone();
        let cid = self.cid.clone();
        let seed = self.shard_seed(shard, 1);
        cfg.cid_generator(move || {
            Box::new(match seed {
                Some(s) => cid.generator_seeded(shard, s),
                None => cid.generator(shard),
            })
        });
        Arc::new(cfg)
    }

    /// The generator a shard checks short-header DCIDs with (seeded in a simulation).
    pub(crate) fn cid_check_for(&self, shard: usize) -> crate::cid::ShardCidGenerator {
        match self.shard_seed(shard, 2) {
            Some(s) => self.cid.generator_seeded(shard, s),
            None => self.cid.generator(shard),
        }
    }

    /// The seed of a shard's `quinn_proto::Endpoint` RNG: `None` (from the OS) unless simulated.
    pub(crate) fn endpoint_rng_seed(&self, shard: usize) -> Option<[u8; 32]> {
        let s = self.shard_seed(shard, 3)?;
        let mut out = [0u8; 32];
        for (i, chunk) in out.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&mix(s ^ i as u64).to_le_bytes());
        }
        Some(out)
    }

    /// The simulation seed for one use (`what`) on one shard.
    fn shard_seed(&self, shard: usize, what: u64) -> Option<u64> {
        self.seed.map(|s| mix(s ^ mix(shard as u64 ^ (what << 32))))
    }
}

/// SplitMix64's finaliser: spreads a seed's bits (for [`Shared::shard_seed`]).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `shared`, or a copy advertising `preferred` (a shard's own socket) as the server's preferred
/// address (RFC 9000 §9.6).
pub(crate) fn with_preferred(
    shared: &Arc<ServerConfig>,
    preferred: Option<std::net::SocketAddr>,
) -> Arc<ServerConfig> {
    let Some(addr) = preferred else {
        return shared.clone();
    };
    let mut cfg = (**shared).clone();
    match addr {
        std::net::SocketAddr::V4(a) => cfg.preferred_address_v4(Some(a)),
        std::net::SocketAddr::V6(a) => cfg.preferred_address_v6(Some(a)),
    };
    Arc::new(cfg)
}

/// The session-resumption parts of a shard-neutral rustls server config, kept so a replacement
/// config resumes the same sessions.
#[derive(Clone)]
pub(crate) struct ServerTickets {
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    storage: Arc<dyn rustls::server::StoresServerSessions>,
    max_early_data_size: u32,
}

impl ServerTickets {
    /// Gives `tls` these tickets.
    pub(crate) fn apply(&self, tls: &mut rustls::ServerConfig) {
        tls.ticketer = self.ticketer.clone();
        tls.session_storage = self.storage.clone();
        tls.max_early_data_size = self.max_early_data_size;
    }
}

/// How the shards' TLS sessions resume (see [`crate::tickets`]).
#[derive(Clone)]
pub(crate) enum Tickets {
    /// Stateless tickets under a shared, rotating key; 1-RTT resumption only.
    Stateless { key_lifetime: std::time::Duration },
    /// Single-use tickets in one store shared by all shards; 0-RTT accepted.
    ZeroRtt(Arc<crate::tickets::TicketStore>),
}

/// Makes a rustls server config shard-neutral: tickets every shard can resume (see [`Tickets`])
/// and, with the stateless ones, no stateful session cache. Also returns the ticket state it
/// installed, for a later replacement ([`crate::reload`]).
pub(crate) fn build_server_config(
    mut tls: rustls::ServerConfig,
    transport: Arc<TransportConfig>,
    tickets: &Tickets,
    secrets: &crate::Secrets,
) -> Result<(Arc<ServerConfig>, ServerTickets), TlsError> {
    match tickets {
        Tickets::Stateless { key_lifetime } => {
            tls.ticketer = Arc::new(crate::tickets::KeyedTicketer::new(
                &secrets.tickets,
                *key_lifetime,
            ));
            tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            tls.max_early_data_size = 0;
        }
        Tickets::ZeroRtt(store) => {
            tls.ticketer = Arc::new(NoTickets);
            tls.session_storage = store.clone();
            // QUIC allows only 0 or u32::MAX (RFC 9001 §4.6.1)
            tls.max_early_data_size = u32::MAX;
        }
    }
    let kept = ServerTickets {
        ticketer: tls.ticketer.clone(),
        storage: tls.session_storage.clone(),
        max_early_data_size: tls.max_early_data_size,
    };
    let quic = quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls)?;
    // one token key: every shard shares it through this one Arc
    let mut cfg = ServerConfig::new(Arc::new(quic), secrets.token_key());
    cfg.transport_config(transport);
    Ok((Arc::new(cfg), kept))
}

/// No stateless tickets: rustls then issues stateful ones from `session_storage`.
#[derive(Debug)]
struct NoTickets;

impl rustls::server::ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

pub(crate) mod forward;
#[cfg(test)]
mod tests;
