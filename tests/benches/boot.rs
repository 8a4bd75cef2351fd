//! Boot benchmark: prints three figures beside their baseline, measured in the same run.
//!
//! 1. Boot time, VM start → ready line, against a baseline image with the same OVMF,
//!    systemd-boot and kernel whose initramfs powers off at once (VM start → QEMU exit).
//!    Median of 3 each, and the ratio.
//! 2. The compressed root size.
//! 3. The resident memory of PID 1 plus keelsond, idle (10 s after ready).
//!
//! Run: `cargo bench -p keelson-tests --bench boot` (uses `KEELSON_TEST_IMAGE` if set).
//! Figures are printed, never asserted: timing depends on the machine.

use std::time::{Duration, Instant};

use keelson_qemu::{Vm, VmOptions, READY_PATTERN};
use keelson_tests::{test_image, TestNode, BOOT_TIMEOUT};

const RUNS: usize = 3;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let image = test_image();
    let out_dir = image.parent().unwrap().to_owned();
    let mut options = keelson_image::BuildOptions::new(out_dir.clone());
    let workspace = keelson_image::default_workspace();
    options.cargo_target_dir = Some(workspace.join("target/e2e-build"));
    let prebuilt = workspace.join("target/x86_64-unknown-linux-gnu/release");
    if prebuilt.join("keelson-init").is_file() {
        options.binaries = Some(prebuilt);
    }
    let baseline = keelson_image::build_baseline(&options)?;

    let mut baseline_seconds = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let mut vm = Vm::start(VmOptions::new(&baseline))?;
        vm.wait_exit(BOOT_TIMEOUT)?;
        baseline_seconds.push(started.elapsed().as_secs_f64());
    }

    let mut keelson_seconds = Vec::new();
    let mut rss = Vec::new();
    for run in 0..RUNS {
        let mut node = TestNode::prepare(None)?;
        let started = Instant::now();
        node.vm.power_on()?;
        node.vm.wait_for_console(READY_PATTERN, BOOT_TIMEOUT)?;
        keelson_seconds.push(started.elapsed().as_secs_f64());
        if run == 0 {
            std::thread::sleep(Duration::from_secs(10));
            let status = node.status()?;
            let pid1 = status.pid1.map(|p| p.rss_bytes).unwrap_or(0);
            let agent = status.agent.map(|p| p.rss_bytes).unwrap_or(0);
            rss.push((pid1, agent));
        }
    }

    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.with_file_name("build.json"))?)?;
    let root_bytes = summary["root_bytes"].as_u64().unwrap_or(0);
    let (pid1_rss, agent_rss) = rss[0];
    let keelson = median(keelson_seconds.clone());
    let base = median(baseline_seconds.clone());
    let accel = format!("{:?}", keelson_qemu::Accel::from_env());
    println!("Keelson boot benchmark ({accel}, median of {RUNS})");
    println!("  boot to ready line:   {keelson:6.2} s   runs {keelson_seconds:.2?}");
    println!("  baseline (poweroff):  {base:6.2} s   runs {baseline_seconds:.2?}");
    println!("  ratio keelson/baseline: {:.2}", keelson / base);
    println!(
        "  compressed root:      {:.2} MiB ({root_bytes} bytes)",
        root_bytes as f64 / 1048576.0
    );
    println!(
        "  idle RSS:             {:.1} MiB (PID 1 {:.1} MiB + keelsond {:.1} MiB)",
        (pid1_rss + agent_rss) as f64 / 1048576.0,
        pid1_rss as f64 / 1048576.0,
        agent_rss as f64 / 1048576.0
    );
    Ok(())
}
