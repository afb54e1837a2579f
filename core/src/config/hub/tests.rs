use std::collections::HashMap;

use super::*;

/// The DESIGN §6 example, with concrete file names and URLs.
const DESIGN_EXAMPLE: &str = r#"
replica_id: hub-a
hub: { shards: auto, driver: auto }
tunnel: { listen: "0.0.0.0:8443", path: /nowconnect/v1/tunnel, public_url: "wss://hub.example.com:8443/nowconnect/v1/tunnel",
          tls: { cert_file: /etc/nowconnect/tls.crt, key_file: /etc/nowconnect/tls.key, client_ca_file: /etc/nowconnect/ca.pem, client_auth: optional }, allow_cidrs: [] }
admin:  { listen: "127.0.0.1:9090" }          # /healthz /readyz /metrics
listeners:
  - { connector: ldap, listen: "0.0.0.0:389" }
  - { connector: pg,   listen: "0.0.0.0:5432", allow_cidrs: ["10.0.0.0/8"] }
security:
  jwks_url: https://idp.example.com/.well-known/jwks.json   # https://, http:// (loopback only) or file://
  audience: nowconnect
  issuer: https://idp.example.com/
  allow_cidrs: []            # clients allowed on all listeners; empty = any
  require_connector_scopes: false
  dpop: { required: false }
  mtls: { require_bound_tokens: false }
pdp: { url: "http://127.0.0.1:8181/v1/decide", timeout_ms: 300, cache_ttl_ms: 5000, fail_open: false }
limits: { stream_window_bytes: 262144, max_frame_bytes: 65536, idle_timeout_ms: 300000, sweep_interval_ms: 1000,
          open_timeout_ms: 10000, heartbeat_ms: 15000, drain_timeout_ms: 30000, max_streams_per_session: 65536,
          handshake_timeout_ms: 10000, max_pending_handshakes: 1024 }
logging: { format: json, level: info }
"#;

/// A production-style cloud deployment: TLS terminated at an ingress, env-supplied identity
/// provider, several listeners.
const CLOUD_YAML: &str = r#"
# config/cloud.yaml: hub replicas behind an L4 load balancer, TLS at the ingress.
replica_id: hub-eu-west-1a
hub:
  shards: 8
  driver: io_uring
tunnel:
  listen: "[::]:8080"
  path: /nowconnect/v1/tunnel
  public_url: wss://tunnel.example.com/nowconnect/v1/tunnel
  allow_cidrs:
    - 10.32.0.0/12          # ingress pods
    - fd00:10:32::/48
admin:
  listen: "0.0.0.0:9090"
listeners:
  - connector: ldap
    listen: "0.0.0.0:389"
  - connector: ldaps
    listen: "0.0.0.0:636"
  - connector: pg.main
    listen: "0.0.0.0:5432"
    allow_cidrs: [10.0.0.0/8, 192.168.7.7]
security:
  audience: nowconnect
  require_connector_scopes: true
  dpop:
    required: true
limits:
  idle_timeout_ms: 900000
  heartbeat_ms: 10000
logging:
  format: json
  level: debug
"#;

/// The smallest valid document.
const MINIMAL: &str = "security: { jwks_url: https://idp.example.com/jwks, audience: nc }\n";

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name: &str| map.get(name).cloned()
}

/// Loads `MINIMAL` followed by `extra` and expects an error.
fn load_err(extra: &str) -> ConfigError {
    let text = format!("{MINIMAL}{extra}");
    let err = HubConfig::load(&text, no_env).expect_err(&text);
    assert_one_line(&err);
    err
}

/// Loads `MINIMAL` with `env` and expects an error.
fn env_err(pairs: &[(&str, &str)]) -> ConfigError {
    let err = HubConfig::load(MINIMAL, env_of(pairs)).expect_err("env error");
    assert_one_line(&err);
    err
}

fn assert_one_line(err: &ConfigError) {
    let text = err.to_string();
    assert!(!text.contains('\n') && !text.contains('\r'), "{text:?}");
}

/// Asserts the error is about `key`, and its message starts with the key.
fn assert_key(err: &ConfigError, key: &str) {
    assert_eq!(err.key(), key, "{err}");
    assert!(err.to_string().starts_with(key), "{err}");
}

#[test]
fn defaults_are_documented_values() {
    let c = HubConfig::default();
    assert_eq!(c.replica_id, "hub");
    assert_eq!(c.hub.shards, Shards::Auto);
    assert_eq!(c.hub.driver, Driver::Auto);
    assert_eq!(c.hub.recv_buffers, 0, "no receive ring unless asked for");
    assert!(c.hub.splice, "bulk streams splice unless told not to");
    assert_eq!(c.tunnel.listen, "0.0.0.0:8443".parse().unwrap());
    assert_eq!(c.tunnel.path, "/nowconnect/v1/tunnel");
    assert_eq!(c.tunnel.public_url, None);
    assert_eq!(c.tunnel.tls, None);
    assert!(c.tunnel.allow_cidrs.is_empty());
    assert_eq!(c.admin.listen, "127.0.0.1:9090".parse().unwrap());
    assert!(c.listeners.is_empty());
    assert_eq!(c.security.jwks_url, None);
    assert_eq!(c.security.audience, None);
    assert_eq!(c.security.issuer, None);
    assert!(c.security.allow_cidrs.is_empty());
    assert!(!c.security.require_connector_scopes);
    assert!(!c.security.dpop.required);
    assert!(!c.security.mtls.require_bound_tokens);
    assert_eq!(c.pdp, None);
    let l = &c.limits;
    assert_eq!(l.stream_window_bytes, 262_144);
    assert_eq!(l.max_frame_bytes, 65_536);
    assert_eq!(l.idle_timeout_ms, 300_000);
    assert_eq!(l.sweep_interval_ms, 1_000);
    assert_eq!(l.open_timeout_ms, 10_000);
    assert_eq!(l.heartbeat_ms, 15_000);
    assert_eq!(l.drain_timeout_ms, 30_000);
    assert_eq!(l.max_streams_per_session, 65_536);
    assert_eq!(l.handshake_timeout_ms, 10_000);
    assert_eq!(l.max_pending_handshakes, 1_024);
    assert_eq!(c.logging.format, LogFormat::Json);
    assert_eq!(c.logging.level, LogLevel::Info);
}

#[test]
fn default_is_valid_apart_from_the_required_security_keys() {
    let mut c = HubConfig::default();
    assert_key(&c.validate().unwrap_err(), "security.jwks_url");
    c.security.jwks_url = Some("https://idp/jwks".into());
    assert_key(&c.validate().unwrap_err(), "security.audience");
    c.security.audience = Some("nc".into());
    c.validate().unwrap();
}

#[test]
fn empty_documents_give_defaults() {
    for text in ["", "\n", "# only a comment\n", "---\n", "{}\n"] {
        assert_eq!(
            HubConfig::from_yaml(text).unwrap(),
            HubConfig::default(),
            "{text:?}"
        );
    }
    let c = HubConfig::load(
        "",
        env_of(&[
            ("NOWCONNECT_JWKS_URL", "https://idp/jwks"),
            ("NOWCONNECT_AUDIENCE", "nc"),
        ]),
    )
    .unwrap();
    assert_eq!(c.security.audience.as_deref(), Some("nc"));
}

#[test]
fn design_example_parses() {
    let c = HubConfig::load(DESIGN_EXAMPLE, no_env).unwrap();
    assert_eq!(c.replica_id, "hub-a");
    assert_eq!(
        c.tunnel.public_url.as_ref().unwrap().as_str(),
        "wss://hub.example.com:8443/nowconnect/v1/tunnel"
    );
    let tls = c.tunnel.tls.as_ref().unwrap();
    assert_eq!(tls.client_auth, ClientAuth::Optional);
    assert_eq!(tls.cert_file, PathBuf::from("/etc/nowconnect/tls.crt"));
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[0].connector.as_str(), "ldap");
    assert_eq!(c.listeners[1].listen, "0.0.0.0:5432".parse().unwrap());
    assert!(
        c.listeners[1]
            .allow_cidrs
            .contains("10.1.1.1".parse().unwrap())
    );
    assert!(c.listeners[0].allow_cidrs.is_empty());
    assert_eq!(
        c.security.issuer.as_deref(),
        Some("https://idp.example.com/")
    );
    let pdp = c.pdp.as_ref().unwrap();
    assert_eq!(
        (pdp.timeout_ms, pdp.cache_ttl_ms, pdp.fail_open),
        (300, 5000, false)
    );
    // Every limit in the example is the default.
    assert_eq!(c.limits, LimitsConfig::default());
    assert_eq!(c.logging, LoggingConfig::default());
}

#[test]
fn cloud_sample_parses_with_env() {
    let c = HubConfig::load(
        CLOUD_YAML,
        env_of(&[
            ("NOWCONNECT_JWKS_URL", "https://login.example.com/keys"),
            ("NOWCONNECT_ISSUER", "https://login.example.com/"),
        ]),
    )
    .unwrap();
    assert_eq!(c.hub.shards, Shards::Count(8));
    assert_eq!(c.hub.driver, Driver::IoUring);
    assert_eq!(c.tunnel.listen, "[::]:8080".parse().unwrap());
    assert!(
        c.tunnel
            .allow_cidrs
            .allows("::ffff:10.33.0.1".parse().unwrap())
    );
    assert_eq!(c.listeners[2].connector.as_str(), "pg.main");
    assert!(
        c.listeners[2]
            .allow_cidrs
            .contains("192.168.7.7".parse().unwrap())
    );
    assert!(c.security.require_connector_scopes && c.security.dpop.required);
    assert_eq!(c.limits.idle_timeout_ms, 900_000);
    assert_eq!(c.limits.sweep_interval_ms, 1_000);
    assert_eq!(c.logging.level, LogLevel::Debug);
    assert_eq!(
        c.security.jwks_url.as_deref(),
        Some("https://login.example.com/keys")
    );
}

#[test]
fn env_overrides_file() {
    let text = format!("{MINIMAL}hub: {{ shards: 2 }}\nlogging: {{ format: json }}\n");
    let c = HubConfig::load(
        &text,
        env_of(&[
            ("NOWCONNECT_JWKS_URL", " file:///etc/nc/jwks.json "),
            ("NOWCONNECT_AUDIENCE", "other"),
            ("NOWCONNECT_ISSUER", "https://iss/"),
            ("NOWCONNECT_REQUIRE_CONNECTOR_SCOPES", "1"),
            ("NOWCONNECT_ALLOW_CIDRS", "10.0.0.0/8, fd00::/8"),
            ("NOWCONNECT_SHARDS", "auto"),
            ("NOWCONNECT_LOG_FORMAT", "text"),
        ]),
    )
    .unwrap();
    assert_eq!(
        c.security.jwks_url.as_deref(),
        Some("file:///etc/nc/jwks.json")
    );
    assert_eq!(c.security.audience.as_deref(), Some("other"));
    assert_eq!(c.security.issuer.as_deref(), Some("https://iss/"));
    assert!(c.security.require_connector_scopes);
    assert_eq!(c.security.allow_cidrs.len(), 2);
    assert_eq!(c.hub.shards, Shards::Auto);
    assert_eq!(c.logging.format, LogFormat::Text);

    let c = HubConfig::load(&text, env_of(&[("NOWCONNECT_SHARDS", "16")])).unwrap();
    assert_eq!(c.hub.shards, Shards::Count(16));
    let c = HubConfig::load(
        &text,
        env_of(&[("NOWCONNECT_REQUIRE_CONNECTOR_SCOPES", "false")]),
    )
    .unwrap();
    assert!(!c.security.require_connector_scopes);
}

#[test]
fn empty_env_values_are_ignored() {
    let c = HubConfig::load(
        MINIMAL,
        env_of(&[
            ("NOWCONNECT_JWKS_URL", ""),
            ("NOWCONNECT_ALLOW_CIDRS", "  "),
            ("NOWCONNECT_SHARDS", ""),
        ]),
    )
    .unwrap();
    assert_eq!(
        c.security.jwks_url.as_deref(),
        Some("https://idp.example.com/jwks")
    );
    assert!(c.security.allow_cidrs.is_empty());
}

#[test]
fn bad_env_values_name_the_variable() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "NOWCONNECT_JWKS_URL",
            "http://idp.example.com/jwks",
            "not loopback",
        ),
        ("NOWCONNECT_JWKS_URL", "ldap://idp/jwks", "wrong scheme"),
        (
            "NOWCONNECT_REQUIRE_CONNECTOR_SCOPES",
            "yes",
            "not a boolean",
        ),
        (
            "NOWCONNECT_ALLOW_CIDRS",
            "10.0.0.0/8,10.0.0.300",
            "`10.0.0.300`",
        ),
        (
            "NOWCONNECT_SHARDS",
            "many",
            "auto or an integer from 1 to 1024",
        ),
        ("NOWCONNECT_SHARDS", "0", "out of range"),
        ("NOWCONNECT_SHARDS", "1025", "out of range"),
        ("NOWCONNECT_SHARDS", "-2", "not accepted"),
        ("NOWCONNECT_LOG_FORMAT", "xml", "json or text"),
    ];
    for (var, value, needle) in cases {
        let err = env_err(&[(var, value)]);
        assert_key(&err, var);
        let text = err.to_string();
        assert!(text.contains(needle), "{text}");
    }
}

#[test]
fn unknown_keys_are_named() {
    for (extra, key, unknown) in [
        ("replicaid: x\n", "replicaid", "replicaid"),
        (
            "limits: { heartbeet_ms: 100 }\n",
            "limits.heartbeet_ms",
            "heartbeet_ms",
        ),
        ("hub: { threads: 2 }\n", "hub.threads", "threads"),
        (
            "tunnel: { tls: { cert_file: a, key_file: b, ca: c } }\n",
            "tunnel.tls.ca",
            "ca",
        ),
        (
            "listeners:\n  - { connector: a, listen: \"0.0.0.0:1\" }\n  - { connector: b, listen: \"0.0.0.0:2\", allow: [] }\n",
            "listeners[1].allow",
            "allow",
        ),
        (
            "pdp: { url: \"http://p/\", timeout: 1 }\n",
            "pdp.timeout",
            "timeout",
        ),
        ("logging: { fmt: json }\n", "logging.fmt", "fmt"),
    ] {
        let err = load_err(extra);
        assert_key(&err, key);
        assert!(matches!(err, ConfigError::Yaml { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains(&format!("unknown field `{unknown}`")),
            "{err}"
        );
    }
    // An unknown key inside `security`, which MINIMAL already opens, in block style.
    let err = HubConfig::load(
        "security:\n  jwks_url: https://idp/jwks\n  audience: nc\n  audiences: [x]\n",
        no_env,
    )
    .unwrap_err();
    assert_key(&err, "security.audiences");
    assert!(err.to_string().contains("line 4 column 3"), "{err}");
}

#[test]
fn wrong_types_name_the_key() {
    for (extra, key, needle) in [
        (
            "limits: { heartbeat_ms: fast }\n",
            "limits.heartbeat_ms",
            "`fast`",
        ),
        (
            "limits: { heartbeat_ms: -5 }\n",
            "limits.heartbeat_ms",
            "`-5`",
        ),
        (
            "limits: { stream_window_bytes: 99999999999 }\n",
            "limits.stream_window_bytes",
            "99999999999",
        ),
        (
            "hub: { shards: lots }\n",
            "hub.shards",
            "auto or an integer from 1 to 1024",
        ),
        (
            "hub: { driver: kqueue }\n",
            "hub.driver",
            "auto, io_uring or epoll",
        ),
        (
            "tunnel: { listen: \"localhost:8443\" }\n",
            "tunnel.listen",
            "localhost:8443",
        ),
        (
            "tunnel: { allow_cidrs: 10.0.0.0/8 }\n",
            "tunnel.allow_cidrs",
            "line 2",
        ),
        (
            "tunnel: { allow_cidrs: [10.0.0.0/8, 10.0.0.0/99] }\n",
            "tunnel.allow_cidrs",
            "`10.0.0.0/99`",
        ),
        (
            "tunnel: { public_url: \"https://hub/t\" }\n",
            "tunnel.public_url",
            "wrong scheme",
        ),
        (
            "tunnel: { public_url: \"wss:///t\" }\n",
            "tunnel.public_url",
            "no host",
        ),
        (
            "tunnel: { tls: { cert_file: a, key_file: b, client_auth: sometimes } }\n",
            "tunnel.tls.client_auth",
            "none, optional or required",
        ),
        (
            "tunnel: { tls: { cert_file: a } }\n",
            "tunnel.tls",
            "missing field `key_file`",
        ),
        (
            "listeners: [{ connector: \"ld ap\", listen: \"0.0.0.0:389\" }]\n",
            "listeners[0].connector",
            "[A-Za-z0-9._-]",
        ),
        (
            "listeners: [{ listen: \"0.0.0.0:389\" }]\n",
            "listeners[0]",
            "missing field `connector`",
        ),
        ("listeners: { connector: a }\n", "listeners", "line 2"),
        ("pdp: { timeout_ms: 5 }\n", "pdp", "missing field `url`"),
        (
            "logging: { level: verbose }\n",
            "logging.level",
            "error, warn, info, debug or trace",
        ),
        (
            "security: { jwks_url: https://idp/jwks, audience: nc, dpop: { required: maybe } }\n",
            "security.dpop.required",
            "line",
        ),
        ("replica_id: [a, b]\n", "replica_id", "line 2"),
        ("admin: 9090\n", "admin", "line 2"),
    ] {
        let text = if extra.starts_with("security:") {
            extra.to_owned()
        } else {
            format!("{MINIMAL}{extra}")
        };
        let err = HubConfig::load(&text, no_env).expect_err(extra);
        assert_one_line(&err);
        assert_key(&err, key);
        assert!(err.to_string().contains(needle), "{extra}: {err}");
    }
}

#[test]
fn yaml_syntax_errors_are_one_line() {
    for text in [
        "limits: { heartbeat_ms: 100\n",
        "listeners:\n  - { connector: a\n",
        "replica_id: \"unterminated\n",
        "a: b: c\n",
        "limits: {}\nlimits: {}\n",
        "--- {}\n--- {}\n",
        "security: [\n",
    ] {
        let err = HubConfig::load(text, no_env).expect_err(text);
        assert_one_line(&err);
        assert!(matches!(err, ConfigError::Yaml { .. }), "{err:?}");
        assert!(err.to_string().contains("line "), "{text:?}: {err}");
    }
    let err = HubConfig::from_yaml("- a\n- b\n").unwrap_err();
    assert_key(&err, "(document)");
    let err = HubConfig::from_yaml("--- {}\n--- {}\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "(document): multiple YAML documents detected (line 2 column 5)"
    );
    let err = HubConfig::from_yaml("admin: {}\nadmin: {}\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "(document): duplicate mapping key: admin (line 2 column 1)"
    );
}

#[test]
fn replica_id_rules() {
    HubConfig::load(&format!("{MINIMAL}replica_id: hub_a.1-x\n"), no_env).unwrap();
    for bad in ["\"\"", "\"hub a\"", "hub/a", &"h".repeat(65)] {
        let err = load_err(&format!("replica_id: {bad}\n"));
        assert_key(&err, "replica_id");
        assert!(err.to_string().contains("[A-Za-z0-9._-]"), "{err}");
    }
}

#[test]
fn shards_rules() {
    for ok in ["auto", "1", "1024", "\"4\""] {
        HubConfig::load(&format!("{MINIMAL}hub: {{ shards: {ok} }}\n"), no_env).unwrap();
    }
    for bad in ["0", "1025"] {
        let err = load_err(&format!("hub: {{ shards: {bad} }}\n"));
        assert_key(&err, "hub.shards");
        assert_eq!(
            err.to_string(),
            format!(
                "hub.shards: `{bad}` is out of range, expected auto or an integer from 1 to 1024"
            )
        );
    }
}

#[test]
fn recv_buffers_rules() {
    for ok in [0, 8, 256, 16_384] {
        let c =
            HubConfig::load(&format!("{MINIMAL}hub: {{ recv_buffers: {ok} }}\n"), no_env).unwrap();
        assert_eq!(c.hub.recv_buffers, ok);
    }
    for bad in [1, 7, 16_385] {
        let err = load_err(&format!("hub: {{ recv_buffers: {bad} }}\n"));
        assert_key(&err, "hub.recv_buffers");
        assert_eq!(
            err.to_string(),
            format!(
                "hub.recv_buffers: `{bad}` is out of range, expected 0 (no receive ring) or an \
                 integer from 8 to 16384"
            )
        );
    }
}

#[test]
fn splice_is_a_switch() {
    let c = HubConfig::load(&format!("{MINIMAL}hub: {{ splice: false }}\n"), no_env).unwrap();
    assert!(!c.hub.splice);
    let c = HubConfig::load(MINIMAL, no_env).unwrap();
    assert!(c.hub.splice, "on when the hub section leaves it out");
    let err = load_err("hub: { splice: sometimes }\n");
    assert_key(&err, "hub.splice");
}

#[test]
fn tunnel_path_rules() {
    HubConfig::load(&format!("{MINIMAL}tunnel: {{ path: /t }}\n"), no_env).unwrap();
    for (bad, needle) in [
        ("tunnel", "does not start with /"),
        ("\"/a?b=1\"", "query"),
        ("\"/a#b\"", "query or fragment"),
        ("\"/a b\"", "whitespace"),
        ("\"/a\\tb\"", "whitespace"),
        ("\"/é\"", "visible ASCII"),
        (&format!("/{}", "a".repeat(1024)), "too long"),
    ] {
        let err = load_err(&format!("tunnel: {{ path: {bad} }}\n"));
        assert_key(&err, "tunnel.path");
        assert!(err.to_string().contains(needle), "{err}");
    }
}

#[test]
fn public_url_rules() {
    let c = HubConfig::load(
        &format!(
            "{MINIMAL}tunnel: {{ public_url: \"ws://10.0.0.1:8080/nowconnect/v1/tunnel\" }}\n"
        ),
        no_env,
    )
    .unwrap();
    assert!(!c.tunnel.public_url.unwrap().is_tls());
    for bad in ["wss://hub", "http://hub/t", "wss://u:p@hub/t", "hub/t"] {
        let err = load_err(&format!("tunnel: {{ public_url: \"{bad}\" }}\n"));
        assert_key(&err, "tunnel.public_url");
        assert!(!err.to_string().contains("u:p@"), "{err}");
    }
}

#[test]
fn tls_rules() {
    let tls = |body: &str| format!("tunnel: {{ tls: {{ {body} }} }}\n");
    HubConfig::load(
        &format!("{MINIMAL}{}", tls("cert_file: c, key_file: k")),
        no_env,
    )
    .unwrap();
    HubConfig::load(
        &format!(
            "{MINIMAL}{}",
            tls("cert_file: c, key_file: k, client_auth: required, client_ca_file: ca")
        ),
        no_env,
    )
    .unwrap();

    let err = load_err(&tls("cert_file: \"\", key_file: k"));
    assert_key(&err, "tunnel.tls.cert_file");
    assert!(err.to_string().contains("is empty"), "{err}");
    let err = load_err(&tls("cert_file: c, key_file: \"\""));
    assert_key(&err, "tunnel.tls.key_file");
    let err = load_err(&tls(
        "cert_file: c, key_file: k, client_auth: optional, client_ca_file: \"\"",
    ));
    assert_key(&err, "tunnel.tls.client_ca_file");

    // Client certificates without a CA: only for certificate-bound tokens.
    let err = load_err(&tls("cert_file: c, key_file: k, client_auth: required"));
    assert_key(&err, "tunnel.tls.client_ca_file");
    assert!(matches!(err, ConfigError::Missing { .. }), "{err:?}");
    assert!(err.to_string().contains("require_bound_tokens"), "{err}");
    let bound = "security: { jwks_url: https://idp/jwks, audience: nc, mtls: { require_bound_tokens: true } }\n";
    let c = HubConfig::load(
        &format!(
            "{bound}{}",
            tls("cert_file: c, key_file: k, client_auth: required")
        ),
        no_env,
    )
    .unwrap();
    assert!(c.security.mtls.require_bound_tokens);

    // A CA bundle that would be ignored.
    let err = load_err(&tls("cert_file: c, key_file: k, client_ca_file: ca"));
    assert_key(&err, "tunnel.tls.client_ca_file");
    assert!(err.to_string().contains("client_auth is none"), "{err}");
}

#[test]
fn bound_tokens_need_client_certificates() {
    let bound = "security: { jwks_url: https://idp/jwks, audience: nc, mtls: { require_bound_tokens: true } }\n";
    for tunnel in [
        "",
        "tunnel: { tls: { cert_file: c, key_file: k } }\n",
        "tunnel: { tls: { cert_file: c, key_file: k, client_auth: none } }\n",
    ] {
        let err = HubConfig::load(&format!("{bound}{tunnel}"), no_env).unwrap_err();
        assert_one_line(&err);
        assert_key(&err, "security.mtls.require_bound_tokens");
    }
}

#[test]
fn dpop_and_certificate_binding_cannot_both_be_required() {
    let tls = "tunnel: { tls: { cert_file: c, key_file: k, client_auth: required } }\n";
    let both = "security: { jwks_url: https://idp/jwks, audience: nc, dpop: { required: true }, mtls: { require_bound_tokens: true } }\n";
    let err = HubConfig::load(&format!("{both}{tls}"), no_env).unwrap_err();
    assert_one_line(&err);
    assert_key(&err, "security.dpop.required");
    let dpop = "security: { jwks_url: https://idp/jwks, audience: nc, dpop: { required: true } }\n";
    let c = HubConfig::load(dpop, no_env).unwrap();
    assert!(c.security.dpop.required);
}

#[test]
fn listen_addresses_must_be_distinct() {
    let cases = [
        (
            "listeners: [{ connector: a, listen: \"0.0.0.0:8443\" }]\n",
            "listeners[0].listen",
            "tunnel.listen",
        ),
        (
            "listeners: [{ connector: a, listen: \"127.0.0.1:9090\" }]\n",
            "listeners[0].listen",
            "admin.listen",
        ),
        (
            "admin: { listen: \"0.0.0.0:8443\" }\n",
            "admin.listen",
            "tunnel.listen",
        ),
        (
            "listeners: [{ connector: a, listen: \"10.0.0.1:389\" }, { connector: b, listen: \"10.0.0.1:389\" }]\n",
            "listeners[1].listen",
            "listeners[0].listen",
        ),
        (
            "listeners: [{ connector: a, listen: \"10.0.0.1:389\" }, { connector: b, listen: \"0.0.0.0:389\" }]\n",
            "listeners[1].listen",
            "listeners[0].listen",
        ),
        (
            "listeners: [{ connector: a, listen: \"[::]:389\" }, { connector: b, listen: \"[fd00::1]:389\" }]\n",
            "listeners[1].listen",
            "listeners[0].listen",
        ),
        // `[::]` is bound dual-stack, so it takes IPv4 too.
        (
            "listeners: [{ connector: a, listen: \"[::]:389\" }, { connector: b, listen: \"0.0.0.0:389\" }]\n",
            "listeners[1].listen",
            "listeners[0].listen",
        ),
        (
            "listeners: [{ connector: a, listen: \"127.0.0.1:389\" }, { connector: b, listen: \"[::ffff:127.0.0.1]:389\" }]\n",
            "listeners[1].listen",
            "listeners[0].listen",
        ),
    ];
    for (extra, key, other) in cases {
        let err = load_err(extra);
        assert_key(&err, key);
        assert!(
            err.to_string().contains(&format!("conflicts with {other}")),
            "{err}"
        );
    }
    // Different IPs, different families, or ephemeral ports do not conflict.
    HubConfig::load(
        &format!(
            "{MINIMAL}listeners: [{{ connector: a, listen: \"10.0.0.1:389\" }}, {{ connector: a, listen: \"10.0.0.2:389\" }}, \
             {{ connector: a, listen: \"[fd00::1]:389\" }}, {{ connector: b, listen: \"127.0.0.1:0\" }}, {{ connector: c, listen: \"127.0.0.1:0\" }}]\n"
        ),
        no_env,
    )
    .unwrap();
}

#[test]
fn security_rules() {
    let sec = |body: &str| {
        let err = HubConfig::load(&format!("security: {{ {body} }}\n"), no_env).unwrap_err();
        assert_one_line(&err);
        err
    };
    let err = sec("audience: nc");
    assert_key(&err, "security.jwks_url");
    assert!(matches!(err, ConfigError::Missing { .. }));
    assert!(err.to_string().contains("NOWCONNECT_JWKS_URL"), "{err}");
    let err = sec("jwks_url: https://idp/jwks");
    assert_key(&err, "security.audience");
    assert!(err.to_string().contains("NOWCONNECT_AUDIENCE"), "{err}");
    let err = sec("jwks_url: https://idp/jwks, audience: \" \"");
    assert_key(&err, "security.audience");
    let err = sec("jwks_url: https://idp/jwks, audience: nc, issuer: \"\"");
    assert_key(&err, "security.issuer");
    for (bad, needle) in [
        ("http://idp.example.com/jwks", "not loopback"),
        ("http://10.0.0.1/jwks", "not loopback"),
        ("ftp://idp/jwks", "wrong scheme"),
        ("https:///jwks", "no host"),
        ("file://nfs-server/jwks.json", "remote host"),
        ("jwks.json", "not a URL"),
        // A WHATWG client reads `\` as `/`: the real host would be evil.example.
        ("http://evil.example\\\\@127.0.0.1/jwks", "backslash"),
        ("http://%6c%6fcalhost/jwks", "percent-escaped"),
        ("https://user:s3cret@idp.example.com/jwks", "credentials"),
    ] {
        let err = sec(&format!("jwks_url: \"{bad}\", audience: nc"));
        assert_key(&err, "security.jwks_url");
        assert!(err.to_string().contains(needle), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
    for ok in [
        "http://127.0.0.1:8080/jwks",
        "http://localhost/jwks",
        "http://[::1]:8080/jwks",
        "file:///etc/nowconnect/jwks.json",
    ] {
        HubConfig::load(
            &format!("security: {{ jwks_url: \"{ok}\", audience: nc }}\n"),
            no_env,
        )
        .unwrap();
    }
}

#[test]
fn pdp_rules() {
    let c = HubConfig::load(
        &format!("{MINIMAL}pdp: {{ url: \"https://pdp/decide\" }}\n"),
        no_env,
    )
    .unwrap();
    let pdp = c.pdp.unwrap();
    assert_eq!(
        (pdp.timeout_ms, pdp.cache_ttl_ms, pdp.fail_open),
        (300, 5000, false)
    );
    assert_eq!((pdp.dialect, pdp.token_file), (PdpDialect::AuthZen, None));
    let c = HubConfig::load(
        &format!(
            "{MINIMAL}pdp: {{ url: \"http://pdp/\", cache_ttl_ms: 0, dialect: legacy, token_file: /run/pdp.token }}\n"
        ),
        no_env,
    )
    .unwrap();
    let pdp = c.pdp.unwrap();
    assert_eq!(
        (pdp.dialect, pdp.token_file.as_deref()),
        (
            PdpDialect::Legacy,
            Some(std::path::Path::new("/run/pdp.token"))
        )
    );
    for (pdp, key) in [
        ("url: \"grpc://pdp/\"", "pdp.url"),
        ("url: \"http:///decide\"", "pdp.url"),
        ("url: \"http://pdp/\", timeout_ms: 0", "pdp.timeout_ms"),
        ("url: \"http://pdp/\", timeout_ms: 60001", "pdp.timeout_ms"),
        (
            "url: \"http://pdp/\", cache_ttl_ms: 86400001",
            "pdp.cache_ttl_ms",
        ),
        ("url: \"http://pdp/\", dialect: opa", "pdp.dialect"),
        ("url: \"http://pdp/\", token_file: \"\"", "pdp.token_file"),
    ] {
        let err = load_err(&format!("pdp: {{ {pdp} }}\n"));
        assert_key(&err, key);
    }
}

#[test]
fn limits_ranges() {
    let cases: &[(&str, &[u64], &[u64])] = &[
        (
            "stream_window_bytes",
            &[1023, 16_777_217],
            &[65_536, 16_777_216],
        ),
        ("max_frame_bytes", &[1023, 16_777_217], &[1024, 262_144]),
        ("idle_timeout_ms", &[0, 604_800_001], &[1_000, 604_800_000]),
        ("sweep_interval_ms", &[0, 60_001], &[1, 60_000]),
        ("open_timeout_ms", &[0, 600_001], &[1, 600_000]),
        ("heartbeat_ms", &[0, 99, 3_600_001], &[100, 3_600_000]),
        ("drain_timeout_ms", &[0, 3_600_001], &[1, 3_600_000]),
        ("max_streams_per_session", &[0, 1_048_577], &[1, 1_048_576]),
        ("handshake_timeout_ms", &[0, 600_001], &[1, 600_000]),
        ("max_pending_handshakes", &[0, 1_048_577], &[1, 1_048_576]),
    ];
    for (key, bad, good) in cases {
        for value in *good {
            HubConfig::load(&format!("{MINIMAL}limits: {{ {key}: {value} }}\n"), no_env)
                .unwrap_or_else(|e| panic!("{key}={value}: {e}"));
        }
        for value in *bad {
            let err = load_err(&format!("limits: {{ {key}: {value} }}\n"));
            assert_key(&err, &format!("limits.{key}"));
            assert!(
                err.to_string()
                    .contains(&format!("`{value}` is out of range")),
                "{err}"
            );
        }
    }
    let err = load_err("limits: { heartbeat_ms: 50 }\n");
    assert_eq!(
        err.to_string(),
        "limits.heartbeat_ms: `50` is out of range, expected an integer from 100 to 3600000"
    );
}

#[test]
fn limits_relations() {
    let err = load_err("limits: { stream_window_bytes: 65536, max_frame_bytes: 131072 }\n");
    assert_key(&err, "limits.max_frame_bytes");
    assert!(
        err.to_string()
            .contains("at most limits.stream_window_bytes (65536)"),
        "{err}"
    );
    let err = load_err("limits: { idle_timeout_ms: 500, sweep_interval_ms: 1000 }\n");
    assert_key(&err, "limits.sweep_interval_ms");
    assert!(
        err.to_string()
            .contains("at most limits.idle_timeout_ms (500)"),
        "{err}"
    );
    // Short timers, as end-to-end tests use them, are fine.
    HubConfig::load(
        &format!("{MINIMAL}limits: {{ idle_timeout_ms: 200, sweep_interval_ms: 50, heartbeat_ms: 100 }}\n"),
        no_env,
    )
    .unwrap();
}

#[test]
fn errors_are_single_lines_even_with_odd_values() {
    let err = load_err("replica_id: \"a\\nb\"\n");
    assert_key(&err, "replica_id");
    assert!(err.to_string().contains("a\\nb"), "{err}");
    let err = load_err(&format!(
        "tunnel: {{ path: \"/{}\\n\" }}\n",
        "x".repeat(500)
    ));
    assert!(err.to_string().contains('…'), "{err}");
}
