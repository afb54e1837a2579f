//! Reading environment overrides through a caller-supplied lookup.
//!
//! The core never reads the process environment itself: callers pass a lookup such as
//! `|name| std::env::var(name).ok()`, and tests pass a map. A variable's value has surrounding
//! whitespace removed, and a variable that is unset or empty leaves the YAML value alone.

use std::str::FromStr;

use super::error::ConfigError;

/// The environment as a function from a variable name to its value.
pub(crate) struct Env<F> {
    lookup: F,
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    /// Wraps `lookup`.
    pub(crate) fn new(lookup: F) -> Self {
        Env { lookup }
    }

    /// The trimmed value of `var`, or `None` when it is unset or empty.
    pub(crate) fn get(&self, var: &str) -> Option<String> {
        let value = (self.lookup)(var)?;
        let value = value.trim();
        (!value.is_empty()).then(|| value.to_owned())
    }

    /// The value of `var` parsed with `FromStr`, or an error naming `var` and the value.
    pub(crate) fn parse<T: FromStr>(
        &self,
        var: &str,
        expected: &str,
    ) -> Result<Option<T>, ConfigError> {
        match self.get(var) {
            None => Ok(None),
            Some(value) => value.parse().map(Some).map_err(|_| {
                ConfigError::invalid(var, &value, "is not accepted", expected.to_owned())
            }),
        }
    }

    /// The value of `var` as a boolean: `true`, `false`, `1` or `0` (case-insensitive).
    pub(crate) fn bool(&self, var: &str) -> Result<Option<bool>, ConfigError> {
        let Some(value) = self.get(var) else {
            return Ok(None);
        };
        match value.to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(Some(true)),
            "false" | "0" => Ok(Some(false)),
            _ => Err(ConfigError::invalid(
                var,
                &value,
                "is not a boolean",
                "true, false, 1 or 0",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> Env<impl Fn(&str) -> Option<String>> {
        Env::new(move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn empty_and_unset_are_the_same() {
        let e = env(&[("A", ""), ("B", "  "), ("C", " x ")]);
        assert_eq!(e.get("A"), None);
        assert_eq!(e.get("B"), None);
        assert_eq!(e.get("C").as_deref(), Some("x"));
        assert_eq!(e.get("D"), None);
    }

    #[test]
    fn booleans() {
        let e = env(&[
            ("T", "TRUE"),
            ("O", "1"),
            ("F", "false"),
            ("Z", "0"),
            ("X", "yes"),
        ]);
        assert_eq!(e.bool("T").unwrap(), Some(true));
        assert_eq!(e.bool("O").unwrap(), Some(true));
        assert_eq!(e.bool("F").unwrap(), Some(false));
        assert_eq!(e.bool("Z").unwrap(), Some(false));
        assert_eq!(e.bool("unset").unwrap(), None);
        let err = e.bool("X").unwrap_err();
        assert_eq!(
            err.to_string(),
            "X: `yes` is not a boolean, expected true, false, 1 or 0"
        );
    }
}
