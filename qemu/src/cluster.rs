//! Local clusters: N Keelson VMs on one L2 segment, with their PKI and configs, for people
//! (`keelson-qemu cluster create --nodes 3`) and for the multi-node tests.
//!
//! Each node has two NICs:
//! - user-mode networking (`restrict=on`), static 10.0.2.15 with no default route, which
//!   carries only its API forward from `127.0.0.1:<port>`;
//! - the segment, through a [`Relay`] on the host's loopback, with a static address in
//!   10.77.0.0/24 and the default route, so that the segment address is the node's IP:
//!   gossip, Raft and the API between nodes go there.
//!
//! Everything lives in one directory: `ca.crt`, `ca.key`, `node.yaml` (the cluster's
//! config before the per-node changes) and `keelctl.yaml` with every node's endpoint from
//! `keelctl gen config`; `cluster.json` (ports, addresses, which nodes are strangers);
//! `cut` (nodes cut off the segment); and `nodes/NAME/` (config, disk overlay, console,
//! `qemu.pid`). Creating is a list of phases ([`LocalCluster::create`]); the VMs keep
//! running after the command that created them returns, and `stop`, `start` and `destroy`
//! find them again through the directory.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keelson_api::client::ClientTls;
use keelson_api::cluster::cluster_client::ClusterClient;
use keelson_api::cluster::{MembersRequest, StatusRequest, StatusResponse};
use keelson_config::model::{Interface, InterfaceMatch, MachineConfig, Route};
use serde::{Deserialize, Serialize};

use crate::relay::{self, Port, Relay};
use crate::{Accel, Vm, VmOptions};

/// The segment's network; node `i` (from 1) is `.10 + i`.
const SEGMENT_PREFIX: [u8; 3] = [10, 77, 0];
/// The port of a node's built-in FleetLock server.
const FLEET_LOCK_GUEST_PORT: u16 = 4242;
/// The user-mode NIC's MAC (QEMU's own default for a first NIC), matched by the config.
pub const USER_NIC_MAC: &str = "52:54:00:12:34:56";

/// What to create.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The cluster's name; nodes are `NAME-1` … `NAME-N`.
    pub name: String,
    /// How many nodes.
    pub nodes: usize,
    /// Voters wanted (1, 3 or 5).
    pub control_planes: u8,
    /// The disk image every node boots.
    pub image: PathBuf,
    /// The directory for everything.
    pub out: PathBuf,
    /// Memory per VM.
    pub memory_mib: u32,
    /// CPUs per VM.
    pub cpus: u32,
    /// Nodes booted on the same segment with the cluster's name but another secret, which
    /// must stay out (for tests); named `NAME-stranger-1` …
    pub strangers: usize,
    /// Run the relay as a thread of this process (tests) rather than as a process of its
    /// own that outlives the command (people).
    pub relay_in_process: bool,
    /// The built-in FleetLock server's slots (`cluster.rebootLock`), if not the default.
    pub reboot_lock: Option<keelson_config::model::RebootLockSlots>,
    /// Every node's update policy (`update`), if any.
    pub update: Option<keelson_config::model::UpdatePolicy>,
    /// Services on the host the nodes may reach, as [`VmOptions::host_services`] (a test's
    /// update server, say).
    pub host_services: Vec<(u16, u16)>,
}

impl ClusterSpec {
    /// Defaults for `nodes` nodes of cluster `name` booting `image` into `out`.
    pub fn new(name: &str, nodes: usize, image: &Path, out: &Path) -> ClusterSpec {
        ClusterSpec {
            name: name.to_owned(),
            nodes,
            control_planes: 3,
            image: image.to_owned(),
            out: out.to_owned(),
            memory_mib: 768,
            cpus: 1,
            strangers: 0,
            relay_in_process: false,
            reboot_lock: None,
            update: None,
            host_services: Vec::new(),
        }
    }
}

/// What `cluster.json` keeps, so that later commands find the cluster again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterState {
    /// The cluster's name.
    pub name: String,
    /// The image the nodes boot.
    pub image: PathBuf,
    /// Memory per VM.
    pub memory_mib: u32,
    /// CPUs per VM.
    pub cpus: u32,
    /// Host services every VM may reach.
    #[serde(default)]
    pub host_services: Vec<(u16, u16)>,
    /// The relay's address.
    pub relay: SocketAddr,
    /// Every VM, members first.
    pub nodes: Vec<NodeState>,
}

/// One VM of a local cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    /// Its name (hostname), as every tool reports it.
    pub name: String,
    /// The host port its API is forwarded from (127.0.0.1).
    pub api_port: u16,
    /// The host port its FleetLock server (guest port 4242) is forwarded from.
    #[serde(default)]
    pub fleet_lock_port: u16,
    /// Where its segment NIC is bound on the host.
    pub segment_port: u16,
    /// Its segment NIC's MAC.
    pub mac: String,
    /// Its address on the segment.
    pub address: Ipv4Addr,
    /// Booted with another secret: not a member.
    pub stranger: bool,
}

impl NodeState {
    /// `127.0.0.1:<api_port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.api_port)
    }

    /// `http://127.0.0.1:<fleet_lock_port>`: its FleetLock server.
    pub fn fleet_lock_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.fleet_lock_port)
    }
}

/// A local cluster, created or found again.
pub struct LocalCluster {
    /// Its directory.
    pub dir: PathBuf,
    /// What `cluster.json` holds.
    pub state: ClusterState,
    /// Kill the VMs when this value is dropped (tests), or leave them running (people).
    destroy_on_drop: bool,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LocalCluster")
            .field("dir", &self.dir)
            .field("nodes", &self.state.nodes.len())
            .finish_non_exhaustive()
    }
}

impl LocalCluster {
    /// Creates the cluster and boots its VMs; call [`LocalCluster::wait_formed`] next.
    /// The phases: the directory, ports, PKI and keelctl config, one config per node, the
    /// relay, the VMs.
    pub fn create(spec: &ClusterSpec) -> anyhow::Result<LocalCluster> {
        if spec.nodes == 0 {
            bail!("a cluster needs at least one node (--nodes 1 or more)");
        }
        if ![1, 3, 5].contains(&spec.control_planes) {
            bail!("--control-planes must be 1, 3 or 5");
        }
        let dir = prepare_directory(&spec.out)?;
        let state = allocate(spec)?;
        generate_pki(spec, &dir, &state)?;
        write_node_configs(spec, &dir, &state)?;
        write_state(&dir, &state)?;
        let cluster = LocalCluster {
            dir,
            state,
            destroy_on_drop: spec.relay_in_process,
        };
        cluster.start_relay(spec.relay_in_process)?;
        for node in &cluster.state.nodes {
            cluster.boot(&node.name)?;
        }
        Ok(cluster)
    }

    /// The cluster in `dir`, as an earlier `create` left it.
    pub fn open(dir: &Path) -> anyhow::Result<LocalCluster> {
        let path = dir.join("cluster.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no local cluster in {} (cannot read {}); create one with `keelson-qemu cluster create`",
                dir.display(),
                path.display()
            )
        })?;
        let state = serde_json::from_str(&text)
            .with_context(|| format!("{} is damaged", path.display()))?;
        Ok(LocalCluster {
            dir: dir.to_owned(),
            state,
            destroy_on_drop: false,
        })
    }

    /// The members (strangers aside).
    pub fn members(&self) -> impl Iterator<Item = &NodeState> {
        self.state.nodes.iter().filter(|node| !node.stranger)
    }

    /// The node called `name`, or an error listing the names there are.
    pub fn node(&self, name: &str) -> anyhow::Result<&NodeState> {
        self.state
            .nodes
            .iter()
            .find(|node| node.name == name)
            .with_context(|| {
                let names: Vec<&str> = self.state.nodes.iter().map(|n| n.name.as_str()).collect();
                format!(
                    "no node {name} in this cluster (it has {})",
                    names.join(", ")
                )
            })
    }

    /// The keelctl config with every member's endpoint.
    pub fn keelconfig(&self) -> PathBuf {
        self.dir.join(keelson_ctl::generate::KEELCTL_CONFIG)
    }

    /// A node's directory (config, overlay, console).
    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.dir.join("nodes").join(name)
    }

    /// A node's console log.
    pub fn console(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("console.log")
    }

    /// The last `lines` lines of a node's console.
    pub fn console_tail(&self, name: &str, lines: usize) -> String {
        let text = std::fs::read(self.console(name)).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Boots (or boots again) node `name` from its disk; the VM keeps running.
    pub fn boot(&self, name: &str) -> anyhow::Result<()> {
        let node = self.node(name)?;
        if self.is_running(name) {
            bail!("{name} is running already");
        }
        let node_dir = self.node_dir(name);
        let mut options = VmOptions::new(&self.state.image);
        options.memory_mib = self.state.memory_mib;
        options.cpus = self.state.cpus;
        options.host_services = self.state.host_services.clone();
        options.api_port = Some(node.api_port);
        if node.fleet_lock_port != 0 {
            options.forwards = vec![(node.fleet_lock_port, FLEET_LOCK_GUEST_PORT)];
        }
        options.work_dir = Some(node_dir.clone());
        options.config = Some(node_dir.join("config.yaml"));
        options.reuse_disk = true;
        options.accel = Accel::from_env();
        options.segment = Some(crate::SegmentNic {
            relay: self.state.relay,
            local: SocketAddr::from((Ipv4Addr::LOCALHOST, node.segment_port)),
            mac: node.mac.clone(),
        });
        let mut vm = Vm::start(options)?;
        vm.keep_running();
        Ok(())
    }

    /// Whether node `name`'s QEMU is running.
    pub fn is_running(&self, name: &str) -> bool {
        pid_of(&self.node_dir(name).join("qemu.pid")).is_some_and(qemu_alive)
    }

    /// Cuts node `name`'s power, as pulling the plug would.
    pub fn stop(&self, name: &str) -> anyhow::Result<()> {
        self.node(name)?;
        let pid_file = self.node_dir(name).join("qemu.pid");
        match pid_of(&pid_file) {
            Some(pid) if qemu_alive(pid) => kill_and_wait(pid),
            _ => bail!("{name} is not running"),
        }
    }

    /// Cuts node `name` off the segment (`cut = true`) or heals it.
    pub fn set_cut(&self, name: &str, cut: bool) -> anyhow::Result<()> {
        self.node(name)?;
        let path = self.dir.join("cut");
        let mut nodes = relay::read_cut(&path);
        if cut {
            nodes.insert(name.to_owned());
        } else {
            nodes.remove(name);
        }
        let text: String = nodes.iter().map(|node| format!("{node}\n")).collect();
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Kills every VM and the relay, and removes the directory.
    pub fn destroy(self) -> anyhow::Result<()> {
        self.kill_all();
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("cannot remove {}", self.dir.display()))
    }

    fn kill_all(&self) {
        for node in &self.state.nodes {
            if let Some(pid) = pid_of(&self.node_dir(&node.name).join("qemu.pid")) {
                if qemu_alive(pid) {
                    let _ = kill_and_wait(pid);
                }
            }
        }
        if let Some(pid) = pid_of(&self.dir.join("relay.pid")) {
            // SAFETY: kill(2) with a pid this directory recorded for its relay.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }

    /// Waits until every member is alive in every member's gossip and a leader exists,
    /// calling `progress` with a line whenever the picture changes. On timeout the error
    /// carries each node's last console lines.
    pub fn wait_formed(
        &self,
        timeout: Duration,
        mut progress: impl FnMut(&str),
    ) -> anyhow::Result<StatusResponse> {
        let client = self.client()?;
        let runtime = runtime()?;
        let wanted: Vec<String> = self.members().map(|node| node.name.clone()).collect();
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let (picture, formed) = runtime.block_on(self.look(&client, &wanted));
            if picture != last {
                progress(&picture);
                last = picture;
            }
            if let Some(status) = formed {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let mut consoles = String::new();
                for node in &self.state.nodes {
                    consoles.push_str(&format!(
                        "\n--- {} (last console lines) ---\n{}",
                        node.name,
                        self.console_tail(&node.name, 15)
                    ));
                }
                bail!(
                    "the cluster did not form within {} s ({last}){consoles}",
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// One look at every member: how many members each sees alive, and the leader.
    async fn look(
        &self,
        client: &ClientTls,
        wanted: &[String],
    ) -> (String, Option<StatusResponse>) {
        let mut parts = Vec::new();
        let mut all_see_all = true;
        let mut leader_status = None;
        for node in self.members() {
            let answer = async {
                let channel = keelson_api::client::connect(&node.endpoint(), client)
                    .await
                    .map_err(|_| "booting".to_string())?;
                let mut cluster = ClusterClient::new(channel);
                let members = cluster
                    .members(MembersRequest {})
                    .await
                    .map_err(|status| status.message().to_owned())?
                    .into_inner();
                let alive = members
                    .members
                    .iter()
                    .filter(|member| member.state == "alive" && wanted.contains(&member.name))
                    .count();
                let status = cluster
                    .status(StatusRequest {})
                    .await
                    .map_err(|status| status.message().to_owned())?
                    .into_inner();
                Ok::<_, String>((alive, status))
            };
            match answer.await {
                Ok((alive, status)) => {
                    all_see_all &= alive == wanted.len();
                    parts.push(format!(
                        "{}: sees {alive}/{}{}",
                        node.name,
                        wanted.len(),
                        if status.leader.is_empty() {
                            String::new()
                        } else {
                            format!(", leader {}", status.leader)
                        }
                    ));
                    if !status.leader.is_empty() {
                        leader_status = Some(status);
                    }
                }
                Err(state) => {
                    all_see_all = false;
                    parts.push(format!("{}: {state}", node.name));
                }
            }
        }
        let formed = leader_status.filter(|_| all_see_all);
        (parts.join("; "), formed)
    }

    /// `Cluster.Status` from the first running member that answers.
    pub fn control_plane_status(&self) -> anyhow::Result<StatusResponse> {
        let client = self.client()?;
        let runtime = runtime()?;
        let mut problems = Vec::new();
        for node in self.members().filter(|node| self.is_running(&node.name)) {
            let answer = runtime.block_on(async {
                let channel = keelson_api::client::connect(&node.endpoint(), &client).await?;
                let status = ClusterClient::new(channel).status(StatusRequest {}).await?;
                anyhow::Ok(status.into_inner())
            });
            match answer {
                Ok(status) => return Ok(status),
                Err(error) => problems.push(format!("{}: {error:#}", node.name)),
            }
        }
        if problems.is_empty() {
            bail!("no member is running");
        }
        bail!("no member answered ({})", problems.join("; "))
    }

    /// The admin's TLS identity, from the cluster's keelctl config.
    pub fn client(&self) -> anyhow::Result<ClientTls> {
        let config = keelson_ctl::keelconfig::Keelconfig::load(&self.keelconfig())?;
        let context = config.select(None)?;
        let tls = keelson_api::tls::client_config(&context.ca, &context.cert, &context.key)?;
        ClientTls::new(tls, &context.server_name).map_err(anyhow::Error::msg)
    }

    /// Starts the relay: a thread here, or a process of its own that outlives this one.
    fn start_relay(&self, in_process: bool) -> anyhow::Result<()> {
        if in_process {
            let relay = self.relay()?;
            std::thread::Builder::new()
                .name("segment-relay".into())
                .spawn(move || relay.run())?;
            return Ok(());
        }
        let log = std::fs::File::create(self.dir.join("relay.log"))?;
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command
            .args(["cluster", "relay", "--out"])
            .arg(&self.dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log);
        // SAFETY: setsid is async-signal-safe; the relay leaves this terminal's session so
        // that it outlives the command.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::setsid();
                Ok(())
            });
        }
        let child = command.spawn().context("cannot start the segment relay")?;
        std::fs::write(self.dir.join("relay.pid"), format!("{}\n", child.id()))?;
        Ok(())
    }

    /// The relay for this cluster's segment, bound and ready to run.
    pub fn relay(&self) -> anyhow::Result<Relay> {
        let ports = self
            .state
            .nodes
            .iter()
            .map(|node| Port {
                name: node.name.clone(),
                address: SocketAddr::from((Ipv4Addr::LOCALHOST, node.segment_port)),
            })
            .collect();
        Relay::bind(self.state.relay, ports, &self.dir.join("cut"))
            .with_context(|| format!("cannot bind the segment relay on {}", self.state.relay))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.destroy_on_drop {
            self.kill_all();
        }
    }
}

/// The tokio runtime for the gRPC calls of a blocking caller.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start an async runtime")
}

/// The output directory, new or empty; never an existing cluster's.
fn prepare_directory(out: &Path) -> anyhow::Result<PathBuf> {
    if out.join("cluster.json").exists() {
        bail!(
            "{} holds a cluster already; `keelson-qemu cluster destroy --out {}` first, or pick another --name",
            out.display(),
            out.display()
        );
    }
    std::fs::create_dir_all(out.join("nodes"))
        .with_context(|| format!("cannot create {}", out.display()))?;
    Ok(std::fs::canonicalize(out)?)
}

/// Ports for the relay and every node, and the nodes' names and addresses.
fn allocate(spec: &ClusterSpec) -> anyhow::Result<ClusterState> {
    let relay = SocketAddr::from((Ipv4Addr::LOCALHOST, free_udp_port()?));
    let total = spec.nodes + spec.strangers;
    let mut nodes = Vec::with_capacity(total);
    for index in 1..=total {
        let stranger = index > spec.nodes;
        let name = if stranger {
            format!("{}-stranger-{}", spec.name, index - spec.nodes)
        } else {
            format!("{}-{index}", spec.name)
        };
        nodes.push(NodeState {
            name,
            api_port: crate::free_port()?,
            fleet_lock_port: crate::free_port()?,
            segment_port: free_udp_port()?,
            mac: format!("52:54:00:4b:00:{index:02x}"),
            address: Ipv4Addr::new(
                SEGMENT_PREFIX[0],
                SEGMENT_PREFIX[1],
                SEGMENT_PREFIX[2],
                10 + index as u8,
            ),
            stranger,
        });
    }
    Ok(ClusterState {
        name: spec.name.clone(),
        image: std::fs::canonicalize(&spec.image)
            .with_context(|| format!("disk image {} not found", spec.image.display()))?,
        memory_mib: spec.memory_mib,
        cpus: spec.cpus,
        host_services: spec.host_services.clone(),
        relay,
        nodes,
    })
}

/// The CA, the cluster's config and the admin's keelctl config with every member's
/// endpoint, as `keelctl gen config` writes them.
fn generate_pki(spec: &ClusterSpec, dir: &Path, state: &ClusterState) -> anyhow::Result<()> {
    let request = keelson_ctl::generate::GenConfig {
        cluster: spec.name.clone(),
        out: dir.to_owned(),
        endpoints: state
            .nodes
            .iter()
            .filter(|node| !node.stranger)
            .map(NodeState::endpoint)
            .collect(),
        force: false,
        format: keelson_ctl::generate::NodeFormat::Native,
    };
    keelson_ctl::generate::gen_config(&request, time::OffsetDateTime::now_utc())?;
    Ok(())
}

/// Each node's config: the cluster's, with its hostname, its two NICs and the voters
/// wanted; a stranger gets another secret.
fn write_node_configs(spec: &ClusterSpec, dir: &Path, state: &ClusterState) -> anyhow::Result<()> {
    let path = dir.join(keelson_ctl::generate::NODE_CONFIG);
    let text = std::fs::read(&path)?;
    let mut findings = keelson_config::diagnostic::Findings::new("node.yaml");
    let base = keelson_config::native::parse(&text, &mut findings)
        .with_context(|| format!("{} does not parse", path.display()))?;
    for node in &state.nodes {
        let config = node_config(&base, spec, node);
        let node_dir = dir.join("nodes").join(&node.name);
        std::fs::create_dir_all(&node_dir)?;
        let file = node_dir.join("config.yaml");
        std::fs::write(&file, keelson_config::native::to_yaml(&config))
            .with_context(|| format!("cannot write {}", file.display()))?;
    }
    Ok(())
}

fn node_config(base: &MachineConfig, spec: &ClusterSpec, node: &NodeState) -> MachineConfig {
    let mut config = base.clone();
    config.hostname = Some(node.name.clone());
    if spec.update.is_some() {
        config.update = spec.update.clone();
    }
    if let Some(cluster) = config.cluster.as_mut() {
        cluster.control_planes = Some(spec.control_planes);
        if spec.reboot_lock.is_some() {
            cluster.reboot_lock = spec.reboot_lock.clone();
        }
        if node.stranger {
            cluster.secret = format!("another-secret-for-{}-{}", node.name, "x".repeat(32));
        }
    }
    let interface = |mac: &str, address: String, routes: Vec<Route>| Interface {
        matches: InterfaceMatch {
            name: None,
            mac: Some(mac.to_owned()),
        },
        addresses: vec![address],
        routes,
        ..Interface::default()
    };
    let gateway = Ipv4Addr::new(SEGMENT_PREFIX[0], SEGMENT_PREFIX[1], SEGMENT_PREFIX[2], 1);
    config.network.interfaces = vec![
        interface(
            USER_NIC_MAC,
            format!("{}/24", crate::DEFAULT_GUEST_ADDRESS),
            Vec::new(),
        ),
        // The default route makes the segment address the node's IP (gossip's and the
        // kubelet's); nothing answers at the gateway, and nothing needs to.
        interface(
            &node.mac,
            format!("{}/24", node.address),
            vec![Route {
                to: "default".into(),
                via: Some(gateway.to_string()),
                metric: None,
            }],
        ),
    ];
    config
}

fn write_state(dir: &Path, state: &ClusterState) -> anyhow::Result<()> {
    let path = dir.join("cluster.json");
    std::fs::write(&path, serde_json::to_string_pretty(state)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn pid_of(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` is a running QEMU (not a recycled pid, not a zombie).
fn qemu_alive(pid: u32) -> bool {
    let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = state
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    !zombie && String::from_utf8_lossy(&command).contains("qemu-system")
}

fn kill_and_wait(pid: u32) -> anyhow::Result<()> {
    // SAFETY: kill(2) on a pid checked to be a QEMU this cluster started.
    if unsafe { libc::kill(pid as i32, libc::SIGKILL) } != 0 {
        bail!(
            "cannot stop QEMU (pid {pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while qemu_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A summary of the nodes for `keelson-qemu cluster status`: name, VM state, API.
pub fn vm_table(cluster: &LocalCluster) -> String {
    let mut rows: BTreeMap<usize, String> = BTreeMap::new();
    for (index, node) in cluster.state.nodes.iter().enumerate() {
        rows.insert(
            index,
            format!(
                "{:<24} {:<8} {:<16} {}{}",
                node.name,
                if cluster.is_running(&node.name) {
                    "running"
                } else {
                    "stopped"
                },
                node.address,
                node.endpoint(),
                if relay::read_cut(&cluster.dir.join("cut")).contains(&node.name) {
                    " (cut off the segment)"
                } else {
                    ""
                }
            ),
        );
    }
    let mut text = format!("{:<24} {:<8} {:<16} API\n", "NODE", "VM", "ADDRESS");
    for row in rows.values() {
        text.push_str(row);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_configs_give_each_node_its_name_nics_and_voters() {
        let mut base = MachineConfig::empty();
        base.cluster = Some(keelson_config::model::Cluster::new("lab", "s".repeat(32)));
        let mut spec = ClusterSpec::new("lab", 3, Path::new("x.raw"), Path::new("out"));
        spec.control_planes = 1;
        let node = NodeState {
            name: "lab-2".into(),
            api_port: 40000,
            fleet_lock_port: 40002,
            segment_port: 40001,
            mac: "52:54:00:4b:00:02".into(),
            address: Ipv4Addr::new(10, 77, 0, 12),
            stranger: false,
        };
        let config = node_config(&base, &spec, &node);
        assert_eq!(config.hostname.as_deref(), Some("lab-2"));
        let cluster = config.cluster.as_ref().unwrap();
        assert_eq!(cluster.control_planes(), 1);
        assert_eq!(cluster.secret, "s".repeat(32));
        let segment = &config.network.interfaces[1];
        assert_eq!(segment.matches.mac.as_deref(), Some("52:54:00:4b:00:02"));
        assert_eq!(segment.addresses, ["10.77.0.12/24"]);
        assert_eq!(segment.routes[0].to, "default");
        assert!(config.network.interfaces[0].routes.is_empty());
        let stranger = node_config(
            &base,
            &spec,
            &NodeState {
                stranger: true,
                ..node
            },
        );
        assert_ne!(stranger.cluster.unwrap().secret, "s".repeat(32));
    }
}
