//! The host API as the SDK sees it: weir's imports in a component, the test
//! harness's in-memory host in native unit tests.

/// Which message a header call is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    Request,
    Response,
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Dir;
    use crate::__private::bindings::weir::filter::{
        attributes, env, http, log, metrics, outbound, quota, shared_data, types,
    };

    fn dir(d: Dir) -> types::Direction {
        match d {
            Dir::Request => types::Direction::Request,
            Dir::Response => types::Direction::Response,
        }
    }

    pub fn get_header(d: Dir, name: &str) -> Option<String> {
        http::get_header(dir(d), name)
    }
    pub fn get_headers(d: Dir) -> Vec<(String, String)> {
        http::get_headers(dir(d))
            .into_iter()
            .map(|h| (h.name, h.value))
            .collect()
    }
    pub fn set_header(d: Dir, name: &str, value: Option<&str>) -> Result<(), String> {
        http::set_header(dir(d), name, value)
    }
    pub fn add_header(d: Dir, name: &str, value: &str) -> Result<(), String> {
        http::add_header(dir(d), name, value)
    }
    pub fn attribute(name: &str) -> Option<String> {
        attributes::get(name)
    }
    pub fn set_attribute(name: &str, value: &str) -> Result<(), String> {
        attributes::set(name, value)
    }
    pub fn quota_take(
        key: &str,
        cost: u32,
        limit: super::quota::Limit,
    ) -> Result<super::quota::Decision, String> {
        let d = quota::take(
            key,
            cost,
            quota::Limit {
                tokens: limit.tokens,
                period_ms: limit.period_ms,
            },
        )?;
        Ok(super::quota::Decision {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            retry_after_ms: d.retry_after_ms,
            reset_ms: d.reset_ms,
        })
    }
    pub fn call(req: &super::outbound::Call) -> Result<super::outbound::Reply, String> {
        let r = outbound::call(&outbound::Request {
            cluster: req.cluster.clone(),
            method: req.method.clone(),
            path: req.path.clone(),
            headers: req
                .headers
                .iter()
                .map(|(n, v)| types::Header {
                    name: n.clone(),
                    value: v.clone(),
                })
                .collect(),
            body: req.body.clone(),
            timeout_ms: req.timeout_ms,
        })?;
        Ok(super::outbound::Reply {
            status: r.status,
            headers: r.headers.into_iter().map(|h| (h.name, h.value)).collect(),
            body: r.body,
        })
    }
    pub fn log(level: u8, message: &str) {
        let level = match level {
            0 => types::Level::Debug,
            1 => types::Level::Info,
            2 => types::Level::Warn,
            _ => types::Level::Error,
        };
        log::write(level, message)
    }
    pub fn counter_add(name: &str, delta: u64) {
        metrics::counter_add(name, delta)
    }
    pub fn gauge_set(name: &str, value: i64) {
        metrics::gauge_set(name, value)
    }
    pub fn histogram_record(name: &str, value: u64) {
        metrics::histogram_record(name, value)
    }
    pub fn counter_add_labeled(name: &str, labels: &[(&str, &str)], delta: u64) {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        metrics::counter_add_labeled(name, &labels, delta)
    }
    pub fn histogram_record_labeled(name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        metrics::histogram_record_labeled(name, &labels, value)
    }
    pub fn access(line: &str) {
        log::access(line)
    }
    pub fn random_bytes(n: u32) -> Vec<u8> {
        env::random_bytes(n)
    }
    pub fn shared_get(key: &str) -> Option<(Vec<u8>, u32)> {
        shared_data::get(key).map(|v| (v.value, v.version))
    }
    pub fn shared_set(key: &str, value: &[u8], version: Option<u32>) -> Result<(), String> {
        shared_data::set(key, value, version)
    }
    pub fn now_nanos() -> u64 {
        env::now_nanos()
    }
    pub fn skip_phases(bits: u8) {
        use crate::__private::bindings::weir::filter::callbacks::{Phases, skip};
        use crate::__private::phase;
        let all = [
            (phase::REQUEST_HEADERS, Phases::REQUEST_HEADERS),
            (phase::REQUEST_BODY, Phases::REQUEST_BODY),
            (phase::RESPONSE_HEADERS, Phases::RESPONSE_HEADERS),
            (phase::RESPONSE_BODY, Phases::RESPONSE_BODY),
            (phase::DONE, Phases::DONE),
        ];
        let unused = all
            .into_iter()
            .filter(|(b, _)| bits & b != 0)
            .fold(Phases::empty(), |acc, (_, p)| acc | p);
        skip(unused);
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::Dir;
    use crate::testing::with_host;

    pub fn get_header(d: Dir, name: &str) -> Option<String> {
        with_host(|h| h.get_header(d, name))
    }
    pub fn get_headers(d: Dir) -> Vec<(String, String)> {
        with_host(|h| h.get_headers(d))
    }
    pub fn set_header(d: Dir, name: &str, value: Option<&str>) -> Result<(), String> {
        with_host(|h| h.set_header(d, name, value, false))
    }
    pub fn add_header(d: Dir, name: &str, value: &str) -> Result<(), String> {
        with_host(|h| h.set_header(d, name, Some(value), true))
    }
    pub fn attribute(name: &str) -> Option<String> {
        with_host(|h| {
            h.set_attributes
                .get(name)
                .or_else(|| h.attributes.get(name))
                .cloned()
        })
    }
    pub fn set_attribute(name: &str, value: &str) -> Result<(), String> {
        with_host(|h| h.set_attribute(name, value))
    }
    pub fn quota_take(
        key: &str,
        cost: u32,
        limit: super::quota::Limit,
    ) -> Result<super::quota::Decision, String> {
        with_host(|h| h.quota_take(key, cost, limit))
    }
    pub fn call(req: &super::outbound::Call) -> Result<super::outbound::Reply, String> {
        with_host(|h| h.call(req))
    }
    pub fn log(level: u8, message: &str) {
        with_host(|h| h.logs.push((level, message.to_string())))
    }
    pub fn counter_add(name: &str, delta: u64) {
        with_host(|h| *h.counters.entry(name.to_string()).or_default() += delta)
    }
    pub fn gauge_set(name: &str, value: i64) {
        with_host(|h| {
            h.gauges.insert(name.to_string(), value);
        })
    }
    pub fn histogram_record(name: &str, value: u64) {
        with_host(|h| {
            h.histograms
                .entry(name.to_string())
                .or_default()
                .push(value)
        })
    }
    fn key(name: &str, labels: &[(&str, &str)]) -> String {
        let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        l.sort();
        format!("{name}{{{}}}", l.join(","))
    }
    pub fn counter_add_labeled(name: &str, labels: &[(&str, &str)], delta: u64) {
        with_host(|h| *h.counters.entry(key(name, labels)).or_default() += delta)
    }
    pub fn histogram_record_labeled(name: &str, labels: &[(&str, &str)], value: f64) {
        with_host(|h| {
            h.labeled_histograms
                .entry(key(name, labels))
                .or_default()
                .push(value)
        })
    }
    pub fn access(line: &str) {
        with_host(|h| h.access.push(line.to_string()))
    }
    pub fn random_bytes(n: u32) -> Vec<u8> {
        // Not secret in tests: a fixed-seed sequence, different per call.
        with_host(|h| {
            (0..n)
                .map(|_| {
                    h.rng = h
                        .rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (h.rng >> 56) as u8
                })
                .collect()
        })
    }
    pub fn shared_get(key: &str) -> Option<(Vec<u8>, u32)> {
        with_host(|h| h.shared.get(key).cloned())
    }
    pub fn shared_set(key: &str, value: &[u8], version: Option<u32>) -> Result<(), String> {
        with_host(|h| h.shared_set(key, value, version))
    }
    pub fn now_nanos() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }
    pub fn skip_phases(bits: u8) {
        // The harness calls every phase regardless (as a 0.1.1 host would),
        // and keeps what was declared for the SDK's own tests.
        crate::__private::record_declared(bits);
    }
}

pub(crate) use imp::{
    add_header, attribute, get_header, get_headers, set_attribute, set_header, skip_phases,
};

/// Logging into weir's log, tagged with the plugin's name.
pub mod log {
    /// Logs at debug level.
    pub fn debug(message: &str) {
        super::imp::log(0, message)
    }
    /// Logs at info level.
    pub fn info(message: &str) {
        super::imp::log(1, message)
    }
    /// Logs at warn level.
    pub fn warn(message: &str) {
        super::imp::log(2, message)
    }
    /// Logs at error level.
    pub fn error(message: &str) {
        super::imp::log(3, message)
    }
    /// Writes one line to weir's access log (`[telemetry] access_log`), as is.
    pub fn access(line: &str) {
        super::imp::access(line)
    }
}

/// Metrics on weir's /metrics, labelled with the plugin's name.
pub mod metrics {
    /// Adds `delta` to counter `name`.
    pub fn counter_add(name: &str, delta: u64) {
        super::imp::counter_add(name, delta)
    }
    /// Sets gauge `name`.
    pub fn gauge_set(name: &str, value: i64) {
        super::imp::gauge_set(name, value)
    }
    /// Records `value` in histogram `name`.
    pub fn histogram_record(name: &str, value: u64) {
        super::imp::histogram_record(name, value)
    }
    /// Adds `delta` to counter `name` with `labels`, exported as
    /// `weir_<plugin>_<name>_total{labels}` (at most 2,000 label sets).
    pub fn counter_add_labeled(name: &str, labels: &[(&str, &str)], delta: u64) {
        super::imp::counter_add_labeled(name, labels, delta)
    }
    /// Records `value` in histogram `name` with `labels`, exported as
    /// `weir_<plugin>_<name>{labels}` (buckets 1 to about 10^6, in the metric's unit).
    pub fn histogram_record_labeled(name: &str, labels: &[(&str, &str)], value: f64) {
        super::imp::histogram_record_labeled(name, labels, value)
    }
}

/// Data shared by every instance of plugins with the same vm_id, with
/// compare-and-swap, and the clock.
pub mod shared {
    /// The value of `key` and its version.
    pub fn get(key: &str) -> Option<(Vec<u8>, u32)> {
        super::imp::shared_get(key)
    }
    /// Writes `key`; with `version`, only if nobody wrote since that version.
    pub fn set(key: &str, value: &[u8], version: Option<u32>) -> Result<(), String> {
        super::imp::shared_set(key, value, version)
    }
    /// Wall-clock time in nanoseconds since the Unix epoch.
    pub fn now_nanos() -> u64 {
        super::imp::now_nanos()
    }
    /// `n` bytes from a cryptographically secure source (in the test harness: a fixed sequence).
    pub fn random_bytes(n: u32) -> Vec<u8> {
        super::imp::random_bytes(n)
    }
}

/// Token buckets kept by weir: one budget per key, exact across weir's
/// workers, or across every weir sharing a Redis (`[quota] backend = "redis"`).
pub mod quota {
    /// A bucket's size: at most `tokens`, refilled at `tokens` per `period_ms`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Limit {
        /// Capacity, and tokens added per period.
        pub tokens: u32,
        /// The refill period in milliseconds.
        pub period_ms: u32,
    }

    /// What a take decided.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Decision {
        /// Whether the tokens were taken.
        pub allowed: bool,
        /// The bucket's capacity.
        pub limit: u32,
        /// Whole tokens left.
        pub remaining: u32,
        /// When refused: milliseconds until the tokens are there.
        pub retry_after_ms: u32,
        /// Milliseconds until the bucket is full again.
        pub reset_ms: u32,
    }

    /// Takes `cost` tokens from bucket `key`. The error is for a limit of 0
    /// tokens or a 0 period; an unreachable backend is decided by weir's
    /// failure policy, not reported here.
    pub fn take(key: &str, cost: u32, limit: Limit) -> Result<Decision, String> {
        super::imp::quota_take(key, cost, limit)
    }
}

/// Outbound HTTP calls to clusters of weir's config, for example to fetch
/// keys or ask a policy service. The call looks blocking to the filter; in
/// weir the request waits for the answer without holding a worker thread.
/// Calls can be made from `on_request_headers`, `on_response_headers` and a
/// whole body's callback (after `Action::StopAndBuffer`); from `configure`,
/// a streamed body chunk or `on_done` they answer an error.
///
/// ```no_run
/// let reply = weir_sdk::outbound::Call::get("auth", "/.well-known/jwks.json")
///     .timeout_ms(500)
///     .send();
/// ```
pub mod outbound {
    /// A call to make.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Call {
        /// The cluster's name in weir's config.
        pub cluster: String,
        /// Method, such as `GET`.
        pub method: String,
        /// Path and query, starting with `/`.
        pub path: String,
        /// Headers (the cluster's authority is the Host unless one is set here).
        pub headers: Vec<(String, String)>,
        /// Body.
        pub body: Vec<u8>,
        /// Give up after this many milliseconds (0: weir's default, 5 s).
        pub timeout_ms: u32,
    }

    /// The answer to a call.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct Reply {
        /// HTTP status.
        pub status: u16,
        /// Headers, names in lowercase.
        pub headers: Vec<(String, String)>,
        /// Body.
        pub body: Vec<u8>,
    }

    impl Reply {
        /// The first value of header `name` (any case).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    impl Call {
        /// A call with `method` to `path` on `cluster`.
        pub fn new(cluster: &str, method: &str, path: &str) -> Call {
            Call {
                cluster: cluster.to_string(),
                method: method.to_string(),
                path: path.to_string(),
                headers: Vec::new(),
                body: Vec::new(),
                timeout_ms: 0,
            }
        }

        /// A GET of `path` on `cluster`.
        pub fn get(cluster: &str, path: &str) -> Call {
            Call::new(cluster, "GET", path)
        }

        /// Adds a header.
        pub fn header(mut self, name: &str, value: &str) -> Call {
            self.headers.push((name.to_string(), value.to_string()));
            self
        }

        /// Sets the body.
        pub fn body(mut self, body: impl Into<Vec<u8>>) -> Call {
            self.body = body.into();
            self
        }

        /// Sets the timeout in milliseconds.
        pub fn timeout_ms(mut self, ms: u32) -> Call {
            self.timeout_ms = ms;
            self
        }

        /// Makes the call. The error says why there is no answer: no such
        /// cluster, connection refused, timeout, or a callback that may not
        /// make calls. Any HTTP status is an answer.
        pub fn send(&self) -> Result<Reply, String> {
            super::imp::call(self)
        }
    }
}
