//! weir's own pool for HTTP/2 clusters (h2c with prior knowledge, or TLS with
//! ALPN `h2`): multiplexed connections per endpoint, shared by every request
//! to it. A connection carries up to the cluster's `max_concurrent_streams`
//! requests at once (default 100, the least RFC 9113 asks a server to allow);
//! past that another connection to the endpoint opens, as Envoy's pool does
//! when a connection's streams are all in use, instead of requests queueing
//! behind a server's stream limit. Requests take the first connection with a
//! free stream, so that when load falls the later connections go idle.
//!
//! The first request that needs a connection connects while the others wait
//! for that connection, so a burst opens one connection, not one per request;
//! if the connect fails, the requests that waited on it get its error at once
//! rather than each trying again in turn. A connection no request used for
//! the cluster's `idle_timeout` is let go (it closes when its last stream
//! ends). A request the connection could not take (it closed or went away
//! meanwhile) goes once more, on a new connection.
//!
//! Requests arrive with an absolute URI whose authority is the request's
//! host ([`super::Cluster::send`] puts it there): hyper sends it as
//! `:authority`, as an HTTP/2 client should.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    options: Http2Options,
}

/// How an HTTP/2 pool keeps and uses its connections (from the cluster's config).
#[derive(Clone, Copy, Debug)]
pub struct Http2Options {
    /// A connection no request used for this long is let go.
    pub idle_timeout: Duration,
    /// Whether connections are kept for the next request at all
    /// (`max_idle_per_endpoint` above 0).
    pub keep: bool,
    /// Most requests at once on one connection.
    pub max_streams: usize,
    /// Pings on every connection: (every, answered within). A connection
    /// whose ping goes unanswered is closed, so a dead peer or a path that
    /// dropped the connection silently is found before a request waits on it.
    pub keepalive: Option<(Duration, Duration)>,
    /// Largest response header list taken (RFC 9113's SETTINGS_MAX_HEADER_LIST_SIZE).
    pub max_head: usize,
}

/// One endpoint's connections, and the dial making another.
#[derive(Default)]
struct Slot {
    /// Held while dialing: the requests behind it wait for its outcome.
    conns: tokio::sync::Mutex<Conns>,
    /// Dials ended so far; a request that saw this move while it waited
    /// takes the outcome of the dial it waited for.
    ended: AtomicU64,
}

#[derive(Default)]
struct Conns {
    /// The kept connections, oldest first.
    live: Vec<Live>,
    /// Dials started so far; each connection knows the one that made it.
    dials: u64,
    /// How the last dial failed, for the requests that waited on it.
    failed: Option<Arc<SendError>>,
}

/// A kept connection.
struct Live {
    tx: SendRequest<Body>,
    /// The dial that made it.
    dial: u64,
    /// Requests on it now.
    streams: Arc<AtomicUsize>,
    used: Instant,
}

/// A request's stream on a connection, counted until its response body is
/// done with (dropped).
#[derive(Debug)]
pub struct Stream(Arc<AtomicUsize>);

impl Stream {
    fn open(streams: &Arc<AtomicUsize>) -> Stream {
        streams.fetch_add(1, Ordering::AcqRel);
        Stream(streams.clone())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Http2Pool {
    /// A pool connecting with `dialer` and keeping and using its connections
    /// as `options` say. Starts the task that lets idle connections go (it
    /// ends with the pool).
    pub fn start(dialer: Dialer, options: Http2Options) -> Arc<Http2Pool> {
        let pool = Arc::new(Http2Pool {
            slots: Mutex::default(),
            dialer,
            options: Http2Options {
                max_streams: options.max_streams.max(1),
                ..options
            },
        });
        super::start_reaper(&pool, options.idle_timeout, Self::reap_now);
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
            let (mut tx, dial, stream) = self.sender(addr, host).await?;
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(resp.map(|b| UpstreamBody::from(b).holding(stream))),
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

    /// A connection to the endpoint with a stream free, the dial that made
    /// it, and the request's stream on it: a kept connection, or the one a
    /// waited-for dial made, or a new one.
    async fn sender(
        &self,
        addr: SocketAddr,
        host: &str,
    ) -> Result<(SendRequest<Body>, u64, Stream), SendError> {
        let slot = self.slot(addr);
        let seen = slot.ended.load(Ordering::Acquire);
        let mut conns = slot.conns.lock().await;
        conns.live.retain(|l| !l.tx.is_closed());
        // Streams open only under the lock, so none is over the limit.
        let max = self.options.max_streams;
        if let Some(l) = conns
            .live
            .iter_mut()
            .find(|l| l.streams.load(Ordering::Acquire) < max)
        {
            l.used = Instant::now();
            return Ok((l.tx.clone(), l.dial, Stream::open(&l.streams)));
        }
        if slot.ended.load(Ordering::Acquire) != seen
            && let Some(e) = &conns.failed
        {
            return Err(SendError::Dial(e.clone()));
        }
        conns.dials += 1;
        let dial = conns.dials;
        // Boxed: the connect path's state (the TCP, TLS and HTTP/2
        // handshakes, 5.5 KB in a debug build) would otherwise be part of
        // every request's send, which `Cluster::send` boxes per request.
        let dialed = Box::pin(self.connect(addr, host)).await;
        slot.ended.fetch_add(1, Ordering::AcqRel);
        match dialed {
            Ok(tx) => {
                conns.failed = None;
                let streams = Arc::new(AtomicUsize::new(0));
                let stream = Stream::open(&streams);
                if self.options.keep {
                    if !conns.live.is_empty() {
                        tracing::debug!(upstream = %addr, connections = conns.live.len() + 1, max_concurrent_streams = max, "every HTTP/2 connection to the endpoint is at its stream limit; opened another");
                    }
                    conns.live.push(Live {
                        tx: tx.clone(),
                        dial,
                        streams,
                        used: Instant::now(),
                    });
                }
                Ok((tx, dial, stream))
            }
            Err(e) => {
                let e = Arc::new(e);
                conns.failed = Some(e.clone());
                Err(SendError::Dial(e))
            }
        }
    }

    /// Stops using the connection `dial` made, if it is still kept.
    async fn forget(&self, addr: SocketAddr, dial: u64) {
        let slot = self.slot(addr);
        slot.conns.lock().await.live.retain(|l| l.dial != dial);
    }

    /// Connects to `addr` and starts HTTP/2 on the connection, with the task
    /// that drives it.
    async fn connect(&self, addr: SocketAddr, host: &str) -> Result<SendRequest<Body>, SendError> {
        let io = self.dialer.counted(self.dialer.dial(addr, host).await?);
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        builder.max_header_list_size(u32::try_from(self.options.max_head).unwrap_or(u32::MAX));
        if let Some((every, within)) = self.options.keepalive {
            builder
                .keep_alive_interval(every)
                .keep_alive_timeout(within)
                .keep_alive_while_idle(true);
        }
        let (tx, conn) = builder
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
            let Ok(mut conns) = slot.conns.try_lock() else {
                return true;
            };
            conns.live.retain(|l| {
                !l.tx.is_closed()
                    && (l.streams.load(Ordering::Acquire) > 0
                        || l.used.elapsed() < self.options.idle_timeout)
            });
            !conns.live.is_empty() || Arc::strong_count(slot) > 1
        });
    }

    /// How many connections to `addr` are kept now (for tests).
    #[cfg(test)]
    async fn kept(&self, addr: SocketAddr) -> usize {
        let conns = self.slot(addr);
        let conns = conns.conns.lock().await;
        conns.live.iter().filter(|l| !l.tx.is_closed()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use std::sync::atomic::AtomicUsize;
    use tokio::net::TcpListener;

    /// A loopback listener handing each connection it accepts to `take`,
    /// and the count of connections accepted.
    async fn accepting(
        mut take: impl FnMut(tokio::net::TcpStream) + Send + 'static,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                take(s);
            }
        });
        (addr, accepted)
    }

    /// An h2c server answering each request with its `:authority`, counting
    /// the connections it accepted; with `once`, each connection serves one
    /// request and then goes away (GOAWAY).
    async fn h2_upstream(once: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        accepting(move |s| {
            tokio::spawn(async move {
                let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let done = done_tx.clone();
                    async move {
                        if once {
                            let _ = done.try_send(());
                        }
                        let authority = req.uri().authority().map(|a| a.to_string());
                        let host = req.headers().get(http::header::HOST).is_some();
                        let text = format!("{} host:{host}", authority.unwrap_or_default());
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            text,
                        ))))
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
        })
        .await
    }

    fn options(idle_timeout: Duration, max_streams: usize) -> Http2Options {
        Http2Options {
            idle_timeout,
            keep: true,
            max_streams,
            keepalive: None,
            max_head: 64 * 1024,
        }
    }

    fn pool(idle_timeout: Duration, connect_timeout: Duration) -> Arc<Http2Pool> {
        let dialer = Dialer::new(None, connect_timeout, Default::default());
        Http2Pool::start(dialer, options(idle_timeout, 100))
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
    async fn a_connection_at_its_stream_limit_makes_the_next_request_open_another() {
        // Answers nothing until six requests have arrived, so all six are
        // open at once.
        let all_in = Arc::new(tokio::sync::Barrier::new(6));
        let (addr, accepted) = accepting(move |s| {
            let all_in = all_in.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_: Request<hyper::body::Incoming>| {
                    let all_in = all_in.clone();
                    async move {
                        all_in.wait().await;
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"ok host:false"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        })
        .await;
        let dialer = Dialer::new(None, Duration::from_secs(2), Default::default());
        let p = Http2Pool::start(dialer, options(Duration::from_millis(300), 2));
        let answers = tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::future::join_all((0..6).map(|_| get(&p, addr, "a.test"))),
        )
        .await
        .expect("six requests open at once on connections of two streams each");
        for a in answers {
            assert_eq!(a.unwrap(), "ok host:false");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            3,
            "two streams per connection"
        );
        assert_eq!(p.kept(addr).await, 3);
        // Their streams are done: the kept connections take the next six.
        for a in futures_util::future::join_all((0..6).map(|_| get(&p, addr, "a.test"))).await {
            assert_eq!(a.unwrap(), "ok host:false");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            3,
            "the kept connections served them"
        );
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(p.kept(addr).await, 0, "idle connections were let go");
    }

    /// Relays connections to `to` until `hole` is set, then swallows what
    /// either side sends while keeping both connections open: a peer gone
    /// silent, as behind a path that dropped the connection.
    async fn black_hole_relay(to: SocketAddr) -> (SocketAddr, Arc<std::sync::atomic::AtomicBool>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let hole = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = hole.clone();
        let (addr, _) = accepting(move |down| {
            let flag = flag.clone();
            tokio::spawn(async move {
                let up = tokio::net::TcpStream::connect(to).await.unwrap();
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                for (mut r, mut w) in [
                    (
                        Box::new(dr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(uw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    ),
                    (Box::new(ur), Box::new(dw)),
                ] {
                    let flag = flag.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16384];
                        loop {
                            let n = match r.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if !flag.load(Ordering::SeqCst) && w.write_all(&buf[..n]).await.is_err()
                            {
                                return;
                            }
                        }
                    });
                }
            });
        })
        .await;
        (addr, hole)
    }

    #[tokio::test]
    async fn a_connection_whose_pings_go_unanswered_is_closed() {
        let (up, accepted) = h2_upstream(false).await;
        let (relay, hole) = black_hole_relay(up).await;
        let dialer = Dialer::new(None, Duration::from_secs(2), Default::default());
        let p = Http2Pool::start(
            dialer,
            Http2Options {
                keepalive: Some((Duration::from_millis(100), Duration::from_millis(500))),
                ..options(Duration::from_secs(30), 100)
            },
        );
        assert_eq!(get(&p, relay, "a.test").await.unwrap(), "a.test host:false");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(p.kept(relay).await, 1, "answered pings keep it");
        hole.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(p.kept(relay).await, 0, "the silent connection was closed");
        hole.store(false, Ordering::SeqCst);
        assert_eq!(get(&p, relay, "a.test").await.unwrap(), "a.test host:false");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "a new connection took the request"
        );
    }

    #[tokio::test]
    async fn requests_waiting_on_a_failed_connect_share_its_error() {
        // Accepts TCP and never answers the TLS handshake.
        let mut held = Vec::new();
        let (addr, accepted) = accepting(move |s| held.push(s)).await;
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
        let p = Http2Pool::start(dialer, options(Duration::from_secs(30), 100));
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
        assert_eq!(p.kept(addr).await, 1);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(p.kept(addr).await, 0, "the reaper let it go");
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
