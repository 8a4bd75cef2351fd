//! The control plane's pure decisions (`keelson_control`): the voter plan, pod CIDR leases
//! and the reboot lock, over arbitrary views of up to seven nodes.

use std::collections::BTreeSet;
use std::time::Duration;

use keelson_config::model::Role;
use keelson_control::peer::{quorum, ranked_alive};
use keelson_control::podcidr::{Leases, PodNetwork};
use keelson_control::rebootlock::{ClusterFacts, RebootLock};
use keelson_control::voters::{self, Change, Membership, Situation};
use keelson_control::Peer;

const NAMES: [&str; 7] = ["n0", "n1", "n2", "n3", "n4", "n5", "n6"];
const REPLACE_AFTER: Duration = Duration::from_secs(300);

/// Node `i` as byte `b` describes it: role, and alive, rebooting or gone.
fn peer(index: usize, b: u8) -> Peer {
    let role = match b % 3 {
        0 => Role::Auto,
        1 => Role::ControlPlane,
        _ => Role::Worker,
    };
    let down_for = match (b / 3) % 3 {
        0 => None,
        1 => Some(Duration::from_secs(30)),
        _ => Some(Duration::from_secs(600)),
    };
    Peer {
        name: NAMES[index].to_owned(),
        role,
        down_for,
    }
}

fn names_in(mask: u8) -> BTreeSet<String> {
    (0..7)
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| NAMES[i].to_owned())
        .collect()
}

fn alive_in(members: &[Peer], names: &BTreeSet<String>) -> usize {
    names
        .iter()
        .filter(|name| members.iter().any(|p| &p.name == *name && p.is_alive()))
        .count()
}

#[test]
#[cfg_attr(kani, kani::proof)]
#[cfg_attr(kani, kani::unwind(9))]
fn the_voter_plan_never_costs_the_quorum_and_only_promotes_caught_up_learners() {
    bolero::check!()
        .with_type::<([u8; 7], u8, u8, u8, u8)>()
        .for_each(
            |(nodes, voter_mask, learner_mask, caught_up_mask, wanted)| {
                let members: Vec<Peer> =
                    nodes.iter().enumerate().map(|(i, b)| peer(i, *b)).collect();
                let voters = names_in(*voter_mask);
                let learners: BTreeSet<String> = names_in(*learner_mask)
                    .difference(&voters)
                    .cloned()
                    .collect();
                let current = Membership { voters, learners };
                let caught_up = names_in(*caught_up_mask);
                let situation = Situation {
                    members: &members,
                    wanted: [1, 3, 5][usize::from(*wanted % 3)],
                    replace_after: REPLACE_AFTER,
                    caught_up: &caught_up,
                };
                let desired = voters::desired(&current, situation);
                assert!(desired.len() <= situation.wanted);
                if !desired.is_empty() {
                    assert_eq!(desired.len() % 2, 1, "an odd voter count: {desired:?}");
                }
                // Every desired voter may vote; newcomers are alive.
                for name in &desired {
                    let peer = members.iter().find(|p| &p.name == name).unwrap();
                    assert!(peer.is_eligible(), "{name} is a worker");
                    if !current.voters.contains(name) {
                        assert!(peer.is_alive(), "{name} is down but chosen");
                    }
                }
                match voters::plan(&current, situation) {
                    Some(Change::AddLearner(name)) => {
                        assert!(desired.contains(&name));
                        assert!(
                            !current.voters.contains(&name) && !current.learners.contains(&name)
                        );
                    }
                    Some(Change::SetVoters(new)) => {
                        assert_eq!(new, desired);
                        for name in new.difference(&current.voters) {
                            assert!(current.learners.contains(name) && caught_up.contains(name));
                        }
                        assert!(
                            alive_in(&members, &current.voters) >= quorum(current.voters.len())
                        );
                        assert!(alive_in(&members, &new) >= quorum(new.len()));
                    }
                    Some(Change::RemoveLearner(name)) => {
                        assert!(current.learners.contains(&name) && !desired.contains(&name));
                    }
                    None => {}
                }
            },
        );
}

#[test]
#[cfg_attr(kani, kani::proof)]
#[cfg_attr(kani, kani::unwind(9))]
fn the_voter_plan_does_not_depend_on_the_order_of_the_view() {
    bolero::check!()
        .with_type::<([u8; 7], u8, u8)>()
        .for_each(|(nodes, voter_mask, rotation)| {
            let members: Vec<Peer> = nodes.iter().enumerate().map(|(i, b)| peer(i, *b)).collect();
            let mut rotated = members.clone();
            rotated.rotate_left(usize::from(*rotation) % 7);
            rotated.reverse();
            let current = Membership {
                voters: names_in(*voter_mask),
                learners: BTreeSet::new(),
            };
            let caught_up = BTreeSet::new();
            let situation = |members| Situation {
                members,
                wanted: 3,
                replace_after: REPLACE_AFTER,
                caught_up: &caught_up,
            };
            assert_eq!(
                voters::plan(&current, situation(&members)),
                voters::plan(&current, situation(&rotated))
            );
            let a: Vec<&str> = ranked_alive(&members)
                .iter()
                .map(|p| p.name.as_str())
                .collect();
            let b: Vec<&str> = ranked_alive(&rotated)
                .iter()
                .map(|p| p.name.as_str())
                .collect();
            assert_eq!(a, b);
        });
}

#[test]
#[cfg_attr(kani, kani::proof)]
#[cfg_attr(kani, kani::unwind(9))]
fn applying_the_plan_reaches_the_desired_voters() {
    bolero::check!()
        .with_type::<([u8; 7], u8)>()
        .for_each(|(nodes, voter_mask)| {
            let members: Vec<Peer> = nodes.iter().enumerate().map(|(i, b)| peer(i, *b)).collect();
            let mut current = Membership {
                voters: names_in(*voter_mask),
                learners: BTreeSet::new(),
            };
            // Learners catch up at once here; the leader's log is what they wait for.
            let everyone: BTreeSet<String> = NAMES.iter().map(|n| n.to_string()).collect();
            let situation = Situation {
                members: &members,
                wanted: 3,
                replace_after: REPLACE_AFTER,
                caught_up: &everyone,
            };
            for _ in 0..16 {
                match voters::plan(&current, situation) {
                    Some(Change::AddLearner(name)) => {
                        current.learners.insert(name);
                    }
                    Some(Change::SetVoters(new)) => {
                        current.learners.retain(|l| !new.contains(l));
                        current.voters = new;
                    }
                    Some(Change::RemoveLearner(name)) => {
                        current.learners.remove(&name);
                    }
                    None => break,
                }
            }
            assert_eq!(
                voters::plan(&current, situation),
                None,
                "settles: {current:?}"
            );
            let desired = voters::desired(&current, situation);
            let old_majority = alive_in(&members, &current.voters) >= quorum(current.voters.len());
            let new_majority = alive_in(&members, &desired) >= quorum(desired.len());
            // Otherwise the change could not commit, and the plan waits (for example for a
            // rebooting voter that the desired set keeps).
            if old_majority && new_majority && !desired.is_empty() {
                assert_eq!(current.voters, desired, "view {members:?}");
            }
        });
}

#[test]
#[cfg_attr(kani, kani::proof)]
#[cfg_attr(kani, kani::unwind(10))]
fn pod_cidr_leases_never_overlap_and_stay_with_their_node() {
    bolero::check!().with_type::<[u8; 8]>().for_each(|steps| {
        // A /22 cut into /24s: four blocks for seven names, so it fills up.
        let network = PodNetwork::new([10, 244, 0, 0].into(), 22, 24).unwrap();
        let mut leases = Leases::new(network);
        for step in steps {
            let name = NAMES[usize::from(step % 7)];
            if step & 0x80 != 0 {
                leases.release(name);
                assert!(leases.of(name).is_none());
                continue;
            }
            let before = leases.of(name);
            let held = leases.all().count();
            match leases.lease(name) {
                Ok(block) => {
                    if let Some(before) = before {
                        assert_eq!(block, before, "a lease is stable");
                    }
                    assert_eq!(block.prefix, 24);
                    let inside = u32::from(block.network) & 0xffff_fc00;
                    assert_eq!(inside, u32::from(std::net::Ipv4Addr::new(10, 244, 0, 0)));
                }
                Err(_) => {
                    assert!(before.is_none());
                    assert_eq!(held, 4, "refused only when every block is leased");
                }
            }
            let all: Vec<_> = leases.all().collect();
            for (i, (a_node, a)) in all.iter().enumerate() {
                for (b_node, b) in &all[i + 1..] {
                    assert!(!a.overlaps(b), "{a_node} {a} and {b_node} {b} overlap");
                }
            }
        }
    });
}

#[test]
#[cfg_attr(kani, kani::proof)]
#[cfg_attr(kani, kani::unwind(10))]
fn the_reboot_lock_counts_slots_and_keeps_the_voters_majority() {
    bolero::check!()
        .with_type::<([u8; 7], [u8; 8], u8)>()
        .for_each(|(nodes, steps, slots)| {
            let members: Vec<Peer> = nodes.iter().enumerate().map(|(i, b)| peer(i, *b)).collect();
            let voters: Vec<String> = NAMES[..3].iter().map(|n| n.to_string()).collect();
            let slots = u32::from(slots % 3) + 1;
            let mut lock = RebootLock::new();
            let facts = ClusterFacts {
                voters: &voters,
                members: &members,
            };
            for step in steps {
                let node = NAMES[usize::from(step % 7)];
                let group = if step & 0x40 != 0 { "edge" } else { "default" };
                if step & 0x80 != 0 {
                    lock.steady_state(group, node);
                } else if lock.pre_reboot(group, node, slots, facts).is_ok() {
                    assert!(lock.holders(group).any(|h| h == node));
                }
                for group in ["default", "edge"] {
                    assert!(lock.holders(group).count() <= slots as usize);
                }
            }
            // Voters up and not holding a slot: with every holder down at once, the
            // voters that remain are still a majority, unless gossip already saw fewer.
            let up = |v: &&String| members.iter().any(|p| &p.name == *v && p.is_alive());
            let holding = voters.iter().filter(|v| lock.holds(v)).count();
            if holding > 0 {
                let remaining = voters.iter().filter(|v| up(v) && !lock.holds(v)).count();
                let voters_up = voters.iter().filter(up).count();
                assert!(
                    remaining >= quorum(voters.len()) || voters_up < quorum(voters.len()) + holding,
                    "holders {holding}, remaining {remaining}"
                );
            }
        });
}
