//! The weir command line: run, validate, version, logs, and bad inputs.

mod support;

use serde_json::json;

use std::process::Command;
use std::time::Duration;

use support::{Weir, free_port, weir_bin};

fn weir(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(weir_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn version_prints_the_crate_version() {
    let (code, out, _) = weir(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("weir {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn every_example_config_validates() {
    let mut n = 0;
    for entry in std::fs::read_dir(repo("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, out, err) = weir(&["validate", "--config", path.to_str().unwrap()]);
            assert_eq!(code, 0, "{}: {out}{err}", path.display());
            assert!(out.contains("valid"), "{out}");
            n += 1;
        }
    }
    assert!(n >= 2, "config/ holds at least gateway.toml and tls.toml");
}

#[test]
fn validate_lists_every_error_and_exits_one() {
    let path = repo("host/tests/config-ui/dangling-cluster.toml");
    let (code, _, err) = weir(&["validate", "--config", &path]);
    assert_eq!(code, 1);
    assert!(
        err.contains("route[1].cluster: no cluster named \"bakend\" (did you mean \"backend\"?)"),
        "{err}"
    );
    assert!(
        err.contains("route[2].weighted[1].cluster: no cluster named \"canary\""),
        "{err}"
    );
    assert!(err.contains("2 error(s)"), "{err}");
    let (code, _, err) = weir(&["validate", "--config", "/no/such/weir.toml"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read the config file"), "{err}");
}

#[test]
fn unreadable_or_mismatched_certificates_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::TestCa::new();
    let (c1, _) = ca.issue(&["a.test"], dir.path(), "a");
    let (_, k2) = ca.issue(&["b.test"], dir.path(), "b");
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate").unwrap();
    let write = |tls: &str| {
        let p = dir.path().join("weir.toml");
        std::fs::write(
            &p,
            format!("[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\ntls = {tls}\n"),
        )
        .unwrap();
        p.to_str().unwrap().to_string()
    };
    let (code, _, err) = weir(&[
        "validate",
        "--config",
        &write("{ cert = \"missing.pem\", key = \"missing.key\" }"),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("listener[0].tls: cannot read certificate file")
            && err.contains("missing.pem"),
        "{err}"
    );
    let (_, _, err) = weir(&[
        "validate",
        "--config",
        &write("{ cert = \"garbage.pem\", key = \"b.key\" }"),
    ]);
    assert!(
        err.contains("garbage.pem: no PEM certificate found"),
        "{err}"
    );
    let (_, _, err) = weir(&[
        "validate",
        "--config",
        &write(&format!(
            "{{ cert = \"{}\", key = \"b.key\" }}",
            c1.display()
        )),
    ]);
    assert!(err.contains("do not go together"), "{err}");
    let _ = k2;
}

#[test]
fn run_refuses_a_bad_config_without_binding() {
    let path = repo("host/tests/config-ui/unknown-keys.toml");
    let (code, _, err) = weir(&["run", "--config", &path]);
    assert_eq!(code, 1);
    assert!(
        err.contains("unknown key \"lissten\"") && err.contains("not started"),
        "{err}"
    );
}

#[tokio::test]
async fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("weir.toml");
    std::fs::write(&p, format!("[[listener]]\nname = \"busy\"\nlisten = \"127.0.0.1:{port}\"\n[[route]]\nname = \"e\"\necho = true\n")).unwrap();
    let (code, _, err) = weir(&["run", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("listener \"busy\": cannot bind 127.0.0.1:{port}"))
            && err.contains("another process"),
        "{err}"
    );
}

#[tokio::test]
async fn json_logs_on_request() {
    let (admin, port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("weir.toml");
    std::fs::write(
        &p,
        format!(
            "{}[[route]]\nname = \"e\"\necho = true\n",
            support::base_config(admin, port)
        ),
    )
    .unwrap();
    let child = Command::new(weir_bin())
        .args([
            "--log-format",
            "json",
            "run",
            "--config",
            p.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reqwest::get(format!("http://127.0.0.1:{admin}/ready"))
        .await
        .is_err()
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "SIGINT is a clean exit");
    let text = String::from_utf8_lossy(&out.stderr);
    let first = text.lines().next().unwrap();
    let v: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(v["level"], "INFO");
}

/// The README's first command: `weir run` on the embedded default (127.0.0.1:8080, admin 9901).
#[tokio::test]
async fn run_without_config_serves_the_echo_gateway() {
    let w = Weir::start_embedded().await;
    let r = reqwest::Client::new()
        .post("http://127.0.0.1:8080/hello?x=1")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["method"].as_str(), v["path"].as_str(), v["body"].as_str()),
        (Some("POST"), Some("/hello"), Some("hi"))
    );
    assert_eq!(v["route"], "echo");
    assert!(v["headers"]["x-request-id"].is_string());
    // The bundled telemetry plugin runs: a traceparent went upstream, metrics count the request.
    assert!(
        v["headers"]["traceparent"]
            .as_str()
            .is_some_and(|t| t.starts_with("00-")),
        "{v}"
    );
    let plugins: serde_json::Value = reqwest::get(w.admin_url("/plugins"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<(&str, &str)> = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("telemetry", "active"),
            ("authn-jwt", "active"),
            ("authz-rbac", "active"),
            ("ratelimit", "active")
        ],
        "{plugins}"
    );
    let m = w.metrics().await;
    assert!(
        m.contains("weir_telemetry_requests_total{route=\"echo\",cluster=\"\",method=\"POST\",response_code=\"200\"} 1"),
        "{m}"
    );
    the_policy_plugins_answer_on_api().await;
    drop(w);
}

/// The README's tour of the policy plugins on the embedded default's /api/
/// route (run by the test above: the embedded default has fixed ports).
async fn the_policy_plugins_answer_on_api() {
    const USER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImRlbW8ifQ.eyJpc3MiOiJodHRwczovL2RlbW8ud2Vpci5sb2NhbCIsInN1YiI6ImFubiIsInJvbGUiOiJ1c2VyIiwiZXhwIjo0MTAyNDQ0ODAwfQ.aL-vwPC9vwGICObXp4wNN2JeDZWuzdM_4ngdI3wop1c";
    const ADMIN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImRlbW8ifQ.eyJpc3MiOiJodHRwczovL2RlbW8ud2Vpci5sb2NhbCIsInN1YiI6InJvb3QiLCJyb2xlIjoiYWRtaW4iLCJleHAiOjQxMDI0NDQ4MDB9.qrnd1eLpE7ImAR15sotA1CdbMbRA4M37V77pmf3Vp20";
    let c = reqwest::Client::new();
    let get = |path: &str, auth: Option<(&str, &str)>| {
        let mut r = c.get(format!("http://127.0.0.1:8080{path}"));
        if let Some((k, v)) = auth {
            r = r.header(k, v);
        }
        r.send()
    };
    let user_auth = format!("Bearer {USER}");
    let user = Some(("authorization", user_auth.as_str()));
    let admin = format!("Bearer {ADMIN}");
    // Outside /api/ nothing is asked.
    assert_eq!(get("/hello", None).await.unwrap().status(), 200);
    // No credential: 401 with a challenge.
    let r = get("/api/orders", None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"weir\"");
    // The demo user's JWT: through, with the claims forwarded.
    let r = get("/api/orders", user).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ratelimit-limit"], "5");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (&v["headers"]["x-user"], &v["headers"]["x-user-role"]),
        (&json!("ann"), &json!("user"))
    );
    assert!(
        v["headers"].get("authorization").is_none(),
        "the token stays at the gateway"
    );
    // Not the admin area: 403 naming the policy.
    let r = get("/api/admin/users", user).await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("no-admin-for-others"));
    assert_eq!(
        get("/api/admin/users", Some(("authorization", &admin)))
            .await
            .unwrap()
            .status(),
        200
    );
    // The demo API key.
    let r = get("/api/orders", Some(("x-api-key", "weir-demo-key")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        get("/api/orders", Some(("x-api-key", "guess")))
            .await
            .unwrap()
            .status(),
        401
    );
    // Five requests per caller per ten seconds: the user had 1 (the 403 came before ratelimit).
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get("/api/orders", user).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200]);
    let r = get("/api/orders", user).await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
}

/// `weir plugin new`, then what its README says: test, build, drop in, serve.
#[tokio::test]
async fn plugin_new_scaffolds_a_crate_that_tests_builds_and_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, out, err) = weir(&[
        "plugin",
        "new",
        "hello-test",
        "--path",
        tmp.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("created"), "{out}");
    let krate = tmp.path().join("hello-test");
    // The repository's lock pins the same dependency versions the workspace built.
    std::fs::copy(repo("Cargo.lock"), krate.join("Cargo.lock")).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = std::path::Path::new(&repo("target")).join("scaffold");
    let run = |args: &[&str]| {
        let out = Command::new(&cargo)
            .args(args)
            .arg("--target-dir")
            .arg(&target)
            .current_dir(&krate)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cargo {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let tested = run(&["test"]);
    assert!(
        tested.contains("test tests::adds_the_header ... ok"),
        "{tested}"
    );
    run(&["build", "--release", "--target", "wasm32-wasip2"]);
    let wasm = target.join("wasm32-wasip2/release/hello_test.wasm");

    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(&wasm, plugins.join("50-hello-test.wasm")).unwrap();
    std::fs::write(
        plugins.join("50-hello-test.toml"),
        "[config]\nvalue = \"scaffolded\"\n",
    )
    .unwrap();
    let (admin, port) = (free_port(), free_port());
    let config = format!(
        "{}[[route]]\nname = \"echo\"\necho = true\n",
        support::base_config(admin, port)
    );
    let w = Weir::start_in(dir, admin, port, &config).await;
    let v: serde_json::Value = reqwest::get(w.url("/"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["headers"]["x-hello-test"], "scaffolded", "{v}");

    let (code, _, err) = weir(&[
        "plugin",
        "new",
        "hello-test",
        "--path",
        tmp.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn plugin_describe_names_the_abi_and_imports() {
    let wasm = support::test_filter("pw-test");
    let (code, out, err) = weir(&["plugin", "describe", wasm.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("abi: proxy-wasm 0.2.1"), "{out}");
    assert!(out.contains("env.proxy_log"), "{out}");
    let component = support::sdk_plugin("header-rewrite");
    let (code, out, err) = weir(&["plugin", "describe", component.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "abi: component weir:filter@0.1.2 (world plugin; this weir runs weir:filter@0.1.2)"
        ),
        "{out}"
    );
    assert!(out.contains("weir:filter/http@0.1.2"), "{out}");
    assert!(
        out.contains("configuration schema (JSON Schema): {") && out.contains("\"request_set\""),
        "the schema the SDK derived from the config type: {out}"
    );
    let (code, _, err) = weir(&["plugin", "describe", "/nonexistent.wasm"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent.wasm: cannot read"), "{err}");
}

#[test]
fn ca_init_and_issue_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let ca = ca.to_str().unwrap();
    let (code, out, err) = weir(&["ca", "init", "--dir", ca, "--trust-domain", "mesh.test"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("trust domain mesh.test"), "{out}");
    let (code, _, err) = weir(&["ca", "init", "--dir", ca]);
    assert_eq!(code, 1);
    assert!(err.contains("already holds a CA: pass --force"), "{err}");
    let out_dir = dir.path().join("w");
    let w = out_dir.to_str().unwrap();
    let (code, _, err) = weir(&[
        "ca",
        "issue",
        "--dir",
        ca,
        "--spiffe",
        "spiffe://other.test/sa/x",
        "--out",
        w,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("serves trust domain \"mesh.test\""), "{err}");
    let (code, _, err) = weir(&[
        "ca",
        "issue",
        "--dir",
        ca,
        "--spiffe",
        "https://mesh.test/x",
        "--out",
        w,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("must start with spiffe://"), "{err}");
    let (code, out, err) = weir(&[
        "ca",
        "issue",
        "--dir",
        ca,
        "--spiffe",
        "spiffe://mesh.test/ns/a/sa/b",
        "--ttl",
        "2h",
        "--out",
        w,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("issued spiffe://mesh.test/ns/a/sa/b"), "{out}");
    for f in ["cert.pem", "key.pem", "ca.pem"] {
        assert!(out_dir.join(f).exists(), "{f}");
    }
}
