//! What `/healthz` and `/readyz` report: readiness flags and shard liveness.
//!
//! Shards tick their slot every loop turn (at least once a second); `/healthz` is healthy when
//! every shard ticked recently, so a shard stuck in a busy loop or a lost wake-up shows up.
//! `/readyz` also needs the listeners bound, the JWKS loaded and no drain in progress.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Shared between the shards and the control plane.
#[derive(Debug)]
pub struct Health {
    origin: Instant,
    listeners_bound: AtomicBool,
    jwks_loaded: AtomicBool,
    draining: AtomicBool,
    /// Milliseconds since `origin` of each shard's last tick.
    shard_ticks: Box<[AtomicU64]>,
}

/// How long a shard may go without ticking before `/healthz` fails.
pub const SHARD_STALL: Duration = Duration::from_secs(3);

impl Health {
    /// Flags for `shards` shards, none ready yet.
    pub fn new(shards: usize) -> Health {
        let origin = Instant::now();
        Health {
            origin,
            listeners_bound: AtomicBool::new(false),
            jwks_loaded: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            shard_ticks: (0..shards).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// A shard's loop is alive.
    pub fn tick(&self, shard: usize) {
        if let Some(slot) = self.shard_ticks.get(shard) {
            slot.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Every shard bound its listeners.
    pub fn set_listeners_bound(&self) {
        self.listeners_bound.store(true, Ordering::Release);
    }

    /// A JWKS was loaded at least once.
    pub fn set_jwks_loaded(&self) {
        self.jwks_loaded.store(true, Ordering::Release);
    }

    /// The hub started draining (SIGTERM).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether the hub is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The shards that have not ticked within [`SHARD_STALL`].
    pub fn stalled_shards(&self) -> Vec<usize> {
        let now = self.now_ms();
        let limit = SHARD_STALL.as_millis() as u64;
        self.shard_ticks
            .iter()
            .enumerate()
            .filter(|(_, t)| now.saturating_sub(t.load(Ordering::Relaxed)) > limit)
            .map(|(i, _)| i)
            .collect()
    }

    /// `/healthz`: every shard is alive.
    pub fn is_healthy(&self) -> bool {
        self.stalled_shards().is_empty()
    }

    /// `/readyz`: healthy, listeners bound, JWKS loaded, not draining. Returns what is missing.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if !self.listeners_bound.load(Ordering::Acquire) {
            return Err("listeners not bound");
        }
        if !self.jwks_loaded.load(Ordering::Acquire) {
            return Err("JWKS not loaded");
        }
        if self.is_draining() {
            return Err("draining");
        }
        if !self.is_healthy() {
            return Err("a shard is stalled");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_every_flag() {
        let h = Health::new(2);
        h.tick(0);
        h.tick(1);
        assert_eq!(h.readiness(), Err("listeners not bound"));
        h.set_listeners_bound();
        assert_eq!(h.readiness(), Err("JWKS not loaded"));
        h.set_jwks_loaded();
        assert_eq!(h.readiness(), Ok(()));
        h.set_draining();
        assert_eq!(h.readiness(), Err("draining"));
        assert!(h.is_healthy());
    }
}
