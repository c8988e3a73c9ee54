//! The proxy-wasm ABI host: runs filters built for Envoy with the proxy-wasm
//! SDKs (Rust, Go, C++, AssemblyScript) unmodified, in Envoy's order.
//!
//! Instance model: like Envoy's one VM per worker thread, a plugin has one
//! instance per worker thread, each behind a mutex held only for a callback's
//! short CPU work. A request picks the instance of the thread it starts on and
//! keeps it (its contexts live there); a paused request releases the mutex,
//! so a plugin waiting for an outbound call never blocks a worker. Shared data
//! and queues live in the host, per vm_id, across all instances.

mod hostcalls;
mod maps;
mod memory;
mod pairs;
mod properties;
mod status;
mod stream;
mod vm;
mod wasi;

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use wasmtime::{InstancePre, Linker, Store};

use crate::plugin::host::{CallResponse, HostServices};
use crate::plugin::{LoadedPlugin, PluginError, PluginSpec, engine};
use vm::{Phase, Vm, VmState};

/// The proxy-wasm ABI versions weir runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbiVersion {
    /// 0.1.0 (two-argument header callbacks, `proxy_get_configuration`).
    V0_1_0,
    /// 0.2.0.
    V0_2_0,
    /// 0.2.1.
    V0_2_1,
}

impl fmt::Display for AbiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AbiVersion::V0_1_0 => "0.1.0",
            AbiVersion::V0_2_0 => "0.2.0",
            AbiVersion::V0_2_1 => "0.2.1",
        })
    }
}

/// A loaded proxy-wasm plugin.
pub struct PluginCore {
    /// Its spec.
    pub spec: PluginSpec,
    /// Host services.
    pub host: Arc<HostServices>,
    abi: AbiVersion,
    origin: engine::ModuleOrigin,
    tier: engine::Tier,
    pre: InstancePre<VmState>,
    instances: Vec<Mutex<Vm>>,
}

/// The filter a plugin contributes to the chain.
pub struct ProxyWasmPlugin(Arc<PluginCore>);

impl ProxyWasmPlugin {
    /// Compiles, links and starts a plugin: `workers` instances, each
    /// initialised and configured. The error names the file and the cause.
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
        let (pre, abi, origin, tier) = prepare(bytes, spec.tier).map_err(err)?;
        let core = Arc::new_cyclic(|weak| {
            let instances = (0..workers.max(1))
                .map(|i| {
                    Mutex::new(Vm {
                        store: bare_store(weak.clone(), &spec, abi, pre.module().engine(), i, 0),
                        exports: Arc::new(empty_exports()),
                        failed: Some("not started".into()),
                    })
                })
                .collect();
            PluginCore {
                spec,
                host,
                abi,
                origin,
                tier,
                pre,
                instances,
            }
        });
        for i in 0..core.instances.len() {
            let fresh = core.start_instance(i, 0).map_err(err)?;
            *core.lock(i) = fresh;
        }
        tracing::info!(plugin.name = %core.spec.name, abi = %abi, instances = core.instances.len(), module = origin.as_str(), "plugin loaded");
        Ok(Arc::new(ProxyWasmPlugin(core)))
    }
}

/// A store for instance `index` of `plugin`, with nothing instantiated in
/// it: where an instance starts, and what holds an instance's place while
/// it has none.
fn bare_store(
    plugin: std::sync::Weak<PluginCore>,
    spec: &PluginSpec,
    abi: AbiVersion,
    engine: &wasmtime::Engine,
    index: usize,
    generation: u64,
) -> Store<VmState> {
    Store::new(
        engine,
        vm::new_state(
            plugin,
            spec.name.clone().into(),
            abi,
            index,
            generation,
            spec.memory_limit,
            spec.health.callback_shard(),
        ),
    )
}

/// Describes a proxy-wasm module: ABI, the callbacks it exports, its imports.
pub fn describe(bytes: &[u8]) -> Result<String, String> {
    let (pre, abi, _, _) = prepare(bytes, engine::Tier::Optimized)?;
    let module = pre.module();
    let callbacks: Vec<&str> = module
        .exports()
        .map(|e| e.name())
        .filter(|n| n.starts_with("proxy_on_"))
        .collect();
    let imports: Vec<String> = module
        .imports()
        .map(|i| format!("{}.{}", i.module(), i.name()))
        .collect();
    Ok(format!(
        "abi: proxy-wasm {abi}\ncallbacks: {}\nimports ({}): {}\nconfiguration schema: none (proxy-wasm plugins cannot declare one; weir:filter components can)\n",
        callbacks.join(", "),
        imports.len(),
        imports.join(", ")
    ))
}

/// Compiles a module at `tier` and checks what it declares and imports.
fn prepare(
    bytes: &[u8],
    tier: engine::Tier,
) -> Result<
    (
        InstancePre<VmState>,
        AbiVersion,
        engine::ModuleOrigin,
        engine::Tier,
    ),
    String,
> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err("not a WebAssembly module (no \\0asm header)".into());
    }
    let (module, origin, tier) = engine::compile(bytes, tier)
        .map_err(|e| format!("invalid WebAssembly module: {}", e.root_cause()))?;
    let abi = module
        .exports()
        .find_map(|e| match e.name() {
            "proxy_abi_version_0_1_0" => Some(AbiVersion::V0_1_0),
            "proxy_abi_version_0_2_0" => Some(AbiVersion::V0_2_0),
            "proxy_abi_version_0_2_1" => Some(AbiVersion::V0_2_1),
            _ => None,
        })
        .ok_or("declares no proxy-wasm ABI version (no export proxy_abi_version_0_1_0, _0_2_0 or _0_2_1); weir runs proxy-wasm ABI 0.1.0, 0.2.0 and 0.2.1")?;
    let provided = provided();
    let missing: Vec<String> = module
        .imports()
        .filter(|i| !provided.contains(&(i.module(), i.name())))
        .map(|i| format!("{}.{}", i.module(), i.name()))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "imports {}, which weir does not provide (weir provides proxy-wasm ABI 0.1.0 to 0.2.1 and WASI preview1)",
            missing.join(", ")
        ));
    }
    let has = |name: &str| module.exports().any(|e| e.name() == name);
    if !has("memory") {
        return Err("exports no memory".into());
    }
    if !has("proxy_on_memory_allocate") && !has("malloc") {
        return Err("exports no allocator (proxy_on_memory_allocate or malloc)".into());
    }
    let pre = linker(tier)?
        .instantiate_pre(&module)
        .map_err(|e| format!("linking: {}", e.root_cause()))?;
    Ok((pre, abi, origin, tier))
}

/// The (module, name) pairs weir provides to proxy-wasm modules.
fn provided() -> &'static HashSet<(&'static str, &'static str)> {
    static PROVIDED: OnceLock<HashSet<(&'static str, &'static str)>> = OnceLock::new();
    PROVIDED.get_or_init(|| {
        hostcalls::NAMES
            .iter()
            .map(|n| ("env", *n))
            .chain(
                wasi::MODULES
                    .iter()
                    .flat_map(|m| wasi::names().into_iter().map(move |n| (*m, n))),
            )
            .collect()
    })
}

/// The host functions every proxy-wasm module links against, defined once
/// per engine (compiler tier): a reload links against them instead of
/// defining some 150 functions again.
fn linker(tier: engine::Tier) -> Result<&'static Linker<VmState>, String> {
    static OPTIMIZED: OnceLock<Result<Linker<VmState>, String>> = OnceLock::new();
    static BASELINE: OnceLock<Result<Linker<VmState>, String>> = OnceLock::new();
    let cell = match tier {
        engine::Tier::Optimized => &OPTIMIZED,
        engine::Tier::Baseline => &BASELINE,
    };
    cell.get_or_init(|| {
        let mut linker = Linker::new(engine::engine_for(tier));
        hostcalls::link(&mut linker).map_err(|e| format!("linking: {e}"))?;
        wasi::link(&mut linker).map_err(|e| format!("linking: {e}"))?;
        Ok(linker)
    })
    .as_ref()
    .map_err(Clone::clone)
}

fn empty_exports() -> vm::Exports {
    vm::Exports {
        on_context_create: None,
        on_vm_start: None,
        on_configure: None,
        on_request_headers: None,
        on_request_body: None,
        on_response_headers: None,
        on_response_body: None,
        on_request_trailers: None,
        on_response_trailers: None,
        on_log: None,
        on_done: None,
        on_delete: None,
        on_tick: None,
        on_http_call_response: None,
        on_queue_ready: None,
        on_grpc_receive: None,
        on_grpc_close: None,
    }
}

/// How a callback went.
enum Called {
    /// It returned this action code (0 continue, else pause).
    Action(i32),
    /// It trapped; the instance is gone.
    Trapped(String),
}

impl PluginCore {
    fn lock(&self, i: usize) -> MutexGuard<'_, Vm> {
        self.instances[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A store for instance `index`, with nothing instantiated in it.
    fn bare_store(self: &Arc<Self>, index: usize, generation: u64) -> Store<VmState> {
        bare_store(
            Arc::downgrade(self),
            &self.spec,
            self.abi,
            self.pre.module().engine(),
            index,
            generation,
        )
    }

    /// Instantiates, initialises and configures instance `index`.
    fn start_instance(self: &Arc<Self>, index: usize, generation: u64) -> Result<Vm, String> {
        let mut store = self.bare_store(index, generation);
        store.limiter(|s| s as &mut dyn wasmtime::ResourceLimiter);
        // A deadline stops the code only if it burns CPU (not when its
        // thread was merely preempted): `cpu_limit` is CPU time.
        store.epoch_deadline_callback(|mut ctx| {
            let s = ctx.data_mut();
            Ok(s.cpu_check.at_deadline(s.cpu_limit))
        });
        let startup = self.spec.cpu_limit.max(Duration::from_secs(1));
        store.data_mut().cpu_limit = startup;
        store.set_epoch_deadline(engine::ticks(startup));
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| engine::instantiation_failed(&e, e.root_cause()))?;
        let memory = instance.get_memory(&mut store, "memory");
        let malloc = instance
            .get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<i32, i32>(&mut store, "malloc"))
            .map_err(|e| format!("the allocator export has the wrong signature: {e}"))?;
        store.data_mut().memory = memory;
        store.data_mut().malloc = Some(malloc);
        let exports = vm::exports(&mut store, &instance, self.abi)?;
        let trap = |what: &str, e: wasmtime::Error| format!("{what} trapped: {}", trap_message(&e));
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            init.call(&mut store, ())
                .map_err(|e| trap("_initialize", e))?;
            if let Ok(main) = instance.get_typed_func::<(i32, i32), i32>(&mut store, "main") {
                main.call(&mut store, (0, 0)).map_err(|e| trap("main", e))?;
            }
        } else if let Ok(start) = instance.get_typed_func::<(), ()>(&mut store, "_start") {
            start.call(&mut store, ()).map_err(|e| trap("_start", e))?;
        }
        let root = store.data().root as i32;
        if let Some(f) = &exports.on_context_create {
            f.call(&mut store, (root, 0))
                .map_err(|e| trap("proxy_on_context_create", e))?;
        }
        store.data_mut().phase = Phase::VmStart;
        if let Some(f) = &exports.on_vm_start {
            let ok = f
                .call(&mut store, (root, self.spec.vm_config.len() as i32))
                .map_err(|e| trap("proxy_on_vm_start", e))?;
            if ok == 0 {
                return Err(
                    "proxy_on_vm_start returned false: the plugin refused its VM configuration"
                        .into(),
                );
            }
        }
        store.data_mut().phase = Phase::Configure;
        if let Some(f) = &exports.on_configure {
            let ok = f
                .call(&mut store, (root, self.spec.config.len() as i32))
                .map_err(|e| trap("proxy_on_configure", e))?;
            if ok == 0 {
                return Err("proxy_on_configure returned false: the plugin refused its configuration (see its log lines above)".into());
            }
        }
        store.data_mut().phase = Phase::Other;
        let mut vm = Vm {
            store,
            exports: Arc::new(exports),
            failed: None,
        };
        self.after_call(&mut vm);
        Ok(vm)
    }

    /// Runs `f` as one callback on `ctx` with the CPU limit, and turns a trap
    /// into a replaced instance.
    fn call(
        self: &Arc<Self>,
        vm: &mut Vm,
        ctx: u32,
        phase: Phase,
        f: impl FnOnce(&mut Vm) -> wasmtime::Result<i32>,
    ) -> Called {
        vm.store
            .set_epoch_deadline(engine::ticks(self.spec.cpu_limit));
        let s = vm.store.data_mut();
        s.cpu_limit = self.spec.cpu_limit;
        s.cpu_check.reset();
        s.current = ctx;
        s.effective = None;
        s.phase = phase;
        // quanta reads the TSC where it is reliable: a callback is timed
        // for a fraction of what clock_gettime costs on a VM.
        let started = quanta::Instant::now();
        let result = f(vm);
        let took = started.elapsed();
        vm.store.data().callbacks.record(took);
        let s = vm.store.data_mut();
        s.effective = None;
        s.phase = Phase::Other;
        match result {
            Ok(action) => {
                self.after_call(vm);
                Called::Action(action)
            }
            Err(e) => {
                let message = trap_message(&e);
                self.host_trap(vm, &message);
                Called::Trapped(message)
            }
        }
    }

    /// A trap: count it, log it, and replace the instance (Envoy's reload policy).
    fn host_trap(self: &Arc<Self>, vm: &mut Vm, message: &str) {
        self.spec.health.trapped(message);
        self.host.plugin_trap(&self.spec.name);
        let (index, generation) = (vm.store.data().index, vm.store.data().generation);
        // Wake every request waiting on the old instance: their state is gone.
        for (_, st) in vm.store.data_mut().streams.drain() {
            drop(st.waiter);
        }
        if let Some(t) = vm.store.data_mut().tick_task.take() {
            t.abort();
        }
        // Free the trapped instance before starting its successor: its
        // pool slot is then the one the successor takes, warm, and a pool
        // with every slot in use still has one for it. An empty store holds
        // its place (its generation already the successor's) meanwhile, and
        // for good if the successor cannot start.
        let placeholder = self.bare_store(index, generation + 1);
        drop(std::mem::replace(&mut vm.store, placeholder));
        match self.start_instance(index, generation + 1) {
            Ok(fresh) => *vm = fresh,
            Err(e) => {
                tracing::error!(plugin.name = %self.spec.name, error = %e, "plugin instance could not be restarted");
                vm.failed = Some(e);
            }
        }
    }

    /// Applies what a callback asked for beyond its return value: timers, and
    /// resuming streams that wait.
    fn after_call(self: &Arc<Self>, vm: &mut Vm) {
        let s = vm.store.data_mut();
        if let Some(period) = s.tick_request.take() {
            if let Some(t) = s.tick_task.take() {
                t.abort();
            }
            if !period.is_zero() && vm.exports.on_tick.is_some() {
                let (weak, index, generation) = (Arc::downgrade(self), s.index, s.generation);
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    s.tick_task = Some(handle.spawn(async move {
                        let mut every = tokio::time::interval(period);
                        every.tick().await;
                        loop {
                            every.tick().await;
                            let Some(p) = weak.upgrade() else { return };
                            p.tick(index, generation);
                        }
                    }));
                }
            }
        }
        if !std::mem::take(&mut s.wake) {
            return;
        }
        for st in s.streams.values_mut() {
            if st.waiter.is_some()
                && (st.local.is_some() || st.continue_request || st.continue_response || st.closed)
                && let Some(w) = st.waiter.take()
            {
                let _ = w.send(());
            }
        }
    }

    fn tick(self: &Arc<Self>, index: usize, generation: u64) {
        let mut vm = self.lock(index);
        if vm.failed.is_some() || vm.store.data().generation != generation {
            return;
        }
        let ex = vm.exports.clone();
        let Some(f) = ex.on_tick.as_ref() else {
            return;
        };
        let root = vm.store.data().root;
        self.call(&mut vm, root, Phase::Other, |vm| {
            f.call(&mut vm.store, root as i32).map(|()| 0)
        });
    }

    /// Delivers a queue notification to instance `index` (from a task, never inside a hostcall).
    fn notify_queue(self: &Arc<Self>, index: usize, generation: u64, id: u32) {
        let me = self.clone();
        let run = move || {
            let mut vm = me.lock(index);
            if vm.failed.is_some() || vm.store.data().generation != generation {
                return;
            }
            let ex = vm.exports.clone();
            let Some(f) = ex.on_queue_ready.as_ref() else {
                return;
            };
            let root = vm.store.data().root;
            me.call(&mut vm, root, Phase::Other, |vm| {
                f.call(&mut vm.store, (root as i32, id as i32)).map(|()| 0)
            });
        };
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move { run() });
        }
    }

    /// Starts an outbound call; its answer is delivered to the root context later.
    fn start_call(
        self: &Arc<Self>,
        index: usize,
        generation: u64,
        token: u32,
        cluster: String,
        req: http::Request<crate::body::Body>,
        timeout: Option<Duration>,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            let response = as_envoy_delivers(&cluster, me.host.call(&cluster, req, timeout).await);
            me.deliver_call(index, generation, token, response);
        });
    }

    /// Takes quota for an http call to [`crate::quota::CALL_UPSTREAM`]: the
    /// take runs on its own task (on Redis it waits there, not in a
    /// callback), and its decision comes back as the call's response, a 200
    /// with the decision's JSON.
    pub(crate) fn start_quota_call(
        self: &Arc<Self>,
        index: usize,
        generation: u64,
        token: u32,
        take: crate::quota::TakeArgs,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            let decision = me
                .host
                .quota()
                .take_async(&take.key, take.cost, take.limit)
                .await;
            // The limit was checked when the call was made; a refusal still
            // answers rather than leave the plugin waiting.
            let (status, body) = match decision {
                Ok(d) => (StatusCode::OK, d.to_json()),
                Err(e) => (StatusCode::BAD_REQUEST, e.into_bytes()),
            };
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            let response = CallResponse {
                status: Some(status),
                headers,
                body: body.into(),
                trailers: http::HeaderMap::new(),
                failure: None,
            };
            me.deliver_call(index, generation, token, response);
        });
    }

    fn deliver_call(
        self: &Arc<Self>,
        index: usize,
        generation: u64,
        token: u32,
        response: CallResponse,
    ) {
        let mut vm = self.lock(index);
        if vm.failed.is_some() || vm.store.data().generation != generation {
            return;
        }
        let ex = vm.exports.clone();
        let Some(f) = ex.on_http_call_response.as_ref() else {
            return;
        };
        let root = vm.store.data().root;
        let (nh, nb, nt) = match response.status {
            Some(_) => (
                response.headers.len() + 1,
                response.body.len(),
                response.trailers.len(),
            ),
            None => (0, 0, 0),
        };
        vm.store.data_mut().call_response = Some(response);
        self.call(&mut vm, root, Phase::CallResponse, |vm| {
            f.call(
                &mut vm.store,
                (root as i32, token as i32, nh as i32, nb as i32, nt as i32),
            )
            .map(|()| 0)
        });
        vm.store.data_mut().call_response = None;
    }
}

impl PluginCore {
    /// Starts a unary gRPC call; its answer goes to the root context's
    /// `proxy_on_grpc_receive` (a message) or `proxy_on_grpc_close` (a failure).
    #[allow(clippy::too_many_arguments)] // the hostcall's own arguments
    pub(crate) fn start_grpc_call(
        self: &Arc<Self>,
        index: usize,
        generation: u64,
        token: u32,
        cluster: String,
        path: String,
        metadata: Vec<(Vec<u8>, Vec<u8>)>,
        message: Vec<u8>,
        timeout: Option<Duration>,
    ) {
        let mut framed = Vec::with_capacity(message.len() + 5);
        framed.push(0);
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(&message);
        let mut builder = http::Request::post(path)
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in &metadata {
            builder = builder.header(k.as_slice(), v.as_slice());
        }
        let Ok(req) = builder.body(crate::body::full(framed)) else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            let response = me.host.call(&cluster, req, timeout).await;
            let outcome = grpc_outcome(&response);
            me.deliver_grpc(index, generation, token, outcome);
        });
    }

    fn deliver_grpc(
        self: &Arc<Self>,
        index: usize,
        generation: u64,
        token: u32,
        outcome: Result<Bytes, (u32, String)>,
    ) {
        let mut vm = self.lock(index);
        if vm.failed.is_some() || vm.store.data().generation != generation {
            return;
        }
        let ex = vm.exports.clone();
        let root = vm.store.data().root;
        match outcome {
            Ok(message) => {
                let Some(f) = ex.on_grpc_receive.as_ref() else {
                    return;
                };
                let len = message.len();
                vm.store.data_mut().grpc_message = Some(message);
                self.call(&mut vm, root, Phase::CallResponse, |vm| {
                    f.call(&mut vm.store, (root as i32, token as i32, len as i32))
                        .map(|()| 0)
                });
                vm.store.data_mut().grpc_message = None;
            }
            Err((code, text)) => {
                let Some(f) = ex.on_grpc_close.as_ref() else {
                    return;
                };
                vm.store.data_mut().grpc_status = Some((code, text));
                self.call(&mut vm, root, Phase::CallResponse, |vm| {
                    f.call(&mut vm.store, (root as i32, token as i32, code as i32))
                        .map(|()| 0)
                });
                vm.store.data_mut().grpc_status = None;
            }
        }
    }
}

/// A call's outcome as Envoy hands it to `proxy_on_http_call_response`.
/// A call that got no response head comes back as the response a proxy
/// answers in its place (Envoy's router synthesizes one: 503, 502 or 504,
/// a text body saying why), so filters see a status to act on. A call
/// that failed after its head is delivered as (0, 0, 0), and
/// `proxy_get_status` then reports it as 11 "reset".
fn as_envoy_delivers(cluster: &str, mut r: CallResponse) -> CallResponse {
    if let Some(f) = &r.failure {
        tracing::debug!(cluster, cause = %f.cause, "a plugin's http call failed");
    }
    let Some(failure) = r.failure.take_if(|f| f.before_head.is_some()) else {
        return r;
    };
    let body = Bytes::from(format!(
        "call to cluster {cluster:?} failed: {}\n",
        failure.cause
    ));
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    headers.insert(http::header::CONTENT_LENGTH, body.len().into());
    CallResponse {
        status: failure.before_head,
        headers,
        body,
        trailers: http::HeaderMap::new(),
        failure: None,
    }
}

/// The first message of a unary gRPC answer, or its status code and message.
fn grpc_outcome(r: &CallResponse) -> Result<Bytes, (u32, String)> {
    if let Some(f) = &r.failure {
        return Err((14, f.cause.clone()));
    }
    let status = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
    };
    let code = status(&r.trailers)
        .or_else(|| status(&r.headers))
        .unwrap_or(if r.status == Some(StatusCode::OK) {
            0
        } else {
            2
        });
    if code != 0 {
        let text = r
            .trailers
            .get("grpc-message")
            .or_else(|| r.headers.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        return Err((code, text));
    }
    if r.body.len() < 5 {
        return Err((13, "the answer carries no gRPC message".into()));
    }
    let len = u32::from_be_bytes([r.body[1], r.body[2], r.body[3], r.body[4]]) as usize;
    r.body
        .get(5..5 + len)
        .map(Bytes::copy_from_slice)
        .ok_or((13, "truncated gRPC message".into()))
}

impl LoadedPlugin for ProxyWasmPlugin {
    fn abi(&self) -> String {
        format!("proxy-wasm {}", self.0.abi)
    }

    fn tier(&self) -> engine::Tier {
        self.0.tier
    }

    fn module_origin(&self) -> engine::ModuleOrigin {
        self.0.origin
    }

    fn memory_bytes(&self) -> u64 {
        (0..self.0.instances.len())
            .map(|i| {
                let mut vm = self.0.lock(i);
                match vm.store.data().memory {
                    Some(m) => m.data_size(&mut vm.store) as u64,
                    None => 0,
                }
            })
            .sum()
    }
}

impl Drop for PluginCore {
    fn drop(&mut self) {
        for vm in &mut self.instances {
            let vm = vm.get_mut().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = vm.store.data_mut().tick_task.take() {
                t.abort();
            }
        }
        // Freed on the reaper thread, not on the worker the last request ended on.
        crate::plugin::background::retire(std::mem::take(&mut self.instances));
        tracing::info!(plugin.name = %self.spec.name, file = %self.spec.file.display(), "plugin version released: its last request ended");
    }
}

use crate::abi::trap_message;
