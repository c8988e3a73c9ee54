//! Upstream TLS: the client config a cluster originates TLS with, optionally
//! presenting a client certificate (mTLS) and accepting only upstreams whose
//! certificate carries an allowed SPIFFE ID.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::ClusterTls;
use crate::mesh::rotate::RotatingPair;
use crate::mesh::{CertIdentity, spiffe};
use crate::telemetry::Metrics;

/// A cluster's client TLS: the rustls config and the client certificate it presents (watched for rotation).
pub struct ClientTls {
    /// The config connections use.
    pub config: rustls::ClientConfig,
    /// The client certificate, when the cluster originates mTLS.
    pub client_cert: Option<Arc<RotatingPair>>,
}

/// Builds the client TLS config for `cluster`; refusals of an upstream's
/// identity are counted in `metrics` when given. The error names the file and what is wrong.
pub fn client_config(
    cluster: &str,
    tls: &ClusterTls,
    metrics: Option<Arc<Metrics>>,
) -> Result<ClientTls, String> {
    let mut roots = RootCertStore::empty();
    match &tls.ca {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let certs =
                crate::listener::tls::load_certs(path).map_err(|e| format!("CA bundle: {e}"))?;
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("CA bundle {}: {e}", path.display()))?;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(roots);
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if tls.allowed_identities.is_empty() {
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(IdentityVerifier {
                inner: WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
                    .map_err(|e| e.to_string())?,
                roots,
                provider: provider.clone(),
                allowed: tls.allowed_identities.clone(),
                cluster: cluster.to_string(),
                metrics,
            }))
    };
    match &tls.client_cert {
        None => Ok(ClientTls {
            config: builder.with_no_client_auth(),
            client_cert: None,
        }),
        Some(paths) => {
            let pair = RotatingPair::load(paths)?;
            Ok(ClientTls {
                config: builder.with_client_cert_resolver(Arc::new(ClientCert(pair.clone()))),
                client_cert: Some(pair),
            })
        }
    }
}

/// Presents the current client certificate (it may rotate).
#[derive(Debug)]
struct ClientCert(Arc<RotatingPair>);

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies the upstream's chain against the cluster's CA, then its SPIFFE ID
/// against `allowed` instead of its DNS name (mesh workloads are named by identity).
#[derive(Debug)]
struct IdentityVerifier {
    inner: Arc<WebPkiServerVerifier>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    allowed: Vec<String>,
    cluster: String,
    metrics: Option<Arc<Metrics>>,
}

impl IdentityVerifier {
    fn refuse(&self, reason: &'static str, err: Error, why: &str) -> Error {
        if let Some(m) = &self.metrics {
            m.upstream_tls_refusal(&self.cluster, reason);
        }
        tracing::warn!(cluster.name = %self.cluster, reason, "upstream certificate refused: {why}");
        err
    }
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        if let Err(e) = rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        ) {
            let reason = match &e {
                Error::InvalidCertificate(c) => crate::listener::tls::certificate_refusal(c),
                _ => "bad_certificate",
            };
            let why = e.to_string();
            return Err(self.refuse(reason, e, &why));
        }
        let id = CertIdentity::from_der(end_entity)
            .ok()
            .and_then(|i| i.spiffe)
            .unwrap_or_default();
        if self.allowed.iter().any(|p| spiffe::matches(p, &id)) {
            return Ok(ServerCertVerified::assertion());
        }
        let shown = if id.is_empty() {
            "<no SPIFFE ID>".to_string()
        } else {
            id
        };
        let why = format!("upstream identity {shown} is not in this cluster's allowed_identities");
        Err(self.refuse(
            "identity_not_allowed",
            Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
                IdentityNotAllowed(why.clone()),
            )))),
            &why,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct IdentityNotAllowed(String);

impl std::fmt::Display for IdentityNotAllowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IdentityNotAllowed {}
