//! Upstream TLS: the client config a cluster originates TLS with.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::ClusterTls;

/// Builds the client TLS config for a cluster; the error names the file and what is wrong.
pub fn client_config(tls: &ClusterTls) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    match &tls.ca {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read CA bundle {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("CA bundle {} is not valid PEM: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("CA bundle {} holds no certificate", path.display()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("CA bundle {}: {e}", path.display()))?;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
