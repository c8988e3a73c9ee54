//! Errors on the request path, and the one place that turns them into responses.
//!
//! Every error says where it came from ([`ErrorSource`]) and whether a retry
//! may help; [`ProxyError::into_response`] is the only code that writes error
//! responses.

use std::time::Duration;

use http::{Response, StatusCode, header};

use crate::body::{self, Body};

/// Where a failure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something weir refuses.
    Downstream,
    /// The upstream could not be reached or misbehaved.
    Upstream,
    /// The configuration leaves no way to serve the request.
    Config,
    /// A plugin failed.
    Plugin,
    /// weir itself.
    Internal,
}

/// A request that weir could not proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matched.
    #[error("no route matches {method} {host}{path}")]
    NoRoute {
        /// Request method.
        method: String,
        /// Request host.
        host: String,
        /// Request path.
        path: String,
    },
    /// The cluster has no endpoint to send to.
    #[error("no healthy endpoint in cluster {cluster:?} (route {route:?})")]
    NoEndpoint {
        /// Route name.
        route: String,
        /// Cluster name.
        cluster: String,
    },
    /// Connecting to the upstream failed.
    #[error("upstream connect error: cluster {cluster:?} (route {route:?}): {reason}")]
    ConnectFailed {
        /// Route name.
        route: String,
        /// Cluster name.
        cluster: String,
        /// Why.
        reason: String,
    },
    /// The upstream did not answer in time.
    #[error("upstream timeout after {after:?}: cluster {cluster:?} (route {route:?})")]
    UpstreamTimeout {
        /// Route name.
        route: String,
        /// Cluster name.
        cluster: String,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The upstream closed or reset the stream before answering.
    #[error("upstream reset before response: cluster {cluster:?} (route {route:?}): {reason}")]
    UpstreamReset {
        /// Route name.
        route: String,
        /// Cluster name.
        cluster: String,
        /// Why.
        reason: String,
    },
    /// The upstream answered with a response weir will not pass on (502).
    #[error("invalid upstream response: cluster {cluster:?} (route {route:?}): {reason}")]
    BadUpstreamResponse {
        /// Route name.
        route: String,
        /// Cluster name.
        cluster: String,
        /// What is wrong with the response.
        reason: String,
    },
    /// The client sent nothing of its request body for the listener's
    /// `stream_idle_timeout`.
    #[error("request body timeout: no bytes for {after:?} (the listener's stream_idle_timeout)")]
    BodyTimeout {
        /// The timeout.
        after: Duration,
    },
    /// The request body is over the listener's limit.
    #[error("request body larger than the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The request head is over the listener's limit.
    #[error("request headers too large: {what}")]
    HeadersTooLarge {
        /// Which limit.
        what: String,
    },
    /// The request is malformed.
    #[error("bad request: {reason}")]
    BadRequest {
        /// Why.
        reason: String,
    },
    /// The request asks for something weir does not do (a CONNECT tunnel, a
    /// transfer coding other than chunked).
    #[error("not implemented: {what}")]
    NotImplemented {
        /// What, and what weir does instead.
        what: String,
    },
    /// A plugin failed and its failure policy is closed.
    #[error("plugin {plugin:?} failed: {reason}")]
    PluginFailed {
        /// Plugin name.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// A bug or resource failure in weir.
    #[error("internal error: {reason}")]
    Internal {
        /// Why.
        reason: String,
    },
}

impl ProxyError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::NoEndpoint { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailed { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamReset { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::BadUpstreamResponse { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ProxyError::NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
            ProxyError::PluginFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Where the failure came from.
    pub fn source_kind(&self) -> ErrorSource {
        match self {
            ProxyError::NoRoute { .. } => ErrorSource::Config,
            ProxyError::NoEndpoint { .. }
            | ProxyError::ConnectFailed { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::BadUpstreamResponse { .. } => ErrorSource::Upstream,
            ProxyError::BodyTooLarge { .. }
            | ProxyError::BodyTimeout { .. }
            | ProxyError::HeadersTooLarge { .. }
            | ProxyError::BadRequest { .. }
            | ProxyError::NotImplemented { .. } => ErrorSource::Downstream,
            ProxyError::PluginFailed { .. } => ErrorSource::Plugin,
            ProxyError::Internal { .. } => ErrorSource::Internal,
        }
    }

    /// Whether another attempt, perhaps at another endpoint, may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            ProxyError::ConnectFailed { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::UpstreamReset { .. } => true,
            ProxyError::NoRoute { .. }
            | ProxyError::NoEndpoint { .. }
            | ProxyError::BadUpstreamResponse { .. }
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::BodyTimeout { .. }
            | ProxyError::HeadersTooLarge { .. }
            | ProxyError::BadRequest { .. }
            | ProxyError::NotImplemented { .. }
            | ProxyError::PluginFailed { .. }
            | ProxyError::Internal { .. } => false,
        }
    }

    /// The response for this error: its status and a short text body naming the cause.
    pub fn into_response(self) -> Response<Body> {
        let mut text = self.to_string();
        text.push('\n');
        let mut resp = Response::new(body::full(text));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if matches!(
            self,
            ProxyError::BodyTooLarge { .. }
                | ProxyError::BodyTimeout { .. }
                | ProxyError::HeadersTooLarge { .. }
                | ProxyError::BadRequest { .. }
                | ProxyError::NotImplemented { .. }
        ) {
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_bodies_name_the_cause() {
        let e = ProxyError::ConnectFailed {
            route: "api".into(),
            cluster: "backend".into(),
            reason: "connection refused".into(),
        };
        assert!(e.retryable());
        assert_eq!(e.source_kind(), ErrorSource::Upstream);
        let resp = e.into_response();
        assert_eq!(resp.status(), 502);
        let t = ProxyError::UpstreamTimeout {
            route: "r".into(),
            cluster: "c".into(),
            after: Duration::from_millis(250),
        };
        assert_eq!(t.status(), 504);
        assert!(t.to_string().contains("250ms"));
        assert_eq!(
            ProxyError::NoEndpoint {
                route: "r".into(),
                cluster: "c".into()
            }
            .status(),
            503
        );
    }
}
