//! TLS material from files: PEM certificates and keys, CA roots, key logging.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use quicshard::rustls::pki_types::pem::PemObject;
use quicshard::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use quicshard::{rustls, tls};

use crate::Failure;

/// A server TLS config from a PEM chain and key, offering `alpn`.
pub(crate) fn server_from_files(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, Failure> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Failure::Usage(format!("--cert {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(Failure::Usage(format!(
            "--cert {}: no certificate in file",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Failure::Usage(format!("--key {}: {e}", key.display())))?;
    tls::server_config(chain, key, alpn).map_err(|e| Failure::Usage(format!("--cert/--key: {e}")))
}

/// A client config: insecure, or trusting the CA certificates of a PEM file.
pub(crate) fn client(
    insecure: bool,
    ca: Option<&Path>,
    alpn: &[&[u8]],
    keylog: bool,
) -> Result<quicshard::quinn_proto::ClientConfig, Failure> {
    let mut cfg = match (insecure, ca) {
        (true, _) => tls::insecure_rustls_client(alpn),
        (false, Some(ca)) => {
            let roots = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| Failure::Usage(format!("--ca {}: {e}", ca.display())))?;
            tls::rustls_client_trusting(&roots, alpn)
        }
        (false, None) => {
            return Err(Failure::Usage(
                "no way to verify the server: pass --ca PEM or --insecure".into(),
            ));
        }
    }
    .map_err(|e| Failure::Usage(format!("TLS: {e}")))?;
    if keylog {
        cfg.key_log = Arc::new(rustls::KeyLogFile::new());
    }
    tls::client_from_rustls(cfg).map_err(|e| Failure::Usage(format!("TLS: {e}")))
}

/// Client TLS options beyond trust and ALPN (interop cases).
#[derive(Default)]
pub(crate) struct ClientTuning {
    /// Offer only TLS_CHACHA20_POLY1305_SHA256 (Initial packets still use AES-128-GCM, as QUIC
    /// requires).
    pub(crate) chacha20_only: bool,
    /// Offer early data (0-RTT) when a resumed session allows it.
    pub(crate) early_data: bool,
    /// Where session tickets are kept, if anywhere.
    pub(crate) resumption: Resumption,
}

/// Where a client keeps TLS session tickets.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resumption {
    /// rustls' default cache (8 tickets per server).
    #[default]
    Rustls,
    /// [`crate::client_tickets::ClientTickets`]: thousands per server, for load generation.
    Many,
    /// None: every handshake is a full one.
    Off,
}

/// Like [`client`], with [`ClientTuning`]; also returns a counter of full certificate checks
/// (a resumed handshake has no certificate, so it does not count).
pub(crate) fn client_tuned(
    insecure: bool,
    ca: Option<&Path>,
    alpn: &[&[u8]],
    keylog: bool,
    tuning: &ClientTuning,
) -> Result<(quicshard::quinn_proto::ClientConfig, Arc<AtomicUsize>), Failure> {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    let tls_err = |e: rustls::Error| Failure::Usage(format!("TLS: {e}"));
    let mut provider = default_provider();
    if tuning.chacha20_only {
        provider.cipher_suites = vec![cipher_suite::TLS13_CHACHA20_POLY1305_SHA256];
    }
    let provider = Arc::new(provider);
    let inner: Arc<dyn rustls::client::danger::ServerCertVerifier> = match (insecure, ca) {
        (true, _) => tls::accept_any_cert(provider.clone()),
        (false, Some(ca)) => {
            let mut store = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|e| Failure::Usage(format!("--ca {}: {e}", ca.display())))?
            {
                let cert =
                    cert.map_err(|e| Failure::Usage(format!("--ca {}: {e}", ca.display())))?;
                store.add(cert).map_err(tls_err)?;
            }
            let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(store),
                provider.clone(),
            )
            .build()
            .map_err(|e| Failure::Usage(format!("--ca {}: {e}", ca.display())))?;
            v
        }
        (false, None) => {
            return Err(Failure::Usage(
                "no way to verify the server: pass --ca PEM or --insecure".into(),
            ))
        }
    };
    let checks = Arc::new(AtomicUsize::new(0));
    let verifier = Arc::new(CountingVerifier {
        inner,
        checks: checks.clone(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg.enable_early_data = tuning.early_data;
    match tuning.resumption {
        Resumption::Rustls => {}
        Resumption::Many => {
            let store = Arc::new(crate::client_tickets::ClientTickets::default());
            cfg.resumption = rustls::client::Resumption::store(store);
        }
        Resumption::Off => cfg.resumption = rustls::client::Resumption::disabled(),
    }
    if keylog {
        cfg.key_log = Arc::new(rustls::KeyLogFile::new());
    }
    // QUIC Initials always use AES-128-GCM, whatever the handshake offers
    let initial = cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .and_then(|s| s.quic_suite())
        .expect("ring's AES-128-GCM suite supports QUIC");
    let quic = quicshard::quinn_proto::crypto::rustls::QuicClientConfig::with_initial(
        Arc::new(cfg),
        initial,
    )
    .map_err(|e| Failure::Usage(format!("TLS: {e}")))?;
    Ok((
        quicshard::quinn_proto::ClientConfig::new(Arc::new(quic)),
        checks,
    ))
}

/// Counts the full certificate checks of `inner` (webpki with `--ca`, or
/// [`tls::accept_any_cert`] with `--insecure`) and otherwise defers to it.
#[derive(Debug)]
struct CountingVerifier {
    inner: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    checks: Arc<AtomicUsize>,
}

impl rustls::client::danger::ServerCertVerifier for CountingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.checks.fetch_add(1, Ordering::Relaxed);
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}
