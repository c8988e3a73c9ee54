//! Plugins: what the plugins directory holds, the wasmtime engine, and the
//! host services every ABI shares.
//!
//! Every `*.wasm` file in the plugins directory is a plugin; plugins run in
//! file-name order and are named after the file without its number prefix
//! (`10-authn.wasm` is `authn`). An optional `<stem>.toml` beside a plugin holds
//! its settings (see [`PluginToml`]).

pub mod engine;
pub mod host;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use crate::config::{Duration, FailurePolicy, PluginDefaults, Size};
use crate::filter::HttpFilter;

/// A plugin's `<stem>.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginToml {
    /// Handed to the plugin as JSON bytes (its proxy-wasm plugin configuration).
    pub config: Option<toml::Table>,
    /// Handed to the plugin byte for byte instead of `config`.
    pub config_raw: Option<String>,
    /// The proxy-wasm VM configuration.
    pub vm_config: Option<String>,
    /// Plugins with the same vm_id share data and queues. Default: the plugin's name.
    pub vm_id: Option<String>,
    /// Which root context of the module serves this plugin. Default empty.
    pub root_id: Option<String>,
    /// Linear-memory limit per instance.
    pub memory_limit: Option<Size>,
    /// CPU time per callback.
    pub cpu_limit: Option<Duration>,
    /// `closed` or `open`.
    pub failure: Option<String>,
    /// `false` leaves the plugin out of the chain.
    pub enabled: Option<bool>,
}

/// Everything needed to load one plugin.
#[derive(Clone, Debug)]
pub struct PluginSpec {
    /// Its name: the file name without number prefix and extension.
    pub name: String,
    /// The .wasm file.
    pub file: PathBuf,
    /// Plugin configuration bytes.
    pub config: Bytes,
    /// VM configuration bytes.
    pub vm_config: Bytes,
    /// Shared-data and queue namespace.
    pub vm_id: String,
    /// Root context id.
    pub root_id: String,
    /// Linear-memory limit per instance, in bytes.
    pub memory_limit: u64,
    /// CPU time per callback.
    pub cpu_limit: std::time::Duration,
    /// Failure policy.
    pub failure: FailurePolicy,
}

/// A plugin that could not be loaded: which file, and why.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct PluginError {
    /// The file.
    pub file: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// The plugin name for a file stem: `10-authn` is `authn`.
pub fn plugin_name(stem: &str) -> String {
    let trimmed = stem.trim_start_matches(|c: char| c.is_ascii_digit());
    let trimmed = trimmed.strip_prefix(['-', '_']).unwrap_or(trimmed);
    if trimmed.is_empty() {
        stem.to_string()
    } else {
        trimmed.to_string()
    }
}

/// The plugin files of `dir`, in chain order. A missing directory has none.
pub fn scan(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            p.is_file()
                && name.ends_with(".wasm")
                && !name.starts_with('.')
                && !name.starts_with('#')
        })
        .collect();
    files.sort();
    files
}

/// Reads a plugin's spec: its file and its optional `.toml`.
pub fn spec(file: &Path, defaults: &PluginDefaults) -> Result<Option<PluginSpec>, PluginError> {
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin");
    let name = plugin_name(stem);
    let toml_path = file.with_extension("toml");
    let err = |message: String| PluginError {
        file: toml_path.display().to_string(),
        message,
    };
    let settings: PluginToml = match std::fs::read_to_string(&toml_path) {
        Ok(text) => toml::from_str(&text).map_err(|e| err(e.to_string().trim().to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => PluginToml::default(),
        Err(e) => return Err(err(format!("cannot read: {e}"))),
    };
    if settings.enabled == Some(false) {
        return Ok(None);
    }
    if settings.config.is_some() && settings.config_raw.is_some() {
        return Err(err("set config or config_raw, not both".into()));
    }
    let config = match (&settings.config, &settings.config_raw) {
        (Some(table), _) => Bytes::from(serde_json::to_vec(table).map_err(|e| err(e.to_string()))?),
        (None, Some(raw)) => Bytes::from(raw.clone()),
        (None, None) => Bytes::new(),
    };
    let failure = match settings.failure.as_deref() {
        None => defaults.failure,
        Some("closed") => FailurePolicy::Closed,
        Some("open") => FailurePolicy::Open,
        Some(other) => {
            return Err(err(format!(
                "failure: unknown policy {other:?}; choose closed or open"
            )));
        }
    };
    Ok(Some(PluginSpec {
        vm_id: settings.vm_id.clone().unwrap_or_else(|| name.clone()),
        root_id: settings.root_id.clone().unwrap_or_default(),
        name,
        file: file.to_path_buf(),
        config,
        vm_config: Bytes::from(settings.vm_config.unwrap_or_default()),
        memory_limit: settings
            .memory_limit
            .map_or(defaults.memory_limit, |s| s.bytes()),
        cpu_limit: settings.cpu_limit.map_or(defaults.cpu_limit, |d| d.get()),
        failure,
    }))
}

/// Loads every plugin of `dir` into filters, in chain order, with the errors of those that failed.
pub fn load_dir(
    dir: &Path,
    defaults: &PluginDefaults,
    host: &Arc<host::HostServices>,
    workers: usize,
) -> (Vec<Arc<dyn HttpFilter>>, Vec<PluginError>) {
    let mut filters: Vec<Arc<dyn HttpFilter>> = Vec::new();
    let mut errors = Vec::new();
    for file in scan(dir) {
        let loaded = spec(&file, defaults).and_then(|s| match s {
            Some(s) => {
                crate::abi::proxy_wasm::ProxyWasmPlugin::load(s, host.clone(), workers).map(Some)
            }
            None => Ok(None),
        });
        match loaded {
            Ok(Some(p)) => filters.push(p),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    (filters, errors)
}

/// Loads every plugin of a config as `run` would, keeping nothing: for `weir validate`.
pub fn check(config: &crate::config::Config) -> Vec<PluginError> {
    let metrics = Arc::new(crate::telemetry::Metrics::new());
    let host = Arc::new(host::HostServices::new(std::sync::Weak::new(), metrics));
    load_dir(&config.plugins_dir, &config.plugin_defaults, &host, 1).1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_drop_the_number_prefix() {
        assert_eq!(plugin_name("10-authn"), "authn");
        assert_eq!(plugin_name("020_rate-limit"), "rate-limit");
        assert_eq!(plugin_name("telemetry"), "telemetry");
        assert_eq!(plugin_name("42"), "42");
    }
}
