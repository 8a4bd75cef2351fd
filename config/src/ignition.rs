//! Ignition v3 (spec 3.0.0 to 3.6.0) translated into a [`MachineConfig`].
//!
//! The document is first read by coreos' `ignition-config` crate, which knows every spec
//! version's schema and rejects what does not fit it. The parsed config is then walked
//! through a small view holding only the fields every 3.x version shares, so one
//! translation serves all versions.
//!
//! What Keelson does with each key:
//! - `storage.files`, `storage.directories`, `storage.links`: honoured under `/etc` and
//!   `/var`; `/etc/hostname` becomes the hostname.
//! - `passwd.users`, `passwd.groups`, `systemd.units`: warnings (no accounts, no shell, no
//!   systemd), pointing to the API.
//! - `ignition.security.tls.certificateAuthorities`: trusted for `https://` fetches (the
//!   native `certificateAuthorities`).
//! - `ignition.config.replace` and `.merge`: followed by [`resolve`] before translation (the
//!   node fetches them at boot); met here, unresolved (as `keelctl validate` reads a file
//!   offline), they are a warning that says so.
//! - `storage.disks`, `raid`, `filesystems`, `luks`, `kernelArguments`, `ignition.proxy`,
//!   `ignition.timeouts`: warnings, not applied.

pub mod resolve;

use serde::Deserialize;
use serde_json::Value;

use crate::diagnostic::Findings;
use crate::model::{self, MachineConfig};
use crate::plan::{decode_data_url, gunzip, ContentHash, Origins};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct View {
    ignition: IgnitionSection,
    storage: Option<Storage>,
    passwd: Option<Passwd>,
    systemd: Option<Systemd>,
    #[serde(rename = "kernelArguments")]
    kernel_arguments: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct IgnitionSection {
    config: Option<Value>,
    security: Option<Security>,
    proxy: Option<Value>,
    timeouts: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Security {
    tls: Option<Tls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Tls {
    #[serde(rename = "certificateAuthorities")]
    certificate_authorities: Option<Vec<IgnContents>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Storage {
    files: Option<Vec<IgnFile>>,
    directories: Option<Vec<IgnDirectory>>,
    links: Option<Vec<IgnLink>>,
    disks: Option<Value>,
    raid: Option<Value>,
    filesystems: Option<Value>,
    luks: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct IgnFile {
    path: String,
    contents: Option<IgnContents>,
    append: Option<Vec<IgnContents>>,
    mode: Option<i64>,
    user: Option<NodeOwner>,
    group: Option<NodeOwner>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct IgnContents {
    source: Option<String>,
    compression: Option<String>,
    verification: Option<Verification>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Verification {
    hash: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NodeOwner {
    id: Option<i64>,
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct IgnDirectory {
    path: String,
    mode: Option<i64>,
    user: Option<NodeOwner>,
    group: Option<NodeOwner>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct IgnLink {
    path: String,
    target: String,
    hard: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Passwd {
    users: Option<Vec<NamedEntry>>,
    groups: Option<Vec<NamedEntry>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NamedEntry {
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Systemd {
    units: Option<Vec<NamedEntry>>,
}

/// True when `bytes` looks like an Ignition document (a JSON object with `ignition`).
pub fn looks_like_ignition(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|value| value.get("ignition").cloned())
        .is_some()
}

/// Translates an Ignition document. Errors and warnings go to `findings`; the config is
/// returned when the document could be read (it may still hold invalid values, which
/// [`crate::plan::plan`] reports against the Ignition field paths in the returned origins).
pub fn translate(bytes: &[u8], findings: &mut Findings) -> Option<(MachineConfig, Origins)> {
    let parsed = match ignition_config::Config::parse_slice(bytes) {
        Ok((parsed, warnings)) => {
            for warning in warnings {
                match warning {
                    ignition_config::Warning::UnusedKey(path) => {
                        let field = path.strip_prefix("$.").unwrap_or(&path).to_owned();
                        findings.warning(
                            field,
                            "unknown key for this Ignition spec version; ignored (check its \
                             spelling)",
                        );
                    }
                    other => findings.warning("$", other.to_string()),
                }
            }
            parsed
        }
        Err(error) => {
            report_parse_error(bytes, &error, findings);
            return None;
        }
    };
    let view: View = match serde_json::to_value(&parsed).and_then(serde_json::from_value) {
        Ok(view) => view,
        Err(error) => {
            findings.error("$", format!("cannot read the Ignition config: {error}"));
            return None;
        }
    };
    let mut translation = Translation {
        config: MachineConfig::empty(),
        origins: Origins::default(),
        findings,
    };
    translation.unsupported(&view);
    translation.pointers(&view.ignition);
    if let Some(storage) = &view.storage {
        for (index, file) in storage.files.iter().flatten().enumerate() {
            translation.file(index, file);
        }
        for (index, directory) in storage.directories.iter().flatten().enumerate() {
            translation.directory(index, directory);
        }
        for (index, link) in storage.links.iter().flatten().enumerate() {
            let field = format!("links[{}]", translation.config.links.len());
            translation
                .origins
                .record(field, format!("storage.links[{index}]"));
            translation.config.links.push(model::Link {
                path: link.path.clone(),
                target: link.target.clone(),
                hard: link.hard.unwrap_or(false),
            });
        }
    }
    Some((translation.config, translation.origins))
}

fn report_parse_error(bytes: &[u8], error: &ignition_config::Error, findings: &mut Findings) {
    use ignition_config::Error;
    match error {
        Error::UnknownVersion(version) if version.major != 3 => findings.error(
            "ignition.version",
            format!(
                "Ignition spec {version} is not supported: Keelson reads spec 3 (3.0.0 to \
                 3.6.0); convert spec 2 configs with ign-converter or rewrite them in Butane"
            ),
        ),
        Error::UnknownVersion(version) => findings.error(
            "ignition.version",
            format!("Ignition spec {version} is not known to Keelson; use 3.0.0 to 3.6.0"),
        ),
        Error::InvalidVersion(reason) => findings.error(
            "ignition.version",
            format!("not a semantic version: {reason}"),
        ),
        other => {
            // serde_json names line and column, not the field; find the field by reading
            // the document again with path tracking against a permissive view.
            let field = serde_json::from_slice::<Value>(bytes)
                .ok()
                .and_then(|_| {
                    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
                    serde_path_to_error::deserialize::<_, StrictView>(&mut deserializer)
                        .err()
                        .map(|error| error.path().to_string())
                })
                .map(|path| crate::native::field_path(&path))
                .unwrap_or_else(|| "$".to_owned());
            findings.error(field, format!("malformed Ignition config: {other}"));
        }
    }
}

/// The shared 3.x shape with required fields, used only to find where a malformed document
/// goes wrong.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct StrictView {
    ignition: StrictIgnition,
    #[serde(default)]
    storage: Option<StrictStorage>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct StrictIgnition {
    version: String,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct StrictStorage {
    #[serde(default)]
    files: Option<Vec<StrictFile>>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct StrictFile {
    path: String,
    #[serde(default)]
    mode: Option<i64>,
    #[serde(default)]
    contents: Option<StrictContents>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct StrictContents {
    #[serde(default)]
    source: Option<String>,
}

struct Translation<'a> {
    config: MachineConfig,
    origins: Origins,
    findings: &'a mut Findings,
}

impl Translation<'_> {
    fn unsupported(&mut self, view: &View) {
        let section = &view.ignition;
        for (value, field, why) in [
            (
                &section.proxy,
                "ignition.proxy",
                "proxies are not used for fetching file sources",
            ),
            (
                &section.timeouts,
                "ignition.timeouts",
                "Keelson uses its own fetch timeouts",
            ),
            (
                &view.kernel_arguments,
                "kernelArguments",
                "the kernel command line belongs to the signed boot entry and cannot be \
                 changed by a config",
            ),
        ] {
            if value.as_ref().is_some_and(is_set) {
                self.findings.warning(field, format!("not applied: {why}"));
            }
        }
        if let Some(storage) = &view.storage {
            for (value, key) in [
                (&storage.disks, "disks"),
                (&storage.raid, "raid"),
                (&storage.filesystems, "filesystems"),
                (&storage.luks, "luks"),
            ] {
                if value.as_ref().is_some_and(is_set) {
                    self.findings.warning(
                        format!("storage.{key}"),
                        "not applied: Keelson owns the disk layout (two root slots and STATE); \
                         persistent data belongs under /var",
                    );
                }
            }
        }
        if let Some(passwd) = &view.passwd {
            for (index, user) in passwd.users.iter().flatten().enumerate() {
                self.findings.no_shell(
                    format!("passwd.users[{index}]"),
                    &format!("user {:?} (with any password or SSH keys)", user.name),
                );
            }
            for (index, group) in passwd.groups.iter().flatten().enumerate() {
                self.findings.no_shell(
                    format!("passwd.groups[{index}]"),
                    &format!("group {:?}", group.name),
                );
            }
        }
        if let Some(systemd) = &view.systemd {
            for (index, unit) in systemd.units.iter().flatten().enumerate() {
                self.findings.no_shell(
                    format!("systemd.units[{index}]"),
                    &format!(
                        "systemd unit {:?} (there is no systemd; run workloads as pods)",
                        unit.name
                    ),
                );
            }
        }
    }

    /// Authorities given inline become trusted; pointers still unresolved (a document read
    /// offline) are named, since the node fetches them at boot and this check cannot.
    fn pointers(&mut self, section: &IgnitionSection) {
        if section.config.as_ref().is_some_and(is_set) {
            self.findings.warning(
                "ignition.config",
                "names configs to replace or merge this one: the node fetches and verifies \
                 them at boot; only this document was checked here",
            );
        }
        let authorities = section
            .security
            .as_ref()
            .and_then(|security| security.tls.as_ref())
            .and_then(|tls| tls.certificate_authorities.as_ref());
        for (index, authority) in authorities.into_iter().flatten().enumerate() {
            let field = format!("ignition.security.tls.certificateAuthorities[{index}]");
            let source = authority.source.as_deref().unwrap_or_default();
            if !source.starts_with("data:") {
                self.findings.warning(
                    format!("{field}.source"),
                    "fetched by the node at boot; only this document was checked here",
                );
                continue;
            }
            let decoded =
                decode_data_url(source).and_then(|raw| match authority.compression.as_deref() {
                    Some("gzip") => gunzip(&raw),
                    _ => Ok(raw),
                });
            match decoded {
                Ok(pem) => {
                    self.origins.record(
                        format!(
                            "certificateAuthorities[{}]",
                            self.config.certificate_authorities.len()
                        ),
                        field,
                    );
                    self.config
                        .certificate_authorities
                        .push(String::from_utf8_lossy(&pem).into_owned());
                }
                Err(reason) => self.findings.error(format!("{field}.source"), reason),
            }
        }
    }

    fn file(&mut self, index: usize, file: &IgnFile) {
        let origin = format!("storage.files[{index}]");
        if file.path == "/etc/hostname" {
            self.hostname_file(&origin, file);
            return;
        }
        let Some(mode) = self.mode(&format!("{origin}.mode"), file.mode) else {
            return;
        };
        let owner = self.owner(&format!("{origin}.user"), file.user.as_ref());
        let group = self.owner(&format!("{origin}.group"), file.group.as_ref());
        let (Some(owner), Some(group)) = (owner, group) else {
            return;
        };
        let base = model::File {
            path: file.path.clone(),
            mode,
            owner,
            group,
            ..model::File::default()
        };
        let appends = file.append.as_deref().unwrap_or_default();
        // A file with only `append` entries is created by the first of them.
        if file.contents.is_some() || appends.is_empty() {
            let main = contents_into(base.clone(), file.contents.as_ref(), false);
            self.push_file(main, origin.clone(), "contents");
        }
        for (append_index, contents) in appends.iter().enumerate() {
            let appended = contents_into(base.clone(), Some(contents), true);
            self.push_file(appended, format!("{origin}.append[{append_index}]"), "");
        }
    }

    fn push_file(&mut self, file: model::File, origin: String, contents_key: &str) {
        let field = format!("files[{}]", self.config.files.len());
        // The native contents fields sit under `contents` in Ignition.
        for native in ["source", "hash", "compression"] {
            let ignition = match native {
                "source" => "source",
                "hash" => "verification.hash",
                _ => "compression",
            };
            let prefix = if contents_key.is_empty() {
                origin.clone()
            } else {
                format!("{origin}.{contents_key}")
            };
            self.origins
                .record(format!("{field}.{native}"), format!("{prefix}.{ignition}"));
        }
        self.origins.record(field, origin);
        self.config.files.push(file);
    }

    /// `/etc/hostname` is how Ignition users set the hostname (as Fedora CoreOS documents).
    fn hostname_file(&mut self, origin: &str, file: &IgnFile) {
        let field = format!("{origin}.contents.source");
        let source = file
            .contents
            .as_ref()
            .and_then(|contents| contents.source.as_deref());
        let Some(source) = source else {
            self.findings
                .error(field, "the hostname file needs contents (a data: URL)");
            return;
        };
        let decoded = decode_data_url(source).and_then(|raw| {
            let contents = file.contents.as_ref();
            if let Some(hash) = contents
                .and_then(|contents| contents.verification.as_ref())
                .and_then(|verification| verification.hash.as_deref())
            {
                ContentHash::parse(hash)?.verify(&raw)?;
            }
            match contents.and_then(|contents| contents.compression.as_deref()) {
                Some("gzip") => gunzip(&raw),
                _ => Ok(raw),
            }
        });
        match decoded {
            Ok(bytes) => {
                let hostname = String::from_utf8_lossy(&bytes).trim().to_owned();
                self.origins.record("hostname", field);
                self.config.hostname = Some(hostname);
            }
            Err(reason) => self.findings.error(
                field,
                format!("the hostname must be given inline as a data: URL: {reason}"),
            ),
        }
    }

    fn directory(&mut self, index: usize, directory: &IgnDirectory) {
        let origin = format!("storage.directories[{index}]");
        let mode = self.mode(&format!("{origin}.mode"), directory.mode);
        let owner = self.owner(&format!("{origin}.user"), directory.user.as_ref());
        let group = self.owner(&format!("{origin}.group"), directory.group.as_ref());
        let (Some(mode), Some(owner), Some(group)) = (mode, owner, group) else {
            return;
        };
        let field = format!("directories[{}]", self.config.directories.len());
        self.origins.record(field, origin);
        self.config.directories.push(model::Directory {
            path: directory.path.clone(),
            mode,
            owner,
            group,
        });
    }

    /// Ignition modes are decimal integers (420 is 0644).
    fn mode(&mut self, field: &str, mode: Option<i64>) -> Option<Option<String>> {
        match mode {
            None => Some(None),
            Some(mode) if (0..=0o7777).contains(&mode) => Some(Some(format!("{mode:04o}"))),
            Some(mode) => {
                self.findings.error(
                    field,
                    format!("{mode} is not a mode: Ignition modes are decimal, 0 to 4095 (0o7777)"),
                );
                None
            }
        }
    }

    fn owner(&mut self, field: &str, owner: Option<&NodeOwner>) -> Option<Option<u32>> {
        let Some(owner) = owner else {
            return Some(None);
        };
        match (owner.id, owner.name.as_deref()) {
            (Some(id), _) => match u32::try_from(id) {
                Ok(id) => Some(Some(id)),
                Err(_) => {
                    self.findings
                        .error(format!("{field}.id"), format!("{id} is not a valid id"));
                    None
                }
            },
            (None, None | Some("root")) => Some(Some(0)),
            (None, Some(name)) => {
                self.findings.error(
                    format!("{field}.name"),
                    format!(
                        "{name:?} cannot be resolved: Keelson has no user database; give a \
                         numeric id instead"
                    ),
                );
                None
            }
        }
    }
}

fn contents_into(base: model::File, contents: Option<&IgnContents>, append: bool) -> model::File {
    let Some(contents) = contents else {
        return model::File { append, ..base };
    };
    model::File {
        source: contents.source.clone(),
        compression: contents
            .compression
            .clone()
            .filter(|compression| !compression.is_empty()),
        hash: contents
            .verification
            .as_ref()
            .and_then(|verification| verification.hash.clone()),
        append,
        ..base
    }
}

/// True when a JSON value carries anything (not null, not an empty list or object, not an
/// object of only such values).
fn is_set(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => map.values().any(is_set),
        _ => true,
    }
}
