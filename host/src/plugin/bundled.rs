//! Plugins built into the weir binary (host/build.rs compiles them from
//! plugins/): the Mixer adapters `telemetry`, `authn-jwt`, `authz-rbac` and
//! `ratelimit`, which the embedded default config runs. A config asks for
//! them with `[plugins] bundled = ["telemetry", ...]`; they run before the
//! plugins folder's, in the order listed, named `<bundled>/NAME` in
//! /plugins, and read their settings from `NAME.toml` in the plugins folder
//! when there is one, else from `[plugins.settings.NAME]` of the config.

use std::path::{Path, PathBuf};

const TELEMETRY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/telemetry.wasm"));
const AUTHN_JWT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/authn_jwt.wasm"));
const AUTHZ_RBAC: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/authz_rbac.wasm"));
const RATELIMIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ratelimit.wasm"));

/// The names weir can bundle.
pub const NAMES: [&str; 4] = ["telemetry", "authn-jwt", "authz-rbac", "ratelimit"];

/// The folder-like prefix of bundled plugins' paths.
const PREFIX: &str = "<bundled>";

/// The bundled plugin `name`'s .wasm; `None` when there is no such plugin or
/// this weir was built without it (no wasm32-wasip2 target at build time).
pub fn get(name: &str) -> Option<&'static [u8]> {
    let bytes = match name {
        "telemetry" => TELEMETRY,
        "authn-jwt" => AUTHN_JWT,
        "authz-rbac" => AUTHZ_RBAC,
        "ratelimit" => RATELIMIT,
        _ => return None,
    };
    (!bytes.is_empty()).then_some(bytes)
}

/// The path a bundled plugin goes by: `<bundled>/NAME`.
pub fn path(name: &str) -> PathBuf {
    Path::new(PREFIX).join(name)
}

/// The bundled plugin a path names, if it is one.
pub fn name_of(path: &Path) -> Option<&str> {
    let rest = path.strip_prefix(PREFIX).ok()?;
    rest.to_str().filter(|n| NAMES.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_and_unknown_names_are_none() {
        assert_eq!(name_of(&path("telemetry")), Some("telemetry"));
        assert_eq!(name_of(Path::new("plugins/telemetry")), None);
        assert_eq!(name_of(&path("nope")), None);
        assert!(get("nope").is_none());
    }
}
