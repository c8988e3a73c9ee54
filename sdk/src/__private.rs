//! What [`crate::export_filter!`] and the test harness call: one runtime per
//! plugin instance holding the filter and each request's state. Not API.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::{Action, BodyAction, Filter, Request, Response};

/// Bindings generated from weir's wit/filter.wit.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "weir_sdk::__private::bindings",
    });
}

/// Bits of the phases (`weir:filter/callbacks`' flags).
pub mod phase {
    /// on-request-headers
    pub const REQUEST_HEADERS: u8 = 1;
    /// on-request-body
    pub const REQUEST_BODY: u8 = 2;
    /// on-response-headers
    pub const RESPONSE_HEADERS: u8 = 4;
    /// on-response-body
    pub const RESPONSE_BODY: u8 = 8;
    /// on-done
    pub const DONE: u8 = 16;
}

thread_local! {
    /// Phases whose trait default ran (the filter does nothing there), and
    /// those declared to weir already.
    static DEFAULTED: Cell<u8> = const { Cell::new(0) };
    static DECLARED: Cell<u8> = const { Cell::new(0) };
}

/// Called by the `Filter` trait's default methods: the filter leaves this phase alone.
pub fn defaulted(bit: u8) {
    DEFAULTED.with(|d| d.set(d.get() | bit));
}

/// Whether `F`'s per-request state is nothing at all: then it is not kept
/// between callbacks (each gets a fresh `Default`, which is the same), and
/// on-done may be skipped when the filter leaves it to the default.
fn stateless<F: Filter>() -> bool {
    std::mem::size_of::<F::State>() == 0 && !std::mem::needs_drop::<F::State>()
}

/// Tells weir the phases newly found unused, once each.
fn declare<F: Filter>() {
    let mut unused = DEFAULTED.with(Cell::get);
    if !stateless::<F>() {
        // on-done drops the request's state: it must run.
        unused &= !phase::DONE;
    }
    let new = unused & !DECLARED.with(Cell::get);
    if new != 0 {
        DECLARED.with(|d| d.set(d.get() | new));
        crate::host::skip_phases(unused);
    }
}

/// What was declared so far (the harness's record of `callbacks.skip`).
#[cfg(not(target_arch = "wasm32"))]
pub fn record_declared(bits: u8) {
    SEEN_DECLARED.with(|d| d.set(d.get() | bits));
}

#[cfg(not(target_arch = "wasm32"))]
thread_local! {
    static SEEN_DECLARED: Cell<u8> = const { Cell::new(0) };
}

/// The phases declared unused so far (the harness's view).
#[cfg(not(target_arch = "wasm32"))]
pub fn declared() -> u8 {
    SEEN_DECLARED.with(Cell::get)
}

struct Runtime<F: Filter> {
    filter: F,
    streams: HashMap<u64, F::State>,
}

thread_local! {
    static RUNTIME: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

fn with<F: Filter, R>(f: impl FnOnce(&mut Runtime<F>) -> R) -> Option<R> {
    RUNTIME.with(|r| {
        let mut r = r.borrow_mut();
        let rt = r.as_mut()?.downcast_mut::<Runtime<F>>()?;
        Some(f(rt))
    })
}

/// Parses the configuration and builds the filter.
pub fn configure<F: Filter>(config: &[u8]) -> Result<(), String> {
    // A panic's message goes to weir's log (the plugin then traps and weir
    // fails only the request in flight), not to stderr.
    #[cfg(target_arch = "wasm32")]
    std::panic::set_hook(Box::new(|info| {
        crate::log::error(&format!("panic: {info}"))
    }));
    let text: &[u8] = if config.iter().all(|b| b.is_ascii_whitespace()) {
        b"{}"
    } else {
        config
    };
    let parsed: F::Config = match serde_json::from_slice(text) {
        Ok(c) => c,
        // A filter without settings may take `()`, which is JSON null.
        Err(first) => match serde_json::from_slice(b"null") {
            Ok(c) if text == b"{}" => c,
            _ => return Err(format!("invalid configuration: {first}")),
        },
    };
    let filter = F::new(parsed)?;
    DEFAULTED.with(|d| d.set(0));
    DECLARED.with(|d| d.set(0));
    RUNTIME.with(|r| {
        *r.borrow_mut() = Some(Box::new(Runtime {
            filter,
            streams: HashMap::new(),
        }))
    });
    Ok(())
}

/// The JSON Schema of the filter's configuration.
pub fn config_schema<F: Filter>() -> Option<String> {
    serde_json::to_string(&schemars::schema_for!(F::Config)).ok()
}

fn unconfigured() -> Action {
    Action::Respond(
        crate::LocalResponse::new(500).body("weir-sdk: the filter was called before configure\n"),
    )
}

/// Runs one phase of stream `id` on its state (a fresh one for stateless
/// filters; `None` before configure), then declares what the defaults left.
fn phase_of<F: Filter, R>(id: u64, f: impl FnOnce(&F, &mut F::State) -> R) -> Option<R> {
    let out = with::<F, _>(|rt| {
        if stateless::<F>() {
            f(&rt.filter, &mut F::State::default())
        } else {
            f(&rt.filter, rt.streams.entry(id).or_default())
        }
    });
    declare::<F>();
    out
}

/// The request-headers phase of stream `id`.
pub fn request_headers<F: Filter>(id: u64, _eos: bool) -> Action {
    phase_of::<F, _>(id, |f, state| {
        f.on_request_headers(state, &mut Request::current())
    })
    .unwrap_or_else(unconfigured)
}

/// The response-headers phase of stream `id`.
pub fn response_headers<F: Filter>(id: u64, _eos: bool) -> Action {
    phase_of::<F, _>(id, |f, state| {
        f.on_response_headers(state, &mut Response::current())
    })
    .unwrap_or_else(unconfigured)
}

/// A body chunk of stream `id`; returns the decision and the bytes to pass on.
pub fn body<F: Filter>(
    id: u64,
    mut chunk: Vec<u8>,
    eos: bool,
    request: bool,
) -> (BodyAction, Vec<u8>) {
    let action = phase_of::<F, _>(id, |f, state| {
        if request {
            f.on_request_body(state, &mut chunk, eos)
        } else {
            f.on_response_body(state, &mut chunk, eos)
        }
    })
    .unwrap_or(BodyAction::Continue);
    (action, chunk)
}

/// Stream `id` is over.
pub fn done<F: Filter>(id: u64) {
    with::<F, _>(|rt| {
        if stateless::<F>() {
            rt.filter.on_done(&mut F::State::default());
        } else if let Some(mut state) = rt.streams.remove(&id) {
            rt.filter.on_done(&mut state);
        }
    });
    declare::<F>();
}

/// Resets the runtime (the harness, between filters).
#[cfg(not(target_arch = "wasm32"))]
pub fn reset() {
    RUNTIME.with(|r| *r.borrow_mut() = None);
    SEEN_DECLARED.with(|d| d.set(0));
}

#[cfg(target_arch = "wasm32")]
fn wit_local(r: crate::LocalResponse) -> bindings::weir::filter::types::LocalResponse {
    bindings::weir::filter::types::LocalResponse {
        status: r.status,
        headers: r
            .headers
            .into_iter()
            .map(|(name, value)| bindings::weir::filter::types::Header { name, value })
            .collect(),
        body: r.body,
    }
}

/// An SDK action as the WIT type.
#[cfg(target_arch = "wasm32")]
pub fn wit_action(a: Action) -> bindings::weir::filter::types::Action {
    use bindings::weir::filter::types::Action as W;
    match a {
        Action::Continue => W::Continue,
        Action::StopAndBuffer => W::StopAndBuffer,
        Action::Respond(r) => W::Respond(wit_local(r)),
    }
}

/// An SDK body decision as the WIT type.
#[cfg(target_arch = "wasm32")]
pub fn wit_body(
    (a, bytes): (BodyAction, Vec<u8>),
) -> (bindings::weir::filter::types::BodyAction, Vec<u8>) {
    use bindings::weir::filter::types::BodyAction as W;
    let a = match a {
        BodyAction::Continue => W::Continue,
        BodyAction::Buffer => W::Buffer,
        BodyAction::Respond(r) => W::Respond(wit_local(r)),
    };
    (a, bytes)
}

#[cfg(test)]
mod tests {
    use super::phase;
    use crate::testing::{Harness, get, response};
    use crate::{Action, Filter, Request};

    /// Overrides only the request head; keeps no state.
    struct HeadOnly;
    impl Filter for HeadOnly {
        type Config = ();
        type State = ();
        fn new(_: ()) -> Result<Self, String> {
            Ok(HeadOnly)
        }
        fn on_request_headers(&self, _: &mut (), req: &mut Request) -> Action {
            let _ = req.set_header("x-seen", "1");
            Action::Continue
        }
    }

    /// Keeps per-request state and leaves on_done to the default.
    struct Stateful;
    impl Filter for Stateful {
        type Config = ();
        type State = Vec<u8>;
        fn new(_: ()) -> Result<Self, String> {
            Ok(Stateful)
        }
        fn on_request_headers(&self, s: &mut Vec<u8>, _: &mut Request) -> Action {
            s.push(1);
            Action::Continue
        }
    }

    #[test]
    fn phases_left_to_the_defaults_are_declared_unused_and_on_done_only_without_state() {
        let mut h = Harness::<HeadOnly>::new("").unwrap();
        assert_eq!(super::declared(), 0, "nothing before the first request");
        let (req, _) = h.exchange(get("/").header("x", "y"), response(200, "body"));
        assert_eq!(req.header("x-seen"), Some("1"));
        assert_eq!(
            super::declared(),
            phase::RESPONSE_HEADERS | phase::RESPONSE_BODY | phase::DONE,
            "request headers are the filter's own; request body never came"
        );

        let mut h = Harness::<Stateful>::new("").unwrap();
        assert_eq!(super::declared(), 0, "a new filter starts over");
        h.exchange(get("/"), response(200, ""));
        assert_eq!(
            super::declared(),
            phase::RESPONSE_HEADERS,
            "on-done frees the state: never declared"
        );
        h.request(get("/"));
        assert!(
            super::RUNTIME.with(|r| r
                .borrow()
                .as_ref()
                .and_then(|r| r.downcast_ref::<super::Runtime<Stateful>>())
                .is_some_and(|rt| rt.streams.is_empty())),
            "every request's state was dropped"
        );
    }
}
