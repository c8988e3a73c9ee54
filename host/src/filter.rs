//! The filter chain: the ABI-neutral phases every plugin runs in, between the
//! listener and the router.
//!
//! A request passes the chain's filters in order on the way in (request
//! headers, then body), and in reverse order on the way out (response headers,
//! then body), as in Envoy. In each phase a filter may change what it sees and
//! answers with an [`Action`]: go on, pause until something it waits for
//! arrives, or answer the request locally so that nothing after it runs.
//! Plugins of either ABI plug in by implementing [`HttpFilter`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

/// What a filter decides in a phase.
pub enum Action {
    /// Go on to the next filter.
    Continue,
    /// Wait: the chain awaits the future, which yields the filter's final decision.
    Pause(Resume),
    /// Hold the body until the whole of it has arrived, then call the filter again
    /// with all of it and `end_of_stream` set.
    StopAndBuffer,
    /// Answer the request now; later filters and the upstream are skipped.
    Respond(LocalResponse),
}

/// A paused filter's decision, still to come.
pub type Resume = Pin<Box<dyn Future<Output = Action> + Send>>;

/// A response made by weir or a filter instead of the upstream.
#[derive(Clone, Debug)]
pub struct LocalResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body.
    pub body: Bytes,
    /// Which filter answered, for logs and the decision log.
    pub by: String,
}

/// A filter type: makes one [`StreamFilter`] per request.
pub trait HttpFilter: Send + Sync {
    /// Name for logs, metrics and errors.
    fn name(&self) -> &str;
    /// A fresh per-request filter.
    fn new_stream(&self) -> Box<dyn StreamFilter>;
}

/// A filter's state for one request. Every phase defaults to [`Action::Continue`].
pub trait StreamFilter: Send {
    /// The request head arrived; `end_of_stream` when no body follows.
    fn on_request_headers(
        &mut self,
        _head: &mut http::request::Parts,
        _end_of_stream: bool,
    ) -> Action {
        Action::Continue
    }
    /// A request body chunk arrived (the whole body after [`Action::StopAndBuffer`]).
    fn on_request_body(&mut self, _body: &mut Bytes, _end_of_stream: bool) -> Action {
        Action::Continue
    }
    /// The response head arrived.
    fn on_response_headers(
        &mut self,
        _head: &mut http::response::Parts,
        _end_of_stream: bool,
    ) -> Action {
        Action::Continue
    }
    /// A response body chunk arrived.
    fn on_response_body(&mut self, _body: &mut Bytes, _end_of_stream: bool) -> Action {
        Action::Continue
    }
    /// The exchange is over; record what you want recorded.
    fn on_log(&mut self) {}
}

/// An ordered list of filters, shared by all requests of one config generation.
#[derive(Clone, Default)]
pub struct FilterChain {
    filters: Vec<Arc<dyn HttpFilter>>,
}

impl FilterChain {
    /// A chain of these filters, in request order.
    pub fn new(filters: Vec<Arc<dyn HttpFilter>>) -> FilterChain {
        FilterChain { filters }
    }

    /// Whether the chain has no filters (then the proxy skips it entirely).
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Per-request state for every filter of the chain.
    pub fn start(&self) -> ChainStream {
        ChainStream {
            streams: self
                .filters
                .iter()
                .map(|f| (f.name().to_string(), f.new_stream()))
                .collect(),
        }
    }
}

/// The chain's state for one request.
pub struct ChainStream {
    streams: Vec<(String, Box<dyn StreamFilter>)>,
}

impl ChainStream {
    /// Runs the request-headers phase, in order. `Err` carries a local response.
    pub async fn request_headers(
        &mut self,
        head: &mut http::request::Parts,
        eos: bool,
    ) -> Result<bool, LocalResponse> {
        let mut wants_body = false;
        for (_, s) in self.streams.iter_mut() {
            match settle(s.on_request_headers(head, eos)).await {
                Settled::Continue => {}
                Settled::Buffer => wants_body = true,
                Settled::Respond(r) => return Err(r),
            }
        }
        Ok(wants_body)
    }

    /// Runs the request-body phase over a whole body, in order.
    pub async fn request_body(&mut self, body: &mut Bytes) -> Result<(), LocalResponse> {
        for (_, s) in self.streams.iter_mut() {
            if let Settled::Respond(r) = settle(s.on_request_body(body, true)).await {
                return Err(r);
            }
        }
        Ok(())
    }

    /// Runs the response-headers phase, in reverse order.
    pub async fn response_headers(
        &mut self,
        head: &mut http::response::Parts,
        eos: bool,
    ) -> Result<bool, LocalResponse> {
        let mut wants_body = false;
        for (_, s) in self.streams.iter_mut().rev() {
            match settle(s.on_response_headers(head, eos)).await {
                Settled::Continue => {}
                Settled::Buffer => wants_body = true,
                Settled::Respond(r) => return Err(r),
            }
        }
        Ok(wants_body)
    }

    /// Runs the response-body phase over a whole body, in reverse order.
    pub async fn response_body(&mut self, body: &mut Bytes) -> Result<(), LocalResponse> {
        for (_, s) in self.streams.iter_mut().rev() {
            if let Settled::Respond(r) = settle(s.on_response_body(body, true)).await {
                return Err(r);
            }
        }
        Ok(())
    }

    /// Runs the log phase on every filter.
    pub fn log(&mut self) {
        for (_, s) in self.streams.iter_mut() {
            s.on_log();
        }
    }
}

enum Settled {
    Continue,
    Buffer,
    Respond(LocalResponse),
}

async fn settle(mut action: Action) -> Settled {
    loop {
        match action {
            Action::Continue => return Settled::Continue,
            Action::StopAndBuffer => return Settled::Buffer,
            Action::Respond(r) => return Settled::Respond(r),
            Action::Pause(fut) => action = fut.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tag(&'static str, Option<u16>);
    struct TagStream(&'static str, Option<u16>);
    impl HttpFilter for Tag {
        fn name(&self) -> &str {
            self.0
        }
        fn new_stream(&self) -> Box<dyn StreamFilter> {
            Box::new(TagStream(self.0, self.1))
        }
    }
    impl StreamFilter for TagStream {
        fn on_request_headers(&mut self, head: &mut http::request::Parts, _: bool) -> Action {
            head.headers
                .append("x-order", HeaderValue::from_static(self.0));
            let tag = self.0;
            let deny = self.1;
            // Pause, then decide later, as a filter waiting on a call would.
            Action::Pause(Box::pin(async move {
                tokio::task::yield_now().await;
                match deny {
                    Some(status) => Action::Respond(LocalResponse {
                        status: StatusCode::from_u16(status).unwrap(),
                        headers: vec![],
                        body: Bytes::from_static(b"denied"),
                        by: tag.to_string(),
                    }),
                    None => Action::Continue,
                }
            }))
        }
        fn on_response_headers(&mut self, head: &mut http::response::Parts, _: bool) -> Action {
            head.headers
                .append("x-order", HeaderValue::from_static(self.0));
            Action::Continue
        }
    }

    #[tokio::test]
    async fn requests_in_order_responses_in_reverse_and_local_answers_stop_the_chain() {
        let chain = FilterChain::new(vec![
            Arc::new(Tag("a", None)),
            Arc::new(Tag("b", Some(403))),
            Arc::new(Tag("c", None)),
        ]);
        let mut s = chain.start();
        let (mut head, ()) = http::Request::new(()).into_parts();
        let r = s.request_headers(&mut head, true).await.unwrap_err();
        assert_eq!((r.status.as_u16(), r.by.as_str()), (403, "b"));
        let order: Vec<_> = head
            .headers
            .get_all("x-order")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(order, ["a", "b"]);
        let (mut resp, ()) = http::Response::new(()).into_parts();
        s.response_headers(&mut resp, true).await.unwrap();
        let order: Vec<_> = resp
            .headers
            .get_all("x-order")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(order, ["c", "b", "a"]);
    }
}
