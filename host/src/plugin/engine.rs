//! The one wasmtime [`Engine`] every plugin is compiled with, and the epoch
//! ticker that bounds each callback's CPU time.

use std::sync::OnceLock;
use std::time::Duration;

use wasmtime::{Config, Engine};

/// One epoch tick: CPU limits are counted in these.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The shared engine, with epoch interruption on and its ticker running.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Enable);
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
