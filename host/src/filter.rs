//! The filter chain: the ABI-neutral phases every plugin runs in, between the
//! listener and the router.
//!
//! A request passes the chain's filters in order on the way in (request
//! headers, then body), and in reverse order on the way out (response headers,
//! then body), as in Envoy. In each phase a filter may change what it sees and
//! answers with an [`Action`]: go on, pause until something it waits for
//! arrives, or answer the request locally so that nothing after it runs.
//! Plugins of either ABI plug in by implementing [`HttpFilter`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

/// What a filter decides in a phase.
#[derive(Debug)]
pub enum Action {
    /// Go on to the next filter.
    Continue,
    /// Hold the body until the whole of it has arrived, then call the filter again
    /// with all of it and `end_of_stream` set.
    StopAndBuffer,
    /// Answer the request now; later filters and the upstream are skipped.
    Respond(LocalResponse),
}

/// A filter's decision, perhaps still to come: a filter that waits (for an
/// outbound call, a timer) returns [`FilterFuture::wait`], which resolves when
/// it has decided; one that decided at once returns [`decided`], which costs
/// no allocation (most callbacks of most requests).
pub struct FilterFuture<'a>(Decision<'a>);

enum Decision<'a> {
    Ready(Option<Action>),
    Waiting(Pin<Box<dyn Future<Output = Action> + Send + 'a>>),
}

impl<'a> FilterFuture<'a> {
    /// A decision that comes when `future` resolves.
    pub fn wait(future: impl Future<Output = Action> + Send + 'a) -> Self {
        FilterFuture(Decision::Waiting(Box::pin(future)))
    }
}

impl Future for FilterFuture<'_> {
    type Output = Action;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Action> {
        match &mut self.get_mut().0 {
            Decision::Ready(action) => std::task::Poll::Ready(
                action
                    .take()
                    .expect("a filter's decision is taken only once"),
            ),
            Decision::Waiting(future) => future.as_mut().poll(cx),
        }
    }
}

/// A decision that is already made.
pub fn decided<'a>(action: Action) -> FilterFuture<'a> {
    FilterFuture(Decision::Ready(Some(action)))
}

/// A response made by weir or a filter instead of the upstream.
#[derive(Clone, Debug)]
pub struct LocalResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body.
    pub body: Bytes,
    /// Which filter answered, for logs and the decision log.
    pub by: String,
}

/// The request as the filters left it, for the phases after its head has
/// gone upstream (request body, response, log): what a filter reads as
/// `request.path`, `request.host` and so on there. Taken once per request,
/// when the chain's request-headers phase ends, so that every filter sees
/// the changes of the filters after it too (as in Envoy, whose filters share
/// one header map). Cheap to keep: the parts are reference-counted.
#[derive(Clone, Debug)]
pub struct RequestFacts {
    /// The method.
    pub method: http::Method,
    /// The URI (origin form for HTTP/1.1, with the authority for HTTP/2).
    pub uri: http::Uri,
    /// The HTTP version.
    pub version: http::Version,
    /// The Host header.
    pub host: Option<HeaderValue>,
    /// The x-request-id header.
    pub id: Option<HeaderValue>,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Looked up by a ready name: a `&str` would be parsed and checked again
/// for each plugin on each request.
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl RequestFacts {
    /// Captures the facts of a request head.
    pub fn of(p: &http::request::Parts, tls: bool) -> RequestFacts {
        RequestFacts {
            method: p.method.clone(),
            uri: p.uri.clone(),
            version: p.version,
            host: p.headers.get(http::header::HOST).cloned(),
            id: p.headers.get(&X_REQUEST_ID).cloned(),
            tls,
        }
    }

    /// The path with its query, as `request.path` gives it.
    pub fn path(&self) -> &str {
        self.uri.path_and_query().map_or("/", |pq| pq.as_str())
    }

    /// The authority, else the Host header, as `request.host` gives it.
    pub fn host(&self) -> Vec<u8> {
        self.uri
            .authority()
            .map(|a| a.as_str().as_bytes().to_vec())
            .or_else(|| self.host.as_ref().map(|h| h.as_bytes().to_vec()))
            .unwrap_or_default()
    }

    /// The scheme, from the URI or the connection.
    pub fn scheme(&self) -> &str {
        self.uri
            .scheme_str()
            .unwrap_or(if self.tls { "https" } else { "http" })
    }

    /// The protocol as Envoy names it (`HTTP/1.1`, `HTTP/2`).
    pub fn protocol(&self) -> &'static str {
        match self.version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_3 => "HTTP/3",
            _ => "HTTP/1.1",
        }
    }
}

/// Where [`RequestFacts`] wait for the phases after the request head: taken
/// only for a request that has a filter which asked ([`RequestSnapshot::want`]),
/// and shared by every view of the request (a shadow plugin's copy of its
/// [`StreamInfo`] too).
#[derive(Debug, Default)]
pub struct RequestSnapshot {
    wanted: std::sync::atomic::AtomicBool,
    facts: std::sync::OnceLock<RequestFacts>,
    headers: std::sync::OnceLock<http::HeaderMap>,
    upstream: std::sync::OnceLock<SocketAddr>,
    details: std::sync::OnceLock<Arc<str>>,
    request_trailers: std::sync::OnceLock<http::HeaderMap>,
    response_trailers: std::sync::OnceLock<http::HeaderMap>,
}

impl RequestSnapshot {
    /// A filter of this request reads the request after its head phase.
    pub fn want(&self) {
        self.wanted
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a filter of this request asked for the snapshot.
    pub fn wanted(&self) -> bool {
        self.wanted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes the facts and headers of `head`, if a filter wants them (once
    /// per request): proxy-wasm's log phase reads the request headers, as
    /// Envoy keeps them for `on_log`.
    fn take(&self, head: &http::request::Parts, tls: bool) {
        if self.wanted() {
            let _ = self.facts.get_or_init(|| RequestFacts::of(head, tls));
            let _ = self.headers.get_or_init(|| head.headers.clone());
        }
    }

    /// The facts, once the request-headers phase has ended.
    pub fn get(&self) -> Option<&RequestFacts> {
        self.facts.get()
    }

    /// The request headers as the chain left them, once its request-headers
    /// phase has ended.
    pub fn headers(&self) -> Option<&http::HeaderMap> {
        self.headers.get()
    }

    /// Records the upstream endpoint that answered (`upstream.address`).
    pub fn set_upstream(&self, addr: SocketAddr) {
        let _ = self.upstream.set(addr);
    }

    /// The upstream endpoint that answered, once it has.
    pub fn upstream(&self) -> Option<SocketAddr> {
        self.upstream.get().copied()
    }

    /// Records why a filter answered the request itself
    /// (`response.code_details`); the first answer wins.
    pub fn set_details(&self, details: &str) {
        let _ = self.details.set(details.into());
    }

    /// Why a filter answered the request itself, if one did.
    pub fn details(&self) -> Option<&str> {
        self.details.get().map(|d| &**d)
    }

    /// Records the trailers the request (`response` false) or the response
    /// ended with, as they went on (`request.trailers`, `response.trailers`).
    pub fn set_trailers(&self, response: bool, trailers: &http::HeaderMap) {
        let slot = if response {
            &self.response_trailers
        } else {
            &self.request_trailers
        };
        let _ = slot.set(trailers.clone());
    }

    /// The trailers the request (`response` false) or the response ended
    /// with, once they went on.
    pub fn trailers(&self, response: bool) -> Option<&http::HeaderMap> {
        if response {
            self.response_trailers.get()
        } else {
            self.request_trailers.get()
        }
    }
}

/// What a filter may know about the request's connection and timing.
#[derive(Clone, Debug)]
pub struct StreamInfo {
    /// The listener's name.
    pub listener: Arc<str>,
    /// The route the request matched as it entered the chain (`route_name`).
    pub route: Option<Arc<str>>,
    /// That route's cluster, when it forwards to one (`xds.cluster_name`).
    pub cluster: Option<Arc<str>>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The connection's TLS facts (peer and local identities), when TLS.
    pub tls_session: Option<Arc<crate::mesh::TlsSession>>,
    /// When the request arrived.
    pub start: SystemTime,
    /// Attributes plugins set for the rest of the request (`request.auth.principal`, ...).
    pub attributes: Attributes,
    /// The request as the filters left it, set when the request-headers
    /// phase of the chain ends.
    pub request: Arc<RequestSnapshot>,
    /// The downstream connection's number, unique in this process (`connection.id`).
    pub connection_id: u64,
    /// The request is gRPC (its content-type is `application/grpc…`): a
    /// local response to it is given in gRPC's form, as Envoy gives it.
    pub grpc: bool,
}

#[cfg(test)]
impl StreamInfo {
    /// A plain-text request on listener `l` from and to 127.0.0.1:1, started now: for tests.
    pub fn for_test() -> Arc<StreamInfo> {
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("a valid address");
        Arc::new(StreamInfo {
            listener: "l".into(),
            route: None,
            cluster: None,
            peer: addr,
            local: addr,
            tls: false,
            tls_session: None,
            start: SystemTime::now(),
            attributes: Default::default(),
            request: Default::default(),
            connection_id: 1,
            grpc: false,
        })
    }
}

/// Attributes set by plugins during one request, read by the plugins after
/// them (of either ABI) and by the access log. Names weir computes itself
/// cannot be set.
#[derive(Default)]
pub struct Attributes {
    set: std::sync::Mutex<Vec<(String, Vec<u8>)>>,
    /// The decision log's time per filter, made into `weir.plugin_times` only when read.
    plugin_times: std::sync::Mutex<Vec<(Arc<dyn HttpFilter>, std::time::Duration)>>,
}

impl std::fmt::Debug for Attributes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attributes")
            .field("set", &self.all())
            .finish_non_exhaustive()
    }
}

impl Clone for Attributes {
    fn clone(&self) -> Self {
        let times = self
            .plugin_times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Attributes {
            set: std::sync::Mutex::new(self.all()),
            plugin_times: std::sync::Mutex::new(times),
        }
    }
}

impl Attributes {
    /// Sets `name`; the error says why a name is refused.
    pub fn set(&self, name: &str, value: Vec<u8>) -> Result<(), String> {
        if name.is_empty() {
            return Err("an attribute needs a name".into());
        }
        if host_owned(name) {
            return Err(format!(
                "{name:?} is computed by weir and cannot be set (use a name of your own, such as request.auth.* or a plugin prefix)"
            ));
        }
        self.set_internal(name, value);
        Ok(())
    }

    /// Sets an attribute weir itself computes (the decision log's `weir.*`).
    pub(crate) fn set_internal(&self, name: &str, value: Vec<u8>) {
        let mut all = self.set.lock().unwrap_or_else(|p| p.into_inner());
        match all.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => all.push((name.to_string(), value)),
        }
    }

    /// Records the time each filter spent, read as `weir.plugin_times`.
    pub(crate) fn set_plugin_times(&self, times: Vec<(Arc<dyn HttpFilter>, std::time::Duration)>) {
        *self.plugin_times.lock().unwrap_or_else(|p| p.into_inner()) = times;
    }

    /// The value of `name`, if a plugin (or weir's decision log) set it.
    pub fn get(&self, name: &str) -> Option<Vec<u8>> {
        if name == "weir.plugin_times" {
            let times = self.plugin_times.lock().unwrap_or_else(|p| p.into_inner());
            if times.is_empty() {
                return None;
            }
            // µs per filter, as a JSON object.
            let map: serde_json::Map<String, serde_json::Value> = times
                .iter()
                .map(|(f, d)| {
                    (
                        f.name().to_string(),
                        serde_json::Value::from(d.as_micros() as u64),
                    )
                })
                .collect();
            return Some(serde_json::Value::Object(map).to_string().into_bytes());
        }
        let all = self.set.lock().unwrap_or_else(|p| p.into_inner());
        all.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }

    /// Every attribute plugins set, in the order first set.
    pub fn all(&self) -> Vec<(String, Vec<u8>)> {
        self.set.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Whether weir computes `name` itself (plugins cannot set it).
pub fn host_owned(name: &str) -> bool {
    if name.starts_with("request.auth.") {
        return false;
    }
    const PREFIXES: [&str; 8] = [
        "weir.",
        "request.",
        "response.",
        "source.",
        "destination.",
        "connection.",
        "upstream.",
        "xds.",
    ];
    const NAMES: [&str; 5] = [
        "plugin_name",
        "plugin_root_id",
        "plugin_vm_id",
        "route_name",
        "cluster_name",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}

/// What the log phase can read about the finished exchange.
#[derive(Clone, Debug, Default)]
pub struct LogInfo {
    /// The status sent downstream.
    pub status: u16,
    /// The route taken, if any (shared: every filter of the chain keeps a copy).
    pub route: Option<Arc<str>>,
    /// The cluster used, if any.
    pub cluster: Option<Arc<str>>,
    /// The response headers as sent downstream, kept when a filter asked for
    /// the request's snapshot (proxy-wasm's `on_log` reads them, as in Envoy).
    pub response_headers: Option<Arc<http::HeaderMap>>,
}

/// What a streaming body filter decides about the bytes it holds.
#[derive(Clone, Debug)]
pub enum BodyAction {
    /// Pass on what is buffered now.
    Continue,
    /// Keep buffering; the next call sees these bytes and the next chunk together.
    /// At the end of the stream, what is buffered is passed on regardless.
    Buffer,
    /// Answer the client with this instead. On a request body the upstream
    /// request is abandoned and the client gets this response (through the
    /// response filters, as in Envoy); on a response body whose head has
    /// already gone to the client the stream is reset, as Envoy does.
    Respond(LocalResponse),
}

/// Sees a body chunk by chunk as it streams, without holding it whole.
pub trait BodyFilter: Send {
    /// `data` holds the bytes not yet passed on (earlier buffered ones first);
    /// the filter may change them. `end_of_stream` on the last call.
    fn on_data(&mut self, data: &mut Bytes, end_of_stream: bool) -> Result<BodyAction, String>;
    /// The body ended with trailers (after the last data, which had
    /// `end_of_stream` unset); the filter may change them, or answer the
    /// client instead (`Some`, with the same meaning as [`BodyAction::Respond`]).
    fn on_trailers(
        &mut self,
        _trailers: &mut http::HeaderMap,
    ) -> Result<Option<LocalResponse>, String> {
        Ok(None)
    }
    /// Trailers the filter created in its last data call (`end_of_stream`
    /// set) of a body that had none: the body then ends with them, and the
    /// filters after this one see that data with `end_of_stream` unset and
    /// then the trailers, as in Envoy. Asked once, after that call.
    fn added_trailers(&mut self) -> Option<http::HeaderMap> {
        None
    }
}

/// A filter type: makes one [`StreamFilter`] per request.
pub trait HttpFilter: Send + Sync {
    /// Name for logs, metrics and errors.
    fn name(&self) -> &str;
    /// A fresh per-request filter.
    fn new_stream(&self, info: &Arc<StreamInfo>) -> Box<dyn StreamFilter>;
}

/// A filter's state for one request. Every phase defaults to [`Action::Continue`].
pub trait StreamFilter: Send {
    /// The request head arrived; `end_of_stream` when no body follows. The
    /// head comes boxed, as it travels upstream: a filter that must keep it
    /// for a while (proxy-wasm lends it to its instance) swaps a pointer.
    fn on_request_headers<'a>(
        &'a mut self,
        _head: &'a mut crate::upstream::Head,
        _end_of_stream: bool,
    ) -> FilterFuture<'a> {
        decided(Action::Continue)
    }
    /// The whole request body (after [`Action::StopAndBuffer`] on the headers).
    fn on_request_body<'a>(
        &'a mut self,
        _body: &'a mut Bytes,
        _end_of_stream: bool,
    ) -> FilterFuture<'a> {
        decided(Action::Continue)
    }
    /// The response head arrived.
    fn on_response_headers<'a>(
        &'a mut self,
        _head: &'a mut http::response::Parts,
        _end_of_stream: bool,
    ) -> FilterFuture<'a> {
        decided(Action::Continue)
    }
    /// The whole response body (after [`Action::StopAndBuffer`] on the headers).
    fn on_response_body<'a>(
        &'a mut self,
        _body: &'a mut Bytes,
        _end_of_stream: bool,
    ) -> FilterFuture<'a> {
        decided(Action::Continue)
    }
    /// A filter for the request body as it streams, if this filter looks at it.
    fn request_body_filter(&mut self) -> Option<Box<dyn BodyFilter>> {
        None
    }
    /// A filter for the response body as it streams, if this filter looks at it.
    fn response_body_filter(&mut self) -> Option<Box<dyn BodyFilter>> {
        None
    }
    /// The exchange is over; record what you want recorded.
    fn on_log(&mut self, _info: &LogInfo) {}
}

/// One filter in a chain, and the routes it is attached to.
#[derive(Clone)]
pub struct ChainEntry {
    /// The filter.
    pub filter: Arc<dyn HttpFilter>,
    /// Route names it runs on; `None` for every route.
    pub routes: Option<Arc<[String]>>,
}

/// An ordered list of filters, shared by all requests of one chain version.
#[derive(Clone, Default)]
pub struct FilterChain {
    entries: Vec<ChainEntry>,
    /// Whether some filter is attached to some routes only.
    by_route: bool,
}

impl FilterChain {
    /// A chain of these filters, in request order, each on every route.
    pub fn new(filters: Vec<Arc<dyn HttpFilter>>) -> FilterChain {
        Self::with_entries(
            filters
                .into_iter()
                .map(|filter| ChainEntry {
                    filter,
                    routes: None,
                })
                .collect(),
        )
    }

    /// A chain of these entries, in request order.
    pub fn with_entries(entries: Vec<ChainEntry>) -> FilterChain {
        FilterChain {
            by_route: entries.iter().any(|e| e.routes.is_some()),
            entries,
        }
    }

    /// Whether the chain has no filters (then the proxy skips it entirely).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a filter is attached to some routes only, so the request
    /// phase needs to know the route.
    pub fn by_route(&self) -> bool {
        self.by_route
    }

    /// The filters' names, in request order.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.filter.name()).collect()
    }

    /// Per-request state for every filter of the chain.
    pub fn start(&self, info: &Arc<StreamInfo>) -> ChainStream {
        ChainStream {
            info: info.clone(),
            streams: self
                .entries
                .iter()
                .map(|e| Stage {
                    filter: e.filter.clone(),
                    stream: e.filter.new_stream(info),
                    routes: e.routes.clone(),
                    active: true,
                    spent: std::time::Duration::ZERO,
                })
                .collect(),
        }
    }
}

struct Stage {
    filter: Arc<dyn HttpFilter>,
    stream: Box<dyn StreamFilter>,
    routes: Option<Arc<[String]>>,
    /// False once skipped because the request's route is not one of its routes.
    active: bool,
    /// Time spent in this filter's callbacks for this request.
    spent: std::time::Duration,
}

/// The chain's state for one request.
pub struct ChainStream {
    info: Arc<StreamInfo>,
    streams: Vec<Stage>,
}

/// Runs one filter callback, adding its time to the stage.
macro_rules! timed {
    ($stage:expr, $call:expr) => {{
        let t = quanta::Instant::now();
        let out = $call;
        $stage.spent += t.elapsed();
        out
    }};
}

impl ChainStream {
    /// What the request's filters learn after its head (upstream, snapshot).
    pub fn snapshot(&self) -> &RequestSnapshot {
        &self.info.request
    }

    /// `body`, a request body still to come, with the trailers it ends with
    /// recorded in the snapshot when a filter of the request asked for it.
    pub fn record_request_trailers(&self, body: crate::body::Body) -> crate::body::Body {
        if !self.info.request.wanted() || http_body::Body::is_end_stream(&body) {
            return body;
        }
        crate::body::Guarded::wrap(body, RequestTrailers(self.info.request.clone()))
    }

    /// Records the trailers the response ended with, when a filter of the
    /// request asked for the snapshot.
    pub fn response_trailers(&self, trailers: &http::HeaderMap) {
        if self.info.request.wanted() {
            self.info.request.set_trailers(true, trailers);
        }
    }

    /// Runs the request-headers phase, in order. A filter attached to some
    /// routes runs only when `route_of` (the route the request, as changed by
    /// the filters before it, would take) names one of them. `Err` carries a
    /// local response.
    pub async fn request_headers<'r>(
        &mut self,
        head: &mut crate::upstream::Head,
        eos: bool,
        route_of: &(dyn Fn(&http::request::Parts) -> Option<&'r str> + Sync),
    ) -> Result<bool, LocalResponse> {
        let mut outcome = Ok(false);
        for s in self.streams.iter_mut() {
            if let Some(routes) = &s.routes {
                let route = route_of(head);
                if !route.is_some_and(|r| routes.iter().any(|n| n == r)) {
                    s.active = false;
                    continue;
                }
            }
            match settle(timed!(s, s.stream.on_request_headers(head, eos).await)) {
                Settled::Continue => {}
                Settled::Buffer => outcome = Ok(true),
                Settled::Respond(r) => {
                    outcome = Err(answered(&self.info, r));
                    break;
                }
            }
        }
        self.info.request.take(head, self.info.tls);
        outcome
    }

    /// Records that `r` answers the request (a filter's local response made
    /// outside the chain's own phases, e.g. from a streaming request body).
    pub fn answered(&self, r: LocalResponse) -> LocalResponse {
        answered(&self.info, r)
    }

    fn active(&mut self) -> impl DoubleEndedIterator<Item = &mut Stage> {
        self.streams.iter_mut().filter(|s| s.active)
    }

    /// Runs the request-body phase over a whole body, in order.
    pub async fn request_body(&mut self, body: &mut Bytes) -> Result<(), LocalResponse> {
        let info = self.info.clone();
        for s in self.active() {
            if let Settled::Respond(r) =
                settle(timed!(s, s.stream.on_request_body(body, true).await))
            {
                return Err(answered(&info, r));
            }
        }
        Ok(())
    }

    /// Runs the response-headers phase, in reverse order.
    pub async fn response_headers(
        &mut self,
        head: &mut http::response::Parts,
        eos: bool,
    ) -> Result<bool, LocalResponse> {
        let mut wants_body = false;
        let info = self.info.clone();
        for s in self.active().rev() {
            match settle(timed!(s, s.stream.on_response_headers(head, eos).await)) {
                Settled::Continue => {}
                Settled::Buffer => wants_body = true,
                Settled::Respond(r) => return Err(answered(&info, r)),
            }
        }
        Ok(wants_body)
    }

    /// Runs the response-body phase over a whole body, in reverse order.
    pub async fn response_body(&mut self, body: &mut Bytes) -> Result<(), LocalResponse> {
        let info = self.info.clone();
        for s in self.active().rev() {
            if let Settled::Respond(r) =
                settle(timed!(s, s.stream.on_response_body(body, true).await))
            {
                return Err(answered(&info, r));
            }
        }
        Ok(())
    }

    /// Streaming filters for the request body, in request order.
    pub fn request_body_filters(&mut self) -> Vec<Box<dyn BodyFilter>> {
        self.active()
            .filter_map(|s| s.stream.request_body_filter())
            .collect()
    }

    /// Streaming filters for the response body, in response order (reverse).
    pub fn response_body_filters(&mut self) -> Vec<Box<dyn BodyFilter>> {
        self.active()
            .rev()
            .filter_map(|s| s.stream.response_body_filter())
            .collect()
    }

    /// Runs the log phase on every filter that ran. Before it, the decision
    /// log's `weir.plugin_times` (µs each filter spent on the request) is
    /// recorded for them to read.
    pub fn log(&mut self, info: &LogInfo) {
        self.info.attributes.set_plugin_times(
            self.streams
                .iter()
                .filter(|s| s.active)
                .map(|s| (s.filter.clone(), s.spent))
                .collect(),
        );
        for s in self.active() {
            s.stream.on_log(info);
        }
    }
}

/// The guard of a request body that records the trailers it ends with.
struct RequestTrailers(Arc<RequestSnapshot>);

impl crate::body::Guard for RequestTrailers {
    fn trailers(&mut self, trailers: &http::HeaderMap) {
        self.0.set_trailers(false, trailers);
    }
}

/// Records which filter answered locally, and with what status
/// (`weir.answered_by`, `weir.answered_status`), for the decision log.
fn answered(info: &StreamInfo, r: LocalResponse) -> LocalResponse {
    info.attributes
        .set_internal("weir.answered_by", r.by.clone().into_bytes());
    info.attributes.set_internal(
        "weir.answered_status",
        r.status.as_str().as_bytes().to_vec(),
    );
    r
}

enum Settled {
    Continue,
    Buffer,
    Respond(LocalResponse),
}

fn settle(action: Action) -> Settled {
    match action {
        Action::Continue => Settled::Continue,
        Action::StopAndBuffer => Settled::Buffer,
        Action::Respond(r) => Settled::Respond(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tag(&'static str, Option<u16>);
    struct TagStream(&'static str, Option<u16>);
    impl HttpFilter for Tag {
        fn name(&self) -> &str {
            self.0
        }
        fn new_stream(&self, _: &Arc<StreamInfo>) -> Box<dyn StreamFilter> {
            Box::new(TagStream(self.0, self.1))
        }
    }
    impl StreamFilter for TagStream {
        fn on_request_headers<'a>(
            &'a mut self,
            head: &'a mut crate::upstream::Head,
            _: bool,
        ) -> FilterFuture<'a> {
            head.headers
                .append("x-order", HeaderValue::from_static(self.0));
            // Wait, then decide, as a filter waiting on a call would.
            FilterFuture::wait(async move {
                tokio::task::yield_now().await;
                match self.1 {
                    Some(status) => Action::Respond(LocalResponse {
                        status: StatusCode::from_u16(status).unwrap(),
                        headers: vec![],
                        body: Bytes::from_static(b"denied"),
                        by: self.0.to_string(),
                    }),
                    None => Action::Continue,
                }
            })
        }
        fn on_response_headers<'a>(
            &'a mut self,
            head: &'a mut http::response::Parts,
            _: bool,
        ) -> FilterFuture<'a> {
            head.headers
                .append("x-order", HeaderValue::from_static(self.0));
            decided(Action::Continue)
        }
    }

    fn info() -> Arc<StreamInfo> {
        StreamInfo::for_test()
    }

    #[tokio::test]
    async fn the_request_is_kept_for_later_phases_only_when_a_filter_wants_it() {
        let chain = FilterChain::new(vec![Arc::new(Tag("a", None))]);
        let head = || {
            Box::new(
                http::Request::get("/x?y=1")
                    .body(())
                    .unwrap()
                    .into_parts()
                    .0,
            )
        };
        // No filter asked: nothing is taken.
        let quiet = info();
        chain
            .start(&quiet)
            .request_headers(&mut head(), true, &|_| None)
            .await
            .unwrap();
        assert!(quiet.request.get().is_none());
        // Asked: the head as the chain left it, seen by a copy of the info
        // made before the phase ended (a shadow plugin's).
        let asked = info();
        asked.request.want();
        let copy = (*asked).clone();
        chain
            .start(&asked)
            .request_headers(&mut head(), true, &|_| None)
            .await
            .unwrap();
        assert_eq!(asked.request.get().map(|f| f.path()), Some("/x?y=1"));
        assert_eq!(copy.request.get().map(|f| f.path()), Some("/x?y=1"));
    }

    #[tokio::test]
    async fn requests_in_order_responses_in_reverse_and_local_answers_stop_the_chain() {
        let chain = FilterChain::new(vec![
            Arc::new(Tag("a", None)),
            Arc::new(Tag("b", Some(403))),
            Arc::new(Tag("c", None)),
        ]);
        let mut s = chain.start(&info());
        let mut head = Box::new(http::Request::new(()).into_parts().0);
        let r = s
            .request_headers(&mut head, true, &|_| None)
            .await
            .unwrap_err();
        assert_eq!((r.status.as_u16(), r.by.as_str()), (403, "b"));
        let order: Vec<_> = head
            .headers
            .get_all("x-order")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(order, ["a", "b"]);
        let (mut resp, ()) = http::Response::new(()).into_parts();
        s.response_headers(&mut resp, true).await.unwrap();
        let order: Vec<_> = resp
            .headers
            .get_all("x-order")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(order, ["c", "b", "a"]);
    }
}
