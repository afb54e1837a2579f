//! Agent authentication through a real hub process: valid and invalid tokens, HELLO checks,
//! key rotation at the JWKS (file and loopback HTTP), source allow-lists, and malformed input.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nowconnect_core::ws;
use support::*;

const WAIT: Duration = Duration::from_secs(10);

fn hub_with_jwks(keys: &[&SigningKey], limits: &str) -> (Hub, std::path::PathBuf) {
    let dir = TempDir::new("auth");
    let jwks = dir.path("jwks.json");
    write_jwks(&jwks, keys);
    let yaml = hub_yaml(&jwks, &["svc"], limits);
    let hub = Hub::start(dir, &yaml);
    (hub, jwks)
}

fn refused_with(hub: &Hub, authorization: Option<&str>) -> (u16, Option<String>) {
    match upgrade(hub.addrs.tunnel, authorization) {
        Upgrade::Refused(status, www) => (status, www),
        Upgrade::Open(..) => panic!("upgrade accepted"),
    }
}

fn auth_failures(hub: &Hub, reason: &str) -> f64 {
    hub.metric(&format!(
        "nowconnect_auth_failures_total{{reason=\"{reason}\"}}"
    ))
    .unwrap_or(0.0)
}

#[test]
fn a_valid_token_opens_a_session() {
    let key = SigningKey::generate("k1");
    let (hub, _) = hub_with_jwks(&[&key], "");
    let agent = RawAgent::connect(hub.addrs.tunnel, &key.token("agent-1"), "agent-1", &["svc"]);
    assert_eq!(agent.welcome.accepted.len(), 1);
    assert!(agent.welcome.token_exp.unwrap() > now_unix());
}

#[test]
fn bad_tokens_are_refused_with_401_and_counted() {
    let key = SigningKey::generate("k1");
    let stranger = SigningKey::generate("k1"); // same kid, different key
    let (hub, _) = hub_with_jwks(&[&key], "");

    let (status, www) = refused_with(&hub, None);
    assert_eq!(status, 401);
    assert!(www.unwrap().starts_with("Bearer"));

    let mut expired = claims("agent-1");
    expired["exp"] = serde_json::json!(now_unix() - 3600);
    expired["nbf"] = serde_json::json!(now_unix() - 7200);
    let mut wrong_aud = claims("agent-1");
    wrong_aud["aud"] = serde_json::json!("someone-else");
    let mut wrong_iss = claims("agent-1");
    wrong_iss["iss"] = serde_json::json!("https://evil.test/");
    let mut no_agent = claims("agent-1");
    no_agent.as_object_mut().unwrap().remove("agent_id");

    let unknown_kid = SigningKey::generate("other-kid").token("agent-1");
    let header_none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims("agent-1").to_string());
    let alg_none = format!("{header_none}.{body}.");
    let good = key.token("agent-1");
    let mut parts: Vec<String> = good.split('.').map(String::from).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(claims("agent-2").to_string());
    let tampered = parts.join(".");

    // HS256 "signed" with the published public key as the HMAC secret (key confusion).
    let public_bytes = URL_SAFE_NO_PAD
        .decode(key.jwk["x"].as_str().unwrap())
        .unwrap();
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some("k1".into());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &claims("agent-1"),
        &jsonwebtoken::EncodingKey::from_secret(&public_bytes),
    )
    .unwrap();

    let cases = [
        (hs256, "algorithm"),
        (key.sign(&expired), "expired"),
        (key.sign(&wrong_aud), "audience"),
        (key.sign(&wrong_iss), "issuer"),
        (key.sign(&no_agent), "agent_id"),
        (unknown_kid, "unknown_kid"),
        (alg_none, "algorithm"),
        (stranger.token("agent-1"), "signature"),
        (tampered, "signature"),
        ("a".repeat(10_000), "too_large"),
    ];
    for (token, reason) in cases {
        let before = auth_failures(&hub, reason);
        let (status, www) = refused_with(&hub, Some(&format!("Bearer {token}")));
        assert_eq!(status, 401, "{reason}");
        assert_eq!(
            www.as_deref(),
            Some("Bearer error=\"invalid_token\""),
            "{reason}"
        );
        assert_eq!(
            auth_failures(&hub, reason),
            before + 1.0,
            "metric for {reason}"
        );
    }
    // A header block over 16 KiB is refused before any token check.
    let (status, _) = refused_with(&hub, Some(&format!("Bearer {}", "a".repeat(20_000))));
    assert_eq!(status, 431);
    assert_eq!(
        hub.metric("nowconnect_handshake_rejections_total{reason=\"bad_upgrade\"}"),
        Some(1.0)
    );
}

#[test]
fn hello_agent_id_must_match_the_token() {
    let key = SigningKey::generate("k1");
    let (hub, _) = hub_with_jwks(&[&key], "");
    let Upgrade::Open(mut stream, _) = upgrade(
        hub.addrs.tunnel,
        Some(&format!("Bearer {}", key.token("agent-1"))),
    ) else {
        panic!("refused")
    };
    let hello = r#"{"type":"hello","v":1,"agent_id":"agent-2","connectors":["svc"]}"#;
    let mut msg = Vec::new();
    ws::encode_frame(
        &mut msg,
        true,
        ws::Opcode::Text,
        hello.as_bytes(),
        Some([9, 8, 7, 6]),
    );
    stream.write_all(&msg).unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let mut decoder = ws::Decoder::new(ws::Role::Client, ws::Limits::default());
    let (_, event) = decoder.decode(&mut reply).unwrap();
    match event {
        Some(ws::Event::Close(Some(close))) => assert_eq!(close.code, ws::CloseCode::FORBIDDEN),
        other => panic!("expected close 4403, got {other:?}"),
    }
    assert_eq!(auth_failures(&hub, "agent_id_mismatch"), 1.0);
}

#[test]
fn a_rotated_key_in_the_jwks_file_is_picked_up_without_restart() {
    let old = SigningKey::generate("k1");
    let (hub, jwks) = hub_with_jwks(&[&old], "");
    let new = SigningKey::generate("k2");
    write_jwks(&jwks, &[&old, &new]);
    let agent = RawAgent::connect(hub.addrs.tunnel, &new.token("agent-1"), "agent-1", &["svc"]);
    assert_eq!(agent.welcome.accepted.len(), 1);
}

/// Serves `body()` as the JWKS over loopback HTTP.
fn jwks_server(body: Arc<Mutex<String>>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let body = body.lock().unwrap().clone();
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn a_jwks_served_over_loopback_http_rotates_too() {
    let old = SigningKey::generate("k1");
    let body = Arc::new(Mutex::new(
        serde_json::json!({ "keys": [old.jwk.clone()] }).to_string(),
    ));
    let addr = jwks_server(body.clone());
    let dir = TempDir::new("auth-http");
    let yaml = hub_yaml(std::path::Path::new("/unused"), &["svc"], "").replace(
        "jwks_url: \"file:///unused\"",
        &format!("jwks_url: \"http://{addr}/jwks.json\""),
    );
    let hub = Hub::start(dir, &yaml);
    let deadline = Instant::now() + WAIT;
    while hub.admin_get("/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "JWKS never loaded");
        std::thread::sleep(Duration::from_millis(50));
    }
    RawAgent::connect(hub.addrs.tunnel, &old.token("agent-1"), "agent-1", &["svc"]);
    let new = SigningKey::generate("k2");
    *body.lock().unwrap() =
        serde_json::json!({ "keys": [old.jwk.clone(), new.jwk.clone()] }).to_string();
    RawAgent::connect(hub.addrs.tunnel, &new.token("agent-1"), "agent-1", &["svc"]);
}

#[test]
fn agents_outside_the_tunnel_allow_list_get_403() {
    let key = SigningKey::generate("k1");
    let dir = TempDir::new("auth");
    let jwks = dir.path("jwks.json");
    write_jwks(&jwks, &[&key]);
    let yaml = hub_yaml(&jwks, &["svc"], "").replace(
        "tunnel: { listen: \"127.0.0.1:0\" }",
        "tunnel: { listen: \"127.0.0.1:0\", allow_cidrs: [\"10.0.0.0/8\"] }",
    );
    let hub = Hub::start(dir, &yaml);
    let (status, _) = refused_with(&hub, Some(&format!("Bearer {}", key.token("agent-1"))));
    assert_eq!(status, 403);
}

#[test]
fn garbage_and_slow_handshakes_do_not_disturb_other_agents() {
    let key = SigningKey::generate("k1");
    let (hub, _) = hub_with_jwks(&[&key], "handshake_timeout_ms: 500");
    // Garbage instead of an upgrade request.
    let mut junk = TcpStream::connect(hub.addrs.tunnel).unwrap();
    junk.write_all(b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    junk.set_read_timeout(Some(WAIT)).unwrap();
    let _ = junk.read_to_end(&mut reply);
    assert!(
        reply.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
    // A slow-loris: half a request, then nothing.
    let mut slow = TcpStream::connect(hub.addrs.tunnel).unwrap();
    slow.write_all(b"GET /nowconnect/v1/tunnel HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // Meanwhile a real agent connects and works.
    let mut agent = RawAgent::connect(hub.addrs.tunnel, &key.token("agent-1"), "agent-1", &["svc"]);
    // The slow one is cut off at the handshake timeout.
    slow.set_read_timeout(Some(WAIT)).unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(5));
    // Truncated and malformed frames end only the offending session.
    let mut bad = RawAgent::connect(hub.addrs.tunnel, &key.token("agent-1"), "agent-1", &["svc"]);
    bad.send_frames(&[0x09, 0, 0, 0, 1, 0, 0, 0, 0]);
    assert!(bad.wait_closed(WAIT));
    let _client = TcpStream::connect(hub.addrs.listeners[0]).unwrap();
    agent.expect(WAIT, |f| matches!(f, OwnedFrame::Open(..)));
    assert!(
        hub.metric("nowconnect_handshake_rejections_total{reason=\"timeout\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
}

/// A peer that keeps sending junk to the tunnel port is counted in full but logged only in
/// bursts (10 lines per kind every 10 s), and a flood of one kind does not silence another.
#[test]
fn a_flood_of_bad_handshakes_is_counted_in_full_and_logged_in_a_burst() {
    const JUNK: usize = 30;
    let key = SigningKey::generate("k1");
    let (hub, _) = hub_with_jwks(&[&key], "");
    let started = Instant::now();
    for _ in 0..JUNK {
        let mut junk = TcpStream::connect(hub.addrs.tunnel).unwrap();
        junk.write_all(b"NOT AN UPGRADE\r\n\r\n").unwrap();
        junk.set_read_timeout(Some(WAIT)).unwrap();
        let mut reply = Vec::new();
        let _ = junk.read_to_end(&mut reply);
        assert!(reply.starts_with(b"HTTP/1.1 400"));
    }
    let flood_took = started.elapsed();
    // Another kind of refusal after the flood is still logged.
    let (status, _) = refused_with(&hub, None);
    assert_eq!(status, 401);
    let logged = hub
        .logs_until("agent refused: authentication failed", WAIT)
        .iter()
        .filter(|l| l["message"] == "agent connection refused: bad upgrade request")
        .count();
    // Sent within one window, the flood shows 10 lines; spread over two, at most 20.
    if flood_took < Duration::from_secs(10) {
        assert_eq!(logged, 10);
    } else {
        assert!((10..=20).contains(&logged), "{logged} lines");
    }
    assert_eq!(
        hub.metric("nowconnect_handshake_rejections_total{reason=\"bad_upgrade\"}"),
        Some(JUNK as f64)
    );
}

/// With `require_connector_scopes`, a connector is accepted only if the token grants its
/// scope (`scope` string or `scp` array, `connector:<name>` by default); a refused one is
/// listed in WELCOME and its clients are never routed to the agent.
#[test]
fn connector_scopes_decide_which_connectors_an_agent_serves() {
    let dir = TempDir::new("scopes");
    let key = SigningKey::generate("k1");
    let jwks = dir.path("jwks.json");
    write_jwks(&jwks, &[&key]);
    let yaml = hub_yaml(&jwks, &["ldap", "pg", "web"], "").replace(
        "issuer: \"",
        "require_connector_scopes: true, connector_scope_prefix: \"tunnel/\", issuer: \"",
    );
    assert!(yaml.contains("require_connector_scopes: true"), "{yaml}");
    let hub = Hub::start(dir, &yaml);

    let mut scoped = claims("agent-1");
    // A scope for another prefix, or a name that only starts like the connector, grants
    // nothing.
    scoped["scope"] = "tunnel/ldap connector:pg tunnel/webserver openid".into();
    let agent = RawAgent::connect(
        hub.addrs.tunnel,
        &key.sign(&scoped),
        "agent-1",
        &["ldap", "pg", "web"],
    );
    let accepted: Vec<&str> = agent.welcome.accepted.iter().map(|c| c.as_str()).collect();
    assert_eq!(accepted, ["ldap"]);
    let refused: Vec<(&str, &str)> = agent
        .welcome
        .refused
        .iter()
        .map(|r| (r.connector.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(
        refused,
        [("pg", "scope"), ("web", "scope")],
        "connector without scope: WELCOME lists it as refused"
    );
    assert_eq!(
        auth_failures(&hub, "connector_scope"),
        2.0,
        "connector without scope: each refusal counted as connector_scope"
    );

    // A client of a refused connector is reset at once: no agent serves it.
    let mut client = TcpStream::connect(hub.addrs.listeners[1]).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 1];
    assert!(
        matches!(client.read(&mut buf), Ok(0) | Err(_)),
        "the client of an unserved connector is closed"
    );

    // `scp` as an array works the same way.
    let mut listed = claims("agent-2");
    listed["scp"] = serde_json::json!(["tunnel/pg", "tunnel/web"]);
    let second = RawAgent::connect(
        hub.addrs.tunnel,
        &key.sign(&listed),
        "agent-2",
        &["ldap", "pg", "web"],
    );
    let accepted: Vec<&str> = second.welcome.accepted.iter().map(|c| c.as_str()).collect();
    assert_eq!(accepted, ["pg", "web"]);
}
