//! Three Raft nodes in one process, each with its log and state machine on disk, talking
//! through an in-process transport that can cut a node off: formation, replication,
//! failover, a partitioned minority that cannot write, and a restart that catches up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keelson_config::model::Role;
use keelson_control::voters::Change;
use keelson_control::Peer;
use keelson_raft::log::DiskLog;
use keelson_raft::machine::Machine;
use keelson_raft::network::{serve, Call, Network, Transport, TransportError};
use keelson_raft::reconcile::{self, Upkeep};
use keelson_raft::types::{self, node_id, Applied, ControlPlane, NodeAddr};
use keelson_store::{Command, KindRef, Op, Outcome};
use openraft::Raft;

/// Every node's Raft, and which nodes are cut off.
#[derive(Default)]
struct Hub {
    rafts: HashMap<String, Raft<ControlPlane>>,
    cut: BTreeSet<String>,
}

#[derive(Clone)]
struct Loopback {
    me: String,
    hub: Arc<Mutex<Hub>>,
}

impl Transport for Loopback {
    async fn call(
        &self,
        target: &NodeAddr,
        call: Call,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        let raft = {
            let hub = self.hub.lock().unwrap();
            if hub.cut.contains(&self.me) || hub.cut.contains(&target.name) {
                return Err(TransportError::Unreachable(format!(
                    "{} is cut off",
                    target.name
                )));
            }
            hub.rafts.get(&target.name).cloned()
        };
        let raft =
            raft.ok_or_else(|| TransportError::Unreachable(format!("{} is down", target.name)))?;
        serve(&raft, call, &body)
            .await
            .map_err(TransportError::Failed)
    }
}

struct Cluster {
    hub: Arc<Mutex<Hub>>,
    dir: tempfile::TempDir,
    machines: HashMap<String, Machine>,
}

const NAMES: [&str; 3] = ["a", "b", "c"];

fn addr(name: &str) -> NodeAddr {
    NodeAddr {
        name: name.to_owned(),
        api: format!("{name}:50000"),
    }
}

impl Cluster {
    /// Boots `names`; the first initialises the cluster with `voters`.
    async fn start(names: &[&str], voters: &[&str]) -> Cluster {
        let mut cluster = Cluster {
            hub: Arc::default(),
            dir: tempfile::tempdir().unwrap(),
            machines: HashMap::new(),
        };
        for name in names {
            cluster.boot(name).await;
        }
        let voters: BTreeMap<u64, NodeAddr> = voters
            .iter()
            .map(|name| (node_id(name), addr(name)))
            .collect();
        cluster.raft(names[0]).initialize(voters).await.unwrap();
        cluster
    }

    async fn boot(&mut self, name: &str) {
        let dir = self.dir.path().join(name);
        let (log, _) = DiskLog::open(&dir.join("log")).unwrap();
        let machine = Machine::open(&dir.join("machine")).unwrap();
        let network = Network::new(Loopback {
            me: name.to_owned(),
            hub: self.hub.clone(),
        });
        let config = Arc::new(types::config("test").validate().unwrap());
        let raft = Raft::new(node_id(name), config, network, log, machine.clone())
            .await
            .unwrap();
        self.hub.lock().unwrap().rafts.insert(name.to_owned(), raft);
        self.machines.insert(name.to_owned(), machine);
    }

    async fn power_off(&mut self, name: &str) {
        let raft = self.hub.lock().unwrap().rafts.remove(name).unwrap();
        raft.shutdown().await.unwrap();
    }

    fn raft(&self, name: &str) -> Raft<ControlPlane> {
        self.hub.lock().unwrap().rafts[name].clone()
    }

    fn cut(&self, name: &str, cut: bool) {
        let mut hub = self.hub.lock().unwrap();
        if cut {
            hub.cut.insert(name.to_owned());
        } else {
            hub.cut.remove(name);
        }
    }

    /// The leader that the nodes in `among` agree on, waiting up to 10 s.
    async fn leader(&self, among: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let leaders: BTreeSet<Option<u64>> = among
                .iter()
                .map(|name| self.raft(name).metrics().borrow().current_leader)
                .collect();
            if let [Some(leader)] = leaders.into_iter().collect::<Vec<_>>()[..] {
                if let Some(name) = among.iter().find(|name| node_id(name) == leader) {
                    return name.to_string();
                }
            }
            assert!(Instant::now() < deadline, "no leader among {among:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn node_names(&self, on: &str) -> Vec<String> {
        let kind = KindRef::new("v1", "Node");
        self.machines[on]
            .read(|store| {
                store
                    .list(&kind, None)
                    .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
                    .collect()
            })
            .await
    }

    /// Waits until `on` has applied a node object named `name`.
    async fn wait_for_node(&self, on: &str, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.node_names(on).await.contains(&name.to_owned()) {
            assert!(Instant::now() < deadline, "{on} never applied {name}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn create_node(name: &str) -> Command {
    Command {
        at_millis: 0,
        op: Op::Create(
            serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}),
        ),
    }
}

async fn write(raft: &Raft<ControlPlane>, name: &str) -> Result<u64, String> {
    let response = raft
        .client_write(create_node(name))
        .await
        .map_err(|e| e.to_string())?;
    match response.data {
        Applied::Store(Outcome::Written(object)) => Ok(object["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_fail_over_and_refuse_writes_in_a_minority() {
    let mut cluster = Cluster::start(&NAMES, &NAMES).await;
    let leader = cluster.leader(&NAMES).await;
    let version = write(&cluster.raft(&leader), "first").await.unwrap();
    for name in NAMES {
        cluster.wait_for_node(name, "first").await;
    }
    assert!(version >= 1);

    // The leader's power goes: the other two elect a new one, which serves writes.
    let killed = Instant::now();
    cluster.power_off(&leader).await;
    let survivors: Vec<&str> = NAMES.iter().copied().filter(|n| *n != leader).collect();
    let new_leader = cluster.leader(&survivors).await;
    let elected = killed.elapsed();
    write(&cluster.raft(&new_leader), "after-failover")
        .await
        .unwrap();
    let served = killed.elapsed();
    println!("failover: new leader after {elected:?}, first write after {served:?}");
    assert_ne!(new_leader, leader);

    // The old leader comes back and catches up from its log and the new leader.
    cluster.boot(&leader).await;
    cluster.wait_for_node(&leader, "after-failover").await;

    // Cut the current leader off: it cannot commit; the other two go on.
    let isolated = cluster.leader(&NAMES).await;
    cluster.cut(&isolated, true);
    let stuck = tokio::time::timeout(
        Duration::from_secs(3),
        write(&cluster.raft(&isolated), "minority"),
    )
    .await;
    assert!(
        !matches!(stuck, Ok(Ok(_))),
        "a cut-off leader acknowledged a write: {stuck:?}"
    );
    let majority: Vec<&str> = NAMES.iter().copied().filter(|n| *n != isolated).collect();
    let majority_leader = cluster.leader(&majority).await;
    write(&cluster.raft(&majority_leader), "majority")
        .await
        .unwrap();
    // Healed, the cut-off node takes the majority's history; its own write never happened.
    cluster.cut(&isolated, false);
    cluster.wait_for_node(&isolated, "majority").await;
    for name in NAMES {
        cluster.wait_for_node(name, "majority").await;
        assert!(
            !cluster
                .node_names(name)
                .await
                .contains(&"minority".to_owned()),
            "{name}"
        );
    }
}

/// Runs the leader's upkeep until it has nothing left to do; returns the changes made.
async fn settle(cluster: &Cluster, among: &[&str], view: &[Peer]) -> Vec<Change> {
    let addresses: BTreeMap<String, NodeAddr> = view
        .iter()
        .map(|peer| (peer.name.clone(), addr(&peer.name)))
        .collect();
    let upkeep = Upkeep {
        members: view,
        addresses: &addresses,
        wanted: 3,
        replace_after: Duration::from_secs(60),
    };
    let mut changes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader = cluster.leader(among).await;
        match reconcile::step(&cluster.raft(&leader), upkeep).await {
            Ok(Some(change)) => changes.push(change),
            Ok(None) => {
                let seen = reconcile::seen(&cluster.raft(&leader));
                let waiting = voters_wanted_but_not_caught_up(&seen);
                if !waiting {
                    return changes;
                }
            }
            // A change still in flight: try again shortly.
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "no settling: {changes:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn voters_wanted_but_not_caught_up(seen: &reconcile::Seen) -> bool {
    seen.membership
        .learners
        .iter()
        .any(|learner| !seen.caught_up.contains(learner))
}

fn voters_of(cluster: &Cluster, on: &str) -> Vec<String> {
    let seen = reconcile::seen(&cluster.raft(on));
    seen.membership.voters.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_voter_grows_to_three_and_a_dead_voter_is_replaced() {
    let names = ["a", "b", "c", "d"];
    let mut cluster = Cluster::start(&names, &["a"]).await;
    let mut view: Vec<Peer> = names.iter().map(|n| Peer::alive(*n, Role::Auto)).collect();
    settle(&cluster, &["a"], &view).await;
    assert_eq!(voters_of(&cluster, "a"), ["a", "b", "c"]);
    write(
        &cluster.raft(&cluster.leader(&["a", "b", "c"]).await),
        "grown",
    )
    .await
    .unwrap();
    for name in ["a", "b", "c"] {
        cluster.wait_for_node(name, "grown").await;
    }
    // d is no member: three voters are wanted, and learners only join to be promoted.
    assert!(cluster.node_names("d").await.is_empty());

    // b dies; while gossip has seen it down for less than the replacement time it keeps
    // its seat, after that d takes it.
    cluster.power_off("b").await;
    view[1].down_for = Some(Duration::from_secs(30));
    let changes = settle(&cluster, &["a", "c"], &view).await;
    assert!(
        !changes.iter().any(|c| matches!(c, Change::SetVoters(_))),
        "{changes:?}"
    );
    view[1].down_for = Some(Duration::from_secs(61));
    settle(&cluster, &["a", "c"], &view).await;
    let leader = cluster.leader(&["a", "c", "d"]).await;
    assert_eq!(voters_of(&cluster, &leader), ["a", "c", "d"]);
    write(&cluster.raft(&leader), "replaced").await.unwrap();
    cluster.wait_for_node("d", "replaced").await;
}
