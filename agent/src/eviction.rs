//! The eviction manager's shell: every [`INTERVAL`] (the kubelet's housekeeping period) it
//! observes the node's memory and STATE's free space, asks
//! [`keelson_kubelet::eviction::decide`] what to do under the config's thresholds, and
//! does it: removes the images no pod uses, or evicts one pod. Pressure coming and going
//! is told on the console.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keelson_kubelet::eviction::{self, Action, Observation, Pressure, Resource};
use keelson_kubelet::pods::Kubelet;
use tracing::{info, warn};

use crate::api::ApiContext;

/// How often the node is looked at.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Runs for the agent's life.
pub async fn watch(context: Arc<ApiContext>, kubelet: Arc<Kubelet>, state_dir: PathBuf) {
    let mut images_collected = false;
    let mut reported_pressures: Vec<Pressure> = Vec::new();
    let mut reported_problem: Option<String> = None;
    loop {
        tokio::time::sleep(INTERVAL).await;
        let thresholds = thresholds(&context).await;
        let observed = match observe(&state_dir) {
            Ok(observed) => observed,
            Err(problem) => {
                if reported_problem.as_ref() != Some(&problem) {
                    warn!("eviction: {problem}");
                    reported_problem = Some(problem);
                }
                continue;
            }
        };
        let disk_limit = thresholds
            .nodefs_available
            .bytes_of(observed.nodefs.capacity);
        if observed.nodefs.available >= disk_limit {
            // The next disk pressure collects images again first.
            images_collected = false;
        }
        // Measuring the pods' disk walks their files: only when it may decide.
        let measure_disk = observed.nodefs.available < disk_limit && images_collected;
        let pods = kubelet.eviction_candidates(measure_disk);
        let verdict = eviction::decide(&thresholds, &observed, &pods, images_collected);
        if verdict.pressures != reported_pressures {
            report_pressures(&verdict.pressures, &observed);
            reported_pressures = verdict.pressures.clone();
        }
        match verdict.action {
            Some(Action::CollectImages) => {
                collect_unused_images(&context, &kubelet).await;
                images_collected = true;
            }
            Some(Action::Evict {
                namespace,
                name,
                message,
            }) => {
                if let Err(error) = kubelet.evict(&namespace, &name, &message).await {
                    warn!("eviction of {namespace}/{name} failed: {error}");
                }
            }
            None => {
                if verdict.stuck.is_some() && verdict.stuck != reported_problem {
                    warn!("eviction: {}", verdict.stuck.as_deref().unwrap_or_default());
                }
                reported_problem = verdict.stuck;
            }
        }
    }
}

/// The thresholds of the config in force (checked when it was loaded), else the defaults.
async fn thresholds(context: &ApiContext) -> keelson_config::model::EvictionThresholds {
    context
        .in_force
        .lock()
        .await
        .as_ref()
        .and_then(|config| config.kubelet.as_ref())
        .and_then(|settings| settings.eviction_thresholds().ok())
        .unwrap_or_default()
}

/// The node's memory and STATE's space.
fn observe(state_dir: &Path) -> Result<Observation, String> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .map_err(|error| format!("cannot read /proc/meminfo: {error}"))?;
    let memory = eviction::memory_of(&meminfo)
        .ok_or("/proc/meminfo has no MemTotal or MemAvailable line")?;
    let stats = nix::sys::statvfs::statvfs(state_dir)
        .map_err(|errno| format!("cannot measure {}: {}", state_dir.display(), errno.desc()))?;
    let fragment = stats.fragment_size();
    Ok(Observation {
        memory,
        nodefs: Resource {
            capacity: stats.blocks().saturating_mul(fragment),
            available: stats.blocks_available().saturating_mul(fragment),
        },
    })
}

fn report_pressures(pressures: &[Pressure], observed: &Observation) {
    let conditions: Vec<&str> = pressures
        .iter()
        .map(|pressure| pressure.condition())
        .collect();
    let figures = format!(
        "memory available {}, STATE available {}",
        eviction::quantity(observed.memory.available),
        eviction::quantity(observed.nodefs.available)
    );
    if conditions.is_empty() {
        info!("eviction: the node is no longer under pressure ({figures})");
    } else {
        warn!(
            "eviction: the node is under {} ({figures})",
            conditions.join(" and ")
        );
    }
}

/// Removes every image that no pod uses (evicted pods do not count: they never run
/// again), as the kubelet's image garbage collection does under disk pressure.
async fn collect_unused_images(context: &ApiContext, kubelet: &Kubelet) {
    let Ok(handle) = context.images.clone() else {
        return;
    };
    let wanted: Vec<String> = kubelet
        .list(None)
        .iter()
        .filter(|pod| {
            pod.status
                .as_ref()
                .is_none_or(|status| status.reason.as_deref() != Some("Evicted"))
        })
        .flat_map(|pod| {
            keelson_kubelet::pod::members(pod)
                .into_iter()
                .filter_map(|(container, _)| container.image.clone())
        })
        .collect();
    let _operation = handle.operations.lock().await;
    let store = handle.store.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let in_use: std::collections::BTreeSet<String> = wanted
            .iter()
            .filter_map(|reference| store.get(reference).ok())
            .map(|image| image.name)
            .collect();
        let mut removed = Vec::new();
        for image in store.list().map_err(|error| error.to_string())? {
            if in_use.contains(&image.name) {
                continue;
            }
            store
                .remove(&image.name)
                .map_err(|error| format!("cannot remove {}: {error}", image.name))?;
            removed.push(image.name);
        }
        Ok::<_, String>(removed)
    })
    .await;
    match outcome {
        Ok(Ok(removed)) if removed.is_empty() => {
            info!("eviction: disk pressure, and every image is in use")
        }
        Ok(Ok(removed)) => info!(
            "eviction: disk pressure: removed the images no pod uses: {}",
            removed.join(", ")
        ),
        Ok(Err(error)) => warn!("eviction: collecting images failed: {error}"),
        Err(error) => warn!("eviction: collecting images failed: {error}"),
    }
}
