//! One stream's state and its credit windows.
//!
//! A stream is opened by the hub, confirmed by the agent, and then carries bytes both ways until
//! each side has sent FIN, or either side sends RST. Each direction has a credit window: the
//! sender may have at most `window` bytes outstanding that the receiver has not yet handed to
//! its socket. The receiver returns credit with WINDOW once bytes leave its hands, so neither
//! side ever holds more than one window of a stream's bytes.
//!
//! This module holds the per-stream rules; [`crate::session`] applies them to frames.

use crate::frame::HeadroomError;
use crate::time::Millis;

/// Where a stream is in its opening.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Hub: OPEN sent, no OPEN_OK yet (DATA may already follow the OPEN).
    /// Agent: OPEN received, the target is being dialled.
    Opening,
    /// OPEN_OK was sent (agent) or received (hub).
    Established,
}

/// The state of one direction of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    /// Bytes may still flow.
    Open,
    /// FIN was sent or received: no more DATA this way.
    Finished,
}

/// A rule of the protocol a peer broke on one stream; answered with RST 5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The peer sent more DATA than the credit it had.
    #[error("window overrun: {len} bytes with {credit} bytes of credit")]
    WindowOverrun {
        /// Bytes received.
        len: u32,
        /// Credit the peer had.
        credit: u32,
    },
    /// DATA arrived after the peer's FIN.
    #[error("DATA after FIN")]
    DataAfterFin,
    /// A second FIN arrived.
    #[error("FIN after FIN")]
    DuplicateFin,
    /// The agent sent DATA or FIN before OPEN_OK.
    #[error("DATA or FIN before OPEN_OK")]
    BeforeOpenOk,
    /// OPEN_OK arrived for a stream already established.
    #[error("duplicate OPEN_OK")]
    DuplicateOpenOk,
    /// A WINDOW increment would give more credit than the window.
    #[error("WINDOW increment {increment} exceeds the window ({credit} credit of {window})")]
    CreditOverflow {
        /// The increment.
        increment: u32,
        /// Credit held before it.
        credit: u32,
        /// The window.
        window: u32,
    },
    /// A WINDOW frame with increment zero.
    #[error("WINDOW increment of zero")]
    ZeroIncrement,
}

/// A local misuse of a stream, reported to the driver (never caused by the peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No such stream (never opened, or already closed).
    #[error("no such stream")]
    UnknownStream,
    /// The stream's send side is finished.
    #[error("stream already finished sending")]
    Finished,
    /// More bytes than the stream's credit, or than the maximum frame.
    #[error("{len} bytes exceed the {allowed} allowed now")]
    OverCredit {
        /// Bytes offered.
        len: usize,
        /// Bytes allowed.
        allowed: u32,
    },
    /// The agent may not send before it accepted the stream.
    #[error("stream not yet accepted")]
    NotEstablished,
    /// The buffer has no room for the frame header in front of the payload.
    #[error(transparent)]
    Headroom(#[from] HeadroomError),
}

/// One stream as the session sees it.
#[derive(Clone, Debug)]
pub struct Stream {
    /// Opening or established.
    pub phase: Phase,
    /// Our direction.
    pub send: Half,
    /// The peer's direction.
    pub recv: Half,
    /// Bytes we may still send before the peer returns credit.
    send_credit: u32,
    /// Bytes the peer may still send before we return credit.
    recv_credit: u32,
    /// Bytes handed to our socket whose credit has not been returned yet.
    recv_unreturned: u32,
    /// The last time bytes moved either way.
    pub last_activity: Millis,
}

impl Stream {
    /// A stream opened at `now` with `window` bytes of credit each way.
    pub fn new(now: Millis, window: u32) -> Stream {
        Stream {
            phase: Phase::Opening,
            send: Half::Open,
            recv: Half::Open,
            send_credit: window,
            recv_credit: window,
            recv_unreturned: 0,
            last_activity: now,
        }
    }

    /// Whether both directions are finished, so the stream is gone.
    pub fn is_done(&self) -> bool {
        self.send == Half::Finished && self.recv == Half::Finished
    }

    /// Bytes we may send now.
    pub fn send_credit(&self) -> u32 {
        match self.send {
            Half::Open => self.send_credit,
            Half::Finished => 0,
        }
    }

    /// Bytes the peer may still send before we return credit.
    pub fn recv_credit(&self) -> u32 {
        self.recv_credit
    }

    /// Accounts for `len` bytes we send.
    pub fn on_send(&mut self, now: Millis, len: usize) -> Result<(), SendError> {
        if self.send == Half::Finished {
            return Err(SendError::Finished);
        }
        if len > self.send_credit as usize {
            return Err(SendError::OverCredit {
                len,
                allowed: self.send_credit,
            });
        }
        self.send_credit -= len as u32;
        if len > 0 {
            self.last_activity = now;
        }
        Ok(())
    }

    /// Accounts for `len` bytes received from the peer.
    pub fn on_recv(&mut self, now: Millis, len: u32) -> Result<(), Violation> {
        if self.recv == Half::Finished {
            return Err(Violation::DataAfterFin);
        }
        if len > self.recv_credit {
            return Err(Violation::WindowOverrun {
                len,
                credit: self.recv_credit,
            });
        }
        self.recv_credit -= len;
        if len > 0 {
            self.last_activity = now;
        }
        Ok(())
    }

    /// Accounts for `len` received bytes handed to our socket. Returns the credit to send back
    /// in a WINDOW frame, once at least `threshold` bytes have gathered; none once the peer has
    /// finished, since it will send nothing more.
    pub fn on_consumed(&mut self, now: Millis, len: u32, threshold: u32) -> Option<u32> {
        if len > 0 {
            self.last_activity = now;
        }
        self.recv_unreturned = self.recv_unreturned.saturating_add(len);
        if self.recv == Half::Finished || self.recv_unreturned < threshold.max(1) {
            return None;
        }
        let increment = std::mem::take(&mut self.recv_unreturned);
        self.recv_credit = self.recv_credit.saturating_add(increment);
        Some(increment)
    }

    /// Accounts for a WINDOW frame from the peer. Credit may never exceed `window`.
    pub fn on_window(&mut self, increment: u32, window: u32) -> Result<(), Violation> {
        if increment == 0 {
            return Err(Violation::ZeroIncrement);
        }
        match self.send_credit.checked_add(increment) {
            Some(credit) if credit <= window => {
                self.send_credit = credit;
                Ok(())
            }
            _ => Err(Violation::CreditOverflow {
                increment,
                credit: self.send_credit,
                window,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_credit_is_spent_and_returned_within_the_window() {
        let mut s = Stream::new(Millis(0), 100);
        s.on_send(Millis(1), 60).unwrap();
        assert_eq!(s.send_credit(), 40);
        assert_eq!(
            s.on_send(Millis(1), 41),
            Err(SendError::OverCredit {
                len: 41,
                allowed: 40
            })
        );
        s.on_window(60, 100).unwrap();
        assert_eq!(s.send_credit(), 100);
        assert_eq!(
            s.on_window(1, 100),
            Err(Violation::CreditOverflow {
                increment: 1,
                credit: 100,
                window: 100
            })
        );
        assert_eq!(s.on_window(0, 100), Err(Violation::ZeroIncrement));
        assert_eq!(
            s.on_window(u32::MAX, u32::MAX),
            Err(Violation::CreditOverflow {
                increment: u32::MAX,
                credit: 100,
                window: u32::MAX
            })
        );
    }

    #[test]
    fn receive_window_is_enforced_and_credit_batched() {
        let mut s = Stream::new(Millis(0), 100);
        s.on_recv(Millis(1), 100).unwrap();
        assert_eq!(
            s.on_recv(Millis(1), 1),
            Err(Violation::WindowOverrun { len: 1, credit: 0 })
        );
        assert_eq!(s.on_consumed(Millis(2), 10, 25), None);
        assert_eq!(s.on_consumed(Millis(2), 15, 25), Some(25));
        assert_eq!(s.recv_credit(), 25);
        s.recv = Half::Finished;
        assert_eq!(s.on_consumed(Millis(3), 75, 25), None);
    }

    #[test]
    fn finished_sides_refuse_data() {
        let mut s = Stream::new(Millis(0), 100);
        s.send = Half::Finished;
        s.recv = Half::Finished;
        assert_eq!(s.on_send(Millis(0), 1), Err(SendError::Finished));
        assert_eq!(s.on_recv(Millis(0), 1), Err(Violation::DataAfterFin));
        assert_eq!(s.send_credit(), 0);
        assert!(s.is_done());
    }

    #[test]
    fn activity_is_recorded() {
        let mut s = Stream::new(Millis(5), 100);
        s.on_send(Millis(7), 0).unwrap();
        assert_eq!(s.last_activity, Millis(5));
        s.on_send(Millis(8), 1).unwrap();
        assert_eq!(s.last_activity, Millis(8));
        s.on_recv(Millis(9), 1).unwrap();
        assert_eq!(s.last_activity, Millis(9));
    }
}
