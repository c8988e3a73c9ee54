//! The host side of weir's own plugin ABI: components of the
//! `weir:filter@0.1.0` world (wit/filter.wit), run beside proxy-wasm modules
//! in the same chain.
//!
//! Instance model, as for proxy-wasm: one instance per worker thread, behind
//! an async mutex held for a callback; a request keeps the instance it
//! started on, and names itself to the guest by a stream id. WASI 0.2 is
//! linked with nothing behind it (no folders, environment, arguments or
//! sockets) so that components built with Rust's standard library load.
//!
//! A plugin that imports a host function that waits (`outbound.call`, or
//! `quota.take`, which may ask Redis) runs through wasmtime's async support:
//! the call looks blocking to the guest, while its stream waits without
//! holding a worker thread. The others (most filters) are called
//! synchronously, which saves a fiber switch per callback. The instance stays with that stream
//! until the answer is in; other requests that need the same instance wait
//! for it (asynchronously), new requests pick an idle instance. The CPU limit
//! counts the time a callback ran, not the time it waited for an answer.

use std::future::Future;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::{Mutex, OwnedMutexGuard};
use wasmtime::component::{Component, HasSelf, Linker, TypedFunc};
use wasmtime::{Store, StoreLimitsBuilder, UpdateDeadline};

use crate::abi::trap_message;
use crate::filter::{HttpFilter, StreamFilter, StreamInfo};
use crate::plugin::host::HostServices;
use crate::plugin::{LoadedPlugin, PluginError, PluginSpec, engine};

mod imports;
mod output;
mod stream;

/// Bindings generated from wit/filter.wit (documented there).
#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        imports: { "weir:filter/outbound.call": async, "weir:filter/quota.take": async },
        exports: { default: async },
    });
}

use bindings::weir::filter::types as wit;
use bindings::{Plugin, PluginPre, weir};
use imports::{Current, Skip, State, link_sync_quota};
use stream::ComponentStream;

/// The package and version of the world weir runs.
pub const WORLD: &str = "weir:filter@0.1.2";
/// The export every plugin component must have, at any 0.1.x version (0.1
/// releases only add; wasmtime links a 0.1.0 plugin to this 0.1.2 host).
const FILTER_EXPORT: &str = "weir:filter/filter@0.1.";

/// Whether `bytes` hold a component (rather than a core module): the two
/// share the `\0asm` magic and differ in the version and layer fields.
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[..4] == b"\0asm" && bytes[6..8] == [1, 0]
}

/// A new store for `state`: its CPU limit counts the time the callback ran,
/// not the time it waited for an outbound call.
fn new_store(engine: &wasmtime::Engine, state: State) -> Store<State> {
    let mut store = Store::new(engine, state);
    store.limiter(|s| s as &mut dyn wasmtime::ResourceLimiter);
    store.epoch_deadline_callback(|mut ctx| {
        let s = ctx.data_mut();
        let ran = s.entered.elapsed().saturating_sub(s.waited);
        Ok(if ran >= s.cpu_limit {
            // Past the limit on the wall clock: stopped if it burns CPU.
            s.cpu_check.at_deadline(s.cpu_limit)
        } else {
            UpdateDeadline::Continue(engine::ticks(s.cpu_limit - ran))
        })
    });
    store
}

/// Runs `fut` to its end from synchronous code (a streamed body chunk,
/// on-done, loading): at once when it does not wait, which is the rule there
/// since outbound calls are refused in those callbacks; otherwise the worker
/// hands its other tasks to another thread while this one waits.
fn wait<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    if let Poll::Ready(v) = fut
        .as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()))
    {
        return v;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| h.block_on(fut))
        }
        _ => park_on(fut),
    }
}

/// A minimal executor for [`wait`] outside a multi-threaded runtime.
fn park_on<F: Future>(mut fut: std::pin::Pin<&mut F>) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// One instance: its store and the plugin's exports.
struct Instance {
    store: Store<State>,
    bindings: Plugin,
    /// The exports, called synchronously, when the plugin imports nothing
    /// that waits (outbound calls, quota): no fiber per callback.
    sync: Option<SyncExports>,
    /// Why the instance is unusable, when it is.
    failed: Option<String>,
    /// A callback is under way (set while the guest runs; left set when the
    /// request that ran it went away mid-call, so the instance is replaced).
    in_call: bool,
    /// This instance's part of the plugin's callback histogram (recorded
    /// under the instance's lock, without atomic read-modify-writes).
    callbacks: crate::plugin::health::CallbackShard,
}

type BodyFn = TypedFunc<(u64, Vec<u8>, bool), ((wit::BodyAction, Vec<u8>),)>;

/// The filter's exports as synchronous functions.
struct SyncExports {
    configure: TypedFunc<(Vec<u8>,), (Result<(), String>,)>,
    config_schema: TypedFunc<(), (Option<String>,)>,
    on_request_headers: TypedFunc<(u64, bool), (wit::Action,)>,
    on_request_body: BodyFn,
    on_response_headers: TypedFunc<(u64, bool), (wit::Action,)>,
    on_response_body: BodyFn,
    on_done: TypedFunc<(u64,), ()>,
}

impl SyncExports {
    fn new(
        store: &mut Store<State>,
        instance: &wasmtime::component::Instance,
        export: &str,
    ) -> wasmtime::Result<SyncExports> {
        let iface = instance
            .get_export_index(&mut *store, None, export)
            .ok_or_else(|| wasmtime::Error::msg(format!("no export {export}")))?;
        macro_rules! func {
            ($name:literal) => {{
                let idx = instance
                    .get_export_index(&mut *store, Some(&iface), $name)
                    .ok_or_else(|| wasmtime::Error::msg(concat!("no export ", $name)))?;
                instance.get_typed_func(&mut *store, &idx)?
            }};
        }
        Ok(SyncExports {
            configure: func!("configure"),
            config_schema: func!("config-schema"),
            on_request_headers: func!("on-request-headers"),
            on_request_body: func!("on-request-body"),
            on_response_headers: func!("on-response-headers"),
            on_response_body: func!("on-response-body"),
            on_done: func!("on-done"),
        })
    }
}

/// Instances a plugin may have per worker thread: beyond the first, they are
/// made only while requests wait for outbound calls.
const SPARE_INSTANCES: usize = 4;

/// A loaded component plugin.
pub struct ComponentCore {
    spec: PluginSpec,
    host: Arc<HostServices>,
    pre: PluginPre<State>,
    origin: engine::ModuleOrigin,
    tier: engine::Tier,
    /// The filter export's full name (`weir:filter/filter@0.1.x`), and
    /// whether the plugin imports a host function that waits (then every
    /// callback runs on wasmtime's async support).
    export: String,
    waits: bool,
    /// Instance slots: one per worker, filled at load; the rest are filled
    /// when every instance is held by a request waiting for an outbound call.
    instances: Box<[tokio::sync::OnceCell<Arc<Mutex<Instance>>>]>,
    workers: usize,
    memory: Arc<AtomicU64>,
    next_stream: AtomicU64,
    /// The phases the plugin declared it does nothing in ([`Skip`] bits).
    skip: Arc<AtomicU8>,
}

impl Drop for ComponentCore {
    fn drop(&mut self) {
        // Freed on the reaper thread, not on the worker the last request ended on.
        crate::plugin::background::retire(std::mem::take(&mut self.instances));
    }
}

/// The filter a component plugin contributes to the chain.
pub struct ComponentPlugin(Arc<ComponentCore>);

impl ComponentPlugin {
    /// Compiles, links and configures a component: `workers` instances.
    pub fn load(
        spec: PluginSpec,
        bytes: &[u8],
        host: Arc<HostServices>,
        workers: usize,
    ) -> Result<Arc<dyn LoadedPlugin>, PluginError> {
        let file = spec.file.display().to_string();
        let err = |message: String| PluginError {
            file: file.clone(),
            message,
        };
        let (component, origin, tier) = engine::compile_component(bytes, spec.tier)
            .map_err(|e| err(format!("invalid component: {}", e.root_cause())))?;
        let export = check_world(&component).map_err(&err)?;
        let waits = imports_waiting(&component, host.quota().may_wait());
        let linker = linker(waits, tier).map_err(&err)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| err(format!("linking: {}", e.root_cause())))?;
        let pre = PluginPre::new(pre).map_err(|e| err(format!("{}", e.root_cause())))?;
        let core = ComponentCore {
            spec,
            host,
            pre,
            origin,
            tier,
            export,
            waits,
            instances: (0..workers.max(1) * SPARE_INSTANCES)
                .map(|_| tokio::sync::OnceCell::new())
                .collect(),
            workers: workers.max(1),
            memory: Arc::new(AtomicU64::new(0)),
            next_stream: AtomicU64::new(1),
            skip: Arc::default(),
        };
        for i in 0..core.workers {
            let inst = wait(core.start_instance()).map_err(&err)?;
            let _ = core.instances[i].set(Arc::new(Mutex::new(inst)));
        }
        tracing::info!(plugin.name = %core.spec.name, abi = WORLD, instances = core.workers, module = origin.as_str(), "plugin loaded");
        Ok(Arc::new(ComponentPlugin(Arc::new(core))))
    }
}

/// Whether a component imports a host function that waits: an outbound
/// call, or a quota take when the quota backend is remote (`quota_waits`:
/// Redis; a local take never waits). Such a plugin's callbacks run on
/// wasmtime's async support (a fiber per callback); the others are called
/// synchronously, which is cheaper.
fn imports_waiting(component: &Component, quota_waits: bool) -> bool {
    component
        .component_type()
        .imports(component.engine())
        .any(|(name, _)| {
            name.starts_with("weir:filter/outbound")
                || (quota_waits && name.starts_with("weir:filter/quota"))
        })
}

/// The linker component plugins are instantiated with: WASI 0.2 (with
/// nothing granted) and weir's host interfaces. `waits`: WASI's async
/// bindings, for plugins run on fibers; else the synchronous ones, with
/// stdout and stderr writes that never block (the sync bindings would
/// block on the runtime, which a proxy worker must not).
///
/// Each of the two is built once per engine (compiler tier) and shared: a
/// reload links against it instead of defining every WASI and weir function
/// again (most of a cached reload's CPU before).
fn linker(waits: bool, tier: engine::Tier) -> Result<&'static Linker<State>, String> {
    type Cell = OnceLock<Result<Linker<State>, String>>;
    static LINKERS: [Cell; 4] = [const { OnceLock::new() }; 4];
    let i = usize::from(waits) * 2 + usize::from(tier == engine::Tier::Baseline);
    LINKERS[i]
        .get_or_init(|| build_linker(waits, tier))
        .as_ref()
        .map_err(Clone::clone)
}

fn build_linker(waits: bool, tier: engine::Tier) -> Result<Linker<State>, String> {
    let mut linker: Linker<State> = Linker::new(engine::engine_for(tier));
    if waits {
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| format!("linking WASI: {e}"))?;
    } else {
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| format!("linking WASI: {e}"))?;
        output::link_sync_writes(&mut linker).map_err(|e| format!("linking WASI: {e}"))?;
    }
    Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
        .map_err(|e| format!("linking: {e}"))?;
    if !waits {
        link_sync_quota(&mut linker).map_err(|e| format!("linking: {e}"))?;
    }
    Ok(linker)
}

/// Describes a component: its world, imports, exports and configuration schema.
pub fn describe(bytes: &[u8]) -> Result<String, String> {
    let (component, _, tier) = engine::compile_component(bytes, engine::Tier::Optimized)
        .map_err(|e| format!("invalid component: {}", e.root_cause()))?;
    check_world(&component)?;
    let engine = component.engine();
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let linker = linker(true, tier)?;
    let metrics = Arc::new(crate::telemetry::Metrics::new());
    let state = State::new(
        "describe",
        "describe",
        Arc::new(HostServices::new(std::sync::Weak::new(), metrics)),
        StoreLimitsBuilder::new().build(),
        64 << 20,
        Arc::default(),
    );
    let mut store = new_store(engine, state);
    store.set_epoch_deadline(engine::ticks(Duration::from_secs(1)));
    let schema = wait(engine::Running::new(
        async {
            let bindings = Plugin::instantiate_async(&mut store, &component, linker)
                .await
                .map_err(|e| engine::instantiation_failed(&e, e.root_cause()))?;
            bindings
                .weir_filter_filter()
                .call_config_schema(&mut store)
                .await
                .map_err(|e| format!("config-schema trapped: {}", trap_message(&e)))
        },
        Duration::from_secs(1),
    ))?;
    let built_for = exports
        .iter()
        .find_map(|e| e.strip_prefix("weir:filter/filter@"))
        .unwrap_or("?");
    Ok(format!(
        "abi: component weir:filter@{built_for} (world plugin; this weir runs {WORLD})\nexports: {}\nimports ({}): {}\nconfiguration schema (JSON Schema): {}\n",
        exports.join(", "),
        imports.len(),
        imports.join(", "),
        schema.unwrap_or_else(|| "none exported".into())
    ))
}

/// Refuses components of another world or version, naming what they target.
fn check_world(component: &Component) -> Result<String, String> {
    let ty = component.component_type();
    let engine = component.engine();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    if let Some(e) = exports.iter().find(|e| e.starts_with(FILTER_EXPORT)) {
        return Ok(e.clone());
    }
    if let Some(other) = exports
        .iter()
        .find(|e| e.starts_with("weir:filter/filter@"))
    {
        let version = other.rsplit('@').next().unwrap_or("?");
        return Err(format!(
            "targets weir:filter@{version}; this weir runs {WORLD} (rebuild the plugin against weir-sdk for {WORLD})"
        ));
    }
    Err(format!(
        "is a component but not a weir plugin: it exports {} and not {FILTER_EXPORT}x",
        if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports.join(", ")
        }
    ))
}

/// One callback of the filter world.
enum Callback<'c> {
    RequestHeaders(bool),
    ResponseHeaders(bool),
    Body(wit::Direction, &'c mut Vec<u8>, bool),
    Done,
}

/// What a callback returned.
enum Outcome {
    Action(wit::Action),
    Body(wit::BodyAction, Vec<u8>),
    Done,
}

impl ComponentCore {
    /// Whether the plugin declared it does nothing in the phases `bits`.
    fn skips(&self, bits: u8) -> bool {
        self.skip.load(Ordering::Relaxed) & bits != 0
    }

    /// Slot `i`'s instance (a stream's slot is always filled).
    fn slot(&self, i: usize) -> Arc<Mutex<Instance>> {
        self.instances[i]
            .get()
            .expect("a stream's instance slot is filled")
            .clone()
    }

    /// Instance `i`, when its current callback (if any) is done.
    async fn lock(&self, i: usize) -> OwnedMutexGuard<Instance> {
        self.slot(i).lock_owned().await
    }

    /// Instance `i` from synchronous code: at once when it is free (the
    /// rule), else after the callback holding it finishes.
    fn lock_now(&self, i: usize) -> OwnedMutexGuard<Instance> {
        match self.slot(i).try_lock_owned() {
            Ok(g) => g,
            Err(_) => wait(self.lock(i)),
        }
    }

    /// An idle instance for a new stream, starting at slot `from`: a free
    /// one, else a new one in an empty slot; None when all are busy.
    async fn idle_instance(&self, from: usize) -> Option<(usize, OwnedMutexGuard<Instance>)> {
        let n = self.instances.len();
        for k in 0..n {
            let i = (from + k) % n;
            if let Some(cell) = self.instances[i].get()
                && let Ok(g) = cell.clone().try_lock_owned()
            {
                return Some((i, g));
            }
        }
        let i = (0..n).find(|&i| !self.instances[i].initialized())?;
        // Boxed: a cold path, kept out of every callback's future.
        let cell = Box::pin(self.instances[i].get_or_try_init(|| async {
                let inst = self.start_instance().await?;
                tracing::debug!(plugin.name = %self.spec.name, slot = i, "instances are all waiting for outbound calls; added one");
                Ok::<_, String>(Arc::new(Mutex::new(inst)))
            }))
            .await
            .ok()?;
        cell.clone().try_lock_owned().ok().map(|g| (i, g))
    }

    /// Starts an instance; its code may resume after awaits, so the epoch
    /// ticker hears of every poll.
    async fn start_instance(&self) -> Result<Instance, String> {
        let startup = self.spec.cpu_limit.max(Duration::from_secs(1));
        engine::Running::new(self.start_instance_now(), startup).await
    }

    /// A store for one instance of this plugin, with nothing in it yet.
    fn new_store(&self) -> Store<State> {
        let mut state = State::new(
            &self.spec.name,
            &self.spec.vm_id,
            self.host.clone(),
            StoreLimitsBuilder::new()
                .memory_size(self.spec.memory_limit as usize)
                .trap_on_grow_failure(true)
                .instances(16)
                .tables(16)
                .table_elements(100_000)
                .build(),
            self.spec.memory_limit,
            self.memory.clone(),
        );
        state.skip = self.skip.clone();
        new_store(self.pre.engine(), state)
    }

    async fn start_instance_now(&self) -> Result<Instance, String> {
        let mut store = self.new_store();
        let startup = self.spec.cpu_limit.max(Duration::from_secs(1));
        store.data_mut().cpu_limit = startup;
        store.data_mut().entered = Instant::now();
        store.data_mut().cpu_check.reset();
        store.set_epoch_deadline(engine::ticks(startup));
        let instantiated = |e: wasmtime::Error| engine::instantiation_failed(&e, trap_message(&e));
        let (bindings, sync) = if self.waits {
            let b = self
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(instantiated)?;
            (b, None)
        } else {
            let instance = self
                .pre
                .instance_pre()
                .instantiate(&mut store)
                .map_err(instantiated)?;
            let b = Plugin::new(&mut store, &instance).map_err(instantiated)?;
            let f = SyncExports::new(&mut store, &instance, &self.export).map_err(instantiated)?;
            (b, Some(f))
        };
        let schema = match &sync {
            Some(f) => f.config_schema.call(&mut store, ()).map(|(s,)| s),
            None => {
                bindings
                    .weir_filter_filter()
                    .call_config_schema(&mut store)
                    .await
            }
        }
        .map_err(|e| format!("config-schema trapped: {}", trap_message(&e)))?;
        if let Some(schema) = schema
            && !schema.trim().is_empty()
        {
            check_config(&schema, &self.spec.config)?;
        }
        match &sync {
            Some(f) => f
                .configure
                .call(&mut store, (self.spec.config.to_vec(),))
                .map(|(r,)| r),
            None => {
                bindings
                    .weir_filter_filter()
                    .call_configure(&mut store, &self.spec.config)
                    .await
            }
        }
        .map_err(|e| format!("configure trapped: {}", trap_message(&e)))?
        .map_err(|m| format!("configure refused the configuration: {m}"))?;
        Ok(Instance {
            store,
            bindings,
            sync,
            failed: None,
            in_call: false,
            callbacks: self.spec.health.callback_shard(),
        })
    }

    /// Makes `inst` usable again after a trap or a cancelled call: a fresh
    /// instance, or the reason there is none.
    async fn replace(&self, inst: &mut Instance) {
        // Free the old instance first: its pool slot is then the one the
        // new instance takes, warm, and a full pool still has one for it.
        // An empty store holds its place meanwhile, marked failed (nothing
        // enters it) and in a call (a replacement cut short, its request
        // gone, is made again by the next request), and for good if the new
        // one cannot start.
        inst.failed = Some("the instance is being replaced".into());
        inst.in_call = true;
        drop(std::mem::replace(&mut inst.store, self.new_store()));
        match self.start_instance().await {
            Ok(fresh) => *inst = fresh,
            Err(e) => {
                inst.failed = Some(e);
                inst.in_call = false;
            }
        }
    }

    /// Runs one callback within the CPU limit; `may_wait` lets it make
    /// outbound calls. A trap replaces the instance.
    async fn invoke(
        &self,
        inst: &mut Instance,
        id: u64,
        callback: Callback<'_>,
        may_wait: bool,
    ) -> Result<Outcome, String> {
        let started = Instant::now();
        {
            let s = inst.store.data_mut();
            s.may_wait = may_wait;
            s.entered = started;
            s.waited = Duration::ZERO;
            s.cpu_limit = self.spec.cpu_limit;
            s.cpu_check.reset();
        }
        inst.store
            .set_epoch_deadline(engine::ticks(self.spec.cpu_limit));
        inst.in_call = true;
        let run = async {
            let store = &mut inst.store;
            if let Some(f) = &inst.sync {
                return match callback {
                    Callback::RequestHeaders(eos) => f
                        .on_request_headers
                        .call(store, (id, eos))
                        .map(|(a,)| Outcome::Action(a)),
                    Callback::ResponseHeaders(eos) => f
                        .on_response_headers
                        .call(store, (id, eos))
                        .map(|(a,)| Outcome::Action(a)),
                    Callback::Body(dir, chunk, eos) => {
                        let func = match dir {
                            wit::Direction::Request => &f.on_request_body,
                            wit::Direction::Response => &f.on_response_body,
                        };
                        func.call(store, (id, std::mem::take(chunk), eos))
                            .map(|((a, b),)| Outcome::Body(a, b))
                    }
                    Callback::Done => f.on_done.call(store, (id,)).map(|()| Outcome::Done),
                };
            }
            let f = inst.bindings.weir_filter_filter();
            match callback {
                Callback::RequestHeaders(eos) => f
                    .call_on_request_headers(store, id, eos)
                    .await
                    .map(Outcome::Action),
                Callback::ResponseHeaders(eos) => f
                    .call_on_response_headers(store, id, eos)
                    .await
                    .map(Outcome::Action),
                Callback::Body(wit::Direction::Request, chunk, eos) => f
                    .call_on_request_body(store, id, chunk, eos)
                    .await
                    .map(|(a, b)| Outcome::Body(a, b)),
                Callback::Body(wit::Direction::Response, chunk, eos) => f
                    .call_on_response_body(store, id, chunk, eos)
                    .await
                    .map(|(a, b)| Outcome::Body(a, b)),
                Callback::Done => f.call_on_done(store, id).await.map(|()| Outcome::Done),
            }
        };
        // A host function that panics comes back here, handled as a trap of
        // this plugin.
        let result = std::panic::AssertUnwindSafe(engine::Running::new(run, self.spec.cpu_limit))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a host panic");
                Err(wasmtime::Error::msg(format!(
                    "a host call of the plugin failed in the host ({})",
                    what.lines().next().unwrap_or(what)
                )))
            });
        inst.in_call = false;
        inst.callbacks.record(started.elapsed());
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                let message = trap_message(&e);
                self.spec.health.trapped(&message);
                self.host.plugin_trap(&self.spec.name);
                Box::pin(self.replace(inst)).await;
                Err(message)
            }
        }
    }
}

/// Checks a plugin's configuration against the JSON Schema it exports,
/// naming every mismatch with its field (`config.request_set.x: ...`).
fn check_config(schema: &str, config: &[u8]) -> Result<(), String> {
    let schema: serde_json::Value = serde_json::from_str(schema)
        .map_err(|e| format!("the plugin exports a configuration schema that is not JSON: {e}"))?;
    let validator = jsonschema::validator_for(&schema)
        .map_err(|e| format!("the plugin exports an invalid configuration schema: {e}"))?;
    let candidates: Vec<serde_json::Value> = if config.iter().all(u8::is_ascii_whitespace) {
        // No configuration: an empty table, or none at all.
        vec![serde_json::json!({}), serde_json::Value::Null]
    } else {
        vec![serde_json::from_slice(config).map_err(|e| {
            format!("the plugin declares a JSON configuration schema, but its configuration is not JSON (use [config], not config_raw): {e}")
        })?]
    };
    let mut errors = Vec::new();
    for instance in &candidates {
        errors = validator
            .iter_errors(instance)
            .map(|e| {
                let pointer = e.instance_path().to_string();
                let field: String = pointer
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(|s| format!(".{}", s.replace("~1", "/").replace("~0", "~")))
                    .collect();
                format!("config{field}: {e}")
            })
            .collect();
        if errors.is_empty() {
            return Ok(());
        }
    }
    Err(format!(
        "[config] does not match the plugin's configuration schema ({} error{}): {}",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" },
        errors.join("; ")
    ))
}

impl LoadedPlugin for ComponentPlugin {
    fn abi(&self) -> String {
        format!("component {WORLD}")
    }

    fn memory_bytes(&self) -> u64 {
        self.0.memory.load(Ordering::Relaxed)
    }

    fn tier(&self) -> engine::Tier {
        self.0.tier
    }

    fn module_origin(&self) -> engine::ModuleOrigin {
        self.0.origin
    }

    fn calls(&self) -> &'static str {
        if self.0.waits { "async" } else { "synchronous" }
    }
}

impl HttpFilter for ComponentPlugin {
    fn name(&self) -> &str {
        &self.0.spec.name
    }

    fn new_stream(&self, info: &Arc<StreamInfo>) -> Box<dyn StreamFilter> {
        Box::new(ComponentStream::new(self.0.clone(), info))
    }
}
