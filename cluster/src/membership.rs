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
//! - `ALIVE`: "I am alive at this incarnation", sent by a suspect straight to each member
//!   whose notice it hears, so that those who would declare it down hear its refutation
//!   first;
//! - `HELLO`: "I am here", sent to the segment's broadcast address when the config names no
//!   seeds. A node that opens a hello from an address it does not know announces itself
//!   there, and SWIM does the rest. Only a node with the cluster's key can open it, so the
//!   segment may be shared with other clusters.
//!
//! Failure detection is SWIM's, with Lifeguard's confirmations on top
//! ([`crate::suspicion`]): every member whose own probe of a suspect fails says so in a
//! custom broadcast (a *suspicion notice*), and a few members that hear of a suspicion check
//! the suspect directly (an `INFO_REQUEST`, which any version answers) and confirm it when
//! no answer comes. Each member times the suspicion itself, from memberlist's length when it
//! stands alone down to two probe periods once three others have confirmed it; those that
//! failed to reach the suspect themselves declare it down when its time is up. A suspect
//! that is alive answers the checks, refutes as SWIM has it, and sends `ALIVE` to each
//! suspecter.
//!
//! Node information spreads two ways: a change is a foca custom broadcast, which rides on
//! the protocol's own packets until it has been passed on enough times; and any node that
//! sees a member it knows nothing about asks that member directly, when the member comes up
//! and again on every probe round until it has an answer, so that a lost packet or a late
//! join only delays it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU8, NonZeroUsize};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use foca::{BroadcastHandler, Foca, Invalidates, Member, Notification, PostcardCodec, State};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::member::{NodeId, NodeInfo};
use crate::seal::{self, Keyring, Refusal, Seal};
use crate::suspicion::{Incarnation, Noted, SuspicionTimes, Suspicions};

const SWIM: u8 = 0;
const INFO: u8 = 1;
const INFO_REQUEST: u8 = 2;
const HELLO: u8 = 3;
const ALIVE: u8 = 4;

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

/// How often the core looks at its open suspicions and checks while any is open: the
/// resolution of its suspicion clock.
const SUSPICION_TICK: Duration = Duration::from_millis(250);

/// How many members, on average, check a suspect directly when they hear of it: twice the
/// confirmations wanted, so that enough answer even when some checks are lost.
const CHECKERS_PER_SUSPICION: f64 = 6.0;

/// The first byte of a custom broadcast that is a suspicion notice. Node information
/// (postcard, led by the name's length, at most 63) never starts with it.
const NOTICE_TAG: u8 = 0xff;

/// A timer the shell arms for the core and hands back when it fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer(TimerKind);

#[derive(Debug, Clone, PartialEq, Eq)]
enum TimerKind {
    Swim(foca::Timer<NodeId>),
    Hello,
    /// Announce again to the seeds, if this node is still alone.
    Announce,
    /// The suspicion clock's tick, armed while suspicions or checks are open.
    Suspicion,
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
    /// SWIM's own settings. Its `suspect_to_down_after` is the longest a suspicion lasts.
    pub foca: foca::Config,
    /// How confirmations shorten a suspicion.
    pub suspicion: SuspicionTimes,
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
        // Twice foca's (memberlist's) 4·log10(n+1) transmissions per update: when a whole
        // fleet joins at once, the backlog of join updates is large and the epidemic's
        // tail left a few members unknown to a few others until round-robin probing met
        // them (up to n probe periods: 510 s of a thousand-node simulation). Twice as many
        // form that cluster in 15 s; a steady cluster has no updates to pay for.
        let transmissions = (8.0 * f64::from(expected_nodes.max(1).saturating_add(1)).log10())
            .clamp(1.0, 255.0) as u8;
        foca.max_transmissions = NonZeroU8::new(transmissions).expect("clamped to 1 or more");
        foca.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(10),
            num_members: NonZeroUsize::new(2).expect("positive"),
        });
        let suspicion = SuspicionTimes::lan(foca.suspect_to_down_after, foca.probe_period);
        GossipConfig { foca, suspicion }
    }
}

/// Node information as this node knows it, and the suspicion notices it has heard, shared
/// with the broadcast handler that foca owns.
#[derive(Default)]
struct InfoBook {
    infos: HashMap<String, NodeInfo>,
    /// Infos that arrived since the core last reported them.
    fresh: Vec<NodeInfo>,
    /// The notices heard, by suspect, while its suspicion is open: the ones to pass on
    /// are those not heard before.
    notices: HashMap<NodeId, std::collections::HashSet<(Incarnation, String)>>,
    /// Notices that arrived since the core last looked.
    fresh_notices: Vec<Notice>,
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

    /// Keeps `notice` if it was not heard before; says whether it was new.
    fn offer_notice(&mut self, notice: &Notice) -> bool {
        let new = self
            .notices
            .entry(notice.suspect.clone())
            .or_default()
            .insert((notice.incarnation, notice.by.name.clone()));
        if new {
            self.fresh_notices.push(notice.clone());
        }
        new
    }
}

type SharedBook = Arc<Mutex<InfoBook>>;

fn lock(book: &SharedBook) -> std::sync::MutexGuard<'_, InfoBook> {
    // The book holds plain data and no method leaves it half-changed: a panic elsewhere
    // cannot have broken it.
    book.lock().unwrap_or_else(PoisonError::into_inner)
}

/// foca's side of the custom broadcasts (node information and suspicion notices): which
/// are news and worth passing on.
struct Broadcasts(SharedBook);

/// "`by` found `suspect`, at `incarnation`, unreachable": a member's own suspicion or its
/// confirmation of another's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Notice {
    suspect: NodeId,
    incarnation: Incarnation,
    by: NodeId,
}

impl Notice {
    fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![NOTICE_TAG];
        bytes.extend(postcard::to_allocvec(self).expect("a notice always serializes"));
        bytes
    }
}

/// A broadcast's identity: whose information and how new, or which notice.
enum BroadcastKey {
    Info { name: String, version: (u64, u64) },
    Notice(Notice),
}

impl Invalidates for BroadcastKey {
    fn invalidates(&self, other: &BroadcastKey) -> bool {
        match (self, other) {
            (
                BroadcastKey::Info { name, version },
                BroadcastKey::Info {
                    name: other_name,
                    version: other_version,
                },
            ) => name == other_name && version >= other_version,
            (BroadcastKey::Notice(notice), BroadcastKey::Notice(other)) => {
                notice.suspect == other.suspect
                    && notice.by == other.by
                    && notice.incarnation >= other.incarnation
            }
            _ => false,
        }
    }
}

#[derive(Debug)]
struct UndecodableBroadcast(&'static str, postcard::Error);

impl std::fmt::Display for UndecodableBroadcast {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{} that does not decode: {}", self.0, self.1)
    }
}

impl std::error::Error for UndecodableBroadcast {}

impl BroadcastHandler<NodeId> for Broadcasts {
    type Key = BroadcastKey;
    type Error = UndecodableBroadcast;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeId>,
    ) -> Result<Option<BroadcastKey>, UndecodableBroadcast> {
        if let Some(notice) = data.strip_prefix(&[NOTICE_TAG]) {
            let notice: Notice = postcard::from_bytes(notice)
                .map_err(|error| UndecodableBroadcast("a suspicion notice", error))?;
            return Ok(lock(&self.0)
                .offer_notice(&notice)
                .then_some(BroadcastKey::Notice(notice)));
        }
        let info = NodeInfo::decode(data)
            .map_err(|error| UndecodableBroadcast("node information", error))?;
        let key = BroadcastKey::Info {
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
        // Every datagram is announced too; the core has no use for those.
        if !matches!(
            notification,
            Notification::DataSent(_) | Notification::DataReceived(_)
        ) {
            self.notifications.push(notification.to_owned());
        }
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
    foca: Foca<NodeId, PostcardCodec, SmallRng, Broadcasts>,
    book: SharedBook,
    seal: Seal,
    me: NodeInfo,
    outbox: Outbox,
    counters: GossipCounters,
    /// The broadcast address hellos go to, once discovery is on.
    hello_to: Option<SocketAddr>,
    /// The seeds joined through: announced to again while this node knows no live member.
    seeds: Vec<NodeId>,
    /// Probe rounds so far: the core's only clock.
    probe_rounds: u64,
    /// The round in which each current suspect was first seen suspect.
    suspected_since: HashMap<NodeId, u64>,
    /// Rounds after which a suspicion that never ended is declared down by this node.
    suspicion_rounds: u64,
    /// The suspicions this node times, with their confirmations.
    suspicions: Suspicions,
    /// The suspicion clock: advanced by [`SUSPICION_TICK`] per tick while the tick runs.
    suspicion_clock: Duration,
    /// Whether the suspicion tick is armed.
    ticking: bool,
    /// The direct checks of suspects awaiting an answer, by the suspect's address.
    checks: HashMap<SocketAddr, Check>,
    /// How long a check waits for an answer: SWIM's probe round trip.
    check_wait: Duration,
    /// Draws which suspicions this node checks.
    rng: SmallRng,
}

/// A direct check of a suspect: any sealed datagram from its address answers it.
struct Check {
    suspect: NodeId,
    incarnation: Incarnation,
    started: Duration,
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
            Broadcasts(book.clone()),
        );
        let mut membership = Membership {
            foca,
            book,
            seal: Seal::new(keyring, session),
            me: me.clone(),
            outbox: Outbox::default(),
            counters: GossipCounters::default(),
            hello_to: None,
            seeds: Vec::new(),
            probe_rounds: 0,
            suspected_since: HashMap::new(),
            suspicion_rounds: suspicion_rounds(&config.foca),
            suspicions: Suspicions::new(config.suspicion),
            suspicion_clock: Duration::ZERO,
            ticking: false,
            checks: HashMap::new(),
            check_wait: config.foca.probe_rtt,
            // Its own stream, apart from foca's, so that checking does not shift SWIM's
            // choices.
            rng: SmallRng::seed_from_u64(seed ^ 0x5eed_c4ec),
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
        self.seeds = seeds;
        self.announce_while_alone();
        self.flush()
    }

    /// Announces to the seeds while this node knows no live member: a lost announcement,
    /// or seeds that were not up yet, only delay the join. foca itself announces only once
    /// it is connected.
    fn announce_while_alone(&mut self) {
        if self.seeds.is_empty() {
            return;
        }
        if self.foca.num_members() == 0 {
            for seed in self.seeds.clone() {
                let result = self.foca.announce(seed, &mut self.outbox);
                self.note(result);
            }
        }
        self.outbox
            .timers
            .push((HELLO_WHILE_ALONE, TimerKind::Announce));
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
        // Any datagram that opens proves its sender alive: it answers a check of it.
        self.checks.remove(&from);
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
            Some((&ALIVE, body)) => self.hear_alive(from, body),
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
            TimerKind::Announce => self.announce_while_alone(),
            TimerKind::Suspicion => self.tick_suspicions(),
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
                state: member_state(member.state()),
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
                let state = member_state(member.state());
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
            let state = member_state(member.state());
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

    /// How many other members this node holds alive or suspect (seeds aside once they are
    /// known by name).
    pub fn live_members(&self) -> usize {
        self.foca.num_members()
    }

    /// Updates and custom broadcasts this node still has to pass on: none once the
    /// cluster has settled.
    pub fn backlog(&self) -> usize {
        self.foca.updates_backlog() + self.foca.custom_broadcast_backlog()
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

    /// Takes in what foca and the broadcast handler learned of suspicions during the last
    /// call: this node's own failed probes, and the notices that arrived.
    fn take_suspicion_news(&mut self) {
        let mut failed = Vec::new();
        self.outbox
            .notifications
            .retain(|notification| match notification {
                foca::OwnedNotification::ProbeFailed(_, suspect) => {
                    failed.push(suspect.clone());
                    false
                }
                _ => true,
            });
        for suspect in failed {
            if let Some((incarnation, _)) = self.foca_view(&suspect) {
                self.suspect(suspect, incarnation);
            }
        }
        let notices = std::mem::take(&mut lock(&self.book).fresh_notices);
        for notice in notices {
            self.hear(notice);
        }
    }

    /// This node found `suspect` unreachable (its probe, or its check, went unanswered):
    /// it counts itself and tells the cluster, once per suspect and incarnation.
    fn suspect(&mut self, suspect: NodeId, incarnation: Incarnation) {
        let me = self.identity().clone();
        if self.suspicions.counted(&suspect, incarnation, &me.name) {
            return;
        }
        let notice = Notice {
            suspect,
            incarnation,
            by: me,
        };
        self.hear(notice.clone());
        let result = self.foca.add_broadcast(&notice.encode());
        self.note(result.map(|_| ()));
        // The handler heard it too; it is not news to this node.
        lock(&self.book)
            .fresh_notices
            .retain(|fresh| *fresh != notice);
    }

    /// A notice: counted against its suspect unless the suspect has moved past it (it
    /// refuted, or is down already). A suspicion new to this node is checked directly,
    /// by a few members chosen at random.
    fn hear(&mut self, notice: Notice) {
        if notice.suspect == *self.identity() {
            self.refute(notice);
            return;
        }
        let current = self
            .foca_view(&notice.suspect)
            .is_some_and(|(incarnation, state)| {
                state != State::Down && incarnation <= notice.incarnation
            });
        if !current {
            return;
        }
        let noted = self.suspicions.note(
            &notice.suspect,
            notice.incarnation,
            &notice.by.name,
            self.suspicion_clock,
        );
        if noted == Noted::Opened && notice.by != *self.identity() {
            let members = self.foca.num_members().max(1) as f64;
            if self
                .rng
                .random_bool((CHECKERS_PER_SUSPICION / members).min(1.0))
            {
                self.send_message(notice.suspect.addr, INFO_REQUEST, &[]);
                self.checks.insert(
                    notice.suspect.addr,
                    Check {
                        suspect: notice.suspect,
                        incarnation: notice.incarnation,
                        started: self.suspicion_clock,
                    },
                );
            }
        }
        self.keep_ticking();
    }

    /// A notice suspects this node: refute (foca raises the incarnation past the one
    /// suspected, and spreads it) and tell the suspecter directly, since it is the one that
    /// would declare this node down.
    fn refute(&mut self, notice: Notice) {
        let me = self.identity().clone();
        let result = self.foca.apply_many(
            std::iter::once(Member::new(me.clone(), notice.incarnation, State::Suspect)),
            true,
            &mut self.outbox,
        );
        self.note(result);
        // foca's incarnation is now past the suspected one (foca keeps it to itself): say
        // the lowest that refutes, never more than the real one.
        let Some(refuting) = notice.incarnation.checked_add(1) else {
            return;
        };
        let alive = postcard::to_allocvec(&(me, refuting)).expect("an identity always serializes");
        self.send_message(notice.by.addr, ALIVE, &alive);
    }

    /// A member says it is alive at an incarnation: believed only from its own address.
    fn hear_alive(&mut self, from: SocketAddr, body: &[u8]) {
        match postcard::from_bytes::<(NodeId, Incarnation)>(body) {
            Ok((id, incarnation)) if id.addr == from && id != *self.identity() => {
                let result = self.foca.apply_many(
                    std::iter::once(Member::new(id, incarnation, State::Alive)),
                    true,
                    &mut self.outbox,
                );
                self.note(result);
            }
            Ok(_) => self.unusable(from, "an alive message about another member".into()),
            Err(error) => self.unusable(from, format!("an alive message: {error}")),
        }
    }

    /// Arms the suspicion tick unless it is armed already.
    fn keep_ticking(&mut self) {
        if !self.ticking {
            self.ticking = true;
            self.outbox
                .timers
                .push((SUSPICION_TICK, TimerKind::Suspicion));
        }
    }

    /// The suspicion clock's tick: unanswered checks become confirmations, suspicions the
    /// suspect moved past are dropped, and the ones whose time is up are declared down.
    fn tick_suspicions(&mut self) {
        self.ticking = false;
        self.suspicion_clock += SUSPICION_TICK;
        let now = self.suspicion_clock;
        let wait = self.check_wait;
        let unanswered: Vec<SocketAddr> = self
            .checks
            .iter()
            .filter(|(_, check)| now.saturating_sub(check.started) >= wait)
            .map(|(addr, _)| *addr)
            .collect();
        for addr in unanswered {
            if let Some(check) = self.checks.remove(&addr) {
                self.suspect(check.suspect, check.incarnation);
            }
        }
        let mut ended = Vec::new();
        let foca = &self.foca;
        self.suspicions.retain(|suspect, incarnation| {
            let live = view_of(foca, suspect)
                .is_some_and(|(known, state)| state != State::Down && known <= incarnation);
            if !live {
                ended.push(suspect.clone());
            }
            live
        });
        let due = self.suspicions.due(now, &self.identity().name);
        let down: Vec<Member<NodeId>> = due
            .iter()
            .map(|(suspect, incarnation)| Member::new(suspect.clone(), *incarnation, State::Down))
            .collect();
        for (suspect, _) in due {
            self.suspicions.close(&suspect);
            ended.push(suspect);
        }
        let leftover_after = self.suspicions.times().max * 2;
        ended.extend(self.suspicions.forget_older_than(now, leftover_after));
        if !down.is_empty() {
            let result = self
                .foca
                .apply_many(down.into_iter(), true, &mut self.outbox);
            self.note(result);
        }
        if !ended.is_empty() {
            let mut book = lock(&self.book);
            for suspect in &ended {
                book.notices.remove(suspect);
            }
        }
        if !self.suspicions.is_empty() || !self.checks.is_empty() {
            self.keep_ticking();
        }
    }

    /// foca's incarnation and state of exactly this identity, if it knows it.
    fn foca_view(&self, id: &NodeId) -> Option<(Incarnation, State)> {
        view_of(&self.foca, id)
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
        self.take_suspicion_news();
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

/// foca's incarnation and state of exactly the identity `id`, if it knows it.
fn view_of<B>(
    foca: &Foca<NodeId, PostcardCodec, SmallRng, B>,
    id: &NodeId,
) -> Option<(Incarnation, State)>
where
    B: BroadcastHandler<NodeId>,
{
    foca.iter_membership_state()
        .find(|member| member.id() == id)
        .map(|member| (member.incarnation(), member.state()))
}

/// foca's state of a member as the cluster reports it.
fn member_state(state: State) -> MemberState {
    match state {
        State::Alive => MemberState::Alive,
        State::Suspect => MemberState::Suspect,
        State::Down => MemberState::Down,
    }
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
