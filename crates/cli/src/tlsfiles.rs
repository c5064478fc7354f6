//! TLS material from files: PEM certificates and keys, CA roots, key logging.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use quicshard::rustls::pki_types::pem::{self, PemObject};
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
        .map_err(|e| pem_failure("--cert", cert, "certificate", &e))?;
    if chain.is_empty() {
        return Err(pem_failure(
            "--cert",
            cert,
            "certificate",
            &pem::Error::NoItemsFound,
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| pem_failure("--key", key, "private key", &e))?;
    tls::server_config(chain, key, alpn).map_err(|e| Failure::Usage(format!("--cert/--key: {e}")))
}

/// A PEM file's error as one line that names the flag and the file once and says in words
/// what is wrong (`what`: the kind of item the flag wants).
pub(crate) fn pem_failure(flag: &str, path: &Path, what: &str, e: &pem::Error) -> Failure {
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    let why = match e {
        pem::Error::Io(io) => io.to_string(),
        pem::Error::NoItemsFound => {
            format!(
                "no {what} in the file (expected a PEM block such as -----BEGIN {}-----)",
                what.to_uppercase()
            )
        }
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("a PEM block has no end line ({})", lossy(end_marker))
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed PEM begin line: {}", lossy(line))
        }
        pem::Error::Base64Decode(b) => format!("a PEM block is not valid base64 ({b})"),
        other => other.to_string(),
    };
    Failure::Usage(format!("{flag} {}: {why}", path.display()))
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
                .map_err(|e| pem_failure("--ca", ca, "certificate", &e))?;
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

/// Like [`client`], with [`ClientTuning`], trusting the system's roots when neither `insecure`
/// nor `ca` is given; also returns what the certificate checks saw ([`CertChecks`]).
pub(crate) fn client_tuned(
    insecure: bool,
    ca: Option<&Path>,
    alpn: &[&[u8]],
    keylog: bool,
    tuning: &ClientTuning,
) -> Result<(quicshard::quinn_proto::ClientConfig, Arc<CertChecks>), Failure> {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    let tls_err = |e: rustls::Error| Failure::Usage(format!("TLS: {e}"));
    let mut provider = default_provider();
    if tuning.chacha20_only {
        provider.cipher_suites = vec![cipher_suite::TLS13_CHACHA20_POLY1305_SHA256];
    }
    let provider = Arc::new(provider);
    let inner = crate::trust::verifier(
        crate::trust::Trust::from_flags(insecure, ca),
        provider.clone(),
    )?;
    let checks = Arc::new(CertChecks::default());
    let verifier = {
        let checks = checks.clone();
        tls::observe_cert_checks(inner, move |r| checks.count(r))
    };
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

/// What the certificate checks of a client config saw.
#[derive(Debug, Default)]
pub(crate) struct CertChecks {
    /// Full certificate checks (a resumed handshake has no certificate, so it does not count).
    pub(crate) full: AtomicUsize,
    /// The first refusal, as a sentence ([`crate::trust::sentence`]); set once, without a lock
    /// (the check runs on a shard thread).
    refused: OnceLock<String>,
}

impl CertChecks {
    /// Why the first refused certificate was refused, if one was.
    pub(crate) fn refusal(&self) -> Option<&str> {
        self.refused.get().map(String::as_str)
    }

    /// Counts one full check (of webpki with `--ca` or the system's roots, or
    /// [`tls::accept_any_cert`] with `--insecure`) and remembers the first refusal.
    fn count(&self, r: &tls::CertCheckResult) {
        self.full.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = r {
            let _ = self.refused.set(crate::trust::sentence(e));
        }
    }
}
