//! Pod CIDRs as the config writes them (`kubelet.podCIDR`, `cluster.podCIDR`), read once
//! for both their checker here and their users (the IPAM core in `keelson-net`, the lease
//! allocator in `keelson-control`), so the two can never disagree on what is valid.

use std::net::Ipv4Addr;

/// The widest pod CIDR a node takes (a /16: 65534 pods is past any node's pod limit).
pub const WIDEST_POD_PREFIX: u8 = 16;
/// The narrowest: a /30 holds the network, the bridge, one pod and the broadcast.
pub const NARROWEST_POD_PREFIX: u8 = 30;

/// Reads `a.b.c.d/n`: its network address and prefix length, or why it is no pod CIDR
/// (no prefix, not IPv4, a prefix outside /16../30, host bits set) with the fix.
pub fn parse_pod_cidr(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let (address, prefix) = parse_ipv4_network(text)?;
    if !(WIDEST_POD_PREFIX..=NARROWEST_POD_PREFIX).contains(&prefix) {
        return Err(format!(
            "/{prefix} is outside /{WIDEST_POD_PREFIX} to /{NARROWEST_POD_PREFIX} \
             (a node's pods need 2 to 65534 addresses)"
        ));
    }
    Ok((address, prefix))
}

/// `a.b.c.d/n` with no host bits set, any prefix length up to 32.
fn parse_ipv4_network(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let (address, prefix) = text
        .trim()
        .split_once('/')
        .ok_or("it has no /prefix (write it as 10.244.0.0/24)")?;
    let address: Ipv4Addr = address
        .parse()
        .map_err(|_| "its address is not an IPv4 address")?;
    let prefix: u8 = prefix.parse().map_err(|_| "its prefix is not a number")?;
    if prefix > 32 {
        return Err(format!("/{prefix} is longer than an IPv4 address"));
    }
    let network_mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    let bits = u32::from(address);
    if bits & !network_mask != 0 {
        let start = Ipv4Addr::from(bits & network_mask);
        return Err(format!(
            "it has host bits set (did you mean {start}/{prefix}?)"
        ));
    }
    Ok((address, prefix))
}

/// The widest cluster pod network (a /8).
pub const WIDEST_CLUSTER_PREFIX: u8 = 8;

/// Reads a cluster's pod network (`cluster.podCIDR`) as `a.b.c.d/n` with `n` from /8 to
/// `NARROWEST_POD_PREFIX`, refusing what is not one with the fix.
pub fn parse_cluster_cidr(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let (address, prefix) = parse_ipv4_network(text)?;
    if !(WIDEST_CLUSTER_PREFIX..=NARROWEST_POD_PREFIX).contains(&prefix) {
        return Err(format!(
            "/{prefix} is outside /{WIDEST_CLUSTER_PREFIX} to /{NARROWEST_POD_PREFIX}"
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
        assert!(reason("10.0.0.0/33").contains("longer than an IPv4 address"));
    }

    #[test]
    fn cluster_pod_networks_are_read_or_refused_with_the_fix() {
        assert_eq!(
            parse_cluster_cidr("10.244.0.0/16"),
            Ok((Ipv4Addr::new(10, 244, 0, 0), 16))
        );
        assert_eq!(
            parse_cluster_cidr("10.0.0.0/8"),
            Ok((Ipv4Addr::new(10, 0, 0, 0), 8))
        );
        let reason = |text: &str| parse_cluster_cidr(text).unwrap_err();
        assert!(reason("10.0.0.0/7").contains("/7 is outside /8 to /30"));
        assert!(reason("10.244.1.0/16").contains("did you mean 10.244.0.0/16?"));
        assert!(reason("10.0.0.0/40").contains("longer than an IPv4 address"));
    }
}
