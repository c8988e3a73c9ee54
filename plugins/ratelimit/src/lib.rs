//! ratelimit: the quota adapter. Each limit builds a descriptor from the
//! request (client IP, a header such as an API key, the JWT subject, the
//! route, ...) and takes a token from that descriptor's bucket in weir's
//! quota service: `local` (exact across one weir's workers) or `redis` (one
//! budget across every weir sharing it), chosen in weir's `[quota]` table.
//! A request over any of its limits answers 429 with `Retry-After` and the
//! `RateLimit-*` headers; allowed responses carry `RateLimit-*` too.
//!
//! ```toml
//! # plugins/40-ratelimit.toml
//! [[config.limits]]
//! name = "per-client"
//! descriptor = ["source.ip"]
//! tokens = 100
//! period = "1m"
//!
//! [[config.limits]]
//! name = "per-api-key"
//! descriptor = ["header:x-api-key"]
//! tokens = 1000
//! period = "1h"
//! ```
//!
//! Descriptor parts: `source.ip`, `header:NAME`, `attribute:NAME` (such as
//! `attribute:request.auth.principal`, the JWT subject), `route`, `method`,
//! `host`, `path`, or `literal:TEXT`. A limit whose descriptor cannot be built
//! for a request (the header is missing) does not apply to it.

use serde::Deserialize;
use weir_sdk::quota::{Decision, Limit};
use weir_sdk::{Action, Filter, LocalResponse, Request, Response};

/// The configuration (the plugin's `[config]` table).
#[derive(Debug, Default, Deserialize, weir_sdk::JsonSchema)]
#[schemars(crate = "weir_sdk::schemars")]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The limits; a request must be within every limit that applies to it.
    pub limits: Vec<LimitConfig>,
    /// Add `RateLimit-Limit`, `-Remaining` and `-Reset` to allowed responses (default true).
    pub response_headers: Option<bool>,
}

/// One limit.
#[derive(Debug, Deserialize, weir_sdk::JsonSchema)]
#[schemars(crate = "weir_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Names the limit in the 429 body, the log and the bucket key.
    pub name: String,
    /// What the bucket is per: a list of descriptor parts (see the crate docs).
    pub descriptor: Vec<String>,
    /// Requests allowed per period (also the burst).
    pub tokens: u32,
    /// The period: `"1s"`, `"1m"`, `"1h"`, `"500ms"`.
    pub period: String,
    /// Only requests whose path starts with one of these (default: all).
    #[serde(default)]
    pub path_prefixes: Vec<String>,
    /// Only these methods (default: all).
    #[serde(default)]
    pub methods: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    SourceIp,
    Header(String),
    Attribute(String),
    Route,
    Method,
    Host,
    Path,
    Literal(String),
}

struct Rule {
    name: String,
    parts: Vec<Part>,
    limit: Limit,
    path_prefixes: Vec<String>,
    methods: Vec<String>,
}

/// The filter.
pub struct RateLimit {
    rules: Vec<Rule>,
    response_headers: bool,
}

/// The tightest allowed decision of a request, for its response headers.
#[derive(Default)]
pub struct Seen(Option<Decision>);

fn parse_part(p: &str) -> Result<Part, String> {
    Ok(match p {
        "source.ip" => Part::SourceIp,
        "route" => Part::Route,
        "method" => Part::Method,
        "host" => Part::Host,
        "path" => Part::Path,
        _ => match p.split_once(':') {
            Some(("header", h)) if !h.is_empty() => Part::Header(h.to_ascii_lowercase()),
            Some(("attribute", a)) if !a.is_empty() => Part::Attribute(a.to_string()),
            Some(("literal", l)) => Part::Literal(l.to_string()),
            _ => {
                return Err(format!(
                    "{p:?} is not a descriptor part; use source.ip, header:NAME, attribute:NAME, route, method, host, path or literal:TEXT"
                ));
            }
        },
    })
}

impl Filter for RateLimit {
    type Config = Config;
    type State = Seen;

    fn new(config: Config) -> Result<Self, String> {
        let mut rules = Vec::new();
        for (i, l) in config.limits.into_iter().enumerate() {
            let at = |f: &str| format!("limits[{i}].{f}");
            if l.name.is_empty() || l.name.contains(['|', ':']) {
                return Err(format!(
                    "{}: a limit needs a name without '|' or ':'",
                    at("name")
                ));
            }
            if l.descriptor.is_empty() {
                return Err(format!(
                    "{}: list at least one part, such as \"source.ip\"",
                    at("descriptor")
                ));
            }
            let parts = l
                .descriptor
                .iter()
                .enumerate()
                .map(|(j, p)| {
                    parse_part(p).map_err(|e| format!("limits[{i}].descriptor[{j}]: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if l.tokens == 0 {
                return Err(format!("{}: must be at least 1", at("tokens")));
            }
            let period = humantime::parse_duration(&l.period).map_err(|e| {
                format!(
                    "{}: {:?} is not a duration ({e}); write \"1s\", \"1m\" or \"1h\"",
                    at("period"),
                    l.period
                )
            })?;
            let period_ms = u32::try_from(period.as_millis())
                .ok()
                .filter(|ms| *ms > 0)
                .ok_or_else(|| format!("{}: must be between 1ms and 49 days", at("period")))?;
            rules.push(Rule {
                name: l.name,
                parts,
                limit: Limit {
                    tokens: l.tokens,
                    period_ms,
                },
                path_prefixes: l.path_prefixes,
                methods: l.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
            });
        }
        Ok(RateLimit {
            rules,
            response_headers: config.response_headers.unwrap_or(true),
        })
    }

    fn on_request_headers(&self, seen: &mut Seen, req: &mut Request) -> Action {
        let path = req.path();
        let path = path.split('?').next().unwrap_or("/").to_string();
        let method = req.method();
        for rule in &self.rules {
            if !rule.path_prefixes.is_empty()
                && !rule
                    .path_prefixes
                    .iter()
                    .any(|p| path.starts_with(p.as_str()))
            {
                continue;
            }
            if !rule.methods.is_empty() && !rule.methods.contains(&method) {
                continue;
            }
            let Some(descriptor) = descriptor(&rule.parts, req, &path, &method) else {
                continue;
            };
            let key = format!("ratelimit:{}:{descriptor}", rule.name);
            let d = match weir_sdk::quota::take(&key, 1, rule.limit) {
                Ok(d) => d,
                Err(e) => {
                    weir_sdk::log::error(&format!("limit {:?}: {e}", rule.name));
                    continue;
                }
            };
            if !d.allowed {
                weir_sdk::metrics::counter_add("limited", 1);
                weir_sdk::log::info(&format!("limit {:?} exceeded for {descriptor}", rule.name));
                let retry = d.retry_after_ms.div_ceil(1000).max(1);
                return LocalResponse::new(429)
                    .header("content-type", "text/plain")
                    .header("retry-after", &retry.to_string())
                    .header("ratelimit-limit", &d.limit.to_string())
                    .header("ratelimit-remaining", "0")
                    .header("ratelimit-reset", &retry.to_string())
                    .header(
                        "ratelimit-policy",
                        &format!(
                            "{};w={}",
                            rule.limit.tokens,
                            rule.limit.period_ms.div_ceil(1000)
                        ),
                    )
                    .body(format!(
                        "rate limit \"{}\" exceeded: retry in {retry}s\n",
                        rule.name
                    ))
                    .into_action();
            }
            if seen.0.is_none_or(|s| d.remaining < s.remaining) {
                seen.0 = Some(d);
            }
        }
        weir_sdk::metrics::counter_add("allowed", 1);
        Action::Continue
    }

    fn on_response_headers(&self, seen: &mut Seen, resp: &mut Response) -> Action {
        if self.response_headers
            && let Some(d) = seen.0
        {
            let _ = resp.set_header("ratelimit-limit", &d.limit.to_string());
            let _ = resp.set_header("ratelimit-remaining", &d.remaining.to_string());
            let _ = resp.set_header("ratelimit-reset", &d.reset_ms.div_ceil(1000).to_string());
        }
        Action::Continue
    }
}

fn descriptor(parts: &[Part], req: &Request, path: &str, method: &str) -> Option<String> {
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        out.push(match p {
            Part::SourceIp => {
                let a = req.attribute("source.address")?;
                // "ip:port" or "[v6]:port"
                match a.rsplit_once(':') {
                    Some((ip, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
                        ip.trim_matches(['[', ']']).to_string()
                    }
                    _ => a,
                }
            }
            Part::Header(h) => req.header(h)?,
            Part::Attribute(a) => req.attribute(a).filter(|v| !v.is_empty())?,
            Part::Route => req.attribute("route_name")?,
            Part::Method => method.to_string(),
            Part::Host => req.header(":authority").or_else(|| req.header("host"))?,
            Part::Path => path.to_string(),
            Part::Literal(l) => l.clone(),
        });
    }
    Some(out.join("|"))
}

weir_sdk::export_filter!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::{Harness, get, response};

    const CONFIG: &str = r#"{
        "limits": [
            {"name": "per-client", "descriptor": ["source.ip"], "tokens": 3, "period": "1h"},
            {"name": "per-key", "descriptor": ["header:x-api-key"], "tokens": 1, "period": "1h", "path_prefixes": ["/api/"]}
        ]
    }"#;

    #[test]
    fn a_client_over_its_limit_gets_429_with_retry_after_and_ratelimit_headers() {
        let mut h = Harness::<RateLimit>::new(CONFIG).unwrap();
        h.attribute("source.address", "10.0.0.1:4000");
        for i in 0..3 {
            let (req, resp) = h.exchange(get("/"), response(200, "ok"));
            assert!(req.local().is_none(), "request {i} is within the limit");
            let resp = resp.unwrap();
            assert_eq!(resp.header("ratelimit-limit"), Some("3"));
            assert_eq!(
                resp.header("ratelimit-remaining"),
                Some(&*(2 - i).to_string())
            );
        }
        let out = h.request(get("/"));
        let local = out.local().expect("the fourth is limited");
        assert_eq!(local.status, 429);
        let header = |n: &str| {
            local
                .headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        let retry: u64 = header("retry-after").unwrap().parse().unwrap();
        assert!((1..=1200).contains(&retry), "{retry}");
        assert_eq!(header("ratelimit-remaining"), Some("0"));
        assert_eq!(header("ratelimit-policy"), Some("3;w=3600"));
        assert_eq!(
            local.body,
            format!("rate limit \"per-client\" exceeded: retry in {retry}s\n").as_bytes()
        );
        assert_eq!(h.counter("limited"), 1);
        // Another client has its own bucket.
        h.attribute("source.address", "10.0.0.2:4000");
        assert!(h.request(get("/")).local().is_none());
    }

    #[test]
    fn limits_apply_only_where_their_descriptor_and_filters_do() {
        let mut h = Harness::<RateLimit>::new(CONFIG).unwrap();
        h.attribute("source.address", "[::1]:4000");
        assert!(
            h.request(get("/api/x").header("x-api-key", "k1"))
                .local()
                .is_none()
        );
        let limited = h.request(get("/api/x").header("x-api-key", "k1"));
        assert!(
            limited
                .local()
                .unwrap()
                .body
                .starts_with(b"rate limit \"per-key\"")
        );
        // per-key does not apply off /api/; per-client has one token of its three left
        // (a limited request still spent its per-client token, as in Envoy).
        assert!(
            h.request(get("/other").header("x-api-key", "k1"))
                .local()
                .is_none()
        );
        let out = h.request(get("/other"));
        assert!(
            out.local()
                .unwrap()
                .body
                .starts_with(b"rate limit \"per-client\"")
        );
    }

    #[test]
    fn bad_configurations_name_the_field() {
        for (config, want) in [
            (
                r#"{"limits": [{"name": "a", "descriptor": ["cookie:x"], "tokens": 1, "period": "1s"}]}"#,
                "limits[0].descriptor[0]: \"cookie:x\" is not a descriptor part",
            ),
            (
                r#"{"limits": [{"name": "a", "descriptor": ["route"], "tokens": 0, "period": "1s"}]}"#,
                "limits[0].tokens: must be at least 1",
            ),
            (
                r#"{"limits": [{"name": "a", "descriptor": ["route"], "tokens": 1, "period": "soon"}]}"#,
                "limits[0].period: \"soon\" is not a duration",
            ),
            (
                r#"{"limits": [{"name": "a", "descriptor": [], "tokens": 1, "period": "1s"}]}"#,
                "limits[0].descriptor: list at least one part",
            ),
            (
                r#"{"limits": [{"name": "a", "descriptor": ["route"], "tokens": 1}]}"#,
                "missing field `period`",
            ),
        ] {
            let err = Harness::<RateLimit>::new(config)
                .err()
                .unwrap_or_else(|| panic!("{config} was accepted"));
            assert!(err.contains(want), "{config}: {err}");
        }
    }
}
