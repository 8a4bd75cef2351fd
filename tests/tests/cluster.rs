//! End-to-end: a local cluster in QEMU, as `keelson-qemu cluster create` makes it. Three
//! nodes with no seeds find each other on their segment, form a control plane with no
//! bootstrap step and grow it to three voters; a node with another secret stays out; the
//! leader's power is cut and the others go on; it comes back and rejoins; a leader cut off
//! the segment loses the cluster to the majority and follows it after healing.
//!
//! Last, the fleet takes an update through the built-in FleetLock server, one node down at
//! a time.
//!
//! One boot of four VMs (in parallel) serves every check, to keep the suite's time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use keelson_qemu::cluster::{ClusterSpec, LocalCluster};
use serde_json::Value;

/// The guest port at which the nodes reach the test's update server.
const BUNDLE_PORT: u16 = 8088;

/// Four VMs boot at once under TCG on a small machine: formation has to wait for the
/// slowest boot.
const FORM_TIMEOUT: Duration = Duration::from_secs(900);

/// `keelctl -n <node> <arguments>` with the cluster's admin config: stdout, or the failure.
fn keelctl(cluster: &LocalCluster, node: &str, arguments: &[&str]) -> Result<String, String> {
    let endpoint = cluster.node(node).unwrap().endpoint();
    let output = std::process::Command::new(keelson_tests::keelctl_binary().unwrap())
        .arg("--keelconfig")
        .arg(cluster.keelconfig())
        .args(["-n", &endpoint])
        .args(arguments)
        .output()
        .unwrap();
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// `cluster status -o json` through `node`.
fn status(cluster: &LocalCluster, node: &str) -> Result<Value, String> {
    let text = keelctl(cluster, node, &["cluster", "status", "-o", "json"])?;
    let parsed: Value = serde_json::from_str(&text).map_err(|error| error.to_string())?;
    Ok(parsed[0].clone())
}

/// Polls until `check` accepts every listed node's status and they all name one leader,
/// or fails with the last answers. (Under TCG on a busy machine an election can come
/// between two nodes' answers, so agreement is part of what is waited for.)
fn wait_for_status(
    cluster: &LocalCluster,
    nodes: &[&str],
    timeout: Duration,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let answers: Vec<Result<Value, String>> =
            nodes.iter().map(|node| status(cluster, node)).collect();
        let agreed = answers
            .iter()
            .map(|answer| {
                answer
                    .as_ref()
                    .ok()
                    .and_then(|status| status["leader"].as_str().map(str::to_owned))
            })
            .collect::<BTreeSet<_>>()
            .len()
            == 1;
        if agreed
            && answers
                .iter()
                .all(|answer| answer.as_ref().is_ok_and(&check))
        {
            return answers.into_iter().map(Result::unwrap).collect();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {} s; last answers: {answers:?}",
            timeout.as_secs()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn names(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|name| name.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `get nodes -o json` through `via`: name → object.
fn nodes(cluster: &LocalCluster, via: &str) -> Result<BTreeMap<String, Value>, String> {
    let text = keelctl(cluster, via, &["get", "nodes", "-o", "json"])?;
    let list: Value = serde_json::from_str(&text).map_err(|error| error.to_string())?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|node| {
            (
                node["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                node.clone(),
            )
        })
        .collect())
}

/// Polls `get nodes` until `check` accepts the objects.
fn wait_for_nodes(
    cluster: &LocalCluster,
    via: &str,
    timeout: Duration,
    what: &str,
    check: impl Fn(&BTreeMap<String, Value>) -> bool,
) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = nodes(cluster, via);
        if let Ok(found) = &answer {
            if check(found) {
                return found.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {} s; last answer: {answer:?}",
            timeout.as_secs()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn pod_cidr(node: &Value) -> String {
    node["spec"]["podCIDR"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// One FleetLock request (as Zincati sends it) to `via`'s built-in server: the HTTP status
/// and the body.
fn fleet_lock(
    cluster: &LocalCluster,
    via: &str,
    path: &str,
    id: &str,
    group: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let url = cluster.node(via).unwrap().fleet_lock_url();
    let address = url.trim_start_matches("http://");
    let body = format!(r#"{{"client_params":{{"id":"{id}","group":"{group}"}}}}"#);
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: {address}\r\nfleet-lock-protocol: true\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

/// `cluster lock -o json`: each group's holders.
fn lock_holders(cluster: &LocalCluster, via: &str) -> BTreeMap<String, Vec<String>> {
    let text = keelctl(cluster, via, &["cluster", "lock", "-o", "json"]).unwrap();
    let parsed: Value = serde_json::from_str(&text).unwrap();
    parsed[0]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|group| {
            (
                group["group"].as_str().unwrap().to_owned(),
                names(&group["holders"]),
            )
        })
        .collect()
}

/// The members one node's gossip lists alive.
fn alive_members(cluster: &LocalCluster, node: &str) -> Vec<String> {
    let text = keelctl(cluster, node, &["cluster", "members", "-o", "json"]).unwrap();
    let parsed: Value = serde_json::from_str(&text).unwrap();
    parsed[0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|member| member["state"] == "alive")
        .map(|member| member["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn three_nodes_form_a_cluster_keep_it_through_a_power_cut_and_a_partition() {
    let image = keelson_tests::test_image();
    let dir = tempfile::Builder::new()
        .prefix("keelson-cluster-")
        .tempdir()
        .unwrap();
    let mut spec = ClusterSpec::new("e2e", 3, &image, dir.path());
    spec.strangers = 1;
    spec.relay_in_process = true;
    // Two slots for everyone (so that the quorum guard is what refuses a second voter),
    // one for the `solo` group.
    spec.reboot_lock = Some(keelson_config::model::RebootLockSlots {
        slots: Some(2),
        groups: BTreeMap::from([("solo".to_owned(), 1)]),
    });
    // Updates reboot through the cluster's own FleetLock server: no URL is given.
    spec.update = Some(keelson_config::model::UpdatePolicy {
        reboot_policy: Some(keelson_config::model::RebootPolicy::FleetLock),
        ..keelson_config::model::UpdatePolicy::default()
    });
    let (bundle, next_version) = keelson_tests::next_bundle();
    let bundle_server =
        keelson_tests::http::HttpServer::directory(bundle.parent().unwrap().to_owned());
    spec.host_services = vec![(BUNDLE_PORT, bundle_server.port)];
    let cluster = LocalCluster::create(&spec).unwrap();
    let all = ["e2e-1", "e2e-2", "e2e-3"];

    // Formation: no seeds, no bootstrap step; every node sees the others and a leader
    // exists, then the leader's upkeep makes all three voters.
    let started = Instant::now();
    cluster
        .wait_formed(FORM_TIMEOUT, |line| eprintln!("formation: {line}"))
        .unwrap();
    eprintln!("formed after {} s", started.elapsed().as_secs());
    let formed = wait_for_status(
        &cluster,
        &all,
        Duration::from_secs(120),
        "three voters",
        |status| names(&status["voters"]) == all && status["leader"] != "",
    );
    let leader = formed[0]["leader"].as_str().unwrap().to_owned();
    for answer in &formed {
        assert_eq!(answer["leader"], leader.as_str(), "one leader: {formed:?}");
        assert_eq!(
            answer["answeredBy"],
            leader.as_str(),
            "every node asks the leader: {formed:?}"
        );
        assert_eq!(names(&answer["learners"]), Vec::<String>::new());
    }
    let table = keelctl(&cluster, "e2e-2", &["cluster", "status"]).unwrap();
    assert!(table.contains("e2e-1,e2e-2,e2e-3"), "{table}");

    // Every node registers a v1/Node and is leased its own block of 10.244.0.0/16.
    let registered = wait_for_nodes(
        &cluster,
        "e2e-3",
        Duration::from_secs(120),
        "three registered nodes with pod CIDRs",
        |found| found.len() == 3 && found.values().all(|node| !pod_cidr(node).is_empty()),
    );
    let leases: BTreeMap<String, String> = registered
        .iter()
        .map(|(name, node)| (name.clone(), pod_cidr(node)))
        .collect();
    assert_eq!(
        leases.values().collect::<BTreeSet<_>>().len(),
        3,
        "one block each: {leases:?}"
    );
    for (name, node) in &registered {
        assert!(leases[name].starts_with("10.244.") && leases[name].ends_with(".0/24"));
        let address = &node["status"]["addresses"][0]["address"];
        assert_eq!(
            address.as_str(),
            Some(cluster.node(name).unwrap().address.to_string().as_str()),
            "the InternalIP is the segment address: {node}"
        );
    }
    // The kubelet takes its node's lease at once (no pod held an address yet): a pod on a
    // node leased another block than the default one gets its address from that block.
    if keelson_testkit::oci::ready_for(
        "cluster: a pod's address comes from its node's lease",
        false,
    ) {
        let (node, lease) = leases
            .iter()
            .find(|(_, lease)| lease.as_str() != "10.244.0.0/24")
            .expect("three nodes, three blocks");
        let work = tempfile::tempdir().unwrap();
        keelson_testkit::oci::busybox_layout(work.path()).unwrap();
        let archive = keelson_testkit::oci::archive(
            work.path(),
            keelson_testkit::oci::ArchiveKind::Oci,
            "image.tar",
            "example/busybox:1",
        )
        .unwrap();
        keelctl(
            &cluster,
            node,
            &["image", "import", archive.to_str().unwrap()],
        )
        .unwrap();
        keelctl(
            &cluster,
            node,
            &[
                "run",
                "leased",
                "--image",
                "example/busybox:1",
                "--",
                "sleep",
                "3600",
            ],
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let address = loop {
            let pod: Value = keelctl(&cluster, node, &["get", "pod", "leased", "-o", "json"])
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok())
                .unwrap_or_default();
            if let Some(address) = pod["status"]["podIP"].as_str() {
                break address.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "the pod never got an address: {pod}"
            );
            std::thread::sleep(Duration::from_secs(2));
        };
        let block = lease.trim_end_matches("0/24");
        assert!(
            address.starts_with(block),
            "{address} is not in {node}'s lease {lease}"
        );
        keelctl(&cluster, node, &["delete", "pod", "leased", "--now"]).unwrap();
    }
    let wide = keelctl(&cluster, "e2e-1", &["get", "nodes", "-o", "wide"]).unwrap();
    assert_eq!(
        wide.lines().filter(|line| line.contains(" Ready ")).count(),
        3,
        "{wide}"
    );

    // The built-in FleetLock server, on every node, decided by the leader: idempotent,
    // counted per group, and never letting a second voter of three reboot.
    let (code, body) = fleet_lock(&cluster, "e2e-3", "/v1/pre-reboot", "e2e-1", "default");
    assert_eq!(code, 200, "{body}");
    let (code, _) = fleet_lock(&cluster, "e2e-2", "/v1/pre-reboot", "e2e-1", "default");
    assert_eq!(code, 200, "asking again is granted again");
    let (code, body) = fleet_lock(&cluster, "e2e-1", "/v1/pre-reboot", "e2e-2", "default");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("failed_lock_quorum_at_risk"), "{body}");
    assert_eq!(lock_holders(&cluster, "e2e-2")["default"], ["e2e-1"]);
    let (code, body) = fleet_lock(&cluster, "e2e-1", "/v1/pre-reboot", "e2e-2", "solo");
    assert_eq!(code, 409, "a voter is down already: {body}");
    for _ in 0..2 {
        let (code, _) = fleet_lock(&cluster, "e2e-2", "/v1/steady-state", "e2e-1", "default");
        assert_eq!(code, 200, "giving back is idempotent");
    }
    let (code, body) = fleet_lock(&cluster, "e2e-1", "/v1/pre-reboot", "e2e-2", "solo");
    assert_eq!(code, 200, "{body}");
    let (code, body) = fleet_lock(&cluster, "e2e-1", "/v1/pre-reboot", "e2e-3", "solo");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("failed_lock_semaphore_full"), "{body}");
    let holders = lock_holders(&cluster, "e2e-3");
    assert_eq!(holders["solo"], ["e2e-2"]);
    assert!(holders["default"].is_empty(), "{holders:?}");
    let (code, _) = fleet_lock(&cluster, "e2e-3", "/v1/steady-state", "e2e-2", "solo");
    assert_eq!(code, 200);
    let lock_table = keelctl(&cluster, "e2e-1", &["cluster", "lock"]).unwrap();
    assert!(lock_table.starts_with("GROUP "), "{lock_table}");

    // The stranger (same cluster name, another secret) never joins, and says why.
    for node in all {
        let members = alive_members(&cluster, node);
        assert_eq!(members, all, "{node} lists exactly the members");
    }
    let stranger = "e2e-stranger-1";
    let stranger_view = alive_members(&cluster, stranger);
    assert_eq!(stranger_view, [stranger], "the stranger is alone");
    let stranger_status = status(&cluster, stranger).unwrap_or_default();
    assert!(
        names(&stranger_status["voters"]) != all,
        "the stranger is not in the cluster: {stranger_status}"
    );
    let console = cluster.console_tail(stranger, 400);
    assert!(
        console.contains("which this node does not hold"),
        "the stranger's console says why it hears no one: {console}"
    );

    // The leader's power goes: the other two elect a leader, and the API answers through
    // each of them. The dead voter keeps its seat (it may be rebooting).
    cluster.stop(&leader).unwrap();
    let survivors: Vec<&str> = all.iter().copied().filter(|n| *n != leader).collect();
    let cut_at = Instant::now();
    let after_cut = wait_for_status(
        &cluster,
        &survivors,
        Duration::from_secs(60),
        "a new leader after the power cut",
        |status| {
            let new_leader = status["leader"].as_str().unwrap_or_default();
            !new_leader.is_empty() && new_leader != leader
        },
    );
    eprintln!(
        "new leader {} after {:.1} s",
        after_cut[0]["leader"],
        cut_at.elapsed().as_secs_f64()
    );
    assert_eq!(after_cut[0]["leader"], after_cut[1]["leader"]);
    assert_eq!(names(&after_cut[0]["voters"]), all, "the seat is kept");
    let old_term = formed[0]["term"].as_u64().unwrap();
    assert!(after_cut[0]["term"].as_u64().unwrap() > old_term);

    let new_leader = after_cut[0]["leader"].as_str().unwrap().to_owned();
    // The leader keeps the dead node's object, no longer Ready once gossip declares it down.
    wait_for_nodes(
        &cluster,
        survivors[0],
        Duration::from_secs(60),
        "the dead node is not Ready",
        |found| {
            found[&leader]["status"]["conditions"][0]["status"] == "Unknown"
                && found[&new_leader]["status"]["conditions"][0]["status"] == "True"
        },
    );

    // It boots again from its disk and rejoins: it follows the new leader, is Ready again
    // and keeps its pod CIDR.
    cluster.boot(&leader).unwrap();
    wait_for_status(
        &cluster,
        &all,
        Duration::from_secs(600),
        "the rebooted node rejoins",
        |status| status["leader"] == new_leader.as_str() && names(&status["voters"]) == all,
    );
    let rejoined = wait_for_nodes(
        &cluster,
        &leader,
        Duration::from_secs(120),
        "the rebooted node is Ready again",
        |found| found[&leader]["status"]["conditions"][0]["status"] == "True",
    );
    assert_eq!(
        pod_cidr(&rejoined[&leader]),
        leases[&leader],
        "the same lease"
    );
    assert_eq!(
        rejoined[&leader]["metadata"]["uid"], registered[&leader]["metadata"]["uid"],
        "the same object"
    );

    // A partition: the leader is cut off the segment. The two others elect a leader in a
    // newer term; after healing, the cut-off node follows it.
    cluster.set_cut(&new_leader, true).unwrap();
    let majority: Vec<&str> = all.iter().copied().filter(|n| *n != new_leader).collect();
    let partitioned = wait_for_status(
        &cluster,
        &majority,
        Duration::from_secs(60),
        "the majority elects a leader",
        |status| {
            let leader = status["leader"].as_str().unwrap_or_default();
            !leader.is_empty() && leader != new_leader
        },
    );
    let majority_leader = partitioned[0]["leader"].as_str().unwrap().to_owned();
    let majority_term = partitioned[0]["term"].as_u64().unwrap();
    // The cut-off side acknowledges no write: deleting a node through it fails, and says
    // why; the object is still there after healing.
    let refused = keelctl(&cluster, &new_leader, &["delete", "node", &majority_leader])
        .expect_err("a write through the minority must not be acknowledged");
    assert!(refused.contains("majority"), "{refused}");
    cluster.set_cut(&new_leader, false).unwrap();
    let healed = wait_for_status(
        &cluster,
        &all,
        Duration::from_secs(120),
        "the cut-off node follows after healing",
        |status| status["leader"] != "" && status["term"].as_u64() >= Some(majority_term),
    );
    for answer in &healed {
        assert_eq!(
            answer["leader"], healed[0]["leader"],
            "one leader: {healed:?}"
        );
        assert_eq!(names(&answer["voters"]), all);
    }
    eprintln!(
        "after healing: leader {} (the majority had {majority_leader})",
        healed[0]["leader"]
    );
    let after_heal = nodes(&cluster, &new_leader).unwrap();
    assert_eq!(
        after_heal[&majority_leader]["metadata"]["uid"],
        registered[&majority_leader]["metadata"]["uid"],
        "the minority's delete never happened"
    );

    // Through any node, an operator deletes a node: its object and lease go; a node that
    // is still running registers again, as a new object, and gets the lowest free block
    // (its old one).
    let victim = "e2e-2";
    let deleted = keelctl(&cluster, "e2e-1", &["delete", "node", victim]).unwrap();
    assert_eq!(
        deleted.trim(),
        format!(
            "node \"{victim}\" deleted (pod CIDR {} is free)",
            leases[victim]
        )
    );
    let back = wait_for_nodes(
        &cluster,
        "e2e-3",
        Duration::from_secs(120),
        "the deleted node registers again",
        |found| {
            found.get(victim).is_some_and(|node| {
                node["metadata"]["uid"] != registered[victim]["metadata"]["uid"]
            })
        },
    );
    assert_eq!(pod_cidr(&back[victim]), leases[victim]);
    let missing = keelctl(&cluster, "e2e-3", &["delete", "node", "no-such-node"]).unwrap_err();
    assert!(missing.contains("no node no-such-node"), "{missing}");

    // A fleet update: every node installs the next release at once and reboots into it
    // only with a slot of the built-in lock. Two slots are configured, but all three are
    // voters, so the quorum guard lets one reboot at a time; gossip (seen from a majority)
    // never shows two nodes down together, and every node ends on the new release.
    let url = format!(
        "http://{}:{BUNDLE_PORT}/{}",
        keelson_qemu::GUEST_SERVICE_ADDRESS,
        bundle.file_name().unwrap().to_str().unwrap()
    );
    std::thread::scope(|scope| {
        for node in all {
            let (cluster, url) = (&cluster, &url);
            scope.spawn(move || {
                let installed = keelctl(cluster, node, &["upgrade", "--url", url]).unwrap();
                eprintln!("{node}: {}", installed.trim());
            });
        }
    });
    let started = Instant::now();
    let mut most_down = 0;
    let mut most_holders = 0;
    loop {
        // Ask each node; the nodes rebooting do not answer, the others do.
        let mut down_now = 0;
        let mut versions = BTreeMap::new();
        for node in all {
            let Ok(text) = keelctl(&cluster, node, &["cluster", "members", "-o", "json"]) else {
                continue;
            };
            let parsed: Value = serde_json::from_str(&text).unwrap();
            let members = parsed[0]["members"].as_array().cloned().unwrap_or_default();
            let down = members
                .iter()
                .filter(|member| member["state"] != "alive")
                .count();
            down_now = down_now.max(down);
            for member in members {
                if member["state"] == "alive" {
                    versions.insert(
                        member["name"].as_str().unwrap().to_owned(),
                        (member["version"].clone(), member["slot"].clone()),
                    );
                }
            }
        }
        most_down = most_down.max(down_now);
        if let Ok(text) = keelctl(&cluster, "e2e-1", &["cluster", "lock", "-o", "json"]) {
            let parsed: Value = serde_json::from_str(&text).unwrap();
            let holders: usize = parsed[0]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|group| names(&group["holders"]).len())
                .sum();
            most_holders = most_holders.max(holders);
        }
        let updated = all.iter().all(|node| {
            versions.get(*node) == Some(&(Value::from(next_version.as_str()), Value::from("b")))
        });
        if updated && most_holders > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the fleet did not finish its update: {versions:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "fleet updated to {next_version} in {} s; at most {most_down} node(s) down and {most_holders} slot(s) held at once",
        started.elapsed().as_secs()
    );
    assert!(most_down <= 1, "two nodes were down at once");
    assert!(most_holders <= 1, "two voters held reboot slots at once");
    // Every slot goes back once the nodes run their blessed new release.
    let deadline = Instant::now() + Duration::from_secs(180);
    while lock_holders(&cluster, "e2e-1")
        .values()
        .any(|holders| !holders.is_empty())
    {
        assert!(Instant::now() < deadline, "a slot was never given back");
        std::thread::sleep(Duration::from_secs(2));
    }
}
