//! The weir command line: run, validate, version, logs, and bad inputs.

mod support;

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
    drop(w);
}
