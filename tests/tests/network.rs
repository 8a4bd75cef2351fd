//! End-to-end: node networking against a real DHCP server.
//!
//! QEMU's user network hands out addresses but, in the `restrict=on` mode every other test
//! uses, no router and no DNS server. Here the guest's NIC is a tap device in a network
//! namespace made for the test, with dnsmasq on the other side offering a router, a DNS
//! server and two-minute leases, so that the default route, resolv.conf and renewal are
//! checked for real. Nothing leaves the namespace. Needs root (CI runs as root).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keelson_tests::{DhcpLab, TestNode};

#[test]
fn dhcp_gives_the_address_a_default_route_and_dns_and_renews_the_lease() {
    if !DhcpLab::possible() {
        keelson_testkit::skip(
            "dhcp_gives_the_address_a_default_route_and_dns_and_renews_the_lease",
            "DHCP against dnsmasq needs root to create a network namespace",
        );
        return;
    }
    let lab = DhcpLab::start("2m").unwrap();
    let (mut node, line) = TestNode::boot_with(|options| {
        options.api_port = None;
        options.tap = Some(DhcpLab::TAP.to_owned());
        options.netns = Some(lab.netns.clone());
    })
    .unwrap();
    node.api_in_netns = Some((lab.netns.clone(), SocketAddr::from((DhcpLab::GUEST, 50000))));
    assert!(line.contains("config=fw_cfg"), "{line}");

    let status = node.status().unwrap();
    let cidr = format!("{}/24", DhcpLab::GUEST);
    assert!(
        status
            .addresses
            .iter()
            .any(|address| address.interface == "eth0" && address.address == cidr),
        "{:?}",
        status.addresses
    );
    let default_route = status
        .routes
        .iter()
        .find(|route| route.destination == "0.0.0.0/0")
        .unwrap_or_else(|| panic!("no default route in {:?}", status.routes));
    assert_eq!(default_route.gateway, DhcpLab::ROUTER.to_string());
    assert_eq!(default_route.interface, "eth0");
    assert_eq!(status.dns_servers, [DhcpLab::ROUTER.to_string()]);

    // A two-minute lease is renewed at T1 (one minute): dnsmasq sees a second request
    // from the same address and acknowledges it.
    let deadline = Instant::now() + Duration::from_secs(150);
    let acks = |log: &str| {
        log.lines()
            .filter(|line| {
                line.contains("DHCPACK(ktap0)") && line.contains(&DhcpLab::GUEST.to_string())
            })
            .count()
    };
    while acks(&lab.log()) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(2));
    }
    let log = lab.log();
    assert!(
        acks(&log) >= 2,
        "the lease was not renewed; dnsmasq log:\n{log}"
    );
    // Still reachable, still holding the same address after the renewal.
    let again = node.status().unwrap();
    assert!(again
        .addresses
        .iter()
        .any(|address| address.address == cidr));
    node.power_off().unwrap();
}
