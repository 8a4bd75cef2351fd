//! A deterministic, in-process network of real membership cores.
//!
//! Each simulated node is a [`Membership`], the same core the agent runs. The simulation
//! plays the shell for all of them: it delivers their datagrams after a latency, loses some
//! at a chosen rate, fires their timers on a virtual clock and can kill, restart or cut off
//! a node. Given a seed, a run is the same every time, so a failing test replays exactly.
//! The tests use it to check formation, failure detection and rejoining; the gossip
//! benchmark runs it at 100 and 1000 nodes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use keelson_config::model::Role;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::member::{NodeId, NodeInfo};
use crate::membership::{
    Event, GossipConfig, MemberState, MemberView, Membership, Output, Timer, GOSSIP_PORT,
};
use crate::seal::{ClusterKey, Keyring};

/// How a simulated network behaves.
#[derive(Debug, Clone)]
pub struct Network {
    /// The share of datagrams lost, 0.0 to 1.0.
    pub loss: f64,
    /// One-way delay, before jitter.
    pub latency: Duration,
    /// Up to this much more, drawn per datagram (so datagrams reorder).
    pub jitter: Duration,
}

impl Default for Network {
    fn default() -> Network {
        Network {
            loss: 0.0,
            latency: Duration::from_micros(200),
            jitter: Duration::from_micros(300),
        }
    }
}

struct Node {
    name: String,
    addr: SocketAddr,
    key: ClusterKey,
    generation: u64,
    /// Bumped at every start, so that timers and datagrams of a killed run are dropped.
    run: u64,
    core: Option<Membership>,
    bytes_sent: u64,
    events: Vec<(Duration, Event)>,
}

enum Happening {
    Deliver {
        to: usize,
        from: SocketAddr,
        packet: Vec<u8>,
    },
    Fire {
        node: usize,
        run: u64,
        timer: Timer,
    },
}

/// The simulated cluster.
pub struct Simulation {
    now: Duration,
    network: Network,
    config: GossipConfig,
    rng: SmallRng,
    nodes: Vec<Node>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Nodes cut off the segment: nothing reaches them and nothing leaves them.
    cut: HashSet<usize>,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    happenings: HashMap<u64, Happening>,
    next_sequence: u64,
}

/// The name of simulated node `index`: `node-1`, `node-2`, …
pub fn node_name(index: usize) -> String {
    format!("node-{}", index + 1)
}

impl Simulation {
    /// `nodes` nodes of cluster `lab` sharing one secret; none started yet.
    pub fn new(nodes: usize, seed: u64, network: Network, config: GossipConfig) -> Simulation {
        let mut simulation = Simulation {
            now: Duration::ZERO,
            network,
            config,
            rng: SmallRng::seed_from_u64(seed),
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            cut: HashSet::new(),
            queue: BinaryHeap::new(),
            happenings: HashMap::new(),
            next_sequence: 0,
        };
        for _ in 0..nodes {
            simulation.add_node(SECRET);
        }
        simulation
    }

    /// Adds a node with its own secret (not started).
    pub fn add_node(&mut self, secret: &str) -> usize {
        let index = self.nodes.len();
        let addr = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(
                10,
                0,
                (index / 250) as u8,
                (index % 250 + 1) as u8,
            )),
            GOSSIP_PORT,
        );
        self.by_addr.insert(addr, index);
        self.nodes.push(Node {
            name: node_name(index),
            addr,
            key: ClusterKey::from_secret("lab", secret),
            generation: 0,
            run: 0,
            core: None,
            bytes_sent: 0,
            events: Vec::new(),
        });
        index
    }

    /// Starts (or restarts) a node, joining through the given nodes' addresses.
    pub fn start(&mut self, node: usize, seeds: &[usize]) {
        let seeds: Vec<SocketAddr> = seeds.iter().map(|seed| self.nodes[*seed].addr).collect();
        let session: [u8; 16] = self.rng.random();
        let rng_seed: u64 = self.rng.random();
        let entry = &mut self.nodes[node];
        entry.generation += 1;
        entry.run += 1;
        let identity = NodeId::new(&entry.name, entry.addr, entry.generation);
        let info = NodeInfo {
            name: entry.name.clone(),
            generation: entry.generation,
            revision: 0,
            addresses: vec![entry.addr.ip()],
            role: Role::Auto,
            os_version: "0.1.0".into(),
            slot: "a".into(),
            pod_cidr: None,
            api_endpoint: format!("{}:50000", entry.addr.ip()),
        };
        let mut core = Membership::new(
            identity,
            info,
            Keyring::new(entry.key.clone()),
            session,
            rng_seed,
            &self.config,
        );
        let outputs = core.join(&seeds);
        entry.core = Some(core);
        self.perform(node, outputs);
    }

    /// Starts (or restarts) a node with no seeds: it finds the others by saying hello on
    /// the segment.
    pub fn start_discovering(&mut self, node: usize) {
        self.start(node, &[]);
        let broadcast = SocketAddr::new(IpAddr::V4(Ipv4Addr::BROADCAST), GOSSIP_PORT);
        if let Some(core) = self.nodes[node].core.as_mut() {
            let outputs = core.discover(broadcast);
            self.perform(node, outputs);
        }
    }

    /// Stops a node as a power cut would: no goodbye, its timers and datagrams are lost.
    pub fn kill(&mut self, node: usize) {
        self.nodes[node].core = None;
        self.nodes[node].run += 1;
    }

    /// Stops a node politely: it tells the cluster it leaves.
    pub fn leave(&mut self, node: usize) {
        if let Some(core) = self.nodes[node].core.as_mut() {
            let outputs = core.leave();
            self.perform(node, outputs);
        }
    }

    /// Cuts a node off the segment, as a pulled cable would.
    pub fn cut_off(&mut self, node: usize) {
        self.cut.insert(node);
    }

    /// Plugs a cut-off node back in.
    pub fn heal(&mut self, node: usize) {
        self.cut.remove(&node);
    }

    /// Changes a node's information, as the agent does when it learns its pod CIDR.
    pub fn set_pod_cidr(&mut self, node: usize, pod_cidr: &str) {
        let Some(core) = self.nodes[node].core.as_mut() else {
            return;
        };
        let mut info = core
            .members()
            .into_iter()
            .find(|member| member.id == *core.identity())
            .and_then(|member| member.info)
            .expect("a node knows its own information");
        info.pod_cidr = Some(pod_cidr.to_string());
        let outputs = core.set_info(info);
        self.perform(node, outputs);
    }

    /// Virtual time since the simulation began.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// How many nodes there are, running or not.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes at all.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Gives a running node new keys (one step of a secret rotation).
    pub fn set_keyring(&mut self, node: usize, keyring: crate::seal::Keyring) {
        if let Some(core) = self.nodes[node].core.as_mut() {
            core.set_keyring(keyring);
        }
    }

    /// Whether a node is started and not killed.
    pub fn is_running(&self, node: usize) -> bool {
        self.nodes[node].core.is_some()
    }

    /// A running node's view of the cluster.
    pub fn view(&self, node: usize) -> Vec<MemberView> {
        self.nodes[node]
            .core
            .as_ref()
            .map(Membership::members)
            .unwrap_or_default()
    }

    /// How `observer` sees `node`, if it knows it at all.
    pub fn state_of(&self, observer: usize, node: usize) -> Option<MemberState> {
        let name = &self.nodes[node].name;
        self.nodes[observer]
            .core
            .as_ref()?
            .state_of(name)
            .map(|(_, state)| state)
    }

    /// A running node's core.
    pub fn membership(&self, node: usize) -> Option<&Membership> {
        self.nodes[node].core.as_ref()
    }

    /// Bytes a node has put on the wire, across all its runs.
    pub fn bytes_sent(&self, node: usize) -> u64 {
        self.nodes[node].bytes_sent
    }

    /// What a node's core reported, with the virtual time.
    pub fn events(&self, node: usize) -> &[(Duration, Event)] {
        &self.nodes[node].events
    }

    /// Runs the network for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let deadline = self.now + duration;
        while self.step_before(deadline) {}
        self.now = deadline;
    }

    /// Runs until `done` holds (checked after each happening) or `limit` passes; returns
    /// how long it took.
    pub fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Simulation) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        let deadline = start + limit;
        loop {
            if done(self) {
                return Some(self.now - start);
            }
            if !self.step_before(deadline) {
                self.now = deadline;
                return done(self).then(|| self.now - start);
            }
        }
    }

    /// Whether every running node sees every other running node alive, and knows its
    /// information.
    pub fn converged(&self) -> bool {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|n| self.is_running(*n))
            .collect();
        // A cheap necessary condition first: every node counts enough live members.
        let enough = running.iter().all(|observer| {
            let core = self.nodes[*observer].core.as_ref().expect("running");
            core.live_members() + 1 >= running.len()
        });
        enough
            && running.iter().all(|observer| {
                let core = self.nodes[*observer].core.as_ref().expect("running");
                let states = core.states();
                running.iter().all(|node| {
                    // A node renews its identity when it learns it was declared down, so its
                    // generation is the core's, not the one it started with.
                    let identity = self.nodes[*node].core.as_ref().expect("running").identity();
                    states
                        .get(&identity.name)
                        .is_some_and(|(id, state)| id == identity && *state == MemberState::Alive)
                        && core.info_generation(&identity.name) == Some(identity.generation)
                })
            })
    }

    /// Handles the next happening if it is due before `deadline`.
    fn step_before(&mut self, deadline: Duration) -> bool {
        let Some(Reverse((at, sequence))) = self.queue.peek().copied() else {
            return false;
        };
        if at > deadline {
            return false;
        }
        self.queue.pop();
        self.now = at;
        let happening = self.happenings.remove(&sequence).expect("queued");
        match happening {
            Happening::Deliver { to, from, packet } => {
                if let Some(core) = self.nodes[to].core.as_mut() {
                    let outputs = core.receive(from, &packet);
                    self.perform(to, outputs);
                }
            }
            Happening::Fire { node, run, timer } => {
                if self.nodes[node].run == run {
                    if let Some(core) = self.nodes[node].core.as_mut() {
                        let outputs = core.fire(timer);
                        self.perform(node, outputs);
                    }
                }
            }
        }
        true
    }

    fn perform(&mut self, node: usize, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Send { to, packet } => {
                    self.nodes[node].bytes_sent += packet.len() as u64;
                    let targets: Vec<usize> = if to.ip() == IpAddr::V4(Ipv4Addr::BROADCAST) {
                        (0..self.nodes.len())
                            .filter(|target| *target != node)
                            .collect()
                    } else {
                        self.by_addr.get(&to).copied().into_iter().collect()
                    };
                    for target in targets {
                        self.transmit(node, target, packet.clone());
                    }
                }
                Output::Arm { after, timer } => {
                    let run = self.nodes[node].run;
                    self.schedule(after, Happening::Fire { node, run, timer });
                }
                Output::Report(event) => self.nodes[node].events.push((self.now, event)),
            }
        }
    }

    /// One datagram across the segment, unless it is lost or either end is cut off.
    fn transmit(&mut self, from: usize, to: usize, packet: Vec<u8>) {
        let lost = self.rng.random::<f64>() < self.network.loss;
        if lost || self.cut.contains(&from) || self.cut.contains(&to) {
            return;
        }
        let jitter = self.network.jitter.mul_f64(self.rng.random::<f64>());
        let from = self.nodes[from].addr;
        self.schedule(
            self.network.latency + jitter,
            Happening::Deliver { to, from, packet },
        );
    }

    fn schedule(&mut self, after: Duration, happening: Happening) {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.queue.push(Reverse((self.now + after, sequence)));
        self.happenings.insert(sequence, happening);
    }
}

/// The secret the simulated cluster shares.
pub const SECRET: &str = "the simulated cluster's secret, 32+ characters";
