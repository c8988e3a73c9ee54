//! One request's side of a component plugin: the instance it holds, the
//! head, body and done callbacks, and the phases the plugin declared unused.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use tokio::sync::OwnedMutexGuard;

use crate::config::FailurePolicy;
use crate::filter::{
    Action, BodyAction, BodyFilter, FilterFuture, LocalResponse, LogInfo, StreamFilter, StreamInfo,
};
use crate::plugin::PluginSpec;

use super::{Callback, ComponentCore, Current, Instance, Outcome, Skip, wait, wit};

/// One request's view of a component plugin.
pub(super) struct ComponentStream {
    core: Arc<ComponentCore>,
    index: usize,
    id: u64,
    info: Arc<StreamInfo>,
    failed: bool,
    /// Whether the stream has taken an instance (its first callback ran).
    started: bool,
    /// Whether the chain reached the plugin (a head phase came, called or
    /// skipped): on-done is for streams the plugin saw.
    reached: bool,
}

impl ComponentStream {
    /// A new request's view of `core`: it will take the instance of the
    /// worker it starts on.
    pub(super) fn new(core: Arc<ComponentCore>, info: &Arc<StreamInfo>) -> ComponentStream {
        ComponentStream {
            index: crate::abi::worker_index(core.workers),
            id: core.next_stream.fetch_add(1, Ordering::Relaxed),
            core,
            info: info.clone(),
            failed: false,
            started: false,
            reached: false,
        }
    }

    fn failure(&mut self, message: &str) -> Action {
        self.failed = true;
        crate::abi::failure_action(self.core.spec.failure, &self.core.spec.name, message)
    }

    /// The stream's instance, or the action to take instead. A stream's
    /// first callback takes its worker's instance, or another idle one when
    /// that one is waiting for an outbound call; later callbacks keep it.
    async fn enter(&mut self) -> Result<OwnedMutexGuard<Instance>, Action> {
        if self.failed {
            return Err(Action::Continue);
        }
        let core = self.core.clone();
        let mut held = None;
        if !self.started {
            if let Some(reason) = core.spec.health.quarantine_reason() {
                return Err(self.failure(&reason));
            }
            if let Some((i, g)) = core.idle_instance(self.index).await {
                self.index = i;
                held = Some(g);
            }
        }
        self.started = true;
        let mut inst = match held {
            Some(g) => g,
            None => core.lock(self.index).await,
        };
        if inst.in_call {
            // The request that last ran it went away mid-call.
            Box::pin(core.replace(&mut inst)).await;
        }
        match inst.failed.clone() {
            Some(e) => {
                drop(inst);
                Err(self.failure(&e))
            }
            None => Ok(inst),
        }
    }

    /// Runs a head callback with `head` current, putting back what the plugin changed.
    async fn head_callback(&mut self, mut head: Head<'_>, eos: bool) -> Action {
        let phase = match head {
            Head::Request(_) => Skip::REQUEST_HEADERS,
            Head::Response(_) => Skip::RESPONSE_HEADERS,
        };
        self.reached = true;
        if self.core.skips(phase) {
            return Action::Continue;
        }
        let mut inst = match self.enter().await {
            Ok(i) => i,
            Err(a) => return a,
        };
        let core = self.core.clone();
        let (current, callback) = match &mut head {
            Head::Request(h) => (
                Current {
                    request: Some(std::mem::replace(*h, crate::abi::empty_request())),
                    ..Current::default()
                },
                Callback::RequestHeaders(eos),
            ),
            Head::Response(h) => (
                Current {
                    response: Some(std::mem::replace(*h, crate::abi::empty_response())),
                    ..Current::default()
                },
                Callback::ResponseHeaders(eos),
            ),
        };
        // Put the head back even if this future is dropped mid-call.
        struct Restore<'h> {
            head: Head<'h>,
            inst: OwnedMutexGuard<Instance>,
        }
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                let back = std::mem::take(&mut self.inst.store.data_mut().current);
                match &mut self.head {
                    Head::Request(h) => {
                        if let Some(p) = back.request {
                            **h = p;
                        }
                    }
                    Head::Response(h) => {
                        if let Some(p) = back.response {
                            **h = p;
                        }
                    }
                }
            }
        }
        inst.store.data_mut().current = Current {
            info: Some(self.info.clone()),
            ..current
        };
        let mut guard = Restore { head, inst };
        let result = core.invoke(&mut guard.inst, self.id, callback, true).await;
        drop(guard);
        match result {
            Ok(Outcome::Action(a)) => action(a, &core.spec.name),
            Ok(_) => Action::Continue,
            Err(m) => self.failure(&m),
        }
    }

    /// A whole body (after stop-and-buffer) through the body callback.
    async fn whole_body(&mut self, dir: wit::Direction, body: &mut Bytes, eos: bool) -> Action {
        if self.core.skips(Skip::body(dir)) {
            return Action::Continue;
        }
        let mut inst = match self.enter().await {
            Ok(i) => i,
            Err(a) => return a,
        };
        let core = self.core.clone();
        let result = call_body(
            &core,
            &mut inst,
            dir,
            self.id,
            self.info.clone(),
            body,
            eos,
            true,
        )
        .await;
        drop(inst);
        match result {
            Ok(wit::BodyAction::Respond(r)) => local(r, &core.spec.name),
            Ok(_) => Action::Continue,
            Err(m) => self.failure(&m),
        }
    }
}

/// The head a head callback works on.
enum Head<'h> {
    Request(&'h mut http::request::Parts),
    Response(&'h mut http::response::Parts),
}

fn local(r: wit::LocalResponse, by: &str) -> Action {
    Action::Respond(local_response(r, by))
}

fn local_response(r: wit::LocalResponse, by: &str) -> LocalResponse {
    let headers = r
        .headers
        .into_iter()
        .filter_map(|h| {
            Some((
                HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                HeaderValue::from_str(&h.value).ok()?,
            ))
        })
        .collect();
    LocalResponse {
        status: StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        headers,
        body: Bytes::from(r.body),
        by: by.to_string(),
    }
}

fn action(a: wit::Action, by: &str) -> Action {
    match a {
        wit::Action::Continue => Action::Continue,
        wit::Action::StopAndBuffer => Action::StopAndBuffer,
        wit::Action::Respond(r) => local(r, by),
    }
}

impl StreamFilter for ComponentStream {
    fn on_request_headers<'a>(
        &'a mut self,
        head: &'a mut crate::upstream::Head,
        eos: bool,
    ) -> FilterFuture<'a> {
        FilterFuture::wait(self.head_callback(Head::Request(head), eos))
    }

    fn on_request_body<'a>(&'a mut self, body: &'a mut Bytes, eos: bool) -> FilterFuture<'a> {
        FilterFuture::wait(self.whole_body(wit::Direction::Request, body, eos))
    }

    fn on_response_headers<'a>(
        &'a mut self,
        head: &'a mut http::response::Parts,
        eos: bool,
    ) -> FilterFuture<'a> {
        FilterFuture::wait(self.head_callback(Head::Response(head), eos))
    }

    fn on_response_body<'a>(&'a mut self, body: &'a mut Bytes, eos: bool) -> FilterFuture<'a> {
        FilterFuture::wait(self.whole_body(wit::Direction::Response, body, eos))
    }

    fn request_body_filter(&mut self) -> Option<Box<dyn BodyFilter>> {
        (!self.failed && !self.core.skips(Skip::REQUEST_BODY)).then(|| {
            Box::new(ComponentBody {
                core: self.core.clone(),
                index: self.index,
                id: self.id,
                dir: wit::Direction::Request,
                info: self.info.clone(),
            }) as Box<dyn BodyFilter>
        })
    }

    fn response_body_filter(&mut self) -> Option<Box<dyn BodyFilter>> {
        (!self.failed && !self.core.skips(Skip::RESPONSE_BODY)).then(|| {
            Box::new(ComponentBody {
                core: self.core.clone(),
                index: self.index,
                id: self.id,
                dir: wit::Direction::Response,
                info: self.info.clone(),
            }) as Box<dyn BodyFilter>
        })
    }

    fn on_log(&mut self, log: &LogInfo) {
        if !self.reached || self.core.skips(Skip::DONE) {
            return;
        }
        let core = self.core.clone();
        let (id, index, info, log) = (self.id, self.index, self.info.clone(), log.clone());
        let done = async move |mut inst: OwnedMutexGuard<Instance>| {
            if inst.failed.is_some() || inst.in_call {
                return;
            }
            // on-done reads the exchange's outcome and attributes (the decision log's among them).
            inst.store.data_mut().current = Current {
                info: Some(info),
                log: Some(log),
                ..Current::default()
            };
            let _ = core.invoke(&mut inst, id, Callback::Done, false).await;
            inst.store.data_mut().current = Current::default();
        };
        match self.core.slot(index).try_lock_owned() {
            Ok(inst) => wait(done(inst)),
            // The instance is waiting for another request's outbound call:
            // on-done runs once it is free, without holding up this one.
            Err(_) => match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    let core = self.core.clone();
                    h.spawn(async move { done(core.lock(index).await).await });
                }
                Err(_) => wait(done(self.core.lock_now(index))),
            },
        }
    }
}

/// Calls a body callback with `body`, replacing it with what the plugin returned.
#[allow(clippy::too_many_arguments)]
async fn call_body(
    core: &ComponentCore,
    inst: &mut Instance,
    dir: wit::Direction,
    id: u64,
    info: Arc<StreamInfo>,
    body: &mut Bytes,
    eos: bool,
    may_wait: bool,
) -> Result<wit::BodyAction, String> {
    inst.store.data_mut().current = Current {
        info: Some(info),
        ..Current::default()
    };
    let mut chunk = body.to_vec();
    let r = core
        .invoke(inst, id, Callback::Body(dir, &mut chunk, eos), may_wait)
        .await;
    inst.store.data_mut().current = Current::default();
    let Outcome::Body(a, bytes) = r? else {
        return Ok(wit::BodyAction::Continue);
    };
    if !matches!(a, wit::BodyAction::Buffer) {
        *body = Bytes::from(bytes);
    }
    Ok(a)
}

/// A failure in a streaming body: skipped (open) or the stream ends (closed).
fn body_failure(spec: &PluginSpec, message: &str) -> Result<BodyAction, String> {
    match spec.failure {
        FailurePolicy::Open => Ok(BodyAction::Continue),
        FailurePolicy::Closed => Err(format!("plugin {:?} failed: {message}", spec.name)),
    }
}

/// A component's view of a streaming body.
struct ComponentBody {
    core: Arc<ComponentCore>,
    index: usize,
    id: u64,
    dir: wit::Direction,
    info: Arc<StreamInfo>,
}

impl BodyFilter for ComponentBody {
    fn on_data(&mut self, data: &mut Bytes, eos: bool) -> Result<BodyAction, String> {
        if self.core.skips(Skip::body(self.dir)) {
            return Ok(BodyAction::Continue);
        }
        let core = self.core.clone();
        let mut inst = core.lock_now(self.index);
        if let Some(e) = inst.failed.clone() {
            return body_failure(&core.spec, &e);
        }
        let result = wait(call_body(
            &core,
            &mut inst,
            self.dir,
            self.id,
            self.info.clone(),
            data,
            eos,
            false,
        ));
        match result {
            Ok(wit::BodyAction::Continue) => Ok(BodyAction::Continue),
            Ok(wit::BodyAction::Buffer) => Ok(BodyAction::Buffer),
            Ok(wit::BodyAction::Respond(r)) => {
                Ok(BodyAction::Respond(local_response(r, &core.spec.name)))
            }
            Err(m) => body_failure(&core.spec, &m),
        }
    }
}
