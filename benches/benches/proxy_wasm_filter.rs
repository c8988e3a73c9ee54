#![allow(missing_docs)] // criterion_group! generates an undocumented function
//! One proxy-wasm filter's request-headers callback, host round trip included
//! (target: under 2 µs per filter per request). The stream's context creation
//! and teardown (on_log, on_done, on_delete) are included, as every request
//! pays them. Two filters, both built with the proxy-wasm Rust SDK:
//!
//! - `proxy_wasm_request_headers`: tests/wasm/pw-header, the filter the target
//!   names: reads `:path`, adds one header, every other callback the SDK's
//!   default (the load bench's filter, too);
//! - `proxy_wasm_request_headers_pw_test`: the integration tests' pw-test
//!   filter, which also sets a header, reads a second one, and reads a
//!   property and writes a debug log line in `on_log`.

use std::hint::black_box;
use std::sync::Arc;

/// The allocator weir ships with, so the figures match the binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, criterion_group, criterion_main};
use weir::plugin::host::HostServices;

#[path = "../../tests/wasm/build_filters.rs"]
mod build_filters;

fn bench(c: &mut Criterion) {
    one(
        c,
        "proxy_wasm_request_headers",
        "pw_header.wasm",
        "pw-header",
    );
    one(
        c,
        "proxy_wasm_request_headers_pw_test",
        "pw_test.wasm",
        "pw-test",
    );
}

fn one(c: &mut Criterion, bench: &str, wasm: &str, name: &str) {
    let file = build_filters::test_filters_dir().join(wasm);
    let defaults = weir::config::Config::embedded_default().plugin_defaults;
    let health = Arc::new(weir::plugin::health::PluginHealth::new(name, None));
    let spec = weir::plugin::spec(&file, None, &defaults, &[], health)
        .unwrap()
        .unwrap();
    let bytes = std::fs::read(&file).unwrap();
    let host = Arc::new(HostServices::new(
        std::sync::Weak::new(),
        Arc::new(weir::telemetry::Metrics::new()),
    ));
    let filter = weir::abi::proxy_wasm::ProxyWasmPlugin::load(spec, &bytes, host, 1).unwrap();
    let info = weir_benches::stream_info(None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let log = weir::filter::LogInfo {
        status: 200,
        route: Some("all".into()),
        cluster: Some("upstream".into()),
        response_headers: None,
    };
    c.bench_function(bench, |b| {
        b.iter(|| {
            let mut req = http::Request::get("/bench")
                .header("host", "example.com")
                .header("user-agent", "bench")
                .body(())
                .unwrap();
            let (head, ()) = std::mem::replace(&mut req, http::Request::new(())).into_parts();
            let mut stream = filter.new_stream(&info);
            let mut head = Box::new(head);
            let action = rt.block_on(stream.on_request_headers(&mut head, true));
            assert!(matches!(action, weir::filter::Action::Continue));
            stream.on_log(&log);
            black_box(head)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
