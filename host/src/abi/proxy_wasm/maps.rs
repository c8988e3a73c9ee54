//! Header maps as proxy-wasm sees them: pseudo-headers (`:method`, `:path`,
//! `:authority`, `:scheme`, `:status`) first, then the headers, names in lower case.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::status::{Status, map};
use super::vm::{Phase, StreamState, VmState};
use crate::filter::RequestFacts;

/// A pair list.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn header_pairs<'h>(
    headers: impl IntoIterator<Item = (&'h HeaderName, &'h HeaderValue)>,
    out: &mut Pairs,
) {
    for (k, v) in headers {
        out.push((k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()));
    }
}

/// A request's headers but `host`: Envoy keeps HTTP/1's Host as `:authority`
/// and lists no `host` pair (see [`alias`]).
fn request_header_pairs(headers: &HeaderMap, out: &mut Pairs) {
    header_pairs(
        headers.iter().filter(|(k, _)| *k != http::header::HOST),
        out,
    );
}

/// The key a filter's `key` stands for in map `map_type`: in the request
/// headers `host` is `:authority`, as in Envoy (reading `host` gives the
/// authority, replacing it changes the authority, adding to it joins the
/// values with a comma, removing it removes the authority).
fn alias(map_type: i32, key: Cow<'_, [u8]>) -> Cow<'_, [u8]> {
    if map_type == map::HTTP_REQUEST_HEADERS && *key == *b"host" {
        Cow::Borrowed(b":authority")
    } else {
        key
    }
}

/// In the order Envoy lists them for an HTTP/1 request.
const REQUEST_PSEUDO: [&[u8]; 4] = [b":authority", b":path", b":method", b":scheme"];

/// A request pseudo-header's value (`:authority` falls back to the Host header).
fn request_pseudo<'p>(p: &'p http::request::Parts, tls: bool, key: &[u8]) -> Option<&'p [u8]> {
    let text: &[u8] = match key {
        b":method" => p.method.as_str().as_bytes(),
        b":path" => p
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .as_bytes(),
        b":authority" => match p.uri.authority() {
            Some(a) => a.as_str().as_bytes(),
            None => p
                .headers
                .get(http::header::HOST)
                .map_or(&b""[..], |h| h.as_bytes()),
        },
        b":scheme" => p
            .uri
            .scheme_str()
            .unwrap_or(if tls { "https" } else { "http" })
            .as_bytes(),
        _ => return None,
    };
    Some(text)
}

fn request_pairs(p: &http::request::Parts, tls: bool) -> Pairs {
    let mut out = Vec::with_capacity(p.headers.len() + REQUEST_PSEUDO.len());
    for key in REQUEST_PSEUDO {
        out.push((
            key.to_vec(),
            request_pseudo(p, tls, key).unwrap_or_default().to_vec(),
        ));
    }
    request_header_pairs(&p.headers, &mut out);
    out
}

fn response_pairs(p: &http::response::Parts) -> Pairs {
    let mut out = Vec::with_capacity(p.headers.len() + 1);
    out.push((b":status".to_vec(), p.status.as_str().as_bytes().to_vec()));
    header_pairs(&p.headers, &mut out);
    out
}

/// Every pair of map `map` of the target context. A map the context has no
/// access to now (the response headers during the request phase, a call's
/// response outside its callback) reads as empty, as in Envoy: the SDKs
/// treat any other answer to a whole-map read as a bug and panic.
pub fn pairs(state: &mut VmState, map_type: i32) -> Result<Pairs, Status> {
    match map_type {
        map::HTTP_CALL_RESPONSE_HEADERS => {
            let mut out = Vec::new();
            if let Some(r) = state.call_response.as_ref() {
                if let Some(s) = r.status {
                    out.push((b":status".to_vec(), s.as_str().as_bytes().to_vec()));
                }
                header_pairs(&r.headers, &mut out);
            }
            Ok(out)
        }
        map::HTTP_CALL_RESPONSE_TRAILERS => {
            let mut out = Vec::new();
            if let Some(r) = state.call_response.as_ref() {
                header_pairs(&r.trailers, &mut out);
            }
            Ok(out)
        }
        map::HTTP_REQUEST_HEADERS => {
            let s = state.stream().ok_or(Status::BadArgument)?;
            let tls = s.info.as_ref().is_some_and(|i| i.tls);
            if let Some(p) = s.request.as_ref() {
                return Ok(request_pairs(p, tls));
            }
            Ok(logged_request(s)
                .map(|(f, h)| logged_request_pairs(f, h))
                .unwrap_or_default())
        }
        map::HTTP_RESPONSE_HEADERS => {
            let s = state.stream().ok_or(Status::BadArgument)?;
            if let Some(p) = s.response.as_ref() {
                return Ok(response_pairs(p));
            }
            let mut out = Vec::new();
            if let Some(l) = s.log.as_ref()
                && let Some(h) = l.response_headers.as_ref()
            {
                out.push((b":status".to_vec(), l.status.to_string().into_bytes()));
                header_pairs(h.iter(), &mut out);
            }
            Ok(out)
        }
        map::HTTP_REQUEST_TRAILERS | map::HTTP_RESPONSE_TRAILERS => {
            // Readable in a trailers callback; empty before (as Envoy: no trailers yet).
            let mut out = Vec::new();
            if let Some(t) = state.stream().and_then(|s| s.trailers.as_ref()) {
                header_pairs(t, &mut out);
            }
            Ok(out)
        }
        _ => Err(Status::BadArgument),
    }
}

/// The request as the chain left it, in the log phase: Envoy keeps the
/// request headers for `on_log` (not for the phases in between).
fn logged_request(s: &StreamState) -> Option<(&RequestFacts, &HeaderMap)> {
    s.log.as_ref()?;
    let snapshot = &s.info.as_ref()?.request;
    Some((snapshot.get()?, snapshot.headers()?))
}

fn logged_request_pairs(f: &RequestFacts, headers: &HeaderMap) -> Pairs {
    let mut out = Vec::with_capacity(headers.len() + REQUEST_PSEUDO.len());
    out.push((b":authority".to_vec(), f.host()));
    out.push((b":path".to_vec(), f.path().as_bytes().to_vec()));
    out.push((b":method".to_vec(), f.method.as_str().as_bytes().to_vec()));
    out.push((b":scheme".to_vec(), f.scheme().as_bytes().to_vec()));
    request_header_pairs(headers, &mut out);
    out
}

/// A header name in lower case, borrowed when it already is (as the SDKs send them).
fn lower(key: &[u8]) -> Cow<'_, [u8]> {
    if key.iter().any(u8::is_ascii_uppercase) {
        Cow::Owned(key.to_ascii_lowercase())
    } else {
        Cow::Borrowed(key)
    }
}

/// The first value of `key` in map `map_type`, appended to `out`; whether there is one.
pub fn value(
    state: &mut VmState,
    map_type: i32,
    key: &[u8],
    out: &mut Vec<u8>,
) -> Result<bool, Status> {
    let key = alias(map_type, lower(key));
    let request_or_response =
        map_type == map::HTTP_REQUEST_HEADERS || map_type == map::HTTP_RESPONSE_HEADERS;
    if request_or_response {
        match lent_value(state, map_type, &key, out) {
            // Not lent: in the log phase, read from what was kept for it.
            Err(Status::BadArgument) if state.stream().is_some_and(|s| s.log.is_some()) => {}
            other => return other,
        }
    }
    Ok(pairs(state, map_type)?
        .into_iter()
        .find(|(k, _)| *k == *key)
        .map(|(_, v)| v)
        .inspect(|v| out.extend_from_slice(v))
        .is_some())
}

/// The first value of `key` in the request or response head lent to the
/// stream now; BadArgument when that head is not lent.
fn lent_value(
    state: &mut VmState,
    map_type: i32,
    key: &[u8],
    out: &mut Vec<u8>,
) -> Result<bool, Status> {
    let st = state.stream().ok_or(Status::BadArgument)?;
    if key.first() == Some(&b':') {
        let tls = st.info.as_ref().is_some_and(|i| i.tls);
        let text = if map_type == map::HTTP_RESPONSE_HEADERS {
            let p = st.response.as_ref().ok_or(Status::BadArgument)?;
            (*key == *b":status").then(|| p.status.as_str().as_bytes())
        } else {
            let p = st.request.as_ref().ok_or(Status::BadArgument)?;
            request_pseudo(p, tls, key)
        };
        return Ok(text.inspect(|t| out.extend_from_slice(t)).is_some());
    }
    let headers = if map_type == map::HTTP_REQUEST_HEADERS {
        st.request.as_ref().map(|p| &p.headers)
    } else {
        st.response.as_ref().map(|p| &p.headers)
    };
    let headers = headers.ok_or(Status::BadArgument)?;
    // Looked up by `&str`, which makes no `HeaderName` (that allocates
    // for names outside the standard set); a name that cannot be a
    // header is not in the map.
    Ok(std::str::from_utf8(key)
        .ok()
        .and_then(|name| headers.get(name))
        .inspect(|v| out.extend_from_slice(v.as_bytes()))
        .is_some())
}

/// How a value is written.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// Append another value.
    Add,
    /// Replace all values.
    Replace,
    /// Remove all values.
    Remove,
}

/// Changes one key of map `map_type`.
pub fn edit(
    state: &mut VmState,
    map_type: i32,
    key: &[u8],
    value: &[u8],
    how: Edit,
) -> Result<(), Status> {
    // Nothing changes in the log phase; whether the map is there is found
    // out below, where the map is taken (one stream lookup per edit: this is
    // the path of every header a filter adds).
    if state.phase == Phase::Log {
        return Err(Status::BadArgument);
    }
    let key = alias(map_type, lower(key));
    // The name first: the cache and the stream's maps are both in `state`.
    let name = if how == Edit::Remove || key.first() == Some(&b':') {
        None
    } else {
        match header_name(state, &key) {
            Ok(n) => Some(n),
            Err(_) => {
                dropped(state, &key, "its name is not a valid header name");
                return Ok(());
            }
        }
    };

    let edited = match map_type {
        map::HTTP_REQUEST_HEADERS => {
            let p = state
                .stream()
                .and_then(|s| s.request.as_mut())
                .ok_or(Status::BadArgument)?;
            if *key == *b":authority" {
                return set_authority(p, value, how);
            }
            if key.first() == Some(&b':') {
                return set_request_pseudo(p, &key, value, how);
            }
            edit_headers(&mut p.headers, &key, name, value, how)
        }
        map::HTTP_RESPONSE_HEADERS => {
            let p = state
                .stream()
                .and_then(|s| s.response.as_mut())
                .ok_or(Status::BadArgument)?;
            if *key == *b":status" {
                if how == Edit::Remove {
                    // Envoy answers OK; a response cannot go without a status.
                    return Ok(());
                }
                let code = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u16>().ok());
                p.status = code
                    .and_then(|c| http::StatusCode::from_u16(c).ok())
                    .ok_or(Status::BadArgument)?;
                return Ok(());
            }
            edit_headers(&mut p.headers, &key, name, value, how)
        }
        map::HTTP_REQUEST_TRAILERS | map::HTTP_RESPONSE_TRAILERS => {
            // Changeable in a trailers callback, and (as in Envoy, which
            // creates the map on first use) in the last body callback of a
            // message that has none: the body then ends with them.
            let own_phase = if map_type == map::HTTP_REQUEST_TRAILERS {
                Phase::RequestBody
            } else {
                Phase::ResponseBody
            };
            let phase = state.phase;
            let s = state.stream().ok_or(Status::BadArgument)?;
            if s.trailers.is_none() && s.last_body && phase == own_phase {
                s.trailers = Some(HeaderMap::new());
            }
            let t = s.trailers.as_mut().ok_or(Status::BadArgument)?;
            edit_headers(t, &key, name, value, how)
        }
        _ => Err(Status::BadArgument),
    };
    match edited {
        Err(Status::ParseFailure) => {
            dropped(
                state,
                &key,
                "its value holds a control character (CR, LF or NUL)",
            );
            Ok(())
        }
        other => other,
    }
}

/// An edit weir cannot make: Envoy accepts any bytes and answers OK, and the
/// SDKs panic on any other answer, so the edit is dropped (a header that
/// would be sent as it is could split the message) and the plugin's log says so.
fn dropped(state: &VmState, key: &[u8], why: &str) {
    tracing::warn!(
        plugin = %state.name,
        header = %String::from_utf8_lossy(key),
        "a header edit was dropped: {why}"
    );
}

/// Whether map `map_type` can be changed now, as [`edit`] finds when it
/// takes the map: a stream's maps while weir holds them, never in the log
/// phase. For [`replace_all`], which must refuse before changing anything.
fn editable(state: &mut VmState, map_type: i32) -> Result<(), Status> {
    if state.phase == Phase::Log {
        return Err(Status::BadArgument);
    }
    let phase = state.phase;
    let s = state.stream().ok_or(Status::BadArgument)?;
    let open = match map_type {
        map::HTTP_REQUEST_HEADERS => s.request.is_some(),
        map::HTTP_RESPONSE_HEADERS => s.response.is_some(),
        map::HTTP_REQUEST_TRAILERS => {
            s.trailers.is_some() || (s.last_body && phase == Phase::RequestBody)
        }
        map::HTTP_RESPONSE_TRAILERS => {
            s.trailers.is_some() || (s.last_body && phase == Phase::ResponseBody)
        }
        _ => false,
    };
    if open {
        Ok(())
    } else {
        Err(Status::BadArgument)
    }
}

/// Replaces the whole map `map_type` with `pairs`. A map that cannot be
/// changed now refuses even an empty set of pairs, as in Envoy.
pub fn replace_all(state: &mut VmState, map_type: i32, pairs: Pairs) -> Result<(), Status> {
    editable(state, map_type)?;
    let keys: Vec<Vec<u8>> = self::pairs(state, map_type)?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.first() != Some(&b':'))
        .collect();
    for k in keys {
        edit(state, map_type, &k, b"", Edit::Remove)?;
    }
    for (k, v) in pairs {
        let how = if k.first() == Some(&b':') {
            Edit::Replace
        } else {
            Edit::Add
        };
        edit(state, map_type, &k, &v, how)?;
    }
    Ok(())
}

/// The header name `key` (lower case), from the instance's recent names or
/// parsed (and then kept).
fn header_name(state: &mut VmState, key: &[u8]) -> Result<HeaderName, Status> {
    let kept = &mut state.header_names;
    if let Some(n) = kept.iter().find(|n| n.as_str().as_bytes() == key) {
        return Ok(n.clone());
    }
    let name = HeaderName::from_bytes(key).map_err(|_| Status::BadArgument)?;
    if kept.len() >= super::vm::HEADER_NAMES_KEPT {
        kept.remove(0);
    }
    kept.push(name.clone());
    Ok(name)
}

/// Edits `headers`; `name` is `key` made a header name (not made for a
/// removal, or a pseudo-header).
fn edit_headers(
    headers: &mut HeaderMap,
    key: &[u8],
    name: Option<HeaderName>,
    value: &[u8],
    how: Edit,
) -> Result<(), Status> {
    if how == Edit::Remove {
        // Removed by `&str` (no `HeaderName` made); a name that cannot be a
        // header is in no map, and removing it is OK, as in Envoy.
        if let Ok(name) = std::str::from_utf8(key) {
            headers.remove(name);
        }
        return Ok(());
    }
    let name = match name {
        Some(n) => n,
        None => HeaderName::from_bytes(key).map_err(|_| Status::BadArgument)?,
    };
    // A value weir cannot send: told apart from the other failures so that
    // the caller drops the edit (see `dropped`).
    let value = HeaderValue::from_bytes(value).map_err(|_| Status::ParseFailure)?;
    match how {
        Edit::Add => {
            headers.append(name, value);
        }
        Edit::Replace => {
            headers.insert(name, value);
        }
        Edit::Remove => {}
    }
    Ok(())
}

/// Changes a request's `:authority` (or `host`, the same entry) as Envoy
/// does: an added value joins the present one after a comma (Envoy keeps
/// the header once), and removing it leaves the request with no authority
/// (Envoy then sends no Host; weir sends an empty one, which HTTP/1.1 requires).
fn set_authority(p: &mut http::request::Parts, value: &[u8], how: Edit) -> Result<(), Status> {
    let joined;
    let value = match how {
        Edit::Remove => {
            p.headers.remove(http::header::HOST);
            if p.uri.authority().is_some() {
                let mut parts = p.uri.clone().into_parts();
                parts.scheme = None;
                parts.authority = None;
                p.uri = http::Uri::from_parts(parts).map_err(|_| Status::BadArgument)?;
            }
            return Ok(());
        }
        Edit::Add => match request_pseudo(p, false, b":authority") {
            Some(now) if !now.is_empty() => {
                joined = [now, b",", value].concat();
                &joined[..]
            }
            _ => value,
        },
        Edit::Replace => value,
    };
    set_request_pseudo(p, b":authority", value, Edit::Replace)
}

fn set_request_pseudo(
    p: &mut http::request::Parts,
    key: &[u8],
    value: &[u8],
    how: Edit,
) -> Result<(), Status> {
    if how == Edit::Remove {
        // Envoy answers OK (and then fails the request); weir keeps the
        // pseudo-header, which a request cannot go without.
        return Ok(());
    }
    let text = std::str::from_utf8(value).map_err(|_| Status::BadArgument)?;
    let pseudo = std::str::from_utf8(&key[1..]).map_err(|_| Status::BadArgument)?;
    crate::abi::set_request_pseudo(p, pseudo, text).map_err(|_| Status::BadArgument)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::proxy_wasm::AbiVersion;
    use crate::abi::proxy_wasm::vm::{self, StreamState};

    /// A stream's state, once its stream ends, is cleared and given to the
    /// next stream (the box last freed, still in the cache), not freed.
    #[test]
    fn an_ended_streams_state_is_cleared_and_reused_by_the_next() {
        let mut s = state();
        let info = crate::filter::StreamInfo::for_test();
        s.open_stream(2, info.clone());
        let st = s.streams.get_mut(&2).unwrap();
        st.props.insert(b"k".to_vec(), b"v".to_vec());
        st.continue_request = true;
        let first: *const StreamState = &**st;
        s.close_stream(2);
        assert!(!s.streams.contains_key(&2));
        s.open_stream(3, info);
        let st = &s.streams[&3];
        assert!(
            std::ptr::eq(first, &**st),
            "the ended stream's box was not reused"
        );
        assert!(st.props.is_empty() && !st.continue_request && st.info.is_some());
    }

    /// An instance state with stream 1 current, holding a request head with
    /// `x-known: yes`.
    fn state() -> VmState {
        let health = crate::plugin::health::PluginHealth::new("maps-test", None);
        let mut s = vm::new_state(
            std::sync::Weak::new(),
            "maps-test".into(),
            AbiVersion::V0_2_1,
            0,
            0,
            64 << 20,
            health.callback_shard(),
        );
        let (mut head, ()) = http::Request::get("http://example.test/a?b=c")
            .body(())
            .unwrap()
            .into_parts();
        head.headers
            .insert("x-known", HeaderValue::from_static("yes"));
        s.streams.insert(
            1,
            Box::new(StreamState {
                request: Some(Box::new(head)),
                ..Default::default()
            }),
        );
        s.current = 1;
        s.phase = Phase::RequestHeaders;
        s
    }

    fn get(s: &mut VmState, key: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        let mut out = Vec::new();
        value(s, map::HTTP_REQUEST_HEADERS, key, &mut out).map(|found| found.then_some(out))
    }

    #[test]
    fn names_are_looked_up_in_any_case_and_values_appended_to_the_buffer() {
        let mut s = state();
        assert_eq!(get(&mut s, b"x-known"), Ok(Some(b"yes".to_vec())));
        assert_eq!(get(&mut s, b"X-Known"), Ok(Some(b"yes".to_vec())));
        assert_eq!(get(&mut s, b":path"), Ok(Some(b"/a?b=c".to_vec())));
        assert_eq!(
            get(&mut s, b":authority"),
            Ok(Some(b"example.test".to_vec()))
        );
        assert_eq!(get(&mut s, b"x-absent"), Ok(None));
        // A name no header can have is simply not there.
        assert_eq!(get(&mut s, b"bad name"), Ok(None));
        let mut out = b"kept:".to_vec();
        assert_eq!(
            value(&mut s, map::HTTP_REQUEST_HEADERS, b"x-known", &mut out),
            Ok(true)
        );
        assert_eq!(out, b"kept:yes");
    }

    #[test]
    fn host_is_the_authority_as_in_envoy() {
        let mut s = state();
        let h = map::HTTP_REQUEST_HEADERS;
        s.streams.get_mut(&1).unwrap().request.as_mut().unwrap().uri = "/a?b=c".parse().unwrap();
        let head = s.streams.get_mut(&1).unwrap().request.as_mut().unwrap();
        head.headers
            .insert(http::header::HOST, HeaderValue::from_static("example.test"));
        assert_eq!(get(&mut s, b"Host"), Ok(Some(b"example.test".to_vec())));
        let names: Vec<Vec<u8>> = pairs(&mut s, h).unwrap().into_iter().map(|p| p.0).collect();
        assert!(names.contains(&b":authority".to_vec()));
        assert!(!names.contains(&b"host".to_vec()), "host listed twice");
        assert_eq!(edit(&mut s, h, b"host", b"other.test", Edit::Add), Ok(()));
        let joined = b"example.test,other.test".to_vec();
        assert_eq!(get(&mut s, b":authority"), Ok(Some(joined.clone())));
        let head = s.streams[&1].request.as_ref().unwrap();
        assert_eq!(head.headers.get_all(http::header::HOST).iter().count(), 1);
        assert_eq!(
            edit(&mut s, h, b"host", b"third.test", Edit::Replace),
            Ok(())
        );
        assert_eq!(get(&mut s, b":authority"), Ok(Some(b"third.test".to_vec())));
        assert_eq!(edit(&mut s, h, b":authority", b"", Edit::Remove), Ok(()));
        let head = s.streams[&1].request.as_ref().unwrap();
        assert!(head.headers.get(http::header::HOST).is_none());
        assert_eq!(get(&mut s, b"host"), Ok(Some(Vec::new())));
    }

    #[test]
    fn added_names_are_kept_for_reuse_up_to_a_bound() {
        let mut s = state();
        let h = map::HTTP_REQUEST_HEADERS;
        assert_eq!(edit(&mut s, h, b"X-Reused", b"1", Edit::Add), Ok(()));
        assert_eq!(edit(&mut s, h, b"x-reused", b"2", Edit::Replace), Ok(()));
        assert_eq!(s.header_names.len(), 1, "one name, kept once");
        assert_eq!(s.header_names[0], "x-reused");
        // Removals and pseudo-headers make no name; invalid names are not kept.
        assert_eq!(edit(&mut s, h, b"x-other", b"", Edit::Remove), Ok(()));
        assert_eq!(edit(&mut s, h, b":path", b"/b", Edit::Replace), Ok(()));
        // Envoy answers OK; weir drops the edit.
        assert_eq!(edit(&mut s, h, b"bad name", b"1", Edit::Add), Ok(()));
        assert_eq!(s.header_names.len(), 1);
        for i in 0..vm::HEADER_NAMES_KEPT + 4 {
            let name = format!("x-n{i}");
            assert_eq!(edit(&mut s, h, name.as_bytes(), b"v", Edit::Add), Ok(()));
        }
        assert_eq!(s.header_names.len(), vm::HEADER_NAMES_KEPT);
        assert_eq!(s.header_names[0], "x-n4", "the oldest went first");
        let head = s.streams[&1].request.as_ref().unwrap();
        assert_eq!(head.headers["x-reused"], "2");
        assert_eq!(head.headers["x-n0"], "v");
    }

    #[test]
    fn edits_store_lower_case_names_and_drop_invalid_ones() {
        let mut s = state();
        let h = map::HTTP_REQUEST_HEADERS;
        assert_eq!(edit(&mut s, h, b"X-Added", b"1", Edit::Add), Ok(()));
        assert_eq!(edit(&mut s, h, b"x-added", b"2", Edit::Add), Ok(()));
        let head = s.streams[&1].request.as_ref().unwrap();
        let added: Vec<_> = head.headers.get_all("x-added").iter().collect();
        assert_eq!(added, ["1", "2"]);
        assert_eq!(edit(&mut s, h, b"X-ADDED", b"3", Edit::Replace), Ok(()));
        assert_eq!(get(&mut s, b"x-added"), Ok(Some(b"3".to_vec())));
        // Removing: a present name, an absent valid one, an invalid one.
        assert_eq!(edit(&mut s, h, b"X-Known", b"", Edit::Remove), Ok(()));
        assert_eq!(get(&mut s, b"x-known"), Ok(None));
        assert_eq!(edit(&mut s, h, b"x-never-there", b"", Edit::Remove), Ok(()));
        // What weir cannot send is dropped, answered OK as Envoy answers it
        // (the SDKs panic on anything else); removing a pseudo-header keeps it.
        assert_eq!(edit(&mut s, h, b"bad name", b"", Edit::Remove), Ok(()));
        assert_eq!(edit(&mut s, h, b"bad name", b"v", Edit::Add), Ok(()));
        assert_eq!(edit(&mut s, h, b"x-ok", b"bad\nvalue", Edit::Add), Ok(()));
        assert_eq!(get(&mut s, b"x-ok"), Ok(None));
        assert_eq!(edit(&mut s, h, b":method", b"", Edit::Remove), Ok(()));
        assert_eq!(get(&mut s, b":method"), Ok(Some(b"GET".to_vec())));
        let head = s.streams[&1].request.as_ref().unwrap();
        assert!(head.headers.iter().all(|(k, _)| k != "bad name"));
    }
}
