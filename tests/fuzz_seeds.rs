//! The fuzz targets' harnesses (fuzz/src), run in every test run: over the
//! committed seeds and past crashes in `fuzz/seeds/<target>/`, then over
//! pseudo-random inputs from a fixed seed. A long fuzzing run is
//! `cargo +nightly fuzz run <target>` (fuzz/README.md); this keeps the
//! harnesses building and what they once found fixed.

#[path = "../fuzz/src/config.rs"]
mod config;
#[path = "../fuzz/src/path.rs"]
mod path;
#[path = "../fuzz/src/route.rs"]
mod route;

use std::path::PathBuf;

/// Random inputs per target on top of the seeds.
const RANDOM_INPUTS: usize = 3000;

/// Runs `run` over the target's seeds, then over random inputs.
fn fuzz_once(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../fuzz/seeds/{target}"));
    let mut seeds: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "{}: no seeds", dir.display());
    for seed in &seeds {
        let data = std::fs::read(seed).unwrap_or_else(|e| panic!("{}: {e}", seed.display()));
        run(&data);
    }
    // xorshift64*: the same inputs on every run, so a failure repeats.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    for _ in 0..RANDOM_INPUTS {
        let len = (next() % 256) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        run(&data);
    }
}

#[test]
fn config_parsing_never_panics_and_places_every_error() {
    fuzz_once("config", config::run);
}

#[test]
fn path_normalization_reaches_a_fixed_point() {
    fuzz_once("path", path::run);
}

#[test]
fn the_router_picks_what_a_plain_scan_picks() {
    fuzz_once("route", route::run);
}
