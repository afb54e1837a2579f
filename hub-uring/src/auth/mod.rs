//! Agent authentication: the bearer token on the tunnel's upgrade request, validated against
//! the identity provider's published keys (JWKS).
//!
//! - `jwks`: the key set ([`KeySet`]), its lock-free snapshot shared by every shard
//!   ([`JwksStore`]), and the control plane's [`refresher`] that fetches it.
//! - `jwt`: the [`Authenticator`] that turns an `Authorization` header into an
//!   [`Identity`] or an [`AuthFailure`] naming exactly why it was refused.
//!
//! Tokens are never logged: failures carry the reason, the offending `kid` or `alg` at
//! most, and never the token itself.

mod jwks;
mod jwt;

pub use jwks::{
    FetchError, JwksStore, KeySet, MAX_JWKS_BYTES, RefreshRequests, SUPPORTED_ALGORITHMS, refresher,
};
pub use jwt::{
    AuthFailure, Authenticator, Binding, BindingFailure, Identity, LEEWAY_SECS, MAX_TOKEN_BYTES,
    certificate_thumbprint,
};

#[cfg(test)]
mod tests;
