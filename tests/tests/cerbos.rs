//! A real AuthZEN policy decision point: Cerbos (from npm, `tests/node`), started on loopback
//! with a policy that lets each agent serve some connectors and not others. Real hub and agent
//! processes: clients of allowed pairs reach their targets, clients of denied pairs are
//! reset, and both the per-stream evaluation and the batch asked when an agent connects are
//! answered by Cerbos.

use std::net::SocketAddr;

use nowconnect_tests::*;

/// The policy: the agent's id (`subject.id`), the connector (`resource.id`) and an attribute
/// the hub sends about the agent's token (`subject.properties.binding`).
const POLICY: &str = r#"apiVersion: api.cerbos.dev/v1
resourcePolicy:
  version: default
  resource: connector
  rules:
    - actions: ["connect"]
      effect: EFFECT_ALLOW
      roles: ["agent"]
      condition:
        match:
          expr: >
            P.attr.binding == "bearer" && (
              (P.id == "agent-a" && R.id == "ldap") ||
              (P.id == "agent-b" && R.id == "db"))
"#;

/// A Cerbos server with [`POLICY`], stopped on drop.
struct Cerbos {
    _proc: Proc,
    http: SocketAddr,
}

impl Cerbos {
    fn start(dir: &TempDir) -> Cerbos {
        let binary = node_package_file("@cerbos/cerbos-linux-x64/cerbos-linux-x64");
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(policies.join("connector.yaml"), POLICY).unwrap();
        let (http, grpc) = (free_addr(), free_addr());
        let config = dir.join("cerbos.yaml");
        std::fs::write(
            &config,
            format!(
                "server:\n  httpListenAddr: \"{http}\"\n  grpcListenAddr: \"{grpc}\"\n\
                 storage:\n  driver: disk\n  disk:\n    directory: \"{}\"\n\
                 telemetry:\n  disabled: true\n",
                policies.display()
            ),
        )
        .unwrap();
        let proc = spawn_program(
            "cerbos",
            &binary,
            &["server", &format!("--config={}", config.display())],
            &[("CERBOS_NO_TELEMETRY", "1")],
        );
        let serving = poll_until(WAIT, || {
            http_get(http, "/_cerbos/health").1.contains("SERVING")
        });
        assert!(serving, "cerbos did not start: {:?}", proc.text_lines());
        Cerbos { _proc: proc, http }
    }
}

/// Starts an agent `agent_id` serving `targets`, with a token of the site's key.
fn agent(site: &Site, agent_id: &str, targets: &[(&str, SocketAddr)]) -> Agent {
    let token_file = site.dir.join(&format!("{agent_id}.token"));
    write_atomically(
        &token_file,
        site.key
            .token(agent_id, &format!("jti-{agent_id}"))
            .as_bytes(),
    );
    let agent = Agent::start(&AgentConfig {
        agent_id: agent_id.to_owned(),
        hub_urls: vec![site.hub.url()],
        token_file,
        connectors: targets.iter().map(|(n, a)| ((*n).to_owned(), *a)).collect(),
        lanes: Some(1),
        health: free_addr(),
    });
    site.hub.wait_sessions(agent_id, 1);
    agent.wait_ready();
    agent
}

fn metric(site: &Site, sample: &str) -> f64 {
    site.hub.metric(sample).unwrap_or(0.0)
}

fn assert_reset(addr: SocketAddr) {
    let result = exchange(addr, b"not for you");
    assert!(
        matches!(&result, Ok(back) if back.is_empty()) || result.is_err(),
        "a denied client got bytes back: {result:?}"
    );
}

#[test]
fn cerbos_decides_which_agent_serves_which_connector() {
    let scratch = TempDir::new("cerbos");
    let cerbos = Cerbos::start(&scratch);
    let site = Site::start_with(
        "pdp-cerbos",
        &["ldap", "web", "db", "files"],
        |config, _| {
            config.sections = format!(
                "pdp: {{ url: \"http://{}\", timeout_ms: 2000 }}\n",
                cerbos.http
            );
        },
    );
    let echo = echo_target();
    let _a = agent(&site, "agent-a", &[("ldap", echo), ("web", echo)]);
    let _b = agent(&site, "agent-b", &[("db", echo), ("files", echo)]);

    // Each agent's connectors were asked about in one batch when its session started.
    let batched = poll_until(WAIT, || {
        metric(
            &site,
            "nowconnect_pdp_decisions_total{decision=\"allow\",source=\"batch\"}",
        ) >= 2.0
            && metric(
                &site,
                "nowconnect_pdp_decisions_total{decision=\"deny\",source=\"batch\"}",
            ) >= 2.0
    });
    assert!(batched, "no batch decisions from cerbos");

    // Allowed pairs carry traffic; the cached batch allows serve them.
    for (connector, seed) in [("ldap", 1), ("db", 2)] {
        let data = payload(seed, 256 * 1024);
        let back = exchange(site.hub.listener(connector), &data).expect(connector);
        assert_eq!(sha256(&back), sha256(&data), "{connector}");
    }
    // Denied pairs are reset, every time: denials are not cached.
    for connector in ["web", "files", "web"] {
        assert_reset(site.hub.listener(connector));
    }
    for connector in ["web", "files"] {
        let denied = metric(
            &site,
            &format!(
                "nowconnect_rejected_clients_total{{connector=\"{connector}\",reason=\"denied\"}}"
            ),
        );
        assert!(denied >= 1.0, "{connector}: {denied}");
    }
    assert_eq!(
        metric(
            &site,
            "nowconnect_pdp_decisions_total{decision=\"deny\",source=\"pdp\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(&site, "nowconnect_pdp_errors_total{kind=\"malformed\"}")
            + metric(&site, "nowconnect_pdp_errors_total{kind=\"status\"}"),
        0.0,
        "cerbos understood every request"
    );
}

#[test]
fn cerbos_answers_every_stream_when_nothing_is_cached() {
    let scratch = TempDir::new("cerbos-nocache");
    let cerbos = Cerbos::start(&scratch);
    let site = Site::start_with("pdp-cerbos-nocache", &["ldap", "db"], |config, _| {
        config.sections = format!(
            "pdp: {{ url: \"http://{}/\", cache_ttl_ms: 0, timeout_ms: 2000 }}\n",
            cerbos.http
        );
    });
    let echo = echo_target();
    let _a = agent(&site, "agent-a", &[("ldap", echo), ("db", echo)]);
    for seed in 0..3 {
        let data = payload(seed, 64 * 1024);
        let back = exchange(site.hub.listener("ldap"), &data).expect("ldap");
        assert_eq!(sha256(&back), sha256(&data));
        assert_reset(site.hub.listener("db"));
    }
    let allow = metric(
        &site,
        "nowconnect_pdp_decisions_total{decision=\"allow\",source=\"pdp\"}",
    );
    let deny = metric(
        &site,
        "nowconnect_pdp_decisions_total{decision=\"deny\",source=\"pdp\"}",
    );
    assert_eq!((allow, deny), (3.0, 3.0));
    assert_eq!(
        metric(
            &site,
            "nowconnect_pdp_decisions_total{decision=\"allow\",source=\"cache\"}"
        ),
        0.0
    );
}
