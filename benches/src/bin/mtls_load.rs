//! A load generator for mTLS listeners (wrk and h2load cannot present a client
//! certificate): HTTP/1.1 GETs over TLS with a client certificate, either on
//! keep-alive connections (`--mode keepalive`: req/s) or with a new connection
//! and a full handshake per request (`--mode handshake`: handshakes/s; session
//! resumption off). Prints one line: `requests=N rate=R p50_us=.. p99_us=.. errors=E`.
//!
//! ```text
//! cargo run --release -p weir-benches --bin mtls_load -- --port 18443 --certs DIR \
//!     [--mode keepalive|handshake] [--connections 32] [--duration 10] [--threads 1]
//! ```
//!
//! DIR holds `cert.pem`, `key.pem` and `ca.pem` (as `weir ca issue` writes them).
//! It connects to 127.0.0.1 only, with `localhost` as server name, and stops
//! after `--duration` seconds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

struct Args {
    port: u16,
    certs: PathBuf,
    handshake: bool,
    connections: usize,
    duration: Duration,
    threads: usize,
}

fn args() -> Args {
    let mut a = Args {
        port: 0,
        certs: PathBuf::new(),
        handshake: false,
        connections: 32,
        duration: Duration::from_secs(10),
        threads: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => a.port = value.parse().expect("--port"),
            "--certs" => a.certs = value.into(),
            "--mode" => a.handshake = value == "handshake",
            "--connections" => a.connections = value.parse().expect("--connections"),
            "--duration" => a.duration = Duration::from_secs(value.parse().expect("--duration")),
            "--threads" => a.threads = value.parse().expect("--threads"),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(a.port != 0, "--port is required");
    a
}

fn tls_config(certs: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(certs.join("ca.pem")).expect("ca.pem") {
        roots.add(c.expect("ca.pem")).expect("ca.pem");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certs.join("cert.pem"))
        .expect("cert.pem")
        .map(|c| c.expect("cert.pem"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(certs.join("key.pem")).expect("key.pem");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("client certificate");
    // Every handshake in handshake mode is a full one.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(port: u16, tls: &tokio_rustls::TlsConnector) -> Result<Sender, String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("localhost").expect("a valid name");
    let stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn get(sender: &mut Sender) -> Result<(), String> {
    let req = http::Request::get("/")
        .header("host", "localhost")
        .body(Empty::new())
        .expect("a valid request");
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let ok = resp.status().is_success();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    if ok { Ok(()) } else { Err("non-2xx".into()) }
}

async fn worker(
    port: u16,
    tls: tokio_rustls::TlsConnector,
    handshake: bool,
    until: Instant,
) -> (Vec<u32>, u64) {
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut sender = None;
    while Instant::now() < until {
        let t = Instant::now();
        let result = async {
            if handshake || sender.is_none() {
                sender = Some(connect(port, &tls).await?);
            }
            let s = sender.as_mut().expect("connected");
            let r = get(s).await;
            if r.is_err() || handshake {
                sender = None;
            }
            r
        }
        .await;
        match result {
            Ok(()) => lat.push(t.elapsed().as_micros() as u32),
            Err(_) => {
                errors += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    (lat, errors)
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads)
        .enable_all()
        .build()
        .expect("a runtime");
    let tls = tokio_rustls::TlsConnector::from(tls_config(&a.certs));
    let (mut lat, errors, elapsed) = rt.block_on(async {
        let start = Instant::now();
        let until = start + a.duration;
        let tasks: Vec<_> = (0..a.connections)
            .map(|_| tokio::spawn(worker(a.port, tls.clone(), a.handshake, until)))
            .collect();
        let mut lat = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await.expect("a worker");
            lat.extend(l);
            errors += e;
        }
        (lat, errors, start.elapsed())
    });
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "requests={} rate={:.0} p50_us={} p99_us={} errors={}",
        lat.len(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        errors
    );
}
