//! The TLS client configuration for `wss://` hubs: the system's roots plus an optional extra
//! CA bundle.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

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
/// plus every certificate in `ca_file`.
pub(crate) fn client_config(
    ca_file: Option<&Path>,
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
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
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
    fn a_missing_file_names_the_path() {
        let path = Path::new("/nonexistent/nowconnect-ca.pem");
        let err = load_ca_file(path).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/nowconnect-ca.pem"),
            "{err}"
        );
    }
}
