//! The gRPC API: `keelson.machine.v1.Machine`, a thin layer over [`crate::system`] and
//! PID 1's signals.

use std::path::PathBuf;
use std::time::Duration;

use keelson_api::machine::machine_server::{Machine, MachineServer};
use keelson_api::machine::{
    BootRecord, ConfigDiagnostic, NetworkAddress, NetworkRoute, NodeConfig, RebootRequest,
    RebootResponse, RestartAgentRequest, RestartAgentResponse, ShutdownRequest, ShutdownResponse,
    StatusRequest, StatusResponse,
};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::boot_history::BootHistory;
use crate::machine_config::{ConfigReport, SharedReport};
use crate::system;

/// The machine service.
#[derive(Debug, Clone)]
pub struct MachineService {
    state_dir: PathBuf,
    config: SharedReport,
}

impl MachineService {
    /// A service keeping its state in `state_dir` and reporting `config`.
    pub fn new(state_dir: PathBuf, config: SharedReport) -> MachineService {
        MachineService { state_dir, config }
    }
}

/// Serves the API on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state_dir: PathBuf,
    config: SharedReport,
) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    info!(%address, "serving the API");
    tonic::transport::Server::builder()
        .timeout(Duration::from_secs(30))
        .add_service(MachineServer::new(MachineService::new(state_dir, config)))
        .serve_with_incoming(tokio_stream_from(listener))
        .await?;
    Ok(())
}

fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}

/// Asks PID 1 for a power action after a short delay, so that the reply reaches the
/// caller before the agent is stopped.
fn ask_pid1(signal: i32, what: &'static str) -> Result<(), Status> {
    if !pid1_is_keelson() {
        return Err(Status::failed_precondition(format!(
            "cannot {what}: PID 1 is not keelson-init (is this agent running on a Keelson node?)"
        )));
    }
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        info!("asking PID 1 to {what}");
        // SAFETY: kill(2) with a valid signal number has no memory-safety preconditions.
        unsafe { libc::kill(1, signal) };
    });
    Ok(())
}

fn node_config(report: &ConfigReport) -> NodeConfig {
    let diagnostics = |list: &[keelson_config::Diagnostic]| {
        list.iter()
            .map(|diagnostic| ConfigDiagnostic {
                source: diagnostic.source.clone(),
                field: diagnostic.field.clone(),
                reason: diagnostic.reason.clone(),
            })
            .collect()
    };
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

fn pid1_is_keelson() -> bool {
    system::process_info(1).executable.ends_with("keelson-init")
}

#[tonic::async_trait]
impl Machine for MachineService {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let identity = system::Identity::read();
        let boots = BootHistory::new(self.state_dir.join("boots.jsonl"))
            .records()
            .into_iter()
            .map(|record| BootRecord {
                boot_id: record.boot_id,
                slot: record.slot,
                os_version: record.os_version,
                booted_at: record.booted_at,
            })
            .collect();
        let addresses = crate::network::addresses()
            .await
            .into_iter()
            .map(|(interface, address)| NetworkAddress { interface, address })
            .collect();
        let routes = crate::network::routes()
            .await
            .into_iter()
            .map(|route| NetworkRoute {
                destination: route.destination,
                gateway: route.gateway,
                interface: route.interface,
                metric: route.metric,
            })
            .collect();
        let (dns_servers, search_domains) = crate::network::resolver_in_force();
        let config = self.config.read().ok().map(|report| node_config(&report));
        Ok(Response::new(StatusResponse {
            hostname: system::hostname(),
            slot: identity.slot,
            os_version: identity.os_version,
            uptime_seconds: system::uptime_seconds(),
            kernel_release: system::kernel_release(),
            mounts: system::key_mounts(),
            pid1: Some(system::process_info(1)),
            agent: Some(system::process_info(std::process::id() as i32)),
            agent_starts: std::env::var("KEELSON_AGENT_START")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(1),
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

    async fn reboot(
        &self,
        _request: Request<RebootRequest>,
    ) -> Result<Response<RebootResponse>, Status> {
        ask_pid1(keelson_init::power::reboot_signal(), "reboot")?;
        Ok(Response::new(RebootResponse {}))
    }

    async fn shutdown(
        &self,
        _request: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        ask_pid1(keelson_init::power::poweroff_signal(), "power off")?;
        Ok(Response::new(ShutdownResponse {}))
    }

    async fn restart_agent(
        &self,
        _request: Request<RestartAgentRequest>,
    ) -> Result<Response<RestartAgentResponse>, Status> {
        let pid = std::process::id() as i32;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            info!("restart requested through the API: exiting as if killed");
            // SAFETY: raise(3) with SIGKILL has no memory-safety preconditions.
            unsafe { libc::raise(libc::SIGKILL) };
        });
        Ok(Response::new(RestartAgentResponse { pid }))
    }
}
