//! Plugin work done off the request path, at the lowest CPU priority: the
//! priority the loader and compiler threads run at, and the thread that frees
//! retired plugin versions.
//!
//! A plugin version is retired when the last request that started on it ends,
//! which is usually on a worker thread. Freeing its instances there would put
//! their teardown (unmapping each instance's linear memory, freeing its
//! contexts) on that request's worker, right behind the requests queued on it;
//! [`retire`] hands them to the reaper thread instead.

use std::sync::OnceLock;
use std::sync::mpsc::{Sender, channel};

/// Lowers the calling thread's CPU priority as far as it goes: SCHED_IDLE on
/// Linux (nice 19 elsewhere, or where the policy cannot be set). Any worker
/// that wakes preempts such a thread at once, so the loader's work at the
/// moment of a swap does not hold a worker off; at nice 19 it could for a
/// whole scheduler slice (no load, a cached reload every time: one request in
/// 6 to 8 of 10 reloads took 0.7 to 2 ms instead of 0.15, against 1 in 10
/// under SCHED_IDLE). Compiles leave it for nice 19 (see [`compiling`]).
pub fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
            set_thread_priority_and_policy, thread_native_id,
        };
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        match set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
            Ok(()) => return,
            Err(e) => tracing::debug!(error = ?e, "cannot move a plugin thread to SCHED_IDLE"),
        }
    }
    if let Err(e) =
        thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
    {
        tracing::debug!(error = ?e, "cannot lower a plugin thread's priority");
    }
}

/// Runs `compile` at the lowest normal priority (nice 19) when the calling
/// thread is at idle priority, then puts the thread back. Every compile
/// comes here: a baseline compile of a 100 KB plugin takes about 20 ms of
/// CPU, an optimized one about 170 ms. At idle priority a compile can wait
/// many seconds on a saturated machine (Cranelift, a new version every
/// second under wrk: 13 to 34 of 60 went live during the minute), while
/// nice 19 still leaves the workers all but the smallest share of the
/// cores. Everything else a reload does (reading, hashing, instantiating,
/// configuring, the swap) stays at idle priority. Leaving SCHED_IDLE needs
/// CAP_SYS_NICE where the nice limit is the default: without it, compiles
/// stay at idle priority.
pub fn compiling<T>(compile: impl FnOnce() -> T) -> T {
    /// Puts the thread back at idle priority, even if `compile` panics.
    struct BackToIdle;
    impl Drop for BackToIdle {
        fn drop(&mut self) {
            lower_priority();
        }
    }
    #[cfg(target_os = "linux")]
    match leave_idle(thread_priority::ThreadPriority::Min) {
        Some(Ok(())) => {
            let _back = BackToIdle;
            return compile();
        }
        Some(Err(e)) => tracing::debug!(error = ?e, "a plugin compiles at idle priority"),
        None => {}
    }
    compile()
}

/// Undoes, on a thread that inherited it, the idle priority of the thread
/// that started it: the runtime's blocking threads start where they are first
/// needed, which may be the loader (a plugin resolving a name as it starts),
/// and must not then serve the workers' blocking work at idle priority. A
/// no-op on a thread of normal priority, and where it is not permitted.
pub fn restore_priority() {
    #[cfg(target_os = "linux")]
    {
        let nice_0 = thread_priority::ThreadPriority::Os(Default::default());
        if let Some(Err(e)) = leave_idle(nice_0) {
            tracing::debug!(error = ?e, "a runtime thread keeps the idle priority it inherited");
        }
    }
}

/// Moves the calling thread from SCHED_IDLE to SCHED_OTHER at `priority`;
/// `None` when it is not at SCHED_IDLE.
#[cfg(target_os = "linux")]
fn leave_idle(
    priority: thread_priority::ThreadPriority,
) -> Option<Result<(), thread_priority::Error>> {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
        thread_native_id, thread_schedule_policy,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    let normal = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other);
    (thread_schedule_policy().ok() == Some(idle))
        .then(|| set_thread_priority_and_policy(thread_native_id(), priority, normal))
}

type Retired = Box<dyn Send>;

static REAPER: OnceLock<Option<Sender<Retired>>> = OnceLock::new();

/// Drops `value` on the reaper thread, a low-priority thread of its own, or
/// here if that thread cannot be started.
pub fn retire<T: Send + 'static>(value: T) {
    let reaper = REAPER.get_or_init(|| {
        let (tx, rx) = channel::<Retired>();
        // Some teardown may touch the runtime (timers, tasks): enter it.
        let runtime = tokio::runtime::Handle::try_current().ok();
        let started = std::thread::Builder::new()
            .name("weir-reaper".into())
            .spawn(move || {
                let _entered = runtime.as_ref().map(|h| h.enter());
                lower_priority();
                while let Ok(retired) = rx.recv() {
                    // A panic in one teardown must not end the reaper.
                    let freed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        drop(retired);
                    }));
                    if freed.is_err() {
                        tracing::error!("freeing a retired plugin version panicked");
                    }
                }
            });
        match started {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the plugin reaper thread; retired plugin versions are freed where their last request ends");
                None
            }
        }
    });
    match reaper {
        // A send fails only if the thread is gone; the value comes back.
        Some(tx) => {
            if let Err(back) = tx.send(Box::new(value)) {
                drop(back.0);
            }
        }
        None => drop(value),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Field `n` of the calling thread's /proc/thread-self/stat, counted as
    /// proc(5) counts them.
    #[cfg(target_os = "linux")]
    fn own_stat_field(n: usize) -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("reading own stat");
        // Fields after the command name, which ends with the last ')': the
        // first of them is field 3.
        let after = &stat[stat.rfind(')').expect("a command name") + 1..];
        let field = after.split_whitespace().nth(n - 3).expect("a stat field");
        field.parse().expect("a numeric stat field")
    }

    /// The calling thread's scheduling policy (field 41; 5 is SCHED_IDLE,
    /// 0 SCHED_OTHER).
    #[cfg(target_os = "linux")]
    pub(crate) fn own_policy() -> u32 {
        own_stat_field(41) as u32
    }

    /// The calling thread's nice value (field 19).
    #[cfg(target_os = "linux")]
    fn own_nice() -> i32 {
        own_stat_field(19) as i32
    }

    /// Reports, when dropped, the thread it was dropped on and that
    /// thread's scheduling policy.
    struct Witness(std::sync::mpsc::Sender<(Option<String>, u32)>);

    impl Drop for Witness {
        fn drop(&mut self) {
            let name = std::thread::current().name().map(str::to_owned);
            let _ = self.0.send((name, own_policy()));
        }
    }

    /// Whether this process may move a thread out of SCHED_IDLE (root, or
    /// CAP_SYS_NICE): tests of that say so and pass over it when it may not.
    #[cfg(target_os = "linux")]
    fn may_leave_idle() -> bool {
        let may = std::thread::spawn(|| {
            lower_priority();
            restore_priority();
            own_policy() == 0
        })
        .join()
        .unwrap();
        if !may {
            eprintln!("not checked: this process may not leave SCHED_IDLE (needs CAP_SYS_NICE)");
        }
        may
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn threads_started_from_an_idle_one_get_normal_priority_back() {
        if !may_leave_idle() {
            return;
        }
        let policies = std::thread::spawn(|| {
            lower_priority();
            let lowered = own_policy();
            let child = std::thread::spawn(|| {
                let inherited = own_policy();
                restore_priority();
                (inherited, own_policy())
            });
            (lowered, child.join().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(
            policies,
            (5, (5, 0)),
            "(idle, (inherited idle, restored normal))"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn compiles_run_at_nice_19_between_idle_stretches() {
        if !may_leave_idle() {
            return;
        }
        let policies = std::thread::spawn(|| {
            lower_priority();
            let during = compiling(|| (own_policy(), own_nice()));
            (during, own_policy())
        })
        .join()
        .unwrap();
        assert_eq!(
            policies,
            ((0, 19), 5),
            "((normal, nice 19) while compiling, idle after)"
        );
        // On a thread of normal priority it changes nothing.
        assert_eq!(compiling(own_policy), 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn retired_values_are_dropped_on_the_idle_reaper() {
        let (tx, rx) = std::sync::mpsc::channel();
        retire(Witness(tx));
        let (name, policy) = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the reaper dropped the value");
        assert_eq!(name.as_deref(), Some("weir-reaper"));
        assert_eq!(policy, 5, "the reaper is not SCHED_IDLE");
        assert_eq!(own_policy(), 0, "the test thread itself is SCHED_OTHER");
    }
}
