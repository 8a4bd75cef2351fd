//! Cluster formation: which one node initialises the Raft cluster, and with which voters.
//!
//! There is no bootstrap command. Every node runs this machine from the moment it gossips
//! until it learns that a cluster exists (another node initialised it, or this one did).
//!
//! The rule:
//! 1. From its gossip view a node ranks the alive eligible nodes ([`crate::peer`]) and takes
//!    the first `voter_count(wanted, eligible)` as the initial voters. Only the first of them,
//!    the *candidate*, acts. It waits until the set is as large as wanted, or until the
//!    formation wait has passed (so that a lone node still becomes a cluster of one).
//! 2. The candidate asks each initial voter for its *grant*. A node grants to one candidate
//!    at a time and writes the promise durably before it answers, and it refuses a candidate
//!    when it knows a better-ranked eligible node (that node will be the candidate once
//!    views agree). A candidate promises itself first.
//! 3. With a grant from every initial voter, the candidate initialises Raft with exactly
//!    those voters and records that durably. Nobody else ever does.
//! 4. A candidate that learns of a better-ranked node withdraws and releases its grants;
//!    a node bound to a candidate asks it, on every retry, whether it still counts the
//!    grant, and is released when it does not. Attempt numbers keep a late release from
//!    freeing a grant that a newer attempt of the same candidate counts.
//!
//! Why exactly one: two candidates can both initialise only with two voter sets that share
//! no node, since a shared node's grant goes to one of them at a time and is never taken
//! back from a candidate that could still count it. Sets that are the first ranked nodes of
//! two views share a node unless the views are disjoint in their best nodes, which on one
//! segment happens only when the formation wait ends before discovery has shown the nodes
//! to each other (or with a partition at first boot that lasts past the wait). The
//! stateright model in `tests/models.rs` checks this under every order of delivery, loss
//! and restart, with the formation wait ending only once discovery has run.
//!
//! Left as it is: a node bound to a candidate that dies for good before it initialises
//! stays bound (forming a cluster without it) until that candidate returns.

use std::collections::BTreeSet;

use keelson_config::model::Role;
use serde::{Deserialize, Serialize};

use crate::peer::{self, Peer};

/// What this node keeps on STATE, written (and synced) before any message that depends on it
/// is sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Record {
    /// The candidate this node granted its support to, if any (itself while a candidate).
    pub promise: Option<Promise>,
    /// Candidacies this node has started, so that each gets a new attempt number.
    pub attempts: u64,
    /// The voters this node initialised the cluster with, once it has.
    pub initialised: Option<Vec<String>>,
}

/// A grant: to whom, for which of its attempts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Promise {
    /// The candidate.
    pub candidate: String,
    /// The candidate's attempt the grant counts for.
    pub attempt: u64,
}

/// The messages formation exchanges between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Message {
    /// A candidate asks for the receiver's grant.
    AskGrant {
        /// The candidate's attempt.
        attempt: u64,
        /// The candidate's role, which ranks it.
        role: RoleRank,
    },
    /// The receiver's grant for that attempt.
    Grant {
        /// The attempt granted.
        attempt: u64,
    },
    /// No grant.
    Refuse {
        /// The attempt refused.
        attempt: u64,
        /// Why.
        reason: Refusal,
    },
    /// A candidate no longer counts the grant: the receiver is free.
    Release {
        /// The attempt released.
        attempt: u64,
    },
    /// A node bound to the receiver asks whether its grant still counts.
    StillCounted {
        /// The attempt the grant was for.
        attempt: u64,
    },
}

/// A role as the ranking sees it, small enough to travel and to hash in models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RoleRank {
    /// `control-plane`.
    ControlPlane,
    /// `auto`.
    Auto,
}

impl RoleRank {
    fn role(self) -> Role {
        match self {
            RoleRank::ControlPlane => Role::ControlPlane,
            RoleRank::Auto => Role::Auto,
        }
    }
}

/// Why a grant was refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Refusal {
    /// The receiver's grant is with another candidate (possibly itself).
    Promised(String),
    /// The receiver knows a better-ranked eligible node.
    Outranked(String),
    /// A cluster exists already.
    ClusterExists,
    /// The receiver may not vote (its role is `worker`).
    NotEligible,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The gossip view now holds these peers (this node among them or not).
    View(Vec<Peer>),
    /// The formation wait has passed since this node started.
    WaitOver,
    /// Gossip shows a member of an existing cluster: formation is over for this node.
    ClusterExists,
    /// The retry period passed: lost messages are sent again.
    Retry,
    /// A message from another node.
    Received {
        /// The sender's name.
        from: String,
        /// What it sent.
        message: Message,
    },
}

/// What the shell does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write this record durably before sending anything that follows.
    Save(Record),
    /// Send a message to a node.
    Send {
        /// The receiver's name.
        to: String,
        /// What to send.
        message: Message,
    },
    /// Initialise Raft with these voters (this node among them); formation is over.
    Initialise {
        /// The initial voters, best-ranked first.
        voters: Vec<String>,
    },
}

/// A candidacy in progress.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Candidacy {
    attempt: u64,
    voters: Vec<String>,
    grants: BTreeSet<String>,
}

/// One node's formation machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Formation {
    me: String,
    role: Role,
    wanted: usize,
    view: Vec<Peer>,
    wait_over: bool,
    cluster_exists: bool,
    record: Record,
    candidacy: Option<Candidacy>,
}

impl Formation {
    /// The machine of node `me` with `role`, wanting `wanted` voters (1, 3 or 5), resuming
    /// from the record it kept (`Record::default()` on first boot).
    pub fn new(me: impl Into<String>, role: Role, wanted: usize, record: Record) -> Formation {
        Formation {
            me: me.into(),
            role,
            wanted,
            view: Vec::new(),
            wait_over: false,
            cluster_exists: false,
            record,
            candidacy: None,
        }
    }

    /// What this node keeps durably.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// Whether formation is over for this node (it initialised, or a cluster exists).
    pub fn is_over(&self) -> bool {
        self.record.initialised.is_some() || self.cluster_exists
    }

    /// The voters of the candidacy in progress, if this node is a candidate.
    pub fn candidacy(&self) -> Option<&[String]> {
        self.candidacy.as_ref().map(|c| c.voters.as_slice())
    }

    /// Takes what happened; returns what to do, `Save` first when the record changed.
    pub fn handle(&mut self, input: Input) -> Vec<Output> {
        let before = self.record.clone();
        let mut sends = Vec::new();
        match input {
            Input::View(peers) => self.view = peers,
            Input::WaitOver => self.wait_over = true,
            Input::ClusterExists => self.cluster_exists = true,
            Input::Retry => self.retry(&mut sends),
            Input::Received { from, message } => self.receive(from, message, &mut sends),
        }
        let initialise = self.step(&mut sends);
        let mut outputs = Vec::new();
        if self.record != before {
            outputs.push(Output::Save(self.record.clone()));
        }
        outputs.extend(sends);
        outputs.extend(initialise);
        outputs
    }

    /// The eligible alive nodes best first, this node counted as alive.
    fn ranked(&self) -> Vec<(Role, String)> {
        let mut peers = self.view.clone();
        peers.retain(|peer| peer.name != self.me);
        peers.push(Peer::alive(self.me.clone(), self.role));
        peer::ranked_alive(&peers)
            .into_iter()
            .map(|peer| (peer.role, peer.name.clone()))
            .collect()
    }

    /// Becomes, stays or stops being a candidate; initialises when every grant is in.
    fn step(&mut self, sends: &mut Vec<Output>) -> Option<Output> {
        if self.is_over() || !peer::eligible(self.role) {
            self.withdraw(sends);
            return None;
        }
        let ranked = self.ranked();
        if ranked.first().map(|(_, name)| name) != Some(&self.me) {
            self.withdraw(sends);
            return None;
        }
        let count = peer::voter_count(self.wanted, ranked.len());
        if count < self.wanted && !self.wait_over {
            return None;
        }
        if let Some(promise) = &self.record.promise {
            if promise.candidate != self.me {
                // Bound to another candidate until it releases this node.
                return None;
            }
        }
        let voters: Vec<String> = ranked.into_iter().take(count).map(|(_, n)| n).collect();
        let candidacy = match &mut self.candidacy {
            Some(candidacy) => candidacy,
            None => {
                self.record.attempts += 1;
                let attempt = self.record.attempts;
                self.record.promise = Some(Promise {
                    candidate: self.me.clone(),
                    attempt,
                });
                self.candidacy.insert(Candidacy {
                    attempt,
                    voters: Vec::new(),
                    grants: BTreeSet::from([self.me.clone()]),
                })
            }
        };
        if candidacy.voters != voters {
            let attempt = candidacy.attempt;
            let dropped: Vec<String> = candidacy
                .grants
                .iter()
                .filter(|name| !voters.contains(name))
                .cloned()
                .collect();
            for name in dropped {
                candidacy.grants.remove(&name);
                sends.push(send(&name, Message::Release { attempt }));
            }
            for name in voters
                .iter()
                .filter(|name| !candidacy.grants.contains(*name))
            {
                sends.push(send(name, ask(self.role, attempt)));
            }
            candidacy.voters = voters;
        }
        if candidacy
            .voters
            .iter()
            .all(|name| candidacy.grants.contains(name))
        {
            let voters = candidacy.voters.clone();
            self.candidacy = None;
            self.record.initialised = Some(voters.clone());
            return Some(Output::Initialise { voters });
        }
        None
    }

    /// Stops being a candidate and frees every node that granted. The promise to itself
    /// goes too, also one left from before a restart, unless this node initialised (then
    /// the grants it counted are spent for good).
    fn withdraw(&mut self, sends: &mut Vec<Output>) {
        if let Some(candidacy) = self.candidacy.take() {
            for name in candidacy.grants.iter().filter(|name| **name != self.me) {
                let attempt = candidacy.attempt;
                sends.push(send(name, Message::Release { attempt }));
            }
        }
        let promised_itself = self
            .record
            .promise
            .as_ref()
            .is_some_and(|p| p.candidate == self.me);
        if promised_itself && self.record.initialised.is_none() {
            self.record.promise = None;
        }
    }

    /// Sends again what may have been lost: a candidate's asks, a bound node's question.
    fn retry(&mut self, sends: &mut Vec<Output>) {
        if let Some(candidacy) = &self.candidacy {
            for name in &candidacy.voters {
                if !candidacy.grants.contains(name) {
                    sends.push(send(name, ask(self.role, candidacy.attempt)));
                }
            }
        } else if let Some(promise) = &self.record.promise {
            if promise.candidate != self.me && !self.is_over() {
                sends.push(send(
                    &promise.candidate,
                    Message::StillCounted {
                        attempt: promise.attempt,
                    },
                ));
            }
        }
    }

    fn receive(&mut self, from: String, message: Message, sends: &mut Vec<Output>) {
        match message {
            Message::AskGrant { attempt, role } => {
                let answer = self.answer(&from, attempt, role.role());
                sends.push(send(&from, answer));
            }
            Message::Grant { attempt } => {
                let spent = self.counted_when_initialising(&from, attempt);
                match &mut self.candidacy {
                    Some(candidacy)
                        if candidacy.attempt == attempt && candidacy.voters.contains(&from) =>
                    {
                        candidacy.grants.insert(from);
                    }
                    // A grant this node cannot count (withdrawn, another attempt, not among
                    // the voters) and did not initialise with: give it back.
                    _ if !spent => sends.push(send(&from, Message::Release { attempt })),
                    _ => {}
                }
            }
            Message::Refuse { .. } => {
                // Nothing to do: the refuser's candidate withdraws or initialises, and
                // gossip shows which.
            }
            Message::Release { attempt } => {
                let matches = self
                    .record
                    .promise
                    .as_ref()
                    .is_some_and(|p| p.candidate == from && p.attempt == attempt);
                if matches {
                    self.record.promise = None;
                }
            }
            Message::StillCounted { attempt } => {
                let counted = match &self.candidacy {
                    Some(candidacy) => {
                        candidacy.attempt == attempt && candidacy.voters.contains(&from)
                    }
                    None => self.counted_when_initialising(&from, attempt),
                };
                if !counted {
                    sends.push(send(&from, Message::Release { attempt }));
                }
            }
        }
    }

    /// Whether this node initialised with `from`'s grant of `attempt`: then that grant is
    /// spent for good and must never be released.
    fn counted_when_initialising(&self, from: &str, attempt: u64) -> bool {
        let Some(voters) = &self.record.initialised else {
            return false;
        };
        let initialising_attempt = self.record.promise.as_ref().map(|p| p.attempt);
        initialising_attempt == Some(attempt) && voters.iter().any(|name| name == from)
    }

    /// The answer to `from`'s request for a grant.
    fn answer(&mut self, from: &str, attempt: u64, role: Role) -> Message {
        let refuse = |reason| Message::Refuse { attempt, reason };
        if self.is_over() {
            return refuse(Refusal::ClusterExists);
        }
        if !peer::eligible(self.role) {
            return refuse(Refusal::NotEligible);
        }
        if let Some(promise) = &self.record.promise {
            if promise.candidate != from {
                return refuse(Refusal::Promised(promise.candidate.clone()));
            }
            if attempt < promise.attempt {
                return refuse(Refusal::Promised(promise.candidate.clone()));
            }
        } else if let Some((_, best)) = self
            .ranked()
            .into_iter()
            .find(|(r, name)| name != from && peer::rank_order((*r, name), (role, from)).is_lt())
        {
            return refuse(Refusal::Outranked(best));
        }
        self.record.promise = Some(Promise {
            candidate: from.to_owned(),
            attempt,
        });
        Message::Grant { attempt }
    }
}

/// A request for a grant from a candidate of `role`.
fn ask(role: Role, attempt: u64) -> Message {
    let role = match role {
        Role::ControlPlane => RoleRank::ControlPlane,
        _ => RoleRank::Auto,
    };
    Message::AskGrant { attempt, role }
}

fn send(to: &str, message: Message) -> Output {
    Output::Send {
        to: to.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Formation machines on a lossless network that delivers in order.
    struct Net {
        nodes: Vec<Formation>,
        initialised: Vec<(String, Vec<String>)>,
    }

    impl Net {
        fn new(names: &[&str], wanted: usize) -> Net {
            let nodes = names
                .iter()
                .map(|name| Formation::new(*name, Role::Auto, wanted, Record::default()))
                .collect();
            Net {
                nodes,
                initialised: Vec::new(),
            }
        }

        fn index(&self, name: &str) -> usize {
            self.nodes.iter().position(|n| n.me == name).unwrap()
        }

        fn input(&mut self, node: &str, input: Input) {
            let mut queue = std::collections::VecDeque::from([(self.index(node), input)]);
            while let Some((node, input)) = queue.pop_front() {
                let from = self.nodes[node].me.clone();
                for output in self.nodes[node].handle(input) {
                    match output {
                        Output::Send { to, message } => {
                            let from = from.clone();
                            queue.push_back((self.index(&to), Input::Received { from, message }));
                        }
                        Output::Initialise { voters } => {
                            self.initialised.push((from.clone(), voters))
                        }
                        Output::Save(_) => {}
                    }
                }
            }
        }

        fn show(&mut self, node: &str, names: &[&str]) {
            let view = names.iter().map(|n| Peer::alive(*n, Role::Auto)).collect();
            self.input(node, Input::View(view));
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn the_best_ranked_node_initialises_once_it_sees_the_wanted_voters() {
        let mut net = Net::new(&["a", "b", "c"], 3);
        net.show("b", &["a", "b", "c"]);
        net.show("c", &["a", "b", "c"]);
        assert!(net.initialised.is_empty());
        net.show("a", &["a", "b"]);
        assert!(net.initialised.is_empty(), "two of three wanted: it waits");
        net.show("a", &["a", "b", "c"]);
        assert_eq!(net.initialised, [("a".into(), names(&["a", "b", "c"]))]);
        let promised_to_a = |n: &Formation| n.record.promise.as_ref().unwrap().candidate == "a";
        assert!(net.nodes.iter().all(promised_to_a));
        // Formation is over everywhere once gossip shows the cluster.
        net.input("b", Input::ClusterExists);
        assert!(net.nodes[1].is_over());
    }

    #[test]
    fn two_eligible_nodes_make_one_voter() {
        let mut net = Net::new(&["b", "c"], 3);
        net.show("b", &["b", "c"]);
        net.show("c", &["b", "c"]);
        net.input("c", Input::WaitOver);
        assert!(net.initialised.is_empty(), "c is not the best-ranked");
        net.input("b", Input::WaitOver);
        assert_eq!(net.initialised, [("b".into(), names(&["b"]))]);
    }

    #[test]
    fn a_lone_node_initialises_alone_once_the_wait_is_over() {
        let mut node = Formation::new("solo", Role::Auto, 3, Record::default());
        assert!(node.handle(Input::View(Vec::new())).is_empty());
        let outputs = node.handle(Input::WaitOver);
        assert!(matches!(&outputs[0], Output::Save(record) if record.initialised.is_some()));
        assert_eq!(
            outputs.last(),
            Some(&Output::Initialise {
                voters: names(&["solo"])
            })
        );
        assert!(node.handle(Input::Retry).is_empty());
    }

    #[test]
    fn a_candidate_that_meets_a_better_node_withdraws_and_its_grants_move() {
        let mut net = Net::new(&["a", "b", "c", "d"], 3);
        // d knows a, so it refuses b; c grants b.
        net.show("d", &["a", "d"]);
        net.show("c", &["b", "c", "d"]);
        net.show("b", &["b", "c", "d"]);
        assert_eq!(net.nodes[1].candidacy(), Some(&names(&["b", "c", "d"])[..]));
        assert_eq!(net.nodes[2].record.promise.as_ref().unwrap().candidate, "b");
        // a sees everyone and asks b and c: both are bound to b.
        net.show("a", &["a", "b", "c", "d"]);
        assert!(net.initialised.is_empty());
        // b learns of a: it withdraws and frees c; a's next retry gathers the grants.
        net.show("b", &["a", "b", "c", "d"]);
        assert_eq!(net.nodes[2].record.promise, None);
        net.input("a", Input::Retry);
        assert_eq!(net.initialised, [("a".into(), names(&["a", "b", "c"]))]);
    }

    /// `from` (an `auto` node) asks for a grant.
    fn asked_by(from: &str, attempt: u64) -> Input {
        Input::Received {
            from: from.into(),
            message: Message::AskGrant {
                attempt,
                role: RoleRank::Auto,
            },
        }
    }

    fn refusal(to: &str, attempt: u64, reason: Refusal) -> Vec<Output> {
        vec![send(to, Message::Refuse { attempt, reason })]
    }

    #[test]
    fn a_grant_is_exclusive_until_released() {
        let mut c = Formation::new("c", Role::Auto, 3, Record::default());
        let outputs = c.handle(asked_by("b", 1));
        assert!(
            matches!(&outputs[0], Output::Save(r) if r.promise.as_ref().unwrap().candidate == "b")
        );
        assert_eq!(outputs[1], send("b", Message::Grant { attempt: 1 }));
        // a ranks before b, but c's grant is with b.
        let promised = Refusal::Promised("b".into());
        assert_eq!(c.handle(asked_by("a", 1)), refusal("a", 1, promised));
        // A stale release of an older attempt frees nothing; the right one does.
        c.handle(asked_by("b", 2));
        let release = |attempt| Input::Received {
            from: "b".into(),
            message: Message::Release { attempt },
        };
        assert!(c.handle(release(1)).is_empty());
        assert_eq!(c.record().promise.as_ref().unwrap().attempt, 2);
        assert_eq!(c.handle(release(2)), [Output::Save(Record::default())]);
    }

    #[test]
    fn a_candidate_restarted_before_it_met_the_better_node_lets_its_own_promise_go() {
        // b stood (promising itself) and restarted; now it sees a, which ranks first.
        let record = Record {
            promise: Some(Promise {
                candidate: "b".into(),
                attempt: 1,
            }),
            attempts: 1,
            initialised: None,
        };
        let mut b = Formation::new("b", Role::Auto, 3, record);
        let view = ["a", "b", "c"].map(|n| Peer::alive(n, Role::Auto)).to_vec();
        let outputs = b.handle(Input::View(view));
        assert_eq!(
            outputs,
            [Output::Save(Record {
                attempts: 1,
                ..Record::default()
            })]
        );
        assert_eq!(
            b.handle(asked_by("a", 1))[1],
            send("a", Message::Grant { attempt: 1 })
        );
    }

    #[test]
    fn workers_neither_grant_nor_stand() {
        let mut worker = Formation::new("a", Role::Worker, 1, Record::default());
        assert!(worker.handle(Input::WaitOver).is_empty());
        let outputs = worker.handle(asked_by("b", 1));
        assert_eq!(outputs, refusal("b", 1, Refusal::NotEligible));
    }
}
