//! Connector names.
//!
//! A connector name is what ties a hub listener to the agents that serve it. It travels in HELLO,
//! WELCOME, OPEN frames, configuration and metric labels, so its character set is deliberately
//! narrow: `[A-Za-z0-9._-]{1,64}`. That keeps it safe to log, to use as a label value and to
//! compare byte for byte.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest connector name, in bytes.
pub const MAX_CONNECTOR_NAME: usize = 64;

/// A validated connector name, stored inline so that decoding an OPEN frame allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectorName {
    len: u8,
    bytes: [u8; MAX_CONNECTOR_NAME],
}

/// Why a string is not a connector name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("connector name is empty")]
    Empty,
    /// The name is longer than [`MAX_CONNECTOR_NAME`] bytes.
    #[error("connector name is {0} bytes long, at most 64 are allowed")]
    TooLong(usize),
    /// The name holds a byte outside `[A-Za-z0-9._-]`.
    #[error("connector name holds a character outside [A-Za-z0-9._-] at byte {0}")]
    BadChar(usize),
}

impl ConnectorName {
    /// Validates `bytes` as a connector name.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, NameError> {
        if bytes.is_empty() {
            return Err(NameError::Empty);
        }
        if bytes.len() > MAX_CONNECTOR_NAME {
            return Err(NameError::TooLong(bytes.len()));
        }
        if let Some(at) = bytes.iter().position(|&b| !is_name_byte(b)) {
            return Err(NameError::BadChar(at));
        }
        let mut name = ConnectorName {
            len: bytes.len() as u8,
            bytes: [0; MAX_CONNECTOR_NAME],
        };
        name.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(name)
    }

    /// Validates `s` as a connector name.
    // Not `FromStr::from_str` alone: callers on the hot path decode from bytes.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(s: &str) -> Result<Self, NameError> {
        Self::from_bytes(s.as_bytes())
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        // Every byte was checked to be ASCII in `from_bytes`.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// Whether `b` may appear in a connector name.
pub fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

impl std::str::FromStr for ConnectorName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::from_bytes(s.as_bytes())
    }
}

impl fmt::Display for ConnectorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ConnectorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl Serialize for ConnectorName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ConnectorName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        ConnectorName::from_str(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_charset() {
        for ok in ["ldap", "pg-main", "a.b_c-d", "X", &"a".repeat(64)] {
            let name = ConnectorName::from_str(ok).unwrap();
            assert_eq!(name.as_str(), ok);
        }
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!(ConnectorName::from_str(""), Err(NameError::Empty));
        assert_eq!(
            ConnectorName::from_str(&"a".repeat(65)),
            Err(NameError::TooLong(65))
        );
        assert_eq!(ConnectorName::from_str("ld ap"), Err(NameError::BadChar(2)));
        assert_eq!(ConnectorName::from_str("é"), Err(NameError::BadChar(0)));
        assert_eq!(ConnectorName::from_str("a/b"), Err(NameError::BadChar(1)));
    }

    #[test]
    fn serde_round_trip_validates() {
        let name: ConnectorName = serde_json::from_str("\"pg\"").unwrap();
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"pg\"");
        assert!(serde_json::from_str::<ConnectorName>("\"p g\"").is_err());
    }
}
