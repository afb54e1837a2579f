//! Agent tokens over time: a token rotated under a running transfer, and a session whose token
//! expires.
//!
//! The agent reads its token file on every connect and watches it while sessions run, so a
//! rotated token is used by the next session (rotation.rs covers the replacement the watch
//! triggers); these tests force that session by restarting the hub, or expect it when the old
//! token expires.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use nowconnect_tests::*;

/// The status code a hub answers to a WebSocket upgrade carrying `token`.
fn upgrade_status(tunnel: SocketAddr, token: &str) -> u16 {
    let mut s = client(tunnel);
    let request = format!(
        "GET /nowconnect/v1/tunnel HTTP/1.1\r\nHost: e2e\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: nowconnect.v1\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn rotated_token_spares_the_running_transfer_and_serves_the_next_session() {
    let mut rig = Rig::start("token-rotation", &[("echo", echo_target())], "");
    let addr = rig.listener("echo");
    let old_token = std::fs::read_to_string(&rig.token_file).unwrap();

    // A transfer in two halves, the token file replaced between them.
    let data = payload(99, 2 << 20);
    let (first, second) = data.split_at(data.len() / 2);
    let mut c = client(addr);
    let mut back = vec![0u8; data.len()];
    std::thread::scope(|scope| {
        let mut reader = c.try_clone().unwrap();
        let back = &mut back;
        let read = scope.spawn(move || reader.read_exact(back));
        c.write_all(first).unwrap();
        // Wait until the first half is through the tunnel (the hub counts it), so the
        // rotation really happens mid-transfer.
        let to_client = r#"nowconnect_bytes_total{connector="echo",direction="to_client"}"#;
        assert!(poll_until(WAIT, || rig
            .hub
            .metric(to_client)
            .is_some_and(|n| n >= first.len() as f64)));
        let new_key = SigningKey::generate("k2");
        write_atomically(&rig.token_file, new_key.token(AGENT_ID, "jti-2").as_bytes());
        c.write_all(second).unwrap();
        read.join()
            .unwrap()
            .expect("the running transfer completes");
        // The restarted hub below trusts only the new key.
        write_jwks(&rig.jwks, &[&new_key]);
    });
    assert_eq!(sha256(&back), sha256(&data), "the transfer is intact");

    // A new session, forced by restarting the hub, must use the new token: the restarted hub
    // refuses the old one.
    let pinned = rig.hub.pinned_config();
    rig.hub.kill_and_wait_closed();
    rig.hub = Hub::start(rig.dir.path(), &pinned);
    rig.hub.wait_ready();
    assert_eq!(
        upgrade_status(rig.hub.tunnel, old_token.trim()),
        401,
        "the restarted hub no longer trusts the old token's key"
    );
    rig.hub.wait_sessions(AGENT_ID, 1);
    retry(WAIT, || echo_roundtrip(addr, b"with the new token"))
        .expect("a client gets through the session opened with the new token");
}

/// The hub's tolerance for clock skew on `exp` (hub-uring's `auth::jwt::LEEWAY_SECS`).
const HUB_LEEWAY_SECS: u64 = 60;

#[test]
fn a_session_does_not_outlive_its_token() {
    // PROTOCOL.md 2.2: WELCOME's `token_exp` "is when the hub will end the session; the agent
    // reconnects with a fresh token before that."
    let dir = TempDir::new("token-exp");
    let key = SigningKey::generate("k1");
    let jwks = dir.join("jwks.json");
    write_jwks(&jwks, &[&key]);
    let hub = Hub::start(dir.path(), &HubConfig::new("hub-a", &jwks, &["echo"]));

    // Expired 54 s ago: inside the hub's leeway, so the upgrade is accepted, but the session
    // is due to end within seconds even counting the leeway.
    let exp = now_unix() - (HUB_LEEWAY_SECS - 6);
    let token_file = dir.join("token");
    write_atomically(
        &token_file,
        key.token_expiring(AGENT_ID, "jti-expiring", exp).as_bytes(),
    );
    let agent = Agent::start(&AgentConfig {
        agent_id: AGENT_ID.to_owned(),
        hub_urls: vec![hub.url()],
        token_file: token_file.clone(),
        connectors: vec![("echo".to_owned(), echo_target())],
        lanes: Some(1),
        health: free_addr(),
    });
    hub.wait_sessions(AGENT_ID, 1);
    // The token refresher has already put a fresh token in place.
    write_atomically(&token_file, key.token(AGENT_ID, "jti-fresh").as_bytes());

    let due = Duration::from_secs((exp + HUB_LEEWAY_SECS).saturating_sub(now_unix()));
    let renewed = poll_until(due + Duration::from_secs(5), || {
        agent.sessions_established() >= 2
    });
    let ended = hub.count_session_ends();
    assert!(
        renewed,
        "the session authenticated by a token that expired at {exp} (leeway included: {}) is \
         still the agent's only session at {}; the hub ended {ended} sessions",
        exp + HUB_LEEWAY_SECS,
        now_unix()
    );
    retry(WAIT, || echo_roundtrip(hub.listener("echo"), b"fresh"))
        .expect("a client gets through the session opened with the fresh token");
}
