//! The wasmtime [`Engine`]s plugins are compiled with (one per compiler
//! [`Tier`]), the epoch ticker that bounds each callback's CPU time (and
//! sleeps while no plugin code can run), and the compiled-module caches:
//! in memory by content hash (a re-added or reconfigured plugin is not
//! compiled again) and on disk through wasmtime's cache (a restart skips
//! compilation).
//!
//! Two tiers, as browsers and Envoy's V8 compile WebAssembly: Cranelift,
//! the optimizing compiler, and Winch, wasmtime's baseline compiler, which
//! compiles about 8 times faster (measured on the bundled plugins and the
//! reload bench's generated one) into code that runs about 15% slower per
//! filter (the proxy_wasm_filter bench). Plugins found at start are compiled
//! optimized (a restart then finds them in the disk cache); a version that
//! arrives while weir serves goes live on the baseline tier, and the plugin
//! manager recompiles it optimized once it has served a while unchanged.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Module};

/// One epoch tick: CPU limits are counted in these, so a callback is
/// stopped between its limit and one tick past it. Each tick wakes a thread:
/// on the development VM a wake-up costs about 15 µs of CPU, so a 1 ms tick
/// cost 1.5% of a core at all times (about 0.45 µs per request at 32k req/s);
/// 2 ms halves that and keeps the default 10 ms limit within 20%.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Compiled modules kept in memory beyond those in use.
const MEMORY_CACHE_ENTRIES: usize = 32;

static CACHE_DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
static DISK_CACHE: OnceLock<wasmtime::Cache> = OnceLock::new();

/// Instance slots of each engine's pool when the config names none
/// (`[plugins] instance_slots`) and the process has few workers: see
/// [`default_instance_slots`].
pub const DEFAULT_INSTANCE_SLOTS: u32 = 1000;

/// Instance slots for `workers` worker threads when the config names none:
/// room for 16 plugins with one instance per worker each, twice over (a
/// reloaded plugin's old and new versions live side by side for a moment),
/// and never fewer than [`DEFAULT_INSTANCE_SLOTS`] nor more than
/// [`MAX_INSTANCE_SLOTS`].
pub fn default_instance_slots(workers: usize) -> u32 {
    let wanted = u32::try_from(workers.saturating_mul(32)).unwrap_or(u32::MAX);
    wanted.clamp(DEFAULT_INSTANCE_SLOTS, MAX_INSTANCE_SLOTS)
}

/// The most instance slots a config may ask for: each reserves 4 GiB of
/// address space in each of the two engines, so this many take a quarter
/// of x86-64's 128 TiB.
pub const MAX_INSTANCE_SLOTS: u32 = 4096;

/// Linear memory a freed instance slot keeps mapped, zeroed instead of
/// handed back to the kernel, for the next instance of the same plugin (a
/// proxy-wasm instance built with the Rust SDK touches a few hundred KiB as
/// it starts).
const KEEP_RESIDENT: usize = 1 << 20;

/// Freed slots kept warm for the plugin that last used them; beyond these,
/// a new instance reuses another plugin's slot. Bounds what idle slots keep
/// mapped to this many times [`KEEP_RESIDENT`].
const WARM_SLOTS: u32 = 16;

static INSTANCE_SLOTS: OnceLock<u32> = OnceLock::new();

/// Where a compiled module came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleOrigin {
    /// Compiled now.
    Compiled,
    /// The in-memory cache (the same bytes were loaded before in this process).
    Memory,
    /// The on-disk cache (compiled by an earlier run).
    Disk,
}

/// Which compiler made a plugin's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Winch: compiles fast, into slower code. A reload goes live on it.
    Baseline,
    /// Cranelift: the code plugins settle on.
    Optimized,
}

impl Tier {
    /// As the admin API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Baseline => "baseline",
            Tier::Optimized => "optimized",
        }
    }
}

impl ModuleOrigin {
    /// As the admin API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleOrigin::Compiled => "compiled",
            ModuleOrigin::Memory => "memory cache",
            ModuleOrigin::Disk => "disk cache",
        }
    }
}

/// Sets the on-disk module cache folder (`None`: no disk cache). Takes effect
/// only before the engines' first use; returns false when it came too late.
pub fn set_cache_dir(dir: Option<PathBuf>) -> bool {
    CACHE_DIR.set(dir).is_ok()
}

/// Sets how many plugin instances (linear memories) each engine's pooling
/// allocator holds, 0 for none (every instance maps its own memory). Takes
/// effect only before the engines' first use; returns false when it came
/// too late.
pub fn set_instance_slots(slots: u32) -> bool {
    INSTANCE_SLOTS.set(slots).is_ok()
}

/// The pooling allocator's settings for `slots` instances. Instances live as
/// long as their plugin version (one per worker thread), so the pool's gain
/// is in making one: a reload makes one per worker, and a trap replaces the
/// instance on the worker that hit it, where on-demand mapping, faulting in
/// and unmapping its memory held every request queued behind it (pw-test,
/// instantiate, touch its first MiB and drop: 428 µs on demand, 28 µs from
/// a warm slot; 27 and 12 µs without touching memory).
fn pooling(slots: u32) -> wasmtime::PoolingAllocationConfig {
    let mut pool = wasmtime::PoolingAllocationConfig::new();
    // A component is several core instances and tables (its adapters and
    // shims) around one memory; neither reserves much up front.
    pool.total_memories(slots)
        .total_component_instances(slots)
        .total_stacks(slots)
        .total_core_instances(slots.saturating_mul(8))
        .total_tables(slots.saturating_mul(8))
        // What every store allows (the plugin's own memory limit is
        // enforced by its store's limiter, below this).
        .table_elements(100_000)
        .max_memories_per_module(1)
        .max_memory_size(1 << 32)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .max_unused_warm_slots(WARM_SLOTS);
    pool
}

/// The error of an instance that could not be made: `cause` (how the
/// caller words `e`), and what to raise when the pool is full.
pub fn instantiation_failed(e: &wasmtime::Error, cause: impl std::fmt::Display) -> String {
    let hint = if e.is::<wasmtime::PoolConcurrencyLimitError>() {
        " (every plugin instance slot is in use: raise [plugins] instance_slots, read at start)"
    } else {
        ""
    };
    format!("instantiation failed: {cause}{hint}")
}

/// The optimizing engine, with epoch interruption on and its ticker
/// running: what plugins settle on, and what `weir validate` and the
/// describe command compile with.
pub fn engine() -> &'static Engine {
    engine_for(Tier::Optimized)
}

/// The engine of `tier`. Both share one epoch ticker; a module compiled by
/// one runs only in stores and linkers of the same one (take it from the
/// module: `Module::engine`).
pub fn engine_for(tier: Tier) -> &'static Engine {
    engine_cell(tier).get_or_init(|| {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable);
        if tier == Tier::Baseline {
            config.strategy(wasmtime::Strategy::Winch);
            // Winch compiles a module's functions, but wasmtime still
            // compiles with Cranelift the trampoline through which the host
            // calls each function that escapes (exports and table entries:
            // hundreds in a Rust plugin). At Cranelift's defaults those took
            // twice the CPU of Winch's whole compile in a cold reload
            // (perf, a 136 KB proxy-wasm plugin). A trampoline only moves
            // arguments, so the fast single-pass allocator and no
            // optimization passes lose nothing there.
            config.cranelift_opt_level(wasmtime::OptLevel::None);
            config.cranelift_regalloc_algorithm(wasmtime::RegallocAlgorithm::SinglePass);
        }
        // Baseline code lives for seconds, until its version is compiled
        // optimized or replaced, and a start compiles optimized: writing it
        // to the disk cache (serializing and compressing about a megabyte
        // per reload) would be work and space for nothing.
        if tier == Tier::Optimized
            && let Some(cache) = disk_cache()
        {
            config.cache(Some(cache.clone()));
        }
        let slots = *INSTANCE_SLOTS.get_or_init(|| DEFAULT_INSTANCE_SLOTS);
        if slots > 0 {
            config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling(
                slots,
            )));
        }
        let engine = Engine::new(&config)
            .or_else(|e| {
                // The pool reserves its address space at once; where that is
                // refused (a ulimit -v), instances map their own.
                tracing::warn!(slots, error = %e, "cannot reserve the plugin instance pool; each instance maps its own memory");
                config.allocation_strategy(wasmtime::InstanceAllocationStrategy::OnDemand);
                Engine::new(&config)
            })
            .expect("the wasmtime configuration is valid");
        // The first engine made starts the ticker; every engine joins it.
        TICKER
            .get_or_init(|| Ticker::start(IDLE_BEFORE_PARKING, PARKED_TICK))
            .tick_also(&engine);
        engine
    })
}

/// Where the engine of `tier` lives once made.
fn engine_cell(tier: Tier) -> &'static OnceLock<Engine> {
    static OPTIMIZED: OnceLock<Engine> = OnceLock::new();
    static BASELINE: OnceLock<Engine> = OnceLock::new();
    match tier {
        Tier::Optimized => &OPTIMIZED,
        Tier::Baseline => &BASELINE,
    }
}

/// Instance slots of one engine's pool: those holding a live instance, and
/// all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotUsage {
    /// The compiler tier whose engine this is.
    pub tier: Tier,
    /// Slots holding an instance's linear memory now.
    pub in_use: u64,
    /// Slots in the pool.
    pub total: u64,
}

/// The instance slots of each engine made so far that has a pool.
pub fn slot_usage() -> Vec<SlotUsage> {
    [Tier::Optimized, Tier::Baseline]
        .into_iter()
        .filter_map(|tier| {
            let engine = engine_cell(tier).get()?;
            let metrics = engine.pooling_allocator_metrics()?;
            let total = engine.get_pooling_config()?.get_total_memories();
            Some(SlotUsage {
                tier,
                in_use: metrics.memories() as u64,
                total: u64::from(total),
            })
        })
        .collect()
}

/// wasmtime's on-disk cache of optimized code, if a usable folder was set.
fn disk_cache() -> Option<&'static wasmtime::Cache> {
    static TRIED: OnceLock<()> = OnceLock::new();
    TRIED.get_or_init(|| {
        if let Some(Some(dir)) = CACHE_DIR.get() {
            let mut cache = wasmtime::CacheConfig::new();
            cache.with_directory(dir);
            match wasmtime::Cache::new(cache) {
                Ok(c) => {
                    let _ = DISK_CACHE.set(c);
                }
                Err(e) => tracing::warn!(
                    dir = %dir.display(),
                    error = %e,
                    "the compiled-module cache folder is unusable; plugins will be compiled at every start"
                ),
            }
        }
    });
    DISK_CACHE.get()
}

/// How long the ticker keeps going after plugin code last ran (at least:
/// never less than twice the longest deadline given out).
const IDLE_BEFORE_PARKING: Duration = Duration::from_secs(1);

/// The tick of a parked ticker.
const PARKED_TICK: Duration = Duration::from_secs(1);

static TICKER: OnceLock<&'static Ticker> = OnceLock::new();

/// Epoch ticks allowed for a callback limited to `limit`, counted from now.
/// Call it right before the plugin code runs (it is what wakes the ticker).
pub fn ticks(limit: Duration) -> u64 {
    let ticks = ticks_for(limit);
    if let Some(t) = TICKER.get() {
        t.running(ticks);
    }
    ticks
}

/// Epoch ticks that cover `limit`: a callback is stopped between its limit
/// and one tick past it.
fn ticks_for(limit: Duration) -> u64 {
    // In u64 nanoseconds: `as_micros()` is a u128, and dividing one calls
    // a 128-bit division routine on every callback.
    const TICK_NS: u64 = EPOCH_TICK.as_nanos() as u64;
    let ns = limit
        .as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(limit.subsec_nanos()));
    (ns / TICK_NS).max(1) + 1
}

/// Tells a callback that burns CPU past its `cpu_limit` from one that only
/// took long on the wall clock. Epoch deadlines count wall time, so a
/// callback whose thread was preempted on a busy machine reaches its
/// deadline having run for less than its limit; stopping it there would
/// fail a request for the machine's load, not for anything the plugin did.
///
/// At a deadline the thread's own CPU clock is read and the callback gets
/// one more `limit` of wall time; at the next deadline it is stopped if it
/// used at least half its limit of CPU over that window. A runaway loop
/// that has the CPU is thus stopped between its limit and about twice it;
/// one held off the CPU is stopped only once it runs (or after
/// [`CPU_CHECK_WINDOWS`] windows, whatever the clock says). The clock is
/// read only at deadlines, never on the request path.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuCheck {
    /// The thread's CPU time at the last deadline of this callback.
    mark: Option<Duration>,
    /// Windows granted so far.
    windows: u32,
}

/// Wall-clock windows a callback may be granted for time spent off the CPU
/// before it is stopped regardless.
pub const CPU_CHECK_WINDOWS: u32 = 20;

impl CpuCheck {
    /// Forgets the last mark: call it when a callback starts, and when it
    /// resumes after waiting (the thread ran other work meanwhile).
    pub fn reset(&mut self) {
        *self = CpuCheck::default();
    }

    /// What a callback limited to `limit` gets at an epoch deadline.
    pub fn at_deadline(&mut self, limit: Duration) -> wasmtime::UpdateDeadline {
        let Some(now) = thread_cpu_time() else {
            return wasmtime::UpdateDeadline::Interrupt;
        };
        let burning = self
            .mark
            .replace(now)
            .is_some_and(|before| now.saturating_sub(before) >= limit / 2);
        if burning || self.windows >= CPU_CHECK_WINDOWS {
            return wasmtime::UpdateDeadline::Interrupt;
        }
        self.windows += 1;
        wasmtime::UpdateDeadline::Continue(ticks(limit))
    }
}

/// The calling thread's time on the CPU so far, from the scheduler's own
/// count (`/proc/thread-self/schedstat`, nanoseconds; weir forbids unsafe
/// code, so no direct clock_gettime). Read only at deadlines: opening the
/// file costs some microseconds. `None` where the kernel does not keep it,
/// and the deadline then stops the code as a plain wall-clock limit would.
fn thread_cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = text.split_whitespace().next()?.parse::<u64>().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Advances the engines' epochs (one engine per compiler tier) every
/// [`EPOCH_TICK`] while plugin code may be running, and about once a second
/// once none can be.
///
/// Every deadline is handed out through [`Ticker::running`], just before the
/// code it bounds runs (and again when an async callback resumes, through
/// [`Running`], and when a component's deadline is extended). So once no
/// deadline has been handed out for longer than twice the longest one, every
/// callback that started before has ended or been interrupted, and the
/// ticker may park; the next `running` wakes it before its code starts.
/// Parked, it still ticks once a `parked_tick`: code whose thread was held
/// off the CPU for longer than that whole wait between taking its deadline
/// and the ticker parking is then stopped late, never not at all. An idle
/// weir thus wakes once a second, where a ticker that never slowed down
/// cost about 1% of a core and 500 wake-ups a second for nothing.
///
/// The request path pays three loads per callback; a store only for the
/// first callback after each tick.
pub struct Ticker {
    /// Ticks so far (written by the ticker thread only).
    tick: AtomicU64,
    /// The tick at which a deadline was last handed out.
    last: AtomicU64,
    /// The longest deadline handed out, in ticks.
    longest: AtomicU64,
    /// Set by the ticker before it parks; whoever clears it unparks it.
    parked: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
    /// The engines whose epochs it advances (one per compiler tier).
    engines: Mutex<Vec<wasmtime::EngineWeak>>,
    idle: u64,
    parked_tick: Duration,
}

impl Ticker {
    /// Starts a ticker thread, for the engines then given to
    /// [`Ticker::tick_also`]; it parks after `idle` (or twice the longest
    /// deadline, if longer) without plugin code, and ticks once a
    /// `parked_tick` while parked. It ends once every engine it ticked is gone.
    pub fn start(idle: Duration, parked_tick: Duration) -> &'static Ticker {
        let ticker: &'static Ticker = Box::leak(Box::new(Ticker {
            tick: AtomicU64::new(0),
            last: AtomicU64::new(0),
            longest: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            thread: OnceLock::new(),
            engines: Mutex::new(Vec::new()),
            idle: (idle.as_micros() / EPOCH_TICK.as_micros()) as u64,
            parked_tick,
        }));
        let handle = std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || ticker.run())
            .expect("starting the epoch thread");
        let _ = ticker.thread.set(handle.thread().clone());
        ticker
    }

    /// Advances `engine`'s epoch too, from the next tick on.
    pub fn tick_also(&self, engine: &Engine) {
        self.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(engine.weak());
    }

    /// One tick of every engine; false once all of them are gone.
    fn tick_engines(&self) -> bool {
        let mut engines = self.engines.lock().unwrap_or_else(|p| p.into_inner());
        let had = !engines.is_empty();
        engines.retain(|weak| match weak.upgrade() {
            Some(e) => {
                e.increment_epoch();
                true
            }
            None => false,
        });
        !had || !engines.is_empty()
    }

    fn run(&self) {
        while self.tick_engines() {
            self.tick.fetch_add(1, Ordering::SeqCst);
            if self.parked.load(Ordering::SeqCst) {
                // Until `running` clears `parked` and unparks, or the slow tick.
                std::thread::park_timeout(self.parked_tick);
                continue;
            }
            std::thread::sleep(EPOCH_TICK);
            if !self.idle_long_enough() {
                continue;
            }
            // Announce the park, then look again: code that handed out a
            // deadline meanwhile either shows here or sees `parked` and
            // unparks this thread (both sides store, then load, SeqCst).
            self.parked.store(true, Ordering::SeqCst);
            if !self.idle_long_enough() {
                self.parked.store(false, Ordering::SeqCst);
            }
        }
    }

    fn idle_long_enough(&self) -> bool {
        let since = self
            .tick
            .load(Ordering::SeqCst)
            .saturating_sub(self.last.load(Ordering::SeqCst));
        since > self.idle.max(2 * self.longest.load(Ordering::SeqCst) + 2)
    }

    /// Plugin code is about to run (or resume) with a deadline `ticks` away:
    /// the ticker must be going.
    pub fn running(&self, ticks: u64) {
        // SeqCst loads are plain loads on x86-64 and AArch64's LDAR: the
        // common path stays three loads, with the ordering the park needs.
        if ticks > self.longest.load(Ordering::SeqCst) {
            self.longest.fetch_max(ticks, Ordering::SeqCst);
        }
        let now = self.tick.load(Ordering::SeqCst);
        if self.last.load(Ordering::SeqCst) == now {
            // Marked since the last tick: the ticker cannot be parked.
            return;
        }
        self.last.store(now, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst)
            && self.parked.swap(false, Ordering::SeqCst)
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
    }

    /// Ticks made so far.
    pub fn ticks_made(&self) -> u64 {
        self.tick.load(Ordering::SeqCst)
    }

    /// Whether the ticker is parked now.
    pub fn is_parked(&self) -> bool {
        self.parked.load(Ordering::SeqCst)
    }
}

pin_project_lite::pin_project! {
    /// A future that runs plugin code across awaits (an async callback, an
    /// async instantiation): each poll tells the ticker before the code
    /// resumes, since a callback that waited out an outbound call may
    /// resume after the ticker parked.
    pub struct Running<F> {
        #[pin]
        inner: F,
        ticks: u64,
    }
}

impl<F: Future> Running<F> {
    /// Wraps `inner`, whose code runs with deadlines of at most `limit`.
    pub fn new(inner: F, limit: Duration) -> Running<F> {
        Running {
            inner,
            ticks: ticks_for(limit),
        }
    }
}

impl<F: Future> Future for Running<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if let Some(t) = TICKER.get() {
            t.running(*this.ticks);
        }
        this.inner.poll(cx)
    }
}

/// The SHA-256 of a plugin file, in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Compiled code kept in memory by (content hash, tier), the oldest
/// dropped first beyond [`MEMORY_CACHE_ENTRIES`].
struct MemoryCache<T> {
    entries: HashMap<([u8; 32], Tier), T>,
    order: VecDeque<([u8; 32], Tier)>,
}

impl<T: Clone> MemoryCache<T> {
    fn new() -> Self {
        MemoryCache {
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The code for `key` at `tier`, or at a better one: optimized code
    /// serves a request for baseline code (a re-added plugin that had
    /// settled is not brought back down).
    fn get(&self, key: &[u8; 32], tier: Tier) -> Option<(T, Tier)> {
        let better = [Tier::Optimized, Tier::Baseline];
        let wanted = better.iter().position(|t| *t == tier).unwrap_or(0);
        better[..=wanted]
            .iter()
            .find_map(|t| self.entries.get(&(*key, *t)).map(|c| (c.clone(), *t)))
    }

    fn insert(&mut self, key: [u8; 32], tier: Tier, code: T) {
        if self.entries.insert((key, tier), code).is_none() {
            self.order.push_back((key, tier));
        }
        while self.order.len() > MEMORY_CACHE_ENTRIES {
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
    }
}

/// Compiles `bytes` at `tier` with `build`, or returns what was compiled
/// earlier from the same bytes (in this process, or by an earlier run
/// through the disk cache). A module the baseline compiler refuses (one
/// using a feature Winch lacks) is compiled optimized instead; the tier
/// returned is the one the code has.
fn compile_cached<T: Clone>(
    cache: &Mutex<MemoryCache<T>>,
    bytes: &[u8],
    tier: Tier,
    build: impl Fn(&'static Engine) -> wasmtime::Result<T>,
) -> wasmtime::Result<(T, ModuleOrigin, Tier)> {
    let key: [u8; 32] = Sha256::digest(bytes).into();
    if let Some((code, had)) = cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key, tier)
    {
        return Ok((code, ModuleOrigin::Memory, had));
    }
    let hits = disk_cache().map(|c| c.cache_hits());
    let mut built = super::background::compiling(|| build(engine_for(tier)).map(|c| (c, tier)));
    if tier == Tier::Baseline
        && let Err(e) = &built
    {
        tracing::debug!(error = %e, "the baseline compiler refused a plugin; compiling it optimized");
        built = super::background::compiling(|| {
            build(engine_for(Tier::Optimized)).map(|c| (c, Tier::Optimized))
        });
    }
    let (code, tier) = built?;
    let origin = match (hits, disk_cache().map(|c| c.cache_hits())) {
        (Some(before), Some(after)) if after > before => ModuleOrigin::Disk,
        _ => ModuleOrigin::Compiled,
    };
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, tier, code.clone());
    Ok((code, origin, tier))
}

/// Compiles a component at `tier`, or returns the one compiled earlier from
/// the same bytes (see [`compile`]).
pub fn compile_component(
    bytes: &[u8],
    tier: Tier,
) -> wasmtime::Result<(wasmtime::component::Component, ModuleOrigin, Tier)> {
    static COMPONENTS: OnceLock<Mutex<MemoryCache<wasmtime::component::Component>>> =
        OnceLock::new();
    compile_cached(
        COMPONENTS.get_or_init(|| Mutex::new(MemoryCache::new())),
        bytes,
        tier,
        |engine| wasmtime::component::Component::new(engine, bytes),
    )
}

/// Compiles `bytes` at `tier`, or returns the module compiled earlier from
/// the same bytes (in this process, at this tier or the optimized one, or
/// by an earlier run through the disk cache). The tier returned is the one
/// the module was compiled at.
pub fn compile(bytes: &[u8], tier: Tier) -> wasmtime::Result<(Module, ModuleOrigin, Tier)> {
    static MODULES: OnceLock<Mutex<MemoryCache<Module>>> = OnceLock::new();
    compile_cached(
        MODULES.get_or_init(|| Mutex::new(MemoryCache::new())),
        bytes,
        tier,
        |engine| Module::new(engine, bytes),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An engine of its own, so that other tests' plugins do not keep its
    /// ticker awake.
    fn engine_with_ticker(idle: Duration, parked_tick: Duration) -> (Engine, &'static Ticker) {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).unwrap();
        let ticker = Ticker::start(idle, parked_tick);
        ticker.tick_also(&engine);
        (engine, ticker)
    }

    fn wait_parked(ticker: &Ticker) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ticker.is_parked() {
            assert!(Instant::now() < deadline, "the ticker never parked");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_limit_gets_the_ticks_that_cover_it_and_one_more() {
        let ms = Duration::from_millis;
        // At least one whole tick, plus the one already under way.
        assert_eq!(ticks_for(Duration::ZERO), 2);
        assert_eq!(ticks_for(ms(1)), 2);
        assert_eq!(ticks_for(EPOCH_TICK), 2);
        assert_eq!(ticks_for(EPOCH_TICK * 2 + Duration::from_nanos(1)), 3);
        assert_eq!(ticks_for(ms(10)), 6);
        assert_eq!(ticks_for(Duration::from_secs(1)), 501);
        // No overflow, however long the limit.
        assert_eq!(ticks_for(Duration::MAX), u64::MAX / 2_000_000 + 1);
    }

    #[test]
    fn an_idle_ticker_parks_and_ticks_slowly() {
        let (_engine, ticker) =
            engine_with_ticker(Duration::from_millis(50), Duration::from_secs(1));
        wait_parked(ticker);
        let before = ticker.ticks_made();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            ticker.ticks_made() <= before + 1,
            "a parked ticker made {} ticks in 100 ms",
            ticker.ticks_made() - before
        );
        ticker.running(3);
        let deadline = Instant::now() + Duration::from_secs(5);
        while ticker.ticks_made() == before {
            assert!(
                Instant::now() < deadline,
                "running() did not wake the ticker"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!ticker.is_parked());
        wait_parked(ticker);
    }

    /// A store on `engine` and its module's `spin`, a loop that never ends.
    fn spinner(engine: &Engine) -> (wasmtime::Store<()>, wasmtime::TypedFunc<(), ()>) {
        let wasm = wat::parse_str(r#"(module (func (export "spin") (loop $l (br $l))))"#).unwrap();
        let module = Module::new(engine, wasm).unwrap();
        let mut store = wasmtime::Store::new(engine, ());
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let spin = instance
            .get_typed_func::<(), ()>(&mut store, "spin")
            .unwrap();
        (store, spin)
    }

    /// Runs `spin` with the deadline already set on `store`, and asserts it
    /// was interrupted within `within`. If it was not, the test moves the
    /// epoch by hand to free the thread, then fails with `failure`.
    fn assert_interrupted(
        engine: &Engine,
        mut store: wasmtime::Store<()>,
        spin: wasmtime::TypedFunc<(), ()>,
        within: Duration,
        failure: &str,
    ) {
        let (tx, rx) = std::sync::mpsc::channel();
        let spinning = std::thread::spawn(move || {
            let _ = tx.send(spin.call(&mut store, ()));
        });
        let Ok(result) = rx.recv_timeout(within) else {
            while !spinning.is_finished() {
                engine.increment_epoch();
                std::thread::sleep(Duration::from_millis(1));
            }
            panic!("{failure}");
        };
        spinning.join().unwrap();
        let err = result.unwrap_err();
        assert_eq!(
            err.downcast_ref::<wasmtime::Trap>(),
            Some(&wasmtime::Trap::Interrupt),
            "{err:?}"
        );
    }

    /// `cpu_limit` is CPU time: code whose thread was off the CPU past its
    /// deadline (here asleep in a host call, as a preempted thread would
    /// be) goes on; code that burns its limit is stopped.
    #[test]
    fn a_deadline_stops_code_that_burns_cpu_not_code_that_was_off_the_cpu() {
        let (engine, ticker) = engine_with_ticker(Duration::from_secs(60), Duration::from_secs(1));
        let limit = Duration::from_millis(10);
        let wasm = wat::parse_str(
            r#"(module
                (import "host" "pause" (func $pause))
                (func (export "pause_then_count") (result i32) (local $i i32)
                    call $pause
                    (loop $l
                        (local.set $i (i32.add (local.get $i) (i32.const 1)))
                        (br_if $l (i32.lt_u (local.get $i) (i32.const 1000))))
                    local.get $i)
                (func (export "spin") (loop $l (br $l))))"#,
        )
        .unwrap();
        let module = Module::new(&engine, wasm).unwrap();
        let mut store = wasmtime::Store::new(&engine, CpuCheck::default());
        store.epoch_deadline_callback(move |mut ctx| Ok(ctx.data_mut().at_deadline(limit)));
        let pause =
            wasmtime::Func::wrap(&mut store, || std::thread::sleep(Duration::from_millis(60)));
        let instance = wasmtime::Instance::new(&mut store, &module, &[pause.into()]).unwrap();
        let paused = instance
            .get_typed_func::<(), i32>(&mut store, "pause_then_count")
            .unwrap();
        ticker.running(ticks_for(limit));
        store.set_epoch_deadline(ticks_for(limit));
        let counted = paused.call(&mut store, ());
        assert_eq!(
            counted.map_err(|e| crate::abi::trap_message(&e)),
            Ok(1000),
            "stopped after 60 ms asleep, with no CPU burnt"
        );
        let spin = instance
            .get_typed_func::<(), ()>(&mut store, "spin")
            .unwrap();
        store.data_mut().reset();
        ticker.running(ticks_for(limit));
        store.set_epoch_deadline(ticks_for(limit));
        let started = Instant::now();
        let err = spin.call(&mut store, ()).unwrap_err();
        assert_eq!(
            err.downcast_ref::<wasmtime::Trap>(),
            Some(&wasmtime::Trap::Interrupt),
            "{err:?}"
        );
        assert!(started.elapsed() >= limit, "stopped before its limit");
    }

    /// The point of the ticker: a runaway loop that starts while it is
    /// parked is still stopped at its deadline.
    #[test]
    fn a_loop_started_while_the_ticker_sleeps_is_interrupted() {
        let (engine, ticker) =
            engine_with_ticker(Duration::from_millis(50), Duration::from_secs(60));
        for _ in 0..2 {
            wait_parked(ticker);
            let (mut store, spin) = spinner(&engine);
            let limit = ticks_for(Duration::from_millis(20));
            ticker.running(limit);
            store.set_epoch_deadline(limit);
            let started = Instant::now();
            assert_interrupted(
                &engine,
                store,
                spin,
                Duration::from_secs(5),
                "the loop was not interrupted while the ticker was parked",
            );
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "interrupted only after {:?}",
                started.elapsed()
            );
        }
    }

    /// The ticker waits at least twice the longest deadline it handed out
    /// before it parks, however short its idle setting.
    #[test]
    fn long_deadlines_keep_the_ticker_going_longer() {
        let (_engine, ticker) =
            engine_with_ticker(Duration::from_millis(10), Duration::from_secs(1));
        wait_parked(ticker);
        ticker.running(100); // 200 ms
        let woke = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        wait_parked(ticker);
        assert!(
            woke.elapsed() >= Duration::from_millis(200),
            "parked after {:?}",
            woke.elapsed()
        );
    }

    /// Code that took its deadline, then was held off the CPU until the
    /// ticker parked (so it never woke it), is still stopped: late, by the
    /// parked ticker's slow ticks.
    #[test]
    fn code_that_missed_the_wake_up_is_stopped_by_the_slow_ticks() {
        let (engine, ticker) =
            engine_with_ticker(Duration::from_millis(20), Duration::from_millis(50));
        let (mut store, spin) = spinner(&engine);
        ticker.running(3);
        wait_parked(ticker);
        store.set_epoch_deadline(3);
        assert_interrupted(
            &engine,
            store,
            spin,
            Duration::from_secs(10),
            "a parked ticker never stopped the loop",
        );
    }

    /// The baseline engine's code is bounded by the same ticker: a runaway
    /// loop compiled by Winch is interrupted at its deadline.
    #[test]
    fn baseline_code_is_interrupted_at_its_deadline() {
        let wasm = wat::parse_str(
            r#"(module (func (export "spin") (loop $l (br $l))) (func (export "baseline-tick-test")))"#,
        )
        .unwrap();
        let (module, _, tier) = compile(&wasm, Tier::Baseline).unwrap();
        assert_eq!(tier, Tier::Baseline);
        let engine = module.engine().clone();
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let spin = instance
            .get_typed_func::<(), ()>(&mut store, "spin")
            .unwrap();
        store.set_epoch_deadline(ticks(Duration::from_millis(20)));
        let started = Instant::now();
        assert_interrupted(
            &engine,
            store,
            spin,
            Duration::from_secs(10),
            "the ticker does not advance the baseline engine's epoch",
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// Baseline code is entered through trampolines that Cranelift compiles
    /// without optimization passes and with its single-pass register
    /// allocator: arguments and results of every type cross them intact,
    /// for an export and for a function the host reaches only through a
    /// table, as in the optimized engine.
    #[test]
    fn baseline_trampolines_carry_arguments_and_results_intact() {
        let wasm = wat::parse_str(
            r#"(module
                (table (export "t") 1 funcref)
                (elem (i32.const 0) $mix)
                (func $mix (export "mix")
                    (param $a i32) (param $b i64) (param $c f32) (param $d f64) (param $e i32)
                    (param $f i64) (param $g f32) (param $h f64) (param $i i32) (param $j i64)
                    (result i64 f64 i32)
                    (i64.add (i64.add (local.get $b) (local.get $f)) (local.get $j))
                    (f64.add (f64.add (local.get $d) (local.get $h))
                             (f64.promote_f32 (f32.add (local.get $c) (local.get $g))))
                    (i32.sub (i32.mul (local.get $a) (local.get $e)) (local.get $i)))
                (func (export "trampoline-test")))"#,
        )
        .unwrap();
        let args = (
            7i32,
            1i64 << 40,
            1.5f32,
            2.25f64,
            -3i32,
            -5i64,
            0.25f32,
            1e10f64,
            11i32,
            123_456_789i64,
        );
        let expected = ((1i64 << 40) - 5 + 123_456_789, 1e10 + 2.25 + 1.75, -32i32);
        for tier in [Tier::Baseline, Tier::Optimized] {
            let (module, _, compiled) = compile(&wasm, tier).unwrap();
            assert_eq!(compiled, tier);
            let mut store = wasmtime::Store::new(module.engine(), ());
            store.set_epoch_deadline(u64::MAX / 2);
            let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
            type Args = (i32, i64, f32, f64, i32, i64, f32, f64, i32, i64);
            let mix = instance
                .get_typed_func::<Args, (i64, f64, i32)>(&mut store, "mix")
                .unwrap();
            assert_eq!(
                mix.call(&mut store, args).unwrap(),
                expected,
                "{tier:?}: the export"
            );
            let table = instance.get_table(&mut store, "t").unwrap();
            let from_table = table
                .get(&mut store, 0)
                .and_then(|r| r.as_func().flatten().copied())
                .expect("the table holds the function");
            let params = [
                wasmtime::Val::I32(args.0),
                wasmtime::Val::I64(args.1),
                wasmtime::Val::F32(args.2.to_bits()),
                wasmtime::Val::F64(args.3.to_bits()),
                wasmtime::Val::I32(args.4),
                wasmtime::Val::I64(args.5),
                wasmtime::Val::F32(args.6.to_bits()),
                wasmtime::Val::F64(args.7.to_bits()),
                wasmtime::Val::I32(args.8),
                wasmtime::Val::I64(args.9),
            ];
            let mut results = [
                wasmtime::Val::I32(0),
                wasmtime::Val::I32(0),
                wasmtime::Val::I32(0),
            ];
            from_table.call(&mut store, &params, &mut results).unwrap();
            let got = (
                results[0].unwrap_i64(),
                results[1].unwrap_f64(),
                results[2].unwrap_i32(),
            );
            assert_eq!(got, expected, "{tier:?}: through the table");
        }
    }

    #[test]
    fn the_default_pool_grows_with_the_workers_within_its_bounds() {
        assert_eq!(default_instance_slots(1), DEFAULT_INSTANCE_SLOTS);
        assert_eq!(default_instance_slots(2), DEFAULT_INSTANCE_SLOTS);
        assert_eq!(default_instance_slots(64), 2048);
        assert_eq!(default_instance_slots(1 << 20), MAX_INSTANCE_SLOTS);
    }

    /// The pool weir configures is one wasmtime accepts; when every slot is
    /// in use an instance fails with the setting to raise, and a slot freed
    /// is taken again.
    #[test]
    fn a_full_pool_names_its_setting_and_a_freed_slot_is_reused() {
        let mut config = Config::new();
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling(1)));
        let engine = Engine::new(&config).expect("weir's pool settings are valid");
        let wasm = wat::parse_str(r#"(module (memory (export "memory") 2))"#).unwrap();
        let module = Module::new(&engine, wasm).unwrap();
        let start = || {
            let mut store = wasmtime::Store::new(&engine, ());
            wasmtime::Instance::new(&mut store, &module, &[]).map(|_| store)
        };
        let first = start().expect("the one slot is free");
        let e = start().expect_err("the one slot is taken");
        assert!(
            instantiation_failed(&e, "full").contains("raise [plugins] instance_slots"),
            "{e:?}"
        );
        let other = wasmtime::Error::msg("another failure");
        assert_eq!(
            instantiation_failed(&other, "another failure"),
            "instantiation failed: another failure"
        );
        drop(first);
        start().expect("the freed slot serves again");
    }

    /// Both tiers compile the same bytes into separate cache entries, and a
    /// baseline request is served by optimized code already compiled.
    #[test]
    fn the_memory_cache_keeps_tiers_apart_and_prefers_optimized_code() {
        let wasm = wat::parse_str(r#"(module (func (export "cache-tier-test")))"#).unwrap();
        let (_, origin, tier) = compile(&wasm, Tier::Baseline).unwrap();
        assert_eq!((origin, tier), (ModuleOrigin::Compiled, Tier::Baseline));
        let (_, origin, tier) = compile(&wasm, Tier::Baseline).unwrap();
        assert_eq!((origin, tier), (ModuleOrigin::Memory, Tier::Baseline));
        let (optimized, origin, tier) = compile(&wasm, Tier::Optimized).unwrap();
        assert_eq!((origin, tier), (ModuleOrigin::Compiled, Tier::Optimized));
        assert!(Engine::same(optimized.engine(), engine()));
        let (module, origin, tier) = compile(&wasm, Tier::Baseline).unwrap();
        assert_eq!((origin, tier), (ModuleOrigin::Memory, Tier::Optimized));
        assert!(Engine::same(module.engine(), engine()));
    }

    /// A module the baseline compiler refuses (Winch has no tail calls) is
    /// compiled optimized instead of failing to load.
    #[test]
    fn a_module_winch_refuses_is_compiled_optimized() {
        let wasm = wat::parse_str(
            r#"(module (func $one (result i32) i32.const 1)
                 (func (export "tail-call-test") (result i32) return_call $one))"#,
        )
        .unwrap();
        assert!(
            Module::new(engine_for(Tier::Baseline), &wasm).is_err(),
            "Winch compiled a tail call: pick another feature it lacks for this test"
        );
        let (module, _, tier) = compile(&wasm, Tier::Baseline).unwrap();
        assert_eq!(tier, Tier::Optimized);
        assert!(Engine::same(module.engine(), engine()));
    }
}
