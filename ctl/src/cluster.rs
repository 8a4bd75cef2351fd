//! `cluster members`: the `keelson.cluster.v1` verbs.
//!
//! Each node answers with its own gossip's view, so asking one node is enough; asked
//! several, the table says which node saw what (`SEEN BY`), which is how a partition
//! shows.

use keelson_api::cluster::cluster_client::ClusterClient;
use keelson_api::cluster::{MembersRequest, MembersResponse};

use crate::output::{Format, Table};
use crate::session::{describe_status, report, Answers, Session};

/// `keelctl cluster members [-o wide|json|yaml]`.
pub async fn members(session: &Session) -> anyhow::Result<bool> {
    let calls = session.nodes.iter().map(|node| async move {
        let outcome = match session.channel(node).await {
            Ok(channel) => ClusterClient::new(channel)
                .members(MembersRequest {})
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| describe_status(&status)),
            Err(error) => Err(error),
        };
        (node.clone(), outcome)
    });
    let answers: Answers<MembersResponse> = futures::future::join_all(calls).await;
    let mut all_good = true;
    for (node, answer) in &answers {
        match answer {
            Ok(answer) if !answer.enabled => {
                eprintln!(
                    "error: {node}: its config has no cluster section, so it gossips with no one"
                );
                all_good = false;
            }
            Ok(answer) if !answer.problem.is_empty() => {
                eprintln!("error: {node}: not gossiping: {}", answer.problem);
                all_good = false;
            }
            _ => {}
        }
    }
    let several = session.nodes.len() > 1;
    let wide = session.format == Format::Wide;
    let printed = report(session.format, answers, |answers| {
        table(answers, several, wide)
    })?;
    Ok(printed && all_good)
}

/// The members table: one row per member and answering node.
fn table(answers: &[(String, MembersResponse)], several: bool, wide: bool) -> String {
    let mut headers = vec!["NAME", "ADDRESS", "STATE", "ROLE", "VERSION", "SLOT"];
    if wide {
        headers.extend(["GENERATION", "POD CIDR", "API"]);
    }
    if several {
        headers.push("SEEN BY");
    }
    let mut table = Table::new(&headers);
    for (node, answer) in answers {
        for member in &answer.members {
            let or_dash = |text: &str| {
                if text.is_empty() {
                    "-".to_string()
                } else {
                    text.to_string()
                }
            };
            let mut row = vec![
                member.name.clone(),
                member.address.clone(),
                member.state.clone(),
                or_dash(&member.role),
                or_dash(&member.version),
                or_dash(&member.slot),
            ];
            if wide {
                row.extend([
                    member.generation.to_string(),
                    or_dash(&member.pod_cidr),
                    or_dash(&member.api_endpoint),
                ]);
            }
            if several {
                row.push(node.clone());
            }
            table.row(row);
        }
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_api::cluster::Member;

    fn member(name: &str, state: &str, version: &str) -> Member {
        Member {
            name: name.into(),
            address: format!("10.0.0.{}:7946", name.len()),
            state: state.into(),
            role: if version.is_empty() {
                String::new()
            } else {
                "auto".into()
            },
            version: version.into(),
            slot: if version.is_empty() {
                String::new()
            } else {
                "a".into()
            },
            generation: 3,
            pod_cidr: String::new(),
            api_endpoint: String::new(),
            local: false,
        }
    }

    #[test]
    fn members_are_listed_with_dashes_for_what_has_not_arrived() {
        let answer = MembersResponse {
            enabled: true,
            cluster: "lab".into(),
            members: vec![
                member("lab-1", "alive", "0.1.0"),
                member("lab-22", "suspect", ""),
            ],
            ..MembersResponse::default()
        };
        let text = table(&[("10.0.2.15".into(), answer.clone())], false, false);
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|line| line.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[0],
            ["NAME", "ADDRESS", "STATE", "ROLE", "VERSION", "SLOT"]
        );
        assert_eq!(
            lines[1],
            ["lab-1", "10.0.0.5:7946", "alive", "auto", "0.1.0", "a"]
        );
        assert_eq!(
            lines[2],
            ["lab-22", "10.0.0.6:7946", "suspect", "-", "-", "-"]
        );
        let wide = table(
            &[("n1".into(), answer.clone()), ("n2".into(), answer)],
            true,
            true,
        );
        let header: Vec<&str> = wide
            .lines()
            .next()
            .unwrap()
            .split("  ")
            .filter(|cell| !cell.is_empty())
            .map(str::trim)
            .collect();
        assert_eq!(header.last(), Some(&"SEEN BY"));
        assert!(header.contains(&"POD CIDR"), "{header:?}");
        assert_eq!(wide.lines().count(), 5, "two members seen by two nodes");
    }
}
