//! The body type weir passes around: boxed, streaming, with trailers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};

use crate::filter::LocalResponse;

/// Errors carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body, boxed so that every stage can hand any body on.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A body holding these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body holding these bytes, then these trailers (none sent when empty).
/// Over HTTP/1.1 a body of known length has no place for trailers: hyper
/// drops them there, as Envoy does unless its codec is told to keep them.
pub fn full_with_trailers(bytes: impl Into<Bytes>, trailers: http::HeaderMap) -> Body {
    if trailers.is_empty() {
        return full(bytes);
    }
    Full::new(bytes.into())
        .with_trailers(std::future::ready(Some(Ok(trailers))))
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// What a body ends with when no bytes came for the listener's
/// `stream_idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("no body bytes for {0:?} (the listener's stream_idle_timeout)")]
pub struct StreamIdle(pub std::time::Duration);

/// A body that fails with [`StreamIdle`] when it waits longer than `after`
/// for its next frame: a client trickling a request body, or an upstream
/// stalled in the middle of its response, cannot hold the request (and an
/// upstream connection) forever. The timer is armed only when the body is
/// actually waiting, so a body that is ready when polled costs a branch.
pub struct IdleBounded<B> {
    inner: B,
    after: std::time::Duration,
    /// Armed while the body waits, since the last frame.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
}

impl<B> IdleBounded<B> {
    /// Bounds `inner`'s waits by `after`; zero leaves it unbounded.
    pub fn new(inner: B, after: std::time::Duration) -> IdleBounded<B> {
        IdleBounded {
            inner,
            after,
            timer: None,
            waiting: false,
        }
    }
}

impl<B> HttpBody for IdleBounded<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending if this.after.is_zero() => Poll::Pending,
            Poll::Pending => {
                // Armed once per wait (a body woken without a frame keeps
                // its deadline); the timer is made once and reused.
                if !std::mem::replace(&mut this.waiting, true) {
                    let deadline = tokio::time::Instant::now() + this.after;
                    match &mut this.timer {
                        Some(timer) => timer.as_mut().reset(deadline),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                let timer = this.timer.as_mut().expect("armed when the wait began");
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(StreamIdle(this.after).into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a [`Guarded`] body's guard is told as the body passes.
pub trait Guard: Send + Unpin + 'static {
    /// The body ends with `trailers` (called before the guard is dropped).
    fn trailers(&mut self, _trailers: &http::HeaderMap) {}
}

/// A body that keeps `guard` alive until the body is finished or dropped:
/// in-flight counters and per-request bookkeeping end exactly when the stream does.
pub struct Guarded<G> {
    inner: Body,
    guard: Option<G>,
}

impl<G: Guard> Guarded<G> {
    /// Wraps `inner`, keeping `guard` until the end of the stream.
    pub fn wrap(inner: Body, guard: G) -> Body {
        Guarded {
            inner,
            guard: Some(guard),
        }
        .boxed_unsync()
    }
}

impl<G: Guard> HttpBody for Guarded<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll
            && let Some(t) = frame.trailers_ref()
            && let Some(guard) = self.guard.as_mut()
        {
            guard.trailers(t);
        }
        if matches!(poll, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.guard = None;
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where a local response made by a request body filter waits for the proxy
/// to send it: the filtered body ends with [`AnsweredLocally`], which ends the
/// upstream request, and the proxy then answers the client from here.
#[derive(Clone, Default)]
pub struct ReplySlot(std::sync::Arc<std::sync::Mutex<Option<LocalResponse>>>);

impl ReplySlot {
    /// The local response a body filter made, if any (once).
    pub fn take(&self) -> Option<LocalResponse> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn put(&self, local: LocalResponse) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // A second local reply on one stream is ignored, as in Envoy.
        if slot.is_none() {
            *slot = Some(local);
        }
    }
}

/// The error a filtered request body ends with when a filter answered the
/// client itself; the response waits in the body's [`ReplySlot`].
#[derive(Debug)]
pub struct AnsweredLocally {
    /// The filter that answered.
    pub by: String,
}

impl std::fmt::Display for AnsweredLocally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "plugin {:?} answered the client from a request body callback",
            self.by
        )
    }
}

impl std::error::Error for AnsweredLocally {}

/// What a filter's local response becomes inside a body: for a request
/// body, the reply is kept for the proxy to send; for a response body,
/// whose head has already gone to the client, the stream is reset (Envoy
/// does the same).
fn answered(reply: Option<&ReplySlot>, local: LocalResponse) -> BoxError {
    match reply {
        Some(slot) => {
            let by = local.by.clone();
            slot.put(local);
            Box::new(AnsweredLocally { by })
        }
        None => {
            let message = format!(
                "plugin {:?} answered locally ({}) from a response body callback after the response head went to the client; the stream is reset, as in Envoy",
                local.by, local.status
            );
            tracing::warn!(plugin.name = %local.by, "{message}");
            message.into()
        }
    }
}

/// A body passed through streaming filters chunk by chunk: each filter gets
/// the bytes the filters before it passed on, and may change them or hold
/// them back until more arrive. Trailers pass after the last data.
pub struct Filtered {
    inner: Body,
    filters: Vec<Box<dyn crate::filter::BodyFilter>>,
    held: Vec<Bytes>,
    ready: std::collections::VecDeque<Frame<Bytes>>,
    done: bool,
    limit: usize,
    reply: Option<ReplySlot>,
}

/// Most bytes a filter may hold back from a response body.
pub const RESPONSE_BUFFER_LIMIT: usize = 16 << 20;

impl Filtered {
    /// Wraps `inner` in `filters` (none: `inner` itself). A filter holding back
    /// more than `limit` bytes ends the stream with an error. `reply`: where a
    /// filter's local response goes (a request body); `None` for a response
    /// body, where a local response resets the stream.
    pub fn wrap(
        inner: Body,
        filters: Vec<Box<dyn crate::filter::BodyFilter>>,
        limit: usize,
        reply: Option<ReplySlot>,
    ) -> Body {
        if filters.is_empty() {
            return inner;
        }
        let held = vec![Bytes::new(); filters.len()];
        Filtered {
            inner,
            filters,
            held,
            ready: Default::default(),
            done: false,
            limit,
            reply,
        }
        .boxed_unsync()
    }

    fn push(&mut self, chunk: Bytes, eos: bool) -> Result<(), BoxError> {
        let mut chunk = chunk;
        let limit = self.limit;
        for (i, (filter, held)) in self
            .filters
            .iter_mut()
            .zip(self.held.iter_mut())
            .enumerate()
        {
            let mut data = if held.is_empty() {
                chunk
            } else {
                let mut joined = bytes::BytesMut::with_capacity(held.len() + chunk.len());
                joined.extend_from_slice(held);
                joined.extend_from_slice(&chunk);
                joined.freeze()
            };
            match filter.on_data(&mut data, eos)? {
                crate::filter::BodyAction::Buffer if !eos => {
                    if data.len() > limit {
                        return Err(format!(
                            "a filter held back more than {limit} bytes of a body"
                        )
                        .into());
                    }
                    *held = data;
                    return Ok(());
                }
                crate::filter::BodyAction::Respond(local) => {
                    self.done = true;
                    return Err(answered(self.reply.as_ref(), local));
                }
                _ => {
                    *held = Bytes::new();
                    chunk = data;
                }
            }
            if eos && let Some(trailers) = filter.added_trailers() {
                // The body now ends with trailers: the rest of the chain
                // sees this data without end_of_stream, then the trailers.
                let from = i + 1;
                let trailers = self.finish_with_trailers(from, chunk, trailers)?;
                self.ready.push_back(Frame::trailers(trailers));
                self.done = true;
                return Ok(());
            }
        }
        if !chunk.is_empty() {
            self.ready.push_back(Frame::data(chunk));
        }
        Ok(())
    }
}

impl Filtered {
    /// The body ends with `trailers`: as in Envoy, the filters from `from`
    /// on saw their last data with `end_of_stream` unset; each now gets
    /// `chunk` (what the filters before it passed on last) and the trailers
    /// (in chain order), and what it held back goes on.
    fn finish_with_trailers(
        &mut self,
        from: usize,
        mut chunk: Bytes,
        mut trailers: http::HeaderMap,
    ) -> Result<http::HeaderMap, BoxError> {
        let filters = self.filters.iter_mut().zip(self.held.iter_mut());
        for (filter, held) in filters.skip(from) {
            let mut data = std::mem::take(held);
            if !chunk.is_empty() {
                // Released by the filter before: this one sees it first.
                let mut joined = bytes::BytesMut::with_capacity(data.len() + chunk.len());
                joined.extend_from_slice(&data);
                joined.extend_from_slice(&chunk);
                data = joined.freeze();
                if let crate::filter::BodyAction::Respond(local) =
                    filter.on_data(&mut data, false)?
                {
                    self.done = true;
                    return Err(answered(self.reply.as_ref(), local));
                }
            }
            if let Some(local) = filter.on_trailers(&mut trailers)? {
                self.done = true;
                return Err(answered(self.reply.as_ref(), local));
            }
            chunk = data;
        }
        if !chunk.is_empty() {
            self.ready.push_back(Frame::data(chunk));
        }
        Ok(trailers)
    }
}

impl HttpBody for Filtered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let eos = self.inner.is_end_stream();
                        self.push(data, eos)?;
                        if eos {
                            self.done = true;
                        }
                    }
                    Err(frame) => {
                        let Ok(trailers) = frame.into_trailers() else {
                            continue;
                        };
                        let trailers = self.finish_with_trailers(0, Bytes::new(), trailers)?;
                        self.ready.push_back(Frame::trailers(trailers));
                        self.done = true;
                    }
                },
                Poll::Ready(None) => {
                    self.push(Bytes::new(), true)?;
                    self.done = true;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.ready.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{BodyAction, BodyFilter};

    type FrameResult = Result<Frame<Bytes>, BoxError>;
    type FedBody = IdleBounded<
        http_body_util::StreamBody<tokio_stream::wrappers::ReceiverStream<FrameResult>>,
    >;

    /// A body fed by the returned sender, bounded by `after`.
    fn fed(after: std::time::Duration) -> (tokio::sync::mpsc::Sender<FrameResult>, FedBody) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        (tx, IdleBounded::new(body, after))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_waiting_past_its_idle_bound_fails_and_a_trickle_within_it_does_not() {
        let after = std::time::Duration::from_millis(100);
        let (tx, mut body) = fed(after);
        // A frame every 60 ms: each wait is within the bound, the whole is not.
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(std::time::Duration::from_millis(60)).await;
                tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
                    .await
                    .unwrap();
            }
        });
        for _ in 0..5 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
        }
        feeder.await.unwrap();
        // The sender is gone: the body ended.
        assert!(body.frame().await.is_none());

        let (tx, mut body) = fed(after);
        tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
            .await
            .unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        let started = tokio::time::Instant::now();
        let e = body.frame().await.unwrap().unwrap_err();
        assert!(e.is::<StreamIdle>(), "{e}");
        assert_eq!(started.elapsed(), after);
        assert_eq!(
            e.to_string(),
            "no body bytes for 100ms (the listener's stream_idle_timeout)"
        );
        drop(tx);

        // Zero: no bound.
        let (tx, mut body) = fed(std::time::Duration::ZERO);
        let late = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            tx.send(Ok(Frame::data(Bytes::from_static(b"late"))))
                .await
                .unwrap();
        });
        assert!(body.frame().await.unwrap().is_ok());
        late.await.unwrap();
    }

    /// Holds everything until the end, then upper-cases it.
    struct Upper;
    impl BodyFilter for Upper {
        fn on_data(&mut self, data: &mut Bytes, eos: bool) -> Result<BodyAction, String> {
            if !eos {
                return Ok(BodyAction::Buffer);
            }
            *data = Bytes::from(data.to_ascii_uppercase());
            Ok(BodyAction::Continue)
        }
    }

    /// Passes chunks on, tagging each.
    struct Tag;
    impl BodyFilter for Tag {
        fn on_data(&mut self, data: &mut Bytes, _eos: bool) -> Result<BodyAction, String> {
            if !data.is_empty() {
                *data = Bytes::from(format!("[{}]", String::from_utf8_lossy(data)));
            }
            Ok(BodyAction::Continue)
        }
    }

    fn chunks(parts: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    #[tokio::test]
    async fn chunks_stream_through_filters_in_order_and_buffering_holds_them() {
        let out = Filtered::wrap(chunks(&["ab", "cd"]), vec![Box::new(Tag)], 1024, None)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(out, "[ab][cd]", "a passing filter sees each chunk");
        let out = Filtered::wrap(
            chunks(&["ab", "cd"]),
            vec![Box::new(Upper), Box::new(Tag)],
            1024,
            None,
        )
        .collect()
        .await
        .unwrap()
        .to_bytes();
        assert_eq!(
            out, "[ABCD]",
            "a buffering filter holds chunks back from the filters after it"
        );
        let err = Filtered::wrap(chunks(&["abc", "def"]), vec![Box::new(Upper)], 4, None)
            .collect()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("more than 4 bytes"), "{err}");
    }

    /// Records what it saw, holds everything back, and adds a trailer.
    #[derive(Default)]
    struct Trailing(std::sync::Arc<std::sync::Mutex<Vec<String>>>);
    impl BodyFilter for Trailing {
        fn on_data(&mut self, data: &mut Bytes, eos: bool) -> Result<BodyAction, String> {
            self.0
                .lock()
                .unwrap()
                .push(format!("data {data:?} eos={eos}"));
            Ok(BodyAction::Buffer)
        }
        fn on_trailers(
            &mut self,
            trailers: &mut http::HeaderMap,
        ) -> Result<Option<LocalResponse>, String> {
            self.0
                .lock()
                .unwrap()
                .push(format!("trailers {}", trailers.len()));
            trailers.insert("x-added", http::HeaderValue::from_static("1"));
            Ok(None)
        }
    }

    #[tokio::test]
    async fn trailers_end_the_body_as_in_envoy() {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::trailers(t)),
        ];
        let body =
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        let seen = Trailing::default();
        let log = seen.0.clone();
        let out = Filtered::wrap(body, vec![Box::new(seen), Box::new(Tag)], 1024, None)
            .collect()
            .await
            .unwrap();
        let trailers = out.trailers().cloned().unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            ["data b\"ab\" eos=false", "trailers 1"],
            "the last data has end_of_stream unset, then the trailers"
        );
        assert_eq!(trailers["x-added"], "1");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(
            out.to_bytes(),
            "[ab]",
            "what was held goes on after the trailers callback, through the filters after it"
        );
    }

    /// Passes data on and, at the end of a body, adds a trailer.
    struct AddsTrailer(bool);
    impl BodyFilter for AddsTrailer {
        fn on_data(&mut self, _data: &mut Bytes, eos: bool) -> Result<BodyAction, String> {
            self.0 = eos;
            Ok(BodyAction::Continue)
        }
        fn added_trailers(&mut self) -> Option<http::HeaderMap> {
            let mut t = http::HeaderMap::new();
            t.insert("x-made", http::HeaderValue::from_static("1"));
            std::mem::take(&mut self.0).then_some(t)
        }
    }

    #[tokio::test]
    async fn trailers_added_at_the_end_reach_the_later_filters_and_the_client() {
        let seen = Trailing::default();
        let log = seen.0.clone();
        let out = Filtered::wrap(
            chunks(&["ab", "cd"]),
            vec![Box::new(Tag), Box::new(AddsTrailer(false)), Box::new(seen)],
            1024,
            None,
        )
        .collect()
        .await
        .unwrap();
        let trailers = out
            .trailers()
            .cloned()
            .expect("the body ends with trailers");
        assert_eq!(trailers["x-made"], "1");
        assert_eq!(trailers["x-added"], "1", "the filter after it changed them");
        assert_eq!(
            *log.lock().unwrap(),
            [
                "data b\"[ab]\" eos=false",
                "data b\"[ab][cd]\" eos=false",
                "trailers 1"
            ],
            "the filter after it saw the last data without end_of_stream, then the trailers"
        );
        assert_eq!(out.to_bytes(), "[ab][cd]");
    }

    /// Answers 403 once it has seen a chunk containing "bad".
    struct Refuse;
    impl BodyFilter for Refuse {
        fn on_data(&mut self, data: &mut Bytes, _eos: bool) -> Result<BodyAction, String> {
            if data.windows(3).any(|w| w == b"bad") {
                return Ok(BodyAction::Respond(LocalResponse {
                    status: http::StatusCode::FORBIDDEN,
                    headers: vec![],
                    body: Bytes::from_static(b"no\n"),
                    by: "refuse".into(),
                }));
            }
            Ok(BodyAction::Continue)
        }
    }

    #[tokio::test]
    async fn a_local_response_from_a_request_body_ends_the_body_and_waits_in_the_slot() {
        let slot = ReplySlot::default();
        let err = Filtered::wrap(
            chunks(&["fine ", "bad ", "never read"]),
            vec![Box::new(Refuse), Box::new(Tag)],
            1024,
            Some(slot.clone()),
        )
        .collect()
        .await
        .unwrap_err();
        assert!(err.is::<AnsweredLocally>(), "{err}");
        let local = slot.take().expect("the response waits for the proxy");
        assert_eq!(local.status, 403);
        assert_eq!(local.by, "refuse");
        assert!(slot.take().is_none(), "taken once");

        // A response body's head has gone to the client: the stream is reset.
        let err = Filtered::wrap(chunks(&["bad"]), vec![Box::new(Refuse)], 1024, None)
            .collect()
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("after the response head went to the client; the stream is reset"),
            "{err}"
        );
    }
}
