//! The pod supervisor: one task per pod drives the pod's lifecycle ([`crate::lifecycle`],
//! over each container's `keelson_runtime::lifecycle`) with the engine, keeps what must
//! survive on STATE, and answers the API with `v1/Pod`s carrying the kubelet's status.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use keelson_contract::exits::ExitStatus;
use keelson_runtime::lifecycle::{Container, Event, State};
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, watch};

use crate::engine::{Engine, Found};
use crate::events::{EventLog, EventType};
use crate::lifecycle::{Member, PodAction, PodEvent, PodLifecycle};
use crate::prober::{Report, RunNews};
use crate::probes::{ProbeSet, Verdict};
use crate::status::{self, ContainerFacts};
use crate::store::{PodRecord, PodStore, SavedContainer, SavedRun};
use keelson_net::ipam::{Ipam, PodCidr};

/// Why a request about pods failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodsError {
    /// The pod cannot be admitted (bad or unsupported spec).
    Invalid(String),
    /// A pod of that name exists with another spec.
    Conflict(String),
    /// No such pod.
    NotFound(String),
    /// Not through the API: a static pod changes with its source.
    Refused(String),
    /// STATE refused.
    Storage(String),
}

impl std::fmt::Display for PodsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PodsError::Invalid(message)
            | PodsError::Conflict(message)
            | PodsError::NotFound(message)
            | PodsError::Refused(message)
            | PodsError::Storage(message) => f.write_str(message),
        }
    }
}

/// What a pod's running containers use ([`Kubelet::top`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodUsage {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// Each running container's.
    pub containers: Vec<ContainerUsage>,
}

/// What one container uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUsage {
    /// The container's name.
    pub name: String,
    /// CPU, in thousandths of a core, over the sampling window.
    pub cpu_millicores: u64,
    /// Its working set, in bytes.
    pub memory_bytes: u64,
}

/// What a pod's task shares with the API.
struct Shared {
    record: PodRecord,
    pod: PodLifecycle,
    /// Each container's facts, in the order of the lifecycle's members.
    facts: Vec<ContainerFacts>,
    events: EventLog,
}

impl Shared {
    fn member(&self, index: usize) -> Option<&Member> {
        self.pod.members().get(index)
    }

    fn name(&self, index: usize) -> String {
        self.member(index)
            .map(|member| member.name.clone())
            .unwrap_or_default()
    }

    fn saved(&self, index: usize) -> SavedContainer {
        self.record.saved(&self.name(index))
    }

    fn saved_mut(&mut self, index: usize) -> &mut SavedContainer {
        let name = self.name(index);
        self.record.containers.entry(name).or_default()
    }

    /// The container `asked` for (None: the default one), by index.
    fn index_of(&self, asked: Option<&str>, pod_name: &str) -> Result<usize, PodsError> {
        let default = crate::pod::default_container(&self.record.pod)
            .map(|container| container.name.as_str())
            .unwrap_or_default();
        let wanted = asked.unwrap_or(default);
        let members = self.pod.members();
        members
            .iter()
            .position(|member| member.name == wanted)
            .ok_or_else(|| {
                let names: Vec<&str> = members.iter().map(|member| member.name.as_str()).collect();
                PodsError::NotFound(format!(
                    "container {wanted} is not valid for pod {pod_name}: its containers are {}",
                    names.join(", ")
                ))
            })
    }
}

struct PodHandle {
    shared: Arc<Mutex<Shared>>,
    /// Asks the pod's task to stop the pod.
    stop: mpsc::Sender<StopRequest>,
    gone: watch::Receiver<bool>,
}

/// Why a pod's task is asked to stop its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopRequest {
    /// The pod is deleted: stop it within this grace period (None: the pod's own), then
    /// forget it.
    Delete(Option<u64>),
    /// The node is shutting down: stop it within its own grace period, at most this
    /// long, and keep it, so that it comes back with the node.
    NodeShutdown(u64),
    /// The node is under pressure: kill it now and keep it, failed, until it is deleted.
    Evict,
}

impl StopRequest {
    /// The grace period for a pod whose own is `pods_own`.
    fn grace_seconds(self, pods_own: u64) -> u64 {
        match self {
            StopRequest::Delete(given) => given.unwrap_or(pods_own),
            StopRequest::NodeShutdown(cap) => pods_own.min(cap),
            // As the kubelet's hard eviction: no grace.
            StopRequest::Evict => 0,
        }
    }
}

/// The node's pods.
pub struct Kubelet {
    engine: Arc<Engine>,
    store: PodStore,
    pods: Mutex<BTreeMap<(String, String), PodHandle>>,
    host_ip: Mutex<Option<String>>,
    /// Held through an apply, so that two pods are never given the same name, ids,
    /// address or hostPort.
    admitting: Mutex<()>,
    /// The pods' addresses, by pod uid.
    addresses: Mutex<Ipam<String>>,
    /// The NAT last put in force, so that pods without hostPorts coming and going do not
    /// rewrite the table each time.
    nat_in_force: Mutex<Option<keelson_net::nat::NatPlan>>,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pods = self.pods.lock().map(|pods| pods.len()).unwrap_or(0);
        f.debug_struct("Kubelet").field("pods", &pods).finish()
    }
}

/// Why the API cannot change a static pod.
fn static_refusal(key: &(String, String), origin: &str, how: &str) -> String {
    format!(
        "pod {}/{} is a static pod from {origin}: it cannot be {how} through the API; \
         change or remove it there (keelctl apply-config for the machine config)",
        key.0, key.1
    )
}

/// The node's memory (`MemTotal`), read once: it does not change while the node runs, and
/// every container start asks for it (`resourceFieldRef` of a limit left unset).
fn node_memory_bytes() -> u64 {
    static CAPACITY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *CAPACITY.get_or_init(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|meminfo| crate::eviction::memory_of(&meminfo))
            .map_or(0, |memory| memory.capacity)
    })
}

/// This node's name (its hostname), as pods' `spec.nodeName` holds it.
pub fn node_name() -> String {
    nix::unistd::gethostname()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

impl Kubelet {
    /// Starts the supervisor: every kept pod comes back with its address, its running
    /// containers found again or restarted as its policy says.
    pub fn start(engine: Arc<Engine>, store: PodStore) -> Arc<Kubelet> {
        let (mut records, problems) = store.load_all();
        for problem in problems {
            tracing::warn!("a kept pod cannot be read: {problem}");
        }
        let addresses = Self::restore_addresses(engine.pod_cidr(), &mut records, &store);
        let kubelet = Arc::new(Kubelet {
            engine,
            store,
            pods: Mutex::new(BTreeMap::new()),
            host_ip: Mutex::new(None),
            admitting: Mutex::new(()),
            addresses: Mutex::new(addresses),
            nat_in_force: Mutex::new(None),
        });
        for record in records {
            kubelet.resume(record);
        }
        kubelet.engine.release_unclaimed_pipes();
        kubelet.refresh_nat();
        kubelet
    }

    /// The address allocator, rebuilt from the kept pods; a pod whose kept address cannot
    /// stand (the CIDR changed) or that has none gets a new one, kept at once.
    fn restore_addresses(
        cidr: PodCidr,
        records: &mut [PodRecord],
        store: &PodStore,
    ) -> Ipam<String> {
        let uid = |record: &PodRecord| record.pod.metadata.uid.clone().unwrap_or_default();
        let kept = records
            .iter()
            .filter_map(|record| Some((uid(record), record.pod_ip?)));
        let (mut ipam, refused) = Ipam::restore(cidr, kept);
        for (owner, error) in refused {
            tracing::warn!(pod = %owner, "its kept address is refused ({error}); it gets a new one");
        }
        for record in records.iter_mut() {
            if !crate::network::has_own_network(&record.pod) || record.evicted.is_some() {
                continue;
            }
            let owner = uid(record);
            let address = match ipam.address_of(&owner) {
                Some(address) => Some(address),
                None => ipam
                    .allocate(&owner)
                    .inspect_err(|error| tracing::warn!(pod = %owner, "no address: {error}"))
                    .ok(),
            };
            if address != record.pod_ip {
                record.pod_ip = address;
                if let Err(error) = store.save(record) {
                    tracing::warn!("{error}");
                }
            }
        }
        ipam
    }

    /// Moves the pods' network to `cidr` (the cluster leased it to this node) while no pod
    /// holds an address of the current one; returns whether it moved. With pods holding
    /// addresses, nothing changes now and the reason is returned: the next start moves
    /// them (see [`Kubelet::start`]).
    pub fn adopt_pod_cidr(&self, cidr: PodCidr) -> Result<bool, String> {
        let mut addresses = self
            .addresses
            .lock()
            .map_err(|_| "the address book is unusable".to_string())?;
        let current = addresses.cidr();
        if current == cidr {
            return Ok(false);
        }
        if addresses.held() > 0 {
            return Err(format!(
                "{} pod(s) hold addresses of {current}; they move to {cidr} at the next \
                 agent start",
                addresses.held()
            ));
        }
        *addresses = Ipam::new(cidr);
        self.engine.set_pod_cidr(cidr);
        drop(addresses);
        self.refresh_nat();
        Ok(true)
    }

    /// Puts the pods' NAT in force: masquerade, and every pod's hostPorts (when they
    /// differ from what is in force).
    fn refresh_nat(&self) {
        let ports = self
            .pods
            .lock()
            .map(|pods| {
                pods.values()
                    .filter_map(|handle| {
                        let shared = handle.shared.lock().ok()?;
                        let address = shared.record.pod_ip?;
                        Some(crate::network::port_mappings(&shared.record.pod, address))
                    })
                    .flatten()
                    .collect()
            })
            .unwrap_or_default();
        let plan = keelson_net::nat::NatPlan {
            pod_cidr: self.engine.pod_cidr(),
            ports,
        };
        let Ok(mut in_force) = self.nat_in_force.lock() else {
            return;
        };
        if in_force.as_ref() == Some(&plan) {
            return;
        }
        match keelson_net::nft::apply(&plan) {
            Ok(()) => *in_force = Some(plan),
            Err(error) => {
                // Tried again at the next change.
                *in_force = None;
                tracing::warn!("the pods' NAT is not in force: {error}");
            }
        }
    }

    /// Sets the node's address (the pods' `hostIP`).
    pub fn set_host_ip(&self, address: Option<String>) {
        if let Ok(mut host_ip) = self.host_ip.lock() {
            *host_ip = address;
        }
    }

    /// Admits `pod` and starts it. Applying a pod that exists with the same spec changes
    /// nothing (returns false); with another spec it is refused, as pods cannot change.
    pub fn apply(self: &Arc<Self>, pod: Pod) -> Result<(Pod, bool), PodsError> {
        if crate::static_pods::origin_of(&pod).is_some() {
            return Err(PodsError::Invalid(format!(
                "pod {}: metadata.annotations[{}] is the node's mark of its static pods;                  leave it out (a static pod comes from the machine config or {})",
                pod.metadata.name.as_deref().unwrap_or_default(),
                crate::static_pods::SOURCE_ANNOTATION,
                crate::static_pods::MANIFEST_DIRECTORY
            )));
        }
        self.admit(pod)
    }

    /// Admits and starts a pod (from the API or a static pod's source); the same one
    /// again changes nothing.
    fn admit(self: &Arc<Self>, pod: Pod) -> Result<(Pod, bool), PodsError> {
        let _admitting = self
            .admitting
            .lock()
            .map_err(|_| PodsError::Storage("the pod supervisor's lock is poisoned".into()))?;
        let uid = uuid::Uuid::new_v4().to_string();
        let mut admitted =
            crate::pod::admit(pod, &uid, status::time(now())).map_err(PodsError::Invalid)?;
        let key = crate::key(&admitted);
        // As the scheduler binds it: to this node, or refused when it names another.
        let node = node_name();
        if let Some(spec) = admitted.spec.as_mut() {
            match spec.node_name.as_deref() {
                None | Some("") => spec.node_name = Some(node),
                Some(named) if named == node => {}
                Some(named) => {
                    return Err(PodsError::Invalid(format!(
                        "pod {}/{}: spec.nodeName {named:?} is not this node ({node}); \
                         leave it out or name this node",
                        key.0, key.1
                    )))
                }
            }
        }
        if let Some(existing) = self.get(&key.0, &key.1) {
            if let Some(origin) = crate::static_pods::origin_of(&existing) {
                if crate::static_pods::origin_of(&admitted).is_none() {
                    return Err(PodsError::Refused(static_refusal(&key, origin, "replaced")));
                }
            }
            if existing.spec == admitted.spec
                && existing.metadata.labels == admitted.metadata.labels
                && existing.metadata.annotations == admitted.metadata.annotations
            {
                return Ok((existing, false));
            }
            return Err(PodsError::Conflict(format!(
                "pod {}/{} exists with another spec; a pod cannot change: delete it first (keelctl delete pod {})",
                key.0, key.1, key.1
            )));
        }
        let host_users = admitted.spec.as_ref().and_then(|spec| spec.host_users);
        let user_namespace = match host_users {
            Some(false) => {
                let held = self.user_blocks_held();
                let block = crate::userns::first_free_block(held).ok_or_else(|| {
                    PodsError::Invalid(format!(
                        "pod {}/{}: every block of node ids for user namespaces is taken \
                         ({} pods with hostUsers: false); delete one first",
                        key.0,
                        key.1,
                        crate::userns::LAST_BLOCK
                    ))
                })?;
                Some(crate::userns::mapping(block))
            }
            _ => None,
        };
        let others: Vec<Pod> = self.list(None);
        if let Some(conflict) = crate::network::port_conflict(&admitted, &others) {
            return Err(PodsError::Invalid(format!(
                "pod {}/{}: {conflict}",
                key.0, key.1
            )));
        }
        let mut record = PodRecord::new(admitted, user_namespace);
        if crate::network::has_own_network(&record.pod) {
            let mut addresses = self
                .addresses
                .lock()
                .map_err(|_| PodsError::Storage("the address allocator is poisoned".into()))?;
            let address = addresses.allocate(&uid).map_err(|error| {
                PodsError::Invalid(format!(
                    "pod {}/{}: {error}; delete a pod first, or give the node a wider kubelet.podCIDR",
                    key.0, key.1
                ))
            })?;
            record.pod_ip = Some(address);
        }
        if let Err(error) = self.store.save(&record) {
            self.release_address(&uid);
            return Err(PodsError::Storage(error));
        }
        tracing::info!(pod = %format!("{}/{}", key.0, key.1), address = ?record.pod_ip, "pod admitted");
        self.resume(record);
        self.refresh_nat();
        self.get(&key.0, &key.1)
            .map(|pod| (pod, true))
            .ok_or_else(|| PodsError::NotFound("the pod vanished as it started".into()))
    }

    /// Every pod (of `namespace`, when given), with its status.
    pub fn list(&self, namespace: Option<&str>) -> Vec<Pod> {
        let Ok(pods) = self.pods.lock() else {
            return Vec::new();
        };
        pods.iter()
            .filter(|((pod_namespace, _), _)| {
                namespace.is_none_or(|namespace| namespace == pod_namespace)
            })
            .map(|(_, handle)| self.view(handle))
            .collect()
    }

    /// One pod with its status.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Pod> {
        let pods = self.pods.lock().ok()?;
        pods.get(&(namespace.to_owned(), name.to_owned()))
            .map(|handle| self.view(handle))
    }

    /// Stops the pod's container (SIGTERM, SIGKILL after the grace period: `grace_seconds`
    /// when given, else the pod's `terminationGracePeriodSeconds`) and forgets it. Returns
    /// the pod as it was last.
    pub async fn delete(
        &self,
        namespace: &str,
        name: &str,
        grace_seconds: Option<u64>,
    ) -> Result<Pod, PodsError> {
        if let Some(pod) = self.get(namespace, name) {
            if let Some(origin) = crate::static_pods::origin_of(&pod) {
                let key = (namespace.to_owned(), name.to_owned());
                return Err(PodsError::Refused(static_refusal(&key, origin, "deleted")));
            }
        }
        self.remove(namespace, name, grace_seconds).await
    }

    /// Makes the node's static pods those of `wanted` (from [`crate::static_pods::pods_of`]):
    /// a new one starts, one whose manifest changed is stopped and started again from the
    /// new one, one no longer wanted is stopped and forgotten, and one unchanged is left
    /// alone (its containers, restarts and start times too). Returns what could not be
    /// done, each naming the pod's source.
    pub async fn sync_static(self: &Arc<Self>, wanted: Vec<Result<Pod, String>>) -> Vec<String> {
        let mut problems = Vec::new();
        let mut wanted_pods = BTreeMap::new();
        for pod in wanted {
            match pod {
                Ok(pod) => {
                    wanted_pods.insert(crate::key(&pod), pod);
                }
                Err(problem) => problems.push(problem),
            }
        }
        let running: Vec<Pod> = self
            .list(None)
            .into_iter()
            .filter(|pod| crate::static_pods::origin_of(pod).is_some())
            .collect();
        for pod in running {
            let key = crate::key(&pod);
            let same = wanted_pods.get(&key).is_some_and(|wanted| {
                crate::static_pods::hash_annotation(wanted)
                    == crate::static_pods::hash_annotation(&pod)
            });
            if same {
                wanted_pods.remove(&key);
                continue;
            }
            tracing::info!(pod = %format!("{}/{}", key.0, key.1), "static pod changed or removed: stopping it");
            if let Err(error) = self.remove(&key.0, &key.1, None).await {
                problems.push(format!("static pod {}/{}: {error}", key.0, key.1));
            }
        }
        for (key, pod) in wanted_pods {
            let origin = crate::static_pods::origin_of(&pod)
                .unwrap_or_default()
                .to_owned();
            match self.admit(pod) {
                Ok((_, true)) => {
                    tracing::info!(pod = %format!("{}/{}", key.0, key.1), %origin, "static pod started")
                }
                Ok((_, false)) => {}
                Err(error) => problems.push(format!("{origin}: {error}")),
            }
        }
        problems
    }

    /// Every static pod is Ready; else which is not, and why.
    pub fn static_pods_ready(&self) -> Result<(), String> {
        for pod in self.list(None) {
            if crate::static_pods::origin_of(&pod).is_none() {
                continue;
            }
            let ready = pod
                .status
                .as_ref()
                .and_then(|status| status.conditions.as_ref())
                .is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|condition| condition.type_ == "Ready" && condition.status == "True")
                });
            if !ready {
                let phase = pod
                    .status
                    .as_ref()
                    .and_then(|status| status.phase.clone())
                    .unwrap_or_default();
                let (namespace, name) = crate::key(&pod);
                return Err(format!(
                    "static pod {namespace}/{name} is not Ready ({phase})"
                ));
            }
        }
        Ok(())
    }

    /// The CPU (millicores, averaged over `window`) and memory (working set, bytes) of
    /// every running container of the pods (of `namespace`, when given), as `kubectl top`
    /// shows them: two readings of the containers' cgroups, `window` apart.
    pub async fn top(&self, namespace: Option<&str>, window: std::time::Duration) -> Vec<PodUsage> {
        let pods = self.list(namespace);
        let read = |pods: &[Pod]| -> Vec<Vec<Option<keelson_runtime::cgroup::Usage>>> {
            pods.iter()
                .map(|pod| {
                    running_containers(pod)
                        .iter()
                        .map(|name| self.engine.usage(pod, name))
                        .collect()
                })
                .collect()
        };
        let first = read(&pods);
        let started = std::time::Instant::now();
        tokio::time::sleep(window).await;
        let second = read(&pods);
        let elapsed_usec = started.elapsed().as_micros().max(1) as u64;
        pods.iter()
            .zip(first.iter().zip(&second))
            .map(|(pod, (before, after))| {
                let (namespace, name) = crate::key(pod);
                let containers = running_containers(pod)
                    .into_iter()
                    .zip(before.iter().zip(after))
                    .filter_map(|(container, (before, after))| {
                        let (before, after) = ((*before)?, (*after)?);
                        let used = after.cpu_usec.saturating_sub(before.cpu_usec);
                        Some(ContainerUsage {
                            name: container,
                            cpu_millicores: used.saturating_mul(1000) / elapsed_usec,
                            memory_bytes: after.memory_bytes,
                        })
                    })
                    .collect();
                PodUsage {
                    namespace,
                    name,
                    containers,
                }
            })
            .collect()
    }

    /// Stops the pod within `grace_seconds` (or its own grace period) and forgets it.
    async fn remove(
        &self,
        namespace: &str,
        name: &str,
        grace_seconds: Option<u64>,
    ) -> Result<Pod, PodsError> {
        let (stop, mut gone) = {
            let pods = self
                .pods
                .lock()
                .map_err(|_| PodsError::Storage("poisoned".into()))?;
            let handle = pods
                .get(&(namespace.to_owned(), name.to_owned()))
                .ok_or_else(|| PodsError::NotFound(format!("pod {namespace}/{name} not found")))?;
            (handle.stop.clone(), handle.gone.clone())
        };
        let _ = stop.send(StopRequest::Delete(grace_seconds)).await;
        let _ = gone.wait_for(|gone| *gone).await;
        let handle = self
            .pods
            .lock()
            .ok()
            .and_then(|mut pods| pods.remove(&(namespace.to_owned(), name.to_owned())));
        let last = handle.map(|handle| self.view(&handle));
        // Its hostPorts go with it.
        self.refresh_nat();
        last.ok_or_else(|| PodsError::NotFound(format!("pod {namespace}/{name} not found")))
    }

    /// The pods that are running or starting, as eviction ranks them; `with_disk` also
    /// measures what each holds on STATE (a walk of its files, so only under disk
    /// pressure).
    pub fn eviction_candidates(&self, with_disk: bool) -> Vec<crate::eviction::PodUse> {
        self.list(None)
            .iter()
            .filter(|pod| {
                pod.status.as_ref().is_some_and(|status| {
                    status.reason.is_none()
                        && matches!(status.phase.as_deref(), Some("Running" | "Pending"))
                })
            })
            .map(|pod| {
                let (namespace, name) = crate::key(pod);
                let containers = running_containers(pod)
                    .into_iter()
                    .map(|container| crate::eviction::ContainerMemory {
                        used: self
                            .engine
                            .usage(pod, &container)
                            .map_or(0, |usage| usage.memory_bytes),
                        request: crate::pod::container_named(pod, &container)
                            .map_or(0, crate::pod::memory_request),
                        name: container,
                    })
                    .collect();
                crate::eviction::PodUse {
                    namespace,
                    name,
                    qos: crate::eviction::QosClass::from_name(status::qos_class(pod)),
                    is_static: crate::static_pods::origin_of(pod).is_some(),
                    containers,
                    disk_used: if with_disk {
                        self.engine.disk_usage(pod)
                    } else {
                        0
                    },
                }
            })
            .collect()
    }

    /// Evicts the pod: it is killed at once and stays, `Failed` with the reason `Evicted`
    /// and `message`, until it is deleted.
    pub async fn evict(&self, namespace: &str, name: &str, message: &str) -> Result<(), PodsError> {
        let stop = {
            let poisoned = || PodsError::Storage("the pod table is poisoned".into());
            let pods = self.pods.lock().map_err(|_| poisoned())?;
            let handle = pods
                .get(&(namespace.to_owned(), name.to_owned()))
                .ok_or_else(|| PodsError::NotFound(format!("pod {namespace}/{name} not found")))?;
            let mut shared = handle.shared.lock().map_err(|_| poisoned())?;
            shared.record.evicted = Some(message.to_owned());
            // Kept first: an agent that restarts now finishes the eviction.
            self.store
                .save(&shared.record)
                .map_err(|error| PodsError::Storage(error.to_string()))?;
            shared
                .events
                .record(EventType::Warning, "Evicted", message.to_owned(), now());
            handle.stop.clone()
        };
        tracing::warn!(pod = %format!("{namespace}/{name}"), "evicting: {message}");
        let _ = stop.send(StopRequest::Evict).await;
        Ok(())
    }

    /// Stops every pod for the node's shutdown, as the kubelet's graceful node shutdown
    /// does: preStop hooks, SIGTERM, and each pod's grace period, at most `cap_seconds`;
    /// the pods are kept and come back with the node. Returns once all have stopped, or
    /// after `cap_seconds` and a little more (PID 1 ends what is left).
    pub async fn shut_down(&self, cap_seconds: u64) {
        let handles: Vec<(mpsc::Sender<StopRequest>, watch::Receiver<bool>)> = self
            .pods
            .lock()
            .map(|pods| {
                pods.values()
                    .map(|handle| (handle.stop.clone(), handle.gone.clone()))
                    .collect()
            })
            .unwrap_or_default();
        tracing::info!(
            pods = handles.len(),
            "the node is shutting down: stopping its pods within {cap_seconds} s"
        );
        let all_stopped = async {
            for (stop, _) in &handles {
                let _ = stop.send(StopRequest::NodeShutdown(cap_seconds)).await;
            }
            for (_, mut gone) in handles {
                let _ = gone.wait_for(|gone| *gone).await;
            }
        };
        // The kill after the grace period, and the hooks' own time, need a moment more.
        let limit = std::time::Duration::from_secs(cap_seconds + 3);
        match tokio::time::timeout(limit, all_stopped).await {
            Ok(()) => tracing::info!("every pod has stopped"),
            Err(_) => tracing::warn!("pods still running {} s into the shutdown", limit.as_secs()),
        }
    }

    /// Reads the pod's shared state.
    fn with_pod<T>(
        &self,
        namespace: &str,
        name: &str,
        read: impl FnOnce(&Shared) -> T,
    ) -> Result<T, PodsError> {
        let poisoned = || PodsError::Storage("the pod table is poisoned".into());
        let pods = self.pods.lock().map_err(|_| poisoned())?;
        let handle = pods
            .get(&(namespace.to_owned(), name.to_owned()))
            .ok_or_else(|| PodsError::NotFound(format!("pod {namespace}/{name} not found")))?;
        let shared = handle.shared.lock().map_err(|_| poisoned())?;
        Ok(read(&shared))
    }

    /// The pod's events as `v1/Event`s, oldest first.
    pub fn events(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<k8s_openapi::api::core::v1::Event>, PodsError> {
        let node = node_name();
        self.with_pod(namespace, name, |shared| {
            shared
                .events
                .events()
                .iter()
                .enumerate()
                .map(|(sequence, event)| {
                    crate::events::to_v1(&shared.record.pod, event, &node, sequence)
                })
                .collect()
        })
    }

    /// The log file of the pod's current (or previous) run of `container` (None: its
    /// first app container, as kubectl defaults), and whether that run may still write
    /// to it.
    pub fn log_file(
        &self,
        namespace: &str,
        name: &str,
        container: Option<&str>,
        previous: bool,
    ) -> Result<(std::path::PathBuf, bool), PodsError> {
        self.with_pod(namespace, name, |shared| {
            let index = shared.index_of(container, name)?;
            self.log_file_of(shared, index, name, previous)
        })?
    }

    fn log_file_of(
        &self,
        shared: &Shared,
        index: usize,
        name: &str,
        previous: bool,
    ) -> Result<(std::path::PathBuf, bool), PodsError> {
        let container = shared.name(index);
        let saved = shared.saved(index);
        let runs = saved.runs;
        if runs == 0 {
            return Err(PodsError::NotFound(format!(
                "container {container} in pod {name} has not started yet"
            )));
        }
        let Some(member) = shared.member(index) else {
            return Err(PodsError::NotFound(format!(
                "pod {name} has no container {container}"
            )));
        };
        if previous {
            // As the kubelet does: the previous run is the one `lastState` reports, the
            // run before the current one, or, between runs (backing off), the last one.
            let between_runs = matches!(
                member.container.state,
                State::BackOff { .. } | State::Creating
            );
            let previous = if member.container.last.is_none() {
                None
            } else if between_runs {
                runs.checked_sub(1)
            } else {
                runs.checked_sub(2)
            };
            let Some(previous) = previous else {
                return Err(PodsError::NotFound(format!(
                    "previous terminated container {container} in pod {name} not found"
                )));
            };
            return Ok((
                self.engine
                    .run_log(&shared.record.pod, &container, previous),
                false,
            ));
        }
        Ok((
            self.engine
                .run_log(&shared.record.pod, &container, runs - 1),
            saved.running.is_some(),
        ))
    }

    /// What `exec` needs to run `command` in the pod's running container `container`
    /// (None: its first app container).
    pub fn exec_spec(
        &self,
        namespace: &str,
        name: &str,
        container: Option<&str>,
        command: Vec<String>,
        terminal: bool,
    ) -> Result<keelson_runtime::spec::ExecSpec, PodsError> {
        let (running, container) = self.with_pod(namespace, name, |shared| {
            let index = shared.index_of(container, name)?;
            Ok::<_, PodsError>((shared.saved(index).running, shared.name(index)))
        })??;
        let running = running.ok_or_else(|| {
            PodsError::Invalid(format!(
                "cannot exec into container {container} of pod {name}: it is not running (keelctl get pod {name})"
            ))
        })?;
        if command.is_empty() {
            return Err(PodsError::Invalid(
                "exec needs a command (keelctl exec POD -- COMMAND)".into(),
            ));
        }
        self.engine
            .exec_spec(&running, command, terminal)
            .map_err(PodsError::Storage)
    }

    /// container-exec, ready to run `spec` (see [`Engine::container_exec`]).
    pub fn container_exec(
        &self,
        spec: &keelson_runtime::spec::ExecSpec,
    ) -> Result<(tokio::process::Command, std::path::PathBuf), String> {
        self.engine.container_exec(spec)
    }

    fn view(&self, handle: &PodHandle) -> Pod {
        let host_ip = self.host_ip.lock().ok().and_then(|host_ip| host_ip.clone());
        let Ok(shared) = handle.shared.lock() else {
            return Pod::default();
        };
        let mut pod = shared.record.pod.clone();
        let pod_ip = match shared.record.pod_ip {
            Some(address) => Some(address.to_string()),
            None if !crate::network::has_own_network(&pod) => host_ip.clone(),
            None => None,
        };
        let mut status = status::pod_status(
            &pod,
            &shared.pod,
            &shared.facts,
            host_ip.as_deref(),
            pod_ip.as_deref(),
        );
        if let Some(message) = &shared.record.evicted {
            status.phase = Some("Failed".into());
            status.reason = Some("Evicted".into());
            status.message = Some(message.clone());
        }
        pod.status = Some(status);
        pod
    }

    /// What the downward API tells `pod` of the node.
    fn node_facts(
        &self,
        pod: &Pod,
        pod_ip: Option<std::net::Ipv4Addr>,
    ) -> crate::downward::NodeFacts {
        let host_ip = self.host_ip.lock().ok().and_then(|host_ip| host_ip.clone());
        let host_network = !crate::network::has_own_network(pod);
        let cpus = std::thread::available_parallelism().map_or(1, |cpus| cpus.get() as u64);
        crate::downward::NodeFacts {
            name: node_name(),
            pod_ip: pod_ip
                .map(|address| address.to_string())
                .or_else(|| host_ip.clone().filter(|_| host_network)),
            host_ip,
            cpu_millis: cpus * 1000,
            memory_bytes: node_memory_bytes(),
        }
    }

    fn release_address(&self, uid: &str) {
        if let Ok(mut addresses) = self.addresses.lock() {
            addresses.release(&uid.to_owned());
        }
    }

    /// The blocks of node ids the pods' user namespaces hold.
    fn user_blocks_held(&self) -> Vec<u32> {
        let Ok(pods) = self.pods.lock() else {
            return Vec::new();
        };
        pods.values()
            .filter_map(|handle| {
                let shared = handle.shared.lock().ok()?;
                shared
                    .record
                    .user_namespace
                    .as_ref()
                    .map(crate::userns::block_of)
            })
            .collect()
    }

    /// Starts the task of a kept or new pod: each container met running is watched
    /// again, one that ended while the agent was away is told so, and a sandbox that a
    /// reboot took is made again.
    fn resume(self: &Arc<Self>, record: PodRecord) {
        let key = crate::key(&record.pod);
        let policy = crate::pod::restart_policy(&record.pod);
        let mut members = Vec::new();
        let mut facts = Vec::new();
        let mut pending = Vec::new();
        let mut ended_away = Vec::new();
        let mut ever_started = false;
        let all_members = crate::pod::members(&record.pod);
        // Whether a container after `index` ever started: then a sidecar's startup probe
        // had passed (the probe is not kept, and runs again).
        let followed = |index: usize| {
            all_members[index + 1..]
                .iter()
                .any(|(later, _)| record.saved(&later.name).first_started_at.is_some())
        };
        for (index, (spec, role)) in all_members.iter().cloned().enumerate() {
            let saved = record.saved(&spec.name);
            ever_started |= saved.first_started_at.is_some();
            let state = match (&saved.running, saved.finished) {
                (Some(running), _) => {
                    let run = saved.runs.saturating_sub(1);
                    let found = self.engine.find(&record.pod, &spec.name, run, running);
                    let exit = match found {
                        Found::Running => None,
                        Found::Exited(status) => Some((
                            status.code(),
                            self.engine.oom_killed(&record.pod, &spec.name),
                        )),
                        Found::Lost => Some((137, false)),
                    };
                    if let Some(ended) = exit {
                        // Met as running, then told how it ended (or that it is gone).
                        ended_away.push((index, ended));
                    }
                    State::Running {
                        pid: running.pid,
                        started_at: running.started_at,
                    }
                }
                (None, Some(finished)) => State::Terminated(finished.into()),
                (None, None) => State::Creating,
            };
            let container = Container::resume(
                role.container_policy(policy),
                state,
                saved.last.map(Into::into),
                saved.restart_count,
            );
            let startup_probe = spec.startup_probe.is_some();
            let started_once = saved.first_started_at.is_some()
                && (role != crate::lifecycle::Role::Sidecar || !startup_probe || followed(index));
            members.push(Member::resume(
                spec.name.clone(),
                role,
                container,
                started_once,
                startup_probe,
            ));
            facts.push(ContainerFacts {
                image: spec.image.clone().unwrap_or_default(),
                image_id: saved.image_id.clone(),
                // The last run's id (`<pod uid>.<container>.<run>`).
                container_id: saved.runs.checked_sub(1).map(|run| {
                    format!(
                        "keelson://{}.{}.{run}",
                        record.pod.metadata.uid.as_deref().unwrap_or_default(),
                        spec.name
                    )
                }),
                waiting: None,
                ever_started: saved.first_started_at.is_some(),
                first_started_at: saved.first_started_at,
                unstarted_by_probe: false,
                unready_by_probe: false,
            });
        }
        // An evicted pod stays stopped (its eviction finishes if the agent restarted
        // during it).
        let evicted = record.evicted.is_some();
        if ever_started && !evicted && !self.engine.sandbox_exists(&record.pod) {
            pending.push(PodEvent::SandboxRecreated { at: now() });
        }
        let grace = crate::pod::grace_seconds(&record.pod);
        let (pod, starts) = if evicted {
            PodLifecycle::resume_stopped(members, grace, now())
        } else {
            PodLifecycle::resume(members, grace, now())
        };
        let shared = Arc::new(Mutex::new(Shared {
            record,
            pod,
            facts,
            events: EventLog::default(),
        }));
        let (delete_sender, delete_receiver) = mpsc::channel(1);
        let (gone_sender, gone_receiver) = watch::channel(false);
        if let Ok(mut pods) = self.pods.lock() {
            pods.insert(
                key,
                PodHandle {
                    shared: shared.clone(),
                    stop: delete_sender,
                    gone: gone_receiver,
                },
            );
        }
        let (probe_news, probe_receiver) = mpsc::unbounded_channel();
        let worker = Worker {
            kubelet: self.clone(),
            shared,
            exits: tokio::task::JoinSet::new(),
            wake: None,
            probe_news,
            probers: BTreeMap::new(),
        };
        tokio::spawn(worker.run(
            starts,
            ended_away,
            pending,
            (delete_receiver, probe_receiver),
            gone_sender,
            evicted.then_some(StopRequest::Evict),
        ));
    }
}

/// One pod's task.
struct Worker {
    kubelet: Arc<Kubelet>,
    shared: Arc<Mutex<Shared>>,
    /// One waiter per running container: its index and how its process ended.
    exits: tokio::task::JoinSet<(usize, Option<ExitStatus>)>,
    wake: Option<u64>,
    /// Where the probe tasks report.
    probe_news: mpsc::UnboundedSender<RunNews>,
    /// The probe task of each running container that has probes.
    probers: BTreeMap<usize, tokio::task::AbortHandle>,
}

impl Worker {
    async fn run(
        mut self,
        starts: Vec<PodAction>,
        ended_away: Vec<(usize, (i32, bool))>,
        initial: Vec<PodEvent>,
        (mut stop, mut probe_results): (
            mpsc::Receiver<StopRequest>,
            mpsc::UnboundedReceiver<RunNews>,
        ),
        gone: watch::Sender<bool>,
        mut stopping: Option<StopRequest>,
    ) {
        // Containers met running are watched again, unless already known to have ended.
        let met_running: Vec<(usize, crate::store::RunningRecord)> = self
            .with(|shared| {
                (0..shared.pod.members().len())
                    .filter_map(|index| shared.saved(index).running.map(|running| (index, running)))
                    .collect()
            })
            .unwrap_or_default();
        for (index, running) in met_running {
            if !ended_away.iter().any(|(ended, _)| *ended == index) {
                self.watch(index, running.clone());
                self.start_probes(index, running);
            }
        }
        let mut actions: VecDeque<PodAction> = starts.into();
        for (index, (exit_code, oom_killed)) in ended_away {
            actions.extend(self.ended(index, exit_code, Some(oom_killed)).await);
        }
        for event in initial {
            actions.extend(self.step(event).await);
        }
        loop {
            while let Some(action) = actions.pop_front() {
                actions.extend(self.perform(action).await);
            }
            let finished = self.with(|shared| {
                shared.pod.all_terminated()
                    && shared
                        .record
                        .containers
                        .values()
                        .all(|saved| saved.running.is_none())
            });
            if stopping.is_some() && finished == Some(true) {
                break;
            }
            let wake = self.wake;
            tokio::select! {
                Some(joined) = self.exits.join_next(), if !self.exits.is_empty() => {
                    match joined {
                        Ok((index, status)) => {
                            // No record of how it ended: 255, as for an unknown exit.
                            let exit_code = status.map(|status| status.code()).unwrap_or(255);
                            actions.extend(self.ended(index, exit_code, None).await)
                        }
                        Err(error) => tracing::warn!("a container's waiter failed: {error}"),
                    }
                }
                Some(request) = stop.recv(), if stopping.is_none() => {
                    stopping = Some(request);
                    let pods_own = self.with(|shared| crate::pod::grace_seconds(&shared.record.pod)).unwrap_or(30);
                    let grace = request.grace_seconds(pods_own);
                    actions.extend(self.step(PodEvent::StopRequested { at: now(), grace_seconds: grace }).await);
                }
                Some(news) = probe_results.recv() => {
                    actions.extend(self.probed(news).await);
                }
                _ = sleep_until(wake), if wake.is_some() => {
                    self.wake = None;
                    actions.extend(self.step(PodEvent::Tick { at: now() }).await);
                }
            }
        }
        if stopping == Some(StopRequest::Evict) {
            stopping = self.evicted(&mut stop).await;
        }
        let pod = self.with(|shared| shared.record.pod.clone());
        let deleted = matches!(stopping, Some(StopRequest::Delete(_)));
        if let (Some(pod), false) = (&pod, deleted) {
            let (namespace, name) = crate::key(pod);
            tracing::info!(pod = %format!("{namespace}/{name}"), "pod stopped for the node's shutdown");
        } else if let Some(pod) = pod {
            self.kubelet.engine.forget(&pod).await;
            self.kubelet
                .release_address(pod.metadata.uid.as_deref().unwrap_or_default());
            let (namespace, name) = crate::key(&pod);
            if let Err(error) = self.kubelet.store.remove(&namespace, &name) {
                tracing::warn!("{error}");
            }
            tracing::info!(pod = %format!("{namespace}/{name}"), "pod deleted");
        }
        for prober in self.probers.values() {
            prober.abort();
        }
        let _ = gone.send(true);
    }

    fn with<T>(&self, read: impl FnOnce(&Shared) -> T) -> Option<T> {
        self.shared.lock().ok().map(|shared| read(&shared))
    }

    /// The evicted pod's containers have all stopped: what it held on the node goes (its
    /// address, sandbox and volumes; its logs stay), and it waits, failed, to be deleted.
    /// Returns the request that ends its task.
    async fn evicted(&mut self, stop: &mut mpsc::Receiver<StopRequest>) -> Option<StopRequest> {
        if let Some(pod) = self.with(|shared| shared.record.pod.clone()) {
            self.kubelet.engine.release(&pod).await;
            self.kubelet
                .release_address(pod.metadata.uid.as_deref().unwrap_or_default());
            if let Ok(mut shared) = self.shared.lock() {
                shared.record.pod_ip = None;
                if let Err(error) = self.kubelet.store.save(&shared.record) {
                    tracing::warn!("{error}");
                }
            }
            self.kubelet.refresh_nat();
            let (namespace, name) = crate::key(&pod);
            tracing::info!(pod = %format!("{namespace}/{name}"), "pod evicted");
        }
        for prober in self.probers.values() {
            prober.abort();
        }
        loop {
            match stop.recv().await {
                Some(StopRequest::Evict) => continue,
                other => return other,
            }
        }
    }

    /// Starts probing run `running` of container `index`, when it has probes.
    fn start_probes(&mut self, index: usize, running: crate::store::RunningRecord) {
        if let Some(previous) = self.probers.remove(&index) {
            previous.abort();
        }
        let Some((probes, host)) = self.with(|shared| {
            let probes = crate::pod::container_named(&shared.record.pod, &shared.name(index))
                .map(|container| crate::probes::probes_of(container).unwrap_or_default())
                .unwrap_or_default();
            let host = shared
                .record
                .pod_ip
                .map_or_else(|| "127.0.0.1".to_owned(), |address| address.to_string());
            (probes, host)
        }) else {
            return;
        };
        let set = ProbeSet::new(probes);
        if let Ok(mut shared) = self.shared.lock() {
            let facts = &mut shared.facts[index];
            facts.unstarted_by_probe = !set.started();
            facts.unready_by_probe = !set.ready();
        }
        if set.is_empty() {
            return;
        }
        let task = tokio::spawn(crate::prober::probe_loop(
            self.kubelet.engine.clone(),
            index,
            running,
            set,
            host,
            self.probe_news.clone(),
        ));
        self.probers.insert(index, task.abort_handle());
    }

    /// SIGTERM to container `index`'s run, after its preStop hook (which may take the
    /// grace period; SIGKILL still comes at its end).
    fn terminate(&mut self, index: usize, running: crate::store::RunningRecord) {
        let engine = self.kubelet.engine.clone();
        let has_hook = self.hook(index, crate::hooks::Hook::PreStop).is_some();
        if !has_hook {
            engine.signal(&running, Signal::SIGTERM);
            return;
        }
        let then = {
            let engine = engine.clone();
            let running = running.clone();
            move || engine.signal(&running, Signal::SIGTERM)
        };
        self.run_hook(
            index,
            running,
            crate::hooks::Hook::PreStop,
            Some(Box::new(then)),
        );
    }

    /// Container `index`'s `hook`, if it has one.
    fn hook(&self, index: usize, hook: crate::hooks::Hook) -> Option<crate::probes::Check> {
        self.with(|shared| {
            crate::pod::container_named(&shared.record.pod, &shared.name(index))
                .and_then(|container| crate::hooks::hook_of(container, hook).ok().flatten())
        })
        .flatten()
    }

    /// Runs `hook` of run `running` of container `index` on a task of its own (within the
    /// pod's grace period), reports a failure, then calls `then`.
    fn run_hook(
        &mut self,
        index: usize,
        running: crate::store::RunningRecord,
        hook: crate::hooks::Hook,
        then: Option<Box<dyn FnOnce() + Send>>,
    ) {
        let Some(check) = self.hook(index, hook) else {
            if let Some(then) = then {
                then();
            }
            return;
        };
        let Some((host, grace)) = self.with(|shared| {
            (
                shared
                    .record
                    .pod_ip
                    .map_or_else(|| "127.0.0.1".to_owned(), |address| address.to_string()),
                crate::pod::grace_seconds(&shared.record.pod),
            )
        }) else {
            return;
        };
        let engine = self.kubelet.engine.clone();
        let news = self.probe_news.clone();
        tokio::spawn(async move {
            let timeout = std::time::Duration::from_secs(grace.max(1));
            let outcome = crate::prober::run_check(&engine, &running, &check, &host, timeout).await;
            if let Err(error) = outcome {
                let _ = news.send(RunNews {
                    index,
                    run_id: running.run_id.clone(),
                    report: Report::HookFailed {
                        hook,
                        message: format!(
                            "{} hook failed: {error}",
                            match hook {
                                crate::hooks::Hook::PostStart => "PostStart",
                                crate::hooks::Hook::PreStop => "PreStop",
                            }
                        ),
                    },
                });
            }
            if let Some(then) = then {
                then();
            }
        });
    }

    /// A probe's result: its events, the container's readiness, or a restart.
    async fn probed(&mut self, news: RunNews) -> Vec<PodAction> {
        let current = self
            .with(|shared| {
                shared
                    .saved(news.index)
                    .running
                    .map(|running| running.run_id)
            })
            .flatten();
        let pre_stop = matches!(
            news.report,
            Report::HookFailed {
                hook: crate::hooks::Hook::PreStop,
                ..
            }
        );
        // A report about an earlier run no longer matters; a preStop hook's failure is
        // told even when its container is gone.
        if current.as_deref() != Some(news.run_id.as_str()) && !pre_stop {
            return Vec::new();
        }
        let at = now();
        let mut restart = false;
        let mut startup_passed = false;
        if let Ok(mut shared) = self.shared.lock() {
            let name = shared.name(news.index);
            match news.report {
                Report::Probe {
                    kind,
                    failure,
                    verdict,
                } => {
                    if let Some(failure) = failure {
                        let message = format!("{} probe failed: {failure}", kind.name());
                        shared
                            .events
                            .record(EventType::Warning, "Unhealthy", message, at);
                    }
                    let facts = &mut shared.facts[news.index];
                    match verdict {
                        Some(Verdict::Started { ready }) => {
                            facts.unstarted_by_probe = false;
                            facts.unready_by_probe = !ready;
                            startup_passed = true;
                        }
                        Some(Verdict::Ready(ready)) => facts.unready_by_probe = !ready,
                        Some(Verdict::Restart(kind)) => {
                            restart = true;
                            let message = format!(
                                "Container {name} failed {} probe, will be restarted",
                                kind.name().to_lowercase()
                            );
                            shared
                                .events
                                .record(EventType::Normal, "Killing", message, at);
                        }
                        None => {}
                    }
                }
                Report::HookFailed { hook, message } => {
                    shared
                        .events
                        .record(EventType::Warning, hook.failed_reason(), message, at);
                    // A failed postStart kills the container, as the kubelet does.
                    if hook == crate::hooks::Hook::PostStart {
                        restart = true;
                        let message = format!("FailedPostStartHook: container {name}");
                        shared
                            .events
                            .record(EventType::Normal, "Killing", message, at);
                    }
                }
            }
        }
        if startup_passed {
            // A sidecar waiting on it lets the next container go.
            let index = news.index;
            return self.step(PodEvent::StartupProbePassed { index, at }).await;
        }
        if !restart {
            return Vec::new();
        }
        let grace = self
            .with(|shared| crate::pod::grace_seconds(&shared.record.pod))
            .unwrap_or(30);
        let event = Event::RestartRequested {
            at,
            grace_seconds: grace,
        };
        self.step(PodEvent::Container {
            index: news.index,
            event,
        })
        .await
    }

    /// Waits for container `index`'s run to end.
    fn watch(&mut self, index: usize, running: crate::store::RunningRecord) {
        let engine = self.kubelet.engine.clone();
        self.exits
            .spawn(async move { (index, engine.wait(&running).await) });
    }

    /// Steps the pod's lifecycle, keeps the result on STATE, returns the actions.
    async fn step(&mut self, event: PodEvent) -> Vec<PodAction> {
        let Ok(mut shared) = self.shared.lock() else {
            return Vec::new();
        };
        let backing_off = |shared: &Shared| -> Vec<bool> {
            shared
                .pod
                .members()
                .iter()
                .map(|member| matches!(member.container.state, State::BackOff { .. }))
                .collect()
        };
        let before = backing_off(&shared);
        let actions = match shared.pod.step(event) {
            Ok(actions) => actions,
            Err(refused) => {
                tracing::warn!("{refused}");
                Vec::new()
            }
        };
        let after = backing_off(&shared);
        for index in 0..shared.pod.members().len() {
            let Some(member) = shared.member(index).cloned() else {
                continue;
            };
            let saved = shared.saved_mut(index);
            saved.restart_count = member.container.restart_count;
            saved.last = member.container.last.map(SavedRun::from);
            saved.finished = match member.container.state {
                State::Terminated(run) => Some(run.into()),
                _ => None,
            };
            if after[index] && !before[index] {
                if let Some((reason, _)) = shared.facts[index].waiting.as_mut() {
                    if reason == "ErrImagePull" {
                        *reason = "ImagePullBackOff".into();
                    }
                }
                let message = backoff_message(&shared, index);
                shared
                    .events
                    .record(EventType::Warning, "BackOff", message, now());
            }
        }
        if let Err(error) = self.kubelet.store.save(&shared.record) {
            tracing::warn!("{error}");
        }
        actions
    }

    async fn perform(&mut self, action: PodAction) -> Vec<PodAction> {
        let engine = self.kubelet.engine.clone();
        match action {
            PodAction::Start(index) => self.start(index).await,
            PodAction::Terminate(index, _) | PodAction::Kill(index, _) => {
                let terminate = matches!(action, PodAction::Terminate(..));
                let signal = if terminate {
                    Signal::SIGTERM
                } else {
                    Signal::SIGKILL
                };
                let running = self.with(|shared| shared.saved(index).running).flatten();
                let stopping = self.with(|shared| shared.pod.is_stopping()) == Some(true);
                if let Some(running) = running {
                    // A kill for a failed probe has its own event.
                    if terminate && stopping {
                        if let Ok(mut shared) = self.shared.lock() {
                            let message = format!("Stopping container {}", shared.name(index));
                            shared
                                .events
                                .record(EventType::Normal, "Killing", message, now());
                        }
                    }
                    if terminate {
                        self.terminate(index, running);
                    } else {
                        engine.signal(&running, signal);
                    }
                }
                Vec::new()
            }
            PodAction::WakeAt(at) => {
                self.wake = Some(self.wake.map_or(at, |wake| wake.min(at)));
                Vec::new()
            }
        }
    }

    /// Starts a run of container `index`: the pod's sandbox first, then the container.
    async fn start(&mut self, index: usize) -> Vec<PodAction> {
        let engine = self.kubelet.engine.clone();
        let Some((pod, name, run, user_namespace, pod_ip)) = self.with(|shared| {
            (
                shared.record.pod.clone(),
                shared.name(index),
                shared.saved(index).runs,
                shared.record.user_namespace,
                shared.record.pod_ip,
            )
        }) else {
            return Vec::new();
        };
        let at = now();
        let mut notes = Vec::new();
        let node = self.kubelet.node_facts(&pod, pod_ip);
        // How long the sandbox and the container take, for the log: what a pod's start
        // costs beyond the runtime's own work.
        let began = std::time::Instant::now();
        let mut sandbox_took = std::time::Duration::ZERO;
        let outcome = match engine.sandbox(&pod, user_namespace, pod_ip).await {
            Ok(shared) => {
                sandbox_took = began.elapsed();
                engine
                    .start(
                        &pod,
                        &name,
                        run,
                        at,
                        user_namespace,
                        shared,
                        &node,
                        &mut notes,
                    )
                    .await
            }
            Err(failure) => Err(failure),
        };
        if let Ok(mut shared) = self.shared.lock() {
            for (kind, reason, message) in notes {
                shared.events.record(kind, reason, message, at);
            }
            if let Err(failure) = &outcome {
                let message = format!("Error: {}", failure.reason);
                shared
                    .events
                    .record(EventType::Warning, "Failed", message, at);
            }
        }
        match outcome {
            Ok(started) => {
                let (namespace, pod_name) = crate::key(&pod);
                tracing::info!(
                    pod = %format!("{namespace}/{pod_name}"),
                    container = %name,
                    sandbox_ms = sandbox_took.as_millis() as u64,
                    container_ms = (began.elapsed() - sandbox_took).as_millis() as u64,
                    "container started"
                );
                if let Ok(mut shared) = self.shared.lock() {
                    let facts = &mut shared.facts[index];
                    facts.waiting = None;
                    facts.ever_started = true;
                    facts.image_id = Some(started.image_id.clone());
                    facts.container_id = Some(format!("keelson://{}", started.record.run_id));
                    facts.first_started_at.get_or_insert(at);
                    let saved = shared.saved_mut(index);
                    saved.runs = run + 1;
                    saved.running = Some(started.record.clone());
                    saved.image_id = Some(started.image_id);
                    saved.first_started_at.get_or_insert(at);
                }
                self.watch(index, started.record.clone());
                self.start_probes(index, started.record.clone());
                self.run_hook(
                    index,
                    started.record.clone(),
                    crate::hooks::Hook::PostStart,
                    None,
                );
                let event = Event::Started {
                    pid: started.record.pid,
                    at,
                };
                self.step(PodEvent::Container { index, event }).await
            }
            Err(failure) => {
                tracing::warn!(container = %name, reason = failure.reason, "{}", failure.message);
                if let Ok(mut shared) = self.shared.lock() {
                    shared.facts[index].waiting =
                        Some((failure.reason.to_owned(), failure.message));
                }
                let event = Event::CreateFailed { at };
                self.step(PodEvent::Container { index, event }).await
            }
        }
    }

    /// Container `index`'s run ended with `exit_code`, killed for its memory or not (None:
    /// its cgroup tells); what it left is removed.
    async fn ended(
        &mut self,
        index: usize,
        exit_code: i32,
        oom_killed: Option<bool>,
    ) -> Vec<PodAction> {
        let engine = self.kubelet.engine.clone();
        let Some((pod, name, running)) = self.with(|shared| {
            (
                shared.record.pod.clone(),
                shared.name(index),
                shared.saved(index).running,
            )
        }) else {
            return Vec::new();
        };
        if let Some(prober) = self.probers.remove(&index) {
            prober.abort();
        }
        let oom_killed = oom_killed.unwrap_or_else(|| engine.oom_killed(&pod, &name));
        if let Some(running) = &running {
            engine.clean_up(&running.run_id, &pod, &name).await;
        }
        if let Ok(mut shared) = self.shared.lock() {
            shared.saved_mut(index).running = None;
        }
        let event = Event::Exited {
            exit_code,
            oom_killed,
            at: now(),
        };
        self.step(PodEvent::Container { index, event }).await
    }
}

/// The kubelet's words for a container held back by its backoff.
fn backoff_message(shared: &Shared, index: usize) -> String {
    let facts = &shared.facts[index];
    let pulling = facts
        .waiting
        .as_ref()
        .is_some_and(|(reason, _)| reason == "ImagePullBackOff");
    if pulling {
        return format!("Back-off pulling image {:?}", facts.image);
    }
    let pod = &shared.record.pod.metadata;
    format!(
        "Back-off restarting failed container {} in pod {}_{}({})",
        shared.name(index),
        pod.name.as_deref().unwrap_or_default(),
        pod.namespace.as_deref().unwrap_or_default(),
        pod.uid.as_deref().unwrap_or_default()
    )
}

/// The names of the pod's running containers, by its status.
fn running_containers(pod: &Pod) -> Vec<String> {
    pod.status
        .iter()
        .flat_map(|status| {
            status
                .init_container_statuses
                .iter()
                .flatten()
                .chain(status.container_statuses.iter().flatten())
        })
        .filter(|status| {
            status
                .state
                .as_ref()
                .is_some_and(|state| state.running.is_some())
        })
        .map(|status| status.name.clone())
        .collect()
}

async fn sleep_until(at: Option<u64>) {
    let wait = at.map(|at| at.saturating_sub(now())).unwrap_or(0);
    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
}
