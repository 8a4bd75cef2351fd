//! The NAT table, written by netlink into a network namespace of the test's own and read
//! back by Debian's `nft`: what a user listing the node's ruleset would see.

use std::net::Ipv4Addr;

use keelson_net::ipam::PodCidr;
use keelson_net::nat::{NatPlan, PortMapping, Protocol};

/// Runs `work` on a thread of its own in a new network namespace (root only).
fn in_a_new_network_namespace<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        work()
    })
    .join()
    .expect("the namespace's thread")
}

fn listed() -> String {
    // A child of this thread is born in its network namespace.
    let output = std::process::Command::new("nft")
        .args(["list", "table", "ip", "keelson"])
        .output()
        .expect("nft");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_nat_table_reads_back_as_written_and_a_new_plan_replaces_it() {
    let test = "net::nft";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        keelson_testkit::skip(test, "nf_tables needs root");
        return;
    }
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_err()
    {
        keelson_testkit::skip(test, "needs nft (Debian's nftables) to read the table back");
        return;
    }
    let (first, second) = in_a_new_network_namespace(|| {
        let mut plan = NatPlan {
            pod_cidr: PodCidr::parse("10.244.0.0/24").unwrap(),
            ports: vec![PortMapping {
                protocol: Protocol::Tcp,
                host_port: 8080,
                pod_ip: Ipv4Addr::new(10, 244, 0, 2),
                pod_port: 80,
            }],
        };
        keelson_net::nft::apply(&plan).unwrap();
        let first = listed();
        plan.ports = vec![PortMapping {
            protocol: Protocol::Udp,
            host_port: 5353,
            pod_ip: Ipv4Addr::new(10, 244, 0, 7),
            pod_port: 53,
        }];
        keelson_net::nft::apply(&plan).unwrap();
        (first, listed())
    });
    let expected = |dnat: &str| {
        format!(
            "table ip keelson {{\n\
             \tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\t{dnat}\n\
             \t}}\n\n\
             \tchain output {{\n\
             \t\ttype nat hook output priority -100; policy accept;\n\
             \t\t{dnat}\n\
             \t}}\n\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr 10.244.0.0/24 ip daddr != 10.244.0.0/24 masquerade\n\
             \t}}\n\
             }}\n"
        )
    };
    assert_eq!(
        first,
        expected("fib daddr type local tcp dport 8080 dnat to 10.244.0.2:80")
    );
    // The second plan replaced the first whole.
    assert_eq!(
        second,
        expected("fib daddr type local udp dport 5353 dnat to 10.244.0.7:53")
    );
}
