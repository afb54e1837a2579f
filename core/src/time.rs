//! The clock value drivers pass in.
//!
//! The core never reads a clock. Every call that depends on time takes a [`Millis`]: milliseconds
//! since an origin the driver chooses (process start, say). Only differences matter, so a test can
//! start its simulated clock at zero and step it by hand.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time, in milliseconds since a driver-chosen origin.
///
/// Values from different drivers are not comparable; within one driver they must never go
/// backwards (use a monotonic clock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    /// The origin.
    pub const ZERO: Millis = Millis(0);

    /// Milliseconds elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The value as a [`Duration`] since the origin.
    pub fn as_duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

impl Add<u64> for Millis {
    type Output = Millis;

    fn add(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }
}

impl Sub<u64> for Millis {
    type Output = Millis;

    fn sub(self, ms: u64) -> Millis {
        Millis(self.0.saturating_sub(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Millis(u64::MAX) + 5, Millis(u64::MAX));
        assert_eq!(Millis(3) - 5, Millis::ZERO);
        assert_eq!(Millis(10).saturating_since(Millis(4)), 6);
        assert_eq!(Millis(4).saturating_since(Millis(10)), 0);
    }
}
