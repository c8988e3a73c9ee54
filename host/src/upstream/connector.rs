//! The upstream connector: TCP with a connect timeout, optional TLS, and a
//! count of open connections per cluster for /metrics.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::Uri;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream, ResolveServerName};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::lb::EndpointSet;
use crate::body::BoxError;

/// The connector every cluster's pool uses.
#[derive(Clone)]
pub struct Connector {
    inner: HttpsConnector<HttpConnector>,
    open: Gauge,
}

impl Connector {
    /// Wraps `inner`, counting open connections in `open`.
    pub fn new(inner: HttpsConnector<HttpConnector>, open: Gauge) -> Connector {
        Connector { inner, open }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Counted<MaybeHttpsStream<TokioIo<TcpStream>>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let fut = self.inner.call(uri);
        let open = self.open.clone();
        Box::pin(async move {
            let io = fut.await?;
            Ok(Counted::new(io, open))
        })
    }
}

pin_project_lite::pin_project! {
    /// An upstream connection, counted in an open-connection gauge while it
    /// lives (also after an upgrade hands it to a tunnel).
    pub struct Counted<T> {
        #[pin]
        io: T,
        open: Gauge,
    }

    impl<T> PinnedDrop for Counted<T> {
        fn drop(this: Pin<&mut Self>) {
            this.open.dec();
        }
    }
}

impl<T> Counted<T> {
    /// Counts `io` in `open` until it drops.
    pub fn new(io: T, open: Gauge) -> Counted<T> {
        open.inc();
        Counted { io, open }
    }
}

impl Connection for Counted<MaybeHttpsStream<TokioIo<TcpStream>>> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl<T: hyper::rt::Read> hyper::rt::Read for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write> hyper::rt::Write for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
}

/// Chooses the TLS server name for a connection: the configured `sni`, else
/// the host the endpoint was written with (a DNS name), else its IP.
#[derive(Clone)]
pub struct SniResolver {
    /// Fixed name from the cluster's `tls.sni`.
    pub fixed: Option<ServerName<'static>>,
    /// The cluster's endpoints, to map `ip:port` back to the configured host.
    pub endpoints: Arc<ArcSwap<EndpointSet>>,
}

impl ResolveServerName for SniResolver {
    fn resolve(
        &self,
        uri: &Uri,
    ) -> Result<ServerName<'static>, Box<dyn std::error::Error + Sync + Send>> {
        if let Some(name) = &self.fixed {
            return Ok(name.clone());
        }
        let authority = uri.authority().ok_or("upstream URI has no authority")?;
        let set = self.endpoints.load();
        let host = set
            .endpoints
            .iter()
            .find(|e| e.authority == *authority)
            .map_or_else(
                || {
                    authority
                        .host()
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string()
                },
                |e| e.host.clone(),
            );
        Ok(ServerName::try_from(host)?)
    }
}
