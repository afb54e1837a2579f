//! The tunnel frame codec.
//!
//! Tunnel frames travel inside WebSocket binary messages, one or more per message:
//!
//! ```text
//! frame = type:u8  stream:u32 (big endian)  len:u32 (big endian)  payload[len]
//! ```
//!
//! The [`FrameDecoder`] is incremental: it accepts input split at any byte, keeps at most a
//! header and a short control payload of its own, and hands DATA payloads back as slices of the
//! caller's input, so stream bytes are never copied by the codec. The encoders write into
//! buffers the caller owns; [`encode_data_header_before`] writes a DATA header into headroom the
//! caller left in front of bytes it read straight from a socket.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::name::{ConnectorName, MAX_CONNECTOR_NAME, NameError};

/// Length of a frame header: type, stream id and payload length.
pub const HEADER_LEN: usize = 9;

/// The longest reason an RST frame may carry, in bytes.
pub const MAX_RST_REASON: usize = 128;

/// The longest OPEN payload: name length, name, family, IPv6 address, port.
pub const MAX_OPEN_PAYLOAD: usize = 1 + MAX_CONNECTOR_NAME + 1 + 16 + 2;

/// The largest payload a non-DATA frame can have; the decoder buffers at most this much.
const MAX_CONTROL_PAYLOAD: usize = if MAX_OPEN_PAYLOAD > 1 + MAX_RST_REASON {
    MAX_OPEN_PAYLOAD
} else {
    1 + MAX_RST_REASON
};

/// A stream identifier, chosen by the hub. Zero is reserved and never names a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u32);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The frame types of wire protocol v1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// Hub → agent: open a stream to a connector.
    Open = 0x01,
    /// Agent → hub: the target accepted the connection.
    OpenOk = 0x02,
    /// Stream bytes, either direction.
    Data = 0x03,
    /// The sender will send no more DATA on this stream.
    Fin = 0x04,
    /// The stream is aborted, with a code and an optional reason.
    Rst = 0x05,
    /// Credit returned to the peer.
    Window = 0x06,
}

impl FrameType {
    /// The frame type for a wire byte, if it is one.
    pub fn from_u8(b: u8) -> Option<FrameType> {
        Some(match b {
            0x01 => FrameType::Open,
            0x02 => FrameType::OpenOk,
            0x03 => FrameType::Data,
            0x04 => FrameType::Fin,
            0x05 => FrameType::Rst,
            0x06 => FrameType::Window,
            _ => return None,
        })
    }
}

/// Why a stream was reset: the `code` of an RST frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RstCode {
    /// The target refused the connection.
    Refused = 1,
    /// The target could not be reached, or the dial timed out.
    Unreachable = 2,
    /// The stream is not authorized.
    NotAuthorized = 3,
    /// No bytes moved for the idle timeout.
    Idle = 4,
    /// The peer broke the protocol on this stream (for instance, overran its window).
    ProtocolViolation = 5,
    /// A TCP end reset its connection.
    PeerReset = 6,
    /// The session carrying the stream ended.
    SessionEnded = 7,
    /// The agent has no such connector.
    NoSuchConnector = 8,
    /// Too many streams.
    Overload = 9,
}

impl RstCode {
    /// The code for a wire byte, if it is one.
    pub fn from_u8(b: u8) -> Option<RstCode> {
        Some(match b {
            1 => RstCode::Refused,
            2 => RstCode::Unreachable,
            3 => RstCode::NotAuthorized,
            4 => RstCode::Idle,
            5 => RstCode::ProtocolViolation,
            6 => RstCode::PeerReset,
            7 => RstCode::SessionEnded,
            8 => RstCode::NoSuchConnector,
            9 => RstCode::Overload,
            _ => return None,
        })
    }

    /// A short name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RstCode::Refused => "refused",
            RstCode::Unreachable => "unreachable",
            RstCode::NotAuthorized => "not_authorized",
            RstCode::Idle => "idle",
            RstCode::ProtocolViolation => "protocol_violation",
            RstCode::PeerReset => "peer_reset",
            RstCode::SessionEnded => "session_ended",
            RstCode::NoSuchConnector => "no_such_connector",
            RstCode::Overload => "overload",
        }
    }
}

/// The optional UTF-8 reason of an RST frame, stored inline (at most [`MAX_RST_REASON`] bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RstReason {
    len: u8,
    bytes: [u8; MAX_RST_REASON],
}

impl RstReason {
    /// An empty reason.
    pub const EMPTY: RstReason = RstReason {
        len: 0,
        bytes: [0; MAX_RST_REASON],
    };

    /// A reason from `s`, cut at a character boundary to fit [`MAX_RST_REASON`] bytes.
    pub fn new(s: &str) -> RstReason {
        let mut end = s.len().min(MAX_RST_REASON);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut reason = RstReason::EMPTY;
        reason.bytes[..end].copy_from_slice(&s.as_bytes()[..end]);
        reason.len = end as u8;
        reason
    }

    /// The reason text; empty when the peer sent none.
    pub fn as_str(&self) -> &str {
        // Only valid UTF-8 is ever stored: `new` cuts at a char boundary, the decoder validates.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or_default()
    }
}

impl fmt::Debug for RstReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// One decoded frame, or a piece of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Open `stream` to `connector` for a client at `peer`.
    Open {
        /// The new stream.
        stream: StreamId,
        /// The connector the client connected to.
        connector: ConnectorName,
        /// The client's address, as the hub saw it.
        peer: SocketAddr,
    },
    /// The agent connected `stream` to its target.
    OpenOk {
        /// The stream.
        stream: StreamId,
    },
    /// A piece of a DATA frame's payload, borrowed from the decoder's input. One DATA frame may
    /// arrive as several pieces when the input was split inside it; only an empty DATA frame
    /// yields an empty piece.
    Data {
        /// The stream.
        stream: StreamId,
        /// The bytes.
        payload: &'a [u8],
    },
    /// The sender finished its direction of `stream`.
    Fin {
        /// The stream.
        stream: StreamId,
    },
    /// The sender aborted `stream`.
    Rst {
        /// The stream.
        stream: StreamId,
        /// Why.
        code: RstCode,
        /// Free text for logs; may be empty.
        reason: RstReason,
    },
    /// The sender returned `increment` bytes of credit on `stream`.
    Window {
        /// The stream.
        stream: StreamId,
        /// Bytes of credit.
        increment: u32,
    },
}

impl Frame<'_> {
    /// The stream the frame belongs to.
    pub fn stream(&self) -> StreamId {
        match *self {
            Frame::Open { stream, .. }
            | Frame::OpenOk { stream }
            | Frame::Data { stream, .. }
            | Frame::Fin { stream }
            | Frame::Rst { stream, .. }
            | Frame::Window { stream, .. } => stream,
        }
    }
}

/// Why bytes are not a valid frame. Every one of these ends the session (close code 4400):
/// once framing is in doubt, nothing after it can be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The type byte names no frame type.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// Stream id zero is reserved.
    #[error("frame on reserved stream id 0")]
    ZeroStream,
    /// A DATA frame is longer than the negotiated maximum.
    #[error("DATA frame of {len} bytes exceeds the maximum of {max}")]
    DataTooLong {
        /// The announced length.
        len: u32,
        /// The negotiated maximum.
        max: u32,
    },
    /// A non-DATA frame has a payload length its type does not allow.
    #[error("{ty:?} frame with a payload of {len} bytes")]
    BadLength {
        /// The frame type.
        ty: FrameType,
        /// The announced length.
        len: u32,
    },
    /// The connector name in an OPEN frame is not valid.
    #[error("OPEN frame with a bad connector name: {0}")]
    BadConnector(NameError),
    /// The address in an OPEN frame is malformed.
    #[error("OPEN frame with a malformed client address")]
    BadAddress,
    /// The code of an RST frame is unknown.
    #[error("RST frame with unknown code {0}")]
    UnknownRstCode(u8),
    /// The reason of an RST frame is not UTF-8.
    #[error("RST frame whose reason is not UTF-8")]
    BadReason,
    /// The message ended inside a frame (frames never span WebSocket messages).
    #[error("message ended inside a frame")]
    Truncated,
    /// The decoder already failed; the session must end.
    #[error("frame decoder used after an error")]
    Poisoned,
}

#[derive(Clone, Copy)]
enum DecodeState {
    /// Collecting the 9 header bytes.
    Header { buf: [u8; HEADER_LEN], have: u8 },
    /// Passing through the rest of a DATA payload.
    Data { stream: StreamId, remaining: u32 },
    /// Collecting the payload of a short non-DATA frame.
    Control {
        ty: FrameType,
        stream: StreamId,
        len: u8,
        buf: [u8; MAX_CONTROL_PAYLOAD],
        have: u8,
    },
    /// An error was returned; nothing more is decoded.
    Failed,
}

/// Incremental decoder of tunnel frames. See the module documentation.
#[derive(Clone)]
pub struct FrameDecoder {
    max_frame: u32,
    state: DecodeState,
}

const EMPTY_HEADER: DecodeState = DecodeState::Header {
    buf: [0; HEADER_LEN],
    have: 0,
};

impl FrameDecoder {
    /// A decoder that refuses DATA frames longer than `max_frame` bytes.
    pub fn new(max_frame: u32) -> FrameDecoder {
        FrameDecoder {
            max_frame,
            state: EMPTY_HEADER,
        }
    }

    /// Whether the decoder is between frames, which it must be at the end of every WebSocket
    /// message.
    pub fn is_at_boundary(&self) -> bool {
        matches!(self.state, DecodeState::Header { have: 0, .. })
    }

    /// The stream and the payload bytes left of the DATA frame being read, if one is.
    pub fn data_left(&self) -> Option<(StreamId, u32)> {
        match self.state {
            DecodeState::Data { stream, remaining } => Some((stream, remaining)),
            _ => None,
        }
    }

    /// Accounts for `n` payload bytes of the DATA frame in progress that the caller took off
    /// the connection itself, as if [`FrameDecoder::decode`] had returned them. `n` must not
    /// exceed what [`FrameDecoder::data_left`] reports; a larger `n` is cut to it.
    pub fn skip_data(&mut self, n: u32) {
        if let DecodeState::Data { remaining, .. } = &mut self.state {
            *remaining -= n.min(*remaining);
            if *remaining == 0 {
                self.state = EMPTY_HEADER;
            }
        }
    }

    /// Checks that a WebSocket message ended at a frame boundary.
    pub fn end_of_message(&mut self) -> Result<(), FrameError> {
        match self.state {
            DecodeState::Failed => Err(FrameError::Poisoned),
            _ if self.is_at_boundary() => Ok(()),
            _ => {
                self.state = DecodeState::Failed;
                Err(FrameError::Truncated)
            }
        }
    }

    /// Decodes from the front of `input`. Returns the bytes consumed and at most one frame.
    ///
    /// Call it again with the rest of the input until it is empty. A frame may come back with
    /// fewer bytes consumed than `input` holds; `(n, None)` means the `n` bytes were absorbed
    /// and more input is needed. After an error the decoder answers [`FrameError::Poisoned`].
    pub fn decode<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<Frame<'a>>), FrameError> {
        let result = self.step(input);
        if result.is_err() {
            self.state = DecodeState::Failed;
        }
        result
    }

    fn step<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Option<Frame<'a>>), FrameError> {
        match &mut self.state {
            DecodeState::Failed => Err(FrameError::Poisoned),
            DecodeState::Header { buf, have } => {
                let have_now = *have as usize;
                let take = (HEADER_LEN - have_now).min(input.len());
                buf[have_now..have_now + take].copy_from_slice(&input[..take]);
                *have += take as u8;
                if (*have as usize) < HEADER_LEN {
                    return Ok((take, None));
                }
                let header = *buf;
                let frame = self.start_frame(&header)?;
                Ok((take, frame))
            }
            DecodeState::Data { stream, remaining } => {
                let take = (*remaining as usize).min(input.len());
                let stream = *stream;
                *remaining -= take as u32;
                if *remaining == 0 {
                    self.state = EMPTY_HEADER;
                }
                if take == 0 {
                    return Ok((0, None));
                }
                Ok((
                    take,
                    Some(Frame::Data {
                        stream,
                        payload: &input[..take],
                    }),
                ))
            }
            DecodeState::Control {
                ty,
                stream,
                len,
                buf,
                have,
            } => {
                let take = (*len as usize - *have as usize).min(input.len());
                let at = *have as usize;
                buf[at..at + take].copy_from_slice(&input[..take]);
                *have += take as u8;
                if *have < *len {
                    return Ok((take, None));
                }
                let (ty, stream, payload_len, payload) = (*ty, *stream, *len as usize, *buf);
                self.state = EMPTY_HEADER;
                let frame = parse_control(ty, stream, &payload[..payload_len])?;
                Ok((take, Some(frame)))
            }
        }
    }

    /// Acts on a complete header: returns a frame at once for empty payloads.
    fn start_frame<'a>(&mut self, h: &[u8; HEADER_LEN]) -> Result<Option<Frame<'a>>, FrameError> {
        let ty = FrameType::from_u8(h[0]).ok_or(FrameError::UnknownType(h[0]))?;
        let stream = StreamId(u32::from_be_bytes([h[1], h[2], h[3], h[4]]));
        let len = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
        if stream.0 == 0 {
            return Err(FrameError::ZeroStream);
        }
        let bad_length = || FrameError::BadLength { ty, len };
        match ty {
            FrameType::Data => {
                if len > self.max_frame {
                    return Err(FrameError::DataTooLong {
                        len,
                        max: self.max_frame,
                    });
                }
                if len == 0 {
                    // Still reported, so the session applies its stream rules to it.
                    self.state = EMPTY_HEADER;
                    return Ok(Some(Frame::Data {
                        stream,
                        payload: &[],
                    }));
                }
                self.state = DecodeState::Data {
                    stream,
                    remaining: len,
                };
                Ok(None)
            }
            FrameType::OpenOk | FrameType::Fin => {
                if len != 0 {
                    return Err(bad_length());
                }
                self.state = EMPTY_HEADER;
                Ok(Some(if ty == FrameType::Fin {
                    Frame::Fin { stream }
                } else {
                    Frame::OpenOk { stream }
                }))
            }
            FrameType::Open | FrameType::Rst | FrameType::Window => {
                let allowed = match ty {
                    // name_len, a name of at least one byte, family, IPv4, port.
                    FrameType::Open => (1 + 1 + 1 + 4 + 2)..=MAX_OPEN_PAYLOAD,
                    FrameType::Rst => 1..=1 + MAX_RST_REASON,
                    _ => 4..=4,
                };
                if !allowed.contains(&(len as usize)) {
                    return Err(bad_length());
                }
                self.state = DecodeState::Control {
                    ty,
                    stream,
                    len: len as u8,
                    buf: [0; MAX_CONTROL_PAYLOAD],
                    have: 0,
                };
                Ok(None)
            }
        }
    }
}

fn parse_control(ty: FrameType, stream: StreamId, p: &[u8]) -> Result<Frame<'static>, FrameError> {
    match ty {
        FrameType::Window => Ok(Frame::Window {
            stream,
            increment: u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
        }),
        FrameType::Rst => {
            let code = RstCode::from_u8(p[0]).ok_or(FrameError::UnknownRstCode(p[0]))?;
            let text = std::str::from_utf8(&p[1..]).map_err(|_| FrameError::BadReason)?;
            Ok(Frame::Rst {
                stream,
                code,
                reason: RstReason::new(text),
            })
        }
        _ => {
            let name_len = p[0] as usize;
            let rest = p.get(1..).unwrap_or_default();
            let name = rest.get(..name_len).ok_or(FrameError::BadAddress)?;
            let connector = ConnectorName::from_bytes(name).map_err(FrameError::BadConnector)?;
            let peer = parse_address(&rest[name_len..]).ok_or(FrameError::BadAddress)?;
            Ok(Frame::Open {
                stream,
                connector,
                peer,
            })
        }
    }
}

fn parse_address(p: &[u8]) -> Option<SocketAddr> {
    let (&family, rest) = p.split_first()?;
    let (ip, port): (IpAddr, &[u8]) = match (family, rest.len()) {
        (4, 6) => (
            Ipv4Addr::from(<[u8; 4]>::try_from(&rest[..4]).ok()?).into(),
            &rest[4..],
        ),
        (6, 18) => (
            Ipv6Addr::from(<[u8; 16]>::try_from(&rest[..16]).ok()?).into(),
            &rest[16..],
        ),
        _ => return None,
    };
    Some(SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]])))
}

/// Writes a frame header into the first [`HEADER_LEN`] bytes of `dst`.
///
/// # Panics
/// If `dst` is shorter than [`HEADER_LEN`]: that is a bug in the caller, not bad input.
pub fn write_header(dst: &mut [u8], ty: FrameType, stream: StreamId, len: u32) {
    dst[0] = ty as u8;
    dst[1..5].copy_from_slice(&stream.0.to_be_bytes());
    dst[5..9].copy_from_slice(&len.to_be_bytes());
}

fn push_header(dst: &mut Vec<u8>, ty: FrameType, stream: StreamId, len: usize) {
    let mut header = [0; HEADER_LEN];
    write_header(&mut header, ty, stream, len as u32);
    dst.extend_from_slice(&header);
}

/// The caller did not leave enough room in front of a payload for its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{needed} bytes of headroom needed in front of the payload, {available} available")]
pub struct HeadroomError {
    /// Bytes the header needs.
    pub needed: usize,
    /// Bytes in front of the payload.
    pub available: usize,
}

/// Writes a DATA header into `buf` so that it ends at `payload_start`, in front of `len` bytes
/// the caller already placed there. Returns where the frame starts.
pub fn encode_data_header_before(
    buf: &mut [u8],
    payload_start: usize,
    stream: StreamId,
    len: u32,
) -> Result<usize, HeadroomError> {
    let start = payload_start.checked_sub(HEADER_LEN).ok_or(HeadroomError {
        needed: HEADER_LEN,
        available: payload_start,
    })?;
    write_header(&mut buf[start..payload_start], FrameType::Data, stream, len);
    Ok(start)
}

/// Appends a DATA frame carrying `payload` (a copy; see [`encode_data_header_before`] for the
/// path without one).
pub fn encode_data(dst: &mut Vec<u8>, stream: StreamId, payload: &[u8]) {
    push_header(dst, FrameType::Data, stream, payload.len());
    dst.extend_from_slice(payload);
}

/// Appends an OPEN frame.
pub fn encode_open(
    dst: &mut Vec<u8>,
    stream: StreamId,
    connector: &ConnectorName,
    peer: SocketAddr,
) {
    let name = connector.as_bytes();
    let addr_len = match peer.ip() {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 16,
    };
    push_header(
        dst,
        FrameType::Open,
        stream,
        1 + name.len() + 1 + addr_len + 2,
    );
    dst.push(name.len() as u8);
    dst.extend_from_slice(name);
    match peer.ip() {
        IpAddr::V4(ip) => {
            dst.push(4);
            dst.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            dst.push(6);
            dst.extend_from_slice(&ip.octets());
        }
    }
    dst.extend_from_slice(&peer.port().to_be_bytes());
}

/// Appends an OPEN_OK frame.
pub fn encode_open_ok(dst: &mut Vec<u8>, stream: StreamId) {
    push_header(dst, FrameType::OpenOk, stream, 0);
}

/// Appends a FIN frame.
pub fn encode_fin(dst: &mut Vec<u8>, stream: StreamId) {
    push_header(dst, FrameType::Fin, stream, 0);
}

/// Appends an RST frame; the reason is cut at a character boundary to [`MAX_RST_REASON`] bytes.
pub fn encode_rst(dst: &mut Vec<u8>, stream: StreamId, code: RstCode, reason: &str) {
    let reason = RstReason::new(reason);
    let text = reason.as_str().as_bytes();
    push_header(dst, FrameType::Rst, stream, 1 + text.len());
    dst.push(code as u8);
    dst.extend_from_slice(text);
}

/// Appends a WINDOW frame.
pub fn encode_window(dst: &mut Vec<u8>, stream: StreamId, increment: u32) {
    push_header(dst, FrameType::Window, stream, 4);
    dst.extend_from_slice(&increment.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ConnectorName {
        ConnectorName::from_str(s).unwrap()
    }

    /// Decodes everything, joining DATA pieces per frame boundary as they arrive.
    fn decode_all(
        dec: &mut FrameDecoder,
        mut input: &[u8],
    ) -> Result<Vec<Frame<'static>>, FrameError> {
        let mut out = Vec::new();
        while !input.is_empty() {
            let (n, frame) = dec.decode(input)?;
            assert!(n > 0, "decoder made no progress");
            if let Some(frame) = frame {
                out.push(match frame {
                    Frame::Data { stream, payload } => Frame::Data {
                        stream,
                        payload: Vec::leak(payload.to_vec()),
                    },
                    Frame::Open {
                        stream,
                        connector,
                        peer,
                    } => Frame::Open {
                        stream,
                        connector,
                        peer,
                    },
                    Frame::OpenOk { stream } => Frame::OpenOk { stream },
                    Frame::Fin { stream } => Frame::Fin { stream },
                    Frame::Rst {
                        stream,
                        code,
                        reason,
                    } => Frame::Rst {
                        stream,
                        code,
                        reason,
                    },
                    Frame::Window { stream, increment } => Frame::Window { stream, increment },
                });
            }
            input = &input[n..];
        }
        Ok(out)
    }

    #[test]
    fn every_frame_type_round_trips() {
        let v4: SocketAddr = "192.0.2.7:50000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let mut wire = Vec::new();
        encode_open(&mut wire, StreamId(1), &name("ldap"), v4);
        encode_open(&mut wire, StreamId(2), &name("pg.main"), v6);
        encode_open_ok(&mut wire, StreamId(1));
        encode_data(&mut wire, StreamId(1), b"hello");
        encode_fin(&mut wire, StreamId(1));
        encode_rst(
            &mut wire,
            StreamId(2),
            RstCode::Refused,
            "connection refused",
        );
        encode_window(&mut wire, StreamId(1), 65536);
        let frames = decode_all(&mut FrameDecoder::new(65536), &wire).unwrap();
        assert_eq!(
            frames,
            vec![
                Frame::Open {
                    stream: StreamId(1),
                    connector: name("ldap"),
                    peer: v4
                },
                Frame::Open {
                    stream: StreamId(2),
                    connector: name("pg.main"),
                    peer: v6
                },
                Frame::OpenOk {
                    stream: StreamId(1)
                },
                Frame::Data {
                    stream: StreamId(1),
                    payload: b"hello"
                },
                Frame::Fin {
                    stream: StreamId(1)
                },
                Frame::Rst {
                    stream: StreamId(2),
                    code: RstCode::Refused,
                    reason: RstReason::new("connection refused")
                },
                Frame::Window {
                    stream: StreamId(1),
                    increment: 65536
                },
            ]
        );
    }

    #[test]
    fn byte_at_a_time_gives_the_same_frames() {
        let mut wire = Vec::new();
        encode_open(
            &mut wire,
            StreamId(9),
            &name("x"),
            "10.0.0.1:1".parse().unwrap(),
        );
        encode_data(&mut wire, StreamId(9), b"abc");
        encode_rst(&mut wire, StreamId(9), RstCode::Idle, "");
        let mut dec = FrameDecoder::new(1024);
        let mut data = Vec::new();
        let mut others = Vec::new();
        for byte in &wire {
            let (n, frame) = dec.decode(std::slice::from_ref(byte)).unwrap();
            assert_eq!(n, 1);
            match frame {
                Some(Frame::Data { payload, .. }) => data.extend_from_slice(payload),
                Some(other) => others.push(other.stream()),
                None => {}
            }
        }
        assert_eq!(data, b"abc");
        assert_eq!(others, vec![StreamId(9), StreamId(9)]);
        assert!(dec.is_at_boundary());
    }

    #[test]
    fn data_payload_is_borrowed_from_the_input() {
        let mut wire = Vec::new();
        encode_data(&mut wire, StreamId(3), &[7; 100]);
        let mut dec = FrameDecoder::new(1024);
        let (n, none) = dec.decode(&wire).unwrap();
        assert_eq!((n, none), (HEADER_LEN, None));
        let (n, frame) = dec.decode(&wire[HEADER_LEN..]).unwrap();
        assert_eq!(n, 100);
        let Some(Frame::Data { payload, .. }) = frame else {
            panic!("expected data")
        };
        assert_eq!(payload.as_ptr(), wire[HEADER_LEN..].as_ptr());
    }

    #[test]
    fn header_before_payload_without_copy() {
        let mut buf = vec![0u8; 32 + 5];
        buf[32..].copy_from_slice(b"world");
        let start = encode_data_header_before(&mut buf, 32, StreamId(4), 5).unwrap();
        assert_eq!(start, 32 - HEADER_LEN);
        let frames = decode_all(&mut FrameDecoder::new(64), &buf[start..]).unwrap();
        assert_eq!(
            frames,
            vec![Frame::Data {
                stream: StreamId(4),
                payload: b"world"
            }]
        );
        assert_eq!(
            encode_data_header_before(&mut buf, 3, StreamId(4), 5),
            Err(HeadroomError {
                needed: HEADER_LEN,
                available: 3
            })
        );
    }

    #[test]
    fn empty_data_frame_yields_one_empty_piece() {
        let mut wire = Vec::new();
        encode_data(&mut wire, StreamId(1), b"");
        encode_fin(&mut wire, StreamId(1));
        let frames = decode_all(&mut FrameDecoder::new(16), &wire).unwrap();
        assert_eq!(
            frames,
            vec![
                Frame::Data {
                    stream: StreamId(1),
                    payload: b""
                },
                Frame::Fin {
                    stream: StreamId(1)
                }
            ]
        );
    }

    fn header(ty: u8, stream: u32, len: u32) -> Vec<u8> {
        let mut h = vec![ty];
        h.extend_from_slice(&stream.to_be_bytes());
        h.extend_from_slice(&len.to_be_bytes());
        h
    }

    fn first_error(bytes: &[u8]) -> FrameError {
        decode_all(&mut FrameDecoder::new(1024), bytes).unwrap_err()
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(first_error(&header(0x07, 1, 0)), FrameError::UnknownType(7));
        assert_eq!(first_error(&header(0x00, 1, 0)), FrameError::UnknownType(0));
        assert_eq!(first_error(&header(0x03, 0, 0)), FrameError::ZeroStream);
        assert_eq!(
            first_error(&header(0x03, 1, 1025)),
            FrameError::DataTooLong {
                len: 1025,
                max: 1024
            }
        );
        for (ty, len) in [
            (0x02, 1),
            (0x04, 2),
            (0x06, 3),
            (0x06, 5),
            (0x05, 0),
            (0x05, 130),
            (0x01, 8),
        ] {
            assert!(
                matches!(
                    first_error(&header(ty, 1, len)),
                    FrameError::BadLength { .. }
                ),
                "type {ty} len {len}"
            );
        }
        assert!(matches!(
            first_error(&header(0x01, 1, u32::MAX)),
            FrameError::BadLength { .. }
        ));
    }

    #[test]
    fn rejects_bad_open_payloads() {
        let open = |payload: &[u8]| {
            let mut b = header(0x01, 1, payload.len() as u32);
            b.extend_from_slice(payload);
            first_error(&b)
        };
        // Bad character in the name.
        assert_eq!(
            open(b"\x02a/\x04\x7f\x00\x00\x01\x00\x50"),
            FrameError::BadConnector(NameError::BadChar(1))
        );
        // Empty name.
        assert_eq!(
            open(b"\x00\x04\x7f\x00\x00\x01\x00\x50\x00"),
            FrameError::BadConnector(NameError::Empty)
        );
        // Name length past the payload.
        assert_eq!(
            open(b"\x40ab\x04\x7f\x00\x00\x01\x00"),
            FrameError::BadAddress
        );
        // Unknown family.
        assert_eq!(
            open(b"\x01a\x05\x7f\x00\x00\x01\x00\x50"),
            FrameError::BadAddress
        );
        // Family 6 with four address bytes.
        assert_eq!(
            open(b"\x01a\x06\x7f\x00\x00\x01\x00\x50"),
            FrameError::BadAddress
        );
        // Trailing byte.
        assert_eq!(
            open(b"\x01a\x04\x7f\x00\x00\x01\x00\x50\x00"),
            FrameError::BadAddress
        );
    }

    #[test]
    fn rejects_bad_rst_payloads() {
        let mut b = header(0x05, 1, 1);
        b.push(0);
        assert_eq!(first_error(&b), FrameError::UnknownRstCode(0));
        let mut b = header(0x05, 1, 1);
        b.push(10);
        assert_eq!(first_error(&b), FrameError::UnknownRstCode(10));
        let mut b = header(0x05, 1, 3);
        b.extend_from_slice(&[1, 0xff, 0xfe]);
        assert_eq!(first_error(&b), FrameError::BadReason);
    }

    #[test]
    fn errors_poison_the_decoder() {
        let mut dec = FrameDecoder::new(16);
        assert!(dec.decode(&header(0x09, 1, 0)).is_err());
        let mut ok = Vec::new();
        encode_fin(&mut ok, StreamId(1));
        assert_eq!(dec.decode(&ok), Err(FrameError::Poisoned));
    }

    #[test]
    fn message_must_end_at_a_frame_boundary() {
        let mut wire = Vec::new();
        encode_data(&mut wire, StreamId(1), b"abcdef");
        let mut dec = FrameDecoder::new(16);
        let (n, _) = dec.decode(&wire[..12]).unwrap();
        let _ = dec.decode(&wire[n..12]).unwrap();
        assert_eq!(dec.end_of_message(), Err(FrameError::Truncated));

        let mut dec = FrameDecoder::new(16);
        decode_all(&mut dec, &wire).unwrap();
        assert_eq!(dec.end_of_message(), Ok(()));
    }

    #[test]
    fn long_rst_reason_is_cut_at_a_char_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let mut wire = Vec::new();
        encode_rst(&mut wire, StreamId(1), RstCode::ProtocolViolation, &long);
        let frames = decode_all(&mut FrameDecoder::new(16), &wire).unwrap();
        let Frame::Rst { reason, .. } = frames[0] else {
            panic!()
        };
        assert_eq!(reason.as_str(), "é".repeat(64));
    }

    #[test]
    fn payload_skipped_by_the_caller_resumes_at_the_next_frame() {
        let mut wire = Vec::new();
        encode_data(&mut wire, StreamId(3), &[5; 100]);
        encode_fin(&mut wire, StreamId(3));
        let mut dec = FrameDecoder::new(1000);
        assert_eq!(dec.data_left(), None);
        assert_eq!(dec.decode(&wire[..HEADER_LEN]).unwrap(), (HEADER_LEN, None));
        assert_eq!(dec.data_left(), Some((StreamId(3), 100)));
        let (n, frame) = dec.decode(&wire[HEADER_LEN..HEADER_LEN + 10]).unwrap();
        assert_eq!(n, 10);
        assert!(matches!(frame, Some(Frame::Data { payload, .. }) if payload == [5; 10]));
        assert_eq!(dec.data_left(), Some((StreamId(3), 90)));
        dec.skip_data(60);
        assert_eq!(dec.data_left(), Some((StreamId(3), 30)));
        // More than is left is cut to the frame.
        dec.skip_data(500);
        assert_eq!(dec.data_left(), None);
        assert!(dec.is_at_boundary());
        let (_, frame) = dec.decode(&wire[HEADER_LEN + 100..]).unwrap();
        assert!(matches!(
            frame,
            Some(Frame::Fin {
                stream: StreamId(3)
            })
        ));
        // Nothing to skip outside a DATA payload.
        dec.skip_data(5);
        assert!(dec.is_at_boundary());
    }
}
