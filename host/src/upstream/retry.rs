//! Retry decisions and backoff: pure functions over a [`RetryPolicy`].

use std::time::Duration;

use http::{Method, StatusCode};
use rand::Rng;

use crate::config::RetryPolicy;
use crate::error::ProxyError;

/// Whether the policy lets `method` be retried.
pub fn method_allowed(policy: &RetryPolicy, method: &Method) -> bool {
    policy.non_idempotent || method.is_idempotent()
}

/// Whether an upstream answer with `status` is retried.
pub fn status_retried(policy: &RetryPolicy, status: StatusCode) -> bool {
    let s = status.as_u16();
    (policy.on_5xx && status.is_server_error())
        || (policy.on_gateway_error && matches!(s, 502..=504))
        || policy.statuses.contains(&s)
}

/// Whether a failed attempt is retried.
pub fn error_retried(policy: &RetryPolicy, err: &ProxyError) -> bool {
    match err {
        ProxyError::ConnectFailed { .. } => {
            policy.on_connect_failure || policy.on_5xx || policy.on_gateway_error
        }
        ProxyError::UpstreamReset { .. } => {
            policy.on_reset || policy.on_5xx || policy.on_gateway_error
        }
        ProxyError::UpstreamTimeout { .. } => policy.on_5xx || policy.on_gateway_error,
        _ => false,
    }
}

/// The wait before retry number `retry` (1 for the first retry): exponential
/// from `backoff_base`, capped at `backoff_max`, with full jitter.
pub fn backoff(policy: &RetryPolicy, retry: u32) -> Duration {
    let ceiling = policy
        .backoff_base
        .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
        .min(policy.backoff_max);
    let nanos = ceiling.as_nanos() as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::rng().random_range(nanos / 2..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            per_try_timeout: None,
            on_connect_failure: true,
            on_reset: false,
            on_5xx: false,
            on_gateway_error: true,
            statuses: vec![429],
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(100),
            non_idempotent: false,
        }
    }

    #[test]
    fn conditions() {
        let p = policy();
        assert!(status_retried(&p, StatusCode::BAD_GATEWAY));
        assert!(status_retried(&p, StatusCode::TOO_MANY_REQUESTS));
        assert!(!status_retried(&p, StatusCode::INTERNAL_SERVER_ERROR));
        assert!(method_allowed(&p, &Method::GET));
        assert!(!method_allowed(&p, &Method::POST));
        let reset = ProxyError::UpstreamReset {
            route: "r".into(),
            cluster: "c".into(),
            reason: "x".into(),
        };
        assert!(
            error_retried(&p, &reset),
            "gateway-error covers resets, as Envoy's does"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = policy();
        for _ in 0..100 {
            let first = backoff(&p, 1);
            assert!(first >= Duration::from_micros(12500) && first <= Duration::from_millis(25));
            let late = backoff(&p, 10);
            assert!(late >= Duration::from_millis(50) && late <= Duration::from_millis(100));
        }
    }
}
