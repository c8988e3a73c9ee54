//! TLS termination: certificates loaded from PEM files, chosen by SNI.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{CertPaths, ListenerTls};

/// Builds a listener's TLS server config. The error names the file and the problem.
pub fn server_config(tls: &ListenerTls, http2: bool) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut resolver = SniResolver {
        default: load_pair(&tls.default, &provider)?,
        exact: HashMap::new(),
        wildcard: Vec::new(),
    };
    for (names, paths) in &tls.sni {
        let key = load_pair(paths, &provider)?;
        for name in names {
            match name.strip_prefix('*') {
                Some(suffix) => resolver.wildcard.push((suffix.to_string(), key.clone())),
                None => {
                    resolver.exact.insert(name.clone(), key.clone());
                }
            }
        }
    }
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}

fn load_pair(
    paths: &CertPaths,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let certs = load_certs(&paths.cert)?;
    let key = PrivateKeyDer::from_pem_file(&paths.key)
        .map_err(|e| pem_error(&paths.key, "private key", e))?;
    let ck = CertifiedKey::from_der(certs, key, provider).map_err(|e| {
        format!("{} and {} do not go together: {e} (is the key the one the certificate was issued for?)", paths.cert.display(), paths.key.display())
    })?;
    Ok(Arc::new(ck))
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, "certificate", e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(path, "certificate", e))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

fn pem_error(path: &Path, what: &str, e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => {
            format!("cannot read {what} file {}: {io}", path.display())
        }
        rustls_pki_types::pem::Error::NoItemsFound => {
            format!("{}: no PEM {what} found", path.display())
        }
        other => format!("{}: invalid PEM {what}: {other:?}", path.display()),
    }
}

#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// (".example.com", key)
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        let wild = self
            .wildcard
            .iter()
            .find(|(suffix, _)| name.ends_with(suffix.as_str()) && name.len() > suffix.len());
        Some(wild.map_or_else(|| self.default.clone(), |(_, k)| k.clone()))
    }
}
