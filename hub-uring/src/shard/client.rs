//! One client connection: admission, routing to a session, and the two directions of bytes.
//!
//! Client → agent: read into a pooled buffer behind the headroom, only as much as the stream's
//! credit allows, and hand the buffer to the session's writer as a finished frame. Agent →
//! client: write what the session delivers, then report it consumed so credit flows back. A
//! reset from either side ends the connection with a TCP RST (`SO_LINGER` 0).

use std::net::SocketAddr;
use std::rc::Rc;

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf};
use compio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use compio::net::TcpStream;
use futures_util::future::{Either, select};
use nowconnect_core::frame::StreamId;
use tokio::sync::Notify;

use super::ShardCtx;
use super::pool::HEADROOM;
use super::session::{Mailbox, SessionCtx, ToClient};
use crate::metrics::{ConnectorMetrics, RejectReason};

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
    let Some((id, mailbox, credit)) = session.open_stream(&info.connector, peer, metrics.clone())
    else {
        return reject(RejectReason::Overload);
    };
    metrics.stream_opened();
    let _ = stream.set_nodelay(true);
    pump(shard, session, id, stream, mailbox, credit, metrics).await;
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
    credit: Rc<Notify>,
    metrics: ConnectorMetrics,
) {
    let up = Box::pin(client_to_agent(
        &shard,
        &session,
        id,
        stream.clone(),
        &credit,
        &metrics,
    ));
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

/// Client → agent. Done when the client half-closed (FIN sent to the agent).
async fn client_to_agent(
    shard: &ShardCtx,
    session: &SessionCtx,
    id: StreamId,
    mut reader: TcpStream,
    credit: &Notify,
    metrics: &ConnectorMetrics,
) -> Outcome {
    // Readiness is awaited without a buffer, so an idle client holds none. After a read that
    // filled its buffer more bytes are likely waiting, and the next read goes straight on.
    let Ok(readiness) = reader.to_poll_fd() else {
        session.client_reset(id);
        return Outcome::Reset;
    };
    let mut drained = true;
    loop {
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
        let want = allowed.min(shard.pool.payload_capacity());
        let buf = shard.pool.take();
        let BufResult(result, slice) = reader.read(buf.slice(HEADROOM..HEADROOM + want)).await;
        let buf = slice.into_inner();
        match result {
            Ok(0) => {
                shard.pool.give(buf);
                session.finish(id);
                return Outcome::Done;
            }
            Ok(n) => {
                drained = n < want;
                metrics.bytes_to_agent(n as u64);
                if session.send_data(id, buf, n).is_err() {
                    // The stream is gone (reset while we read); the other direction says why.
                    return Outcome::Reset;
                }
            }
            Err(_) => {
                shard.pool.give(buf);
                session.client_reset(id);
                return Outcome::Reset;
            }
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
                let BufResult(result, bytes) = writer.write_all(bytes).await;
                shard.pool.give(bytes);
                if result.is_err() {
                    session.client_reset(id);
                    return Outcome::Reset;
                }
                session.consumed(id, n);
            }
            ToClient::Fin => {
                let _ = writer.shutdown().await;
            }
            ToClient::Reset(reason) => {
                tracing::debug!(stream = %id, reason = reason.as_str(), "stream reset");
                return Outcome::Reset;
            }
        }
    }
    Outcome::Done
}
