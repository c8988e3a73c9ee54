//! Prints `printer saw PATH` to stdout for every request and, for paths
//! under `/err`, `printer complains about PATH` to stderr; tags the request
//! `x-printer: yes`; `/loop` never returns (the CPU limit stops it). It imports no host function that waits (no outbound
//! call, no quota), so weir runs its callbacks synchronously, with WASI's
//! synchronous bindings: this is the plugin that shows printing works there.

use weir_sdk::{Action, Filter, Request};

/// The filter.
pub struct Printer;

impl Filter for Printer {
    type Config = ();
    type State = ();

    fn new(_: ()) -> Result<Self, String> {
        Ok(Printer)
    }

    fn on_request_headers(&self, _: &mut (), req: &mut Request) -> Action {
        let path = req.path();
        println!("printer saw {path}");
        if path.starts_with("/err") {
            eprintln!("printer complains about {path}");
        }
        if path == "/loop" {
            #[allow(clippy::empty_loop)]
            loop {}
        }
        let _ = req.set_header("x-printer", "yes");
        Action::Continue
    }
}

weir_sdk::export_filter!(Printer);
