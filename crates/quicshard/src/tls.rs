//! TLS helpers: a self-signed certificate and client configurations for tests, demos and benches.
//!
//! The engine itself only needs a `rustls::ServerConfig` and a `quinn_proto::ClientConfig`; these
//! helpers build them with the *ring* provider and TLS 1.3 only, as QUIC requires.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen could not generate the self-signed certificate (should not happen for DNS names).
    #[error("self-signed certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls refused the certificate, key or protocol versions.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The rustls config has no TLS 1.3 AES-128-GCM suite, which QUIC Initial packets need.
    #[error("no QUIC initial cipher suite: {0}")]
    NoInitialSuite(#[from] quinn_proto::crypto::rustls::NoInitialCipherSuite),
}

/// A self-signed certificate chain (one certificate) and its private key.
pub fn self_signed(
    names: &[&str],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let ck = rcgen::generate_simple_self_signed(
        names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    )?;
    let key = PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der());
    Ok((vec![ck.cert.der().clone()], key.into()))
}

/// A TLS 1.3 server config for QUIC with the given certificate and ALPN protocols.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    server_config_with(provider(), chain, key, alpn)
}

/// [`server_config`] with another crypto provider, e.g. [`ring_provider`].
pub fn server_config_with(
    provider: Arc<rustls::crypto::CryptoProvider>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // the server's order (AES-128-GCM first, see ring_provider) wins over the client's
    cfg.ignore_client_order = true;
    Ok(cfg)
}

/// A client config that trusts exactly `roots` (e.g. a server's self-signed certificate).
pub fn client_config_trusting(
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Result<quinn_proto::ClientConfig, TlsError> {
    client_from_rustls(rustls_client_trusting(roots, alpn)?)
}

/// The rustls part of [`client_config_trusting`], to adjust (e.g. `key_log`) before
/// [`client_from_rustls`].
pub fn rustls_client_trusting(
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone())?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // 0-RTT keys when a ticket allows them (as quinn-proto's own default client config)
    cfg.enable_early_data = true;
    Ok(cfg)
}

/// A client config that accepts any server certificate. For tests, demos and benchmarks only:
/// it provides no authentication at all.
pub fn insecure_client_config(alpn: &[&[u8]]) -> Result<quinn_proto::ClientConfig, TlsError> {
    client_from_rustls(insecure_rustls_client(alpn)?)
}

/// The rustls part of [`insecure_client_config`]. No authentication: tests and benchmarks only.
pub fn insecure_rustls_client(alpn: &[&[u8]]) -> Result<rustls::ClientConfig, TlsError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(accept_any_cert(provider()))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // 0-RTT keys when a ticket allows them (as quinn-proto's own default client config)
    cfg.enable_early_data = true;
    Ok(cfg)
}

/// Wraps a rustls client config (TLS 1.3 required) for quinn-proto.
pub fn client_from_rustls(
    cfg: rustls::ClientConfig,
) -> Result<quinn_proto::ClientConfig, TlsError> {
    let quic = quinn_proto::crypto::rustls::QuicClientConfig::try_from(cfg)?;
    Ok(quinn_proto::ClientConfig::new(Arc::new(quic)))
}

/// The provider of every config built here: [`ring_provider`] drawing its randomness from
/// [`BufferedRandom`](crate::random::BufferedRandom), a per-thread pool of OS randomness. Why:
/// *ring*'s randomness makes one `getrandom` call per draw, five per resumed handshake.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::CryptoProvider {
        secure_random: &crate::random::BUFFERED_RANDOM,
        ..ring_provider()
    })
}

/// *ring*'s provider with TLS13_AES_128_GCM_SHA256 first, and *ring*'s own randomness. Why the
/// order: ring's default puts AES-256-GCM-SHA384 first, and SHA-384 (the key schedule's hash
/// with that suite) has no hardware path on x86 while SHA-256 has SHA-NI: it was 11% of a
/// handshake's CPU. AES-128 is also what browsers prefer.
pub fn ring_provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != TLS13_AES_128_GCM_SHA256.suite());
    p
}

/// A verifier that accepts any server certificate but still checks the handshake signatures
/// with `provider`'s algorithms. **No authentication**: tests, benchmarks and `--insecure` only.
pub fn accept_any_cert(
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Arc<dyn rustls::client::danger::ServerCertVerifier> {
    Arc::new(Verifier {
        certs: CertCheck::AcceptAny(provider),
        observe: None,
    })
}

/// The outcome of one full certificate check, as [`observe_cert_checks`] reports it.
pub type CertCheckResult = Result<rustls::client::danger::ServerCertVerified, rustls::Error>;

/// `inner`, with `observe` called on the outcome of every full certificate check (a resumed
/// handshake has none); everything else, the handshake signatures included, is `inner`'s. It runs
/// on the shard thread of the handshake, so `observe` must not block.
pub fn observe_cert_checks(
    inner: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    observe: impl Fn(&CertCheckResult) + Send + Sync + 'static,
) -> Arc<dyn rustls::client::danger::ServerCertVerifier> {
    Arc::new(Verifier {
        certs: CertCheck::Inner(inner),
        observe: Some(Box::new(observe)),
    })
}

/// Who checks certificates and signatures for a [`Verifier`].
#[derive(Debug)]
enum CertCheck {
    /// Every certificate is accepted; signatures are checked with the provider's algorithms.
    AcceptAny(Arc<rustls::crypto::CryptoProvider>),
    /// Another verifier does all the checking.
    Inner(Arc<dyn rustls::client::danger::ServerCertVerifier>),
}

/// The one `ServerCertVerifier` of this crate: [`accept_any_cert`] and [`observe_cert_checks`].
struct Verifier {
    certs: CertCheck,
    observe: Option<Observer>,
}

/// What [`observe_cert_checks`] calls on each full certificate check.
type Observer = Box<dyn Fn(&CertCheckResult) + Send + Sync>;

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("certs", &self.certs)
            .field("observed", &self.observe.is_some())
            .finish()
    }
}

impl rustls::client::danger::ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> CertCheckResult {
        let r = match &self.certs {
            CertCheck::AcceptAny(_) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            CertCheck::Inner(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
        };
        if let Some(observe) = &self.observe {
            observe(&r);
        }
        r
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        match &self.certs {
            CertCheck::AcceptAny(p) => rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &p.signature_verification_algorithms,
            ),
            CertCheck::Inner(v) => v.verify_tls12_signature(message, cert, dss),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        match &self.certs {
            CertCheck::AcceptAny(p) => rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &p.signature_verification_algorithms,
            ),
            CertCheck::Inner(v) => v.verify_tls13_signature(message, cert, dss),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        match &self.certs {
            CertCheck::AcceptAny(p) => p.signature_verification_algorithms.supported_schemes(),
            CertCheck::Inner(v) => v.supported_verify_schemes(),
        }
    }

    fn requires_raw_public_keys(&self) -> bool {
        match &self.certs {
            CertCheck::AcceptAny(_) => false,
            CertCheck::Inner(v) => v.requires_raw_public_keys(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a TLS 1.3 handshake in memory; returns the suite the server picked.
    fn negotiated(client: rustls::ClientConfig) -> rustls::CipherSuite {
        let (chain, key) = self_signed(&["localhost"]).unwrap();
        let server = server_config(chain, key, &[]).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets().unwrap();
            buf.clear();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets().unwrap();
        }
        s.negotiated_cipher_suite().unwrap().suite()
    }

    /// A client offering exactly `suites`, in that order.
    fn client_offering(suites: Vec<rustls::SupportedCipherSuite>) -> rustls::ClientConfig {
        let mut p = rustls::crypto::ring::default_provider();
        p.cipher_suites = suites;
        rustls::ClientConfig::builder_with_provider(Arc::new(p))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(accept_any_cert(provider()))
            .with_no_client_auth()
    }

    /// Runs a TLS 1.3 handshake in memory with a client verifying with `verifier`; returns the
    /// first error either side saw.
    fn handshake_with(
        verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    ) -> Result<(), rustls::Error> {
        let (chain, key) = self_signed(&["localhost"]).unwrap();
        let server = server_config(chain, key, &[]).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let mut s = rustls::ServerConnection::new(Arc::new(server))?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name)?;
        while c.is_handshaking() || s.is_handshaking() {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets()?;
            buf.clear();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets()?;
        }
        Ok(())
    }

    #[test]
    fn observed_checks_see_each_outcome() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let seen = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let observe = {
            let seen = seen.clone();
            move |r: &CertCheckResult| {
                seen[usize::from(r.is_err())].fetch_add(1, Ordering::Relaxed);
            }
        };
        let accepting = observe_cert_checks(accept_any_cert(provider()), observe.clone());
        handshake_with(accepting).unwrap();
        // trusts only another certificate: the server's is refused, and the refusal observed
        let (other, _) = self_signed(&["other"]).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(other[0].clone()).unwrap();
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let refusing = observe_cert_checks(webpki, observe);
        assert!(handshake_with(refusing).is_err());
        let counts = seen.each_ref().map(|n| n.load(Ordering::Relaxed));
        assert_eq!(counts, [1, 1], "[accepted, refused]");
    }

    #[test]
    fn the_server_prefers_aes_128_gcm_whatever_the_client_order() {
        use rustls::crypto::ring::cipher_suite as cs;
        // ring's own default order: AES-256 first
        let client = client_offering(vec![
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_AES_128_GCM_SHA256,
        ]);
        assert_eq!(
            negotiated(client),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        // a client offering only ChaCha20 still gets it
        let client = client_offering(vec![cs::TLS13_CHACHA20_POLY1305_SHA256]);
        assert_eq!(
            negotiated(client),
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        );
    }
}
