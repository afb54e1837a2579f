//! Command line and start-up.
//!
//! `nowconnect-hub --config FILE` (or `NOWCONNECT_CONFIG=FILE`) loads the YAML, applies the
//! `NOWCONNECT_*` environment overrides and validates; `--check` stops there. A bad
//! configuration prints one line naming the key, the value and what is expected, and exits 2.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use nowconnect_core::config::HubConfig;

/// The NowConnect hub: serves agent sessions and the TCP listeners bound to their connectors.
#[derive(Debug, Parser)]
#[command(name = "nowconnect-hub", version, about)]
pub struct Args {
    /// The hub's YAML configuration file.
    #[arg(long, env = "NOWCONNECT_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
    /// Validate the configuration and exit: 0 when it is valid, 2 with one line naming the
    /// problem otherwise.
    #[arg(long)]
    pub check: bool,
}

/// Reads, overrides from the environment and validates the configuration.
pub fn load_config(path: &std::path::Path) -> Result<HubConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("config file {}: {e}", path.display()))?;
    let config = HubConfig::load(&text, |name| std::env::var(name).ok())
        .map_err(|e| format!("config {}: {e}", path.display()))?;
    Ok(config)
}

/// Entry point of the `nowconnect-hub` binary.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let config = match load_config(&args.config) {
        Ok(config) => config,
        Err(line) => {
            eprintln!("nowconnect-hub: {line}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("{}: configuration is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    crate::logging::init(&config.logging);
    crate::shard::run_hub(config)
}
