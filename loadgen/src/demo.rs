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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::churn::{self, ChurnResult};
use crate::latency::{self, LatencyResult};
use crate::stack::{AGENT_ID, Driver, Stack, StackOptions};
use crate::target::{self, TargetKind};
use crate::throughput::{self, Direction, ThroughputResult};
use crate::{net, stats};

/// The connector the hub listens for and the agent serves.
const CONNECTOR: &str = "echo";
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
    /// The hub's `nowconnect_bytes_total`, `nowconnect_shard_driver`, and non-zero
    /// `nowconnect_spliced_bytes_total` and `nowconnect_cross_shard_messages_total` samples
    /// after the load.
    pub(crate) hub_metrics: Vec<String>,
    /// Checks that failed; empty when the demo passed.
    pub(crate) failures: Vec<String>,
}

/// Runs the demo; the result lists any failed checks.
pub(crate) async fn run(opts: Options) -> Result<DemoResult, String> {
    let target = target::spawn(TargetKind::Echo, ([127, 0, 0, 1], 0).into())
        .await
        .map_err(|e| format!("cannot start the echo target: {e}"))?;
    let started = std::time::Instant::now();
    let mut stack = Stack::start(&StackOptions {
        bin_dir: opts.bin_dir.clone(),
        driver: Driver::Auto,
        shards: None,
        lanes: None,
        targets: vec![(CONNECTOR.to_owned(), target)],
        limits: Vec::new(),
    })
    .await?;
    let outcome = run_with(&opts, &mut stack, target, started).await;
    let failed = match &outcome {
        Ok(r) => !r.failures.is_empty(),
        Err(_) => true,
    };
    if failed {
        stack.keep();
        eprintln!(
            "demo: logs and configuration kept in {}",
            stack.dir.path.display()
        );
    }
    outcome
}

async fn run_with(
    opts: &Options,
    stack: &mut Stack,
    target: SocketAddr,
    started: std::time::Instant,
) -> Result<DemoResult, String> {
    let listener = stack
        .listener(CONNECTOR)
        .ok_or("the hub has no listener for the echo connector")?;
    println!(
        "hub      tunnel ws://{}  listener {CONNECTOR}={listener}  admin http://{}",
        stack.tunnel, stack.admin
    );
    println!(
        "agent    {AGENT_ID} serving {CONNECTOR}={target}, ready {:.2} s after start",
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
            ("tunnel", listener, &mut tunnel),
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
    let hub_metrics = match net::http_get(stack.admin, "/metrics").await {
        Ok((200, body)) => {
            // The whole scrape stays next to the logs, for when the demo fails.
            let _ = std::fs::write(stack.dir.path.join("hub-metrics.txt"), &body);
            // Bytes per direction, plus where the hub ran, how many client bytes it spliced
            // to the agent and how many clients crossed shards.
            body.lines()
                .filter(|l| {
                    l.starts_with("nowconnect_bytes_total")
                        || l.starts_with("nowconnect_shard_driver{")
                        || ((l.starts_with("nowconnect_spliced_bytes_total{")
                            || l.starts_with("nowconnect_cross_shard_messages_total{"))
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

    // Stop both; a process that died on its own, or had to be killed, is a failure.
    let stopped = stack.stop().await;
    if stopped.is_empty() {
        println!("stopped  nowconnect-agent and nowconnect-hub");
    }
    failures.extend(stopped);

    Ok(DemoResult {
        phase_seconds: opts.phase.as_secs_f64(),
        target: target.to_string(),
        listener: listener.to_string(),
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
        reply_size: None,
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
