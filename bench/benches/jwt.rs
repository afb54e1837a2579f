//! Agent token validation with the key set already loaded, beside the bare signature check of
//! the same token.
//!
//! `Authenticator::verify` is the hub's whole check of an `Authorization` header: bearer
//! parsing, header decoding, key lookup by `kid`, the signature, then the claims. The first
//! baseline is the signature check alone, made with the very call the hub makes
//! (`jsonwebtoken::crypto::verify` with a key built from the same JWK), so the ratio shows what
//! everything else adds. The second is aws-lc-rs verifying with a key parsed once beforehand
//! and the signature already decoded: the cost of the cryptography alone.
//!
//! Keys are generated per run; the key set holds all three keys, as an identity provider's
//! usually holds several.
//!
//! Run: `cargo bench -p nowconnect-bench --bench jwt`
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    self, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, ParsedPublicKey,
    RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey};
use nowconnect_core::config::SecurityConfig;
use nowconnect_hub::auth::{Authenticator, JwksStore, KeySet};
use serde_json::{Value, json};

/// The time of every check.
const NOW: u64 = 1_800_000_000;
const AUDIENCE: &str = "nowconnect";
const ISSUER: &str = "https://idp.example/";

/// One signing key of the run.
struct TestKey {
    alg: Algorithm,
    /// The public JWK published in the key set.
    jwk: Value,
    /// The key as the hub builds it from the JWK.
    decoding: DecodingKey,
    /// The key parsed once by aws-lc-rs.
    parsed: ParsedPublicKey,
    /// A token it signed.
    token: String,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn ec_key() -> TestKey {
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("EC key");
    let point = pair.public_key().as_ref().to_vec();
    let (x, y) = (b64(&point[1..33]), b64(&point[33..]));
    let rng = SystemRandom::new();
    TestKey {
        alg: Algorithm::ES256,
        jwk: json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "ec-1",
            "x": x, "y": y}),
        decoding: DecodingKey::from_ec_components(&x, &y).expect("EC JWK"),
        parsed: ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point)
            .expect("EC public key"),
        token: signed(Algorithm::ES256, "ec-1", |msg| {
            pair.sign(&rng, msg)
                .expect("EC signature")
                .as_ref()
                .to_vec()
        }),
    }
}

fn rsa_key() -> TestKey {
    let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key");
    let public = pair.public_key();
    let (n, e) = (
        b64(public.modulus().big_endian_without_leading_zero()),
        b64(public.exponent().big_endian_without_leading_zero()),
    );
    let parsed = ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, public.as_ref())
        .expect("RSA public key");
    let rng = SystemRandom::new();
    TestKey {
        alg: Algorithm::RS256,
        jwk: json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": "rsa-1", "n": n, "e": e}),
        decoding: DecodingKey::from_rsa_components(&n, &e).expect("RSA JWK"),
        parsed,
        token: signed(Algorithm::RS256, "rsa-1", |msg| {
            let mut sig = vec![0; pair.public_modulus_len()];
            pair.sign(&signature::RSA_PKCS1_SHA256, &rng, msg, &mut sig)
                .expect("RSA signature");
            sig
        }),
    }
}

fn ed_key() -> TestKey {
    let pair = Ed25519KeyPair::generate().expect("Ed25519 key");
    let x = b64(pair.public_key().as_ref());
    TestKey {
        alg: Algorithm::EdDSA,
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "ed-1", "x": x}),
        decoding: DecodingKey::from_ed_components(&x).expect("Ed25519 JWK"),
        parsed: ParsedPublicKey::new(&signature::ED25519, pair.public_key().as_ref())
            .expect("Ed25519 public key"),
        token: signed(Algorithm::EdDSA, "ed-1", |msg| {
            pair.sign(msg).as_ref().to_vec()
        }),
    }
}

/// A compact JWS of typical agent claims, signed by `sign` under `alg` and `kid`.
fn signed(alg: Algorithm, kid: &str, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let header = json!({"alg": format!("{alg:?}"), "typ": "JWT", "kid": kid});
    let claims = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "service-account-7",
        "exp": NOW + 600,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "jti": "c0ffee",
        "client_id": "agent-client",
        "agent_id": "agent-foo-01",
        "scope": "connect:ldap connect:pg",
    });
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

/// Polls `future` once: with the key set loaded and a known `kid`, `verify` never waits.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("verify waited for a key set refresh"),
    }
}

fn verify(c: &mut Criterion) {
    let keys = [ec_key(), rsa_key(), ed_key()];
    let jwks = json!({"keys": keys.iter().map(|k| &k.jwk).collect::<Vec<_>>()}).to_string();
    let (store, requests) = JwksStore::new();
    // No refresher: an unknown kid would be answered at once with the current set.
    drop(requests);
    store.install(KeySet::from_json(&jwks).expect("key set"));
    let security = SecurityConfig {
        jwks_url: Some("file:///unused".to_owned()),
        audience: Some(AUDIENCE.to_owned()),
        issuer: Some(ISSUER.to_owned()),
        ..SecurityConfig::default()
    };
    let auth = Authenticator::new(&security, store);

    let mut group = c.benchmark_group("jwt");
    for key in &keys {
        let alg = format!("{:?}", key.alg);
        let header = format!("Bearer {}", key.token);
        let (input, sig_b64) = key.token.rsplit_once('.').expect("three parts");
        let sig = URL_SAFE_NO_PAD.decode(sig_b64).expect("signature");

        let identity = ready(auth.verify(Some(header.as_bytes()), NOW)).expect("token accepted");
        assert_eq!(identity.agent_id, "agent-foo-01");
        assert!(matches!(
            jsonwebtoken::crypto::verify(sig_b64, input.as_bytes(), &key.decoding, key.alg),
            Ok(true)
        ));
        assert!(key.parsed.verify_sig(input.as_bytes(), &sig).is_ok());

        group.bench_with_input(
            BenchmarkId::new("hub_verify", &alg),
            &header,
            |b, header| b.iter(|| ready(auth.verify(Some(black_box(header.as_bytes())), NOW))),
        );
        group.bench_with_input(
            BenchmarkId::new("crypto_verify", &alg),
            &input,
            |b, input| {
                b.iter(|| {
                    jsonwebtoken::crypto::verify(
                        black_box(sig_b64),
                        black_box(input.as_bytes()),
                        &key.decoding,
                        key.alg,
                    )
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("aws_lc_parsed", &alg),
            &input,
            |b, input| {
                b.iter(|| {
                    key.parsed
                        .verify_sig(black_box(input.as_bytes()), black_box(&sig))
                        .is_ok()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
