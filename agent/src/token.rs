//! The access token, read from its file on every connect so that a rotated token is picked up.

use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

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
