//! The agent behind an HTTP proxy (`NC_TRUST_ENV=true`): a real `tinyproxy` on loopback,
//! with and without Basic credentials, `NO_PROXY`, and proxies ignored without `trust_env`.
//!
//! tinyproxy is installed by scripts/test.sh; without it these tests fail and say so.

use std::net::SocketAddr;
use std::path::PathBuf;

use nowconnect_tests::*;
use serde_json::Value;

/// A tinyproxy process on a loopback port, allowing CONNECT to `connect_port` only.
struct Tinyproxy {
    proc: Proc,
    addr: SocketAddr,
    log: PathBuf,
}

impl Tinyproxy {
    fn start(dir: &TempDir, connect_port: u16, basic_auth: Option<(&str, &str)>) -> Tinyproxy {
        let program = system_program("tinyproxy");
        let addr = free_addr();
        let log = dir.join("tinyproxy.log");
        let mut conf = format!(
            "Port {}\nListen 127.0.0.1\nTimeout 600\nAllow 127.0.0.1\nConnectPort {connect_port}\n\
             MaxClients 64\nLogLevel Info\nLogFile \"{}\"\n",
            addr.port(),
            log.display()
        );
        if let Some((user, pass)) = basic_auth {
            conf.push_str(&format!("BasicAuth {user} {pass}\n"));
        }
        let conf_file = dir.join("tinyproxy.conf");
        std::fs::write(&conf_file, conf).unwrap();
        let proc = spawn_program(
            "tinyproxy",
            &program,
            &["-d", "-c", conf_file.to_str().unwrap()],
            &[],
        );
        wait_listening(addr, "tinyproxy");
        Tinyproxy { proc, addr, log }
    }

    fn url(&self, userinfo: &str) -> String {
        format!("http://{userinfo}{}", self.addr)
    }

    /// The CONNECT requests tinyproxy logged.
    fn connects(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once("): ").map(|(_, r)| r.to_owned()))
            .filter(|r| r.starts_with("CONNECT "))
            .collect()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- tinyproxy log -----");
            eprintln!("{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
        self.proc.kill();
    }
}

/// Whether any of the agent's output contains `needle`.
fn agent_output_contains(agent: &Agent, needle: &str) -> bool {
    agent.proc.text_lines().iter().any(|l| l.contains(needle))
}

#[test]
fn the_agent_reaches_the_hub_through_tinyproxy() {
    let site = Site::start("proxy-plain", &["echo"]);
    let proxy = Tinyproxy::start(&site.dir, site.hub.tunnel.port(), None);
    let agent = site.agent(
        &site.hub.url(),
        &[("echo", echo_target())],
        &[("NC_TRUST_ENV", "true"), ("HTTP_PROXY", &proxy.url(""))],
    );
    site.hub.wait_sessions(AGENT_ID, 1);
    agent.wait_ready();
    let data = payload(11, 1 << 20);
    let back = exchange(site.hub.listener("echo"), &data).expect("echo through proxy and tunnel");
    assert_eq!(sha256(&back), sha256(&data), "echo checksum");

    let expected = format!("CONNECT 127.0.0.1:{} HTTP/1.1", site.hub.tunnel.port());
    assert!(
        proxy.connects().contains(&expected),
        "tinyproxy logged no `{expected}`: {:?}",
        proxy.connects()
    );
    assert!(
        agent
            .proc
            .wait_log(0, WAIT, |l| log_message(l)
                == Some("connecting through an HTTP proxy")
                && log_field(l, "proxy").and_then(Value::as_str)
                    == Some(proxy.url("").as_str()))
            .is_some()
    );
}

#[test]
fn proxy_credentials_are_sent_and_a_refusal_is_logged_without_them() {
    const SECRET: &str = "pw-must-not-leak";
    let site = Site::start("proxy-auth", &["echo"]);
    let proxy = Tinyproxy::start(&site.dir, site.hub.tunnel.port(), Some(("user", SECRET)));
    let target = echo_target();

    // Wrong password: the proxy answers 407, the agent says so and keeps trying.
    let wrong = proxy.url("user:wrong-secret@");
    let refused = site.agent(
        &site.hub.url(),
        &[("echo", target)],
        &[("NC_TRUST_ENV", "true"), ("HTTP_PROXY", &wrong)],
    );
    let first = refused.proc.wait_log(0, WAIT, |l| {
        log_message(l) == Some("proxy refused the CONNECT tunnel to the hub")
    });
    let (at, line) = first.expect("the agent logs the proxy's refusal");
    // tinyproxy answers bad credentials with 401 (and missing ones with 407).
    let status = log_field(&line, "status").and_then(Value::as_u64);
    assert!(matches!(status, Some(401 | 407)), "{line}");
    let status_line = log_field(&line, "status_line").and_then(Value::as_str);
    assert!(
        status_line.is_some_and(
            |s| s.starts_with("HTTP/1.") && s.contains(&format!(" {} ", status.unwrap()))
        ),
        "{line}"
    );
    assert!(
        refused
            .proc
            .wait_log(at + 1, WAIT, |l| log_message(l)
                == Some("proxy refused the CONNECT tunnel to the hub"))
            .is_some(),
        "the agent retries after a refusal"
    );
    assert!(!agent_output_contains(&refused, "wrong-secret"));
    assert_eq!(refused.sessions_established(), 0);
    drop(refused);

    // Right password: through.
    let right = proxy.url(&format!("user:{SECRET}@"));
    let agent = site.agent(
        &site.hub.url(),
        &[("echo", target)],
        &[("NC_TRUST_ENV", "true"), ("http_proxy", &right)],
    );
    site.hub.wait_sessions(AGENT_ID, 1);
    agent.wait_ready();
    retry(WAIT, || {
        echo_roundtrip(site.hub.listener("echo"), b"authenticated")
    })
    .expect("echo through the authenticated proxy");
    assert!(!agent_output_contains(&agent, SECRET));
    let expected = format!("CONNECT 127.0.0.1:{} HTTP/1.1", site.hub.tunnel.port());
    assert!(
        proxy.connects().iter().filter(|c| **c == expected).count() >= 2,
        "both agents went through the proxy: {:?}",
        proxy.connects()
    );
}

#[test]
fn no_proxy_bypasses_a_proxy_that_does_not_answer() {
    let site = Site::start("proxy-bypass", &["echo"]);
    let dead = format!("http://{}", closed_port());
    let target = echo_target();

    // Control: the dead proxy is really in the way without NO_PROXY.
    let blocked = site.agent(
        &site.hub.url(),
        &[("echo", target)],
        &[("NC_TRUST_ENV", "true"), ("HTTP_PROXY", &dead)],
    );
    let failed = blocked.proc.wait_log(0, WAIT, |l| {
        log_message(l) == Some("connect failed")
            && log_field(l, "error")
                .and_then(Value::as_str)
                .is_some_and(|e| e.starts_with(&format!("proxy {dead}:")))
    });
    assert!(failed.is_some(), "the agent reports the unreachable proxy");
    assert_eq!(blocked.sessions_established(), 0);
    drop(blocked);

    for no_proxy in [
        ("NO_PROXY", "127.0.0.1"),
        ("no_proxy", "example.com, 127.0.0.1"),
    ] {
        let agent = site.agent(
            &site.hub.url(),
            &[("echo", target)],
            &[("NC_TRUST_ENV", "true"), ("HTTP_PROXY", &dead), no_proxy],
        );
        site.hub.wait_sessions(AGENT_ID, 1);
        agent.wait_ready();
        retry(WAIT, || {
            echo_roundtrip(site.hub.listener("echo"), b"direct")
        })
        .expect("echo with the proxy bypassed");
        drop(agent);
        site.hub.wait_sessions(AGENT_ID, 0);
    }
}

#[test]
fn without_trust_env_proxy_variables_are_ignored() {
    let site = Site::start("proxy-ignored", &["echo"]);
    let dead = format!("http://{}", closed_port());
    let agent = site.agent(
        &site.hub.url(),
        &[("echo", echo_target())],
        &[("HTTP_PROXY", &dead), ("HTTPS_PROXY", &dead)],
    );
    site.hub.wait_sessions(AGENT_ID, 1);
    agent.wait_ready();
    retry(WAIT, || {
        echo_roundtrip(site.hub.listener("echo"), b"direct")
    })
    .expect("echo without the proxy");
    assert!(
        agent
            .proc
            .wait_log(0, WAIT, |l| log_message(l)
                == Some("proxy variables are set but trust_env (NC_TRUST_ENV) is false: connecting directly"))
            .is_some()
    );
}
