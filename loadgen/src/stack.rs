//! A hub and an agent on loopback with generated development credentials: what `demo`,
//! `tune` and `stack` run their load against.
//!
//! [`Stack::start`] writes a JWKS and a token into a temporary directory, starts
//! `nowconnect-hub` with one listener per target (plain `ws://` tunnel, everything on
//! ephemeral loopback ports, JSON logs) and `nowconnect-agent` serving those targets, and
//! returns once the agent's `/readyz` answers. [`Stack::stop`] sends both SIGTERM and waits.
//! The directory, with both logs, is removed on drop unless [`Stack::keep`] was called.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde::Serialize;
use tokio::time::{Instant, sleep};

use crate::creds::DevIdp;
use crate::net;

/// The agent id the development token is issued to.
pub(crate) const AGENT_ID: &str = "loadgen-agent";
/// The audience the hub checks and the token carries.
const AUDIENCE: &str = "nowconnect-demo";
/// The issuer the hub checks and the token carries.
const ISSUER: &str = "https://demo-idp.nowconnect.invalid/";
/// How long the agent may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the hub may take to report its addresses.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long each process may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The hub's I/O driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Driver {
    /// io_uring where the kernel allows it, epoll otherwise.
    Auto,
    /// io_uring, or fail.
    #[value(name = "io_uring")]
    IoUring,
    /// epoll.
    Epoll,
}

impl Driver {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Driver::Auto => "auto",
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// How to start the stack.
#[derive(Debug, Clone)]
pub(crate) struct StackOptions {
    /// Where `nowconnect-hub` and `nowconnect-agent` are; the loadgen's own directory if
    /// absent.
    pub(crate) bin_dir: Option<PathBuf>,
    /// The hub's driver.
    pub(crate) driver: Driver,
    /// Hub shards; `None` for `auto`.
    pub(crate) shards: Option<u32>,
    /// Agent sessions per hub; `None` for `auto` (one per shard).
    pub(crate) lanes: Option<u32>,
    /// Connector name and target address, one hub listener each.
    pub(crate) targets: Vec<(String, SocketAddr)>,
    /// Extra `limits` keys for the hub, such as `idle_timeout_ms`.
    pub(crate) limits: Vec<(String, u64)>,
}

/// A running hub and agent.
pub(crate) struct Stack {
    pub(crate) dir: TempDir,
    pub(crate) hub: Proc,
    pub(crate) agent: Proc,
    /// The hub's tunnel address.
    pub(crate) tunnel: SocketAddr,
    /// The hub's admin endpoint.
    pub(crate) admin: SocketAddr,
    /// Connector name and hub listener address, in the order of the targets.
    pub(crate) listeners: Vec<(String, SocketAddr)>,
}

/// What `stack` prints once the agent is ready: one JSON line.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StackInfo {
    pub(crate) hub_pid: u32,
    pub(crate) agent_pid: u32,
    pub(crate) tunnel: String,
    pub(crate) admin: String,
    /// Connector name → hub listener address.
    pub(crate) listeners: std::collections::BTreeMap<String, String>,
    /// The directory with the configuration, credentials and both logs.
    pub(crate) dir: String,
}

impl Stack {
    /// Starts the hub and the agent and waits until the agent is ready.
    pub(crate) async fn start(opts: &StackOptions) -> Result<Stack, String> {
        if opts.targets.is_empty() {
            return Err("the stack needs at least one target".into());
        }
        let (hub_bin, agent_bin) = find_binaries(opts.bin_dir.as_deref())?;
        let mut dir = TempDir::new()?;
        match start_in(opts, &hub_bin, &agent_bin, &dir.path).await {
            Ok((hub, agent, addrs)) => Ok(Stack {
                listeners: opts
                    .targets
                    .iter()
                    .map(|(name, _)| name.clone())
                    .zip(addrs.listeners)
                    .collect(),
                tunnel: addrs.tunnel,
                admin: addrs.admin,
                dir,
                hub,
                agent,
            }),
            Err(e) => {
                dir.keep = true;
                Err(format!("{e}\n(logs kept in {})", dir.path.display()))
            }
        }
    }

    /// The hub listener of `connector`.
    pub(crate) fn listener(&self, connector: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(name, _)| name == connector)
            .map(|(_, addr)| *addr)
    }

    /// Keeps the directory with the logs after the stack is gone.
    pub(crate) fn keep(&mut self) {
        self.dir.keep = true;
    }

    /// What `stack` prints.
    pub(crate) fn info(&self) -> StackInfo {
        StackInfo {
            hub_pid: self.hub.pid(),
            agent_pid: self.agent.pid(),
            tunnel: self.tunnel.to_string(),
            admin: self.admin.to_string(),
            listeners: self
                .listeners
                .iter()
                .map(|(n, a)| (n.clone(), a.to_string()))
                .collect(),
            dir: self.dir.path.display().to_string(),
        }
    }

    /// Stops the agent, then the hub, with SIGTERM; returns what went wrong (a process that
    /// died on its own, or one that had to be killed).
    pub(crate) async fn stop(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        for p in [&mut self.agent, &mut self.hub] {
            if let Err(e) = p.check_running() {
                failures.push(e);
            }
        }
        self.agent.sigterm();
        self.hub.sigterm();
        for p in [&mut self.agent, &mut self.hub] {
            if let Err(e) = p.wait(STOP_TIMEOUT).await {
                failures.push(e);
            }
        }
        failures
    }
}

async fn start_in(
    opts: &StackOptions,
    hub_bin: &Path,
    agent_bin: &Path,
    dir: &Path,
) -> Result<(Proc, Proc, HubAddrs), String> {
    let idp = DevIdp::generate("loadgen-key")?;
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, idp.jwks()).map_err(|e| format!("writing {}: {e}", jwks.display()))?;
    let token_file = dir.join("agent.token");
    let token = idp.token(AGENT_ID, AUDIENCE, ISSUER, 24 * 3600)?;
    std::fs::write(&token_file, token)
        .map_err(|e| format!("writing {}: {e}", token_file.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("protecting {}: {e}", token_file.display()))?;
    }

    let config = dir.join("hub.yaml");
    std::fs::write(&config, hub_yaml(&jwks, opts))
        .map_err(|e| format!("writing {}: {e}", config.display()))?;
    let mut cmd = Command::new(hub_bin);
    cmd.arg("--config").arg(&config);
    let mut hub = Proc::spawn("nowconnect-hub", cmd, dir.join("hub.log"))?;
    let addrs = wait_hub_started(&mut hub).await?;
    if addrs.listeners.len() != opts.targets.len() {
        return Err(format!(
            "the hub reported {} listeners for {} targets",
            addrs.listeners.len(),
            opts.targets.len()
        ));
    }

    let health = free_port()?;
    let connectors = opts
        .targets
        .iter()
        .map(|(name, addr)| format!("{name}={addr}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new(agent_bin);
    cmd.env(
        "NC_HUB_URL",
        format!("ws://{}/nowconnect/v1/tunnel", addrs.tunnel),
    )
    .env("NC_AGENT_ID", AGENT_ID)
    .env("NC_TOKEN_FILE", &token_file)
    .env("NC_CONNECTORS", connectors)
    .env(
        "NC_LANES",
        opts.lanes
            .map_or_else(|| "auto".to_owned(), |n| n.to_string()),
    )
    .env("NC_HEALTH_ADDR", health.to_string())
    .env("NC_LOG_FORMAT", "json");
    let mut agent = Proc::spawn("nowconnect-agent", cmd, dir.join("agent.log"))?;
    wait_agent_ready(&mut agent, &mut hub, health).await?;
    Ok((hub, agent, addrs))
}

/// A temporary directory, removed on drop unless kept.
pub(crate) struct TempDir {
    pub(crate) path: PathBuf,
    pub(crate) keep: bool,
}

impl TempDir {
    pub(crate) fn new() -> Result<TempDir, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "nowconnect-stack-{}-{nanos:08x}",
            std::process::id()
        ));
        std::fs::create_dir(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(TempDir { path, keep: false })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A child process whose output goes to a log file; killed on drop if still running.
pub(crate) struct Proc {
    pub(crate) name: &'static str,
    child: Child,
    pub(crate) log: PathBuf,
}

impl Proc {
    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Result<Proc, String> {
        let file =
            File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let out = file
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        // Variables of either program in this environment would override the demo's setup.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("NC_") || k.starts_with("NOWCONNECT_") {
                cmd.env_remove(&key);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Proc { name, child, log })
    }

    /// An error if the process has already exited.
    pub(crate) fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited early ({status}); its log {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log, 15)
            )),
            Err(e) => Err(format!("cannot check on {}: {e}", self.name)),
        }
    }

    /// Sends SIGTERM (through `kill`, so this crate needs no unsafe code).
    pub(crate) fn sigterm(&mut self) {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !sent {
            let _ = self.child.kill();
        }
    }

    /// Waits up to `within` for the process to exit, then kills it.
    pub(crate) async fn wait(&mut self, within: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + within;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(format!(
                        "{} did not exit within {} s of SIGTERM and was killed",
                        self.name,
                        within.as_secs()
                    ));
                }
                Ok(None) => sleep(Duration::from_millis(50)).await,
                Err(e) => return Err(format!("waiting for {}: {e}", self.name)),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `n` lines of a log file, indented.
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {l}\n"))
        .collect()
}

/// Finds `nowconnect-hub` and `nowconnect-agent` in `dir`, or next to this executable.
fn find_binaries(dir: Option<&Path>) -> Result<(PathBuf, PathBuf), String> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot locate this executable: {e}"))?
            .parent()
            .map(Path::to_path_buf)
            .ok_or("this executable has no parent directory")?,
    };
    let find = |name: &str| {
        let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "{name} not found in {}: build it with `cargo build --release -p nowconnect-hub -p nowconnect-agent` (or pass --bin-dir)",
                dir.display()
            ))
        }
    };
    Ok((find("nowconnect-hub")?, find("nowconnect-agent")?))
}

/// The hub's configuration: everything on ephemeral loopback ports, JSON logs, one listener
/// per target.
fn hub_yaml(jwks: &Path, opts: &StackOptions) -> String {
    // A JSON string is a valid YAML double-quoted scalar, whatever the path holds.
    let jwks_url = serde_json::to_string(&format!("file://{}", jwks.display()))
        .unwrap_or_else(|_| "\"\"".into());
    let listeners: String = opts
        .targets
        .iter()
        .map(|(name, _)| format!("  - {{ connector: {name}, listen: \"127.0.0.1:0\" }}\n"))
        .collect();
    let shards = opts
        .shards
        .map_or_else(|| "auto".to_owned(), |n| n.to_string());
    let limits: String = std::iter::once("drain_timeout_ms: 3000".to_owned())
        .chain(opts.limits.iter().map(|(k, v)| format!("{k}: {v}")))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "replica_id: loadgen-hub\n\
         hub: {{ shards: {shards}, driver: {driver} }}\n\
         tunnel: {{ listen: \"127.0.0.1:0\" }}\n\
         admin: {{ listen: \"127.0.0.1:0\" }}\n\
         listeners:\n{listeners}\
         security: {{ jwks_url: {jwks_url}, audience: {AUDIENCE}, issuer: \"{ISSUER}\" }}\n\
         limits: {{ {limits} }}\n\
         logging: {{ format: json, level: info }}\n",
        driver = opts.driver.as_str(),
    )
}

/// The addresses the hub reported in its `hub started` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HubAddrs {
    tunnel: SocketAddr,
    listeners: Vec<SocketAddr>,
    admin: SocketAddr,
}

/// Parses the `hub started` JSON log line; None for any other line.
fn parse_hub_started(line: &str) -> Option<Result<HubAddrs, String>> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = if v.get("message").is_some() {
        &v
    } else {
        v.get("fields")?
    };
    if fields["message"] != "hub started" {
        return None;
    }
    let addr = |key: &str| -> Result<SocketAddr, String> {
        fields[key]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("the hub's start line has no usable {key:?}: {line}"))
    };
    // `listeners` is logged with Debug formatting: "[127.0.0.1:1, 127.0.0.1:2]".
    let listeners: Vec<SocketAddr> = fields["listeners"]
        .as_str()
        .unwrap_or("")
        .trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .filter_map(|s| s.parse().ok())
        .collect();
    Some((|| {
        if listeners.is_empty() {
            return Err(format!("the hub's start line lists no listener: {line}"));
        }
        Ok(HubAddrs {
            tunnel: addr("tunnel")?,
            admin: addr("admin")?,
            listeners,
        })
    })())
}

/// Waits for the hub's `hub started` line in its log.
async fn wait_hub_started(hub: &mut Proc) -> Result<HubAddrs, String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(&hub.log).unwrap_or_default();
        if let Some(found) = text.lines().find_map(parse_hub_started) {
            return found;
        }
        hub.check_running()?;
        if Instant::now() >= deadline {
            return Err(format!(
                "the hub did not report its addresses within {} s; see {}:\n{}",
                START_TIMEOUT.as_secs(),
                hub.log.display(),
                log_tail(&hub.log, 15)
            ));
        }
        sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the agent's `/readyz` to answer 200.
async fn wait_agent_ready(
    agent: &mut Proc,
    hub: &mut Proc,
    health: SocketAddr,
) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok((200, _)) = net::http_get(health, "/readyz").await {
            return Ok(());
        }
        agent.check_running()?;
        hub.check_running()?;
        if Instant::now() >= deadline {
            return Err(format!(
                "the agent was not ready (GET http://{health}/readyz) within {} s; see {} and {}:\n{}",
                READY_TIMEOUT.as_secs(),
                agent.log.display(),
                hub.log.display(),
                log_tail(&agent.log, 15)
            ));
        }
        sleep(Duration::from_millis(100)).await;
    }
}

/// A loopback port that was free a moment ago (for the agent's health listener, whose
/// address the agent does not report).
fn free_port() -> Result<SocketAddr, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot find a free port: {e}"))?;
    l.local_addr()
        .map_err(|e| format!("cannot find a free port: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> StackOptions {
        StackOptions {
            bin_dir: None,
            driver: Driver::Epoll,
            shards: Some(2),
            lanes: None,
            targets: vec![
                ("echo".into(), "127.0.0.1:7".parse().unwrap()),
                ("sink".into(), "127.0.0.1:9".parse().unwrap()),
            ],
            limits: vec![("idle_timeout_ms".into(), 2000)],
        }
    }

    #[test]
    fn reads_the_hub_started_line() {
        let line = r#"{"timestamp":"t","level":"INFO","message":"hub started","shards":2,"tunnel":"127.0.0.1:4001","listeners":"[127.0.0.1:4002, 127.0.0.1:4004]","admin":"127.0.0.1:4003"}"#;
        let a = parse_hub_started(line).unwrap().unwrap();
        assert_eq!(a.tunnel, "127.0.0.1:4001".parse().unwrap());
        assert_eq!(
            a.listeners,
            vec![
                "127.0.0.1:4002".parse().unwrap(),
                "127.0.0.1:4004".parse().unwrap()
            ]
        );
        assert_eq!(a.admin, "127.0.0.1:4003".parse().unwrap());
        assert!(parse_hub_started(r#"{"message":"draining"}"#).is_none());
        assert!(parse_hub_started("not json").is_none());
        let bad = r#"{"message":"hub started","tunnel":"x","listeners":"[]","admin":"y"}"#;
        assert!(parse_hub_started(bad).unwrap().is_err());
    }

    #[test]
    fn the_hub_configuration_has_a_listener_per_target_and_the_options() {
        let y = hub_yaml(Path::new("/tmp/a b/jwks.json"), &options());
        assert!(
            y.contains(r#"jwks_url: "file:///tmp/a b/jwks.json""#),
            "{y}"
        );
        assert!(y.contains("connector: echo"), "{y}");
        assert!(y.contains("connector: sink"), "{y}");
        assert!(y.contains("hub: { shards: 2, driver: epoll }"), "{y}");
        assert!(y.contains("idle_timeout_ms: 2000"), "{y}");
        assert_eq!(y.matches("127.0.0.1:0").count(), 4);
        // The hub's own parser accepts it.
        nowconnect_core::config::HubConfig::from_yaml(&y).unwrap();
    }

    #[test]
    fn a_missing_binary_names_the_build_command() {
        let err = find_binaries(Some(Path::new("/nonexistent-dir"))).unwrap_err();
        assert!(
            err.contains("cargo build --release -p nowconnect-hub -p nowconnect-agent"),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }
}
