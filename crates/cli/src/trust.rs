//! How clients decide to trust a server: the system's roots (rustls-native-certs, which honours
//! `SSL_CERT_FILE` and `SSL_CERT_DIR`), a `--ca` file, or nothing (`--insecure`); and certificate
//! errors put into one sentence for the user.

use std::path::Path;
use std::sync::Arc;

use quicshard::rustls;
use quicshard::rustls::client::danger::ServerCertVerifier;
use quicshard::rustls::crypto::CryptoProvider;
use quicshard::rustls::pki_types::pem::{self, PemObject};
use quicshard::rustls::pki_types::CertificateDer;
use quicshard::rustls::{CertificateError, RootCertStore};

use crate::tlsfiles::pem_failure;
use crate::Failure;

/// Where the trusted roots come from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Trust<'a> {
    /// Accept any certificate.
    Insecure,
    /// Only the CA certificates of this PEM file.
    CaFile(&'a Path),
    /// The system's trust store.
    System,
}

impl<'a> Trust<'a> {
    /// `--insecure` wins, then `--ca`, else the system's roots.
    pub(crate) fn from_flags(insecure: bool, ca: Option<&'a Path>) -> Self {
        match (insecure, ca) {
            (true, _) => Self::Insecure,
            (false, Some(ca)) => Self::CaFile(ca),
            (false, None) => Self::System,
        }
    }
}

/// The certificate verifier for `trust`.
pub(crate) fn verifier(
    trust: Trust<'_>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, Failure> {
    let (store, source) = match trust {
        Trust::Insecure => return Ok(quicshard::tls::accept_any_cert(provider)),
        Trust::CaFile(ca) => (ca_file(ca)?, format!("--ca {}", ca.display())),
        Trust::System => system_roots()?,
    };
    let v = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
        .build()
        .map_err(|e| Failure::Usage(format!("{source}: {e}")))?;
    Ok(v)
}

fn ca_file(ca: &Path) -> Result<RootCertStore, Failure> {
    let pem = |e: &pem::Error| pem_failure("--ca", ca, "certificate", e);
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| pem(&e))? {
        store
            .add(cert.map_err(|e| pem(&e))?)
            .map_err(|e| Failure::Usage(format!("--ca {}: {}", ca.display(), sentence(&e))))?;
    }
    if store.is_empty() {
        return Err(pem(&pem::Error::NoItemsFound));
    }
    Ok(store)
}

/// The system's roots: unreadable or unparsable entries are skipped (as every TLS library does
/// with a system store), but an empty result is an error that says where it looked.
fn system_roots() -> Result<(RootCertStore, String), Failure> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "no certificates".to_string(), |e| e.to_string());
        return Err(Failure::Usage(format!(
            "no trusted roots in the system's store ({why}); pass --ca PEM, set SSL_CERT_FILE, \
             or --insecure"
        )));
    }
    Ok((store, "the system's trust store".into()))
}

/// A certificate error as one sentence (rustls' own text where it is already one).
pub(crate) fn sentence(e: &rustls::Error) -> String {
    use CertificateError as C;
    let cert = match e {
        rustls::Error::InvalidCertificate(c) => c,
        rustls::Error::NoCertificatesPresented => return "the server sent no certificate".into(),
        other => return other.to_string(),
    };
    #[allow(deprecated)] // UnsupportedSignatureAlgorithm: older webpki versions still produce it
    let s = match cert {
        C::BadEncoding => "the certificate is not well-formed DER",
        C::Expired => "the certificate has expired",
        C::ExpiredContext { time, not_after } => {
            return format!(
                "the certificate expired {} s ago",
                time.as_secs().saturating_sub(not_after.as_secs())
            )
        }
        C::NotValidYet => "the certificate is not valid yet",
        C::NotValidYetContext { time, not_before } => {
            return format!(
                "the certificate becomes valid only in {} s",
                not_before.as_secs().saturating_sub(time.as_secs())
            )
        }
        C::Revoked => "the certificate has been revoked",
        C::UnhandledCriticalExtension => {
            "the certificate has a critical extension this client does not understand"
        }
        C::UnknownIssuer => {
            "the certificate is not signed by a trusted CA (pass --ca with its CA, or add that CA \
             to the system's trust store)"
        }
        C::BadSignature => "the certificate's signature is wrong",
        C::UnsupportedSignatureAlgorithm
        | C::UnsupportedSignatureAlgorithmContext { .. }
        | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "the certificate is signed with an algorithm this client does not support"
        }
        C::NotValidForName => "the certificate is not valid for the server's name",
        C::NotValidForNameContext { .. } => return format!("the {cert}"),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            "the certificate is not for server authentication (extended key usage)"
        }
        C::InvalidOcspResponse => "the certificate's stapled OCSP response is invalid",
        C::UnknownRevocationStatus => "the certificate's revocation status is unknown",
        C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => {
            "the certificate revocation list has expired"
        }
        C::ApplicationVerificationFailure => "the certificate was refused by the application",
        C::Other(other) => return webpki_sentence(other),
        _ => return format!("the certificate is not acceptable: {cert}"),
    };
    s.to_string()
}

/// webpki errors rustls passes through as `CertificateError::Other`.
fn webpki_sentence(other: &rustls::OtherError) -> String {
    use webpki::Error as W;
    match other.0.downcast_ref::<W>() {
        Some(W::CaUsedAsEndEntity) => {
            "the certificate is a CA certificate used as a server certificate".into()
        }
        Some(W::EndEntityUsedAsCa) => {
            "the certificate chain uses a server certificate as a CA certificate".into()
        }
        Some(W::PathLenConstraintViolated) => {
            "the certificate chain is longer than a CA in it allows".into()
        }
        Some(W::NameConstraintViolation) => {
            "the certificate violates its CA's name constraints".into()
        }
        Some(W::MaximumPathDepthExceeded) | Some(W::MaximumPathBuildCallsExceeded) => {
            "the certificate chain is too long".into()
        }
        Some(W::MalformedExtensions) | Some(W::ExtensionValueInvalid) => {
            "the certificate's extensions are missing or malformed".into()
        }
        Some(w) => format!("the certificate is not acceptable: {w}"),
        None => format!("the certificate is not acceptable: {}", other.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_are_sentences() {
        let ca = rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
            Arc::new(webpki::Error::CaUsedAsEndEntity),
        )));
        assert_eq!(
            sentence(&ca),
            "the certificate is a CA certificate used as a server certificate"
        );
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(sentence(&unknown).starts_with("the certificate is not signed by a trusted CA"));
        for e in [ca, unknown] {
            let s = sentence(&e);
            assert!(!s.contains('{') && !s.contains("Other("), "{s}");
        }
    }
}
