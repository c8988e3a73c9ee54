//! What a certificate says about its holder, read once per handshake (or per
//! certificate load) with x509-parser, and the TLS facts of one connection.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use sha2::Digest;
use x509_parser::prelude::*;

/// The identity a certificate carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertIdentity {
    /// The subject in RFC 2253 form (`CN=web,O=example.org`), as Envoy prints it.
    pub subject: String,
    /// URI SANs in certificate order.
    pub uri_sans: Vec<String>,
    /// DNS SANs in certificate order.
    pub dns_sans: Vec<String>,
    /// The first `spiffe://` URI SAN: the workload's identity (its principal).
    pub spiffe: Option<String>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// SHA-256 of the DER certificate, lowercase hex.
    pub sha256: String,
}

impl CertIdentity {
    /// Reads `der`. The error says what could not be parsed.
    pub fn from_der(der: &CertificateDer<'_>) -> Result<CertIdentity, String> {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
        let mut uri_sans = Vec::new();
        let mut dns_sans = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => uri_sans.push(u.to_string()),
                    GeneralName::DNSName(d) => dns_sans.push(d.to_string()),
                    _ => {}
                }
            }
        }
        let spiffe = uri_sans
            .iter()
            .find(|u| u.starts_with("spiffe://"))
            .cloned();
        let time = |t: ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                SystemTime::UNIX_EPOCH
            }
        };
        Ok(CertIdentity {
            subject: rfc2253(cert.subject()),
            uri_sans,
            dns_sans,
            spiffe,
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
            sha256: hex(&sha2::Sha256::digest(der.as_ref())),
        })
    }

    /// Whether the certificate is valid at `now`; the error says since or until when not.
    pub fn check_valid_at(&self, now: SystemTime) -> Result<(), String> {
        if now > self.not_after {
            return Err(format!(
                "it expired at {} (issue a new one: weir ca issue)",
                humantime::format_rfc3339_seconds(self.not_after)
            ));
        }
        if now < self.not_before {
            return Err(format!(
                "it is not valid before {} (is this machine's clock right?)",
                humantime::format_rfc3339_seconds(self.not_before)
            ));
        }
        Ok(())
    }
}

/// The TLS facts of one downstream connection, for attributes and the access log.
#[derive(Clone, Debug, Default)]
pub struct TlsSession {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
    /// The SNI the client sent.
    pub sni: Option<String>,
    /// The client's certificate, when it sent one and it verified.
    pub peer: Option<CertIdentity>,
    /// The certificate weir served.
    pub local: Option<Arc<CertIdentity>>,
}

impl TlsSession {
    /// Whether the client was authenticated by a certificate (`connection.mtls`).
    pub fn mtls(&self) -> bool {
        self.peer.is_some()
    }
}

/// Names a TLS version as Envoy's `connection.tls_version` does.
pub fn version_name(v: Option<rustls::ProtocolVersion>) -> &'static str {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "",
    }
}

fn rfc2253(name: &X509Name<'_>) -> String {
    let mut parts = Vec::new();
    for rdn in name.iter() {
        let attrs: Vec<String> = rdn
            .iter()
            .map(|a| {
                let oid = a.attr_type();
                let key = oid_short_name(oid).map_or_else(|| oid.to_id_string(), str::to_string);
                let value = a
                    .as_str()
                    .map_or_else(|_| "#".to_string() + &hex(a.as_slice()), escape);
                format!("{key}={value}")
            })
            .collect();
        parts.push(attrs.join("+"));
    }
    // RFC 2253 lists the most specific RDN first: the reverse of the encoding.
    parts.reverse();
    parts.join(",")
}

fn oid_short_name(oid: &x509_parser::der_parser::Oid<'_>) -> Option<&'static str> {
    Some(match oid.to_id_string().as_str() {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.chars().enumerate() {
        let edge = (i == 0 && (c == ' ' || c == '#')) || (i + 1 == s.chars().count() && c == ' ');
        if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sans_subject_and_validity() {
        let mut params = rcgen::CertificateParams::new(vec!["web.local".to_string()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example.org/ns/a/sa/web".try_into().unwrap(),
        ));
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "Acme, Inc");
        dn.push(rcgen::DnType::CommonName, "web");
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let id = CertIdentity::from_der(cert.der()).unwrap();
        assert_eq!(id.subject, "CN=web,O=Acme\\, Inc");
        assert_eq!(id.dns_sans, vec!["web.local"]);
        assert_eq!(
            id.spiffe.as_deref(),
            Some("spiffe://example.org/ns/a/sa/web")
        );
        assert_eq!(id.sha256.len(), 64);
        assert!(id.check_valid_at(SystemTime::now()).is_ok());
        let far = SystemTime::now() + Duration::from_secs(3600 * 24 * 365 * 5000);
        assert!(id.check_valid_at(far).unwrap_err().contains("expired"));
    }

    #[test]
    fn garbage_is_an_error() {
        let e = CertIdentity::from_der(&CertificateDer::from(vec![1, 2, 3])).unwrap_err();
        assert!(e.contains("not a valid X.509"), "{e}");
    }
}
