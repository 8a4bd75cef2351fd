//! The native machine configuration, `keelson.dev/v1alpha1` `MachineConfig`, as serde types.
//!
//! These types are the document a user writes: values stay in the form they were written
//! (addresses as `"10.0.2.50/24"`, modes as `"0644"`), so that an error can quote them back.
//! [`crate::plan`] checks every value and turns the document into typed values the agent
//! applies. Unknown keys are rejected: a misspelt key in a native config is a mistake, not
//! something to skip. The JSON schema in `config/schema/` is generated from these types.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The `apiVersion` this crate reads and writes.
pub const API_VERSION: &str = "keelson.dev/v1alpha1";
/// The `kind` of a machine configuration.
pub const KIND: &str = "MachineConfig";

/// A machine's configuration: who it is, how it reaches the network, what files it carries,
/// and which cluster it joins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineConfig {
    /// Always `keelson.dev/v1alpha1`.
    pub api_version: String,
    /// Always `MachineConfig`.
    pub kind: String,
    /// The node's hostname: one or more DNS labels (letters, digits, hyphens), at most 253
    /// characters. Without it the node is called `keelson`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Interfaces, addresses, routes and DNS. Without it the node takes DHCP on its first
    /// Ethernet interface.
    #[serde(default, skip_serializing_if = "Network::is_empty")]
    pub network: Network,
    /// Files to write under `/etc` or `/var`, on every boot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<File>,
    /// Directories to create under `/etc` or `/var`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directories: Vec<Directory>,
    /// Symbolic or hard links to create under `/etc` or `/var`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
    /// Time servers and time zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// The cluster this node joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cluster>,
    /// How the node takes updates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdatePolicy>,
    /// Pods the node runs on its own, without the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub static_pods: Vec<StaticPod>,
    /// The PKI of the node's mutual-TLS API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiPki>,
    /// Extra certificate authorities (PEM, one or more certificates each) that the node
    /// trusts beside the root's CA bundle whenever it fetches over `https://`: file
    /// sources, a config URL and, with the container runtime, image registries. Ignition's
    /// `ignition.security.tls.certificateAuthorities` land here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificate_authorities: Vec<String>,
    /// Where and how the node pulls container images.
    #[serde(default, skip_serializing_if = "Registries::is_empty")]
    pub registries: Registries,
    /// The embedded kubelet's settings, named as the kubelet's own configuration names them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet: Option<KubeletSettings>,
}

/// The embedded kubelet's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeletSettings {
    /// The size at which a container's log file is rotated, as a quantity (`10Mi`, the
    /// default; at least `16Ki`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_log_max_size: Option<String>,
    /// How many files a container's log keeps, the one being written included (5, the
    /// default; at least 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_log_max_files: Option<u32>,
    /// The node's pod addresses, an IPv4 CIDR of /16 to /30 (`10.244.0.0/24`, the
    /// default): the first address is the pods' gateway on the node's bridge `keelson0`.
    #[serde(default, rename = "podCIDR", skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    /// How long a reboot, a poweroff or an update's reboot gives the pods to stop (preStop
    /// hooks, SIGTERM, then SIGKILL), as a duration such as `30s` (the default) or `1m`;
    /// a pod's own `terminationGracePeriodSeconds` applies when shorter. At most `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_period: Option<String>,
    /// Hard eviction thresholds by signal, as the kubelet's `evictionHard`:
    /// `memory.available` (default `100Mi`) and `nodefs.available`, the free space of
    /// STATE (default `10%`). Each is a size such as `200Mi` or a whole percentage of the
    /// capacity such as `15%`; `0` turns the signal off.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub eviction_hard: BTreeMap<String, String>,
}

/// Below how much of a resource the kubelet evicts pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionThreshold {
    /// This many bytes.
    Bytes(u64),
    /// This share of the capacity, in whole percent.
    Percent(u8),
}

impl EvictionThreshold {
    /// The threshold in bytes for a resource of `capacity` bytes.
    pub fn bytes_of(self, capacity: u64) -> u64 {
        match self {
            EvictionThreshold::Bytes(bytes) => bytes,
            EvictionThreshold::Percent(percent) => capacity / 100 * u64::from(percent),
        }
    }
}

/// The hard eviction thresholds in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvictionThresholds {
    /// The node's available memory.
    pub memory_available: EvictionThreshold,
    /// STATE's free space (pods' writable layers, volumes, logs and images).
    pub nodefs_available: EvictionThreshold,
}

impl Default for EvictionThresholds {
    /// The kubelet's defaults: `memory.available<100Mi`, `nodefs.available<10%`.
    fn default() -> Self {
        EvictionThresholds {
            memory_available: EvictionThreshold::Bytes(100 << 20),
            nodefs_available: EvictionThreshold::Percent(10),
        }
    }
}

/// The eviction signals the node watches, as `evictionHard` names them.
pub const EVICTION_SIGNALS: [&str; 2] = ["memory.available", "nodefs.available"];

/// How long pods have to stop when the node shuts down, when the config does not say.
pub const DEFAULT_SHUTDOWN_GRACE_SECONDS: u64 = 30;

/// The longest `kubelet.shutdownGracePeriod`: PID 1 waits a little longer than this for
/// the agent before it ends every process itself.
pub const MAX_SHUTDOWN_GRACE_SECONDS: u64 = 60;

/// The node's pod CIDR when the config names none.
pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/24";

impl KubeletSettings {
    /// The pod CIDR in force: the config's, or [`DEFAULT_POD_CIDR`].
    pub fn pod_cidr(&self) -> &str {
        self.pod_cidr.as_deref().unwrap_or(DEFAULT_POD_CIDR)
    }

    /// `shutdown_grace_period` in seconds, else [`DEFAULT_SHUTDOWN_GRACE_SECONDS`]: a
    /// duration of whole seconds as hours, minutes and seconds (`45s`, `1m`, `1m30s`).
    pub fn shutdown_grace_seconds(&self) -> Result<u64, String> {
        let Some(text) = &self.shutdown_grace_period else {
            return Ok(DEFAULT_SHUTDOWN_GRACE_SECONDS);
        };
        let mut seconds = 0u64;
        let mut digits = String::new();
        for character in text.chars() {
            if character.is_ascii_digit() {
                digits.push(character);
                continue;
            }
            let unit = match character {
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => {
                    return Err(format!(
                        "{text:?} is not a duration such as 30s or 1m: {character:?} is not a unit (h, m or s)"
                    ))
                }
            };
            let amount: u64 = digits.parse().map_err(|_| {
                format!("{text:?} is not a duration such as 30s or 1m: a number must come before {character:?}")
            })?;
            seconds = seconds.saturating_add(amount.saturating_mul(unit));
            digits.clear();
        }
        if !digits.is_empty() || text.is_empty() {
            return Err(format!(
                "{text:?} is not a duration such as 30s or 1m: it must end with a unit (h, m or s)"
            ));
        }
        Ok(seconds)
    }

    /// `container_log_max_size` in bytes.
    pub fn log_max_size_bytes(&self) -> Result<Option<u64>, String> {
        self.container_log_max_size
            .as_deref()
            .map(size_bytes)
            .transpose()
    }

    /// The eviction thresholds: `eviction_hard`'s over the defaults. An error names the
    /// signal and says why.
    pub fn eviction_thresholds(&self) -> Result<EvictionThresholds, (String, String)> {
        let mut thresholds = EvictionThresholds::default();
        for (signal, text) in &self.eviction_hard {
            let slot = match signal.as_str() {
                "memory.available" => &mut thresholds.memory_available,
                "nodefs.available" => &mut thresholds.nodefs_available,
                _ => {
                    return Err((
                        signal.clone(),
                        format!(
                            "{signal:?} is not an eviction signal this node watches: use {}",
                            EVICTION_SIGNALS.join(" or ")
                        ),
                    ))
                }
            };
            *slot = match text.strip_suffix('%') {
                Some(percent) => match percent.parse::<u8>() {
                    Ok(percent) if percent < 100 => EvictionThreshold::Percent(percent),
                    _ => {
                        return Err((
                            signal.clone(),
                            format!("{text:?} is not a whole percentage from 0% to 99%"),
                        ))
                    }
                },
                None => EvictionThreshold::Bytes(
                    size_bytes(text).map_err(|reason| (signal.clone(), reason))?,
                ),
            };
        }
        Ok(thresholds)
    }
}

/// A size in bytes: a number with an optional binary (`Ki`, `Mi`, `Gi`) or decimal (`k`,
/// `M`, `G`) suffix.
fn size_bytes(text: &str) -> Result<u64, String> {
    let digits = text.trim_end_matches(|character: char| character.is_ascii_alphabetic());
    let multiplier: u64 = match &text[digits.len()..] {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        unit => {
            return Err(format!(
                "{text:?} has the unit {unit:?}; use Ki, Mi or Gi (or k, M, G)"
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|number| number.checked_mul(multiplier))
        .ok_or_else(|| format!("{text:?} is not a size such as 10Mi"))
}

impl MachineConfig {
    /// The update policy in force: the `update` section, with the cluster's built-in
    /// FleetLock server (`built_in_fleet_lock`, its URL) filled in where a node in a cluster
    /// asks for `fleet-lock` without a URL.
    pub fn update_policy(&self, built_in_fleet_lock: &str) -> Option<UpdatePolicy> {
        let mut policy = self.update.clone()?;
        if self.cluster.is_some() && policy.effective_reboot_policy() == RebootPolicy::FleetLock {
            let lock = policy.fleet_lock.get_or_insert(FleetLock {
                url: None,
                group: None,
            });
            lock.url
                .get_or_insert_with(|| built_in_fleet_lock.to_owned());
        }
        Some(policy)
    }

    /// An empty configuration of the current version: every default.
    pub fn empty() -> MachineConfig {
        MachineConfig {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            hostname: None,
            network: Network::default(),
            files: Vec::new(),
            directories: Vec::new(),
            links: Vec::new(),
            time: None,
            cluster: None,
            update: None,
            static_pods: Vec::new(),
            api: None,
            certificate_authorities: Vec::new(),
            registries: Registries::default(),
            kubelet: None,
        }
    }
}

/// Node networking.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    /// Interfaces to configure. Interfaces that match no entry are left down.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// DNS servers (IPv4 or IPv6 addresses), written to `/etc/resolv.conf` before any that
    /// DHCP offers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// DNS search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search_domains: Vec<String>,
}

impl Network {
    /// True when nothing is configured (the node then uses DHCP on its first interface).
    pub fn is_empty(&self) -> bool {
        self == &Network::default()
    }
}

/// One network interface.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Interface {
    /// Which interface this entry applies to.
    #[serde(rename = "match")]
    pub matches: InterfaceMatch,
    /// Take an IPv4 address, router and DNS servers by DHCP (renewed before the lease ends).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dhcp: bool,
    /// Static addresses in CIDR notation, e.g. `10.0.2.50/24` or `fd00::5/64`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Static routes through this interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// MTU in bytes (68 to 65535).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// How an interface is recognised. When both are given, both must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InterfaceMatch {
    /// Kernel name, e.g. `eth0`; a trailing `*` matches any suffix (`en*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Hardware address, e.g. `52:54:00:12:34:56`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// Destination in CIDR notation, or `default`.
    pub to: String,
    /// Next hop; without it the destination is on the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Route priority; lower wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

/// A file the node writes on every boot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct File {
    /// Absolute path under `/etc` or `/var` (not `/var/lib/keelson`, which is the agent's).
    pub path: String,
    /// The contents as UTF-8 text. At most one of `content`, `contentBase64` and `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// The contents, base64-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
    /// Where to fetch the contents: an `http://` URL (fetched once the network is up) or a
    /// `data:` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `gzip` when the source is gzip-compressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// Expected digest of what `source` returns, `sha256-<hex>` or `sha512-<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Permissions as an octal string, e.g. `"0644"` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Numeric owner (default 0). Keelson has no user database, so names are not accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
    /// Numeric group (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
    /// Append to the file instead of replacing it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub append: bool,
}

/// A directory the node creates on every boot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Directory {
    /// Absolute path under `/etc` or `/var`.
    pub path: String,
    /// Permissions as an octal string (default `"0755"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Numeric owner (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
    /// Numeric group (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
}

/// A link the node creates on every boot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Link {
    /// Absolute path of the link, under `/etc` or `/var`.
    pub path: String,
    /// What it points to. A hard link's target must be under `/etc` or `/var` too.
    pub target: String,
    /// A hard link instead of a symbolic one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hard: bool,
}

/// Time keeping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Time {
    /// NTP servers (host names or addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// Time zone. Keelson keeps the node in UTC; only `UTC` is honoured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// The cluster a node joins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    /// Cluster name: a DNS label.
    pub name: String,
    /// Shared secret that authenticates gossip: at least 32 characters. It seals what this
    /// node sends.
    pub secret: String,
    /// Other secrets this node also opens gossip with, while the cluster's secret is
    /// rotated: add the new one here on every node; then make it `secret` (with the old one
    /// here) on every node; then remove the old one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accept_secrets: Vec<String>,
    /// Nodes to contact first, as `host:port`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<String>,
    /// What this node may become.
    #[serde(default)]
    pub role: Role,
    /// How many voters the control plane keeps: 1, 3 or 5 (default 3). Fewer while fewer
    /// control-plane-eligible nodes are alive, always an odd number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_planes: Option<u8>,
    /// Seconds a voter may stay down in gossip before another node takes its place
    /// (30 to 86400, default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_dead_voter_seconds: Option<u32>,
    /// The cluster's pod network, from which each node leases its own pod CIDR (default
    /// `10.244.0.0/16`).
    #[serde(default, rename = "podCIDR", skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    /// The prefix length of each node's pod CIDR (16 to 30, default 24).
    #[serde(
        default,
        rename = "nodeCIDRMaskSize",
        skip_serializing_if = "Option::is_none"
    )]
    pub node_cidr_mask_size: Option<u8>,
    /// The built-in reboot lock's slots: how many nodes of a group may reboot at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_lock: Option<RebootLockSlots>,
}

/// The default number of control-plane voters.
pub const DEFAULT_CONTROL_PLANES: u8 = 3;
/// The default seconds before a dead voter is replaced.
pub const DEFAULT_REPLACE_DEAD_VOTER_SECONDS: u32 = 300;
/// The default cluster pod network.
pub const DEFAULT_CLUSTER_POD_CIDR: &str = "10.244.0.0/16";
/// The default prefix length of a node's pod CIDR.
pub const DEFAULT_NODE_CIDR_MASK_SIZE: u8 = 24;

impl Cluster {
    /// A cluster section with this name and secret and every other field at its default.
    pub fn new(name: impl Into<String>, secret: impl Into<String>) -> Cluster {
        Cluster {
            name: name.into(),
            secret: secret.into(),
            accept_secrets: Vec::new(),
            seeds: Vec::new(),
            role: Role::default(),
            control_planes: None,
            replace_dead_voter_seconds: None,
            pod_cidr: None,
            node_cidr_mask_size: None,
            reboot_lock: None,
        }
    }

    /// The voters the control plane keeps at most.
    pub fn control_planes(&self) -> u8 {
        self.control_planes.unwrap_or(DEFAULT_CONTROL_PLANES)
    }

    /// How long a voter may be down before it is replaced.
    pub fn replace_dead_voter_after(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(
            self.replace_dead_voter_seconds
                .unwrap_or(DEFAULT_REPLACE_DEAD_VOTER_SECONDS),
        ))
    }

    /// The cluster's pod network in force.
    pub fn pod_cidr(&self) -> &str {
        self.pod_cidr.as_deref().unwrap_or(DEFAULT_CLUSTER_POD_CIDR)
    }

    /// The prefix length of each node's pod CIDR in force.
    pub fn node_cidr_mask_size(&self) -> u8 {
        self.node_cidr_mask_size
            .unwrap_or(DEFAULT_NODE_CIDR_MASK_SIZE)
    }

    /// The reboot slots of `group`: its own count, else the default count, else 1.
    pub fn reboot_slots(&self, group: &str) -> u32 {
        let lock = self.reboot_lock.as_ref();
        lock.and_then(|lock| lock.groups.get(group).copied())
            .or_else(|| lock.and_then(|lock| lock.slots))
            .unwrap_or(1)
    }
}

/// Reboot slots of the cluster's built-in FleetLock server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RebootLockSlots {
    /// Slots of every group not named in `groups` (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// Slots by FleetLock group (`update.fleetLock.group`, `default` unless set).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub groups: std::collections::BTreeMap<String, u32>,
}

/// A node's role in the cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Takes part in the control-plane election.
    ControlPlane,
    /// Runs pods only.
    Worker,
    /// Lets the cluster decide.
    #[default]
    Auto,
}

impl Role {
    /// The name used in the config and in `keelctl cluster members`.
    pub fn name(self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
            Role::Auto => "auto",
        }
    }
}

/// How a node takes updates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdatePolicy {
    /// `auto` (install and reboot when an update is found) or `manual` (only when asked).
    #[serde(default)]
    pub strategy: UpdateStrategy,
    /// The update channel: the URL (`http://` or `https://`) of a directory holding a
    /// signed `channel.json` and the bundles it lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Minutes between channel checks when `strategy` is `auto` (5 to 10080, default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_interval_minutes: Option<u32>,
    /// When the node may reboot into an installed update. Defaults to `fleet-lock` when
    /// `fleetLock` is given, `window` when `window` is, and `immediate` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_policy: Option<RebootPolicy>,
    /// The weekly maintenance window of the `window` policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<RebootWindow>,
    /// A FleetLock server that limits how many nodes reboot at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_lock: Option<FleetLock>,
    /// Seconds a newly installed version has, from the start of its boot, to prove healthy
    /// (agent up, config applied, API serving) before the node rolls back. Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout_seconds: Option<u64>,
}

/// When updates are installed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateStrategy {
    /// Install and reboot without being asked.
    Auto,
    /// Install only when an operator asks.
    #[default]
    Manual,
}

/// When a node reboots into an installed update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RebootPolicy {
    /// As soon as the update is installed.
    Immediate,
    /// At the next opening of the maintenance window.
    Window,
    /// After taking a reboot slot from the FleetLock server.
    FleetLock,
}

impl RebootPolicy {
    /// The name used in the config and in status.
    pub fn name(self) -> &'static str {
        match self {
            RebootPolicy::Immediate => "immediate",
            RebootPolicy::Window => "window",
            RebootPolicy::FleetLock => "fleet-lock",
        }
    }
}

impl UpdatePolicy {
    /// The reboot policy in force: the one given, else the one the other keys imply.
    pub fn effective_reboot_policy(&self) -> RebootPolicy {
        match (self.reboot_policy, &self.fleet_lock, &self.window) {
            (Some(policy), _, _) => policy,
            (None, Some(_), _) => RebootPolicy::FleetLock,
            (None, None, Some(_)) => RebootPolicy::Window,
            (None, None, None) => RebootPolicy::Immediate,
        }
    }
}

/// A weekly maintenance window, in UTC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RebootWindow {
    /// The days it opens: `mon`, `tue`, `wed`, `thu`, `fri`, `sat`, `sun`.
    pub days: Vec<String>,
    /// When it opens on those days, `HH:MM` in UTC.
    pub start: String,
    /// How long it stays open, in minutes (it may run past midnight).
    pub length_minutes: u32,
}

impl RebootWindow {
    /// The window, or what is wrong with it.
    pub fn to_window(
        &self,
    ) -> Result<keelson_update::window::Window, keelson_update::window::WindowError> {
        keelson_update::window::Window::new(&self.days, &self.start, self.length_minutes)
    }
}

/// A FleetLock reboot coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetLock {
    /// Base URL (`http://` or `https://`). In a cluster it may be left out: the nodes then
    /// use the cluster's built-in FleetLock server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Lock group (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// A pod the node runs by itself, named `NAME-<node>` as the kubelet names static pods:
/// a whole v1 Pod manifest, or the short form of a pod of one container.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum StaticPod {
    /// A v1 Pod manifest, as a file of the kubelet's static pod path holds one.
    Manifest(PodManifest),
    /// The short form.
    Short(ShortStaticPod),
}

/// The keys that make an entry a whole manifest rather than the short form.
const MANIFEST_KEYS: [&str; 4] = ["apiVersion", "kind", "metadata", "spec"];

impl<'de> Deserialize<'de> for StaticPod {
    /// The form is told by the keys, so that a mistake in an entry is reported as that
    /// form's error (`unknown field `imagee`, expected one of …`) rather than as serde's
    /// "did not match any variant".
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(deserializer)?;
        let is_manifest = value
            .as_object()
            .is_some_and(|entry| MANIFEST_KEYS.iter().any(|key| entry.contains_key(*key)));
        if is_manifest {
            PodManifest::deserialize(value)
                .map(StaticPod::Manifest)
                .map_err(|error| D::Error::custom(format!("a v1 Pod manifest: {error}")))
        } else {
            ShortStaticPod::deserialize(value)
                .map(StaticPod::Short)
                .map_err(|error| {
                    D::Error::custom(format!(
                        "the short form {{name, image, command, args, env}} (or a v1 Pod \
                         manifest, with apiVersion, kind, metadata and spec): {error}"
                    ))
                })
        }
    }
}

impl StaticPod {
    /// The pod's name as given (before the node's name is added).
    pub fn name(&self) -> &str {
        match self {
            StaticPod::Manifest(manifest) => manifest
                .metadata
                .get("name")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default(),
            StaticPod::Short(short) => &short.name,
        }
    }

    /// The pod as a v1 Pod manifest (the short form's one container is named after the
    /// pod).
    pub fn manifest(&self) -> serde_json::Value {
        match self {
            StaticPod::Manifest(manifest) => {
                serde_json::to_value(manifest).unwrap_or(serde_json::Value::Null)
            }
            StaticPod::Short(short) => {
                let mut container = serde_json::json!({
                    "name": short.name,
                    "image": short.image,
                });
                if !short.command.is_empty() {
                    container["command"] = serde_json::json!(short.command);
                }
                if !short.args.is_empty() {
                    container["args"] = serde_json::json!(short.args);
                }
                if !short.env.is_empty() {
                    let env: Vec<serde_json::Value> = short
                        .env
                        .iter()
                        .map(|(name, value)| serde_json::json!({"name": name, "value": value}))
                        .collect();
                    container["env"] = serde_json::json!(env);
                }
                serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": short.name},
                    "spec": {"containers": [container]},
                })
            }
        }
    }
}

/// A v1 Pod manifest in the config; the kubelet checks it as the API server would.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodManifest {
    /// `v1`.
    pub api_version: String,
    /// `Pod`.
    pub kind: String,
    /// The pod's metadata: its `name` (a DNS label), and labels, annotations or a
    /// namespace as wanted.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The pod's spec, as Kubernetes' v1 PodSpec.
    pub spec: serde_json::Map<String, serde_json::Value>,
    /// A status, as `kubectl get -o yaml` writes one: ignored, as the kubelet ignores it.
    #[serde(default, skip_serializing)]
    #[schemars(skip)]
    pub status: Option<serde_json::Value>,
}

/// The short form of a static pod: one container, named after the pod.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShortStaticPod {
    /// Pod name: a DNS label.
    pub name: String,
    /// OCI image reference, e.g. `registry.example/app:1.0`.
    pub image: String,
    /// Replaces the image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Replaces the image's arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// Image registries: mirrors, plain-HTTP registries and credentials, by registry host (as
/// in an image name: `docker.io`, `ghcr.io`, `registry.local:5000`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Registries {
    /// Mirrors per registry: their endpoints are tried in order before the registry itself;
    /// one that fails or stalls moves the pull on to the next.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mirrors: BTreeMap<String, RegistryMirror>,
    /// Registries and mirrors (`host[:port]`) reached over plain HTTP. Nothing else ever is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure: Vec<String>,
    /// Credentials per registry or mirror host (basic auth, and for registries that hand
    /// out bearer tokens, the credentials the token service asks for).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub auth: BTreeMap<String, RegistryAuth>,
}

impl Registries {
    /// True when nothing is configured.
    pub fn is_empty(&self) -> bool {
        self == &Registries::default()
    }
}

/// A registry's mirrors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryMirror {
    /// Base URLs, e.g. `https://mirror.example:5000`.
    pub endpoints: Vec<String>,
}

/// Credentials for a registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistryAuth {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

/// The node API's mutual-TLS material, PEM-encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiPki {
    /// The CA that signs client certificates (`-----BEGIN CERTIFICATE-----`).
    pub ca: String,
    /// The node's server certificate.
    pub cert: String,
    /// The server certificate's private key.
    pub key: String,
}
