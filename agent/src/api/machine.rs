//! `keelson.machine.v1.Machine`: a thin layer over [`crate::system`], the logs, the
//! kernel log, `keelson_provision::machine_config` and PID 1's signals.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use keelson_api::access::{ApiMode, Caller};
use keelson_api::machine::machine_server::Machine;
use keelson_api::machine::{
    ApplyConfigRequest, ApplyConfigResponse, ApplyMode, BootRecord, ConfigDiagnostic, DmesgRequest,
    KernelMessage, LogEntry, LogsRequest, NetworkAddress, NetworkRoute, NodeConfig, RebootRequest,
    RebootResponse, ResetRequest, ResetResponse, RestartAgentRequest, RestartAgentResponse,
    ServiceInfo, ServicesRequest, ServicesResponse, ShutdownRequest, ShutdownResponse,
    StatusRequest, StatusResponse, VersionRequest, VersionResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::ApiContext;
use crate::boot_history::BootHistory;
use keelson_linux::kmsg;
use keelson_provision::machine_config::{self, ApplyRefusal, ConfigReport};

use keelson_log as logs;

use crate::system;

/// The machine service.
#[derive(Debug, Clone)]
pub struct MachineService {
    context: Arc<ApiContext>,
}

impl MachineService {
    /// The service over the agent's `context`.
    pub fn new(context: Arc<ApiContext>) -> MachineService {
        MachineService { context }
    }

    fn require_managed(&self, what: &str) -> Result<(), Status> {
        if self.context.manage_machine && pid1_is_keelson() {
            Ok(())
        } else {
            Err(Status::failed_precondition(format!(
                "cannot {what}: this agent does not manage its machine \
                 (PID 1 is not keelson-init, or the agent runs with --unmanaged)"
            )))
        }
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Who asked, for the log.
pub(crate) fn who<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Caller>()
        .map(|caller| match caller.role {
            Some(role) => format!("{} ({role})", caller.name),
            None => caller.name.clone(),
        })
        .unwrap_or_else(|| "maintenance client".into())
}

fn pid1_is_keelson() -> bool {
    system::process_info(1).executable.ends_with("keelson-init")
}

fn diagnostics(list: &[keelson_config::Diagnostic]) -> Vec<ConfigDiagnostic> {
    list.iter()
        .map(|diagnostic| ConfigDiagnostic {
            source: diagnostic.source.clone(),
            field: diagnostic.field.clone(),
            reason: diagnostic.reason.clone(),
        })
        .collect()
}

fn node_config(report: &ConfigReport) -> NodeConfig {
    NodeConfig {
        source: report.source.to_string(),
        location: report.location.clone(),
        format: report.format.clone(),
        instance_id: report.instance_id.clone().unwrap_or_default(),
        maintenance: report.maintenance.is_some(),
        maintenance_reason: report.maintenance.clone().unwrap_or_default(),
        errors: diagnostics(&report.errors),
        warnings: diagnostics(&report.warnings),
        applied: report.applied.clone(),
    }
}

/// Sends what `produce` yields over a bounded channel; the task ends when the client goes.
fn stream_from<T, F, Fut>(produce: F) -> ResponseStream<T>
where
    T: Send + 'static,
    F: FnOnce(mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = mpsc::channel(256);
    tokio::spawn(produce(sender));
    Box::pin(ReceiverStream::new(receiver))
}

fn log_entry(service: &str, entry: logs::Entry) -> LogEntry {
    LogEntry {
        service: service.to_owned(),
        uptime_micros: entry.uptime_micros,
        level: entry.level,
        message: entry.message,
    }
}

fn kernel_message(record: kmsg::Record) -> KernelMessage {
    KernelMessage {
        sequence: record.sequence,
        uptime_micros: record.uptime_micros,
        facility: record.facility,
        level: kmsg::level_name(record.level).to_owned(),
        message: record.message,
    }
}

fn open_kmsg(context: &ApiContext) -> Result<kmsg::KernelLog, Status> {
    kmsg::KernelLog::open(&context.kmsg).map_err(|error| {
        Status::unavailable(format!(
            "cannot read the kernel log {}: {error}",
            context.kmsg.display()
        ))
    })
}

/// Streams the kernel log records `keep` accepts, the last `tail` of those already
/// logged (all when 0), then with `follow` new ones as they come.
fn stream_kernel_log<T: Send + 'static>(
    context: &ApiContext,
    tail: usize,
    follow: bool,
    keep: impl Fn(&kmsg::Record) -> bool + Send + 'static,
    convert: impl Fn(kmsg::Record) -> T + Send + 'static,
) -> Result<ResponseStream<T>, Status> {
    let reading =
        |error: std::io::Error| Status::internal(format!("reading the kernel log: {error}"));
    let mut kernel_log = open_kmsg(context)?;
    let records = kernel_log.drain(tail, &keep).map_err(reading)?;
    Ok(stream_from(move |sender| async move {
        for record in records {
            if sender.send(Ok(convert(record))).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        loop {
            tokio::select! {
                next = kernel_log.next() => match next {
                    Ok(record) if keep(&record) => {
                        if sender.send(Ok(convert(record))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        let _ = sender.send(Err(reading(error))).await;
                        return;
                    }
                },
                _ = sender.closed() => return,
            }
        }
    }))
}

/// The services whose logs `Logs` serves.
pub const LOGGED_SERVICES: &[&str] = &["keelsond", "init"];

#[tonic::async_trait]
impl Machine for MachineService {
    async fn version(
        &self,
        _request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        let identity = system::Identity::read();
        Ok(Response::new(VersionResponse {
            os_version: identity.os_version,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            slot: identity.slot,
            kernel_release: system::kernel_release(),
            hostname: system::hostname(),
            api_packages: keelson_api::PACKAGES
                .iter()
                .map(|p| p.to_string())
                .collect(),
        }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let identity = system::Identity::read();
        let boots = BootHistory::new(self.context.state_dir.join("boots.jsonl"))
            .records()
            .into_iter()
            .map(|record| BootRecord {
                boot_id: record.boot_id,
                slot: record.slot,
                os_version: record.os_version,
                booted_at: record.booted_at,
            })
            .collect();
        let addresses = keelson_net::node::addresses()
            .await
            .into_iter()
            .map(|(interface, address)| NetworkAddress { interface, address })
            .collect();
        let routes = keelson_net::node::routes()
            .await
            .into_iter()
            .map(|route| NetworkRoute {
                destination: route.destination,
                gateway: route.gateway,
                interface: route.interface,
                metric: route.metric,
            })
            .collect();
        let (dns_servers, search_domains) = keelson_net::node::resolver_in_force();
        let config = self
            .context
            .report
            .read()
            .ok()
            .map(|report| node_config(&report));
        Ok(Response::new(StatusResponse {
            hostname: system::hostname(),
            slot: identity.slot,
            os_version: identity.os_version,
            uptime_seconds: system::uptime_seconds(),
            kernel_release: system::kernel_release(),
            mounts: system::key_mounts(),
            pid1: Some(system::process_info(1)),
            agent: Some(system::process_info(std::process::id() as i32)),
            agent_starts: system::agent_starts(),
            boot_loader: system::loader_variable("LoaderInfo"),
            boot_entry: system::loader_variable("LoaderEntrySelected"),
            root_verity: system::root_verity(),
            root_hash: identity.root_hash,
            boots,
            addresses,
            config,
            routes,
            dns_servers,
            search_domains,
        }))
    }

    async fn services(
        &self,
        _request: Request<ServicesRequest>,
    ) -> Result<Response<ServicesResponse>, Status> {
        let init = system::process_info(1);
        let agent_pid = std::process::id() as i32;
        let report = self
            .context
            .report
            .read()
            .map(|report| report.clone())
            .map_err(|_| Status::internal("the config report is unreadable"))?;
        let (api_state, api_detail) = match self.context.security.mode() {
            ApiMode::MutualTls => ("running", format!("mutual TLS on {}", self.context.listen)),
            ApiMode::Maintenance => (
                "maintenance",
                format!(
                    "self-signed certificate {} on {}; only apply-config",
                    self.context.security.fingerprint(),
                    self.context.listen
                ),
            ),
        };
        let (config_state, config_detail) = match &report.maintenance {
            None => (
                "applied",
                format!("{} ({})", report.location, report.format),
            ),
            Some(reason) => (
                "maintenance",
                format!("{reason}: {} error(s)", report.errors.len()),
            ),
        };
        let services = vec![
            ServiceInfo {
                name: "init".into(),
                state: "running".into(),
                pid: 1,
                starts: 1,
                detail: init.executable,
            },
            ServiceInfo {
                name: "keelsond".into(),
                state: "running".into(),
                pid: agent_pid,
                starts: system::agent_starts(),
                detail: format!("agent {}", env!("CARGO_PKG_VERSION")),
            },
            ServiceInfo {
                name: "api".into(),
                state: api_state.into(),
                pid: agent_pid,
                starts: 1,
                detail: api_detail,
            },
            ServiceInfo {
                name: "config".into(),
                state: config_state.into(),
                pid: 0,
                starts: 1,
                detail: config_detail,
            },
        ];
        Ok(Response::new(ServicesResponse { services }))
    }

    type LogsStream = ResponseStream<LogEntry>;

    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let request = request.into_inner();
        let tail = request.tail as usize;
        let service = if request.service.is_empty() {
            "keelsond".to_owned()
        } else {
            request.service.clone()
        };
        match service.as_str() {
            "keelsond" => {
                let (entries, mut follower) = logs::ring().snapshot(tail);
                let follow = request.follow;
                Ok(Response::new(stream_from(move |sender| async move {
                    for entry in entries {
                        if sender.send(Ok(log_entry("keelsond", entry))).await.is_err() {
                            return;
                        }
                    }
                    if !follow {
                        return;
                    }
                    loop {
                        let entry = match follower.recv().await {
                            Ok(entry) => entry,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                                logs::Entry {
                                    uptime_micros: logs::uptime_micros(),
                                    level: "warn".into(),
                                    message: format!(
                                        "({missed} entries skipped: the reader fell behind)"
                                    ),
                                }
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        };
                        if sender.send(Ok(log_entry("keelsond", entry))).await.is_err() {
                            return;
                        }
                    }
                })))
            }
            "init" => {
                let is_init = |record: &kmsg::Record| {
                    record
                        .message
                        .starts_with(keelson_contract::pid1::LOG_PREFIX)
                };
                let entry = |record: kmsg::Record| LogEntry {
                    service: "init".into(),
                    uptime_micros: record.uptime_micros,
                    level: kmsg::level_name(record.level).into(),
                    message: record.message,
                };
                stream_kernel_log(&self.context, tail, request.follow, is_init, entry)
                    .map(Response::new)
            }
            other => Err(Status::not_found(format!(
                "no service {other:?} keeps a log; services with logs: {}",
                LOGGED_SERVICES.join(", ")
            ))),
        }
    }

    type DmesgStream = ResponseStream<KernelMessage>;

    async fn dmesg(
        &self,
        request: Request<DmesgRequest>,
    ) -> Result<Response<Self::DmesgStream>, Status> {
        let request = request.into_inner();
        stream_kernel_log(
            &self.context,
            request.tail as usize,
            request.follow,
            |_| true,
            kernel_message,
        )
        .map(Response::new)
    }

    async fn reboot(
        &self,
        request: Request<RebootRequest>,
    ) -> Result<Response<RebootResponse>, Status> {
        self.power(&request, keelson_contract::pid1::reboot_signal(), "reboot")?;
        Ok(Response::new(RebootResponse {}))
    }

    async fn shutdown(
        &self,
        request: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        self.power(
            &request,
            keelson_contract::pid1::poweroff_signal(),
            "power off",
        )?;
        Ok(Response::new(ShutdownResponse {}))
    }

    async fn restart_agent(
        &self,
        request: Request<RestartAgentRequest>,
    ) -> Result<Response<RestartAgentResponse>, Status> {
        self.require_managed("restart the agent")?;
        let pid = std::process::id() as i32;
        info!("agent restart requested by {}", who(&request));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            info!("restart requested through the API: exiting as if killed");
            // SAFETY: raise(3) with SIGKILL has no memory-safety preconditions.
            unsafe { libc::raise(libc::SIGKILL) };
        });
        Ok(Response::new(RestartAgentResponse { pid }))
    }

    async fn apply_config(
        &self,
        request: Request<ApplyConfigRequest>,
    ) -> Result<Response<ApplyConfigResponse>, Status> {
        let caller = who(&request);
        let request = request.into_inner();
        let mode = match request.mode() {
            ApplyMode::Auto => machine_config::ApplyMode::Auto,
            ApplyMode::NoReboot => machine_config::ApplyMode::NoReboot,
            ApplyMode::Staged => machine_config::ApplyMode::Staged,
        };
        if !request.dry_run {
            self.require_managed("apply a config")?;
        }
        // One ApplyConfig at a time: the lock is held until the config is in force.
        let mut in_force = self.context.in_force.lock().await;
        let outcome = machine_config::apply_requested(
            &self.context.environment,
            in_force.as_ref(),
            self.context.security.mode() == ApiMode::MutualTls,
            &self.context.report,
            &request.config,
            mode,
            request.dry_run,
        )
        .await
        .map_err(|refusal| match refusal {
            ApplyRefusal::Invalid(errors) => Status::invalid_argument(format!(
                "the config is invalid, nothing was changed: {}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            ApplyRefusal::NeedsReboot(sections) => Status::failed_precondition(format!(
                "the change to {} needs a reboot; nothing was changed (use --mode auto to \
                 reboot, or --mode staged to apply it at the next boot)",
                sections.join(", ")
            )),
            ApplyRefusal::Failed(reason) => Status::internal(reason),
        })?;
        if !request.dry_run {
            info!(
                "config applied by {caller} ({:?}): {}",
                mode,
                outcome.actions.join("; ")
            );
        }
        if let Some(config) = &outcome.in_force {
            self.put_in_force(outcome.api.as_ref())?;
            *in_force = Some(config.clone());
            self.context.static_pods.changed.notify_one();
        }
        if outcome.reboot {
            system::ask_pid1(
                keelson_contract::pid1::reboot_signal(),
                "reboot into the new config",
            );
        }
        Ok(Response::new(ApplyConfigResponse {
            diff: outcome.diff,
            actions: outcome.actions,
            warnings: diagnostics(&outcome.warnings),
            reboot: outcome.reboot,
            reboot_needed_for: outcome
                .reboot_needed_for
                .iter()
                .map(|section| section.to_string())
                .collect(),
        }))
    }

    async fn reset(
        &self,
        request: Request<ResetRequest>,
    ) -> Result<Response<ResetResponse>, Status> {
        let caller = who(&request);
        if !request.get_ref().confirm {
            return Err(Status::invalid_argument(
                "reset erases everything on STATE (the saved config, boot history, all of \
                 /var) and reboots; confirm it (keelctl reset --yes)",
            ));
        }
        self.require_managed("reset")?;
        warn!("reset requested by {caller}: wiping STATE and rebooting");
        let var = self.context.environment.root.join("var");
        let wiped = system::wipe_directory(&var)
            .map_err(|error| Status::internal(format!("cannot wipe {}: {error}", var.display())))?;
        logs::console(&format!(
            "keelson: reset by {caller}: wiped {wiped} entries of {}; rebooting to the first-boot state",
            var.display()
        ));
        system::ask_pid1(
            keelson_contract::pid1::reboot_signal(),
            "reboot after reset",
        );
        Ok(Response::new(ResetResponse {}))
    }
}

impl MachineService {
    /// Reboot or power-off: PID 1 does it on `signal`.
    fn power<T>(
        &self,
        request: &Request<T>,
        signal: i32,
        what: &'static str,
    ) -> Result<(), Status> {
        self.require_managed(what)?;
        info!("{what} requested by {}", who(request));
        system::ask_pid1(signal, what);
        Ok(())
    }

    /// After a live apply: the API follows the config's certificates, and a node leaving
    /// maintenance mode announces itself ready.
    fn put_in_force(&self, api: Option<&keelson_config::model::ApiPki>) -> Result<(), Status> {
        let security = &self.context.security;
        let was_maintenance = security.mode() == ApiMode::Maintenance;
        let switched = match api {
            Some(api) => security.enter_mutual(api),
            None => security.enter_maintenance(
                "no-api-credentials: the config in force has no api section".into(),
            ),
        };
        switched.map_err(|error| {
            Status::internal(format!("the API cannot switch certificates: {error:#}"))
        })?;
        if !was_maintenance && self.context.gossip.get().is_some() {
            // A rotation step: the new keys apply at once, so the cluster never splits.
            let context = self.context.clone();
            tokio::spawn(async move {
                let config = context.in_force.lock().await.clone();
                crate::cluster::follow_config(config.as_ref(), &context.gossip).await;
            });
        }
        if was_maintenance && api.is_some() {
            crate::announce_ready(&self.context.report);
            if self.context.manage_machine {
                // The config in force is set by now; joining waits for its lock.
                let context = self.context.clone();
                tokio::spawn(async move { crate::join_cluster(&context).await });
            }
        }
        Ok(())
    }
}
