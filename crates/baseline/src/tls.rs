//! The server TLS config: the same TLS settings as `quicshard serve` builds
//! (`quicshard::tls::server_config_with`: ring provider with the same cipher-suite order, TLS 1.3
//! only, the same ALPNs), plus the two changes the engine makes to every server config
//! (`shared.rs`): a stateless ticketer and no stateful session cache. quinn's `QuicServerConfig`
//! then adds the same QUIC settings (no early data) as quinn-proto does for the engine.
//!
//! What differs is implementation, not settings, and it is what a quinn user gets: *ring*'s own
//! randomness (`tls::ring_provider`, a `getrandom` call per draw, where quicshard draws from a
//! per-thread pool, `quicshard::random`) and rustls' *ring* ticketer (the same ChaCha20-Poly1305
//! ticket format as quicshard's, with its nonce from a `getrandom` call).

use std::path::Path;
use std::sync::Arc;

use quicshard::rustls::pki_types::pem::PemObject;
use quicshard::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use quicshard::{rustls, tls};

use crate::Fatal;

/// The server config for `--cert`/`--key`, or a self-signed certificate for `localhost`.
pub fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, Fatal> {
    let (chain, key) = match (cert, key) {
        (Some(cert), Some(key)) => (
            CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| Fatal(format!("--cert {}: {e}", cert.display())))?,
            PrivateKeyDer::from_pem_file(key)
                .map_err(|e| Fatal(format!("--key {}: {e}", key.display())))?,
        ),
        _ => tls::self_signed(&["localhost"])?,
    };
    if chain.is_empty() {
        return Err(Fatal("--cert: no certificate in file".into()));
    }
    let mut cfg = tls::server_config_with(Arc::new(tls::ring_provider()), chain, key, alpn)?;
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(cfg)
}
