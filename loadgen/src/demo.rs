//! `demo`: a whole deployment on loopback, a short mixed load, and a comparison with the
//! target reached directly.
//!
//! Steps: generate development credentials in a temporary directory; start an echo target in
//! this process; start `nowconnect-hub` (plain `ws://` tunnel, one listener `echo`, all on
//! ephemeral loopback ports) and `nowconnect-agent` serving `echo`; wait for the agent's
//! `/readyz`; run throughput (1 and 8 streams, both directions), latency and churn, each
//! directly against the target and through the hub; print a summary and the hub's byte
//! counters; stop both processes with SIGTERM and remove the directory.
//!
//! Every phase is also a check: an error, a corrupted byte, a tunnel that moved nothing or a
//! failed connection makes the demo fail, so it doubles as a smoke test. On failure the
//! temporary directory, with both processes' logs and the hub's last `/metrics` scrape, is
//! kept and named.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde::Serialize;
use tokio::time::{Instant, sleep};

use crate::churn::{self, ChurnResult};
use crate::creds::DevIdp;
use crate::latency::{self, LatencyResult};
use crate::target::{self, TargetKind};
use crate::throughput::{self, Direction, ThroughputResult};
use crate::{net, stats};

/// The agent id the demo token is issued to.
const AGENT_ID: &str = "demo-agent";
/// The audience the hub checks and the token carries.
const AUDIENCE: &str = "nowconnect-demo";
/// The issuer the hub checks and the token carries.
const ISSUER: &str = "https://demo-idp.nowconnect.invalid/";
/// The connector the hub listens for and the agent serves.
const CONNECTOR: &str = "echo";
/// How long the agent may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the hub may take to report its addresses.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long each process may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The latency phase's aggregate rate and connections.
const LATENCY_RATE: f64 = 1000.0;
const LATENCY_CONNECTIONS: usize = 4;
const LATENCY_SIZE: usize = 64;
/// Concurrent workers in the churn phase.
const CHURN_CONCURRENCY: usize = 4;

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Where `nowconnect-hub` and `nowconnect-agent` are; the loadgen's own directory if
    /// absent.
    pub(crate) bin_dir: Option<PathBuf>,
    /// Length of each load phase.
    pub(crate) phase: Duration,
}

/// Every phase's result against one address (direct or through the tunnel).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct PhaseSet {
    /// Throughput, 1 stream, both directions.
    pub(crate) throughput_1: Option<ThroughputResult>,
    /// Throughput, 8 streams, both directions.
    pub(crate) throughput_8: Option<ThroughputResult>,
    /// Fixed-rate request/response latency.
    pub(crate) latency: Option<LatencyResult>,
    /// Connection churn.
    pub(crate) churn: Option<ChurnResult>,
}

/// One line of the summary table.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    /// What is measured, with its unit.
    pub(crate) figure: String,
    /// Against the target directly.
    pub(crate) direct: Option<f64>,
    /// Through the hub and agent.
    pub(crate) tunnel: Option<f64>,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        match (self.direct, self.tunnel) {
            (Some(d), Some(t)) if d > 0.0 => Some(t / d),
            _ => None,
        }
    }
}

/// Everything the demo measured and found.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DemoResult {
    /// Length of each phase, in seconds.
    pub(crate) phase_seconds: f64,
    /// The echo target's address.
    pub(crate) target: String,
    /// The hub listener in front of it.
    pub(crate) listener: String,
    /// Results against the target.
    pub(crate) direct: PhaseSet,
    /// Results through the tunnel.
    pub(crate) tunnel: PhaseSet,
    /// The summary table.
    pub(crate) summary: Vec<Row>,
    /// The hub's `nowconnect_bytes_total`, `nowconnect_shard_driver` and non-zero
    /// `nowconnect_cross_shard_messages_total` samples after the load.
    pub(crate) hub_metrics: Vec<String>,
    /// Checks that failed; empty when the demo passed.
    pub(crate) failures: Vec<String>,
}

/// A temporary directory, removed on drop unless kept.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn new() -> Result<TempDir, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "nowconnect-demo-{}-{nanos:08x}",
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
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
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
    fn check_running(&mut self) -> Result<(), String> {
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
    fn sigterm(&mut self) {
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
    async fn wait(&mut self, within: Duration) -> Result<ExitStatus, String> {
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

/// The hub's configuration: everything on ephemeral loopback ports, JSON logs.
fn hub_yaml(jwks: &Path) -> String {
    // A JSON string is a valid YAML double-quoted scalar, whatever the path holds.
    let jwks_url = serde_json::to_string(&format!("file://{}", jwks.display()))
        .unwrap_or_else(|_| "\"\"".into());
    format!(
        "replica_id: demo-hub\n\
         tunnel: {{ listen: \"127.0.0.1:0\" }}\n\
         admin: {{ listen: \"127.0.0.1:0\" }}\n\
         listeners:\n  - {{ connector: {CONNECTOR}, listen: \"127.0.0.1:0\" }}\n\
         security: {{ jwks_url: {jwks_url}, audience: {AUDIENCE}, issuer: \"{ISSUER}\" }}\n\
         limits: {{ drain_timeout_ms: 3000 }}\n\
         logging: {{ format: json, level: info }}\n"
    )
}

/// The addresses the hub reported in its `hub started` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HubAddrs {
    tunnel: SocketAddr,
    listener: SocketAddr,
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
    let listener = fields["listeners"]
        .as_str()
        .unwrap_or("")
        .trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .find_map(|s| s.parse().ok());
    Some((|| {
        Ok(HubAddrs {
            tunnel: addr("tunnel")?,
            admin: addr("admin")?,
            listener: listener
                .ok_or_else(|| format!("the hub's start line lists no listener: {line}"))?,
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

/// Runs the demo; the result lists any failed checks.
pub(crate) async fn run(opts: Options) -> Result<DemoResult, String> {
    let (hub_bin, agent_bin) = find_binaries(opts.bin_dir.as_deref())?;
    let mut dir = TempDir::new()?;
    let outcome = run_in(&opts, &hub_bin, &agent_bin, &dir.path).await;
    let failed = match &outcome {
        Ok(r) => !r.failures.is_empty(),
        Err(_) => true,
    };
    if failed {
        dir.keep = true;
        eprintln!(
            "demo: logs and configuration kept in {}",
            dir.path.display()
        );
    }
    outcome
}

async fn run_in(
    opts: &Options,
    hub_bin: &Path,
    agent_bin: &Path,
    dir: &Path,
) -> Result<DemoResult, String> {
    // Credentials.
    let idp = DevIdp::generate("demo-key")?;
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, idp.jwks()).map_err(|e| format!("writing {}: {e}", jwks.display()))?;
    let token_file = dir.join("agent.token");
    let token = idp.token(AGENT_ID, AUDIENCE, ISSUER, 3600)?;
    std::fs::write(&token_file, token)
        .map_err(|e| format!("writing {}: {e}", token_file.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("protecting {}: {e}", token_file.display()))?;
    }

    // Target, hub, agent.
    let target = target::spawn(TargetKind::Echo, ([127, 0, 0, 1], 0).into())
        .await
        .map_err(|e| format!("cannot start the echo target: {e}"))?;
    let config = dir.join("hub.yaml");
    std::fs::write(&config, hub_yaml(&jwks))
        .map_err(|e| format!("writing {}: {e}", config.display()))?;
    let mut cmd = Command::new(hub_bin);
    cmd.arg("--config").arg(&config);
    let mut hub = Proc::spawn("nowconnect-hub", cmd, dir.join("hub.log"))?;
    let addrs = wait_hub_started(&mut hub).await?;
    println!(
        "hub      tunnel ws://{}  listener {CONNECTOR}={}  admin http://{}",
        addrs.tunnel, addrs.listener, addrs.admin
    );

    let health = free_port()?;
    let mut cmd = Command::new(agent_bin);
    cmd.env(
        "NC_HUB_URL",
        format!("ws://{}/nowconnect/v1/tunnel", addrs.tunnel),
    )
    .env("NC_AGENT_ID", AGENT_ID)
    .env("NC_TOKEN_FILE", &token_file)
    .env("NC_CONNECTORS", format!("{CONNECTOR}={target}"))
    .env("NC_HEALTH_ADDR", health.to_string())
    .env("NC_LOG_FORMAT", "json");
    let mut agent = Proc::spawn("nowconnect-agent", cmd, dir.join("agent.log"))?;
    let started = Instant::now();
    wait_agent_ready(&mut agent, &mut hub, health).await?;
    println!(
        "agent    {AGENT_ID} serving {CONNECTOR}={target}, ready after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    println!("target   echo on {target} (in this process)");
    println!(
        "load     {:.1} s per phase, each run directly against the target and through the hub\n",
        opts.phase.as_secs_f64()
    );

    let mut failures = Vec::new();
    let mut direct = PhaseSet::default();
    let mut tunnel = PhaseSet::default();
    // Each scenario runs directly, then through the tunnel, so the two figures of a row are
    // taken close together.
    for step in 0..4 {
        for (label, addr, set) in [
            ("direct", target, &mut direct),
            ("tunnel", addrs.listener, &mut tunnel),
        ] {
            match step {
                0 => phase_throughput(label, addr, 1, opts.phase, set, &mut failures).await,
                1 => phase_throughput(label, addr, 8, opts.phase, set, &mut failures).await,
                2 => phase_latency(label, addr, opts.phase, set, &mut failures).await,
                _ => phase_churn(label, addr, opts.phase, set, &mut failures).await,
            }
        }
    }

    let summary = summary(&direct, &tunnel);
    println!("\n{}", format_table(&summary));

    // The hub's own byte counters.
    let hub_metrics = match net::http_get(addrs.admin, "/metrics").await {
        Ok((200, body)) => {
            // The whole scrape stays next to the logs, for when the demo fails.
            let _ = std::fs::write(dir.join("hub-metrics.txt"), &body);
            // Bytes per direction, plus where the hub ran and how many clients crossed shards.
            body.lines()
                .filter(|l| {
                    l.starts_with("nowconnect_bytes_total")
                        || l.starts_with("nowconnect_shard_driver{")
                        || (l.starts_with("nowconnect_cross_shard_messages_total{")
                            && !l.ends_with(" 0"))
                })
                .map(str::to_string)
                .collect()
        }
        Ok((status, _)) => {
            failures.push(format!("hub /metrics answered {status}"));
            Vec::new()
        }
        Err(e) => {
            failures.push(format!("hub /metrics: {e}"));
            Vec::new()
        }
    };
    println!("hub /metrics:");
    for l in &hub_metrics {
        println!("  {l}");
    }
    let counted: f64 = hub_metrics
        .iter()
        .filter(|l| l.starts_with("nowconnect_bytes_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    if counted <= 0.0 {
        failures.push("the hub's nowconnect_bytes_total counted no bytes".into());
    }

    // Stop both; a process that died on its own is a failure.
    for p in [&mut agent, &mut hub] {
        if let Err(e) = p.check_running() {
            failures.push(e);
        }
    }
    agent.sigterm();
    hub.sigterm();
    for p in [&mut agent, &mut hub] {
        match p.wait(STOP_TIMEOUT).await {
            Ok(status) => println!("stopped  {} ({status})", p.name),
            Err(e) => failures.push(e),
        }
    }

    Ok(DemoResult {
        phase_seconds: opts.phase.as_secs_f64(),
        target: target.to_string(),
        listener: addrs.listener.to_string(),
        direct,
        tunnel,
        summary,
        hub_metrics,
        failures,
    })
}

/// Throughput with `streams` connections, both directions, against `addr`.
async fn phase_throughput(
    label: &str,
    addr: SocketAddr,
    streams: usize,
    phase: Duration,
    set: &mut PhaseSet,
    failures: &mut Vec<String>,
) {
    let plural = if streams == 1 { "" } else { "s" };
    let name = format!("{label} throughput, {streams} stream{plural}, both directions");
    match throughput::run(throughput::Options {
        addr,
        streams,
        duration: phase,
        direction: Direction::Both,
    })
    .await
    {
        Ok(r) => {
            println!(
                "{name}: {} ({} bytes round trip)",
                stats::fmt_rate(r.bytes_per_sec),
                r.total_bytes
            );
            if r.total_bytes == 0 || r.per_stream.iter().any(|s| s.bytes == 0) {
                failures.push(format!("{name}: a stream moved no bytes"));
            }
            if streams == 1 {
                set.throughput_1 = Some(r);
            } else {
                set.throughput_8 = Some(r);
            }
        }
        Err(e) => {
            println!("{name}: FAILED: {e}");
            failures.push(format!("{name}: {e}"));
        }
    }
}

/// Fixed-rate latency against `addr`.
async fn phase_latency(
    label: &str,
    addr: SocketAddr,
    phase: Duration,
    set: &mut PhaseSet,
    failures: &mut Vec<String>,
) {
    let name =
        format!("{label} latency, {LATENCY_RATE:.0}/s over {LATENCY_CONNECTIONS} connections");
    match latency::run(latency::Options {
        addr,
        connections: LATENCY_CONNECTIONS,
        rate: LATENCY_RATE,
        duration: phase,
        size: LATENCY_SIZE,
    })
    .await
    {
        Ok(r) => {
            println!("{name}: {}", r.latency.line());
            if r.responses == 0 {
                failures.push(format!("{name}: no responses"));
            }
            for e in &r.errors {
                failures.push(format!("{name}: {e}"));
            }
            set.latency = Some(r);
        }
        Err(e) => {
            println!("{name}: FAILED: {e}");
            failures.push(format!("{name}: {e}"));
        }
    }
}

/// Connection churn against `addr`.
async fn phase_churn(
    label: &str,
    addr: SocketAddr,
    phase: Duration,
    set: &mut PhaseSet,
    failures: &mut Vec<String>,
) {
    let name = format!("{label} churn, {CHURN_CONCURRENCY} workers");
    match churn::run(churn::Options {
        addr,
        duration: phase,
        concurrency: CHURN_CONCURRENCY,
    })
    .await
    {
        Ok(r) => {
            println!(
                "{name}: {:.0} connections/s, open p50 {} p99 {}, {} failures",
                r.connections_per_sec,
                stats::fmt_us(r.open.p50_us),
                stats::fmt_us(r.open.p99_us),
                r.failures.total()
            );
            if r.completed == 0 {
                failures.push(format!("{name}: no connection completed"));
            }
            if r.failures.total() > 0 {
                failures.push(format!("{name}: failed connections {:?}", r.failures));
            }
            set.churn = Some(r);
        }
        Err(e) => {
            println!("{name}: FAILED: {e}");
            failures.push(format!("{name}: {e}"));
        }
    }
}

/// The summary rows from both sets.
fn summary(direct: &PhaseSet, tunnel: &PhaseSet) -> Vec<Row> {
    type Pick = fn(&PhaseSet) -> Option<f64>;
    let rows: [(&str, Pick); 9] = [
        ("throughput, 1 stream (MB/s)", |s| {
            s.throughput_1.as_ref().map(|r| r.bytes_per_sec / 1e6)
        }),
        ("throughput, 8 streams (MB/s)", |s| {
            s.throughput_8.as_ref().map(|r| r.bytes_per_sec / 1e6)
        }),
        ("latency p50 (µs)", |s| {
            s.latency.as_ref().map(|r| r.latency.p50_us)
        }),
        ("latency p99 (µs)", |s| {
            s.latency.as_ref().map(|r| r.latency.p99_us)
        }),
        ("latency p99.9 (µs)", |s| {
            s.latency.as_ref().map(|r| r.latency.p999_us)
        }),
        ("latency max (µs)", |s| {
            s.latency.as_ref().map(|r| r.latency.max_us)
        }),
        ("churn (connections/s)", |s| {
            s.churn.as_ref().map(|r| r.connections_per_sec)
        }),
        ("churn open p50 (µs)", |s| {
            s.churn.as_ref().map(|r| r.open.p50_us)
        }),
        ("churn open p99 (µs)", |s| {
            s.churn.as_ref().map(|r| r.open.p99_us)
        }),
    ];
    rows.iter()
        .map(|(figure, pick)| Row {
            figure: (*figure).to_string(),
            direct: pick(direct),
            tunnel: pick(tunnel),
        })
        .collect()
}

/// The summary as an aligned text table.
fn format_table(rows: &[Row]) -> String {
    let cell = |v: Option<f64>| match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "—".to_string(),
    };
    let mut out = format!(
        "{:<30} {:>12} {:>12} {:>14}\n",
        "figure", "direct", "tunnel", "tunnel/direct"
    );
    out += &format!("{}\n", "-".repeat(30 + 1 + 12 + 1 + 12 + 1 + 14));
    for r in rows {
        let ratio = r
            .ratio()
            .map(|x| format!("{x:.2}x"))
            .unwrap_or_else(|| "—".to_string());
        out += &format!(
            "{:<30} {:>12} {:>12} {:>14}\n",
            r.figure,
            cell(r.direct),
            cell(r.tunnel),
            ratio
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_hub_started_line() {
        let line = r#"{"timestamp":"t","level":"INFO","message":"hub started","shards":2,"tunnel":"127.0.0.1:4001","listeners":"[127.0.0.1:4002]","admin":"127.0.0.1:4003"}"#;
        let a = parse_hub_started(line).unwrap().unwrap();
        assert_eq!(a.tunnel, "127.0.0.1:4001".parse().unwrap());
        assert_eq!(a.listener, "127.0.0.1:4002".parse().unwrap());
        assert_eq!(a.admin, "127.0.0.1:4003".parse().unwrap());
        assert!(parse_hub_started(r#"{"message":"draining"}"#).is_none());
        assert!(parse_hub_started("not json").is_none());
        let bad = r#"{"message":"hub started","tunnel":"x","listeners":"[]","admin":"y"}"#;
        assert!(parse_hub_started(bad).unwrap().is_err());
    }

    #[test]
    fn the_hub_configuration_names_the_jwks_and_ephemeral_ports() {
        let y = hub_yaml(Path::new("/tmp/a b/jwks.json"));
        assert!(
            y.contains(r#"jwks_url: "file:///tmp/a b/jwks.json""#),
            "{y}"
        );
        assert!(y.contains("connector: echo"));
        assert_eq!(y.matches("127.0.0.1:0").count(), 3);
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

    #[test]
    fn the_table_shows_ratios() {
        let rows = vec![
            Row {
                figure: "a".into(),
                direct: Some(200.0),
                tunnel: Some(50.0),
            },
            Row {
                figure: "b".into(),
                direct: None,
                tunnel: Some(1.0),
            },
        ];
        let t = format_table(&rows);
        assert!(t.contains("0.25x"), "{t}");
        assert!(t.lines().nth(3).unwrap().contains('—'));
    }
}
