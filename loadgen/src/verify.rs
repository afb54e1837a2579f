//! `verify`: random traffic through an echo target, every byte checked both ways.
//!
//! Each of N workers opens connections one after another until the deadline. A connection
//! sends a random number of bytes (none to a few MiB) in writes of random sizes, sometimes
//! pausing, then half-closes; meanwhile it reads the echo, sometimes pausing too so that
//! windows fill and drain. The bytes are a keyed sequence unique to the connection and to the
//! position, so a lost, duplicated, reordered or foreign byte is caught at the first byte
//! where it differs, and the echo's half-close must come exactly after the last byte sent.
//! The run fails on the first such error of any connection, naming it and the seed, which
//! replays the same sizes and pauses.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep, timeout};

use crate::{net, progress};

/// The largest single write.
const MAX_WRITE: usize = 256 * 1024;
/// The largest connection, in bytes sent.
const MAX_CONNECTION_BYTES: u64 = 4 << 20;
/// How long any read or write may block before the connection counts as stalled.
const STALL: Duration = Duration::from_secs(15);

/// What to run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// An echo target, or the hub listener in front of one.
    pub(crate) addr: SocketAddr,
    /// Concurrent workers, each with one connection at a time.
    pub(crate) streams: usize,
    /// How long to keep opening connections.
    pub(crate) duration: Duration,
    /// Seed of every random choice.
    pub(crate) seed: u64,
}

/// The outcome of a verify run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct VerifyResult {
    /// Where it ran.
    pub(crate) addr: String,
    /// The seed that replays this run's choices.
    pub(crate) seed: u64,
    /// Concurrent workers.
    pub(crate) streams: usize,
    /// Connections that completed with every byte checked.
    pub(crate) connections: u64,
    /// Of those, connections that sent nothing and only half-closed.
    pub(crate) empty_connections: u64,
    /// Bytes sent and received back intact, each direction counted once.
    pub(crate) bytes_verified: u64,
    /// What went wrong; empty when the run passed.
    pub(crate) failures: Vec<String>,
}

impl VerifyResult {
    /// A human-readable report.
    pub(crate) fn report(&self) -> String {
        let mut out = format!(
            "verify to {} (seed {}): {} workers, {} connections ({} empty), {} bytes checked both ways, {}\n",
            self.addr,
            self.seed,
            self.streams,
            self.connections,
            self.empty_connections,
            self.bytes_verified,
            if self.failures.is_empty() {
                "no error".to_string()
            } else {
                format!("{} FAILED", self.failures.len())
            }
        );
        for f in &self.failures {
            out += &format!("  error: {f}\n");
        }
        out
    }
}

/// SplitMix64: a small, fast generator; good enough for sizes, pauses and byte keys.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (`n > 0`), close enough for test traffic.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The byte at `pos` of the sequence keyed by `key`.
fn byte_at(key: u64, pos: u64) -> u8 {
    (mix(key ^ (pos / 8).wrapping_mul(0xD6E8_FEB8_6659_FD93)) >> ((pos % 8) * 8)) as u8
}

/// Fills `buf` with the sequence of `key` from `pos`.
pub(crate) fn fill(key: u64, pos: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = byte_at(key, pos + i as u64);
    }
}

/// The position of the first byte of `data` that is not the sequence of `key` from `pos`.
pub(crate) fn first_mismatch(key: u64, pos: u64, data: &[u8]) -> Option<u64> {
    data.iter()
        .enumerate()
        .find(|(i, b)| **b != byte_at(key, pos + *i as u64))
        .map(|(i, _)| pos + i as u64)
}

/// Runs the scenario.
pub(crate) async fn run(opts: Options) -> Result<VerifyResult, String> {
    if opts.streams == 0 {
        return Err("--streams must be at least 1".into());
    }
    let deadline = Instant::now() + opts.duration;
    let mut tasks = Vec::with_capacity(opts.streams);
    for worker in 0..opts.streams {
        let seed = mix(opts.seed ^ (worker as u64 + 1));
        tasks.push(tokio::spawn(worker_loop(opts.addr, seed, deadline)));
    }
    let mut result = VerifyResult {
        addr: opts.addr.to_string(),
        seed: opts.seed,
        streams: opts.streams,
        connections: 0,
        empty_connections: 0,
        bytes_verified: 0,
        failures: Vec::new(),
    };
    for (worker, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(w) => {
                result.connections += w.connections;
                result.empty_connections += w.empty;
                result.bytes_verified += w.bytes;
                if let Some(e) = w.failure {
                    result.failures.push(format!("worker {worker}: {e}"));
                }
            }
            Err(e) => result
                .failures
                .push(format!("worker {worker}: task failed: {e}")),
        }
    }
    if result.connections == 0 && result.failures.is_empty() {
        result
            .failures
            .push("no connection completed before the deadline".into());
    }
    Ok(result)
}

#[derive(Default)]
struct WorkerOutcome {
    connections: u64,
    empty: u64,
    bytes: u64,
    failure: Option<String>,
}

async fn worker_loop(addr: SocketAddr, seed: u64, deadline: Instant) -> WorkerOutcome {
    let mut rng = Rng::new(seed);
    let mut out = WorkerOutcome::default();
    let mut n = 0u64;
    while Instant::now() < deadline {
        let key = rng.next_u64();
        // A tenth of the connections send nothing; the rest a size spread over 0..4 MiB,
        // small ones more often (a random power of two, then a random size below it).
        let len = if rng.below(10) == 0 {
            0
        } else {
            let cap = 1u64 << (4 + rng.below(19));
            rng.below(cap.min(MAX_CONNECTION_BYTES) + 1)
        };
        let plan = Plan {
            key,
            len,
            choices: rng.next_u64(),
        };
        match one_connection(addr, plan).await {
            Ok(()) => {
                out.connections += 1;
                out.bytes += len;
                if len == 0 {
                    out.empty += 1;
                }
            }
            Err(e) => {
                out.failure = Some(format!("connection {n} (key {key:#x}, {len} bytes): {e}"));
                return out;
            }
        }
        n += 1;
    }
    out
}

/// One connection's random choices.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Key of the byte sequence.
    key: u64,
    /// Bytes to send before half-closing.
    len: u64,
    /// Seed of the write sizes and pauses.
    choices: u64,
}

async fn one_connection(addr: SocketAddr, plan: Plan) -> Result<(), String> {
    let conn = net::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut reader, mut writer) = conn.into_split();
    let write = async move {
        let mut rng = Rng::new(plan.choices);
        let mut buf = vec![0u8; MAX_WRITE];
        let mut pos = 0u64;
        while pos < plan.len {
            let n = (1 + rng.below(MAX_WRITE as u64)).min(plan.len - pos) as usize;
            fill(plan.key, pos, &mut buf[..n]);
            timeout(STALL, writer.write_all(&buf[..n]))
                .await
                .map_err(|_| format!("write stalled at byte {pos}"))?
                .map_err(|e| format!("write at byte {pos}: {e}"))?;
            pos += n as u64;
            if rng.below(16) == 0 {
                sleep(Duration::from_millis(rng.below(5))).await;
            }
        }
        writer
            .shutdown()
            .await
            .map_err(|e| format!("half-close: {e}"))
    };
    let read = async move {
        let mut rng = Rng::new(!plan.choices);
        let mut buf = vec![0u8; 64 * 1024];
        let mut pos = 0u64;
        loop {
            if rng.below(32) == 0 {
                // A slow reader for a moment: the echo's window fills up behind it.
                sleep(Duration::from_millis(rng.below(20))).await;
            }
            let n = timeout(STALL, reader.read(&mut buf))
                .await
                .map_err(|_| format!("read stalled at byte {pos} of {}", plan.len))?
                .map_err(|e| format!("read at byte {pos} of {}: {e}", plan.len))?;
            if n == 0 {
                break;
            }
            if pos + n as u64 > plan.len {
                return Err(format!(
                    "{} bytes came back, more than the {} sent (duplicated bytes)",
                    pos + n as u64,
                    plan.len
                ));
            }
            if let Some(at) = first_mismatch(plan.key, pos, &buf[..n]) {
                return Err(format!(
                    "byte {at} came back wrong (lost, reordered or foreign bytes)"
                ));
            }
            pos += n as u64;
            progress::add(n as u64);
        }
        if pos != plan.len {
            return Err(format!(
                "the echo half-closed after {pos} of {} bytes (bytes lost)",
                plan.len
            ));
        }
        Ok(())
    };
    let (w, r) = tokio::join!(write, read);
    // A read error explains a write error (a reset), so it is reported first.
    r.and(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{self, TargetKind};

    #[test]
    fn the_sequence_catches_loss_duplication_and_reordering() {
        let key = 0xfeed;
        let mut data = vec![0u8; 4096];
        fill(key, 100, &mut data);
        assert_eq!(first_mismatch(key, 100, &data), None);
        // A dropped byte shifts everything behind it.
        let mut lost = data.clone();
        lost.remove(1000);
        assert_eq!(first_mismatch(key, 100, &lost), Some(1100));
        // Two chunks swapped.
        let mut swapped = data.clone();
        swapped[..512].rotate_left(256);
        assert_eq!(first_mismatch(key, 100, &swapped), Some(100));
        // Bytes of another connection.
        let mut other = vec![0u8; 64];
        fill(key + 1, 100, &mut other);
        assert!(first_mismatch(key, 100, &other).is_some());
        // A repeated chunk of any length, unlike a short periodic pattern.
        for len in [251, 256, 4096 - 251] {
            let mut dup = data.clone();
            dup.copy_within(0..len, len.min(4096 - len));
            assert!(
                first_mismatch(key, 100, &dup).is_some(),
                "duplicate of {len}"
            );
        }
    }

    #[test]
    fn the_generator_is_deterministic_and_spread() {
        let a: Vec<u64> = (0..5).map(|_| Rng::new(7).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut rng = Rng::new(7);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[rng.below(10) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_echo_passes() {
        let addr = target::spawn(TargetKind::Echo, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let r = run(Options {
            addr,
            streams: 4,
            duration: Duration::from_millis(500),
            seed: 1,
        })
        .await
        .unwrap();
        assert!(r.failures.is_empty(), "{:?}", r.failures);
        assert!(r.connections >= 4, "{}", r.connections);
        assert!(r.bytes_verified > 0);
    }

    /// An echo that corrupts one byte of every connection that sends more than 100 bytes.
    async fn corrupting_echo() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut total = 0usize;
                    loop {
                        let n = match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if total <= 100 && total + n > 100 {
                            buf[100 - total] ^= 1;
                        }
                        total += n;
                        if conn.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = conn.shutdown().await;
                });
            }
        });
        addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupted_byte_fails_the_run() {
        let r = run(Options {
            addr: corrupting_echo().await,
            streams: 2,
            duration: Duration::from_millis(300),
            seed: 3,
        })
        .await
        .unwrap();
        assert!(!r.failures.is_empty());
        assert!(
            r.failures[0].contains("byte 100 came back wrong"),
            "{:?}",
            r.failures
        );
    }
}
