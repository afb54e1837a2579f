//! `tune`: which shard count and driver suit this host.
//!
//! Starts an echo target in this process, then for each driver and each shard count from 1
//! to the number of cores starts a hub and an agent (lanes `auto`, one per shard) and runs the
//! same short load through them: bulk throughput over 8 streams, request/response latency at
//! a fixed rate, and connection churn. The recommendation is the configuration with the
//! highest throughput; a configuration within [`NEAR`] of it that uses fewer shards, or that
//! has a clearly better p99 latency, is preferred, and the reason is printed with the table.
//! Every configuration is measured once, back to back, so neighbouring rows see the same
//! machine; the ratios between rows are what to read.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::stack::{Driver, Stack, StackOptions};
use crate::target::{self, TargetKind};
use crate::throughput::Direction;
use crate::{churn, latency, throughput};

/// Throughput within this fraction of the best counts as as good.
pub(crate) const NEAR: f64 = 0.05;
/// A p99 latency this much lower (as a fraction) counts as clearly better.
const CLEARLY_BETTER_P99: f64 = 0.25;
const STREAMS: usize = 8;
const LATENCY_RATE: f64 = 2000.0;
const LATENCY_CONNECTIONS: usize = 16;
const CHURN_CONCURRENCY: usize = 4;

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) bin_dir: Option<PathBuf>,
    /// Length of each load phase.
    pub(crate) phase: Duration,
    /// Shard counts to try: 1 to this.
    pub(crate) max_shards: u32,
    /// Drivers to try.
    pub(crate) drivers: Vec<Driver>,
}

/// One configuration's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Trial {
    pub(crate) driver: Driver,
    pub(crate) shards: u32,
    /// 8 streams, both directions, bytes per second.
    pub(crate) throughput: f64,
    /// Corrected p50 and p99 latency at the fixed rate, microseconds.
    pub(crate) latency_p50_us: f64,
    pub(crate) latency_p99_us: f64,
    /// Completed connections per second.
    pub(crate) churn_per_sec: f64,
    /// What failed, if anything (the figures of a failed phase are 0).
    pub(crate) errors: Vec<String>,
}

/// The outcome of a tune run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TuneResult {
    pub(crate) cores: usize,
    pub(crate) phase_seconds: f64,
    pub(crate) trials: Vec<Trial>,
    /// Index into `trials` of the recommendation.
    pub(crate) recommended: Option<usize>,
    /// Why it was chosen.
    pub(crate) reason: String,
}

impl TuneResult {
    /// A human-readable report.
    pub(crate) fn report(&self) -> String {
        let mut out = format!(
            "tune: {} cores, {:.1} s per phase; throughput over {STREAMS} streams both ways, latency at {LATENCY_RATE:.0}/s over {LATENCY_CONNECTIONS} connections, churn with {CHURN_CONCURRENCY} workers\n\n",
            self.cores, self.phase_seconds
        );
        out += &format!(
            "{:<10} {:>6} {:>14} {:>12} {:>12} {:>10}\n",
            "driver", "shards", "MB/s", "p50 µs", "p99 µs", "conn/s"
        );
        for (i, t) in self.trials.iter().enumerate() {
            let mark = if Some(i) == self.recommended {
                " <"
            } else {
                ""
            };
            out += &format!(
                "{:<10} {:>6} {:>14.1} {:>12.0} {:>12.0} {:>10.0}{mark}\n",
                t.driver.as_str(),
                t.shards,
                t.throughput / 1e6,
                t.latency_p50_us,
                t.latency_p99_us,
                t.churn_per_sec
            );
            for e in &t.errors {
                out += &format!("             error: {e}\n");
            }
        }
        out += &format!("\n{}\n", self.reason);
        out
    }
}

/// Picks the recommendation among `trials`: see the module documentation.
pub(crate) fn recommend(trials: &[Trial]) -> (Option<usize>, String) {
    let usable: Vec<usize> = (0..trials.len())
        .filter(|&i| trials[i].errors.is_empty() && trials[i].throughput > 0.0)
        .collect();
    let Some(&best) = usable
        .iter()
        .max_by(|&&a, &&b| trials[a].throughput.total_cmp(&trials[b].throughput))
    else {
        return (None, "no configuration ran without errors".into());
    };
    let top = &trials[best];
    let near: Vec<usize> = usable
        .iter()
        .copied()
        .filter(|&i| trials[i].throughput >= top.throughput * (1.0 - NEAR))
        .collect();
    // Among the near-best: a clearly better tail latency wins, then fewer shards.
    let low_p99 = near
        .iter()
        .copied()
        .min_by(|&a, &b| {
            trials[a]
                .latency_p99_us
                .total_cmp(&trials[b].latency_p99_us)
        })
        .unwrap_or(best);
    let pick = if trials[low_p99].latency_p99_us < top.latency_p99_us * (1.0 - CLEARLY_BETTER_P99) {
        low_p99
    } else {
        near.iter()
            .copied()
            .min_by_key(|&i| trials[i].shards)
            .unwrap_or(best)
    };
    let p = &trials[pick];
    let reason = if pick == best {
        format!(
            "recommended: hub.driver {} with hub.shards {} (the highest throughput)",
            p.driver.as_str(),
            p.shards
        )
    } else {
        format!(
            "recommended: hub.driver {} with hub.shards {}: within {:.0} % of the highest throughput ({} with {} shards) and {}",
            p.driver.as_str(),
            p.shards,
            NEAR * 100.0,
            top.driver.as_str(),
            top.shards,
            if p.latency_p99_us < top.latency_p99_us * (1.0 - CLEARLY_BETTER_P99) {
                format!(
                    "a p99 latency of {:.0} µs against {:.0} µs",
                    p.latency_p99_us, top.latency_p99_us
                )
            } else {
                "fewer shards".to_string()
            }
        )
    };
    (Some(pick), reason)
}

/// What `hub.driver: auto` (io_uring where the kernel allows it) gives on this host compared
/// with the other driver, when both were tried.
fn auto_note(trials: &[Trial]) -> Option<String> {
    let best = |driver: Driver| {
        trials
            .iter()
            .filter(|t| t.driver == driver && t.errors.is_empty())
            .map(|t| t.throughput)
            .fold(None, |acc: Option<f64>, x| {
                Some(acc.map_or(x, |a| a.max(x)))
            })
    };
    let (uring, epoll) = (best(Driver::IoUring)?, best(Driver::Epoll)?);
    let verdict = if uring >= epoll * (1.0 - NEAR) {
        "so auto is a good choice for this workload"
    } else {
        "so set hub.driver: epoll explicitly for this workload"
    };
    Some(format!(
        "auto picks io_uring where the kernel allows it; its best throughput here is {:.0} % of epoll's best, {verdict}",
        uring / epoll.max(1.0) * 100.0
    ))
}

/// Runs the sweep.
pub(crate) async fn run(opts: Options) -> Result<TuneResult, String> {
    let target = target::spawn(TargetKind::Echo, ([127, 0, 0, 1], 0).into())
        .await
        .map_err(|e| format!("cannot start the echo target: {e}"))?;
    let mut trials = Vec::new();
    for &driver in &opts.drivers {
        for shards in 1..=opts.max_shards.max(1) {
            eprintln!("tune: {} with {shards} shard(s)", driver.as_str());
            trials.push(trial(&opts, driver, shards, target).await);
        }
    }
    let (recommended, mut reason) = recommend(&trials);
    if let Some(note) = auto_note(&trials) {
        reason = format!("{reason}\n{note}");
    }
    Ok(TuneResult {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        phase_seconds: opts.phase.as_secs_f64(),
        trials,
        recommended,
        reason,
    })
}

async fn trial(opts: &Options, driver: Driver, shards: u32, target: SocketAddr) -> Trial {
    let mut t = Trial {
        driver,
        shards,
        throughput: 0.0,
        latency_p50_us: 0.0,
        latency_p99_us: 0.0,
        churn_per_sec: 0.0,
        errors: Vec::new(),
    };
    let mut stack = match Stack::start(&StackOptions {
        bin_dir: opts.bin_dir.clone(),
        driver,
        shards: Some(shards),
        lanes: None,
        targets: vec![("echo".to_owned(), target)],
        limits: Vec::new(),
    })
    .await
    {
        Ok(stack) => stack,
        Err(e) => {
            t.errors.push(e);
            return t;
        }
    };
    let Some(addr) = stack.listener("echo") else {
        t.errors.push("the hub has no echo listener".into());
        return t;
    };
    match throughput::run(throughput::Options {
        addr,
        streams: STREAMS,
        duration: opts.phase,
        direction: Direction::Both,
    })
    .await
    {
        Ok(r) => t.throughput = r.bytes_per_sec,
        Err(e) => t.errors.push(format!("throughput: {e}")),
    }
    match latency::run(latency::Options {
        addr,
        connections: LATENCY_CONNECTIONS,
        rate: LATENCY_RATE,
        duration: opts.phase,
        size: 64,
        reply_size: None,
    })
    .await
    {
        Ok(r) => {
            t.latency_p50_us = r.latency.p50_us;
            t.latency_p99_us = r.latency.p99_us;
            t.errors
                .extend(r.errors.into_iter().map(|e| format!("latency: {e}")));
        }
        Err(e) => t.errors.push(format!("latency: {e}")),
    }
    match churn::run(churn::Options {
        addr,
        duration: opts.phase,
        concurrency: CHURN_CONCURRENCY,
    })
    .await
    {
        Ok(r) => t.churn_per_sec = r.connections_per_sec,
        Err(e) => t.errors.push(format!("churn: {e}")),
    }
    t.errors.extend(stack.stop().await);
    if !t.errors.is_empty() {
        stack.keep();
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(driver: Driver, shards: u32, mbps: f64, p99: f64) -> Trial {
        Trial {
            driver,
            shards,
            throughput: mbps * 1e6,
            latency_p50_us: p99 / 2.0,
            latency_p99_us: p99,
            churn_per_sec: 1000.0,
            errors: Vec::new(),
        }
    }

    #[test]
    fn the_fastest_wins_unless_a_near_one_is_smaller_or_clearly_snappier() {
        let clear = [
            trial(Driver::IoUring, 1, 300.0, 500.0),
            trial(Driver::IoUring, 2, 400.0, 500.0),
            trial(Driver::Epoll, 1, 250.0, 500.0),
        ];
        let (pick, reason) = recommend(&clear);
        assert_eq!(pick, Some(1));
        assert!(reason.contains("highest throughput"), "{reason}");

        // Within 5 %: the one with fewer shards.
        let near = [
            trial(Driver::IoUring, 1, 390.0, 500.0),
            trial(Driver::IoUring, 2, 400.0, 500.0),
        ];
        let (pick, reason) = recommend(&near);
        assert_eq!(pick, Some(0));
        assert!(reason.contains("fewer shards"), "{reason}");

        // Within 5 % and a much lower p99.
        let snappy = [
            trial(Driver::IoUring, 2, 400.0, 900.0),
            trial(Driver::Epoll, 2, 385.0, 300.0),
        ];
        let (pick, reason) = recommend(&snappy);
        assert_eq!(pick, Some(1));
        assert!(reason.contains("p99"), "{reason}");
    }

    #[test]
    fn the_auto_note_compares_the_drivers() {
        let slower = [
            trial(Driver::IoUring, 1, 300.0, 500.0),
            trial(Driver::Epoll, 1, 400.0, 500.0),
        ];
        let note = auto_note(&slower).unwrap();
        assert!(note.contains("75 %"), "{note}");
        assert!(note.contains("set hub.driver: epoll"), "{note}");
        let faster = [
            trial(Driver::IoUring, 1, 420.0, 500.0),
            trial(Driver::Epoll, 1, 400.0, 500.0),
        ];
        assert!(auto_note(&faster).unwrap().contains("good choice"));
        assert!(auto_note(&faster[..1]).is_none());
    }

    #[test]
    fn failed_configurations_are_never_recommended() {
        let mut broken = trial(Driver::IoUring, 2, 900.0, 100.0);
        broken.errors.push("hub exited".into());
        let trials = [broken, trial(Driver::Epoll, 1, 100.0, 800.0)];
        assert_eq!(recommend(&trials).0, Some(1));
        let (none, reason) = recommend(&trials[..1]);
        assert_eq!(none, None);
        assert!(reason.contains("no configuration"));
    }
}
