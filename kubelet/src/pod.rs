//! Admission: which `v1/Pod`s this node runs, with Kubernetes' defaults filled in, and what
//! the runtime's pure cores need from one. Pure.
//!
//! A pod that asks for what this node cannot do yet (volumes, probes, ...) is refused,
//! naming the field, rather than run in part.

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use keelson_runtime::lifecycle::RestartPolicy;

use crate::lifecycle::Role;
use keelson_runtime::process::ContainerRequest;
use keelson_runtime::resources::{self, Resources};
use keelson_runtime::spec::SeccompProfile;

/// The namespace of a pod that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Seconds between SIGTERM and SIGKILL when the pod does not say.
pub const DEFAULT_GRACE_SECONDS: i64 = 30;

/// Reads a `v1/Pod` from JSON strictly, as the API server's strict field validation does:
/// a field that `v1/Pod` does not have (a typo, or a field of a newer Kubernetes) is
/// refused by its path rather than silently dropped.
pub fn parse_strict(json: &str) -> Result<Pod, String> {
    let given: serde_json::Value =
        serde_json::from_str(json).map_err(|error| format!("the pod is not JSON: {error}"))?;
    let pod: Pod = serde_json::from_value(given.clone())
        .map_err(|error| format!("the pod is not a v1/Pod: {error}"))?;
    // What survives a round trip through the typed Pod is what it knows.
    let known = serde_json::to_value(&pod).map_err(|error| error.to_string())?;
    let mut unknown = Vec::new();
    unknown_fields(&given, &known, "", &mut unknown);
    if unknown.is_empty() {
        return Ok(pod);
    }
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let fields: Vec<String> = unknown.iter().map(|path| format!("{path:?}")).collect();
    Err(format!(
        "pod {name}: unknown field{} {} (a typo, or a field this node's Kubernetes API \
         level, 1.33, does not have); nothing was created",
        if unknown.len() > 1 { "s" } else { "" },
        fields.join(", ")
    ))
}

fn unknown_fields(
    given: &serde_json::Value,
    known: &serde_json::Value,
    path: &str,
    unknown: &mut Vec<String>,
) {
    use serde_json::Value;
    match (given, known) {
        (Value::Object(given), Value::Object(known)) => {
            for (key, value) in given {
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match known.get(key) {
                    // A null says nothing, and the round trip drops it.
                    None if value.is_null() => {}
                    None => unknown.push(here),
                    Some(known) => unknown_fields(value, known, &here, unknown),
                }
            }
        }
        (Value::Array(given), Value::Array(known)) => {
            for (index, (value, known)) in given.iter().zip(known).enumerate() {
                unknown_fields(value, known, &format!("{path}[{index}]"), unknown);
            }
        }
        _ => {}
    }
}

/// Checks `pod`, fills in the defaults (namespace, restart policy, grace period, pull
/// policy), and gives it `uid` and `now` as its creation time. Returns why it cannot run.
pub fn admit(mut pod: Pod, uid: &str, now: Time) -> Result<Pod, String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    check_name("metadata.name", &name)?;
    let namespace = pod
        .metadata
        .namespace
        .get_or_insert_with(|| DEFAULT_NAMESPACE.to_owned())
        .clone();
    check_name("metadata.namespace", &namespace)?;
    let Some(spec) = pod.spec.as_mut() else {
        return Err(format!("pod {name} has no spec"));
    };
    let pod_context = spec.security_context.clone().unwrap_or_default();
    let non_empty = |list: Option<usize>| list.is_some_and(|length| length > 0);
    let unsupported = [
        (
            "spec.ephemeralContainers",
            non_empty(spec.ephemeral_containers.as_ref().map(Vec::len)),
            "add a container to a new pod instead",
        ),
        (
            "spec.hostIPC",
            spec.host_ipc == Some(true),
            "a pod's containers share an IPC namespace of its own",
        ),
        (
            "spec.hostPID",
            spec.host_pid == Some(true),
            "each container has a PID namespace of its own",
        ),
        (
            "spec.shareProcessNamespace",
            spec.share_process_namespace == Some(true),
            "each container has a PID namespace of its own",
        ),
        (
            "spec.activeDeadlineSeconds",
            spec.active_deadline_seconds.is_some(),
            "leave it out; delete the pod when its time is up",
        ),
        (
            "spec.readinessGates",
            non_empty(spec.readiness_gates.as_ref().map(Vec::len)),
            "nothing on a node sets outside conditions; use a readinessProbe",
        ),
        (
            "spec.resourceClaims",
            non_empty(spec.resource_claims.as_ref().map(Vec::len)),
            "dynamic resource allocation comes with the cluster",
        ),
        (
            "spec.resources",
            spec.resources.is_some(),
            "give each container its own requests and limits",
        ),
        (
            "spec.runtimeClassName",
            spec.runtime_class_name.is_some(),
            "every pod runs in Keelson's own runtime",
        ),
        (
            "spec.schedulingGates",
            non_empty(spec.scheduling_gates.as_ref().map(Vec::len)),
            "a gated pod would never start here",
        ),
        (
            "spec.imagePullSecrets",
            non_empty(spec.image_pull_secrets.as_ref().map(Vec::len)),
            "registry credentials go in the machine config's registries.auth",
        ),
        (
            "spec.os",
            spec.os.as_ref().is_some_and(|os| os.name != "linux"),
            "this node runs Linux pods",
        ),
        (
            "spec.securityContext.fsGroup",
            pod_context.fs_group.is_some(),
            "chown the volume's files from an init container",
        ),
        (
            "spec.securityContext.supplementalGroups",
            non_empty(pod_context.supplemental_groups.as_ref().map(Vec::len)),
            "give the user its groups in the image's /etc/group",
        ),
        (
            "spec.securityContext.sysctls",
            non_empty(pod_context.sysctls.as_ref().map(Vec::len)),
            "namespaced sysctls are not settable yet",
        ),
        (
            "spec.securityContext.seLinuxOptions",
            pod_context.se_linux_options.is_some(),
            "this node has no SELinux",
        ),
        (
            "spec.securityContext.windowsOptions",
            pod_context.windows_options.is_some(),
            "this node runs Linux pods",
        ),
    ];
    for (field, present, instead) in unsupported {
        if present {
            return Err(format!(
                "pod {name}: {field} is not supported on this node: {instead}"
            ));
        }
    }
    if spec.host_users == Some(false) && spec.host_network == Some(true) {
        return Err(format!(
            "pod {name}: spec.hostUsers: false cannot be combined with spec.hostNetwork: true; \
             a pod's own user namespace needs its own network namespace"
        ));
    }
    if spec.containers.is_empty() {
        return Err(format!(
            "pod {name}: spec.containers must have at least one container"
        ));
    }
    let policy = spec
        .restart_policy
        .get_or_insert_with(|| "Always".to_owned());
    restart_policy_named(policy).map_err(|error| format!("pod {name}: {error}"))?;
    spec.termination_grace_period_seconds
        .get_or_insert(DEFAULT_GRACE_SECONDS);
    if spec
        .termination_grace_period_seconds
        .is_some_and(|seconds| seconds < 0)
    {
        return Err(format!(
            "pod {name}: spec.terminationGracePeriodSeconds must not be negative"
        ));
    }
    let pod_profile = spec
        .security_context
        .as_ref()
        .and_then(|context| context.seccomp_profile.clone());
    let mut seen = std::collections::BTreeMap::new();
    let init = spec.init_containers.iter_mut().flatten();
    let init = init
        .enumerate()
        .map(|(index, container)| (format!("spec.initContainers[{index}]"), container));
    let app = spec
        .containers
        .iter_mut()
        .enumerate()
        .map(|(index, container)| (format!("spec.containers[{index}]"), container));
    for (field, container) in init.chain(app) {
        let is_init = field.starts_with("spec.initContainers");
        admit_container(container, &field, is_init, pod_profile.as_ref())
            .map_err(|error| format!("pod {name}: {error}"))?;
        if let Some(first) = seen.insert(container.name.clone(), field.clone()) {
            return Err(format!(
                "pod {name}: {field}.name: Duplicate value {:?} (also {first}.name); \
                 every container of a pod, init containers included, needs a name of its own",
                container.name
            ));
        }
    }
    crate::volumes::check(&pod).map_err(|error| format!("pod {name}: {error}"))?;
    crate::dns::check(&pod).map_err(|error| format!("pod {name}: {error}"))?;
    crate::network::check_ports(&pod).map_err(|error| format!("pod {name}: {error}"))?;
    for (field, container) in fields(&pod) {
        crate::downward::check_env(&pod, container)
            .map_err(|error| format!("pod {name}: {field}.{error}"))?;
    }
    pod.metadata.uid = Some(uid.to_owned());
    pod.metadata.creation_timestamp = Some(now);
    pod.status = None;
    Ok(pod)
}

/// Checks one container at `field` (`spec.containers[1]`), filling in its pull policy.
fn admit_container(
    container: &mut Container,
    field: &str,
    is_init: bool,
    pod_profile: Option<&k8s_openapi::api::core::v1::SeccompProfile>,
) -> Result<(), String> {
    check_name(&format!("{field}.name"), &container.name)?;
    if container
        .image
        .as_deref()
        .unwrap_or_default()
        .trim()
        .is_empty()
    {
        return Err(format!("{field}.image is required"));
    }
    let latest = container.image.as_deref().is_some_and(|image| {
        let last = image.rsplit('/').next().unwrap_or(image);
        !last.contains(':') && !image.contains('@') || last.ends_with(":latest")
    });
    container
        .image_pull_policy
        .get_or_insert_with(|| if latest { "Always" } else { "IfNotPresent" }.to_owned());
    if let Some(policy) = &container.image_pull_policy {
        if !matches!(policy.as_str(), "Always" | "IfNotPresent" | "Never") {
            return Err(format!(
                "{field}.imagePullPolicy {policy:?} is not Always, IfNotPresent or Never"
            ));
        }
    }
    match (is_init, container.restart_policy.as_deref()) {
        (_, None) | (true, Some("Always")) => {}
        (true, Some(other)) => {
            return Err(format!(
                "{field}.restartPolicy {other:?}: an init container takes only \"Always\" (a sidecar)"
            ))
        }
        (false, Some(_)) => {
            return Err(format!(
                "{field}.restartPolicy: only init containers take one (the pod's spec.restartPolicy applies)"
            ))
        }
    }
    resources_of(container).map_err(|error| format!("{field}.{error}"))?;
    let has_probes = [
        &container.startup_probe,
        &container.liveness_probe,
        &container.readiness_probe,
    ]
    .iter()
    .any(|probe| probe.is_some());
    if is_init && container.restart_policy.as_deref() != Some("Always") && has_probes {
        return Err(format!(
            "{field}: an init container takes no probes (only a sidecar, restartPolicy: Always, does)"
        ));
    }
    crate::probes::probes_of(container).map_err(|error| format!("{field}.{error}"))?;
    crate::hooks::check(container).map_err(|error| format!("{field}.{error}"))?;
    capabilities_of(container).map_err(|error| format!("{field}.securityContext.{error}"))?;
    let profiles = [
        container
            .security_context
            .as_ref()
            .and_then(|context| context.seccomp_profile.as_ref()),
        pod_profile,
    ];
    for profile in profiles.into_iter().flatten() {
        if !matches!(profile.type_.as_str(), "RuntimeDefault" | "Unconfined") {
            return Err(format!(
                "{field}: seccompProfile.type {:?} is not supported: use RuntimeDefault or Unconfined",
                profile.type_
            ));
        }
    }
    let context = container.security_context.clone().unwrap_or_default();
    let non_empty = |list: Option<usize>| list.is_some_and(|length| length > 0);
    let unsupported = [
        (
            "securityContext.privileged",
            context.privileged == Some(true),
            "add the capabilities it needs (securityContext.capabilities.add)",
        ),
        (
            "securityContext.procMount",
            context
                .proc_mount
                .as_deref()
                .is_some_and(|mount| mount != "Default"),
            "/proc is always masked as runc masks it",
        ),
        (
            "securityContext.seLinuxOptions",
            context.se_linux_options.is_some(),
            "this node has no SELinux",
        ),
        (
            "securityContext.windowsOptions",
            context.windows_options.is_some(),
            "this node runs Linux pods",
        ),
        (
            "envFrom",
            non_empty(container.env_from.as_ref().map(Vec::len)),
            "ConfigMaps and Secrets come with the cluster; list env entries",
        ),
        (
            "volumeDevices",
            non_empty(container.volume_devices.as_ref().map(Vec::len)),
            "block volumes come with the cluster",
        ),
        (
            "resources.claims",
            container
                .resources
                .as_ref()
                .is_some_and(|resources| non_empty(resources.claims.as_ref().map(Vec::len))),
            "dynamic resource allocation comes with the cluster",
        ),
    ];
    for (part, present, instead) in unsupported {
        if present {
            return Err(format!(
                "{field}.{part} is not supported on this node: {instead}"
            ));
        }
    }
    Ok(())
}

/// The pod's containers as its lifecycle takes them: init containers (sidecars among
/// them) in order, then app containers.
pub fn members(pod: &Pod) -> Vec<(&Container, Role)> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let init = spec.init_containers.iter().flatten().map(|container| {
        let sidecar = container.restart_policy.as_deref() == Some("Always");
        (container, if sidecar { Role::Sidecar } else { Role::Init })
    });
    let app = spec
        .containers
        .iter()
        .map(|container| (container, Role::App));
    init.chain(app).collect()
}

/// Every container with its field path (`spec.initContainers[0]`, `spec.containers[1]`).
pub fn fields(pod: &Pod) -> Vec<(String, &Container)> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let init = spec.init_containers.iter().flatten().enumerate();
    let init = init.map(|(index, container)| (format!("spec.initContainers[{index}]"), container));
    let app = spec.containers.iter().enumerate();
    let app = app.map(|(index, container)| (format!("spec.containers[{index}]"), container));
    init.chain(app).collect()
}

/// The container named `name`, init containers included.
pub fn container_named<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    members(pod)
        .into_iter()
        .map(|(container, _)| container)
        .find(|container| container.name == name)
}

/// The container that `logs` and `exec` mean when none is named: the first app container
/// (as kubectl defaults to it).
pub fn default_container(pod: &Pod) -> Option<&Container> {
    pod.spec.as_ref().and_then(|spec| spec.containers.first())
}

/// The pod's restart policy (admitted pods have one).
pub fn restart_policy(pod: &Pod) -> RestartPolicy {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.restart_policy.as_deref())
        .and_then(|policy| restart_policy_named(policy).ok())
        .unwrap_or(RestartPolicy::Always)
}

fn restart_policy_named(policy: &str) -> Result<RestartPolicy, String> {
    match policy {
        "Always" => Ok(RestartPolicy::Always),
        "OnFailure" => Ok(RestartPolicy::OnFailure),
        "Never" => Ok(RestartPolicy::Never),
        other => Err(format!(
            "spec.restartPolicy {other:?} is not Always, OnFailure or Never"
        )),
    }
}

/// Seconds between SIGTERM and SIGKILL.
pub fn grace_seconds(pod: &Pod) -> u64 {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.termination_grace_period_seconds)
        .unwrap_or(DEFAULT_GRACE_SECONDS)
        .max(0) as u64
}

/// The container's CPU and memory (limits, and the CPU request for the weight).
pub fn resources_of(container: &Container) -> Result<Resources, String> {
    let requirements = container.resources.clone().unwrap_or_default();
    let quantity = |map: &Option<
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
                    key: &str| {
        map.as_ref()
            .and_then(|map| map.get(key))
            .map(|quantity| quantity.0.clone())
    };
    let cpu = |text: Option<String>, field: &str| {
        text.map(|text| {
            resources::cpu_millis(&text).map_err(|error| format!("resources.{field}.cpu: {error}"))
        })
        .transpose()
    };
    let memory = |text: Option<String>, field: &str| {
        text.map(|text| {
            resources::memory_bytes(&text)
                .map_err(|error| format!("resources.{field}.memory: {error}"))
        })
        .transpose()
    };
    let cpu_limit = cpu(quantity(&requirements.limits, "cpu"), "limits")?;
    Ok(Resources {
        cpu_limit_millis: cpu_limit,
        // As Kubernetes defaults it: a request left out equals the limit.
        cpu_request_millis: cpu(quantity(&requirements.requests, "cpu"), "requests")?.or(cpu_limit),
        memory_limit_bytes: memory(quantity(&requirements.limits, "memory"), "limits")?,
        pids_limit: None,
    })
}

/// The container's memory request in bytes, as Kubernetes defaults it (the limit when
/// only a limit is set; 0 when neither is, or when it cannot be read).
pub fn memory_request(container: &Container) -> u64 {
    let requirements = container.resources.clone().unwrap_or_default();
    [requirements.requests, requirements.limits]
        .iter()
        .find_map(|map| map.as_ref()?.get("memory"))
        .and_then(|quantity| resources::memory_bytes(&quantity.0).ok())
        .unwrap_or(0)
}

/// `no_new_privs`: set when the container says `allowPrivilegeEscalation: false`.
pub fn no_new_privileges(container: &Container) -> bool {
    container
        .security_context
        .as_ref()
        .and_then(|context| context.allow_privilege_escalation)
        == Some(false)
}

/// The seccomp profile: the runtime's default unless the container (or, failing that, the
/// pod) asks for `Unconfined`. (`Localhost` profiles are refused at admission.)
pub fn seccomp_profile(pod: &Pod, container: &Container) -> SeccompProfile {
    let of_container = container
        .security_context
        .as_ref()
        .and_then(|context| context.seccomp_profile.as_ref());
    let of_pod = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.security_context.as_ref())
        .and_then(|context| context.seccomp_profile.as_ref());
    match of_container
        .or(of_pod)
        .map(|profile| profile.type_.as_str())
    {
        Some("Unconfined") => SeccompProfile::Unconfined,
        _ => SeccompProfile::RuntimeDefault,
    }
}

/// The capabilities the container keeps: the defaults with its `securityContext`'s
/// `capabilities.add` and `drop`.
pub fn capabilities_of(container: &Container) -> Result<Vec<String>, String> {
    let asked = container
        .security_context
        .as_ref()
        .and_then(|context| context.capabilities.clone())
        .unwrap_or_default();
    keelson_runtime::security::capabilities(
        &asked.add.unwrap_or_default(),
        &asked.drop.unwrap_or_default(),
    )
}

/// `readOnlyRootFilesystem`.
pub fn read_only_root(container: &Container) -> bool {
    container
        .security_context
        .as_ref()
        .and_then(|context| context.read_only_root_filesystem)
        == Some(true)
}

/// `runAsNonRoot`, the container's, else the pod's.
pub fn run_as_non_root(pod: &Pod, container: &Container) -> bool {
    let pod_context = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.security_context.as_ref());
    container
        .security_context
        .as_ref()
        .and_then(|context| context.run_as_non_root)
        .or(pod_context.and_then(|context| context.run_as_non_root))
        == Some(true)
}

/// What the pod asks of the container's process, with its environment resolved
/// ([`crate::downward::env`]): `runAsUser` and `runAsGroup` are the container's, else
/// the pod's.
pub fn request(pod: &Pod, container: &Container, env: Vec<(String, String)>) -> ContainerRequest {
    let own = container.security_context.as_ref();
    let pods = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.security_context.as_ref());
    let user = own
        .and_then(|context| context.run_as_user)
        .or(pods.and_then(|context| context.run_as_user));
    let group = own
        .and_then(|context| context.run_as_group)
        .or(pods.and_then(|context| context.run_as_group));
    let run_as = user.map(|uid| (uid as u32, group.map(|gid| gid as u32)));
    ContainerRequest {
        command: container.command.clone(),
        args: container.args.clone(),
        env,
        working_dir: container.working_dir.clone(),
        run_as,
    }
}

/// Kubernetes names: lowercase letters, digits and '-', starting and ending with a letter
/// or digit, at most 63 characters (pod names become hostnames).
fn check_name(field: &str, name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{field} {name:?} is not a valid name: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters"
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap())
    }

    #[test]
    fn unknown_fields_are_refused_by_their_paths_and_known_ones_pass() {
        let good = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "labels": {"app": "web"}, "creationTimestamp": null},
            "spec": {
                "hostNetwork": false, "hostUsers": false, "restartPolicy": "Never",
                "containers": [{
                    "name": "web", "image": "busybox", "command": ["sh"], "env": [],
                    "ports": [{"containerPort": 80}],
                    "resources": {"limits": {"memory": "64Mi", "cpu": 1}},
                    "securityContext": {"runAsUser": 1000, "seccompProfile": {"type": "Unconfined"}}
                }]
            }
        });
        let parsed = parse_strict(&good.to_string()).unwrap();
        assert_eq!(parsed.metadata.name.as_deref(), Some("web"));
        let mut typo = good.clone();
        typo["spec"]["containers"][0]["imagee"] = "busybox".into();
        typo["spec"]["containers"][0]["securityContext"]["runAsUsr"] = 5.into();
        typo["spec"]["nodeSelecter"] = serde_json::json!({});
        let error = parse_strict(&typo.to_string()).unwrap_err();
        assert_eq!(
            error,
            "pod web: unknown fields \"spec.containers[0].imagee\", \
             \"spec.containers[0].securityContext.runAsUsr\", \"spec.nodeSelecter\" (a typo, or a \
             field this node's Kubernetes API level, 1.33, does not have); nothing was created"
        );
        assert!(parse_strict("{").unwrap_err().contains("not JSON"));
        assert!(parse_strict(r#"{"spec": {"containers": 3}}"#)
            .unwrap_err()
            .contains("not a v1/Pod"));
    }

    #[test]
    fn an_admitted_pod_has_kubernetes_defaults() {
        let admitted = admit(
            pod(serde_json::json!({
                "metadata": {"name": "web"},
                "spec": {"containers": [{"name": "web", "image": "busybox"}]}
            })),
            "uid-1",
            now(),
        )
        .unwrap();
        assert_eq!(admitted.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(admitted.metadata.uid.as_deref(), Some("uid-1"));
        let spec = admitted.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        // An image without a tag is :latest, which Kubernetes always pulls.
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("Always")
        );
        let tagged = admit(
            pod(serde_json::json!({
                "metadata": {"name": "web"},
                "spec": {"containers": [{"name": "web", "image": "localhost:5000/busybox:1.36"}]}
            })),
            "uid-1",
            now(),
        )
        .unwrap();
        assert_eq!(
            tagged.spec.unwrap().containers[0]
                .image_pull_policy
                .as_deref(),
            Some("IfNotPresent")
        );
    }

    #[test]
    fn pods_this_node_cannot_run_are_refused_naming_the_field() {
        let cases = [
            (
                serde_json::json!({"metadata": {"name": "Web"}, "spec": {"containers": [{"name": "a", "image": "x"}]}}),
                "metadata.name \"Web\" is not a valid name",
            ),
            (
                serde_json::json!({"metadata": {"name": "web"}, "spec": {"containers": []}}),
                "spec.containers must have at least one container",
            ),
            (
                serde_json::json!({"metadata": {"name": "web"}, "spec": {"restartPolicy": "Sometimes", "containers": [{"name": "a", "image": "x"}]}}),
                "\"Sometimes\" is not Always, OnFailure or Never",
            ),
            (
                serde_json::json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "a"}]}}),
                "image is required",
            ),
            (
                serde_json::json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "a", "image": "x", "resources": {"limits": {"memory": "lots"}}}]}}),
                "resources.limits.memory",
            ),
            (
                serde_json::json!({"metadata": {"name": "web"}, "spec": {"volumes": [{"name": "v", "secret": {}}], "containers": [{"name": "a", "image": "x"}]}}),
                "pod web: spec.volumes[0] (v): secret volumes are not supported yet",
            ),
            (
                serde_json::json!({"metadata": {"name": "web"}, "spec": {
                    "initContainers": [{"name": "web", "image": "x"}],
                    "containers": [{"name": "a", "image": "x"}, {"name": "web", "image": "y"}]}}),
                "pod web: spec.containers[1].name: Duplicate value \"web\" (also spec.initContainers[0].name)",
            ),
            (
                serde_json::json!({"metadata": {"name": "web"}, "spec": {
                    "initContainers": [{"name": "i", "image": "x", "restartPolicy": "OnFailure"}],
                    "containers": [{"name": "a", "image": "x"}]}}),
                "spec.initContainers[0].restartPolicy \"OnFailure\": an init container takes only",
            ),
            (
                serde_json::json!({"metadata": {"name": "web"}, "spec": {
                    "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "x", "resources": {"requests": {"cpu": "lots"}}}]}}),
                "pod web: spec.containers[1].resources.requests.cpu",
            ),
            (
                serde_json::json!({"metadata": {"name": "web"}, "spec": {"hostPID": true,
                    "containers": [{"name": "a", "image": "x"}]}}),
                "pod web: spec.hostPID is not supported on this node: each container has a PID namespace of its own",
            ),
            (
                serde_json::json!({"metadata": {"name": "web"}, "spec": {
                    "containers": [{"name": "a", "image": "x", "securityContext": {"privileged": true}}]}}),
                "pod web: spec.containers[0].securityContext.privileged is not supported on this node: add the capabilities",
            ),
            (
                serde_json::json!({"metadata": {"name": "web"}, "spec": {
                    "containers": [{"name": "a", "image": "x", "securityContext": {"capabilities": {"add": ["FLY"]}}}]}}),
                "pod web: spec.containers[0].securityContext.capabilities.add: \"FLY\" is not a capability",
            ),
            (
                serde_json::json!({"metadata": {"name": "web"}, "spec": {"initContainers": [
                    {"name": "i", "image": "x", "readinessProbe": {"tcpSocket": {"port": 80}}}],
                    "containers": [{"name": "a", "image": "x"}]}}),
                "pod web: spec.initContainers[0]: an init container takes no probes (only a sidecar, restartPolicy: Always, does)",
            ),
        ];
        for (json, expected) in cases {
            let error = admit(pod(json), "u", now()).unwrap_err();
            assert!(
                error.contains(expected),
                "{error:?} does not say {expected:?}"
            );
        }
    }

    #[test]
    fn init_containers_sidecars_and_app_containers_keep_their_order_and_roles() {
        let admitted = admit(
            pod(serde_json::json!({
                "metadata": {"name": "web"},
                "spec": {
                    "initContainers": [
                        {"name": "setup", "image": "busybox:1"},
                        {"name": "proxy", "image": "busybox:1", "restartPolicy": "Always"}
                    ],
                    "containers": [{"name": "web", "image": "busybox:1"}, {"name": "log", "image": "busybox"}]
                }
            })),
            "u",
            now(),
        )
        .unwrap();
        let members: Vec<(&str, Role)> = members(&admitted)
            .into_iter()
            .map(|(container, role)| (container.name.as_str(), role))
            .collect();
        assert_eq!(
            members,
            [
                ("setup", Role::Init),
                ("proxy", Role::Sidecar),
                ("web", Role::App),
                ("log", Role::App)
            ]
        );
        assert_eq!(default_container(&admitted).unwrap().name, "web");
        assert_eq!(
            container_named(&admitted, "log")
                .unwrap()
                .image_pull_policy
                .as_deref(),
            Some("Always")
        );
        assert_eq!(
            container_named(&admitted, "setup")
                .unwrap()
                .image_pull_policy
                .as_deref(),
            Some("IfNotPresent")
        );
    }

    #[test]
    fn security_contexts_choose_no_new_privs_and_the_seccomp_profile() {
        let admitted = pod(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {
                "securityContext": {"seccompProfile": {"type": "Unconfined"}},
                "containers": [{"name": "a", "image": "x",
                                "securityContext": {"allowPrivilegeEscalation": false}}]}
        }));
        let container = default_container(&admitted).unwrap();
        assert!(no_new_privileges(container));
        assert_eq!(
            seccomp_profile(&admitted, container),
            SeccompProfile::Unconfined
        );
        let strict = pod(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {
                "securityContext": {"seccompProfile": {"type": "Unconfined"}},
                "containers": [{"name": "a", "image": "x",
                                "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}]}
        }));
        let container = default_container(&strict).unwrap();
        assert!(!no_new_privileges(container));
        assert_eq!(
            seccomp_profile(&strict, container),
            SeccompProfile::RuntimeDefault
        );
        let localhost = pod(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "a", "image": "x",
                "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}}]}
        }));
        let error = admit(localhost, "u", now()).unwrap_err();
        assert!(error.contains("\"Localhost\" is not supported"), "{error}");
    }

    #[test]
    fn limits_and_requests_become_runtime_resources() {
        let admitted = pod(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "a", "image": "x", "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}}]}
        }));
        let resources = resources_of(default_container(&admitted).unwrap()).unwrap();
        assert_eq!(resources.cpu_limit_millis, Some(500));
        assert_eq!(resources.cpu_request_millis, Some(500));
        assert_eq!(resources.memory_limit_bytes, Some(64 << 20));
    }
}
