//! The WebSocket frame codec (RFC 6455 §5) for both roles.
//!
//! The hub is the [`Role::Server`]: the frames it receives must be masked, the frames it sends
//! are not. The agent is the [`Role::Client`]: the reverse. Encoding is a handful of free
//! functions that write headers and frames into caller-owned buffers. Decoding is a
//! [`Decoder`] that is handed whatever bytes arrived, unmasks binary payload in place and lends
//! it back without copying, so steady-state binary traffic allocates nothing.
//!
//! Every violation of RFC 6455 the decoder can see is a [`WsError`] whose
//! [`close_code`](WsError::close_code) is the code to send in the Close frame that ends the
//! session. After an error the decoder keeps returning it.

use crate::mask::apply_mask;

/// Which end of the WebSocket connection this codec serves; it decides whether incoming frames
/// must be masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The end that dialled: the agent. Incoming frames must be unmasked; outgoing ones masked.
    Client,
    /// The end that accepted: the hub. Incoming frames must be masked; outgoing ones unmasked.
    Server,
}

/// A frame's opcode (RFC 6455 §5.2). Reserved opcodes have no variant and are rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// 0x0: continues a fragmented Text or Binary message.
    Continuation,
    /// 0x1: the first (or only) frame of a UTF-8 text message.
    Text,
    /// 0x2: the first (or only) frame of a binary message.
    Binary,
    /// 0x8: starts or answers the close handshake.
    Close,
    /// 0x9: asks the peer for a Pong.
    Ping,
    /// 0xA: answers a Ping, or serves as a unidirectional heartbeat.
    Pong,
}

impl Opcode {
    /// The opcode for the low nibble `v`, or `None` for the reserved values 3–7 and 0xB–0xF (and
    /// anything above 0xF).
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0x0 => Some(Opcode::Continuation),
            0x1 => Some(Opcode::Text),
            0x2 => Some(Opcode::Binary),
            0x8 => Some(Opcode::Close),
            0x9 => Some(Opcode::Ping),
            0xA => Some(Opcode::Pong),
            _ => None,
        }
    }

    /// The opcode's wire value.
    pub const fn as_u8(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// Whether this is a control opcode (Close, Ping, Pong): never fragmented, at most
    /// [`MAX_CONTROL_PAYLOAD`] bytes of payload.
    pub const fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

/// A Close frame's status code (RFC 6455 §7.4), including the tunnel's own 4xxx codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the session ended normally.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the endpoint is going away (shutdown, drain).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: the peer broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: the peer sent a kind of data this endpoint does not accept.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1007: a text message or close reason was not valid UTF-8.
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: the peer violated this endpoint's policy.
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// 1009: a message exceeded this endpoint's size limit.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// 1011: this endpoint hit an internal error.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// 4400: the peer broke the tunnel protocol carried inside the WebSocket.
    pub const TUNNEL_PROTOCOL_ERROR: CloseCode = CloseCode(4400);
    /// 4401: the agent's token expired or is invalid.
    pub const TOKEN_INVALID: CloseCode = CloseCode(4401);
    /// 4403: the agent is not allowed (agent_id mismatch, source address, scope).
    pub const FORBIDDEN: CloseCode = CloseCode(4403);
    /// 4408: the session stayed silent past the heartbeat deadline.
    pub const HEARTBEAT_TIMEOUT: CloseCode = CloseCode(4408);

    /// Whether the code may appear in a Close frame on the wire (RFC 6455 §7.4.1 and the IANA
    /// registry): 1000–1003, 1007–1014 and 3000–4999. Codes such as 1005 and 1006 are for local
    /// reporting only.
    pub const fn is_allowed_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The longest possible frame header: 2 fixed bytes, an 8-byte length and a 4-byte mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// The largest payload a control frame (Close, Ping, Pong) may carry.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The length of the header [`encode_header`] writes for a frame of `payload_len` bytes, with
/// a mask key if `masked`. Always between 2 and [`MAX_HEADER_LEN`].
pub const fn header_len(payload_len: u64, masked: bool) -> usize {
    let len = if payload_len <= 125 {
        2
    } else if payload_len <= 0xFFFF {
        4
    } else {
        10
    };
    if masked { len + 4 } else { len }
}

/// Writes a frame header into `dst[..n]` and returns `n`. `dst` must have room for
/// [`header_len`]`(payload_len, mask.is_some())` bytes.
///
/// The header uses the shortest length encoding, as RFC 6455 requires. `payload_len` must be
/// below 2^63 (the wire format has no room for more). The payload itself is not touched; when a
/// mask key is given the caller masks the payload with [`apply_mask`].
///
/// # Panics
///
/// If `dst` is shorter than the header. [`MAX_HEADER_LEN`] bytes always suffice.
pub fn encode_header(
    dst: &mut [u8],
    fin: bool,
    opcode: Opcode,
    payload_len: u64,
    mask: Option<[u8; 4]>,
) -> usize {
    let n = header_len(payload_len, mask.is_some());
    let dst = &mut dst[..n];
    dst[0] = (u8::from(fin) << 7) | opcode.as_u8();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let key_at = if payload_len <= 125 {
        dst[1] = mask_bit | payload_len as u8;
        2
    } else if let Ok(len16) = u16::try_from(payload_len) {
        dst[1] = mask_bit | 126;
        dst[2..4].copy_from_slice(&len16.to_be_bytes());
        4
    } else {
        dst[1] = mask_bit | 127;
        dst[2..10].copy_from_slice(&payload_len.to_be_bytes());
        10
    };
    if let Some(key) = mask {
        dst[key_at..key_at + 4].copy_from_slice(&key);
    }
    n
}

/// The headroom reserved in front of a payload was too small for the frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame header needs {needed} bytes of headroom, {available} available")]
pub struct HeadroomError {
    /// Bytes the header needs.
    pub needed: usize,
    /// Bytes there were in front of the payload (0 if `payload_start` lay past the buffer).
    pub available: usize,
}

/// Writes the header so that it ends exactly at `payload_start` inside `buf` (the caller
/// reserved headroom in front of a payload it read straight into `buf`); returns the index where
/// the header starts, or an error if the headroom is too small. Does not mask the payload.
///
/// Reserving [`MAX_HEADER_LEN`] bytes of headroom always suffices. The frame is then
/// `buf[start..payload_start + payload_len]`.
pub fn encode_header_before(
    buf: &mut [u8],
    payload_start: usize,
    fin: bool,
    opcode: Opcode,
    payload_len: u64,
    mask: Option<[u8; 4]>,
) -> Result<usize, HeadroomError> {
    let needed = header_len(payload_len, mask.is_some());
    let available = if payload_start <= buf.len() {
        payload_start
    } else {
        0
    };
    if available < needed {
        return Err(HeadroomError { needed, available });
    }
    let start = payload_start - needed;
    encode_header(
        &mut buf[start..payload_start],
        fin,
        opcode,
        payload_len,
        mask,
    );
    Ok(start)
}

/// Appends a whole frame (header + payload, masked if `mask` is Some) to dst.
pub fn encode_frame(
    dst: &mut Vec<u8>,
    fin: bool,
    opcode: Opcode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut header, fin, opcode, payload.len() as u64, mask);
    dst.reserve(n + payload.len());
    dst.extend_from_slice(&header[..n]);
    let payload_at = dst.len();
    dst.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut dst[payload_at..], key, 0);
    }
}

/// Appends a Close frame; the reason is cut at a char boundary so the payload fits 125 bytes.
///
/// The caller chooses a code that may appear on the wire (see
/// [`CloseCode::is_allowed_on_wire`]); the code is written as given.
pub fn encode_close(dst: &mut Vec<u8>, code: CloseCode, reason: &str, mask: Option<[u8; 4]>) {
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    // Index 0 is always a boundary, so this stops.
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.0.to_be_bytes());
    payload[2..2 + cut].copy_from_slice(&reason.as_bytes()[..cut]);
    encode_frame(dst, true, Opcode::Close, &payload[..2 + cut], mask);
}

/// Message size limits the decoder enforces from frame headers, before any payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest binary message, summed over its fragments, in bytes.
    pub max_message: usize,
    /// The largest text message, summed over its fragments, in bytes. Text messages are
    /// buffered whole, so this also bounds the decoder's memory.
    pub max_text: usize,
}

impl Default for Limits {
    /// 16 MiB per binary message, 64 KiB per text message.
    fn default() -> Self {
        Limits {
            max_message: 16 << 20,
            max_text: 64 << 10,
        }
    }
}

/// A control frame's payload (at most [`MAX_CONTROL_PAYLOAD`] bytes), held inline so that
/// Ping and Pong never touch the heap.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ControlPayload {
    bytes: [u8; MAX_CONTROL_PAYLOAD],
    len: u8,
}

impl ControlPayload {
    /// An empty payload.
    pub const EMPTY: ControlPayload = ControlPayload {
        bytes: [0; MAX_CONTROL_PAYLOAD],
        len: 0,
    };

    /// A payload holding `data`, or `None` if `data` is longer than [`MAX_CONTROL_PAYLOAD`].
    pub fn new(data: &[u8]) -> Option<Self> {
        let len = u8::try_from(data.len())
            .ok()
            .filter(|&l| usize::from(l) <= MAX_CONTROL_PAYLOAD)?;
        let mut bytes = [0; MAX_CONTROL_PAYLOAD];
        bytes[..data.len()].copy_from_slice(data);
        Some(ControlPayload { bytes, len })
    }

    /// The payload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The payload length in bytes.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Default for ControlPayload {
    fn default() -> Self {
        ControlPayload::EMPTY
    }
}

impl std::fmt::Debug for ControlPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ControlPayload")
            .field(&self.as_bytes())
            .finish()
    }
}

/// The code and reason of a Close frame that carried a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code; the decoder only yields codes allowed on the wire.
    pub code: CloseCode,
    /// The reason, validated UTF-8, at most 123 bytes.
    pub reason: String,
}

/// One thing the decoder found in the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A piece of a binary message's payload, already unmasked, borrowed from `input` (never
    /// copied). `last` is true on the message's final piece (which may be empty, e.g. a final
    /// empty continuation frame).
    Binary {
        /// Payload bytes, unmasked in place.
        data: &'a [u8],
        /// Whether this piece ends the message.
        last: bool,
    },
    /// A complete text message whose UTF-8 was validated (may allocate: text carries rare
    /// control messages).
    Text(String),
    /// A Ping; the caller answers with a Pong carrying the same payload.
    Ping(ControlPayload),
    /// A Pong.
    Pong(ControlPayload),
    /// The peer's Close: code and reason if it sent any.
    Close(Option<CloseFrame>),
}

/// A violation of RFC 6455 (or of the configured limits) found in the peer's frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// A client sent an unmasked frame; RFC 6455 §5.1 requires clients to mask.
    #[error("unmasked frame from a client")]
    UnmaskedFrame,
    /// A server sent a masked frame; RFC 6455 §5.1 forbids servers to mask.
    #[error("masked frame from a server")]
    MaskedFrame,
    /// A reserved bit (RSV1–3) was set, but no extension was negotiated.
    #[error("reserved bits set: {0:#04x}")]
    ReservedBits(u8),
    /// The opcode is one of the reserved values 3–7 or 0xB–0xF.
    #[error("reserved opcode {0:#x}")]
    UnknownOpcode(u8),
    /// A control frame declared more than 125 bytes of payload.
    #[error("control frame payload over 125 bytes")]
    ControlTooLong,
    /// A control frame had FIN clear: control frames must not be fragmented.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A payload length used a longer encoding than needed (RFC 6455 §5.2: minimal bytes).
    #[error("non-minimal payload length encoding ({0})")]
    NonMinimalLength(u64),
    /// A 64-bit payload length had its most significant bit set.
    #[error("payload length has its top bit set")]
    LengthOverflow,
    /// A continuation frame arrived with no fragmented message in progress.
    #[error("continuation frame outside a fragmented message")]
    UnexpectedContinuation,
    /// A Text or Binary frame arrived while a fragmented message was still in progress.
    #[error("new data frame before the fragmented message ended")]
    MessageInProgress,
    /// A message would exceed the configured limit; detected from the frame header.
    #[error("message larger than the {limit}-byte limit")]
    MessageTooBig {
        /// The limit that was exceeded, in bytes.
        limit: usize,
    },
    /// A text message was not valid UTF-8.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// A Close frame carried exactly one byte: too short for a code, too long for none.
    #[error("close payload of one byte")]
    CloseOneByte,
    /// A Close frame carried a code that must not appear on the wire.
    #[error("close code {0} not allowed on the wire")]
    InvalidCloseCode(u16),
    /// A Close frame's reason was not valid UTF-8.
    #[error("close reason is not valid UTF-8")]
    InvalidCloseReason,
    /// A frame arrived after the peer's Close, which must be its last frame.
    #[error("frame after the peer's close")]
    FrameAfterClose,
}

impl WsError {
    /// The close code to send the peer for this error: 1009 for size limits, 1007 for invalid
    /// UTF-8, 1002 for everything else.
    pub fn close_code(&self) -> CloseCode {
        match self {
            WsError::MessageTooBig { .. } => CloseCode::MESSAGE_TOO_BIG,
            WsError::InvalidUtf8 | WsError::InvalidCloseReason => CloseCode::INVALID_PAYLOAD,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// What the payload of the frame being read belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PayloadKind {
    Binary,
    Text,
    Control(Opcode),
}

/// The frame whose header has been read and whose payload is still arriving.
#[derive(Debug, Clone, Copy)]
struct FrameState {
    kind: PayloadKind,
    fin: bool,
    remaining: u64,
    mask: Option<[u8; 4]>,
    /// Payload bytes already processed, modulo 4: the mask key's phase.
    phase: usize,
}

/// The data message being assembled from fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    Idle,
    /// `declared` is the payload length of all its frame headers so far.
    Binary {
        declared: u64,
    },
    Text {
        declared: u64,
    },
}

/// What one step of the decoder produced.
enum Step {
    /// Consumed this many bytes, which is all of the input; more input is needed.
    NeedMore(usize),
    /// Consumed this many bytes and produced nothing; step again.
    Progress(usize),
    /// A binary piece: the first `len` bytes of the step's input, now unmasked.
    Binary { len: usize, last: bool },
    /// An owned event after consuming this many bytes.
    Event(usize, Event<'static>),
}

/// A streaming decoder for one direction of a WebSocket connection.
///
/// Holds at most a partial frame header (14 bytes), one control payload (125 bytes) and the
/// text message being assembled (bounded by [`Limits::max_text`]). Binary payload is never
/// buffered: it is unmasked in the caller's buffer and lent back.
#[derive(Debug, Clone)]
pub struct Decoder {
    role: Role,
    limits: Limits,
    header: [u8; MAX_HEADER_LEN],
    header_len: usize,
    frame: Option<FrameState>,
    message: Message,
    text: Vec<u8>,
    control: [u8; MAX_CONTROL_PAYLOAD],
    control_len: usize,
    closed: bool,
    error: Option<WsError>,
}

impl Decoder {
    /// A decoder for the frames a `role` endpoint receives, enforcing `limits`.
    pub fn new(role: Role, limits: Limits) -> Self {
        Decoder {
            role,
            limits,
            header: [0; MAX_HEADER_LEN],
            header_len: 0,
            frame: None,
            message: Message::Idle,
            text: Vec::new(),
            control: [0; MAX_CONTROL_PAYLOAD],
            control_len: 0,
            closed: false,
            error: None,
        }
    }

    /// The role this decoder was built for.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the peer's Close frame has been decoded; any further frame is an error.
    pub fn received_close(&self) -> bool {
        self.closed
    }

    /// Payload bytes left in the binary frame being read when they arrive unmasked, which a
    /// caller may move past the decoder (see [`Decoder::skip_binary`]); 0 when no such frame
    /// is in progress.
    pub fn unmasked_binary_left(&self) -> u64 {
        match self.frame {
            Some(frame)
                if self.error.is_none()
                    && frame.kind == PayloadKind::Binary
                    && frame.mask.is_none() =>
            {
                frame.remaining
            }
            _ => 0,
        }
    }

    /// Accounts for `n` payload bytes of the binary frame in progress that the caller took off
    /// the connection itself, exactly as if [`Decoder::decode`] had lent them back. Returns
    /// whether they ended the message (the `last` of [`Event::Binary`]). `n` must not exceed
    /// [`Decoder::unmasked_binary_left`]; a larger `n` is cut to it.
    pub fn skip_binary(&mut self, n: u64) -> bool {
        let left = self.unmasked_binary_left();
        let Some(mut frame) = self.frame.filter(|_| left > 0) else {
            return false;
        };
        let n = n.min(left);
        frame.remaining -= n;
        frame.phase = ((frame.phase as u64 + n) % 4) as usize;
        let done = frame.remaining == 0;
        let ends_message = done && frame.fin;
        self.frame = if done { None } else { Some(frame) };
        if ends_message {
            self.message = Message::Idle;
        }
        ends_message
    }

    /// Decodes from the front of `input`, unmasking payload bytes in place. Returns how many
    /// bytes were consumed and at most one event. Call again with the rest. Partial headers are
    /// kept inside the decoder (at most 14 bytes), so input may be split anywhere.
    ///
    /// Bytes of text and control payloads are copied into the decoder and count as consumed.
    /// A call returns `(0, None)` only when `input` is empty; otherwise it consumes at least one
    /// byte, yields an event or fails. Once an error is returned, every later call returns it
    /// again.
    pub fn decode<'a>(
        &mut self,
        input: &'a mut [u8],
    ) -> Result<(usize, Option<Event<'a>>), WsError> {
        if let Some(err) = &self.error {
            return Err(err.clone());
        }
        let mut pos = 0;
        loop {
            let step = match self.step(&mut input[pos..]) {
                Ok(step) => step,
                Err(err) => {
                    self.error = Some(err.clone());
                    return Err(err);
                }
            };
            match step {
                Step::NeedMore(n) => return Ok((pos + n, None)),
                Step::Progress(n) => pos += n,
                Step::Binary { len, last } => {
                    let data = &input[pos..pos + len];
                    return Ok((pos + len, Some(Event::Binary { data, last })));
                }
                Step::Event(n, event) => return Ok((pos + n, Some(event))),
            }
        }
    }

    /// Advances by one header or one payload piece.
    fn step(&mut self, buf: &mut [u8]) -> Result<Step, WsError> {
        let Some(mut frame) = self.frame else {
            if buf.is_empty() {
                return Ok(Step::NeedMore(0));
            }
            if self.closed {
                return Err(WsError::FrameAfterClose);
            }
            let used = self.read_header(buf)?;
            return Ok(if self.frame.is_some() {
                Step::Progress(used)
            } else {
                Step::NeedMore(used)
            });
        };

        let len = usize::try_from(frame.remaining).map_or(buf.len(), |r| r.min(buf.len()));
        if len == 0 && frame.remaining > 0 {
            return Ok(Step::NeedMore(0));
        }
        let piece = &mut buf[..len];
        if let Some(key) = frame.mask {
            apply_mask(piece, key, frame.phase);
        }
        frame.remaining -= len as u64;
        frame.phase = (frame.phase + len) % 4;
        let done = frame.remaining == 0;
        let ends_message = done && frame.fin;
        self.frame = if done { None } else { Some(frame) };

        match frame.kind {
            PayloadKind::Binary => {
                if ends_message {
                    self.message = Message::Idle;
                }
                if len == 0 && !ends_message {
                    // An empty non-final fragment carries nothing worth reporting.
                    Ok(Step::Progress(0))
                } else {
                    Ok(Step::Binary {
                        len,
                        last: ends_message,
                    })
                }
            }
            PayloadKind::Text => {
                // Bounded: the header check keeps `declared` within `max_text`.
                self.text.extend_from_slice(piece);
                if !ends_message {
                    return Ok(Step::Progress(len));
                }
                self.message = Message::Idle;
                let bytes = std::mem::take(&mut self.text);
                let text = String::from_utf8(bytes).map_err(|_| WsError::InvalidUtf8)?;
                Ok(Step::Event(len, Event::Text(text)))
            }
            PayloadKind::Control(opcode) => {
                // Bounded: control headers above 125 bytes are rejected.
                let end = self.control_len + len;
                self.control[self.control_len..end].copy_from_slice(piece);
                self.control_len = end;
                if !done {
                    return Ok(Step::Progress(len));
                }
                let event = self.finish_control(opcode)?;
                Ok(Step::Event(len, event))
            }
        }
    }

    /// Copies header bytes from `buf` into the decoder, validating as soon as possible, and
    /// installs the frame once its header is complete. Returns the bytes consumed.
    fn read_header(&mut self, buf: &[u8]) -> Result<usize, WsError> {
        let mut used = self.fill_header(buf, 2);
        if self.header_len < 2 {
            return Ok(used);
        }
        let needed = self.check_fixed_header()?;
        used += self.fill_header(&buf[used..], needed);
        if self.header_len < needed {
            return Ok(used);
        }
        self.finish_header()?;
        Ok(used)
    }

    /// Copies bytes from `buf` until the stored header holds `upto` bytes; returns the count.
    fn fill_header(&mut self, buf: &[u8], upto: usize) -> usize {
        let take = upto.saturating_sub(self.header_len).min(buf.len());
        self.header[self.header_len..self.header_len + take].copy_from_slice(&buf[..take]);
        self.header_len += take;
        take
    }

    /// Validates the first two header bytes and returns the full header length they imply.
    fn check_fixed_header(&self) -> Result<usize, WsError> {
        let [b0, b1, ..] = self.header;
        let rsv = b0 & 0x70;
        if rsv != 0 {
            return Err(WsError::ReservedBits(rsv));
        }
        let opcode = Opcode::from_u8(b0 & 0x0F).ok_or(WsError::UnknownOpcode(b0 & 0x0F))?;
        let masked = b1 & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) => return Err(WsError::UnmaskedFrame),
            (Role::Client, true) => return Err(WsError::MaskedFrame),
            _ => {}
        }
        let len7 = b1 & 0x7F;
        if opcode.is_control() {
            if b0 & 0x80 == 0 {
                return Err(WsError::FragmentedControl);
            }
            if usize::from(len7) > MAX_CONTROL_PAYLOAD {
                return Err(WsError::ControlTooLong);
            }
        }
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        Ok(2 + ext + if masked { 4 } else { 0 })
    }

    /// Parses the complete header held in the decoder, checks it against the message in
    /// progress and the limits, and installs the frame.
    fn finish_header(&mut self) -> Result<(), WsError> {
        let h = self.header;
        self.header_len = 0;
        let fin = h[0] & 0x80 != 0;
        // check_fixed_header already accepted the opcode.
        let opcode = Opcode::from_u8(h[0] & 0x0F).ok_or(WsError::UnknownOpcode(h[0] & 0x0F))?;
        let masked = h[1] & 0x80 != 0;
        let (len, key_at) = match h[1] & 0x7F {
            126 => {
                let len = u64::from(u16::from_be_bytes([h[2], h[3]]));
                if len < 126 {
                    return Err(WsError::NonMinimalLength(len));
                }
                (len, 4)
            }
            127 => {
                let len = u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]);
                if len >> 63 != 0 {
                    return Err(WsError::LengthOverflow);
                }
                if len <= 0xFFFF {
                    return Err(WsError::NonMinimalLength(len));
                }
                (len, 10)
            }
            len7 => (u64::from(len7), 2),
        };
        let mask = masked.then(|| [h[key_at], h[key_at + 1], h[key_at + 2], h[key_at + 3]]);

        let kind = match (opcode, self.message) {
            (Opcode::Close | Opcode::Ping | Opcode::Pong, _) => PayloadKind::Control(opcode),
            (Opcode::Continuation, Message::Idle) => return Err(WsError::UnexpectedContinuation),
            (Opcode::Text | Opcode::Binary, Message::Binary { .. } | Message::Text { .. }) => {
                return Err(WsError::MessageInProgress);
            }
            (Opcode::Binary, Message::Idle) => {
                self.message = Message::Binary {
                    declared: check_limit(0, len, self.limits.max_message)?,
                };
                PayloadKind::Binary
            }
            (Opcode::Continuation, Message::Binary { declared }) => {
                self.message = Message::Binary {
                    declared: check_limit(declared, len, self.limits.max_message)?,
                };
                PayloadKind::Binary
            }
            (Opcode::Text, Message::Idle) => {
                self.message = Message::Text {
                    declared: check_limit(0, len, self.limits.max_text)?,
                };
                PayloadKind::Text
            }
            (Opcode::Continuation, Message::Text { declared }) => {
                self.message = Message::Text {
                    declared: check_limit(declared, len, self.limits.max_text)?,
                };
                PayloadKind::Text
            }
        };
        self.frame = Some(FrameState {
            kind,
            fin,
            remaining: len,
            mask,
            phase: 0,
        });
        Ok(())
    }

    /// Turns the buffered control payload into its event.
    fn finish_control(&mut self, opcode: Opcode) -> Result<Event<'static>, WsError> {
        let payload = &self.control[..self.control_len];
        self.control_len = 0;
        match opcode {
            Opcode::Ping => Ok(Event::Ping(
                ControlPayload::new(payload).unwrap_or_default(),
            )),
            Opcode::Pong => Ok(Event::Pong(
                ControlPayload::new(payload).unwrap_or_default(),
            )),
            _ => {
                let close = parse_close(payload)?;
                self.closed = true;
                Ok(Event::Close(close))
            }
        }
    }
}

/// Adds a frame's `len` to the `declared` total of its message, or fails if that exceeds
/// `limit`.
fn check_limit(declared: u64, len: u64, limit: usize) -> Result<u64, WsError> {
    let limit64 = u64::try_from(limit).unwrap_or(u64::MAX);
    match declared.checked_add(len) {
        Some(total) if total <= limit64 => Ok(total),
        _ => Err(WsError::MessageTooBig { limit }),
    }
}

/// Validates a Close payload (RFC 6455 §5.5.1, §7.4).
fn parse_close(payload: &[u8]) -> Result<Option<CloseFrame>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::CloseOneByte),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_allowed_on_wire() {
                return Err(WsError::InvalidCloseCode(code.0));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::InvalidCloseReason)?;
            Ok(Some(CloseFrame {
                code,
                reason: reason.to_owned(),
            }))
        }
    }
}

/// Tracks the close handshake (RFC 6455 §7): each side sends one Close, and the connection may
/// be dropped once both have been sent and received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloseHandshake {
    sent: bool,
    received: bool,
}

impl CloseHandshake {
    /// A handshake in which neither side has sent Close yet.
    pub const fn new() -> Self {
        CloseHandshake {
            sent: false,
            received: false,
        }
    }

    /// Records that we sent a Close. Returns `false` if one had already been sent, in which case
    /// the caller must not have sent a second one (check [`Self::sent`] first).
    pub fn on_sent(&mut self) -> bool {
        !std::mem::replace(&mut self.sent, true)
    }

    /// Records the peer's Close. Returns `true` if the caller must echo a Close (we have not sent
    /// one yet); it then sends it and calls [`Self::on_sent`].
    pub fn on_received(&mut self) -> bool {
        self.received = true;
        !self.sent
    }

    /// Whether we have sent our Close.
    pub const fn sent(&self) -> bool {
        self.sent
    }

    /// Whether the peer's Close has arrived.
    pub const fn received(&self) -> bool {
        self.received
    }

    /// Whether both Close frames have been exchanged, so the TCP connection may be closed.
    pub const fn is_complete(&self) -> bool {
        self.sent && self.received
    }

    /// The code to echo in reply to the peer's Close: its own code, or 1000 if it sent none.
    pub fn echo_code(received: Option<&CloseFrame>) -> CloseCode {
        received.map_or(CloseCode::NORMAL, |c| c.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// The mask a peer of a decoder with `role` would use.
    fn peer_mask(role: Role) -> Option<[u8; 4]> {
        match role {
            Role::Server => Some(KEY),
            Role::Client => None,
        }
    }

    /// An owned copy of an event, with binary pieces joined into whole messages.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Out {
        Binary(Vec<u8>),
        Text(String),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<CloseFrame>),
    }

    /// Feeds `stream` to `dec` in chunks ending at `cuts` (sorted), collecting outputs.
    fn feed_split(dec: &mut Decoder, stream: &[u8], cuts: &[usize]) -> Result<Vec<Out>, WsError> {
        let mut out = Vec::new();
        let mut partial = Vec::new();
        let mut start = 0;
        let ends = cuts.iter().copied().chain(std::iter::once(stream.len()));
        for end in ends {
            let end = end.clamp(start, stream.len());
            let mut chunk = stream[start..end].to_vec();
            start = end;
            let mut off = 0;
            while off < chunk.len() {
                let (n, ev) = dec.decode(&mut chunk[off..])?;
                off += n;
                match ev {
                    None => assert!(n > 0, "no progress"),
                    Some(Event::Binary { data, last }) => {
                        partial.extend_from_slice(data);
                        if last {
                            out.push(Out::Binary(std::mem::take(&mut partial)));
                        }
                    }
                    Some(Event::Text(t)) => out.push(Out::Text(t)),
                    Some(Event::Ping(p)) => out.push(Out::Ping(p.as_bytes().to_vec())),
                    Some(Event::Pong(p)) => out.push(Out::Pong(p.as_bytes().to_vec())),
                    Some(Event::Close(c)) => out.push(Out::Close(c)),
                }
            }
        }
        Ok(out)
    }

    fn feed(dec: &mut Decoder, stream: &[u8]) -> Result<Vec<Out>, WsError> {
        feed_split(dec, stream, &[])
    }

    fn server() -> Decoder {
        Decoder::new(Role::Server, Limits::default())
    }

    fn client() -> Decoder {
        Decoder::new(Role::Client, Limits::default())
    }

    /// Decodes raw (already encoded) bytes as `role` and returns the close code of the error.
    fn reject(role: Role, bytes: &[u8]) -> CloseCode {
        let mut dec = Decoder::new(role, Limits::default());
        match feed(&mut dec, bytes) {
            Err(e) => e.close_code(),
            Ok(out) => panic!("accepted: {out:?}"),
        }
    }

    fn frame(role: Role, fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_frame(&mut v, fin, opcode, payload, peer_mask(role));
        v
    }

    // ---- encoding ----

    #[test]
    fn header_len_forms() {
        assert_eq!(header_len(0, false), 2);
        assert_eq!(header_len(125, false), 2);
        assert_eq!(header_len(126, false), 4);
        assert_eq!(header_len(65535, true), 8);
        assert_eq!(header_len(65536, false), 10);
        assert_eq!(header_len(u64::MAX >> 1, true), MAX_HEADER_LEN);
    }

    #[test]
    fn encode_header_known_bytes() {
        let mut buf = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut buf, true, Opcode::Text, 5, None);
        assert_eq!(&buf[..n], &[0x81, 0x05]);
        let n = encode_header(&mut buf, false, Opcode::Binary, 256, Some([1, 2, 3, 4]));
        assert_eq!(&buf[..n], &[0x02, 0xFE, 0x01, 0x00, 1, 2, 3, 4]);
        let n = encode_header(&mut buf, true, Opcode::Binary, 65536, None);
        assert_eq!(&buf[..n], &[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn rfc_sample_masked_hello() {
        // RFC 6455 §5.7: a single-frame masked text message "Hello".
        let mut bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let total = bytes.len();
        let wire = bytes;
        let mut dec = server();
        let (n, ev) = dec.decode(&mut bytes).unwrap();
        assert_eq!(n, total);
        assert_eq!(ev, Some(Event::Text("Hello".into())));
        let mut ours = Vec::new();
        encode_frame(&mut ours, true, Opcode::Text, b"Hello", Some(KEY));
        assert_eq!(ours, wire);
    }

    #[test]
    fn round_trip_every_length_form_both_roles() {
        for role in [Role::Server, Role::Client] {
            for len in [0usize, 1, 125, 126, 65535, 65536, 70000] {
                let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let bytes = frame(role, true, Opcode::Binary, &payload);
                assert_eq!(
                    bytes.len(),
                    header_len(len as u64, role == Role::Server) + len
                );
                let mut dec = Decoder::new(role, Limits::default());
                let out = feed(&mut dec, &bytes).unwrap();
                assert_eq!(out, vec![Out::Binary(payload)], "role {role:?} len {len}");
            }
        }
    }

    #[test]
    fn single_binary_frame_is_one_borrowed_piece() {
        let mut bytes = frame(Role::Server, true, Opcode::Binary, b"abcdef");
        let total = bytes.len();
        let mut dec = server();
        let (n, ev) = dec.decode(&mut bytes).unwrap();
        assert_eq!(n, total);
        assert_eq!(
            ev,
            Some(Event::Binary {
                data: b"abcdef",
                last: true
            })
        );
        // The payload was unmasked in place.
        assert_eq!(&bytes[total - 6..], b"abcdef");
    }

    #[test]
    fn partial_payload_yields_pieces() {
        let bytes = frame(Role::Client, true, Opcode::Binary, b"0123456789");
        let mut dec = client();
        let mut first = bytes[..6].to_vec();
        let (n, ev) = dec.decode(&mut first).unwrap();
        assert_eq!(n, 6);
        assert_eq!(
            ev,
            Some(Event::Binary {
                data: b"0123",
                last: false
            })
        );
        let mut rest = bytes[6..].to_vec();
        let (n, ev) = dec.decode(&mut rest).unwrap();
        assert_eq!(n, 6);
        assert_eq!(
            ev,
            Some(Event::Binary {
                data: b"456789",
                last: true
            })
        );
    }

    #[test]
    fn encode_header_before_places_header_at_payload() {
        let payload = b"hello world";
        let mut buf = vec![0u8; MAX_HEADER_LEN + payload.len()];
        buf[MAX_HEADER_LEN..].copy_from_slice(payload);
        let start = encode_header_before(
            &mut buf,
            MAX_HEADER_LEN,
            true,
            Opcode::Binary,
            payload.len() as u64,
            Some(KEY),
        )
        .unwrap();
        assert_eq!(start, MAX_HEADER_LEN - 6);
        apply_mask(&mut buf[MAX_HEADER_LEN..], KEY, 0);
        let mut expected = Vec::new();
        encode_frame(&mut expected, true, Opcode::Binary, payload, Some(KEY));
        assert_eq!(&buf[start..], &expected[..]);

        let out = feed(&mut server(), &buf[start..]).unwrap();
        assert_eq!(out, vec![Out::Binary(payload.to_vec())]);
    }

    #[test]
    fn encode_header_before_reports_short_headroom() {
        let mut buf = [0u8; 20];
        let err = encode_header_before(&mut buf, 3, true, Opcode::Binary, 200, None).unwrap_err();
        assert_eq!(
            err,
            HeadroomError {
                needed: 4,
                available: 3
            }
        );
        let err = encode_header_before(&mut buf, 30, true, Opcode::Binary, 1, None).unwrap_err();
        assert_eq!(err.available, 0);
        assert_eq!(
            encode_header_before(&mut buf, 2, true, Opcode::Ping, 0, None),
            Ok(0)
        );
    }

    #[test]
    fn encode_close_cuts_reason_at_char_boundary() {
        // 61 two-byte chars = 122 bytes, then a 3-byte char that would end at byte 125.
        let reason = format!("{}€tail", "é".repeat(61));
        let mut bytes = Vec::new();
        encode_close(&mut bytes, CloseCode::GOING_AWAY, &reason, None);
        assert_eq!(bytes[1] as usize, 2 + 122);
        let out = feed(&mut client(), &bytes).unwrap();
        assert_eq!(
            out,
            vec![Out::Close(Some(CloseFrame {
                code: CloseCode::GOING_AWAY,
                reason: "é".repeat(61),
            }))]
        );
    }

    #[test]
    fn encode_close_short_reason_round_trips() {
        let mut bytes = Vec::new();
        encode_close(
            &mut bytes,
            CloseCode::HEARTBEAT_TIMEOUT,
            "silent",
            Some(KEY),
        );
        let out = feed(&mut server(), &bytes).unwrap();
        assert_eq!(
            out,
            vec![Out::Close(Some(CloseFrame {
                code: CloseCode::HEARTBEAT_TIMEOUT,
                reason: "silent".into(),
            }))]
        );
    }

    #[test]
    fn empty_close_round_trips() {
        let bytes = frame(Role::Server, true, Opcode::Close, b"");
        let mut dec = server();
        assert_eq!(feed(&mut dec, &bytes).unwrap(), vec![Out::Close(None)]);
        assert!(dec.received_close());
    }

    // ---- fragmentation ----

    fn fragmented_with_ping(role: Role) -> Vec<u8> {
        let mut s = Vec::new();
        let m = peer_mask(role);
        encode_frame(&mut s, false, Opcode::Binary, b"hello ", m);
        encode_frame(&mut s, true, Opcode::Ping, b"are you there", m);
        encode_frame(&mut s, false, Opcode::Continuation, b"", m);
        encode_frame(&mut s, false, Opcode::Continuation, b"fragmented ", m);
        encode_frame(&mut s, true, Opcode::Pong, b"", m);
        encode_frame(&mut s, true, Opcode::Continuation, b"world", m);
        encode_frame(&mut s, true, Opcode::Text, "text ✓".as_bytes(), m);
        s
    }

    #[test]
    fn byte_at_a_time_fragmented_with_interleaved_ping() {
        for role in [Role::Server, Role::Client] {
            let stream = fragmented_with_ping(role);
            let cuts: Vec<usize> = (1..stream.len()).collect();
            let mut dec = Decoder::new(role, Limits::default());
            let out = feed_split(&mut dec, &stream, &cuts).unwrap();
            assert_eq!(
                out,
                vec![
                    Out::Ping(b"are you there".to_vec()),
                    Out::Pong(Vec::new()),
                    Out::Binary(b"hello fragmented world".to_vec()),
                    Out::Text("text ✓".into()),
                ]
            );
        }
    }

    #[test]
    fn byte_at_a_time_pieces_flag_only_the_last() {
        let stream = fragmented_with_ping(Role::Server);
        let mut dec = server();
        let mut pieces = Vec::new();
        for b in &stream {
            let mut one = [*b];
            let (n, ev) = dec.decode(&mut one).unwrap();
            assert_eq!(n, 1);
            if let Some(Event::Binary { data, last }) = ev {
                pieces.push((data.to_vec(), last));
            }
        }
        let lasts: Vec<bool> = pieces.iter().map(|p| p.1).collect();
        assert_eq!(lasts.iter().filter(|l| **l).count(), 1);
        assert_eq!(lasts.last(), Some(&true));
        assert!(pieces.iter().all(|p| p.0.len() == 1));
    }

    #[test]
    fn empty_final_fragment_yields_empty_last_piece() {
        let mut s = Vec::new();
        encode_frame(&mut s, false, Opcode::Binary, b"abc", None);
        encode_frame(&mut s, true, Opcode::Continuation, b"", None);
        let mut dec = client();
        let (n, ev) = dec.decode(&mut s).unwrap();
        assert_eq!(n, 5);
        assert_eq!(
            ev,
            Some(Event::Binary {
                data: b"abc",
                last: false
            })
        );
        let (n, ev) = dec.decode(&mut s[5..]).unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            ev,
            Some(Event::Binary {
                data: b"",
                last: true
            })
        );
    }

    #[test]
    fn empty_binary_message_yields_empty_last_piece() {
        let mut s = frame(Role::Server, true, Opcode::Binary, b"");
        let (n, ev) = server().decode(&mut s).unwrap();
        assert_eq!(n, 6);
        assert_eq!(
            ev,
            Some(Event::Binary {
                data: b"",
                last: true
            })
        );
    }

    #[test]
    fn fragmented_text_is_joined_and_validated() {
        let text = "grüße";
        let bytes = text.as_bytes();
        // Split inside the two-byte 'ü' so that only the whole message is valid UTF-8.
        let mut s = Vec::new();
        encode_frame(&mut s, false, Opcode::Text, &bytes[..3], Some(KEY));
        encode_frame(&mut s, true, Opcode::Continuation, &bytes[3..], Some(KEY));
        assert_eq!(
            feed(&mut server(), &s).unwrap(),
            vec![Out::Text(text.into())]
        );
    }

    #[test]
    fn empty_input_returns_nothing() {
        let mut dec = server();
        assert_eq!(dec.decode(&mut []).unwrap(), (0, None));
    }

    // ---- rejections ----

    #[test]
    fn rejects_unmasked_frame_as_server() {
        let bytes = frame(Role::Client, true, Opcode::Binary, b"x");
        assert_eq!(reject(Role::Server, &bytes), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn rejects_masked_frame_as_client() {
        let bytes = frame(Role::Server, true, Opcode::Binary, b"x");
        assert_eq!(reject(Role::Client, &bytes), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn rejects_each_rsv_bit() {
        for bit in [0x40, 0x20, 0x10] {
            let mut bytes = frame(Role::Client, true, Opcode::Binary, b"x");
            bytes[0] |= bit;
            assert_eq!(reject(Role::Client, &bytes), CloseCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn rejects_reserved_opcodes() {
        for op in (3..=7).chain(0xB..=0xF) {
            let bytes = [0x80 | op, 0x00];
            let mut dec = client();
            let err = feed(&mut dec, &bytes).unwrap_err();
            assert_eq!(err, WsError::UnknownOpcode(op));
            assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn rejects_control_payload_over_125() {
        for op in [Opcode::Ping, Opcode::Pong, Opcode::Close] {
            let bytes = frame(Role::Client, true, op, &[b'a'; 126]);
            assert_eq!(reject(Role::Client, &bytes), CloseCode::PROTOCOL_ERROR);
            // Rejected from the first two bytes, before the rest arrives.
            let mut dec = client();
            assert_eq!(
                feed(&mut dec, &bytes[..2]),
                Err(WsError::ControlTooLong),
                "{op:?}"
            );
        }
    }

    #[test]
    fn accepts_control_payload_of_125() {
        let bytes = frame(Role::Server, true, Opcode::Ping, &[7; 125]);
        assert_eq!(
            feed(&mut server(), &bytes).unwrap(),
            vec![Out::Ping(vec![7; 125])]
        );
    }

    #[test]
    fn rejects_fragmented_control() {
        let bytes = frame(Role::Client, false, Opcode::Ping, b"p");
        assert_eq!(reject(Role::Client, &bytes), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn rejects_non_minimal_16_bit_length() {
        let mut bytes = vec![0x82, 126, 0, 125];
        bytes.extend_from_slice(&[0; 125]);
        assert_eq!(reject(Role::Client, &bytes), CloseCode::PROTOCOL_ERROR);
        let mut dec = client();
        assert_eq!(
            feed(&mut dec, &bytes[..4]),
            Err(WsError::NonMinimalLength(125))
        );
    }

    #[test]
    fn rejects_non_minimal_64_bit_length() {
        let mut bytes = vec![0x82, 127, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF];
        bytes.extend_from_slice(&[0; 16]);
        assert_eq!(reject(Role::Client, &bytes), CloseCode::PROTOCOL_ERROR);
        let mut dec = client();
        assert_eq!(
            feed(&mut dec, &bytes[..10]),
            Err(WsError::NonMinimalLength(0xFFFF))
        );
    }

    #[test]
    fn rejects_64_bit_length_with_top_bit() {
        let bytes = [0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(reject(Role::Client, &bytes), CloseCode::PROTOCOL_ERROR);
        let mut dec = Decoder::new(
            Role::Client,
            Limits {
                max_message: usize::MAX,
                max_text: usize::MAX,
            },
        );
        assert_eq!(feed(&mut dec, &bytes), Err(WsError::LengthOverflow));
    }

    #[test]
    fn rejects_continuation_without_message() {
        let bytes = frame(Role::Server, true, Opcode::Continuation, b"x");
        assert_eq!(reject(Role::Server, &bytes), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn rejects_new_message_during_fragmented_message() {
        for second in [Opcode::Binary, Opcode::Text] {
            for first in [Opcode::Binary, Opcode::Text] {
                let mut s = frame(Role::Server, false, first, b"a");
                s.extend(frame(Role::Server, true, second, b"b"));
                let mut dec = server();
                assert_eq!(feed(&mut dec, &s), Err(WsError::MessageInProgress));
                assert_eq!(reject(Role::Server, &s), CloseCode::PROTOCOL_ERROR);
            }
        }
    }

    #[test]
    fn rejects_binary_message_over_limit_from_header() {
        let limits = Limits {
            max_message: 1000,
            max_text: 100,
        };
        let bytes = frame(Role::Server, true, Opcode::Binary, &[0; 1001]);
        let mut dec = Decoder::new(Role::Server, limits);
        // Only the header is fed: the limit is enforced before any payload.
        let err = feed(&mut dec, &bytes[..8]).unwrap_err();
        assert_eq!(err, WsError::MessageTooBig { limit: 1000 });
        assert_eq!(err.close_code(), CloseCode::MESSAGE_TOO_BIG);

        // Exactly at the limit is fine.
        let ok = frame(Role::Server, true, Opcode::Binary, &[0; 1000]);
        let mut dec = Decoder::new(Role::Server, limits);
        assert_eq!(
            feed(&mut dec, &ok).unwrap(),
            vec![Out::Binary(vec![0; 1000])]
        );
    }

    #[test]
    fn rejects_fragmented_binary_message_over_limit() {
        let limits = Limits {
            max_message: 10,
            max_text: 10,
        };
        let mut s = frame(Role::Client, false, Opcode::Binary, &[1; 6]);
        s.extend(frame(Role::Client, true, Opcode::Continuation, &[2; 5]));
        let mut dec = Decoder::new(Role::Client, limits);
        let err = feed(&mut dec, &s).unwrap_err();
        assert_eq!(err.close_code(), CloseCode::MESSAGE_TOO_BIG);
    }

    #[test]
    fn rejects_huge_declared_length() {
        let bytes = [0x82, 127, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(reject(Role::Client, &bytes), CloseCode::MESSAGE_TOO_BIG);
    }

    #[test]
    fn rejects_text_message_over_limit() {
        let limits = Limits {
            max_message: 1 << 20,
            max_text: 8,
        };
        let mut s = frame(Role::Server, false, Opcode::Text, b"12345");
        s.extend(frame(Role::Server, true, Opcode::Continuation, b"6789"));
        let mut dec = Decoder::new(Role::Server, limits);
        let err = feed(&mut dec, &s).unwrap_err();
        assert_eq!(err, WsError::MessageTooBig { limit: 8 });
        assert_eq!(err.close_code(), CloseCode::MESSAGE_TOO_BIG);
    }

    #[test]
    fn rejects_invalid_utf8_text() {
        let bytes = frame(Role::Server, true, Opcode::Text, &[b'a', 0xC3, 0x28]);
        assert_eq!(reject(Role::Server, &bytes), CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn rejects_text_ending_mid_character() {
        let mut s = frame(Role::Server, false, Opcode::Text, &[b'a', 0xE2]);
        s.extend(frame(Role::Server, true, Opcode::Continuation, &[0x82]));
        assert_eq!(reject(Role::Server, &s), CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn rejects_one_byte_close() {
        let bytes = frame(Role::Client, true, Opcode::Close, &[0x03]);
        let mut dec = client();
        assert_eq!(feed(&mut dec, &bytes), Err(WsError::CloseOneByte));
        assert_eq!(reject(Role::Client, &bytes), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn rejects_close_codes_not_allowed_on_wire() {
        for code in [
            0u16,
            999,
            1004,
            1005,
            1006,
            1015,
            1016,
            2000,
            2999,
            5000,
            u16::MAX,
        ] {
            let bytes = frame(Role::Server, true, Opcode::Close, &code.to_be_bytes());
            let mut dec = server();
            assert_eq!(feed(&mut dec, &bytes), Err(WsError::InvalidCloseCode(code)));
            assert_eq!(reject(Role::Server, &bytes), CloseCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn accepts_close_codes_allowed_on_wire() {
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4400, 4999,
        ] {
            let bytes = frame(Role::Server, true, Opcode::Close, &code.to_be_bytes());
            let out = feed(&mut server(), &bytes).unwrap();
            assert_eq!(
                out,
                vec![Out::Close(Some(CloseFrame {
                    code: CloseCode(code),
                    reason: String::new()
                }))]
            );
        }
    }

    #[test]
    fn rejects_close_reason_not_utf8() {
        let bytes = frame(Role::Server, true, Opcode::Close, &[0x03, 0xE8, 0xFF, 0xFE]);
        let mut dec = server();
        assert_eq!(feed(&mut dec, &bytes), Err(WsError::InvalidCloseReason));
        assert_eq!(reject(Role::Server, &bytes), CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn rejects_frame_after_close() {
        let mut s = Vec::new();
        encode_close(&mut s, CloseCode::NORMAL, "bye", None);
        let close_len = s.len();
        s.extend(frame(Role::Client, true, Opcode::Pong, b""));
        let mut dec = client();
        let (n, ev) = dec.decode(&mut s).unwrap();
        assert_eq!(n, close_len);
        assert!(matches!(ev, Some(Event::Close(Some(_)))));
        let err = dec.decode(&mut s[close_len..]).unwrap_err();
        assert_eq!(err, WsError::FrameAfterClose);
        assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
        assert_eq!(reject(Role::Client, &s), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn errors_are_sticky() {
        let mut bytes = [0x83, 0x00];
        let mut dec = client();
        let err = dec.decode(&mut bytes).unwrap_err();
        let mut good = frame(Role::Client, true, Opcode::Binary, b"x");
        assert_eq!(dec.decode(&mut good), Err(err));
    }

    #[test]
    fn close_handshake_we_close_first() {
        let mut hs = CloseHandshake::new();
        assert!(hs.on_sent());
        assert!(!hs.is_complete());
        assert!(!hs.on_received(), "no echo after our own close");
        assert!(hs.is_complete());
        assert!(!hs.on_sent(), "second close refused");
    }

    #[test]
    fn close_handshake_peer_closes_first() {
        let mut hs = CloseHandshake::new();
        assert!(hs.on_received(), "must echo");
        assert!(hs.received() && !hs.sent() && !hs.is_complete());
        assert!(hs.on_sent());
        assert!(hs.is_complete());
        let peer = CloseFrame {
            code: CloseCode::GOING_AWAY,
            reason: String::new(),
        };
        assert_eq!(
            CloseHandshake::echo_code(Some(&peer)),
            CloseCode::GOING_AWAY
        );
        assert_eq!(CloseHandshake::echo_code(None), CloseCode::NORMAL);
    }

    #[test]
    fn opcode_round_trip() {
        for v in 0..=255u8 {
            if let Some(op) = Opcode::from_u8(v) {
                assert_eq!(op.as_u8(), v);
                assert_eq!(op.is_control(), v >= 8);
            }
        }
        assert_eq!(Opcode::from_u8(3), None);
    }

    #[test]
    fn control_payload_bounds() {
        assert!(ControlPayload::new(&[0; 126]).is_none());
        assert_eq!(ControlPayload::new(&[1; 125]).unwrap().len(), 125);
        assert!(ControlPayload::new(b"").unwrap().is_empty());
    }

    // ---- properties ----

    #[derive(Debug, Clone)]
    enum Msg {
        Binary(Vec<u8>, Vec<usize>),
        Text(String, Vec<usize>),
        Ping(Vec<u8>),
    }

    fn msg_strategy() -> impl Strategy<Value = Msg> {
        prop_oneof![
            4 => (
                proptest::collection::vec(any::<u8>(), 0..400),
                proptest::collection::vec(0usize..400, 0..4)
            )
                .prop_map(|(d, c)| Msg::Binary(d, c)),
            1 => ("\\PC{0,60}", proptest::collection::vec(0usize..200, 0..3))
                .prop_map(|(t, c)| Msg::Text(t, c)),
            1 => proptest::collection::vec(any::<u8>(), 0..=125).prop_map(Msg::Ping),
        ]
    }

    /// Encodes a message, fragmented at `cuts`, with a ping between the fragments.
    fn encode_fragmented(
        dst: &mut Vec<u8>,
        opcode: Opcode,
        data: &[u8],
        cuts: &[usize],
        mask: Option<[u8; 4]>,
    ) {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        points.sort_unstable();
        let mut start = 0;
        let mut op = opcode;
        for p in points {
            encode_frame(dst, false, op, &data[start..p], mask);
            encode_frame(dst, true, Opcode::Ping, b"mid", mask);
            op = Opcode::Continuation;
            start = p;
        }
        encode_frame(dst, true, op, &data[start..], mask);
    }

    proptest! {
        #[test]
        fn prop_random_splits_round_trip(
            msgs in proptest::collection::vec(msg_strategy(), 1..8),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
            server_role in any::<bool>(),
        ) {
            let role = if server_role { Role::Server } else { Role::Client };
            let mask = peer_mask(role);
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for m in &msgs {
                match m {
                    Msg::Binary(d, c) => {
                        encode_fragmented(&mut stream, Opcode::Binary, d, c, mask);
                        expected.extend(c.iter().map(|_| Out::Ping(b"mid".to_vec())));
                        expected.push(Out::Binary(d.clone()));
                    }
                    Msg::Text(t, c) => {
                        encode_fragmented(&mut stream, Opcode::Text, t.as_bytes(), c, mask);
                        expected.extend(c.iter().map(|_| Out::Ping(b"mid".to_vec())));
                        expected.push(Out::Text(t.clone()));
                    }
                    Msg::Ping(p) => {
                        encode_frame(&mut stream, true, Opcode::Ping, p, mask);
                        expected.push(Out::Ping(p.clone()));
                    }
                }
            }
            encode_close(&mut stream, CloseCode::NORMAL, "done", mask);
            expected.push(Out::Close(Some(CloseFrame { code: CloseCode::NORMAL, reason: "done".into() })));

            let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            points.sort_unstable();
            let mut dec = Decoder::new(role, Limits::default());
            let out = feed_split(&mut dec, &stream, &points).unwrap();
            prop_assert_eq!(out, expected);
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
            server_role in any::<bool>(),
        ) {
            let role = if server_role { Role::Server } else { Role::Client };
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut dec = Decoder::new(role, Limits { max_message: 200, max_text: 50 });
            // Either outcome is fine; the decoder must not panic or stall.
            let _ = feed_split(&mut dec, &bytes, &points);
        }
    }

    #[test]
    fn payload_skipped_by_the_caller_resumes_where_it_ends() {
        // An unmasked binary message of 100 bytes, then a ping.
        let payload: Vec<u8> = (0..100).collect();
        let mut wire = Vec::new();
        encode_frame(&mut wire, true, Opcode::Binary, &payload, None);
        encode_frame(&mut wire, true, Opcode::Ping, b"p", None);
        let mut dec = Decoder::new(Role::Client, Limits::default());
        assert_eq!(dec.unmasked_binary_left(), 0, "no frame yet");

        // The header and 30 payload bytes arrive through the decoder.
        let mut first = wire[..2 + 30].to_vec();
        let (n, event) = dec.decode(&mut first).unwrap();
        assert_eq!(n, 32);
        assert!(
            matches!(event, Some(Event::Binary { data, last: false }) if data == &payload[..30])
        );
        assert_eq!(dec.unmasked_binary_left(), 70);

        // 50 go past it; the message does not end there.
        assert!(!dec.skip_binary(50));
        assert_eq!(dec.unmasked_binary_left(), 20);

        // The rest of the message, then the ping, decode as if nothing had been skipped.
        let mut rest = wire[2 + 80..].to_vec();
        let (n, event) = dec.decode(&mut rest).unwrap();
        assert_eq!(n, 20);
        assert!(
            matches!(event, Some(Event::Binary { data, last: true }) if data == &payload[80..])
        );
        assert_eq!(dec.unmasked_binary_left(), 0);
        let (_, event) = dec.decode(&mut rest[20..]).unwrap();
        assert!(matches!(event, Some(Event::Ping(p)) if p.as_bytes() == b"p"));

        // A skip that ends the message says so, and a larger one is cut to the frame.
        let mut dec = Decoder::new(Role::Client, Limits::default());
        let mut head = wire[..2].to_vec();
        assert_eq!(dec.decode(&mut head).unwrap(), (2, None));
        assert!(dec.skip_binary(1000), "the skip ended the message");
        let mut ping = wire[2 + 100..].to_vec();
        let (_, event) = dec.decode(&mut ping).unwrap();
        assert!(matches!(event, Some(Event::Ping(_))));
    }

    #[test]
    fn only_unmasked_binary_payload_may_be_skipped() {
        // Masked (what a server receives): the bytes must pass through the decoder.
        let mut wire = Vec::new();
        encode_frame(&mut wire, true, Opcode::Binary, &[7; 50], Some(KEY));
        let mut dec = Decoder::new(Role::Server, Limits::default());
        let mut head = wire[..6].to_vec();
        dec.decode(&mut head).unwrap();
        assert_eq!(dec.unmasked_binary_left(), 0);
        assert!(!dec.skip_binary(10));
        let mut rest = wire[6..].to_vec();
        let (_, event) = dec.decode(&mut rest).unwrap();
        assert!(matches!(event, Some(Event::Binary { data, last: true }) if data == [7; 50]));

        // Text is assembled by the decoder.
        let mut wire = Vec::new();
        encode_frame(&mut wire, true, Opcode::Text, b"hello", None);
        let mut dec = Decoder::new(Role::Client, Limits::default());
        let mut head = wire[..3].to_vec();
        dec.decode(&mut head).unwrap();
        assert_eq!(dec.unmasked_binary_left(), 0);
        assert!(!dec.skip_binary(4));
    }
}
