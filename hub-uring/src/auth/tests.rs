//! Tests of token validation ([`jwt`]) and of key set parsing, fetching and rotation
//! ([`jwks`]), with keys generated per run and a JWKS served from loopback or a file.

mod jwks;
mod jwt;
mod support;
