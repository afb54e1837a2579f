//! The JSON Web Key Set that signs agent tokens: parsing it, sharing the current set with
//! every shard without locks, and keeping it fresh from the control plane.
//!
//! Shards read [`JwksStore::current`] (an `ArcSwap` load) on every upgrade. Only the
//! control plane's [`refresher`] writes it: at start, every five minutes, and when a shard
//! meets a token whose `kid` it does not know, which is how a rotated key is picked up
//! without a restart. Such requests refetch at most once per 30 seconds, so a stream of
//! tokens with made-up `kid`s cannot turn the hub into a load generator against the
//! identity provider.

use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// The largest JWKS document accepted, from a URL or a file. Real key sets are a few KiB.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// The signature algorithms a token may use: asymmetric ones only. `none` and the HMAC
/// family are never accepted, whatever the key set holds.
pub const SUPPORTED_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The RSA algorithms, accepted by an RSA key that names no `alg`.
const RSA_ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// The smallest RSA modulus accepted, in bytes (2048 bits, RFC 7518 §3.3).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// How long one fetch may take, connection to last body byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Unknown-`kid` refresh requests queued at once; past this, askers get the current set at
/// once (a refresh is already pending for them anyway).
const PENDING_REFRESH_REQUESTS: usize = 1024;

/// Parses an algorithm name from the allow-list; `None` for anything else (`none`, `HS256`,
/// unknown names).
pub(super) fn supported_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Why a key set could not be fetched or parsed. The refresher logs it and keeps the last
/// good set.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not `https://`, `http://` or `file://`, or its file path is unusable.
    #[error("unsupported JWKS URL {0:?}: expected https://, http:// or file:///path")]
    UnsupportedUrl(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The HTTP request failed: connection, TLS, timeout or a broken body.
    #[error("JWKS request failed: {0}")]
    Request(#[source] reqwest::Error),
    /// The server answered with a status other than 2xx.
    #[error("JWKS server answered HTTP {0}")]
    Status(u16),
    /// The document is larger than [`MAX_JWKS_BYTES`].
    #[error("JWKS document is larger than {limit} bytes")]
    TooLarge {
        /// The cap that was exceeded, in bytes.
        limit: usize,
    },
    /// The JWKS file could not be read.
    #[error("cannot read JWKS file {path}: {source}")]
    File {
        /// The file's path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The document is not UTF-8.
    #[error("JWKS document is not UTF-8")]
    NotUtf8,
    /// The document is not a JSON object with a `keys` array.
    #[error("JWKS document is not a JSON key set: {0}")]
    Json(#[from] serde_json::Error),
    /// The document holds no key usable to verify tokens (after skipping symmetric keys,
    /// encryption keys, unsupported algorithms and malformed keys).
    #[error("JWKS document holds no usable signing key ({total} keys, all skipped)")]
    NoUsableKeys {
        /// How many keys the document listed.
        total: usize,
    },
}

/// One verification key of a [`KeySet`].
struct KeyEntry {
    kid: Option<String>,
    key: DecodingKey,
    /// The algorithms this key verifies: its `alg`, or every algorithm its type allows.
    algorithms: Vec<Algorithm>,
}

/// The outcome of looking a key up for a token.
pub(super) enum KeyLookup<'a> {
    /// The key to verify the token with.
    Found(&'a DecodingKey),
    /// No key has the token's `kid` (or, for a token without `kid`, not exactly one key
    /// accepts its algorithm).
    UnknownKid,
    /// The key named by `kid` does not accept the token's algorithm.
    WrongAlgorithm,
}

/// A parsed JWKS: the keys that may sign agent tokens, by `kid`.
///
/// Built by [`KeySet::from_json`], which keeps only keys that can verify a token with an
/// algorithm of [`SUPPORTED_ALGORITHMS`]: `kty: oct` (symmetric) keys, keys marked
/// `use: enc`, keys whose `key_ops` exclude `verify`, keys naming another `alg`, and
/// malformed or too small keys are skipped. A key without `alg` accepts every algorithm its
/// type allows (RSA: RS* and PS*; EC: ES256 on P-256, ES384 on P-384; OKP: EdDSA on Ed25519).
///
/// Lookups scan the keys in order: identity providers publish a handful.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<KeyEntry>,
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`), skipping the keys described on
    /// [`KeySet`]. Fails when the text is not such a document or no key is usable.
    pub fn from_json(text: &str) -> Result<KeySet, FetchError> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<Value>,
        }
        let document: Document = serde_json::from_str(text)?;
        let total = document.keys.len();
        let mut keys = Vec::with_capacity(total);
        for (index, raw) in document.keys.iter().enumerate() {
            match parse_key(raw) {
                Ok(entry) => keys.push(entry),
                Err(why) => {
                    let kid = raw.get("kid").and_then(Value::as_str).unwrap_or("");
                    tracing::debug!(index, kid, why, "JWKS key skipped");
                }
            }
        }
        if keys.is_empty() {
            return Err(FetchError::NoUsableKeys { total });
        }
        Ok(KeySet { keys })
    }

    /// How many usable keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no key (only before the first successful load).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key with this `kid` is in the set.
    pub fn contains_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The `kid`s of the keys, in document order (keys without one are left out).
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().filter_map(|k| k.kid.as_deref())
    }

    /// Finds the key for a token with this `kid` and algorithm. With a `kid`, the key of
    /// that `kid` accepting `alg` (ids may repeat across key types, RFC 7517 §4.5). Without
    /// one, the only key that accepts `alg`, if there is exactly one.
    pub(super) fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> KeyLookup<'_> {
        match kid {
            Some(kid) => {
                let mut named = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid));
                let mut any = false;
                for entry in named.by_ref() {
                    any = true;
                    if entry.algorithms.contains(&alg) {
                        return KeyLookup::Found(&entry.key);
                    }
                }
                if any {
                    KeyLookup::WrongAlgorithm
                } else {
                    KeyLookup::UnknownKid
                }
            }
            None => {
                let mut matching = self.keys.iter().filter(|k| k.algorithms.contains(&alg));
                match (matching.next(), matching.next()) {
                    (Some(entry), None) => KeyLookup::Found(&entry.key),
                    _ => KeyLookup::UnknownKid,
                }
            }
        }
    }
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.keys
                    .iter()
                    .map(|k| (k.kid.as_deref(), k.algorithms.as_slice())),
            )
            .finish()
    }
}

/// Builds one key from its JWK object, or says why it is skipped.
fn parse_key(raw: &Value) -> Result<KeyEntry, &'static str> {
    let jwk = raw.as_object().ok_or("not a JSON object")?;
    let text = |name: &str| -> Result<Option<&str>, &'static str> {
        match jwk.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err("a member is not a string"),
        }
    };
    let kty = text("kty")?.ok_or("no kty")?;
    if kty == "oct" {
        return Err("symmetric (kty oct)");
    }
    if text("use")?.is_some_and(|u| u != "sig") {
        return Err("not a signing key (use is not sig)");
    }
    if let Some(ops) = jwk.get("key_ops") {
        let ops = ops.as_array().ok_or("key_ops is not an array")?;
        if !ops.iter().any(|op| op.as_str() == Some("verify")) {
            return Err("key_ops does not include verify");
        }
    }
    let (key, mut algorithms) = public_key(jwk)?;
    if let Some(alg) = text("alg")? {
        // Some identity providers advertise Ed25519 keys with the fully specified name.
        let alg = match alg {
            "Ed25519" => Algorithm::EdDSA,
            other => supported_algorithm(other).ok_or("alg is not an accepted algorithm")?,
        };
        if !algorithms.contains(&alg) {
            return Err("alg does not match the key type");
        }
        algorithms = vec![alg];
    }
    Ok(KeyEntry {
        kid: text("kid")?.map(str::to_owned),
        key,
        algorithms,
    })
}

/// The verification key of a public JWK and the algorithms its type allows (RSA: RS* and PS*,
/// 2048 bits or more; EC: ES256 on P-256, ES384 on P-384; OKP: EdDSA on Ed25519). Any other
/// key type or curve, `oct` included, is refused. The caller checks `alg`, `use` and the like.
pub(super) fn public_key(
    jwk: &Map<String, Value>,
) -> Result<(DecodingKey, Vec<Algorithm>), &'static str> {
    let text = |name: &str| match jwk.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err("a member is not a string"),
    };
    Ok(match (text("kty")?, text("crv")?) {
        (Some("RSA"), _) => (rsa_key(jwk)?, RSA_ALGORITHMS.to_vec()),
        (Some("EC"), Some("P-256")) => (ec_key(jwk, 32)?, vec![Algorithm::ES256]),
        (Some("EC"), Some("P-384")) => (ec_key(jwk, 48)?, vec![Algorithm::ES384]),
        (Some("OKP"), Some("Ed25519")) => (ed_key(jwk)?, vec![Algorithm::EdDSA]),
        _ => return Err("unsupported key type or curve"),
    })
}

fn member<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<&'a str, &'static str> {
    jwk.get(name)
        .and_then(Value::as_str)
        .ok_or("a key parameter is missing")
}

fn rsa_key(jwk: &Map<String, Value>) -> Result<DecodingKey, &'static str> {
    let key = DecodingKey::from_rsa_components(member(jwk, "n")?, member(jwk, "e")?)
        .map_err(|_| "n or e is not base64url")?;
    if let DecodingKeyKind::RsaModulusExponent { n, .. } = key.kind() {
        let significant = n.iter().skip_while(|b| **b == 0).count();
        if significant < MIN_RSA_MODULUS_BYTES {
            return Err("RSA modulus shorter than 2048 bits");
        }
    }
    Ok(key)
}

fn ec_key(jwk: &Map<String, Value>, coordinate_len: usize) -> Result<DecodingKey, &'static str> {
    let key = DecodingKey::from_ec_components(member(jwk, "x")?, member(jwk, "y")?)
        .map_err(|_| "x or y is not base64url")?;
    // 0x04 || x || y, the uncompressed point.
    match key.kind() {
        DecodingKeyKind::SecretOrDer(point) if point.len() == 1 + 2 * coordinate_len => Ok(key),
        _ => Err("EC coordinates have the wrong length"),
    }
}

fn ed_key(jwk: &Map<String, Value>) -> Result<DecodingKey, &'static str> {
    let key =
        DecodingKey::from_ed_components(member(jwk, "x")?).map_err(|_| "x is not base64url")?;
    match key.kind() {
        DecodingKeyKind::SecretOrDer(x) if x.len() == 32 => Ok(key),
        _ => Err("Ed25519 public key is not 32 bytes"),
    }
}

/// What the store shares between shards and the refresher.
struct Shared {
    keys: ArcSwap<KeySet>,
    loaded: AtomicBool,
}

/// One shard's request for a refresh: the refresher answers with the set it holds after
/// the (possibly skipped) refetch.
type Waiter = oneshot::Sender<Arc<KeySet>>;

/// The current key set, shared lock-free by all shards, and the way to ask the control
/// plane for a refresh. Cloning is cheap: every clone sees the same set.
///
/// Until the first successful load the set is empty and [`is_loaded`](Self::is_loaded) is
/// false.
#[derive(Clone)]
pub struct JwksStore {
    shared: Arc<Shared>,
    requests: mpsc::Sender<Waiter>,
}

/// The receiving end of [`JwksStore`]'s refresh requests, handed to [`refresher`].
pub struct RefreshRequests {
    receiver: mpsc::Receiver<Waiter>,
}

impl fmt::Debug for RefreshRequests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshRequests").finish_non_exhaustive()
    }
}

impl JwksStore {
    /// An empty, not yet loaded store, and the receiving end of its refresh requests.
    pub fn new() -> (JwksStore, RefreshRequests) {
        let (requests, receiver) = mpsc::channel(PENDING_REFRESH_REQUESTS);
        let store = JwksStore {
            shared: Arc::new(Shared {
                keys: ArcSwap::from_pointee(KeySet::default()),
                loaded: AtomicBool::new(false),
            }),
            requests,
        };
        (store, RefreshRequests { receiver })
    }

    /// The key set in force now.
    pub fn current(&self) -> Arc<KeySet> {
        self.shared.keys.load_full()
    }

    /// Whether a key set has been loaded at least once.
    pub fn is_loaded(&self) -> bool {
        self.shared.loaded.load(Ordering::Acquire)
    }

    /// Puts `keys` in force for every shard and marks the store loaded. The [`refresher`]
    /// calls this after each successful fetch.
    pub fn install(&self, keys: KeySet) {
        self.shared.keys.store(Arc::new(keys));
        self.shared.loaded.store(true, Ordering::Release);
    }

    /// Asks the refresher for a refresh because a token named an unknown `kid`, and waits
    /// until it answered. The refresher refetches at most once per 30 s and otherwise
    /// answers at once with the current set. When the refresher is gone, or too many
    /// requests are already pending, returns the current set at once.
    ///
    /// Runtime-agnostic: it only awaits a oneshot channel, so shards on any executor may
    /// call it.
    pub async fn refresh_for_unknown_kid(&self) -> Arc<KeySet> {
        let (reply, answer) = oneshot::channel();
        if self.requests.try_send(reply).is_err() {
            return self.current();
        }
        answer.await.unwrap_or_else(|_| self.current())
    }
}

impl fmt::Debug for JwksStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksStore")
            .field("loaded", &self.is_loaded())
            .field("keys", &self.current())
            .finish()
    }
}

/// When the refresher fetches. Fixed in production ([`Schedule::STANDARD`]); tests shorten
/// it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Schedule {
    /// Time between periodic refetches once a set is loaded.
    pub(super) period: Duration,
    /// Least time between the last fetch and one triggered by an unknown `kid`.
    pub(super) min_gap: Duration,
    /// First retry delay while no set has been loaded yet; doubles up to `retry_max`.
    pub(super) retry_first: Duration,
    /// Longest retry delay while no set has been loaded yet.
    pub(super) retry_max: Duration,
    /// Bounds on a refetch period taken from the response's `Cache-Control: max-age`.
    pub(super) min_period: Duration,
    pub(super) max_period: Duration,
}

impl Schedule {
    /// Every 5 minutes, or as the response's `Cache-Control: max-age` says within 1 minute
    /// to 1 hour; unknown-`kid` refetches at most once per 30 s; at start, retries after
    /// 1 s, doubling to 30 s, until the first load succeeds.
    pub(super) const STANDARD: Schedule = Schedule {
        period: Duration::from_secs(300),
        min_gap: Duration::from_secs(30),
        retry_first: Duration::from_secs(1),
        retry_max: Duration::from_secs(30),
        min_period: Duration::from_secs(60),
        max_period: Duration::from_secs(3600),
    };

    /// The period until the next scheduled refetch after a load whose response said
    /// `max_age` (if anything).
    fn after_load(&self, max_age: Option<Duration>) -> Duration {
        max_age.map_or(self.period, |age| {
            age.clamp(self.min_period, self.max_period.max(self.min_period))
        })
    }
}

/// Keeps `store` current from `url`, on the control plane's tokio runtime; runs until the
/// task is dropped.
///
/// Loads the JWKS at once, then refetches every 5 minutes (or after the response's
/// `Cache-Control: max-age`, kept between 1 minute and 1 hour: a shorter one would hammer the
/// identity provider, a longer one would keep a key the provider withdrew), and when a shard
/// asks through
/// [`JwksStore::refresh_for_unknown_kid`] (at most once per 30 s; requests arriving together
/// share one fetch). Until the first load succeeds it retries after 1 s, doubling up to
/// 30 s. A failed fetch logs a warning and keeps the last good set. `on_loaded` is called
/// after every successful load (the caller sets its readiness flag).
///
/// `url` is `https://`, `http://` (loopback, as configuration validation requires) or
/// `file:///path`; fetches time out after 5 s and documents are capped at
/// [`MAX_JWKS_BYTES`].
pub async fn refresher(
    url: String,
    store: JwksStore,
    requests: RefreshRequests,
    on_loaded: impl Fn() + Send + 'static,
) {
    run_refresher(&url, store, requests, on_loaded, Schedule::STANDARD).await;
}

/// [`refresher`] with its timers as parameters.
pub(super) async fn run_refresher(
    url: &str,
    store: JwksStore,
    mut requests: RefreshRequests,
    on_loaded: impl Fn() + Send + 'static,
    schedule: Schedule,
) {
    let source = match Source::new(url) {
        Ok(source) => Some(source),
        Err(error) => {
            tracing::error!(%error, "JWKS refresher cannot fetch; no keys will be loaded");
            None
        }
    };
    // Only refetches asked for by unknown kids count toward the minimum gap: the first new kid
    // after a scheduled load is picked up at once, a stream of bogus kids costs one fetch per
    // gap.
    let mut last_kid_fetch: Option<Instant> = None;
    let mut retry = schedule.retry_first;
    let mut next = Instant::now();
    let mut requests_open = true;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next), if source.is_some() => {
                let mut max_age = None;
                if let Some(source) = &source
                    && let Some(age) = fetch_into(source, &store).await
                {
                    max_age = age;
                    on_loaded();
                }
                let now = Instant::now();
                next = if store.is_loaded() {
                    now + schedule.after_load(max_age)
                } else {
                    let delay = retry;
                    retry = retry.saturating_mul(2).min(schedule.retry_max);
                    now + delay
                };
            }
            waiter = requests.receiver.recv(), if requests_open => {
                let Some(waiter) = waiter else {
                    requests_open = false;
                    continue;
                };
                let mut waiters = vec![waiter];
                while let Ok(more) = requests.receiver.try_recv() {
                    waiters.push(more);
                }
                let due = last_kid_fetch.is_none_or(|at| at.elapsed() >= schedule.min_gap);
                if let (true, Some(source)) = (due, &source) {
                    let fetched = fetch_into(source, &store).await;
                    if fetched.is_some() {
                        on_loaded();
                    }
                    let now = Instant::now();
                    last_kid_fetch = Some(now);
                    if store.is_loaded() {
                        next = now + schedule.after_load(fetched.flatten());
                    }
                } else {
                    tracing::debug!(
                        waiting = waiters.len(),
                        "JWKS refresh for an unknown kid skipped: fetched less than the minimum gap ago"
                    );
                }
                let keys = store.current();
                for waiter in waiters {
                    // The asker may have given up (its handshake timed out).
                    let _ = waiter.send(Arc::clone(&keys));
                }
            }
            else => {
                // No URL to fetch from and nobody left to ask: nothing more will happen.
                return;
            }
        }
    }
}

/// Fetches and installs a key set; on failure logs and keeps the set in force. Returns
/// `None` when nothing was installed, else the response's `Cache-Control: max-age`, if any.
async fn fetch_into(source: &Source, store: &JwksStore) -> Option<Option<Duration>> {
    match source
        .fetch_with_max_age()
        .await
        .and_then(|(text, max_age)| KeySet::from_json(&text).map(|keys| (keys, max_age)))
    {
        Ok((keys, max_age)) => {
            let before = store.current();
            let changed = !before.kids().eq(keys.kids()) || before.len() != keys.len();
            if changed {
                tracing::info!(keys = keys.len(), kids = ?keys.kids().collect::<Vec<_>>(), "JWKS loaded");
            } else {
                tracing::debug!(keys = keys.len(), "JWKS refreshed, unchanged");
            }
            store.install(keys);
            Some(max_age)
        }
        Err(error) => {
            tracing::warn!(
                %error,
                loaded = store.is_loaded(),
                "JWKS fetch failed; keeping the last good key set"
            );
            None
        }
    }
}

/// Where the key set comes from.
pub(super) enum Source {
    /// `https://` or loopback `http://`.
    Http {
        client: reqwest::Client,
        url: String,
    },
    /// `file://`: a local file.
    File(PathBuf),
}

impl Source {
    /// Recognises the URL's scheme and prepares the HTTP client.
    pub(super) fn new(url: &str) -> Result<Source, FetchError> {
        let scheme_end = url
            .find("://")
            .ok_or_else(|| FetchError::UnsupportedUrl(url.to_owned()))?;
        let scheme = url[..scheme_end].to_ascii_lowercase();
        let rest = &url[scheme_end + 3..];
        match scheme.as_str() {
            "https" | "http" => {
                let https = scheme == "https";
                let mut builder = reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .user_agent(concat!("nowconnect-hub/", env!("CARGO_PKG_VERSION")))
                    .redirect(reqwest::redirect::Policy::limited(5))
                    .https_only(https);
                if !https {
                    // Plain http is only allowed to loopback: never through a proxy.
                    builder = builder.no_proxy();
                }
                let client = builder.build().map_err(FetchError::Client)?;
                Ok(Source::Http {
                    client,
                    url: url.to_owned(),
                })
            }
            "file" => file_path(rest)
                .map(Source::File)
                .ok_or_else(|| FetchError::UnsupportedUrl(url.to_owned())),
            _ => Err(FetchError::UnsupportedUrl(url.to_owned())),
        }
    }

    /// Reads the whole document, refusing more than [`MAX_JWKS_BYTES`].
    #[cfg(test)]
    pub(super) async fn fetch(&self) -> Result<String, FetchError> {
        self.fetch_with_max_age().await.map(|(text, _)| text)
    }

    /// Reads the whole document, refusing more than [`MAX_JWKS_BYTES`], with the
    /// `Cache-Control: max-age` of an HTTP response.
    pub(super) async fn fetch_with_max_age(
        &self,
    ) -> Result<(String, Option<Duration>), FetchError> {
        let mut max_age = None;
        let body = match self {
            Source::Http { client, url } => {
                let (body, age) = fetch_http(client, url).await?;
                max_age = age;
                body
            }
            Source::File(path) => {
                let owned = path.clone();
                tokio::task::spawn_blocking(move || read_file(owned))
                    .await
                    .map_err(|join| FetchError::File {
                        path: path.clone(),
                        source: std::io::Error::other(join.to_string()),
                    })??
            }
        };
        let text = String::from_utf8(body).map_err(|_| FetchError::NotUtf8)?;
        Ok((text, max_age))
    }
}

/// The path of a `file://` URL's remainder (`/path` or `localhost/path`), percent-decoded.
fn file_path(rest: &str) -> Option<PathBuf> {
    let path = match rest.get(..9) {
        Some(host) if host.eq_ignore_ascii_case("localhost") => &rest[9..],
        _ => rest,
    };
    if !path.starts_with('/') {
        return None;
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = path.get(i + 1..i + 3)?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded).ok().map(PathBuf::from)
}

/// What `Cache-Control` says about how long a response stays fresh (RFC 9111 §5.2.2):
/// `max-age`, or zero for `no-store` and `no-cache`; `None` when it says neither.
pub(super) fn cache_max_age(value: &str) -> Option<Duration> {
    let mut age = None;
    for directive in value.split(',') {
        let directive = directive.trim();
        let (name, arg) = match directive.split_once('=') {
            Some((name, arg)) => (name.trim(), Some(arg.trim().trim_matches('"'))),
            None => (directive, None),
        };
        if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        if name.eq_ignore_ascii_case("max-age")
            && let Some(seconds) = arg.and_then(|a| a.parse::<u64>().ok())
        {
            age = Some(Duration::from_secs(seconds));
        }
    }
    age
}

async fn fetch_http(
    client: &reqwest::Client,
    url: &str,
) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
    let mut response = client
        .get(url)
        .header(
            reqwest::header::ACCEPT,
            "application/jwk-set+json, application/json",
        )
        .send()
        .await
        .map_err(FetchError::Request)?;
    let status = response.status();
    if !status.is_success() {
        return Err(FetchError::Status(status.as_u16()));
    }
    let max_age = response
        .headers()
        .get_all(reqwest::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(cache_max_age)
        .min();
    let too_large = FetchError::TooLarge {
        limit: MAX_JWKS_BYTES,
    };
    if response
        .content_length()
        .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
    {
        return Err(too_large);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(FetchError::Request)? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, max_age))
}

fn read_file(path: PathBuf) -> Result<Vec<u8>, FetchError> {
    let fail = |source| FetchError::File {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::open(&path).map_err(fail)?;
    let mut body = Vec::new();
    // One byte past the cap tells an oversized file from one exactly at it.
    file.take(MAX_JWKS_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(fail)?;
    if body.len() > MAX_JWKS_BYTES {
        return Err(FetchError::TooLarge {
            limit: MAX_JWKS_BYTES,
        });
    }
    Ok(body)
}
