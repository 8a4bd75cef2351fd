//! Which configuration source a boot uses: the pure decision at the heart of config
//! acquisition. The agent probes the sources (cheaply: it checks that they exist and reads
//! a seed's `instance-id`), asks [`choose`], then reads and applies only the chosen one.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// The copy saved on STATE by an earlier boot.
    Saved,
    /// QEMU's firmware configuration device (`opt/com.coreos/config` or
    /// `opt/dev.keelson/config`).
    FwCfg,
    /// A NoCloud seed filesystem labelled `cidata`.
    NoCloud,
    /// The `keelson.config=` URL on the kernel command line.
    Url,
    /// Nothing was found: the node enters maintenance mode and waits for `apply-config`.
    None,
    /// Applied through the API (`ApplyConfig`). Recorded, never chosen: a config applied
    /// through the API is saved, and later boots find it as [`SourceKind::Saved`].
    Api,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Saved => "saved",
            SourceKind::FwCfg => "fw_cfg",
            SourceKind::NoCloud => "nocloud",
            SourceKind::Url => "url",
            SourceKind::None => "none",
            SourceKind::Api => "api",
        })
    }
}

/// What the agent found when it looked at each source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    /// The saved copy exists; with the NoCloud instance-id it was taken from, if any.
    pub saved: Option<Option<String>>,
    /// `keelson.config.reapply` was on the command line: ignore the saved copy.
    pub reapply: bool,
    /// A fw_cfg config blob exists.
    pub fw_cfg: bool,
    /// A NoCloud seed exists; with its `instance-id`, if it has one.
    pub nocloud: Option<Option<String>>,
    /// A `keelson.config=` URL was given.
    pub url: bool,
}

/// Chooses the source for this boot.
///
/// The saved copy wins unless a re-apply is asked for or a NoCloud seed carries an
/// `instance-id` different from the one the saved copy came from (cloud-init's rule for a
/// new instance). Otherwise the first source found wins, in the order fw_cfg, NoCloud, URL.
pub fn choose(probe: &Probe) -> SourceKind {
    if let (Some(saved_instance), false) = (&probe.saved, probe.reapply) {
        let newer_seed = matches!(
            &probe.nocloud,
            Some(Some(instance)) if saved_instance.as_ref() != Some(instance)
        );
        if !newer_seed {
            return SourceKind::Saved;
        }
        return SourceKind::NoCloud;
    }
    if probe.fw_cfg {
        SourceKind::FwCfg
    } else if probe.nocloud.is_some() {
        SourceKind::NoCloud
    } else if probe.url {
        SourceKind::Url
    } else {
        SourceKind::None
    }
}

/// What is stored beside the saved config on STATE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedMeta {
    /// Where the config first came from.
    pub source: SourceKind,
    /// Its format (`native`, `ignition`, `cloud-config`).
    pub format: String,
    /// The NoCloud `instance-id` it came with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// When it was saved (seconds since the epoch, machine clock).
    pub saved_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_saved_copy_wins_over_a_seed_of_the_same_instance() {
        let probe = Probe {
            saved: Some(Some("i-1".into())),
            nocloud: Some(Some("i-1".into())),
            fw_cfg: true,
            ..Probe::default()
        };
        assert_eq!(choose(&probe), SourceKind::Saved);
    }

    #[test]
    fn a_new_instance_id_or_a_reapply_takes_the_seed() {
        let mut probe = Probe {
            saved: Some(Some("i-1".into())),
            nocloud: Some(Some("i-2".into())),
            ..Probe::default()
        };
        assert_eq!(choose(&probe), SourceKind::NoCloud);
        probe.nocloud = Some(Some("i-1".into()));
        probe.reapply = true;
        assert_eq!(choose(&probe), SourceKind::NoCloud);
    }

    #[test]
    fn sources_are_tried_in_order() {
        let mut probe = Probe {
            fw_cfg: true,
            nocloud: Some(None),
            url: true,
            ..Probe::default()
        };
        assert_eq!(choose(&probe), SourceKind::FwCfg);
        probe.fw_cfg = false;
        assert_eq!(choose(&probe), SourceKind::NoCloud);
        probe.nocloud = None;
        assert_eq!(choose(&probe), SourceKind::Url);
        probe.url = false;
        assert_eq!(choose(&probe), SourceKind::None);
    }
}
