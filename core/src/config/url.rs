//! The small amount of URL parsing the configuration needs.
//!
//! Configuration URLs are checked for their scheme, host, port and path, nothing more; the
//! drivers hand them to their HTTP and WebSocket clients as written. A URL here is
//! `scheme://[userinfo@]host[:port][/path][?query][#fragment]` with an IPv6 host in brackets.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// The parts of a URL that configuration rules look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UrlParts<'a> {
    /// The scheme, lower-cased.
    pub(crate) scheme: String,
    /// Whether the authority carries `user[:password]@`.
    pub(crate) has_userinfo: bool,
    /// The host, without brackets for IPv6; may be empty (as in `file:///etc/jwks.json`).
    pub(crate) host: &'a str,
    /// The explicit port, if any.
    pub(crate) port: Option<u16>,
    /// Everything from the first `/`, `?` or `#` after the authority; may be empty.
    pub(crate) rest: &'a str,
}

/// Splits `url` into its parts, or says what is wrong with it.
pub(crate) fn split(url: &str) -> Result<UrlParts<'_>, &'static str> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace");
    }
    // HTTP clients that follow the WHATWG URL standard read `\` as `/`, so
    // `http://evil.example\@127.0.0.1/` would pass a loopback check here and reach
    // `evil.example` there. Neither belongs in a configured URL.
    if url.contains('\\') {
        return Err("contains a backslash");
    }
    let (scheme, after) = url.split_once("://").ok_or("is not a URL")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err("is not a URL");
    }
    let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(authority_end);
    let (has_userinfo, host_port) = match authority.rsplit_once('@') {
        Some((_, host_port)) => (true, host_port),
        None => (false, authority),
    };
    if host_port.contains('%') {
        // Percent-escapes in a host would be decoded by the client, not by this check.
        return Err("has a percent-escaped host");
    }
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after_host) = bracketed.split_once(']').ok_or("has an unclosed `[`")?;
        if !matches!(host.parse::<IpAddr>(), Ok(IpAddr::V6(_))) {
            return Err("has a bad IPv6 address");
        }
        let port = match after_host {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("has a bad port")?),
        };
        (host, port)
    } else {
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        };
        if host.contains([':', '[', ']']) {
            return Err("has a bad host");
        }
        (host, port)
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err("has a bad port"),
        },
    };
    Ok(UrlParts {
        scheme: scheme.to_ascii_lowercase(),
        has_userinfo,
        host,
        port,
        rest,
    })
}

/// Whether `host` names this machine: `localhost`, `127.0.0.0/8` or `::1` (also IPv4-mapped).
pub(crate) fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback(),
        Err(_) => false,
    }
}

/// A validated WebSocket URL of a hub's tunnel endpoint: `wss://host[:port]/path` or
/// `ws://host[:port]/path`.
///
/// The host is required and so is the path, at least `/` (the tunnel lives at a path such as
/// `/nowconnect/v1/tunnel`); credentials in the URL and fragments are refused. The port
/// defaults to 443 for `wss` and 80 for `ws`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct WsUrl {
    text: String,
    tls: bool,
    host: String,
    port: u16,
    path_start: usize,
}

/// What a [`WsUrl`] must look like, for error messages.
pub(crate) const WS_URL_EXPECTED: &str = "a wss:// or ws:// URL with a host and a path, such as wss://hub.example.com/nowconnect/v1/tunnel";

/// Why a string is not a [`WsUrl`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{url}` {problem}, expected {WS_URL_EXPECTED}")]
pub struct WsUrlError {
    /// The rejected text, with any credentials masked.
    pub url: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl WsUrl {
    /// Validates `text` as a hub tunnel URL.
    pub fn parse(text: &str) -> Result<Self, WsUrlError> {
        let fail = |problem| WsUrlError {
            url: super::error::one_line(&mask_userinfo(text)),
            problem,
        };
        let parts = split(text).map_err(fail)?;
        let tls = match parts.scheme.as_str() {
            "wss" => true,
            "ws" => false,
            _ => return Err(fail("has the wrong scheme")),
        };
        if parts.host.is_empty() {
            return Err(fail("has no host"));
        }
        if parts.has_userinfo {
            return Err(fail("holds credentials"));
        }
        if !parts.rest.starts_with('/') {
            return Err(fail("has no path"));
        }
        if parts.rest.contains('#') {
            return Err(fail("has a fragment"));
        }
        let path_start = text.len() - parts.rest.len();
        Ok(WsUrl {
            text: text.to_owned(),
            tls,
            host: parts.host.to_owned(),
            port: parts.port.unwrap_or(if tls { 443 } else { 80 }),
            path_start,
        })
    }

    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the scheme is `wss` (TLS to the hub).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The host: a DNS name or an IP address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port: as written, else 443 for `wss` and 80 for `ws`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The request target: the path and any query, starting with `/`.
    pub fn path_and_query(&self) -> &str {
        &self.text[self.path_start..]
    }
}

/// Replaces the userinfo of a URL-looking string with `***`, so errors never echo a password.
pub(crate) fn mask_userinfo(text: &str) -> String {
    let Some((scheme, after)) = text.split_once("://") else {
        return text.to_owned();
    };
    let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    match after[..authority_end].rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{}", &after[authority_end..]),
        None => text.to_owned(),
    }
}

impl fmt::Display for WsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for WsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl FromStr for WsUrl {
    type Err = WsUrlError;

    fn from_str(s: &str) -> Result<Self, WsUrlError> {
        WsUrl::parse(s)
    }
}

impl<'de> Deserialize<'de> for WsUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        WsUrl::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls() {
        let p = split("https://user:pw@[::1]:8443/a/b?c#d").unwrap();
        assert_eq!(p.scheme, "https");
        assert!(p.has_userinfo);
        assert_eq!(p.host, "::1");
        assert_eq!(p.port, Some(8443));
        assert_eq!(p.rest, "/a/b?c#d");
        let p = split("file:///etc/jwks.json").unwrap();
        assert_eq!(p.host, "");
        assert_eq!(p.rest, "/etc/jwks.json");
        for bad in [
            "example.com",
            "https://[::1/x",
            "https://h:0/",
            "https://h:+1/",
            "https://h:99999/",
            "https://a b/",
            "1http://h/",
            "https://[nothex]/",
        ] {
            assert!(split(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_hosts() {
        for host in ["localhost", "LocalHost", "127.0.0.1", "127.9.9.9", "::1"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["10.0.0.1", "example.com", "::2", "localhost.example.com"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn ws_urls() {
        let u = WsUrl::parse("wss://hub.example.com/nowconnect/v1/tunnel").unwrap();
        assert!(u.is_tls());
        assert_eq!(u.host(), "hub.example.com");
        assert_eq!(u.port(), 443);
        assert_eq!(u.path_and_query(), "/nowconnect/v1/tunnel");
        let u = WsUrl::parse("ws://[::1]:8080/t?x=1").unwrap();
        assert!(!u.is_tls());
        assert_eq!(u.host(), "::1");
        assert_eq!(u.port(), 8080);
        assert_eq!(u.path_and_query(), "/t?x=1");
        assert_eq!(u.to_string(), "ws://[::1]:8080/t?x=1");
    }

    #[test]
    fn bad_ws_urls() {
        for (bad, problem) in [
            ("https://hub/t", "has the wrong scheme"),
            ("wss:///t", "has no host"),
            ("wss://hub", "has no path"),
            ("wss://hub?x", "has no path"),
            ("wss://hub/t#x", "has a fragment"),
            ("wss://u:secret@hub/t", "holds credentials"),
            ("hub/t", "is not a URL"),
        ] {
            let err = WsUrl::parse(bad).unwrap_err();
            assert_eq!(err.problem, problem, "{bad}");
            assert!(!err.to_string().contains("secret"), "{err}");
        }
    }
}
