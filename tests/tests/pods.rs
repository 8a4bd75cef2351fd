//! End-to-end: containers on a node, driven by keelctl as an operator would. An image
//! built on the host from Debian's busybox-static is imported; pods run from it and are
//! checked as a user checks them (get pods, logs, -o json): exit codes and reasons, a
//! memory limit ending in OOMKilled, the cgroup limits and namespaces a container sees,
//! eviction under memory and disk pressure with thresholds set live, restart policies
//! with the kubelet's backoff, an agent restart that leaves a container
//! running and loses none of its log lines, refusals, deletion, and a reboot that brings a
//! pod back. One VM for every check.

use std::time::{Duration, Instant};

use keelson_api::roles::Role;
use keelson_testkit::oci;
use keelson_tests::http::{HttpServer, Reply};
use keelson_tests::{expect_failure, expect_success, TestCluster, TestNode};
use serde_json::Value;

const IMAGE: &str = "example/busybox:1";
/// The node's pod CIDR (the config's `kubelet.podCIDR`).
const POD_CIDR: &str = "10.88.0.0/24";
/// The guest port of the host's service.
const OUTSIDE_PORT: u16 = 8500;

#[test]
fn pods_run_report_restart_survive_the_agent_and_come_back_after_a_reboot() {
    if !oci::ready_for(
        "pods_run_report_restart_survive_the_agent_and_come_back_after_a_reboot",
        false,
    ) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    oci::busybox_layout(work.path()).unwrap();
    // The config: see pods_config.
    let config =
        TestCluster::get().node_config_with("pods.yaml", |config| pods_config(config, "hello"));
    // A service on the host, which pods reach through the node's masquerade; and the
    // node's port 8080 (a pod's hostPort) forwarded to the host.
    let outside = HttpServer::start(|_| Reply::Bytes(200, b"from the host\n".to_vec()));
    let host_port = keelson_qemu::free_port().unwrap();
    let (mut node, _) = TestNode::boot_with(|options| {
        options.config = Some(config);
        options.host_services = vec![(OUTSIDE_PORT, outside.port)];
        options.forwards = vec![(host_port, 8080)];
        // STATE grows to fill the disk: room for the disk pressure check to fill.
        options.disk_bytes = Some(1 << 30);
    })
    .unwrap();
    let pods = Pods { node: &node };
    node.import_layout(work.path(), IMAGE).unwrap();

    // A container that writes to both streams and fails.
    pods.run(&[
        "hello",
        "--restart",
        "Never",
        "--",
        "sh",
        "-c",
        "echo hello from a container; echo oops >&2; exit 3",
    ]);
    let hello = pods.wait_for("hello", "to fail", |pod| pod["status"]["phase"] == "Failed");
    let terminated = &hello["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["exitCode"], 3, "{hello:#}");
    assert_eq!(terminated["reason"], "Error", "{hello:#}");
    assert_eq!(hello["apiVersion"], "v1");
    assert_eq!(hello["kind"], "Pod");
    assert_eq!(hello["metadata"]["labels"]["run"], "hello");
    // Two streams, two pipes: their relative order is not kept (as with any runtime).
    let mut lines: Vec<String> = pods.logs(&["hello"]).lines().map(str::to_owned).collect();
    lines.sort();
    assert_eq!(lines, ["hello from a container", "oops"]);

    // What a container sees: its own hostname, network (loopback and the pod's eth0), PID
    // namespace and cgroup limits.
    pods.run(&[
        "inside", "--restart", "Never", "--memory", "64Mi", "--cpu", "500m", "--env", "GREETING=hi", "--",
        "sh", "-c",
        "echo host=$(busybox hostname) pid=$$ $GREETING; busybox ls /sys/class/net; \
         busybox cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max /sys/fs/cgroup/memory.swap.max; \
         busybox grep -E '^(CapEff|Seccomp):' /proc/self/status",
    ]);
    pods.wait_for("inside", "to complete", |pod| {
        pod["status"]["phase"] == "Succeeded"
    });
    let inside = pods.logs(&["inside"]);
    assert_eq!(
        inside,
        "host=inside pid=1 hi\neth0\nlo\n67108864\n50000 100000\n0\nCapEff:\t00000000a80425fb\nSeccomp:\t2\n"
    );

    // hostNetwork: the node's network namespace and hostname, and the node's address as
    // the pod's.
    pods.run(&[
        "hostnet",
        "--host-network",
        "--restart",
        "Never",
        "--",
        "sh",
        "-c",
        "busybox hostname; busybox ls /sys/class/net",
    ]);
    let hostnet = pods.wait_for("hostnet", "to finish", |pod| {
        pod["status"]["phase"] == "Succeeded" || pod["status"]["phase"] == "Failed"
    });
    assert_eq!(hostnet["status"]["phase"], "Succeeded", "{hostnet:#}");
    let status = node.status().unwrap();
    let node_addresses: Vec<&str> = status
        .addresses
        .iter()
        .filter_map(|address| address.address.split('/').next())
        .collect();
    let host_ip = hostnet["status"]["hostIP"].as_str().unwrap_or_default();
    assert!(
        node_addresses.contains(&host_ip),
        "hostIP {host_ip:?} is not one of {node_addresses:?}"
    );
    assert_eq!(hostnet["status"]["podIP"], host_ip, "{hostnet:#}");
    let output = pods.logs(&["hostnet"]);
    let mut lines = output.lines();
    assert_eq!(lines.next(), Some(status.hostname.as_str()), "{output}");
    let links: Vec<&str> = lines.collect();
    assert!(
        links.contains(&"lo") && links.len() >= 2,
        "the node's links: {output}"
    );

    // A program the image lacks: the pod fails to start and says why, as the kubelet does.
    pods.run(&["nocmd", "--restart", "Never", "--", "nginx"]);
    let nocmd = pods.wait_for("nocmd", "to fail", |pod| pod["status"]["phase"] == "Failed");
    let terminated = &nocmd["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["reason"], "StartError", "{nocmd:#}");
    assert_eq!(terminated["exitCode"], 128, "{nocmd:#}");
    let message = terminated["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("executable file \"nginx\" not found in $PATH"),
        "{nocmd:#}"
    );

    let yaml = expect_success(
        node.keelctl(Role::Reader, &["get", "pod", "hostnet", "-o", "yaml"])
            .unwrap(),
        "get pod -o yaml",
    );
    for expected in [
        "apiVersion: v1\n",
        "kind: Pod\n",
        "  hostNetwork: true\n",
        "  phase: Succeeded\n",
    ] {
        assert!(yaml.contains(expected), "{expected:?} not in:\n{yaml}");
    }

    // A manifest applied as a user writes one, with a security context.
    let manifests = work.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let manifest = manifests.join("pod.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: applied\n  labels:\n    app: demo\nspec:\n  \
             restartPolicy: Never\n  securityContext:\n    seccompProfile:\n      type: Unconfined\n  \
             containers:\n  - name: main\n    image: {IMAGE}\n    command: [sh, -c]\n    \
             args: [\"busybox grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status\"]\n    \
             securityContext:\n      allowPrivilegeEscalation: false\n"
        ),
    )
    .unwrap();
    let applied = expect_success(
        node.keelctl(Role::Operator, &["apply", "-f", manifest.to_str().unwrap()])
            .unwrap(),
        "apply -f",
    );
    assert_eq!(applied.trim(), "pod/applied created");
    let again = expect_success(
        node.keelctl(
            Role::Operator,
            &["apply", "-f", manifests.to_str().unwrap()],
        )
        .unwrap(),
        "apply -f DIR, again",
    );
    assert_eq!(again.trim(), "pod/applied unchanged");
    pods.wait_for("applied", "to complete", |pod| {
        pod["status"]["phase"] == "Succeeded"
    });
    assert_eq!(pods.logs(&["applied"]), "NoNewPrivs:\t1\nSeccomp:\t0\n");

    // hostUsers: false: a user namespace of the pod's own, the first block of node ids
    // past the node's, with the image's files seen as its root's; exec joins it too.
    let isolated = work.path().join("isolated.yaml");
    let isolated_manifest = |host_network: bool| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: isolated\nspec:\n  hostUsers: false\n  \
             hostNetwork: {host_network}\n  containers:\n  - name: main\n    image: {IMAGE}\n    \
             command: [sh, -c]\n    args: [\"busybox cat /proc/self/uid_map; busybox id -u; \
             busybox stat -c %u /bin/busybox; busybox touch /bin/made-here && echo wrote; \
             exec busybox sleep 3600\"]\n"
        )
    };
    std::fs::write(&isolated, isolated_manifest(true)).unwrap();
    let refused = expect_failure(
        node.keelctl(Role::Operator, &["apply", "-f", isolated.to_str().unwrap()])
            .unwrap(),
        "apply hostUsers: false with hostNetwork",
    );
    assert!(
        refused.contains("spec.hostUsers: false cannot be combined with spec.hostNetwork: true"),
        "{refused}"
    );
    std::fs::write(&isolated, isolated_manifest(false)).unwrap();
    expect_success(
        node.keelctl(Role::Operator, &["apply", "-f", isolated.to_str().unwrap()])
            .unwrap(),
        "apply hostUsers: false",
    );
    pods.wait_for("isolated", "to run", |pod| {
        pod["status"]["phase"] == "Running"
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = pods.logs(&["isolated"]);
    while !seen.contains("wrote") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        seen = pods.logs(&["isolated"]);
    }
    let words: Vec<&str> = seen.split_whitespace().collect();
    assert_eq!(words, ["0", "65536", "65536", "0", "0", "wrote"], "{seen}");
    let (code, stdout) = pods.exec(
        &[
            "isolated",
            "--",
            "sh",
            "-c",
            "busybox cat /proc/self/uid_map; busybox id -u",
        ],
        None,
    );
    let words: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(
        (code, words),
        (Some(0), vec!["0", "65536", "65536", "0"]),
        "{stdout}"
    );
    expect_success(
        node.keelctl(Role::Operator, &["delete", "pod", "isolated"])
            .unwrap(),
        "delete pod isolated",
    );

    // A pod of several containers: an init container runs to completion first, a sidecar
    // (an init container with restartPolicy: Always) starts next and keeps running, then
    // both app containers, all in the pod's network, IPC and UTS namespaces.
    let stack = pods.apply(
        "stack.yaml",
        &include_str!("../manifests/stack.yaml").replace("IMAGE", IMAGE),
    );
    assert_eq!(stack, "pod/stack created");
    let running = pods.wait_for("stack", "to run its containers", |pod| {
        let ready = |status: &Value| status["ready"] == true;
        pod["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|all| all.iter().all(ready))
    });
    let setup = &running["status"]["initContainerStatuses"][0];
    assert_eq!(
        setup["state"]["terminated"]["reason"], "Completed",
        "{running:#}"
    );
    let finished = setup["state"]["terminated"]["finishedAt"].as_str().unwrap();
    for app in 0..2 {
        let started = running["status"]["containerStatuses"][app]["state"]["running"]["startedAt"]
            .as_str()
            .unwrap();
        assert!(
            finished <= started,
            "an app container started before setup ended: {running:#}"
        );
    }
    let proxy = &running["status"]["initContainerStatuses"][1];
    assert!(
        proxy["state"]["running"].is_object() && proxy["ready"] == true,
        "{running:#}"
    );
    // The sidecar's startup probe (4 s before its first try) held the app containers.
    let seconds = |status: &Value| {
        let text = status["state"]["running"]["startedAt"].as_str().unwrap();
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp()
    };
    let held = seconds(&running["status"]["containerStatuses"][0]) - seconds(proxy);
    assert!(
        held >= 3,
        "the app started {held} s after the sidecar, before its startup probe: {running:#}"
    );
    let conditions: Vec<(String, String)> = running["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|condition| {
            (
                condition["type"].as_str().unwrap().to_owned(),
                condition["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        conditions.contains(&("Initialized".into(), "True".into())),
        "{conditions:?}"
    );
    assert!(
        conditions.contains(&("Ready".into(), "True".into())),
        "{conditions:?}"
    );
    let row = pods.row("stack");
    assert_eq!(row[1..3], ["3/3", "Running"], "{row:?}");
    assert_eq!(pods.logs(&["stack", "-c", "setup"]), "setup ran\n");
    // The sidecar serves, on the pod's loopback, the page the init container wrote into
    // their emptyDir.
    let sidecar_page = |path: &str| {
        let url = format!("http://127.0.0.1:8080/{path}");
        let (code, page) = pods.exec(
            &[
                "stack", "-c", "shell", "--", "busybox", "wget", "-qO-", &url,
            ],
            None,
        );
        assert_eq!(code, Some(0), "wget {url}: {page}");
        page
    };
    assert_eq!(sidecar_page(""), "from the init container\n");
    // The downward API as variables and files, a memory-backed emptyDir of its size
    // limit, a subPath made in its volume, and a hostPath on the node.
    let script = "echo $POD_NAME $MEMORY_MI; cat /etc/podinfo/labels; \
                  (echo x > /etc/podinfo/x) 2>/dev/null || echo podinfo is read-only; \
                  busybox grep -E ' /cache ' /proc/mounts | busybox cut -d' ' -f3,4; \
                  echo written by web > /shared/hello; busybox ls -d /site; \
                  echo page > /site/sub.html";
    let (code, seen) = pods.exec(&["stack", "-c", "web", "--", "sh", "-c", script], None);
    assert_eq!(code, Some(0), "{seen}");
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "stack 32",
            "app=\"stack\"",
            "tier=\"demo\"",
            "podinfo is read-only",
        ],
        "{seen}"
    );
    assert!(
        lines[4].starts_with("tmpfs rw,nosuid,nodev") && lines[4].contains("size=1024k"),
        "{seen}"
    );
    assert_eq!(lines[5], "/site", "{seen}");
    let on_node = expect_success(
        node.keelctl(Role::Reader, &["read", "/var/demo/hello"])
            .unwrap(),
        "read the hostPath's file on the node",
    );
    assert_eq!(on_node, "written by web\n");
    // The subPath is a directory of the emptyDir, which the sidecar serves from.
    assert_eq!(sidecar_page("pages/sub.html"), "page\n");
    // The pod network: an address of the config's pod CIDR, the sidecar's hostPort
    // reached from the host through the node, another pod reaching it by its address,
    // the node by its gateway address, and the host through the node's masquerade.
    let address = running["status"]["podIP"].as_str().unwrap().to_owned();
    assert!(address.starts_with("10.88.0."), "{running:#}");
    assert_eq!(running["status"]["podIPs"][0]["ip"], address.as_str());
    let from_host = fetch(&format!("http://127.0.0.1:{host_port}/"));
    assert_eq!(from_host, "from the init container\n");
    pods.run(&["neighbour", "--", "busybox", "sleep", "3600"]);
    let neighbour = pods.wait_for("neighbour", "to run", |pod| {
        pod["status"]["containerStatuses"][0]["ready"] == true
    });
    let neighbour_address = neighbour["status"]["podIP"].as_str().unwrap();
    assert_ne!(neighbour_address, address, "two pods, two addresses");
    let script = format!(
        "busybox wget -qO- http://{address}:8080/; \
         echo | busybox nc -w 3 10.88.0.1 50000 >/dev/null && echo reached the node; \
         busybox wget -qO- http://10.0.2.100:{OUTSIDE_PORT}/; \
         busybox grep -v '^#' /etc/hosts | busybox grep neighbour; busybox cat /etc/resolv.conf"
    );
    let (code, seen) = pods.exec(&["neighbour", "--", "sh", "-c", &script], None);
    assert_eq!(code, Some(0), "{seen}");
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "from the init container",
            "reached the node",
            "from the host",
            &format!("{neighbour_address}\tneighbour"),
        ],
        "{seen}"
    );
    // The pod's resolver is the node's (as Machine.Status reports it).
    let status = node.status().unwrap();
    let nameservers: Vec<String> = lines[4..]
        .iter()
        .filter_map(|line| line.strip_prefix("nameserver "))
        .map(str::to_owned)
        .collect();
    assert_eq!(nameservers, status.dns_servers, "{seen}");
    assert_eq!(nameservers, ["10.0.2.3"], "{seen}");
    assert!(lines.contains(&"search example.test"), "{seen}");
    expect_success(
        node.keelctl(Role::Operator, &["delete", "pod", "neighbour", "--now"])
            .unwrap(),
        "delete pod neighbour",
    );

    // -o wide adds the pod's address and node.
    let wide = expect_success(
        node.keelctl(Role::Reader, &["get", "pods", "-o", "wide"])
            .unwrap(),
        "get pods -o wide",
    );
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap()
        .split("  ")
        .filter(|h| !h.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED NODE",
            "READINESS GATES"
        ],
        "{wide}"
    );
    let stack_row = wide
        .lines()
        .find(|line| line.starts_with("stack "))
        .unwrap();
    assert!(stack_row.contains(&format!(" {address} ")), "{wide}");
    let node_name = node.status().unwrap().hostname;
    assert!(stack_row.contains(&format!(" {node_name} ")), "{wide}");

    // Static pods: a whole manifest and the short form from the config, and a manifest
    // file the config wrote, each named after the node and marked as static.
    for name in ["keeper", "note", "extra"] {
        let pod = pods.wait_for(
            &format!("{name}-{node_name}"),
            "to run as a static pod",
            |pod| pod["status"]["containerStatuses"][0]["ready"] == true,
        );
        assert_eq!(
            pod["metadata"]["annotations"]["kubernetes.io/config.source"], "file",
            "{pod:#}"
        );
    }
    let keeper = format!("keeper-{node_name}");
    let keeper_pod = pods.get(&keeper).unwrap();
    assert_eq!(keeper_pod["metadata"]["labels"]["tier"], "node");
    assert_eq!(
        keeper_pod["metadata"]["annotations"]["keelson.dev/static-pod-origin"],
        "machine config staticPods[0]"
    );
    assert_eq!(
        pods.get(&format!("extra-{node_name}")).unwrap()["metadata"]["annotations"]
            ["keelson.dev/static-pod-origin"],
        "/etc/keelson/manifests/extra.yaml"
    );
    assert_eq!(pods.logs(&[&format!("note-{node_name}")]), "hello\n");
    pods.refused(
        &["delete", "pod", &keeper],
        &format!("pod default/{keeper} is a static pod from machine config staticPods[0]: it cannot be deleted through the API"),
    );
    let refused = pods.apply_refused(
        "impostor.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {keeper}\nspec:\n  containers:\n  - name: main\n    image: {IMAGE}\n"),
    );
    assert!(
        refused.contains("cannot be replaced through the API"),
        "{refused}"
    );
    // A config change replaces the static pod whose manifest changed, and only it.
    let note_uid = pods.get(&format!("note-{node_name}")).unwrap()["metadata"]["uid"].clone();
    let keeper_uid = keeper_pod["metadata"]["uid"].clone();
    let changed = TestCluster::get()
        .node_config_with("pods-changed.yaml", |config| pods_config(config, "bonjour"));
    pods.apply_config_live(&changed, "a changed static pod");
    let note = pods.wait_for(&format!("note-{node_name}"), "to be replaced", |pod| {
        pod["metadata"]["uid"] != note_uid && pod["status"]["containerStatuses"][0]["ready"] == true
    });
    assert_eq!(note["spec"]["containers"][0]["env"][0]["value"], "bonjour");
    assert_eq!(pods.logs(&[&format!("note-{node_name}")]), "bonjour\n");
    assert_eq!(pods.get(&keeper).unwrap()["metadata"]["uid"], keeper_uid);

    // Probes and hooks: the startup probe passes once httpd listens, the readiness probe
    // keeps the pod out of Ready until its page exists, postStart has run, and the
    // liveness probe restarts the container (its preStop hook first) once /tmp/alive goes.
    assert_eq!(
        pods.apply(
            "probed.yaml",
            &include_str!("../manifests/probed.yaml").replace("IMAGE", IMAGE),
        ),
        "pod/probed created"
    );
    let web_status = |pod: &Value| pod["status"]["containerStatuses"][0].clone();
    let probed = pods.wait_for("probed", "to pass its startup probe", |pod| {
        web_status(pod)["started"] == true
    });
    assert_eq!(web_status(&probed)["ready"], false, "{probed:#}");
    assert_eq!(pods.row("probed")[1], "0/1");
    let (code, said) = pods.exec(&["probed", "--", "busybox", "cat", "/tmp/poststart"], None);
    assert_eq!((code, said.as_str()), (Some(0), "started\n"));
    let unready = pods.describe("probed");
    assert!(
        unready.contains("Readiness probe failed: HTTP probe failed with statuscode: 404"),
        "{unready}"
    );
    let (code, _) = pods.exec(
        &["probed", "--", "sh", "-c", "echo ok > /www/ready.html"],
        None,
    );
    assert_eq!(code, Some(0));
    let ready = pods.wait_for("probed", "to be ready", |pod| {
        web_status(pod)["ready"] == true
    });
    let condition = |pod: &Value, kind: &str| {
        pod["status"]["conditions"]
            .as_array()
            .and_then(|all| all.iter().find(|condition| condition["type"] == kind))
            .map(|condition| condition["status"].clone())
    };
    assert_eq!(condition(&ready, "Ready"), Some("True".into()), "{ready:#}");
    assert_eq!(pods.row("probed")[1], "1/1");
    let (code, _) = pods.exec(&["probed", "--", "busybox", "rm", "/tmp/alive"], None);
    assert_eq!(code, Some(0));
    let restarted = pods.wait_for("probed", "to be restarted by its liveness probe", |pod| {
        web_status(pod)["restartCount"] == 1 && web_status(pod)["started"] == true
    });
    // A new run starts unready: its page went with the old run's root.
    assert_eq!(web_status(&restarted)["ready"], false, "{restarted:#}");
    let described = pods.describe("probed");
    for expected in [
        "Liveness probe failed: command \"busybox cat /tmp/alive\" exited with 1",
        "Container web failed liveness probe, will be restarted",
    ] {
        assert!(
            described.contains(expected),
            "{expected:?} not in:\n{described}"
        );
    }
    let prestop = expect_success(
        node.keelctl(Role::Reader, &["read", "/var/demo/prestop"])
            .unwrap(),
        "read /var/demo/prestop",
    );
    assert_eq!(
        prestop, "stopping\n",
        "preStop ran once, before the liveness kill"
    );
    // The probes' fields are checked as the API server checks them.
    let refused = pods.apply_refused(
        "bad-probe.yaml",
        &include_str!("../manifests/probed.yaml")
            .replace("IMAGE", IMAGE)
            .replace("name: probed", "name: badly-probed")
            .replace("failureThreshold: 2", "failureThreshold: 0"),
    );
    assert!(
        refused.contains("spec.containers[0].livenessProbe: failureThreshold 0 must be at least 1"),
        "{refused}"
    );
    assert!(pods.get("badly-probed").is_none());
    // One network, IPC and UTS namespace for the pod; a mount namespace per container.
    let namespaces = |container: &str| {
        let script = "for n in net ipc uts mnt; do busybox readlink /proc/self/ns/$n; done; busybox hostname";
        let (code, seen) = pods.exec(&["stack", "-c", container, "--", "sh", "-c", script], None);
        assert_eq!(code, Some(0), "{seen}");
        seen.lines().map(str::to_owned).collect::<Vec<_>>()
    };
    let (web, shell, sidecar) = (namespaces("web"), namespaces("shell"), namespaces("proxy"));
    assert_eq!(web[..3], shell[..3]);
    assert_eq!(web[..3], sidecar[..3]);
    assert_eq!(web[4], "stack");
    assert_ne!(web[3], shell[3], "two containers share a root");
    pods.refused(
        &["exec", "stack", "-c", "nope", "--", "true"],
        "container nope is not valid for pod stack: its containers are setup, proxy, web, shell",
    );
    let described = expect_success(
        node.keelctl(Role::Reader, &["describe", "pod", "stack"])
            .unwrap(),
        "describe pod stack",
    );
    assert!(
        described.contains("Init Containers:\n  setup:\n"),
        "{described}"
    );
    // An init container that fails under restartPolicy: Never fails the pod, and the app
    // container never starts.
    pods.apply(
        "initfail.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: initfail\nspec:\n  restartPolicy: Never\n  \
             initContainers:\n  - name: check\n    image: {IMAGE}\n    command: [sh, -c, 'exit 3']\n  \
             containers:\n  - name: app\n    image: {IMAGE}\n"
        ),
    );
    let failed = pods.wait_for("initfail", "to fail", |pod| {
        pod["status"]["phase"] == "Failed"
    });
    assert_eq!(
        failed["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"], 3,
        "{failed:#}"
    );
    assert_eq!(
        failed["status"]["containerStatuses"][0]["state"]["waiting"]["reason"], "PodInitializing",
        "{failed:#}"
    );
    assert_eq!(pods.row("initfail")[2], "Init:Error");
    pods.refused(
        &["logs", "initfail", "-c", "app"],
        "container app in pod initfail has not started yet",
    );
    // Two containers of one name: refused by the field, nothing created.
    let duplicate = work.path().join("duplicate.yaml");
    std::fs::write(
        &duplicate,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: twins\nspec:\n  containers:\n  \
             - name: a\n    image: {IMAGE}\n  - name: a\n    image: {IMAGE}\n"
        ),
    )
    .unwrap();
    pods.refused(
        &["apply", "-f", duplicate.to_str().unwrap()],
        "spec.containers[1].name: Duplicate value \"a\"",
    );
    assert!(pods.get("twins").is_none());

    // Following a log returns what the run writes, until it ends.
    pods.run(&[
        "follow",
        "--restart",
        "Never",
        "--",
        "sh",
        "-c",
        "busybox sleep 2; for i in 1 2 3; do echo line $i; busybox sleep 1; done",
    ]);
    pods.wait_for("follow", "to run", |pod| {
        pod["status"]["containerStatuses"][0]["ready"] == true
    });
    assert_eq!(pods.logs(&["follow", "-f"]), "line 1\nline 2\nline 3\n");

    // Logs rotate at the config's limits (16Ki, 2 files): following reads on through
    // every rotation and loses nothing; afterwards the run keeps only its newest lines.
    let padding = "x".repeat(60);
    let padding = format!("PADDING={padding}");
    pods.run(&[
        "chatty",
        "--restart",
        "Never",
        "--env",
        &padding,
        "--",
        "sh",
        "-c",
        "busybox sleep 2; i=0; while [ $i -lt 400 ]; do echo \"line $i $PADDING\"; i=$((i+1)); \
         [ $((i % 10)) -eq 0 ] && busybox sleep 0.1; done; true",
    ]);
    pods.wait_for("chatty", "to run", |pod| {
        pod["status"]["containerStatuses"][0]["ready"] == true
    });
    let number_of =
        |line: &str| -> usize { line.split_whitespace().nth(1).unwrap().parse().unwrap() };
    let followed = pods.logs(&["chatty", "-f", "-c", "chatty"]);
    let numbers: Vec<usize> = followed.lines().map(number_of).collect();
    assert_eq!(numbers, (0..400).collect::<Vec<_>>(), "{followed}");
    let kept = pods.logs(&["chatty"]);
    let numbers: Vec<usize> = kept.lines().map(number_of).collect();
    assert!(
        numbers.first() > Some(&0) && numbers.last() == Some(&399),
        "the oldest lines went with the rotated files: {numbers:?}"
    );
    assert!(
        numbers.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "{numbers:?}"
    );
    assert!(kept.len() < 2 * 16 * 1024, "{} bytes kept", kept.len());
    // --since: the lines of the last hour are all of them; none are after a future time.
    assert_eq!(pods.logs(&["chatty", "--since", "1h"]), kept);
    assert_eq!(
        pods.logs(&["chatty", "--since-time", "2099-01-01T00:00:00Z"]),
        ""
    );
    let wrong = expect_failure(
        node.keelctl(Role::Reader, &["logs", "chatty", "-c", "sidecar"])
            .unwrap(),
        "logs of a container the pod lacks",
    );
    assert!(
        wrong.contains("container sidecar is not valid for pod chatty"),
        "{wrong}"
    );

    // A memory limit the container passes: the kernel kills it and the pod says why.
    pods.run(&[
        "hog",
        "--restart",
        "Never",
        "--memory",
        "16Mi",
        "--",
        "sh",
        "-c",
        "busybox dd if=/dev/zero of=/dev/shm/fill bs=1M count=48",
    ]);
    let hog = pods.wait_for("hog", "to be killed", |pod| {
        pod["status"]["phase"] == "Failed"
    });
    let terminated = &hog["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["reason"], "OOMKilled", "{hog:#}");
    assert_eq!(terminated["exitCode"], 137, "{hog:#}");
    let table = pods.table();
    assert!(
        table
            .lines()
            .any(|line| line.starts_with("hog ") && line.contains(" OOMKilled ")),
        "{table}"
    );

    check_eviction(&pods, &keeper, work.path());

    // top: a container that fills 24 MiB of its /dev/shm and spins shows that memory and
    // a busy CPU; the per-container rows name it.
    pods.run(&[
        "spinner",
        "--",
        "sh",
        "-c",
        "busybox dd if=/dev/zero of=/dev/shm/fill bs=1M count=24 && while :; do :; done",
    ]);
    pods.wait_for("spinner", "to run", |pod| {
        pod["status"]["containerStatuses"][0]["ready"] == true
    });
    std::thread::sleep(Duration::from_secs(2));
    let top = expect_success(
        node.keelctl(Role::Reader, &["top", "pods", "spinner", "--containers"])
            .unwrap(),
        "top pods",
    );
    let mut lines = top.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["POD", "NAME", "CPU(cores)", "MEMORY(bytes)"],
        "{top}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let number = |text: &str, unit: &str| -> u64 {
        text.strip_suffix(unit)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{top}"))
    };
    assert_eq!(row[..2], ["spinner", "spinner"], "{top}");
    assert!(
        number(row[2], "m") >= 200,
        "a spinning container uses a core: {top}"
    );
    assert!(
        (24..64).contains(&number(row[3], "Mi")),
        "24 MiB of shm and a shell: {top}"
    );
    let all = expect_success(
        node.keelctl(Role::Reader, &["top", "pods"]).unwrap(),
        "top pods",
    );
    assert!(
        all.lines().any(|line| line.starts_with("spinner ")),
        "{all}"
    );
    assert!(all.lines().any(|line| line.starts_with("stack ")), "{all}");
    expect_success(
        node.keelctl(
            Role::Operator,
            &["delete", "pod", "spinner", "--grace-period", "1"],
        )
        .unwrap(),
        "delete pod spinner",
    );

    // Restart policies: OnFailure leaves a success alone; Always restarts with backoff.
    pods.run(&["once", "--restart", "OnFailure", "--", "sh", "-c", "exit 0"]);
    let once = pods.wait_for("once", "to complete", |pod| {
        pod["status"]["phase"] == "Succeeded"
    });
    assert_eq!(once["status"]["containerStatuses"][0]["restartCount"], 0);
    pods.run(&[
        "crasher",
        "--",
        "sh",
        "-c",
        "echo run at $(busybox date +%s); exit 1",
    ]);
    // `get -w` follows it meanwhile, as kubectl's watch does: a row per change, and
    // with `-o json` the whole object each time it changes.
    let table_watch = Watch::start(&node, &["get", "pods", "crasher", "-w"]);
    let json_watch = Watch::start(&node, &["get", "pods", "crasher", "-w", "-o", "json"]);
    // The kubelet's backoff: 10 s after the first exit, 20 s after the second. Each run
    // shows as lastState once it has ended (they end 10 s apart or more: none is missed).
    let run_of = |pod: &Value| {
        let last = &pod["status"]["containerStatuses"][0]["lastState"]["terminated"];
        let at = |field: &str| {
            let text = last[field].as_str()?;
            let parsed =
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339);
            Some(parsed.unwrap().unix_timestamp())
        };
        Some((at("startedAt")?, at("finishedAt")?))
    };
    let mut runs: Vec<(i64, i64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    while runs.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "runs seen: {runs:?}\n{}",
            pods.describe("crasher")
        );
        if let Some(run) = pods.get("crasher").as_ref().and_then(run_of) {
            if runs.last() != Some(&run) {
                runs.push(run);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    table_watch.wait_until("a row with 2 restarts", |printed| {
        printed
            .lines()
            .any(|row| row.split_whitespace().nth(3) == Some("2"))
    });
    json_watch.wait_until("restartCount 2", |printed| {
        printed.contains("\"restartCount\": 2")
    });
    check_watch(&table_watch.stop());
    check_json_watch(&json_watch.stop());
    let (first_wait, second_wait) = (runs[1].0 - runs[0].1, runs[2].0 - runs[1].1);
    assert!(
        (10..20).contains(&first_wait) && (20..40).contains(&second_wait),
        "the backoff waited {first_wait} s, then {second_wait} s (10 s, then 20 s, and the time to start): {runs:?}"
    );
    let crasher = pods.get("crasher").unwrap();
    let last = &crasher["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(
        (last["exitCode"].as_i64(), last["reason"].as_str()),
        (Some(1), Some("Error")),
        "{crasher:#}"
    );
    assert!(pods.logs(&["crasher", "--previous"]).starts_with("run at "));
    // describe: the container's states and the kubelet's events, repeats folded.
    let described = expect_success(
        node.keelctl(Role::Reader, &["describe", "pod", "crasher"])
            .unwrap(),
        "describe pod",
    );
    for expected in [
        "Name:             crasher\n",
        "    Last State:     Terminated\n      Reason:       Error\n      Exit Code:    1\n",
        "Container image \"example/busybox:1\" already present on machine",
        "Created container: crasher",
        "Back-off restarting failed container crasher in pod crasher_default(",
    ] {
        assert!(
            described.contains(expected),
            "{expected:?} not in:\n{described}"
        );
    }
    let started = described
        .lines()
        .find(|line| line.contains("Started container crasher"))
        .unwrap_or_else(|| panic!("no Started event:\n{described}"));
    assert!(
        started.contains("(x"),
        "the runs' Started events fold into one: {started}"
    );

    // A long-running container keeps running while the agent restarts, and none of the
    // lines it wrote meanwhile is lost.
    pods.run(&[
        "ticker",
        "--",
        "sh",
        "-c",
        "i=0; while true; do echo tick $i; i=$((i+1)); busybox sleep 0.2; done",
    ]);
    let before = pods.wait_for("ticker", "to run", |pod| {
        pod["status"]["containerStatuses"][0]["ready"] == true
    });
    let started = before["status"]["containerStatuses"][0]["state"]["running"]["startedAt"].clone();
    let stack_before = pods.get("stack").unwrap()["status"].clone();
    let keeper = format!("keeper-{node_name}");
    let keeper_before = pods.get(&keeper).unwrap()["status"].clone();
    expect_success(
        node.keelctl(Role::Operator, &["services", "restart", "keelsond"])
            .unwrap(),
        "services restart keelsond",
    );
    std::thread::sleep(Duration::from_secs(3));
    let after = pods.wait_for("ticker", "to be found again", |pod| {
        pod["status"]["containerStatuses"][0]["ready"] == true
    });
    assert_eq!(
        after["status"]["containerStatuses"][0]["restartCount"], 0,
        "{after:#}"
    );
    assert_eq!(
        after["status"]["containerStatuses"][0]["state"]["running"]["startedAt"],
        started
    );
    // A static pod is left untouched by the agent's restart: same run, same count.
    let keeper_after = pods.get(&keeper).unwrap()["status"].clone();
    assert_eq!(
        keeper_after["containerStatuses"], keeper_before["containerStatuses"],
        "{keeper_after:#}"
    );
    // The pod of several containers is met again as it was: same runs, same counts (once
    // the sidecar's startup probe, which runs again, has passed again).
    let stack_after = pods.wait_for("stack", "to be started again", |pod| {
        pod["status"]["initContainerStatuses"][1]["started"] == true
            && pod["status"]["containerStatuses"][0]["ready"] == true
    })["status"]
        .clone();
    for statuses in ["initContainerStatuses", "containerStatuses"] {
        assert_eq!(
            stack_after[statuses], stack_before[statuses],
            "{stack_after:#}"
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let ticks: Vec<u64> = pods
        .logs(&["ticker"])
        .lines()
        .map(|line| line.strip_prefix("tick ").unwrap().parse().unwrap())
        .collect();
    assert!(ticks.len() > 20, "{ticks:?}\n{}", pods.diagnostics());
    assert!(
        ticks.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "a line was lost: {ticks:?}"
    );
    let tail = pods.logs(&["ticker", "--tail", "2"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");

    // Commands run inside the running container, with its exit code, input and terminal.
    let (code, stdout) = pods.exec(
        &[
            "ticker",
            "--",
            "sh",
            "-c",
            "echo $(busybox hostname) $$; exit 7",
        ],
        None,
    );
    assert_eq!(code, Some(7));
    let (host, pid) = stdout.trim().split_once(' ').unwrap();
    assert_eq!(host, "ticker");
    assert_ne!(
        pid, "1",
        "the exec'd shell is not the container's first process"
    );
    let (code, stdout) = pods.exec(
        &["-i", "ticker", "--", "busybox", "wc", "-c"],
        Some("hello\n"),
    );
    assert_eq!((code, stdout.trim()), (Some(0), "6"));
    let (code, stdout) = pods.exec(
        &[
            "-t",
            "ticker",
            "--",
            "sh",
            "-c",
            "[ -t 0 ] && busybox tty && busybox ls -1 /dev/pts",
        ],
        None,
    );
    // A terminal of the container's own devpts (its first), not one of the node's.
    assert_eq!(
        (code, stdout.as_str()),
        (Some(0), "/dev/pts/0\r\n0\r\nptmx\r\n")
    );
    let (code, _) = pods.exec(&["ticker", "--", "nginx"], None);
    assert_eq!(code, Some(127));
    let stopped = expect_failure(
        node.keelctl(Role::Operator, &["exec", "hello", "--", "true"])
            .unwrap(),
        "exec in a finished pod",
    );
    assert!(
        stopped.contains("cannot exec into container hello of pod hello: it is not running"),
        "{stopped}"
    );
    let reader = expect_failure(
        node.keelctl(Role::Reader, &["exec", "ticker", "--", "true"])
            .unwrap(),
        "exec as a reader",
    );
    assert!(reader.contains("operator"), "{reader}");

    // Refusals say what is wrong, and nothing is created.
    let typo = work.path().join("typo.yaml");
    std::fs::write(
        &typo,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: typo\nspec:\n  containers:\n  \
             - name: main\n    imagee: {IMAGE}\n    image: {IMAGE}\n"
        ),
    )
    .unwrap();
    pods.refused(
        &["apply", "-f", typo.to_str().unwrap()],
        "pod typo: unknown field \"spec.containers[0].imagee\"",
    );
    pods.refused(
        &["run", "greedy", "--image", IMAGE, "--memory", "64Mx"],
        "resources.limits.memory",
    );
    for name in ["typo", "greedy"] {
        assert!(pods.get(name).is_none(), "pod {name} was created");
    }
    pods.refused(
        &["run", "Bad_Name", "--image", IMAGE],
        "metadata.name \"Bad_Name\" is not a valid name",
    );
    let changed = expect_failure(
        node.keelctl(
            Role::Operator,
            &["run", "ticker", "--image", IMAGE, "--", "true"],
        )
        .unwrap(),
        "run over an existing pod",
    );
    assert!(
        changed.contains("pod default/ticker exists with another spec"),
        "{changed}"
    );
    let reader = expect_failure(
        node.keelctl(Role::Reader, &["delete", "pod", "ticker"])
            .unwrap(),
        "delete as a reader",
    );
    assert!(reader.contains("operator"), "{reader}");
    let missing = expect_failure(
        node.keelctl(Role::Operator, &["delete", "pod", "nothing"])
            .unwrap(),
        "delete of a missing pod",
    );
    assert!(
        missing.contains("pod default/nothing not found"),
        "{missing}"
    );
    pods.run(&["absent", "--image", "example/absent:1"]);
    let absent = pods.wait_for("absent", "to fail its pull", |pod| {
        let reason = &pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"];
        reason == "ErrImagePull" || reason == "ImagePullBackOff"
    });
    assert_eq!(absent["status"]["phase"], "Pending");
    let described = expect_success(
        node.keelctl(Role::Reader, &["describe", "pod", "absent"])
            .unwrap(),
        "describe pod absent",
    );
    for expected in [
        "Pulling image \"example/absent:1\"",
        "Failed to pull image \"example/absent:1\"",
        "Error: ErrImagePull",
    ] {
        assert!(
            described.contains(expected),
            "{expected:?} not in:\n{described}"
        );
    }

    // Deleting stops and forgets.
    let deleted = expect_success(
        node.keelctl(
            Role::Operator,
            &["delete", "pod", "hello", "absent", "crasher"],
        )
        .unwrap(),
        "delete pod",
    );
    assert!(deleted.contains("pod \"hello\" deleted"), "{deleted}");
    let table = pods.table();
    assert!(
        !table.contains("hello") && !table.contains("crasher"),
        "{table}"
    );
    // --grace-period replaces the pod's 30 s: a container that ignores SIGTERM is killed
    // after 2 s, not 30. --grace-period 0 needs --force.
    pods.run(&[
        "stubborn",
        "--",
        "sh",
        "-c",
        "trap '' TERM; echo ready; while true; do busybox sleep 1; done",
    ]);
    pods.wait_for("stubborn", "to run", |pod| {
        pod["status"]["containerStatuses"][0]["ready"] == true
    });
    pods.refused(
        &["delete", "pod", "stubborn", "--grace-period", "0"],
        "add --force",
    );
    let asked = Instant::now();
    expect_success(
        node.keelctl(
            Role::Operator,
            &["delete", "pod", "stubborn", "--grace-period", "2"],
        )
        .unwrap(),
        "delete --grace-period 2",
    );
    let waited = asked.elapsed();
    assert!(
        waited < Duration::from_secs(25),
        "the pod's own 30 s grace was waited for: {waited:?}"
    );
    assert!(pods.get("stubborn").is_none());

    // Pods are kept on STATE: after a reboot the ticker runs again (a new run: the old
    // one ended with the machine) and the finished pods report as they did.
    expect_success(
        node.keelctl(Role::Operator, &["reboot", "--wait"]).unwrap(),
        "reboot --wait",
    );
    let back = pods.wait_for("ticker", "to run after the reboot", |pod| {
        pod["status"]["containerStatuses"][0]["ready"] == true
    });
    assert_eq!(
        back["status"]["containerStatuses"][0]["restartCount"], 1,
        "{back:#}"
    );
    // The pod's sandbox went with the machine: its init container ran again before its
    // app containers, as the kubelet does when it makes a pod's sandbox again.
    let stack = pods.wait_for("stack", "to run again after the reboot", |pod| {
        let ready = |status: &Value| status["ready"] == true;
        pod["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|all| all.iter().all(ready))
    });
    let setup = &stack["status"]["initContainerStatuses"][0];
    assert_eq!(setup["restartCount"], 1, "{stack:#}");
    assert_eq!(
        setup["state"]["terminated"]["reason"], "Completed",
        "{stack:#}"
    );
    let finished = setup["state"]["terminated"]["finishedAt"].as_str().unwrap();
    let web = &stack["status"]["containerStatuses"][0];
    assert_eq!(web["restartCount"], 1, "{stack:#}");
    assert!(
        finished <= web["state"]["running"]["startedAt"].as_str().unwrap(),
        "{stack:#}"
    );
    // The reboot stopped the pods first: probed's preStop hook ran again before it (each
    // stop of its container, the liveness kill and the shutdown among them, left a line,
    // and the shutdown's restart counts as one), and the pod came back with the node.
    pods.wait_for("probed", "to start again after the reboot", |pod| {
        pod["status"]["containerStatuses"][0]["started"] == true
    });
    let restarts = || {
        pods.get("probed").unwrap()["status"]["containerStatuses"][0]["restartCount"]
            .as_u64()
            .unwrap()
    };
    let (before, lines, after) = (
        restarts(),
        expect_success(
            node.keelctl(Role::Reader, &["read", "/var/demo/prestop"])
                .unwrap(),
            "read /var/demo/prestop",
        )
        .lines()
        .filter(|line| *line == "stopping")
        .count() as u64,
        restarts(),
    );
    assert!(
        before >= 2,
        "the reboot restarted probed: {before} restarts"
    );
    assert!(
        lines == before || lines == after,
        "every stop ran preStop: {lines} lines, {before}..{after} restarts"
    );
    let hog = pods.get("hog").unwrap();
    assert_eq!(
        hog["status"]["containerStatuses"][0]["state"]["terminated"]["reason"],
        "OOMKilled"
    );
    let table = pods.table();
    assert!(table.starts_with("NAME"), "{table}");
    for header in ["READY", "STATUS", "RESTARTS", "AGE"] {
        assert!(table.lines().next().unwrap().contains(header), "{table}");
    }
    // The power button stops the pods gracefully (the longest grace here is 8 s) before
    // the machine goes down; PID 1 goes on once the agent is gone, without waiting out
    // its 75 s limit for it.
    let pressed = Instant::now();
    node.vm.powerdown().unwrap();
    if let Err(error) = node.vm.wait_exit(Duration::from_secs(60)) {
        panic!("{error}\n{}", node.vm.console_tail(120));
    }
    eprintln!("powered off {:?} after the power button", pressed.elapsed());
}

/// A `keelctl get … -w` running beside the test, its output gathered as it comes.
struct Watch {
    child: std::process::Child,
    printed: std::sync::Arc<std::sync::Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Watch {
    fn start(node: &TestNode, arguments: &[&str]) -> Watch {
        let mut child = node
            .keelctl_command(Role::Reader, arguments)
            .unwrap()
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = printed.clone();
        let reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(read @ 1..) = std::io::Read::read(&mut stdout, &mut chunk) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..read]));
            }
        });
        Watch {
            child,
            printed,
            reader,
        }
    }

    /// Waits (up to 30 s) until what the watch printed satisfies `done`: a watch polls,
    /// so it may show a change a moment after the test saw it by other means.
    fn wait_until(&self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(&self.printed.lock().unwrap()) {
            assert!(
                Instant::now() < deadline,
                "the watch did not show {what} within 30 s:\n{}",
                self.printed.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Interrupts the watch; what it printed.
    fn stop(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.reader.join().unwrap();
        std::mem::take(&mut self.printed.lock().unwrap())
    }
}

/// What `get pods crasher -w -o json` printed meanwhile: whole Pod objects, one after
/// another, a new one at least per run, whose restart count never goes down and reaches 2.
fn check_json_watch(watched: &str) {
    let objects: Vec<Value> = serde_json::Deserializer::from_str(watched)
        .into_iter::<Value>()
        .map(|object| object.unwrap_or_else(|error| panic!("{error}: {watched}")))
        .collect();
    assert!(
        objects.len() >= 3
            && objects
                .iter()
                .all(|pod| pod["kind"] == "Pod" && pod["metadata"]["name"] == "crasher"),
        "a whole pod per change: {watched}"
    );
    let restarts: Vec<u64> = objects
        .iter()
        .map(|pod| {
            pod["status"]["containerStatuses"][0]["restartCount"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        restarts.windows(2).all(|pair| pair[0] <= pair[1]) && restarts.last() >= Some(&2),
        "restarts as watched: {restarts:?}"
    );
}

/// What `get pods crasher -w` printed while the crasher ran three times: the header, then
/// rows whose RESTARTS never go down and reach 2, with CrashLoopBackOff among them.
fn check_watch(watched: &str) {
    let mut lines = watched.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{watched}"
    );
    let rows: Vec<Vec<&str>> = lines
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert!(
        rows.len() >= 3 && rows.iter().all(|row| row[0] == "crasher"),
        "a row per change: {watched}"
    );
    let restarts: Vec<u32> = rows.iter().map(|row| row[3].parse().unwrap()).collect();
    assert!(
        restarts.windows(2).all(|pair| pair[0] <= pair[1]) && restarts.last() >= Some(&2),
        "restarts as watched: {restarts:?}\n{watched}"
    );
    assert!(
        rows.iter().any(|row| row[2] == "CrashLoopBackOff"),
        "{watched}"
    );
}

/// The pods test's machine config: small log limits (so that rotation shows within the
/// test), the pod CIDR, a short shutdown grace, a resolver the pods should inherit, and
/// the static pods, whose short form prints `greeting`.
fn pods_config(config: &mut keelson_config::MachineConfig, greeting: &str) {
    with_static_pods(config, greeting);
    config.kubelet = Some(keelson_config::model::KubeletSettings {
        container_log_max_size: Some("16Ki".into()),
        container_log_max_files: Some(2),
        pod_cidr: Some(POD_CIDR.into()),
        // Short, so that the pods that ignore SIGTERM hold the reboot up only so long.
        shutdown_grace_period: Some("8s".into()),
        ..Default::default()
    });
    // Nothing answers there: names are not looked up.
    config.network.nameservers = vec!["10.0.2.3".into()];
    config.network.search_domains = vec!["example.test".into()];
}

/// Eviction, with thresholds set live just below what the node has: a BestEffort pod that
/// takes memory is evicted while a Burstable pod within its request and the static pods
/// (BestEffort too) stay; a pod that fills STATE is evicted after the image no pod uses is
/// removed. `layout` holds the busybox image's OCI layout.
fn check_eviction(pods: &Pods<'_>, keeper: &str, layout: &std::path::Path) {
    let node = pods.node;
    let kib_field = |text: &str, name: &str| -> u64 {
        text.lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let apply_thresholds = |file: &str, thresholds: &[(&str, String)]| {
        let config = TestCluster::get().node_config_with(file, |config| {
            pods_config(config, "bonjour");
            let kubelet = config.kubelet.as_mut().unwrap();
            for (signal, value) in thresholds {
                kubelet
                    .eviction_hard
                    .insert((*signal).to_owned(), value.clone());
            }
        });
        pods.apply_config_live(&config, "eviction thresholds");
    };
    let evicted = |name: &str| {
        pods.wait_for(name, "to be evicted", |pod| {
            pod["status"]["reason"] == "Evicted"
        })
    };
    let running = |name: &str| {
        let pod = pods.get(name).unwrap_or_else(|| panic!("{name} is gone"));
        assert_eq!(pod["status"]["phase"], "Running", "{pod:#}");
        assert!(pod["status"]["reason"].is_null(), "{pod:#}");
    };

    // Memory: the threshold 96 MiB below what is available now; a 256 MiB buffer crosses it.
    let (code, meminfo) = pods.exec(&[keeper, "--", "busybox", "cat", "/proc/meminfo"], None);
    assert_eq!(code, Some(0));
    let available_mib = kib_field(&meminfo, "MemAvailable:") / 1024;
    assert!(
        available_mib >= 400,
        "the node has {available_mib} MiB available:\n{meminfo}"
    );
    let threshold_mib = available_mib - 96;
    apply_thresholds(
        "pods-memory-pressure.yaml",
        &[("memory.available", format!("{threshold_mib}Mi"))],
    );
    pods.run(&[
        "modest", "--memory", "64Mi", "--", "busybox", "sleep", "100000",
    ]);
    pods.wait_for("modest", "to run", |pod| {
        pod["status"]["containerStatuses"][0]["ready"] == true
    });
    pods.run(&[
        "guzzler",
        "--",
        "busybox",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=256M",
        "count=1000000",
    ]);
    let guzzler = evicted("guzzler");
    assert_eq!(guzzler["status"]["phase"], "Failed", "{guzzler:#}");
    let message = guzzler["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!(
            "The node was low on resource: memory. Threshold quantity: {threshold_mib}Mi, available: "
        )) && message.contains("Container guzzler was using "),
        "{guzzler:#}"
    );
    let described = pods.describe("guzzler");
    assert!(
        described.contains("Reason:           Evicted\n"),
        "{described}"
    );
    assert!(
        described
            .lines()
            .any(|line| line.contains("Warning") && line.contains("Evicted")),
        "{described}"
    );
    running("modest");
    running(keeper);
    let console = node.vm.console_tail(600);
    assert!(
        console.contains("eviction: the node is under MemoryPressure"),
        "{console}"
    );
    // The memory went with it: the pressure ends.
    let ended = Instant::now();
    while !node
        .vm
        .console_tail(600)
        .contains("eviction: the node is no longer under pressure")
    {
        assert!(
            ended.elapsed() < Duration::from_secs(60),
            "{}",
            node.vm.console_tail(80)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    // An evicted pod is deleted as any other.
    pods.succeed(&["delete", "pod", "guzzler"]);

    // Disk: an image no pod uses, and a pod with an emptyDir on STATE.
    node.import_layout(layout, "example/spare:1").unwrap();
    assert_eq!(
        pods.apply(
            "filler.yaml",
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: filler\nspec:\n  containers:\n  - name: filler\n    image: {IMAGE}\n    command: [busybox, sleep, '100000']\n    volumeMounts:\n    - {{name: data, mountPath: /data}}\n  volumes:\n  - {{name: data, emptyDir: {{}}}}\n"
            ),
        ),
        "pod/filler created"
    );
    pods.wait_for("filler", "to run", |pod| {
        pod["status"]["containerStatuses"][0]["ready"] == true
    });
    let (code, df) = pods.exec(&["filler", "--", "busybox", "df", "-k", "/data"], None);
    assert_eq!(code, Some(0));
    let free_mib = df
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().nth(3)?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{df}"))
        / 1024;
    assert!(free_mib >= 64, "STATE has {free_mib} MiB free:\n{df}");
    let threshold_mib = free_mib - 16;
    apply_thresholds(
        "pods-disk-pressure.yaml",
        &[("nodefs.available", format!("{threshold_mib}Mi"))],
    );
    let (code, _) = pods.exec(
        &[
            "filler",
            "--",
            "busybox",
            "dd",
            "if=/dev/zero",
            "of=/data/fill",
            "bs=1M",
            "count=40",
        ],
        None,
    );
    assert_eq!(code, Some(0));
    let filler = evicted("filler");
    let message = filler["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!(
            "The node was low on resource: ephemeral-storage. Threshold quantity: {threshold_mib}Mi, available: "
        )),
        "{filler:#}"
    );
    let images = expect_success(
        node.keelctl(Role::Reader, &["image", "ls"]).unwrap(),
        "image ls",
    );
    assert!(
        !images.contains("example/spare"),
        "the unused image stays:\n{images}"
    );
    assert!(
        images.contains("example/busybox"),
        "an image in use went:\n{images}"
    );
    let console = node.vm.console_tail(600);
    assert!(
        console.contains(
            "eviction: disk pressure: removed the images no pod uses: docker.io/example/spare:1"
        ),
        "{console}"
    );
    running("modest");
    running(keeper);
    // Back to the defaults; the evicted pod goes when deleted.
    apply_thresholds("pods-no-pressure.yaml", &[]);
    pods.succeed(&["delete", "pod", "filler"]);
    pods.succeed(&["delete", "pod", "modest", "--grace-period", "1"]);
    assert!(pods.get("filler").is_none());
}

/// The pods test's static pods: a whole manifest (`keeper`), the short form (`note`,
/// which prints `greeting`), and a manifest file the config writes (`extra`).
fn with_static_pods(config: &mut keelson_config::MachineConfig, greeting: &str) {
    use keelson_config::model::{ShortStaticPod, StaticPod};
    let manifest: serde_json::Map<String, Value> = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "keeper", "labels": {"tier": "node"}},
        "spec": {"containers": [{
            "name": "keeper",
            "image": IMAGE,
            "command": ["sh", "-c", "exec busybox sleep 100000"],
        }]},
    }))
    .unwrap();
    config.static_pods = vec![
        StaticPod::Manifest(serde_json::from_value(Value::Object(manifest)).unwrap()),
        StaticPod::Short(ShortStaticPod {
            name: "note".into(),
            image: IMAGE.into(),
            command: vec![
                "sh".into(),
                "-c".into(),
                "echo $GREETING; exec busybox sleep 100000".into(),
            ],
            args: Vec::new(),
            env: [("GREETING".to_owned(), greeting.to_owned())].into(),
        }),
    ];
    config.files.push(keelson_config::model::File {
        path: "/etc/keelson/manifests/extra.yaml".into(),
        content: Some(format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: extra\nspec:\n  containers:\n  - name: extra\n    image: {IMAGE}\n    command: [sh, -c, 'exec busybox sleep 100000']\n"
        )),
        ..Default::default()
    });
}

/// The body of an HTTP GET from the host (retried while the node starts forwarding).
fn fetch(url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "5", url])
            .output()
            .unwrap();
        if output.status.success() {
            return String::from_utf8_lossy(&output.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "GET {url}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

struct Pods<'a> {
    node: &'a TestNode,
}

impl Pods<'_> {
    /// `keelctl run NAME --image IMAGE ARGUMENTS…` (an `--image` among the arguments wins).
    fn run(&self, arguments: &[&str]) {
        let mut full = vec!["run", arguments[0]];
        if !arguments.contains(&"--image") {
            full.extend(["--image", IMAGE]);
        }
        full.extend_from_slice(&arguments[1..]);
        let created = expect_success(self.node.keelctl(Role::Operator, &full).unwrap(), "run");
        assert_eq!(created.trim(), format!("pod/{} created", arguments[0]));
    }

    /// `keelctl ARGUMENTS…` as an operator succeeds.
    fn succeed(&self, arguments: &[&str]) -> String {
        expect_success(
            self.node.keelctl(Role::Operator, arguments).unwrap(),
            &arguments.join(" "),
        )
    }

    /// `keelctl apply-config -f CONFIG` as an admin takes the config live (no reboot).
    fn apply_config_live(&self, config: &std::path::Path, what: &str) {
        let applied = expect_success(
            self.node
                .keelctl(
                    Role::Admin,
                    &["apply-config", "-f", config.to_str().unwrap()],
                )
                .unwrap(),
            &format!("apply-config with {what}"),
        );
        assert!(
            applied.contains("saved the config on STATE"),
            "applied live: {applied}"
        );
    }

    /// `keelctl ARGUMENTS…` as an operator fails, saying `words`.
    fn refused(&self, arguments: &[&str], words: &str) {
        let said = expect_failure(
            self.node.keelctl(Role::Operator, arguments).unwrap(),
            &format!("keelctl {arguments:?}"),
        );
        assert!(said.contains(words), "{words:?} not in: {said}");
    }

    /// Writes `manifest` to a file named `file` and applies it; what apply printed.
    fn apply(&self, file: &str, manifest: &str) -> String {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join(file);
        std::fs::write(&path, manifest).unwrap();
        let printed = expect_success(
            self.node
                .keelctl(Role::Operator, &["apply", "-f", path.to_str().unwrap()])
                .unwrap(),
            &format!("apply -f {file}"),
        );
        printed.trim().to_owned()
    }

    /// Writes `manifest` to a file named `file` and applies it, which must fail; what
    /// keelctl said.
    fn apply_refused(&self, file: &str, manifest: &str) -> String {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join(file);
        std::fs::write(&path, manifest).unwrap();
        expect_failure(
            self.node
                .keelctl(Role::Operator, &["apply", "-f", path.to_str().unwrap()])
                .unwrap(),
            &format!("apply -f {file}"),
        )
    }

    /// The pod's row of `get pods`, split into its columns.
    fn row(&self, name: &str) -> Vec<String> {
        let table = self.table();
        table
            .lines()
            .map(|line| {
                line.split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .find(|columns| columns.first().map(String::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name} in:\n{table}"))
    }

    fn get(&self, name: &str) -> Option<Value> {
        let (ok, stdout, _) = self
            .node
            .keelctl(Role::Reader, &["get", "pod", name, "-o", "json"])
            .unwrap();
        ok.then(|| serde_json::from_str(&stdout).unwrap())
    }

    /// Polls the pod until `done` holds (three minutes at most).
    fn wait_for(&self, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(pod) = self.get(name) {
                if done(&pod) {
                    return pod;
                }
                last = Some(pod);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!(
            "pod {name} did not come {what} in time; last seen:\n{last:#?}\n{}",
            self.diagnostics()
        );
    }

    /// `keelctl exec ARGUMENTS…` with `input` on its standard input; its exit code and
    /// output.
    fn exec(&self, arguments: &[&str], input: Option<&str>) -> (Option<i32>, String) {
        let (code, stdout, stderr) = self.exec_with_errors(arguments, input);
        if code != Some(0) {
            eprintln!("keelctl exec {arguments:?}: exit {code:?}, stderr: {stderr}");
        }
        (code, stdout)
    }

    fn exec_with_errors(
        &self,
        arguments: &[&str],
        input: Option<&str>,
    ) -> (Option<i32>, String, String) {
        let mut full = vec!["exec"];
        full.extend_from_slice(arguments);
        let mut command = self.node.keelctl_command(Role::Operator, &full).unwrap();
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, input.unwrap_or_default().as_bytes()).unwrap();
        drop(stdin);
        let output = child.wait_with_output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    fn logs(&self, arguments: &[&str]) -> String {
        let mut full = vec!["logs"];
        full.extend_from_slice(arguments);
        expect_success(self.node.keelctl(Role::Reader, &full).unwrap(), "logs")
    }

    /// The agent's and PID 1's logs, for a failure message.
    fn diagnostics(&self) -> String {
        let log = |service: &str| {
            self.node
                .keelctl(Role::Reader, &["logs", service])
                .unwrap()
                .1
        };
        format!("keelsond:\n{}\ninit:\n{}", log("keelsond"), log("init"))
    }

    /// `keelctl describe pod NAME`.
    fn describe(&self, name: &str) -> String {
        expect_success(
            self.node
                .keelctl(Role::Reader, &["describe", "pod", name])
                .unwrap(),
            "describe pod",
        )
    }

    fn table(&self) -> String {
        expect_success(
            self.node.keelctl(Role::Reader, &["get", "pods"]).unwrap(),
            "get pods",
        )
    }
}
