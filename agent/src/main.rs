//! The NowConnect agent: dials out to hubs over WebSocket, registers its connectors, and for
//! every stream a hub opens, dials the connector's local target and pipes bytes both ways.
//!
//! The protocol itself lives in `nowconnect-core`; this crate is its tokio driver:
//!
//! - [`lanes`]: one task per hub lane, reconnecting with [`backoff`] forever.
//! - [`connect`]: TCP (through a [`proxy`] with `trust_env`), [`tls`], the upgrade with the
//!   [`token`] (and a [`dpop`] proof when the token is DPoP-bound), HELLO and WELCOME.
//! - [`session`]: a session's reader and writer tasks around the core session.
//! - [`stream`]: dialling a target and piping one stream.
//! - [`wire`]: masked WebSocket frames and binary messages.
//! - [`health`]: `/healthz`, `/readyz` and readiness bookkeeping.
//! - [`clock`]: the monotonic `now` the core is handed.
//!
//! The lanes run on [`threads`]: one current-thread tokio runtime per core, each lane with all
//! of its streams' tasks on one of them, so that passing bytes between a session and its
//! streams never wakes another thread. The main thread runs its own current-thread runtime
//! for the rest: signals, the token file, the health endpoint.
#![forbid(unsafe_code)]

mod backoff;
mod clock;
mod connect;
mod dpop;
mod health;
mod lanes;
mod proxy;
mod session;
mod splice;
mod stream;
mod threads;
mod tls;
mod token;
mod wire;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use nowconnect_core::config::{AgentConfig, LogFormat, LogLevel};
use tokio::sync::{mpsc, watch};
use tracing_subscriber::filter::LevelFilter;

use crate::dpop::DpopKey;
use crate::health::Readiness;
use crate::lanes::Agent;
use crate::proxy::Proxies;

/// The agent's name and version, sent in HELLO and as `User-Agent`.
pub(crate) const SOFTWARE: &str = concat!("nowconnect-agent/", env!("CARGO_PKG_VERSION"));

/// Exit status for a configuration the agent cannot run with.
const EXIT_CONFIG: u8 = 2;

/// Command line. Every setting can also come from `NC_*` environment variables, which
/// override the file.
#[derive(Debug, Parser)]
#[command(name = "nowconnect-agent", version, about)]
struct Cli {
    /// YAML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let yaml = match &cli.config {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(err) => {
                eprintln!(
                    "nowconnect-agent: cannot read --config {}: {err}",
                    path.display()
                );
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => None,
    };
    let config = match AgentConfig::load(yaml.as_deref(), |name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("nowconnect-agent: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let dpop = match &config.dpop_key_file {
        Some(path) => match DpopKey::load(path) {
            Ok(key) => Some(key),
            Err(err) => {
                eprintln!("nowconnect-agent: {err}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => None,
    };
    let proxies = if config.trust_env {
        match Proxies::from_env(|name| std::env::var(name).ok()) {
            Ok(proxies) => proxies,
            Err(err) => {
                eprintln!("nowconnect-agent: {err}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    } else {
        Proxies::default()
    };
    init_logging(&config);

    let needs_tls = config.hub_urls.iter().any(|url| url.is_tls())
        || config.ca_file.is_some()
        || config.client_cert.is_some();
    let tls = if needs_tls {
        let client_cert = config
            .client_cert
            .as_deref()
            .zip(config.client_key.as_deref());
        match tls::client_config(config.ca_file.as_deref(), client_cert) {
            Ok(tls) => Some(tls),
            Err(err) => {
                eprintln!("nowconnect-agent: {err}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    } else {
        None
    };

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = match threads::LaneThreads::start(cores) {
        Ok(threads) => threads,
        Err(err) => {
            eprintln!("nowconnect-agent: cannot start the lane threads: {err}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("nowconnect-agent: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(config, tls, proxies, dpop, threads));
    // A DNS lookup stuck in a blocking thread must not hold up the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// Text logs on stderr by default, JSON lines with `log_format: json`.
fn init_logging(config: &AgentConfig) {
    let level = match config.log_level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// Runs the agent until SIGTERM or SIGINT, then drains; returns the exit status.
async fn run(
    config: AgentConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    proxies: Proxies,
    dpop: Option<DpopKey>,
    threads: threads::LaneThreads,
) -> ExitCode {
    let readiness = Arc::new(Readiness::new(config.hub_urls.len()));
    if let Some(addr) = config.health_addr {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                tracing::info!(addr = %addr, "health listener up");
                tokio::spawn(health::serve(listener, Arc::clone(&readiness)));
            }
            Err(err) => {
                tracing::error!(addr = %addr, error = %err, "cannot bind the health listener (health_addr, NC_HEALTH_ADDR)");
                return ExitCode::FAILURE;
            }
        }
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let hubs = config.hub_urls.len();
    let pipes = if config.splice {
        splice::fit_to_open_files()
    } else {
        0
    };
    tracing::info!(
        agent_id = %config.agent_id,
        hubs = %config.hub_urls.iter().map(|u| u.as_str()).collect::<Vec<_>>().join(","),
        connectors = %config.connectors.keys().map(|c| c.as_str()).collect::<Vec<_>>().join(","),
        lanes = ?config.lanes,
        threads = threads.len(),
        pipes,
        software = SOFTWARE,
        "agent starting"
    );
    for url in &config.hub_urls {
        match proxies.for_url(url) {
            Some(proxy) => {
                tracing::info!(hub = %url, proxy = %proxy, "connecting through an HTTP proxy")
            }
            None if config.trust_env => {
                tracing::info!(hub = %url, "connecting directly (no proxy for this hub)")
            }
            None => {}
        }
    }
    if !config.trust_env
        && ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
    {
        tracing::info!(
            "proxy variables are set but trust_env (NC_TRUST_ENV) is false: connecting directly"
        );
    }
    if let Some(key) = &dpop {
        tracing::info!(
            alg = key.alg(),
            jkt = key.thumbprint(),
            "DPoP proofs enabled: the token must carry this key's thumbprint as cnf.jkt"
        );
    }
    let token = token::watch(config.token_file.clone()).await;
    let agent = Arc::new(Agent {
        hubs: config.hub_urls,
        agent_id: config.agent_id,
        token_file: config.token_file,
        token,
        proxies,
        connectors: Arc::new(config.connectors),
        lanes: config.lanes,
        tls,
        dpop,
        dial_timeout: Duration::from_millis(config.dial_timeout_ms),
        splice: config.splice,
        readiness,
        shutdown: shutdown_rx,
        alive: alive_tx,
        threads,
    });
    for hub in 0..hubs {
        tokio::spawn(lanes::run_hub(Arc::clone(&agent), hub));
    }
    drop(agent);

    match wait_for_signal().await {
        Ok(signal) => tracing::info!(
            signal,
            grace_s = session::SHUTDOWN_GRACE.as_secs(),
            "shutting down: refusing new streams, letting open ones finish"
        ),
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for signals");
            return ExitCode::FAILURE;
        }
    }
    let _ = shutdown_tx.send(true);
    // Every lane and session holds a sender; the channel closes when the last one is done.
    let all_done = alive_rx.recv();
    if tokio::time::timeout(session::SHUTDOWN_GRACE + Duration::from_secs(3), all_done)
        .await
        .is_err()
    {
        tracing::warn!("sessions did not close in time; exiting anyway");
    }
    tracing::info!("agent stopped");
    ExitCode::SUCCESS
}

/// Waits for SIGTERM or SIGINT (Ctrl-C elsewhere) and names it.
async fn wait_for_signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => Ok("SIGTERM"),
            _ = int.recv() => Ok("SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok("Ctrl-C")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses() {
        Cli::try_parse_from(["nowconnect-agent", "--config", "a.yaml"]).unwrap();
        assert!(Cli::try_parse_from(["nowconnect-agent", "--nope"]).is_err());
    }
}
