//! HTTP CONNECT proxies from the environment (`trust_env`, `NC_TRUST_ENV`).
//!
//! - `HTTPS_PROXY` (or `https_proxy`) is used for `wss://` hubs, `HTTP_PROXY` (or
//!   `http_proxy`) for `ws://` hubs; the upper-case name wins when both are set, and an empty
//!   value counts as unset. Both kinds are reached with `CONNECT host:port`, so the tunnel's
//!   bytes (TLS or not) pass through the proxy unchanged.
//! - A proxy URL is `http://[user:password@]host[:port][/]`; a URL without a scheme is taken
//!   as `http://`, the port defaults to 80, and percent-escapes in the credentials are decoded.
//!   Credentials are sent as `Proxy-Authorization: Basic …` and never appear in a log line or
//!   an error.
//! - `NO_PROXY` (or `no_proxy`) is a comma-separated list of hosts that are reached directly:
//!   `*` for every host; a name, with or without a leading dot (or `*.`), matching that name
//!   and every name under it; an IP address, matching that address exactly. An entry may end
//!   in `:port` to apply to that port only.

use std::fmt;
use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use nowconnect_core::config::WsUrl;

/// The longest proxy reply header block the agent reads.
pub(crate) const MAX_REPLY: usize = 16 * 1024;

/// A proxy to connect through.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ProxyUrl {
    host: String,
    port: u16,
    /// `Basic …`, ready for `Proxy-Authorization`.
    authorization: Option<String>,
}

/// Shows the proxy without its credentials.
impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", authority(&self.host, self.port))
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ProxyUrl({self}{})",
            if self.authorization.is_some() {
                ", with credentials"
            } else {
                ""
            }
        )
    }
}

impl ProxyUrl {
    /// The proxy's host, without brackets.
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// The proxy's port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The `Proxy-Authorization` value, when the URL had credentials.
    pub(crate) fn authorization(&self) -> Option<&str> {
        self.authorization.as_deref()
    }

    /// Parses a proxy URL. The error never repeats the credentials.
    fn parse(text: &str) -> Result<ProxyUrl, &'static str> {
        let rest = match text.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some(_) => {
                return Err(
                    "has an unsupported scheme (only http:// proxies, reached with CONNECT, are supported)",
                );
            }
            None => text,
        };
        let (authority_text, path) = match rest.find(['/', '?', '#']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if !path.is_empty() && path != "/" {
            return Err("has a path, query or fragment");
        }
        let (userinfo, hostport) = match authority_text.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority_text),
        };
        let authorization = match userinfo {
            Some(userinfo) => {
                let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let user = percent_decode(user).ok_or("has a bad percent-escape in its user")?;
                let pass =
                    percent_decode(pass).ok_or("has a bad percent-escape in its password")?;
                if user.is_empty() {
                    return Err("has credentials without a user name");
                }
                let mut pair = user;
                pair.push(b':');
                pair.extend_from_slice(&pass);
                Some(format!("Basic {}", STANDARD.encode(pair)))
            }
            None => None,
        };
        let (host, port) = split_host_port(hostport).ok_or("has no valid host and port")?;
        if host.is_empty() {
            return Err("has no host");
        }
        let valid_name = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !valid_name && host.parse::<IpAddr>().is_err() {
            return Err("has a host that is neither a DNS name nor an IP address");
        }
        Ok(ProxyUrl {
            host: host.to_ascii_lowercase(),
            port: port.unwrap_or(80),
            authorization,
        })
    }
}

/// `host:port`, the host bracketed when it is an IPv6 address.
pub(crate) fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Splits `host[:port]` or `[v6][:port]`; the host comes back without brackets. None when the
/// port is not a number from 1 to 65535 or the brackets do not match.
fn split_host_port(text: &str) -> Option<(&str, Option<u16>)> {
    let parse_port = |p: &str| p.parse::<u16>().ok().filter(|&p| p != 0);
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(parse_port(after.strip_prefix(':')?)?))),
        };
    }
    match text.rsplit_once(':') {
        // A bare IPv6 address has several colons and no port.
        Some((host, _)) if host.contains(':') => Some((text, None)),
        Some((host, port)) => Some((host, Some(parse_port(port)?))),
        None => Some((text, None)),
    }
}

/// Decodes `%XX` escapes; None for a malformed escape.
fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A `NO_PROXY` list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct NoProxy {
    all: bool,
    entries: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Ip(IpAddr, Option<u16>),
    /// A lower-case name without a leading dot.
    Name(String, Option<u16>),
}

impl NoProxy {
    /// Parses a comma-separated list; empty entries are skipped.
    pub(crate) fn parse(text: &str) -> NoProxy {
        let mut list = NoProxy::default();
        for raw in text.split(',') {
            let entry = raw.trim();
            if entry.is_empty() {
                continue;
            }
            if entry == "*" {
                list.all = true;
                continue;
            }
            if let Ok(ip) = entry.parse::<IpAddr>() {
                list.entries.push(Entry::Ip(ip, None));
                continue;
            }
            let Some((host, port)) = split_host_port(entry) else {
                continue;
            };
            if let Ok(ip) = host.parse::<IpAddr>() {
                list.entries.push(Entry::Ip(ip, port));
                continue;
            }
            let name = host
                .strip_prefix("*.")
                .or_else(|| host.strip_prefix('.'))
                .unwrap_or(host)
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if !name.is_empty() {
                list.entries.push(Entry::Name(name, port));
            }
        }
        list
    }

    /// Whether `host` (without brackets) on `port` is reached directly.
    pub(crate) fn matches(&self, host: &str, port: u16) -> bool {
        if self.all {
            return true;
        }
        let port_ok = |p: &Option<u16>| p.is_none_or(|p| p == port);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self
                .entries
                .iter()
                .any(|e| matches!(e, Entry::Ip(entry, p) if *entry == ip && port_ok(p)));
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.entries.iter().any(|e| match e {
            Entry::Name(name, p) => {
                port_ok(p)
                    && (host == *name
                        || (host.len() > name.len()
                            && host.ends_with(name.as_str())
                            && host.as_bytes()[host.len() - name.len() - 1] == b'.'))
            }
            Entry::Ip(..) => false,
        })
    }
}

/// The proxies the agent uses: none unless `trust_env` is set.
#[derive(Clone, Debug, Default)]
pub(crate) struct Proxies {
    https: Option<ProxyUrl>,
    http: Option<ProxyUrl>,
    no_proxy: NoProxy,
}

/// A proxy variable whose value is not a usable proxy URL.
#[derive(Debug, thiserror::Error)]
#[error("{var}: `{shown}` {why}, expected http://[user:password@]host[:port]")]
pub(crate) struct ProxyEnvError {
    var: &'static str,
    /// The value with any credentials masked.
    shown: String,
    why: &'static str,
}

/// The value with whatever precedes the last `@` of its authority replaced by `***`.
fn redact(value: &str) -> String {
    let (scheme, rest) = match value.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, value),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let masked = match rest[..end].rfind('@') {
        Some(at) => format!("***{}", &rest[at..]),
        None => rest.to_owned(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{masked}"),
        None => masked,
    }
}

impl Proxies {
    /// Reads `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` (or their lower-case forms) through
    /// `get`.
    pub(crate) fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Proxies, ProxyEnvError> {
        let first = |names: [&'static str; 2]| {
            names.into_iter().find_map(|name| {
                get(name)
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
                    .map(|v| (name, v))
            })
        };
        let proxy = |names| -> Result<Option<ProxyUrl>, ProxyEnvError> {
            match first(names) {
                None => Ok(None),
                Some((var, value)) => {
                    ProxyUrl::parse(&value)
                        .map(Some)
                        .map_err(|why| ProxyEnvError {
                            var,
                            shown: redact(&value),
                            why,
                        })
                }
            }
        };
        Ok(Proxies {
            https: proxy(["HTTPS_PROXY", "https_proxy"])?,
            http: proxy(["HTTP_PROXY", "http_proxy"])?,
            no_proxy: first(["NO_PROXY", "no_proxy"])
                .map(|(_, v)| NoProxy::parse(&v))
                .unwrap_or_default(),
        })
    }

    /// The proxy to reach `url` through, or None to connect directly.
    pub(crate) fn for_url(&self, url: &WsUrl) -> Option<&ProxyUrl> {
        let proxy = if url.is_tls() {
            self.https.as_ref()
        } else {
            self.http.as_ref()
        }?;
        (!self.no_proxy.matches(url.host(), url.port())).then_some(proxy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn url(s: &str) -> WsUrl {
        WsUrl::parse(s).unwrap()
    }

    #[test]
    fn proxy_urls_parse() {
        let p = ProxyUrl::parse("http://proxy.corp:3128").unwrap();
        assert_eq!(
            (p.host(), p.port(), p.authorization()),
            ("proxy.corp", 3128, None)
        );
        let p = ProxyUrl::parse("proxy.corp").unwrap();
        assert_eq!((p.host(), p.port()), ("proxy.corp", 80));
        let p = ProxyUrl::parse("HTTP://10.0.0.1:8080/").unwrap();
        assert_eq!((p.host(), p.port()), ("10.0.0.1", 8080));
        let p = ProxyUrl::parse("http://[fd00::1]:3128").unwrap();
        assert_eq!((p.host(), p.port()), ("fd00::1", 3128));
        assert_eq!(p.to_string(), "http://[fd00::1]:3128");
    }

    #[test]
    fn credentials_become_basic_authorization_and_stay_hidden() {
        let p = ProxyUrl::parse("http://user:pass@proxy:3128").unwrap();
        // base64("user:pass")
        assert_eq!(p.authorization(), Some("Basic dXNlcjpwYXNz"));
        assert_eq!(p.to_string(), "http://proxy:3128");
        assert!(!format!("{p:?}").contains("pass"));
        // Percent-escapes are decoded; an '@' in the password must be escaped or come last.
        let p = ProxyUrl::parse("http://us%65r:p%40ss:w@proxy:3128").unwrap();
        assert_eq!(
            p.authorization(),
            Some(format!("Basic {}", STANDARD.encode("user:p@ss:w")).as_str())
        );
        let p = ProxyUrl::parse("http://user@proxy").unwrap();
        assert_eq!(p.authorization(), Some("Basic dXNlcjo="));
    }

    #[test]
    fn bad_proxy_urls_are_refused() {
        for bad in [
            "https://proxy:3128",
            "socks5://proxy:1080",
            "http://proxy:0",
            "http://proxy:99999",
            "http://proxy:port",
            "http://",
            "http://proxy:3128/path",
            "http://:pw@proxy",
            "http://us%zzer:pw@proxy",
            "http://pro xy:3128",
            "http://[fd00::1:3128",
        ] {
            assert!(ProxyUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_errors_name_the_variable_without_the_password() {
        let err = Proxies::from_env(env(&[("HTTPS_PROXY", "socks5://alice:s3cret@proxy:1080")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("HTTPS_PROXY: `socks5://***@proxy:1080`"),
            "{err}"
        );
        assert!(!err.contains("s3cret") && !err.contains("alice"), "{err}");
        let err = Proxies::from_env(env(&[("http_proxy", "http://bob:pw@proxy:3128/x")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("http_proxy: `http://***@proxy:3128/x`"),
            "{err}"
        );
    }

    #[test]
    fn scheme_picks_the_variable() {
        let p = Proxies::from_env(env(&[
            ("HTTPS_PROXY", "http://secure:3128"),
            ("HTTP_PROXY", "http://plain:3128"),
        ]))
        .unwrap();
        assert_eq!(
            p.for_url(&url("wss://hub.example/t")).unwrap().host(),
            "secure"
        );
        assert_eq!(
            p.for_url(&url("ws://hub.example/t")).unwrap().host(),
            "plain"
        );

        let only_https = Proxies::from_env(env(&[("HTTPS_PROXY", "http://secure:3128")])).unwrap();
        assert!(only_https.for_url(&url("ws://hub.example/t")).is_none());
        assert!(only_https.for_url(&url("wss://hub.example/t")).is_some());
    }

    #[test]
    fn upper_case_wins_and_empty_counts_as_unset() {
        let p = Proxies::from_env(env(&[
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "http://lower:2"),
        ]))
        .unwrap();
        assert_eq!(p.for_url(&url("wss://h/t")).unwrap().host(), "upper");
        let p = Proxies::from_env(env(&[
            ("HTTPS_PROXY", " "),
            ("https_proxy", "http://lower:2"),
            ("no_proxy", "h"),
        ]))
        .unwrap();
        assert!(
            p.for_url(&url("wss://h/t")).is_none(),
            "lower-case no_proxy applies"
        );
        assert_eq!(p.for_url(&url("wss://other/t")).unwrap().host(), "lower");
        assert!(
            Proxies::from_env(env(&[]))
                .unwrap()
                .for_url(&url("wss://h/t"))
                .is_none()
        );
    }

    #[test]
    fn no_proxy_matches_suffixes_with_or_without_a_dot() {
        for list in [
            "example.com",
            ".example.com",
            "*.example.com",
            "EXAMPLE.com.",
        ] {
            let np = NoProxy::parse(list);
            assert!(np.matches("example.com", 443), "{list}");
            assert!(np.matches("hub.example.com", 443), "{list}");
            assert!(np.matches("a.b.Example.COM", 443), "{list}");
            assert!(np.matches("hub.example.com.", 443), "{list}");
            assert!(!np.matches("badexample.com", 443), "{list}");
            assert!(!np.matches("example.org", 443), "{list}");
            assert!(!np.matches("com", 443), "{list}");
        }
    }

    #[test]
    fn no_proxy_star_and_lists() {
        assert!(NoProxy::parse("*").matches("anything.at.all", 1));
        assert!(NoProxy::parse("foo, *").matches("10.1.2.3", 1));
        let np = NoProxy::parse(" localhost ,internal.corp,, 10.0.0.7 ");
        assert!(np.matches("localhost", 80));
        assert!(np.matches("db.internal.corp", 80));
        assert!(np.matches("10.0.0.7", 80));
        assert!(!np.matches("10.0.0.70", 80));
        assert!(!np.matches("external.example", 80));
        assert!(!NoProxy::parse("").matches("localhost", 80));
    }

    #[test]
    fn no_proxy_ips_match_exactly() {
        let np = NoProxy::parse("127.0.0.1,::1,[fd00::5]");
        assert!(np.matches("127.0.0.1", 8443));
        assert!(!np.matches("127.0.0.2", 8443));
        assert!(np.matches("::1", 8443));
        assert!(
            np.matches("fd00:0::5", 8443),
            "compared as addresses, not text"
        );
        assert!(!np.matches("fd00::6", 8443));
        // An IP entry never matches by suffix, and a name entry never matches an IP.
        assert!(!NoProxy::parse("0.0.1").matches("127.0.0.1", 1));
        assert!(!NoProxy::parse("1").matches("127.0.0.1", 1));
    }

    #[test]
    fn no_proxy_ports_narrow_an_entry() {
        let np = NoProxy::parse("hub.corp:8443,127.0.0.1:9000,[::1]:9001");
        assert!(np.matches("hub.corp", 8443));
        assert!(!np.matches("hub.corp", 443));
        assert!(np.matches("127.0.0.1", 9000));
        assert!(!np.matches("127.0.0.1", 9001));
        assert!(np.matches("::1", 9001));
        assert!(!np.matches("::1", 9000));
    }

    #[test]
    fn no_proxy_bypasses_the_proxy_for_matching_hubs() {
        let p = Proxies::from_env(env(&[
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("NO_PROXY", ".internal,127.0.0.1"),
        ]))
        .unwrap();
        assert!(p.for_url(&url("wss://hub.internal/t")).is_none());
        assert!(p.for_url(&url("wss://127.0.0.1:8443/t")).is_none());
        assert!(p.for_url(&url("wss://hub.example/t")).is_some());
    }
}
