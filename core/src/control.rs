//! HELLO, WELCOME and GOAWAY: the session's JSON control messages.
//!
//! They travel as WebSocket text messages, one JSON object each, tagged by `"type"`. The agent
//! sends HELLO first; the hub answers WELCOME; later the hub may send GOAWAY. Everything the
//! agent sends is untrusted, so [`Hello::parse`] bounds every field before the hub looks at it.
//! Unknown fields are ignored so that either side can add optional fields without a new
//! protocol version.

use serde::{Deserialize, Serialize};

use crate::name::ConnectorName;

/// The protocol version these messages speak.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest control message either side accepts, in bytes.
pub const MAX_CONTROL_MESSAGE: usize = 64 * 1024;

/// The most connectors one HELLO may register.
pub const MAX_CONNECTORS: usize = 256;

/// The longest agent id, in bytes.
pub const MAX_AGENT_ID: usize = 128;

/// The most lanes (sessions per hub) one agent may open.
pub const MAX_LANES: u32 = 64;

/// The longest free-text field (`software`, `session`, `replica_id`, reasons), in bytes.
pub const MAX_TEXT_FIELD: usize = 128;

/// Why a control message was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The message is larger than [`MAX_CONTROL_MESSAGE`].
    #[error("control message of {0} bytes exceeds the limit of 65536")]
    TooLarge(usize),
    /// The message is not the JSON object expected here.
    #[error("malformed control message: {0}")]
    Malformed(String),
    /// The message speaks another protocol version.
    #[error("unsupported protocol version {0}, expected 1")]
    Version(u32),
    /// A field is out of bounds.
    #[error("control message field `{field}` is invalid: {why}")]
    Field {
        /// The JSON field.
        field: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The message arrived when another was expected (HELLO twice, WELCOME first, …).
    #[error("unexpected control message `{0}`")]
    Unexpected(&'static str),
}

fn field(field: &'static str, why: &'static str) -> ControlError {
    ControlError::Field { field, why }
}

/// Whether `id` is a well-formed agent id: 1 to 128 bytes of `[A-Za-z0-9._:@-]`.
pub fn is_valid_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_AGENT_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
}

/// The longest DATA payload a session may negotiate. Far below the WebSocket message limit, so
/// a full frame plus its header always fits one message.
pub const MAX_FRAME_LIMIT: u32 = 1 << 20;

/// The largest credit window a session may negotiate.
pub const MAX_WINDOW: u32 = 16 << 20;

/// Whether a free-text field is short and printable ASCII: these fields end up in logs, where
/// control characters, bidirectional overrides or zero-width characters could mislead a reader.
fn is_printable_text(s: &str) -> bool {
    s.len() <= MAX_TEXT_FIELD && s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn has_duplicates(names: &[ConnectorName]) -> bool {
    let mut sorted = names.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).any(|w| w[0] == w[1])
}

/// Agent → hub, the first message of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version; must be 1.
    pub v: u32,
    /// The agent's identity; must equal the token's `agent_id` claim.
    pub agent_id: String,
    /// The connectors the agent serves on this session, without duplicates.
    pub connectors: Vec<ConnectorName>,
    /// Which of the agent's sessions to this hub this is, from 0.
    #[serde(default)]
    pub lane: u32,
    /// How many sessions the agent keeps to this hub.
    #[serde(default = "one")]
    pub lanes: u32,
    /// The agent's software and version, for logs.
    #[serde(default)]
    pub software: String,
}

fn one() -> u32 {
    1
}

/// One connector the hub did not accept, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The connector.
    pub connector: ConnectorName,
    /// A short reason code, such as `scope`, `pdp` or `unknown`.
    pub reason: String,
}

/// Hub → agent, the answer to HELLO.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Protocol version; 1.
    pub v: u32,
    /// The session's identifier, for logs on both sides.
    pub session: String,
    /// Which hub replica answered.
    pub replica_id: String,
    /// The shard the session landed on.
    pub shard: u32,
    /// How many shards the hub runs; an agent with `lanes: auto` opens this many lanes.
    pub shards: u32,
    /// The connectors accepted for routing on this session.
    pub accepted: Vec<ConnectorName>,
    /// The connectors refused, with reasons.
    #[serde(default)]
    pub refused: Vec<Refusal>,
    /// The credit window of every stream, each direction, in bytes.
    pub window: u32,
    /// The longest DATA payload either side may send.
    pub max_frame: u32,
    /// Streams idle this long are reset.
    pub idle_timeout_ms: u64,
    /// The hub pings this often; three silent intervals end the session.
    pub heartbeat_ms: u64,
    /// When the agent's token expires (seconds since the Unix epoch), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exp: Option<u64>,
}

/// Hub → agent: open no new streams here; the existing ones finish.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goaway {
    /// Why, e.g. `draining` or `token_expiring`.
    pub reason: String,
}

/// Any control message, as it appears on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ControlMessage {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`Goaway`].
    Goaway(Goaway),
}

impl ControlMessage {
    /// Parses one control message and validates its fields.
    pub fn parse(text: &str) -> Result<ControlMessage, ControlError> {
        if text.len() > MAX_CONTROL_MESSAGE {
            return Err(ControlError::TooLarge(text.len()));
        }
        let msg: ControlMessage =
            serde_json::from_str(text).map_err(|e| ControlError::Malformed(e.to_string()))?;
        match &msg {
            ControlMessage::Hello(hello) => hello.validate()?,
            ControlMessage::Welcome(welcome) => welcome.validate()?,
            ControlMessage::Goaway(goaway) => {
                if !is_printable_text(&goaway.reason) {
                    return Err(field(
                        "reason",
                        "expected at most 128 printable ASCII characters",
                    ));
                }
            }
        }
        Ok(msg)
    }

    /// The message's `type`, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            ControlMessage::Hello(_) => "hello",
            ControlMessage::Welcome(_) => "welcome",
            ControlMessage::Goaway(_) => "goaway",
        }
    }

    /// Serializes the message as the JSON text to send.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail: no maps with non-string keys, no
        // fallible Serialize impls.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl Hello {
    /// Parses a message that must be a HELLO (the hub's first read on a session).
    pub fn parse(text: &str) -> Result<Hello, ControlError> {
        match ControlMessage::parse(text)? {
            ControlMessage::Hello(hello) => Ok(hello),
            other => Err(ControlError::Unexpected(other.kind())),
        }
    }

    /// Checks every field against its bounds.
    pub fn validate(&self) -> Result<(), ControlError> {
        if self.v != PROTOCOL_VERSION {
            return Err(ControlError::Version(self.v));
        }
        if !is_valid_agent_id(&self.agent_id) {
            return Err(field(
                "agent_id",
                "expected 1 to 128 characters of [A-Za-z0-9._:@-]",
            ));
        }
        if self.connectors.is_empty() {
            return Err(field("connectors", "at least one connector is required"));
        }
        if self.connectors.len() > MAX_CONNECTORS {
            return Err(field("connectors", "more than 256 connectors"));
        }
        if has_duplicates(&self.connectors) {
            return Err(field("connectors", "a connector is listed twice"));
        }
        if self.lanes == 0 || self.lanes > MAX_LANES {
            return Err(field("lanes", "expected 1 to 64"));
        }
        if self.lane >= self.lanes {
            return Err(field("lane", "must be less than lanes"));
        }
        if !is_printable_text(&self.software) {
            return Err(field(
                "software",
                "expected at most 128 printable ASCII characters",
            ));
        }
        Ok(())
    }

    /// This HELLO as JSON text.
    pub fn to_json(&self) -> String {
        ControlMessage::Hello(self.clone()).to_json()
    }
}

impl Welcome {
    /// Parses a message that must be a WELCOME (the agent's first read on a session).
    pub fn parse(text: &str) -> Result<Welcome, ControlError> {
        match ControlMessage::parse(text)? {
            ControlMessage::Welcome(welcome) => Ok(welcome),
            other => Err(ControlError::Unexpected(other.kind())),
        }
    }

    /// Checks every field against its bounds: an agent must not size its buffers from a
    /// careless hub.
    pub fn validate(&self) -> Result<(), ControlError> {
        if self.v != PROTOCOL_VERSION {
            return Err(ControlError::Version(self.v));
        }
        if !is_printable_text(&self.session) {
            return Err(field(
                "session",
                "expected at most 128 printable ASCII characters",
            ));
        }
        if !is_printable_text(&self.replica_id) {
            return Err(field(
                "replica_id",
                "expected at most 128 printable ASCII characters",
            ));
        }
        if self.shards == 0 || self.shard >= self.shards || self.shards > 1024 {
            return Err(field("shard", "expected shard < shards <= 1024"));
        }
        if !(1024..=MAX_WINDOW).contains(&self.window) {
            return Err(field("window", "expected 1 KiB to 16 MiB"));
        }
        if !(1024..=MAX_FRAME_LIMIT).contains(&self.max_frame) || self.max_frame > self.window {
            return Err(field(
                "max_frame",
                "expected 1 KiB to 1 MiB, and at most the window",
            ));
        }
        if !(1..=604_800_000).contains(&self.idle_timeout_ms) {
            return Err(field("idle_timeout_ms", "expected 1 ms to 7 days"));
        }
        if !(100..=3_600_000).contains(&self.heartbeat_ms) {
            return Err(field("heartbeat_ms", "expected 100 ms to 1 hour"));
        }
        if self.accepted.len() > MAX_CONNECTORS || self.refused.len() > MAX_CONNECTORS {
            return Err(field("accepted", "more than 256 connectors"));
        }
        if has_duplicates(&self.accepted) {
            return Err(field("accepted", "a connector is listed twice"));
        }
        if self.refused.iter().any(|r| !is_printable_text(&r.reason)) {
            return Err(field(
                "refused",
                "expected reasons of at most 128 printable ASCII characters",
            ));
        }
        Ok(())
    }

    /// This WELCOME as JSON text.
    pub fn to_json(&self) -> String {
        ControlMessage::Welcome(self.clone()).to_json()
    }
}

impl Goaway {
    /// This GOAWAY as JSON text.
    pub fn to_json(&self) -> String {
        ControlMessage::Goaway(self.clone()).to_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = r#"{"type":"hello","v":1,"agent_id":"agent-foo-01","connectors":["ldap","pg"],"lane":0,"lanes":2,"software":"nowconnect-agent/0.1.0"}"#;

    fn welcome() -> Welcome {
        Welcome {
            v: 1,
            session: "s-1".into(),
            replica_id: "hub-a".into(),
            shard: 1,
            shards: 2,
            accepted: vec![ConnectorName::from_str("ldap").unwrap()],
            refused: vec![Refusal {
                connector: ConnectorName::from_str("pg").unwrap(),
                reason: "scope".into(),
            }],
            window: 262144,
            max_frame: 65536,
            idle_timeout_ms: 300000,
            heartbeat_ms: 15000,
            token_exp: Some(1767225600),
        }
    }

    #[test]
    fn parses_the_documented_hello() {
        let hello = Hello::parse(HELLO).unwrap();
        assert_eq!(hello.agent_id, "agent-foo-01");
        assert_eq!(hello.connectors.len(), 2);
        assert_eq!((hello.lane, hello.lanes), (0, 2));
        assert_eq!(Hello::parse(&hello.to_json()).unwrap(), hello);
    }

    #[test]
    fn welcome_and_goaway_round_trip() {
        let w = welcome();
        assert_eq!(Welcome::parse(&w.to_json()).unwrap(), w);
        let g = Goaway {
            reason: "draining".into(),
        };
        assert_eq!(g.to_json(), r#"{"type":"goaway","reason":"draining"}"#);
        assert_eq!(
            ControlMessage::parse(&g.to_json()).unwrap(),
            ControlMessage::Goaway(g)
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let text = HELLO.replace(r#""v":1"#, r#""v":1,"future":{"x":[1,2]}"#);
        assert!(Hello::parse(&text).is_ok());
    }

    fn hello_error(from: &str, to: &str) -> ControlError {
        let text = HELLO.replace(from, to);
        assert_ne!(text, HELLO, "replacement {from:?} did not apply");
        Hello::parse(&text).unwrap_err()
    }

    #[test]
    fn hello_bounds() {
        assert_eq!(
            hello_error(r#""v":1"#, r#""v":2"#),
            ControlError::Version(2)
        );
        assert!(matches!(
            hello_error("agent-foo-01", ""),
            ControlError::Field {
                field: "agent_id",
                ..
            }
        ));
        assert!(matches!(
            hello_error("agent-foo-01", "agent foo"),
            ControlError::Field {
                field: "agent_id",
                ..
            }
        ));
        let long = "a".repeat(129);
        assert!(matches!(
            hello_error("agent-foo-01", &long),
            ControlError::Field {
                field: "agent_id",
                ..
            }
        ));
        assert!(matches!(
            hello_error(r#"["ldap","pg"]"#, "[]"),
            ControlError::Field {
                field: "connectors",
                ..
            }
        ));
        assert!(matches!(
            hello_error(r#"["ldap","pg"]"#, r#"["ldap","ldap"]"#),
            ControlError::Field {
                field: "connectors",
                ..
            }
        ));
        assert!(matches!(
            hello_error(r#"["ldap","pg"]"#, r#"["ldap","p g"]"#),
            ControlError::Malformed(_)
        ));
        assert!(matches!(
            hello_error(r#""lane":0"#, r#""lane":2"#),
            ControlError::Field { field: "lane", .. }
        ));
        assert!(matches!(
            hello_error(r#""lanes":2"#, r#""lanes":65"#),
            ControlError::Field { field: "lanes", .. }
        ));
        assert!(matches!(
            hello_error("nowconnect-agent/0.1.0", "bad\\u0007bell"),
            ControlError::Field {
                field: "software",
                ..
            }
        ));
        let many: Vec<String> = (0..257).map(|i| format!("\"c{i}\"")).collect();
        assert!(matches!(
            hello_error(r#"["ldap","pg"]"#, &format!("[{}]", many.join(","))),
            ControlError::Field {
                field: "connectors",
                ..
            }
        ));
    }

    #[test]
    fn hello_refuses_other_messages_and_junk() {
        assert_eq!(
            Hello::parse(&welcome().to_json()),
            Err(ControlError::Unexpected("welcome"))
        );
        for junk in [
            "",
            "null",
            "[]",
            "{}",
            r#"{"type":"hello"}"#,
            r#"{"type":"bye"}"#,
            "{\"type\":\"hello\",",
            "\u{0}",
        ] {
            assert!(
                matches!(Hello::parse(junk), Err(ControlError::Malformed(_))),
                "{junk:?}"
            );
        }
        let big = format!("{}{}", HELLO, " ".repeat(MAX_CONTROL_MESSAGE));
        assert!(matches!(Hello::parse(&big), Err(ControlError::TooLarge(_))));
    }

    #[test]
    fn welcome_bounds() {
        let check = |mutate: fn(&mut Welcome)| {
            let mut w = welcome();
            mutate(&mut w);
            Welcome::parse(&w.to_json()).unwrap_err()
        };
        assert!(matches!(
            check(|w| w.window = 10),
            ControlError::Field {
                field: "window",
                ..
            }
        ));
        assert!(matches!(
            check(|w| w.max_frame = 1 << 30),
            ControlError::Field {
                field: "max_frame",
                ..
            }
        ));
        assert!(matches!(
            check(|w| w.shard = 2),
            ControlError::Field { field: "shard", .. }
        ));
        assert!(matches!(
            check(|w| w.heartbeat_ms = 0),
            ControlError::Field {
                field: "heartbeat_ms",
                ..
            }
        ));
        assert!(matches!(check(|w| w.v = 0), ControlError::Version(0)));
    }
}
