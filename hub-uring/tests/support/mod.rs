//! Test support: a development identity provider (keys, JWKS, tokens), a hub process started
//! from a YAML configuration, loopback targets, and a raw agent driven frame by frame.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nowconnect_core::control::{Hello, Welcome};
use nowconnect_core::frame::{Frame, FrameDecoder, RstCode, RstReason, StreamId};
use nowconnect_core::handshake::{self, ClientRequest, Parsed, RequestLimits};
use nowconnect_core::name::ConnectorName;
use nowconnect_core::ws;

pub const AUDIENCE: &str = "nowconnect";
pub const ISSUER: &str = "https://idp.test/";

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "nc-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// One EC P-256 signing key with its kid.
pub struct SigningKey {
    pub kid: String,
    encoding: EncodingKey,
    pub jwk: serde_json::Value,
}

impl SigningKey {
    pub fn generate(kid: &str) -> SigningKey {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let der = pair.to_pkcs8v1().unwrap();
        let public = pair.public_key().as_ref().to_vec(); // 0x04 || x || y
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&public[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&public[33..65]),
        });
        SigningKey {
            kid: kid.to_string(),
            encoding: EncodingKey::from_ec_der(der.as_ref()),
            jwk,
        }
    }

    /// Signs `claims` with this key.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    /// A valid access token for `agent_id`, expiring in an hour.
    pub fn token(&self, agent_id: &str) -> String {
        self.sign(&claims(agent_id))
    }
}

/// Valid claims for `agent_id`; tests change them to make bad tokens.
pub fn claims(agent_id: &str) -> serde_json::Value {
    let now = now_unix();
    serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": agent_id, "agent_id": agent_id,
        "iat": now, "nbf": now - 5, "exp": now + 3600, "jti": format!("jti-{now}-{agent_id}"),
    })
}

/// Writes a JWKS holding `keys` to `path`.
pub fn write_jwks(path: &Path, keys: &[&SigningKey]) {
    let jwks =
        serde_json::json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
    std::fs::write(path, jwks.to_string()).unwrap();
}

/// The addresses a started hub reported.
#[derive(Debug, Clone)]
pub struct HubAddrs {
    pub tunnel: SocketAddr,
    pub listeners: Vec<SocketAddr>,
    pub admin: SocketAddr,
}

/// A hub process; killed on drop.
pub struct Hub {
    pub child: Child,
    pub addrs: HubAddrs,
    pub logs: mpsc::Receiver<serde_json::Value>,
    pub dir: TempDir,
}

pub fn hub_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nowconnect-hub"))
}

/// The driver the suite runs under: `NOWCONNECT_TEST_DRIVER` (io_uring or epoll), default auto.
pub fn test_driver() -> String {
    std::env::var("NOWCONNECT_TEST_DRIVER").unwrap_or_else(|_| "auto".to_string())
}

/// A minimal hub configuration: plain ws:// tunnel and admin on ephemeral loopback ports,
/// the JWKS from `jwks`, one listener per connector, short timers for tests. `extra` is
/// appended (YAML).
pub fn hub_yaml(jwks: &Path, connectors: &[&str], limits: &str) -> String {
    let listeners: String = connectors
        .iter()
        .map(|c| format!("  - {{ connector: {c}, listen: \"127.0.0.1:0\" }}\n"))
        .collect();
    format!(
        "replica_id: hub-test\n\
         hub: {{ shards: 1, driver: {driver} }}\n\
         tunnel: {{ listen: \"127.0.0.1:0\" }}\n\
         admin: {{ listen: \"127.0.0.1:0\" }}\n\
         listeners:\n{listeners}\
         security: {{ jwks_url: \"file://{jwks}\", audience: {AUDIENCE}, issuer: \"{ISSUER}\" }}\n\
         limits: {{ {limits} }}\n\
         logging: {{ format: json, level: debug }}\n",
        driver = test_driver(),
        jwks = jwks.display(),
    )
}

fn parse_addr_list(v: &serde_json::Value) -> Vec<SocketAddr> {
    // Logged with Debug formatting: "[127.0.0.1:1, 127.0.0.1:2]".
    v.as_str()
        .unwrap_or("")
        .trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

impl Hub {
    /// Starts a hub with `yaml` (written into `dir`) and waits for it to report its addresses.
    // The child is waited for in `Drop`.
    #[allow(clippy::zombie_processes)]
    pub fn start(dir: TempDir, yaml: &str) -> Hub {
        let config = dir.path("hub.yaml");
        std::fs::write(&config, yaml).unwrap();
        let mut child = Command::new(hub_binary())
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("NC_TEST_VERBOSE").is_some() {
                    eprintln!("hub: {line}");
                }
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("hub did not start");
            if line["message"] == "hub started" {
                let addrs = HubAddrs {
                    tunnel: line["tunnel"].as_str().unwrap().parse().unwrap(),
                    listeners: parse_addr_list(&line["listeners"]),
                    admin: line["admin"].as_str().unwrap().parse().unwrap(),
                };
                return Hub {
                    child,
                    addrs,
                    logs: rx,
                    dir,
                };
            }
        }
    }

    /// Waits for a log line whose message is `message`.
    pub fn wait_log(&self, message: &str, within: Duration) -> serde_json::Value {
        let mut lines = self.logs_until(message, within);
        lines.pop().expect("the line waited for closes the list")
    }

    /// The log lines from now up to and including the first whose message is `message`.
    pub fn logs_until(&self, message: &str, within: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + within;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .logs
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line {message:?}"));
            let found = line["message"] == message;
            lines.push(line);
            if found {
                return lines;
            }
        }
    }

    /// GETs an admin path; returns status and body.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.addrs.admin, path)
    }

    /// The value of a metric sample line such as `name{labels}`, if present.
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        let (_, body) = self.admin_get("/metrics");
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP/1.1 GET with `Connection: close`.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// An echo server on loopback: every connection gets its bytes back; EOF is echoed as EOF.
pub fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut buf = vec![0; 64 * 1024];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = conn.shutdown(std::net::Shutdown::Write);
                            break;
                        }
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// An agent driven frame by frame from the test: it speaks the protocol only as far as the test
/// tells it to, so tests can make it misbehave.
pub struct RawAgent {
    pub stream: TcpStream,
    decoder: ws::Decoder,
    frames: FrameDecoder,
    pub welcome: Welcome,
    pending: Vec<OwnedFrame>,
    mask_seed: u32,
}

/// A decoded frame with its payload owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedFrame {
    Open(StreamId, String, SocketAddr),
    OpenOk(StreamId),
    Data(StreamId, Vec<u8>),
    Fin(StreamId),
    Rst(StreamId, RstCode, String),
    Window(StreamId, u32),
}

fn own(frame: Frame<'_>) -> OwnedFrame {
    match frame {
        Frame::Open {
            stream,
            connector,
            peer,
        } => OwnedFrame::Open(stream, connector.to_string(), peer),
        Frame::OpenOk { stream } => OwnedFrame::OpenOk(stream),
        Frame::Data { stream, payload } => OwnedFrame::Data(stream, payload.to_vec()),
        Frame::Fin { stream } => OwnedFrame::Fin(stream),
        Frame::Rst {
            stream,
            code,
            reason,
        } => OwnedFrame::Rst(stream, code, reason_text(reason)),
        Frame::Window { stream, increment } => OwnedFrame::Window(stream, increment),
    }
}

fn reason_text(r: RstReason) -> String {
    r.as_str().to_string()
}

/// What the hub answered to an upgrade.
#[derive(Debug)]
pub enum Upgrade {
    /// 101: the WebSocket is open.
    Open(TcpStream, Vec<u8>),
    /// Refused with this status and WWW-Authenticate value.
    Refused(u16, Option<String>),
}

/// Sends an upgrade request with `authorization` and reads the reply.
pub fn upgrade(tunnel: SocketAddr, authorization: Option<&str>) -> Upgrade {
    let mut stream = TcpStream::connect(tunnel).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = Vec::new();
    let accept = handshake::write_request(
        &mut req,
        &ClientRequest {
            host: "hub.test",
            path: "/nowconnect/v1/tunnel",
            key: *b"0123456789abcdef",
            authorization,
            dpop: None,
            user_agent: "raw-agent/0",
        },
    );
    stream.write_all(&req).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            return Upgrade::Refused(0, None);
        }
        buf.extend_from_slice(&chunk[..n]);
        match handshake::parse_response(&buf, &accept, &RequestLimits::default()) {
            Ok(Parsed::Partial) => continue,
            Ok(Parsed::Complete { consumed, .. }) => {
                let rest = buf.split_off(consumed);
                return Upgrade::Open(stream, rest);
            }
            Err(handshake::HandshakeError::Rejected {
                status,
                www_authenticate,
            }) => {
                return Upgrade::Refused(status, www_authenticate);
            }
            Err(e) => panic!("bad upgrade reply: {e}"),
        }
    }
}

impl RawAgent {
    /// Upgrades with `token`, sends HELLO for `connectors` and reads WELCOME.
    pub fn connect(
        tunnel: SocketAddr,
        token: &str,
        agent_id: &str,
        connectors: &[&str],
    ) -> RawAgent {
        let auth = format!("Bearer {token}");
        let Upgrade::Open(stream, rest) = upgrade(tunnel, Some(&auth)) else {
            panic!("upgrade refused");
        };
        let mut agent = RawAgent {
            stream,
            decoder: ws::Decoder::new(ws::Role::Client, ws::Limits::default()),
            frames: FrameDecoder::new(1 << 20),
            welcome: Welcome {
                v: 1,
                session: String::new(),
                replica_id: String::new(),
                shard: 0,
                shards: 1,
                accepted: vec![],
                refused: vec![],
                window: 0,
                max_frame: 0,
                idle_timeout_ms: 0,
                heartbeat_ms: 0,
                token_exp: None,
            },
            pending: Vec::new(),
            mask_seed: 7,
        };
        let hello = Hello {
            v: 1,
            agent_id: agent_id.to_string(),
            connectors: connectors
                .iter()
                .map(|c| ConnectorName::from_str(c).unwrap())
                .collect(),
            lane: 0,
            lanes: 1,
            software: "raw-agent/0".into(),
        };
        agent.send_message(ws::Opcode::Text, hello.to_json().as_bytes());
        let text = agent.read_text(rest).expect("WELCOME");
        agent.welcome = Welcome::parse(&text).unwrap();
        agent
    }

    fn next_mask(&mut self) -> [u8; 4] {
        self.mask_seed = self
            .mask_seed
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        self.mask_seed.to_be_bytes()
    }

    /// Sends one masked WebSocket message.
    pub fn send_message(&mut self, opcode: ws::Opcode, payload: &[u8]) {
        let mut msg = Vec::new();
        let mask = self.next_mask();
        ws::encode_frame(&mut msg, true, opcode, payload, Some(mask));
        self.stream.write_all(&msg).unwrap();
    }

    /// Sends tunnel frames (already encoded) as one binary message.
    pub fn send_frames(&mut self, frames: &[u8]) {
        self.send_message(ws::Opcode::Binary, frames);
    }

    fn read_text(&mut self, mut input: Vec<u8>) -> Option<String> {
        loop {
            let mut pos = 0;
            while pos < input.len() {
                let (n, ev) = self.decoder.decode(&mut input[pos..]).ok()?;
                pos += n;
                if let Some(ws::Event::Text(t)) = ev {
                    // Keep any frames that came right behind it.
                    let rest = input[pos..].to_vec();
                    self.absorb(rest);
                    return Some(t);
                }
            }
            input = self.read_some()?;
        }
    }

    fn read_some(&mut self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 64 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
        }
    }

    /// Decodes bytes into pending frames; returns false when the session was closed.
    fn absorb(&mut self, mut input: Vec<u8>) -> bool {
        let mut pos = 0;
        while pos < input.len() {
            let Ok((n, ev)) = self.decoder.decode(&mut input[pos..]) else {
                return false;
            };
            pos += n;
            match ev {
                Some(ws::Event::Binary { data, .. }) => {
                    let mut rest: &[u8] = data;
                    while !rest.is_empty() {
                        let (used, f) = self.frames.decode(rest).unwrap();
                        rest = &rest[used..];
                        if let Some(f) = f {
                            self.pending.push(own(f));
                        }
                    }
                }
                Some(ws::Event::Ping(p)) => {
                    let payload = p.as_bytes().to_vec();
                    self.send_message(ws::Opcode::Pong, &payload);
                }
                Some(ws::Event::Close(_)) => return false,
                _ => {}
            }
        }
        true
    }

    /// The next frame from the hub, waiting up to `within`; None if the session closed or
    /// nothing came.
    pub fn next_frame(&mut self, within: Duration) -> Option<OwnedFrame> {
        let deadline = Instant::now() + within;
        loop {
            if !self.pending.is_empty() {
                return Some(self.pending.remove(0));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let input = self.read_some()?;
            if !self.absorb(input) && self.pending.is_empty() {
                return None;
            }
        }
    }

    /// Waits for a frame matching `pred`, skipping WINDOW frames and others it is told to skip.
    pub fn expect(&mut self, within: Duration, pred: impl Fn(&OwnedFrame) -> bool) -> OwnedFrame {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = self
                .next_frame(left)
                .unwrap_or_else(|| panic!("no matching frame within {within:?}"));
            if pred(&f) {
                return f;
            }
        }
    }

    /// Whether the hub closed the session (reads until EOF or a close frame within `within`).
    pub fn wait_closed(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.read_some() {
                None => return true,
                Some(input) => {
                    if !self.absorb(input) {
                        return true;
                    }
                }
            }
        }
    }
}

/// Reads from `s` until EOF or error; returns the bytes and whether it ended with a reset.
pub fn read_to_end_or_reset(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(within)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, false),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(e) => panic!("client read failed: {e}"),
        }
    }
}
