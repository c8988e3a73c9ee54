//! Properties (Envoy's attribute vocabulary) and their encodings: strings as
//! raw bytes, integers as 8 little-endian bytes, booleans as one byte,
//! timestamps as nanoseconds, maps in the header map encoding.

use super::pairs;
use super::vm::VmState;

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

/// The value of a property, encoded as Envoy encodes it; `None` when unknown.
pub fn get(state: &mut VmState, raw_path: &[u8]) -> Option<Vec<u8>> {
    let path = segments(raw_path);
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    let plugin = state.plugin.upgrade();
    let spec = plugin.as_ref().map(|p| &p.spec);
    match p.as_slice() {
        ["plugin_name"] => return spec.map(|s| s.name.as_bytes().to_vec()),
        ["plugin_root_id"] => {
            return Some(
                spec.map(|s| s.root_id.as_bytes().to_vec())
                    .unwrap_or_default(),
            );
        }
        ["plugin_vm_id"] => return spec.map(|s| s.vm_id.as_bytes().to_vec()),
        _ => {}
    }
    let custom_key = raw_path.strip_suffix(&[0]).unwrap_or(raw_path).to_vec();
    let stream_id = state.target();
    let Some(stream) = state.streams.get(&stream_id) else {
        return state.root_props.get(&custom_key).cloned();
    };
    if let Some(v) = stream.props.get(&custom_key) {
        return Some(v.clone());
    }
    let info = stream.info.as_ref();
    // The head itself while it is lent to the plugin (its own changes
    // show), else the request as the chain's filters left it.
    let live;
    let facts = match stream.request.as_deref() {
        Some(head) => {
            live = RequestFacts::of(head, info.is_some_and(|i| i.tls));
            Some(&live)
        }
        None => info.and_then(|i| i.request.get()),
    };
    let log = stream.log.as_ref();
    let string = |s: &str| Some(s.as_bytes().to_vec());
    match p.as_slice() {
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
        ["request", "headers"] => stream
            .request
            .as_ref()
            .map(|r| pairs::encode_headers(&r.headers)),
        ["request", "headers", name] => {
            stream.request.as_ref().and_then(|r| join(&r.headers, name))
        }
        ["request", "useragent"] => stream
            .request
            .as_ref()
            .and_then(|r| join(&r.headers, "user-agent")),
        ["request", "referer"] => stream
            .request
            .as_ref()
            .and_then(|r| join(&r.headers, "referer")),
        ["response", "code"] => stream
            .response
            .as_ref()
            .map(|r| r.status.as_u16())
            .or(log.map(|l| l.status))
            .map(|c| int(i64::from(c))),
        ["response", "code_details"] => log.map(|_| b"via_upstream".to_vec()),
        ["response", "headers"] => stream
            .response
            .as_ref()
            .map(|r| pairs::encode_headers(&r.headers)),
        ["response", "headers", name] => stream
            .response
            .as_ref()
            .and_then(|r| join(&r.headers, name)),
        ["source", "address"] => info.map(|i| i.peer.to_string().into_bytes()),
        ["source", "port"] => info.map(|i| int(i64::from(i.peer.port()))),
        ["destination", "address"] => info.map(|i| i.local.to_string().into_bytes()),
        ["destination", "port"] => info.map(|i| int(i64::from(i.local.port()))),
        ["connection" | "source" | "destination", _]
            if let Some(i) = info
                && let Some(v) = crate::abi::connection_attribute(i, p.as_slice()) =>
        {
            Some(match v {
                crate::abi::ConnValue::Bool(b) => vec![u8::from(b)],
                crate::abi::ConnValue::Text(t) => t.into_bytes(),
            })
        }
        ["connection", "tls"] => info.map(|i| vec![u8::from(i.tls)]),
        ["route_name"] | ["xds", "route_name"] => log
            .and_then(|l| l.route.as_deref())
            .or_else(|| info.and_then(|i| i.route.as_deref()))
            .map(|r| r.as_bytes().to_vec()),
        ["cluster_name"] | ["xds", "cluster_name"] => log
            .and_then(|l| l.cluster.as_deref())
            .map(|c| c.as_bytes().to_vec()),
        _ => info.and_then(|i| i.attributes.get(&path.join("."))),
    }
}

fn join(headers: &http::HeaderMap, name: &str) -> Option<Vec<u8>> {
    let values: Vec<&[u8]> = headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
    (!values.is_empty()).then(|| values.join(&b", "[..]))
}
