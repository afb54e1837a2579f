//! Configuration errors, each rendered as one line an operator can act on.

use std::fmt;

/// Why a configuration was rejected.
///
/// Every variant names the key it is about: a dotted YAML path such as `limits.heartbeat_ms` or
/// `listeners[1].listen`, or an environment variable such as `NOWCONNECT_SHARDS`. The
/// [`Display`](fmt::Display) form is a single line holding the key, the offending value and
/// what is expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The YAML text is malformed, or a value has the wrong type, or a key is unknown or
    /// missing. `message` is the YAML library's message, flattened to one line, with the
    /// position in the text.
    #[error("{key}: {message}")]
    Yaml {
        /// The dotted path of the key being read, or `(document)` for the top level.
        key: String,
        /// What went wrong, with line and column.
        message: String,
    },
    /// A value is well-formed but outside what the key accepts.
    #[error("{key}: `{value}` {problem}, expected {expected}")]
    Invalid {
        /// The YAML path or environment variable holding the value.
        key: String,
        /// The offending value, made printable on one line.
        value: String,
        /// What is wrong with it, for instance `is out of range`.
        problem: String,
        /// What the key accepts.
        expected: String,
    },
    /// A key that has no default was not given.
    #[error("{key} is not set, expected {expected}")]
    Missing {
        /// The YAML path of the key.
        key: String,
        /// What to set and where, for instance the environment variable that also sets it.
        expected: String,
    },
}

impl ConfigError {
    /// The YAML path or environment variable the error is about.
    pub fn key(&self) -> &str {
        match self {
            ConfigError::Yaml { key, .. }
            | ConfigError::Invalid { key, .. }
            | ConfigError::Missing { key, .. } => key,
        }
    }

    /// An [`Invalid`](ConfigError::Invalid) error; `value` is made printable on one line.
    pub(crate) fn invalid(
        key: impl Into<String>,
        value: impl fmt::Display,
        problem: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            value: one_line(&value.to_string()),
            problem: problem.into(),
            expected: expected.into(),
        }
    }

    /// A [`Missing`](ConfigError::Missing) error.
    pub(crate) fn missing(key: impl Into<String>, expected: impl Into<String>) -> Self {
        ConfigError::Missing {
            key: key.into(),
            expected: expected.into(),
        }
    }
}

/// The longest value shown in an error, in characters; longer values are cut with `…`.
const MAX_SHOWN: usize = 200;

/// Escapes control characters (newlines included) and cuts long text, so that an error
/// stays on one line whatever the configuration held.
pub(crate) fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_SHOWN + 8));
    for (i, c) in text.chars().enumerate() {
        if i == MAX_SHOWN {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
