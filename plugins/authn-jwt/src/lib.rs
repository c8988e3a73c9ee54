//! authn-jwt: request authentication. Validates JWTs (RS256, ES256, EdDSA,
//! HS256) against each provider's JWKS, checks `exp` and `nbf` (with
//! leeway), `iss` and `aud`, or accepts API keys stored as SHA-256 hashes.
//! On success it forwards chosen claims as headers and publishes the
//! principal for the plugins after it: `request.auth.principal` (`iss/sub`,
//! as Istio, or `apikey/NAME`) and `request.auth.claims` (JSON). On failure
//! it answers 401 with a `WWW-Authenticate` header.
//!
//! ```toml
//! # plugins/20-authn-jwt.toml
//! [[config.providers]]
//! name = "corp"
//! issuer = "https://id.example.com/"
//! audiences = ["orders-api"]
//! jwks = '{"keys": [{"kty": "RSA", "kid": "k1", "n": "...", "e": "AQAB"}]}'
//! forward_claims = { sub = "x-user", email = "x-user-email" }
//!
//! [[config.rules]]
//! path_prefix = "/public/"
//! requirement = "skip"
//! ```
//!
//! Keys can also be fetched from a cluster of weir's config and refreshed:
//!
//! ```toml
//! [[config.providers]]
//! name = "idp"
//! issuer = "https://idp.example.com/"
//! remote_jwks = { cluster = "idp", path = "/.well-known/jwks.json", cache_duration = "5m" }
//! ```
//!
//! The first request that needs the keys fetches them (the request waits;
//! weir does not); they are kept for `cache_duration`, shared with the
//! plugin's other instances, then fetched again. A token whose `kid` is not
//! among the keys makes one early refetch (keys rotate), at most every 30 s.
//! When a refetch fails the old keys keep serving; with no keys at all the
//! request gets 401 naming the failure.
//!
//! Requirements per path (the first rule whose `path_prefix` matches; else
//! `default_requirement`): `required` (a valid JWT or API key, else 401),
//! `optional` (checked when present: an invalid one is still 401), `skip`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Digest;
use weir_sdk::{Action, Filter, LocalResponse, Request};

/// The configuration (the plugin's `[config]` table).
#[derive(Debug, Default, Deserialize, weir_sdk::JsonSchema)]
#[schemars(crate = "weir_sdk::schemars")]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Token issuers; a token goes to the provider whose `issuer` is its `iss`.
    pub providers: Vec<ProviderConfig>,
    /// Per-path requirements, first match wins.
    pub rules: Vec<RuleConfig>,
    /// The requirement where no rule matches: `required` (default), `optional` or `skip`.
    pub default_requirement: Option<Requirement>,
    /// API keys accepted instead of a JWT.
    pub api_keys: Vec<ApiKeyConfig>,
    /// The header API keys come in (default `x-api-key`).
    pub api_key_header: Option<String>,
    /// The realm named in `WWW-Authenticate` (default `weir`).
    pub realm: Option<String>,
}

/// One token issuer.
#[derive(Debug, Deserialize, weir_sdk::JsonSchema)]
#[schemars(crate = "weir_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Shown in logs and errors.
    pub name: String,
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// Accepted `aud` values (any one); empty accepts any audience.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The JWKS, as a JSON string or a table (`{ keys = [...] }`). RSA, EC P-256, Ed25519 and oct (HS256) keys.
    pub jwks: Option<Value>,
    /// A JWKS fetched from a cluster: `{ cluster, path, cache_duration = "5m", timeout = "2s" }`. Give this or `jwks`.
    pub remote_jwks: Option<RemoteJwks>,
    /// Where the token is: `[{ header = "authorization", prefix = "Bearer " }, { cookie = "session" }, { query = "access_token" }]`. Default: the Authorization bearer.
    #[serde(default)]
    pub from: Vec<TokenSource>,
    /// Clock skew allowed on `exp` and `nbf` (default `"60s"`).
    pub leeway: Option<String>,
    /// Claims copied into request headers: `{ claim = "header" }`.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Keep the token in the request sent upstream (default false: it is removed).
    #[serde(default)]
    pub forward_token: bool,
}

/// Where to fetch a provider's JWKS.
#[derive(Debug, Deserialize, weir_sdk::JsonSchema)]
#[schemars(crate = "weir_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct RemoteJwks {
    /// A cluster of weir's config that serves the JWKS.
    pub cluster: String,
    /// The JWKS's path on it, such as `/.well-known/jwks.json`.
    pub path: String,
    /// How long fetched keys are used before they are fetched again (default `"5m"`).
    pub cache_duration: Option<String>,
    /// How long a fetch may take (default `"2s"`).
    pub timeout: Option<String>,
}

/// Where a token may be found.
#[derive(Debug, Deserialize, weir_sdk::JsonSchema)]
#[schemars(crate = "weir_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct TokenSource {
    /// A header.
    pub header: Option<String>,
    /// With `header`: a prefix to strip (`"Bearer "`).
    pub prefix: Option<String>,
    /// A cookie.
    pub cookie: Option<String>,
    /// A query parameter.
    pub query: Option<String>,
}

/// A per-path requirement.
#[derive(Debug, Deserialize, weir_sdk::JsonSchema)]
#[schemars(crate = "weir_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Paths starting with this.
    pub path_prefix: String,
    /// What these paths need.
    pub requirement: Requirement,
}

/// How much authentication a path needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, weir_sdk::JsonSchema)]
#[schemars(crate = "weir_sdk::schemars")]
#[serde(rename_all = "lowercase")]
pub enum Requirement {
    /// A valid credential, else 401.
    Required,
    /// Checked when present.
    Optional,
    /// Not checked.
    Skip,
}

/// An API key, stored hashed.
#[derive(Debug, Deserialize, weir_sdk::JsonSchema)]
#[schemars(crate = "weir_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Who holds it: the principal becomes `apikey/NAME`.
    pub name: String,
    /// Lowercase hex SHA-256 of the key (`printf %s KEY | sha256sum`).
    pub sha256: String,
}

enum Source {
    Header(String, Option<String>),
    Cookie(String),
    Query(String),
}

type Key = (Option<String>, Algorithm, DecodingKey);

/// Where a provider's keys come from, and the keys in use.
struct Keys {
    list: Vec<Key>,
    remote: Option<Remote>,
}

struct Remote {
    cluster: String,
    path: String,
    cache_ms: u64,
    timeout_ms: u32,
    /// When the keys in use were fetched, and when a fetch was last tried
    /// (unix milliseconds: a whole-second clock would make a 1 s cache last
    /// anywhere between 0 and 1 s).
    fetched_at: Option<u64>,
    tried_at: Option<u64>,
}

/// A fetch is not tried again sooner than this after one failed, nor (for
/// an unknown `kid`) sooner than this after the last fetch.
const REFETCH_MS: u64 = 30_000;
/// After a failed fetch with no keys at all, the next is tried after this.
const RETRY_MS: u64 = 1000;

struct Provider {
    name: String,
    issuer: String,
    audiences: Vec<String>,
    keys: RefCell<Keys>,
    from: Vec<Source>,
    leeway: u64,
    forward_claims: Vec<(String, String)>,
    forward_token: bool,
}

/// Verified tokens kept (keyed by the whole token) so that a client's next requests with the
/// same token skip the signature check; `exp` and `nbf` are checked on every use.
const CACHE_SIZE: usize = 1024;

struct Verified {
    provider: usize,
    claims: Map<String, Value>,
    /// What is published for the plugins after this one: `iss/sub`, and
    /// the claims as JSON (made once per token, not per request).
    principal: String,
    claims_json: String,
    exp: Option<i64>,
    nbf: Option<i64>,
}

/// The filter.
pub struct AuthnJwt {
    /// Keyed by the token itself: a hit compares the whole token, so no
    /// hash collision can pass one token for another.
    cache: RefCell<HashMap<Box<str>, Rc<Verified>>>,
    providers: Vec<Provider>,
    rules: Vec<(String, Requirement)>,
    default: Requirement,
    api_keys: Vec<(String, [u8; 32])>,
    api_key_header: String,
    realm: String,
}

fn key_algorithm(params: &AlgorithmParameters) -> Option<Algorithm> {
    match params {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => {
            (ec.curve == jsonwebtoken::jwk::EllipticCurve::P256).then_some(Algorithm::ES256)
        }
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        AlgorithmParameters::OctetKey(_) => Some(Algorithm::HS256),
    }
}

fn parse_provider(i: usize, p: ProviderConfig) -> Result<Provider, String> {
    let at = |f: &str| format!("providers[{i}].{f}");
    if p.name.is_empty() {
        return Err(format!("{}: a provider needs a name", at("name")));
    }
    if p.issuer.is_empty() {
        return Err(format!(
            "{}: the iss its tokens carry is required",
            at("issuer")
        ));
    }
    let keys = match (p.jwks, p.remote_jwks) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{}: give jwks or remote_jwks, not both",
                at("remote_jwks")
            ));
        }
        (None, None) => {
            return Err(format!(
                "{}: list the provider's keys (a JWKS), or fetch them with remote_jwks",
                at("jwks")
            ));
        }
        (Some(jwks), None) => Keys {
            list: parse_jwks(&jwks, &at("jwks"))?,
            remote: None,
        },
        (None, Some(r)) => {
            let secs = |v: &Option<String>, default: u64, field: &str| match v {
                None => Ok(default),
                Some(t) => humantime::parse_duration(t)
                    .map(|d| d.as_millis() as u64)
                    .map_err(|e| {
                        format!(
                            "{}: {t:?} is not a duration ({e})",
                            at(&format!("remote_jwks.{field}"))
                        )
                    }),
            };
            if r.cluster.is_empty() {
                return Err(format!(
                    "{}: name the cluster that serves the JWKS",
                    at("remote_jwks.cluster")
                ));
            }
            if !r.path.starts_with('/') {
                return Err(format!(
                    "{}: {:?} must start with /",
                    at("remote_jwks.path"),
                    r.path
                ));
            }
            Keys {
                list: Vec::new(),
                remote: Some(Remote {
                    cache_ms: secs(&r.cache_duration, 300_000, "cache_duration")?.max(1000),
                    timeout_ms: secs(&r.timeout, 2000, "timeout")?.clamp(1, u64::from(u32::MAX))
                        as u32,
                    cluster: r.cluster,
                    path: r.path,
                    fetched_at: None,
                    tried_at: None,
                }),
            }
        }
    };
    let mut from = Vec::new();
    for (j, s) in p.from.iter().enumerate() {
        from.push(match (&s.header, &s.cookie, &s.query) {
            (Some(h), None, None) => Source::Header(h.to_ascii_lowercase(), s.prefix.clone()),
            (None, Some(c), None) if s.prefix.is_none() => Source::Cookie(c.clone()),
            (None, None, Some(q)) if s.prefix.is_none() => Source::Query(q.clone()),
            _ => {
                return Err(format!(
                    "{}: give one of header (with an optional prefix), cookie or query",
                    at(&format!("from[{j}]"))
                ));
            }
        });
    }
    if from.is_empty() {
        from.push(Source::Header(
            "authorization".into(),
            Some("Bearer ".into()),
        ));
    }
    let leeway = match &p.leeway {
        None => 60,
        Some(l) => humantime::parse_duration(l)
            .map_err(|e| format!("{}: {l:?} is not a duration ({e})", at("leeway")))?
            .as_secs(),
    };
    Ok(Provider {
        name: p.name,
        issuer: p.issuer,
        audiences: p.audiences,
        keys: RefCell::new(keys),
        from,
        leeway,
        forward_claims: p.forward_claims.into_iter().collect(),
        forward_token: p.forward_token,
    })
}

/// The keys of a JWKS (a JSON string or a table); the error names `at`.
fn parse_jwks(jwks: &Value, at: &str) -> Result<Vec<Key>, String> {
    let jwks: JwkSet = match jwks {
        Value::String(s) => serde_json::from_str(s),
        v => serde_json::from_value(v.clone()),
    }
    .map_err(|e| format!("{at}: not a JWKS ({{\"keys\": [...]}}): {e}"))?;
    if jwks.keys.is_empty() {
        return Err(format!("{at}: the JWKS holds no key"));
    }
    let mut keys = Vec::new();
    for (j, k) in jwks.keys.iter().enumerate() {
        let alg = key_algorithm(&k.algorithm).ok_or_else(|| {
            format!("{at}.keys[{j}]: only RSA, EC P-256, Ed25519 and oct keys are supported")
        })?;
        let key = DecodingKey::from_jwk(k).map_err(|e| format!("{at}.keys[{j}]: {e}"))?;
        keys.push((k.common.key_id.clone(), alg, key));
    }
    Ok(keys)
}

impl Provider {
    /// Makes sure remote keys are there and fresh (`kid_missing`: the token
    /// names a key not among them). The error says why there are none.
    fn refresh(&self, kid_missing: bool) -> Result<(), String> {
        let mut keys = self.keys.borrow_mut();
        let have = !keys.list.is_empty();
        let Some(r) = keys.remote.as_mut() else {
            return Ok(());
        };
        let now = weir_sdk::shared::now_nanos() / 1_000_000;
        let age = r.fetched_at.map(|t| now.saturating_sub(t));
        let stale = age.is_none_or(|a| a >= r.cache_ms);
        // A missing kid means rotation only when this instance has keys: one
        // that has none yet first looks for the keys another instance fetched.
        let rotated = have && kid_missing && age.is_none_or(|a| a >= REFETCH_MS);
        if !stale && !rotated {
            return Ok(());
        }
        let backoff = if have { REFETCH_MS } else { RETRY_MS };
        if r.tried_at.is_some_and(|t| now.saturating_sub(t) < backoff) && r.tried_at != r.fetched_at
        {
            return if have {
                Ok(())
            } else {
                Err(format!(
                    "the keys of provider {:?} could not be fetched; the next try is within {RETRY_MS} ms",
                    self.name
                ))
            };
        }
        // Another instance of this plugin may have fetched them already.
        let shared_key = format!("authn-jwt/jwks/{}", self.name);
        if !rotated
            && let Some((value, _)) = weir_sdk::shared::get(&shared_key)
            && let Some((at, body)) = std::str::from_utf8(&value)
                .ok()
                .and_then(|v| v.split_once('\n'))
            && let Ok(at) = at.parse::<u64>()
            && now.saturating_sub(at) < r.cache_ms
            && let Ok(list) = parse_jwks(&Value::String(body.to_string()), "shared")
        {
            r.fetched_at = Some(at);
            r.tried_at = Some(at);
            keys.list = list;
            return Ok(());
        }
        r.tried_at = Some(now);
        let fetched = weir_sdk::outbound::Call::get(&r.cluster, &r.path)
            .header("accept", "application/json")
            .timeout_ms(r.timeout_ms)
            .send()
            .and_then(|reply| match reply.status {
                200 => String::from_utf8(reply.body).map_err(|_| "the JWKS is not UTF-8".into()),
                s => Err(format!("the cluster answered {s}")),
            })
            .and_then(|body| {
                let list = parse_jwks(&Value::String(body.clone()), "the fetched JWKS")?;
                Ok((body, list))
            });
        match fetched {
            Ok((body, list)) => {
                r.fetched_at = Some(now);
                r.tried_at = Some(now);
                let _ =
                    weir_sdk::shared::set(&shared_key, format!("{now}\n{body}").as_bytes(), None);
                weir_sdk::metrics::counter_add("jwks_fetched", 1);
                keys.list = list;
                Ok(())
            }
            Err(e) => {
                weir_sdk::metrics::counter_add("jwks_fetch_failed", 1);
                let why = format!(
                    "fetching the keys of provider {:?} from cluster {:?} {} failed: {e}",
                    self.name, r.cluster, r.path
                );
                if have {
                    weir_sdk::log::warn(&format!("{why}; the keys fetched before stay in use"));
                    Ok(())
                } else {
                    weir_sdk::log::warn(&why);
                    Err(why)
                }
            }
        }
    }
}

impl Filter for AuthnJwt {
    type Config = Config;
    type State = ();

    fn new(config: Config) -> Result<Self, String> {
        let providers = config
            .providers
            .into_iter()
            .enumerate()
            .map(|(i, p)| parse_provider(i, p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut api_keys = Vec::new();
        for (i, k) in config.api_keys.into_iter().enumerate() {
            let mut hash = [0u8; 32];
            let ok = k.sha256.len() == 64
                && (0..32).all(|b| {
                    u8::from_str_radix(&k.sha256[b * 2..b * 2 + 2], 16)
                        .map(|v| hash[b] = v)
                        .is_ok()
                });
            if !ok {
                return Err(format!(
                    "api_keys[{i}].sha256: 64 hex digits expected (printf %s KEY | sha256sum); the key itself is never stored"
                ));
            }
            api_keys.push((k.name, hash));
        }
        if providers.is_empty() && api_keys.is_empty() {
            return Err("providers: configure at least one provider or one of api_keys".into());
        }
        Ok(AuthnJwt {
            cache: RefCell::new(HashMap::new()),
            providers,
            rules: config
                .rules
                .into_iter()
                .map(|r| (r.path_prefix, r.requirement))
                .collect(),
            default: config.default_requirement.unwrap_or(Requirement::Required),
            api_keys,
            api_key_header: config
                .api_key_header
                .unwrap_or_else(|| "x-api-key".into())
                .to_ascii_lowercase(),
            realm: config.realm.unwrap_or_else(|| "weir".into()),
        })
    }

    fn on_request_headers(&self, _: &mut (), req: &mut Request) -> Action {
        let path = req.path();
        let requirement = self
            .rules
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
            .map_or(self.default, |(_, r)| *r);
        if requirement == Requirement::Skip {
            return Action::Continue;
        }
        // An API key, when one is sent.
        if !self.api_keys.is_empty()
            && let Some(key) = req.header(&self.api_key_header)
        {
            let hash: [u8; 32] = sha2::Sha256::digest(key.as_bytes()).into();
            return match self
                .api_keys
                .iter()
                .find(|(_, h)| constant_time_eq(h, &hash))
            {
                Some((name, _)) => {
                    req.remove_header(&self.api_key_header);
                    let _ = req.set_attribute("request.auth.principal", &format!("apikey/{name}"));
                    let _ = req.set_attribute(
                        "request.auth.claims",
                        &format!("{{\"sub\":{}}}", Value::String(name.clone())),
                    );
                    weir_sdk::metrics::counter_add("api_key_accepted", 1);
                    Action::Continue
                }
                None => self.refuse("invalid_token", "the API key is not known"),
            };
        }
        // A JWT, from the first source of any provider that holds one.
        let found = self
            .providers
            .iter()
            .find_map(|p| p.from.iter().find_map(|s| token(req, s).map(|t| (t, s))));
        let Some((token, source)) = found else {
            return match requirement {
                Requirement::Optional => Action::Continue,
                _ => {
                    weir_sdk::metrics::counter_add("missing", 1);
                    self.challenge()
                }
            };
        };
        match self.verify(&token) {
            Ok((provider, verified)) => {
                let _ = req.set_attribute("request.auth.principal", &verified.principal);
                let _ = req.set_attribute("request.auth.claims", &verified.claims_json);
                for (claim, header) in &provider.forward_claims {
                    match verified.claims.get(claim) {
                        Some(Value::String(s)) => {
                            let _ = req.set_header(header, s);
                        }
                        Some(Value::Null) | None => req.remove_header(header),
                        Some(other) => {
                            let _ = req.set_header(header, &other.to_string());
                        }
                    }
                }
                if !provider.forward_token
                    && let Source::Header(h, _) = source
                {
                    req.remove_header(h);
                }
                weir_sdk::metrics::counter_add("accepted", 1);
                Action::Continue
            }
            Err(why) => {
                weir_sdk::metrics::counter_add("rejected", 1);
                weir_sdk::log::info(&format!("JWT refused for {path}: {why}"));
                self.refuse("invalid_token", &why)
            }
        }
    }
}

impl AuthnJwt {
    /// Verifies `token`, from the cache of verified tokens when it is there
    /// (re-checking its times), else by its signature.
    fn verify(&self, token: &str) -> Result<(&Provider, Rc<Verified>), String> {
        if let Some(v) = self.cache.borrow().get(token) {
            let p = &self.providers[v.provider];
            let now = jsonwebtoken::get_current_timestamp() as i64;
            let leeway = p.leeway as i64;
            if v.exp.is_some_and(|e| now > e + leeway) {
                return Err("the token has expired".into());
            }
            if v.nbf.is_some_and(|n| now + leeway < n) {
                return Err("the token is not valid yet (nbf)".into());
            }
            return Ok((p, v.clone()));
        }
        let (p, claims) = self.verify_signature(token)?;
        let index = self
            .providers
            .iter()
            .position(|x| std::ptr::eq(x, p))
            .expect("the provider is one of ours");
        let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
        let verified = Rc::new(Verified {
            provider: index,
            exp: claims.get("exp").and_then(Value::as_i64),
            nbf: claims.get("nbf").and_then(Value::as_i64),
            principal: format!("{}/{sub}", p.issuer),
            claims_json: Value::Object(claims.clone()).to_string(),
            claims,
        });
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= CACHE_SIZE {
            cache.clear();
        }
        cache.insert(token.into(), verified.clone());
        Ok((p, verified))
    }

    fn verify_signature(&self, token: &str) -> Result<(&Provider, Map<String, Value>), String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA | Algorithm::HS256
        ) {
            return Err(format!(
                "algorithm {:?} is not accepted (RS256, ES256, EdDSA, HS256)",
                header.alg
            ));
        }
        let unverified = jsonwebtoken::dangerous::insecure_decode::<Map<String, Value>>(token)
            .map_err(|e| format!("malformed token: {e}"))?;
        let iss = unverified
            .claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or("");
        let provider = self
            .providers
            .iter()
            .find(|p| p.issuer == iss)
            .ok_or_else(|| format!("issuer {iss:?} is not trusted"))?;
        let known = |p: &Provider| {
            p.keys.borrow().list.iter().any(|(kid, alg, _)| {
                *alg == header.alg && (header.kid.is_none() || kid.is_none() || *kid == header.kid)
            })
        };
        let fits = known(provider);
        provider.refresh(!fits)?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = provider.leeway;
        validation.validate_nbf = true;
        validation.set_issuer(&[&provider.issuer]);
        if provider.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&provider.audiences);
        }
        let keys = provider.keys.borrow();
        let candidates = keys.list.iter().filter(|(kid, alg, _)| {
            *alg == header.alg && (header.kid.is_none() || kid.is_none() || *kid == header.kid)
        });
        let mut last = format!(
            "no key of provider {:?} fits (kid {:?}, {:?})",
            provider.name, header.kid, header.alg
        );
        for (_, _, key) in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation) {
                Ok(data) => return Ok((provider, data.claims)),
                Err(e) => last = describe(e.kind()),
            }
        }
        Err(last)
    }

    fn challenge(&self) -> Action {
        LocalResponse::new(401)
            .header(
                "www-authenticate",
                &format!("Bearer realm=\"{}\"", self.realm),
            )
            .header("content-type", "text/plain")
            .body("authentication required\n")
            .into_action()
    }

    fn refuse(&self, error: &str, why: &str) -> Action {
        let desc = why.replace(['"', '\\'], "'");
        LocalResponse::new(401)
            .header(
                "www-authenticate",
                &format!(
                    "Bearer realm=\"{}\", error=\"{error}\", error_description=\"{desc}\"",
                    self.realm
                ),
            )
            .header("content-type", "text/plain")
            .body(format!("unauthorized: {why}\n"))
            .into_action()
    }
}

fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "the token has expired".into(),
        K::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        K::InvalidSignature => "the signature does not verify".into(),
        K::InvalidAudience => "the audience is not accepted".into(),
        K::InvalidIssuer => "the issuer is not accepted".into(),
        K::MissingRequiredClaim(c) => format!("the token has no {c} claim"),
        other => format!("invalid token: {other:?}"),
    }
}

fn token(req: &Request, source: &Source) -> Option<String> {
    match source {
        Source::Header(h, prefix) => {
            let v = req.header(h)?;
            match prefix {
                Some(p) => {
                    let (head, rest) = v.split_at_checked(p.len())?;
                    head.eq_ignore_ascii_case(p)
                        .then(|| rest.trim().to_string())
                }
                None => Some(v.trim().to_string()),
            }
        }
        Source::Cookie(name) => req.header("cookie")?.split(';').find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then(|| v.to_string())
        }),
        Source::Query(name) => {
            let path = req.path();
            let (_, query) = path.split_once('?')?;
            query.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == name).then(|| v.to_string())
            })
        }
    }
    .filter(|t| !t.is_empty())
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

weir_sdk::export_filter!(AuthnJwt);

#[cfg(test)]
mod tests;
