//! The monotonic clock the agent hands to the sans-IO core.

use std::sync::OnceLock;
use std::time::Instant;

use nowconnect_core::time::Millis;

/// The process's time origin, fixed on first use.
static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call, from a monotonic clock: what every core call takes as
/// `now`.
pub(crate) fn now() -> Millis {
    let origin = *ORIGIN.get_or_init(Instant::now);
    Millis(u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX))
}
