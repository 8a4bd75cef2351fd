//! The pod CIDR as the config writes it (`kubelet.podCIDR`), read once for both its
//! checker here and the IPAM core in `keelson-net`, so the two can never disagree on what
//! a valid pod CIDR is.

use std::net::Ipv4Addr;

/// The widest pod CIDR a node takes (a /16: 65534 pods is past any node's pod limit).
pub const WIDEST_POD_PREFIX: u8 = 16;
/// The narrowest: a /30 holds the network, the bridge, one pod and the broadcast.
pub const NARROWEST_POD_PREFIX: u8 = 30;

/// Reads `a.b.c.d/n`: its network address and prefix length, or why it is no pod CIDR
/// (no prefix, not IPv4, a prefix outside /16../30, host bits set) with the fix.
pub fn parse_pod_cidr(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let (address, prefix) = text
        .trim()
        .split_once('/')
        .ok_or("it has no /prefix (write it as 10.244.0.0/24)")?;
    let address: Ipv4Addr = address
        .parse()
        .map_err(|_| "its address is not an IPv4 address")?;
    let prefix: u8 = prefix.parse().map_err(|_| "its prefix is not a number")?;
    if !(WIDEST_POD_PREFIX..=NARROWEST_POD_PREFIX).contains(&prefix) {
        return Err(format!(
            "/{prefix} is outside /{WIDEST_POD_PREFIX} to /{NARROWEST_POD_PREFIX} \
             (a node's pods need 2 to 65534 addresses)"
        ));
    }
    let network_mask = u32::MAX << (32 - prefix);
    let bits = u32::from(address);
    if bits & !network_mask != 0 {
        let start = Ipv4Addr::from(bits & network_mask);
        return Err(format!(
            "it has host bits set (did you mean {start}/{prefix}?)"
        ));
    }
    Ok((address, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidrs_are_read_or_refused_with_the_fix() {
        assert_eq!(
            parse_pod_cidr(" 10.244.0.0/24 "),
            Ok((Ipv4Addr::new(10, 244, 0, 0), 24))
        );
        assert_eq!(
            parse_pod_cidr("10.0.0.0/16"),
            Ok((Ipv4Addr::new(10, 0, 0, 0), 16))
        );
        assert_eq!(
            parse_pod_cidr("10.0.0.4/30"),
            Ok((Ipv4Addr::new(10, 0, 0, 4), 30))
        );
        let reason = |text: &str| parse_pod_cidr(text).unwrap_err();
        assert!(reason("10.244.3.7/24").contains("did you mean 10.244.3.0/24?"));
        assert!(reason("10.244.0.0").contains("no /prefix"));
        assert!(reason("10.0.0.0/8").contains("/8 is outside /16 to /30"));
        assert!(reason("10.0.0.0/31").contains("/31 is outside /16 to /30"));
        assert!(reason("10.0.0.0/x").contains("not a number"));
        assert!(reason("fd00::/64").contains("not an IPv4 address"));
    }
}
