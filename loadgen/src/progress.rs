//! A live progress line on standard error, when it is a terminal.
//!
//! Scenarios count what they do with [`add`] (bytes, responses, connections); a
//! [`Progress`] started around a run redraws one line four times a second with the elapsed
//! time and the count's rate, and erases it when finished. When standard error is not a
//! terminal (a pipe, a file, CI) nothing is drawn, and counting is one relaxed atomic add.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::stats;

/// What every scenario counts into.
static COUNT: AtomicU64 = AtomicU64::new(0);

/// Counts `n` units of progress.
pub(crate) fn add(n: u64) {
    COUNT.fetch_add(n, Ordering::Relaxed);
}

/// What the count means.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Unit {
    /// Bytes: shown as a rate.
    Bytes,
    /// Events with a name ("responses", "connections"): shown as a count and a rate.
    Events(&'static str),
}

/// A progress line being drawn; [`Progress::finish`] erases it.
pub(crate) struct Progress {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts drawing `label` for a run expected to last `total` (if known).
    pub(crate) fn start(label: String, total: Option<Duration>, unit: Unit) -> Progress {
        COUNT.store(0, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return Progress { stop, task: None };
        }
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let (mut last_count, mut last_at) = (0u64, start);
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                let now = Instant::now();
                let count = COUNT.load(Ordering::Relaxed);
                let rate = (count - last_count.min(count)) as f64
                    / now.duration_since(last_at).as_secs_f64().max(1e-3);
                (last_count, last_at) = (count, now);
                let line = render(&label, now.duration_since(start), total, unit, count, rate);
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[K{line}");
                let _ = err.flush();
            }
        });
        Progress {
            stop,
            task: Some(task),
        }
    }

    /// Stops drawing and erases the line.
    pub(crate) async fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            let _ = task.await;
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

/// The text of the line.
fn render(
    label: &str,
    elapsed: Duration,
    total: Option<Duration>,
    unit: Unit,
    count: u64,
    rate: f64,
) -> String {
    let time = match total {
        Some(t) => format!("{:.1}/{:.1} s", elapsed.as_secs_f64(), t.as_secs_f64()),
        None => format!("{:.1} s", elapsed.as_secs_f64()),
    };
    let what = match unit {
        Unit::Bytes => format!("{} now, {} bytes so far", stats::fmt_rate(rate), count),
        Unit::Events(name) => format!("{count} {name}, {rate:.0}/s now"),
    };
    format!("{label}  {time}  {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_time_and_rate() {
        let line = render(
            "throughput",
            Duration::from_millis(1500),
            Some(Duration::from_secs(10)),
            Unit::Bytes,
            3_000_000,
            2_000_000.0,
        );
        assert!(line.starts_with("throughput  1.5/10.0 s  "), "{line}");
        assert!(line.contains("3000000 bytes"), "{line}");
        let line = render(
            "churn",
            Duration::from_secs(2),
            None,
            Unit::Events("connections"),
            420,
            210.0,
        );
        assert_eq!(line, "churn  2.0 s  420 connections, 210/s now");
    }
}
