//! Certificate files that rotate: a [`RotatingPair`] holds the certificate
//! and key a listener serves (or a cluster presents), and a [`PairWatcher`]
//! reloads it when either file changes. A replacement is checked before it
//! is used (it parses, the key matches the certificate, it is valid now);
//! one that fails is refused with the reason in the log and in
//! `weir_tls_certificate_reloads_total{outcome="failure"}`, and the pair
//! loaded before keeps serving. New handshakes take the new pair; open
//! connections keep theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::Watcher;
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use super::CertIdentity;
use crate::config::CertPaths;
use crate::telemetry::Metrics;

/// A certificate and key as loaded and checked.
#[derive(Debug)]
pub struct LoadedPair {
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// The leaf certificate's identity.
    pub identity: Arc<CertIdentity>,
    /// The file bytes it came from, to tell a real change from a touch.
    source: (Vec<u8>, Vec<u8>),
}

/// Reads and checks `paths`: both files parse, the key belongs to the
/// certificate, and the certificate is valid now. The error names the file
/// and the reason.
pub fn load_pair(paths: &CertPaths) -> Result<LoadedPair, String> {
    let cert_pem = std::fs::read(&paths.cert)
        .map_err(|e| format!("cannot read certificate file {}: {e}", paths.cert.display()))?;
    let key_pem = std::fs::read(&paths.key)
        .map_err(|e| format!("cannot read private key file {}: {e}", paths.key.display()))?;
    let certs = crate::listener::tls::parse_certs(&cert_pem, &paths.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "{}: no valid PEM private key ({e:?}; expected -----BEGIN PRIVATE KEY-----)",
            paths.key.display()
        )
    })?;
    let identity =
        CertIdentity::from_der(&certs[0]).map_err(|e| format!("{}: {e}", paths.cert.display()))?;
    identity
        .check_valid_at(SystemTime::now())
        .map_err(|e| format!("{}: {e}", paths.cert.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(certs, key, &provider).map_err(|e| {
        format!(
            "{} and {} do not go together: {e} (is the key the one the certificate was issued for?)",
            paths.cert.display(),
            paths.key.display()
        )
    })?;
    Ok(LoadedPair {
        key: Arc::new(key),
        identity: Arc::new(identity),
        source: (cert_pem, key_pem),
    })
}

/// A certificate and key that can be replaced while serving.
#[derive(Debug)]
pub struct RotatingPair {
    paths: CertPaths,
    current: ArcSwap<LoadedPair>,
}

impl RotatingPair {
    /// Loads `paths`; the error says why it cannot serve.
    pub fn load(paths: &CertPaths) -> Result<Arc<RotatingPair>, String> {
        Ok(Arc::new(RotatingPair {
            paths: paths.clone(),
            current: ArcSwap::from_pointee(load_pair(paths)?),
        }))
    }

    /// The pair new handshakes use.
    pub fn current(&self) -> Arc<LoadedPair> {
        self.current.load_full()
    }

    /// The files.
    pub fn paths(&self) -> &CertPaths {
        &self.paths
    }

    /// Reloads from the files: `Ok(true)` when a new pair took over,
    /// `Ok(false)` when the files hold what is already served, `Err` (the old
    /// pair still serving) when the replacement is refused.
    pub fn reload(&self) -> Result<bool, String> {
        let old = self.current.load();
        if let (Ok(c), Ok(k)) = (
            std::fs::read(&self.paths.cert),
            std::fs::read(&self.paths.key),
        ) && c == old.source.0
            && k == old.source.1
        {
            return Ok(false);
        }
        let new = load_pair(&self.paths)?;
        self.current.store(Arc::new(new));
        Ok(true)
    }
}

/// Watches the files of some pairs and reloads them when they change. Dropping it stops the watch.
pub struct PairWatcher {
    _watcher: notify::RecommendedWatcher,
}

/// How long events are gathered before a reload (a certificate and its key are often written one after the other).
const SETTLE: Duration = Duration::from_millis(150);

impl PairWatcher {
    /// Starts watching the folders of `pairs`' files. `metrics` counts each
    /// reload by outcome; `owner` names who serves them (a listener or a cluster) in the log.
    pub fn start(
        owner: String,
        pairs: Vec<Arc<RotatingPair>>,
        metrics: Arc<Metrics>,
    ) -> Result<PairWatcher, String> {
        let (tx, rx) = mpsc::channel::<()>();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev
                && !matches!(ev.kind, notify::EventKind::Access(_))
            {
                let _ = tx.send(());
            }
        })
        .map_err(|e| format!("cannot watch certificate files: {e}"))?;
        let mut dirs: Vec<PathBuf> = pairs
            .iter()
            .flat_map(|p| [parent(&p.paths.cert), parent(&p.paths.key)])
            .collect();
        dirs.sort();
        dirs.dedup();
        for d in &dirs {
            watcher
                .watch(d, notify::RecursiveMode::NonRecursive)
                .map_err(|e| {
                    format!("cannot watch {} for certificate changes: {e}", d.display())
                })?;
        }
        for p in &pairs {
            metrics.tls_certificate_expiry(&p.paths.cert, p.current().identity.not_after);
        }
        std::thread::Builder::new()
            .name("weir-certs".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    // Gather the burst, then reload once.
                    while rx.recv_timeout(SETTLE).is_ok() {}
                    for p in &pairs {
                        reload_one(&owner, p, &metrics);
                    }
                }
            })
            .map_err(|e| format!("cannot start the certificate watcher: {e}"))?;
        Ok(PairWatcher { _watcher: watcher })
    }
}

fn reload_one(owner: &str, pair: &RotatingPair, metrics: &Metrics) {
    let cert = pair.paths.cert.display();
    match pair.reload() {
        Ok(false) => {}
        Ok(true) => {
            let id = pair.current().identity.clone();
            metrics.tls_certificate_reload(&pair.paths.cert, true);
            metrics.tls_certificate_expiry(&pair.paths.cert, id.not_after);
            tracing::info!(
                tls.owner = owner,
                tls.cert = %cert,
                tls.identity = id.spiffe.as_deref().unwrap_or(&id.subject),
                tls.not_after = %humantime::format_rfc3339_seconds(id.not_after),
                "certificate reloaded: new handshakes use it"
            );
        }
        Err(e) => {
            metrics.tls_certificate_reload(&pair.paths.cert, false);
            tracing::error!(
                tls.owner = owner,
                tls.cert = %cert,
                "certificate replacement refused, the previous certificate keeps serving: {e}"
            );
        }
    }
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
