//! DPoP-bound tokens (RFC 9449) between real agent and hub processes: an agent with the key
//! its token's `cnf.jkt` names gets a session and carries traffic; the same token with
//! another key, or as a Bearer token, is refused and counted; `security.dpop.required`
//! refuses Bearer tokens altogether.

use nowconnect_tests::*;
use serde_json::json;

fn auth_failures(site: &Site, reason: &str) -> f64 {
    site.hub
        .metric(&format!(
            "nowconnect_auth_failures_total{{reason=\"{reason}\"}}"
        ))
        .unwrap_or(0.0)
}

/// Writes a token for [`AGENT_ID`] bound to `jkt` to the site's token file.
fn bind_token(site: &Site, jkt: &str) {
    let token = site.key.token_with(
        AGENT_ID,
        "jti-dpop",
        now_unix() + 3600,
        json!({ "cnf": { "jkt": jkt } }),
    );
    write_atomically(&site.token_file, token.as_bytes());
}

/// Waits until the hub counted at least one refusal for `reason`, and checks the agent was
/// told with the DPoP challenge `challenge`.
fn wait_refused(site: &Site, agent: &Agent, reason: &str, challenge: &str) {
    let counted = poll_until(WAIT, || auth_failures(site, reason) >= 1.0);
    assert!(counted, "no auth failure counted as {reason}");
    let told = agent.proc.wait_log(0, WAIT, |l| {
        log_message(l) == Some("hub refused the session")
            && log_field(l, "status").and_then(serde_json::Value::as_u64) == Some(401)
            && log_field(l, "www_authenticate").and_then(serde_json::Value::as_str)
                == Some(challenge)
    });
    assert!(told.is_some(), "the agent logs the 401 with {challenge}");
}

#[test]
fn an_agent_with_the_bound_key_gets_a_session_and_traffic_flows() {
    let site = Site::start("dpop-ok", &["echo"]);
    let key = DpopKey::p256(&site.dir.join("agent.key"));
    bind_token(&site, &key.jkt);
    let agent = site.agent(&site.hub.url(), &[("echo", echo_target())], &[key.env()]);
    site.hub.wait_sessions(AGENT_ID, 1);
    agent.wait_ready();
    let data = payload(11, 1 << 20);
    let back = exchange(site.hub.listener("echo"), &data).expect("echo through a DPoP session");
    assert_eq!(sha256(&back), sha256(&data));
    // The agent names the thumbprint it proves, as the token must carry it.
    let enabled = agent.proc.wait_log(0, WAIT, |l| {
        log_message(l)
            == Some("DPoP proofs enabled: the token must carry this key's thumbprint as cnf.jkt")
            && log_field(l, "jkt").and_then(serde_json::Value::as_str) == Some(key.jkt.as_str())
    });
    assert!(enabled.is_some());
    // The token never reaches the hub's log.
    let token = std::fs::read_to_string(&site.token_file).unwrap();
    let signature = token.rsplit('.').next().unwrap();
    for line in site.hub.proc.text_lines() {
        assert!(
            !line.contains(signature),
            "the hub logged the token: {line}"
        );
    }
}

#[test]
fn the_bound_token_with_another_key_or_as_bearer_is_refused() {
    let site = Site::start("dpop-refused", &["echo"]);
    let bound = DpopKey::p256(&site.dir.join("bound.key"));
    let other = DpopKey::ed25519(&site.dir.join("other.key"));
    bind_token(&site, &bound.jkt);

    let thief = site.agent(&site.hub.url(), &[("echo", echo_target())], &[other.env()]);
    wait_refused(
        &site,
        &thief,
        "dpop_jkt",
        r#"DPoP error="invalid_dpop_proof""#,
    );
    drop(thief);

    let bearer = site.agent(&site.hub.url(), &[("echo", echo_target())], &[]);
    wait_refused(
        &site,
        &bearer,
        "dpop_binding",
        r#"Bearer error="invalid_token""#,
    );
    drop(bearer);

    assert_eq!(
        site.hub
            .metric(&format!("nowconnect_sessions{{agent=\"{AGENT_ID}\"}}"))
            .unwrap_or(0.0),
        0.0,
        "no session was established"
    );
}

#[test]
fn dpop_required_refuses_bearer_tokens_and_serves_bound_ones() {
    let site = Site::start_with("dpop-required", &["echo"], |config, _| {
        config.security_extra = "dpop: { required: true }".to_owned();
    });
    // The site's token file holds an unbound token: as Bearer it is refused.
    let bearer = site.agent(&site.hub.url(), &[("echo", echo_target())], &[]);
    wait_refused(
        &site,
        &bearer,
        "dpop_required",
        r#"DPoP error="invalid_token""#,
    );
    drop(bearer);

    let key = DpopKey::ed25519(&site.dir.join("agent.key"));
    bind_token(&site, &key.jkt);
    let agent = site.agent(&site.hub.url(), &[("echo", echo_target())], &[key.env()]);
    site.hub.wait_sessions(AGENT_ID, 1);
    agent.wait_ready();
    let data = payload(12, 256 << 10);
    let back = exchange(site.hub.listener("echo"), &data).expect("echo with dpop.required");
    assert_eq!(sha256(&back), sha256(&data));
}
