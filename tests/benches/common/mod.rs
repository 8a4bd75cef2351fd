//! What the runtime and pods benchmarks share: the bench image (the test image plus crun,
//! runc, a busybox root and the runtime's `runtime_bench` example as the agent's first
//! step), booting it and reading the guest's figures, and the busybox image the pods run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use keelson_api::roles::Role;
use keelson_testkit::oci;
use keelson_tests::{update_key, TestNode, BOOT_TIMEOUT};

/// The image the benchmarks' pods run.
pub const IMAGE: &str = "example/busybox:1";
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Whether the host has what a benchmark needs; a skip is reported when not.
pub fn ready(test: &str) -> bool {
    let missing: Vec<&str> = ["crun", "runc"]
        .into_iter()
        .filter(|tool| which(tool).is_none())
        .collect();
    if !missing.is_empty() {
        keelson_testkit::skip(test, &format!("apt-get install {}", missing.join(" ")));
        return false;
    }
    oci::ready_for(test, false)
}

/// Builds the bench image, boots it with `configure`d options, and waits for the guest
/// bench to finish and the agent to be ready. Returns the node and the guest's figures
/// (its `keelson-bench: ` lines, which are also printed).
pub fn boot_bench_node(
    configure: impl FnOnce(&mut keelson_qemu::VmOptions),
) -> anyhow::Result<(TestNode, Vec<String>)> {
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

    let mut node = TestNode::prepare_on(image, configure)?;
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
    Ok((node, figures))
}

/// The runtime benchmark's figures: the guest's create-to-exit medians beside crun and
/// runc, and the agent's resident memory with no container and with `containers` idle
/// ones. Its last three lines read `keelson/crun R`, `keelson/runc R` and `agent MiB per
/// idle container M`.
pub fn print_runtime_figures(
    figures: &[String],
    idle_rss: u64,
    loaded_rss: u64,
    containers: usize,
) -> anyhow::Result<()> {
    let keelson = figure(figures, "keelson median ")?;
    let crun = figure(figures, "crun median ")?;
    let runc = figure(figures, "runc median ")?;
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let per_container = (mib(loaded_rss) - mib(idle_rss)) / containers as f64;
    println!("create to exit of /bin/true, median: keelson {keelson:.1} ms, crun {crun:.1} ms, runc {runc:.1} ms");
    println!(
        "agent RSS: {:.1} MiB with no container, {:.1} MiB with {containers} idle containers",
        mib(idle_rss),
        mib(loaded_rss)
    );
    println!("keelson/crun {:.2}", keelson / crun);
    println!("keelson/runc {:.2}", keelson / runc);
    println!("agent MiB per idle container {per_container:.3}");
    Ok(())
}

/// The agent's resident memory once its start-up has settled.
pub fn settled_agent_rss(node: &TestNode) -> anyhow::Result<u64> {
    std::thread::sleep(std::time::Duration::from_secs(5));
    agent_rss(node)
}

/// The number that follows `prefix` in the guest's figures.
pub fn figure(figures: &[String], prefix: &str) -> anyhow::Result<f64> {
    let line = figures
        .iter()
        .find_map(|figure| figure.strip_prefix(prefix))
        .with_context(|| format!("the guest printed no {prefix:?} figure"))?;
    Ok(line.split_whitespace().next().unwrap_or_default().parse()?)
}

/// `keelctl ARGUMENTS…` as an operator; its output, or an error with what it said.
pub fn keelctl(node: &TestNode, arguments: &[&str]) -> anyhow::Result<String> {
    let (ok, stdout, stderr) = node.keelctl(Role::Operator, arguments)?;
    if !ok {
        bail!("keelctl {arguments:?}: {stderr}");
    }
    Ok(stdout)
}

/// The agent's resident memory, from `Machine.Status`.
fn agent_rss(node: &TestNode) -> anyhow::Result<u64> {
    Ok(node
        .status()?
        .agent
        .context("no agent in the status")?
        .rss_bytes)
}

/// Builds the busybox image with umoci under `work` and imports it as [`IMAGE`].
pub fn import_busybox(node: &TestNode, work: &Path) -> anyhow::Result<()> {
    let layout = work.join("image");
    std::fs::create_dir_all(&layout)?;
    oci::busybox_layout(&layout).map_err(anyhow::Error::msg)?;
    node.import_layout(&layout, IMAGE)
}

/// How many of the pods `keelctl get pods -o json` lists have a ready first container.
pub fn ready_pods(node: &TestNode) -> anyhow::Result<usize> {
    let list: serde_json::Value =
        serde_json::from_str(&keelctl(node, &["get", "pods", "-o", "json"])?)?;
    Ok(list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|pod| pod["status"]["containerStatuses"][0]["ready"] == true)
                .count()
        })
        .unwrap_or(0))
}

pub fn which(tool: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .map(|directory| Path::new(directory).join(tool))
        .find(|path| path.exists())
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
    for applet in ["true", "sh", "sleep"] {
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
