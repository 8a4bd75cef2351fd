//! `keelsond`, the Keelson node agent.
//!
//! PID 1 starts it and restarts it if it dies. Start-up reads as a list of steps
//! ([`run`]): record this boot on STATE, bring loopback up, acquire and apply the machine
//! config (or enter maintenance mode), open the image store, serve the gRPC API on TCP 50000 (mutual TLS with the
//! config's certificates, or maintenance mode with a self-signed certificate and a
//! one-time token), tell PID 1 it is ready over sd_notify, print the console ready (or
//! maintenance) lines, and keep the watchdog fed.
//!
//! Modules: [`machine_config`] finds the config among its sources, has `keelson-config`
//! translate and validate it, and applies it through [`network`] (rtnetlink, with a
//! [`dhcp`] client per interface), [`files`] and the hostname; [`seed`] finds NoCloud seeds
//! and [`fetch`] gets `http://` documents. [`system`] gathers what `Machine.Status` reports;
//! [`boot_history`] keeps the list of boots on STATE; [`cluster`] starts membership
//! gossip and [`control_plane`] Raft, formation and the leader's upkeep over it; [`static_pods`] keeps the node's
//! static pods running and [`eviction`] evicts pods when memory or STATE runs short;
//! [`logs`] keeps the agent's log for
//! the API (`keelson_linux::kmsg` reads the kernel's); [`api`] is the gRPC server, a thin layer over
//! the rest.

pub mod api;
pub mod boot_history;
pub mod cluster;
pub mod control_plane;
pub mod eviction;
pub mod fleet_lock;
pub mod node_object;
pub mod static_pods;
pub mod system;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use keelson_api::access::ApiMode;

use tracing::{info, warn};

/// How the agent was asked to run.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Address the API listens on.
    pub listen: SocketAddr,
    /// Where the agent keeps its state (on STATE, under /var).
    pub state_dir: PathBuf,
    /// Acquire the machine config and configure the machine (false when the agent runs on
    /// a development host, which it must leave alone).
    pub manage_machine: bool,
}

/// Runs the agent until PID 1 asks it to stop (SIGTERM). Start-up is this list of
/// phases, in order; a phase that runs only on a managed machine says so here.
pub async fn run(
    options: AgentOptions,
    inherited_pipes: keelson_kubelet::handoff::InheritedPipes,
) -> anyhow::Result<()> {
    let identity = system::Identity::read();
    info!(slot = %identity.slot, version = %identity.os_version, "keelsond starting");

    record_boot(&options, &identity);
    let environment = keelson_provision::machine_config::Environment::node(&options.state_dir);
    let configured = acquire_config(&options, &environment).await;
    let update_policy = configured
        .in_force
        .as_ref()
        .and_then(|config| config.update_policy(&fleet_lock::built_in_url()));
    let engine = Arc::new(update_engine(&options, &identity));
    let images = open_image_store(&options).await;
    let (served, context) =
        serve_api(&options, environment, configured, engine.clone(), images).await?;
    start_kubelet(&options, &context, inherited_pipes).await;
    if options.manage_machine {
        // In the background: gossip may wait for the network (a DHCP lease).
        let context = context.clone();
        tokio::spawn(async move { join_cluster(&context).await });
    }
    if options.manage_machine {
        start_health_gate(&context, engine, &update_policy).await;
    }
    announce(&identity, &context);
    let watchdog = tokio::spawn(feed_watchdog());
    let outcome = tokio::select! {
        result = served => result.map_err(anyhow::Error::from).and_then(|served| served),
        _ = terminate_signal() => {
            info!("SIGTERM from PID 1: the node is shutting down");
            if let Some(Ok(gossip)) = context.gossip.get() {
                // The members hear it now, rather than suspecting the node for seconds.
                gossip.leave().await;
            }
            stop_pods(&context).await;
            Ok(())
        }
    };
    watchdog.abort();
    outcome
}

/// Phase: gossip with the cluster the config names (nothing without a `cluster` section,
/// nothing more once gossip runs). Also run when a node leaves maintenance mode.
pub(crate) async fn join_cluster(context: &Arc<api::ApiContext>) {
    if context.gossip.get().is_some() {
        return;
    }
    let config = context.in_force.lock().await.clone();
    let identity = system::Identity::read();
    let started = cluster::start(
        config.as_ref(),
        &identity,
        &context.state_dir,
        context.listen.port(),
    )
    .await;
    let Some(started) = started else {
        return;
    };
    let gossip = started.as_ref().ok().cloned();
    let _ = context.gossip.set(started);
    if let (Some(gossip), Some(config)) = (gossip, config) {
        let control = control_plane::start(&config, gossip, &context.state_dir).await;
        match &control {
            Ok(control) => {
                tokio::spawn(follow_lease(context.clone(), control.lease()));
            }
            Err(problem) => warn!("cluster: no control plane on this node: {problem}"),
        }
        let _ = context.control.set(control);
    }
}

/// The kubelet's pods take the cluster's lease as their network as soon as it arrives
/// (unless the config names `kubelet.podCIDR`), when no pod holds an address yet;
/// otherwise at the next start.
async fn follow_lease(
    context: Arc<api::ApiContext>,
    mut lease: tokio::sync::watch::Receiver<Option<String>>,
) {
    while lease.changed().await.is_ok() {
        let Some(cidr) = lease.borrow_and_update().clone() else {
            continue;
        };
        let given = context
            .in_force
            .lock()
            .await
            .as_ref()
            .and_then(|config| config.kubelet.as_ref()?.pod_cidr.clone());
        if let Some(given) = given {
            info!("pods: kubelet.podCIDR {given} wins over the cluster's lease {cidr}");
            continue;
        }
        let Some(Ok(kubelet)) = context.pods.get() else {
            continue;
        };
        match keelson_net::ipam::PodCidr::parse(&cidr) {
            Ok(parsed) => match kubelet.adopt_pod_cidr(parsed) {
                Ok(true) => info!("pods: the pod network is now {cidr}, the cluster's lease"),
                Ok(false) => {}
                Err(why) => info!("pods: {why}"),
            },
            Err(error) => warn!("pods: the lease {cidr} is not a pod CIDR: {error}"),
        }
    }
}

/// The way down: PID 1 sends SIGTERM only when the node reboots or powers off (a restart
/// of the agent alone is a SIGKILL), so the pods are stopped gracefully, within the
/// config's `kubelet.shutdownGracePeriod`, and kept for the next boot.
async fn stop_pods(context: &Arc<api::ApiContext>) {
    let Some(Ok(kubelet)) = context.pods.get() else {
        return;
    };
    let cap = context
        .in_force
        .lock()
        .await
        .as_ref()
        .and_then(|config| config.kubelet.as_ref())
        .map_or(
            Ok(keelson_config::model::DEFAULT_SHUTDOWN_GRACE_SECONDS),
            |settings| settings.shutdown_grace_seconds(),
        )
        .unwrap_or(keelson_config::model::DEFAULT_SHUTDOWN_GRACE_SECONDS)
        .min(keelson_config::model::MAX_SHUTDOWN_GRACE_SECONDS);
    kubelet.shut_down(cap).await;
}

/// Phase: bring loopback up and acquire and apply the machine config (or enter
/// maintenance mode). An agent that does not manage its machine leaves it alone.
async fn acquire_config(
    options: &AgentOptions,
    environment: &keelson_provision::machine_config::Environment,
) -> keelson_provision::machine_config::Configured {
    use keelson_provision::machine_config::{self, ConfigReport, Configured};
    let configured = if options.manage_machine {
        if let Err(error) = keelson_net::node::loopback_up().await {
            warn!("network: {error:#}");
        }
        machine_config::configure(environment).await
    } else {
        Configured {
            report: ConfigReport::unmanaged(),
            in_force: None,
            api: None,
            maintenance_network: Vec::new(),
        }
    };
    for line in &configured.report.applied {
        info!("config: {line}");
    }
    machine_config::announce(&configured.report);
    configured
}

/// Phase: the update engine for the running slot, or one that says why there is none.
fn update_engine(
    options: &AgentOptions,
    identity: &system::Identity,
) -> keelson_updater::UpdateEngine {
    use keelson_updater::UpdateEngine;
    match (options.manage_machine, identity.slot_letter()) {
        (true, Some(slot)) => {
            UpdateEngine::for_node(&options.state_dir, slot, identity.os_version.clone())
        }
        (true, None) => UpdateEngine::unavailable("the kernel command line names no slot"),
        (false, _) => UpdateEngine::unavailable("the agent does not manage this machine"),
    }
}

/// Phase: open the image store on STATE (clearing what an interrupted operation left and
/// collecting garbage); a store that cannot open is reported by the Images service.
async fn open_image_store(options: &AgentOptions) -> api::images::SharedImageStore {
    let root = options.state_dir.join("images");
    let opened = tokio::task::spawn_blocking(move || keelson_images::ImageStore::open(&root))
        .await
        .map_err(|error| error.to_string())
        .and_then(|opened| opened.map_err(|error| error.to_string()));
    match opened {
        Ok(store) => Ok(Arc::new(api::images::ImageStoreHandle {
            store: Arc::new(store),
            operations: tokio::sync::Mutex::new(()),
        })),
        Err(reason) => {
            warn!("images: {reason}");
            Err(reason)
        }
    }
}

/// Phase: listen on the API port and serve, with mutual TLS or in maintenance mode.
async fn serve_api(
    options: &AgentOptions,
    environment: keelson_provision::machine_config::Environment,
    configured: keelson_provision::machine_config::Configured,
    engine: Arc<keelson_updater::UpdateEngine>,
    images: api::images::SharedImageStore,
) -> anyhow::Result<(
    tokio::task::JoinHandle<anyhow::Result<()>>,
    Arc<api::ApiContext>,
)> {
    let security = api_security(&configured)?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|error| {
            anyhow::anyhow!("cannot listen on {} for the API: {error}", options.listen)
        })?;
    let context = Arc::new(api::ApiContext {
        state_dir: options.state_dir.clone(),
        environment,
        report: Arc::new(RwLock::new(configured.report)),
        in_force: tokio::sync::Mutex::new(configured.in_force),
        security,
        manage_machine: options.manage_machine,
        listen: listener.local_addr()?,
        kmsg: PathBuf::from("/dev/kmsg"),
        files_root: PathBuf::from("/"),
        update: engine,
        images,
        pods: std::sync::OnceLock::new(),
        static_pods: Default::default(),
        gossip: Default::default(),
        control: Default::default(),
    });
    let served = tokio::spawn(api::serve(listener, context.clone()));
    Ok((served, context))
}

/// Phase: the pod supervisor. Kept pods come back: running containers are found again
/// (their log pipes came back from PID 1), exited ones are restarted as their policy says.
/// A development host runs no pods.
async fn start_kubelet(
    options: &AgentOptions,
    context: &Arc<api::ApiContext>,
    inherited_pipes: keelson_kubelet::handoff::InheritedPipes,
) {
    use keelson_kubelet::engine::{Engine, EnginePaths};
    let (log_limits, pod_cidr) = {
        let config = context.in_force.lock().await;
        (
            log_limits(config.as_ref()),
            pod_cidr(config.as_ref(), &options.state_dir),
        )
    };
    let started = (|| {
        if !options.manage_machine {
            return Err("the agent does not manage this machine".to_owned());
        }
        let handle = context
            .images
            .clone()
            .map_err(|reason| format!("the image store is not available: {reason}"))?;
        let access = Arc::new(api::images::KubeletImageAccess {
            handle: handle.clone(),
            context: Arc::downgrade(context),
        });
        let paths = EnginePaths {
            bundles: options.state_dir.join("containers"),
            logs: PathBuf::from("/var/log/pods"),
            cgroup_root: PathBuf::from(keelson_runtime::cgroup::CGROUP_ROOT),
            sandboxes: PathBuf::from("/run/keelson/pods"),
            volumes: options.state_dir.join("volumes"),
            container_init: std::env::current_exe()
                .map_err(|error| format!("cannot find the agent's own binary: {error}"))?,
        };
        if !inherited_pipes.is_empty() {
            info!(
                pipes = inherited_pipes.len(),
                "log pipes came back from PID 1"
            );
        }
        let engine = Arc::new(
            Engine::new(handle.store.clone(), access, paths, inherited_pipes)
                .with_log_limits(log_limits)
                .with_pod_cidr(pod_cidr),
        );
        let store = keelson_kubelet::store::PodStore::open(&options.state_dir.join("pods"))?;
        Ok(keelson_kubelet::pods::Kubelet::start(engine, store))
    })();
    match &started {
        Ok(kubelet) => {
            info!(pods = kubelet.list(None).len(), "pod supervisor started");
            tokio::spawn(follow_node_ip(kubelet.clone()));
            tokio::spawn(static_pods::keep(context.clone(), kubelet.clone()));
            tokio::spawn(eviction::watch(
                context.clone(),
                kubelet.clone(),
                options.state_dir.clone(),
            ));
        }
        Err(reason) => warn!("pods: {reason}"),
    }
    let _ = context.pods.set(started);
}

/// The node's pod CIDR: the config's `kubelet.podCIDR` (checked when the config was
/// loaded); else, in a cluster, the block the control plane leased to this node (kept on
/// STATE from an earlier registration); else the default.
fn pod_cidr(
    config: Option<&keelson_config::model::MachineConfig>,
    state_dir: &std::path::Path,
) -> keelson_net::ipam::PodCidr {
    let settings = config
        .and_then(|config| config.kubelet.clone())
        .unwrap_or_default();
    let leased = std::fs::read_to_string(control_plane::leased_pod_cidr_path(state_dir))
        .ok()
        .map(|text| text.trim().to_owned())
        .filter(|_| config.is_some_and(|config| config.cluster.is_some()));
    let (chosen, source) = match (&settings.pod_cidr, leased) {
        (Some(given), _) => (given.clone(), "kubelet.podCIDR"),
        (None, Some(leased)) => (leased, "the cluster's lease"),
        (None, None) => (
            keelson_config::model::DEFAULT_POD_CIDR.to_owned(),
            "the default",
        ),
    };
    keelson_net::ipam::PodCidr::parse(&chosen).unwrap_or_else(|error| {
        warn!(
            "pod CIDR {chosen} from {source}: {error}; pods take the default {}",
            keelson_config::model::DEFAULT_POD_CIDR
        );
        keelson_net::ipam::PodCidr::default()
    })
}

/// The container log limits of the config's `kubelet` section (checked when the config was
/// loaded), else the kubelet's defaults.
fn log_limits(
    config: Option<&keelson_config::model::MachineConfig>,
) -> keelson_kubelet::logs::LogLimits {
    let defaults = keelson_kubelet::logs::LogLimits::default();
    let Some(settings) = config.and_then(|config| config.kubelet.as_ref()) else {
        return defaults;
    };
    keelson_kubelet::logs::LogLimits {
        max_size: settings
            .log_max_size_bytes()
            .ok()
            .flatten()
            .unwrap_or(defaults.max_size),
        max_files: settings
            .container_log_max_files
            .map_or(defaults.max_files, |files| files as usize),
    }
}

/// Keeps the kubelet's `hostIP` (and a hostNetwork pod's `podIP`) on the node's address as
/// DHCP or the config changes it.
async fn follow_node_ip(kubelet: Arc<keelson_kubelet::pods::Kubelet>) {
    loop {
        let address = keelson_net::node::node_ip_in_force().await;
        kubelet.set_host_ip(address.map(|address| address.to_string()));
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    }
}

/// Phase (managed machines): reconcile the slots, then bless the running slot once it
/// proves healthy, or roll it back when it does not in time.
async fn start_health_gate(
    context: &Arc<api::ApiContext>,
    engine: Arc<keelson_updater::UpdateEngine>,
    policy: &Option<keelson_config::model::UpdatePolicy>,
) {
    let on_trial = tokio::task::spawn_blocking({
        let engine = engine.clone();
        move || engine.on_boot()
    })
    .await
    .unwrap_or(false);
    let timeout = keelson_updater::UpdateEngine::health_timeout(policy.as_ref());
    tokio::spawn(settle_updates(
        engine,
        on_trial.then(|| (context.clone(), timeout)),
        policy.clone(),
    ));
}

/// Phase: the console's ready (or maintenance) line, then PID 1's READY=1.
///
/// The console line first, drained, then PID 1: PID 1 logs "keelsond is ready" to the
/// kernel log, and the kernel writes that straight to the serial port, past whatever of
/// our line is still queued in the tty. Reversed, the two lines can interleave.
fn announce(identity: &system::Identity, context: &api::ApiContext) {
    match context.security.mode() {
        ApiMode::MutualTls => announce_ready(&context.report),
        ApiMode::Maintenance => context.security.announce_maintenance(),
    }
    keelson_log::drain_console();
    notify_pid1(identity, &context.report, context.security.mode());
}

/// Mutual TLS when a config with API certificates is in force; maintenance mode
/// otherwise, saying why.
fn api_security(
    configured: &keelson_provision::machine_config::Configured,
) -> anyhow::Result<api::security::ApiSecurity> {
    let report = &configured.report;
    if let Some(api) = &configured.api {
        return api::security::ApiSecurity::mutual(api);
    }
    let context = match &report.maintenance {
        Some(reason) => {
            let errors: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
            if errors.is_empty() {
                reason.clone()
            } else {
                format!("{reason}: {}", errors.join("; "))
            }
        }
        None => {
            keelson_log::console(
                "keelson: maintenance reason=no-api-credentials: the config in force has no \
                 api section, so the API cannot authenticate clients",
            );
            "no-api-credentials: the config in force has no api section".into()
        }
    };
    api::security::ApiSecurity::maintenance(context)
}

fn record_boot(options: &AgentOptions, identity: &system::Identity) {
    let history = boot_history::BootHistory::new(options.state_dir.join("boots.jsonl"));
    match history.record(&boot_history::BootRecord::now(identity)) {
        Ok(true) => info!(boot_id = %identity.boot_id, "recorded this boot on STATE"),
        Ok(false) => info!("this boot is already recorded (the agent was restarted)"),
        Err(error) => warn!(
            "cannot record this boot in {}: {error}",
            history.path().display()
        ),
    }
}

/// Tells PID 1 the agent is serving.
fn notify_pid1(
    identity: &system::Identity,
    report: &keelson_provision::machine_config::SharedReport,
    mode: ApiMode,
) {
    let source = report
        .read()
        .map(|report| report.source.to_string())
        .unwrap_or_default();
    let status = match mode {
        ApiMode::Maintenance => "maintenance mode: waiting for apply-config".to_owned(),
        ApiMode::MutualTls => format!(
            "serving the API (slot {}, version {}, config {source})",
            identity.slot, identity.os_version
        ),
    };
    if let Err(error) = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ]) {
        warn!("cannot notify PID 1 of readiness: {error}");
    }
}

/// After a boot: bless (or roll back) a slot on trial; once the running slot is good, give
/// back the FleetLock reboot slot and, with `strategy: auto`, follow the update channel.
async fn settle_updates(
    engine: Arc<keelson_updater::UpdateEngine>,
    trial: Option<(Arc<api::ApiContext>, std::time::Duration)>,
    policy: Option<keelson_config::model::UpdatePolicy>,
) {
    let good = match trial {
        Some((context, timeout)) => {
            let check = || check_health(&context);
            engine.clone().health_gate(check, timeout).await
        }
        None => {
            let engine = engine.clone();
            tokio::task::spawn_blocking(move || engine.is_running_good())
                .await
                .unwrap_or(false)
        }
    };
    if !good {
        return;
    }
    let node_id = system::hostname();
    if let keelson_updater::reboot::RebootGate::FleetLock(client) =
        keelson_updater::reboot::RebootGate::of(policy.as_ref(), &node_id)
    {
        tokio::spawn(keelson_updater::reboot::report_steady_state(client));
    }
    if let Some(policy) = policy {
        keelson_updater::auto::follow_channel(engine, policy, node_id).await;
    }
}

/// The node is healthy when its config is applied without errors, the API accepts
/// connections, and every static pod is Ready (so that a release that breaks the node's
/// workloads rolls back).
async fn check_health(context: &api::ApiContext) -> Result<(), String> {
    let api = context.listen;
    if let Ok(report) = context.report.read() {
        if let Some(first) = report.errors.first() {
            return Err(format!("the machine config was not applied: {first}"));
        }
        if let Some(reason) = &report.maintenance {
            if reason != "no-config" {
                return Err(format!("the node is in maintenance mode ({reason})"));
            }
        }
    }
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], api.port()));
    match tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::net::TcpStream::connect(local),
    )
    .await
    {
        Ok(Ok(_)) => {}
        _ => return Err(format!("the API does not accept connections on {local}")),
    }
    match context.pods.get() {
        Some(Ok(kubelet)) => context.static_pods.healthy(kubelet),
        Some(Err(reason)) => {
            let config = context.in_force.lock().await;
            match config
                .as_ref()
                .is_some_and(|config| !config.static_pods.is_empty())
            {
                true => Err(format!(
                    "the config has static pods, but the node runs no pods: {reason}"
                )),
                false => Ok(()),
            }
        }
        None => Err("the pod supervisor has not started".into()),
    }
}

/// Prints the ready line: the one line the QEMU harness and operators wait for. Printed
/// as a plain line rather than through tracing so that its form never changes with the
/// log format.
pub fn announce_ready(report: &keelson_provision::machine_config::SharedReport) {
    let identity = system::Identity::read();
    let source = report
        .read()
        .map(|report| report.source.to_string())
        .unwrap_or_default();
    keelson_log::console(&format!(
        "keelson: ready hostname={} slot={} version={} config={source}",
        system::hostname(),
        identity.slot,
        identity.os_version
    ));
}

async fn feed_watchdog() {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut ticker = tokio::time::interval(interval / 3);
    loop {
        ticker.tick().await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
    }
}

async fn terminate_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(error) => {
            warn!("cannot listen for SIGTERM: {error}");
            std::future::pending::<()>().await;
        }
    }
}
