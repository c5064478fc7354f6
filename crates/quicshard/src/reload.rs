//! Replacing the server's TLS configuration of a running engine ([`Engine::set_server_tls`]):
//! a new certificate and key (or ALPN list) for the handshakes that start afterwards, on every
//! shard, while the connections already open keep theirs.
//!
//! What stays: the Retry token key, the transport settings and each shard's preferred address
//! (the new crypto is grafted onto the running `quinn_proto::ServerConfig`), and the session
//! ticket key or 0-RTT ticket store (so sessions from before the reload still resume).

use std::sync::Arc;
use std::time::Duration;

use quinn_proto::crypto::rustls::QuicServerConfig;

use crate::engine::Engine;
use crate::handler::{Handler, RemoteError, ShardId};
use crate::tls::TlsError;

/// How long [`Engine::set_server_tls`] waits for each shard to take the new configuration.
const SHARD_ANSWER: Duration = Duration::from_secs(5);

/// Why [`Engine::set_server_tls`] did not (fully) apply.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The engine does not accept connections (no server configuration to replace).
    #[error("the engine accepts no connections")]
    NotAServer,
    /// The new rustls configuration cannot serve QUIC (e.g. it allows no TLS 1.3 suite).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A shard could not be asked (stopped, or its mailbox is full): shards before it took the
    /// new configuration, the rest did not. Retry.
    #[error("shard {shard}: {source}")]
    Shard {
        /// The shard that was not reached.
        shard: usize,
        /// Why.
        source: RemoteError,
    },
    /// A shard did not answer within 5 s (overloaded, or the engine is driven by the
    /// application and was not ticked); it takes the configuration when it next runs.
    #[error("shard {0} did not confirm within 5 s")]
    NoAnswer(usize),
}

impl<H: Handler> Engine<H> {
    /// Serves new handshakes on every shard with `tls` (certificate chain, key, ALPN); open
    /// connections are unaffected. Session tickets, Retry tokens and transport settings keep
    /// working across the change (see the module doc). A shard that is shutting down keeps
    /// refusing connections. Blocks until every shard confirmed (at most 5 s per shard); with
    /// the direct backend, call it from a thread other than the one that ticks the engine.
    pub fn set_server_tls(&self, mut tls: rustls::ServerConfig) -> Result<(), ReloadError> {
        let (Some(current), Some(tickets)) =
            (&self.shared.server_config, &self.shared.server_tickets)
        else {
            return Err(ReloadError::NotAServer);
        };
        tickets.apply(&mut tls);
        let quic = QuicServerConfig::try_from(tls).map_err(TlsError::from)?;
        let mut cfg = (**current).clone();
        cfg.crypto = Arc::new(quic);
        let cfg = Arc::new(cfg);
        let n = self.shards();
        let (tx, rx) = crossbeam_channel::bounded(n);
        for shard in 0..n {
            let (cfg, tx) = (cfg.clone(), tx.clone());
            self.remote
                .run_on(ShardId(shard), move |ctx, _| {
                    let core = &mut *ctx.core;
                    if core.stopping.is_none() {
                        let own = crate::shared::with_preferred(&cfg, core.preferred);
                        core.endpoint.set_server_config(Some(own));
                    }
                    let _ = tx.send(shard);
                })
                .map_err(|source| ReloadError::Shard { shard, source })?;
        }
        drop(tx);
        let mut answered = vec![false; n];
        for _ in 0..n {
            match rx.recv_timeout(SHARD_ANSWER) {
                Ok(shard) => answered[shard] = true,
                Err(_) => break,
            }
        }
        match answered.iter().position(|a| !a) {
            Some(shard) => Err(ReloadError::NoAnswer(shard)),
            None => Ok(()),
        }
    }
}
