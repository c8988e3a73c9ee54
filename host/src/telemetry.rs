//! Metrics (Prometheus text format on the admin API's /metrics) and logging.

pub mod access_log;
pub mod labeled;
pub mod logging;

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    cluster: String,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabel {
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    listener: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamTlsLabels {
    cluster: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaLabels {
    backend: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    cert: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertOutcomeLabels {
    cert: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginMetricLabels {
    plugin: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginOutcomeLabels {
    plugin: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginVersionLabels {
    plugin: String,
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabels {
    compiler: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100µs to about 26s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

fn value_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 16))
}

/// Every metric weir exports, registered once per process.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily<RouteLabel>,
    upstream_active: Family<ClusterLabel, Gauge>,
    upstream_connections: Family<ClusterLabel, Gauge>,
    downstream_connections: Family<ListenerLabel, Gauge>,
    tls_handshake_errors: Family<HandshakeLabels, Counter>,
    upstream_tls_refusals: Family<UpstreamTlsLabels, Counter>,
    cert_reloads: Family<CertOutcomeLabels, Counter>,
    cert_expiry: Family<CertLabels, Gauge>,
    quota_decisions: Family<QuotaLabels, Counter>,
    quota_errors: Family<BackendLabel, Counter>,
    reloads: Family<OutcomeLabel, Counter>,
    plugin_counters: Family<PluginMetricLabels, Counter>,
    plugin_gauges: Family<PluginMetricLabels, Gauge>,
    plugin_histograms: HistogramFamily<PluginMetricLabels>,
    plugin_traps: Family<PluginLabel, Counter>,
    plugin_callbacks: Family<PluginLabel, crate::plugin::health::CallbackHistogram>,
    plugin_memory: Family<PluginLabel, Gauge>,
    instance_slots: Family<SlotLabels, Gauge>,
    plugin_reloads: Family<PluginOutcomeLabels, Counter>,
    plugin_up: Family<PluginLabel, Gauge>,
    plugin_canary: Family<PluginVersionLabels, Counter>,
    plugin_shadow: Family<PluginOutcomeLabels, Counter>,
    labeled: labeled::Labeled,
    /// 1 when the last config reload succeeded, 0 when it failed.
    pub config_last_reload_ok: Gauge,
    /// The generation of the config in use (1 at start, +1 per successful reload).
    pub config_generation: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Per-route metric handles, looked up once per config generation so that
/// requests only increment.
#[derive(Clone, Debug)]
pub struct RouteStats {
    duration: Histogram,
    by_cluster: Vec<(String, [Counter; 6])>,
}

impl RouteStats {
    /// Counts one request to `cluster` (`""` for local answers) with `status`,
    /// taking `seconds` to its response head.
    pub fn record(&self, cluster: &str, status: u16, seconds: f64) {
        self.duration.observe(seconds);
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            500..=599 => 4,
            _ => 5,
        };
        if let Some((_, counters)) = self.by_cluster.iter().find(|(c, _)| c == cluster) {
            counters[class].inc();
        }
    }
}

const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("weir");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            upstream_active: Family::default(),
            upstream_connections: Family::default(),
            downstream_connections: Family::default(),
            tls_handshake_errors: Family::default(),
            upstream_tls_refusals: Family::default(),
            cert_reloads: Family::default(),
            cert_expiry: Family::default(),
            quota_decisions: Family::default(),
            quota_errors: Family::default(),
            reloads: Family::default(),
            plugin_counters: Family::default(),
            plugin_gauges: Family::default(),
            plugin_histograms: Family::new_with_constructor(value_histogram),
            plugin_traps: Family::default(),
            plugin_callbacks: Family::default(),
            plugin_memory: Family::default(),
            instance_slots: Family::default(),
            plugin_reloads: Family::default(),
            plugin_up: Family::default(),
            plugin_canary: Family::default(),
            plugin_shadow: Family::default(),
            labeled: labeled::Labeled::default(),
            config_last_reload_ok: Gauge::default(),
            config_generation: Gauge::default(),
        };
        registry.register(
            "requests",
            "Requests by route, cluster and status class",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to the response head, by route",
            m.duration.clone(),
        );
        registry.register(
            "upstream_requests_active",
            "Requests in flight upstream, by cluster",
            m.upstream_active.clone(),
        );
        registry.register(
            "upstream_connections",
            "Open upstream connections (pooled or busy), by cluster",
            m.upstream_connections.clone(),
        );
        registry.register(
            "downstream_connections",
            "Open client connections, by listener",
            m.downstream_connections.clone(),
        );
        registry.register(
            "tls_handshake_errors",
            "Refused or failed TLS handshakes, by listener and reason (no_client_certificate, unknown_ca, expired_certificate, timeout, ...)",
            m.tls_handshake_errors.clone(),
        );
        registry.register(
            "upstream_tls_refusals",
            "Upstream certificates refused, by cluster and reason (identity_not_allowed, unknown_ca, expired_certificate, ...)",
            m.upstream_tls_refusals.clone(),
        );
        registry.register(
            "tls_certificate_reloads",
            "Certificate file reloads, by certificate file and outcome (success, failure)",
            m.cert_reloads.clone(),
        );
        registry.register(
            "quota_decisions",
            "Quota takes by backend and outcome (allowed, denied)",
            m.quota_decisions.clone(),
        );
        registry.register(
            "quota_backend_errors",
            "Quota takes the backend could not answer (Redis unreachable or too slow); the failure policy decided them",
            m.quota_errors.clone(),
        );
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When each served certificate expires (Unix time)",
            m.cert_expiry.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads by outcome (success, failure)",
            m.reloads.clone(),
        );
        registry.register(
            "config_last_reload_success",
            "1 if the last config reload succeeded",
            m.config_last_reload_ok.clone(),
        );
        registry.register(
            "config_generation",
            "Generation of the config in use",
            m.config_generation.clone(),
        );
        registry.register(
            "plugin_counter",
            "Counters defined by plugins",
            m.plugin_counters.clone(),
        );
        registry.register(
            "plugin_gauge",
            "Gauges defined by plugins",
            m.plugin_gauges.clone(),
        );
        registry.register(
            "plugin_histogram",
            "Histograms defined by plugins",
            m.plugin_histograms.clone(),
        );
        registry.register(
            "plugin_traps",
            "Plugin traps (panics, limits hit), by plugin",
            m.plugin_traps.clone(),
        );
        registry.register(
            "plugin_callback_duration_seconds",
            "Time spent in plugin callbacks, by plugin",
            m.plugin_callbacks.clone(),
        );
        registry.register(
            "plugin_memory_bytes",
            "Linear memory of a plugin's instances, summed",
            m.plugin_memory.clone(),
        );
        registry.register(
            "plugin_instance_slots",
            "Plugin instance slots of the pooling allocator, by compiler tier and state (in_use, free)",
            m.instance_slots.clone(),
        );
        registry.register(
            "plugin_reloads",
            "Plugin loads and reloads by plugin and outcome (success, failure)",
            m.plugin_reloads.clone(),
        );
        registry.register(
            "plugin_up",
            "1 when a version of the plugin serves, 0 when it failed to load",
            m.plugin_up.clone(),
        );
        registry.register(
            "plugin_canary_requests",
            "Requests a plugin with a canary version saw, by version (stable, canary)",
            m.plugin_canary.clone(),
        );
        registry.register(
            "plugin_shadow_decisions",
            "Decisions of a plugin's shadow version compared with the active one's (same, differ)",
            m.plugin_shadow.clone(),
        );
        m.labeled.register(&mut registry);
        *m.registry.lock().expect("metrics registry lock") = registry;
        m
    }

    /// Handles for `route`, which may send to `clusters` (local answers count under `""`).
    pub fn route_stats<'a>(
        &self,
        route: &str,
        clusters: impl Iterator<Item = &'a str>,
    ) -> RouteStats {
        let mut names: Vec<String> = vec![String::new()];
        names.extend(clusters.map(str::to_string));
        let by_cluster = names
            .into_iter()
            .map(|cluster| {
                let counters = CLASSES.map(|status_class| {
                    self.requests
                        .get_or_create(&RequestLabels {
                            route: route.to_string(),
                            cluster: cluster.clone(),
                            status_class,
                        })
                        .clone()
                });
                (cluster, counters)
            })
            .collect();
        RouteStats {
            duration: self
                .duration
                .get_or_create(&RouteLabel {
                    route: route.to_string(),
                })
                .clone(),
            by_cluster,
        }
    }

    /// Gauge of requests in flight to `cluster`.
    pub fn upstream_active(&self, cluster: &str) -> Gauge {
        self.upstream_active
            .get_or_create(&ClusterLabel {
                cluster: cluster.to_string(),
            })
            .clone()
    }

    /// Gauge of open connections to `cluster`.
    pub fn upstream_connections(&self, cluster: &str) -> Gauge {
        self.upstream_connections
            .get_or_create(&ClusterLabel {
                cluster: cluster.to_string(),
            })
            .clone()
    }

    /// Gauge of open client connections on `listener`.
    pub fn downstream_connections(&self, listener: &str) -> Gauge {
        self.downstream_connections
            .get_or_create(&ListenerLabel {
                listener: listener.to_string(),
            })
            .clone()
    }

    /// Counts a refused or failed TLS handshake on `listener`.
    pub fn tls_handshake_error(&self, listener: &str, reason: &str) {
        self.tls_handshake_errors
            .get_or_create(&HandshakeLabels {
                listener: listener.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts a quota decision.
    pub fn quota_decision(&self, backend: &str, allowed: bool) {
        self.quota_decisions
            .get_or_create(&QuotaLabels {
                backend: backend.to_string(),
                outcome: if allowed { "allowed" } else { "denied" }.to_string(),
            })
            .inc();
    }

    /// Counts a quota take the backend could not answer.
    pub fn quota_backend_error(&self, backend: &str) {
        self.quota_errors
            .get_or_create(&BackendLabel {
                backend: backend.to_string(),
            })
            .inc();
    }

    /// Counts an upstream certificate `cluster` refused.
    pub fn upstream_tls_refusal(&self, cluster: &str, reason: &str) {
        self.upstream_tls_refusals
            .get_or_create(&UpstreamTlsLabels {
                cluster: cluster.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts a reload of the certificate file `cert`.
    pub fn tls_certificate_reload(&self, cert: &std::path::Path, ok: bool) {
        self.cert_reloads
            .get_or_create(&CertOutcomeLabels {
                cert: cert.display().to_string(),
                outcome: if ok { "success" } else { "failure" }.to_string(),
            })
            .inc();
    }

    /// Records when the certificate in `cert` expires.
    pub fn tls_certificate_expiry(&self, cert: &std::path::Path, not_after: std::time::SystemTime) {
        let secs = not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.cert_expiry
            .get_or_create(&CertLabels {
                cert: cert.display().to_string(),
            })
            .set(secs);
    }

    /// A metric a plugin defined, exported with the plugin's name as a label.
    pub fn plugin_metric(
        &self,
        plugin: &str,
        name: &str,
        kind: crate::plugin::host::MetricKind,
    ) -> crate::plugin::host::PluginMetric {
        use crate::plugin::host::{MetricKind, PluginMetric};
        let labels = PluginMetricLabels {
            plugin: plugin.to_string(),
            name: name.to_string(),
        };
        match kind {
            MetricKind::Counter => {
                PluginMetric::Counter(self.plugin_counters.get_or_create(&labels).clone())
            }
            MetricKind::Gauge => {
                PluginMetric::Gauge(self.plugin_gauges.get_or_create(&labels).clone())
            }
            MetricKind::Histogram => {
                PluginMetric::Histogram(self.plugin_histograms.get_or_create(&labels).clone())
            }
        }
    }

    /// A labeled counter of `plugin` (registered on first use); `None` past
    /// the metric's label-set cap.
    pub fn plugin_counter_labeled(
        &self,
        plugin: &str,
        name: &str,
        labels: Vec<(String, String)>,
    ) -> Option<Counter> {
        self.labeled.counter(&self.registry, plugin, name, labels)
    }

    /// A labeled histogram of `plugin` (registered on first use); `None` past
    /// the metric's label-set cap.
    pub fn plugin_histogram_labeled(
        &self,
        plugin: &str,
        name: &str,
        labels: Vec<(String, String)>,
    ) -> Option<Histogram> {
        self.labeled.histogram(&self.registry, plugin, name, labels)
    }

    /// Counts a trap of `plugin`.
    pub fn plugin_trap(&self, plugin: &str) {
        self.plugin_traps
            .get_or_create(&PluginLabel {
                plugin: plugin.to_string(),
            })
            .inc();
    }

    /// The callback-duration histogram of `plugin`.
    pub fn plugin_callback_histogram(
        &self,
        plugin: &str,
    ) -> crate::plugin::health::CallbackHistogram {
        self.plugin_callbacks
            .get_or_create(&PluginLabel {
                plugin: plugin.to_string(),
            })
            .clone()
    }

    /// Sets the memory gauge of `plugin`.
    pub fn plugin_memory(&self, plugin: &str, bytes: u64) {
        self.plugin_memory
            .get_or_create(&PluginLabel {
                plugin: plugin.to_string(),
            })
            .set(bytes as i64);
    }

    /// Sets the instance slots in use and free in the pool of `compiler`'s
    /// engine (`[plugins] instance_slots`).
    pub fn instance_slots(&self, compiler: &'static str, in_use: u64, total: u64) {
        for (state, n) in [("in_use", in_use), ("free", total.saturating_sub(in_use))] {
            self.instance_slots
                .get_or_create(&SlotLabels { compiler, state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Counts a request of `plugin` served by its stable or canary version.
    pub fn plugin_canary_request(&self, plugin: &str, canary: bool) {
        self.plugin_canary
            .get_or_create(&PluginVersionLabels {
                plugin: plugin.to_string(),
                version: if canary { "canary" } else { "stable" },
            })
            .inc();
    }

    /// Counts a comparison of `plugin`'s shadow decision with the active one's.
    pub fn plugin_shadow_decision(&self, plugin: &str, same: bool) {
        self.plugin_shadow
            .get_or_create(&PluginOutcomeLabels {
                plugin: plugin.to_string(),
                outcome: if same { "same" } else { "differ" },
            })
            .inc();
    }

    /// Counts a load attempt of `plugin`.
    pub fn plugin_reload(&self, plugin: &str, ok: bool) {
        self.plugin_reloads
            .get_or_create(&PluginOutcomeLabels {
                plugin: plugin.to_string(),
                outcome: if ok { "success" } else { "failure" },
            })
            .inc();
    }

    /// Sets whether `plugin` serves (`None`: it is gone or disabled; its series is removed).
    pub fn plugin_up(&self, plugin: &str, up: Option<bool>) {
        let label = PluginLabel {
            plugin: plugin.to_string(),
        };
        match up {
            Some(up) => {
                self.plugin_up.get_or_create(&label).set(i64::from(up));
            }
            None => {
                self.plugin_up.remove(&label);
                self.plugin_memory.remove(&label);
            }
        }
    }

    /// Counts a config reload.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&OutcomeLabel {
                outcome: if ok { "success" } else { "failure" },
            })
            .inc();
        self.config_last_reload_ok.set(i64::from(ok));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics registry lock");
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}
