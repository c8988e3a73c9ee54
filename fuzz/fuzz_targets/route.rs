#![no_main]
//! `cargo +nightly fuzz run route`: see weir_fuzz::route.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_fuzz::route::run(data));
