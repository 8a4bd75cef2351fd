//! `top pods`: each pod's CPU and memory (or each container's, with `--containers`), read
//! by the node from the containers' cgroups, printed as `kubectl top pods` prints them:
//! CPU in millicores (`12m`), memory in mebibytes (`5Mi`).

use keelson_api::pods::{ListRequest, PodUsage};

use crate::cli::TopArgs;
use crate::output::Table;
use crate::pods::on_each;
use crate::session::Session;

/// `keelctl top pods [NAME] [--containers] [-n NS | -A]`.
pub async fn top(session: &Session, arguments: &TopArgs) -> anyhow::Result<bool> {
    let namespace = crate::pods::namespace_scope(arguments.all_namespaces, &arguments.namespace);
    let (answers, all_good) = on_each(session, |mut client| {
        let request = ListRequest {
            namespace: namespace.clone(),
        };
        async move { Ok(client.top(request).await?.into_inner().pods) }
    })
    .await;
    let mut pods: Vec<(String, PodUsage)> = answers
        .into_iter()
        .flat_map(|(node, pods)| pods.into_iter().map(move |pod| (node.clone(), pod)))
        .filter(|(_, pod)| arguments.name.as_ref().is_none_or(|name| *name == pod.name))
        .collect();
    pods.sort_by(|(_, a), (_, b)| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    if pods.is_empty() {
        match &arguments.name {
            Some(name) => eprintln!("error: pod {name:?} not found (or not running)"),
            None => eprintln!("No resources found"),
        }
        return Ok(false);
    }
    print!(
        "{}",
        table(
            &pods,
            session.nodes.len() > 1,
            arguments.all_namespaces,
            arguments.containers
        )
    );
    Ok(all_good)
}

/// The table, with a NODE column for several nodes, NAMESPACE for every namespace, and a
/// row per container with `containers`.
fn table(pods: &[(String, PodUsage)], several: bool, namespaces: bool, containers: bool) -> String {
    let mut headers = Vec::new();
    if several {
        headers.push("NODE");
    }
    if namespaces {
        headers.push("NAMESPACE");
    }
    if containers {
        headers.extend(["POD", "NAME"]);
    } else {
        headers.push("NAME");
    }
    headers.extend(["CPU(cores)", "MEMORY(bytes)"]);
    let mut table = Table::new(&headers);
    for (node, pod) in pods {
        let mut lead = Vec::new();
        if several {
            lead.push(node.clone());
        }
        if namespaces {
            lead.push(pod.namespace.clone());
        }
        lead.push(pod.name.clone());
        if containers {
            for container in &pod.containers {
                let mut row = lead.clone();
                row.push(container.name.clone());
                row.push(cpu(container.cpu_millicores));
                row.push(memory(container.memory_bytes));
                table.row(row);
            }
        } else {
            let millicores = pod.containers.iter().map(|c| c.cpu_millicores).sum();
            let bytes = pod.containers.iter().map(|c| c.memory_bytes).sum();
            let mut row = lead;
            row.push(cpu(millicores));
            row.push(memory(bytes));
            table.row(row);
        }
    }
    table.render()
}

/// Millicores as kubectl prints them: `0m`, `250m`, `1500m`.
fn cpu(millicores: u64) -> String {
    format!("{millicores}m")
}

/// Bytes in whole mebibytes, as kubectl prints them: `0Mi`, `12Mi`.
fn memory(bytes: u64) -> String {
    format!("{}Mi", bytes / (1024 * 1024))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use keelson_api::pods::ContainerUsage;

    fn pod(name: &str, containers: &[(&str, u64, u64)]) -> (String, PodUsage) {
        (
            "node-a".into(),
            PodUsage {
                namespace: "default".into(),
                name: name.into(),
                containers: containers
                    .iter()
                    .map(|(name, cpu, memory)| ContainerUsage {
                        name: (*name).into(),
                        cpu_millicores: *cpu,
                        memory_bytes: *memory,
                    })
                    .collect(),
            },
        )
    }

    #[test]
    fn pods_sum_their_containers_and_print_as_kubectl_does() {
        let pods = [
            pod(
                "web",
                &[("web", 12, 5 << 20), ("proxy", 3, (2 << 20) + 1000)],
            ),
            pod("idle", &[]),
        ];
        assert_eq!(
            table(&pods, false, false, false),
            "NAME  CPU(cores)  MEMORY(bytes)\nweb   15m         7Mi\nidle  0m          0Mi\n"
        );
        assert_eq!(
            table(&pods[..1], false, true, true),
            "NAMESPACE  POD  NAME   CPU(cores)  MEMORY(bytes)\n\
             default    web  web    12m         5Mi\n\
             default    web  proxy  3m          2Mi\n"
        );
    }
}
