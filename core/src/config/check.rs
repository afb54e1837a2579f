//! Validation rules shared by the hub and the agent configuration.
//!
//! Each rule takes the key it reports under, so the same rule names a YAML path when it checks
//! the file and an environment variable when it checks an override.

use std::path::Path;

use super::error::ConfigError;
use super::url;

/// Checks that `value` lies in `min..=max`.
pub(crate) fn range<T>(key: &str, value: T, min: T, max: T) -> Result<(), ConfigError>
where
    T: PartialOrd + std::fmt::Display,
{
    if value < min || value > max {
        return Err(ConfigError::invalid(
            key,
            value,
            "is out of range",
            format!("an integer from {min} to {max}"),
        ));
    }
    Ok(())
}

/// Checks that a configured file path is not empty.
pub(crate) fn file_path(key: &str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(ConfigError::invalid(
            key,
            "",
            "is empty",
            "the path of a file",
        ));
    }
    Ok(())
}

/// Checks that `value` is 1 to `max_len` bytes, each accepted by `allowed`.
pub(crate) fn identifier(
    key: &str,
    value: &str,
    max_len: usize,
    allowed: impl Fn(u8) -> bool,
    expected: &str,
) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::invalid(key, value, "is empty", expected));
    }
    if value.len() > max_len {
        return Err(ConfigError::invalid(key, value, "is too long", expected));
    }
    if !value.bytes().all(allowed) {
        return Err(ConfigError::invalid(
            key,
            value,
            "holds a character that is not allowed",
            expected,
        ));
    }
    Ok(())
}

/// What a JWKS URL must look like.
pub(crate) const JWKS_URL_EXPECTED: &str = "an https:// URL, an http:// URL on a loopback host (127.0.0.0/8, ::1, localhost) or a file:// URL";

/// Checks the JWKS location: `https://host/…`, `http://` only to a loopback host (the keys
/// that authenticate every agent must not travel in clear over a network), or
/// `file:///absolute/path`.
pub(crate) fn jwks_url(key: &str, value: &str) -> Result<(), ConfigError> {
    let shown = url::mask_userinfo(value);
    let fail = |problem: &str| ConfigError::invalid(key, &shown, problem, JWKS_URL_EXPECTED);
    let parts = url::split(value).map_err(fail)?;
    if parts.has_userinfo {
        return Err(fail("carries credentials"));
    }
    match parts.scheme.as_str() {
        "https" if parts.host.is_empty() => Err(fail("has no host")),
        "https" => Ok(()),
        "http" if url::is_loopback_host(parts.host) => Ok(()),
        "http" => Err(fail("is plain http to a host that is not loopback")),
        "file" if !(parts.host.is_empty() || parts.host.eq_ignore_ascii_case("localhost")) => {
            Err(fail("names a remote host"))
        }
        "file" if parts.rest.len() < 2 || !parts.rest.starts_with('/') => Err(fail("has no path")),
        "file" => Ok(()),
        _ => Err(fail("has the wrong scheme")),
    }
}

/// Checks an `http://` or `https://` URL with a host.
pub(crate) fn http_url(key: &str, value: &str) -> Result<(), ConfigError> {
    const EXPECTED: &str = "an http:// or https:// URL with a host";
    let shown = url::mask_userinfo(value);
    let fail = |problem: &str| ConfigError::invalid(key, &shown, problem, EXPECTED);
    let parts = url::split(value).map_err(fail)?;
    if parts.has_userinfo {
        return Err(fail("carries credentials"));
    }
    if !matches!(parts.scheme.as_str(), "http" | "https") {
        return Err(fail("has the wrong scheme"));
    }
    if parts.host.is_empty() {
        return Err(fail("has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_urls() {
        for ok in [
            "https://idp.example.com/.well-known/jwks.json",
            "http://127.0.0.1:8080/jwks",
            "http://localhost/jwks",
            "http://[::1]/jwks",
            "file:///etc/nowconnect/jwks.json",
            "file://localhost/etc/jwks.json",
        ] {
            jwks_url("k", ok).unwrap();
        }
        for (bad, problem) in [
            ("http://idp.example.com/jwks", "not loopback"),
            ("ftp://idp.example.com/jwks", "wrong scheme"),
            ("https:///jwks", "no host"),
            ("file://server/jwks.json", "remote host"),
            ("file://", "no path"),
            ("/etc/jwks.json", "not a URL"),
        ] {
            let err = jwks_url("k", bad).unwrap_err().to_string();
            assert!(err.contains(problem), "{bad}: {err}");
        }
    }

    #[test]
    fn ranges() {
        range("k", 5u64, 1, 10).unwrap();
        let err = range("limits.heartbeat_ms", 50u64, 100, 3_600_000).unwrap_err();
        assert_eq!(
            err.to_string(),
            "limits.heartbeat_ms: `50` is out of range, expected an integer from 100 to 3600000"
        );
    }
}
