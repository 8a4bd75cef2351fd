//! What the kubelet decides of a pod's network: whether it has one of its own, its
//! `hostPort`s (checked at admission, unique on the node) and the NAT they need. Pure;
//! the addresses come from `keelson_net::ipam`, the links from `keelson_net::podnet`.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;
use keelson_net::nat::{PortMapping, Protocol};

/// True unless the pod uses the node's network (`hostNetwork: true`).
pub fn has_own_network(pod: &Pod) -> bool {
    !pod.spec
        .as_ref()
        .and_then(|spec| spec.host_network)
        .unwrap_or(false)
}

/// A `hostPort` of the pod: protocol, the node's port, the pod's port.
pub type HostPort = (Protocol, u16, u16);

/// The pod's `hostPort`s.
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    crate::pod::members(pod)
        .into_iter()
        .flat_map(|(container, _)| container.ports.iter().flatten())
        .filter_map(|port| {
            let host_port = u16::try_from(port.host_port?)
                .ok()
                .filter(|port| *port > 0)?;
            let protocol = Protocol::parse(port.protocol.as_deref().unwrap_or("TCP"))?;
            Some((
                protocol,
                host_port,
                u16::try_from(port.container_port).ok()?,
            ))
        })
        .collect()
}

/// Checks every container's `ports`, naming the field: ports in 1-65535, TCP or UDP,
/// and with `hostNetwork` a `hostPort` equal to its `containerPort` (the API server's
/// rule: there is no translation on the node's own network).
pub fn check_ports(pod: &Pod) -> Result<(), String> {
    let own_network = has_own_network(pod);
    for (field, container) in crate::pod::fields(pod) {
        for (index, port) in container.ports.iter().flatten().enumerate() {
            let field = format!("{field}.ports[{index}]");
            if !(1..=65535).contains(&port.container_port) {
                return Err(format!(
                    "{field}.containerPort {} is not a port (1-65535)",
                    port.container_port
                ));
            }
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            if Protocol::parse(protocol).is_none() {
                return Err(format!(
                    "{field}.protocol {protocol:?} is not supported: use TCP or UDP"
                ));
            }
            match port.host_port {
                None | Some(0) => {}
                Some(host_port) if !(1..=65535).contains(&host_port) => {
                    return Err(format!(
                        "{field}.hostPort {host_port} is not a port (1-65535)"
                    ))
                }
                Some(host_port) if !own_network && host_port != port.container_port => {
                    return Err(format!(
                        "{field}.hostPort {host_port} must equal containerPort {} with hostNetwork",
                        port.container_port
                    ))
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Why `pod` cannot have its `hostPort`s: one is another pod's already.
pub fn port_conflict<'a>(pod: &Pod, others: impl IntoIterator<Item = &'a Pod>) -> Option<String> {
    let wanted = host_ports(pod);
    for other in others {
        for (protocol, host_port, _) in host_ports(other) {
            if wanted
                .iter()
                .any(|(p, port, _)| *p == protocol && *port == host_port)
            {
                return Some(format!(
                    "hostPort {host_port}/{} is taken by pod {}/{}; delete it or choose another port",
                    protocol.name(),
                    other.metadata.namespace.as_deref().unwrap_or_default(),
                    other.metadata.name.as_deref().unwrap_or_default()
                ));
            }
        }
    }
    None
}

/// The DNATs of a pod at `address`.
pub fn port_mappings(pod: &Pod, address: Ipv4Addr) -> Vec<PortMapping> {
    if !has_own_network(pod) {
        return Vec::new();
    }
    host_ports(pod)
        .into_iter()
        .map(|(protocol, host_port, pod_port)| PortMapping {
            protocol,
            host_port,
            pod_ip: address,
            pod_port,
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pod(name: &str, spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            serde_json::json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec}),
        )
        .unwrap()
    }

    #[test]
    fn host_ports_become_dnats_and_two_pods_cannot_share_one() {
        let web = pod(
            "web",
            serde_json::json!({"containers": [{"name": "a", "image": "x",
            "ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 53, "hostPort": 5353, "protocol": "UDP"},
                      {"containerPort": 9000}]}]}),
        );
        check_ports(&web).unwrap();
        let address = Ipv4Addr::new(10, 244, 0, 4);
        assert_eq!(
            port_mappings(&web, address),
            [
                PortMapping {
                    protocol: Protocol::Tcp,
                    host_port: 8080,
                    pod_ip: address,
                    pod_port: 80
                },
                PortMapping {
                    protocol: Protocol::Udp,
                    host_port: 5353,
                    pod_ip: address,
                    pod_port: 53
                },
            ]
        );
        let rival = pod(
            "rival",
            serde_json::json!({"containers": [{"name": "b", "image": "x",
            "ports": [{"containerPort": 81, "hostPort": 8080}]}]}),
        );
        assert_eq!(
            port_conflict(&rival, [&web]).unwrap(),
            "hostPort 8080/TCP is taken by pod default/web; delete it or choose another port"
        );
        let udp_only = pod(
            "dns",
            serde_json::json!({"containers": [{"name": "b", "image": "x",
            "ports": [{"containerPort": 53, "hostPort": 8080, "protocol": "UDP"}]}]}),
        );
        assert_eq!(
            port_conflict(&udp_only, [&web]),
            None,
            "another protocol is another port"
        );
    }

    #[test]
    fn bad_ports_are_refused_by_field() {
        let cases = [
            (
                serde_json::json!({"containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 0}]}]}),
                "spec.containers[0].ports[0].containerPort 0 is not a port",
            ),
            (
                serde_json::json!({"containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 80, "protocol": "SCTP"}]}]}),
                "spec.containers[0].ports[0].protocol \"SCTP\" is not supported",
            ),
            (
                serde_json::json!({"hostNetwork": true, "containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
                "hostPort 8080 must equal containerPort 80 with hostNetwork",
            ),
        ];
        for (spec, expected) in cases {
            let error = check_ports(&pod("p", spec)).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }
}
