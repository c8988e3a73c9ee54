//! The command line: `weir run`, `weir validate`, `weir --version`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::telemetry::logging::{self, LogFormat};

/// weir: a WebAssembly-extensible programmable proxy.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `weir=debug` (default: RUST_LOG, else info).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (on the embedded default config without --config).
    Run {
        /// Config file; it is watched and reloaded when it changes.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a config file as `run` would, binding nothing. Exit 0 when valid, 1 with every error listed.
    Validate {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init(cli.log_format, cli.log_level.as_deref()) {
        eprintln!("weir: {e}");
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Run { config } => run(config),
    }
}

fn validate(path: &std::path::Path) -> ExitCode {
    let checked = Config::from_file(path).and_then(|c| crate::app::check_files(&c).map(|()| c));
    if let Ok(c) = &checked {
        let errors = crate::plugin::check(c);
        if !errors.is_empty() {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!(
                "{}: {} plugin(s) failed to load",
                path.display(),
                errors.len()
            );
            return ExitCode::FAILURE;
        }
    }
    match checked {
        Ok(c) => {
            println!(
                "{}: valid ({} listeners, {} routes, {} clusters)",
                path.display(),
                c.listeners.len(),
                c.routes.len(),
                c.clusters.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!("{}: {} error(s)", path.display(), e.errors.len());
            ExitCode::FAILURE
        }
    }
}

fn run(path: Option<PathBuf>) -> ExitCode {
    let config = match &path {
        Some(p) => match Config::from_file(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                eprintln!(
                    "weir: not started: fix the config and run again (weir validate --config {} checks it)",
                    p.display()
                );
                return ExitCode::FAILURE;
            }
        },
        None => Config::embedded_default(),
    };
    // One worker: a current-thread runtime, with no work-stealing bookkeeping.
    let mut builder = match config.server.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().thread_name("weir-worker");
    if let Some(n) = config.server.workers.filter(|n| *n > 1) {
        builder.worker_threads(n);
    }
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(crate::app::run(config, path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("weir: {e:#}");
            ExitCode::FAILURE
        }
    }
}
