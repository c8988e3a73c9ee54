//! The one wasmtime [`Engine`] every plugin is compiled with, its epoch
//! ticker that bounds each callback's CPU time, and the compiled-module caches:
//! in memory by content hash (a re-added or reconfigured plugin is not
//! compiled again) and on disk through wasmtime's cache (a restart skips
//! compilation).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Module};

/// One epoch tick: CPU limits are counted in these, so a callback is
/// stopped between its limit and one tick past it. Each tick wakes a thread:
/// on the development VM a wake-up costs about 15 µs of CPU, so a 1 ms tick
/// cost 1.5% of a core at all times (about 0.45 µs per request at 32k req/s);
/// 2 ms halves that and keeps the default 10 ms limit within 20%.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Compiled modules kept in memory beyond those in use.
const MEMORY_CACHE_ENTRIES: usize = 32;

static CACHE_DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
static DISK_CACHE: OnceLock<wasmtime::Cache> = OnceLock::new();

/// Where a compiled module came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleOrigin {
    /// Compiled now.
    Compiled,
    /// The in-memory cache (the same bytes were loaded before in this process).
    Memory,
    /// The on-disk cache (compiled by an earlier run).
    Disk,
}

impl ModuleOrigin {
    /// As the admin API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleOrigin::Compiled => "compiled",
            ModuleOrigin::Memory => "memory cache",
            ModuleOrigin::Disk => "disk cache",
        }
    }
}

/// Sets the on-disk module cache folder (`None`: no disk cache). Takes effect
/// only before the engine's first use; returns false when it came too late.
pub fn set_cache_dir(dir: Option<PathBuf>) -> bool {
    CACHE_DIR.set(dir).is_ok()
}

/// The shared engine, with epoch interruption on and its ticker running.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable);
        if let Some(Some(dir)) = CACHE_DIR.get() {
            let mut cache = wasmtime::CacheConfig::new();
            cache.with_directory(dir);
            match wasmtime::Cache::new(cache) {
                Ok(c) => {
                    let _ = DISK_CACHE.set(c.clone());
                    config.cache(Some(c));
                }
                Err(e) => tracing::warn!(
                    dir = %dir.display(),
                    error = %e,
                    "the compiled-module cache folder is unusable; plugins will be compiled at every start"
                ),
            }
        }
        let engine = Engine::new(&config).expect("the wasmtime configuration is valid");
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .expect("starting the epoch thread");
        engine
    })
}

/// Epoch ticks allowed for a callback limited to `limit`.
pub fn ticks(limit: Duration) -> u64 {
    (limit.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1
}

/// The SHA-256 of a plugin file, in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Compiles a component, or returns the one compiled earlier from the same bytes.
pub fn compile_component(
    bytes: &[u8],
) -> wasmtime::Result<(wasmtime::component::Component, ModuleOrigin)> {
    static COMPONENTS: OnceLock<Mutex<HashMap<[u8; 32], wasmtime::component::Component>>> =
        OnceLock::new();
    let cache = COMPONENTS.get_or_init(Default::default);
    let key: [u8; 32] = Sha256::digest(bytes).into();
    if let Some(c) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok((c.clone(), ModuleOrigin::Memory));
    }
    let engine = engine();
    let hits = DISK_CACHE.get().map(|c| c.cache_hits());
    let component = wasmtime::component::Component::new(engine, bytes)?;
    let origin = match (hits, DISK_CACHE.get().map(|c| c.cache_hits())) {
        (Some(before), Some(after)) if after > before => ModuleOrigin::Disk,
        _ => ModuleOrigin::Compiled,
    };
    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
    if c.len() >= MEMORY_CACHE_ENTRIES {
        c.clear();
    }
    c.insert(key, component.clone());
    Ok((component, origin))
}

/// Compiles `bytes`, or returns the module compiled earlier from the same
/// bytes (in this process, or by an earlier run through the disk cache).
pub fn compile(bytes: &[u8]) -> wasmtime::Result<(Module, ModuleOrigin)> {
    struct Cache {
        modules: HashMap<[u8; 32], Module>,
        order: VecDeque<[u8; 32]>,
    }
    static MODULES: OnceLock<Mutex<Cache>> = OnceLock::new();
    let cache = MODULES.get_or_init(|| {
        Mutex::new(Cache {
            modules: HashMap::new(),
            order: VecDeque::new(),
        })
    });
    let key: [u8; 32] = Sha256::digest(bytes).into();
    if let Some(m) = cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .modules
        .get(&key)
    {
        return Ok((m.clone(), ModuleOrigin::Memory));
    }
    let engine = engine();
    let hits = DISK_CACHE.get().map(|c| c.cache_hits());
    let module = Module::new(engine, bytes)?;
    let origin = match (hits, DISK_CACHE.get().map(|c| c.cache_hits())) {
        (Some(before), Some(after)) if after > before => ModuleOrigin::Disk,
        _ => ModuleOrigin::Compiled,
    };
    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
    if c.modules.insert(key, module.clone()).is_none() {
        c.order.push_back(key);
    }
    while c.order.len() > MEMORY_CACHE_ENTRIES {
        if let Some(old) = c.order.pop_front() {
            c.modules.remove(&old);
        }
    }
    Ok((module, origin))
}
