//! Protocols through the real weir binary: HTTP/2 (h2c and ALPN), gRPC with
//! trailers, WebSocket upgrades, TLS termination with SNI, upstream TLS.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::{TestCa, Upstream, Weir};

fn one_cluster(addr: impl std::fmt::Display, extra: &str) -> String {
    format!(
        "[[cluster]]\nname = \"up\"\nendpoints = [\"{addr}\"]\n{extra}\n\n[[route]]\nname = \"all\"\ncluster = \"up\"\n"
    )
}

#[tokio::test]
async fn http2_prior_knowledge_downstream_reaches_an_http1_upstream() {
    let a = Upstream::start("a").await;
    let w = Weir::start(&one_cluster(a.addr, "")).await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = c
        .post(w.url("/h2?x=1"))
        .body("over h2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["body"], "over h2");
    assert_eq!(
        v["headers"]["host"],
        format!("127.0.0.1:{}", w.port),
        "the :authority becomes the upstream Host"
    );
    // Many concurrent streams on one connection.
    let results =
        futures_util::future::join_all((0..50).map(|i| c.get(w.url(&format!("/s{i}"))).send()))
            .await;
    assert!(results.into_iter().all(|r| r.unwrap().status() == 200));
}

#[tokio::test]
async fn http2_clusters_send_the_host_as_authority_on_one_connection() {
    let a = Upstream::start("a").await;
    let config = format!(
        "[[cluster]]\nname = \"up\"\nendpoints = [\"{}\"]\nprotocol = \"http2\"\n\n\
         [[route]]\nname = \"rewritten\"\nmatch = {{ prefix = \"/rw\" }}\ncluster = \"up\"\nhost_rewrite = \"internal.svc\"\n\n\
         [[route]]\nname = \"all\"\ncluster = \"up\"\n",
        a.addr
    );
    let w = Weir::start(&config).await;
    let c = reqwest::Client::new();
    let answers = futures_util::future::join_all((0..20).map(|i| {
        c.get(w.url(&format!("/m{i}")))
            .header("host", "api.example.test")
            .send()
    }))
    .await;
    for r in answers {
        let r = r.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["version"], "HTTP/2.0");
        assert_eq!(
            v["authority"], "api.example.test",
            "the client's host is the upstream's :authority, as Envoy sends it"
        );
        assert!(
            v["headers"].get("host").is_none(),
            "no Host header beside :authority: {v}"
        );
    }
    let r = c
        .get(w.url("/rw/x"))
        .header("host", "api.example.test")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["authority"], "internal.svc",
        "host_rewrite sets :authority"
    );
    assert_eq!(
        a.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "every request multiplexed on one upstream connection"
    );
}

#[tokio::test]
async fn grpc_unary_and_streaming_calls_pass_with_trailers() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let upstream = support::grpc_upstream().await;
    let w = Weir::start(&one_cluster(upstream, "protocol = \"http2\"")).await;
    let channel = tonic::transport::Endpoint::from_shared(w.url(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    // A unary OK: grpc-status arrives in the trailers, which tonic insists on.
    let reply = client
        .check(HealthCheckRequest {
            service: "weir.test".into(),
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().status, 1, "SERVING");
    // An error status from the server reaches the client intact.
    let err = client
        .check(HealthCheckRequest {
            service: "unknown".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // Server streaming.
    let mut stream = client
        .watch(HealthCheckRequest {
            service: "weir.test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.status, 1);
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = socket.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() {
                        ws.send(format!("echo: {}", msg.to_text().unwrap()).into())
                            .await
                            .unwrap();
                    }
                }
            });
        }
    });
    let w = Weir::start(&one_cluster(addr, "")).await;
    let (mut ws, resp) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/chat", w.port))
            .await
            .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(format!("hello {i}").into()).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(reply.to_text().unwrap(), format!("echo: hello {i}"));
    }
    ws.close(None).await.unwrap();
}

/// Only WebSocket upgrades are tunnelled. An h2c upgrade goes on as a plain
/// request with its Upgrade, Connection and HTTP2-Settings headers removed
/// (a backend that took it would speak HTTP/2 with the client past weir's
/// routes and plugins: h2c smuggling), and an upstream that answers 101 to
/// a request that asked for no upgrade gets the client a 502 naming it.
#[tokio::test]
async fn h2c_upgrades_are_not_tunnelled_and_unasked_101s_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Upstream::start("a").await;
    let w = Weir::start(&one_cluster(a.addr, "")).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", w.port))
        .await
        .unwrap();
    s.write_all(
        b"GET /smuggle HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let doc: serde_json::Value =
        serde_json::from_str(reply.split_once("\r\n\r\n").unwrap().1).unwrap();
    for gone in ["upgrade", "connection", "http2-settings"] {
        assert!(
            doc["headers"].get(gone).is_none(),
            "{gone} reached the upstream: {doc}"
        );
    }

    // An upstream that switches protocols unasked.
    let rogue = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rogue_addr = rogue.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = rogue.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
                    .await;
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    let w2 = Weir::start(&one_cluster(rogue_addr, "")).await;
    let r = reqwest::get(w2.url("/plain")).await.unwrap();
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("switched protocols on a request that asked for no upgrade"),
        "{text}"
    );
}

/// An upstream response whose length is ambiguous is not passed on: a
/// transfer coding other than chunked (the client would get the bytes still
/// encoded, the coding dropped) or Content-Length beside Transfer-Encoding
/// (RFC 9112, 6.3: response splitting) answer 502 naming the cause, as in
/// Envoy, and so does a response head over `max_response_header_size`. An
/// HTTP/1.0 upstream's answer reaches an HTTP/1.1 client as HTTP/1.1,
/// chunked, on a connection that stays open (RFC 9110, 6.2).
#[tokio::test]
async fn ambiguous_upstream_framing_is_refused_and_http10_answers_go_out_as_http11() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let raw = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = raw.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = raw.accept().await {
            tokio::spawn(async move {
                let Some(head) = support::read_head(&mut stream).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or("");
                let big_head = format!(
                    "HTTP/1.1 200 OK\r\nx-big: {}\r\nContent-Length: 2\r\n\r\nok",
                    "b".repeat(70 * 1024)
                );
                let reply: &[u8] = match path {
                    "/big-head" => big_head.as_bytes(),
                    "/cl-and-te" => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                    "/gzip-chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                    "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                    _ => b"HTTP/1.0 200 OK\r\n\r\nten body",
                };
                let _ = stream.write_all(reply).await;
            });
        }
    });
    let w = Weir::start(&one_cluster(raw_addr, "")).await;
    for (path, cause) in [
        ("/cl-and-te", "both Content-Length and Transfer-Encoding"),
        ("/gzip-chunked", "transfer coding \"gzip\" in the response"),
    ] {
        let r = reqwest::get(w.url(path)).await.unwrap();
        assert_eq!(r.status(), 502, "{path}");
        let text = r.text().await.unwrap();
        assert!(
            text.starts_with("invalid upstream response"),
            "{path}: {text}"
        );
        assert!(text.contains(cause), "{path}: {text}");
    }
    let r = reqwest::get(w.url("/chunked")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");

    // A response head over the cluster's max_response_header_size (60 KiB,
    // Envoy's default) answers 502; a cluster allowing more passes it.
    let r = reqwest::get(w.url("/big-head")).await.unwrap();
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("larger than the cluster's max_response_header_size (61440 bytes)"),
        "{text}"
    );
    let roomy = Weir::start(&one_cluster(
        raw_addr,
        "max_response_header_size = \"128KiB\"",
    ))
    .await;
    let r = reqwest::get(roomy.url("/big-head")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-big"].len(), 70 * 1024);

    // HTTP/1.0 from the upstream, two requests on one client connection.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", w.port))
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET /ten HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        while !reply.ends_with(b"0\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("the reply ends with a last chunk")
                .unwrap();
            assert!(
                n > 0,
                "weir closed the connection: {}",
                String::from_utf8_lossy(&reply)
            );
            reply.extend_from_slice(&buf[..n]);
        }
        seen.push(String::from_utf8_lossy(&reply).to_string());
    }
    for reply in &seen {
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains("transfer-encoding: chunked"), "{reply}");
        assert!(reply.contains("ten body"), "{reply}");
    }
}

/// What Envoy 1.40 does with odd upstream responses, probed side by side
/// with the same raw upstream: a 204 that frames a body (Content-Length
/// other than 0, or Transfer-Encoding) answers 502, and so does a
/// Content-Length list ("2, 2"), while a 204 with
/// `Content-Length: 0` and a 304 with a Content-Length pass; a header value
/// folded over lines (obs-fold) is joined with spaces; the `Trailer` header
/// is forwarded both ways, so HTTP/1.1 trailers reach an upstream and a
/// client that asks for them (`TE: trailers`).
#[tokio::test]
async fn bodied_204s_are_refused_folded_headers_joined_and_trailers_announced() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let raw = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = raw.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = raw.accept().await {
            // Keep-alive: one request after another on each connection.
            tokio::spawn(async move {
                while let Some(mut head) = support::read_head(&mut stream).await {
                    let text = String::from_utf8_lossy(&head).to_string();
                    let path = text.split(' ').nth(1).unwrap_or("").to_string();
                    let echoed;
                    let reply: &[u8] = match path.as_str() {
                        "/204-body" => b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
                        "/204-chunked" => b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                        "/cl-list" => b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
                        "/204-zero" => b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nx-seen: 1\r\n\r\n",
                        "/304" => b"HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\nETag: \"v1\"\r\n\r\n",
                        "/folded" => b"HTTP/1.1 200 OK\r\nX-Folded: one\r\n two\r\n\tthree\r\nContent-Length: 2\r\n\r\nok",
                        "/trailers" => b"HTTP/1.1 200 OK\r\nTrailer: x-checksum\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: 42\r\n\r\n",
                        "/echo-raw" => {
                            // The whole chunked request, up to the blank
                            // line after its last chunk and any trailers.
                            let mut buf = [0u8; 4096];
                            let body_at = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                            while !(head[body_at..].windows(5).any(|w| w == b"\r\n0\r\n")
                                && head.ends_with(b"\r\n\r\n"))
                            {
                                let n = stream.read(&mut buf).await.unwrap_or(0);
                                if n == 0 {
                                    return;
                                }
                                head.extend_from_slice(&buf[..n]);
                            }
                            echoed = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
                                head.len(),
                                String::from_utf8_lossy(&head)
                            );
                            echoed.as_bytes()
                        }
                        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain",
                    };
                    if stream.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let w = Weir::start(&one_cluster(raw_addr, "")).await;
    let c = reqwest::Client::new();
    for (path, cause) in [
        (
            "/204-body",
            "a 204 response with a Content-Length other than 0",
        ),
        ("/204-chunked", "a 204 response with Transfer-Encoding"),
        ("/cl-list", "Content-Length \"2, 2\" is a list"),
    ] {
        let r = c.get(w.url(path)).send().await.unwrap();
        assert_eq!(
            r.status(),
            502,
            "{path}: Envoy answers 502 (protocol error)"
        );
        let text = r.text().await.unwrap();
        assert!(
            text.starts_with("invalid upstream response") && text.contains(cause),
            "{path}: {text}"
        );
        // The refused response's connection is not used again: the next
        // request is answered whole, not from the stray body bytes.
        let r = c.get(w.url("/after")).send().await.unwrap();
        assert_eq!(r.status(), 200, "after {path}");
        assert_eq!(r.text().await.unwrap(), "plain", "after {path}");
    }
    // Over HTTP/2 such a 204 reset the client's stream (PROTOCOL_ERROR).
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(w.url("/204-body")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let r = c.get(w.url("/204-zero")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["x-seen"], "1");
    let r = c.get(w.url("/304")).send().await.unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], "\"v1\"");
    let r = c.get(w.url("/after")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "plain", "after the 304");

    let r = c.get(w.url("/folded")).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "hyper refused obs-fold before; Envoy joins it"
    );
    assert_eq!(r.headers()["x-folded"], "one two three");

    // Trailers over HTTP/1.1, both ways, on one client connection.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", w.port))
        .await
        .unwrap();
    async fn read_until(s: &mut tokio::net::TcpStream, end: &[u8]) -> String {
        let reply = tokio::time::timeout(Duration::from_secs(10), support::read_until(s, end))
            .await
            .expect("the reply ends")
            .expect("weir keeps the connection open");
        String::from_utf8_lossy(&reply).to_lowercase()
    }
    s.write_all(b"GET /trailers HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n")
        .await
        .unwrap();
    let reply = read_until(&mut s, b"x-checksum: 42\r\n\r\n").await;
    assert!(reply.contains("\r\ntrailer: x-checksum\r\n"), "{reply}");
    s.write_all(
        b"POST /echo-raw HTTP/1.1\r\nHost: a\r\nTrailer: x-sum\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 7\r\n\r\n",
    )
    .await
    .unwrap();
    let reply = read_until(&mut s, b"x-sum: 7\r\n\r\n").await;
    assert!(
        reply.contains("\r\ntrailer: x-sum\r\n"),
        "the upstream is told: {reply}"
    );
}

#[tokio::test]
async fn a_reload_turns_a_plain_listener_into_tls_on_the_same_port() {
    let a = Upstream::start("a").await;
    let rest = one_cluster(a.addr, "");
    let w = Weir::start(&rest).await;
    assert_eq!(reqwest::get(w.url("/")).await.unwrap().status(), 200);
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.issue(&["a.test"], dir.path(), "a");
    let header = support::base_config(w.admin, w.port);
    let tls = header.replace(
        "name = \"public\"\n",
        &format!(
            "name = \"public\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
            cert.display(),
            key.display()
        ),
    );
    assert_ne!(tls, header);
    w.write_config(&format!("{tls}{rest}"));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", w.port).parse().unwrap();
    let url = format!("https://a.test:{}/", w.port);
    let mut last = String::new();
    for _ in 0..200 {
        // A new client per try: each try opens a new connection.
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
            .resolve("a.test", addr)
            .build()
            .unwrap();
        match client.get(&url).send().await {
            Ok(r) if r.status() == 200 => {
                last.clear();
                break;
            }
            other => last = format!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(last.is_empty(), "the listener never served TLS: {last}");
    let plain = reqwest::Client::new().get(w.url("/")).send().await;
    assert!(
        plain.is_err(),
        "plain text on the port that now terminates TLS: {plain:?}"
    );
}

#[tokio::test]
async fn tls_termination_picks_certificates_by_sni_and_offers_h2() {
    let a = Upstream::start("a").await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (dc, dk) = ca.issue(&["default.test"], dir.path(), "default");
    let (ac, ak) = ca.issue(&["a.test"], dir.path(), "a");
    let (wc, wk) = ca.issue(&["*.b.test"], dir.path(), "wild");
    let (admin, port) = (support::free_port(), support::free_port());
    let config = format!(
        r#"[admin]
listen = "127.0.0.1:{admin}"

[[listener]]
name = "tls"
listen = "127.0.0.1:{port}"
tls = {{ cert = "{}", key = "{}", sni = [{{ server_names = ["a.test"], cert = "{}", key = "{}" }}, {{ server_names = ["*.b.test"], cert = "{}", key = "{}" }}] }}

{}"#,
        dc.display(),
        dk.display(),
        ac.display(),
        ak.display(),
        wc.display(),
        wk.display(),
        one_cluster(a.addr, "")
    );
    let w = Weir::start_with(admin, port, &config).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = |host: &str| {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
            .resolve(host, addr)
            .build()
            .unwrap()
    };
    for host in ["a.test", "x.b.test", "default.test"] {
        let r = client(host)
            .get(format!("https://{host}:{port}/sni"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{host}: {e:?}"));
        assert_eq!(
            r.version(),
            reqwest::Version::HTTP_2,
            "ALPN chose h2 for {host}"
        );
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    }
    // A name with no certificate of its own gets the default one, which does not cover it.
    let err = client("other.test")
        .get(format!("https://other.test:{port}/"))
        .send()
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("NotValidForName")
            || format!("{err:?}").contains("certificate"),
        "{err:?}"
    );
    // A plain-text client on the TLS port is refused and counted.
    let _ = reqwest::get(format!("http://127.0.0.1:{port}/")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = w.metrics().await;
    assert!(
        m.contains(
            "weir_tls_handshake_errors_total{listener=\"tls\",reason=\"alert_from_client\"} 1"
        ),
        "the client refused the certificate: {m}"
    );
    assert!(
        m.contains(
            "weir_tls_handshake_errors_total{listener=\"tls\",reason=\"malformed_or_not_tls\"} 1"
        ),
        "plain text on the TLS port: {m}"
    );
}

#[tokio::test]
async fn clusters_originate_tls_and_verify_the_upstream() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (uc, uk) = ca.issue(&["upstream.test"], dir.path(), "upstream");
    let ca_path = ca.write(dir.path());
    // An upstream that speaks TLS: weir itself, terminating TLS with a direct response.
    let (up_admin, up_port) = (support::free_port(), support::free_port());
    let up_config = format!(
        "[admin]\nlisten = \"127.0.0.1:{up_admin}\"\n[[listener]]\nname = \"tls\"\nlisten = \"127.0.0.1:{up_port}\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n[[route]]\nname = \"echo\"\necho = true\n",
        uc.display(),
        uk.display()
    );
    let _upstream = Weir::start_with(up_admin, up_port, &up_config).await;
    let config = format!(
        r#"[[cluster]]
name = "good"
endpoints = ["127.0.0.1:{up_port}"]
tls = {{ ca = "{ca}", sni = "upstream.test" }}

[[cluster]]
name = "wrong-name"
endpoints = ["127.0.0.1:{up_port}"]
tls = {{ ca = "{ca}", sni = "other.test" }}

[[cluster]]
name = "good-h2"
endpoints = ["127.0.0.1:{up_port}"]
protocol = "http2"
tls = {{ ca = "{ca}", sni = "upstream.test" }}

[[route]]
name = "wrong"
match = {{ prefix = "/wrong" }}
cluster = "wrong-name"

[[route]]
name = "h2"
match = {{ prefix = "/h2" }}
cluster = "good-h2"

[[route]]
name = "good"
cluster = "good"
"#,
        ca = ca_path.display()
    );
    let w = Weir::start(&config).await;
    let r = reqwest::get(w.url("/secure")).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["headers"]["x-forwarded-proto"], "https",
        "the upstream weir saw TLS"
    );
    assert_eq!(v["version"], "HTTP/1.1");
    let r = reqwest::get(w.url("/h2")).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["version"], "HTTP/2.0", "ALPN chose h2 upstream");
    let r = reqwest::get(w.url("/wrong")).await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("upstream connect error"));
}
