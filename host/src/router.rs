//! Route matching: pure, no I/O. Routes are tried in order and the first
//! match wins; a prefix index keeps that fast over thousands of routes.
//!
//! ```
//! use weir::config::Config;
//! use weir::router::{Router, RequestView};
//! let config = Config::from_toml(r#"
//!     [[listener]]
//!     name = "l"
//!     listen = "127.0.0.1:8080"
//!     [[route]]
//!     name = "hello"
//!     match = { prefix = "/hello" }
//!     direct_response = { body = "hi" }
//! "#, "doc", ".".as_ref()).unwrap();
//! let router = Router::new(config.routes);
//! let headers = http::HeaderMap::new();
//! let req = RequestView { listener: "l", method: &http::Method::GET, host: "x", path: "/hello/you", query: None, headers: &headers };
//! assert_eq!(router.route(&req).unwrap().name, "hello");
//! ```

mod index;
mod split;

use std::collections::HashMap;

use http::{HeaderMap, Method};

use crate::config::{HostMatch, KeyMatch, PathMatch, RouteConfig, RouteMatch, ValueMatch};
use index::PrefixIndex;
pub use split::pick_weighted;

/// What the router looks at in a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// The listener the request came in on.
    pub listener: &'a str,
    /// Method.
    pub method: &'a Method,
    /// Host without port, as sent (compared case-insensitively).
    pub host: &'a str,
    /// Path without query.
    pub path: &'a str,
    /// Raw query string.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// An ordered set of routes.
#[derive(Debug)]
pub struct Router {
    routes: Vec<RouteConfig>,
    /// Routes without an exact host, by literal path prefix.
    index: PrefixIndex,
    /// Routes with an exact host, by host (lower case).
    by_host: HashMap<String, Vec<u32>>,
}

impl Router {
    /// Builds a router over `routes`, in match order.
    pub fn new(routes: Vec<RouteConfig>) -> Router {
        let mut by_host: HashMap<String, Vec<u32>> = HashMap::new();
        for (i, r) in routes.iter().enumerate() {
            if let Some(HostMatch::Exact(h)) = &r.matcher.host {
                by_host.entry(h.clone()).or_default().push(i as u32);
            }
        }
        let index = PrefixIndex::new(routes.iter().map(|r| {
            match (&r.matcher.host, &r.matcher.path) {
                (Some(HostMatch::Exact(_)), _) => index::Literal::Elsewhere,
                (_, Some(PathMatch::Exact(p) | PathMatch::Prefix(p))) => {
                    index::Literal::Prefix(p.clone())
                }
                (_, Some(PathMatch::Regex(r))) => index::regex_literal(r.as_str())
                    .map_or(index::Literal::None, index::Literal::Prefix),
                (_, None) => index::Literal::None,
            }
        }));
        Router {
            routes,
            index,
            by_host,
        }
    }

    /// The first route that matches `req`.
    pub fn route(&self, req: &RequestView<'_>) -> Option<&RouteConfig> {
        self.find(req).map(|i| &self.routes[i])
    }

    /// The index of the first route that matches `req`.
    pub fn find(&self, req: &RequestView<'_>) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut visit = |list: &[u32]| {
            for &i in list {
                let i = i as usize;
                if best.is_some_and(|b| i >= b) {
                    break;
                }
                if route_matches(&self.routes[i], req) {
                    best = Some(i);
                    break;
                }
            }
        };
        if !self.by_host.is_empty() {
            let list = if req.host.bytes().any(|b| b.is_ascii_uppercase()) {
                self.by_host.get(&req.host.to_ascii_lowercase())
            } else {
                self.by_host.get(req.host)
            };
            if let Some(list) = list {
                visit(list);
            }
        }
        self.index.candidates(req.path, &mut visit);
        best
    }

    /// All routes, in order.
    pub fn routes(&self) -> &[RouteConfig] {
        &self.routes
    }
}

fn route_matches(route: &RouteConfig, req: &RequestView<'_>) -> bool {
    (route.listeners.is_empty() || route.listeners.iter().any(|l| l == req.listener))
        && matches_request(&route.matcher, req)
}

/// Whether `m` holds for `req`.
pub fn matches_request(m: &RouteMatch, req: &RequestView<'_>) -> bool {
    let path_ok = match &m.path {
        None => true,
        Some(PathMatch::Exact(p)) => req.path == p,
        Some(PathMatch::Prefix(p)) => req.path.starts_with(p.as_str()),
        Some(PathMatch::Regex(r)) => r.is_match(req.path),
    };
    let host_ok = match &m.host {
        None => true,
        Some(HostMatch::Exact(h)) => req.host.eq_ignore_ascii_case(h),
        Some(HostMatch::Suffix(s)) => {
            req.host.len() > s.len()
                && req.host.as_bytes()[req.host.len() - s.len()..]
                    .eq_ignore_ascii_case(s.as_bytes())
        }
    };
    path_ok
        && host_ok
        && (m.methods.is_empty() || m.methods.contains(req.method))
        && m.headers.iter().all(|k| header_matches(k, req.headers))
        && m.query.iter().all(|k| query_matches(k, req.query))
}

fn header_matches(k: &KeyMatch<http::HeaderName>, headers: &HeaderMap) -> bool {
    let mut values = headers
        .get_all(&k.name)
        .iter()
        .filter_map(|v| v.to_str().ok());
    match &k.value {
        ValueMatch::Present(want) => headers.contains_key(&k.name) == *want,
        ValueMatch::Exact(x) => values.any(|v| v == x),
        ValueMatch::Regex(r) => values.any(|v| r.is_match(v)),
    }
}

fn query_matches(k: &KeyMatch<String>, query: Option<&str>) -> bool {
    let mut values = query.unwrap_or("").split('&').filter_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (name == k.name).then_some(value)
    });
    match &k.value {
        ValueMatch::Present(want) => values.next().is_some() == *want,
        ValueMatch::Exact(x) => values.any(|v| v == x),
        ValueMatch::Regex(r) => values.any(|v| r.is_match(v)),
    }
}

#[cfg(test)]
mod tests;
