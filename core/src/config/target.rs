//! The `host:port` an agent dials for a connector.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// Where an agent connects for a connector's streams: a host and a TCP port.
///
/// Written `host:port`, with an IPv6 address in brackets (`[::1]:389`). The host is a DNS name
/// (letters, digits, `.`, `-`, `_`; at most 253 bytes), an IPv4 address or a bracketed IPv6
/// address; the port is 1 to 65535.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetAddr {
    host: String,
    port: u16,
}

/// What a [`TargetAddr`] must look like, for error messages.
pub(crate) const TARGET_EXPECTED: &str =
    "host:port with a port from 1 to 65535, an IPv6 host in brackets as in [::1]:389";

/// Why a string is not a [`TargetAddr`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` {problem}, expected {TARGET_EXPECTED}")]
pub struct TargetAddrError {
    /// The rejected text.
    pub text: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl TargetAddr {
    /// Validates `text` as `host:port`.
    pub fn parse(text: &str) -> Result<Self, TargetAddrError> {
        let fail = |problem| TargetAddrError {
            text: super::error::one_line(text),
            problem,
        };
        let (host, port) = text.rsplit_once(':').ok_or_else(|| fail("has no port"))?;
        let host = if let Some(inner) = host.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| fail("has an unclosed ["))?;
            inner
                .parse::<Ipv6Addr>()
                .map_err(|_| fail("has a bad IPv6 address"))?;
            inner
        } else {
            if host.contains(':') {
                return Err(fail("has an IPv6 address without brackets"));
            }
            host
        };
        if host.is_empty() {
            return Err(fail("has no host"));
        }
        let name_ok = host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
        if !name_ok {
            return Err(fail("has a bad host"));
        }
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(fail("has a bad port"));
        }
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(fail("has a port out of range")),
        };
        Ok(TargetAddr {
            host: host.to_owned(),
            port,
        })
    }

    /// The host: a DNS name or an IP address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port, 1 to 65535.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host as an IP address, when it is one rather than a name.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for TargetAddr {
    /// `host:port`, with an IPv6 host in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl FromStr for TargetAddr {
    type Err = TargetAddrError;

    fn from_str(s: &str) -> Result<Self, TargetAddrError> {
        TargetAddr::parse(s)
    }
}

impl<'de> Deserialize<'de> for TargetAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        TargetAddr::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = TargetAddr::parse("ldap.internal:389").unwrap();
        assert_eq!((t.host(), t.port()), ("ldap.internal", 389));
        assert_eq!(t.ip(), None);
        let t = TargetAddr::parse("10.0.0.5:5432").unwrap();
        assert_eq!(t.ip(), Some("10.0.0.5".parse().unwrap()));
        let t = TargetAddr::parse("[::1]:636").unwrap();
        assert_eq!(t.host(), "::1");
        assert_eq!(t.to_string(), "[::1]:636");
        assert_eq!(TargetAddr::parse("h:65535").unwrap().to_string(), "h:65535");
    }

    #[test]
    fn rejects_bad_targets() {
        for (bad, problem) in [
            ("ldap", "has no port"),
            (":389", "has no host"),
            ("::1:389", "without brackets"),
            ("[::1:389", "unclosed"),
            ("[zz]:389", "bad IPv6"),
            ("ldap:0", "out of range"),
            ("ldap:65536", "out of range"),
            ("ldap:", "bad port"),
            ("ldap:+1", "bad port"),
            ("ld ap:389", "bad host"),
        ] {
            let err = TargetAddr::parse(bad).unwrap_err();
            assert!(err.problem.contains(problem), "{bad}: {err}");
        }
    }
}
