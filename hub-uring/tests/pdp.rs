//! The policy decision point on each stream, against a scripted PDP the test serves: what the
//! hub asks (AuthZEN and legacy forms, headers), allow and deny, the cache of allows and its
//! expiry, the batch asked when an agent connects, no decision (timeout, error status,
//! malformed answer, nobody listening) failing closed or, with `fail_open`, open — never over
//! an explicit deny — and a PDP that holds one answer back without holding up other streams.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(10);
const AGENT: &str = "agent-a";

/// One request the PDP received.
#[derive(Clone, Debug)]
struct Asked {
    path: String,
    headers: HashMap<String, String>,
    body: Value,
}

impl Asked {
    /// The connector an evaluation (AuthZEN or legacy) asked about.
    fn connector(&self) -> &str {
        self.body["resource"]["id"]
            .as_str()
            .or_else(|| self.body["resource"]["connector"].as_str())
            .unwrap_or("")
    }
}

/// What the PDP does with a request.
enum Reply {
    /// Answer with this status and body.
    Answer(u16, String),
    /// Wait until the gate opens, then answer.
    Gated(u16, String),
}

type Script = dyn Fn(&Asked) -> Reply + Send + Sync;

/// A PDP served on loopback: answers each request as `script` says and records it.
struct FakePdp {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<Asked>>>,
    gate: Arc<(Mutex<bool>, Condvar)>,
}

impl FakePdp {
    fn start(script: impl Fn(&Asked) -> Reply + Send + Sync + 'static) -> FakePdp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let script: Arc<Script> = Arc::new(script);
        let (recorded, gate2) = (asked.clone(), gate.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                let (script, recorded, gate) = (script.clone(), recorded.clone(), gate2.clone());
                std::thread::spawn(move || serve(conn, &*script, &recorded, &gate));
            }
        });
        FakePdp { addr, asked, gate }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }

    /// Requests to `path` about `connector`.
    fn count(&self, path: &str, connector: &str) -> usize {
        self.asked()
            .iter()
            .filter(|a| a.path == path && a.connector() == connector)
            .count()
    }

    fn open_gate(&self) {
        let (open, wake) = &*self.gate;
        *open.lock().unwrap() = true;
        wake.notify_all();
    }
}

/// Serves HTTP/1.1 requests on one connection until the peer closes it.
fn serve(
    conn: TcpStream,
    script: &Script,
    recorded: &Mutex<Vec<Asked>>,
    gate: &(Mutex<bool>, Condvar),
) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_owned();
        let mut headers = HashMap::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let asked = Asked {
            path,
            headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        };
        recorded.lock().unwrap().push(asked.clone());
        let (status, text) = match script(&asked) {
            Reply::Answer(status, text) => (status, text),
            Reply::Gated(status, text) => {
                let (open, wake) = gate;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = wake.wait(open).unwrap();
                }
                (status, text)
            }
        };
        let reply = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn decision(allow: bool) -> Reply {
    Reply::Answer(200, json!({ "decision": allow }).to_string())
}

/// A hub with listeners `connectors`, the `pdp` section `pdp` (YAML flow-mapping entries),
/// and a raw agent of [`AGENT`] serving all of them.
struct Site {
    hub: Hub,
    agent: RawAgent,
}

impl Site {
    fn start(tag: &str, connectors: &[&str], pdp: &str) -> Site {
        let dir = TempDir::new(tag);
        let key = SigningKey::generate("k1");
        let jwks = dir.path("jwks.json");
        write_jwks(&jwks, &[&key]);
        let yaml = format!(
            "{}pdp: {{ {pdp} }}\n",
            hub_yaml(&jwks, connectors, "open_timeout_ms: 5000")
        );
        let hub = Hub::start(dir, &yaml);
        let agent = RawAgent::connect(hub.addrs.tunnel, &key.token(AGENT), AGENT, connectors);
        assert_eq!(agent.welcome.accepted.len(), connectors.len());
        Site { hub, agent }
    }

    fn client(&self, listener: usize) -> TcpStream {
        TcpStream::connect(self.hub.addrs.listeners[listener]).unwrap()
    }

    fn metric(&self, sample: &str) -> f64 {
        self.hub.metric(sample).unwrap_or(0.0)
    }

    fn decisions(&self, decision: &str, source: &str) -> f64 {
        self.metric(&format!(
            "nowconnect_pdp_decisions_total{{decision=\"{decision}\",source=\"{source}\"}}"
        ))
    }

    fn wait_metric(&self, sample: &str, at_least: f64) {
        let deadline = Instant::now() + WAIT;
        while self.metric(sample) < at_least {
            assert!(
                Instant::now() < deadline,
                "{sample} stayed below {at_least}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent is asked to open a stream of `connector`.
    fn expect_open(&mut self, connector: &str) {
        let frame = self
            .agent
            .expect(WAIT, |f| matches!(f, OwnedFrame::Open(..)));
        let OwnedFrame::Open(_, name, _) = frame else {
            unreachable!()
        };
        assert_eq!(name, connector);
    }
}

/// The client's connection is reset without a byte.
fn assert_refused(mut client: TcpStream) {
    let (bytes, reset) = read_to_end_or_reset(&mut client, WAIT);
    assert!(bytes.is_empty() && reset, "the client was not reset");
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn each_stream_is_decided_by_the_pdp_with_the_authzen_request() {
    let pdp = FakePdp::start(|a| decision(a.connector() == "ldap"));
    let token = TempDir::new("pdp-token");
    let token_file = token.path("pdp.token");
    std::fs::write(&token_file, "pdp-secret-1\n").unwrap();
    let mut site = Site::start(
        "pdp-authzen",
        &["ldap", "web"],
        &format!(
            "url: \"{}/\", cache_ttl_ms: 0, token_file: \"{}\"",
            pdp.url(),
            token_file.display()
        ),
    );

    let allowed = site.client(0);
    site.expect_open("ldap");
    assert_refused(site.client(1));
    drop(allowed);

    assert_eq!(site.decisions("allow", "pdp"), 1.0);
    assert_eq!(site.decisions("deny", "pdp"), 1.0);
    assert_eq!(
        site.metric("nowconnect_rejected_clients_total{connector=\"web\",reason=\"denied\"}"),
        1.0
    );
    assert_eq!(site.metric("nowconnect_pdp_request_seconds_count"), 2.0);

    let asked = pdp.asked();
    assert_eq!(asked.len(), 2, "no batch without a cache: {asked:?}");
    for a in &asked {
        assert_eq!(a.path, "/access/v1/evaluation");
        assert_eq!(a.headers["content-type"], "application/json");
        assert_eq!(a.headers["authorization"], "Bearer pdp-secret-1");
        assert!(!a.headers["x-request-id"].is_empty());
        assert_eq!(
            a.body["subject"],
            json!({
                "type": "agent",
                "id": AGENT,
                "properties": { "iss": ISSUER, "scopes": [], "binding": "bearer" },
            })
        );
        assert_eq!(a.body["action"], json!({ "name": "connect" }));
        assert_eq!(a.body["resource"]["type"], "connector");
        assert_eq!(a.body["context"]["replica_id"], "hub-test");
        assert_eq!(a.body["context"]["source_ip"], "127.0.0.1");
        assert!(a.body["context"]["time"].as_str().unwrap().ends_with('Z'));
        let members: Vec<&String> = a.body.as_object().unwrap().keys().collect();
        assert_eq!(members, ["action", "context", "resource", "subject"]);
    }
    assert_ne!(
        asked[0].headers["x-request-id"],
        asked[1].headers["x-request-id"]
    );
    // The denial is logged with the id the PDP saw, to match the two logs.
    let line = site.hub.wait_log("the PDP denied a stream", WAIT);
    let web = asked.iter().find(|a| a.connector() == "web").unwrap();
    assert_eq!(line["request_id"], web.headers["x-request-id"].as_str());
    assert_eq!(line["connector"], "web");
    assert_eq!(line["agent"], AGENT);
    let agent_addr = site.agent.stream.local_addr().unwrap().to_string();
    assert_eq!(line["agent_addr"], agent_addr.as_str());
    assert_eq!(line["client"], "127.0.0.1");
}

#[test]
fn allows_are_cached_and_expire_while_denies_are_asked_every_time() {
    let pdp = FakePdp::start(|a| {
        if a.path == "/access/v1/evaluations" {
            let decisions: Vec<Value> = a.body["evaluations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| json!({ "decision": e["resource"]["id"] == "ldap" }))
                .collect();
            return Reply::Answer(200, json!({ "evaluations": decisions }).to_string());
        }
        decision(a.connector() == "ldap")
    });
    let mut site = Site::start(
        "pdp-cache",
        &["ldap", "web"],
        &format!("url: \"{}\", cache_ttl_ms: 4000", pdp.url()),
    );
    // The session's connectors were asked about in one batch when it started.
    site.wait_metric(
        "nowconnect_pdp_decisions_total{decision=\"deny\",source=\"batch\"}",
        1.0,
    );
    let batch = pdp.asked();
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].body["subject"]["id"], AGENT);
    assert_eq!(batch[0].body["evaluations"].as_array().unwrap().len(), 2);
    assert_eq!(batch[0].body["context"].get("source_ip"), None);
    assert_eq!(site.decisions("allow", "batch"), 1.0);

    // The cached allow serves the next client without asking.
    let first = site.client(0);
    site.expect_open("ldap");
    assert_eq!(pdp.count("/access/v1/evaluation", "ldap"), 0);
    assert_eq!(site.decisions("allow", "cache"), 1.0);
    drop(first);

    // A deny is not cached: each client is asked about.
    assert_refused(site.client(1));
    assert_refused(site.client(1));
    assert_eq!(pdp.count("/access/v1/evaluation", "web"), 2);

    // Once the allow expires, the PDP is asked again.
    let mut clients = Vec::new();
    wait_until("the expired allow to be asked again", || {
        clients.push(site.client(0));
        site.expect_open("ldap");
        pdp.count("/access/v1/evaluation", "ldap") == 1
    });
    assert_eq!(site.decisions("allow", "pdp"), 1.0);
}

#[test]
fn no_decision_fails_closed_by_default() {
    let pdp = FakePdp::start(|a| match a.connector() {
        "slow" => Reply::Gated(200, json!({ "decision": true }).to_string()),
        "broken" => Reply::Answer(500, "{}".into()),
        _ => Reply::Answer(200, json!({ "decision": "yes" }).to_string()),
    });
    let site = Site::start(
        "pdp-closed",
        &["slow", "broken", "odd"],
        &format!("url: \"{}\", cache_ttl_ms: 0, timeout_ms: 300", pdp.url()),
    );
    for listener in 0..3 {
        assert_refused(site.client(listener));
    }
    for kind in ["timeout", "status", "malformed"] {
        assert_eq!(
            site.metric(&format!("nowconnect_pdp_errors_total{{kind=\"{kind}\"}}")),
            1.0,
            "{kind}"
        );
    }
    assert_eq!(site.decisions("deny", "error"), 3.0);
    assert_eq!(site.decisions("allow", "fail_open"), 0.0);
    pdp.open_gate();
}

#[test]
fn fail_open_lets_streams_through_without_a_decision_but_never_over_a_deny() {
    let pdp = FakePdp::start(|a| match a.connector() {
        "slow" => Reply::Gated(200, json!({ "decision": false }).to_string()),
        "broken" => Reply::Answer(503, "{}".into()),
        _ => decision(false),
    });
    let mut site = Site::start(
        "pdp-open",
        &["slow", "broken", "denied"],
        &format!(
            "url: \"{}\", cache_ttl_ms: 0, timeout_ms: 300, fail_open: true",
            pdp.url()
        ),
    );
    let _slow = site.client(0);
    site.expect_open("slow");
    let _broken = site.client(1);
    site.expect_open("broken");
    assert_refused(site.client(2));
    assert_eq!(site.decisions("allow", "fail_open"), 2.0);
    assert_eq!(site.decisions("deny", "pdp"), 1.0);
    assert_eq!(
        site.metric("nowconnect_pdp_errors_total{kind=\"timeout\"}"),
        1.0
    );
    pdp.open_gate();
}

#[test]
fn a_pdp_nobody_listens_on_denies() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let site = Site::start(
        "pdp-down",
        &["ldap"],
        &format!("url: \"{url}\", cache_ttl_ms: 0"),
    );
    assert_refused(site.client(0));
    assert_eq!(
        site.metric("nowconnect_pdp_errors_total{kind=\"transport\"}"),
        1.0
    );
    let line = site.hub.wait_log("the PDP gave no decision", WAIT);
    assert_eq!(line["kind"], "transport");
}

#[test]
fn a_pdp_holding_one_answer_back_holds_up_no_other_stream() {
    let pdp = FakePdp::start(|a| match a.connector() {
        "slow" => Reply::Gated(200, json!({ "decision": true }).to_string()),
        _ => decision(true),
    });
    let mut site = Site::start(
        "pdp-slow",
        &["slow", "fast"],
        &format!("url: \"{}\", cache_ttl_ms: 0, timeout_ms: 20000", pdp.url()),
    );
    let _slow = site.client(0);
    wait_until("the PDP to be asked about the slow stream", || {
        pdp.count("/access/v1/evaluation", "slow") == 1
    });
    // While that answer is held back, other clients are decided and opened.
    let mut fast = Vec::new();
    for _ in 0..3 {
        fast.push(site.client(1));
        site.expect_open("fast");
    }
    assert_eq!(site.decisions("allow", "pdp"), 3.0);
    pdp.open_gate();
    site.expect_open("slow");
    assert_eq!(site.decisions("allow", "pdp"), 4.0);
}

#[test]
fn the_legacy_dialect_and_its_ttl() {
    let pdp = FakePdp::start(|a| {
        let allow = a.body["resource"]["connector"] == "ldap";
        Reply::Answer(200, json!({ "allow": allow, "ttl_sec": 0 }).to_string())
    });
    let mut site = Site::start(
        "pdp-legacy",
        &["ldap", "web"],
        &format!(
            "url: \"{}/v1/decide\", dialect: legacy, cache_ttl_ms: 60000",
            pdp.url()
        ),
    );
    // The pre-warm asks once per connector: the legacy form has no batch.
    wait_until("the pre-warm", || pdp.asked().len() == 2);
    // ttl_sec 0 caches nothing, whatever cache_ttl_ms allows.
    let mut clients = Vec::new();
    for _ in 0..2 {
        clients.push(site.client(0));
        site.expect_open("ldap");
    }
    assert_refused(site.client(1));
    let asked = pdp.asked();
    assert_eq!(asked.len(), 5, "{asked:?}");
    assert!(asked.iter().all(|a| a.path == "/v1/decide"));
    let stream = &asked[4];
    assert_eq!(stream.body["action"], "connect");
    assert_eq!(stream.body["subject"]["agent_id"], AGENT);
    assert_eq!(stream.body["subject"]["binding"], "bearer");
    assert_eq!(stream.body["resource"], json!({ "connector": "web" }));
    assert_eq!(stream.body["context"]["source_ip"], "127.0.0.1");
    assert_eq!(site.decisions("allow", "cache"), 0.0);
    assert_eq!(site.decisions("allow", "pdp"), 2.0);
    assert_eq!(site.decisions("deny", "pdp"), 1.0);
}

#[test]
fn an_unreadable_token_file_stops_the_hub_naming_it() {
    let dir = TempDir::new("pdp-nofile");
    let key = SigningKey::generate("k1");
    let jwks = dir.path("jwks.json");
    write_jwks(&jwks, &[&key]);
    let missing = dir.path("missing.token");
    let yaml = format!(
        "{}pdp: {{ url: \"http://127.0.0.1:9\", token_file: \"{}\" }}\n",
        hub_yaml(&jwks, &["ldap"], ""),
        missing.display()
    );
    let config = dir.path("hub.yaml");
    std::fs::write(&config, yaml).unwrap();
    let out = std::process::Command::new(hub_binary())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("nowconnect-hub:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("pdp.token_file"), "{line}");
    assert!(line.contains("missing.token"), "{line}");
}
