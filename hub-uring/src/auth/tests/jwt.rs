//! Token validation: every refusal asserted by its metric reason.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nowconnect_core::config::TunnelConfig;
use serde_json::{Value, json};

use super::support::{
    AUDIENCE, ISSUER, NOW, TestKey, authenticator, b64, claims, claims_with, jwks, refused,
    security, store_without_refresher, verify,
};
use crate::auth::{
    AuthFailure, Authenticator, Binding, BindingFailure, LEEWAY_SECS, MAX_TOKEN_BYTES,
    certificate_thumbprint,
};

#[tokio::test]
async fn valid_token_fills_the_identity() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let identity = verify(&auth, &key.sign(&claims())).await.unwrap();
    assert_eq!(identity.agent_id, "agent-foo-01");
    assert_eq!(identity.exp, NOW + 600);
    assert_eq!(identity.jti.as_deref(), Some("c0ffee"));
    assert_eq!(identity.subject.as_deref(), Some("service-account-7"));
    assert_eq!(identity.issuer.as_deref(), Some(ISSUER));
    assert_eq!(identity.client_id.as_deref(), Some("agent-client"));
    assert_eq!(identity.scopes, ["connect:ldap", "connect:pg"]);
}

#[tokio::test]
async fn scopes_from_scp_array_and_client_id_from_azp() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let mut claims = claims_with("scope", Value::Null);
    let object = claims.as_object_mut().unwrap();
    object.insert("scp".into(), json!(["connect:ldap", 7, "connect:pg"]));
    object.remove("client_id");
    object.insert("azp".into(), json!("azp-client"));
    let identity = verify(&auth, &key.sign(&claims)).await.unwrap();
    assert_eq!(identity.scopes, ["connect:ldap", "connect:pg"]);
    assert_eq!(identity.client_id.as_deref(), Some("azp-client"));

    let bare = claims_with("scope", Value::Null);
    let identity = verify(&auth, &key.sign(&bare)).await.unwrap();
    assert!(identity.scopes.is_empty());
}

#[tokio::test]
async fn rsa_and_eddsa_tokens_are_accepted() {
    let rsa = TestKey::rsa("r1");
    let ed = TestKey::ed25519("e1");
    let auth = authenticator(&[&rsa, &ed]);
    verify(&auth, &rsa.sign(&claims())).await.unwrap();
    verify(&auth, &ed.sign(&claims())).await.unwrap();
}

#[tokio::test]
async fn lowercase_scheme_and_extra_spaces_are_accepted() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let header = format!("  bEaReR   {} ", key.sign(&claims()));
    auth.verify(Some(header.as_bytes()), NOW).await.unwrap();
}

#[tokio::test]
async fn expired_token_is_refused_beyond_the_leeway() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let late = claims_with("exp", json!(NOW - LEEWAY_SECS));
    assert_eq!(refused(&auth, &key.sign(&late)).await, "expired");
    let within_leeway = claims_with("exp", json!(NOW - LEEWAY_SECS + 1));
    verify(&auth, &key.sign(&within_leeway)).await.unwrap();
    let fractional = claims_with("exp", json!((NOW + 100) as f64 + 0.5));
    assert_eq!(
        verify(&auth, &key.sign(&fractional)).await.unwrap().exp,
        NOW + 100
    );
}

#[tokio::test]
async fn missing_or_malformed_exp_is_refused() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let missing = claims_with("exp", Value::Null);
    assert_eq!(refused(&auth, &key.sign(&missing)).await, "claims");
    let text = claims_with("exp", json!("1800000600"));
    assert_eq!(refused(&auth, &key.sign(&text)).await, "claims");
    let negative = claims_with("exp", json!(-5));
    assert_eq!(refused(&auth, &key.sign(&negative)).await, "claims");
}

#[tokio::test]
async fn nbf_in_the_future_is_refused() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let future = claims_with("nbf", json!(NOW + LEEWAY_SECS + 1));
    assert_eq!(refused(&auth, &key.sign(&future)).await, "not_yet_valid");
    let within_leeway = claims_with("nbf", json!(NOW + LEEWAY_SECS));
    verify(&auth, &key.sign(&within_leeway)).await.unwrap();
    let no_nbf = claims_with("nbf", Value::Null);
    verify(&auth, &key.sign(&no_nbf)).await.unwrap();
    let bad = claims_with("nbf", json!(true));
    assert_eq!(refused(&auth, &key.sign(&bad)).await, "claims");
}

#[tokio::test]
async fn audience_must_include_ours() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let wrong = claims_with("aud", json!("other-api"));
    assert_eq!(refused(&auth, &key.sign(&wrong)).await, "audience");
    let among = claims_with("aud", json!(["other-api", AUDIENCE]));
    verify(&auth, &key.sign(&among)).await.unwrap();
    let without = claims_with("aud", json!(["other-api", "third"]));
    assert_eq!(refused(&auth, &key.sign(&without)).await, "audience");
    let missing = claims_with("aud", Value::Null);
    assert_eq!(refused(&auth, &key.sign(&missing)).await, "audience");
    let number = claims_with("aud", json!(42));
    assert_eq!(refused(&auth, &key.sign(&number)).await, "audience");
}

#[tokio::test]
async fn issuer_is_checked_when_configured() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let wrong = claims_with("iss", json!("https://evil.test/"));
    assert_eq!(refused(&auth, &key.sign(&wrong)).await, "issuer");
    let missing = claims_with("iss", Value::Null);
    assert_eq!(refused(&auth, &key.sign(&missing)).await, "issuer");

    let store = store_without_refresher(Some(&jwks(&[&key])));
    let any_issuer = Authenticator::new(
        &nowconnect_core::config::SecurityConfig {
            issuer: None,
            ..security()
        },
        &TunnelConfig::default(),
        store,
    );
    let identity = verify(&any_issuer, &key.sign(&wrong)).await.unwrap();
    assert_eq!(identity.issuer.as_deref(), Some("https://evil.test/"));
}

#[tokio::test]
async fn unknown_kid_is_refused() {
    let known = TestKey::ec("k1");
    let stranger = TestKey::ec("k2");
    let auth = authenticator(&[&known]);
    assert_eq!(
        refused(&auth, &stranger.sign(&claims())).await,
        "unknown_kid"
    );
}

#[tokio::test]
async fn a_token_without_kid_is_refused_even_with_one_matching_key() {
    let ec = TestKey::ec("k1");
    let auth = authenticator(&[&ec]);
    let kidless = ec.sign_with(Algorithm::ES256, None, &claims());
    assert_eq!(refused(&auth, &kidless).await, "missing_kid");
}

#[tokio::test]
async fn only_access_token_types_are_accepted() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let typed = |typ: Option<&str>| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        header.typ = typ.map(str::to_owned);
        key.sign_with_header(&header, &claims())
    };
    for ok in [
        None,
        Some("JWT"),
        Some("at+jwt"),
        Some("application/at+JWT"),
    ] {
        verify(&auth, &typed(ok)).await.unwrap();
    }
    for bad in ["dpop+jwt", "id_token+jwt", "logout+jwt", "JOSE"] {
        assert_eq!(refused(&auth, &typed(Some(bad))).await, "typ", "{bad}");
    }

    let mut strict = security();
    strict.require_at_jwt_typ = true;
    let strict = Authenticator::new(
        &strict,
        &nowconnect_core::config::TunnelConfig::default(),
        store_without_refresher(Some(&jwks(&[&key]))),
    );
    verify(&strict, &typed(Some("at+jwt"))).await.unwrap();
    for bad in [None, Some("JWT")] {
        assert_eq!(refused(&strict, &typed(bad)).await, "typ", "{bad:?}");
    }
}

#[tokio::test]
async fn a_token_issued_in_the_future_is_refused() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let soon = claims_with("iat", json!(NOW + LEEWAY_SECS));
    verify(&auth, &key.sign(&soon)).await.unwrap();
    let later = claims_with("iat", json!(NOW + LEEWAY_SECS + 1));
    assert_eq!(refused(&auth, &key.sign(&later)).await, "iat");
    let bad = claims_with("iat", json!("yesterday"));
    assert_eq!(refused(&auth, &key.sign(&bad)).await, "claims");
}

#[tokio::test]
async fn alg_none_is_refused() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let payload = b64(claims().to_string().as_bytes());
    for header in [
        r#"{"alg":"none","typ":"JWT","kid":"k1"}"#,
        r#"{"alg":"None","kid":"k1"}"#,
        r#"{"alg":"NONE","kid":"k1"}"#,
    ] {
        let token = format!("{}.{payload}.", b64(header.as_bytes()));
        assert_eq!(refused(&auth, &token).await, "algorithm");
        // Even with a signature part borrowed from a valid token.
        let valid = key.sign(&claims());
        let signature = valid.rsplit('.').next().unwrap();
        let token = format!("{}.{payload}.{signature}", b64(header.as_bytes()));
        assert_eq!(refused(&auth, &token).await, "algorithm");
    }
    let missing_alg = format!("{}.{payload}.c2ln", b64(br#"{"kid":"k1"}"#));
    assert_eq!(refused(&auth, &missing_alg).await, "malformed");
}

#[tokio::test]
async fn keys_named_in_the_token_itself_are_never_used() {
    let trusted = TestKey::ec("k1");
    let attacker = TestKey::ec("k1");
    let auth = authenticator(&[&trusted]);
    // The attacker signs with its own key and points at it every way a header can: the hub
    // looks only in its JWKS, so the signature fails.
    for header in [
        json!({ "alg": "ES256", "kid": "k1", "jwk": attacker.jwk }),
        json!({ "alg": "ES256", "kid": "k1", "jku": "https://attacker.test/jwks.json" }),
        json!({ "alg": "ES256", "kid": "k1", "x5u": "https://attacker.test/cert.pem" }),
        json!({ "alg": "ES256", "kid": "k1", "x5c": ["MIIB"] }),
    ] {
        let token = attacker.sign_json(&header, &claims());
        assert_eq!(refused(&auth, &token).await, "signature", "{header}");
    }
    // A kid the JWKS does not have, with the key embedded: unknown, not trusted.
    let header = json!({ "alg": "ES256", "kid": "elsewhere", "jwk": attacker.jwk });
    let token = attacker.sign_json(&header, &claims());
    assert_eq!(refused(&auth, &token).await, "unknown_kid");
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let rsa = TestKey::rsa("r1");
    let auth = authenticator(&[&rsa]);
    let n = rsa.jwk["n"].as_str().unwrap().to_owned();
    for secret in [rsa.public_der.clone(), n.into_bytes()] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("r1".into());
        let token =
            jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&secret)).unwrap();
        assert_eq!(refused(&auth, &token).await, "algorithm");
    }
}

#[tokio::test]
async fn algorithm_must_be_one_the_key_accepts() {
    let ec = TestKey::ec("k1");
    let rsa = TestKey::rsa("r1");
    let auth = authenticator(&[&ec, &rsa]);
    // An RS384 token under a key published for RS256 only.
    let token = rsa.sign_with(Algorithm::RS384, Some("r1"), &claims());
    assert_eq!(refused(&auth, &token).await, "algorithm");
    // An RS256 token naming the EC key.
    let token = rsa.sign_with(Algorithm::RS256, Some("k1"), &claims());
    assert_eq!(refused(&auth, &token).await, "algorithm");
}

#[tokio::test]
async fn key_without_alg_accepts_its_type_algorithms() {
    let rsa = TestKey::rsa("r1").without_jwk_alg();
    let auth = authenticator(&[&rsa]);
    for alg in [Algorithm::RS256, Algorithm::RS512, Algorithm::PS256] {
        verify(&auth, &rsa.sign_with(alg, Some("r1"), &claims()))
            .await
            .unwrap();
    }
    let ec = TestKey::ec("k1").without_jwk_alg();
    let auth = authenticator(&[&ec]);
    verify(&auth, &ec.sign(&claims())).await.unwrap();
}

#[tokio::test]
async fn agent_id_is_required_and_checked() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let long = "a".repeat(129);
    for bad in [
        Value::Null,
        json!(""),
        json!(42),
        json!(["agent"]),
        json!("agent foo"),
        json!("agent/foo"),
        json!("agént"),
        json!(long),
    ] {
        let token = key.sign(&claims_with("agent_id", bad.clone()));
        assert_eq!(refused(&auth, &token).await, "agent_id", "{bad}");
    }
    let longest = "a".repeat(128);
    for good in ["agent-foo.01", "svc:agent@site_2", longest.as_str()] {
        let token = key.sign(&claims_with("agent_id", json!(good)));
        assert_eq!(verify(&auth, &token).await.unwrap().agent_id, good);
    }
}

#[tokio::test]
async fn tampered_tokens_are_refused() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let token = key.sign(&claims());
    let (signing_input, signature) = token.rsplit_once('.').unwrap();

    // A different signature of the right length.
    let mut bytes = signature.as_bytes().to_vec();
    bytes[10] = if bytes[10] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{signing_input}.{}", String::from_utf8(bytes).unwrap());
    assert_eq!(refused(&auth, &tampered).await, "signature");

    // Claims changed under the original signature.
    let (header, _) = signing_input.split_once('.').unwrap();
    let forged = b64(claims_with("agent_id", json!("admin"))
        .to_string()
        .as_bytes());
    assert_eq!(
        refused(&auth, &format!("{header}.{forged}.{signature}")).await,
        "signature"
    );

    // A valid signature of another token.
    let other = key.sign(&claims_with("jti", json!("other")));
    let other_signature = other.rsplit('.').next().unwrap();
    assert_eq!(
        refused(&auth, &format!("{signing_input}.{other_signature}")).await,
        "signature"
    );

    // Signed by a key that is not the one its kid names.
    let impostor = TestKey::ec("k1");
    assert_eq!(refused(&auth, &impostor.sign(&claims())).await, "signature");
}

#[tokio::test]
async fn oversized_token_is_refused_before_decoding() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let padding = "x".repeat(MAX_TOKEN_BYTES);
    let huge = key.sign(&claims_with("padding", json!(padding)));
    assert_eq!(refused(&auth, &huge).await, "too_large");
    let junk = "a".repeat(MAX_TOKEN_BYTES + 1);
    assert_eq!(refused(&auth, &junk).await, "too_large");
    let header = vec![b' '; 1 << 20];
    let failure = auth.verify(Some(&header), NOW).await.unwrap_err();
    assert_eq!(failure.reason(), "too_large");
}

#[tokio::test]
async fn missing_header_gets_a_bare_challenge() {
    let auth = authenticator(&[&TestKey::ec("k1")]);
    let failure = auth.verify(None, NOW).await.unwrap_err();
    assert_eq!(failure, AuthFailure::Missing);
    assert_eq!(failure.reason(), "missing");
    assert_eq!(failure.www_authenticate(), "Bearer");
}

#[tokio::test]
async fn other_schemes_and_shapes_are_malformed() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let token = key.sign(&claims());
    for header in [
        format!("Basic {token}"),
        format!("Bearer{token}"),
        "Bearer".to_owned(),
        "Bearer    ".to_owned(),
        String::new(),
        format!("Bearer {token} extra"),
        format!("Bearer {token}=="),
        format!("Bearer {}", token.replacen('.', "", 1)),
        format!("Bearer {token}.{token}"),
        "Bearer a.b.c.d.e".to_owned(),
        format!("Bearer .{}", token.split_once('.').unwrap().1),
        format!("Bearer !!.{}", token.split_once('.').unwrap().1),
    ] {
        let failure = auth.verify(Some(header.as_bytes()), NOW).await.unwrap_err();
        assert_eq!(failure.reason(), "malformed", "{header}: {failure}");
        assert_eq!(
            failure.www_authenticate(),
            r#"Bearer error="invalid_token""#
        );
        assert!(!failure.to_string().contains(&token));
    }
}

#[tokio::test]
async fn critical_header_extensions_are_refused() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    header.crit = Some(vec!["exp".into()]);
    let token = key.sign_with_header(&header, &claims());
    assert_eq!(refused(&auth, &token).await, "malformed");
}

#[tokio::test]
async fn oct_key_in_the_jwks_is_ignored() {
    let key = TestKey::ec("k1");
    let secret = b"a shared secret of thirty-two b!";
    let text = format!(
        r#"{{"keys":[{{"kty":"oct","kid":"hmac","alg":"HS256","k":"{}"}},{}]}}"#,
        b64(secret),
        key.jwk
    );
    let store = store_without_refresher(Some(&text));
    assert_eq!(store.current().len(), 1);
    assert!(!store.current().contains_kid("hmac"));
    let auth = Authenticator::new(&security(), &TunnelConfig::default(), store);
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("hmac".into());
    let token =
        jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(secret)).unwrap();
    assert_eq!(refused(&auth, &token).await, "algorithm");
    verify(&auth, &key.sign(&claims())).await.unwrap();
}

#[tokio::test]
async fn nothing_loaded_means_jwks_unavailable() {
    let key = TestKey::ec("k1");
    let auth = Authenticator::new(
        &security(),
        &TunnelConfig::default(),
        store_without_refresher(None),
    );
    assert_eq!(
        refused(&auth, &key.sign(&claims())).await,
        "jwks_unavailable"
    );
}

#[tokio::test]
async fn failures_do_not_echo_attacker_strings_at_length() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let kid = format!("\u{1b}[31m{}", "k".repeat(500));
    let token = key.sign_with(Algorithm::ES256, Some(&kid), &claims());
    let failure = verify(&auth, &token).await.unwrap_err();
    assert_eq!(failure.reason(), "unknown_kid");
    let shown = failure.to_string();
    assert!(shown.len() < 200, "{shown}");
    assert!(!shown.contains('\u{1b}'), "{shown}");
}

#[test]
fn every_reason_has_a_challenge() {
    let failures = [
        AuthFailure::Missing,
        AuthFailure::Malformed("x"),
        AuthFailure::TooLarge { len: 1 },
        AuthFailure::Algorithm {
            alg: "HS256".into(),
            why: "x",
        },
        AuthFailure::UnknownKid { kid: None },
        AuthFailure::Signature,
        AuthFailure::Expired { exp: 1, now: 2 },
        AuthFailure::NotYetValid { nbf: 2, now: 1 },
        AuthFailure::Claim {
            claim: "exp",
            problem: "x",
        },
        AuthFailure::Audience("x"),
        AuthFailure::Issuer("x"),
        AuthFailure::AgentId("x"),
        AuthFailure::JwksUnavailable,
        AuthFailure::MissingKid,
        AuthFailure::Type {
            typ: "x".into(),
            why: "x",
        },
        AuthFailure::IssuedInFuture { iat: 2, now: 1 },
        AuthFailure::Binding(BindingFailure::OtherCertificate),
        AuthFailure::Binding(BindingFailure::DpopAsBearer),
        AuthFailure::Binding(BindingFailure::Unbound),
    ];
    let mut reasons: Vec<&str> = failures.iter().map(AuthFailure::reason).collect();
    reasons.sort_unstable();
    reasons.dedup();
    assert_eq!(reasons.len(), failures.len());
    for failure in &failures[1..] {
        assert_eq!(
            failure.www_authenticate(),
            r#"Bearer error="invalid_token""#
        );
    }
}

#[tokio::test]
async fn a_certificate_bound_token_needs_that_certificate() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let der = b"the agent's certificate, DER";
    let thumbprint = certificate_thumbprint(der);
    assert_eq!(thumbprint.len(), 43, "unpadded base64url of 32 bytes");
    let token = key.sign(&claims_with("cnf", json!({ "x5t#S256": thumbprint })));
    let identity = verify(&auth, &token).await.unwrap();
    assert_eq!(identity.binding, Binding::Certificate(thumbprint));
    auth.check_binding(&identity, Some(der)).unwrap();
    let no_cert = auth.check_binding(&identity, None).unwrap_err();
    assert_eq!(no_cert, AuthFailure::Binding(BindingFailure::NoCertificate));
    assert_eq!(no_cert.reason(), "cert_binding");
    let other = auth
        .check_binding(&identity, Some(b"another certificate"))
        .unwrap_err();
    assert_eq!(
        other,
        AuthFailure::Binding(BindingFailure::OtherCertificate)
    );
}

#[tokio::test]
async fn a_dpop_bound_token_is_refused_as_bearer() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let token = key.sign(&claims_with(
        "cnf",
        json!({ "jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" }),
    ));
    let identity = verify(&auth, &token).await.unwrap();
    let failure = auth.check_binding(&identity, Some(b"cert")).unwrap_err();
    assert_eq!(failure.reason(), "dpop_binding");
}

#[tokio::test]
async fn unusable_cnf_claims_are_refused() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    for cnf in [
        json!("x5t"),
        json!({}),
        json!({ "jwk": { "kty": "EC" } }),
        json!({ "x5t#S256": 7 }),
        json!({ "x5t#S256": "" }),
        json!({ "x5t#S256": "a".repeat(129) }),
        json!({ "x5t#S256": "abc", "jkt": "def" }),
    ] {
        let token = key.sign(&claims_with("cnf", cnf.clone()));
        assert_eq!(refused(&auth, &token).await, "claims", "{cnf}");
    }
}

#[tokio::test]
async fn require_bound_tokens_refuses_bearer_tokens() {
    let key = TestKey::ec("k1");
    let mut config = security();
    config.mtls.require_bound_tokens = true;
    let auth = Authenticator::new(
        &config,
        &TunnelConfig::default(),
        store_without_refresher(Some(&jwks(&[&key]))),
    );
    let unbound = verify(&auth, &key.sign(&claims())).await.unwrap();
    assert_eq!(unbound.binding, Binding::None);
    let failure = auth.check_binding(&unbound, Some(b"cert")).unwrap_err();
    assert_eq!(failure.reason(), "unbound_token");
    // Without the setting the same token is fine.
    authenticator(&[&key])
        .check_binding(&unbound, None)
        .unwrap();
}
