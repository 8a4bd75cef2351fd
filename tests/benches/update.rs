//! Update write benchmark: how fast Keelson writes an update, beside `dd` writing the same
//! root image to the same partition in the same VM, measured in the same run.
//!
//! 1. Keelson: a node boots the test image and applies the next release's signed bundle,
//!    fetched from an HTTP server on the host (`Update.Apply` with a URL). The figure is
//!    the node's own: receiving, checking the signature and digests, writing the kernel
//!    and initrd to the ESP and the root to ROOT-B, flushing, and reading all of it back
//!    from the disk to verify it. Between runs `Update.Cancel` takes the entry away again.
//!    Then the same upload through `keelctl upgrade --bundle`, timed on the host.
//! 2. `dd`: the same VM (same disk image, firmware, kernel, memory and CPUs) boots the
//!    kernel directly with a BusyBox initramfs that holds the bundle's root image, and
//!    `dd`s it to ROOT-B with `conv=fsync`; then `wget | dd` fetches it from the same
//!    HTTP server, which is the same road the node's fetch takes.
//!
//! Rates are bytes written per second: the whole bundle for Keelson, the root image for
//! the baselines. Figures are printed, never asserted: they depend on the machine.
//!
//! Run: `cargo bench -p keelson-tests --bench update` (uses `KEELSON_TEST_IMAGE` and
//! `KEELSON_TEST_BUNDLES` if set; `KEELSON_BENCH_RUNS` sets the runs, 3 by default).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keelson_api::roles::Role;
use keelson_api::update::{apply_request, ApplyOptions, ApplyRequest, CancelRequest};
use keelson_image::{WriteBaseline, WriteBaselineRun};
use keelson_qemu::{KernelBoot, Vm, VmOptions, GUEST_SERVICE_ADDRESS};
use keelson_tests::http::HttpServer;
use keelson_tests::{keelctl_binary, next_bundle, test_image, update_key, TestNode, BOOT_TIMEOUT};
use keelson_update::bundle::{ArtifactKind, BundleReader};
use keelson_update::keys::{PublicKey, TrustRoot};

/// The port the guest reaches the host's HTTP server on.
const SERVER_PORT: u16 = 8080;

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted[sorted.len() / 2]
}

fn megabytes_per_second(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e6 / seconds
}

/// The root artifact (root image and hash tree) exactly as the bundle carries it, checked
/// against the signed manifest on the way out.
fn root_image_of(bundle: &Path) -> anyhow::Result<Vec<u8>> {
    let key_path = update_key().with_extension("key.pub");
    let key = PublicKey::parse(&std::fs::read_to_string(&key_path)?)
        .with_context(|| format!("in {}", key_path.display()))?;
    let file = std::fs::File::open(bundle)?;
    let mut reader = BundleReader::open(std::io::BufReader::new(file), &TrustRoot::new(vec![key]))?;
    let mut root = Vec::new();
    while let Some(artifact) = reader.peek() {
        if artifact.name == ArtifactKind::Root {
            reader.copy_next(&mut root, &mut |_| {})?;
        } else {
            reader.copy_next(&mut std::io::sink(), &mut |_| {})?;
        }
    }
    reader.finish()?;
    Ok(root)
}

/// What the Keelson node measured.
struct KeelsonRuns {
    /// Bytes of the bundle's artifacts.
    bytes: u64,
    /// The node's own seconds for each fetched apply.
    fetched: Vec<f64>,
    /// Of those, the seconds spent reading it all back to verify it.
    verified: Vec<f64>,
    /// The host's wall time of each `keelctl upgrade --bundle`.
    uploaded: Vec<f64>,
}

/// Keelson applying `bundle` `runs` times: fetched by the node from the server, then
/// uploaded with keelctl.
fn keelson_runs(server_port: u16, bundle: &Path, runs: usize) -> anyhow::Result<KeelsonRuns> {
    let (mut node, _) = TestNode::boot_with(|options| {
        options.host_services = vec![(SERVER_PORT, server_port)];
    })?;
    node.vm
        .wait_for_console("keelson: update: slot a", BOOT_TIMEOUT)
        .context("the first boot was never blessed")?;
    let file_name = bundle.file_name().unwrap_or_default().to_string_lossy();
    let url = format!("http://{GUEST_SERVICE_ADDRESS}:{SERVER_PORT}/{file_name}");
    let cancel = |node: &TestNode| {
        node.update(|mut client| async move { client.cancel(CancelRequest {}).await })
    };
    let mut bytes = 0;
    let mut fetched = Vec::new();
    let mut verified = Vec::new();
    for _ in 0..runs {
        let applied = node.update(|mut client| {
            let options = ApplyRequest {
                item: Some(apply_request::Item::Options(ApplyOptions {
                    url: url.clone(),
                    no_reboot: true,
                    ..ApplyOptions::default()
                })),
            };
            async move { client.apply(futures::stream::iter([options])).await }
        })?;
        if applied.slot != "b" || applied.bytes == 0 {
            bail!("the apply did not write slot B: {applied:?}");
        }
        bytes = applied.bytes;
        fetched.push(applied.seconds);
        verified.push(applied.verify_seconds);
        cancel(&node)?;
    }
    // Built (when it must be) before the clock starts.
    keelctl_binary()?;
    let mut uploaded = Vec::new();
    let bundle_argument = bundle.to_string_lossy();
    for _ in 0..runs {
        let started = Instant::now();
        let (success, stdout, stderr) = node.keelctl(
            Role::Operator,
            &["upgrade", "--bundle", &bundle_argument, "--no-reboot"],
        )?;
        if !success {
            bail!("keelctl upgrade failed: {stdout}{stderr}");
        }
        uploaded.push(started.elapsed().as_secs_f64());
        cancel(&node)?;
    }
    node.vm.kill();
    Ok(KeelsonRuns {
        bytes,
        fetched,
        verified,
        uploaded,
    })
}

/// The `dd` baseline in the same VM, on a fresh overlay of the same disk image.
fn baseline_runs(
    server_port: u16,
    root_image: &[u8],
    runs: usize,
) -> anyhow::Result<WriteBaselineRun> {
    let workspace = keelson_image::default_workspace();
    let options = keelson_image::BuildOptions::new(workspace.join("target/bench"));
    let baseline = keelson_image::build_write_baseline(&options, root_image)?;
    let url = format!("http://{GUEST_SERVICE_ADDRESS}:{SERVER_PORT}/root.img");
    let mut vm_options = VmOptions::new(test_image());
    vm_options.host_services = vec![(SERVER_PORT, server_port)];
    vm_options.kernel_boot = Some(KernelBoot {
        kernel: baseline.kernel,
        initrd: baseline.initrd,
        cmdline: WriteBaseline::cmdline(runs, Some(&url)),
    });
    let mut vm = Vm::start(vm_options)?;
    vm.wait_exit(BOOT_TIMEOUT + Duration::from_secs(60 * runs as u64))?;
    WriteBaselineRun::parse(&vm.console_text())
        .with_context(|| format!("console:\n{}", vm.console_tail(30)))
}

fn main() -> anyhow::Result<()> {
    let runs: usize = match std::env::var("KEELSON_BENCH_RUNS") {
        Ok(text) => text
            .parse()
            .ok()
            .filter(|runs| *runs > 0)
            .with_context(|| format!("KEELSON_BENCH_RUNS={text} is not a positive count"))?,
        Err(_) => 3,
    };
    let (bundle, version) = next_bundle();
    let root_image = root_image_of(&bundle)?;
    let served = tempfile::tempdir()?;
    std::fs::write(served.path().join("root.img"), &root_image)?;
    let bundle_name = bundle.file_name().context("the bundle has no file name")?;
    std::fs::copy(&bundle, served.path().join(bundle_name))?;
    let server = HttpServer::directory(served.path().to_owned());

    let KeelsonRuns {
        bytes: bundle_bytes,
        fetched,
        verified,
        uploaded,
    } = keelson_runs(server.port, &bundle, runs)?;
    let baseline = baseline_runs(server.port, &root_image, runs)?;

    let keelson = megabytes_per_second(bundle_bytes, median(&fetched));
    let upload = megabytes_per_second(bundle_bytes, median(&uploaded));
    let dd = megabytes_per_second(baseline.bytes, median(&baseline.dd_seconds));
    let accel = format!("{:?}", keelson_qemu::Accel::from_env());
    println!("Keelson update write benchmark ({accel}, median of {runs}, same VM and partition)");
    println!(
        "  keelson apply, fetched by the node: {keelson:7.2} MB/s  {bundle_bytes} bytes of {version}, verified; runs {fetched:.2?} s"
    );
    println!(
        "    of which reading it back to verify: {:.2} s; runs {verified:.2?} s",
        median(&verified)
    );
    println!(
        "  keelson apply, keelctl upload:      {upload:7.2} MB/s  wall time on the host; runs {uploaded:.2?} s"
    );
    println!(
        "  dd of the root image to ROOT-B:     {dd:7.2} MB/s  {} bytes, conv=fsync; runs {:.2?} s",
        baseline.bytes, baseline.dd_seconds
    );
    if !baseline.fetch_seconds.is_empty() {
        let fetch = megabytes_per_second(baseline.bytes, median(&baseline.fetch_seconds));
        println!(
            "  wget | dd, the same HTTP road:      {fetch:7.2} MB/s  runs {:.2?} s",
            baseline.fetch_seconds
        );
        println!("  ratio keelson/(wget | dd): {:.2}", keelson / fetch);
    }
    println!("  ratio keelson/dd:          {:.2}", keelson / dd);
    Ok(())
}
