//! The command line: `weir run`, `weir validate`, `weir ca init|issue`, `weir plugin new|describe`, `weir --version`.

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
    /// The mesh CA: make a root, issue workload certificates with SPIFFE IDs.
    Ca {
        /// What to do.
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Write and inspect plugins.
    Plugin {
        /// What to do.
        #[command(subcommand)]
        command: PluginCommand,
    },
}

/// `weir ca` subcommands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Make a root CA (ECDSA P-256): DIR/ca.pem, and DIR/ca-key.pem readable by its owner only.
    Init {
        /// The CA's folder.
        #[arg(long)]
        dir: PathBuf,
        /// The mesh's trust domain: workload IDs are spiffe://TRUST_DOMAIN/...
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// How long the root is valid.
        #[arg(long, default_value = "10y", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Replace an existing CA in DIR.
        #[arg(long)]
        force: bool,
    },
    /// Issue a workload certificate: OUT/cert.pem, OUT/key.pem and OUT/ca.pem (the trust bundle).
    Issue {
        /// The CA's folder (from `weir ca init`).
        #[arg(long)]
        dir: PathBuf,
        /// The workload's SPIFFE ID, e.g. spiffe://cluster.local/ns/default/sa/web.
        #[arg(long)]
        spiffe: String,
        /// Where to write the files.
        #[arg(long)]
        out: PathBuf,
        /// How long the certificate is valid.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Extra DNS names for the certificate (repeatable).
        #[arg(long)]
        dns: Vec<String>,
    },
}

/// `weir plugin` subcommands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Create a filter crate on the weir SDK: a working filter, a test, a README.
    New {
        /// The plugin's name (lowercase, digits, '-').
        name: String,
        /// The folder to create it in (default: the current one).
        #[arg(long)]
        path: Option<PathBuf>,
        /// The weir-sdk crate to depend on (default: the SDK beside this weir's source).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Print what a plugin file is: its ABI and version, exports, imports and configuration schema.
    Describe {
        /// The .wasm file.
        file: PathBuf,
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
        Command::Plugin {
            command: PluginCommand::New { name, path, sdk },
        } => {
            let Some(sdk) = sdk.or_else(crate::scaffold::default_sdk) else {
                eprintln!(
                    "weir: where is weir-sdk? pass --sdk PATH (the sdk/ folder of weir's source)"
                );
                return ExitCode::FAILURE;
            };
            match crate::scaffold::new_plugin(&name, &path.unwrap_or_else(|| ".".into()), &sdk) {
                Ok(dir) => {
                    println!(
                        "created {}: cd there, then `cargo test` and `cargo build --release --target wasm32-wasip2` (see its README)",
                        dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("weir: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Ca { command } => ca(command),
        Command::Plugin {
            command: PluginCommand::Describe { file },
        } => match crate::plugin::describe(&file) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("weir: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn ca(command: CaCommand) -> ExitCode {
    let done = match command {
        CaCommand::Init {
            dir,
            trust_domain,
            ttl,
            force,
        } => crate::mesh::ca::init(&dir, &trust_domain, ttl, force).map(|o| {
            format!(
                "made the root CA of trust domain {}: {} (the trust bundle) and {} (keep it secret)",
                o.trust_domain,
                o.cert.display(),
                o.key.display()
            )
        }),
        CaCommand::Issue {
            dir,
            spiffe,
            out,
            ttl,
            dns,
        } => crate::mesh::ca::issue(&dir, &spiffe, &dns, &out, ttl).map(|o| {
            format!(
                "issued {spiffe}: {}, {}, {} (valid until {})",
                o.cert.display(),
                o.key.display(),
                o.ca.display(),
                humantime::format_rfc3339_seconds(std::time::SystemTime::from(o.not_after))
            )
        }),
    };
    match done {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weir: {e}");
            ExitCode::FAILURE
        }
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
    builder
        .enable_all()
        .thread_name("weir-worker")
        .on_thread_start(crate::plugin::background::restore_priority);
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
