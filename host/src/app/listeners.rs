//! The listeners weir runs, changed by a config reload without a restart, as
//! Envoy's listener manager changes them from LDS: a new `[[listener]]`
//! starts accepting, a removed one stops accepting and its connections finish
//! their requests and close, and a changed one (new certificates, limits or
//! protocols) serves new connections with its new settings while the
//! connections it had drain.
//!
//! A reload is two steps, so that a listener that cannot start fails the whole
//! reload and leaves everything as it was: [`Listeners::plan`] binds the new
//! addresses and loads the new certificates, then, once the new routes are in
//! place, [`Plan::commit`] starts the new accept loops and stops the old ones.
//! A listener whose address stays (its settings or its name changed) hands its
//! socket over instead of closing it, so clients never meet a closed port.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Mutex, MutexGuard, watch};
use tokio_util::task::TaskTracker;

use crate::config::ListenerConfig;
use crate::listener::Bound;
use crate::proxy::Shared;

/// The running listeners.
pub struct Listeners {
    inner: Mutex<Inner>,
    /// What `GET /listeners` shows, written at each commit.
    shown: std::sync::Mutex<Vec<Shown>>,
    shared: Arc<Shared>,
    tasks: TaskTracker,
}

/// A running listener as the admin API shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Shown {
    /// Its name.
    pub name: String,
    /// The address it accepts on.
    pub address: SocketAddr,
    /// Whether it terminates TLS.
    pub tls: bool,
    /// Whether it accepts HTTP/2.
    pub http2: bool,
}

#[derive(Default)]
struct Inner {
    running: Vec<Running>,
    /// Set at shutdown: nothing starts after it.
    stopped: bool,
}

/// One accept loop; dropping it stops the loop, which drains its connections.
struct Running {
    config: ListenerConfig,
    socket: Arc<TcpListener>,
    _stop: watch::Sender<bool>,
}

/// What a listener of the next config comes from.
enum Next {
    /// A running listener whose config did not change (its index).
    Keep(usize),
    /// A new accept loop, on a new socket or one taken over.
    Start(Bound),
}

/// A listener change ready to commit: sockets bound, certificates loaded.
/// Dropping it changes nothing (and closes the sockets it bound).
pub struct Plan<'a> {
    inner: MutexGuard<'a, Inner>,
    listeners: &'a Listeners,
    next: Vec<Next>,
}

impl Listeners {
    /// No listener yet; [`plan`](Self::plan) and [`Plan::commit`] start them.
    /// Connections are tracked by `tasks`.
    pub fn new(shared: Arc<Shared>, tasks: TaskTracker) -> Listeners {
        Listeners {
            inner: Mutex::new(Inner::default()),
            shown: std::sync::Mutex::new(Vec::new()),
            shared,
            tasks,
        }
    }

    /// Prepares the listeners of `configs`: keeps the running ones whose
    /// config is unchanged, takes over the socket of a running one on the
    /// same address, and binds the others. Every listener that cannot start
    /// is listed in the error, which names it and says why.
    pub async fn plan(&self, configs: &[ListenerConfig]) -> Result<Plan<'_>, Vec<String>> {
        let inner = self.inner.lock().await;
        if inner.stopped {
            return Err(vec![
                "weir is shutting down: listeners are not changed".to_string(),
            ]);
        }
        let mut next = Vec::with_capacity(configs.len());
        let mut errors = Vec::new();
        for config in configs {
            if let Some(i) = inner.running.iter().position(|r| r.config == *config) {
                next.push(Next::Keep(i));
                continue;
            }
            let taken = inner
                .running
                .iter()
                .find(|r| r.config.addr == config.addr)
                .map(|r| r.socket.clone());
            let bound = match taken {
                Some(socket) => Bound::reuse(config.clone(), socket),
                None => Bound::bind(config.clone()).await,
            };
            match bound {
                Ok(b) => next.push(Next::Start(b)),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(Plan {
                inner,
                listeners: self,
                next,
            })
        } else {
            Err(errors)
        }
    }

    /// Stops every accept loop (their connections drain) and starts no more.
    pub async fn stop_all(&self) {
        let mut inner = self.inner.lock().await;
        inner.stopped = true;
        inner.running.clear();
        self.show(&inner.running);
    }

    /// The running listeners, in config order.
    pub fn shown(&self) -> Vec<Shown> {
        self.shown.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn show(&self, running: &[Running]) {
        let shown = running
            .iter()
            .map(|r| Shown {
                name: r.config.name.clone(),
                address: r.socket.local_addr().unwrap_or(r.config.addr),
                tls: r.config.tls.is_some(),
                http2: r.config.http2,
            })
            .collect();
        *self.shown.lock().unwrap_or_else(|p| p.into_inner()) = shown;
    }
}

impl Plan<'_> {
    /// Starts the new accept loops and stops the running ones that are not
    /// kept; their connections finish their requests and close.
    pub fn commit(self) {
        let Plan {
            mut inner,
            listeners,
            next,
        } = self;
        // No listener ran before: weir is starting, not reloading.
        let starting = inner.running.is_empty();
        let mut old: Vec<Option<Running>> = inner.running.drain(..).map(Some).collect();
        let mut running = Vec::with_capacity(next.len());
        for n in next {
            match n {
                Next::Keep(i) => {
                    if let Some(r) = old[i].take() {
                        running.push(r);
                    }
                }
                Next::Start(bound) => {
                    let replaced = old
                        .iter()
                        .flatten()
                        .find(|r| Arc::ptr_eq(&r.socket, bound.socket()))
                        .map(|r| r.config.name.clone());
                    match (replaced, starting) {
                        (Some(was), _) => tracing::info!(
                            listener.name = %bound.config().name,
                            address = %bound.local_addr(),
                            replaces = %was,
                            "listener changed: new connections get its new settings; the old ones finish their requests and close"
                        ),
                        (None, false) => {
                            tracing::info!(listener.name = %bound.config().name, address = %bound.local_addr(), "listener added")
                        }
                        (None, true) => {
                            tracing::info!(listener.name = %bound.config().name, address = %bound.local_addr(), "listening")
                        }
                    }
                    let (stop, stopped) = watch::channel(false);
                    running.push(Running {
                        config: bound.config().clone(),
                        socket: bound.socket().clone(),
                        _stop: stop,
                    });
                    tokio::spawn(bound.run(
                        listeners.shared.clone(),
                        stopped,
                        listeners.tasks.clone(),
                    ));
                }
            }
        }
        for r in old.into_iter().flatten() {
            if !running.iter().any(|n| Arc::ptr_eq(&n.socket, &r.socket)) {
                tracing::info!(listener.name = %r.config.name, address = %r.config.addr, "listener removed: it accepts no more connections; its connections finish their requests and close");
            }
        }
        listeners.show(&running);
        inner.running = running;
    }
}
