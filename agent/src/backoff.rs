//! Reconnect delays: exponential backoff with full jitter.
//!
//! The ceiling starts at 0.5 s and doubles with each failure up to 30 s; the delay is drawn
//! uniformly between zero and the ceiling ("full jitter"), so that agents cut off together do
//! not come back together. A session that stayed up long enough resets the ceiling.

use std::time::Duration;

/// The first ceiling.
pub(crate) const BASE: Duration = Duration::from_millis(500);

/// The highest ceiling.
pub(crate) const CAP: Duration = Duration::from_secs(30);

/// A session up at least this long counts as healthy: the next failure starts from [`BASE`].
pub(crate) const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// The backoff state of one lane.
#[derive(Clone, Debug, Default)]
pub(crate) struct Backoff {
    failures: u32,
}

impl Backoff {
    /// A backoff with no failures yet.
    pub(crate) fn new() -> Backoff {
        Backoff::default()
    }

    /// The ceiling for the next delay: `BASE · 2^failures`, at most [`CAP`].
    pub(crate) fn ceiling(&self) -> Duration {
        let base = BASE.as_millis() as u64;
        let ceiling = base.saturating_mul(1u64 << self.failures.min(32));
        Duration::from_millis(ceiling.min(CAP.as_millis() as u64))
    }

    /// The delay before the next attempt, counting one more failure. `uniform(n)` returns a
    /// value drawn uniformly from `0..=n`; tests inject their own.
    pub(crate) fn next_delay(&mut self, uniform: impl FnOnce(u64) -> u64) -> Duration {
        let ceiling = self.ceiling().as_millis() as u64;
        self.failures = self.failures.saturating_add(1);
        Duration::from_millis(uniform(ceiling).min(ceiling))
    }

    /// Forgets past failures (the last session stayed up for [`HEALTHY_AFTER`]).
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A value drawn uniformly from `0..=max` with the OS random source.
pub(crate) fn uniform(max: u64) -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // Without randomness, fall back to the ceiling: still bounded, merely unjittered.
        return max;
    }
    match max.checked_add(1) {
        // A modulo bias of at most 2^-33 for ceilings of 30 000 is irrelevant for jitter.
        Some(range) => u64::from_le_bytes(bytes) % range,
        None => u64::from_le_bytes(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_from_half_a_second_to_thirty() {
        let mut b = Backoff::new();
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay(|max| max);
        }
        assert_eq!(
            ceilings,
            [
                500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000
            ]
        );
    }

    #[test]
    fn delay_is_drawn_between_zero_and_the_ceiling() {
        let mut b = Backoff::new();
        let mut seen = Vec::new();
        assert_eq!(
            b.next_delay(|max| {
                seen.push(max);
                0
            }),
            Duration::ZERO
        );
        assert_eq!(b.next_delay(|max| max), Duration::from_millis(1000));
        // A misbehaving source cannot push the delay past the ceiling.
        assert_eq!(b.next_delay(|_| u64::MAX), Duration::from_millis(2000));
        assert_eq!(seen, [500]);
    }

    #[test]
    fn never_exceeds_the_cap_after_many_failures() {
        let mut b = Backoff::new();
        for _ in 0..1000 {
            assert!(b.next_delay(|max| max) <= CAP);
        }
        assert_eq!(b.ceiling(), CAP);
    }

    #[test]
    fn reset_starts_again_from_the_base() {
        let mut b = Backoff::new();
        for _ in 0..5 {
            b.next_delay(|max| max);
        }
        b.reset();
        assert_eq!(b.next_delay(|max| max), BASE);
    }

    #[test]
    fn os_uniform_stays_in_range() {
        for max in [0, 1, 500, 30_000, u64::MAX] {
            for _ in 0..100 {
                assert!(uniform(max) <= max);
            }
        }
    }
}
