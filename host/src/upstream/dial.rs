//! Connecting to an endpoint, for both of weir's pools: TCP (no Nagle) within
//! the cluster's `connect_timeout`, TLS on top when the cluster originates it,
//! and a count of the cluster's open connections for /metrics.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use super::SendError;

/// A connection to an endpoint: plain TCP or TLS over it.
pub type Stream = Either<TcpStream, TlsStream<TcpStream>>;

/// TLS origination for a pool's connections.
pub struct TlsOrigin {
    /// The cluster's client config: roots, client certificate, identity
    /// check, and ALPN `h2` for HTTP/2 clusters.
    pub connector: tokio_rustls::TlsConnector,
    /// `tls.sni`; without it, each endpoint's host as written in the config.
    pub sni: Option<ServerName<'static>>,
}

/// How a cluster connects to its endpoints.
pub struct Dialer {
    tls: Option<TlsOrigin>,
    connect_timeout: Duration,
    open: Gauge,
}

impl Dialer {
    /// Connects within `connect_timeout` (TCP and TLS together), over TLS
    /// when `tls` says, counting open connections in `open`.
    pub fn new(tls: Option<TlsOrigin>, connect_timeout: Duration, open: Gauge) -> Dialer {
        Dialer {
            tls,
            connect_timeout,
            open,
        }
    }

    /// Connects to `addr`, whose host as configured is `host` (the TLS
    /// server name without `tls.sni`). The error names the address and
    /// what failed: the TCP connect, the handshake, or the time. Give the
    /// stream to [`Dialer::counted`] for hyper.
    pub async fn dial(&self, addr: SocketAddr, host: &str) -> Result<Stream, SendError> {
        let connect = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|source| SendError::Connect { addr, source })?;
            stream
                .set_nodelay(true)
                .map_err(|source| SendError::Connect { addr, source })?;
            let Some(tls) = &self.tls else {
                return Ok(Either::Left(stream));
            };
            let name = match &tls.sni {
                Some(n) => n.clone(),
                None => server_name(host).map_err(|source| SendError::Tls { addr, source })?,
            };
            let stream = tls
                .connector
                .connect(name, stream)
                .await
                .map_err(|source| SendError::Tls { addr, source })?;
            Ok::<_, SendError>(Either::Right(stream))
        };
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| SendError::ConnectTimeout {
                addr,
                after: self.connect_timeout,
            })?
    }

    /// `io` ready for hyper, counted among the cluster's open connections
    /// while it lives. (The HTTP/1.1 pool unwraps a plain stream first, so
    /// that its connections' reads and writes do not branch on TLS.)
    pub fn counted<T>(&self, io: T) -> Counted<TokioIo<T>> {
        Counted::new(TokioIo::new(io), self.open.clone())
    }
}

/// The TLS server name for an endpoint's configured host (a DNS name or an
/// IP, brackets off).
fn server_name(host: &str) -> Result<ServerName<'static>, std::io::Error> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_string()).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{host:?} is no TLS server name ({e}): set the cluster's tls.sni"),
        )
    })
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
