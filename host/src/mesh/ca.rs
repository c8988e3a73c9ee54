//! The mesh CA behind `weir ca init` and `weir ca issue`: an ECDSA P-256 root
//! and workload certificates carrying a SPIFFE ID as their URI SAN, made with
//! rcgen (no hand-made ASN.1).
//!
//! A CA folder holds `ca.pem` (the root certificate, the mesh's trust bundle)
//! and `ca-key.pem` (its key, mode 0600). A workload folder gets `cert.pem`,
//! `key.pem` (mode 0600) and `ca.pem`, the three files a listener's or a
//! cluster's `tls` table names.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use super::spiffe::SpiffeId;

/// The root certificate's file name in a CA folder (and the trust bundle's in a workload folder).
pub const CA_CERT: &str = "ca.pem";
/// The root key's file name in a CA folder.
pub const CA_KEY: &str = "ca-key.pem";
/// A workload certificate's file name.
pub const CERT: &str = "cert.pem";
/// A workload key's file name.
pub const KEY: &str = "key.pem";

/// What `weir ca init` made.
#[derive(Debug)]
pub struct InitOutcome {
    /// The root certificate.
    pub cert: PathBuf,
    /// The root key.
    pub key: PathBuf,
    /// The trust domain written into the root.
    pub trust_domain: String,
}

/// Makes a root CA in `dir` for `trust_domain`, valid for `ttl`. Refuses to
/// overwrite an existing CA unless `force`.
pub fn init(
    dir: &Path,
    trust_domain: &str,
    ttl: Duration,
    force: bool,
) -> Result<InitOutcome, String> {
    let domain_id = SpiffeId::parse(&format!("spiffe://{trust_domain}"))
        .map_err(|e| format!("--trust-domain {trust_domain:?}: {e}"))?;
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if !force && (cert_path.exists() || key_path.exists()) {
        return Err(format!(
            "{} already holds a CA: pass --force to replace it (every workload certificate it issued stops being trusted)",
            dir.display()
        ));
    }
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, format!("weir mesh CA ({trust_domain})"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![uri_san(domain_id.as_str())?];
    set_validity(&mut params, ttl)?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    Ok(InitOutcome {
        cert: cert_path,
        key: key_path,
        trust_domain: trust_domain.to_string(),
    })
}

/// What `weir ca issue` made.
#[derive(Debug)]
pub struct IssueOutcome {
    /// The workload certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// A copy of the root, the trust bundle.
    pub ca: PathBuf,
    /// When it expires.
    pub not_after: time::OffsetDateTime,
}

/// Issues a workload certificate for `spiffe` (plus `dns` names) from the CA
/// in `ca_dir`, valid for `ttl`, into `out`.
pub fn issue(
    ca_dir: &Path,
    spiffe: &str,
    dns: &[String],
    out: &Path,
    ttl: Duration,
) -> Result<IssueOutcome, String> {
    let id = SpiffeId::parse(spiffe).map_err(|e| format!("--spiffe: {e}"))?;
    let (ca_cert_path, ca_key_path) = (ca_dir.join(CA_CERT), ca_dir.join(CA_KEY));
    let ca_pem = fs::read_to_string(&ca_cert_path).map_err(|e| {
        format!(
            "cannot read the CA certificate {}: {e} (make one with `weir ca init --dir {}`)",
            ca_cert_path.display(),
            ca_dir.display()
        )
    })?;
    let ca_key_pem = fs::read_to_string(&ca_key_path)
        .map_err(|e| format!("cannot read the CA key {}: {e}", ca_key_path.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| format!("{}: not a PEM private key: {e}", ca_key_path.display()))?;
    let ca_der = crate::listener::tls::parse_certs(ca_pem.as_bytes(), &ca_cert_path)?.remove(0);
    let ca_identity = super::CertIdentity::from_der(&ca_der)
        .map_err(|e| format!("{}: {e}", ca_cert_path.display()))?;
    if let Some(domain) = ca_identity
        .spiffe
        .as_deref()
        .and_then(|d| d.strip_prefix("spiffe://"))
        && domain != id.trust_domain()
    {
        return Err(format!(
            "--spiffe {spiffe}: the CA in {} serves trust domain {domain:?}, not {:?}",
            ca_dir.display(),
            id.trust_domain()
        ));
    }
    if ca_identity.not_after <= std::time::SystemTime::now() {
        return Err(format!(
            "the CA certificate {} has expired: make a new CA with `weir ca init --force`",
            ca_cert_path.display()
        ));
    }
    let issuer = Issuer::from_ca_cert_der(&ca_der, &ca_key).map_err(|e| {
        format!(
            "{}: cannot use it as an issuer: {e}",
            ca_cert_path.display()
        )
    })?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, id.trust_domain());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyAgreement,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let mut sans = vec![uri_san(id.as_str())?];
    for name in dns {
        sans.push(SanType::DnsName(
            name.clone()
                .try_into()
                .map_err(|e| format!("--dns {name:?}: {e}"))?,
        ));
    }
    params.subject_alt_names = sans;
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, ttl)?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
    fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let outcome = IssueOutcome {
        cert: out.join(CERT),
        key: out.join(KEY),
        ca: out.join(CA_CERT),
        not_after: params.not_after,
    };
    // Key first, certificate last: a watcher reloading on the certificate sees a matching pair.
    write_file(&outcome.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&outcome.ca, ca_pem.as_bytes(), 0o644)?;
    write_file(&outcome.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(outcome)
}

fn uri_san(uri: &str) -> Result<SanType, String> {
    Ok(SanType::URI(
        uri.try_into().map_err(|e| format!("{uri:?}: {e}"))?,
    ))
}

fn set_validity(params: &mut CertificateParams, ttl: Duration) -> Result<(), String> {
    if ttl < Duration::from_secs(60) {
        return Err(format!(
            "--ttl {}: must be at least 1m",
            humantime::format_duration(ttl)
        ));
    }
    let now = time::OffsetDateTime::now_utc();
    // A minute of slack for clocks a little behind ours.
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + ttl;
    let mut serial = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut serial[..]);
    serial[0] &= 0x7f; // positive
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// watcher never sees half a file; `mode` applies from the start (a key is
/// never readable by others, not even for a moment).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let tmp = path.with_extension("pem.tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let _ = fs::remove_file(&tmp);
    let mut f = opts
        .open(&tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot set the mode of {}: {e}", tmp.display()))?;
    }
    fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_issue_gives_a_verifiable_workload_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init(
            &ca,
            "example.org",
            Duration::from_secs(3600 * 24 * 365),
            false,
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(ca.join(CA_KEY)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let e = init(&ca, "example.org", Duration::from_secs(3600), false).unwrap_err();
        assert!(e.contains("--force"), "{e}");
        let out = dir.path().join("web");
        let id = "spiffe://example.org/ns/default/sa/web";
        let issued = issue(
            &ca,
            id,
            &["web.default".into()],
            &out,
            Duration::from_secs(3600),
        )
        .unwrap();
        let der = crate::listener::tls::load_certs(&issued.cert).unwrap();
        let ident = super::super::CertIdentity::from_der(&der[0]).unwrap();
        assert_eq!(ident.spiffe.as_deref(), Some(id));
        assert_eq!(ident.dns_sans, vec!["web.default".to_string()]);
        // The chain verifies against the root as a client certificate would.
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(
                crate::listener::tls::load_certs(&issued.ca)
                    .unwrap()
                    .remove(0),
            )
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            rustls::crypto::ring::default_provider().into(),
        )
        .build()
        .unwrap();
        verifier
            .verify_client_cert(&der[0], &[], rustls_pki_types::UnixTime::now())
            .unwrap();
    }

    #[test]
    fn issue_refuses_a_foreign_trust_domain_and_a_bad_id() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init(&ca, "example.org", Duration::from_secs(3600), false).unwrap();
        let out = dir.path().join("w");
        let e = issue(
            &ca,
            "spiffe://other.org/sa/x",
            &[],
            &out,
            Duration::from_secs(3600),
        )
        .unwrap_err();
        assert!(e.contains("trust domain \"example.org\""), "{e}");
        let e = issue(
            &ca,
            "spiffe://example.org/a//b",
            &[],
            &out,
            Duration::from_secs(3600),
        )
        .unwrap_err();
        assert!(e.contains("empty segment"), "{e}");
        let e = issue(
            &dir.path().join("nope"),
            "spiffe://example.org/a",
            &[],
            &out,
            Duration::from_secs(3600),
        )
        .unwrap_err();
        assert!(e.contains("weir ca init"), "{e}");
    }
}
