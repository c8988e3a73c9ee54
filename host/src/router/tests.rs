use std::path::Path;

use http::{HeaderMap, HeaderValue, Method};

use super::*;
use crate::config::Config;

fn router(routes: &str) -> Router {
    let text = format!(
        "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\n[[listener]]\nname = \"m\"\nlisten = \"127.0.0.1:2\"\n{routes}"
    );
    Router::new(
        Config::from_toml(&text, "t", Path::new("."))
            .unwrap()
            .routes,
    )
}

fn get<'a>(
    r: &'a Router,
    host: &str,
    path_and_query: &str,
    headers: &HeaderMap,
) -> Option<&'a str> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let req = RequestView {
        listener: "l",
        method: &Method::GET,
        host,
        path,
        query,
        headers,
    };
    r.route(&req).map(|r| r.name.as_str())
}

const ROUTES: &str = r#"
[[route]]
name = "exact"
match = { path = "/exact" }
echo = true
[[route]]
name = "wild-host"
match = { host = "*.example.com", prefix = "/" }
echo = true
[[route]]
name = "host"
match = { host = "api.test", prefix = "/" }
echo = true
[[route]]
name = "hdr"
match = { prefix = "/h", headers = [{ name = "x-env", exact = "canary" }] }
echo = true
[[route]]
name = "hdr-present"
match = { prefix = "/h", headers = [{ name = "x-debug", present = true }] }
echo = true
[[route]]
name = "hdr-regex"
match = { prefix = "/h", headers = [{ name = "x-ver", regex = "^v[0-9]+$" }] }
echo = true
[[route]]
name = "query"
match = { prefix = "/q", query = [{ name = "v", exact = "2" }] }
echo = true
[[route]]
name = "regex"
match = { regex = "^/items/[0-9]+$" }
echo = true
[[route]]
name = "post-only"
match = { prefix = "/p", methods = ["POST"] }
echo = true
[[route]]
name = "other-listener"
listeners = ["m"]
match = { prefix = "/m" }
echo = true
[[route]]
name = "api"
match = { prefix = "/api" }
echo = true
[[route]]
name = "fallback"
echo = true
"#;

#[test]
fn each_condition_selects_its_route() {
    let r = router(ROUTES);
    let none = HeaderMap::new();
    assert_eq!(get(&r, "x", "/exact", &none), Some("exact"));
    assert_eq!(get(&r, "x", "/exact/more", &none), Some("fallback"));
    assert_eq!(get(&r, "a.example.com", "/exact", &none), Some("exact"));
    assert_eq!(get(&r, "A.Example.COM", "/z", &none), Some("wild-host"));
    assert_eq!(get(&r, "example.com", "/z", &none), Some("fallback"));
    assert_eq!(get(&r, "API.test", "/z", &none), Some("host"));
    let mut h = HeaderMap::new();
    h.insert("x-env", HeaderValue::from_static("canary"));
    assert_eq!(get(&r, "x", "/h", &h), Some("hdr"));
    let mut h = HeaderMap::new();
    h.insert("x-debug", HeaderValue::from_static(""));
    assert_eq!(get(&r, "x", "/h", &h), Some("hdr-present"));
    let mut h = HeaderMap::new();
    h.insert("x-ver", HeaderValue::from_static("v12"));
    assert_eq!(get(&r, "x", "/h", &h), Some("hdr-regex"));
    h.insert("x-ver", HeaderValue::from_static("v1x"));
    assert_eq!(get(&r, "x", "/h", &h), Some("fallback"));
    assert_eq!(get(&r, "x", "/q?a=1&v=2", &none), Some("query"));
    assert_eq!(get(&r, "x", "/q?v=3", &none), Some("fallback"));
    assert_eq!(get(&r, "x", "/items/42", &none), Some("regex"));
    assert_eq!(get(&r, "x", "/items/4x", &none), Some("fallback"));
    assert_eq!(get(&r, "x", "/p", &none), Some("fallback"));
    assert_eq!(get(&r, "x", "/m", &none), Some("fallback"));
    assert_eq!(get(&r, "x", "/apiv2", &none), Some("api"));
}

#[test]
fn first_match_wins_across_index_and_regex_routes() {
    let r = router(
        r#"
[[route]]
name = "long"
match = { prefix = "/a/b/c" }
echo = true
[[route]]
name = "re"
match = { regex = "^/a" }
echo = true
[[route]]
name = "short"
match = { prefix = "/a" }
echo = true
"#,
    );
    let none = HeaderMap::new();
    assert_eq!(get(&r, "x", "/a/b/c/d", &none), Some("long"));
    assert_eq!(get(&r, "x", "/a/b", &none), Some("re"));
    assert_eq!(get(&r, "x", "/b", &none), None);
}

#[test]
fn methods_filter() {
    let r = router(ROUTES);
    let none = HeaderMap::new();
    let req = RequestView {
        listener: "l",
        method: &Method::POST,
        host: "x",
        path: "/p",
        query: None,
        headers: &none,
    };
    assert_eq!(r.route(&req).unwrap().name, "post-only");
    let req = RequestView {
        listener: "m",
        ..req
    };
    assert_eq!(
        r.route(&RequestView { path: "/m", ..req }).unwrap().name,
        "other-listener"
    );
}
