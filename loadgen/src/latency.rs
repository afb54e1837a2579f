//! Request/response latency at a fixed aggregate rate over kept-alive connections to an echo
//! target.
//!
//! The rate is open-loop: request times are fixed in advance by a [`Pacer`] per connection, and
//! each connection has one request outstanding. When a response is late, the requests behind it
//! go out late, and their latency is measured from when they *should* have gone out
//! (coordinated-omission correction; see [`Sample::corrected`]). The service time (from the actual send) is reported too,
//! so the two can be compared: a large gap means the target or tunnel stalled.

use std::net::SocketAddr;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep_until, timeout_at};

use crate::progress;
use crate::stats::{self, Pacer, Percentiles, Sample};
use crate::{net, pattern};

/// How long after the end of the run an outstanding response may still arrive.
const RESPONSE_GRACE: Duration = Duration::from_secs(5);

/// What to run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// An echo target, or the hub listener in front of one.
    pub(crate) addr: SocketAddr,
    /// Kept-alive connections sharing the rate.
    pub(crate) connections: usize,
    /// Aggregate requests per second.
    pub(crate) rate: f64,
    /// How long to send.
    pub(crate) duration: Duration,
    /// Bytes per request (and per response).
    pub(crate) size: usize,
    /// Against an `rr` target: bytes per reply, checked against the pattern. `None` against
    /// an echo target, whose reply is the request.
    pub(crate) reply_size: Option<usize>,
}

/// The outcome of a latency run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LatencyResult {
    /// Where it ran.
    pub(crate) addr: String,
    /// Kept-alive connections.
    pub(crate) connections: usize,
    /// Bytes per request.
    pub(crate) size: usize,
    /// Requested aggregate rate, per second.
    pub(crate) target_rate: f64,
    /// Responses per second over the run.
    pub(crate) achieved_rate: f64,
    /// Requests whose response arrived complete and intact.
    pub(crate) responses: u64,
    /// Connections that failed (each stops at its first error).
    pub(crate) errors: Vec<String>,
    /// Latency from each request's intended send time (coordinated-omission corrected).
    pub(crate) latency: Percentiles,
    /// Latency from each request's actual send time.
    pub(crate) service: Percentiles,
}

impl LatencyResult {
    /// A human-readable report.
    pub(crate) fn report(&self) -> String {
        let mut out = format!(
            "latency to {}: {} connections, {} bytes, target {:.0}/s, achieved {:.0}/s, {} responses, {} errors\n  corrected  {}\n  service    {}\n",
            self.addr,
            self.connections,
            self.size,
            self.target_rate,
            self.achieved_rate,
            self.responses,
            self.errors.len(),
            self.latency.line(),
            self.service.line(),
        );
        for e in &self.errors {
            out += &format!("  error: {e}\n");
        }
        out
    }
}

/// Runs the scenario.
pub(crate) async fn run(opts: Options) -> Result<LatencyResult, String> {
    if opts
        .reply_size
        .is_some_and(|r| r == 0 || r > pattern::MAX_SLICE)
    {
        return Err(format!("--reply-size must be 1 to {}", pattern::MAX_SLICE));
    }
    if opts.connections == 0 || opts.size == 0 {
        return Err("--connections and --size must be at least 1".into());
    }
    if !(opts.rate.is_finite() && opts.rate > 0.0) {
        return Err("--rate must be more than 0".into());
    }
    let mut conns = Vec::with_capacity(opts.connections);
    for i in 0..opts.connections {
        let conn = net::connect(opts.addr)
            .await
            .map_err(|e| format!("connection {i}: cannot connect to {}: {e}", opts.addr))?;
        conns.push(conn);
    }
    // A short lead so every task is parked before the first intended send.
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(opts.connections);
    for (i, conn) in conns.into_iter().enumerate() {
        let pacer = Pacer::new(i, opts.connections, opts.rate);
        tasks.push(tokio::spawn(connection(conn, pacer, start, opts)));
    }
    let mut latency = stats::new_histogram();
    let mut service = stats::new_histogram();
    let mut errors = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let out = task.await.map_err(|e| format!("task failed: {e}"))?;
        latency
            .add(&out.latency)
            .map_err(|e| format!("merging histograms: {e:?}"))?;
        service
            .add(&out.service)
            .map_err(|e| format!("merging histograms: {e:?}"))?;
        if let Some(e) = out.error {
            errors.push(format!("connection {i}: {e}"));
        }
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    Ok(LatencyResult {
        addr: opts.addr.to_string(),
        connections: opts.connections,
        size: opts.size,
        target_rate: opts.rate,
        achieved_rate: latency.len() as f64 / elapsed,
        responses: latency.len(),
        errors,
        latency: Percentiles::of(&latency),
        service: Percentiles::of(&service),
    })
}

struct ConnectionOutcome {
    latency: Histogram<u64>,
    service: Histogram<u64>,
    error: Option<String>,
}

async fn connection(
    mut conn: tokio::net::TcpStream,
    pacer: Pacer,
    start: Instant,
    opts: Options,
) -> ConnectionOutcome {
    let mut out = ConnectionOutcome {
        latency: stats::new_histogram(),
        service: stats::new_histogram(),
        error: None,
    };
    let end = start + opts.duration;
    let mut request = Vec::with_capacity(opts.size);
    let mut response = vec![0u8; opts.reply_size.unwrap_or(opts.size)];
    let mut k = 0u64;
    let mut free = Duration::ZERO;
    loop {
        let intended = pacer.intended(k);
        if start + intended >= end {
            break;
        }
        // Send at the intended time, or at once when running behind it.
        sleep_until(start + intended).await;
        let sent = start.elapsed();
        request.clear();
        let mut offset = k * opts.size as u64;
        while request.len() < opts.size {
            let len = (opts.size - request.len()).min(pattern::MAX_SLICE);
            request.extend_from_slice(pattern::slice(offset, len));
            offset += len as u64;
        }
        let exchange = async {
            conn.write_all(&request).await?;
            conn.read_exact(&mut response).await?;
            Ok::<_, std::io::Error>(())
        };
        match timeout_at(end + RESPONSE_GRACE, exchange).await {
            Err(_) => {
                out.error = Some(format!("request {k}: no response in time"));
                break;
            }
            Ok(Err(e)) => {
                out.error = Some(format!("request {k}: {e}"));
                break;
            }
            Ok(Ok(())) => {}
        }
        let done = start.elapsed();
        let intact = match opts.reply_size {
            None => response == request,
            Some(_) => pattern::check(0, &response).is_ok(),
        };
        if !intact {
            out.error = Some(format!(
                "request {k}: the response differs from the expected reply (an echo target, or rr with --reply-size?)"
            ));
            break;
        }
        let sample = Sample {
            intended,
            free,
            sent,
            done,
        };
        free = done;
        stats::record(&mut out.latency, sample.corrected());
        stats::record(&mut out.service, sample.service());
        k += 1;
        progress::add(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{self, TargetKind};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn measures_an_rr_target_with_its_own_reply_size() {
        let sizes = target::RrSizes {
            request: 32,
            reply: 1000,
        };
        let addr = target::spawn_with(TargetKind::Rr, "127.0.0.1:0".parse().unwrap(), sizes)
            .await
            .unwrap();
        let r = run(Options {
            addr,
            connections: 2,
            rate: 200.0,
            duration: Duration::from_millis(300),
            size: 32,
            reply_size: Some(1000),
        })
        .await
        .unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert!(r.responses > 20, "{}", r.responses);
        // The same target read as an echo is a detected mismatch, not a silent pass (once
        // the reads run past the end of the first 1000-byte reply).
        let wrong = run(Options {
            addr,
            connections: 1,
            rate: 1000.0,
            duration: Duration::from_millis(200),
            size: 32,
            reply_size: None,
        })
        .await
        .unwrap();
        assert_eq!(wrong.errors.len(), 1, "{:?}", wrong.errors);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn measures_an_echo_at_a_fixed_rate() {
        let addr = target::spawn(TargetKind::Echo, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let r = run(Options {
            addr,
            connections: 4,
            rate: 400.0,
            duration: Duration::from_millis(500),
            size: 100,
            reply_size: None,
        })
        .await
        .unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        // 400/s for 0.5 s: 200 requests were scheduled; all of them ran.
        assert_eq!(r.responses, 200);
        assert_eq!(r.latency.count, 200);
        assert_eq!(r.service.count, 200);
        assert!(r.latency.p50_us > 0.0);
        assert!(r.latency.max_us >= r.latency.p999_us);
        assert!(r.report().contains("corrected"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_target_that_hangs_up_is_reported() {
        // Accepts and closes at once: every connection ends at its first request.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                drop(conn);
            }
        });
        let r = run(Options {
            addr,
            connections: 2,
            rate: 100.0,
            duration: Duration::from_millis(200),
            size: 16,
            reply_size: None,
        })
        .await
        .unwrap();
        assert_eq!(r.responses, 0);
        assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
        assert!(
            r.errors[0].starts_with("connection 0: request 0"),
            "{:?}",
            r.errors
        );
    }
}
