//! Route matching: the router's indexes (exact hosts, a trie of literal
//! path prefixes, the literal start of anchored regexes) must pick the
//! route a plain first-match scan of the same routes picks, for any routes
//! that validate and any request.

use std::path::Path;

use arbitrary::{Result, Unstructured};
use http::{HeaderMap, HeaderValue, Method};
use weir::config::Config;
use weir::router::{RequestView, Router, matches_request};

const LISTENERS: &[&str] = &["l0", "l1"];
const HOSTS: &[&str] = &[
    "a.example.com",
    "A.Example.COM",
    "*.example.com",
    "*.EXAMPLE.com",
    "example.com",
    "b.example.com",
    "localhost",
];
const REQUEST_HOSTS: &[&str] = &[
    "a.example.com",
    "A.EXAMPLE.com",
    "example.com",
    "b.example.com",
    "x.a.example.com",
    "localhost",
    "",
    ".example.com",
    "example.com.",
];
const PATH_PIECES: &[&str] = &[
    "/", "a", "b", "/a", "/ab", "/a/", "A", "%2F", ".", "..", "é", "-", "/users", "/v1", "0", "*",
];
const REGEX_PIECES: &[&str] = &[
    "^", "/", "a", "b", "A", "[ab]", "+", "*", "?", "{2}", "{0,1}", "(a|b)", "|", "\\.", ".", "$",
    "(?i)", "\\d", "[0-9]", "/users/", "é", "(?:", ")", "\\/", "^/", "\\", "a\\b",
];
const METHODS: &[&str] = &["GET", "POST", "HEAD", "PUT", "DELETE"];
const VALUES: &[&str] = &["1", "2", "a", "", "1,2"];
const QUERIES: &[&str] = &["", "k=1", "k=2&k=1", "k", "x=1&k=", "k=a", "kk=1"];

/// One input: a few routes, then requests matched against them.
pub fn run(data: &[u8]) {
    let _ = case(&mut Unstructured::new(data));
}

fn case(u: &mut Unstructured<'_>) -> Result<()> {
    let mut text = String::from(
        "[[listener]]\nname = \"l0\"\nlisten = \"127.0.0.1:1\"\n\
         [[listener]]\nname = \"l1\"\nlisten = \"127.0.0.1:2\"\n\
         [[cluster]]\nname = \"c\"\nendpoints = [\"127.0.0.1:1\"]\n",
    );
    let routes = u.int_in_range(1..=8)?;
    for i in 0..routes {
        route(u, i, &mut text)?;
    }
    let Ok(config) = Config::from_toml(&text, "fuzz.toml", Path::new("/nonexistent/weir-fuzz"))
    else {
        return Ok(());
    };
    let router = Router::new(config.routes.clone());
    for _ in 0..u.int_in_range(1..=8)? {
        let listener = *u.choose(LISTENERS)?;
        let method = Method::from_bytes(u.choose(METHODS)?.as_bytes()).expect("a method");
        let host = *u.choose(REQUEST_HOSTS)?;
        let path = pieces(u, PATH_PIECES, 6)?;
        let query = if u.arbitrary()? {
            Some(*u.choose(QUERIES)?)
        } else {
            None
        };
        let mut headers = HeaderMap::new();
        for _ in 0..u.int_in_range(0..=2)? {
            headers.append("x-h", HeaderValue::from_static(u.choose(VALUES)?));
        }
        let view = RequestView {
            listener,
            method: &method,
            host,
            path: &path,
            query,
            headers: &headers,
        };
        let scan = config.routes.iter().position(|r| {
            (r.listeners.is_empty() || r.listeners.iter().any(|l| l == listener))
                && matches_request(&r.matcher, &view)
        });
        assert_eq!(router.find(&view), scan, "{view:?}\n{text}");
    }
    Ok(())
}

/// One `[[route]]` with some of every kind of condition.
fn route(u: &mut Unstructured<'_>, i: usize, text: &mut String) -> Result<()> {
    let quote = |s: &str| toml::Value::from(s).to_string();
    text.push_str(&format!("[[route]]\nname = \"r{i}\"\ncluster = \"c\"\n"));
    if u.ratio(1, 4)? {
        text.push_str(&format!("listeners = [{}]\n", quote(u.choose(LISTENERS)?)));
    }
    text.push_str("[route.match]\n");
    if u.ratio(1, 3)? {
        text.push_str(&format!("host = {}\n", quote(u.choose(HOSTS)?)));
    }
    match u.int_in_range(0..=3)? {
        0 => {}
        1 => text.push_str(&format!("path = {}\n", quote(&pieces(u, PATH_PIECES, 4)?))),
        2 => text.push_str(&format!(
            "prefix = {}\n",
            quote(&pieces(u, PATH_PIECES, 4)?)
        )),
        _ => text.push_str(&format!(
            "regex = {}\n",
            quote(&pieces(u, REGEX_PIECES, 6)?)
        )),
    }
    if u.ratio(1, 4)? {
        text.push_str(&format!("methods = [{}]\n", quote(u.choose(METHODS)?)));
    }
    for (table, name) in [("headers", "x-h"), ("query", "k")] {
        if u.ratio(1, 4)? {
            let value = match u.int_in_range(0..=2)? {
                0 => format!("exact = {}", quote(u.choose(VALUES)?)),
                1 => format!("present = {}", u.arbitrary::<bool>()?),
                _ => format!("regex = {}", quote(&pieces(u, REGEX_PIECES, 3)?)),
            };
            text.push_str(&format!(
                "[[route.match.{table}]]\nname = \"{name}\"\n{value}\n"
            ));
        }
    }
    Ok(())
}

/// Up to `most` pieces joined.
fn pieces(u: &mut Unstructured<'_>, from: &[&str], most: usize) -> Result<String> {
    let mut s = String::new();
    for _ in 0..u.int_in_range(1..=most)? {
        s.push_str(u.choose(from)?);
    }
    Ok(s)
}
