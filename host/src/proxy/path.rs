//! Request path normalization (RFC 3986, section 6.2.2): the path routes
//! match, plugins see and the upstream receives, so that `/public/../admin`,
//! `/%61dmin`, `/public\..\admin` and `/admin` are one path to all three. A
//! gateway that matched on the raw path would let `/public/../admin` past a
//! policy attached to `/admin/` and hand it to a service that resolves the
//! dots itself (Istio turns Envoy's `normalize_path` on for this reason).
//!
//! What changes, in this order:
//! 1. `%XX` that encodes an unreserved character (letters, digits, `-._~`)
//!    is decoded; every other `%XX` keeps its meaning, in upper-case hex.
//!    `%2F` stays encoded: it is data, not a separator, as in Envoy's default.
//! 2. A backslash becomes a slash (services on Windows treat it as one).
//! 3. Dot segments are removed (`/a/./b/../c` is `/a/c`; `..` stops at the root).
//! 4. With `merge_slashes`, runs of slashes become one.
//!
//! The query is never touched. A `%` not followed by two hex digits is left
//! as it is, unless what decoding puts after it would make it an escape:
//! `/a/%%32e%%32e/admin` becomes `/a/%252e%252e/admin`, not
//! `/a/%2e%2e/admin`, which a service that decodes once more would resolve
//! to `/admin` (Envoy 1.40's `normalize_path` does the same). So the normal
//! form is a fixed point: normalizing it again changes nothing.

use crate::error::ProxyError;

/// Replaces `uri`'s path with its normal form ([`normalize`]); the query
/// stays as it came. A normal path leaves `uri` untouched.
pub fn normalize_uri(uri: &mut http::Uri, merge_slashes: bool) -> Result<(), ProxyError> {
    let Some(normal) = normalize(uri.path(), merge_slashes) else {
        return Ok(());
    };
    let with_query = match uri.query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    let bad = |e: &dyn std::fmt::Display| ProxyError::BadRequest {
        reason: format!("the request path cannot be normalized: {e}"),
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query =
        Some(http::uri::PathAndQuery::try_from(with_query).map_err(|e| bad(&e))?);
    *uri = http::Uri::from_parts(parts).map_err(|e| bad(&e))?;
    Ok(())
}

/// The normal form of `path`, or `None` when `path` is already normal, so
/// the common request costs one scan and no allocation. Paths that do not
/// start with `/` (`*` of `OPTIONS *`) are left alone.
pub fn normalize(path: &str, merge_slashes: bool) -> Option<String> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') || is_normal(bytes, merge_slashes) {
        return None;
    }
    let decoded = decode(bytes);
    let mut out: Vec<&[u8]> = Vec::new();
    let segments: Vec<&[u8]> = decoded[1..].split(|&b| b == b'/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.into_iter().enumerate() {
        match segment {
            b"." => {}
            b".." => {
                out.pop();
            }
            b"" if merge_slashes && i != last => continue,
            s => {
                out.push(s);
                continue;
            }
        }
        // A path ending in a dot segment names a directory: `/a/.` is `/a/`.
        if i == last {
            out.push(b"");
        }
    }
    let mut normal = Vec::with_capacity(decoded.len());
    for segment in out {
        normal.push(b'/');
        normal.extend_from_slice(segment);
    }
    if normal.is_empty() {
        normal.push(b'/');
    }
    // Only ASCII went in (a URI path is ASCII) and only ASCII came out.
    let normal = String::from_utf8(normal).ok()?;
    (normal != path).then_some(normal)
}

/// Whether `bytes` (a path starting with `/`) has nothing to normalize: no
/// `%`, no backslash, no `.` or `..` segment and, with `merge_slashes`, no
/// `//`.
fn is_normal(bytes: &[u8], merge_slashes: bool) -> bool {
    let at = |i: usize| bytes.get(i).copied();
    let ends_segment = |i: usize| matches!(at(i), None | Some(b'/'));
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | b'\\' => return false,
            b'/' => {
                let next = at(i + 1);
                if merge_slashes && next == Some(b'/') {
                    return false;
                }
                if next == Some(b'.')
                    && (ends_segment(i + 2) || (at(i + 2) == Some(b'.') && ends_segment(i + 3)))
                {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}

/// Step 1 and 2: unreserved characters decoded, other escapes in upper case,
/// backslashes turned into slashes.
fn decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    // Where a `%` that escapes nothing went in `out`.
    let mut stray = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(hi), Some(lo)) => {
                    let c = hi << 4 | lo;
                    if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                        out.push(c);
                    } else {
                        out.push(b'%');
                        out.push(bytes[i + 1].to_ascii_uppercase());
                        out.push(bytes[i + 2].to_ascii_uppercase());
                    }
                    i += 3;
                    continue;
                }
                _ => {
                    stray.push(out.len());
                    out.push(b'%');
                }
            },
            b'\\' => out.push(b'/'),
            b => out.push(b),
        }
        i += 1;
    }
    escape_stray(out, &stray)
}

/// Escapes (`%25`) each stray `%` of `out` (at `stray`) that decoding has
/// put in front of two hex digits, so that it does not become an escape in
/// the next decode.
fn escape_stray(out: Vec<u8>, stray: &[usize]) -> Vec<u8> {
    let is_escape = |at: usize| {
        (out.get(at + 1).copied().and_then(hex))
            .and(out.get(at + 2).copied().and_then(hex))
            .is_some()
    };
    if !stray.iter().any(|&at| is_escape(at)) {
        return out;
    }
    let mut fixed = Vec::with_capacity(out.len() + 2 * stray.len());
    let mut from = 0;
    for &at in stray.iter().filter(|&&at| is_escape(at)) {
        fixed.extend_from_slice(&out[from..=at]);
        fixed.extend_from_slice(b"25");
        from = at + 1;
    }
    fixed.extend_from_slice(&out[from..]);
    fixed
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    fn n(path: &str) -> String {
        normalize(path, false).unwrap_or_else(|| path.to_string())
    }

    #[test]
    fn dot_segments_are_removed_as_rfc_3986_does() {
        // RFC 3986, section 5.4's examples that are paths.
        assert_eq!(n("/a/b/c/./../../g"), "/a/g");
        assert_eq!(n("/a/b/c/../../../g"), "/g");
        assert_eq!(n("/a/b/c/../../../../g"), "/g");
        assert_eq!(n("/public/../admin"), "/admin");
        assert_eq!(n("/./admin"), "/admin");
        assert_eq!(n("/a/."), "/a/");
        assert_eq!(n("/a/.."), "/");
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/a/b/"), "/a/b/");
        // Dots that are part of a name stay.
        assert_eq!(normalize("/static/app.min.js", false), None);
        assert_eq!(normalize("/a/.well-known/x", false), None);
        assert_eq!(normalize("/a/..b/.../c", false), None);
    }

    #[test]
    fn a_stray_percent_that_decoding_would_make_an_escape_is_escaped() {
        // As Envoy 1.40 with normalize_path forwards them (checked side by side).
        assert_eq!(n("/a/%%32e%%32e/admin"), "/a/%252e%252e/admin");
        assert_eq!(n("/x/%2%65%2e/y"), "/x/%252e./y");
        assert_eq!(n("/%%%34%31"), "/%%2541");
        // Strays that stay strays are left as they came.
        assert_eq!(n("/%%41"), "/%A");
        assert_eq!(n("/100%"), "/100%");
        assert_eq!(n("/a%zz/b"), "/a%zz/b");
        for path in ["/a/%%32e%%32e/admin", "/x/%2%65%2e/y", "/%%41", "/%%%34%31"] {
            assert_eq!(
                normalize(&n(path), false),
                None,
                "{path}: not a fixed point"
            );
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_kept_in_upper_case() {
        assert_eq!(n("/%61dmin"), "/admin");
        assert_eq!(n("/x/%2e%2e/admin"), "/admin");
        assert_eq!(n("/x/%2E./admin"), "/admin");
        assert_eq!(n("/%7efoo"), "/~foo");
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/x/..%2Fadmin"), "/x/..%2Fadmin");
        assert_eq!(n("/a%20b"), "/a%20b");
        // Not an escape: left as it is.
        assert_eq!(n("/100%"), "/100%");
        assert_eq!(n("/a%zz"), "/a%zz");
        assert_eq!(normalize("/a%20b", false), None);
    }

    #[test]
    fn backslashes_are_separators() {
        assert_eq!(n("/public\\..\\admin"), "/admin");
        assert_eq!(n("/a\\b"), "/a/b");
    }

    #[test]
    fn slashes_merge_only_when_asked() {
        assert_eq!(normalize("//admin", false), None);
        assert_eq!(normalize("/a//b", false), None);
        assert_eq!(normalize("//admin", true).as_deref(), Some("/admin"));
        assert_eq!(normalize("/a///b//", true).as_deref(), Some("/a/b/"));
        assert_eq!(normalize("/a/b/", true), None);
        assert_eq!(normalize("//", true).as_deref(), Some("/"));
    }

    #[test]
    fn normal_paths_and_non_paths_are_left_alone() {
        for p in ["/", "/api/orders", "/a-b_c~d", "*", "/a/b.c/d"] {
            assert_eq!(normalize(p, true), None, "{p}");
        }
    }
}
