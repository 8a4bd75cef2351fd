//! The membership core: SWIM (foca) behind the packet seal, with node information beside it.
//!
//! It is sans-I/O. The shell feeds it what happened (a datagram arrived, a timer it asked for
//! fired, the node's information changed) and performs what it returns: datagrams to send,
//! timers to arm, and events to report. It reads no clock; randomness comes from a seed the
//! shell draws. The same core runs in the agent's UDP shell and, many times over, in the
//! deterministic simulation that the tests and the gossip benchmark drive.
//!
//! Inside the seal a message is one kind byte and its body:
//! - `SWIM`: a foca packet (probes, acks, membership updates, piggy-backed node information);
//! - `INFO`: one node's [`NodeInfo`], sent to a member that asked for it;
//! - `INFO_REQUEST`: "send me your information", sent to a member that is alive but whose
//!   information is missing or older than its identity;
//! - `HELLO`: "I am here", sent to the segment's broadcast address when the config names no
//!   seeds. A node that opens a hello from an address it does not know announces itself
//!   there, and SWIM does the rest. Only a node with the cluster's key can open it, so the
//!   segment may be shared with other clusters.
//!
//! Node information spreads two ways: a change is a foca custom broadcast, which rides on
//! the protocol's own packets until it has been passed on enough times; and any node that
//! sees a member it knows nothing about asks that member directly, when the member comes up
//! and again on every probe round until it has an answer, so that a lost packet or a late
//! join only delays it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use foca::{BroadcastHandler, Foca, Invalidates, Member, Notification, PostcardCodec, State};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::member::{NodeId, NodeInfo};
use crate::seal::{self, Keyring, Refusal, Seal};

const SWIM: u8 = 0;
const INFO: u8 = 1;
const INFO_REQUEST: u8 = 2;
const HELLO: u8 = 3;

/// How often a node with discovery on says hello on its segment while it knows no live
/// member.
pub const HELLO_WHILE_ALONE: Duration = Duration::from_secs(2);
/// How often it says hello once it knows one: groups that formed apart (say the segment was
/// split at boot) still merge.
pub const HELLO_WHILE_CONNECTED: Duration = Duration::from_secs(30);

/// The largest datagram the core sends: fits a 1500-byte link with IPv6 and UDP headers.
pub const MAX_DATAGRAM: usize = 1400;

/// The UDP port nodes gossip on.
pub const GOSSIP_PORT: u16 = 7946;

/// A timer the shell arms for the core and hands back when it fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer(TimerKind);

#[derive(Debug, Clone, PartialEq, Eq)]
enum TimerKind {
    Swim(foca::Timer<NodeId>),
    Hello,
}

/// What the shell does for the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this datagram from the gossip socket.
    Send {
        /// Where to.
        to: SocketAddr,
        /// The sealed datagram.
        packet: Vec<u8>,
    },
    /// Hand `timer` back to [`Membership::fire`] after this long.
    Arm {
        /// How long from now.
        after: Duration,
        /// What to hand back.
        timer: Timer,
    },
    /// Log or act on this.
    Report(Event),
}

/// What the core tells the shell, to log or to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member became reachable.
    Up(NodeId),
    /// A member was declared down.
    Down(NodeId),
    /// A member came back under a new generation.
    Renewed {
        /// The identity the cluster held.
        before: NodeId,
        /// The one that replaced it.
        after: NodeId,
    },
    /// A member's information arrived or changed.
    Info(NodeInfo),
    /// This node was declared down and rejoined under a new generation.
    Rejoined(NodeId),
    /// This node knows no live member (alone, or cut off).
    Isolated,
    /// This node hears from the cluster again.
    Connected,
    /// A datagram was dropped.
    Refused {
        /// The sender's address.
        from: SocketAddr,
        /// Why it was dropped.
        refusal: Refusal,
    },
    /// A datagram opened but SWIM could not use it.
    Unusable {
        /// The sender's address.
        from: SocketAddr,
        /// What was wrong with it.
        reason: String,
    },
}

/// A member's state as the cluster reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemberState {
    /// Answers probes.
    Alive,
    /// Failed a probe; declared down unless it refutes the suspicion in time.
    Suspect,
    /// Declared down (or left).
    Down,
}

impl MemberState {
    /// The word `keelctl cluster members` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        }
    }
}

/// One member in this node's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Its identity.
    pub id: NodeId,
    /// Its state.
    pub state: MemberState,
    /// Its information, once it has arrived.
    pub info: Option<NodeInfo>,
}

/// Counters a node reports about its gossip.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GossipCounters {
    /// Datagrams sent.
    pub packets_sent: u64,
    /// Their bytes, sealed.
    pub bytes_sent: u64,
    /// Datagrams received, whether they opened or not.
    pub packets_received: u64,
    /// Their bytes.
    pub bytes_received: u64,
    /// Dropped datagrams by reason.
    pub refused: BTreeMap<String, u64>,
}

/// Timings of the protocol.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// SWIM's own settings.
    pub foca: foca::Config,
}

impl GossipConfig {
    /// memberlist's LAN settings scaled to the expected cluster size, with periodic
    /// announcements to members known to be down (seeds that were not up yet, nodes that
    /// rebooted), so that a cluster heals without an operator.
    pub fn lan(expected_nodes: u32) -> GossipConfig {
        let mut foca =
            foca::Config::new_lan(NonZeroU32::new(expected_nodes.max(1)).expect("max(1)"));
        foca.max_packet_size =
            NonZeroUsize::new(MAX_DATAGRAM - seal::OVERHEAD - 1).expect("positive");
        foca.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(10),
            num_members: NonZeroUsize::new(2).expect("positive"),
        });
        GossipConfig { foca }
    }
}

/// Node information as this node knows it, shared with the broadcast handler that foca owns.
#[derive(Default)]
struct InfoBook {
    infos: HashMap<String, NodeInfo>,
    /// Infos that arrived since the core last reported them.
    fresh: Vec<NodeInfo>,
}

impl InfoBook {
    /// Keeps `info` if it is newer than what the book holds; says whether it was.
    fn offer(&mut self, info: NodeInfo) -> bool {
        let newer = self
            .infos
            .get(&info.name)
            .is_none_or(|known| info.version() > known.version());
        if newer {
            self.fresh.push(info.clone());
            self.infos.insert(info.name.clone(), info);
        }
        newer
    }
}

type SharedBook = Arc<Mutex<InfoBook>>;

fn lock(book: &SharedBook) -> std::sync::MutexGuard<'_, InfoBook> {
    // The book holds plain data and no method leaves it half-changed: a panic elsewhere
    // cannot have broken it.
    book.lock().unwrap_or_else(PoisonError::into_inner)
}

/// foca's side of node information: which broadcasts are news and worth passing on.
struct InfoBroadcasts(SharedBook);

/// A broadcast's identity: whose information, and how new.
struct InfoKey {
    name: String,
    version: (u64, u64),
}

impl Invalidates for InfoKey {
    fn invalidates(&self, other: &InfoKey) -> bool {
        self.name == other.name && self.version >= other.version
    }
}

#[derive(Debug)]
struct UndecodableInfo(postcard::Error);

impl std::fmt::Display for UndecodableInfo {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "node information that does not decode: {}",
            self.0
        )
    }
}

impl std::error::Error for UndecodableInfo {}

impl BroadcastHandler<NodeId> for InfoBroadcasts {
    type Key = InfoKey;
    type Error = UndecodableInfo;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeId>,
    ) -> Result<Option<InfoKey>, UndecodableInfo> {
        let info = NodeInfo::decode(data).map_err(UndecodableInfo)?;
        let key = InfoKey {
            name: info.name.clone(),
            version: info.version(),
        };
        Ok(lock(&self.0).offer(info).then_some(key))
    }
}

/// What foca asked for during one call, before sealing.
#[derive(Default)]
struct Outbox {
    datagrams: Vec<(NodeId, Vec<u8>)>,
    timers: Vec<(Duration, TimerKind)>,
    notifications: Vec<foca::OwnedNotification<NodeId>>,
    /// The core's own events (dropped datagrams and the like).
    events: Vec<Event>,
}

impl foca::Runtime<NodeId> for Outbox {
    fn notify(&mut self, notification: Notification<'_, NodeId>) {
        self.notifications.push(notification.to_owned());
    }

    fn send_to(&mut self, to: NodeId, data: &[u8]) {
        let mut message = Vec::with_capacity(data.len() + 1);
        message.push(SWIM);
        message.extend_from_slice(data);
        self.datagrams.push((to, message));
    }

    fn submit_after(&mut self, event: foca::Timer<NodeId>, after: Duration) {
        self.timers.push((after, TimerKind::Swim(event)));
    }
}

/// One node's membership.
pub struct Membership {
    foca: Foca<NodeId, PostcardCodec, SmallRng, InfoBroadcasts>,
    book: SharedBook,
    seal: Seal,
    me: NodeInfo,
    outbox: Outbox,
    counters: GossipCounters,
    /// The broadcast address hellos go to, once discovery is on.
    hello_to: Option<SocketAddr>,
    /// Probe rounds so far: the core's only clock.
    probe_rounds: u64,
    /// The round in which each current suspect was first seen suspect.
    suspected_since: HashMap<NodeId, u64>,
    /// Rounds after which a suspicion that never ended is declared down by this node.
    suspicion_rounds: u64,
}

impl Membership {
    /// A node that knows nobody yet. `session` and `seed` come from the system's random
    /// source; `me.generation` is the identity's.
    pub fn new(
        identity: NodeId,
        me: NodeInfo,
        keyring: Keyring,
        session: [u8; 16],
        seed: u64,
        config: &GossipConfig,
    ) -> Membership {
        let book = SharedBook::default();
        let foca = Foca::with_custom_broadcast(
            identity,
            config.foca.clone(),
            SmallRng::seed_from_u64(seed),
            PostcardCodec,
            InfoBroadcasts(book.clone()),
        );
        let mut membership = Membership {
            foca,
            book,
            seal: Seal::new(keyring, session),
            me: me.clone(),
            outbox: Outbox::default(),
            counters: GossipCounters::default(),
            hello_to: None,
            probe_rounds: 0,
            suspected_since: HashMap::new(),
            suspicion_rounds: suspicion_rounds(&config.foca),
        };
        membership.publish(me);
        membership
    }

    /// This node's identity (its generation grows when it rejoins).
    pub fn identity(&self) -> &NodeId {
        self.foca.identity()
    }

    /// Joins through the given addresses (the config's seeds, or peers found on the local
    /// segment): announces to each now, and again periodically while none answers.
    pub fn join(&mut self, seeds: &[SocketAddr]) -> Vec<Output> {
        let mine = self.identity().addr;
        let seeds: Vec<NodeId> = seeds
            .iter()
            .filter(|addr| **addr != mine)
            .map(|addr| NodeId::seed(*addr))
            .collect();
        let result = self.foca.apply_many(
            seeds.iter().cloned().map(Member::down),
            false,
            &mut self.outbox,
        );
        self.note(result);
        for seed in seeds {
            let result = self.foca.announce(seed, &mut self.outbox);
            self.note(result);
        }
        self.flush()
    }

    /// Finds members on the local segment: says hello to `broadcast` now and then on, more
    /// often while the node is alone.
    pub fn discover(&mut self, broadcast: SocketAddr) -> Vec<Output> {
        self.hello_to = Some(broadcast);
        self.say_hello();
        self.flush()
    }

    fn say_hello(&mut self) {
        let Some(broadcast) = self.hello_to else {
            return;
        };
        self.send_message(broadcast, HELLO, &[]);
        let after = if self.foca.num_members() == 0 {
            HELLO_WHILE_ALONE
        } else {
            HELLO_WHILE_CONNECTED
        };
        self.outbox.timers.push((after, TimerKind::Hello));
    }

    /// A datagram arrived.
    pub fn receive(&mut self, from: SocketAddr, packet: &[u8]) -> Vec<Output> {
        self.counters.packets_received += 1;
        self.counters.bytes_received += packet.len() as u64;
        let message = match self.seal.open(packet) {
            Ok(message) => message,
            Err(refusal) => {
                *self
                    .counters
                    .refused
                    .entry(refusal_name(refusal))
                    .or_default() += 1;
                let mut outputs = self.flush();
                outputs.push(Output::Report(Event::Refused { from, refusal }));
                return outputs;
            }
        };
        match message.split_first() {
            Some((&SWIM, body)) => {
                let result = self.foca.handle_data(body, &mut self.outbox);
                self.note_from(from, result);
            }
            Some((&INFO, body)) => match NodeInfo::decode(body) {
                Ok(info) => {
                    lock(&self.book).offer(info);
                }
                Err(error) => self.unusable(from, format!("node information: {error}")),
            },
            Some((&INFO_REQUEST, _)) => {
                let info = self.me.encode();
                self.send_message(from, INFO, &info);
            }
            Some((&HELLO, _)) => {
                // A node that is already a live member needs no introduction.
                let known = self
                    .foca
                    .iter_members()
                    .any(|member| member.id().addr == from);
                if !known && from != self.identity().addr {
                    let result = self.foca.announce(NodeId::seed(from), &mut self.outbox);
                    self.note(result);
                }
            }
            _ => self.unusable(from, "an unknown kind of message".to_string()),
        }
        self.flush()
    }

    /// A timer the core armed fired.
    pub fn fire(&mut self, timer: Timer) -> Vec<Output> {
        match timer.0 {
            TimerKind::Hello => self.say_hello(),
            TimerKind::Swim(timer) => {
                let probing = matches!(timer, foca::Timer::ProbeRandomMember(_));
                let result = self.foca.handle_timer(timer, &mut self.outbox);
                self.note(result);
                if probing {
                    self.probe_rounds += 1;
                    self.end_stale_suspicions();
                    self.ask_for_missing_info();
                }
            }
        }
        self.flush()
    }

    /// This node's information changed: tell the cluster.
    pub fn set_info(&mut self, mut info: NodeInfo) -> Vec<Output> {
        info.generation = self.identity().generation;
        info.revision = self.me.revision + 1;
        self.publish(info);
        // Send it now rather than waiting for the next probe to carry it.
        let result = self.foca.broadcast(&mut self.outbox);
        self.note(result);
        self.flush()
    }

    /// Leaves the cluster politely (on shutdown): the members hear it at once instead of
    /// suspecting the node first.
    pub fn leave(&mut self) -> Vec<Output> {
        let result = self.foca.leave_cluster(&mut self.outbox);
        self.note(result);
        self.flush()
    }

    /// Every member this node knows of, itself included, by name.
    pub fn members(&self) -> Vec<MemberView> {
        let book = lock(&self.book);
        let mut members: Vec<MemberView> = self
            .foca
            .iter_membership_state()
            .filter(|member| !member.id().is_seed())
            .map(|member| MemberView {
                id: member.id().clone(),
                state: match member.state() {
                    State::Alive => MemberState::Alive,
                    State::Suspect => MemberState::Suspect,
                    State::Down => MemberState::Down,
                },
                info: book.infos.get(&member.id().name).cloned(),
            })
            .collect();
        members.push(MemberView {
            id: self.identity().clone(),
            state: MemberState::Alive,
            info: Some(self.me.clone()),
        });
        members.sort_by(|a, b| a.id.name.cmp(&b.id.name));
        members
    }

    /// How this node sees the member called `name` (its newest identity), without building
    /// the whole view: what a simulation of a thousand nodes asks a million times.
    pub fn state_of(&self, name: &str) -> Option<(NodeId, MemberState)> {
        if self.identity().name == name {
            return Some((self.identity().clone(), MemberState::Alive));
        }
        self.foca
            .iter_membership_state()
            .filter(|member| !member.id().is_seed() && member.id().name == name)
            .max_by_key(|member| member.id().generation)
            .map(|member| {
                let state = match member.state() {
                    State::Alive => MemberState::Alive,
                    State::Suspect => MemberState::Suspect,
                    State::Down => MemberState::Down,
                };
                (member.id().clone(), state)
            })
    }

    /// How this node sees every member, by name (its newest identity): one pass, for
    /// looking at many members at once.
    pub fn states(&self) -> HashMap<String, (NodeId, MemberState)> {
        let mut states: HashMap<String, (NodeId, MemberState)> = HashMap::new();
        for member in self.foca.iter_membership_state() {
            if member.id().is_seed() {
                continue;
            }
            let state = match member.state() {
                State::Alive => MemberState::Alive,
                State::Suspect => MemberState::Suspect,
                State::Down => MemberState::Down,
            };
            let newer = states
                .get(&member.id().name)
                .is_none_or(|(known, _)| member.id().generation > known.generation);
            if newer {
                states.insert(member.id().name.clone(), (member.id().clone(), state));
            }
        }
        states.insert(
            self.identity().name.clone(),
            (self.identity().clone(), MemberState::Alive),
        );
        states
    }

    /// The generation of the information this node holds about `name`, if any.
    pub fn info_generation(&self, name: &str) -> Option<u64> {
        if self.identity().name == name {
            return Some(self.me.generation);
        }
        lock(&self.book).infos.get(name).map(|info| info.generation)
    }

    /// What this node has sent, received and dropped.
    pub fn counters(&self) -> &GossipCounters {
        &self.counters
    }

    /// The keys packets are opened with.
    pub fn keyring(&self) -> &Keyring {
        self.seal.keyring()
    }

    /// Changes the keys packets are sealed and opened with (a secret rotation).
    pub fn set_keyring(&mut self, keyring: Keyring) {
        self.seal.set_keyring(keyring);
    }

    fn publish(&mut self, info: NodeInfo) {
        self.me = info.clone();
        let result = self.foca.add_broadcast(&info.encode());
        self.note(result.map(|_| ()));
    }

    /// Declares down the members that stayed suspect past the suspicion time.
    ///
    /// foca ends a suspicion with a timer, and forgets its timers when this node renews its
    /// identity (after it was cut off and declared down itself). A member it suspected
    /// meanwhile would then stay suspect in this node's view for good, since the member
    /// never heard of the suspicion to refute it. Counting probe rounds catches that, and
    /// declaring the member down (as the lost timer would have) lets it refute or renew.
    fn end_stale_suspicions(&mut self) {
        let suspects: Vec<Member<NodeId>> = self
            .foca
            .iter_members()
            .filter(|member| member.state() == State::Suspect)
            .cloned()
            .collect();
        self.suspected_since
            .retain(|id, _| suspects.iter().any(|member| member.id() == id));
        let mut expired = Vec::new();
        for suspect in suspects {
            let since = *self
                .suspected_since
                .entry(suspect.id().clone())
                .or_insert(self.probe_rounds);
            if self.probe_rounds - since > self.suspicion_rounds {
                expired.push(Member::new(
                    suspect.id().clone(),
                    suspect.incarnation(),
                    State::Down,
                ));
            }
        }
        if !expired.is_empty() {
            let result = self
                .foca
                .apply_many(expired.into_iter(), true, &mut self.outbox);
            self.note(result);
        }
    }

    /// Asks each live member whose information is missing, or older than its identity, for
    /// its information.
    fn ask_for_missing_info(&mut self) {
        let wanted: Vec<SocketAddr> = {
            let book = lock(&self.book);
            self.foca
                .iter_members()
                .map(Member::id)
                .filter(|id| lacks_info(&book, id))
                .map(|id| id.addr)
                .collect()
        };
        for addr in wanted {
            self.send_message(addr, INFO_REQUEST, &[]);
        }
    }

    fn lacks_info_of(&self, id: &NodeId) -> bool {
        lacks_info(&lock(&self.book), id)
    }

    fn send_message(&mut self, to: SocketAddr, kind: u8, body: &[u8]) {
        let mut message = Vec::with_capacity(body.len() + 1);
        message.push(kind);
        message.extend_from_slice(body);
        self.outbox.datagrams.push((NodeId::seed(to), message));
    }

    fn unusable(&mut self, from: SocketAddr, reason: String) {
        *self.counters.refused.entry("unusable".into()).or_default() += 1;
        self.outbox.events.push(Event::Unusable { from, reason });
    }

    fn note(&mut self, result: Result<(), foca::Error>) {
        if let Err(error) = result {
            self.unusable(self.identity().addr, error.to_string());
        }
    }

    fn note_from(&mut self, from: SocketAddr, result: Result<(), foca::Error>) {
        match result {
            // A packet of our own, looped back by a broadcast segment: not worth a word.
            Err(foca::Error::DataFromOurselves) | Ok(()) => {}
            Err(error) => self.unusable(from, error.to_string()),
        }
    }

    /// Seals what foca and the core asked to send, and turns the rest into outputs.
    fn flush(&mut self) -> Vec<Output> {
        let outbox = std::mem::take(&mut self.outbox);
        let mut outputs = Vec::new();
        for notification in outbox.notifications {
            use foca::OwnedNotification as Foca;
            let event = match notification {
                Foca::MemberUp(id) => {
                    // Ask for its information at once rather than at the next probe round.
                    if self.lacks_info_of(&id) {
                        self.send_message(id.addr, INFO_REQUEST, &[]);
                    }
                    Event::Up(id)
                }
                Foca::MemberDown(id) => Event::Down(id),
                Foca::Rename(before, after) => Event::Renewed { before, after },
                Foca::Rejoin(id) => {
                    // This node's information follows its identity's generation.
                    let mut info = self.me.clone();
                    info.generation = id.generation;
                    info.revision = 0;
                    self.publish(info);
                    Event::Rejoined(id)
                }
                Foca::Idle => Event::Isolated,
                Foca::Active => Event::Connected,
                _ => continue,
            };
            outputs.push(Output::Report(event));
        }
        outputs.extend(outbox.events.into_iter().map(Output::Report));
        for info in std::mem::take(&mut lock(&self.book).fresh) {
            if info.name != self.me.name {
                outputs.push(Output::Report(Event::Info(info)));
            }
        }
        for (after, timer) in outbox.timers {
            outputs.push(Output::Arm {
                after,
                timer: Timer(timer),
            });
        }
        // Messages asked for while handling notifications above went to the new outbox.
        let mut datagrams = outbox.datagrams;
        datagrams.append(&mut self.outbox.datagrams);
        for (to, message) in datagrams {
            let packet = self.seal.seal(&message);
            self.counters.packets_sent += 1;
            self.counters.bytes_sent += packet.len() as u64;
            outputs.push(Output::Send {
                to: to.addr,
                packet,
            });
        }
        outputs
    }
}

/// Probe rounds in a suspicion, plus two for the timer's own slack.
fn suspicion_rounds(config: &foca::Config) -> u64 {
    let period = config.probe_period.as_millis().max(1);
    (config.suspect_to_down_after.as_millis().div_ceil(period) + 2) as u64
}

/// Whether a live member's information is missing, or older than its identity.
fn lacks_info(book: &InfoBook, id: &NodeId) -> bool {
    book.infos
        .get(&id.name)
        .is_none_or(|info| info.generation < id.generation)
}

fn refusal_name(refusal: Refusal) -> String {
    match refusal {
        Refusal::Malformed => "malformed",
        Refusal::UnknownKey(_) => "unknown key",
        Refusal::Forged => "forged",
        Refusal::Replayed => "replayed",
    }
    .to_string()
}
