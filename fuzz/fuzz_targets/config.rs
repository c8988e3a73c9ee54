#![no_main]
//! `cargo +nightly fuzz run config`: see weir_fuzz::config.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_fuzz::config::run(data));
