//! The pod IPAM (`keelson_net::ipam::Ipam`): no address is ever held twice, every address
//! given is a pod address of the CIDR (never the network, the bridge or the broadcast), a
//! pod keeps its address until released, a release frees exactly that address, nothing is
//! leaked (the holders are exactly the pods allocated and not released), and the CIDR is
//! full only when every pod address is held.
//!
//! Sequences of allocations and releases by a few pods, sampled by bolero (proved by Kani),
//! and enumerated exhaustively for the two smallest CIDRs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use keelson_net::ipam::{Ipam, IpamError, PodCidr};

/// One step: pod `owner % pods` allocates (even) or releases (odd).
fn run(cidr: &str, pods: u8, steps: &[u8]) {
    let cidr = PodCidr::parse(cidr).unwrap();
    let mut ipam: Ipam<u8> = Ipam::new(cidr);
    // What the pods were told, independently of the allocator's own maps.
    let mut told: BTreeMap<u8, Ipv4Addr> = BTreeMap::new();
    for step in steps {
        let owner = (step >> 1) % pods;
        if step & 1 == 0 {
            let outcome = ipam.allocate(&owner);
            match (told.get(&owner), outcome) {
                (Some(held), Ok(address)) => assert_eq!(address, *held, "a pod keeps its address"),
                (None, Ok(address)) => {
                    assert!(
                        cidr.is_pod_address(address),
                        "{address} is not a pod address"
                    );
                    assert!(
                        !told.values().any(|other| *other == address),
                        "{address} given twice"
                    );
                    told.insert(owner, address);
                }
                (None, Err(IpamError::Exhausted { .. })) => {
                    assert_eq!(told.len(), cidr.capacity() as usize, "full only when full")
                }
                (held, Err(error)) => panic!("pod {owner} (holding {held:?}) refused: {error}"),
            }
        } else {
            let released = ipam.release(&owner);
            assert_eq!(
                released,
                told.remove(&owner),
                "a release frees what was held"
            );
        }
        let held: BTreeMap<u8, Ipv4Addr> = ipam
            .assignments()
            .map(|(owner, address)| (*owner, address))
            .collect();
        assert_eq!(
            held, told,
            "the allocator holds exactly what pods were told"
        );
        let distinct: BTreeSet<Ipv4Addr> = held.values().copied().collect();
        assert_eq!(distinct.len(), held.len());
        assert_eq!(ipam.held(), told.len());
    }
}

#[test]
#[cfg_attr(kani, kani::proof)]
#[cfg_attr(kani, kani::unwind(9))]
fn no_address_twice_and_nothing_leaked() {
    bolero::check!()
        .with_type::<(bool, [u8; 8])>()
        .for_each(|(wide, steps)| {
            let cidr = if *wide {
                "10.244.0.0/29"
            } else {
                "10.244.0.0/30"
            };
            run(cidr, 6, steps);
        });
}

/// Every sequence of six steps by three pods, on a /30 (one pod address) and a /29 (five).
#[test]
fn every_short_sequence_keeps_the_promises() {
    for cidr in ["10.244.0.0/30", "10.244.0.0/29"] {
        for code in 0..6u32.pow(6) {
            let steps: Vec<u8> = (0..6)
                .map(|place| ((code / 6u32.pow(place)) % 6) as u8)
                .collect();
            run(cidr, 3, &steps);
        }
    }
}
