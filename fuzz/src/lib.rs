//! weir's fuzz targets, one module per target. Each `run` takes the
//! fuzzer's bytes and panics only on a bug in weir. The same modules run
//! in `cargo test` over the seeds in `fuzz/seeds/` and a few thousand
//! pseudo-random inputs (tests/fuzz_seeds.rs), so a harness cannot rot
//! and a crash found once stays fixed.

pub mod config;
pub mod path;
pub mod route;
