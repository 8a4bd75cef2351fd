//! A pod's `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname`, as the kubelet writes
//! them. Pure.
//!
//! `dnsPolicy`: `Default` takes the node's resolver; `ClusterFirst` (Kubernetes' default)
//! and `ClusterFirstWithHostNet` would put the cluster's DNS first, and until the cluster
//! brings one they fall back to the node's, as the kubelet does without `clusterDNS`;
//! `None` takes only `dnsConfig`. `dnsConfig` then adds nameservers (three at most, as
//! the resolver reads), search domains and options (an option of the same name replaces
//! the node's).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

/// The most nameservers the C library's resolver reads.
pub const MAX_NAMESERVERS: usize = 3;

/// Checks `dnsPolicy` and `dnsConfig`, naming the field.
pub fn check(pod: &Pod) -> Result<(), String> {
    let Some(spec) = &pod.spec else {
        return Ok(());
    };
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    if !matches!(
        policy,
        "ClusterFirst" | "ClusterFirstWithHostNet" | "Default" | "None"
    ) {
        return Err(format!(
            "spec.dnsPolicy {policy:?} is not ClusterFirst, ClusterFirstWithHostNet, Default or None"
        ));
    }
    let config = spec.dns_config.clone().unwrap_or_default();
    let nameservers = config.nameservers.unwrap_or_default();
    if policy == "None" && nameservers.is_empty() {
        return Err(
            "spec.dnsConfig.nameservers: dnsPolicy None needs at least one nameserver".into(),
        );
    }
    if nameservers.len() > MAX_NAMESERVERS {
        return Err(format!(
            "spec.dnsConfig.nameservers: {} given, at most {MAX_NAMESERVERS}",
            nameservers.len()
        ));
    }
    for (index, server) in nameservers.iter().enumerate() {
        if server.parse::<IpAddr>().is_err() {
            return Err(format!(
                "spec.dnsConfig.nameservers[{index}]: {server:?} is not an IP address"
            ));
        }
    }
    Ok(())
}

/// The pod's `/etc/resolv.conf`, from the node's (`node`, the file's text).
pub fn resolv_conf(pod: &Pod, node: &str) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let (mut nameservers, mut searches, mut options) = if policy == "None" {
        (Vec::new(), Vec::new(), Vec::new())
    } else {
        read(node)
    };
    let config = spec.dns_config.unwrap_or_default();
    for server in config.nameservers.into_iter().flatten() {
        if !nameservers.contains(&server) {
            nameservers.push(server);
        }
    }
    nameservers.truncate(MAX_NAMESERVERS);
    for search in config.searches.into_iter().flatten() {
        if !searches.contains(&search) {
            searches.push(search);
        }
    }
    for option in config.options.into_iter().flatten() {
        let text = match &option.value {
            Some(value) => format!("{}:{value}", option.name.clone().unwrap_or_default()),
            None => option.name.clone().unwrap_or_default(),
        };
        let name = option.name.unwrap_or_default();
        options.retain(|existing: &String| existing.split(':').next() != Some(name.as_str()));
        options.push(text);
    }
    let mut text = String::new();
    for server in &nameservers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !searches.is_empty() {
        text.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !options.is_empty() {
        text.push_str(&format!("options {}\n", options.join(" ")));
    }
    text
}

/// Nameservers, search domains and options of a resolv.conf.
fn read(text: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut nameservers, mut searches, mut options) = (Vec::new(), Vec::new(), Vec::new());
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => nameservers.extend(words.next().map(str::to_owned)),
            // The last search (or domain) line wins, as the resolver reads it.
            Some("search" | "domain") => searches = words.map(str::to_owned).collect(),
            Some("options") => options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    (nameservers, searches, options)
}

/// The pod's hostname: `spec.hostname`, else its name.
pub fn hostname(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.hostname.clone())
        .filter(|hostname| !hostname.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default()
}

/// The pod's `/etc/hosts`: localhost, its hostname on its address, and `hostAliases`.
pub fn hosts(pod: &Pod, address: &str) -> String {
    let name = hostname(pod);
    let mut text = format!(
        "# Written by keelsond for pod {name}.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{name}\n"
    );
    let aliases = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.host_aliases.clone())
        .unwrap_or_default();
    for alias in aliases {
        let names = alias.hostnames.unwrap_or_default();
        if !names.is_empty() {
            text.push_str(&format!("{}\t{}\n", alias.ip, names.join(" ")));
        }
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "web"}, "spec": spec}))
            .unwrap()
    }

    const NODE: &str = "# Written by keelsond.\nnameserver 10.0.2.3\nsearch example.internal\noptions ndots:1 edns0\n";

    #[test]
    fn pods_take_the_nodes_resolver_and_their_own_config() {
        let plain = pod(serde_json::json!({"containers": []}));
        assert_eq!(
            resolv_conf(&plain, NODE),
            "nameserver 10.0.2.3\nsearch example.internal\noptions ndots:1 edns0\n"
        );
        let configured = pod(serde_json::json!({
            "dnsPolicy": "Default",
            "dnsConfig": {"nameservers": ["1.1.1.1", "10.0.2.3"], "searches": ["svc.local"],
                          "options": [{"name": "ndots", "value": "5"}, {"name": "rotate"}]},
            "containers": []
        }));
        assert_eq!(
            resolv_conf(&configured, NODE),
            "nameserver 10.0.2.3\nnameserver 1.1.1.1\nsearch example.internal svc.local\noptions edns0 ndots:5 rotate\n"
        );
        let none = pod(serde_json::json!({"dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["9.9.9.9"]}, "containers": []}));
        assert_eq!(resolv_conf(&none, NODE), "nameserver 9.9.9.9\n");
    }

    #[test]
    fn dns_settings_are_checked_by_field() {
        let cases = [
            (
                serde_json::json!({"dnsPolicy": "Cluster", "containers": []}),
                "spec.dnsPolicy \"Cluster\"",
            ),
            (
                serde_json::json!({"dnsPolicy": "None", "containers": []}),
                "dnsPolicy None needs at least one nameserver",
            ),
            (
                serde_json::json!({"dnsConfig": {"nameservers": ["dns.example"]}, "containers": []}),
                "spec.dnsConfig.nameservers[0]: \"dns.example\" is not an IP address",
            ),
        ];
        for (spec, expected) in cases {
            let error = check(&pod(spec)).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn hosts_name_the_pod_on_its_address_with_its_aliases() {
        let pod = pod(serde_json::json!({
            "hostAliases": [{"ip": "10.0.0.9", "hostnames": ["db", "db.local"]}],
            "containers": []
        }));
        assert_eq!(
            hosts(&pod, "10.244.0.5"),
            "# Written by keelsond for pod web.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.244.0.5\tweb\n10.0.0.9\tdb db.local\n"
        );
    }
}
