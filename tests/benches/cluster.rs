//! Cluster benchmark, gossip half: the real membership core (`keelson_cluster::Membership`)
//! run many times over on the deterministic simulated network, at 100 and 1000 nodes with
//! 1% packet loss. It measures:
//!
//! - how long after a node loses power every other member sees it down (three nodes, one
//!   after the other), beside memberlist's LAN suspicion time (4·log10(n) probe periods,
//!   the same formula foca's LAN settings use), which Lifeguard's confirmations shorten;
//! - the bytes each node sends per second in a steady cluster (sealed datagrams, whole),
//!   once the join storm's updates have all been passed on;
//! - how many live members were declared down meanwhile (false positives).
//!
//! The Raft half boots a local cluster of three VMs (`keelson_qemu::cluster`), cuts the
//! leader's power, and measures the time until a survivor knows a new leader and until the
//! new leader commits a write (deleting the dead node's object), beside the configured
//! election timeout. `KEELSON_BENCH_FAILOVER=0` leaves it out.
//!
//! Figures are printed, never asserted. Run: `cargo bench -p keelson-tests --bench cluster`.
//! `KEELSON_GOSSIP_NODES` picks the sizes (`100,1000` by default; a thousand nodes take
//! about three minutes of wall time, most of it the join storm).

use std::time::{Duration, Instant};

use keelson_api::cluster::cluster_client::ClusterClient;
use keelson_api::cluster::{DeleteNodeRequest, NodesRequest, StatusRequest, StatusResponse};
use keelson_cluster::membership::{Event, GossipConfig, MemberState};
use keelson_cluster::sim::{Network, Simulation};
use keelson_qemu::cluster::{ClusterSpec, LocalCluster};

fn main() {
    let sizes: Vec<usize> = match std::env::var("KEELSON_GOSSIP_NODES") {
        Ok(sizes) => sizes
            .split(',')
            .filter_map(|size| size.trim().parse().ok())
            .collect(),
        Err(_) => vec![100, 1000],
    };
    let mut last = None;
    for nodes in sizes {
        let started = Instant::now();
        let figures = measure(nodes);
        let each: Vec<String> = figures
            .detections
            .iter()
            .map(|detect| format!("{:.1}", detect.as_secs_f64()))
            .collect();
        println!(
            "gossip {nodes} nodes: formed in {:.1} s, settled {:.1} s later; {} failed nodes down everywhere after \
             {} s (mean {:.1} s; memberlist's suspicion alone: {:.1} s); {:.0} bytes/s per \
             node; {} live members declared down in a steady minute at 1% loss \
             [{:.0} s of wall time]",
            figures.formed.as_secs_f64(),
            figures.settled.as_secs_f64(),
            figures.detections.len(),
            each.join(", "),
            figures.detect().as_secs_f64(),
            figures.memberlist_suspicion.as_secs_f64(),
            figures.bytes_per_second,
            figures.false_downs,
            started.elapsed().as_secs_f64(),
        );
        last = Some((nodes, figures));
    }
    let failover = if std::env::var("KEELSON_BENCH_FAILOVER").as_deref() == Ok("0") {
        None
    } else {
        match failover() {
            Ok(failover) => Some(failover),
            Err(error) => {
                println!("failover: not measured: {error}");
                None
            }
        }
    };
    if let Some((nodes, figures)) = last {
        println!(
            "gossip {nodes} nodes detect {:.1} s, {:.0} bytes/s per node",
            figures.detect().as_secs_f64(),
            figures.bytes_per_second
        );
    }
    if let Some(write) = failover {
        println!("failover write {:.1} s", write.as_secs_f64());
    }
}

/// Three VMs; the leader's power is cut; a new leader, then a write it serves: the time
/// from the cut to that write.
fn failover() -> anyhow::Result<Duration> {
    let image = keelson_tests::test_image();
    let dir = tempfile::Builder::new()
        .prefix("keelson-bench-")
        .tempdir()?;
    let mut spec = ClusterSpec::new("bench", 3, &image, dir.path());
    spec.relay_in_process = true;
    let cluster = LocalCluster::create(&spec)?;
    cluster.wait_formed(Duration::from_secs(900), |_| {})?;
    let tls = cluster.client()?;
    let runtime = keelson_qemu::cluster::runtime()?;
    let endpoint = |name: &str| cluster.node(name).map(|node| node.endpoint());
    // Each node's own view (the forwarded mark keeps it from asking the leader).
    let own_status = |name: &str| -> anyhow::Result<StatusResponse> {
        let endpoint = endpoint(name)?;
        runtime.block_on(async {
            let channel = keelson_api::client::connect(&endpoint, &tls).await?;
            let mut request = tonic::Request::new(StatusRequest {});
            request
                .metadata_mut()
                .insert("keelson-forwarded", "1".parse()?);
            request.set_timeout(Duration::from_secs(1));
            Ok(ClusterClient::new(channel)
                .status(request)
                .await?
                .into_inner())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let leader = loop {
        let status = own_status("bench-1")?;
        if status.voters.len() == 3 && !status.leader.is_empty() {
            break status.leader;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "three voters never formed: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Every node registered, so that the dead leader's object is there to delete.
    loop {
        let registered = runtime.block_on(async {
            let channel = keelson_api::client::connect(&endpoint("bench-1")?, &tls).await?;
            let nodes = ClusterClient::new(channel).nodes(NodesRequest {}).await?;
            anyhow::Ok(nodes.into_inner().nodes.len())
        });
        if registered.as_ref().is_ok_and(|count| *count == 3) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the nodes never registered: {registered:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let survivors: Vec<String> = ["bench-1", "bench-2", "bench-3"]
        .into_iter()
        .filter(|name| *name != leader)
        .map(str::to_owned)
        .collect();
    cluster.stop(&leader)?;
    let cut = Instant::now();
    let (new_leader, leader_after) = 'found: loop {
        for survivor in &survivors {
            if let Ok(status) = own_status(survivor) {
                if !status.leader.is_empty() && status.leader != leader {
                    break 'found (status.leader, cut.elapsed());
                }
            }
        }
        anyhow::ensure!(
            cut.elapsed() < Duration::from_secs(60),
            "no new leader within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let new_endpoint = endpoint(&new_leader)?;
    let write_after = loop {
        let deleted = runtime.block_on(async {
            let channel = keelson_api::client::connect(&new_endpoint, &tls).await?;
            let mut request = tonic::Request::new(DeleteNodeRequest {
                name: leader.clone(),
            });
            request.set_timeout(Duration::from_secs(2));
            anyhow::Ok(ClusterClient::new(channel).delete_node(request).await?)
        });
        if deleted.is_ok() {
            break cut.elapsed();
        }
        anyhow::ensure!(
            cut.elapsed() < Duration::from_secs(60),
            "no write within 60 s: {deleted:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let config = keelson_raft::types::config("bench");
    println!(
        "failover (3 VMs, TCG): leader {leader} cut; {new_leader} leads after {:.1} s, \
         serves a write after {:.1} s (election timeout {:.1}–{:.1} s, heartbeat {:.2} s)",
        leader_after.as_secs_f64(),
        write_after.as_secs_f64(),
        config.election_timeout_min as f64 / 1000.0,
        config.election_timeout_max as f64 / 1000.0,
        config.heartbeat_interval as f64 / 1000.0,
    );
    Ok(write_after)
}

struct Figures {
    formed: Duration,
    /// From formed until no node had updates left to pass on.
    settled: Duration,
    /// The time until every other member saw each failed node down, one per victim.
    detections: Vec<Duration>,
    memberlist_suspicion: Duration,
    bytes_per_second: f64,
    /// Live members declared down during the steady minute (by anyone).
    false_downs: usize,
}

impl Figures {
    /// The mean detection time: what the last line reports.
    fn detect(&self) -> Duration {
        self.detections.iter().sum::<Duration>() / self.detections.len().max(1) as u32
    }
}

/// How many nodes lose power, one after the other, per size.
const VICTIMS: usize = 3;

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
    // Until no node has updates left to pass on (the join storm's take
    // 8·log10(n+1) transmissions each), then steady state: a minute of gossip, bytes
    // counted over it, and any live member that is declared down meanwhile.
    let settled = run_checking_every(&mut cluster, |cluster| {
        (0..cluster.len()).all(|node| {
            cluster
                .membership(node)
                .is_none_or(|core| core.backlog() == 0)
        })
    })
    .expect("the cluster settles within ten minutes of virtual time");
    let downs_before = downs_reported(&cluster);
    let before: u64 = (0..nodes).map(|node| cluster.bytes_sent(node)).sum();
    let steady = Duration::from_secs(60);
    cluster.run_for(steady);
    let after: u64 = (0..nodes).map(|node| cluster.bytes_sent(node)).sum();
    let bytes_per_second = (after - before) as f64 / nodes as f64 / steady.as_secs_f64();
    let false_downs = downs_reported(&cluster).difference(&downs_before).count();
    // Nodes lose power one after the other; every other running member must see each
    // one down.
    let mut detections = Vec::new();
    for victim in (1..=VICTIMS).map(|share| nodes * share / (VICTIMS + 1)) {
        cluster.kill(victim);
        let detect = run_checking_every(&mut cluster, |cluster| {
            (0..cluster.len())
                .filter(|observer| *observer != victim && cluster.is_running(*observer))
                .all(|observer| cluster.state_of(observer, victim) == Some(MemberState::Down))
        })
        .expect("the failed node is declared down within ten minutes of virtual time");
        detections.push(detect);
    }
    Figures {
        formed,
        settled,
        detections,
        memberlist_suspicion,
        bytes_per_second,
        false_downs,
    }
}

/// The identities declared down, as any node reported them so far.
fn downs_reported(cluster: &Simulation) -> std::collections::HashSet<String> {
    (0..cluster.len())
        .flat_map(|node| cluster.events(node))
        .filter_map(|(_, event)| match event {
            Event::Down(id) => Some(format!("{id:?}")),
            _ => None,
        })
        .collect()
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
