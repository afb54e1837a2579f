//! The HTTP/1.1 upgrade that opens a tunnel session (RFC 6455 §4), parsed with `httparse`.
//!
//! Server side (the hub): [`parse_request`] validates an upgrade request and hands back the
//! parts the hub still has to judge (path, credentials); [`write_response`] accepts it and
//! [`write_error_response`] refuses it. Client side (the agent): [`write_request`] builds the
//! request from caller-supplied random key bytes and [`parse_response`] checks the hub's reply.
//!
//! Credentials (`Authorization`, `DPoP`) pass through untouched; validating them is the
//! caller's business. Nothing here allocates per header beyond the header table itself, and
//! every limit is checked before the bytes are trusted.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

/// The WebSocket subprotocol of NowConnect wire protocol v1. Both sides require it.
pub const SUBPROTOCOL: &str = "nowconnect.v1";

/// The GUID RFC 6455 §1.3 appends to the key before hashing it.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Bounds on the HTTP header block a peer may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// The most bytes the header block may take, request or status line and final blank line
    /// included.
    pub max_header_bytes: usize,
    /// The most header fields the block may hold.
    pub max_headers: usize,
}

impl Default for RequestLimits {
    /// 8192 bytes and 32 headers.
    fn default() -> Self {
        RequestLimits {
            max_header_bytes: 8192,
            max_headers: 32,
        }
    }
}

/// The outcome of parsing a header block that may not have fully arrived yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// The header block is complete.
    Complete {
        /// What was parsed.
        value: T,
        /// Bytes the header block took; anything after them belongs to the WebSocket stream.
        consumed: usize,
    },
    /// The header block is incomplete but still under the limits: read more and call again
    /// with all the bytes so far.
    Partial,
}

/// A valid WebSocket upgrade request, borrowing from the bytes it was parsed from.
///
/// The WebSocket parts (method, version, Upgrade, Connection, key, subprotocol) have been
/// validated. The path and credentials have not: the caller checks them.
#[derive(Clone, PartialEq, Eq)]
pub struct UpgradeRequest<'a> {
    /// The request target without its query string.
    pub path: &'a str,
    /// The query string after `?`, if there was one.
    pub query: Option<&'a str>,
    /// The `Host` header; exactly one is required.
    pub host: &'a str,
    /// The `Sec-WebSocket-Key` as sent, validated as base64 of 16 bytes.
    pub key: &'a str,
    /// The first `Authorization` header's raw value.
    pub authorization: Option<&'a [u8]>,
    /// How many `Authorization` headers were sent; more than one should be refused.
    pub authorization_count: usize,
    /// The first `DPoP` header's raw value.
    pub dpop: Option<&'a [u8]>,
    /// How many `DPoP` headers were sent; more than one should be refused.
    pub dpop_count: usize,
    /// The first `User-Agent` header, if sent.
    pub user_agent: Option<&'a str>,
}

impl std::fmt::Debug for UpgradeRequest<'_> {
    /// Credentials are shown only by length so that they never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpgradeRequest")
            .field("path", &self.path)
            .field("query", &self.query)
            .field("host", &self.host)
            .field("key", &self.key)
            .field("authorization_len", &self.authorization.map(<[u8]>::len))
            .field("authorization_count", &self.authorization_count)
            .field("dpop_len", &self.dpop.map(<[u8]>::len))
            .field("dpop_count", &self.dpop_count)
            .field("user_agent", &self.user_agent)
            .finish()
    }
}

/// Why an upgrade request or reply was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The bytes are not a well-formed HTTP/1.x header block.
    #[error("malformed HTTP header: {0}")]
    Malformed(httparse::Error),
    /// The header block is longer than the byte limit.
    #[error("header block larger than {limit} bytes")]
    HeaderTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The header block holds more fields than the limit.
    #[error("more than {limit} header fields")]
    TooManyHeaders {
        /// The limit in fields.
        limit: usize,
    },
    /// The request method is not GET.
    #[error("method is not GET")]
    MethodNotAllowed,
    /// The message is not HTTP/1.1.
    #[error("HTTP version is not 1.1")]
    HttpVersion,
    /// No `Upgrade` header holds the token `websocket`.
    #[error("Upgrade header lacks the websocket token")]
    NotWebSocketUpgrade,
    /// No `Connection` header holds the token `upgrade`.
    #[error("Connection header lacks the upgrade token")]
    NotConnectionUpgrade,
    /// `Sec-WebSocket-Version` is missing, repeated or not 13.
    #[error("Sec-WebSocket-Version is not 13")]
    UnsupportedVersion,
    /// No `Host` header (RFC 6455 §4.1 and RFC 9112 §3.2 require one).
    #[error("Host header missing")]
    MissingHost,
    /// No `Sec-WebSocket-Key` header.
    #[error("Sec-WebSocket-Key missing")]
    MissingKey,
    /// More than one `Sec-WebSocket-Key` header.
    #[error("Sec-WebSocket-Key repeated")]
    DuplicateKey,
    /// `Sec-WebSocket-Key` is not base64 of exactly 16 bytes.
    #[error("Sec-WebSocket-Key is not base64 of 16 bytes")]
    InvalidKey,
    /// The request does not offer the `nowconnect.v1` subprotocol.
    #[error("subprotocol {SUBPROTOCOL} not offered")]
    MissingSubprotocol,
    /// A header that may appear only once appeared more often.
    #[error("header {0} repeated")]
    DuplicateHeader(&'static str),
    /// A header needed as text holds bytes other than visible ASCII, space and tab.
    #[error("header {0} is not visible ASCII")]
    InvalidHeaderValue(&'static str),
    /// Client side: the server answered with a status other than 101.
    #[error("upgrade refused with status {status}")]
    Rejected {
        /// The status code the server sent.
        status: u16,
        /// The server's `WWW-Authenticate` header, if any (lossily decoded), saying why.
        www_authenticate: Option<String>,
    },
    /// Client side: `Sec-WebSocket-Accept` is missing, repeated or does not match the key.
    #[error("Sec-WebSocket-Accept missing or wrong")]
    AcceptMismatch,
    /// Client side: the server did not select exactly the `nowconnect.v1` subprotocol.
    #[error("server did not select subprotocol {SUBPROTOCOL}")]
    SubprotocolMismatch,
    /// Client side: the server selected an extension, but none was offered.
    #[error("server selected an extension that was not offered")]
    UnexpectedExtension,
}

impl HandshakeError {
    /// The HTTP status the hub answers a refused request with: 400 malformed, 405 non-GET (send
    /// `Allow: GET`), 426 wrong or missing version (send `Sec-WebSocket-Version: 13`), 431
    /// header block too large.
    ///
    /// Client-side errors are never sent anywhere: [`Rejected`](Self::Rejected) reports the
    /// server's status, the others 502 (the upstream's reply was unusable).
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::HeaderTooLarge { .. } | HandshakeError::TooManyHeaders { .. } => 431,
            HandshakeError::MethodNotAllowed => 405,
            HandshakeError::UnsupportedVersion => 426,
            HandshakeError::Rejected { status, .. } => *status,
            HandshakeError::AcceptMismatch
            | HandshakeError::SubprotocolMismatch
            | HandshakeError::UnexpectedExtension => 502,
            HandshakeError::Malformed(_)
            | HandshakeError::HttpVersion
            | HandshakeError::NotWebSocketUpgrade
            | HandshakeError::NotConnectionUpgrade
            | HandshakeError::MissingHost
            | HandshakeError::MissingKey
            | HandshakeError::DuplicateKey
            | HandshakeError::InvalidKey
            | HandshakeError::MissingSubprotocol
            | HandshakeError::DuplicateHeader(_)
            | HandshakeError::InvalidHeaderValue(_) => 400,
        }
    }
}

/// Maps an httparse outcome on a window of at most `max_header_bytes` to ours.
fn header_outcome(
    result: httparse::Result<usize>,
    buf_len: usize,
    limits: &RequestLimits,
) -> Result<Option<usize>, HandshakeError> {
    match result {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) if buf_len >= limits.max_header_bytes => {
            Err(HandshakeError::HeaderTooLarge {
                limit: limits.max_header_bytes,
            })
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HandshakeError::TooManyHeaders {
            limit: limits.max_headers,
        }),
        Err(e) => Err(HandshakeError::Malformed(e)),
    }
}

/// The values of every header called `name` (case-insensitively).
fn values<'h, 'a>(
    headers: &'h [httparse::Header<'a>],
    name: &'h str,
) -> impl Iterator<Item = &'a [u8]> + 'h {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// The value as text if it holds only visible ASCII, space and tab.
fn as_text<'v>(value: &'v [u8], name: &'static str) -> Result<&'v str, HandshakeError> {
    if value
        .iter()
        .all(|&b| b == b'\t' || (0x20..=0x7E).contains(&b))
    {
        std::str::from_utf8(value).map_err(|_| HandshakeError::InvalidHeaderValue(name))
    } else {
        Err(HandshakeError::InvalidHeaderValue(name))
    }
}

/// Strips optional whitespace (space, tab) from both ends.
fn trim_ows(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// Whether any `name` header's comma-separated list holds `token` (ASCII case-insensitive
/// if `ignore_case`).
fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str, ignore_case: bool) -> bool {
    values(headers, name)
        .flat_map(|v| v.split(|&b| b == b','))
        .map(trim_ows)
        .any(|t| {
            if ignore_case {
                t.eq_ignore_ascii_case(token.as_bytes())
            } else {
                t == token.as_bytes()
            }
        })
}

/// The only `name` header's value (trimmed), `Ok(None)` if absent, or `Err(())` if repeated.
fn single<'a>(headers: &[httparse::Header<'a>], name: &str) -> Result<Option<&'a [u8]>, ()> {
    let mut found = values(headers, name);
    let first = found.next();
    if found.next().is_some() {
        return Err(());
    }
    Ok(first.map(trim_ows))
}

/// Whether `key` is base64 (standard alphabet, padded) of exactly 16 bytes.
fn valid_key(key: &str) -> bool {
    // 16 bytes encode to 22 characters and "==".
    if key.len() != 24 {
        return false;
    }
    let mut out = [0u8; 18];
    matches!(BASE64.decode_slice(key, &mut out), Ok(16))
}

/// Server side. Partial while the header is incomplete and under the limit; error once over the
/// byte or count limits.
///
/// Call again with all the bytes received so far after each read. On success, `consumed` is
/// the length of the header block; a well-behaved client sends nothing after it until it has
/// the reply.
pub fn parse_request<'a>(
    buf: &'a [u8],
    limits: &RequestLimits,
) -> Result<Parsed<UpgradeRequest<'a>>, HandshakeError> {
    let window = &buf[..buf.len().min(limits.max_header_bytes)];
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let Some(consumed) = header_outcome(req.parse(window), buf.len(), limits)? else {
        return Ok(Parsed::Partial);
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        // httparse fills these in on Complete; guard anyway rather than unwrap.
        return Err(HandshakeError::Malformed(httparse::Error::Token));
    };
    let headers: &[httparse::Header<'a>] = req.headers;

    if method != "GET" {
        return Err(HandshakeError::MethodNotAllowed);
    }
    if version != 1 {
        return Err(HandshakeError::HttpVersion);
    }
    if !has_token(headers, "upgrade", "websocket", true) {
        return Err(HandshakeError::NotWebSocketUpgrade);
    }
    if !has_token(headers, "connection", "upgrade", true) {
        return Err(HandshakeError::NotConnectionUpgrade);
    }
    match single(headers, "sec-websocket-version") {
        Ok(Some(b"13")) => {}
        _ => return Err(HandshakeError::UnsupportedVersion),
    }
    let key = match single(headers, "sec-websocket-key") {
        Ok(Some(raw)) => {
            as_text(raw, "Sec-WebSocket-Key").map_err(|_| HandshakeError::InvalidKey)?
        }
        Ok(None) => return Err(HandshakeError::MissingKey),
        Err(()) => return Err(HandshakeError::DuplicateKey),
    };
    if !valid_key(key) {
        return Err(HandshakeError::InvalidKey);
    }
    if !has_token(headers, "sec-websocket-protocol", SUBPROTOCOL, false) {
        return Err(HandshakeError::MissingSubprotocol);
    }
    let host = match single(headers, "host") {
        Ok(Some(raw)) => as_text(raw, "Host")?,
        Ok(None) => return Err(HandshakeError::MissingHost),
        Err(()) => return Err(HandshakeError::DuplicateHeader("Host")),
    };
    let user_agent = values(headers, "user-agent")
        .next()
        .map(|raw| as_text(raw, "User-Agent"))
        .transpose()?;
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };

    Ok(Parsed::Complete {
        value: UpgradeRequest {
            path,
            query,
            host,
            key,
            authorization: values(headers, "authorization").next(),
            authorization_count: values(headers, "authorization").count(),
            dpop: values(headers, "dpop").next(),
            dpop_count: values(headers, "dpop").count(),
            user_agent,
        },
        consumed,
    })
}

/// The `Sec-WebSocket-Accept` value for `key`:
/// base64(SHA-1(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// Appends the 101 reply accepting `req`: Upgrade, Connection, Sec-WebSocket-Accept and
/// `Sec-WebSocket-Protocol: nowconnect.v1`.
pub fn write_response(dst: &mut Vec<u8>, req: &UpgradeRequest<'_>) {
    dst.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    dst.extend_from_slice(accept_key(req.key).as_bytes());
    dst.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
    dst.extend_from_slice(SUBPROTOCOL.as_bytes());
    dst.extend_from_slice(b"\r\n\r\n");
}

/// The reason phrase written for `status`.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Appends `text` with any CR or LF removed, so that no value can start a new header line.
fn push_field(dst: &mut Vec<u8>, text: &str) {
    dst.extend(text.bytes().filter(|b| !matches!(b, b'\r' | b'\n')));
}

/// A minimal error reply (status line, Content-Length: 0, Connection: close, plus the given
/// headers, e.g. WWW-Authenticate, or Sec-WebSocket-Version: 13 for 426).
///
/// A status outside 100–599 is written as 500. CR and LF are dropped from header names and
/// values.
pub fn write_error_response(dst: &mut Vec<u8>, status: u16, headers: &[(&str, &str)]) {
    let status = if (100..=599).contains(&status) {
        status
    } else {
        500
    };
    dst.extend_from_slice(b"HTTP/1.1 ");
    dst.extend_from_slice(status.to_string().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(reason_phrase(status).as_bytes());
    dst.extend_from_slice(b"\r\nContent-Length: 0\r\nConnection: close\r\n");
    for (name, value) in headers {
        push_field(dst, name);
        dst.extend_from_slice(b": ");
        push_field(dst, value);
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
}

/// What the agent needs to build its upgrade request.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientRequest<'a> {
    /// The `Host` header value (host, and port if not the default).
    pub host: &'a str,
    /// The request target, e.g. `/nowconnect/v1/tunnel`.
    pub path: &'a str,
    /// Sixteen random bytes for `Sec-WebSocket-Key`; the caller draws them (the core has no
    /// RNG) and must use fresh ones for every request.
    pub key: [u8; 16],
    /// The full `Authorization` value, e.g. `Bearer <JWT>`.
    pub authorization: Option<&'a str>,
    /// The `DPoP` proof, when `authorization` uses the DPoP scheme.
    pub dpop: Option<&'a str>,
    /// The `User-Agent` value, e.g. `nowconnect-agent/0.1.0`.
    pub user_agent: &'a str,
}

impl std::fmt::Debug for ClientRequest<'_> {
    /// Credentials are left out so that they never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRequest")
            .field("host", &self.host)
            .field("path", &self.path)
            .field("authorization", &self.authorization.map(|_| "<redacted>"))
            .field("dpop", &self.dpop.map(|_| "<redacted>"))
            .field("user_agent", &self.user_agent)
            .finish()
    }
}

/// Appends the GET upgrade request and returns the Sec-WebSocket-Accept value the reply must
/// carry.
///
/// CR and LF are dropped from every caller-supplied value.
pub fn write_request(dst: &mut Vec<u8>, req: &ClientRequest<'_>) -> String {
    let key = BASE64.encode(req.key);
    dst.extend_from_slice(b"GET ");
    push_field(dst, req.path);
    dst.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    push_field(dst, req.host);
    dst.extend_from_slice(
        b"\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: ",
    );
    dst.extend_from_slice(key.as_bytes());
    dst.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
    dst.extend_from_slice(SUBPROTOCOL.as_bytes());
    dst.extend_from_slice(b"\r\nUser-Agent: ");
    push_field(dst, req.user_agent);
    dst.extend_from_slice(b"\r\n");
    if let Some(auth) = req.authorization {
        dst.extend_from_slice(b"Authorization: ");
        push_field(dst, auth);
        dst.extend_from_slice(b"\r\n");
    }
    if let Some(dpop) = req.dpop {
        dst.extend_from_slice(b"DPoP: ");
        push_field(dst, dpop);
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
    accept_key(&key)
}

/// Validates the reply: 101, Upgrade/Connection tokens, accept key, subprotocol nowconnect.v1.
/// A non-101 status is an error that carries the status code and the WWW-Authenticate value
/// (if any) so the agent can log why it was refused.
///
/// On success, `consumed` is the length of the header block; any bytes after it are already
/// WebSocket frames.
pub fn parse_response(
    buf: &[u8],
    expected_accept: &str,
    limits: &RequestLimits,
) -> Result<Parsed<()>, HandshakeError> {
    let window = &buf[..buf.len().min(limits.max_header_bytes)];
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut resp = httparse::Response::new(&mut headers);
    let Some(consumed) = header_outcome(resp.parse(window), buf.len(), limits)? else {
        return Ok(Parsed::Partial);
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err(HandshakeError::Malformed(httparse::Error::Status));
    };
    let headers: &[httparse::Header<'_>] = resp.headers;

    if status != 101 {
        return Err(HandshakeError::Rejected {
            status,
            www_authenticate: values(headers, "www-authenticate")
                .next()
                .map(|v| String::from_utf8_lossy(trim_ows(v)).into_owned()),
        });
    }
    if version != 1 {
        return Err(HandshakeError::HttpVersion);
    }
    if !has_token(headers, "upgrade", "websocket", true) {
        return Err(HandshakeError::NotWebSocketUpgrade);
    }
    if !has_token(headers, "connection", "upgrade", true) {
        return Err(HandshakeError::NotConnectionUpgrade);
    }
    match single(headers, "sec-websocket-accept") {
        Ok(Some(accept)) if accept == expected_accept.as_bytes() => {}
        _ => return Err(HandshakeError::AcceptMismatch),
    }
    match single(headers, "sec-websocket-protocol") {
        Ok(Some(protocol)) if protocol == SUBPROTOCOL.as_bytes() => {}
        _ => return Err(HandshakeError::SubprotocolMismatch),
    }
    if values(headers, "sec-websocket-extensions").next().is_some() {
        return Err(HandshakeError::UnexpectedExtension);
    }
    Ok(Parsed::Complete {
        value: (),
        consumed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn limits() -> RequestLimits {
        RequestLimits::default()
    }

    /// A valid request with `extra` header lines spliced in, and `skip` header names left out.
    fn request_with(method: &str, skip: &[&str], extra: &str) -> Vec<u8> {
        let lines = [
            ("Host", "hub.example:443"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", SAMPLE_KEY),
            ("Sec-WebSocket-Protocol", "nowconnect.v1"),
            ("Authorization", "Bearer abc.def.ghi"),
            ("User-Agent", "nowconnect-agent/0.1.0"),
        ];
        let mut s = format!("{method} /nowconnect/v1/tunnel?lane=1 HTTP/1.1\r\n");
        for (name, value) in lines {
            if !skip.iter().any(|k| k.eq_ignore_ascii_case(name)) {
                s.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        s.push_str(extra);
        s.push_str("\r\n");
        s.into_bytes()
    }

    fn request(skip: &[&str], extra: &str) -> Vec<u8> {
        request_with("GET", skip, extra)
    }

    fn parse_err(bytes: &[u8]) -> HandshakeError {
        parse_request(bytes, &limits()).unwrap_err()
    }

    fn complete<T: std::fmt::Debug>(p: Parsed<T>) -> (T, usize) {
        match p {
            Parsed::Complete { value, consumed } => (value, consumed),
            Parsed::Partial => panic!("partial"),
        }
    }

    #[test]
    fn rfc_sample_accept_key() {
        assert_eq!(accept_key(SAMPLE_KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn parses_valid_request() {
        let bytes = request(&[], "DPoP: proof\r\n");
        let (req, consumed) = complete(parse_request(&bytes, &limits()).unwrap());
        assert_eq!(consumed, bytes.len());
        assert_eq!(req.path, "/nowconnect/v1/tunnel");
        assert_eq!(req.query, Some("lane=1"));
        assert_eq!(req.host, "hub.example:443");
        assert_eq!(req.key, SAMPLE_KEY);
        assert_eq!(req.authorization, Some(&b"Bearer abc.def.ghi"[..]));
        assert_eq!(req.authorization_count, 1);
        assert_eq!(req.dpop, Some(&b"proof"[..]));
        assert_eq!(req.dpop_count, 1);
        assert_eq!(req.user_agent, Some("nowconnect-agent/0.1.0"));
        // Debug never shows credentials.
        let shown = format!("{req:?}");
        assert!(!shown.contains("abc.def") && !shown.contains("proof"));
    }

    #[test]
    fn consumed_stops_at_header_end() {
        let mut bytes = request(&[], "");
        let len = bytes.len();
        bytes.extend_from_slice(&[0x82, 0x80, 1, 2, 3, 4]);
        let (_, consumed) = complete(parse_request(&bytes, &limits()).unwrap());
        assert_eq!(consumed, len);
    }

    #[test]
    fn every_prefix_is_partial() {
        let bytes = request(&[], "");
        for end in 0..bytes.len() {
            assert_eq!(
                parse_request(&bytes[..end], &limits()),
                Ok(Parsed::Partial),
                "prefix {end}"
            );
        }
        assert!(matches!(
            parse_request(&bytes, &limits()),
            Ok(Parsed::Complete { .. })
        ));
    }

    #[test]
    fn tolerant_token_lists() {
        let bytes = request(
            &["Connection", "Upgrade", "Sec-WebSocket-Protocol"],
            "Connection: keep-alive, Upgrade\r\n\
             Upgrade: h2c ,  WebSocket\r\n\
             Sec-WebSocket-Protocol: other.v2\r\n\
             Sec-WebSocket-Protocol: chat, nowconnect.v1\r\n",
        );
        assert!(matches!(
            parse_request(&bytes, &limits()),
            Ok(Parsed::Complete { .. })
        ));
        let repeated = request(
            &["Connection"],
            "Connection: keep-alive\r\nconnection: UPGRADE\r\n",
        );
        assert!(matches!(
            parse_request(&repeated, &limits()),
            Ok(Parsed::Complete { .. })
        ));
    }

    #[test]
    fn rejects_non_get() {
        let err = parse_err(&request_with("POST", &[], ""));
        assert_eq!(err, HandshakeError::MethodNotAllowed);
        assert_eq!(err.status(), 405);
    }

    #[test]
    fn rejects_http_1_0() {
        let bytes = request(&[], "");
        let text = String::from_utf8(bytes)
            .unwrap()
            .replace("HTTP/1.1", "HTTP/1.0");
        let err = parse_err(text.as_bytes());
        assert_eq!(err, HandshakeError::HttpVersion);
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn rejects_missing_upgrade() {
        let err = parse_err(&request(&["Upgrade"], ""));
        assert_eq!(err, HandshakeError::NotWebSocketUpgrade);
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn rejects_upgrade_to_something_else() {
        let err = parse_err(&request(&["Upgrade"], "Upgrade: h2c\r\n"));
        assert_eq!(err, HandshakeError::NotWebSocketUpgrade);
        // A token that merely contains the word does not count.
        let err = parse_err(&request(&["Upgrade"], "Upgrade: websocketx\r\n"));
        assert_eq!(err, HandshakeError::NotWebSocketUpgrade);
    }

    #[test]
    fn rejects_missing_connection_upgrade() {
        let err = parse_err(&request(&["Connection"], "Connection: keep-alive\r\n"));
        assert_eq!(err, HandshakeError::NotConnectionUpgrade);
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn rejects_missing_version() {
        let err = parse_err(&request(&["Sec-WebSocket-Version"], ""));
        assert_eq!(err, HandshakeError::UnsupportedVersion);
        assert_eq!(err.status(), 426);
    }

    #[test]
    fn rejects_wrong_version() {
        let err = parse_err(&request(
            &["Sec-WebSocket-Version"],
            "Sec-WebSocket-Version: 8\r\n",
        ));
        assert_eq!(err, HandshakeError::UnsupportedVersion);
        assert_eq!(err.status(), 426);
        let err = parse_err(&request(&[], "Sec-WebSocket-Version: 13\r\n"));
        assert_eq!(err, HandshakeError::UnsupportedVersion, "repeated");
    }

    #[test]
    fn rejects_missing_host() {
        let err = parse_err(&request(&["Host"], ""));
        assert_eq!(err, HandshakeError::MissingHost);
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn rejects_missing_key() {
        let err = parse_err(&request(&["Sec-WebSocket-Key"], ""));
        assert_eq!(err, HandshakeError::MissingKey);
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn rejects_duplicate_key() {
        let err = parse_err(&request(
            &[],
            "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n",
        ));
        assert_eq!(err, HandshakeError::DuplicateKey);
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn rejects_invalid_keys() {
        for key in [
            "not base64 at all!!!!!!!",
            "AAAAAAAAAAAAAAAAAAAA",         // 15 bytes
            "AAAAAAAAAAAAAAAAAAAAAAA=",     // 17 bytes
            "AAAAAAAAAAAAAAAAAAAAAA",       // 16 bytes, unpadded
            "AAAAAAAAAAAAAAAAAAAAAB==",     // non-canonical trailing bits
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAA", // too long
            "",
        ] {
            let extra = format!("Sec-WebSocket-Key: {key}\r\n");
            let err = parse_err(&request(&["Sec-WebSocket-Key"], &extra));
            assert_eq!(err, HandshakeError::InvalidKey, "{key:?}");
            assert_eq!(err.status(), 400);
        }
        let mut bytes = request(&["Sec-WebSocket-Key"], "Sec-WebSocket-Key: ");
        bytes.truncate(bytes.len() - 2);
        bytes.extend_from_slice(b"AAAAAAAAAAAAAAAAAAAA\xc3\xa9==\r\n\r\n");
        assert_eq!(parse_err(&bytes), HandshakeError::InvalidKey);
    }

    #[test]
    fn rejects_missing_subprotocol() {
        let err = parse_err(&request(&["Sec-WebSocket-Protocol"], ""));
        assert_eq!(err, HandshakeError::MissingSubprotocol);
        assert_eq!(err.status(), 400);
        let err = parse_err(&request(
            &["Sec-WebSocket-Protocol"],
            "Sec-WebSocket-Protocol: chat, NowConnect.V1x\r\n",
        ));
        assert_eq!(err, HandshakeError::MissingSubprotocol);
    }

    #[test]
    fn rejects_duplicate_host() {
        let err = parse_err(&request(&[], "Host: other\r\n"));
        assert_eq!(err, HandshakeError::DuplicateHeader("Host"));
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn rejects_non_ascii_host() {
        let mut bytes = request(&["Host"], "");
        let at = bytes.len() - 2;
        bytes.splice(at..at, b"Host: h\xc3\xbcb\r\n".iter().copied());
        let err = parse_err(&bytes);
        assert_eq!(err, HandshakeError::InvalidHeaderValue("Host"));
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn rejects_non_ascii_user_agent() {
        let mut bytes = request(&["User-Agent"], "");
        let at = bytes.len() - 2;
        bytes.splice(at..at, b"User-Agent: \xff\r\n".iter().copied());
        assert_eq!(
            parse_err(&bytes),
            HandshakeError::InvalidHeaderValue("User-Agent")
        );
    }

    #[test]
    fn credentials_pass_untouched_and_are_counted() {
        let mut bytes = request(&["Authorization"], "");
        let at = bytes.len() - 2;
        bytes.splice(
            at..at,
            b"Authorization: DPoP t\xc3\xa9k\r\nAuthorization: Bearer x\r\nDPoP: a\r\ndpop: b\r\n"
                .iter()
                .copied(),
        );
        let (req, _) = complete(parse_request(&bytes, &limits()).unwrap());
        assert_eq!(req.authorization, Some(&b"DPoP t\xc3\xa9k"[..]));
        assert_eq!(req.authorization_count, 2);
        assert_eq!(req.dpop, Some(&b"a"[..]));
        assert_eq!(req.dpop_count, 2);
    }

    #[test]
    fn rejects_malformed_http() {
        let err = parse_err(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n");
        assert!(matches!(err, HandshakeError::Malformed(_)), "{err:?}");
        assert_eq!(err.status(), 400);
        assert!(matches!(
            parse_err(b"\x00\x01\x02\r\n\r\n"),
            HandshakeError::Malformed(_)
        ));
    }

    #[test]
    fn rejects_header_over_byte_limit_while_partial() {
        let small = RequestLimits {
            max_header_bytes: 64,
            max_headers: 32,
        };
        let bytes = request(&[], "");
        assert_eq!(parse_request(&bytes[..63], &small), Ok(Parsed::Partial));
        let err = parse_request(&bytes[..64], &small).unwrap_err();
        assert_eq!(err, HandshakeError::HeaderTooLarge { limit: 64 });
        assert_eq!(err.status(), 431);
    }

    #[test]
    fn rejects_complete_header_over_byte_limit() {
        let bytes = request(&[], "");
        let small = RequestLimits {
            max_header_bytes: bytes.len() - 1,
            max_headers: 32,
        };
        assert_eq!(
            parse_request(&bytes, &small),
            Err(HandshakeError::HeaderTooLarge {
                limit: bytes.len() - 1
            })
        );
        let exact = RequestLimits {
            max_header_bytes: bytes.len(),
            max_headers: 32,
        };
        assert!(matches!(
            parse_request(&bytes, &exact),
            Ok(Parsed::Complete { .. })
        ));
    }

    #[test]
    fn rejects_too_many_headers() {
        let few = RequestLimits {
            max_header_bytes: 8192,
            max_headers: 4,
        };
        let err = parse_request(&request(&[], ""), &few).unwrap_err();
        assert_eq!(err, HandshakeError::TooManyHeaders { limit: 4 });
        assert_eq!(err.status(), 431);
    }

    fn client_request<'a>() -> ClientRequest<'a> {
        ClientRequest {
            host: "hub.example",
            path: "/nowconnect/v1/tunnel",
            key: *b"the sample nonce",
            authorization: Some("DPoP eyJ.x.y"),
            dpop: Some("eyJ.proof.sig"),
            user_agent: "nowconnect-agent/0.1.0",
        }
    }

    #[test]
    fn round_trip_request_and_response() {
        let mut wire = Vec::new();
        let expected = write_request(&mut wire, &client_request());
        // The key bytes are the RFC sample nonce, so the accept value is the RFC's.
        assert_eq!(expected, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");

        let (req, consumed) = complete(parse_request(&wire, &limits()).unwrap());
        assert_eq!(consumed, wire.len());
        assert_eq!(req.host, "hub.example");
        assert_eq!(req.path, "/nowconnect/v1/tunnel");
        assert_eq!(req.query, None);
        assert_eq!(req.key, SAMPLE_KEY);
        assert_eq!(req.authorization, Some(&b"DPoP eyJ.x.y"[..]));
        assert_eq!(req.dpop, Some(&b"eyJ.proof.sig"[..]));
        assert_eq!(req.user_agent, Some("nowconnect-agent/0.1.0"));

        let mut reply = Vec::new();
        write_response(&mut reply, &req);
        let reply_len = reply.len();
        reply.extend_from_slice(&[0x81, 0x00]);
        assert_eq!(
            parse_response(&reply, &expected, &limits()),
            Ok(Parsed::Complete {
                value: (),
                consumed: reply_len
            })
        );
        for end in 0..reply_len {
            assert_eq!(
                parse_response(&reply[..end], &expected, &limits()),
                Ok(Parsed::Partial)
            );
        }
    }

    #[test]
    fn write_request_drops_line_breaks() {
        let mut wire = Vec::new();
        let req = ClientRequest {
            authorization: Some("Bearer x\r\nX-Injected: 1"),
            ..client_request()
        };
        write_request(&mut wire, &req);
        let text = String::from_utf8(wire).unwrap();
        assert!(!text.contains("\r\nX-Injected"));
        assert!(!format!("{req:?}").contains("Bearer"));
    }

    fn response(lines: &[&str]) -> Vec<u8> {
        let mut s = String::from("HTTP/1.1 101 Switching Protocols\r\n");
        for l in lines {
            s.push_str(l);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
    const GOOD: [&str; 4] = [
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        "Sec-WebSocket-Protocol: nowconnect.v1",
    ];

    fn response_err(bytes: &[u8]) -> HandshakeError {
        parse_response(bytes, ACCEPT, &limits()).unwrap_err()
    }

    #[test]
    fn accepts_tolerant_response() {
        let bytes = response(&[
            "upgrade: WebSocket",
            "connection: keep-alive, upgrade",
            "sec-websocket-accept:  s3pPLMBiTxaQ9kYGzzhZRbK+xOo= ",
            "SEC-WEBSOCKET-PROTOCOL: nowconnect.v1",
        ]);
        assert!(matches!(
            parse_response(&bytes, ACCEPT, &limits()),
            Ok(Parsed::Complete { .. })
        ));
    }

    #[test]
    fn response_refusal_carries_status_and_challenge() {
        let bytes = b"HTTP/1.1 401 Unauthorized\r\n\
                      WWW-Authenticate: Bearer error=\"invalid_token\"\r\n\
                      Content-Length: 0\r\n\r\n";
        let err = response_err(bytes);
        assert_eq!(
            err,
            HandshakeError::Rejected {
                status: 401,
                www_authenticate: Some("Bearer error=\"invalid_token\"".into()),
            }
        );
        assert_eq!(err.status(), 401);
        let err = response_err(b"HTTP/1.1 403 Forbidden\r\n\r\n");
        assert_eq!(
            err,
            HandshakeError::Rejected {
                status: 403,
                www_authenticate: None
            }
        );
    }

    #[test]
    fn response_rejects_wrong_accept() {
        let mut lines = GOOD;
        lines[2] = "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        assert_eq!(
            response_err(&response(&lines)),
            HandshakeError::AcceptMismatch
        );
        assert_eq!(
            response_err(&response(&[GOOD[0], GOOD[1], GOOD[3]])),
            HandshakeError::AcceptMismatch
        );
        assert_eq!(
            response_err(&response(&[GOOD[0], GOOD[1], GOOD[2], GOOD[2], GOOD[3]])),
            HandshakeError::AcceptMismatch
        );
    }

    #[test]
    fn response_rejects_wrong_subprotocol() {
        assert_eq!(
            response_err(&response(&GOOD[..3])),
            HandshakeError::SubprotocolMismatch
        );
        let mut lines = GOOD;
        lines[3] = "Sec-WebSocket-Protocol: chat";
        assert_eq!(
            response_err(&response(&lines)),
            HandshakeError::SubprotocolMismatch
        );
    }

    #[test]
    fn response_rejects_unoffered_extension() {
        let mut lines = GOOD.to_vec();
        lines.push("Sec-WebSocket-Extensions: permessage-deflate");
        assert_eq!(
            response_err(&response(&lines)),
            HandshakeError::UnexpectedExtension
        );
    }

    #[test]
    fn response_rejects_missing_upgrade_tokens() {
        assert_eq!(
            response_err(&response(&GOOD[1..])),
            HandshakeError::NotWebSocketUpgrade
        );
        assert_eq!(
            response_err(&response(&[GOOD[0], GOOD[2], GOOD[3]])),
            HandshakeError::NotConnectionUpgrade
        );
    }

    #[test]
    fn response_rejects_http_1_0() {
        let bytes = String::from_utf8(response(&GOOD))
            .unwrap()
            .replace("HTTP/1.1", "HTTP/1.0");
        assert_eq!(response_err(bytes.as_bytes()), HandshakeError::HttpVersion);
    }

    #[test]
    fn response_over_limits() {
        let bytes = response(&GOOD);
        let small = RequestLimits {
            max_header_bytes: 20,
            max_headers: 32,
        };
        assert_eq!(
            parse_response(&bytes, ACCEPT, &small),
            Err(HandshakeError::HeaderTooLarge { limit: 20 })
        );
        let few = RequestLimits {
            max_header_bytes: 8192,
            max_headers: 2,
        };
        assert_eq!(
            parse_response(&bytes, ACCEPT, &few),
            Err(HandshakeError::TooManyHeaders { limit: 2 })
        );
        assert!(matches!(
            response_err(b"HTTP/1.1 abc\r\n\r\n"),
            HandshakeError::Malformed(_)
        ));
    }

    #[test]
    fn error_response_format() {
        let mut out = Vec::new();
        write_error_response(
            &mut out,
            401,
            &[(
                "WWW-Authenticate",
                "DPoP error=\"invalid_dpop_proof\"\r\nX: y",
            )],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\
             WWW-Authenticate: DPoP error=\"invalid_dpop_proof\"X: y\r\n\r\n"
        );
        let mut out = Vec::new();
        write_error_response(&mut out, 426, &[("Sec-WebSocket-Version", "13")]);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.ends_with("Sec-WebSocket-Version: 13\r\n\r\n"));
        let mut out = Vec::new();
        write_error_response(&mut out, 7, &[]);
        assert!(out.starts_with(b"HTTP/1.1 500 "));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic sweep; the fuzz targets go further.
        let base = request(&[], "");
        for i in 0..base.len() {
            for b in [0u8, b'\r', b'\n', b':', b',', 0xFF] {
                let mut bytes = base.clone();
                bytes[i] = b;
                let _ = parse_request(&bytes, &limits());
                let _ = parse_response(&bytes, ACCEPT, &limits());
            }
        }
    }
}
