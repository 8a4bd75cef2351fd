//! Pods benchmark: what the kubelet costs over the bare runtime, and what the agent holds
//! with many pods.
//!
//! 1. The runtime bench's image and guest half (see `benches/runtime.rs`): before the
//!    agent starts, the guest times 1, 10 and 50 idle containers brought to running by
//!    Keelson's runtime alone, one after another.
//! 2. Then, in the same VM, for each of those counts: one `keelctl apply -f` of that many
//!    idle pods (`busybox sleep`), timed from the host until `keelctl get pods` shows
//!    every one Ready (polled every [`POLL`], which bounds the precision), then a delete of
//!    them all and a wait until they are gone, before the next batch. The 50 pods stay
//!    for the reading of the agent's resident memory (`Machine.Status`).
//!
//! The host's side adds keelctl's own round trip (its median is printed beside the
//! figures). Figures are printed, never asserted. The last two lines read
//! `kubelet/runtime R` (at 50 pods) and `agent MiB with 50 pods M`, for scripts to follow.
//!
//! Run: `cargo bench -p keelson-tests --bench pods` (as root: umoci builds the busybox
//! image; `KEELSON_STATIC_DIR` names prebuilt static binaries, else they are built).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::bail;
use keelson_tests::TestNode;

mod common;
use common::{agent_rss, figure, keelctl, ready_pods, IMAGE};

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
    // 50 pods and their containers want more than the default 1 GiB's headroom.
    let (mut node, figures) = common::boot_bench_node(|options| options.memory_mib = 2048)?;
    common::import_busybox(&node, work.path())?;
    let round_trip = keelctl_round_trip(&node)?;

    let mut rows = Vec::new();
    for count in BATCHES {
        let runtime = figure(&figures, &format!("keelson batch of {count} running in "))?;
        let kubelet = apply_until_ready(&node, work.path(), count)?;
        rows.push((count, kubelet, runtime));
        if count != *BATCHES.last().unwrap() {
            delete_until_gone(&node, count)?;
        }
    }
    // Let the last batch's start-up settle before the reading.
    std::thread::sleep(Duration::from_secs(5));
    let rss = agent_rss(&node)? as f64 / (1 << 20) as f64;
    let most = *BATCHES.last().unwrap();
    delete_until_gone(&node, most)?;
    node.power_off()?;

    println!("keelctl round trip (get pods), median: {round_trip:.1} ms");
    for (count, kubelet, runtime) in &rows {
        println!(
            "{count} pods: apply to Ready {kubelet:.0} ms, runtime alone {runtime:.0} ms ({:.2}x)",
            kubelet / runtime
        );
    }
    let (_, kubelet, runtime) = rows.last().unwrap();
    println!("kubelet/runtime {:.2}", kubelet / runtime);
    println!("agent MiB with {most} pods {rss:.1}");
    Ok(())
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
