//! Header handling between downstream and upstream: hop-by-hop headers,
//! forwarding headers and the request id.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
/// `Trailer` is not one of them: it announces the trailer fields of its own
/// message end to end (RFC 9110 §6.6.2; RFC 2616 listed "Trailers", an
/// erratum), and hyper sends HTTP/1.1 trailers only where a message
/// announces them, so a proxy that dropped it would drop the trailers too.
/// Envoy forwards it as well. The `proxy-*` credentials are for weir itself
/// and go no further (Envoy forwards them).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];

/// Where TE sits in [`HOP_BY_HOP`].
const TE_INDEX: usize = 5;

/// A name's place in [`HOP_BY_HOP`], or `HOP_BY_HOP.len()` for Upgrade.
/// A match on the name compiles to a switch on its length, cheaper than
/// comparing it with each entry.
fn hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "transfer-encoding" => 6,
        "upgrade" => 7,
        _ => return None,
    })
}

/// The `x-request-id` header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Set by weir for the upstream: a client naming them in Connection does not
/// remove them (it could otherwise hide its address from the upstream).
const FORWARDING: [HeaderName; 3] = [XFF, XFP, XFH];

/// Whether a request is gRPC: its content-type is `application/grpc` or a
/// subtype (`application/grpc+proto`), as Envoy tells.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Whether the request asks for a WebSocket upgrade, the one upgrade weir
/// tunnels. Any other (h2c above all) is not: a backend that took an h2c
/// upgrade would then speak HTTP/2 with the client directly, past weir's
/// routes and plugins ("h2c smuggling"). Such a request goes on as a plain
/// one with its Upgrade header removed, as Envoy does with h2c.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let mut protocols = tokens(headers, &header::UPGRADE).peekable();
    protocols.peek().is_some()
        && protocols.all(|p| p.eq_ignore_ascii_case(b"websocket"))
        && tokens(headers, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case(b"upgrade"))
}

/// The comma-separated tokens of every `name` header, trimmed, empty ones
/// left out (Connection, Upgrade, Transfer-Encoding lists).
pub fn tokens<'h>(headers: &'h HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'h [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers, including those the Connection header names.
/// With `keep_upgrade`, `Connection: upgrade` and `Upgrade` stay.
///
/// Every request and response passes through here, most carrying no
/// hop-by-hop header or only `Connection: keep-alive`, so it scans the names
/// once and removes only what it found: a removal hashes the name, and eight
/// removals of absent names cost more than the rest of the header handling.
///
/// With `met_expect` (an HTTP/1.1 request: hyper's server has answered its
/// `Expect: 100-continue`), that expectation is removed too, found by the
/// same scan.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool, met_expect: bool) {
    // Bit i: HOP_BY_HOP[i] is present; bit 7: Upgrade is.
    let mut present = 0u16;
    let mut expect = false;
    for k in headers.keys() {
        if let Some(i) = hop_index(k.as_str()) {
            present |= 1 << i;
        } else if met_expect && k == header::EXPECT {
            expect = true;
        }
    }
    if expect {
        remove_expect_continue(headers);
    }
    if present == 0 {
        return;
    }
    // Names listed in Connection that are not hop-by-hop already (rare).
    let mut named: Vec<HeaderName> = Vec::new();
    for token in headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        // Tokens are case-insensitive; a name that is hop-by-hop is removed
        // below anyway. Lower-cased only when it has capitals (rare).
        let known = hop_index(token).is_some()
            || (token.bytes().any(|b| b.is_ascii_uppercase())
                && hop_index(&token.to_ascii_lowercase()).is_some());
        if !known
            && let Ok(name) = HeaderName::from_bytes(token.as_bytes())
            && !FORWARDING.contains(&name)
        {
            named.push(name);
        }
    }
    let te_trailers = present & (1 << TE_INDEX) != 0
        && tokens(headers, &header::TE).any(|t| t.eq_ignore_ascii_case(b"trailers"));
    for name in named {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if te_trailers {
        // gRPC needs "te: trailers" to reach the server.
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & (1 << HOP_BY_HOP.len()) != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// Removes `Expect: 100-continue` from an HTTP/1.1 request: hyper's server
/// has met that expectation (it answers 100 Continue when weir first reads
/// the body), so it goes no further, as in Envoy. The upstream would
/// otherwise answer a 100 of its own, or wait for a body already on its way.
/// An HTTP/2 request keeps it: hyper has no way to send a 100 over HTTP/2,
/// so weir has not met it (a client sends its body after a short wait).
/// Any other expectation stays, for the upstream to answer.
fn remove_expect_continue(headers: &mut HeaderMap) {
    if headers
        .get_all(header::EXPECT)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        headers.remove(header::EXPECT);
    }
}

/// The first transfer coding in `headers` other than a single `chunked`
/// (lower-cased; `"chunked, applied twice"` when chunked is listed twice),
/// or `None` when Transfer-Encoding is absent or exactly `chunked`.
pub fn unchunked_coding(headers: &HeaderMap) -> Option<String> {
    let chunked = |c: &[u8]| c.eq_ignore_ascii_case(b"chunked");
    let mut codings = tokens(headers, &header::TRANSFER_ENCODING);
    match (codings.next(), codings.next()) {
        (None, _) => None,
        (Some(c), None) if chunked(c) => None,
        (first, second) => Some(
            [first, second]
                .into_iter()
                .flatten()
                .find(|c| !chunked(c))
                .map_or("chunked, applied twice".into(), |c| {
                    String::from_utf8_lossy(c).to_ascii_lowercase()
                }),
        ),
    }
}

/// The client's address as an x-forwarded-for entry. A connection formats
/// it once; each of its requests clones it (a reference count).
pub fn forwarded_for(client: IpAddr) -> HeaderValue {
    HeaderValue::try_from(client.to_string()).expect("an IP address is a valid header value")
}

/// Sets x-forwarded-for (the client appended to what the request carried),
/// x-forwarded-proto and x-forwarded-host. `client` comes from
/// [`forwarded_for`]; `host` is the request's host. From a `trusted` client
/// (a proxy in front of weir) the proto and host it sends are kept; from any
/// other they are replaced, so a client cannot make the upstream build its
/// links and redirects on a host of the client's choosing (Kong's
/// `trusted_ips` works the same way).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    https: bool,
    host: Option<&HeaderValue>,
    trusted: bool,
) {
    match headers.entry(XFF) {
        Entry::Occupied(mut e) if !e.get().is_empty() => {
            let prev = e.get().as_bytes();
            let mut joined = Vec::with_capacity(prev.len() + 2 + client.len());
            joined.extend_from_slice(prev);
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client.as_bytes());
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(joined)) {
                e.insert(v);
            }
        }
        Entry::Occupied(mut e) => {
            e.insert(client.clone());
        }
        Entry::Vacant(e) => {
            e.insert(client.clone());
        }
    }
    let proto = HeaderValue::from_static(if https { "https" } else { "http" });
    let host = host.cloned().unwrap_or(HeaderValue::from_static(""));
    if trusted {
        headers.entry(XFP).or_insert(proto);
        headers.entry(XFH).or_insert(host);
    } else {
        headers.insert(XFP, proto);
        headers.insert(XFH, host);
    }
}

/// Adds an x-request-id when the request has none.
pub fn ensure_request_id(headers: &mut HeaderMap) {
    if let Entry::Vacant(e) = headers.entry(REQUEST_ID) {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        e.insert(HeaderValue::from_str(id).expect("a UUID is a valid header value"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_single_chunked_coding_is_plain_chunked() {
        let coding = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::TRANSFER_ENCODING, HeaderValue::from_static(v));
            }
            unchunked_coding(&h)
        };
        assert_eq!(coding(&[]), None);
        assert_eq!(coding(&["chunked"]), None);
        assert_eq!(coding(&["Chunked"]), None);
        assert_eq!(coding(&["gzip, chunked"]).as_deref(), Some("gzip"));
        assert_eq!(coding(&["GZIP", "chunked"]).as_deref(), Some("gzip"));
        assert_eq!(
            coding(&["chunked", "chunked"]).as_deref(),
            Some("chunked, applied twice")
        );
    }

    #[test]
    fn strips_hop_by_hop_and_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(header::TRAILER, HeaderValue::from_static("grpc-status"));
        strip_hop_by_hop(&mut h, false, false);
        assert!(
            h.get("x-secret").is_none()
                && h.get("keep-alive").is_none()
                && h.get(header::CONNECTION).is_none()
        );
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert!(h.get("x-kept").is_some());
        assert_eq!(
            h.get(header::TRAILER).unwrap(),
            "grpc-status",
            "Trailer is end to end: without it hyper sends no HTTP/1.1 trailers"
        );
    }

    #[test]
    fn a_met_expect_continue_is_removed_and_other_expectations_stay() {
        let with = |value: &'static str, met: bool| {
            let mut h = HeaderMap::new();
            h.insert(header::EXPECT, HeaderValue::from_static(value));
            strip_hop_by_hop(&mut h, false, met);
            h.get(header::EXPECT).is_some()
        };
        assert!(!with("100-Continue", true));
        assert!(with("100-continue", false), "HTTP/2: weir sent no 100");
        assert!(with("something-else", true), "for the upstream to answer");
    }

    #[test]
    fn hop_index_matches_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(name.as_str()), Some(i), "{name}");
        }
        assert_eq!(hop_index("upgrade"), Some(HOP_BY_HOP.len()));
        assert_eq!(hop_index("content-length"), None);
        assert_eq!(HOP_BY_HOP[TE_INDEX], header::TE);
    }

    #[test]
    fn keep_alive_alone_is_stripped_and_nothing_else_touched() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert(header::SERVER, HeaderValue::from_static("nginx"));
        strip_hop_by_hop(&mut h, false, false);
        assert_eq!(h.len(), 2);
        assert!(h.get(header::CONNECTION).is_none());
    }

    #[test]
    fn only_websocket_upgrades_are_upgrades() {
        let with = |upgrade: &'static str, connection: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::UPGRADE, HeaderValue::from_static(upgrade));
            h.insert(header::CONNECTION, HeaderValue::from_static(connection));
            is_upgrade(&h)
        };
        assert!(with("websocket", "Upgrade"));
        assert!(with("WebSocket", "keep-alive, upgrade"));
        assert!(!with("h2c", "Upgrade, HTTP2-Settings"), "h2c smuggling");
        assert!(
            !with("websocket, h2c", "Upgrade"),
            "the backend could pick h2c"
        );
        assert!(!with("TLS/1.0", "Upgrade"));
        assert!(
            !with("websocket", "keep-alive"),
            "Connection must name upgrade"
        );
        assert!(!is_upgrade(&HeaderMap::new()));
    }

    #[test]
    fn upgrade_stays_only_when_kept() {
        let upgrade = || {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONNECTION,
                HeaderValue::from_static("Upgrade, close"),
            );
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert("close", HeaderValue::from_static("listed, so removed"));
            h
        };
        let mut kept = upgrade();
        strip_hop_by_hop(&mut kept, true, false);
        assert_eq!(kept.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(kept.get(header::CONNECTION).unwrap(), "upgrade");
        assert!(kept.get("close").is_none());
        let mut dropped = upgrade();
        strip_hop_by_hop(&mut dropped, false, false);
        assert!(dropped.is_empty(), "{dropped:?}");
    }

    #[test]
    fn forwarded_proto_and_host_are_kept_only_from_trusted_proxies() {
        let sent = || {
            let mut h = HeaderMap::new();
            h.insert(XFH, HeaderValue::from_static("evil.example"));
            h.insert(XFP, HeaderValue::from_static("https"));
            h
        };
        let client = forwarded_for("::1".parse().unwrap());
        let host = HeaderValue::from_static("b");
        let mut untrusted = sent();
        set_forwarded(&mut untrusted, &client, false, Some(&host), false);
        assert_eq!(untrusted.get(XFF).unwrap(), "::1");
        assert_eq!(untrusted.get(XFP).unwrap(), "http");
        assert_eq!(untrusted.get(XFH).unwrap(), "b");
        let mut trusted = sent();
        set_forwarded(&mut trusted, &client, false, Some(&host), true);
        assert_eq!(trusted.get(XFP).unwrap(), "https");
        assert_eq!(trusted.get(XFH).unwrap(), "evil.example");
        let mut fresh = HeaderMap::new();
        set_forwarded(&mut fresh, &client, true, Some(&host), true);
        assert_eq!(fresh.get(XFP).unwrap(), "https");
        assert_eq!(fresh.get(XFH).unwrap(), "b");
    }

    #[test]
    fn a_request_id_is_added_once() {
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h);
        let id = h.get(REQUEST_ID).unwrap().clone();
        assert_eq!(id.len(), 36);
        ensure_request_id(&mut h);
        assert_eq!(h.get_all(REQUEST_ID).iter().count(), 1);
        assert_eq!(h.get(REQUEST_ID).unwrap(), id);
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = HeaderMap::new();
        h.insert(XFF, HeaderValue::from_static("10.0.0.1"));
        set_forwarded(
            &mut h,
            &forwarded_for("127.0.0.1".parse().unwrap()),
            true,
            Some(&HeaderValue::from_static("api.example.com")),
            false,
        );
        assert_eq!(h.get(XFF).unwrap(), "10.0.0.1, 127.0.0.1");
        assert_eq!(h.get(XFP).unwrap(), "https");
        assert_eq!(h.get(XFH).unwrap(), "api.example.com");
    }
}
