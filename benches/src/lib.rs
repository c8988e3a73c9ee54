//! What several benches in benches/ share.

use std::sync::Arc;

use weir::filter::StreamInfo;

/// A stream's facts as the benches hand them to filters: a plaintext
/// connection from and to 127.0.0.1:8080 on listener `bench`, matched to
/// `route` when given, nothing else known yet.
pub fn stream_info(route: Option<&str>) -> Arc<StreamInfo> {
    let addr = "127.0.0.1:8080".parse().expect("a socket address");
    Arc::new(StreamInfo {
        listener: "bench".into(),
        peer: addr,
        local: addr,
        tls: false,
        tls_session: None,
        route: route.map(Into::into),
        cluster: None,
        connection_id: 1,
        grpc: false,
        attributes: Default::default(),
        request: Default::default(),
        start: std::time::SystemTime::now(),
    })
}
