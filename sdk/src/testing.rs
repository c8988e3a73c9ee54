//! Run a filter in a plain `cargo test`, with no proxy and no Wasm.
//!
//! [`Harness`] configures the filter as weir would, feeds it requests and
//! responses built with [`get`], [`post`] and [`response`], and shows what
//! came out: the action, the headers and body as changed, metrics, logs and
//! shared data. The filter runs through the same code as in the component;
//! only the host behind the SDK's calls is an in-memory one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;

use crate::host::Dir;
use crate::{Action, BodyAction, Filter, LocalResponse};

/// The in-memory host behind the SDK's calls in native tests.
#[derive(Default, Debug)]
pub struct TestHost {
    request: Vec<(String, String)>,
    response: Vec<(String, String)>,
    pub(crate) attributes: HashMap<String, String>,
    /// Attributes the filter set during the current (or last) request.
    pub(crate) set_attributes: HashMap<String, String>,
    pub(crate) logs: Vec<(u8, String)>,
    pub(crate) counters: HashMap<String, u64>,
    pub(crate) gauges: HashMap<String, i64>,
    pub(crate) histograms: HashMap<String, Vec<u64>>,
    pub(crate) labeled_histograms: HashMap<String, Vec<f64>>,
    pub(crate) access: Vec<String>,
    pub(crate) rng: u64,
    pub(crate) shared: HashMap<String, (Vec<u8>, u32)>,
    version: u32,
    /// Token buckets: (key, limit) to (tokens, last refill).
    buckets: HashMap<(String, crate::quota::Limit), (f64, std::time::Instant)>,
    /// Replies to outbound calls by (cluster, path), and the calls made.
    replies: HashMap<(String, String), Result<crate::outbound::Reply, String>>,
    calls: Vec<crate::outbound::Call>,
    /// Whether the current callback may make outbound calls (as in weir).
    may_call: bool,
}

thread_local! {
    static HOST: RefCell<Option<TestHost>> = const { RefCell::new(None) };
}

pub(crate) fn with_host<R>(f: impl FnOnce(&mut TestHost) -> R) -> R {
    HOST.with(|h| {
        let mut h = h.borrow_mut();
        let host = h.as_mut().expect(
            "weir-sdk: no host here; natively, run filters through weir_sdk::testing::Harness",
        );
        f(host)
    })
}

impl TestHost {
    fn map(&mut self, d: Dir) -> &mut Vec<(String, String)> {
        match d {
            Dir::Request => &mut self.request,
            Dir::Response => &mut self.response,
        }
    }

    pub(crate) fn get_header(&mut self, d: Dir, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        self.map(d)
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    }

    pub(crate) fn get_headers(&mut self, d: Dir) -> Vec<(String, String)> {
        self.map(d).clone()
    }

    pub(crate) fn set_header(
        &mut self,
        d: Dir,
        name: &str,
        value: Option<&str>,
        add: bool,
    ) -> Result<(), String> {
        let name = name.to_ascii_lowercase();
        if name.is_empty() || name.chars().any(|c| c.is_whitespace()) {
            return Err(format!("{name:?} is not a valid header name"));
        }
        let map = self.map(d);
        match value {
            None if name.starts_with(':') => {
                return Err(format!("the pseudo-header {name} cannot be removed"));
            }
            None => map.retain(|(k, _)| *k != name),
            Some(v) if add => map.push((name, v.to_string())),
            Some(v) => {
                map.retain(|(k, _)| *k != name);
                map.push((name, v.to_string()));
            }
        }
        Ok(())
    }

    pub(crate) fn shared_set(
        &mut self,
        key: &str,
        value: &[u8],
        version: Option<u32>,
    ) -> Result<(), String> {
        if let (Some(want), Some((_, have))) = (version, self.shared.get(key))
            && want != *have
        {
            return Err(format!("shared data {key:?} changed since version {want}"));
        }
        self.version += 1;
        self.shared
            .insert(key.to_string(), (value.to_vec(), self.version));
        Ok(())
    }
}

/// A request to feed a filter.
#[derive(Clone, Debug)]
pub struct TestRequest {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A `GET` of `path`, with authority `example.com`.
pub fn get(path: &str) -> TestRequest {
    TestRequest {
        headers: vec![
            (":method".into(), "GET".into()),
            (":path".into(), path.into()),
            (":authority".into(), "example.com".into()),
            (":scheme".into(), "http".into()),
        ],
        body: Vec::new(),
    }
}

/// A `POST` of `body` to `path`.
pub fn post(path: &str, body: impl Into<Vec<u8>>) -> TestRequest {
    let mut r = get(path);
    r.headers[0].1 = "POST".into();
    r.body = body.into();
    r
}

impl TestRequest {
    /// Replaces a header (or pseudo-header, such as `:authority`), adding it when absent.
    pub fn set(mut self, name: &str, value: &str) -> TestRequest {
        let name = name.to_ascii_lowercase();
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.to_string()));
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> TestRequest {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }
}

/// A response to feed a filter.
#[derive(Clone, Debug)]
pub struct TestResponse {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A response with `status` and `body`.
pub fn response(status: u16, body: impl Into<Vec<u8>>) -> TestResponse {
    TestResponse {
        headers: vec![(":status".into(), status.to_string())],
        body: body.into(),
    }
}

impl TestResponse {
    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> TestResponse {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }
}

/// What came out of one phase.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The filter's decision on the head.
    pub action: Action,
    /// The headers as the filter left them, pseudo-headers included.
    pub headers: Vec<(String, String)>,
    /// The body as the filter left it.
    pub body: Vec<u8>,
}

impl Outcome {
    /// A header's value after the filter ran.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The local response, if the filter answered.
    pub fn local(&self) -> Option<&LocalResponse> {
        match &self.action {
            Action::Respond(r) => Some(r),
            _ => None,
        }
    }
}

/// Runs one filter natively.
pub struct Harness<F: Filter> {
    next: u64,
    _filter: PhantomData<F>,
}

impl TestHost {
    pub(crate) fn set_attribute(&mut self, name: &str, value: &str) -> Result<(), String> {
        const HOST_OWNED: [&str; 6] = [
            "request.",
            "response.",
            "source.",
            "destination.",
            "connection.",
            "upstream.",
        ];
        if !name.starts_with("request.auth.") && HOST_OWNED.iter().any(|p| name.starts_with(p)) {
            return Err(format!("{name:?} is computed by weir and cannot be set"));
        }
        self.set_attributes
            .insert(name.to_string(), value.to_string());
        Ok(())
    }

    /// An outbound call: the reply the test set for its cluster and path.
    pub(crate) fn call(
        &mut self,
        req: &crate::outbound::Call,
    ) -> Result<crate::outbound::Reply, String> {
        if !self.may_call {
            return Err(format!(
                "outbound call to cluster {:?} refused: calls can be made from on-request-headers, on-response-headers and a whole body's callback (after stop-and-buffer), not from configure, a streamed body chunk or on-done",
                req.cluster
            ));
        }
        self.calls.push(req.clone());
        self.replies
            .get(&(req.cluster.clone(), req.path.clone()))
            .cloned()
            .unwrap_or_else(|| {
                Err(format!(
                    "outbound call to cluster {:?} failed: the test set no reply for {} {} (Harness::reply)",
                    req.cluster, req.method, req.path
                ))
            })
    }

    /// The same token bucket as weir's local quota backend.
    pub(crate) fn quota_take(
        &mut self,
        key: &str,
        cost: u32,
        limit: crate::quota::Limit,
    ) -> Result<crate::quota::Decision, String> {
        if limit.tokens == 0 || limit.period_ms == 0 {
            return Err("a limit needs at least 1 token and a period of at least 1ms".into());
        }
        let now = std::time::Instant::now();
        let cap = f64::from(limit.tokens);
        let rate = cap / f64::from(limit.period_ms); // tokens per ms
        let b = self
            .buckets
            .entry((key.to_string(), limit))
            .or_insert((cap, now));
        b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * 1000.0 * rate).min(cap);
        b.1 = now;
        let allowed = b.0 >= f64::from(cost);
        if allowed {
            b.0 -= f64::from(cost);
        }
        Ok(crate::quota::Decision {
            allowed,
            limit: limit.tokens,
            remaining: b.0.floor() as u32,
            retry_after_ms: if allowed {
                0
            } else {
                ((f64::from(cost) - b.0) / rate).ceil() as u32
            },
            reset_ms: ((cap - b.0) / rate).ceil() as u32,
        })
    }
}

impl<F: Filter> Harness<F> {
    /// Configures the filter with `config` (JSON, as weir hands over a
    /// plugin's `[config]` table). The error is what weir would show.
    pub fn new(config: &str) -> Result<Harness<F>, String> {
        crate::__private::reset();
        HOST.with(|h| *h.borrow_mut() = Some(TestHost::default()));
        crate::__private::configure::<F>(config.as_bytes())?;
        Ok(Harness {
            next: 1,
            _filter: PhantomData,
        })
    }

    /// Sets an attribute the filter can read (`source.address`, ...).
    pub fn attribute(&mut self, name: &str, value: &str) -> &mut Self {
        with_host(|h| {
            h.attributes.insert(name.to_string(), value.to_string());
        });
        self
    }

    /// What outbound calls to `path` on `cluster` answer from now on:
    /// `Ok(reply)`, or `Err(why)` for a call that gets no answer (as weir
    /// says when the cluster is down or the call timed out). A call with no
    /// reply set fails, naming it.
    pub fn reply(
        &mut self,
        cluster: &str,
        path: &str,
        reply: Result<crate::outbound::Reply, String>,
    ) -> &mut Self {
        with_host(|h| {
            h.replies
                .insert((cluster.to_string(), path.to_string()), reply);
        });
        self
    }

    /// The outbound calls the filter made, oldest first.
    pub fn calls(&self) -> Vec<crate::outbound::Call> {
        with_host(|h| h.calls.clone())
    }

    /// The access log lines the filter wrote.
    pub fn access_log(&self) -> Vec<String> {
        with_host(|h| h.access.clone())
    }

    /// A labeled counter's value; `labels` in any order.
    pub fn labeled_counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        l.sort();
        self.counter(&format!("{name}{{{}}}", l.join(",")))
    }

    /// The values recorded in a labeled histogram; `labels` in any order.
    pub fn labeled_histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        l.sort();
        let key = format!("{name}{{{}}}", l.join(","));
        with_host(|h| h.labeled_histograms.get(&key).cloned().unwrap_or_default())
    }

    /// The value of an attribute as the filter sees it: one it set during the
    /// last request (`request.auth.principal`, ...), else one set with [`Harness::attribute`].
    pub fn attribute_value(&self, name: &str) -> Option<String> {
        with_host(|h| {
            h.set_attributes
                .get(name)
                .or_else(|| h.attributes.get(name))
                .cloned()
        })
    }

    /// The request phases (head, then the body if there is one), then done.
    pub fn request(&mut self, req: TestRequest) -> Outcome {
        let id = self.start();
        let out = self.request_phase(id, req);
        with_host(|h| h.may_call = false);
        crate::__private::done::<F>(id);
        out
    }

    /// A whole exchange: the request phases, then (unless the filter
    /// answered) the response phases, then done.
    pub fn exchange(&mut self, req: TestRequest, resp: TestResponse) -> (Outcome, Option<Outcome>) {
        let id = self.start();
        let request = self.request_phase(id, req);
        let response = match request.action {
            Action::Respond(_) => None,
            _ => Some(self.response_phase(id, resp)),
        };
        with_host(|h| h.may_call = false);
        crate::__private::done::<F>(id);
        (request, response)
    }

    fn start(&mut self) -> u64 {
        with_host(|h| {
            h.set_attributes.clear();
            h.may_call = false;
        });
        let id = self.next;
        self.next += 1;
        id
    }

    fn request_phase(&mut self, id: u64, req: TestRequest) -> Outcome {
        with_host(|h| {
            h.request = req.headers;
            h.may_call = true;
        });
        let eos = req.body.is_empty();
        let mut action = crate::__private::request_headers::<F>(id, eos);
        let mut body = req.body;
        if !matches!(action, Action::Respond(_)) && !body.is_empty() {
            let (a, b) = crate::__private::body::<F>(id, body, true, true);
            body = b;
            if let BodyAction::Respond(r) = a {
                action = Action::Respond(r);
            }
        }
        Outcome {
            action,
            headers: with_host(|h| h.request.clone()),
            body,
        }
    }

    fn response_phase(&mut self, id: u64, resp: TestResponse) -> Outcome {
        with_host(|h| {
            h.response = resp.headers;
            h.may_call = true;
        });
        let eos = resp.body.is_empty();
        let mut action = crate::__private::response_headers::<F>(id, eos);
        let mut body = resp.body;
        if !matches!(action, Action::Respond(_)) && !body.is_empty() {
            let (a, b) = crate::__private::body::<F>(id, body, true, false);
            body = b;
            if let BodyAction::Respond(r) = a {
                action = Action::Respond(r);
            }
        }
        Outcome {
            action,
            headers: with_host(|h| h.response.clone()),
            body,
        }
    }

    /// Streams `chunks` through the response-body callback as weir would,
    /// returning what is passed on (buffered bytes are offered again with
    /// the next chunk, and passed on at the end).
    pub fn response_body_stream(&mut self, chunks: &[&[u8]]) -> Vec<u8> {
        let id = self.start();
        let mut out = Vec::new();
        let mut held: Vec<u8> = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let eos = i + 1 == chunks.len();
            held.extend_from_slice(chunk);
            let (a, bytes) = crate::__private::body::<F>(id, std::mem::take(&mut held), eos, false);
            match a {
                BodyAction::Buffer if !eos => held = bytes,
                _ => out.extend_from_slice(&bytes),
            }
        }
        crate::__private::done::<F>(id);
        out
    }

    /// A counter's value.
    pub fn counter(&self, name: &str) -> u64 {
        with_host(|h| h.counters.get(name).copied().unwrap_or(0))
    }

    /// A gauge's value.
    pub fn gauge(&self, name: &str) -> Option<i64> {
        with_host(|h| h.gauges.get(name).copied())
    }

    /// The lines logged so far, with their level (0 debug, 1 info, 2 warn, 3 error).
    pub fn logs(&self) -> Vec<(u8, String)> {
        with_host(|h| h.logs.clone())
    }

    /// A shared-data value.
    pub fn shared(&self, key: &str) -> Option<Vec<u8>> {
        with_host(|h| h.shared.get(key).map(|(v, _)| v.clone()))
    }
}
