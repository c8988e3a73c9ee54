#![allow(missing_docs)] // criterion_group! generates an undocumented function
//! The same filter logic through both ABIs, per request, host round trip
//! included: read `:path`, set one request header, then the stream's end.
//! proxy-wasm: the Rust SDK test filter (tests/wasm/pw-test) on a request it
//! only tags. Component: plugins/header-rewrite built with weir-sdk,
//! configured to require `:path` (a read) and set one header. Target: the
//! component path no slower than 1.1 times the proxy-wasm path, and under
//! 2 µs per filter per request.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The allocator weir ships with, so the figures match the binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, criterion_group, criterion_main};
use weir::plugin::host::HostServices;

#[path = "../../tests/wasm/build_filters.rs"]
mod build_filters;

/// Builds plugins/header-rewrite to a component in its own target folder.
fn component() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = root.join("target/plugins");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ok = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "-p",
            "header-rewrite",
        ])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(&root)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("running cargo")
        .success();
    assert!(ok, "building plugins/header-rewrite failed");
    target.join("wasm32-wasip2/release/header_rewrite.wasm")
}

fn load(file: &Path, settings: Option<&str>) -> Arc<dyn weir::plugin::LoadedPlugin> {
    let defaults = weir::config::Config::embedded_default().plugin_defaults;
    let health = Arc::new(weir::plugin::health::PluginHealth::new("bench", None));
    let spec = weir::plugin::spec(file, settings, &defaults, &[], health)
        .unwrap()
        .unwrap();
    let host = Arc::new(HostServices::new(
        std::sync::Weak::new(),
        Arc::new(weir::telemetry::Metrics::new()),
    ));
    weir::plugin::load(spec, &std::fs::read(file).unwrap(), &host, 1).unwrap()
}

fn bench(c: &mut Criterion) {
    let pw = load(
        &build_filters::test_filters_dir().join("pw_test.wasm"),
        Some("config_raw = \"tag\"\n"),
    );
    let comp = load(
        &component(),
        Some("[config]\nrequire = \":path\"\nrequest_set = { \"x-pw-seen\" = \"tag\" }\n"),
    );
    let info = weir_benches::stream_info(None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let log = weir::filter::LogInfo {
        status: 200,
        route: None,
        cluster: None,
        response_headers: None,
    };
    let mut group = c.benchmark_group("header_filter");
    for (name, filter) in [("proxy_wasm", &pw), ("component", &comp)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let (head, ()) = http::Request::get("/bench")
                    .header("host", "example.com")
                    .header("user-agent", "bench")
                    .body(())
                    .unwrap()
                    .into_parts();
                let mut stream = filter.new_stream(&info);
                let mut head = Box::new(head);
                let action = rt.block_on(stream.on_request_headers(&mut head, true));
                assert!(matches!(action, weir::filter::Action::Continue));
                assert_eq!(head.headers["x-pw-seen"], "tag");
                stream.on_log(&log);
                black_box(head)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
