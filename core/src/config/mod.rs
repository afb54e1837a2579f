//! The hub and agent configuration model and its validation.
//!
//! Configuration is YAML, overridden by environment variables, then validated:
//! [`HubConfig::load`] and [`AgentConfig::load`] do all three. Nothing here reads a file or
//! the process environment: callers pass the YAML text and a lookup function such as
//! `|name| std::env::var(name).ok()`, so tests inject both.
//!
//! Every key has a documented default and range, written on its field. Unknown keys are
//! errors, so a misspelt key is reported instead of silently ignored. A rejected configuration
//! yields a [`ConfigError`] whose message is one line naming the key (a dotted YAML path such
//! as `limits.heartbeat_ms`, or an environment variable), the offending value and what is
//! expected.

mod agent;
mod check;
mod env;
mod error;
mod hub;
mod target;
mod url;
mod words;
mod yaml;

pub use agent::{AGENT_ENV_VARS, AgentConfig, Lanes, MAX_LANES};
pub use error::ConfigError;
pub use hub::{
    AdminConfig, ClientAuth, DEFAULT_TUNNEL_PATH, DpopConfig, Driver, HUB_ENV_VARS, HubConfig,
    LimitsConfig, ListenerConfig, LoggingConfig, MAX_SHARDS, MtlsConfig, PdpConfig, PdpDialect,
    RuntimeConfig, SecurityConfig, Shards, TlsConfig, TunnelConfig,
};
pub use target::{TargetAddr, TargetAddrError};
pub use url::{WsUrl, WsUrlError};
pub use words::{LogFormat, LogLevel, ParseWordError};
