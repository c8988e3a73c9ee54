//! Plugin ABIs: thin adapters between a guest's calling convention and the
//! host API in [`crate::plugin::host`]. They never use each other.

pub mod component;
pub mod proxy_wasm;

/// Sets a request pseudo-header (`pseudo` without its colon: `path`,
/// `authority`, `method`, `scheme`), as both ABIs allow. The error says what
/// was refused.
pub fn set_request_pseudo(
    p: &mut http::request::Parts,
    pseudo: &str,
    value: &str,
) -> Result<(), String> {
    match pseudo {
        "path" => {
            let pq: http::uri::PathAndQuery = value
                .parse()
                .map_err(|_| format!(":path {value:?} is not a valid path"))?;
            let mut parts = p.uri.clone().into_parts();
            parts.path_and_query = Some(pq);
            p.uri = http::Uri::from_parts(parts).map_err(|e| format!(":path {value:?}: {e}"))?;
        }
        "authority" => {
            let authority: http::uri::Authority = value
                .parse()
                .map_err(|_| format!(":authority {value:?} is not a valid authority"))?;
            if p.uri.authority().is_some() {
                let mut parts = p.uri.clone().into_parts();
                parts.authority = Some(authority);
                p.uri = http::Uri::from_parts(parts)
                    .map_err(|e| format!(":authority {value:?}: {e}"))?;
            }
            p.headers.insert(
                http::header::HOST,
                http::HeaderValue::from_str(value)
                    .map_err(|_| format!(":authority {value:?} is not a valid header value"))?,
            );
        }
        "method" => {
            p.method = http::Method::from_bytes(value.as_bytes())
                .map_err(|_| format!(":method {value:?} is not a valid method"))?
        }
        "scheme" => {}
        other => return Err(format!("requests have no pseudo-header :{other}")),
    }
    Ok(())
}

/// An empty request head, left in place while a plugin holds the real one.
pub fn empty_request() -> http::request::Parts {
    http::Request::new(()).into_parts().0
}

/// An empty response head, left in place while a plugin holds the real one.
pub fn empty_response() -> http::response::Parts {
    http::Response::new(()).into_parts().0
}
