//! Shared pieces of the integration tests: the real weir binary on loopback,
//! test upstreams (plain hyper servers), and free ports.
#![allow(dead_code, missing_docs)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

/// A port free right now on 127.0.0.1, and not handed out before in this
/// test process (the kernel may give a just-closed port again, which put a
/// test's admin and listener on one port).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The weir binary under test.
pub fn weir_bin() -> &'static str {
    env!("CARGO_BIN_EXE_weir")
}

/// A running weir process; killed on drop.
pub struct Weir {
    child: Option<Child>,
    /// The network namespace it runs in (`ip netns exec`), if not this one.
    pub netns: Option<String>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub admin: u16,
    pub port: u16,
}

/// A config header: admin on `admin`, one listener "public" on `port`.
pub fn base_config(admin: u16, port: u16) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[[listener]]\nname = \"public\"\nlisten = \"127.0.0.1:{port}\"\n\n"
    )
}

impl Weir {
    /// Starts weir on `base_config(admin, port) + rest` and waits until /ready answers 200.
    pub async fn start(rest: &str) -> Weir {
        let (admin, port) = (free_port(), free_port());
        Self::start_with(admin, port, &format!("{}{rest}", base_config(admin, port))).await
    }

    /// Starts weir on a complete config text.
    pub async fn start_with(admin: u16, port: u16, config: &str) -> Weir {
        Self::start_in(tempfile::tempdir().unwrap(), admin, port, config).await
    }

    /// Starts weir with its config in `dir` (where a `plugins/` folder may wait).
    pub async fn start_in(dir: tempfile::TempDir, admin: u16, port: u16, config: &str) -> Weir {
        let config_path = dir.path().join("weir.toml");
        std::fs::write(&config_path, config).unwrap();
        Self::spawn(admin, port, dir, config_path, true, None).await
    }

    /// Starts weir inside network namespace `netns` (through `ip netns exec`).
    pub async fn start_in_netns(
        netns: &str,
        dir: tempfile::TempDir,
        admin: u16,
        port: u16,
        config: &str,
    ) -> Weir {
        let config_path = dir.path().join("weir.toml");
        std::fs::write(&config_path, config).unwrap();
        Self::spawn(admin, port, dir, config_path, true, Some(netns.to_string())).await
    }

    /// Starts `weir run` with no --config: the embedded default on 8080, admin on 9901.
    pub async fn start_embedded() -> Weir {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("unused");
        Self::spawn(9901, 8080, dir, config_path, false, None).await
    }

    async fn spawn(
        admin: u16,
        port: u16,
        dir: tempfile::TempDir,
        config_path: PathBuf,
        with_config: bool,
        netns: Option<String>,
    ) -> Weir {
        let log_path = dir.path().join("weir.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = match &netns {
            None => Command::new(weir_bin()),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, weir_bin()]);
                c
            }
        };
        cmd.args(["--log-level", "info,weir=debug", "run"])
            .current_dir(dir.path());
        if with_config {
            cmd.arg("--config").arg(&config_path);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let w = Weir {
            child: Some(child),
            netns,
            dir,
            config_path,
            log_path,
            admin,
            port,
        };
        w.wait_ready().await;
        w
    }

    /// Waits until /ready answers 200, or panics with the log.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = reqwest::Client::new();
        while Instant::now() < deadline {
            if let Some(ns) = &self.netns {
                if netns_curl(
                    ns,
                    &[
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        &self.admin_url("/ready"),
                    ],
                ) == "200"
                {
                    return;
                }
            } else if let Ok(r) = client.get(self.admin_url("/ready")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("weir did not become ready; its log:\n{}", self.logs());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Replaces the config file the way editors and deploy tools do: write aside, rename over.
    pub fn write_config(&self, text: &str) {
        let tmp = self.dir.path().join(".weir.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Sends a signal (e.g. "TERM") to the process.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().unwrap();
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("weir did not exit within {within:?}; log:\n{}", self.logs());
    }

    /// The /metrics text.
    /// Plugin `name`'s entry in /plugins; panics naming the list when it is not there.
    pub async fn plugin_status(&self, name: &str) -> serde_json::Value {
        let s: serde_json::Value = reqwest::get(self.admin_url("/plugins"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        s["plugins"]
            .as_array()
            .and_then(|l| l.iter().find(|p| p["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no plugin {name} in /plugins: {s}"))
    }

    pub async fn metrics(&self) -> String {
        if let Some(ns) = &self.netns {
            return netns_curl(ns, &[&self.admin_url("/metrics")]);
        }
        reqwest::get(self.admin_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `curl -s ARGS` inside network namespace `ns` and returns its stdout.
pub fn netns_curl(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "--max-time", "5"])
        .args(args)
        .output()
        .expect("running ip netns exec curl");
    String::from_utf8_lossy(&out.stdout).into()
}

/// A test upstream. Paths it knows:
/// - `/status/{code}`: answers that status;
/// - `/delay/{ms}`: waits, then answers 200;
/// - `/flaky/{key}/{n}`: answers 503 to the first n requests for key, then 200;
/// - `/reset`: drops the connection without answering;
/// - anything else: 200 with JSON describing the request and naming this upstream.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicUsize>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let flaky: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let (name2, hits2, accepted) = (name.to_string(), hits.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = socket.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (name, hits, flaky) = (name2.clone(), hits2.clone(), flaky.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        answer(name.clone(), flaky.clone(), req)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            name: name.to_string(),
            hits,
            connections,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn answer(
    name: String,
    flaky: Arc<Mutex<HashMap<String, usize>>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["status", code] => {
            let mut r = Response::new(Full::new(Bytes::from(format!("{name} says {code}"))));
            *r.status_mut() = code.parse::<u16>().unwrap().try_into().unwrap();
            return Ok(r);
        }
        ["delay", ms] => tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await,
        ["flaky", key, n] => {
            let mut map = flaky.lock().unwrap();
            let seen = map.entry(key.to_string()).or_default();
            *seen += 1;
            if *seen <= n.parse::<usize>().unwrap() {
                let mut r = Response::new(Full::new(Bytes::from("flaky")));
                *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                return Ok(r);
            }
        }
        ["reset"] => return Err(std::io::Error::other("reset on purpose")),
        _ => {}
    }
    let method = req.method().to_string();
    let uri = req.uri().clone();
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        headers.insert(k.to_string(), json!(v.to_str().unwrap_or("")));
    }
    let version = format!("{:?}", req.version());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let doc = json!({
        "upstream": name,
        "method": method,
        "path": uri.path(),
        "query": uri.query(),
        "version": version,
        "authority": uri.authority().map(|a| a.as_str()),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut r = Response::new(Full::new(Bytes::from(doc.to_string())));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r.headers_mut().insert("x-upstream", name.parse().unwrap());
    Ok(r)
}

/// Never resolves; for servers that must stay up for the whole test.
pub async fn forever() -> Infallible {
    std::future::pending().await
}

/// A throwaway CA for TLS tests.
pub struct TestCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    /// The CA certificate, PEM.
    pub pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "weir test CA");
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa { params, key, pem }
    }

    /// Issues a certificate for `names`, writes `<stem>.pem` and `<stem>.key` into `dir`.
    pub fn issue(&self, names: &[&str], dir: &std::path::Path, stem: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (c, k) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// Writes the CA certificate to `dir/ca.pem`.
    pub fn write(&self, dir: &std::path::Path) -> PathBuf {
        let p = dir.join("ca.pem");
        std::fs::write(&p, &self.pem).unwrap();
        p
    }
}

#[path = "wasm/build_filters.rs"]
mod build_filters;

/// The path of test filter `name`'s .wasm file (built on first use).
pub fn test_filter(name: &str) -> PathBuf {
    build_filters::test_filters_dir().join(format!("{}.wasm", name.replace('-', "_")))
}

/// The AssemblyScript test filter (tests/wasm/as-probe), built with npm and
/// the AssemblyScript compiler once per process (`npm ci` only while its
/// packages are not installed).
pub fn assemblyscript_filter() -> PathBuf {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/wasm/as-probe");
            let run = |program: &str, args: &[&str]| -> Result<(), String> {
                let out = Command::new(program)
                    .args(args)
                    .current_dir(&dir)
                    .output()
                    .map_err(|e| {
                        format!(
                            "{program} could not start ({e}): building tests/wasm/as-probe \
                             needs Node.js and npm (apt-get install nodejs npm)"
                        )
                    })?;
                if out.status.success() {
                    return Ok(());
                }
                Err(format!(
                    "{program} {} failed:\n{}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ))
            };
            if !dir.join("node_modules/assemblyscript/bin/asc").exists() {
                run("npm", &["ci", "--no-audit", "--no-fund"])?;
            }
            run(
                "node",
                &[
                    "node_modules/assemblyscript/bin/asc",
                    "assembly/index.ts",
                    "--binaryFile",
                    "build/as_probe.wasm",
                    "--use",
                    "abort=abort_proc_exit",
                    "--optimize",
                ],
            )?;
            Ok(dir.join("build/as_probe.wasm"))
        })
        .clone()
        .unwrap_or_else(|e| panic!("building the AssemblyScript test filter failed:\n{e}"))
}

/// A gRPC server (grpc.health.v1, service "weir.test" SERVING) on loopback.
pub async fn grpc_upstream() -> std::net::SocketAddr {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("weir.test", tonic_health::ServingStatus::Serving)
        .await;
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let _keep = reporter;
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(socket))
            .await
            .unwrap();
    });
    addr
}

/// Builds an SDK plugin crate of plugins/ to a wasm32-wasip2 component with
/// the `plugin` profile (stripped, size-optimized, as shipped) (once
/// per process) and returns the .wasm. The target folder is target/plugins,
/// not the test run's own (whose lock cargo holds while the tests run): the
/// one weir's build script builds the bundled plugins into, so those are
/// already built, and the others share their dependencies.
pub fn sdk_plugin(package: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap();
    if let Some((_, p)) = built.iter().find(|(n, _)| n == package) {
        return p.clone();
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = root.join("target/plugins");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--profile",
            "plugin",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "-p",
            package,
        ])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(&root)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("running cargo");
    assert!(
        out.status.success(),
        "building {package} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = target
        .join("wasm32-wasip2/plugin")
        .join(format!("{}.wasm", package.replace('-', "_")));
    built.push((package.to_string(), path.clone()));
    path
}

/// Reads a request or response head from `stream` (up to its blank line,
/// with whatever came in the same reads after it); `None` when the stream
/// ended first.
pub async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    read_until(stream, b"\r\n\r\n").await
}

/// Reads from `stream` until what came holds `end` (with whatever came in
/// the same reads after it); `None` when the stream ended first.
pub async fn read_until(stream: &mut tokio::net::TcpStream, end: &[u8]) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    while !read.windows(end.len()).any(|w| w == end) {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => read.extend_from_slice(&buf[..n]),
        }
    }
    Some(read)
}
