//! weir's own pool for HTTP/2 clusters (h2c with prior knowledge, or TLS with
//! ALPN `h2`): one multiplexed connection per endpoint, shared by every
//! request to it.
//!
//! The first request to an endpoint connects while the others wait for that
//! connection, so a burst opens one connection, not one per request; if the
//! connect fails, the requests that waited on it get its error at once rather
//! than each trying again in turn. A connection no request used for the
//! cluster's `idle_timeout` is let go (it closes when its last stream ends).
//! A request the connection could not take (it closed or went away
//! meanwhile) goes once more, on a new connection.
//!
//! Requests arrive with an absolute URI whose authority is the request's
//! host ([`super::Cluster::send`] puts it there): hyper sends it as
//! `:authority`, as an HTTP/2 client should.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use quanta::Instant;
use rustc_hash::FxHashMap;

use super::dial::Dialer;
use super::{SendError, UpstreamBody};
use crate::body::Body;

/// The HTTP/2 pool of one cluster.
pub struct Http2Pool {
    slots: Mutex<FxHashMap<SocketAddr, Arc<Slot>>>,
    dialer: Dialer,
    idle_timeout: Duration,
    /// Whether connections are kept for the next request at all
    /// (`max_idle_per_endpoint` above 0).
    keep: bool,
}

/// One endpoint's connection, or the dial making it.
#[derive(Default)]
struct Slot {
    /// Held while dialing: the requests behind it wait for its outcome.
    conn: tokio::sync::Mutex<Conn>,
    /// Dials ended so far; a request that saw this move while it waited
    /// takes the outcome of the dial it waited for.
    ended: AtomicU64,
}

#[derive(Default)]
struct Conn {
    tx: Option<SendRequest<Body>>,
    /// Dials started so far; the last made `tx` (a dial starts only when
    /// there is no `tx`).
    dials: u64,
    used: Option<Instant>,
    /// How the last dial failed, for the requests that waited on it.
    failed: Option<Arc<SendError>>,
}

impl Http2Pool {
    /// A pool connecting with `dialer`, keeping a connection per endpoint
    /// (when `max_idle` is above 0) until it was idle for `idle_timeout`.
    /// Starts the task that lets idle connections go (it ends with the pool).
    pub fn start(dialer: Dialer, idle_timeout: Duration, max_idle: usize) -> Arc<Http2Pool> {
        let pool = Arc::new(Http2Pool {
            slots: Mutex::default(),
            dialer,
            idle_timeout,
            keep: max_idle > 0,
        });
        super::start_reaper(&pool, idle_timeout, Self::reap_now);
        pool
    }

    /// Sends `head` (absolute URI: its authority goes as `:authority`) and
    /// `body` to `addr`, whose host as configured is `host` (the TLS server
    /// name without `tls.sni`).
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        host: &str,
        head: super::Head,
        body: Body,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let mut req = Request::from_parts(*head, body);
        let mut again = true;
        loop {
            let (mut tx, dial) = self.sender(addr, host).await?;
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(resp.map(UpstreamBody::from)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if again => {
                        tracing::debug!(upstream = %addr, error = %e.error(), "HTTP/2 connection refused a request; connecting again");
                        self.forget(addr, dial).await;
                        again = false;
                        req = unsent;
                    }
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    fn slot(&self, addr: SocketAddr) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(addr).or_default().clone()
    }

    /// The endpoint's connection, and the dial that made it: the kept one,
    /// or the one a waited-for dial made, or a new one.
    async fn sender(
        &self,
        addr: SocketAddr,
        host: &str,
    ) -> Result<(SendRequest<Body>, u64), SendError> {
        let slot = self.slot(addr);
        let seen = slot.ended.load(Ordering::Acquire);
        let mut conn = slot.conn.lock().await;
        conn.used = Some(Instant::now());
        if let Some(tx) = &conn.tx {
            if !tx.is_closed() {
                return Ok((tx.clone(), conn.dials));
            }
            conn.tx = None;
        }
        if slot.ended.load(Ordering::Acquire) != seen
            && let Some(e) = &conn.failed
        {
            return Err(SendError::Dial(e.clone()));
        }
        conn.dials += 1;
        let dial = conn.dials;
        let dialed = self.connect(addr, host).await;
        slot.ended.fetch_add(1, Ordering::AcqRel);
        match dialed {
            Ok(tx) => {
                conn.failed = None;
                if self.keep {
                    conn.tx = Some(tx.clone());
                }
                Ok((tx, dial))
            }
            Err(e) => {
                let e = Arc::new(e);
                conn.failed = Some(e.clone());
                Err(SendError::Dial(e))
            }
        }
    }

    /// Stops using the connection `dial` made, if it is still the kept one.
    async fn forget(&self, addr: SocketAddr, dial: u64) {
        let slot = self.slot(addr);
        let mut conn = slot.conn.lock().await;
        if conn.dials == dial {
            conn.tx = None;
        }
    }

    /// Connects to `addr` and starts HTTP/2 on the connection, with the task
    /// that drives it.
    async fn connect(&self, addr: SocketAddr, host: &str) -> Result<SendRequest<Body>, SendError> {
        let io = self.dialer.counted(self.dialer.dial(addr, host).await?);
        let (tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|source| SendError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %addr, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        Ok(tx)
    }

    /// Lets go of connections idle past their time and closed ones, and
    /// forgets endpoints with neither a connection nor a request waiting.
    fn reap_now(&self) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|_, slot| {
            // Held: a dial is under way.
            let Ok(mut conn) = slot.conn.try_lock() else {
                return true;
            };
            let stale = conn.tx.as_ref().is_some_and(|tx| tx.is_closed())
                || conn.used.is_none_or(|u| u.elapsed() >= self.idle_timeout);
            if stale {
                conn.tx = None;
            }
            conn.tx.is_some() || Arc::strong_count(slot) > 1
        });
    }

    /// Whether a connection to `addr` is kept now (for tests).
    #[cfg(test)]
    async fn kept(&self, addr: SocketAddr) -> bool {
        self.slot(addr).conn.lock().await.tx.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use std::sync::atomic::AtomicUsize;
    use tokio::net::TcpListener;

    /// An h2c server answering each request with its `:authority`, counting
    /// the connections it accepted; with `once`, each connection serves one
    /// request and then goes away (GOAWAY).
    async fn h2_upstream(once: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let done = done_tx.clone();
                            async move {
                                if once {
                                    let _ = done.try_send(());
                                }
                                let authority = req.uri().authority().map(|a| a.to_string());
                                let host = req.headers().get(http::header::HOST).is_some();
                                let text = format!("{} host:{host}", authority.unwrap_or_default());
                                Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                    Bytes::from(text),
                                )))
                            }
                        });
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = done_rx.recv() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn pool(idle_timeout: Duration, connect_timeout: Duration) -> Arc<Http2Pool> {
        let dialer = Dialer::new(None, connect_timeout, Default::default());
        Http2Pool::start(dialer, idle_timeout, 8)
    }

    async fn get(
        p: &Arc<Http2Pool>,
        addr: SocketAddr,
        authority: &str,
    ) -> Result<String, SendError> {
        let (mut head, ()) = Request::new(()).into_parts();
        head.uri = format!("http://{authority}/x").parse().unwrap();
        head.version = http::Version::HTTP_2;
        let resp = p
            .send(addr, "127.0.0.1", Box::new(head), crate::body::empty())
            .await?;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Ok(String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_connection_and_send_the_authority() {
        let (addr, accepted) = h2_upstream(false).await;
        let p = pool(Duration::from_secs(30), Duration::from_secs(2));
        let answers =
            futures_util::future::join_all((0..20).map(|_| get(&p, addr, "api.example.test")))
                .await;
        for a in answers {
            assert_eq!(a.unwrap(), "api.example.test host:false");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection, multiplexed"
        );
    }

    #[tokio::test]
    async fn requests_waiting_on_a_failed_connect_share_its_error() {
        // Accepts TCP and never answers the TLS handshake.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (s, _) = l.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                held.push(s);
            }
        });
        let roots = rustls::RootCertStore::empty();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tls = super::super::dial::TlsOrigin {
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            sni: None,
        };
        let dialer = Dialer::new(Some(tls), Duration::from_millis(300), Default::default());
        let p = Http2Pool::start(dialer, Duration::from_secs(30), 8);
        let answers = futures_util::future::join_all((0..5).map(|_| get(&p, addr, "up"))).await;
        for a in answers {
            let e = a.unwrap_err();
            assert!(e.is_connect(), "{e}");
            assert!(e.to_string().contains("timed out after 300ms"), "{e}");
            assert!(e.to_string().contains(&addr.to_string()), "{e}");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the waiting requests took the first connect's outcome"
        );
        // A later request tries again.
        get(&p, addr, "up").await.unwrap_err();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_that_went_away_is_replaced() {
        let (addr, accepted) = h2_upstream(true).await;
        let p = pool(Duration::from_secs(30), Duration::from_secs(2));
        for _ in 0..3 {
            assert_eq!(get(&p, addr, "a.test").await.unwrap(), "a.test host:false");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_idle_connection_is_let_go_after_idle_timeout() {
        let (addr, accepted) = h2_upstream(false).await;
        let p = pool(Duration::from_millis(200), Duration::from_secs(2));
        get(&p, addr, "a.test").await.unwrap();
        assert!(p.kept(addr).await);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!p.kept(addr).await, "the reaper let it go");
        get(&p, addr, "a.test").await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error_naming_the_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let p = pool(Duration::from_secs(30), Duration::from_secs(2));
        let e = get(&p, addr, "a.test").await.unwrap_err();
        assert!(e.is_connect(), "{e}");
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }
}
