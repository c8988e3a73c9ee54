//! The plugin manager: turns the plugins directory into the filter chain, and
//! keeps doing so as the directory changes.
//!
//! A rescan reads every plugin file and its `.toml`; what did not change since
//! the last attempt is kept as it is. A new or changed plugin is compiled
//! (or taken from the module cache) and started aside, off the request path;
//! only a version that loaded and accepted its configuration replaces the one
//! serving. The chain is then rebuilt and swapped in with one store: requests
//! in flight keep the filters they started with, and an old version is freed
//! when its last request ends.
//!
//! A version that arrives while weir serves is compiled by the baseline
//! compiler, which takes about an eighth of the optimizing one's CPU time
//! (see [`super::engine`]): it goes live sooner and takes less from
//! the workers. Once it has served [`TIER_UP_AFTER`] unchanged, it is
//! compiled again by the optimizing compiler, off the request path, and the
//! optimized version replaces it as any update does (the plugin starts
//! again: a new VM, `on_vm_start` and `on_configure`). Plugins found at
//! start are compiled optimized at once.
//!
//! A failed update leaves the previous version serving. A plugin that never
//! loaded follows its failure policy: `closed` puts a filter answering 503
//! (naming it) in its place, `open` leaves it out.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use super::health::PluginHealth;
use super::host::HostServices;
use super::variant::{Canary, Shadow, VariantKind, VariantStats};
use super::{LoadedPlugin, PluginError, engine, plugin_name, read_settings, scan, spec};
use crate::config::{FailurePolicy, PluginDefaults};
use crate::filter::{
    Action, ChainEntry, FilterChain, FilterFuture, HttpFilter, LocalResponse, StreamFilter,
    StreamInfo, decided,
};
use crate::telemetry::Metrics;

/// A file modified this recently that fails to load may still be being
/// written: it is tried once more after this long before it counts as failed.
pub const SETTLE: Duration = Duration::from_secs(1);

/// How long a version compiled by the baseline compiler serves unchanged
/// before it is compiled optimized: long enough that a burst of updates
/// (a deployment writing several files, an operator iterating) compiles
/// each version once, cheaply.
pub const TIER_UP_AFTER: Duration = Duration::from_secs(5);

/// Where a plugin stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PluginState {
    /// A version is serving (perhaps an older one, when the last update failed).
    Active,
    /// No version ever loaded; its failure policy applies.
    Failed,
    /// Being written or about to be retried; not in the chain yet.
    Loading,
    /// `enabled = false` in its `.toml`.
    Disabled,
}

impl PluginState {
    fn as_str(self) -> &'static str {
        match self {
            PluginState::Active => "active",
            PluginState::Failed => "failed",
            PluginState::Loading => "loading",
            PluginState::Disabled => "disabled",
        }
    }
}

/// The version of a plugin that serves.
#[derive(Clone)]
struct Active {
    plugin: Arc<dyn LoadedPlugin>,
    sha256: String,
    vm_id: String,
    since: SystemTime,
    routes: Option<Arc<[String]>>,
    variant: Option<Variant>,
    /// Its optimized compile failed: it stays on baseline code.
    tier_up_failed: bool,
}

impl Active {
    /// Whether any of its code (the active version's or its canary's or
    /// shadow's) came from the baseline compiler.
    fn on_baseline(&self) -> bool {
        let baseline = |p: &Arc<dyn LoadedPlugin>| p.tier() == engine::Tier::Baseline;
        baseline(&self.plugin)
            || self
                .variant
                .as_ref()
                .and_then(|v| v.plugin.as_ref())
                .is_some_and(baseline)
    }

    /// How long until it is due to be compiled optimized (zero: now);
    /// `None` when it needs not be.
    fn tier_up_in(&self, after: Duration) -> Option<Duration> {
        if self.tier_up_failed || !self.on_baseline() {
            return None;
        }
        let served = self.since.elapsed().unwrap_or_default();
        Some(after.saturating_sub(served))
    }
}

/// A canary or shadow version beside the active one.
#[derive(Clone)]
struct Variant {
    kind: VariantKind,
    file: PathBuf,
    sha256: Option<String>,
    /// The loaded version; `None` when it failed to load (`error` says why:
    /// the active version then serves alone).
    plugin: Option<Arc<dyn LoadedPlugin>>,
    error: Option<String>,
    stats: Arc<VariantStats>,
    health: Arc<PluginHealth>,
}

/// One plugin file and what became of it.
struct Slot {
    file_name: String,
    name: String,
    path: PathBuf,
    health: Arc<PluginHealth>,
    /// The (sha256 of the .wasm, .toml text) last tried, loaded or not.
    attempted: Option<(String, Option<String>)>,
    /// A version that failed right after being written, tried once more later.
    deferred: Option<(String, Option<String>)>,
    active: Option<Active>,
    state: PluginState,
    last_error: Option<(String, SystemTime)>,
    failure: FailurePolicy,
}

/// What a rescan did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RescanReport {
    /// Plugins newly loaded or replaced.
    pub loaded: Vec<String>,
    /// Plugins that failed to load this time.
    pub failed: Vec<String>,
    /// Plugins gone from the directory.
    pub removed: Vec<String>,
    /// Whether a file changed while it loaded or looked half-written, and a
    /// rescan is due.
    pub retry_due: bool,
    /// Plugins whose baseline code was replaced by optimized code.
    pub optimized: Vec<String>,
    /// When the next version on baseline code is due to be compiled
    /// optimized (another rescan then does it).
    pub tier_up_in: Option<Duration>,
}

struct Settings {
    dir: PathBuf,
    defaults: PluginDefaults,
    routes: Vec<String>,
}

/// Owns the plugins and the chain they make.
pub struct PluginManager {
    host: Arc<HostServices>,
    metrics: Arc<Metrics>,
    workers: usize,
    settings: Mutex<Settings>,
    slots: Mutex<Vec<Slot>>,
    chain: Arc<ArcSwap<FilterChain>>,
    scanned: std::sync::atomic::AtomicBool,
    loader: Loader,
    /// Whether a rescan for a tier-up is already scheduled.
    tier_up_scheduled: std::sync::atomic::AtomicBool,
}

/// The one thread plugins are compiled and started on, at a low CPU
/// priority, so that loading a plugin under load takes little time from the
/// workers serving requests.
struct Loader {
    jobs: Mutex<std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>>,
}

impl Loader {
    fn start() -> Loader {
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let runtime = tokio::runtime::Handle::try_current().ok();
        std::thread::Builder::new()
            .name("weir-plugins".into())
            .spawn(move || {
                // Plugins start timers and calls on the runtime.
                let _entered = runtime.as_ref().map(|h| h.enter());
                // wasmtime compiles a module's functions on the rayon pool
                // it runs in. The first scan (start-up: nothing is served
                // until it ends, so it is the one thing to finish) runs at
                // normal priority and compiles on every core. On a machine
                // kept busy by others, idle priority starved it: beside two
                // busy loops and a cargo build, the default config's four
                // bundled plugins (from the disk cache, a debug build) made
                // weir ready after 23 to 148 s instead of 1.3 to 2.4 s.
                // Later reloads run on a pool of one thread at the loader's
                // low priority, so that on a busy machine a reload competes
                // with the workers on one core at a time. Reload bench, a new
                // version every second under wrk: p99 x2.4 of the run without
                // reloads, against x3.7 with parallel compilation at nice 10;
                // a cold reload on an idle machine is slower for it.
                let pool = |threads: usize, low: bool| {
                    let builder = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .thread_name(|i| format!("weir-compile-{i}"));
                    let builder = if low {
                        builder.start_handler(|_| super::background::lower_priority())
                    } else {
                        builder
                    };
                    builder
                        .build()
                        .map_err(|e| tracing::warn!(error = %e, "no compiler thread pool; plugins compile on the global one"))
                        .ok()
                };
                let (startup, reloads) = (pool(0, false), pool(1, true));
                let mut first = true;
                while let Ok(job) = rx.recv() {
                    let pool = if std::mem::take(&mut first) {
                        &startup
                    } else {
                        super::background::lower_priority();
                        &reloads
                    };
                    let job = || match pool {
                        // install runs the job on a pool thread: it enters
                        // the runtime there too (plugins start timers and
                        // calls on it when they start).
                        Some(pool) => pool.install(|| {
                            let _entered = runtime.as_ref().map(|h| h.enter());
                            job()
                        }),
                        None => job(),
                    };
                    // A bug in loading one plugin must not end plugin loading for good.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        tracing::error!(
                            "a plugin rescan panicked; the previous plugins keep serving"
                        );
                    }
                }
            })
            .expect("starting the plugin loader thread");
        Loader {
            jobs: Mutex::new(tx),
        }
    }
}

impl PluginManager {
    /// A manager for `dir`, with nothing loaded yet.
    pub fn new(
        dir: PathBuf,
        defaults: PluginDefaults,
        routes: Vec<String>,
        host: Arc<HostServices>,
        metrics: Arc<Metrics>,
        workers: usize,
        chain: Arc<ArcSwap<FilterChain>>,
    ) -> PluginManager {
        PluginManager {
            host,
            metrics,
            workers: workers.max(1),
            settings: Mutex::new(Settings {
                dir,
                defaults,
                routes,
            }),
            slots: Mutex::new(Vec::new()),
            chain,
            scanned: std::sync::atomic::AtomicBool::new(false),
            loader: Loader::start(),
            tier_up_scheduled: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The chain new requests use.
    pub fn chain(&self) -> &ArcSwap<FilterChain> {
        &self.chain
    }

    /// The plugins directory.
    pub fn dir(&self) -> PathBuf {
        self.settings().dir.clone()
    }

    fn settings(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes new settings from a reloaded config. Returns true when they
    /// differ, in which case every plugin is loaded again at the next rescan.
    pub fn update_settings(
        &self,
        dir: PathBuf,
        defaults: PluginDefaults,
        routes: Vec<String>,
    ) -> bool {
        let mut s = self.settings();
        let changed = s.dir != dir
            || s.routes != routes
            || s.defaults.memory_limit != defaults.memory_limit
            || s.defaults.cpu_limit != defaults.cpu_limit
            || s.defaults.failure != defaults.failure
            || s.defaults.bundled != defaults.bundled
            || s.defaults.bundled_settings != defaults.bundled_settings;
        if changed {
            *s = Settings {
                dir,
                defaults,
                routes,
            };
            drop(s);
            for slot in self
                .slots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter_mut()
            {
                slot.attempted = None;
            }
        }
        changed
    }

    /// [`PluginManager::rescan`] on the loader thread, awaited. A version
    /// it leaves on baseline code gets a later rescan that compiles it
    /// optimized.
    pub async fn rescan_now(self: &Arc<Self>) -> RescanReport {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if !self.queue_rescan(Some(tx)) {
            return RescanReport::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Queues a rescan on the loader thread; its report goes to `done`.
    fn queue_rescan(
        self: &Arc<Self>,
        done: Option<tokio::sync::oneshot::Sender<RescanReport>>,
    ) -> bool {
        let me = self.clone();
        let sent = self
            .loader
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Box::new(move || {
                let report = me.rescan();
                if let Some(after) = report.tier_up_in {
                    me.schedule_tier_up(after);
                }
                if let Some(done) = done {
                    let _ = done.send(report);
                }
            }));
        if sent.is_err() {
            tracing::error!("the plugin loader thread is gone; plugins are not reloaded");
        }
        sent.is_ok()
    }

    /// A rescan `after` from now, unless one is scheduled already (it
    /// schedules the next one in turn). Needs the runtime (the loader
    /// thread has entered it).
    fn schedule_tier_up(self: &Arc<Self>, after: Duration) {
        use std::sync::atomic::Ordering;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.tier_up_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        runtime.spawn(async move {
            tokio::time::sleep(after).await;
            me.tier_up_scheduled.store(false, Ordering::Release);
            me.queue_rescan(None);
        });
    }

    /// Reads the directory and brings the chain up to date with it. Blocking:
    /// compiles and starts plugins; call it off the async workers (see
    /// [`PluginManager::rescan_now`]).
    pub fn rescan(&self) -> RescanReport {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let (dir, defaults, routes) = {
            let s = self.settings();
            (s.dir.clone(), s.defaults.clone(), s.routes.clone())
        };
        let mut report = RescanReport::default();
        // At start nothing is being written by weir's own deployment: load or fail now.
        let initial = !self.scanned.swap(true, std::sync::atomic::Ordering::AcqRel);
        let mut old: Vec<Slot> = std::mem::take(&mut *slots);
        let bundled = defaults.bundled.iter().map(|n| super::bundled::path(n));
        for path in bundled.chain(scan(&dir)) {
            let file_name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let mut slot = match old.iter().position(|s| s.file_name == file_name) {
                Some(i) => old.swap_remove(i),
                None => {
                    let name = plugin_name(
                        path.file_stem()
                            .and_then(|s| s.to_str())
                            .unwrap_or_default(),
                    );
                    Slot {
                        health: Arc::new(PluginHealth::new(
                            &name,
                            Some(self.metrics.plugin_callback_histogram(&name)),
                        )),
                        file_name,
                        name,
                        path: path.clone(),
                        attempted: None,
                        deferred: None,
                        active: None,
                        state: PluginState::Loading,
                        last_error: None,
                        failure: defaults.failure,
                    }
                }
            };
            self.refresh(&mut slot, &defaults, &routes, initial, &mut report);
            slots.push(slot);
        }
        for gone in old {
            tracing::info!(plugin.name = %gone.name, file = %gone.path.display(), "plugin removed");
            self.metrics.plugin_up(&gone.name, None);
            report.removed.push(gone.name);
        }
        report.tier_up_in = slots
            .iter()
            .filter_map(|s| s.active.as_ref()?.tier_up_in(TIER_UP_AFTER))
            .min();
        self.chain
            .store(Arc::new(build_chain(&slots, &self.metrics)));
        report
    }

    /// Brings one slot up to date with its files.
    fn refresh(
        &self,
        slot: &mut Slot,
        defaults: &PluginDefaults,
        routes: &[String],
        initial: bool,
        report: &mut RescanReport,
    ) {
        let before = stamp(&slot.path);
        let bundled = super::bundled::name_of(&slot.path);
        let read = match bundled {
            Some(name) => super::bundled::get(name)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| std::io::Error::other("not built into this weir")),
            None => std::fs::read(&slot.path),
        };
        let bytes = match read {
            Ok(b) => b,
            Err(e) => {
                // Gone between the scan and the read: the next event rescans.
                tracing::debug!(file = %slot.path.display(), error = %e, "plugin file unreadable");
                return;
            }
        };
        // A bundled plugin's settings are NAME.toml in the plugins folder,
        // else [plugins.settings.NAME] of the config.
        let settings = match bundled {
            Some(name) => match read_settings(&self.settings().dir.join(format!("{name}.wasm"))) {
                Ok(None) => Ok(defaults.bundled_settings.get(name).cloned()),
                other => other,
            },
            None => read_settings(&slot.path),
        };
        let sha = engine::sha256_hex(&bytes);
        // A canary or shadow file is part of the version: its change reloads.
        let variant_bytes = settings
            .as_ref()
            .ok()
            .and_then(|t| super::variant_file(&slot.path, t.as_deref()))
            .map(|p| std::fs::read(&p).map_err(|e| format!("{}: cannot read: {e}", p.display())));
        let variant_sha = match &variant_bytes {
            Some(Ok(b)) => format!("+{}", engine::sha256_hex(b)),
            Some(Err(e)) => format!("+{e}"),
            None => String::new(),
        };
        let key = (
            format!("{sha}{variant_sha}"),
            settings.as_ref().ok().cloned().flatten(),
        );
        // The same files as last time: nothing to do, unless the version
        // serving is on baseline code and due to be compiled optimized.
        let tier_up = slot.attempted.as_ref() == Some(&key)
            && settings.is_ok()
            && slot
                .active
                .as_ref()
                .and_then(|a| a.tier_up_in(TIER_UP_AFTER))
                .is_some_and(|wait| wait.is_zero());
        if slot.attempted.as_ref() == Some(&key) && settings.is_ok() && !tier_up {
            return;
        }
        // A version arriving while weir serves goes live on baseline code.
        let tier = if initial || tier_up {
            engine::Tier::Optimized
        } else {
            engine::Tier::Baseline
        };
        let load = |text: Option<String>| {
            if let Some(text) = text.as_deref() {
                // Its failure policy applies even if the rest fails to load.
                if let Ok(t) = toml::from_str::<toml::Table>(text) {
                    slot.failure = match t.get("failure").and_then(|v| v.as_str()) {
                        Some("open") => FailurePolicy::Open,
                        Some("closed") => FailurePolicy::Closed,
                        _ => defaults.failure,
                    };
                }
            } else {
                slot.failure = defaults.failure;
            }
            let spec = spec(
                &slot.path,
                text.as_deref(),
                defaults,
                routes,
                slot.health.clone(),
            )?;
            match spec {
                None => Ok(None),
                Some(mut spec) => {
                    spec.tier = tier;
                    let (vm_id, routes) = (spec.vm_id.clone(), spec.routes.clone());
                    let variant = spec.variant.clone();
                    let plugin = super::load(spec.clone(), &bytes, &self.host, self.workers)?;
                    let variant = variant.map(|(kind, file)| {
                        self.load_variant(&spec, kind, file, variant_bytes.clone())
                    });
                    Ok(Some((plugin, vm_id, routes, variant)))
                }
            }
        };
        let result = settings.and_then(load);
        if stamp(&slot.path) != before {
            // Written to while it loaded: what is there now loads at the
            // retry. A version that loaded goes live meanwhile: a file caught
            // mid-write does not validate, so it was whole (a version that
            // was on disk). Dropping it instead starved a busy machine: with
            // loads slower than the writes (a compile taking more than the
            // second between two versions), no version ever went live. A
            // failure may be the write in progress: tried again, not shown.
            report.retry_due = true;
            if !matches!(result, Ok(Some(_))) {
                tracing::debug!(file = %slot.path.display(), "plugin file changed while loading; waiting for the write to finish");
                return;
            }
            tracing::debug!(file = %slot.path.display(), "plugin file changed while loading; the version loaded goes live, the newer one loads next");
        }
        match result {
            Ok(Some((plugin, vm_id, routes, variant))) if tier_up => {
                tracing::info!(
                    plugin.name = %slot.name,
                    sha256 = %sha,
                    "plugin compiled optimized; the optimized code now serves"
                );
                let since = slot
                    .active
                    .as_ref()
                    .map_or_else(SystemTime::now, |a| a.since);
                slot.active = Some(Active {
                    plugin,
                    sha256: sha,
                    vm_id,
                    since,
                    routes,
                    variant,
                    tier_up_failed: false,
                });
                report.optimized.push(slot.name.clone());
            }
            Err(e) if tier_up => {
                tracing::warn!(plugin.name = %slot.name, error = %e, "compiling the plugin optimized failed; its baseline code keeps serving");
                if let Some(a) = slot.active.as_mut() {
                    a.tier_up_failed = true;
                }
                slot.last_error = Some((e.to_string(), SystemTime::now()));
            }
            Ok(Some((plugin, vm_id, routes, variant))) => {
                tracing::info!(
                    plugin.name = %slot.name,
                    file = %slot.path.display(),
                    sha256 = %sha,
                    replaced = slot.active.is_some(),
                    "plugin version serving"
                );
                slot.active = Some(Active {
                    plugin,
                    sha256: sha,
                    vm_id,
                    since: SystemTime::now(),
                    routes,
                    variant,
                    tier_up_failed: false,
                });
                slot.state = PluginState::Active;
                self.metrics.plugin_reload(&slot.name, true);
                self.metrics.plugin_up(&slot.name, Some(true));
                report.loaded.push(slot.name.clone());
            }
            Ok(None) => {
                tracing::info!(plugin.name = %slot.name, "plugin disabled by its .toml");
                slot.active = None;
                slot.state = PluginState::Disabled;
                self.metrics.plugin_up(&slot.name, None);
            }
            Err(e) => {
                // What a file caught mid-write looks like: too short for a
                // header, or a module that ends early.
                let partial =
                    bytes.len() < 8 || e.message.starts_with("invalid WebAssembly module");
                let fresh = before
                    .and_then(|(_, m)| m.elapsed().ok())
                    .is_some_and(|age| age < SETTLE);
                if partial && fresh && !initial && slot.deferred.as_ref() != Some(&key) {
                    // Perhaps caught mid-write (a writer pausing longer than the
                    // debounce): one more try once it has settled.
                    tracing::debug!(file = %slot.path.display(), error = %e, "plugin failed to load right after a write; trying again shortly");
                    slot.deferred = Some(key);
                    if slot.active.is_none() {
                        slot.state = PluginState::Loading;
                    }
                    report.retry_due = true;
                    return;
                }
                self.fail(slot, &e);
                report.failed.push(slot.name.clone());
            }
        }
        slot.attempted = Some(key);
    }

    /// Loads the canary or shadow version of the plugin `spec` describes.
    /// A failure leaves the active version serving alone, and is reported.
    fn load_variant(
        &self,
        spec: &super::PluginSpec,
        kind: VariantKind,
        file: PathBuf,
        bytes: Option<Result<Vec<u8>, String>>,
    ) -> Variant {
        let health = Arc::new(PluginHealth::new(&spec.name, None));
        let mut v = Variant {
            kind,
            file: file.clone(),
            sha256: None,
            plugin: None,
            error: None,
            stats: Arc::default(),
            health: health.clone(),
        };
        let loaded = bytes
            .unwrap_or_else(|| Err(format!("{}: cannot read", file.display())))
            .and_then(|bytes| {
                v.sha256 = Some(engine::sha256_hex(&bytes));
                let mut vspec = spec.clone();
                vspec.file = file.clone();
                vspec.health = health;
                vspec.variant = None;
                super::load(vspec, &bytes, &self.host, self.workers).map_err(|e| e.to_string())
            });
        match loaded {
            Ok(p) => {
                tracing::info!(plugin.name = %spec.name, file = %file.display(), version = kind.as_str(), "plugin {} version serving beside the active one", kind.as_str());
                v.plugin = Some(p);
            }
            Err(e) => {
                tracing::error!(plugin.name = %spec.name, error = %e, "the plugin's {} version failed to load; the active version serves alone", kind.as_str());
                v.error = Some(e);
            }
        }
        v
    }

    fn fail(&self, slot: &mut Slot, e: &PluginError) {
        self.metrics.plugin_reload(&slot.name, false);
        if slot.active.is_some() {
            tracing::error!(plugin.name = %slot.name, error = %e, "plugin update failed; the previous version keeps serving");
        } else {
            tracing::error!(
                plugin.name = %slot.name,
                error = %e,
                policy = ?slot.failure,
                "plugin failed to load; its failure policy applies to the requests it would see"
            );
            slot.state = PluginState::Failed;
            self.metrics.plugin_up(&slot.name, Some(false));
        }
        slot.last_error = Some((e.to_string(), SystemTime::now()));
    }

    /// The plugins in chain order, as the admin API's `GET /plugins` shows them.
    pub fn status(&self) -> Value {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let list: Vec<Value> = slots
            .iter()
            .map(|s| {
                let a = s.active.as_ref();
                let quarantined = s.health.quarantined(now);
                let memory = a.map(|a| a.plugin.memory_bytes());
                if let Some(m) = memory {
                    self.metrics.plugin_memory(&s.name, m);
                }
                json!({
                    "name": s.name,
                    "file": s.path.display().to_string(),
                    "sha256": a.map(|a| a.sha256.clone()),
                    "abi": a.map(|a| a.plugin.abi()),
                    "module": a.map(|a| a.plugin.module_origin().as_str()),
                    "compiler": a.map(|a| a.plugin.tier().as_str()),
                    "calls": a.map(|a| a.plugin.calls()),
                    "vm_id": a.map(|a| a.vm_id.clone()),
                    "state": if quarantined.is_some() { "quarantined" } else { s.state.as_str() },
                    "quarantined_for_seconds": quarantined.map(|d| d.as_secs_f64()),
                    "failure": match s.failure { FailurePolicy::Closed => "closed", FailurePolicy::Open => "open" },
                    "routes": a.and_then(|a| a.routes.as_ref().map(|r| r.to_vec())),
                    "serving_since": a.map(|a| rfc3339(a.since)),
                    "last_error": s.last_error.as_ref().map(|(e, _)| e.clone()),
                    "last_error_at": s.last_error.as_ref().map(|(_, t)| rfc3339(*t)),
                    "callbacks": s.health.callbacks(),
                    "traps": s.health.traps(),
                    "callback_latency_p50_us": s.health.latency_quantile(0.5).map(|d| d.as_secs_f64() * 1e6),
                    "callback_latency_p99_us": s.health.latency_quantile(0.99).map(|d| d.as_secs_f64() * 1e6),
                    "memory_bytes": memory,
                    "canary": a.and_then(|a| a.variant.as_ref()).filter(|v| matches!(v.kind, VariantKind::Canary { .. })).map(|v| {
                        let VariantKind::Canary { weight } = v.kind else { unreachable!() };
                        json!({
                            "file": v.file.display().to_string(),
                            "sha256": v.sha256,
                            "state": if v.plugin.is_some() { "active" } else { "failed" },
                            "last_error": v.error,
                            "weight": weight,
                            "requests": v.stats.variant.load(std::sync::atomic::Ordering::Relaxed),
                            "stable_requests": v.stats.stable.load(std::sync::atomic::Ordering::Relaxed),
                            "callbacks": v.health.callbacks(),
                            "traps": v.health.traps(),
                        })
                    }),
                    "shadow": a.and_then(|a| a.variant.as_ref()).filter(|v| v.kind == VariantKind::Shadow).map(|v| {
                        json!({
                            "file": v.file.display().to_string(),
                            "sha256": v.sha256,
                            "state": if v.plugin.is_some() { "active" } else { "failed" },
                            "last_error": v.error,
                            "decisions": v.stats.variant.load(std::sync::atomic::Ordering::Relaxed),
                            "decisions_differ": v.stats.differ.load(std::sync::atomic::Ordering::Relaxed),
                            "callbacks": v.health.callbacks(),
                            "traps": v.health.traps(),
                        })
                    }),
                })
            })
            .collect();
        json!({ "dir": self.dir().display().to_string(), "plugins": list })
    }

    /// Updates the plugin memory gauges (before a metrics scrape).
    pub fn refresh_metrics(&self) {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for s in slots.iter() {
            if let Some(a) = &s.active {
                self.metrics.plugin_memory(&s.name, a.plugin.memory_bytes());
            }
        }
        for u in engine::slot_usage() {
            self.metrics
                .instance_slots(u.tier.as_str(), u.in_use, u.total);
        }
    }

    /// The last load error of every plugin that has one.
    pub fn errors(&self) -> Vec<String> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|s| s.last_error.as_ref().map(|(e, _)| e.clone()))
            .collect()
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Size and modification time: enough to tell a file written since.
fn stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

fn build_chain(slots: &[Slot], metrics: &Arc<Metrics>) -> FilterChain {
    let entries = slots
        .iter()
        .filter_map(|s| match (&s.active, s.state, s.failure) {
            (Some(a), _, _) => Some(ChainEntry {
                filter: with_variant(a, metrics),
                routes: a.routes.clone(),
            }),
            (None, PluginState::Failed, FailurePolicy::Closed) => Some(ChainEntry {
                filter: Arc::new(NotLoaded {
                    name: s.name.clone(),
                    error: s
                        .last_error
                        .as_ref()
                        .map(|(e, _)| e.clone())
                        .unwrap_or_default(),
                }),
                routes: None,
            }),
            _ => None,
        })
        .collect();
    FilterChain::with_entries(entries)
}

/// The active version as a filter, with its canary or shadow when one loaded.
fn with_variant(a: &Active, metrics: &Arc<Metrics>) -> Arc<dyn HttpFilter> {
    let active: Arc<dyn HttpFilter> = a.plugin.clone();
    let Some(v) = &a.variant else {
        return active;
    };
    let Some(p) = &v.plugin else {
        return active;
    };
    let other: Arc<dyn HttpFilter> = p.clone();
    match v.kind {
        VariantKind::Canary { weight } => Arc::new(Canary {
            stable: active,
            canary: other,
            weight,
            stats: v.stats.clone(),
            metrics: metrics.clone(),
        }),
        VariantKind::Shadow => Arc::new(Shadow {
            active,
            shadow: other,
            stats: v.stats.clone(),
            metrics: metrics.clone(),
        }),
    }
}

/// Stands in the chain for a plugin that never loaded, with `failure = "closed"`:
/// the requests it would have seen are refused, so a broken auth plugin never
/// opens the door.
struct NotLoaded {
    name: String,
    error: String,
}

impl HttpFilter for NotLoaded {
    fn name(&self) -> &str {
        &self.name
    }

    fn new_stream(&self, _info: &Arc<StreamInfo>) -> Box<dyn StreamFilter> {
        Box::new(NotLoadedStream(LocalResponse {
            status: StatusCode::SERVICE_UNAVAILABLE,
            headers: vec![(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            body: Bytes::from(format!(
                "plugin {:?} is not loaded (failure = closed): {}\n",
                self.name, self.error
            )),
            by: self.name.clone(),
        }))
    }
}

struct NotLoadedStream(LocalResponse);

impl StreamFilter for NotLoadedStream {
    fn on_request_headers<'a>(
        &'a mut self,
        _head: &'a mut crate::upstream::Head,
        _end_of_stream: bool,
    ) -> FilterFuture<'a> {
        decided(Action::Respond(self.0.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::background::tests::own_policy;

    #[cfg(target_os = "linux")]
    #[test]
    fn start_up_loads_at_normal_priority_and_reloads_under_sched_idle() {
        // The loader's first job (start-up) runs on the start-up pool at
        // normal priority, later ones on the reload pool at idle priority.
        let loader = Loader::start();
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..3 {
            let tx = tx.clone();
            let job: Box<dyn FnOnce() + Send> = Box::new(move || {
                let name = std::thread::current().name().map(str::to_owned);
                let _ = tx.send((name, own_policy()));
            });
            loader.jobs.lock().unwrap().send(job).unwrap();
        }
        let timeout = std::time::Duration::from_secs(30);
        for (job, want) in [(0, 0), (1, 5), (2, 5)] {
            let (name, policy) = rx.recv_timeout(timeout).expect("the loader ran the job");
            assert_eq!(
                policy, want,
                "job {job} on thread {name:?}: policy {policy}"
            );
        }
    }
}
