//! The plugins folder as weir's control surface: the real binary, the real
//! watcher, a real folder, and clients sending requests while plugins are
//! added, replaced, renamed, removed and broken.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Upstream, Weir, free_port, test_filter};

/// A proxy-wasm module that adds `name: value` to every response.
fn header_module(name: &str, value: &str) -> Vec<u8> {
    wat::parse_str(header_module_text(name, value, "", "")).unwrap()
}

/// The text of [`header_module`], with `imports` among its imports and
/// `more` (functions, data above offset 512) after its definitions.
fn header_module_text(name: &str, value: &str, imports: &str, more: &str) -> String {
    format!(
        r#"(module
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  {imports}
  (memory (export "memory") 1)
  (data (i32.const 16) "{name}")
  (data (i32.const 256) "{value}")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 2) (i32.const 16) (i32.const {nl}) (i32.const 256) (i32.const {vl})))
    i32.const 0)
  {more})"#,
        nl = name.len(),
        vl = value.len()
    )
}

/// weir with `app` behind its one route and an empty plugins folder.
async fn weir_with_plugins(up: &Upstream, files: &[(&str, Vec<u8>)]) -> (Weir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for (name, bytes) in files {
        std::fs::write(plugins.join(name), bytes).unwrap();
    }
    let (admin, port) = (free_port(), free_port());
    let config = format!(
        "{}[plugins]\ncache_dir = \"\"\n[[cluster]]\nname = \"app\"\nendpoints = [\"{}\"]\n[[route]]\nname = \"app\"\ncluster = \"app\"\n",
        support::base_config(admin, port),
        up.addr
    );
    let w = Weir::start_in(dir, admin, port, &config).await;
    (w, plugins)
}

/// Held shared by every test here and alone by the one that times swaps:
/// the others start weirs that compile plugins, and on a 2-core machine
/// their compiles and the swap test's loader (at idle priority, by design)
/// compete for the same cores. The swap target is about a plugin folder
/// under request load, not under nine other proxies starting up.
static ALONE: std::sync::LazyLock<tokio::sync::RwLock<()>> =
    std::sync::LazyLock::new(|| tokio::sync::RwLock::new(()));

async fn plugins_status(w: &Weir) -> Value {
    reqwest::get(w.admin_url("/plugins"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn plugin<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
}

/// Polls `probe` until it holds, for at most `within`; returns how long it took.
async fn until<F, Fut>(within: Duration, what: &str, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if probe().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn header_of(c: &reqwest::Client, url: &str, name: &str) -> Option<String> {
    let r = c.get(url).send().await.ok()?;
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or_default().to_string())
}

/// Writes a file as an editor or `cp` would: in place, in two steps with a pause.
fn write_in_place(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let half = bytes.len() / 2;
    f.write_all(&bytes[..half]).unwrap();
    f.flush().unwrap();
    std::thread::sleep(Duration::from_millis(5));
    f.write_all(&bytes[half..]).unwrap();
}

/// Writes a file as deployment tools do: a temporary name, then a rename.
fn write_then_rename(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("wasm.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_swaps_add_rename_remove_under_load_fail_no_request() {
    // Timed against its own load only, not against the other tests' weirs
    // compiling their plugins on the same two cores.
    let _alone = ALONE.write().await;
    let up = Upstream::start("app").await;
    let (w, plugins) = weir_with_plugins(
        &up,
        &[("10-version.wasm", header_module("x-version", "v0"))],
    )
    .await;
    let url = w.url("/load");

    // Clients sending without pause, counting anything but 200.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, sent, failed, url) = (stop.clone(), sent.clone(), failed.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            let mut last_error = None;
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                    }
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        last_error = Some(format!(
                            "{} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        ));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        last_error = Some(e.to_string());
                    }
                }
            }
            last_error
        }));
    }

    let c = reqwest::Client::new();
    let file = plugins.join("10-version.wasm");
    let mut slowest = Duration::ZERO;
    for i in 1..=50 {
        let v = format!("v{i}");
        let bytes = header_module("x-version", &v);
        if i % 2 == 0 {
            write_in_place(&file, &bytes);
        } else {
            write_then_rename(&file, &bytes);
        }
        let took = until(
            Duration::from_secs(1),
            &format!("swap to {v} visible"),
            || {
                let (c, url, v) = (&c, &url, v.clone());
                async move { header_of(c, url, "x-version").await.as_deref() == Some(v.as_str()) }
            },
        )
        .await;
        slowest = slowest.max(took);
    }

    // Add a second plugin, rename it, remove it.
    let extra = plugins.join("20-extra.wasm");
    write_then_rename(&extra, &header_module("x-extra", "yes"));
    until(Duration::from_secs(1), "added plugin visible", || async {
        header_of(&c, &url, "x-extra").await.as_deref() == Some("yes")
    })
    .await;
    std::fs::rename(&extra, plugins.join("30-renamed.wasm")).unwrap();
    until(Duration::from_secs(1), "renamed plugin listed", || async {
        let s = plugins_status(&w).await;
        plugin(&s, "renamed").is_some() && plugin(&s, "extra").is_none()
    })
    .await;
    assert_eq!(header_of(&c, &url, "x-extra").await.as_deref(), Some("yes"));
    std::fs::remove_file(plugins.join("30-renamed.wasm")).unwrap();
    until(Duration::from_secs(1), "removed plugin gone", || async {
        header_of(&c, &url, "x-extra").await.is_none()
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for c in clients {
        if let Some(e) = c.await.unwrap() {
            errors.push(e);
        }
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(sent > 500, "the clients kept sending: {sent}");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed: {errors:?}");
    eprintln!("50 swaps, {sent} requests, none failed; slowest swap visible after {slowest:?}");

    let s = plugins_status(&w).await;
    let p = plugin(&s, "version").unwrap();
    assert_eq!(p["state"], "active");
    assert_eq!(p["abi"], "proxy-wasm 0.2.1");
    assert_eq!(p["sha256"].as_str().unwrap().len(), 64);
    assert!(p["callbacks"].as_u64().unwrap() > 0);
    let m = w.metrics().await;
    assert!(
        m.contains("weir_plugin_reloads_total{plugin=\"version\",outcome=\"success\"} 51"),
        "one load at start, one per swap: {m}"
    );
    assert!(m.contains("weir_plugin_callback_duration_seconds_count{plugin=\"version\"}"));
}

/// A plugin adding `x-version: <version>` to responses whose VM start logs
/// "starting <version>" and then takes `start_ms` of wall time (a slow load).
fn slow_start_module(version: &str, start_ms: u64) -> Vec<u8> {
    let msg = format!("starting {version}");
    let imports = r#"(import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))"#;
    let start = format!(
        r#"(data (i32.const 512) "{msg}")
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (local $until i64)
    (drop (call $log (i32.const 2) (i32.const 512) (i32.const {ml})))
    (drop (call $now (i32.const 2048)))
    (local.set $until (i64.add (i64.load (i32.const 2048)) (i64.const {ns})))
    (block $done (loop $wait
      (drop (call $now (i32.const 2048)))
      (br_if $done (i64.ge_u (i64.load (i32.const 2048)) (local.get $until)))
      (br $wait)))
    i32.const 1)"#,
        ml = msg.len(),
        ns = start_ms * 1_000_000,
    );
    wat::parse_str(header_module_text("x-version", version, imports, &start)).unwrap()
}

/// Loads slower than the writes (a busy machine, a big plugin): a version
/// whose file is replaced again while it loads still goes live, and the newer
/// one after it. Dropping it, as weir did, meant that with a new version
/// arriving faster than one loads, no version ever went live.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_replaced_while_it_loads_still_goes_live_then_the_newer_one() {
    let _shared = ALONE.read().await;
    let up = Upstream::start("app").await;
    let (w, plugins) = weir_with_plugins(
        &up,
        &[
            ("10-slow.wasm", slow_start_module("v1", 0)),
            ("10-slow.toml", b"cpu_limit = \"5s\"\n".to_vec()),
        ],
    )
    .await;
    let c = reqwest::Client::new();
    let url = w.url("/");
    let file = plugins.join("10-slow.wasm");
    let success = |m: &str| -> u64 {
        m.lines()
            .find(|l| {
                l.starts_with("weir_plugin_reloads_total{plugin=\"slow\",outcome=\"success\"}")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        header_of(&c, &url, "x-version").await.as_deref(),
        Some("v1")
    );
    let before = success(&w.metrics().await);

    // v2 takes 1.5 s to start; v3 lands while it does.
    write_then_rename(&file, &slow_start_module("v2", 1500));
    until(Duration::from_secs(20), "v2's load started", || async {
        w.logs().contains("starting v2")
    })
    .await;
    write_then_rename(&file, &slow_start_module("v3", 0));
    until(Duration::from_secs(20), "v2 served", || async {
        header_of(&c, &url, "x-version").await.as_deref() == Some("v2")
    })
    .await;
    until(Duration::from_secs(20), "v3 served", || async {
        header_of(&c, &url, "x-version").await.as_deref() == Some("v3")
    })
    .await;
    assert_eq!(
        success(&w.metrics().await) - before,
        2,
        "v2 and v3 each went live once"
    );
}

#[tokio::test]
async fn a_failed_update_keeps_the_previous_version_serving_with_the_error_shown() {
    let _shared = ALONE.read().await;
    let up = Upstream::start("app").await;
    let good = std::fs::read(test_filter("pw-test")).unwrap();
    let (w, plugins) = weir_with_plugins(&up, &[("10-probe.wasm", good.clone())]).await;
    let file = plugins.join("10-probe.wasm");
    let c = reqwest::Client::new();
    let serving = || async {
        let r = c.get(w.url("/ok")).send().await.unwrap();
        assert_eq!(r.status(), 200, "the previous version keeps serving");
        assert_eq!(r.headers()["x-pw-plugin"], "probe");
    };
    serving().await;

    let unknown_import = wat::parse_str(
        r#"(module (import "env" "proxy_foo" (func (param i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
          (func (export "proxy_abi_version_0_2_1")))"#,
    )
    .unwrap();
    let cases: Vec<(&str, Vec<u8>, Option<&str>, &str)> = vec![
        (
            "garbage",
            b"these are not the bytes you are looking for".to_vec(),
            None,
            "10-probe.wasm: not a WebAssembly module",
        ),
        (
            "truncated",
            good[..good.len() / 3].to_vec(),
            None,
            "10-probe.wasm: invalid WebAssembly module",
        ),
        (
            "unknown import",
            unknown_import,
            None,
            "imports env.proxy_foo, which weir does not provide",
        ),
        (
            "configure false",
            good.clone(),
            Some("config_raw = \"reject\"\n"),
            "proxy_on_configure returned false",
        ),
        (
            "invalid toml",
            good.clone(),
            Some("config_raw = \n"),
            "10-probe.toml: TOML parse error",
        ),
    ];
    for (what, bytes, toml, expected) in cases {
        let before = plugins_status(&w).await;
        let errors_before = plugin(&before, "probe").unwrap()["last_error_at"].clone();
        match toml {
            Some(t) => std::fs::write(plugins.join("10-probe.toml"), t).unwrap(),
            None => {
                let _ = std::fs::remove_file(plugins.join("10-probe.toml"));
            }
        }
        write_then_rename(&file, &bytes);
        until(
            Duration::from_secs(5),
            &format!("{what}: error shown"),
            || async {
                let s = plugins_status(&w).await;
                let p = plugin(&s, "probe").unwrap();
                p["last_error_at"] != errors_before
                    && p["last_error"]
                        .as_str()
                        .unwrap_or_default()
                        .contains(expected)
            },
        )
        .await;
        let s = plugins_status(&w).await;
        let p = plugin(&s, "probe").unwrap();
        assert_eq!(p["state"], "active", "{what}: {p}");
        let error = p["last_error"].as_str().unwrap();
        assert!(error.contains(expected), "{what}: {error}");
        serving().await;
    }
    let m = w.metrics().await;
    assert!(
        m.contains("weir_plugin_reloads_total{plugin=\"probe\",outcome=\"failure\"} 5"),
        "{m}"
    );
    assert!(
        w.logs()
            .contains("plugin update failed; the previous version keeps serving")
    );

    // A change to the .toml alone reconfigures the plugin.
    std::fs::write(&file, &good).unwrap();
    std::fs::write(plugins.join("10-probe.toml"), "config_raw = \"tag-2\"\n").unwrap();
    until(Duration::from_secs(10), "reconfigured", || async {
        let r = c.get(w.url("/ok")).send().await.unwrap();
        let v: Value = r.json().await.unwrap();
        v["headers"]["x-pw-seen"] == "tag-2"
    })
    .await;
}

#[tokio::test]
async fn a_plugin_that_never_loaded_follows_its_failure_policy() {
    let _shared = ALONE.read().await;
    let up = Upstream::start("app").await;
    let (w, plugins) = weir_with_plugins(
        &up,
        &[
            ("10-authn.wasm", b"\0asm\x01\0\0\0garbage".to_vec()),
            ("20-version.wasm", header_module("x-version", "v1")),
        ],
    )
    .await;
    let c = reqwest::Client::new();
    let r = c.get(w.url("/x")).send().await.unwrap();
    assert_eq!(
        r.status(),
        503,
        "closed: a broken auth plugin never opens the door"
    );
    let body = r.text().await.unwrap();
    assert!(
        body.contains("plugin \"authn\" is not loaded (failure = closed)")
            && body.contains("10-authn.wasm: invalid WebAssembly module"),
        "{body}"
    );
    assert_eq!(
        reqwest::get(w.admin_url("/ready")).await.unwrap().status(),
        200,
        "weir started and serves"
    );
    let s = plugins_status(&w).await;
    assert_eq!(plugin(&s, "authn").unwrap()["state"], "failed");
    assert_eq!(plugin(&s, "version").unwrap()["state"], "active");
    let m = w.metrics().await;
    assert!(m.contains("weir_plugin_up{plugin=\"authn\"} 0"), "{m}");
    assert!(m.contains("weir_plugin_up{plugin=\"version\"} 1"), "{m}");

    // Open: skipped, the rest of the chain runs.
    std::fs::write(plugins.join("10-authn.toml"), "failure = \"open\"\n").unwrap();
    until(Duration::from_secs(10), "open policy applied", || async {
        let r = c.get(w.url("/x")).send().await.unwrap();
        r.status() == 200 && r.headers().get("x-version").is_some()
    })
    .await;

    // Fixed: it loads on its next change.
    std::fs::remove_file(plugins.join("10-authn.toml")).unwrap();
    write_then_rename(
        &plugins.join("10-authn.wasm"),
        &header_module("x-authn", "ok"),
    );
    until(Duration::from_secs(2), "fixed plugin serving", || async {
        header_of(&c, &w.url("/x"), "x-authn").await.as_deref() == Some("ok")
    })
    .await;
    assert_eq!(
        plugin(&plugins_status(&w).await, "authn").unwrap()["state"],
        "active"
    );
}

#[tokio::test]
async fn runaway_plugins_are_stopped_and_quarantined_and_the_process_lives() {
    let _shared = ALONE.read().await;
    let up = Upstream::start("app").await;
    let (w, plugins) = weir_with_plugins(&up, &[]).await;
    std::fs::copy(test_filter("pw-test"), plugins.join("10-pw.wasm")).unwrap();
    std::fs::write(
        plugins.join("10-pw.toml"),
        "cpu_limit = \"20ms\"\nmemory_limit = \"32MiB\"\n",
    )
    .unwrap();
    let c = reqwest::Client::new();
    // Compiling pw-test takes a while in a debug build of weir, at the
    // loader's low priority, on a machine busy with the other tests.
    until(Duration::from_secs(60), "plugin loaded", || async {
        header_of(&c, &w.url("/ok"), "x-pw-plugin").await.is_some()
    })
    .await;

    let r = c.get(w.url("/grow")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("plugin \"pw\" failed: memory limit exceeded: the plugin asked for")
            && body.contains("its memory_limit is 33554432 bytes"),
        "{body}"
    );
    assert_eq!(c.get(w.url("/ok")).send().await.unwrap().status(), 200);

    let r = c.get(w.url("/loop")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("CPU time limit per callback exceeded")
    );
    assert_eq!(c.get(w.url("/ok")).send().await.unwrap().status(), 200);

    // Three more traps make five within ten seconds: quarantine.
    for _ in 0..3 {
        let r = c.get(w.url("/panic")).send().await.unwrap();
        assert_eq!(r.status(), 503);
    }
    let r = c.get(w.url("/ok")).send().await.unwrap();
    assert_eq!(r.status(), 503, "quarantined: its failure policy applies");
    let body = r.text().await.unwrap();
    assert!(body.contains("quarantined after repeated traps"), "{body}");
    let s = plugins_status(&w).await;
    let p = plugin(&s, "pw").unwrap();
    assert_eq!(p["state"], "quarantined");
    assert_eq!(p["traps"], 5);
    assert!(p["memory_bytes"].as_u64().unwrap() > 0);
    assert!(p["callback_latency_p99_us"].as_f64().unwrap() > 0.0);
    // The first quarantine lasts a second; then the plugin serves again.
    until(Duration::from_secs(3), "out of quarantine", || async {
        c.get(w.url("/ok")).send().await.unwrap().status() == 200
    })
    .await;
    let logs = w.logs();
    assert!(
        logs.contains("plugin keeps trapping; quarantined"),
        "{logs}"
    );
    assert!(
        logs.matches("plugin trapped; replacing its instance")
            .count()
            < 5,
        "trap log lines are rate-limited"
    );
    let m = w.metrics().await;
    assert!(
        m.contains("weir_plugin_traps_total{plugin=\"pw\"} 5"),
        "{m}"
    );
    assert!(m.contains("weir_plugin_memory_bytes{plugin=\"pw\"}"), "{m}");
}

/// `[plugins] instance_slots` sizes the pooling allocator instances come
/// from. Two workers and two slots: the first plugin takes both, the second
/// cannot start and says which setting to raise; the first, trapping, is
/// replaced in the slot it frees, so it keeps serving in a full pool.
#[tokio::test]
async fn a_full_instance_pool_names_its_setting_and_a_trapped_instance_is_replaced_in_its_slot() {
    let _shared = ALONE.read().await;
    let up = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(test_filter("pw-test"), plugins.join("10-first.wasm")).unwrap();
    std::fs::copy(test_filter("pw-test"), plugins.join("20-second.wasm")).unwrap();
    std::fs::write(plugins.join("20-second.toml"), "failure = \"open\"\n").unwrap();
    let (admin, port) = (free_port(), free_port());
    let config = format!(
        "{}[server]\nworkers = 2\n[plugins]\ncache_dir = \"\"\ninstance_slots = 2\n[[cluster]]\nname = \"app\"\nendpoints = [\"{}\"]\n[[route]]\nname = \"app\"\ncluster = \"app\"\n",
        support::base_config(admin, port),
        up.addr
    );
    let w = Weir::start_in(dir, admin, port, &config).await;

    let s = plugins_status(&w).await;
    assert_eq!(plugin(&s, "first").unwrap()["state"], "active", "{s}");
    let second = plugin(&s, "second").unwrap();
    assert_eq!(second["state"], "failed", "{s}");
    let error = second["last_error"].as_str().unwrap();
    assert!(
        error.contains("instantiation failed") && error.contains("raise [plugins] instance_slots"),
        "{error}"
    );

    // One keep-alive connection: each request after a trap reaches the
    // worker, and the instance, that trapped.
    let c = reqwest::Client::new();
    assert_eq!(
        header_of(&c, &w.url("/ok"), "x-pw-plugin").await.as_deref(),
        Some("first")
    );
    for _ in 0..3 {
        let r = c.get(w.url("/panic")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        let r = c.get(w.url("/ok")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        assert_eq!(r.headers()["x-pw-plugin"], "first");
    }
    let logs = w.logs();
    assert!(!logs.contains("could not be restarted"), "{logs}");
    let m = w.metrics().await;
    assert!(
        m.contains("weir_plugin_instance_slots{compiler=\"optimized\",state=\"in_use\"} 2")
            && m.contains("weir_plugin_instance_slots{compiler=\"optimized\",state=\"free\"} 0"),
        "{m}"
    );
}

#[tokio::test]
async fn plugins_attach_to_named_routes_only() {
    let _shared = ALONE.read().await;
    let up = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::write(plugins.join("10-tag.wasm"), header_module("x-tag", "api")).unwrap();
    std::fs::write(plugins.join("10-tag.toml"), "routes = [\"api\"]\n").unwrap();
    std::fs::write(plugins.join("20-bad.wasm"), header_module("x-bad", "1")).unwrap();
    std::fs::write(plugins.join("20-bad.toml"), "routes = [\"apj\"]\n").unwrap();
    let (admin, port) = (free_port(), free_port());
    let config = format!(
        "{}[[cluster]]\nname = \"app\"\nendpoints = [\"{}\"]\n[[route]]\nname = \"api\"\nmatch = {{ prefix = \"/api\" }}\ncluster = \"app\"\n[[route]]\nname = \"web\"\ncluster = \"app\"\n",
        support::base_config(admin, port),
        up.addr
    );
    let w = Weir::start_in(dir, admin, port, &config).await;
    let c = reqwest::Client::new();
    // 20-bad names a route that does not exist: it never loads and, closed, refuses.
    let r = c.get(w.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("routes: no route named \"apj\"; the config's routes are: api, web")
    );
    std::fs::remove_file(plugins.join("20-bad.wasm")).unwrap();
    until(Duration::from_secs(2), "bad plugin removed", || async {
        c.get(w.url("/api/x")).send().await.unwrap().status() == 200
    })
    .await;
    assert_eq!(
        header_of(&c, &w.url("/api/x"), "x-tag").await.as_deref(),
        Some("api")
    );
    assert_eq!(header_of(&c, &w.url("/web"), "x-tag").await, None);
}

#[tokio::test]
async fn post_plugins_reload_rescans_and_reports() {
    let _shared = ALONE.read().await;
    let up = Upstream::start("app").await;
    let (w, plugins) = weir_with_plugins(&up, &[]).await;
    std::fs::write(plugins.join("10-a.wasm"), header_module("x-a", "1")).unwrap();
    let r: Value = reqwest::Client::new()
        .post(w.admin_url("/plugins/reload"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The watcher may have been first; either way the plugin is active now.
    assert_eq!(plugin(&r, "a").unwrap()["state"], "active", "{r}");
    assert!(r["reload"].is_object());
    let c = reqwest::Client::new();
    assert_eq!(
        header_of(&c, &w.url("/"), "x-a").await.as_deref(),
        Some("1")
    );
    // Hidden files, editor leftovers and other files are not plugins.
    for name in [
        ".10-hidden.wasm",
        "10-a.wasm~",
        "notes.txt",
        "10-a.wasm.swp",
    ] {
        std::fs::write(plugins.join(name), b"junk").unwrap();
    }
    std::fs::create_dir(plugins.join("next.wasm")).unwrap();
    let r: Value = reqwest::Client::new()
        .post(w.admin_url("/plugins/reload"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["plugins"].as_array().unwrap().len(), 1, "{r}");
}

#[tokio::test]
async fn requests_in_flight_finish_on_the_version_they_started_with() {
    let _shared = ALONE.read().await;
    let up = Upstream::start("app").await;
    let (w, plugins) = weir_with_plugins(
        &up,
        &[("10-version.wasm", header_module("x-version", "old"))],
    )
    .await;
    let slow = tokio::spawn({
        let url = w.url("/delay/800");
        async move { reqwest::get(url).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    write_then_rename(
        &plugins.join("10-version.wasm"),
        &header_module("x-version", "new"),
    );
    let c = reqwest::Client::new();
    until(Duration::from_secs(1), "new version serving", || async {
        header_of(&c, &w.url("/"), "x-version").await.as_deref() == Some("new")
    })
    .await;
    assert!(
        !w.logs().contains("plugin version released"),
        "the old version lives while its request is in flight"
    );
    let r = slow.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-version"],
        "old",
        "it finished on the version it started with"
    );
    drop(r);
    until(Duration::from_secs(2), "old version released", || async {
        w.logs().contains("plugin version released")
    })
    .await;
}

#[tokio::test]
async fn compiled_modules_are_cached_in_memory_and_on_disk() {
    let _shared = ALONE.read().await;
    let up = Upstream::start("app").await;
    let cache = tempfile::tempdir().unwrap();
    let start = || async {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir(&plugins).unwrap();
        std::fs::copy(test_filter("pw-test"), plugins.join("10-pw.wasm")).unwrap();
        let (admin, port) = (free_port(), free_port());
        let config = format!(
            "{}[plugins]\ncache_dir = \"{}\"\n[[cluster]]\nname = \"app\"\nendpoints = [\"{}\"]\n[[route]]\nname = \"app\"\ncluster = \"app\"\n",
            support::base_config(admin, port),
            cache.path().display(),
            up.addr
        );
        let w = Weir::start_in(dir, admin, port, &config).await;
        (w, plugins)
    };
    let (first, plugins) = start().await;
    let s = plugins_status(&first).await;
    assert_eq!(plugin(&s, "pw").unwrap()["module"], "compiled");
    // The same bytes under another name: not compiled again.
    std::fs::copy(test_filter("pw-test"), plugins.join("20-again.wasm")).unwrap();
    let c = reqwest::Client::new();
    until(Duration::from_secs(10), "second copy loaded", || async {
        let s = plugins_status(&first).await;
        plugin(&s, "again").is_some_and(|p| p["module"] == "memory cache")
    })
    .await;
    assert_eq!(c.get(first.url("/ok")).send().await.unwrap().status(), 200);
    drop(first);
    // A restart finds the compiled module on disk.
    let (second, _) = start().await;
    let s = plugins_status(&second).await;
    assert_eq!(plugin(&s, "pw").unwrap()["module"], "disk cache", "{s}");
}

/// Compiled modules in a disk cache folder: wasmtime writes each entry in a
/// subfolder, with a `.stats` file beside it.
fn cached_modules(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                let p = e.path();
                if p.is_dir() {
                    cached_modules(&p)
                } else {
                    usize::from(p.extension().is_none_or(|x| x != "stats"))
                }
            })
            .sum()
    })
}

/// A version written while weir serves goes live on the baseline
/// compiler's code, then is compiled optimized once it has served a while
/// (5 s) unchanged; the optimized code takes over without a failed request,
/// and /plugins says which compiler made the code serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_version_goes_live_on_baseline_code_and_is_then_compiled_optimized() {
    let _shared = ALONE.read().await;
    let up = Upstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let (plugins, cache) = (dir.path().join("plugins"), dir.path().join("cache"));
    std::fs::create_dir(&plugins).unwrap();
    std::fs::write(
        plugins.join("10-hdr.wasm"),
        header_module("x-version", "one"),
    )
    .unwrap();
    let (admin, port) = (free_port(), free_port());
    let config = format!(
        "{}[plugins]\ncache_dir = \"{}\"\n[[cluster]]\nname = \"app\"\nendpoints = [\"{}\"]\n[[route]]\nname = \"app\"\ncluster = \"app\"\n",
        support::base_config(admin, port),
        cache.display(),
        up.addr
    );
    let w = Weir::start_in(dir, admin, port, &config).await;
    let s = plugins_status(&w).await;
    assert_eq!(
        plugin(&s, "hdr").unwrap()["compiler"],
        "optimized",
        "plugins found at start are compiled optimized: {s}"
    );
    let at_start = cached_modules(&cache);
    assert!(at_start >= 1, "the optimized start-up compile is on disk");
    let c = reqwest::Client::new();
    let url = w.url("/ok");
    write_then_rename(
        &plugins.join("10-hdr.wasm"),
        &header_module("x-version", "two"),
    );
    until(Duration::from_secs(5), "version two serving", || async {
        header_of(&c, &url, "x-version").await.as_deref() == Some("two")
    })
    .await;
    let s = plugins_status(&w).await;
    let hdr = plugin(&s, "hdr").unwrap();
    assert_eq!(hdr["compiler"], "baseline", "{s}");
    let since = hdr["serving_since"].clone();
    assert_eq!(
        cached_modules(&cache),
        at_start,
        "baseline code is not written to the disk cache"
    );
    // Requests keep flowing while the optimized code replaces it.
    let failures = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (c, url, failures, stop) = (c.clone(), url.clone(), failures.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if header_of(&c, &url, "x-version").await.as_deref() != Some("two") {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    until(
        Duration::from_secs(30),
        "version two compiled optimized",
        || async { plugin(&plugins_status(&w).await, "hdr").unwrap()["compiler"] == "optimized" },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed or missed the header"
    );
    let s = plugins_status(&w).await;
    let hdr = plugin(&s, "hdr").unwrap();
    assert_eq!(
        hdr["serving_since"], since,
        "the same version, recompiled: {s}"
    );
    assert_eq!(
        cached_modules(&cache),
        at_start + 1,
        "the optimized code is written to the disk cache"
    );
    assert_eq!(hdr["state"], "active");
    assert_eq!(
        header_of(&c, &url, "x-version").await.as_deref(),
        Some("two")
    );
}

/// The values of header `name` on a response to `url`.
async fn header_values(c: &reqwest::Client, url: &str, name: &str) -> Vec<String> {
    let r = c.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_canary_takes_its_share_and_a_shadow_is_compared_but_never_applied() {
    let _shared = ALONE.read().await;
    let up = Upstream::start("app").await;
    let (w, plugins) =
        weir_with_plugins(&up, &[("10-ver.wasm", header_module("x-version", "v1"))]).await;
    std::fs::create_dir(plugins.join("next")).unwrap();
    std::fs::write(
        plugins.join("next/10-ver.wasm"),
        header_module("x-version", "v2"),
    )
    .unwrap();
    let c = reqwest::Client::new();
    let url = w.url("/x");

    // Canary: 30% of requests on v2.
    std::fs::write(
        plugins.join("10-ver.toml"),
        "canary = { file = \"next/10-ver.wasm\", weight = 30 }\n",
    )
    .unwrap();
    until(Duration::from_secs(5), "the canary serves", || async {
        plugin(&plugins_status(&w).await, "ver").is_some_and(|p| p["canary"]["state"] == "active")
    })
    .await;
    let mut v2 = 0;
    for _ in 0..300 {
        let values = header_values(&c, &url, "x-version").await;
        assert_eq!(values.len(), 1, "one version per request: {values:?}");
        v2 += usize::from(values[0] == "v2");
    }
    assert!(
        (45..=135).contains(&v2),
        "about 30% of 300 on the canary: {v2}"
    );
    let status = plugins_status(&w).await;
    let canary = &plugin(&status, "ver").unwrap()["canary"];
    assert_eq!(canary["weight"], 30);
    assert_eq!(
        canary["file"].as_str().unwrap(),
        plugins.join("next/10-ver.wasm").display().to_string()
    );
    assert_eq!(
        canary["requests"].as_u64().unwrap() + canary["stable_requests"].as_u64().unwrap(),
        300
    );
    assert_eq!(canary["requests"].as_u64().unwrap(), v2 as u64);
    let m = w.metrics().await;
    assert!(
        m.contains(&format!(
            "weir_plugin_canary_requests_total{{plugin=\"ver\",version=\"canary\"}} {v2}"
        )),
        "{m}"
    );

    // Shadow: every request sees v2 too, on a copy; only v1's header is applied.
    std::fs::write(
        plugins.join("10-ver.toml"),
        "shadow = { file = \"next/10-ver.wasm\" }\n",
    )
    .unwrap();
    until(Duration::from_secs(5), "the shadow runs", || async {
        plugin(&plugins_status(&w).await, "ver").is_some_and(|p| p["shadow"]["state"] == "active")
    })
    .await;
    for _ in 0..20 {
        assert_eq!(header_values(&c, &url, "x-version").await, ["v1"]);
    }
    let status = plugins_status(&w).await;
    let shadow = &plugin(&status, "ver").unwrap()["shadow"];
    assert_eq!(shadow["decisions_differ"], 20, "{shadow}");
    assert_eq!(
        shadow["decisions"], 40,
        "request and response heads of 20 requests: {shadow}"
    );
    assert!(
        w.logs()
            .contains("the shadow version decided differently (not applied)")
    );
    let m = w.metrics().await;
    assert!(
        m.contains("weir_plugin_shadow_decisions_total{plugin=\"ver\",outcome=\"differ\"} 20"),
        "{m}"
    );

    // The shadow file changes (the subfolder is watched too): now it agrees.
    write_then_rename(
        &plugins.join("next/10-ver.wasm"),
        &header_module("x-version", "v1"),
    );
    until(Duration::from_secs(5), "the new shadow runs", || async {
        plugin(&plugins_status(&w).await, "ver").is_some_and(|p| p["shadow"]["decisions"] == 0)
    })
    .await;
    for _ in 0..10 {
        assert_eq!(header_values(&c, &url, "x-version").await, ["v1"]);
    }
    let status = plugins_status(&w).await;
    let shadow = &plugin(&status, "ver").unwrap()["shadow"];
    assert_eq!(
        (
            shadow["decisions"].as_u64(),
            shadow["decisions_differ"].as_u64()
        ),
        (Some(20), Some(0))
    );

    // A canary that cannot load: the stable version serves alone, the error shown.
    std::fs::write(
        plugins.join("10-ver.toml"),
        "canary = { file = \"next/missing.wasm\", weight = 50 }\n",
    )
    .unwrap();
    until(
        Duration::from_secs(5),
        "the failed canary is shown",
        || async {
            plugin(&plugins_status(&w).await, "ver")
                .is_some_and(|p| p["canary"]["state"] == "failed")
        },
    )
    .await;
    let status = plugins_status(&w).await;
    let canary = &plugin(&status, "ver").unwrap()["canary"];
    assert!(
        canary["last_error"]
            .as_str()
            .unwrap()
            .contains("missing.wasm: cannot read"),
        "{canary}"
    );
    for _ in 0..20 {
        assert_eq!(header_values(&c, &url, "x-version").await, ["v1"]);
    }

    // Bad settings are refused with the field named; the last good version keeps serving.
    for (toml, want) in [
        (
            "canary = { file = \"next/10-ver.wasm\", weight = 0 }\n",
            "canary.weight: 0 is not a percentage from 1 to 99",
        ),
        (
            "canary = { file = \"20-other.wasm\", weight = 5 }\n",
            "canary.file: \"20-other.wasm\" would be a plugin of its own: put it in a subfolder",
        ),
        (
            "shadow = { file = \"../x.wasm\" }\n",
            "shadow.file: \"../x.wasm\" must be a path inside the plugins folder",
        ),
        (
            "canary = { file = \"next/10-ver.wasm\", weight = 5 }\nshadow = { file = \"next/10-ver.wasm\" }\n",
            "set canary or shadow, not both",
        ),
    ] {
        std::fs::write(plugins.join("10-ver.toml"), toml).unwrap();
        until(Duration::from_secs(5), want, || async {
            plugin(&plugins_status(&w).await, "ver")
                .and_then(|p| p["last_error"].as_str().map(|e| e.contains(want)))
                .unwrap_or(false)
        })
        .await;
        assert_eq!(header_values(&c, &url, "x-version").await, ["v1"]);
    }
}
