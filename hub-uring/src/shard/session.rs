//! One agent session on a shard: the core session state, the writer that batches outgoing
//! messages, the reader that dispatches incoming frames to clients, and the timers.
//!
//! Everything here runs on the shard's single thread, so state is shared with `Rc` and
//! `RefCell`; no borrow is ever held across an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use compio::buf::IoBuf;
use compio::net::TcpStream;
use nowconnect_core::frame::{FrameDecoder, RstCode, StreamId};
use nowconnect_core::heartbeat::{Heartbeat, HeartbeatAction};
use nowconnect_core::name::ConnectorName;
use nowconnect_core::session::{Event, Session, SessionError};
use nowconnect_core::stream::SendError;
use nowconnect_core::time::Millis;
use nowconnect_core::ws::{self, CloseCode};
use tokio::sync::Notify;

use super::pool::HEADROOM;
use super::ring::RecvBuf;
use super::splice::Pipe;
use super::transport::Conn;
use super::{ShardCtx, now_unix};
use crate::auth::Identity;
use crate::metrics::{CloseReason, ConnectorMetrics};
use crate::pdp::SessionSubject;

/// What a session tells a client connection.
#[derive(Debug)]
pub(crate) enum ToClient {
    /// The agent reached the target.
    OpenOk,
    /// Bytes for the client, in a pooled buffer to give back after the write.
    Data(Vec<u8>),
    /// The agent finished its direction.
    Fin,
    /// The stream is gone: reset the client's connection.
    Reset(CloseReason),
}

/// A stream's inbox: what the session delivers to the client task, in order. Its queue keeps
/// its allocation, so steady traffic allocates nothing; the window bounds what it holds.
///
/// While the client task has nothing queued and no write under way, the session writes the
/// agent's bytes to the client's socket itself ([`Mailbox::send_now`]): what the socket takes
/// at once needs no copy into a pooled buffer and no wake-up of the client task.
#[derive(Default)]
pub(crate) struct Mailbox {
    items: RefCell<VecDeque<ToClient>>,
    closed: Cell<bool>,
    notify: Notify,
    /// Wakes the client's reader when the agent returns credit.
    pub(crate) credit: Notify,
    /// The client's socket while its task holds it open ([`Mailbox::attach`]).
    socket: RefCell<Option<TcpStream>>,
    /// The client task is writing a message it took.
    writing: Cell<bool>,
}

impl Mailbox {
    fn send(&self, message: ToClient) {
        if !self.closed.get() {
            self.items.borrow_mut().push_back(message);
            self.notify.notify_one();
        }
    }

    fn close(&self) {
        self.closed.set(true);
        self.notify.notify_one();
    }

    /// Writes what the client's socket takes of `data` at once, without waiting, when nothing
    /// is queued or being written before it; returns how many bytes that was. Any failure
    /// leaves the bytes to the client task, whose own write then reports it.
    fn send_now(&self, data: &[u8]) -> usize {
        if self.writing.get() || self.closed.get() || !self.items.borrow().is_empty() {
            return 0;
        }
        match &*self.socket.borrow() {
            Some(socket) => socket2::SockRef::from(socket)
                .send_with_flags(data, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                .unwrap_or(0),
            None => 0,
        }
    }

    /// Lets the session write to `socket` directly until the returned guard is dropped, so
    /// that the client task alone decides when the socket closes.
    pub(crate) fn attach(&self, socket: &TcpStream) -> impl Drop + '_ {
        *self.socket.borrow_mut() = Some(socket.clone());
        Detach(self)
    }

    /// Marks the client task as writing a message it took (or done with it).
    pub(crate) fn set_writing(&self, writing: bool) {
        self.writing.set(writing);
    }

    /// The next message, or `None` once the stream is gone and everything was taken.
    pub(crate) async fn recv(&self) -> Option<ToClient> {
        loop {
            if let Some(message) = self.items.borrow_mut().pop_front() {
                return Some(message);
            }
            if self.closed.get() {
                return None;
            }
            self.notify.notified().await;
        }
    }
}

/// Forgets a mailbox's socket when the client task lets go of it.
struct Detach<'a>(&'a Mailbox);

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        self.0.socket.borrow_mut().take();
    }
}

/// A client connection as its session sees it.
struct Slot {
    mailbox: Rc<Mailbox>,
    open_deadline: Option<Millis>,
    opened_at: Instant,
    metrics: ConnectorMetrics,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The client task drains what was delivered, then sees the end.
        self.mailbox.close();
    }
}

/// An outgoing WebSocket message.
enum OutBuf {
    /// `buf[start..]` is sent; a pooled buffer goes back to the shard's pool afterwards.
    Vec {
        buf: Vec<u8>,
        start: usize,
        pooled: bool,
    },
    /// Client bytes received into the shard's ring, the headers written in front of them.
    /// The buffer returns to the ring when this is dropped.
    Ring(RecvBuf),
    /// The headers of a DATA frame whose `len` payload bytes wait in a stream's pipe; the
    /// writer sends `head[start..]`, then moves the payload (see [`super::splice`]).
    Spliced {
        head: [u8; HEADROOM],
        start: usize,
        pipe: Rc<Pipe>,
        len: usize,
    },
}

impl IoBuf for OutBuf {
    fn as_init(&self) -> &[u8] {
        match self {
            OutBuf::Vec { buf, start, .. } => &buf[*start..],
            OutBuf::Ring(buf) => buf.as_init(),
            OutBuf::Spliced { head, start, .. } => &head[*start..],
        }
    }
}

/// Why a session ended, for the close frame and the log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ending {
    pub(crate) code: CloseCode,
    pub(crate) reason: &'static str,
}

/// One agent session on this shard.
pub(crate) struct SessionCtx {
    pub(crate) id: String,
    pub(crate) agent_id: String,
    pub(crate) peer: SocketAddr,
    pub(crate) accepted: Vec<ConnectorName>,
    shard: Rc<ShardCtx>,
    core: RefCell<Session>,
    slots: RefCell<HashMap<StreamId, Slot>>,
    out: RefCell<VecDeque<OutBuf>>,
    out_notify: Notify,
    heartbeat: RefCell<Heartbeat>,
    ended: Cell<Option<Ending>>,
    ended_notify: Notify,
    /// Whether client bytes may be spliced to the agent (a plain connection, `hub.splice`).
    splice: Cell<bool>,
    open_timeout_ms: u64,
    /// When the agent's token expires (seconds since the epoch).
    token_exp: u64,
    /// What the policy decision point is told about the agent, when one is configured.
    pub(crate) subject: Option<Arc<SessionSubject>>,
}

/// GOAWAY goes out this long before the agent's token expires, so the agent reconnects with a
/// fresh one while its streams finish.
const TOKEN_GOAWAY_AHEAD_SECS: u64 = 60;

impl SessionCtx {
    /// The session `id` of the agent authenticated as `identity`, connected from `peer`,
    /// serving `accepted`.
    pub(crate) fn new(
        shard: Rc<ShardCtx>,
        id: String,
        identity: &Identity,
        peer: SocketAddr,
        accepted: Vec<ConnectorName>,
        core: Session,
    ) -> Rc<SessionCtx> {
        let now = shard.now();
        let limits = &shard.shared.config.limits;
        let subject = shard
            .shared
            .pdp
            .as_ref()
            .map(|_| Arc::new(SessionSubject::new(identity, peer)));
        Rc::new(SessionCtx {
            id,
            agent_id: identity.agent_id.clone(),
            peer,
            accepted,
            heartbeat: RefCell::new(Heartbeat::new(now, limits.heartbeat_ms, true)),
            open_timeout_ms: limits.open_timeout_ms,
            shard,
            core: RefCell::new(core),
            slots: RefCell::new(HashMap::new()),
            out: RefCell::new(VecDeque::new()),
            out_notify: Notify::new(),
            ended: Cell::new(None),
            ended_notify: Notify::new(),
            splice: Cell::new(false),
            token_exp: identity.exp,
            subject,
        })
    }

    /// Streams open on this session, for least-loaded routing.
    pub(crate) fn load(&self) -> usize {
        self.core.borrow().stream_count()
    }

    /// Whether new streams may be routed here.
    pub(crate) fn is_routable(&self) -> bool {
        self.ended.get().is_none() && !self.core.borrow().is_going_away()
    }

    /// Whether the session has ended.
    pub(crate) fn has_ended(&self) -> bool {
        self.ended.get().is_some()
    }

    /// Opens a stream for a client; returns its id, its message channel and its credit signal.
    pub(crate) fn open_stream(
        &self,
        connector: &ConnectorName,
        peer: SocketAddr,
        metrics: ConnectorMetrics,
    ) -> Option<(StreamId, Rc<Mailbox>)> {
        if self.ended.get().is_some() {
            return None;
        }
        let now = self.shard.now();
        let id = self.core.borrow_mut().open(now, connector, peer).ok()?;
        let mailbox = Rc::new(Mailbox::default());
        self.slots.borrow_mut().insert(
            id,
            Slot {
                mailbox: mailbox.clone(),
                open_deadline: Some(now + self.open_timeout_ms),
                opened_at: Instant::now(),
                metrics,
            },
        );
        self.flush_transmit();
        Some((id, mailbox))
    }

    /// Bytes the client's stream may send now, capped at one frame.
    pub(crate) fn credit(&self, id: StreamId) -> usize {
        let core = self.core.borrow();
        core.send_credit(id).min(core.config().max_frame) as usize
    }

    /// Sends `len` bytes the client reader placed at `buf[HEADROOM..]` as one DATA frame in
    /// one WebSocket message, without copying them.
    pub(crate) fn send_data(
        &self,
        id: StreamId,
        mut buf: Vec<u8>,
        len: usize,
    ) -> Result<(), SendError> {
        buf.truncate(HEADROOM + len);
        let start = self.seal(id, &mut buf, len)?;
        self.push_out(OutBuf::Vec {
            buf,
            start,
            pooled: true,
        });
        Ok(())
    }

    /// Sends the bytes a ring buffer received as one DATA frame in one WebSocket message,
    /// without copying them. The caller checked [`SessionCtx::credit`].
    pub(crate) fn send_received(&self, id: StreamId, mut buf: RecvBuf) -> Result<(), SendError> {
        let len = buf.len();
        let start = self.seal(id, buf.frame_mut(), len)?;
        buf.set_start(start);
        self.push_out(OutBuf::Ring(buf));
        Ok(())
    }

    /// Whether bulk client streams may move their bytes through a pipe ([`super::splice`]).
    pub(crate) fn can_splice(&self) -> bool {
        self.splice.get()
    }

    /// Sends the `len` bytes the client reader just moved into `pipe` as one DATA frame in one
    /// WebSocket message. The caller checked [`SessionCtx::credit`].
    pub(crate) fn send_spliced(
        &self,
        id: StreamId,
        pipe: &Rc<Pipe>,
        len: usize,
    ) -> Result<(), SendError> {
        let mut head = [0u8; HEADROOM];
        let start = self.seal(id, &mut head, len)?;
        self.push_out(OutBuf::Spliced {
            head,
            start,
            pipe: pipe.clone(),
            len,
        });
        Ok(())
    }

    /// Writes the DATA frame header and the WebSocket header in front of the `len` bytes at
    /// `msg[HEADROOM..]`; returns where the message starts.
    fn seal(&self, id: StreamId, msg: &mut [u8], len: usize) -> Result<usize, SendError> {
        self.flush_transmit();
        let now = self.shard.now();
        let frame_start = self
            .core
            .borrow_mut()
            .seal_data(now, id, msg, HEADROOM, len)?;
        let payload_len = (HEADROOM - frame_start + len) as u64;
        ws::encode_header_before(
            msg,
            frame_start,
            true,
            ws::Opcode::Binary,
            payload_len,
            None,
        )
        .map_err(|e| {
            SendError::Headroom(nowconnect_core::frame::HeadroomError {
                needed: e.needed,
                available: e.available,
            })
        })
    }

    /// The client finished sending.
    pub(crate) fn finish(&self, id: StreamId) {
        let closed = self.core.borrow_mut().finish(id);
        if let Ok(true) = closed {
            self.release(id, CloseReason::Normal);
        }
        self.flush_transmit();
    }

    /// The client's connection failed or was reset: tell the agent.
    pub(crate) fn client_reset(&self, id: StreamId) {
        if self
            .core
            .borrow_mut()
            .reset(id, RstCode::PeerReset, "client reset")
        {
            self.release(id, CloseReason::ClientReset);
        }
        self.flush_transmit();
    }

    /// `n` bytes reached the client.
    pub(crate) fn consumed(&self, id: StreamId, n: usize) {
        let now = self.shard.now();
        self.core.borrow_mut().consumed(now, id, n);
        self.flush_transmit();
    }

    /// Forgets a stream's slot and records why it closed.
    fn release(&self, id: StreamId, reason: CloseReason) {
        if let Some(slot) = self.slots.borrow_mut().remove(&id) {
            slot.metrics.stream_closed(reason);
        }
    }

    /// Ends a stream from this side: tells the client and the agent.
    fn reset_stream(&self, id: StreamId, code: RstCode, reason: CloseReason, text: &str) {
        self.core.borrow_mut().reset(id, code, text);
        if let Some(slot) = self.slots.borrow_mut().remove(&id) {
            slot.metrics.stream_closed(reason);
            slot.mailbox.send(ToClient::Reset(reason));
        }
    }

    fn push_out(&self, out: OutBuf) {
        self.out.borrow_mut().push_back(out);
        self.out_notify.notify_one();
    }

    /// Moves frames the core queued into one WebSocket binary message.
    fn flush_transmit(&self) {
        let mut core = self.core.borrow_mut();
        let pending = core.transmit();
        if pending.is_empty() {
            return;
        }
        let mut header = [0u8; ws::MAX_HEADER_LEN];
        let n = ws::encode_header(
            &mut header,
            true,
            ws::Opcode::Binary,
            pending.len() as u64,
            None,
        );
        // A pooled buffer still waiting for the writer takes the message behind its own when
        // it has room: a burst of opens or window updates then fills a few buffers, rather
        // than holding a whole pooled buffer per message of a few dozen bytes.
        let mut out = self.out.borrow_mut();
        if let Some(OutBuf::Vec {
            buf, pooled: true, ..
        }) = out.back_mut()
            && buf.capacity() - buf.len() >= n + pending.len()
        {
            buf.extend_from_slice(&header[..n]);
            buf.extend_from_slice(pending);
            core.clear_transmit();
            return;
        }
        drop(out);
        let mut msg = self.shard.pool.take();
        msg.clear();
        msg.extend_from_slice(&header[..n]);
        msg.extend_from_slice(pending);
        core.clear_transmit();
        drop(core);
        self.push_out(OutBuf::Vec {
            buf: msg,
            start: 0,
            pooled: true,
        });
    }

    fn push_control(&self, opcode: ws::Opcode, payload: &[u8]) {
        let mut msg = Vec::with_capacity(ws::MAX_HEADER_LEN + payload.len());
        ws::encode_frame(&mut msg, true, opcode, payload, None);
        self.push_out(OutBuf::Vec {
            buf: msg,
            start: 0,
            pooled: false,
        });
    }

    /// Queues a text message (WELCOME, GOAWAY).
    pub(crate) fn send_text(&self, text: &str) {
        self.push_control(ws::Opcode::Text, text.as_bytes());
    }

    /// Sends GOAWAY: no new streams here; existing ones finish.
    pub(crate) fn go_away(&self, reason: &str) {
        if self.ended.get().is_some() || self.core.borrow().is_going_away() {
            return;
        }
        self.core.borrow_mut().go_away();
        let goaway = nowconnect_core::control::Goaway {
            reason: reason.to_string(),
        };
        self.send_text(&goaway.to_json());
        self.check_drained();
    }

    fn check_drained(&self) {
        if self.core.borrow().is_drained() {
            self.end(Ending {
                code: CloseCode::NORMAL,
                reason: "drained",
            });
        }
    }

    /// Ends the session: every client is reset, the close frame is queued.
    pub(crate) fn end(&self, ending: Ending) {
        if self.ended.get().is_some() {
            return;
        }
        self.ended.set(Some(ending));
        let mut ids = Vec::new();
        self.core.borrow_mut().end(&mut ids);
        let slots: Vec<Slot> = self.slots.borrow_mut().drain().map(|(_, s)| s).collect();
        for slot in slots {
            slot.metrics.stream_closed(CloseReason::SessionEnded);
            slot.mailbox
                .send(ToClient::Reset(CloseReason::SessionEnded));
        }
        let mut close = Vec::new();
        ws::encode_close(&mut close, ending.code, ending.reason, None);
        self.push_out(OutBuf::Vec {
            buf: close,
            start: 0,
            pooled: false,
        });
        self.ended_notify.notify_waiters();
        self.out_notify.notify_one();
    }

    async fn wait_ended(&self) {
        loop {
            let notified = self.ended_notify.notified();
            if self.ended.get().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Handles one event from the core session.
    fn dispatch(&self, event: Event<'_>) {
        match event {
            Event::OpenOk { id } => {
                if let Some(slot) = self.slots.borrow_mut().get_mut(&id) {
                    slot.open_deadline = None;
                    slot.metrics
                        .open_latency(slot.opened_at.elapsed().as_secs_f64());
                    slot.mailbox.send(ToClient::OpenOk);
                }
            }
            Event::Data { id, data } => {
                let mut sent = 0;
                if let Some(slot) = self.slots.borrow().get(&id) {
                    slot.metrics.bytes_to_client(data.len() as u64);
                    sent = slot.mailbox.send_now(data);
                    if sent < data.len() {
                        let mut buf = self.shard.pool.take();
                        buf.clear();
                        buf.extend_from_slice(&data[sent..]);
                        slot.mailbox.send(ToClient::Data(buf));
                    }
                }
                if sent > 0 {
                    self.consumed(id, sent);
                }
            }
            Event::Finished { id, closed } => {
                let slots = self.slots.borrow();
                if let Some(slot) = slots.get(&id) {
                    slot.mailbox.send(ToClient::Fin);
                }
                drop(slots);
                if closed {
                    self.release(id, CloseReason::Normal);
                }
            }
            Event::Reset { id, code, .. } => {
                let reason = close_reason(code);
                if let Some(slot) = self.slots.borrow_mut().remove(&id) {
                    slot.metrics.stream_closed(reason);
                    slot.mailbox.send(ToClient::Reset(reason));
                }
            }
            Event::Writable { id, .. } => {
                if let Some(slot) = self.slots.borrow().get(&id) {
                    slot.mailbox.credit.notify_one();
                }
            }
            Event::Opened { .. } => {}
        }
    }

    /// Runs the session until it ends (reader, writer and timers); returns why.
    pub(crate) async fn run(
        self: Rc<Self>,
        conn: Conn,
        decoder: ws::Decoder,
        leftover: Vec<u8>,
    ) -> Ending {
        self.splice
            .set(self.shard.shared.config.hub.splice && conn.prepare_splice());
        let (reader, writer) = (conn.clone(), conn);
        let writer_task = compio::runtime::spawn(self.clone().write_loop(writer));
        let timer_task = compio::runtime::spawn(self.clone().timer_loop());
        let ending = self.clone().read_loop(reader, decoder, leftover).await;
        self.end(ending);
        // The writer sends the close frame and stops; give it a moment, then stop timers.
        let _ = compio::time::timeout(Duration::from_secs(2), writer_task).await;
        drop(timer_task);
        self.ended.get().unwrap_or(ending)
    }

    async fn read_loop(
        self: Rc<Self>,
        mut reader: Conn,
        mut decoder: ws::Decoder,
        leftover: Vec<u8>,
    ) -> Ending {
        let max_frame = self.core.borrow().config().max_frame;
        let mut frames = FrameDecoder::new(max_frame);
        // Bytes that followed the upgrade request are processed first.
        let mut buf = leftover;
        loop {
            if !buf.is_empty() {
                if let Err(ending) = self.process(&mut decoder, &mut frames, &mut buf[..]) {
                    return ending;
                }
                self.flush_transmit();
                if let Some(ending) = self.ended.get() {
                    return ending;
                }
            }
            // Pinned on the stack: a read per message must not cost an allocation.
            let read = {
                let read = std::pin::pin!(reader.read(buf));
                let ended = std::pin::pin!(self.wait_ended());
                match futures_util::future::select(read, ended).await {
                    futures_util::future::Either::Left(((result, returned), _)) => {
                        Some((result, returned))
                    }
                    futures_util::future::Either::Right(_) => None,
                }
            };
            let Some((result, returned)) = read else {
                return self.ended.get().unwrap_or(Ending {
                    code: CloseCode::NORMAL,
                    reason: "ended",
                });
            };
            buf = returned;
            match result {
                Ok(()) if buf.is_empty() => {
                    return Ending {
                        code: CloseCode::GOING_AWAY,
                        reason: "agent closed the connection",
                    };
                }
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(session = %self.id, agent = %self.agent_id, error = %e,
                        "reading from the agent failed");
                    return Ending {
                        code: CloseCode::GOING_AWAY,
                        reason: "agent connection failed",
                    };
                }
            }
            self.heartbeat.borrow_mut().on_received(self.shard.now());
        }
    }

    /// Feeds received bytes through the WebSocket and frame decoders into the core session.
    fn process(
        &self,
        decoder: &mut ws::Decoder,
        frames: &mut FrameDecoder,
        input: &mut [u8],
    ) -> Result<(), Ending> {
        let now = self.shard.now();
        let mut pos = 0;
        while pos < input.len() {
            let (n, event) = decoder.decode(&mut input[pos..]).map_err(|e| {
                self.shard.shared.metrics.protocol_error("websocket");
                tracing::warn!(session = %self.id, agent = %self.agent_id, error = %e, "websocket protocol error");
                Ending {
                    code: e.close_code(),
                    reason: "websocket protocol error",
                }
            })?;
            match event {
                Some(ws::Event::Binary { data, last }) => {
                    let mut rest: &[u8] = data;
                    while !rest.is_empty() {
                        let (used, frame) = frames
                            .decode(rest)
                            .map_err(|e| self.tunnel_error(SessionError::Frame(e)))?;
                        rest = &rest[used..];
                        if let Some(frame) = frame {
                            let event = self
                                .core
                                .borrow_mut()
                                .recv(now, frame)
                                .map_err(|e| self.tunnel_error(e))?;
                            if let Some(event) = event {
                                self.dispatch(event);
                            }
                        }
                    }
                    if last {
                        frames
                            .end_of_message()
                            .map_err(|e| self.tunnel_error(SessionError::Frame(e)))?;
                    }
                }
                Some(ws::Event::Ping(payload)) => {
                    self.push_control(ws::Opcode::Pong, payload.as_bytes())
                }
                Some(ws::Event::Pong(_)) => {}
                Some(ws::Event::Text(_)) => {
                    self.shard.shared.metrics.protocol_error("unexpected_text");
                    return Err(Ending {
                        code: CloseCode::TUNNEL_PROTOCOL_ERROR,
                        reason: "unexpected control message",
                    });
                }
                Some(ws::Event::Close(_)) => {
                    return Err(Ending {
                        code: CloseCode::NORMAL,
                        reason: "agent closed the session",
                    });
                }
                None => {}
            }
            pos += n;
        }
        self.check_drained();
        Ok(())
    }

    fn tunnel_error(&self, e: SessionError) -> Ending {
        self.shard.shared.metrics.protocol_error("tunnel");
        tracing::warn!(session = %self.id, agent = %self.agent_id, error = %e, "tunnel protocol error");
        Ending {
            code: CloseCode::TUNNEL_PROTOCOL_ERROR,
            reason: "tunnel protocol error",
        }
    }

    async fn write_loop(self: Rc<Self>, mut writer: Conn) {
        let mut batch: Vec<OutBuf> = Vec::new();
        loop {
            {
                let mut out = self.out.borrow_mut();
                // Batch what is queued into one vectored write, up to and including the first
                // spliced frame, whose payload must follow its headers.
                while let Some(o) = out.pop_front() {
                    let spliced = matches!(o, OutBuf::Spliced { .. });
                    batch.push(o);
                    if spliced || batch.len() >= 64 {
                        break;
                    }
                }
            }
            if batch.is_empty() {
                if self.ended.get().is_some() {
                    writer.shutdown().await;
                    return;
                }
                self.out_notify.notified().await;
                continue;
            }
            let payload = match batch.last() {
                Some(OutBuf::Spliced { pipe, len, .. }) => Some((pipe.clone(), *len)),
                _ => None,
            };
            let (mut result, mut returned) = writer
                .write_batch(std::mem::take(&mut batch), payload.is_some())
                .await;
            if let (Ok(()), Some((pipe, len))) = (&result, payload) {
                let more = !self.out.borrow().is_empty();
                result = writer.splice_from(&pipe, len, more).await;
            }
            for out in returned.drain(..) {
                if let OutBuf::Vec {
                    buf, pooled: true, ..
                } = out
                {
                    self.shard.pool.give(buf);
                }
            }
            // Keep the batch's allocation for the next round.
            batch = returned;
            if let Err(e) = result {
                tracing::warn!(session = %self.id, agent = %self.agent_id, error = %e,
                    "writing to the agent failed");
                self.end(Ending {
                    code: CloseCode::GOING_AWAY,
                    reason: "agent connection failed",
                });
                self.out.borrow_mut().clear();
                return;
            }
        }
    }

    async fn timer_loop(self: Rc<Self>) {
        let sweep = Duration::from_millis(self.shard.shared.config.limits.sweep_interval_ms);
        let period = sweep.min(Duration::from_millis(
            self.shard.shared.config.limits.heartbeat_ms,
        ));
        // Ticks at a fixed rate, not a fixed pause after each round's work, so an idle stream
        // is reset no later than one period after its deadline however busy the shard is.
        let mut ticks = compio::time::interval(period);
        ticks.tick().await;
        let mut expired = Vec::new();
        loop {
            ticks.tick().await;
            if self.ended.get().is_some() {
                return;
            }
            // A session never outlives its token: GOAWAY ahead of expiry, close at expiry plus
            // the validation leeway.
            let unix = now_unix();
            if unix >= self.token_exp.saturating_add(crate::auth::LEEWAY_SECS) {
                tracing::info!(session = %self.id, agent = %self.agent_id, "agent token expired");
                self.end(Ending {
                    code: CloseCode::TOKEN_INVALID,
                    reason: "token expired",
                });
                return;
            }
            if unix.saturating_add(TOKEN_GOAWAY_AHEAD_SECS) >= self.token_exp {
                self.go_away("token_expiring");
            }
            let now = self.shard.now();
            match self.heartbeat.borrow_mut().poll(now) {
                HeartbeatAction::SendPing => self.push_control(ws::Opcode::Ping, b""),
                HeartbeatAction::Dead => {
                    tracing::warn!(session = %self.id, agent = %self.agent_id, peer = %self.peer,
                        "agent silent for three heartbeats");
                    self.end(Ending {
                        code: CloseCode::HEARTBEAT_TIMEOUT,
                        reason: "heartbeat timeout",
                    });
                    return;
                }
                HeartbeatAction::Wait => {}
            }
            expired.clear();
            self.core.borrow_mut().sweep_idle(now, &mut expired);
            for id in expired.drain(..) {
                if let Some(slot) = self.slots.borrow_mut().remove(&id) {
                    slot.metrics.stream_closed(CloseReason::Idle);
                    slot.mailbox.send(ToClient::Reset(CloseReason::Idle));
                }
            }
            let late: Vec<StreamId> = self
                .slots
                .borrow()
                .iter()
                .filter(|(_, s)| s.open_deadline.is_some_and(|d| d <= now))
                .map(|(id, _)| *id)
                .collect();
            for id in late {
                self.reset_stream(
                    id,
                    RstCode::Unreachable,
                    CloseReason::OpenTimeout,
                    "open timeout",
                );
            }
            self.flush_transmit();
            self.check_drained();
        }
    }
}

/// The metric label for an RST code received from the agent.
fn close_reason(code: RstCode) -> CloseReason {
    match code {
        RstCode::Refused => CloseReason::Refused,
        RstCode::Unreachable => CloseReason::Unreachable,
        RstCode::NotAuthorized => CloseReason::NotAuthorized,
        RstCode::Idle => CloseReason::Idle,
        RstCode::ProtocolViolation => CloseReason::ProtocolViolation,
        RstCode::PeerReset => CloseReason::AgentReset,
        RstCode::SessionEnded => CloseReason::SessionEnded,
        RstCode::NoSuchConnector => CloseReason::NoSuchConnector,
        RstCode::Overload => CloseReason::Overload,
    }
}

impl From<io::Error> for Ending {
    fn from(_: io::Error) -> Ending {
        Ending {
            code: CloseCode::GOING_AWAY,
            reason: "connection failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use compio::io::AsyncReadExt;

    #[test]
    fn the_session_writes_directly_only_when_nothing_waits_before() {
        compio::runtime::Runtime::new().unwrap().block_on(async {
            let listener = compio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (ours, accepted) =
                futures_util::future::join(TcpStream::connect(addr), listener.accept()).await;
            let (ours, mut peer) = (ours.unwrap(), accepted.unwrap().0);
            let mailbox = Mailbox::default();
            assert_eq!(mailbox.send_now(b"x"), 0, "no socket attached yet");
            let attached = mailbox.attach(&ours);
            assert_eq!(mailbox.send_now(b"abc"), 3);
            mailbox.send(ToClient::Fin);
            assert_eq!(mailbox.send_now(b"def"), 0, "a message is queued");
            assert!(matches!(mailbox.recv().await, Some(ToClient::Fin)));
            mailbox.set_writing(true);
            assert_eq!(mailbox.send_now(b"def"), 0, "the client task is writing");
            mailbox.set_writing(false);
            assert_eq!(mailbox.send_now(b"def"), 3);
            drop(attached);
            assert_eq!(
                mailbox.send_now(b"ghi"),
                0,
                "the client task let go of the socket"
            );
            drop(ours);
            let (_, got) = peer.read_to_end(Vec::new()).await.unwrap();
            assert_eq!(got, b"abcdef");
        });
    }
}
