//! Connection churn: connect, one small exchange, close, as fast as possible, from C workers.
//!
//! One cycle against an echo target: connect, write [`EXCHANGE`] bytes of the pattern, read
//! them back, half-close, and read the echo's end of stream. Through a tunnel, a TCP connect
//! completes at the hub before any stream exists, so the figure that matters is *open
//! latency*: from the start of the connect until the echoed bytes are back, which includes
//! opening the stream to the target. The connect alone is reported too.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout};

use crate::progress;
use crate::stats::{self, Percentiles};
use crate::{net, pattern};

/// Bytes written and read back per connection.
pub(crate) const EXCHANGE: usize = 32;

/// How long the exchange and the close may take before the cycle counts as a timeout.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(5);

/// What to run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// An echo target, or the hub listener in front of one.
    pub(crate) addr: SocketAddr,
    /// How long to run.
    pub(crate) duration: Duration,
    /// Concurrent workers, each running one cycle at a time.
    pub(crate) concurrency: usize,
}

/// Failed cycles, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Failures {
    /// The connect was refused.
    pub(crate) refused: u64,
    /// The connection was reset (or aborted, or the pipe broke).
    pub(crate) reset: u64,
    /// The connect, the exchange or the close took too long.
    pub(crate) timeout: u64,
    /// The connection ended before the echo was complete, or sent more after it.
    pub(crate) short_read: u64,
    /// The echo came back different.
    pub(crate) corrupt: u64,
    /// Anything else.
    pub(crate) other: u64,
}

impl Failures {
    /// All failures.
    pub(crate) fn total(&self) -> u64 {
        self.refused + self.reset + self.timeout + self.short_read + self.corrupt + self.other
    }

    fn add(&mut self, o: &Failures) {
        self.refused += o.refused;
        self.reset += o.reset;
        self.timeout += o.timeout;
        self.short_read += o.short_read;
        self.corrupt += o.corrupt;
        self.other += o.other;
    }

    fn count(&mut self, kind: FailureKind) {
        match kind {
            FailureKind::Refused => self.refused += 1,
            FailureKind::Reset => self.reset += 1,
            FailureKind::Timeout => self.timeout += 1,
            FailureKind::ShortRead => self.short_read += 1,
            FailureKind::Corrupt => self.corrupt += 1,
            FailureKind::Other => self.other += 1,
        }
    }
}

/// Why one cycle failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// See [`Failures::refused`].
    Refused,
    /// See [`Failures::reset`].
    Reset,
    /// See [`Failures::timeout`].
    Timeout,
    /// See [`Failures::short_read`].
    ShortRead,
    /// See [`Failures::corrupt`].
    Corrupt,
    /// See [`Failures::other`].
    Other,
}

/// Sorts a socket error into a failure kind.
pub(crate) fn classify(e: &io::Error) -> FailureKind {
    use io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => FailureKind::Refused,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => FailureKind::Reset,
        K::TimedOut | K::WouldBlock => FailureKind::Timeout,
        K::UnexpectedEof => FailureKind::ShortRead,
        _ => FailureKind::Other,
    }
}

/// The outcome of a churn run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChurnResult {
    /// Where it ran.
    pub(crate) addr: String,
    /// Concurrent workers.
    pub(crate) concurrency: usize,
    /// How long it ran.
    pub(crate) seconds: f64,
    /// Cycles started.
    pub(crate) attempts: u64,
    /// Cycles completed with an intact echo and a clean close.
    pub(crate) completed: u64,
    /// `completed / seconds`.
    pub(crate) connections_per_sec: f64,
    /// From connect start to the echoed bytes back, for completed cycles.
    pub(crate) open: Percentiles,
    /// The TCP connect alone, for every connect that succeeded.
    pub(crate) connect: Percentiles,
    /// Failed cycles by kind.
    pub(crate) failures: Failures,
}

impl ChurnResult {
    /// A human-readable report.
    pub(crate) fn report(&self) -> String {
        let f = &self.failures;
        format!(
            "churn to {}: {} workers, {:.2} s, {} attempts, {} completed, {:.0} connections/s\n  open      {}\n  connect   {}\n  failures  {} (refused {}, reset {}, timeout {}, short read {}, corrupt {}, other {})\n",
            self.addr,
            self.concurrency,
            self.seconds,
            self.attempts,
            self.completed,
            self.connections_per_sec,
            self.open.line(),
            self.connect.line(),
            f.total(),
            f.refused,
            f.reset,
            f.timeout,
            f.short_read,
            f.corrupt,
            f.other
        )
    }
}

/// Runs the scenario.
pub(crate) async fn run(opts: Options) -> Result<ChurnResult, String> {
    if opts.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    let start = Instant::now();
    let deadline = start + opts.duration;
    let mut tasks = Vec::with_capacity(opts.concurrency);
    for _ in 0..opts.concurrency {
        tasks.push(tokio::spawn(worker(opts.addr, deadline)));
    }
    let mut open = stats::new_histogram();
    let mut connect = stats::new_histogram();
    let mut failures = Failures::default();
    let mut attempts = 0;
    for task in tasks {
        let w = task.await.map_err(|e| format!("task failed: {e}"))?;
        open.add(&w.open)
            .map_err(|e| format!("merging histograms: {e:?}"))?;
        connect
            .add(&w.connect)
            .map_err(|e| format!("merging histograms: {e:?}"))?;
        failures.add(&w.failures);
        attempts += w.attempts;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(ChurnResult {
        addr: opts.addr.to_string(),
        concurrency: opts.concurrency,
        seconds,
        attempts,
        completed: open.len(),
        connections_per_sec: open.len() as f64 / seconds,
        open: Percentiles::of(&open),
        connect: Percentiles::of(&connect),
        failures,
    })
}

struct WorkerOutcome {
    open: Histogram<u64>,
    connect: Histogram<u64>,
    failures: Failures,
    attempts: u64,
}

async fn worker(addr: SocketAddr, deadline: Instant) -> WorkerOutcome {
    let mut out = WorkerOutcome {
        open: stats::new_histogram(),
        connect: stats::new_histogram(),
        failures: Failures::default(),
        attempts: 0,
    };
    while Instant::now() < deadline {
        out.attempts += 1;
        match cycle(addr, &mut out.connect).await {
            Ok(open) => {
                stats::record(&mut out.open, open);
                progress::add(1);
            }
            Err(kind) => {
                out.failures.count(kind);
                // Do not spin on a target that refuses outright.
                if kind == FailureKind::Refused {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    out
}

/// One connect–exchange–close; returns the open latency.
async fn cycle(
    addr: SocketAddr,
    connect_hist: &mut Histogram<u64>,
) -> Result<Duration, FailureKind> {
    let t0 = Instant::now();
    let mut conn = net::connect(addr).await.map_err(|e| classify(&e))?;
    stats::record(connect_hist, t0.elapsed());
    let request = pattern::slice(0, EXCHANGE);
    let exchange = async {
        conn.write_all(request).await?;
        let mut back = [0u8; EXCHANGE];
        conn.read_exact(&mut back).await?;
        Ok::<_, io::Error>(back)
    };
    let back = timeout(CYCLE_TIMEOUT, exchange)
        .await
        .map_err(|_| FailureKind::Timeout)?
        .map_err(|e| classify(&e))?;
    let open = t0.elapsed();
    if back[..] != request[..] {
        return Err(FailureKind::Corrupt);
    }
    let close = async {
        conn.shutdown().await?;
        let mut extra = [0u8; 1];
        conn.read(&mut extra).await
    };
    match timeout(CYCLE_TIMEOUT, close).await {
        Err(_) => Err(FailureKind::Timeout),
        Ok(Err(e)) => Err(classify(&e)),
        Ok(Ok(0)) => Ok(open),
        // More bytes than were sent.
        Ok(Ok(_)) => Err(FailureKind::ShortRead),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{self, TargetKind};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn churns_against_an_echo() {
        let addr = target::spawn(TargetKind::Echo, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let r = run(Options {
            addr,
            duration: Duration::from_millis(300),
            concurrency: 4,
        })
        .await
        .unwrap();
        assert!(r.completed > 0, "{r:?}");
        assert_eq!(r.failures.total(), 0, "{r:?}");
        assert_eq!(r.attempts, r.completed);
        assert_eq!(r.open.count, r.completed);
        assert!(r.open.p50_us >= r.connect.p50_us * 0.5);
        assert!(r.report().contains("connections/s"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_failures_by_kind() {
        // A port nothing listens on: every attempt is refused.
        let free = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let r = run(Options {
            addr: free,
            duration: Duration::from_millis(100),
            concurrency: 2,
        })
        .await
        .unwrap();
        assert_eq!(r.completed, 0);
        assert!(r.failures.refused > 0);
        assert_eq!(r.failures.total(), r.failures.refused);

        // A target that answers with fewer bytes than were sent, then closes.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let short = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; EXCHANGE];
                    let _ = conn.read_exact(&mut buf).await;
                    let _ = conn.write_all(&buf[..EXCHANGE / 2]).await;
                });
            }
        });
        let r = run(Options {
            addr: short,
            duration: Duration::from_millis(100),
            concurrency: 2,
        })
        .await
        .unwrap();
        assert_eq!(r.completed, 0);
        assert!(r.failures.short_read > 0, "{:?}", r.failures);
    }

    #[test]
    fn socket_errors_map_to_kinds() {
        use io::ErrorKind as K;
        let k = |kind| classify(&io::Error::from(kind));
        assert_eq!(k(K::ConnectionRefused), FailureKind::Refused);
        assert_eq!(k(K::ConnectionReset), FailureKind::Reset);
        assert_eq!(k(K::BrokenPipe), FailureKind::Reset);
        assert_eq!(k(K::TimedOut), FailureKind::Timeout);
        assert_eq!(k(K::UnexpectedEof), FailureKind::ShortRead);
        assert_eq!(k(K::PermissionDenied), FailureKind::Other);
    }
}
