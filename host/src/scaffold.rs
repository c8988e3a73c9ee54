//! `weir plugin new NAME`: a filter crate on the weir SDK, ready to build,
//! test and drop into a plugins folder.

use std::path::{Path, PathBuf};

/// Where this weir's SDK sits, when weir runs from its source tree.
pub fn default_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
    sdk.join("Cargo.toml")
        .is_file()
        .then(|| sdk.canonicalize().unwrap_or(sdk))
}

/// Whether `name` works as a crate name and a plugin file name.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a usable plugin name: use lowercase letters, digits and '-', starting with a letter (e.g. add-header)"
        ))
    }
}

/// Writes the crate `name` into `parent/name`, depending on the SDK at `sdk`.
/// Refuses to overwrite anything. Returns the crate's folder.
pub fn new_plugin(name: &str, parent: &Path, sdk: &Path) -> Result<PathBuf, String> {
    check_name(name)?;
    let dir = parent.join(name);
    if dir.exists() {
        return Err(format!(
            "{} already exists; choose another name or --path",
            dir.display()
        ));
    }
    let lib = name.replace('-', "_");
    let ty: String = name
        .split(['-', '_'])
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let files = [
        (
            "Cargo.toml",
            format!(
                r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
weir-sdk = {{ path = {sdk:?} }}
serde = {{ version = "1", features = ["derive"] }}

# Its own workspace, wherever it is created.
[workspace]

[profile.release]
strip = true
"#,
                sdk = sdk.display().to_string()
            ),
        ),
        (
            "src/lib.rs",
            format!(
                r##"//! {name}: a weir filter. It adds a configured header to every request.

use serde::Deserialize;
use weir_sdk::{{Action, Filter, Request}};

/// The plugin's `[config]` table (weir checks it against this type's schema).
#[derive(Deserialize, weir_sdk::JsonSchema)]
#[schemars(crate = "weir_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct Config {{
    /// The value of the `x-{name}` request header.
    pub value: String,
}}

/// The filter.
pub struct {ty} {{
    value: String,
}}

impl Filter for {ty} {{
    type Config = Config;
    type State = ();

    fn new(config: Config) -> Result<Self, String> {{
        Ok({ty} {{ value: config.value }})
    }}

    fn on_request_headers(&self, _: &mut (), req: &mut Request) -> Action {{
        let _ = req.set_header("x-{name}", &self.value);
        Action::Continue
    }}
}}

weir_sdk::export_filter!({ty});

#[cfg(test)]
mod tests {{
    use super::*;
    use weir_sdk::testing::{{Harness, get}};

    #[test]
    fn adds_the_header() {{
        let mut h = Harness::<{ty}>::new(r#"{{"value": "hello"}}"#).unwrap();
        let out = h.request(get("/"));
        assert_eq!(out.action, Action::Continue);
        assert_eq!(out.header("x-{name}"), Some("hello"));
    }}
}}
"##
            ),
        ),
        (
            "README.md",
            format!(
                r#"# {name}

A weir filter written with weir-sdk.

    cargo test                                          # unit tests, natively
    cargo build --release --target wasm32-wasip2        # the component
    cp target/wasm32-wasip2/release/{lib}.wasm /path/to/plugins/50-{name}.wasm
    printf '[config]\nvalue = "hello"\n' > /path/to/plugins/50-{name}.toml

weir loads it within a second, without a restart; `curl localhost:9901/plugins` shows it.
The target needs `rustup target add wasm32-wasip2` once.
"#
            ),
        ),
        (".gitignore", "/target\n".to_string()),
    ];
    std::fs::create_dir_all(dir.join("src"))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for (file, text) in files {
        std::fs::write(dir.join(file), text)
            .map_err(|e| format!("cannot write {}: {e}", dir.join(file).display()))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_nothing_is_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let sdk = Path::new("/sdk");
        assert!(
            new_plugin("Bad Name", tmp.path(), sdk)
                .unwrap_err()
                .contains("not a usable plugin name")
        );
        let dir = new_plugin("add-header", tmp.path(), sdk).unwrap();
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains("pub struct AddHeader"));
        assert!(lib.contains("export_filter!(AddHeader)"));
        assert!(
            new_plugin("add-header", tmp.path(), sdk)
                .unwrap_err()
                .contains("already exists")
        );
    }
}
