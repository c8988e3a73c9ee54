//! TLS termination: certificates loaded from PEM files, chosen by SNI,
//! replaced when their files change, and optional client certificates
//! (mTLS) verified against a CA bundle.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::ListenerTls;
use crate::mesh::CertIdentity;
use crate::mesh::identity::{TlsSession, version_name};
use crate::mesh::rotate::RotatingPair;

/// A listener's TLS: the rustls config, and the certificate pairs it serves (to watch and to name the local identity).
pub struct ServerTls {
    /// The config handshakes use.
    pub config: Arc<rustls::ServerConfig>,
    resolver: Arc<SniResolver>,
}

impl ServerTls {
    /// Every certificate pair the listener serves.
    pub fn pairs(&self) -> Vec<Arc<RotatingPair>> {
        let mut all = vec![self.resolver.default.clone()];
        all.extend(self.resolver.exact.values().cloned());
        all.extend(self.resolver.wildcard.iter().map(|(_, p)| p.clone()));
        all.sort_by(|a, b| a.paths().cert.cmp(&b.paths().cert));
        all.dedup_by(|a, b| Arc::ptr_eq(a, b));
        all
    }

    /// The TLS facts of an accepted connection: version, SNI, the verified client certificate and the one served.
    pub fn session(&self, conn: &rustls::ServerConnection) -> TlsSession {
        let sni = conn.server_name().map(str::to_string);
        let peer = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| CertIdentity::from_der(c).ok());
        let local = self
            .resolver
            .pick(sni.as_deref())
            .current()
            .identity
            .clone();
        TlsSession {
            version: version_name(conn.protocol_version()),
            sni,
            peer,
            local: Some(local),
        }
    }
}

/// Builds a listener's TLS server config. The error names the file and the problem.
pub fn server_config(tls: &ListenerTls, http2: bool) -> Result<ServerTls, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut loaded: HashMap<(std::path::PathBuf, std::path::PathBuf), Arc<RotatingPair>> =
        HashMap::new();
    let mut load = |paths: &crate::config::CertPaths| -> Result<Arc<RotatingPair>, String> {
        let k = (paths.cert.clone(), paths.key.clone());
        if let Some(p) = loaded.get(&k) {
            return Ok(p.clone());
        }
        let p = RotatingPair::load(paths)?;
        loaded.insert(k, p.clone());
        Ok(p)
    };
    let mut resolver = SniResolver {
        default: load(&tls.default)?,
        exact: HashMap::new(),
        wildcard: Vec::new(),
    };
    for (names, paths) in &tls.sni {
        let key = load(paths)?;
        for name in names {
            match name.strip_prefix('*') {
                Some(suffix) => resolver.wildcard.push((suffix.to_string(), key.clone())),
                None => {
                    resolver.exact.insert(name.clone(), key.clone());
                }
            }
        }
    }
    let resolver = Arc::new(resolver);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(ca)? {
                roots.add(c).map_err(|e| {
                    format!(
                        "client_ca {}: not a usable CA certificate: {e}",
                        ca.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if tls.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| format!("client_ca {}: {e}", ca.display()))?,
            )
        }
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(ServerTls {
        config: Arc::new(config),
        resolver,
    })
}

/// Names why a handshake failed, for the refusals metric and the log.
pub fn refusal_reason(e: &std::io::Error) -> &'static str {
    use rustls::Error;
    let Some(err) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return "handshake_failed";
    };
    match err {
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::InvalidCertificate(c) => certificate_refusal(c),
        Error::AlertReceived(_) => "alert_from_client",
        Error::InvalidMessage(_) => "malformed_or_not_tls",
        Error::NoApplicationProtocol => "no_common_alpn",
        Error::PeerIncompatible(_) => "incompatible_client",
        _ => "handshake_failed",
    }
}

/// Names why a peer's certificate was refused (either side of a connection).
pub fn certificate_refusal(c: &rustls::CertificateError) -> &'static str {
    use rustls::CertificateError;
    match c {
        // BadSignature: the issuer's name is one we trust but its key is not (another CA of the same name).
        CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown_ca",
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "expired_certificate"
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "certificate_not_yet_valid"
        }
        CertificateError::Revoked => "revoked_certificate",
        _ => "bad_certificate",
    }
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read certificate file {}: {e}", path.display()))?;
    parse_certs(&bytes, path)
}

/// Parses every certificate of PEM `bytes` read from `path` (named in errors).
pub fn parse_certs(bytes: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: invalid PEM certificate: {e:?}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

#[derive(Debug)]
struct SniResolver {
    default: Arc<RotatingPair>,
    exact: HashMap<String, Arc<RotatingPair>>,
    /// (".example.com", key)
    wildcard: Vec<(String, Arc<RotatingPair>)>,
}

impl SniResolver {
    fn pick(&self, name: Option<&str>) -> &Arc<RotatingPair> {
        let Some(name) = name else {
            return &self.default;
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return k;
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| name.ends_with(suffix.as_str()) && name.len() > suffix.len())
            .map_or(&self.default, |(_, k)| k)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).current().key.clone())
    }
}
