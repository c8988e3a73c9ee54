//! A component's stdout and stderr: each line becomes a log line of weir's,
//! tagged with the plugin's name (stdout at info, stderr at warn), so that
//! `println!` and `eprintln!` in a plugin neither fail nor mix with weir's
//! own stdout (where the access log may go). A plugin that prints on every
//! request is held to [`LINES_PER_SECOND`]; what it printed beyond that is
//! counted and reported once a second later.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Log lines one plugin output stream may produce per second.
pub const LINES_PER_SECOND: u32 = 100;
/// A line longer than this is logged in pieces.
const MAX_LINE: usize = 4096;

/// Which of the two streams.
#[derive(Clone, Copy, Debug)]
pub enum Which {
    /// stdout, logged at info.
    Stdout,
    /// stderr, logged at warn.
    Stderr,
}

#[derive(Default)]
struct Lines {
    partial: Vec<u8>,
    window: Option<Instant>,
    in_window: u32,
    dropped: u64,
}

/// One plugin's stdout or stderr, as log lines.
#[derive(Clone)]
pub struct PluginOutput {
    plugin: Arc<str>,
    which: Which,
    lines: Arc<Mutex<Lines>>,
}

impl PluginOutput {
    /// The stream `which` of plugin `plugin`.
    pub fn new(plugin: Arc<str>, which: Which) -> PluginOutput {
        PluginOutput {
            plugin,
            which,
            lines: Arc::default(),
        }
    }

    fn emit(&self, l: &mut Lines, line: &[u8]) {
        let now = Instant::now();
        match l.window {
            Some(start) if now.duration_since(start).as_secs() < 1 => {}
            _ => {
                if l.dropped > 0 {
                    tracing::warn!(
                        plugin.name = &*self.plugin,
                        "the plugin printed {} more lines to {} that were not logged (at most {LINES_PER_SECOND} a second)",
                        l.dropped,
                        self.name()
                    );
                }
                l.window = Some(now);
                l.in_window = 0;
                l.dropped = 0;
            }
        }
        if l.in_window >= LINES_PER_SECOND {
            l.dropped += 1;
            return;
        }
        l.in_window += 1;
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        match self.which {
            Which::Stdout => {
                tracing::info!(plugin.name = &*self.plugin, stream = "stdout", "{text}")
            }
            Which::Stderr => {
                tracing::warn!(plugin.name = &*self.plugin, stream = "stderr", "{text}")
            }
        }
    }

    fn name(&self) -> &'static str {
        match self.which {
            Which::Stdout => "stdout",
            Which::Stderr => "stderr",
        }
    }

    /// Takes `bytes`, logging every line they complete.
    pub fn take(&self, bytes: &[u8]) {
        let mut l = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        l.partial.extend_from_slice(bytes);
        while let Some(end) = l.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = l.partial.drain(..=end).collect();
            self.emit(&mut l, &line[..line.len() - 1]);
        }
        while l.partial.len() > MAX_LINE {
            let piece: Vec<u8> = l.partial.drain(..MAX_LINE).collect();
            self.emit(&mut l, &piece);
        }
    }

    /// Logs what is left of an unfinished line.
    pub fn flush_partial(&self) {
        let mut l = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if !l.partial.is_empty() {
            let rest = std::mem::take(&mut l.partial);
            self.emit(&mut l, &rest);
        }
    }
}

impl IsTerminal for PluginOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for PluginOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for PluginOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for PluginOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.take(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.flush_partial();
        Poll::Ready(Ok(()))
    }
}

/// The `wasi:io/streams` instance wasmtime-wasi links (its WASI 0.2 patch version).
const WASI_IO_STREAMS: &str = "wasi:io/streams@0.2.12";

/// Replaces WASI's synchronous `blocking-write-and-flush` and
/// `blocking-flush` of output streams with ones that never wait: the only
/// output streams a plugin has are its stdout and stderr ([`PluginOutput`]),
/// whose writes finish at once. The bindings they replace wait on the tokio
/// runtime, which a callback on a proxy worker must not do.
pub fn link_sync_writes<T: wasmtime_wasi::WasiView + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::DynOutputStream;
    use wasmtime_wasi::p2::bindings::sync::io::streams::StreamError as WitStreamError;

    linker.allow_shadowing(true);
    // The version wasmtime-wasi defines (components built against earlier
    // 0.2.x link to it); another name would define a second, incomplete
    // instance, which the tests catch.
    let mut streams = linker.instance(WASI_IO_STREAMS)?;
    streams.func_wrap(
        "[method]output-stream.blocking-write-and-flush",
        |mut store: wasmtime::StoreContextMut<'_, T>,
         (this, bytes): (Resource<DynOutputStream>, Vec<u8>)| {
            let view = store.data_mut().ctx();
            let stream = view.table.get_mut(&this)?;
            let done = stream
                .write(Bytes::from(bytes))
                .and_then(|()| stream.flush());
            Ok((done.map_err(|_| WitStreamError::Closed),))
        },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-flush",
        |mut store: wasmtime::StoreContextMut<'_, T>, (this,): (Resource<DynOutputStream>,)| {
            let view = store.data_mut().ctx();
            let stream = view.table.get_mut(&this)?;
            Ok((stream.flush().map_err(|_| WitStreamError::Closed),))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_long_lines_cut() {
        let out = PluginOutput::new("p".into(), Which::Stdout);
        out.take(b"one\ntw");
        assert_eq!(out.lines.lock().unwrap().partial, b"tw");
        out.take(b"o\n");
        assert!(out.lines.lock().unwrap().partial.is_empty());
        assert_eq!(out.lines.lock().unwrap().in_window, 2);
        out.take(&vec![b'x'; MAX_LINE * 2 + 10]);
        assert_eq!(out.lines.lock().unwrap().partial.len(), 10);
        assert_eq!(out.lines.lock().unwrap().in_window, 4);
    }

    #[test]
    fn a_flood_is_held_to_the_rate_and_counted() {
        let out = PluginOutput::new("p".into(), Which::Stderr);
        for _ in 0..LINES_PER_SECOND + 25 {
            out.take(b"again\n");
        }
        let l = out.lines.lock().unwrap();
        assert_eq!(l.in_window, LINES_PER_SECOND);
        assert_eq!(l.dropped, 25);
    }
}
