//! proxy-wasm filters, built with the Rust proxy-wasm SDK as for Envoy, run
//! unmodified through the real weir binary. Where Envoy's behaviour is not
//! obvious, the test says what Envoy does.

mod support;

#[path = "wasm/oob_probe.rs"]
mod oob_probe;

use std::path::Path;
use std::time::Duration;

use support::{Upstream, Weir, free_port, test_filter};

/// A weir with the pw-test filter in its plugins directory, configured by `plugin_toml`,
/// and an `auth` cluster pointing at `auth`.
async fn weir_with_filter(plugin_toml: &str, routes: &str, upstream: &Upstream) -> Weir {
    weir_with_pw_test_as(&[("10-pw-test", plugin_toml)], routes, upstream).await
}

/// weir with pw-test as each of `plugins` (file stem, its .toml).
async fn weir_with_pw_test_as(plugins: &[(&str, &str)], routes: &str, upstream: &Upstream) -> Weir {
    weir_with_auth_at(plugins, routes, upstream, &upstream.addr.to_string()).await
}

/// As [`weir_with_pw_test_as`], with cluster `auth` at `auth` rather than the upstream.
async fn weir_with_auth_at(
    plugins: &[(&str, &str)],
    routes: &str,
    upstream: &Upstream,
    auth: &str,
) -> Weir {
    let pw_test = test_filter("pw-test");
    let modules: Vec<(&str, &Path, &str)> = plugins
        .iter()
        .map(|(stem, toml)| (*stem, pw_test.as_path(), *toml))
        .collect();
    weir_with_modules(&modules, routes, upstream, auth).await
}

/// weir with each of `modules` (file stem, .wasm file, its .toml) in its
/// plugins folder, routes `routes` then `app` to `upstream`, and cluster
/// `auth` at `auth`.
async fn weir_with_modules(
    modules: &[(&str, &Path, &str)],
    routes: &str,
    upstream: &Upstream,
    auth: &str,
) -> Weir {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("plugins");
    std::fs::create_dir(&folder).unwrap();
    for (stem, wasm, toml) in modules {
        std::fs::copy(wasm, folder.join(format!("{stem}.wasm"))).unwrap();
        std::fs::write(folder.join(format!("{stem}.toml")), toml).unwrap();
    }
    let (admin, port) = (free_port(), free_port());
    let config = format!(
        "{}[[cluster]]\nname = \"auth\"\nendpoints = [\"{auth}\"]\n[[cluster]]\nname = \"app\"\nendpoints = [\"{addr}\"]\n{routes}\n[[route]]\nname = \"app\"\ncluster = \"app\"\n",
        support::base_config(admin, port),
        addr = upstream.addr
    );
    Weir::start_in(dir, admin, port, &config).await
}

#[tokio::test]
async fn headers_are_changed_both_ways_and_configuration_arrives() {
    let up = Upstream::start("app").await;
    let w = weir_with_filter("config_raw = \"tag-1\"\n", "", &up).await;
    let r = reqwest::get(w.url("/hello")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-pw-plugin"],
        "pw-test",
        "the plugin_name property, set on the response"
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["headers"]["x-pw-seen"], "tag-1",
        "the plugin configuration, set on the request"
    );
    assert!(
        w.logs().contains("configured with tag \"tag-1\""),
        "proxy_log reaches weir's log"
    );
}

#[tokio::test]
async fn local_responses_never_reach_the_upstream_and_pass_the_response_phase() {
    let up = Upstream::start("app").await;
    let w = weir_with_filter("", "", &up).await;
    let before = up.hits();
    let r = reqwest::get(w.url("/deny")).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-denied-by"], "pw-test");
    // Envoy runs the same plugin's response callbacks on its own local reply.
    assert_eq!(r.headers()["x-pw-plugin"], "pw-test");
    assert_eq!(r.text().await.unwrap(), "denied by pw-test\n");
    assert_eq!(up.hits(), before, "the upstream was not called");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        w.logs().contains("request done with status 403"),
        "on_log ran after the local reply, with response.code"
    );
}

/// A local reply goes out as Envoy sends it: its length said, its body as
/// text/plain, and to a gRPC client in gRPC's own form (HTTP 200, the
/// status its HTTP status maps to, the body as a percent-encoded message).
#[tokio::test]
async fn local_replies_are_framed_as_envoy_frames_them() {
    let up = Upstream::start("app").await;
    let w = weir_with_filter("", "", &up).await;
    let r = reqwest::get(w.url("/deny")).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["content-length"], "18");
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert!(r.headers().get("grpc-status").is_none());
    let r = reqwest::Client::new()
        .post(w.url("/deny"))
        .header("content-type", "application/grpc")
        .body(Vec::<u8>::new())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "gRPC answers in its trailers-only form");
    assert_eq!(r.headers()["content-type"], "application/grpc");
    assert_eq!(
        r.headers()["grpc-status"],
        "7",
        "403 maps to PERMISSION_DENIED"
    );
    assert_eq!(r.headers()["grpc-message"], "denied by pw-test%0A");
    assert_eq!(r.headers()["x-denied-by"], "pw-test");
    assert_eq!(r.bytes().await.unwrap().len(), 0);
}

/// Calls that Envoy answers OK and the Rust SDK panics on otherwise: header
/// edits weir cannot send (dropped, and logged), removing a pseudo-header,
/// whole maps not there yet (empty), the status with no call made, bodies
/// outside their callbacks, the VM configuration after start-up.
#[tokio::test]
async fn calls_envoy_answers_ok_do_not_fail_the_plugin() {
    let up = Upstream::start("app").await;
    let w = weir_with_filter("vm_config = \"vm-1\"\n", "", &up).await;
    let r = reqwest::get(w.url("/envoy-edits")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        "response headers=0\ncall headers=0\nstatus=0 None\nbody=0\nvm config=vm-1\nmethod=GET\n"
    );
    let logs = w.logs();
    assert!(
        logs.contains("a header edit was dropped: its name is not a valid header name"),
        "{logs}"
    );
    assert!(
        logs.contains("its value holds a control character"),
        "{logs}"
    );
}

/// The log phase reads the request and response headers, the body sizes,
/// the upstream and why the response is what it is, as in Envoy.
#[tokio::test]
async fn the_log_phase_reads_both_header_maps_and_the_exchange() {
    let up = Upstream::start("app").await;
    let w = weir_with_filter("", "", &up).await;
    let r = reqwest::Client::new()
        .post(w.url("/logged?x=1"))
        .body("twelve bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let size = r.bytes().await.unwrap().len();
    let line = format!(
        "log phase: :path=Some(\"/logged?x=1\") x-upstream=Some(\"app\") details=via_upstream upstream={} response.size={size} request.size=12 request.trailers=[] response.trailers=[]",
        up.addr
    );
    let mut logs = String::new();
    for _ in 0..50 {
        logs = w.logs();
        if logs.contains(&line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no {line:?} in\n{logs}");
}

#[tokio::test]
async fn properties_use_envoy_names_and_encodings() {
    let up = Upstream::start("app").await;
    let w = weir_with_filter("", "", &up).await;
    let text = reqwest::Client::new()
        .get(w.url("/props?a=1"))
        .header("user-agent", "weir-test")
        .header("x-multi", "1")
        .header("x-multi", "2")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing in\n{text}"))
            .to_string()
    };
    assert_eq!(get("request.path"), "/props?a=1");
    assert_eq!(get("request.url_path"), "/props");
    assert_eq!(get("request.method"), "GET");
    assert_eq!(get("request.scheme"), "http");
    assert_eq!(get("request.protocol"), "HTTP/1.1");
    assert_eq!(get("request.host"), format!("127.0.0.1:{}", w.port));
    assert_eq!(get("request.id").len(), 36);
    assert_eq!(
        get("destination.address"),
        format!("127.0.0.1:{}", w.port),
        "ip:port, as Envoy"
    );
    assert!(get("source.address").starts_with("127.0.0.1:"));
    assert_eq!(
        get("destination.port"),
        w.port.to_string(),
        "ints are 8 little-endian bytes"
    );
    assert_eq!(get("plugin_name"), "pw-test");
    assert_eq!(get("plugin_vm_id"), "pw-test");
    assert_eq!(
        get("plugin_root_id"),
        "<none>",
        "an empty root id comes back empty, which the Rust SDK reads as None"
    );
    assert_eq!(get("request.headers.user-agent"), "weir-test");
    assert_eq!(
        get("request.headers.x-multi"),
        "1,2",
        "joined with a bare comma, as Envoy"
    );
    assert_eq!(get("xds.route_name"), "app");
    assert_eq!(
        get("xds.cluster_name"),
        "app",
        "known from the route, before the log phase"
    );
    assert!(get("connection.id").parse::<u64>().unwrap() > 0);
    assert_eq!(get("request.size"), "0", "no body yet in the headers phase");
    // Envoy counts names and values, pseudo-headers included.
    let total: usize = get("request.total_size").parse().unwrap();
    assert!((100..400).contains(&total), "{total}");
    let ns: i64 = get("request.time").parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert!(
        (now - ns).abs() < 10_000_000_000,
        "request.time is ns since the epoch"
    );
}

#[tokio::test]
async fn shared_data_cas_and_metrics_are_host_wide() {
    let up = Upstream::start("app").await;
    let w = weir_with_filter("", "", &up).await;
    let c = reqwest::Client::new();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(
            c.get(w.url("/shared"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
                .trim()
                .parse::<u32>()
                .unwrap(),
        );
    }
    assert_eq!(
        seen,
        [1, 2, 3, 4, 5],
        "the counter is shared across instances and requests"
    );
    for _ in 0..3 {
        c.get(w.url("/metric")).send().await.unwrap();
    }
    let m = w.metrics().await;
    assert!(
        m.contains("weir_plugin_counter_total{plugin=\"pw-test\",name=\"pw_test_hits\"} 3"),
        "{m}"
    );
}

#[tokio::test]
async fn shared_queues_notify_the_registering_root_context() {
    let up = Upstream::start("app").await;
    let w = weir_with_filter("", "", &up).await;
    let c = reqwest::Client::new();
    for item in ["a", "b", "c"] {
        let r = c
            .get(w.url("/enqueue"))
            .header("x-item", item)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(
            r, "queued\n",
            "resolve_shared_queue with an empty vm_id finds the plugin's own queue"
        );
    }
    let mut got = String::new();
    for _ in 0..50 {
        got = c
            .get(w.url("/dequeued"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if got.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got, "abc", "on_queue_ready dequeued every item, in order");
}

#[tokio::test]
async fn http_calls_pause_the_request_and_resume_or_answer_from_the_callback() {
    let up = Upstream::start("app").await;
    let w = weir_with_filter("", "", &up).await;
    let c = reqwest::Client::new();
    let r = c.get(w.url("/callout")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["headers"]["x-callout-status"], "200",
        "set from on_http_call_response, then resumed"
    );
    let before = up.hits();
    let r = c
        .get(w.url("/callout"))
        .header("x-callout-status", "403")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-callout-status"], "403");
    assert_eq!(
        up.hits() - before,
        1,
        "only the callout reached the upstream"
    );
}

/// A server on loopback that answers every request as `answer` says:
/// `head-late` (after 5 s), `body-late` (a head and half the body, the rest
/// after 5 s) or `garbage` (not HTTP).
/// weir with pw-test (no settings), an HTTP/2 cluster `name` at `addr`, and
/// route `app` to a new upstream (returned with it, to keep it serving).
async fn weir_with_http2_cluster(name: &str, addr: std::net::SocketAddr) -> (Weir, Upstream) {
    let dir = tempfile::tempdir().unwrap();
    write_plugin(
        dir.path(),
        "10-pw-test",
        &std::fs::read(test_filter("pw-test")).unwrap(),
        None,
    );
    let up = Upstream::start("app").await;
    let (admin, port) = (free_port(), free_port());
    let config = format!(
        "{}[[cluster]]\nname = \"{name}\"\nendpoints = [\"{addr}\"]\nprotocol = \"http2\"\n[[cluster]]\nname = \"app\"\nendpoints = [\"{}\"]\n[[route]]\nname = \"app\"\ncluster = \"app\"\n",
        support::base_config(admin, port),
        up.addr
    );
    (Weir::start_in(dir, admin, port, &config).await, up)
}

/// An HTTP/2 server on loopback that answers 200 to a request whose
/// trailers hold `x-call-trailer: yes`, and 418 to any other.
async fn trailer_checking_upstream() -> std::net::SocketAddr {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let body = req.into_body().collect().await?;
                    let ok = body
                        .trailers()
                        .and_then(|t| t.get("x-call-trailer"))
                        .is_some_and(|v| v == "yes");
                    Ok::<_, hyper::Error>(
                        http::Response::builder()
                            .status(if ok { 200 } else { 418 })
                            .body(http_body_util::Empty::<bytes::Bytes>::new())
                            .unwrap(),
                    )
                },
            );
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service),
            );
        }
    });
    addr
}

/// An http call's trailers follow its body to an HTTP/2 cluster, as in Envoy.
#[tokio::test]
async fn http_call_trailers_reach_an_http2_cluster() {
    let checker = trailer_checking_upstream().await;
    let (w, _up) = weir_with_http2_cluster("auth", checker).await;
    let c = reqwest::Client::new();
    let r = c
        .get(w.url("/callout"))
        .header("x-callout-trailer", "yes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the call's trailers arrived");
    let r = c.get(w.url("/callout")).send().await.unwrap();
    assert_eq!(
        r.status(),
        401,
        "a call without trailers is refused by the checker"
    );
    assert_eq!(r.headers()["x-callout-status"], "418");
}

async fn misbehaving_auth(answer: &'static str) -> String {
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if support::read_head(&mut c).await.is_none() {
                    return;
                }
                match answer {
                    "head-late" => tokio::time::sleep(Duration::from_secs(5)).await,
                    "body-late" => {
                        let _ = c
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nok")
                            .await;
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    _ => {
                        let _ = c.write_all(b"NOT HTTP\r\n\r\n").await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn failed_http_calls_reach_the_plugin_as_in_envoy() {
    // Envoy 1.40, pw-test's /callout against a dead port, a slow server and a
    // server that speaks no HTTP: a call that gets no response head comes
    // back as the response its router answers in place of one (503, 504,
    // 502; headers :status, content-length, content-type; a text body) with
    // proxy_get_status 0; a call whose body fails or times out after the head
    // comes back as (0, 0, 0) with proxy_get_status 11 "reset".
    let up = Upstream::start("app").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let cases = [
        (dead.as_str(), 0, "503", "3,", "0", "tcp connect"),
        (
            &misbehaving_auth("head-late").await,
            300,
            "504",
            "3,",
            "0",
            "timeout after 300ms",
        ),
        (
            &misbehaving_auth("garbage").await,
            0,
            "502",
            "3,",
            "0",
            "call to cluster \"auth\" failed: ",
        ),
        (
            &misbehaving_auth("body-late").await,
            300,
            "",
            "0,0,0",
            "11 reset",
            "",
        ),
    ];
    for (auth, timeout_ms, status, shape, call, body) in cases {
        let w = weir_with_auth_at(&[("10-pw-test", "")], "", &up, auth).await;
        let mut req = reqwest::Client::new().get(w.url("/callout"));
        if timeout_ms > 0 {
            req = req.header("x-callout-timeout-ms", timeout_ms.to_string());
        }
        let r = req.send().await.unwrap();
        assert_eq!(
            r.status(),
            401,
            "pw-test answers 401 to a call that was not a 200 ({auth})"
        );
        let h = |n: &str| r.headers()[n].to_str().unwrap().to_string();
        let (got_status, got_shape, got_call) = (
            h("x-callout-status"),
            h("x-callout-shape"),
            h("x-callout-call"),
        );
        let text = r.text().await.unwrap();
        assert_eq!(got_status, status, "{auth}: {text}");
        assert!(
            got_shape.starts_with(shape),
            "{auth}: counts {got_shape}, not {shape}…"
        );
        if shape == "3," {
            let body_len = text.len() - "callout refused\n".len();
            assert_eq!(
                got_shape,
                format!("3,{body_len},0"),
                "the counts name the body's length"
            );
        }
        assert_eq!(
            got_call.trim(),
            call,
            "proxy_get_status: code and message ({auth})"
        );
        assert!(
            text.starts_with("callout refused\n") && text.contains(body),
            "{auth}: {text}"
        );
    }
}

#[tokio::test]
async fn whole_header_maps_are_read_and_replaced_as_pairs() {
    // proxy_get_header_map_pairs and proxy_set_header_map_pairs: the request
    // map comes with its pseudo-headers, and setting it whole (pseudo-headers
    // included) drops and adds headers; the same on the response.
    let up = Upstream::start("app").await;
    let w = weir_with_filter("", "", &up).await;
    let r = reqwest::Client::new()
        .get(w.url("/pairs"))
        .header("x-drop-me", "1")
        .header("X-Keep", "2")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-pairs-status"], "200");
    assert_eq!(r.headers()["x-pw-plugin"], "pw-test");
    let v: serde_json::Value = r.json().await.unwrap();
    let seen = v["headers"]["x-pairs-seen"].as_str().unwrap_or_default();
    for name in [
        ":authority",
        ":method",
        ":path",
        ":scheme",
        "x-drop-me",
        "x-keep",
        "x-request-id",
    ] {
        assert!(
            seen.split(',').any(|n| n == name),
            "{name} is missing from the pairs: {seen}"
        );
    }
    // As in Envoy, HTTP/1's Host is `:authority` and no pair of its own, and
    // hop-by-hop headers (Envoy 1.40: also those Connection names) are gone
    // before the filters run.
    for name in ["host", "connection", "keep-alive", "x-hop"] {
        assert!(
            !seen.split(',').any(|n| n == name),
            "{name} is among the pairs: {seen}"
        );
    }
    assert!(v["headers"].get("x-drop-me").is_none(), "{v}");
    assert_eq!(v["headers"]["x-keep"], "2");
    assert_eq!(v["headers"]["host"], format!("127.0.0.1:{}", w.port), "{v}");
    assert_eq!(
        v["path"], "/pairs",
        "the pseudo-headers were set back unchanged"
    );
    assert_eq!(v["method"], "GET");
}

#[tokio::test]
async fn an_assemblyscript_filter_runs_as_in_envoy() {
    // tests/wasm/as-probe: Solo.io's AssemblyScript SDK, whose modules have
    // another shape than the Rust SDK's (ABI 0.2.0, no _start, the top level
    // run by the start section, wasi_unstable). Every value asserted here is
    // what Envoy 1.40 gave with the same module, side by side (2026-11-29).
    let up = Upstream::start("app").await;
    let wasm = support::assemblyscript_filter();
    let auth = up.addr.to_string();
    let w = weir_with_modules(&[("as-probe", &wasm, "")], "", &up, &auth).await;
    let c = reqwest::Client::new();
    let port = w.port;
    let authority = format!("127.0.0.1:{port}");

    let r = c
        .get(w.url("/hello?q=1"))
        .header("x-drop-me", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-as-status"], "200");
    // response.code: a 64-bit integer, little-endian.
    assert_eq!(r.headers()["x-as-code"], "c800000000000000");
    let v: serde_json::Value = r.json().await.unwrap();
    let h = &v["headers"];
    assert_eq!(h["x-as-path"], "/hello?q=1", "{v}");
    assert_eq!(h["x-as-prop-path"], "/hello?q=1", "{v}");
    assert_eq!(h["x-as-method"], "GET", "{v}");
    assert_eq!(h["x-as-authority"], authority.as_str(), "{v}");
    assert_eq!(h["x-as-host"], authority.as_str(), "{v}");
    assert_eq!(h["x-as-eos"], "1", "a GET's headers end the stream");
    assert_eq!(h["x-as-plugin-name"], "as-probe");
    let port_hex: String = u64::from(port)
        .to_le_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(h["x-as-prop-port"], port_hex.as_str(), "{v}");
    let names = h["x-as-names"].as_str().unwrap_or_default();
    assert!(
        names.starts_with(":authority,:path,:method,:scheme,"),
        "{names}"
    );
    for name in ["x-drop-me", "x-request-id"] {
        assert!(names.split(',').any(|n| n == name), "{name}: {names}");
    }
    assert!(!names.split(',').any(|n| n == "host"), "{names}");
    let size = h["x-as-size"].as_str().unwrap_or_default();
    let (size, sum) = size.split_once(' ').unwrap_or_default();
    assert_eq!(size, sum, "the map's size is not its byte size");
    assert!(h.get("x-drop-me").is_none(), "{v}");

    let before = up.hits();
    let r = c.get(w.url("/deny")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-as-denied"], "yes");
    assert_eq!(r.headers()["x-as-status"], "403");
    assert_eq!(r.headers()["x-as-code"], "9301000000000000");
    assert_eq!(r.text().await.unwrap(), "denied by as-probe\n");
    assert_eq!(
        up.hits(),
        before,
        "a local reply never reaches the upstream"
    );

    let r = c.get(w.url("/rewrite")).send().await.unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["path"], "/rewritten", "{v}");
    assert_eq!(v["headers"]["x-as-path"], "/rewrite", "{v}");

    // The call is made through the root context; the reply reaches the
    // stream, which adds its status and continues.
    let before = up.hits();
    let r = c.get(w.url("/callout")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["path"], "/callout", "{v}");
    assert_eq!(v["headers"]["x-as-callout-status"], "200", "{v}");
    assert_eq!(up.hits(), before + 2, "the call and the request");

    let m = w.metrics().await;
    assert!(
        m.contains("weir_plugin_counter_total{plugin=\"as-probe\",name=\"as_probe_requests\"} 4"),
        "{m}"
    );
}

#[tokio::test]
async fn filters_read_and_change_the_forwarding_headers_as_in_envoy() {
    // Envoy's connection manager sets x-forwarded-proto (and, at the edge,
    // appends the client to x-forwarded-for) and x-request-id before its
    // filters run; a filter reads them, and what it sets is what goes on.
    let up = Upstream::start("app").await;
    let w = weir_with_filter("", "", &up).await;
    let r = reqwest::Client::new()
        .get(w.url("/forwarded"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let h = &v["headers"];
    assert_eq!(h["x-read-xff"], "203.0.113.9, 127.0.0.1", "{v}");
    assert_eq!(h["x-read-xfp"], "http", "{v}");
    assert_eq!(h["x-read-id"], h["x-request-id"], "{v}");
    assert_eq!(h["x-forwarded-proto"], "changed-by-filter", "{v}");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1", "{v}");
}

#[tokio::test]
async fn host_is_the_authority_and_the_map_size_is_its_byte_size_as_in_envoy() {
    // Envoy 1.40 (checked side by side with an AssemblyScript filter): a
    // filter's `host` reads and changes `:authority`; a value added joins the
    // present one after a comma (one Host header goes upstream, not two);
    // removing it leaves no authority (Envoy then sends no Host, weir an
    // empty one, as HTTP/1.1 requires). proxy_get_header_map_size answers the
    // names' and values' lengths summed (156 for eight known headers there).
    let up = Upstream::start("app").await;
    let w = weir_with_filter("", "", &up).await;
    let authority = format!("127.0.0.1:{}", w.port);
    let c = reqwest::Client::new();
    for (op, host) in [
        ("none", authority.clone()),
        ("add", format!("{authority},other.example")),
        ("replace", "other.example".to_string()),
        ("remove", String::new()),
    ] {
        let r = c
            .get(w.url("/host-alias"))
            .header("x-host-op", op)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{op}");
        let v: serde_json::Value = r.json().await.unwrap();
        let h = &v["headers"];
        assert_eq!(h["x-host-read"], authority.as_str(), "{op}: {v}");
        assert_eq!(h["host"], host.as_str(), "{op}: {v}");
        let size = h["x-map-size"].as_str().unwrap_or_default();
        let [status, size, sum] = size.split(' ').collect::<Vec<_>>()[..] else {
            panic!("{op}: x-map-size {size:?}");
        };
        assert_eq!(status, "0", "{op}: proxy_get_header_map_size failed");
        assert_eq!(size, sum, "{op}: the map's size is not its byte size");
    }
}

#[tokio::test]
async fn bodies_stream_through_body_callbacks_which_may_buffer_and_replace_them() {
    let up = Upstream::start("app").await;
    // A generous cpu_limit: this test is about bodies, and the default
    // 10 ms counts wall time, which a busy CI machine can eat while a
    // callback is preempted (the request then gets the trap's 503).
    let w = weir_with_filter("cpu_limit = \"1s\"\n", "", &up).await;
    let c = reqwest::Client::new();
    let r = c
        .post(w.url("/upper"))
        .body("make me loud")
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("POST /upper: {status}, not the echo's JSON ({e}): {text}"));
    assert_eq!(v["body"], "MAKE ME LOUD");
    assert_eq!(v["headers"]["content-length"], "12");
    let chunks = futures_util::stream::iter(
        ["chunked ", "body"].map(|s| Ok::<_, std::io::Error>(bytes::Bytes::from(s))),
    );
    let v: serde_json::Value = c
        .post(w.url("/upper"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["body"], "CHUNKED BODY");
    let r = c.get(w.url("/replace-response")).send().await.unwrap();
    assert!(
        r.headers().get("content-length").is_none(),
        "the filter dropped it, as Envoy filters must"
    );
    assert_eq!(r.text().await.unwrap(), "replaced by pw-test\n");
}

#[tokio::test]
async fn a_local_response_from_a_body_or_trailers_callback_answers_the_client_as_in_envoy() {
    use http_body_util::BodyExt;
    let up = Upstream::start("app").await;
    let w = weir_with_filter("", "", &up).await;
    let c = reqwest::Client::new();
    // The headers went on (Continue), then a request body chunk is refused.
    // Envoy sends the filter's local reply to the client and resets the
    // upstream request; the reply passes the plugin's response callbacks.
    // Checked by hand against Envoy 1.40 with the same pw_test.wasm (curl,
    // chunked body): 403, x-denied-by: pw-test-body, x-pw-plugin: pw-test,
    // this body. For /response-body-deny Envoy sends the 200 head and then
    // resets the stream (curl: partial file over HTTP/1.1, stream error
    // over HTTP/2).
    let chunks = futures_util::stream::iter(
        ["harmless start, ", "then forbidden words"]
            .map(|s| Ok::<_, std::io::Error>(bytes::Bytes::from(s))),
    );
    let r = c
        .post(w.url("/body-deny"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-denied-by"], "pw-test-body");
    assert_eq!(
        r.headers()["x-pw-plugin"],
        "pw-test",
        "the local reply went through on_http_response_headers, as in Envoy"
    );
    assert_eq!(
        r.text().await.unwrap(),
        "denied by pw-test in the request body\n"
    );
    // A body the filter lets through reaches the upstream.
    let r = c
        .post(w.url("/body-deny"))
        .body("all fine")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["body"], "all fine");

    // The same from the request trailers callback (HTTP/2 with trailers).
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-deny", "1".parse().unwrap());
    let frames: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>> = vec![
        Ok(hyper::body::Frame::data(bytes::Bytes::from_static(b"data"))),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = http::Request::post(w.url("/trailers"))
        .body(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-denied-by"], "pw-test-trailers");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "denied by pw-test in the request trailers\n");

    // After the response head went to the client a new response is
    // impossible: Envoy resets the stream, and so does weir.
    // (Whether the head reached the client before the reset is up to the
    // socket; either way the client never gets a complete response.)
    match c.get(w.url("/response-body-deny")).send().await {
        Ok(r) => {
            assert_eq!(
                r.status(),
                200,
                "the head had gone before the body callback"
            );
            assert!(
                r.bytes().await.is_err(),
                "the stream is reset, not completed"
            );
        }
        Err(e) => assert!(!e.is_timeout(), "reset, not hung: {e}"),
    }
    let mut logged = false;
    for _ in 0..50 {
        logged = w
            .logs()
            .contains("after the response head went to the client; the stream is reset");
        if logged {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(logged, "the reset is logged with its cause: {}", w.logs());
    // The next request on a fresh stream is served normally.
    let r = c.get(w.url("/hello")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn grpc_streams_pass_a_plugin_with_body_callbacks_without_being_held() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let dir = tempfile::tempdir().unwrap();
    write_plugin(
        dir.path(),
        "10-pw-test",
        &std::fs::read(test_filter("pw-test")).unwrap(),
        None,
    );
    let grpc = support::grpc_upstream().await;
    let (admin, port) = (free_port(), free_port());
    let config = format!(
        "{}[[cluster]]\nname = \"grpc\"\nendpoints = [\"{grpc}\"]\nprotocol = \"http2\"\n[[route]]\nname = \"grpc\"\ncluster = \"grpc\"\n",
        support::base_config(admin, port)
    );
    let w = Weir::start_in(dir, admin, port, &config).await;
    let channel = tonic::transport::Endpoint::from_shared(w.url(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    // The Rust SDK exports body callbacks for every filter: the body must still stream.
    let mut stream = client
        .watch(HealthCheckRequest {
            service: "weir.test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream's first message arrives while the stream is open")
        .unwrap()
        .unwrap();
    assert_eq!(first.status, 1);
    let reply = client
        .check(HealthCheckRequest {
            service: "weir.test".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        reply.into_inner().status,
        1,
        "unary calls keep their trailers through the plugin"
    );
}

#[tokio::test]
async fn unary_grpc_calls_answer_in_the_grpc_callbacks() {
    let grpc = support::grpc_upstream().await;
    let (w, _up) = weir_with_http2_cluster("grpc", grpc).await;
    let c = reqwest::Client::new();
    let v: serde_json::Value = c
        .get(w.url("/grpc"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["headers"]["x-grpc-reply"], "0801",
        "HealthCheckResponse {{ status: SERVING }} reached on_grpc_receive"
    );
    let r = c
        .get(w.url("/grpc"))
        .header("x-grpc-service", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        r.headers()["x-grpc-status"],
        "5",
        "NOT_FOUND reached on_grpc_close"
    );
}

#[tokio::test]
async fn a_path_rewritten_before_routing_changes_the_route() {
    let up = Upstream::start("app").await;
    let routes = "[[route]]\nname = \"rewritten\"\nmatch = { path = \"/rewritten\" }\ndirect_response = { status = 200, body = \"rewritten route\" }\n";
    let w = weir_with_filter("", routes, &up).await;
    let r = reqwest::get(w.url("/rewrite")).await.unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "rewritten route",
        "as in Envoy, a :path changed by a filter re-selects the route"
    );
}

#[tokio::test]
async fn later_phases_read_the_request_as_the_whole_chain_left_it() {
    // Two plugins of one module: the first rewrites :path, and both read
    // request.path in their log phase. Envoy 1.40, run with this config's
    // two filters, logs "request done with status ... for path /rewritten"
    // for both: its filters share one request header map. weir keeps one
    // snapshot per request, taken when the chain's request-headers phase
    // ends (it took one per plugin, as the request arrived at it, and the
    // first plugin read "/rewrite").
    let up = Upstream::start("app").await;
    let w = weir_with_pw_test_as(&[("10-first", ""), ("20-second", "")], "", &up).await;
    let r = reqwest::get(w.url("/rewrite")).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["path"], "/rewritten",
        "the upstream got the rewritten path"
    );
    for name in ["first", "second"] {
        let tag = format!("plugin.name={name}");
        let mut line = None;
        for _ in 0..50 {
            let logs = w.logs();
            line = logs
                .lines()
                .find(|l| l.contains("request done with status 200") && l.contains(&tag))
                .map(str::to_string);
            if line.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let line = line.unwrap_or_else(|| panic!("no log line of {name}:\n{}", w.logs()));
        assert!(
            line.contains("for path /rewritten"),
            "{name} read the path as the chain left it: {line}"
        );
    }
}

#[tokio::test]
async fn traps_and_runaway_loops_fail_only_their_request() {
    let up = Upstream::start("app").await;
    let w = weir_with_filter("cpu_limit = \"20ms\"\n", "", &up).await;
    let c = reqwest::Client::new();
    let r = c.get(w.url("/panic")).send().await.unwrap();
    assert_eq!(
        r.status(),
        503,
        "failure = closed by default, as Envoy's fail-closed"
    );
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("plugin \"pw-test\" failed: unreachable executed")
    );
    assert_eq!(
        c.get(w.url("/ok")).send().await.unwrap().status(),
        200,
        "a fresh instance serves the next request"
    );
    let t = std::time::Instant::now();
    let r = c.get(w.url("/loop")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("CPU time limit per callback exceeded")
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(c.get(w.url("/ok")).send().await.unwrap().status(), 200);
    let m = w.metrics().await;
    assert!(
        m.contains("weir_plugin_traps_total{plugin=\"pw-test\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn failure_open_skips_the_plugin_for_that_request() {
    let up = Upstream::start("app").await;
    let w = weir_with_filter("failure = \"open\"\n", "", &up).await;
    let r = reqwest::get(w.url("/panic")).await.unwrap();
    assert_eq!(r.status(), 200, "the request went on without the plugin");
}

#[tokio::test]
async fn ticks_reach_the_root_context() {
    let up = Upstream::start("app").await;
    let w = weir_with_filter("config_raw = \"tick\"\n", "", &up).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let ticks: u32 = reqwest::get(w.url("/ticks"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // A 50 ms period on every worker's instance: several ticks in 600 ms, but not hundreds.
    assert!((4..200).contains(&ticks), "{ticks} ticks");
}

fn write_plugin(dir: &Path, name: &str, bytes: &[u8], toml: Option<&str>) {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::write(plugins.join(format!("{name}.wasm")), bytes).unwrap();
    if let Some(t) = toml {
        std::fs::write(plugins.join(format!("{name}.toml")), t).unwrap();
    }
}

/// `weir validate` on a config whose plugins folder holds one module.
fn validate_with(bytes: &[u8], toml: Option<&str>) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    write_plugin(dir.path(), "20-bad", bytes, toml);
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\n[[route]]\nname = \"e\"\necho = true\n").unwrap();
    let out = std::process::Command::new(support::weir_bin())
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

const MINIMAL: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_abi_version_0_2_1")))"#;

#[test]
fn bad_modules_are_refused_with_the_cause() {
    let (code, err) = validate_with(b"this is not wasm at all", None);
    assert_eq!(code, 1);
    assert!(
        err.contains("20-bad.wasm: not a WebAssembly module"),
        "{err}"
    );

    let good = std::fs::read(test_filter("pw-test")).unwrap();
    let (_, err) = validate_with(&good[..good.len() / 2], None);
    assert!(
        err.contains("20-bad.wasm: invalid WebAssembly module"),
        "{err}"
    );

    let no_abi =
        wat::parse_str(MINIMAL.replace(r#"(func (export "proxy_abi_version_0_2_1"))"#, ""))
            .unwrap();
    let (_, err) = validate_with(&no_abi, None);
    assert!(err.contains("declares no proxy-wasm ABI version"), "{err}");

    let unknown_import = wat::parse_str(MINIMAL.replace(
        "(module",
        r#"(module (import "env" "proxy_foo" (func (param i32) (result i32)))"#,
    ))
    .unwrap();
    let (_, err) = validate_with(&unknown_import, None);
    assert!(
        err.contains("imports env.proxy_foo, which weir does not provide"),
        "{err}"
    );

    let (_, err) = validate_with(&good, Some("config_raw = \"reject\"\n"));
    assert!(err.contains("proxy_on_configure returned false"), "{err}");

    let (_, err) = validate_with(&good, Some("confg = 1\n"));
    assert!(
        err.contains("20-bad.toml") && err.contains("unknown field `confg`"),
        "{err}"
    );

    let minimal = wat::parse_str(MINIMAL).unwrap();
    let (code, err) = validate_with(&minimal, None);
    assert_eq!(
        code, 0,
        "a module exporting only the required parts loads: {err}"
    );
}

#[test]
fn all_three_abi_versions_load() {
    for (marker, headers) in [
        ("proxy_abi_version_0_1_0", "(param i32 i32) (result i32)"),
        (
            "proxy_abi_version_0_2_0",
            "(param i32 i32 i32) (result i32)",
        ),
        (
            "proxy_abi_version_0_2_1",
            "(param i32 i32 i32) (result i32)",
        ),
    ] {
        let text = format!(
            r#"(module
              (memory (export "memory") 1)
              (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
              (func (export "proxy_on_request_headers") {headers} i32.const 0)
              (func (export "{marker}")))"#
        );
        let (code, err) = validate_with(&wat::parse_str(text).unwrap(), None);
        assert_eq!(code, 0, "{marker}: {err}");
    }
    // A 0.1.0 module whose header callback takes three arguments is refused by name.
    let text = r#"(module
      (memory (export "memory") 1)
      (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) i32.const 0)
      (func (export "proxy_abi_version_0_1_0")))"#;
    let (_, err) = validate_with(&wat::parse_str(text).unwrap(), None);
    assert!(
        err.contains("proxy_on_request_headers has the wrong signature for ABI 0.1.0"),
        "{err}"
    );
}

/// A hand-written ABI 0.1.0 module: its two-argument `proxy_on_request_headers`
/// looks up a missing header (0.1.0 answers OK with an empty value, where 0.2.x
/// answers NotFound) and, when it got OK, adds `x-abi: 0.1.0`.
const ABI_0_1_0: &str = r#"(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "x-missing")
  (data (i32.const 16) "x-abi")
  (data (i32.const 32) "0.1.0")
  (func (export "malloc") (param i32) (result i32) i32.const 1024)
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (result i32)
    (if (i32.eqz (call $get (i32.const 0) (i32.const 0) (i32.const 9) (i32.const 100) (i32.const 104)))
      (then (drop (call $add (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 32) (i32.const 5)))))
    i32.const 0)
  (func (export "proxy_abi_version_0_1_0")))"#;

#[tokio::test]
async fn abi_0_1_0_modules_get_two_argument_header_callbacks_and_their_own_semantics() {
    let dir = tempfile::tempdir().unwrap();
    write_plugin(
        dir.path(),
        "10-old",
        &wat::parse_str(ABI_0_1_0).unwrap(),
        None,
    );
    let (admin, port) = (free_port(), free_port());
    let config = format!(
        "{}[[route]]\nname = \"echo\"\necho = true\n",
        support::base_config(admin, port)
    );
    let w = Weir::start_in(dir, admin, port, &config).await;
    let v: serde_json::Value = reqwest::get(w.url("/"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["headers"]["x-abi"], "0.1.0");
}

/// A gRPC health check through weir by hand (HTTP/2, prior knowledge), with
/// request trailers; the response's trailers as the client got them.
async fn grpc_check_with_trailers(w: &Weir) -> (u16, http::HeaderMap) {
    use http_body_util::BodyExt;
    let service = b"weir.test";
    let mut message = vec![0x0a, service.len() as u8];
    message.extend_from_slice(service);
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-client-trailer", "yes".parse().unwrap());
    let frames: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>> = vec![
        Ok(hyper::body::Frame::data(bytes::Bytes::from(framed))),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = http::Request::post(w.url("/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let collected = resp.into_body().collect().await.unwrap();
    (status, collected.trailers().cloned().unwrap_or_default())
}

#[tokio::test]
async fn trailers_added_in_the_last_body_callback_end_a_message_that_had_none() {
    // Envoy creates the trailer map when the last body callback (eos set) of
    // a message without trailers adds to it, and sends the trailers after the
    // body.
    use http_body_util::BodyExt;
    let up = Upstream::start("app").await;
    let w = weir_with_filter("", "", &up).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    for (path, added) in [("/add-trailer", true), ("/hello", false)] {
        let req = http::Request::get(w.url(path))
            .body(http_body_util::Empty::new())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        let body = collected.to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["path"], path, "the body is whole before the trailers");
        if added {
            let t = trailers.expect("the response ends with trailers");
            assert_eq!(t["x-pw-added-trailer"], "yes", "{t:?}");
        } else {
            assert!(
                trailers.is_none(),
                "no trailers where the plugin added none"
            );
        }
    }
}

#[tokio::test]
async fn trailer_callbacks_read_and_change_trailers_as_in_envoy() {
    let dir = tempfile::tempdir().unwrap();
    write_plugin(
        dir.path(),
        "10-pw-test",
        &std::fs::read(test_filter("pw-test")).unwrap(),
        None,
    );
    let grpc = support::grpc_upstream().await;
    let (admin, port) = (free_port(), free_port());
    let config = format!(
        "{}[[cluster]]\nname = \"grpc\"\nendpoints = [\"{grpc}\"]\nprotocol = \"http2\"\n[[route]]\nname = \"grpc\"\ncluster = \"grpc\"\n",
        support::base_config(admin, port)
    );
    let w = Weir::start_in(dir, admin, port, &config).await;
    let (status, trailers) = grpc_check_with_trailers(&w).await;
    assert_eq!(status, 200);
    // Envoy calls proxy_on_response_trailers with the upstream's trailers,
    // and what the filter adds there reaches the client. Checked by hand
    // against Envoy 1.40 (same pw_test.wasm, a grpcio health server, nghttp):
    // `x-pw-grpc-status: 0` and `x-pw-trailers-seen: 2` there (grpcio sends
    // grpc-message too), and the same from weir in front of that server.
    assert_eq!(trailers["grpc-status"], "0", "{trailers:?}");
    assert_eq!(trailers["x-pw-grpc-status"], "0", "{trailers:?}");
    assert!(
        trailers["x-pw-trailers-seen"]
            .to_str()
            .unwrap()
            .parse::<usize>()
            .unwrap()
            >= 1,
        "{trailers:?}"
    );
    // The request's trailers reached proxy_on_request_trailers.
    let mut logged = false;
    for _ in 0..50 {
        logged = w
            .logs()
            .contains(r#"request trailers: 1 [("x-client-trailer", "yes")]"#);
        if logged {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(logged, "{}", w.logs());
    // And the log phase reads both messages' trailers as they went on
    // (request.trailers, response.trailers; Envoy's names).
    let mut logged = false;
    for _ in 0..50 {
        logged = w.logs().contains(r#"request.trailers=["x-client-trailer"] response.trailers=["grpc-status", "x-pw-grpc-status", "x-pw-trailers-seen"]"#);
        if logged {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(logged, "{}", w.logs());
}

/// What Envoy 1.40 answers to [`oob_probe`]'s module, status by status
/// (recorded 2026-11-29; record it again whenever the probe changes, as
/// benches/envoy_probe/README.md says).
const ENVOY_1_40: &str = "00,06,06,00,00,06,00,06,00,06,06,00,06,06,00,06,06,00,06,06,01,06,06,00,06,00,06,06,00,06,06,00,00,06,06,00,06,06,00,00,06,06,00,00,06,06,03,06,06,00,06,06,00,06,06,00,00,06,06,00,06,06,00,00,06,06,00,06,06,06,00,06,06,00,06,00,06,06,00,06,06,00,06,00,06,06,00,00,06,06,00,06,06,00,06,00,06,01,06,06,01,06,06,01,00,21,21,00,21,00,21,21,00,21,21,00,06,06,02,06,06,02,06,06,00,06,06,00,06,02,06,06,02,00,06,06,00,06,06,00,06,06,06,06,06,06,";

/// The host's side of memory safety (the reference's checklist, item 57):
/// every hostcall handed a pointer past the end of the module's memory, or a
/// length running past it, answers InvalidMemoryAccess (6) (a WASI call
/// errno FAULT, 21) and goes no
/// further (a bad local reply sends nothing; a bad out-pointer gets nothing
/// written), and a (0, 0) pair reads as empty. Envoy 1.40 answers the same
/// statuses to the same module (benches/envoy_probe). The request is then
/// answered by the module's good local reply, and the next one too.
#[tokio::test]
async fn hostcalls_given_pointers_outside_memory_answer_invalid_memory_access() {
    use oob_probe::Variant;
    let probe = oob_probe::probe();
    let wasm = wat::parse_str(&probe.wat).unwrap();
    // To run the same module in Envoy (benches/envoy_probe/README.md).
    if let Some(path) = std::env::var_os("WEIR_WRITE_OOB_PROBE") {
        std::fs::write(path, &wasm).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    write_plugin(
        dir.path(),
        "10-probe",
        &wasm,
        Some("vm_id = \"probe\"\nvm_config = \"vmcfg\"\n"),
    );
    let (admin, port, dead) = (free_port(), free_port(), free_port());
    let config = format!(
        "{}[[cluster]]\nname = \"dead\"\nendpoints = [\"127.0.0.1:{dead}\"]\n[[route]]\nname = \"echo\"\necho = true\n",
        support::base_config(admin, port)
    );
    let w = Weir::start_in(dir, admin, port, &config).await;
    for _ in 0..2 {
        let resp = reqwest::Client::new()
            .post(w.url("/p"))
            .body("abc")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-reply"], "1");
        let body = resp.text().await.unwrap();
        let codes: Vec<u32> = body
            .trim_end_matches(',')
            .split(',')
            .map(|c| {
                c.parse()
                    .unwrap_or_else(|_| panic!("not a status list: {body:?}"))
            })
            .collect();
        assert_eq!(codes.len(), probe.labels.len(), "{body}");
        let wrong: Vec<String> = probe
            .labels
            .iter()
            .zip(&codes)
            .filter(|&(label, &code)| match label.variant {
                // With good arguments: NotFound for the unknown function,
                // BadArgument for a request head that has gone on, else OK.
                Variant::Control => {
                    code != match label.call {
                        "proxy_call_foreign_function" => 1,
                        "proxy_set_header_map_pairs" => 2,
                        _ => 0,
                    }
                }
                // InvalidMemoryAccess; WASI's errno FAULT.
                Variant::OutOfBounds(_) | Variant::TooLong(_) => {
                    code != if oob_probe::WASI.contains(&label.call) {
                        21
                    } else {
                        6
                    }
                }
                Variant::Empty(_) => code == 6,
            })
            .map(|(label, code)| format!("{} {:?}: {code}", label.call, label.variant))
            .collect();
        assert!(wrong.is_empty(), "unexpected statuses: {wrong:#?}");
        assert_eq!(body, ENVOY_1_40, "the statuses Envoy gives the same module");
    }
    assert!(
        w.plugin_status("probe").await["traps"] == 0,
        "no call trapped the plugin"
    );
}
