//! The config file as written: serde structs, one per TOML table, every field
//! documented. Unknown keys are collected by
//! [`Config::from_toml`](super::Config::from_toml) and rejected, all at once.
//! Nothing here is checked beyond its type; `validate` does the rest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::units::{Duration, Size};

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawConfig {
    /// Process-wide settings.
    pub server: RawServer,
    /// The admin API.
    pub admin: RawAdmin,
    /// The plugins directory and plugin defaults.
    pub plugins: RawPlugins,
    /// The quota service plugins take tokens from.
    pub quota: RawQuota,
    /// Where plugins' telemetry goes.
    pub telemetry: RawTelemetry,
    /// `[[listener]]`: where weir accepts traffic.
    pub listener: Vec<RawListener>,
    /// `[[route]]`: ordered routes, first match wins.
    pub route: Vec<RawRoute>,
    /// `[[cluster]]`: upstream services.
    pub cluster: Vec<RawCluster>,
}

/// `[server]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawServer {
    /// Worker threads; default: one per CPU.
    pub workers: Option<usize>,
    /// How long in-flight requests may take to finish on SIGTERM/SIGINT.
    pub drain_timeout: Option<Duration>,
}

/// `[telemetry]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawTelemetry {
    /// Where plugins' access log lines go: `"-"` (stdout, the default), a file path (appended), or `"off"`.
    pub access_log: Option<String>,
}

/// `[quota]`: where the rate-limit buckets live.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawQuota {
    /// `local` (default: exact within this weir) or `redis` (shared by every weir using the same Redis).
    pub backend: Option<String>,
    /// For `redis`: `redis://host:port/db`.
    pub redis_url: Option<String>,
    /// For `redis`: connect, read and write timeout. Default 25ms.
    pub timeout: Option<Duration>,
    /// For `redis`: idle connections kept. Default 16.
    pub pool_size: Option<usize>,
    /// When the backend cannot answer: `open` (allow, the default) or `closed` (deny).
    pub failure: Option<String>,
}

/// `[admin]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawAdmin {
    /// Address of the admin listener, e.g. `"127.0.0.1:9901"`. Empty: no admin API.
    pub listen: Option<String>,
}

/// `[plugins]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawPlugins {
    /// The plugins directory; relative paths are taken from the config file's folder.
    pub dir: Option<String>,
    /// Default linear-memory limit per plugin instance. Default 64MiB.
    pub memory_limit: Option<Size>,
    /// Default CPU time per plugin callback. Default 10ms.
    pub cpu_limit: Option<Duration>,
    /// Default failure policy: `closed` (503 naming the plugin) or `open` (skip it). Default closed.
    pub failure: Option<String>,
    /// Where compiled plugins are cached by content hash, so a restart skips
    /// compiling them. Default: `$XDG_CACHE_HOME/weir` (or `~/.cache/weir`);
    /// `""` turns the disk cache off. Read at start only.
    pub cache_dir: Option<String>,
    /// Plugin instances that can exist at once, in the pooling allocator's
    /// slots: each reserves 4 GiB of address space (not memory). 0 maps
    /// each instance's memory on its own. Default 32 per worker, at least
    /// 1000. Read at start only.
    pub instance_slots: Option<u32>,
    /// Plugins built into weir to run before the folder's, such as `["telemetry"]`.
    pub bundled: Vec<String>,
    /// Settings of bundled plugins by name, each what a `NAME.toml` in the
    /// plugins folder would hold (that file, when there is one, wins).
    pub settings: std::collections::BTreeMap<String, toml::Table>,
}

/// `[[listener]]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawListener {
    /// Unique name, used by routes' `listeners` and in metrics.
    pub name: String,
    /// Socket address to bind, e.g. `"0.0.0.0:8080"`.
    pub listen: String,
    /// Connections arrive redirected by iptables (REDIRECT): their original destination
    /// (SO_ORIGINAL_DST) becomes `destination.address` and the endpoint of `original_dst` clusters.
    pub transparent: Option<bool>,
    /// TLS termination; absent means plain HTTP (HTTP/1.1 and h2c prior knowledge).
    pub tls: Option<RawListenerTls>,
    /// Accept HTTP/2 (h2c with prior knowledge, or h2 through ALPN). Default true.
    pub http2: Option<bool>,
    /// Largest request head (request line plus headers). Default 64KiB; past it: 431.
    pub max_header_size: Option<Size>,
    /// Most request headers. Default 100; past it: 431.
    pub max_headers: Option<usize>,
    /// Largest request body. Default 10MiB; past it: 413.
    pub max_request_body: Option<Size>,
    /// Time allowed to receive a request head. Default 10s; past it: 408 and close.
    pub header_read_timeout: Option<Duration>,
    /// A connection with no request in flight for this long is closed. Default 60s.
    pub idle_timeout: Option<Duration>,
    /// Longest wait for the next bytes of a request or response body once
    /// it has begun; past it the request ends (408, or the response is cut
    /// off). Default 5m, as Envoy's `stream_idle_timeout`; `"0s"` turns it off.
    pub stream_idle_timeout: Option<Duration>,
    /// Normalize request paths (RFC 3986: dot segments, unreserved escapes,
    /// backslashes) before routing, plugins and the upstream. Default true.
    pub normalize_path: Option<bool>,
    /// Merge runs of slashes in request paths into one. Default false.
    pub merge_slashes: Option<bool>,
    /// Peers (IP addresses or CIDR ranges) whose x-forwarded-proto and
    /// x-forwarded-host are believed; every other client's are replaced.
    pub trusted_proxies: Vec<String>,
}

/// A listener's `tls` table.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawListenerTls {
    /// PEM certificate chain served when no SNI entry matches.
    pub cert: String,
    /// PEM private key for `cert`.
    pub key: String,
    /// Extra certificates chosen by the client's SNI.
    pub sni: Vec<RawSniCert>,
    /// PEM CA bundle client certificates must chain to: turns on mTLS.
    pub client_ca: Option<String>,
    /// Refuse clients that send no certificate. Default true when `client_ca` is set.
    pub require_client_cert: Option<bool>,
}

/// One `[[listener.tls.sni]]` entry.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawSniCert {
    /// Server names this certificate answers for (exact or `*.example.com`).
    pub server_names: Vec<String>,
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

/// `[[route]]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawRoute {
    /// Unique name, shown in metrics, errors and logs.
    pub name: String,
    /// Listeners this route serves; default all.
    pub listeners: Vec<String>,
    /// What a request must look like; an empty match takes everything.
    #[serde(rename = "match")]
    pub matches: RawMatch,
    /// Forward to this cluster.
    pub cluster: Option<String>,
    /// Split across clusters by weight (canary, A/B).
    pub weighted: Vec<RawWeightedCluster>,
    /// Make a weighted split sticky: the same key always lands on the same cluster.
    pub sticky: Option<RawHashOn>,
    /// Answer directly without an upstream.
    pub direct_response: Option<RawDirectResponse>,
    /// Answer with a redirect.
    pub redirect: Option<RawRedirect>,
    /// Answer with weir's built-in echo: JSON describing the request as it arrived.
    pub echo: Option<bool>,
    /// Whole-request timeout, retries included. Default 15s.
    pub timeout: Option<Duration>,
    /// Retry policy.
    pub retry: Option<RawRetry>,
    /// Replace the matched path prefix (for `prefix` matches) with this.
    pub prefix_rewrite: Option<String>,
    /// Replace the Host header sent upstream.
    pub host_rewrite: Option<String>,
    /// Changes to the request headers sent upstream.
    pub request_headers: RawHeaderOps,
    /// Changes to the response headers sent downstream.
    pub response_headers: RawHeaderOps,
}

/// A route's `match` table.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawMatch {
    /// Host, exact (`api.example.com`) or wildcard (`*.example.com`); port ignored.
    pub host: Option<String>,
    /// Exact path (query excluded).
    pub path: Option<String>,
    /// Path prefix.
    pub prefix: Option<String>,
    /// Path regex (anchored by you, if you want it anchored).
    pub regex: Option<String>,
    /// Allowed methods; default any.
    pub methods: Vec<String>,
    /// Header conditions, all must hold.
    pub headers: Vec<RawKeyMatch>,
    /// Query parameter conditions, all must hold.
    pub query: Vec<RawKeyMatch>,
}

/// A header or query parameter condition: exactly one of `exact`, `present`, `regex`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawKeyMatch {
    /// Header or parameter name.
    pub name: String,
    /// The value must equal this.
    pub exact: Option<String>,
    /// `true`: must be present; `false`: must be absent.
    pub present: Option<bool>,
    /// The value must match this regex.
    pub regex: Option<String>,
}

/// One `[[route.weighted]]` entry.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawWeightedCluster {
    /// Cluster name.
    pub cluster: String,
    /// Relative weight (0 takes no traffic).
    pub weight: u32,
}

/// What to hash for sticky splits and consistent-hash balancing: one of the fields.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawHashOn {
    /// Hash this request header.
    pub header: Option<String>,
    /// Hash this cookie.
    pub cookie: Option<String>,
    /// Hash the client's IP address.
    pub source_ip: Option<bool>,
}

/// `direct_response`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawDirectResponse {
    /// Status code. Default 200.
    pub status: Option<u16>,
    /// Response headers.
    pub headers: BTreeMap<String, String>,
    /// Response body.
    pub body: String,
}

/// `redirect`: parts left out keep the request's own.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawRedirect {
    /// 301, 302, 303, 307 or 308. Default 301.
    pub status: Option<u16>,
    /// New scheme.
    pub scheme: Option<String>,
    /// New host (with optional port).
    pub host: Option<String>,
    /// New path (query kept).
    pub path: Option<String>,
}

/// `retry`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawRetry {
    /// Total attempts, the first included. Default 2.
    pub attempts: Option<u32>,
    /// Timeout for each attempt's response head.
    pub per_try_timeout: Option<Duration>,
    /// Conditions: `connect-failure`, `reset`, `5xx`, `gateway-error`, `retriable-status`.
    pub on: Vec<String>,
    /// Statuses retried under `retriable-status` (or on their own when set).
    pub statuses: Vec<u16>,
    /// First backoff interval; doubles each retry, with full jitter. Default 25ms.
    pub backoff_base: Option<Duration>,
    /// Largest backoff interval. Default 10 × backoff_base.
    pub backoff_max: Option<Duration>,
    /// Retry non-idempotent methods (POST, PATCH) too. Default false.
    pub non_idempotent: Option<bool>,
}

/// `request_headers` / `response_headers`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawHeaderOps {
    /// Appended, keeping existing values.
    pub add: BTreeMap<String, String>,
    /// Replacing existing values.
    pub set: BTreeMap<String, String>,
    /// Removed.
    pub remove: Vec<String>,
}

/// `[[cluster]]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawCluster {
    /// Unique name, referenced by routes.
    pub name: String,
    /// `"IP:port"` or `"dns-name:port"`; names resolve at start and every `dns_refresh`.
    pub endpoints: Vec<String>,
    /// No endpoints of its own: each request goes to the original destination of its
    /// connection (a `transparent` listener's redirected traffic), as Envoy's ORIGINAL_DST cluster.
    pub original_dst: Option<bool>,
    /// `round_robin` (default), `least_request`, `random`, `ring_hash`, `maglev`.
    pub lb: Option<String>,
    /// For `ring_hash` and `maglev`: what to hash. Default the client IP.
    pub hash_on: Option<RawHashOn>,
    /// `http1` (default) or `http2` (h2c prior knowledge, or ALPN h2 with TLS).
    pub protocol: Option<String>,
    /// TCP (and TLS) connect timeout. Default 5s.
    pub connect_timeout: Option<Duration>,
    /// How often DNS names are resolved again. Default 30s.
    pub dns_refresh: Option<Duration>,
    /// Idle pooled connections are closed after this. Default 90s.
    pub idle_timeout: Option<Duration>,
    /// Most idle pooled connections kept per endpoint. Default 256.
    pub max_idle_per_endpoint: Option<usize>,
    /// `http2` clusters: most requests at once on one connection; past it
    /// another connection to the endpoint opens. Default 100.
    pub max_concurrent_streams: Option<u32>,
    /// `http2` clusters: send a ping on every connection this often; a
    /// connection whose ping is not answered within `keepalive_timeout` is
    /// closed. Default off.
    pub keepalive_interval: Option<Duration>,
    /// How long a ping may go unanswered (with `keepalive_interval`). Default 20s.
    pub keepalive_timeout: Option<Duration>,
    /// Largest response head (status line and headers) taken from an
    /// endpoint; a larger one answers 502. Default 60KiB, as Envoy's.
    pub max_response_header_size: Option<Size>,
    /// Originate TLS to the endpoints.
    pub tls: Option<RawClusterTls>,
}

/// A cluster's `tls` table.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawClusterTls {
    /// PEM CA bundle to verify the upstream; default the Mozilla roots.
    pub ca: Option<String>,
    /// Server name to send and verify; default the endpoint's host.
    pub sni: Option<String>,
    /// PEM client certificate presented to the upstream (mTLS); needs `key`.
    pub cert: Option<String>,
    /// PEM private key for `cert`.
    pub key: Option<String>,
    /// SPIFFE IDs the upstream must prove (exact, or a `.../*` prefix); replaces the server-name check.
    pub allowed_identities: Vec<String>,
}
