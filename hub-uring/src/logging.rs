//! Log lines: JSON by default, or text, at the configured level.
//!
//! `RUST_LOG` overrides `logging.level` for debugging (for instance
//! `RUST_LOG=nowconnect_hub=debug`). Tokens are never logged: the authentication code hands the
//! log a reason, not the credential.
//!
//! Warnings a network peer can set off at will go through `warn_limited!`: at most
//! [`LIMIT_BURST`] lines per call site and reason every [`LIMIT_WINDOW`], so a scanner on the
//! tunnel port or a PDP outage under load cannot flood the log; the metrics still count every
//! event.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use nowconnect_core::config::{LogFormat, LoggingConfig};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Later calls (tests) are ignored.
pub fn init(config: &LoggingConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(config.level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

/// Lines one call site of `warn_limited!` logs for one key per [`LIMIT_WINDOW`] before it
/// goes quiet.
pub const LIMIT_BURST: u32 = 10;

/// The window over which [`LIMIT_BURST`] applies.
pub const LIMIT_WINDOW: Duration = Duration::from_secs(10);

/// Keeps one call site's warnings from flooding the log when a network peer can set them off
/// at will (a scanner on the tunnel port, a PDP that is down while clients keep coming): at
/// most [`LIMIT_BURST`] lines per [`LIMIT_WINDOW`] for each key, where a key is the reason a
/// call site gives, so that a flood of one reason does not hide another. The first line
/// logged after a quiet spell says how many were left out; the metrics count every event.
#[derive(Debug)]
pub struct LogLimit {
    /// One entry per key seen: keys are `'static` reasons, a handful per call site.
    keys: Mutex<Vec<(&'static str, LimitState)>>,
}

#[derive(Debug)]
struct LimitState {
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimit {
    pub const fn new() -> LogLimit {
        LogLimit {
            keys: Mutex::new(Vec::new()),
        }
    }

    /// Whether a line for `key` may be logged now: `Some(n)` with the lines for that key left
    /// out since the last one logged, or `None` to stay quiet (and count it).
    pub fn admit(&self, key: &'static str) -> Option<u64> {
        self.admit_at(key, Instant::now())
    }

    fn admit_at(&self, key: &'static str, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let at = match keys.iter().position(|(k, _)| *k == key) {
            Some(at) => at,
            None => {
                let state = LimitState {
                    window_start: now,
                    logged: 0,
                    suppressed: 0,
                };
                keys.push((key, state));
                keys.len() - 1
            }
        };
        let state = &mut keys[at].1;
        if now.saturating_duration_since(state.window_start) >= LIMIT_WINDOW {
            state.window_start = now;
            state.logged = 0;
        }
        if state.logged < LIMIT_BURST {
            state.logged += 1;
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }
}

impl Default for LogLimit {
    fn default() -> LogLimit {
        LogLimit::new()
    }
}

/// `tracing::warn!` behind a [`LogLimit`] of its own call site: `warn_limited!(per reason;
/// fields.., "message")` limits each `'static` reason apart, `warn_limited!(fields..,
/// "message")` the call site as a whole. Lines after a quiet spell carry `suppressed`, the
/// number left out.
macro_rules! warn_limited {
    (per $key:expr; $($arg:tt)+) => {{
        static LIMIT: $crate::logging::LogLimit = $crate::logging::LogLimit::new();
        match LIMIT.admit($key) {
            Some(0) => tracing::warn!($($arg)+),
            Some(suppressed) => tracing::warn!(suppressed, $($arg)+),
            None => {}
        }
    }};
    ($($arg:tt)+) => {
        $crate::logging::warn_limited!(per ""; $($arg)+)
    };
}
pub(crate) use warn_limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_then_the_rest_of_the_window_is_counted() {
        let limit = LogLimit::new();
        let t0 = Instant::now();
        for i in 0..LIMIT_BURST {
            assert_eq!(
                limit.admit_at("", t0 + Duration::from_millis(i as u64)),
                Some(0)
            );
        }
        for _ in 0..25 {
            assert_eq!(limit.admit_at("", t0 + Duration::from_secs(1)), None);
        }
        // The next window logs again and reports what the last one left out, once.
        let next = t0 + LIMIT_WINDOW;
        assert_eq!(limit.admit_at("", next), Some(25));
        assert_eq!(limit.admit_at("", next), Some(0));
    }

    #[test]
    fn a_quiet_site_logs_every_line() {
        let limit = LogLimit::new();
        let t0 = Instant::now();
        for i in 0..100u64 {
            assert_eq!(limit.admit_at("", t0 + LIMIT_WINDOW * i as u32), Some(0));
        }
    }

    #[test]
    fn an_earlier_instant_from_a_racing_thread_does_not_reopen_the_window() {
        let limit = LogLimit::new();
        let t0 = Instant::now() + Duration::from_secs(60);
        for _ in 0..LIMIT_BURST {
            assert!(limit.admit_at("", t0).is_some());
        }
        assert_eq!(limit.admit_at("", t0 - Duration::from_secs(30)), None);
    }

    #[test]
    fn a_flood_of_one_reason_does_not_hide_another() {
        let limit = LogLimit::new();
        let t0 = Instant::now();
        for _ in 0..LIMIT_BURST * 3 {
            limit.admit_at("expired", t0);
        }
        assert_eq!(limit.admit_at("expired", t0), None);
        assert_eq!(limit.admit_at("signature", t0), Some(0));
        // Each key keeps its own count of what it left out.
        let next = t0 + LIMIT_WINDOW;
        assert_eq!(limit.admit_at("signature", next), Some(0));
        assert_eq!(
            limit.admit_at("expired", next),
            Some(LIMIT_BURST as u64 * 2 + 1)
        );
    }
}
