//! Load generator and scenario checks for NowConnect deployments.
//!
//! Subcommands:
//!
//! - `target echo|sink|source|rr` runs a target server.
//! - `throughput`, `latency`, `churn`, `idle`, `slow-reader` and `verify` drive clients
//!   against a target, directly or through a hub listener (or any other tunnel).
//! - `stack` starts a hub and an agent in front of given targets and keeps them running;
//!   `demo` runs a short mixed load through one and compares it with the target reached
//!   directly; `tune` compares shard counts and drivers.
//! - `report` draws SVG charts from the JSON the others write.
//!
//! Modules:
//!
//! - [`pattern`]: the deterministic byte pattern the bulk scenarios write and check.
//! - [`stats`]: histograms, percentiles, pacing with coordinated-omission correction.
//! - [`progress`]: the live progress line.
//! - [`target`]: the echo, sink, source and rr servers.
//! - [`throughput`], [`latency`], [`churn`], [`idle`], [`slow`], [`verify`]: the scenarios.
//! - [`stack`], [`creds`]: a hub and an agent with development credentials.
//! - [`demo`], [`tune`]: whole-deployment runs.
//! - [`report`]: SVG charts from result files.
//! - [`net`]: socket helpers.
#![forbid(unsafe_code)]

mod churn;
mod creds;
mod demo;
mod idle;
mod latency;
mod net;
mod pattern;
mod progress;
mod report;
mod slow;
mod stack;
mod stats;
mod target;
mod throughput;
mod tune;
mod verify;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::progress::{Progress, Unit};
use crate::target::TargetKind;
use crate::throughput::Direction;

/// Load generator and scenario checks for NowConnect.
///
/// Scenarios run against a target server, either directly or through a hub listener whose
/// connector an agent serves from that target. Every byte sent is checked when it comes back.
/// Point the same command at the target itself, at a NowConnect listener or at another tunnel
/// to compare them; add --json FILE to keep the results, and draw them with `report`.
///
/// A first run, in three shells:
///
///   nowconnect-loadgen target echo --listen 127.0.0.1:7000
///   nowconnect-loadgen stack --target echo=127.0.0.1:7000     (prints LISTENER, the hub's)
///   nowconnect-loadgen throughput --addr LISTENER --streams 8 --seconds 5
///
/// and the same throughput with --addr 127.0.0.1:7000 for the direct baseline. `demo` does all
/// of that in one command; `tune` picks a shard count and driver for this host.
#[derive(Debug, Parser)]
#[command(
    name = "nowconnect-loadgen",
    version,
    about,
    long_about,
    verbatim_doc_comment
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a target server until interrupted.
    ///
    /// echo: writes every byte back, and half-closes when the client does.
    /// sink: reads and counts; when the client half-closes, replies with the count as an
    /// 8-byte big-endian integer and closes.
    /// source: writes the test pattern without end.
    /// rr: reads requests of --request-size bytes and answers each with --reply-size bytes.
    Target {
        /// Which server.
        #[arg(value_enum)]
        kind: TargetKind,
        /// Address to listen on; port 0 picks a free port, printed at start.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// rr: bytes per request.
        #[arg(long, value_name = "B", default_value_t = 64)]
        request_size: usize,
        /// rr: bytes per reply (at most 65536).
        #[arg(long, value_name = "B", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
        reply_size: u32,
    },
    /// Bulk throughput over N concurrent connections.
    ///
    /// up runs against a sink target and counts the bytes the sink reports; down runs
    /// against a source target and counts bytes read; both runs against an echo target and
    /// counts bytes that made the round trip. Prints the total and per-stream bytes/s.
    Throughput {
        /// The target, or the hub listener in front of it.
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
        /// Concurrent connections.
        #[arg(long, value_name = "N", default_value_t = 1)]
        streams: usize,
        /// How long to send, in seconds (fractions allowed).
        #[arg(long, value_name = "S", default_value = "10", value_parser = stats::parse_seconds)]
        seconds: Duration,
        /// Which way the bytes go.
        #[arg(long, value_enum, default_value_t = Direction::Both)]
        direction: Direction,
        /// Also write the results to FILE as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Request/response latency at a fixed rate against an echo (or rr) target.
    ///
    /// Sends R requests per second in total over M kept-alive connections, one request
    /// outstanding per connection. Latency is measured from each request's intended send time,
    /// so a stall is charged to every request queued behind it (coordinated-omission
    /// correction); the uncorrected service time is shown too.
    Latency {
        /// An echo target, or the hub listener in front of one.
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
        /// Kept-alive connections.
        #[arg(long, value_name = "M", default_value_t = 8)]
        connections: usize,
        /// Aggregate requests per second.
        #[arg(long, value_name = "R", default_value_t = 1000.0)]
        rate: f64,
        /// How long to send, in seconds (fractions allowed).
        #[arg(long, value_name = "S", default_value = "10", value_parser = stats::parse_seconds)]
        seconds: Duration,
        /// Bytes per request (and per response).
        #[arg(long, value_name = "B", default_value_t = 64)]
        size: usize,
        /// Against an rr target: bytes per reply (its --reply-size). Leave out for echo.
        #[arg(long, value_name = "B")]
        reply_size: Option<usize>,
        /// Also write the results to FILE as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Connection churn against an echo target: connect, exchange 32 bytes, close, repeat.
    ///
    /// Reports completed connections per second, open latency (connect start to the echo
    /// back, which through a tunnel includes opening the stream), connect latency, and
    /// failures by kind: refused, reset, timeout, short read, corrupt.
    Churn {
        /// An echo target, or the hub listener in front of one.
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
        /// How long to run, in seconds (fractions allowed).
        #[arg(long, value_name = "S", default_value = "10", value_parser = stats::parse_seconds)]
        seconds: Duration,
        /// Concurrent workers, each with one connection at a time.
        #[arg(long, value_name = "C", default_value_t = 8)]
        concurrency: usize,
        /// Also write the results to FILE as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Many silent connections: memory per idle stream, and the idle sweep.
    ///
    /// Opens N connections to an echo target through a hub listener, one byte each way so
    /// every stream is open end to end, and holds them. Reports the resident memory of the
    /// hub and agent (--hub-pid, --agent-pid; VmRSS from /proc) before and after, per
    /// connection. With --idle-timeout-ms and --sweep-interval-ms (the hub's settings), then
    /// waits and checks that the hub closed every connection within idle timeout + sweep
    /// interval of its last byte; exit status 1 if not. Many connections need a high
    /// `ulimit -n` in this shell and for the hub and agent.
    Idle {
        /// An echo target, or the hub listener in front of one.
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
        /// Connections to open and hold.
        #[arg(long, value_name = "N", default_value_t = 1000)]
        connections: usize,
        /// The hub's process id, for its memory.
        #[arg(long, value_name = "PID")]
        hub_pid: Option<u32>,
        /// The agent's process id, for its memory.
        #[arg(long, value_name = "PID")]
        agent_pid: Option<u32>,
        /// The hub's limits.idle_timeout_ms; with --sweep-interval-ms, checks the sweep.
        #[arg(long, value_name = "MS", requires = "sweep_interval_ms")]
        idle_timeout_ms: Option<u64>,
        /// The hub's limits.sweep_interval_ms.
        #[arg(long, value_name = "MS", requires = "idle_timeout_ms")]
        sweep_interval_ms: Option<u64>,
        /// Also write the results to FILE as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// One stalled stream beside busy ones: memory stays bounded, the others keep their pace.
    ///
    /// Measures M echo streams alone, then opens one stream that writes without end and never
    /// reads, waits until it is stuck, and measures the M streams again beside it; then closes
    /// the stalled stream and measures them alone once more. Reports their throughput beside
    /// the stall as a fraction of the mean of both runs alone, and the growth of the hub's and
    /// agent's peak resident memory (--hub-pid, --agent-pid), which must stay within the
    /// budget (exit status 1 otherwise).
    SlowReader {
        /// An echo target, or the hub listener in front of one.
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
        /// Streams that keep reading.
        #[arg(long, value_name = "M", default_value_t = 4)]
        streams: usize,
        /// Length of each phase, in seconds (fractions allowed).
        #[arg(long, value_name = "S", default_value = "5", value_parser = stats::parse_seconds)]
        seconds: Duration,
        /// The hub's process id, for its memory.
        #[arg(long, value_name = "PID")]
        hub_pid: Option<u32>,
        /// The agent's process id, for its memory.
        #[arg(long, value_name = "PID")]
        agent_pid: Option<u32>,
        /// The hub's limits.stream_window_bytes, for the default budget.
        #[arg(long, value_name = "B", default_value_t = 262_144)]
        window_bytes: u64,
        /// Allowed growth of each process's peak memory [default: two windows + 8 MiB].
        #[arg(long, value_name = "B")]
        budget_bytes: Option<u64>,
        /// Also write the results to FILE as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Random traffic through an echo target with every byte checked both ways.
    ///
    /// Each worker opens connections one after another: a random size (none to 4 MiB), sent
    /// in writes of random sizes with random pauses, then a half-close, while the echo is
    /// read back with random pauses of its own. Any lost, duplicated, reordered or foreign
    /// byte, or a half-close that comes early or late, fails the run (exit status 1) and names
    /// the connection; --seed replays the same choices.
    Verify {
        /// An echo target, or the hub listener in front of one.
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
        /// Concurrent workers.
        #[arg(long, value_name = "N", default_value_t = 8)]
        streams: usize,
        /// How long to keep opening connections, in seconds (fractions allowed).
        #[arg(long, value_name = "S", default_value = "10", value_parser = stats::parse_seconds)]
        seconds: Duration,
        /// Seed of the random choices [default: from the clock, printed].
        #[arg(long, value_name = "N")]
        seed: Option<u64>,
        /// Also write the results to FILE as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Start a hub, an agent and an echo target on loopback, load them, print the results.
    ///
    /// Generates development credentials in a temporary directory, starts nowconnect-hub and
    /// nowconnect-agent, waits for the agent to be ready, then runs throughput (1 and 8
    /// streams), latency and churn both directly against the target and through the tunnel,
    /// and prints a comparison and the hub's byte counters. Exits non-zero if any check fails;
    /// the temporary directory, with both logs, is then kept.
    Demo {
        /// Directory holding nowconnect-hub and nowconnect-agent [default: this executable's
        /// directory].
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<PathBuf>,
        /// Length of each load phase, in seconds (fractions allowed).
        #[arg(long, value_name = "S", default_value = "3", value_parser = stats::parse_seconds)]
        seconds: Duration,
        /// Also write the results to FILE as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Draw SVG charts from the JSON files of other runs.
    ///
    /// Each input is FILE or LABEL=FILE (the label defaults to the file name). latency
    /// results, and the latency phases of demo results, become latency.svg (percentiles per
    /// input); throughput results become throughput.svg (bytes/s against the stream count,
    /// files named like tunnel-1.json, tunnel-8.json joined into one line); tune results
    /// become shards.svg (throughput against shards, per driver).
    Report {
        /// Where to write the charts.
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
        /// JSON files written with --json.
        #[arg(value_name = "[LABEL=]FILE", required = true)]
        inputs: Vec<String>,
    },
    /// Find the shard count and driver that suit this host.
    ///
    /// For each driver and each shard count from 1 to --max-shards, starts a hub and an agent
    /// on loopback in front of an echo target in this process and runs the same short load:
    /// throughput over 8 streams both ways, latency at 2000/s over 16 connections, churn with
    /// 4 workers. Prints the table and a recommended hub.shards and hub.driver, with the
    /// reason. Needs nowconnect-hub and nowconnect-agent (release builds for real figures).
    Tune {
        /// Directory holding nowconnect-hub and nowconnect-agent [default: this executable's
        /// directory].
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<PathBuf>,
        /// Length of each load phase, in seconds (fractions allowed).
        #[arg(long, value_name = "S", default_value = "3", value_parser = stats::parse_seconds)]
        seconds: Duration,
        /// Try 1 to N shards [default: the cores this process may use].
        #[arg(long, value_name = "N")]
        max_shards: Option<u32>,
        /// Drivers to try, comma-separated.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "io_uring,epoll"
        )]
        drivers: Vec<stack::Driver>,
        /// Also write the results to FILE as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Start a hub and an agent on loopback in front of your targets, and keep them running.
    ///
    /// Generates development credentials, starts nowconnect-hub with one listener per
    /// --target and nowconnect-agent serving them, waits until the agent is ready, then
    /// prints one JSON line: the hub's and agent's process ids, the tunnel and admin
    /// addresses, each connector's hub listener and the directory with the logs. Runs until
    /// SIGINT or SIGTERM, then stops both. Point any scenario at a listener to measure the
    /// tunnel, and at the target itself for the direct baseline.
    Stack {
        /// Directory holding nowconnect-hub and nowconnect-agent [default: this executable's
        /// directory].
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<PathBuf>,
        /// A connector and the target the agent dials for it; repeat for more.
        #[arg(long = "target", value_name = "NAME=HOST:PORT", required = true)]
        targets: Vec<String>,
        /// The hub's I/O driver.
        #[arg(long, value_enum, default_value_t = stack::Driver::Auto)]
        driver: stack::Driver,
        /// Hub shards [default: one per core].
        #[arg(long, value_name = "N")]
        shards: Option<u32>,
        /// Agent sessions [default: one per hub shard].
        #[arg(long, value_name = "N")]
        lanes: Option<u32>,
        /// The hub's limits.idle_timeout_ms.
        #[arg(long, value_name = "MS")]
        idle_timeout_ms: Option<u64>,
        /// The hub's limits.sweep_interval_ms.
        #[arg(long, value_name = "MS")]
        sweep_interval_ms: Option<u64>,
        /// The hub's limits.stream_window_bytes: each stream's credit window per direction.
        #[arg(long, value_name = "BYTES")]
        stream_window_bytes: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nowconnect-loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nowconnect-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Cmd) -> Result<ExitCode, String> {
    match cmd {
        Cmd::Target {
            kind,
            listen,
            request_size,
            reply_size,
        } => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            println!(
                "{} target listening on {local}",
                format!("{kind:?}").to_lowercase()
            );
            let sizes = target::RrSizes {
                request: request_size.max(1),
                reply: reply_size as usize,
            };
            target::serve(listener, kind, sizes).await;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Throughput {
            addr,
            streams,
            seconds,
            direction,
            json,
        } => {
            let addr = net::resolve(&addr).await?;
            let r = with_progress(
                format!("throughput {streams} streams"),
                Some(seconds),
                Unit::Bytes,
                throughput::run(throughput::Options {
                    addr,
                    streams,
                    duration: seconds,
                    direction,
                }),
            )
            .await?;
            finish(&r.report(), json.as_deref(), &r, true)
        }
        Cmd::Latency {
            addr,
            connections,
            rate,
            seconds,
            size,
            reply_size,
            json,
        } => {
            let addr = net::resolve(&addr).await?;
            let r = with_progress(
                format!("latency {rate}/s"),
                Some(seconds),
                Unit::Events("responses"),
                latency::run(latency::Options {
                    addr,
                    connections,
                    rate,
                    duration: seconds,
                    size,
                    reply_size,
                }),
            )
            .await?;
            finish(&r.report(), json.as_deref(), &r, r.errors.is_empty())
        }
        Cmd::Churn {
            addr,
            seconds,
            concurrency,
            json,
        } => {
            let addr = net::resolve(&addr).await?;
            let r = with_progress(
                "churn".to_owned(),
                Some(seconds),
                Unit::Events("connections"),
                churn::run(churn::Options {
                    addr,
                    duration: seconds,
                    concurrency,
                }),
            )
            .await?;
            finish(&r.report(), json.as_deref(), &r, r.completed > 0)
        }
        Cmd::Idle {
            addr,
            connections,
            hub_pid,
            agent_pid,
            idle_timeout_ms,
            sweep_interval_ms,
            json,
        } => {
            let addr = net::resolve(&addr).await?;
            let r = with_progress(
                "idle".to_owned(),
                None,
                Unit::Events("connections open"),
                idle::run(idle::Options {
                    addr,
                    connections,
                    hub_pid,
                    agent_pid,
                    sweep: idle_timeout_ms
                        .zip(sweep_interval_ms)
                        .map(|(i, s)| (Duration::from_millis(i), Duration::from_millis(s))),
                }),
            )
            .await?;
            finish(&r.report(), json.as_deref(), &r, r.failures.is_empty())
        }
        Cmd::SlowReader {
            addr,
            streams,
            seconds,
            hub_pid,
            agent_pid,
            window_bytes,
            budget_bytes,
            json,
        } => {
            let addr = net::resolve(&addr).await?;
            let r = with_progress(
                "slow-reader".to_owned(),
                Some(seconds * 2),
                Unit::Bytes,
                slow::run(slow::Options {
                    addr,
                    streams,
                    duration: seconds,
                    hub_pid,
                    agent_pid,
                    window: window_bytes,
                    budget: budget_bytes,
                }),
            )
            .await?;
            finish(&r.report(), json.as_deref(), &r, r.failures.is_empty())
        }
        Cmd::Verify {
            addr,
            streams,
            seconds,
            seed,
            json,
        } => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
            let addr = net::resolve(&addr).await?;
            let r = with_progress(
                format!("verify seed {seed}"),
                Some(seconds),
                Unit::Bytes,
                verify::run(verify::Options {
                    addr,
                    streams,
                    duration: seconds,
                    seed,
                }),
            )
            .await?;
            finish(&r.report(), json.as_deref(), &r, r.failures.is_empty())
        }
        Cmd::Report { out, inputs } => {
            for path in report::run(&inputs, &out)? {
                println!("wrote {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Tune {
            bin_dir,
            seconds,
            max_shards,
            drivers,
            json,
        } => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
            let r = tune::run(tune::Options {
                bin_dir,
                phase: seconds,
                max_shards: max_shards.unwrap_or(cores),
                drivers,
            })
            .await?;
            finish(&r.report(), json.as_deref(), &r, r.recommended.is_some())
        }
        Cmd::Stack {
            bin_dir,
            targets,
            driver,
            shards,
            lanes,
            idle_timeout_ms,
            sweep_interval_ms,
            stream_window_bytes,
        } => {
            let mut parsed = Vec::new();
            for spec in &targets {
                let (name, addr) = spec.split_once('=').ok_or_else(|| {
                    format!("--target {spec}: expected NAME=HOST:PORT, such as echo=127.0.0.1:7000")
                })?;
                parsed.push((name.to_owned(), net::resolve(addr).await?));
            }
            let limits = [
                ("idle_timeout_ms", idle_timeout_ms),
                ("sweep_interval_ms", sweep_interval_ms),
                ("stream_window_bytes", stream_window_bytes),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), v?)))
            .collect();
            let mut stack = stack::Stack::start(&stack::StackOptions {
                bin_dir,
                driver,
                shards,
                lanes,
                targets: parsed,
                limits,
            })
            .await?;
            let line = serde_json::to_string(&stack.info()).map_err(|e| e.to_string())?;
            println!("{line}");
            wait_for_stop_signal().await?;
            let failures = stack.stop().await;
            for f in &failures {
                eprintln!("nowconnect-loadgen: {f}");
            }
            Ok(if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                stack.keep();
                ExitCode::FAILURE
            })
        }
        Cmd::Demo {
            bin_dir,
            seconds,
            json,
        } => {
            let r = demo::run(demo::Options {
                bin_dir,
                phase: seconds,
            })
            .await?;
            write_json(json.as_deref(), &r)?;
            if r.failures.is_empty() {
                println!("\ndemo passed");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("\ndemo FAILED:");
                for f in &r.failures {
                    println!("  - {f}");
                }
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// Runs `run` with a live progress line (on a terminal only).
async fn with_progress<T>(
    label: String,
    total: Option<Duration>,
    unit: Unit,
    run: impl std::future::Future<Output = T>,
) -> T {
    let progress = Progress::start(label, total, unit);
    let out = run.await;
    progress.finish().await;
    out
}

/// Waits for SIGINT or SIGTERM.
async fn wait_for_stop_signal() -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Prints a scenario's report, writes its JSON when asked, and turns `passed` into the exit
/// status.
fn finish(
    report: &str,
    json: Option<&Path>,
    value: &impl Serialize,
    passed: bool,
) -> Result<ExitCode, String> {
    print!("{report}");
    write_json(json, value)?;
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Writes `value` as pretty JSON to `path`, when given.
fn write_json(path: Option<&Path>, value: &impl Serialize) -> Result<(), String> {
    let Some(path) = path else { return Ok(()) };
    let text = serde_json::to_string_pretty(value).map_err(|e| format!("encoding JSON: {e}"))?;
    std::fs::write(path, text + "\n").map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_a_throughput_command() {
        let cli = Cli::try_parse_from([
            "nowconnect-loadgen",
            "throughput",
            "--addr",
            "127.0.0.1:9",
            "--streams",
            "4",
            "--seconds",
            "2.5",
            "--direction",
            "up",
        ])
        .unwrap();
        match cli.command {
            Cmd::Throughput {
                streams,
                seconds,
                direction,
                ..
            } => {
                assert_eq!(streams, 4);
                assert_eq!(seconds, Duration::from_millis(2500));
                assert_eq!(direction, Direction::Up);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from([
                "nowconnect-loadgen",
                "churn",
                "--addr",
                "x",
                "--seconds",
                "0"
            ])
            .is_err()
        );
    }

    #[test]
    fn json_results_are_written() {
        let path = std::env::temp_dir().join(format!("loadgen-json-{}.json", std::process::id()));
        write_json(Some(&path), &serde_json::json!({"a": 1})).unwrap();
        let back: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back["a"], 1);
        std::fs::remove_file(&path).unwrap();
    }
}
