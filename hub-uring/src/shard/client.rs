//! One client connection: admission, routing to a session, and the two directions of bytes.
//!
//! Client → agent: bytes land behind the headroom of a buffer (under io_uring one the kernel
//! picks from the shard's provided-buffer ring with a multishot receive, under epoll a pooled
//! one read into after readiness), never more than the stream's credit is sent, and the buffer
//! goes to the session's writer as a finished frame. Agent →
//! client: write what the session delivers, then report it consumed so credit flows back. A
//! reset from either side ends the connection with a TCP RST (`SO_LINGER` 0).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;

use compio::BufResult;
use compio::driver::ErrorExt;
use compio::io::{AsyncReadMulti, AsyncWriteExt};
use compio::net::TcpStream;
use compio::runtime::fd::PollFd;
use compio::runtime::{CancelToken, StreamExt as _};
use futures_util::StreamExt;
use futures_util::future::{Either, select};
use nowconnect_core::frame::StreamId;
use tokio::sync::Notify;

use super::ShardCtx;
use super::pool::receive_now;
use super::ring::RecvBuf;
use super::session::{Mailbox, SessionCtx, ToClient};
use super::splice::{self, Pipe};
use super::transport::shut_write;
use crate::metrics::{ConnectorMetrics, RejectReason};
use crate::pdp::Decision;

/// Closes `stream` with a TCP RST.
pub(crate) fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Serves a client accepted on listener `listener`, here or (`handed_off`) on another shard
/// that had no session for the connector.
pub(crate) async fn serve(
    shard: Rc<ShardCtx>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: usize,
    handed_off: bool,
) {
    let info = &shard.listeners[listener];
    let metrics = info.metrics.clone();
    let ip = peer.ip();
    let reject = |reason: RejectReason| {
        metrics.client_rejected(reason);
        reset(&stream);
        tracing::debug!(connector = %info.connector, %peer, reason = reason.as_str(), "client refused");
    };
    if !shard.shared.config.security.allow_cidrs.allows(ip) || !info.allow.allows(ip) {
        return reject(RejectReason::Cidr);
    }
    if shard.is_draining() {
        return reject(RejectReason::Draining);
    }
    let Some(session) = shard.route(&info.connector) else {
        if handed_off {
            return reject(RejectReason::NoAgent);
        }
        // No session here: move the client to a shard that has one. Only the hand-off
        // crosses shards; the client's frames then stay on its new shard.
        return match shard.hand_off(&info.connector, stream, peer, listener) {
            Ok(to) => {
                tracing::debug!(connector = %info.connector, %peer, from = shard.index, to, "client handed over")
            }
            Err(stream) => {
                metrics.client_rejected(RejectReason::NoAgent);
                reset(&stream);
            }
        };
    };
    if let (Some(pdp), Some(subject)) = (&shard.shared.pdp, &session.subject) {
        // Boxed: the decision's state would otherwise enlarge every client's task for its
        // whole life.
        match Box::pin(pdp.decide(subject, info.connector, ip)).await {
            Decision::Allow => {}
            // The PDP client logged why, with the request's id.
            _ => return reject(RejectReason::Denied),
        }
        // The session may have ended while the PDP was asked.
        if !session.is_routable() {
            return reject(RejectReason::NoAgent);
        }
    }
    let Some((id, mailbox)) = session.open_stream(&info.connector, peer, metrics.clone()) else {
        return reject(RejectReason::Overload);
    };
    metrics.stream_opened();
    let _ = stream.set_nodelay(true);
    pump(shard, session, id, stream, mailbox, metrics).await;
}

/// How a direction ended.
enum Outcome {
    /// This direction finished normally.
    Done,
    /// The stream was reset (by the agent, the sweeper, the session ending, or the client).
    Reset,
}

async fn pump(
    shard: Rc<ShardCtx>,
    session: Rc<SessionCtx>,
    id: StreamId,
    stream: TcpStream,
    mailbox: Rc<Mailbox>,
    metrics: ConnectorMetrics,
) {
    // Dropped (here, or if the task is cancelled) before `stream`, so the mailbox never
    // keeps the socket open.
    let _attached = mailbox.attach(&stream);
    // Only the driver's own receive loop is allocated: each is smaller than both together.
    let up: std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + '_>> =
        match shard.recv_ring {
            Some(buffer_len) => Box::pin(client_to_agent_ring(
                &shard,
                &session,
                id,
                stream.clone(),
                buffer_len,
                &mailbox.credit,
                &metrics,
            )),
            None => Box::pin(client_to_agent(
                &shard,
                &session,
                id,
                stream.clone(),
                &mailbox.credit,
                &metrics,
            )),
        };
    let down = Box::pin(agent_to_client(
        &shard,
        &session,
        id,
        stream.clone(),
        &mailbox,
    ));
    let outcome = match select(up, down).await {
        Either::Left((Outcome::Done, down)) => down.await,
        Either::Left((Outcome::Reset, _)) => Outcome::Reset,
        Either::Right((outcome, _)) => outcome,
    };
    if let Outcome::Reset = outcome {
        reset(&stream);
    }
}

/// Client → agent under epoll. Done when the client half-closed (FIN sent to the agent).
async fn client_to_agent(
    shard: &ShardCtx,
    session: &SessionCtx,
    id: StreamId,
    reader: TcpStream,
    credit: &Notify,
    metrics: &ConnectorMetrics,
) -> Outcome {
    // Readiness is awaited without a buffer, so an idle client holds none, and the reads
    // themselves never wait: a stream's task keeps no room for a read under way. After a read
    // that filled its buffer more bytes are likely waiting, and the next read goes straight on.
    let Ok(readiness) = reader.to_poll_fd() else {
        session.client_reset(id);
        return Outcome::Reset;
    };
    let mut drained = true;
    // Asked for a pipe at most once: a stream refused one stays on buffers.
    let mut may_splice = session.can_splice();
    loop {
        if drained && readiness.read_ready().await.is_err() {
            session.client_reset(id);
            return Outcome::Reset;
        }
        let read = read_pooled(shard, session, id, &reader, credit, metrics).await;
        if may_splice && matches!(read, Read::Bytes { whole: true, .. }) {
            // A bulk stream: from here on its bytes bypass the hub's memory, if a pipe can be
            // had.
            may_splice = false;
            if let Some(pipe) = splice_pipe(shard, &reader) {
                // Boxed: only bulk streams need room for it.
                let spliced = splice_to_agent(
                    shard, session, id, &reader, &readiness, &pipe, credit, metrics,
                );
                return Box::pin(spliced).await;
            }
        }
        match read.next() {
            Ok(wait) => drained = wait,
            Err(outcome) => return outcome,
        }
    }
}

/// A pipe for a bulk stream, as large as its window (at most 1 MiB), or none when the shard's
/// budget or the system refuses one (the stream then goes on through buffers).
fn splice_pipe(shard: &ShardCtx, reader: &TcpStream) -> Option<Rc<Pipe>> {
    let size = (shard.shared.config.limits.stream_window_bytes as usize).clamp(64 << 10, 1 << 20);
    match shard
        .pipes
        .pipe(size)
        .and_then(|pipe| splice::set_nonblocking(reader).map(|()| pipe))
    {
        Ok(pipe) => {
            shard.metrics.splice_pipe_opened();
            Some(Rc::new(pipe))
        }
        Err(e) => {
            shard.metrics.splice_pipe_refused();
            tracing::debug!(error = %e, "no pipe for a bulk stream; it stays on buffers");
            None
        }
    }
}

/// Client → agent for a bulk stream on a plain session: the client's bytes move into the
/// stream's pipe, as much as the credit allows, and the session's writer moves them on to the
/// agent behind each frame's header (see [`super::splice`]). Done when the client
/// half-closed.
#[allow(clippy::too_many_arguments)]
async fn splice_to_agent(
    shard: &ShardCtx,
    session: &SessionCtx,
    id: StreamId,
    reader: &TcpStream,
    readiness: &PollFd<socket2::Socket>,
    pipe: &Rc<Pipe>,
    credit: &Notify,
    metrics: &ConnectorMetrics,
) -> Outcome {
    // Called after a read that filled its buffer: more bytes are likely waiting.
    let mut drained = false;
    loop {
        // Whether the client socket was just reported readable.
        let woke = drained;
        if drained && readiness.read_ready().await.is_err() {
            session.client_reset(id);
            return Outcome::Reset;
        }
        let allowed = session.credit(id);
        if allowed == 0 {
            if session.has_ended() {
                return Outcome::Reset;
            }
            credit.notified().await;
            drained = false;
            continue;
        }
        let receive = match pipe.fill(reader, allowed) {
            // The end of the client's bytes, or an urgent mark (TCP out-of-band data).
            Ok(0) => true,
            Ok(n) => {
                metrics.bytes_to_agent(n as u64);
                shard.metrics.spliced(n as u64);
                if session.send_spliced(id, pipe, n).is_err() {
                    // The stream is gone (reset while we read); the other direction says why.
                    return Outcome::Reset;
                }
                // Less than asked for: the client had no more, or the pipe is full (then the
                // socket reads as ready at once and the next fill finds out).
                drained = n < allowed;
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if pipe.held() > 0 {
                    // The client may have nothing, or the pipe may be full: wait until the
                    // writer takes some, then look again.
                    pipe.drained().await;
                    drained = false;
                    false
                } else {
                    // Readable, yet nothing to splice: an urgent mark, or a spurious wake-up.
                    drained = true;
                    woke
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => false,
            Err(e) => {
                tracing::debug!(stream = %id, error = %e, "client splice failed");
                session.client_reset(id);
                return Outcome::Reset;
            }
        };
        if receive {
            // A splice stops for good at an urgent mark, where a receive steps over it (the
            // urgent byte itself is not part of the stream). A receive through a buffer tells
            // the end of the stream from a mark, and its frame queues behind the pipe's, in
            // order.
            match Box::pin(read_pooled(shard, session, id, reader, credit, metrics))
                .await
                .next()
            {
                Ok(wait) => drained = wait,
                Err(outcome) => return outcome,
            }
        }
    }
}

/// What one read into a pooled buffer did.
enum Read {
    /// Bytes went to the agent; `filled` when they were all that was asked for, `whole` when
    /// they filled a whole buffer (a bulk stream, not one short of credit).
    Bytes { filled: bool, whole: bool },
    /// The stream had no credit; it has been waited for.
    NoCredit,
    /// The client had nothing to read after all.
    NotReady,
    /// This direction is over.
    End(Outcome),
}

impl Read {
    /// Whether the receive loop should wait for the client to become readable next, or how
    /// the direction ended.
    fn next(self) -> Result<bool, Outcome> {
        match self {
            Read::Bytes { filled, .. } => Ok(!filled),
            Read::NoCredit => Ok(false),
            Read::NotReady => Ok(true),
            Read::End(outcome) => Err(outcome),
        }
    }
}

/// Reads what the client has sent into a pooled buffer behind the headroom, as much as the
/// stream's credit allows, without waiting for more, and sends it as one frame. Waits for
/// credit first if there is none.
async fn read_pooled(
    shard: &ShardCtx,
    session: &SessionCtx,
    id: StreamId,
    reader: &TcpStream,
    credit: &Notify,
    metrics: &ConnectorMetrics,
) -> Read {
    let allowed = session.credit(id);
    if allowed == 0 {
        if session.has_ended() {
            return Read::End(Outcome::Reset);
        }
        credit.notified().await;
        return Read::NoCredit;
    }
    let want = allowed.min(shard.pool.payload_capacity());
    let mut buf = shard.pool.take();
    match receive_now(reader, &mut buf, want) {
        Ok(0) => {
            shard.pool.give(buf);
            session.finish(id);
            Read::End(Outcome::Done)
        }
        Ok(n) => {
            metrics.bytes_to_agent(n as u64);
            if session.send_data(id, buf, n).is_err() {
                // The stream is gone (reset while we read); the other direction says why.
                return Read::End(Outcome::Reset);
            }
            Read::Bytes {
                filled: n == want,
                whole: n == shard.pool.payload_capacity(),
            }
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) =>
        {
            shard.pool.give(buf);
            Read::NotReady
        }
        Err(_) => {
            shard.pool.give(buf);
            session.client_reset(id);
            Read::End(Outcome::Reset)
        }
    }
}

/// Client → agent under io_uring: a multishot receive into the shard's provided-buffer ring
/// stays armed while the stream has credit for a whole buffer, so an idle client holds no
/// buffer and a busy one costs no submission per read. Each buffer the kernel fills becomes
/// a frame in place (see [`super::ring`]).
///
/// When credit runs short the receive is cancelled and what the kernel still delivers is
/// held, in order, until credit returns; nothing received is ever dropped. When the ring is
/// empty (every buffer in flight) one read goes through the pooled path instead.
async fn client_to_agent_ring(
    shard: &ShardCtx,
    session: &SessionCtx,
    id: StreamId,
    reader: TcpStream,
    buffer_len: usize,
    credit: &Notify,
    metrics: &ConnectorMetrics,
) -> Outcome {
    let mut held: VecDeque<RecvBuf> = VecDeque::new();
    let mut eof = false;
    loop {
        while held
            .front()
            .is_some_and(|front| session.credit(id) >= front.len())
        {
            let Some(buf) = held.pop_front() else { break };
            metrics.bytes_to_agent(buf.len() as u64);
            if session.send_received(id, buf).is_err() {
                return Outcome::Reset;
            }
        }
        if held.is_empty() && eof {
            session.finish(id);
            return Outcome::Done;
        }
        if !held.is_empty() || session.credit(id) < buffer_len {
            if session.has_ended() {
                return Outcome::Reset;
            }
            credit.notified().await;
            continue;
        }
        match receive_burst(session, id, &reader, buffer_len, &mut held, metrics).await {
            Burst::Paused => {}
            Burst::Eof => eof = true,
            Burst::RingEmpty => {
                shard.metrics.recv_ring_exhausted();
                // Boxed: a rare path whose state would enlarge every stream's future.
                if let Read::End(outcome) =
                    Box::pin(read_pooled(shard, session, id, &reader, credit, metrics)).await
                {
                    return outcome;
                }
            }
            Burst::Failed(e) => {
                tracing::debug!(stream = %id, error = %e, "client receive failed");
                session.client_reset(id);
                return Outcome::Reset;
            }
            Burst::Gone => return Outcome::Reset,
        }
    }
}

/// How a multishot receive ended.
enum Burst {
    /// Cancelled for lack of credit; anything received is in `held`.
    Paused,
    /// The client half-closed.
    Eof,
    /// The ring had no free buffer.
    RingEmpty,
    /// The connection failed.
    Failed(std::io::Error),
    /// The stream is gone (reset while we received).
    Gone,
}

async fn receive_burst(
    session: &SessionCtx,
    id: StreamId,
    reader: &TcpStream,
    buffer_len: usize,
    held: &mut VecDeque<RecvBuf>,
    metrics: &ConnectorMetrics,
) -> Burst {
    let cancel = CancelToken::new();
    let mut paused = false;
    let mut cancelled = false;
    let mut reader = reader;
    let mut received = std::pin::pin!(reader.read_multi(0).with_cancel(cancel.clone()));
    loop {
        match received.next().await {
            Some(Ok(buf)) => {
                let buf = RecvBuf::new(buf);
                if held.is_empty() && session.credit(id) >= buf.len() {
                    metrics.bytes_to_agent(buf.len() as u64);
                    if session.send_received(id, buf).is_err() {
                        return Burst::Gone;
                    }
                } else {
                    held.push_back(buf);
                }
                if !paused && session.credit(id) < buffer_len {
                    // Stop the receive; completions already on their way still come here.
                    cancel.clone().cancel();
                    paused = true;
                }
            }
            Some(Err(e)) if e.is_cancelled() => cancelled = true,
            // compio reports the kernel's ENOBUFS as `ResourceBusy`.
            Some(Err(e))
                if e.kind() == std::io::ErrorKind::ResourceBusy
                    || e.raw_os_error() == Some(libc::ENOBUFS) =>
            {
                return if paused {
                    Burst::Paused
                } else {
                    Burst::RingEmpty
                };
            }
            Some(Err(e)) => return Burst::Failed(e),
            // The stream ends at end of file, or after the cancellation took effect.
            None if paused && cancelled => return Burst::Paused,
            // Cancelled by something other than us: not an end of file, so not a FIN.
            None if cancelled => {
                return Burst::Failed(std::io::Error::other("receive cancelled"));
            }
            None => return Burst::Eof,
        }
    }
}

/// Agent → client. Done when the stream closed normally (both directions finished).
async fn agent_to_client(
    shard: &ShardCtx,
    session: &SessionCtx,
    id: StreamId,
    mut writer: TcpStream,
    mailbox: &Mailbox,
) -> Outcome {
    while let Some(msg) = mailbox.recv().await {
        match msg {
            ToClient::OpenOk => {}
            ToClient::Data(bytes) => {
                let n = bytes.len();
                mailbox.set_writing(true);
                // Boxed: only what the session could not write straight away comes here,
                // and an idle stream's task stays small without room for a write it is not
                // doing.
                let BufResult(result, bytes) = Box::pin(writer.write_all(bytes)).await;
                mailbox.set_writing(false);
                shard.pool.give(bytes);
                if result.is_err() {
                    session.client_reset(id);
                    return Outcome::Reset;
                }
                session.consumed(id, n);
            }
            ToClient::Fin => shut_write(&writer),
            ToClient::Reset(reason) => {
                tracing::debug!(stream = %id, reason = reason.as_str(), "stream reset");
                return Outcome::Reset;
            }
        }
    }
    Outcome::Done
}
