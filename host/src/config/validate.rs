//! Turns [`RawConfig`] into [`Config`], collecting every problem on the way.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use regex::Regex;

use super::locate::{line_col, locate};
use super::raw::*;
use super::*;

const LB_NAMES: &[&str] = &[
    "round_robin",
    "least_request",
    "random",
    "ring_hash",
    "maglev",
];
const RETRY_ON: &[&str] = &[
    "connect-failure",
    "reset",
    "5xx",
    "gateway-error",
    "retriable-status",
];

pub(super) fn parse(text: &str, origin: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let fail = |errors| ConfigErrors {
        origin: origin.to_string(),
        errors,
    };
    let de = toml::Deserializer::parse(text).map_err(|e| fail(vec![toml_error(text, &e)]))?;
    let mut unknown = Vec::new();
    let raw: RawConfig = serde_ignored::deserialize(de, |p| unknown.push(path_string(&p)))
        .map_err(|e| fail(vec![toml_error(text, &e)]))?;
    let mut v = Validator {
        text,
        base_dir,
        errors: Vec::new(),
    };
    for path in unknown {
        let (parent, key) = path.rsplit_once('.').unwrap_or(("", &path));
        let place = if parent.is_empty() {
            "at the top level".to_string()
        } else {
            format!("in {parent}")
        };
        v.err(&path, format!("unknown key {key:?} {place}; remove it or fix its spelling (README.md lists every key)"));
    }
    let mut config = v.config(raw);
    config.origin = origin.to_string();
    if v.errors.is_empty() {
        Ok(config)
    } else {
        let mut errors = v.errors;
        errors.sort_by_key(|e| e.location.unwrap_or((usize::MAX, 0)));
        Err(fail(errors))
    }
}

fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    ConfigError {
        path: String::new(),
        location: e.span().map(|s| line_col(text, s.start)),
        message: e.message().trim().to_string(),
    }
}

fn path_string(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match p {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", path_string(parent)),
        P::Map { parent, key } => {
            let parent = path_string(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            path_string(parent)
        }
    }
}

/// The closest of `candidates` to `name`, if one is close enough to be a typo.
pub(crate) fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> String {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!(" (did you mean {c:?}?)"))
        .unwrap_or_default()
}

struct Validator<'a> {
    text: &'a str,
    base_dir: &'a Path,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.to_string(),
            location: locate(self.text, path),
            message: message.into(),
        });
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let admin = raw
            .admin
            .listen
            .as_deref()
            .filter(|s| !s.is_empty())
            .and_then(|s| self.socket_addr("admin.listen", s));
        if raw.server.workers == Some(0) {
            self.err(
                "server.workers",
                "must be at least 1 (leave it out for one per CPU)",
            );
        }
        let server = ServerConfig {
            workers: raw.server.workers,
            drain_timeout: raw
                .server
                .drain_timeout
                .map_or(std::time::Duration::from_secs(30), |d| d.get()),
        };
        let plugins_dir = self.path(raw.plugins.dir.as_deref().unwrap_or("plugins"));
        let failure = match raw.plugins.failure.as_deref() {
            None | Some("closed") => FailurePolicy::Closed,
            Some("open") => FailurePolicy::Open,
            Some(other) => {
                self.err(
                    "plugins.failure",
                    format!("unknown failure policy {other:?}; choose closed or open"),
                );
                FailurePolicy::Closed
            }
        };
        let plugin_cache_dir = match raw.plugins.cache_dir.as_deref() {
            Some("") => None,
            Some(dir) => Some(self.path(dir)),
            None => std::env::var_os("XDG_CACHE_HOME")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|d| d.join("weir")),
        };
        let plugin_instance_slots = raw.plugins.instance_slots;
        if let Some(slots) = plugin_instance_slots
            && slots > crate::plugin::engine::MAX_INSTANCE_SLOTS
        {
            self.err(
                "plugins.instance_slots",
                format!(
                    "{slots} slots would reserve {} TiB of address space; at most {} (each reserves 4 GiB in each of the two compiler tiers' engines)",
                    u64::from(slots) * 8 / 1024,
                    crate::plugin::engine::MAX_INSTANCE_SLOTS
                ),
            );
        }
        let plugin_defaults = PluginDefaults {
            memory_limit: raw.plugins.memory_limit.unwrap_or(Size::mib(64)).bytes(),
            cpu_limit: raw
                .plugins
                .cpu_limit
                .unwrap_or(Duration::from_millis(10))
                .get(),
            failure,
            bundled: self.bundled(&raw.plugins.bundled),
            bundled_settings: self.bundled_settings(&raw.plugins),
        };
        let quota = self.quota(&raw.quota);
        let access_log = match raw.telemetry.access_log.as_deref() {
            None | Some("-") | Some("stdout") => AccessLogTarget::Stdout,
            Some("off") => AccessLogTarget::Off,
            Some("") => {
                self.err(
                    "telemetry.access_log",
                    "empty: write \"-\" for stdout, a file path, or \"off\"",
                );
                AccessLogTarget::Off
            }
            Some(path) => AccessLogTarget::File(self.path(path)),
        };
        let clusters: Vec<_> = raw
            .cluster
            .iter()
            .enumerate()
            .map(|(i, c)| self.cluster(i, c))
            .collect();
        let cluster_names: Vec<&str> = raw.cluster.iter().map(|c| c.name.as_str()).collect();
        self.unique("cluster", &cluster_names);
        let listener_names: Vec<&str> = raw.listener.iter().map(|l| l.name.as_str()).collect();
        self.unique("listener", &listener_names);
        if raw.listener.is_empty() {
            self.err("", "no [[listener]]: add one, e.g. [[listener]] name = \"public\" listen = \"127.0.0.1:8080\"");
        }
        let listeners: Vec<_> = raw
            .listener
            .iter()
            .enumerate()
            .filter_map(|(i, l)| self.listener(i, l))
            .collect();
        let mut addrs = HashSet::new();
        for (i, l) in listeners.iter().enumerate() {
            if !addrs.insert(l.addr) || admin == Some(l.addr) {
                self.err(
                    &format!("listener[{i}].listen"),
                    format!("address {} is used twice in this file", l.addr),
                );
            }
        }
        let route_names: Vec<&str> = raw.route.iter().map(|r| r.name.as_str()).collect();
        self.unique("route", &route_names);
        let routes = raw
            .route
            .iter()
            .enumerate()
            .filter_map(|(i, r)| self.route(i, r, &cluster_names, &listener_names))
            .collect();
        Config {
            origin: String::new(),
            raw,
            server,
            admin,
            plugins_dir,
            plugin_defaults,
            plugin_cache_dir,
            plugin_instance_slots,
            quota,
            access_log,
            listeners,
            routes,
            clusters: clusters.into_iter().flatten().collect(),
        }
    }

    /// `[plugins.settings.NAME]` as TOML text; settings for a plugin that is
    /// not in `bundled` are an error (they would do nothing).
    fn bundled_settings(
        &mut self,
        plugins: &super::raw::RawPlugins,
    ) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        for (name, table) in &plugins.settings {
            if !plugins.bundled.contains(name) {
                self.err(
                    &format!("plugins.settings.{name}"),
                    format!(
                        "settings for {name:?}, which plugins.bundled does not run; add it there (a plugin of the folder takes its settings from its own .toml)"
                    ),
                );
                continue;
            }
            match toml::to_string(table) {
                Ok(text) => {
                    out.insert(name.clone(), text);
                }
                Err(e) => self.err(&format!("plugins.settings.{name}"), e.to_string()),
            }
        }
        out
    }

    /// The bundled plugins a config names that this weir has; an unknown name
    /// is an error, one this weir was built without is left out with a warning.
    fn bundled(&mut self, names: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for (i, n) in names.iter().enumerate() {
            if !crate::plugin::bundled::NAMES.contains(&n.as_str()) {
                self.err(
                    &format!("plugins.bundled[{i}]"),
                    format!(
                        "no bundled plugin named {n:?}; weir bundles {}",
                        crate::plugin::bundled::NAMES.join(", ")
                    ),
                );
            } else if crate::plugin::bundled::get(n).is_none() {
                tracing::warn!(
                    plugin.name = %n,
                    "this weir was built without its bundled {n} plugin (the wasm32-wasip2 target was missing); it does not run"
                );
            } else if !out.contains(n) {
                out.push(n.clone());
            }
        }
        out
    }

    fn quota(&mut self, q: &RawQuota) -> QuotaConfig {
        let fail_open = match q.failure.as_deref() {
            None | Some("open") => true,
            Some("closed") => false,
            Some(other) => {
                self.err(
                    "quota.failure",
                    format!("unknown failure policy {other:?}; choose open or closed"),
                );
                true
            }
        };
        let backend = match q.backend.as_deref() {
            None | Some("local") => {
                if q.redis_url.is_some() {
                    self.err(
                        "quota.redis_url",
                        "redis_url is only used with backend = \"redis\"",
                    );
                }
                QuotaBackend::Local
            }
            Some("redis") => {
                let url = q.redis_url.clone().unwrap_or_default();
                if !(url.starts_with("redis://") || url.starts_with("unix://")) {
                    self.err(
                        "quota.redis_url",
                        "backend = \"redis\" needs redis_url = \"redis://127.0.0.1:6379\"",
                    );
                }
                QuotaBackend::Redis {
                    url,
                    timeout: q.timeout.unwrap_or(Duration::from_millis(25)).get(),
                    pool: q.pool_size.unwrap_or(16),
                }
            }
            Some(other) => {
                self.err(
                    "quota.backend",
                    format!("unknown quota backend {other:?}; choose local or redis"),
                );
                QuotaBackend::Local
            }
        };
        QuotaConfig { backend, fail_open }
    }

    fn unique(&mut self, kind: &str, names: &[&str]) {
        let mut seen = HashSet::new();
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() {
                self.err(
                    &format!("{kind}[{i}]"),
                    format!("this {kind} has no name: add name = \"...\""),
                );
            } else if !seen.insert(*name) {
                self.err(
                    &format!("{kind}[{i}].name"),
                    format!("another {kind} is already named {name:?}; names must be unique"),
                );
            }
        }
    }

    fn socket_addr(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(path, format!("{s:?} is not an IP:port address (write it like \"127.0.0.1:8080\" or \"[::1]:8080\")"));
                None
            }
        }
    }

    fn listener(&mut self, i: usize, l: &RawListener) -> Option<ListenerConfig> {
        let p = format!("listener[{i}]");
        if l.listen.is_empty() {
            self.err(&p, "no listen address: add listen = \"127.0.0.1:8080\"");
            return None;
        }
        let addr = self.socket_addr(&format!("{p}.listen"), &l.listen)?;
        let tls = l.tls.as_ref().map(|t| {
            for (what, v) in [("cert", &t.cert), ("key", &t.key)] {
                if v.is_empty() {
                    self.err(
                        &format!("{p}.tls"),
                        format!("tls needs {what} = \"path/to/file.pem\""),
                    );
                }
            }
            let sni = t
                .sni
                .iter()
                .enumerate()
                .map(|(j, s)| {
                    if s.server_names.is_empty() {
                        self.err(
                            &format!("{p}.tls.sni[{j}]"),
                            "no server_names: list the names this certificate serves",
                        );
                    }
                    let names = s
                        .server_names
                        .iter()
                        .map(|n| n.to_ascii_lowercase())
                        .collect();
                    (
                        names,
                        CertPaths {
                            cert: self.path(&s.cert),
                            key: self.path(&s.key),
                        },
                    )
                })
                .collect();
            if t.require_client_cert == Some(true) && t.client_ca.is_none() {
                self.err(
                    &format!("{p}.tls.require_client_cert"),
                    "client certificates cannot be checked without a CA: add client_ca = \"path/to/ca.pem\"",
                );
            }
            ListenerTls {
                default: CertPaths {
                    cert: self.path(&t.cert),
                    key: self.path(&t.key),
                },
                sni,
                client_ca: t.client_ca.as_deref().map(|c| self.path(c)),
                require_client_cert: t.client_ca.is_some() && t.require_client_cert.unwrap_or(true),
            }
        });
        let max_header_size = l.max_header_size.unwrap_or(Size::kib(64)).bytes();
        if max_header_size < 8192 {
            self.err(&format!("{p}.max_header_size"), "must be at least 8KiB");
        }
        if l.merge_slashes == Some(true) && l.normalize_path == Some(false) {
            self.err(
                &format!("{p}.merge_slashes"),
                "merging slashes is part of path normalization: remove normalize_path = false, or merge_slashes",
            );
        }
        let trusted_proxies = l
            .trusted_proxies
            .iter()
            .enumerate()
            .filter_map(|(j, text)| {
                let parsed = text.parse::<ipnet::IpNet>().ok().or_else(|| {
                    text.parse::<std::net::IpAddr>()
                        .ok()
                        .map(ipnet::IpNet::from)
                });
                if parsed.is_none() {
                    self.err(
                        &format!("{p}.trusted_proxies[{j}]"),
                        format!("{text:?} is not an IP address or CIDR range (\"10.0.0.0/8\", \"192.0.2.7\", \"fd00::/8\")"),
                    );
                }
                parsed
            })
            .collect();
        Some(ListenerConfig {
            name: l.name.clone(),
            addr,
            tls,
            http2: l.http2.unwrap_or(true),
            max_header_size: max_header_size as usize,
            max_headers: l.max_headers.unwrap_or(100),
            max_request_body: l.max_request_body.unwrap_or(Size::mib(10)).bytes(),
            header_read_timeout: l
                .header_read_timeout
                .unwrap_or(Duration::from_secs(10))
                .get(),
            idle_timeout: l.idle_timeout.unwrap_or(Duration::from_secs(60)).get(),
            stream_idle_timeout: l
                .stream_idle_timeout
                .unwrap_or(Duration::from_secs(300))
                .get(),
            transparent: l.transparent.unwrap_or(false),
            normalize_path: l.normalize_path.unwrap_or(true),
            merge_slashes: l.merge_slashes.unwrap_or(false),
            trusted_proxies,
        })
    }

    fn cluster(&mut self, i: usize, c: &RawCluster) -> Option<ClusterConfig> {
        let p = format!("cluster[{i}]");
        if c.name == crate::quota::CALL_UPSTREAM {
            self.err(
                &format!("{p}.name"),
                format!(
                    "{:?} is the quota service's name for proxy-wasm http calls: name the cluster otherwise",
                    crate::quota::CALL_UPSTREAM
                ),
            );
        }
        let original_dst = c.original_dst.unwrap_or(false);
        if original_dst && !c.endpoints.is_empty() {
            self.err(
                &format!("{p}.original_dst"),
                "an original_dst cluster has no endpoints of its own: remove endpoints, or original_dst",
            );
        }
        if c.endpoints.is_empty() && !original_dst {
            self.err(
                &format!("{p}.endpoints"),
                "no endpoints: list at least one \"host:port\"",
            );
        }
        let endpoints: Vec<_> = c
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(j, e)| self.endpoint(&format!("{p}.endpoints[{j}]"), e))
            .collect();
        let lb = match c.lb.as_deref().unwrap_or("round_robin") {
            "round_robin" => LbPolicy::RoundRobin,
            "least_request" => LbPolicy::LeastRequest,
            "random" => LbPolicy::Random,
            "ring_hash" => LbPolicy::RingHash,
            "maglev" => LbPolicy::Maglev,
            other => {
                let hint = did_you_mean(other, LB_NAMES.iter().copied());
                self.err(
                    &format!("{p}.lb"),
                    format!(
                        "unknown lb {other:?}{hint}; choose one of {}",
                        LB_NAMES.join(", ")
                    ),
                );
                LbPolicy::RoundRobin
            }
        };
        let hash_on = match &c.hash_on {
            Some(h) => self
                .hash_on(&format!("{p}.hash_on"), h)
                .unwrap_or(HashOn::SourceIp),
            None => HashOn::SourceIp,
        };
        let protocol = match c.protocol.as_deref().unwrap_or("http1") {
            "http1" | "http1.1" => UpstreamProtocol::Http1,
            "http2" | "h2" | "h2c" => UpstreamProtocol::Http2,
            other => {
                self.err(
                    &format!("{p}.protocol"),
                    format!("unknown protocol {other:?}; choose http1 or http2"),
                );
                UpstreamProtocol::Http1
            }
        };
        match c.max_concurrent_streams {
            Some(0) => self.err(
                &format!("{p}.max_concurrent_streams"),
                "0 streams would send nothing: write at least 1 (default 100)",
            ),
            Some(_) if protocol != UpstreamProtocol::Http2 => self.err(
                &format!("{p}.max_concurrent_streams"),
                "only HTTP/2 connections carry concurrent streams: set protocol = \"http2\", or remove max_concurrent_streams",
            ),
            _ => {}
        }
        let h2_only = [
            ("keepalive_interval", c.keepalive_interval.is_some()),
            ("keepalive_timeout", c.keepalive_timeout.is_some()),
        ];
        for (key, set) in h2_only {
            if set && protocol != UpstreamProtocol::Http2 {
                self.err(
                    &format!("{p}.{key}"),
                    format!("HTTP/2 pings keep HTTP/2 connections: set protocol = \"http2\", or remove {key}"),
                );
            }
        }
        if c.keepalive_timeout.is_some() && c.keepalive_interval.is_none() {
            self.err(
                &format!("{p}.keepalive_timeout"),
                "no pings are sent without keepalive_interval: add keepalive_interval = \"30s\", or remove keepalive_timeout",
            );
        }
        if c.keepalive_interval.is_some_and(|d| d.get().is_zero()) {
            self.err(
                &format!("{p}.keepalive_interval"),
                "a ping every 0s is no interval: write one like \"30s\", or remove keepalive_interval",
            );
        }
        let keepalive = c.keepalive_interval.map(|every| {
            (
                every.get(),
                c.keepalive_timeout.unwrap_or(Duration::from_secs(20)).get(),
            )
        });
        let tls = c.tls.as_ref().map(|t| {
            let client_cert = match (&t.cert, &t.key) {
                (Some(cert), Some(key)) => Some(CertPaths {
                    cert: self.path(cert),
                    key: self.path(key),
                }),
                (None, None) => None,
                (Some(_), None) => {
                    self.err(
                        &format!("{p}.tls.cert"),
                        "a client certificate needs its key: add key = \"path/to/key.pem\"",
                    );
                    None
                }
                (None, Some(_)) => {
                    self.err(
                        &format!("{p}.tls.key"),
                        "a key without its certificate: add cert = \"path/to/cert.pem\"",
                    );
                    None
                }
            };
            for (j, id) in t.allowed_identities.iter().enumerate() {
                let pattern = id.strip_suffix('*').filter(|p| p.ends_with('/'));
                let checked = match pattern {
                    Some(prefix) => {
                        crate::mesh::spiffe::SpiffeId::parse(prefix.trim_end_matches('/'))
                            .map(|_| ())
                    }
                    None if id == "*" => Ok(()),
                    None => crate::mesh::spiffe::SpiffeId::parse(id).map(|_| ()),
                };
                if let Err(e) = checked {
                    self.err(
                        &format!("{p}.tls.allowed_identities[{j}]"),
                        format!("{e} (write a SPIFFE ID, or a prefix ending in /*)"),
                    );
                }
            }
            ClusterTls {
                ca: t.ca.as_deref().map(|ca| self.path(ca)),
                sni: t.sni.clone(),
                client_cert,
                allowed_identities: t.allowed_identities.clone(),
            }
        });
        let max_response_header_size = c.max_response_header_size.unwrap_or(Size::kib(60)).bytes();
        if !(1024..=1 << 24).contains(&max_response_header_size) {
            self.err(
                &format!("{p}.max_response_header_size"),
                "must be between 1KiB and 16MiB",
            );
        }
        Some(ClusterConfig {
            name: c.name.clone(),
            endpoints,
            original_dst,
            lb,
            hash_on,
            protocol,
            connect_timeout: c.connect_timeout.unwrap_or(Duration::from_secs(5)).get(),
            dns_refresh: c.dns_refresh.unwrap_or(Duration::from_secs(30)).get(),
            idle_timeout: c.idle_timeout.unwrap_or(Duration::from_secs(90)).get(),
            max_idle_per_endpoint: c.max_idle_per_endpoint.unwrap_or(256),
            max_concurrent_streams: c.max_concurrent_streams.unwrap_or(100) as usize,
            keepalive,
            max_response_header_size: max_response_header_size as usize,
            tls,
            raw: c.clone(),
        })
    }

    fn endpoint(&mut self, path: &str, e: &str) -> Option<EndpointAddr> {
        let parsed = e.rsplit_once(':').and_then(|(host, port)| {
            let port: u16 = port.parse().ok()?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            (!host.is_empty()).then(|| (host.to_string(), port))
        });
        match parsed {
            Some((host, port)) => {
                let ip = host.parse::<IpAddr>().ok();
                Some(EndpointAddr { host, port, ip })
            }
            None => {
                self.err(path, format!("{e:?} is not host:port (write it like \"10.0.0.5:8080\" or \"backend.internal:80\")"));
                None
            }
        }
    }

    fn hash_on(&mut self, path: &str, h: &RawHashOn) -> Option<HashOn> {
        let set = [
            h.header.is_some(),
            h.cookie.is_some(),
            h.source_ip == Some(true),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            self.err(
                path,
                "set exactly one of header, cookie or source_ip = true",
            );
            return None;
        }
        if let Some(name) = &h.header {
            return self
                .header_name(&format!("{path}.header"), name)
                .map(HashOn::Header);
        }
        Some(h.cookie.clone().map_or(HashOn::SourceIp, HashOn::Cookie))
    }

    fn header_name(&mut self, path: &str, name: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                self.err(path, format!("{name:?} is not a valid header name"));
                None
            }
        }
    }

    fn header_value(&mut self, path: &str, value: &str) -> Option<HeaderValue> {
        match HeaderValue::from_str(value) {
            Ok(v) => Some(v),
            Err(_) => {
                self.err(path, format!("{value:?} is not a valid header value (no control characters or line breaks)"));
                None
            }
        }
    }

    fn regex(&mut self, path: &str, re: &str) -> Option<Regex> {
        match Regex::new(re) {
            Ok(r) => Some(r),
            Err(e) => {
                let first = e.to_string().lines().last().unwrap_or_default().to_string();
                self.err(path, format!("invalid regex {re:?}: {first}"));
                None
            }
        }
    }

    fn route(
        &mut self,
        i: usize,
        r: &RawRoute,
        clusters: &[&str],
        listeners: &[&str],
    ) -> Option<RouteConfig> {
        let p = format!("route[{i}]");
        for (j, l) in r.listeners.iter().enumerate() {
            if !listeners.contains(&l.as_str()) {
                let hint = did_you_mean(l, listeners.iter().copied());
                self.err(
                    &format!("{p}.listeners[{j}]"),
                    format!("no listener named {l:?}{hint}"),
                );
            }
        }
        let matcher = self.route_match(&format!("{p}.match"), &r.matches);
        let action = self.action(&p, r, clusters);
        if r.prefix_rewrite.is_some() && !matches!(matcher.path, Some(PathMatch::Prefix(_))) {
            self.err(
                &format!("{p}.prefix_rewrite"),
                "prefix_rewrite needs a prefix match: add match.prefix = \"/...\"",
            );
        }
        let host_rewrite = r
            .host_rewrite
            .as_ref()
            .and_then(|h| self.header_value(&format!("{p}.host_rewrite"), h));
        let retry = r
            .retry
            .as_ref()
            .map(|rt| self.retry(&format!("{p}.retry"), rt));
        let request_headers = self.header_ops(&format!("{p}.request_headers"), &r.request_headers);
        let response_headers =
            self.header_ops(&format!("{p}.response_headers"), &r.response_headers);
        Some(RouteConfig {
            name: r.name.clone(),
            listeners: r.listeners.clone(),
            matcher,
            action: action?,
            timeout: r.timeout.unwrap_or(Duration::from_secs(15)).get(),
            retry,
            prefix_rewrite: r.prefix_rewrite.clone(),
            host_rewrite,
            request_headers,
            response_headers,
        })
    }

    fn route_match(&mut self, p: &str, m: &RawMatch) -> RouteMatch {
        let host = m.host.as_ref().map(|h| {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix('*') {
                Some(suffix) if suffix.starts_with('.') => HostMatch::Suffix(suffix.to_string()),
                Some(_) => {
                    self.err(
                        &format!("{p}.host"),
                        "a wildcard host must look like \"*.example.com\"",
                    );
                    HostMatch::Exact(h.clone())
                }
                None => HostMatch::Exact(h.clone()),
            }
        });
        let kinds = [m.path.is_some(), m.prefix.is_some(), m.regex.is_some()];
        if kinds.iter().filter(|k| **k).count() > 1 {
            self.err(p, "set at most one of path, prefix and regex");
        }
        for (key, v) in [("path", &m.path), ("prefix", &m.prefix)] {
            if v.as_ref().is_some_and(|v| !v.starts_with('/')) {
                self.err(&format!("{p}.{key}"), "must start with \"/\"");
            }
        }
        let path = if let Some(x) = &m.path {
            Some(PathMatch::Exact(x.clone()))
        } else if let Some(x) = &m.prefix {
            Some(PathMatch::Prefix(x.clone()))
        } else {
            m.regex
                .as_ref()
                .and_then(|x| self.regex(&format!("{p}.regex"), x))
                .map(PathMatch::Regex)
        };
        let methods = m
            .methods
            .iter()
            .enumerate()
            .filter_map(
                |(j, s)| match Method::from_bytes(s.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => Some(m),
                    Err(_) => {
                        self.err(
                            &format!("{p}.methods[{j}]"),
                            format!("{s:?} is not an HTTP method"),
                        );
                        None
                    }
                },
            )
            .collect();
        let headers = m
            .headers
            .iter()
            .enumerate()
            .filter_map(|(j, k)| {
                let kp = format!("{p}.headers[{j}]");
                let name = self.header_name(&format!("{kp}.name"), &k.name)?;
                Some(KeyMatch {
                    name,
                    value: self.value_match(&kp, k)?,
                })
            })
            .collect();
        let query = m
            .query
            .iter()
            .enumerate()
            .filter_map(|(j, k)| {
                let kp = format!("{p}.query[{j}]");
                if k.name.is_empty() {
                    self.err(&kp, "needs name = \"...\"");
                }
                Some(KeyMatch {
                    name: k.name.clone(),
                    value: self.value_match(&kp, k)?,
                })
            })
            .collect();
        RouteMatch {
            host,
            path,
            methods,
            headers,
            query,
        }
    }

    fn value_match(&mut self, p: &str, k: &RawKeyMatch) -> Option<ValueMatch> {
        let n = [k.exact.is_some(), k.present.is_some(), k.regex.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if n != 1 {
            self.err(p, "set exactly one of exact, present or regex");
            return None;
        }
        if let Some(x) = &k.exact {
            return Some(ValueMatch::Exact(x.clone()));
        }
        if let Some(x) = k.present {
            return Some(ValueMatch::Present(x));
        }
        self.regex(&format!("{p}.regex"), k.regex.as_deref()?)
            .map(ValueMatch::Regex)
    }

    fn cluster_ref(&mut self, path: &str, name: &str, clusters: &[&str]) {
        if !clusters.contains(&name) {
            let hint = did_you_mean(name, clusters.iter().copied());
            let add = if hint.is_empty() {
                format!("; add a [[cluster]] named {name:?}")
            } else {
                String::new()
            };
            self.err(path, format!("no cluster named {name:?}{hint}{add}"));
        }
    }

    fn action(&mut self, p: &str, r: &RawRoute, clusters: &[&str]) -> Option<RouteAction> {
        let set = [
            r.cluster.is_some(),
            !r.weighted.is_empty(),
            r.direct_response.is_some(),
            r.redirect.is_some(),
            r.echo == Some(true),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            self.err(p, "a route needs exactly one of cluster, weighted, direct_response, redirect or echo = true");
            return None;
        }
        if r.sticky.is_some() && r.weighted.is_empty() {
            self.err(
                &format!("{p}.sticky"),
                "sticky only applies to a weighted split",
            );
        }
        if let Some(c) = &r.cluster {
            self.cluster_ref(&format!("{p}.cluster"), c, clusters);
            return Some(RouteAction::Cluster(c.clone()));
        }
        if !r.weighted.is_empty() {
            for (j, w) in r.weighted.iter().enumerate() {
                self.cluster_ref(&format!("{p}.weighted[{j}].cluster"), &w.cluster, clusters);
            }
            if r.weighted.iter().map(|w| u64::from(w.weight)).sum::<u64>() == 0 {
                self.err(
                    &format!("{p}.weighted"),
                    "the weights add up to 0: give at least one cluster a weight",
                );
            }
            let sticky = r
                .sticky
                .as_ref()
                .and_then(|s| self.hash_on(&format!("{p}.sticky"), s));
            let clusters = r
                .weighted
                .iter()
                .map(|w| (w.cluster.clone(), w.weight))
                .collect();
            return Some(RouteAction::Weighted { clusters, sticky });
        }
        if let Some(d) = &r.direct_response {
            let dp = format!("{p}.direct_response");
            let status =
                self.status(&format!("{dp}.status"), d.status.unwrap_or(200), 200..=599)?;
            let headers = d
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    let hp = format!("{dp}.headers.{k}");
                    Some((self.header_name(&hp, k)?, self.header_value(&hp, v)?))
                })
                .collect();
            return Some(RouteAction::Direct {
                status,
                headers,
                body: Bytes::from(d.body.clone()),
            });
        }
        if let Some(rd) = &r.redirect {
            let status = rd.status.unwrap_or(301);
            if ![301, 302, 303, 307, 308].contains(&status) {
                self.err(
                    &format!("{p}.redirect.status"),
                    format!("{status} is not a redirect status; use 301, 302, 303, 307 or 308"),
                );
                return None;
            }
            return Some(RouteAction::Redirect {
                status: StatusCode::from_u16(status).ok()?,
                scheme: rd.scheme.clone(),
                host: rd.host.clone(),
                path: rd.path.clone(),
            });
        }
        Some(RouteAction::Echo)
    }

    fn status(
        &mut self,
        path: &str,
        s: u16,
        range: std::ops::RangeInclusive<u16>,
    ) -> Option<StatusCode> {
        match StatusCode::from_u16(s) {
            Ok(code) if range.contains(&s) => Some(code),
            _ => {
                self.err(
                    path,
                    format!(
                        "{s} is not a valid status here (use {}..={})",
                        range.start(),
                        range.end()
                    ),
                );
                None
            }
        }
    }

    fn retry(&mut self, p: &str, r: &RawRetry) -> RetryPolicy {
        let attempts = r.attempts.unwrap_or(2);
        if attempts == 0 {
            self.err(
                &format!("{p}.attempts"),
                "must be at least 1 (the first attempt counts)",
            );
        }
        let mut policy = RetryPolicy {
            attempts: attempts.max(1),
            per_try_timeout: r.per_try_timeout.map(Duration::get),
            on_connect_failure: false,
            on_reset: false,
            on_5xx: false,
            on_gateway_error: false,
            statuses: r.statuses.clone(),
            backoff_base: r.backoff_base.unwrap_or(Duration::from_millis(25)).get(),
            backoff_max: std::time::Duration::ZERO,
            non_idempotent: r.non_idempotent.unwrap_or(false),
        };
        policy.backoff_max = r
            .backoff_max
            .map_or(policy.backoff_base * 10, Duration::get);
        let on: Vec<&str> = if r.on.is_empty() {
            vec!["connect-failure", "reset", "gateway-error"]
        } else {
            r.on.iter().map(String::as_str).collect()
        };
        for (j, cond) in on.iter().enumerate() {
            match *cond {
                "connect-failure" => policy.on_connect_failure = true,
                "reset" => policy.on_reset = true,
                "5xx" => policy.on_5xx = true,
                "gateway-error" => policy.on_gateway_error = true,
                "retriable-status" => {}
                other => {
                    let hint = did_you_mean(other, RETRY_ON.iter().copied());
                    self.err(
                        &format!("{p}.on[{j}]"),
                        format!(
                            "unknown retry condition {other:?}{hint}; choose from {}",
                            RETRY_ON.join(", ")
                        ),
                    );
                }
            }
        }
        policy
    }

    fn header_ops(&mut self, p: &str, ops: &RawHeaderOps) -> HeaderOps {
        let mut pairs = |key: &str, map: &std::collections::BTreeMap<String, String>| -> Vec<_> {
            map.iter()
                .filter_map(|(k, v)| {
                    let hp = format!("{p}.{key}.{k}");
                    Some((self.header_name(&hp, k)?, self.header_value(&hp, v)?))
                })
                .collect()
        };
        let add = pairs("add", &ops.add);
        let set = pairs("set", &ops.set);
        let remove = ops
            .remove
            .iter()
            .enumerate()
            .filter_map(|(j, n)| self.header_name(&format!("{p}.remove[{j}]"), n))
            .collect();
        HeaderOps { add, set, remove }
    }
}
