//! Plugin ABIs: thin adapters between a guest's calling convention and the
//! host API in [`crate::plugin::host`]. They never use each other.

pub mod proxy_wasm;
