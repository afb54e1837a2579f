//! Driving one established session: a reader task that feeds the hub's bytes through the
//! WebSocket and frame decoders into the core [`Session`], and a writer task that sends what
//! the session queued as masked WebSocket messages.
//!
//! Everything the session's tasks and its streams' tasks share sits behind one mutex in a
//! [`Link`]. It is held only for short, synchronous steps (decoding a read, queueing a frame),
//! never across an await. Whoever queues frames calls [`Link::flush`]; the writer then takes
//! the whole transmit buffer at once, so frames queued by many streams between two writes go
//! out together.

use std::collections::{BTreeMap, HashMap};
use std::io::IoSlice;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nowconnect_core::config::TargetAddr;
use nowconnect_core::control::{ControlError, ControlMessage, Welcome};
use nowconnect_core::frame::{FrameDecoder, FrameError, RstCode, StreamId};
use nowconnect_core::heartbeat::{Heartbeat, HeartbeatAction};
use nowconnect_core::name::ConnectorName;
use nowconnect_core::session::{Event, Role, Session, SessionConfig, SessionError};
use nowconnect_core::time::Millis;
use nowconnect_core::ws::{self, CloseCode, CloseFrame, Opcode, WsError};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;

use crate::clock;
use crate::connect::{Connected, Io};
use crate::health::ReadyGuard;
use crate::stream::{self, StreamEntry};
use crate::wire;

/// The most streams one session carries at once; further OPENs are answered with RST 9. The
/// hub's default limit is the same.
pub(crate) const MAX_STREAMS: u32 = 65_536;

/// How long streams may take to finish after SIGTERM before their sessions are closed.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How often idle streams are swept and the heartbeat is checked.
const TICK: Duration = Duration::from_secs(1);

/// How long the writer may take to send the final Close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Size of the buffer the hub's bytes are read into.
const READ_BUF: usize = 256 * 1024;

/// What the session's tasks and its streams' tasks share.
pub(crate) struct Link {
    state: Mutex<Shared>,
    wake_writer: Notify,
}

/// The mutable part of a [`Link`].
pub(crate) struct Shared {
    /// The protocol state.
    pub(crate) session: Session,
    /// The streams' tasks, by stream id. An entry exists exactly while the core knows the
    /// stream.
    pub(crate) streams: HashMap<StreamId, StreamEntry>,
    /// Masked WebSocket control frames (pongs) to send before the next binary message.
    control: Vec<u8>,
    /// Once set, the writer sends this Close frame after everything queued and stops.
    close: Option<(CloseCode, &'static str)>,
    /// Whether new OPENs are refused with RST 9 (the agent is shutting down).
    refuse_opens: bool,
}

impl Link {
    /// Locks the shared state. A panic in another task while holding the lock leaves the
    /// state as consistent as any single step leaves it, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Shared> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes the writer to send whatever is queued.
    pub(crate) fn flush(&self) {
        self.wake_writer.notify_one();
    }
}

impl Shared {
    /// Forgets a stream that ended normally: its writer task finishes what is queued.
    pub(crate) fn forget_stream(&mut self, id: StreamId) {
        self.streams.remove(&id);
    }

    /// Forgets a stream that was reset: its target socket is closed with a TCP RST.
    pub(crate) fn abort_stream(&mut self, id: StreamId) {
        if let Some(entry) = self.streams.remove(&id) {
            entry.signals.reset.notify_one();
        }
    }
}

/// What a session needs besides its connection.
pub(crate) struct SessionParams {
    /// The hub URL, for logs.
    pub(crate) hub: String,
    /// The lane, for logs.
    pub(crate) lane: u32,
    /// Connector name → target.
    pub(crate) connectors: Arc<BTreeMap<ConnectorName, TargetAddr>>,
    /// How long a target dial may take.
    pub(crate) dial_timeout: Duration,
    /// Flips to true on SIGTERM/SIGINT.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Fired when the hub sends GOAWAY, so the lane opens a replacement at once.
    pub(crate) goaway: oneshot::Sender<()>,
    /// Fired by the lane once a session opened with a rotated token replaced this one: stop
    /// counting for readiness, let the running streams finish, then close with 1000.
    pub(crate) drain: oneshot::Receiver<()>,
    /// Counts this session as up for `/readyz` until GOAWAY or its end.
    pub(crate) ready: ReadyGuard,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum End {
    /// The hub closed the TCP connection.
    #[error("hub closed the connection")]
    Eof,
    /// Reading from the hub failed.
    #[error("reading from the hub failed: {0}")]
    Read(std::io::Error),
    /// Writing to the hub failed.
    #[error("writing to the hub failed")]
    Write,
    /// The hub broke the WebSocket protocol.
    #[error("WebSocket protocol error: {0}")]
    Ws(WsError),
    /// The hub broke the tunnel protocol.
    #[error("tunnel protocol error: {0}")]
    Protocol(String),
    /// The hub sent a Close frame.
    #[error("hub closed the session with code {}{}", .0.as_ref().map_or(1005, |c| c.code.0), .0.as_ref().map(|c| format!(": {}", c.reason)).unwrap_or_default())]
    Closed(Option<CloseFrame>),
    /// Nothing arrived for three heartbeat intervals.
    #[error("heartbeat timeout: nothing heard from the hub for three intervals")]
    Heartbeat,
    /// GOAWAY was received, or a replacement took over, and the last stream ended.
    #[error("drained")]
    Drained,
    /// The agent is shutting down.
    #[error("agent shutting down")]
    Shutdown,
}

impl End {
    /// The Close frame to send, if the connection can still carry one.
    fn close(&self) -> Option<(CloseCode, &'static str)> {
        match self {
            End::Eof | End::Read(_) | End::Write => None,
            End::Ws(err) => Some((err.close_code(), "websocket protocol error")),
            End::Protocol(_) => Some((CloseCode::TUNNEL_PROTOCOL_ERROR, "protocol error")),
            End::Closed(frame) => Some((
                frame
                    .as_ref()
                    .map(|c| c.code)
                    .filter(|c| c.is_allowed_on_wire())
                    .unwrap_or(CloseCode::NORMAL),
                "",
            )),
            End::Heartbeat => Some((CloseCode::HEARTBEAT_TIMEOUT, "heartbeat timeout")),
            End::Drained => Some((CloseCode::NORMAL, "drained")),
            End::Shutdown => Some((CloseCode::GOING_AWAY, "agent shutting down")),
        }
    }

    /// Whether this is an orderly end rather than a failure.
    fn is_orderly(&self) -> bool {
        match self {
            End::Drained | End::Shutdown => true,
            End::Closed(frame) => frame
                .as_ref()
                .is_none_or(|c| matches!(c.code.0, 1000 | 1001)),
            _ => false,
        }
    }
}

impl From<SessionError> for End {
    fn from(err: SessionError) -> End {
        End::Protocol(err.to_string())
    }
}

impl From<FrameError> for End {
    fn from(err: FrameError) -> End {
        End::Protocol(err.to_string())
    }
}

impl From<ControlError> for End {
    fn from(err: ControlError) -> End {
        End::Protocol(err.to_string())
    }
}

/// Runs a session until it ends, then resets whatever streams are left.
pub(crate) async fn run(connected: Connected, params: SessionParams) {
    let Connected {
        io,
        decoder,
        leftover,
        owed,
        welcome,
    } = connected;
    let config = SessionConfig::from_welcome(&welcome, MAX_STREAMS);
    let link = Arc::new(Link {
        state: Mutex::new(Shared {
            session: Session::new(Role::Agent, config),
            streams: HashMap::new(),
            control: owed,
            close: None,
            refuse_opens: false,
        }),
        wake_writer: Notify::new(),
    });
    let (read, write) = tokio::io::split(io);
    let mut writer = tokio::spawn(write_loop(Arc::clone(&link), write));
    link.flush();

    let hub = params.hub.clone();
    let lane = params.lane;
    let session_id = welcome.session.clone();
    let mut reader = Reader {
        link: Arc::clone(&link),
        decoder,
        frames: FrameDecoder::new(welcome.max_frame),
        heartbeat: Heartbeat::new(clock::now(), welcome.heartbeat_ms, false),
        params,
        goaway_seen: false,
        drain_asked: false,
        shutdown_deadline: None,
    };
    let end = reader.run(read, leftover, &mut writer).await;

    // Reset the streams first: their clients should not wait for the Close handshake.
    {
        let mut st = link.lock();
        let mut ids = Vec::new();
        st.session.end(&mut ids);
        for id in ids {
            st.abort_stream(id);
        }
        st.close = end.close();
    }
    link.flush();
    if !writer.is_finished()
        && tokio::time::timeout(CLOSE_TIMEOUT, &mut writer)
            .await
            .is_err()
    {
        writer.abort();
    }
    if end.is_orderly() {
        tracing::info!(hub = %hub, lane, session = %session_id, reason = %end, "session ended");
    } else {
        tracing::warn!(hub = %hub, lane, session = %session_id, reason = %end, "session failed");
    }
}

/// The reading side of a session and its timers.
struct Reader {
    link: Arc<Link>,
    decoder: ws::Decoder,
    frames: FrameDecoder,
    heartbeat: Heartbeat,
    params: SessionParams,
    goaway_seen: bool,
    /// Whether the lane's drain request arrived (or can no longer arrive).
    drain_asked: bool,
    shutdown_deadline: Option<Millis>,
}

impl Reader {
    async fn run(
        &mut self,
        mut read: ReadHalf<Box<dyn Io>>,
        mut leftover: Vec<u8>,
        writer: &mut JoinHandle<()>,
    ) -> End {
        if let Err(end) = self.process(clock::now(), &mut leftover) {
            return end;
        }
        drop(leftover);
        let mut buf = vec![0u8; READ_BUF];
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *self.params.shutdown.borrow() && self.shutdown_deadline.is_none() {
                self.begin_shutdown();
            }
            if let Some(end) = self.finished(clock::now()) {
                return end;
            }
            let shutting_down = self.shutdown_deadline.is_some();
            tokio::select! {
                read = read.read(&mut buf) => {
                    let n = match read {
                        Ok(0) => return End::Eof,
                        Ok(n) => n,
                        Err(err) => return End::Read(err),
                    };
                    let now = clock::now();
                    self.heartbeat.on_received(now);
                    if let Err(end) = self.process(now, &mut buf[..n]) {
                        return end;
                    }
                }
                _ = tick.tick() => {
                    if let Some(end) = self.on_tick(clock::now()) {
                        return end;
                    }
                }
                // Only waited on until shutdown begins: afterwards it would be ready forever.
                _ = self.params.shutdown.changed(), if !shutting_down => {}
                asked = &mut self.params.drain, if !self.drain_asked => {
                    self.drain_asked = true;
                    // An error means the lane moved on without asking: nothing to do.
                    if asked.is_ok() {
                        self.begin_drain();
                    }
                }
                _ = &mut *writer => return End::Write,
            }
        }
    }

    /// A session opened with a rotated token took over: the hub routes new clients there
    /// (this one stops counting for readiness), and this one closes with 1000 once its
    /// streams have ended. Streams the hub still opens here are served all the same.
    fn begin_drain(&mut self) {
        let streams = {
            let mut st = self.link.lock();
            st.session.go_away();
            st.session.stream_count()
        };
        self.params.ready.release();
        tracing::info!(
            hub = %self.params.hub,
            lane = self.params.lane,
            streams,
            "token rotated: a new session took over, this one closes when its streams end"
        );
    }

    /// Refuses new streams and starts the grace period.
    fn begin_shutdown(&mut self) {
        self.link.lock().refuse_opens = true;
        self.shutdown_deadline = Some(clock::now() + SHUTDOWN_GRACE.as_millis() as u64);
    }

    /// Whether the session should end now: drained after GOAWAY, or shutting down with no
    /// streams left or past the grace period.
    fn finished(&self, now: Millis) -> Option<End> {
        let st = self.link.lock();
        if let Some(deadline) = self.shutdown_deadline
            && (st.session.stream_count() == 0 || now >= deadline)
        {
            return Some(End::Shutdown);
        }
        if st.session.is_drained() {
            return Some(End::Drained);
        }
        None
    }

    /// Sweeps idle streams and checks the heartbeat.
    fn on_tick(&mut self, now: Millis) -> Option<End> {
        if self.heartbeat.poll(now) == HeartbeatAction::Dead {
            return Some(End::Heartbeat);
        }
        let mut expired = Vec::new();
        {
            let mut st = self.link.lock();
            st.session.sweep_idle(now, &mut expired);
            for &id in &expired {
                st.abort_stream(id);
            }
        }
        if !expired.is_empty() {
            tracing::debug!(hub = %self.params.hub, lane = self.params.lane, streams = expired.len(), "idle streams reset");
            self.link.flush();
        }
        None
    }

    /// Decodes one read's worth of bytes and acts on everything in it.
    fn process(&mut self, now: Millis, input: &mut [u8]) -> Result<(), End> {
        let link = Arc::clone(&self.link);
        let mut st = link.lock();
        let result = self.process_locked(now, input, &mut st);
        let queued = !st.session.transmit().is_empty() || !st.control.is_empty();
        drop(st);
        if queued {
            link.flush();
        }
        result
    }

    fn process_locked(
        &mut self,
        now: Millis,
        input: &mut [u8],
        st: &mut Shared,
    ) -> Result<(), End> {
        let mut pos = 0;
        while pos < input.len() {
            let (n, event) = self.decoder.decode(&mut input[pos..]).map_err(End::Ws)?;
            match event {
                None | Some(ws::Event::Pong(_)) => {}
                Some(ws::Event::Binary { data, last }) => {
                    let mut rest: &[u8] = data;
                    while !rest.is_empty() {
                        let (used, frame) = self.frames.decode(rest)?;
                        rest = &rest[used..];
                        if let Some(frame) = frame
                            && let Some(event) = st.session.recv(now, frame)?
                        {
                            self.on_event(now, st, event);
                        }
                    }
                    if last {
                        self.frames.end_of_message()?;
                    }
                }
                Some(ws::Event::Text(text)) => match ControlMessage::parse(&text)? {
                    ControlMessage::Goaway(goaway) => self.on_goaway(st, &goaway.reason),
                    other => {
                        return Err(End::Protocol(format!(
                            "unexpected control message `{}`",
                            other.kind()
                        )));
                    }
                },
                Some(ws::Event::Ping(payload)) => {
                    wire::push_masked(&mut st.control, Opcode::Pong, payload.as_bytes());
                }
                Some(ws::Event::Close(frame)) => return Err(End::Closed(frame)),
            }
            pos += n;
        }
        Ok(())
    }

    fn on_goaway(&mut self, st: &mut Shared, reason: &str) {
        st.session.go_away();
        if self.goaway_seen {
            return;
        }
        self.goaway_seen = true;
        tracing::info!(
            hub = %self.params.hub,
            lane = self.params.lane,
            reason,
            streams = st.session.stream_count(),
            "GOAWAY received: opening a replacement session, this one closes when its streams end"
        );
        self.params.ready.release();
        // The lane may have stopped waiting (shutdown); nothing to do then.
        let (replacement, _) = oneshot::channel();
        let _ = std::mem::replace(&mut self.params.goaway, replacement).send(());
    }

    fn on_event(&mut self, now: Millis, st: &mut Shared, event: Event<'_>) {
        match event {
            Event::Opened {
                id,
                connector,
                peer,
            } => self.on_open(st, id, &connector, peer),
            Event::Data { id, data } => {
                if let Some(entry) = st.streams.get_mut(&id) {
                    let written = entry.deliver(data);
                    if written > 0 {
                        st.session.consumed(now, id, written);
                    }
                }
            }
            Event::Finished { id, closed } => {
                if let Some(entry) = st.streams.get_mut(&id) {
                    entry.finish();
                }
                if closed {
                    st.forget_stream(id);
                }
            }
            Event::Reset {
                id,
                code,
                reason,
                origin,
            } => {
                st.abort_stream(id);
                tracing::debug!(
                    hub = %self.params.hub,
                    stream = %id,
                    code = code.as_str(),
                    reason = reason.as_str(),
                    origin = ?origin,
                    "stream reset"
                );
            }
            Event::Writable { id, .. } => {
                if let Some(entry) = st.streams.get(&id) {
                    entry.signals.credit.notify_one();
                }
            }
            // The core refuses OPEN_OK sent to the agent before handing out an event.
            Event::OpenOk { .. } => {}
        }
    }

    fn on_open(
        &mut self,
        st: &mut Shared,
        id: StreamId,
        connector: &ConnectorName,
        peer: std::net::SocketAddr,
    ) {
        if st.refuse_opens {
            st.session
                .reset(id, RstCode::Overload, "agent is shutting down");
            return;
        }
        let Some(target) = self.params.connectors.get(connector) else {
            st.session
                .reset(id, RstCode::NoSuchConnector, "no such connector");
            tracing::warn!(hub = %self.params.hub, stream = %id, connector = %connector, "OPEN for a connector this agent does not serve");
            return;
        };
        tracing::debug!(hub = %self.params.hub, stream = %id, connector = %connector, client = %peer, target = %target, "stream opened");
        let (entry, rx) = StreamEntry::new();
        let signals = Arc::clone(&entry.signals);
        st.streams.insert(id, entry);
        tokio::spawn(stream::run(
            Arc::clone(&self.link),
            id,
            target.clone(),
            rx,
            signals,
            self.params.dial_timeout,
        ));
    }
}

/// Sends what the session queued whenever woken, as masked WebSocket messages; sends the
/// Close frame and stops once one is set.
///
/// The session's frames are taken by swapping buffers and masked in place; the message
/// headers go out beside them in one vectored write, so payload bytes are not copied here.
async fn write_loop(link: Arc<Link>, mut write: WriteHalf<Box<dyn Io>>) {
    let mut frames = Vec::new();
    let mut control = Vec::new();
    let mut headers = Vec::new();
    let mut parts = Vec::new();
    let mut tail = Vec::new();
    loop {
        link.wake_writer.notified().await;
        let close = {
            let mut st = link.lock();
            control.clear();
            control.append(&mut st.control);
            st.session.swap_transmit(&mut frames);
            st.close
        };
        headers.clear();
        parts.clear();
        wire::mask_messages(&mut frames, &mut headers, &mut parts);
        tail.clear();
        if let Some((code, reason)) = close {
            wire::push_close(&mut tail, code, reason);
        }
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 + 2 * parts.len());
        slices.push(IoSlice::new(&control));
        for (header, payload) in &parts {
            slices.push(IoSlice::new(&headers[header.clone()]));
            slices.push(IoSlice::new(&frames[payload.clone()]));
        }
        slices.push(IoSlice::new(&tail));
        slices.retain(|s| !s.is_empty());
        if !slices.is_empty() {
            let sent = async {
                write_all_vectored(&mut write, &mut slices).await?;
                write.flush().await
            };
            if let Err(err) = sent.await {
                tracing::debug!(error = %err, "session write failed");
                return;
            }
        }
        if close.is_some() {
            let _ = write.shutdown().await;
            return;
        }
    }
}

/// Writes every byte of `slices`, in order, with as few calls as the writer allows.
async fn write_all_vectored(
    write: &mut (impl AsyncWrite + Unpin),
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    while !slices.is_empty() {
        let n = write.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// The WELCOME fields worth a log line.
pub(crate) fn describe_welcome(welcome: &Welcome) -> String {
    let refused: Vec<String> = welcome
        .refused
        .iter()
        .map(|r| format!("{} ({})", r.connector, r.reason))
        .collect();
    let accepted: Vec<&str> = welcome.accepted.iter().map(|c| c.as_str()).collect();
    format!(
        "accepted [{}], refused [{}]",
        accepted.join(", "),
        refused.join(", ")
    )
}
