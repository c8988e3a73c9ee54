//! The load bench's header filter: reads `:path` and adds `x-pw-path-bytes`
//! with its length. Built with the proxy-wasm Rust SDK as for Envoy, so the
//! same .wasm runs in both proxies; every other callback is the SDK's default.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Header) });
}}

struct Header;

impl Context for Header {}

impl HttpContext for Header {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        self.add_http_request_header("x-pw-path-bytes", &path.len().to_string());
        Action::Continue
    }
}
