//! A proxy-wasm filter written with the Rust SDK, as an Envoy user would write
//! one. What it does depends on the request path, so that one module drives
//! the integration tests through the whole ABI:
//!
//! - every request: adds `x-pw-seen: <tag>` upstream and `x-pw-plugin: <plugin_name>` downstream;
//! - response trailers (gRPC): adds `x-pw-grpc-status` (a copy of `grpc-status`) and
//!   `x-pw-trailers-seen` (how many trailers it was told of); request trailers are logged;
//! - `/deny`: answers 403 locally;
//! - `/props`: answers with the properties it reads, one per line;
//! - `/envoy-edits`: makes the header edits and reads Envoy answers OK to (an invalid
//!   name, a CR LF value, removing `:method`, maps and bodies not there yet) and answers
//!   with what it read;
//! - the log phase logs the request and response headers and sizes it reads;
//! - `/quota-async`: takes quota with an http call to `weir.quota` (2 tokens an hour), answers
//!   200 or 429 with the decision; `/quota-bad` makes that call with a bad argument;
//! - `/shared`: increments a shared-data counter with compare-and-swap and answers its value;
//! - `/enqueue`: puts header x-item on the shared queue `work`; the root's on_queue_ready
//!   dequeues it into shared data, which `/dequeued` answers;
//! - `/ticks`: answers how many ticks the root contexts counted (configuration `tick`);
//! - `/metric`: increments the counter metric `pw_test_hits`;
//! - `/callout`: calls cluster `auth` (`/status/<code>` from header x-callout-status, timeout
//!   from x-callout-timeout-ms, default 5 s), pauses, and on the answer adds `x-callout-status`
//!   upstream, or answers 401 when it was not 200, saying the callback's counts
//!   (`x-callout-shape`: headers,body,trailers), `proxy_get_status` (`x-callout-call`) and the
//!   call's body after `callout refused`;
//! - `/upper`: upper-cases the request body (waiting for all of it);
//! - `/replace-response`: replaces the response body;
//! - `/add-trailer`: adds the response trailer `x-pw-added-trailer` in the last body callback;
//! - `/grpc`: calls grpc.health.v1.Health/Check on cluster `grpc` (service from header
//!   x-grpc-service, timeout from x-callout-timeout-ms) and adds the reply's bytes in hex
//!   upstream, or answers 502 with its status and message (x-grpc-status, x-grpc-message);
//! - `/rewrite`: rewrites `:path` to `/rewritten` before routing;
//! - `/forwarded`: copies the x-forwarded-for, x-forwarded-proto and x-request-id it reads into
//!   x-read-xff, x-read-xfp and x-read-id, then sets x-forwarded-proto to `changed-by-filter`;
//! - `/host-alias`: reads `host`, then adds, replaces or removes it (header x-host-op), and
//!   sends upstream what it read (`x-host-read`) and the map's size with the status of that
//!   call and the sum of the pairs' lengths (`x-map-size`);
//! - `/panic`: panics (a trap);
//! - `/loop`: loops forever (the CPU limit must stop it).
//!
//! The plugin configuration is the tag; the configuration `reject` refuses the plugin.

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

unsafe extern "C" {
    /// The ABI's header map size, which the Rust SDK leaves unwrapped.
    fn proxy_get_header_map_size(map: i32, size: *mut usize) -> i32;
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { tag: String::new(), hits: 0, queue: 0 }) });
}}

struct Root {
    tag: String,
    hits: u32,
    queue: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.tag = String::from_utf8_lossy(&config).to_string();
        if self.tag == "reject" {
            log::error!("refusing the configuration {:?}", self.tag);
            return false;
        }
        self.hits = proxy_wasm::hostcalls::define_metric(MetricType::Counter, "pw_test_hits").unwrap();
        self.queue = self.register_shared_queue("work");
        log::info!("configured with tag {:?}", self.tag);
        if self.tag == "tick" {
            self.set_tick_period(Duration::from_millis(50));
        }
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = self.dequeue_shared_queue(queue_id) {
            let (value, cas) = self.get_shared_data("dequeued");
            let mut all = value.unwrap_or_default();
            all.extend_from_slice(&item);
            let _ = self.set_shared_data("dequeued", Some(&all), cas);
        }
    }

    fn on_tick(&mut self) {
        let (value, cas) = self.get_shared_data("ticks");
        let n = value.map_or(0, |v| String::from_utf8_lossy(&v).parse::<u64>().unwrap_or(0));
        let _ = self.set_shared_data("ticks", Some((n + 1).to_string().as_bytes()), cas);
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream { tag: self.tag.clone(), hits: self.hits, path: String::new() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    tag: String,
    hits: u32,
    path: String,
}

fn prop_string(ctx: &dyn Context, path: &[&str]) -> String {
    match ctx.get_property(path.to_vec()) {
        Some(v) => String::from_utf8_lossy(&v).to_string(),
        None => "<none>".to_string(),
    }
}

fn prop_int(ctx: &dyn Context, path: &[&str]) -> String {
    match ctx.get_property(path.to_vec()) {
        Some(v) if v.len() == 8 => i64::from_le_bytes(v.try_into().unwrap()).to_string(),
        Some(v) => format!("<{} bytes>", v.len()),
        None => "<none>".to_string(),
    }
}

/// The names in a header map property (proxy-wasm's serialized pairs).
fn prop_map_names(ctx: &dyn Context, path: &[&str]) -> String {
    let Some(b) = ctx.get_property(path.to_vec()) else {
        return "<none>".to_string();
    };
    let word = |at: usize| b.get(at..at + 4).map_or(0, |w| u32::from_le_bytes(w.try_into().unwrap()) as usize);
    let n = if b.len() < 4 { 0 } else { word(0) };
    let mut at = 4 + 8 * n;
    let mut names = Vec::new();
    for i in 0..n {
        let (k, v) = (word(4 + 8 * i), word(8 + 8 * i));
        names.push(String::from_utf8_lossy(b.get(at..at + k).unwrap_or_default()).to_string());
        at += k + 1 + v + 1;
    }
    format!("{names:?}")
}

impl Context for Stream {
    fn on_grpc_call_response(&mut self, _token: u32, status_code: u32, response_size: usize) {
        if status_code == 0 {
            let body = self.get_grpc_call_response_body(0, response_size).unwrap_or_default();
            let hex: String = body.iter().map(|b| format!("{b:02x}")).collect();
            self.set_http_request_header("x-grpc-reply", Some(&hex));
            self.resume_http_request();
        } else {
            let code = status_code.to_string();
            let (_, message) = proxy_wasm::hostcalls::get_grpc_status().unwrap_or((99, None));
            let message = message.unwrap_or_default();
            self.send_http_response(502, vec![("x-grpc-status", code.as_str()), ("x-grpc-message", message.as_str())], Some(b"grpc call failed\n"));
        }
    }

    fn on_http_call_response(&mut self, _token: u32, headers: usize, body_size: usize, trailers: usize) {
        // A call that failed has no header map: Envoy answers BadArgument to
        // reading it, on which the SDK panics.
        let status = if headers == 0 { String::new() } else { self.get_http_call_response_header(":status").unwrap_or_default() };
        if self.path == "/quota-async" {
            let reply = self.get_http_call_response_body(0, body_size).unwrap_or_default();
            let allowed = status == "200" && String::from_utf8_lossy(&reply).contains("\"allowed\":true");
            self.send_http_response(if allowed { 200 } else { 429 }, vec![("x-quota-status", status.as_str())], Some(&reply));
            return;
        }
        if status == "200" {
            self.set_http_request_header("x-callout-status", Some(&status));
            self.resume_http_request();
        } else {
            // What the call came back as: the counts the callback got, and
            // proxy_get_status (code and message) for calls that failed.
            let (code, message) = proxy_wasm::hostcalls::get_grpc_status().unwrap_or((99, None));
            let shape = format!("{headers},{body_size},{trailers}");
            let call = format!("{code} {}", message.unwrap_or_default());
            let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
            let mut reply = b"callout refused\n".to_vec();
            reply.extend_from_slice(&body);
            self.send_http_response(
                401,
                vec![("x-callout-status", status.as_str()), ("x-callout-shape", shape.as_str()), ("x-callout-call", call.as_str())],
                Some(&reply),
            );
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_request_header("x-pw-seen", Some(&self.tag));
        if let Some(kv) = self.get_http_request_header("x-pw-set-attribute")
            && let Some((name, value)) = kv.split_once('=')
        {
            let path: Vec<&str> = name.split('.').collect();
            self.set_property(path, Some(value.as_bytes()));
        }
        let path = self.get_http_request_header(":path").unwrap_or_default();
        self.path = path.split('?').next().unwrap_or("").to_string();
        match self.path.as_str() {
            "/deny" => {
                self.send_http_response(403, vec![("x-denied-by", "pw-test")], Some(b"denied by pw-test\n"));
                Action::Pause
            }
            "/props" => {
                let mut body = String::new();
                for p in ["request.path", "request.url_path", "request.host", "request.method", "request.scheme", "request.protocol", "request.id", "source.address", "destination.address", "plugin_name", "plugin_root_id", "plugin_vm_id", "connection.tls_version", "connection.requested_server_name", "connection.uri_san_peer_certificate", "connection.subject_peer_certificate", "connection.uri_san_local_certificate", "source.principal", "destination.principal", "request.auth.principal"] {
                    let parts: Vec<&str> = p.split('.').collect();
                    body.push_str(&format!("{p}={}\n", prop_string(self, &parts)));
                }
                for p in ["connection.mtls"] {
                    let parts: Vec<&str> = p.split('.').collect();
                    let v = match self.get_property(parts) {
                        Some(v) if v == [1] => "true".to_string(),
                        Some(v) if v == [0] => "false".to_string(),
                        Some(v) => format!("<{} bytes>", v.len()),
                        None => "<none>".to_string(),
                    };
                    body.push_str(&format!("{p}={v}\n"));
                }
                for p in ["source.port", "destination.port", "request.time", "connection.id", "request.size", "request.total_size"] {
                    let parts: Vec<&str> = p.split('.').collect();
                    body.push_str(&format!("{p}={}\n", prop_int(self, &parts)));
                }
                body.push_str(&format!("request.headers.user-agent={}\n", prop_string(self, &["request", "headers", "user-agent"])));
                body.push_str(&format!("request.headers.x-multi={}\n", prop_string(self, &["request", "headers", "x-multi"])));
                body.push_str(&format!("xds.cluster_name={}\n", prop_string(self, &["xds", "cluster_name"])));
                body.push_str(&format!("xds.route_name={}\n", prop_string(self, &["xds", "route_name"])));
                self.send_http_response(200, vec![("content-type", "text/plain")], Some(body.as_bytes()));
                Action::Pause
            }
            "/envoy-edits" => {
                // Each of these answers OK in Envoy; the SDK panics on any
                // other answer, so reaching the reply is the test.
                self.add_http_request_header("bad name", "v");
                self.add_http_request_header("x-crlf", "a\r\nb");
                self.remove_http_request_header(":method");
                let response = self.get_http_response_headers().len();
                let call = self.get_http_call_response_headers().len();
                let (grpc, message) = self.get_grpc_status();
                let body = self.get_http_request_body(0, 10).map_or(0, |b| b.len());
                let vm = proxy_wasm::hostcalls::get_buffer(proxy_wasm::types::BufferType::VmConfiguration, 0, usize::MAX).unwrap().unwrap_or_default();
                let text = format!(
                    "response headers={response}\ncall headers={call}\nstatus={grpc} {message:?}\nbody={body}\nvm config={}\nmethod={}\n",
                    String::from_utf8_lossy(&vm),
                    self.get_http_request_header(":method").unwrap_or_default(),
                );
                self.send_http_response(200, vec![], Some(text.as_bytes()));
                Action::Pause
            }
            "/quota" => {
                let args = br#"{"key": "pw-test", "tokens": 2, "period_ms": 3600000}"#;
                match proxy_wasm::hostcalls::call_foreign_function("weir.quota.take", Some(args)) {
                    Ok(Some(reply)) => {
                        let allowed = String::from_utf8_lossy(&reply).contains("\"allowed\":true");
                        self.send_http_response(if allowed { 200 } else { 429 }, vec![], Some(&reply));
                    }
                    other => {
                        let msg = format!("weir.quota.take failed: {other:?}\n");
                        self.send_http_response(500, vec![], Some(msg.as_bytes()));
                    }
                }
                Action::Pause
            }
            "/quota-async" => {
                let args = br#"{"key": "pw-test-async", "tokens": 2, "period_ms": 3600000}"#;
                let headers = vec![(":method", "POST"), (":path", "/take"), (":authority", "weir.quota")];
                match self.dispatch_http_call("weir.quota", headers, Some(args), vec![], Duration::from_secs(5)) {
                    Ok(_) => Action::Pause,
                    Err(e) => {
                        self.send_http_response(500, vec![], Some(format!("dispatch failed: {e:?}\n").as_bytes()));
                        Action::Pause
                    }
                }
            }
            "/quota-bad" => {
                let headers = vec![(":method", "POST"), (":path", "/take"), (":authority", "weir.quota")];
                match self.dispatch_http_call("weir.quota", headers, Some(b"{\"key\": 1}"), vec![], Duration::from_secs(5)) {
                    Ok(_) => Action::Pause,
                    Err(e) => {
                        self.send_http_response(400, vec![], Some(format!("dispatch failed: {e:?}\n").as_bytes()));
                        Action::Pause
                    }
                }
            }
            "/shared" => {
                loop {
                    let (value, cas) = self.get_shared_data("counter");
                    let n = value.map_or(0, |v| String::from_utf8_lossy(&v).parse::<u64>().unwrap_or(0)) + 1;
                    if self.set_shared_data("counter", Some(n.to_string().as_bytes()), cas).is_ok() {
                        self.send_http_response(200, vec![], Some(format!("{n}\n").as_bytes()));
                        return Action::Pause;
                    }
                }
            }
            "/enqueue" => {
                let item = self.get_http_request_header("x-item").unwrap_or_default();
                let reply = match self.resolve_shared_queue("", "work") {
                    Some(id) => match self.enqueue_shared_queue(id, Some(item.as_bytes())) {
                        Ok(()) => "queued\n".to_string(),
                        Err(e) => format!("enqueue failed: {e:?}\n"),
                    },
                    None => "no queue\n".to_string(),
                };
                self.send_http_response(200, vec![], Some(reply.as_bytes()));
                Action::Pause
            }
            "/dequeued" => {
                let (value, _) = self.get_shared_data("dequeued");
                self.send_http_response(200, vec![], Some(&value.unwrap_or_default()));
                Action::Pause
            }
            "/ticks" => {
                let (value, _) = self.get_shared_data("ticks");
                let n = value.map_or_else(|| "0".to_string(), |v| String::from_utf8_lossy(&v).to_string());
                self.send_http_response(200, vec![], Some(format!("{n}\n").as_bytes()));
                Action::Pause
            }
            "/metric" => {
                proxy_wasm::hostcalls::increment_metric(self.hits, 1).unwrap();
                Action::Continue
            }
            "/callout" => {
                let code = self.get_http_request_header("x-callout-status").unwrap_or_else(|| "200".into());
                let path = format!("/status/{code}");
                let timeout = self.get_http_request_header("x-callout-timeout-ms").and_then(|t| t.parse().ok()).unwrap_or(5000);
                // The call's trailers, when the request names one.
                let trailer = self.get_http_request_header("x-callout-trailer");
                let trailers = trailer.as_deref().map(|t| vec![("x-call-trailer", t)]).unwrap_or_default();
                match self.dispatch_http_call("auth", vec![(":method", "GET"), (":path", &path), (":authority", "auth")], None, trailers, Duration::from_millis(timeout)) {
                    Ok(_) => Action::Pause,
                    Err(e) => {
                        self.send_http_response(500, vec![], Some(format!("dispatch failed: {e:?}\n").as_bytes()));
                        Action::Pause
                    }
                }
            }
            "/grpc" => {
                // grpc.health.v1.HealthCheckRequest { service } in protobuf: field 1, length-delimited.
                let service = self.get_http_request_header("x-grpc-service").unwrap_or_else(|| "weir.test".into());
                let mut message = vec![0x0a, service.len() as u8];
                message.extend_from_slice(service.as_bytes());
                let timeout = self.get_http_request_header("x-callout-timeout-ms").and_then(|t| t.parse().ok()).unwrap_or(5000);
                match self.dispatch_grpc_call("grpc", "grpc.health.v1.Health", "Check", vec![], Some(&message), Duration::from_millis(timeout)) {
                    Ok(_) => Action::Pause,
                    Err(e) => {
                        self.send_http_response(500, vec![], Some(format!("grpc dispatch failed: {e:?}\n").as_bytes()));
                        Action::Pause
                    }
                }
            }
            "/pairs" => {
                // The whole map as pairs (pseudo-headers included), then set back
                // whole: one header dropped, one added naming every pair seen.
                let pairs = self.get_http_request_headers();
                let mut names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
                names.sort_unstable();
                let seen = names.join(",");
                let mut next: Vec<(&str, &str)> = pairs
                    .iter()
                    .filter(|(k, _)| k != "x-drop-me")
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                next.push(("x-pairs-seen", &seen));
                self.set_http_request_headers(next);
                Action::Continue
            }
            "/rewrite" => {
                self.set_http_request_header(":path", Some("/rewritten"));
                Action::Continue
            }
            "/forwarded" => {
                // What the forwarding headers read in the request phase.
                for (name, copy) in [("x-forwarded-for", "x-read-xff"), ("x-forwarded-proto", "x-read-xfp"), ("x-request-id", "x-read-id")] {
                    let v = self.get_http_request_header(name).unwrap_or_else(|| "<none>".into());
                    self.set_http_request_header(copy, Some(&v));
                }
                self.set_http_request_header("x-forwarded-proto", Some("changed-by-filter"));
                Action::Continue
            }
            "/host-alias" => {
                // `host` is `:authority` here, as in Envoy: read, then changed
                // as header x-host-op says. The map's size (which the Rust SDK
                // does not wrap) and the sum of its pairs' lengths go upstream.
                let mut size = 0usize;
                // SAFETY: the ABI writes one usize at the pointer given.
                let status = unsafe { proxy_get_header_map_size(0, &mut size) };
                let sum: usize = self.get_http_request_headers().iter().map(|(k, v)| k.len() + v.len()).sum();
                let read = self.get_http_request_header("host").unwrap_or_else(|| "<none>".into());
                match self.get_http_request_header("x-host-op").as_deref() {
                    Some("add") => self.add_http_request_header("host", "other.example"),
                    Some("replace") => self.set_http_request_header("host", Some("other.example")),
                    Some("remove") => self.set_http_request_header("host", None),
                    _ => {}
                }
                self.set_http_request_header("x-host-read", Some(&read));
                self.set_http_request_header("x-map-size", Some(&format!("{status} {size} {sum}")));
                Action::Continue
            }
            "/panic" => panic!("pw-test panics on purpose"),
            "/grow" => {
                // A memory bomb: far past any sane per-plugin limit
                // (black_box: at opt-level 3 the optimizer would drop an
                // allocation whose only use is its known length).
                let bomb = std::hint::black_box(vec![7u8; 512 << 20]);
                self.set_http_request_header("x-bomb", Some(&bomb.len().to_string()));
                Action::Continue
            }
            "/loop" => {
                #[allow(clippy::empty_loop)]
                loop {}
            }
            _ => Action::Continue,
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.path == "/body-deny" {
            // The headers went on (Continue); a WAF-style check of each chunk.
            let body = self.get_http_request_body(0, body_size).unwrap_or_default();
            if body.windows(9).any(|w| w == b"forbidden") {
                self.send_http_response(
                    403,
                    vec![("x-denied-by", "pw-test-body")],
                    Some(b"denied by pw-test in the request body\n"),
                );
                return Action::Pause;
            }
            return Action::Continue;
        }
        if self.path != "/upper" {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        self.set_http_request_body(0, body_size, &body.to_ascii_uppercase());
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.path == "/response-body-deny" {
            // Too late: the response head has gone to the client.
            self.send_http_response(500, vec![], Some(b"too late\n"));
            return Action::Pause;
        }
        if self.path == "/add-trailer" {
            // A response that had no trailers ends with one (Envoy creates
            // the map when the last body callback adds to it).
            if end_of_stream {
                self.add_http_response_trailer("x-pw-added-trailer", "yes");
            }
            return Action::Continue;
        }
        if self.path != "/replace-response" {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.set_http_response_body(0, body_size, b"replaced by pw-test\n");
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.path == "/replace-response" {
            // The body changes size: as Envoy asks of filters, drop content-length here.
            self.set_http_response_header("content-length", None);
        }
        if self.path == "/pairs" {
            let mut pairs = self.get_http_response_headers();
            let status = pairs.iter().find(|(k, _)| k == ":status").map(|(_, v)| v.clone()).unwrap_or_default();
            pairs.push(("x-pairs-status".to_string(), status));
            self.set_http_response_headers(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect());
        }
        let name = prop_string(self, &["plugin_name"]);
        self.set_http_response_header("x-pw-plugin", Some(&name));
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, num_trailers: usize) -> Action {
        // As in Envoy: the response trailers are readable and changeable here.
        let status = self.get_http_response_trailer("grpc-status").unwrap_or_default();
        self.add_http_response_trailer("x-pw-grpc-status", &status);
        self.add_http_response_trailer("x-pw-trailers-seen", &num_trailers.to_string());
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, num_trailers: usize) -> Action {
        let seen = self.get_http_request_trailers();
        log::info!("request trailers: {num_trailers} {seen:?}");
        if seen.iter().any(|(k, _)| k == "x-deny") {
            self.send_http_response(
                403,
                vec![("x-denied-by", "pw-test-trailers")],
                Some(b"denied by pw-test in the request trailers\n"),
            );
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let status = prop_int(self, &["response", "code"]);
        let path = prop_string(self, &["request", "path"]);
        log::debug!("request done with status {status} for path {path}");
        // As in Envoy, the log phase reads both header maps and what the
        // exchange came to.
        log::info!(
            "log phase: :path={:?} x-upstream={:?} details={} upstream={} response.size={} request.size={} request.trailers={} response.trailers={}",
            self.get_http_request_header(":path"),
            self.get_http_response_header("x-upstream"),
            prop_string(self, &["response", "code_details"]),
            prop_string(self, &["upstream", "address"]),
            prop_int(self, &["response", "size"]),
            prop_int(self, &["request", "size"]),
            prop_map_names(self, &["request", "trailers"]),
            prop_map_names(self, &["response", "trailers"]),
        );
    }
}
