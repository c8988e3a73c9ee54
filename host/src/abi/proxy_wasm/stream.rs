//! One request's side of a proxy-wasm plugin: its stream context in the
//! instance of the worker it started on, the header, body and trailer
//! callbacks in Envoy's order, pausing and resuming, and the log phase
//! (`on_log`, `on_done`, `on_delete`) that frees the context.

use std::sync::{Arc, MutexGuard};

use bytes::Bytes;
use http::StatusCode;

use super::vm::{self, Phase, StreamState, Vm};
use super::{Called, PluginCore, ProxyWasmPlugin};
use crate::abi::{empty_request, empty_response};
use crate::config::FailurePolicy;
use crate::filter::{
    Action, FilterFuture, HttpFilter, LocalResponse, LogInfo, StreamFilter, StreamInfo, decided,
};

impl HttpFilter for ProxyWasmPlugin {
    fn name(&self) -> &str {
        &self.0.spec.name
    }

    fn new_stream(&self, info: &Arc<StreamInfo>) -> Box<dyn StreamFilter> {
        // `request.*` in the phases after the request head.
        info.request.want();
        Box::new(ProxyWasmStream {
            core: self.0.clone(),
            side: Side {
                index: crate::abi::worker_index(self.0.instances.len()),
                ctx: None,
                info: info.clone(),
                failed: false,
                exports: None,
            },
        })
    }
}

/// One request's view of a plugin.
struct ProxyWasmStream {
    core: Arc<PluginCore>,
    side: Side,
}

/// A stream's own state, apart from the plugin it belongs to, so that a
/// callback can hold the plugin's instance locked and change this at once
/// (no `Arc` clone per callback).
struct Side {
    index: usize,
    /// (context id, instance generation), once created.
    ctx: Option<(u32, u64)>,
    info: Arc<StreamInfo>,
    /// The plugin failed on this request (open policy: it is skipped from now on).
    failed: bool,
    /// The exports of the instance the context lives in, taken when the
    /// context is made: every later callback of the stream calls through
    /// these (one `Arc` clone per stream, not one per callback). A replaced
    /// instance has a new generation, and the stream then no longer calls it.
    exports: Option<Arc<vm::Exports>>,
}

/// Which way a callback looks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

impl Direction {
    /// The phase a body or trailers callback of this direction runs in.
    fn body_phase(self) -> Phase {
        match self {
            Direction::Request => Phase::RequestBody,
            Direction::Response => Phase::ResponseBody,
        }
    }
}

impl Side {
    /// The stream's context in `vm`, created (Envoy creates it lazily) if needed;
    /// `None` when the instance was replaced since the stream started.
    fn context(&mut self, core: &Arc<PluginCore>, vm: &mut Vm) -> Option<u32> {
        let generation = vm.store.data().generation;
        if let Some((id, g)) = self.ctx {
            return (g == generation && vm.store.data().streams.contains_key(&id)).then_some(id);
        }
        let s = vm.store.data_mut();
        let id = s.next_id;
        s.next_id += 1;
        s.open_stream(id, self.info.clone());
        let root = s.root;
        self.ctx = Some((id, generation));
        // The Arc of all exports, not the TypedFunc: cloning a TypedFunc
        // clones its registered type, which costs more (criterion).
        let ex = self.exports.insert(vm.exports.clone());
        if let Some(f) = ex.on_context_create.as_ref()
            && let Called::Trapped(_) = core.call(vm, id, Phase::Other, |vm| {
                f.call(&mut vm.store, (id as i32, root as i32)).map(|()| 0)
            })
        {
            return None;
        }
        Some(id)
    }

    fn failure(&mut self, core: &PluginCore, message: &str) -> Action {
        self.failed = true;
        crate::abi::failure_action(core.spec.failure, &core.spec.name, message)
    }

    /// Enters the instance for a callback that `has` says the module exports:
    /// the locked instance and the stream's context (the exports are then in
    /// `self.exports`), or the action to take instead (skip, or the failure
    /// policy).
    fn enter<'c>(
        &mut self,
        core: &'c Arc<PluginCore>,
        has: fn(&vm::Exports) -> bool,
    ) -> Result<(MutexGuard<'c, Vm>, u32), Action> {
        if self.failed {
            return Err(Action::Continue);
        }
        if self.ctx.is_none()
            && let Some(reason) = core.spec.health.quarantine_reason()
        {
            return Err(self.failure(core, &reason));
        }
        let mut vm = core.lock(self.index);
        if let Some(e) = vm.failed.clone() {
            drop(vm);
            return Err(self.failure(core, &e));
        }
        if !has(&vm.exports) {
            return Err(Action::Continue);
        }
        match self.context(core, &mut vm) {
            Some(ctx) => Ok((vm, ctx)),
            None => {
                drop(vm);
                Err(self.failure(core, "the plugin instance was restarted"))
            }
        }
    }

    /// After a callback: decide from the stream's state and the returned code.
    /// `Ok(action)` when decided, `Err(receiver)` when the plugin paused.
    fn settle(
        st: &mut StreamState,
        dir: Direction,
        code: i32,
    ) -> Result<Action, tokio::sync::oneshot::Receiver<()>> {
        if let Some(local) = st.local.take() {
            return Ok(Action::Respond(local));
        }
        if st.closed {
            return Ok(Action::Respond(LocalResponse {
                status: StatusCode::BAD_GATEWAY,
                headers: vec![],
                body: Bytes::from_static(b"stream closed by a plugin\n"),
                by: String::new(),
            }));
        }
        let resumed = match dir {
            Direction::Request => std::mem::take(&mut st.continue_request),
            Direction::Response => std::mem::take(&mut st.continue_response),
        };
        if code == 0 || resumed {
            return Ok(Action::Continue);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        st.waiter = Some(tx);
        Err(rx)
    }
}

macro_rules! with_stream {
    ($vm:expr, $ctx:expr) => {
        $vm.store
            .data_mut()
            .streams
            .get_mut(&$ctx)
            .expect("the stream's context exists while the instance lives")
    };
}

/// A proxy-wasm body callback, fed chunk by chunk as the body streams (as in
/// Envoy: PAUSE with end_of_stream unset keeps buffering, and the next call
/// sees everything buffered so far).
struct ProxyWasmBody {
    core: Arc<PluginCore>,
    /// The exports of the instance the stream's context lives in.
    exports: Arc<vm::Exports>,
    index: usize,
    ctx: u32,
    generation: u64,
    dir: Direction,
    /// Trailers the plugin added in the last body callback.
    added: Option<http::HeaderMap>,
}

impl crate::filter::BodyFilter for ProxyWasmBody {
    fn added_trailers(&mut self) -> Option<http::HeaderMap> {
        self.added.take()
    }

    fn on_trailers(
        &mut self,
        trailers: &mut http::HeaderMap,
    ) -> Result<Option<LocalResponse>, String> {
        self.trailers(trailers)
    }

    fn on_data(
        &mut self,
        data: &mut Bytes,
        eos: bool,
    ) -> Result<crate::filter::BodyAction, String> {
        let (core, ex) = (&self.core, &self.exports);
        let mut vm = core.lock(self.index);
        if self.gone(&vm) {
            return self
                .failed_earlier()
                .map(|()| crate::filter::BodyAction::Continue);
        }
        let f = match self.dir {
            Direction::Request => ex.on_request_body.as_ref(),
            Direction::Response => ex.on_response_body.as_ref(),
        };
        let Some(f) = f else {
            return Ok(crate::filter::BodyAction::Continue);
        };
        let (ctx, len) = (self.ctx, data.len());
        let dir = usize::from(self.dir == Direction::Response);
        let st = with_stream!(vm, ctx);
        st.body = Some(std::mem::take(data));
        st.body_bytes[dir] = st.body_passed[dir] + len as u64;
        st.last_body = eos;
        let phase = self.dir.body_phase();
        let code = match core.call(&mut vm, ctx, phase, |vm| {
            f.call(&mut vm.store, (ctx as i32, len as i32, i32::from(eos)))
        }) {
            Called::Action(c) => c,
            Called::Trapped(msg) => {
                return self
                    .by_policy(format_args!("failed: {msg}"))
                    .map(|()| crate::filter::BodyAction::Continue);
            }
        };
        let st = with_stream!(vm, ctx);
        if let Some(b) = st.body.take() {
            *data = b;
        }
        st.last_body = false;
        if let Some(t) = st.trailers.take().filter(|t| !t.is_empty()) {
            self.added = Some(t);
        }
        // As in Envoy: a local reply overrides the callback's return value.
        if let Some(local) = st.local.take() {
            return Ok(crate::filter::BodyAction::Respond(local));
        }
        Ok(if code == 0 {
            st.body_passed[dir] += len as u64;
            crate::filter::BodyAction::Continue
        } else {
            crate::filter::BodyAction::Buffer
        })
    }
}

impl ProxyWasmBody {
    /// Whether the stream's instance trapped or was replaced since it began.
    fn gone(&self, vm: &vm::Vm) -> bool {
        vm.failed.is_some()
            || vm.store.data().generation != self.generation
            || !vm.store.data().streams.contains_key(&self.ctx)
    }

    /// What the rest of a stream whose plugin failed gets: skipped (open)
    /// or ended (closed).
    fn failed_earlier(&self) -> Result<(), String> {
        self.by_policy("failed earlier in this stream")
    }

    /// The failure policy applied to a body callback that could not run:
    /// skipped (open), or the stream ended with "plugin NAME `what`" (closed).
    fn by_policy(&self, what: impl std::fmt::Display) -> Result<(), String> {
        match self.core.spec.failure {
            FailurePolicy::Open => Ok(()),
            FailurePolicy::Closed => Err(format!("plugin {:?} {what}", self.core.spec.name)),
        }
    }

    /// The trailers callback, with `trailers` readable and changeable as
    /// the trailers map of this direction.
    fn trailers(
        &mut self,
        trailers: &mut http::HeaderMap,
    ) -> Result<Option<LocalResponse>, String> {
        let (core, ex) = (&self.core, &self.exports);
        let mut vm = core.lock(self.index);
        if self.gone(&vm) {
            return self.failed_earlier().map(|()| None);
        }
        let f = match self.dir {
            Direction::Request => ex.on_request_trailers.as_ref(),
            Direction::Response => ex.on_response_trailers.as_ref(),
        };
        let Some(f) = f else {
            return Ok(None);
        };
        let (ctx, n) = (self.ctx, trailers.len());
        with_stream!(vm, ctx).trailers = Some(std::mem::take(trailers));
        let phase = self.dir.body_phase();
        let called = core.call(&mut vm, ctx, phase, |vm| {
            f.call(&mut vm.store, (ctx as i32, n as i32))
        });
        let st = with_stream!(vm, ctx);
        if let Some(t) = st.trailers.take() {
            *trailers = t;
        }
        if let Some(local) = st.local.take() {
            return Ok(Some(local));
        }
        match called {
            Called::Action(0) => Ok(None),
            Called::Action(_) => {
                // The body has all arrived: nothing is left to hold.
                tracing::debug!(plugin.name = %core.spec.name, "a trailers callback paused; the trailers go on");
                Ok(None)
            }
            Called::Trapped(msg) => self.by_policy(format_args!("failed: {msg}")).map(|()| None),
        }
    }
}

impl ProxyWasmStream {
    fn body_filter(&mut self, dir: Direction) -> Option<Box<dyn crate::filter::BodyFilter>> {
        if self.side.failed {
            return None;
        }
        let (ctx, generation) = self.side.ctx?;
        let exports = self.side.exports.as_ref()?;
        let exported = match dir {
            Direction::Request => {
                exports.on_request_body.is_some() || exports.on_request_trailers.is_some()
            }
            Direction::Response => {
                exports.on_response_body.is_some() || exports.on_response_trailers.is_some()
            }
        };
        exported.then(|| {
            Box::new(ProxyWasmBody {
                core: self.core.clone(),
                exports: exports.clone(),
                index: self.side.index,
                ctx,
                generation,
                dir,
                added: None,
            }) as Box<dyn crate::filter::BodyFilter>
        })
    }
}

impl StreamFilter for ProxyWasmStream {
    fn on_request_headers<'a>(
        &'a mut self,
        head: &'a mut crate::upstream::Head,
        eos: bool,
    ) -> FilterFuture<'a> {
        let core = &self.core;
        let (mut vm, ctx) = match self.side.enter(core, |e| e.on_request_headers.is_some()) {
            Ok(entered) => entered,
            Err(action) => return decided(action),
        };
        let ex = self.side.exports.as_deref().expect("set with the context");
        let f = ex.on_request_headers.as_ref().expect("checked by enter");
        let n = head.headers.len() + 4;
        {
            let s = vm.store.data_mut();
            let spare = s
                .spare_request
                .take()
                .unwrap_or_else(|| Box::new(empty_request()));
            let st = s
                .streams
                .get_mut(&ctx)
                .expect("the stream's context exists while the instance lives");
            st.request = Some(std::mem::replace(head, spare));
        }
        let called = core.call(&mut vm, ctx, Phase::RequestHeaders, |vm| {
            vm::call_headers(f, &mut vm.store, ctx, n, eos)
        });
        let code = match called {
            Called::Action(c) => c,
            Called::Trapped(msg) => {
                drop(vm);
                // The request head was lent to the trapped instance and is gone with it.
                return decided(self.side.failure(core, &msg));
            }
        };
        let st = with_stream!(vm, ctx);
        match Side::settle(st, Direction::Request, code) {
            Ok(action) => {
                if let Some(p) = st.request.take() {
                    let spare = std::mem::replace(head, p);
                    vm.store.data_mut().spare_request = Some(spare);
                }
                decided(action)
            }
            Err(rx) => {
                drop(vm);
                let side = &mut self.side;
                FilterFuture::wait(async move {
                    let _ = rx.await;
                    let mut vm = core.lock(side.index);
                    let Some(st) = side
                        .ctx
                        .filter(|(_, g)| *g == vm.store.data().generation)
                        .and_then(|(id, _)| vm.store.data_mut().streams.get_mut(&id))
                    else {
                        drop(vm);
                        return side.failure(
                            core,
                            "the plugin instance was restarted while the request waited",
                        );
                    };
                    if let Some(p) = st.request.take() {
                        *head = p;
                    }
                    st.continue_request = false;
                    if let Some(local) = st.local.take() {
                        return Action::Respond(local);
                    }
                    Action::Continue
                })
            }
        }
    }

    fn on_response_headers<'a>(
        &'a mut self,
        head: &'a mut http::response::Parts,
        eos: bool,
    ) -> FilterFuture<'a> {
        let core = &self.core;
        let (mut vm, ctx) = match self.side.enter(core, |e| e.on_response_headers.is_some()) {
            Ok(entered) => entered,
            Err(action) => return decided(action),
        };
        let ex = self.side.exports.as_deref().expect("set with the context");
        let f = ex.on_response_headers.as_ref().expect("checked by enter");
        let n = head.headers.len() + 1;
        with_stream!(vm, ctx).response = Some(std::mem::replace(head, empty_response()));
        let code = match core.call(&mut vm, ctx, Phase::ResponseHeaders, |vm| {
            vm::call_headers(f, &mut vm.store, ctx, n, eos)
        }) {
            Called::Action(c) => c,
            Called::Trapped(msg) => {
                drop(vm);
                return decided(self.side.failure(core, &msg));
            }
        };
        let st = with_stream!(vm, ctx);
        let back = st.response.take();
        let settled = Side::settle(st, Direction::Response, code);
        if let Some(p) = back {
            *head = p;
        }
        match settled {
            Ok(action) => decided(action),
            // Pausing a response head waits for the plugin to resume it; the head stays with weir meanwhile.
            Err(rx) => {
                drop(vm);
                let side = &self.side;
                FilterFuture::wait(async move {
                    let _ = rx.await;
                    let mut vm = core.lock(side.index);
                    match side
                        .ctx
                        .and_then(|(id, _)| vm.store.data_mut().streams.get_mut(&id))
                        .and_then(|st| st.local.take())
                    {
                        Some(local) => Action::Respond(local),
                        None => Action::Continue,
                    }
                })
            }
        }
    }

    fn request_body_filter(&mut self) -> Option<Box<dyn crate::filter::BodyFilter>> {
        self.body_filter(Direction::Request)
    }

    fn response_body_filter(&mut self) -> Option<Box<dyn crate::filter::BodyFilter>> {
        self.body_filter(Direction::Response)
    }

    fn on_log(&mut self, info: &LogInfo) {
        let (Some((ctx, generation)), Some(ex)) = (self.side.ctx, self.side.exports.as_deref())
        else {
            return;
        };
        let core = &self.core;
        let mut vm = core.lock(self.side.index);
        if vm.failed.is_some() || vm.store.data().generation != generation {
            return;
        }
        if let Some(st) = vm.store.data_mut().streams.get_mut(&ctx) {
            st.log = Some(info.clone());
            st.waiter = None;
        }
        // Envoy's order for HTTP streams: log, done, delete.
        if let Some(f) = ex.on_log.as_ref()
            && let Called::Trapped(_) = core.call(&mut vm, ctx, Phase::Log, |vm| {
                f.call(&mut vm.store, ctx as i32).map(|()| 0)
            })
        {
            return;
        }
        if let Some(f) = ex.on_done.as_ref()
            && let Called::Trapped(_) = core.call(&mut vm, ctx, Phase::Other, |vm| {
                f.call(&mut vm.store, ctx as i32)
            })
        {
            return;
        }
        if let Some(f) = ex.on_delete.as_ref()
            && let Called::Trapped(_) = core.call(&mut vm, ctx, Phase::Other, |vm| {
                f.call(&mut vm.store, ctx as i32).map(|()| 0)
            })
        {
            return;
        }
        vm.store.data_mut().close_stream(ctx);
    }
}

impl Drop for ProxyWasmStream {
    fn drop(&mut self) {
        // A request that ended without its log phase (client gone) still frees its context.
        if let Some((ctx, generation)) = self.side.ctx.take() {
            let mut vm = self.core.lock(self.side.index);
            if vm.store.data().generation == generation {
                vm.store.data_mut().close_stream(ctx);
            }
        }
    }
}
