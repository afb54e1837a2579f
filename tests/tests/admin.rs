//! The hub's admin endpoint as an operator sees it: liveness, readiness gated on the JWKS, and
//! traffic counters that follow the bytes moved.

use nowconnect_tests::*;

#[test]
fn health_readiness_and_byte_counters() {
    let dir = TempDir::new("admin");
    let key = SigningKey::generate("k1");
    // The JWKS file does not exist yet: the hub starts, but is not ready.
    let jwks = dir.join("jwks.json");
    let hub = Hub::start(dir.path(), &HubConfig::new("hub-a", &jwks, &["echo"]));

    assert!(
        poll_until(WAIT, || hub.admin_get("/healthz").0 == 200),
        "/healthz answers 200 while the shards run"
    );
    let (status, body) = hub.admin_get("/readyz");
    assert_eq!(status, 503, "not ready without a JWKS: {body}");
    assert!(body.contains("JWKS"), "says what is missing: {body}");

    write_jwks(&jwks, &[&key]);
    assert!(
        poll_until(WAIT, || hub.admin_get("/readyz").0 == 200),
        "/readyz answers 200 once the JWKS loaded (last: {:?})",
        hub.admin_get("/readyz")
    );
    assert_eq!(hub.admin_get("/healthz").0, 200);

    let token_file = dir.join("token");
    write_atomically(&token_file, key.token(AGENT_ID, "jti-1").as_bytes());
    let agent = Agent::start(&AgentConfig {
        agent_id: AGENT_ID.to_owned(),
        hub_urls: vec![hub.url()],
        token_file,
        connectors: vec![("echo".to_owned(), echo_target())],
        lanes: Some(1),
        health: free_addr(),
    });
    hub.wait_sessions(AGENT_ID, 1);
    agent.wait_ready();

    let sample = |direction: &str| {
        format!("nowconnect_bytes_total{{connector=\"echo\",direction=\"{direction}\"}}")
    };
    let counted = |direction: &str| hub.metric(&sample(direction)).unwrap_or(0.0);
    let (to_agent_before, to_client_before) = (counted("to_agent"), counted("to_client"));
    let streams_before = hub
        .metric(r#"nowconnect_streams_total{connector="echo"}"#)
        .unwrap_or(0.0);

    const MOVED: usize = 300_000;
    echo_roundtrip(hub.listener("echo"), &payload(4, MOVED)).expect("echo");

    let grown = poll_until(WAIT, || {
        counted("to_agent") >= to_agent_before + MOVED as f64
            && counted("to_client") >= to_client_before + MOVED as f64
    });
    assert!(
        grown,
        "bytes counters grew by at least {MOVED} each way: to_agent {to_agent_before} -> {}, \
         to_client {to_client_before} -> {}",
        counted("to_agent"),
        counted("to_client")
    );
    assert_eq!(
        hub.metric(r#"nowconnect_streams_total{connector="echo"}"#),
        Some(streams_before + 1.0)
    );
}
