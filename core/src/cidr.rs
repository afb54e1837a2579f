//! Address allow-lists.
//!
//! A [`CidrList`] is a set of IPv4 and IPv6 ranges that a source address is checked against:
//! agents connecting to the tunnel, clients connecting to a listener. Dual-stack sockets report
//! IPv4 peers as IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`), so matching treats an address
//! and its mapped form as the same address in both directions.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};

/// A list of address ranges.
///
/// Entries are written as CIDR ranges (`10.0.0.0/8`, `fd00::/8`) or as bare addresses, which
/// mean a single host (`/32` for IPv4, `/128` for IPv6). Host bits set below the prefix length
/// are accepted and cleared: `10.1.2.3/8` is stored, displayed and matched as `10.0.0.0/8`.
///
/// The default is the empty list. [`CidrList::allows`] lets every address through an empty
/// list; [`CidrList::contains`] matches nothing against it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CidrList {
    nets: Vec<IpNet>,
}

/// Why an entry of an address list was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The entry is neither an IP address nor a CIDR range with a valid prefix length.
    #[error(
        "`{entry}` is not an IP address or CIDR range, expected an address such as 10.0.0.1 or a range such as 10.0.0.0/8 or fd00::/8"
    )]
    Invalid {
        /// The offending entry, as written.
        entry: String,
    },
}

impl CidrList {
    /// An empty list.
    pub const fn new() -> Self {
        CidrList { nets: Vec::new() }
    }

    /// Parses every entry of `entries`; surrounding whitespace is ignored. The first bad entry
    /// is named in the error.
    pub fn parse<I, S>(entries: I) -> Result<Self, CidrError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nets = entries
            .into_iter()
            .map(|entry| parse_entry(entry.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CidrList { nets })
    }

    /// Parses a comma-separated list such as `10.0.0.0/8, 192.168.1.7`. Empty entries (a
    /// trailing comma, or an empty string) are skipped, so `""` is the empty list.
    pub fn parse_comma_separated(list: &str) -> Result<Self, CidrError> {
        Self::parse(list.split(',').filter(|entry| !entry.trim().is_empty()))
    }

    /// Whether `ip` may pass: true when the list is empty or when it [contains](Self::contains)
    /// `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.nets.is_empty() || self.contains(ip)
    }

    /// Whether some range of the list holds `ip`. An IPv4-mapped IPv6 address matches the
    /// IPv4 ranges that hold its IPv4 address, and an IPv4 address matches the IPv6 ranges
    /// that hold its mapped form (such as `::ffff:0:0/96`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (v4, v6): (Option<Ipv4Addr>, Ipv6Addr) = match ip {
            IpAddr::V4(a) => (Some(a), a.to_ipv6_mapped()),
            IpAddr::V6(a) => (a.to_ipv4_mapped(), a),
        };
        self.nets.iter().any(|net| match net {
            IpNet::V4(net) => v4.is_some_and(|a| net.contains(&a)),
            IpNet::V6(net) => net.contains(&v6),
        })
    }

    /// Whether the list has no entries.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.nets.len()
    }

    /// The ranges, normalised, in the order they were written.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }
}

/// Parses one entry: a CIDR range, or a bare address meaning a single host.
fn parse_entry(entry: &str) -> Result<IpNet, CidrError> {
    let trimmed = entry.trim();
    let invalid = || CidrError::Invalid {
        entry: trimmed.to_owned(),
    };
    if trimmed.contains('/') {
        IpNet::from_str(trimmed)
            .map(|net| net.trunc())
            .map_err(|_| invalid())
    } else {
        IpAddr::from_str(trimmed)
            .map(IpNet::from)
            .map_err(|_| invalid())
    }
}

impl FromIterator<IpNet> for CidrList {
    fn from_iter<T: IntoIterator<Item = IpNet>>(iter: T) -> Self {
        CidrList {
            nets: iter.into_iter().map(|net| net.trunc()).collect(),
        }
    }
}

impl FromStr for CidrList {
    type Err = CidrError;

    /// Same as [`CidrList::parse_comma_separated`].
    fn from_str(s: &str) -> Result<Self, CidrError> {
        Self::parse_comma_separated(s)
    }
}

impl fmt::Display for CidrList {
    /// The entries, comma-separated, each in normalised CIDR form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.nets.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for CidrList {
    /// Reads a sequence of strings, each an address or a CIDR range.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;

        impl<'de> Visitor<'de> for ListVisitor {
            type Value = CidrList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of IP addresses or CIDR ranges")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CidrList, A::Error> {
                let mut nets = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(entry) = seq.next_element::<String>()? {
                    nets.push(parse_entry(&entry).map_err(serde::de::Error::custom)?);
                }
                Ok(CidrList { nets })
            }
        }

        deserializer.deserialize_seq(ListVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn list(entries: &[&str]) -> CidrList {
        CidrList::parse(entries).unwrap()
    }

    #[test]
    fn ipv4_ranges() {
        let l = list(&["10.0.0.0/8", "192.168.1.0/24"]);
        assert!(l.contains(ip("10.1.2.3")));
        assert!(l.contains(ip("192.168.1.255")));
        assert!(!l.contains(ip("192.168.2.1")));
        assert!(!l.contains(ip("11.0.0.1")));
        assert!(l.allows(ip("10.255.255.255")));
        assert!(!l.allows(ip("172.16.0.1")));
    }

    #[test]
    fn ipv6_ranges() {
        let l = list(&["fd00::/8", "2001:db8::/32"]);
        assert!(l.contains(ip("fd12:3456::1")));
        assert!(l.contains(ip("2001:db8:ffff::1")));
        assert!(!l.contains(ip("2001:db9::1")));
        assert!(!l.contains(ip("::1")));
        // An IPv6 range that is not the mapped block never matches IPv4.
        assert!(!l.contains(ip("10.0.0.1")));
    }

    #[test]
    fn ipv4_mapped_ipv6_matches_ipv4_ranges() {
        let l = list(&["10.0.0.0/8"]);
        assert!(l.contains(ip("::ffff:10.1.2.3")));
        assert!(!l.contains(ip("::ffff:11.1.2.3")));
        // The deprecated IPv4-compatible form is not a mapped address.
        assert!(!l.contains(ip("::10.1.2.3")));
    }

    #[test]
    fn ipv4_matches_mapped_ipv6_ranges() {
        let all_mapped = list(&["::ffff:0:0/96"]);
        assert!(all_mapped.contains(ip("10.1.2.3")));
        assert!(all_mapped.contains(ip("::ffff:8.8.8.8")));
        assert!(!all_mapped.contains(ip("2001:db8::1")));
        let one = list(&["::ffff:10.0.0.0/104"]);
        assert!(one.contains(ip("10.9.9.9")));
        assert!(!one.contains(ip("11.0.0.1")));
    }

    #[test]
    fn bare_addresses_are_single_hosts() {
        let l = list(&["192.0.2.7", "2001:db8::7"]);
        assert_eq!(l.nets()[0].prefix_len(), 32);
        assert_eq!(l.nets()[1].prefix_len(), 128);
        assert!(l.contains(ip("192.0.2.7")));
        assert!(!l.contains(ip("192.0.2.8")));
        assert!(l.contains(ip("::ffff:192.0.2.7")));
        assert!(l.contains(ip("2001:db8::7")));
        assert!(!l.contains(ip("2001:db8::8")));
    }

    #[test]
    fn host_bits_are_cleared() {
        let l = list(&["10.1.2.3/8", "fd00::1/8"]);
        assert_eq!(l.to_string(), "10.0.0.0/8,fd00::/8");
        assert!(l.contains(ip("10.200.0.1")));
    }

    #[test]
    fn empty_list_allows_everything_and_contains_nothing() {
        let l = CidrList::default();
        assert!(l.is_empty());
        assert_eq!(l.len(), 0);
        assert!(l.allows(ip("10.0.0.1")));
        assert!(l.allows(ip("::1")));
        assert!(!l.contains(ip("10.0.0.1")));
        assert!(!l.contains(ip("::1")));
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0",
            "example.com",
            "",
            "fe80::1%eth0",
        ] {
            let err = CidrList::parse(["10.0.0.0/8", bad]).unwrap_err();
            assert_eq!(
                err,
                CidrError::Invalid {
                    entry: bad.to_owned()
                }
            );
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn comma_separated() {
        let l = CidrList::parse_comma_separated(" 10.0.0.0/8 , fd00::/8,").unwrap();
        assert_eq!(l.len(), 2);
        assert!(CidrList::parse_comma_separated("").unwrap().is_empty());
        assert!(CidrList::parse_comma_separated("10.0.0.0/8,bogus").is_err());
        assert_eq!("10.0.0.1".parse::<CidrList>().unwrap().len(), 1);
    }

    #[test]
    fn deserializes_from_a_list_of_strings() {
        let l: CidrList = serde_json::from_str(r#"["10.0.0.0/8", "::1"]"#).unwrap();
        assert!(l.contains(ip("10.0.0.1")));
        assert!(l.contains(ip("::1")));
        let err = serde_json::from_str::<CidrList>(r#"["10.0.0.0/8", "nope/1"]"#).unwrap_err();
        assert!(err.to_string().contains("`nope/1`"), "{err}");
        assert!(serde_json::from_str::<CidrList>(r#""10.0.0.0/8""#).is_err());
    }
}
