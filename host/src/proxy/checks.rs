//! What weir checks of a message before it passes it on: a request head
//! against the listener's limits and HTTP/1.1's rules for the target, the
//! Host and the transfer codings (RFC 9112), and a response head's framing.

use http::StatusCode;
use http::header;

use crate::config::ListenerConfig;
use crate::error::ProxyError;

use super::headers;

/// Refuses a request head weir will not pass on: over the listener's
/// limits (431, 413), naming its host ambiguously or wrongly (400: no Host
/// or more than one in HTTP/1.1, a Host that is no host name or address,
/// userinfo in the target; RFC 9112, section 3.2), a target with bytes
/// outside ASCII (400), or asking for what weir does not do (501: a
/// transfer coding other than chunked, CONNECT). One pass over the headers
/// serves the header checks.
pub(super) fn check_head(l: &ListenerConfig, req: &http::request::Parts) -> Result<(), ProxyError> {
    let h = &req.headers;
    if h.len() > l.max_headers {
        return Err(ProxyError::HeadersTooLarge {
            what: format!("{} headers, the limit is {}", h.len(), l.max_headers),
        });
    }
    let (mut size, mut hosts, mut host, mut transfer_encoding) = (0, 0, None, false);
    for (k, v) in h {
        size += k.as_str().len() + v.len() + 4;
        if k == header::HOST {
            hosts += 1;
            host = Some(v);
        } else if k == header::TRANSFER_ENCODING {
            transfer_encoding = true;
        }
    }
    size += req.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + req.uri.authority().map_or(0, |a| a.as_str().len());
    if size > l.max_header_size {
        return Err(ProxyError::HeadersTooLarge {
            what: format!("{size} bytes, the limit is {}", l.max_header_size),
        });
    }
    if hosts > 1 {
        return Err(ProxyError::BadRequest {
            reason: format!("{hosts} Host headers; a request names one host"),
        });
    }
    if hosts == 0 && req.version == http::Version::HTTP_11 && req.uri.authority().is_none() {
        return Err(ProxyError::BadRequest {
            reason: "an HTTP/1.1 request must carry a Host header".into(),
        });
    }
    if let Some(host) = host
        && !valid_host(host.as_bytes())
    {
        return Err(ProxyError::BadRequest {
            reason: format!(
                "invalid Host header {:?}: a host name or IP address and an optional port",
                String::from_utf8_lossy(host.as_bytes())
            ),
        });
    }
    if let Some(authority) = req.uri.authority()
        && authority.as_str().contains('@')
    {
        return Err(ProxyError::BadRequest {
            reason: "the request target carries userinfo (user@host), which HTTP does not allow"
                .into(),
        });
    }
    if !req
        .uri
        .path_and_query()
        .is_none_or(|p| p.as_str().is_ascii())
    {
        return Err(ProxyError::BadRequest {
            reason: "the request target has bytes outside ASCII: percent-encode them".into(),
        });
    }
    if !valid_method(req.method.as_str()) {
        return Err(ProxyError::BadRequest {
            reason: format!(
                "method {:?}: methods are upper case (A-Z, '-', '_'); a route or policy \
                 matching GET would not see it, and an upstream might still read it as one",
                req.method.as_str()
            ),
        });
    }
    if req.method == http::Method::CONNECT {
        return Err(ProxyError::NotImplemented {
            what: "CONNECT: weir proxies requests, it does not open tunnels".into(),
        });
    }
    if transfer_encoding {
        check_transfer_encoding(h)?;
    }
    let length = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|n| n > l.max_request_body) {
        return Err(ProxyError::BodyTooLarge {
            limit: l.max_request_body,
        });
    }
    Ok(())
}

/// Whether `method` is upper-case letters, `-` and `_` (nginx's rule). A
/// method is case-sensitive (RFC 9110, 9.1), so `get` is not `GET` to routes
/// and plugins, while many upstream frameworks fold the case and serve it as
/// `GET`: refused, as Envoy and nginx refuse it. Unknown upper-case methods
/// (`PROPFIND`, `PURGE`, an API's own) pass; Envoy refuses those it does not
/// know, nginx and weir do not.
fn valid_method(method: &str) -> bool {
    method
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
}

/// Bytes of a `reg-name` or IPv4 address (RFC 3986: unreserved, sub-delims
/// and `%` of an escape), as a table: every request's Host passes through
/// [`valid_host`], and a lookup per byte is the cheapest test.
const REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    t
};

/// Whether `v` is a Host header value: `uri-host [":" port]` (RFC 9110,
/// section 7.2), a name or IPv4 address, or an IP literal in brackets; empty
/// is allowed (a target without an authority). One pass for names.
fn valid_host(v: &[u8]) -> bool {
    let port_ok = |port: &[u8]| match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    if v.first() == Some(&b'[') {
        return match v.iter().position(|&b| b == b']') {
            Some(end) => {
                v[1..end].iter().all(|&b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b':' | b'.' | b'%' | b'-' | b'_' | b'~')
                }) && port_ok(&v[end + 1..])
            }
            None => false,
        };
    }
    match v.iter().position(|&b| !REG_NAME[usize::from(b)]) {
        None => true,
        Some(colon) => v[colon] == b':' && port_ok(&v[colon..]),
    }
}

/// A request with Transfer-Encoding: chunked alone is accepted (the
/// HTTP/1.1 server has decoded it), any other coding answers 501: its bytes
/// would reach the upstream still encoded, and unannounced. (Content-Length
/// beside chunked is hyper's to handle: it drops the length, reads the body
/// as chunked and closes the connection after the response, as RFC 9112,
/// section 6.3 allows, so bytes smuggled after the body are never read as a
/// request.)
fn check_transfer_encoding(h: &http::HeaderMap) -> Result<(), ProxyError> {
    match headers::unchunked_coding(h) {
        None => Ok(()),
        Some(other) => Err(ProxyError::NotImplemented {
            what: format!(
                "transfer coding {other:?}: weir accepts a request body as it is or chunked"
            ),
        }),
    }
}

/// Why an upstream response whose status is `status` cannot be passed on, if
/// it cannot: a 204 that frames a body (Content-Length other than 0, or
/// Transfer-Encoding: RFC 9110, section 15.3.5; hyper reads it as empty, so
/// the body's bytes would sit on the connection where the next response is
/// expected), a transfer coding other than chunked (hyper reads the chunks,
/// and the client would get the bytes still encoded, the coding dropped), or
/// Content-Length beside Transfer-Encoding (RFC 9112, section 6.3: a sign of
/// response splitting, which an intermediary must not forward as it is).
/// A Content-Length list of one repeated length ("2, 2"; hyper refuses
/// lists of different lengths) is refused too: RFC 9110, section 8.6 lets a
/// recipient take the one length, but weir would pass the list on as it came.
/// Envoy 1.40 answers all four with 502 too ("protocol error"). A 304 may
/// carry either (its Content-Length is the representation's): hyper reads
/// it as empty and closes the connection if bytes follow, as Envoy does.
///
/// Every response comes here: a well-framed one costs a status comparison and
/// two header lookups.
pub(super) fn response_framing_error(status: StatusCode, h: &http::HeaderMap) -> Option<String> {
    if status == StatusCode::NO_CONTENT {
        if h.contains_key(header::TRANSFER_ENCODING) {
            return Some("a 204 response with Transfer-Encoding: a 204 has no body".into());
        }
        return h
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0")
            .then(|| {
                "a 204 response with a Content-Length other than 0: a 204 has no body".into()
            });
    }
    if let Some(list) = h
        .get(header::CONTENT_LENGTH)
        .filter(|v| v.as_bytes().contains(&b','))
    {
        return Some(format!(
            "Content-Length {list:?} is a list: a response has one length (clients such as Go's refuse a list)"
        ));
    }
    if !h.contains_key(header::TRANSFER_ENCODING) {
        return None;
    }
    if let Some(other) = headers::unchunked_coding(h) {
        return Some(format!(
            "transfer coding {other:?} in the response: weir passes response bodies as they are or chunked"
        ));
    }
    h.contains_key(header::CONTENT_LENGTH).then(|| {
        "the response has both Content-Length and Transfer-Encoding, so its length is ambiguous"
            .into()
    })
}

#[cfg(test)]
mod tests {
    use super::{valid_host, valid_method};

    #[test]
    fn methods_are_upper_case_tokens() {
        for ok in ["GET", "DELETE", "PROPFIND", "M-SEARCH", "PURGE_ALL"] {
            assert!(valid_method(ok), "{ok}");
        }
        for bad in ["get", "Get", "gET", "DELETe", "GET1"] {
            assert!(!valid_method(bad), "{bad}");
        }
    }

    #[test]
    fn host_headers_are_names_or_addresses_with_an_optional_port() {
        for ok in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8443",
            "[fe80::1%25eth0]",
            "xn--bcher-kva.example",
            "",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "a b", "a/b", "user@a", "a:80x", "a:80:90", "[::1", "[::1]x", "a\\b", "a?b", "a#b",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }
}
