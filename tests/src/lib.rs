//! Helpers for Keelson's end-to-end tests: one image per test run, VMs booted from it, and
//! a mutual-TLS API client (and `keelctl`) on the forwarded port.
//!
//! The image comes from `KEELSON_TEST_IMAGE` when set (the test script builds it once,
//! beforehand); otherwise the first test to ask builds it into `target/e2e/`. The cluster
//! PKI comes from `keelctl gen config`'s own code, once per test process: nodes boot with
//! its machine config by fw_cfg unless a test gives another.

pub mod http;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use keelson_api::client::ClientTls;
use keelson_api::machine::machine_client::MachineClient;
use keelson_api::machine::StatusResponse;
use keelson_api::roles::Role;
use keelson_api::update::update_client::UpdateClient;
use keelson_config::model::ApiPki;
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
        options.signing_key = Some(update_key());
        keelson_image::build(&options)
            .map(|summary| summary.image)
            .map_err(|error| format!("{error:#}"))
    });
    match image {
        Ok(path) => path.clone(),
        Err(error) => panic!("cannot build the test image: {error}"),
    }
}

/// The key the test image trusts for updates: from the test script's
/// `KEELSON_TEST_BUNDLES` directory, or made once in `target/e2e/`.
pub fn update_key() -> PathBuf {
    if let Some(directory) = std::env::var_os("KEELSON_TEST_BUNDLES") {
        return Path::new(&directory).join("update.key");
    }
    let path = keelson_image::default_workspace().join("target/e2e/update.key");
    if !path.exists() {
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new("."))).expect("target/e2e");
        keelson_image::keygen(&path).expect("keelson-image keygen");
    }
    path
}

/// The next release's signed bundle and its version: from the test script, or built once
/// per test process (the workspace version with its patch number raised).
pub fn next_bundle() -> (PathBuf, String) {
    static BUNDLE: OnceLock<Result<(PathBuf, String), String>> = OnceLock::new();
    let bundle = BUNDLE.get_or_init(|| {
        let directory = match std::env::var_os("KEELSON_TEST_BUNDLES") {
            Some(directory) => Path::new(&directory).join("next"),
            None => {
                let workspace = keelson_image::default_workspace();
                let mut options =
                    keelson_image::BuildOptions::new(workspace.join("target/e2e-next"));
                options.cargo_target_dir = Some(workspace.join("target/e2e-build"));
                options.signing_key = Some(update_key());
                options.version = next_version(env!("CARGO_PKG_VERSION"));
                keelson_image::build(&options).map_err(|error| format!("{error:#}"))?;
                options.out_dir
            }
        };
        bundle_in(&directory)
    });
    match bundle {
        Ok(found) => found.clone(),
        Err(error) => panic!("cannot build the next release's bundle: {error}"),
    }
}

/// A signed release whose agent exits at once (built by the test script with a root
/// overlay), and its version.
pub fn broken_bundle() -> (PathBuf, String) {
    let directory = std::env::var_os("KEELSON_TEST_BUNDLES")
        .map(|directory| Path::new(&directory).join("broken"))
        .expect(
            "KEELSON_TEST_BUNDLES is not set: run scripts/test.sh, which builds the broken release",
        );
    bundle_in(&directory).unwrap_or_else(|error| panic!("the broken release: {error}"))
}

/// The bundle `keelson-image build` wrote into `directory`, and its version.
fn bundle_in(directory: &Path) -> Result<(PathBuf, String), String> {
    let summary: serde_json::Value = std::fs::read(directory.join("build.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| format!("no build.json in {}", directory.display()))?;
    let version = summary["version"].as_str().unwrap_or_default().to_owned();
    let path = directory.join(format!("keelson-{version}.bundle"));
    Ok((path, version))
}

/// `1.2.3` → `1.2.4`.
pub fn next_version(version: &str) -> String {
    match version.rsplit_once('.') {
        Some((head, patch)) => format!("{head}.{}", patch.parse::<u64>().unwrap_or(0) + 1),
        None => format!("{version}.1"),
    }
}

/// The test cluster: what `keelctl gen config` wrote, plus a keelctl config per role.
pub struct TestCluster {
    /// The `gen config` directory.
    pub dir: PathBuf,
    /// The node machine config (native YAML).
    pub node_config: PathBuf,
    /// The node API credentials in it.
    pub api: ApiPki,
}

/// The cluster name the tests use.
pub const CLUSTER: &str = "e2e";

impl TestCluster {
    /// The process's cluster, generated on first use.
    pub fn get() -> &'static TestCluster {
        static CLUSTER_PKI: OnceLock<TestCluster> = OnceLock::new();
        CLUSTER_PKI.get_or_init(|| {
            let dir = keelson_image::default_workspace()
                .join(format!("target/e2e-pki/{}", std::process::id()));
            let now = time::OffsetDateTime::now_utc();
            keelson_ctl::generate::gen_config(
                &keelson_ctl::generate::GenConfig {
                    cluster: CLUSTER.into(),
                    out: dir.clone(),
                    endpoints: vec!["127.0.0.1".into()],
                    force: true,
                    format: Default::default(),
                },
                now,
            )
            .expect("keelctl gen config");
            for role in [Role::Reader, Role::Operator] {
                keelson_ctl::generate::gen_client(
                    &keelson_ctl::generate::GenClient {
                        pki: dir.clone(),
                        name: format!("e2e-{role}"),
                        role,
                        days: 1,
                        out: dir.join(format!("{role}.yaml")),
                        force: true,
                    },
                    now,
                )
                .expect("keelctl gen client");
            }
            let node_config = dir.join(keelson_ctl::generate::NODE_CONFIG);
            let loaded = keelson_config::load(
                "node.yaml",
                &std::fs::read(&node_config).expect("node.yaml"),
            )
            .expect("the generated node config is valid");
            TestCluster {
                api: loaded.plan.api.expect("the generated node config has api"),
                node_config,
                dir,
            }
        })
    }

    /// The keelctl config of `role` (admin: the one `gen config` wrote).
    pub fn keelconfig(&self, role: Role) -> PathBuf {
        match role {
            Role::Admin => self.dir.join(keelson_ctl::generate::KEELCTL_CONFIG),
            other => self.dir.join(format!("{other}.yaml")),
        }
    }

    /// A mutual-TLS client identity of `role`.
    pub fn tls(&self, role: Role) -> ClientTls {
        let config = keelson_ctl::keelconfig::Keelconfig::load(&self.keelconfig(role))
            .expect("keelctl config");
        let context = config.select(None).expect("context");
        let tls = keelson_api::tls::client_config(&context.ca, &context.cert, &context.key)
            .expect("client TLS");
        ClientTls::new(tls, &context.server_name).expect("server name")
    }
}

impl TestCluster {
    fn derived(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.dir.join("derived").join(name);
        std::fs::create_dir_all(path.parent().unwrap_or(&self.dir)).expect("derived directory");
        std::fs::write(&path, contents).expect("derived config");
        path
    }

    /// An Ignition fixture with the cluster's API credentials added as files.
    pub fn ignition_fixture(&self, name: &str) -> PathBuf {
        let text = std::fs::read_to_string(fixture(name)).expect("fixture");
        let mut config: serde_json::Value = serde_json::from_str(&text).expect("Ignition JSON");
        let files = config["storage"]["files"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut files = files;
        files.extend(keelson_ctl::generate::ignition_api_files(&self.api));
        config["storage"]["files"] = serde_json::Value::Array(files);
        self.derived(&name.replace('/', "-"), config.to_string().as_bytes())
    }

    /// The cluster's node config with `change` applied, written beside it as `name`.
    pub fn node_config_with(
        &self,
        name: &str,
        change: impl FnOnce(&mut keelson_config::MachineConfig),
    ) -> PathBuf {
        let text = std::fs::read(&self.node_config).expect("node.yaml");
        let mut findings = keelson_config::diagnostic::Findings::new("node.yaml");
        let mut config =
            keelson_config::native::parse(&text, &mut findings).expect("node.yaml parses");
        change(&mut config);
        self.derived(name, keelson_config::native::to_yaml(&config).as_bytes())
    }

    /// A native fixture with the cluster's `api` section added.
    pub fn native_fixture(&self, name: &str) -> PathBuf {
        let text = std::fs::read(fixture(name)).expect("fixture");
        let mut findings = keelson_config::diagnostic::Findings::new(name);
        let mut config = keelson_config::native::parse(&text, &mut findings).expect("native YAML");
        config.api = Some(self.api.clone());
        self.derived(
            &name.replace('/', "-"),
            keelson_config::native::to_yaml(&config).as_bytes(),
        )
    }

    /// A NoCloud seed directory (a fixture's copy) whose `#cloud-config` user-data also
    /// writes the cluster's API credentials.
    pub fn nocloud_fixture(&self, name: &str) -> PathBuf {
        let source = fixture(name);
        let target = self.dir.join("derived").join(name.replace('/', "-"));
        std::fs::create_dir_all(&target).expect("seed directory");
        for entry in std::fs::read_dir(&source).expect("seed fixture") {
            let entry = entry.expect("seed entry");
            std::fs::copy(entry.path(), target.join(entry.file_name())).expect("seed copy");
        }
        let user_data = std::fs::read_to_string(target.join("user-data")).expect("user-data");
        let mut document: serde_json::Value =
            serde_yaml::from_str(&user_data).expect("cloud-config YAML");
        let mut files = document["write_files"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        files.extend(keelson_ctl::generate::cloud_config_api_files(&self.api));
        document["write_files"] = serde_json::Value::Array(files);
        let text = format!(
            "#cloud-config\n{}",
            serde_yaml::to_string(&document).expect("YAML")
        );
        std::fs::write(target.join("user-data"), text).expect("user-data");
        target
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
    /// fw_cfg, a NoCloud seed, a static guest address…). By default the node gets the
    /// test cluster's machine config by fw_cfg.
    pub fn prepare_with(configure: impl FnOnce(&mut VmOptions)) -> anyhow::Result<TestNode> {
        TestNode::prepare_on(test_image(), configure)
    }

    /// [`TestNode::prepare_with`] on another image than the test image (a bench image).
    pub fn prepare_on(
        image: PathBuf,
        configure: impl FnOnce(&mut VmOptions),
    ) -> anyhow::Result<TestNode> {
        let api_port = free_port()?;
        let mut options = VmOptions::new(image);
        options.api_port = Some(api_port);
        options.config = Some(TestCluster::get().node_config.clone());
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
        // A graceful shutdown gives the pods their grace periods first (30 s by default,
        // the config's kubelet.shutdownGracePeriod at most 60 s; PID 1 waits 75 s for the
        // agent at most).
        let status = self.vm.wait_exit(Duration::from_secs(90))?;
        if !status.success() {
            bail!("QEMU exited with {status}");
        }
        Ok(())
    }

    /// Runs `call` as an admin with a connected Machine client, retrying the connection
    /// for a while (the forward only answers once the guest listens).
    pub fn machine<T, F, Fut>(&self, call: F) -> anyhow::Result<T>
    where
        F: Fn(MachineClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.machine_as(Role::Admin, call)
    }

    /// [`TestNode::machine`] with the identity of `role`. Refusals (a status from the
    /// node) are returned at once; only failures to reach the node are retried.
    pub fn machine_as<T, F, Fut>(&self, role: Role, call: F) -> anyhow::Result<T>
    where
        F: Fn(MachineClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.machine_with(&TestCluster::get().tls(role), call)
    }

    /// [`TestNode::machine`] as a client of a node in maintenance mode, accepting only
    /// the certificate with `fingerprint`.
    pub fn machine_in_maintenance<T, F, Fut>(&self, fingerprint: &str, call: F) -> anyhow::Result<T>
    where
        F: Fn(MachineClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let config = keelson_api::tls::maintenance_client_config(Some(fingerprint.to_owned()))?;
        let tls = ClientTls::new(config, keelson_api::pki::MAINTENANCE_SERVER_NAME)
            .map_err(anyhow::Error::msg)?;
        self.machine_with(&tls, call)
    }

    /// Runs `call` as an admin with a connected Update client, like [`TestNode::machine`].
    pub fn update<T, F, Fut>(&self, call: F) -> anyhow::Result<T>
    where
        F: Fn(UpdateClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_with(
            &TestCluster::get().tls(Role::Admin),
            UpdateClient::new,
            call,
        )
    }

    fn machine_with<T, F, Fut>(&self, tls: &ClientTls, call: F) -> anyhow::Result<T>
    where
        F: Fn(MachineClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_with(tls, MachineClient::new, call)
    }

    fn call_with<C, T, F, Fut>(
        &self,
        tls: &ClientTls,
        new_client: fn(tonic::transport::Channel) -> C,
        call: F,
    ) -> anyhow::Result<T>
    where
        F: Fn(C) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let error = match self.channel(tls).await {
                    Ok(channel) => match call(new_client(channel)).await {
                        Ok(response) => return Ok(response.into_inner()),
                        Err(status) if status.code() != tonic::Code::Unavailable => {
                            return Err(anyhow::anyhow!(
                                "{:?}: {}",
                                status.code(),
                                keelson_ctl::describe_status(&status)
                            ))
                        }
                        Err(status) => anyhow::anyhow!(keelson_ctl::describe_status(&status)),
                    },
                    Err(error) => error,
                };
                if Instant::now() >= deadline {
                    return Err(
                        error.context(format!("calling the API at 127.0.0.1:{}", self.api_port))
                    );
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    }

    async fn channel(&self, tls: &ClientTls) -> anyhow::Result<tonic::transport::Channel> {
        let connected = match self.api_in_netns.clone() {
            None => {
                keelson_api::client::connect(&format!("127.0.0.1:{}", self.api_port), tls).await
            }
            Some((netns, address)) => {
                keelson_api::client::connect_with(&address.to_string(), tls, move || {
                    let netns = netns.clone();
                    async move {
                        let stream = connect_in_netns(&netns, address)?;
                        tokio::net::TcpStream::from_std(stream)
                    }
                })
                .await
            }
        };
        connected.map_err(|error| anyhow::anyhow!(keelson_api::client::root_cause(&error)))
    }

    /// `Machine.Status`, as an admin.
    pub fn status(&self) -> anyhow::Result<StatusResponse> {
        self.machine(|mut client| async move {
            client.status(keelson_api::machine::StatusRequest {}).await
        })
    }

    /// `keelctl` with `role`'s identity, aimed at this node, ready to run or spawn.
    pub fn keelctl_command(&self, role: Role, arguments: &[&str]) -> anyhow::Result<Command> {
        let mut command = Command::new(keelctl_binary()?);
        command
            .env("KEELCONFIG", TestCluster::get().keelconfig(role))
            .arg("-n")
            .arg(format!("127.0.0.1:{}", self.api_port))
            .args(arguments)
            .stdin(Stdio::null());
        Ok(command)
    }

    /// Archives the OCI layout in `layout` (as `keelson_testkit::oci::busybox_layout`
    /// builds it) and imports it into the node as `name`, as an operator would.
    pub fn import_layout(&self, layout: &Path, name: &str) -> anyhow::Result<()> {
        let archive = keelson_testkit::oci::archive(
            layout,
            keelson_testkit::oci::ArchiveKind::Oci,
            "image.tar",
            name,
        )
        .map_err(anyhow::Error::msg)?;
        let (ok, _, stderr) = self.keelctl(
            Role::Operator,
            &["image", "import", archive.to_str().context("a path")?],
        )?;
        if !ok {
            bail!("keelctl image import {}: {stderr}", archive.display());
        }
        Ok(())
    }

    /// Runs the real `keelctl` against this node (through the forwarded port) with the
    /// keelctl config of `role`; returns its exit success, stdout and stderr.
    pub fn keelctl(
        &self,
        role: Role,
        arguments: &[&str],
    ) -> anyhow::Result<(bool, String, String)> {
        let output = self
            .keelctl_command(role, arguments)?
            .output()
            .context("running keelctl")?;
        Ok((
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }
}

/// The stdout of a `keelctl` run that must succeed ([`TestNode::keelctl`]'s outcome).
pub fn expect_success(outcome: (bool, String, String), what: &str) -> String {
    let (success, stdout, stderr) = outcome;
    assert!(
        success,
        "keelctl {what} failed:\nstdout: {stdout}\nstderr: {stderr}"
    );
    stdout
}

/// The stderr of a `keelctl` run that must fail, with one clear line.
pub fn expect_failure(outcome: (bool, String, String), what: &str) -> String {
    let (success, stdout, stderr) = outcome;
    assert!(
        !success,
        "keelctl {what} should have failed:\nstdout: {stdout}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");
    stderr
}

/// The `keelctl` binary of this workspace: `KEELSON_KEELCTL` when the caller built it
/// already (scripts/test.sh does), otherwise built here.
pub fn keelctl_binary() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| workspace_binary("KEELSON_KEELCTL", "keelson-ctl", "keelctl"))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The `keelson-image` binary of this workspace: `KEELSON_IMAGE_TOOL` when the caller built
/// it already (scripts/test.sh does), otherwise built here.
pub fn keelson_image_binary() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| workspace_binary("KEELSON_IMAGE_TOOL", "keelson-image", "keelson-image"))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A binary of this workspace: the file named by `variable` when set, else built with
/// cargo.
fn workspace_binary(variable: &str, package: &str, binary: &str) -> Result<PathBuf, String> {
    if let Some(prebuilt) = std::env::var_os(variable) {
        let prebuilt = PathBuf::from(prebuilt);
        return if prebuilt.is_file() {
            Ok(prebuilt)
        } else {
            Err(format!(
                "{variable} names {}, which is not a file; build {binary} (cargo build -p \
                 {package}) or unset it",
                prebuilt.display()
            ))
        };
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = keelson_image::default_workspace();
    let status = Command::new(cargo)
        .args(["build", "-q", "-p", package, "--bin", binary])
        .current_dir(&workspace)
        .status()
        .map_err(|error| format!("cannot run cargo: {error}"))?;
    if !status.success() {
        return Err(format!("cargo build -p {package} failed"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    Ok(target.join("debug").join(binary))
}

/// The fingerprint and token from a node's maintenance line on the console.
pub fn maintenance_credentials(console: &str) -> Option<(String, String)> {
    let line = console
        .lines()
        .rev()
        .find(|line| line.contains("keelson: maintenance api "))?;
    let value = |key: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key))
            .map(str::to_owned)
    };
    Some((value("fingerprint=")?, value("token=")?))
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
