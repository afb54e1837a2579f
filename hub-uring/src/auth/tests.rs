//! Tests of token validation ([`jwt`]), of DPoP proofs ([`dpop`]) and of key set parsing,
//! fetching and rotation ([`jwks`]), with keys generated per run and a JWKS served from
//! loopback or a file.

mod dpop;
mod jwks;
mod jwt;
mod support;
