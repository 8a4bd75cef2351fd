//! The UDP shell around the membership core: one socket on the gossip port, the core's
//! timers on tokio's clock, and the view published for the API.
//!
//! It decides nothing. A datagram goes to [`Membership::receive`], a due timer to
//! [`Membership::fire`], and whatever the core returns is performed: datagrams sent, timers
//! armed, events logged. The members' view is republished after every event.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::member::{NodeId, NodeInfo};
use crate::membership::{
    Event, GossipConfig, GossipCounters, MemberView, Membership, Output, Timer, MAX_DATAGRAM,
};
use crate::seal::Keyring;

/// What a node gossips with.
pub struct GossipSettings {
    /// The address the socket binds (usually `0.0.0.0:7946`).
    pub bind: SocketAddr,
    /// Who this node is; its address is where the others reach it.
    pub identity: NodeId,
    /// What it tells the cluster about itself.
    pub info: NodeInfo,
    /// The keys it seals and opens packets with.
    pub keyring: Keyring,
    /// Addresses to join through.
    pub seeds: Vec<SocketAddr>,
    /// With no seeds: the broadcast address to say hello to.
    pub discover: Option<SocketAddr>,
    /// SWIM's timings.
    pub config: GossipConfig,
    /// 16 random bytes for the packet seal's session.
    pub session: [u8; 16],
    /// A random seed for SWIM's choices of whom to probe.
    pub rng_seed: u64,
}

/// The running membership, as the rest of the agent sees it.
#[derive(Clone)]
pub struct Gossip {
    name: String,
    view: watch::Receiver<Vec<MemberView>>,
    counters: watch::Receiver<GossipCounters>,
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Gossip {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Gossip")
            .field("name", &self.name)
            .field("members", &self.view.borrow().len())
            .finish()
    }
}

enum Command {
    SetInfo(NodeInfo),
    SetKeyring(Keyring),
    Leave(oneshot::Sender<()>),
}

impl Gossip {
    /// Binds the gossip socket and starts the protocol in a task of its own.
    pub async fn start(settings: GossipSettings) -> io::Result<Gossip> {
        let socket = UdpSocket::bind(settings.bind).await.map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot bind the gossip socket {}: {error}", settings.bind),
            )
        })?;
        if settings.discover.is_some() {
            socket.set_broadcast(true)?;
        }
        let name = settings.identity.name.clone();
        let mut core = Membership::new(
            settings.identity,
            settings.info,
            settings.keyring,
            settings.session,
            settings.rng_seed,
            &settings.config,
        );
        let (view_sender, view) = watch::channel(core.members());
        let (counters_sender, counters) = watch::channel(GossipCounters::default());
        let (commands, command_receiver) = mpsc::channel(8);
        let mut first = core.join(&settings.seeds);
        if let Some(broadcast) = settings.discover {
            first.extend(core.discover(broadcast));
        }
        let shell = Shell {
            core,
            socket,
            timers: Timers::default(),
            view: view_sender,
            counters: counters_sender,
            refusals_logged: HashMap::new(),
        };
        tokio::spawn(shell.run(first, command_receiver));
        Ok(Gossip {
            name,
            view,
            counters,
            commands,
        })
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every member this node knows of, itself included.
    pub fn members(&self) -> Vec<MemberView> {
        self.view.borrow().clone()
    }

    /// Waits until the view changes.
    pub async fn changed(&mut self) {
        let _ = self.view.changed().await;
    }

    /// What this node has sent, received and dropped.
    pub fn counters(&self) -> GossipCounters {
        self.counters.borrow().clone()
    }

    /// Publishes new node information (a pod CIDR, a new slot).
    pub async fn set_info(&self, info: NodeInfo) {
        let _ = self.commands.send(Command::SetInfo(info)).await;
    }

    /// Seals and opens with these keys from now on (a secret being rotated).
    pub async fn set_keyring(&self, keyring: Keyring) {
        let _ = self.commands.send(Command::SetKeyring(keyring)).await;
    }

    /// Tells the cluster this node leaves (on shutdown), and stops gossiping.
    pub async fn leave(&self) {
        let (done, left) = oneshot::channel();
        if self.commands.send(Command::Leave(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), left).await;
        }
    }
}

/// The core's timers on tokio's clock, in the order they fall due.
#[derive(Default)]
struct Timers {
    due: BinaryHeap<Reverse<(Instant, u64)>>,
    armed: HashMap<u64, Timer>,
    next: u64,
}

impl Timers {
    fn arm(&mut self, after: Duration, timer: Timer) {
        self.due.push(Reverse((Instant::now() + after, self.next)));
        self.armed.insert(self.next, timer);
        self.next += 1;
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, _))| *at)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        let Reverse((at, id)) = *self.due.peek()?;
        if at > now {
            return None;
        }
        self.due.pop();
        self.armed.remove(&id)
    }
}

struct Shell {
    core: Membership,
    socket: UdpSocket,
    timers: Timers,
    view: watch::Sender<Vec<MemberView>>,
    counters: watch::Sender<GossipCounters>,
    /// When a refusal from each address was last logged: one line a minute per sender.
    refusals_logged: HashMap<SocketAddr, Instant>,
}

impl Shell {
    async fn run(mut self, first: Vec<Output>, mut commands: mpsc::Receiver<Command>) {
        self.perform(first).await;
        let mut buffer = vec![0u8; MAX_DATAGRAM + 1];
        let far = Duration::from_secs(3600);
        loop {
            let deadline = self
                .timers
                .next_deadline()
                .unwrap_or_else(|| Instant::now() + far);
            let outputs = tokio::select! {
                received = self.socket.recv_from(&mut buffer) => match received {
                    Ok((length, from)) => self.core.receive(from, &buffer[..length]),
                    Err(error) => {
                        warn!("gossip: receiving: {error}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Vec::new()
                    }
                },
                () = tokio::time::sleep_until(deadline) => {
                    let mut outputs = Vec::new();
                    while let Some(timer) = self.timers.pop_due(Instant::now()) {
                        outputs.extend(self.core.fire(timer));
                    }
                    outputs
                },
                command = commands.recv() => match command {
                    Some(Command::SetInfo(info)) => self.core.set_info(info),
                    Some(Command::SetKeyring(keyring)) => {
                        self.core.set_keyring(keyring);
                        Vec::new()
                    }
                    Some(Command::Leave(done)) => {
                        let outputs = self.core.leave();
                        self.perform(outputs).await;
                        let _ = done.send(());
                        return;
                    }
                    // Every handle is gone: nobody asks for the view any more.
                    None => return,
                },
            };
            self.perform(outputs).await;
        }
    }

    async fn perform(&mut self, outputs: Vec<Output>) {
        let mut changed = false;
        for output in outputs {
            match output {
                Output::Send { to, packet } => {
                    // A lost datagram is what SWIM is built for; say so only at debug level.
                    if let Err(error) = self.socket.send_to(&packet, to).await {
                        tracing::debug!("gossip: sending to {to}: {error}");
                    }
                }
                Output::Arm { after, timer } => self.timers.arm(after, timer),
                Output::Report(event) => {
                    changed |= !matches!(event, Event::Refused { .. } | Event::Unusable { .. });
                    self.log(event);
                }
            }
        }
        if changed {
            self.view.send_replace(self.core.members());
        }
        self.counters.send_replace(self.core.counters().clone());
    }

    fn log(&mut self, event: Event) {
        match event {
            Event::Up(id) => info!("cluster: {} at {} is up", id.name, id.addr),
            Event::Down(id) => warn!("cluster: {} at {} is down", id.name, id.addr),
            Event::Renewed { after, .. } => {
                info!(
                    "cluster: {} rejoined (generation {})",
                    after.name, after.generation
                )
            }
            Event::Info(info) => info!(
                "cluster: {} runs {} from slot {} ({})",
                info.name,
                info.os_version,
                info.slot,
                info.pod_cidr.as_deref().unwrap_or("no pod CIDR yet")
            ),
            Event::Rejoined(id) => warn!(
                "cluster: the others had declared this node down; rejoined as generation {}",
                id.generation
            ),
            Event::Isolated => warn!("cluster: this node reaches no other member"),
            Event::Connected => info!("cluster: this node reaches the cluster"),
            Event::Refused { from, refusal } => {
                let now = Instant::now();
                let recently = self
                    .refusals_logged
                    .get(&from)
                    .is_some_and(|at| now.duration_since(*at) < Duration::from_secs(60));
                if !recently {
                    self.refusals_logged.insert(from, now);
                    warn!("cluster: dropped gossip from {from}: {refusal} (counted in the cluster status)");
                }
            }
            Event::Unusable { from, reason } => {
                tracing::debug!("gossip: unusable packet from {from}: {reason}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::MemberState;
    use crate::seal::ClusterKey;
    use keelson_config::model::Role;

    fn settings(name: &str, port: u16, seeds: &[u16], secret: &str) -> GossipSettings {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        GossipSettings {
            bind: addr,
            identity: NodeId::new(name, addr, 1),
            info: NodeInfo {
                name: name.into(),
                generation: 1,
                revision: 0,
                addresses: vec![addr.ip()],
                role: Role::Auto,
                os_version: "0.1.0".into(),
                slot: "a".into(),
                pod_cidr: None,
                api_endpoint: "127.0.0.1:50000".into(),
            },
            keyring: Keyring::new(ClusterKey::from_secret("loopback", secret)),
            seeds: seeds
                .iter()
                .map(|port| SocketAddr::from(([127, 0, 0, 1], *port)))
                .collect(),
            discover: None,
            config: GossipConfig::lan(3),
            session: [port as u8; 16],
            rng_seed: u64::from(port),
        }
    }

    fn free_port() -> u16 {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    async fn until(gossip: &mut Gossip, mut done: impl FnMut(&[MemberView]) -> bool) {
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            while !done(&gossip.members()) {
                gossip.changed().await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "gave up waiting; the view is {:?}",
            gossip.members()
        );
    }

    #[tokio::test]
    async fn nodes_on_real_sockets_form_a_cluster_leave_it_and_keep_strangers_out() {
        const SECRET: &str = "the loopback cluster's secret, 32+ chars";
        let ports = [free_port(), free_port(), free_port()];
        let mut first = Gossip::start(settings("one", ports[0], &[], SECRET))
            .await
            .unwrap();
        let _second = Gossip::start(settings("two", ports[1], &ports[..1], SECRET))
            .await
            .unwrap();
        let third = Gossip::start(settings("three", ports[2], &ports[..1], SECRET))
            .await
            .unwrap();
        until(&mut first, |view| {
            view.len() == 3
                && view
                    .iter()
                    .all(|member| member.state == MemberState::Alive && member.info.is_some())
        })
        .await;

        let stranger_port = free_port();
        let stranger_secret = "not the cluster's secret but 32 characters";
        let stranger = Gossip::start(settings(
            "stranger",
            stranger_port,
            &ports[..1],
            stranger_secret,
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(first.members().len(), 3, "the stranger is not a member");
        assert_eq!(stranger.members().len(), 1);
        assert!(first
            .counters()
            .refused
            .get("unknown key")
            .is_some_and(|count| *count > 0));

        third.leave().await;
        until(&mut first, |view| {
            view.iter()
                .any(|member| member.id.name == "three" && member.state == MemberState::Down)
        })
        .await;
    }
}
