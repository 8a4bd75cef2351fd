//! Three Raft nodes in one process, each with its log and state machine on disk, talking
//! through an in-process transport that can cut a node off: formation, replication,
//! failover, a partitioned minority that cannot write, and a restart that catches up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keelson_raft::log::DiskLog;
use keelson_raft::machine::Machine;
use keelson_raft::network::{serve, Call, Network, Transport, TransportError};
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
    async fn start() -> Cluster {
        let mut cluster = Cluster {
            hub: Arc::default(),
            dir: tempfile::tempdir().unwrap(),
            machines: HashMap::new(),
        };
        for name in NAMES {
            cluster.boot(name).await;
        }
        let voters: BTreeMap<u64, NodeAddr> = NAMES
            .iter()
            .map(|name| (node_id(name), addr(name)))
            .collect();
        cluster.raft("a").initialize(voters).await.unwrap();
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
    let mut cluster = Cluster::start().await;
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
