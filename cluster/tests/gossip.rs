//! Membership as a cluster experiences it: real cores on the deterministic simulated network.
//! Each test reads like what an operator would check with `keelctl cluster members`.

use std::time::Duration;

use keelson_cluster::membership::{Event, GossipConfig, MemberState};
use keelson_cluster::seal::Refusal;
use keelson_cluster::sim::{node_name, Network, Simulation};

const MINUTE: Duration = Duration::from_secs(60);

/// `nodes` nodes, the first started alone and the others joining through it, run until they
/// all see each other.
fn formed(nodes: usize, seed: u64, network: Network) -> Simulation {
    let mut cluster = Simulation::new(nodes, seed, network, GossipConfig::lan(nodes as u32));
    cluster.start(0, &[]);
    for node in 1..nodes {
        cluster.start(node, &[0]);
    }
    let took = cluster.run_until(MINUTE, Simulation::converged);
    assert!(
        took.is_some(),
        "{nodes} nodes did not converge in a minute; node-1 sees {:?}",
        cluster.view(0)
    );
    cluster
}

fn everyone_else_sees(cluster: &Simulation, node: usize, state: MemberState) -> bool {
    (0..cluster.len())
        .filter(|observer| *observer != node && cluster.is_running(*observer))
        .all(|observer| cluster.state_of(observer, node) == Some(state))
}

#[test]
fn nodes_that_know_one_seed_form_one_cluster_and_know_each_others_information() {
    let cluster = formed(5, 1, Network::default());
    for observer in 0..5 {
        let view = cluster.view(observer);
        let names: Vec<&str> = view.iter().map(|member| member.id.name.as_str()).collect();
        assert_eq!(names, ["node-1", "node-2", "node-3", "node-4", "node-5"]);
        for member in &view {
            let info = member.info.as_ref().expect("information of every member");
            assert_eq!(info.name, member.id.name);
            assert_eq!(info.api_endpoint, format!("{}:50000", member.id.addr.ip()));
        }
    }
    let ups = cluster
        .events(4)
        .iter()
        .filter(|(_, event)| matches!(event, Event::Up(_)));
    assert_eq!(
        ups.count(),
        4,
        "node-5 reports each other member coming up once"
    );
}

/// Nodes booted before their seed keep announcing to it, and join once it is up.
#[test]
fn nodes_that_start_before_their_seed_join_once_it_is_up() {
    let mut cluster = Simulation::new(4, 5, Network::default(), GossipConfig::lan(4));
    for node in 1..4 {
        cluster.start(node, &[0]);
    }
    cluster.run_for(MINUTE);
    assert_eq!(cluster.view(1).len(), 1, "alone while the seed is down");
    cluster.start(0, &[]);
    let took = cluster.run_until(MINUTE, Simulation::converged);
    assert!(
        took.is_some_and(|took| took < Duration::from_secs(5)),
        "joined after {took:?}; node-2 sees {:?}",
        cluster.view(1)
    );
}

#[test]
fn nodes_with_no_seeds_find_each_other_on_their_segment() {
    let mut cluster = Simulation::new(4, 11, Network::default(), GossipConfig::lan(4));
    for node in 0..4 {
        cluster.start_discovering(node);
    }
    let stranger = cluster.add_node("another cluster's secret, 32 characters or more");
    cluster.start_discovering(stranger);
    let took = cluster.run_until(MINUTE, |cluster| {
        (0..4).all(|observer| {
            let view = cluster.view(observer);
            view.len() == 4 && view.iter().all(|member| member.state == MemberState::Alive)
        })
    });
    assert!(
        took.is_some(),
        "no seeds, no cluster: node-1 sees {:?}",
        cluster.view(0)
    );
    cluster.run_for(MINUTE);
    assert_eq!(
        cluster.view(0).len(),
        4,
        "the stranger on the same segment stays out"
    );
    assert_eq!(cluster.view(stranger).len(), 1);
}

#[test]
fn a_node_that_loses_power_is_declared_down_by_every_member() {
    let mut cluster = formed(5, 2, Network::default());
    cluster.kill(3);
    let took = cluster.run_until(MINUTE, |cluster| {
        everyone_else_sees(cluster, 3, MemberState::Down)
    });
    assert!(
        took.is_some(),
        "node-4 still not down everywhere after a minute"
    );
    let reported = cluster
        .events(0)
        .iter()
        .any(|(_, event)| matches!(event, Event::Down(id) if id.name == node_name(3)));
    assert!(reported, "node-1 reports node-4 down");
}

/// Lifeguard's confirmations at work: through a lossy network, suspicions of live members
/// come and go without one of them being declared down; a member that lost power is down
/// everywhere before an unconfirmed suspicion (memberlist's and foca's fixed time) would
/// even have run out.
#[test]
fn confirmed_suspicions_end_sooner_and_lossy_links_take_no_live_member_down() {
    let nodes = 40;
    let lossy = Network {
        loss: 0.02,
        ..Network::default()
    };
    let mut cluster = formed(nodes, 7, lossy);
    cluster.run_for(3 * MINUTE);
    let false_downs: Vec<String> = (0..nodes)
        .flat_map(|observer| {
            cluster
                .events(observer)
                .iter()
                .filter_map(move |(at, event)| match event {
                    Event::Down(id) => Some(format!("{} at {at:?}: {id:?}", node_name(observer))),
                    _ => None,
                })
        })
        .collect();
    assert!(
        false_downs.is_empty(),
        "live members declared down: {false_downs:?}"
    );
    let unconfirmed = GossipConfig::lan(nodes as u32).foca.suspect_to_down_after;
    cluster.kill(17);
    let took = cluster
        .run_until(MINUTE, |cluster| {
            everyone_else_sees(cluster, 17, MemberState::Down)
        })
        .expect("node-18 is down everywhere within a minute");
    assert!(
        took < unconfirmed,
        "down everywhere after {took:?}: no sooner than an unconfirmed suspicion ({unconfirmed:?})"
    );
}

#[test]
fn a_cluster_forms_and_detects_failures_through_a_lossy_network() {
    let lossy = Network {
        loss: 0.1,
        ..Network::default()
    };
    let mut cluster = formed(8, 3, lossy);
    cluster.kill(5);
    assert!(
        cluster
            .run_until(2 * MINUTE, |cluster| everyone_else_sees(
                cluster,
                5,
                MemberState::Down
            ))
            .is_some(),
        "with 10% loss node-6 is still not down everywhere"
    );
    // Lost probes raise suspicions, but live nodes refute them: all of them end up seen
    // alive by everyone, and stay so.
    let live: Vec<usize> = (0..8).filter(|node| *node != 5).collect();
    let all_alive = |cluster: &Simulation| {
        live.iter()
            .all(|node| everyone_else_sees(cluster, *node, MemberState::Alive))
    };
    cluster.run_for(MINUTE);
    assert!(
        cluster.run_until(MINUTE, all_alive).is_some(),
        "a live node stayed suspect or down: {:?}",
        cluster.view(0)
    );
}

#[test]
fn a_node_with_the_wrong_secret_stays_out_and_is_counted() {
    let mut cluster = formed(3, 4, Network::default());
    let stranger = cluster.add_node("a different secret, also 32 characters long");
    cluster.start(stranger, &[0]);
    cluster.run_for(MINUTE);
    for node in 0..3 {
        let names: Vec<String> = cluster.view(node).into_iter().map(|m| m.id.name).collect();
        assert!(!names.contains(&node_name(stranger)), "{names:?}");
    }
    let stranger_view = cluster.view(stranger);
    assert_eq!(
        stranger_view.len(),
        1,
        "the stranger knows only itself: {stranger_view:?}"
    );
    let counters = cluster.membership(0).unwrap().counters();
    assert!(
        counters.refused.get("unknown key").copied().unwrap_or(0) > 0,
        "node-1 counts the stranger's packets: {counters:?}"
    );
    let named = cluster.events(0).iter().any(|(_, event)| {
        matches!(event, Event::Refused { refusal: Refusal::UnknownKey(_), from } if from.ip().to_string() == "10.0.0.4")
    });
    assert!(named, "node-1 says where the refused packets came from");
}

/// Packets refused by every node, for whatever reason.
fn refused_total(cluster: &Simulation) -> u64 {
    (0..cluster.len())
        .filter_map(|node| cluster.membership(node))
        .map(|core| core.counters().refused.values().sum::<u64>())
        .sum()
}

#[test]
fn the_secret_rotates_in_three_rolling_steps_without_losing_a_member() {
    use keelson_cluster::seal::Keyring;
    let old = keelson_cluster::sim::SECRET.to_owned();
    let new = "fedcba9876543210fedcba9876543210".to_owned();
    let mut cluster = formed(3, 11, Network::default());
    let before = refused_total(&cluster);
    // Install the new secret everywhere; then seal with it everywhere; then drop the old
    // one. Each step goes node by node, as apply-config would, with gossip in between.
    let steps = [
        Keyring::of_secrets("lab", &old, std::slice::from_ref(&new)),
        Keyring::of_secrets("lab", &new, std::slice::from_ref(&old)),
        Keyring::of_secrets("lab", &new, &[]),
    ];
    for keyring in steps {
        for node in 0..3 {
            cluster.set_keyring(node, keyring.clone());
            cluster.run_for(Duration::from_secs(5));
            for watched in 0..3 {
                assert!(
                    everyone_else_sees(&cluster, watched, MemberState::Alive),
                    "node-{} is not alive everywhere during the rotation",
                    watched + 1
                );
            }
        }
    }
    cluster.run_for(MINUTE);
    assert!(cluster.converged(), "the cluster holds after the rotation");
    let after = refused_total(&cluster);
    assert_eq!(after, before, "no packet was refused during the rotation");
    // A node that still has only the old secret is a stranger now.
    let late = cluster.add_node(&old);
    cluster.start(late, &[0]);
    cluster.run_for(MINUTE);
    assert_eq!(
        cluster.view(late).len(),
        1,
        "the old secret opens nothing any more"
    );
}

#[test]
fn a_rebooted_node_rejoins_under_its_next_generation() {
    let mut cluster = formed(4, 5, Network::default());
    cluster.kill(2);
    cluster
        .run_until(MINUTE, |cluster| {
            everyone_else_sees(cluster, 2, MemberState::Down)
        })
        .expect("node-3 declared down");
    cluster.start(2, &[0]);
    cluster
        .run_until(MINUTE, Simulation::converged)
        .expect("the rebooted node-3 is a member again");
    let seen_by_first = cluster
        .view(0)
        .into_iter()
        .filter(|member| member.id.name == "node-3")
        .max_by_key(|member| member.id.generation)
        .unwrap();
    assert_eq!(seen_by_first.id.generation, 2);
    assert_eq!(seen_by_first.info.unwrap().generation, 2);
}

#[test]
fn a_node_cut_off_the_network_is_declared_down_and_comes_back_when_healed() {
    let mut cluster = formed(4, 6, Network::default());
    cluster.cut_off(1);
    cluster
        .run_until(MINUTE, |cluster| {
            everyone_else_sees(cluster, 1, MemberState::Down)
        })
        .expect("node-2 declared down while cut off");
    cluster.heal(1);
    cluster
        .run_until(2 * MINUTE, Simulation::converged)
        .expect("node-2 back in the cluster after healing, and no suspicion left behind");
    let rejoined = cluster
        .events(1)
        .iter()
        .any(|(_, event)| matches!(event, Event::Rejoined(_)));
    assert!(
        rejoined,
        "node-2 learned it had been declared down and renewed its identity"
    );
}

#[test]
fn a_change_of_node_information_reaches_every_member() {
    let mut cluster = formed(6, 7, Network::default());
    cluster.set_pod_cidr(4, "10.244.5.0/24");
    let took = cluster.run_until(MINUTE, |cluster| {
        (0..6).all(|observer| {
            cluster.view(observer).iter().any(|member| {
                member.id.name == "node-5"
                    && member
                        .info
                        .as_ref()
                        .is_some_and(|info| info.pod_cidr.as_deref() == Some("10.244.5.0/24"))
            })
        })
    });
    assert!(took.is_some(), "node-5's pod CIDR did not reach everyone");
}

#[test]
fn a_node_that_leaves_is_down_everywhere_without_a_suspicion_first() {
    let mut cluster = formed(4, 8, Network::default());
    cluster.leave(3);
    let took = cluster
        .run_until(MINUTE, |cluster| {
            everyone_else_sees(cluster, 3, MemberState::Down)
        })
        .expect("node-4 down everywhere after leaving");
    let suspicion = GossipConfig::lan(4).foca.suspect_to_down_after;
    assert!(
        took < suspicion,
        "leaving is announced ({took:?}), not detected by suspicion ({suspicion:?})"
    );
}

#[test]
fn a_run_is_the_same_for_the_same_seed() {
    let bytes = |seed| {
        let mut cluster = formed(
            5,
            seed,
            Network {
                loss: 0.05,
                ..Network::default()
            },
        );
        cluster.run_for(MINUTE);
        (0..5)
            .map(|node| cluster.bytes_sent(node))
            .collect::<Vec<u64>>()
    };
    assert_eq!(bytes(9), bytes(9));
    assert_ne!(bytes(9), bytes(10));
}
