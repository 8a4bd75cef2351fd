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

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keelson_api::roles::Role;
use keelson_testkit::oci::{self, ArchiveKind};
use keelson_tests::{update_key, TestNode, BOOT_TIMEOUT};

const IMAGE: &str = "example/busybox:1";
const IDLE_CONTAINERS: usize = 20;
const TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let test = "runtime benchmark";
    let missing: Vec<&str> = ["crun", "runc"]
        .into_iter()
        .filter(|tool| which(tool).is_none())
        .collect();
    if !missing.is_empty() {
        keelson_testkit::skip(test, &format!("apt-get install {}", missing.join(" ")));
        return;
    }
    if !oci::ready_for(test, false) {
        return;
    }
    if let Err(error) = run() {
        eprintln!("runtime benchmark failed: {error:#}");
        std::process::exit(1);
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .map(|directory| Path::new(directory).join(tool))
        .find(|path| path.exists())
}

fn run() -> anyhow::Result<()> {
    let workspace = keelson_image::default_workspace();
    let statics = static_binaries(&workspace)?;
    let work = tempfile::tempdir()?;
    let overlay = work.path().join("overlay");
    bench_overlay(&statics, &overlay)?;
    let mut options = keelson_image::BuildOptions::new(workspace.join("target/bench-runtime"));
    options.binaries = Some(statics.clone());
    options.root_overlay = Some(overlay);
    options.signing_key = Some(update_key());
    let image = keelson_image::build(&options)
        .context("building the bench image")?
        .image;

    let mut node = TestNode::prepare_on(image, |_| {})?;
    node.vm.power_on()?;
    node.vm
        .wait_for_console("keelson-bench: done", BOOT_TIMEOUT)?;
    node.vm
        .wait_for_console(keelson_qemu::READY_PATTERN, BOOT_TIMEOUT)?;
    let figures: Vec<String> = node
        .vm
        .console_text()
        .lines()
        .filter_map(|line| {
            line.split_once("keelson-bench: ")
                .map(|(_, figure)| figure.trim().to_owned())
        })
        .collect();
    for figure in &figures {
        println!("guest: {figure}");
    }
    if let Some(failure) = figures.iter().find(|figure| figure.starts_with("failed")) {
        bail!("the guest bench {failure}");
    }
    let median = |runtime: &str| -> anyhow::Result<f64> {
        let line = figures
            .iter()
            .find(|figure| figure.starts_with(&format!("{runtime} median ")))
            .with_context(|| format!("the guest printed no figure for {runtime}"))?;
        Ok(line.split_whitespace().nth(2).unwrap_or_default().parse()?)
    };
    let (keelson, crun, runc) = (median("keelson")?, median("crun")?, median("runc")?);

    let (idle, loaded) = agent_memory(&node, work.path())?;
    let per_container = (loaded as f64 - idle as f64) / IDLE_CONTAINERS as f64 / (1 << 20) as f64;
    node.power_off()?;

    println!("create to exit of /bin/true, median: keelson {keelson:.1} ms, crun {crun:.1} ms, runc {runc:.1} ms");
    println!(
        "agent RSS: {:.1} MiB with no container, {:.1} MiB with {IDLE_CONTAINERS} idle containers",
        idle as f64 / (1 << 20) as f64,
        loaded as f64 / (1 << 20) as f64
    );
    println!("keelson/crun {:.2}", keelson / crun);
    println!("keelson/runc {:.2}", keelson / runc);
    println!("agent MiB per idle container {per_container:.3}");
    Ok(())
}

/// The static keelson-init, keelsond and runtime_bench: prebuilt, or built here in a
/// target directory of their own (the outer cargo holds the default one).
fn static_binaries(workspace: &Path) -> anyhow::Result<PathBuf> {
    if let Some(directory) = std::env::var_os("KEELSON_STATIC_DIR") {
        let directory = PathBuf::from(directory);
        if directory.join("examples/runtime_bench").exists() {
            return Ok(directory);
        }
    }
    let target_dir = workspace.join("target/e2e-build");
    for arguments in [
        &["-p", "keelson-init", "-p", "keelson-agent"][..],
        &["-p", "keelson-runtime", "--example", "runtime_bench"][..],
    ] {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace)
            .args(["build", "-q", "--release", "--target", TARGET])
            .args(arguments)
            .arg("--target-dir")
            .arg(&target_dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .status()?;
        if !status.success() {
            bail!("building the static binaries failed ({status})");
        }
    }
    Ok(target_dir.join(TARGET).join("release"))
}

/// The root overlay of the bench image (see the module's first step).
fn bench_overlay(statics: &Path, overlay: &Path) -> anyhow::Result<()> {
    let bin = overlay.join("usr/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(statics.join("keelsond"), bin.join("keelsond.real"))?;
    std::fs::copy(statics.join("examples/runtime_bench"), bin.join("keelsond"))?;
    for tool in ["crun", "runc"] {
        let path = which(tool).context(tool)?;
        std::fs::copy(&path, bin.join(tool))?;
        copy_libraries(&path, overlay)?;
    }
    let share = overlay.join("usr/share/keelson-bench");
    let rootfs = share.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))?;
    for applet in ["true", "sh"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    for directory in ["proc", "dev", "sys", "tmp", "etc", "run", "var", "root"] {
        std::fs::create_dir_all(rootfs.join(directory))?;
    }
    // The OCI config crun and runc run: runc's own default, aimed at /bin/true.
    let spec_dir = tempfile::tempdir()?;
    let status = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(spec_dir.path())
        .status()?;
    if !status.success() {
        bail!("runc spec failed ({status})");
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(spec_dir.path().join("config.json"))?)?;
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["/bin/true"]);
    config["root"]["path"] = "/usr/share/keelson-bench/rootfs".into();
    config["root"]["readonly"] = true.into();
    config["hostname"] = "bench".into();
    std::fs::write(
        share.join("config.json"),
        serde_json::to_vec_pretty(&config)?,
    )?;
    Ok(())
}

/// Copies the shared libraries `binary` loads (as ldd lists them) and the loader into the
/// overlay, where the root's `/lib` and `/lib64` (both `usr/lib`) find them.
fn copy_libraries(binary: &Path, overlay: &Path) -> anyhow::Result<()> {
    let output = Command::new("ldd").arg(binary).output()?;
    let libraries = overlay.join("usr/lib/x86_64-linux-gnu");
    std::fs::create_dir_all(&libraries)?;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|path| path.starts_with('/')),
        };
        let Some(path) = path.filter(|path| path.starts_with('/')) else {
            continue;
        };
        let name = Path::new(path)
            .file_name()
            .context("a library without a name")?;
        let destination = if name.to_string_lossy().starts_with("ld-linux") {
            overlay.join("usr/lib").join(name)
        } else {
            libraries.join(name)
        };
        std::fs::copy(std::fs::canonicalize(path)?, destination)?;
    }
    Ok(())
}

/// The agent's resident memory with no container, then with [`IDLE_CONTAINERS`] idle
/// pods running.
fn agent_memory(node: &TestNode, work: &Path) -> anyhow::Result<(u64, u64)> {
    let rss = || -> anyhow::Result<u64> {
        Ok(node
            .status()?
            .agent
            .context("no agent in the status")?
            .rss_bytes)
    };
    // Let start-up settle before the first reading.
    std::thread::sleep(Duration::from_secs(5));
    let idle = rss()?;
    let layout = work.join("image");
    std::fs::create_dir_all(&layout)?;
    oci::busybox_layout(&layout).map_err(anyhow::Error::msg)?;
    let archive = oci::archive(&layout, ArchiveKind::Oci, "busybox.tar", IMAGE)
        .map_err(anyhow::Error::msg)?;
    let keelctl = |arguments: &[&str]| -> anyhow::Result<String> {
        let (ok, stdout, stderr) = node.keelctl(Role::Operator, arguments)?;
        if !ok {
            bail!("keelctl {arguments:?}: {stderr}");
        }
        Ok(stdout)
    };
    keelctl(&["image", "import", archive.to_str().context("path")?])?;
    for index in 0..IDLE_CONTAINERS {
        let name = format!("idle-{index}");
        keelctl(&[
            "run",
            &name,
            "--image",
            IMAGE,
            "--",
            "sh",
            "-c",
            "exec busybox sleep 3600",
        ])?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let list: serde_json::Value =
            serde_json::from_str(&keelctl(&["get", "pods", "-o", "json"])?)?;
        let ready = list["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|pod| pod["status"]["containerStatuses"][0]["ready"] == true)
                    .count()
            })
            .unwrap_or(0);
        if ready == IDLE_CONTAINERS {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {ready} of {IDLE_CONTAINERS} idle pods became ready");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_secs(5));
    Ok((idle, rss()?))
}
