//! The request-head clock: times how long a client takes to send a request
//! head, so that `header_read_timeout` can close a connection whose client
//! sends its head too slowly (slowloris).
//!
//! The clock starts when the connection opens and, on a keep-alive
//! connection, at the first byte of each later request; it stops when the
//! head is complete and the request is dispatched
//! ([`Activity`](crate::proxy::Activity)). An idle
//! keep-alive connection, with no byte of a new request yet, is left to
//! `idle_timeout`, as in nginx (`client_header_timeout`) and Envoy
//! (`request_headers_timeout`, which starts at the first byte).
//!
//! hyper's own header-read timeout was used before. It runs from the moment
//! the previous head was read, so it also closed every idle keep-alive
//! connection after `header_read_timeout` (10 s by default) whatever
//! `idle_timeout` said, and it armed a boxed timer per request.
//!
//! HTTP/2 connections are not timed here: their frames (pings, window
//! updates) arrive between requests and are no request head.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::Downstream;

/// The HTTP/2 connection preface begins with these bytes (RFC 9113 §3.4).
const H2_PREFACE_START: &[u8] = b"PRI ";

/// A client connection's byte stream, which starts the head clock of its
/// [`Downstream`] when bytes of a new request arrive.
pub struct HeadClock<I> {
    io: I,
    down: Arc<Downstream>,
    /// Whether the connection speaks HTTP/2, known from its first bytes.
    h2: Option<bool>,
}

impl<I> HeadClock<I> {
    /// Wraps a client connection's stream.
    pub fn new(io: I, down: Arc<Downstream>) -> HeadClock<I> {
        HeadClock { io, down, h2: None }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for HeadClock<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        let got = &buf.filled()[before..];
        if !got.is_empty() {
            let activity = &this.down.activity;
            if this.h2.is_none() {
                let h2 = got.starts_with(H2_PREFACE_START);
                if h2 {
                    activity.stop_head_clock();
                }
                this.h2 = Some(h2);
            }
            if this.h2 == Some(false) {
                activity.request_bytes_arrived();
            }
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for HeadClock<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
