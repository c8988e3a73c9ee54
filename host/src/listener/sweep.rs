//! The listener's sweep over its open connections: it closes a connection
//! whose client is too slow with a request head (`header_read_timeout`),
//! drains one idle past `idle_timeout`, and drains them all on shutdown.
//!
//! Each connection used to watch for these itself, with a timer and a
//! shutdown watch of its own that were polled every time the connection
//! woke: about a thousand instructions per request. Now a connection looks
//! at one atomic [`Signal`] when it wakes, and one task per listener visits
//! every connection a few times per timeout, as Envoy and nginx check their
//! timers in batches. A deadline is therefore caught within one sweep
//! period ([`period`]) of passing.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use rustc_hash::FxHashMap;

use crate::proxy::Downstream;

/// What the listener asks of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Ask {
    /// Serve on.
    Serve = 0,
    /// Finish the requests in flight, then close (idle, or shutting down).
    Drain = 1,
    /// Close now: the client took too long with a request head.
    Close = 2,
}

/// The listener's word to one connection, and the waker that delivers it.
#[derive(Debug, Default)]
pub struct Signal {
    ask: AtomicU8,
    waker: AtomicWaker,
}

impl Signal {
    /// Asks the connection for `ask` (a stronger ask already made stays)
    /// and wakes it.
    pub fn raise(&self, ask: Ask) {
        self.ask.fetch_max(ask as u8, Ordering::Release);
        self.waker.wake();
    }

    /// What the connection is asked, registering its task to be woken when
    /// that changes.
    pub fn poll(&self, cx: &Context<'_>) -> Ask {
        self.waker.register(cx.waker());
        match self.ask.load(Ordering::Acquire) {
            0 => Ask::Serve,
            1 => Ask::Drain,
            _ => Ask::Close,
        }
    }
}

/// The open connections of one listener.
#[derive(Default)]
pub struct Registry {
    conns: Mutex<FxHashMap<u64, Arc<Downstream>>>,
    next: AtomicU64,
    /// Set at shutdown: a connection registered after it is drained at once.
    draining: AtomicBool,
}

/// A connection's place in its listener's [`Registry`]; leaving drops it.
pub struct Registered {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<u64, Arc<Downstream>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a connection until the returned guard drops.
    pub fn register(self: &Arc<Self>, down: Arc<Downstream>) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut conns = self.lock();
        if self.draining.load(Ordering::Acquire) {
            down.signal.raise(Ask::Drain);
        }
        conns.insert(id, down);
        Registered {
            registry: self.clone(),
            id,
        }
    }

    /// Asks every connection, now and later, to finish and close.
    pub fn drain_all(&self) {
        let conns = self.lock();
        self.draining.store(true, Ordering::Release);
        for down in conns.values() {
            down.signal.raise(Ask::Drain);
        }
    }

    /// One visit: closes connections whose head is overdue and drains those
    /// idle too long.
    pub fn sweep(&self, head_limit: Duration, idle: Duration, now: Instant) {
        for down in self.lock().values() {
            if down
                .activity
                .head_deadline(head_limit)
                .is_some_and(|at| at <= now)
            {
                tracing::debug!(client = %down.peer, limit = ?head_limit, "closing the connection: no whole request head within header_read_timeout");
                down.signal.raise(Ask::Close);
            } else if down
                .activity
                .idle_deadline(idle)
                .is_some_and(|at| at <= now)
            {
                tracing::debug!(client = %down.peer, "closing idle connection");
                down.signal.raise(Ask::Drain);
            }
        }
    }
}

/// How often a listener sweeps: an eighth of its shorter timeout, between
/// 10 ms and 1 s, so a deadline is caught within that much of passing.
pub fn period(head_limit: Duration, idle: Duration) -> Duration {
    (head_limit.min(idle) / 8).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_raised_signal_wakes_the_registered_task_and_the_stronger_ask_stays() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let cx = Context::from_waker(&waker);
        let s = Signal::default();
        assert_eq!(s.poll(&cx), Ask::Serve);
        s.raise(Ask::Close);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        s.raise(Ask::Drain);
        assert_eq!(s.poll(&cx), Ask::Close);
    }

    #[test]
    fn the_period_is_an_eighth_of_the_shorter_timeout_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(period(ms(800), ms(60_000)), ms(100));
        assert_eq!(period(ms(10_000), ms(60_000)), ms(1000));
        assert_eq!(period(ms(40), ms(60_000)), ms(10));
    }
}
