//! Listeners: bind, accept, TLS, and HTTP/1.1 + HTTP/2 serving with limits.
//!
//! Every connection is served by hyper with the listener's header limits; a
//! client too slow to send a request head is cut off (`head_clock`,
//! `header_read_timeout`); an idle connection (nothing in flight for
//! `idle_timeout`) is closed; on shutdown, connections finish their in-flight
//! requests and close.

mod head_clock;
mod linger;
pub mod sweep;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::config::ListenerConfig;
use crate::proxy::{Activity, Downstream, Shared};

/// A bound listener, not yet accepting.
pub struct Bound {
    config: Arc<ListenerConfig>,
    socket: Arc<TcpListener>,
    tls: Option<Arc<tls::ServerTls>>,
}

impl Bound {
    /// Binds `config`'s address and loads its certificates. The error says which listener and why.
    pub async fn bind(config: ListenerConfig) -> Result<Bound, String> {
        let tls = load_tls(&config)?;
        let socket = TcpListener::bind(config.addr)
            .await
            .map_err(|e| bind_error(&config.name, config.addr, e))?;
        Ok(Bound {
            config: Arc::new(config),
            socket: Arc::new(socket),
            tls,
        })
    }

    /// Takes over `socket`, bound to `config`'s address by the listener this
    /// one replaces (a reload that changes a listener keeps its socket, so no
    /// connection attempt meets a closed port), and loads `config`'s certificates.
    pub fn reuse(config: ListenerConfig, socket: Arc<TcpListener>) -> Result<Bound, String> {
        let tls = load_tls(&config)?;
        Ok(Bound {
            config: Arc::new(config),
            socket,
            tls,
        })
    }

    /// Its config.
    pub fn config(&self) -> &ListenerConfig {
        &self.config
    }

    /// The listening socket, shared with a listener that takes it over.
    pub fn socket(&self) -> &Arc<TcpListener> {
        &self.socket
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap_or(self.config.addr)
    }

    /// Accepts until `shutdown` turns true or its sender is dropped, then
    /// asks its connections to finish their requests and close; connections
    /// are tracked by `tasks`.
    pub async fn run(
        self,
        shared: Arc<Shared>,
        mut shutdown: watch::Receiver<bool>,
        tasks: TaskTracker,
    ) {
        let builder = Arc::new(http_builder(&self.config));
        let open = shared.metrics.downstream_connections(&self.config.name);
        let acceptor = self
            .tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
        // Certificates rotate while the listener runs; the watch ends with it.
        let _cert_watch = match &self.tls {
            Some(t) => match crate::mesh::rotate::PairWatcher::start(
                format!("listener {:?}", self.config.name),
                t.pairs(),
                shared.metrics.clone(),
            ) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(listener.name = %self.config.name, "{e}: certificates are not reloaded when their files change");
                    None
                }
            },
            None => None,
        };
        let registry = Arc::new(sweep::Registry::default());
        let (head_limit, idle) = (self.config.header_read_timeout, self.config.idle_timeout);
        let mut sweeps = tokio::time::interval(sweep::period(head_limit, idle));
        sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (stream, peer) = tokio::select! {
                r = self.socket.accept() => match r {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(listener.name = %self.config.name, error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = sweeps.tick() => {
                    registry.sweep(head_limit, idle, std::time::Instant::now());
                    continue;
                }
                _ = shutdown.changed() => {
                    registry.drain_all();
                    break;
                }
            };
            let _ = stream.set_nodelay(true);
            let mut local = stream.local_addr().unwrap_or(self.config.addr);
            let original_dst = if self.config.transparent {
                original_dst(&stream, local)
            } else {
                None
            };
            // As Envoy's use_original_dst: the address the client meant is the destination.
            if let Some(dst) = original_dst {
                local = dst;
            }
            let (config, shared, builder, registry, tls, acceptor) = (
                self.config.clone(),
                shared.clone(),
                builder.clone(),
                registry.clone(),
                self.tls.clone(),
                acceptor.clone(),
            );
            let open = open.clone();
            tasks.spawn(async move {
                open.inc();
                match (tls, acceptor) {
                    (Some(tls), Some(acceptor)) => match tokio::time::timeout(config.header_read_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let session = Arc::new(tls.session(tls_stream.get_ref().1));
                            serve_conn(tls_stream, Addrs { peer, local, original_dst }, Some(session), config, shared, builder, &registry).await
                        }
                        Ok(Err(e)) => {
                            let reason = tls::refusal_reason(&e);
                            shared.metrics.tls_handshake_error(&config.name, reason);
                            tracing::info!(listener.name = %config.name, client = %peer, reason, error = %e, "TLS handshake refused");
                        }
                        Err(_) => {
                            shared.metrics.tls_handshake_error(&config.name, "timeout");
                            tracing::info!(listener.name = %config.name, client = %peer, reason = "timeout", "TLS handshake timed out");
                        }
                    },
                    _ => serve_conn(stream, Addrs { peer, local, original_dst }, None, config, shared, builder, &registry).await,
                }
                open.dec();
            });
        }
    }
}

fn load_tls(config: &ListenerConfig) -> Result<Option<Arc<tls::ServerTls>>, String> {
    match &config.tls {
        Some(t) => Ok(Some(Arc::new(
            tls::server_config(t, config.http2)
                .map_err(|e| format!("listener {:?}: {e}", config.name))?,
        ))),
        None => Ok(None),
    }
}

fn bind_error(name: &str, addr: SocketAddr, e: std::io::Error) -> String {
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another process is listening there: stop it or choose another port)"
        }
        std::io::ErrorKind::PermissionDenied => {
            " (ports below 1024 need privileges: choose a port above 1023)"
        }
        std::io::ErrorKind::AddrNotAvailable => " (this machine has no such address)",
        _ => "",
    };
    format!("listener {name:?}: cannot bind {addr}: {e}{hint}")
}

fn http_builder(config: &ListenerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // weir times request heads itself (head_clock): hyper's timer also
        // closed idle keep-alive connections, and cost a boxed timer a request.
        .header_read_timeout(None)
        .max_buf_size(config.max_header_size.max(8192))
        .max_headers(config.max_headers)
        // A response head and a small body copied into one buffer and sent
        // with one write cost less than writev and its iovec bookkeeping:
        // with this here and on the upstream pool, weir spent 13% less CPU
        // per proxied request (interleaved pairs at 32 and 256 connections;
        // benches/HISTORY.md, session 22). The price is a copy of each body
        // chunk into the write buffer, which large bodies pay per byte.
        .writev(false)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(config.max_header_size as u32)
        .keep_alive_interval(None);
    if !config.http2 {
        b = b.http1_only();
    }
    b
}

/// The original destination of a connection redirected by iptables
/// (SO_ORIGINAL_DST); `None` when it was not redirected (it came to `local` itself).
#[cfg(target_os = "linux")]
fn original_dst(stream: &tokio::net::TcpStream, local: SocketAddr) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let dst = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    };
    match dst.ok().and_then(|a| a.as_socket()) {
        Some(a) if a != local => Some(a),
        _ => None,
    }
}

/// Transparent interception needs Linux's SO_ORIGINAL_DST.
#[cfg(not(target_os = "linux"))]
fn original_dst(_: &tokio::net::TcpStream, _: SocketAddr) -> Option<SocketAddr> {
    None
}

/// A connection's addresses.
struct Addrs {
    peer: SocketAddr,
    local: SocketAddr,
    original_dst: Option<SocketAddr>,
}

async fn serve_conn<I>(
    io: I,
    Addrs {
        peer,
        local,
        original_dst,
    }: Addrs,
    tls: Option<Arc<crate::mesh::TlsSession>>,
    listener: Arc<ListenerConfig>,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    registry: &Arc<sweep::Registry>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let trusted = listener.trusts(peer.ip());
    let down = Arc::new(Downstream {
        local,
        listener_name: listener.name.as_str().into(),
        listener,
        peer,
        forwarded_for: crate::proxy::headers::forwarded_for(peer.ip()),
        trusted,
        tls: tls.is_some(),
        tls_session: tls,
        original_dst,
        activity: Activity::default(),
        signal: sweep::Signal::default(),
        id: crate::proxy::next_connection_id(),
    });
    let _registered = registry.register(down.clone());
    let svc_down = down.clone();
    let svc = service_fn(move |req| crate::proxy::serve(shared.clone(), svc_down.clone(), req));
    // Closed connections linger (linger.rs): an early answer reaches a
    // client still sending its body.
    let io = head_clock::HeadClock::new(linger::Linger::new(io), down.clone());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // The listener's sweep asks a connection to drain or close through its
    // signal; looking at it costs an atomic load per wake-up.
    let mut draining = false;
    let ended = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        match down.signal.poll(cx) {
            sweep::Ask::Serve => {}
            sweep::Ask::Drain if draining => {}
            sweep::Ask::Drain => {
                draining = true;
                conn.as_mut().graceful_shutdown();
                // The connection acts on it when polled next.
                cx.waker().wake_by_ref();
            }
            sweep::Ask::Close => return Poll::Ready(None),
        }
        Poll::Pending
    })
    .await;
    if let Some(Err(e)) = ended {
        tracing::debug!(client = %peer, error = %e, "connection ended with an error");
    }
}
