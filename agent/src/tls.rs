//! The TLS client configuration for `wss://` hubs: the system's roots plus an optional extra
//! CA bundle, and the agent's client certificate when it has one (for hubs that ask for it,
//! and for certificate-bound tokens, RFC 8705).

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsSetupError {
    /// The CA bundle could not be read or holds a malformed PEM block.
    #[error("ca_file {path}: {why}")]
    CaFile {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// The CA bundle holds no certificate.
    #[error(
        "ca_file {path}: no PEM certificate found, expected one or more -----BEGIN CERTIFICATE----- blocks"
    )]
    NoCertificates {
        /// The file.
        path: String,
    },
    /// The client certificate or its key could not be used.
    #[error("{key} {path}: {why}")]
    ClientCert {
        /// `client_cert` or `client_key`.
        key: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// Neither the system nor the CA bundle supplied a usable root.
    #[error(
        "no trusted root certificates: the system store is empty or unreadable and no ca_file (NC_CA_FILE) is set"
    )]
    NoRoots,
    /// rustls refused the protocol versions (a build problem, not a configuration one).
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the client configuration: system roots (failures to load some of them are logged)
/// plus every certificate in `ca_file`, presenting the certificate chain and key of
/// `client_cert` (`(chain file, key file)`, PEM) when the hub asks for one.
pub(crate) fn client_config(
    ca_file: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for err in &native.errors {
        tracing::warn!(error = %err, "could not load some system root certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system root certificates loaded");
    if let Some(path) = ca_file {
        let extra = load_ca_file(path)?;
        let (added, ignored) = roots.add_parsable_certificates(extra);
        if added == 0 {
            return Err(TlsSetupError::CaFile {
                path: path.display().to_string(),
                why: format!("none of its {ignored} certificates could be used as a trust anchor"),
            });
        }
    }
    if roots.is_empty() {
        return Err(TlsSetupError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let (chain, key) = load_client_cert(cert_file, key_file)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsSetupError::ClientCert {
                    key: "client_key",
                    path: key_file.display().to_string(),
                    why: format!("does not fit client_cert: {e}"),
                })?
        }
    };
    Ok(Arc::new(config))
}

/// Reads the client certificate chain and its private key (PEM).
fn load_client_cert(
    cert_file: &Path,
    key_file: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsSetupError> {
    let fail = |key, path: &Path, why: String| TlsSetupError::ClientCert {
        key,
        path: path.display().to_string(),
        why,
    };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| fail("client_cert", cert_file, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail("client_cert", cert_file, e.to_string()))?;
    if chain.is_empty() {
        return Err(fail(
            "client_cert",
            cert_file,
            "no PEM certificate found, expected a -----BEGIN CERTIFICATE----- block".to_owned(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| fail("client_key", key_file, e.to_string()))?;
    Ok((chain, key))
}

/// Reads every certificate of a PEM bundle.
fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let fail = |why: String| TlsSetupError::CaFile {
        path: path.display().to_string(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificates {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("nowconnect-agent-ca-{}", std::process::id()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = load_ca_file(&path).unwrap_err();
        assert!(matches!(err, TlsSetupError::NoCertificates { .. }), "{err}");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_client_key_that_is_no_key_is_named() {
        let dir = std::env::temp_dir().join(format!("nowconnect-agent-cc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["agent".to_owned()]).unwrap();
        let (cert_file, key_file) = (dir.join("agent.crt"), dir.join("agent.key"));
        std::fs::write(&cert_file, cert.cert.pem()).unwrap();
        std::fs::write(&key_file, "not a key\n").unwrap();
        let err = load_client_cert(&cert_file, &key_file).unwrap_err();
        assert!(err.to_string().starts_with("client_key "), "{err}");
        std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
        let (chain, _) = load_client_cert(&cert_file, &key_file).unwrap();
        assert_eq!(chain.len(), 1);
        // A key of another certificate is refused when the configuration is built.
        let other = rcgen::generate_simple_self_signed(vec!["other".to_owned()]).unwrap();
        std::fs::write(&key_file, other.signing_key.serialize_pem()).unwrap();
        let err = client_config(Some(&cert_file), Some((&cert_file, &key_file))).unwrap_err();
        assert!(
            err.to_string().contains("does not fit client_cert"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let path = Path::new("/nonexistent/nowconnect-ca.pem");
        let err = load_ca_file(path).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/nowconnect-ca.pem"),
            "{err}"
        );
    }
}
