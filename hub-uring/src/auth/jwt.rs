//! Validating the credentials of an agent's upgrade request.
//!
//! [`Authenticator::authenticate`] takes the whole request. The token checks, in order: the
//! `Authorization` header holds `Bearer <JWT>` or `DPoP <JWT>`; the token is at most
//! [`MAX_TOKEN_BYTES`] and a three-part JWS; its header names an algorithm of
//! [`SUPPORTED_ALGORITHMS`](super::SUPPORTED_ALGORITHMS) and no critical extension; a key of
//! the JWKS matches its `kid` and algorithm; the signature verifies; then the claims: `exp`
//! (required), `nbf` (when present), `aud`, `iss` (when configured) and `agent_id`. Then the
//! token's binding (`cnf`): with the Bearer scheme a certificate-bound token needs that
//! certificate and a DPoP-bound one is refused; with the DPoP scheme the `DPoP` proof
//! ([`dpop`](super::dpop)) must be valid, made with the key of `cnf.jkt` and for this token.
//!
//! Time is passed in, never read: `exp` and `nbf` are checked against the caller's `now`
//! with [`LEEWAY_SECS`] of tolerance for clock skew.

use std::fmt;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use nowconnect_core::config::{SecurityConfig, TunnelConfig};
use serde_json::{Map, Value};

use super::dpop::{
    Admission, DpopFailure, Proof, REPLAY_CACHE_CAPACITY, ReplayCache, normalize_htu, request_htu,
};
use super::jwks::{JwksStore, KeyLookup, KeySet, supported_algorithm};

/// The longest token accepted, in bytes; longer ones are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Tolerated clock skew for `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 60;

/// The longest `agent_id` accepted, in characters.
const MAX_AGENT_ID_LEN: usize = 128;

/// Room for the scheme and spaces around the token in the header value.
const MAX_HEADER_OVERHEAD: usize = 64;

/// How much of an attacker-chosen string (`kid`, `alg`) a failure keeps for the log.
const MAX_SHOWN_LEN: usize = 64;

/// Who an accepted token says the agent is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The `agent_id` claim: 1 to 128 characters of `[A-Za-z0-9._:@-]`. HELLO must carry
    /// the same value.
    pub agent_id: String,
    /// The `exp` claim, seconds since the epoch: the session ends when the token expires.
    pub exp: u64,
    /// The `jti` claim, if present.
    pub jti: Option<String>,
    /// The `sub` claim, if present.
    pub subject: Option<String>,
    /// The `iss` claim, if present.
    pub issuer: Option<String>,
    /// The `client_id` claim (RFC 9068), or `azp` when there is no `client_id`.
    pub client_id: Option<String>,
    /// The granted scopes: the space-separated `scope` claim, or else the `scp` claim (an
    /// array of strings, or a space-separated string).
    pub scopes: Vec<String>,
    /// What the token is bound to (`cnf`, RFC 7800).
    pub binding: Binding,
}

/// The key a token is bound to by its `cnf` claim (RFC 7800 §3.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Binding {
    /// No `cnf`: a bearer token.
    #[default]
    None,
    /// `cnf.x5t#S256`: base64url SHA-256 of the agent's TLS client certificate (RFC 8705 §3.1).
    Certificate(String),
    /// `cnf.jkt`: the JWK thumbprint of the agent's DPoP key (RFC 9449 §6.1).
    DpopKey(String),
}

/// Why a token's binding does not hold on this connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BindingFailure {
    /// A certificate-bound token on a connection without a client certificate.
    #[error("the token is bound to a client certificate (cnf.x5t#S256) and none was presented")]
    NoCertificate,
    /// A certificate-bound token with another certificate than the one presented.
    #[error("the token is bound to another client certificate than the one presented")]
    OtherCertificate,
    /// A token bound to a DPoP key, presented with the Bearer scheme.
    #[error("the token is bound to a DPoP key (cnf.jkt) and was presented as Bearer")]
    DpopAsBearer,
    /// An unbound token where `security.mtls.require_bound_tokens` asks for bound ones.
    #[error("the token is not bound to a client certificate (security.mtls.require_bound_tokens)")]
    Unbound,
}

/// The RFC 8705 §3.1 thumbprint of a DER certificate: base64url SHA-256, unpadded.
pub fn certificate_thumbprint(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der))
}

/// Why a token was refused. [`Display`](fmt::Display) says exactly why, for the log; the
/// agent only sees [`www_authenticate`](Self::www_authenticate). No variant holds the token,
/// and the `kid` and `alg` values kept are truncated and escaped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// The request has no `Authorization` header.
    #[error("no Authorization header")]
    Missing,
    /// The header is not `Bearer <JWT>`, or the token is not a well-formed JWS.
    #[error("malformed authorization: {0}")]
    Malformed(&'static str),
    /// The header or token is longer than [`MAX_TOKEN_BYTES`].
    #[error("token too large: {len} bytes, at most {MAX_TOKEN_BYTES} accepted")]
    TooLarge {
        /// The length seen, in bytes.
        len: usize,
    },
    /// The token's algorithm is not accepted, or not the one of the key its `kid` names.
    #[error("algorithm \"{alg}\" refused: {why}")]
    Algorithm {
        /// The token's `alg`, truncated and escaped.
        alg: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// No key of the JWKS matches the token's `kid`, even after a refresh; or the token
    /// has no `kid` and not exactly one key accepts its algorithm.
    #[error("{}", unknown_kid(.kid.as_deref()))]
    UnknownKid {
        /// The token's `kid`, truncated and escaped.
        kid: Option<String>,
    },
    /// The signature does not verify with the key.
    #[error("signature does not verify")]
    Signature,
    /// `exp` is past (beyond the leeway).
    #[error("token expired at {exp} (now {now}, leeway {LEEWAY_SECS} s)")]
    Expired {
        /// The `exp` claim.
        exp: u64,
        /// The time of the check.
        now: u64,
    },
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not valid before {nbf} (now {now}, leeway {LEEWAY_SECS} s)")]
    NotYetValid {
        /// The `nbf` claim.
        nbf: u64,
        /// The time of the check.
        now: u64,
    },
    /// A registered claim is missing or has the wrong type (`exp` is required).
    #[error("claim {claim}: {problem}")]
    Claim {
        /// The claim's name.
        claim: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// `aud` is missing or does not include the configured audience.
    #[error("audience refused: {0}")]
    Audience(&'static str),
    /// `iss` is missing or differs from the configured issuer.
    #[error("issuer refused: {0}")]
    Issuer(&'static str),
    /// `agent_id` is missing, not a string, empty, too long or has characters outside
    /// `[A-Za-z0-9._:@-]`.
    #[error("agent_id refused: {0}")]
    AgentId(&'static str),
    /// No key set has been loaded yet (the identity provider was never reached).
    #[error("no JWKS loaded yet")]
    JwksUnavailable,
    /// The header names no key (`kid`): every provider this hub serves names its keys, and
    /// guessing one would let a token pick among them.
    #[error("the token's header has no kid")]
    MissingKid,
    /// The header's `typ` says this is not an access token (RFC 8725 §3.11, RFC 9068 §2.1).
    #[error("token type \"{typ}\" refused: {why}")]
    Type {
        /// The `typ` value, truncated and escaped.
        typ: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// `iat` is in the future (beyond the leeway).
    #[error("token issued in the future at {iat} (now {now}, leeway {LEEWAY_SECS} s)")]
    IssuedInFuture {
        /// The `iat` claim.
        iat: u64,
        /// The time of the check.
        now: u64,
    },
    /// The token's `cnf` binding does not hold on this connection.
    #[error("binding refused: {0}")]
    Binding(BindingFailure),
    /// The DPoP proof, or the use of the DPoP scheme, was refused.
    #[error("{0}")]
    Dpop(DpopFailure),
}

impl AuthFailure {
    /// A short, fixed label for the authentication-failures metric.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed(_) => "malformed",
            AuthFailure::TooLarge { .. } => "too_large",
            AuthFailure::Algorithm { .. } => "algorithm",
            AuthFailure::UnknownKid { .. } => "unknown_kid",
            AuthFailure::Signature => "signature",
            AuthFailure::Expired { .. } => "expired",
            AuthFailure::NotYetValid { .. } => "not_yet_valid",
            AuthFailure::Claim { .. } => "claims",
            AuthFailure::Audience(_) => "audience",
            AuthFailure::Issuer(_) => "issuer",
            AuthFailure::AgentId(_) => "agent_id",
            AuthFailure::JwksUnavailable => "jwks_unavailable",
            AuthFailure::MissingKid => "missing_kid",
            AuthFailure::Type { .. } => "typ",
            AuthFailure::IssuedInFuture { .. } => "iat",
            AuthFailure::Binding(
                BindingFailure::NoCertificate | BindingFailure::OtherCertificate,
            ) => "cert_binding",
            AuthFailure::Binding(BindingFailure::DpopAsBearer) => "dpop_binding",
            AuthFailure::Binding(BindingFailure::Unbound) => "unbound_token",
            AuthFailure::Dpop(failure) => failure.reason(),
        }
    }

    /// The `WWW-Authenticate` value of the `401` answer to a request that used the Bearer
    /// scheme: see [`challenge`](Self::challenge).
    pub fn www_authenticate(&self) -> &'static str {
        self.challenge(Scheme::Bearer)
    }

    /// The `WWW-Authenticate` value of the `401` answer, in `scheme`: a bare challenge when
    /// no credentials were sent (RFC 6750 §3.1), `error="invalid_dpop_proof"` for a refused
    /// proof (in the DPoP scheme whatever the request used, RFC 9449 §7.1), and
    /// `error="invalid_token"` for everything else.
    pub fn challenge(&self, scheme: Scheme) -> &'static str {
        match (self, scheme) {
            (AuthFailure::Dpop(failure), _) if !failure.is_token_problem() => {
                r#"DPoP error="invalid_dpop_proof""#
            }
            (AuthFailure::Dpop(_), _) => r#"DPoP error="invalid_token""#,
            (AuthFailure::Missing, Scheme::Bearer) => "Bearer",
            (AuthFailure::Missing, Scheme::Dpop) => "DPoP",
            (_, Scheme::Bearer) => r#"Bearer error="invalid_token""#,
            (_, Scheme::Dpop) => r#"DPoP error="invalid_token""#,
        }
    }
}

/// The authentication scheme of an upgrade request (RFC 6750, RFC 9449).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `Authorization: DPoP <token>` with a `DPoP: <proof>` header.
    Dpop,
}

/// What an upgrade request presents to authenticate. Its `Debug` shows lengths and counts,
/// never a credential.
#[derive(Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The first `Authorization` header's raw value.
    pub authorization: Option<&'a [u8]>,
    /// How many `Authorization` headers were sent.
    pub authorization_count: usize,
    /// The first `DPoP` header's raw value.
    pub dpop: Option<&'a [u8]>,
    /// How many `DPoP` headers were sent.
    pub dpop_count: usize,
    /// The `Host` header, for a proof's `htu` when `tunnel.public_url` is not set.
    pub host: &'a str,
    /// The request path, for a proof's `htu` when `tunnel.public_url` is not set.
    pub path: &'a str,
    /// The DER of the agent's TLS client certificate, if it sent one.
    pub certificate: Option<&'a [u8]>,
}

impl fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("authorization_len", &self.authorization.map(<[u8]>::len))
            .field("authorization_count", &self.authorization_count)
            .field("dpop_len", &self.dpop.map(<[u8]>::len))
            .field("dpop_count", &self.dpop_count)
            .field("host", &self.host)
            .field("path", &self.path)
            .field("certificate", &self.certificate.is_some())
            .finish()
    }
}

/// A refused upgrade: why, and the scheme its challenge is written in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{failure}")]
pub struct Refusal {
    /// Why the request was refused; its [`reason`](AuthFailure::reason) labels the metric.
    pub failure: AuthFailure,
    /// The request's scheme, or the hub's preferred one when the request named none it
    /// knows (DPoP with `security.dpop.required`, Bearer otherwise).
    pub scheme: Scheme,
}

impl Refusal {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        self.failure.reason()
    }

    /// The `WWW-Authenticate` value of the `401` answer.
    pub fn www_authenticate(&self) -> &'static str {
        self.failure.challenge(self.scheme)
    }
}

/// Validates agents' upgrade requests against the JWKS and the configured audience and
/// issuer. Cheap to clone; shared by every shard.
///
/// `verify` runs on any executor: it reads the shared key set and, for an unknown `kid`, only
/// awaits the refresher's answer on a channel.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` when the configuration has none (not validated): every token is refused.
    audience: Option<String>,
    issuer: Option<String>,
    /// `security.mtls.require_bound_tokens`.
    require_bound_tokens: bool,
    /// `security.dpop.required`.
    dpop_required: bool,
    /// `security.require_at_jwt_typ`.
    require_at_jwt_typ: bool,
    /// The normalised `tunnel.public_url`, which a proof's `htu` must name; `None` to use
    /// the request's `Host` and path instead.
    public_htu: Option<String>,
    /// Whether the tunnel listener serves TLS: the scheme of the request's own URI.
    tls: bool,
    /// Proofs accepted within their window, shared by every shard.
    replay: Mutex<ReplayCache>,
    store: JwksStore,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("audience", &self.inner.audience)
            .field("issuer", &self.inner.issuer)
            .field("dpop_required", &self.inner.dpop_required)
            .field("public_htu", &self.inner.public_htu)
            .field("store", &self.inner.store)
            .finish()
    }
}

impl Authenticator {
    /// An authenticator for the `security` section, verifying with the keys of `store`.
    /// From `tunnel` it takes the URI DPoP proofs must name: `public_url` when set, else the
    /// request's `Host` and path with `https` when `tls` is set, `http` otherwise.
    pub fn new(
        security: &SecurityConfig,
        tunnel: &TunnelConfig,
        store: JwksStore,
    ) -> Authenticator {
        let non_empty = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
        Authenticator {
            inner: Arc::new(Inner {
                audience: non_empty(&security.audience),
                issuer: non_empty(&security.issuer),
                require_bound_tokens: security.mtls.require_bound_tokens,
                dpop_required: security.dpop.required,
                require_at_jwt_typ: security.require_at_jwt_typ,
                public_htu: tunnel
                    .public_url
                    .as_ref()
                    .and_then(|url| normalize_htu(url.as_str())),
                tls: tunnel.tls.is_some(),
                replay: Mutex::new(ReplayCache::new(REPLAY_CACHE_CAPACITY)),
                store,
            }),
        }
    }

    /// Authenticates an upgrade request at `now_unix` (seconds since the epoch): the token
    /// (signature and claims), then, with the Bearer scheme, its binding as
    /// [`check_binding`](Self::check_binding) does; with the DPoP scheme, the proof, that it
    /// was made for this token with the key the token is bound to, and that it was not used
    /// before.
    ///
    /// When no key matches the token's `kid`, asks the store for a refresh
    /// ([`JwksStore::refresh_for_unknown_kid`]) and tries once more with the set it
    /// returns.
    ///
    /// More than one `Authorization` header is refused as malformed; with
    /// `security.dpop.required` the Bearer scheme is refused before the token is looked at.
    pub async fn authenticate(
        &self,
        request: &Credentials<'_>,
        now_unix: u64,
    ) -> Result<Identity, Refusal> {
        let preferred = if self.inner.dpop_required {
            Scheme::Dpop
        } else {
            Scheme::Bearer
        };
        let refuse = |failure, scheme| Refusal { failure, scheme };
        if request.authorization_count > 1 {
            let failure = AuthFailure::Malformed("more than one Authorization header");
            return Err(refuse(failure, preferred));
        }
        let (scheme, token) = match credentials(request.authorization) {
            Ok(found) => found,
            Err((scheme, failure)) => return Err(refuse(failure, scheme.unwrap_or(preferred))),
        };
        match scheme {
            Scheme::Bearer if self.inner.dpop_required => Err(refuse(
                AuthFailure::Dpop(DpopFailure::Required),
                Scheme::Dpop,
            )),
            Scheme::Bearer => {
                let identity = self.verify_token(token, now_unix).await;
                identity
                    .and_then(|identity| {
                        self.check_binding(&identity, request.certificate)
                            .map(|()| identity)
                    })
                    .map_err(|failure| refuse(failure, preferred))
            }
            Scheme::Dpop => self
                .verify_dpop(request, token, now_unix)
                .await
                .map_err(|failure| refuse(failure, Scheme::Dpop)),
        }
    }

    /// The DPoP scheme: exactly one proof, valid on its own, then the token, then what ties
    /// the two together, and last the replay check, so that only proofs that passed
    /// everything take room in the replay cache.
    async fn verify_dpop(
        &self,
        request: &Credentials<'_>,
        token: &str,
        now: u64,
    ) -> Result<Identity, AuthFailure> {
        let dpop = |failure| AuthFailure::Dpop(failure);
        let raw = match (request.dpop, request.dpop_count) {
            (Some(raw), 1) => raw,
            (_, count) => return Err(dpop(DpopFailure::Headers(count))),
        };
        let expected_htu = match &self.inner.public_htu {
            Some(htu) => htu.clone(),
            None => request_htu(self.inner.tls, request.host, request.path)
                .ok_or(dpop(DpopFailure::Htu("the request's Host is not usable")))?,
        };
        let proof = Proof::parse(raw, &expected_htu, now).map_err(dpop)?;
        let identity = self.verify_token(token, now).await?;
        match &identity.binding {
            Binding::DpopKey(jkt) if *jkt == proof.thumbprint => {}
            Binding::DpopKey(_) => return Err(dpop(DpopFailure::Jkt)),
            Binding::None | Binding::Certificate(_) => return Err(dpop(DpopFailure::Unbound)),
        }
        proof.check_ath(token).map_err(dpop)?;
        if self.inner.require_bound_tokens {
            // That setting asks for certificate-bound tokens; a DPoP-bound one is not.
            return Err(AuthFailure::Binding(BindingFailure::Unbound));
        }
        // A poisoned lock means a panic mid-admission; the cache itself is still consistent.
        let mut replay = self
            .inner
            .replay
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match replay.admit(&proof.thumbprint, &proof.jti, proof.acceptable_until(), now) {
            Admission::Fresh => Ok(identity),
            Admission::Replayed => Err(dpop(DpopFailure::Replay)),
            Admission::Full => Err(dpop(DpopFailure::ReplayCacheFull)),
        }
    }

    /// The shared replay cache, for tests that fill or inspect it.
    #[cfg(test)]
    pub(super) fn replay_cache_for_tests(&self) -> std::sync::MutexGuard<'_, ReplayCache> {
        self.inner
            .replay
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Validates only the token of the raw `Authorization` header value (`None` when absent)
    /// at `now_unix`, under either scheme, leaving out its binding and any DPoP proof; for
    /// tests of the token checks. Requests go through [`authenticate`](Self::authenticate).
    #[cfg(test)]
    pub(super) async fn verify(
        &self,
        authorization: Option<&[u8]>,
        now_unix: u64,
    ) -> Result<Identity, AuthFailure> {
        let (_, token) = credentials(authorization).map_err(|(_, failure)| failure)?;
        self.verify_token(token, now_unix).await
    }

    /// The token checks: shape, signature with a key of the JWKS (refreshed once for an
    /// unknown `kid`), then the claims.
    async fn verify_token(&self, token: &str, now_unix: u64) -> Result<Identity, AuthFailure> {
        let parsed = ParsedToken::parse(token)?;
        check_typ(parsed.typ.as_deref(), self.inner.require_at_jwt_typ)?;
        let store = &self.inner.store;
        let first = self.check(&parsed, &store.current(), now_unix);
        match first {
            Err(AuthFailure::UnknownKid { .. }) => {
                let keys = store.refresh_for_unknown_kid().await;
                if !store.is_loaded() {
                    return Err(AuthFailure::JwksUnavailable);
                }
                self.check(&parsed, &keys, now_unix)
            }
            other => other,
        }
    }

    /// Checks that a token whose signature and claims passed may be used on this
    /// connection: a certificate-bound token needs the very certificate it names
    /// (`certificate` is the DER of the agent's TLS client certificate, if it sent one), a
    /// DPoP-bound token is refused with the Bearer scheme, and with
    /// `security.mtls.require_bound_tokens` an unbound token is refused.
    pub fn check_binding(
        &self,
        identity: &Identity,
        certificate: Option<&[u8]>,
    ) -> Result<(), AuthFailure> {
        let fail = |why| Err(AuthFailure::Binding(why));
        match &identity.binding {
            Binding::DpopKey(_) => fail(BindingFailure::DpopAsBearer),
            Binding::Certificate(expected) => match certificate {
                None => fail(BindingFailure::NoCertificate),
                Some(der) if certificate_thumbprint(der) == *expected => Ok(()),
                Some(_) => fail(BindingFailure::OtherCertificate),
            },
            Binding::None if self.inner.require_bound_tokens => fail(BindingFailure::Unbound),
            Binding::None => Ok(()),
        }
    }

    /// Verifies the signature with a key of `keys`, then the claims.
    fn check(
        &self,
        token: &ParsedToken<'_>,
        keys: &KeySet,
        now: u64,
    ) -> Result<Identity, AuthFailure> {
        let key = match keys.lookup(token.kid.as_deref(), token.alg) {
            KeyLookup::Found(key) => key,
            KeyLookup::UnknownKid => {
                return Err(AuthFailure::UnknownKid {
                    kid: token.kid.as_deref().map(shown),
                });
            }
            KeyLookup::WrongAlgorithm => {
                return Err(AuthFailure::Algorithm {
                    alg: format!("{:?}", token.alg),
                    why: "the key named by kid does not accept it",
                });
            }
        };
        // An error here is a signature that is not base64url, or a key the crypto backend
        // rejects: either way the token cannot be trusted.
        let verified = jsonwebtoken::crypto::verify(
            token.signature,
            token.signing_input.as_bytes(),
            key,
            token.alg,
        );
        if !matches!(verified, Ok(true)) {
            return Err(AuthFailure::Signature);
        }
        self.claims(&token.claims()?, now)
    }

    /// Checks the claims of a token whose signature verified.
    fn claims(&self, claims: &Map<String, Value>, now: u64) -> Result<Identity, AuthFailure> {
        let exp = numeric(claims, "exp")?.ok_or(AuthFailure::Claim {
            claim: "exp",
            problem: "is missing",
        })?;
        // RFC 7519 §4.1.4: not accepted on or after exp.
        if now >= exp.saturating_add(LEEWAY_SECS) {
            return Err(AuthFailure::Expired { exp, now });
        }
        if let Some(nbf) = numeric(claims, "nbf")?
            && nbf > now.saturating_add(LEEWAY_SECS)
        {
            return Err(AuthFailure::NotYetValid { nbf, now });
        }
        if let Some(iat) = numeric(claims, "iat")?
            && iat > now.saturating_add(LEEWAY_SECS)
        {
            return Err(AuthFailure::IssuedInFuture { iat, now });
        }
        self.check_audience(claims.get("aud"))?;
        if let Some(expected) = &self.inner.issuer {
            match claims.get("iss") {
                None => return Err(AuthFailure::Issuer("the token has no iss")),
                Some(Value::String(iss)) if iss == expected => {}
                Some(Value::String(_)) => {
                    return Err(AuthFailure::Issuer(
                        "iss differs from the configured issuer",
                    ));
                }
                Some(_) => return Err(AuthFailure::Issuer("iss is not a string")),
            }
        }
        let agent_id = agent_id(claims.get("agent_id"))?;
        let string = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        Ok(Identity {
            agent_id,
            exp,
            jti: string("jti"),
            subject: string("sub"),
            issuer: string("iss"),
            client_id: string("client_id").or_else(|| string("azp")),
            scopes: scopes(claims),
            binding: binding(claims.get("cnf"))?,
        })
    }

    /// `aud` must be the configured audience, or an array holding it (RFC 7519 §4.1.3).
    fn check_audience(&self, aud: Option<&Value>) -> Result<(), AuthFailure> {
        let Some(expected) = &self.inner.audience else {
            return Err(AuthFailure::Audience("no audience is configured"));
        };
        let matches = match aud {
            None => return Err(AuthFailure::Audience("the token has no aud")),
            Some(Value::String(aud)) => aud == expected,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(expected)),
            Some(_) => {
                return Err(AuthFailure::Audience(
                    "aud is neither a string nor an array",
                ));
            }
        };
        if matches {
            Ok(())
        } else {
            Err(AuthFailure::Audience(
                "aud does not include the configured audience",
            ))
        }
    }
}

/// Takes the scheme and token out of `Bearer <token>` (RFC 6750 §2.1) or `DPoP <token>`
/// (RFC 9449 §7.1); the scheme is case-insensitive (RFC 9110 §11.1). The length is checked
/// before anything else. A failure carries the scheme when one was recognised, for the
/// challenge.
fn credentials(
    authorization: Option<&[u8]>,
) -> Result<(Scheme, &str), (Option<Scheme>, AuthFailure)> {
    let value = authorization.ok_or((None, AuthFailure::Missing))?;
    if value.len() > MAX_TOKEN_BYTES + MAX_HEADER_OVERHEAD {
        return Err((None, AuthFailure::TooLarge { len: value.len() }));
    }
    let value = value.trim_ascii();
    if value.is_empty() {
        let failure = AuthFailure::Malformed("the Authorization header is empty");
        return Err((None, failure));
    }
    let (scheme, token) = match value.iter().position(|b| *b == b' ') {
        Some(space) => (&value[..space], value[space..].trim_ascii_start()),
        None => (value, &[][..]),
    };
    let scheme = if scheme.eq_ignore_ascii_case(b"Bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case(b"DPoP") {
        Scheme::Dpop
    } else {
        let failure = AuthFailure::Malformed("the scheme is neither Bearer nor DPoP");
        return Err((None, failure));
    };
    let fail = |failure| Err((Some(scheme), failure));
    if token.is_empty() {
        return fail(AuthFailure::Malformed("no token after the scheme"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return fail(AuthFailure::TooLarge { len: token.len() });
    }
    if !token
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return fail(AuthFailure::Malformed(
            "the token holds characters other than base64url and dots",
        ));
    }
    // Only ASCII remains.
    match std::str::from_utf8(token) {
        Ok(token) => Ok((scheme, token)),
        Err(_) => fail(AuthFailure::Malformed("the token is not ASCII")),
    }
}

/// A JWS in compact form, split, with its header decoded but nothing trusted yet.
struct ParsedToken<'a> {
    /// `header.payload`, what the signature covers.
    signing_input: &'a str,
    payload: &'a str,
    signature: &'a str,
    alg: Algorithm,
    kid: Option<String>,
    typ: Option<String>,
}

impl<'a> ParsedToken<'a> {
    fn parse(token: &'a str) -> Result<ParsedToken<'a>, AuthFailure> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthFailure::Malformed(
                "the token does not have three parts",
            ));
        };
        match parts.count() {
            0 => {}
            2 => {
                return Err(AuthFailure::Malformed(
                    "encrypted tokens (JWE) are not accepted",
                ));
            }
            _ => {
                return Err(AuthFailure::Malformed(
                    "the token does not have three parts",
                ));
            }
        }
        if header.is_empty() || payload.is_empty() {
            return Err(AuthFailure::Malformed("the token has an empty part"));
        }
        let header_json = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| AuthFailure::Malformed("the header is not base64url"))?;
        let fields: Map<String, Value> = serde_json::from_slice(&header_json)
            .map_err(|_| AuthFailure::Malformed("the header is not a JSON object"))?;
        let alg_name = match fields.get("alg") {
            Some(Value::String(alg)) => alg.as_str(),
            _ => return Err(AuthFailure::Malformed("the header has no alg")),
        };
        let Some(alg) = supported_algorithm(alg_name) else {
            return Err(AuthFailure::Algorithm {
                alg: shown(alg_name),
                why: "not an accepted asymmetric algorithm",
            });
        };
        let kid = match fields.get("kid") {
            None => return Err(AuthFailure::MissingKid),
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(AuthFailure::Malformed("the header's kid is not a string")),
        };
        let typ = match fields.get("typ") {
            None => None,
            Some(Value::String(typ)) => Some(typ.clone()),
            Some(_) => return Err(AuthFailure::Malformed("the header's typ is not a string")),
        };
        // RFC 7515 §4.1.11: extensions listed in crit must be understood; none are here.
        if fields.contains_key("crit") {
            return Err(AuthFailure::Malformed(
                "the header lists critical extensions",
            ));
        }
        if signature.is_empty() {
            return Err(AuthFailure::Signature);
        }
        Ok(ParsedToken {
            signing_input: &token[..header.len() + 1 + payload.len()],
            payload,
            signature,
            alg,
            kid,
            typ,
        })
    }

    /// The claims object; only called once the signature verified.
    fn claims(&self) -> Result<Map<String, Value>, AuthFailure> {
        let json = URL_SAFE_NO_PAD
            .decode(self.payload)
            .map_err(|_| AuthFailure::Malformed("the payload is not base64url"))?;
        serde_json::from_slice(&json)
            .map_err(|_| AuthFailure::Malformed("the payload is not a JSON object"))
    }
}

/// The header's `typ` (RFC 7515 §4.1.9, compared case-insensitively, an `application/`
/// prefix allowed): an access token (`at+jwt`, RFC 9068 §2.1), or — unless `strict` — plain
/// `JWT` or none, since Entra ID and others send those. Any other type (a DPoP proof, an ID
/// token, a logout token) is not an access token and is refused (RFC 8725 §3.11).
fn check_typ(typ: Option<&str>, strict: bool) -> Result<(), AuthFailure> {
    let refuse = |typ: &str, why| {
        Err(AuthFailure::Type {
            typ: shown(typ),
            why,
        })
    };
    let Some(typ) = typ else {
        return if strict {
            refuse(
                "",
                "an at+jwt type is required (security.require_at_jwt_typ)",
            )
        } else {
            Ok(())
        };
    };
    let lower = typ.to_ascii_lowercase();
    let bare = lower.strip_prefix("application/").unwrap_or(&lower);
    match bare {
        "at+jwt" => Ok(()),
        "jwt" if !strict => Ok(()),
        "jwt" => refuse(
            typ,
            "an at+jwt type is required (security.require_at_jwt_typ)",
        ),
        _ => refuse(typ, "not an access token type"),
    }
}

/// The log text of [`AuthFailure::UnknownKid`].
fn unknown_kid(kid: Option<&str>) -> String {
    match kid {
        Some(kid) => format!("no key with kid \"{kid}\" in the JWKS"),
        None => "the token has no kid and not exactly one key of the JWKS accepts its algorithm"
            .to_owned(),
    }
}

/// A NumericDate claim (RFC 7519 §2): a non-negative number of seconds; fractions are
/// dropped. `None` when absent.
pub(super) fn numeric(
    claims: &Map<String, Value>,
    claim: &'static str,
) -> Result<Option<u64>, AuthFailure> {
    let invalid = AuthFailure::Claim {
        claim,
        problem: "is not a non-negative number",
    };
    match claims.get(claim) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(seconds), _) => Ok(Some(seconds)),
            // Saturates at u64::MAX for huge values, which is fine for a date.
            (None, Some(seconds)) if seconds >= 0.0 && seconds.is_finite() => {
                Ok(Some(seconds as u64))
            }
            _ => Err(invalid),
        },
        Some(_) => Err(invalid),
    }
}

/// The `agent_id` claim: a string of 1 to 128 characters from `[A-Za-z0-9._:@-]`.
fn agent_id(claim: Option<&Value>) -> Result<String, AuthFailure> {
    let id = match claim {
        None => return Err(AuthFailure::AgentId("the token has no agent_id")),
        Some(Value::String(id)) => id,
        Some(_) => return Err(AuthFailure::AgentId("agent_id is not a string")),
    };
    if id.is_empty() {
        return Err(AuthFailure::AgentId("agent_id is empty"));
    }
    if id.len() > MAX_AGENT_ID_LEN {
        return Err(AuthFailure::AgentId(
            "agent_id is longer than 128 characters",
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
    {
        return Err(AuthFailure::AgentId(
            "agent_id has characters outside [A-Za-z0-9._:@-]",
        ));
    }
    Ok(id.clone())
}

/// Scopes from `scope` (space-separated, RFC 8693 §4.2), or else `scp` (an array, or a
/// space-separated string). Entries that are not strings are ignored.
fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    let split = |s: &str| s.split_ascii_whitespace().map(str::to_owned).collect();
    match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(scope)), _) => split(scope),
        (_, Some(Value::String(scp))) => split(scp),
        (_, Some(Value::Array(scp))) => scp
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// The confirmation method of `cnf` (RFC 7800 §3.1). A `cnf` naming no method this hub can
/// check (only `jwk`, `jwe`, `kid`, …) is refused: accepting it as a bearer token would void
/// the binding the issuer asked for.
fn binding(cnf: Option<&Value>) -> Result<Binding, AuthFailure> {
    let fail = |problem| {
        Err(AuthFailure::Claim {
            claim: "cnf",
            problem,
        })
    };
    let Some(cnf) = cnf else {
        return Ok(Binding::None);
    };
    let Value::Object(cnf) = cnf else {
        return fail("is not an object");
    };
    // A SHA-256 thumbprint is 43 base64url characters; allow some slack, refuse junk.
    let thumbprint = |name: &str| match cnf.get(name) {
        None => Ok(None),
        Some(Value::String(t)) if (1..=128).contains(&t.len()) => Ok(Some(t.clone())),
        Some(_) => Err(AuthFailure::Claim {
            claim: "cnf",
            problem: "a thumbprint is not a string of 1 to 128 characters",
        }),
    };
    match (thumbprint("x5t#S256")?, thumbprint("jkt")?) {
        (Some(_), Some(_)) => fail("binds both a certificate and a DPoP key"),
        (Some(cert), None) => Ok(Binding::Certificate(cert)),
        (None, Some(key)) => Ok(Binding::DpopKey(key)),
        (None, None) => fail("names no confirmation method the hub checks (x5t#S256 or jkt)"),
    }
}

/// An attacker-chosen string made safe for a log line: at most 64 characters, escaped.
fn shown(text: &str) -> String {
    text.chars()
        .take(MAX_SHOWN_LEN)
        .flat_map(char::escape_debug)
        .collect()
}
