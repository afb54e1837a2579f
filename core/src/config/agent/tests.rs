use std::collections::HashMap;

use super::*;

/// A complete agent file, as an operator would write it.
const AGENT_YAML: &str = r#"
# agent.yaml for a branch office; the token is provisioned by the host's secret store.
hub_url:
  - wss://hub-a.example.com/nowconnect/v1/tunnel
  - wss://hub-b.example.com:8443/nowconnect/v1/tunnel
agent_id: branch-07@eu:ldap
token_file: /var/run/secrets/nowconnect/token
connectors:
  ldap: ldap.corp.internal:389
  ldaps: "10.1.2.3:636"
  pg: "[fd00::5]:5432"
lanes: 4
trust_env: true
ca_file: /etc/nowconnect/ca.pem
client_cert: /etc/nowconnect/agent.crt
client_key: /etc/nowconnect/agent.key
dpop_key_file: /etc/nowconnect/dpop.pem
health_addr: "127.0.0.1:8081"
log_format: json
log_level: debug
dial_timeout_ms: 5000
splice: false
"#;

/// The smallest valid file.
const MINIMAL: &str =
    "hub_url: wss://hub/t\nagent_id: a1\ntoken_file: /t\nconnectors: { ldap: \"ldap:389\" }\n";

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

fn assert_key(err: &ConfigError, key: &str) {
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text:?}");
    assert_eq!(err.key(), key, "{text}");
    assert!(text.starts_with(key), "{text}");
}

/// Loads `yaml` with `env` and expects an error about `key` whose message holds `needle`.
fn expect_err(yaml: Option<&str>, env: &[(&str, &str)], key: &str, needle: &str) {
    let err = AgentConfig::load(yaml, env_of(env)).expect_err(key);
    assert_key(&err, key);
    assert!(err.to_string().contains(needle), "{err}");
}

#[test]
fn defaults() {
    let c = AgentConfig::default();
    assert!(c.hub_urls.is_empty());
    assert!(c.agent_id.is_empty());
    assert!(c.token_file.as_os_str().is_empty());
    assert!(c.connectors.is_empty());
    assert_eq!(c.lanes, Lanes::Auto);
    assert!(!c.trust_env);
    assert_eq!(c.ca_file, None);
    assert_eq!(c.client_cert, None);
    assert_eq!(c.client_key, None);
    assert_eq!(c.dpop_key_file, None);
    assert_eq!(c.health_addr, None);
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.log_level, LogLevel::Info);
    assert_eq!(c.dial_timeout_ms, 10_000);
    assert_eq!(AgentConfig::from_yaml("").unwrap(), c);
    assert_eq!(AgentConfig::from_yaml("# nothing\n").unwrap(), c);
}

#[test]
fn full_file_parses() {
    let c = AgentConfig::load(Some(AGENT_YAML), no_env).unwrap();
    assert_eq!(c.hub_urls.len(), 2);
    assert_eq!(c.hub_urls[1].port(), 8443);
    assert_eq!(c.agent_id, "branch-07@eu:ldap");
    assert_eq!(
        c.token_file,
        PathBuf::from("/var/run/secrets/nowconnect/token")
    );
    let mut names: Vec<&str> = c.connectors.keys().map(|n| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["ldap", "ldaps", "pg"]);
    let pg = &c.connectors[&ConnectorName::from_str("pg").unwrap()];
    assert_eq!((pg.host(), pg.port()), ("fd00::5", 5432));
    assert_eq!(c.lanes, Lanes::Count(4));
    assert!(c.trust_env);
    assert_eq!(c.ca_file, Some(PathBuf::from("/etc/nowconnect/ca.pem")));
    assert!(c.client_cert.is_some() && c.client_key.is_some());
    assert!(c.dpop_key_file.is_some());
    assert_eq!(c.health_addr, Some("127.0.0.1:8081".parse().unwrap()));
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.log_level, LogLevel::Debug);
    assert_eq!(c.dial_timeout_ms, 5000);
    assert!(!c.splice);
}

#[test]
fn environment_alone_is_enough() {
    let c = AgentConfig::load(
        None,
        env_of(&[
            (
                "NC_HUB_URL",
                "wss://a.example.com/nowconnect/v1/tunnel, ws://127.0.0.1:8080/nowconnect/v1/tunnel",
            ),
            ("NC_AGENT_ID", "agent-foo-01"),
            ("NC_TOKEN_FILE", "/run/token"),
            ("NC_CONNECTORS", "ldap=ldap.internal:389,pg=[::1]:5432,"),
            ("NC_LANES", "auto"),
            ("NC_TRUST_ENV", "0"),
        ]),
    )
    .unwrap();
    assert_eq!(c.hub_urls.len(), 2);
    assert!(!c.hub_urls[1].is_tls());
    assert_eq!(c.connectors.len(), 2);
    assert_eq!(c.lanes, Lanes::Auto);
    assert!(!c.trust_env);
    assert_eq!(c.log_format, LogFormat::Text);
    assert!(c.splice, "splice is on by default");
}

#[test]
fn env_overrides_file() {
    let c = AgentConfig::load(
        Some(AGENT_YAML),
        env_of(&[
            ("NC_HUB_URL", "wss://other/t"),
            ("NC_AGENT_ID", "override"),
            ("NC_TOKEN_FILE", "/other/token"),
            ("NC_CONNECTORS", "smtp=mail:25"),
            ("NC_LANES", "2"),
            ("NC_TRUST_ENV", "false"),
            ("NC_CA_FILE", "/ca2"),
            ("NC_CLIENT_CERT", "/c2"),
            ("NC_CLIENT_KEY", "/k2"),
            ("NC_DPOP_KEY_FILE", "/d2"),
            ("NC_HEALTH_ADDR", "[::1]:9000"),
            ("NC_LOG_FORMAT", "text"),
            ("NC_LOG_LEVEL", "warn"),
            ("NC_DIAL_TIMEOUT_MS", "250"),
            ("NC_SPLICE", "true"),
        ]),
    )
    .unwrap();
    assert_eq!(c.hub_urls.len(), 1);
    assert_eq!(c.hub_urls[0].as_str(), "wss://other/t");
    assert_eq!(c.agent_id, "override");
    assert_eq!(c.token_file, PathBuf::from("/other/token"));
    // The variable replaces the whole map.
    assert_eq!(c.connectors.len(), 1);
    assert_eq!(
        c.connectors[&ConnectorName::from_str("smtp").unwrap()].to_string(),
        "mail:25"
    );
    assert_eq!(c.lanes, Lanes::Count(2));
    assert!(!c.trust_env);
    assert_eq!(c.ca_file, Some(PathBuf::from("/ca2")));
    assert_eq!(c.client_cert, Some(PathBuf::from("/c2")));
    assert_eq!(c.client_key, Some(PathBuf::from("/k2")));
    assert_eq!(c.dpop_key_file, Some(PathBuf::from("/d2")));
    assert_eq!(c.health_addr, Some("[::1]:9000".parse().unwrap()));
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.log_level, LogLevel::Warn);
    assert_eq!(c.dial_timeout_ms, 250);
    assert!(c.splice);
}

#[test]
fn hub_url_accepts_a_string_or_a_list() {
    let one = "hub_url: \"wss://a/t, wss://b/t\"\nagent_id: a\ntoken_file: /t\nconnectors: { x: \"h:1\" }\n";
    let c = AgentConfig::load(Some(one), no_env).unwrap();
    assert_eq!(c.hub_urls.len(), 2);
}

#[test]
fn required_keys() {
    expect_err(None, &[], "hub_url", "NC_HUB_URL");
    let base = [
        ("NC_HUB_URL", "wss://h/t"),
        ("NC_AGENT_ID", "a"),
        ("NC_TOKEN_FILE", "/t"),
        ("NC_CONNECTORS", "x=h:1"),
    ];
    AgentConfig::load(None, env_of(&base)).unwrap();
    for (i, (key, var)) in [
        ("hub_url", "NC_HUB_URL"),
        ("agent_id", "NC_AGENT_ID"),
        ("token_file", "NC_TOKEN_FILE"),
        ("connectors", "NC_CONNECTORS"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut env = base.to_vec();
        env.remove(i);
        let err = AgentConfig::load(None, env_of(&env)).unwrap_err();
        assert_key(&err, key);
        assert!(matches!(err, ConfigError::Missing { .. }), "{err:?}");
        assert!(err.to_string().contains(var), "{err}");
    }
    // Empty lists in YAML are as good as absent.
    expect_err(
        Some("hub_url: []\nagent_id: a\ntoken_file: /t\nconnectors: { x: \"h:1\" }\n"),
        &[],
        "hub_url",
        "is not set",
    );
    expect_err(
        Some("hub_url: wss://h/t\nagent_id: a\ntoken_file: /t\nconnectors: {}\n"),
        &[],
        "connectors",
        "is not set",
    );
    expect_err(
        Some("hub_url: wss://h/t\nagent_id: a\ntoken_file: \"\"\nconnectors: { x: \"h:1\" }\n"),
        &[],
        "token_file",
        "is not set",
    );
}

#[test]
fn bad_env_values_name_the_variable() {
    let cases: &[(&str, &str, &str)] = &[
        ("NC_HUB_URL", "https://hub/t", "wrong scheme"),
        ("NC_HUB_URL", "wss://a/t,wss://b", "`wss://b` has no path"),
        ("NC_HUB_URL", "wss:///t", "no host"),
        (
            "NC_HUB_URL",
            "wss://user:secret@hub/t",
            "`wss://***@hub/t` holds credentials",
        ),
        ("NC_AGENT_ID", "agent 1", "not allowed"),
        ("NC_AGENT_ID", "agent/1", "[A-Za-z0-9._:@-]"),
        ("NC_CONNECTORS", "ldap", "has no `=`"),
        ("NC_CONNECTORS", "ld ap=h:389", "bad name"),
        ("NC_CONNECTORS", "ldap=h", "has no port"),
        ("NC_CONNECTORS", "ldap=h:0", "out of range"),
        ("NC_CONNECTORS", "ldap=h:70000", "out of range"),
        ("NC_CONNECTORS", "ldap==389", "has no port"),
        ("NC_CONNECTORS", "ldap=:389", "no host"),
        ("NC_CONNECTORS", "ldap=::1:389", "brackets"),
        ("NC_CONNECTORS", "a=h:1,a=h:2", "twice"),
        ("NC_LANES", "0", "out of range"),
        ("NC_LANES", "65", "out of range"),
        ("NC_LANES", "several", "auto or an integer from 1 to 64"),
        ("NC_TRUST_ENV", "maybe", "not a boolean"),
        ("NC_HEALTH_ADDR", "localhost:8081", "IP address and port"),
        ("NC_LOG_FORMAT", "yaml", "json or text"),
        ("NC_LOG_LEVEL", "loud", "error, warn, info, debug or trace"),
        ("NC_DIAL_TIMEOUT_MS", "soon", "integer from 1 to 300000"),
        ("NC_DIAL_TIMEOUT_MS", "0", "out of range"),
        ("NC_DIAL_TIMEOUT_MS", "300001", "out of range"),
    ];
    for (var, value, needle) in cases {
        let err = AgentConfig::load(Some(MINIMAL), env_of(&[(var, value)])).expect_err(var);
        assert_key(&err, var);
        let text = err.to_string();
        assert!(text.contains(needle), "{var}={value}: {text}");
        assert!(!text.contains("secret"), "{text}");
    }
}

#[test]
fn yaml_value_rules() {
    let with = |extra: &str| format!("{MINIMAL}{extra}");
    let cases: &[(&str, &str, &str)] = &[
        ("lanes: 0\n", "lanes", "out of range"),
        ("lanes: 65\n", "lanes", "out of range"),
        ("lanes: many\n", "lanes", "auto or an integer from 1 to 64"),
        ("ca_file: \"\"\n", "ca_file", "is empty"),
        ("dpop_key_file: \"\"\n", "dpop_key_file", "is empty"),
        (
            "client_cert: /c\n",
            "client_key",
            "is not set while client_cert is `/c`",
        ),
        (
            "client_key: /k\n",
            "client_cert",
            "is not set while client_key is `/k`",
        ),
        ("dial_timeout_ms: 0\n", "dial_timeout_ms", "out of range"),
        (
            "dial_timeout_ms: 300001\n",
            "dial_timeout_ms",
            "out of range",
        ),
        ("health_addr: \"localhost:1\"\n", "health_addr", "line 5"),
        ("log_format: xml\n", "log_format", "json or text"),
        ("log_level: loud\n", "log_level", "error, warn"),
        ("trust_env: sometimes\n", "trust_env", "line 5"),
        ("extra_key: 1\n", "extra_key", "unknown field `extra_key`"),
    ];
    for (extra, key, needle) in cases {
        expect_err(Some(&with(extra)), &[], key, needle);
    }
}

#[test]
fn yaml_structure_rules() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "hub_url: [wss://a/t, \"https://b/t\"]\n",
            "hub_url[1]",
            "wrong scheme",
        ),
        ("hub_url: \"wss://a/t, ws://b\"\n", "hub_url", "no path"),
        (
            "hub_url: [wss://a/t, wss://a/t]\n",
            "hub_url[1]",
            "listed twice",
        ),
        ("agent_id: \"has space\"\n", "agent_id", "not allowed"),
        (
            &format!("agent_id: {}\n", "a".repeat(129)),
            "agent_id",
            "too long",
        ),
        (
            "connectors: { \"bad name\": \"h:1\" }\n",
            "connectors.bad name",
            "[A-Za-z0-9._-]",
        ),
        (
            "connectors: { ldap: \"h:99999\" }\n",
            "connectors.ldap",
            "out of range",
        ),
        (
            "connectors: { ldap: \"::1:389\" }\n",
            "connectors.ldap",
            "brackets",
        ),
        ("connectors: [ldap]\n", "connectors", "line"),
        (
            "connectors: { a: \"h:1\", a: \"h:2\" }\n",
            "connectors",
            "duplicate",
        ),
    ];
    for (body, key, needle) in cases {
        let mut yaml = String::new();
        for line in MINIMAL.lines() {
            let field = line.split(':').next().unwrap();
            if !body.starts_with(&format!("{field}:")) {
                yaml.push_str(line);
                yaml.push('\n');
            }
        }
        yaml.push_str(body);
        expect_err(Some(&yaml), &[], key, needle);
    }
}

#[test]
fn yaml_syntax_error() {
    let err = AgentConfig::load(Some("connectors: { ldap: \"h:1\"\n"), no_env).unwrap_err();
    assert_key(&err, "connectors");
    assert!(matches!(err, ConfigError::Yaml { .. }));
    assert!(err.to_string().contains("line 1"), "{err}");
}
