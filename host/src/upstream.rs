//! Upstream clusters: endpoints, balancing, connection pools, TLS origination.
//!
//! A [`Cluster`] owns a connection pool (HTTP/1.1 keep-alive connections,
//! or one multiplexed HTTP/2 connection per endpoint) and an
//! [`lb::EndpointSet`] that DNS refreshes swap as a whole.

mod dial;
pub mod lb;
mod multiplex;
mod pool;
mod resolve;
pub mod retry;
pub mod tls;

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Response, Uri, header};
use prometheus_client::metrics::gauge::Gauge;
use rustls_pki_types::ServerName;

use crate::body::Body;
use crate::config::{ClusterConfig, UpstreamProtocol};
use crate::telemetry::Metrics;
use dial::{Dialer, TlsOrigin};
use lb::{Balancer, Endpoint, EndpointSet};
use multiplex::Http2Pool;
use pool::Http1Pool;
pub use pool::UpstreamBody;

/// Why a request could not be sent upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection to the endpoint could be made.
    #[error("tcp connect to {addr}: {source}")]
    Connect {
        /// The endpoint.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The TLS handshake with the endpoint failed (its certificate was
    /// refused, or it spoke no TLS).
    #[error("tls handshake with {addr}: {source}")]
    Tls {
        /// The endpoint.
        addr: SocketAddr,
        /// The handshake error.
        source: std::io::Error,
    },
    /// Connecting (TCP, and TLS if the cluster originates it) took longer
    /// than the cluster's `connect_timeout`.
    #[error("connect to {addr}: timed out after {after:?}")]
    ConnectTimeout {
        /// The endpoint.
        addr: SocketAddr,
        /// The cluster's `connect_timeout`.
        after: Duration,
    },
    /// The HTTP/2 connection preface could not be sent.
    #[error("HTTP/2 handshake with {addr}: {source}")]
    Handshake {
        /// The endpoint.
        addr: SocketAddr,
        /// hyper's error.
        source: hyper::Error,
    },
    /// The connect this request waited for (another request's, to the same
    /// HTTP/2 endpoint) failed.
    #[error(transparent)]
    Dial(Arc<SendError>),
    /// The connection failed while the request was sent or answered.
    #[error(transparent)]
    Request(#[from] hyper::Error),
}

impl SendError {
    /// Whether no connection could be made (as opposed to one failing).
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Connect { .. }
            | SendError::Tls { .. }
            | SendError::ConnectTimeout { .. }
            | SendError::Handshake { .. } => true,
            SendError::Dial(e) => e.is_connect(),
            SendError::Request(_) => false,
        }
    }
}

/// How a cluster's requests reach its endpoints.
enum Transport {
    /// HTTP/1.1, plain or over TLS: idle connections kept per endpoint.
    Http1(Arc<Http1Pool>),
    /// HTTP/2, h2c or over TLS with ALPN h2: one multiplexed connection per
    /// endpoint.
    Http2(Arc<Http2Pool>),
}

/// An upstream service: its endpoints, balancer and connection pool.
pub struct Cluster {
    /// Its config.
    pub config: ClusterConfig,
    /// Its name, shared with the log phase of every request sent to it.
    pub name: Arc<str>,
    endpoints: Arc<ArcSwap<EndpointSet>>,
    balancer: Balancer,
    transport: Transport,
    scheme: http::uri::Scheme,
    /// Requests in flight to this cluster.
    pub active: Gauge,
    /// What the last resolution of its DNS names could not resolve.
    dns_errors: std::sync::Mutex<Vec<String>>,
    /// Reloads the client certificate when its files change (mTLS clusters).
    _cert_watch: Option<crate::mesh::rotate::PairWatcher>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Builds a cluster, resolves its endpoints and starts its DNS refresh.
    /// The error names what is wrong (an unreadable CA bundle, a bad SNI).
    pub async fn start(
        config: ClusterConfig,
        metrics: &Arc<Metrics>,
    ) -> Result<Arc<Cluster>, String> {
        let (eps, errors) = resolve::resolve_all(&config.endpoints).await;
        for e in &errors {
            tracing::warn!(cluster.name = %config.name, error = %e, "endpoint resolution failed; retrying every dns_refresh");
        }
        let endpoints = Arc::new(ArcSwap::from_pointee(EndpointSet::new(eps, config.lb)));
        let mut cert_watch = None;
        let tls = match &config.tls {
            Some(tls) => Some(tls_origin(&config, tls, metrics, &mut cert_watch)?),
            None => None,
        };
        let dialer = Dialer::new(
            tls,
            config.connect_timeout,
            metrics.upstream_connections(&config.name),
        );
        let (idle, max_idle) = (config.idle_timeout, config.max_idle_per_endpoint);
        let transport = match config.protocol {
            UpstreamProtocol::Http1 => Transport::Http1(Http1Pool::start(
                dialer,
                idle,
                max_idle,
                config.max_response_header_size,
            )),
            UpstreamProtocol::Http2 => Transport::Http2(Http2Pool::start(
                dialer,
                multiplex::Http2Options {
                    idle_timeout: idle,
                    keep: max_idle > 0,
                    max_streams: config.max_concurrent_streams,
                    keepalive: config.keepalive,
                    max_head: config.max_response_header_size,
                },
            )),
        };
        let scheme = if config.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        };
        let cluster = Arc::new(Cluster {
            balancer: Balancer::new(config.lb),
            active: metrics.upstream_active(&config.name),
            dns_errors: std::sync::Mutex::new(errors),
            name: config.name.as_str().into(),
            config,
            endpoints,
            transport,
            scheme,
            _cert_watch: cert_watch,
        });
        if cluster.config.endpoints.iter().any(|e| e.ip.is_none()) {
            tokio::spawn(refresh_dns(Arc::downgrade(&cluster)));
        }
        Ok(cluster)
    }

    /// What the last resolution of the cluster's DNS names could not
    /// resolve (empty when every name resolved).
    pub fn dns_errors(&self) -> Vec<String> {
        self.dns_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Picks an endpoint; `hash` feeds the hash policies.
    pub fn pick(&self, hash: Option<u64>) -> Option<Arc<Endpoint>> {
        self.balancer.pick(&self.endpoints.load(), hash)
    }

    /// Picks the endpoint for a request whose connection had `original_dst`
    /// (a transparent listener's): that address for an `original_dst`
    /// cluster, a balanced pick otherwise.
    pub fn pick_for(
        &self,
        hash: Option<u64>,
        original_dst: Option<std::net::SocketAddr>,
    ) -> Option<Arc<Endpoint>> {
        if self.config.original_dst {
            return original_dst.map(|a| Arc::new(Endpoint::new(a, &a.ip().to_string())));
        }
        self.pick(hash)
    }

    /// The URI for `path_and_query` with `authority`, in this cluster's scheme.
    fn uri_at(
        &self,
        authority: http::uri::Authority,
        path_and_query: Option<&http::uri::PathAndQuery>,
    ) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(authority);
        parts.path_and_query = Some(
            path_and_query
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).expect("scheme, authority and path make a valid URI")
    }

    /// Sends `req` to `endpoint` through the cluster's pool, whatever form
    /// its URI has (the pool puts the form its protocol needs). To HTTP/2
    /// endpoints the `Host` header goes as `:authority`, as Envoy sends it.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        mut head: Head,
        body: Body,
    ) -> Result<UpstreamResponse, SendError> {
        match &self.transport {
            Transport::Http1(pool) => {
                if head.uri.scheme().is_some() || head.uri.authority().is_some() {
                    let pq = head.uri.path_and_query().cloned();
                    head.uri =
                        Uri::from(pq.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
                }
                pool.send(endpoint.addr, &endpoint.host, head, body).await
            }
            Transport::Http2(pool) => {
                let host = head
                    .headers
                    .get(header::HOST)
                    .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
                head.uri = match host {
                    Some(authority) => {
                        head.headers.remove(header::HOST);
                        self.uri_at(authority, head.uri.path_and_query())
                    }
                    // No Host, or one that is no authority: the endpoint's.
                    None => self.uri_at(endpoint.authority.clone(), head.uri.path_and_query()),
                };
                // Boxed: hyper's HTTP/2 response future is twice the size of
                // the HTTP/1.1 path's whole state, and this future holds
                // either branch, so unboxed it would make every HTTP/1.1
                // request's future (moved twice per request) that large.
                Box::pin(pool.send(endpoint.addr, &endpoint.host, head, body)).await
            }
        }
    }

    /// The HTTP version requests to this cluster must carry.
    pub fn version(&self) -> http::Version {
        match self.config.protocol {
            UpstreamProtocol::Http1 => http::Version::HTTP_11,
            UpstreamProtocol::Http2 => http::Version::HTTP_2,
        }
    }

    /// The endpoints now in use.
    pub fn endpoints(&self) -> Arc<EndpointSet> {
        self.endpoints.load_full()
    }
}

/// A response as it comes from the pool.
pub type UpstreamResponse = Response<UpstreamBody>;

/// A request head on its way upstream, boxed so that moving it from one
/// async function to the next (each keeps its arguments in its own state)
/// copies a pointer, not 224 bytes.
pub type Head = Box<http::request::Parts>;

/// TLS origination for a cluster's pool: its rustls config (CA, client
/// certificate, `allowed_identities`; ALPN `h2` for an HTTP/2 cluster) and
/// `tls.sni` as a server name. `cert_watch` gets the watcher of its client
/// certificate, if it has one.
fn tls_origin(
    config: &ClusterConfig,
    tls: &crate::config::ClusterTls,
    metrics: &Arc<Metrics>,
    cert_watch: &mut Option<crate::mesh::rotate::PairWatcher>,
) -> Result<TlsOrigin, String> {
    let cluster = &config.name;
    let client = tls::client_config(cluster, tls, Some(metrics.clone()))?;
    if let Some(pair) = client.client_cert {
        *cert_watch = Some(crate::mesh::rotate::PairWatcher::start(
            format!("cluster {cluster:?}"),
            vec![pair],
            metrics.clone(),
        )?);
    }
    let sni = match &tls.sni {
        Some(s) => {
            Some(ServerName::try_from(s.clone()).map_err(|e| format!("tls.sni {s:?}: {e}"))?)
        }
        None => None,
    };
    let mut client = client.config;
    if config.protocol == UpstreamProtocol::Http2 {
        client.alpn_protocols = vec![b"h2".to_vec()];
    }
    Ok(TlsOrigin {
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        sni,
    })
}

/// Starts the task that runs `reap` on `pool` every half of `idle_timeout`
/// (at least every 100 ms) and ends with the pool.
fn start_reaper<P: Send + Sync + 'static>(pool: &Arc<P>, idle_timeout: Duration, reap: fn(&P)) {
    let pool = Arc::downgrade(pool);
    let every = (idle_timeout / 2).max(Duration::from_millis(100));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match pool.upgrade() {
                Some(p) => reap(&p),
                None => return,
            }
        }
    });
}

async fn refresh_dns(cluster: Weak<Cluster>) {
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let every = c.config.dns_refresh;
        drop(c);
        tokio::time::sleep(every).await;
        let Some(c) = cluster.upgrade() else { return };
        let (eps, errors) = resolve::resolve_all(&c.config.endpoints).await;
        *c.dns_errors.lock().unwrap_or_else(|p| p.into_inner()) = errors.clone();
        if !errors.is_empty() && eps.is_empty() {
            tracing::warn!(cluster.name = %c.config.name, errors = ?errors, "DNS refresh failed; keeping the last endpoints");
            continue;
        }
        let old = c.endpoints.load();
        let new_addrs: Vec<_> = eps.iter().map(|e| e.addr).collect();
        if old.addrs() != new_addrs {
            tracing::info!(cluster.name = %c.config.name, endpoints = ?new_addrs, "endpoints changed");
            // Keep existing endpoint objects so their in-flight counts carry over.
            let eps = eps
                .into_iter()
                .map(|e| {
                    old.endpoints
                        .iter()
                        .find(|o| o.addr == e.addr)
                        .cloned()
                        .unwrap_or(e)
                })
                .collect();
            c.endpoints
                .store(Arc::new(EndpointSet::new(eps, c.config.lb)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request's future holds `Cluster::send`'s and is moved twice per
    /// request into memory that, with hundreds of connections, is out of
    /// cache: when the HTTP/2 pool's connect was inlined there, every
    /// HTTP/1.1 request carried 7 KB of HTTP/2 handshake state (368 against
    /// 261 cache misses per request at 256 connections under callgrind). The
    /// rare paths (connecting, HTTP/2) are boxed; this keeps them so.
    #[tokio::test]
    async fn a_send_in_flight_stays_small_whatever_the_protocol() {
        let metrics = Arc::new(Metrics::new());
        for protocol in ["http1", "http2"] {
            let config = crate::config::Config::from_toml(
                &format!(
                    "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\n[[cluster]]\nname = \"c\"\nendpoints = [\"127.0.0.1:1\"]\nprotocol = \"{protocol}\"\n"
                ),
                "test.toml",
                std::path::Path::new("."),
            )
            .unwrap();
            let cluster = Cluster::start(config.cluster("c").unwrap().clone(), &metrics)
                .await
                .unwrap();
            let endpoint = cluster.pick(None).unwrap();
            let head = Box::new(http::Request::new(()).into_parts().0);
            let send = cluster.send(&endpoint, head, crate::body::empty());
            let size = std::mem::size_of_val(&send);
            assert!(
                size <= 1024,
                "{protocol}: Cluster::send's future is {size} bytes"
            );
        }
    }
}
