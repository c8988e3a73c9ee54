//! Upstream clusters: endpoints, balancing, connection pools, TLS origination.
//!
//! A [`Cluster`] owns a connection pool (weir's own for HTTP/1.1 keep-alive,
//! hyper-util's for HTTP/2 multiplexed) and an
//! [`lb::EndpointSet`] that DNS refreshes swap as a whole.

mod connector;
pub mod lb;
mod pool;
mod resolve;
pub mod retry;
pub mod tls;

use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use http::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use rustls_pki_types::ServerName;

use crate::body::Body;
use crate::config::{ClusterConfig, UpstreamProtocol};
use crate::telemetry::Metrics;
use connector::{Connector, SniResolver};
use lb::{Balancer, Endpoint, EndpointSet};
use pool::Http1Pool;
pub use pool::{SendError, UpstreamBody};

/// How a cluster's requests reach its endpoints.
enum Transport {
    /// HTTP/1.1, plain or over TLS: weir's pool, keyed by endpoint address.
    Own(Arc<Http1Pool>),
    /// HTTP/2: hyper-util's pool (ALPN h2, multiplexing).
    Shared(Box<Client<Connector, Body>>),
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
        let transport = if config.protocol == UpstreamProtocol::Http1 {
            let tls = match &config.tls {
                Some(tls) => Some(tls_origin(&config.name, tls, metrics, &mut cert_watch)?),
                None => None,
            };
            Transport::Own(Http1Pool::start(
                tls,
                config.idle_timeout,
                config.max_idle_per_endpoint,
                config.connect_timeout,
                metrics.upstream_connections(&config.name),
            ))
        } else {
            Transport::Shared(Box::new(shared_client(
                &config,
                &endpoints,
                metrics,
                &mut cert_watch,
            )?))
        };
        let scheme = if config.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        };
        let cluster = Arc::new(Cluster {
            balancer: Balancer::new(config.lb),
            active: metrics.upstream_active(&config.name),
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

    /// The URI for `path_and_query` at `endpoint`.
    pub fn uri(
        &self,
        endpoint: &Endpoint,
        path_and_query: Option<&http::uri::PathAndQuery>,
    ) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(endpoint.authority.clone());
        parts.path_and_query = Some(
            path_and_query
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).expect("scheme, authority and path make a valid URI")
    }

    /// Sends `req` to `endpoint` through the cluster's pool, whatever form
    /// its URI has (the pool puts the form its protocol needs).
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        mut head: Head,
        body: Body,
    ) -> Result<UpstreamResponse, SendError> {
        match &self.transport {
            Transport::Own(pool) => {
                if head.uri.scheme().is_some() || head.uri.authority().is_some() {
                    let pq = head.uri.path_and_query().cloned();
                    head.uri =
                        Uri::from(pq.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
                }
                pool.send(endpoint.addr, &endpoint.host, head, body).await
            }
            Transport::Shared(client) => {
                head.uri = self.uri(endpoint, head.uri.path_and_query());
                let req = Request::from_parts(*head, body);
                Ok(client.request(req).await?.map(UpstreamBody::from))
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

/// A cluster's TLS settings made usable: its rustls config (CA, client
/// certificate, `allowed_identities`) and `tls.sni` as a server name.
/// `cert_watch` gets the watcher of its client certificate, if it has one.
fn client_tls(
    cluster: &str,
    tls: &crate::config::ClusterTls,
    metrics: &Arc<Metrics>,
    cert_watch: &mut Option<crate::mesh::rotate::PairWatcher>,
) -> Result<(rustls::ClientConfig, Option<ServerName<'static>>), String> {
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
    Ok((client.config, sni))
}

/// TLS origination for an HTTP/1.1 cluster's pool.
fn tls_origin(
    cluster: &str,
    tls: &crate::config::ClusterTls,
    metrics: &Arc<Metrics>,
    cert_watch: &mut Option<crate::mesh::rotate::PairWatcher>,
) -> Result<pool::TlsOrigin, String> {
    let (config, sni) = client_tls(cluster, tls, metrics, cert_watch)?;
    Ok(pool::TlsOrigin {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        sni,
    })
}

/// hyper-util's pool for an HTTP/2 cluster (h2c with prior knowledge, or
/// ALPN h2 with `tls`); `cert_watch` gets the watcher of its client
/// certificate, if it has one.
fn shared_client(
    config: &ClusterConfig,
    endpoints: &Arc<ArcSwap<EndpointSet>>,
    metrics: &Arc<Metrics>,
    cert_watch: &mut Option<crate::mesh::rotate::PairWatcher>,
) -> Result<Client<Connector, Body>, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    let builder = match &config.tls {
        Some(tls) => {
            let (client, fixed) = client_tls(&config.name, tls, metrics, cert_watch)?;
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(client)
                .https_only()
                .with_server_name_resolver(SniResolver {
                    fixed,
                    endpoints: endpoints.clone(),
                })
        }
        None => hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(
                tls::client_config(&config.name, &crate::config::ClusterTls::default(), None)?
                    .config,
            )
            .https_or_http()
            .with_server_name_resolver(SniResolver {
                fixed: None,
                endpoints: endpoints.clone(),
            }),
    };
    let https = builder.enable_http2().wrap_connector(http);
    let connector = Connector::new(https, metrics.upstream_connections(&config.name));
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(config.idle_timeout)
        .pool_max_idle_per_host(config.max_idle_per_endpoint)
        .http2_only(true)
        .set_host(false)
        .build(connector))
}

async fn refresh_dns(cluster: Weak<Cluster>) {
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let every = c.config.dns_refresh;
        drop(c);
        tokio::time::sleep(every).await;
        let Some(c) = cluster.upgrade() else { return };
        let (eps, errors) = resolve::resolve_all(&c.config.endpoints).await;
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
