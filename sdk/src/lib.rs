//! Write weir filters in Rust.
//!
//! A filter is a type implementing [`Filter`]: built once from its typed
//! configuration, then called for every request with a per-request
//! [`Filter::State`]. [`export_filter!`] turns it into a `weir:filter@0.1.2`
//! component; `cargo build --release --target wasm32-wasip2` gives the `.wasm`
//! to drop into weir's plugins folder. [`testing::Harness`] runs the same
//! filter natively in unit tests, with no proxy and no Wasm.
//!
//! ```
//! use weir_sdk::{Action, Filter, Request, Response};
//!
//! /// Tags requests and responses.
//! pub struct Tag {
//!     value: String,
//! }
//!
//! #[derive(serde::Deserialize, weir_sdk::JsonSchema)]
//! #[schemars(crate = "weir_sdk::schemars")]
//! pub struct Config {
//!     value: String,
//! }
//!
//! impl Filter for Tag {
//!     type Config = Config;
//!     type State = ();
//!
//!     fn new(config: Config) -> Result<Self, String> {
//!         Ok(Tag { value: config.value })
//!     }
//!
//!     fn on_request_headers(&self, _: &mut (), req: &mut Request) -> Action {
//!         let _ = req.set_header("x-tag", &self.value);
//!         Action::Continue
//!     }
//!
//!     fn on_response_headers(&self, _: &mut (), resp: &mut Response) -> Action {
//!         let _ = resp.set_header("x-tagged", "yes");
//!         Action::Continue
//!     }
//! }
//!
//! weir_sdk::export_filter!(Tag);
//!
//! // In a unit test (natively; the harness is not built for wasm32):
//! # #[cfg(not(target_arch = "wasm32"))] {
//! let mut h = weir_sdk::testing::Harness::<Tag>::new(r#"{"value": "blue"}"#).unwrap();
//! let out = h.request(weir_sdk::testing::get("/"));
//! assert_eq!(out.header("x-tag"), Some("blue"));
//! # }
//! ```

#![deny(unsafe_code)]

mod host;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[doc(hidden)]
pub mod __private;

use serde::de::DeserializeOwned;

pub use host::{log, metrics, outbound, quota, shared};

/// An attribute in proxy-wasm's vocabulary (`route_name`, `response.code`,
/// `request.auth.principal`, `weir.plugin_times`, ...), readable in any
/// callback, `on_done` included (where the request and response views are
/// gone). None outside a callback, or when unset.
pub fn attribute(name: &str) -> Option<String> {
    host::attribute(name)
}
/// Derive [`JsonSchema`] on a filter's configuration type; the SDK exports
/// the schema, and weir checks a plugin's `[config]` against it at load.
pub use schemars::{self, JsonSchema};

/// What a filter decides after a request or response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Go on to the next filter.
    Continue,
    /// Hold the body until all of it arrived; the body callback then gets
    /// all of it at once, with `end_of_stream` set.
    StopAndBuffer,
    /// Answer now; later filters and the upstream are skipped.
    Respond(LocalResponse),
}

/// What a filter decides about a body chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyAction {
    /// Pass the chunk on (as the filter left it).
    Continue,
    /// Keep the bytes back: the next call sees them again, followed by the
    /// next chunk. At the end of the stream everything is passed on.
    Buffer,
    /// Answer now (only works while the response head has not gone out).
    Respond(LocalResponse),
}

/// A response made by the filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl LocalResponse {
    /// A response with `status` and no body.
    pub fn new(status: u16) -> LocalResponse {
        LocalResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> LocalResponse {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> LocalResponse {
        self.body = body.into();
        self
    }

    /// Answer with this response.
    pub fn into_action(self) -> Action {
        Action::Respond(self)
    }
}

/// A filter. Every callback has a default that lets the request through.
pub trait Filter: Sized + 'static {
    /// The configuration, from the plugin's `[config]` table (as JSON).
    /// Its JSON Schema (derived with `#[derive(JsonSchema)]`) is exported, so
    /// weir reports every mismatch with its field at load, on reload and in
    /// `weir validate`, before the plugin runs; a configuration that then
    /// does not deserialize refuses the plugin with serde's message.
    type Config: DeserializeOwned + JsonSchema;
    /// Per-request state: made with `Default` when a request starts,
    /// dropped when it ends. `()` when the filter needs none.
    type State: Default;

    /// Builds the filter from its configuration; an error refuses the plugin.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// The request head arrived; `req` reads and changes it.
    fn on_request_headers(&self, _state: &mut Self::State, _req: &mut Request) -> Action {
        __private::defaulted(__private::phase::REQUEST_HEADERS);
        Action::Continue
    }

    /// A request body chunk, which the filter may change in place.
    fn on_request_body(
        &self,
        _state: &mut Self::State,
        _chunk: &mut Vec<u8>,
        _end_of_stream: bool,
    ) -> BodyAction {
        __private::defaulted(__private::phase::REQUEST_BODY);
        BodyAction::Continue
    }

    /// The response head arrived; `resp` reads and changes it.
    fn on_response_headers(&self, _state: &mut Self::State, _resp: &mut Response) -> Action {
        __private::defaulted(__private::phase::RESPONSE_HEADERS);
        Action::Continue
    }

    /// A response body chunk, which the filter may change in place.
    fn on_response_body(
        &self,
        _state: &mut Self::State,
        _chunk: &mut Vec<u8>,
        _end_of_stream: bool,
    ) -> BodyAction {
        __private::defaulted(__private::phase::RESPONSE_BODY);
        BodyAction::Continue
    }

    /// The exchange is over; the state is dropped after this.
    fn on_done(&self, _state: &mut Self::State) {
        __private::defaulted(__private::phase::DONE);
    }
}

/// The request of the current callback.
pub struct Request {
    _private: (),
}

/// The response of the current callback.
pub struct Response {
    _private: (),
}

impl Request {
    pub(crate) fn current() -> Request {
        Request { _private: () }
    }

    /// A header's value (the first, if repeated). `:method`, `:path`,
    /// `:authority` and `:scheme` work too.
    pub fn header(&self, name: &str) -> Option<String> {
        host::get_header(host::Dir::Request, name)
    }

    /// Every header, pseudo-headers first.
    pub fn headers(&self) -> Vec<(String, String)> {
        host::get_headers(host::Dir::Request)
    }

    /// Replaces a header. Setting `:path` or `:authority` changes the route
    /// weir picks. Returns the host's refusal, if any (an invalid name or value).
    pub fn set_header(&mut self, name: &str, value: &str) -> Result<(), String> {
        host::set_header(host::Dir::Request, name, Some(value))
    }

    /// Adds a value to a header.
    pub fn add_header(&mut self, name: &str, value: &str) -> Result<(), String> {
        host::add_header(host::Dir::Request, name, value)
    }

    /// Removes a header.
    pub fn remove_header(&mut self, name: &str) {
        let _ = host::set_header(host::Dir::Request, name, None);
    }

    /// The path and query (`:path`).
    pub fn path(&self) -> String {
        self.header(":path").unwrap_or_else(|| "/".into())
    }

    /// The method (`:method`).
    pub fn method(&self) -> String {
        self.header(":method").unwrap_or_default()
    }

    /// An attribute in proxy-wasm's vocabulary, such as `source.address`.
    pub fn attribute(&self, name: &str) -> Option<String> {
        host::attribute(name)
    }

    /// Sets an attribute for the rest of this request: the plugins after this
    /// one (of either ABI) and the access log read it. Authentication plugins
    /// publish `request.auth.principal` and `request.auth.claims` this way.
    /// Names weir computes (`request.path`, `source.address`, ...) are refused.
    pub fn set_attribute(&mut self, name: &str, value: &str) -> Result<(), String> {
        host::set_attribute(name, value)
    }
}

impl Response {
    pub(crate) fn current() -> Response {
        Response { _private: () }
    }

    /// The status.
    pub fn status(&self) -> u16 {
        host::get_header(host::Dir::Response, ":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Changes the status.
    pub fn set_status(&mut self, status: u16) -> Result<(), String> {
        host::set_header(host::Dir::Response, ":status", Some(&status.to_string()))
    }

    /// A header's value (the first, if repeated).
    pub fn header(&self, name: &str) -> Option<String> {
        host::get_header(host::Dir::Response, name)
    }

    /// Every header, `:status` first.
    pub fn headers(&self) -> Vec<(String, String)> {
        host::get_headers(host::Dir::Response)
    }

    /// Replaces a header.
    pub fn set_header(&mut self, name: &str, value: &str) -> Result<(), String> {
        host::set_header(host::Dir::Response, name, Some(value))
    }

    /// Adds a value to a header.
    pub fn add_header(&mut self, name: &str, value: &str) -> Result<(), String> {
        host::add_header(host::Dir::Response, name, value)
    }

    /// Removes a header.
    pub fn remove_header(&mut self, name: &str) {
        let _ = host::set_header(host::Dir::Response, name, None);
    }
}

/// Turns a [`Filter`] into the plugin's exports. Use once per plugin crate.
#[macro_export]
macro_rules! export_filter {
    ($filter:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        type __WeirFilter = $filter;

        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        mod __weir_export {
            use super::__WeirFilter;
            use $crate::__private::bindings::exports::weir::filter::filter::Guest;
            use $crate::__private::bindings::weir::filter::types as t;

            struct Export;

            impl Guest for Export {
                fn configure(config: Vec<u8>) -> Result<(), String> {
                    $crate::__private::configure::<__WeirFilter>(&config)
                }
                fn config_schema() -> Option<String> {
                    $crate::__private::config_schema::<__WeirFilter>()
                }
                fn on_request_headers(id: u64, eos: bool) -> t::Action {
                    $crate::__private::wit_action($crate::__private::request_headers::<__WeirFilter>(id, eos))
                }
                fn on_request_body(id: u64, chunk: Vec<u8>, eos: bool) -> (t::BodyAction, Vec<u8>) {
                    $crate::__private::wit_body($crate::__private::body::<__WeirFilter>(id, chunk, eos, true))
                }
                fn on_response_headers(id: u64, eos: bool) -> t::Action {
                    $crate::__private::wit_action($crate::__private::response_headers::<__WeirFilter>(id, eos))
                }
                fn on_response_body(id: u64, chunk: Vec<u8>, eos: bool) -> (t::BodyAction, Vec<u8>) {
                    $crate::__private::wit_body($crate::__private::body::<__WeirFilter>(id, chunk, eos, false))
                }
                fn on_done(id: u64) {
                    $crate::__private::done::<__WeirFilter>(id)
                }
            }

            $crate::__private::bindings::export!(Export with_types_in $crate::__private::bindings);
        }
    };
}
