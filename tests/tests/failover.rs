//! Processes failing and coming back: the agent killed or frozen and restarted, the hub killed
//! and restarted on the same ports, two hubs with one stopping.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nowconnect_tests::*;

/// The heartbeat the failure tests configure on the hub.
const HEARTBEAT_MS: u64 = 500;

/// Time allowed on top of a protocol bound for a loaded machine to schedule the processes
/// (the hub's reader, its reset, the kernel, the test's read).
const SCHEDULING_SLACK: Duration = Duration::from_secs(1);

/// Opens `n` clients on `addr`, each proven connected end to end by one echoed message.
fn open_echo_clients(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut c = client(addr);
            let msg = format!("client {i} here");
            c.write_all(msg.as_bytes()).unwrap();
            let mut back = vec![0u8; msg.len()];
            c.read_exact(&mut back).expect("echo before the failure");
            assert_eq!(back, msg.as_bytes());
            c
        })
        .collect()
}

/// Reads each client until it ends, all by `deadline`; returns how each ended.
fn ends_by(clients: &mut [TcpStream], deadline: Instant) -> Vec<End> {
    clients
        .iter_mut()
        .map(|c| {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            read_to_end_with(c, left).1
        })
        .collect()
}

#[test]
fn killed_agent_resets_its_clients_and_a_restarted_agent_serves_again() {
    let mut rig = Rig::start(
        "agent-kill",
        &[("echo", echo_target())],
        &format!("heartbeat_ms: {HEARTBEAT_MS}"),
    );
    let addr = rig.listener("echo");
    let mut clients = open_echo_clients(addr, 5);

    rig.agent.proc.kill();
    let killed = Instant::now();
    let bound = Duration::from_millis(3 * HEARTBEAT_MS);
    let ends = ends_by(&mut clients, killed + bound + SCHEDULING_SLACK);
    let took = killed.elapsed();
    assert!(
        ends.iter().all(|e| *e == End::Reset),
        "every client of the killed agent must see a reset within three heartbeats; got {ends:?} after {took:?}"
    );
    assert!(
        poll_until(WAIT, || rig.hub.metric(
            r#"nowconnect_stream_closes_total{connector="echo",reason="session_ended"}"#
        ) == Some(5.0)),
        "the five streams are counted as ended with their session"
    );
    rig.hub.wait_sessions(AGENT_ID, 0);

    // A new agent process; the first connection of a fresh agent is not delayed, and a
    // client must get through within the backoff bound.
    rig.agent = Agent::start(&rig.agent.config);
    let started = Instant::now();
    retry(Duration::from_secs(10), || {
        echo_roundtrip(addr, b"after the restart")
    })
    .expect("a client gets through the restarted agent");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(rig.agent.sessions_established(), 1);
}

#[test]
fn frozen_agent_is_declared_dead_by_heartbeat_and_recovers_when_thawed() {
    // SIGSTOP keeps the agent's TCP connection open but silent: only the heartbeat can tell.
    let rig = Rig::start(
        "agent-stop",
        &[("echo", echo_target())],
        &format!("heartbeat_ms: {HEARTBEAT_MS}"),
    );
    let addr = rig.listener("echo");
    let mut clients = open_echo_clients(addr, 3);

    rig.agent.proc.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    // Three silent intervals, plus up to one interval until the hub's next check.
    let bound = Duration::from_millis(4 * HEARTBEAT_MS);
    let ends = ends_by(&mut clients, stopped + bound + SCHEDULING_SLACK);
    let took = stopped.elapsed();
    rig.agent.proc.signal(libc::SIGCONT);
    assert!(
        ends.iter().all(|e| *e == End::Reset),
        "clients of a silent agent must be reset by the heartbeat; got {ends:?} after {took:?}"
    );

    // Thawed, the agent notices its session is gone and reconnects by itself.
    retry(Duration::from_secs(10), || echo_roundtrip(addr, b"thawed"))
        .expect("a client gets through once the agent is back");
    assert!(rig.agent.sessions_established() >= 2);
}

#[test]
fn heartbeat_timeout_is_counted_under_close_code_4408() {
    // PROTOCOL.md 1.4: a session silent for three heartbeats is closed with 4408; the hub
    // counts session closes by code in `nowconnect_session_closes_total{code}`.
    let rig = Rig::start(
        "close-code",
        &[("echo", echo_target())],
        &format!("heartbeat_ms: {HEARTBEAT_MS}"),
    );
    let mut clients = open_echo_clients(rig.listener("echo"), 1);
    rig.agent.proc.signal(libc::SIGSTOP);
    let ends = ends_by(&mut clients, Instant::now() + WAIT);
    assert_eq!(ends, [End::Reset], "the heartbeat ends the silent session");
    rig.hub.wait_sessions(AGENT_ID, 0);
    let (_, body) = rig.hub.admin_get("/metrics");
    let closes: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("nowconnect_session_closes_total{"))
        .collect();
    rig.agent.proc.signal(libc::SIGCONT);
    assert_eq!(
        metric_in(&body, r#"nowconnect_session_closes_total{code="4408"}"#),
        Some(1.0),
        "the heartbeat timeout is counted under its close code; the hub reports {closes:?}"
    );
}

#[test]
fn killed_hub_restarted_on_the_same_ports_gets_the_agent_back() {
    let mut rig = Rig::start("hub-restart", &[("echo", echo_target())], "");
    let addr = rig.listener("echo");
    echo_roundtrip(addr, &payload(1, 10_000)).expect("echo before the restart");
    let agent_pid = rig.agent.proc.pid();

    let pinned = rig.hub.pinned_config();
    rig.hub.kill_and_wait_closed();
    rig.hub = Hub::start(rig.dir.path(), &pinned);
    assert_eq!(rig.hub.listener("echo"), addr, "same client port");
    assert_eq!(rig.hub.tunnel, pinned.tunnel, "same tunnel port");

    rig.hub.wait_sessions(AGENT_ID, 1);
    retry(WAIT, || echo_roundtrip(addr, &payload(2, 100_000)))
        .expect("a client gets through after the hub restart");
    assert_eq!(rig.agent.proc.pid(), agent_pid, "the same agent process");
    assert_eq!(
        rig.agent.sessions_established(),
        2,
        "the agent reconnected by itself, once"
    );
}

#[test]
fn two_hubs_both_route_to_the_agent_and_one_stopping_leaves_the_other_serving() {
    let dir = TempDir::new("two-hubs");
    let key = SigningKey::generate("k1");
    let jwks = dir.join("jwks.json");
    write_jwks(&jwks, &[&key]);
    let token_file = dir.join("token");
    write_atomically(&token_file, key.token(AGENT_ID, "jti-1").as_bytes());
    let mut config_a = HubConfig::new("hub-a", &jwks, &["echo"]);
    config_a.limits = "drain_timeout_ms: 3000".to_owned();
    let mut hub_a = Hub::start(dir.path(), &config_a);
    let hub_b = Hub::start(dir.path(), &HubConfig::new("hub-b", &jwks, &["echo"]));
    let agent = Agent::start(&AgentConfig {
        agent_id: AGENT_ID.to_owned(),
        hub_urls: vec![hub_a.url(), hub_b.url()],
        token_file,
        connectors: vec![("echo".to_owned(), echo_target())],
        lanes: Some(1),
        health: free_addr(),
    });
    hub_a.wait_sessions(AGENT_ID, 1);
    hub_b.wait_sessions(AGENT_ID, 1);
    agent.wait_ready();

    let (via_a, via_b) = (hub_a.listener("echo"), hub_b.listener("echo"));
    for i in 0..3 {
        echo_roundtrip(via_a, &payload(10 + i, 50_000)).expect("a client on hub A");
        echo_roundtrip(via_b, &payload(20 + i, 50_000)).expect("a client on hub B");
    }
    let mut held = open_echo_clients(via_b, 1).pop().unwrap();

    // Stop hub A the orderly way and wait for it to exit.
    hub_a.proc.signal(libc::SIGTERM);
    let status = hub_a
        .proc
        .wait_exit(WAIT)
        .expect("hub A exits after SIGTERM");
    assert!(status.success(), "hub A exit status {status}");

    // The stream through B never noticed; new clients on B still get through.
    held.write_all(b"still there?").unwrap();
    let mut back = [0u8; 12];
    held.read_exact(&mut back)
        .expect("the stream through hub B survives hub A stopping");
    assert_eq!(&back, b"still there?");
    for i in 0..3 {
        echo_roundtrip(via_b, &payload(30 + i, 50_000)).expect("a client on hub B after A stopped");
    }
    assert_eq!(
        hub_b.metric(&format!("nowconnect_sessions{{agent=\"{AGENT_ID}\"}}")),
        Some(1.0),
        "the agent's session to hub B is the one it had"
    );
    drop(held);
    drop(agent);
}
