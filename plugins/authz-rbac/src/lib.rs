//! authz-rbac: ordered allow and deny policies (Istio's AuthorizationPolicy,
//! Envoy's RBAC filter) over a request's attributes. The first policy whose
//! conditions all hold decides; when none does, `default` decides. A denial
//! answers 403 naming the policy; `dry_run` only logs and counts decisions.
//!
//! ```toml
//! # plugins/30-authz-rbac.toml
//! [config]
//! default = "deny"
//!
//! [[config.policies]]
//! name = "health-checks"
//! action = "allow"
//! paths = ["/healthz"]
//!
//! [[config.policies]]
//! name = "orders-from-web"
//! action = "allow"
//! principals = ["spiffe://cluster.local/ns/default/sa/web"]
//! methods = ["GET", "POST"]
//! path_prefixes = ["/orders/"]
//! ```
//!
//! Within a policy every condition given must hold; within one condition's
//! list, any entry may match. Principals come from `source.principal` (the
//! mTLS peer's SPIFFE ID) or `request.auth.principal` (set by an
//! authentication plugin), claims from `request.auth.claims` (a JSON object).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use globset::{GlobBuilder, GlobMatcher};
use ipnet::IpNet;
use serde::Deserialize;
use weir_sdk::{Action, Filter, LocalResponse, Request};

/// The configuration (the plugin's `[config]` table).
#[derive(Debug, Default, Deserialize, weir_sdk::JsonSchema)]
#[schemars(crate = "weir_sdk::schemars")]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The decision when no policy matches: `allow` or `deny` (default `deny`).
    pub default: Decision,
    /// Log and count decisions without enforcing them.
    pub dry_run: bool,
    /// The policies, tried in order; the first that matches decides.
    pub policies: Vec<PolicyConfig>,
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, weir_sdk::JsonSchema)]
#[schemars(crate = "weir_sdk::schemars")]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Let the request through.
    Allow,
    /// Answer 403.
    #[default]
    Deny,
}

/// One policy: a name, an action, and conditions that must all hold.
#[derive(Debug, Deserialize, weir_sdk::JsonSchema)]
#[schemars(crate = "weir_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Shown in the 403 body, the log and the metrics.
    pub name: String,
    /// What a match decides.
    pub action: Decision,
    /// SPIFFE IDs or JWT subjects: exact, a prefix ending in `/*`, or `*` (any authenticated caller).
    #[serde(default)]
    pub principals: Vec<String>,
    /// Required JWT claims: a claim equals the value, or (for a list claim) contains it.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// Client addresses: IPs or CIDRs (`10.0.0.0/8`).
    #[serde(default)]
    pub source_ips: Vec<String>,
    /// Methods (`GET`, ...).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Hosts: exact or `*.example.com` (the port is ignored).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Exact paths (the query is ignored).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Path prefixes.
    #[serde(default)]
    pub path_prefixes: Vec<String>,
    /// Path globs: `*` within one segment, `**` across segments (`/users/*/orders`).
    #[serde(default)]
    pub path_globs: Vec<String>,
    /// Header conditions.
    #[serde(default)]
    pub headers: Vec<HeaderCondition>,
}

/// A header condition: `exact`, `prefix`, or `present` (true: must be there, false: must not).
#[derive(Debug, Deserialize, weir_sdk::JsonSchema)]
#[schemars(crate = "weir_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct HeaderCondition {
    /// The header name.
    pub name: String,
    /// The value equals this.
    pub exact: Option<String>,
    /// The value starts with this.
    pub prefix: Option<String>,
    /// The header is present (true) or absent (false).
    pub present: Option<bool>,
}

struct Policy {
    name: String,
    action: Decision,
    principals: Vec<String>,
    claims: Vec<(String, String)>,
    source_ips: Vec<IpNet>,
    methods: Vec<String>,
    hosts: Vec<String>,
    paths: Vec<String>,
    path_prefixes: Vec<String>,
    path_globs: Vec<GlobMatcher>,
    headers: Vec<HeaderCondition>,
}

/// The filter.
pub struct AuthzRbac {
    default: Decision,
    dry_run: bool,
    policies: Vec<Policy>,
}

/// What the request looks like to the policies, read once.
struct Facts {
    principals: Vec<String>,
    claims: Option<serde_json::Value>,
    source_ip: Option<IpAddr>,
    method: String,
    host: String,
    path: String,
}

impl Filter for AuthzRbac {
    type Config = Config;
    type State = ();

    fn new(config: Config) -> Result<Self, String> {
        let mut policies = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, p) in config.policies.into_iter().enumerate() {
            let at = |field: &str, j: usize| format!("policies[{i}].{field}[{j}]");
            if p.name.is_empty() {
                return Err(format!(
                    "policies[{i}].name: a policy needs a name (it is shown in denials)"
                ));
            }
            if !names.insert(p.name.clone()) {
                return Err(format!(
                    "policies[{i}].name: {:?} is used twice; names must be unique",
                    p.name
                ));
            }
            let mut source_ips = Vec::new();
            for (j, s) in p.source_ips.iter().enumerate() {
                let net = s
                    .parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!(
                            "{}: {s:?} is not an IP address or CIDR (10.0.0.0/8)",
                            at("source_ips", j)
                        )
                    })?;
                source_ips.push(net);
            }
            let mut path_globs = Vec::new();
            for (j, g) in p.path_globs.iter().enumerate() {
                let glob = GlobBuilder::new(g)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| format!("{}: {g:?}: {e}", at("path_globs", j)))?;
                path_globs.push(glob.compile_matcher());
            }
            for (j, h) in p.headers.iter().enumerate() {
                let set = [h.exact.is_some(), h.prefix.is_some(), h.present.is_some()];
                if set.iter().filter(|b| **b).count() != 1 {
                    return Err(format!(
                        "{}: give exactly one of exact, prefix or present for header {:?}",
                        at("headers", j),
                        h.name
                    ));
                }
            }
            for (j, pr) in p.principals.iter().enumerate() {
                if pr.is_empty() {
                    return Err(format!(
                        "{}: an empty principal matches nothing; write \"*\" for any",
                        at("principals", j)
                    ));
                }
            }
            policies.push(Policy {
                name: p.name,
                action: p.action,
                principals: p.principals,
                claims: p.claims.into_iter().collect(),
                source_ips,
                methods: p.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
                hosts: p.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                paths: p.paths,
                path_prefixes: p.path_prefixes,
                path_globs,
                headers: p.headers,
            });
        }
        Ok(AuthzRbac {
            default: config.default,
            dry_run: config.dry_run,
            policies,
        })
    }

    fn on_request_headers(&self, _: &mut (), req: &mut Request) -> Action {
        let facts = Facts::of(req);
        let matched = self.policies.iter().find(|p| p.matches(&facts, req));
        let (decision, by) = match matched {
            Some(p) => (p.action, p.name.as_str()),
            None => (self.default, "default"),
        };
        let who = facts
            .principals
            .first()
            .map_or("an unauthenticated caller", String::as_str);
        match (decision, self.dry_run) {
            (Decision::Allow, _) => {
                weir_sdk::metrics::counter_add("allowed", 1);
                Action::Continue
            }
            (Decision::Deny, true) => {
                weir_sdk::metrics::counter_add("dry_run_denied", 1);
                weir_sdk::log::info(&format!(
                    "dry run: would deny {} {} from {who} (policy {by:?})",
                    facts.method, facts.path
                ));
                Action::Continue
            }
            (Decision::Deny, false) => {
                weir_sdk::metrics::counter_add("denied", 1);
                weir_sdk::log::info(&format!(
                    "denied {} {} from {who} (policy {by:?})",
                    facts.method, facts.path
                ));
                let body = if matched.is_some() {
                    format!("denied by policy \"{by}\"\n")
                } else {
                    "denied: no policy allows this request (default deny)\n".to_string()
                };
                LocalResponse::new(403)
                    .header("content-type", "text/plain")
                    .header("x-denied-by", &format!("authz-rbac/{by}"))
                    .body(body)
                    .into_action()
            }
        }
    }
}

impl Facts {
    fn of(req: &Request) -> Facts {
        let principals = ["source.principal", "request.auth.principal"]
            .iter()
            .filter_map(|a| req.attribute(a))
            .filter(|p| !p.is_empty())
            .collect();
        let claims = req
            .attribute("request.auth.claims")
            .and_then(|c| serde_json::from_str(&c).ok());
        let source_ip = req.attribute("source.address").and_then(|a| {
            a.parse::<SocketAddr>()
                .map(|s| s.ip())
                .or_else(|_| a.parse::<IpAddr>())
                .ok()
        });
        let host = req
            .header(":authority")
            .or_else(|| req.header("host"))
            .unwrap_or_default();
        let host = strip_port(&host).to_ascii_lowercase();
        let path = req.path();
        let path = path.split(['?', '#']).next().unwrap_or("/").to_string();
        Facts {
            principals,
            claims,
            source_ip,
            method: req.method(),
            host,
            path,
        }
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn principal_matches(pattern: &str, id: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('/') => id.starts_with(prefix) && id.len() > prefix.len(),
        _ => pattern == id,
    }
}

fn claim_matches(claims: &serde_json::Value, name: &str, want: &str) -> bool {
    match claims.get(name) {
        Some(serde_json::Value::String(s)) => s == want,
        Some(serde_json::Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(want)),
        Some(serde_json::Value::Bool(b)) => b.to_string() == want,
        Some(serde_json::Value::Number(n)) => n.to_string() == want,
        _ => false,
    }
}

impl Policy {
    fn matches(&self, f: &Facts, req: &Request) -> bool {
        (self.principals.is_empty()
            || f.principals
                .iter()
                .any(|id| self.principals.iter().any(|p| principal_matches(p, id))))
            && (self.claims.is_empty()
                || f.claims
                    .as_ref()
                    .is_some_and(|c| self.claims.iter().all(|(k, v)| claim_matches(c, k, v))))
            && (self.source_ips.is_empty()
                || f.source_ip
                    .is_some_and(|ip| self.source_ips.iter().any(|n| n.contains(&ip))))
            && (self.methods.is_empty() || self.methods.contains(&f.method))
            && (self.hosts.is_empty()
                || self.hosts.iter().any(|h| match h.strip_prefix('*') {
                    Some(suffix) => f.host.ends_with(suffix) && f.host.len() > suffix.len(),
                    None => *h == f.host,
                }))
            && (self.paths.is_empty()
                && self.path_prefixes.is_empty()
                && self.path_globs.is_empty()
                || self.paths.contains(&f.path)
                || self
                    .path_prefixes
                    .iter()
                    .any(|p| f.path.starts_with(p.as_str()))
                || self.path_globs.iter().any(|g| g.is_match(&f.path)))
            && self.headers.iter().all(|h| {
                let value = req.header(&h.name);
                match (&h.exact, &h.prefix, h.present) {
                    (Some(e), _, _) => value.as_deref() == Some(e.as_str()),
                    (_, Some(p), _) => value.is_some_and(|v| v.starts_with(p.as_str())),
                    (_, _, Some(want)) => value.is_some() == want,
                    _ => false,
                }
            })
    }
}

weir_sdk::export_filter!(AuthzRbac);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::{Harness, get};

    const CONFIG: &str = r#"{
        "default": "deny",
        "policies": [
            {"name": "block-scanner", "action": "deny", "headers": [{"name": "user-agent", "prefix": "scanner"}]},
            {"name": "health", "action": "allow", "paths": ["/healthz"]},
            {"name": "web-reads-orders", "action": "allow",
             "principals": ["spiffe://cluster.local/ns/default/sa/web"],
             "methods": ["GET"], "path_globs": ["/orders/*"]},
            {"name": "ops-net", "action": "allow", "source_ips": ["10.1.0.0/16"], "hosts": ["*.internal"]},
            {"name": "admins", "action": "allow", "claims": {"role": "admin"}, "path_prefixes": ["/admin/"]}
        ]
    }"#;

    fn harness() -> Harness<AuthzRbac> {
        Harness::<AuthzRbac>::new(CONFIG).unwrap()
    }

    #[test]
    fn the_first_matching_policy_decides_and_the_default_denies_the_rest() {
        let mut h = harness();
        let out = h.request(get("/healthz?probe=1"));
        assert!(out.local().is_none(), "health is allowed");
        let out = h.request(get("/healthz").header("user-agent", "scanner/1.0"));
        let local = out.local().expect("the deny policy comes first");
        assert_eq!(local.status, 403);
        assert_eq!(local.body, b"denied by policy \"block-scanner\"\n");
        assert!(local.headers.contains(&(
            "x-denied-by".to_string(),
            "authz-rbac/block-scanner".to_string()
        )));
        let local = h
            .request(get("/other"))
            .local()
            .cloned()
            .expect("default deny");
        assert_eq!(
            local.body,
            b"denied: no policy allows this request (default deny)\n"
        );
        assert_eq!(h.counter("allowed"), 1);
        assert_eq!(h.counter("denied"), 2);
    }

    #[test]
    fn principals_methods_and_globs() {
        let mut h = harness();
        h.attribute(
            "source.principal",
            "spiffe://cluster.local/ns/default/sa/web",
        );
        assert!(h.request(get("/orders/42")).local().is_none());
        assert!(
            h.request(get("/orders/42/items")).local().is_some(),
            "* stays within a segment"
        );
        let mut h = harness();
        h.attribute(
            "source.principal",
            "spiffe://cluster.local/ns/default/sa/other",
        );
        assert!(
            h.request(get("/orders/42")).local().is_some(),
            "another identity"
        );
        let mut h = harness();
        h.attribute(
            "request.auth.principal",
            "spiffe://cluster.local/ns/default/sa/web",
        );
        assert!(
            h.request(get("/orders/1")).local().is_none(),
            "a JWT principal counts too"
        );
    }

    #[test]
    fn source_networks_hosts_and_claims() {
        let mut h = harness();
        h.attribute("source.address", "10.1.2.3:5555");
        assert!(
            h.request(get("/x").set(":authority", "db.internal:8080"))
                .local()
                .is_none()
        );
        assert!(
            h.request(get("/x").set(":authority", "db.example.com"))
                .local()
                .is_some()
        );
        let mut h = harness();
        h.attribute("source.address", "10.2.0.1:5555");
        assert!(
            h.request(get("/x").set(":authority", "db.internal"))
                .local()
                .is_some()
        );
        let mut h = harness();
        h.attribute(
            "request.auth.claims",
            r#"{"sub":"ann","role":["dev","admin"]}"#,
        );
        assert!(h.request(get("/admin/users")).local().is_none());
        let mut h = harness();
        h.attribute("request.auth.claims", r#"{"sub":"bob","role":"dev"}"#);
        assert!(h.request(get("/admin/users")).local().is_some());
    }

    #[test]
    fn dry_run_counts_but_lets_everything_through() {
        let mut h = Harness::<AuthzRbac>::new(r#"{"dry_run": true}"#).unwrap();
        assert!(h.request(get("/anything")).local().is_none());
        assert_eq!(h.counter("dry_run_denied"), 1);
        assert!(
            h.logs()
                .iter()
                .any(|(_, l)| l.contains("dry run: would deny GET /anything"))
        );
    }

    #[test]
    fn bad_configurations_name_the_field() {
        for (config, want) in [
            (
                r#"{"policies": [{"name": "a", "action": "allow", "source_ips": ["10.0.0.0/33"]}]}"#,
                "policies[0].source_ips[0]: \"10.0.0.0/33\" is not an IP address or CIDR",
            ),
            (
                r#"{"policies": [{"name": "a", "action": "allow", "path_globs": ["/a/[b"]}]}"#,
                "policies[0].path_globs[0]",
            ),
            (
                r#"{"policies": [{"name": "a", "action": "allow", "headers": [{"name": "x"}]}]}"#,
                "policies[0].headers[0]: give exactly one of exact, prefix or present",
            ),
            (
                r#"{"policies": [{"name": "a", "action": "allow"}, {"name": "a", "action": "deny"}]}"#,
                "policies[1].name: \"a\" is used twice",
            ),
            (
                r#"{"policies": [{"name": "a", "action": "maybe"}]}"#,
                "unknown variant `maybe`",
            ),
            (r#"{"polices": []}"#, "unknown field `polices`"),
        ] {
            let err = Harness::<AuthzRbac>::new(config)
                .err()
                .unwrap_or_else(|| panic!("{config} was accepted"));
            assert!(err.contains(want), "{config}: {err}");
        }
    }
}
