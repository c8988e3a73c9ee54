#![allow(missing_docs)] // criterion_group! generates an undocumented function
//! The policy chain's cost per request, host round trips included: the
//! telemetry, authn-jwt (RS256, the token verified once and then taken from
//! its cache, as for a client sending one token with many requests),
//! authz-rbac and ratelimit (local quota) components, through the request
//! headers, response headers and done phases, as weir runs them. The load
//! bench (`--filters policy`) measures the same chain against Envoy's
//! native filters.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The allocator weir ships with, so the figures match the binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use weir::filter::{ChainEntry, FilterChain, HttpFilter};
use weir::plugin::host::HostServices;

/// Builds the four plugins with the `plugin` profile, as shipped.
fn plugins() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = root.join("target/plugins");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "--profile",
        "plugin",
        "--locked",
        "--target",
        "wasm32-wasip2",
    ]);
    for p in ["telemetry", "authn-jwt", "authz-rbac", "ratelimit"] {
        cmd.args(["-p", p]);
    }
    let ok = cmd
        .arg("--target-dir")
        .arg(&target)
        .current_dir(&root)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("running cargo")
        .success();
    assert!(ok, "building the policy plugins failed");
    target.join("wasm32-wasip2/plugin")
}

fn key() -> EncodingKey {
    let pem = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/authn-jwt/src/testkeys/rsa.pem"),
    )
    .unwrap();
    EncodingKey::from_rsa_pem(&pem).unwrap()
}

fn bench(c: &mut Criterion) {
    let dir = plugins();
    let defaults = weir::config::Config::embedded_default().plugin_defaults;
    let host = Arc::new(HostServices::new(
        std::sync::Weak::new(),
        Arc::new(weir::telemetry::Metrics::new()),
    ));
    let mut jwk = Jwk::from_encoding_key(&key(), Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("k".into());
    let jwks = serde_json::json!({"keys": [jwk]}).to_string();
    let exp = jsonwebtoken::get_current_timestamp() + 86_400;
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("k".into());
    let token = jsonwebtoken::encode(
        &h,
        &serde_json::json!({"iss": "https://bench", "sub": "u", "aud": "bench", "exp": exp}),
        &key(),
    )
    .unwrap();
    let plugins: [(&str, String); 4] = [
        ("telemetry", "[config]\naccess_log = false\n".into()),
        ("authn_jwt", format!("[[config.providers]]\nname = \"b\"\nissuer = \"https://bench\"\naudiences = [\"bench\"]\njwks = '{jwks}'\n")),
        ("authz_rbac", "[config]\ndefault = \"deny\"\n[[config.policies]]\nname = \"p\"\naction = \"allow\"\nprincipals = [\"https://bench/*\"]\n".into()),
        ("ratelimit", "[[config.limits]]\nname = \"c\"\ndescriptor = [\"source.ip\"]\ntokens = 1000000000\nperiod = \"1s\"\n".into()),
    ];
    let entry = |(file, settings): &(&str, String)| {
        let path = dir.join(format!("{file}.wasm"));
        let health = Arc::new(weir::plugin::health::PluginHealth::new(file, None));
        let spec = weir::plugin::spec(&path, Some(settings), &defaults, &[], health)
            .unwrap()
            .unwrap();
        let loaded = weir::plugin::load(spec, &std::fs::read(&path).unwrap(), &host, 1).unwrap();
        let filter: Arc<dyn HttpFilter> = loaded;
        ChainEntry {
            filter,
            routes: None,
        }
    };
    // The whole chain, then each plugin alone (where the chain's time goes).
    let mut chains = vec![(
        "policy_chain".to_string(),
        FilterChain::with_entries(plugins.iter().map(entry).collect()),
    )];
    for p in &plugins {
        chains.push((
            format!("policy_chain/{}", p.0),
            FilterChain::with_entries(vec![entry(p)]),
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let log = weir::filter::LogInfo {
        status: 200,
        route: Some("api".into()),
        cluster: Some("app".into()),
        response_headers: None,
    };
    let bearer = format!("Bearer {token}");
    for (name, chain) in &chains {
        let alone_authz = name.ends_with("/authz_rbac");
        c.bench_function(name, |b| {
            b.iter(|| {
                let info = weir_benches::stream_info(Some("api"));
                if alone_authz {
                    // What authn-jwt publishes in the whole chain.
                    let _ = info
                        .attributes
                        .set("request.auth.principal", b"https://bench/u".to_vec());
                }
                let mut stream = chain.start(&info);
                let (head, ()) = http::Request::get("/orders")
                    .header("host", "example.com")
                    .header("authorization", bearer.as_str())
                    .body(())
                    .unwrap()
                    .into_parts();
                let mut head = Box::new(head);
                let allowed = rt.block_on(stream.request_headers(&mut head, true, &|_| None));
                assert!(allowed.is_ok(), "the chain let the request through");
                let (mut resp, ()) = http::Response::builder()
                    .status(200)
                    .header("content-length", "2")
                    .body(())
                    .unwrap()
                    .into_parts();
                let _ = rt.block_on(stream.response_headers(&mut resp, false));
                stream.log(&log);
                black_box((head, resp))
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
