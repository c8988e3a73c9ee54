//! Properties (Envoy's attribute vocabulary) and their encodings: strings as
//! raw bytes, integers as 8 little-endian bytes, booleans as one byte,
//! timestamps as nanoseconds, maps in the header map encoding.

use super::pairs;
use super::status::Status;
use super::vm::{Phase, StreamState, VmState};

use crate::filter::RequestFacts;

fn int(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// Splits a property path: segments joined by NUL (a trailing NUL is allowed);
/// a single dotted segment (`request.path`) is split on dots too.
pub fn segments(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    let parts: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    if parts.len() == 1 && parts[0].contains('.') {
        return parts[0].split('.').map(str::to_string).collect();
    }
    parts
}

/// The value of a property, encoded as Envoy encodes it: NotFound when
/// unknown or not known yet, SerializationFailure for a whole message
/// (`request`, `response`, ...), which Envoy cannot give as one value either.
/// The attributes weir computes come before values set with
/// `proxy_set_property` under the same name, as in Envoy.
pub fn get(state: &mut VmState, raw_path: &[u8]) -> Result<Vec<u8>, Status> {
    let path = segments(raw_path);
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    let plugin = state.plugin.upgrade();
    let spec = plugin.as_ref().map(|p| &p.spec);
    match p.as_slice() {
        ["plugin_name"] => {
            return spec
                .map(|s| s.name.as_bytes().to_vec())
                .ok_or(Status::NotFound);
        }
        ["plugin_root_id"] => {
            return Ok(spec
                .map(|s| s.root_id.as_bytes().to_vec())
                .unwrap_or_default());
        }
        ["plugin_vm_id"] => {
            return spec
                .map(|s| s.vm_id.as_bytes().to_vec())
                .ok_or(Status::NotFound);
        }
        [""] | ["request" | "response" | "source" | "destination" | "connection" | "upstream"] => {
            return Err(Status::SerializationFailure);
        }
        _ => {}
    }
    let custom_key = raw_path.strip_suffix(&[0]).unwrap_or(raw_path).to_vec();
    let stream_id = state.target();
    let Some(stream) = state.streams.get(&stream_id) else {
        return state
            .root_props
            .get(&custom_key)
            .cloned()
            .ok_or(Status::NotFound);
    };
    let info = stream.info.as_ref();
    builtin(stream, state.phase, &p)
        .or_else(|| stream.props.get(&custom_key).cloned())
        .or_else(|| info.and_then(|i| i.attributes.get(&path.join("."))))
        .ok_or(Status::NotFound)
}

/// An attribute weir computes for a stream.
fn builtin(stream: &StreamState, phase: Phase, p: &[&str]) -> Option<Vec<u8>> {
    let info = stream.info.as_ref();
    let snapshot = info.map(|i| &*i.request);
    // The head itself while it is lent to the plugin (its own changes
    // show), else the request as the chain's filters left it.
    let live;
    let facts = match stream.request.as_deref() {
        Some(head) => {
            live = RequestFacts::of(head, info.is_some_and(|i| i.tls));
            Some(&live)
        }
        None => snapshot.and_then(|s| s.get()),
    };
    let request_headers = stream
        .request
        .as_ref()
        .map(|r| &r.headers)
        .or_else(|| snapshot.and_then(|s| s.headers()));
    let log = stream.log.as_ref();
    let response_headers = stream
        .response
        .as_ref()
        .map(|r| &r.headers)
        .or_else(|| log.and_then(|l| l.response_headers.as_deref()));
    let status = stream
        .response
        .as_ref()
        .map(|r| r.status.as_u16())
        .or(log.map(|l| l.status));
    let string = |s: &str| Some(s.as_bytes().to_vec());
    match p {
        ["request", "path"] => facts.and_then(|f| string(f.path())),
        ["request", "url_path"] => facts.and_then(|f| string(f.uri.path())),
        ["request", "query"] => facts.and_then(|f| string(f.uri.query().unwrap_or(""))),
        ["request", "host"] => facts.map(RequestFacts::host),
        ["request", "scheme"] => facts.and_then(|f| string(f.scheme())),
        ["request", "method"] => facts.and_then(|f| string(f.method.as_str())),
        ["request", "protocol"] => facts.and_then(|f| string(f.protocol())),
        ["request", "id"] => facts.map(|f| {
            f.id.as_ref()
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default()
        }),
        ["request", "time"] => info.map(|i| {
            int(i
                .start
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64))
        }),
        ["request", "duration"] => log
            .and(info)
            .map(|i| int(i.start.elapsed().map_or(0, |d| d.as_nanos() as i64))),
        ["request", "size"] => Some(int(stream.body_bytes[0] as i64)),
        ["request", "total_size"] => facts.zip(request_headers).map(|(f, h)| {
            let pseudo = [
                (":method", f.method.as_str().len()),
                (":path", f.path().len()),
                (":authority", f.host().len()),
                (":scheme", f.scheme().len()),
            ];
            let pseudo: usize = pseudo.iter().map(|(k, v)| k.len() + v).sum();
            int((pseudo + header_bytes(h)) as i64 + stream.body_bytes[0] as i64)
        }),
        ["request", "headers"] => request_headers.map(pairs::encode_headers),
        ["request", "trailers"] => trailers(stream, phase, false),
        ["response", "trailers"] => trailers(stream, phase, true),
        ["request", "headers", name] => request_headers.and_then(|h| join(h, name)),
        ["request", "useragent"] => request_headers.and_then(|h| join(h, "user-agent")),
        ["request", "referer"] => request_headers.and_then(|h| join(h, "referer")),
        ["response", "code"] => status.map(|c| int(i64::from(c))),
        ["response", "code_details"] => status
            .and(snapshot)
            .and_then(|s| {
                s.details()
                    .map(|d| d.replace(char::is_whitespace, "_"))
                    .or_else(|| s.upstream().map(|_| "via_upstream".to_string()))
            })
            .map(String::into_bytes),
        ["response", "flags"] => status.map(|_| int(0)),
        ["response", "grpc_status"] => status.map(|c| {
            let code = response_headers
                .and_then(|h| h.get("grpc-status"))
                .and_then(|v| std::str::from_utf8(v.as_bytes()).ok()?.parse().ok())
                .unwrap_or_else(|| http_to_grpc(c));
            int(code)
        }),
        ["response", "size"] => status.map(|_| int(stream.body_bytes[1] as i64)),
        ["response", "total_size"] => status.zip(response_headers).map(|(c, h)| {
            let head = ":status".len() + c.to_string().len() + header_bytes(h);
            int(head as i64 + stream.body_bytes[1] as i64)
        }),
        ["response", "headers"] => response_headers.map(pairs::encode_headers),
        ["response", "headers", name] => response_headers.and_then(|h| join(h, name)),
        ["upstream", "address"] => snapshot
            .and_then(|s| s.upstream())
            .map(|a| a.to_string().into_bytes()),
        ["upstream", "port"] => snapshot
            .and_then(|s| s.upstream())
            .map(|a| int(i64::from(a.port()))),
        ["source", "address"] => info.map(|i| i.peer.to_string().into_bytes()),
        ["source", "port"] => info.map(|i| int(i64::from(i.peer.port()))),
        ["destination", "address"] => info.map(|i| i.local.to_string().into_bytes()),
        ["destination", "port"] => info.map(|i| int(i64::from(i.local.port()))),
        ["connection", "id"] => info.map(|i| int(i.connection_id as i64)),
        ["connection" | "source" | "destination", _]
            if let Some(i) = info
                && let Some(v) = crate::abi::connection_attribute(i, p) =>
        {
            Some(match v {
                crate::abi::ConnValue::Bool(b) => vec![u8::from(b)],
                crate::abi::ConnValue::Text(t) => t.into_bytes(),
            })
        }
        // A plain-text connection asked for no server name: Envoy gives "".
        ["connection", "requested_server_name"] => info.map(|_| Vec::new()),
        ["connection", "tls"] => info.map(|i| vec![u8::from(i.tls)]),
        ["route_name"] | ["xds", "route_name"] => log
            .and_then(|l| l.route.as_deref())
            .or_else(|| info.and_then(|i| i.route.as_deref()))
            .map(|r| r.as_bytes().to_vec()),
        ["cluster_name"] | ["xds", "cluster_name"] => log
            .and_then(|l| l.cluster.as_deref())
            .or_else(|| info.and_then(|i| i.cluster.as_deref()))
            .map(|c| c.as_bytes().to_vec()),
        _ => None,
    }
}

/// The bytes of a header map as Envoy counts them: names and values.
fn header_bytes(h: &http::HeaderMap) -> usize {
    h.iter().map(|(k, v)| k.as_str().len() + v.len()).sum()
}

/// The gRPC status Envoy gives a response that carries none, from its HTTP
/// status (gRPC's HTTP-to-gRPC status mapping).
pub fn http_to_grpc(status: u16) -> i64 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// A message's trailers (the response's when `response`): in its own
/// trailers callback the map the plugin holds, later the trailers that went
/// on; in the log phase an empty map for a message that had none, as Envoy
/// answers.
fn trailers(stream: &StreamState, phase: Phase, response: bool) -> Option<Vec<u8>> {
    let own = if response {
        Phase::ResponseBody
    } else {
        Phase::RequestBody
    };
    if phase == own
        && let Some(t) = stream.trailers.as_ref()
    {
        return Some(pairs::encode_headers(t));
    }
    let kept = stream
        .info
        .as_ref()
        .and_then(|i| i.request.trailers(response));
    match kept {
        Some(t) => Some(pairs::encode_headers(t)),
        // A count of zero: Envoy's four bytes, not the (0, 0) of an empty
        // value (the Rust SDK reads that as no property at all).
        None if phase == Phase::Log => Some(vec![0; 4]),
        None => None,
    }
}

/// Every value of `name`, joined with "," as Envoy joins them.
fn join(headers: &http::HeaderMap, name: &str) -> Option<Vec<u8>> {
    let values: Vec<&[u8]> = headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
    (!values.is_empty()).then(|| values.join(&b","[..]))
}
