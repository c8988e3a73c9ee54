//! The request path: listener limits, filter chain, router, upstream, and
//! back. [`serve`] is the hyper service every listener runs.

mod checks;
pub mod headers;
pub mod path;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use xxhash_rust::xxh3::xxh3_64;

use crate::body::{self, Body, BoxError, Guarded};
use crate::config::{HashOn, LbPolicy, ListenerConfig, RouteAction, RouteConfig};
use crate::error::ProxyError;
use crate::filter::{ChainStream, LocalResponse};
use crate::router::{RequestView, pick_weighted};
use crate::runtime::Runtime;
use crate::telemetry::Metrics;
use crate::upstream::lb::ActiveGuard;
use crate::upstream::{Cluster, Head, retry};
use checks::{check_head, response_framing_error};

/// Bodies up to this size are kept so that a failed attempt can be retried.
const RETRY_BUFFER_LIMIT: u64 = 64 * 1024;

/// State shared by every connection: the current config generation and the metrics.
pub struct Shared {
    /// The generation new requests use.
    pub runtime: ArcSwap<Runtime>,
    /// The filter chain new requests use (the plugin manager swaps it).
    pub chain: Arc<ArcSwap<crate::filter::FilterChain>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// One client connection.
pub struct Downstream {
    /// The listener it came in on.
    pub listener: Arc<ListenerConfig>,
    /// That listener's name, shared with every request's filters.
    pub listener_name: Arc<str>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's IP as an x-forwarded-for entry ([`headers::forwarded_for`]).
    pub forwarded_for: HeaderValue,
    /// The client is one of the listener's `trusted_proxies`: the
    /// x-forwarded-proto and x-forwarded-host it sends are kept.
    pub trusted: bool,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// Whether it is TLS.
    pub tls: bool,
    /// Its TLS facts (version, SNI, verified client identity), when TLS.
    pub tls_session: Option<Arc<crate::mesh::TlsSession>>,
    /// Where the client meant to connect before iptables redirected it here
    /// (transparent listeners only); `original_dst` clusters forward there.
    pub original_dst: Option<SocketAddr>,
    /// Requests in flight and the time of the last one, for the idle timeout.
    pub activity: Activity,
    /// What its listener asks of it (drain, close), see [`crate::listener::sweep`].
    pub signal: crate::listener::sweep::Signal,
    /// Its number, unique in this process (proxy-wasm's `connection.id`).
    pub id: u64,
}

/// A new downstream connection's number: 1, 2, 3, … in this process.
pub fn next_connection_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Requests in flight on a connection, when the connection was last busy,
/// and when the request head being read began.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    inflight: AtomicUsize,
    last_ms: AtomicU64,
    /// When the head being read began, in ms since `started` plus one;
    /// 0 while none is being read (a request is in flight, or the
    /// keep-alive connection waits with no byte of the next one).
    head_since: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            started: Instant::now(),
            inflight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            // The first head is awaited from the moment the connection opens.
            head_since: AtomicU64::new(1),
        }
    }
}

impl Activity {
    /// When the connection will have been idle for `idle`, or `None` while a request is in flight.
    pub fn idle_deadline(&self, idle: std::time::Duration) -> Option<Instant> {
        (self.inflight.load(Ordering::Acquire) == 0).then(|| {
            self.started
                + std::time::Duration::from_millis(self.last_ms.load(Ordering::Acquire))
                + idle
        })
    }

    /// Bytes of a request arrived: starts the head clock if no request is in
    /// flight and the clock is not running yet.
    pub fn request_bytes_arrived(&self) {
        if self.inflight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == 0
        {
            let ms = self.started.elapsed().as_millis() as u64;
            self.head_since.store(ms + 1, Ordering::Release);
        }
    }

    /// Stops the head clock for good: an HTTP/2 connection, whose frames
    /// between requests are no request head, is left to the idle timeout.
    pub fn stop_head_clock(&self) {
        self.head_since.store(0, Ordering::Release);
    }

    /// When the head being read must be complete, `limit` after it began;
    /// `None` when no head is being read.
    pub fn head_deadline(&self, limit: std::time::Duration) -> Option<Instant> {
        if self.inflight.load(Ordering::Acquire) != 0 {
            return None;
        }
        match self.head_since.load(Ordering::Acquire) {
            0 => None,
            since => Some(self.started + std::time::Duration::from_millis(since - 1) + limit),
        }
    }
}

struct Busy(Arc<Downstream>);

impl Busy {
    fn new(d: Arc<Downstream>) -> Busy {
        d.activity.inflight.fetch_add(1, Ordering::AcqRel);
        // The head is complete: the head clock stops.
        d.activity.head_since.store(0, Ordering::Release);
        Busy(d)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0.activity;
        a.last_ms
            .store(a.started.elapsed().as_millis() as u64, Ordering::Release);
        a.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Keeps upstream in-flight counts up until the response body ends.
struct UpstreamBusy {
    endpoint: ActiveGuard,
    cluster: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for UpstreamBusy {
    fn drop(&mut self) {
        self.cluster.dec();
    }
}

/// Runs the filters' log phase when the response body has ended (or was dropped),
/// so that streaming body filters still have their context until then.
struct LogAtEnd {
    chain: ChainStream,
    info: crate::filter::LogInfo,
}

/// The guard of a response's body: the request's bookkeeping, and its
/// filters' log phase, which learns the trailers the response ended with.
impl crate::body::Guard for (Busy, Option<UpstreamBusy>, Option<LogAtEnd>) {
    fn trailers(&mut self, trailers: &http::HeaderMap) {
        if let Some(log) = &self.2 {
            log.chain.response_trailers(trailers);
        }
    }
}

impl Drop for LogAtEnd {
    fn drop(&mut self) {
        self.chain.log(&self.info);
    }
}

/// What the metrics need to know about an exchange.
#[derive(Default)]
struct Exchange {
    original_dst: Option<SocketAddr>,
    route: Option<usize>,
    cluster: Option<Arc<Cluster>>,
    upstream: Option<UpstreamBusy>,
    chain: Option<ChainStream>,
}

/// Serves one request. Never fails: errors become responses here.
pub async fn serve(
    shared: Arc<Shared>,
    down: Arc<Downstream>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let busy = Busy::new(down.clone());
    let rt = shared.runtime.load_full();
    let mut ex = Exchange {
        original_dst: down.original_dst,
        ..Exchange::default()
    };
    // The head goes on in a box: the async functions below each keep their
    // arguments, so a 224-byte head would be copied at every level, into
    // request state that is cold when many connections are open.
    let (head, incoming) = req.into_parts();
    let mut resp = match handle(&rt, &shared, &down, Box::new(head), incoming, &mut ex).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "request failed");
            e.into_response()
        }
    };
    if let Some(route) = ex.route.map(|i| &rt.config.routes[i]) {
        route.response_headers.apply(resp.headers_mut());
    }
    let mut log = None;
    if let Some(mut chain) = ex.chain.take() {
        if let Some(up) = ex.upstream.as_ref() {
            chain.snapshot().set_upstream(up.endpoint.addr());
        }
        resp = filter_response(&mut chain, resp).await;
        let info = crate::filter::LogInfo {
            status: resp.status().as_u16(),
            route: ex.route.map(|i| rt.route_names[i].clone()),
            cluster: ex.cluster.as_ref().map(|c| c.name.clone()),
            response_headers: chain
                .snapshot()
                .wanted()
                .then(|| Arc::new(resp.headers().clone())),
        };
        log = Some(LogAtEnd { chain, info });
    }
    let stats = &rt.route_stats[ex.route.unwrap_or(rt.route_stats.len() - 1)];
    let cluster = ex.cluster.as_ref().map_or("", |c| c.config.name.as_str());
    stats.record(
        cluster,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(
        parts,
        Guarded::wrap(body, (busy, ex.upstream, log)),
    ))
}

async fn handle(
    rt: &Runtime,
    shared: &Shared,
    down: &Downstream,
    mut head: Head,
    incoming: Incoming,
    ex: &mut Exchange,
) -> Result<Response<Body>, ProxyError> {
    check_head(&down.listener, &head)?;
    if down.listener.normalize_path {
        path::normalize_uri(&mut head.uri, down.listener.merge_slashes)?;
    }
    let upgrade = if headers::is_upgrade(&head.headers) {
        head.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    headers::ensure_request_id(&mut head.headers);
    // Set before the filters, as Envoy's connection manager does: filters
    // read (and may change) the forwarding headers the upstream will get.
    let host = host_value(&head);
    headers::set_forwarded(
        &mut head.headers,
        &down.forwarded_for,
        down.tls,
        host.as_ref(),
        down.trusted,
    );
    let limit = down.listener.max_request_body;
    let mut body: Body = if incoming.is_end_stream() {
        body::empty()
    } else {
        body::boxed(body::IdleBounded::new(
            Limited::new(incoming, limit as usize),
            down.listener.stream_idle_timeout,
        ))
    };
    // Only a request body that streams through filters can be answered from.
    let mut reply = None;
    let started = {
        let chain = shared.chain.load();
        if !chain.is_empty() {
            // Filters see the request as Envoy's do: its hop-by-hop headers
            // (and an Expect weir answers) already gone. The upstream request
            // is stripped again, of what filters may have added.
            headers::strip_hop_by_hop(
                &mut head.headers,
                upgrade.is_some(),
                head.version == http::Version::HTTP_11,
            );
        }
        (!chain.is_empty()).then(|| {
            let route = find_route(rt, &down.listener.name, &head);
            let info = Arc::new(crate::filter::StreamInfo {
                route: route.map(|i| rt.route_names[i].clone()),
                cluster: route.and_then(|i| rt.route_clusters[i].clone()),
                listener: down.listener_name.clone(),
                peer: down.peer,
                local: down.local,
                tls: down.tls,
                tls_session: down.tls_session.clone(),
                start: std::time::SystemTime::now(),
                attributes: Default::default(),
                request: Default::default(),
                connection_id: down.id,
                grpc: headers::is_grpc(&head.headers),
            });
            (chain.start(&info), chain.by_route())
        })
    };
    if let Some((mut chain, by_route)) = started {
        let route_of = |head: &http::request::Parts| -> Option<&str> {
            if !by_route {
                return None;
            }
            find_route(rt, &down.listener.name, head).map(|i| rt.config.routes[i].name.as_str())
        };
        let wants_body = chain
            .request_headers(&mut head, body.is_end_stream(), &route_of)
            .await;
        let wants_body = match wants_body {
            Ok(w) => w,
            Err(local) => {
                ex.chain = Some(chain);
                return Ok(local_response(local));
            }
        };
        if wants_body {
            let mut bytes = collect(body, limit).await?;
            if let Err(local) = chain.request_body(&mut bytes).await {
                ex.chain = Some(chain);
                return Ok(local_response(local));
            }
            head.headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            body = body::full(bytes);
        } else if !body.is_end_stream() {
            let filters = chain.request_body_filters();
            if !filters.is_empty() {
                let slot = body::ReplySlot::default();
                reply = Some(slot.clone());
                body = body::Filtered::wrap(body, filters, limit as usize, Some(slot));
            }
            body = chain.record_request_trailers(body);
        }
        ex.chain = Some(chain);
    }
    let result = route_request(rt, down, head, body, upgrade, ex).await;
    // A request body filter answered the client itself: the upstream
    // request ended with the body, and the client gets the filter's reply.
    if let Some(local) = reply.as_ref().and_then(body::ReplySlot::take) {
        ex.upstream = None;
        // Recorded for the decision log like an answer from a headers callback.
        let local = match &ex.chain {
            Some(chain) => chain.answered(local),
            None => local,
        };
        return Ok(local_response(local));
    }
    result
}

/// Routes a filtered request head and sends it with its body where the
/// route says.
async fn route_request(
    rt: &Runtime,
    down: &Downstream,
    mut head: Head,
    body: Body,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    ex: &mut Exchange,
) -> Result<Response<Body>, ProxyError> {
    let limit = down.listener.max_request_body;
    let host_value = host_value(&head);
    let host_value = host_value.as_ref();
    let host = host_value.and_then(|v| v.to_str().ok()).unwrap_or("");
    let Some(index) = find_route(rt, &down.listener.name, &head) else {
        return Err(ProxyError::NoRoute {
            method: head.method.to_string(),
            host: host.to_string(),
            path: head.uri.path().to_string(),
        });
    };
    ex.route = Some(index);
    let route = &rt.config.routes[index];
    let cluster_name = match &route.action {
        RouteAction::Direct {
            status,
            headers,
            body,
        } => {
            let mut resp = Response::new(body::full(body.clone()));
            *resp.status_mut() = *status;
            resp.headers_mut().extend(headers.iter().cloned());
            return Ok(resp);
        }
        RouteAction::Redirect {
            status,
            scheme,
            host: new_host,
            path,
        } => {
            return Ok(redirect(
                &head,
                down.tls,
                host,
                *status,
                scheme.as_deref(),
                new_host.as_deref(),
                path.as_deref(),
            ));
        }
        RouteAction::Echo => {
            prepare_upstream_request(&mut head, route, host_value, false);
            let bytes = collect(body, limit).await?;
            return Ok(crate::echo::respond(
                &head,
                &bytes,
                &route.name,
                &down.listener.name,
                down.peer,
            ));
        }
        RouteAction::Cluster(name) => name.as_str(),
        RouteAction::Weighted { clusters, sticky } => {
            let point = sticky
                .as_ref()
                .and_then(|s| hash_key(s, &head, down))
                .unwrap_or_else(rand::random);
            pick_weighted(clusters, point)
        }
    };
    let cluster = rt
        .clusters
        .get(cluster_name)
        .ok_or_else(|| ProxyError::Internal {
            reason: format!(
                "route {:?} names cluster {cluster_name:?}, which is not built",
                route.name
            ),
        })?
        .clone();
    ex.cluster = Some(cluster.clone());
    prepare_upstream_request(&mut head, route, host_value, upgrade.is_some());
    let hash = match cluster.config.lb {
        LbPolicy::RingHash | LbPolicy::Maglev => {
            hash_key(&cluster.config.hash_on, &head, down).map(|h| h ^ 0x9e37_79b9_7f4a_7c15)
        }
        LbPolicy::RoundRobin | LbPolicy::LeastRequest | LbPolicy::Random => None,
    };
    let mut resp = forward(route, &cluster, head, body, hash, &down.listener, ex).await?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(on_downstream) = upgrade else {
            return Err(ProxyError::BadUpstreamResponse {
                route: route.name.clone(),
                cluster: cluster.config.name.clone(),
                reason: "the upstream switched protocols on a request that asked for no upgrade (weir tunnels WebSocket upgrades only)".into(),
            });
        };
        tunnel(on_downstream, hyper::upgrade::on(&mut resp));
    }
    Ok(resp)
}

/// The route a request head takes on `listener`: the router's first match.
fn find_route(rt: &Runtime, listener: &str, head: &http::request::Parts) -> Option<usize> {
    rt.router.find(&RequestView {
        listener,
        method: &head.method,
        host: strip_port(request_host(head)),
        path: head.uri.path(),
        query: head.uri.query(),
        headers: &head.headers,
    })
}

/// The request's host as a header value: the Host header's own (a
/// reference count), or the URI's authority (HTTP/2, absolute-form requests)
/// copied once.
fn host_value(head: &http::request::Parts) -> Option<HeaderValue> {
    match head.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => head.headers.get(header::HOST).cloned(),
    }
}

fn request_host(head: &http::request::Parts) -> &str {
    head.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| head.headers.get(header::HOST).and_then(|v| v.to_str().ok()))
        .unwrap_or("")
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

fn prepare_upstream_request(
    head: &mut http::request::Parts,
    route: &RouteConfig,
    host: Option<&HeaderValue>,
    upgrade: bool,
) {
    headers::strip_hop_by_hop(
        &mut head.headers,
        upgrade,
        head.version == http::Version::HTTP_11,
    );
    match (&route.host_rewrite, host) {
        (Some(h), _) => {
            head.headers.insert(header::HOST, h.clone());
        }
        // The Host header is already the request's host.
        (None, Some(_)) if head.uri.authority().is_none() => {}
        (None, h) => {
            let h = h.cloned().unwrap_or(HeaderValue::from_static(""));
            head.headers.insert(header::HOST, h);
        }
    }
    route.request_headers.apply(&mut head.headers);
    if let (Some(rewrite), Some(crate::config::PathMatch::Prefix(prefix))) =
        (&route.prefix_rewrite, &route.matcher.path)
    {
        let rest = head.uri.path().get(prefix.len()..).unwrap_or("");
        let mut path = format!("{rewrite}{rest}");
        if path.is_empty() {
            path.push('/');
        }
        if let Some(q) = head.uri.query() {
            path = format!("{path}?{q}");
        }
        if let Ok(pq) = path.parse::<http::uri::PathAndQuery>() {
            let mut parts = head.uri.clone().into_parts();
            parts.path_and_query = Some(pq);
            if let Ok(uri) = http::Uri::from_parts(parts) {
                head.uri = uri;
            }
        }
    }
}

fn hash_key(on: &HashOn, head: &http::request::Parts, down: &Downstream) -> Option<u64> {
    match on {
        HashOn::Header(name) => head.headers.get(name).map(|v| xxh3_64(v.as_bytes())),
        HashOn::Cookie(name) => head
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| xxh3_64(v.as_bytes())),
        HashOn::SourceIp => Some(match down.peer.ip() {
            std::net::IpAddr::V4(ip) => xxh3_64(&ip.octets()),
            std::net::IpAddr::V6(ip) => xxh3_64(&ip.octets()),
        }),
    }
}

async fn forward(
    route: &RouteConfig,
    cluster: &Arc<Cluster>,
    head: Head,
    body: Body,
    hash: Option<u64>,
    listener: &ListenerConfig,
    ex: &mut Exchange,
) -> Result<Response<Body>, ProxyError> {
    let body_limit = listener.max_request_body;
    let policy = route
        .retry
        .as_ref()
        .filter(|p| p.attempts > 1 && retry::method_allowed(p, &head.method));
    let small = body
        .size_hint()
        .upper()
        .is_some_and(|n| n <= RETRY_BUFFER_LIMIT);
    let (replay, body) = match policy {
        Some(_) if body.is_end_stream() => (Some(Bytes::new()), body::empty()),
        Some(_) if small => (
            Some(collect(body, RETRY_BUFFER_LIMIT).await?),
            body::empty(),
        ),
        _ => (None, body),
    };
    let attempts = if replay.is_some() {
        policy.map_or(1, |p| p.attempts)
    } else {
        1
    };
    let mut single = Some((head, body));
    let run = async {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= attempts;
            let endpoint =
                cluster
                    .pick_for(hash, ex.original_dst)
                    .ok_or_else(|| ProxyError::NoEndpoint {
                        route: route.name.clone(),
                        cluster: cluster.config.name.clone(),
                    })?;
            let (mut head, body) = match &replay {
                Some(bytes) => {
                    let (h, _) = single.as_ref().expect("the head is kept while retrying");
                    let (mut parts, ()) = Request::new(()).into_parts();
                    parts.method = h.method.clone();
                    parts.headers = h.headers.clone();
                    parts.uri = h.uri.clone();
                    (Box::new(parts), body::full(bytes.clone()))
                }
                None => single.take().expect("a streamed body is sent once"),
            };
            head.version = cluster.version();
            let guard = ActiveGuard::new(endpoint.clone());
            cluster.active.inc();
            let busy = UpstreamBusy {
                endpoint: guard,
                cluster: cluster.active.clone(),
            };
            // The send is made where it is awaited: a future made first and
            // awaited after is copied once more into this one's state.
            let result = match policy.and_then(|p| p.per_try_timeout) {
                Some(t) => match tokio::time::timeout(t, cluster.send(&endpoint, head, body)).await
                {
                    Ok(r) => r.map_err(|e| classify(route, cluster, body_limit, e)),
                    Err(_) => Err(ProxyError::UpstreamTimeout {
                        route: route.name.clone(),
                        cluster: cluster.config.name.clone(),
                        after: t,
                    }),
                },
                None => cluster
                    .send(&endpoint, head, body)
                    .await
                    .map_err(|e| classify(route, cluster, body_limit, e)),
            };
            let retry_policy = policy.filter(|_| !last);
            match result {
                Ok(resp)
                    if retry_policy.is_some_and(|p| retry::status_retried(p, resp.status())) =>
                {
                    tracing::debug!(route.name = %route.name, status = %resp.status(), attempt, "retrying");
                }
                Ok(resp) => return Ok((resp, busy)),
                Err(e) if retry_policy.is_some_and(|p| retry::error_retried(p, &e)) => {
                    tracing::debug!(route.name = %route.name, error = %e, attempt, "retrying");
                }
                Err(e) => return Err(e),
            }
            drop(busy);
            if let Some(p) = policy {
                tokio::time::sleep(retry::backoff(p, attempt)).await;
            }
        }
    };
    let (resp, busy) = match tokio::time::timeout(route.timeout, run).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ProxyError::UpstreamTimeout {
                route: route.name.clone(),
                cluster: cluster.config.name.clone(),
                after: route.timeout,
            });
        }
    };
    ex.upstream = Some(busy);
    let (mut parts, mut incoming) = resp.into_parts();
    if let Some(reason) = response_framing_error(parts.status, &parts.headers) {
        // What follows on the connection is not known to be a response.
        incoming.close_connection();
        return Err(ProxyError::BadUpstreamResponse {
            route: route.name.clone(),
            cluster: cluster.config.name.clone(),
            reason,
        });
    }
    // weir speaks its own HTTP version to the client (RFC 9110, section
    // 6.2): an HTTP/1.0 upstream's response goes to an HTTP/1.1 client as
    // HTTP/1.1, chunked when it has no length, and the connection stays open.
    parts.version = http::Version::HTTP_11;
    let upgraded = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(&mut parts.headers, upgraded, false);
    Ok(Response::from_parts(
        parts,
        body::boxed(body::IdleBounded::new(
            incoming,
            listener.stream_idle_timeout,
        )),
    ))
}

fn classify(
    route: &RouteConfig,
    cluster: &Cluster,
    body_limit: u64,
    e: crate::upstream::SendError,
) -> ProxyError {
    let reason = error_chain(&e);
    let (r, c) = (route.name.clone(), cluster.config.name.clone());
    if e.is_connect() {
        return ProxyError::ConnectFailed {
            route: r,
            cluster: c,
            reason,
        };
    }
    if let Some(cause) = request_body_cause(std::error::Error::source(&e), body_limit) {
        return cause;
    }
    if let crate::upstream::SendError::Request(h) = &e
        && h.is_parse_too_large()
    {
        return ProxyError::BadUpstreamResponse {
            route: r,
            cluster: c,
            reason: format!(
                "its response head is larger than the cluster's max_response_header_size ({} bytes)",
                cluster.config.max_response_header_size
            ),
        };
    }
    ProxyError::UpstreamReset {
        route: r,
        cluster: c,
        reason,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    out
}

/// Collects a body of at most `limit` bytes.
async fn collect(mut body: Body, limit: u64) -> Result<Bytes, ProxyError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| body_error(e, limit))?;
        if let Ok(data) = frame.into_data() {
            if (buf.len() + data.len()) as u64 > limit {
                return Err(ProxyError::BodyTooLarge { limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// The client's part in a failure, found in an error's causes: a request
/// body over the limit (413) or stalled past `stream_idle_timeout` (408).
fn request_body_cause(
    mut src: Option<&(dyn std::error::Error + 'static)>,
    limit: u64,
) -> Option<ProxyError> {
    while let Some(s) = src {
        if s.is::<LengthLimitError>() {
            return Some(ProxyError::BodyTooLarge { limit });
        }
        if let Some(idle) = s.downcast_ref::<body::StreamIdle>() {
            return Some(ProxyError::BodyTimeout { after: idle.0 });
        }
        src = s.source();
    }
    None
}

fn body_error(e: BoxError, limit: u64) -> ProxyError {
    if let Some(cause) = request_body_cause(Some(e.as_ref()), limit) {
        return cause;
    }
    ProxyError::BadRequest {
        reason: format!("reading the request body failed: {e}"),
    }
}

/// A filter's local response. Its length is always said (as Envoy says it),
/// also when response filters will stream its body.
fn local_response(local: LocalResponse) -> Response<Body> {
    let len = HeaderValue::from(local.body.len());
    let mut resp = Response::new(body::full(local.body));
    *resp.status_mut() = local.status;
    let headers = resp.headers_mut();
    headers.extend(local.headers);
    headers.insert(header::CONTENT_LENGTH, len);
    resp
}

async fn filter_response(chain: &mut ChainStream, resp: Response<Body>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let wants_body = match chain
        .response_headers(&mut parts, body.is_end_stream())
        .await
    {
        Ok(w) => w,
        Err(local) => return local_response(local),
    };
    if !wants_body {
        if body.is_end_stream() {
            return Response::from_parts(parts, body);
        }
        return Response::from_parts(
            parts,
            body::Filtered::wrap(
                body,
                chain.response_body_filters(),
                body::RESPONSE_BUFFER_LIMIT,
                None,
            ),
        );
    }
    let mut bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return ProxyError::Internal {
                reason: format!("reading the response body failed: {e}"),
            }
            .into_response();
        }
    };
    if let Err(local) = chain.response_body(&mut bytes).await {
        return local_response(local);
    }
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Response::from_parts(parts, body::full(bytes))
}

fn redirect(
    head: &http::request::Parts,
    tls: bool,
    host: &str,
    status: StatusCode,
    scheme: Option<&str>,
    new_host: Option<&str>,
    path: Option<&str>,
) -> Response<Body> {
    let scheme = scheme.unwrap_or(if tls { "https" } else { "http" });
    let host = new_host.unwrap_or(host);
    let path = path.unwrap_or(head.uri.path());
    let query = head
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let location = format!("{scheme}://{host}{path}{query}");
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Joins an upgraded client connection to the upgraded upstream one.
fn tunnel(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut down = hyper_util::rt::TokioIo::new(down);
        let mut up = hyper_util::rt::TokioIo::new(up);
        if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}
