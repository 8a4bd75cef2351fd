//! `cluster members` and `cluster status`: the `keelson.cluster.v1` verbs.
//!
//! For members, each node answers with its own gossip's view, so asking one node is
//! enough; asked several, the table says which node saw what (`SEEN BY`), which is how a
//! partition shows. For status, a node asks the leader, so every node gives the leader's
//! answer while it can reach it.

use keelson_api::cluster::cluster_client::ClusterClient;
use keelson_api::cluster::{
    LockStatusRequest, LockStatusResponse, MembersRequest, MembersResponse, StatusRequest,
    StatusResponse,
};

use crate::output::{Format, Table};
use crate::session::{describe_status, report, Answers, Session};

/// One unary call of the cluster service to `node`: its answer, or what went wrong in
/// keelctl's words.
pub async fn call<T, F, Fut>(session: &Session, node: &str, call: F) -> Result<T, String>
where
    F: FnOnce(ClusterClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let channel = session.channel(node).await?;
    call(ClusterClient::new(channel))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| describe_status(&status))
}

/// The same call to every node of the session at once.
async fn call_all<T, F, Fut>(session: &Session, make: F) -> Answers<T>
where
    F: Fn(ClusterClient<tonic::transport::Channel>) -> Fut + Clone,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let calls = session.nodes.iter().map(|node| {
        let make = make.clone();
        async move { (node.clone(), call(session, node, make).await) }
    });
    futures::future::join_all(calls).await
}

/// `keelctl cluster members [-o wide|json|yaml]`.
pub async fn members(session: &Session) -> anyhow::Result<bool> {
    let answers: Answers<MembersResponse> = call_all(session, |mut client| async move {
        client.members(MembersRequest {}).await
    })
    .await;
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

/// `keelctl cluster status [-o json|yaml]`: exits 1 when a node has no leader to report.
pub async fn status(session: &Session) -> anyhow::Result<bool> {
    let answers: Answers<StatusResponse> = call_all(session, |mut client| async move {
        client.status(StatusRequest {}).await
    })
    .await;
    let mut all_good = true;
    for (node, answer) in &answers {
        match answer {
            Ok(answer) if !answer.enabled => {
                eprintln!("error: {node}: its config has no cluster section");
                all_good = false;
            }
            Ok(answer) if answer.leader.is_empty() => {
                eprintln!("error: {node}: no leader: {}", answer.problem);
                all_good = false;
            }
            _ => {}
        }
    }
    let printed = report(session.format, answers, status_table)?;
    Ok(printed && all_good)
}

/// `keelctl cluster lock [-o json|yaml]`: the leader's answer, through the first node that
/// gives it.
pub async fn lock(session: &Session) -> anyhow::Result<bool> {
    let mut problems = Vec::new();
    for node in &session.nodes {
        let answer = call(session, node, |mut client| async move {
            client.lock_status(LockStatusRequest {}).await
        })
        .await;
        match answer {
            Ok(answer) => {
                let answers = vec![(node.clone(), Ok(answer))];
                return report(session.format, answers, lock_table);
            }
            Err(problem) => problems.push(format!("{node}: {problem}")),
        }
    }
    for problem in problems {
        eprintln!("error: {problem}");
    }
    Ok(false)
}

/// GROUP SLOTS HOLDERS.
fn lock_table(answers: &[(String, LockStatusResponse)]) -> String {
    let mut table = Table::new(&["GROUP", "SLOTS", "HOLDERS"]);
    for (_, answer) in answers {
        for group in &answer.groups {
            table.row(vec![
                group.group.clone(),
                group.slots.to_string(),
                if group.holders.is_empty() {
                    "-".into()
                } else {
                    group.holders.join(",")
                },
            ]);
        }
    }
    table.render()
}

/// The status table: one row per node asked.
fn status_table(answers: &[(String, StatusResponse)]) -> String {
    let mut table = Table::new(&[
        "NODE",
        "LEADER",
        "TERM",
        "VOTERS",
        "LEARNERS",
        "COMMIT",
        "APPLIED",
        "ANSWERED BY",
    ]);
    let list = |names: &[String]| {
        if names.is_empty() {
            "-".to_string()
        } else {
            names.join(",")
        }
    };
    for (node, answer) in answers {
        table.row(vec![
            node.clone(),
            if answer.leader.is_empty() {
                "-".into()
            } else {
                answer.leader.clone()
            },
            answer.term.to_string(),
            list(&answer.voters),
            list(&answer.learners),
            answer.commit_index.to_string(),
            answer.applied_index.to_string(),
            answer.answered_by.clone(),
        ]);
    }
    table.render()
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

    #[test]
    fn status_json_uses_the_documented_field_names() {
        let answer = StatusResponse {
            enabled: true,
            cluster: "lab".into(),
            leader: "lab-1".into(),
            term: 3,
            voters: vec!["lab-1".into(), "lab-2".into(), "lab-3".into()],
            learners: vec![],
            commit_index: 12,
            applied_index: 11,
            answered_by: "lab-1".into(),
            problem: String::new(),
        };
        let json = serde_json::to_value(&answer).unwrap();
        for field in [
            "leader",
            "term",
            "voters",
            "learners",
            "commitIndex",
            "appliedIndex",
        ] {
            assert!(json.get(field).is_some(), "{field} missing from {json}");
        }
        let table = status_table(&[("10.0.0.1:50000".into(), answer)]);
        assert!(table.contains("lab-1,lab-2,lab-3"), "{table}");
    }

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
