//! Acquiring and applying the machine config: the shell around `keelson-config`.
//!
//! [`configure`] runs once per agent start:
//! 1. probe the sources (the copy saved on STATE, QEMU fw_cfg, a NoCloud seed, a
//!    `keelson.config=` URL) and let [`keelson_config::acquire::choose`] pick one;
//! 2. read it, translate it and validate it whole;
//! 3. if it is valid, apply it in phases (network, then every remote file fetched and
//!    verified, then hostname and files), then save it on STATE; if there is none, it is
//!    not valid, or applying fails, enter maintenance mode: nothing is saved, the console
//!    says exactly what was applied before the failure (nothing, for an invalid config),
//!    the network comes up by DHCP so the API is reachable, and every error is printed on
//!    the console and returned to callers the API refuses.
//!
//! [`apply_requested`] is `ApplyConfig`: the same validation, a diff against the config in
//! force, and then (by mode) a live apply, a save and reboot, or a save for the next boot.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use keelson_config::acquire::{choose, Probe, SavedMeta, SourceKind};
use keelson_config::change::{decide_apply, ApplyPlan};
use keelson_config::ignition::resolve;
use keelson_config::model::ApiPki;
use keelson_config::plan::{Contents, NetworkPlan, Plan};
use keelson_config::{Diagnostic, Loaded, MachineConfig, NoCloudSeed, Rejected};

use keelson_linux::clock::unix_now;
use keelson_net::node as network;

use crate::files::{self, ResolvedFile};
use crate::{bounded, fetch, seed};

/// fw_cfg entry holding an Ignition config (the name Fedora CoreOS uses).
pub const FW_CFG_IGNITION: &str = "opt/com.coreos/config";
/// fw_cfg entry holding a native config.
pub const FW_CFG_NATIVE: &str = "opt/dev.keelson/config";
/// Where the kernel exposes fw_cfg entries.
pub const FW_CFG_ROOT: &str = "/sys/firmware/qemu_fw_cfg/by_name";
/// How long DHCP may take for the first lease before the agent moves on.
const FIRST_LEASE: Duration = Duration::from_secs(30);
/// How long fetching a config or a file may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// What the agent did with the config, for the console and `Machine.Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigReport {
    /// The source in force (or that was rejected).
    pub source: SourceKind,
    /// The document, e.g. `fw_cfg opt/com.coreos/config`.
    pub location: String,
    /// Its format.
    pub format: String,
    /// The NoCloud instance-id, if any.
    pub instance_id: Option<String>,
    /// Why the node is in maintenance mode; `None` when the config is in force.
    pub maintenance: Option<String>,
    /// Errors (only in maintenance mode).
    pub errors: Vec<Diagnostic>,
    /// Keys that were not honoured.
    pub warnings: Vec<Diagnostic>,
    /// What applying did, one line per step.
    pub applied: Vec<String>,
}

impl ConfigReport {
    fn new(source: SourceKind) -> ConfigReport {
        ConfigReport {
            source,
            location: String::new(),
            format: String::new(),
            instance_id: None,
            maintenance: None,
            errors: Vec::new(),
            warnings: Vec::new(),
            applied: Vec::new(),
        }
    }

    /// A report for an agent that does not manage the machine it runs on.
    pub fn unmanaged() -> ConfigReport {
        ConfigReport::new(SourceKind::None)
    }
}

/// The report, shared with the API.
pub type SharedReport = Arc<RwLock<ConfigReport>>;

/// What [`configure`] leaves behind.
#[derive(Debug)]
pub struct Configured {
    /// What happened, for the console and `Machine.Status`.
    pub report: ConfigReport,
    /// The config in force, as saved (`None` in maintenance mode).
    pub in_force: Option<MachineConfig>,
    /// Its API credentials (from `api`, or the files Ignition and cloud-init carry them
    /// in); `None` leaves the API in maintenance mode.
    pub api: Option<ApiPki>,
    /// DHCP clients started so that a node in maintenance mode is reachable; they keep
    /// running until the node reboots or a config takes over the network.
    pub maintenance_network: Vec<tokio::task::AbortHandle>,
}

/// Where the agent looks for things (the real paths on a node; temporary ones in tests).
#[derive(Debug, Clone)]
pub struct Environment {
    /// The agent's directory on STATE; the config is saved in `config/` beneath it.
    pub state_dir: PathBuf,
    /// fw_cfg's `by_name` directory.
    pub fw_cfg_root: PathBuf,
    /// The kernel command line.
    pub cmdline: String,
    /// The root that files are written under (`/`).
    pub root: PathBuf,
}

impl Environment {
    /// The real node.
    pub fn node(state_dir: &Path) -> Environment {
        Environment {
            state_dir: state_dir.to_path_buf(),
            fw_cfg_root: PathBuf::from(FW_CFG_ROOT),
            cmdline: std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
            root: PathBuf::from("/"),
        }
    }

    fn saved_config(&self) -> PathBuf {
        self.state_dir.join("config/machine.yaml")
    }

    fn saved_meta(&self) -> PathBuf {
        self.state_dir.join("config/meta.json")
    }

    fn cmdline_value(&self, key: &str) -> Option<String> {
        keelson_contract::cmdline::value(&self.cmdline, key).map(str::to_owned)
    }
}

/// A source's bytes, or why they could not be read within its bounds.
type SourceBytes = Result<Vec<u8>, String>;

/// Everything the probe read (sources are small, so the chosen one needs no second read).
#[derive(Debug, Default)]
struct Found {
    saved: Option<(SourceBytes, Option<SavedMeta>)>,
    fw_cfg: Option<(&'static str, SourceBytes)>,
    seed: Option<seed::SeedFiles>,
    seed_instance: Option<String>,
    /// A seed was found but could not be read within its bounds.
    seed_error: Option<(PathBuf, String)>,
    url: Option<String>,
    reapply: bool,
}

impl Found {
    fn probe(&self) -> Probe {
        Probe {
            saved: self
                .saved
                .as_ref()
                .map(|(_, meta)| meta.as_ref().and_then(|meta| meta.instance_id.clone())),
            reapply: self.reapply,
            fw_cfg: self.fw_cfg.is_some(),
            nocloud: match (&self.seed, &self.seed_error) {
                (Some(_), _) => Some(self.seed_instance.clone()),
                (None, Some(_)) => Some(None),
                (None, None) => None,
            },
            url: self.url.is_some(),
        }
    }
}

/// A source that was found but could not be read within its bounds.
fn unreadable(location: &str, reason: String) -> Rejected {
    Rejected {
        diagnostics: vec![Diagnostic::error(location, "$", reason)],
    }
}

fn look(environment: &Environment) -> Found {
    let mut found = Found {
        url: environment.cmdline_value("keelson.config"),
        reapply: keelson_contract::cmdline::flag(&environment.cmdline, "keelson.config.reapply"),
        ..Found::default()
    };
    let saved = bounded::read(
        &environment.saved_config(),
        None,
        bounded::MAX_SAVED_BYTES,
        bounded::READ_DEADLINE,
    );
    let saved = match saved {
        Ok(None) => None,
        Ok(Some(bytes)) => Some(Ok(bytes)),
        Err(error) => Some(Err(format!("the saved config cannot be read: {error}"))),
    };
    if let Some(bytes) = saved {
        let meta = std::fs::read(environment.saved_meta())
            .ok()
            .and_then(|meta| serde_json::from_slice(&meta).ok());
        found.saved = Some((bytes, meta));
    }
    for name in [FW_CFG_IGNITION, FW_CFG_NATIVE] {
        let entry = environment.fw_cfg_root.join(name);
        let read = bounded::read(
            &entry.join("raw"),
            bounded::fw_cfg_size(&entry),
            bounded::MAX_SOURCE_BYTES,
            bounded::READ_DEADLINE,
        );
        match read {
            Ok(None) => continue,
            Ok(Some(bytes)) => found.fw_cfg = Some((name, Ok(bytes))),
            Err(error) => found.fw_cfg = Some((name, Err(error.to_string()))),
        }
        break;
    }
    if let Some((device, fs)) = seed::find_seed() {
        match seed::read_seed(&device, fs) {
            Ok(files) => {
                found.seed_instance = files
                    .meta_data
                    .as_deref()
                    .and_then(|meta| keelson_config::load::nocloud_meta_data(meta).ok())
                    .and_then(|meta| meta.instance_id);
                found.seed = Some(files);
            }
            Err(error) => {
                tracing::warn!("{error}");
                found.seed_error = Some((device.clone(), error));
            }
        }
    }
    found
}

/// Acquires, validates and applies the config, as phases: probe the sources and choose
/// one; read, translate and validate it (`read_source`, then the API certificates); then
/// put it in force (`put_in_force`) or enter maintenance mode (`without_config`,
/// `rejected_config`). Never fails: problems end in maintenance mode, described by the
/// report.
pub async fn configure(environment: &Environment) -> Configured {
    let found = look(environment);
    let source = choose(&found.probe());
    let mut report = ConfigReport::new(source);
    if matches!(source, SourceKind::None | SourceKind::Api) {
        return without_config(report).await;
    }
    let (loaded, network_up) = read_source(environment, &found, source, &mut report).await;
    let loaded =
        loaded.and_then(|loaded| keelson_api::tls::check_config_pki(&report.location, loaded));
    match loaded {
        Ok(loaded) => {
            for task in network_up {
                task.abort();
            }
            put_in_force(environment, source, loaded, report).await
        }
        Err(rejected) => rejected_config(report, rejected, network_up).await,
    }
}

/// Phase: nothing to configure from. Maintenance mode with DHCP, so the API is reachable.
async fn without_config(mut report: ConfigReport) -> Configured {
    report.location = "none".into();
    report.maintenance = Some("no-config".into());
    let maintenance_network = bring_up_default(&mut report).await;
    Configured {
        report,
        in_force: None,
        api: None,
        maintenance_network,
    }
}

/// Phase: read the chosen source and translate and validate it. A URL needs the network
/// first (DHCP on the first interface); the tasks that keep it up are returned.
async fn read_source(
    environment: &Environment,
    found: &Found,
    source: SourceKind,
    report: &mut ConfigReport,
) -> (Result<Loaded, Rejected>, Vec<tokio::task::AbortHandle>) {
    let mut network_up = Vec::new();
    let loaded = match source {
        SourceKind::Saved => {
            let (bytes, meta) = found.saved.clone().unwrap_or((Ok(Vec::new()), None));
            report.location = format!("saved {}", environment.saved_config().display());
            report.instance_id = meta.as_ref().and_then(|meta| meta.instance_id.clone());
            bytes
                .map_err(|reason| unreadable(&report.location, reason))
                .and_then(|bytes| keelson_config::load(&report.location, &bytes))
        }
        SourceKind::FwCfg => {
            let (name, bytes) = found.fw_cfg.clone().unwrap_or(("", Ok(Vec::new())));
            report.location = format!("fw_cfg {name}");
            match bytes.map_err(|reason| unreadable(&report.location, reason)) {
                Ok(bytes) => resolve_pointers(bytes, &mut network_up, report)
                    .await
                    .and_then(|bytes| keelson_config::load(&report.location, &bytes)),
                Err(rejected) => Err(rejected),
            }
        }
        SourceKind::NoCloud if found.seed.is_none() => {
            let (device, error) = found.seed_error.clone().unwrap_or_default();
            report.location = format!("nocloud {}", device.display());
            Err(unreadable(&report.location, error))
        }
        SourceKind::NoCloud => {
            let files = found.seed.clone().unwrap_or_default();
            report.location = format!("nocloud {}", files.device.display());
            report.instance_id = found.seed_instance.clone();
            let user_data = match files.user_data.clone() {
                Some(bytes) => resolve_pointers(bytes, &mut network_up, report)
                    .await
                    .map(Some),
                None => Ok(None),
            };
            user_data.and_then(|user_data| {
                keelson_config::load_nocloud(&NoCloudSeed {
                    meta_data: files.meta_data.as_deref(),
                    user_data: user_data.as_deref(),
                    network_config: files.network_config.as_deref(),
                })
                .map(|(loaded, _)| loaded)
            })
        }
        SourceKind::Url => {
            let url = found.url.clone().unwrap_or_default();
            report.location = format!("url {url}");
            network_up = bring_up_default(report).await;
            let fetched = match fetch::Trust::system_and(&[]) {
                Ok(trust) => {
                    fetch::get(&url, FETCH_TIMEOUT, bounded::MAX_SOURCE_BYTES, &trust).await
                }
                Err(reason) => Err(reason),
            };
            match fetched {
                Ok(bytes) => resolve_pointers(bytes, &mut network_up, report)
                    .await
                    .and_then(|bytes| keelson_config::load(&report.location, &bytes)),
                Err(reason) => Err(unreadable(&report.location, reason)),
            }
        }
        // `configure` takes these to `without_config` before reading anything.
        SourceKind::None | SourceKind::Api => Err(unreadable("none", "no config source".into())),
    };
    (loaded, network_up)
}

/// Phase: an Ignition document that names configs to replace or merge it, or authorities
/// by URL, is resolved into one self-contained document (see
/// [`keelson_config::ignition::resolve`]). The network comes up first (DHCP on the first
/// interface, as Ignition does in the initramfs) unless it is up already. Anything else
/// passes through untouched.
async fn resolve_pointers(
    bytes: Vec<u8>,
    network_up: &mut Vec<tokio::task::AbortHandle>,
    report: &mut ConfigReport,
) -> Result<Vec<u8>, Rejected> {
    let is_ignition = keelson_config::detect(&bytes) == Ok(keelson_config::Format::Ignition);
    if !is_ignition || !resolve::needs_fetching(&bytes) {
        return Ok(bytes);
    }
    if network_up.is_empty() {
        *network_up = bring_up_default(report).await;
    }
    let location = report.location.clone();
    let resolved = tokio::task::spawn_blocking(move || {
        resolve::resolve(&location, &bytes, &mut |request| {
            let trust = fetch::Trust::system_and(&request.authorities)?;
            fetch::get_blocking(
                &request.url,
                FETCH_TIMEOUT,
                bounded::MAX_SOURCE_BYTES,
                &trust,
            )
        })
    })
    .await
    .map_err(|error| unreadable(&report.location, format!("the fetch task failed: {error}")))??;
    for line in &resolved.fetched {
        tracing::info!("{}: {line}", report.location);
    }
    Ok(resolved.document)
}

/// Phase: the config was refused. Maintenance mode with every error and warning, and DHCP
/// (unless a URL source brought it up already).
async fn rejected_config(
    mut report: ConfigReport,
    rejected: Rejected,
    mut network_up: Vec<tokio::task::AbortHandle>,
) -> Configured {
    report.warnings = rejected
        .diagnostics
        .iter()
        .filter(|d| !d.is_error())
        .cloned()
        .collect();
    report.errors = rejected.errors().cloned().collect();
    report.maintenance = Some("invalid-config".into());
    if network_up.is_empty() {
        network_up = bring_up_default(&mut report).await;
    }
    Configured {
        report,
        in_force: None,
        api: None,
        maintenance_network: network_up,
    }
}

/// Phase: apply the valid config (see [`apply`]) and save it, or enter maintenance mode
/// saying what stayed applied.
async fn put_in_force(
    environment: &Environment,
    source: SourceKind,
    loaded: Loaded,
    mut report: ConfigReport,
) -> Configured {
    report.format = loaded.format.to_string();
    report.warnings = loaded.warnings.clone();
    match apply(environment, &loaded.plan, Steps::All, &mut report).await {
        Ok(fetched) => {
            let config = with_fetched_inline(&loaded.config, &fetched);
            if source != SourceKind::Saved {
                let meta = SavedMeta {
                    source,
                    format: loaded.format.to_string(),
                    instance_id: report.instance_id.clone(),
                    saved_at: unix_now(),
                };
                match save(environment, &config, &meta) {
                    Ok(()) => report.applied.push("saved the config on STATE".into()),
                    Err(error) => report.applied.push(format!("not saved: {error}")),
                }
            }
            Configured {
                report,
                in_force: Some(config),
                api: loaded.plan.api.clone(),
                maintenance_network: Vec::new(),
            }
        }
        Err(error) => {
            report.errors.push(Diagnostic::error(
                &report.location,
                error.step,
                error.reason,
            ));
            report.maintenance = Some("apply-failed".into());
            let maintenance_network = if error.network_applied {
                Vec::new()
            } else {
                bring_up_default(&mut report).await
            };
            Configured {
                report,
                in_force: None,
                api: None,
                maintenance_network,
            }
        }
    }
}

async fn bring_up_default(report: &mut ConfigReport) -> Vec<tokio::task::AbortHandle> {
    match network::apply(&NetworkPlan::default(), FIRST_LEASE).await {
        Ok(applied) => {
            report
                .applied
                .extend(applied.lines.iter().map(|line| format!("network {line}")));
            applied.tasks
        }
        Err(error) => {
            report.applied.push(format!("network: {error:#}"));
            Vec::new()
        }
    }
}

/// A failure part-way through applying.
#[derive(Debug)]
struct ApplyError {
    step: &'static str,
    reason: String,
    network_applied: bool,
}

/// Which parts of a plan to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Steps {
    /// Everything (at boot).
    All,
    /// What can change on a running node: hostname and files (`ApplyConfig`).
    Live,
}

/// Applies the plan as a list of phases; returns the fetched file contents (by file index).
///
/// 1. the network (at boot only), since remote files may need it;
/// 2. fetch and verify every remote file, before anything else is written;
/// 3. the hostname;
/// 4. every file, directory and link, all-or-nothing.
///
/// What lands in `report.applied` is exactly what was done, so that a failure part-way
/// reports what stayed in force.
async fn apply(
    environment: &Environment,
    plan: &Plan,
    steps: Steps,
    report: &mut ConfigReport,
) -> Result<Vec<(usize, Vec<u8>)>, ApplyError> {
    let mut network_applied = false;
    if steps == Steps::All {
        let applied = network::apply(&plan.network, FIRST_LEASE)
            .await
            .map_err(|error| ApplyError {
                step: "network",
                reason: format!("{error:#}"),
                network_applied: false,
            })?;
        network_applied = true;
        report
            .applied
            .extend(applied.lines.iter().map(|line| format!("network {line}")));
        for unmatched in &applied.unmatched {
            report
                .applied
                .push(format!("network: no interface matches {unmatched}"));
        }
    }
    let failed = |step, reason| ApplyError {
        step,
        reason,
        network_applied,
    };
    let (resolved, fetched) = fetch_remote_files(plan)
        .await
        .map_err(|reason| failed("files", reason))?;
    if let Some(hostname) = &plan.hostname {
        set_hostname(environment, hostname).map_err(|reason| failed("hostname", reason))?;
        report.applied.push(format!("hostname {hostname}"));
    }
    let written = files::write_all(&environment.root, &plan.directories, &resolved, &plan.links)
        .map_err(|reason| failed("files", reason))?;
    report.applied.extend(written);
    Ok(fetched)
}

/// Every file's contents: inline ones as they are, remote ones fetched, checked against
/// their hash and decompressed. Nothing is written; the first failure names the file.
async fn fetch_remote_files(
    plan: &Plan,
) -> Result<(Vec<ResolvedFile<'_>>, Vec<(usize, Vec<u8>)>), String> {
    let mut fetched = Vec::new();
    let mut resolved = Vec::new();
    let remote = plan
        .files
        .iter()
        .any(|file| matches!(file.contents, Contents::Fetch { .. }));
    let trust = if remote {
        fetch::Trust::system_and(&plan.trusted_authorities)?
    } else {
        fetch::Trust::default()
    };
    for file in &plan.files {
        let bytes = match &file.contents {
            Contents::Inline(bytes) => bytes.clone(),
            Contents::Fetch { url, hash, gzip } => {
                let field = format!("files[{}].source", file.config_index);
                let raw = fetch::get(url, FETCH_TIMEOUT, fetch::MAX_BYTES, &trust)
                    .await
                    .map_err(|reason| format!("{field}: {reason}"))?;
                if let Some(hash) = hash {
                    hash.verify(&raw)
                        .map_err(|reason| format!("{field}: {url}: {reason}"))?;
                }
                let bytes = if *gzip {
                    keelson_config::plan::gunzip(&raw)
                        .map_err(|reason| format!("{field}: {reason}"))?
                } else {
                    raw
                };
                fetched.push((file.config_index, bytes.clone()));
                bytes
            }
        };
        resolved.push(ResolvedFile { plan: file, bytes });
    }
    Ok((resolved, fetched))
}

fn set_hostname(environment: &Environment, hostname: &str) -> Result<(), String> {
    nix::unistd::sethostname(hostname)
        .map_err(|errno| format!("cannot set the hostname to {hostname}: {}", errno.desc()))?;
    let path = environment.root.join("etc/hostname");
    if let Err(error) = std::fs::write(&path, format!("{hostname}\n")) {
        tracing::warn!("cannot write {}: {error}", path.display());
    }
    Ok(())
}

/// The config with fetched file contents inlined, so that later boots need no server.
fn with_fetched_inline(config: &MachineConfig, fetched: &[(usize, Vec<u8>)]) -> MachineConfig {
    let mut config = config.clone();
    for (index, bytes) in fetched {
        if let Some(file) = config.files.get_mut(*index) {
            file.source = None;
            file.hash = None;
            file.compression = None;
            file.content_base64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
    }
    config
}

/// Saves `config` with its origin, atomically; the next boot finds it first.
fn save(environment: &Environment, config: &MachineConfig, meta: &SavedMeta) -> Result<(), String> {
    let meta = serde_json::to_vec_pretty(meta).map_err(|error| error.to_string())?;
    // The YAML goes last: its presence is what marks a saved config.
    write_atomically(&environment.saved_meta(), &meta)?;
    write_atomically(
        &environment.saved_config(),
        keelson_config::native::to_yaml(config).as_bytes(),
    )
}

pub use keelson_config::change::ApplyMode;

/// What `ApplyConfig` did (or, for a dry run, would do).
#[derive(Debug, Clone)]
pub struct ApplyOutcome {
    /// Diff against the config in force, keys redacted.
    pub diff: String,
    /// One line per step.
    pub actions: Vec<String>,
    /// Keys not honoured.
    pub warnings: Vec<Diagnostic>,
    /// The node must now reboot to put the config in force.
    pub reboot: bool,
    /// Sections whose change needs a reboot.
    pub reboot_needed_for: Vec<&'static str>,
    /// The config now in force; `None` when nothing changed on the running node (dry run,
    /// staged, or a reboot to come).
    pub in_force: Option<MachineConfig>,
    /// Its API credentials.
    pub api: Option<ApiPki>,
}

/// Why `ApplyConfig` changed nothing.
#[derive(Debug, Clone)]
pub enum ApplyRefusal {
    /// The config is not valid.
    Invalid(Vec<Diagnostic>),
    /// `no-reboot` was asked for a change that needs one.
    NeedsReboot(Vec<&'static str>),
    /// Applying failed; what had been changed was put back.
    Failed(String),
}

/// `ApplyConfig`: validates `bytes` whole, compares it with `current` (the config in
/// force, `None` in maintenance mode) and puts it in force as `mode` says. Changes nothing
/// on a dry run or on any refusal. While the API serves mutual TLS (`api_in_force`), a
/// config without API credentials is refused: it would lock every client out.
pub async fn apply_requested(
    environment: &Environment,
    current: Option<&MachineConfig>,
    api_in_force: bool,
    report: &SharedReport,
    bytes: &[u8],
    mode: ApplyMode,
    dry_run: bool,
) -> Result<ApplyOutcome, ApplyRefusal> {
    let location = "apply-config";
    let loaded = keelson_config::load(location, bytes)
        .and_then(|loaded| keelson_api::tls::check_config_pki(location, loaded))
        .map_err(|rejected| ApplyRefusal::Invalid(rejected.errors().cloned().collect()))?;
    if api_in_force && loaded.plan.api.is_none() {
        return Err(ApplyRefusal::Invalid(vec![Diagnostic::error(
            location,
            "api",
            "the config has no API credentials: applying it would leave the API in \
             maintenance mode and lock every client out (keep the api section of the config \
             in force, e.g. from keelctl gen config's node.yaml)",
        )]));
    }
    let change = keelson_config::change::compare(current, &loaded.config);
    let mut outcome = ApplyOutcome {
        diff: change.diff.clone(),
        actions: Vec::new(),
        warnings: loaded.warnings.clone(),
        reboot: false,
        reboot_needed_for: change.reboot_needed_for.clone(),
        in_force: None,
        api: loaded.plan.api.clone(),
    };
    let needs_reboot = !change.reboot_needed_for.is_empty();
    let decision = decide_apply(mode, needs_reboot, dry_run);
    let would = if dry_run { "would " } else { "" };
    let instance_id = report.read().ok().and_then(|r| r.instance_id.clone());
    let meta = SavedMeta {
        source: SourceKind::Api,
        format: loaded.format.to_string(),
        // Kept, so that the NoCloud seed the node was first configured from does not
        // count as new at the next boot and override this config.
        instance_id: instance_id.clone(),
        saved_at: unix_now(),
    };
    let saved_path = environment.saved_config();
    let save_line = format!("{would}save the config to {}", saved_path.display());
    match decision.plan {
        ApplyPlan::RefuseNeedsReboot => {
            return Err(ApplyRefusal::NeedsReboot(change.reboot_needed_for));
        }
        ApplyPlan::Stage | ApplyPlan::SaveAndReboot => {
            if decision.write {
                save(environment, &loaded.config, &meta).map_err(ApplyRefusal::Failed)?;
            }
            outcome.actions.push(save_line);
            outcome.reboot = decision.reboot;
            outcome.actions.push(if decision.plan == ApplyPlan::Stage {
                format!("{would}leave it for the next boot (staged)")
            } else {
                format!(
                    "{would}reboot to apply the change to {}",
                    change.reboot_needed_for.join(", ")
                )
            });
            return Ok(outcome);
        }
        ApplyPlan::Live if !decision.write => {
            outcome
                .actions
                .push("would apply the hostname and files now".into());
            outcome.actions.push(save_line);
            return Ok(outcome);
        }
        ApplyPlan::Live => {}
    }
    let mut applied = ConfigReport::new(SourceKind::Api);
    applied.location = "api".into();
    applied.format = loaded.format.to_string();
    applied.instance_id = instance_id;
    applied.warnings = loaded.warnings.clone();
    let hostname_before = keelson_linux::hostname();
    let fetched = match apply(environment, &loaded.plan, Steps::Live, &mut applied).await {
        Ok(fetched) => fetched,
        Err(error) => {
            // Files are all-or-nothing already; the hostname is the one step to undo.
            let _ = set_hostname(environment, &hostname_before);
            return Err(ApplyRefusal::Failed(format!(
                "{}: {} (nothing was changed)",
                error.step, error.reason
            )));
        }
    };
    let config = with_fetched_inline(&loaded.config, &fetched);
    save(environment, &config, &meta).map_err(ApplyRefusal::Failed)?;
    applied.applied.push("saved the config on STATE".into());
    outcome.actions = applied.applied.clone();
    outcome.in_force = Some(config);
    if let Ok(mut report) = report.write() {
        *report = applied;
    }
    Ok(outcome)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    keelson_linux::durable::write(path, bytes).map_err(|error| error.to_string())
}

/// Prints the outcome on the console: warnings, and in maintenance mode the reason and
/// every error. Returns true when the node is in maintenance mode.
pub fn announce(report: &ConfigReport) -> bool {
    for warning in &report.warnings {
        keelson_log::console(&format!("keelson: {warning}"));
    }
    let Some(reason) = &report.maintenance else {
        return false;
    };
    keelson_log::console(&format!(
        "keelson: maintenance reason={reason} source={} errors={}",
        report.source,
        report.errors.len()
    ));
    for error in &report.errors {
        keelson_log::console(&format!("keelson: {error}"));
    }
    keelson_log::console(&format!("keelson: {}", what_stayed_applied(report)));
    true
}

/// The maintenance line that says what of the config is in force: nothing, or exactly the
/// steps that ran before the failure.
pub fn what_stayed_applied(report: &ConfigReport) -> String {
    if report.applied.is_empty() {
        "nothing of the config was applied; the API accepts only apply-config".to_owned()
    } else {
        format!(
            "applied before the failure, and still in force: {}; nothing else was applied; the \
             API accepts only apply-config",
            report.applied.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A remote file that cannot be fetched stops the apply before the hostname or any
    /// file is written, and the report (and so the console) says exactly that.
    #[tokio::test]
    async fn remote_files_are_fetched_before_anything_is_written() {
        let root = tempfile::tempdir().unwrap();
        // The machine's own name, so that a regression cannot rename the test host.
        let hostname = keelson_linux::hostname();
        let yaml = format!(
            "apiVersion: keelson.dev/v1alpha1\nkind: MachineConfig\nhostname: {hostname}\n\
             files:\n  - path: /etc/motd\n    content: hello\n\
             \x20 - path: /etc/remote\n    source: http://127.0.0.1:9/unreachable\n"
        );
        let loaded = keelson_config::load("test", yaml.as_bytes()).unwrap();
        let environment = Environment {
            state_dir: root.path().join("var"),
            fw_cfg_root: PathBuf::new(),
            cmdline: String::new(),
            root: root.path().to_path_buf(),
        };
        let mut report = ConfigReport::new(SourceKind::Api);
        let error = apply(&environment, &loaded.plan, Steps::Live, &mut report)
            .await
            .unwrap_err();
        assert_eq!(error.step, "files");
        assert!(
            error.reason.starts_with("files[1].source: "),
            "{}",
            error.reason
        );
        assert_eq!(report.applied, Vec::<String>::new());
        assert!(!root.path().join("etc/motd").exists());
        assert!(!root.path().join("etc/hostname").exists());
        assert_eq!(
            what_stayed_applied(&report),
            "nothing of the config was applied; the API accepts only apply-config"
        );
    }

    #[test]
    fn maintenance_names_what_stayed_applied() {
        let mut report = ConfigReport::new(SourceKind::FwCfg);
        report.applied = vec!["network eth0 10.0.2.15/24 by DHCP".into()];
        assert_eq!(
            what_stayed_applied(&report),
            "applied before the failure, and still in force: network eth0 10.0.2.15/24 by \
             DHCP; nothing else was applied; the API accepts only apply-config"
        );
    }

    #[test]
    fn command_line_values_are_found() {
        let environment = Environment {
            state_dir: PathBuf::new(),
            fw_cfg_root: PathBuf::new(),
            cmdline:
                "console=ttyS0 keelson.config=http://10.0.2.2:8000/old.yaml keelson.config=http://10.0.2.2:8000/c.yaml keelson.config.reapply"
                    .into(),
            root: PathBuf::new(),
        };
        assert_eq!(
            environment.cmdline_value("keelson.config").as_deref(),
            Some("http://10.0.2.2:8000/c.yaml")
        );
        // The kernel's rule, as PID 1 reads the line: a repeated key takes its last value.
        assert_eq!(
            look(&environment).url.as_deref(),
            Some("http://10.0.2.2:8000/c.yaml")
        );
        assert!(look(&environment).reapply);
        assert_eq!(environment.cmdline_value("keelson.slot"), None);
    }
}
