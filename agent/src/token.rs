//! The access token: read from its file on every connect, and watched while sessions run so
//! that a rotated token replaces them without a restart.
//!
//! [`watch`] polls the file every [`POLL`] and publishes its contents whenever they change.
//! Each lane compares a published token with the one its session was opened with and, when
//! they differ, opens a fresh session and lets the old one drain. [`expiry`] reads a JWT's
//! `exp` (without verifying anything: the hub does that) so a lane can look for a renewed
//! token ahead of its session's token expiring.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::sync::watch as channel;

/// How often the token file is re-read while sessions run.
pub(crate) const POLL: Duration = Duration::from_secs(2);

/// A lane looks for a renewed token once its session's token expires within this long.
pub(crate) const RENEW_AHEAD: Duration = Duration::from_secs(60);

/// Why the token could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    /// The file could not be read.
    #[error("cannot read token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds nothing but whitespace.
    #[error("token file {path} is empty")]
    Empty {
        /// The file.
        path: String,
    },
    /// The token holds characters that cannot travel in an HTTP header.
    #[error("token file {path} holds characters other than visible ASCII")]
    NotPrintable {
        /// The file.
        path: String,
    },
}

/// Reads the token from `path`, without surrounding whitespace. The token itself never
/// appears in an error.
pub(crate) async fn read_token(path: &Path) -> Result<String, TokenError> {
    let display = || path.display().to_string();
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| TokenError::Read {
            path: display(),
            source,
        })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty { path: display() });
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::NotPrintable { path: display() });
    }
    Ok(token.to_owned())
}

/// The `exp` claim of a JWT (seconds since the Unix epoch), decoded without verifying the
/// signature. None when the token is not a JWT or carries no numeric `exp`.
pub(crate) fn expiry(token: &str) -> Option<u64> {
    let mut parts = token.split('.');
    let (_header, payload) = (parts.next()?, parts.next()?);
    parts.next()?;
    // Tolerate padding, which some issuers leave on.
    let json = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let exp = claims.get("exp")?;
    exp.as_u64()
        .or_else(|| exp.as_f64().filter(|e| *e >= 0.0).map(|e| e as u64))
}

/// Starts polling `path` every [`POLL`]; the receiver holds the file's last readable token
/// (None until it could be read once). Errors are logged once until the file is readable
/// again; a token that cannot be read never replaces a good one. The task ends when every
/// receiver is gone.
pub(crate) async fn watch(path: PathBuf) -> channel::Receiver<Option<Arc<str>>> {
    let first = read_token(&path).await.ok().map(Arc::<str>::from);
    let (tx, rx) = channel::channel(first);
    tokio::spawn(async move {
        let mut failing = false;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = tx.closed() => return,
                _ = tick.tick() => {}
            }
            match read_token(&path).await {
                Ok(token) => {
                    failing = false;
                    tx.send_if_modified(|current| {
                        if current.as_deref() == Some(token.as_str()) {
                            return false;
                        }
                        *current = Some(Arc::from(token));
                        true
                    });
                }
                Err(err) => {
                    if !failing {
                        tracing::warn!(error = %err, "cannot re-read the token file; keeping the sessions that are up");
                    }
                    failing = true;
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn expiry_reads_exp_without_verifying() {
        assert_eq!(
            expiry(&jwt(r#"{"exp":1767225600,"agent_id":"a"}"#)),
            Some(1767225600)
        );
        assert_eq!(expiry(&jwt(r#"{"exp":1767225600.5}"#)), Some(1767225600));
        // Padded payloads are decoded too.
        let padded = format!(
            "h.{}.s",
            base64::engine::general_purpose::URL_SAFE.encode(r#"{"exp":7}"#)
        );
        assert_eq!(expiry(&padded), Some(7));
    }

    #[test]
    fn expiry_is_none_for_anything_else() {
        assert_eq!(expiry(&jwt(r#"{"agent_id":"a"}"#)), None);
        assert_eq!(expiry(&jwt(r#"{"exp":"soon"}"#)), None);
        assert_eq!(expiry(&jwt(r#"{"exp":-5}"#)), None);
        assert_eq!(expiry(&jwt("not json")), None);
        assert_eq!(expiry("opaque-token"), None);
        assert_eq!(expiry("a.b"), None);
        assert_eq!(expiry("a.%%%.c"), None);
    }

    #[tokio::test]
    async fn watch_publishes_changes_only() {
        let path = temp_file("watch", "first\n");
        let mut rx = watch(path.clone()).await;
        assert_eq!(rx.borrow_and_update().as_deref(), Some("first"));
        // Rewriting the same token is no change.
        std::fs::write(&path, "first\n").unwrap();
        tokio::time::sleep(POLL + POLL / 2).await;
        assert!(!rx.has_changed().unwrap());
        std::fs::write(&path, "second").unwrap();
        tokio::time::timeout(POLL * 3, rx.changed())
            .await
            .expect("change seen within a few polls")
            .unwrap();
        assert_eq!(rx.borrow_and_update().as_deref(), Some("second"));
        // A file that disappears keeps the last good token.
        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(POLL + POLL / 2).await;
        assert!(!rx.has_changed().unwrap());
        assert_eq!(rx.borrow().as_deref(), Some("second"));
    }

    fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "nowconnect-agent-token-{}-{name}",
            std::process::id()
        ));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[tokio::test]
    async fn trims_surrounding_whitespace() {
        let path = temp_file("trim", "  \n eyJhbGciOi.abc.def \r\n\n");
        assert_eq!(read_token(&path).await.unwrap(), "eyJhbGciOi.abc.def");
        std::fs::remove_file(path).unwrap();
    }

    #[tokio::test]
    async fn rereads_a_rotated_token() {
        let path = temp_file("rotate", "first\n");
        assert_eq!(read_token(&path).await.unwrap(), "first");
        std::fs::write(&path, "second\n").unwrap();
        assert_eq!(read_token(&path).await.unwrap(), "second");
        std::fs::remove_file(path).unwrap();
    }

    #[tokio::test]
    async fn empty_file_is_an_error() {
        let path = temp_file("empty", " \n\t\n");
        assert!(matches!(
            read_token(&path).await,
            Err(TokenError::Empty { .. })
        ));
        std::fs::remove_file(path).unwrap();
    }

    #[tokio::test]
    async fn inner_whitespace_is_refused_without_echoing_the_token() {
        let path = temp_file("inner", "abc def\n");
        let err = read_token(&path).await.unwrap_err();
        assert!(matches!(err, TokenError::NotPrintable { .. }));
        assert!(!err.to_string().contains("abc"));
        std::fs::remove_file(path).unwrap();
    }

    #[tokio::test]
    async fn missing_file_names_the_path() {
        let path = std::env::temp_dir().join("nowconnect-agent-token-does-not-exist");
        let err = read_token(&path).await.unwrap_err();
        assert!(err.to_string().contains("does-not-exist"));
    }
}
