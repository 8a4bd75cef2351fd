//! `get nodes`: the cluster's `v1/Node` objects, from the leader's store through whichever
//! node answers first.

use keelson_api::cluster::{DeleteNodeRequest, NodesRequest};
use serde_json::Value;

use crate::cli::GetArgs;
use crate::cluster::call;
use crate::output::{age, Format, Table};
use crate::pods::{print_list, print_objects, seconds_since};
use crate::session::Session;

/// Whether `get`'s resource names nodes.
pub fn is_nodes(resource: &str) -> bool {
    matches!(resource, "nodes" | "node" | "no")
}

/// `keelctl get nodes [NAME] [-o wide|json|yaml]`.
pub async fn get(session: &Session, arguments: &GetArgs) -> anyhow::Result<bool> {
    let mut problems = Vec::new();
    let mut nodes = None;
    // Every node gives the leader's answer: the first that answers is enough.
    for node in &session.nodes {
        let answer = call(session, node, |mut client| async move {
            client.nodes(NodesRequest {}).await
        })
        .await;
        match answer {
            Ok(answer) => {
                nodes = Some(answer);
                break;
            }
            Err(problem) => problems.push(format!("{node}: {problem}")),
        }
    }
    let Some(answer) = nodes else {
        for problem in problems {
            eprintln!("error: {problem}");
        }
        return Ok(false);
    };
    let mut objects = Vec::new();
    for text in &answer.nodes {
        objects.push(serde_json::from_str::<Value>(text)?);
    }
    if let Some(name) = &arguments.name {
        objects.retain(|node| node["metadata"]["name"] == name.as_str());
        if objects.is_empty() {
            eprintln!("Error from server (NotFound): nodes \"{name}\" not found");
            return Ok(false);
        }
    }
    match session.format {
        Format::Table | Format::Wide => {
            if objects.is_empty() {
                eprintln!("No resources found");
            } else {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                print!(
                    "{}",
                    node_table(&objects, session.format == Format::Wide, now)
                );
            }
        }
        format if arguments.name.is_some() => print_objects(format, &objects)?,
        format => print_list(format, objects)?,
    }
    Ok(true)
}

/// `keelctl delete node NAME…`: through the first node given (every node passes writes to
/// the leader); prints kubectl's line for each.
pub async fn delete(session: &Session, names: &[String]) -> anyhow::Result<bool> {
    let node = session
        .nodes
        .first()
        .ok_or_else(|| anyhow::anyhow!("no node to ask"))?;
    let mut all_good = true;
    for name in names {
        let request = DeleteNodeRequest { name: name.clone() };
        match call(session, node, |mut client| async move {
            client.delete_node(request).await
        })
        .await
        {
            Ok(answer) => {
                if answer.freed_pod_cidr.is_empty() {
                    println!("node \"{name}\" deleted");
                } else {
                    println!(
                        "node \"{name}\" deleted (pod CIDR {} is free)",
                        answer.freed_pod_cidr
                    );
                }
            }
            Err(problem) => {
                eprintln!("error: {node}: {problem}");
                all_good = false;
            }
        }
    }
    Ok(all_good)
}

/// kubectl's table: NAME STATUS ROLES AGE VERSION; `-o wide` adds INTERNAL-IP, EXTERNAL-IP,
/// OS-IMAGE, KERNEL-VERSION and CONTAINER-RUNTIME, and Keelson's POD-CIDR.
fn node_table(nodes: &[Value], wide: bool, now: i64) -> String {
    let mut headers = vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"];
    if wide {
        headers.extend([
            "INTERNAL-IP",
            "EXTERNAL-IP",
            "OS-IMAGE",
            "KERNEL-VERSION",
            "CONTAINER-RUNTIME",
            "POD-CIDR",
        ]);
    }
    let mut table = Table::new(&headers);
    for node in nodes {
        let text = |value: &Value| value.as_str().unwrap_or("<none>").to_owned();
        let ready = node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|condition| condition["type"] == "Ready")
            .map(|condition| condition["status"] == "True");
        let status = match ready {
            Some(true) => "Ready",
            _ => "NotReady",
        };
        let mut roles: Vec<&str> = node["metadata"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(label, _)| label.strip_prefix("node-role.kubernetes.io/"))
            .collect();
        roles.sort_unstable();
        let created = node["metadata"]["creationTimestamp"].as_str().unwrap_or("");
        let mut row = vec![
            text(&node["metadata"]["name"]),
            status.to_owned(),
            if roles.is_empty() {
                "<none>".to_owned()
            } else {
                roles.join(",")
            },
            seconds_since(created, now).map_or("<unknown>".to_owned(), age),
            text(&node["status"]["nodeInfo"]["kubeletVersion"]),
        ];
        if wide {
            let address = |kind: &str| {
                node["status"]["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|address| address["type"] == kind)
                    .map_or("<none>".to_owned(), |address| text(&address["address"]))
            };
            let info = &node["status"]["nodeInfo"];
            row.extend([
                address("InternalIP"),
                address("ExternalIP"),
                text(&info["osImage"]),
                text(&info["kernelVersion"]),
                text(&info["containerRuntimeVersion"]),
                text(&node["spec"]["podCIDR"]),
            ]);
        }
        table.row(row);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_node_table_reads_as_kubectls() {
        let node = json!({
            "metadata": {
                "name": "lab-1",
                "creationTimestamp": "2026-12-04T09:00:00Z",
                "labels": {"node-role.kubernetes.io/auto": "", "kubernetes.io/os": "linux"},
            },
            "spec": {"podCIDR": "10.244.0.0/24"},
            "status": {
                "conditions": [{"type": "Ready", "status": "Unknown"}],
                "addresses": [{"type": "InternalIP", "address": "10.77.0.11"}],
                "nodeInfo": {"kubeletVersion": "keelson-0.1.0", "osImage": "Keelson 0.1.0",
                    "kernelVersion": "6.1.0", "containerRuntimeVersion": "keelson://0.1.0"},
            },
        });
        let now = 1_796_374_800 + 125; // 2026-12-04T09:02:05Z
        let table = node_table(std::slice::from_ref(&node), false, now);
        let row = table.lines().nth(1).unwrap();
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            columns,
            ["lab-1", "NotReady", "auto", "2m", "keelson-0.1.0"]
        );
        let wide = node_table(&[node], true, now);
        assert!(wide.contains("10.77.0.11"), "{wide}");
        assert!(wide.contains("<none>"), "no external IP: {wide}");
        assert!(wide.contains("10.244.0.0/24"), "{wide}");
    }
}
