//! What replacing the config in force with another would change.
//!
//! Hostname, files, directories, links and the API's certificates can change on a running
//! node; the other sections shape how the node boots and joins its cluster, so a change to
//! them takes a reboot. With no config in force (maintenance mode) nothing has joined a
//! cluster or started pods yet: only the network, which runs with the defaults (DHCP) so
//! that the API is reachable, needs a reboot to change.

use crate::model::MachineConfig;
use crate::native;

/// The difference between two configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Unified diff of the native YAML, private keys redacted; empty when equal.
    pub diff: String,
    /// Sections whose change needs a reboot, in document order.
    pub reboot_needed_for: Vec<&'static str>,
}

/// How `ApplyConfig` is asked to put a config in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApplyMode {
    /// Live when the change allows it, else save and reboot.
    Auto,
    /// Live, or refuse.
    NoReboot,
    /// Save for the next boot only.
    Staged,
}

/// What `ApplyConfig` does with a valid config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApplyPlan {
    /// Refuse: the change needs a reboot and the mode forbids one.
    RefuseNeedsReboot,
    /// Save it for the next boot and leave the node as it is.
    Stage,
    /// Save it and reboot into it.
    SaveAndReboot,
    /// Apply the hostname and files now, then save it.
    Live,
}

/// The decision, and whether anything is written (a dry run describes the plan only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApplyDecision {
    /// What is done (or, in a dry run, would be).
    pub plan: ApplyPlan,
    /// Write the config and change the node (false for a dry run).
    pub write: bool,
    /// Reboot once the config is saved.
    pub reboot: bool,
}

/// Which plan a config change takes: mode × whether the change needs a reboot × dry run.
/// Pure; every combination is checked in the tests.
pub fn decide_apply(mode: ApplyMode, needs_reboot: bool, dry_run: bool) -> ApplyDecision {
    let plan = match (mode, needs_reboot) {
        (ApplyMode::NoReboot, true) => ApplyPlan::RefuseNeedsReboot,
        (ApplyMode::Staged, _) => ApplyPlan::Stage,
        (ApplyMode::Auto, true) => ApplyPlan::SaveAndReboot,
        (ApplyMode::Auto | ApplyMode::NoReboot, false) => ApplyPlan::Live,
    };
    let write = !dry_run && plan != ApplyPlan::RefuseNeedsReboot;
    let decision = ApplyDecision {
        plan,
        write,
        reboot: write && plan == ApplyPlan::SaveAndReboot,
    };
    debug_assert!(
        !decision.reboot || needs_reboot,
        "never reboot for a live change"
    );
    decision
}

/// Shown in place of private keys.
pub const REDACTED: &str = "(redacted)";

/// The config as native YAML with private keys and registry passwords replaced by
/// [`REDACTED`].
pub fn redacted_yaml(config: &MachineConfig) -> String {
    let mut config = config.clone();
    if let Some(api) = &mut config.api {
        api.key = REDACTED.into();
    }
    if let Some(cluster) = &mut config.cluster {
        cluster.secret = REDACTED.into();
        for other in &mut cluster.accept_secrets {
            *other = REDACTED.into();
        }
    }
    for auth in config.registries.auth.values_mut() {
        auth.password = REDACTED.into();
    }
    for file in &mut config.files {
        if file.path == crate::plan::API_KEY_FILE {
            file.content = Some(REDACTED.into());
            file.content_base64 = None;
            file.source = None;
        }
    }
    native::to_yaml(&config)
}

/// Compares `new` with `current` (`None`: nothing in force, so the defaults).
pub fn compare(in_force: Option<&MachineConfig>, new: &MachineConfig) -> Change {
    let defaults = MachineConfig::empty();
    let current = in_force.unwrap_or(&defaults);
    let old_text = redacted_yaml(current);
    let new_text = redacted_yaml(new);
    let diff = if old_text == new_text {
        String::new()
    } else {
        similar::TextDiff::from_lines(&old_text, &new_text)
            .unified_diff()
            .context_radius(3)
            .header("in force", "new")
            .to_string()
    };
    let mut reboot_needed_for = Vec::new();
    if current.network != new.network {
        reboot_needed_for.push("network");
    }
    if in_force.is_none() {
        return Change {
            diff,
            reboot_needed_for,
        };
    }
    if current.time != new.time {
        reboot_needed_for.push("time");
    }
    // The gossip keys change live (a secret rotation is a rolling apply on every node);
    // the rest of the section shapes how the node joins, at its next start.
    let without_keys = |cluster: &Option<crate::model::Cluster>| {
        cluster.clone().map(|mut cluster| {
            cluster.secret.clear();
            cluster.accept_secrets.clear();
            cluster
        })
    };
    if without_keys(&current.cluster) != without_keys(&new.cluster) {
        reboot_needed_for.push("cluster");
    }
    if current.update != new.update {
        reboot_needed_for.push("update");
    }
    // The eviction thresholds are read at every look at the node: they change live.
    let fixed_at_start = |kubelet: &Option<crate::model::KubeletSettings>| {
        let mut settings = kubelet.clone().unwrap_or_default();
        settings.eviction_hard.clear();
        settings
    };
    if fixed_at_start(&current.kubelet) != fixed_at_start(&new.kubelet) {
        reboot_needed_for.push("kubelet");
    }
    Change {
        diff,
        reboot_needed_for,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every combination, as a table a person can read.
    #[test]
    fn every_mode_change_and_dry_run_takes_the_documented_plan() {
        use ApplyMode::*;
        use ApplyPlan::*;
        let table = [
            // mode, needs reboot, dry run → plan, writes, reboots
            (Auto, false, false, Live, true, false),
            (Auto, false, true, Live, false, false),
            (Auto, true, false, SaveAndReboot, true, true),
            (Auto, true, true, SaveAndReboot, false, false),
            (NoReboot, false, false, Live, true, false),
            (NoReboot, false, true, Live, false, false),
            (NoReboot, true, false, RefuseNeedsReboot, false, false),
            (NoReboot, true, true, RefuseNeedsReboot, false, false),
            (Staged, false, false, Stage, true, false),
            (Staged, false, true, Stage, false, false),
            (Staged, true, false, Stage, true, false),
            (Staged, true, true, Stage, false, false),
        ];
        for (mode, needs_reboot, dry_run, plan, write, reboot) in table {
            assert_eq!(
                decide_apply(mode, needs_reboot, dry_run),
                ApplyDecision {
                    plan,
                    write,
                    reboot
                },
                "{mode:?} needs_reboot={needs_reboot} dry_run={dry_run}"
            );
        }
    }
    use crate::model::ApiPki;

    #[test]
    fn a_hostname_change_is_live_and_a_network_change_needs_a_reboot() {
        let mut old = MachineConfig::empty();
        old.hostname = Some("one".into());
        let mut new = old.clone();
        new.hostname = Some("two".into());
        let change = compare(Some(&old), &new);
        assert!(change.diff.contains("-hostname: one"), "{}", change.diff);
        assert!(change.diff.contains("+hostname: two"), "{}", change.diff);
        assert!(change.reboot_needed_for.is_empty());

        new.network.nameservers = vec!["10.0.0.53".into()];
        assert_eq!(compare(Some(&old), &new).reboot_needed_for, ["network"]);
        assert_eq!(compare(Some(&new), &new).diff, "");
    }

    #[test]
    fn eviction_thresholds_change_live_and_other_kubelet_settings_need_a_reboot() {
        let old = MachineConfig::empty();
        let mut new = old.clone();
        let mut settings = crate::model::KubeletSettings::default();
        settings
            .eviction_hard
            .insert("memory.available".into(), "300Mi".into());
        new.kubelet = Some(settings.clone());
        assert!(compare(Some(&old), &new).reboot_needed_for.is_empty());
        settings.pod_cidr = Some("10.88.0.0/24".into());
        new.kubelet = Some(settings);
        assert_eq!(compare(Some(&old), &new).reboot_needed_for, ["kubelet"]);
    }

    #[test]
    fn rotating_the_cluster_secret_is_live_and_other_cluster_changes_are_not() {
        let mut old = MachineConfig::empty();
        old.cluster = Some(crate::model::Cluster::new("lab", "a".repeat(32)));
        let mut rotated = old.clone();
        rotated.cluster.as_mut().unwrap().accept_secrets = vec!["b".repeat(32)];
        assert!(compare(Some(&old), &rotated).reboot_needed_for.is_empty());
        let cluster = rotated.cluster.as_mut().unwrap();
        cluster.secret = "b".repeat(32);
        cluster.accept_secrets = vec!["a".repeat(32)];
        assert!(compare(Some(&old), &rotated).reboot_needed_for.is_empty());
        assert!(
            !redacted_yaml(&rotated).contains(&"a".repeat(32)),
            "accepted secrets are secret too"
        );
        rotated.cluster.as_mut().unwrap().control_planes = Some(5);
        assert_eq!(compare(Some(&old), &rotated).reboot_needed_for, ["cluster"]);
    }

    #[test]
    fn in_maintenance_mode_only_the_network_needs_a_reboot() {
        let mut new = MachineConfig::empty();
        new.cluster = Some(crate::model::Cluster::new("lab", "s".repeat(32)));
        assert!(compare(None, &new).reboot_needed_for.is_empty());
        assert_eq!(
            compare(Some(&MachineConfig::empty()), &new).reboot_needed_for,
            ["cluster"]
        );
        new.network.nameservers = vec!["10.0.0.53".into()];
        assert_eq!(compare(None, &new).reboot_needed_for, ["network"]);
    }

    #[test]
    fn private_keys_never_appear_in_a_diff() {
        let mut new = MachineConfig::empty();
        new.api = Some(ApiPki {
            ca: "CA PEM".into(),
            cert: "CERT PEM".into(),
            key: "SECRET KEY PEM".into(),
        });
        let change = compare(None, &new);
        assert!(!change.diff.contains("SECRET"), "{}", change.diff);
        assert!(change.diff.contains(REDACTED));
        assert!(change.reboot_needed_for.is_empty());
    }
}
