//! Development credentials for `demo`: a throw-away identity provider made of one EC P-256
//! signing key, its public JWKS, and access tokens signed with it.
//!
//! These are for a local demonstration only. The key lives in memory and is never written out;
//! only its public half (the JWKS) and the tokens are.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// A signing key with its key id and public JWK.
pub(crate) struct DevIdp {
    kid: String,
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

impl DevIdp {
    /// Generates a fresh P-256 key named `kid`.
    pub(crate) fn generate(kid: &str) -> Result<DevIdp, String> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|e| format!("generating an EC key: {e}"))?;
        let der = pair
            .to_pkcs8v1()
            .map_err(|e| format!("encoding the EC key: {e}"))?;
        // Uncompressed point: 0x04 || x || y.
        let public = pair.public_key().as_ref();
        if public.len() != 65 || public[0] != 4 {
            return Err("unexpected EC public key encoding".into());
        }
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&public[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&public[33..65]),
        });
        Ok(DevIdp {
            kid: kid.to_string(),
            encoding: EncodingKey::from_ec_der(der.as_ref()),
            jwk,
        })
    }

    /// The public key set, as a JWKS document.
    pub(crate) fn jwks(&self) -> String {
        serde_json::json!({ "keys": [self.jwk] }).to_string()
    }

    /// An ES256 access token for `agent_id`, valid for `ttl_secs` from now.
    pub(crate) fn token(
        &self,
        agent_id: &str,
        audience: &str,
        issuer: &str,
        ttl_secs: u64,
    ) -> Result<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| format!("system clock: {e}"))?
            .as_secs();
        let claims = serde_json::json!({
            "iss": issuer, "aud": audience, "sub": agent_id, "agent_id": agent_id,
            "iat": now, "nbf": now.saturating_sub(5), "exp": now + ttl_secs,
            "jti": format!("demo-{now}-{}", std::process::id()),
        });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| format!("signing the token: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn tokens_verify_against_the_published_jwks() {
        let idp = DevIdp::generate("k1").unwrap();
        let token = idp.token("demo-agent", "aud-x", "iss-y", 600).unwrap();
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&idp.jwks()).unwrap();
        let jwk = jwks.find("k1").unwrap();
        let key = DecodingKey::from_jwk(jwk).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["aud-x"]);
        v.set_issuer(&["iss-y"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v).unwrap();
        assert_eq!(data.claims["agent_id"], "demo-agent");
        assert_eq!(data.header.kid.as_deref(), Some("k1"));
    }
}
