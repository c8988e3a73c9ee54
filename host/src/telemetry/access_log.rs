//! The access log sink plugins write to (`log.access` in the WIT world):
//! one line per call, to stdout or appended to a file.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// Where access log lines go.
pub struct AccessLog {
    out: Mutex<Box<dyn Write + Send>>,
}

impl AccessLog {
    /// Lines to stdout.
    pub fn stdout() -> AccessLog {
        AccessLog {
            out: Mutex::new(Box::new(std::io::stdout())),
        }
    }

    /// Lines appended to `path` (created if missing). The error names the file.
    pub fn file(path: &Path) -> Result<AccessLog, String> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open the access log {}: {e}", path.display()))?;
        Ok(AccessLog {
            out: Mutex::new(Box::new(f)),
        })
    }

    /// Writes `line` and a newline in one write (lines of concurrent requests never interleave).
    pub fn write(&self, line: &str) {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.trim_end_matches('\n').as_bytes());
        buf.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = out.write_all(&buf) {
            tracing::warn!("cannot write the access log: {e}");
        }
    }
}
