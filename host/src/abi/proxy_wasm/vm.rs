//! One instance of a proxy-wasm module and the host state beside it.
//!
//! An instance serves many requests, each as its own context id; a request's
//! contexts stay in the instance it started in. Requests lend their headers
//! and bodies to the instance only for the length of a callback (or while the
//! plugin holds the request paused), so hostcalls find them in [`StreamState`].

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use wasmtime::{
    Instance, Memory, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, TypedFunc,
};

use super::AbiVersion;
use super::PluginCore;
use crate::filter::{LocalResponse, LogInfo, StreamInfo};
use crate::plugin::host::{CallResponse, PluginMetric};

/// What the running callback may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Module initialisation and root creation.
    Init,
    /// `proxy_on_vm_start`: the VM configuration is readable.
    VmStart,
    /// `proxy_on_configure`: the plugin configuration is readable.
    Configure,
    /// Request headers.
    RequestHeaders,
    /// Request body.
    RequestBody,
    /// Response headers.
    ResponseHeaders,
    /// Response body.
    ResponseBody,
    /// The log phase: maps are read-only.
    Log,
    /// `proxy_on_http_call_response`: the call's response is readable.
    CallResponse,
    /// Timers, queues and teardown.
    Other,
}

/// A request's state inside the instance.
#[derive(Default)]
pub struct StreamState {
    /// Connection and timing facts.
    pub info: Option<Arc<StreamInfo>>,
    /// The request head, while lent to the instance (boxed, as it travels:
    /// lending it swaps a pointer).
    pub request: Option<crate::upstream::Head>,
    /// The response head, while lent to the instance.
    pub response: Option<http::response::Parts>,
    /// The body of the current body callback.
    pub body: Option<Bytes>,
    /// The trailers of the current trailers callback, or the ones the
    /// plugin adds in the last body callback of a message that had none.
    pub trailers: Option<http::HeaderMap>,
    /// The running body callback is the message's last (`end_of_stream`):
    /// trailers may be added.
    pub last_body: bool,
    /// A local response the plugin asked for.
    pub local: Option<LocalResponse>,
    /// The plugin resumed the request.
    pub continue_request: bool,
    /// The plugin resumed the response.
    pub continue_response: bool,
    /// The plugin reset the stream.
    pub closed: bool,
    /// Woken when the plugin resumes a paused stream.
    pub waiter: Option<tokio::sync::oneshot::Sender<()>>,
    /// Values set with `proxy_set_property`.
    pub props: HashMap<Vec<u8>, Vec<u8>>,
    /// The exchange's outcome, in the log phase.
    pub log: Option<LogInfo>,
    /// Body bytes received so far, request then response (`request.size`,
    /// `response.size`): what was passed on plus what the body callback holds.
    pub body_bytes: [u64; 2],
    /// Body bytes passed on, request then response.
    pub body_passed: [u64; 2],
}

/// How many header names a [`VmState`] keeps for reuse.
pub const HEADER_NAMES_KEPT: usize = 16;

/// Host state of one instance.
pub struct VmState {
    /// The plugin.
    pub plugin: Weak<PluginCore>,
    /// Plugin name, for logs.
    pub name: Arc<str>,
    /// ABI version of the module.
    pub abi: AbiVersion,
    /// Which instance of the plugin this is.
    pub index: usize,
    /// Bumped when the instance is replaced after a trap.
    pub generation: u64,
    /// Memory limits.
    pub limits: StoreLimits,
    /// The linear-memory limit, in bytes.
    pub memory_limit: u64,
    /// The module's memory.
    pub memory: Option<Memory>,
    /// The module's allocator.
    pub malloc: Option<TypedFunc<i32, i32>>,
    /// The root context id.
    pub root: u32,
    /// Next context id.
    pub next_id: u32,
    /// The context of the running callback.
    pub current: u32,
    /// Set by `proxy_set_effective_context` until the callback returns.
    pub effective: Option<u32>,
    /// What the running callback may touch.
    pub phase: Phase,
    /// Live stream contexts (small integer keys: a fast hash, no SipHash).
    /// Boxed: a stream's state is 464 bytes, and kept inline every
    /// insert and remove copied all of it, and the table spread hundreds of
    /// streams' states over cold memory (at 256 connections, each callback's
    /// probe then missed the cache).
    pub streams: rustc_hash::FxHashMap<u32, Box<StreamState>>,
    /// States of ended streams, cleared, for the next streams to reuse: the
    /// last one freed is the first reused, while it is still in the cache
    /// (the allocator hands out a freed block only after the rest of its
    /// page, so a fresh box was cold memory at hundreds of connections:
    /// seven cache lines written per filter per request).
    #[expect(
        clippy::vec_box,
        reason = "the boxes move between `streams` and here; reusing them is the point"
    )]
    pub spare_streams: Vec<Box<StreamState>>,
    /// A callback resumed, closed or answered a stream: paused streams are
    /// checked for waking after it returns (otherwise nothing to check).
    pub wake: bool,
    /// The response being delivered to `proxy_on_http_call_response`.
    pub call_response: Option<CallResponse>,
    /// The message being delivered to `proxy_on_grpc_receive`.
    pub grpc_message: Option<Bytes>,
    /// The status being delivered to `proxy_on_grpc_close`: code and message.
    pub grpc_status: Option<(u32, String)>,
    /// Next HTTP call token.
    pub next_token: u32,
    /// A tick period the plugin asked for during the callback.
    pub tick_request: Option<Duration>,
    /// The running timer.
    pub tick_task: Option<tokio::task::JoinHandle<()>>,
    /// Metrics the plugin defined, by id - 1.
    pub metrics: Vec<PluginMetric>,
    /// Values set with `proxy_set_property` on the root context.
    pub root_props: HashMap<Vec<u8>, Vec<u8>>,
    /// An empty request head, left in the caller's place while the real one
    /// is lent to a callback, and kept for the next: making one parses a URI.
    pub spare_request: Option<crate::upstream::Head>,
    /// Header names the plugin added or set lately, so that a filter adding
    /// the same header to every request parses and allocates its name once
    /// (at most [`HEADER_NAMES_KEPT`], oldest dropped first).
    pub header_names: Vec<http::HeaderName>,
    /// The running code's CPU limit, and whether it burns CPU once past it
    /// on the wall clock (see `engine::CpuCheck`).
    pub cpu_limit: Duration,
    pub cpu_check: crate::plugin::engine::CpuCheck,
    /// A header value on its way to the module (reused: no allocation per
    /// `proxy_get_header_map_value` once it has grown).
    pub scratch: Vec<u8>,
    /// This instance's part of the plugin's callback histogram (recorded
    /// under the instance's lock, without atomic read-modify-writes).
    pub callbacks: crate::plugin::health::CallbackShard,
}

/// Stream states kept for reuse per instance, at most.
const SPARE_STREAMS: usize = 64;

impl VmState {
    /// The token of a new outbound call (never 0, which the SDKs read as none).
    pub fn call_token(&mut self) -> u32 {
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1).max(1);
        token
    }

    /// Starts the state of stream context `id`, for the request `info`
    /// describes, in a spare box when there is one.
    pub fn open_stream(&mut self, id: u32, info: Arc<StreamInfo>) {
        let mut st = self.spare_streams.pop().unwrap_or_default();
        st.info = Some(info);
        self.streams.insert(id, st);
    }

    /// Ends stream context `id`: its state is cleared and kept for reuse
    /// (freed when [`SPARE_STREAMS`] are kept already).
    pub fn close_stream(&mut self, id: u32) {
        if let Some(mut st) = self.streams.remove(&id)
            && self.spare_streams.len() < SPARE_STREAMS
        {
            *st = StreamState::default();
            self.spare_streams.push(st);
        }
    }

    /// The context hostcalls act on: the effective one, else the current one.
    pub fn target(&self) -> u32 {
        self.effective.unwrap_or(self.current)
    }

    /// The stream the hostcall acts on, if it is a stream.
    pub fn stream(&mut self) -> Option<&mut StreamState> {
        let id = self.target();
        self.streams.get_mut(&id).map(|b| &mut **b)
    }
}

impl ResourceLimiter for VmState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        crate::abi::check_memory_growth(desired, self.memory_limit)?;
        self.limits.memory_growing(current, desired, maximum)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }
}

/// `proxy_on_http_call_response(root, token, headers, body_size, trailers)`.
pub type CallResponseFn = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// The exports weir calls, looked up once per instance.
pub struct Exports {
    pub on_context_create: Option<TypedFunc<(i32, i32), ()>>,
    pub on_vm_start: Option<TypedFunc<(i32, i32), i32>>,
    pub on_configure: Option<TypedFunc<(i32, i32), i32>>,
    pub on_request_headers: Option<HeadersFn>,
    pub on_request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub on_response_headers: Option<HeadersFn>,
    pub on_response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    pub on_request_trailers: Option<TypedFunc<(i32, i32), i32>>,
    pub on_response_trailers: Option<TypedFunc<(i32, i32), i32>>,
    pub on_log: Option<TypedFunc<i32, ()>>,
    pub on_done: Option<TypedFunc<i32, i32>>,
    pub on_delete: Option<TypedFunc<i32, ()>>,
    pub on_tick: Option<TypedFunc<i32, ()>>,
    pub on_http_call_response: Option<CallResponseFn>,
    pub on_queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    pub on_grpc_receive: Option<TypedFunc<(i32, i32, i32), ()>>,
    pub on_grpc_close: Option<TypedFunc<(i32, i32, i32), ()>>,
}

/// Header callbacks: two arguments in ABI 0.1.0, three (with end_of_stream) after.
#[derive(Clone)]
pub enum HeadersFn {
    /// `(context, headers)`.
    V1(TypedFunc<(i32, i32), i32>),
    /// `(context, headers, end_of_stream)`.
    V2(TypedFunc<(i32, i32, i32), i32>),
}

/// An instance and its store.
pub struct Vm {
    /// The store, holding the host state.
    pub store: Store<VmState>,
    /// The instance's exports (shared, so a callback can hold them while the store is borrowed).
    pub exports: Arc<Exports>,
    /// Set once the instance trapped: it is never entered again.
    pub failed: Option<String>,
}

/// Makes the host state for a new instance.
pub fn new_state(
    plugin: Weak<PluginCore>,
    name: Arc<str>,
    abi: AbiVersion,
    index: usize,
    generation: u64,
    memory_limit: u64,
    callbacks: crate::plugin::health::CallbackShard,
) -> VmState {
    VmState {
        plugin,
        name,
        abi,
        index,
        generation,
        memory_limit,
        limits: StoreLimitsBuilder::new()
            .memory_size(memory_limit as usize)
            .trap_on_grow_failure(true)
            .instances(1)
            .tables(4)
            .table_elements(100_000)
            .build(),
        memory: None,
        malloc: None,
        root: 1,
        next_id: 2,
        current: 0,
        effective: None,
        phase: Phase::Init,
        streams: Default::default(),
        spare_streams: Vec::new(),
        wake: false,
        call_response: None,
        grpc_message: None,
        grpc_status: None,
        next_token: 1,
        tick_request: None,
        tick_task: None,
        metrics: Vec::new(),
        root_props: HashMap::new(),
        spare_request: None,
        header_names: Vec::new(),
        scratch: Vec::new(),
        cpu_limit: Duration::ZERO,
        cpu_check: Default::default(),
        callbacks,
    }
}

/// Looks up the exports of `instance`; the error names an export of the wrong type.
pub fn exports(
    store: &mut Store<VmState>,
    instance: &Instance,
    abi: AbiVersion,
) -> Result<Exports, String> {
    macro_rules! get {
        ($name:literal) => {
            match instance.get_func(&mut *store, $name) {
                None => None,
                Some(f) => Some(
                    f.typed(&*store)
                        .map_err(|e| format!("export {} has the wrong signature: {e}", $name))?,
                ),
            }
        };
    }
    let headers = |store: &mut Store<VmState>, name: &str| -> Result<Option<HeadersFn>, String> {
        let Some(f) = instance.get_func(&mut *store, name) else {
            return Ok(None);
        };
        let typed = match abi {
            AbiVersion::V0_1_0 => f.typed(&*store).map(HeadersFn::V1),
            AbiVersion::V0_2_0 | AbiVersion::V0_2_1 => f.typed(&*store).map(HeadersFn::V2),
        };
        typed
            .map(Some)
            .map_err(|e| format!("export {name} has the wrong signature for ABI {abi}: {e}"))
    };
    Ok(Exports {
        on_context_create: get!("proxy_on_context_create"),
        on_vm_start: get!("proxy_on_vm_start"),
        on_configure: get!("proxy_on_configure"),
        on_request_headers: headers(store, "proxy_on_request_headers")?,
        on_request_body: get!("proxy_on_request_body"),
        on_response_headers: headers(store, "proxy_on_response_headers")?,
        on_response_body: get!("proxy_on_response_body"),
        on_request_trailers: get!("proxy_on_request_trailers"),
        on_response_trailers: get!("proxy_on_response_trailers"),
        on_log: get!("proxy_on_log"),
        on_done: get!("proxy_on_done"),
        on_delete: get!("proxy_on_delete"),
        on_tick: get!("proxy_on_tick"),
        on_http_call_response: get!("proxy_on_http_call_response"),
        on_queue_ready: get!("proxy_on_queue_ready"),
        on_grpc_receive: get!("proxy_on_grpc_receive"),
        on_grpc_close: get!("proxy_on_grpc_close"),
    })
}

/// Calls a header callback with the right arity.
pub fn call_headers(
    f: &HeadersFn,
    store: &mut Store<VmState>,
    ctx: u32,
    n: usize,
    eos: bool,
) -> wasmtime::Result<i32> {
    match f {
        HeadersFn::V1(f) => f.call(store, (ctx as i32, n as i32)),
        HeadersFn::V2(f) => f.call(store, (ctx as i32, n as i32, i32::from(eos))),
    }
}
