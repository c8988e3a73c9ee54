//! What a component instance is given: the store's data (WASI with nothing
//! granted, limits, the message the current callback may touch) and the
//! host functions of the `weir:filter` world it imports.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use wasmtime::StoreLimits;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::filter::{LogInfo, StreamInfo};
use crate::plugin::engine;
use crate::plugin::host::{HostServices, MetricKind, PluginMetric};

use super::{WORLD, output, weir, wit};

/// What the current callback may touch.
#[derive(Default)]
pub(super) struct Current {
    pub(super) request: Option<http::request::Parts>,
    pub(super) response: Option<http::response::Parts>,
    pub(super) info: Option<Arc<StreamInfo>>,
    /// In on-done: how the exchange ended.
    pub(super) log: Option<LogInfo>,
}

/// The store's data: WASI with nothing granted, limits, and the current message.
pub struct State {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: StoreLimits,
    pub(super) memory_limit: u64,
    /// Linear memory the instance holds, in bytes (as its memories grew).
    pub(super) memory_now: u64,
    /// The plugin's memory over all its instances (this one's share is
    /// taken back when the instance is dropped).
    pub(super) memory_total: Arc<AtomicU64>,
    /// Whether the current callback may wait for an outbound call.
    pub(super) may_wait: bool,
    /// When the current callback was entered, how long it waited for
    /// outbound calls, and its CPU limit: the epoch callback traps once
    /// `entered.elapsed() - waited` passes `cpu_limit`.
    pub(super) entered: Instant,
    pub(super) waited: Duration,
    pub(super) cpu_limit: Duration,
    /// Past `cpu_limit` on the wall clock: whether the callback burns CPU.
    pub(super) cpu_check: engine::CpuCheck,
    pub(super) plugin: Arc<str>,
    pub(super) vm_id: Arc<str>,
    pub(super) host: Arc<HostServices>,
    pub(super) current: Current,
    pub(super) metrics: std::collections::HashMap<(String, u8), PluginMetric>,
    /// Labeled metrics by name and label set: a plugin records the same few
    /// label sets over and over, and this skips the process-wide lookup.
    pub(super) labeled_counters: std::collections::HashMap<(String, Labels), Counter>,
    pub(super) labeled_histograms: std::collections::HashMap<(String, Labels), Histogram>,
    /// The phases the plugin declared it does nothing in (`callbacks.skip`),
    /// shared by its instances: [`Skip`] bits.
    pub(super) skip: Arc<AtomicU8>,
}

/// Bits of the phases a plugin declared unused (`weir:filter/callbacks`).
pub(super) struct Skip;

impl Skip {
    pub(super) const REQUEST_HEADERS: u8 = 1;
    pub(super) const REQUEST_BODY: u8 = 2;
    pub(super) const RESPONSE_HEADERS: u8 = 4;
    pub(super) const RESPONSE_BODY: u8 = 8;
    pub(super) const DONE: u8 = 16;

    pub(super) fn body(dir: wit::Direction) -> u8 {
        match dir {
            wit::Direction::Request => Skip::REQUEST_BODY,
            wit::Direction::Response => Skip::RESPONSE_BODY,
        }
    }
}

type Labels = Vec<(String, String)>;

/// Labeled metrics an instance keeps handles to; past this it forgets them
/// all and starts over (each one is capped process-wide anyway).
const LABELED_HANDLES: usize = 4096;

/// The handle cached under `key` in `cache`, else made by `make` and kept.
fn labeled_handle<M: Clone>(
    cache: &mut std::collections::HashMap<(String, Labels), M>,
    key: (String, Labels),
    make: impl FnOnce(&str, Labels) -> Option<M>,
) -> Option<M> {
    if let Some(m) = cache.get(&key) {
        return Some(m.clone());
    }
    let m = make(&key.0, key.1.clone())?;
    if cache.len() >= LABELED_HANDLES {
        cache.clear();
    }
    cache.insert(key, m.clone());
    Some(m)
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime::ResourceLimiter for State {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        crate::abi::check_memory_growth(desired, self.memory_limit)?;
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            let grown = desired.saturating_sub(current) as u64;
            self.memory_now += grown;
            self.memory_total.fetch_add(grown, Ordering::Relaxed);
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

fn header_list<'a>(
    map: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) -> Vec<wit::Header> {
    map.map(|(k, v)| wit::Header {
        name: k.as_str().to_string(),
        value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
    })
    .collect()
}

impl Drop for State {
    fn drop(&mut self) {
        self.memory_total
            .fetch_sub(self.memory_now, Ordering::Relaxed);
    }
}

impl State {
    /// A store's data with nothing granted: no WASI resources, no current message.
    pub(super) fn new(
        plugin: &str,
        vm_id: &str,
        host: Arc<HostServices>,
        limits: StoreLimits,
        memory_limit: u64,
        memory_total: Arc<AtomicU64>,
    ) -> State {
        let plugin: Arc<str> = plugin.into();
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .stdout(output::PluginOutput::new(
                plugin.clone(),
                output::Which::Stdout,
            ))
            .stderr(output::PluginOutput::new(
                plugin.clone(),
                output::Which::Stderr,
            ))
            .build();
        State {
            wasi,
            table: ResourceTable::new(),
            limits,
            memory_limit,
            memory_now: 0,
            memory_total,
            may_wait: false,
            entered: Instant::now(),
            cpu_check: engine::CpuCheck::default(),
            waited: Duration::ZERO,
            cpu_limit: Duration::from_secs(1),
            plugin,
            vm_id: vm_id.into(),
            host,
            current: Current::default(),
            metrics: Default::default(),
            labeled_counters: Default::default(),
            labeled_histograms: Default::default(),
            skip: Arc::default(),
        }
    }
}

impl wit::Host for State {}

impl weir::filter::http::Host for State {
    fn get_header(&mut self, which: wit::Direction, name: String) -> Option<String> {
        let name = name.to_ascii_lowercase();
        match which {
            wit::Direction::Request => {
                let r = self.current.request.as_ref()?;
                match name.as_str() {
                    ":method" => Some(r.method.to_string()),
                    ":path" => Some(
                        r.uri
                            .path_and_query()
                            .map_or("/", |p| p.as_str())
                            .to_string(),
                    ),
                    ":authority" => r
                        .uri
                        .authority()
                        .map(|a| a.to_string())
                        .or_else(|| header_text(&r.headers, "host")),
                    ":scheme" => Some(
                        r.uri
                            .scheme_str()
                            .unwrap_or(if self.current.info.as_ref().is_some_and(|i| i.tls) {
                                "https"
                            } else {
                                "http"
                            })
                            .to_string(),
                    ),
                    _ => header_text(&r.headers, &name),
                }
            }
            wit::Direction::Response => {
                let r = self.current.response.as_ref()?;
                match name.as_str() {
                    ":status" => Some(r.status.as_u16().to_string()),
                    _ => header_text(&r.headers, &name),
                }
            }
        }
    }

    fn get_headers(&mut self, which: wit::Direction) -> Vec<wit::Header> {
        let mut out = Vec::new();
        let pseudo: &[&str] = match which {
            wit::Direction::Request => &[":method", ":path", ":authority", ":scheme"],
            wit::Direction::Response => &[":status"],
        };
        for p in pseudo {
            if let Some(v) = self.get_header(which, (*p).to_string()) {
                out.push(wit::Header {
                    name: (*p).to_string(),
                    value: v,
                });
            }
        }
        match which {
            wit::Direction::Request => {
                if let Some(r) = &self.current.request {
                    out.extend(header_list(r.headers.iter()));
                }
            }
            wit::Direction::Response => {
                if let Some(r) = &self.current.response {
                    out.extend(header_list(r.headers.iter()));
                }
            }
        }
        out
    }

    fn set_header(
        &mut self,
        which: wit::Direction,
        name: String,
        value: Option<String>,
    ) -> Result<(), String> {
        self.change(which, &name, value, false)
    }

    fn add_header(
        &mut self,
        which: wit::Direction,
        name: String,
        value: String,
    ) -> Result<(), String> {
        self.change(which, &name, Some(value), true)
    }
}

fn header_text(map: &http::HeaderMap, name: &str) -> Option<String> {
    map.get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

impl State {
    fn change(
        &mut self,
        which: wit::Direction,
        name: &str,
        value: Option<String>,
        add: bool,
    ) -> Result<(), String> {
        let name = name.to_ascii_lowercase();
        let not_current = || format!("no {which:?} is current in this callback").to_lowercase();
        if let Some(pseudo) = name.strip_prefix(':') {
            let value =
                value.ok_or_else(|| format!("the pseudo-header :{pseudo} cannot be removed"))?;
            return match which {
                wit::Direction::Request => {
                    let r = self.current.request.as_mut().ok_or_else(not_current)?;
                    crate::abi::set_request_pseudo(r, pseudo, &value)
                }
                wit::Direction::Response => {
                    let r = self.current.response.as_mut().ok_or_else(not_current)?;
                    if pseudo != "status" {
                        return Err(format!("responses have no pseudo-header :{pseudo}"));
                    }
                    r.status = value
                        .parse::<u16>()
                        .ok()
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .ok_or_else(|| format!(":status {value:?} is not an HTTP status"))?;
                    Ok(())
                }
            };
        }
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a valid header name"))?;
        let headers = match which {
            wit::Direction::Request => {
                &mut self
                    .current
                    .request
                    .as_mut()
                    .ok_or_else(not_current)?
                    .headers
            }
            wit::Direction::Response => {
                &mut self
                    .current
                    .response
                    .as_mut()
                    .ok_or_else(not_current)?
                    .headers
            }
        };
        match value {
            None => {
                headers.remove(&header);
            }
            Some(v) => {
                let v = HeaderValue::from_str(&v)
                    .map_err(|_| format!("the value for {name} is not a valid header value"))?;
                if add {
                    headers.append(header, v);
                } else {
                    headers.insert(header, v);
                }
            }
        }
        Ok(())
    }
}

impl weir::filter::attributes::Host for State {
    fn set(&mut self, name: String, value: String) -> Result<(), String> {
        self.set_attribute(name, value)
    }

    fn get(&mut self, name: String) -> Option<String> {
        let info = self.current.info.clone();
        let req = self.current.request.as_ref();
        match name.as_str() {
            "plugin_name" => Some(self.plugin.to_string()),
            "plugin_vm_id" => Some(self.vm_id.to_string()),
            "request.path" => req.map(|r| {
                r.uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string()
            }),
            "request.url_path" => req.map(|r| r.uri.path().to_string()),
            "request.method" => req.map(|r| r.method.to_string()),
            "request.host" => req.and_then(|r| {
                r.uri
                    .authority()
                    .map(|a| a.to_string())
                    .or_else(|| header_text(&r.headers, "host"))
            }),
            "request.scheme" => info.map(|i| if i.tls { "https" } else { "http" }.to_string()),
            "request.id" => req.and_then(|r| header_text(&r.headers, "x-request-id")),
            "request.protocol" => req.map(|r| format!("{:?}", r.version)),
            "route_name" => self
                .current
                .log
                .as_ref()
                .and_then(|l| l.route.as_deref())
                .or_else(|| info.as_ref().and_then(|i| i.route.as_deref()))
                .map(str::to_string),
            "source.address" => info.map(|i| i.peer.to_string()),
            "source.port" => info.map(|i| i.peer.port().to_string()),
            "destination.address" => info.map(|i| i.local.to_string()),
            "destination.port" => info.map(|i| i.local.port().to_string()),
            other
                if other.starts_with("connection.")
                    || other.starts_with("source.")
                    || other.starts_with("destination.") =>
            {
                let path: Vec<&str> = other.split('.').collect();
                info.and_then(|i| crate::abi::connection_attribute(&i, &path))
                    .map(|v| match v {
                        crate::abi::ConnValue::Bool(b) => b.to_string(),
                        crate::abi::ConnValue::Text(t) => t,
                    })
            }
            "response.code" => self
                .current
                .response
                .as_ref()
                .map(|r| r.status.as_u16())
                .or(self.current.log.as_ref().map(|l| l.status))
                .map(|c| c.to_string()),
            "cluster_name" => self
                .current
                .log
                .as_ref()
                .and_then(|l| l.cluster.as_deref().map(str::to_string)),
            other => info.and_then(|i| {
                i.attributes
                    .get(other)
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
            }),
        }
    }
}

impl State {
    fn set_attribute(&mut self, name: String, value: String) -> Result<(), String> {
        let Some(info) = &self.current.info else {
            return Err("attributes can only be set while a request is current".into());
        };
        info.attributes.set(&name, value.into_bytes())
    }
}

impl weir::filter::quota::Host for State {
    async fn take(
        &mut self,
        key: String,
        cost: u32,
        limit: weir::filter::quota::Limit,
    ) -> Result<weir::filter::quota::Decision, String> {
        let started = Instant::now();
        let d = self
            .host
            .quota()
            .take_async(&key, cost, quota_limit(limit))
            .await;
        self.waited += started.elapsed();
        self.cpu_check.reset();
        d.map(quota_decision)
    }
}

fn quota_limit(limit: weir::filter::quota::Limit) -> crate::quota::Limit {
    crate::quota::Limit {
        tokens: limit.tokens,
        period: Duration::from_millis(u64::from(limit.period_ms)),
    }
}

fn quota_decision(d: crate::quota::Decision) -> weir::filter::quota::Decision {
    weir::filter::quota::Decision {
        allowed: d.allowed,
        limit: d.limit,
        remaining: d.remaining,
        retry_after_ms: d.retry_after_ms(),
        reset_ms: d.reset_ms(),
    }
}

/// Links `quota.take` as a synchronous function, for plugins called
/// synchronously: with the `local` backend a take never waits, so a plugin
/// that imports quota (and nothing else that waits) needs no fiber.
pub(super) fn link_sync_quota(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut quota = linker.instance(&format!(
        "weir:filter/quota@{}",
        &WORLD["weir:filter@".len()..]
    ))?;
    quota.func_wrap(
        "take",
        |store: wasmtime::StoreContextMut<'_, State>,
         (key, cost, limit): (String, u32, weir::filter::quota::Limit)| {
            let d = store
                .data()
                .host
                .quota()
                .take(&key, cost, quota_limit(limit));
            Ok((d.map(quota_decision),))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

impl weir::filter::callbacks::Host for State {
    fn skip(&mut self, unused: weir::filter::callbacks::Phases) {
        use weir::filter::callbacks::Phases;
        let bits = [
            (Phases::REQUEST_HEADERS, Skip::REQUEST_HEADERS),
            (Phases::REQUEST_BODY, Skip::REQUEST_BODY),
            (Phases::RESPONSE_HEADERS, Skip::RESPONSE_HEADERS),
            (Phases::RESPONSE_BODY, Skip::RESPONSE_BODY),
            (Phases::DONE, Skip::DONE),
        ]
        .into_iter()
        .filter(|(p, _)| unused.contains(*p))
        .fold(0, |acc, (_, b)| acc | b);
        let before = self.skip.fetch_or(bits, Ordering::Relaxed);
        if before | bits != before {
            tracing::debug!(plugin.name = %self.plugin, skipped = before | bits, "the plugin declared phases it does nothing in; weir no longer calls them");
        }
    }
}

impl weir::filter::log::Host for State {
    fn write(&mut self, level: wit::Level, message: String) {
        let plugin = &*self.plugin;
        match level {
            wit::Level::Trace => tracing::trace!(plugin.name = plugin, "{message}"),
            wit::Level::Debug => tracing::debug!(plugin.name = plugin, "{message}"),
            wit::Level::Info => tracing::info!(plugin.name = plugin, "{message}"),
            wit::Level::Warn => tracing::warn!(plugin.name = plugin, "{message}"),
            wit::Level::Error => tracing::error!(plugin.name = plugin, "{message}"),
        }
    }

    fn access(&mut self, line: String) {
        self.host.access_log(&line);
    }

    fn enabled(&mut self, level: wit::Level) -> bool {
        match level {
            wit::Level::Trace => tracing::enabled!(tracing::Level::TRACE),
            wit::Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
            wit::Level::Info => tracing::enabled!(tracing::Level::INFO),
            wit::Level::Warn => tracing::enabled!(tracing::Level::WARN),
            wit::Level::Error => tracing::enabled!(tracing::Level::ERROR),
        }
    }
}

impl State {
    fn metric(&mut self, name: &str, kind: MetricKind) -> PluginMetric {
        let key = (name.to_string(), kind as u8);
        if let Some(m) = self.metrics.get(&key) {
            return m.clone();
        }
        let m = self.host.define_metric(&self.plugin, name, kind);
        self.metrics.insert(key, m.clone());
        m
    }
}

impl weir::filter::metrics::Host for State {
    fn counter_add(&mut self, name: String, delta: u64) {
        if let PluginMetric::Counter(c) = self.metric(&name, MetricKind::Counter) {
            c.inc_by(delta);
        }
    }

    fn gauge_set(&mut self, name: String, value: i64) {
        if let PluginMetric::Gauge(g) = self.metric(&name, MetricKind::Gauge) {
            g.set(value);
        }
    }

    fn histogram_record(&mut self, name: String, value: u64) {
        if let PluginMetric::Histogram(h) = self.metric(&name, MetricKind::Histogram) {
            h.observe(value as f64);
        }
    }

    fn counter_add_labeled(&mut self, name: String, labels: Vec<(String, String)>, delta: u64) {
        let (host, plugin) = (&self.host, &*self.plugin);
        if let Some(c) = labeled_handle(&mut self.labeled_counters, (name, labels), |n, l| {
            host.counter_labeled(plugin, n, l)
        }) {
            c.inc_by(delta);
        }
    }

    fn histogram_record_labeled(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    ) {
        let (host, plugin) = (&self.host, &*self.plugin);
        if let Some(h) = labeled_handle(&mut self.labeled_histograms, (name, labels), |n, l| {
            host.histogram_labeled(plugin, n, l)
        }) {
            h.observe(value);
        }
    }
}

impl weir::filter::shared_data::Host for State {
    fn get(&mut self, key: String) -> Option<weir::filter::shared_data::Versioned> {
        self.host
            .get_data(&self.vm_id, key.as_bytes())
            .map(|(v, version)| weir::filter::shared_data::Versioned {
                value: v.to_vec(),
                version,
            })
    }

    fn set(&mut self, key: String, value: Vec<u8>, version: Option<u32>) -> Result<(), String> {
        self.host
            .set_data(
                &self.vm_id,
                key.as_bytes(),
                Bytes::from(value),
                version.unwrap_or(0),
            )
            .map_err(|_| {
                format!(
                    "shared data {key:?} changed since version {}: read it again and retry",
                    version.unwrap_or(0)
                )
            })
    }
}

/// The time an outbound call waits when the plugin gives no timeout.
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl weir::filter::outbound::Host for State {
    async fn call(
        &mut self,
        req: weir::filter::outbound::Request,
    ) -> Result<weir::filter::outbound::Response, String> {
        let cluster = req.cluster.clone();
        if !self.may_wait {
            return Err(format!(
                "outbound call to cluster {cluster:?} refused: calls can be made from on-request-headers, on-response-headers and a whole body's callback (after stop-and-buffer), not from configure, a streamed body chunk or on-done"
            ));
        }
        let request = outbound_request(req)?;
        let timeout = match request.1 {
            0 => DEFAULT_CALL_TIMEOUT,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let started = Instant::now();
        let answer = self.host.call(&cluster, request.0, Some(timeout)).await;
        self.waited += started.elapsed();
        self.cpu_check.reset();
        let Some(status) = answer.status else {
            return Err(format!(
                "outbound call to cluster {cluster:?} failed: {}",
                answer
                    .failure
                    .map(|f| f.cause)
                    .unwrap_or("no answer".into())
            ));
        };
        Ok(weir::filter::outbound::Response {
            status: status.as_u16(),
            headers: header_list(answer.headers.iter()),
            body: answer.body.to_vec(),
        })
    }
}

/// The HTTP request for a plugin's outbound call, and its timeout in
/// milliseconds; the error names what is malformed.
fn outbound_request(
    req: weir::filter::outbound::Request,
) -> Result<(http::Request<crate::body::Body>, u32), String> {
    let what = |m: String| format!("outbound call to cluster {:?}: {m}", req.cluster);
    let method = http::Method::from_bytes(req.method.as_bytes())
        .map_err(|_| what(format!("{:?} is not an HTTP method", req.method)))?;
    if !req.path.starts_with('/') {
        return Err(what(format!(
            "path {:?} must start with / (the cluster gives scheme and authority)",
            req.path
        )));
    }
    let uri: http::Uri = req
        .path
        .parse()
        .map_err(|e| what(format!("path {:?}: {e}", req.path)))?;
    let mut builder = http::Request::builder().method(method).uri(uri);
    for h in &req.headers {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| what(format!("{:?} is not a valid header name", h.name)))?;
        let value = HeaderValue::from_str(&h.value)
            .map_err(|_| what(format!("header {:?} has an invalid value", h.name)))?;
        builder = builder.header(name, value);
    }
    let request = builder
        .body(crate::body::full(Bytes::from(req.body)))
        .map_err(|e| what(e.to_string()))?;
    Ok((request, req.timeout_ms))
}

impl weir::filter::env::Host for State {
    fn now_nanos(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }

    fn random_bytes(&mut self, len: u32) -> Vec<u8> {
        let mut out = vec![0u8; len.min(1 << 20) as usize];
        rand::fill(&mut out[..]);
        out
    }
}
