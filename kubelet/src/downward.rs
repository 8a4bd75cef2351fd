//! The downward API: what a pod may learn of itself, as environment variables
//! (`env[].valueFrom.fieldRef`/`resourceFieldRef`) and as files (`downwardAPI` volumes).
//! Pure: the node's facts come in as [`NodeFacts`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, ResourceFieldSelector};
use keelson_runtime::resources;

/// What the node knows that a pod may ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's name (`spec.nodeName`).
    pub name: String,
    /// The node's address (`status.hostIP`).
    pub host_ip: Option<String>,
    /// The pod's address (`status.podIP`).
    pub pod_ip: Option<String>,
    /// What a container without a CPU limit may use: the node's CPUs, in millicores.
    pub cpu_millis: u64,
    /// What a container without a memory limit may use: the node's memory, in bytes.
    pub memory_bytes: u64,
}

/// The fields an environment variable may take (`fieldRef.fieldPath`).
pub const ENV_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "metadata.labels['KEY']",
    "metadata.annotations['KEY']",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

/// The fields a `downwardAPI` volume's file may take.
pub const FILE_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "metadata.labels",
    "metadata.annotations",
    "metadata.labels['KEY']",
    "metadata.annotations['KEY']",
];

/// Where a field may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// An environment variable.
    Env,
    /// A file of a `downwardAPI` volume.
    File,
}

/// The value of `field_path` for `pod`, or why it cannot be given.
pub fn field(pod: &Pod, field_path: &str, node: &NodeFacts, used: Use) -> Result<String, String> {
    let metadata = &pod.metadata;
    let keyed = |prefix: &str| {
        field_path
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix("['"))
            .and_then(|rest| rest.strip_suffix("']"))
    };
    let lookup = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|map| map.get(key))
            .cloned()
            .unwrap_or_default()
    };
    let value = match (field_path, used) {
        ("metadata.name", _) => metadata.name.clone().unwrap_or_default(),
        ("metadata.namespace", _) => metadata.namespace.clone().unwrap_or_default(),
        ("metadata.uid", _) => metadata.uid.clone().unwrap_or_default(),
        ("metadata.labels", Use::File) => pairs(&metadata.labels),
        ("metadata.annotations", Use::File) => pairs(&metadata.annotations),
        ("spec.nodeName", Use::Env) => node.name.clone(),
        ("spec.serviceAccountName", Use::Env) => pod
            .spec
            .as_ref()
            .and_then(|spec| spec.service_account_name.clone())
            .unwrap_or_default(),
        ("status.hostIP" | "status.hostIPs", Use::Env) => node.host_ip.clone().unwrap_or_default(),
        ("status.podIP" | "status.podIPs", Use::Env) => node.pod_ip.clone().unwrap_or_default(),
        _ => match (keyed("metadata.labels"), keyed("metadata.annotations")) {
            (Some(key), _) => lookup(&metadata.labels, key),
            (_, Some(key)) => lookup(&metadata.annotations, key),
            _ => {
                let supported = match used {
                    Use::Env => ENV_FIELDS,
                    Use::File => FILE_FIELDS,
                };
                return Err(format!(
                    "fieldPath {field_path:?} is not supported here: use one of {}",
                    supported.join(", ")
                ));
            }
        },
    };
    Ok(value)
}

/// `key="value"` lines, sorted by key, as the kubelet writes labels and annotations.
fn pairs(map: &Option<BTreeMap<String, String>>) -> String {
    map.iter()
        .flatten()
        .map(|(key, value)| format!("{key}={value:?}\n"))
        .collect()
}

/// The value of a `resourceFieldRef` for `container` (the one it names, else
/// `default_container`): the limit or request in units of its divisor, rounded up; a
/// limit the container does not set is the node's.
pub fn resource(
    pod: &Pod,
    selector: &ResourceFieldSelector,
    default_container: Option<&str>,
    node: &NodeFacts,
) -> Result<String, String> {
    let name = selector
        .container_name
        .as_deref()
        .filter(|name| !name.is_empty())
        .or(default_container)
        .ok_or("resourceFieldRef needs containerName in a volume")?;
    let container = crate::pod::container_named(pod, name)
        .ok_or_else(|| format!("resourceFieldRef names container {name}, which the pod lacks"))?;
    let requirements = container.resources.clone().unwrap_or_default();
    let (kind, key) = selector
        .resource
        .split_once('.')
        .ok_or_else(|| unsupported_resource(&selector.resource))?;
    let map = match kind {
        "limits" => requirements.limits.as_ref(),
        "requests" => requirements.requests.as_ref(),
        _ => return Err(unsupported_resource(&selector.resource)),
    };
    let given = map
        .and_then(|map| map.get(key))
        .map(|quantity| quantity.0.clone());
    // As Kubernetes: a request left out equals the limit; a limit left out is the node's.
    let given = given.or_else(|| {
        (kind == "requests")
            .then(|| {
                requirements
                    .limits
                    .as_ref()?
                    .get(key)
                    .map(|quantity| quantity.0.clone())
            })
            .flatten()
    });
    let divisor = selector
        .divisor
        .as_ref()
        .map(|quantity| quantity.0.as_str());
    let quotient = |amount: u64, divisor: u64| amount.div_ceil(divisor.max(1)).to_string();
    match key {
        "cpu" => {
            let millis = match given {
                Some(text) => resources::cpu_millis(&text).map_err(|error| error.to_string())?,
                None if kind == "limits" => node.cpu_millis,
                None => 0,
            };
            let divisor = resources::cpu_millis(divisor.unwrap_or("1"))
                .map_err(|error| format!("resourceFieldRef divisor: {error}"))?;
            Ok(quotient(millis, divisor))
        }
        "memory" | "ephemeral-storage" => {
            let bytes = match given {
                Some(text) => resources::memory_bytes(&text).map_err(|error| error.to_string())?,
                None if kind == "limits" && key == "memory" => node.memory_bytes,
                None => 0,
            };
            let divisor = resources::memory_bytes(divisor.unwrap_or("1"))
                .map_err(|error| format!("resourceFieldRef divisor: {error}"))?;
            Ok(quotient(bytes, divisor))
        }
        _ => Err(unsupported_resource(&selector.resource)),
    }
}

fn unsupported_resource(resource: &str) -> String {
    format!(
        "resourceFieldRef resource {resource:?} is not supported: use limits.cpu, limits.memory, \
         limits.ephemeral-storage, requests.cpu, requests.memory or requests.ephemeral-storage"
    )
}

/// The container's environment (`env`, in order) with every `valueFrom` resolved.
pub fn env(
    pod: &Pod,
    container: &Container,
    node: &NodeFacts,
) -> Result<Vec<(String, String)>, String> {
    container
        .env
        .iter()
        .flatten()
        .map(|variable| {
            Ok((
                variable.name.clone(),
                env_value(pod, container, variable, node)?,
            ))
        })
        .collect()
}

fn env_value(
    pod: &Pod,
    container: &Container,
    variable: &EnvVar,
    node: &NodeFacts,
) -> Result<String, String> {
    let Some(from) = &variable.value_from else {
        return Ok(variable.value.clone().unwrap_or_default());
    };
    let named = |error: String| format!("env {}: {error}", variable.name);
    if let Some(field_ref) = &from.field_ref {
        return field(pod, &field_ref.field_path, node, Use::Env).map_err(named);
    }
    if let Some(selector) = &from.resource_field_ref {
        return resource(pod, selector, Some(&container.name), node).map_err(named);
    }
    let source = if from.config_map_key_ref.is_some() {
        "configMapKeyRef"
    } else if from.secret_key_ref.is_some() {
        "secretKeyRef"
    } else {
        "this valueFrom"
    };
    Err(named(format!(
        "valueFrom.{source} is not supported yet (ConfigMaps and Secrets come with the cluster)"
    )))
}

/// Checks what admission can of a container's `env`: every `valueFrom` names a
/// supported field or resource.
pub fn check_env(pod: &Pod, container: &Container) -> Result<(), String> {
    env(pod, container, &NodeFacts::default()).map(|_| ())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1",
                         "labels": {"app": "web", "tier": "front"},
                         "annotations": {"note": "say \"hi\""}},
            "spec": {"containers": [{
                "name": "web", "image": "busybox",
                "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
                "env": [
                    {"name": "PLAIN", "value": "1"},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                    {"name": "CPU_M", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
                    {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory", "divisor": "1Mi"}}}
                ]
            }, {"name": "side", "image": "busybox"}]}
        }))
        .unwrap()
    }

    fn node() -> NodeFacts {
        NodeFacts {
            name: "node-1".into(),
            host_ip: Some("10.0.2.15".into()),
            pod_ip: None,
            cpu_millis: 2000,
            memory_bytes: 4 << 30,
        }
    }

    #[test]
    fn environment_variables_take_fields_and_resources() {
        let pod = pod();
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let env = env(&pod, container, &node()).unwrap();
        let values: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            values,
            [
                ("PLAIN", "1"),
                ("POD", "web"),
                ("APP", "web"),
                ("NODE", "node-1"),
                ("HOST", "10.0.2.15"),
                // 500m rounds up to one CPU, as the kubelet rounds.
                ("CPU", "1"),
                ("CPU_M", "500"),
                // The request left out is the limit.
                ("MEM_MI", "64")
            ]
        );
    }

    #[test]
    fn files_take_whole_label_maps_and_limits_default_to_the_node() {
        let pod = pod();
        assert_eq!(
            field(&pod, "metadata.labels", &node(), Use::File).unwrap(),
            "app=\"web\"\ntier=\"front\"\n"
        );
        assert_eq!(
            field(&pod, "metadata.annotations", &node(), Use::File).unwrap(),
            "note=\"say \\\"hi\\\"\"\n"
        );
        let error = field(&pod, "spec.nodeName", &node(), Use::File).unwrap_err();
        assert!(
            error.starts_with("fieldPath \"spec.nodeName\" is not supported here"),
            "{error}"
        );
        let selector = ResourceFieldSelector {
            container_name: Some("side".into()),
            resource: "limits.memory".into(),
            divisor: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                "1Mi".into(),
            )),
        };
        assert_eq!(resource(&pod, &selector, None, &node()).unwrap(), "4096");
        let selector = ResourceFieldSelector {
            resource: "limits.gpu".into(),
            ..selector
        };
        assert!(resource(&pod, &selector, None, &node())
            .unwrap_err()
            .contains("\"limits.gpu\" is not supported"));
    }

    #[test]
    fn secrets_and_config_maps_are_refused_by_name() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "web", "image": "busybox", "env": [
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
            ]}]}
        }))
        .unwrap();
        let container = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            check_env(&pod, container).unwrap_err(),
            "env TOKEN: valueFrom.secretKeyRef is not supported yet (ConfigMaps and Secrets come with the cluster)"
        );
    }
}
