//! An agent's tunnel connection up to the start of its session: source check, HTTP upgrade,
//! token validation, HELLO and WELCOME.
//!
//! Everything before WELCOME runs under `limits.handshake_timeout_ms`, and at most
//! `limits.max_pending_handshakes` connections may be in this phase at once across the hub, so
//! an unauthenticated peer can hold little. Refusals answer with the standard status and no
//! detail; the log line says exactly why.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use compio::io::AsyncWriteExt;
use compio::net::TcpStream;
use nowconnect_core::control::{Hello, Refusal, Welcome};
use nowconnect_core::handshake::{self, Parsed, RequestLimits};
use nowconnect_core::session::{Role, Session, SessionConfig};
use nowconnect_core::ws::{self, CloseCode};

use super::session::SessionCtx;
use super::transport::Conn;
use super::{ShardCtx, now_unix};
use crate::auth::Credentials;
use crate::logging::warn_limited;

/// A refusal before the session exists.
struct Refused {
    /// What the metric and the log call it.
    reason: &'static str,
    /// The reply to send, if any (an HTTP error or a WebSocket close).
    reply: Vec<u8>,
}

/// Serves one accepted tunnel connection.
pub(crate) async fn serve(shard: Rc<ShardCtx>, mut stream: TcpStream, peer: SocketAddr) {
    let shared = &shard.shared;
    if !shared.config.tunnel.allow_cidrs.allows(peer.ip()) {
        shared.metrics.handshake_rejected("cidr");
        warn_limited!(%peer, "agent connection refused: source address not allowed");
        let mut reply = Vec::new();
        handshake::write_error_response(&mut reply, 403, &[]);
        let _ = stream.write_all(reply).await;
        return;
    }
    let limit = shared.config.limits.max_pending_handshakes;
    if shared.pending_handshakes.fetch_add(1, Ordering::AcqRel) >= limit {
        shared.pending_handshakes.fetch_sub(1, Ordering::AcqRel);
        shared.metrics.handshake_rejected("too_many_pending");
        warn_limited!(%peer, "agent connection refused: too many pending handshakes");
        let mut reply = Vec::new();
        handshake::write_error_response(&mut reply, 503, &[]);
        let _ = stream.write_all(reply).await;
        return;
    }
    // Control frames (WINDOW, pings) are small and latency-bound: never hold them back.
    let _ = stream.set_nodelay(true);
    let mut conn = match &shared.tls {
        Some(config) => match Conn::tls(stream, config.clone()) {
            Ok(conn) => conn,
            Err(_) => {
                shared.pending_handshakes.fetch_sub(1, Ordering::AcqRel);
                return;
            }
        },
        None => Conn::plain(stream),
    };
    let timeout = Duration::from_millis(shared.config.limits.handshake_timeout_ms);
    let result = compio::time::timeout(timeout, establish(&shard, &mut conn, peer)).await;
    shared.pending_handshakes.fetch_sub(1, Ordering::AcqRel);
    match result {
        Ok(Ok((session, decoder, leftover))) => {
            shard.add_session(session.clone());
            if let (Some(pdp), Some(subject)) = (&shared.pdp, &session.subject) {
                pdp.prewarm(subject, &session.accepted);
            }
            shared.metrics.session_opened(&session.agent_id);
            tracing::info!(session = %session.id, agent = %session.agent_id, %peer,
                accepted = ?session.accepted, "agent session established");
            let ending = session.clone().run(conn, decoder, leftover).await;
            shard.remove_session(&session);
            shared
                .metrics
                .session_closed(&session.agent_id, ending.code.0);
            tracing::info!(session = %session.id, agent = %session.agent_id, code = ending.code.0,
                reason = ending.reason, "agent session ended");
        }
        Ok(Err(refused)) => {
            shared.metrics.handshake_rejected(refused.reason);
            if !refused.reply.is_empty() {
                let _ = conn.write_all(refused.reply).await;
            }
            conn.shutdown().await;
        }
        Err(_) => {
            shared.metrics.handshake_rejected("timeout");
            warn_limited!(%peer, "agent handshake timed out");
        }
    }
}

fn http_refusal(reason: &'static str, status: u16, headers: &[(&str, &str)]) -> Refused {
    let mut reply = Vec::new();
    handshake::write_error_response(&mut reply, status, headers);
    Refused { reason, reply }
}

fn close_refusal(reason: &'static str, code: CloseCode, text: &str) -> Refused {
    let mut reply = Vec::new();
    ws::encode_close(&mut reply, code, text, None);
    Refused { reason, reply }
}

/// The upgrade, authentication, HELLO and WELCOME.
async fn establish(
    shard: &Rc<ShardCtx>,
    stream: &mut Conn,
    peer: SocketAddr,
) -> Result<(Rc<SessionCtx>, ws::Decoder, Vec<u8>), Refused> {
    let shared = &shard.shared;
    if let Err(e) = stream.handshake().await {
        warn_limited!(%peer, error = %e, "agent connection refused: TLS handshake failed");
        return Err(Refused {
            reason: "tls",
            reply: Vec::new(),
        });
    }
    // Room for an 8 KiB token, a DPoP proof and the usual headers.
    let limits = RequestLimits {
        max_header_bytes: 16 * 1024,
        ..RequestLimits::default()
    };
    let mut buf: Vec<u8> = Vec::with_capacity(limits.max_header_bytes);
    let mut chunk: Vec<u8> = Vec::new();
    // Read until the request is complete.
    let (request_len, response, identity) = loop {
        let (result, returned) = stream.read(chunk).await;
        chunk = returned;
        match result {
            Ok(()) if !chunk.is_empty() => buf.extend_from_slice(&chunk),
            _ => {
                return Err(Refused {
                    reason: "closed",
                    reply: Vec::new(),
                });
            }
        }
        match handshake::parse_request(&buf, &limits) {
            Ok(Parsed::Partial) => continue,
            Ok(Parsed::Complete { value, consumed }) => {
                if value.path != shared.config.tunnel.path {
                    warn_limited!(%peer, path = value.path, "agent connection refused: unknown path");
                    return Err(http_refusal("path", 404, &[]));
                }
                let certificate = stream.peer_certificate();
                let credentials = Credentials {
                    authorization: value.authorization,
                    authorization_count: value.authorization_count,
                    dpop: value.dpop,
                    dpop_count: value.dpop_count,
                    host: value.host,
                    path: value.path,
                    certificate: certificate.as_deref(),
                };
                let identity = match shared.auth.authenticate(&credentials, now_unix()).await {
                    Ok(identity) => identity,
                    Err(refusal) => {
                        shared.metrics.auth_failure(refusal.reason());
                        warn_limited!(per refusal.reason(); %peer, reason = refusal.reason(), detail = %refusal,
                            "agent refused: authentication failed");
                        return Err(http_refusal(
                            "auth",
                            401,
                            &[("WWW-Authenticate", refusal.www_authenticate())],
                        ));
                    }
                };
                let mut response = Vec::new();
                handshake::write_response(&mut response, &value);
                break (consumed, response, identity);
            }
            Err(e) => {
                warn_limited!(%peer, error = %e, "agent connection refused: bad upgrade request");
                let extra: &[(&str, &str)] = if e.status() == 426 {
                    &[("Sec-WebSocket-Version", "13")]
                } else {
                    &[]
                };
                return Err(http_refusal("bad_upgrade", e.status(), extra));
            }
        }
    };
    let (result, _) = stream.write_all(response).await;
    if result.is_err() {
        return Err(Refused {
            reason: "closed",
            reply: Vec::new(),
        });
    }

    // HELLO: the first text message. Pings before it are answered; anything else is an error.
    let mut decoder = ws::Decoder::new(
        ws::Role::Server,
        ws::Limits {
            max_message: 16 << 20,
            max_text: nowconnect_core::control::MAX_CONTROL_MESSAGE,
        },
    );
    let mut pending: Vec<u8> = buf.split_off(request_len);
    let hello = 'hello: loop {
        let mut pos = 0;
        while pos < pending.len() {
            let (n, event) = decoder.decode(&mut pending[pos..]).map_err(|e| {
                close_refusal("websocket", e.close_code(), "websocket protocol error")
            })?;
            pos += n;
            match event {
                None => {}
                Some(ws::Event::Text(text)) => {
                    pending.drain(..pos);
                    break 'hello text;
                }
                Some(ws::Event::Ping(payload)) => {
                    let mut pong = Vec::new();
                    ws::encode_frame(&mut pong, true, ws::Opcode::Pong, payload.as_bytes(), None);
                    let _ = stream.write_all(pong).await;
                }
                Some(_) => {
                    return Err(close_refusal(
                        "hello",
                        CloseCode::TUNNEL_PROTOCOL_ERROR,
                        "expected HELLO",
                    ));
                }
            }
        }
        pending.clear();
        let (result, returned) = stream.read(chunk).await;
        chunk = returned;
        match result {
            Ok(()) if !chunk.is_empty() => pending.extend_from_slice(&chunk),
            _ => {
                return Err(Refused {
                    reason: "closed",
                    reply: Vec::new(),
                });
            }
        }
    };
    let hello = Hello::parse(&hello).map_err(|e| {
        tracing::warn!(%peer, agent = %identity.agent_id, error = %e, "agent refused: bad HELLO");
        close_refusal("hello", CloseCode::TUNNEL_PROTOCOL_ERROR, "bad HELLO")
    })?;
    if hello.agent_id != identity.agent_id {
        shared.metrics.auth_failure("agent_id_mismatch");
        tracing::warn!(%peer, token_agent = %identity.agent_id, hello_agent = %hello.agent_id,
            "agent refused: HELLO agent_id differs from the token's");
        return Err(close_refusal(
            "agent_id",
            CloseCode::FORBIDDEN,
            "agent_id mismatch",
        ));
    }

    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    let security = &shared.config.security;
    for connector in &hello.connectors {
        let reason = if !shared
            .config
            .listeners
            .iter()
            .any(|l| l.connector == *connector)
        {
            Some("no_listener")
        } else if security.require_connector_scopes
            && !grants(
                &identity.scopes,
                &security.connector_scope_prefix,
                connector.as_str(),
            )
        {
            Some("scope")
        } else {
            None
        };
        match reason {
            None => accepted.push(*connector),
            Some(reason) => {
                if reason == "scope" {
                    shared.metrics.auth_failure("connector_scope");
                    tracing::warn!(%peer, agent = %identity.agent_id, connector = %connector,
                        "connector refused: the token does not grant its scope");
                }
                refused.push(Refusal {
                    connector: *connector,
                    reason: reason.to_string(),
                });
            }
        }
    }
    let limits = &shared.config.limits;
    let session_id = shard.next_session_id();
    let welcome = Welcome {
        v: nowconnect_core::control::PROTOCOL_VERSION,
        session: session_id.clone(),
        replica_id: shared.config.replica_id.clone(),
        shard: shard.index as u32,
        shards: shared.shards as u32,
        accepted: accepted.clone(),
        refused,
        window: limits.stream_window_bytes,
        max_frame: limits.max_frame_bytes,
        idle_timeout_ms: limits.idle_timeout_ms,
        heartbeat_ms: limits.heartbeat_ms,
        token_exp: Some(identity.exp),
    };
    let core = Session::new(
        Role::Hub,
        SessionConfig {
            window: limits.stream_window_bytes,
            max_frame: limits.max_frame_bytes,
            idle_timeout_ms: limits.idle_timeout_ms,
            max_streams: limits.max_streams_per_session,
        },
    );
    let session = SessionCtx::new(shard.clone(), session_id, &identity, peer, accepted, core);
    session.send_text(&welcome.to_json());
    Ok((session, decoder, pending))
}

/// Whether `scopes` holds `prefix` followed by `connector`, exactly.
fn grants(scopes: &[String], prefix: &str, connector: &str) -> bool {
    scopes.iter().any(|scope| {
        scope
            .strip_prefix(prefix)
            .is_some_and(|name| name == connector)
    })
}
