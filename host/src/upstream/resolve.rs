//! Endpoint resolution: IP literals as they are, DNS names looked up at start
//! and again every `dns_refresh`.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::EndpointAddr;

use super::lb::Endpoint;

/// Resolves every endpoint of a cluster; names that fail to resolve are left
/// out and reported in the returned errors.
pub async fn resolve_all(addrs: &[EndpointAddr]) -> (Vec<Arc<Endpoint>>, Vec<String>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for a in addrs {
        if let Some(ip) = a.ip {
            out.push(Arc::new(Endpoint::new(
                SocketAddr::new(ip, a.port),
                &a.host,
            )));
            continue;
        }
        match tokio::net::lookup_host((a.host.as_str(), a.port)).await {
            Ok(found) => {
                let mut found: Vec<SocketAddr> = found.collect();
                found.sort();
                found.dedup();
                out.extend(
                    found
                        .into_iter()
                        .map(|sa| Arc::new(Endpoint::new(sa, &a.host))),
                );
            }
            Err(e) => errors.push(format!("cannot resolve {}:{}: {e}", a.host, a.port)),
        }
    }
    (out, errors)
}
