//! The admin API, on its own listener: /healthz, /ready, /config, /metrics,
//! /plugins, and POST /plugins/reload.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::AppState;
use crate::body::{self, Body};

/// Serves the admin API on `socket` until `shutdown` turns true.
pub async fn serve(socket: TcpListener, state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = socket.accept() => match r { Ok(p) => p, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move {
                    if req.method() == Method::POST && req.uri().path() == "/plugins/reload" {
                        return Ok::<_, std::convert::Infallible>(reload_plugins(&state).await);
                    }
                    Ok(respond(&state, &req))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

const ENDPOINTS: &str = "GET /healthz, GET /ready, GET /config, GET /listeners, GET /clusters, GET /metrics, GET /plugins, POST /plugins/reload";

/// Rescans the plugins folder now and answers what changed and where every plugin stands.
async fn reload_plugins(state: &Arc<AppState>) -> Response<Body> {
    let report = state.plugins.rescan_now().await;
    let mut doc = state.plugins.status();
    doc["reload"] = json!({
        "loaded": report.loaded,
        "failed": report.failed,
        "removed": report.removed,
        "optimized": report.optimized,
        "retry_due": report.retry_due,
    });
    json_response(doc)
}

fn respond(state: &AppState, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("the admin API answers {ENDPOINTS}\n"),
        );
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/ready" => {
            if state.is_ready() {
                text(StatusCode::OK, "ready\n".into())
            } else if state.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n".into())
            }
        }
        "/metrics" => {
            state.plugins.refresh_metrics();
            let mut r = Response::new(body::full(state.shared.metrics.encode()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/config" => json_response(config_document(state)),
        "/listeners" => json_response(json!(state.listeners.shown())),
        "/clusters" => json_response(clusters_document(state)),
        "/plugins" => json_response(state.plugins.status()),
        other => text(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {other}; the admin API answers {ENDPOINTS}\n"),
        ),
    }
}

/// The clusters of the active config, in config order: their settings as
/// they act, the endpoints requests go to now (DNS names as last resolved)
/// with the requests in flight to each, and what did not resolve.
fn clusters_document(state: &AppState) -> Value {
    let rt = state.shared.runtime.load();
    let clusters: Vec<Value> = rt
        .config
        .clusters
        .iter()
        .filter_map(|c| rt.clusters.get(&c.name))
        .map(|c| {
            let endpoints: Vec<Value> = c
                .endpoints()
                .endpoints
                .iter()
                .map(|e| {
                    json!({
                        "address": e.addr.to_string(),
                        "host": e.host,
                        "active": e.active.load(std::sync::atomic::Ordering::Relaxed),
                    })
                })
                .collect();
            json!({
                "name": c.config.name,
                "lb": c.config.lb.as_str(),
                "protocol": c.config.protocol.as_str(),
                "tls": c.config.tls.is_some(),
                "original_dst": c.config.original_dst,
                "active": c.active.get(),
                "endpoints": endpoints,
                "dns_errors": c.dns_errors(),
            })
        })
        .collect();
    json!(clusters)
}

fn config_document(state: &AppState) -> Value {
    let rt = state.shared.runtime.load();
    let mut raw = serde_json::to_value(&rt.config.raw).unwrap_or(Value::Null);
    redact(&mut raw);
    json!({
        "origin": rt.config.origin,
        "generation": rt.generation,
        "last_reload": state.last_reload(),
        "config": raw,
    })
}

/// Replaces values of secret-looking keys (tokens, passwords, credentials in headers).
pub fn redact(v: &mut Value) {
    const SECRET: [&str; 8] = [
        "secret",
        "password",
        "token",
        "authorization",
        "api-key",
        "api_key",
        "cookie",
        "credential",
    ];
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                let k = k.to_ascii_lowercase();
                if val.is_string() && SECRET.iter().any(|s| k.contains(s)) {
                    *val = Value::String("<redacted>".into());
                } else {
                    redact(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(v: Value) -> Response<Body> {
    let mut bytes = serde_json::to_vec_pretty(&v).unwrap_or_default();
    bytes.push(b'\n');
    let mut r = Response::new(body::full(bytes));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let mut v = json!({"request_headers": {"set": {"Authorization": "Bearer x", "x-env": "prod"}}, "api_token": "t"});
        redact(&mut v);
        assert_eq!(v["request_headers"]["set"]["Authorization"], "<redacted>");
        assert_eq!(v["request_headers"]["set"]["x-env"], "prod");
        assert_eq!(v["api_token"], "<redacted>");
    }
}
