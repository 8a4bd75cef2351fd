//! Helpers for Keelson's end-to-end tests: one image per test run, VMs booted from it, and
//! an API client on the forwarded port.
//!
//! The image comes from `KEELSON_TEST_IMAGE` when set (the test script builds it once,
//! beforehand); otherwise the first test to ask builds it into `target/e2e/`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keelson_api::machine::machine_client::MachineClient;
use keelson_api::machine::StatusResponse;
use keelson_qemu::{free_port, Vm, VmOptions, MAINTENANCE_PATTERN, READY_PATTERN};

/// How long a boot to the ready line may take under TCG on a slow, busy machine.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// The image under test, built once per test process if not given.
pub fn test_image() -> PathBuf {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let image = IMAGE.get_or_init(|| {
        if let Some(path) = std::env::var_os("KEELSON_TEST_IMAGE") {
            return Ok(PathBuf::from(path));
        }
        let workspace = keelson_image::default_workspace();
        let mut options = keelson_image::BuildOptions::new(workspace.join("target/e2e"));
        options.cargo_target_dir = Some(workspace.join("target/e2e-build"));
        keelson_image::build(&options)
            .map(|summary| summary.image)
            .map_err(|error| format!("{error:#}"))
    });
    match image {
        Ok(path) => path.clone(),
        Err(error) => panic!("cannot build the test image: {error}"),
    }
}

/// A booted test machine with its API port.
pub struct TestNode {
    /// The VM.
    pub vm: Vm,
    /// Host port forwarded to the API.
    pub api_port: u16,
    runtime: tokio::runtime::Runtime,
}

impl TestNode {
    /// Prepares (does not boot) a node on a disk of `disk_bytes`.
    pub fn prepare(disk_bytes: Option<u64>) -> anyhow::Result<TestNode> {
        TestNode::prepare_with(|options| options.disk_bytes = disk_bytes)
    }

    /// Prepares (does not boot) a node whose VM options `configure` adjusts (a config by
    /// fw_cfg, a NoCloud seed, a static guest address…).
    pub fn prepare_with(configure: impl FnOnce(&mut VmOptions)) -> anyhow::Result<TestNode> {
        let api_port = free_port()?;
        let mut options = VmOptions::new(test_image());
        options.api_port = Some(api_port);
        configure(&mut options);
        let vm = Vm::prepare(options)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(TestNode {
            vm,
            api_port,
            runtime,
        })
    }

    /// Boots a node and waits for its ready line.
    pub fn boot(disk_bytes: Option<u64>) -> anyhow::Result<TestNode> {
        let mut node = TestNode::prepare(disk_bytes)?;
        node.vm.power_on()?;
        node.vm.wait_for_console(READY_PATTERN, BOOT_TIMEOUT)?;
        Ok(node)
    }

    /// Boots a node with adjusted options and waits for its ready or maintenance line;
    /// returns the node and that line.
    pub fn boot_with(configure: impl FnOnce(&mut VmOptions)) -> anyhow::Result<(TestNode, String)> {
        let mut node = TestNode::prepare_with(configure)?;
        node.vm.power_on()?;
        let (_, line) = node
            .vm
            .wait_for_any(&[READY_PATTERN, MAINTENANCE_PATTERN], BOOT_TIMEOUT)?;
        Ok((node, line))
    }

    /// Powers the node off through the ACPI button and waits for QEMU to exit.
    pub fn power_off(&mut self) -> anyhow::Result<()> {
        self.vm.powerdown()?;
        let status = self.vm.wait_exit(Duration::from_secs(30))?;
        if !status.success() {
            bail!("QEMU exited with {status}");
        }
        Ok(())
    }

    /// Runs `call` with a connected Machine client, retrying the connection for a while
    /// (the forward only answers once the guest listens).
    pub fn machine<T, F, Fut>(&self, call: F) -> anyhow::Result<T>
    where
        F: Fn(MachineClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let endpoint = format!("http://127.0.0.1:{}", self.api_port);
        self.runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let attempt = async {
                    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())?
                        .connect_timeout(Duration::from_secs(5))
                        .timeout(Duration::from_secs(30))
                        .connect()
                        .await?;
                    anyhow::Ok(call(MachineClient::new(channel)).await?.into_inner())
                };
                match attempt.await {
                    Ok(value) => return Ok(value),
                    Err(error) if Instant::now() >= deadline => {
                        return Err(error).with_context(|| format!("calling the API at {endpoint}"))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        })
    }

    /// `Machine.Status`.
    pub fn status(&self) -> anyhow::Result<StatusResponse> {
        self.machine(|mut client| async move {
            client.status(keelson_api::machine::StatusRequest {}).await
        })
    }
}

/// Runs a host command and returns its stdout, failing with its stderr.
pub fn host_command(program: &str, arguments: &[&str]) -> anyhow::Result<String> {
    let output = std::process::Command::new(program)
        .args(arguments)
        .output()
        .with_context(|| format!("cannot run {program} (is it installed?)"))?;
    if !output.status.success() {
        bail!(
            "{program} {arguments:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Reads the partition table of a raw image.
pub fn partition_table(image: &Path) -> anyhow::Result<keelson_disk::gpt::Gpt> {
    let mut file = std::fs::File::open(image)?;
    let size = file.metadata()?.len();
    Ok(keelson_disk::gpt::read_table(&mut file, size)?)
}

/// The path of a fixture in `tests/data/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name)
}

/// The STATE filesystem of a stopped VM, exported to a raw file and read with e2fsprogs'
/// `debugfs` (no root, no mounting). Paths are relative to STATE, which is `/var` on the
/// node: `/lib/keelson` here is `/var/lib/keelson` there.
pub struct ExportedState {
    image: PathBuf,
    offset: u64,
}

impl ExportedState {
    /// Exports the disk of `vm`, which must have stopped.
    pub fn of(vm: &mut Vm) -> anyhow::Result<ExportedState> {
        let image = vm.dir().join("exported.raw");
        vm.export_raw(&image)?;
        let table = partition_table(&image)?;
        let state = table
            .find(keelson_disk::layout::STATE_LABEL)
            .context("no STATE partition in the exported disk")?;
        Ok(ExportedState {
            offset: state.offset_bytes(),
            image,
        })
    }

    fn debugfs(&self, request: &str) -> anyhow::Result<(Vec<u8>, String)> {
        let output = std::process::Command::new("debugfs")
            .arg("-R")
            .arg(request)
            .arg(format!("{}?offset={}", self.image.display(), self.offset))
            .output()
            .context("cannot run debugfs (install e2fsprogs)")?;
        Ok((
            output.stdout,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// `debugfs stat` of `path`, or `None` when it does not exist.
    pub fn stat(&self, path: &str) -> anyhow::Result<Option<String>> {
        let (stdout, stderr) = self.debugfs(&format!("stat {path}"))?;
        if stderr.contains("not found") || stdout.is_empty() {
            return Ok(None);
        }
        Ok(Some(String::from_utf8_lossy(&stdout).into_owned()))
    }

    /// The contents of `path`, or `None` when it does not exist.
    pub fn read(&self, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
        if self.stat(path)?.is_none() {
            return Ok(None);
        }
        let (stdout, _) = self.debugfs(&format!("cat {path}"))?;
        Ok(Some(stdout))
    }
}
