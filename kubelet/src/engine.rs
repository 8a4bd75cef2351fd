//! The kubelet's shell over the runtime: from a pod's container to a running process and
//! back. Starting a run is this list of phases ([`Engine::start`]):
//! 1. the image, pulled when the pull policy says so ([`ImageAccess`]);
//! 2. the process (command, args, env with the downward API's values, working directory)
//!    from the image's config and the pod, and the user, looked up in the image's `/etc/passwd` when it is a name;
//! 3. the pod's volumes, made or checked on the node ([`crate::volumes`]);
//! 4. the cgroup, with the pod's limits;
//! 5. the bundle (the spec and the overlay's upper and work directories) and a hold on
//!    the image's layers;
//! 6. the log pipes, handed to PID 1 to keep, and their copiers;
//! 7. container-init, on a blocking thread, which joins the pod's sandbox (its shared
//!    network, IPC and UTS namespaces, made by [`Engine::sandbox`] before the pod's first
//!    container).
//!
//! A run ends when its process does: the engine learns the exit from a pidfd and PID 1's
//! exit record, the OOM kill from the cgroup's `memory.events`, then removes the bundle,
//! the cgroup and the hold.

use std::net::Ipv4Addr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use keelson_contract::exits::{self, ExitStatus, EXITS_DIR};
use keelson_images::{ImageRecord, ImageStore};
use keelson_net::ipam::PodCidr;
use keelson_net::podnet;
use keelson_runtime::cgroup::CgroupTree;
use keelson_runtime::process::{self, ImageProcess, User};
use keelson_runtime::resources::CgroupValues;
use keelson_runtime::shell::launch::Launcher;
use keelson_runtime::shell::sandbox::{self, SandboxSpec};
use keelson_runtime::spec::{
    ContainerSpec, ExecSpec, IdMapping, NetworkMode, Process, RootSpec, SharedNamespaces,
    VolumeKind, VolumeMount, DEFAULT_RLIMITS,
};
use tokio::io::unix::AsyncFd;

use crate::downward::NodeFacts;
use crate::events::EventType;
use crate::handoff::{self, InheritedPipes};
use crate::logs::{self, LogLimits, LogWriter};
use crate::store::RunningRecord;
use crate::volumes;

/// How the engine gets images and keeps their layers (the agent serialises this with the
/// rest of the store's changes).
pub trait ImageAccess: Send + Sync {
    /// The image `reference`, pulled first when `policy` (`Always`, `IfNotPresent`,
    /// `Never`) says so.
    fn ensure<'a>(
        &'a self,
        reference: &'a str,
        policy: &'a str,
    ) -> BoxFuture<'a, Result<ImageRecord, String>>;
    /// Keeps the image's layers for `run` until released.
    fn hold<'a>(
        &'a self,
        run: &'a str,
        image: &'a ImageRecord,
    ) -> BoxFuture<'a, Result<(), String>>;
    /// Lets go of `run`'s layers.
    fn release<'a>(&'a self, run: &'a str) -> BoxFuture<'a, ()>;
}

/// Why a run could not start: a waiting reason as the kubelet names it, and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    /// `ErrImagePull`, `CreateContainerConfigError` or `CreateContainerError`.
    pub reason: &'static str,
    /// What went wrong and what to do.
    pub message: String,
}

/// An event a start produces: its type, reason and message.
pub type Note = (EventType, &'static str, String);

fn failure(reason: &'static str) -> impl Fn(String) -> StartFailure {
    move |message| StartFailure { reason, message }
}

/// A started run.
#[derive(Debug, Clone)]
pub struct Started {
    /// What to remember of it.
    pub record: RunningRecord,
    /// The image it runs (`name@manifest digest`).
    pub image_id: String,
}

/// What became of a run the agent met again after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Its process still runs (its logs are followed again).
    Running,
    /// It exited while the agent was away.
    Exited(ExitStatus),
    /// Neither its process nor an exit record exists (the node rebooted).
    Lost,
}

/// Where the engine keeps things, and its parts.
pub struct Engine {
    images: Arc<ImageStore>,
    access: Arc<dyn ImageAccess>,
    launcher: Launcher,
    bundles: PathBuf,
    logs: PathBuf,
    sandboxes: PathBuf,
    volumes: PathBuf,
    /// The pods' network: the config's, the default, or the cluster's lease (which may
    /// arrive while the engine runs, see [`Engine::set_pod_cidr`]).
    pod_cidr: std::sync::RwLock<PodCidr>,
    /// The bridge once made: for which CIDR, and the MTU pods get.
    bridge: tokio::sync::Mutex<Option<(PodCidr, u32)>>,
    cgroups: CgroupTree,
    inherited: InheritedPipes,
    log_limits: LogLimits,
}

/// The places an engine uses.
#[derive(Debug, Clone)]
pub struct EnginePaths {
    /// Container bundles (`/var/lib/keelson/containers`).
    pub bundles: PathBuf,
    /// Pod logs (`/var/log/pods`).
    pub logs: PathBuf,
    /// The cgroup2 root (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// Pod sandboxes, their namespaces pinned (`/run/keelson/pods`): gone with a reboot.
    pub sandboxes: PathBuf,
    /// Pod volumes (`/var/lib/keelson/volumes`, on STATE).
    pub volumes: PathBuf,
    /// The binary that runs container-init (the agent's own).
    pub container_init: PathBuf,
}

impl Engine {
    /// An engine over the image store.
    pub fn new(
        images: Arc<ImageStore>,
        access: Arc<dyn ImageAccess>,
        paths: EnginePaths,
        inherited: InheritedPipes,
    ) -> Engine {
        Engine {
            images,
            access,
            launcher: Launcher::new(paths.container_init),
            bundles: paths.bundles,
            logs: paths.logs,
            sandboxes: paths.sandboxes,
            volumes: paths.volumes,
            pod_cidr: std::sync::RwLock::new(PodCidr::default()),
            bridge: tokio::sync::Mutex::new(None),
            cgroups: CgroupTree::new(paths.cgroup_root),
            inherited,
            log_limits: LogLimits::default(),
        }
    }

    /// Rotates container logs at these limits rather than the kubelet's defaults.
    pub fn with_log_limits(mut self, limits: LogLimits) -> Engine {
        self.log_limits = limits;
        self
    }

    /// The log directory of a pod.
    pub fn pod_log_dir(&self, pod: &Pod) -> PathBuf {
        let (namespace, name) = crate::key(pod);
        logs::pod_log_dir(
            &self.logs,
            &namespace,
            &name,
            pod.metadata.uid.as_deref().unwrap_or_default(),
        )
    }

    /// The log file of run `run` of the pod's container `container`.
    pub fn run_log(&self, pod: &Pod, container: &str, run: u32) -> PathBuf {
        logs::run_log(&self.pod_log_dir(pod), container, run)
    }

    fn cgroup_of(pod: &Pod, container: &str) -> PathBuf {
        CgroupTree::container_path(pod.metadata.uid.as_deref().unwrap_or_default(), container)
    }

    fn sandbox_dir(&self, pod: &Pod) -> PathBuf {
        self.sandboxes
            .join(pod.metadata.uid.as_deref().unwrap_or_default())
    }

    /// True when the pod's sandbox is there (a reboot removes it).
    pub fn sandbox_exists(&self, pod: &Pod) -> bool {
        sandbox::exists(&self.sandbox_dir(pod), crate::network::has_own_network(pod))
    }

    /// The pod's sandbox: the namespaces its containers share, made when missing; its
    /// network namespace connected to the pods' bridge with `address`; and the files
    /// (`resolv.conf`, `hosts`, `hostname`) its containers get in `/etc`.
    pub async fn sandbox(
        &self,
        pod: &Pod,
        user_namespace: Option<IdMapping>,
        address: Option<Ipv4Addr>,
    ) -> Result<SharedNamespaces, StartFailure> {
        let error = failure("CreateContainerError");
        let directory = self.sandbox_dir(pod);
        let own_network = crate::network::has_own_network(pod);
        let shared = if sandbox::exists(&directory, own_network) {
            sandbox::namespaces(&directory, own_network)
        } else {
            let spec = SandboxSpec {
                hostname: crate::dns::hostname(pod),
                own_network,
                open_to_unprivileged: user_namespace.is_some(),
            };
            sandbox::create(&directory, &spec)
                .map_err(|reason| error(format!("cannot make the pod's sandbox: {reason}")))?
        };
        self.write_pod_files(pod, &directory, address)
            .map_err(&error)?;
        if let (Some(namespace), true) = (&shared.network, own_network) {
            let address = address.ok_or_else(|| {
                error("the pod has no address of the pod CIDR (its record lost it)".into())
            })?;
            let mtu = self.bridge().await.map_err(&error)?;
            let node_end = podnet::node_end_name(pod.metadata.uid.as_deref().unwrap_or_default());
            podnet::attach(namespace, &node_end, address, &self.pod_cidr(), mtu)
                .await
                .map_err(|reason| {
                    error(format!("cannot connect the pod to keelson0: {reason:#}"))
                })?;
        }
        Ok(shared)
    }

    /// The pods' bridge, made once per agent (and given the new gateway once the pod
    /// CIDR changed); the MTU pods get.
    async fn bridge(&self) -> Result<u32, String> {
        let cidr = self.pod_cidr();
        let mut bridge = self.bridge.lock().await;
        match *bridge {
            Some((made_for, mtu)) if made_for == cidr => return Ok(mtu),
            Some((old, _)) => podnet::remove_bridge_address(&old)
                .await
                .map_err(|reason| {
                    format!("cannot take the old pod CIDR {old:?} off keelson0: {reason:#}")
                })?,
            None => {}
        }
        let made = podnet::ensure_bridge(&cidr)
            .await
            .map_err(|reason| format!("cannot make the pods' bridge keelson0: {reason:#}"))?;
        *bridge = Some((cidr, made));
        Ok(made)
    }

    /// The pod's `/etc` files, written once into its sandbox (containers bind them, so a
    /// file is not replaced under them).
    fn write_pod_files(
        &self,
        pod: &Pod,
        directory: &Path,
        address: Option<Ipv4Addr>,
    ) -> Result<(), String> {
        let node_resolver = std::fs::read_to_string(keelson_net::node::RESOLV_CONF)
            .or_else(|_| std::fs::read_to_string("/etc/resolv.conf"))
            .unwrap_or_default();
        let name = crate::dns::hostname(pod);
        let mut files = vec![("resolv.conf", crate::dns::resolv_conf(pod, &node_resolver))];
        if let Some(address) = address.filter(|_| crate::network::has_own_network(pod)) {
            files.push(("hosts", crate::dns::hosts(pod, &address.to_string())));
            files.push(("hostname", format!("{name}\n")));
        }
        for (file, text) in files {
            let path = directory.join(file);
            if !path.exists() {
                std::fs::write(&path, text)
                    .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
            }
        }
        Ok(())
    }

    /// Where the pod's `/etc` files are bound in each container.
    fn pod_file_mounts(&self, pod: &Pod) -> Vec<VolumeMount> {
        let directory = self.sandbox_dir(pod);
        ["resolv.conf", "hosts", "hostname"]
            .into_iter()
            .filter(|file| directory.join(file).exists())
            .map(|file| VolumeMount {
                source: directory.join(file),
                sub_path: None,
                destination: format!("/etc/{file}"),
                read_only: false,
                kind: VolumeKind::Pod,
            })
            .collect()
    }

    /// The node's pod CIDR.
    pub fn pod_cidr(&self) -> PodCidr {
        // A poisoned lock still holds a whole value (a copy is written at once).
        *self
            .pod_cidr
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Gives pods addresses of `cidr` rather than of the default one.
    pub fn with_pod_cidr(self, cidr: PodCidr) -> Engine {
        self.set_pod_cidr(cidr);
        self
    }

    /// Pods attached from now on get addresses of `cidr`, and the bridge its gateway. The
    /// caller makes sure no pod holds an address of the old one
    /// ([`crate::pods::Kubelet::adopt_pod_cidr`]).
    pub fn set_pod_cidr(&self, cidr: PodCidr) {
        *self
            .pod_cidr
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = cidr;
    }

    /// Starts run number `run` of the pod's container `name` in the pod's `shared`
    /// namespaces, in a user namespace of those node ids when it has one; `node` is what
    /// the downward API gives.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        &self,
        pod: &Pod,
        name: &str,
        run: u32,
        now: u64,
        user_namespace: Option<IdMapping>,
        shared: SharedNamespaces,
        node: &NodeFacts,
        notes: &mut Vec<Note>,
    ) -> Result<Started, StartFailure> {
        let container = crate::pod::container_named(pod, name).ok_or_else(|| {
            failure("CreateContainerConfigError")(format!("the pod has no container {name}"))
        })?;
        let image_name = container.image.clone().unwrap_or_default();
        let policy = container
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| "IfNotPresent".into());
        let run_id = format!(
            "{}.{}.{run}",
            pod.metadata.uid.as_deref().unwrap_or_default(),
            container.name
        );

        // 1. The image.
        let present = self.images.get(&image_name).is_ok();
        let pulls = policy == "Always" || (policy == "IfNotPresent" && !present);
        if pulls {
            notes.push((
                EventType::Normal,
                "Pulling",
                format!("Pulling image {image_name:?}"),
            ));
        }
        let pull_started = std::time::Instant::now();
        let image = match self.access.ensure(&image_name, &policy).await {
            Ok(image) => image,
            Err(error) => {
                notes.push((
                    EventType::Warning,
                    "Failed",
                    format!("Failed to pull image {image_name:?}: {error}"),
                ));
                return Err(failure("ErrImagePull")(error));
            }
        };
        notes.push((
            EventType::Normal,
            "Pulled",
            if pulls {
                format!(
                    "Successfully pulled image {image_name:?} in {:.3}s",
                    pull_started.elapsed().as_secs_f64()
                )
            } else {
                format!("Container image {image_name:?} already present on machine")
            },
        ));
        let image_id = format!("{}@{}", image.name, image.manifest);
        // 2. The process and its user.
        let layers = self.images.layer_dirs(&image);
        let config = self
            .images
            .config(&image)
            .map_err(|error| failure("CreateContainerConfigError")(error.to_string()))?;
        let env = crate::downward::env(pod, container, node)
            .map_err(failure("CreateContainerConfigError"))?;
        let process = process::resolve(
            &ImageProcess::from_config(&config),
            &crate::pod::request(pod, container, env),
        )
        .map_err(|error| failure("CreateContainerConfigError")(error.to_string()))?;
        let identity =
            resolve_user(&process.user, &layers).map_err(failure("CreateContainerConfigError"))?;
        if identity.uid == 0 && crate::pod::run_as_non_root(pod, container) {
            return Err(failure("CreateContainerConfigError")(format!(
                "container has runAsNonRoot and image will run as root (pod: {:?}, container: {name}); \
                 set runAsUser, or use an image whose USER is not root",
                pod.metadata.name.as_deref().unwrap_or_default()
            )));
        }
        if let Some(mapping) = &user_namespace {
            let ids = [identity.uid, identity.gid]
                .into_iter()
                .chain(identity.groups.iter().copied());
            if let Some(outside) = ids.into_iter().find(|id| mapping.to_host(*id).is_none()) {
                return Err(failure("CreateContainerConfigError")(format!(
                    "id {outside} of the container's user is outside its user namespace \
                     (ids 0-{}, hostUsers: false); run it as a user below {}",
                    mapping.size - 1,
                    mapping.size
                )));
            }
        }
        // 3. The volumes, made or checked on the node, and where the container mounts them.
        let pod_volumes = volumes::pod_dir(&self.volumes, pod);
        volumes::prepare(pod, &pod_volumes, user_namespace, node)
            .map_err(failure("CreateContainerConfigError"))?;
        let mut mounts = self.pod_file_mounts(pod);
        mounts.extend(
            volumes::mounts_of(pod, container, &pod_volumes)
                .map_err(failure("CreateContainerConfigError"))?,
        );
        // 4. The cgroup.
        let resources =
            crate::pod::resources_of(container).map_err(failure("CreateContainerConfigError"))?;
        let cgroup_relative = Self::cgroup_of(pod, name);
        let cgroup = self
            .cgroups
            .create(&cgroup_relative, &CgroupValues::of(&resources))
            .map_err(|error| failure("CreateContainerError")(error.to_string()))?;
        // 5. The bundle and the hold.
        let bundle = self.bundles.join(&run_id);
        let _ = std::fs::remove_dir_all(&bundle);
        std::fs::create_dir_all(&bundle).map_err(|error| {
            failure("CreateContainerError")(format!("cannot create {}: {error}", bundle.display()))
        })?;
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|spec| spec.host_network)
            .unwrap_or(false);
        let spec = ContainerSpec {
            id: run_id.clone(),
            root: RootSpec {
                layers,
                upper: bundle.join("upper"),
                work: bundle.join("work"),
                mount_point: bundle.join("rootfs"),
                read_only: crate::pod::read_only_root(container),
            },
            process: Process {
                args: process.args,
                env: process.env,
                cwd: process.cwd,
                uid: identity.uid,
                gid: identity.gid,
                groups: identity.groups,
                rlimits: DEFAULT_RLIMITS.to_vec(),
                capabilities: crate::pod::capabilities_of(container)
                    .map_err(failure("CreateContainerConfigError"))?,
                no_new_privileges: crate::pod::no_new_privileges(container),
                seccomp: crate::pod::seccomp_profile(pod, container),
            },
            hostname: if host_network {
                nix::unistd::gethostname()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default()
            } else {
                pod.metadata.name.clone().unwrap_or_default()
            },
            network: if host_network {
                NetworkMode::Host
            } else {
                NetworkMode::Private
            },
            cgroup,
            user_namespace,
            shared,
            mounts,
        };
        spec.write(&bundle).map_err(|error| {
            failure("CreateContainerError")(format!("cannot write {}: {error}", bundle.display()))
        })?;
        self.access
            .hold(&run_id, &image)
            .await
            .map_err(failure("CreateContainerError"))?;
        // 6. The log pipes.
        let log_path = self.run_log(pod, name, run);
        // The kubelet keeps the current run and the one before (`logs --previous`).
        if let Some(container_dir) = log_path.parent() {
            logs::prune_runs(container_dir, run.saturating_sub(1));
        }
        let log = LogWriter::open(&log_path, self.log_limits).map_err(|error| {
            failure("CreateContainerError")(format!("cannot open the container's log: {error}"))
        })?;
        let (stdout_read, stdout_write) = pipe().map_err(failure("CreateContainerError"))?;
        let (stderr_read, stderr_write) = pipe().map_err(failure("CreateContainerError"))?;
        // 7. Container-init.
        let launcher = self.launcher.clone();
        let launched = tokio::task::spawn_blocking(move || {
            launcher.launch(&bundle, stdout_write, stderr_write)
        })
        .await
        .map_err(|error| failure("CreateContainerError")(error.to_string()))
        .and_then(|launched| launched.map_err(failure("CreateContainerError")));
        let launched = match launched {
            Ok(launched) => launched,
            Err(failure) => {
                self.clean_up(&run_id, pod, name).await;
                return Err(failure);
            }
        };
        for (pipe, stream) in [(stdout_read, "stdout"), (stderr_read, "stderr")] {
            let name = handoff::pipe_name(&run_id, stream);
            handoff::keep(&name, &pipe);
            follow(pipe, stream, name, log.clone());
        }
        // The kubelet's two events: the runtime's create, then its start.
        notes.push((
            EventType::Normal,
            "Created",
            format!("Created container: {}", container.name),
        ));
        notes.push((
            EventType::Normal,
            "Started",
            format!("Started container {}", container.name),
        ));
        Ok(Started {
            record: RunningRecord {
                run_id,
                pid: launched.pid,
                start_time: launched.start_time,
                started_at: now,
            },
            image_id,
        })
    }

    /// Finds a run of container `name` again after the agent restarted, and follows its
    /// logs again.
    pub fn find(&self, pod: &Pod, name: &str, run: u32, record: &RunningRecord) -> Found {
        let found = if start_time_of(record.pid) == Some(record.start_time) {
            Found::Running
        } else {
            match read_exit_record(record.pid, record.start_time) {
                Some(status) => Found::Exited(status),
                None => Found::Lost,
            }
        };
        let log = LogWriter::open(&self.run_log(pod, name, run), self.log_limits);
        for stream in ["stdout", "stderr"] {
            let name = handoff::pipe_name(&record.run_id, stream);
            match (self.inherited.claim(&name), &log) {
                (Some(pipe), Ok(log)) => follow(pipe, stream, name, log.clone()),
                (Some(_), Err(error)) => {
                    tracing::warn!("cannot reopen the log of {}: {error}", record.run_id);
                    handoff::release(&name);
                }
                (None, _) if found == Found::Running => {
                    tracing::warn!(
                        "log pipe {name} did not come back from PID 1; that output is lost"
                    )
                }
                (None, _) => {}
            }
        }
        found
    }

    /// What `exec` needs to run `command` in the run: the run's own process, with the
    /// command in place of its arguments.
    pub fn exec_spec(
        &self,
        record: &RunningRecord,
        command: Vec<String>,
        terminal: bool,
    ) -> Result<ExecSpec, String> {
        let bundle = self.bundles.join(&record.run_id);
        let spec = ContainerSpec::read(&bundle)?;
        Ok(ExecSpec {
            container: record.run_id.clone(),
            pid: record.pid,
            start_time: record.start_time,
            cgroup: spec.cgroup,
            process: Process {
                args: command,
                ..spec.process
            },
            terminal,
        })
    }

    /// container-exec, ready to run `spec` (written to a file it reads and removes).
    /// Returns the command and that file (for the caller to remove if it never runs).
    pub fn container_exec(
        &self,
        spec: &ExecSpec,
    ) -> Result<(tokio::process::Command, PathBuf), String> {
        let directory = Path::new("/run/keelson/exec");
        std::fs::create_dir_all(directory)
            .map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
        let file = directory.join(format!("{}.json", uuid::Uuid::new_v4()));
        let bytes = serde_json::to_vec(spec).map_err(|error| error.to_string())?;
        std::fs::write(&file, bytes)
            .map_err(|error| format!("cannot write {}: {error}", file.display()))?;
        let mut command = tokio::process::Command::new(self.helper_binary());
        command
            .arg(keelson_runtime::shell::launch::CONTAINER_EXEC)
            .arg(&file)
            .env_clear();
        Ok((command, file))
    }

    /// Runs `command` in the run (an exec probe): Ok when it exits 0 within `timeout`,
    /// else what it said.
    pub async fn run_command(
        &self,
        record: &RunningRecord,
        command: Vec<String>,
        timeout: Duration,
    ) -> Result<(), String> {
        let shown = command.join(" ");
        let spec = self.exec_spec(record, command, false)?;
        let (mut process, file) = self.container_exec(&spec)?;
        process
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = process.spawn().map_err(|error| {
            let _ = std::fs::remove_file(&file);
            format!("cannot start container-exec: {error}")
        })?;
        let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(output) => output.map_err(|error| error.to_string())?,
            Err(_) => {
                return Err(format!(
                    "command \"{shown}\" timed out after {}s",
                    timeout.as_secs()
                ))
            }
        };
        if output.status.success() {
            return Ok(());
        }
        let mut said = String::from_utf8_lossy(&output.stdout).into_owned();
        said.push_str(&String::from_utf8_lossy(&output.stderr));
        let said: String = said.trim().chars().take(512).collect();
        Err(format!(
            "command \"{shown}\" exited with {}{}{said}",
            output.status.code().unwrap_or(-1),
            if said.is_empty() { "" } else { ": " }
        ))
    }

    /// The binary that runs container-init and container-exec.
    pub fn helper_binary(&self) -> &Path {
        self.launcher.program()
    }

    /// Drops the pipes no run claimed after a restart.
    pub fn release_unclaimed_pipes(&self) {
        for name in self.inherited.unclaimed() {
            handoff::release(&name);
        }
    }

    /// Waits for the run's process to end; its status, when PID 1 recorded one.
    pub async fn wait(&self, record: &RunningRecord) -> Option<ExitStatus> {
        if let Ok(pidfd) = pidfd_open(record.pid) {
            // The pid may have been reused since: only the process that started then counts.
            if start_time_of(record.pid) == Some(record.start_time) {
                // SAFETY: the AsyncFd owns the pidfd and deregisters it before closing it.
                if let Ok(pidfd) = unsafe { AsyncFd::register(pidfd) } {
                    let _ = pidfd.readable().await;
                }
            }
        }
        // PID 1 writes the record right after it reaps the process.
        for _ in 0..250 {
            if let Some(status) = read_exit_record(record.pid, record.start_time) {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Sends `signal` to the run's process, if it is still that process.
    pub fn signal(&self, record: &RunningRecord, signal: nix::sys::signal::Signal) {
        if start_time_of(record.pid) == Some(record.start_time) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(record.pid), signal);
        }
    }

    /// What container `name`'s cgroup has used; None when it has no cgroup (not running).
    pub fn usage(&self, pod: &Pod, name: &str) -> Option<keelson_runtime::cgroup::Usage> {
        self.cgroups.usage(&Self::cgroup_of(pod, name)).ok()
    }

    /// True when the kernel killed something in the cgroup of the pod's container `name`
    /// for its memory limit during this run.
    pub fn oom_killed(&self, pod: &Pod, name: &str) -> bool {
        self.cgroups
            .memory_events(&Self::cgroup_of(pod, name))
            .is_ok_and(|events| events.oom_kill > 0)
    }

    /// Removes what a run left: its bundle, its cgroup (recreated by the next run, so that
    /// counters start again) and its hold on the image's layers.
    pub async fn clean_up(&self, run_id: &str, pod: &Pod, name: &str) {
        let bundle = self.bundles.join(run_id);
        if let Err(error) = std::fs::remove_dir_all(&bundle) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {error}", bundle.display());
            }
        }
        let cgroup = Self::cgroup_of(pod, name);
        // The kernel empties a cgroup shortly after its last process exits.
        for _ in 0..50 {
            if self.cgroups.remove(&cgroup).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.access.release(run_id).await;
    }

    /// Removes the pod's own cgroup, its veth pair, its sandbox, its volumes and its logs
    /// (the pod is deleted).
    pub async fn forget(&self, pod: &Pod) {
        self.release(pod).await;
        let _ = std::fs::remove_dir_all(self.pod_log_dir(pod));
    }

    /// Removes what a pod that will not run again holds (its cgroup, veth pair, sandbox
    /// and volumes) but keeps its logs, for `keelctl logs` (the pod was evicted).
    pub async fn release(&self, pod: &Pod) {
        let node_end = podnet::node_end_name(pod.metadata.uid.as_deref().unwrap_or_default());
        if let Err(error) = podnet::detach(&node_end).await {
            tracing::warn!("{error:#}");
        }
        volumes::remove(&volumes::pod_dir(&self.volumes, pod));
        if let Some(pod_cgroup) = Self::cgroup_of(pod, "-").parent() {
            let _ = self.cgroups.remove(pod_cgroup);
        }
        sandbox::remove(&self.sandbox_dir(pod));
    }

    /// What the pod holds on STATE, in bytes: its containers' writable layers and bundles,
    /// its volumes on disk and its logs. Mounts below them (the containers' root
    /// filesystems over the image's layers, memory volumes) are not counted.
    pub fn disk_usage(&self, pod: &Pod) -> u64 {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let runs = std::fs::read_dir(&self.bundles)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| {
                entry
                    .file_name()
                    .to_str()
                    .is_some_and(|name| !uid.is_empty() && name.starts_with(&format!("{uid}.")))
            })
            .map(|entry| entry.path());
        runs.chain([volumes::pod_dir(&self.volumes, pod), self.pod_log_dir(pod)])
            .map(|path| disk_bytes(&path))
            .sum()
    }
}

/// Copies a pipe into the log until the run's last writer closes it, then tells PID 1 to
/// drop its copy.
fn follow(pipe: OwnedFd, stream: &'static str, name: String, log: LogWriter) {
    tokio::spawn(async move {
        if let Err(error) = logs::copy(pipe, stream, log).await {
            tracing::warn!("reading {name} failed: {error}");
        }
        handoff::release(&name);
    });
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|errno| format!("cannot create a pipe: {}", errno.desc()))
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn start_time_of(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // A zombie still has its entry; it has exited all the same.
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    if state == "Z" {
        return None;
    }
    exits::start_time_in_stat(&stat)
}

fn read_exit_record(pid: i32, start_time: u64) -> Option<ExitStatus> {
    let path = Path::new(EXITS_DIR).join(exits::record_name(pid, start_time));
    let status = ExitStatus::parse(&std::fs::read_to_string(&path).ok()?)?;
    let _ = std::fs::remove_file(&path);
    Some(status)
}

/// The user's ids, from the image's `/etc/passwd` and `/etc/group` when it is a name or
/// has no group.
fn resolve_user(
    user: &User,
    layers: &[PathBuf],
) -> Result<keelson_runtime::passwd::Identity, String> {
    if let User::Id {
        uid,
        gid: Some(gid),
    } = user
    {
        return Ok(keelson_runtime::passwd::Identity {
            uid: *uid,
            gid: *gid,
            groups: Vec::new(),
            home: "/".into(),
        });
    }
    let passwd = read_from_layers(layers, "etc/passwd").unwrap_or_default();
    let group = read_from_layers(layers, "etc/group").unwrap_or_default();
    keelson_runtime::passwd::resolve(user, &passwd, &group).map_err(|error| error.to_string())
}

/// A file as the overlay would show it: from the topmost layer that has it.
fn read_from_layers(layers: &[PathBuf], relative: &str) -> Option<String> {
    layers.iter().find_map(|layer| {
        let path = layer.join(relative);
        let metadata = std::fs::symlink_metadata(&path).ok()?;
        // A whiteout (character device 0:0) hides the file of the layers below.
        if metadata.file_type().is_file() {
            std::fs::read_to_string(&path).ok()
        } else {
            Some(String::new())
        }
    })
}

/// The bytes the files under `path` take on its filesystem (allocated blocks, so sparse
/// files count what they use), not descending into other filesystems.
fn disk_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let device = top.dev();
    let mut total = 0u64;
    let mut pending = vec![path.to_path_buf()];
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(&directory)
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.dev() != device {
                continue;
            }
            total = total.saturating_add(metadata.blocks().saturating_mul(512));
            if metadata.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    total
}
