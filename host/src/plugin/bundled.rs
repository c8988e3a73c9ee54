//! Plugins built into the weir binary (host/build.rs compiles them from
//! plugins/): `telemetry`, which the embedded default config runs. A config
//! asks for them with `[plugins] bundled = ["telemetry"]`; they run before
//! the plugins folder's, named `<bundled>/NAME` in /plugins, and read their
//! settings from `NAME.toml` in the plugins folder when there is one.

use std::path::{Path, PathBuf};

const TELEMETRY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/telemetry.wasm"));

/// The names weir can bundle.
pub const NAMES: [&str; 1] = ["telemetry"];

/// The folder-like prefix of bundled plugins' paths.
const PREFIX: &str = "<bundled>";

/// The bundled plugin `name`'s .wasm; `None` when there is no such plugin or
/// this weir was built without it (no wasm32-wasip2 target at build time).
pub fn get(name: &str) -> Option<&'static [u8]> {
    match name {
        "telemetry" if !TELEMETRY.is_empty() => Some(TELEMETRY),
        _ => None,
    }
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
