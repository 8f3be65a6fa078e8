//! Address rules decided on the parsed URL host, never by DNS: internal and loopback hosts.

use std::net::{Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// True when the URL's host is an internal address the real upstream refuses to call back:
/// `localhost` names, loopback, private, link-local, CGNAT, unspecified, broadcast, multicast.
pub(crate) fn is_internal_host(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(name)) => is_localhost_name(name),
        Some(Host::Ipv4(ip)) => is_internal_v4(ip),
        Some(Host::Ipv6(ip)) => match ip.to_ipv4_mapped() {
            Some(v4) => is_internal_v4(v4),
            None => is_internal_v6(ip),
        },
        None => true,
    }
}

/// True when the URL's host is a loopback IP literal or a `localhost` name: the only hosts the
/// mock file host fetches from.
pub(crate) fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(name)) => is_localhost_name(name),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        None => false,
    }
}

fn is_localhost_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn internal_hosts_are_recognised_after_normalisation() {
        for internal in [
            "https://localhost/x",
            "https://api.localhost./x",
            "https://127.0.0.1/",
            "https://2130706433/",
            "https://0x7f.1/",
            "https://10.1.2.3/",
            "https://172.16.0.1/",
            "https://192.168.1.1/",
            "https://169.254.169.254/",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://[::1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
        ] {
            assert!(is_internal_host(&url(internal)), "{internal}");
        }
        for public in [
            "https://example.com/",
            "https://8.8.8.8/",
            "https://[2001:db8::1]/",
            "https://100.128.0.1/",
        ] {
            assert!(!is_internal_host(&url(public)), "{public}");
        }
    }

    #[test]
    fn only_loopback_hosts_count_as_loopback() {
        for loopback in [
            "http://127.0.0.1:9/",
            "http://127.8.0.1/",
            "http://localhost/",
            "http://[::1]/",
        ] {
            assert!(is_loopback_host(&url(loopback)), "{loopback}");
        }
        for other in ["http://10.0.0.1/", "http://example.com/", "http://192.168.0.1/"] {
            assert!(!is_loopback_host(&url(other)), "{other}");
        }
    }
}
