//! DPoP (RFC 9449): the agent's proof-of-possession key, and the `DPoP` proof made fresh for
//! every connect.
//!
//! With `dpop_key_file` set the agent sends `Authorization: DPoP <token>` and a `DPoP` header
//! holding a JWS signed with that key: header `typ: dpop+jwt`, `alg` (ES256 for a P-256 key,
//! EdDSA for Ed25519) and the public `jwk`; claims `jti` (random), `htm` (`GET`), `htu` (the
//! hub URL in its `https://` or `http://` form, without query), `iat` (now) and `ath` (the
//! token's SHA-256). The token must be bound to this key by `cnf.jkt`, which is
//! [`DpopKey::thumbprint`]; the agent logs it at start.

use std::fmt;
use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nowconnect_core::config::WsUrl;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::json;

use crate::connect::host_header;

/// What a key file must hold, for error messages.
const EXPECTED: &str = "expected an unencrypted PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----) on P-256 or Ed25519";

/// Why the DPoP key could not be loaded. The key itself never appears in it.
#[derive(Debug, thiserror::Error)]
#[error("dpop_key_file {path}: {why}; {EXPECTED}")]
pub(crate) struct DpopKeyError {
    /// The file.
    path: String,
    /// What is wrong with it.
    why: String,
}

/// Why a proof could not be made: the system's random source or the signer failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot make the DPoP proof: {0}")]
pub(crate) struct ProofError(&'static str);

/// The private key that signs DPoP proofs, with its public JWK and thumbprint.
pub(crate) struct DpopKey {
    signer: Signer,
    /// The public JWK, as it goes into every proof's header.
    jwk: serde_json::Value,
    /// The RFC 7638 SHA-256 thumbprint of `jwk`, base64url: the token's `cnf.jkt`.
    thumbprint: String,
    rng: SystemRandom,
}

enum Signer {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

impl fmt::Debug for DpopKey {
    /// The algorithm and thumbprint only, never the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopKey")
            .field("alg", &self.alg())
            .field("thumbprint", &self.thumbprint)
            .finish()
    }
}

impl DpopKey {
    /// Reads a PKCS#8 PEM private key, P-256 or Ed25519, from `path`.
    pub(crate) fn load(path: &Path) -> Result<DpopKey, DpopKeyError> {
        let fail = |why: String| DpopKeyError {
            path: path.display().to_string(),
            why,
        };
        let key = PrivateKeyDer::from_pem_file(path).map_err(|e| fail(e.to_string()))?;
        match key {
            PrivateKeyDer::Pkcs8(der) => {
                DpopKey::from_pkcs8(der.secret_pkcs8_der()).map_err(|why| fail(why.to_owned()))
            }
            PrivateKeyDer::Sec1(_) => Err(fail(
                "holds an SEC1 EC key (-----BEGIN EC PRIVATE KEY-----); convert it with `openssl pkcs8 -topk8 -nocrypt`"
                    .to_owned(),
            )),
            PrivateKeyDer::Pkcs1(_) => Err(fail("holds an RSA key".to_owned())),
            _ => Err(fail("holds a key of an unknown format".to_owned())),
        }
    }

    /// A key from PKCS#8 DER: P-256 (for ES256) or Ed25519 (for EdDSA).
    pub(crate) fn from_pkcs8(der: &[u8]) -> Result<DpopKey, &'static str> {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let (signer, jwk, canonical) =
            if let Ok(pair) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der) {
                // The uncompressed point: 0x04, then x and y, 32 bytes each.
                let point = pair.public_key().as_ref().to_vec();
                if point.len() != 65 {
                    return Err("the P-256 public key is not an uncompressed point");
                }
                let (x, y) = (b64(&point[1..33]), b64(&point[33..]));
                (
                    Signer::Es256(pair),
                    json!({ "kty": "EC", "crv": "P-256", "x": x, "y": y }),
                    format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
                )
            } else if let Ok(pair) = Ed25519KeyPair::from_pkcs8(der) {
                let x = b64(pair.public_key().as_ref());
                (
                    Signer::EdDsa(pair),
                    json!({ "kty": "OKP", "crv": "Ed25519", "x": x }),
                    format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
                )
            } else {
                return Err("the key is neither P-256 nor Ed25519, or is malformed");
            };
        // RFC 7638 §3: SHA-256 over the required members, sorted, without white space.
        let thumbprint = b64(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            canonical.as_bytes(),
        )
        .as_ref());
        Ok(DpopKey {
            signer,
            jwk,
            thumbprint,
            rng: SystemRandom::new(),
        })
    }

    /// The JWS algorithm of the proofs: `ES256` or `EdDSA`.
    pub(crate) fn alg(&self) -> &'static str {
        match self.signer {
            Signer::Es256(_) => "ES256",
            Signer::EdDsa(_) => "EdDSA",
        }
    }

    /// The key's RFC 7638 thumbprint, which the token's `cnf.jkt` must hold.
    pub(crate) fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// A fresh proof for a request to `htu` made at `iat` (seconds since the epoch) with the
    /// access token `token`.
    pub(crate) fn proof(&self, htu: &str, token: &str, iat: u64) -> Result<String, ProofError> {
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti).map_err(|_| ProofError("no random bytes for jti"))?;
        let header = json!({ "typ": "dpop+jwt", "alg": self.alg(), "jwk": self.jwk });
        let ath = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let claims = json!({
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "htm": "GET",
            "htu": htu,
            "iat": iat,
            "ath": URL_SAFE_NO_PAD.encode(ath.as_ref()),
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = match &self.signer {
            Signer::Es256(pair) => pair
                .sign(&self.rng, input.as_bytes())
                .map_err(|_| ProofError("ES256 signing failed"))?,
            Signer::EdDsa(pair) => pair.sign(input.as_bytes()),
        };
        Ok(format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}

/// The `htu` of the upgrade request to `url`: its `https://` (for `wss://`) or `http://`
/// (for `ws://`) form, default port left out, without query (RFC 9449 §4.2).
pub(crate) fn htu(url: &WsUrl) -> String {
    let scheme = if url.is_tls() { "https" } else { "http" };
    let target = url.path_and_query();
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    format!("{scheme}://{}{path}", host_header(url))
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::encoding::AsDer;
    use base64::engine::general_purpose::STANDARD;
    use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    use serde_json::{Map, Value};

    use super::*;

    fn p256() -> Vec<u8> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        pair.to_pkcs8v1().unwrap().as_ref().to_vec()
    }

    fn ed25519() -> Vec<u8> {
        Ed25519KeyPair::generate()
            .unwrap()
            .to_pkcs8v1()
            .unwrap()
            .as_ref()
            .to_vec()
    }

    fn pem(label: &str, der: &[u8]) -> String {
        let body = STANDARD.encode(der);
        let mut pem = format!("-----BEGIN {label}-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap());
            pem.push('\n');
        }
        pem.push_str(&format!("-----END {label}-----\n"));
        pem
    }

    fn decode_part(part: &str) -> Map<String, Value> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    /// Checks `proof` the way the hub does: shape, header, signature with its own jwk,
    /// claims, and the thumbprint computed by jsonwebtoken.
    fn check(key: &DpopKey, proof: &str, htu: &str, token: &str, iat: u64) -> String {
        let parts: Vec<&str> = proof.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = decode_part(parts[0]);
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], key.alg());
        let jwk_value = header["jwk"].clone();
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(jwk_value.get(private).is_none(), "{private} in the jwk");
        }
        let jwk: Jwk = serde_json::from_value(jwk_value).unwrap();
        assert_eq!(
            jwk.thumbprint(ThumbprintHash::SHA256).unwrap(),
            key.thumbprint()
        );
        let alg = match key.alg() {
            "ES256" => Algorithm::ES256,
            _ => Algorithm::EdDSA,
        };
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        let decoded = jsonwebtoken::decode::<Map<String, Value>>(
            proof,
            &DecodingKey::from_jwk(&jwk).unwrap(),
            &validation,
        )
        .expect("the proof verifies with its own jwk");
        let claims = decoded.claims;
        assert_eq!(claims["htm"], "GET");
        assert_eq!(claims["htu"], htu);
        assert_eq!(claims["iat"], iat);
        let ath = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        assert_eq!(claims["ath"], URL_SAFE_NO_PAD.encode(ath.as_ref()));
        let jti = claims["jti"].as_str().unwrap();
        assert!((1..=128).contains(&jti.len()));
        jti.to_owned()
    }

    #[test]
    fn proofs_verify_with_their_own_jwk_and_carry_the_claims() {
        for der in [p256(), ed25519()] {
            let key = DpopKey::from_pkcs8(&der).unwrap();
            let htu = "https://hub.example:8443/nowconnect/v1/tunnel";
            let first = key.proof(htu, "the.access.token", 1_800_000_000).unwrap();
            let second = key.proof(htu, "the.access.token", 1_800_000_000).unwrap();
            let jti1 = check(&key, &first, htu, "the.access.token", 1_800_000_000);
            let jti2 = check(&key, &second, htu, "the.access.token", 1_800_000_000);
            assert_ne!(jti1, jti2, "every proof has its own jti");
        }
    }

    #[test]
    fn a_proof_does_not_verify_with_another_key() {
        let key = DpopKey::from_pkcs8(&p256()).unwrap();
        let other = DpopKey::from_pkcs8(&p256()).unwrap();
        let proof = key.proof("http://h/t", "t.o.k", 1).unwrap();
        let jwk: Jwk = serde_json::from_value(other.jwk.clone()).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let result = jsonwebtoken::decode::<Map<String, Value>>(
            &proof,
            &DecodingKey::from_jwk(&jwk).unwrap(),
            &validation,
        );
        assert!(result.is_err());
        assert_ne!(key.thumbprint(), other.thumbprint());
    }

    #[test]
    fn keys_load_from_pkcs8_pem_files() {
        let dir = std::env::temp_dir().join(format!("nc-agent-dpop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ec = write("ec.pem", &pem("PRIVATE KEY", &p256()));
        assert_eq!(DpopKey::load(&ec).unwrap().alg(), "ES256");
        let ed = write("ed.pem", &pem("PRIVATE KEY", &ed25519()));
        assert_eq!(DpopKey::load(&ed).unwrap().alg(), "EdDSA");

        let p384 = aws_lc_rs::signature::EcdsaKeyPair::generate(
            &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        )
        .unwrap();
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let cases = [
            (
                write(
                    "p384.pem",
                    &pem("PRIVATE KEY", p384.to_pkcs8v1().unwrap().as_ref()),
                ),
                "neither P-256 nor Ed25519",
            ),
            (
                write(
                    "rsa.pem",
                    &pem("PRIVATE KEY", rsa.as_der().unwrap().as_ref()),
                ),
                "neither P-256 nor Ed25519",
            ),
            (
                write("sec1.pem", &pem("EC PRIVATE KEY", &[0x30, 0])),
                "SEC1",
            ),
            (write("empty.pem", ""), "dpop_key_file"),
            (dir.join("missing.pem"), "dpop_key_file"),
        ];
        for (path, named) in cases {
            let err = DpopKey::load(&path).unwrap_err().to_string();
            assert!(err.starts_with("dpop_key_file "), "{err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains(named), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_shows_no_private_key() {
        let key = DpopKey::from_pkcs8(&p256()).unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains(key.thumbprint()), "{shown}");
        assert!(shown.len() < 120, "{shown}");
    }

    #[test]
    fn htu_is_the_http_form_of_the_hub_url() {
        let url = |s: &str| WsUrl::parse(s).unwrap();
        assert_eq!(
            htu(&url("wss://hub.example:443/nowconnect/v1/tunnel?x=1")),
            "https://hub.example/nowconnect/v1/tunnel"
        );
        assert_eq!(
            htu(&url("ws://127.0.0.1:8443/nowconnect/v1/tunnel")),
            "http://127.0.0.1:8443/nowconnect/v1/tunnel"
        );
        assert_eq!(htu(&url("wss://[::1]:9000/t")), "https://[::1]:9000/t");
    }
}
