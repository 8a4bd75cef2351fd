//! cloud-init's NoCloud documents translated into a [`MachineConfig`]: `#cloud-config`
//! user-data, `meta-data` and `network-config` version 2.
//!
//! Honoured: `hostname`, `fqdn`, `write_files` (with `encoding`, `permissions`, `owner`,
//! `append`), `ntp` and `timezone` (kept, with a warning that they are not acted on yet),
//! and network-config v2 `ethernets`. Keys that need a shell, SSH or user accounts
//! (`users`, `ssh_authorized_keys`, `bootcmd`, `runcmd`, …) are warnings that point to the
//! API; keys Keelson has no use for are warnings too; nothing is skipped silently.

use base64::Engine;
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use crate::diagnostic::Findings;
use crate::model::{self, MachineConfig};
use crate::native::field_path;
use crate::plan::{gunzip, Origins};

/// The first line that marks cloud-config user-data.
pub const CLOUD_CONFIG_HEADER: &str = "#cloud-config";

/// Keys that would need a shell, SSH or user accounts, with what they would have done.
const NO_SHELL_KEYS: &[(&str, &str)] = &[
    ("users", "user accounts"),
    ("groups", "groups"),
    ("user", "the default user"),
    ("ssh_authorized_keys", "SSH keys"),
    ("ssh_keys", "SSH host keys"),
    ("ssh_pwauth", "SSH password login"),
    ("ssh_deletekeys", "SSH host key rotation"),
    ("ssh_genkeytypes", "SSH host key types"),
    ("ssh", "SSH settings"),
    ("disable_root", "root login settings"),
    ("chpasswd", "passwords"),
    ("password", "the default user's password"),
    ("bootcmd", "bootcmd (commands run early in boot)"),
    ("runcmd", "runcmd (commands run at the end of boot)"),
    ("scripts_user", "user scripts"),
];

/// Keys about software or hardware Keelson manages itself.
const NOT_APPLICABLE_KEYS: &[(&str, &str)] = &[
    (
        "packages",
        "Keelson has no package manager; run software as pods",
    ),
    (
        "package_update",
        "Keelson has no package manager; updates are whole signed slots",
    ),
    (
        "package_upgrade",
        "Keelson has no package manager; updates are whole signed slots",
    ),
    (
        "package_reboot_if_required",
        "Keelson has no package manager",
    ),
    ("apt", "Keelson has no package manager"),
    ("yum_repos", "Keelson has no package manager"),
    ("snap", "Keelson has no package manager"),
    (
        "mounts",
        "Keelson owns its mounts; persistent data belongs under /var",
    ),
    ("disk_setup", "Keelson owns the disk layout"),
    ("fs_setup", "Keelson owns the disk layout"),
    ("growpart", "Keelson always grows STATE to fill the disk"),
    (
        "resize_rootfs",
        "the root is a read-only verified image; STATE grows by itself",
    ),
    (
        "power_state",
        "power the node through the API (keelctl reboot/shutdown)",
    ),
    ("locale", "Keelson has no locales"),
    ("keyboard", "Keelson has no console login"),
    ("ca_certs", "extra CA certificates are not installed yet"),
    ("phone_home", "Keelson does not phone home"),
    ("final_message", "Keelson prints its own ready line"),
    ("manage_etc_hosts", "Keelson writes /etc/hosts from fqdn"),
    (
        "preserve_hostname",
        "the hostname is always taken from the config",
    ),
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteFile {
    path: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    permissions: Option<Permissions>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    append: bool,
    #[serde(default)]
    defer: bool,
    #[serde(default)]
    source: Option<Value>,
}

/// `permissions` is usually a quoted octal string; an unquoted `0644` arrives as a number
/// (644 in YAML 1.2, 420 in YAML 1.1); either way its digits are read as octal.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Permissions {
    Text(String),
    Number(u64),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Ntp {
    enabled: Option<bool>,
    servers: Vec<String>,
    pools: Vec<String>,
    ntp_client: Option<String>,
    config: Option<Value>,
}

/// The `meta-data` fields Keelson reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaData {
    /// `instance-id`: a new value asks the node to apply the seed again.
    pub instance_id: Option<String>,
    /// `local-hostname`: the hostname when user-data sets none.
    pub local_hostname: Option<String>,
}

/// Reads `meta-data` (YAML, or JSON which is YAML too).
pub fn parse_meta_data(bytes: &[u8], findings: &mut Findings) -> Option<MetaData> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Some(MetaData::default());
    }
    let value: Value = match serde_yaml::from_slice(bytes) {
        Ok(value) => value,
        Err(error) => {
            findings.error("$", format!("meta-data is not valid YAML: {error}"));
            return None;
        }
    };
    let Value::Mapping(map) = value else {
        findings.error("$", "meta-data must be a mapping of keys to values");
        return None;
    };
    let text = |key: &str, findings: &mut Findings| match map.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Number(number)) => Some(number.to_string()),
        Some(_) => {
            findings.error(key, "must be a string");
            None
        }
    };
    let instance_id = text("instance-id", findings);
    let local_hostname = text("local-hostname", findings);
    Some(MetaData {
        instance_id,
        local_hostname,
    })
}

/// Translates `#cloud-config` user-data.
pub fn translate(bytes: &[u8], findings: &mut Findings) -> Option<(MachineConfig, Origins)> {
    let value: Value = match serde_yaml::from_slice(bytes) {
        Ok(Value::Null) => Value::Mapping(Mapping::new()),
        Ok(value) => value,
        Err(error) => {
            findings.error("$", format!("not valid YAML: {error}"));
            return None;
        }
    };
    let Value::Mapping(map) = value else {
        findings.error("$", "cloud-config must be a mapping of keys to values");
        return None;
    };
    let mut config = MachineConfig::empty();
    let mut origins = Origins::default();
    let mut fqdn = None;
    let mut time = model::Time::default();
    for (key, value) in &map {
        let Some(key) = key.as_str() else {
            findings.error("$", format!("keys must be strings, not {key:?}"));
            continue;
        };
        match key {
            "hostname" => {
                if let Some(hostname) = typed::<String>(key, value, findings) {
                    origins.record("hostname", "hostname");
                    config.hostname = Some(hostname);
                }
            }
            "fqdn" => fqdn = typed::<String>(key, value, findings),
            "write_files" => {
                let Some(files) = typed::<Vec<WriteFile>>(key, value, findings) else {
                    continue;
                };
                for (index, file) in files.iter().enumerate() {
                    let origin = format!("write_files[{index}]");
                    if let Some(file) = write_file(&origin, file, findings) {
                        let field = format!("files[{}]", config.files.len());
                        origins.record(field, origin);
                        config.files.push(file);
                    }
                }
            }
            "ntp" => {
                let Some(ntp) = typed::<Ntp>(key, value, findings) else {
                    continue;
                };
                if ntp.enabled != Some(false) {
                    time.servers.extend(ntp.servers);
                    time.servers.extend(ntp.pools);
                    origins.record("time.servers", "ntp.servers");
                }
                if ntp.ntp_client.is_some() || ntp.config.is_some() {
                    findings.warning(
                        "ntp",
                        "ntp_client and config are not applied: Keelson has its own time client",
                    );
                }
            }
            "timezone" => {
                if let Some(zone) = typed::<String>(key, value, findings) {
                    origins.record("time.timezone", "timezone");
                    time.timezone = Some(zone);
                }
            }
            key => {
                if let Some((_, what)) = NO_SHELL_KEYS.iter().find(|(name, _)| *name == key) {
                    findings.no_shell(key, what);
                } else if let Some((_, why)) =
                    NOT_APPLICABLE_KEYS.iter().find(|(name, _)| *name == key)
                {
                    findings.warning(key, format!("not applied: {why}"));
                } else {
                    findings.warning(
                        key,
                        "not a cloud-config key Keelson knows; ignored (see docs/config.md \
                         for the keys it honours)",
                    );
                }
            }
        }
    }
    if let Some(fqdn) = fqdn {
        apply_fqdn(&mut config, &mut origins, &fqdn, findings);
    }
    if time != model::Time::default() {
        config.time = Some(time);
    }
    Some((config, origins))
}

/// `fqdn` sets the hostname (its first label, unless `hostname` is given) and `/etc/hosts`.
fn apply_fqdn(
    config: &mut MachineConfig,
    origins: &mut Origins,
    fqdn: &str,
    findings: &mut Findings,
) {
    if let Err(reason) = crate::plan::check_hostname(fqdn) {
        findings.error("fqdn", reason);
        return;
    }
    let short = fqdn.split('.').next().unwrap_or(fqdn).to_owned();
    if config.hostname.is_none() {
        origins.record("hostname", "fqdn");
        config.hostname = Some(short.clone());
    }
    let field = format!("files[{}]", config.files.len());
    origins.record(field, "fqdn");
    config.files.push(model::File {
        path: "/etc/hosts".into(),
        content: Some(format!(
            "127.0.0.1 localhost\n::1 localhost\n127.0.1.1 {fqdn} {short}\n"
        )),
        ..model::File::default()
    });
}

fn typed<T: for<'de> Deserialize<'de>>(
    key: &str,
    value: &Value,
    findings: &mut Findings,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value.clone()) {
        Ok(typed) => Some(typed),
        Err(error) => {
            let inner = field_path(&error.path().to_string());
            let field = if inner == "$" {
                key.to_owned()
            } else if inner.starts_with('[') {
                format!("{key}{inner}")
            } else {
                format!("{key}.{inner}")
            };
            findings.error(field, error.into_inner().to_string());
            None
        }
    }
}

fn write_file(origin: &str, file: &WriteFile, findings: &mut Findings) -> Option<model::File> {
    if file.source.is_some() {
        findings.error(
            format!("{origin}.source"),
            "fetching write_files from a URL is not supported; give content inline",
        );
        return None;
    }
    let raw = file.content.clone().unwrap_or_default();
    let bytes = match file.encoding.as_deref().unwrap_or("text/plain") {
        "text/plain" => Ok(raw.into_bytes()),
        "b64" | "base64" => decode_base64(&raw),
        "gz" | "gzip" => gunzip(raw.as_bytes()),
        "gz+b64" | "gz+base64" | "gzip+b64" | "gzip+base64" => {
            decode_base64(&raw).and_then(|compressed| gunzip(&compressed))
        }
        other => Err(format!(
            "{other:?} is not an encoding cloud-init knows (b64, gzip, gz+b64, text/plain)"
        )),
    };
    let bytes = match bytes {
        Ok(bytes) => bytes,
        Err(reason) => {
            findings.error(format!("{origin}.content"), reason);
            return None;
        }
    };
    let mode = match &file.permissions {
        None => None,
        Some(Permissions::Text(text)) => Some(text.clone()),
        Some(Permissions::Number(number)) => Some(number.to_string()),
    };
    let (owner, group) = match parse_owner(file.owner.as_deref().unwrap_or("root:root")) {
        Ok(ids) => ids,
        Err(reason) => {
            findings.error(format!("{origin}.owner"), reason);
            return None;
        }
    };
    let _ = file.defer; // Keelson writes every file at the same step, after the network.
    Some(model::File {
        path: file.path.clone(),
        content_base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        mode,
        owner: Some(owner),
        group: Some(group),
        append: file.append,
        ..model::File::default()
    })
}

fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let cleaned: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(cleaned)
        .map_err(|error| format!("not valid base64: {error}"))
}

/// `root`, `root:root`, `0:0` or `1000:1000`; names other than root cannot be resolved.
fn parse_owner(text: &str) -> Result<(u32, u32), String> {
    let id = |part: &str| -> Result<u32, String> {
        if part == "root" {
            return Ok(0);
        }
        part.parse().map_err(|_| {
            format!(
                "{part:?} cannot be resolved: Keelson has no user database; use root or \
                 numeric ids such as 1000:1000"
            )
        })
    };
    match text.split_once(':') {
        Some((user, group)) => Ok((id(user)?, id(group)?)),
        None => {
            let user = id(text)?;
            Ok((user, user))
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct Ethernet {
    #[serde(default, rename = "match")]
    matches: Option<EthernetMatch>,
    #[serde(default, rename = "set-name")]
    set_name: Option<String>,
    #[serde(default)]
    dhcp4: Option<YesNo>,
    #[serde(default)]
    dhcp6: Option<YesNo>,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    gateway4: Option<String>,
    #[serde(default)]
    gateway6: Option<String>,
    #[serde(default)]
    routes: Vec<V2Route>,
    #[serde(default)]
    nameservers: Option<Nameservers>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    optional: Option<bool>,
    #[serde(flatten)]
    other: Mapping,
}

/// netplan accepts true/false and yes/no.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum YesNo {
    Bool(bool),
    Text(String),
}

impl YesNo {
    fn value(&self) -> Result<bool, String> {
        match self {
            YesNo::Bool(value) => Ok(*value),
            YesNo::Text(text) => match text.as_str() {
                "yes" | "true" | "on" => Ok(true),
                "no" | "false" | "off" => Ok(false),
                other => Err(format!("{other:?} is not true or false")),
            },
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct EthernetMatch {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    macaddress: Option<String>,
    #[serde(default)]
    driver: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct V2Route {
    to: String,
    #[serde(default)]
    via: Option<String>,
    #[serde(default)]
    metric: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
struct Nameservers {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    search: Vec<String>,
}

/// Translates a `network-config` version 2 document into `network` (with origins).
pub fn translate_network_config(
    bytes: &[u8],
    findings: &mut Findings,
) -> Option<(model::Network, Origins)> {
    let value: Value = match serde_yaml::from_slice(bytes) {
        Ok(value) => value,
        Err(error) => {
            findings.error("$", format!("not valid YAML: {error}"));
            return None;
        }
    };
    // Both `network: {version: 2, …}` and the bare `{version: 2, …}` are accepted.
    let (prefix, body) = match value.get("network") {
        Some(inner) => ("network.", inner.clone()),
        None => ("", value),
    };
    let Value::Mapping(map) = body else {
        findings.error("$", "network-config must be a mapping");
        return None;
    };
    match map.get("version").and_then(Value::as_u64) {
        Some(2) => {}
        Some(1) => {
            findings.error(
                format!("{prefix}version"),
                "network-config version 1 is not supported; write version 2 (netplan form)",
            );
            return None;
        }
        _ => {
            findings.error(format!("{prefix}version"), "must be 2");
            return None;
        }
    }
    let mut network = model::Network::default();
    let mut origins = Origins::default();
    for (key, value) in &map {
        let key = key.as_str().unwrap_or_default();
        let field = format!("{prefix}{key}");
        match key {
            "version" | "renderer" => {}
            "ethernets" => {
                let Some(ethernets) =
                    typed::<std::collections::BTreeMap<String, Ethernet>>(&field, value, findings)
                else {
                    continue;
                };
                for (id, ethernet) in &ethernets {
                    let origin = format!("{field}.{id}");
                    if let Some(interface) =
                        ethernet_interface(&origin, id, ethernet, &mut network, findings)
                    {
                        let native = format!("network.interfaces[{}]", network.interfaces.len());
                        origins.record(native, origin);
                        network.interfaces.push(interface);
                    }
                }
            }
            "bonds" | "bridges" | "vlans" | "wifis" | "tunnels" | "vrfs" | "modems" => {
                findings.warning(
                    field,
                    "not applied: Keelson configures plain Ethernet interfaces only",
                );
            }
            _ => findings.warning(field, "not a network-config v2 key Keelson knows; ignored"),
        }
    }
    Some((network, origins))
}

fn ethernet_interface(
    origin: &str,
    id: &str,
    ethernet: &Ethernet,
    network: &mut model::Network,
    findings: &mut Findings,
) -> Option<model::Interface> {
    let mut matches = model::InterfaceMatch::default();
    match &ethernet.matches {
        Some(given) => {
            matches.name = given.name.clone();
            matches.mac = given.macaddress.clone();
            if given.driver.is_some() {
                findings.warning(
                    format!("{origin}.match.driver"),
                    "matching by driver is not supported; match by name or macaddress",
                );
            }
        }
        // netplan: without `match`, the id is the interface name.
        None => matches.name = Some(id.to_owned()),
    }
    if ethernet.set_name.is_some() {
        findings.warning(
            format!("{origin}.set-name"),
            "not applied: interfaces keep their kernel names",
        );
    }
    let mut dhcp = false;
    for (key, flag) in [("dhcp4", &ethernet.dhcp4), ("dhcp6", &ethernet.dhcp6)] {
        let Some(flag) = flag else { continue };
        match flag.value() {
            Ok(true) if key == "dhcp6" => findings.warning(
                format!("{origin}.dhcp6"),
                "DHCPv6 is not supported; IPv6 router advertisements and static addresses work",
            ),
            Ok(value) => dhcp |= value && key == "dhcp4",
            Err(reason) => {
                findings.error(format!("{origin}.{key}"), reason);
                return None;
            }
        }
    }
    let mut routes: Vec<model::Route> = ethernet
        .routes
        .iter()
        .map(|route| model::Route {
            to: route.to.clone(),
            via: route.via.clone(),
            metric: route.metric,
        })
        .collect();
    for gateway in [&ethernet.gateway4, &ethernet.gateway6]
        .into_iter()
        .flatten()
    {
        routes.push(model::Route {
            to: "default".into(),
            via: Some(gateway.clone()),
            metric: None,
        });
    }
    if let Some(nameservers) = &ethernet.nameservers {
        network
            .nameservers
            .extend(nameservers.addresses.iter().cloned());
        network
            .search_domains
            .extend(nameservers.search.iter().cloned());
    }
    let _ = ethernet.optional; // Keelson never waits for an interface to come up.
    for key in ethernet.other.keys() {
        findings.warning(
            format!("{origin}.{}", key.as_str().unwrap_or("?")),
            "not an ethernets key Keelson knows; ignored",
        );
    }
    Some(model::Interface {
        matches,
        dhcp,
        addresses: ethernet.addresses.clone(),
        routes,
        mtu: ethernet.mtu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_accept_root_and_numbers_only() {
        assert_eq!(parse_owner("root:root"), Ok((0, 0)));
        assert_eq!(parse_owner("1000:100"), Ok((1000, 100)));
        assert_eq!(parse_owner("root"), Ok((0, 0)));
        assert!(parse_owner("core:core").is_err());
    }
}
