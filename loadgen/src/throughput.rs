//! Bulk throughput over N concurrent connections.
//!
//! Every connection is opened first, then all start together. What is counted depends on the
//! direction, and is always bytes that verifiably arrived:
//!
//! - `up` (against a `sink` target): the client writes the pattern until the deadline, then
//!   half-closes; the sink answers with the number of bytes it read, which is the figure.
//! - `down` (against a `source` target): bytes read and checked against the pattern until the
//!   deadline.
//! - `both` (against an `echo` target): the client writes and reads at once, then half-closes
//!   at the deadline and reads to the end; the figure is the bytes that made the round trip,
//!   each counted once, and every one is checked against the pattern.

use std::net::SocketAddr;
use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio::time::{Instant, timeout_at};

use crate::{net, pattern, progress, stats};

/// Size of each write and read.
const CHUNK: usize = 64 * 1024;

/// How long after the deadline a connection may take to deliver what is still in flight.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Which way the bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Direction {
    /// Client to target (run against a `sink` target).
    Up,
    /// Target to client (run against a `source` target).
    Down,
    /// Both at once (run against an `echo` target).
    Both,
}

/// What to run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// The target, or the hub listener in front of it.
    pub(crate) addr: SocketAddr,
    /// Concurrent connections.
    pub(crate) streams: usize,
    /// How long to send.
    pub(crate) duration: Duration,
    /// Which way.
    pub(crate) direction: Direction,
}

/// One connection's figure.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StreamResult {
    /// Bytes counted (see the module documentation for what counts).
    pub(crate) bytes: u64,
    /// From the common start to this connection's last counted byte.
    pub(crate) seconds: f64,
    /// `bytes / seconds`.
    pub(crate) bytes_per_sec: f64,
}

/// The outcome of a throughput run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ThroughputResult {
    /// Where it ran.
    pub(crate) addr: String,
    /// Which way.
    pub(crate) direction: Direction,
    /// Concurrent connections.
    pub(crate) streams: usize,
    /// From the common start to the last connection's end.
    pub(crate) seconds: f64,
    /// Bytes counted over all connections.
    pub(crate) total_bytes: u64,
    /// `total_bytes / seconds`.
    pub(crate) bytes_per_sec: f64,
    /// Each connection's figure, in connection order.
    pub(crate) per_stream: Vec<StreamResult>,
}

impl ThroughputResult {
    /// A human-readable report.
    pub(crate) fn report(&self) -> String {
        let mut out = format!(
            "throughput {} to {}: {} streams, {:.2} s, {} bytes\n  total       {}\n",
            format!("{:?}", self.direction).to_lowercase(),
            self.addr,
            self.streams,
            self.seconds,
            self.total_bytes,
            stats::fmt_rate(self.bytes_per_sec)
        );
        let rates: Vec<f64> = self.per_stream.iter().map(|s| s.bytes_per_sec).collect();
        let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rates.iter().copied().fold(0.0, f64::max);
        let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
        out += &format!(
            "  per stream  mean {}, min {}, max {}\n",
            stats::fmt_rate(mean),
            stats::fmt_rate(min),
            stats::fmt_rate(max)
        );
        for (i, s) in self.per_stream.iter().enumerate() {
            out += &format!(
                "    stream {i:>3}  {:>14} bytes  {}\n",
                s.bytes,
                stats::fmt_rate(s.bytes_per_sec)
            );
        }
        out
    }
}

/// Runs the scenario.
pub(crate) async fn run(opts: Options) -> Result<ThroughputResult, String> {
    if opts.streams == 0 {
        return Err("--streams must be at least 1".into());
    }
    let mut conns = Vec::with_capacity(opts.streams);
    for i in 0..opts.streams {
        let conn = net::connect(opts.addr)
            .await
            .map_err(|e| format!("stream {i}: cannot connect to {}: {e}", opts.addr))?;
        conns.push(conn);
    }
    let barrier = std::sync::Arc::new(Barrier::new(opts.streams + 1));
    let mut tasks = Vec::with_capacity(opts.streams);
    for conn in conns {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let start = Instant::now();
            let deadline = start + opts.duration;
            let bytes = match opts.direction {
                Direction::Up => up(conn, deadline).await,
                Direction::Down => down(conn, deadline).await,
                Direction::Both => both(conn, deadline).await,
            }?;
            Ok::<_, String>((bytes, start.elapsed()))
        }));
    }
    barrier.wait().await;
    let mut per_stream = Vec::with_capacity(opts.streams);
    let mut errors = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(Ok((bytes, elapsed))) => {
                let seconds = elapsed.as_secs_f64();
                per_stream.push(StreamResult {
                    bytes,
                    seconds,
                    bytes_per_sec: bytes as f64 / seconds,
                });
            }
            Ok(Err(e)) => errors.push(format!("stream {i}: {e}")),
            Err(e) => errors.push(format!("stream {i}: task failed: {e}")),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    let seconds = per_stream.iter().map(|s| s.seconds).fold(0.0, f64::max);
    let total_bytes = per_stream.iter().map(|s| s.bytes).sum();
    Ok(ThroughputResult {
        addr: opts.addr.to_string(),
        direction: opts.direction,
        streams: opts.streams,
        seconds,
        total_bytes,
        bytes_per_sec: total_bytes as f64 / seconds,
        per_stream,
    })
}

/// Writes the pattern until `deadline`; returns how many bytes were written. `count` puts
/// them on the progress line (when they are the figure, not the echo of them).
async fn write_until(
    w: &mut (impl AsyncWriteExt + Unpin),
    deadline: Instant,
    count: bool,
) -> Result<u64, String> {
    let mut offset = 0u64;
    while Instant::now() < deadline {
        timeout_at(
            deadline + DRAIN_GRACE,
            w.write_all(pattern::slice(offset, CHUNK)),
        )
        .await
        .map_err(|_| "write stalled".to_string())?
        .map_err(|e| format!("write failed: {e}"))?;
        offset += CHUNK as u64;
        if count {
            progress::add(CHUNK as u64);
        }
    }
    w.shutdown()
        .await
        .map_err(|e| format!("half-close failed: {e}"))?;
    Ok(offset)
}

async fn up(mut conn: TcpStream, deadline: Instant) -> Result<u64, String> {
    let written = write_until(&mut conn, deadline, true).await?;
    let mut count = [0u8; 8];
    timeout_at(deadline + DRAIN_GRACE, conn.read_exact(&mut count))
        .await
        .map_err(|_| "the sink did not report its count in time".to_string())?
        .map_err(|e| format!("reading the sink's count: {e} (is the target a sink?)"))?;
    let received = u64::from_be_bytes(count);
    if received != written {
        return Err(format!(
            "wrote {written} bytes but the sink read {received}"
        ));
    }
    Ok(received)
}

async fn down(mut conn: TcpStream, deadline: Instant) -> Result<u64, String> {
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    loop {
        let n = match timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return Ok(offset),
            Ok(Ok(0)) => return Err(format!("the target closed after {offset} bytes")),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(format!("read failed after {offset} bytes: {e}")),
        };
        pattern::check(offset, &buf[..n]).map_err(|m| format!("{m} (is the target a source?)"))?;
        offset += n as u64;
        progress::add(n as u64);
    }
}

async fn both(conn: TcpStream, deadline: Instant) -> Result<u64, String> {
    let (mut r, mut w) = conn.into_split();
    let writer = write_until(&mut w, deadline, false);
    let reader = async {
        let mut buf = vec![0u8; CHUNK];
        let mut offset = 0u64;
        loop {
            let n = timeout_at(deadline + DRAIN_GRACE, r.read(&mut buf))
                .await
                .map_err(|_| format!("the echo stalled after {offset} bytes"))?
                .map_err(|e| format!("read failed after {offset} bytes: {e}"))?;
            if n == 0 {
                return Ok::<_, String>(offset);
            }
            pattern::check(offset, &buf[..n]).map_err(|m| m.to_string())?;
            offset += n as u64;
            progress::add(n as u64);
        }
    };
    let (written, echoed) = tokio::try_join!(writer, reader)?;
    if echoed != written {
        return Err(format!(
            "wrote {written} bytes but {echoed} came back before the end of stream"
        ));
    }
    Ok(echoed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{self, TargetKind};

    async fn run_against(kind: TargetKind, direction: Direction, streams: usize) {
        let addr = target::spawn(kind, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let r = run(Options {
            addr,
            streams,
            duration: Duration::from_millis(300),
            direction,
        })
        .await
        .unwrap();
        assert_eq!(r.per_stream.len(), streams);
        assert!(r.per_stream.iter().all(|s| s.bytes > 0), "{r:?}");
        assert_eq!(
            r.total_bytes,
            r.per_stream.iter().map(|s| s.bytes).sum::<u64>()
        );
        assert!(r.seconds >= 0.29, "{}", r.seconds);
        assert!(r.report().contains("total"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_directions_through_an_echo() {
        run_against(TargetKind::Echo, Direction::Both, 3).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn upload_to_a_sink() {
        run_against(TargetKind::Sink, Direction::Up, 2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn download_from_a_source() {
        run_against(TargetKind::Source, Direction::Down, 2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn downloading_from_an_echo_counts_nothing() {
        let addr = target::spawn(TargetKind::Echo, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let r = run(Options {
            addr,
            streams: 1,
            duration: Duration::from_millis(100),
            direction: Direction::Down,
        })
        .await
        .unwrap();
        assert_eq!(r.total_bytes, 0);
    }

    #[tokio::test]
    async fn an_unreachable_target_is_an_error() {
        // Bind and drop a listener to find a port that nothing serves.
        let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let err = run(Options {
            addr,
            streams: 1,
            duration: Duration::from_millis(100),
            direction: Direction::Both,
        })
        .await
        .unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
    }
}
