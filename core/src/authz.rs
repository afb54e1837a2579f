//! Policy decision requests and answers, free of I/O: the OpenID AuthZEN Authorization API 1.0
//! (one evaluation, or a batch of evaluations sharing subject, action and context) and the
//! legacy form of earlier deployments.
//!
//! The hub asks whether an agent may serve a connector: the subject is the agent (`type`
//! `agent`, its `agent_id`, and what its token said), the action `connect`, the resource the
//! connector. Requests carry only the members the specification defines; everything else goes
//! in `properties` and `context`, because some PDPs refuse unknown members.
//!
//! Answers come from the network and are untrusted: each parser takes at most
//! [`MAX_ANSWER_BYTES`] (the caller enforces it while reading), demands the exact JSON types
//! the specification gives, and answers a [`AnswerError`] for anything else.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The largest answer body accepted from a PDP, in bytes: room for a batch answer covering
/// every connector of a HELLO with generous per-decision context.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// The longest `ttl_sec` a legacy answer may ask for; the hub caps it further at its
/// `pdp.cache_ttl_ms`.
pub const MAX_LEGACY_TTL_SECS: u64 = 86_400;

/// How the agent's token was bound to it on this session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binding {
    /// A bearer token.
    Bearer,
    /// A DPoP-bound token with a proof of its key (RFC 9449).
    Dpop,
    /// A token bound to the session's TLS client certificate (RFC 8705).
    Mtls,
}

impl Binding {
    /// The word sent in `subject.properties.binding`.
    pub fn as_str(self) -> &'static str {
        match self {
            Binding::Bearer => "bearer",
            Binding::Dpop => "dpop",
            Binding::Mtls => "mtls",
        }
    }
}

/// The agent, as the policy sees it: what its validated token said.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Subject {
    /// The token's `agent_id`, which HELLO repeated.
    pub agent_id: String,
    /// The token's `client_id` (or `azp`).
    pub client_id: Option<String>,
    /// The token's `iss`.
    pub issuer: Option<String>,
    /// The scopes the token granted.
    pub scopes: Vec<String>,
    /// How the token was bound.
    pub binding: Binding,
}

impl Subject {
    /// What the token said besides `agent_id`: claims the token lacks are left out.
    fn claims(&self) -> Map<String, Value> {
        let mut claims = Map::new();
        if let Some(client_id) = &self.client_id {
            claims.insert("client_id".into(), client_id.as_str().into());
        }
        if let Some(issuer) = &self.issuer {
            claims.insert("iss".into(), issuer.as_str().into());
        }
        claims.insert("scopes".into(), self.scopes.clone().into());
        claims.insert("binding".into(), self.binding.as_str().into());
        claims
    }

    /// The AuthZEN subject object: the claims are its `properties`.
    fn authzen(&self) -> Value {
        json!({ "type": "agent", "id": self.agent_id, "properties": self.claims() })
    }

    /// The legacy subject object: `agent_id` beside the claims.
    fn legacy(&self) -> Value {
        let mut subject = self.claims();
        subject.insert("agent_id".into(), self.agent_id.as_str().into());
        Value::Object(subject)
    }

    /// A string that differs whenever anything the PDP is told about the subject differs:
    /// the key of cached decisions.
    pub fn cache_key(&self) -> String {
        self.authzen().to_string()
    }
}

/// The circumstances of a request.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The hub replica asking.
    pub replica_id: &'a str,
    /// The client's address, for a stream; none for a batch asked when the agent connects.
    pub source_ip: Option<IpAddr>,
    /// Now, in seconds since the Unix epoch.
    pub now_unix: u64,
}

impl Context<'_> {
    fn to_json(self) -> Value {
        let mut context = Map::new();
        context.insert("replica_id".into(), self.replica_id.into());
        if let Some(ip) = self.source_ip {
            context.insert("source_ip".into(), ip.to_string().into());
        }
        context.insert("time".into(), rfc3339(self.now_unix).into());
        Value::Object(context)
    }
}

const ACTION: &str = "connect";

fn resource(connector: &str) -> Value {
    json!({ "type": "connector", "id": connector })
}

/// The body of `POST {base}/access/v1/evaluation` for one connector.
pub fn evaluation_request(subject: &Subject, connector: &str, context: Context<'_>) -> Vec<u8> {
    json!({
        "subject": subject.authzen(),
        "action": { "name": ACTION },
        "resource": resource(connector),
        "context": context.to_json(),
    })
    .to_string()
    .into_bytes()
}

/// The body of `POST {base}/access/v1/evaluations` for several connectors: subject, action
/// and context given once, one evaluation per connector, answered in the same order.
pub fn evaluations_request(
    subject: &Subject,
    connectors: &[&str],
    context: Context<'_>,
) -> Vec<u8> {
    let evaluations: Vec<Value> = connectors
        .iter()
        .map(|c| json!({ "resource": resource(c) }))
        .collect();
    json!({
        "subject": subject.authzen(),
        "action": { "name": ACTION },
        "context": context.to_json(),
        "evaluations": evaluations,
    })
    .to_string()
    .into_bytes()
}

/// The body of a legacy decision request for one connector.
pub fn legacy_request(subject: &Subject, connector: &str, context: Context<'_>) -> Vec<u8> {
    json!({
        "subject": subject.legacy(),
        "action": ACTION,
        "resource": { "connector": connector },
        "context": context.to_json(),
    })
    .to_string()
    .into_bytes()
}

/// Why an answer gave no decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// More than [`MAX_ANSWER_BYTES`].
    #[error("the answer is larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
    /// Not JSON, or JSON of the wrong shape (a missing or non-boolean decision, …).
    #[error("the answer is not a decision: {0}")]
    Malformed(String),
    /// A batch answer with another number of decisions than evaluations asked.
    #[error("the batch answer holds {got} decisions for {asked} evaluations")]
    Count {
        /// Evaluations asked.
        asked: usize,
        /// Decisions answered.
        got: usize,
    },
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, AnswerError> {
    if body.len() > MAX_ANSWER_BYTES {
        return Err(AnswerError::TooLarge);
    }
    serde_json::from_slice(body).map_err(|e| AnswerError::Malformed(e.to_string()))
}

/// One AuthZEN decision: `decision` must be a JSON boolean; other members (`context`) are
/// ignored.
#[derive(Deserialize)]
struct Evaluation {
    decision: bool,
}

#[derive(Deserialize)]
struct Evaluations {
    evaluations: Vec<Evaluation>,
}

/// The decision of an `evaluation` answer.
pub fn parse_evaluation(body: &[u8]) -> Result<bool, AnswerError> {
    parse::<Evaluation>(body).map(|e| e.decision)
}

/// The decisions of an `evaluations` answer for `asked` evaluations, in the order asked.
pub fn parse_evaluations(body: &[u8], asked: usize) -> Result<Vec<bool>, AnswerError> {
    let answer = parse::<Evaluations>(body)?;
    if answer.evaluations.len() != asked {
        return Err(AnswerError::Count {
            asked,
            got: answer.evaluations.len(),
        });
    }
    Ok(answer.evaluations.into_iter().map(|e| e.decision).collect())
}

/// A legacy answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct LegacyAnswer {
    /// Whether the agent may serve the connector.
    pub allow: bool,
    /// For how long an allow may be reused, in seconds (at most [`MAX_LEGACY_TTL_SECS`]).
    #[serde(default)]
    pub ttl_sec: Option<u64>,
}

/// The decision of a legacy answer: `allow` a JSON boolean, `ttl_sec` absent, `null` or a
/// whole number of seconds up to [`MAX_LEGACY_TTL_SECS`].
pub fn parse_legacy(body: &[u8]) -> Result<LegacyAnswer, AnswerError> {
    let answer = parse::<LegacyAnswer>(body)?;
    if answer.ttl_sec.is_some_and(|t| t > MAX_LEGACY_TTL_SECS) {
        return Err(AnswerError::Malformed(format!(
            "ttl_sec is above {MAX_LEGACY_TTL_SECS}"
        )));
    }
    Ok(answer)
}

/// `unix` seconds as an RFC 3339 UTC timestamp, such as `2026-11-22T20:07:00Z`.
pub fn rfc3339(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Year, month and day of the `days`-th day after 1970-01-01, in the proleptic Gregorian
/// calendar (the era-based method: 400-year eras of 146,097 days, years from March).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject {
        Subject {
            agent_id: "agent-a".into(),
            client_id: Some("client-1".into()),
            issuer: Some("https://idp.example".into()),
            scopes: vec!["connector:ldap".into(), "tunnel".into()],
            binding: Binding::Dpop,
        }
    }

    fn context() -> Context<'static> {
        Context {
            replica_id: "hub-1",
            source_ip: Some("192.0.2.7".parse().unwrap()),
            now_unix: 1_795_377_600,
        }
    }

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn evaluation_request_holds_the_specified_members_only() {
        let body = json(&evaluation_request(&subject(), "ldap", context()));
        assert_eq!(
            body,
            json!({
                "subject": {
                    "type": "agent",
                    "id": "agent-a",
                    "properties": {
                        "client_id": "client-1",
                        "iss": "https://idp.example",
                        "scopes": ["connector:ldap", "tunnel"],
                        "binding": "dpop",
                    },
                },
                "action": { "name": "connect" },
                "resource": { "type": "connector", "id": "ldap" },
                "context": {
                    "replica_id": "hub-1",
                    "source_ip": "192.0.2.7",
                    "time": "2026-11-22T20:00:00Z",
                },
            })
        );
    }

    #[test]
    fn absent_claims_are_left_out_not_null() {
        let bare = Subject {
            client_id: None,
            issuer: None,
            scopes: Vec::new(),
            binding: Binding::Bearer,
            ..subject()
        };
        let body = json(&evaluation_request(
            &bare,
            "web",
            Context {
                source_ip: None,
                ..context()
            },
        ));
        assert_eq!(
            body["subject"]["properties"],
            json!({ "scopes": [], "binding": "bearer" })
        );
        assert_eq!(body["context"].get("source_ip"), None);
    }

    #[test]
    fn batch_request_gives_subject_action_and_context_once() {
        let body = json(&evaluations_request(
            &subject(),
            &["ldap", "web"],
            Context {
                source_ip: None,
                ..context()
            },
        ));
        assert_eq!(body["subject"]["id"], "agent-a");
        assert_eq!(body["action"], json!({ "name": "connect" }));
        assert_eq!(
            body["evaluations"],
            json!([
                { "resource": { "type": "connector", "id": "ldap" } },
                { "resource": { "type": "connector", "id": "web" } },
            ])
        );
        assert_eq!(body.get("resource"), None);
    }

    #[test]
    fn legacy_request_is_the_simplified_form() {
        let body = json(&legacy_request(&subject(), "ldap", context()));
        assert_eq!(body["subject"]["agent_id"], "agent-a");
        assert_eq!(body["subject"]["binding"], "dpop");
        assert_eq!(body["action"], "connect");
        assert_eq!(body["resource"], json!({ "connector": "ldap" }));
        assert_eq!(body["context"]["source_ip"], "192.0.2.7");
    }

    #[test]
    fn cache_key_changes_with_anything_the_pdp_sees() {
        let base = subject();
        let key = base.cache_key();
        assert_eq!(key, subject().cache_key());
        for other in [
            Subject {
                agent_id: "agent-b".into(),
                ..subject()
            },
            Subject {
                client_id: None,
                ..subject()
            },
            Subject {
                issuer: Some("https://other".into()),
                ..subject()
            },
            Subject {
                scopes: vec!["connector:ldap".into()],
                ..subject()
            },
            Subject {
                binding: Binding::Mtls,
                ..subject()
            },
        ] {
            assert_ne!(other.cache_key(), key, "{other:?}");
        }
    }

    #[test]
    fn evaluation_answers() {
        assert_eq!(parse_evaluation(br#"{"decision":true}"#), Ok(true));
        assert_eq!(
            parse_evaluation(br#"{"decision":false,"context":{"reason":"no"}}"#),
            Ok(false)
        );
        for bad in [
            &b""[..],
            b"null",
            b"[]",
            b"{}",
            br#"{"decision":"true"}"#,
            br#"{"decision":1}"#,
            br#"{"decision":null}"#,
            br#"{"allow":true}"#,
            br#"{"decision":true"#,
            b"\xff\xfe",
        ] {
            assert!(
                matches!(parse_evaluation(bad), Err(AnswerError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut huge = br#"{"decision":true,"context":""#.to_vec();
        huge.resize(MAX_ANSWER_BYTES + 1, b'x');
        assert_eq!(parse_evaluation(&huge), Err(AnswerError::TooLarge));
    }

    #[test]
    fn batch_answers_must_match_the_question() {
        assert_eq!(
            parse_evaluations(
                br#"{"evaluations":[{"decision":true},{"decision":false}]}"#,
                2
            ),
            Ok(vec![true, false])
        );
        assert_eq!(
            parse_evaluations(br#"{"evaluations":[{"decision":true}]}"#, 2),
            Err(AnswerError::Count { asked: 2, got: 1 })
        );
        assert!(matches!(
            parse_evaluations(br#"{"evaluations":[{"decision":true},{}]}"#, 2),
            Err(AnswerError::Malformed(_))
        ));
        assert!(matches!(
            parse_evaluations(br#"{"decision":true}"#, 1),
            Err(AnswerError::Malformed(_))
        ));
    }

    #[test]
    fn legacy_answers() {
        assert_eq!(
            parse_legacy(br#"{"allow":true,"ttl_sec":5}"#),
            Ok(LegacyAnswer {
                allow: true,
                ttl_sec: Some(5)
            })
        );
        assert_eq!(
            parse_legacy(br#"{"allow":false}"#),
            Ok(LegacyAnswer {
                allow: false,
                ttl_sec: None
            })
        );
        for bad in [
            &br#"{"allow":"yes"}"#[..],
            br#"{"ttl_sec":5}"#,
            br#"{"allow":true,"ttl_sec":-1}"#,
            br#"{"allow":true,"ttl_sec":1.5}"#,
            br#"{"allow":true,"ttl_sec":86401}"#,
        ] {
            assert!(
                matches!(parse_legacy(bad), Err(AnswerError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_377_659), "2026-11-22T20:00:59Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
    }
}
