//! stateright models of the control plane's protocols, checked exhaustively by `cargo test`.
//!
//! Each model drives the real pure machines of `keelson-control` (not a re-statement of
//! them) through every interleaving the model allows, and checks `Always` properties on
//! every state reached and `Eventually` properties on every path that comes to rest.

use std::collections::BTreeSet;

use keelson_config::model::Role;
use keelson_control::formation::{Formation, Input, Message, Output, Record};
use keelson_control::Peer;
use stateright::{Checker, Model, Property};

const NAMES: [&str; 4] = ["a", "b", "c", "d"];
/// Retries each node may take once the network is quiet, between two changes of view:
/// enough for a lost message and a withdrawn candidate's grants to be asked for again.
const RETRIES: u8 = 3;

/// Formation among `nodes` nodes on a network that reorders, loses (up to `drops`
/// messages) and duplicates nothing; up to `restarts` node restarts (a restart keeps the
/// durable record and loses the rest). Gossip discovery is modelled as each node learning
/// of each other node at any moment, in any order.
struct FormationModel {
    nodes: usize,
    wanted: usize,
    /// Whether the formation wait exists, and then it ends only once the node has heard
    /// of every node (the timing assumption: the wait outlasts discovery).
    wait: bool,
    drops: u8,
    restarts: u8,
    /// Nodes that know each other from the start (a segment that met before the others).
    met: &'static [usize],
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FormationState {
    machines: Vec<Formation>,
    known: Vec<BTreeSet<usize>>,
    waited: Vec<bool>,
    network: BTreeSet<(usize, usize, Message)>,
    /// Every `Initialise` any node ever asked for: (node, voters).
    initialised: Vec<(usize, Vec<String>)>,
    drops_left: u8,
    restarts_left: u8,
    /// Retries left: bounded, so that a run that cannot finish without endless retries
    /// ends, and the `eventually` property sees it (stateright does not judge cycles).
    /// Refilled when a node learns of another, restarts or changes its record (a grant
    /// given or freed), since those are what retries wait for.
    retries_left: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum FormationAction {
    Learn(usize, usize),
    WaitOver(usize),
    Deliver(usize, usize, Message),
    Drop(usize, usize, Message),
    Retry(usize),
    Restart(usize),
    SeeCluster(usize),
}

impl FormationModel {
    fn fresh(&self, node: usize, record: Record) -> Formation {
        Formation::new(NAMES[node], Role::Auto, self.wanted, record)
    }

    fn view(&self, state: &FormationState, node: usize) -> Input {
        let peers = state.known[node]
            .iter()
            .map(|peer| Peer::alive(NAMES[*peer], Role::Auto))
            .collect();
        Input::View(peers)
    }

    /// Feeds `input` to `node`, putting what it sends on the network.
    fn feed(state: &mut FormationState, node: usize, input: Input) {
        for output in state.machines[node].handle(input) {
            match output {
                Output::Save(_) => {}
                Output::Send { to, message } => {
                    let to = NAMES.iter().position(|name| *name == to).unwrap();
                    state.network.insert((node, to, message));
                }
                Output::Initialise { voters } => state.initialised.push((node, voters)),
            }
        }
    }
}

impl Model for FormationModel {
    type State = FormationState;
    type Action = FormationAction;

    fn init_states(&self) -> Vec<FormationState> {
        let mut state = FormationState {
            machines: (0..self.nodes)
                .map(|node| self.fresh(node, Record::default()))
                .collect(),
            known: (0..self.nodes)
                .map(|node| {
                    let mut known = BTreeSet::from([node]);
                    if self.met.contains(&node) {
                        known.extend(self.met);
                    }
                    known
                })
                .collect(),
            waited: vec![false; self.nodes],
            network: BTreeSet::new(),
            initialised: Vec::new(),
            drops_left: self.drops,
            restarts_left: self.restarts,
            retries_left: vec![RETRIES; self.nodes],
        };
        for node in 0..self.nodes {
            let view = self.view(&state, node);
            Self::feed(&mut state, node, view);
        }
        vec![state]
    }

    fn actions(&self, state: &FormationState, actions: &mut Vec<FormationAction>) {
        for node in 0..self.nodes {
            for peer in 0..self.nodes {
                if !state.known[node].contains(&peer) {
                    actions.push(FormationAction::Learn(node, peer));
                }
            }
            if self.wait && !state.waited[node] && state.known[node].len() == self.nodes {
                actions.push(FormationAction::WaitOver(node));
            }
            if state.restarts_left > 0 {
                actions.push(FormationAction::Restart(node));
            }
            let someone_initialised = !state.initialised.is_empty();
            if someone_initialised && !state.machines[node].is_over() {
                actions.push(FormationAction::SeeCluster(node));
            }
            // Retries only on a quiet network, and only when they would send something,
            // so that a path comes to rest once nothing is left to do.
            if state.network.is_empty() && state.retries_left[node] > 0 {
                let mut probe = state.machines[node].clone();
                if !probe.handle(Input::Retry).is_empty() {
                    actions.push(FormationAction::Retry(node));
                }
            }
        }
        for (from, to, message) in &state.network {
            actions.push(FormationAction::Deliver(*from, *to, message.clone()));
            if state.drops_left > 0 {
                actions.push(FormationAction::Drop(*from, *to, message.clone()));
            }
        }
    }

    fn next_state(&self, last: &FormationState, action: FormationAction) -> Option<FormationState> {
        let mut state = last.clone();
        match action {
            FormationAction::Learn(node, peer) => {
                state.retries_left = vec![RETRIES; self.nodes];
                state.known[node].insert(peer);
                let view = self.view(&state, node);
                Self::feed(&mut state, node, view);
            }
            FormationAction::WaitOver(node) => {
                state.waited[node] = true;
                Self::feed(&mut state, node, Input::WaitOver);
            }
            FormationAction::Deliver(from, to, message) => {
                state.network.remove(&(from, to, message.clone()));
                let before = state.machines[to].record().clone();
                let from = NAMES[from].to_owned();
                Self::feed(&mut state, to, Input::Received { from, message });
                if *state.machines[to].record() != before {
                    state.retries_left = vec![RETRIES; self.nodes];
                }
            }
            FormationAction::Drop(from, to, message) => {
                state.network.remove(&(from, to, message));
                state.drops_left -= 1;
            }
            FormationAction::Retry(node) => {
                state.retries_left[node] -= 1;
                Self::feed(&mut state, node, Input::Retry)
            }
            FormationAction::Restart(node) => {
                state.retries_left = vec![RETRIES; self.nodes];
                state.restarts_left -= 1;
                let record = state.machines[node].record().clone();
                state.machines[node] = self.fresh(node, record);
                state.known[node] = BTreeSet::from([node]);
                state.waited[node] = false;
                let view = self.view(&state, node);
                Self::feed(&mut state, node, view);
            }
            FormationAction::SeeCluster(node) => Self::feed(&mut state, node, Input::ClusterExists),
        }
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "at most one node ever initialises",
                |_, state: &FormationState| state.initialised.len() <= 1,
            ),
            Property::always(
                "the initial voters are odd and as many as wanted at most",
                |model: &FormationModel, state: &FormationState| {
                    state
                        .initialised
                        .iter()
                        .all(|(_, voters)| voters.len() % 2 == 1 && voters.len() <= model.wanted)
                },
            ),
            Property::always(
                "the initialiser is among its voters and ranks first",
                |_, state: &FormationState| {
                    state.initialised.iter().all(|(node, voters)| {
                        voters.first().map(String::as_str) == Some(NAMES[*node])
                    })
                },
            ),
            Property::sometimes("a cluster is initialised", |_, state: &FormationState| {
                !state.initialised.is_empty()
            }),
            Property::eventually(
                "once at rest, a cluster is initialised",
                |_, state: &FormationState| !state.initialised.is_empty(),
            ),
        ]
    }
}

fn check(model: FormationModel) -> usize {
    let checker = model.checker().spawn_bfs().join();
    checker.assert_properties();
    checker.unique_state_count()
}

#[test]
fn formation_three_nodes_wanting_three_with_any_discovery_order_loss_and_a_restart() {
    let states = check(FormationModel {
        nodes: 3,
        wanted: 3,
        wait: false,
        drops: 1,
        restarts: 1,
        met: &[],
    });
    println!("formation, 3 nodes wanting 3: {states} states");
}

#[test]
fn formation_three_nodes_wanting_five_with_the_wait() {
    let states = check(FormationModel {
        nodes: 3,
        wanted: 5,
        wait: true,
        drops: 1,
        restarts: 1,
        met: &[],
    });
    println!("formation, 3 nodes wanting 5 (wait): {states} states");
}

/// b, c and d have met and b stands for {b, c, d} while a, which ranks first, is still
/// being discovered: two voter sets that differ, the race the grants exist for.
#[test]
fn formation_four_nodes_wanting_three_when_the_best_node_is_discovered_late() {
    let states = check(FormationModel {
        nodes: 4,
        wanted: 3,
        wait: false,
        drops: 1,
        restarts: 0,
        met: &[1, 2, 3],
    });
    println!("formation, 4 nodes wanting 3, a late: {states} states");
}

/// Without the timing assumption (the wait may end before discovery has shown the nodes to
/// each other), two nodes can each initialise a cluster: the wait is what protects the
/// clusters smaller than wanted, and the model shows it.
#[test]
fn formation_needs_the_wait_to_outlast_discovery() {
    let model = FormationModel {
        nodes: 2,
        wanted: 3,
        wait: true,
        drops: 0,
        restarts: 0,
        met: &[],
    };
    let checker = EarlyWait(model).checker().spawn_bfs().join();
    assert!(
        checker
            .discovery("at most one node ever initialises")
            .is_some(),
        "two lone nodes whose wait ends early should both initialise"
    );
}

/// The formation model with the wait allowed to end at any moment.
struct EarlyWait(FormationModel);

impl Model for EarlyWait {
    type State = FormationState;
    type Action = FormationAction;

    fn init_states(&self) -> Vec<FormationState> {
        self.0.init_states()
    }

    fn actions(&self, state: &FormationState, actions: &mut Vec<FormationAction>) {
        self.0.actions(state, actions);
        for node in 0..self.0.nodes {
            let action = FormationAction::WaitOver(node);
            if !state.waited[node] && !actions.contains(&action) {
                actions.push(action);
            }
        }
    }

    fn next_state(&self, last: &FormationState, action: FormationAction) -> Option<FormationState> {
        self.0.next_state(last, action)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![Property::always(
            "at most one node ever initialises",
            |_, state: &FormationState| state.initialised.len() <= 1,
        )]
    }
}

// The reboot lock.

use keelson_control::rebootlock::{ClusterFacts, RebootLock};
use std::time::Duration;

/// Where a node is in its update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Phase {
    /// An update is installed; the node asks for a slot.
    Waiting,
    /// It holds a slot and may reboot.
    Holding,
    /// It is rebooting: down in gossip, briefly.
    Rebooting,
    /// Its new slot is blessed; it gives the slot back.
    Blessed,
    /// The slot is back: done.
    Done,
    /// Powered off for good.
    Dead,
}

/// Three voters (a, b, c) and a worker (w) update through the lock, whose group has
/// `slots` slots; the worker may die while it holds or waits, and time may pass until
/// gossip has seen it down past a reboot.
struct LockModel {
    slots: u32,
}

const LOCK_NODES: [&str; 4] = ["a", "b", "c", "w"];
const RELEASE_AFTER: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LockState {
    phases: [Phase; 4],
    lock: RebootLock,
    /// Gossip has seen the dead worker down for longer than a reboot takes.
    long_dead: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum LockAction {
    Ask(usize),
    Reboot(usize),
    Boot(usize),
    GiveBack(usize),
    WorkerDies,
    TimePasses,
    ReleaseDead,
}

fn lock_voters() -> Vec<String> {
    LOCK_NODES[..3]
        .iter()
        .map(|name| name.to_string())
        .collect()
}

fn lock_members(state: &LockState) -> Vec<Peer> {
    LOCK_NODES
        .iter()
        .zip(state.phases)
        .map(|(name, phase)| {
            let role = if *name == "w" {
                Role::Worker
            } else {
                Role::Auto
            };
            let down_for = match phase {
                Phase::Rebooting => Some(Duration::from_secs(30)),
                Phase::Dead if state.long_dead => Some(RELEASE_AFTER * 2),
                Phase::Dead => Some(Duration::from_secs(30)),
                _ => None,
            };
            Peer {
                name: name.to_string(),
                role,
                down_for,
            }
        })
        .collect()
}

impl Model for LockModel {
    type State = LockState;
    type Action = LockAction;

    fn init_states(&self) -> Vec<LockState> {
        vec![LockState {
            phases: [Phase::Waiting; 4],
            lock: RebootLock::new(),
            long_dead: false,
        }]
    }

    fn actions(&self, state: &LockState, actions: &mut Vec<LockAction>) {
        for (node, phase) in state.phases.iter().enumerate() {
            match phase {
                // Clients retry both requests until they go through: asking again while
                // holding is the idempotent case.
                Phase::Waiting | Phase::Holding => actions.push(LockAction::Ask(node)),
                _ => {}
            }
            match phase {
                Phase::Holding => actions.push(LockAction::Reboot(node)),
                Phase::Rebooting => actions.push(LockAction::Boot(node)),
                Phase::Blessed => actions.push(LockAction::GiveBack(node)),
                _ => {}
            }
        }
        match state.phases[3] {
            Phase::Waiting | Phase::Holding => actions.push(LockAction::WorkerDies),
            Phase::Dead if !state.long_dead => actions.push(LockAction::TimePasses),
            _ => {}
        }
        actions.push(LockAction::ReleaseDead);
    }

    fn next_state(&self, last: &LockState, action: LockAction) -> Option<LockState> {
        let mut state = last.clone();
        let members = lock_members(&state);
        let voters = lock_voters();
        match action {
            LockAction::Ask(node) => {
                let facts = ClusterFacts {
                    voters: &voters,
                    members: &members,
                };
                state
                    .lock
                    .pre_reboot("default", LOCK_NODES[node], self.slots, facts)
                    .ok()?;
                state.phases[node] = Phase::Holding;
            }
            LockAction::Reboot(node) => state.phases[node] = Phase::Rebooting,
            LockAction::Boot(node) => state.phases[node] = Phase::Blessed,
            LockAction::GiveBack(node) => {
                state.lock.steady_state("default", LOCK_NODES[node]);
                state.phases[node] = Phase::Done;
            }
            LockAction::WorkerDies => state.phases[3] = Phase::Dead,
            LockAction::TimePasses => state.long_dead = true,
            LockAction::ReleaseDead => {
                if state.lock.release_dead(&members, RELEASE_AFTER).is_empty() {
                    return None;
                }
            }
        }
        (state != *last).then_some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "no more holders than slots",
                |model: &LockModel, state: &LockState| {
                    state.lock.holders("default").count() <= model.slots as usize
                },
            ),
            Property::always("a rebooting node holds its slot", |_, state: &LockState| {
                LOCK_NODES
                    .iter()
                    .zip(state.phases)
                    .filter(|(_, phase)| *phase == Phase::Rebooting)
                    .all(|(name, _)| state.lock.holds(name))
            }),
            Property::always(
                "a majority of voters is always up",
                |_, state: &LockState| {
                    let up = state.phases[..3]
                        .iter()
                        .filter(|phase| !matches!(phase, Phase::Rebooting | Phase::Dead))
                        .count();
                    up >= 2
                },
            ),
            Property::eventually("every live node updates", |_, state: &LockState| {
                state
                    .phases
                    .iter()
                    .all(|phase| matches!(phase, Phase::Done | Phase::Dead))
            }),
            Property::sometimes(
                "two workers' worth of slots are used at once",
                |_, state: &LockState| state.lock.holders("default").count() == 2,
            ),
        ]
    }
}

#[test]
fn reboot_lock_with_one_slot() {
    let checker = LockModel { slots: 1 }.checker().spawn_bfs().join();
    // With one slot two holders never happen, so that example cannot be found.
    assert!(checker.discovery("no more holders than slots").is_none());
    assert!(checker
        .discovery("a majority of voters is always up")
        .is_none());
    assert!(checker
        .discovery("a rebooting node holds its slot")
        .is_none());
    assert!(checker.discovery("every live node updates").is_none());
    println!(
        "reboot lock, 1 slot: {} states",
        checker.unique_state_count()
    );
}

#[test]
fn reboot_lock_with_three_slots_still_keeps_the_voters_majority() {
    let checker = LockModel { slots: 3 }.checker().spawn_bfs().join();
    checker.assert_properties();
    println!(
        "reboot lock, 3 slots: {} states",
        checker.unique_state_count()
    );
}
