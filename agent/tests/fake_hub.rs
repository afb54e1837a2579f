//! The agent binary against a hub stand-in built from `nowconnect-core`'s hub-side session:
//! the upgrade, HELLO/WELCOME, streams with early data, credit, refusals, GOAWAY, 401 and
//! SIGTERM, with real processes and sockets on loopback.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nowconnect_core::control::{ControlMessage, Hello, Welcome};
use nowconnect_core::frame::{FrameDecoder, RstCode, StreamId};
use nowconnect_core::handshake::{self, Parsed, RequestLimits};
use nowconnect_core::name::ConnectorName;
use nowconnect_core::session::{Event, Role, Session, SessionConfig};
use nowconnect_core::time::Millis;
use nowconnect_core::ws;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

/// What the hub stand-in saw, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    OpenOk(StreamId),
    Data(StreamId, Vec<u8>),
    Finished(StreamId, bool),
    Reset(StreamId, RstCode),
    Writable(StreamId),
    Pong(Vec<u8>),
    Close(u16),
}

/// One accepted agent session, hub side.
struct HubConn {
    stream: TcpStream,
    ws: ws::Decoder,
    frames: FrameDecoder,
    session: Session,
    now: Millis,
    seen: Vec<Seen>,
    eof: bool,
}

struct Upgrade {
    authorization: String,
    hello: Hello,
}

async fn accept_upgrade(listener: &TcpListener) -> (TcpStream, Vec<u8>, String) {
    let (mut stream, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("agent connects")
        .unwrap();
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "agent closed during the upgrade");
        buf.extend_from_slice(&chunk[..n]);
        if let Parsed::Complete { value, consumed } =
            handshake::parse_request(&buf, &RequestLimits::default()).unwrap()
        {
            assert_eq!(value.path, "/nowconnect/v1/tunnel");
            let auth = String::from_utf8(value.authorization.unwrap().to_vec()).unwrap();
            let mut reply = Vec::new();
            handshake::write_response(&mut reply, &value);
            let rest = buf[consumed..].to_vec();
            stream.write_all(&reply).await.unwrap();
            return (stream, rest, auth);
        }
    }
}

impl HubConn {
    async fn accept(listener: &TcpListener, window: u32) -> (HubConn, Upgrade) {
        HubConn::accept_with(listener, window, 16 * 1024).await
    }

    async fn accept_with(
        listener: &TcpListener,
        window: u32,
        max_frame: u32,
    ) -> (HubConn, Upgrade) {
        let (stream, rest, authorization) = accept_upgrade(listener).await;
        let config = SessionConfig {
            window,
            max_frame,
            idle_timeout_ms: 60_000,
            max_streams: 1024,
        };
        let mut conn = HubConn {
            stream,
            ws: ws::Decoder::new(ws::Role::Server, ws::Limits::default()),
            frames: FrameDecoder::new(config.max_frame),
            session: Session::new(Role::Hub, config),
            now: Millis::ZERO,
            seen: Vec::new(),
            eof: false,
        };
        let hello = conn.read_hello(rest).await;
        let welcome = Welcome {
            v: 1,
            session: "s-1".into(),
            replica_id: "fake".into(),
            shard: 0,
            shards: 1,
            accepted: hello.connectors.clone(),
            refused: Vec::new(),
            window,
            max_frame: config.max_frame,
            idle_timeout_ms: config.idle_timeout_ms,
            heartbeat_ms: 15_000,
            token_exp: None,
        };
        let text = serde_json::to_string(&ControlMessage::Welcome(welcome)).unwrap();
        conn.send_ws(ws::Opcode::Text, text.as_bytes()).await;
        (
            conn,
            Upgrade {
                authorization,
                hello,
            },
        )
    }

    async fn read_hello(&mut self, mut buf: Vec<u8>) -> Hello {
        loop {
            let mut pos = 0;
            while pos < buf.len() {
                let (n, event) = self.ws.decode(&mut buf[pos..]).unwrap();
                pos += n;
                if let Some(ws::Event::Text(text)) = event {
                    match ControlMessage::parse(&text).unwrap() {
                        ControlMessage::Hello(hello) => return hello,
                        other => panic!("expected HELLO, got {other:?}"),
                    }
                }
            }
            buf.resize(4096, 0);
            let n = self.stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "agent closed before HELLO");
            buf.truncate(n);
        }
    }

    async fn send_ws(&mut self, opcode: ws::Opcode, payload: &[u8]) {
        let mut wire = Vec::new();
        ws::encode_frame(&mut wire, true, opcode, payload, None);
        self.stream.write_all(&wire).await.unwrap();
    }

    /// Sends whatever the hub session queued.
    async fn flush(&mut self) {
        let frames = self.session.transmit().to_vec();
        self.session.clear_transmit();
        if !frames.is_empty() {
            self.send_ws(ws::Opcode::Binary, &frames).await;
        }
    }

    fn open(&mut self, connector: &str) -> StreamId {
        let name = ConnectorName::from_str(connector).unwrap();
        self.session
            .open(self.now, &name, "192.0.2.7:40000".parse().unwrap())
            .unwrap()
    }

    /// Reads once (within [`WAIT`]) and records what arrived.
    async fn read_some(&mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut buf))
            .await
            .expect("agent sent something in time")
            .unwrap_or(0);
        if n == 0 {
            self.eof = true;
            return;
        }
        let mut pos = 0;
        while pos < n {
            let (used, event) = self.ws.decode(&mut buf[pos..n]).unwrap();
            match event {
                Some(ws::Event::Binary { data, last }) => {
                    let mut rest: &[u8] = data;
                    while !rest.is_empty() {
                        let (k, frame) = self.frames.decode(rest).unwrap();
                        rest = &rest[k..];
                        let Some(frame) = frame else { continue };
                        match self.session.recv(self.now, frame).unwrap() {
                            Some(Event::OpenOk { id }) => self.seen.push(Seen::OpenOk(id)),
                            Some(Event::Data { id, data }) => {
                                self.seen.push(Seen::Data(id, data.to_vec()));
                                // Delivered to the "client" at once.
                                self.session.consumed(self.now, id, data.len());
                            }
                            Some(Event::Finished { id, closed }) => {
                                self.seen.push(Seen::Finished(id, closed))
                            }
                            Some(Event::Reset { id, code, .. }) => {
                                self.seen.push(Seen::Reset(id, code))
                            }
                            Some(Event::Writable { id, .. }) => self.seen.push(Seen::Writable(id)),
                            Some(Event::Opened { .. }) => panic!("agent opened a stream"),
                            None => {}
                        }
                    }
                    if last {
                        self.frames.end_of_message().unwrap();
                    }
                }
                Some(ws::Event::Pong(p)) => self.seen.push(Seen::Pong(p.as_bytes().to_vec())),
                Some(ws::Event::Close(c)) => {
                    self.seen.push(Seen::Close(c.map_or(1005, |c| c.code.0)))
                }
                Some(other) => panic!("unexpected {other:?}"),
                None => {}
            }
            pos += used;
        }
        self.flush().await;
    }

    /// Reads until `want` has been seen, returning and forgetting everything seen so far.
    async fn until(&mut self, want: impl Fn(&Seen) -> bool) -> Vec<Seen> {
        while !self.seen.iter().any(&want) {
            assert!(!self.eof, "agent closed; seen so far: {:?}", self.seen);
            self.read_some().await;
        }
        std::mem::take(&mut self.seen)
    }

    /// All DATA bytes of `id` in `seen`, concatenated.
    fn data_of(seen: &[Seen], id: StreamId) -> Vec<u8> {
        seen.iter()
            .filter_map(|s| match s {
                Seen::Data(i, d) if *i == id => Some(d.as_slice()),
                _ => None,
            })
            .flatten()
            .copied()
            .collect()
    }
}

/// An echo server: writes back what it reads, and half-closes after the client does.
async fn echo_target() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(name: &str, env: &[(&str, String)]) -> Agent {
        let dir = std::env::temp_dir();
        let log = dir.join(format!(
            "nowconnect-agent-test-{}-{name}.log",
            std::process::id()
        ));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nowconnect-agent"));
        cmd.env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Agent {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait()
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("agent did not exit; log:\n{}", self.log());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn token_file(name: &str, token: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "nowconnect-agent-test-{}-{name}.token",
        std::process::id()
    ));
    std::fs::write(&path, token).unwrap();
    path
}

async fn http_get(port: u16, path: &str) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await.unwrap();
    reply
}

#[tokio::test]
async fn streams_flow_through_a_session() {
    let hub = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hub_port = hub.local_addr().unwrap().port();
    let echo = echo_target().await;
    let closed = free_port();
    let health = free_port();
    let token = token_file("flow", "  tok.en.value \n");
    let mut agent = Agent::start(
        "flow",
        &[
            (
                "NC_HUB_URL",
                format!("ws://127.0.0.1:{hub_port}/nowconnect/v1/tunnel"),
            ),
            ("NC_AGENT_ID", "a1".into()),
            ("NC_TOKEN_FILE", token.display().to_string()),
            (
                "NC_CONNECTORS",
                format!("echo={echo},down=127.0.0.1:{closed}"),
            ),
            ("NC_HEALTH_ADDR", format!("127.0.0.1:{health}")),
            ("NC_LOG_LEVEL", "debug".into()),
        ],
    );

    let window = 64 * 1024;
    let (mut conn, upgrade) = HubConn::accept(&hub, window).await;
    assert_eq!(upgrade.authorization, "Bearer tok.en.value");
    assert_eq!(upgrade.hello.agent_id, "a1");
    let names: Vec<_> = upgrade
        .hello
        .connectors
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(names, ["down", "echo"]);
    assert_eq!((upgrade.hello.lane, upgrade.hello.lanes), (0, 1));
    assert!(upgrade.hello.software.starts_with("nowconnect-agent/"));

    // Early data and FIN right behind the OPEN, before the agent has dialled.
    let id = conn.open("echo");
    conn.session.send_data(conn.now, id, b"ping").unwrap();
    conn.session.finish(id).unwrap();
    conn.flush().await;
    let seen = conn.until(|s| *s == Seen::Finished(id, true)).await;
    assert_eq!(seen[0], Seen::OpenOk(id));
    assert_eq!(HubConn::data_of(&seen, id), b"ping");

    // Refusals.
    let unknown = conn.open("nope");
    let down = conn.open("down");
    conn.flush().await;
    let mut seen = conn
        .until(|s| matches!(s, Seen::Reset(i, _) if *i == down))
        .await;
    if !seen.contains(&Seen::Reset(unknown, RstCode::NoSuchConnector)) {
        seen.extend(
            conn.until(|s| matches!(s, Seen::Reset(i, _) if *i == unknown))
                .await,
        );
    }
    assert!(
        seen.contains(&Seen::Reset(unknown, RstCode::NoSuchConnector)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&Seen::Reset(down, RstCode::Refused)),
        "{seen:?}"
    );

    // Several windows' worth each way: credit must come back in both directions.
    let big: Vec<u8> = (0..5 * window as usize).map(|i| (i % 251) as u8).collect();
    let id = conn.open("echo");
    conn.flush().await;
    let mut sent = 0;
    let mut echoed = Vec::new();
    let mut fin_sent = false;
    loop {
        while sent < big.len() {
            let credit = conn.session.send_credit(id) as usize;
            if credit == 0 {
                break;
            }
            let n = credit.min(big.len() - sent).min(16 * 1024);
            conn.session
                .send_data(conn.now, id, &big[sent..sent + n])
                .unwrap();
            sent += n;
        }
        if sent == big.len() && !fin_sent {
            conn.session.finish(id).unwrap();
            fin_sent = true;
        }
        conn.flush().await;
        let seen = std::mem::take(&mut conn.seen);
        echoed.extend(HubConn::data_of(&seen, id));
        if seen.contains(&Seen::Finished(id, true)) {
            break;
        }
        assert!(
            !seen.iter().any(|s| matches!(s, Seen::Reset(..))),
            "{seen:?}"
        );
        conn.read_some().await;
    }
    echoed.extend(HubConn::data_of(&std::mem::take(&mut conn.seen), id));
    assert_eq!(echoed.len(), big.len());
    assert!(echoed == big);

    // Pings are answered.
    conn.send_ws(ws::Opcode::Ping, b"hb").await;
    conn.until(|s| *s == Seen::Pong(b"hb".to_vec())).await;

    // Ready once the session is up.
    assert!(
        http_get(health, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        http_get(health, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );

    // GOAWAY: a replacement arrives at once; the old session, empty, closes with 1000.
    conn.send_ws(
        ws::Opcode::Text,
        br#"{"type":"goaway","reason":"draining"}"#,
    )
    .await;
    let (mut replacement, _) = HubConn::accept(&hub, window).await;
    conn.until(|s| *s == Seen::Close(1000)).await;

    // The replacement carries streams.
    let id = replacement.open("echo");
    replacement
        .session
        .send_data(replacement.now, id, b"again")
        .unwrap();
    replacement.flush().await;
    let seen = replacement.until(|s| matches!(s, Seen::Data(..))).await;
    assert_eq!(HubConn::data_of(&seen, id), b"again");

    // SIGTERM with a stream still open: the agent waits for it (up to 10 s), so end it.
    let term = Command::new("kill")
        .args(["-TERM", &agent.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "agent left before its stream ended"
    );
    // New streams are refused while draining.
    let late = replacement.open("echo");
    replacement.session.finish(id).unwrap();
    replacement.flush().await;
    let mut seen = replacement
        .until(|s| matches!(s, Seen::Reset(i, _) if *i == late))
        .await;
    assert!(
        seen.contains(&Seen::Reset(late, RstCode::Overload)),
        "{seen:?}"
    );
    seen.extend(replacement.until(|s| *s == Seen::Close(1001)).await);
    assert!(seen.contains(&Seen::Finished(id, true)), "{seen:?}");
    let status = agent.wait();
    assert!(status.success(), "exit status {status}");

    let log = agent.log();
    assert!(log.contains("session established"), "{log}");
    assert!(log.contains("s-1"), "{log}");
    assert!(
        !log.contains("tok.en.value"),
        "the token leaked into the log:\n{log}"
    );
    let _ = std::fs::remove_file(token);
}

/// Bulk streams from the hub, each DATA frame its own WebSocket message as the hub sends them,
/// with WINDOW frames and pings between: every byte comes back in order, and the session's
/// last log line counts what went to the target by splice (some with it on, none with it off).
async fn bulk_streams(splice: bool) {
    let hub = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hub_port = hub.local_addr().unwrap().port();
    let echo = echo_target().await;
    let name = if splice {
        "bulk-splice"
    } else {
        "bulk-buffers"
    };
    let token = token_file(name, "tok");
    let mut agent = Agent::start(
        name,
        &[
            (
                "NC_HUB_URL",
                format!("ws://127.0.0.1:{hub_port}/nowconnect/v1/tunnel"),
            ),
            ("NC_AGENT_ID", "a1".into()),
            ("NC_TOKEN_FILE", token.display().to_string()),
            ("NC_CONNECTORS", format!("echo={echo}")),
            ("NC_SPLICE", splice.to_string()),
        ],
    );
    let window = 256 * 1024;
    let max_frame = 64 * 1024;
    let (mut conn, _) = HubConn::accept_with(&hub, window, max_frame).await;

    let per_stream = 3 << 20;
    let ids: Vec<StreamId> = (0..3).map(|_| conn.open("echo")).collect();
    conn.flush().await;
    let payload = |k: usize| -> Vec<u8> {
        (0..per_stream)
            .map(|i| ((i * 7 + k * 13) % 251) as u8)
            .collect()
    };
    let sent_all: Vec<Vec<u8>> = (0..ids.len()).map(payload).collect();
    let mut sent = vec![0usize; ids.len()];
    let mut echoed = vec![Vec::new(); ids.len()];
    let mut finished = vec![false; ids.len()];
    let mut pings = 0u32;
    while !finished.iter().all(|&f| f) {
        for (k, &id) in ids.iter().enumerate() {
            while sent[k] < per_stream {
                let credit = conn.session.send_credit(id) as usize;
                if credit == 0 {
                    break;
                }
                // Uneven sizes: whole frames, and ones too small to splice.
                let size = if sent[k].is_multiple_of(3) {
                    5_000
                } else {
                    max_frame as usize
                };
                let n = credit.min(size).min(per_stream - sent[k]);
                conn.session
                    .send_data(conn.now, id, &sent_all[k][sent[k]..sent[k] + n])
                    .unwrap();
                sent[k] += n;
                // One message per frame (with any WINDOW frames queued before it).
                conn.flush().await;
                if sent[k] == per_stream {
                    conn.session.finish(id).unwrap();
                    conn.flush().await;
                }
            }
        }
        pings += 1;
        if pings.is_multiple_of(16) {
            conn.send_ws(ws::Opcode::Ping, b"hb").await;
        }
        conn.read_some().await;
        let seen = std::mem::take(&mut conn.seen);
        assert!(
            !seen.iter().any(|s| matches!(s, Seen::Reset(..))),
            "{seen:?}"
        );
        for (k, &id) in ids.iter().enumerate() {
            echoed[k].extend(HubConn::data_of(&seen, id));
            if seen.contains(&Seen::Finished(id, true)) {
                finished[k] = true;
            }
        }
    }
    for k in 0..ids.len() {
        assert_eq!(echoed[k].len(), per_stream, "stream {k}");
        assert!(
            echoed[k] == sent_all[k],
            "stream {k}: bytes lost or reordered"
        );
    }
    assert!(agent.terminate().success());
    let log = agent.log();
    let spliced: u64 = log
        .split("spliced_bytes=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no spliced_bytes in the log:\n{log}"));
    let total = (per_stream * ids.len()) as u64;
    if splice {
        assert!(
            spliced >= total / 2,
            "only {spliced} of {total} bytes went by splice:\n{log}"
        );
        assert!(spliced <= total, "{spliced} spliced of {total} sent");
    } else {
        assert_eq!(spliced, 0, "splice is off:\n{log}");
    }
    let _ = std::fs::remove_file(token);
}

#[tokio::test]
async fn bulk_streams_go_by_splice_whole_and_in_order() {
    bulk_streams(true).await;
}

#[tokio::test]
async fn bulk_streams_stay_on_buffers_with_splice_off() {
    bulk_streams(false).await;
}

#[tokio::test]
async fn a_refused_upgrade_is_logged_and_retried() {
    let hub = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hub_port = hub.local_addr().unwrap().port();
    let token = token_file("refused", "expired");
    let mut agent = Agent::start(
        "refused",
        &[
            (
                "NC_HUB_URL",
                format!("ws://127.0.0.1:{hub_port}/nowconnect/v1/tunnel"),
            ),
            ("NC_AGENT_ID", "a1".into()),
            ("NC_TOKEN_FILE", token.display().to_string()),
            ("NC_CONNECTORS", "echo=127.0.0.1:9".into()),
            ("NC_LOG_FORMAT", "json".into()),
        ],
    );
    for _ in 0..2 {
        let (mut stream, _, auth) = accept_upgrade_raw(&hub).await;
        assert_eq!(auth, "Bearer expired");
        let mut reply = Vec::new();
        handshake::write_error_response(
            &mut reply,
            401,
            &[("WWW-Authenticate", "Bearer error=\"invalid_token\"")],
        );
        stream.write_all(&reply).await.unwrap();
    }
    assert!(agent.terminate().success());
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("hub refused the session"))
        .unwrap_or_else(|| panic!("{log}"));
    let json: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(json["fields"]["status"], 401, "{line}");
    assert_eq!(
        json["fields"]["www_authenticate"], "Bearer error=\"invalid_token\"",
        "{line}"
    );
    let _ = std::fs::remove_file(token);
}

/// Accepts an upgrade request without answering it.
async fn accept_upgrade_raw(listener: &TcpListener) -> (TcpStream, Vec<u8>, String) {
    let (mut stream, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("agent connects")
        .unwrap();
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
        if let Parsed::Complete { value, .. } =
            handshake::parse_request(&buf, &RequestLimits::default()).unwrap()
        {
            let auth = String::from_utf8(value.authorization.unwrap().to_vec()).unwrap();
            return (stream, Vec::new(), auth);
        }
    }
}

#[test]
fn bad_configuration_exits_2_with_one_line() {
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[("NC_AGENT_ID", "a1")], "hub_url"),
        (
            &[
                ("NC_HUB_URL", "ws://127.0.0.1:1/t"),
                ("NC_AGENT_ID", "a1"),
                ("NC_TOKEN_FILE", "/tmp/t"),
                ("NC_CONNECTORS", "echo=127.0.0.1:7"),
                ("NC_TRUST_ENV", "true"),
                ("HTTPS_PROXY", "socks5://user:secret@proxy:1080"),
            ],
            "HTTPS_PROXY",
        ),
        (
            &[
                ("NC_HUB_URL", "ws://127.0.0.1:1/t"),
                ("NC_AGENT_ID", "a1"),
                ("NC_TOKEN_FILE", "/tmp/t"),
                ("NC_CONNECTORS", "echo"),
            ],
            "NC_CONNECTORS",
        ),
    ];
    for (env, named) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_nowconnect-agent"))
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(named), "{stderr}");
        assert!(!stderr.contains("secret"), "credentials leaked: {stderr}");
    }
}
