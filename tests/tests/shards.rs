//! A hub with several shards: an agent with `lanes: auto` must give clients on every shard a
//! route.
//!
//! CONFIG.md: "A client connection goes to the least-loaded session of an agent that
//! registered this connector. Agents open one lane per shard so that every shard has a local
//! route. If no agent currently serves the connector, the client is reset."

use nowconnect_tests::*;

const SHARDS: u32 = 2;
const CLIENTS: u64 = 16;

#[test]
fn clients_on_every_shard_reach_an_agent_with_auto_lanes() {
    let dir = TempDir::new("shards");
    let key = SigningKey::generate("k1");
    let jwks = dir.join("jwks.json");
    write_jwks(&jwks, &[&key]);
    let token_file = dir.join("token");
    write_atomically(&token_file, key.token(AGENT_ID, "jti-1").as_bytes());
    let mut config = HubConfig::new("hub-a", &jwks, &["echo"]);
    config.shards = SHARDS;
    let hub = Hub::start(dir.path(), &config);
    let echo = echo_target();

    // Where an agent's lanes land is up to the kernel's SO_REUSEPORT hash, so one placement
    // proves little: start the agent a few times, each time with new source ports.
    for attempt in 0..4 {
        let agent = Agent::start(&AgentConfig {
            agent_id: AGENT_ID.to_owned(),
            hub_urls: vec![hub.url()],
            token_file: token_file.clone(),
            connectors: vec![("echo".to_owned(), echo)],
            lanes: None,
            health: free_addr(),
        });
        hub.wait_sessions(AGENT_ID, SHARDS as usize);
        agent.wait_ready();
        // The kernel spreads clients over the shards too; with 16 of them both shards
        // practically always get some.
        let failed: Vec<String> = (0..CLIENTS)
            .filter_map(|i| {
                echo_roundtrip(hub.listener("echo"), &payload(i, 1000))
                    .err()
                    .map(|e| format!("client {i}: {e}"))
            })
            .collect();
        let (_, metrics) = hub.admin_get("/metrics");
        let per_shard: Vec<_> = (0..SHARDS)
            .map(|s| {
                metric_in(
                    &metrics,
                    &format!("nowconnect_shard_sessions{{shard=\"{s}\"}}"),
                )
            })
            .collect();
        assert!(
            failed.is_empty(),
            "attempt {attempt}: {} of {CLIENTS} clients were reset although the agent has \
             {SHARDS} sessions to the hub; sessions per shard: {per_shard:?}; \
             rejected as no_agent: {:?}; first failures: {:?}",
            failed.len(),
            metric_in(
                &metrics,
                r#"nowconnect_rejected_clients_total{connector="echo",reason="no_agent"}"#
            ),
            &failed[..failed.len().min(3)]
        );
        drop(agent);
        hub.wait_sessions(AGENT_ID, 0);
    }
}
