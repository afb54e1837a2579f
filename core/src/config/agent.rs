//! The agent's configuration: YAML (`--config`), `NC_*` environment overrides and validation.
//!
//! Each YAML key is the snake_case form of its environment variable without the `NC_` prefix
//! (`NC_HUB_URL` is `hub_url`). A variable that is set and non-empty replaces the YAML value
//! entirely; lists and maps are not merged.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::error::ConfigError;
use super::target::{TARGET_EXPECTED, TargetAddr};
use super::url::{WS_URL_EXPECTED, WsUrl};
use super::words::{LogFormat, LogLevel, deserialize_auto_or_count, parse_auto_or_count};
use super::{check, env::Env, yaml};
use crate::name::ConnectorName;

/// The whole agent configuration.
///
/// Build it with [`AgentConfig::load`]. [`AgentConfig::default`] is not valid on its own:
/// `hub_url`, `agent_id`, `token_file` and `connectors` have no default.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The hubs to keep sessions to (YAML `hub_url`, env `NC_HUB_URL`): a list of URLs, or
    /// one string of comma-separated URLs. Required, at least one; each a `wss://` or `ws://`
    /// URL with a host and a path; no URL twice.
    #[serde(rename = "hub_url", deserialize_with = "deserialize_hub_urls")]
    pub hub_urls: Vec<WsUrl>,
    /// This agent's identity (`agent_id`, `NC_AGENT_ID`); must equal the token's `agent_id`
    /// claim. Required; 1 to 128 characters from `[A-Za-z0-9._:@-]`, so that it is safe in
    /// logs and metric labels while allowing `host:instance` and `name@site` forms.
    pub agent_id: String,
    /// The file holding the access token, re-read on every connect (`token_file`,
    /// `NC_TOKEN_FILE`). Required, non-empty.
    pub token_file: PathBuf,
    /// The connectors this agent serves, name → target (`connectors`, `NC_CONNECTORS` as
    /// `name=host:port,name2=host:port`). Required, at least one.
    pub connectors: BTreeMap<ConnectorName, TargetAddr>,
    /// Sessions per hub (`lanes`, `NC_LANES`). Default `auto`: the hub's shard count, learnt
    /// from WELCOME. A count is 1 to 64.
    pub lanes: Lanes,
    /// Whether to honour `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` (`trust_env`,
    /// `NC_TRUST_ENV`). Default `false`.
    pub trust_env: bool,
    /// An extra trusted CA bundle; the system's roots are always trusted (`ca_file`,
    /// `NC_CA_FILE`). Default: absent. Non-empty when set.
    pub ca_file: Option<PathBuf>,
    /// Client certificate for mTLS (`client_cert`, `NC_CLIENT_CERT`). Default: absent. Set
    /// together with `client_key` or not at all.
    pub client_cert: Option<PathBuf>,
    /// Private key of `client_cert` (`client_key`, `NC_CLIENT_KEY`). Default: absent. Set
    /// together with `client_cert` or not at all.
    pub client_key: Option<PathBuf>,
    /// Private key for DPoP proofs (`dpop_key_file`, `NC_DPOP_KEY_FILE`). Default: absent, no
    /// DPoP. Non-empty when set.
    pub dpop_key_file: Option<PathBuf>,
    /// Where to serve `GET /healthz` and `/readyz` (`health_addr`, `NC_HEALTH_ADDR`). Default:
    /// absent, no health listener.
    pub health_addr: Option<SocketAddr>,
    /// Log line format (`log_format`, `NC_LOG_FORMAT`). Default `text`.
    pub log_format: LogFormat,
    /// Most verbose log level (`log_level`, `NC_LOG_LEVEL`). Default `info`.
    pub log_level: LogLevel,
    /// How long a dial to a target may take before the stream is reset with code 2
    /// (`dial_timeout_ms`, `NC_DIAL_TIMEOUT_MS`). Default 10000; 1 to 300000.
    pub dial_timeout_ms: u64,
    /// Whether large DATA payloads from a plain (`ws://`) hub connection go on to their target
    /// by `splice(2)` through a pipe per stream, instead of being read into the agent's memory
    /// and written out again (`splice`, `NC_SPLICE`). Default `true`. TLS sessions always use
    /// buffers.
    pub splice: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            hub_urls: Vec::new(),
            agent_id: String::new(),
            token_file: PathBuf::new(),
            connectors: BTreeMap::new(),
            lanes: Lanes::Auto,
            trust_env: false,
            ca_file: None,
            client_cert: None,
            client_key: None,
            dpop_key_file: None,
            health_addr: None,
            log_format: LogFormat::Text,
            log_level: LogLevel::Info,
            dial_timeout_ms: 10_000,
            splice: true,
        }
    }
}

/// Sessions an agent keeps to each hub.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Lanes {
    /// As many as the hub has shards, learnt from WELCOME. The default.
    #[default]
    Auto,
    /// Exactly this many, from 1 to [`MAX_LANES`].
    Count(u32),
}

/// The largest lane count accepted.
pub const MAX_LANES: u32 = 64;

/// What `lanes` and `NC_LANES` accept.
const LANES_EXPECTED: &str = "auto or an integer from 1 to 64";

impl Lanes {
    fn check(self, key: &str) -> Result<(), ConfigError> {
        match self {
            Lanes::Count(n) if !(1..=MAX_LANES).contains(&n) => Err(ConfigError::invalid(
                key,
                n,
                "is out of range",
                LANES_EXPECTED,
            )),
            _ => Ok(()),
        }
    }
}

impl<'de> Deserialize<'de> for Lanes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(
            match deserialize_auto_or_count(deserializer, LANES_EXPECTED)? {
                None => Lanes::Auto,
                Some(n) => Lanes::Count(n),
            },
        )
    }
}

/// Reads `hub_url` as a list of URLs or as one comma-separated string.
fn deserialize_hub_urls<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<WsUrl>, D::Error> {
    struct Urls;

    impl<'de> Visitor<'de> for Urls {
        type Value = Vec<WsUrl>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of wss:// URLs or a comma-separated string of them")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<WsUrl>, E> {
            split_list(v)
                .map(|url| WsUrl::parse(url).map_err(E::custom))
                .collect()
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<WsUrl>, A::Error> {
            let mut urls = Vec::new();
            while let Some(url) = seq.next_element::<WsUrl>()? {
                urls.push(url);
            }
            Ok(urls)
        }
    }

    deserializer.deserialize_any(Urls)
}

/// The non-empty, trimmed entries of a comma-separated list.
fn split_list(list: &str) -> impl Iterator<Item = &str> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
}

/// Whether `b` may appear in an agent id.
fn is_agent_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@')
}

/// What `agent_id` accepts.
const AGENT_ID_EXPECTED: &str = "1 to 128 characters from [A-Za-z0-9._:@-]";

/// What `NC_CONNECTORS` accepts.
const CONNECTORS_EXPECTED: &str = "comma-separated name=host:port entries, names of 1 to 64 characters from [A-Za-z0-9._-], each name once";

/// The environment variables [`AgentConfig::apply_env`] reads, each replacing one key.
pub const AGENT_ENV_VARS: [&str; 14] = [
    "NC_HUB_URL",
    "NC_AGENT_ID",
    "NC_TOKEN_FILE",
    "NC_CONNECTORS",
    "NC_LANES",
    "NC_TRUST_ENV",
    "NC_CA_FILE",
    "NC_CLIENT_CERT",
    "NC_CLIENT_KEY",
    "NC_DPOP_KEY_FILE",
    "NC_HEALTH_ADDR",
    "NC_LOG_FORMAT",
    "NC_LOG_LEVEL",
    "NC_DIAL_TIMEOUT_MS",
];

impl AgentConfig {
    /// Parses a YAML document. Keys left out take their defaults; an empty document gives
    /// [`AgentConfig::default`]. Does not validate.
    pub fn from_yaml(text: &str) -> Result<AgentConfig, ConfigError> {
        yaml::from_str(text)
    }

    /// Replaces keys with the `NC_*` variables that are set and non-empty (surrounding
    /// whitespace is ignored): see [`AGENT_ENV_VARS`] and the field documentation for which
    /// variable sets which key. Each value is checked as it is read, and an error names the
    /// variable. `lookup` returns a variable's value, for instance
    /// `|name| std::env::var(name).ok()`.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let env = Env::new(lookup);
        if let Some(list) = env.get("NC_HUB_URL") {
            self.hub_urls = split_list(&list)
                .map(|url| {
                    WsUrl::parse(url).map_err(|err| {
                        ConfigError::invalid("NC_HUB_URL", &err.url, err.problem, WS_URL_EXPECTED)
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(id) = env.get("NC_AGENT_ID") {
            check::identifier("NC_AGENT_ID", &id, 128, is_agent_id_byte, AGENT_ID_EXPECTED)?;
            self.agent_id = id;
        }
        if let Some(path) = env.get("NC_TOKEN_FILE") {
            self.token_file = PathBuf::from(path);
        }
        if let Some(list) = env.get("NC_CONNECTORS") {
            self.connectors = parse_connectors(&list)?;
        }
        if let Some(lanes) = env.get("NC_LANES") {
            self.lanes = match parse_auto_or_count(&lanes) {
                Some(None) => Lanes::Auto,
                Some(Some(n)) => Lanes::Count(n),
                None => {
                    return Err(ConfigError::invalid(
                        "NC_LANES",
                        &lanes,
                        "is not accepted",
                        LANES_EXPECTED,
                    ));
                }
            };
            self.lanes.check("NC_LANES")?;
        }
        if let Some(trust) = env.bool("NC_TRUST_ENV")? {
            self.trust_env = trust;
        }
        for (var, slot) in [
            ("NC_CA_FILE", &mut self.ca_file),
            ("NC_CLIENT_CERT", &mut self.client_cert),
            ("NC_CLIENT_KEY", &mut self.client_key),
            ("NC_DPOP_KEY_FILE", &mut self.dpop_key_file),
        ] {
            if let Some(path) = env.get(var) {
                *slot = Some(PathBuf::from(path));
            }
        }
        if let Some(addr) = env.parse(
            "NC_HEALTH_ADDR",
            "an IP address and port such as 127.0.0.1:8081 or [::1]:8081",
        )? {
            self.health_addr = Some(addr);
        }
        if let Some(format) = env.parse("NC_LOG_FORMAT", LogFormat::EXPECTED)? {
            self.log_format = format;
        }
        if let Some(level) = env.parse("NC_LOG_LEVEL", LogLevel::EXPECTED)? {
            self.log_level = level;
        }
        if let Some(ms) = env.parse::<u64>("NC_DIAL_TIMEOUT_MS", "an integer from 1 to 300000")? {
            check::range("NC_DIAL_TIMEOUT_MS", ms, 1, 300_000)?;
            self.dial_timeout_ms = ms;
        }
        if let Some(splice) = env.bool("NC_SPLICE")? {
            self.splice = splice;
        }
        Ok(())
    }

    /// Checks every rule documented on the fields. The first broken rule is returned, naming
    /// its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.hub_urls.is_empty() {
            return Err(ConfigError::missing(
                "hub_url",
                format!("at least one hub: {WS_URL_EXPECTED} (in the YAML or NC_HUB_URL)"),
            ));
        }
        for (i, url) in self.hub_urls.iter().enumerate() {
            if self.hub_urls[..i].contains(url) {
                return Err(ConfigError::invalid(
                    format!("hub_url[{i}]"),
                    url,
                    "is listed twice",
                    "each hub URL once",
                ));
            }
        }
        if self.agent_id.is_empty() {
            return Err(ConfigError::missing(
                "agent_id",
                format!("{AGENT_ID_EXPECTED} (in the YAML or NC_AGENT_ID)"),
            ));
        }
        check::identifier(
            "agent_id",
            &self.agent_id,
            128,
            is_agent_id_byte,
            AGENT_ID_EXPECTED,
        )?;
        if self.token_file.as_os_str().is_empty() {
            return Err(ConfigError::missing(
                "token_file",
                "the path of the file holding the access token (in the YAML or NC_TOKEN_FILE)",
            ));
        }
        if self.connectors.is_empty() {
            return Err(ConfigError::missing(
                "connectors",
                "at least one connector as name: host:port (in the YAML, or NC_CONNECTORS as name=host:port,…)",
            ));
        }
        self.lanes.check("lanes")?;
        for (key, path) in [
            ("ca_file", &self.ca_file),
            ("client_cert", &self.client_cert),
            ("client_key", &self.client_key),
            ("dpop_key_file", &self.dpop_key_file),
        ] {
            if let Some(path) = path {
                check::file_path(key, path)?;
            }
        }
        match (&self.client_cert, &self.client_key) {
            (Some(cert), None) => {
                return Err(ConfigError::invalid(
                    "client_key",
                    "",
                    format!("is not set while client_cert is `{}`", cert.display()),
                    "client_cert and client_key (NC_CLIENT_CERT, NC_CLIENT_KEY) both set or both unset",
                ));
            }
            (None, Some(key)) => {
                return Err(ConfigError::invalid(
                    "client_cert",
                    "",
                    format!("is not set while client_key is `{}`", key.display()),
                    "client_cert and client_key (NC_CLIENT_CERT, NC_CLIENT_KEY) both set or both unset",
                ));
            }
            _ => {}
        }
        check::range("dial_timeout_ms", self.dial_timeout_ms, 1, 300_000)
    }

    /// Parses `yaml` when given ([`from_yaml`](Self::from_yaml); `None` means no file, all
    /// defaults), applies the environment ([`apply_env`](Self::apply_env)) and validates
    /// ([`validate`](Self::validate)).
    pub fn load(
        yaml: Option<&str>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<AgentConfig, ConfigError> {
        let mut config = match yaml {
            Some(text) => AgentConfig::from_yaml(text)?,
            None => AgentConfig::default(),
        };
        config.apply_env(lookup)?;
        config.validate()?;
        Ok(config)
    }
}

/// Parses `NC_CONNECTORS`: `name=host:port` entries separated by commas.
fn parse_connectors(list: &str) -> Result<BTreeMap<ConnectorName, TargetAddr>, ConfigError> {
    const VAR: &str = "NC_CONNECTORS";
    let mut connectors = BTreeMap::new();
    for entry in split_list(list) {
        let (name, target) = entry
            .split_once('=')
            .ok_or_else(|| ConfigError::invalid(VAR, entry, "has no `=`", CONNECTORS_EXPECTED))?;
        let name = ConnectorName::from_str(name.trim()).map_err(|err| {
            ConfigError::invalid(
                VAR,
                entry,
                format!("has a bad name ({err})"),
                CONNECTORS_EXPECTED,
            )
        })?;
        let target = TargetAddr::parse(target.trim())
            .map_err(|err| ConfigError::invalid(VAR, entry, err.problem, TARGET_EXPECTED))?;
        if connectors.insert(name, target).is_some() {
            return Err(ConfigError::invalid(
                VAR,
                entry,
                "names a connector twice",
                CONNECTORS_EXPECTED,
            ));
        }
    }
    Ok(connectors)
}

#[cfg(test)]
mod tests;
