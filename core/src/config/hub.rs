//! The hub's configuration: YAML, environment overrides and validation.
//!
//! Every key has a default except `security.jwks_url` and `security.audience`, which
//! [`HubConfig::validate`] requires so that a hub never accepts agents unauthenticated.
//! Unknown keys are errors at every level, so a misspelt key is reported rather than ignored.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::error::ConfigError;
use super::url::WsUrl;
use super::words::{
    LogFormat, LogLevel, deserialize_auto_or_count, parse_auto_or_count, word_enum,
};
use super::{check, env::Env, yaml};
use crate::cidr::CidrList;
use crate::name::ConnectorName;

/// The whole hub configuration, as read from YAML (`--config` or `NOWCONNECT_CONFIG`).
///
/// Build it with [`HubConfig::load`], which parses, applies the environment and validates.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// The name of this hub replica, sent to agents in WELCOME and used in logs and metrics.
    /// Default `hub`; 1 to 64 characters from `[A-Za-z0-9._-]`.
    pub replica_id: String,
    /// Shards and I/O driver (`hub:`).
    pub hub: RuntimeConfig,
    /// The listener agents connect to (`tunnel:`).
    pub tunnel: TunnelConfig,
    /// The health and metrics listener (`admin:`).
    pub admin: AdminConfig,
    /// The client-facing listeners, each bound to one connector. Default: none. Every
    /// `listen` address must differ from the others, from `tunnel.listen` and from
    /// `admin.listen`.
    pub listeners: Vec<ListenerConfig>,
    /// Agent authentication and client admission (`security:`).
    pub security: SecurityConfig,
    /// The optional policy decision point asked before each stream opens. Default: absent,
    /// no PDP is asked.
    pub pdp: Option<PdpConfig>,
    /// Protocol limits and timers (`limits:`).
    pub limits: LimitsConfig,
    /// Log output (`logging:`).
    pub logging: LoggingConfig,
}

impl Default for HubConfig {
    /// Every documented default. Not valid on its own: `security.jwks_url` and
    /// `security.audience` have no default.
    fn default() -> Self {
        HubConfig {
            replica_id: "hub".to_owned(),
            hub: RuntimeConfig::default(),
            tunnel: TunnelConfig::default(),
            admin: AdminConfig::default(),
            listeners: Vec::new(),
            security: SecurityConfig::default(),
            pdp: None,
            limits: LimitsConfig::default(),
            logging: LoggingConfig::default(),
        }
    }
}

/// The `hub:` section: how the hub spreads work over cores.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// How many shards (threads, one per core) to run. Default `auto`.
    pub shards: Shards,
    /// The I/O driver. Default `auto`.
    pub driver: Driver,
    /// Buffers in each shard's io_uring provided-buffer ring for client receives (multishot
    /// receive). Default 0: no ring, clients are read when readable, as under epoll. 8 to
    /// 16384 turn the ring on, rounded up to a power of two. Unused under epoll.
    pub recv_buffers: u32,
    /// Whether a bulk client stream's bytes go to a plain (non-TLS) agent connection with
    /// `splice(2)`, without being copied through the hub. Default true.
    pub splice: bool,
}

impl Default for RuntimeConfig {
    fn default() -> RuntimeConfig {
        RuntimeConfig {
            shards: Shards::default(),
            driver: Driver::default(),
            recv_buffers: 0,
            splice: true,
        }
    }
}

/// The number of shards: `auto` or a count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Shards {
    /// One shard per core the process may run on. The default.
    #[default]
    Auto,
    /// Exactly this many shards, from 1 to [`MAX_SHARDS`].
    Count(u32),
}

/// The largest shard count accepted.
pub const MAX_SHARDS: u32 = 1024;

/// What `hub.shards` and `NOWCONNECT_SHARDS` accept.
const SHARDS_EXPECTED: &str = "auto or an integer from 1 to 1024";

impl Shards {
    /// Parses `auto` or a count from 1 to [`MAX_SHARDS`], reporting errors under `key`.
    fn parse(key: &str, text: &str) -> Result<Shards, ConfigError> {
        let shards = match parse_auto_or_count(text) {
            Some(None) => Shards::Auto,
            Some(Some(n)) => Shards::Count(n),
            None => {
                return Err(ConfigError::invalid(
                    key,
                    text,
                    "is not accepted",
                    SHARDS_EXPECTED,
                ));
            }
        };
        shards.check(key)?;
        Ok(shards)
    }

    fn check(self, key: &str) -> Result<(), ConfigError> {
        match self {
            Shards::Count(n) if !(1..=MAX_SHARDS).contains(&n) => Err(ConfigError::invalid(
                key,
                n,
                "is out of range",
                SHARDS_EXPECTED,
            )),
            _ => Ok(()),
        }
    }
}

impl<'de> Deserialize<'de> for Shards {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(
            match deserialize_auto_or_count(deserializer, SHARDS_EXPECTED)? {
                None => Shards::Auto,
                Some(n) => Shards::Count(n),
            },
        )
    }
}

word_enum! {
    /// The hub's I/O driver.
    pub enum Driver expecting "auto, io_uring or epoll" default Auto {
        /// io_uring, falling back to epoll where io_uring cannot be set up. The default.
        Auto = "auto",
        /// io_uring only; the hub fails to start without it.
        IoUring = "io_uring",
        /// epoll only.
        Epoll = "epoll",
    }
}

/// The `tunnel:` section: where agents connect.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TunnelConfig {
    /// The address the tunnel listener binds. Default `0.0.0.0:8443`.
    pub listen: SocketAddr,
    /// The HTTP path of the WebSocket upgrade. Default `/nowconnect/v1/tunnel`; must start
    /// with `/`, be at most 1024 bytes of visible ASCII, and hold no `?` or `#`.
    pub path: String,
    /// The URL agents use to reach this tunnel, when it differs from what `listen` suggests
    /// (behind a load balancer or ingress); DPoP proofs must name it as `htu` (without it,
    /// the request's `Host` and path are used). Default: absent. Must be a `wss://` or
    /// `ws://` URL with a host and a path.
    pub public_url: Option<WsUrl>,
    /// TLS on the tunnel listener. Default: absent, plain `ws://` (for a TLS-terminating
    /// ingress in front).
    pub tls: Option<TlsConfig>,
    /// Source addresses agents may connect from; others get `403`. Default: empty, any.
    pub allow_cidrs: CidrList,
}

/// The default tunnel path.
pub const DEFAULT_TUNNEL_PATH: &str = "/nowconnect/v1/tunnel";

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8443),
            path: DEFAULT_TUNNEL_PATH.to_owned(),
            public_url: None,
            tls: None,
            allow_cidrs: CidrList::new(),
        }
    }
}

/// The `tunnel.tls:` section. `cert_file` and `key_file` have no default.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the tunnel listener. Required, non-empty.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`. Required, non-empty.
    pub key_file: PathBuf,
    /// PEM bundle of the CAs that client certificates must chain to. Default: absent.
    ///
    /// With `client_auth` `optional` or `required` it may be left out only when
    /// `security.mtls.require_bound_tokens` is true: the hub then accepts any client
    /// certificate the agent proves it holds (self-signed included) and trusts it only through
    /// the token's `cnf.x5t#S256` binding (RFC 8705). With `client_auth: none` it must be
    /// absent, since it would be silently ignored.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Whether agents present a client certificate. Default `none`.
    #[serde(default)]
    pub client_auth: ClientAuth,
}

word_enum! {
    /// Whether the tunnel listener asks agents for a TLS client certificate.
    pub enum ClientAuth expecting "none, optional or required" default None {
        /// No client certificate is requested. The default.
        None = "none",
        /// A certificate is requested; agents without one are still accepted.
        Optional = "optional",
        /// Agents without a certificate fail the TLS handshake.
        Required = "required",
    }
}

/// The `admin:` section: `/healthz`, `/readyz` and `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// The address the admin listener binds. Default `127.0.0.1:9090`.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090),
        }
    }
}

/// One entry of `listeners:`: a TCP port whose clients are tunnelled to a connector.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// The connector whose agents serve this listener. Required.
    pub connector: ConnectorName,
    /// The address to bind. Required; distinct from every other listen address of the hub
    /// (port 0, an ephemeral port, is exempt). Addresses conflict when the ports are equal and
    /// the IPs are equal or one is a wildcard covering the other: `0.0.0.0` covers every IPv4
    /// address, and `[::]` covers every address, since the hub binds it dual-stack.
    pub listen: SocketAddr,
    /// Client source addresses allowed on this listener, checked in addition to
    /// `security.allow_cidrs`. Default: empty, any.
    #[serde(default)]
    pub allow_cidrs: CidrList,
}

/// The `security:` section: who may register as an agent, and which clients may connect.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Where the keys that sign agent tokens are published. No default: required (here or in
    /// `NOWCONNECT_JWKS_URL`). `https://`, `http://` only to a loopback host (127.0.0.0/8,
    /// `::1`, `localhost`), or `file:///path`.
    pub jwks_url: Option<String>,
    /// The `aud` a token must carry. No default: required (here or in `NOWCONNECT_AUDIENCE`);
    /// non-empty.
    pub audience: Option<String>,
    /// The `iss` a token must carry. Default: absent, the issuer is not checked; non-empty
    /// when set.
    pub issuer: Option<String>,
    /// Client source addresses allowed on every listener. Default: empty, any.
    pub allow_cidrs: CidrList,
    /// Whether an agent may only register connectors its token grants by scope. Default
    /// `false`.
    pub require_connector_scopes: bool,
    /// The scope that grants a connector is this prefix followed by the connector's name.
    /// Default `connector:`; 1 to 64 printable characters without spaces.
    pub connector_scope_prefix: String,
    /// Whether tokens must declare themselves access tokens with `typ: at+jwt` (RFC 9068).
    /// Default `false`: `JWT` or no `typ` is accepted too, as some providers send.
    pub require_at_jwt_typ: bool,
    /// DPoP proof-of-possession (`dpop:`).
    pub dpop: DpopConfig,
    /// Certificate-bound tokens (`mtls:`).
    pub mtls: MtlsConfig,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            jwks_url: None,
            audience: None,
            issuer: None,
            allow_cidrs: CidrList::default(),
            require_connector_scopes: false,
            connector_scope_prefix: "connector:".to_owned(),
            require_at_jwt_typ: false,
            dpop: DpopConfig::default(),
            mtls: MtlsConfig::default(),
        }
    }
}

/// The `security.dpop:` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpopConfig {
    /// Whether every agent must present a DPoP-bound token (`cnf.jkt`) with the DPoP scheme
    /// and a valid proof (RFC 9449); Bearer tokens are then refused. Default `false`. Not
    /// together with `security.mtls.require_bound_tokens`.
    pub required: bool,
}

/// The `security.mtls:` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MtlsConfig {
    /// Whether every agent token must be bound to the agent's TLS client certificate
    /// (RFC 8705 `cnf.x5t#S256`). Default `false`. Needs `tunnel.tls.client_auth`
    /// `optional` or `required`.
    pub require_bound_tokens: bool,
}

word_enum! {
    /// The request and answer format a policy decision point speaks.
    pub enum PdpDialect expecting "authzen or legacy" default AuthZen {
        /// OpenID AuthZEN Authorization API 1.0: `url` is the PDP's base URL, decisions come
        /// from `POST {url}/access/v1/evaluation` and `/access/v1/evaluations`. The default.
        AuthZen = "authzen",
        /// The simplified form of earlier deployments: `POST {url}` with
        /// `{"subject":{"agent_id":…},"action":"connect",…}`, answered `{"allow":…,"ttl_sec":…}`.
        Legacy = "legacy",
    }
}

/// The `pdp:` section: an HTTP policy decision point asked before a stream opens.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PdpConfig {
    /// The PDP: its base URL (AuthZEN) or its decision endpoint (legacy). Required; an
    /// `http://` or `https://` URL with a host.
    pub url: String,
    /// The request format. Default `authzen`.
    #[serde(default)]
    pub dialect: PdpDialect,
    /// A file holding a bearer token sent as `Authorization: Bearer` to the PDP; re-read
    /// when it changes. Default: none, no `Authorization` header.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// How long to wait for a decision. Default 300; 1 to 60000.
    #[serde(default = "PdpConfig::default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long an allow decision is reused. Default 5000; 0 (no caching) to 86400000.
    /// Deny decisions are never cached.
    #[serde(default = "PdpConfig::default_cache_ttl_ms")]
    pub cache_ttl_ms: u64,
    /// Whether a stream may open when the PDP gives no decision (timeout, transport error,
    /// an error status or a malformed answer). Default `false`: it is refused. An explicit
    /// deny is never overridden.
    #[serde(default)]
    pub fail_open: bool,
}

impl PdpConfig {
    fn default_timeout_ms() -> u64 {
        300
    }

    fn default_cache_ttl_ms() -> u64 {
        5000
    }
}

/// The `limits:` section: windows, frame sizes and timers.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Credit window per stream and direction, announced in WELCOME. Default 262144;
    /// 1024 to 16777216.
    pub stream_window_bytes: u32,
    /// Largest DATA payload, announced in WELCOME. Default 65536; 1024 to 1048576, and at
    /// most `stream_window_bytes`, since a larger frame could never be sent within a window.
    pub max_frame_bytes: u32,
    /// A stream with no bytes either way for this long is reset (code 4). Default 300000;
    /// 1 to 604800000 (7 days).
    pub idle_timeout_ms: u64,
    /// How often idle streams are swept. Default 1000; 1 to 60000, and at most
    /// `idle_timeout_ms`.
    pub sweep_interval_ms: u64,
    /// How long an OPEN may wait for OPEN_OK before the client is reset. Default 10000;
    /// 1 to 600000.
    pub open_timeout_ms: u64,
    /// Ping interval; a session silent for three intervals is dead. Default 15000; 100 to
    /// 3600000.
    pub heartbeat_ms: u64,
    /// How long streams may finish after GOAWAY on shutdown. Default 30000; 1 to 3600000.
    pub drain_timeout_ms: u64,
    /// Streams open at once on one session; more are refused with RST 9. Default 65536;
    /// 1 to 1048576.
    pub max_streams_per_session: u32,
    /// How long an agent has from TCP accept to a complete HELLO. Default 10000; 1 to 600000.
    pub handshake_timeout_ms: u64,
    /// Tunnel connections in the handshake at once; more are closed at accept. Default 1024;
    /// 1 to 1048576.
    pub max_pending_handshakes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            stream_window_bytes: 262_144,
            max_frame_bytes: 65_536,
            idle_timeout_ms: 300_000,
            sweep_interval_ms: 1_000,
            open_timeout_ms: 10_000,
            heartbeat_ms: 15_000,
            drain_timeout_ms: 30_000,
            max_streams_per_session: 65_536,
            handshake_timeout_ms: 10_000,
            max_pending_handshakes: 1_024,
        }
    }
}

/// The `logging:` section.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// Line format. Default `json`.
    pub format: LogFormat,
    /// Most verbose level emitted. Default `info`.
    pub level: LogLevel,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: LogFormat::Json,
            level: LogLevel::Info,
        }
    }
}

/// The environment variables [`HubConfig::apply_env`] reads, each replacing one key.
pub const HUB_ENV_VARS: [&str; 7] = [
    "NOWCONNECT_JWKS_URL",
    "NOWCONNECT_AUDIENCE",
    "NOWCONNECT_ISSUER",
    "NOWCONNECT_REQUIRE_CONNECTOR_SCOPES",
    "NOWCONNECT_ALLOW_CIDRS",
    "NOWCONNECT_SHARDS",
    "NOWCONNECT_LOG_FORMAT",
];

impl HubConfig {
    /// Parses a YAML document. Keys left out take their defaults; an empty document gives
    /// [`HubConfig::default`]. Does not validate.
    pub fn from_yaml(text: &str) -> Result<HubConfig, ConfigError> {
        yaml::from_str(text)
    }

    /// Replaces keys with the environment variables that are set and non-empty (surrounding
    /// whitespace is ignored):
    ///
    /// - `NOWCONNECT_JWKS_URL` → `security.jwks_url`
    /// - `NOWCONNECT_AUDIENCE` → `security.audience`
    /// - `NOWCONNECT_ISSUER` → `security.issuer`
    /// - `NOWCONNECT_REQUIRE_CONNECTOR_SCOPES` (`true`, `false`, `1`, `0`) →
    ///   `security.require_connector_scopes`
    /// - `NOWCONNECT_ALLOW_CIDRS` (comma-separated) → `security.allow_cidrs`, replacing the list
    /// - `NOWCONNECT_SHARDS` (`auto` or 1 to 1024) → `hub.shards`
    /// - `NOWCONNECT_LOG_FORMAT` (`json` or `text`) → `logging.format`
    ///
    /// Each value is checked as it is read, and an error names the variable. `lookup` returns
    /// a variable's value, for instance `|name| std::env::var(name).ok()`.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let env = Env::new(lookup);
        if let Some(url) = env.get("NOWCONNECT_JWKS_URL") {
            check::jwks_url("NOWCONNECT_JWKS_URL", &url)?;
            self.security.jwks_url = Some(url);
        }
        if let Some(audience) = env.get("NOWCONNECT_AUDIENCE") {
            self.security.audience = Some(audience);
        }
        if let Some(issuer) = env.get("NOWCONNECT_ISSUER") {
            self.security.issuer = Some(issuer);
        }
        if let Some(required) = env.bool("NOWCONNECT_REQUIRE_CONNECTOR_SCOPES")? {
            self.security.require_connector_scopes = required;
        }
        if let Some(list) = env.get("NOWCONNECT_ALLOW_CIDRS") {
            self.security.allow_cidrs = CidrList::parse_comma_separated(&list).map_err(|err| {
                ConfigError::invalid(
                    "NOWCONNECT_ALLOW_CIDRS",
                    &list,
                    err.to_string(),
                    "comma-separated IP addresses or CIDR ranges",
                )
            })?;
        }
        if let Some(shards) = env.get("NOWCONNECT_SHARDS") {
            self.hub.shards = Shards::parse("NOWCONNECT_SHARDS", &shards)?;
        }
        if let Some(format) = env.parse("NOWCONNECT_LOG_FORMAT", LogFormat::EXPECTED)? {
            self.logging.format = format;
        }
        Ok(())
    }

    /// Checks every rule documented on the keys. The first broken rule is returned, naming
    /// its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check::identifier(
            "replica_id",
            &self.replica_id,
            64,
            crate::name::is_name_byte,
            "1 to 64 characters from [A-Za-z0-9._-]",
        )?;
        self.hub.shards.check("hub.shards")?;
        let buffers = self.hub.recv_buffers;
        if buffers != 0 && !(8..=16_384).contains(&buffers) {
            return Err(ConfigError::invalid(
                "hub.recv_buffers",
                buffers,
                "is out of range",
                "0 (no receive ring) or an integer from 8 to 16384",
            ));
        }
        self.validate_tunnel()?;
        self.validate_addresses()?;
        self.validate_security()?;
        if let Some(pdp) = &self.pdp {
            check::http_url("pdp.url", &pdp.url)?;
            if let Some(path) = &pdp.token_file {
                check::file_path("pdp.token_file", path)?;
            }
            check::range("pdp.timeout_ms", pdp.timeout_ms, 1, 60_000)?;
            check::range("pdp.cache_ttl_ms", pdp.cache_ttl_ms, 0, 86_400_000)?;
        }
        self.limits.validate()
    }

    /// Parses `yaml` ([`from_yaml`](Self::from_yaml)), applies the environment
    /// ([`apply_env`](Self::apply_env)) and validates ([`validate`](Self::validate)).
    pub fn load(
        yaml: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<HubConfig, ConfigError> {
        let mut config = HubConfig::from_yaml(yaml)?;
        config.apply_env(lookup)?;
        config.validate()?;
        Ok(config)
    }

    fn validate_tunnel(&self) -> Result<(), ConfigError> {
        let path = &self.tunnel.path;
        const PATH_EXPECTED: &str =
            "a path starting with / of at most 1024 visible ASCII characters, without ? or #";
        if !path.starts_with('/') {
            return Err(ConfigError::invalid(
                "tunnel.path",
                path,
                "does not start with /",
                PATH_EXPECTED,
            ));
        }
        if path.len() > 1024 {
            return Err(ConfigError::invalid(
                "tunnel.path",
                path,
                "is too long",
                PATH_EXPECTED,
            ));
        }
        if path.contains(['?', '#']) {
            return Err(ConfigError::invalid(
                "tunnel.path",
                path,
                "holds a query or fragment",
                PATH_EXPECTED,
            ));
        }
        if !path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::invalid(
                "tunnel.path",
                path,
                "holds whitespace or a character that is not visible ASCII",
                PATH_EXPECTED,
            ));
        }
        if let Some(tls) = &self.tunnel.tls {
            check::file_path("tunnel.tls.cert_file", &tls.cert_file)?;
            check::file_path("tunnel.tls.key_file", &tls.key_file)?;
            match (&tls.client_ca_file, tls.client_auth) {
                (Some(ca), ClientAuth::None) => {
                    return Err(ConfigError::invalid(
                        "tunnel.tls.client_ca_file",
                        ca.display(),
                        "is set while tunnel.tls.client_auth is none",
                        "client_auth optional or required, or no client_ca_file",
                    ));
                }
                (Some(ca), _) => check::file_path("tunnel.tls.client_ca_file", ca)?,
                (None, ClientAuth::None) => {}
                (None, _) if self.security.mtls.require_bound_tokens => {}
                (None, auth) => {
                    return Err(ConfigError::missing(
                        "tunnel.tls.client_ca_file",
                        format!(
                            "a CA bundle because tunnel.tls.client_auth is {auth}, unless security.mtls.require_bound_tokens is true"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks that no two of the hub's listen addresses conflict.
    fn validate_addresses(&self) -> Result<(), ConfigError> {
        let mut seen: Vec<(String, SocketAddr)> = Vec::with_capacity(self.listeners.len() + 2);
        let named = [
            ("tunnel.listen".to_owned(), self.tunnel.listen),
            ("admin.listen".to_owned(), self.admin.listen),
        ];
        let listeners = self
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("listeners[{i}].listen"), l.listen));
        for (key, addr) in named.into_iter().chain(listeners) {
            if let Some((other, _)) = seen.iter().find(|(_, seen)| conflict(*seen, addr)) {
                return Err(ConfigError::invalid(
                    &key,
                    addr,
                    format!("conflicts with {other}"),
                    "a distinct address and port for every listener, tunnel.listen and admin.listen",
                ));
            }
            seen.push((key, addr));
        }
        Ok(())
    }

    fn validate_security(&self) -> Result<(), ConfigError> {
        let security = &self.security;
        match &security.jwks_url {
            None => {
                return Err(ConfigError::missing(
                    "security.jwks_url",
                    format!(
                        "{} (in the YAML or NOWCONNECT_JWKS_URL)",
                        check::JWKS_URL_EXPECTED
                    ),
                ));
            }
            Some(url) => check::jwks_url("security.jwks_url", url)?,
        }
        match &security.audience {
            None => {
                return Err(ConfigError::missing(
                    "security.audience",
                    "the audience agent tokens are issued for (in the YAML or NOWCONNECT_AUDIENCE)",
                ));
            }
            Some(aud) if aud.trim().is_empty() => {
                return Err(ConfigError::invalid(
                    "security.audience",
                    aud,
                    "is empty",
                    "the audience agent tokens are issued for",
                ));
            }
            Some(_) => {}
        }
        if let Some(issuer) = &security.issuer
            && issuer.trim().is_empty()
        {
            return Err(ConfigError::invalid(
                "security.issuer",
                issuer,
                "is empty",
                "the issuer of agent tokens, or no issuer key at all",
            ));
        }
        let prefix = &security.connector_scope_prefix;
        if prefix.is_empty() || prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::invalid(
                "security.connector_scope_prefix",
                prefix,
                "is not a scope prefix",
                "1 to 64 printable characters without spaces, such as `connector:`",
            ));
        }
        let client_certs = self
            .tunnel
            .tls
            .as_ref()
            .is_some_and(|tls| tls.client_auth != ClientAuth::None);
        if security.mtls.require_bound_tokens && !client_certs {
            return Err(ConfigError::invalid(
                "security.mtls.require_bound_tokens",
                true,
                "needs client certificates",
                "tunnel.tls with client_auth optional or required, or require_bound_tokens false",
            ));
        }
        // A token binds a certificate or a DPoP key, never both (RFC 7800 cnf): requiring
        // both would refuse every agent.
        if security.mtls.require_bound_tokens && security.dpop.required {
            return Err(ConfigError::invalid(
                "security.dpop.required",
                true,
                "is set together with security.mtls.require_bound_tokens, which no token can satisfy",
                "at most one of security.dpop.required and security.mtls.require_bound_tokens",
            ));
        }
        Ok(())
    }
}

/// Whether binding `a` and `b` would collide. Port 0 never collides. `0.0.0.0` covers every
/// IPv4 address; `[::]` covers every address, because the hub binds it dual-stack (IPv4
/// clients arrive as IPv4-mapped addresses); a mapped address equals its IPv4 form.
fn conflict(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let (x, y) = (a.ip().to_canonical(), b.ip().to_canonical());
    let covers = |wildcard: IpAddr, other: IpAddr| match wildcard {
        IpAddr::V6(v6) => v6.is_unspecified(),
        IpAddr::V4(v4) => v4.is_unspecified() && other.is_ipv4(),
    };
    x == y || covers(x, y) || covers(y, x)
}

impl LimitsConfig {
    /// Checks every bound documented on the fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        const MIB16: u32 = 16 * 1024 * 1024;
        check::range(
            "limits.stream_window_bytes",
            self.stream_window_bytes,
            1024,
            MIB16,
        )?;
        check::range(
            "limits.max_frame_bytes",
            self.max_frame_bytes,
            1024,
            crate::control::MAX_FRAME_LIMIT,
        )?;
        if self.max_frame_bytes > self.stream_window_bytes {
            return Err(ConfigError::invalid(
                "limits.max_frame_bytes",
                self.max_frame_bytes,
                "is larger than limits.stream_window_bytes",
                format!(
                    "at most limits.stream_window_bytes ({})",
                    self.stream_window_bytes
                ),
            ));
        }
        check::range(
            "limits.idle_timeout_ms",
            self.idle_timeout_ms,
            1,
            604_800_000,
        )?;
        check::range(
            "limits.sweep_interval_ms",
            self.sweep_interval_ms,
            1,
            60_000,
        )?;
        if self.sweep_interval_ms > self.idle_timeout_ms {
            return Err(ConfigError::invalid(
                "limits.sweep_interval_ms",
                self.sweep_interval_ms,
                "is longer than limits.idle_timeout_ms",
                format!("at most limits.idle_timeout_ms ({})", self.idle_timeout_ms),
            ));
        }
        check::range("limits.open_timeout_ms", self.open_timeout_ms, 1, 600_000)?;
        check::range("limits.heartbeat_ms", self.heartbeat_ms, 100, 3_600_000)?;
        check::range(
            "limits.drain_timeout_ms",
            self.drain_timeout_ms,
            1,
            3_600_000,
        )?;
        check::range(
            "limits.max_streams_per_session",
            self.max_streams_per_session,
            1,
            1_048_576,
        )?;
        check::range(
            "limits.handshake_timeout_ms",
            self.handshake_timeout_ms,
            1,
            600_000,
        )?;
        check::range(
            "limits.max_pending_handshakes",
            self.max_pending_handshakes,
            1,
            1_048_576,
        )
    }
}

#[cfg(test)]
mod tests;
