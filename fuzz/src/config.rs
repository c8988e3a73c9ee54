//! Config parsing and validation: any text gets a config or a list of
//! errors that each say what is wrong and where, never a panic; a config
//! that loads builds its router and survives being written out again (the
//! admin API's `/config` shows the raw config; loaded back, it must load).

use std::path::Path;

use weir::config::Config;
use weir::router::Router;

/// Where relative paths in a fuzzed config point: nowhere that exists.
const BASE: &str = "/nonexistent/weir-fuzz";

/// One input: the bytes as a config file.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text, "fuzz.toml", Path::new(BASE)) {
        Ok(config) => {
            let _ = Router::new(config.routes.clone());
            let again = toml::to_string(&config.raw)
                .unwrap_or_else(|e| panic!("a loaded config cannot be written out: {e}\n{text}"));
            if let Err(e) = Config::from_toml(&again, "again.toml", Path::new(BASE)) {
                panic!(
                    "a loaded config, written out, does not load again: {e}\n--- in\n{text}\n--- out\n{again}"
                );
            }
        }
        Err(errors) => {
            assert!(!errors.errors.is_empty(), "refused with no error: {text:?}");
            let lines = text.lines().count().max(1);
            for e in &errors.errors {
                assert!(!e.message.trim().is_empty(), "an empty message: {e:?}");
                if let Some((line, column)) = e.location {
                    assert!(
                        (1..=lines + 1).contains(&line) && column >= 1,
                        "{e:?}: no such place in a file of {lines} lines"
                    );
                }
            }
            assert!(!errors.to_string().is_empty());
        }
    }
}
