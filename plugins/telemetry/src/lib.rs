//! telemetry: what Istio's Mixer reported, as a plugin. Per request it
//! records Istio-style metrics (requests by route, cluster, method and
//! response code; duration, request size and response size histograms),
//! writes one JSON access log line with fields chosen from attributes,
//! including the decision log weir provides (which plugin answered locally
//! and with what, and the time each plugin spent), and creates or continues
//! a W3C trace context (`traceparent`) sent upstream.
//!
//! Put it first in the chain (`10-telemetry.wasm`) so that it sees every
//! request, including those a later plugin answers.
//!
//! ```toml
//! # plugins/10-telemetry.toml
//! [config]
//! access_log_fields = ["start_time", "method", "path", "response_code", "duration_ms",
//!                      "route_name", "source.address", "request.auth.principal",
//!                      "weir.answered_by", "weir.plugin_times", "trace_id"]
//! ```
//!
//! Metrics (exported as `weir_telemetry_<name>`): `requests_total{route, cluster, method,
//! response_code}`, `request_duration_milliseconds{route, cluster, response_code}`,
//! `request_bytes{route, cluster}` and `response_bytes{route, cluster}` (sizes from
//! `content-length`: bodies streamed without one are not counted).

use serde::Deserialize;
use serde_json::{Map, Value};
use weir_sdk::{Action, Filter, Request, Response};

/// The configuration (the plugin's `[config]` table).
#[derive(Debug, Default, Deserialize, weir_sdk::JsonSchema)]
#[schemars(crate = "weir_sdk::schemars")]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Record the request metrics (default true).
    pub metrics: Option<bool>,
    /// Write an access log line per request (default true).
    pub access_log: Option<bool>,
    /// The access log's fields (JSON keys, written in alphabetical order): `start_time`, `method`, `path`, `authority`,
    /// `user_agent`, `request_id`, `response_code`, `duration_ms`, `request_bytes`,
    /// `response_bytes`, `trace_id`, or any attribute name (`route_name`, `cluster_name`,
    /// `source.address`, `request.auth.principal`, `source.principal`, `weir.answered_by`,
    /// `weir.answered_status`, `weir.plugin_times`, ...). Default: a useful set.
    pub access_log_fields: Option<Vec<String>>,
    /// Create or continue a W3C `traceparent` (default true).
    pub trace_context: Option<bool>,
}

const DEFAULT_FIELDS: [&str; 14] = [
    "start_time",
    "method",
    "path",
    "response_code",
    "duration_ms",
    "route_name",
    "cluster_name",
    "source.address",
    "request.auth.principal",
    "weir.answered_by",
    "weir.answered_status",
    "weir.plugin_times",
    "trace_id",
    "request_id",
];

const SPECIAL: [&str; 11] = [
    "start_time",
    "method",
    "path",
    "authority",
    "user_agent",
    "request_id",
    "response_code",
    "duration_ms",
    "request_bytes",
    "response_bytes",
    "trace_id",
];

/// The filter.
pub struct Telemetry {
    metrics: bool,
    access_log: bool,
    fields: Vec<String>,
    trace_context: bool,
}

/// What the plugin keeps of one exchange.
#[derive(Default)]
pub struct Exchange {
    start_ns: u64,
    method: String,
    path: String,
    authority: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
    trace_id: Option<String>,
    request_bytes: Option<u64>,
    response_bytes: Option<u64>,
    status: Option<u16>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A valid `traceparent`'s trace id and flags.
fn parse_traceparent(v: &str) -> Option<(&str, &str)> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let [version, trace, parent, flags] = parts[..] else {
        return None;
    };
    let is_hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let ok = is_hex(version, 2)
        && version != "ff"
        && is_hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && is_hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && is_hex(flags, 2);
    ok.then_some((trace, flags))
}

impl Filter for Telemetry {
    type Config = Config;
    type State = Exchange;

    fn new(config: Config) -> Result<Self, String> {
        let fields = match config.access_log_fields {
            Some(f) => f,
            None => DEFAULT_FIELDS.iter().map(|s| s.to_string()).collect(),
        };
        for (i, f) in fields.iter().enumerate() {
            if f.is_empty() || f.contains(char::is_whitespace) {
                return Err(format!(
                    "access_log_fields[{i}]: {f:?} is not a field or attribute name"
                ));
            }
        }
        Ok(Telemetry {
            metrics: config.metrics.unwrap_or(true),
            access_log: config.access_log.unwrap_or(true),
            fields,
            trace_context: config.trace_context.unwrap_or(true),
        })
    }

    fn on_request_headers(&self, x: &mut Exchange, req: &mut Request) -> Action {
        x.start_ns = weir_sdk::shared::now_nanos();
        x.method = req.method();
        x.path = req.path();
        x.authority = req.header(":authority");
        x.user_agent = req.header("user-agent");
        x.request_id = req.header("x-request-id");
        x.request_bytes = req.header("content-length").and_then(|v| v.parse().ok());
        if self.trace_context {
            let span = hex(&weir_sdk::shared::random_bytes(8));
            let incoming = req.header("traceparent");
            let (trace, flags) = match incoming.as_deref().and_then(parse_traceparent) {
                // Continue the caller's trace: weir is the next hop (a new span id).
                Some((trace, flags)) => (trace.to_string(), flags.to_string()),
                None => (hex(&weir_sdk::shared::random_bytes(16)), "01".to_string()),
            };
            let _ = req.set_header("traceparent", &format!("00-{trace}-{span}-{flags}"));
            x.trace_id = Some(trace);
        }
        Action::Continue
    }

    fn on_response_headers(&self, x: &mut Exchange, resp: &mut Response) -> Action {
        x.status = Some(resp.status());
        x.response_bytes = resp.header("content-length").and_then(|v| v.parse().ok());
        Action::Continue
    }

    fn on_done(&self, x: &mut Exchange) {
        let now = weir_sdk::shared::now_nanos();
        let duration_ms = now.saturating_sub(x.start_ns) as f64 / 1e6;
        let attr = |name: &str| weir_sdk::attribute(name);
        let code = attr("response.code")
            .or_else(|| x.status.map(|s| s.to_string()))
            .unwrap_or_else(|| "0".into());
        let route = attr("route_name").unwrap_or_default();
        let cluster = attr("cluster_name").unwrap_or_default();
        if self.metrics {
            use weir_sdk::metrics::{counter_add_labeled, histogram_record_labeled};
            counter_add_labeled(
                "requests",
                &[
                    ("route", &route),
                    ("cluster", &cluster),
                    ("method", &x.method),
                    ("response_code", &code),
                ],
                1,
            );
            histogram_record_labeled(
                "request_duration_milliseconds",
                &[
                    ("route", &route),
                    ("cluster", &cluster),
                    ("response_code", &code),
                ],
                duration_ms,
            );
            if let Some(b) = x.request_bytes {
                histogram_record_labeled(
                    "request_bytes",
                    &[("route", &route), ("cluster", &cluster)],
                    b as f64,
                );
            }
            if let Some(b) = x.response_bytes {
                histogram_record_labeled(
                    "response_bytes",
                    &[("route", &route), ("cluster", &cluster)],
                    b as f64,
                );
            }
        }
        if self.access_log {
            let mut line = Map::new();
            for f in &self.fields {
                let v = match f.as_str() {
                    "start_time" => Value::from(rfc3339(x.start_ns)),
                    "method" => Value::from(x.method.clone()),
                    "path" => Value::from(x.path.clone()),
                    "authority" => x.authority.clone().map_or(Value::Null, Value::from),
                    "user_agent" => x.user_agent.clone().map_or(Value::Null, Value::from),
                    "request_id" => x.request_id.clone().map_or(Value::Null, Value::from),
                    "response_code" => code.parse::<u16>().map_or(Value::Null, Value::from),
                    "duration_ms" => Value::from((duration_ms * 1000.0).round() / 1000.0),
                    "request_bytes" => x.request_bytes.map_or(Value::Null, Value::from),
                    "response_bytes" => x.response_bytes.map_or(Value::Null, Value::from),
                    "trace_id" => x.trace_id.clone().map_or(Value::Null, Value::from),
                    name => match attr(name) {
                        // Attributes holding JSON (claims, plugin times) go in as JSON.
                        Some(v) if v.starts_with('{') => {
                            serde_json::from_str(&v).unwrap_or(Value::from(v))
                        }
                        Some(v) => Value::from(v),
                        None => Value::Null,
                    },
                };
                line.insert(f.clone(), v);
            }
            weir_sdk::log::access(&Value::Object(line).to_string());
        }
        let _ = SPECIAL;
    }
}

fn rfc3339(ns: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
    humantime::format_rfc3339_millis(t).to_string()
}

weir_sdk::export_filter!(Telemetry);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::{Harness, get, response};

    #[test]
    fn traceparent_is_created_or_continued() {
        let mut h = Harness::<Telemetry>::new("{}").unwrap();
        let (req, _) = h.exchange(get("/"), response(200, "ok"));
        let tp = req.header("traceparent").unwrap().to_string();
        let (trace, flags) = parse_traceparent(&tp).expect("a valid traceparent");
        assert_eq!(flags, "01");
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (req, _) = h.exchange(
            get("/").header("traceparent", incoming),
            response(200, "ok"),
        );
        let out = req.header("traceparent").unwrap();
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "the trace continues: {out}"
        );
        assert!(
            !out.contains("00f067aa0ba902b7"),
            "with a new span id: {out}"
        );
        assert_ne!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        // An invalid one is replaced.
        let (req, _) = h.exchange(
            get("/").header("traceparent", "00-0000-bad-01"),
            response(200, "ok"),
        );
        assert!(parse_traceparent(req.header("traceparent").unwrap()).is_some());
    }

    #[test]
    fn metrics_and_an_access_log_line_per_request() {
        let mut h = Harness::<Telemetry>::new(r#"{"access_log_fields": ["method", "path", "response_code", "route_name", "request.auth.principal", "weir.plugin_times", "trace_id"]}"#).unwrap();
        h.attribute("route_name", "api");
        h.attribute("cluster_name", "orders");
        h.attribute("weir.plugin_times", r#"{"telemetry": 3, "authz": 5}"#);
        let (_, _) = h.exchange(
            get("/orders?id=1"),
            response(200, "ok").header("content-length", "2"),
        );
        assert_eq!(
            h.labeled_counter(
                "requests",
                &[
                    ("route", "api"),
                    ("cluster", "orders"),
                    ("method", "GET"),
                    ("response_code", "200")
                ]
            ),
            1
        );
        assert_eq!(
            h.labeled_histogram("response_bytes", &[("route", "api"), ("cluster", "orders")]),
            vec![2.0]
        );
        let lines = h.access_log();
        assert_eq!(lines.len(), 1);
        let v: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/orders?id=1");
        assert_eq!(v["response_code"], 200);
        assert_eq!(v["route_name"], "api");
        assert_eq!(v["request.auth.principal"], Value::Null);
        assert_eq!(
            v["weir.plugin_times"]["authz"], 5,
            "JSON attributes stay JSON"
        );
        assert_eq!(v["trace_id"].as_str().unwrap().len(), 32);
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 7);
    }

    #[test]
    fn bad_configuration_names_the_field() {
        let err = Harness::<Telemetry>::new(r#"{"access_log_fields": ["method", "two words"]}"#)
            .err()
            .unwrap();
        assert!(err.contains("access_log_fields[1]"), "{err}");
        let err = Harness::<Telemetry>::new(r#"{"acess_log": true}"#)
            .err()
            .unwrap();
        assert!(err.contains("unknown field `acess_log`"), "{err}");
    }
}
