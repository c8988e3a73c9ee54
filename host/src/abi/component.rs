//! The host side of weir's own plugin ABI: components of the
//! `weir:filter@0.1.0` world (wit/filter.wit), run beside proxy-wasm modules
//! in the same chain.
//!
//! Instance model, as for proxy-wasm: one instance per worker thread, behind
//! an async mutex held for a callback; a request keeps the instance it
//! started on, and names itself to the guest by a stream id. WASI 0.2 is
//! linked with nothing behind it (no folders, environment, arguments or
//! sockets) so that components built with Rust's standard library load.
//!
//! A plugin that imports a host function that waits (`outbound.call`, or
//! `quota.take`, which may ask Redis) runs through wasmtime's async support:
//! the call looks blocking to the guest, while its stream waits without
//! holding a worker thread. The others (most filters) are called
//! synchronously, which saves a fiber switch per callback. The instance stays with that stream
//! until the answer is in; other requests that need the same instance wait
//! for it (asynchronously), new requests pick an idle instance. The CPU limit
//! counts the time a callback ran, not the time it waited for an answer.

use std::future::Future;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderName, HeaderValue, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{Mutex, OwnedMutexGuard};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable, TypedFunc};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::abi::trap_message;
use crate::config::FailurePolicy;
use crate::filter::{
    Action, BodyAction, BodyFilter, FilterFuture, HttpFilter, LocalResponse, LogInfo, StreamFilter,
    StreamInfo,
};
use crate::plugin::host::{HostServices, MetricKind, PluginMetric};
use crate::plugin::{LoadedPlugin, PluginError, PluginSpec, engine};

mod output;

/// Bindings generated from wit/filter.wit (documented there).
#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        imports: { "weir:filter/outbound.call": async, "weir:filter/quota.take": async },
        exports: { default: async },
    });
}

use bindings::weir::filter::types as wit;
use bindings::{Plugin, PluginPre, weir};

/// The package and version of the world weir runs.
pub const WORLD: &str = "weir:filter@0.1.2";
/// The export every plugin component must have, at any 0.1.x version (0.1
/// releases only add; wasmtime links a 0.1.0 plugin to this 0.1.2 host).
const FILTER_EXPORT: &str = "weir:filter/filter@0.1.";

/// Whether `bytes` hold a component (rather than a core module): the two
/// share the `\0asm` magic and differ in the version and layer fields.
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[..4] == b"\0asm" && bytes[6..8] == [1, 0]
}

/// What the current callback may touch.
#[derive(Default)]
struct Current {
    request: Option<http::request::Parts>,
    response: Option<http::response::Parts>,
    info: Option<Arc<StreamInfo>>,
    /// In on-done: how the exchange ended.
    log: Option<LogInfo>,
}

/// The store's data: WASI with nothing granted, limits, and the current message.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    memory_limit: u64,
    /// Linear memory the instance holds, in bytes (as its memories grew).
    memory_now: u64,
    /// The plugin's memory over all its instances (this one's share is
    /// taken back when the instance is dropped).
    memory_total: Arc<AtomicU64>,
    /// Whether the current callback may wait for an outbound call.
    may_wait: bool,
    /// When the current callback was entered, how long it waited for
    /// outbound calls, and its CPU limit: the epoch callback traps once
    /// `entered.elapsed() - waited` passes `cpu_limit`.
    entered: Instant,
    waited: Duration,
    cpu_limit: Duration,
    /// Past `cpu_limit` on the wall clock: whether the callback burns CPU.
    cpu_check: engine::CpuCheck,
    plugin: Arc<str>,
    vm_id: Arc<str>,
    host: Arc<HostServices>,
    current: Current,
    metrics: std::collections::HashMap<(String, u8), PluginMetric>,
    /// Labeled metrics by name and label set: a plugin records the same few
    /// label sets over and over, and this skips the process-wide lookup.
    labeled_counters: std::collections::HashMap<(String, Labels), Counter>,
    labeled_histograms: std::collections::HashMap<(String, Labels), Histogram>,
    /// The phases the plugin declared it does nothing in (`callbacks.skip`),
    /// shared by its instances: [`Skip`] bits.
    skip: Arc<AtomicU8>,
}

/// Bits of the phases a plugin declared unused (`weir:filter/callbacks`).
struct Skip;

impl Skip {
    const REQUEST_HEADERS: u8 = 1;
    const REQUEST_BODY: u8 = 2;
    const RESPONSE_HEADERS: u8 = 4;
    const RESPONSE_BODY: u8 = 8;
    const DONE: u8 = 16;

    fn body(dir: wit::Direction) -> u8 {
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
    fn new(
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

/// A new store for `state`: its CPU limit counts the time the callback ran,
/// not the time it waited for an outbound call.
fn new_store(engine: &wasmtime::Engine, state: State) -> Store<State> {
    let mut store = Store::new(engine, state);
    store.limiter(|s| s as &mut dyn wasmtime::ResourceLimiter);
    store.epoch_deadline_callback(|mut ctx| {
        let s = ctx.data_mut();
        let ran = s.entered.elapsed().saturating_sub(s.waited);
        Ok(if ran >= s.cpu_limit {
            // Past the limit on the wall clock: stopped if it burns CPU.
            s.cpu_check.at_deadline(s.cpu_limit)
        } else {
            UpdateDeadline::Continue(engine::ticks(s.cpu_limit - ran))
        })
    });
    store
}

/// Runs `fut` to its end from synchronous code (a streamed body chunk,
/// on-done, loading): at once when it does not wait, which is the rule there
/// since outbound calls are refused in those callbacks; otherwise the worker
/// hands its other tasks to another thread while this one waits.
fn wait<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    if let Poll::Ready(v) = fut
        .as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()))
    {
        return v;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| h.block_on(fut))
        }
        _ => park_on(fut),
    }
}

/// A minimal executor for [`wait`] outside a multi-threaded runtime.
fn park_on<F: Future>(mut fut: std::pin::Pin<&mut F>) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
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
fn link_sync_quota(linker: &mut Linker<State>) -> wasmtime::Result<()> {
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

/// One instance: its store and the plugin's exports.
struct Instance {
    store: Store<State>,
    bindings: Plugin,
    /// The exports, called synchronously, when the plugin imports nothing
    /// that waits (outbound calls, quota): no fiber per callback.
    sync: Option<SyncExports>,
    /// Why the instance is unusable, when it is.
    failed: Option<String>,
    /// A callback is under way (set while the guest runs; left set when the
    /// request that ran it went away mid-call, so the instance is replaced).
    in_call: bool,
    /// This instance's part of the plugin's callback histogram (recorded
    /// under the instance's lock, without atomic read-modify-writes).
    callbacks: crate::plugin::health::CallbackShard,
}

type BodyFn = TypedFunc<(u64, Vec<u8>, bool), ((wit::BodyAction, Vec<u8>),)>;

/// The filter's exports as synchronous functions.
struct SyncExports {
    configure: TypedFunc<(Vec<u8>,), (Result<(), String>,)>,
    config_schema: TypedFunc<(), (Option<String>,)>,
    on_request_headers: TypedFunc<(u64, bool), (wit::Action,)>,
    on_request_body: BodyFn,
    on_response_headers: TypedFunc<(u64, bool), (wit::Action,)>,
    on_response_body: BodyFn,
    on_done: TypedFunc<(u64,), ()>,
}

impl SyncExports {
    fn new(
        store: &mut Store<State>,
        instance: &wasmtime::component::Instance,
        export: &str,
    ) -> wasmtime::Result<SyncExports> {
        let iface = instance
            .get_export_index(&mut *store, None, export)
            .ok_or_else(|| wasmtime::Error::msg(format!("no export {export}")))?;
        macro_rules! func {
            ($name:literal) => {{
                let idx = instance
                    .get_export_index(&mut *store, Some(&iface), $name)
                    .ok_or_else(|| wasmtime::Error::msg(concat!("no export ", $name)))?;
                instance.get_typed_func(&mut *store, &idx)?
            }};
        }
        Ok(SyncExports {
            configure: func!("configure"),
            config_schema: func!("config-schema"),
            on_request_headers: func!("on-request-headers"),
            on_request_body: func!("on-request-body"),
            on_response_headers: func!("on-response-headers"),
            on_response_body: func!("on-response-body"),
            on_done: func!("on-done"),
        })
    }
}

/// Instances a plugin may have per worker thread: beyond the first, they are
/// made only while requests wait for outbound calls.
const SPARE_INSTANCES: usize = 4;

/// A loaded component plugin.
pub struct ComponentCore {
    spec: PluginSpec,
    host: Arc<HostServices>,
    pre: PluginPre<State>,
    origin: engine::ModuleOrigin,
    tier: engine::Tier,
    /// The filter export's full name (`weir:filter/filter@0.1.x`), and
    /// whether the plugin imports a host function that waits (then every
    /// callback runs on wasmtime's async support).
    export: String,
    waits: bool,
    /// Instance slots: one per worker, filled at load; the rest are filled
    /// when every instance is held by a request waiting for an outbound call.
    instances: Box<[tokio::sync::OnceCell<Arc<Mutex<Instance>>>]>,
    workers: usize,
    memory: Arc<AtomicU64>,
    next_stream: AtomicU64,
    /// The phases the plugin declared it does nothing in ([`Skip`] bits).
    skip: Arc<AtomicU8>,
}

impl Drop for ComponentCore {
    fn drop(&mut self) {
        // Freed on the reaper thread, not on the worker the last request ended on.
        crate::plugin::background::retire(std::mem::take(&mut self.instances));
    }
}

/// The filter a component plugin contributes to the chain.
pub struct ComponentPlugin(Arc<ComponentCore>);

impl ComponentPlugin {
    /// Compiles, links and configures a component: `workers` instances.
    pub fn load(
        spec: PluginSpec,
        bytes: &[u8],
        host: Arc<HostServices>,
        workers: usize,
    ) -> Result<Arc<dyn LoadedPlugin>, PluginError> {
        let file = spec.file.display().to_string();
        let err = |message: String| PluginError {
            file: file.clone(),
            message,
        };
        let (component, origin, tier) = engine::compile_component(bytes, spec.tier)
            .map_err(|e| err(format!("invalid component: {}", e.root_cause())))?;
        let export = check_world(&component).map_err(&err)?;
        let waits = imports_waiting(&component, host.quota().may_wait());
        let linker = linker(waits, tier).map_err(&err)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| err(format!("linking: {}", e.root_cause())))?;
        let pre = PluginPre::new(pre).map_err(|e| err(format!("{}", e.root_cause())))?;
        let core = ComponentCore {
            spec,
            host,
            pre,
            origin,
            tier,
            export,
            waits,
            instances: (0..workers.max(1) * SPARE_INSTANCES)
                .map(|_| tokio::sync::OnceCell::new())
                .collect(),
            workers: workers.max(1),
            memory: Arc::new(AtomicU64::new(0)),
            next_stream: AtomicU64::new(1),
            skip: Arc::default(),
        };
        for i in 0..core.workers {
            let inst = wait(core.start_instance()).map_err(&err)?;
            let _ = core.instances[i].set(Arc::new(Mutex::new(inst)));
        }
        tracing::info!(plugin.name = %core.spec.name, abi = WORLD, instances = core.workers, module = origin.as_str(), "plugin loaded");
        Ok(Arc::new(ComponentPlugin(Arc::new(core))))
    }
}

/// Whether a component imports a host function that waits: an outbound
/// call, or a quota take when the quota backend is remote (`quota_waits`:
/// Redis; a local take never waits). Such a plugin's callbacks run on
/// wasmtime's async support (a fiber per callback); the others are called
/// synchronously, which is cheaper.
fn imports_waiting(component: &Component, quota_waits: bool) -> bool {
    component
        .component_type()
        .imports(component.engine())
        .any(|(name, _)| {
            name.starts_with("weir:filter/outbound")
                || (quota_waits && name.starts_with("weir:filter/quota"))
        })
}

/// The linker component plugins are instantiated with: WASI 0.2 (with
/// nothing granted) and weir's host interfaces. `waits`: WASI's async
/// bindings, for plugins run on fibers; else the synchronous ones, with
/// stdout and stderr writes that never block (the sync bindings would
/// block on the runtime, which a proxy worker must not).
///
/// Each of the two is built once per engine (compiler tier) and shared: a
/// reload links against it instead of defining every WASI and weir function
/// again (most of a cached reload's CPU before).
fn linker(waits: bool, tier: engine::Tier) -> Result<&'static Linker<State>, String> {
    type Cell = OnceLock<Result<Linker<State>, String>>;
    static LINKERS: [Cell; 4] = [const { OnceLock::new() }; 4];
    let i = usize::from(waits) * 2 + usize::from(tier == engine::Tier::Baseline);
    LINKERS[i]
        .get_or_init(|| build_linker(waits, tier))
        .as_ref()
        .map_err(Clone::clone)
}

fn build_linker(waits: bool, tier: engine::Tier) -> Result<Linker<State>, String> {
    let mut linker: Linker<State> = Linker::new(engine::engine_for(tier));
    if waits {
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| format!("linking WASI: {e}"))?;
    } else {
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| format!("linking WASI: {e}"))?;
        output::link_sync_writes(&mut linker).map_err(|e| format!("linking WASI: {e}"))?;
    }
    Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
        .map_err(|e| format!("linking: {e}"))?;
    if !waits {
        link_sync_quota(&mut linker).map_err(|e| format!("linking: {e}"))?;
    }
    Ok(linker)
}

/// Describes a component: its world, imports, exports and configuration schema.
pub fn describe(bytes: &[u8]) -> Result<String, String> {
    let (component, _, tier) = engine::compile_component(bytes, engine::Tier::Optimized)
        .map_err(|e| format!("invalid component: {}", e.root_cause()))?;
    check_world(&component)?;
    let engine = component.engine();
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let linker = linker(true, tier)?;
    let metrics = Arc::new(crate::telemetry::Metrics::new());
    let state = State::new(
        "describe",
        "describe",
        Arc::new(HostServices::new(std::sync::Weak::new(), metrics)),
        StoreLimitsBuilder::new().build(),
        64 << 20,
        Arc::default(),
    );
    let mut store = new_store(engine, state);
    store.set_epoch_deadline(engine::ticks(Duration::from_secs(1)));
    let schema = wait(engine::Running::new(
        async {
            let bindings = Plugin::instantiate_async(&mut store, &component, linker)
                .await
                .map_err(|e| engine::instantiation_failed(&e, e.root_cause()))?;
            bindings
                .weir_filter_filter()
                .call_config_schema(&mut store)
                .await
                .map_err(|e| format!("config-schema trapped: {}", trap_message(&e)))
        },
        Duration::from_secs(1),
    ))?;
    let built_for = exports
        .iter()
        .find_map(|e| e.strip_prefix("weir:filter/filter@"))
        .unwrap_or("?");
    Ok(format!(
        "abi: component weir:filter@{built_for} (world plugin; this weir runs {WORLD})\nexports: {}\nimports ({}): {}\nconfiguration schema (JSON Schema): {}\n",
        exports.join(", "),
        imports.len(),
        imports.join(", "),
        schema.unwrap_or_else(|| "none exported".into())
    ))
}

/// Refuses components of another world or version, naming what they target.
fn check_world(component: &Component) -> Result<String, String> {
    let ty = component.component_type();
    let engine = component.engine();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    if let Some(e) = exports.iter().find(|e| e.starts_with(FILTER_EXPORT)) {
        return Ok(e.clone());
    }
    if let Some(other) = exports
        .iter()
        .find(|e| e.starts_with("weir:filter/filter@"))
    {
        let version = other.rsplit('@').next().unwrap_or("?");
        return Err(format!(
            "targets weir:filter@{version}; this weir runs {WORLD} (rebuild the plugin against weir-sdk for {WORLD})"
        ));
    }
    Err(format!(
        "is a component but not a weir plugin: it exports {} and not {FILTER_EXPORT}x",
        if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports.join(", ")
        }
    ))
}

/// One callback of the filter world.
enum Callback<'c> {
    RequestHeaders(bool),
    ResponseHeaders(bool),
    Body(wit::Direction, &'c mut Vec<u8>, bool),
    Done,
}

/// What a callback returned.
enum Outcome {
    Action(wit::Action),
    Body(wit::BodyAction, Vec<u8>),
    Done,
}

impl ComponentCore {
    /// Whether the plugin declared it does nothing in the phases `bits`.
    fn skips(&self, bits: u8) -> bool {
        self.skip.load(Ordering::Relaxed) & bits != 0
    }

    /// Slot `i`'s instance (a stream's slot is always filled).
    fn slot(&self, i: usize) -> Arc<Mutex<Instance>> {
        self.instances[i]
            .get()
            .expect("a stream's instance slot is filled")
            .clone()
    }

    /// Instance `i`, when its current callback (if any) is done.
    async fn lock(&self, i: usize) -> OwnedMutexGuard<Instance> {
        self.slot(i).lock_owned().await
    }

    /// Instance `i` from synchronous code: at once when it is free (the
    /// rule), else after the callback holding it finishes.
    fn lock_now(&self, i: usize) -> OwnedMutexGuard<Instance> {
        match self.slot(i).try_lock_owned() {
            Ok(g) => g,
            Err(_) => wait(self.lock(i)),
        }
    }

    /// An idle instance for a new stream, starting at slot `from`: a free
    /// one, else a new one in an empty slot; None when all are busy.
    async fn idle_instance(&self, from: usize) -> Option<(usize, OwnedMutexGuard<Instance>)> {
        let n = self.instances.len();
        for k in 0..n {
            let i = (from + k) % n;
            if let Some(cell) = self.instances[i].get()
                && let Ok(g) = cell.clone().try_lock_owned()
            {
                return Some((i, g));
            }
        }
        let i = (0..n).find(|&i| !self.instances[i].initialized())?;
        // Boxed: a cold path, kept out of every callback's future.
        let cell = Box::pin(self.instances[i].get_or_try_init(|| async {
                let inst = self.start_instance().await?;
                tracing::debug!(plugin.name = %self.spec.name, slot = i, "instances are all waiting for outbound calls; added one");
                Ok::<_, String>(Arc::new(Mutex::new(inst)))
            }))
            .await
            .ok()?;
        cell.clone().try_lock_owned().ok().map(|g| (i, g))
    }

    /// Starts an instance; its code may resume after awaits, so the epoch
    /// ticker hears of every poll.
    async fn start_instance(&self) -> Result<Instance, String> {
        let startup = self.spec.cpu_limit.max(Duration::from_secs(1));
        engine::Running::new(self.start_instance_now(), startup).await
    }

    /// A store for one instance of this plugin, with nothing in it yet.
    fn new_store(&self) -> Store<State> {
        let mut state = State::new(
            &self.spec.name,
            &self.spec.vm_id,
            self.host.clone(),
            StoreLimitsBuilder::new()
                .memory_size(self.spec.memory_limit as usize)
                .trap_on_grow_failure(true)
                .instances(16)
                .tables(16)
                .table_elements(100_000)
                .build(),
            self.spec.memory_limit,
            self.memory.clone(),
        );
        state.skip = self.skip.clone();
        new_store(self.pre.engine(), state)
    }

    async fn start_instance_now(&self) -> Result<Instance, String> {
        let mut store = self.new_store();
        let startup = self.spec.cpu_limit.max(Duration::from_secs(1));
        store.data_mut().cpu_limit = startup;
        store.data_mut().entered = Instant::now();
        store.data_mut().cpu_check.reset();
        store.set_epoch_deadline(engine::ticks(startup));
        let instantiated = |e: wasmtime::Error| engine::instantiation_failed(&e, trap_message(&e));
        let (bindings, sync) = if self.waits {
            let b = self
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(instantiated)?;
            (b, None)
        } else {
            let instance = self
                .pre
                .instance_pre()
                .instantiate(&mut store)
                .map_err(instantiated)?;
            let b = Plugin::new(&mut store, &instance).map_err(instantiated)?;
            let f = SyncExports::new(&mut store, &instance, &self.export).map_err(instantiated)?;
            (b, Some(f))
        };
        let schema = match &sync {
            Some(f) => f.config_schema.call(&mut store, ()).map(|(s,)| s),
            None => {
                bindings
                    .weir_filter_filter()
                    .call_config_schema(&mut store)
                    .await
            }
        }
        .map_err(|e| format!("config-schema trapped: {}", trap_message(&e)))?;
        if let Some(schema) = schema
            && !schema.trim().is_empty()
        {
            check_config(&schema, &self.spec.config)?;
        }
        match &sync {
            Some(f) => f
                .configure
                .call(&mut store, (self.spec.config.to_vec(),))
                .map(|(r,)| r),
            None => {
                bindings
                    .weir_filter_filter()
                    .call_configure(&mut store, &self.spec.config)
                    .await
            }
        }
        .map_err(|e| format!("configure trapped: {}", trap_message(&e)))?
        .map_err(|m| format!("configure refused the configuration: {m}"))?;
        Ok(Instance {
            store,
            bindings,
            sync,
            failed: None,
            in_call: false,
            callbacks: self.spec.health.callback_shard(),
        })
    }

    /// Makes `inst` usable again after a trap or a cancelled call: a fresh
    /// instance, or the reason there is none.
    async fn replace(&self, inst: &mut Instance) {
        // Free the old instance first: its pool slot is then the one the
        // new instance takes, warm, and a full pool still has one for it.
        // An empty store holds its place meanwhile, marked failed (nothing
        // enters it) and in a call (a replacement cut short, its request
        // gone, is made again by the next request), and for good if the new
        // one cannot start.
        inst.failed = Some("the instance is being replaced".into());
        inst.in_call = true;
        drop(std::mem::replace(&mut inst.store, self.new_store()));
        match self.start_instance().await {
            Ok(fresh) => *inst = fresh,
            Err(e) => {
                inst.failed = Some(e);
                inst.in_call = false;
            }
        }
    }

    /// Runs one callback within the CPU limit; `may_wait` lets it make
    /// outbound calls. A trap replaces the instance.
    async fn invoke(
        &self,
        inst: &mut Instance,
        id: u64,
        callback: Callback<'_>,
        may_wait: bool,
    ) -> Result<Outcome, String> {
        let started = Instant::now();
        {
            let s = inst.store.data_mut();
            s.may_wait = may_wait;
            s.entered = started;
            s.waited = Duration::ZERO;
            s.cpu_limit = self.spec.cpu_limit;
            s.cpu_check.reset();
        }
        inst.store
            .set_epoch_deadline(engine::ticks(self.spec.cpu_limit));
        inst.in_call = true;
        let run = async {
            let store = &mut inst.store;
            if let Some(f) = &inst.sync {
                return match callback {
                    Callback::RequestHeaders(eos) => f
                        .on_request_headers
                        .call(store, (id, eos))
                        .map(|(a,)| Outcome::Action(a)),
                    Callback::ResponseHeaders(eos) => f
                        .on_response_headers
                        .call(store, (id, eos))
                        .map(|(a,)| Outcome::Action(a)),
                    Callback::Body(dir, chunk, eos) => {
                        let func = match dir {
                            wit::Direction::Request => &f.on_request_body,
                            wit::Direction::Response => &f.on_response_body,
                        };
                        func.call(store, (id, std::mem::take(chunk), eos))
                            .map(|((a, b),)| Outcome::Body(a, b))
                    }
                    Callback::Done => f.on_done.call(store, (id,)).map(|()| Outcome::Done),
                };
            }
            let f = inst.bindings.weir_filter_filter();
            match callback {
                Callback::RequestHeaders(eos) => f
                    .call_on_request_headers(store, id, eos)
                    .await
                    .map(Outcome::Action),
                Callback::ResponseHeaders(eos) => f
                    .call_on_response_headers(store, id, eos)
                    .await
                    .map(Outcome::Action),
                Callback::Body(wit::Direction::Request, chunk, eos) => f
                    .call_on_request_body(store, id, chunk, eos)
                    .await
                    .map(|(a, b)| Outcome::Body(a, b)),
                Callback::Body(wit::Direction::Response, chunk, eos) => f
                    .call_on_response_body(store, id, chunk, eos)
                    .await
                    .map(|(a, b)| Outcome::Body(a, b)),
                Callback::Done => f.call_on_done(store, id).await.map(|()| Outcome::Done),
            }
        };
        // A host function that panics comes back here, handled as a trap of
        // this plugin.
        let result = std::panic::AssertUnwindSafe(engine::Running::new(run, self.spec.cpu_limit))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a host panic");
                Err(wasmtime::Error::msg(format!(
                    "a host call of the plugin failed in the host ({})",
                    what.lines().next().unwrap_or(what)
                )))
            });
        inst.in_call = false;
        inst.callbacks.record(started.elapsed());
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                let message = trap_message(&e);
                self.spec.health.trapped(&message);
                self.host.plugin_trap(&self.spec.name);
                Box::pin(self.replace(inst)).await;
                Err(message)
            }
        }
    }
}

/// Checks a plugin's configuration against the JSON Schema it exports,
/// naming every mismatch with its field (`config.request_set.x: ...`).
fn check_config(schema: &str, config: &[u8]) -> Result<(), String> {
    let schema: serde_json::Value = serde_json::from_str(schema)
        .map_err(|e| format!("the plugin exports a configuration schema that is not JSON: {e}"))?;
    let validator = jsonschema::validator_for(&schema)
        .map_err(|e| format!("the plugin exports an invalid configuration schema: {e}"))?;
    let candidates: Vec<serde_json::Value> = if config.iter().all(u8::is_ascii_whitespace) {
        // No configuration: an empty table, or none at all.
        vec![serde_json::json!({}), serde_json::Value::Null]
    } else {
        vec![serde_json::from_slice(config).map_err(|e| {
            format!("the plugin declares a JSON configuration schema, but its configuration is not JSON (use [config], not config_raw): {e}")
        })?]
    };
    let mut errors = Vec::new();
    for instance in &candidates {
        errors = validator
            .iter_errors(instance)
            .map(|e| {
                let pointer = e.instance_path().to_string();
                let field: String = pointer
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(|s| format!(".{}", s.replace("~1", "/").replace("~0", "~")))
                    .collect();
                format!("config{field}: {e}")
            })
            .collect();
        if errors.is_empty() {
            return Ok(());
        }
    }
    Err(format!(
        "[config] does not match the plugin's configuration schema ({} error{}): {}",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" },
        errors.join("; ")
    ))
}

impl LoadedPlugin for ComponentPlugin {
    fn abi(&self) -> String {
        format!("component {WORLD}")
    }

    fn memory_bytes(&self) -> u64 {
        self.0.memory.load(Ordering::Relaxed)
    }

    fn tier(&self) -> engine::Tier {
        self.0.tier
    }

    fn module_origin(&self) -> engine::ModuleOrigin {
        self.0.origin
    }

    fn calls(&self) -> &'static str {
        if self.0.waits { "async" } else { "synchronous" }
    }
}

impl HttpFilter for ComponentPlugin {
    fn name(&self) -> &str {
        &self.0.spec.name
    }

    fn new_stream(&self, info: &Arc<StreamInfo>) -> Box<dyn StreamFilter> {
        Box::new(ComponentStream {
            core: self.0.clone(),
            index: crate::abi::worker_index(self.0.workers),
            id: self.0.next_stream.fetch_add(1, Ordering::Relaxed),
            info: info.clone(),
            failed: false,
            started: false,
            reached: false,
        })
    }
}

/// One request's view of a component plugin.
struct ComponentStream {
    core: Arc<ComponentCore>,
    index: usize,
    id: u64,
    info: Arc<StreamInfo>,
    failed: bool,
    /// Whether the stream has taken an instance (its first callback ran).
    started: bool,
    /// Whether the chain reached the plugin (a head phase came, called or
    /// skipped): on-done is for streams the plugin saw.
    reached: bool,
}

impl ComponentStream {
    fn failure(&mut self, message: &str) -> Action {
        self.failed = true;
        crate::abi::failure_action(self.core.spec.failure, &self.core.spec.name, message)
    }

    /// The stream's instance, or the action to take instead. A stream's
    /// first callback takes its worker's instance, or another idle one when
    /// that one is waiting for an outbound call; later callbacks keep it.
    async fn enter(&mut self) -> Result<OwnedMutexGuard<Instance>, Action> {
        if self.failed {
            return Err(Action::Continue);
        }
        let core = self.core.clone();
        let mut held = None;
        if !self.started {
            if let Some(reason) = core.spec.health.quarantine_reason() {
                return Err(self.failure(&reason));
            }
            if let Some((i, g)) = core.idle_instance(self.index).await {
                self.index = i;
                held = Some(g);
            }
        }
        self.started = true;
        let mut inst = match held {
            Some(g) => g,
            None => core.lock(self.index).await,
        };
        if inst.in_call {
            // The request that last ran it went away mid-call.
            Box::pin(core.replace(&mut inst)).await;
        }
        match inst.failed.clone() {
            Some(e) => {
                drop(inst);
                Err(self.failure(&e))
            }
            None => Ok(inst),
        }
    }

    /// Runs a head callback with `head` current, putting back what the plugin changed.
    async fn head_callback(&mut self, mut head: Head<'_>, eos: bool) -> Action {
        let phase = match head {
            Head::Request(_) => Skip::REQUEST_HEADERS,
            Head::Response(_) => Skip::RESPONSE_HEADERS,
        };
        self.reached = true;
        if self.core.skips(phase) {
            return Action::Continue;
        }
        let mut inst = match self.enter().await {
            Ok(i) => i,
            Err(a) => return a,
        };
        let core = self.core.clone();
        let (current, callback) = match &mut head {
            Head::Request(h) => (
                Current {
                    request: Some(std::mem::replace(*h, crate::abi::empty_request())),
                    ..Current::default()
                },
                Callback::RequestHeaders(eos),
            ),
            Head::Response(h) => (
                Current {
                    response: Some(std::mem::replace(*h, crate::abi::empty_response())),
                    ..Current::default()
                },
                Callback::ResponseHeaders(eos),
            ),
        };
        // Put the head back even if this future is dropped mid-call.
        struct Restore<'h> {
            head: Head<'h>,
            inst: OwnedMutexGuard<Instance>,
        }
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                let back = std::mem::take(&mut self.inst.store.data_mut().current);
                match &mut self.head {
                    Head::Request(h) => {
                        if let Some(p) = back.request {
                            **h = p;
                        }
                    }
                    Head::Response(h) => {
                        if let Some(p) = back.response {
                            **h = p;
                        }
                    }
                }
            }
        }
        inst.store.data_mut().current = Current {
            info: Some(self.info.clone()),
            ..current
        };
        let mut guard = Restore { head, inst };
        let result = core.invoke(&mut guard.inst, self.id, callback, true).await;
        drop(guard);
        match result {
            Ok(Outcome::Action(a)) => action(a, &core.spec.name),
            Ok(_) => Action::Continue,
            Err(m) => self.failure(&m),
        }
    }

    /// A whole body (after stop-and-buffer) through the body callback.
    async fn whole_body(&mut self, dir: wit::Direction, body: &mut Bytes, eos: bool) -> Action {
        if self.core.skips(Skip::body(dir)) {
            return Action::Continue;
        }
        let mut inst = match self.enter().await {
            Ok(i) => i,
            Err(a) => return a,
        };
        let core = self.core.clone();
        let result = call_body(
            &core,
            &mut inst,
            dir,
            self.id,
            self.info.clone(),
            body,
            eos,
            true,
        )
        .await;
        drop(inst);
        match result {
            Ok(wit::BodyAction::Respond(r)) => local(r, &core.spec.name),
            Ok(_) => Action::Continue,
            Err(m) => self.failure(&m),
        }
    }
}

/// The head a head callback works on.
enum Head<'h> {
    Request(&'h mut http::request::Parts),
    Response(&'h mut http::response::Parts),
}

fn local(r: wit::LocalResponse, by: &str) -> Action {
    Action::Respond(local_response(r, by))
}

fn local_response(r: wit::LocalResponse, by: &str) -> LocalResponse {
    let headers = r
        .headers
        .into_iter()
        .filter_map(|h| {
            Some((
                HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                HeaderValue::from_str(&h.value).ok()?,
            ))
        })
        .collect();
    LocalResponse {
        status: StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        headers,
        body: Bytes::from(r.body),
        by: by.to_string(),
    }
}

fn action(a: wit::Action, by: &str) -> Action {
    match a {
        wit::Action::Continue => Action::Continue,
        wit::Action::StopAndBuffer => Action::StopAndBuffer,
        wit::Action::Respond(r) => local(r, by),
    }
}

impl StreamFilter for ComponentStream {
    fn on_request_headers<'a>(
        &'a mut self,
        head: &'a mut crate::upstream::Head,
        eos: bool,
    ) -> FilterFuture<'a> {
        FilterFuture::wait(self.head_callback(Head::Request(head), eos))
    }

    fn on_request_body<'a>(&'a mut self, body: &'a mut Bytes, eos: bool) -> FilterFuture<'a> {
        FilterFuture::wait(self.whole_body(wit::Direction::Request, body, eos))
    }

    fn on_response_headers<'a>(
        &'a mut self,
        head: &'a mut http::response::Parts,
        eos: bool,
    ) -> FilterFuture<'a> {
        FilterFuture::wait(self.head_callback(Head::Response(head), eos))
    }

    fn on_response_body<'a>(&'a mut self, body: &'a mut Bytes, eos: bool) -> FilterFuture<'a> {
        FilterFuture::wait(self.whole_body(wit::Direction::Response, body, eos))
    }

    fn request_body_filter(&mut self) -> Option<Box<dyn BodyFilter>> {
        (!self.failed && !self.core.skips(Skip::REQUEST_BODY)).then(|| {
            Box::new(ComponentBody {
                core: self.core.clone(),
                index: self.index,
                id: self.id,
                dir: wit::Direction::Request,
                info: self.info.clone(),
            }) as Box<dyn BodyFilter>
        })
    }

    fn response_body_filter(&mut self) -> Option<Box<dyn BodyFilter>> {
        (!self.failed && !self.core.skips(Skip::RESPONSE_BODY)).then(|| {
            Box::new(ComponentBody {
                core: self.core.clone(),
                index: self.index,
                id: self.id,
                dir: wit::Direction::Response,
                info: self.info.clone(),
            }) as Box<dyn BodyFilter>
        })
    }

    fn on_log(&mut self, log: &LogInfo) {
        if !self.reached || self.core.skips(Skip::DONE) {
            return;
        }
        let core = self.core.clone();
        let (id, index, info, log) = (self.id, self.index, self.info.clone(), log.clone());
        let done = async move |mut inst: OwnedMutexGuard<Instance>| {
            if inst.failed.is_some() || inst.in_call {
                return;
            }
            // on-done reads the exchange's outcome and attributes (the decision log's among them).
            inst.store.data_mut().current = Current {
                info: Some(info),
                log: Some(log),
                ..Current::default()
            };
            let _ = core.invoke(&mut inst, id, Callback::Done, false).await;
            inst.store.data_mut().current = Current::default();
        };
        match self.core.slot(index).try_lock_owned() {
            Ok(inst) => wait(done(inst)),
            // The instance is waiting for another request's outbound call:
            // on-done runs once it is free, without holding up this one.
            Err(_) => match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    let core = self.core.clone();
                    h.spawn(async move { done(core.lock(index).await).await });
                }
                Err(_) => wait(done(self.core.lock_now(index))),
            },
        }
    }
}

/// Calls a body callback with `body`, replacing it with what the plugin returned.
#[allow(clippy::too_many_arguments)]
async fn call_body(
    core: &ComponentCore,
    inst: &mut Instance,
    dir: wit::Direction,
    id: u64,
    info: Arc<StreamInfo>,
    body: &mut Bytes,
    eos: bool,
    may_wait: bool,
) -> Result<wit::BodyAction, String> {
    inst.store.data_mut().current = Current {
        info: Some(info),
        ..Current::default()
    };
    let mut chunk = body.to_vec();
    let r = core
        .invoke(inst, id, Callback::Body(dir, &mut chunk, eos), may_wait)
        .await;
    inst.store.data_mut().current = Current::default();
    let Outcome::Body(a, bytes) = r? else {
        return Ok(wit::BodyAction::Continue);
    };
    if !matches!(a, wit::BodyAction::Buffer) {
        *body = Bytes::from(bytes);
    }
    Ok(a)
}

/// A failure in a streaming body: skipped (open) or the stream ends (closed).
fn body_failure(spec: &PluginSpec, message: &str) -> Result<BodyAction, String> {
    match spec.failure {
        FailurePolicy::Open => Ok(BodyAction::Continue),
        FailurePolicy::Closed => Err(format!("plugin {:?} failed: {message}", spec.name)),
    }
}

/// A component's view of a streaming body.
struct ComponentBody {
    core: Arc<ComponentCore>,
    index: usize,
    id: u64,
    dir: wit::Direction,
    info: Arc<StreamInfo>,
}

impl BodyFilter for ComponentBody {
    fn on_data(&mut self, data: &mut Bytes, eos: bool) -> Result<BodyAction, String> {
        if self.core.skips(Skip::body(self.dir)) {
            return Ok(BodyAction::Continue);
        }
        let core = self.core.clone();
        let mut inst = core.lock_now(self.index);
        if let Some(e) = inst.failed.clone() {
            return body_failure(&core.spec, &e);
        }
        let result = wait(call_body(
            &core,
            &mut inst,
            self.dir,
            self.id,
            self.info.clone(),
            data,
            eos,
            false,
        ));
        match result {
            Ok(wit::BodyAction::Continue) => Ok(BodyAction::Continue),
            Ok(wit::BodyAction::Buffer) => Ok(BodyAction::Buffer),
            Ok(wit::BodyAction::Respond(r)) => {
                Ok(BodyAction::Respond(local_response(r, &core.spec.name)))
            }
            Err(m) => body_failure(&core.spec, &m),
        }
    }
}
