//! Config hot reload (the Pilot role, from a file): the file is watched; a
//! change is validated and, if valid, a whole new runtime is built aside and
//! swapped in with one store. An invalid file leaves the old config serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::AppState;
use crate::config::Config;
use crate::runtime::Runtime;

/// Events closer together than this are one change (editors write in steps).
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Watches the config file's folder and reloads when the file changes.
pub fn spawn_watcher(path: PathBuf, state: Arc<AppState>) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        })
        .unwrap_or_else(|| PathBuf::from("."));
    let name = path.file_name().map(|n| n.to_os_string());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(ev) = event
            && ev
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
            && !ev.kind.is_access()
        {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            reload_now(&state).await;
        }
    });
    Ok(())
}

/// Reloads the config file now.
pub async fn reload_now(state: &AppState) {
    let Some(path) = &state.config_path else {
        tracing::info!("running on the embedded default config: nothing to reload");
        return;
    };
    let metrics = state.shared.metrics.clone();
    let result = match Config::from_file(path) {
        Ok(config) => match super::check_files(&config) {
            Ok(()) => {
                let old = state.shared.runtime.load_full();
                Runtime::build(config, Some(&old), &metrics)
                    .await
                    .map(|rt| (rt, old))
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    // Listeners that cannot start (an address taken, a certificate that no
    // longer loads) fail the whole reload: the old config keeps serving.
    let result = match result {
        Ok((rt, old)) => match state.listeners.plan(&rt.config.listeners).await {
            Ok(plan) => Ok((rt, old, plan)),
            Err(errors) => Err(errors.join("\n")),
        },
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok((rt, old, listeners)) => {
            for (section, changed) in [
                ("[admin]", rt.config.raw.admin != old.config.raw.admin),
                ("[server]", rt.config.raw.server != old.config.raw.server),
                ("[quota]", rt.config.quota != old.config.quota),
            ] {
                if changed {
                    tracing::warn!(
                        "{section} changes take effect at the next restart; the rest of the config was reloaded"
                    );
                }
            }
            tracing::info!(
                generation = rt.generation,
                routes = rt.config.routes.len(),
                clusters = rt.config.clusters.len(),
                "config reloaded"
            );
            let plugins_changed = state.plugins.update_settings(
                rt.config.plugins_dir.clone(),
                rt.config.plugin_defaults.clone(),
                super::route_names(&rt.config),
            );
            state.shared.runtime.store(Arc::new(rt));
            // After the routes: a new listener's requests find theirs.
            listeners.commit();
            if plugins_changed {
                tracing::info!("plugin settings changed; reloading the plugins");
                match &state.plugin_watcher {
                    Some(w) => w.poke(),
                    None => {
                        state.plugins.rescan_now().await;
                    }
                }
            }
            metrics.reload(true);
            state.set_last_reload(true, None);
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload failed; the previous config keeps serving");
            metrics.reload(false);
            state.set_last_reload(false, Some(e));
        }
    }
}
