//! Opening a session: TCP to the hub (directly or through an HTTP CONNECT proxy), TLS for
//! `wss://`, the WebSocket upgrade with the access token (Bearer, or DPoP with a fresh
//! proof), HELLO, and the hub's WELCOME.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nowconnect_core::config::WsUrl;
use nowconnect_core::control::{ControlError, ControlMessage, Hello, Welcome};
use nowconnect_core::handshake::{self, ClientRequest, HandshakeError, Parsed, RequestLimits};
use nowconnect_core::ws::{self, CloseCode, Opcode, WsError};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::dpop::{self, DpopKey, ProofError};
use crate::proxy::{self, ProxyUrl};
use crate::token::TokenError;
use crate::wire;

/// The longest a connect may take, from DNS to WELCOME.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The WebSocket limits the agent enforces on what the hub sends.
pub(crate) const WS_LIMITS: ws::Limits = ws::Limits {
    max_message: 16 << 20,
    max_text: 64 << 10,
};

/// A byte stream to the hub, plain or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// The connection to a hub.
pub(crate) enum HubIo {
    /// Plain TCP, which the session may splice from.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<dyn Io>),
}

impl HubIo {
    /// The connection as a byte stream.
    fn io(&mut self) -> &mut dyn Io {
        match self {
            HubIo::Plain(tcp) => tcp,
            HubIo::Tls(io) => io.as_mut(),
        }
    }
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The token file could not be used.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The DPoP proof could not be made.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// DNS resolution failed or returned nothing.
    #[error("cannot resolve {host}: {why}")]
    Resolve {
        /// The hub host.
        host: String,
        /// What went wrong.
        why: String,
    },
    /// No address of the hub accepted a TCP connection.
    #[error("cannot connect to {addr}: {source}")]
    Tcp {
        /// The last address tried.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// The host is not usable as a TLS server name.
    #[error("host {0} is not a valid TLS server name")]
    ServerName(String),
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// The proxy could not be reached, or broke HTTP while setting up the tunnel.
    #[error("proxy {proxy}: {why}")]
    Proxy {
        /// The proxy, without credentials.
        proxy: String,
        /// What went wrong.
        why: String,
    },
    /// The proxy answered CONNECT with something other than success.
    #[error("proxy {proxy} refused CONNECT {target}: {status_line}")]
    ProxyRefused {
        /// The proxy, without credentials.
        proxy: String,
        /// The hub's `host:port`.
        target: String,
        /// The reply's status code.
        status: u16,
        /// The reply's status line, printable ASCII only.
        status_line: String,
    },
    /// Reading or writing the connection failed.
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The hub closed the connection during the handshake.
    #[error("hub closed the connection during the handshake")]
    Eof,
    /// The hub refused the upgrade (401/403 carry the `WWW-Authenticate` value).
    #[error("upgrade refused with status {status}{}", www_authenticate.as_deref().map(|w| format!(" (WWW-Authenticate: {w})")).unwrap_or_default())]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The `WWW-Authenticate` header, if any.
        www_authenticate: Option<String>,
    },
    /// The upgrade reply was not a valid WebSocket acceptance.
    #[error("bad upgrade reply: {0}")]
    Handshake(HandshakeError),
    /// The hub broke the WebSocket protocol before WELCOME.
    #[error("WebSocket error before WELCOME: {0}")]
    Ws(#[from] WsError),
    /// The first message was not a valid WELCOME.
    #[error("bad WELCOME: {0}")]
    Welcome(#[from] ControlError),
    /// Something other than WELCOME arrived first.
    #[error("expected WELCOME, got {0}")]
    Unexpected(&'static str),
    /// The hub closed the WebSocket instead of answering HELLO.
    #[error("hub closed the session with code {code}{}", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    Closed {
        /// The close code, 1005 if the hub sent none.
        code: u16,
        /// The hub's reason text.
        reason: String,
    },
    /// The whole connect took longer than [`CONNECT_TIMEOUT`].
    #[error("connect timed out after {} s", CONNECT_TIMEOUT.as_secs())]
    Timeout,
}

impl From<HandshakeError> for ConnectError {
    fn from(err: HandshakeError) -> ConnectError {
        match err {
            HandshakeError::Rejected {
                status,
                www_authenticate,
            } => ConnectError::Rejected {
                status,
                www_authenticate,
            },
            other => ConnectError::Handshake(other),
        }
    }
}

/// An established session, ready for the driver.
pub(crate) struct Connected {
    /// The connection, positioned after the WELCOME message.
    pub(crate) io: HubIo,
    /// The WebSocket decoder, mid-stream.
    pub(crate) decoder: ws::Decoder,
    /// Bytes read after WELCOME, not yet decoded.
    pub(crate) leftover: Vec<u8>,
    /// Masked WebSocket frames owed to the hub (pongs to pings that came before WELCOME).
    pub(crate) owed: Vec<u8>,
    /// The hub's WELCOME.
    pub(crate) welcome: Welcome,
}

/// What to connect to and how.
pub(crate) struct Target<'a> {
    /// The hub's tunnel URL.
    pub(crate) url: &'a WsUrl,
    /// The TLS configuration, used for `wss://` URLs.
    pub(crate) tls: Option<&'a Arc<rustls::ClientConfig>>,
    /// The HTTP proxy to tunnel through, if any.
    pub(crate) proxy: Option<&'a ProxyUrl>,
    /// The key for DPoP proofs: with it the token goes with the DPoP scheme and a proof.
    pub(crate) dpop: Option<&'a DpopKey>,
}

/// Opens a session to `target` with `token`, sends `hello` and returns once WELCOME arrived,
/// within [`CONNECT_TIMEOUT`].
pub(crate) async fn connect(
    target: &Target<'_>,
    token: &str,
    hello: &Hello,
) -> Result<Connected, ConnectError> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect_inner(target, token, hello))
        .await
        .unwrap_or(Err(ConnectError::Timeout))
}

async fn connect_inner(
    target: &Target<'_>,
    token: &str,
    hello: &Hello,
) -> Result<Connected, ConnectError> {
    let url = target.url;
    let tcp = match target.proxy {
        Some(proxy) => dial_via_proxy(proxy, url.host(), url.port()).await?,
        None => dial_hub(url.host(), url.port()).await?,
    };
    let mut hub = if url.is_tls() {
        let config = target
            .tls
            .ok_or_else(|| ConnectError::Tls(std::io::Error::other("no TLS configuration")))?;
        let name = ServerName::try_from(url.host().to_owned())
            .map_err(|_| ConnectError::ServerName(url.host().to_owned()))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
            .connect(name, tcp)
            .await
            .map_err(ConnectError::Tls)?;
        HubIo::Tls(Box::new(stream))
    } else {
        HubIo::Plain(tcp)
    };
    let io = hub.io();

    let mut key = [0u8; 16];
    getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
    let (authorization, proof) = match target.dpop {
        Some(key) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let proof = key.proof(&dpop::htu(url), token, now)?;
            (format!("DPoP {token}"), Some(proof))
        }
        None => (format!("Bearer {token}"), None),
    };
    let host = host_header(url);
    let mut out = Vec::with_capacity(512);
    let expected_accept = handshake::write_request(
        &mut out,
        &ClientRequest {
            host: &host,
            path: url.path_and_query(),
            key,
            authorization: Some(&authorization),
            dpop: proof.as_deref(),
            user_agent: crate::SOFTWARE,
        },
    );
    io.write_all(&out).await?;
    io.flush().await?;

    // Read the reply's header block; whatever follows it is already WebSocket frames.
    let limits = RequestLimits::default();
    let mut buf = Vec::with_capacity(4096);
    let consumed = loop {
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(ConnectError::Eof);
        }
        buf.extend_from_slice(&chunk[..n]);
        match handshake::parse_response(&buf, &expected_accept, &limits)? {
            Parsed::Complete { consumed, .. } => break consumed,
            Parsed::Partial => {}
        }
    };
    buf.drain(..consumed);

    let hello_text = serde_json::to_string(&ControlMessage::Hello(hello.clone()))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    out.clear();
    wire::push_masked(&mut out, Opcode::Text, hello_text.as_bytes());
    io.write_all(&out).await?;
    io.flush().await?;

    let mut decoder = ws::Decoder::new(ws::Role::Client, WS_LIMITS);
    let mut owed = Vec::new();
    let mut pos = 0;
    loop {
        while pos < buf.len() {
            let (n, event) = decoder.decode(&mut buf[pos..])?;
            pos += n;
            match event {
                None | Some(ws::Event::Pong(_)) => {}
                Some(ws::Event::Ping(payload)) => {
                    wire::push_masked(&mut owed, Opcode::Pong, payload.as_bytes());
                }
                Some(ws::Event::Text(text)) => {
                    let welcome = Welcome::parse(&text)?;
                    return Ok(Connected {
                        io: hub,
                        decoder,
                        leftover: buf.split_off(pos),
                        owed,
                        welcome,
                    });
                }
                Some(ws::Event::Binary { .. }) => {
                    return Err(ConnectError::Unexpected("a binary message"));
                }
                Some(ws::Event::Close(close)) => {
                    let (code, reason) = close
                        .map(|c| (c.code.0, c.reason))
                        .unwrap_or((1005, String::new()));
                    // Answer the close as RFC 6455 §5.5.1 asks; the connection is done anyway.
                    out.clear();
                    let echo = if CloseCode(code).is_allowed_on_wire() {
                        CloseCode(code)
                    } else {
                        CloseCode::NORMAL
                    };
                    wire::push_close(&mut out, echo, "");
                    let _ = io.write_all(&out).await;
                    return Err(ConnectError::Closed { code, reason });
                }
            }
        }
        buf.clear();
        pos = 0;
        buf.resize(16 * 1024, 0);
        let n = io.read(&mut buf).await?;
        buf.truncate(n);
        if n == 0 {
            return Err(ConnectError::Eof);
        }
    }
}

/// Resolves the hub and connects to the first address that answers.
async fn dial_hub(host: &str, port: u16) -> Result<TcpStream, ConnectError> {
    let addrs: Vec<_> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| ConnectError::Resolve {
            host: host.to_owned(),
            why: e.to_string(),
        })?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(source) => {
                last = Some(ConnectError::Tcp {
                    addr: addr.to_string(),
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| ConnectError::Resolve {
        host: host.to_owned(),
        why: "no addresses".to_owned(),
    }))
}

/// Connects to `proxy` and asks it for a tunnel to `host:port` with `CONNECT`; returns the
/// connection once the proxy said yes, positioned at the tunnel's first byte.
async fn dial_via_proxy(
    proxy: &ProxyUrl,
    host: &str,
    port: u16,
) -> Result<TcpStream, ConnectError> {
    let fail = |why: String| ConnectError::Proxy {
        proxy: proxy.to_string(),
        why,
    };
    let mut tcp = dial_hub(proxy.host(), proxy.port())
        .await
        .map_err(|e| fail(e.to_string()))?;
    let target = proxy::authority(host, port);
    let mut request = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: {}\r\n",
        crate::SOFTWARE
    );
    if let Some(authorization) = proxy.authorization() {
        request.push_str("Proxy-Authorization: ");
        request.push_str(authorization);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| fail(format!("sending CONNECT failed: {e}")))?;
    drop(request);

    // Read the reply's header block byte by byte: a proxy that said yes is silent until the
    // agent speaks, and nothing past the header block may be taken from the tunnel.
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= proxy::MAX_REPLY {
            return Err(fail(format!(
                "CONNECT reply header is longer than {} bytes",
                proxy::MAX_REPLY
            )));
        }
        let byte = tcp
            .read_u8()
            .await
            .map_err(|e| fail(format!("reading the CONNECT reply failed: {e}")))?;
        head.push(byte);
    }
    let line_end = head.iter().position(|&b| b == b'\r').unwrap_or(head.len());
    let status_line: String = head[..line_end]
        .iter()
        .take(200)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect();
    let status = parse_status(&status_line)
        .ok_or_else(|| fail(format!("bad CONNECT reply status line `{status_line}`")))?;
    if !(200..300).contains(&status) {
        return Err(ConnectError::ProxyRefused {
            proxy: proxy.to_string(),
            target,
            status,
            status_line,
        });
    }
    Ok(tcp)
}

/// The status code of an `HTTP/1.x NNN reason` line.
fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// The `Host` header for `url`: the host, bracketed if IPv6, with the port unless it is the
/// scheme's default.
pub(crate) fn host_header(url: &WsUrl) -> String {
    let host = if url.host().contains(':') {
        format!("[{}]", url.host())
    } else {
        url.host().to_owned()
    };
    let default_port = if url.is_tls() { 443 } else { 80 };
    if url.port() == default_port {
        host
    } else {
        format!("{host}:{}", url.port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> WsUrl {
        WsUrl::parse(s).unwrap()
    }

    #[test]
    fn host_header_leaves_out_default_ports() {
        assert_eq!(host_header(&url("wss://hub.example/t")), "hub.example");
        assert_eq!(host_header(&url("ws://hub.example/t")), "hub.example");
        assert_eq!(
            host_header(&url("wss://hub.example:8443/t")),
            "hub.example:8443"
        );
        assert_eq!(host_header(&url("ws://127.0.0.1:9000/t")), "127.0.0.1:9000");
        assert_eq!(host_header(&url("ws://[::1]:9000/t")), "[::1]:9000");
    }

    #[test]
    fn proxy_status_lines_parse() {
        assert_eq!(
            parse_status("HTTP/1.1 200 Connection established"),
            Some(200)
        );
        assert_eq!(
            parse_status("HTTP/1.0 407 Proxy Authentication Required"),
            Some(407)
        );
        assert_eq!(parse_status("HTTP/1.1 200"), Some(200));
        assert_eq!(parse_status("HTTP/2 200 OK"), None);
        assert_eq!(parse_status("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status("HTTP/1.1 20 short"), None);
    }

    /// A one-shot proxy on loopback: reads a request head, answers `reply`, hands back what
    /// it read.
    async fn fake_proxy(reply: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(conn.read_u8().await.unwrap());
            }
            conn.write_all(reply.as_bytes()).await.unwrap();
            conn.write_all(b"tunnel bytes").await.unwrap();
            String::from_utf8(head).unwrap()
        });
        (port, task)
    }

    #[tokio::test]
    async fn connect_through_a_proxy_with_credentials() {
        let (port, request) = fake_proxy("HTTP/1.1 200 Connection established\r\n\r\n").await;
        let env = |name: &str| {
            (name == "HTTP_PROXY").then(|| format!("http://user:pass@127.0.0.1:{port}"))
        };
        let proxies = crate::proxy::Proxies::from_env(env).unwrap();
        let hub = url("ws://hub.example:9000/t");
        let proxy = proxies.for_url(&hub).unwrap();
        let mut tcp = dial_via_proxy(proxy, hub.host(), hub.port()).await.unwrap();
        let request = request.await.unwrap();
        assert!(
            request.starts_with("CONNECT hub.example:9000 HTTP/1.1\r\nHost: hub.example:9000\r\n"),
            "{request}"
        );
        assert!(
            request.contains("\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n"),
            "{request}"
        );
        // The stream starts exactly at the tunnel's bytes.
        let mut rest = Vec::new();
        tcp.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"tunnel bytes");
    }

    #[tokio::test]
    async fn a_refusing_proxy_is_an_error_with_its_status_line() {
        let (port, request) = fake_proxy(
            "HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n",
        )
        .await;
        let env = |name: &str| {
            (name == "HTTPS_PROXY").then(|| format!("http://user:s3cret@127.0.0.1:{port}"))
        };
        let proxies = crate::proxy::Proxies::from_env(env).unwrap();
        let hub = url("wss://[fd00::1]:8443/t");
        let err = dial_via_proxy(proxies.for_url(&hub).unwrap(), hub.host(), hub.port())
            .await
            .unwrap_err();
        assert!(
            request
                .await
                .unwrap()
                .starts_with("CONNECT [fd00::1]:8443 HTTP/1.1\r\n")
        );
        assert!(
            matches!(err, ConnectError::ProxyRefused { status: 407, .. }),
            "{err}"
        );
        let text = err.to_string();
        assert_eq!(
            text,
            format!(
                "proxy http://127.0.0.1:{port} refused CONNECT [fd00::1]:8443: HTTP/1.0 407 Proxy Authentication Required"
            )
        );
        assert!(!text.contains("s3cret"));
    }

    #[test]
    fn rejection_keeps_status_and_challenge() {
        let err = ConnectError::from(HandshakeError::Rejected {
            status: 401,
            www_authenticate: Some("Bearer error=\"invalid_token\"".into()),
        });
        assert_eq!(
            err.to_string(),
            "upgrade refused with status 401 (WWW-Authenticate: Bearer error=\"invalid_token\")"
        );
    }
}
