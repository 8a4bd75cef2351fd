//! Helpers for Keelson's end-to-end tests: one image per test run, VMs booted from it, and
//! an API client on the forwarded port.
//!
//! The image comes from `KEELSON_TEST_IMAGE` when set (the test script builds it once,
//! beforehand); otherwise the first test to ask builds it into `target/e2e/`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
    /// Set when the API is reached inside a network namespace instead (the namespace and
    /// the guest's address there).
    pub api_in_netns: Option<(PathBuf, SocketAddr)>,
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
            api_in_netns: None,
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
                    let channel = self.channel(&endpoint).await?;
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

    async fn channel(&self, endpoint: &str) -> anyhow::Result<tonic::transport::Channel> {
        let endpoint = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        let Some((netns, address)) = self.api_in_netns.clone() else {
            return Ok(endpoint.connect().await?);
        };
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let netns = netns.clone();
            async move {
                let stream = connect_in_netns(&netns, address)?;
                let stream = tokio::net::TcpStream::from_std(stream)?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        Ok(endpoint.connect_with_connector(connector).await?)
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

/// Opens a TCP connection from inside the network namespace `netns` (a thread enters it,
/// connects, and ends; the socket stays in that namespace).
fn connect_in_netns(netns: &Path, address: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let netns = netns.to_owned();
    std::thread::spawn(move || {
        let namespace = std::fs::File::open(&netns)?;
        nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        let stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the connecting thread panicked")))
}

/// A network namespace with a tap device and a real DHCP server (dnsmasq) on it: the other
/// side of a guest's NIC, for testing DHCP with a router, DNS and short leases. Needs root;
/// removed on drop.
pub struct DhcpLab {
    /// The namespace's name.
    pub name: String,
    /// `/run/netns/<name>`, for `VmOptions::netns`.
    pub netns: PathBuf,
    dir: tempfile::TempDir,
    server: Child,
}

impl DhcpLab {
    /// The tap device the guest's NIC attaches to.
    pub const TAP: &'static str = "ktap0";
    /// The server's (and router's, and DNS server's) address.
    pub const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
    /// The address dnsmasq gives QEMU's default MAC (52:54:00:12:34:56).
    pub const GUEST: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 50);

    /// True when this process may create namespaces (root).
    pub fn possible() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// Creates the namespace and starts dnsmasq with leases of `lease` (e.g. `2m`).
    pub fn start(lease: &str) -> anyhow::Result<DhcpLab> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let number = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("keelson-{}-{number}", std::process::id());
        host_command("ip", &["netns", "add", &name])?;
        let dir = tempfile::tempdir()?;
        let prepared = (|| {
            host_command("ip", &["-n", &name, "link", "set", "lo", "up"])?;
            host_command(
                "ip",
                &[
                    "-n",
                    &name,
                    "tuntap",
                    "add",
                    "dev",
                    Self::TAP,
                    "mode",
                    "tap",
                ],
            )?;
            let router = format!("{}/24", Self::ROUTER);
            host_command(
                "ip",
                &["-n", &name, "addr", "add", &router, "dev", Self::TAP],
            )?;
            host_command("ip", &["-n", &name, "link", "set", Self::TAP, "up"])?;
            let server = Command::new("ip")
                .args(["netns", "exec", &name, "dnsmasq", "--keep-in-foreground"])
                .args(["--no-resolv", "--no-hosts", "--port=0", "--user=root"])
                .arg(format!("--interface={}", Self::TAP))
                .arg("--bind-interfaces")
                .arg(format!(
                    "--dhcp-range=192.168.77.50,192.168.77.99,255.255.255.0,{lease}"
                ))
                .arg(format!("--dhcp-host=52:54:00:12:34:56,{}", Self::GUEST))
                .arg(format!("--dhcp-option=option:router,{}", Self::ROUTER))
                .arg(format!("--dhcp-option=option:dns-server,{}", Self::ROUTER))
                .arg(format!(
                    "--dhcp-leasefile={}",
                    dir.path().join("leases").display()
                ))
                .arg("--log-dhcp")
                .arg(format!(
                    "--log-facility={}",
                    dir.path().join("dnsmasq.log").display()
                ))
                .arg("--pid-file=")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("dnsmasq.stderr"))?)
                .spawn()
                .context("cannot start dnsmasq (install dnsmasq-base)")?;
            anyhow::Ok(server)
        })();
        match prepared {
            Ok(server) => Ok(DhcpLab {
                netns: PathBuf::from("/run/netns").join(&name),
                name,
                dir,
                server,
            }),
            Err(error) => {
                let _ = host_command("ip", &["netns", "del", &name]);
                Err(error)
            }
        }
    }

    /// dnsmasq's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dnsmasq.log")).unwrap_or_default()
    }
}

impl Drop for DhcpLab {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = host_command("ip", &["netns", "del", &self.name]);
    }
}
