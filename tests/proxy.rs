//! The proxy path through the real weir binary: routing, splits, balancing,
//! retries, timeouts, errors, limits, reload and drain.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Upstream, Weir};

fn cluster(name: &str, ups: &[&Upstream], extra: &str) -> String {
    let eps: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.addr)).collect();
    format!(
        "[[cluster]]\nname = \"{name}\"\nendpoints = [{}]\n{extra}\n\n",
        eps.join(", ")
    )
}

async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = client.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn routes_match_on_host_path_method_headers_and_query() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let config = format!(
        r#"{}{}
[[route]]
name = "exact"
match = {{ path = "/exact" }}
cluster = "b"

[[route]]
name = "wildcard-host"
match = {{ host = "*.b.test" }}
cluster = "b"

[[route]]
name = "regex"
match = {{ regex = "^/items/[0-9]+$" }}
cluster = "b"

[[route]]
name = "post"
match = {{ prefix = "/form", methods = ["POST"] }}
cluster = "b"

[[route]]
name = "header"
match = {{ prefix = "/h", headers = [{{ name = "x-canary", exact = "yes" }}] }}
cluster = "b"

[[route]]
name = "query"
match = {{ prefix = "/q", query = [{{ name = "beta", present = true }}] }}
cluster = "b"

[[route]]
name = "rewrite"
match = {{ prefix = "/api/v1/" }}
prefix_rewrite = "/v2/"
host_rewrite = "internal.svc"
request_headers = {{ set = {{ x-env = "test" }}, add = {{ x-added = "1" }}, remove = ["x-drop"] }}
response_headers = {{ set = {{ x-served-by = "weir" }}, remove = ["x-upstream"] }}
cluster = "a"

[[route]]
name = "direct"
match = {{ path = "/direct" }}
direct_response = {{ status = 418, body = "teapot", headers = {{ x-kind = "direct" }} }}

[[route]]
name = "redirect"
match = {{ prefix = "/old" }}
redirect = {{ status = 308, scheme = "https", host = "new.test", path = "/new" }}

[[route]]
name = "default"
cluster = "a"
"#,
        cluster("a", &[&a], ""),
        cluster("b", &[&b], "")
    );
    let w = Weir::start(&config).await;
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let up = |v: &Value| v["upstream"].as_str().unwrap().to_string();

    assert_eq!(up(&get_json(&c, &w.url("/exact")).await.1), "b");
    assert_eq!(up(&get_json(&c, &w.url("/exact/no")).await.1), "a");
    let r = c
        .get(w.url("/x"))
        .header("host", "api.b.test:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-upstream"], "b");
    assert_eq!(up(&get_json(&c, &w.url("/items/12")).await.1), "b");
    assert_eq!(up(&get_json(&c, &w.url("/items/12a")).await.1), "a");
    assert_eq!(
        c.post(w.url("/form")).send().await.unwrap().headers()["x-upstream"],
        "b"
    );
    assert_eq!(up(&get_json(&c, &w.url("/form")).await.1), "a");
    assert_eq!(
        c.get(w.url("/h"))
            .header("x-canary", "yes")
            .send()
            .await
            .unwrap()
            .headers()["x-upstream"],
        "b"
    );
    assert_eq!(
        c.get(w.url("/h"))
            .header("x-canary", "no")
            .send()
            .await
            .unwrap()
            .headers()["x-upstream"],
        "a"
    );
    assert_eq!(up(&get_json(&c, &w.url("/q?beta")).await.1), "b");
    assert_eq!(up(&get_json(&c, &w.url("/q?gamma=1")).await.1), "a");

    let r = c
        .get(w.url("/api/v1/users?id=7"))
        .header("x-drop", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-served-by"], "weir");
    assert!(r.headers().get("x-upstream").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["path"], "/v2/users");
    assert_eq!(v["query"], "id=7");
    assert_eq!(v["headers"]["host"], "internal.svc");
    assert_eq!(v["headers"]["x-env"], "test");
    assert_eq!(v["headers"]["x-added"], "1");
    assert!(v["headers"].get("x-drop").is_none());

    let r = c.get(w.url("/direct")).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.headers()["x-kind"].to_str().unwrap()),
        (418, "direct")
    );
    assert_eq!(r.text().await.unwrap(), "teapot");

    let r = c.get(w.url("/old/page?x=1")).send().await.unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "https://new.test/new?x=1");
}

#[tokio::test]
async fn forwarding_headers_are_set_and_hop_by_hop_removed() {
    let a = Upstream::start("a").await;
    let w = Weir::start(&format!(
        "{}[[route]]\nname = \"all\"\ncluster = \"a\"\n",
        cluster("a", &[&a], "")
    ))
    .await;
    let c = reqwest::Client::new();
    let r = c
        .get(w.url("/p"))
        .header("connection", "keep-alive, x-hop, x-forwarded-for")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let h = &v["headers"];
    // Naming x-forwarded-for in Connection does not take weir's entry away.
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    // The client is no trusted proxy: what it claims is replaced.
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], format!("127.0.0.1:{}", w.port));
    assert_eq!(h["x-request-id"].as_str().unwrap().len(), 36);
    assert!(h.get("x-hop").is_none() && h.get("keep-alive").is_none());

    // weir (hyper's HTTP/1.1 server) answered the client's Expect:
    // 100-continue, so the expectation goes no further, as in Envoy; the
    // proxy credentials are weir's; Trailer is end to end and goes on.
    let reply = raw_exchange(
        w.port,
        b"POST /p HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nProxy-Authorization: Basic d2Vpcg==\r\nTrailer: x-sum\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    let json = reply.split_once("\r\n\r\n{").map(|(_, j)| format!("{{{j}"));
    let v: Value = serde_json::from_str(json.as_deref().unwrap_or("")).expect(&reply);
    let h = &v["headers"];
    assert_eq!(v["body"], "abc", "{reply}");
    assert!(h.get("expect").is_none(), "{reply}");
    assert!(h.get("proxy-authorization").is_none(), "{reply}");
    assert_eq!(h["trailer"], "x-sum", "{reply}");
    let r = c
        .get(w.url("/p"))
        .header("x-request-id", "given")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["headers"]["x-request-id"],
        "given"
    );

    // Behind a trusted proxy (a load balancer that terminated TLS), the
    // proto and host it forwards are kept.
    let (admin, port) = (support::free_port(), support::free_port());
    let behind = Weir::start_with(
        admin,
        port,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:{port}\"\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\"]\n{}[[route]]\nname = \"all\"\ncluster = \"a\"\n",
            cluster("a", &[&a], "")
        ),
    )
    .await;
    let r = c
        .get(behind.url("/p"))
        .header("x-forwarded-host", "shop.example")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["x-forwarded-host"], "shop.example", "{v}");
    assert_eq!(v["headers"]["x-forwarded-proto"], "https", "{v}");
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1", "{v}");
}

#[tokio::test]
async fn weighted_split_is_within_five_percent_and_sticky_when_keyed() {
    let (v1, v2) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let config = format!(
        r#"{}{}
[[route]]
name = "sticky"
match = {{ prefix = "/sticky" }}
weighted = [{{ cluster = "v1", weight = 50 }}, {{ cluster = "v2", weight = 50 }}]
sticky = {{ header = "x-user" }}

[[route]]
name = "split"
weighted = [{{ cluster = "v1", weight = 90 }}, {{ cluster = "v2", weight = 10 }}]
"#,
        cluster("v1", &[&v1], ""),
        cluster("v2", &[&v2], "")
    );
    let w = Weir::start(&config).await;
    let c = reqwest::Client::new();
    let mut canary = 0;
    for _ in 0..2000 {
        let r = c.get(w.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        if r.headers()["x-upstream"] == "v2" {
            canary += 1;
        }
    }
    assert!(
        (100..=300).contains(&canary),
        "10% ± 5% of 2000 is 100..=300, got {canary}"
    );
    for user in 0..20 {
        let first = c
            .get(w.url("/sticky"))
            .header("x-user", user.to_string())
            .send()
            .await
            .unwrap()
            .headers()["x-upstream"]
            .clone();
        for _ in 0..5 {
            let again = c
                .get(w.url("/sticky"))
                .header("x-user", user.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(again.headers()["x-upstream"], first, "user {user} moved");
        }
    }
}

#[tokio::test]
async fn load_balancing_policies_spread_and_hash_sticks() {
    let ups = [
        Upstream::start("e0").await,
        Upstream::start("e1").await,
        Upstream::start("e2").await,
    ];
    let refs: Vec<&Upstream> = ups.iter().collect();
    let config = format!(
        r#"{}{}{}{}
[[route]]
name = "rr"
match = {{ prefix = "/rr" }}
cluster = "rr"
[[route]]
name = "lr"
match = {{ prefix = "/lr" }}
cluster = "lr"
[[route]]
name = "random"
match = {{ prefix = "/random" }}
cluster = "random"
[[route]]
name = "ring"
cluster = "ring"
"#,
        cluster("rr", &refs, "lb = \"round_robin\""),
        cluster("lr", &refs, "lb = \"least_request\""),
        cluster("random", &refs, "lb = \"random\""),
        cluster(
            "ring",
            &refs,
            "lb = \"maglev\"\nhash_on = { header = \"x-user\" }"
        ),
    );
    let w = Weir::start(&config).await;
    let c = reqwest::Client::new();
    for prefix in ["/rr", "/lr", "/random"] {
        let mut counts = std::collections::HashMap::new();
        for _ in 0..150 {
            let r = c.get(w.url(prefix)).send().await.unwrap();
            *counts
                .entry(r.headers()["x-upstream"].to_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3, "{prefix}: {counts:?}");
        assert!(counts.values().all(|n| *n >= 20), "{prefix}: {counts:?}");
        if prefix == "/rr" {
            assert!(
                counts.values().all(|n| *n == 50),
                "round robin is exact: {counts:?}"
            );
        }
    }
    let mut seen = std::collections::HashSet::new();
    for user in 0..30 {
        let first = c
            .get(w.url("/"))
            .header("x-user", user.to_string())
            .send()
            .await
            .unwrap()
            .headers()["x-upstream"]
            .clone();
        seen.insert(first.clone());
        let again = c
            .get(w.url("/"))
            .header("x-user", user.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(again.headers()["x-upstream"], first);
    }
    assert!(seen.len() >= 2, "30 users all hashed to one endpoint");
}

#[tokio::test]
async fn retries_recover_from_failing_upstreams() {
    let a = Upstream::start("a").await;
    let dead = format!("127.0.0.1:{}", support::free_port());
    let config = format!(
        r#"{}
[[cluster]]
name = "half-dead"
endpoints = ["{dead}", "{}"]

[[route]]
name = "connect"
match = {{ prefix = "/connect" }}
cluster = "half-dead"
retry = {{ attempts = 3, on = ["connect-failure"], backoff_base = "1ms" }}

[[route]]
name = "no-retry"
match = {{ prefix = "/noretry" }}
cluster = "half-dead"

[[route]]
name = "status"
cluster = "a"
retry = {{ attempts = 3, on = ["retriable-status"], statuses = [503], backoff_base = "1ms" }}
"#,
        cluster("a", &[&a], ""),
        a.addr
    );
    let w = Weir::start(&config).await;
    let c = reqwest::Client::new();
    assert_eq!(
        c.get(w.url("/flaky/k1/2")).send().await.unwrap().status(),
        200,
        "two 503s then success"
    );
    assert_eq!(
        c.get(w.url("/flaky/k2/3")).send().await.unwrap().status(),
        503,
        "three attempts, all 503"
    );
    assert_eq!(
        c.post(w.url("/flaky/k3/1"))
            .body("x")
            .send()
            .await
            .unwrap()
            .status(),
        503,
        "POST is not retried by default"
    );
    for _ in 0..10 {
        assert_eq!(c.get(w.url("/connect")).send().await.unwrap().status(), 200);
    }
    let mut failed = 0;
    for _ in 0..10 {
        let r = c.get(w.url("/noretry")).send().await.unwrap();
        if r.status() == 502 {
            let body = r.text().await.unwrap();
            assert!(
                body.contains("upstream connect error")
                    && body.contains("\"half-dead\"")
                    && body.contains("\"no-retry\""),
                "{body}"
            );
            failed += 1;
        }
    }
    assert_eq!(
        failed, 5,
        "round robin sends every other request to the dead endpoint"
    );
}

#[tokio::test]
async fn timeouts_answer_504_and_per_try_timeouts_retry() {
    let a = Upstream::start("a").await;
    let config = format!(
        r#"{}
[[route]]
name = "slow"
match = {{ prefix = "/delay/2000" }}
cluster = "a"
timeout = "300ms"

[[route]]
name = "per-try"
cluster = "a"
timeout = "5s"
retry = {{ attempts = 2, per_try_timeout = "200ms", on = ["5xx"], backoff_base = "1ms" }}
"#,
        cluster("a", &[&a], "")
    );
    let w = Weir::start(&config).await;
    let c = reqwest::Client::new();
    let t = std::time::Instant::now();
    let r = c.get(w.url("/delay/2000")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(t.elapsed() < Duration::from_millis(1500));
    let body = r.text().await.unwrap();
    assert!(
        body.contains("upstream timeout") && body.contains("\"slow\""),
        "{body}"
    );
    let before = a.hits();
    let r = c.get(w.url("/delay/1000")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(a.hits() - before, 2, "the per-try timeout was retried once");
}

#[tokio::test]
async fn unusable_clusters_answer_503_and_resets_502() {
    let a = Upstream::start("a").await;
    let config = format!(
        r#"{}
[[cluster]]
name = "nowhere"
endpoints = ["no-such-host.invalid:80"]

[[route]]
name = "nowhere"
match = {{ prefix = "/nowhere" }}
cluster = "nowhere"

[[route]]
name = "a"
cluster = "a"
"#,
        cluster("a", &[&a], "")
    );
    let w = Weir::start(&config).await;
    let r = reqwest::get(w.url("/nowhere")).await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("no healthy endpoint in cluster \"nowhere\"")
    );
    let r = reqwest::get(w.url("/reset")).await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("upstream reset"));
    let r = reqwest::get(w.url("/fine")).await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "weir keeps serving after upstream failures"
    );
}

/// weir with one listener whose settings are `listener_lines` (TOML lines of
/// its table) and one route to one upstream, which the caller keeps alive.
async fn weir_with_listener(listener_lines: &str) -> (Upstream, Weir) {
    let a = Upstream::start("a").await;
    let config = format!(
        "{}[[route]]\nname = \"a\"\ncluster = \"a\"\n",
        cluster("a", &[&a], "")
    );
    let (admin, port) = (support::free_port(), support::free_port());
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:{port}\"\n{listener_lines}{config}"
    );
    (a, Weir::start_with(admin, port, &text).await)
}

#[tokio::test]
async fn request_limits_answer_431_413_and_400() {
    let (_a, w) = weir_with_listener(
        "max_header_size = \"8KiB\"\nmax_headers = 20\nmax_request_body = \"1KiB\"\nheader_read_timeout = \"500ms\"\nidle_timeout = \"1s\"\n",
    )
    .await;
    let c = reqwest::Client::new();
    let r = c
        .get(w.url("/"))
        .header("x-big", "v".repeat(9000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let mut req = c.get(w.url("/"));
    for i in 0..30 {
        req = req.header(format!("x-h{i}"), "1");
    }
    assert_eq!(req.send().await.unwrap().status(), 431);
    let r = c
        .post(w.url("/"))
        .body("x".repeat(2000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("1024 bytes"));
    let chunks = futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 600]))),
    );
    let r = c
        .post(w.url("/"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "a chunked body over the limit");
    assert_eq!(
        c.post(w.url("/"))
            .body("small")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Malformed request line: 400 from the HTTP layer, connection closed.
    let reply = raw_exchange(w.port, b"GARBAGE\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    // Slowloris: half a request head, then nothing. The connection is closed by header_read_timeout.
    let t = std::time::Instant::now();
    let _ = raw_exchange(w.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "slow client held the connection for {:?}",
        t.elapsed()
    );
    // An idle connection is closed by idle_timeout.
    let t = std::time::Instant::now();
    let _ = raw_exchange(w.port, b"").await;
    assert!(t.elapsed() < Duration::from_secs(4));
    assert_eq!(
        c.get(w.url("/")).send().await.unwrap().status(),
        200,
        "still serving"
    );
}

/// header_read_timeout times each request head from its first byte (from the
/// connection's start for the first one), as nginx's client_header_timeout
/// and Envoy's request_headers_timeout do; an idle keep-alive connection is
/// idle_timeout's. hyper's own header timer, used before, ran from the end of
/// the previous head and so closed idle keep-alive connections after
/// header_read_timeout.
#[tokio::test]
async fn header_read_timeout_times_heads_and_leaves_idle_connections_to_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_a, w) =
        weir_with_listener("header_read_timeout = \"400ms\"\nidle_timeout = \"30s\"\n").await;
    let port = w.port;
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    // Reads one response (its head and its short body) from a keep-alive connection.
    async fn response(s: &mut tokio::net::TcpStream) -> String {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("a response within 5 s")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    }
    // Reads until the server closes the connection; how long that took.
    async fn closed_after(s: &mut tokio::net::TcpStream) -> Duration {
        let t = std::time::Instant::now();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("the server closes the connection within 10 s")
            .ok();
        t.elapsed()
    }

    // Idle for five header timeouts between two requests: still open.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(request).await.unwrap();
    assert!(response(&mut s).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    s.write_all(request).await.unwrap();
    let second = response(&mut s).await;
    assert!(
        second.starts_with("HTTP/1.1 200"),
        "an idle keep-alive connection was closed before idle_timeout: {second:?}"
    );

    // Then half a head, sent a byte at a time: closed by the head clock.
    let t = std::time::Instant::now();
    for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = t.elapsed() + closed_after(&mut s).await;
    assert!(
        held < Duration::from_millis(2500),
        "a slow head held the connection for {held:?}"
    );

    // A connection that sends nothing is closed as its first head is late.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let held = closed_after(&mut s).await;
    assert!(
        held >= Duration::from_millis(350) && held < Duration::from_millis(2500),
        "a silent connection was held {held:?}"
    );

    // HTTP/2 (h2c): frames between requests are no head; an idle connection,
    // before its first request and between requests, is idle_timeout's.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for pause in [1500, 1500] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let req = http::Request::get(w.url("/"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let r = h2
            .send_request(req)
            .await
            .expect("the idle HTTP/2 connection is still open");
        assert_eq!(r.status(), 200);
    }
    let c = reqwest::Client::new();
    assert_eq!(c.get(w.url("/")).send().await.unwrap().status(), 200);
}

/// The JSON body of a raw HTTP/1.1 reply (the test upstream answers with
/// a content-length, so the body is what follows the head).
fn reply_json(reply: &str) -> Value {
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {reply}"))
}

/// Paths are normalized (RFC 3986) before routing, so a policy route on
/// `/admin/` cannot be walked around with dot segments, escapes or
/// backslashes, and the upstream receives the path the route matched; the
/// query is left as it came. `merge_slashes` folds `//`; `normalize_path =
/// false` passes paths through untouched.
#[tokio::test]
async fn paths_are_normalized_before_routing_and_forwarding() {
    let a = Upstream::start("a").await;
    let (admin, port, merging, raw) = (
        support::free_port(),
        support::free_port(),
        support::free_port(),
        support::free_port(),
    );
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:{port}\"\n\
         [[listener]]\nname = \"merging\"\nlisten = \"127.0.0.1:{merging}\"\nmerge_slashes = true\n\
         [[listener]]\nname = \"raw\"\nlisten = \"127.0.0.1:{raw}\"\nnormalize_path = false\n\
         {}[[route]]\nname = \"admin\"\nmatch = {{ prefix = \"/admin/\" }}\n\
         direct_response = {{ status = 401, body = \"admin needs a key\\n\" }}\n\
         [[route]]\nname = \"a\"\ncluster = \"a\"\n",
        cluster("a", &[&a], "")
    );
    let _weir = Weir::start_with(admin, port, &text).await;
    let get = |port: u16, path: &str| {
        let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        async move { raw_exchange(port, head.as_bytes()).await }
    };
    for sneaky in [
        "/public/../admin/users",
        "/./admin/users",
        "/%61dmin/users",
        "/public/%2e%2e/admin/users",
        "/public/%2E./admin/users",
        "/public\\..\\admin/users",
        "/admin/x/../users",
    ] {
        let reply = get(port, sneaky).await;
        assert!(
            reply.starts_with("HTTP/1.1 401") && reply.contains("admin needs a key"),
            "{sneaky} must take the admin route: {reply}"
        );
    }
    assert_eq!(a.hits(), 0, "no sneaky path reached the upstream");

    let doc = reply_json(&get(port, "/a/./b/../c/%7Ed%2fe?q=/../x&r=%61").await);
    assert_eq!(doc["path"], "/a/c/~d%2Fe", "{doc}");
    assert_eq!(
        doc["query"], "q=/../x&r=%61",
        "the query is left alone: {doc}"
    );
    let doc = reply_json(&get(port, "//admin/users").await);
    assert_eq!(
        doc["path"], "//admin/users",
        "slashes are kept unless merged: {doc}"
    );
    let doc = reply_json(&get(port, "/static/app.min.js").await);
    assert_eq!(doc["path"], "/static/app.min.js");

    let reply = get(merging, "//admin//users").await;
    assert!(reply.starts_with("HTTP/1.1 401"), "merged: {reply}");
    let doc = reply_json(&get(merging, "/a//b///c").await);
    assert_eq!(doc["path"], "/a/b/c", "{doc}");

    let doc = reply_json(&get(raw, "/public/../admin/users").await);
    assert_eq!(
        doc["path"], "/public/../admin/users",
        "normalize_path = false passes the path as it came: {doc}"
    );

    // HTTP/2 requests are normalized the same way.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(format!("http://127.0.0.1:{port}/public/%2e%2e/admin/users"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// Request heads that name their host ambiguously or wrongly are refused
/// before any route or upstream sees them, as RFC 9112 asks: no Host or two
/// Host headers in HTTP/1.1, a Host that is no host, userinfo in the target
/// and a target outside ASCII answer 400; a transfer coding weir cannot
/// decode and CONNECT answer 501 (Envoy answers 501 and 404). Each reply
/// names its cause and closes the connection.
#[tokio::test]
async fn ambiguous_or_unsupported_request_framing_is_refused() {
    let (a, w) = weir_with_listener("").await;
    let refused: [(&[u8], &str, &str); 10] = [
        (
            b"get /admin HTTP/1.1\r\nHost: a\r\n\r\n",
            "400",
            "method \"get\": methods are upper case",
        ),
        (
            b"Delete /admin HTTP/1.1\r\nHost: a\r\n\r\n",
            "400",
            "method \"Delete\"",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
            "400",
            "invalid Host header \"a/b\"",
        ),
        (
            b"GET http://user@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "400",
            "userinfo",
        ),
        (
            b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
            "400",
            "outside ASCII",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "400",
            "2 Host headers",
        ),
        (
            b"GET / HTTP/1.1\r\n\r\n",
            "400",
            "must carry a Host header",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "501",
            "transfer coding \"gzip\"",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "501",
            "applied twice",
        ),
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            "501",
            "does not open tunnels",
        ),
    ];
    for (request, status, cause) in refused {
        let reply = raw_exchange(w.port, request).await;
        let shown = String::from_utf8_lossy(request);
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status}")),
            "{shown:?}: {reply}"
        );
        assert!(reply.contains(cause), "{shown:?}: {reply}");
        assert!(reply.contains("connection: close"), "{shown:?}: {reply}");
    }
    assert_eq!(a.hits(), 0, "no refused request reached the upstream");

    // Content-Length beside chunked: the body is read as chunked, the
    // connection closes after the response, and the request smuggled after
    // the body is never read.
    let reply = raw_exchange(
        w.port,
        b"POST /first HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply}");
    assert!(reply.contains("connection: close"), "{reply}");
    assert_eq!(reply_json(&reply)["path"], "/first", "{reply}");
    assert_eq!(a.hits(), 1);

    // What stays accepted: methods weir does not know, in upper case (Envoy
    // refuses those), HTTP/1.0 without Host, a chunked body, absolute form.
    let reply = raw_exchange(
        w.port,
        b"PURGE_ALL /m HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply_json(&reply)["method"], "PURGE_ALL", "{reply}");
    let reply = raw_exchange(w.port, b"GET /ten HTTP/1.0\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
    let reply = raw_exchange(
        w.port,
        b"POST /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(reply_json(&reply)["body"], "abc", "{reply}");
    let reply = raw_exchange(
        w.port,
        b"GET http://other.example/abs HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        reply_json(&reply)["headers"]["host"],
        "other.example",
        "{reply}"
    );
    assert_eq!(a.hits(), 5);
}

/// A body that stops coming ends the request after the listener's
/// `stream_idle_timeout` (Envoy's stream_idle_timeout): a client that
/// trickles its body gets 408 and no upstream waits on it forever; an
/// upstream stalled in the middle of its response has the response cut off
/// (the client sees the connection close before the promised length)
/// instead of holding the client and an upstream connection until it wakes.
#[tokio::test]
async fn stalled_bodies_end_after_the_stream_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that promises 100 bytes, sends 10 and stalls for a minute
    // on /stall, and reads a whole body before answering otherwise.
    let raw = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = raw.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = raw.accept().await {
            tokio::spawn(async move {
                let Some(got) = support::read_head(&mut stream).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                if got.starts_with(b"GET /stall ") {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                        .await;
                    tokio::time::sleep(Duration::from_secs(60)).await;
                } else {
                    // Reads until the client's body is done (or weir gives up).
                    while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                }
            });
        }
    });
    let (admin, port) = (support::free_port(), support::free_port());
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:{port}\"\nstream_idle_timeout = \"300ms\"\n\n[[cluster]]\nname = \"up\"\nendpoints = [\"{raw_addr}\"]\n\n[[route]]\nname = \"up\"\ncluster = \"up\"\ntimeout = \"30s\"\n"
    );
    let w = Weir::start_with(admin, port, &text).await;

    // Weir must close the connection well before the route's timeout or
    // the upstream's minute.
    async fn until_closed(port: u16, bytes: &[u8]) -> String {
        let (reply, closed) = exchange(port, bytes, Duration::from_secs(20)).await;
        assert!(closed, "weir did not close the connection itself: {reply}");
        reply
    }
    let reply = until_closed(
        w.port,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(
        reply.contains(
            "request body timeout: no bytes for 300ms (the listener's stream_idle_timeout)"
        ),
        "{reply}"
    );

    let reply = until_closed(w.port, b"GET /stall HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("content-length: 100"), "{reply}");
    assert!(
        reply.ends_with("\r\n\r\n0123456789"),
        "cut off after the 10 bytes sent: {reply}"
    );
}

/// A client that writes its whole request body before it reads (as
/// Python's http.client and many others do) gets weir's early answer (here
/// a direct 401 that never reads the body; a plugin's 401 or 429 or a 413
/// alike), not a broken pipe: weir lingers on the connection it closes,
/// reading and discarding, as nginx and Envoy do.
#[tokio::test]
async fn an_early_answer_reaches_a_client_still_sending_its_body() {
    let (admin, port) = (support::free_port(), support::free_port());
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:{port}\"\nmax_request_body = \"64MiB\"\n\n[[route]]\nname = \"deny\"\ndirect_response = {{ status = 401, body = \"no entry\\n\" }}\n"
    );
    let w = Weir::start_with(admin, port, &text).await;
    let port = w.port;
    let outcomes = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        (0..3)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let body = vec![b'x'; 3_000_000];
                let sent = s
                    .write_all(
                        format!(
                            "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|()| s.write_all(&body));
                let mut reply = Vec::new();
                let read = s.read_to_end(&mut reply);
                (
                    sent.map_err(|e| e.to_string()),
                    read.map_err(|e| e.to_string()),
                    String::from_utf8_lossy(&reply).to_string(),
                )
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (sent, read, reply) in outcomes {
        assert_eq!(sent, Ok(()), "the body could not be sent: {reply}");
        assert!(read.is_ok(), "{read:?}");
        assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
        assert!(reply.ends_with("no entry\n"), "{reply}");
    }
}

/// Writes `bytes` on a fresh connection and reads until the server closes it (10 s at most).
async fn raw_exchange(port: u16, bytes: &[u8]) -> String {
    exchange(port, bytes, Duration::from_secs(10)).await.0
}

/// Writes `bytes` on a fresh connection and reads until the server closes it
/// or `within` ends: what came, and whether the server closed it.
async fn exchange(port: u16, bytes: &[u8], within: Duration) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(within, s.read_to_end(&mut out))
        .await
        .is_ok_and(|r| r.is_ok());
    (String::from_utf8_lossy(&out).to_string(), closed)
}

#[tokio::test]
async fn config_reload_under_traffic_fails_no_request_and_bad_files_keep_the_old_config() {
    let (v1, v2) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let clusters = format!("{}{}", cluster("v1", &[&v1], ""), cluster("v2", &[&v2], ""));
    let split = |a: u32, b: u32| {
        format!(
            "{clusters}[[route]]\nname = \"split\"\nweighted = [{{ cluster = \"v1\", weight = {a} }}, {{ cluster = \"v2\", weight = {b} }}]\n"
        )
    };
    let w = Weir::start(&split(100, 0)).await;
    let header = support::base_config(w.admin, w.port);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = w.url("/");
    let traffic = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let c = reqwest::Client::new();
            let (mut ok, mut failed) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    let c = reqwest::Client::new();
    let served_by = |c: reqwest::Client, url: String| async move {
        let mut v2 = 0;
        for _ in 0..40 {
            if c.get(&url).send().await.unwrap().headers()["x-upstream"] == "v2" {
                v2 += 1;
            }
        }
        v2
    };
    assert_eq!(served_by(c.clone(), w.url("/")).await, 0);
    for (a, b) in [(90, 10), (50, 50), (0, 100)] {
        w.write_config(&format!("{header}{}", split(a, b)));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(
        served_by(c.clone(), w.url("/")).await,
        40,
        "0/100 sends everything to v2"
    );

    w.write_config(&format!(
        "{header}{clusters}[[route]]\nname = \"bad\"\ncluster = \"v3\"\n"
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        served_by(c.clone(), w.url("/")).await,
        40,
        "the invalid file left the old config serving"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = traffic.await.unwrap();
    assert_eq!(
        failed, 0,
        "{failed} requests failed during reloads ({ok} succeeded)"
    );
    assert!(ok > 100);

    let metrics = w.metrics().await;
    assert!(
        metrics.contains("weir_config_reloads_total{outcome=\"success\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_config_reloads_total{outcome=\"failure\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("weir_config_last_reload_success 0"));
    let cfg: Value = reqwest::get(w.admin_url("/config"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cfg["generation"], 4);
    assert!(
        cfg["last_reload"]["error"]
            .as_str()
            .unwrap()
            .contains("no cluster named \"v3\""),
        "{cfg}"
    );
    assert!(w.logs().contains("config reload failed"));
}

/// Polls `url` until `ready` accepts what a new connection gets (or 10 s pass).
async fn until(url: &str, ready: impl Fn(&Result<u16, reqwest::Error>) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..200 {
        // A new client per try: each try opens a new connection.
        let r = reqwest::Client::new()
            .get(url)
            .send()
            .await
            .map(|r| r.status().as_u16());
        if ready(&r) {
            return format!("{r:?}");
        }
        last = format!("{r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never answered as expected; last: {last}");
}

#[tokio::test]
async fn listener_changes_apply_on_reload_without_a_restart() {
    let up = Upstream::start("up").await;
    let rest = format!(
        "{}[[route]]\nname = \"all\"\ncluster = \"up\"\n",
        cluster("up", &[&up], "")
    );
    let w = Weir::start(&rest).await;
    let header = support::base_config(w.admin, w.port);
    let client = reqwest::Client::new();
    let post = |url: String| {
        let client = client.clone();
        async move {
            let r = client.post(url).body(vec![b'x'; 100]).send().await;
            r.unwrap().status().as_u16()
        }
    };
    assert_eq!(post(w.url("/")).await, 200);

    // Added: a second listener starts accepting.
    let port2 = support::free_port();
    let second = format!("[[listener]]\nname = \"second\"\nlisten = \"127.0.0.1:{port2}\"\n\n");
    let url2 = format!("http://127.0.0.1:{port2}");
    w.write_config(&format!("{header}{second}{rest}"));
    until(&format!("{url2}/"), |r| matches!(r, Ok(200))).await;
    let listed: Value = get_json(&client, &w.admin_url("/listeners")).await.1;
    assert_eq!(listed[0]["name"], "public", "{listed}");
    assert_eq!(listed[1]["name"], "second", "{listed}");
    assert_eq!(
        listed[1]["address"],
        format!("127.0.0.1:{port2}"),
        "{listed}"
    );

    // Changed in place: new connections get the new limit, on the same port.
    let public = header.replace(
        "name = \"public\"\n",
        "name = \"public\"\nmax_request_body = \"64B\"\n",
    );
    assert_ne!(public, header);
    w.write_config(&format!("{public}{second}{rest}"));
    let mut answered = 0;
    for _ in 0..200 {
        answered = post(w.url("/")).await;
        if answered == 413 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        answered, 413,
        "the changed listener never applied its new body limit"
    );
    assert_eq!(
        post(format!("{url2}/")).await,
        200,
        "the unchanged listener kept its limits"
    );

    // Removed: it accepts no more, and its request in flight finishes.
    let slow = tokio::spawn(reqwest::get(format!("{url2}/delay/1500")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.write_config(&format!("{public}{rest}"));
    until(&format!("{url2}/"), |r| {
        r.as_ref().is_err_and(|e| e.is_connect())
    })
    .await;
    let slow = slow
        .await
        .unwrap()
        .expect("the request in flight on the removed listener");
    assert_eq!(slow.status(), 200);
    assert_eq!(post(w.url("/")).await, 413, "the other listener serves on");

    // A listener that cannot bind fails the whole reload; the old config serves on.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port3 = taken.local_addr().unwrap().port();
    w.write_config(&format!(
        "{public}[[listener]]\nname = \"third\"\nlisten = \"127.0.0.1:{port3}\"\n\n{rest}[[route]]\nname = \"later\"\ndirect_response = {{ status = 204 }}\n"
    ));
    let mut metrics = String::new();
    for _ in 0..200 {
        metrics = w.metrics().await;
        if metrics.contains("weir_config_reloads_total{outcome=\"failure\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        metrics.contains("weir_config_reloads_total{outcome=\"failure\"} 1"),
        "{metrics}"
    );
    let cfg: Value = get_json(&client, &w.admin_url("/config")).await.1;
    let error = cfg["last_reload"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!(
            "listener \"third\": cannot bind 127.0.0.1:{port3}"
        )) && error.contains("another process is listening there"),
        "{cfg}"
    );
    assert_eq!(cfg["generation"], 4, "{cfg}");
    assert_eq!(
        post(w.url("/")).await,
        413,
        "the last good config serves on"
    );
    let listed: Value = get_json(&client, &w.admin_url("/listeners")).await.1;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    drop(taken);
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let a = Upstream::start("a").await;
    let mut w = Weir::start(&format!(
        "[server]\ndrain_timeout = \"5s\"\n{}[[route]]\nname = \"a\"\ncluster = \"a\"\n",
        cluster("a", &[&a], "")
    ))
    .await;
    let url = w.url("/delay/800");
    let inflight =
        tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    w.signal("TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = reqwest::get(w.admin_url("/ready"))
        .await
        .map(|r| r.status().as_u16());
    assert_eq!(
        inflight.await.unwrap().unwrap(),
        200,
        "the in-flight request completed"
    );
    assert_eq!(w.wait_exit(Duration::from_secs(5)).await, Some(0));
    assert!(
        matches!(ready, Ok(503) | Err(_)),
        "/ready during drain: {ready:?}"
    );
    assert!(w.logs().contains("draining"));
}

/// On SIGTERM an idle keep-alive connection is closed at once, not held until
/// drain_timeout: the listener's sweep asks every open connection to drain,
/// and hyper closes one with nothing in flight straight away.
#[tokio::test]
async fn sigterm_closes_idle_keep_alive_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Upstream::start("a").await;
    let mut w = Weir::start(&format!(
        "[server]\ndrain_timeout = \"30s\"\n{}[[route]]\nname = \"a\"\ncluster = \"a\"\n",
        cluster("a", &[&a], "")
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", w.port))
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("a response within 5 s")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let t = std::time::Instant::now();
    w.signal("TERM");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("the idle connection is closed within 10 s of SIGTERM")
        .ok();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "an idle connection was held {:?} after SIGTERM",
        t.elapsed()
    );
    assert_eq!(w.wait_exit(Duration::from_secs(5)).await, Some(0));
}

/// Requests one after another, with bodies, with none (204, HEAD) and with
/// errors, all take the one upstream connection the first one opened: each
/// goes back to the pool when its response has been read.
#[tokio::test]
async fn one_upstream_connection_carries_requests_one_after_another() {
    let a = Upstream::start("a").await;
    let w = Weir::start(&format!(
        "{}[[route]]\nname = \"a\"\ncluster = \"a\"\n",
        cluster("a", &[&a], "")
    ))
    .await;
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for path in ["/x", "/status/204", "/status/503", "/y", "/status/404"] {
        let r = client.get(w.url(path)).send().await.unwrap();
        statuses.push(r.status().as_u16());
        r.bytes().await.unwrap();
    }
    let r = client.head(w.url("/x")).send().await.unwrap();
    statuses.push(r.status().as_u16());
    assert_eq!(statuses, [200, 204, 503, 200, 404, 200]);
    assert_eq!(a.hits(), 6);
    assert_eq!(
        a.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "every request after the first reused the upstream connection"
    );
    let m = w.metrics().await;
    assert!(
        m.contains("weir_upstream_connections{cluster=\"a\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn admin_clusters_show_endpoints_requests_in_flight_and_names_that_did_not_resolve() {
    let a = Upstream::start("a").await;
    let w = Weir::start(&format!(
        "{}[[cluster]]\nname = \"named\"\nendpoints = [\"localhost:{}\", \"no-such-host.invalid:80\"]\nprotocol = \"http2\"\n\n[[route]]\nname = \"a\"\ncluster = \"a\"\n",
        cluster("a", &[&a], "lb = \"least_request\""),
        a.addr.port()
    ))
    .await;
    let client = reqwest::Client::new();
    let slow = tokio::spawn(reqwest::get(w.url("/delay/1500")));
    let mut doc = Value::Null;
    for _ in 0..100 {
        doc = get_json(&client, &w.admin_url("/clusters")).await.1;
        if doc[0]["active"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(doc[0]["name"], "a", "{doc}");
    assert_eq!(doc[0]["lb"], "least_request", "{doc}");
    assert_eq!(doc[0]["protocol"], "http1", "{doc}");
    assert_eq!(doc[0]["active"], 1, "the request in flight: {doc}");
    assert_eq!(
        doc[0]["endpoints"][0]["address"],
        a.addr.to_string(),
        "{doc}"
    );
    assert_eq!(doc[0]["endpoints"][0]["active"], 1, "{doc}");
    assert_eq!(doc[0]["dns_errors"], serde_json::json!([]), "{doc}");
    let named = &doc[1];
    assert_eq!(named["name"], "named", "{doc}");
    assert_eq!(named["protocol"], "http2", "{doc}");
    let resolved: Vec<&str> = named["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["host"].as_str().unwrap())
        .collect();
    assert!(
        !resolved.is_empty() && resolved.iter().all(|h| *h == "localhost"),
        "localhost resolved, the other name did not: {doc}"
    );
    assert!(
        named["dns_errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("cannot resolve no-such-host.invalid:80")),
        "{doc}"
    );
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);
    let doc: Value = get_json(&client, &w.admin_url("/clusters")).await.1;
    assert_eq!(doc[0]["endpoints"][0]["active"], 0, "{doc}");
}

#[tokio::test]
async fn admin_api_reports_health_config_and_metrics() {
    let a = Upstream::start("a").await;
    let w = Weir::start(&format!(
        "{}[[route]]\nname = \"a\"\ncluster = \"a\"\nrequest_headers = {{ set = {{ authorization = \"Bearer s3cret\" }} }}\n",
        cluster("a", &[&a], "")
    ))
    .await;
    assert_eq!(
        reqwest::get(w.admin_url("/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(w.admin_url("/ready")).await.unwrap().status(),
        200
    );
    let cfg = reqwest::get(w.admin_url("/config"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        cfg.contains("<redacted>") && !cfg.contains("s3cret"),
        "{cfg}"
    );
    for _ in 0..3 {
        reqwest::get(w.url("/x")).await.unwrap();
    }
    reqwest::get(w.url("/status/503")).await.unwrap();
    let m = w.metrics().await;
    assert!(
        m.contains("weir_requests_total{route=\"a\",cluster=\"a\",status_class=\"2xx\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("weir_requests_total{route=\"a\",cluster=\"a\",status_class=\"5xx\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("weir_request_duration_seconds_count{route=\"a\"} 4"),
        "{m}"
    );
    assert!(
        m.contains("weir_upstream_connections{cluster=\"a\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("weir_upstream_requests_active{cluster=\"a\"} 0"),
        "{m}"
    );
    assert_eq!(
        reqwest::get(w.admin_url("/nope")).await.unwrap().status(),
        404
    );
}
