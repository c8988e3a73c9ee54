//! authn-jwt through the SDK's test harness, with real tokens signed by the
//! throwaway keys in testkeys/.

use super::*;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;
use weir_sdk::testing::{Harness, get};

const RSA: &str = include_str!("testkeys/rsa.pem");
const RSA_OTHER: &str = include_str!("testkeys/rsa-other.pem");
const EC: &str = include_str!("testkeys/ec.pem");
const ED: &str = include_str!("testkeys/ed25519.pem");
const SECRET: &[u8] = b"a shared secret of at least 32 bytes!";

fn key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA.as_bytes()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC.as_bytes()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED.as_bytes()).unwrap(),
        Algorithm::HS256 => EncodingKey::from_secret(SECRET),
        _ => unreachable!(),
    }
}

fn jwk(alg: Algorithm, kid: &str) -> Value {
    if alg == Algorithm::EdDSA {
        // jsonwebtoken cannot derive an Ed25519 JWK; its public key was read with openssl.
        let x = include_str!("testkeys/ed25519.x").trim();
        return json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid});
    }
    let mut j = Jwk::from_encoding_key(&key(alg), alg).unwrap();
    j.common.key_id = Some(kid.into());
    serde_json::to_value(j).unwrap()
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn token(alg: Algorithm, kid: &str, claims: Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    encode(&h, &claims, &key(alg)).unwrap()
}

fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": "https://id.test/", "sub": "ann", "aud": "orders", "exp": now() + 300, "email": "ann@test"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn config() -> String {
    json!({
        "providers": [{
            "name": "corp",
            "issuer": "https://id.test/",
            "audiences": ["orders"],
            "jwks": {"keys": [jwk(Algorithm::RS256, "rsa"), jwk(Algorithm::ES256, "ec"), jwk(Algorithm::EdDSA, "ed"), jwk(Algorithm::HS256, "hs")]},
            "leeway": "5s",
            "forward_claims": {"sub": "x-user", "email": "x-user-email"},
            "from": [{"header": "authorization", "prefix": "Bearer "}, {"cookie": "session"}, {"query": "access_token"}]
        }],
        "rules": [{"path_prefix": "/public/", "requirement": "skip"}, {"path_prefix": "/maybe/", "requirement": "optional"}],
        "api_keys": [{"name": "ci-bot", "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}]
    })
    .to_string()
}

fn harness() -> Harness<AuthnJwt> {
    Harness::<AuthnJwt>::new(&config()).unwrap()
}

#[test]
fn every_algorithm_authenticates_and_publishes_the_principal() {
    for (alg, kid) in [
        (Algorithm::RS256, "rsa"),
        (Algorithm::ES256, "ec"),
        (Algorithm::EdDSA, "ed"),
        (Algorithm::HS256, "hs"),
    ] {
        let mut h = harness();
        let t = token(alg, kid, claims(json!({})));
        let out = h.request(get("/orders").header("authorization", &format!("Bearer {t}")));
        assert!(
            out.local().is_none(),
            "{alg:?}: {:?}",
            out.local()
                .map(|l| String::from_utf8_lossy(&l.body).to_string())
        );
        assert_eq!(out.header("x-user"), Some("ann"), "{alg:?}");
        assert_eq!(out.header("x-user-email"), Some("ann@test"));
        assert_eq!(
            out.header("authorization"),
            None,
            "the token is not forwarded"
        );
        assert_eq!(
            h.attribute_value("request.auth.principal").as_deref(),
            Some("https://id.test//ann")
        );
        let published: Value =
            serde_json::from_str(&h.attribute_value("request.auth.claims").unwrap()).unwrap();
        assert_eq!(published["email"], "ann@test");
    }
}

#[test]
fn tokens_come_from_cookies_and_query_parameters_too() {
    let t = token(Algorithm::ES256, "ec", claims(json!({})));
    let mut h = harness();
    assert!(
        h.request(get("/x").header("cookie", &format!("theme=dark; session={t}")))
            .local()
            .is_none()
    );
    assert!(
        h.request(get(&format!("/x?a=1&access_token={t}")))
            .local()
            .is_none()
    );
}

fn refusal(h: &mut Harness<AuthnJwt>, path: &str, auth: Option<String>) -> (u16, String, String) {
    let mut req = get(path);
    if let Some(a) = auth {
        req = req.header("authorization", &a);
    }
    let out = h.request(req);
    let local = out.local().expect("refused").clone();
    let www = local
        .headers
        .iter()
        .find(|(k, _)| k == "www-authenticate")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    (
        local.status,
        www,
        String::from_utf8_lossy(&local.body).into_owned(),
    )
}

#[test]
fn bad_tokens_get_401_with_www_authenticate_naming_why() {
    let mut h = harness();
    let bearer = |t: String| Some(format!("Bearer {t}"));
    let (s, www, _) = refusal(&mut h, "/x", None);
    assert_eq!((s, www.as_str()), (401, "Bearer realm=\"weir\""));
    for (t, why) in [
        (
            token(Algorithm::RS256, "rsa", claims(json!({"exp": now() - 60}))),
            "the token has expired",
        ),
        (
            token(Algorithm::RS256, "rsa", claims(json!({"nbf": now() + 600}))),
            "not valid yet",
        ),
        (
            token(Algorithm::RS256, "rsa", claims(json!({"aud": "billing"}))),
            "audience is not accepted",
        ),
        (
            token(
                Algorithm::RS256,
                "rsa",
                claims(json!({"iss": "https://evil.test/"})),
            ),
            "issuer \"https://evil.test/\" is not trusted",
        ),
        (
            {
                let mut hd = Header::new(Algorithm::RS256);
                hd.kid = Some("rsa".into());
                encode(
                    &hd,
                    &claims(json!({})),
                    &EncodingKey::from_rsa_pem(RSA_OTHER.as_bytes()).unwrap(),
                )
                .unwrap()
            },
            "signature does not verify",
        ),
        ("not.a.token".to_string(), "malformed token"),
    ] {
        let (s, www, body) = refusal(&mut h, "/x", bearer(t));
        assert_eq!(s, 401);
        assert!(
            www.starts_with("Bearer realm=\"weir\", error=\"invalid_token\", error_description="),
            "{www}"
        );
        assert!(body.contains(why), "{why}: {body}");
    }
    // Within the leeway, an expired token still passes.
    let t = token(Algorithm::RS256, "rsa", claims(json!({"exp": now() - 2})));
    assert!(
        h.request(get("/x").header("authorization", &format!("Bearer {t}")))
            .local()
            .is_none()
    );
    assert_eq!(h.counter("rejected"), 6);
}

#[test]
fn per_path_requirements_and_api_keys() {
    let mut h = harness();
    assert!(h.request(get("/public/logo.png")).local().is_none(), "skip");
    assert!(
        h.request(get("/maybe/x")).local().is_none(),
        "optional, absent"
    );
    let (s, _, _) = refusal(&mut h, "/maybe/x", Some("Bearer garbage".into()));
    assert_eq!(s, 401, "optional, but present and invalid");
    // sha256("test") is in the config.
    let out = h.request(get("/orders").header("x-api-key", "test"));
    assert!(out.local().is_none());
    assert_eq!(out.header("x-api-key"), None, "the key is not forwarded");
    assert_eq!(
        h.attribute_value("request.auth.principal").as_deref(),
        Some("apikey/ci-bot")
    );
    let out = h.request(get("/orders").header("x-api-key", "wrong"));
    assert_eq!(out.local().unwrap().status, 401);
}

#[test]
fn bad_configurations_name_the_field() {
    let base: Value = serde_json::from_str(&config()).unwrap();
    let with = |path: &str, v: Value| {
        let mut c = base.clone();
        *c.pointer_mut(path).unwrap() = v;
        c.to_string()
    };
    for (config, want) in [
        (
            with("/providers/0/jwks", json!({"keys": []})),
            "providers[0].jwks: the JWKS holds no key",
        ),
        (
            with("/providers/0/jwks", json!("{not json")),
            "providers[0].jwks: not a JWKS",
        ),
        (
            with("/providers/0/leeway", json!("soon")),
            "providers[0].leeway: \"soon\" is not a duration",
        ),
        (
            with("/providers/0/from", json!([{"cookie": "a", "query": "b"}])),
            "providers[0].from[0]: give one of",
        ),
        (
            with("/api_keys/0/sha256", json!("abc")),
            "api_keys[0].sha256: 64 hex digits expected",
        ),
        (
            with("/providers/0/issuer", json!("")),
            "providers[0].issuer",
        ),
        (
            json!({"providers": [{"name": "r", "issuer": "i", "remote_jwks": {"cluster": "idp"}}]})
                .to_string(),
            "missing field `path`",
        ),
        (
            json!({"providers": [{"name": "r", "issuer": "i", "remote_jwks": {"cluster": "idp", "path": "jwks"}}]})
                .to_string(),
            "providers[0].remote_jwks.path: \"jwks\" must start with /",
        ),
        (
            json!({"providers": [{"name": "r", "issuer": "i", "remote_jwks": {"cluster": "idp", "path": "/k", "cache_duration": "soon"}}]})
                .to_string(),
            "providers[0].remote_jwks.cache_duration: \"soon\" is not a duration",
        ),
        (
            json!({"providers": [{"name": "r", "issuer": "i", "jwks": {"keys": []}, "remote_jwks": {"cluster": "idp", "path": "/k"}}]})
                .to_string(),
            "providers[0].remote_jwks: give jwks or remote_jwks, not both",
        ),
        (json!({}).to_string(), "configure at least one provider"),
    ] {
        let err = Harness::<AuthnJwt>::new(&config)
            .err()
            .unwrap_or_else(|| panic!("{config} was accepted"));
        assert!(err.contains(want), "{want}: {err}");
    }
}

#[test]
fn a_cached_token_is_still_checked_for_expiry() {
    let mut config: Value = serde_json::from_str(&config()).unwrap();
    config["providers"][0]["leeway"] = json!("0s");
    let mut h = Harness::<AuthnJwt>::new(&config.to_string()).unwrap();
    let t = token(Algorithm::RS256, "rsa", claims(json!({"exp": now() + 1})));
    let auth = format!("Bearer {t}");
    assert!(
        h.request(get("/x").header("authorization", &auth))
            .local()
            .is_none()
    );
    assert!(
        h.request(get("/x").header("authorization", &auth))
            .local()
            .is_none(),
        "from the cache"
    );
    assert_eq!(h.counter("accepted"), 2);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let out = h.request(get("/x").header("authorization", &auth));
    assert!(
        String::from_utf8_lossy(&out.local().expect("expired while cached").body)
            .contains("expired")
    );
    // A token signed by another key is refused, whatever is cached.
    let mut hd = Header::new(Algorithm::RS256);
    hd.kid = Some("rsa".into());
    let forged = encode(
        &hd,
        &claims(json!({})),
        &EncodingKey::from_rsa_pem(RSA_OTHER.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        h.request(get("/x").header("authorization", &format!("Bearer {forged}")))
            .local()
            .unwrap()
            .status,
        401
    );
}

fn remote_config(cache: &str) -> String {
    json!({
        "providers": [{
            "name": "idp",
            "issuer": "https://id.test/",
            "remote_jwks": {"cluster": "idp", "path": "/jwks", "cache_duration": cache, "timeout": "500ms"},
        }]
    })
    .to_string()
}

fn jwks_reply(keys: Vec<Value>) -> Result<weir_sdk::outbound::Reply, String> {
    Ok(weir_sdk::outbound::Reply {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: json!({ "keys": keys }).to_string().into_bytes(),
    })
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn remote_keys_are_fetched_once_then_kept_until_they_are_stale() {
    let mut h = Harness::<AuthnJwt>::new(&remote_config("1s")).unwrap();
    assert!(h.calls().is_empty(), "nothing is fetched at configure");
    h.reply(
        "idp",
        "/jwks",
        jwks_reply(vec![jwk(Algorithm::RS256, "rsa")]),
    );
    // Signed before the clock matters: signing is slow in a debug build.
    let t = token(Algorithm::RS256, "rsa", claims(json!({})));
    let t2 = token(Algorithm::RS256, "rsa", claims(json!({"sub": "bob"})));
    let t3 = token(Algorithm::RS256, "rsa", claims(json!({"sub": "cy"})));
    let out = h.request(get("/x").header("authorization", &bearer(&t)));
    assert!(out.local().is_none(), "{:?}", out.local());
    let calls = h.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (
            calls[0].cluster.as_str(),
            calls[0].method.as_str(),
            calls[0].path.as_str()
        ),
        ("idp", "GET", "/jwks")
    );
    assert_eq!(calls[0].timeout_ms, 500);
    // Another token: the keys are still fresh, nothing is fetched.
    assert!(
        h.request(get("/x").header("authorization", &bearer(&t2)))
            .local()
            .is_none()
    );
    assert_eq!(h.calls().len(), 1);
    assert_eq!(h.counter("jwks_fetched"), 1);
    // Stale after cache_duration: fetched again.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(
        h.request(get("/x").header("authorization", &bearer(&t3)))
            .local()
            .is_none()
    );
    assert_eq!(h.calls().len(), 2);
}

#[test]
fn a_failed_fetch_is_a_401_naming_it_and_old_keys_outlive_a_failed_refresh() {
    let mut h = Harness::<AuthnJwt>::new(&remote_config("1s")).unwrap();
    h.reply("idp", "/jwks", Err("connection refused".into()));
    let t = token(Algorithm::RS256, "rsa", claims(json!({})));
    let out = h.request(get("/x").header("authorization", &bearer(&t)));
    let local = out.local().expect("no keys: refused");
    assert_eq!(local.status, 401);
    let body = String::from_utf8_lossy(&local.body);
    assert!(
        body.contains("fetching the keys of provider \"idp\" from cluster \"idp\" /jwks failed: connection refused"),
        "{body}"
    );
    assert_eq!(h.counter("jwks_fetch_failed"), 1);
    // Not a fetch per request while it is down.
    let _ = h.request(get("/x").header("authorization", &bearer(&t)));
    assert_eq!(h.calls().len(), 1, "retried after a second, not at once");
    // A bad JWKS is a failure too.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    h.reply(
        "idp",
        "/jwks",
        Ok(weir_sdk::outbound::Reply {
            status: 200,
            headers: vec![],
            body: b"{}".to_vec(),
        }),
    );
    let out = h.request(get("/x").header("authorization", &bearer(&t)));
    assert!(
        String::from_utf8_lossy(&out.local().unwrap().body)
            .contains("the fetched JWKS: not a JWKS")
    );
    // It comes back: the keys are used; when it fails again later, they stay.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    h.reply(
        "idp",
        "/jwks",
        jwks_reply(vec![jwk(Algorithm::RS256, "rsa")]),
    );
    assert!(
        h.request(get("/x").header("authorization", &bearer(&t)))
            .local()
            .is_none()
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    h.reply(
        "idp",
        "/jwks",
        Ok(weir_sdk::outbound::Reply {
            status: 503,
            headers: vec![],
            body: vec![],
        }),
    );
    let t2 = token(Algorithm::RS256, "rsa", claims(json!({"sub": "bob"})));
    assert!(
        h.request(get("/x").header("authorization", &bearer(&t2)))
            .local()
            .is_none(),
        "stale keys keep serving"
    );
    assert!(
        h.logs()
            .iter()
            .any(|(_, l)| l
                .contains("the cluster answered 503; the keys fetched before stay in use")),
        "{:?}",
        h.logs()
    );
}

#[test]
fn a_token_with_an_unknown_kid_does_not_refetch_within_30_seconds() {
    let mut h = Harness::<AuthnJwt>::new(&remote_config("5m")).unwrap();
    h.reply(
        "idp",
        "/jwks",
        jwks_reply(vec![jwk(Algorithm::RS256, "rsa")]),
    );
    let t = token(Algorithm::RS256, "rsa", claims(json!({})));
    assert!(
        h.request(get("/x").header("authorization", &bearer(&t)))
            .local()
            .is_none()
    );
    let rotated = token(Algorithm::ES256, "new", claims(json!({})));
    let out = h.request(get("/x").header("authorization", &bearer(&rotated)));
    assert_eq!(out.local().unwrap().status, 401);
    assert_eq!(
        h.calls().len(),
        1,
        "fetched 0 s ago: no refetch for an unknown kid"
    );
}
