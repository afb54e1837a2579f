//! DPoP proofs (RFC 9449): the `DPoP` header that shows the agent holds the private key its
//! token is bound to.
//!
//! [`Proof::parse`] checks a proof on its own, cheapest checks first: its size, its shape
//! (a compact JWS of three parts), the header (`typ`, `alg`, a public `jwk`), the signature
//! with that `jwk`, then the claims `htm`, `htu`, `iat` and `jti` (RFC 9449 §4.3, checks 1
//! to 11). What ties it to the token, `ath` and the key thumbprint against `cnf.jkt`
//! (checks 12 and §6.1), and the replay check are left to the
//! [`Authenticator`](super::Authenticator), which has verified the token by then.
//!
//! [`ReplayCache`] remembers every accepted proof for as long as its `iat` keeps it
//! acceptable, so a captured proof cannot be sent twice to this hub.
//!
//! Nothing of a proof is ever logged or kept in a failure: [`DpopFailure`] says which check
//! failed and, at most, which fixed rule it broke.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::jwks::{public_key, supported_algorithm};
use super::jwt::numeric;

/// The longest `DPoP` header accepted, in bytes; longer ones are refused before any
/// decoding. An ES256 or EdDSA proof takes about 600 bytes, one with an RSA 4096 key about
/// 2.2 KiB.
pub const MAX_PROOF_BYTES: usize = 4 * 1024;

/// How old a proof's `iat` may be, in seconds. The agent makes a proof just before it
/// sends it, so its age is the connection set-up time plus the difference between the two
/// clocks; a minute covers the clock skew tolerated for tokens as well.
pub const PROOF_MAX_AGE_SECS: u64 = 60;

/// How far ahead of the hub's clock a proof's `iat` may be, in seconds. Kept short: a proof
/// dated in the future could have been made ahead of time, by whoever had the key for a
/// moment, and used later (RFC 9449 §11.2).
pub const PROOF_MAX_AHEAD_SECS: u64 = 5;

/// The longest `jti` accepted, in characters.
pub const MAX_JTI_LEN: usize = 128;

/// How many accepted proofs the replay cache holds at most. Entries leave it once their
/// `iat` is older than [`PROOF_MAX_AGE_SECS`]; with the cache full of live entries, new
/// proofs are refused until some expire. At about 100 bytes an entry this is at most a few
/// MiB, and it only fills with proofs that passed every other check, each with a valid token.
pub const REPLAY_CACHE_CAPACITY: usize = 65_536;

/// The HTTP method of the tunnel's upgrade request.
const UPGRADE_METHOD: &str = "GET";

/// JWK members that belong to private or symmetric keys (RFC 7518 §6.2.2, §6.3.2, §6.4.1).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Why a DPoP proof, or the use of the DPoP scheme, was refused. Each variant has its own
/// metric reason ([`reason`](Self::reason)); none holds any part of the proof or token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DpopFailure {
    /// The DPoP scheme without exactly one `DPoP` header (RFC 9449 §4.3, check 1).
    #[error("the DPoP scheme needs exactly one DPoP header; the request has {0}")]
    Headers(usize),
    /// The `DPoP` header is longer than [`MAX_PROOF_BYTES`].
    #[error("DPoP proof too large: {0} bytes, at most {MAX_PROOF_BYTES} accepted")]
    TooLarge(usize),
    /// The proof is not a JWS of three base64url parts with JSON header and claims (check 2).
    #[error("malformed DPoP proof: {0}")]
    Malformed(&'static str),
    /// The header's `typ` is not `dpop+jwt` (check 4).
    #[error("DPoP proof typ is not dpop+jwt")]
    Typ,
    /// The header's `alg` is missing, not an accepted asymmetric algorithm, or not one the
    /// `jwk` can verify (check 5).
    #[error("DPoP proof alg refused: {0}")]
    Alg(&'static str),
    /// The header's `jwk` is missing, holds a private or symmetric key, or is not a usable
    /// public key (checks 6 and 7).
    #[error("DPoP proof jwk refused: {0}")]
    Key(&'static str),
    /// The signature does not verify with the header's `jwk` (check 6).
    #[error("DPoP proof signature does not verify with its jwk")]
    Signature,
    /// `htm` is missing or not `GET` (check 8).
    #[error("DPoP proof htm refused: {0}")]
    Htm(&'static str),
    /// `htu` is missing or names another URI than the tunnel's (check 9).
    #[error("DPoP proof htu refused: {0}")]
    Htu(&'static str),
    /// `iat` is missing, or outside the accepted window around the hub's clock (check 11).
    #[error("DPoP proof iat refused: {0}")]
    Iat(&'static str),
    /// `jti` is missing, empty or longer than [`MAX_JTI_LEN`] (check 3).
    #[error("DPoP proof jti refused: {0}")]
    Jti(&'static str),
    /// This proof (the same key and `jti`) was already accepted (§11.1).
    #[error("DPoP proof replayed: its key and jti were already used")]
    Replay,
    /// The replay cache is full of proofs still inside their window.
    #[error(
        "DPoP replay cache full ({REPLAY_CACHE_CAPACITY} live proofs); refusing new proofs until some expire"
    )]
    ReplayCacheFull,
    /// `ath` is missing or is not the hash of the token presented with it (check 12).
    #[error("DPoP proof ath refused: {0}")]
    Ath(&'static str),
    /// The proof's key is not the one the token is bound to by `cnf.jkt` (§6.1, check 12).
    #[error("the DPoP proof's key is not the key the token is bound to (cnf.jkt)")]
    Jkt,
    /// The DPoP scheme with a token that is not bound to a DPoP key: the proof binds nothing.
    #[error("the token has no cnf.jkt and was presented with the DPoP scheme")]
    Unbound,
    /// A request without a DPoP-bound token and proof, with `security.dpop.required`.
    #[error("a DPoP-bound token and proof are required (security.dpop.required)")]
    Required,
}

impl DpopFailure {
    /// A short, fixed label for the authentication-failures metric.
    pub fn reason(&self) -> &'static str {
        match self {
            DpopFailure::Headers(_) => "dpop_headers",
            DpopFailure::TooLarge(_) => "dpop_too_large",
            DpopFailure::Malformed(_) => "dpop_malformed",
            DpopFailure::Typ => "dpop_typ",
            DpopFailure::Alg(_) => "dpop_alg",
            DpopFailure::Key(_) => "dpop_key",
            DpopFailure::Signature => "dpop_signature",
            DpopFailure::Htm(_) => "dpop_htm",
            DpopFailure::Htu(_) => "dpop_htu",
            DpopFailure::Iat(_) => "dpop_iat",
            DpopFailure::Jti(_) => "dpop_jti",
            DpopFailure::Replay => "dpop_replay",
            DpopFailure::ReplayCacheFull => "dpop_replay_cache_full",
            DpopFailure::Ath(_) => "dpop_ath",
            DpopFailure::Jkt => "dpop_jkt",
            DpopFailure::Unbound => "dpop_unbound",
            DpopFailure::Required => "dpop_required",
        }
    }

    /// Whether the token is at fault rather than the proof: the answer is then
    /// `invalid_token`, otherwise `invalid_dpop_proof` (RFC 9449 §7.1).
    pub fn is_token_problem(&self) -> bool {
        matches!(self, DpopFailure::Unbound | DpopFailure::Required)
    }
}

/// A proof whose shape, header, signature and own claims passed, not yet tied to a token.
#[derive(Debug)]
pub(super) struct Proof {
    /// The RFC 7638 SHA-256 thumbprint of the proof's `jwk`, base64url.
    pub(super) thumbprint: String,
    /// The `jti` claim.
    pub(super) jti: String,
    /// The `iat` claim, seconds since the epoch.
    pub(super) iat: u64,
    /// The `ath` claim, if present.
    ath: Option<String>,
}

impl Proof {
    /// Checks the raw `DPoP` header value: size, shape, header, signature, then `htm`,
    /// `htu` against `expected_htu` (already normalised, see [`normalize_htu`]), `iat`
    /// against `now` and `jti`.
    pub(super) fn parse(raw: &[u8], expected_htu: &str, now: u64) -> Result<Proof, DpopFailure> {
        if raw.len() > MAX_PROOF_BYTES {
            return Err(DpopFailure::TooLarge(raw.len()));
        }
        let raw = raw.trim_ascii();
        if !raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(DpopFailure::Malformed(
                "it holds characters other than base64url and dots",
            ));
        }
        // Only ASCII remains.
        let text = std::str::from_utf8(raw)
            .map_err(|_| DpopFailure::Malformed("the proof is not ASCII"))?;
        let mut parts = text.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(DpopFailure::Malformed("it does not have three parts"));
        };
        if header.is_empty() || payload.is_empty() || signature.is_empty() {
            return Err(DpopFailure::Malformed("it has an empty part"));
        }
        let header_fields = json_object(header).ok_or(DpopFailure::Malformed(
            "the header is not a base64url JSON object",
        ))?;
        match header_fields.get("typ") {
            Some(Value::String(typ)) if typ.eq_ignore_ascii_case("dpop+jwt") => {}
            _ => return Err(DpopFailure::Typ),
        }
        let alg = match header_fields.get("alg") {
            Some(Value::String(name)) => supported_algorithm(name)
                .ok_or(DpopFailure::Alg("not an accepted asymmetric algorithm"))?,
            _ => return Err(DpopFailure::Alg("the header has no alg")),
        };
        // RFC 7515 §4.1.11: extensions listed in crit must be understood; none are here.
        if header_fields.contains_key("crit") {
            return Err(DpopFailure::Malformed(
                "the header lists critical extensions",
            ));
        }
        let jwk = match header_fields.get("jwk") {
            Some(Value::Object(jwk)) => jwk,
            Some(_) => return Err(DpopFailure::Key("jwk is not an object")),
            None => return Err(DpopFailure::Key("the header has no jwk")),
        };
        if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
            return Err(DpopFailure::Key("it holds a private or symmetric key"));
        }
        let (key, algorithms) = public_key(jwk).map_err(DpopFailure::Key)?;
        if !algorithms.contains(&alg) {
            return Err(DpopFailure::Alg("the jwk's key type does not use it"));
        }
        let signing_input = &text[..header.len() + 1 + payload.len()];
        // An error is a signature that is not base64url or a key the backend rejects: either
        // way nothing was proved.
        let verified = jsonwebtoken::crypto::verify(signature, signing_input.as_bytes(), &key, alg);
        if !matches!(verified, Ok(true)) {
            return Err(DpopFailure::Signature);
        }
        let thumbprint = thumbprint(jwk).map_err(DpopFailure::Key)?;

        let claims = json_object(payload).ok_or(DpopFailure::Malformed(
            "the claims are not a base64url JSON object",
        ))?;
        match claims.get("htm") {
            Some(Value::String(htm)) if htm == UPGRADE_METHOD => {}
            Some(Value::String(_)) => return Err(DpopFailure::Htm("not GET")),
            _ => return Err(DpopFailure::Htm("missing or not a string")),
        }
        match claims.get("htu") {
            Some(Value::String(htu)) => match normalize_htu(htu) {
                Some(htu) if htu == expected_htu => {}
                Some(_) => return Err(DpopFailure::Htu("another URI than the tunnel's")),
                None => return Err(DpopFailure::Htu("not an http or https URI")),
            },
            _ => return Err(DpopFailure::Htu("missing or not a string")),
        }
        let iat = numeric(&claims, "iat")
            .map_err(|_| DpopFailure::Iat("not a non-negative number"))?
            .ok_or(DpopFailure::Iat("missing"))?;
        if iat.saturating_add(PROOF_MAX_AGE_SECS) < now {
            return Err(DpopFailure::Iat("older than the accepted window"));
        }
        if iat > now.saturating_add(PROOF_MAX_AHEAD_SECS) {
            return Err(DpopFailure::Iat("in the future beyond the accepted skew"));
        }
        let jti = match claims.get("jti") {
            Some(Value::String(jti)) if jti.is_empty() => return Err(DpopFailure::Jti("empty")),
            Some(Value::String(jti)) if jti.chars().count() > MAX_JTI_LEN => {
                return Err(DpopFailure::Jti("longer than 128 characters"));
            }
            Some(Value::String(jti)) => jti.clone(),
            _ => return Err(DpopFailure::Jti("missing or not a string")),
        };
        let ath = match claims.get("ath") {
            None => None,
            Some(Value::String(ath)) => Some(ath.clone()),
            Some(_) => return Err(DpopFailure::Ath("not a string")),
        };
        Ok(Proof {
            thumbprint,
            jti,
            iat,
            ath,
        })
    }

    /// Checks `ath` against the access token presented with the proof (RFC 9449 §4.3,
    /// check 12): base64url of its SHA-256.
    pub(super) fn check_ath(&self, token: &str) -> Result<(), DpopFailure> {
        let Some(ath) = &self.ath else {
            return Err(DpopFailure::Ath("missing"));
        };
        if *ath == access_token_hash(token) {
            Ok(())
        } else {
            Err(DpopFailure::Ath("not the hash of this token"))
        }
    }

    /// The last time, in seconds since the epoch, at which this proof is still accepted.
    pub(super) fn acceptable_until(&self) -> u64 {
        self.iat.saturating_add(PROOF_MAX_AGE_SECS)
    }
}

/// The `ath` value for `token`: base64url of the SHA-256 of its ASCII bytes (RFC 9449 §4.2).
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        token.as_bytes(),
    ))
}

/// The RFC 7638 thumbprint of a public JWK: base64url SHA-256 of the JSON object of its
/// required members, in lexicographic order, without white space. The members were checked
/// by `public_key`; they are written through the JSON encoder all the same.
pub fn thumbprint(jwk: &Map<String, Value>) -> Result<String, &'static str> {
    let member = |name: &str| match jwk.get(name) {
        Some(value @ Value::String(_)) => Ok(value.to_string()),
        _ => Err("a key parameter is missing"),
    };
    let canonical = match jwk.get("kty").and_then(Value::as_str) {
        Some("RSA") => format!(
            r#"{{"e":{},"kty":"RSA","n":{}}}"#,
            member("e")?,
            member("n")?
        ),
        Some("EC") => format!(
            r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
            member("crv")?,
            member("x")?,
            member("y")?
        ),
        Some("OKP") => format!(
            r#"{{"crv":{},"kty":"OKP","x":{}}}"#,
            member("crv")?,
            member("x")?
        ),
        _ => return Err("unsupported key type"),
    };
    Ok(URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        canonical.as_bytes(),
    )))
}

/// A base64url segment decoded as a JSON object.
fn json_object(segment: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Normalises an `htu` (or the hub's own URI) for comparison, after RFC 3986 §6.2.2 and
/// §6.2.3 and RFC 9449 §4.3: the scheme and host lower-cased, `wss` read as `https` and `ws`
/// as `http` (a WebSocket upgrade is an HTTP request to the same URI), the default port and
/// an empty port dropped, an empty path read as `/`, percent-escapes upper-cased and those of
/// unreserved characters decoded, and the query and fragment left out.
///
/// `None` for anything else: another scheme, no host, user information, a bad port or
/// characters outside visible ASCII.
pub fn normalize_htu(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    let (scheme, default_port) =
        if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("wss") {
            ("https", 443)
        } else if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("ws") {
            ("http", 80)
        } else {
            return None;
        };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    let path_end = after.find(['?', '#']).unwrap_or(after.len());
    target_uri(scheme, default_port, authority, &after[..path_end])
}

/// The normalised URI of a request that reached this hub: `scheme` (`https` when the tunnel
/// listener serves TLS, `http` otherwise), the `Host` header and the request path.
pub fn request_htu(tls: bool, host: &str, path: &str) -> Option<String> {
    let (scheme, default_port) = if tls { ("https", 443) } else { ("http", 80) };
    let path_end = path.find(['?', '#']).unwrap_or(path.len());
    target_uri(scheme, default_port, host, &path[..path_end])
}

/// `scheme://host[:port]path`, normalised as [`normalize_htu`] describes.
fn target_uri(scheme: &str, default_port: u16, authority: &str, path: &str) -> Option<String> {
    if !authority
        .bytes()
        .chain(path.bytes())
        .all(|b| b.is_ascii_graphic())
    {
        return None;
    }
    if authority.contains('@') {
        return None;
    }
    let (host, port) = if authority.starts_with('[') {
        // An IP literal keeps its brackets.
        let close = authority.find(']')?;
        let port = match &authority[close + 1..] {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (&authority[..=close], port)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if host.contains([':', '[', ']']) {
            return None;
        }
        (host, port)
    };
    if host.is_empty() || host == "[]" {
        return None;
    }
    let port = match port {
        None | Some("") => None,
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => {
            let port: u16 = p.parse().ok()?;
            (port != default_port).then_some(port)
        }
        Some(_) => return None,
    };
    let mut out = format!("{scheme}://{}", host.to_ascii_lowercase());
    if let Some(port) = port {
        out.push(':');
        out.push_str(&port.to_string());
    }
    if path.is_empty() {
        out.push('/');
    } else {
        push_normalized_path(&mut out, path);
    }
    Some(out)
}

/// Appends `path` with percent-escapes upper-cased and those of unreserved characters
/// decoded (RFC 3986 §6.2.2.1, §6.2.2.2). A `%` not followed by two hex digits is kept as
/// it is: such a path matches only itself.
fn push_normalized_path(out: &mut String, path: &str) {
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok().map(|value| (value, hex)));
        match escape {
            Some((value, _))
                if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') =>
            {
                out.push(value as char);
                i += 3;
            }
            Some((_, hex)) => {
                out.push('%');
                out.push_str(&hex.to_ascii_uppercase());
                i += 3;
            }
            None => {
                out.push(bytes[i] as char);
                i += 1;
            }
        }
    }
}

/// The outcome of offering an accepted proof to the [`ReplayCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Admission {
    /// First use: recorded.
    Fresh,
    /// The same key and `jti` were recorded before and have not expired.
    Replayed,
    /// The cache holds its capacity of unexpired entries; nothing was recorded.
    Full,
}

/// The proofs accepted recently, by key thumbprint and `jti` (RFC 9449 §11.1), kept until
/// their `iat` leaves the accepted window, when they would be refused anyway.
///
/// Bounded: past its capacity new proofs are refused rather than the cache grown or live
/// entries dropped (dropping one would let its proof be replayed). Entries are a SHA-256 of
/// thumbprint and `jti`, so their size does not depend on what agents send. Expired entries
/// are evicted on every admission, oldest first, from a heap ordered by expiry.
///
/// One cache serves all shards (behind a mutex in the authenticator); it is per process, so
/// replicas behind one load balancer each keep their own.
#[derive(Debug)]
pub(super) struct ReplayCache {
    capacity: usize,
    live: HashSet<[u8; 32]>,
    expiries: BinaryHeap<Reverse<(u64, [u8; 32])>>,
}

impl ReplayCache {
    /// An empty cache holding at most `capacity` entries.
    pub(super) fn new(capacity: usize) -> ReplayCache {
        ReplayCache {
            capacity,
            live: HashSet::new(),
            expiries: BinaryHeap::new(),
        }
    }

    /// Records the proof of key `thumbprint` and `jti`, acceptable until `until` (seconds
    /// since the epoch), at `now`; says whether it was new.
    pub(super) fn admit(&mut self, thumbprint: &str, jti: &str, until: u64, now: u64) -> Admission {
        while let Some(Reverse((expiry, id))) = self.expiries.peek().copied()
            && expiry < now
        {
            self.expiries.pop();
            self.live.remove(&id);
        }
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        context.update(thumbprint.as_bytes());
        // A thumbprint is base64url and never holds a NUL: the pair is unambiguous.
        context.update(&[0]);
        context.update(jti.as_bytes());
        let mut id = [0u8; 32];
        id.copy_from_slice(context.finish().as_ref());
        if self.live.contains(&id) {
            return Admission::Replayed;
        }
        if self.live.len() >= self.capacity {
            return Admission::Full;
        }
        self.live.insert(id);
        self.expiries.push(Reverse((until, id)));
        Admission::Fresh
    }

    /// How many entries are live or not yet evicted.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.live.len()
    }
}
