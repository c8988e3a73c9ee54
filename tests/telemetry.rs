//! The telemetry plugin through the real binary: Istio-style metrics on
//! /metrics, a JSON access log line per request carrying the decision log,
//! and W3C trace context sent upstream.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Upstream, Weir, free_port, sdk_plugin};

#[tokio::test]
async fn metrics_access_log_decisions_and_trace_context() {
    let up = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(sdk_plugin("telemetry"), plugins.join("10-telemetry.wasm")).unwrap();
    std::fs::copy(sdk_plugin("authz-rbac"), plugins.join("30-authz-rbac.wasm")).unwrap();
    std::fs::write(
        plugins.join("30-authz-rbac.toml"),
        "[config]\ndefault = \"allow\"\n[[config.policies]]\nname = \"no-admin\"\naction = \"deny\"\npath_prefixes = [\"/admin\"]\n",
    )
    .unwrap();
    let access = dir.path().join("access.log");
    let (admin, port) = (free_port(), free_port());
    let config = format!(
        "[telemetry]\naccess_log = \"{}\"\n\n{}[[cluster]]\nname = \"app\"\nendpoints = [\"{}\"]\n\n[[route]]\nname = \"api\"\ncluster = \"app\"\n",
        access.display(),
        support::base_config(admin, port),
        up.addr
    );
    let w = Weir::start_in(dir, admin, port, &config).await;
    let client = reqwest::Client::new();

    // A new trace starts here; the upstream gets its traceparent.
    let v: Value = client
        .get(w.url("/hello"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tp = v["headers"]["traceparent"]
        .as_str()
        .expect("a traceparent upstream")
        .to_string();
    let trace = tp.split('-').nth(1).unwrap().to_string();
    assert_eq!(trace.len(), 32, "{tp}");
    // A caller's trace continues.
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let v: Value = client
        .get(w.url("/hello"))
        .header("traceparent", incoming)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        v["headers"]["traceparent"]
            .as_str()
            .unwrap()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{v}"
    );
    // A request the policy answers.
    let r = client.get(w.url("/admin/x")).send().await.unwrap();
    assert_eq!(r.status(), 403);

    // Metrics, Istio-style, with the route, cluster, method and code.
    let m = w.metrics().await;
    assert!(
        m.contains("weir_telemetry_requests_total{route=\"api\",cluster=\"app\",method=\"GET\",response_code=\"200\"} 2"),
        "{m}"
    );
    assert!(m.contains("weir_telemetry_requests_total{route=\"api\",cluster=\"\",method=\"GET\",response_code=\"403\"} 1"), "{m}");
    assert!(
        m.contains("weir_telemetry_request_duration_milliseconds_count{route=\"api\",cluster=\"app\",response_code=\"200\"} 2"),
        "{m}"
    );

    // One access log line per request, the decision log in the refused one.
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines: Vec<Value> = loop {
        let text = std::fs::read_to_string(&access).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 3 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["path"], "/hello");
    assert_eq!(lines[0]["response_code"], 200);
    assert_eq!(lines[0]["trace_id"], trace.as_str());
    assert_eq!(lines[0]["route_name"], "api");
    assert_eq!(lines[0]["weir.answered_by"], Value::Null);
    assert_eq!(lines[1]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let denied = &lines[2];
    assert_eq!(denied["response_code"], 403);
    assert_eq!(denied["weir.answered_by"], "authz-rbac", "{denied}");
    assert_eq!(denied["weir.answered_status"], "403");
    let times = denied["weir.plugin_times"]
        .as_object()
        .expect("plugin times, as JSON");
    assert!(
        times.contains_key("telemetry") && times.contains_key("authz-rbac"),
        "{denied}"
    );
    assert!(denied["duration_ms"].as_f64().unwrap() >= 0.0);
}
