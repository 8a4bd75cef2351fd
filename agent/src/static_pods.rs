//! The static pods' keeper: reads the node's static pods from the machine config in force
//! and from the manifest files of `/etc/keelson/manifests`, and has the kubelet run
//! exactly those. It looks again when the config in force changes and every
//! [`RESCAN_INTERVAL`] (the kubelet's file check period), so that a file written or
//! removed is followed.

use std::sync::Arc;
use std::time::Duration;

use keelson_kubelet::pods::Kubelet;
use keelson_kubelet::static_pods::{self, StaticSource};
use tracing::warn;

use crate::api::ApiContext;

/// How often the manifest directory is read again.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(20);

/// Wakes the keeper, and holds what it could not do for the health gate.
#[derive(Debug, Default)]
pub struct StaticPodsState {
    /// Notified when the config in force changes.
    pub changed: tokio::sync::Notify,
    /// The sources that make no pod, and pods that could not be started, each naming its
    /// source.
    pub problems: std::sync::Mutex<Vec<String>>,
    /// The keeper has read the sources and started their pods at least once.
    pub read_once: std::sync::atomic::AtomicBool,
}

impl StaticPodsState {
    /// Every static pod runs and is Ready; else the first reason it is not so.
    pub fn healthy(&self, kubelet: &Kubelet) -> Result<(), String> {
        if !self.read_once.load(std::sync::atomic::Ordering::Acquire) {
            return Err("the static pods have not been read yet".into());
        }
        if let Some(problem) = self
            .problems
            .lock()
            .ok()
            .and_then(|problems| problems.first().cloned())
        {
            return Err(problem);
        }
        kubelet.static_pods_ready()
    }
}

/// The node's static pod sources: the config's `staticPods`, then the manifest files.
async fn sources(context: &ApiContext) -> (Vec<StaticSource>, Vec<String>) {
    let mut sources: Vec<StaticSource> = context
        .in_force
        .lock()
        .await
        .iter()
        .flat_map(|config| config.static_pods.iter().enumerate())
        .map(|(index, pod)| StaticSource {
            origin: format!("machine config staticPods[{index}]"),
            manifest: pod.manifest(),
        })
        .collect();
    let directory = std::path::Path::new(static_pods::MANIFEST_DIRECTORY);
    let (from_files, problems) =
        tokio::task::spawn_blocking(move || static_pods::read_directory(directory))
            .await
            .unwrap_or_default();
    sources.extend(from_files);
    (sources, problems)
}

/// Runs for the agent's life: keeps the kubelet's static pods those of the sources.
pub async fn keep(context: Arc<ApiContext>, kubelet: Arc<Kubelet>) {
    let mut reported: Vec<String> = Vec::new();
    loop {
        let (sources, mut problems) = sources(&context).await;
        let wanted = static_pods::pods_of(&sources, &keelson_kubelet::pods::node_name());
        problems.extend(kubelet.sync_static(wanted).await);
        if problems != reported {
            for problem in &problems {
                warn!("static pods: {problem}");
            }
            reported = problems.clone();
        }
        if let Ok(mut kept) = context.static_pods.problems.lock() {
            *kept = problems;
        }
        context
            .static_pods
            .read_once
            .store(true, std::sync::atomic::Ordering::Release);
        tokio::select! {
            _ = context.static_pods.changed.notified() => {}
            _ = tokio::time::sleep(RESCAN_INTERVAL) => {}
        }
    }
}
