//! A plugin's second version beside the one serving, set in its `.toml`:
//!
//! - `canary = { file = "next/20-authz.wasm", weight = 10 }`: the canary
//!   version serves `weight` percent of the plugin's requests, the stable one
//!   the rest;
//! - `shadow = { file = "next/20-authz.wasm" }`: the shadow version sees the
//!   same requests as the active one, on copies; its decisions (local
//!   responses, header changes) are compared with the active one's, counted
//!   and logged when they differ, and never applied.
//!
//! Operators canary their services; this lets them canary their policy code.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;

use crate::filter::{
    Action, BodyFilter, FilterFuture, HttpFilter, LogInfo, StreamFilter, StreamInfo,
};
use crate::telemetry::Metrics;

/// How a second version runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VariantKind {
    /// Serves `weight` percent of the requests.
    Canary {
        /// Percent of requests, 1 to 99.
        weight: u32,
    },
    /// Sees every request; its decisions are only compared.
    Shadow,
}

impl VariantKind {
    /// `canary` or `shadow`.
    pub fn as_str(self) -> &'static str {
        match self {
            VariantKind::Canary { .. } => "canary",
            VariantKind::Shadow => "shadow",
        }
    }
}

/// What a second version did, for /plugins.
#[derive(Debug, Default)]
pub struct VariantStats {
    /// Requests the stable version served (canary).
    pub stable: AtomicU64,
    /// Requests the canary served, or decisions the shadow made.
    pub variant: AtomicU64,
    /// Shadow decisions that differed from the active version's.
    pub differ: AtomicU64,
    /// When a differing decision was last logged (ms since `started`), to log at most one a second.
    last_logged_ms: AtomicU64,
    started: std::sync::OnceLock<Instant>,
}

impl VariantStats {
    fn may_log(&self) -> bool {
        let started = *self.started.get_or_init(Instant::now);
        let now = started.elapsed().as_millis() as u64 + 1000;
        let last = self.last_logged_ms.load(Ordering::Relaxed);
        now >= last + 1000
            && self
                .last_logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// The stable version and a canary, as one filter of the chain.
pub struct Canary {
    /// The version serving most requests.
    pub stable: Arc<dyn HttpFilter>,
    /// The version on trial.
    pub canary: Arc<dyn HttpFilter>,
    /// Percent of requests for the canary.
    pub weight: u32,
    /// Counts.
    pub stats: Arc<VariantStats>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl HttpFilter for Canary {
    fn name(&self) -> &str {
        self.stable.name()
    }

    fn new_stream(&self, info: &Arc<StreamInfo>) -> Box<dyn StreamFilter> {
        let canary = rand::random_range(0..100) < self.weight;
        let counter = if canary {
            &self.stats.variant
        } else {
            &self.stats.stable
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.metrics.plugin_canary_request(self.name(), canary);
        if canary {
            self.canary.new_stream(info)
        } else {
            self.stable.new_stream(info)
        }
    }
}

/// The active version and a shadow, as one filter of the chain.
pub struct Shadow {
    /// The version whose decisions apply.
    pub active: Arc<dyn HttpFilter>,
    /// The version whose decisions are only compared.
    pub shadow: Arc<dyn HttpFilter>,
    /// Counts.
    pub stats: Arc<VariantStats>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl HttpFilter for Shadow {
    fn name(&self) -> &str {
        self.active.name()
    }

    fn new_stream(&self, info: &Arc<StreamInfo>) -> Box<dyn StreamFilter> {
        Box::new(ShadowStream {
            active: self.active.new_stream(info),
            shadow_filter: self.shadow.clone(),
            shadow: None,
            info: info.clone(),
            stats: self.stats.clone(),
            metrics: self.metrics.clone(),
            wants_request_body: false,
            wants_response_body: false,
        })
    }
}

/// One request through the active version, and through the shadow on copies.
struct ShadowStream {
    active: Box<dyn StreamFilter>,
    shadow_filter: Arc<dyn HttpFilter>,
    /// Made at the first phase, on a copy of the request's attributes as they
    /// are then (so it reads what the plugins before it set, and what it
    /// sets stays its own).
    shadow: Option<Box<dyn StreamFilter>>,
    info: Arc<StreamInfo>,
    stats: Arc<VariantStats>,
    metrics: Arc<Metrics>,
    wants_request_body: bool,
    wants_response_body: bool,
}

/// A decision, as compared: what kind, and the message it leaves.
#[derive(Debug, PartialEq)]
enum Outcome {
    Continue,
    Buffer,
    Respond(u16),
}

fn outcome(a: &Action) -> Outcome {
    match a {
        Action::Continue => Outcome::Continue,
        Action::StopAndBuffer => Outcome::Buffer,
        Action::Respond(r) => Outcome::Respond(r.status.as_u16()),
    }
}

fn copy_request(head: &http::request::Parts) -> http::request::Parts {
    let mut copy = crate::abi::empty_request();
    copy.method = head.method.clone();
    copy.uri = head.uri.clone();
    copy.version = head.version;
    copy.headers = head.headers.clone();
    copy
}

fn copy_response(head: &http::response::Parts) -> http::response::Parts {
    let mut copy = crate::abi::empty_response();
    copy.status = head.status;
    copy.version = head.version;
    copy.headers = head.headers.clone();
    copy
}

impl ShadowStream {
    fn shadow(&mut self) -> &mut Box<dyn StreamFilter> {
        let info = &self.info;
        let filter = &self.shadow_filter;
        self.shadow
            .get_or_insert_with(|| filter.new_stream(&Arc::new((**info).clone())))
    }

    /// Counts and (at most once a second) logs one comparison.
    fn compare(&self, phase: &str, active: (Outcome, String), shadow: (Outcome, String)) {
        let same = active == shadow;
        self.stats.variant.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .plugin_shadow_decision(self.shadow_filter.name(), same);
        if !same {
            self.stats.differ.fetch_add(1, Ordering::Relaxed);
            if self.stats.may_log() {
                tracing::info!(
                    plugin.name = self.shadow_filter.name(),
                    phase,
                    active = ?active.0,
                    shadow = ?shadow.0,
                    active_message = %active.1,
                    shadow_message = %shadow.1,
                    "the shadow version decided differently (not applied)"
                );
            }
        }
    }
}

/// Headers in a stable order, for comparison.
fn headers_text(headers: &http::HeaderMap) -> String {
    let mut lines: Vec<String> = headers
        .iter()
        .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    lines.sort();
    lines.join(", ")
}

/// What a request head looks like after a filter, for comparison.
fn request_text(head: &http::request::Parts) -> String {
    format!(
        "{} {} | {}",
        head.method,
        head.uri,
        headers_text(&head.headers)
    )
}

fn response_text(head: &http::response::Parts) -> String {
    format!("{} | {}", head.status.as_u16(), headers_text(&head.headers))
}

impl ShadowStream {
    /// A whole body through the active version and, when the shadow asked
    /// for the body, through the shadow on a copy.
    async fn body_phase(
        &mut self,
        response: bool,
        body: &mut Bytes,
        end_of_stream: bool,
    ) -> Action {
        let original = body.clone();
        let action = if response {
            self.active.on_response_body(body, end_of_stream).await
        } else {
            self.active.on_request_body(body, end_of_stream).await
        };
        let wanted = if response {
            self.wants_response_body
        } else {
            self.wants_request_body
        };
        if wanted {
            let mut copy = original;
            let shadow = self.shadow();
            let decided = if response {
                shadow.on_response_body(&mut copy, end_of_stream).await
            } else {
                shadow.on_request_body(&mut copy, end_of_stream).await
            };
            self.compare(
                if response {
                    "response_body"
                } else {
                    "request_body"
                },
                (outcome(&action), format!("{} bytes", body.len())),
                (outcome(&decided), format!("{} bytes", copy.len())),
            );
        }
        action
    }
}

impl StreamFilter for ShadowStream {
    fn on_request_headers<'a>(
        &'a mut self,
        head: &'a mut crate::upstream::Head,
        end_of_stream: bool,
    ) -> FilterFuture<'a> {
        FilterFuture::wait(async move {
            let mut copy = Box::new(copy_request(head));
            let shadow = self
                .shadow()
                .on_request_headers(&mut copy, end_of_stream)
                .await;
            let action = self.active.on_request_headers(head, end_of_stream).await;
            self.wants_request_body = matches!(shadow, Action::StopAndBuffer);
            self.compare(
                "request_headers",
                (outcome(&action), request_text(head)),
                (outcome(&shadow), request_text(&copy)),
            );
            action
        })
    }

    fn on_request_body<'a>(
        &'a mut self,
        body: &'a mut Bytes,
        end_of_stream: bool,
    ) -> FilterFuture<'a> {
        FilterFuture::wait(self.body_phase(false, body, end_of_stream))
    }

    fn on_response_headers<'a>(
        &'a mut self,
        head: &'a mut http::response::Parts,
        end_of_stream: bool,
    ) -> FilterFuture<'a> {
        FilterFuture::wait(async move {
            let mut copy = copy_response(head);
            let shadow = self
                .shadow()
                .on_response_headers(&mut copy, end_of_stream)
                .await;
            let action = self.active.on_response_headers(head, end_of_stream).await;
            self.wants_response_body = matches!(shadow, Action::StopAndBuffer);
            self.compare(
                "response_headers",
                (outcome(&action), response_text(head)),
                (outcome(&shadow), response_text(&copy)),
            );
            action
        })
    }

    fn on_response_body<'a>(
        &'a mut self,
        body: &'a mut Bytes,
        end_of_stream: bool,
    ) -> FilterFuture<'a> {
        FilterFuture::wait(self.body_phase(true, body, end_of_stream))
    }

    fn request_body_filter(&mut self) -> Option<Box<dyn BodyFilter>> {
        self.active.request_body_filter()
    }

    fn response_body_filter(&mut self) -> Option<Box<dyn BodyFilter>> {
        self.active.response_body_filter()
    }

    fn on_log(&mut self, info: &LogInfo) {
        self.active.on_log(info);
        if let Some(s) = self.shadow.as_mut() {
            s.on_log(info);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::LocalResponse;

    /// Answers 403 to paths under `/deny`, and tags requests with its own name.
    struct Policy(&'static str);
    struct PolicyStream(&'static str);

    impl HttpFilter for Policy {
        fn name(&self) -> &str {
            self.0
        }
        fn new_stream(&self, _: &Arc<StreamInfo>) -> Box<dyn StreamFilter> {
            Box::new(PolicyStream(self.0))
        }
    }

    impl StreamFilter for PolicyStream {
        fn on_request_headers<'a>(
            &'a mut self,
            head: &'a mut crate::upstream::Head,
            _: bool,
        ) -> FilterFuture<'a> {
            head.headers
                .insert("x-version", http::HeaderValue::from_static(self.0));
            if head.uri.path().starts_with("/deny") {
                return crate::filter::decided(Action::Respond(LocalResponse {
                    status: http::StatusCode::FORBIDDEN,
                    headers: vec![],
                    body: Bytes::new(),
                    by: self.0.into(),
                }));
            }
            crate::filter::decided(Action::Continue)
        }
    }

    fn info() -> Arc<StreamInfo> {
        StreamInfo::for_test()
    }

    fn request(path: &str) -> crate::upstream::Head {
        Box::new(http::Request::get(path).body(()).unwrap().into_parts().0)
    }

    #[tokio::test]
    async fn a_shadow_never_applies_its_decision_and_differences_are_counted() {
        let stats = Arc::new(VariantStats::default());
        let shadow = Shadow {
            active: Arc::new(Policy("v1")),
            shadow: Arc::new(Policy("v2")),
            stats: stats.clone(),
            metrics: Arc::new(Metrics::new()),
        };
        let mut head = request("/ok");
        let a = shadow
            .new_stream(&info())
            .on_request_headers(&mut head, true)
            .await;
        assert!(matches!(a, Action::Continue));
        assert_eq!(
            head.headers["x-version"], "v1",
            "the active version's change only"
        );
        assert_eq!(stats.differ.load(Ordering::Relaxed), 1, "x-version differs");
        let mut head = request("/deny/x");
        let a = shadow
            .new_stream(&info())
            .on_request_headers(&mut head, true)
            .await;
        assert!(matches!(a, Action::Respond(ref r) if r.by == "v1"));
        assert_eq!(stats.variant.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_canary_takes_about_its_weight() {
        let stats = Arc::new(VariantStats::default());
        let canary = Canary {
            stable: Arc::new(Policy("v1")),
            canary: Arc::new(Policy("v2")),
            weight: 20,
            stats: stats.clone(),
            metrics: Arc::new(Metrics::new()),
        };
        let mut seen = std::collections::HashMap::new();
        for _ in 0..2000 {
            let mut head = request("/ok");
            canary
                .new_stream(&info())
                .on_request_headers(&mut head, true)
                .await;
            *seen
                .entry(head.headers["x-version"].to_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
        let v2 = seen["v2"];
        assert!((250..550).contains(&v2), "20% of 2000: {v2}");
        assert_eq!(stats.variant.load(Ordering::Relaxed), v2);
        assert_eq!(stats.stable.load(Ordering::Relaxed), 2000 - v2);
    }
}
