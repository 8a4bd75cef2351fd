//! `keelctl.yaml`: which nodes to talk to and with which identity, like a talosconfig or
//! kubeconfig. Several contexts (clusters or identities) may live in one file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

/// The file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Keelconfig {
    /// The context used when `--context` is not given.
    pub context: String,
    /// Contexts by name.
    pub contexts: BTreeMap<String, Context>,
}

/// One cluster identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Context {
    /// Nodes to talk to when `-n` is not given, `host` or `host:port`.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The name node certificates are verified under.
    pub server_name: String,
    /// The cluster CA certificate (PEM).
    pub ca: String,
    /// The client certificate (PEM); its organisation carries the role.
    pub cert: String,
    /// The client key (PEM).
    pub key: String,
}

/// Where keelctl looks when neither `--keelconfig` nor `KEELCONFIG` says.
pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("keelson/keelctl.yaml")
}

impl Keelconfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> anyhow::Result<Keelconfig> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read {} (make one with `keelctl gen config`, then point \
                 --keelconfig or KEELCONFIG at it)",
                path.display()
            )
        })?;
        serde_yaml::from_str(&text)
            .with_context(|| format!("{} is not a keelctl config", path.display()))
    }

    /// The context named `name`, or the current one.
    pub fn select(&self, name: Option<&str>) -> anyhow::Result<&Context> {
        let name = name.unwrap_or(&self.context);
        match self.contexts.get(name) {
            Some(context) => Ok(context),
            None => bail!(
                "no context {name:?} in the keelctl config (it has: {})",
                self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// The YAML text.
    pub fn to_yaml(&self) -> anyhow::Result<String> {
        Ok(serde_yaml::to_string(self)?)
    }
}

/// `host` or `host:port` (IPv6 in brackets) with the API port filled in.
pub fn node_address(node: &str) -> anyhow::Result<String> {
    let node = node.trim();
    if node.is_empty() {
        bail!("an empty node address");
    }
    if node.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(node.to_owned());
    }
    if let Ok(ip) = node.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, keelson_api::API_PORT).to_string());
    }
    match node.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            port.parse::<u16>()
                .with_context(|| format!("{node:?}: {port:?} is not a port number"))?;
            Ok(node.to_owned())
        }
        Some(_) => bail!("{node:?}: write IPv6 addresses as [address]:port"),
        None => Ok(format!("{node}:{}", keelson_api::API_PORT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_get_the_api_port() {
        assert_eq!(node_address("10.0.0.5").unwrap(), "10.0.0.5:50000");
        assert_eq!(node_address("10.0.0.5:6000").unwrap(), "10.0.0.5:6000");
        assert_eq!(node_address("node-1").unwrap(), "node-1:50000");
        assert_eq!(node_address("::1").unwrap(), "[::1]:50000");
        assert_eq!(node_address("[::1]:7").unwrap(), "[::1]:7");
        assert!(node_address("node:http").is_err());
        assert!(node_address("").is_err());
    }
}
