//! Watches the plugins directory with notify and rescans when it changes.
//!
//! Events are debounced: a burst of them (a copy in several writes, a
//! write-then-rename) is one rescan, [`DEBOUNCE`] after the last event. A
//! folder that does not exist yet is waited for through its parent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::manager::PluginManager;

/// Quiet time after the last event before a rescan.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// A handle on the watcher task: ask it to rescan.
#[derive(Clone)]
pub struct PluginWatcher {
    tx: mpsc::UnboundedSender<()>,
}

impl PluginWatcher {
    /// Rescans soon (after the debounce), for example after a config reload.
    pub fn poke(&self) {
        let _ = self.tx.send(());
    }
}

/// Whether an event can change what the folder holds. Reads (weir's own
/// included) are not changes.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Whether a path names something the plugins folder cares about: a plugin, its
/// settings, or the folder itself.
fn is_relevant(path: &Path, dir: &Path) -> bool {
    if path == dir {
        return true;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".wasm") || name.ends_with(".toml")
}

/// Starts watching `manager`'s folder.
pub fn spawn(manager: Arc<PluginManager>) -> anyhow::Result<PluginWatcher> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let events = tx.clone();
    let current = Arc::new(std::sync::Mutex::new(manager.dir()));
    let seen = current.clone();
    let mut watcher: RecommendedWatcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(ev) = event
                && is_change(&ev.kind)
            {
                let dir = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if ev.paths.iter().any(|p| is_relevant(p, &dir)) {
                    let _ = events.send(());
                }
            }
        })?;
    let mut watched = watch_dir(&mut watcher, &manager.dir(), None);
    let me = PluginWatcher { tx: tx.clone() };
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let dir = manager.dir();
            *current.lock().unwrap_or_else(|p| p.into_inner()) = dir.clone();
            if watched.as_deref() != Some(dir.as_path()) || !dir.is_dir() {
                watched = watch_dir(&mut watcher, &dir, watched.take());
            }
            let report = manager.rescan_now().await;
            if report.retry_due {
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(super::manager::SETTLE).await;
                    let _ = tx.send(());
                });
            }
        }
    });
    Ok(me)
}

/// Watches `dir` (or, while it does not exist, its parent, to see it appear),
/// instead of `previous`. Returns what is watched.
fn watch_dir(
    watcher: &mut RecommendedWatcher,
    dir: &Path,
    previous: Option<PathBuf>,
) -> Option<PathBuf> {
    if let Some(p) = previous {
        let _ = watcher.unwatch(&p);
    }
    // The folder itself recursively (a canary or shadow version lives in
    // a subfolder); its parent, while waiting for it, not.
    let (target, mode) = if dir.is_dir() {
        (dir.to_path_buf(), RecursiveMode::Recursive)
    } else {
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        tracing::info!(dir = %dir.display(), "the plugins folder does not exist; weir loads plugins as soon as it is created");
        (parent.to_path_buf(), RecursiveMode::NonRecursive)
    };
    match watcher.watch(&target, mode) {
        Ok(()) => Some(target),
        Err(e) => {
            tracing::warn!(dir = %target.display(), error = %e, "cannot watch the plugins folder; use POST /plugins/reload or SIGHUP after changing plugins");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_not_changes() {
        assert!(!is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!is_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_change(&EventKind::Create(
            notify::event::CreateKind::File
        )));
    }

    #[test]
    fn only_plugins_settings_and_the_folder_matter() {
        let dir = Path::new("/p");
        assert!(is_relevant(Path::new("/p/10-a.wasm"), dir));
        assert!(is_relevant(Path::new("/p/10-a.toml"), dir));
        assert!(is_relevant(dir, dir));
        assert!(!is_relevant(Path::new("/p/notes.txt"), dir));
    }
}
