//! Log lines: JSON by default, or text, at the configured level.
//!
//! `RUST_LOG` overrides `logging.level` for debugging (for instance
//! `RUST_LOG=nowconnect_hub=debug`). Tokens are never logged: the authentication code hands the
//! log a reason, not the credential.

use nowconnect_core::config::{LogFormat, LoggingConfig};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Later calls (tests) are ignored.
pub fn init(config: &LoggingConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(config.level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}
