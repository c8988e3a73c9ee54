//! The host API, written once for every plugin ABI: shared key-value data
//! with compare-and-swap, shared queues, plugin metrics, quota and outbound calls.
//! The ABI adapters translate their calls into these.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::proxy::Shared;
use crate::telemetry::Metrics;

/// Why a compare-and-swap write was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct CasMismatch;

/// Kinds of plugin metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down, or is set.
    Gauge,
    /// Records a distribution.
    Histogram,
}

/// A plugin metric's handle.
#[derive(Clone, Debug)]
pub enum PluginMetric {
    /// A counter.
    Counter(Counter),
    /// A gauge.
    Gauge(Gauge),
    /// A histogram.
    Histogram(Histogram),
}

/// A finished outbound call.
#[derive(Debug, Default)]
pub struct CallResponse {
    /// Status; `None` when the call failed.
    pub status: Option<StatusCode>,
    /// Response headers.
    pub headers: HeaderMap,
    /// Response body.
    pub body: Bytes,
    /// Response trailers.
    pub trailers: HeaderMap,
    /// Why it failed, when it did.
    pub failure: Option<CallFailure>,
}

/// Why an outbound call brought back no whole response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFailure {
    /// What went wrong (callers name the cluster).
    pub cause: String,
    /// When no response head came: the status a proxy answers in its
    /// place (503 when no connection could be made or it closed, 502 when
    /// the answer was not HTTP, 504 on the call's timeout). `None` when the
    /// head came and the body failed or timed out.
    pub before_head: Option<StatusCode>,
}

impl CallResponse {
    fn failed(cause: String, before_head: Option<StatusCode>) -> Self {
        CallResponse {
            failure: Some(CallFailure { cause, before_head }),
            ..Default::default()
        }
    }
}

/// Awaits `f`, up to `deadline` if there is one.
async fn within<F: std::future::Future>(
    deadline: Option<tokio::time::Instant>,
    f: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, f).await,
        None => Ok(f.await),
    }
}

/// The status a proxy answers with when a request got no response head
/// because of `e`: 502 for an answer that was not HTTP, 503 otherwise (no
/// connection, or it closed or was reset), as Envoy's router does.
fn status_without_head(e: &crate::upstream::SendError) -> StatusCode {
    match e {
        crate::upstream::SendError::Request(h) if h.is_parse() || h.is_parse_too_large() => {
            StatusCode::BAD_GATEWAY
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

type Queue = (VecDeque<Bytes>, Option<Arc<dyn Fn(u32) + Send + Sync>>);
/// Shared data: (vm_id, key) to (value, CAS token).
type DataMap = HashMap<(String, Vec<u8>), (Bytes, u32)>;
/// Queues: ids by (vm_id, name), and each queue by id.
type Queues = (HashMap<(String, String), u32>, HashMap<u32, Queue>);

/// Services the host offers plugins, shared by every plugin of the process.
pub struct HostServices {
    shared: Weak<Shared>,
    metrics: Arc<Metrics>,
    quota: Arc<crate::quota::Quota>,
    access_log: Option<Arc<crate::telemetry::access_log::AccessLog>>,
    data: Mutex<DataMap>,
    cas: AtomicU32,
    queues: Mutex<Queues>,
    next_queue: AtomicU32,
}

impl HostServices {
    /// Host services over the proxy state `shared` (for outbound calls) and `metrics`.
    pub fn new(shared: Weak<Shared>, metrics: Arc<Metrics>) -> HostServices {
        HostServices {
            shared,
            quota: Arc::new(crate::quota::Quota::local(metrics.clone())),
            access_log: None,
            metrics,
            data: Mutex::default(),
            cas: AtomicU32::new(1),
            queues: Mutex::default(),
            next_queue: AtomicU32::new(1),
        }
    }

    /// Uses `quota` for plugins' token buckets (instead of a local one).
    pub fn with_quota(mut self, quota: Arc<crate::quota::Quota>) -> HostServices {
        self.quota = quota;
        self
    }

    /// The quota service.
    pub fn quota(&self) -> &crate::quota::Quota {
        &self.quota
    }

    /// Sends plugins' access log lines to `log` (without one they are dropped).
    pub fn with_access_log(
        mut self,
        log: Arc<crate::telemetry::access_log::AccessLog>,
    ) -> HostServices {
        self.access_log = Some(log);
        self
    }

    /// Writes one access log line, if an access log is configured.
    pub fn access_log(&self, line: &str) {
        if let Some(log) = &self.access_log {
            log.write(line);
        }
    }

    /// A labeled counter of `plugin`, to keep and add to; `None` past the
    /// metric's label-set cap.
    pub fn counter_labeled(
        &self,
        plugin: &str,
        name: &str,
        labels: Vec<(String, String)>,
    ) -> Option<prometheus_client::metrics::counter::Counter> {
        self.metrics.plugin_counter_labeled(plugin, name, labels)
    }

    /// A labeled histogram of `plugin`, as [`HostServices::counter_labeled`].
    pub fn histogram_labeled(
        &self,
        plugin: &str,
        name: &str,
        labels: Vec<(String, String)>,
    ) -> Option<prometheus_client::metrics::histogram::Histogram> {
        self.metrics.plugin_histogram_labeled(plugin, name, labels)
    }

    /// Reads shared data of `vm_id`: the value and its CAS token.
    pub fn get_data(&self, vm_id: &str, key: &[u8]) -> Option<(Bytes, u32)> {
        self.data
            .lock()
            .expect("shared data lock")
            .get(&(vm_id.to_string(), key.to_vec()))
            .cloned()
    }

    /// Writes shared data. `cas` 0 writes unconditionally; otherwise it must
    /// match the stored token (a missing key accepts any).
    pub fn set_data(
        &self,
        vm_id: &str,
        key: &[u8],
        value: Bytes,
        cas: u32,
    ) -> Result<(), CasMismatch> {
        let mut data = self.data.lock().expect("shared data lock");
        let slot = data.entry((vm_id.to_string(), key.to_vec()));
        if let std::collections::hash_map::Entry::Occupied(o) = &slot
            && cas != 0
            && o.get().1 != cas
        {
            return Err(CasMismatch);
        }
        let token = self.cas.fetch_add(1, Ordering::Relaxed).max(1);
        match slot {
            std::collections::hash_map::Entry::Occupied(mut o) => *o.get_mut() = (value, token),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert((value, token));
            }
        }
        Ok(())
    }

    /// Registers (or reopens) queue `name` of `vm_id`; `notify` is called with the
    /// queue id when an item is enqueued (the last registration wins).
    pub fn register_queue(
        &self,
        vm_id: &str,
        name: &str,
        notify: Arc<dyn Fn(u32) + Send + Sync>,
    ) -> u32 {
        let mut q = self.queues.lock().expect("queues lock");
        let key = (vm_id.to_string(), name.to_string());
        let id = match q.0.get(&key) {
            Some(id) => *id,
            None => {
                let id = self.next_queue.fetch_add(1, Ordering::Relaxed);
                q.0.insert(key, id);
                id
            }
        };
        q.1.entry(id).or_insert_with(|| (VecDeque::new(), None)).1 = Some(notify);
        id
    }

    /// The id of queue `name` of `vm_id`, if registered.
    pub fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.queues
            .lock()
            .expect("queues lock")
            .0
            .get(&(vm_id.to_string(), name.to_string()))
            .copied()
    }

    /// Appends to a queue; false if there is no such queue.
    pub fn enqueue(&self, id: u32, item: Bytes) -> bool {
        let notify = {
            let mut q = self.queues.lock().expect("queues lock");
            let Some(queue) = q.1.get_mut(&id) else {
                return false;
            };
            queue.0.push_back(item);
            queue.1.clone()
        };
        if let Some(n) = notify {
            n(id);
        }
        true
    }

    /// Takes the oldest item: `Err(())` if there is no such queue, `Ok(None)` if it is empty.
    #[allow(clippy::result_unit_err)]
    pub fn dequeue(&self, id: u32) -> Result<Option<Bytes>, ()> {
        let mut q = self.queues.lock().expect("queues lock");
        q.1.get_mut(&id).map(|queue| queue.0.pop_front()).ok_or(())
    }

    /// A metric of `plugin` named `name`, exported on /metrics.
    pub fn define_metric(&self, plugin: &str, name: &str, kind: MetricKind) -> PluginMetric {
        self.metrics.plugin_metric(plugin, name, kind)
    }

    /// Counts a trap of `plugin`.
    pub fn plugin_trap(&self, plugin: &str) {
        self.metrics.plugin_trap(plugin);
    }

    /// Whether a cluster of that name exists now.
    pub fn has_cluster(&self, name: &str) -> bool {
        self.shared
            .upgrade()
            .is_some_and(|s| s.runtime.load().clusters.contains_key(name))
    }

    /// Sends an outbound HTTP request to `cluster` and collects the whole
    /// answer, all within `timeout` when there is one. A failure says
    /// whether the response head had come (see [`CallFailure`]).
    pub async fn call(
        &self,
        cluster_name: &str,
        req: Request<crate::body::Body>,
        timeout: Option<Duration>,
    ) -> CallResponse {
        let unavailable = Some(StatusCode::SERVICE_UNAVAILABLE);
        let Some(shared) = self.shared.upgrade() else {
            return CallResponse::failed("weir is shutting down".into(), unavailable);
        };
        let Some(cluster) = shared.runtime.load().clusters.get(cluster_name).cloned() else {
            return CallResponse::failed(format!("no cluster named {cluster_name:?}"), unavailable);
        };
        let Some(endpoint) = cluster.pick(None) else {
            return CallResponse::failed("no healthy endpoint".into(), unavailable);
        };
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let timed_out = || format!("timeout after {:?}", timeout.unwrap_or_default());
        let (mut parts, body) = req.into_parts();
        parts.version = cluster.version();
        // HTTP/1 needs a Host; without one of the caller's, the endpoint's.
        // (`Cluster::send` gives the URI the form its pool needs.)
        if parts.version != http::Version::HTTP_2
            && !parts.headers.contains_key(http::header::HOST)
            && let Ok(a) = http::HeaderValue::from_str(endpoint.authority.as_str())
        {
            parts.headers.insert(http::header::HOST, a);
        }
        let resp = match within(deadline, cluster.send(&endpoint, Box::new(parts), body)).await {
            Err(_) => {
                return CallResponse::failed(timed_out(), Some(StatusCode::GATEWAY_TIMEOUT));
            }
            Ok(Err(e)) => {
                return CallResponse::failed(e.to_string(), Some(status_without_head(&e)));
            }
            Ok(Ok(resp)) => resp,
        };
        let (parts, body) = resp.into_parts();
        match within(deadline, http_body_util::BodyExt::collect(body)).await {
            Ok(Ok(c)) => {
                let trailers = c.trailers().cloned().unwrap_or_default();
                CallResponse {
                    status: Some(parts.status),
                    headers: parts.headers,
                    body: c.to_bytes(),
                    trailers,
                    failure: None,
                }
            }
            Ok(Err(e)) => CallResponse::failed(format!("the response body failed: {e}"), None),
            Err(_) => CallResponse::failed(format!("the response body: {}", timed_out()), None),
        }
    }
}
