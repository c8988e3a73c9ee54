//! Misbehaves by request path: `/panic` panics, `/loop` never returns,
//! `/grow` asks for far more memory than any plugin limit, `/print` writes to
//! stdout, `/attributes` answers 200 with the attributes its `x-attributes`
//! header names (comma-separated), one `name=value` per line; anything else
//! gets `x-misbehave: no`. `/call/REST` makes an outbound call of `/REST` to
//! the cluster its `x-call-cluster` header names (default `app`), with the
//! timeout in `x-call-timeout-ms`, and answers 200 with the reply's status in
//! `x-call-status` and its body, or 502 with the error. A request with
//! `x-set-attribute: name=value` sets that attribute first (400 with the
//! host's refusal if it is refused).

use weir_sdk::{Action, Filter, LocalResponse, Request};

/// The filter.
pub struct Misbehave;

impl Filter for Misbehave {
    type Config = ();
    type State = ();

    fn new(_: ()) -> Result<Self, String> {
        Ok(Misbehave)
    }

    fn on_request_headers(&self, _: &mut (), req: &mut Request) -> Action {
        if let Some(kv) = req.header("x-set-attribute")
            && let Some((name, value)) = kv.split_once('=')
            && let Err(e) = req.set_attribute(name, value)
        {
            return LocalResponse::new(400).body(format!("{e}\n")).into_action();
        }
        if let Some(rest) = req.path().strip_prefix("/call") {
            let cluster = req.header("x-call-cluster").unwrap_or_else(|| "app".into());
            let timeout = req
                .header("x-call-timeout-ms")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            return match weir_sdk::outbound::Call::get(&cluster, rest)
                .header("x-called-by", "misbehave")
                .timeout_ms(timeout)
                .send()
            {
                Ok(reply) => LocalResponse::new(200)
                    .header("x-call-status", &reply.status.to_string())
                    .body(reply.body)
                    .into_action(),
                Err(e) => LocalResponse::new(502).body(format!("{e}\n")).into_action(),
            };
        }
        match req.path().as_str() {
            "/panic" => panic!("misbehave panics on purpose"),
            "/print" => println!("a component writing to stdout"),
            "/attributes" => {
                let names = req.header("x-attributes").unwrap_or_default();
                let mut body = String::new();
                for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let value = req.attribute(name).unwrap_or_else(|| "<none>".into());
                    body.push_str(&format!("{name}={value}\n"));
                }
                return LocalResponse::new(200).body(body).into_action();
            }
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
