//! Test keys, tokens, a loopback JWKS server and temporary JWKS files.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nowconnect_core::config::{SecurityConfig, TunnelConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::auth::{AuthFailure, Authenticator, Identity, JwksStore, KeySet};

/// The time every token test runs at.
pub(super) const NOW: u64 = 1_800_000_000;
pub(super) const AUDIENCE: &str = "nowconnect";
pub(super) const ISSUER: &str = "https://idp.test/";

/// A signing key and its public JWK.
#[derive(Clone)]
pub(super) struct TestKey {
    pub(super) kid: String,
    pub(super) alg: Algorithm,
    encoding: EncodingKey,
    pub(super) jwk: Value,
    /// The public key as SubjectPublicKeyInfo DER (RSA only; empty otherwise).
    pub(super) public_der: Vec<u8>,
}

impl TestKey {
    /// A fresh EC P-256 key for ES256.
    pub(super) fn ec(kid: &str) -> TestKey {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let pkcs8 = pair.to_pkcs8v1().unwrap();
        let point = pair.public_key().as_ref();
        assert_eq!(point.len(), 65);
        TestKey {
            kid: kid.to_owned(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": b64(&point[1..33]), "y": b64(&point[33..]),
            }),
            public_der: Vec::new(),
        }
    }

    /// A fresh Ed25519 key for EdDSA.
    pub(super) fn ed25519(kid: &str) -> TestKey {
        let pair = Ed25519KeyPair::generate().unwrap();
        let pkcs8 = pair.to_pkcs8().unwrap();
        TestKey {
            kid: kid.to_owned(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": kid,
                "x": b64(pair.public_key().as_ref()),
            }),
            public_der: Vec::new(),
        }
    }

    /// An RSA 2048 key for RS256. The key pair is generated once per test run (it is
    /// slow); each call gets it under its own `kid`.
    pub(super) fn rsa(kid: &str) -> TestKey {
        struct Rsa {
            pem: String,
            n: Vec<u8>,
            e: Vec<u8>,
            spki: Vec<u8>,
        }
        static RSA: OnceLock<Rsa> = OnceLock::new();
        let rsa = RSA.get_or_init(|| {
            let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
            let pkcs8 = pair.as_der().unwrap();
            let body = STANDARD.encode(pkcs8.as_ref());
            let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
            for line in body.as_bytes().chunks(64) {
                pem.push_str(std::str::from_utf8(line).unwrap());
                pem.push('\n');
            }
            pem.push_str("-----END PRIVATE KEY-----\n");
            let public = pair.public_key();
            let spki: aws_lc_rs::encoding::PublicKeyX509Der<'_> = public.as_der().unwrap();
            Rsa {
                pem,
                n: public.modulus().big_endian_without_leading_zero().to_vec(),
                e: public.exponent().big_endian_without_leading_zero().to_vec(),
                spki: spki.as_ref().to_vec(),
            }
        });
        TestKey {
            kid: kid.to_owned(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(rsa.pem.as_bytes()).unwrap(),
            jwk: json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                "n": b64(&rsa.n), "e": b64(&rsa.e),
            }),
            public_der: rsa.spki.clone(),
        }
    }

    /// The same key with `alg` removed from its JWK.
    pub(super) fn without_jwk_alg(mut self) -> TestKey {
        self.jwk.as_object_mut().unwrap().remove("alg");
        self
    }

    /// Signs `claims` with the key's algorithm and `kid`.
    pub(super) fn sign(&self, claims: &Value) -> String {
        self.sign_with(self.alg, Some(&self.kid), claims)
    }

    /// Signs `claims` with another algorithm of the key's family, or without `kid`.
    pub(super) fn sign_with(&self, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        self.sign_with_header(&header, claims)
    }

    /// Signs `claims` under a hand-made header.
    pub(super) fn sign_with_header(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).unwrap()
    }

    /// Signs `claims` under a header given as JSON, as is, with the key's algorithm.
    pub(super) fn sign_json(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature =
            jsonwebtoken::crypto::sign(input.as_bytes(), &self.encoding, self.alg).unwrap();
        format!("{input}.{signature}")
    }

    /// The public JWK with only the members RFC 7638 and RFC 9449 need (no `kid`, `use`,
    /// `alg`).
    pub(super) fn public_jwk(&self) -> Value {
        let mut jwk = self.jwk.clone();
        let object = jwk.as_object_mut().unwrap();
        for member in ["kid", "use", "alg"] {
            object.remove(member);
        }
        jwk
    }
}

pub(super) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWKS document holding these JWKs.
pub(super) fn jwks(keys: &[&TestKey]) -> String {
    let keys: Vec<&Value> = keys.iter().map(|k| &k.jwk).collect();
    json!({ "keys": keys }).to_string()
}

/// Claims every check accepts at [`NOW`].
pub(super) fn claims() -> Value {
    json!({
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
    })
}

/// `claims()` with `name` set to `value` (or removed, for `Value::Null`).
pub(super) fn claims_with(name: &str, value: Value) -> Value {
    with_member(claims(), name, value)
}

/// `object` with member `name` set to `value`, or removed for `Value::Null`.
pub(super) fn with_member(mut object: Value, name: &str, value: Value) -> Value {
    let members = object.as_object_mut().unwrap();
    if value.is_null() {
        members.remove(name);
    } else {
        members.insert(name.to_owned(), value);
    }
    object
}

pub(super) fn security() -> SecurityConfig {
    SecurityConfig {
        jwks_url: Some("file:///unused".to_owned()),
        audience: Some(AUDIENCE.to_owned()),
        issuer: Some(ISSUER.to_owned()),
        ..SecurityConfig::default()
    }
}

/// A store with no refresher behind it (refresh requests are answered at once with the
/// current set), holding the key set of `text` if given.
pub(super) fn store_without_refresher(text: Option<&str>) -> JwksStore {
    let (store, requests) = JwksStore::new();
    drop(requests);
    if let Some(text) = text {
        store.install(KeySet::from_json(text).unwrap());
    }
    store
}

/// An authenticator over a store already holding `keys`, with no refresher behind it.
pub(super) fn authenticator(keys: &[&TestKey]) -> Authenticator {
    Authenticator::new(
        &security(),
        &TunnelConfig::default(),
        store_without_refresher(Some(&jwks(keys))),
    )
}

/// Verifies `Bearer <token>` at [`NOW`].
pub(super) async fn verify(auth: &Authenticator, token: &str) -> Result<Identity, AuthFailure> {
    auth.verify(Some(format!("Bearer {token}").as_bytes()), NOW)
        .await
}

/// The failure reason of `Bearer <token>` at [`NOW`]; panics if it was accepted.
pub(super) async fn refused(auth: &Authenticator, token: &str) -> &'static str {
    let failure = verify(auth, token).await.expect_err("token accepted");
    assert_token_not_shown(&failure, token);
    failure.reason()
}

/// Asserts that `Bearer <token>` is refused at [`NOW`] with the metric reason `reason`;
/// every failure message starts with `case`, the name of the case in the negative suite.
pub(super) async fn assert_refused(auth: &Authenticator, case: &str, token: &str, reason: &str) {
    match verify(auth, token).await {
        Ok(identity) => panic!("{case}: accepted, as agent {:?}", identity.agent_id),
        Err(failure) => {
            assert_token_not_shown(&failure, token);
            assert_eq!(failure.reason(), reason, "{case}: refused as {failure}");
        }
    }
}

/// The log line of a failure must never carry the token.
fn assert_token_not_shown(failure: &AuthFailure, token: &str) {
    for shown in [failure.to_string(), format!("{failure:?}")] {
        for part in token.split('.').filter(|p| p.len() > 8) {
            assert!(!shown.contains(part), "{shown} holds the token");
        }
    }
}

/// Waits (up to 10 s) until `condition` holds.
pub(super) async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

/// What the loopback server answers.
struct Reply {
    status: u16,
    body: Vec<u8>,
    /// Whether to send `Content-Length`; without it the body ends when the connection
    /// closes.
    framed: bool,
    /// A `Cache-Control` value to send, if any.
    cache_control: Option<String>,
}

/// A minimal HTTP/1.1 server on 127.0.0.1 answering every request with the current reply
/// and counting requests.
pub(super) struct JwksServer {
    pub(super) url: String,
    reply: Arc<Mutex<Reply>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    /// Starts serving `body` with status 200.
    pub(super) async fn start(body: &str) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let reply = Arc::new(Mutex::new(Reply {
            status: 200,
            body: body.as_bytes().to_vec(),
            framed: true,
            cache_control: None,
        }));
        let hits = Arc::new(AtomicUsize::new(0));
        let (served, counter) = (Arc::clone(&reply), Arc::clone(&hits));
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (reply, counter) = (Arc::clone(&served), Arc::clone(&counter));
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let response = {
                        let reply = reply.lock().unwrap();
                        let mut head = format!(
                            "HTTP/1.1 {} Test\r\nContent-Type: application/json\r\nConnection: close\r\n",
                            reply.status
                        );
                        if reply.framed {
                            head.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
                        }
                        if let Some(value) = &reply.cache_control {
                            head.push_str(&format!("Cache-Control: {value}\r\n"));
                        }
                        head.push_str("\r\n");
                        let mut response = head.into_bytes();
                        response.extend_from_slice(&reply.body);
                        response
                    };
                    let _ = socket.write_all(&response).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        JwksServer { url, reply, hits }
    }

    /// Sends `Cache-Control: value` with every answer from now on.
    pub(super) fn set_cache_control(&self, value: &str) {
        self.reply.lock().unwrap().cache_control = Some(value.to_owned());
    }

    /// Answers `status` and `body` from now on.
    pub(super) fn set(&self, status: u16, body: impl Into<Vec<u8>>) {
        let mut reply = self.reply.lock().unwrap();
        reply.status = status;
        reply.body = body.into();
        reply.framed = true;
    }

    /// Answers `body` with status 200 and no `Content-Length` from now on.
    pub(super) fn set_unframed(&self, body: impl Into<Vec<u8>>) {
        let mut reply = self.reply.lock().unwrap();
        reply.status = 200;
        reply.body = body.into();
        reply.framed = false;
    }

    /// How many requests were answered.
    pub(super) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A JWKS file in the temporary directory, removed on drop.
pub(super) struct JwksFile {
    pub(super) path: PathBuf,
}

impl JwksFile {
    pub(super) fn new(body: &str) -> JwksFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "nowconnect-hub-jwks-{}-{}.json",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let file = JwksFile { path };
        file.write(body.as_bytes());
        file
    }

    pub(super) fn url(&self) -> String {
        format!("file://{}", self.path.display())
    }

    /// Replaces the content atomically, the way a key rotation job would.
    pub(super) fn write(&self, body: &[u8]) {
        let staging = self.path.with_extension("tmp");
        std::fs::write(&staging, body).unwrap();
        std::fs::rename(&staging, &self.path).unwrap();
    }
}

impl Drop for JwksFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
