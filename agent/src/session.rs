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
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;

use crate::clock;
use crate::connect::{Connected, HubIo, Io};
use crate::health::ReadyGuard;
use crate::splice::{self, SPLICE_MIN};
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

/// How much a look ahead at the hub's bytes takes (`MSG_PEEK`): enough for a run of small
/// frames and the headers of the next large one.
const PEEK_LEN: usize = 4096;

/// Looks ahead in a row that found no large DATA payload, after which the reader goes back
/// to plain reads until a payload is spliced again.
const MAX_MISSES: u8 = 8;

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

    /// Lets go of the lock, then wakes the writer if frames wait to be sent.
    pub(crate) fn unlock_and_flush(&self, st: MutexGuard<'_, Shared>) {
        let queued = !st.session.transmit().is_empty() || !st.control.is_empty();
        drop(st);
        if queued {
            self.flush();
        }
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
    /// Whether large DATA payloads may go from a plain connection to their targets by
    /// `splice(2)` (see [`crate::splice`]).
    pub(crate) splice: bool,
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
    let window = config.window as usize;
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
    let (read, mut writer) = match io {
        HubIo::Plain(tcp) => {
            let (read, write) = tcp.into_split();
            let writer = tokio::spawn(write_loop(Arc::clone(&link), write));
            (HubRead::Plain(read), writer)
        }
        HubIo::Tls(io) => {
            let (read, write) = tokio::io::split(io);
            let writer = tokio::spawn(write_loop(Arc::clone(&link), write));
            (HubRead::Tls(read), writer)
        }
    };
    link.flush();

    let hub = params.hub.clone();
    let lane = params.lane;
    let session_id = welcome.session.clone();
    let splicer =
        (params.splice && matches!(read, HubRead::Plain(_))).then(|| Splicer::new(window));
    let mut reader = Reader {
        link: Arc::clone(&link),
        decoder,
        frames: FrameDecoder::new(welcome.max_frame),
        heartbeat: Heartbeat::new(clock::now(), welcome.heartbeat_ms, false),
        params,
        goaway_seen: false,
        drain_asked: false,
        shutdown_deadline: None,
        splicer,
    };
    let end = reader.run(read, leftover, &mut writer).await;
    let spliced = reader.splicer.as_ref().map_or(0, |s| s.moved);

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
        tracing::info!(hub = %hub, lane, session = %session_id, reason = %end, spliced_bytes = spliced, "session ended");
    } else {
        tracing::warn!(hub = %hub, lane, session = %session_id, reason = %end, spliced_bytes = spliced, "session failed");
    }
}

/// The reading half of the connection to the hub.
enum HubRead {
    /// Plain TCP: payloads may also be spliced from it.
    Plain(OwnedReadHalf),
    /// TLS.
    Tls(ReadHalf<Box<dyn Io>>),
}

/// What the reader waits for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// Up to this many bytes into the read buffer.
    Read(usize),
    /// A look at what the hub sent next, without taking it.
    Peek,
    /// The socket to become readable, to move up to `max` payload bytes of the DATA frame in
    /// progress, for stream `id`, by splice.
    Splice { id: StreamId, max: usize },
}

/// What came of a [`Want`].
enum Ready {
    Read(std::io::Result<usize>),
    Peeked(std::io::Result<usize>),
    Readable(std::io::Result<()>),
}

impl HubRead {
    /// The TCP socket, when payloads can be spliced from it.
    fn socket(&self) -> Option<&TcpStream> {
        match self {
            HubRead::Plain(read) => Some(read.as_ref()),
            HubRead::Tls(_) => None,
        }
    }

    async fn next(&mut self, buf: &mut [u8], want: Want) -> Ready {
        match (want, &mut *self) {
            (Want::Read(n), HubRead::Plain(read)) => Ready::Read(read.read(&mut buf[..n]).await),
            (Want::Read(n), HubRead::Tls(read)) => Ready::Read(read.read(&mut buf[..n]).await),
            (Want::Peek, HubRead::Plain(read)) => {
                Ready::Peeked(read.peek(&mut buf[..PEEK_LEN]).await)
            }
            (Want::Splice { .. }, HubRead::Plain(read)) => {
                Ready::Readable(read.as_ref().readable().await)
            }
            // Only plain sessions splice; a TLS session never asks for these.
            (Want::Peek | Want::Splice { .. }, HubRead::Tls(read)) => {
                Ready::Read(read.read(&mut buf[..READ_BUF]).await)
            }
        }
    }
}

/// The reader's state for moving large payloads by splice (see [`crate::splice`]).
///
/// Frame headers and small frames still go through the read buffer. Once a payload was
/// spliced, the reader looks ahead (`MSG_PEEK`) before each read and reads only up to where
/// the next large payload begins, so that the payload can be spliced whole: full reads of a
/// steady flow would keep taking whole frames, and keep ending near frame ends. A look ahead
/// that finds only small frames reads those; a run of them sends the reader back to full
/// reads.
struct Splicer {
    /// The stream window, which each pipe must hold.
    window: usize,
    /// Read into the buffer before splicing again: the last splice met the end of the
    /// connection, an urgent mark, a full pipe or a stream that cannot splice, and a read
    /// tells these apart or moves the bytes the ordinary way.
    read_next: bool,
    /// The stream whose frame is being spliced, until its payload ends.
    current: Option<StreamId>,
    /// Whether to look ahead before reading.
    peeking: bool,
    /// Looks ahead in a row that found no large payload.
    misses: u8,
    /// How much to read after a look ahead.
    next_read: Option<usize>,
    /// Payload bytes spliced, for the session's last log line.
    moved: u64,
}

impl Splicer {
    fn new(window: usize) -> Splicer {
        Splicer {
            window,
            read_next: false,
            current: None,
            peeking: false,
            misses: 0,
            next_read: None,
            moved: 0,
        }
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
    /// Present on plain sessions that splice.
    splicer: Option<Splicer>,
}

impl Reader {
    async fn run(
        &mut self,
        mut read: HubRead,
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
            let want = self.plan();
            tokio::select! {
                ready = read.next(&mut buf, want) => {
                    let n = match ready {
                        Ready::Read(Ok(0)) => return End::Eof,
                        Ready::Read(Ok(n)) => n,
                        Ready::Read(Err(err))
                        | Ready::Peeked(Err(err))
                        | Ready::Readable(Err(err)) => return End::Read(err),
                        Ready::Peeked(Ok(n)) => {
                            self.looked_ahead(&mut buf[..n]);
                            continue;
                        }
                        Ready::Readable(Ok(())) => {
                            if let (Some(socket), Want::Splice { id, max }) = (read.socket(), want)
                                && let Err(end) = self.splice(socket, id, max)
                            {
                                return end;
                            }
                            continue;
                        }
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
            if splice::pipes_open() > 0 {
                for entry in st.streams.values_mut() {
                    entry.release_idle_pipe(now);
                }
            }
        }
        if !expired.is_empty() {
            tracing::debug!(hub = %self.params.hub, lane = self.params.lane, streams = expired.len(), "idle streams reset");
            self.link.flush();
        }
        None
    }

    /// Decides how to take the next bytes from the hub: splice the DATA payload in progress,
    /// look ahead, read up to where the next large payload begins, or fill the read buffer.
    fn plan(&mut self) -> Want {
        let full = Want::Read(READ_BUF);
        let Some(sp) = self.splicer.as_mut() else {
            return full;
        };
        if std::mem::take(&mut sp.read_next) {
            sp.current = None;
            sp.peeking = false;
            sp.next_read = None;
            return full;
        }
        if let Some(n) = sp.next_read.take() {
            return Want::Read(n);
        }
        let ws_left = self.decoder.unmasked_binary_left();
        if ws_left > 0
            && let Some((id, left)) = payload_run(ws_left, &self.frames)
        {
            let left = usize::try_from(left).unwrap_or(usize::MAX);
            let mut st = self.link.lock();
            if left >= SPLICE_MIN || sp.current == Some(id) {
                if let Some((_, credit)) = spliceable(&mut st, id, sp.window) {
                    sp.current = Some(id);
                    return Want::Splice {
                        id,
                        max: left.min(credit),
                    };
                }
            } else if st.streams.get(&id).is_some_and(StreamEntry::has_pipe) {
                // The small rest of a bulk stream's frame, after a read that ended inside it:
                // take just that, and look ahead for the next payload.
                sp.peeking = true;
                return Want::Read(left);
            }
            sp.current = None;
            return full;
        }
        if sp.peeking {
            return Want::Peek;
        }
        full
    }

    /// Acts on a look ahead at the hub's next bytes: reads up to where the next large DATA
    /// payload begins, or all of them when none does.
    fn looked_ahead(&mut self, peeked: &mut [u8]) {
        let Some(sp) = self.splicer.as_mut() else {
            return;
        };
        if peeked.is_empty() {
            // The end of the connection: a read reports it.
            sp.read_next = true;
            return;
        }
        let found = large_payload_at(&self.decoder, &self.frames, peeked).filter(|&(_, id)| {
            let mut st = self.link.lock();
            spliceable(&mut st, id, sp.window).is_some()
        });
        match found {
            Some((at, _)) => {
                sp.misses = 0;
                sp.next_read = Some(at);
            }
            // None, or one for a stream that cannot splice (no target yet, no pipe, no
            // credit): read what was looked at, the ordinary way.
            None => {
                sp.misses += 1;
                if sp.misses >= MAX_MISSES {
                    sp.peeking = false;
                    sp.misses = 0;
                }
                sp.next_read = Some(peeked.len());
            }
        }
    }

    /// The socket is readable: moves up to `max` payload bytes of the DATA frame in progress
    /// for `id` into the stream's pipe, accounts for them as received, and hands them on to
    /// the target.
    fn splice(&mut self, socket: &TcpStream, id: StreamId, max: usize) -> Result<(), End> {
        let Some(sp) = self.splicer.as_mut() else {
            return Ok(());
        };
        let now = clock::now();
        let link = Arc::clone(&self.link);
        let mut st = link.lock();
        // The stream may have ended while the reader waited.
        let Some((pipe, credit)) = spliceable(&mut st, id, sp.window) else {
            sp.read_next = true;
            return Ok(());
        };
        let n = match pipe.fill(socket, max.min(credit)) {
            Ok(0) => {
                sp.read_next = true;
                return Ok(());
            }
            Ok(n) => n,
            // Nothing had arrived: readiness is cleared, the next wait is real.
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            // The pipe is full or an urgent mark is next: a read takes over.
            Err(err) if err.kind() == std::io::ErrorKind::ResourceBusy => {
                sp.read_next = true;
                return Ok(());
            }
            Err(err) => return Err(End::Read(err)),
        };
        self.heartbeat.on_received(now);
        sp.moved += n as u64;
        let last = self.decoder.skip_binary(n as u64);
        self.frames.skip_data(n as u32);
        if self.frames.data_left().is_none() {
            sp.current = None;
            sp.peeking = true;
            sp.misses = 0;
        }
        let result = (|| {
            if last {
                self.frames.end_of_message()?;
            }
            match st.session.recv_moved(now, id, n as u32)? {
                // A violation: the stream is reset, and its pipe goes with it.
                Some(event) => self.on_event(now, &mut st, event),
                None => {
                    if let Some(entry) = st.streams.get_mut(&id) {
                        let written = entry.deliver_piped(now, &pipe, n);
                        if written > 0 {
                            st.session.consumed(now, id, written);
                        }
                    }
                }
            }
            Ok::<(), End>(())
        })();
        link.unlock_and_flush(st);
        result
    }

    /// Decodes one read's worth of bytes and acts on everything in it.
    fn process(&mut self, now: Millis, input: &mut [u8]) -> Result<(), End> {
        let link = Arc::clone(&self.link);
        let mut st = link.lock();
        let result = self.process_locked(now, input, &mut st);
        link.unlock_and_flush(st);
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

/// Where in `ahead`, the bytes that follow what `decoder` and `frames` have seen, the next DATA
/// payload of at least [`SPLICE_MIN`] bytes begins, and its stream: the bytes before it are
/// headers and small frames. `None` when none begins there, or when the bytes are invalid (a
/// read then decodes them and reports the error). Copies of the decoders do the looking; the
/// real ones see the bytes when they are read.
fn large_payload_at(
    decoder: &ws::Decoder,
    frames: &FrameDecoder,
    ahead: &mut [u8],
) -> Option<(usize, StreamId)> {
    let mut ws = decoder.clone();
    let mut frames = frames.clone();
    let mut pos = 0;
    while pos < ahead.len() {
        let (n, event) = ws.decode(&mut ahead[pos..]).ok()?;
        if let Some(ws::Event::Binary { data, last }) = event {
            let start = pos + n - data.len();
            let mut off = 0;
            while off < data.len() {
                // Payload left in this WebSocket frame from here on.
                let ws_left = ws.unmasked_binary_left() + (data.len() - off) as u64;
                if let Some((id, left)) = payload_run(ws_left, &frames)
                    && left >= SPLICE_MIN as u64
                {
                    return (start + off > 0).then_some((start + off, id));
                }
                let (used, _) = frames.decode(&data[off..]).ok()?;
                off += used;
            }
            if last {
                frames.end_of_message().ok()?;
            }
            // A large payload whose first byte is the first after this piece.
            if let Some((id, left)) = payload_run(ws.unmasked_binary_left(), &frames)
                && left >= SPLICE_MIN as u64
            {
                return Some((pos + n, id));
            }
        }
        pos += n;
    }
    None
}

/// The stream of the DATA frame `frames` is in, and how many of its payload bytes come next
/// with no header between them: the lesser of what is left of the frame and of the WebSocket
/// frame carrying it (`ws_left`).
fn payload_run(ws_left: u64, frames: &FrameDecoder) -> Option<(StreamId, u64)> {
    let (id, data_left) = frames.data_left()?;
    Some((id, ws_left.min(u64::from(data_left))))
}

/// The pipe and remaining credit of a stream whose payload may be spliced now: one the core
/// and the agent both know, with a connected target, a pipe and credit left.
fn spliceable(st: &mut Shared, id: StreamId, window: usize) -> Option<(Arc<splice::Pipe>, usize)> {
    let credit = st.session.stream(id)?.recv_credit() as usize;
    if credit == 0 {
        return None;
    }
    let pipe = st.streams.get_mut(&id)?.pipe(window)?;
    Some((pipe, credit))
}

/// Sends what the session queued whenever woken, as masked WebSocket messages; sends the
/// Close frame and stops once one is set.
///
/// The session's frames are taken by swapping buffers and masked in place; the message
/// headers go out beside them in one vectored write, so payload bytes are not copied here.
async fn write_loop(link: Arc<Link>, mut write: impl AsyncWrite + Unpin) {
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

#[cfg(test)]
mod tests {
    use nowconnect_core::frame;

    use super::*;

    /// One unmasked WebSocket binary message holding `frames`, as the hub sends.
    fn message(wire: &mut Vec<u8>, frames: &[u8]) {
        ws::encode_frame(wire, true, Opcode::Binary, frames, None);
    }

    fn window(id: u32) -> Vec<u8> {
        let mut f = Vec::new();
        frame::encode_window(&mut f, StreamId(id), 65_536);
        f
    }

    fn data(id: u32, len: usize) -> Vec<u8> {
        let mut f = Vec::new();
        frame::encode_data(&mut f, StreamId(id), &vec![7; len]);
        f
    }

    fn decoders() -> (ws::Decoder, FrameDecoder) {
        (
            ws::Decoder::new(ws::Role::Client, crate::connect::WS_LIMITS),
            FrameDecoder::new(65_536),
        )
    }

    #[test]
    fn a_look_ahead_stops_where_the_next_large_payload_begins() {
        let (ws, frames) = decoders();
        // Credit for two streams, a small DATA frame, then a large one.
        let mut wire = Vec::new();
        message(&mut wire, &window(1));
        message(&mut wire, &[window(3), window(5)].concat());
        message(&mut wire, &data(7, 1000));
        let before = wire.len();
        message(&mut wire, &data(1, 65_536));
        // Its WebSocket header (10 bytes for this length) and the frame header come first.
        let at = before + 10 + frame::HEADER_LEN;
        let mut ahead = wire[..PEEK_LEN.min(wire.len())].to_vec();
        assert_eq!(
            large_payload_at(&ws, &frames, &mut ahead),
            Some((at, StreamId(1)))
        );
        // The same with the look ahead ending right after the headers.
        let mut ahead = wire[..at].to_vec();
        assert_eq!(
            large_payload_at(&ws, &frames, &mut ahead),
            Some((at, StreamId(1)))
        );
        // ... and one byte short of them: not yet.
        let mut ahead = wire[..at - 1].to_vec();
        assert_eq!(large_payload_at(&ws, &frames, &mut ahead), None);
    }

    #[test]
    fn a_look_ahead_starts_from_where_the_decoders_are() {
        let (mut ws, mut frames) = decoders();
        let mut wire = Vec::new();
        message(&mut wire, &data(1, 20_000));
        message(&mut wire, &data(3, 30_000));
        // The decoders have seen the first message up to 100 bytes before its end.
        let seen = wire.len() - (4 + frame::HEADER_LEN + 30_000) - 100;
        let mut head = wire[..seen].to_vec();
        let mut pos = 0;
        while pos < head.len() {
            let (n, event) = ws.decode(&mut head[pos..]).unwrap();
            if let Some(ws::Event::Binary { data, .. }) = event {
                let mut rest = data;
                while !rest.is_empty() {
                    let (used, _) = frames.decode(rest).unwrap();
                    rest = &rest[used..];
                }
            }
            pos += n;
        }
        assert_eq!(frames.data_left(), Some((StreamId(1), 100)));
        // Ahead: the last 100 payload bytes, then the next message's headers.
        let mut ahead = wire[seen..].to_vec();
        ahead.truncate(PEEK_LEN);
        let at = 100 + 4 + frame::HEADER_LEN;
        assert_eq!(
            large_payload_at(&ws, &frames, &mut ahead),
            Some((at, StreamId(3)))
        );
        // The look ahead left the decoders as they were.
        assert_eq!(frames.data_left(), Some((StreamId(1), 100)));
        assert_eq!(ws.unmasked_binary_left(), 100);
    }

    #[test]
    fn small_frames_and_bad_bytes_give_no_place_to_splice() {
        let (ws, frames) = decoders();
        let mut wire = Vec::new();
        for id in 0..100 {
            message(&mut wire, &window(2 * id + 1));
            message(&mut wire, &data(2 * id + 1, SPLICE_MIN - 1));
        }
        let mut ahead = wire[..PEEK_LEN].to_vec();
        assert_eq!(large_payload_at(&ws, &frames, &mut ahead), None);
        // A masked frame from the hub is a protocol error the read reports.
        let mut bad = Vec::new();
        ws::encode_frame(
            &mut bad,
            true,
            Opcode::Binary,
            &data(1, 65_536),
            Some([1, 2, 3, 4]),
        );
        bad.truncate(PEEK_LEN);
        assert_eq!(large_payload_at(&ws, &frames, &mut bad), None);
    }
}
