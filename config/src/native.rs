//! Reading the native YAML (or JSON) document.

use crate::diagnostic::Findings;
use crate::model::MachineConfig;

/// Parses a native `MachineConfig`. A syntax error, an unknown key or a value of the wrong
/// type is recorded with its field path and `None` returned.
pub fn parse(bytes: &[u8], findings: &mut Findings) -> Option<MachineConfig> {
    let deserializer = serde_yaml::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, MachineConfig>(deserializer) {
        Ok(config) => Some(config),
        Err(error) => {
            let field = field_path(&error.path().to_string());
            findings.error(field, error.into_inner().to_string());
            None
        }
    }
}

/// Turns serde_path_to_error's path (`.` for the root, `files[0].mode` otherwise) into the
/// form diagnostics use.
pub(crate) fn field_path(path: &str) -> String {
    if path.is_empty() || path == "." {
        "$".to_owned()
    } else {
        path.to_owned()
    }
}

/// Serialises a config as YAML, the form it is saved in.
pub fn to_yaml(config: &MachineConfig) -> String {
    // MachineConfig holds only strings, numbers, lists and maps with string keys, which
    // always serialise.
    serde_yaml::to_string(config).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::API_VERSION;

    #[test]
    fn unknown_keys_are_errors_with_their_path() {
        let mut findings = Findings::new("test");
        let text = format!(
            "apiVersion: {API_VERSION}\nkind: MachineConfig\nnetwork:\n  interfaces:\n    - match: {{name: eth0}}\n      dhcpp: true\n"
        );
        assert!(parse(text.as_bytes(), &mut findings).is_none());
        let error = &findings.diagnostics[0];
        assert_eq!(error.field, "network.interfaces[0].dhcpp");
        assert!(
            error.reason.contains("unknown field `dhcpp`"),
            "{}",
            error.reason
        );
    }

    #[test]
    fn a_config_round_trips_through_yaml() {
        let mut config = MachineConfig::empty();
        config.hostname = Some("node-1".into());
        let text = to_yaml(&config);
        let mut findings = Findings::new("test");
        assert_eq!(parse(text.as_bytes(), &mut findings), Some(config));
    }
}
