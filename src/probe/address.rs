//! Address rules for outgoing requests to caller-supplied URLs (SSRF defence): which IP
//! addresses are internal, and which URLs may be fetched at all. Pure functions, decided on
//! parsed addresses (`url::Host`), never on strings, so every spelling normalises first.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use url::{Host, Url};

/// True when `ip` is anything but a public unicast address: loopback, private, link-local
/// (cloud metadata), CGNAT, multicast, unspecified, reserved, documentation, ULA, Azure's
/// wire server, and the IPv4-mapped, IPv4-compatible, NAT64 and 6to4 forms of those.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

/// Azure's wire server: a public address that is internal on every Azure VM (metadata,
/// guest agent, DNS).
const AZURE_WIRE_SERVER: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip == AZURE_WIRE_SERVER
        || ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    if let Some(v4) = embedded_v4(ip) {
        return is_internal_v4(v4);
    }
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (seg[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (seg[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        || (seg[0] == 0x2001 && seg[1] == 0) // Teredo tunnels to arbitrary IPv4
        || (seg[0] == 0x0064 && seg[1] == 0xff9b && seg[2] == 1) // NAT64 local-use 64:ff9b:1::/48
        || seg[0] == 0x0100 && seg[1..4] == [0, 0, 0] // discard-only 100::/64
}

/// The IPv4 address an IPv6 address stands for: mapped, compatible, NAT64 or 6to4.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = ip.segments();
    let tail = Ipv4Addr::new((seg[6] >> 8) as u8, seg[6] as u8, (seg[7] >> 8) as u8, seg[7] as u8);
    if let Some(mapped) = ip.to_ipv4_mapped() {
        return Some(mapped);
    }
    if seg[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return Some(tail); // deprecated IPv4-compatible ::a.b.c.d
    }
    if seg[..6] == [0x0064, 0xff9b, 0, 0, 0, 0] {
        return Some(tail); // NAT64 well-known prefix
    }
    if seg[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        ));
    }
    None
}

/// Where a URL may go: host allow-list, internal networks, and private ranges let in by name.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    /// Non-empty: only these hosts (`cdn.example.com` or `*.example.com`).
    pub allowed_hosts: Vec<String>,
    /// Internal networks let in despite being private (callbacks only); plain http allowed there.
    pub allowed_networks: Vec<IpNet>,
    /// Tests and labs: loopback/private targets allowed.
    pub allow_private_networks: bool,
}

impl AddressPolicy {
    /// True when the host passes the allow-list (checked before any DNS lookup).
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allowed_hosts.is_empty()
            || self.allowed_hosts.iter().any(|pattern| {
                let pattern = pattern.to_ascii_lowercase();
                match pattern.strip_prefix("*.") {
                    Some(suffix) => host.len() > suffix.len() && host.ends_with(&format!(".{suffix}")),
                    None => host == pattern,
                }
            })
    }

    pub fn in_allowed_network(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allowed_networks.iter().any(|net| net.contains(&ip))
    }

    /// Whether a resolved address may be connected to.
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allow_private_networks || self.in_allowed_network(ip) || !is_internal(ip)
    }
}

/// `::ffff:a.b.c.d` is `a.b.c.d` for every rule.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why a URL was refused before any connection was made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefusal {
    #[error("not a valid URL")]
    Malformed,
    #[error("only http and https URLs are allowed")]
    Scheme,
    #[error("credentials in URLs are not allowed")]
    Credentials,
    #[error("host {0:?} is not in the allowed hosts")]
    HostNotAllowed(String),
    #[error("address {0} is internal and not allowed")]
    InternalAddress(IpAddr),
    #[error("plain http is only allowed to internal networks listed in allowed_networks")]
    PlainHttp,
}

/// Checks everything about a URL that needs no DNS: scheme, credentials, allow-list, and
/// IP literals (in any spelling, since `Url` normalises them). `https_only`: plain http
/// only towards `allowed_networks` or when private networks are allowed.
pub fn check_url(raw: &str, policy: &AddressPolicy, https_only: bool) -> Result<Url, UrlRefusal> {
    let url = Url::parse(raw).map_err(|_| UrlRefusal::Malformed)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlRefusal::Scheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlRefusal::Credentials);
    }
    let host = url.host().ok_or(UrlRefusal::Malformed)?;
    let host_text = match &host {
        Host::Domain(d) => d.to_string(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => ip.to_string(),
    };
    if !policy.host_allowed(&host_text) {
        return Err(UrlRefusal::HostNotAllowed(host_text));
    }
    let literal = match host {
        Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        Host::Domain(d) if is_localhost_name(d) => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Host::Domain(_) => None,
    };
    if let Some(ip) = literal
        && !policy.address_allowed(ip)
    {
        return Err(UrlRefusal::InternalAddress(ip));
    }
    let internal_ok = literal.is_some_and(|ip| policy.in_allowed_network(ip)) || policy.allow_private_networks;
    if https_only && url.scheme() == "http" && !internal_ok {
        return Err(UrlRefusal::PlainHttp);
    }
    Ok(url)
}

/// `localhost` and its subdomains resolve to loopback by convention (RFC 6761).
fn is_localhost_name(domain: &str) -> bool {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    d == "localhost" || d.ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn internal(s: &str) -> bool {
        is_internal(s.parse().expect("test address"))
    }

    #[test]
    fn internal_ranges_are_recognised() {
        for a in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "::127.0.0.1",
            "2001:db8::1",
            "168.63.129.16",
            "::ffff:168.63.129.16",
            "64:ff9b::a83f:8110",
            "2002:a83f:8110::",
        ] {
            assert!(internal(a), "{a} must be internal");
        }
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "168.63.129.15",
            "168.63.129.17",
            "2606:4700::1111",
            "64:ff9b::808:808",
        ] {
            assert!(!internal(a), "{a} must be public");
        }
    }

    #[test]
    fn numeric_spellings_of_loopback_are_refused() {
        let policy = AddressPolicy::default();
        for url in [
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://localhost/",
            "http://LOCALHOST./",
            "https://[::1]/",
            "http://168.63.129.16/machine",
            "http://2822734096/",
            "http://0xa8.0x3f.0x81.0x10/",
        ] {
            assert!(
                matches!(check_url(url, &policy, false), Err(UrlRefusal::InternalAddress(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn scheme_credentials_and_allow_list_are_checked() {
        let policy = AddressPolicy {
            allowed_hosts: vec!["*.example.com".into()],
            ..Default::default()
        };
        assert_eq!(
            check_url("ftp://a.example.com/x", &policy, false),
            Err(UrlRefusal::Scheme)
        );
        assert_eq!(
            check_url("https://u:p@a.example.com/", &policy, false),
            Err(UrlRefusal::Credentials)
        );
        assert!(matches!(
            check_url("https://example.org/", &policy, false),
            Err(UrlRefusal::HostNotAllowed(_))
        ));
        assert!(matches!(
            check_url("https://example.com/", &policy, false),
            Err(UrlRefusal::HostNotAllowed(_))
        ));
        assert!(check_url("https://cdn.example.com/v.mp4", &policy, false).is_ok());
        assert_eq!(
            check_url("http://cdn.example.com/", &policy, true),
            Err(UrlRefusal::PlainHttp)
        );
    }

    #[test]
    fn allowed_networks_admit_plain_http_to_internal_receivers() {
        let policy = AddressPolicy {
            allowed_networks: vec!["10.20.0.0/16".parse().expect("cidr")],
            ..Default::default()
        };
        assert!(check_url("http://10.20.1.2:8080/hook", &policy, true).is_ok());
        assert!(check_url("http://10.21.1.2/hook", &policy, true).is_err());
    }
}
