//! Eviction, as the kubelet decides it: when the node's available memory or STATE's free
//! space falls below its hard threshold, the node is under pressure, and one pod at a time
//! is stopped for good (reported `Failed` with the reason `Evicted`) until it no longer is.
//! Under disk pressure, unused images go first.
//!
//! Which pod goes:
//! - for memory, BestEffort pods first, then Burstable pods using more than they
//!   requested, each group by how far over its requests it is; Guaranteed pods and
//!   Burstable pods within their requests are left alone (their limits hold them);
//! - for disk, BestEffort, then Burstable, then Guaranteed, each group by the disk it uses.
//!
//! Static pods are the node's own and are never evicted, as the kubelet never evicts
//! critical pods. This module is pure: the agent observes the node and acts.

use keelson_config::model::EvictionThresholds;

/// One resource as observed: its capacity and what is available of it, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resource {
    /// All of it.
    pub capacity: u64,
    /// What is free for use.
    pub available: u64,
}

/// The node as the eviction manager sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observation {
    /// Memory (`MemTotal`, `MemAvailable`).
    pub memory: Resource,
    /// STATE's filesystem.
    pub nodefs: Resource,
}

/// The node's memory from `/proc/meminfo`: `MemTotal` and `MemAvailable`, the kernel's
/// estimate of what can be had without swapping (page cache that can be dropped counted).
pub fn memory_of(meminfo: &str) -> Option<Resource> {
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|line| line.starts_with(name))?;
        let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
        Some(kib.saturating_mul(1024))
    };
    Some(Resource {
        capacity: field("MemTotal:")?,
        available: field("MemAvailable:")?,
    })
}

/// A pod's Quality of Service class, by how its resources are set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QosClass {
    /// No requests or limits at all: first to go.
    BestEffort,
    /// Some requests or limits.
    Burstable,
    /// Limits equal to requests for CPU and memory in every container.
    Guaranteed,
}

impl QosClass {
    /// The class named as `status.qosClass` names it.
    pub fn from_name(name: &str) -> QosClass {
        match name {
            "BestEffort" => QosClass::BestEffort,
            "Guaranteed" => QosClass::Guaranteed,
            _ => QosClass::Burstable,
        }
    }
}

/// One container's memory, for the eviction message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerMemory {
    /// Its name.
    pub name: String,
    /// Its working set, in bytes.
    pub used: u64,
    /// Its memory request, in bytes (0 when none).
    pub request: u64,
}

/// A running pod, as eviction ranks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodUse {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its QoS class.
    pub qos: QosClass,
    /// A static pod: never evicted.
    pub is_static: bool,
    /// Each running container's memory.
    pub containers: Vec<ContainerMemory>,
    /// What it holds on STATE (writable layers, volumes, logs), in bytes.
    pub disk_used: u64,
}

impl PodUse {
    fn memory_used(&self) -> u64 {
        self.containers.iter().map(|container| container.used).sum()
    }

    fn memory_request(&self) -> u64 {
        self.containers
            .iter()
            .map(|container| container.request)
            .sum()
    }

    /// How far its memory use is over its requests.
    fn memory_over_request(&self) -> u64 {
        self.memory_used().saturating_sub(self.memory_request())
    }
}

/// The resource a pressure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    /// `memory.available` is below its threshold.
    Memory,
    /// `nodefs.available` is below its threshold.
    Disk,
}

impl Pressure {
    /// The node condition that reports it.
    pub fn condition(self) -> &'static str {
        match self {
            Pressure::Memory => "MemoryPressure",
            Pressure::Disk => "DiskPressure",
        }
    }
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Remove the images no pod uses, then look again.
    CollectImages,
    /// Stop this pod for good, and report it `Evicted` with this message.
    Evict {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Why, as the kubelet words it.
        message: String,
    },
}

/// The eviction manager's verdict for one look at the node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// The pressures the node is under, memory first.
    pub pressures: Vec<Pressure>,
    /// What to do about the first of them; None when nothing can be done (or nothing needs
    /// to be).
    pub action: Option<Action>,
    /// When under pressure with nothing to do, why.
    pub stuck: Option<String>,
}

/// Decides what to do: `images_collected` is true once unused images were removed during
/// this disk pressure.
pub fn decide(
    thresholds: &EvictionThresholds,
    observed: &Observation,
    pods: &[PodUse],
    images_collected: bool,
) -> Verdict {
    let memory_threshold = thresholds
        .memory_available
        .bytes_of(observed.memory.capacity);
    let disk_threshold = thresholds
        .nodefs_available
        .bytes_of(observed.nodefs.capacity);
    let mut verdict = Verdict::default();
    if observed.memory.available < memory_threshold {
        verdict.pressures.push(Pressure::Memory);
    }
    if observed.nodefs.available < disk_threshold {
        verdict.pressures.push(Pressure::Disk);
    }
    let Some(&first) = verdict.pressures.first() else {
        return verdict;
    };
    let (threshold, available) = match first {
        Pressure::Memory => (memory_threshold, observed.memory.available),
        Pressure::Disk => (disk_threshold, observed.nodefs.available),
    };
    if first == Pressure::Disk && !images_collected {
        verdict.action = Some(Action::CollectImages);
        return verdict;
    }
    let chosen = match first {
        Pressure::Memory => memory_victim(pods),
        Pressure::Disk => disk_victim(pods),
    };
    match chosen {
        Some(pod) => {
            verdict.action = Some(Action::Evict {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                message: message(first, threshold, available, pod),
            })
        }
        None => {
            verdict.stuck = Some(format!(
                "the node is low on {} ({} available, the threshold is {}) but no pod may be evicted for it",
                resource_name(first),
                quantity(available),
                quantity(threshold)
            ))
        }
    }
    verdict
}

/// The pod memory pressure evicts: BestEffort first, then Burstable over its requests,
/// the furthest over first.
fn memory_victim(pods: &[PodUse]) -> Option<&PodUse> {
    pods.iter()
        .filter(|pod| !pod.is_static)
        .filter_map(|pod| {
            let group = match pod.qos {
                QosClass::BestEffort => 0,
                QosClass::Burstable if pod.memory_over_request() > 0 => 1,
                _ => return None,
            };
            Some(((group, std::cmp::Reverse(pod.memory_over_request())), pod))
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, pod)| pod)
}

/// The pod disk pressure evicts: by QoS class, then the most disk first; a pod that holds
/// nothing on STATE frees nothing and stays.
fn disk_victim(pods: &[PodUse]) -> Option<&PodUse> {
    pods.iter()
        .filter(|pod| !pod.is_static && pod.disk_used > 0)
        .min_by_key(|pod| (pod.qos, std::cmp::Reverse(pod.disk_used)))
}

fn resource_name(pressure: Pressure) -> &'static str {
    match pressure {
        Pressure::Memory => "memory",
        Pressure::Disk => "ephemeral-storage",
    }
}

/// The kubelet's wording: the resource, the threshold, what was available, and what the
/// pod's containers used beyond their requests.
fn message(pressure: Pressure, threshold: u64, available: u64, pod: &PodUse) -> String {
    let mut message = format!(
        "The node was low on resource: {}. Threshold quantity: {}, available: {}.",
        resource_name(pressure),
        quantity(threshold),
        quantity(available)
    );
    match pressure {
        Pressure::Memory => {
            for container in &pod.containers {
                if container.used > container.request {
                    message.push_str(&format!(
                        " Container {} was using {}, request is {}, has larger consumption of memory.",
                        container.name,
                        quantity(container.used),
                        quantity(container.request)
                    ));
                }
            }
        }
        Pressure::Disk => message.push_str(&format!(
            " The pod was using {} of ephemeral storage.",
            quantity(pod.disk_used)
        )),
    }
    message
}

/// Bytes as a Kubernetes quantity: `Mi` when whole, else `Ki` (rounded up), else bytes.
pub fn quantity(bytes: u64) -> String {
    if bytes == 0 {
        "0".to_owned()
    } else if bytes.is_multiple_of(1 << 20) {
        format!("{}Mi", bytes >> 20)
    } else if bytes >= 1 << 10 {
        format!("{}Ki", bytes.div_ceil(1 << 10))
    } else {
        bytes.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_config::model::EvictionThreshold;

    const MI: u64 = 1 << 20;

    fn pod(name: &str, qos: QosClass, used_mi: u64, request_mi: u64) -> PodUse {
        PodUse {
            namespace: "default".into(),
            name: name.into(),
            qos,
            is_static: false,
            containers: vec![ContainerMemory {
                name: "main".into(),
                used: used_mi * MI,
                request: request_mi * MI,
            }],
            disk_used: 0,
        }
    }

    fn node(memory_available_mi: u64, disk_available_percent: u64) -> Observation {
        Observation {
            memory: Resource {
                capacity: 1024 * MI,
                available: memory_available_mi * MI,
            },
            nodefs: Resource {
                capacity: 1000 * MI,
                available: disk_available_percent * 10 * MI,
            },
        }
    }

    fn evicted(verdict: &Verdict) -> Option<&str> {
        match &verdict.action {
            Some(Action::Evict { name, .. }) => Some(name),
            _ => None,
        }
    }

    #[test]
    fn no_pressure_no_action() {
        let pods = [pod("hog", QosClass::BestEffort, 900, 0)];
        let verdict = decide(&EvictionThresholds::default(), &node(101, 50), &pods, false);
        assert_eq!(verdict, Verdict::default());
    }

    #[test]
    fn memory_pressure_takes_best_effort_before_burstable_over_requests() {
        let pods = [
            pod("guaranteed", QosClass::Guaranteed, 500, 500),
            pod("burstable-over", QosClass::Burstable, 400, 100),
            pod("small-best-effort", QosClass::BestEffort, 10, 0),
            pod("burstable-within", QosClass::Burstable, 50, 100),
        ];
        let thresholds = EvictionThresholds::default();
        let verdict = decide(&thresholds, &node(99, 50), &pods, false);
        assert_eq!(verdict.pressures, [Pressure::Memory]);
        assert_eq!(evicted(&verdict), Some("small-best-effort"));
        // With the BestEffort pod gone, the Burstable pod over its requests.
        let verdict = decide(&thresholds, &node(99, 50), &pods[..2], false);
        assert_eq!(evicted(&verdict), Some("burstable-over"));
        // Nothing else may go: the verdict says so.
        let verdict = decide(
            &thresholds,
            &node(99, 50),
            &[pods[0].clone(), pods[3].clone()],
            false,
        );
        assert_eq!(verdict.action, None);
        let stuck = verdict.stuck.unwrap();
        assert!(
            stuck.contains("low on memory (99Mi available, the threshold is 100Mi)"),
            "{stuck}"
        );
    }

    #[test]
    fn the_biggest_best_effort_pod_goes_first_and_static_pods_never() {
        let mut own = pod("node-agent-extra", QosClass::BestEffort, 800, 0);
        own.is_static = true;
        let pods = [
            pod("a", QosClass::BestEffort, 100, 0),
            own,
            pod("b", QosClass::BestEffort, 300, 0),
        ];
        let verdict = decide(&EvictionThresholds::default(), &node(50, 50), &pods, false);
        assert_eq!(evicted(&verdict), Some("b"));
    }

    #[test]
    fn the_message_reads_as_the_kubelets() {
        let pods = [pod("hog", QosClass::BestEffort, 300, 0)];
        let verdict = decide(&EvictionThresholds::default(), &node(80, 50), &pods, false);
        let Some(Action::Evict { message, .. }) = verdict.action else {
            panic!("nothing evicted: {verdict:?}");
        };
        assert_eq!(
            message,
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 80Mi. \
             Container main was using 300Mi, request is 0, has larger consumption of memory."
        );
    }

    #[test]
    fn disk_pressure_collects_images_before_it_evicts_by_disk_use() {
        let mut small = pod("small", QosClass::BestEffort, 10, 0);
        small.disk_used = 10 * MI;
        let mut big = pod("big", QosClass::BestEffort, 10, 0);
        big.disk_used = 90 * MI;
        let mut guaranteed = pod("guaranteed", QosClass::Guaranteed, 10, 10);
        guaranteed.disk_used = 500 * MI;
        let pods = [
            small,
            guaranteed,
            big,
            pod("none", QosClass::BestEffort, 1, 0),
        ];
        let thresholds = EvictionThresholds::default();
        let verdict = decide(&thresholds, &node(500, 5), &pods, false);
        assert_eq!(verdict.pressures, [Pressure::Disk]);
        assert_eq!(verdict.action, Some(Action::CollectImages));
        let verdict = decide(&thresholds, &node(500, 5), &pods, true);
        assert_eq!(evicted(&verdict), Some("big"));
        let Some(Action::Evict { message, .. }) = verdict.action else {
            unreachable!()
        };
        assert!(message.contains("low on resource: ephemeral-storage. Threshold quantity: 100Mi, available: 50Mi. The pod was using 90Mi"), "{message}");
    }

    #[test]
    fn memory_pressure_is_answered_before_disk_pressure() {
        let pods = [pod("hog", QosClass::BestEffort, 300, 0)];
        let verdict = decide(&EvictionThresholds::default(), &node(10, 1), &pods, false);
        assert_eq!(verdict.pressures, [Pressure::Memory, Pressure::Disk]);
        assert_eq!(evicted(&verdict), Some("hog"));
    }

    #[test]
    fn a_zero_threshold_turns_its_signal_off() {
        let thresholds = EvictionThresholds {
            memory_available: EvictionThreshold::Bytes(0),
            nodefs_available: EvictionThreshold::Percent(0),
        };
        let pods = [pod("hog", QosClass::BestEffort, 300, 0)];
        assert_eq!(
            decide(&thresholds, &node(0, 0), &pods, false),
            Verdict::default()
        );
    }

    #[test]
    fn memory_is_read_from_meminfo() {
        let meminfo = "MemTotal:        1012000 kB\nMemFree:          500000 kB\nMemAvailable:     700000 kB\n";
        assert_eq!(
            memory_of(meminfo),
            Some(Resource {
                capacity: 1_012_000 * 1024,
                available: 700_000 * 1024
            })
        );
        assert_eq!(memory_of("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn quantities_read_as_kubernetes_writes_them() {
        assert_eq!(quantity(100 * MI), "100Mi");
        assert_eq!(quantity(95_532 * 1024), "95532Ki");
        assert_eq!(quantity(1500), "2Ki");
        assert_eq!(quantity(512), "512");
    }

    /// Whatever the node and its pods, an eviction never takes a static pod, never takes a
    /// pod for memory while a BestEffort pod remains, never takes a Guaranteed pod for
    /// memory, and happens only under pressure.
    #[test]
    fn eviction_keeps_its_promises() {
        bolero::check!()
            .with_type::<(u16, u16, bool, Vec<(u8, bool, u16, u16, u16)>)>()
            .for_each(|(memory_mi, disk_percent, collected, shapes)| {
                let pods: Vec<PodUse> = shapes
                    .iter()
                    .enumerate()
                    .map(|(index, (qos, is_static, used, request, disk))| PodUse {
                        namespace: "default".into(),
                        name: format!("pod-{index}"),
                        qos: match qos % 3 {
                            0 => QosClass::BestEffort,
                            1 => QosClass::Burstable,
                            _ => QosClass::Guaranteed,
                        },
                        is_static: *is_static,
                        containers: vec![ContainerMemory {
                            name: "main".into(),
                            used: u64::from(*used) * MI,
                            request: if qos % 3 == 0 {
                                0
                            } else {
                                u64::from(*request) * MI
                            },
                        }],
                        disk_used: u64::from(*disk) * MI,
                    })
                    .collect();
                let observed = node(u64::from(*memory_mi % 1024), u64::from(*disk_percent % 101));
                let verdict = decide(&EvictionThresholds::default(), &observed, &pods, *collected);
                let Some(Action::Evict { name, .. }) = &verdict.action else {
                    return;
                };
                assert!(!verdict.pressures.is_empty());
                let victim = pods.iter().find(|pod| &pod.name == name).unwrap();
                assert!(!victim.is_static);
                if verdict.pressures[0] == Pressure::Memory {
                    assert_ne!(victim.qos, QosClass::Guaranteed);
                    let best_effort_left = pods
                        .iter()
                        .any(|pod| !pod.is_static && pod.qos == QosClass::BestEffort);
                    assert!(!best_effort_left || victim.qos == QosClass::BestEffort);
                } else {
                    assert!(
                        *collected,
                        "a disk eviction before the images were collected"
                    );
                    assert!(victim.disk_used > 0);
                }
            });
    }
}
