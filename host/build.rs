//! Builds the plugins weir bundles into its binary (plugins/telemetry,
//! authn-jwt, authz-rbac and ratelimit, run by the embedded default config),
//! with the `plugin` profile, into target/plugins (where the tests and benches
//! build plugins too, so that none is built twice). Without the wasm32-wasip2 target (or with
//! WEIR_NO_BUNDLED_PLUGINS set) weir is built without them, and a config
//! naming a bundled plugin gets an error saying so.

use std::path::{Path, PathBuf};
use std::process::Command;

const BUNDLED: [(&str, &str); 4] = [
    ("telemetry", "telemetry.wasm"),
    ("authn-jwt", "authn_jwt.wasm"),
    ("authz-rbac", "authz_rbac.wasm"),
    ("ratelimit", "ratelimit.wasm"),
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest
        .parent()
        .expect("host/ is in the workspace")
        .to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    for p in [
        "plugins/telemetry",
        "plugins/authn-jwt",
        "plugins/authz-rbac",
        "plugins/ratelimit",
        "sdk",
        "wit",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=WEIR_NO_BUNDLED_PLUGINS");
    let skipped = std::env::var_os("WEIR_NO_BUNDLED_PLUGINS").is_some();
    let built = if skipped {
        Err("WEIR_NO_BUNDLED_PLUGINS is set".to_string())
    } else {
        build(&root)
    };
    if built.is_err()
        && !skipped
        && let Some(dir) = wasm_target_dir()
    {
        // Built again once the target is installed (a path that does not
        // exist yet counts as changed), not left without plugins for good.
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    for (package, file) in BUNDLED {
        let dest = out.join(file);
        let bytes = match &built {
            Ok(dir) => std::fs::read(dir.join(file)).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        std::fs::write(&dest, bytes).expect("writing to OUT_DIR");
        if let Err(e) = &built {
            println!("cargo:warning=weir is built without its bundled {package} plugin: {e}");
        }
    }
}

/// Where the toolchain keeps the wasm32-wasip2 standard library, which
/// `rustup toolchain install` in the workspace adds.
fn wasm_target_dir() -> Option<PathBuf> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let sysroot = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(sysroot.trim()).join("lib/rustlib/wasm32-wasip2/lib"))
}

/// Runs cargo for the bundled plugins; the folder holding their .wasm.
fn build(root: &Path) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The folder every plugin build of the workspace shares (the tests' and
    // the benches' too): a plugin built here is not built again for them.
    let target = root.join("target/plugins");
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--profile",
        "plugin",
        "--locked",
        "--target",
        "wasm32-wasip2",
    ]);
    for (package, _) in BUNDLED {
        cmd.args(["-p", package]);
    }
    // The outer build's compiler wrappers (clippy-driver) and flags are not for these.
    let output = cmd
        .arg("--target-dir")
        .arg(&target)
        .current_dir(root)
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let why = stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("error"))
            .unwrap_or("no error line");
        return Err(format!(
            "cargo build --target wasm32-wasip2 failed ({}): {why} (is the target installed? rustup toolchain install)",
            output.status
        ));
    }
    Ok(target.join("wasm32-wasip2/plugin"))
}
