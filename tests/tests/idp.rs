//! Agent tokens from a real identity provider: `oidc-provider`, an OpenID-certified server,
//! run by `tests/node/idp.mjs` on loopback. It issues JWT access tokens (RFC 9068) to
//! client-credentials clients for the hub's resource indicator, carrying `agent_id` and
//! `scope`, and binds them to a DPoP key (RFC 9449) or a TLS client certificate (RFC 8705)
//! when the client asks for that. The hub fetches the provider's key set over HTTP.
//!
//! Each kind of token gets an agent session that carries traffic, and each is refused, with
//! its own metric reason, when presented with the wrong binding.
//!
//! The provider needs Node.js and the packages pinned in `tests/node/package-lock.json`;
//! `scripts/test.sh` installs both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nowconnect_tests::*;
use serde_json::Value;

/// The scope every client asks for: the `echo` connector and nothing else.
const SCOPE: &str = "connector:echo";

// ---------------------------------------------------------------------------------------------
// The identity provider

/// `tests/node`, with the script and its installed packages.
fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("node")
}

/// The `node` program, once it is clear that the provider's packages are installed; panics
/// with how to install them otherwise.
fn node() -> PathBuf {
    let how = "run scripts/test.sh, which installs Node.js and the packages pinned in \
               tests/node/package-lock.json (npm ci in tests/node)";
    for package in ["oidc-provider", "jose"] {
        let manifest = node_dir()
            .join("node_modules")
            .join(package)
            .join("package.json");
        assert!(
            manifest.is_file(),
            "the Node package {package} is not installed ({} is missing): {how}",
            manifest.display()
        );
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/bin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join("node"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("`node` is not installed: {how}"))
}

/// A running `oidc-provider` and the URLs it announced.
struct Idp {
    proc: Proc,
    node: PathBuf,
    issuer: String,
    jwks_uri: String,
    token_endpoint: String,
    /// The token endpoint on the HTTPS listener that asks for client certificates.
    mtls_token_endpoint: Option<String>,
}

/// An access token and what the provider said and put in it.
struct Token {
    raw: String,
    /// `token_type` of the token response: `Bearer` or `DPoP`.
    token_type: String,
    header: Value,
    claims: Value,
}

impl Idp {
    /// Starts the provider; with `tls` (certificate and key files for 127.0.0.1) it also
    /// serves its token endpoint over HTTPS for certificate-bound tokens.
    fn start(tls: Option<(&Path, &Path)>) -> Idp {
        let node = node();
        let script = node_dir().join("idp.mjs");
        let mut args = vec![
            script.to_str().unwrap(),
            "serve",
            "--audience",
            AUDIENCE,
            "--agent-id",
            AGENT_ID,
        ];
        if let Some((cert, key)) = tls {
            args.extend([
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ]);
        }
        let proc = spawn_program("identity provider", &node, &args, &[]);
        let Some((_, ready)) = proc.wait_log(0, WAIT, |l| {
            log_message(l) == Some("identity provider ready")
        }) else {
            panic!(
                "the identity provider did not start: {:?}",
                proc.text_lines()
            );
        };
        let url = |key: &str| ready.get(key).and_then(Value::as_str).map(str::to_owned);
        Idp {
            issuer: url("issuer").expect("issuer"),
            jwks_uri: url("jwks_uri").expect("jwks_uri"),
            token_endpoint: url("token_endpoint").expect("token_endpoint"),
            mtls_token_endpoint: url("mtls_token_endpoint"),
            node,
            proc,
        }
    }

    /// Asks `endpoint` for a token for `client` with `extra` arguments of `idp.mjs token`
    /// (a DPoP key, a client certificate); panics when the provider refuses.
    fn token(&self, endpoint: &str, client: &str, extra: &[&str]) -> Token {
        let script = node_dir().join("idp.mjs");
        let mut args = vec![
            script.to_str().unwrap(),
            "token",
            "--endpoint",
            endpoint,
            "--client",
            client,
            "--scope",
            SCOPE,
        ];
        args.extend_from_slice(extra);
        let (status, stdout, stderr) = run_program_within(&self.node, &args, None, WAIT);
        assert!(
            status.success(),
            "no token for {client}: {stderr}\nprovider: {:?}",
            self.proc.text_lines()
        );
        let response: Value = serde_json::from_slice(&stdout).expect("a JSON token response");
        let raw = response["access_token"].as_str().expect("access_token");
        let part = |index: usize| -> Value {
            let text = raw.split('.').nth(index).expect("a JWT of three parts");
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(text).unwrap()).unwrap()
        };
        Token {
            raw: raw.to_owned(),
            token_type: response["token_type"].as_str().unwrap_or("").to_owned(),
            header: part(0),
            claims: part(1),
        }
    }

    /// Checks what every agent token must carry, as issued by this provider; returns the
    /// confirmation claim `cnf` (Null when the token is not bound).
    fn check_claims<'t>(&self, token: &'t Token, token_type: &str) -> &'t Value {
        assert_eq!(token.token_type, token_type);
        assert_eq!(token.header["typ"], "at+jwt", "{}", token.header);
        let claims = &token.claims;
        assert_eq!(claims["iss"], self.issuer.as_str(), "{claims}");
        assert_eq!(claims["aud"], AUDIENCE, "{claims}");
        assert_eq!(claims["agent_id"], AGENT_ID, "{claims}");
        assert_eq!(claims["scope"], SCOPE, "{claims}");
        &claims["cnf"]
    }
}

// ---------------------------------------------------------------------------------------------
// A hub that trusts the provider, and its refusals

/// A hub trusting `idp` (its key set and issuer) with a listener per connector, which
/// requires connector scopes and has `security_extra` and `edit` applied; ready once it
/// has fetched the provider's keys.
fn site(
    tag: &str,
    idp: &Idp,
    connectors: &[&str],
    security_extra: &str,
    edit: impl FnOnce(&mut HubConfig),
) -> Site {
    let site = Site::start_with(tag, connectors, |config, _| {
        config.jwks_url = Some(idp.jwks_uri.clone());
        config.issuer = idp.issuer.clone();
        config.security_extra = match security_extra {
            "" => "require_connector_scopes: true".to_owned(),
            extra => format!("require_connector_scopes: true, {extra}"),
        };
        edit(config);
    });
    site.hub.wait_ready();
    site
}

/// Writes `token` to a file of the site's directory, for an agent's `NC_TOKEN_FILE`.
fn token_file(site: &Site, name: &str, token: &Token) -> PathBuf {
    let path = site.dir.join(name);
    write_atomically(&path, token.raw.as_bytes());
    path
}

/// The hub's authentication failures by reason, those counted at least once.
fn auth_failures(hub: &Hub) -> BTreeMap<String, f64> {
    let (status, body) = hub.admin_get("/metrics");
    assert_eq!(status, 200, "/metrics");
    body.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("nowconnect_auth_failures_total{reason=\"")?;
            let (reason, value) = rest.split_once("\"} ")?;
            let value: f64 = value.parse().ok()?;
            (value > 0.0).then(|| (reason.to_owned(), value))
        })
        .collect()
}

/// Waits until `agent` was refused with a 401 carrying `challenge`, then checks that the
/// hub counted exactly the reasons `reasons` so far. The hub counts a refusal before it
/// answers it, so the agent's own reason is among them, whatever earlier agents did.
fn assert_refused(site: &Site, agent: &Agent, challenge: &str, reasons: &[&str]) {
    let told = agent.proc.wait_log(0, WAIT, |l| {
        log_message(l) == Some("hub refused the session")
            && log_field(l, "status").and_then(Value::as_u64) == Some(401)
            && log_field(l, "www_authenticate").and_then(Value::as_str) == Some(challenge)
    });
    assert!(told.is_some(), "the agent was not refused with {challenge}");
    let counted: Vec<String> = auth_failures(&site.hub).into_keys().collect();
    let mut expected: Vec<&str> = reasons.to_vec();
    expected.sort_unstable();
    assert_eq!(counted, expected, "the hub's auth failure reasons");
    assert_eq!(
        agent.sessions_established(),
        0,
        "a refused agent got a session"
    );
}

/// Checks that the hub logged a refusal for `reason` whose detail mentions `detail`.
fn assert_hub_logged(site: &Site, reason: &str, detail: &str) {
    let logged = site.hub.proc.wait_log(0, WAIT, |l| {
        log_message(l) == Some("agent refused: authentication failed")
            && log_field(l, "reason").and_then(Value::as_str) == Some(reason)
            && log_field(l, "detail")
                .and_then(Value::as_str)
                .is_some_and(|d| d.contains(detail))
    });
    assert!(logged.is_some(), "the hub logs {reason} with {detail:?}");
}

/// Waits for a session of [`AGENT_ID`] and sends 1 MiB through the `echo` connector.
fn assert_serves(site: &Site, agent: &Agent, seed: u64) {
    site.hub.wait_sessions(AGENT_ID, 1);
    agent.wait_ready();
    let data = payload(seed, 1 << 20);
    let back = exchange(site.hub.listener("echo"), &data).expect("echo through the session");
    assert_eq!(sha256(&back), sha256(&data));
}

// ---------------------------------------------------------------------------------------------
// Certificates

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn a_plain_bearer_token_gets_a_session_for_its_scopes_and_is_refused_with_a_dpop_proof() {
    let idp = Idp::start(None);
    let site = site("idp-bearer", &idp, &["echo", "spare"], "", |_| {});
    let token = idp.token(&idp.token_endpoint, "agent-bearer", &[]);
    assert!(idp.check_claims(&token, "Bearer").is_null());
    let file = token_file(&site, "bearer-token", &token);
    let token_env = ("NC_TOKEN_FILE", file.to_str().unwrap());
    let targets = [("echo", echo_target()), ("spare", echo_target())];

    // A session, with traffic on the connector the token's scope grants, and the other
    // connector refused.
    let agent = site.agent(&site.hub.url(), &targets, &[token_env]);
    assert_serves(&site, &agent, 21);
    let spare = agent.proc.wait_log(0, WAIT, |l| {
        log_message(l) == Some("hub refused connector")
            && log_field(l, "connector").and_then(Value::as_str) == Some("spare")
            && log_field(l, "reason").and_then(Value::as_str) == Some("scope")
    });
    assert!(
        spare.is_some(),
        "the connector outside the scope is refused"
    );
    let counted = poll_until(WAIT, || {
        auth_failures(&site.hub).contains_key("connector_scope")
    });
    assert!(counted, "connector_scope is counted");
    drop(agent);

    // The same token with the DPoP scheme: the proof binds nothing, refused.
    let key = DpopKey::p256(&site.dir.join("agent.key"));
    let agent = site.agent(&site.hub.url(), &targets, &[token_env, key.env()]);
    assert_refused(
        &site,
        &agent,
        r#"DPoP error="invalid_token""#,
        &["connector_scope", "dpop_unbound"],
    );
}

#[test]
fn a_dpop_bound_token_works_only_with_its_key_and_the_dpop_scheme() {
    let idp = Idp::start(None);
    let site = site("idp-dpop", &idp, &["echo"], "", |_| {});
    // The token request carries a proof made with the agent's own key.
    let key = DpopKey::p256(&site.dir.join("agent.key"));
    let token = idp.token(
        &idp.token_endpoint,
        "agent-dpop",
        &["--dpop-key", key.file.to_str().unwrap()],
    );
    let cnf = idp.check_claims(&token, "DPoP");
    assert_eq!(cnf["jkt"], key.jkt.as_str(), "bound to the agent's key");
    let file = token_file(&site, "dpop-token", &token);
    let token_env = ("NC_TOKEN_FILE", file.to_str().unwrap());
    let targets = [("echo", echo_target())];

    let agent = site.agent(&site.hub.url(), &targets, &[token_env, key.env()]);
    assert_serves(&site, &agent, 22);
    drop(agent);

    // As a bearer token: refused, the binding is not optional.
    let bearer = site.agent(&site.hub.url(), &targets, &[token_env]);
    assert_refused(
        &site,
        &bearer,
        r#"Bearer error="invalid_token""#,
        &["dpop_binding"],
    );
    drop(bearer);

    // With proofs from another key: refused, the thumbprint differs.
    let other = DpopKey::ed25519(&site.dir.join("other.key"));
    let thief = site.agent(&site.hub.url(), &targets, &[token_env, other.env()]);
    assert_refused(
        &site,
        &thief,
        r#"DPoP error="invalid_dpop_proof""#,
        &["dpop_binding", "dpop_jkt"],
    );
}

#[test]
fn with_dpop_required_the_plain_token_is_refused_and_a_bound_one_served() {
    let idp = Idp::start(None);
    let site = site(
        "idp-dpop-required",
        &idp,
        &["echo"],
        "dpop: { required: true }",
        |_| {},
    );
    let targets = [("echo", echo_target())];

    let plain = idp.token(&idp.token_endpoint, "agent-bearer", &[]);
    assert!(idp.check_claims(&plain, "Bearer").is_null());
    let plain_file = token_file(&site, "bearer-token", &plain);
    let bearer = site.agent(
        &site.hub.url(),
        &targets,
        &[("NC_TOKEN_FILE", plain_file.to_str().unwrap())],
    );
    assert_refused(
        &site,
        &bearer,
        r#"DPoP error="invalid_token""#,
        &["dpop_required"],
    );
    drop(bearer);

    // An Ed25519 key this time: the provider accepts EdDSA proofs too.
    let key = DpopKey::ed25519(&site.dir.join("agent.key"));
    let bound = idp.token(
        &idp.token_endpoint,
        "agent-dpop",
        &["--dpop-key", key.file.to_str().unwrap()],
    );
    assert_eq!(idp.check_claims(&bound, "DPoP")["jkt"], key.jkt.as_str());
    let bound_file = token_file(&site, "dpop-token", &bound);
    let agent = site.agent(
        &site.hub.url(),
        &targets,
        &[("NC_TOKEN_FILE", bound_file.to_str().unwrap()), key.env()],
    );
    assert_serves(&site, &agent, 23);
    assert_eq!(
        auth_failures(&site.hub).into_keys().collect::<Vec<_>>(),
        ["dpop_required"]
    );
}

#[test]
fn a_certificate_bound_token_works_only_with_its_certificate() {
    let pki = TempDir::new("idp-mtls-pki");
    let ca = TestCa::new(&pki, "NowConnect identity provider test CA");
    let (idp_cert, idp_key) = ca.server(&pki, "idp", &["127.0.0.1"]);
    let (hub_cert, hub_key) = ca.server(&pki, "hub", &["localhost"]);
    let idp = Idp::start(Some((&idp_cert, &idp_key)));
    // TLS on the tunnel, client certificates optional and trusted only through the binding.
    let site = site(
        "idp-mtls",
        &idp,
        &["echo"],
        "mtls: { require_bound_tokens: true }",
        |config| {
            config.tls = Some((hub_cert.clone(), hub_key.clone()));
            config.tls_extra = "client_auth: optional".to_owned();
        },
    );
    let (cert_a, key_a, der_a) = client_cert(&pki, "agent-a", None);
    let (cert_b, key_b, _) = client_cert(&pki, "agent-b", None);

    // The token request presents certificate A over TLS.
    let endpoint = idp
        .mtls_token_endpoint
        .clone()
        .expect("an HTTPS token endpoint");
    let ca_file = ca.file.to_str().unwrap();
    let token = idp.token(
        &endpoint,
        "agent-mtls",
        &[
            "--ca",
            ca_file,
            "--cert",
            cert_a.to_str().unwrap(),
            "--key",
            key_a.to_str().unwrap(),
        ],
    );
    let cnf = idp.check_claims(&token, "Bearer");
    assert_eq!(cnf["x5t#S256"], x5t_s256(&der_a).as_str(), "bound to A");
    let bound_file = token_file(&site, "mtls-token", &token);
    let plain = idp.token(&idp.token_endpoint, "agent-bearer", &[]);
    let plain_file = token_file(&site, "bearer-token", &plain);

    let url = site.hub.tls_url("localhost");
    let targets = [("echo", echo_target())];
    let agent_with = |token: &Path, cert: Option<(&Path, &Path)>| {
        let mut env = vec![
            ("NC_CA_FILE", ca_file),
            ("NC_TOKEN_FILE", token.to_str().unwrap()),
        ];
        if let Some((chain, key)) = cert {
            env.push(("NC_CLIENT_CERT", chain.to_str().unwrap()));
            env.push(("NC_CLIENT_KEY", key.to_str().unwrap()));
        }
        site.agent(&url, &targets, &env)
    };

    let agent = agent_with(&bound_file, Some((&cert_a, &key_a)));
    assert_serves(&site, &agent, 24);
    drop(agent);

    // Without a certificate, then with another one: refused.
    let bare = agent_with(&bound_file, None);
    assert_refused(
        &site,
        &bare,
        r#"Bearer error="invalid_token""#,
        &["cert_binding"],
    );
    assert_hub_logged(&site, "cert_binding", "none was presented");
    drop(bare);
    let other = agent_with(&bound_file, Some((&cert_b, &key_b)));
    assert_refused(
        &site,
        &other,
        r#"Bearer error="invalid_token""#,
        &["cert_binding"],
    );
    assert_hub_logged(&site, "cert_binding", "another client certificate");
    drop(other);

    // The plain token, even with certificate A: refused, bound tokens are required here.
    let unbound = agent_with(&plain_file, Some((&cert_a, &key_a)));
    assert_refused(
        &site,
        &unbound,
        r#"Bearer error="invalid_token""#,
        &["cert_binding", "unbound_token"],
    );
}
