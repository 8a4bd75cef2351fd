//! `keelsond`, the Keelson node agent.
//!
//! PID 1 starts it and restarts it if it dies. Start-up reads as a list of steps
//! ([`run`]): record this boot on STATE, bring up the network (loopback, then DHCP on the
//! first Ethernet interface), serve the gRPC API on TCP 50000, tell PID 1 it is ready over
//! sd_notify, print the console ready line, and keep the watchdog fed.
//!
//! Modules: [`system`] gathers what `Machine.Status` reports (pure parsers over `/proc`,
//! `/sys` and EFI variables, plus thin readers); [`boot_history`] keeps the list of boots on
//! STATE; [`dhcp`] and [`network`] configure the node's address through netlink; [`api`]
//! is the gRPC service, a thin layer over the rest.
//!
//! Known limits (later issues): no TLS yet, no machine config (the hostname is PID 1's
//! default), and the DHCP lease is taken once at start-up without renewal.

pub mod api;
pub mod boot_history;
pub mod dhcp;
pub mod network;
pub mod system;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tracing::{info, warn};

/// How the agent was asked to run.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Address the API listens on.
    pub listen: SocketAddr,
    /// Where the agent keeps its state (on STATE, under /var).
    pub state_dir: PathBuf,
    /// Configure the node's network (false when run on a development host).
    pub manage_network: bool,
}

/// Runs the agent until PID 1 asks it to stop (SIGTERM).
pub async fn run(options: AgentOptions) -> anyhow::Result<()> {
    let identity = system::Identity::read();
    info!(slot = %identity.slot, version = %identity.os_version, "keelsond starting");

    record_boot(&options, &identity);
    if options.manage_network {
        bring_up_network().await;
    }
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|error| {
            anyhow::anyhow!("cannot listen on {} for the API: {error}", options.listen)
        })?;
    let served = tokio::spawn(api::serve(listener, options.state_dir.clone()));

    announce_ready(&identity);
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

async fn bring_up_network() {
    match network::configure_default(Duration::from_secs(30)).await {
        Ok(summary) => info!("network: {summary}"),
        Err(error) => {
            warn!("network: {error:#}; the API is only reachable on addresses already present")
        }
    }
}

/// Tells PID 1 the agent is serving, and prints the ready line on the console.
fn announce_ready(identity: &system::Identity) {
    let hostname = system::hostname();
    let status = format!(
        "serving the API (slot {}, version {})",
        identity.slot, identity.os_version
    );
    if let Err(error) = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ]) {
        warn!("cannot notify PID 1 of readiness: {error}");
    }
    // The one line the QEMU harness and operators wait for. Printed with println! rather
    // than through tracing so that its form never changes with the log format.
    println!(
        "keelson: ready hostname={hostname} slot={} version={}",
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
