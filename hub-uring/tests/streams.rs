//! A real hub process and an agent driven frame by frame: opening, data both ways, half-close,
//! resets, idle sweep, heartbeat, window overrun, admission and drain.
//!
//! The driver under test is `NOWCONNECT_TEST_DRIVER` (`io_uring`, `epoll`, or `auto`);
//! `scripts/test.sh` runs the suite once with each.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use nowconnect_core::frame::{self, RstCode, StreamId};
use support::*;

const WAIT: Duration = Duration::from_secs(10);

struct Rig {
    hub: Hub,
    key: SigningKey,
}

fn rig(connectors: &[&str], limits: &str) -> Rig {
    let dir = TempDir::new("hub");
    let key = SigningKey::generate("k1");
    let jwks = dir.path("jwks.json");
    write_jwks(&jwks, &[&key]);
    let yaml = hub_yaml(&jwks, connectors, limits);
    let hub = Hub::start(dir, &yaml);
    Rig { hub, key }
}

impl Rig {
    fn agent(&self, connectors: &[&str]) -> RawAgent {
        RawAgent::connect(
            self.hub.addrs.tunnel,
            &self.key.token("agent-1"),
            "agent-1",
            connectors,
        )
    }

    /// A client on the first listener, its stream opened on `agent` and answered OPEN_OK.
    fn open(&self, agent: &mut RawAgent) -> (TcpStream, StreamId) {
        let client = self.client(0);
        let id = expect_open(agent);
        agent.send_frames(&frames(|v| frame::encode_open_ok(v, id)));
        (client, id)
    }

    fn client(&self, listener: usize) -> TcpStream {
        let s = TcpStream::connect(self.hub.addrs.listeners[listener]).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    }
}

fn open_of(f: &OwnedFrame) -> Option<StreamId> {
    match f {
        OwnedFrame::Open(id, ..) => Some(*id),
        _ => None,
    }
}

fn expect_open(agent: &mut RawAgent) -> StreamId {
    let f = agent.expect(WAIT, |f| open_of(f).is_some());
    open_of(&f).unwrap()
}

fn frames(build: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = Vec::new();
    build(&mut v);
    v
}

/// Collects DATA for `id` until `len` bytes or FIN; returns the bytes.
fn collect_data(agent: &mut RawAgent, id: StreamId, len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < len {
        match agent.expect(
            WAIT,
            |f| matches!(f, OwnedFrame::Data(s, _) | OwnedFrame::Fin(s) if *s == id),
        ) {
            OwnedFrame::Data(_, d) => got.extend_from_slice(&d),
            _ => break,
        }
    }
    got
}

#[test]
fn welcome_accepts_configured_connectors_and_refuses_others() {
    let rig = rig(&["ldap"], "");
    let agent = rig.agent(&["ldap", "pg"]);
    assert_eq!(agent.welcome.accepted.len(), 1);
    assert_eq!(agent.welcome.accepted[0].as_str(), "ldap");
    assert_eq!(agent.welcome.refused.len(), 1);
    assert_eq!(agent.welcome.refused[0].connector.as_str(), "pg");
    assert_eq!(agent.welcome.replica_id, "hub-test");
    assert_eq!(agent.welcome.window, 262_144);
}

#[test]
fn client_first_data_arrives_before_open_ok_and_echo_flows_back() {
    let rig = rig(&["ldap"], "");
    let mut agent = rig.agent(&["ldap"]);
    let mut client = rig.client(0);
    client.write_all(b"bind request").unwrap();
    let f = agent.expect(WAIT, |f| open_of(f).is_some());
    let OwnedFrame::Open(id, connector, peer) = f else {
        unreachable!()
    };
    assert_eq!(connector, "ldap");
    assert_eq!(peer, client.local_addr().unwrap());
    // The client's bytes follow the OPEN without waiting for OPEN_OK.
    assert_eq!(collect_data(&mut agent, id, 12), b"bind request");
    agent.send_frames(&frames(|v| {
        frame::encode_open_ok(v, id);
        frame::encode_data(v, id, b"bind response");
    }));
    let mut buf = [0u8; 13];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"bind response");
}

#[test]
fn half_close_each_way() {
    let rig = rig(&["svc"], "");
    let mut agent = rig.agent(&["svc"]);
    let (mut client, id) = rig.open(&mut agent);
    // Client → agent half-close: the agent sees FIN, and can still answer.
    client.write_all(b"request").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(collect_data(&mut agent, id, 7), b"request");
    agent.expect(WAIT, |f| *f == OwnedFrame::Fin(id));
    agent.send_frames(&frames(|v| {
        frame::encode_data(v, id, b"response");
        frame::encode_fin(v, id);
    }));
    let (bytes, reset) = read_to_end_or_reset(&mut client, WAIT);
    assert_eq!(bytes, b"response");
    assert!(!reset);

    // Agent → client half-close first: the client reads EOF and can still send.
    let mut client = rig.client(0);
    let id = expect_open(&mut agent);
    agent.send_frames(&frames(|v| {
        frame::encode_open_ok(v, id);
        frame::encode_data(v, id, b"banner");
        frame::encode_fin(v, id);
    }));
    let (bytes, reset) = read_to_end_or_reset(&mut client, WAIT);
    assert_eq!((bytes.as_slice(), reset), (&b"banner"[..], false));
    client.write_all(b"late words").unwrap();
    assert_eq!(collect_data(&mut agent, id, 10), b"late words");
    client.shutdown(Shutdown::Write).unwrap();
    agent.expect(WAIT, |f| *f == OwnedFrame::Fin(id));
}

#[test]
fn target_refused_resets_the_client() {
    let rig = rig(&["svc"], "");
    let mut agent = rig.agent(&["svc"]);
    let mut client = rig.client(0);
    let id = expect_open(&mut agent);
    agent.send_frames(&frames(|v| {
        frame::encode_rst(v, id, RstCode::Refused, "connection refused")
    }));
    let (_, reset) = read_to_end_or_reset(&mut client, WAIT);
    assert!(reset, "the client must see a TCP reset");
}

/// Resets `client` (TCP RST) and waits for the hub's RST 6 for its stream `id`.
fn reset_expecting_rst_6(agent: &mut RawAgent, client: TcpStream, id: StreamId) {
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    let f = agent.expect(WAIT, |f| matches!(f, OwnedFrame::Rst(s, ..) if *s == id));
    assert!(
        matches!(f, OwnedFrame::Rst(_, RstCode::PeerReset, _)),
        "{f:?}"
    );
}

#[test]
fn client_reset_becomes_rst_6() {
    let rig = rig(&["svc"], "");
    let mut agent = rig.agent(&["svc"]);
    let (client, id) = rig.open(&mut agent);
    reset_expecting_rst_6(&mut agent, client, id);
}

#[test]
fn agent_disconnect_resets_its_clients() {
    let rig = rig(&["svc"], "heartbeat_ms: 200");
    let mut agent = rig.agent(&["svc"]);
    let (mut client, _) = rig.open(&mut agent);
    drop(agent);
    let started = Instant::now();
    let (_, reset) = read_to_end_or_reset(&mut client, WAIT);
    assert!(reset);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_silent_agent_is_dead_after_three_heartbeats() {
    let rig = rig(&["svc"], "heartbeat_ms: 200, sweep_interval_ms: 50");
    let mut agent = rig.agent(&["svc"]);
    let (mut client, _) = rig.open(&mut agent);
    // From now on the agent reads nothing and answers nothing.
    let started = Instant::now();
    let (_, reset) = read_to_end_or_reset(&mut client, WAIT);
    assert!(reset, "clients of a dead session are reset");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "declared dead too early: {took:?}"
    );
    drop(agent);
}

#[test]
fn idle_streams_are_reset_on_both_sides() {
    let rig = rig(&["svc"], "idle_timeout_ms: 400, sweep_interval_ms: 50");
    let mut agent = rig.agent(&["svc"]);
    let (mut client, id) = rig.open(&mut agent);
    let f = agent.expect(WAIT, |f| matches!(f, OwnedFrame::Rst(s, ..) if *s == id));
    assert!(matches!(f, OwnedFrame::Rst(_, RstCode::Idle, _)), "{f:?}");
    let (_, reset) = read_to_end_or_reset(&mut client, WAIT);
    assert!(reset);
    assert_eq!(
        rig.hub
            .metric("nowconnect_stream_closes_total{connector=\"svc\",reason=\"idle\"}"),
        Some(1.0)
    );
}

#[test]
fn window_overrun_resets_the_stream_and_the_session_survives() {
    let rig = rig(&["svc"], "stream_window_bytes: 4096, max_frame_bytes: 4096");
    let mut agent = rig.agent(&["svc"]);
    let mut client = rig.client(0);
    let id = expect_open(&mut agent);
    // 4097 bytes against a 4096-byte window.
    agent.send_frames(&frames(|v| {
        frame::encode_open_ok(v, id);
        frame::encode_data(v, id, &[1; 4096]);
        frame::encode_data(v, id, &[2; 1]);
    }));
    let f = agent.expect(WAIT, |f| matches!(f, OwnedFrame::Rst(s, ..) if *s == id));
    assert!(
        matches!(f, OwnedFrame::Rst(_, RstCode::ProtocolViolation, _)),
        "{f:?}"
    );
    let (_, reset) = read_to_end_or_reset(&mut client, WAIT);
    assert!(reset);
    // The session still carries new streams.
    let mut client = rig.client(0);
    let id = expect_open(&mut agent);
    agent.send_frames(&frames(|v| {
        frame::encode_open_ok(v, id);
        frame::encode_data(v, id, b"still here");
    }));
    let mut buf = [0u8; 10];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");
}

#[test]
fn no_agent_means_an_immediate_reset() {
    let rig = rig(&["svc"], "");
    let mut client = rig.client(0);
    let (_, reset) = read_to_end_or_reset(&mut client, WAIT);
    assert!(reset);
    assert_eq!(
        rig.hub
            .metric("nowconnect_rejected_clients_total{connector=\"svc\",reason=\"no_agent\"}"),
        Some(1.0)
    );
}

#[test]
fn open_timeout_resets_the_client_and_tells_the_agent() {
    let rig = rig(&["svc"], "open_timeout_ms: 300, sweep_interval_ms: 50");
    let mut agent = rig.agent(&["svc"]);
    let mut client = rig.client(0);
    let id = expect_open(&mut agent);
    let f = agent.expect(WAIT, |f| matches!(f, OwnedFrame::Rst(s, ..) if *s == id));
    assert!(
        matches!(f, OwnedFrame::Rst(_, RstCode::Unreachable, _)),
        "{f:?}"
    );
    let (_, reset) = read_to_end_or_reset(&mut client, WAIT);
    assert!(reset);
}

#[test]
fn one_mebibyte_echo_with_credit() {
    let rig = rig(&["echo"], "");
    let mut agent = rig.agent(&["echo"]);
    let (client, id) = rig.open(&mut agent);
    let payload: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let sent = payload.clone();
    let mut writer = client.try_clone().unwrap();
    let send = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    // Echo every DATA back, returning credit for what was received and spending what the hub
    // granted; the hub's initial grant is one window.
    let mut credit = agent.welcome.window as usize;
    let mut backlog: Vec<u8> = Vec::new();
    let mut fin = false;
    while !(fin && backlog.is_empty()) {
        if !backlog.is_empty() && credit > 0 {
            let n = backlog
                .len()
                .min(credit)
                .min(agent.welcome.max_frame as usize);
            let chunk: Vec<u8> = backlog.drain(..n).collect();
            agent.send_frames(&frames(|v| frame::encode_data(v, id, &chunk)));
            credit -= n;
            continue;
        }
        match agent.next_frame(WAIT).expect("frame") {
            OwnedFrame::Data(_, d) => {
                agent.send_frames(&frames(|v| frame::encode_window(v, id, d.len() as u32)));
                backlog.extend_from_slice(&d);
            }
            OwnedFrame::Window(_, n) => credit += n as usize,
            OwnedFrame::Fin(_) => fin = true,
            other => panic!("{other:?}"),
        }
    }
    agent.send_frames(&frames(|v| frame::encode_fin(v, id)));
    let mut reader = client;
    let (echoed, reset) = read_to_end_or_reset(&mut reader, WAIT);
    send.join().unwrap();
    assert!(!reset);
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "echoed bytes differ");
}

#[test]
fn clients_outside_the_allow_list_never_reach_the_agent() {
    let dir = TempDir::new("hub");
    let key = SigningKey::generate("k1");
    let jwks = dir.path("jwks.json");
    write_jwks(&jwks, &[&key]);
    let yaml = hub_yaml(&jwks, &["svc"], "").replace(
        "connector: svc, listen: \"127.0.0.1:0\" }",
        "connector: svc, listen: \"127.0.0.1:0\", allow_cidrs: [\"127.0.0.1/32\"] }",
    );
    let hub = Hub::start(dir, &yaml);
    let mut agent = RawAgent::connect(hub.addrs.tunnel, &key.token("agent-1"), "agent-1", &["svc"]);
    let target = hub.addrs.listeners[0];
    let from_other = std::net::SocketAddr::from(([127, 0, 0, 2], 0));
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&from_other.into()).unwrap();
    socket.connect(&target.into()).unwrap();
    let mut refused: TcpStream = socket.into();
    // The reset may land before this write: the write then reports it, and the kernel
    // clears the socket's error, so the read that follows sees only the end of stream.
    let write_reset = match refused.write_all(b"should never arrive") {
        Ok(()) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
    };
    let (got, read_reset) = read_to_end_or_reset(&mut refused, WAIT);
    assert!(got.is_empty(), "the refused client got {got:?}");
    assert!(
        write_reset || read_reset,
        "the refused client saw an orderly close, not a reset"
    );
    assert!(
        agent.next_frame(Duration::from_millis(500)).is_none(),
        "the agent saw the refused client"
    );
    assert_eq!(
        hub.metric("nowconnect_rejected_clients_total{connector=\"svc\",reason=\"cidr\"}"),
        Some(1.0)
    );
    // An allowed client still gets through.
    let _ok = TcpStream::connect(target).unwrap();
    expect_open(&mut agent);
}

#[test]
fn sigterm_drains_and_lets_a_running_stream_finish() {
    let rig = rig(&["svc"], "drain_timeout_ms: 5000");
    let mut agent = rig.agent(&["svc"]);
    let (mut client, id) = rig.open(&mut agent);
    rig.hub.terminate();
    // GOAWAY arrives as a text message; the raw agent skips it, the stream keeps working.
    client.write_all(b"in flight").unwrap();
    assert_eq!(collect_data(&mut agent, id, 9), b"in flight");
    // A new client is not accepted any more.
    std::thread::sleep(Duration::from_millis(200));
    let late = TcpStream::connect_timeout(&rig.hub.addrs.listeners[0], Duration::from_secs(1));
    if let Ok(mut late) = late {
        let (_, _) = read_to_end_or_reset(&mut late, WAIT);
    }
    agent.send_frames(&frames(|v| {
        frame::encode_data(v, id, b"done");
        frame::encode_fin(v, id);
    }));
    client.shutdown(Shutdown::Write).unwrap();
    let (bytes, reset) = read_to_end_or_reset(&mut client, WAIT);
    assert_eq!((bytes.as_slice(), reset), (&b"done"[..], false));
    let mut hub = rig.hub;
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = hub.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "hub did not exit after draining");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
}

#[test]
fn clients_on_a_shard_without_a_session_are_handed_to_one_that_has() {
    let dir = TempDir::new("hub");
    let key = SigningKey::generate("k1");
    let jwks = dir.path("jwks.json");
    write_jwks(&jwks, &[&key]);
    let yaml = hub_yaml(&jwks, &["svc"], "").replace("shards: 1", "shards: 2");
    let hub = Hub::start(dir, &yaml);
    // One session: it lands on one of the two shards.
    let mut agent = RawAgent::connect(hub.addrs.tunnel, &key.token("agent-1"), "agent-1", &["svc"]);
    // Enough clients that the kernel's SO_REUSEPORT hash puts some on the other shard.
    let mut clients = Vec::new();
    for i in 0..24u8 {
        let mut c = TcpStream::connect(hub.addrs.listeners[0]).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        c.write_all(&[i]).unwrap();
        clients.push(c);
    }
    // Every client reaches the agent, and an echo gets back to each.
    let mut seen = Vec::new();
    while seen.len() < clients.len() {
        match agent
            .next_frame(WAIT)
            .expect("every client reaches the agent")
        {
            OwnedFrame::Data(id, d) => {
                agent.send_frames(&frames(|v| {
                    frame::encode_open_ok(v, id);
                    frame::encode_data(v, id, &d);
                }));
                seen.push(d[0]);
            }
            OwnedFrame::Open(..) => {}
            other => panic!("{other:?}"),
        }
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
        assert_eq!(b[0], i as u8);
    }
    let (_, metrics) = hub.admin_get("/metrics");
    let crossed: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("nowconnect_cross_shard_messages_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!(
        "clients handed between shards: {crossed} of {}",
        clients.len()
    );
    assert!(
        crossed < clients.len() as f64,
        "at least the session's own shard serves locally"
    );
}

#[test]
fn an_idle_client_holds_no_buffer() {
    idle_clients_hold_no_buffer(false);
    if test_driver() == "io_uring" {
        idle_clients_hold_no_buffer(true);
    }
}

/// Four idle clients pin no pooled buffer, nor with `ring` (io_uring's multishot receive into
/// the shard's buffer ring, turned on with `hub.recv_buffers`) a ring buffer.
fn idle_clients_hold_no_buffer(ring: bool) {
    let dir = TempDir::new("hub");
    let key = SigningKey::generate("k1");
    let jwks = dir.path("jwks.json");
    write_jwks(&jwks, &[&key]);
    let driver = test_driver();
    let mut yaml = hub_yaml(&jwks, &["svc"], "");
    if ring {
        yaml = yaml.replace(
            &format!("driver: {driver} }}"),
            &format!("driver: {driver}, recv_buffers: 256 }}"),
        );
        assert!(yaml.contains("recv_buffers: 256"));
    }
    let rig = Rig {
        hub: Hub::start(dir, &yaml),
        key,
    };
    let mut agent = rig.agent(&["svc"]);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(rig.client(0));
        let id = expect_open(&mut agent);
        agent.send_frames(&frames(|v| frame::encode_open_ok(v, id)));
    }
    // Let the shard publish its pool gauges (every half second) with the clients idle.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        rig.hub.metric("nowconnect_buffer_pool_in_use{shard=\"0\"}"),
        Some(0.0),
        "idle clients must not pin receive buffers"
    );
    if ring {
        // The clients' receives are armed on the shard's ring, which lends a buffer only when
        // bytes arrive.
        assert_eq!(
            rig.hub.metric("nowconnect_recv_ring_buffers{shard=\"0\"}"),
            Some(256.0)
        );
        assert_eq!(
            rig.hub.metric("nowconnect_recv_ring_in_use{shard=\"0\"}"),
            Some(0.0),
            "idle clients must not pin ring buffers"
        );
    }
    // A client that sends gets its bytes through.
    clients[0].write_all(b"wake").unwrap();
    let f = agent.expect(WAIT, |f| matches!(f, OwnedFrame::Data(..)));
    assert!(matches!(f, OwnedFrame::Data(_, ref d) if d == b"wake"));
}

/// A ring of eight buffers and many clients sending at once into a tunnel the agent does not
/// read for a while: the ring runs dry, receives fall back to the pool, and every byte of every
/// stream still arrives once and in order.
#[test]
fn a_dry_receive_ring_loses_nothing() {
    let driver = test_driver();
    let hub = stalled_bulk_clients(", recv_buffers: 8");
    if driver == "io_uring" {
        let dry = hub
            .metric("nowconnect_recv_ring_exhausted_total{shard=\"0\"}")
            .unwrap_or(0.0);
        assert!(dry > 0.0, "the ring of eight buffers never ran dry");
    }
}

/// Bulk streams on a plain session move their bytes to the agent by splice (the default): the
/// same stalled clients lose nothing, and the hub counts the spliced bytes.
#[test]
fn spliced_bulk_streams_lose_nothing() {
    let hub = stalled_bulk_clients("");
    let spliced = hub.metric("nowconnect_spliced_bytes_total{shard=\"0\"}");
    assert!(spliced.unwrap_or(0.0) > 0.0, "no bulk stream was spliced");
    let pipes = hub.metric("nowconnect_splice_pipes_total{shard=\"0\"}");
    assert!(pipes.unwrap_or(0.0) >= 1.0, "no pipe was opened");
}

/// Receives DATA for `id`, returning credit for each, until `len` bytes came; fails on FIN,
/// RST or silence before that.
fn receive_with_credit(agent: &mut RawAgent, id: StreamId, len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < len {
        match agent.next_frame(WAIT) {
            Some(OwnedFrame::Data(s, d)) if s == id => {
                agent.send_frames(&frames(|v| frame::encode_window(v, id, d.len() as u32)));
                got.extend_from_slice(&d);
            }
            other => panic!("after {} of {len} bytes: {other:?}", got.len()),
        }
    }
    got
}

fn spliced_bytes(hub: &Hub) -> f64 {
    hub.metric("nowconnect_spliced_bytes_total{shard=\"0\"}")
        .unwrap_or(0.0)
}

/// TCP urgent data in a spliced stream: a splice stops at the urgent mark for good, a receive
/// steps over it. Every ordinary byte after the mark still reaches the agent, in order, and
/// the FIN only after them, whether the FIN follows at once or later.
#[test]
fn an_urgent_byte_in_a_spliced_stream_loses_nothing_after_it() {
    const HALF: usize = 256 * 1024;
    let rig = rig(&["sink"], "");
    let mut agent = rig.agent(&["sink"]);
    for fin_at_once in [true, false] {
        let (mut client, id) = rig.open(&mut agent);
        let before: Vec<u8> = (0..HALF).map(|i| (i % 253) as u8).collect();
        let after: Vec<u8> = (0..HALF).map(|i| (i % 239) as u8).collect();
        let spliced = spliced_bytes(&rig.hub);
        client.write_all(&before).unwrap();
        assert!(receive_with_credit(&mut agent, id, HALF) == before);
        assert!(
            spliced_bytes(&rig.hub) > spliced,
            "the stream was not spliced before the urgent byte"
        );
        socket2::SockRef::from(&client)
            .send_out_of_band(b"!")
            .unwrap();
        client.write_all(&after).unwrap();
        if fin_at_once {
            client.shutdown(Shutdown::Write).unwrap();
        }
        assert!(
            receive_with_credit(&mut agent, id, HALF) == after,
            "the bytes after the urgent byte differ (fin at once: {fin_at_once})"
        );
        if !fin_at_once {
            client.shutdown(Shutdown::Write).unwrap();
        }
        let f = agent.expect(
            WAIT,
            |f| matches!(f, OwnedFrame::Data(s, _) | OwnedFrame::Fin(s) if *s == id),
        );
        assert!(matches!(f, OwnedFrame::Fin(_)), "{f:?} instead of FIN");
    }
}

/// A client that resets its connection while its stream is spliced: the agent gets RST 6 and
/// the session carries the next stream as before.
#[test]
fn a_client_reset_on_a_spliced_stream_becomes_rst_6() {
    let rig = rig(&["svc"], "");
    let mut agent = rig.agent(&["svc"]);
    let (mut client, id) = rig.open(&mut agent);
    let bulk = vec![9u8; 512 * 1024];
    client.write_all(&bulk).unwrap();
    assert!(receive_with_credit(&mut agent, id, bulk.len()) == bulk);
    assert!(spliced_bytes(&rig.hub) > 0.0, "the stream was not spliced");
    reset_expecting_rst_6(&mut agent, client, id);
    let (mut next, id) = rig.open(&mut agent);
    next.write_all(b"still here").unwrap();
    assert_eq!(receive_with_credit(&mut agent, id, 10), b"still here");
}

/// With `hub.splice: false` the same bytes all go through buffers.
#[test]
fn splice_off_keeps_every_stream_on_buffers() {
    let hub = stalled_bulk_clients(", splice: false");
    let spliced = hub.metric("nowconnect_spliced_bytes_total{shard=\"0\"}");
    assert_eq!(spliced.unwrap_or(0.0), 0.0, "spliced with splice off");
}

/// Many clients send a mebibyte each at once into a tunnel the agent does not read for a
/// while, through a hub whose `hub:` section has `hub_extra` added; checks that every byte of
/// every stream arrives once and in order, followed by its FIN. Returns the hub, for its
/// metrics.
fn stalled_bulk_clients(hub_extra: &str) -> Hub {
    const CLIENTS: usize = 32;
    const BYTES: usize = 1 << 20;
    let dir = TempDir::new("hub");
    let key = SigningKey::generate("k1");
    let jwks = dir.path("jwks.json");
    write_jwks(&jwks, &[&key]);
    let driver = test_driver();
    let yaml = hub_yaml(&jwks, &["sink"], "").replace(
        &format!("driver: {driver} }}"),
        &format!("driver: {driver}{hub_extra} }}"),
    );
    assert!(hub_extra.is_empty() || yaml.contains(&format!("{hub_extra} }}")));
    let hub = Hub::start(dir, &yaml);
    let mut agent = RawAgent::connect(
        hub.addrs.tunnel,
        &key.token("agent-1"),
        "agent-1",
        &["sink"],
    );
    let pattern = |i: usize| -> Vec<u8> {
        (0..BYTES as u32)
            .map(|n| (n.wrapping_mul(2_654_435_761) >> 24) as u8 ^ i as u8)
            .collect()
    };
    // Open every stream before any client sends, so no DATA arrives while OPENs are awaited.
    let mut ids = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(TcpStream::connect(hub.addrs.listeners[0]).unwrap());
        let id = expect_open(&mut agent);
        agent.send_frames(&frames(|v| frame::encode_open_ok(v, id)));
        ids.push(id);
    }
    let writers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            std::thread::spawn(move || {
                client.write_all(&pattern(i)).unwrap();
                client.shutdown(Shutdown::Write).unwrap();
                client
            })
        })
        .collect();
    // Every stream fills its window while nobody reads the tunnel.
    std::thread::sleep(Duration::from_millis(300));
    let mut got: std::collections::HashMap<StreamId, Vec<u8>> = Default::default();
    let mut finished = std::collections::HashSet::new();
    let mut fins = 0;
    while fins < CLIENTS {
        let Some(frame) = agent.next_frame(WAIT) else {
            let lens: Vec<usize> = ids
                .iter()
                .map(|id| got.get(id).map_or(0, Vec::len))
                .collect();
            panic!("stalled after {fins} FINs; bytes per stream: {lens:?}");
        };
        match frame {
            OwnedFrame::Data(id, d) => {
                assert!(!finished.contains(&id), "DATA on {id} after its FIN");
                agent.send_frames(&frames(|v| frame::encode_window(v, id, d.len() as u32)));
                got.entry(id).or_default().extend_from_slice(&d);
            }
            OwnedFrame::Fin(id) => {
                assert!(finished.insert(id), "a second FIN on {id}");
                fins += 1;
            }
            other => {
                while let Ok(line) = hub.logs.try_recv() {
                    eprintln!("{line}");
                }
                panic!("{other:?}")
            }
        }
    }
    let _clients: Vec<TcpStream> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    for (i, id) in ids.iter().enumerate() {
        let bytes = got.remove(id).unwrap_or_default();
        assert_eq!(bytes.len(), BYTES, "stream {i}");
        assert!(bytes == pattern(i), "stream {i}: bytes differ");
    }
    hub
}
