//! Cluster benchmark, gossip half: the real membership core (`keelson_cluster::Membership`)
//! run many times over on the deterministic simulated network, at 100 and 1000 nodes with
//! 1% packet loss. It measures:
//!
//! - how long after a node loses power every other member sees it down, beside
//!   memberlist's LAN suspicion time (4·log10(n) probe periods, the same formula foca's
//!   LAN settings use);
//! - the bytes each node sends per second in a steady cluster (sealed datagrams, whole).
//!
//! The Raft half (failover to a new leader and a served write, in VMs) comes with the
//! control plane; until then the bench says so rather than printing a figure.
//!
//! Figures are printed, never asserted. Run: `cargo bench -p keelson-tests --bench cluster`
//! (100 nodes). `KEELSON_GOSSIP_NODES=100,1000` picks the sizes; 1000 nodes does not finish
//! in ten minutes yet, because checking every node's view is quadratic and each view is
//! rebuilt per check: the next step gives the simulation an incremental view.

use std::time::{Duration, Instant};

use keelson_cluster::membership::{GossipConfig, MemberState};
use keelson_cluster::sim::{Network, Simulation};

fn main() {
    let sizes: Vec<usize> = match std::env::var("KEELSON_GOSSIP_NODES") {
        Ok(sizes) => sizes
            .split(',')
            .filter_map(|size| size.trim().parse().ok())
            .collect(),
        Err(_) => vec![100],
    };
    let mut last = None;
    for nodes in sizes {
        let started = Instant::now();
        let figures = measure(nodes);
        println!(
            "gossip {nodes} nodes: formed in {:.1} s, failed node down everywhere after {:.1} s \
             (memberlist's suspicion alone: {:.1} s), {:.0} bytes/s per node \
             [{:.0} s of wall time]",
            figures.formed.as_secs_f64(),
            figures.detect.as_secs_f64(),
            figures.memberlist_suspicion.as_secs_f64(),
            figures.bytes_per_second,
            started.elapsed().as_secs_f64(),
        );
        last = Some((nodes, figures));
    }
    println!("failover write: not measured yet (the Raft control plane has not landed)");
    if let Some((nodes, figures)) = last {
        println!(
            "gossip {nodes} nodes detect {:.1} s, {:.0} bytes/s per node",
            figures.detect.as_secs_f64(),
            figures.bytes_per_second
        );
    }
}

struct Figures {
    formed: Duration,
    detect: Duration,
    memberlist_suspicion: Duration,
    bytes_per_second: f64,
}

fn measure(nodes: usize) -> Figures {
    let config = GossipConfig::lan(nodes as u32);
    let memberlist_suspicion = config
        .foca
        .probe_period
        .mul_f64(4.0 * (nodes as f64).log10().max(1.0));
    let network = Network {
        loss: 0.01,
        ..Network::default()
    };
    let mut cluster = Simulation::new(nodes, 1, network, config);
    // Everyone joins through the first three nodes, as a config's seeds would have it.
    for node in 0..nodes {
        let seeds: Vec<usize> = (0..3.min(nodes)).filter(|seed| *seed != node).collect();
        cluster.start(node, &seeds);
    }
    // Checking every view is O(n²): look every 100 ms of virtual time, not after every
    // datagram (the figures are rounded up to that step).
    let formed = run_checking_every(&mut cluster, Simulation::converged)
        .expect("the cluster forms within ten minutes of virtual time");
    // Steady state: a minute of gossip, bytes counted over it.
    let before: u64 = (0..nodes).map(|node| cluster.bytes_sent(node)).sum();
    let steady = Duration::from_secs(60);
    cluster.run_for(steady);
    let after: u64 = (0..nodes).map(|node| cluster.bytes_sent(node)).sum();
    let bytes_per_second = (after - before) as f64 / nodes as f64 / steady.as_secs_f64();
    // A node loses power; every other member must see it down.
    let victim = nodes / 2;
    cluster.kill(victim);
    let detect = run_checking_every(&mut cluster, |cluster| {
        (0..cluster.len())
            .filter(|observer| *observer != victim)
            .all(|observer| cluster.state_of(observer, victim) == Some(MemberState::Down))
    })
    .expect("the failed node is declared down within ten minutes of virtual time");
    Figures {
        formed,
        detect,
        memberlist_suspicion,
        bytes_per_second,
    }
}

/// Runs until `done` holds, looking every 100 ms of virtual time, for ten minutes at most.
fn run_checking_every(
    cluster: &mut Simulation,
    done: impl Fn(&Simulation) -> bool,
) -> Option<Duration> {
    let step = Duration::from_millis(100);
    let mut waited = Duration::ZERO;
    while waited < Duration::from_secs(600) {
        if done(cluster) {
            return Some(waited);
        }
        cluster.run_for(step);
        waited += step;
    }
    None
}
