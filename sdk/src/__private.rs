//! What [`crate::export_filter!`] and the test harness call: one runtime per
//! plugin instance holding the filter and each request's state. Not API.

use std::any::Any;
use std::cell::RefCell;
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

/// The request-headers phase of stream `id`.
pub fn request_headers<F: Filter>(id: u64, _eos: bool) -> Action {
    with::<F, _>(|rt| {
        let state = rt.streams.entry(id).or_default();
        rt.filter.on_request_headers(state, &mut Request::current())
    })
    .unwrap_or_else(unconfigured)
}

/// The response-headers phase of stream `id`.
pub fn response_headers<F: Filter>(id: u64, _eos: bool) -> Action {
    with::<F, _>(|rt| {
        let state = rt.streams.entry(id).or_default();
        rt.filter
            .on_response_headers(state, &mut Response::current())
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
    let action = with::<F, _>(|rt| {
        let state = rt.streams.entry(id).or_default();
        if request {
            rt.filter.on_request_body(state, &mut chunk, eos)
        } else {
            rt.filter.on_response_body(state, &mut chunk, eos)
        }
    })
    .unwrap_or(BodyAction::Continue);
    (action, chunk)
}

/// Stream `id` is over.
pub fn done<F: Filter>(id: u64) {
    with::<F, _>(|rt| {
        if let Some(mut state) = rt.streams.remove(&id) {
            rt.filter.on_done(&mut state);
        }
    });
}

/// Resets the runtime (the harness, between filters).
#[cfg(not(target_arch = "wasm32"))]
pub fn reset() {
    RUNTIME.with(|r| *r.borrow_mut() = None);
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
