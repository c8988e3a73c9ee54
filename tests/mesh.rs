//! Sidecar mode and mesh security through the real binary: `weir ca`, mTLS
//! listeners, upstream mTLS with allowed identities, identities as plugin
//! attributes, refusals counted, and certificate rotation.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Upstream, Weir, free_port, sdk_plugin, test_filter, weir_bin};

const TD: &str = "example.org";

fn spiffe(sa: &str) -> String {
    format!("spiffe://{TD}/ns/default/sa/{sa}")
}

fn weir_cli(args: &[&str]) -> String {
    let out = Command::new(weir_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "weir {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into()
}

/// `weir ca init` in `dir/ca`, and returns the folder.
fn ca_init(dir: &Path, name: &str) -> PathBuf {
    let ca = dir.join(name);
    weir_cli(&[
        "ca",
        "init",
        "--dir",
        ca.to_str().unwrap(),
        "--trust-domain",
        TD,
    ]);
    ca
}

/// `weir ca issue` for service account `sa` (of namespace default) into `dir/sa`.
fn issue(ca: &Path, dir: &Path, sa: &str, ttl: &str) -> PathBuf {
    issue_id(ca, &dir.join(sa), &spiffe(sa), ttl)
}

/// `weir ca issue` for SPIFFE ID `id` into `out`.
fn issue_id(ca: &Path, out: &Path, id: &str, ttl: &str) -> PathBuf {
    let out = out.to_path_buf();
    let text = weir_cli(&[
        "ca",
        "issue",
        "--dir",
        ca.to_str().unwrap(),
        "--spiffe",
        id,
        "--dns",
        "localhost",
        "--ttl",
        ttl,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(text.contains(id), "{text}");
    out
}

/// A certificate for `sa` signed by the CA in `ca`, expired yesterday.
fn expired(ca: &Path, dir: &Path, sa: &str) -> PathBuf {
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(ca.join("ca-key.pem")).unwrap()).unwrap();
    let ca_pem = std::fs::read_to_string(ca.join("ca.pem")).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, &ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::URI(spiffe(sa).try_into().unwrap()));
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let out = dir.join(format!("{sa}-expired"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(out.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(out.join("ca.pem"), ca_pem).unwrap();
    out
}

fn tls_table(certs: &Path, extra: &str) -> String {
    let p = |f: &str| certs.join(f).display().to_string();
    format!(
        "{{ cert = \"{}\", key = \"{}\", {extra} }}",
        p("cert.pem"),
        p("key.pem")
    )
}

/// Sidecar B: inbound mTLS on its port, to app B, with authz-rbac (callers of
/// namespace default only, and A kept off /admin), pw-test and the misbehave
/// component in its chain.
async fn sidecar_b(certs: &Path, app: &Upstream) -> Weir {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(sdk_plugin("authz-rbac"), plugins.join("05-authz-rbac.wasm")).unwrap();
    std::fs::write(
        plugins.join("05-authz-rbac.toml"),
        format!(
            r#"[config]
default = "deny"

[[config.policies]]
name = "no-admin-for-a"
action = "deny"
principals = ["{a}"]
path_prefixes = ["/admin"]

[[config.policies]]
name = "mesh-callers"
action = "allow"
principals = ["spiffe://{TD}/ns/default/*"]
"#,
            a = spiffe("a")
        ),
    )
    .unwrap();
    std::fs::copy(test_filter("pw-test"), plugins.join("10-pw-test.wasm")).unwrap();
    std::fs::copy(
        sdk_plugin("misbehave-test"),
        plugins.join("20-misbehave.wasm"),
    )
    .unwrap();
    let (admin, port) = (free_port(), free_port());
    let ca = certs.join("ca.pem").display().to_string();
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[[listener]]\nname = \"inbound\"\nlisten = \"127.0.0.1:{port}\"\ntls = {}\n\n[[cluster]]\nname = \"app\"\nendpoints = [\"{}\"]\n\n[[route]]\nname = \"to-app\"\ncluster = \"app\"\n",
        tls_table(
            certs,
            &format!("client_ca = \"{ca}\", require_client_cert = true")
        ),
        app.addr
    );
    Weir::start_in(dir, admin, port, &config).await
}

/// Sidecar A: plain outbound listener; hosts route to B's inbound with mTLS originated.
async fn sidecar_a(certs: &Path, b_port: u16) -> Weir {
    let (admin, port) = (free_port(), free_port());
    let ca = certs.join("ca.pem").display().to_string();
    let b = format!("\"127.0.0.1:{b_port}\"");
    let config = format!(
        r#"[admin]
listen = "127.0.0.1:{admin}"

[[listener]]
name = "outbound"
listen = "127.0.0.1:{port}"

[[cluster]]
name = "b"
endpoints = [{b}]
tls = {mtls_b}

[[cluster]]
name = "b-expecting-c"
endpoints = [{b}]
tls = {mtls_c}

[[cluster]]
name = "b-without-cert"
endpoints = [{b}]
tls = {{ ca = "{ca}", allowed_identities = ["{id_b}"] }}

[[route]]
name = "b"
match = {{ host = "b.mesh" }}
cluster = "b"

[[route]]
name = "c"
match = {{ host = "c.mesh" }}
cluster = "b-expecting-c"

[[route]]
name = "nocert"
match = {{ host = "nocert.mesh" }}
cluster = "b-without-cert"
"#,
        mtls_b = tls_table(
            certs,
            &format!("ca = \"{ca}\", allowed_identities = [\"spiffe://{TD}/ns/default/*\"]")
        ),
        mtls_c = tls_table(
            certs,
            &format!("ca = \"{ca}\", allowed_identities = [\"{}\"]", spiffe("c"))
        ),
        id_b = spiffe("b"),
    );
    Weir::start_with(admin, port, &config).await
}

fn lines(text: &str) -> impl Fn(&str) -> String + '_ {
    move |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing in\n{text}"))
            .to_string()
    }
}

/// A client that presents `certs` and trusts `ca`.
fn mtls_client(ca: &Path, certs: Option<&Path>) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(&std::fs::read(ca.join("ca.pem")).unwrap()).unwrap();
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root);
    if let Some(c) = certs {
        let mut pem = std::fs::read(c.join("cert.pem")).unwrap();
        pem.extend(std::fs::read(c.join("key.pem")).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(prefix)
                .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn two_sidecars_carry_a_call_over_mtls_and_b_sees_a_s_identity() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_init(dir.path(), "ca");
    let (certs_a, certs_b) = (
        issue(&ca, dir.path(), "a", "1h"),
        issue(&ca, dir.path(), "b", "1h"),
    );
    let app_b = Upstream::start("app-b").await;
    let b = sidecar_b(&certs_b, &app_b).await;
    let a = sidecar_a(&certs_a, b.port).await;
    let client = reqwest::Client::new();
    let get = |host: &'static str, path: &str, extra: Option<(&'static str, String)>| {
        let mut r = client.get(a.url(path)).header("host", host);
        if let Some((k, v)) = extra {
            r = r.header(k, v);
        }
        r.send()
    };

    // App A -> sidecar A (plain) -> sidecar B (mTLS) -> app B.
    let r = get("b.mesh", "/hello", None).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["upstream"], "app-b");
    assert!(v["headers"]["x-pw-seen"].is_string(), "B's chain ran: {v}");

    // B's proxy-wasm plugin sees A's identity with Envoy's property names.
    let text = get("b.mesh", "/props", None)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let p = lines(&text);
    assert_eq!(p("connection.mtls"), "true");
    assert_eq!(p("source.principal"), spiffe("a"));
    assert_eq!(p("connection.uri_san_peer_certificate"), spiffe("a"));
    assert_eq!(p("connection.subject_peer_certificate"), format!("O={TD}"));
    assert_eq!(p("connection.uri_san_local_certificate"), spiffe("b"));
    assert_eq!(p("destination.principal"), spiffe("b"));
    assert_eq!(
        p("connection.tls_version"),
        "TLSv1.3",
        "encrypted between the sidecars"
    );

    // And so does its component plugin, through the WIT attributes interface.
    let names = "source.principal,connection.mtls,connection.uri_san_peer_certificate,destination.principal";
    let text = get(
        "b.mesh",
        "/attributes",
        Some(("x-attributes", names.into())),
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let c = lines(&text);
    assert_eq!(c("source.principal"), spiffe("a"));
    assert_eq!(c("connection.mtls"), "true");
    assert_eq!(c("connection.uri_san_peer_certificate"), spiffe("a"));
    assert_eq!(c("destination.principal"), spiffe("b"));

    // B's authz-rbac policies match on A's identity: A is kept off /admin, with the policy named.
    let r = get("b.mesh", "/admin/users", None).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.text().await.unwrap(),
        "denied by policy \"no-admin-for-a\"\n"
    );
    let logs = b.logs();
    assert!(
        logs.contains(&format!("denied GET /admin/users from {}", spiffe("a")))
            && logs.contains("no-admin-for-a"),
        "the denial is logged with its reason:\n{logs}"
    );
    // A caller of another namespace, with a certificate from the same CA, gets the default deny.
    let stranger = issue_id(
        &ca,
        &dir.path().join("stranger"),
        &format!("spiffe://{TD}/ns/other/sa/x"),
        "1h",
    );
    let r = mtls_client(&certs_b, Some(&stranger))
        .get(format!("https://localhost:{}/hello", b.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-denied-by"], "authz-rbac/default");
    let mb = b.metrics().await;
    assert!(
        mb.contains("name=\"denied\"") && mb.contains("plugin=\"authz-rbac\""),
        "{mb}"
    );

    // A refuses an upstream whose identity is not the one expected.
    let hits = app_b.hits();
    let r = get("c.mesh", "/hello", None).await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(app_b.hits(), hits, "nothing reached app B");
    let ma = a.metrics().await;
    assert!(
        metric(
            &ma,
            "weir_upstream_tls_refusals_total{cluster=\"b-expecting-c\",reason=\"identity_not_allowed\"}"
        ) >= 1,
        "{ma}"
    );
    assert!(
        a.logs().contains(&format!(
            "upstream certificate refused: upstream identity {} is not in this cluster's allowed_identities",
            spiffe("b")
        )),
        "{}",
        a.logs()
    );

    // B refuses a sidecar that presents no certificate.
    let r = get("nocert.mesh", "/hello", None).await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(app_b.hits(), hits);

    // B refuses clients straight to its inbound port: no certificate, another CA's, an expired one, plain HTTP.
    let b_url = format!("https://localhost:{}/hello", b.port);
    assert!(
        mtls_client(&certs_b, None)
            .get(&b_url)
            .send()
            .await
            .is_err()
    );
    let other_ca = ca_init(dir.path(), "other-ca");
    let foreign = issue(&other_ca, &dir.path().join("foreign"), "a", "1h");
    assert!(
        mtls_client(&certs_b, Some(&foreign))
            .get(&b_url)
            .send()
            .await
            .is_err()
    );
    let old = expired(&ca, dir.path(), "a");
    assert!(
        mtls_client(&certs_b, Some(&old))
            .get(&b_url)
            .send()
            .await
            .is_err()
    );
    assert!(
        reqwest::get(format!("http://127.0.0.1:{}/hello", b.port))
            .await
            .is_err()
    );
    assert_eq!(app_b.hits(), hits, "no refused client reached app B");
    // The right certificate straight to B works (the refusals above were about the certificates).
    let r = mtls_client(&certs_b, Some(&certs_a))
        .get(&b_url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let mb = b.metrics().await;
    for reason in ["no_client_certificate", "unknown_ca", "expired_certificate"] {
        assert!(
            metric(
                &mb,
                &format!(
                    "weir_tls_handshake_errors_total{{listener=\"inbound\",reason=\"{reason}\"}}"
                )
            ) >= 1,
            "{reason} not counted:\n{mb}\n{}",
            b.logs()
        );
    }
    let logs = b.logs();
    assert!(
        logs.contains("TLS handshake refused") && logs.contains("reason=\"unknown_ca\"")
            || logs.contains("reason=unknown_ca"),
        "{logs}"
    );
}

/// Waits until `f` holds or panics after 10 s with `what`.
async fn eventually<F: Fn(&str) -> bool>(w: &Weir, what: &str, f: F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f(&w.metrics().await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{what}; metrics:\n{}\nlog:\n{}",
        w.metrics().await,
        w.logs()
    );
}

async fn served_cert(client: &reqwest::Client, url: &str) -> Vec<u8> {
    let r = client.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .expect("the served certificate")
        .to_vec()
}

#[tokio::test]
async fn replaced_certificates_serve_new_handshakes_and_bad_replacements_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_init(dir.path(), "ca");
    let certs = issue(&ca, dir.path(), "gw", "1h");
    let (admin, port) = (free_port(), free_port());
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[[listener]]\nname = \"https\"\nlisten = \"127.0.0.1:{port}\"\ntls = {}\n\n[[route]]\nname = \"echo\"\necho = true\n",
        tls_table(&certs, "")
    );
    let w = Weir::start_with(admin, port, &config).await;
    let url = format!("https://localhost:{port}/");
    // A fresh client per handshake: a pooled connection would keep the old certificate, as it should.
    let fresh = || {
        let root =
            reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.pem")).unwrap()).unwrap();
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root)
            .tls_info(true)
            .build()
            .unwrap()
    };
    let first = served_cert(&fresh(), &url).await;
    let cert_label = format!("cert=\"{}\"", certs.join("cert.pem").display());
    let reloads = |outcome: &str| {
        format!("weir_tls_certificate_reloads_total{{{cert_label},outcome=\"{outcome}\"}}")
    };

    // Re-issue in place: the next handshake gets the new certificate, no restart.
    issue(&ca, dir.path(), "gw", "2h");
    let ok = reloads("success");
    eventually(&w, "the re-issued certificate was not reloaded", |m| {
        metric(m, &ok) == 1
    })
    .await;
    let second = served_cert(&fresh(), &url).await;
    assert_ne!(first, second, "a new certificate is served");

    // Bad replacements are refused; the last good pair keeps serving.
    let good = (
        std::fs::read(certs.join("cert.pem")).unwrap(),
        std::fs::read(certs.join("key.pem")).unwrap(),
    );
    let other = issue(&ca, &dir.path().join("other"), "gw", "1h");
    let old = expired(&ca, dir.path(), "gw");
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        (
            "expired",
            std::fs::read(old.join("cert.pem")).unwrap(),
            std::fs::read(old.join("key.pem")).unwrap(),
            "expired at",
        ),
        (
            "mismatched",
            std::fs::read(other.join("cert.pem")).unwrap(),
            good.1.clone(),
            "do not go together",
        ),
        (
            "unreadable",
            b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n".to_vec(),
            good.1.clone(),
            "not a valid X.509 certificate",
        ),
        (
            "missing",
            Vec::new(),
            good.1.clone(),
            "cannot read certificate file",
        ),
    ];
    let fail = reloads("failure");
    for (what, cert, key, why) in cases {
        let before = metric(&w.metrics().await, &fail);
        std::fs::write(certs.join("key.pem"), &key).unwrap();
        if cert.is_empty() {
            std::fs::remove_file(certs.join("cert.pem")).unwrap();
        } else {
            std::fs::write(certs.join("cert.pem"), &cert).unwrap();
        }
        eventually(
            &w,
            &format!("the {what} replacement was not refused"),
            |m| metric(m, &fail) > before && w.logs().contains(why),
        )
        .await;
        assert_eq!(
            served_cert(&fresh(), &url).await,
            second,
            "{what}: the last good certificate keeps serving"
        );
        // Put the good pair back (a no-op for the server: the same bytes as served).
        std::fs::write(certs.join("key.pem"), &good.1).unwrap();
        std::fs::write(certs.join("cert.pem"), &good.0).unwrap();
    }
    let m = w.metrics().await;
    assert!(
        m.contains("weir_tls_certificate_expiry_timestamp_seconds{"),
        "{m}"
    );
}

/// Network namespaces made for a test, deleted when it ends.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (.ci/run installs iproute2, iptables and curl)",
                cmd[0]
            )
        });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The same two sidecars, each with its app in its own network namespace
/// joined by a veth pair; app A calls B first through its sidecar's outbound
/// listener, then with no proxy settings at all (iptables REDIRECT into a
/// transparent listener, forwarded to the original destination, redirected
/// again on B's side into B's inbound listener). Needs root; skipped otherwise.
#[tokio::test]
async fn sidecars_in_network_namespaces_with_transparent_interception() {
    if !is_root() {
        eprintln!("skipped: network namespaces and iptables need root");
        return;
    }
    let id = std::process::id();
    let (na, nb) = (format!("weir-a-{id}"), format!("weir-b-{id}"));
    let (va, vb) = (format!("wva{id}"), format!("wvb{id}"));
    let net = format!("10.213.{}", id % 250);
    let (ip_a, ip_b) = (format!("{net}.1"), format!("{net}.2"));
    run(&["ip", "netns", "add", &na]);
    let _guard = Namespaces(vec![na.clone(), nb.clone()]);
    run(&["ip", "netns", "add", &nb]);
    run(&[
        "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
    ]);
    run(&["ip", "link", "set", &va, "netns", &na]);
    run(&["ip", "link", "set", &vb, "netns", &nb]);
    for (ns, dev, ip) in [(&na, &va, &ip_a), (&nb, &vb, &ip_b)] {
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            dev,
        ]);
        run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    // A: the app's (uid 65534) calls to port 8000 go to the sidecar's transparent listener.
    run(&[
        "ip",
        "netns",
        "exec",
        &na,
        "iptables",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        &ip_b,
        "--dport",
        "8000",
        "-m",
        "owner",
        "--uid-owner",
        "65534",
        "-j",
        "REDIRECT",
        "--to-ports",
        "15002",
    ]);
    // B: whatever arrives from the network for the app's port goes to the sidecar's inbound listener.
    run(&[
        "ip",
        "netns",
        "exec",
        &nb,
        "iptables",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-i",
        &vb,
        "-p",
        "tcp",
        "--dport",
        "8000",
        "-j",
        "REDIRECT",
        "--to-ports",
        "15006",
    ]);

    let dir = tempfile::tempdir().unwrap();
    let ca = ca_init(dir.path(), "ca");
    let (certs_a, certs_b) = (
        issue(&ca, dir.path(), "a", "1h"),
        issue(&ca, dir.path(), "b", "1h"),
    );
    let _app_b = Weir::start_in_netns(
        &nb,
        tempfile::tempdir().unwrap(),
        9100,
        8000,
        "[admin]\nlisten = \"127.0.0.1:9100\"\n\n[[listener]]\nname = \"app\"\nlisten = \"127.0.0.1:8000\"\n\n[[route]]\nname = \"echo\"\necho = true\n",
    )
    .await;
    let b_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(b_dir.path().join("plugins")).unwrap();
    std::fs::copy(
        test_filter("pw-test"),
        b_dir.path().join("plugins/10-pw-test.wasm"),
    )
    .unwrap();
    let ca_b = certs_b.join("ca.pem").display().to_string();
    let sidecar_b = Weir::start_in_netns(
        &nb,
        b_dir,
        15000,
        15006,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:15000\"\n\n[[listener]]\nname = \"inbound\"\nlisten = \"0.0.0.0:15006\"\ntransparent = true\ntls = {}\n\n[[cluster]]\nname = \"app\"\nendpoints = [\"127.0.0.1:8000\"]\n\n[[route]]\nname = \"inbound\"\ncluster = \"app\"\n",
            tls_table(&certs_b, &format!("client_ca = \"{ca_b}\""))
        ),
    )
    .await;
    let ca_a = certs_a.join("ca.pem").display().to_string();
    let mtls = tls_table(
        &certs_a,
        &format!("ca = \"{ca_a}\", allowed_identities = [\"spiffe://{TD}/ns/default/*\"]"),
    );
    let sidecar_a = Weir::start_in_netns(
        &na,
        tempfile::tempdir().unwrap(),
        15000,
        15001,
        &format!(
            r#"[admin]
listen = "127.0.0.1:15000"

[[listener]]
name = "outbound"
listen = "127.0.0.1:15001"

[[listener]]
name = "captured"
listen = "127.0.0.1:15002"
transparent = true

[[cluster]]
name = "b"
endpoints = ["{ip_b}:15006"]
tls = {mtls}

[[cluster]]
name = "passthrough"
original_dst = true
tls = {mtls}

[[route]]
name = "to-b"
listeners = ["outbound"]
match = {{ host = "b.mesh" }}
cluster = "b"

[[route]]
name = "captured"
listeners = ["captured"]
cluster = "passthrough"
"#
        ),
    )
    .await;

    // With proxy settings: app A -> sidecar A's outbound listener, by Host.
    let text = support::netns_curl(&na, &["-H", "Host: b.mesh", "http://127.0.0.1:15001/props"]);
    let p = lines(&text);
    assert_eq!(p("source.principal"), spiffe("a"));
    assert_eq!(p("connection.mtls"), "true");
    assert_eq!(p("connection.tls_version"), "TLSv1.3");
    assert_eq!(p("destination.address"), format!("{ip_b}:15006"));
    let echo = support::netns_curl(&na, &["-H", "Host: b.mesh", "http://127.0.0.1:15001/hello"]);
    let v: serde_json::Value =
        serde_json::from_str(&echo).unwrap_or_else(|e| panic!("{e}: {echo}"));
    assert_eq!(v["route"], "echo", "app B answered: {v}");
    assert!(v["headers"]["x-pw-seen"].is_string(), "B's plugin ran: {v}");

    // Without proxy settings: the app calls B's address; iptables brings it through both sidecars.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &na,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .args([
            "curl",
            "-s",
            "--max-time",
            "5",
            &format!("http://{ip_b}:8000/props"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let p = lines(&text);
    assert_eq!(
        p("source.principal"),
        spiffe("a"),
        "B's plugin sees A's identity"
    );
    assert_eq!(
        p("connection.tls_version"),
        "TLSv1.3",
        "encrypted across the veth"
    );
    assert_eq!(
        p("destination.address"),
        format!("{ip_b}:8000"),
        "B's transparent inbound listener restores the original destination"
    );
    let ma = sidecar_a.metrics().await;
    assert!(
        metric(
            &ma,
            "weir_requests_total{route=\"captured\",cluster=\"passthrough\",status_class=\"2xx\"}"
        ) >= 1,
        "{ma}"
    );

    // A client that skips its sidecar reaches B's inbound listener in plain text and is refused.
    let bypass = support::netns_curl(&na, &[&format!("http://{ip_b}:8000/hello")]);
    assert!(
        !bypass.contains("\"route\""),
        "the app must not be reachable in plain text: {bypass}"
    );
    let mb = sidecar_b.metrics().await;
    assert!(
        metric(
            &mb,
            "weir_tls_handshake_errors_total{listener=\"inbound\",reason=\"malformed_or_not_tls\"}"
        ) >= 1,
        "{mb}"
    );
}
