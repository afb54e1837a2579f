//! Latency histograms, percentile extraction, request pacing with coordinated-omission
//! correction, and number formatting for reports.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The largest latency a histogram records: 60 s, in nanoseconds. Longer samples are clamped.
const HIGHEST_NS: u64 = 60_000_000_000;

/// A histogram of latencies in nanoseconds, 3 significant figures, 1 ns to 60 s.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_NS, 3).expect("valid histogram bounds")
}

/// Records `d` in `h` (nanoseconds; at least 1 ns, at most 60 s).
pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    h.saturating_record(ns.clamp(1, HIGHEST_NS));
}

/// The figures a report shows from one latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Percentiles {
    /// Number of samples.
    pub(crate) count: u64,
    /// Arithmetic mean.
    pub(crate) mean_us: f64,
    /// Median.
    pub(crate) p50_us: f64,
    /// 90th percentile.
    pub(crate) p90_us: f64,
    /// 99th percentile.
    pub(crate) p99_us: f64,
    /// 99.9th percentile.
    pub(crate) p999_us: f64,
    /// Largest sample.
    pub(crate) max_us: f64,
}

impl Percentiles {
    /// Extracts the report figures from a histogram of nanoseconds. An empty histogram gives
    /// zeros with `count` 0.
    pub(crate) fn of(h: &Histogram<u64>) -> Percentiles {
        let us = |ns: u64| ns as f64 / 1000.0;
        if h.is_empty() {
            return Percentiles {
                count: 0,
                mean_us: 0.0,
                p50_us: 0.0,
                p90_us: 0.0,
                p99_us: 0.0,
                p999_us: 0.0,
                max_us: 0.0,
            };
        }
        Percentiles {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }

    /// One line: `p50 … p90 … p99 … p99.9 … max …`.
    pub(crate) fn line(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
            fmt_us(self.p50_us),
            fmt_us(self.p90_us),
            fmt_us(self.p99_us),
            fmt_us(self.p999_us),
            fmt_us(self.max_us),
            self.count
        )
    }
}

/// The send schedule of one connection in an open-loop (fixed-rate) run.
///
/// Request `k` is *intended* to go out at `offset + k × period` after the start. A connection
/// carries one request at a time, so when a response is late the next request goes out late,
/// as soon as the previous one completes. Its latency is still measured from its intended
/// time: the time it spent waiting behind the stall is latency a client at that rate would
/// have seen. Measuring from the actual send instead hides that wait (coordinated omission).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pacer {
    offset_ns: u64,
    period_ns: u64,
}

impl Pacer {
    /// The schedule of connection `index` out of `connections` sharing an aggregate `rate`
    /// (requests per second): each connection sends every `connections / rate` seconds, and
    /// connections are staggered by `1 / rate` so the aggregate is evenly spaced.
    pub(crate) fn new(index: usize, connections: usize, rate: f64) -> Pacer {
        let gap_ns = 1e9 / rate;
        Pacer {
            offset_ns: (gap_ns * index as f64).round() as u64,
            period_ns: ((gap_ns * connections as f64).round() as u64).max(1),
        }
    }

    /// The intended send time of request `k`, after the run's start.
    pub(crate) fn intended(&self, k: u64) -> Duration {
        Duration::from_nanos(
            self.offset_ns
                .saturating_add(k.saturating_mul(self.period_ns)),
        )
    }
}

/// One request's timing, relative to the run's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    /// When the schedule wanted it sent.
    pub(crate) intended: Duration,
    /// When the connection became free for it: the previous response's arrival (zero for the
    /// first request).
    pub(crate) free: Duration,
    /// When it was sent.
    pub(crate) sent: Duration,
    /// When its response had fully arrived.
    pub(crate) done: Duration,
}

impl Sample {
    /// Latency corrected for coordinated omission.
    ///
    /// When the connection was still busy at the intended time (the previous response was
    /// late), the request is charged from its intended time: that wait is the system's doing.
    /// When the connection was free, the request is charged from its actual send: the gap is
    /// then only the load generator's own timer waking late (the runtime's timers have
    /// millisecond resolution), which says nothing about the system under test.
    pub(crate) fn corrected(&self) -> Duration {
        let start = if self.free > self.intended {
            self.intended
        } else {
            self.sent
        };
        self.done.saturating_sub(start)
    }

    /// Service time: from the actual send (what a closed-loop tool would report).
    pub(crate) fn service(&self) -> Duration {
        self.done.saturating_sub(self.sent)
    }
}

/// Runs `pacer`'s schedule against responses that take `service[k]` each, on one connection
/// with one request outstanding: the same rule the latency scenario follows on a socket.
#[cfg(test)]
pub(crate) fn simulate(pacer: Pacer, service: &[Duration]) -> Vec<Sample> {
    let mut free = Duration::ZERO;
    let mut out = Vec::with_capacity(service.len());
    for (k, s) in service.iter().enumerate() {
        let k = k as u64;
        // At its intended time, or as soon as the connection is free if that has passed.
        let sent = pacer.intended(k).max(free);
        let done = sent + *s;
        out.push(Sample {
            intended: pacer.intended(k),
            free,
            sent,
            done,
        });
        free = done;
    }
    out
}

/// Microseconds, with a unit that keeps 3–4 significant digits.
pub(crate) fn fmt_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 10_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else if us >= 1_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.1} µs")
    }
}

/// Bytes per second as MB/s (10^6 bytes) and Gbit/s.
pub(crate) fn fmt_rate(bytes_per_sec: f64) -> String {
    format!(
        "{:.1} MB/s ({:.2} Gbit/s)",
        bytes_per_sec / 1e6,
        bytes_per_sec * 8.0 / 1e9
    )
}

/// A non-negative count of seconds from the command line.
pub(crate) fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
        return Err(format!(
            "{s:?}: seconds must be more than 0 and at most 86400"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn a_stalled_response_is_charged_to_every_request_queued_behind_it() {
        // 100 requests/s on one connection: one every 10 ms. Every response takes 1 ms except
        // request 2, which stalls for 100 ms.
        let pacer = Pacer::new(0, 1, 100.0);
        let mut service = vec![ms(1); 20];
        service[2] = ms(100);
        let samples = simulate(pacer, &service);

        let corrected: Vec<u64> = samples
            .iter()
            .map(|s| s.corrected().as_millis() as u64)
            .collect();
        // Request 2 was due at 20 ms and finished at 120 ms. Requests 3..=12 were due at 30,
        // 40, …, 120 ms but could only go out as the one before finished, 1 ms apart from
        // 120 ms on: each is charged the time it waited. Request 13 (due 130 ms) finds the
        // connection free again, and latency is back to 1 ms.
        assert_eq!(
            corrected,
            vec![
                1, 1, 100, 91, 82, 73, 64, 55, 46, 37, 28, 19, 10, 1, 1, 1, 1, 1, 1, 1
            ]
        );

        // Measured from the actual send, the stall looks like a single slow sample.
        let service_ms: Vec<u64> = samples
            .iter()
            .map(|s| s.service().as_millis() as u64)
            .collect();
        assert_eq!(service_ms.iter().filter(|&&v| v > 1).count(), 1);

        // The histograms tell two different stories at p90.
        let mut hc = new_histogram();
        let mut hs = new_histogram();
        for s in &samples {
            record(&mut hc, s.corrected());
            record(&mut hs, s.service());
        }
        let (pc, ps) = (Percentiles::of(&hc), Percentiles::of(&hs));
        assert!(pc.p90_us > 80_000.0, "corrected p90 {}", pc.p90_us);
        assert!(ps.p90_us < 1_100.0, "uncorrected p90 {}", ps.p90_us);
        assert_eq!(pc.max_us.round(), ps.max_us.round());
    }

    #[test]
    fn a_late_timer_is_not_charged_but_a_busy_connection_is() {
        // Free since 5 ms, due at 10 ms, the timer woke at 10.8 ms: 0.8 ms of our own lag.
        let on_time = Sample {
            intended: ms(10),
            free: ms(5),
            sent: Duration::from_micros(10_800),
            done: Duration::from_micros(11_000),
        };
        assert_eq!(on_time.corrected(), Duration::from_micros(200));
        assert_eq!(on_time.service(), Duration::from_micros(200));
        // Due at 10 ms, but the previous response only came at 14 ms.
        let queued = Sample {
            intended: ms(10),
            free: ms(14),
            sent: Duration::from_micros(14_010),
            done: Duration::from_micros(14_210),
        };
        assert_eq!(queued.corrected(), Duration::from_micros(4_210));
        assert_eq!(queued.service(), Duration::from_micros(200));
    }

    #[test]
    fn requests_go_out_on_schedule_when_responses_are_fast() {
        let pacer = Pacer::new(0, 1, 1000.0);
        let samples = simulate(pacer, &[Duration::from_micros(200); 5]);
        for (k, s) in samples.iter().enumerate() {
            assert_eq!(s.sent, ms(k as u64));
            assert_eq!(s.corrected(), Duration::from_micros(200));
            assert_eq!(s.corrected(), s.service());
        }
    }

    #[test]
    fn connections_are_staggered_to_an_even_aggregate_rate() {
        // 4 connections sharing 1000 requests/s: each sends every 4 ms, offset by 1 ms.
        let pacers: Vec<Pacer> = (0..4).map(|i| Pacer::new(i, 4, 1000.0)).collect();
        let mut times: Vec<Duration> = pacers
            .iter()
            .flat_map(|p| (0..3).map(|k| p.intended(k)))
            .collect();
        times.sort();
        let expect: Vec<Duration> = (0..12).map(ms).collect();
        assert_eq!(times, expect);
    }

    #[test]
    fn percentiles_are_read_from_the_histogram() {
        let mut h = new_histogram();
        // 1..=1000 µs, one sample each.
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.002 + 0.001;
        assert!(close(p.p50_us, 500.0), "p50 {}", p.p50_us);
        assert!(close(p.p90_us, 900.0), "p90 {}", p.p90_us);
        assert!(close(p.p99_us, 990.0), "p99 {}", p.p99_us);
        assert!(close(p.p999_us, 999.0), "p99.9 {}", p.p999_us);
        assert!(close(p.max_us, 1000.0), "max {}", p.max_us);
        assert!(close(p.mean_us, 500.5), "mean {}", p.mean_us);
    }

    #[test]
    fn empty_and_out_of_range_histograms() {
        let h = new_histogram();
        assert_eq!(Percentiles::of(&h).count, 0);
        assert_eq!(Percentiles::of(&h).max_us, 0.0);
        let mut h = new_histogram();
        record(&mut h, Duration::ZERO);
        record(&mut h, Duration::from_secs(3600));
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 2);
        assert!(p.max_us >= 59_000_000.0 && p.max_us <= 61_000_000.0);
    }

    #[test]
    fn formatting_and_seconds() {
        assert_eq!(fmt_us(12.34), "12.3 µs");
        assert_eq!(fmt_us(1234.0), "1.23 ms");
        assert_eq!(fmt_us(12_345.0), "12.3 ms");
        assert_eq!(fmt_us(2_500_000.0), "2.50 s");
        assert_eq!(fmt_rate(125e6), "125.0 MB/s (1.00 Gbit/s)");
        assert_eq!(parse_seconds("0.5"), Ok(ms(500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("x").is_err());
        assert!(parse_seconds("inf").is_err());
    }
}
