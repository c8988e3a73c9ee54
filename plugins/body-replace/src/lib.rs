//! A streaming body transform written with the SDK: replaces every `from`
//! with `to` in response bodies, chunk by chunk. It never holds a body whole:
//! only the last `from.len() - 1` bytes of a chunk wait for the next one, in
//! case a match straddles the two.
//!
//! ```toml
//! # plugins/30-body-replace.toml
//! [config]
//! from = "colour"
//! to = "color"
//! ```

use serde::Deserialize;
use weir_sdk::{Action, BodyAction, Filter, Response};

/// The configuration.
#[derive(Debug, Deserialize, weir_sdk::JsonSchema)]
#[schemars(crate = "weir_sdk::schemars")]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The text to find (not empty).
    pub from: String,
    /// What to put instead.
    pub to: String,
}

/// The filter.
pub struct BodyReplace {
    from: Vec<u8>,
    to: Vec<u8>,
}

/// Per response: the bytes held back from the last chunk.
#[derive(Default)]
pub struct Tail(Vec<u8>);

impl Filter for BodyReplace {
    type Config = Config;
    type State = Tail;

    fn new(config: Config) -> Result<Self, String> {
        if config.from.is_empty() {
            return Err("from: must not be empty".into());
        }
        Ok(BodyReplace {
            from: config.from.into_bytes(),
            to: config.to.into_bytes(),
        })
    }

    fn on_response_headers(&self, _: &mut Tail, resp: &mut Response) -> Action {
        // The length may change: the body goes out chunked instead.
        resp.remove_header("content-length");
        Action::Continue
    }

    fn on_response_body(&self, tail: &mut Tail, chunk: &mut Vec<u8>, end: bool) -> BodyAction {
        let mut data = std::mem::take(&mut tail.0);
        data.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(data.len());
        let mut i = 0;
        while i < data.len() {
            if data[i..].starts_with(&self.from) {
                out.extend_from_slice(&self.to);
                i += self.from.len();
            } else if !end && data.len() - i < self.from.len() && self.from.starts_with(&data[i..])
            {
                // A possible match cut by the chunk boundary: wait for more.
                tail.0 = data[i..].to_vec();
                break;
            } else {
                out.push(data[i]);
                i += 1;
            }
        }
        *chunk = out;
        BodyAction::Continue
    }
}

weir_sdk::export_filter!(BodyReplace);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::{Harness, get, response};

    const CONFIG: &str = r#"{"from": "colour", "to": "color"}"#;

    #[test]
    fn replaces_in_a_whole_body_and_drops_content_length() {
        let mut h = Harness::<BodyReplace>::new(CONFIG).unwrap();
        let resp = response(200, "the colour of the colours").header("content-length", "25");
        let (_, out) = h.exchange(get("/"), resp);
        let out = out.unwrap();
        assert_eq!(out.body, b"the color of the colors");
        assert_eq!(out.header("content-length"), None);
    }

    #[test]
    fn matches_across_chunk_boundaries_are_found() {
        let mut h = Harness::<BodyReplace>::new(CONFIG).unwrap();
        let out = h.response_body_stream(&[b"a col", b"our and a co", b"lo", b"ur!", b" colo"]);
        assert_eq!(out, b"a color and a color! colo");
    }

    #[test]
    fn an_empty_pattern_is_refused() {
        let err = Harness::<BodyReplace>::new(r#"{"from": "", "to": "x"}"#)
            .err()
            .unwrap();
        assert_eq!(err, "from: must not be empty");
    }
}
