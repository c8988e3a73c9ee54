//! Route matching over 1,000 routes (target: under 1 µs per match for prefix routes).
#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use weir::config::Config;
use weir::router::{RequestView, Router};

fn router(routes: usize, kind: &str) -> Router {
    let mut text = String::from("[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\n");
    for i in 0..routes {
        let m = match kind {
            "prefix" => format!("{{ prefix = \"/service-{i}/\" }}"),
            "host" => format!("{{ host = \"svc{i}.example.com\", prefix = \"/\" }}"),
            _ => format!("{{ regex = \"^/service-{i}/[a-z]+$\" }}"),
        };
        text.push_str(&format!(
            "[[route]]\nname = \"r{i}\"\nmatch = {m}\necho = true\n"
        ));
    }
    Router::new(
        Config::from_toml(&text, "bench", ".".as_ref())
            .unwrap()
            .routes,
    )
}

fn bench(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let mut g = c.benchmark_group("route_match_1000");
    for (kind, host, path) in [
        ("prefix", "api.example.com", "/service-997/users/42"),
        ("host", "svc997.example.com", "/users/42"),
        ("regex", "api.example.com", "/service-997/users"),
    ] {
        let r = router(1000, kind);
        let req = RequestView {
            listener: "l",
            method: &Method::GET,
            host,
            path,
            query: None,
            headers: &headers,
        };
        assert_eq!(r.route(&req).unwrap().name, "r997");
        g.bench_function(kind, |b| b.iter(|| black_box(r.find(black_box(&req)))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
