//! Every `nowconnect-loadgen` scenario, briefly, against its own targets and a real hub and
//! agent started by `nowconnect-loadgen stack`: the tools work end to end and check their
//! bytes. No figure is asserted; these machines are shared and noisy.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nowconnect_tests::*;
use serde_json::Value;

/// A child process killed on drop unless it was stopped.
struct Running {
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// SIGTERM, then the exit status within 20 s.
    fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the process did not stop within 20 s of SIGTERM");
    }
}

fn loadgen() -> PathBuf {
    binary("nowconnect-loadgen")
}

fn bin_dir() -> PathBuf {
    loadgen().parent().unwrap().to_path_buf()
}

/// Starts a loadgen process and returns it with the first line it prints.
fn spawn_with_first_line(args: &[&str]) -> (Running, String) {
    let mut child = Command::new(loadgen())
        .args(args)
        .env_remove("NOWCONNECT_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nowconnect-loadgen");
    let stdout = child.stdout.take().unwrap();
    let running = Running { child };
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the first line");
    assert!(!line.is_empty(), "{args:?} printed nothing");
    (running, line)
}

/// A target server; its address from "<kind> target listening on <addr>".
fn target(kind: &str, extra: &[&str]) -> (Running, SocketAddr) {
    let mut args = vec!["target", kind, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let (running, line) = spawn_with_first_line(&args);
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (running, addr)
}

/// Runs a loadgen command to completion with `--json`; asserts it succeeded and returns the
/// JSON it wrote.
fn run_ok(dir: &Path, name: &str, args: &[&str]) -> Value {
    let json = dir.join(format!("{name}.json"));
    let mut all: Vec<&str> = args.to_vec();
    let json_arg = json.display().to_string();
    all.extend(["--json", &json_arg]);
    let (status, stdout, stderr) =
        run_program_within(&loadgen(), &all, None, Duration::from_secs(180));
    let stdout = String::from_utf8_lossy(&stdout);
    assert!(
        status.success(),
        "nowconnect-loadgen {all:?} failed ({status}):\n{stdout}\n{stderr}"
    );
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

#[test]
fn every_scenario_runs_through_a_real_tunnel() {
    let dir = TempDir::new("loadgen");
    let (_echo, echo) = target("echo", &[]);
    let (_sink, sink) = target("sink", &[]);
    let (_source, source) = target("source", &[]);
    let (_rr, rr) = target("rr", &["--request-size", "32", "--reply-size", "512"]);
    let targets = [
        ("echo", echo),
        ("sink", sink),
        ("source", source),
        ("rr", rr),
    ];
    let specs: Vec<String> = targets.iter().map(|(n, a)| format!("{n}={a}")).collect();
    let driver = test_driver();
    let bin = bin_dir().display().to_string();
    let mut args = vec![
        "stack",
        "--bin-dir",
        &bin,
        "--driver",
        &driver,
        "--shards",
        "2",
        "--idle-timeout-ms",
        "1500",
        "--sweep-interval-ms",
        "250",
    ];
    for s in &specs {
        args.extend(["--target", s]);
    }
    let (stack, line) = spawn_with_first_line(&args);
    let info: Value = serde_json::from_str(&line).expect("stack prints one JSON line");
    let at = |name: &str| info["listeners"][name].as_str().unwrap().to_owned();
    let (hub_pid, agent_pid) = (info["hub_pid"].to_string(), info["agent_pid"].to_string());

    let up = run_ok(
        dir.path(),
        "tunnel-up",
        &[
            "throughput",
            "--addr",
            &at("sink"),
            "--streams",
            "2",
            "--seconds",
            "0.5",
            "--direction",
            "up",
        ],
    );
    assert!(up["total_bytes"].as_u64().unwrap() > 0);
    run_ok(
        dir.path(),
        "tunnel-down",
        &[
            "throughput",
            "--addr",
            &at("source"),
            "--streams",
            "2",
            "--seconds",
            "0.5",
            "--direction",
            "down",
        ],
    );
    for streams in ["1", "4"] {
        run_ok(
            dir.path(),
            &format!("tunnel-{streams}"),
            &[
                "throughput",
                "--addr",
                &at("echo"),
                "--streams",
                streams,
                "--seconds",
                "0.5",
            ],
        );
    }
    let lat = run_ok(
        dir.path(),
        "latency-echo",
        &[
            "latency",
            "--addr",
            &at("echo"),
            "--connections",
            "4",
            "--rate",
            "200",
            "--seconds",
            "0.5",
        ],
    );
    assert!(lat["responses"].as_u64().unwrap() > 0);
    run_ok(
        dir.path(),
        "latency-rr",
        &[
            "latency",
            "--addr",
            &at("rr"),
            "--connections",
            "4",
            "--rate",
            "200",
            "--seconds",
            "0.5",
            "--size",
            "32",
            "--reply-size",
            "512",
        ],
    );
    let churn = run_ok(
        dir.path(),
        "churn",
        &[
            "churn",
            "--addr",
            &at("echo"),
            "--seconds",
            "0.5",
            "--concurrency",
            "2",
        ],
    );
    assert!(churn["completed"].as_u64().unwrap() > 0);
    let verify = run_ok(
        dir.path(),
        "verify",
        &[
            "verify",
            "--addr",
            &at("echo"),
            "--streams",
            "4",
            "--seconds",
            "1",
            "--seed",
            "7",
        ],
    );
    assert!(verify["failures"].as_array().unwrap().is_empty());
    assert!(verify["bytes_verified"].as_u64().unwrap() > 0);
    let idle = run_ok(
        dir.path(),
        "idle",
        &[
            "idle",
            "--addr",
            &at("echo"),
            "--connections",
            "50",
            "--hub-pid",
            &hub_pid,
            "--agent-pid",
            &agent_pid,
            "--idle-timeout-ms",
            "1500",
            "--sweep-interval-ms",
            "250",
        ],
    );
    assert_eq!(idle["memory"].as_array().unwrap().len(), 2);
    assert_eq!(idle["sweep"]["never"], 0);
    let slow = run_ok(
        dir.path(),
        "slow-reader",
        &[
            "slow-reader",
            "--addr",
            &at("echo"),
            "--streams",
            "2",
            "--seconds",
            "0.5",
            "--hub-pid",
            &hub_pid,
            "--agent-pid",
            &agent_pid,
        ],
    );
    assert!(slow["stalled_stream_bytes"].as_u64().unwrap() > 0);

    // Charts from what the runs wrote.
    let charts = dir.join("charts");
    let inputs: Vec<String> = ["latency-echo", "latency-rr", "tunnel-1", "tunnel-4"]
        .iter()
        .map(|n| dir.join(&format!("{n}.json")).display().to_string())
        .collect();
    let charts_arg = charts.display().to_string();
    let mut args = vec!["report", "--out", &charts_arg];
    args.extend(inputs.iter().map(String::as_str));
    let (status, stdout, stderr) =
        run_program_within(&loadgen(), &args, None, Duration::from_secs(60));
    assert!(
        status.success(),
        "{}\n{stderr}",
        String::from_utf8_lossy(&stdout)
    );
    for chart in ["latency.svg", "throughput.svg"] {
        let svg = std::fs::read_to_string(charts.join(chart)).unwrap();
        assert!(svg.starts_with("<svg"), "{chart}");
    }

    assert!(stack.stop().success(), "the stack stops cleanly on SIGTERM");
}

#[test]
fn demo_and_tune_run() {
    let dir = TempDir::new("loadgen-demo");
    let bin = bin_dir().display().to_string();
    let demo = run_ok(
        dir.path(),
        "demo",
        &["demo", "--bin-dir", &bin, "--seconds", "0.3"],
    );
    assert!(demo["failures"].as_array().unwrap().is_empty());
    let driver = match test_driver().as_str() {
        "epoll" => "epoll",
        _ => "io_uring",
    };
    let tune = run_ok(
        dir.path(),
        "tune",
        &[
            "tune",
            "--bin-dir",
            &bin,
            "--seconds",
            "0.3",
            "--max-shards",
            "2",
            "--drivers",
            driver,
        ],
    );
    assert_eq!(tune["trials"].as_array().unwrap().len(), 2);
    assert!(tune["recommended"].is_u64(), "{tune}");
}
