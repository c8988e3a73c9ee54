//! weir's own keep-alive pool for HTTP/1.1 clusters, plain or over TLS.
//!
//! Idle connections wait in a list per endpoint address; a request takes the
//! most recently used one (its socket is the warmest) or connects. Each
//! connection is driven by a task of its own (hyper's `client::conn::http1`),
//! and goes back to its list when the response body has been read to its
//! end: a body dropped early leaves the connection to close, as its next
//! bytes are unknown. Compared with hyper-util's general pool this does no
//! hashing of a URI authority per request and boxes no future per request.
//! HTTP/2 clusters use [`super::multiplex`].

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

// quanta reads the TSC: a timestamp per request for a fraction of what
// clock_gettime costs on a VM.
use quanta::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use rustc_hash::FxHashMap;
use tokio_util::either::Either;

use super::SendError;
use super::dial::Dialer;
use crate::body::Body;

struct Idle {
    tx: SendRequest<Body>,
    since: Instant,
}

/// The pool of one cluster.
pub struct Http1Pool {
    idle: Mutex<FxHashMap<SocketAddr, Vec<Idle>>>,
    dialer: Dialer,
    idle_timeout: Duration,
    max_idle: usize,
    /// Largest response head taken, in bytes (hyper answers a larger one with a parse error).
    max_head: usize,
}

impl Http1Pool {
    /// A pool keeping at most `max_idle` idle connections per endpoint for
    /// `idle_timeout`, connecting with `dialer`, taking response heads of at
    /// most `max_head` bytes. Starts the task that closes
    /// connections idle for longer (it ends with the pool).
    pub fn start(
        dialer: Dialer,
        idle_timeout: Duration,
        max_idle: usize,
        max_head: usize,
    ) -> Arc<Http1Pool> {
        let pool = Arc::new(Http1Pool {
            idle: Mutex::default(),
            dialer,
            idle_timeout,
            max_idle,
            max_head,
        });
        super::start_reaper(&pool, idle_timeout, Self::reap_now);
        pool
    }

    /// Sends `req` (origin-form URI) to `addr` (whose host as configured is
    /// `host`, the TLS server name without `tls.sni`) on an idle connection
    /// or a new one. A request an idle connection could not take (it closed
    /// meanwhile) goes to the next one, then to a new connection.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        host: &str,
        head: super::Head,
        body: Body,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let mut req = Request::from_parts(*head, body);
        loop {
            let (mut tx, reused) = match self.checkout(addr) {
                Some(tx) => (tx, true),
                // Boxed: the connect path's state would otherwise make every
                // request's future (and its copies) larger.
                None => (Box::pin(self.connect(addr, host)).await?, false),
            };
            // A connection given back at the end of a body may still be
            // finishing that response; it is ready, or closed, at once after.
            if let Err(e) = std::future::poll_fn(|cx| tx.poll_ready(cx)).await {
                if reused {
                    continue;
                }
                return Err(e.into());
            }
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    let back =
                        (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS).then(|| Return {
                            pool: self.clone(),
                            addr,
                            tx,
                        });
                    return Ok(resp.map(|inner| UpstreamBody {
                        inner,
                        back,
                        done: false,
                        stream: None,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&addr)?;
        while let Some(c) = list.pop() {
            if !c.tx.is_closed() && c.since.elapsed() < self.idle_timeout {
                return Some(c.tx);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, tx: SendRequest<Body>) {
        if tx.is_closed() || self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(addr).or_default();
        if list.len() < self.max_idle {
            list.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }

    /// Connects to `addr` and starts HTTP/1.1 on the connection.
    async fn connect(&self, addr: SocketAddr, host: &str) -> Result<SendRequest<Body>, SendError> {
        match self.dialer.dial(addr, host).await? {
            Either::Left(tcp) => self.handshake(tcp, addr).await,
            Either::Right(tls) => self.handshake(tls, addr).await,
        }
    }

    /// Starts HTTP/1.1 on a connected `io` and the task that drives it.
    async fn handshake<T>(&self, io: T, addr: SocketAddr) -> Result<SendRequest<Body>, SendError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        // Flattened writes, as downstream (listener.rs says why).
        let (tx, conn) = hyper::client::conn::http1::Builder::new()
            .writev(false)
            .max_header_size(self.max_head)
            // A header value folded over lines (obs-fold, RFC 9112 section
            // 5.2) is joined with single spaces, not refused: Envoy 1.40
            // joins them too, and old servers still send them.
            .allow_obsolete_multiline_headers_in_responses(true)
            .handshake(self.dialer.counted(io))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(upstream = %addr, error = %e, "upstream connection ended");
            }
        });
        Ok(tx)
    }

    /// Drops idle connections past their time and closed ones.
    fn reap_now(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, list| {
            list.retain(|c| !c.tx.is_closed() && c.since.elapsed() < self.idle_timeout);
            !list.is_empty()
        });
    }

    /// Idle connections to `addr` now (for tests).
    #[cfg(test)]
    fn idle_to(&self, addr: SocketAddr) -> usize {
        let idle = self.idle.lock().unwrap();
        idle.get(&addr).map_or(0, Vec::len)
    }
}

struct Return {
    pool: Arc<Http1Pool>,
    addr: SocketAddr,
    tx: SendRequest<Body>,
}

pin_project_lite::pin_project! {
    /// A response body from the pool: gives its connection back when read
    /// to its end.
    pub struct UpstreamBody {
        #[pin]
        inner: Incoming,
        back: Option<Return>,
        done: bool,
        // An HTTP/2 request's stream, counted against its connection's limit
        // until the body is dropped.
        stream: Option<super::multiplex::Stream>,
    }

    impl PinnedDrop for UpstreamBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if (*this.done || this.inner.is_end_stream())
                && let Some(r) = this.back.take()
            {
                r.pool.put(r.addr, r.tx);
            }
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("pooled", &self.back.is_some())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl From<Incoming> for UpstreamBody {
    fn from(inner: Incoming) -> UpstreamBody {
        UpstreamBody {
            inner,
            back: None,
            done: false,
            stream: None,
        }
    }
}

impl UpstreamBody {
    /// Keeps this body's HTTP/1.1 connection out of the pool: it closes
    /// when the body is dropped, whatever was read of it. For a response
    /// weir refuses, after which the connection's bytes cannot be trusted.
    pub fn close_connection(&mut self) {
        self.back = None;
    }

    /// The body of a response on an HTTP/2 `stream`, which stays counted
    /// until the body is dropped.
    pub fn holding(mut self, stream: super::multiplex::Stream) -> UpstreamBody {
        self.stream = Some(stream);
        self
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(None) => *this.done = true,
            Poll::Ready(Some(Ok(f))) if f.is_trailers() => *this.done = true,
            Poll::Ready(Some(Err(_))) => *this.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An upstream answering every request on a connection with `body`,
    /// counting the connections it accepted.
    async fn upstream(body: &'static str) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        upstream_answering(resp).await
    }

    /// An upstream answering every request on a connection with `resp`.
    async fn upstream_answering(resp: String) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        serve_raw(resp, None).await
    }

    /// Accepts connections (over TLS with `tls`), counting them, and answers
    /// every request head on each with `resp`.
    async fn serve_raw(
        resp: String,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (resp, tls) = (resp.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => answer(s, &resp).await,
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(s).await {
                                answer(s, &resp).await;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S, resp: &str) {
        let mut buf = vec![0u8; 4096];
        let mut seen = Vec::new();
        loop {
            let Ok(n) = s.read(&mut buf).await else {
                return;
            };
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&buf[..n]);
            while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                seen.drain(..end + 4);
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
                let _ = s.flush().await;
            }
        }
    }

    /// A TLS server config for `name` (self-signed), and a client config
    /// trusting it.
    fn tls_pair(name: &str) -> (tokio_rustls::TlsAcceptor, rustls::ClientConfig) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let der = cert.der().clone();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (tokio_rustls::TlsAcceptor::from(Arc::new(server)), client)
    }

    fn tls_pool(client: rustls::ClientConfig, sni: Option<&str>) -> Arc<Http1Pool> {
        let tls = super::super::dial::TlsOrigin {
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            sni: sni.map(|n| ServerName::try_from(n.to_string()).unwrap()),
        };
        pool_with(Some(tls), 8, Duration::from_secs(30))
    }

    /// Sends a GET for `/` through the pool.
    async fn send(
        p: &Arc<Http1Pool>,
        addr: SocketAddr,
        host: &str,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let (mut head, ()) = Request::new(()).into_parts();
        head.uri = "/".parse().unwrap();
        head.headers
            .insert(http::header::HOST, "up".parse().unwrap());
        p.send(addr, host, Box::new(head), crate::body::empty())
            .await
    }

    fn pool(max_idle: usize, idle_timeout: Duration) -> Arc<Http1Pool> {
        pool_with(None, max_idle, idle_timeout)
    }

    fn pool_with(
        tls: Option<super::super::dial::TlsOrigin>,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Arc<Http1Pool> {
        let dialer = Dialer::new(tls, Duration::from_secs(2), Default::default());
        Http1Pool::start(dialer, idle_timeout, max_idle, 64 * 1024)
    }

    #[tokio::test]
    async fn a_connection_read_to_its_end_is_used_again() {
        let (addr, accepted) = upstream("hello").await;
        let p = pool(8, Duration::from_secs(30));
        for _ in 0..5 {
            let resp = send(&p, addr, "127.0.0.1").await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"hello");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(p.idle_to(addr), 1);
    }

    #[tokio::test]
    async fn chunked_bodies_and_their_trailers_give_the_connection_back() {
        let (addr, accepted) = upstream_answering(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n"
                .to_string(),
        )
        .await;
        let p = pool(8, Duration::from_secs(30));
        for _ in 0..3 {
            let resp = send(&p, addr, "127.0.0.1").await.unwrap();
            let body = resp.into_body().collect().await.unwrap();
            assert_eq!(body.trailers().unwrap()["x-sum"], "1");
            assert_eq!(&body.to_bytes()[..], b"hello");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn tls_connections_are_verified_named_and_kept_alive() {
        let (acceptor, client) = tls_pair("up.test");
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_string();
        let (addr, accepted) = serve_raw(ok, Some(acceptor)).await;
        // The server name is the endpoint's host as configured, or tls.sni.
        for (host, sni) in [("up.test", None), ("127.0.0.1", Some("up.test"))] {
            let p = tls_pool(client.clone(), sni);
            for _ in 0..3 {
                let resp = send(&p, addr, host).await.unwrap();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], b"ok");
            }
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "one handshake per pool, kept for its requests"
        );
        // A certificate for another name is refused, as a connect failure
        // naming the endpoint and the cause.
        let p = tls_pool(client, None);
        let e = send(&p, addr, "other.test").await.unwrap_err();
        assert!(e.is_connect(), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&addr.to_string()) && text.contains("tls handshake"),
            "{text}"
        );
        assert!(format!("{e:?}").contains("NotValidForName"), "{e:?}");
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_does_not_go_back() {
        let (addr, accepted) = upstream("a body that is not read").await;
        let p = pool(8, Duration::from_secs(30));
        let resp = send(&p, addr, "127.0.0.1").await.unwrap();
        drop(resp);
        assert_eq!(p.idle_to(addr), 0);
        let resp = send(&p, addr, "127.0.0.1").await.unwrap();
        resp.into_body().collect().await.unwrap();
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_past_their_time_are_closed_and_not_used() {
        let (addr, accepted) = upstream("x").await;
        let p = pool(8, Duration::from_millis(200));
        let resp = send(&p, addr, "127.0.0.1").await.unwrap();
        resp.into_body().collect().await.unwrap();
        assert_eq!(p.idle_to(addr), 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(p.idle_to(addr), 0, "the reaper dropped it");
        let resp = send(&p, addr, "127.0.0.1").await.unwrap();
        resp.into_body().collect().await.unwrap();
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn at_most_max_idle_wait_per_endpoint() {
        let (addr, _) = upstream("y").await;
        let p = pool(2, Duration::from_secs(30));
        let mut resps = Vec::new();
        for _ in 0..4 {
            resps.push(send(&p, addr, "127.0.0.1").await.unwrap());
        }
        for r in resps {
            r.into_body().collect().await.unwrap();
        }
        assert_eq!(p.idle_to(addr), 2);
    }

    #[tokio::test]
    async fn a_request_on_a_connection_the_upstream_closed_goes_to_a_new_one() {
        // The upstream answers once per connection, then closes it without
        // saying so: the idle connection is dead when the next request comes.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                drop(s);
            }
        });
        let p = pool(8, Duration::from_secs(30));
        for _ in 0..3 {
            let resp = send(&p, addr, "127.0.0.1").await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error_naming_the_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let p = pool(8, Duration::from_secs(30));
        let e = send(&p, addr, "127.0.0.1").await.unwrap_err();
        assert!(e.is_connect(), "{e}");
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }
}
