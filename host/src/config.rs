//! weir's configuration: one TOML file, parsed into [`raw`] serde structs,
//! then checked and converted into the validated types below.
//!
//! Validation reports every problem at once, each with its place in the file
//! and, where one helps, a hint:
//!
//! ```text
//! weir.toml:14:11: route[2].cluster: no cluster named "bakend" (did you mean "backend"?)
//! ```
//!
//! This module does no I/O beyond reading the file, and binds nothing.

mod locate;
pub mod raw;
pub mod units;
mod validate;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

pub use raw::RawConfig;
pub use units::{Duration, Size};

/// The embedded default config: a gateway on 127.0.0.1:8080 whose default route echoes requests.
pub const DEFAULT_CONFIG: &str = include_str!("config/default.toml");

/// A validated configuration, ready to build a runtime from.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where it was read from (`<embedded default>` for the default).
    pub origin: String,
    /// The file as written, for the admin API.
    pub raw: RawConfig,
    /// Process-wide settings.
    pub server: ServerConfig,
    /// Admin API address, if any.
    pub admin: Option<SocketAddr>,
    /// The plugins directory.
    pub plugins_dir: PathBuf,
    /// Settings every plugin has unless its own .toml says otherwise.
    pub plugin_defaults: PluginDefaults,
    /// The compiled-module cache folder; `None` when off.
    pub plugin_cache_dir: Option<PathBuf>,
    /// Instance slots of the plugin engines' pooling allocator; 0: none;
    /// `None`: sized from the worker count.
    pub plugin_instance_slots: Option<u32>,
    /// The quota service.
    pub quota: QuotaConfig,
    /// Where plugins' access log lines go.
    pub access_log: AccessLogTarget,
    /// Listeners, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// Routes, in match order.
    pub routes: Vec<RouteConfig>,
    /// Clusters, in file order.
    pub clusters: Vec<ClusterConfig>,
}

/// Where access log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Standard output.
    Stdout,
    /// Appended to this file.
    File(PathBuf),
    /// Nowhere.
    Off,
}

/// `[quota]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaConfig {
    /// Where the buckets live.
    pub backend: QuotaBackend,
    /// Allow (true) or deny when the backend cannot answer.
    pub fail_open: bool,
}

/// Quota backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuotaBackend {
    /// In this process, exact across its workers.
    Local,
    /// In Redis, shared by every weir using it.
    Redis {
        /// `redis://host:port/db`.
        url: String,
        /// Connect, read and write timeout.
        timeout: std::time::Duration,
        /// Idle connections kept.
        pool: usize,
    },
}

/// `[server]`.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Worker threads; `None` is one per CPU.
    pub workers: Option<usize>,
    /// Grace period for in-flight requests on shutdown.
    pub drain_timeout: std::time::Duration,
}

/// What happens to a request when a plugin fails (traps, hits a limit, or never loaded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    /// The request gets 503 naming the plugin (Envoy's default).
    Closed,
    /// The plugin is skipped for that request.
    Open,
}

/// Plugin settings from `[plugins]`.
#[derive(Clone, Debug)]
pub struct PluginDefaults {
    /// Linear-memory limit per instance, in bytes.
    pub memory_limit: u64,
    /// CPU time per callback.
    pub cpu_limit: std::time::Duration,
    /// Failure policy.
    pub failure: FailurePolicy,
    /// Plugins built into weir that run before the folder's (`telemetry`).
    pub bundled: Vec<String>,
    /// Settings of bundled plugins from `[plugins.settings.NAME]`, as TOML
    /// text (a `NAME.toml` in the plugins folder wins over them).
    pub bundled_settings: std::collections::BTreeMap<String, String>,
}

/// A listener.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerConfig {
    /// Unique name.
    pub name: String,
    /// Address to bind.
    pub addr: SocketAddr,
    /// Read each connection's original destination (iptables REDIRECT).
    pub transparent: bool,
    /// TLS termination.
    pub tls: Option<ListenerTls>,
    /// Accept HTTP/2.
    pub http2: bool,
    /// Largest request head in bytes.
    pub max_header_size: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Largest request body in bytes.
    pub max_request_body: u64,
    /// Time allowed for a request head.
    pub header_read_timeout: std::time::Duration,
    /// Idle connection timeout.
    pub idle_timeout: std::time::Duration,
    /// Longest wait for a body's next bytes; zero: no limit.
    pub stream_idle_timeout: std::time::Duration,
    /// Normalize request paths before routing (see `proxy::path`).
    pub normalize_path: bool,
    /// Merge runs of slashes in request paths.
    pub merge_slashes: bool,
    /// Peers whose x-forwarded-proto and x-forwarded-host are kept.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl ListenerConfig {
    /// Whether a client at `ip` is one of the listener's trusted proxies.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// A PEM certificate chain and its key, as paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPaths {
    /// Certificate chain file.
    pub cert: PathBuf,
    /// Private key file.
    pub key: PathBuf,
}

/// A listener's TLS settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerTls {
    /// Served when no SNI entry matches.
    pub default: CertPaths,
    /// Chosen by SNI: (server names, certificate).
    pub sni: Vec<(Vec<String>, CertPaths)>,
    /// CA bundle that client certificates must chain to (mTLS); `None` asks for no client certificate.
    pub client_ca: Option<PathBuf>,
    /// Refuse clients without a certificate (when `client_ca` is set).
    pub require_client_cert: bool,
}

/// A route.
#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// Unique name.
    pub name: String,
    /// Listeners it serves; empty is all.
    pub listeners: Vec<String>,
    /// Its match conditions.
    pub matcher: RouteMatch,
    /// What it does.
    pub action: RouteAction,
    /// Whole-request timeout.
    pub timeout: std::time::Duration,
    /// Retry policy.
    pub retry: Option<RetryPolicy>,
    /// Replacement for the matched prefix.
    pub prefix_rewrite: Option<String>,
    /// Replacement Host header.
    pub host_rewrite: Option<HeaderValue>,
    /// Request header changes.
    pub request_headers: HeaderOps,
    /// Response header changes.
    pub response_headers: HeaderOps,
}

/// Match conditions; all present ones must hold.
#[derive(Clone, Debug, Default)]
pub struct RouteMatch {
    /// Host condition.
    pub host: Option<HostMatch>,
    /// Path condition.
    pub path: Option<PathMatch>,
    /// Allowed methods; empty is any.
    pub methods: Vec<Method>,
    /// Header conditions.
    pub headers: Vec<KeyMatch<HeaderName>>,
    /// Query parameter conditions.
    pub query: Vec<KeyMatch<String>>,
}

/// A host condition (lower case, no port).
#[derive(Clone, Debug)]
pub enum HostMatch {
    /// `api.example.com`.
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
}

/// A path condition.
#[derive(Clone, Debug)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// A prefix of the path.
    Prefix(String),
    /// A regex over the path.
    Regex(Regex),
}

/// A condition on one header or query parameter.
#[derive(Clone, Debug)]
pub struct KeyMatch<K> {
    /// Header or parameter name.
    pub name: K,
    /// What its value must be.
    pub value: ValueMatch,
}

/// A condition on a value.
#[derive(Clone, Debug)]
pub enum ValueMatch {
    /// Equal to.
    Exact(String),
    /// Present (`true`) or absent (`false`).
    Present(bool),
    /// Matches.
    Regex(Regex),
}

/// What a route does with a request.
#[derive(Clone, Debug)]
pub enum RouteAction {
    /// Forward to one cluster.
    Cluster(String),
    /// Split across clusters by weight.
    Weighted {
        /// (cluster, weight), weights summing above zero.
        clusters: Vec<(String, u32)>,
        /// Key that keeps a client on one cluster.
        sticky: Option<HashOn>,
    },
    /// Answer directly.
    Direct {
        /// Status.
        status: http::StatusCode,
        /// Headers.
        headers: Vec<(HeaderName, HeaderValue)>,
        /// Body.
        body: Bytes,
    },
    /// Answer with a redirect.
    Redirect {
        /// Status (3xx).
        status: http::StatusCode,
        /// New scheme.
        scheme: Option<String>,
        /// New host.
        host: Option<String>,
        /// New path.
        path: Option<String>,
    },
    /// The built-in echo.
    Echo,
}

/// What a hash is computed over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    /// A request header.
    Header(HeaderName),
    /// A cookie.
    Cookie(String),
    /// The client's IP.
    SourceIp,
}

/// A retry policy.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Total attempts, the first included.
    pub attempts: u32,
    /// Timeout per attempt.
    pub per_try_timeout: Option<std::time::Duration>,
    /// Retry when the connection could not be made.
    pub on_connect_failure: bool,
    /// Retry when the upstream reset the stream before answering.
    pub on_reset: bool,
    /// Retry on any 5xx.
    pub on_5xx: bool,
    /// Retry on 502, 503, 504.
    pub on_gateway_error: bool,
    /// Retry on these statuses.
    pub statuses: Vec<u16>,
    /// First backoff interval.
    pub backoff_base: std::time::Duration,
    /// Largest backoff interval.
    pub backoff_max: std::time::Duration,
    /// Retry non-idempotent methods too.
    pub non_idempotent: bool,
}

/// Header changes.
#[derive(Clone, Debug, Default)]
pub struct HeaderOps {
    /// Appended.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Replacing.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Removed.
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }

    /// Applies the changes: remove, then set, then add.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// A cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Unique name.
    pub name: String,
    /// Endpoints as written (empty for `original_dst`).
    pub endpoints: Vec<EndpointAddr>,
    /// Send each request to its connection's original destination.
    pub original_dst: bool,
    /// Balancing policy.
    pub lb: LbPolicy,
    /// For hash policies: what to hash.
    pub hash_on: HashOn,
    /// Upstream protocol.
    pub protocol: UpstreamProtocol,
    /// Connect timeout.
    pub connect_timeout: std::time::Duration,
    /// DNS refresh interval.
    pub dns_refresh: std::time::Duration,
    /// Pooled connection idle timeout.
    pub idle_timeout: std::time::Duration,
    /// Most idle pooled connections per endpoint.
    pub max_idle_per_endpoint: usize,
    /// Most requests at once on one HTTP/2 connection; past it another opens.
    pub max_concurrent_streams: usize,
    /// HTTP/2 pings: (every, answered within); `None` sends none.
    pub keepalive: Option<(std::time::Duration, std::time::Duration)>,
    /// Largest response head taken from an endpoint, in bytes.
    pub max_response_header_size: usize,
    /// Upstream TLS.
    pub tls: Option<ClusterTls>,
    /// The table as written, to tell whether a reload changed it.
    pub raw: raw::RawCluster,
}

/// An endpoint as written: a host (IP or DNS name) and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointAddr {
    /// IP literal or DNS name.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Set when `host` is an IP literal.
    pub ip: Option<IpAddr>,
}

/// Load balancing policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbPolicy {
    /// Each endpoint in turn.
    RoundRobin,
    /// Fewer active requests wins, between two picked at random.
    LeastRequest,
    /// Uniformly at random.
    Random,
    /// Consistent hashing on a ring (Ketama).
    RingHash,
    /// Consistent hashing with a Maglev table.
    Maglev,
}

impl LbPolicy {
    /// Its name in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            LbPolicy::RoundRobin => "round_robin",
            LbPolicy::LeastRequest => "least_request",
            LbPolicy::Random => "random",
            LbPolicy::RingHash => "ring_hash",
            LbPolicy::Maglev => "maglev",
        }
    }
}

/// Upstream protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2, multiplexed.
    Http2,
}

impl UpstreamProtocol {
    /// Its name in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::Http2 => "http2",
        }
    }
}

/// Upstream TLS settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterTls {
    /// CA bundle; `None` is the Mozilla roots.
    pub ca: Option<PathBuf>,
    /// Server name override.
    pub sni: Option<String>,
    /// Client certificate and key presented to the upstream (mTLS).
    pub client_cert: Option<CertPaths>,
    /// SPIFFE IDs (or `prefix/*` patterns) the upstream's certificate must carry;
    /// when set, they replace the server-name check (mesh upstreams are named by identity, not DNS).
    pub allowed_identities: Vec<String>,
}

/// One problem found in a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Where, as a path into the file: `route[2].cluster`.
    pub path: String,
    /// Line and column (1-based), when the place could be found.
    pub location: Option<(usize, usize)>,
    /// What is wrong, and what to do.
    pub message: String,
}

/// Every problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file (or `<embedded default>`).
    pub origin: String,
    /// The problems, in file order.
    pub errors: Vec<ConfigError>,
}

impl std::error::Error for ConfigErrors {}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match e.location {
                Some((line, col)) => write!(f, "{}:{line}:{col}: ", self.origin)?,
                None => write!(f, "{}: ", self.origin)?,
            }
            if e.path.is_empty() {
                write!(f, "{}", e.message)?;
            } else {
                write!(f, "{}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigErrors> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            origin: origin.clone(),
            errors: vec![ConfigError {
                path: String::new(),
                location: None,
                message: format!("cannot read the config file: {e}"),
            }],
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_toml(&text, &origin, &base)
    }

    /// The embedded default config, with paths taken from the current directory.
    pub fn embedded_default() -> Config {
        Self::from_toml(DEFAULT_CONFIG, "<embedded default>", Path::new("."))
            .expect("the embedded default config is valid (checked by a unit test)")
    }

    /// Parses and validates config text. Relative paths are taken from `base_dir`.
    pub fn from_toml(text: &str, origin: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        validate::parse(text, origin, base_dir)
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&ClusterConfig> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests;
