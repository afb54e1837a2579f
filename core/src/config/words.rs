//! Settings that take one word from a fixed set, and `auto`-or-a-number settings.
//!
//! Each word type reads the same way from YAML and from the environment, so an operator sees
//! the same message whichever way the value came in.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

/// Why a word was not one of those a setting accepts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{word}` is not accepted, expected {expected}")]
pub struct ParseWordError {
    /// The rejected text.
    pub word: String,
    /// The accepted words, for instance `json or text`.
    pub expected: &'static str,
}

/// Declares an enum of words with `FromStr`, `Display` and `Deserialize` going through the
/// same table.
macro_rules! word_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident expecting $expected:literal $(default $default:ident)? {
            $($(#[$vmeta:meta])* $variant:ident = $word:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// The accepted words, for error messages.
            pub const EXPECTED: &'static str = $expected;

            /// The word for this value, as written in configuration.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)*
                }
            }
        }

        $(
            impl Default for $name {
                fn default() -> Self {
                    $name::$default
                }
            }
        )?

        impl ::std::str::FromStr for $name {
            type Err = $crate::config::ParseWordError;

            fn from_str(s: &str) -> Result<Self, $crate::config::ParseWordError> {
                match s {
                    $($word => Ok($name::$variant),)*
                    _ => Err($crate::config::ParseWordError {
                        word: $crate::config::error::one_line(s),
                        expected: $expected,
                    }),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let word = <::std::borrow::Cow<'de, str> as ::serde::Deserialize>::deserialize(deserializer)?;
                word.parse().map_err(<D::Error as ::serde::de::Error>::custom)
            }
        }
    };
}

pub(crate) use word_enum;

word_enum! {
    /// The format of log lines.
    pub enum LogFormat expecting "json or text" {
        /// One JSON object a line.
        Json = "json",
        /// Human-readable text.
        Text = "text",
    }
}

word_enum! {
    /// The most verbose level of log lines emitted.
    pub enum LogLevel expecting "error, warn, info, debug or trace" {
        /// Errors only.
        Error = "error",
        /// Warnings and errors.
        Warn = "warn",
        /// Normal operation: sessions, listeners, configuration.
        Info = "info",
        /// Per-stream detail.
        Debug = "debug",
        /// Everything, including per-frame detail.
        Trace = "trace",
    }
}

/// Parses `auto` (as `None`) or a decimal count.
pub(crate) fn parse_auto_or_count(text: &str) -> Option<Option<u32>> {
    if text == "auto" {
        return Some(None);
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().map(Some)
}

/// Reads `auto` (as `None`) or a count, from a YAML word or integer. `expected` describes the
/// accepted values in the error.
pub(crate) fn deserialize_auto_or_count<'de, D: Deserializer<'de>>(
    deserializer: D,
    expected: &'static str,
) -> Result<Option<u32>, D::Error> {
    struct AutoOrCount(&'static str);

    impl AutoOrCount {
        fn fail<E: de::Error>(&self, shown: impl fmt::Display) -> E {
            E::custom(format_args!(
                "`{}` is not accepted, expected {}",
                super::error::one_line(&shown.to_string()),
                self.0
            ))
        }
    }

    impl Visitor<'_> for AutoOrCount {
        type Value = Option<u32>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<u32>, E> {
            u32::try_from(v).map(Some).map_err(|_| self.fail(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<u32>, E> {
            u32::try_from(v).map(Some).map_err(|_| self.fail(v))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<u32>, E> {
            parse_auto_or_count(v).ok_or_else(|| self.fail(v))
        }
    }

    deserializer.deserialize_any(AutoOrCount(expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for level in [
            LogLevel::Error,
            LogLevel::Warn,
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Trace,
        ] {
            assert_eq!(level.as_str().parse::<LogLevel>().unwrap(), level);
        }
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!(LogFormat::Text.to_string(), "text");
        let err = "JSON".parse::<LogFormat>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "`JSON` is not accepted, expected json or text"
        );
    }

    #[test]
    fn auto_or_count() {
        assert_eq!(parse_auto_or_count("auto"), Some(None));
        assert_eq!(parse_auto_or_count("12"), Some(Some(12)));
        for bad in ["", "-1", "+1", "Auto", "1.5", "99999999999"] {
            assert_eq!(parse_auto_or_count(bad), None, "{bad}");
        }
    }
}
