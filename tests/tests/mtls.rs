//! TLS client certificates between agent and hub: a hub that requires certificates from its
//! CA, and certificate-bound tokens (RFC 8705 `cnf.x5t#S256`) with self-signed agent
//! certificates trusted only through the binding.

use std::path::PathBuf;

use nowconnect_tests::*;
use serde_json::json;

/// A private CA, written to `dir/ca.pem`, with the hub's certificate for `localhost`.
struct Pki {
    ca: TestCa,
    hub_chain: PathBuf,
    hub_key: PathBuf,
}

fn pki(dir: &TempDir) -> Pki {
    let ca = TestCa::new(dir, "NowConnect mTLS test CA");
    let (hub_chain, hub_key) = ca.server(dir, "hub", &["localhost"]);
    Pki {
        ca,
        hub_chain,
        hub_key,
    }
}

/// A hub on TLS from `pki`, with `tls_extra` and `security_extra` added to its configuration.
fn site(tag: &str, tls_extra: &str, security_extra: &str) -> (Site, Pki) {
    let mut made = None;
    let site = Site::start_with(tag, &["echo"], |config, dir| {
        let pki = pki(dir);
        config.tls = Some((pki.hub_chain.clone(), pki.hub_key.clone()));
        config.tls_extra = tls_extra.replace("$CA", pki.ca.file.to_str().unwrap());
        config.security_extra = security_extra.to_owned();
        made = Some(pki);
    });
    (site, made.unwrap())
}

/// An agent of `site` over TLS trusting `pki`'s CA, presenting `cert` (chain and key files)
/// when given and reading its token from `token` instead of the site's token file when given.
fn tls_agent(
    site: &Site,
    pki: &Pki,
    cert: Option<(&PathBuf, &PathBuf)>,
    token: Option<&PathBuf>,
) -> Agent {
    let mut env = vec![("NC_CA_FILE", pki.ca.file.to_str().unwrap())];
    if let Some((chain, key)) = cert {
        env.push(("NC_CLIENT_CERT", chain.to_str().unwrap()));
        env.push(("NC_CLIENT_KEY", key.to_str().unwrap()));
    }
    if let Some(token) = token {
        env.push(("NC_TOKEN_FILE", token.to_str().unwrap()));
    }
    site.agent(
        &site.hub.tls_url("localhost"),
        &[("echo", echo_target())],
        &env,
    )
}

fn auth_failures(site: &Site, reason: &str) -> f64 {
    site.hub
        .metric(&format!(
            "nowconnect_auth_failures_total{{reason=\"{reason}\"}}"
        ))
        .unwrap_or(0.0)
}

/// Starts an agent with `start` and checks that the hub refuses it: a refusal logged from
/// now on with the metric reason `reason` and a detail holding `detail`, counted in
/// `nowconnect_auth_failures_total`, and no session for the agent. `case` names the case in
/// every failure message. Returns the agent, still running.
fn refused_agent(
    site: &Site,
    case: &str,
    reason: &str,
    detail: &str,
    start: impl FnOnce() -> Agent,
) -> Agent {
    let from = site.hub.proc.log_len();
    let before = auth_failures(site, reason);
    let agent = start();
    let logged = site.hub.proc.wait_log(from, WAIT, |l| {
        log_message(l) == Some("agent refused: authentication failed")
            && log_field(l, "reason").and_then(serde_json::Value::as_str) == Some(reason)
            && log_field(l, "detail")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|d| d.contains(detail))
    });
    assert!(
        logged.is_some(),
        "{case}: no refusal logged as {reason} with {detail:?}"
    );
    let counted = poll_until(WAIT, || auth_failures(site, reason) > before);
    assert!(counted, "{case}: the refusal is not counted as {reason}");
    assert_eq!(agent.sessions_established(), 0, "{case}: a session");
    agent
}

#[test]
fn a_hub_requiring_certificates_serves_an_agent_with_one_from_its_ca() {
    let (site, pki) = site(
        "mtls-ca",
        "client_auth: required, client_ca_file: \"$CA\"",
        "",
    );
    let (cert, key, _) = client_cert(&site.dir, "agent", Some(&pki.ca));
    let agent = tls_agent(&site, &pki, Some((&cert, &key)), None);
    site.hub.wait_sessions(AGENT_ID, 1);
    agent.wait_ready();
    let data = payload(5, 1 << 20);
    let back = exchange(site.hub.listener("echo"), &data).expect("echo over mutual TLS");
    assert_eq!(sha256(&back), sha256(&data));
}

#[test]
fn a_hub_requiring_certificates_refuses_agents_without_one_or_with_a_foreign_one() {
    let (site, pki) = site(
        "mtls-refused",
        "client_auth: required, client_ca_file: \"$CA\"",
        "",
    );
    let (cert, key, _) = client_cert(&site.dir, "stranger", None);
    let bare = tls_agent(&site, &pki, None, None);
    let foreign = tls_agent(&site, &pki, Some((&cert, &key)), None);
    // Each side names the problem: no certificate, or one from an unknown issuer.
    for (agent, alert) in [(&bare, "CertificateRequired"), (&foreign, "UnknownCA")] {
        let failed = agent.proc.wait_log(0, WAIT, |l| {
            log_message(l) == Some("connect failed")
                && log_field(l, "error")
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(|e| e.contains(alert))
        });
        assert!(failed.is_some(), "the agent reports {alert}");
    }
    for problem in ["peer sent no certificates", "UnknownIssuer"] {
        let logged = site.hub.proc.wait_log(0, WAIT, |l| {
            log_message(l) == Some("agent connection refused: TLS handshake failed")
                && log_field(l, "error")
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(|e| e.contains(problem))
        });
        assert!(logged.is_some(), "the hub logs {problem:?}");
    }
    let refused = poll_until(WAIT, || {
        site.hub
            .proc
            .count_log("agent connection refused: TLS handshake failed")
            >= 2
    });
    assert!(refused, "the hub logs both refused handshakes");
    assert_eq!(
        bare.sessions_established() + foreign.sessions_established(),
        0
    );
}

#[test]
fn a_certificate_bound_token_works_only_with_its_certificate() {
    let (site, pki) = site(
        "mtls-bound",
        "client_auth: optional",
        "mtls: { require_bound_tokens: true }",
    );
    // Self-signed certificates: the hub trusts them only through the token's binding.
    let (cert_a, key_a, der_a) = client_cert(&site.dir, "agent-a", None);
    let (cert_b, key_b, _) = client_cert(&site.dir, "agent-b", None);
    let bound = site.dir.join("bound-token");
    write_atomically(
        &bound,
        site.key
            .token_with(
                AGENT_ID,
                "jti-bound",
                now_unix() + 3600,
                json!({ "cnf": { "x5t#S256": x5t_s256(&der_a) } }),
            )
            .as_bytes(),
    );

    // The bound token with its own certificate: a session, and traffic flows.
    let good = tls_agent(&site, &pki, Some((&cert_a, &key_a)), Some(&bound));
    site.hub.wait_sessions(AGENT_ID, 1);
    good.wait_ready();
    let data = payload(9, 256 << 10);
    let back = exchange(site.hub.listener("echo"), &data).expect("echo with a bound token");
    assert_eq!(sha256(&back), sha256(&data));
    drop(good);

    // The same token with another certificate, and without any: refused. One agent at a
    // time, so that each refusal is the one of its case.
    let other = refused_agent(
        &site,
        "bound token with another certificate",
        "cert_binding",
        "another client certificate",
        || tls_agent(&site, &pki, Some((&cert_b, &key_b)), Some(&bound)),
    );
    drop(other);
    let none = refused_agent(
        &site,
        "bound token without a certificate",
        "cert_binding",
        "none was presented",
        || tls_agent(&site, &pki, None, Some(&bound)),
    );
    drop(none);
    // An unbound token with a certificate: refused, since bound tokens are required.
    let unbound = refused_agent(
        &site,
        "unbound token while bound ones are required",
        "unbound_token",
        "not bound to a client certificate",
        || tls_agent(&site, &pki, Some((&cert_a, &key_a)), None),
    );
    drop(unbound);
}

#[test]
fn a_certificate_bound_token_is_refused_on_a_plain_tunnel() {
    let site = Site::start("mtls-plain", &["echo"]);
    let (_, _, der) = client_cert(&site.dir, "agent", None);
    write_atomically(
        &site.token_file,
        site.key
            .token_with(
                AGENT_ID,
                "jti-1",
                now_unix() + 3600,
                json!({ "cnf": { "x5t#S256": x5t_s256(&der) } }),
            )
            .as_bytes(),
    );
    let agent = refused_agent(
        &site,
        "bound token sent to a plain listener",
        "cert_binding",
        "none was presented",
        || site.agent(&site.hub.url(), &[("echo", echo_target())], &[]),
    );
    drop(agent);
}
