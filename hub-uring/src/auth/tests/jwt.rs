//! Token validation: every refusal asserted by its metric reason.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nowconnect_core::config::TunnelConfig;
use serde_json::{Value, json};

use super::support::{
    AUDIENCE, ISSUER, NOW, TestKey, assert_refused, authenticator, b64, claims, claims_with, jwks,
    refused, security, store_without_refresher, verify,
};
use crate::auth::{
    AuthFailure, Authenticator, Binding, BindingFailure, Credentials, LEEWAY_SECS, MAX_TOKEN_BYTES,
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
    assert_refused(&auth, "expired token", &key.sign(&late), "expired").await;
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
    for (case, exp) in [
        ("missing exp", Value::Null),
        ("exp as a string", json!("1800000600")),
        ("negative exp", json!(-5)),
    ] {
        let token = key.sign(&claims_with("exp", exp));
        assert_refused(&auth, case, &token, "claims").await;
    }
}

#[tokio::test]
async fn nbf_in_the_future_is_refused() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let future = claims_with("nbf", json!(NOW + LEEWAY_SECS + 1));
    let token = key.sign(&future);
    assert_refused(&auth, "nbf in the future", &token, "not_yet_valid").await;
    let within_leeway = claims_with("nbf", json!(NOW + LEEWAY_SECS));
    verify(&auth, &key.sign(&within_leeway)).await.unwrap();
    let no_nbf = claims_with("nbf", Value::Null);
    verify(&auth, &key.sign(&no_nbf)).await.unwrap();
    let bad = claims_with("nbf", json!(true));
    assert_refused(&auth, "nbf not a number", &key.sign(&bad), "claims").await;
}

#[tokio::test]
async fn audience_must_include_ours() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let among = claims_with("aud", json!(["other-api", AUDIENCE]));
    verify(&auth, &key.sign(&among)).await.unwrap();
    for (case, aud) in [
        ("wrong aud", json!("other-api")),
        ("aud array without ours", json!(["other-api", "third"])),
        ("missing aud", Value::Null),
        ("aud neither a string nor an array", json!(42)),
    ] {
        let token = key.sign(&claims_with("aud", aud));
        assert_refused(&auth, case, &token, "audience").await;
    }
}

#[tokio::test]
async fn issuer_is_checked_when_configured() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let wrong = claims_with("iss", json!("https://evil.test/"));
    assert_refused(&auth, "wrong iss", &key.sign(&wrong), "issuer").await;
    for (case, iss) in [
        ("missing iss", Value::Null),
        ("iss without the trailing slash", json!("https://idp.test")),
        ("iss not a string", json!(["https://idp.test/"])),
    ] {
        let token = key.sign(&claims_with("iss", iss));
        assert_refused(&auth, case, &token, "issuer").await;
    }

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
    let token = stranger.sign(&claims());
    assert_refused(&auth, "unknown kid", &token, "unknown_kid").await;
}

#[tokio::test]
async fn a_token_without_kid_is_refused_even_with_one_matching_key() {
    let ec = TestKey::ec("k1");
    let auth = authenticator(&[&ec]);
    let kidless = ec.sign_with(Algorithm::ES256, None, &claims());
    assert_refused(&auth, "missing kid", &kidless, "missing_kid").await;
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
        let case = format!("wrong typ {bad}");
        assert_refused(&auth, &case, &typed(Some(bad)), "typ").await;
    }

    let mut strict = security();
    strict.require_at_jwt_typ = true;
    let strict = Authenticator::new(
        &strict,
        &nowconnect_core::config::TunnelConfig::default(),
        store_without_refresher(Some(&jwks(&[&key]))),
    );
    verify(&strict, &typed(Some("at+jwt"))).await.unwrap();
    for (case, typ) in [
        ("no typ under require_at_jwt_typ", None),
        ("typ JWT under require_at_jwt_typ", Some("JWT")),
    ] {
        assert_refused(&strict, case, &typed(typ), "typ").await;
    }
}

#[tokio::test]
async fn a_token_issued_in_the_future_is_refused() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let soon = claims_with("iat", json!(NOW + LEEWAY_SECS));
    verify(&auth, &key.sign(&soon)).await.unwrap();
    let later = claims_with("iat", json!(NOW + LEEWAY_SECS + 1));
    assert_refused(&auth, "iat in the future", &key.sign(&later), "iat").await;
    let bad = claims_with("iat", json!("yesterday"));
    assert_refused(&auth, "iat not a number", &key.sign(&bad), "claims").await;
}

#[tokio::test]
async fn alg_none_is_refused() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let payload = b64(claims().to_string().as_bytes());
    // Even with a signature part borrowed from a valid token.
    let valid = key.sign(&claims());
    let borrowed = valid.rsplit('.').next().unwrap();
    for (alg, header) in [
        ("none", r#"{"alg":"none","typ":"JWT","kid":"k1"}"#),
        ("None", r#"{"alg":"None","kid":"k1"}"#),
        ("NONE", r#"{"alg":"NONE","kid":"k1"}"#),
    ] {
        for (signature, what) in [("", "no signature"), (borrowed, "a borrowed signature")] {
            let token = format!("{}.{payload}.{signature}", b64(header.as_bytes()));
            let case = format!("alg {alg} with {what}");
            assert_refused(&auth, &case, &token, "algorithm").await;
        }
    }
    let missing_alg = format!("{}.{payload}.c2ln", b64(br#"{"kid":"k1"}"#));
    assert_refused(&auth, "missing alg", &missing_alg, "malformed").await;
}

#[tokio::test]
async fn keys_named_in_the_token_itself_are_never_used() {
    let trusted = TestKey::ec("k1");
    let attacker = TestKey::ec("k1");
    let auth = authenticator(&[&trusted]);
    // The attacker signs with its own key and points at it every way a header can: the hub
    // looks only in its JWKS, so the signature fails.
    for (case, header) in [
        (
            "jwk in the header",
            json!({ "alg": "ES256", "kid": "k1", "jwk": attacker.jwk }),
        ),
        (
            "jku in the header",
            json!({ "alg": "ES256", "kid": "k1", "jku": "https://attacker.test/jwks.json" }),
        ),
        (
            "x5u in the header",
            json!({ "alg": "ES256", "kid": "k1", "x5u": "https://attacker.test/cert.pem" }),
        ),
        (
            "x5c in the header",
            json!({ "alg": "ES256", "kid": "k1", "x5c": ["MIIB"] }),
        ),
    ] {
        let token = attacker.sign_json(&header, &claims());
        assert_refused(&auth, case, &token, "signature").await;
    }
    // A kid the JWKS does not have, with the key embedded: unknown, not trusted.
    let header = json!({ "alg": "ES256", "kid": "elsewhere", "jwk": attacker.jwk });
    let token = attacker.sign_json(&header, &claims());
    let case = "jwk in the header with a kid the JWKS lacks";
    assert_refused(&auth, case, &token, "unknown_kid").await;
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let rsa = TestKey::rsa("r1");
    let auth = authenticator(&[&rsa]);
    let body = STANDARD.encode(&rsa.public_der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    let n = rsa.jwk["n"].as_str().unwrap().to_owned();
    for (form, secret) in [
        ("DER", rsa.public_der.clone()),
        ("PEM", pem.into_bytes()),
        ("JWK", rsa.jwk.to_string().into_bytes()),
        ("modulus n", n.into_bytes()),
    ] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("r1".into());
        let token =
            jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&secret)).unwrap();
        let case = format!("HS256 keyed with the public key ({form})");
        assert_refused(&auth, &case, &token, "algorithm").await;
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
    for (case, bad) in [
        ("missing agent_id", Value::Null),
        ("empty agent_id", json!("")),
        ("agent_id a number", json!(42)),
        ("agent_id an array", json!(["agent"])),
        ("agent_id with a space", json!("agent foo")),
        ("agent_id with a slash", json!("agent/foo")),
        ("agent_id not ASCII", json!("agént")),
        ("agent_id of 129 characters", json!(long)),
    ] {
        let token = key.sign(&claims_with("agent_id", bad));
        assert_refused(&auth, case, &token, "agent_id").await;
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
    assert_refused(&auth, "tampered signature", &tampered, "signature").await;

    // Claims changed under the original signature.
    let (header, _) = signing_input.split_once('.').unwrap();
    let forged = b64(claims_with("agent_id", json!("admin"))
        .to_string()
        .as_bytes());
    let forged = format!("{header}.{forged}.{signature}");
    assert_refused(&auth, "tampered payload", &forged, "signature").await;

    // A valid signature of another token.
    let other = key.sign(&claims_with("jti", json!("other")));
    let other_signature = other.rsplit('.').next().unwrap();
    let swapped = format!("{signing_input}.{other_signature}");
    assert_refused(&auth, "signature of another token", &swapped, "signature").await;

    // Signed by a foreign key under the kid of a trusted one.
    let impostor = TestKey::ec("k1");
    let foreign = impostor.sign(&claims());
    assert_refused(&auth, "foreign signature", &foreign, "signature").await;
}

#[tokio::test]
async fn oversized_token_is_refused_before_decoding() {
    let key = TestKey::ec("k1");
    let auth = authenticator(&[&key]);
    let padding = "x".repeat(MAX_TOKEN_BYTES);
    let huge = key.sign(&claims_with("padding", json!(padding)));
    assert_refused(&auth, "oversized signed token", &huge, "too_large").await;
    let junk = "a".repeat(MAX_TOKEN_BYTES + 1);
    assert_refused(&auth, "oversized junk token", &junk, "too_large").await;
    let header = vec![b' '; 1 << 20];
    let failure = auth.verify(Some(&header), NOW).await.unwrap_err();
    assert_eq!(failure.reason(), "too_large", "oversized header: {failure}");
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
    let (header_part, rest) = token.split_once('.').unwrap();
    // A JWE in compact form: header, encrypted key, IV, ciphertext, tag.
    let jwe_header = b64(br#"{"alg":"RSA-OAEP","enc":"A256GCM","kid":"k1"}"#);
    let jwe = format!("{jwe_header}.ZW5jcnlwdGVkLWtleQ.aXYtaXYtaXY.Y2lwaGVydGV4dA.dGFnLXRhZw");
    for (case, header) in [
        ("Basic scheme", format!("Basic {token}")),
        ("no space after the scheme", format!("Bearer{token}")),
        ("scheme alone", "Bearer".to_owned()),
        ("scheme and spaces", "Bearer    ".to_owned()),
        ("empty header", String::new()),
        ("a second word", format!("Bearer {token} extra")),
        ("base64 padding", format!("Bearer {token}==")),
        (
            "two parts",
            format!("Bearer {}", token.rsplit_once('.').unwrap().0),
        ),
        (
            "two parts, a dot removed",
            format!("Bearer {header_part}{rest}"),
        ),
        ("four parts", format!("Bearer {token}.{header_part}")),
        ("five parts (a JWE)", format!("Bearer {jwe}")),
        ("five junk parts", "Bearer a.b.c.d.e".to_owned()),
        ("six parts", format!("Bearer {token}.{token}")),
        ("empty header part", format!("Bearer .{rest}")),
        ("header not base64url", format!("Bearer !!.{rest}")),
    ] {
        let failure = auth.verify(Some(header.as_bytes()), NOW).await.unwrap_err();
        assert_eq!(failure.reason(), "malformed", "{case}: {failure}");
        assert_eq!(
            failure.www_authenticate(),
            r#"Bearer error="invalid_token""#,
            "{case}"
        );
        assert!(!failure.to_string().contains(&token), "{case}");
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
    assert_refused(&auth, "crit in the header", &token, "malformed").await;
    let empty = json!({ "alg": "ES256", "kid": "k1", "crit": [] });
    let token = key.sign_json(&empty, &claims());
    assert_refused(&auth, "empty crit in the header", &token, "malformed").await;
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
    let der: &[u8] = b"the agent's certificate, DER";
    let thumbprint = certificate_thumbprint(der);
    assert_eq!(thumbprint.len(), 43, "unpadded base64url of 32 bytes");
    let token = key.sign(&claims_with("cnf", json!({ "x5t#S256": thumbprint })));
    let identity = verify(&auth, &token).await.unwrap();
    assert_eq!(identity.binding, Binding::Certificate(thumbprint));

    // The whole request, as the tunnel hands it over: the Bearer token and the DER of the
    // client certificate, if the agent sent one.
    let authorization = format!("Bearer {token}");
    let request = |certificate| Credentials {
        authorization: Some(authorization.as_bytes()),
        authorization_count: 1,
        certificate,
        ..Credentials::default()
    };
    auth.authenticate(&request(Some(der)), NOW).await.unwrap();
    for (case, certificate, failure) in [
        (
            "bound token without a certificate",
            None,
            BindingFailure::NoCertificate,
        ),
        (
            "bound token with another certificate",
            Some(&b"another certificate"[..]),
            BindingFailure::OtherCertificate,
        ),
    ] {
        let Err(refusal) = auth.authenticate(&request(certificate), NOW).await else {
            panic!("{case}: accepted");
        };
        assert_eq!(refusal.failure, AuthFailure::Binding(failure), "{case}");
        assert_eq!(refusal.reason(), "cert_binding", "{case}");
        assert_eq!(
            refusal.www_authenticate(),
            r#"Bearer error="invalid_token""#,
            "{case}"
        );
        assert_eq!(
            auth.check_binding(&identity, certificate),
            Err(AuthFailure::Binding(failure)),
            "{case}"
        );
    }
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
