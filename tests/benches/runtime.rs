//! Runtime benchmark: how fast Keelson's runtime creates a container and how little the
//! agent spends per container, beside crun and runc measured in the same VM and run.
//!
//! 1. The bench image is the test image plus a root overlay that the shipped image never
//!    carries: crun and runc with their libraries, a busybox root, an OCI config made by
//!    `runc spec`, and the runtime's `runtime_bench` example as `/usr/bin/keelsond` (the
//!    agent moved to `keelsond.real`). PID 1 starts the example as its agent: it times,
//!    in the guest, `/bin/true` in a new container with Keelson's container-init, `crun
//!    run` and `runc run` on the same busybox root (interleaved, the first round not
//!    counted), prints its figures on the console, and executes the real agent.
//! 2. The agent's resident memory (`Machine.Status`) with no container, then with 20 idle
//!    pods (`busybox sleep`) started through the API.
//!
//! Figures are printed, never asserted. The last three lines read `keelson/crun R`,
//! `keelson/runc R` and `agent MiB per idle container M`, for scripts to follow.
//!
//! Run: `cargo bench -p keelson-tests --bench runtime` (as root: umoci builds the busybox
//! image; `KEELSON_STATIC_DIR` names prebuilt static binaries, else they are built).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use keelson_tests::TestNode;

mod common;
use common::{keelctl, ready_pods, IMAGE};

const IDLE_CONTAINERS: usize = 20;

fn main() {
    if !common::ready("runtime benchmark") {
        return;
    }
    if let Err(error) = run() {
        eprintln!("runtime benchmark failed: {error:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let (mut node, figures) = common::boot_bench_node(|_| {})?;
    let (idle, loaded) = agent_memory(&node, work.path())?;
    node.power_off()?;
    common::print_runtime_figures(&figures, idle, loaded, IDLE_CONTAINERS)
}

/// The agent's resident memory with no container, then with [`IDLE_CONTAINERS`] idle
/// pods running.
fn agent_memory(node: &TestNode, work: &Path) -> anyhow::Result<(u64, u64)> {
    let idle = common::settled_agent_rss(node)?;
    common::import_busybox(node, work)?;
    for index in 0..IDLE_CONTAINERS {
        let name = format!("idle-{index}");
        keelctl(
            node,
            &[
                "run",
                &name,
                "--image",
                IMAGE,
                "--",
                "sh",
                "-c",
                "exec busybox sleep 3600",
            ],
        )?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let ready = ready_pods(node)?;
        if ready == IDLE_CONTAINERS {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {ready} of {IDLE_CONTAINERS} idle pods became ready");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok((idle, common::settled_agent_rss(node)?))
}
