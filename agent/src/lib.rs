//! `keelsond`, the Keelson node agent.
//!
//! PID 1 starts it and restarts it if it dies. Start-up reads as a list of steps
//! ([`run`]): record this boot on STATE, bring loopback up, acquire and apply the machine
//! config (or enter maintenance mode), serve the gRPC API on TCP 50000, tell PID 1 it is
//! ready over sd_notify, print the console ready (or maintenance) line, and keep the
//! watchdog fed.
//!
//! Modules: [`machine_config`] finds the config among its sources, has `keelson-config`
//! translate and validate it, and applies it through [`network`] (rtnetlink, with a
//! [`dhcp`] client per interface), [`files`] and the hostname; [`seed`] finds NoCloud seeds
//! and [`fetch`] gets `http://` documents. [`system`] gathers what `Machine.Status` reports;
//! [`boot_history`] keeps the list of boots on STATE; [`api`] is the gRPC service, a thin
//! layer over the rest.
//!
//! Known limit (the API issue): no TLS yet, and no `apply-config` to leave maintenance
//! mode without a reboot.

pub mod api;
pub mod boot_history;
pub mod dhcp;
pub mod fetch;
pub mod files;
pub mod machine_config;
pub mod network;
pub mod seed;
pub mod system;

use std::net::SocketAddr;
use std::path::PathBuf;

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

/// Runs the agent until PID 1 asks it to stop (SIGTERM).
pub async fn run(options: AgentOptions) -> anyhow::Result<()> {
    let identity = system::Identity::read();
    info!(slot = %identity.slot, version = %identity.os_version, "keelsond starting");

    record_boot(&options, &identity);
    let report = if options.manage_machine {
        if let Err(error) = network::loopback_up().await {
            warn!("network: {error:#}");
        }
        let environment = machine_config::Environment::node(&options.state_dir);
        machine_config::configure(&environment).await
    } else {
        machine_config::ConfigReport::unmanaged()
    };
    for line in &report.applied {
        info!("config: {line}");
    }
    let maintenance = machine_config::announce(&report);
    let report = std::sync::Arc::new(std::sync::RwLock::new(report));
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|error| {
            anyhow::anyhow!("cannot listen on {} for the API: {error}", options.listen)
        })?;
    let served = tokio::spawn(api::serve(
        listener,
        options.state_dir.clone(),
        report.clone(),
    ));

    announce_ready(&identity, &report, maintenance);
    let watchdog = tokio::spawn(feed_watchdog());
    let outcome = tokio::select! {
        result = served => result.map_err(anyhow::Error::from).and_then(|served| served),
        _ = terminate_signal() => {
            info!("SIGTERM from PID 1: stopping");
            Ok(())
        }
    };
    watchdog.abort();
    outcome
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

/// Tells PID 1 the agent is serving, and prints the ready line on the console (unless the
/// node is in maintenance mode, whose lines [`machine_config::announce`] printed).
fn announce_ready(
    identity: &system::Identity,
    report: &machine_config::SharedReport,
    maintenance: bool,
) {
    let hostname = system::hostname();
    let source = report
        .read()
        .map(|report| report.source.to_string())
        .unwrap_or_default();
    let status = if maintenance {
        "maintenance mode: the config was not applied".to_owned()
    } else {
        format!(
            "serving the API (slot {}, version {}, config {source})",
            identity.slot, identity.os_version
        )
    };
    if let Err(error) = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ]) {
        warn!("cannot notify PID 1 of readiness: {error}");
    }
    if maintenance {
        return;
    }
    // The one line the QEMU harness and operators wait for. Printed with println! rather
    // than through tracing so that its form never changes with the log format.
    println!(
        "keelson: ready hostname={hostname} slot={} version={} config={source}",
        identity.slot, identity.os_version
    );
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
