//! DPoP (RFC 9449): every refusal asserted by its metric reason and challenge, the valid
//! proofs, `htu` normalisation and the replay cache.

use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use nowconnect_core::config::{SecurityConfig, TunnelConfig, WsUrl};
use serde_json::{Value, json};

use super::support::{
    NOW, TestKey, b64, claims_with, jwks, security, store_without_refresher, with_member,
};
use crate::auth::dpop::{Admission, ReplayCache};
use crate::auth::{
    Authenticator, Binding, Credentials, Identity, MAX_PROOF_BYTES, PROOF_MAX_AGE_SECS,
    PROOF_MAX_AHEAD_SECS, Refusal, Scheme, access_token_hash, normalize_htu, request_htu,
    thumbprint,
};

const HOST: &str = "hub.test:8443";
const PATH: &str = "/nowconnect/v1/tunnel";
/// The URI of a request with [`HOST`] and [`PATH`] to a hub without TLS.
const HTU: &str = "http://hub.test:8443/nowconnect/v1/tunnel";
const PROOF_INVALID: &str = r#"DPoP error="invalid_dpop_proof""#;
const TOKEN_INVALID: &str = r#"DPoP error="invalid_token""#;

/// The token issuer's key and an authenticator trusting it.
struct Setup {
    issuer: TestKey,
    auth: Authenticator,
}

impl Setup {
    fn new() -> Setup {
        Setup::with(security(), TunnelConfig::default())
    }

    fn with(security: SecurityConfig, tunnel: TunnelConfig) -> Setup {
        let issuer = TestKey::ec("issuer");
        let store = store_without_refresher(Some(&jwks(&[&issuer])));
        let auth = Authenticator::new(&security, &tunnel, store);
        Setup { issuer, auth }
    }

    /// A token bound to `key` by `cnf.jkt`, with token id `jti`.
    fn bound_token(&self, key: &TestKey, jti: &str) -> String {
        let mut claims = claims_with("cnf", json!({ "jkt": jkt(key) }));
        claims["jti"] = json!(jti);
        self.issuer.sign(&claims)
    }

    /// A token without `cnf`.
    fn bearer_token(&self) -> String {
        self.issuer.sign(&claims_with("jti", json!("plain")))
    }
}

/// The RFC 7638 thumbprint of `key`, computed by jsonwebtoken rather than by the hub.
fn jkt(key: &TestKey) -> String {
    let jwk: Jwk = serde_json::from_value(key.public_jwk()).unwrap();
    jwk.thumbprint(ThumbprintHash::SHA256).unwrap()
}

/// The header of a proof made with `key`.
fn proof_header(key: &TestKey) -> Value {
    json!({ "typ": "dpop+jwt", "alg": alg_name(key), "jwk": key.public_jwk() })
}

fn alg_name(key: &TestKey) -> String {
    serde_json::to_value(key.alg)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

/// Claims of a valid proof for `token`, with a `jti` made of `seed`.
fn proof_claims(token: &str, seed: &str) -> Value {
    json!({
        "jti": format!("proof-{seed}"),
        "htm": "GET",
        "htu": HTU,
        "iat": NOW,
        "ath": access_token_hash(token),
    })
}

/// `proof_claims` with `name` set to `value`, or removed for `Value::Null`.
fn proof_claims_with(token: &str, name: &str, value: Value) -> Value {
    with_member(proof_claims(token, name), name, value)
}

/// A valid proof for `token` made with `key`.
fn proof(key: &TestKey, token: &str, seed: &str) -> String {
    key.sign_json(&proof_header(key), &proof_claims(token, seed))
}

/// Runs `authenticate` at [`NOW`] for a request with this `Authorization` value and these
/// `DPoP` headers.
async fn attempt(
    auth: &Authenticator,
    authorization: &str,
    proofs: &[&str],
) -> Result<Identity, Refusal> {
    let request = Credentials {
        authorization: Some(authorization.as_bytes()),
        authorization_count: 1,
        dpop: proofs.first().map(|p| p.as_bytes()),
        dpop_count: proofs.len(),
        host: HOST,
        path: PATH,
        certificate: None,
    };
    auth.authenticate(&request, NOW).await
}

/// `DPoP <token>` with `proof`.
async fn dpop(auth: &Authenticator, token: &str, proof: &str) -> Result<Identity, Refusal> {
    attempt(auth, &format!("DPoP {token}"), &[proof]).await
}

/// The refusal of `DPoP <token>` with `proof`: its reason and challenge. Checks that neither
/// the token nor the proof reaches the log text.
async fn refused(auth: &Authenticator, token: &str, proof: &str) -> (&'static str, &'static str) {
    let refusal = dpop(auth, token, proof).await.expect_err("proof accepted");
    assert_no_credentials(&refusal, &[token, proof]);
    (refusal.reason(), refusal.www_authenticate())
}

/// Asserts that `DPoP <token>` with `proof` is refused with the metric reason and challenge
/// `expected`; every failure message starts with `case`, the name of the case in the
/// negative suite.
async fn assert_refused(
    auth: &Authenticator,
    case: &str,
    token: &str,
    proof: &str,
    expected: (&str, &str),
) {
    match dpop(auth, token, proof).await {
        Ok(_) => panic!("{case}: accepted"),
        Err(refusal) => {
            assert_no_credentials(&refusal, &[token, proof]);
            assert_eq!(
                (refusal.reason(), refusal.www_authenticate()),
                expected,
                "{case}: refused as {refusal}"
            );
        }
    }
}

fn assert_no_credentials(refusal: &Refusal, credentials: &[&str]) {
    for shown in [refusal.to_string(), format!("{refusal:?}")] {
        for credential in credentials {
            for part in credential.split('.').filter(|p| p.len() > 8) {
                assert!(!shown.contains(part), "{shown} holds a credential");
            }
        }
    }
}

#[tokio::test]
async fn valid_es256_and_eddsa_proofs_are_accepted() {
    let setup = Setup::new();
    for key in [TestKey::ec("agent"), TestKey::ed25519("agent")] {
        let token = setup.bound_token(&key, "t1");
        let identity = dpop(&setup.auth, &token, &proof(&key, &token, "valid"))
            .await
            .unwrap();
        assert_eq!(identity.agent_id, "agent-foo-01");
        assert_eq!(identity.binding, Binding::DpopKey(jkt(&key)));
    }
    assert_eq!(setup.auth.replay_cache_for_tests().len(), 2);
}

#[tokio::test]
async fn an_rsa_proof_and_a_lowercase_scheme_are_accepted() {
    let setup = Setup::new();
    let key = TestKey::rsa("agent");
    let token = setup.bound_token(&key, "t1");
    let proof = proof(&key, &token, "rsa");
    attempt(&setup.auth, &format!("dpop   {token}"), &[&proof])
        .await
        .unwrap();
}

#[tokio::test]
async fn the_thumbprint_agrees_with_rfc_7638() {
    for key in [TestKey::ec("a"), TestKey::ed25519("b"), TestKey::rsa("c")] {
        // The hub's own computation ignores kid, use and alg.
        let jwk = key.jwk.as_object().unwrap();
        assert_eq!(thumbprint(jwk).unwrap(), jkt(&key));
    }
}

#[tokio::test]
async fn wrong_htm_is_refused() {
    let setup = Setup::new();
    let key = TestKey::ec("agent");
    let token = setup.bound_token(&key, "t1");
    for (case, htm) in [
        ("htm POST", json!("POST")),
        ("htm get in lower case", json!("get")),
        ("htm not a string", json!(1)),
        ("missing htm", Value::Null),
    ] {
        let claims = proof_claims_with(&token, "htm", htm);
        let proof = key.sign_json(&proof_header(&key), &claims);
        let expected = ("dpop_htm", PROOF_INVALID);
        assert_refused(&setup.auth, case, &token, &proof, expected).await;
    }
}

#[tokio::test]
async fn htu_naming_another_path_or_host_is_refused() {
    let setup = Setup::new();
    let key = TestKey::ec("agent");
    let token = setup.bound_token(&key, "t1");
    for (case, htu) in [
        (
            "htu with another path",
            json!("http://hub.test:8443/nowconnect/v1/other"),
        ),
        ("htu with the root path", json!("http://hub.test:8443/")),
        (
            "htu with another host",
            json!("http://other.test:8443/nowconnect/v1/tunnel"),
        ),
        (
            "htu with another port",
            json!("http://hub.test:9443/nowconnect/v1/tunnel"),
        ),
        (
            "htu without the port",
            json!("http://hub.test/nowconnect/v1/tunnel"),
        ),
        (
            "htu with https for a plain tunnel",
            json!("https://hub.test:8443/nowconnect/v1/tunnel"),
        ),
        (
            "htu with user information",
            json!("http://user@hub.test:8443/nowconnect/v1/tunnel"),
        ),
        (
            "htu with an ftp scheme",
            json!("ftp://hub.test:8443/nowconnect/v1/tunnel"),
        ),
        (
            "htu without scheme and host",
            json!("/nowconnect/v1/tunnel"),
        ),
        ("htu not a string", json!(8443)),
        ("missing htu", Value::Null),
    ] {
        let claims = proof_claims_with(&token, "htu", htu);
        let proof = key.sign_json(&proof_header(&key), &claims);
        let expected = ("dpop_htu", PROOF_INVALID);
        assert_refused(&setup.auth, case, &token, &proof, expected).await;
    }
}

#[tokio::test]
async fn htu_is_compared_after_normalisation() {
    let setup = Setup::new();
    let key = TestKey::ec("agent");
    let token = setup.bound_token(&key, "t1");
    for (n, htu) in [
        "HTTP://HUB.test:8443/nowconnect/v1/tunnel",
        "ws://hub.test:8443/nowconnect/v1/tunnel",
        "http://hub.test:8443/nowconnect/v1/tunnel?query=1#fragment",
        "http://hub.test:8443/%6Eowconnect/v1/tunnel",
    ]
    .into_iter()
    .enumerate()
    {
        let mut claims = proof_claims_with(&token, "htu", json!(htu));
        claims["jti"] = json!(format!("htu-{n}"));
        let proof = key.sign_json(&proof_header(&key), &claims);
        dpop(&setup.auth, &token, &proof)
            .await
            .unwrap_or_else(|e| panic!("{htu}: {e}"));
    }
}

#[tokio::test]
async fn htu_follows_public_url_when_it_is_set() {
    let tunnel = TunnelConfig {
        public_url: Some(WsUrl::parse("wss://Hub.Example.com:443/nowconnect/v1/tunnel").unwrap()),
        ..TunnelConfig::default()
    };
    let setup = Setup::with(security(), tunnel);
    let key = TestKey::ec("agent");
    let token = setup.bound_token(&key, "t1");
    let mut claims = proof_claims(&token, "public");
    claims["htu"] = json!("https://hub.example.com/nowconnect/v1/tunnel");
    let proof = key.sign_json(&proof_header(&key), &claims);
    dpop(&setup.auth, &token, &proof).await.unwrap();
    // The request's Host no longer counts.
    let own_host = key.sign_json(&proof_header(&key), &proof_claims(&token, "host"));
    assert_eq!(refused(&setup.auth, &token, &own_host).await.0, "dpop_htu");
}

#[tokio::test]
async fn htu_uses_https_when_the_tunnel_serves_tls() {
    let tunnel = TunnelConfig {
        tls: Some(nowconnect_core::config::TlsConfig {
            cert_file: "/unused.crt".into(),
            key_file: "/unused.key".into(),
            client_ca_file: None,
            client_auth: nowconnect_core::config::ClientAuth::None,
        }),
        ..TunnelConfig::default()
    };
    let setup = Setup::with(security(), tunnel);
    let key = TestKey::ec("agent");
    let token = setup.bound_token(&key, "t1");
    let mut claims = proof_claims(&token, "tls");
    claims["htu"] = json!("https://hub.test:8443/nowconnect/v1/tunnel");
    let proof = key.sign_json(&proof_header(&key), &claims);
    dpop(&setup.auth, &token, &proof).await.unwrap();
    let plain = key.sign_json(&proof_header(&key), &proof_claims(&token, "plain"));
    assert_eq!(refused(&setup.auth, &token, &plain).await.0, "dpop_htu");
}

#[tokio::test]
async fn missing_or_wrong_ath_is_refused() {
    let setup = Setup::new();
    let key = TestKey::ec("agent");
    let token = setup.bound_token(&key, "t1");
    for (case, ath) in [
        ("missing ath", Value::Null),
        (
            "ath of another token",
            json!(access_token_hash("another token")),
        ),
        (
            "ath encoding the token unhashed",
            json!(b64(token.as_bytes())),
        ),
        ("ath not a string", json!(42)),
    ] {
        let claims = proof_claims_with(&token, "ath", ath);
        let proof = key.sign_json(&proof_header(&key), &claims);
        let expected = ("dpop_ath", PROOF_INVALID);
        assert_refused(&setup.auth, case, &token, &proof, expected).await;
    }
}

#[tokio::test]
async fn iat_outside_the_window_is_refused() {
    let setup = Setup::new();
    let key = TestKey::ec("agent");
    let token = setup.bound_token(&key, "t1");
    let stale = NOW - PROOF_MAX_AGE_SECS - 1;
    let future = NOW + PROOF_MAX_AHEAD_SECS + 1;
    for (case, iat) in [
        ("stale iat", json!(stale)),
        ("future iat", json!(future)),
        ("iat a string", json!("now")),
        ("negative iat", json!(-1)),
        ("missing iat", Value::Null),
    ] {
        let claims = proof_claims_with(&token, "iat", iat);
        let proof = key.sign_json(&proof_header(&key), &claims);
        let expected = ("dpop_iat", PROOF_INVALID);
        assert_refused(&setup.auth, case, &token, &proof, expected).await;
    }
    for (n, iat) in [NOW - PROOF_MAX_AGE_SECS, NOW + PROOF_MAX_AHEAD_SECS]
        .into_iter()
        .enumerate()
    {
        let mut claims = proof_claims_with(&token, "iat", json!(iat));
        claims["jti"] = json!(format!("edge-{n}"));
        let proof = key.sign_json(&proof_header(&key), &claims);
        dpop(&setup.auth, &token, &proof).await.unwrap();
    }
}

#[tokio::test]
async fn wrong_typ_is_refused() {
    let setup = Setup::new();
    let key = TestKey::ec("agent");
    let token = setup.bound_token(&key, "t1");
    for (case, typ) in [
        ("proof typ JWT", json!("JWT")),
        ("proof typ at+jwt", json!("at+jwt")),
        ("proof typ not a string", json!(1)),
        ("missing proof typ", Value::Null),
    ] {
        let mut header = proof_header(&key);
        if typ.is_null() {
            header.as_object_mut().unwrap().remove("typ");
        } else {
            header["typ"] = typ;
        }
        let proof = key.sign_json(&header, &proof_claims(&token, "typ"));
        let expected = ("dpop_typ", PROOF_INVALID);
        assert_refused(&setup.auth, case, &token, &proof, expected).await;
    }
    // Media types compare case-insensitively.
    let mut header = proof_header(&key);
    header["typ"] = json!("DPoP+JWT");
    let proof = key.sign_json(&header, &proof_claims(&token, "typ-case"));
    dpop(&setup.auth, &token, &proof).await.unwrap();
}

#[tokio::test]
async fn missing_or_oversized_jti_is_refused() {
    let setup = Setup::new();
    let key = TestKey::ec("agent");
    let token = setup.bound_token(&key, "t1");
    for (case, jti) in [
        ("missing jti", Value::Null),
        ("empty jti", json!("")),
        ("jti of 129 characters", json!("j".repeat(129))),
        ("jti a number", json!(7)),
    ] {
        let claims = proof_claims_with(&token, "jti", jti);
        let proof = key.sign_json(&proof_header(&key), &claims);
        let expected = ("dpop_jti", PROOF_INVALID);
        assert_refused(&setup.auth, case, &token, &proof, expected).await;
    }
    let longest = proof_claims_with(&token, "jti", json!("j".repeat(128)));
    let proof = key.sign_json(&proof_header(&key), &longest);
    dpop(&setup.auth, &token, &proof).await.unwrap();
}

#[tokio::test]
async fn a_private_key_in_the_jwk_is_refused() {
    let setup = Setup::new();
    let key = TestKey::ec("agent");
    let token = setup.bound_token(&key, "t1");
    let expected = ("dpop_key", PROOF_INVALID);
    for member in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
        let mut header = proof_header(&key);
        header["jwk"][member] = json!(b64(b"private key material"));
        let proof = key.sign_json(&header, &proof_claims(&token, member));
        let case = format!("private key member {member} in the jwk");
        assert_refused(&setup.auth, &case, &token, &proof, expected).await;
    }
    for (case, jwk) in [
        (
            "symmetric (oct) jwk",
            json!({ "kty": "oct", "k": b64(b"a shared secret") }),
        ),
        ("jwk not an object", json!("not an object")),
        (
            "jwk not a point of P-256",
            json!({ "kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA" }),
        ),
    ] {
        let mut header = proof_header(&key);
        header["jwk"] = jwk;
        let proof = key.sign_json(&header, &proof_claims(&token, "jwk"));
        assert_refused(&setup.auth, case, &token, &proof, expected).await;
    }
    let mut header = proof_header(&key);
    header.as_object_mut().unwrap().remove("jwk");
    let proof = key.sign_json(&header, &proof_claims(&token, "no-jwk"));
    assert_refused(&setup.auth, "missing jwk", &token, &proof, expected).await;
}

#[tokio::test]
async fn hmac_and_none_proofs_are_refused() {
    let setup = Setup::new();
    let key = TestKey::ec("agent");
    let token = setup.bound_token(&key, "t1");
    let secret = b"a shared secret of thirty-two b!";
    let header = json!({
        "typ": "dpop+jwt", "alg": "HS256",
        "jwk": { "kty": "oct", "k": b64(secret) },
    });
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(proof_claims(&token, "hmac").to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(secret),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    let hmac = format!("{input}.{signature}");
    let alg = ("dpop_alg", PROOF_INVALID);
    assert_refused(&setup.auth, "HMAC proof", &token, &hmac, alg).await;

    let mut none = proof_header(&key);
    none["alg"] = json!("none");
    let unsigned = format!(
        "{}.{}.",
        b64(none.to_string().as_bytes()),
        b64(proof_claims(&token, "none").to_string().as_bytes())
    );
    let case = "alg none proof without a signature";
    let malformed = ("dpop_malformed", PROOF_INVALID);
    assert_refused(&setup.auth, case, &token, &unsigned, malformed).await;
    let with_signature = format!("{unsigned}c2ln");
    let case = "alg none proof with a signature";
    assert_refused(&setup.auth, case, &token, &with_signature, alg).await;

    // An algorithm of the allow-list that the jwk's key type cannot use.
    let mut mismatched = proof_header(&key);
    mismatched["alg"] = json!("EdDSA");
    let proof = key.sign_json(&mismatched, &proof_claims(&token, "mismatch"));
    let case = "proof alg EdDSA with an EC jwk";
    assert_refused(&setup.auth, case, &token, &proof, alg).await;
}

#[tokio::test]
async fn a_proof_signed_by_another_key_than_its_jwk_is_refused() {
    let setup = Setup::new();
    let key = TestKey::ec("agent");
    let thief = TestKey::ec("thief");
    let token = setup.bound_token(&key, "t1");
    // The header names the bound key, the signature is the thief's.
    let proof = thief.sign_json(&proof_header(&key), &proof_claims(&token, "forged"));
    let expected = ("dpop_signature", PROOF_INVALID);
    let case = "proof signed by another key than its jwk";
    assert_refused(&setup.auth, case, &token, &proof, expected).await;
    // A proof whose claims were changed after signing.
    let good = proof_claims(&token, "tampered");
    let signed = key.sign_json(&proof_header(&key), &good);
    let mut parts: Vec<String> = signed.split('.').map(str::to_owned).collect();
    let mut changed = good.clone();
    changed["iat"] = json!(NOW + 1);
    parts[1] = b64(changed.to_string().as_bytes());
    let tampered = parts.join(".");
    let case = "proof claims changed after signing";
    assert_refused(&setup.auth, case, &token, &tampered, expected).await;
}

#[tokio::test]
async fn a_token_bound_to_another_key_is_refused() {
    let setup = Setup::new();
    let key = TestKey::ec("agent");
    let other = TestKey::ed25519("other");
    let token = setup.bound_token(&other, "t1");
    let proof = proof(&key, &token, "jkt");
    let case = "proof key thumbprint not the token's cnf.jkt";
    assert_refused(
        &setup.auth,
        case,
        &token,
        &proof,
        ("dpop_jkt", PROOF_INVALID),
    )
    .await;
}

#[tokio::test]
async fn a_replayed_proof_is_refused() {
    let setup = Setup::new();
    let key = TestKey::ec("agent");
    let token = setup.bound_token(&key, "t1");
    let proof = proof(&key, &token, "once");
    dpop(&setup.auth, &token, &proof).await.unwrap();
    let expected = ("dpop_replay", PROOF_INVALID);
    assert_refused(&setup.auth, "replayed proof", &token, &proof, expected).await;
    // The same jti under another key is another proof.
    let other = TestKey::ec("other");
    let other_token = setup.bound_token(&other, "t2");
    let same_jti = other.sign_json(&proof_header(&other), &proof_claims(&other_token, "once"));
    dpop(&setup.auth, &other_token, &same_jti).await.unwrap();
    // A refused proof takes no room: once fixed, the same jti is accepted.
    let key3 = TestKey::ec("third");
    let token3 = setup.bound_token(&key3, "t3");
    let mut wrong = proof_claims(&token3, "later");
    wrong["htm"] = json!("POST");
    let refused_first = key3.sign_json(&proof_header(&key3), &wrong);
    assert_eq!(
        refused(&setup.auth, &token3, &refused_first).await.0,
        "dpop_htm"
    );
    let fixed = key3.sign_json(&proof_header(&key3), &proof_claims(&token3, "later"));
    dpop(&setup.auth, &token3, &fixed).await.unwrap();
}

#[tokio::test]
async fn a_proof_reused_with_another_token_is_refused() {
    let setup = Setup::new();
    let key = TestKey::ec("agent");
    let first = setup.bound_token(&key, "t1");
    let second = setup.bound_token(&key, "t2");
    assert_ne!(first, second);
    let proof = proof(&key, &first, "reuse");
    let case = "proof reused with another token";
    assert_refused(
        &setup.auth,
        case,
        &second,
        &proof,
        ("dpop_ath", PROOF_INVALID),
    )
    .await;
    // Refusing it did not spend it.
    dpop(&setup.auth, &first, &proof).await.unwrap();
}

#[tokio::test]
async fn a_dpop_bound_token_sent_as_bearer_is_refused() {
    let setup = Setup::new();
    let key = TestKey::ec("agent");
    let token = setup.bound_token(&key, "t1");
    let proof = proof(&key, &token, "bearer");
    for (case, proofs) in [
        ("DPoP-bound token as Bearer", &[][..]),
        (
            "DPoP-bound token as Bearer with its proof",
            &[proof.as_str()][..],
        ),
    ] {
        let Err(refusal) = attempt(&setup.auth, &format!("Bearer {token}"), proofs).await else {
            panic!("{case}: accepted");
        };
        assert_eq!(refusal.reason(), "dpop_binding", "{case}: {refusal}");
        assert_eq!(refusal.scheme, Scheme::Bearer, "{case}");
        assert_eq!(
            refusal.www_authenticate(),
            r#"Bearer error="invalid_token""#,
            "{case}"
        );
    }
}

#[tokio::test]
async fn the_dpop_scheme_needs_exactly_one_dpop_header() {
    let setup = Setup::new();
    let key = TestKey::ec("agent");
    let token = setup.bound_token(&key, "t1");
    let first = proof(&key, &token, "first");
    let second = proof(&key, &token, "second");
    let authorization = format!("DPoP {token}");
    for (case, proofs) in [
        ("DPoP scheme without a DPoP header", &[][..]),
        ("two DPoP headers", &[first.as_str(), second.as_str()][..]),
    ] {
        let Err(refusal) = attempt(&setup.auth, &authorization, proofs).await else {
            panic!("{case}: accepted");
        };
        assert_eq!(refusal.reason(), "dpop_headers", "{case}: {refusal}");
        assert_eq!(refusal.www_authenticate(), PROOF_INVALID, "{case}");
    }
    // Neither proof was spent.
    dpop(&setup.auth, &token, &first).await.unwrap();
}

#[tokio::test]
async fn an_unbound_token_with_the_dpop_scheme_is_refused() {
    let setup = Setup::new();
    let key = TestKey::ec("agent");
    let token = setup.bearer_token();
    assert_eq!(
        refused(&setup.auth, &token, &proof(&key, &token, "unbound")).await,
        ("dpop_unbound", TOKEN_INVALID)
    );
    // A certificate-bound token binds no DPoP key either.
    let cert_bound = setup
        .issuer
        .sign(&claims_with("cnf", json!({ "x5t#S256": "abc" })));
    assert_eq!(
        refused(&setup.auth, &cert_bound, &proof(&key, &cert_bound, "cert"))
            .await
            .0,
        "dpop_unbound"
    );
}

#[tokio::test]
async fn token_problems_under_the_dpop_scheme_answer_invalid_token() {
    let setup = Setup::new();
    let key = TestKey::ec("agent");
    let mut claims = claims_with("cnf", json!({ "jkt": jkt(&key) }));
    claims["exp"] = json!(NOW - 3600);
    let expired = setup.issuer.sign(&claims);
    assert_eq!(
        refused(&setup.auth, &expired, &proof(&key, &expired, "expired")).await,
        ("expired", TOKEN_INVALID)
    );
    let refusal = attempt(&setup.auth, "DPoP", &[]).await.unwrap_err();
    assert_eq!(
        (refusal.reason(), refusal.www_authenticate()),
        ("malformed", TOKEN_INVALID)
    );
}

#[tokio::test]
async fn dpop_required_refuses_bearer_tokens() {
    let mut config = security();
    config.dpop.required = true;
    let setup = Setup::with(config, TunnelConfig::default());
    let refusal = attempt(
        &setup.auth,
        &format!("Bearer {}", setup.bearer_token()),
        &[],
    )
    .await
    .unwrap_err();
    assert_eq!(refusal.reason(), "dpop_required");
    assert_eq!(refusal.www_authenticate(), TOKEN_INVALID);
    // No credentials at all: a bare DPoP challenge.
    let missing = setup
        .auth
        .authenticate(&Credentials::default(), NOW)
        .await
        .unwrap_err();
    assert_eq!(
        (missing.reason(), missing.www_authenticate()),
        ("missing", "DPoP")
    );
    // A bound token with its proof passes.
    let key = TestKey::ed25519("agent");
    let token = setup.bound_token(&key, "t1");
    dpop(&setup.auth, &token, &proof(&key, &token, "required"))
        .await
        .unwrap();
}

#[tokio::test]
async fn malformed_and_oversized_proofs_are_refused_before_decoding() {
    let setup = Setup::new();
    let key = TestKey::ec("agent");
    let token = setup.bound_token(&key, "t1");
    let good = proof(&key, &token, "shape");
    let (head, _) = good.rsplit_once('.').unwrap();
    for bad in [
        String::new(),
        head.to_owned(),
        format!("{good}.extra"),
        format!("{good}.a.b"),
        format!("{good}=="),
        "a.b.c".to_owned(),
        format!("!!.{}", good.split_once('.').unwrap().1),
        format!("{}.{}", b64(b"[]"), good.split_once('.').unwrap().1),
    ] {
        assert_eq!(
            refused(&setup.auth, &token, &bad).await,
            ("dpop_malformed", PROOF_INVALID),
            "{bad}"
        );
    }
    let huge = "a".repeat(MAX_PROOF_BYTES + 1);
    assert_eq!(
        refused(&setup.auth, &token, &huge).await.0,
        "dpop_too_large"
    );
    let mut header = proof_header(&key);
    header["crit"] = json!(["exp"]);
    let critical = key.sign_json(&header, &proof_claims(&token, "crit"));
    assert_eq!(
        refused(&setup.auth, &token, &critical).await.0,
        "dpop_malformed"
    );
    // None of this spent the valid proof.
    dpop(&setup.auth, &token, &good).await.unwrap();
}

#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let setup = Setup::new();
    let token = setup.bearer_token();
    let authorization = format!("Bearer {token}");
    let request = Credentials {
        authorization: Some(authorization.as_bytes()),
        authorization_count: 2,
        host: HOST,
        path: PATH,
        ..Credentials::default()
    };
    let refusal = setup.auth.authenticate(&request, NOW).await.unwrap_err();
    assert_eq!(refusal.reason(), "malformed");
    let single = Credentials {
        authorization_count: 1,
        ..request
    };
    setup.auth.authenticate(&single, NOW).await.unwrap();
}

#[tokio::test]
async fn require_bound_tokens_refuses_dpop_bound_tokens() {
    let mut config = security();
    config.mtls.require_bound_tokens = true;
    let setup = Setup::with(config, TunnelConfig::default());
    let key = TestKey::ec("agent");
    let token = setup.bound_token(&key, "t1");
    assert_eq!(
        refused(&setup.auth, &token, &proof(&key, &token, "mtls")).await,
        ("unbound_token", TOKEN_INVALID)
    );
}

#[test]
fn every_dpop_reason_is_distinct_and_prefixed() {
    use crate::auth::DpopFailure as F;
    let failures = [
        F::Headers(2),
        F::TooLarge(1),
        F::Malformed("x"),
        F::Typ,
        F::Alg("x"),
        F::Key("x"),
        F::Signature,
        F::Htm("x"),
        F::Htu("x"),
        F::Iat("x"),
        F::Jti("x"),
        F::Replay,
        F::ReplayCacheFull,
        F::Ath("x"),
        F::Jkt,
        F::Unbound,
        F::Required,
    ];
    let mut reasons: Vec<&str> = failures.iter().map(F::reason).collect();
    assert!(reasons.iter().all(|r| r.starts_with("dpop_")));
    reasons.sort_unstable();
    reasons.dedup();
    assert_eq!(reasons.len(), failures.len());
}

#[test]
fn htu_normalisation() {
    let same = [
        ("https://hub.example.com/t", "https://hub.example.com/t"),
        ("wss://HUB.example.com:443/t", "https://hub.example.com/t"),
        ("WS://hub.example.com:80/t", "http://hub.example.com/t"),
        ("https://hub.example.com:/t", "https://hub.example.com/t"),
        ("https://hub.example.com", "https://hub.example.com/"),
        ("https://hub.example.com?x#y", "https://hub.example.com/"),
        (
            "https://hub.example.com:8443/t?x=1",
            "https://hub.example.com:8443/t",
        ),
        ("http://[::1]:8080/t", "http://[::1]:8080/t"),
        ("http://[::1]:80/t", "http://[::1]/t"),
        ("https://h/%7euser/%2f/%zz", "https://h/~user/%2F/%zz"),
    ];
    for (input, normal) in same {
        assert_eq!(normalize_htu(input).as_deref(), Some(normal), "{input}");
    }
    // Paths stay case-sensitive.
    assert_ne!(normalize_htu("https://h/T"), normalize_htu("https://h/t"));
    for bad in [
        "ftp://h/t",
        "https:///t",
        "https://u:p@h/t",
        "https://h:x/t",
        "https://h:99999/t",
        "https://h h/t",
        "https://[::1/t",
        "https://a:b:c/t",
        "hub.example.com/t",
    ] {
        assert_eq!(normalize_htu(bad), None, "{bad}");
    }
    assert_eq!(
        request_htu(true, "Hub.Example.com:443", "/t").as_deref(),
        Some("https://hub.example.com/t")
    );
    assert_eq!(
        request_htu(false, "127.0.0.1:8443", "/t").as_deref(),
        Some("http://127.0.0.1:8443/t")
    );
    assert_eq!(request_htu(false, "", "/t"), None);
}

#[test]
fn the_replay_cache_evicts_expired_entries_and_refuses_when_full() {
    let mut cache = ReplayCache::new(2);
    assert_eq!(cache.admit("k", "a", 100, 50), Admission::Fresh);
    assert_eq!(cache.admit("k", "a", 100, 60), Admission::Replayed);
    assert_eq!(cache.admit("k2", "a", 100, 60), Admission::Fresh);
    // Full of live entries: refused, not grown, and nothing live was dropped.
    assert_eq!(cache.admit("k", "b", 120, 60), Admission::Full);
    assert_eq!(cache.len(), 2);
    assert_eq!(cache.admit("k", "a", 100, 100), Admission::Replayed);
    // Past their expiry the entries go, and room is made.
    assert_eq!(cache.admit("k", "b", 160, 101), Admission::Fresh);
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.admit("k", "a", 161, 101), Admission::Fresh);
    // The pair is unambiguous: ("k", "ab") is not ("ka", "b").
    let mut cache = ReplayCache::new(8);
    assert_eq!(cache.admit("k", "ab", 10, 0), Admission::Fresh);
    assert_eq!(cache.admit("ka", "b", 10, 0), Admission::Fresh);
}

#[tokio::test]
async fn a_full_replay_cache_refuses_new_proofs() {
    let setup = Setup::new();
    let key = TestKey::ec("agent");
    let token = setup.bound_token(&key, "t1");
    {
        // Fill the shared cache with live entries of another key.
        let mut cache = setup.auth.replay_cache_for_tests();
        for n in 0..crate::auth::REPLAY_CACHE_CAPACITY {
            assert_eq!(
                cache.admit("filler", &n.to_string(), NOW + 60, NOW),
                Admission::Fresh
            );
        }
    }
    assert_eq!(
        refused(&setup.auth, &token, &proof(&key, &token, "full")).await,
        ("dpop_replay_cache_full", PROOF_INVALID)
    );
}
