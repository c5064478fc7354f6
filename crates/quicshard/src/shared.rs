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
}

impl Shared {
    /// The endpoint config for one shard: the shared template with that shard's CID generator.
    pub(crate) fn endpoint_config_for(&self, shard: usize) -> Arc<EndpointConfig> {
        let mut cfg = self.endpoint_config.clone();
        let cid = self.cid.clone();
        cfg.cid_generator(move || Box::new(cid.generator(shard)));
        Arc::new(cfg)
    }
}

/// Makes a rustls server config shard-neutral: a stateless ticketer (one random ticket key for all
/// shards) and no stateful session cache.
pub(crate) fn build_server_config(
    mut tls: rustls::ServerConfig,
    transport: Arc<TransportConfig>,
) -> Result<Arc<ServerConfig>, TlsError> {
    tls.ticketer = Arc::new(CountingTicketer(rustls::crypto::ring::Ticketer::new()?));
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    let quic = quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls)?;
    // with_crypto draws one random token key: every shard shares it through this one Arc
    let mut cfg = ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(transport);
    Ok(Arc::new(cfg))
}

/// The shared stateless ticketer, counting each ticket it decrypts on the calling shard
/// (`ShardStats::resumptions`). rustls refuses 0-RTT with stateless tickets, so this enables
/// 1-RTT resumption only.
#[derive(Debug)]
struct CountingTicketer(Arc<dyn rustls::server::ProducesTickets>);

impl rustls::server::ProducesTickets for CountingTicketer {
    fn enabled(&self) -> bool {
        self.0.enabled()
    }
    fn lifetime(&self) -> u32 {
        self.0.lifetime()
    }
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.0.encrypt(plain)
    }
    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let plain = self.0.decrypt(cipher);
        if plain.is_some() {
            crate::shard::count_resumption();
        }
        plain
    }
}

#[cfg(test)]
mod tests;
