// Builds the test filters of tests/wasm for wasm32-wasip1 (once per process)
// and returns the folder holding the .wasm files. Included by the integration
// tests and the benches, which both need the filters built.

/// The folder of the built test filters.
pub fn test_filters_dir() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<Result<std::path::PathBuf, String>> =
        std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/wasm");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let out = std::process::Command::new(cargo)
                .args([
                    "build",
                    "--release",
                    "--locked",
                    "--target",
                    "wasm32-wasip1",
                    "--manifest-path",
                ])
                .arg(root.join("Cargo.toml"))
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_TARGET_DIR")
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).to_string());
            }
            Ok(root.join("target/wasm32-wasip1/release"))
        })
        .clone()
        .unwrap_or_else(|e| panic!("building the test filters failed:\n{e}"))
}
