//! Hands-off updates: with `update.strategy: auto` and a channel, the node checks the
//! channel on an interval, installs a newer release and reboots into it through the
//! reboot policy.
//!
//! A release that already failed on this node (it did not install, or did not prove
//! healthy and was rolled back) is not retried by itself: that would crash-loop a fleet on
//! a bad release. An operator can still apply it by hand; a newer release is taken as
//! usual.

use std::sync::Arc;
use std::time::Duration;

use keelson_config::model::{UpdatePolicy, UpdateStrategy};
use tracing::{info, warn};

use crate::reboot::RebootGate;
use crate::{ApplySpec, UpdateEngine};

/// Minutes between checks when the config does not say.
pub const DEFAULT_CHECK_MINUTES: u32 = 60;
/// The first check comes this long after the node settled.
const FIRST_CHECK: Duration = Duration::from_secs(30);

/// Follows the channel for as long as the agent runs (returns at once unless the policy
/// is `auto` with a channel).
pub async fn follow_channel(engine: Arc<UpdateEngine>, policy: UpdatePolicy, node_id: String) {
    let Some(url) = policy.channel.clone() else {
        return;
    };
    if policy.strategy != UpdateStrategy::Auto {
        return;
    }
    let interval = Duration::from_secs(
        u64::from(
            policy
                .check_interval_minutes
                .unwrap_or(DEFAULT_CHECK_MINUTES),
        ) * 60,
    );
    info!(%url, "update: following the channel every {} min", interval.as_secs() / 60);
    let mut wait = FIRST_CHECK;
    loop {
        tokio::time::sleep(wait).await;
        wait = interval;
        let engine_now = engine.clone();
        let activated = tokio::task::spawn_blocking(move || {
            engine_now
                .status()
                .map(|view| view.default != view.running || view.reboot_pending.is_some())
        })
        .await;
        if !matches!(activated, Ok(Ok(false))) {
            // An update is already activated (or the slots cannot be read): nothing to do.
            continue;
        }
        let checking = engine.clone();
        let channel_url = url.clone();
        let checked = match tokio::task::spawn_blocking(move || checking.check(&channel_url)).await
        {
            Ok(Ok(checked)) => checked,
            Ok(Err(error)) => {
                warn!("update: checking {url} failed: {error}");
                continue;
            }
            Err(_) => continue,
        };
        let Some(release) = checked.latest else {
            continue;
        };
        if engine.failed_version().as_deref() == Some(release.version.as_str()) {
            warn!(
                "update: {} failed on this node before; not retrying it by itself",
                release.version
            );
            continue;
        }
        let spec = ApplySpec {
            allow_downgrade: false,
            health_timeout: UpdateEngine::health_timeout(Some(&policy)),
            expect_version: Some(release.version.clone()),
        };
        let bundle = keelson_update::channel::bundle_url(&checked.url, &release);
        info!(version = %release.version, "update: the channel has a newer release; installing it");
        let applying = engine.clone();
        match tokio::task::spawn_blocking(move || applying.apply_url(&bundle, &spec)).await {
            Ok(Ok(_)) => {
                let gate = RebootGate::of(Some(&policy), &node_id);
                if let Some(waiting) = engine.schedule_reboot(gate) {
                    info!("update: installed; {waiting}");
                }
            }
            Ok(Err(error)) => warn!("update: installing {} failed: {error}", release.version),
            Err(_) => {}
        }
    }
}
