//! Wires the parts together: config, runtime, listeners, admin API, reload
//! and shutdown.

pub mod listeners;
mod reload;
mod timer_anchor;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError, ConfigErrors};
use crate::plugin::host::HostServices;
use crate::plugin::manager::PluginManager;
use crate::plugin::watch::PluginWatcher;
use crate::proxy::Shared;
use crate::runtime::Runtime;
use crate::telemetry::Metrics;

/// Process state the admin API reports.
pub struct AppState {
    /// Shared with the request path.
    pub shared: Arc<Shared>,
    /// The config file, when there is one to watch.
    pub config_path: Option<PathBuf>,
    /// The plugins and the chain they make.
    pub plugins: Arc<PluginManager>,
    /// The plugins folder watcher, when it runs.
    pub plugin_watcher: Option<PluginWatcher>,
    /// The running listeners, changed by reloads.
    pub listeners: listeners::Listeners,
    ready: AtomicBool,
    draining: AtomicBool,
    last_reload: Mutex<Value>,
}

impl AppState {
    /// Listeners bound, plugins loaded, not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_draining()
    }

    /// Shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The outcome of the last reload, as JSON (null before any).
    pub fn last_reload(&self) -> Value {
        self.last_reload.lock().expect("reload status lock").clone()
    }

    fn set_last_reload(&self, ok: bool, error: Option<String>) {
        let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        *self.last_reload.lock().expect("reload status lock") =
            json!({ "ok": ok, "at": at, "error": error });
    }
}

/// Checks what validation of the text cannot: that certificate and CA files
/// load. `weir validate` and `weir run` both call it before binding anything.
pub fn check_files(config: &Config) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        if let Some(tls) = &l.tls
            && let Err(e) = crate::listener::tls::server_config(tls, l.http2)
        {
            errors.push(ConfigError {
                path: format!("listener[{i}].tls"),
                location: None,
                message: e,
            });
        }
    }
    for (i, c) in config.clusters.iter().enumerate() {
        if let Some(tls) = &c.tls
            && let Err(e) = crate::upstream::tls::client_config(&c.name, tls, None)
        {
            errors.push(ConfigError {
                path: format!("cluster[{i}].tls"),
                location: None,
                message: e,
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors {
            origin: config.origin.clone(),
            errors,
        })
    }
}

/// The route names of a config, for plugins' `routes`.
pub fn route_names(config: &Config) -> Vec<String> {
    config.routes.iter().map(|r| r.name.clone()).collect()
}

/// Runs weir until SIGTERM or SIGINT, then drains.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    check_files(&config)?;
    if !crate::plugin::engine::set_cache_dir(config.plugin_cache_dir.clone()) {
        tracing::debug!("the plugin engine was already started; its module cache folder stays");
    }
    let workers = config
        .server
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let slots = config
        .plugin_instance_slots
        .unwrap_or_else(|| crate::plugin::engine::default_instance_slots(workers));
    if !crate::plugin::engine::set_instance_slots(slots) {
        tracing::debug!("the plugin engine was already started; its instance pool stays");
    }
    // Started here, so that its epoch ticker runs at normal priority (threads
    // inherit the priority of the thread that starts them; plugins load on a
    // low-priority one).
    crate::plugin::engine::engine();
    let metrics = Arc::new(Metrics::new());
    let runtime = Runtime::build(config.clone(), None, &metrics).await?;
    let chain = Arc::new(ArcSwap::from_pointee(crate::filter::FilterChain::default()));
    let shared = Arc::new(Shared {
        runtime: ArcSwap::from_pointee(runtime),
        chain: chain.clone(),
        metrics: metrics.clone(),
    });
    let quota = crate::quota::Quota::from_config(&config.quota, metrics.clone())
        .map_err(|e| anyhow::anyhow!("[quota]: {e}"))?;
    tracing::info!(quota.backend = quota.backend_name(), "quota service ready");
    let mut host =
        HostServices::new(Arc::downgrade(&shared), metrics.clone()).with_quota(Arc::new(quota));
    match &config.access_log {
        crate::config::AccessLogTarget::Stdout => {
            host =
                host.with_access_log(Arc::new(crate::telemetry::access_log::AccessLog::stdout()));
        }
        crate::config::AccessLogTarget::File(path) => {
            let log = crate::telemetry::access_log::AccessLog::file(path)
                .map_err(|e| anyhow::anyhow!("[telemetry] access_log: {e}"))?;
            host = host.with_access_log(Arc::new(log));
        }
        crate::config::AccessLogTarget::Off => {}
    }
    let host = Arc::new(host);
    let plugins = Arc::new(PluginManager::new(
        config.plugins_dir.clone(),
        config.plugin_defaults.clone(),
        route_names(&config),
        host,
        metrics.clone(),
        workers,
        chain,
    ));
    let report = plugins.rescan_now().await;
    if !report.failed.is_empty() {
        tracing::error!(
            failed = ?report.failed,
            "some plugins failed to load; weir serves with their failure policy in place (see GET /plugins)"
        );
    }
    let plugin_watcher = match crate::plugin::watch::spawn(plugins.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the plugins folder; use POST /plugins/reload or SIGHUP after changing plugins");
            None
        }
    };
    let tasks = TaskTracker::new();
    let state = Arc::new(AppState {
        shared: shared.clone(),
        config_path: config_path.clone(),
        plugins,
        plugin_watcher,
        listeners: listeners::Listeners::new(shared.clone(), tasks.clone()),
        ready: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        last_reload: Mutex::new(Value::Null),
    });

    let (bound, mut bind_errors) = match state.listeners.plan(&config.listeners).await {
        Ok(plan) => (Some(plan), Vec::new()),
        Err(errors) => (None, errors),
    };
    let admin = match config.admin {
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(s) => Some(s),
            Err(e) => {
                bind_errors.push(format!("admin: cannot bind {addr}: {e}"));
                None
            }
        },
        None => None,
    };
    if !bind_errors.is_empty() {
        anyhow::bail!("{}", bind_errors.join("\n"));
    }

    tokio::spawn(timer_anchor::run());
    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(plan) = bound {
        plan.commit();
    }
    if let Some(socket) = admin {
        tracing::info!(address = %socket.local_addr().context("admin address")?, "admin API listening");
        tokio::spawn(crate::admin::serve(socket, state.clone(), stop_rx.clone()));
    }
    if let Some(path) = config_path {
        reload::spawn_watcher(path, state.clone())?;
    }
    state.ready.store(true, Ordering::Release);
    tracing::info!(config = %config.origin, routes = config.routes.len(), clusters = config.clusters.len(), "weir is ready");

    wait_for_signal(&state).await;
    state.draining.store(true, Ordering::Release);
    tracing::info!(grace = ?config.server.drain_timeout, "draining: no new connections, finishing requests in flight");
    let _ = stop_tx.send(true);
    state.listeners.stop_all().await;
    tasks.close();
    if tokio::time::timeout(config.server.drain_timeout, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tasks.len(),
            "drain grace period over; closing the remaining connections"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal(state: &Arc<AppState>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                reload::reload_now(state).await;
                state.plugins.rescan_now().await;
            }
        }
    }
}
