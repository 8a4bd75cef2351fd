//! `run`, `apply`, `get pods`, `delete pod` and `logs POD`: the `keelson.pods.v1` verbs.
//!
//! Pods travel as `v1/Pod` JSON and are handled here as JSON values, so that `-o json`
//! and `-o yaml` print exactly what the node reported, and the table is computed as
//! kubectl computes its columns.

use std::io::{Read, Write};

use keelson_api::pods::pods_client::PodsClient;
use keelson_api::pods::{ApplyRequest, DeleteRequest, GetRequest, ListRequest, LogsRequest};
use serde_json::{json, Value};

use crate::cli::{ApplyArgs, DeleteArgs, GetArgs, LogsArgs, RunArgs};
use crate::output::{self, Format, Table};
use crate::session::{describe_status, Session};

async fn client(
    session: &Session,
    node: &str,
) -> Result<PodsClient<tonic::transport::Channel>, String> {
    Ok(PodsClient::new(session.channel(node).await?)
        .max_decoding_message_size(keelson_api::MAX_REQUEST_BYTES))
}

fn parse(json: &str) -> Result<Value, String> {
    serde_json::from_str(json)
        .map_err(|error| format!("the node sent a pod that is not JSON: {error}"))
}

/// Calls every node at once; prints failures; returns the answers that came.
pub(crate) async fn on_each<T, F, Fut>(session: &Session, call: F) -> (Vec<(String, T)>, bool)
where
    F: Fn(PodsClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let calls = session.nodes.iter().map(|node| {
        let call = &call;
        async move {
            let outcome = match client(session, node).await {
                Ok(client) => call(client)
                    .await
                    .map_err(|status| describe_status(&status)),
                Err(error) => Err(error),
            };
            (node.clone(), outcome)
        }
    });
    let mut good = Vec::new();
    let mut all_good = true;
    for (node, outcome) in futures::future::join_all(calls).await {
        match outcome {
            Ok(value) => good.push((node, value)),
            Err(error) => {
                all_good = false;
                eprintln!("error: {node}: {error}");
            }
        }
    }
    (good, all_good)
}

fn prefix(session: &Session, node: &str) -> String {
    if session.nodes.len() > 1 {
        format!("{node}: ")
    } else {
        String::new()
    }
}

/// The pod `keelctl run` makes, as `kubectl run` makes it.
pub fn pod_for_run(arguments: &RunArgs) -> anyhow::Result<Value> {
    let pairs = |items: &[String], what: &str| -> anyhow::Result<Vec<(String, String)>> {
        items
            .iter()
            .map(|item| {
                item.split_once('=')
                    .map(|(key, value)| (key.to_owned(), value.to_owned()))
                    .ok_or_else(|| anyhow::anyhow!("{what} {item:?} is not KEY=VALUE"))
            })
            .collect()
    };
    let env: Vec<Value> = pairs(&arguments.env, "--env")?
        .into_iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    let mut labels = serde_json::Map::new();
    for (key, value) in pairs(&arguments.labels, "--labels")? {
        labels.insert(key, value.into());
    }
    if labels.is_empty() {
        labels.insert("run".into(), arguments.name.clone().into());
    }
    let mut container = json!({"name": arguments.name, "image": arguments.image});
    if !env.is_empty() {
        container["env"] = env.into();
    }
    if !arguments.words.is_empty() {
        let key = if arguments.command { "command" } else { "args" };
        container[key] = arguments.words.clone().into();
    }
    let mut limits = serde_json::Map::new();
    if let Some(memory) = &arguments.memory {
        limits.insert("memory".into(), memory.clone().into());
    }
    if let Some(cpu) = &arguments.cpu {
        limits.insert("cpu".into(), cpu.clone().into());
    }
    if !limits.is_empty() {
        container["resources"] = json!({"limits": limits});
    }
    let mut spec = json!({"containers": [container], "restartPolicy": arguments.restart});
    if arguments.host_network {
        spec["hostNetwork"] = true.into();
    }
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": arguments.name, "namespace": arguments.namespace, "labels": labels},
        "spec": spec,
    }))
}

/// `keelctl run NAME --image REF …`.
pub async fn run(session: &Session, arguments: &RunArgs) -> anyhow::Result<bool> {
    apply_pods(session, &[pod_for_run(arguments)?]).await
}

/// `keelctl run … --dry-run`: the pod, printed (YAML unless `-o json`), no node called.
pub fn print_run(arguments: &RunArgs, format: Format) -> anyhow::Result<bool> {
    let format = if format == Format::Json {
        Format::Json
    } else {
        Format::Yaml
    };
    print_objects(format, &[pod_for_run(arguments)?])?;
    Ok(true)
}

/// `keelctl apply -f FILE`.
pub async fn apply(session: &Session, arguments: &ApplyArgs) -> anyhow::Result<bool> {
    let files = if arguments.file.is_dir() {
        manifest_files(&arguments.file)?
    } else {
        vec![arguments.file.clone()]
    };
    // Every file is read and checked before anything is applied.
    let mut pods = Vec::new();
    for file in &files {
        let text = if file.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            text
        } else {
            std::fs::read_to_string(file)
                .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", file.display()))?
        };
        pods.extend(
            keelson_config::manifest::pod_documents(&text)
                .map_err(|error| anyhow::anyhow!("{}: {error}", file.display()))?,
        );
    }
    apply_pods(session, &pods).await
}

/// The manifests of a directory, as `kubectl apply -f DIR` takes them: its `.yaml`, `.yml`
/// and `.json` files, in name order.
fn manifest_files(directory: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let files = keelson_config::manifest::manifest_files(directory)
        .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", directory.display()))?;
    if files.is_empty() {
        anyhow::bail!(
            "{} holds no manifest (no .yaml, .yml or .json file)",
            directory.display()
        );
    }
    Ok(files)
}

async fn apply_pods(session: &Session, pods: &[Value]) -> anyhow::Result<bool> {
    let mut all_good = true;
    for pod in pods {
        let pod_json = pod.to_string();
        let (answers, good) = on_each(session, |mut client| {
            let pod_json = pod_json.clone();
            async move {
                client
                    .apply(ApplyRequest { pod_json })
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await;
        all_good &= good;
        for (node, answer) in answers {
            let applied = parse(&answer.pod_json).map_err(anyhow::Error::msg)?;
            match session.format {
                Format::Table | Format::Wide => println!(
                    "{}pod/{} {}",
                    prefix(session, &node),
                    applied["metadata"]["name"].as_str().unwrap_or_default(),
                    if answer.created {
                        "created"
                    } else {
                        "unchanged"
                    }
                ),
                format => print_objects(format, &[applied])?,
            }
        }
    }
    Ok(all_good)
}

/// `keelctl get pods [NAME]`.
pub async fn get(session: &Session, arguments: &GetArgs) -> anyhow::Result<bool> {
    let (pods, all_good, namespace) = fetch(session, arguments).await?;
    if arguments.watch {
        return watch(session, arguments, pods).await;
    }
    match session.format {
        Format::Table | Format::Wide => {
            if pods.is_empty() && arguments.name.is_none() {
                let scope = if namespace.is_empty() {
                    "any".to_owned()
                } else {
                    namespace.clone()
                };
                eprintln!("No resources found in {scope} namespace.");
            } else {
                print!("{}", pod_table(session, &pods, arguments.all_namespaces));
            }
        }
        format => {
            let objects: Vec<Value> = pods.into_iter().map(|(_, pod)| pod).collect();
            if arguments.name.is_some() && objects.len() == 1 {
                print_objects(format, &objects)?;
            } else {
                print_list(format, objects)?;
            }
        }
    }
    Ok(all_good)
}

/// `get -w`, as kubectl prints a watch: the pods as `get` shows them, then each pod again
/// whenever it changes (polled every second), until interrupted. A table gains a row when
/// a pod's READY, STATUS or RESTARTS change; `-o json` and `-o yaml` print the whole pod
/// object whenever any of it changes (YAML documents separated by `---`).
async fn watch(
    session: &Session,
    arguments: &GetArgs,
    mut pods: Vec<(String, Value)>,
) -> anyhow::Result<bool> {
    use std::io::Write;
    session.keep_connections();
    let mut changes = WatchedPods::new(session.format);
    let first = changes.changed(&pods);
    match session.format {
        Format::Table | Format::Wide => {
            print!("{}", pod_table(session, &first, arguments.all_namespaces))
        }
        format => print!("{}", watched_text(format, &first, true)?),
    }
    loop {
        let _ = std::io::stdout().flush();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        pods = fetch(session, arguments).await?.0;
        let changed = changes.changed(&pods);
        if changed.is_empty() {
            continue;
        }
        match session.format {
            Format::Table | Format::Wide => {
                // The rows without their header, aligned as the first table was.
                let table = pod_table(session, &changed, arguments.all_namespaces);
                for line in table.lines().skip(1) {
                    println!("{line}");
                }
            }
            format => print!("{}", watched_text(format, &changed, false)?),
        }
    }
}

/// Watched pod objects as printed: pretty JSON objects one after another, or YAML
/// documents with `---` before each one after the stream's very first, so that the
/// stream parses as a sequence of documents.
fn watched_text(format: Format, pods: &[(String, Value)], first: bool) -> anyhow::Result<String> {
    let mut text = String::new();
    for (index, (_, pod)) in pods.iter().enumerate() {
        match format {
            Format::Yaml => {
                if !(first && index == 0) {
                    text.push_str("---\n");
                }
                text.push_str(&serde_yaml::to_string(pod)?);
            }
            _ => {
                text.push_str(&serde_json::to_string_pretty(pod)?);
                text.push('\n');
            }
        }
    }
    Ok(text)
}

/// What a watch has printed of each pod (by node, namespace and name), so that it prints a
/// pod again only when what its format shows has changed.
struct WatchedPods {
    format: Format,
    seen: std::collections::BTreeMap<(String, String, String), Vec<String>>,
}

impl WatchedPods {
    fn new(format: Format) -> WatchedPods {
        WatchedPods {
            format,
            seen: Default::default(),
        }
    }

    /// The pods of this poll whose shown form differs from the last one printed; they
    /// become the printed ones.
    fn changed(&mut self, pods: &[(String, Value)]) -> Vec<(String, Value)> {
        let mut changed = Vec::new();
        for (node, pod) in pods {
            let key = (
                node.clone(),
                pod["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                pod["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
            let shown = self.shown(pod);
            if self.seen.get(&key) != Some(&shown) {
                self.seen.insert(key, shown);
                changed.push((node.clone(), pod.clone()));
            }
        }
        changed
    }

    /// What the format shows of a pod, without what only the passing of time changes (a
    /// table's AGE and how long ago the last restart was).
    fn shown(&self, pod: &Value) -> Vec<String> {
        if !self.format.is_table() {
            return vec![pod.to_string()];
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut row = columns(pod, now)[..3].to_vec();
        if let Some((count, _ago)) = row[2].split_once(' ') {
            row[2] = count.to_owned();
        }
        row
    }
}

/// The pods `get` asks for, whether every node answered, and the namespace asked.
async fn fetch(
    session: &Session,
    arguments: &GetArgs,
) -> anyhow::Result<(Vec<(String, Value)>, bool, String)> {
    let namespace = namespace_scope(arguments.all_namespaces, &arguments.namespace);
    let (answers, all_good) = match &arguments.name {
        Some(name) => {
            let (answers, good) = on_each(session, |mut client| {
                let request = with_deadline(GetRequest {
                    namespace: namespace.clone(),
                    name: name.clone(),
                });
                async move {
                    client
                        .get(request)
                        .await
                        .map(|answer| vec![answer.into_inner().pod_json])
                }
            })
            .await;
            (answers, good)
        }
        None => {
            let (answers, good) = on_each(session, |mut client| {
                let request = with_deadline(ListRequest {
                    namespace: namespace.clone(),
                });
                async move {
                    let list = client.list(request).await?.into_inner();
                    let list: Value = serde_json::from_str(&list.pod_list_json)
                        .map_err(|error| tonic::Status::internal(error.to_string()))?;
                    Ok(list["items"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(Value::to_string)
                        .collect())
                }
            })
            .await;
            (answers, good)
        }
    };
    let mut pods: Vec<(String, Value)> = Vec::new();
    for (node, items) in answers {
        for item in items {
            pods.push((node.clone(), parse(&item).map_err(anyhow::Error::msg)?));
        }
    }
    Ok((pods, all_good, namespace))
}

/// A read that has not been answered within 20 s fails (and a watch polls again) rather
/// than waiting on a connection that died without a word.
fn with_deadline<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(std::time::Duration::from_secs(20));
    request
}

/// The namespace a listing asks for: "" (every one) with `-A`, else the one named, else
/// `default`.
pub(crate) fn namespace_scope(all_namespaces: bool, namespace: &Option<String>) -> String {
    if all_namespaces {
        String::new()
    } else {
        namespace.clone().unwrap_or_else(|| "default".into())
    }
}

pub(crate) fn print_objects(format: Format, objects: &[Value]) -> anyhow::Result<()> {
    for object in objects {
        match format {
            Format::Yaml => print!("{}", serde_yaml::to_string(object)?),
            _ => println!("{}", serde_json::to_string_pretty(object)?),
        }
    }
    Ok(())
}

pub(crate) fn print_list(format: Format, items: Vec<Value>) -> anyhow::Result<()> {
    let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items});
    print_objects(format, &[list])
}

/// The table kubectl prints: NAME READY STATUS RESTARTS AGE (with NAMESPACE first for
/// every namespace, and NODE when several nodes answered); `-o wide` adds IP, NODE,
/// NOMINATED NODE and READINESS GATES.
pub fn pod_table(session: &Session, pods: &[(String, Value)], namespaces: bool) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let wide = session.format == Format::Wide;
    let several = session.nodes.len() > 1 && !wide;
    let mut headers = Vec::new();
    if several {
        headers.push("NODE");
    }
    if namespaces {
        headers.push("NAMESPACE");
    }
    headers.extend(["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    if wide {
        headers.extend(["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]);
    }
    let mut table = Table::new(&headers);
    for (node, pod) in pods {
        let mut row = Vec::new();
        if several {
            row.push(node.clone());
        }
        if namespaces {
            row.push(
                pod["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        row.push(
            pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        row.extend(columns(pod, now));
        if wide {
            let text = |value: &Value| value.as_str().unwrap_or("<none>").to_owned();
            row.push(text(&pod["status"]["podIP"]));
            row.push(text(&pod["spec"]["nodeName"]));
            row.extend(["<none>".to_owned(), "<none>".to_owned()]);
        }
        table.row(row);
    }
    table.render()
}

pub(crate) fn seconds_since(text: &str, now: i64) -> Option<u64> {
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(now - at.unix_timestamp()).ok()
}

/// READY, STATUS, RESTARTS and AGE, by kubectl's rules.
pub fn columns(pod: &Value, now: i64) -> [String; 4] {
    let list = |value: &Value| value.as_array().cloned().unwrap_or_default();
    let statuses = list(&pod["status"]["containerStatuses"]);
    let init_specs = list(&pod["spec"]["initContainers"]);
    let init_statuses = list(&pod["status"]["initContainerStatuses"]);
    let sidecar = |name: &Value| {
        init_specs
            .iter()
            .any(|spec| spec["name"] == *name && spec["restartPolicy"] == "Always")
    };
    // Sidecars count among the pod's containers, as kubectl counts them.
    let sidecars: Vec<&Value> = init_statuses
        .iter()
        .filter(|status| sidecar(&status["name"]))
        .collect();
    let total = list(&pod["spec"]["containers"]).len() + sidecars.len();
    let ready = statuses
        .iter()
        .chain(sidecars.iter().copied())
        .filter(|status| status["ready"].as_bool() == Some(true))
        .count();
    let mut reason = pod["status"]["reason"]
        .as_str()
        .or(pod["status"]["phase"].as_str())
        .unwrap_or("Unknown")
        .to_owned();
    let mut restarts = 0;
    let mut last_restart: Option<u64> = None;
    let mut count_restarts = |status: &Value, restarts: &mut u64| {
        *restarts += status["restartCount"].as_u64().unwrap_or(0);
        if let Some(finished) = status["lastState"]["terminated"]["finishedAt"].as_str() {
            let ago = seconds_since(finished, now);
            last_restart = match (last_restart, ago) {
                (Some(known), Some(ago)) => Some(known.min(ago)),
                (known, ago) => known.or(ago),
            };
        }
    };
    // While the pod initializes, its status is the first init container not yet done.
    let mut initializing = false;
    for (index, status) in init_statuses.iter().enumerate() {
        count_restarts(status, &mut restarts);
        let state = &status["state"];
        let terminated = &state["terminated"];
        if terminated["exitCode"] == 0 && terminated.is_object() {
            continue;
        }
        if sidecar(&status["name"]) && status["started"] == true {
            continue;
        }
        initializing = true;
        let waiting = state["waiting"]["reason"].as_str().unwrap_or("");
        reason = if terminated.is_object() {
            match terminated["reason"].as_str() {
                Some(why) => format!("Init:{why}"),
                None => format!("Init:ExitCode:{}", terminated["exitCode"]),
            }
        } else if !waiting.is_empty() && waiting != "PodInitializing" {
            format!("Init:{waiting}")
        } else {
            format!("Init:{index}/{}", init_specs.len())
        };
        break;
    }
    if !initializing {
        restarts = 0;
        for status in sidecars.iter().copied() {
            count_restarts(status, &mut restarts);
        }
    }
    for status in statuses.iter().filter(|_| !initializing) {
        count_restarts(status, &mut restarts);
        let state = &status["state"];
        if let Some(waiting) = state["waiting"]["reason"].as_str() {
            reason = waiting.to_owned();
        } else if state["terminated"].is_object() {
            reason = match state["terminated"]["reason"].as_str() {
                Some(terminated) => terminated.to_owned(),
                None => match state["terminated"]["signal"].as_i64() {
                    Some(signal) if signal != 0 => format!("Signal:{signal}"),
                    _ => format!(
                        "ExitCode:{}",
                        state["terminated"]["exitCode"].as_i64().unwrap_or(0)
                    ),
                },
            };
        } else if state["running"].is_object() && status["ready"].as_bool() == Some(true) {
            reason = "Running".into();
        }
    }
    if pod["metadata"]["deletionTimestamp"].is_string() {
        reason = "Terminating".into();
    }
    let restarts = match last_restart {
        Some(ago) if restarts > 0 => format!("{restarts} ({} ago)", output::age(ago)),
        _ => restarts.to_string(),
    };
    let age = pod["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|created| seconds_since(created, now))
        .map(output::age)
        .unwrap_or_else(|| "<unknown>".into());
    [format!("{ready}/{total}"), reason, restarts, age]
}

/// `keelctl delete pod NAME… [--grace-period S [--force] | --now]`.
pub async fn delete(session: &Session, arguments: &DeleteArgs) -> anyhow::Result<bool> {
    let grace = if arguments.now {
        Some(1)
    } else {
        arguments.grace_period
    };
    if grace == Some(0) && !arguments.force {
        anyhow::bail!(
            "--grace-period 0 kills the container at once, without letting it stop: add --force \
             to mean it (or give a grace period of 1 second or more)"
        );
    }
    let mut all_good = true;
    for name in &arguments.names {
        let (answers, good) = on_each(session, |mut client| {
            let request = DeleteRequest {
                namespace: arguments.namespace.clone(),
                name: name.clone(),
                override_grace_period: grace.is_some(),
                grace_period_seconds: grace.unwrap_or(0),
            };
            async move {
                client
                    .delete(request)
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await;
        all_good &= good;
        for (node, _) in answers {
            println!("{}pod \"{name}\" deleted", prefix(session, &node));
        }
    }
    Ok(all_good)
}

/// `keelctl logs POD [-c NAME] [-f] [--tail N] [--previous] [--timestamps]
/// [--since D | --since-time T]`.
pub async fn logs(session: &Session, arguments: &LogsArgs) -> anyhow::Result<bool> {
    let name = arguments
        .target
        .strip_prefix("pod/")
        .unwrap_or(&arguments.target)
        .to_owned();
    let request = LogsRequest {
        namespace: arguments.namespace.clone(),
        name,
        follow: arguments.follow.follow,
        tail: arguments.follow.tail,
        previous: arguments.previous,
        timestamps: arguments.timestamps,
        container: arguments.container.clone().unwrap_or_default(),
        since_seconds: arguments.since.unwrap_or(0),
        since_time: arguments.since_time.clone().unwrap_or_default(),
    };
    let several = session.nodes.len() > 1;
    let streams = session.nodes.iter().map(|node| {
        let request = request.clone();
        async move {
            let mut stream = client(session, node)
                .await?
                .logs(request)
                .await
                .map_err(|status| describe_status(&status))?
                .into_inner();
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|status| describe_status(&status))?
            {
                let mut stdout = std::io::stdout().lock();
                let written = if several {
                    String::from_utf8_lossy(&chunk.data)
                        .lines()
                        .try_for_each(|line| writeln!(stdout, "{node}: {line}"))
                } else {
                    stdout.write_all(&chunk.data)
                };
                if written.and_then(|()| stdout.flush()).is_err() {
                    return Ok(());
                }
            }
            Ok::<(), String>(())
        }
    });
    let mut all_good = true;
    for (node, outcome) in session
        .nodes
        .iter()
        .zip(futures::future::join_all(streams).await)
    {
        if let Err(error) = outcome {
            all_good = false;
            eprintln!("error: {node}: {error}");
        }
    }
    Ok(all_good)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_prints_a_pod_again_only_when_what_its_format_shows_changes() {
        let pod = |status: &str, restarts: u64, finished: &str, probed: &str| {
            json!({
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"containers": [{"name": "web"}]},
                "status": {"phase": "Running", "containerStatuses": [{
                    "ready": false, "restartCount": restarts,
                    "state": {"waiting": {"reason": status}},
                    "lastState": {"terminated": {"exitCode": 1, "finishedAt": finished}},
                    "probedAt": probed
                }]}
            })
        };
        let on_node = |pod: Value| vec![("node-1".to_owned(), pod)];
        let first = on_node(pod("CrashLoopBackOff", 1, "2026-12-02T06:59:50Z", "a"));
        let mut table = WatchedPods::new(Format::Table);
        let mut json = WatchedPods::new(Format::Json);
        assert_eq!(
            table.changed(&first).len(),
            1,
            "the first poll prints every pod"
        );
        assert_eq!(json.changed(&first).len(), 1);
        assert!(table.changed(&first).is_empty(), "nothing changed");
        assert!(json.changed(&first).is_empty());
        // A field no column shows: the table stays quiet, the object stream does not.
        let probed = on_node(pod("CrashLoopBackOff", 1, "2026-12-02T06:59:50Z", "b"));
        assert!(table.changed(&probed).is_empty());
        assert_eq!(json.changed(&probed), probed);
        // A restart: both print it.
        let restarted = on_node(pod("Error", 2, "2026-12-02T07:00:30Z", "b"));
        assert_eq!(table.changed(&restarted), restarted);
        assert_eq!(json.changed(&restarted), restarted);
        // Another node's pod of the same name is another pod.
        let elsewhere = vec![("node-2".to_owned(), restarted[0].1.clone())];
        assert_eq!(table.changed(&elsewhere), elsewhere);
    }

    #[test]
    fn a_watched_yaml_stream_parses_as_one_document_per_printed_pod() {
        use serde::Deserialize;
        let pod = |name: &str| {
            (
                "node-1".to_owned(),
                json!({"kind": "Pod", "metadata": {"name": name}}),
            )
        };
        let mut stream = watched_text(Format::Yaml, &[pod("a"), pod("b")], true).unwrap();
        stream.push_str(&watched_text(Format::Yaml, &[pod("a")], false).unwrap());
        let names: Vec<String> = serde_yaml::Deserializer::from_str(&stream)
            .map(|document| Value::deserialize(document).unwrap()["metadata"]["name"].to_string())
            .collect();
        assert_eq!(names, ["\"a\"", "\"b\"", "\"a\""], "{stream}");
        let stream = watched_text(Format::Json, &[pod("a"), pod("b")], true).unwrap();
        let names: Vec<Value> = serde_json::Deserializer::from_str(&stream)
            .into_iter::<Value>()
            .map(|object| object.unwrap()["metadata"]["name"].clone())
            .collect();
        assert_eq!(names, [json!("a"), json!("b")], "{stream}");
    }

    #[test]
    fn columns_follow_kubectl() {
        let now = time::OffsetDateTime::parse(
            "2026-12-02T07:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
        .unix_timestamp();
        let crashing = json!({
            "metadata": {"name": "web", "creationTimestamp": "2026-12-02T06:58:00Z"},
            "spec": {"containers": [{"name": "web"}]},
            "status": {"phase": "Running", "containerStatuses": [{
                "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2026-12-02T06:59:50Z"}}
            }]}
        });
        assert_eq!(
            columns(&crashing, now),
            ["0/1", "CrashLoopBackOff", "3 (10s ago)", "2m"]
        );
        let oom = json!({
            "metadata": {"name": "hog", "creationTimestamp": "2026-12-02T06:59:00Z"},
            "spec": {"containers": [{"name": "hog"}]},
            "status": {"phase": "Failed", "containerStatuses": [{
                "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
            }]}
        });
        assert_eq!(columns(&oom, now), ["0/1", "OOMKilled", "0", "60s"]);
    }

    #[test]
    fn init_containers_show_as_kubectl_shows_them() {
        let now = time::OffsetDateTime::parse(
            "2026-12-02T07:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
        .unix_timestamp();
        let pod = |init_statuses: Value, statuses: Value| {
            json!({
                "metadata": {"name": "web", "creationTimestamp": "2026-12-02T06:59:00Z"},
                "spec": {"initContainers": [{"name": "setup"}, {"name": "proxy", "restartPolicy": "Always"}],
                         "containers": [{"name": "web"}]},
                "status": {"phase": "Pending", "initContainerStatuses": init_statuses,
                           "containerStatuses": statuses}
            })
        };
        let waiting = |reason: &str| json!({"waiting": {"reason": reason}});
        let app_waiting = json!([{"name": "web", "ready": false, "restartCount": 0,
                                  "state": waiting("PodInitializing")}]);
        let first_runs = pod(
            json!([{"name": "setup", "restartCount": 0, "state": {"running": {}}},
                   {"name": "proxy", "restartCount": 0, "state": waiting("PodInitializing")}]),
            app_waiting.clone(),
        );
        assert_eq!(columns(&first_runs, now), ["0/2", "Init:0/2", "0", "60s"]);
        let failing = pod(
            json!([{"name": "setup", "restartCount": 2, "state": waiting("CrashLoopBackOff"),
                    "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2026-12-02T06:59:30Z"}}},
                   {"name": "proxy", "restartCount": 0, "state": waiting("PodInitializing")}]),
            app_waiting.clone(),
        );
        assert_eq!(
            columns(&failing, now),
            ["0/2", "Init:CrashLoopBackOff", "2 (30s ago)", "60s"]
        );
        let failed = pod(
            json!([{"name": "setup", "restartCount": 0, "state": {"terminated": {"exitCode": 3, "reason": "Error"}}},
                   {"name": "proxy", "restartCount": 0, "state": waiting("PodInitializing")}]),
            app_waiting,
        );
        assert_eq!(columns(&failed, now)[1], "Init:Error");
        let running = pod(
            json!([{"name": "setup", "restartCount": 1, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                   {"name": "proxy", "restartCount": 1, "ready": true, "started": true, "state": {"running": {}}}]),
            json!([{"name": "web", "ready": true, "restartCount": 0, "state": {"running": {}}}]),
        );
        // The sidecar counts among the containers and its restarts count; the completed
        // init container's do not.
        assert_eq!(columns(&running, now), ["2/2", "Running", "1", "60s"]);
    }
}
