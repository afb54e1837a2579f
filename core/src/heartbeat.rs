//! Heartbeats: when to ping, and when a silent peer is dead.
//!
//! The hub pings every `heartbeat_ms`; the agent answers with pongs and expects those pings. On
//! either side, a session from which nothing at all has been heard for three intervals is dead:
//! its streams are reset and the agent reconnects. Any received byte counts as a sign of life,
//! so a busy session never dies for want of a pong stuck behind data.

use crate::time::Millis;

/// How many silent intervals make a peer dead.
pub const DEAD_AFTER_INTERVALS: u64 = 3;

/// What the driver should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatAction {
    /// Nothing until [`Heartbeat::next_deadline`].
    Wait,
    /// Send a WebSocket ping now.
    SendPing,
    /// The peer has been silent for three intervals: end the session (close code 4408).
    Dead,
}

/// The heartbeat timers of one session.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    interval_ms: u64,
    sends_pings: bool,
    last_heard: Millis,
    next_ping: Millis,
}

impl Heartbeat {
    /// Timers for a session that started at `now`. `sends_pings` is true on the hub.
    pub fn new(now: Millis, interval_ms: u64, sends_pings: bool) -> Heartbeat {
        let interval_ms = interval_ms.max(1);
        Heartbeat {
            interval_ms,
            sends_pings,
            last_heard: now,
            next_ping: now + interval_ms,
        }
    }

    /// Records that something arrived from the peer at `now`.
    pub fn on_received(&mut self, now: Millis) {
        self.last_heard = self.last_heard.max(now);
    }

    /// When the peer is declared dead if it stays silent.
    pub fn dead_at(&self) -> Millis {
        self.last_heard + self.interval_ms.saturating_mul(DEAD_AFTER_INTERVALS)
    }

    /// What to do at `now`. After [`HeartbeatAction::SendPing`] the next ping is scheduled one
    /// interval later.
    pub fn poll(&mut self, now: Millis) -> HeartbeatAction {
        if now >= self.dead_at() {
            return HeartbeatAction::Dead;
        }
        if self.sends_pings && now >= self.next_ping {
            self.next_ping = now + self.interval_ms;
            return HeartbeatAction::SendPing;
        }
        HeartbeatAction::Wait
    }

    /// The next time [`Heartbeat::poll`] may have something to say.
    pub fn next_deadline(&self) -> Millis {
        if self.sends_pings {
            self.next_ping.min(self.dead_at())
        } else {
            self.dead_at()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_pings_every_interval_and_declares_death_after_three() {
        let mut hb = Heartbeat::new(Millis(0), 100, true);
        assert_eq!(hb.poll(Millis(99)), HeartbeatAction::Wait);
        assert_eq!(hb.next_deadline(), Millis(100));
        assert_eq!(hb.poll(Millis(100)), HeartbeatAction::SendPing);
        assert_eq!(hb.poll(Millis(150)), HeartbeatAction::Wait);
        assert_eq!(hb.poll(Millis(200)), HeartbeatAction::SendPing);
        assert_eq!(hb.poll(Millis(299)), HeartbeatAction::Wait);
        assert_eq!(hb.poll(Millis(300)), HeartbeatAction::Dead);
    }

    #[test]
    fn anything_heard_keeps_the_session_alive() {
        let mut hb = Heartbeat::new(Millis(0), 100, false);
        hb.on_received(Millis(250));
        assert_eq!(hb.poll(Millis(300)), HeartbeatAction::Wait);
        assert_eq!(hb.next_deadline(), Millis(550));
        assert_eq!(hb.poll(Millis(549)), HeartbeatAction::Wait);
        assert_eq!(hb.poll(Millis(550)), HeartbeatAction::Dead);
    }

    #[test]
    fn agent_never_pings() {
        let mut hb = Heartbeat::new(Millis(0), 100, false);
        for t in (0..300).step_by(10) {
            assert_eq!(hb.poll(Millis(t)), HeartbeatAction::Wait);
        }
    }
}
