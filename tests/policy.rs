//! The policy plugins in one chain through the real binary: authn-jwt
//! authenticates (RS256) and publishes the principal and claims, authz-rbac
//! decides on them, the upstream sees only what it should.

mod support;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use support::{Upstream, Weir, free_port, sdk_plugin};

const RSA: &str = include_str!("../plugins/authn-jwt/src/testkeys/rsa.pem");

fn key() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA.as_bytes()).unwrap()
}

fn token(claims: Value) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("k1".into());
    encode(&h, &claims, &key()).unwrap()
}

fn claims(role: &str, exp_in: i64) -> Value {
    let now = jsonwebtoken::get_current_timestamp() as i64;
    json!({"iss": "https://id.test", "sub": "ann", "aud": "orders", "role": role, "exp": now + exp_in})
}

async fn gateway(up: &Upstream) -> Weir {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let mut jwk = Jwk::from_encoding_key(&key(), Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks = json!({"keys": [jwk]}).to_string();
    std::fs::copy(sdk_plugin("authn-jwt"), plugins.join("20-authn-jwt.wasm")).unwrap();
    std::fs::write(
        plugins.join("20-authn-jwt.toml"),
        format!(
            r#"[config]
[[config.providers]]
name = "corp"
issuer = "https://id.test"
audiences = ["orders"]
jwks = '{jwks}'
forward_claims = {{ sub = "x-user" }}

[[config.rules]]
path_prefix = "/public/"
requirement = "skip"
"#
        ),
    )
    .unwrap();
    std::fs::copy(sdk_plugin("authz-rbac"), plugins.join("30-authz-rbac.wasm")).unwrap();
    std::fs::write(
        plugins.join("30-authz-rbac.toml"),
        r#"[config]
default = "deny"
[[config.policies]]
name = "public"
action = "allow"
path_prefixes = ["/public/"]
[[config.policies]]
name = "admins"
action = "allow"
claims = { role = "admin" }
[[config.policies]]
name = "users-off-admin"
action = "deny"
path_prefixes = ["/admin"]
[[config.policies]]
name = "users"
action = "allow"
principals = ["https://id.test/*"]
"#,
    )
    .unwrap();
    let (admin, port) = (free_port(), free_port());
    let config = format!(
        "{}[[cluster]]\nname = \"app\"\nendpoints = [\"{}\"]\n\n[[route]]\nname = \"app\"\ncluster = \"app\"\n",
        support::base_config(admin, port),
        up.addr
    );
    Weir::start_in(dir, admin, port, &config).await
}

#[tokio::test]
async fn authn_jwt_then_authz_rbac_decide_on_the_token() {
    let up = Upstream::start("app").await;
    let w = gateway(&up).await;
    let client = reqwest::Client::new();
    let send = |path: &str, t: Option<String>| {
        let mut r = client.get(w.url(path));
        if let Some(t) = t {
            r = r.bearer_auth(t);
        }
        r.send()
    };

    // No token: 401 with a challenge; the upstream is never called.
    let r = send("/orders", None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"weir\"");
    // An expired token: 401 naming why.
    let r = send("/orders", Some(token(claims("user", -3600))))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let www = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        www.contains("error=\"invalid_token\"") && www.contains("expired"),
        "{www}"
    );
    assert_eq!(up.hits(), 0);

    // A user's token: through, with the subject forwarded and the token removed.
    let r = send("/orders", Some(token(claims("user", 300))))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["x-user"], "ann");
    assert!(v["headers"].get("authorization").is_none(), "{v}");
    // The same user is kept off /admin by authz-rbac, on the principal authn-jwt published.
    let r = send("/admin/users", Some(token(claims("user", 300))))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.text().await.unwrap(),
        "denied by policy \"users-off-admin\"\n"
    );
    // An admin's claims let them in.
    let r = send("/admin/users", Some(token(claims("admin", 300))))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Public paths need no token.
    assert_eq!(send("/public/logo.png", None).await.unwrap().status(), 200);
    assert_eq!(up.hits(), 3);
}

#[test]
fn the_example_plugin_settings_of_config_plugins_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/plugins");
    let mut n = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        let package = stem.split_once('-').map_or(stem.as_str(), |(_, p)| p);
        std::fs::copy(sdk_plugin(package), plugins.join(format!("{stem}.wasm"))).unwrap();
        std::fs::copy(&path, plugins.join(format!("{stem}.toml"))).unwrap();
        n += 1;
    }
    assert_eq!(n, 4, "telemetry, authn-jwt, authz-rbac and ratelimit");
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\n[[route]]\nname = \"e\"\necho = true\n").unwrap();
    let out = std::process::Command::new(support::weir_bin())
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A JWKS server on loopback: answers every request with `jwks`, counting them.
async fn jwks_server(
    jwks: String,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (jwks, hits) = (jwks.clone(), counted.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let ok = req.uri().path() == "/.well-known/jwks.json";
                        let body = if ok { jwks.clone() } else { String::new() };
                        async move {
                            let mut r = hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(body),
                            ));
                            if !ok {
                                *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                            }
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

async fn remote_jwks_gateway(up: &Upstream, idp: std::net::SocketAddr) -> Weir {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(sdk_plugin("authn-jwt"), plugins.join("20-authn-jwt.wasm")).unwrap();
    std::fs::write(
        plugins.join("20-authn-jwt.toml"),
        r#"[config]
[[config.providers]]
name = "corp"
issuer = "https://id.test"
remote_jwks = { cluster = "idp", path = "/.well-known/jwks.json", cache_duration = "10m" }
forward_claims = { sub = "x-user" }
"#,
    )
    .unwrap();
    let (admin, port) = (free_port(), free_port());
    let config = format!(
        "{}[[cluster]]\nname = \"app\"\nendpoints = [\"{}\"]\n\n[[cluster]]\nname = \"idp\"\nendpoints = [\"{idp}\"]\n\n[[route]]\nname = \"app\"\ncluster = \"app\"\n",
        support::base_config(admin, port),
        up.addr
    );
    Weir::start_in(dir, admin, port, &config).await
}

#[tokio::test]
async fn authn_jwt_fetches_its_keys_from_a_cluster_once_for_all_instances() {
    let up = Upstream::start("app").await;
    let mut jwk = Jwk::from_encoding_key(&key(), Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let (idp, hits) = jwks_server(json!({"keys": [jwk]}).to_string()).await;
    let w = remote_jwks_gateway(&up, idp).await;
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "fetched when first needed"
    );
    let c = reqwest::Client::new();
    for i in 0..8 {
        let r = c
            .get(w.url("/orders"))
            .bearer_auth(token(claims("user", 300)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["headers"]["x-user"], "ann");
    }
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one fetch, shared by the plugin's instances"
    );
    let r = c.get(w.url("/orders")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let m = w.metrics().await;
    assert!(m.contains("jwks_fetched"), "{m}");
}

#[tokio::test]
async fn authn_jwt_answers_401_naming_the_fetch_that_failed() {
    let up = Upstream::start("app").await;
    // A port nothing listens on.
    let idp: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let w = remote_jwks_gateway(&up, idp).await;
    let r = reqwest::Client::new()
        .get(w.url("/orders"))
        .bearer_auth(token(claims("user", 300)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer realm=\"weir\", error=\"invalid_token\"")
    );
    let body = r.text().await.unwrap();
    assert!(
        body.contains("fetching the keys of provider \"corp\" from cluster \"idp\" /.well-known/jwks.json failed: outbound call to cluster \"idp\" failed:"),
        "{body}"
    );
    assert!(w.logs().contains("fetching the keys of provider"), "logged");
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}
