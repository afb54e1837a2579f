//! `idle`: many open, silent connections — what each costs the hub and the agent, and whether
//! the idle sweeper closes every one in time.
//!
//! Opens N connections to an echo target (through a hub listener), each exchanging one byte
//! so the stream is known to be open end to end, then holds them silent. The resident memory
//! of the hub and agent processes (`VmRSS` in `/proc/PID/status`) is sampled before and after;
//! the difference over N is the cost per idle stream. With the hub's idle timeout and sweep
//! interval given, it then waits for every connection to be closed by the hub and checks that
//! each closed no later than `idle_timeout + sweep_interval` after its last byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep, timeout_at};

use crate::{net, progress};

/// Connections opened at once.
const OPEN_CONCURRENCY: usize = 64;
/// How long memory may settle after the last connection opened.
const SETTLE: Duration = Duration::from_secs(1);
/// Allowance on top of `idle_timeout + sweep_interval` for the reset to travel from the hub
/// to this process and wake the connection's reader: with thousands of streams expiring in
/// the same sweep, the last of them is read a few milliseconds after the first. Reported
/// with the result; a close within the bound and beyond it is counted apart.
pub(crate) const DELIVERY_ALLOWANCE: Duration = Duration::from_millis(50);

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// An echo target, or the hub listener in front of one.
    pub(crate) addr: SocketAddr,
    /// Connections to open and hold.
    pub(crate) connections: usize,
    /// The hub's process, for its memory.
    pub(crate) hub_pid: Option<u32>,
    /// The agent's process, for its memory.
    pub(crate) agent_pid: Option<u32>,
    /// The hub's `idle_timeout_ms` and `sweep_interval_ms`: when given, the sweep is checked.
    pub(crate) sweep: Option<(Duration, Duration)>,
}

/// Memory of one process before and after the connections opened.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MemoryCost {
    /// Which process.
    pub(crate) process: String,
    /// Resident bytes before.
    pub(crate) rss_before: u64,
    /// Resident bytes with every connection open and idle.
    pub(crate) rss_after: u64,
    /// `(after - before) / connections`, in bytes.
    pub(crate) bytes_per_connection: f64,
}

/// Whether the sweeper closed every connection in time.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SweepCheck {
    /// `idle_timeout + sweep_interval`, in milliseconds.
    pub(crate) bound_ms: f64,
    /// The delivery allowance on top of the bound, in milliseconds.
    pub(crate) allowance_ms: f64,
    /// Connections closed no later than the bound after their last byte.
    pub(crate) in_time: usize,
    /// Connections closed after the bound but within the delivery allowance.
    pub(crate) within_allowance: usize,
    /// Connections closed after the bound and the allowance.
    pub(crate) late: usize,
    /// Connections still open well after the bound.
    pub(crate) never: usize,
    /// Earliest and latest close, in milliseconds after the connection's last byte.
    pub(crate) first_close_ms: f64,
    pub(crate) last_close_ms: f64,
}

/// The outcome of an idle run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct IdleResult {
    /// Where it ran.
    pub(crate) addr: String,
    /// Connections opened and held.
    pub(crate) connections: usize,
    /// Seconds it took to open them all.
    pub(crate) open_seconds: f64,
    /// Memory per process, for the processes given.
    pub(crate) memory: Vec<MemoryCost>,
    /// The sweep check, when asked for.
    pub(crate) sweep: Option<SweepCheck>,
    /// What went wrong; empty when the run passed.
    pub(crate) failures: Vec<String>,
}

impl IdleResult {
    /// A human-readable report.
    pub(crate) fn report(&self) -> String {
        let mut out = format!(
            "idle to {}: {} connections opened in {:.2} s\n",
            self.addr, self.connections, self.open_seconds
        );
        for m in &self.memory {
            out += &format!(
                "  {:<6} rss {:.1} MiB -> {:.1} MiB: {:.0} bytes per idle connection\n",
                m.process,
                m.rss_before as f64 / 1048576.0,
                m.rss_after as f64 / 1048576.0,
                m.bytes_per_connection
            );
        }
        if let Some(s) = &self.sweep {
            out += &format!(
                "  sweep  bound {:.0} ms: {} closed in time, {} within {:.0} ms more, {} late, {} never; closes from {:.0} to {:.0} ms after the last byte\n",
                s.bound_ms,
                s.in_time,
                s.within_allowance,
                s.allowance_ms,
                s.late,
                s.never,
                s.first_close_ms,
                s.last_close_ms
            );
        }
        for f in &self.failures {
            out += &format!("  error: {f}\n");
        }
        out
    }
}

/// The hub and agent processes given, with their names for the report.
pub(crate) fn named_processes(hub: Option<u32>, agent: Option<u32>) -> Vec<(String, u32)> {
    [("hub", hub), ("agent", agent)]
        .into_iter()
        .filter_map(|(name, pid)| Some((name.to_owned(), pid?)))
        .collect()
}

/// Resident memory of `pid` in bytes, from `/proc/PID/status`.
pub(crate) fn rss_bytes(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    parse_vm_rss(&text).ok_or_else(|| format!("{path} has no VmRSS line"))
}

/// The `VmRSS:` line of a `/proc/PID/status` text, in bytes.
pub(crate) fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(value * 1024),
        Some(_) => None,
    }
}

/// Runs the scenario.
pub(crate) async fn run(opts: Options) -> Result<IdleResult, String> {
    if opts.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    let processes = named_processes(opts.hub_pid, opts.agent_pid);
    let mut before = Vec::new();
    for (_, pid) in &processes {
        before.push(rss_bytes(*pid)?);
    }

    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(OPEN_CONCURRENCY));
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Notify::new());
    let give_up = opts.sweep.map(|(idle, interval)| {
        // Waiting goes on a while past the bound, so a late close is told from a missing one.
        (idle + interval) * 2 + Duration::from_secs(2)
    });
    let mut tasks = Vec::with_capacity(opts.connections);
    for i in 0..opts.connections {
        let permits = permits.clone();
        let opened = opened_tx.clone();
        let release = release.clone();
        let addr = opts.addr;
        tasks.push(tokio::spawn(async move {
            let permit = permits.acquire_owned().await;
            let held = open_one(addr).await;
            drop(permit);
            let held = match held {
                Ok(held) => {
                    progress::add(1);
                    let _ = opened.send(Ok(()));
                    held
                }
                Err(e) => {
                    let _ = opened.send(Err(format!("connection {i}: {e}")));
                    return None;
                }
            };
            // Watch for the close from the start, so its time is known exactly; without a
            // sweep to check, just hold the connection until released.
            match give_up {
                Some(give_up) => Some(wait_closed(held, give_up).await),
                None => {
                    release.notified().await;
                    None
                }
            }
        }));
    }
    drop(opened_tx);
    // Every task reports once, then keeps its sender while it holds its connection: count
    // the reports rather than wait for the channel to close.
    let mut open = 0usize;
    let mut failures = Vec::new();
    for _ in 0..opts.connections {
        match opened_rx.recv().await {
            Some(Ok(())) => open += 1,
            Some(Err(e)) => failures.push(e),
            None => break,
        }
    }
    let open_seconds = started.elapsed().as_secs_f64();
    if !failures.is_empty() {
        let n = failures.len();
        failures.truncate(5);
        failures.push(format!(
            "{n} of {} connections failed to open (raise `ulimit -n` for many connections)",
            opts.connections
        ));
    }

    sleep(SETTLE).await;
    let mut memory = Vec::new();
    for ((name, pid), rss_before) in processes.iter().zip(before) {
        let rss_after = rss_bytes(*pid)?;
        memory.push(MemoryCost {
            process: name.clone(),
            rss_before,
            rss_after,
            bytes_per_connection: (rss_after as f64 - rss_before as f64) / open.max(1) as f64,
        });
    }
    release.notify_waiters();

    let mut closes = Vec::new();
    for task in tasks {
        if let Ok(Some(closed)) = task.await {
            closes.push(closed);
        }
    }
    let sweep = match opts.sweep {
        Some((idle, interval)) if open > 0 => {
            let check = classify(&closes, idle + interval, DELIVERY_ALLOWANCE);
            if check.late + check.never > 0 {
                failures.push(format!(
                    "{} connections closed late and {} never (bound {:.0} ms + {:.0} ms allowance)",
                    check.late, check.never, check.bound_ms, check.allowance_ms
                ));
            }
            Some(check)
        }
        _ => None,
    };
    Ok(IdleResult {
        addr: opts.addr.to_string(),
        connections: opts.connections,
        open_seconds,
        memory,
        sweep,
        failures,
    })
}

/// An open connection and when its last byte went through.
struct Held {
    conn: TcpStream,
    last_byte: Instant,
}

/// Connects and exchanges one byte with the echo.
async fn open_one(addr: SocketAddr) -> Result<Held, String> {
    let mut conn = net::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let exchange = async {
        conn.write_all(b"i").await?;
        let mut one = [0u8; 1];
        conn.read_exact(&mut one).await?;
        Ok::<_, std::io::Error>(one[0])
    };
    match timeout_at(deadline, exchange).await {
        Ok(Ok(b'i')) => Ok(Held {
            conn,
            last_byte: Instant::now(),
        }),
        Ok(Ok(other)) => Err(format!("the echo answered {other:#04x}")),
        Ok(Err(e)) => Err(format!("first byte: {e}")),
        Err(_) => Err("no echo of the first byte within 10 s".into()),
    }
}

/// Waits for the other side to close `held` (EOF or reset); how long after the connection's
/// last byte that came, or `None` if it did not within `give_up`.
async fn wait_closed(mut held: Held, give_up: Duration) -> Option<Duration> {
    let mut buf = [0u8; 16];
    let limit = held.last_byte + give_up;
    loop {
        match timeout_at(limit, held.conn.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(n)) if n > 0 => continue,
            Ok(_) => return Some(held.last_byte.elapsed()),
        }
    }
}

/// Classifies each connection's close against `bound` (and `allowance` more) after its last
/// byte.
fn classify(closes: &[Option<Duration>], bound: Duration, allowance: Duration) -> SweepCheck {
    let mut check = SweepCheck {
        bound_ms: bound.as_secs_f64() * 1000.0,
        allowance_ms: allowance.as_secs_f64() * 1000.0,
        in_time: 0,
        within_allowance: 0,
        late: 0,
        never: 0,
        first_close_ms: f64::INFINITY,
        last_close_ms: 0.0,
    };
    for close in closes {
        match close {
            None => check.never += 1,
            Some(after) => {
                let ms = after.as_secs_f64() * 1000.0;
                check.first_close_ms = check.first_close_ms.min(ms);
                check.last_close_ms = check.last_close_ms.max(ms);
                if *after <= bound {
                    check.in_time += 1;
                } else if *after <= bound + allowance {
                    check.within_allowance += 1;
                } else {
                    check.late += 1;
                }
            }
        }
    }
    if !check.first_close_ms.is_finite() {
        check.first_close_ms = 0.0;
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{self, TargetKind};

    #[test]
    fn closes_are_classified_against_the_bound() {
        let ms = Duration::from_millis;
        let closes = [
            Some(ms(100)),
            Some(ms(600)),
            Some(ms(601)),
            Some(ms(651)),
            None,
        ];
        let c = classify(&closes, ms(600), ms(50));
        assert_eq!(
            (c.in_time, c.within_allowance, c.late, c.never),
            (2, 1, 1, 1)
        );
        assert_eq!(c.first_close_ms, 100.0);
        assert_eq!(c.last_close_ms, 651.0);
    }

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\thub\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(5120 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
        assert!(rss_bytes(std::process::id()).unwrap() > 1024 * 1024);
        assert!(rss_bytes(u32::MAX).is_err());
    }

    /// An echo that closes every connection `after` its last byte, like the hub's sweeper.
    async fn sweeping_echo(after: Duration) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut one = [0u8; 1];
                    if conn.read_exact(&mut one).await.is_ok() {
                        let _ = conn.write_all(&one).await;
                        sleep(after).await;
                    }
                });
            }
        });
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closes_within_the_bound_pass_and_late_ones_fail() {
        let me = std::process::id();
        let r = run(Options {
            addr: sweeping_echo(Duration::from_millis(300)).await,
            connections: 20,
            hub_pid: Some(me),
            agent_pid: None,
            sweep: Some((Duration::from_millis(400), Duration::from_millis(200))),
        })
        .await
        .unwrap();
        assert!(r.failures.is_empty(), "{:?}", r.failures);
        assert_eq!(r.memory.len(), 1);
        let s = r.sweep.unwrap();
        assert_eq!(s.in_time, 20);
        assert!(s.first_close_ms >= 250.0, "{}", s.first_close_ms);

        let late = run(Options {
            addr: sweeping_echo(Duration::from_millis(900)).await,
            connections: 5,
            hub_pid: None,
            agent_pid: None,
            sweep: Some((Duration::from_millis(400), Duration::from_millis(200))),
        })
        .await
        .unwrap();
        assert_eq!(late.sweep.unwrap().late, 5);
        assert_eq!(late.failures.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_sweep_check_the_connections_are_held_then_released() {
        let addr = target::spawn(TargetKind::Echo, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            run(Options {
                addr,
                connections: 10,
                hub_pid: Some(std::process::id()),
                agent_pid: None,
                sweep: None,
            }),
        )
        .await
        .expect("idle returns once memory is sampled")
        .unwrap();
        assert!(r.failures.is_empty(), "{:?}", r.failures);
        assert!(r.sweep.is_none());
        assert_eq!(r.memory.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plain_echo_never_sweeps() {
        let addr = target::spawn(TargetKind::Echo, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let r = run(Options {
            addr,
            connections: 3,
            hub_pid: None,
            agent_pid: None,
            sweep: Some((Duration::from_millis(100), Duration::from_millis(50))),
        })
        .await
        .unwrap();
        assert_eq!(r.sweep.unwrap().never, 3);
        assert!(!r.failures.is_empty());
    }
}
