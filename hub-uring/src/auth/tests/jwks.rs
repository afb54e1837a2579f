//! Key set parsing, fetching over loopback HTTP and from files, rotation, the refresh rate
//! limit, and keeping the last good set.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use nowconnect_core::config::TunnelConfig;
use serde_json::json;

use super::support::{
    JwksFile, JwksServer, TestKey, b64, claims, eventually, jwks, refused, security, verify,
};
use crate::auth::jwks::{Schedule, Source, cache_max_age, run_refresher};
use crate::auth::{Authenticator, FetchError, JwksStore, KeySet, MAX_JWKS_BYTES};

/// A refresher over `url` with `min_gap` between unknown-`kid` refetches and no periodic
/// refresh during a test; returns its store and how many loads succeeded.
fn start_refresher(url: &str, min_gap: Duration) -> (JwksStore, Arc<AtomicUsize>) {
    let (store, requests) = JwksStore::new();
    let loads = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&loads);
    let schedule = Schedule {
        period: Duration::from_secs(3600),
        min_gap,
        retry_first: Duration::from_millis(20),
        retry_max: Duration::from_millis(20),
        min_period: Duration::from_millis(50),
        max_period: Duration::from_millis(200),
    };
    let (url, refreshed) = (url.to_owned(), store.clone());
    tokio::spawn(async move {
        let on_loaded = move || {
            counter.fetch_add(1, Ordering::SeqCst);
        };
        run_refresher(&url, refreshed, requests, on_loaded, schedule).await;
    });
    (store, loads)
}

async fn loaded(store: &JwksStore) {
    eventually("the JWKS is loaded", || store.is_loaded()).await;
}

#[test]
fn standard_schedule_matches_the_documented_timers() {
    assert_eq!(Schedule::STANDARD.period, Duration::from_secs(300));
    assert_eq!(Schedule::STANDARD.min_gap, Duration::from_secs(30));
}

#[test]
fn key_set_keeps_only_asymmetric_signing_keys() {
    let ec = TestKey::ec("ec");
    let rsa = TestKey::rsa("rsa");
    let mut enc = TestKey::rsa("enc").jwk;
    enc["use"] = json!("enc");
    let mut oaep = TestKey::rsa("oaep").without_jwk_alg().jwk;
    oaep["alg"] = json!("RSA-OAEP");
    let mut hs = TestKey::rsa("hs").jwk;
    hs["alg"] = json!("HS256");
    let mut mismatch = TestKey::ec("mismatch").jwk;
    mismatch["alg"] = json!("ES384");
    let mut encrypt_only = TestKey::ec("ops").jwk;
    encrypt_only["key_ops"] = json!(["encrypt"]);
    let mut short = TestKey::rsa("short").jwk;
    short["n"] = json!(b64(&[0xc5; 128]));
    let text = json!({"keys": [
        {"kty": "oct", "kid": "oct", "k": b64(b"0123456789abcdef0123456789abcdef")},
        enc, oaep, hs, mismatch, encrypt_only, short,
        {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"},
        {"kty": "OKP", "crv": "X25519", "kid": "x25519", "x": b64(&[1; 32])},
        {"kty": "EC", "crv": "P-256", "kid": "bad-point", "x": b64(&[1; 31]), "y": b64(&[1; 32])},
        {"kty": "RSA", "kid": "no-n", "e": "AQAB"},
        "not an object",
        ec.jwk, rsa.jwk,
    ]})
    .to_string();
    let keys = KeySet::from_json(&text).unwrap();
    assert_eq!(keys.kids().collect::<Vec<_>>(), ["ec", "rsa"]);
    assert_eq!(keys.len(), 2);
    assert!(!keys.is_empty());
    assert!(!keys.contains_kid("oct"));
}

#[test]
fn ed25519_alg_name_is_read_as_eddsa() {
    let key = TestKey::ed25519("ed");
    let mut jwk = key.jwk.clone();
    jwk["alg"] = json!("Ed25519");
    let keys = KeySet::from_json(&json!({ "keys": [jwk] }).to_string()).unwrap();
    assert!(keys.contains_kid("ed"));
}

#[test]
fn unusable_documents_are_errors() {
    for text in ["", "[]", r#"{"keys": "x"}"#, r#"{"nokeys": []}"#, "{"] {
        assert!(
            matches!(KeySet::from_json(text), Err(FetchError::Json(_))),
            "{text}"
        );
    }
    let only_oct = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#;
    assert!(matches!(
        KeySet::from_json(only_oct),
        Err(FetchError::NoUsableKeys { total: 1 })
    ));
    assert!(matches!(
        KeySet::from_json(r#"{"keys":[]}"#),
        Err(FetchError::NoUsableKeys { total: 0 })
    ));
}

#[test]
fn urls_are_recognised() {
    for bad in [
        "ftp://host/jwks",
        "/etc/jwks.json",
        "file://relative",
        "file:///a%zz",
    ] {
        assert!(
            matches!(Source::new(bad), Err(FetchError::UnsupportedUrl(_))),
            "{bad}"
        );
    }
    for (url, path) in [
        ("file:///etc/jwks.json", "/etc/jwks.json"),
        ("file://localhost/etc/jwks.json", "/etc/jwks.json"),
        ("file:///tmp/my%20keys.json", "/tmp/my keys.json"),
    ] {
        match Source::new(url).unwrap() {
            Source::File(p) => assert_eq!(p.to_str(), Some(path)),
            Source::Http { .. } => panic!("{url} is a file"),
        }
    }
    assert!(matches!(
        Source::new("https://idp.example.com/jwks").unwrap(),
        Source::Http { .. }
    ));
}

#[tokio::test]
async fn rotation_over_http_is_picked_up_on_an_unknown_kid() {
    let old = TestKey::ec("2026-01");
    let new = TestKey::ec("2026-02");
    let server = JwksServer::start(&jwks(&[&old])).await;
    let (store, loads) = start_refresher(&server.url, Duration::ZERO);
    loaded(&store).await;
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    let auth = Authenticator::new(&security(), &TunnelConfig::default(), store.clone());
    verify(&auth, &old.sign(&claims())).await.unwrap();
    assert_eq!(server.hits(), 1);

    // The provider rotates: the new key replaces the old one.
    server.set(200, jwks(&[&new]));
    verify(&auth, &new.sign(&claims())).await.unwrap();
    assert_eq!(server.hits(), 2);
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    assert!(!store.current().contains_kid("2026-01"));

    // The retired key's tokens are refused, after one more look.
    assert_eq!(refused(&auth, &old.sign(&claims())).await, "unknown_kid");
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn unknown_kid_refresh_is_rate_limited() {
    let old = TestKey::ec("k1");
    let new = TestKey::ec("k2");
    let server = JwksServer::start(&jwks(&[&old])).await;
    let (store, _) = start_refresher(&server.url, Duration::from_secs(3600));
    loaded(&store).await;
    let auth = Authenticator::new(&security(), &TunnelConfig::default(), store.clone());
    server.set(200, jwks(&[&old, &new]));

    // The first unknown kid after the scheduled load refetches at once: rotation is picked up.
    verify(&auth, &new.sign(&claims())).await.unwrap();
    assert_eq!(server.hits(), 2);
    // Within the minimum gap, further unknown kids are answered from the current set, however
    // many, sequentially or concurrently.
    for i in 0..5 {
        let token = old.sign_with(Algorithm::ES256, Some(&format!("bogus-{i}")), &claims());
        assert_eq!(refused(&auth, &token).await, "unknown_kid");
    }
    let attempts: Vec<_> = (0..20)
        .map(|i| {
            let token = old.sign_with(Algorithm::ES256, Some(&format!("made-up-{i}")), &claims());
            let auth = auth.clone();
            tokio::spawn(async move { verify(&auth, &token).await })
        })
        .collect();
    for attempt in attempts {
        assert_eq!(attempt.await.unwrap().unwrap_err().reason(), "unknown_kid");
    }
    assert_eq!(server.hits(), 2);
    verify(&auth, &old.sign(&claims())).await.unwrap();
}

#[tokio::test]
async fn refresh_without_the_kid_leaves_it_unknown() {
    let known = TestKey::ec("k1");
    let stranger = TestKey::ec("k2");
    let server = JwksServer::start(&jwks(&[&known])).await;
    let (store, _) = start_refresher(&server.url, Duration::ZERO);
    loaded(&store).await;
    let auth = Authenticator::new(&security(), &TunnelConfig::default(), store);
    assert_eq!(
        refused(&auth, &stranger.sign(&claims())).await,
        "unknown_kid"
    );
    assert_eq!(server.hits(), 2, "the unknown kid triggered one refetch");
}

#[tokio::test]
async fn rotation_from_a_file_is_picked_up() {
    let old = TestKey::ec("old");
    let new = TestKey::ed25519("new");
    let file = JwksFile::new(&jwks(&[&old]));
    let (store, loads) = start_refresher(&file.url(), Duration::ZERO);
    loaded(&store).await;
    let auth = Authenticator::new(&security(), &TunnelConfig::default(), store.clone());
    verify(&auth, &old.sign(&claims())).await.unwrap();

    file.write(jwks(&[&old, &new]).as_bytes());
    verify(&auth, &new.sign(&claims())).await.unwrap();
    verify(&auth, &old.sign(&claims())).await.unwrap();
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    assert_eq!(store.current().len(), 2);
}

#[tokio::test]
async fn failed_refresh_keeps_the_last_good_set() {
    let good = TestKey::ec("good");
    let stranger = TestKey::ec("stranger");
    let server = JwksServer::start(&jwks(&[&good])).await;
    let (store, loads) = start_refresher(&server.url, Duration::ZERO);
    loaded(&store).await;
    let auth = Authenticator::new(&security(), &TunnelConfig::default(), store.clone());

    let oct_only = r#"{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0"}]}"#;
    let oversized = format!("{{\"keys\":[],\"pad\":\"{}\"}}", "x".repeat(MAX_JWKS_BYTES));
    let failures: [(u16, &str); 5] = [
        (500, "{}"),
        (404, "not found"),
        (200, "<html>not json</html>"),
        (200, oct_only),
        (200, &oversized),
    ];
    for (round, (status, body)) in failures.into_iter().enumerate() {
        server.set(status, body);
        assert_eq!(
            refused(&auth, &stranger.sign(&claims())).await,
            "unknown_kid"
        );
        assert_eq!(server.hits(), round + 2, "status {status}");
        assert!(store.current().contains_kid("good"));
        verify(&auth, &good.sign(&claims())).await.unwrap();
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);

    // A missing file is a failure too.
    let file = JwksFile::new(&jwks(&[&good]));
    let (store, _) = start_refresher(&file.url(), Duration::ZERO);
    loaded(&store).await;
    std::fs::remove_file(&file.path).unwrap();
    let auth = Authenticator::new(&security(), &TunnelConfig::default(), store.clone());
    assert_eq!(
        refused(&auth, &stranger.sign(&claims())).await,
        "unknown_kid"
    );
    verify(&auth, &good.sign(&claims())).await.unwrap();
}

#[tokio::test]
async fn first_load_is_retried_until_it_succeeds() {
    let key = TestKey::ec("k1");
    let server = JwksServer::start("").await;
    server.set(503, "unavailable");
    let (store, loads) = start_refresher(&server.url, Duration::ZERO);
    eventually("two attempts were made", || server.hits() >= 2).await;
    assert!(!store.is_loaded());
    let auth = Authenticator::new(&security(), &TunnelConfig::default(), store.clone());
    assert_eq!(
        refused(&auth, &key.sign(&claims())).await,
        "jwks_unavailable"
    );

    server.set(200, jwks(&[&key]));
    loaded(&store).await;
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    verify(&auth, &key.sign(&claims())).await.unwrap();
}

#[tokio::test]
async fn oversized_jwks_is_refused() {
    let key = TestKey::ec("k1");
    // Exactly at the cap: accepted.
    let document = jwks(&[&key]);
    let padded = |len: usize| format!("{document}{}", " ".repeat(len - document.len()));
    let at_cap = padded(MAX_JWKS_BYTES);
    assert_eq!(at_cap.len(), MAX_JWKS_BYTES);
    let server = JwksServer::start(&at_cap).await;
    let source = Source::new(&server.url).unwrap();
    let text = source.fetch().await.unwrap();
    assert_eq!(KeySet::from_json(&text).unwrap().len(), 1);

    let over = padded(MAX_JWKS_BYTES + 1);
    // With Content-Length, refused before reading the body.
    server.set(200, over.clone());
    let error = source.fetch().await.unwrap_err();
    assert!(matches!(error, FetchError::TooLarge { .. }), "{error}");
    // Without it, refused while reading.
    server.set_unframed(over.clone());
    let error = source.fetch().await.unwrap_err();
    assert!(matches!(error, FetchError::TooLarge { .. }), "{error}");
    server.set_unframed(document.clone());
    source.fetch().await.unwrap();

    // From a file.
    let file = JwksFile::new(&over);
    let error = Source::new(&file.url()).unwrap().fetch().await.unwrap_err();
    assert!(matches!(error, FetchError::TooLarge { .. }), "{error}");
    let file = JwksFile::new(&at_cap);
    Source::new(&file.url()).unwrap().fetch().await.unwrap();
}

#[tokio::test]
async fn http_errors_are_reported() {
    let server = JwksServer::start("").await;
    server.set(404, "missing");
    let error = Source::new(&server.url).unwrap().fetch().await.unwrap_err();
    assert!(matches!(error, FetchError::Status(404)), "{error}");

    // Nothing listens on a port just released.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    drop(listener);
    let error = Source::new(&url).unwrap().fetch().await.unwrap_err();
    assert!(matches!(error, FetchError::Request(_)), "{error}");

    let bad_utf8 = JwksFile::new("");
    bad_utf8.write(&[0xff, 0xfe]);
    let error = Source::new(&bad_utf8.url())
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert!(matches!(error, FetchError::NotUtf8), "{error}");
}

#[test]
fn refresher_can_run_on_a_multi_threaded_runtime() {
    fn assert_send<T: Send>(_: &T) {}
    let (store, requests) = JwksStore::new();
    let future = crate::auth::refresher("file:///x".to_owned(), store.clone(), requests, || {});
    assert_send(&future);
    let auth = Authenticator::new(&security(), &TunnelConfig::default(), store);
    assert_send(&auth.verify(None, 0));
    fn assert_sync<T: Send + Sync + Clone>() {}
    assert_sync::<Authenticator>();
    assert_sync::<JwksStore>();
}

#[test]
fn cache_control_gives_the_refetch_period() {
    let secs = Duration::from_secs;
    assert_eq!(cache_max_age("max-age=600"), Some(secs(600)));
    assert_eq!(
        cache_max_age("public, Max-Age=\"90\", must-revalidate"),
        Some(secs(90))
    );
    assert_eq!(cache_max_age("no-cache"), Some(Duration::ZERO));
    assert_eq!(cache_max_age("max-age=600, no-store"), Some(Duration::ZERO));
    assert_eq!(cache_max_age("public"), None);
    assert_eq!(cache_max_age("max-age=soon"), None);
    let standard = Schedule::STANDARD;
    assert_eq!(standard.min_period, secs(60));
    assert_eq!(standard.max_period, secs(3600));
}

/// The periodic refetch follows the response's `Cache-Control: max-age` within the bounds:
/// here the period is an hour and the bounds 50 to 200 ms, so only a header makes the
/// refresher come back within a second.
#[tokio::test]
async fn the_refresher_follows_cache_control_within_bounds() {
    let key = TestKey::ec("k1");
    for (header, refetches) in [
        (None, false),
        (Some("max-age=0"), true),
        (Some("max-age=86400"), true),
    ] {
        let server = JwksServer::start(&jwks(&[&key])).await;
        if let Some(value) = header {
            server.set_cache_control(value);
        }
        let (store, _) = start_refresher(&server.url, Duration::from_secs(30));
        loaded(&store).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let hits = server.hits();
        assert_eq!(hits > 2, refetches, "{header:?}: {hits} fetches");
    }
}
