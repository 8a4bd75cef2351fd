//! Pods benchmark: what the kubelet costs over the bare runtime, and what the agent holds
//! with many pods. One VM also yields every figure of the runtime benchmark, so the test
//! suite boots this one alone.
//!
//! 1. The runtime bench's image and guest half (see `benches/runtime.rs`): before the
//!    agent starts, the guest times `/bin/true` under Keelson's runtime, crun and runc,
//!    and 1, 10 and 50 idle containers brought to running by Keelson's runtime alone, one
//!    batch after another.
//! 2. The agent's resident memory (`Machine.Status`) with no pod.
//! 3. Then, in the same VM, for each of those counts: one `keelctl apply -f` of that many
//!    idle pods (`busybox sleep`), timed from the host until `keelctl get pods` shows
//!    every one Ready (polled every [`POLL`], which bounds the precision), then a delete of
//!    them all and a wait until they are gone, before the next batch. The 50 pods stay
//!    for the second reading of the agent's resident memory; then the VM is switched off
//!    (the figures are taken: a graceful stop of 50 pods would only cost time).
//!
//! The host's side adds keelctl's own round trip (its median is printed beside the
//! figures). Figures are printed, never asserted: first the runtime benchmark's (ending in
//! its three lines), then this one's, whose last two lines read `kubelet/runtime R` (at
//! 50 pods) and `agent MiB with 50 pods M`, for scripts to follow.
//!
//! Run: `cargo bench -p keelson-tests --bench pods` (as root: umoci builds the busybox
//! image; `KEELSON_STATIC_DIR` names prebuilt static binaries, else they are built).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keelson_tests::TestNode;

mod common;
use common::{figure, keelctl, ready_pods, IMAGE};

const BATCHES: [usize; 3] = [1, 10, 50];
const POLL: Duration = Duration::from_millis(100);
const PATIENCE: Duration = Duration::from_secs(900);

fn main() {
    if !common::ready("pods benchmark") {
        return;
    }
    if let Err(error) = run() {
        eprintln!("pods benchmark failed: {error:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let phase = Instant::now();
    // 50 pods and their containers want more than the default 1 GiB's headroom.
    let (mut node, figures) = common::boot_bench_node(|options| options.memory_mib = 2048)?;
    progress(phase, "booted, the guest's runtime figures taken");
    let idle_rss = common::settled_agent_rss(&node)?;
    common::import_busybox(&node, work.path())?;
    let round_trip = keelctl_round_trip(&node)?;

    let mut rows = Vec::new();
    let mut breakdown = None;
    for count in BATCHES {
        let runtime = figure(&figures, &format!("keelson batch of {count} running in "))?;
        let kubelet = apply_until_ready(&node, work.path(), count)?;
        progress(phase, &format!("{count} pods Ready"));
        if count == 1 {
            breakdown = Some(start_breakdown(&node, &pod_name(1, 0))?);
        }
        rows.push((count, kubelet, runtime));
        if count != *BATCHES.last().unwrap() {
            delete_until_gone(&node, count)?;
            progress(phase, &format!("{count} pods deleted"));
        }
    }
    let loaded_rss = common::settled_agent_rss(&node)?;
    node.vm.kill();

    let most = *BATCHES.last().unwrap();
    common::print_runtime_figures(&figures, idle_rss, loaded_rss, most)?;
    println!("keelctl round trip (get pods), median: {round_trip:.1} ms");
    for (count, kubelet, runtime) in &rows {
        println!(
            "{count} pods: apply to Ready {kubelet:.0} ms, runtime alone {runtime:.0} ms ({:.2}x)",
            kubelet / runtime
        );
    }
    if let (Some(breakdown), Some((_, kubelet, _))) = (breakdown, rows.first()) {
        println!(
            "1 pod, in the agent: admitted to container started {:.0} ms (sandbox {} ms, \
             container {} ms); the other {:.0} ms are keelctl's apply, the status and the polling",
            breakdown.admitted_to_started,
            breakdown.sandbox,
            breakdown.container,
            kubelet - breakdown.admitted_to_started
        );
    }
    let (_, kubelet, runtime) = rows.last().unwrap();
    println!("kubelet/runtime {:.2}", kubelet / runtime);
    println!(
        "agent MiB with {most} pods {:.1}",
        loaded_rss as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// Where the run is, on stderr, so that a slow run shows where its time went.
fn progress(since: Instant, what: &str) {
    eprintln!(
        "pods benchmark: [{:.0} s] {what}",
        since.elapsed().as_secs_f64()
    );
}

/// Where one pod's start went, from the agent's log (its entries carry the time since
/// boot to the microsecond).
struct StartBreakdown {
    /// Milliseconds from the agent admitting the pod to its container running.
    admitted_to_started: f64,
    /// Of which the pod's sandbox (namespaces, veth, address, /etc files).
    sandbox: u64,
    /// And the container (root, cgroup, process), as the runtime bench times it.
    container: u64,
}

/// Reads `pod`'s start from `keelctl logs keelsond`: its "pod admitted" and "container
/// started" entries.
fn start_breakdown(node: &TestNode, pod: &str) -> anyhow::Result<StartBreakdown> {
    let log = keelctl(node, &["logs", "keelsond", "--tail", "1000"])?;
    let field = format!("pod=default/{pod}");
    let entry = |message: &str| -> anyhow::Result<(f64, &str)> {
        let line = log
            .lines()
            .find(|line| {
                line.contains(message) && line.split_whitespace().any(|word| word == field)
            })
            .with_context(|| format!("no {message:?} entry for {pod} in the agent's log"))?;
        let stamp = line
            .strip_prefix('[')
            .and_then(|rest| rest.split_once(']'))
            .map(|(stamp, _)| stamp.trim())
            .context("an agent log line without its time")?;
        Ok((stamp.parse::<f64>()? * 1e3, line))
    };
    let number = |line: &str, name: &str| -> anyhow::Result<u64> {
        let prefix = format!("{name}=");
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(prefix.as_str()))
            .with_context(|| format!("no {name} in {line:?}"))?
            .parse()
            .with_context(|| format!("{name} in {line:?}"))
    };
    let (admitted, _) = entry("pod admitted")?;
    let (started, line) = entry("container started")?;
    Ok(StartBreakdown {
        admitted_to_started: started - admitted,
        sandbox: number(line, "sandbox_ms")?,
        container: number(line, "container_ms")?,
    })
}

/// The median wall time of `keelctl get pods` from the host, over 11 calls.
fn keelctl_round_trip(node: &TestNode) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for _ in 0..11 {
        let started = Instant::now();
        keelctl(node, &["get", "pods"])?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

/// The name of pod `index` of the batch of `count`.
fn pod_name(count: usize, index: usize) -> String {
    format!("batch-{count}-{index}")
}

/// Applies `count` idle pods in one file; milliseconds from the apply to all Ready.
fn apply_until_ready(node: &TestNode, work: &std::path::Path, count: usize) -> anyhow::Result<f64> {
    let mut manifest = String::new();
    for index in 0..count {
        // A grace of 1 s: busybox sleep as a container's first process ignores SIGTERM.
        write!(
            manifest,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: idle\n    image: {IMAGE}\n    command: [busybox, sleep, \"3600\"]\n",
            pod_name(count, index)
        )?;
    }
    let file = work.join(format!("batch-{count}.yaml"));
    std::fs::write(&file, manifest)?;
    let started = Instant::now();
    keelctl(node, &["apply", "-f", file.to_str().unwrap()])?;
    loop {
        let ready = ready_pods(node)?;
        if ready == count {
            return Ok(started.elapsed().as_secs_f64() * 1e3);
        }
        if started.elapsed() > PATIENCE {
            bail!("only {ready} of {count} pods became Ready in {PATIENCE:?}");
        }
        std::thread::sleep(POLL);
    }
}

/// Deletes the batch of `count` and waits until no pod is listed.
fn delete_until_gone(node: &TestNode, count: usize) -> anyhow::Result<()> {
    let names: Vec<String> = (0..count).map(|index| pod_name(count, index)).collect();
    let mut arguments = vec!["delete", "pods"];
    arguments.extend(names.iter().map(String::as_str));
    keelctl(node, &arguments)?;
    let started = Instant::now();
    loop {
        let listed: serde_json::Value =
            serde_json::from_str(&keelctl(node, &["get", "pods", "-o", "json"])?)?;
        let left = listed["items"].as_array().map(Vec::len).unwrap_or(0);
        if left == 0 {
            return Ok(());
        }
        if started.elapsed() > PATIENCE {
            bail!("{left} pods were still listed {PATIENCE:?} after their delete");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
