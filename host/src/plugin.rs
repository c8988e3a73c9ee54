//! Plugins: what the plugins directory holds, the wasmtime engine, and the
//! host services every ABI shares.
//!
//! Every `*.wasm` file in the plugins directory is a plugin; plugins run in
//! file-name order and are named after the file without its number prefix
//! (`10-authn.wasm` is `authn`). An optional `<stem>.toml` beside a plugin holds
//! its settings (see [`PluginToml`]).

pub mod background;
pub mod bundled;
pub mod engine;
pub mod health;
pub mod host;
pub mod manager;
pub mod variant;
pub mod watch;

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
    /// Attach to these routes only (by name). Default: every route.
    pub routes: Option<Vec<String>>,
    /// A canary version: `{ file = "next/20-authz.wasm", weight = 10 }`.
    pub canary: Option<CanaryToml>,
    /// A shadow version: `{ file = "next/20-authz.wasm" }`.
    pub shadow: Option<ShadowToml>,
}

/// `canary = { file, weight }` in a plugin's `.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryToml {
    /// The canary's .wasm, relative to the plugins folder, in a subfolder.
    pub file: String,
    /// Percent of the plugin's requests it serves, 1 to 99.
    pub weight: u32,
}

/// `shadow = { file }` in a plugin's `.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowToml {
    /// The shadow's .wasm, relative to the plugins folder, in a subfolder.
    pub file: String,
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
    /// The routes it is attached to; `None` for all.
    pub routes: Option<Arc<[String]>>,
    /// Its counters and trap history, shared across its versions.
    pub health: Arc<health::PluginHealth>,
    /// A canary or shadow version to run beside it, and its file.
    pub variant: Option<(variant::VariantKind, PathBuf)>,
    /// The compiler tier to load it at (the optimized one unless the plugin
    /// manager asks for a fast baseline load).
    pub tier: engine::Tier,
}

/// A loaded plugin of any ABI: a filter, plus what the admin API reports.
pub trait LoadedPlugin: HttpFilter {
    /// The ABI and its version, such as `proxy-wasm 0.2.1`.
    fn abi(&self) -> String;
    /// Linear memory in use across its instances, in bytes.
    fn memory_bytes(&self) -> u64;
    /// Where its compiled module came from.
    fn module_origin(&self) -> engine::ModuleOrigin;
    /// Which compiler made its code.
    fn tier(&self) -> engine::Tier;
    /// How weir calls it: `synchronous`, or `async` when it imports a host
    /// function that waits (each callback then runs on a fiber, which costs
    /// more per call). /plugins shows it, so a filter author sees the price
    /// of an import.
    fn calls(&self) -> &'static str {
        "synchronous"
    }
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

/// A plugin's `.toml` beside its file: `Ok(None)` when there is none.
pub fn read_settings(file: &Path) -> Result<Option<String>, PluginError> {
    let toml_path = file.with_extension("toml");
    match std::fs::read_to_string(&toml_path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PluginError {
            file: toml_path.display().to_string(),
            message: format!("cannot read: {e}"),
        }),
    }
}

/// Reads a plugin's spec from its file name and the text of its optional `.toml`;
/// `Ok(None)` when it is disabled. `routes` are the config's route names.
pub fn spec(
    file: &Path,
    settings: Option<&str>,
    defaults: &PluginDefaults,
    routes: &[String],
    health: Arc<health::PluginHealth>,
) -> Result<Option<PluginSpec>, PluginError> {
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
    let settings: PluginToml = match settings {
        Some(text) => toml::from_str(text).map_err(|e| err(e.to_string().trim().to_string()))?,
        None => PluginToml::default(),
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
    if let Some(list) = &settings.routes {
        let unknown: Vec<&String> = list.iter().filter(|r| !routes.contains(r)).collect();
        if !unknown.is_empty() {
            return Err(err(format!(
                "routes: no route named {}; the config's routes are: {}",
                unknown
                    .iter()
                    .map(|r| format!("{r:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                routes.join(", ")
            )));
        }
    }
    let variant = match (&settings.canary, &settings.shadow) {
        (Some(_), Some(_)) => {
            return Err(err(
                "set canary or shadow, not both (try the shadow first, then the canary)".into(),
            ));
        }
        (Some(c), None) => {
            if !(1..=99).contains(&c.weight) {
                return Err(err(format!(
                    "canary.weight: {} is not a percentage from 1 to 99 (100 is a plain update: replace the file)",
                    c.weight
                )));
            }
            Some((
                variant::VariantKind::Canary { weight: c.weight },
                variant_path(file, &c.file).map_err(|m| err(format!("canary.file: {m}")))?,
            ))
        }
        (None, Some(sh)) => Some((
            variant::VariantKind::Shadow,
            variant_path(file, &sh.file).map_err(|m| err(format!("shadow.file: {m}")))?,
        )),
        (None, None) => None,
    };
    Ok(Some(PluginSpec {
        variant,
        tier: engine::Tier::Optimized,
        routes: settings.routes.clone().map(Arc::from),
        health,
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

/// Where a canary or shadow file named `rel` in the `.toml` of plugin `file`
/// is: in a subfolder of the plugins folder, so it is not a plugin of its own.
fn variant_path(file: &Path, rel: &str) -> Result<PathBuf, String> {
    let rel_path = Path::new(rel);
    if rel_path.is_absolute()
        || rel_path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!(
            "{rel:?} must be a path inside the plugins folder, such as \"next/20-authz.wasm\""
        ));
    }
    if rel_path.components().count() < 2 {
        return Err(format!(
            "{rel:?} would be a plugin of its own: put it in a subfolder, such as \"next/{rel}\""
        ));
    }
    let dir = file.parent().unwrap_or(Path::new("."));
    Ok(dir.join(rel_path))
}

/// The canary or shadow file a plugin's `.toml` text names, if any (an
/// invalid `.toml` names none; loading it reports why).
pub fn variant_file(file: &Path, settings: Option<&str>) -> Option<PathBuf> {
    let t: PluginToml = toml::from_str(settings?).ok()?;
    let rel = t.canary.map(|c| c.file).or(t.shadow.map(|s| s.file))?;
    variant_path(file, &rel).ok()
}

/// Compiles and starts one plugin from its spec and file bytes, with the ABI
/// the bytes declare.
pub fn load(
    spec: PluginSpec,
    bytes: &[u8],
    host: &Arc<host::HostServices>,
    workers: usize,
) -> Result<Arc<dyn LoadedPlugin>, PluginError> {
    if crate::abi::component::is_component(bytes) {
        crate::abi::component::ComponentPlugin::load(spec, bytes, host.clone(), workers)
    } else {
        crate::abi::proxy_wasm::ProxyWasmPlugin::load(spec, bytes, host.clone(), workers)
    }
}

/// What a plugin file is, for `weir plugin describe`: ABI and version,
/// exports, imports and configuration schema, as text.
pub fn describe(file: &Path) -> Result<String, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
    let text = if crate::abi::component::is_component(&bytes) {
        crate::abi::component::describe(&bytes)
    } else {
        crate::abi::proxy_wasm::describe(&bytes)
    };
    text.map(|t| {
        format!(
            "file: {}
sha256: {}
{t}",
            file.display(),
            engine::sha256_hex(&bytes)
        )
    })
    .map_err(|e| format!("{}: {e}", file.display()))
}

/// Loads every plugin of a config as `run` would, keeping nothing: for `weir validate`.
pub fn check(config: &crate::config::Config) -> Vec<PluginError> {
    let metrics = Arc::new(crate::telemetry::Metrics::new());
    let host = Arc::new(host::HostServices::new(std::sync::Weak::new(), metrics));
    let routes: Vec<String> = config.routes.iter().map(|r| r.name.clone()).collect();
    let mut errors = Vec::new();
    for file in scan(&config.plugins_dir) {
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .map(plugin_name)
            .unwrap_or_default();
        let health = Arc::new(health::PluginHealth::new(&name, None));
        let result = read_settings(&file)
            .and_then(|t| {
                spec(
                    &file,
                    t.as_deref(),
                    &config.plugin_defaults,
                    &routes,
                    health,
                )
            })
            .and_then(|s| match s {
                Some(s) => {
                    let bytes = std::fs::read(&file).map_err(|e| PluginError {
                        file: file.display().to_string(),
                        message: format!("cannot read: {e}"),
                    })?;
                    load(s, &bytes, &host, 1).map(|_| ())
                }
                None => Ok(()),
            });
        if let Err(e) = result {
            errors.push(e);
        }
    }
    errors
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
