//! A hub terminating TLS with a certificate from a private CA: the agent trusts it with
//! `NC_CA_FILE`, refuses it without, and reaches it through an `HTTPS_PROXY` as well.

use std::path::PathBuf;

use nowconnect_tests::*;
use serde_json::Value;

/// A test CA and a hub certificate it signed for `localhost` and 127.0.0.1, written to
/// `dir`: (CA bundle, hub chain, hub key).
fn private_ca(dir: &TempDir) -> (PathBuf, PathBuf, PathBuf) {
    let ca = TestCa::new(dir, "NowConnect e2e test CA");
    let (chain_file, key_file) = ca.server(dir, "hub", &["localhost", "127.0.0.1"]);
    (ca.file, chain_file, key_file)
}

/// A hub with TLS from a private CA; returns the site and the CA bundle.
fn tls_site(tag: &str) -> (Site, PathBuf) {
    let mut ca_file = PathBuf::new();
    let site = Site::start_with(tag, &["echo"], |config, dir| {
        let (ca, chain, key) = private_ca(dir);
        config.tls = Some((chain, key));
        ca_file = ca;
    });
    (site, ca_file)
}

#[test]
fn the_agent_trusts_a_private_ca_from_nc_ca_file() {
    let (site, ca_file) = tls_site("ca-trusted");
    let agent = site.agent(
        &site.hub.tls_url("localhost"),
        &[("echo", echo_target())],
        &[("NC_CA_FILE", ca_file.to_str().unwrap())],
    );
    site.hub.wait_sessions(AGENT_ID, 1);
    agent.wait_ready();
    // Bulk both ways: the hub must feed rustls record by record and drain plaintext in
    // between, or a fast upload overruns rustls' buffered-plaintext limit.
    let data = payload(21, 4 << 20);
    let back = exchange(site.hub.listener("echo"), &data).expect("echo over the TLS tunnel");
    assert_eq!(sha256(&back), sha256(&data), "echo checksum");
}

#[test]
fn without_nc_ca_file_the_private_certificate_is_refused() {
    let (site, _ca_file) = tls_site("ca-untrusted");
    let agent = site.agent(
        &site.hub.tls_url("localhost"),
        &[("echo", echo_target())],
        &[],
    );
    let refused = agent.proc.wait_log(0, WAIT, |l| {
        log_message(l) == Some("connect failed")
            && log_field(l, "error")
                .and_then(Value::as_str)
                .is_some_and(|e| e.starts_with("TLS handshake failed: invalid peer certificate"))
    });
    let (_, line) = refused.expect("the agent logs the certificate problem");
    let error = log_field(&line, "error").and_then(Value::as_str).unwrap();
    assert!(
        error.contains("UnknownIssuer"),
        "names the problem: {error}"
    );
    assert_eq!(agent.sessions_established(), 0);
    assert_eq!(
        site.hub
            .metric(&format!("nowconnect_sessions{{agent=\"{AGENT_ID}\"}}")),
        None,
        "the hub never saw a session"
    );
}

#[test]
fn wss_through_https_proxy_with_a_private_ca() {
    let (site, ca_file) = tls_site("ca-proxy");
    let proxy_addr = free_addr();
    let log = site.dir.join("tinyproxy.log");
    let conf = site.dir.join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "Port {}\nListen 127.0.0.1\nTimeout 600\nAllow 127.0.0.1\nConnectPort {}\n\
             LogLevel Info\nLogFile \"{}\"\n",
            proxy_addr.port(),
            site.hub.tunnel.port(),
            log.display()
        ),
    )
    .unwrap();
    let _proxy = spawn_program(
        "tinyproxy",
        &system_program("tinyproxy"),
        &["-d", "-c", conf.to_str().unwrap()],
        &[],
    );
    wait_listening(proxy_addr, "tinyproxy");
    let proxy_url = format!("http://{proxy_addr}");
    let agent = site.agent(
        &site.hub.tls_url("localhost"),
        &[("echo", echo_target())],
        &[
            ("NC_CA_FILE", ca_file.to_str().unwrap()),
            ("NC_TRUST_ENV", "true"),
            ("HTTPS_PROXY", &proxy_url),
            // The wss:// hub takes HTTPS_PROXY; this one must not be used.
            ("HTTP_PROXY", "http://127.0.0.1:9"),
        ],
    );
    site.hub.wait_sessions(AGENT_ID, 1);
    agent.wait_ready();
    retry(WAIT, || {
        echo_roundtrip(site.hub.listener("echo"), b"tls via proxy")
    })
    .expect("echo through proxy and TLS tunnel");
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let expected = format!("CONNECT localhost:{} HTTP/1.1", site.hub.tunnel.port());
    assert!(
        logged.contains(&expected),
        "tinyproxy logged no `{expected}`:\n{logged}"
    );
}
