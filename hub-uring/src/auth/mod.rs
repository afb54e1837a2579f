//! Agent authentication: the access token on the tunnel's upgrade request, validated against
//! the identity provider's published keys (JWKS), and its binding to a client certificate
//! or, with a DPoP proof, to the agent's key.
//!
//! - `jwks`: the key set ([`KeySet`]), its lock-free snapshot shared by every shard
//!   ([`JwksStore`]), and the control plane's [`refresher`] that fetches it.
//! - `jwt`: the [`Authenticator`] that turns an upgrade request's [`Credentials`] into an
//!   [`Identity`] or a [`Refusal`] naming exactly why it was refused.
//! - `dpop`: DPoP proofs (RFC 9449): their checks, `htu` normalisation and the replay cache.
//!
//! Tokens and proofs are never logged: failures carry the reason, the offending `kid` or
//! `alg` at most, and never the credential itself.

mod dpop;
mod jwks;
mod jwt;

pub use dpop::{
    DpopFailure, MAX_JTI_LEN, MAX_PROOF_BYTES, PROOF_MAX_AGE_SECS, PROOF_MAX_AHEAD_SECS,
    REPLAY_CACHE_CAPACITY, access_token_hash, normalize_htu, request_htu, thumbprint,
};

pub use jwks::{
    FetchError, JwksStore, KeySet, MAX_JWKS_BYTES, RefreshRequests, SUPPORTED_ALGORITHMS, refresher,
};
pub use jwt::{
    AuthFailure, Authenticator, Binding, BindingFailure, Credentials, Identity, LEEWAY_SECS,
    MAX_TOKEN_BYTES, Refusal, Scheme, certificate_thumbprint,
};

#[cfg(test)]
mod tests;
