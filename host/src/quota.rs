//! Quota: token buckets the host keeps for plugins (the rate-limit plugin and
//! any other), so that a limit holds across every worker thread of one weir
//! (`local`) or across many weir processes (`redis`).
//!
//! A bucket is named by a key the plugin builds (a descriptor: client IP, API
//! key, JWT subject, route, ...) and sized by its [`Limit`]: `tokens` per
//! `period`, refilled continuously, holding at most `tokens`. Plugins reach it
//! through the WIT `quota` interface, and proxy-wasm plugins through an
//! http call to [`CALL_UPSTREAM`] (the answer comes in
//! `on_http_call_response`, the worker never waits) or, answered at once,
//! `proxy_call_foreign_function("weir.quota.take", ...)`.

mod local;
mod redis_backend;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{QuotaBackend, QuotaConfig};
use crate::telemetry::Metrics;

/// The upstream name a proxy-wasm plugin gives `proxy_http_call` to take
/// quota without holding its worker: the body is the take's JSON, the answer
/// a 200 whose body is the decision's JSON. No cluster may take this name.
pub const CALL_UPSTREAM: &str = "weir.quota";

/// A take as a plugin asks for it in JSON (proxy-wasm's foreign function and
/// http call): `{"key": "...", "cost": 1, "tokens": 10, "period_ms": 1000}`,
/// `cost` 1 when left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakeArgs {
    /// The bucket's key.
    pub key: String,
    /// Tokens to take.
    pub cost: u32,
    /// The bucket's size.
    pub limit: Limit,
}

impl TakeArgs {
    /// Parses the JSON form and checks the limit; the error says what is wrong.
    pub fn from_json(bytes: &[u8]) -> Result<TakeArgs, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Args {
            key: String,
            #[serde(default = "one")]
            cost: u32,
            tokens: u32,
            period_ms: u64,
        }
        fn one() -> u32 {
            1
        }
        let a: Args = serde_json::from_slice(bytes).map_err(|e| {
            format!(
                "bad argument: {e} (expected {{\"key\": \"...\", \"cost\": 1, \"tokens\": 10, \"period_ms\": 1000}})"
            )
        })?;
        let limit = Limit {
            tokens: a.tokens,
            period: Duration::from_millis(a.period_ms),
        };
        limit.check()?;
        Ok(TakeArgs {
            key: a.key,
            cost: a.cost,
            limit,
        })
    }
}

/// A bucket's size: `tokens` per `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limit {
    /// Capacity, and tokens added per period.
    pub tokens: u32,
    /// The refill period.
    pub period: Duration,
}

impl Limit {
    /// Checks the limit is usable; the error says why not.
    pub fn check(&self) -> Result<(), String> {
        if self.tokens == 0 {
            return Err("a limit of 0 tokens admits nothing: use at least 1".into());
        }
        if self.period.is_zero() {
            return Err("a period of 0 refills nothing: use at least 1ms".into());
        }
        Ok(())
    }
}

/// What a take decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the tokens were taken.
    pub allowed: bool,
    /// The bucket's capacity.
    pub limit: u32,
    /// Whole tokens left after this take.
    pub remaining: u32,
    /// When denied: how long until `cost` tokens are there (Retry-After). Else zero.
    pub retry_after: Duration,
    /// How long until the bucket is full again (the RateLimit reset).
    pub reset: Duration,
}

impl Decision {
    /// `retry_after` in whole milliseconds, as both plugin ABIs hand it over.
    pub fn retry_after_ms(&self) -> u32 {
        u32::try_from(self.retry_after.as_millis()).unwrap_or(u32::MAX)
    }

    /// `reset` in whole milliseconds.
    pub fn reset_ms(&self) -> u32 {
        u32::try_from(self.reset.as_millis()).unwrap_or(u32::MAX)
    }

    /// The JSON form proxy-wasm plugins read: `{"allowed": true, "limit":
    /// 10, "remaining": 9, "retry_after_ms": 0, "reset_ms": 100}`.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::json!({
            "allowed": self.allowed,
            "limit": self.limit,
            "remaining": self.remaining,
            "retry_after_ms": self.retry_after_ms(),
            "reset_ms": self.reset_ms(),
        })
        .to_string()
        .into_bytes()
    }
}

/// The quota service of one weir process.
pub struct Quota {
    backend: Backend,
    fail_open: bool,
    metrics: Arc<Metrics>,
}

enum Backend {
    Local(local::Buckets),
    Redis(Box<redis_backend::Buckets>),
}

impl std::fmt::Debug for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quota")
            .field("backend", &self.backend_name())
            .finish_non_exhaustive()
    }
}

impl Quota {
    /// A local quota service (the default).
    pub fn local(metrics: Arc<Metrics>) -> Quota {
        Quota {
            backend: Backend::Local(local::Buckets::default()),
            fail_open: true,
            metrics,
        }
    }

    /// The quota service `config` asks for. The error names what is wrong with it.
    pub fn from_config(config: &QuotaConfig, metrics: Arc<Metrics>) -> Result<Quota, String> {
        let backend = match &config.backend {
            QuotaBackend::Local => Backend::Local(local::Buckets::default()),
            QuotaBackend::Redis { url, timeout, pool } => {
                Backend::Redis(Box::new(redis_backend::Buckets::new(url, *timeout, *pool)?))
            }
        };
        Ok(Quota {
            backend,
            fail_open: config.fail_open,
            metrics,
        })
    }

    /// `local` or `redis`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Local(_) => "local",
            Backend::Redis(_) => "redis",
        }
    }

    /// Whether a take may wait on the network (Redis); a local take never does.
    pub fn may_wait(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// Takes `cost` tokens from bucket `key` sized `limit`. When the backend
    /// cannot answer (Redis unreachable or slow), the configured failure
    /// policy decides and the error is counted in
    /// `weir_quota_backend_errors_total`; the error is only returned for a
    /// bad limit.
    pub fn take(&self, key: &str, cost: u32, limit: Limit) -> Result<Decision, String> {
        limit.check()?;
        let outcome = match &self.backend {
            Backend::Local(b) => Ok(b.take(key, cost, limit)),
            Backend::Redis(b) => b.take(key, cost, limit),
        };
        Ok(self.decide(key, limit, outcome))
    }

    /// As [`Quota::take`], without holding the thread while Redis answers:
    /// the caller's task waits instead (components take this way).
    pub async fn take_async(&self, key: &str, cost: u32, limit: Limit) -> Result<Decision, String> {
        limit.check()?;
        let outcome = match &self.backend {
            Backend::Local(b) => Ok(b.take(key, cost, limit)),
            Backend::Redis(b) => b.take_async(key, cost, limit).await,
        };
        Ok(self.decide(key, limit, outcome))
    }

    /// The decision for a backend's outcome: its own, or the failure policy's.
    fn decide(&self, key: &str, limit: Limit, outcome: Result<Decision, String>) -> Decision {
        let decision = match outcome {
            Ok(d) => d,
            Err(e) => {
                self.metrics.quota_backend_error(self.backend_name());
                tracing::warn!(
                    quota.backend = self.backend_name(),
                    quota.key = key,
                    "quota backend failed, the request is {}: {e}",
                    if self.fail_open {
                        "allowed (failure = \"open\")"
                    } else {
                        "denied (failure = \"closed\")"
                    }
                );
                Decision {
                    allowed: self.fail_open,
                    limit: limit.tokens,
                    remaining: 0,
                    retry_after: if self.fail_open {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(1)
                    },
                    reset: limit.period,
                }
            }
        };
        self.metrics
            .quota_decision(self.backend_name(), decision.allowed);
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_arguments_are_read_from_json_with_cost_one_by_default() {
        let a = TakeArgs::from_json(br#"{"key": "k", "tokens": 10, "period_ms": 1000}"#).unwrap();
        assert_eq!(
            a,
            TakeArgs {
                key: "k".into(),
                cost: 1,
                limit: Limit {
                    tokens: 10,
                    period: Duration::from_secs(1)
                }
            }
        );
        let e =
            TakeArgs::from_json(br#"{"key": "k", "tokens": 0, "period_ms": 1000}"#).unwrap_err();
        assert!(e.contains("a limit of 0 tokens admits nothing"), "{e}");
        let e = TakeArgs::from_json(br#"{"key": "k", "tokens": 1, "period_ms": 1, "x": 1}"#)
            .unwrap_err();
        assert!(e.starts_with("bad argument: unknown field `x`"), "{e}");
        assert!(e.contains("expected {\"key\""), "{e}");
    }
}
