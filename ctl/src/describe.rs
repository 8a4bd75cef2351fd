//! `keelctl describe pod NAME`: the pod, its container and its events as `kubectl describe`
//! lays them out. [`describe_pod`] is pure (the pod and events as the node sent them, and
//! the time now); [`describe`] fetches both from each node.

use std::fmt::Write as _;

use keelson_api::pods::GetRequest;
use serde_json::Value;

use crate::cli::DescribeArgs;
use crate::output;
use crate::session::Session;

/// Fetches the pod and its events from each node and prints them.
pub async fn describe(session: &Session, arguments: &DescribeArgs) -> anyhow::Result<bool> {
    let name = arguments
        .name
        .strip_prefix("pod/")
        .unwrap_or(&arguments.name)
        .to_owned();
    let request = GetRequest {
        namespace: arguments.namespace.clone(),
        name,
    };
    let (answers, all_good) = crate::pods::on_each(session, |mut client| {
        let request = request.clone();
        async move {
            let pod = client.get(request.clone()).await?.into_inner().pod_json;
            let events = client.events(request).await?.into_inner().event_list_json;
            Ok((pod, events))
        }
    })
    .await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for (node, (pod, events)) in answers {
        let parse = |json: &str| serde_json::from_str::<Value>(json).unwrap_or(Value::Null);
        if session.nodes.len() > 1 {
            println!("# {node}");
        }
        print!("{}", describe_pod(&parse(&pod), &parse(&events), now));
    }
    Ok(all_good)
}

/// The description of `pod` with `events` (a `v1/EventList`), ages counted to `now`.
pub fn describe_pod(pod: &Value, events: &Value, now: i64) -> String {
    let mut text = String::new();
    let text_of = |value: &Value| value.as_str().unwrap_or("<none>").to_owned();
    let status = &pod["status"];
    let mut field = |name: &str, value: String| {
        let _ = writeln!(text, "{:<18}{value}", format!("{name}:"));
    };
    field("Name", text_of(&pod["metadata"]["name"]));
    field("Namespace", text_of(&pod["metadata"]["namespace"]));
    field("Node", text_of(&status["hostIP"]));
    field("Start Time", text_of(&status["startTime"]));
    field("Labels", pairs(&pod["metadata"]["labels"]));
    field("Status", text_of(&status["phase"]));
    // As kubectl: why the whole pod stopped (an eviction), when it says.
    for (name, key) in [("Reason", "reason"), ("Message", "message")] {
        if let Some(said) = status[key].as_str() {
            field(name, said.to_owned());
        }
    }
    field("IP", status["podIP"].as_str().unwrap_or("").to_owned());
    field("QoS Class", text_of(&status["qosClass"]));
    if pod["spec"]["hostNetwork"] == true {
        field("Host Network", "true".into());
    }
    if pod["spec"]["hostUsers"] == false {
        field("Host Users", "false (a user namespace of its own)".into());
    }
    let sections = [
        ("Init Containers", "initContainers", "initContainerStatuses"),
        ("Containers", "containers", "containerStatuses"),
    ];
    for (title, specs, statuses) in sections {
        if let Some(specs) = pod["spec"][specs]
            .as_array()
            .filter(|specs| !specs.is_empty())
        {
            let _ = writeln!(text, "{title}:");
            text.push_str(&containers_section(specs, &status[statuses]));
        }
    }
    text.push_str("Conditions:\n  Type              Status\n");
    for condition in status["conditions"].as_array().into_iter().flatten() {
        let _ = writeln!(
            text,
            "  {:<18}{}",
            text_of(&condition["type"]),
            text_of(&condition["status"])
        );
    }
    text.push_str(&events_section(events, now));
    text
}

/// The containers of one section (init or app) with their statuses, as kubectl lays
/// them out.
fn containers_section(specs: &[Value], statuses: &Value) -> String {
    let mut text = String::new();
    let text_of = |value: &Value| value.as_str().unwrap_or("<none>").to_owned();
    let statuses = statuses.as_array().cloned().unwrap_or_default();
    for container in specs {
        let name = text_of(&container["name"]);
        let state = statuses
            .iter()
            .find(|status| status["name"] == container["name"])
            .cloned()
            .unwrap_or(Value::Null);
        let _ = writeln!(text, "  {name}:");
        let mut line = |name: &str, value: String| {
            let _ = writeln!(text, "    {:<16}{value}", format!("{name}:"));
        };
        line("Container ID", text_of(&state["containerID"]));
        line("Image", text_of(&container["image"]));
        line("Image ID", text_of(&state["imageID"]));
        if let Some(command) = container["command"].as_array() {
            line("Command", words(command));
        }
        if let Some(args) = container["args"].as_array() {
            line("Args", words(args));
        }
        text.push_str(&container_state("State", &state["state"]));
        text.push_str(&container_state("Last State", &state["lastState"]));
        let mut line = |name: &str, value: String| {
            let _ = writeln!(text, "    {:<16}{value}", format!("{name}:"));
        };
        line(
            "Ready",
            state["ready"].as_bool().unwrap_or(false).to_string(),
        );
        line(
            "Restart Count",
            state["restartCount"].as_u64().unwrap_or(0).to_string(),
        );
        for kind in ["limits", "requests"] {
            if let Some(values) = container["resources"][kind].as_object() {
                let _ = writeln!(text, "    {}{}:", kind[..1].to_uppercase(), &kind[1..]);
                for (resource, quantity) in values {
                    let _ = writeln!(text, "      {resource}: {}", text_of(quantity));
                }
            }
        }
        let environment: Vec<String> = container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|variable| {
                format!(
                    "      {}: {}",
                    text_of(&variable["name"]),
                    variable["value"].as_str().unwrap_or("")
                )
            })
            .collect();
        if environment.is_empty() {
            text.push_str("    Environment:    <none>\n");
        } else {
            text.push_str("    Environment:\n");
            for variable in environment {
                let _ = writeln!(text, "{variable}");
            }
        }
    }
    text
}

/// `State:` or `Last State:` and what it holds.
fn container_state(title: &str, state: &Value) -> String {
    let mut text = String::new();
    let mut line = |name: &str, value: String| {
        let _ = writeln!(text, "    {:<16}{value}", format!("{name}:"));
    };
    let detail = |name: &str, value: String| format!("      {:<14}{value}\n", format!("{name}:"));
    let text_of = |value: &Value| value.as_str().unwrap_or("").to_owned();
    if let Some(running) = state.get("running").filter(|value| value.is_object()) {
        line(title, "Running".into());
        text.push_str(&detail("Started", text_of(&running["startedAt"])));
    } else if let Some(waiting) = state.get("waiting").filter(|value| value.is_object()) {
        line(title, "Waiting".into());
        text.push_str(&detail("Reason", text_of(&waiting["reason"])));
        if let Some(message) = waiting["message"].as_str() {
            text.push_str(&detail("Message", message.to_owned()));
        }
    } else if let Some(terminated) = state.get("terminated").filter(|value| value.is_object()) {
        line(title, "Terminated".into());
        text.push_str(&detail("Reason", text_of(&terminated["reason"])));
        if let Some(message) = terminated["message"].as_str() {
            text.push_str(&detail("Message", message.to_owned()));
        }
        text.push_str(&detail(
            "Exit Code",
            terminated["exitCode"].as_i64().unwrap_or(0).to_string(),
        ));
        text.push_str(&detail("Started", text_of(&terminated["startedAt"])));
        text.push_str(&detail("Finished", text_of(&terminated["finishedAt"])));
    } else if title != "Last State" {
        line(title, "Waiting".into());
    }
    text
}

/// The `Events:` table, as kubectl prints it: the age of the last time, and for repeats
/// `(xN over AGE)` since the first.
fn events_section(events: &Value, now: i64) -> String {
    let items = events["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return "Events:            <none>\n".into();
    }
    let since = |field: &Value| {
        field
            .as_str()
            .and_then(|text| {
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .map(|at| output::age(u64::try_from(now - at.unix_timestamp()).unwrap_or(0)))
            .unwrap_or_else(|| "<unknown>".into())
    };
    let mut table = output::Table::new(&["Type", "Reason", "Age", "From", "Message"]);
    table.row(
        ["----", "------", "----", "----", "-------"]
            .map(str::to_owned)
            .to_vec(),
    );
    for event in &items {
        let count = event["count"].as_u64().unwrap_or(1);
        let age = if count > 1 {
            format!(
                "{} (x{count} over {})",
                since(&event["lastTimestamp"]),
                since(&event["firstTimestamp"])
            )
        } else {
            since(&event["lastTimestamp"])
        };
        table.row(vec![
            event["type"].as_str().unwrap_or("").to_owned(),
            event["reason"].as_str().unwrap_or("").to_owned(),
            age,
            event["source"]["component"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            event["message"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    let mut text = String::from("Events:\n");
    for line in table.render().lines() {
        let _ = writeln!(text, "  {line}");
    }
    text
}

fn pairs(map: &Value) -> String {
    let pairs: Vec<String> = map
        .as_object()
        .into_iter()
        .flatten()
        .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or("")))
        .collect();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    }
}

fn words(list: &[Value]) -> String {
    list.iter()
        .map(|word| word.as_str().unwrap_or("").to_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_reads_as_kubectl_describe_lays_it_out() {
        let pod = serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "labels": {"run": "web"}},
            "spec": {"containers": [{
                "name": "web", "image": "busybox:1", "command": ["sh", "-c", "exit 1"],
                "resources": {"limits": {"memory": "64Mi"}},
                "env": [{"name": "GREETING", "value": "hi"}]
            }]},
            "status": {
                "phase": "Running", "hostIP": "10.0.2.15", "qosClass": "Burstable",
                "startTime": "2026-12-02T10:00:00Z",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{
                    "name": "web", "ready": false, "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                    "lastState": {"terminated": {"reason": "Error", "exitCode": 1,
                        "startedAt": "2026-12-02T10:01:00Z", "finishedAt": "2026-12-02T10:01:01Z"}}
                }]
            }
        });
        let events = serde_json::json!({"items": [
            {"type": "Normal", "reason": "Pulled", "count": 1,
             "firstTimestamp": "2026-12-02T10:00:00Z", "lastTimestamp": "2026-12-02T10:00:00Z",
             "source": {"component": "kubelet"},
             "message": "Container image \"busybox:1\" already present on machine"},
            {"type": "Warning", "reason": "BackOff", "count": 4,
             "firstTimestamp": "2026-12-02T10:00:30Z", "lastTimestamp": "2026-12-02T10:04:00Z",
             "source": {"component": "kubelet"},
             "message": "Back-off restarting failed container web in pod web_default(u)"}
        ]});
        let now = time::OffsetDateTime::parse(
            "2026-12-02T10:05:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
        .unix_timestamp();
        let text = describe_pod(&pod, &events, now);
        for expected in [
            "Name:             web\n",
            "Labels:           run=web\n",
            "QoS Class:        Burstable\n",
            "    Command:        sh -c exit 1\n",
            "    State:          Waiting\n      Reason:       CrashLoopBackOff\n",
            "    Last State:     Terminated\n      Reason:       Error\n      Exit Code:    1\n",
            "    Restart Count:  3\n",
            "    Limits:\n      memory: 64Mi\n",
            "      GREETING: hi\n",
            "  Ready             False\n",
        ] {
            assert!(text.contains(expected), "{expected:?} not in:\n{text}");
        }
        let events = &text[text.find("Events:\n").unwrap()..];
        let lines: Vec<&str> = events.lines().collect();
        assert!(lines[1].trim_start().starts_with("Type"), "{events}");
        assert!(lines[2].trim_start().starts_with("----"), "{events}");
        let pulled: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(
            pulled[..4],
            ["Normal", "Pulled", "5m", "kubelet"],
            "{events}"
        );
        assert!(lines[4].contains("60s (x4 over 4m)"), "{events}");
    }
}
