//! The built-in echo: answers with JSON describing the request as it arrived
//! after filtering, so a new user sees what weir and its plugins did to it.

use bytes::Bytes;
use http::{Response, header};
use serde_json::{Map, Value, json};

use crate::body::{self, Body};

/// The echo response for a request head and its (already collected) body.
pub fn respond(
    head: &http::request::Parts,
    body: &Bytes,
    route: &str,
    listener: &str,
    client: std::net::SocketAddr,
) -> Response<Body> {
    let mut headers = Map::new();
    for name in head.headers.keys() {
        let values: Vec<&str> = head
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("<binary>"))
            .collect();
        headers.insert(name.as_str().to_string(), Value::String(values.join(", ")));
    }
    let body_json = match std::str::from_utf8(body) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => Value::String(format!("<{} bytes of binary data>", body.len())),
    };
    let doc = json!({
        "method": head.method.as_str(),
        "path": head.uri.path(),
        "query": head.uri.query(),
        "version": format!("{:?}", head.version),
        "headers": headers,
        "body": body_json,
        "route": route,
        "listener": listener,
        "client": client.to_string(),
    });
    let mut text = serde_json::to_vec_pretty(&doc).expect("JSON values always serialize");
    text.push(b'\n');
    let mut resp = Response::new(body::full(text));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
