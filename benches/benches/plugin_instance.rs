#![allow(missing_docs)] // criterion_group! generates an undocumented function
//! What starting a plugin's instances costs, the module already compiled:
//! the tests' pw-test (proxy-wasm, Rust SDK) loaded with 1 and with 8
//! instances. A reload starts one instance per worker; the difference
//! between the two cases over 7 is one instance's start (instantiation,
//! `_initialize`, the root context, `on_vm_start`, `on_configure`).
//! `pw_test_trap` is what a trap costs the worker that hits it: the
//! callback, the trapped instance freed and a new one started in its place.
//!
//! weir takes instances from wasmtime's pooling allocator; set
//! `WEIR_BENCH_INSTANCE_SLOTS=0` to measure the same with each instance
//! mapping its own memory (what `[plugins] instance_slots = 0` does).

use std::sync::Arc;
use std::time::{Duration, Instant};

/// The allocator weir ships with, so the figures match the binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, criterion_group, criterion_main};
use weir::filter::Action;
use weir::plugin::host::HostServices;

#[path = "../../tests/wasm/build_filters.rs"]
mod build_filters;

fn bench(c: &mut Criterion) {
    let slots = std::env::var("WEIR_BENCH_INSTANCE_SLOTS")
        .ok()
        .map(|s| s.parse().expect("WEIR_BENCH_INSTANCE_SLOTS: a number"))
        .unwrap_or(weir::plugin::engine::DEFAULT_INSTANCE_SLOTS);
    assert!(weir::plugin::engine::set_instance_slots(slots));
    let file = build_filters::test_filters_dir().join("pw_test.wasm");
    let bytes = std::fs::read(&file).unwrap();
    let defaults = weir::config::Config::embedded_default().plugin_defaults;
    let host = Arc::new(HostServices::new(
        std::sync::Weak::new(),
        Arc::new(weir::telemetry::Metrics::new()),
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = rt.enter();
    let pool = if slots > 0 { "pooled" } else { "on_demand" };
    let load = |instances: usize| {
        let health = Arc::new(weir::plugin::health::PluginHealth::new("pw-test", None));
        let spec = weir::plugin::spec(&file, None, &defaults, &[], health)
            .unwrap()
            .unwrap();
        weir::abi::proxy_wasm::ProxyWasmPlugin::load(spec, &bytes, host.clone(), instances).unwrap()
    };
    // A freed plugin's instances go to the reaper thread, at idle priority:
    // give it time between iterations (untimed), as a reload would.
    let reap = || std::thread::sleep(Duration::from_millis(3));
    for instances in [1, 8] {
        c.bench_function(&format!("pw_test_start_{instances}_{pool}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let plugin = load(instances);
                    total += t.elapsed();
                    drop(plugin);
                    reap();
                }
                total
            })
        });
    }
    let info = weir_benches::stream_info(None);
    // Four traps per plugin version: five in ten seconds quarantine it.
    c.bench_function(&format!("pw_test_trap_{pool}"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut plugin = load(1);
            for i in 0..iters {
                if i % 4 == 0 && i > 0 {
                    drop(std::mem::replace(&mut plugin, load(1)));
                    reap();
                }
                let (head, ()) = http::Request::get("/panic")
                    .header("host", "example.com")
                    .body(())
                    .unwrap()
                    .into_parts();
                let mut head = Box::new(head);
                let t = Instant::now();
                let mut stream = plugin.new_stream(&info);
                let action = rt.block_on(stream.on_request_headers(&mut head, true));
                total += t.elapsed();
                assert!(
                    matches!(action, Action::Respond(_)),
                    "pw-test traps on /panic"
                );
                drop(stream);
            }
            total
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
