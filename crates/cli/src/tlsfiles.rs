//! TLS material from files: PEM certificates and keys, CA roots, key logging.

use std::path::Path;
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
