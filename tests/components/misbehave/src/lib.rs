//! Misbehaves by request path: `/panic` panics, `/loop` never returns,
//! `/grow` asks for far more memory than any plugin limit, `/print` writes to
//! stdout; anything else
//! gets `x-misbehave: no`.

use weir_sdk::{Action, Filter, Request};

/// The filter.
pub struct Misbehave;

impl Filter for Misbehave {
    type Config = ();
    type State = ();

    fn new(_: ()) -> Result<Self, String> {
        Ok(Misbehave)
    }

    fn on_request_headers(&self, _: &mut (), req: &mut Request) -> Action {
        match req.path().as_str() {
            "/panic" => panic!("misbehave panics on purpose"),
            "/print" => println!("a component writing to stdout"),
            "/loop" =>
            {
                #[allow(clippy::empty_loop)]
                loop {}
            }
            "/grow" => {
                let bomb = std::hint::black_box(vec![7u8; 512 << 20]);
                let _ = req.set_header("x-bomb", &bomb.len().to_string());
            }
            _ => {
                let _ = req.set_header("x-misbehave", "no");
            }
        }
        Action::Continue
    }
}

weir_sdk::export_filter!(Misbehave);
