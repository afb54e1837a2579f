//! All streams of one tunnel session, for the hub role and the agent role.
//!
//! A [`Session`] is driven, never driving: the caller hands it decoded frames with
//! [`Session::recv`], tells it what its sockets did ([`Session::send_data`],
//! [`Session::consumed`], [`Session::finish`], [`Session::reset`]), and calls
//! [`Session::sweep_idle`] when [`Session::next_idle_deadline`] comes. Frames the session wants
//! sent (OPEN, OPEN_OK, FIN, RST, WINDOW, and DATA given by copy) accumulate in one transmit
//! buffer, in the order the calls were made; the driver sends [`Session::transmit`] and then
//! [`Session::clear_transmit`].
//!
//! # Ordering with zero-copy DATA
//! A driver that builds DATA frames in its own buffers with [`Session::seal_data`] must send
//! whatever [`Session::transmit`] holds before each such frame, so that for instance an OPEN
//! always precedes the early DATA behind it, and a FIN never overtakes DATA.
//!
//! # What the peer can do wrong
//! A rule broken on one stream (window overrun, DATA after FIN, …) resets that stream with RST 5
//! and the session goes on. Drivers must send [`Session::transmit`] after each batch of input:
//! frames a peer provokes are bounded by [`MAX_TRANSMIT_BACKLOG`]. A frame that makes the session itself untrustworthy (an OPEN sent to
//! the hub, a reused or never-opened stream id, malformed framing) is a [`SessionError`]: the
//! driver closes the WebSocket with code 4400. Frames for streams that were open but are gone
//! (a reset crossing a DATA in flight) are expected and ignored.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::control::Welcome;
use crate::frame::{self, Frame, FrameError, HeadroomError, RstCode, RstReason, StreamId};
use crate::name::ConnectorName;
use crate::stream::{Half, Phase, SendError, Stream, Violation};
use crate::sweeper::DeadlineQueue;
use crate::time::Millis;

/// Which end of the tunnel a session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Opens streams for clients that connected to a listener.
    Hub,
    /// Connects streams the hub opened to local targets.
    Agent,
}

/// The parameters both ends agreed on (the hub decides them and announces them in WELCOME).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Credit window of each stream, each direction, in bytes.
    pub window: u32,
    /// Longest DATA payload.
    pub max_frame: u32,
    /// A stream with no bytes moving for this long is reset with RST 4.
    pub idle_timeout_ms: u64,
    /// Most streams open at once on this session.
    pub max_streams: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            window: 256 * 1024,
            max_frame: 64 * 1024,
            idle_timeout_ms: 300_000,
            max_streams: 65_536,
        }
    }
}

impl SessionConfig {
    /// The agent's view of a session, from the hub's WELCOME.
    pub fn from_welcome(welcome: &Welcome, max_streams: u32) -> SessionConfig {
        SessionConfig {
            window: welcome.window,
            max_frame: welcome.max_frame,
            idle_timeout_ms: welcome.idle_timeout_ms,
            max_streams,
        }
    }
}

/// Who ended a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The peer sent RST.
    Peer,
    /// This side reset it (the RST frame is already queued for the peer).
    Local,
}

/// What a received frame means for the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Agent: the hub opened a stream. Dial the connector's target, then call
    /// [`Session::accept`] or [`Session::reset`]. DATA may arrive before that; keep it until the
    /// dial completes (the window bounds how much).
    Opened {
        /// The new stream.
        id: StreamId,
        /// The connector to dial.
        connector: ConnectorName,
        /// The client's address as the hub saw it.
        peer: SocketAddr,
    },
    /// Hub: the agent reached the target.
    OpenOk {
        /// The stream.
        id: StreamId,
    },
    /// Bytes for the stream's socket. Call [`Session::consumed`] once they are written.
    Data {
        /// The stream.
        id: StreamId,
        /// The bytes, borrowed from the frame.
        data: &'a [u8],
    },
    /// The peer finished sending: shut down the socket's write side after the data delivered
    /// before. `closed` is true when this side had finished too, so the stream is gone.
    Finished {
        /// The stream.
        id: StreamId,
        /// Whether the stream is now gone.
        closed: bool,
    },
    /// The stream is gone: answer its socket with a TCP RST.
    Reset {
        /// The stream.
        id: StreamId,
        /// Why.
        code: RstCode,
        /// The free-text reason, if any.
        reason: RstReason,
        /// Who reset it.
        origin: Origin,
    },
    /// Credit arrived: the stream may send up to `credit` bytes now.
    Writable {
        /// The stream.
        id: StreamId,
        /// Current credit.
        credit: u32,
    },
}

/// A frame that ends the whole session (close code 4400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The bytes were not valid frames.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The frame type never travels in this direction.
    #[error("{frame} frame received by the {role:?}")]
    WrongDirection {
        /// The frame type.
        frame: &'static str,
        /// Our role.
        role: Role,
    },
    /// An OPEN reused a stream id, or went backwards.
    #[error("OPEN for stream {id} after stream {highest}: ids must increase")]
    StreamIdReuse {
        /// The id in the OPEN.
        id: StreamId,
        /// The highest id opened before.
        highest: u32,
    },
    /// A frame named a stream that was never opened.
    #[error("frame for stream {0}, which was never opened")]
    UnknownStream(StreamId),
    /// The frames the peer made us queue (RSTs, WINDOWs) pile up unsent: the driver stopped
    /// sending while it kept reading, or the peer floods us while not reading.
    #[error("{0} bytes of frames queued for the peer are unsent")]
    Backlog(usize),
}

/// The most bytes of frames the peer provoked (RSTs, WINDOWs, OPEN_OKs: everything but this
/// side's own DATA, which the windows bound) that [`Session::transmit`] may hold when a frame
/// arrives. A driver that sends the transmit buffer after each batch of input never comes near
/// it; past it, [`Session::recv`] fails with [`SessionError::Backlog`] rather than let a peer
/// grow the queue without bound.
pub const MAX_TRANSMIT_BACKLOG: usize = 4 << 20;

/// Why the hub could not open a stream on this session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// GOAWAY was sent: no new streams here.
    #[error("session is going away")]
    GoingAway,
    /// The session holds `max_streams` streams.
    #[error("session has the maximum number of streams")]
    TooManyStreams,
    /// Every stream id was used; open a new session.
    #[error("stream ids exhausted")]
    IdsExhausted,
    /// Only the hub opens streams.
    #[error("only the hub opens streams")]
    NotHub,
}

/// Counters a driver exports as metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Streams reset with RST 5 because the peer broke a rule on them.
    pub violations: u64,
    /// OPENs refused with RST 9 because the session was full.
    pub overload_refusals: u64,
    /// Frames for streams that were already gone, ignored.
    pub stale_frames: u64,
    /// Streams reset with RST 4 by the idle sweep.
    pub idle_resets: u64,
}

/// One tunnel session. See the module documentation.
#[derive(Debug)]
pub struct Session {
    role: Role,
    config: SessionConfig,
    streams: HashMap<StreamId, Stream>,
    /// Hub: the next id to assign. Agent: one past the highest id the hub opened.
    next_id: u64,
    deadlines: DeadlineQueue,
    transmit: Vec<u8>,
    /// Bytes of `transmit` that are DATA frames this side queued within credit: bounded by
    /// the windows, so not counted against [`MAX_TRANSMIT_BACKLOG`].
    transmit_data: usize,
    going_away: bool,
    stats: SessionStats,
}

impl Session {
    /// A session with no streams yet.
    pub fn new(role: Role, config: SessionConfig) -> Session {
        Session {
            role,
            config,
            streams: HashMap::new(),
            next_id: 1,
            deadlines: DeadlineQueue::new(),
            transmit: Vec::new(),
            transmit_data: 0,
            going_away: false,
            stats: SessionStats::default(),
        }
    }

    /// This session's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The agreed parameters.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Counters for metrics.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Streams currently open.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// A stream's state, if it is open.
    pub fn stream(&self, id: StreamId) -> Option<&Stream> {
        self.streams.get(&id)
    }

    /// Frames waiting to be sent, in order, as the payload of WebSocket binary messages.
    pub fn transmit(&self) -> &[u8] {
        &self.transmit
    }

    /// Forgets the frames in [`Session::transmit`] after the driver sent them.
    pub fn clear_transmit(&mut self) {
        self.transmit.clear();
        self.transmit_data = 0;
    }

    /// Hands the waiting frames over by swapping buffers with `out` (cleared first): no copy,
    /// and both allocations are kept for reuse.
    pub fn swap_transmit(&mut self, out: &mut Vec<u8>) {
        out.clear();
        std::mem::swap(&mut self.transmit, out);
        self.transmit_data = 0;
    }

    /// Moves the waiting frames to the end of `out`, keeping both allocations.
    pub fn drain_transmit_into(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.transmit);
        self.transmit.clear();
        self.transmit_data = 0;
    }

    /// Hub: opens a stream to `connector` for the client at `peer` and queues the OPEN.
    pub fn open(
        &mut self,
        now: Millis,
        connector: &ConnectorName,
        peer: SocketAddr,
    ) -> Result<StreamId, OpenError> {
        if self.role != Role::Hub {
            return Err(OpenError::NotHub);
        }
        if self.going_away {
            return Err(OpenError::GoingAway);
        }
        if self.streams.len() >= self.config.max_streams as usize {
            return Err(OpenError::TooManyStreams);
        }
        if self.next_id > u64::from(u32::MAX) {
            return Err(OpenError::IdsExhausted);
        }
        let id = StreamId(self.next_id as u32);
        self.next_id += 1;
        self.insert(now, id);
        frame::encode_open(&mut self.transmit, id, connector, peer);
        Ok(id)
    }

    /// Agent: the target accepted the connection; queues OPEN_OK.
    pub fn accept(&mut self, id: StreamId) -> Result<(), SendError> {
        let stream = self.streams.get_mut(&id).ok_or(SendError::UnknownStream)?;
        if stream.phase == Phase::Established {
            return Ok(());
        }
        stream.phase = Phase::Established;
        frame::encode_open_ok(&mut self.transmit, id);
        Ok(())
    }

    /// Bytes `id` may send now (never more than one frame's worth at a time: see
    /// [`SessionConfig::max_frame`]). Zero for unknown streams and, on the agent, for streams
    /// not yet accepted.
    pub fn send_credit(&self, id: StreamId) -> u32 {
        match self.streams.get(&id) {
            Some(s) if self.role == Role::Agent && s.phase == Phase::Opening => 0,
            Some(s) => s.send_credit(),
            None => 0,
        }
    }

    fn check_send(&mut self, now: Millis, id: StreamId, len: usize) -> Result<(), SendError> {
        let max_frame = self.config.max_frame;
        let role = self.role;
        let stream = self.streams.get_mut(&id).ok_or(SendError::UnknownStream)?;
        if role == Role::Agent && stream.phase == Phase::Opening {
            return Err(SendError::NotEstablished);
        }
        if len > max_frame as usize {
            return Err(SendError::OverCredit {
                len,
                allowed: max_frame.min(stream.send_credit()),
            });
        }
        stream.on_send(now, len)
    }

    /// Queues a DATA frame carrying a copy of `payload`, within the stream's credit and the
    /// maximum frame size.
    pub fn send_data(
        &mut self,
        now: Millis,
        id: StreamId,
        payload: &[u8],
    ) -> Result<(), SendError> {
        self.check_send(now, id, payload.len())?;
        frame::encode_data(&mut self.transmit, id, payload);
        self.transmit_data += frame::HEADER_LEN + payload.len();
        Ok(())
    }

    /// Queues a DATA frame whose payload `fill` appends straight to the transmit buffer, which
    /// saves [`Session::send_data`]'s copy when the bytes come from a non-blocking read.
    /// `fill` gets the buffer and the most it may append (the stream's credit, capped at the
    /// maximum frame) and returns how many bytes it appended, or its own error. Appending
    /// nothing queues nothing and returns `Ok(Ok(0))`; so does a stream without credit, whose
    /// `fill` is not called. On `fill`'s error, or if it appended more than it was allowed,
    /// the buffer is restored.
    pub fn send_data_from<E>(
        &mut self,
        now: Millis,
        id: StreamId,
        fill: impl FnOnce(&mut Vec<u8>, usize) -> Result<usize, E>,
    ) -> Result<Result<usize, E>, SendError> {
        if !self.streams.contains_key(&id) {
            return Err(SendError::UnknownStream);
        }
        let room = (self.send_credit(id).min(self.config.max_frame)) as usize;
        if room == 0 {
            return Ok(Ok(0));
        }
        let start = self.transmit.len();
        let payload_start = start + frame::HEADER_LEN;
        self.transmit.resize(payload_start, 0);
        let filled = fill(&mut self.transmit, room);
        let len = self.transmit.len() - payload_start;
        match filled {
            Ok(n) if n == len && n > 0 => {
                if let Err(e) = self.check_send(now, id, n) {
                    self.transmit.truncate(start);
                    return Err(e);
                }
                frame::encode_data_header_before(&mut self.transmit, payload_start, id, n as u32)
                    .map_err(SendError::Headroom)?;
                self.transmit_data += frame::HEADER_LEN + n;
                Ok(Ok(n))
            }
            Ok(n) => {
                self.transmit.truncate(start);
                if n == 0 && len == 0 {
                    Ok(Ok(0))
                } else {
                    Err(SendError::OverCredit {
                        len: len.max(n),
                        allowed: room as u32,
                    })
                }
            }
            Err(e) => {
                self.transmit.truncate(start);
                Ok(Err(e))
            }
        }
    }

    /// Accounts for `len` bytes the caller placed at `buf[payload_start..]` and writes the DATA
    /// header in front of them. Returns where the frame starts in `buf`. Send
    /// [`Session::transmit`] first (see the module documentation).
    pub fn seal_data(
        &mut self,
        now: Millis,
        id: StreamId,
        buf: &mut [u8],
        payload_start: usize,
        len: usize,
    ) -> Result<usize, SendError> {
        if payload_start < frame::HEADER_LEN {
            return Err(SendError::Headroom(HeadroomError {
                needed: frame::HEADER_LEN,
                available: payload_start,
            }));
        }
        self.check_send(now, id, len)?;
        frame::encode_data_header_before(buf, payload_start, id, len as u32)
            .map_err(SendError::Headroom)
    }

    /// This side will send no more on `id`; queues FIN. Returns whether the stream is now gone
    /// (the peer had finished too).
    pub fn finish(&mut self, id: StreamId) -> Result<bool, SendError> {
        let stream = self.streams.get_mut(&id).ok_or(SendError::UnknownStream)?;
        if stream.send == Half::Finished {
            return Err(SendError::Finished);
        }
        if self.role == Role::Agent && stream.phase == Phase::Opening {
            return Err(SendError::NotEstablished);
        }
        stream.send = Half::Finished;
        let done = stream.is_done();
        frame::encode_fin(&mut self.transmit, id);
        if done {
            self.remove(id);
        }
        Ok(done)
    }

    /// Aborts `id` and queues RST with `code`. Returns false if there was no such stream.
    pub fn reset(&mut self, id: StreamId, code: RstCode, reason: &str) -> bool {
        if self.streams.contains_key(&id) {
            frame::encode_rst(&mut self.transmit, id, code, reason);
            self.remove(id);
            true
        } else {
            false
        }
    }

    /// `len` bytes delivered by [`Event::Data`] were written to the stream's socket at `now`;
    /// returns credit to the peer once enough has gathered.
    pub fn consumed(&mut self, now: Millis, id: StreamId, len: usize) {
        let threshold = (self.config.window / 4).max(1);
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        if let Some(increment) = stream.on_consumed(now, len, threshold) {
            frame::encode_window(&mut self.transmit, id, increment);
        }
    }

    /// Hub: marks the session as going away. Open no new streams; the driver sends GOAWAY.
    pub fn go_away(&mut self) {
        self.going_away = true;
    }

    /// Whether GOAWAY was sent (hub) or received (agent).
    pub fn is_going_away(&self) -> bool {
        self.going_away
    }

    /// Whether the session is going away and its last stream has ended.
    pub fn is_drained(&self) -> bool {
        self.going_away && self.streams.is_empty()
    }

    /// The session ended (closed, dead, or failed): forgets every stream and appends their ids
    /// to `out`, so the driver resets their sockets. Queues nothing: there is no one to tell.
    pub fn end(&mut self, out: &mut Vec<StreamId>) {
        out.extend(self.streams.keys().copied());
        self.streams.clear();
        self.deadlines.rebuild([]);
        self.transmit.clear();
        self.transmit_data = 0;
        self.going_away = true;
    }

    /// Entries in the idle-deadline queue, live or stale; bounded by twice the open streams
    /// plus a constant.
    pub fn pending_deadlines(&self) -> usize {
        self.deadlines.len()
    }

    /// The earliest time at which [`Session::sweep_idle`] may find an idle stream.
    pub fn next_idle_deadline(&self) -> Option<Millis> {
        self.deadlines.next_deadline()
    }

    /// Resets every stream idle for `idle_timeout_ms` at `now` with RST 4, appending their ids
    /// to `expired`. Costs in proportion to the entries that came due, not to all streams.
    pub fn sweep_idle(&mut self, now: Millis, expired: &mut Vec<StreamId>) {
        let timeout = self.config.idle_timeout_ms;
        while let Some((_, id)) = self.deadlines.pop_due(now) {
            let Some(stream) = self.streams.get(&id) else {
                continue; // closed since it was queued
            };
            let deadline = stream.last_activity + timeout;
            if deadline <= now {
                frame::encode_rst(&mut self.transmit, id, RstCode::Idle, "idle timeout");
                self.streams.remove(&id);
                self.stats.idle_resets += 1;
                expired.push(id);
            } else {
                self.deadlines.push(deadline, id);
            }
        }
        self.maybe_rebuild_deadlines();
    }

    /// Handles one decoded frame from the peer at `now`.
    pub fn recv<'a>(
        &mut self,
        now: Millis,
        frame: Frame<'a>,
    ) -> Result<Option<Event<'a>>, SessionError> {
        self.check_backlog()?;
        if let Frame::Open {
            stream,
            connector,
            peer,
        } = frame
        {
            return self.recv_open(now, stream, connector, peer);
        }
        if matches!(frame, Frame::OpenOk { .. }) && self.role == Role::Agent {
            return Err(SessionError::WrongDirection {
                frame: "OPEN_OK",
                role: self.role,
            });
        }
        let id = frame.stream();
        if !self.streams.contains_key(&id) {
            return if u64::from(id.0) >= self.next_id {
                Err(SessionError::UnknownStream(id))
            } else {
                self.stats.stale_frames += 1;
                Ok(None)
            };
        }
        let role = self.role;
        let window = self.config.window;
        let Some(stream) = self.streams.get_mut(&id) else {
            return Ok(None);
        };
        let awaiting_open_ok = role == Role::Hub && stream.phase == Phase::Opening;
        let outcome = match frame {
            // Handled before the stream lookup.
            Frame::Open { .. } => return Ok(None),
            Frame::OpenOk { .. } => {
                if stream.phase == Phase::Established {
                    Err(Violation::DuplicateOpenOk)
                } else {
                    stream.phase = Phase::Established;
                    Ok(Event::OpenOk { id })
                }
            }
            Frame::Data { .. } | Frame::Fin { .. } if awaiting_open_ok => {
                Err(Violation::BeforeOpenOk)
            }
            Frame::Data { payload, .. } => match stream.on_recv(now, payload.len() as u32) {
                // An empty DATA frame passes the same checks and then means nothing.
                Ok(()) if payload.is_empty() => return Ok(None),
                Ok(()) => Ok(Event::Data { id, data: payload }),
                Err(violation) => Err(violation),
            },
            Frame::Fin { .. } => {
                if stream.recv == Half::Finished {
                    Err(Violation::DuplicateFin)
                } else {
                    stream.recv = Half::Finished;
                    let closed = stream.is_done();
                    if closed {
                        self.remove(id);
                    }
                    Ok(Event::Finished { id, closed })
                }
            }
            Frame::Rst { code, reason, .. } => {
                self.remove(id);
                Ok(Event::Reset {
                    id,
                    code,
                    reason,
                    origin: Origin::Peer,
                })
            }
            Frame::Window { increment, .. } => {
                stream
                    .on_window(increment, window)
                    .map(|()| Event::Writable {
                        id,
                        credit: if role == Role::Agent && stream.phase == Phase::Opening {
                            0
                        } else {
                            stream.send_credit()
                        },
                    })
            }
        };
        Ok(Some(match outcome {
            Ok(event) => event,
            Err(violation) => self.violation(id, violation),
        }))
    }

    /// Accounts for `len` payload bytes of a DATA frame for `id` that the driver moved from
    /// the connection towards the stream's socket without reading them (`splice(2)`), with the
    /// checks [`Session::recv`] applies to a DATA frame carrying them. `Ok(None)`: accepted, and
    /// the driver calls [`Session::consumed`] as the socket takes them. A violation resets the
    /// stream and comes back as its [`Event::Reset`]. The driver moves bytes only for streams
    /// it knows, within [`Stream::recv_credit`].
    pub fn recv_moved(
        &mut self,
        now: Millis,
        id: StreamId,
        len: u32,
    ) -> Result<Option<Event<'static>>, SessionError> {
        self.check_backlog()?;
        let role = self.role;
        let Some(stream) = self.streams.get_mut(&id) else {
            return Err(SessionError::UnknownStream(id));
        };
        let outcome = if role == Role::Hub && stream.phase == Phase::Opening {
            Err(Violation::BeforeOpenOk)
        } else {
            stream.on_recv(now, len)
        };
        Ok(outcome.err().map(|violation| self.violation(id, violation)))
    }

    /// Fails once the frames the peer provoked (all but our own DATA, which the windows bound)
    /// pile up unsent beyond [`MAX_TRANSMIT_BACKLOG`].
    fn check_backlog(&self) -> Result<(), SessionError> {
        let provoked = self.transmit.len() - self.transmit_data;
        if provoked > MAX_TRANSMIT_BACKLOG {
            return Err(SessionError::Backlog(provoked));
        }
        Ok(())
    }

    fn recv_open<'a>(
        &mut self,
        now: Millis,
        id: StreamId,
        connector: ConnectorName,
        peer: SocketAddr,
    ) -> Result<Option<Event<'a>>, SessionError> {
        if self.role == Role::Hub {
            return Err(SessionError::WrongDirection {
                frame: "OPEN",
                role: self.role,
            });
        }
        if u64::from(id.0) < self.next_id {
            return Err(SessionError::StreamIdReuse {
                id,
                highest: (self.next_id - 1) as u32,
            });
        }
        self.next_id = u64::from(id.0) + 1;
        if self.streams.len() >= self.config.max_streams as usize {
            self.stats.overload_refusals += 1;
            frame::encode_rst(
                &mut self.transmit,
                id,
                RstCode::Overload,
                "too many streams",
            );
            return Ok(None);
        }
        self.insert(now, id);
        Ok(Some(Event::Opened {
            id,
            connector,
            peer,
        }))
    }

    fn violation<'a>(&mut self, id: StreamId, violation: Violation) -> Event<'a> {
        self.stats.violations += 1;
        let mut reason = [0u8; frame::MAX_RST_REASON];
        let text = format_into(&mut reason, format_args!("{violation}"));
        frame::encode_rst(&mut self.transmit, id, RstCode::ProtocolViolation, text);
        self.remove(id);
        Event::Reset {
            id,
            code: RstCode::ProtocolViolation,
            reason: RstReason::new(text),
            origin: Origin::Local,
        }
    }

    fn insert(&mut self, now: Millis, id: StreamId) {
        self.streams
            .insert(id, Stream::new(now, self.config.window));
        self.deadlines.push(now + self.config.idle_timeout_ms, id);
    }

    fn remove(&mut self, id: StreamId) {
        self.streams.remove(&id);
        self.maybe_rebuild_deadlines();
    }

    fn maybe_rebuild_deadlines(&mut self) {
        if self.deadlines.needs_rebuild(self.streams.len()) {
            let timeout = self.config.idle_timeout_ms;
            self.deadlines.rebuild(
                self.streams
                    .iter()
                    .map(|(id, s)| (s.last_activity + timeout, *id)),
            );
        }
    }
}

/// Formats into a stack buffer without allocating, cutting at a char boundary when full.
fn format_into<'b>(buf: &'b mut [u8], args: std::fmt::Arguments<'_>) -> &'b str {
    struct Cursor<'c> {
        buf: &'c mut [u8],
        len: usize,
    }
    impl std::fmt::Write for Cursor<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let room = self.buf.len() - self.len;
            let mut take = s.len().min(room);
            while !s.is_char_boundary(take) {
                take -= 1;
            }
            self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
            self.len += take;
            Ok(())
        }
    }
    let mut cursor = Cursor { buf, len: 0 };
    let _ = std::fmt::write(&mut cursor, args);
    let len = cursor.len;
    std::str::from_utf8(&buf[..len]).unwrap_or_default()
}
