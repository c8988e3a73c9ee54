//! Plugin ABIs: thin adapters between a guest's calling convention and the
//! host API in [`crate::plugin::host`]. They never use each other.

pub mod component;
pub mod proxy_wasm;

/// A connection attribute's value, for each ABI to encode its own way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnValue {
    /// A boolean (`connection.mtls`).
    Bool(bool),
    /// A string.
    Text(String),
}

/// The TLS and identity attributes of a connection, in Envoy's vocabulary
/// (`connection.mtls`, `connection.uri_san_peer_certificate`, ...) plus
/// Istio's `source.principal` and `destination.principal` (the SPIFFE IDs of
/// the peer and of weir). `path` is the attribute's segments. `None` when
/// the attribute is not one of these, or has no value on this connection.
pub fn connection_attribute(info: &crate::filter::StreamInfo, path: &[&str]) -> Option<ConnValue> {
    let session = info.tls_session.as_deref();
    let peer = session.and_then(|s| s.peer.as_ref());
    let local = session.and_then(|s| s.local.as_deref());
    let text = |s: Option<&str>| s.map(|s| ConnValue::Text(s.to_string()));
    match path {
        ["connection", "mtls"] => Some(ConnValue::Bool(session.is_some_and(|s| s.mtls()))),
        ["connection", "tls_version"] => text(session.map(|s| s.version)),
        ["connection", "requested_server_name"] => text(session.and_then(|s| s.sni.as_deref())),
        ["connection", "uri_san_peer_certificate"] => {
            text(peer.and_then(|p| p.uri_sans.first().map(String::as_str)))
        }
        ["connection", "dns_san_peer_certificate"] => {
            text(peer.and_then(|p| p.dns_sans.first().map(String::as_str)))
        }
        ["connection", "subject_peer_certificate"] => text(peer.map(|p| p.subject.as_str())),
        ["connection", "sha256_peer_certificate_digest"] => text(peer.map(|p| p.sha256.as_str())),
        ["connection", "uri_san_local_certificate"] => {
            text(local.and_then(|p| p.uri_sans.first().map(String::as_str)))
        }
        ["connection", "dns_san_local_certificate"] => {
            text(local.and_then(|p| p.dns_sans.first().map(String::as_str)))
        }
        ["connection", "subject_local_certificate"] => text(local.map(|p| p.subject.as_str())),
        ["source", "principal"] => text(peer.and_then(|p| p.spiffe.as_deref())),
        ["destination", "principal"] => text(local.and_then(|p| p.spiffe.as_deref())),
        _ => None,
    }
}

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

/// The instance a request starting on this thread uses, out of `n` (one
/// per worker): requests of one worker thread share its instance.
///
/// Each thread takes the next number the first time it asks and keeps it,
/// so `n` worker threads get `n` different instances (hashing thread ids
/// could put two workers on one instance and leave another idle), and a
/// stream pays one thread-local read instead of a hash and an `Arc` clone
/// of the current thread's handle.
pub fn worker_index(n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static NUMBER: usize = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    NUMBER.with(|k| *k % n)
}

/// What a request gets when plugin `name` failed on it: skipped (open) or
/// 503 naming the plugin and the cause (closed).
pub fn failure_action(
    policy: crate::config::FailurePolicy,
    name: &str,
    message: &str,
) -> crate::filter::Action {
    match policy {
        crate::config::FailurePolicy::Open => crate::filter::Action::Continue,
        crate::config::FailurePolicy::Closed => {
            crate::filter::Action::Respond(crate::filter::LocalResponse {
                status: http::StatusCode::SERVICE_UNAVAILABLE,
                headers: vec![(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; charset=utf-8"),
                )],
                body: bytes::Bytes::from(format!("plugin {name:?} failed: {message}\n")),
                by: name.to_string(),
            })
        }
    }
}

/// Refuses linear-memory growth past a plugin's `memory_limit`, naming both.
pub fn check_memory_growth(desired: usize, limit: u64) -> wasmtime::Result<()> {
    if desired as u64 > limit {
        wasmtime::bail!(
            "memory limit exceeded: the plugin asked for {desired} bytes of linear memory; its memory_limit is {limit} bytes"
        );
    }
    Ok(())
}

/// A trap as the operator should read it.
pub fn trap_message(e: &wasmtime::Error) -> String {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::Interrupt => "CPU time limit per callback exceeded".to_string(),
            wasmtime::Trap::UnreachableCodeReached => {
                "unreachable executed (a panic in the plugin)".to_string()
            }
            wasmtime::Trap::MemoryOutOfBounds => "out-of-bounds memory access".to_string(),
            other => other.to_string(),
        };
    }
    if let Some(limit) = e
        .chain()
        .map(|c| c.to_string())
        .find(|m| m.starts_with("memory limit exceeded"))
    {
        return limit;
    }
    let text = format!("{e:#}");
    if text.contains("forcing a memory growth failure") {
        return "memory limit exceeded".to_string();
    }
    text.lines().next().unwrap_or("trap").to_string()
}

/// An empty request head, left in place while a plugin holds the real one.
pub fn empty_request() -> http::request::Parts {
    http::Request::new(()).into_parts().0
}

/// An empty response head, left in place while a plugin holds the real one.
pub fn empty_response() -> http::response::Parts {
    http::Response::new(()).into_parts().0
}

#[cfg(test)]
mod tests {
    use super::worker_index;

    #[test]
    fn worker_threads_get_distinct_instances_and_keep_theirs() {
        // Four threads, one after another (nothing else in this test binary
        // asks for an index of more than one instance): four different ones.
        let mut seen: Vec<usize> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    let first = worker_index(4);
                    assert_eq!(worker_index(4), first, "a thread keeps its instance");
                    first
                })
                .join()
                .unwrap()
            })
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2, 3]);
        assert_eq!(worker_index(1), 0);
    }
}
