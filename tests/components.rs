//! Component plugins of the weir:filter world, built with the SDK, through
//! the real weir binary: beside proxy-wasm modules in one chain, configured
//! from their .toml, refused clearly when they are not weir plugins.

mod support;

use serde_json::json;
use std::path::Path;
use std::time::Duration;

use support::{Upstream, Weir, free_port, sdk_plugin, test_filter};

const CONFIG: &str = r#"[config]
request_set = { "x-gateway" = "weir" }
request_remove = ["x-internal"]
response_set = { "x-served-by" = "weir-sdk" }
require = "x-api-version"
"#;

async fn weir_with(files: &[(&str, &Path, Option<&str>)], up: &Upstream) -> Weir {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for (name, file, toml) in files {
        std::fs::copy(file, plugins.join(format!("{name}.wasm"))).unwrap();
        if let Some(t) = toml {
            std::fs::write(plugins.join(format!("{name}.toml")), t).unwrap();
        }
    }
    let (admin, port) = (free_port(), free_port());
    let config = format!(
        "{}[[cluster]]\nname = \"app\"\nendpoints = [\"{}\"]\n[[route]]\nname = \"app\"\ncluster = \"app\"\n",
        support::base_config(admin, port),
        up.addr
    );
    Weir::start_in(dir, admin, port, &config).await
}

#[tokio::test]
async fn an_sdk_component_runs_beside_a_proxy_wasm_module_in_one_chain() {
    let up = Upstream::start("app").await;
    let component = sdk_plugin("header-rewrite");
    let pw = test_filter("pw-test");
    let w = weir_with(
        &[
            ("10-pw", pw.as_path(), Some("config_raw = \"tag\"\n")),
            ("20-rewrite", component.as_path(), Some(CONFIG)),
        ],
        &up,
    )
    .await;
    let c = reqwest::Client::new();
    let r = c
        .get(w.url("/hello"))
        .header("x-api-version", "2")
        .header("x-internal", "secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-served-by"], "weir-sdk");
    assert_eq!(
        r.headers()["x-pw-plugin"],
        "pw",
        "the proxy-wasm plugin ran too"
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["x-gateway"], "weir", "set by the component");
    assert_eq!(
        v["headers"]["x-pw-seen"], "tag",
        "set by the proxy-wasm module"
    );
    assert!(
        v["headers"].get("x-internal").is_none(),
        "removed by the component"
    );

    let r = c.get(w.url("/hello")).send().await.unwrap();
    assert_eq!(r.status(), 400, "answered locally by the component");
    assert_eq!(r.text().await.unwrap(), "missing header x-api-version\n");
    let m = w.metrics().await;
    assert!(
        m.contains("weir_plugin_counter_total{plugin=\"rewrite\",name=\"rejected\"} 1"),
        "{m}"
    );
    let s: serde_json::Value = reqwest::get(w.admin_url("/plugins"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["plugins"][1]["abi"], "component weir:filter@0.1.2", "{s}");
    assert!(
        s["plugins"][1]["memory_bytes"].as_u64().unwrap() >= 65536,
        "a component's linear memory is counted: {s}"
    );
    assert_eq!(s["plugins"][0]["abi"], "proxy-wasm 0.2.1", "{s}");
}

/// The callbacks /plugins counts for plugin `name`.
async fn callbacks_of(w: &Weir, name: &str) -> u64 {
    w.plugin_status(name).await["callbacks"]
        .as_u64()
        .expect("a callbacks count")
}

/// The callbacks count once the requests' last callbacks (on-done runs
/// after the client has its response) are in: the same count 100 ms apart.
async fn settled_callbacks(w: &Weir, name: &str) -> u64 {
    let mut last = callbacks_of(w, name).await;
    for _ in 0..30 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let now = callbacks_of(w, name).await;
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

#[tokio::test]
async fn phases_a_component_leaves_to_the_sdk_defaults_are_no_longer_called() {
    let up = Upstream::start("app").await;
    let component = sdk_plugin("header-rewrite");
    let w = weir_with(&[("20-rewrite", component.as_path(), Some(CONFIG))], &up).await;
    let c = reqwest::Client::new();
    let get = || c.get(w.url("/hello")).header("x-api-version", "2").send();
    // The first request runs every phase; the SDK then tells weir that
    // header-rewrite does nothing in the bodies and on-done.
    let r = get().await.unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let before = settled_callbacks(&w, "rewrite").await;
    for _ in 0..5 {
        let r = get().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["x-served-by"],
            "weir-sdk",
            "the response head is still the plugin's"
        );
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["headers"]["x-gateway"], "weir", "and the request head");
    }
    assert_eq!(
        settled_callbacks(&w, "rewrite").await - before,
        10,
        "two heads per request: the response body chunks and on-done are skipped"
    );
}

/// `weir validate` with one plugin file; its exit code and stderr.
fn validate(bytes: &[u8], toml: Option<&str>) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::write(plugins.join("30-c.wasm"), bytes).unwrap();
    if let Some(t) = toml {
        std::fs::write(plugins.join("30-c.toml"), t).unwrap();
    }
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\n[[route]]\nname = \"e\"\necho = true\n").unwrap();
    let out = std::process::Command::new(support::weir_bin())
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn components_of_other_worlds_and_bad_configurations_are_refused_by_name() {
    let empty = wat::parse_str("(component)").unwrap();
    let (code, err) = validate(&empty, None);
    assert_eq!(code, 1);
    assert!(
        err.contains("30-c.wasm: is a component but not a weir plugin: it exports nothing and not weir:filter/filter@0.1.x"),
        "{err}"
    );
    let future = wat::parse_str(
        r#"(component
             (component $c)
             (instance $i (instantiate $c))
             (export "weir:filter/filter@0.2.0" (instance $i)))"#,
    )
    .unwrap();
    let (_, err) = validate(&future, None);
    assert!(
        err.contains("targets weir:filter@0.2.0; this weir runs weir:filter@0.1.2"),
        "{err}"
    );
    let component = std::fs::read(sdk_plugin("header-rewrite")).unwrap();
    // Checked against the schema the SDK derives, every error with its field,
    // before the plugin's code runs.
    let (code, err) = validate(
        &component,
        Some("[config]\nrequest_sett = {}\nrequest_set = { \"x-a\" = 5 }\nrequire = [\"x\"]\n"),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("[config] does not match the plugin's configuration schema (3 errors)"),
        "{err}"
    );
    assert!(
        err.contains("config.request_set.x-a: 5 is not of type \"string\""),
        "{err}"
    );
    assert!(err.contains("config.require: "), "{err}");
    assert!(err.contains("request_sett"), "{err}");
    let (code, err) = validate(&component, Some(CONFIG));
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn components_hot_reload_like_any_plugin() {
    let up = Upstream::start("app").await;
    let w = weir_with(&[], &up).await;
    let plugins = w.dir.path().join("plugins");
    std::fs::write(plugins.join("20-rewrite.toml"), CONFIG).unwrap();
    std::fs::copy(
        sdk_plugin("header-rewrite"),
        plugins.join("20-rewrite.wasm"),
    )
    .unwrap();
    let c = reqwest::Client::new();
    let start = std::time::Instant::now();
    loop {
        let r = c.get(w.url("/")).send().await.unwrap();
        if r.status() == 400 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "component never loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_file(plugins.join("20-rewrite.wasm")).unwrap();
    let start = std::time::Instant::now();
    while c.get(w.url("/")).send().await.unwrap().status() != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "component never removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_streaming_body_transform_rewrites_responses_through_weir() {
    let up = Upstream::start("app").await;
    let component = sdk_plugin("body-replace");
    let w = weir_with(
        &[(
            "30-replace",
            component.as_path(),
            Some("[config]\nfrom = \"colour\"\nto = \"color\"\n"),
        )],
        &up,
    )
    .await;
    let r = reqwest::get(w.url("/the-colour-of-colours")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-length").is_none());
    let text = r.text().await.unwrap();
    assert!(text.contains("/the-color-of-colors"), "{text}");
    assert!(!text.contains("colour"), "{text}");
}

/// A trapped component is freed before its successor starts: with two
/// workers and two instance slots, both taken, it is still replaced.
#[tokio::test]
async fn a_trapped_component_is_replaced_in_a_full_instance_pool() {
    let up = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(sdk_plugin("misbehave-test"), plugins.join("10-bad.wasm")).unwrap();
    let (admin, port) = (free_port(), free_port());
    let config = format!(
        "{}[server]\nworkers = 2\n[plugins]\ninstance_slots = 2\n[[cluster]]\nname = \"app\"\nendpoints = [\"{}\"]\n[[route]]\nname = \"app\"\ncluster = \"app\"\n",
        support::base_config(admin, port),
        up.addr
    );
    let w = Weir::start_in(dir, admin, port, &config).await;
    // One keep-alive connection: each request after a trap reaches the
    // worker, and the instance, that trapped.
    let c = reqwest::Client::new();
    for _ in 0..3 {
        let r = c.get(w.url("/fine")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let r = c.get(w.url("/panic")).send().await.unwrap();
        assert_eq!(r.status(), 503);
    }
    let r = c.get(w.url("/fine")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["x-misbehave"], "no");
}

#[tokio::test]
async fn a_component_that_traps_loops_or_grows_fails_only_its_request() {
    let up = Upstream::start("app").await;
    let component = sdk_plugin("misbehave-test");
    let w = weir_with(
        &[(
            "10-bad",
            component.as_path(),
            Some("cpu_limit = \"20ms\"\nmemory_limit = \"32MiB\"\n"),
        )],
        &up,
    )
    .await;
    let c = reqwest::Client::new();
    let ok = || async {
        let r = c.get(w.url("/fine")).send().await.unwrap();
        assert_eq!(r.status(), 200, "the next request is served normally");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["headers"]["x-misbehave"], "no");
    };
    ok().await;
    for (path, cause) in [
        ("/panic", "unreachable executed (a panic in the plugin)"),
        ("/loop", "CPU time limit per callback exceeded"),
        ("/grow", "memory limit exceeded: the plugin asked for"),
    ] {
        let r = c.get(w.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 503, "{path}");
        let body = r.text().await.unwrap();
        assert!(
            body.starts_with("plugin \"bad\" failed: ") && body.contains(cause),
            "{path}: {body}"
        );
        ok().await;
    }
    // stdout is not a failure: its lines become weir's log lines, tagged.
    let r = c.get(w.url("/print")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("x-pw-plugin"), None);
    let mut logged = false;
    for _ in 0..50 {
        logged = w.logs().lines().any(|l| {
            l.contains("a component writing to stdout")
                && l.contains("plugin.name=\"bad\"")
                && l.contains("stdout")
        });
        if logged {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(logged, "stdout reaches the log:\n{}", w.logs());
    let m = w.metrics().await;
    assert!(
        m.contains("weir_plugin_traps_total{plugin=\"bad\"} 3"),
        "{m}"
    );
    assert!(
        w.logs().contains("panic: panicked at"),
        "the SDK routes a panic's message to weir's log"
    );
}

#[tokio::test]
async fn a_component_calls_a_cluster_while_its_request_waits_and_others_go_on() {
    let up = Upstream::start("app").await;
    let component = sdk_plugin("misbehave-test");
    let w = weir_with(
        &[(
            "10-caller",
            component.as_path(),
            Some("cpu_limit = \"20ms\"\n"),
        )],
        &up,
    )
    .await;
    let c = reqwest::Client::new();

    // The call reaches the cluster with the plugin's headers; the reply comes back.
    let r = c.get(w.url("/call/keys?x=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-call-status"], "200");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["upstream"], "app");
    assert_eq!(
        (&v["path"], &v["query"]),
        (&json!("/keys"), &json!("x=1")),
        "{v}"
    );
    assert_eq!(v["headers"]["x-called-by"], "misbehave");
    assert_eq!(
        v["headers"]["host"],
        up.addr.to_string(),
        "HTTP/1.1 calls carry a Host"
    );

    // Calls slower than the 20 ms CPU limit: waiting is not CPU time. While
    // more calls than instances wait (two workers, so two instances at load),
    // other requests through the same plugin are served.
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let c = c.clone();
            let url = w.url("/call/delay/1500");
            tokio::spawn(async move {
                let r = c.get(url).send().await.unwrap();
                (r.status(), std::time::Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for _ in 0..10 {
        let r = c.get(w.url("/fine")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["headers"]["x-misbehave"], "no");
    }
    let fine_done = std::time::Instant::now();
    for s in slow {
        let (status, at) = s.await.unwrap();
        assert_eq!(
            status, 200,
            "a call that waits past the CPU limit still answers"
        );
        assert!(
            at > fine_done,
            "the ten requests finished while the three calls were still waiting"
        );
    }

    // No answer: each failure named.
    let r = c
        .get(w.url("/call/x"))
        .header("x-call-cluster", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("outbound call to cluster \"nope\" failed: no cluster named \"nope\""),
        "{body}"
    );
    let r = c
        .get(w.url("/call/delay/3000"))
        .header("x-call-timeout-ms", "100")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(body.contains("failed: timeout after 100ms"), "{body}");
    let m = w.metrics().await;
    assert!(
        !m.contains("weir_plugin_traps_total{plugin=\"caller\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn a_component_that_waits_for_nothing_runs_synchronously_and_prints() {
    let up = Upstream::start("app").await;
    let printer = sdk_plugin("printer-test");
    let w = weir_with(
        &[(
            "10-printer",
            printer.as_path(),
            Some("cpu_limit = \"20ms\"\n"),
        )],
        &up,
    )
    .await;
    let c = reqwest::Client::new();
    for path in ["/hello", "/err/x"] {
        let r = c.get(w.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["headers"]["x-printer"], "yes");
    }
    let mut logs = String::new();
    for _ in 0..50 {
        logs = w.logs();
        if logs.contains("printer complains about /err/x") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let line = |text: &str| {
        logs.lines()
            .find(|l| l.contains(text))
            .unwrap_or_else(|| panic!("{text:?} not logged:\n{logs}"))
            .to_string()
    };
    let out = line("printer saw /hello");
    assert!(
        out.contains("INFO")
            && out.contains("plugin.name=\"printer\"")
            && out.contains("stream=\"stdout\""),
        "{out}"
    );
    let err = line("printer complains about /err/x");
    assert!(
        err.contains("WARN") && err.contains("stream=\"stderr\""),
        "{err}"
    );
    // The CPU limit stops a synchronous callback too; the next request is served.
    let r = c.get(w.url("/loop")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("CPU time limit per callback exceeded")
    );
    assert_eq!(c.get(w.url("/hello")).send().await.unwrap().status(), 200);
}

/// The upstream's view of a request and what the client got, minus what
/// differs by nature between two weirs (request ids, ports, dates).
async fn observe(w: &Weir, path: &str) -> (u16, Option<String>, serde_json::Value) {
    let r = reqwest::Client::new()
        .get(w.url(path))
        .header("x-client", "1")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let tag = r
        .headers()
        .get("x-pw-plugin")
        .map(|v| v.to_str().unwrap().to_string());
    let mut v: serde_json::Value = r.json().await.unwrap();
    let headers = v["headers"].as_object_mut().unwrap();
    for volatile in ["x-request-id", "host", "x-forwarded-host"] {
        headers.remove(volatile);
    }
    (status, tag, v["headers"].take())
}

#[tokio::test]
async fn one_filter_logic_in_both_abis_looks_the_same_through_weir() {
    // pw-test tags every request `x-pw-seen: <config>` and every response
    // `x-pw-plugin: <plugin name>`; header-rewrite, configured to, does the same.
    let up = Upstream::start("app").await;
    let pw = test_filter("pw-test");
    let sdk = sdk_plugin("header-rewrite");
    let proxy_wasm = weir_with(
        &[("10-same", pw.as_path(), Some("config_raw = \"tag\"\n"))],
        &up,
    )
    .await;
    let component = weir_with(
        &[(
            "10-same",
            sdk.as_path(),
            Some("[config]\nrequest_set = { \"x-pw-seen\" = \"tag\" }\nresponse_set = { \"x-pw-plugin\" = \"same\" }\n"),
        )],
        &up,
    )
    .await;
    for path in ["/", "/a/b", "/search?q=weir&page=2"] {
        let a = observe(&proxy_wasm, path).await;
        let b = observe(&component, path).await;
        assert_eq!(a, b, "{path}: proxy-wasm and component differ");
        assert_eq!(a.1.as_deref(), Some("same"));
        assert_eq!(a.2["x-pw-seen"], "tag");
    }
}

#[tokio::test]
async fn attributes_set_by_one_plugin_reach_the_next_across_abis() {
    let up = Upstream::start("app").await;
    let (pw, comp) = (test_filter("pw-test"), sdk_plugin("misbehave-test"));
    let client = reqwest::Client::new();

    // proxy-wasm set_property, then a component's attributes.get.
    let w = weir_with(&[("10-pw", &pw, None), ("20-comp", &comp, None)], &up).await;
    let text = client
        .get(w.url("/attributes"))
        .header("x-pw-set-attribute", "request.auth.principal=alice")
        .header("x-attributes", "request.auth.principal,route_name")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, "request.auth.principal=alice\nroute_name=app\n");
    drop(w);

    // A component's attributes.set, then proxy-wasm's get_property.
    let w = weir_with(&[("10-comp", &comp, None), ("20-pw", &pw, None)], &up).await;
    let text = client
        .get(w.url("/props"))
        .header("x-set-attribute", "request.auth.principal=bob")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("request.auth.principal=bob\n"), "{text}");
    // Names weir computes are refused, with the reason.
    let r = client
        .get(w.url("/props"))
        .header("x-set-attribute", "request.path=/elsewhere")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("\"request.path\" is computed by weir and cannot be set"),
        "{body}"
    );
    // Attributes live for one request only.
    let text = client
        .get(w.url("/props"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("request.auth.principal=<none>\n"), "{text}");
}
