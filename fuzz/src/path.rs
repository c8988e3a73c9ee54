//! Path normalization: whatever a client sends, the normal form is a fixed
//! point. A second pass that changed it again would mean the path routes
//! and policies matched is not the path a service that decodes it once
//! more resolves (`/a/%%32e%%32e/admin` must not become `/a/%2e%2e/admin`).

use weir::proxy::path::{normalize, normalize_uri};

/// One input: the first byte picks `merge_slashes`, the rest is the path.
pub fn run(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let merge = flags & 1 == 1;
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    if let Some(normal) = normalize(path, merge) {
        check_normal(path, &normal, merge);
    }
    // Through a parsed URI, as requests arrive.
    if let Ok(mut uri) = path.parse::<http::Uri>() {
        let query = uri.query().map(str::to_owned);
        if normalize_uri(&mut uri, merge).is_ok() {
            if uri.path().starts_with('/') {
                check_normal(path, uri.path(), merge);
            }
            assert_eq!(uri.query(), query.as_deref(), "{path:?}: the query changed");
        }
    }
}

fn check_normal(input: &str, normal: &str, merge: bool) {
    assert!(
        normal.starts_with('/'),
        "{input:?} -> {normal:?}: not absolute"
    );
    assert_eq!(
        normalize(normal, merge),
        None,
        "{input:?} -> {normal:?}: not a fixed point (merge_slashes {merge})"
    );
    for segment in normal.split('/') {
        assert!(
            segment != "." && segment != "..",
            "{input:?} -> {normal:?}: a dot segment is left"
        );
    }
    if merge {
        assert!(
            !normal.contains("//"),
            "{input:?} -> {normal:?}: slashes not merged"
        );
    }
}
