//! Lingering close: a client connection weir is done with is shut down for
//! writing and then read, its bytes discarded, until the client closes too
//! or [`LINGER`] runs out, instead of being closed at once.
//!
//! Closing a socket that still has unread bytes, or that receives more
//! after the close, makes the kernel answer with a reset. A client still
//! sending a request body when weir answers early (a plugin's 401 or 429, a
//! 413, a direct response) then gets a broken pipe or a reset instead of the
//! answer: simple clients write the whole body before they read, and never
//! see the response. nginx (`lingering_close`) and Envoy
//! (`delayed_close_timeout`, also one second) linger for the same reason.
//!
//! The lingering runs on a task of its own once the connection's server is
//! done with the stream, so it holds no request, and a draining listener or
//! a stopping weir does not wait for it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// How long a closed connection is read for at most (Envoy's default
/// `delayed_close_timeout`).
pub const LINGER: Duration = Duration::from_secs(1);

/// A client connection's stream that lingers when dropped.
pub struct Linger<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    /// Taken only when dropped.
    io: Option<I>,
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Linger<I> {
    /// Wraps a client connection's stream.
    pub fn new(io: I) -> Linger<I> {
        Linger { io: Some(io) }
    }

    fn io(&mut self) -> Pin<&mut I> {
        Pin::new(self.io.as_mut().expect("the stream is taken only on drop"))
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Linger<I> {
    fn drop(&mut self) {
        let (Some(io), Ok(rt)) = (self.io.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        rt.spawn(linger(io));
    }
}

/// Sends the end of the stream (it may have been sent already), then reads
/// and discards until the client closes, an error, or [`LINGER`].
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(mut io: I) {
    let _ = tokio::time::timeout(LINGER, async {
        if io.shutdown().await.is_err() {
            return;
        }
        let mut discard = vec![0u8; 8192];
        while let Ok(n) = io.read(&mut discard).await
            && n > 0
        {}
    })
    .await;
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Linger<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().io().poll_read(cx, buf)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Linger<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().io().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().io().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().io().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dropped stream is shut down (the peer reads its end) and still
    /// read: the peer's later writes succeed instead of meeting a reset.
    #[tokio::test]
    async fn a_dropped_stream_sends_its_end_and_keeps_reading() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(b"unread bytes").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(Linger::new(server));
        let mut end = Vec::new();
        client.read_to_end(&mut end).await.unwrap();
        assert!(end.is_empty(), "the end of the stream, no reset");
        for _ in 0..20 {
            client.write_all(&[b'x'; 65536]).await.unwrap();
        }
    }
}
