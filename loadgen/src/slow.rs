//! `slow-reader`: one stream whose reader stops while others run.
//!
//! Phase one measures M echo streams alone. Phase two opens one more stream that writes
//! without end and never reads, waits until it is stuck (its writes no longer complete), and
//! measures the same M streams again beside it. Phase three closes the stalled stream and
//! measures them alone once more. The credit windows should keep the stalled stream from
//! holding more than a window each way in the hub and the agent, and from slowing the others:
//! the report gives the others' throughput in phase two as a fraction of the mean of phases
//! one and three (so that a machine whose load drifts during the run does not pass for an
//! effect of the stall), and the growth of the hub's and agent's peak resident memory from
//! phase one to phase two, checked against a budget (by default two windows plus 8 MiB for
//! buffer pools).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, sleep, timeout};

use crate::idle::{named_processes, rss_bytes};
use crate::throughput::{self, Direction};
use crate::{net, pattern, stats};

/// Room for buffer pools and allocator slack in the default memory budget.
const POOL_ALLOWANCE: u64 = 8 << 20;
/// A write that does not complete for this long means the stalled stream is stuck.
const STUCK_AFTER: Duration = Duration::from_millis(500);
/// Time for the tunnel to tear the stalled stream down before the streams run alone again.
const SETTLE: Duration = Duration::from_millis(200);

/// Throughput beside the stall as a share of the mean of the runs alone before and after it.
fn share(beside: f64, before: f64, after: f64) -> f64 {
    beside / ((before + after) / 2.0).max(1.0)
}

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// An echo target, or the hub listener in front of one.
    pub(crate) addr: SocketAddr,
    /// Streams that keep reading.
    pub(crate) streams: usize,
    /// Length of each phase.
    pub(crate) duration: Duration,
    /// The hub's and agent's processes, for their memory.
    pub(crate) hub_pid: Option<u32>,
    pub(crate) agent_pid: Option<u32>,
    /// The tunnel's `stream_window_bytes`, for the default budget.
    pub(crate) window: u64,
    /// Allowed growth of each process's peak memory; default two windows plus 8 MiB.
    pub(crate) budget: Option<u64>,
}

/// One process's memory in both phases.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MemoryGrowth {
    pub(crate) process: String,
    /// Peak resident bytes while the M streams ran alone.
    pub(crate) peak_alone: u64,
    /// Peak resident bytes while they ran beside the stalled stream.
    pub(crate) peak_stalled: u64,
    /// `peak_stalled - peak_alone` (0 if it shrank).
    pub(crate) growth: u64,
}

/// The outcome of a slow-reader run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SlowReaderResult {
    pub(crate) addr: String,
    pub(crate) streams: usize,
    pub(crate) phase_seconds: f64,
    /// The M streams' total throughput alone, before the stall, bytes per second.
    pub(crate) alone_bytes_per_sec: f64,
    /// The same beside the stalled stream.
    pub(crate) stalled_bytes_per_sec: f64,
    /// The same alone again, after the stalled stream closed.
    pub(crate) alone_after_bytes_per_sec: f64,
    /// `stalled` as a share of the mean of both runs alone.
    pub(crate) fraction: f64,
    /// Bytes the stalled stream got written before it stuck.
    pub(crate) stalled_stream_bytes: u64,
    /// The memory budget each process's growth is checked against.
    pub(crate) budget: u64,
    pub(crate) memory: Vec<MemoryGrowth>,
    /// What went wrong; empty when the run passed.
    pub(crate) failures: Vec<String>,
}

impl SlowReaderResult {
    /// A human-readable report.
    pub(crate) fn report(&self) -> String {
        let mut out = format!(
            "slow-reader to {}: {} streams, {:.1} s per phase\n  alone          {}\n  beside stall   {}  ({:.0} % of alone, before and after)\n  alone again    {}\n  stalled stream took {} bytes before it stuck\n",
            self.addr,
            self.streams,
            self.phase_seconds,
            stats::fmt_rate(self.alone_bytes_per_sec),
            stats::fmt_rate(self.stalled_bytes_per_sec),
            self.fraction * 100.0,
            stats::fmt_rate(self.alone_after_bytes_per_sec),
            self.stalled_stream_bytes
        );
        for m in &self.memory {
            out += &format!(
                "  {:<6} peak rss {:.1} MiB alone, {:.1} MiB beside the stall: +{} KiB (budget {} KiB)\n",
                m.process,
                m.peak_alone as f64 / 1048576.0,
                m.peak_stalled as f64 / 1048576.0,
                m.growth / 1024,
                self.budget / 1024
            );
        }
        for f in &self.failures {
            out += &format!("  error: {f}\n");
        }
        out
    }
}

/// Samples the peak resident memory of some processes until stopped.
struct PeakSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<u64>>,
}

impl PeakSampler {
    fn start(pids: Vec<u32>) -> PeakSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut peaks = vec![0u64; pids.len()];
            loop {
                for (peak, pid) in peaks.iter_mut().zip(&pids) {
                    if let Ok(rss) = rss_bytes(*pid) {
                        *peak = (*peak).max(rss);
                    }
                }
                if flag.load(Ordering::Relaxed) {
                    return peaks;
                }
                sleep(Duration::from_millis(50)).await;
            }
        });
        PeakSampler { stop, task }
    }

    async fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// Runs the scenario.
pub(crate) async fn run(opts: Options) -> Result<SlowReaderResult, String> {
    if opts.streams == 0 {
        return Err("--streams must be at least 1".into());
    }
    let processes = named_processes(opts.hub_pid, opts.agent_pid);
    let pids: Vec<u32> = processes.iter().map(|(_, p)| *p).collect();
    for pid in &pids {
        rss_bytes(*pid)?;
    }
    let phase = throughput::Options {
        addr: opts.addr,
        streams: opts.streams,
        duration: opts.duration,
        direction: Direction::Both,
    };

    let sampler = PeakSampler::start(pids.clone());
    let alone = throughput::run(phase).await?;
    let peaks_alone = sampler.finish().await;

    // The stalled stream: writes without end and never reads.
    let written = Arc::new(AtomicU64::new(0));
    let mut stalled = net::connect(opts.addr)
        .await
        .map_err(|e| format!("stalled stream: cannot connect: {e}"))?;
    let counter = written.clone();
    let writer = tokio::spawn(async move {
        let mut offset = 0u64;
        loop {
            let chunk = pattern::slice(offset, pattern::MAX_SLICE);
            match timeout(STUCK_AFTER, stalled.write_all(chunk)).await {
                Ok(Ok(())) => {
                    offset += chunk.len() as u64;
                    counter.store(offset, Ordering::Relaxed);
                }
                // Stuck: keep the connection (and its unread echo) open, silent.
                Err(_) => {
                    std::future::pending::<()>().await;
                }
                Ok(Err(e)) => {
                    return Err::<(), String>(format!("stalled stream: write failed: {e}"));
                }
            }
        }
    });
    // Wait until its writes stop completing.
    let start = Instant::now();
    let mut last = u64::MAX;
    loop {
        sleep(STUCK_AFTER * 2).await;
        let now = written.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        if writer.is_finished() || start.elapsed() > Duration::from_secs(30) {
            writer.abort();
            return Err(
                "the stalled stream never got stuck: its writes kept completing (or failed)".into(),
            );
        }
        last = now;
    }

    let sampler = PeakSampler::start(pids);
    let beside = throughput::run(phase).await;
    let peaks_stalled = sampler.finish().await;
    // Closes the stalled stream (the task owns its connection).
    writer.abort();
    let beside = beside?;
    sleep(SETTLE).await;
    let after = throughput::run(phase).await?;

    let budget = opts.budget.unwrap_or(2 * opts.window + POOL_ALLOWANCE);
    let mut failures = Vec::new();
    let memory: Vec<MemoryGrowth> = processes
        .iter()
        .zip(peaks_alone.iter().zip(&peaks_stalled))
        .map(|((name, _), (&peak_alone, &peak_stalled))| MemoryGrowth {
            process: name.clone(),
            peak_alone,
            peak_stalled,
            growth: peak_stalled.saturating_sub(peak_alone),
        })
        .collect();
    for m in &memory {
        if m.growth > budget {
            failures.push(format!(
                "{} grew by {} KiB beside the stalled stream, over the budget of {} KiB",
                m.process,
                m.growth / 1024,
                budget / 1024
            ));
        }
    }
    let fraction = share(
        beside.bytes_per_sec,
        alone.bytes_per_sec,
        after.bytes_per_sec,
    );
    Ok(SlowReaderResult {
        addr: opts.addr.to_string(),
        streams: opts.streams,
        phase_seconds: opts.duration.as_secs_f64(),
        alone_bytes_per_sec: alone.bytes_per_sec,
        stalled_bytes_per_sec: beside.bytes_per_sec,
        alone_after_bytes_per_sec: after.bytes_per_sec,
        fraction,
        stalled_stream_bytes: written.load(Ordering::Relaxed),
        budget,
        memory,
        failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{self, TargetKind};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_echo_stream_gets_stuck_and_the_others_run() {
        let addr = target::spawn(TargetKind::Echo, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let r = run(Options {
            addr,
            streams: 2,
            duration: Duration::from_millis(300),
            hub_pid: Some(std::process::id()),
            agent_pid: None,
            window: 1 << 20,
            // This process holds the echo's buffers too: a generous budget.
            budget: Some(512 << 20),
        })
        .await
        .unwrap();
        assert!(r.failures.is_empty(), "{:?}", r.failures);
        assert!(r.stalled_stream_bytes > 0);
        assert!(r.alone_bytes_per_sec > 0.0 && r.stalled_bytes_per_sec > 0.0);
        assert!(r.alone_after_bytes_per_sec > 0.0);
        let expected = share(
            r.stalled_bytes_per_sec,
            r.alone_bytes_per_sec,
            r.alone_after_bytes_per_sec,
        );
        assert!((r.fraction - expected).abs() < 1e-12);
        assert_eq!(r.memory.len(), 1);
        assert!(r.memory[0].peak_alone > 0);
    }

    #[test]
    fn the_share_is_taken_of_the_mean_of_both_runs_alone() {
        assert_eq!(share(90.0, 100.0, 100.0), 0.9);
        // A machine that slowed down over the run: beside the stall the streams did as well
        // as the mean alone, which the first run alone would have hidden.
        assert_eq!(share(80.0, 100.0, 60.0), 1.0);
        assert_eq!(share(50.0, 0.0, 0.0), 50.0, "no division by zero");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn growth_over_the_budget_fails() {
        let addr = target::spawn(TargetKind::Echo, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let r = run(Options {
            addr,
            streams: 1,
            duration: Duration::from_millis(200),
            hub_pid: Some(std::process::id()),
            agent_pid: None,
            window: 0,
            budget: Some(0),
        })
        .await
        .unwrap();
        // Any growth at all fails a zero budget; no growth passes it. Either way the
        // verdict follows the numbers.
        let grew = r.memory[0].growth > 0;
        assert_eq!(!r.failures.is_empty(), grew, "{r:?}");
    }
}
