//! Keeps a timer due soon in the runtime's timer wheel, so that the timers
//! every request arms do not wake the I/O driver with a system call.
//!
//! Every request arms timers: the route's timeout, a per-try timeout, a
//! filter's wait. When tokio registers
//! a timer due before the time its driver last planned to wake, it unparks
//! the driver: on Linux, an 8-byte write to an eventfd, whose readiness then
//! costs the next `epoll_wait` a round of its own. The driver plans its wake
//! when it parks, from the earliest timer in the wheel; with no timer in the
//! wheel (every connection between requests) it plans none, and then every
//! registration until the next park unparks, even from the thread that will
//! park next. Under load that was about 0.4 eventfd writes per request.
//!
//! A timer that is always due within [`PERIOD`] keeps the planned wake at
//! most that far away. Request timers are due later (seconds), so they no
//! longer unpark. Two timers half a period apart take turns, so that while
//! one has fired and waits for this task to arm it again, the other is still
//! in the wheel. The cost is a timer firing every half [`PERIOD`].

use std::time::Duration;

use tokio::time::{Instant, sleep_until};

/// How often each of the two anchor timers fires. Timers due sooner than
/// this still may unpark the driver (per-try timeouts under 100 ms); all
/// others do not.
pub const PERIOD: Duration = Duration::from_millis(100);

/// Runs forever: two timers, each due every [`PERIOD`], half a period
/// apart. Spawn it once per runtime.
pub async fn run() {
    let now = Instant::now();
    let a = sleep_until(now + PERIOD / 2);
    let b = sleep_until(now + PERIOD);
    tokio::pin!(a, b);
    loop {
        tokio::select! {
            _ = a.as_mut() => a.as_mut().reset(Instant::now() + PERIOD),
            _ = b.as_mut() => b.as_mut().reset(Instant::now() + PERIOD),
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Write system calls made by this thread so far.
    fn writes() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").expect("Linux has /proc");
        io.lines()
            .find_map(|l| l.strip_prefix("syscw: "))
            .and_then(|n| n.trim().parse().ok())
            .expect("/proc/thread-self/io has syscw")
    }

    /// Parks the runtime with no request timer, then arms and drops one
    /// request-like timer (due in 10 s), 50 times; returns the writes made.
    async fn writes_for_request_timers() -> u64 {
        let mut total = 0;
        for _ in 0..50 {
            // Park: the driver plans its next wake from the wheel as it is now.
            tokio::time::sleep(Duration::from_millis(1)).await;
            let before = writes();
            let timer = tokio::time::sleep(Duration::from_secs(10));
            tokio::pin!(timer);
            // The first poll registers the timer in the wheel.
            let first = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(std::future::Future::poll(timer.as_mut(), cx))
            })
            .await;
            assert!(first.is_pending());
            total += writes() - before;
        }
        total
    }

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn without_the_anchor_request_timers_write_to_the_eventfd() {
        // The condition the anchor exists for; if tokio stops unparking
        // itself, this fails and the anchor can go.
        let n = current_thread().block_on(writes_for_request_timers());
        assert!(n >= 40, "{n} writes for 50 timers");
    }

    #[test]
    fn with_the_anchor_request_timers_make_no_system_call() {
        let n = current_thread().block_on(async {
            tokio::spawn(run());
            // Let the anchor register its first tick.
            tokio::time::sleep(Duration::from_millis(1)).await;
            writes_for_request_timers().await
        });
        // None, unless the thread stalled for half a period with both
        // anchors fired and neither armed again (a loaded machine).
        assert!(n <= 3, "{n} writes for 50 timers");
    }
}
