//! Validation: a [`MachineConfig`] checked whole and turned into typed values, the [`Plan`]
//! the agent applies.
//!
//! Every value is checked here, before anything touches the machine, and every problem is
//! reported (not just the first), each with its field. A plan is only made when there is no
//! error, so the agent never holds a half-valid configuration.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use base64::Engine;
use sha2::Digest as _;

use crate::diagnostic::{Findings, Severity};
use crate::model::{self, MachineConfig, API_VERSION, KIND};

/// Everything a valid configuration asks the agent to do, in typed form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The hostname; `None` keeps the default.
    pub hostname: Option<String>,
    /// Node networking.
    pub network: NetworkPlan,
    /// Directories, created first.
    pub directories: Vec<DirectoryPlan>,
    /// Files, written after the directories.
    pub files: Vec<FilePlan>,
    /// Links, made last.
    pub links: Vec<LinkPlan>,
    /// The API's mutual-TLS material; `None` leaves the API in maintenance mode.
    pub api: Option<model::ApiPki>,
    /// Certificate authorities (PEM) trusted beside the root's bundle for `https://`
    /// fetches.
    pub trusted_authorities: Vec<String>,
    /// Image registries: mirrors, plain-HTTP hosts, credentials (checked).
    pub registries: model::Registries,
}

/// Node networking in typed form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPlan {
    /// Interfaces to configure; empty means DHCP on the first Ethernet interface.
    pub interfaces: Vec<InterfacePlan>,
    /// Configured DNS servers.
    pub nameservers: Vec<IpAddr>,
    /// DNS search domains.
    pub search_domains: Vec<String>,
}

/// One interface's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePlan {
    /// Which interface.
    pub matcher: Matcher,
    /// Run the DHCPv4 client.
    pub dhcp: bool,
    /// Static addresses.
    pub addresses: Vec<IpNet>,
    /// Static routes.
    pub routes: Vec<RoutePlan>,
    /// MTU.
    pub mtu: Option<u32>,
}

/// Recognises an interface by name pattern and hardware address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    /// Exact name, or a prefix when it ends with `*`.
    pub name: Option<String>,
    /// Hardware address.
    pub mac: Option<[u8; 6]>,
}

impl Matcher {
    /// True when the interface `name` with hardware address `mac` matches.
    pub fn matches(&self, name: &str, mac: &[u8; 6]) -> bool {
        let name_ok = match &self.name {
            None => true,
            Some(pattern) => match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == pattern,
            },
        };
        name_ok && self.mac.as_ref().is_none_or(|wanted| wanted == mac)
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.name, &self.mac) {
            (Some(name), Some(mac)) => write!(f, "name {name} and mac {}", format_mac(mac)),
            (Some(name), None) => write!(f, "name {name}"),
            (None, Some(mac)) => write!(f, "mac {}", format_mac(mac)),
            (None, None) => write!(f, "any interface"),
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    /// The address.
    pub address: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// A route in typed form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutePlan {
    /// Destination network.
    pub destination: IpNet,
    /// Next hop, if not on the link.
    pub via: Option<IpAddr>,
    /// Priority.
    pub metric: Option<u32>,
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    /// Known now (text, base64 or a `data:` URL, already decoded and verified).
    Inline(Vec<u8>),
    /// Fetched over HTTP(S) once the network is up, then verified and decompressed.
    Fetch {
        /// `http://` or `https://` URL.
        url: String,
        /// Expected digest of the fetched bytes.
        hash: Option<ContentHash>,
        /// The fetched bytes are gzip-compressed.
        gzip: bool,
    },
}

/// A file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePlan {
    /// Which entry of the config's `files` this is (the API credential files, taken out of
    /// the plan, leave gaps: a plan's position is not the config's).
    pub config_index: usize,
    /// Absolute path under `/etc` or `/var`.
    pub path: PathBuf,
    /// Its bytes.
    pub contents: Contents,
    /// Permission bits.
    pub mode: u32,
    /// Owner uid.
    pub owner: u32,
    /// Group gid.
    pub group: u32,
    /// Append instead of replace.
    pub append: bool,
}

/// A directory to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryPlan {
    /// Absolute path under `/etc` or `/var`.
    pub path: PathBuf,
    /// Permission bits.
    pub mode: u32,
    /// Owner uid.
    pub owner: u32,
    /// Group gid.
    pub group: u32,
}

/// A link to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPlan {
    /// Where the link goes.
    pub path: PathBuf,
    /// What it points to.
    pub target: PathBuf,
    /// Hard link.
    pub hard: bool,
}

/// A digest that fetched contents must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentHash {
    /// `sha256` or `sha512`.
    pub algorithm: HashAlgorithm,
    /// The expected digest.
    pub digest: Vec<u8>,
}

/// Supported digest algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl ContentHash {
    /// Parses `sha256-<hex>` or `sha512-<hex>`.
    pub fn parse(text: &str) -> Result<ContentHash, String> {
        let (name, hex_digest) = text
            .split_once('-')
            .ok_or_else(|| format!("{text:?} is not <algorithm>-<hex digest>"))?;
        let (algorithm, length) = match name {
            "sha256" => (HashAlgorithm::Sha256, 32),
            "sha512" => (HashAlgorithm::Sha512, 64),
            other => {
                return Err(format!(
                    "hash algorithm {other:?} is not supported; use sha256 or sha512"
                ))
            }
        };
        let digest = hex::decode(hex_digest)
            .map_err(|_| format!("{hex_digest:?} is not a hexadecimal digest"))?;
        if digest.len() != length {
            return Err(format!(
                "a {name} digest has {} hex digits, not {}",
                length * 2,
                hex_digest.len()
            ));
        }
        Ok(ContentHash { algorithm, digest })
    }

    /// Checks `bytes` against the digest.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), String> {
        let actual = match self.algorithm {
            HashAlgorithm::Sha256 => sha2::Sha256::digest(bytes).to_vec(),
            HashAlgorithm::Sha512 => sha2::Sha512::digest(bytes).to_vec(),
        };
        if actual == self.digest {
            Ok(())
        } else {
            Err(format!(
                "digest mismatch: expected {}, got {}",
                hex::encode(&self.digest),
                hex::encode(actual)
            ))
        }
    }
}

/// Decompresses gzip data, with an error that says so.
pub fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|error| format!("not valid gzip data: {error}"))?;
    Ok(out)
}

/// Decodes a `data:` URL (RFC 2397): `data:[<media type>][;base64],<data>`.
pub fn decode_data_url(url: &str) -> Result<Vec<u8>, String> {
    let rest = url
        .strip_prefix("data:")
        .ok_or_else(|| "not a data: URL".to_owned())?;
    let (header, data) = rest
        .split_once(',')
        .ok_or_else(|| "a data: URL needs a ',' before its data".to_owned())?;
    if header.split(';').any(|part| part == "base64") {
        let cleaned: String = percent_decode(data)?
            .into_iter()
            .filter(|byte| !byte.is_ascii_whitespace())
            .map(char::from)
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(cleaned)
            .map_err(|error| format!("the data: URL's base64 is invalid: {error}"))
    } else {
        percent_decode(data)
    }
}

fn percent_decode(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if byte == b'%' {
            let pair = bytes
                .get(index + 1..index + 3)
                .and_then(|pair| std::str::from_utf8(pair).ok())
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("bad percent escape at byte {index}"))?;
            out.push(pair);
            index += 3;
        } else {
            out.push(byte);
            index += 1;
        }
    }
    Ok(out)
}

/// Maps a native field path back to where the value came from in the original document
/// (an Ignition or cloud-init key, possibly in another document of the same seed), so that
/// errors point at what the user wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    entries: Vec<Origin>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    native: String,
    field: String,
    document: Option<String>,
}

impl Origins {
    /// Records that native `field` (e.g. `files[0]`) came from `origin`
    /// (e.g. `storage.files[3]`) of the document being translated.
    pub fn record(&mut self, field: impl Into<String>, origin: impl Into<String>) {
        self.entries.push(Origin {
            native: field.into(),
            field: origin.into(),
            document: None,
        });
    }

    /// Adds `other`'s entries, which came from the document named `document`, with their
    /// native paths moved by `shift` (e.g. interface 0 there is interface 2 here).
    pub fn merge_from(&mut self, other: Origins, document: &str, shift: impl Fn(&str) -> String) {
        for origin in other.entries {
            self.entries.push(Origin {
                native: shift(&origin.native),
                field: origin.field,
                document: Some(origin.document.unwrap_or_else(|| document.to_owned())),
            });
        }
    }

    /// The document (when not the main one) and original path of native `field`: the
    /// longest recorded prefix is replaced.
    pub fn locate(&self, field: &str) -> (Option<String>, String) {
        self.entries
            .iter()
            .filter(|origin| {
                field == origin.native
                    || field
                        .strip_prefix(origin.native.as_str())
                        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
            })
            .max_by_key(|origin| origin.native.len())
            .map(|origin| {
                (
                    origin.document.clone(),
                    format!("{}{}", origin.field, &field[origin.native.len()..]),
                )
            })
            .unwrap_or_else(|| (None, field.to_owned()))
    }

    /// The original path of native `field`.
    pub fn rename(&self, field: &str) -> String {
        self.locate(field).1
    }
}

/// Checks `config` whole. Every problem is added to `findings` (with field paths renamed
/// through `origins`); the plan is returned only when there is none.
pub fn plan(config: &MachineConfig, origins: &Origins, findings: &mut Findings) -> Option<Plan> {
    let mut check = Checker {
        origins,
        findings,
        failed: false,
    };
    if config.api_version != API_VERSION {
        check.error(
            "apiVersion",
            format!(
                "{:?} is not supported; this Keelson reads {API_VERSION}",
                config.api_version
            ),
        );
    }
    if config.kind != KIND {
        check.error(
            "kind",
            format!("{:?} is not a machine config; expected {KIND}", config.kind),
        );
    }
    let hostname = config.hostname.as_ref().and_then(|hostname| {
        let checked = check_hostname(hostname);
        check.result("hostname", checked).map(|()| hostname.clone())
    });
    let network = check_network(&mut check, &config.network);
    let directories = config
        .directories
        .iter()
        .enumerate()
        .filter_map(|(index, directory)| {
            check_directory(&mut check, &format!("directories[{index}]"), directory)
        })
        .collect();
    let mut files: Vec<FilePlan> = config
        .files
        .iter()
        .enumerate()
        .filter_map(|(index, file)| {
            check_file(&mut check, &format!("files[{index}]"), file).map(|plan| FilePlan {
                config_index: index,
                ..plan
            })
        })
        .collect();
    let api_from_files = take_api_files(&mut check, config, &mut files);
    let links = config
        .links
        .iter()
        .enumerate()
        .filter_map(|(index, link)| check_link(&mut check, &format!("links[{index}]"), link))
        .collect();
    if let Some(time) = &config.time {
        check_time(&mut check, time);
    }
    if let Some(cluster) = &config.cluster {
        check_cluster(&mut check, cluster);
    }
    if let Some(update) = &config.update {
        if let Some(seconds) = update.health_timeout_seconds {
            if !(10..=86400).contains(&seconds) {
                check.error(
                    "update.healthTimeoutSeconds",
                    format!("{seconds} is out of range: give 10 to 86400 seconds"),
                );
            }
        }
        check_update(&mut check, update, config.cluster.is_some());
    }
    check_static_pods(&mut check, &config.static_pods);
    if let Some(kubelet) = &config.kubelet {
        check_kubelet(&mut check, kubelet);
    }
    check_registries(&mut check, &config.registries);
    let api = match (&config.api, api_from_files) {
        (Some(_), Some(_)) => {
            check.error(
                "api",
                format!(
                    "the API credentials are given twice: in api and as files under {API_FILES_DIRECTORY}; keep one"
                ),
            );
            None
        }
        (Some(api), None) => Some(api.clone()),
        (None, from_files) => from_files,
    };
    if let Some(api) = &config.api {
        check_pem(&mut check, "api.ca", &api.ca, &["CERTIFICATE"]);
        check_pem(&mut check, "api.cert", &api.cert, &["CERTIFICATE"]);
        check_pem(
            &mut check,
            "api.key",
            &api.key,
            &["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"],
        );
    }
    for (index, authority) in config.certificate_authorities.iter().enumerate() {
        check_pem(
            &mut check,
            &format!("certificateAuthorities[{index}]"),
            authority,
            &["CERTIFICATE"],
        );
    }
    if check.failed {
        return None;
    }
    Some(Plan {
        hostname,
        network,
        directories,
        files,
        links,
        api,
        trusted_authorities: config.certificate_authorities.clone(),
        registries: config.registries.clone(),
    })
}

/// Where Ignition and cloud-init configs, which have no place for Keelson's API
/// credentials, put them as files: the three paths below. They are taken as the `api`
/// section and never written to disk.
pub const API_FILES_DIRECTORY: &str = "/etc/keelson/api";
/// The CA certificate file.
pub const API_CA_FILE: &str = "/etc/keelson/api/ca.crt";
/// The node certificate file.
pub const API_CERT_FILE: &str = "/etc/keelson/api/node.crt";
/// The node key file.
pub const API_KEY_FILE: &str = "/etc/keelson/api/node.key";

/// Moves the API credential files out of `files` into an [`model::ApiPki`].
fn take_api_files(
    check: &mut Checker<'_>,
    config: &MachineConfig,
    files: &mut Vec<FilePlan>,
) -> Option<model::ApiPki> {
    let mut found: [Option<String>; 3] = [None, None, None];
    let paths = [API_CA_FILE, API_CERT_FILE, API_KEY_FILE];
    for (index, file) in config.files.iter().enumerate() {
        let Some(slot) = paths.iter().position(|path| file.path == *path) else {
            continue;
        };
        let field = format!("files[{index}]");
        let Some(plan) = files
            .iter()
            .find(|plan| plan.path == std::path::Path::new(paths[slot]))
        else {
            continue; // already reported by check_file
        };
        match &plan.contents {
            Contents::Inline(bytes) => match String::from_utf8(bytes.clone()) {
                Ok(text) => found[slot] = Some(text),
                Err(_) => check.error(&field, "API credentials must be PEM text"),
            },
            Contents::Fetch { .. } => check.error(
                &format!("{field}.source"),
                "API credentials must be inline (content, contentBase64 or a data: URL), \
                 not fetched",
            ),
        }
    }
    files.retain(|plan| {
        !paths
            .iter()
            .any(|path| plan.path == std::path::Path::new(path))
    });
    let [ca, cert, key] = found;
    match (ca, cert, key) {
        (None, None, None) => None,
        (Some(ca), Some(cert), Some(key)) => {
            check_pem(check, "api.ca", &ca, &["CERTIFICATE"]);
            check_pem(check, "api.cert", &cert, &["CERTIFICATE"]);
            check_pem(
                check,
                "api.key",
                &key,
                &["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"],
            );
            Some(model::ApiPki { ca, cert, key })
        }
        (ca, cert, key) => {
            let missing: Vec<&str> = [
                (ca, API_CA_FILE),
                (cert, API_CERT_FILE),
                (key, API_KEY_FILE),
            ]
            .into_iter()
            .filter(|(found, _)| found.is_none())
            .map(|(_, path)| path)
            .collect();
            check.error(
                "files",
                format!(
                    "API credentials need all three files; missing {}",
                    missing.join(", ")
                ),
            );
            None
        }
    }
}

struct Checker<'a> {
    origins: &'a Origins,
    findings: &'a mut Findings,
    failed: bool,
}

impl Checker<'_> {
    fn error(&mut self, field: &str, reason: impl Into<String>) {
        self.failed = true;
        let (document, field) = self.origins.locate(field);
        self.findings
            .record(Severity::Error, document, field, reason);
    }

    fn warning(&mut self, field: &str, reason: impl Into<String>) {
        let (document, field) = self.origins.locate(field);
        self.findings
            .record(Severity::Warning, document, field, reason);
    }

    fn result<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(reason) => {
                self.error(field, reason);
                None
            }
        }
    }
}

/// Checks a hostname: DNS labels of letters, digits and hyphens.
pub fn check_hostname(hostname: &str) -> Result<(), String> {
    if hostname.is_empty() || hostname.len() > 253 {
        return Err(format!(
            "{hostname:?} must have 1 to 253 characters, not {}",
            hostname.len()
        ));
    }
    for label in hostname.split('.') {
        check_label(label).map_err(|reason| format!("{hostname:?}: {reason}"))?;
    }
    Ok(())
}

fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() || label.len() > 63 {
        return Err(format!("label {label:?} must have 1 to 63 characters"));
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!(
            "label {label:?} may hold only letters, digits and '-'"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label {label:?} must not start or end with '-'"));
    }
    Ok(())
}

/// Parses `address/prefix`.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let (address, prefix) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} needs a prefix length, e.g. 10.0.2.50/24"))?;
    let address: IpAddr = address
        .parse()
        .map_err(|_| format!("{address:?} is not an IP address"))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|prefix| *prefix <= max)
        .ok_or_else(|| format!("prefix {prefix:?} must be a number from 0 to {max}"))?;
    Ok(IpNet { address, prefix })
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`).
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = text.split([':', '-']).collect();
    let bytes: Vec<u8> = parts
        .iter()
        .filter(|part| part.len() == 2)
        .filter_map(|part| u8::from_str_radix(part, 16).ok())
        .collect();
    <[u8; 6]>::try_from(bytes.as_slice())
        .ok()
        .filter(|_| parts.len() == 6)
        .ok_or_else(|| format!("{text:?} is not a MAC address like 52:54:00:12:34:56"))
}

/// Parses an octal mode such as `"0644"`.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|mode| *mode <= 0o7777 && !digits.is_empty())
        .ok_or_else(|| format!("{text:?} is not an octal mode from \"0000\" to \"7777\""))
}

/// The trees a configuration may write into.
pub const WRITABLE_TREES: [&str; 2] = ["/etc", "/var"];
/// Paths the agent owns; a configuration may not write them.
const RESERVED: [(&str, &str); 3] = [
    (
        "/var/lib/keelson",
        "it holds the agent's own state (saved config, boot records)",
    ),
    (
        "/etc/resolv.conf",
        "DNS comes from network.nameservers and DHCP",
    ),
    ("/etc/hostname", "set the hostname with the hostname key"),
];

/// Checks that `text` is a clean absolute path under `/etc` or `/var`.
pub fn check_path(text: &str) -> Result<PathBuf, String> {
    let path = Path::new(text);
    if !path.is_absolute() {
        return Err(format!("{text:?} is not an absolute path"));
    }
    if text.contains('\0') {
        return Err(format!("{text:?} contains a NUL byte"));
    }
    let clean = path
        .components()
        .all(|component| matches!(component, Component::RootDir | Component::Normal(_)));
    if !clean || text.contains("//") || (text.len() > 1 && text.ends_with('/')) {
        return Err(format!(
            "{text:?} must be a plain path: no '.', '..', '//' or trailing '/'"
        ));
    }
    let under_tree = WRITABLE_TREES
        .iter()
        .any(|tree| path.starts_with(tree) && path != Path::new(tree));
    if !under_tree {
        return Err(format!(
            "{text:?} is outside /etc and /var; the rest of Keelson's root is read-only"
        ));
    }
    for (reserved, why) in RESERVED {
        if path.starts_with(reserved) {
            return Err(format!("{text:?} is reserved: {why}"));
        }
    }
    Ok(path.to_path_buf())
}

fn check_network(check: &mut Checker<'_>, network: &model::Network) -> NetworkPlan {
    let mut plan = NetworkPlan::default();
    for (index, interface) in network.interfaces.iter().enumerate() {
        let field = format!("network.interfaces[{index}]");
        if let Some(interface) = check_interface(check, &field, interface) {
            plan.interfaces.push(interface);
        }
    }
    for (index, server) in network.nameservers.iter().enumerate() {
        let parsed = server
            .parse::<IpAddr>()
            .map_err(|_| format!("{server:?} is not an IP address"));
        if let Some(server) = check.result(&format!("network.nameservers[{index}]"), parsed) {
            plan.nameservers.push(server);
        }
    }
    for (index, domain) in network.search_domains.iter().enumerate() {
        if check
            .result(
                &format!("network.searchDomains[{index}]"),
                check_hostname(domain),
            )
            .is_some()
        {
            plan.search_domains.push(domain.clone());
        }
    }
    plan
}

fn check_interface(
    check: &mut Checker<'_>,
    field: &str,
    interface: &model::Interface,
) -> Option<InterfacePlan> {
    let failed_before = check.failed;
    let matches = &interface.matches;
    if matches.name.is_none() && matches.mac.is_none() {
        check.error(
            &format!("{field}.match"),
            "an interface needs match.name or match.mac",
        );
    }
    if let Some(name) = &matches.name {
        let pattern = name.strip_suffix('*').unwrap_or(name);
        let valid = name.len() < 16
            && !name.is_empty()
            && !pattern.contains(['*', '/', ' ', ':'])
            && name != "lo";
        if !valid {
            check.error(
                &format!("{field}.match.name"),
                format!(
                    "{name:?} is not an interface name (1 to 15 characters, no '/', ':' \
                     or spaces; '*' only at the end; not lo)"
                ),
            );
        }
    }
    let mac = matches
        .mac
        .as_ref()
        .and_then(|mac| check.result(&format!("{field}.match.mac"), parse_mac(mac)));
    let addresses: Vec<IpNet> = interface
        .addresses
        .iter()
        .enumerate()
        .filter_map(|(index, address)| {
            check.result(&format!("{field}.addresses[{index}]"), parse_cidr(address))
        })
        .collect();
    let mut routes = Vec::new();
    for (index, route) in interface.routes.iter().enumerate() {
        let route_field = format!("{field}.routes[{index}]");
        let destination = if route.to == "default" {
            let v6 = route
                .via
                .as_deref()
                .is_some_and(|via| via.parse::<std::net::Ipv6Addr>().is_ok());
            Some(IpNet {
                address: if v6 {
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                },
                prefix: 0,
            })
        } else {
            check.result(&format!("{route_field}.to"), parse_cidr(&route.to))
        };
        let via = match &route.via {
            None => Some(None),
            Some(via) => check
                .result(
                    &format!("{route_field}.via"),
                    via.parse::<IpAddr>()
                        .map_err(|_| format!("{via:?} is not an IP address")),
                )
                .map(Some),
        };
        if let (Some(destination), Some(via)) = (destination, via) {
            if via.is_some_and(|via| via.is_ipv4() != destination.address.is_ipv4()) {
                check.error(
                    &route_field,
                    format!("{} and its next hop are of different IP families", route.to),
                );
            }
            routes.push(RoutePlan {
                destination,
                via,
                metric: route.metric,
            });
        }
    }
    if let Some(mtu) = interface.mtu {
        if !(68..=65535).contains(&mtu) {
            check.error(
                &format!("{field}.mtu"),
                format!("{mtu} is outside 68 to 65535"),
            );
        }
    }
    if check.failed && !failed_before {
        return None;
    }
    Some(InterfacePlan {
        matcher: Matcher {
            name: matches.name.clone(),
            mac,
        },
        dhcp: interface.dhcp,
        addresses,
        routes,
        mtu: interface.mtu,
    })
}

fn check_directory(
    check: &mut Checker<'_>,
    field: &str,
    directory: &model::Directory,
) -> Option<DirectoryPlan> {
    let path = check.result(&format!("{field}.path"), check_path(&directory.path));
    let mode = check.result(
        &format!("{field}.mode"),
        parse_mode(directory.mode.as_deref().unwrap_or("0755")),
    );
    Some(DirectoryPlan {
        path: path?,
        mode: mode?,
        owner: directory.owner.unwrap_or(0),
        group: directory.group.unwrap_or(0),
    })
}

fn check_file(check: &mut Checker<'_>, field: &str, file: &model::File) -> Option<FilePlan> {
    let path = check.result(&format!("{field}.path"), check_path(&file.path));
    let mode = check.result(
        &format!("{field}.mode"),
        parse_mode(file.mode.as_deref().unwrap_or("0644")),
    );
    let given = [
        file.content.is_some(),
        file.content_base64.is_some(),
        file.source.is_some(),
    ]
    .iter()
    .filter(|given| **given)
    .count();
    if given > 1 {
        check.error(
            field,
            "give at most one of content, contentBase64 and source",
        );
        return None;
    }
    let gzip = match file.compression.as_deref() {
        None | Some("") => false,
        Some("gzip") => true,
        Some(other) => {
            check.error(
                &format!("{field}.compression"),
                format!("{other:?} is not supported; only gzip is"),
            );
            return None;
        }
    };
    let hash = match &file.hash {
        None => None,
        Some(text) => Some(check.result(&format!("{field}.hash"), ContentHash::parse(text))?),
    };
    if file.source.is_none() && (gzip || hash.is_some()) {
        check.error(field, "compression and hash apply only to a source");
        return None;
    }
    let contents = if let Some(text) = &file.content {
        Contents::Inline(text.as_bytes().to_vec())
    } else if let Some(encoded) = &file.content_base64 {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|error| format!("not valid base64: {error}"));
        Contents::Inline(check.result(&format!("{field}.contentBase64"), decoded)?)
    } else if let Some(source) = &file.source {
        let source_field = format!("{field}.source");
        check.result(&source_field, source_contents(source, hash, gzip))?
    } else {
        Contents::Inline(Vec::new())
    };
    Some(FilePlan {
        config_index: 0,
        path: path?,
        contents,
        mode: mode?,
        owner: file.owner.unwrap_or(0),
        group: file.group.unwrap_or(0),
        append: file.append,
    })
}

/// Resolves a file source: `data:` URLs now (verified and decompressed), `http://` and
/// `https://` later (https trusts the root's CA bundle and `certificateAuthorities`).
fn source_contents(
    source: &str,
    hash: Option<ContentHash>,
    gzip: bool,
) -> Result<Contents, String> {
    if source.starts_with("data:") {
        let raw = decode_data_url(source)?;
        if let Some(hash) = &hash {
            hash.verify(&raw)?;
        }
        let bytes = if gzip { gunzip(&raw)? } else { raw };
        return Ok(Contents::Inline(bytes));
    }
    let rest = source
        .strip_prefix("http://")
        .or_else(|| source.strip_prefix("https://"));
    if let Some(rest) = rest {
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!("{source:?} has no host"));
        }
        return Ok(Contents::Fetch {
            url: source.to_owned(),
            hash,
            gzip,
        });
    }
    let scheme = source.split_once(':').map_or(source, |(scheme, _)| scheme);
    Err(format!(
        "the {scheme:?} scheme is not supported; use data:, http:// or https:// (s3, gs and \
         tftp sources are not fetched by Keelson: inline the contents instead)"
    ))
}

fn check_link(check: &mut Checker<'_>, field: &str, link: &model::Link) -> Option<LinkPlan> {
    let path = check.result(&format!("{field}.path"), check_path(&link.path));
    let target = if link.hard {
        check.result(&format!("{field}.target"), check_path(&link.target))
    } else if link.target.is_empty() || link.target.contains('\0') {
        check.error(
            &format!("{field}.target"),
            "a link target must be a non-empty path",
        );
        None
    } else {
        Some(PathBuf::from(&link.target))
    };
    Some(LinkPlan {
        path: path?,
        target: target?,
        hard: link.hard,
    })
}

fn check_kubelet(check: &mut Checker<'_>, kubelet: &model::KubeletSettings) {
    match kubelet.log_max_size_bytes() {
        Err(reason) => check.error("kubelet.containerLogMaxSize", reason),
        Ok(Some(bytes)) if bytes < 16 * 1024 => check.error(
            "kubelet.containerLogMaxSize",
            format!("{bytes} bytes is below the 16Ki minimum (one full log line)"),
        ),
        Ok(_) => {}
    }
    if let Some(cidr) = &kubelet.pod_cidr {
        if let Err(reason) = crate::cidr::parse_pod_cidr(cidr) {
            check.error(
                "kubelet.podCIDR",
                format!("{cidr:?} is no pod CIDR: {reason}"),
            );
        }
    }
    match kubelet.shutdown_grace_seconds() {
        Err(reason) => check.error("kubelet.shutdownGracePeriod", reason),
        Ok(seconds) if seconds > model::MAX_SHUTDOWN_GRACE_SECONDS => check.error(
            "kubelet.shutdownGracePeriod",
            format!(
                "{seconds}s is over the {}s a shutdown waits for the pods",
                model::MAX_SHUTDOWN_GRACE_SECONDS
            ),
        ),
        Ok(_) => {}
    }
    if let Err((signal, reason)) = kubelet.eviction_thresholds() {
        check.error(&format!("kubelet.evictionHard.{signal}"), reason);
    }
    if let Some(files) = kubelet.container_log_max_files {
        if files < 2 {
            check.error(
                "kubelet.containerLogMaxFiles",
                format!("{files} is below 2: a log keeps the file being written and at least one rotated file"),
            );
        }
    }
}

fn check_time(check: &mut Checker<'_>, time: &model::Time) {
    for (index, server) in time.servers.iter().enumerate() {
        let valid = server.parse::<IpAddr>().is_ok() || check_hostname(server).is_ok();
        if !valid {
            check.error(
                &format!("time.servers[{index}]"),
                format!("{server:?} is neither a host name nor an IP address"),
            );
        }
    }
    if !time.servers.is_empty() {
        check.warning(
            "time.servers",
            "time synchronisation is not implemented yet; the servers are kept in the \
             saved config but not contacted",
        );
    }
    if let Some(zone) = &time.timezone {
        if !matches!(zone.as_str(), "UTC" | "Etc/UTC" | "UTC0") {
            check.warning(
                "time.timezone",
                format!(
                    "{zone:?} is not applied: Keelson keeps the node in UTC; containers \
                     carry their own time zone data"
                ),
            );
        }
    }
}

fn check_cluster(check: &mut Checker<'_>, cluster: &model::Cluster) {
    if let Err(reason) = check_label(&cluster.name) {
        check.error("cluster.name", reason);
    }
    if cluster.secret.chars().count() < 32 {
        check.error(
            "cluster.secret",
            "the secret must have at least 32 characters (keelctl gen config makes one)",
        );
    }
    for (index, other) in cluster.accept_secrets.iter().enumerate() {
        let field = format!("cluster.acceptSecrets[{index}]");
        if other.chars().count() < 32 {
            check.error(&field, "a secret must have at least 32 characters");
        } else if *other == cluster.secret {
            check.error(
                &field,
                "this is `secret` itself; list only the other secrets",
            );
        }
    }
    if let Some(count) = cluster.control_planes {
        if ![1, 3, 5].contains(&count) {
            check.error(
                "cluster.controlPlanes",
                format!("{count} voters is not 1, 3 or 5 (an odd count keeps a majority)"),
            );
        }
    }
    if let Some(seconds) = cluster.replace_dead_voter_seconds {
        if !(30..=86_400).contains(&seconds) {
            check.error(
                "cluster.replaceDeadVoterSeconds",
                format!("{seconds} is outside 30 to 86400 seconds"),
            );
        }
    }
    let pool = cluster
        .pod_cidr
        .as_deref()
        .map(crate::cidr::parse_cluster_cidr);
    if let Some(Err(reason)) = &pool {
        check.error("cluster.podCIDR", reason.clone());
    }
    let mask = cluster.node_cidr_mask_size();
    let pool_prefix = match pool {
        Some(Ok((_, prefix))) => prefix,
        Some(Err(_)) => 0,
        None => 16,
    };
    if !(crate::cidr::WIDEST_POD_PREFIX..=crate::cidr::NARROWEST_POD_PREFIX).contains(&mask) {
        check.error(
            "cluster.nodeCIDRMaskSize",
            format!("/{mask} is outside /16 to /30 (a node's pods need 2 to 65534 addresses)"),
        );
    } else if mask < pool_prefix {
        check.error(
            "cluster.nodeCIDRMaskSize",
            format!(
                "a node's /{mask} is wider than the cluster's {} (make it /{pool_prefix} or longer)",
                cluster.pod_cidr()
            ),
        );
    }
    if let Some(lock) = &cluster.reboot_lock {
        if lock.slots == Some(0) {
            check.error(
                "cluster.rebootLock.slots",
                "0 slots would let no node reboot (use 1 or more)",
            );
        }
        for (group, slots) in &lock.groups {
            if *slots == 0 {
                check.error(
                    &format!("cluster.rebootLock.groups.{group}"),
                    "0 slots would let no node of this group reboot (use 1 or more)",
                );
            }
        }
    }
    for (index, seed) in cluster.seeds.iter().enumerate() {
        let valid = seed.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port != 0)
        });
        if !valid {
            check.error(
                &format!("cluster.seeds[{index}]"),
                format!("{seed:?} is not host:port"),
            );
        }
    }
}

fn check_update(check: &mut Checker<'_>, update: &model::UpdatePolicy, in_cluster: bool) {
    use model::{RebootPolicy, UpdateStrategy};
    let is_url = |url: &str| url.starts_with("http://") || url.starts_with("https://");
    if let Some(url) = update
        .fleet_lock
        .as_ref()
        .and_then(|lock| lock.url.as_ref())
    {
        if !is_url(url) {
            check.error(
                "update.fleetLock.url",
                format!("{url:?} is not an http:// or https:// URL"),
            );
        }
    }
    if let Some(channel) = &update.channel {
        if !is_url(channel) {
            check.error(
                "update.channel",
                format!("{channel:?} is not an http:// or https:// URL of a channel directory"),
            );
        }
    }
    if let Some(minutes) = update.check_interval_minutes {
        if !(5..=10080).contains(&minutes) {
            check.error(
                "update.checkIntervalMinutes",
                format!("{minutes} is out of range: give 5 to 10080 minutes"),
            );
        }
    }
    if update.strategy == UpdateStrategy::Auto && update.channel.is_none() {
        check.warning(
            "update.strategy",
            "auto has no channel to check (update.channel); updates happen only when asked",
        );
    }
    if let Some(window) = &update.window {
        if let Err(error) = window.to_window() {
            check.error("update.window", error.to_string());
        }
    }
    match update.effective_reboot_policy() {
        RebootPolicy::Window if update.window.is_none() => check.error(
            "update.rebootPolicy",
            "window needs update.window: {days, start, lengthMinutes}",
        ),
        RebootPolicy::FleetLock
            if !in_cluster
                && update
                    .fleet_lock
                    .as_ref()
                    .is_none_or(|lock| lock.url.is_none()) =>
        {
            check.error(
                "update.rebootPolicy",
                "fleet-lock needs update.fleetLock.url outside a cluster (in a cluster, the \
                 cluster's built-in FleetLock server is used when no URL is given)",
            )
        }
        _ => {}
    }
    if update.reboot_policy.is_none() && update.fleet_lock.is_some() && update.window.is_some() {
        check.error(
            "update.rebootPolicy",
            "both fleetLock and window are given: say which one decides reboots (fleet-lock or window)",
        );
    }
}

fn check_static_pods(check: &mut Checker<'_>, pods: &[model::StaticPod]) {
    let mut names = BTreeSet::new();
    for (index, pod) in pods.iter().enumerate() {
        let field = format!("staticPods[{index}]");
        let name_field = match pod {
            model::StaticPod::Manifest(_) => format!("{field}.metadata.name"),
            model::StaticPod::Short(_) => format!("{field}.name"),
        };
        if let Err(reason) = check_label(pod.name()) {
            check.error(&name_field, reason);
        } else if !names.insert(pod.name().to_ascii_lowercase()) {
            check.error(
                &name_field,
                format!("another static pod is also called {:?}", pod.name()),
            );
        }
        let pod = match pod {
            model::StaticPod::Manifest(manifest) => {
                if let Err(reason) = crate::manifest::check_is_pod(&pod.manifest()) {
                    check.error(&field, reason);
                }
                if manifest.metadata.contains_key("generateName") {
                    check.error(
                        &format!("{field}.metadata.generateName"),
                        "a static pod has a name of its own: use metadata.name",
                    );
                }
                continue;
            }
            model::StaticPod::Short(short) => short,
        };
        if pod.image.is_empty() || pod.image.contains(char::is_whitespace) {
            check.error(
                &format!("{field}.image"),
                format!("{:?} is not an image reference", pod.image),
            );
        }
        for name in pod.env.keys() {
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                check.error(
                    &format!("{field}.env.{name}"),
                    "an environment variable name holds letters, digits and '_' and does \
                     not start with a digit",
                );
            }
        }
    }
}

/// A registry host as image names carry it: a DNS name or IP address, with an optional
/// port.
fn check_registry_host(host: &str) -> Result<(), String> {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => (name, Some(port)),
        _ => (host, None),
    };
    if let Some(port) = port {
        port.parse::<u16>()
            .map_err(|_| format!("{host:?}: the port {port:?} is not a number from 1 to 65535"))?;
    }
    if name.parse::<IpAddr>().is_ok() || check_hostname(name).is_ok() {
        Ok(())
    } else {
        Err(format!(
            "{host:?} is not a registry host (name or address, with an optional :port)"
        ))
    }
}

fn check_registries(check: &mut Checker<'_>, registries: &model::Registries) {
    for (index, host) in registries.insecure.iter().enumerate() {
        let checked = check_registry_host(host);
        check.result(&format!("registries.insecure[{index}]"), checked);
    }
    for host in registries.auth.keys() {
        let checked = check_registry_host(host);
        check.result(&format!("registries.auth.{host}"), checked);
    }
    for (registry, mirror) in &registries.mirrors {
        let field = format!("registries.mirrors.{registry}");
        let checked = check_registry_host(registry);
        check.result(&field, checked);
        if mirror.endpoints.is_empty() {
            check.error(&format!("{field}.endpoints"), "list at least one endpoint");
        }
        for (index, endpoint) in mirror.endpoints.iter().enumerate() {
            let endpoint_field = format!("{field}.endpoints[{index}]");
            let (scheme, rest) = match endpoint.split_once("://") {
                Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
                _ => {
                    check.error(
                        &endpoint_field,
                        format!("{endpoint:?} is not an http:// or https:// URL"),
                    );
                    continue;
                }
            };
            let host = rest.split('/').next().unwrap_or_default();
            if let Err(reason) = check_registry_host(host) {
                check.error(&endpoint_field, reason);
            } else if scheme == "http" && !registries.insecure.iter().any(|h| h == host) {
                check.error(
                    &endpoint_field,
                    format!(
                        "{endpoint:?} is plain HTTP, but {host} is not listed under \
                         registries.insecure; list it there or use https://"
                    ),
                );
            }
        }
    }
}

fn check_pem(check: &mut Checker<'_>, field: &str, text: &str, labels: &[&str]) {
    let outcome = (|| {
        let text = text.trim();
        let first = text.lines().next().unwrap_or_default();
        let label = first
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .ok_or("does not start with a PEM '-----BEGIN …-----' line".to_owned())?;
        if !labels.contains(&label) {
            return Err(format!("holds a {label}, expected {}", labels.join(" or ")));
        }
        let end = format!("-----END {label}-----");
        let body: String = text
            .lines()
            .skip(1)
            .take_while(|line| *line != end)
            .collect();
        if !text.ends_with(&end) {
            return Err(format!("does not end with {end}"));
        }
        base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(|error| format!("its base64 body is invalid: {error}"))?;
        Ok(())
    })();
    if let Err(reason) = outcome {
        check.error(field, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_etc_and_var() {
        assert!(check_path("/etc/motd").is_ok());
        assert!(check_path("/var/lib/app/data").is_ok());
        for bad in [
            "/usr/bin/x",
            "etc/motd",
            "/etc/../usr/x",
            "/etc",
            "/var/",
            "/etc//x",
            "/var/lib/keelson/config.yaml",
            "/etc/hostname",
        ] {
            assert!(check_path(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn cidrs_macs_and_modes() {
        assert_eq!(
            parse_cidr("10.0.2.50/24").unwrap().to_string(),
            "10.0.2.50/24"
        );
        assert_eq!(parse_cidr("fd00::1/64").unwrap().prefix, 64);
        assert!(parse_cidr("10.0.2.50").is_err());
        assert!(parse_cidr("10.0.2.500/24").is_err());
        assert!(parse_cidr("10.0.2.5/33").is_err());
        assert_eq!(
            parse_mac("52:54:00:AB:cd:01").unwrap(),
            [0x52, 0x54, 0, 0xab, 0xcd, 1]
        );
        assert!(parse_mac("52:54:00:ab:cd").is_err());
        assert!(parse_mac("52:54:00:ab:cd:zz").is_err());
        assert_eq!(parse_mode("0644").unwrap(), 0o644);
        assert_eq!(parse_mode("4755").unwrap(), 0o4755);
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("17777").is_err());
        assert!(parse_mode("").is_err());
    }

    #[test]
    fn data_urls_decode() {
        assert_eq!(
            decode_data_url("data:,hello%20world").unwrap(),
            b"hello world"
        );
        assert_eq!(
            decode_data_url("data:text/plain;charset=utf-8;base64,aGk=").unwrap(),
            b"hi"
        );
        assert!(decode_data_url("data:hello").is_err());
        assert!(decode_data_url("data:,%zz").is_err());
    }

    #[test]
    fn hashes_verify() {
        let hash = ContentHash::parse(
            "sha256-2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        )
        .unwrap();
        assert!(hash.verify(b"hello").is_ok());
        assert!(hash.verify(b"hullo").is_err());
        assert!(ContentHash::parse("md5-00").is_err());
        assert!(ContentHash::parse("sha256-00").is_err());
    }

    #[test]
    fn matchers_use_name_prefixes_and_macs() {
        let matcher = Matcher {
            name: Some("en*".into()),
            mac: None,
        };
        assert!(matcher.matches("enp0s3", &[0; 6]));
        assert!(!matcher.matches("eth0", &[0; 6]));
        let matcher = Matcher {
            name: None,
            mac: Some([1, 2, 3, 4, 5, 6]),
        };
        assert!(matcher.matches("eth0", &[1, 2, 3, 4, 5, 6]));
        assert!(!matcher.matches("eth0", &[1, 2, 3, 4, 5, 7]));
    }

    #[test]
    fn origins_rename_the_longest_prefix() {
        let mut origins = Origins::default();
        origins.record("files[0]", "storage.files[2]");
        origins.record("files[1]", "write_files[0]");
        assert_eq!(origins.rename("files[0].mode"), "storage.files[2].mode");
        assert_eq!(origins.rename("files[1]"), "write_files[0]");
        assert_eq!(origins.rename("files[10].mode"), "files[10].mode");
        assert_eq!(origins.rename("hostname"), "hostname");
    }
}
