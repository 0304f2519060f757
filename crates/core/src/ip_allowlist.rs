//! Client address allowlists: IPv4 and IPv6 addresses and CIDR ranges.
//!
//! IPv4-mapped IPv6 (`::ffff:203.0.113.7`) is treated as the IPv4 address it carries, both in
//! entries and in the addresses checked, so a dual-stack proxy cannot slip past an IPv4 rule.

use std::net::IpAddr;

use ipnet::IpNet;

/// Longest allowlist accepted.
pub const MAX_ENTRIES: usize = 100;

/// Parses one entry, `203.0.113.7`, `10.0.0.0/8`, `2001:db8::/32` or `::ffff:10.0.0.0/104`,
/// into a canonical network (host bits cleared, IPv4-mapped ranges as IPv4).
pub fn parse_entry(entry: &str) -> Option<IpNet> {
    let entry = entry.trim();
    let net = match entry.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => IpNet::from(entry.parse::<IpAddr>().ok()?),
    };
    Some(canonical_net(net))
}

/// The network with host bits cleared and IPv4-mapped IPv6 expressed as IPv4.
fn canonical_net(net: IpNet) -> IpNet {
    let net = net.trunc();
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
    {
        return IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).expect("a prefix of at most 32 is valid for IPv4");
    }
    net
}

/// Parses a client address as sent by a gateway; IPv4-mapped IPv6 becomes IPv4.
pub fn parse_client_ip(text: &str) -> Option<IpAddr> {
    text.trim().parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// Whether `ip` is in any of `networks`; an empty list allows every address.
pub fn allows(networks: &[IpNet], ip: Option<IpAddr>) -> bool {
    if networks.is_empty() {
        return true;
    }
    let Some(ip) = ip.map(|ip| ip.to_canonical()) else {
        return false;
    };
    networks.iter().any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nets(entries: &[&str]) -> Vec<IpNet> {
        entries.iter().map(|e| parse_entry(e).expect(e)).collect()
    }

    #[test]
    fn addresses_and_ranges() {
        let list = nets(&["203.0.113.7", "10.0.0.0/8", "2001:db8::/32"]);
        let ip = |s: &str| parse_client_ip(s);
        assert!(allows(&list, ip("203.0.113.7")));
        assert!(!allows(&list, ip("203.0.113.8")));
        assert!(allows(&list, ip("10.255.1.2")));
        assert!(allows(&list, ip("2001:db8:1::5")));
        assert!(!allows(&list, ip("2001:db9::1")));
        assert!(!allows(&list, None));
        assert!(allows(&[], None));
    }

    #[test]
    fn ipv4_mapped_ipv6_is_ipv4() {
        let list = nets(&["10.0.0.0/8"]);
        assert!(allows(&list, parse_client_ip("::ffff:10.1.2.3")));
        let mapped_rule = nets(&["::ffff:192.0.2.0/120"]);
        assert_eq!(mapped_rule[0].to_string(), "192.0.2.0/24");
        assert!(allows(&mapped_rule, parse_client_ip("192.0.2.9")));
    }

    #[test]
    fn canonicalises_and_rejects() {
        assert_eq!(parse_entry("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_entry("::1").unwrap().to_string(), "::1/128");
        for bad in ["", "10.0.0.0/33", "300.1.1.1", "10.0.0.0/", "host.example", "::/129"] {
            assert_eq!(parse_entry(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn a_network_contains_every_address_it_was_built_from(a: u32, len in 0u8..=32) {
            let ip = std::net::Ipv4Addr::from(a);
            let net = parse_entry(&format!("{ip}/{len}")).unwrap();
            prop_assert!(allows(&[net], Some(IpAddr::V4(ip))));
            let mapped = std::net::Ipv4Addr::from(a).to_ipv6_mapped();
            prop_assert!(allows(&[net], Some(IpAddr::V6(mapped))));
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(text in ".{0,60}") {
            let _ = parse_entry(&text);
            let _ = parse_client_ip(&text);
        }
    }
}
