//! A weir filter written with the SDK: changes request and response headers
//! as its configuration says, and answers 400 to requests missing a header
//! it requires.
//!
//! ```toml
//! # plugins/20-header-rewrite.toml
//! [config]
//! request_set = { "x-gateway" = "weir" }
//! request_remove = ["x-internal"]
//! response_set = { "x-served-by" = "weir" }
//! require = "x-api-version"
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use weir_sdk::{Action, Filter, LocalResponse, Request, Response};

/// The configuration.
#[derive(Debug, Default, Deserialize, weir_sdk::JsonSchema)]
#[schemars(crate = "weir_sdk::schemars")]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Request headers to set.
    pub request_set: BTreeMap<String, String>,
    /// Request headers to remove.
    pub request_remove: Vec<String>,
    /// Response headers to set.
    pub response_set: BTreeMap<String, String>,
    /// A request header that must be present (else 400).
    pub require: Option<String>,
}

/// The filter.
pub struct HeaderRewrite(Config);

impl Filter for HeaderRewrite {
    type Config = Config;
    type State = ();

    fn new(config: Config) -> Result<Self, String> {
        for name in config.request_set.keys().chain(config.response_set.keys()) {
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(format!("invalid header name {name:?} in the configuration"));
            }
        }
        Ok(HeaderRewrite(config))
    }

    fn on_request_headers(&self, _: &mut (), req: &mut Request) -> Action {
        if let Some(required) = &self.0.require
            && req.header(required).is_none()
        {
            weir_sdk::metrics::counter_add("rejected", 1);
            return LocalResponse::new(400)
                .header("content-type", "text/plain")
                .body(format!("missing header {required}\n"))
                .into_action();
        }
        for (name, value) in &self.0.request_set {
            if let Err(e) = req.set_header(name, value) {
                weir_sdk::log::warn(&e);
            }
        }
        for name in &self.0.request_remove {
            req.remove_header(name);
        }
        Action::Continue
    }

    fn on_response_headers(&self, _: &mut (), resp: &mut Response) -> Action {
        for (name, value) in &self.0.response_set {
            let _ = resp.set_header(name, value);
        }
        Action::Continue
    }
}

weir_sdk::export_filter!(HeaderRewrite);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::{Harness, get, response};

    const CONFIG: &str = r#"{
        "request_set": {"x-gateway": "weir"},
        "request_remove": ["x-internal"],
        "response_set": {"x-served-by": "weir"},
        "require": "x-api-version"
    }"#;

    #[test]
    fn rewrites_both_ways() {
        let mut h = Harness::<HeaderRewrite>::new(CONFIG).unwrap();
        let req = get("/")
            .header("x-api-version", "2")
            .header("x-internal", "secret");
        let (req, resp) = h.exchange(req, response(200, "ok"));
        assert_eq!(req.action, Action::Continue);
        assert_eq!(req.header("x-gateway"), Some("weir"));
        assert_eq!(req.header("x-internal"), None);
        assert_eq!(resp.unwrap().header("x-served-by"), Some("weir"));
    }

    #[test]
    fn a_missing_required_header_is_answered_locally_and_counted() {
        let mut h = Harness::<HeaderRewrite>::new(CONFIG).unwrap();
        let out = h.request(get("/"));
        let local = out.local().expect("answered locally");
        assert_eq!(local.status, 400);
        assert_eq!(local.body, b"missing header x-api-version\n");
        assert_eq!(h.counter("rejected"), 1);
    }

    #[test]
    fn a_bad_configuration_is_refused_naming_the_field() {
        let err = Harness::<HeaderRewrite>::new(r#"{"request_sett": {}}"#)
            .err()
            .unwrap();
        assert!(err.contains("unknown field `request_sett`"), "{err}");
        let err = Harness::<HeaderRewrite>::new(r#"{"request_set": {"bad name": "x"}}"#)
            .err()
            .unwrap();
        assert!(err.contains("invalid header name \"bad name\""), "{err}");
    }
}
