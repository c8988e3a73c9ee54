#![no_main]
//! `cargo +nightly fuzz run path`: see weir_fuzz::path.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_fuzz::path::run(data));
