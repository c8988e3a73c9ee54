//! weir: a WebAssembly-extensible programmable proxy.
//!
//! The module tree follows a request: [`listener`] accepts and decodes it,
//! [`filter`] runs the plugin chain, [`router`] picks a route, [`upstream`]
//! sends it on; [`proxy`] is the service that walks that path. Beside them:
//! [`config`] (the TOML schema and its validation), [`runtime`] (one config
//! generation), [`admin`], [`telemetry`], and [`app`], which wires them.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! let config = weir::config::Config::embedded_default();
//! weir::app::run(config, None).await
//! # }
//! ```

pub mod abi;
pub mod admin;
pub mod app;
pub mod body;
pub mod cli;
pub mod config;
pub mod echo;
pub mod error;
pub mod filter;
pub mod listener;
pub mod mesh;
pub mod plugin;
pub mod proxy;
pub mod quota;
pub mod router;
pub mod runtime;
pub mod scaffold;
pub mod telemetry;
pub mod upstream;
