//! The update engine itself: [`UpdateEngine`], the I/O shell around `keelson_update::slots`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use keelson_contract::trial::{TrialRecord, DEFAULT_HEALTH_TIMEOUT_SECS, TRIAL_FILE};
use keelson_disk::layout::Slot;
use keelson_update::boot_entry;
use keelson_update::bundle::{self, ArtifactKind, BundleError, BundleReader, PolicyRefusal};
use keelson_update::keys::{TrustRoot, TRUST_DIR};
use keelson_update::reconcile::{self, PendingWrite, UpdateRecord};
use keelson_update::slots::{Action, Event, Refusal, SlotState, Slots};
use tracing::{info, warn};

use keelson_log as logs;

use crate::esp::{EntryInfo, Esp, EspTree};

/// PID 1 gets this much longer than the agent's own health gate, so that a working agent
/// always decides first and PID 1 only steps in for one that cannot.
const PID1_GRACE_SECS: u64 = 60;

/// Why an update operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The bundle is not acceptable (signature, key, format, content).
    #[error("{0}")]
    Bundle(#[from] BundleError),
    /// The bundle is valid but not for this machine, or not now.
    #[error("{0}")]
    Policy(#[from] PolicyRefusal),
    /// The slot machine refused the step.
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// The update source could not be reached or read.
    #[error("GET {url} failed: {reason}")]
    Source {
        /// What was fetched.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The channel's metadata cannot be trusted (signature, key, expiry, content).
    #[error("{url}: {reason}")]
    Channel {
        /// The metadata's URL.
        url: String,
        /// Why it is not trusted.
        reason: String,
    },
    /// The channel lists one version and its bundle carries another.
    #[error(
        "the channel lists {listed} but its bundle carries {carried}; the channel is \
         inconsistent, refusing it"
    )]
    ChannelInconsistent {
        /// The version the channel promised.
        listed: String,
        /// The version in the bundle.
        carried: String,
    },
    /// Another update operation is running.
    #[error("another update operation is in progress; wait for it (keelctl update status)")]
    Busy,
    /// The machine cannot take updates at all.
    #[error("updates are unavailable on this machine: {0}")]
    Unavailable(String),
    /// Writing or reading the disk failed.
    #[error("{0:#}")]
    Io(#[from] anyhow::Error),
}

/// An update in progress, for status.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// receiving, verifying, activating; empty when idle.
    pub phase: String,
    /// The version being installed.
    pub version: String,
    /// Bytes done and expected.
    pub done: u64,
    /// Total bytes of the bundle's artifacts.
    pub total: u64,
}

/// One slot as status shows it.
#[derive(Debug, Clone)]
pub struct SlotView {
    /// The slot.
    pub slot: Slot,
    /// Its state.
    pub state: SlotState,
    /// The version it holds.
    pub version: String,
    /// Its entry file name.
    pub entry: String,
}

/// What `Update.Status` reports.
#[derive(Debug, Clone)]
pub struct StatusView {
    /// Both slots.
    pub slots: Vec<SlotView>,
    /// The slot running.
    pub running: Slot,
    /// The loader's default.
    pub default: Slot,
    /// The last error.
    pub last_error: String,
    /// The version that last failed.
    pub failed_version: String,
    /// The update being written.
    pub progress: Progress,
    /// Ids of the trusted keys.
    pub trusted_keys: Vec<String>,
    /// Why an installed update waits to reboot.
    pub reboot_pending: Option<String>,
}

/// How to apply a bundle.
#[derive(Debug, Clone)]
pub struct ApplySpec {
    /// Install a version older than the running one.
    pub allow_downgrade: bool,
    /// How long the new slot has to prove healthy.
    pub health_timeout: Duration,
    /// The version the source promised (a channel's release): a bundle that carries
    /// another version is refused, so a channel cannot be made to serve a different,
    /// older signed bundle under a new name.
    pub expect_version: Option<String>,
}

/// The result of a successful apply.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The slot written.
    pub slot: Slot,
    /// The version installed.
    pub version: String,
    /// Bytes of artifacts written.
    pub bytes: u64,
    /// Time from the first byte to the activated entry.
    pub seconds: f64,
    /// Of that, the time spent reading everything back from the disk to verify it.
    pub verify_seconds: f64,
}

/// The engine. One per agent; operations run one at a time.
#[derive(Debug)]
pub struct UpdateEngine {
    esp: Option<Esp>,
    running: Slot,
    running_version: String,
    state_file: PathBuf,
    trial_file: PathBuf,
    trust: Result<TrustRoot, String>,
    busy: Mutex<()>,
    progress: Mutex<Progress>,
    snapshot: Mutex<Option<(Slots, [Option<EntryInfo>; 2])>>,
    unavailable: Mutex<Option<String>>,
    pending_reboot: Arc<crate::reboot::PendingReboot>,
}

impl UpdateEngine {
    /// The engine of this node: the ESP found by label, the running slot and version, and
    /// the keys built into the image.
    pub fn for_node(state_dir: &std::path::Path, running: Slot, running_version: String) -> Self {
        let (esp, unavailable) = match Esp::find() {
            Ok(esp) => (Some(esp), None),
            Err(error) => (None, Some(format!("{error:#}"))),
        };
        let trust = TrustRoot::load(std::path::Path::new(TRUST_DIR))
            .map_err(|error| format!("cannot read the trusted keys in {TRUST_DIR}: {error}"));
        UpdateEngine {
            esp,
            running,
            running_version,
            state_file: state_dir.join("update/state.json"),
            trial_file: PathBuf::from(TRIAL_FILE),
            trust,
            busy: Mutex::new(()),
            progress: Mutex::new(Progress::default()),
            snapshot: Mutex::new(None),
            unavailable: Mutex::new(unavailable),
            pending_reboot: Arc::default(),
        }
    }

    /// An engine for a machine that does not take updates (the agent on a development
    /// host).
    pub fn unavailable(reason: &str) -> Self {
        UpdateEngine {
            esp: None,
            running: Slot::A,
            running_version: String::new(),
            state_file: PathBuf::new(),
            trial_file: PathBuf::new(),
            trust: Err(reason.to_owned()),
            busy: Mutex::new(()),
            progress: Mutex::new(Progress::default()),
            snapshot: Mutex::new(None),
            unavailable: Mutex::new(Some(reason.to_owned())),
            pending_reboot: Arc::default(),
        }
    }

    fn esp(&self) -> Result<&Esp, UpdateError> {
        if let Some(reason) = self.unavailable.lock().ok().and_then(|guard| guard.clone()) {
            return Err(UpdateError::Unavailable(reason));
        }
        self.esp
            .as_ref()
            .ok_or_else(|| UpdateError::Unavailable("no ESP".to_owned()))
    }

    fn record(&self) -> UpdateRecord {
        std::fs::read(&self.state_file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn save(&self, record: &UpdateRecord) -> anyhow::Result<()> {
        Ok(keelson_linux::durable::write(
            &self.state_file,
            &serde_json::to_vec_pretty(record)?,
        )?)
    }

    fn fail(&self, version: &str, error: &str) {
        let mut record = self.record();
        record.last_error = Some(error.to_owned());
        record.failed_version = Some(version.to_owned());
        if let Err(save) = self.save(&record) {
            warn!("cannot record the update failure: {save:#}");
        }
    }

    /// Reads the slots off the ESP and the record; keeps them for status.
    fn read_slots(&self, tree: &EspTree) -> Result<Slots, UpdateError> {
        let (view, infos) = tree.read()?;
        let slots = reconcile::read_slots(&view, &self.record(), self.running);
        if let Ok(mut snapshot) = self.snapshot.lock() {
            *snapshot = Some((slots, infos));
        }
        slots.check().map_err(|broken| {
            UpdateError::Unavailable(format!(
                "the boot entries on the ESP do not describe a bootable A/B layout ({broken})"
            ))
        })?;
        Ok(slots)
    }

    /// Steps the machine and carries out its ESP actions. Returns the new state and
    /// whether a reboot was asked for.
    fn step(
        &self,
        tree: &EspTree,
        slots: &Slots,
        event: Event,
        install: Option<(&str, &str)>,
    ) -> Result<(Slots, bool), UpdateError> {
        let (next, actions) = slots.step(event)?;
        let mut reboot = false;
        for action in actions.iter() {
            if action == Action::Reboot {
                reboot = true;
                continue;
            }
            tree.apply(action, install)?;
            info!(?event, ?action, "update: boot entries changed");
        }
        tree.sync()?;
        // Re-read, so that status shows what is on the disk.
        self.read_slots(tree)?;
        Ok((next, reboot))
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, ()>, UpdateError> {
        self.busy.try_lock().map_err(|_| UpdateError::Busy)
    }

    fn set_progress(&self, progress: Progress) {
        if let Ok(mut current) = self.progress.lock() {
            *current = progress;
        }
    }

    /// What status shows; reads the ESP unless an operation has it mounted, in which case
    /// the last reading stands. Status never takes the operation lock: a poll that held it
    /// would make an update started in that moment fail as busy.
    pub fn status(&self) -> Result<StatusView, UpdateError> {
        if let Ok(esp) = self.esp() {
            let _ = esp.try_with_mounted(|tree| Ok(self.read_slots(tree)));
        }
        if let Some(reason) = self.unavailable.lock().ok().and_then(|guard| guard.clone()) {
            return Err(UpdateError::Unavailable(reason));
        }
        let (slots, infos) = self
            .snapshot
            .lock()
            .ok()
            .and_then(|snapshot| snapshot.clone())
            .ok_or_else(|| UpdateError::Unavailable("the ESP has not been read".to_owned()))?;
        let record = self.record();
        let views = Slot::ALL
            .iter()
            .map(|&slot| {
                let info = &infos[usize::from(slot == Slot::B)];
                let version = match (info, &record.pending) {
                    (Some(info), _) => info.version.clone(),
                    (None, Some(pending)) if pending.slot == slot.letter() => {
                        pending.version.clone()
                    }
                    _ => String::new(),
                };
                SlotView {
                    slot,
                    state: slots.state(slot),
                    version,
                    entry: info
                        .as_ref()
                        .map(|info| info.name.file_name())
                        .unwrap_or_default(),
                }
            })
            .collect();
        Ok(StatusView {
            slots: views,
            running: self.running,
            default: slots.default,
            last_error: record.last_error.unwrap_or_default(),
            failed_version: record.failed_version.unwrap_or_default(),
            progress: self.progress.lock().map(|p| p.clone()).unwrap_or_default(),
            trusted_keys: self.trust.as_ref().map(TrustRoot::ids).unwrap_or_default(),
            reboot_pending: self.pending_reboot.reason(),
        })
    }

    /// Streams a bundle from `source` into the inactive slot and activates it. Blocking:
    /// run it on a blocking thread. Nothing is touched until the bundle's signature and
    /// policy pass; a failure after that leaves the slot empty and the default unchanged.
    pub fn apply(&self, source: impl Read, spec: &ApplySpec) -> Result<Applied, UpdateError> {
        let _guard = self.lock()?;
        let esp = self.esp()?.clone();
        let trust = self.trust()?;
        let started = Instant::now();
        let checked = (|| {
            let reader = BundleReader::open(source, trust)?;
            let manifest = reader.manifest().clone();
            bundle::check_policy(
                &manifest,
                &self.running_version,
                std::env::consts::ARCH,
                spec.allow_downgrade,
            )?;
            if let Some(expected) = spec.expect_version.as_ref() {
                if *expected != manifest.version {
                    return Err(UpdateError::ChannelInconsistent {
                        listed: expected.clone(),
                        carried: manifest.version.clone(),
                    });
                }
            }
            Ok((reader, manifest))
        })();
        let (mut reader, manifest) = checked.inspect_err(|refusal| {
            // Kept for `update status`, as a failed write is: the operator who uploaded the
            // bundle sees why it was refused. No slot was touched.
            let mut record = self.record();
            record.last_error = Some(format!("refused a bundle: {refusal}"));
            if let Err(error) = self.save(&record) {
                warn!("cannot record the refusal: {error:#}");
            }
        })?;
        let health_timeout = spec.health_timeout;
        let target = self.running.other();
        info!(
            version = %manifest.version,
            signer = %reader.signer(),
            slot = %target,
            "update: bundle verified; writing the inactive slot"
        );
        let total: u64 = manifest
            .artifacts
            .iter()
            .map(|artifact| artifact.size)
            .sum();
        let version = manifest.version.clone();
        let progress = |phase: &str, done: u64| {
            self.set_progress(Progress {
                phase: phase.to_owned(),
                version: version.clone(),
                done,
                total,
            })
        };
        progress("receiving", 0);

        let outcome = (|| -> Result<Applied, UpdateError> {
            // Begin: the machine refuses to write the running slot; its actions take the
            // target's entry away before a byte of it changes.
            let slots = esp.with_mounted(|tree| {
                let slots = self.read_slots(tree)?;
                let (slots, _) = self.step(tree, &slots, Event::BeginWrite(target), None)?;
                Ok(slots)
            })?;
            let mut record = self.record();
            record.pending = Some(PendingWrite {
                slot: target.letter(),
                version: version.clone(),
                written: false,
            });
            self.save(&record)?;

            let mut done = 0u64;
            // Kernel and initrd to the ESP.
            esp.with_mounted(|tree| {
                let directory = tree.boot_file(&format!("/keelson/{}", target.letter()));
                std::fs::create_dir_all(&directory)?;
                for (kind, path) in [
                    (ArtifactKind::Kernel, boot_entry::kernel_path(target)),
                    (ArtifactKind::Initrd, boot_entry::initrd_path(target)),
                ] {
                    let path = tree.boot_file(&path);
                    let mut file = File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    let base = done;
                    let copied = reader
                        .copy_next(&mut file, &mut |bytes| progress("receiving", base + bytes));
                    let copied = copied.map_err(anyhow::Error::from)?;
                    anyhow::ensure!(copied == kind, "the bundle carries {copied:?} out of order");
                    file.sync_all()?;
                    done += manifest.artifact(kind).size;
                }
                Ok(())
            })
            .map_err(bundle_error_first)?;
            // The root image and its hash tree to the slot's partition.
            let partition = keelson_linux::block::find_partition(target.root_label())
                .with_context(|| format!("no partition labelled {}", target.root_label()))?;
            let mut device = open_exclusive(&partition.path())?;
            let base = done;
            reader
                .copy_next(&mut device, &mut |bytes| {
                    progress("receiving", base + bytes)
                })
                .map_err(UpdateError::from)?;
            device.sync_all().context("flushing the slot partition")?;
            drop(device);
            reader.finish()?;

            // Read everything back from the disk, not from the page cache.
            progress("verifying", 0);
            let verify_started = Instant::now();
            let root = manifest.artifact(ArtifactKind::Root);
            verify_on_disk(&partition.path(), root.size, &root.sha256)
                .with_context(|| format!("verifying slot {target} after writing"))?;
            esp.with_mounted(|tree| {
                for (kind, path) in [
                    (ArtifactKind::Kernel, boot_entry::kernel_path(target)),
                    (ArtifactKind::Initrd, boot_entry::initrd_path(target)),
                ] {
                    let artifact = manifest.artifact(kind);
                    verify_on_disk(&tree.boot_file(&path), artifact.size, &artifact.sha256)
                        .with_context(|| format!("verifying the {} on the ESP", kind.name()))?;
                }
                Ok(())
            })?;
            let verify_seconds = verify_started.elapsed().as_secs_f64();
            let (slots, _) = slots.step(Event::WriteOk(target))?;
            record.pending = Some(PendingWrite {
                slot: target.letter(),
                version: version.clone(),
                written: true,
            });
            self.save(&record)?;

            // Activate: a counted entry that the loader prefers.
            progress("activating", total);
            let options = format!(
                "{} {}",
                manifest.cmdline,
                keelson_contract::cmdline::boot_args(target, &manifest.verity_params())
            );
            // PID 1's deadline exists before the entry does.
            self.arm_trial(target, health_timeout.as_secs())?;
            esp.with_mounted(|tree| {
                self.step(
                    tree,
                    &slots,
                    Event::Activate(target),
                    Some((&version, &options)),
                )?;
                Ok(())
            })?;
            record.pending = None;
            record.trial_version = Some(version.clone());
            record.last_error = None;
            self.save(&record)?;
            Ok(Applied {
                slot: target,
                version: version.clone(),
                bytes: total,
                seconds: started.elapsed().as_secs_f64(),
                verify_seconds,
            })
        })();

        progress("", 0);
        match &outcome {
            Ok(applied) => info!(
                "update: slot {} holds {} ({} bytes in {:.1} s, of which {:.1} s reading it \
                 back to verify), activated on trial",
                applied.slot,
                applied.version,
                applied.bytes,
                applied.seconds,
                applied.verify_seconds
            ),
            Err(error) => {
                warn!("update to {version} failed: {error}");
                // The machine takes WriteFailed (a slot being written goes back to Empty, its
                // invariants checked), then the record drops the pending write to match:
                // the slot reads as empty again, and it never had an entry, so the default
                // is unchanged.
                self.clear_trial();
                let stepped = esp.with_mounted(|tree| {
                    let slots = self.read_slots(tree)?;
                    self.step(tree, &slots, Event::WriteFailed(target), None)?;
                    Ok(())
                });
                if let Err(step_error) = stepped {
                    // Refused (the write never began, or it had finished) or the ESP cannot
                    // be read: either way no pending write may stay in the record.
                    info!("update: the slot machine did not take WriteFailed: {step_error}");
                }
                let mut record = self.record();
                record.pending = None;
                let _ = self.save(&record);
                self.fail(&version, &format!("installing {version} failed: {error}"));
                let _ = esp.with_mounted(|tree| Ok(self.read_slots(tree)));
            }
        }
        outcome
    }

    /// The keys bundles and channels must be signed with.
    pub fn trust(&self) -> Result<&TrustRoot, UpdateError> {
        self.trust
            .as_ref()
            .map_err(|error| UpdateError::Unavailable(error.clone()))
    }

    /// The version this node runs.
    pub fn running_version(&self) -> &str {
        &self.running_version
    }

    /// Checks the channel at `url`. Blocking.
    pub fn check(&self, url: &str) -> Result<crate::channel::Checked, UpdateError> {
        crate::channel::check(url, self.trust()?, &self.running_version)
    }

    /// Fetches the bundle at `url` and applies it. Blocking.
    pub fn apply_url(&self, url: &str, spec: &ApplySpec) -> Result<Applied, UpdateError> {
        info!("update: fetching {url}");
        let source = crate::channel::open_bundle(url)?;
        self.apply(source, spec)
    }

    /// The version that last failed to install or to prove healthy.
    pub fn failed_version(&self) -> Option<String> {
        self.record().failed_version
    }

    /// Reboots into the activated update when `gate` allows. Returns why it waits, or
    /// `None` when the node reboots now.
    pub fn schedule_reboot(self: &Arc<Self>, gate: crate::reboot::RebootGate) -> Option<String> {
        let engine = self.clone();
        self.pending_reboot.schedule(
            gate,
            || {
                keelson_linux::ask_pid1(
                    keelson_contract::pid1::reboot_signal(),
                    "reboot into the update",
                )
            },
            // Still wanted while the other slot is the loader's default (a cancel undoes
            // that).
            move || {
                engine
                    .status()
                    .map(|view| view.default != view.running)
                    .unwrap_or(false)
            },
        )
    }

    /// Deletes the trial record, durably.
    fn clear_trial(&self) {
        if std::fs::remove_file(&self.trial_file).is_ok() {
            if let Some(parent) = self.trial_file.parent() {
                let _ = File::open(parent).and_then(|directory| directory.sync_all());
            }
        }
    }

    /// Writes the trial record PID 1 watches: the slot has `timeout` to be blessed.
    fn arm_trial(&self, slot: Slot, health_timeout_secs: u64) -> anyhow::Result<()> {
        if let Some(parent) = self.trial_file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let record = TrialRecord {
            slot,
            timeout_secs: health_timeout_secs + PID1_GRACE_SECS,
        };
        Ok(keelson_linux::durable::write(
            &self.trial_file,
            record.to_text().as_bytes(),
        )?)
    }

    /// Makes the other (good) slot the default. The caller reboots.
    pub fn rollback(&self) -> Result<(Slot, String), UpdateError> {
        let _guard = self.lock()?;
        let esp = self.esp()?;
        esp.with_mounted(|tree| {
            let slots = self.read_slots(tree)?;
            self.step(tree, &slots, Event::RollbackRequested, None)?;
            Ok(())
        })?;
        let target = self.running.other();
        Ok((target, self.version_of(target)))
    }

    /// Takes back an activation that has not been booted, and a reboot waiting for it.
    pub fn cancel(&self) -> Result<(Slot, String), UpdateError> {
        let _guard = self.lock()?;
        self.pending_reboot.cancel();
        let esp = self.esp()?;
        let target = self.running.other();
        let version = self.version_of(target);
        esp.with_mounted(|tree| {
            let slots = self.read_slots(tree)?;
            self.step(tree, &slots, Event::Cancel, None)?;
            Ok(())
        })?;
        self.clear_trial();
        Ok((target, version))
    }

    fn version_of(&self, slot: Slot) -> String {
        self.snapshot
            .lock()
            .ok()
            .and_then(|snapshot| snapshot.clone())
            .and_then(|(_, infos)| infos[usize::from(slot == Slot::B)].clone())
            .map(|info| info.version)
            .unwrap_or_default()
    }

    /// Reconciles after a boot. Returns true when the running slot is on trial and needs
    /// the health gate.
    pub fn on_boot(&self) -> bool {
        // Wait for an operation that got in first: the boot must be reconciled either way.
        let outcome = self
            .busy
            .lock()
            .map_err(|_| UpdateError::Busy)
            .and_then(|_guard| {
                let esp = self.esp()?;
                let trial = std::fs::read_to_string(&self.trial_file)
                    .ok()
                    .and_then(|text| TrialRecord::parse(&text));
                let slots = esp.with_mounted(|tree| {
                    let slots = self.read_slots(tree)?;
                    let (slots, _) = self.step(tree, &slots, Event::Booted, None)?;
                    Ok(slots)
                })?;
                Ok(reconcile::reconcile_on_boot(
                    self.record(),
                    &slots,
                    trial,
                    &self.running_version,
                ))
            });
        let reconciled = match outcome {
            Ok(reconciled) => reconciled,
            Err(error) => {
                // Said on the console and kept for `update status`: a node whose updates
                // cannot be reconciled must not look as if all were well.
                let message = format!("cannot reconcile the slots after boot: {error}");
                warn!("update: {message}");
                logs::console(&format!("keelson: update: {message}"));
                if let Ok(mut unavailable) = self.unavailable.lock() {
                    unavailable.get_or_insert(message);
                }
                return false;
            }
        };
        if let Some(line) = &reconciled.console {
            logs::console(&format!("keelson: update: {line}"));
        }
        if reconciled.clear_trial {
            self.clear_trial();
        }
        if let Err(error) = self.save(&reconciled.record) {
            warn!("cannot save the update record: {error:#}");
        }
        reconciled.health_gate
    }

    /// Blesses the running slot or, on failure, rolls it back. Returns true when the node
    /// must reboot.
    fn conclude_trial(&self, healthy: Result<(), String>) -> bool {
        let Ok(_guard) = self.busy.lock() else {
            return false;
        };
        let Ok(esp) = self.esp() else {
            return false;
        };
        let event = if healthy.is_ok() {
            Event::Healthy
        } else {
            Event::HealthFailed
        };
        let outcome = esp.with_mounted(|tree| {
            let slots = self.read_slots(tree)?;
            Ok(self.step(tree, &slots, event, None)?)
        });
        match (outcome, healthy) {
            (Ok(_), Ok(())) => {
                self.clear_trial();
                let mut record = self.record();
                record.trial_version = None;
                let _ = self.save(&record);
                logs::console(&format!(
                    "keelson: update: slot {} ({}) is healthy and blessed",
                    self.running, self.running_version
                ));
                false
            }
            (Ok((_, reboot)), Err(reason)) => {
                let message = format!(
                    "{} on slot {} failed its health checks: {reason}; rolled back to slot {}",
                    self.running_version,
                    self.running,
                    self.running.other()
                );
                logs::console(&format!("keelson: update: {message}"));
                self.clear_trial();
                self.fail(&self.running_version, &message);
                reboot
            }
            (Err(error), _) => {
                warn!(
                    "update: cannot conclude the trial of slot {}: {error:#}",
                    self.running
                );
                false
            }
        }
    }

    /// Runs the health gate: waits until `check_health` passes (the agent decides what
    /// healthy means: config applied, API up, static pods ready) and blesses the slot, or
    /// rolls back when `timeout` passes first. Returns true when the slot was blessed.
    pub async fn health_gate<Check, Checked>(
        self: Arc<Self>,
        check_health: Check,
        timeout: Duration,
    ) -> bool
    where
        Check: Fn() -> Checked,
        Checked: std::future::Future<Output = Result<(), String>>,
    {
        let uptime = Duration::from_secs(keelson_linux::clock::uptime_seconds());
        let deadline = Instant::now() + timeout.saturating_sub(uptime);
        info!(
            slot = %self.running,
            "update: slot on trial; health checks decide within {} s of boot",
            timeout.as_secs()
        );
        let verdict = loop {
            let health = check_health().await;
            if health.is_ok() || Instant::now() >= deadline {
                break health;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let engine = self.clone();
        let reboot = tokio::task::spawn_blocking(move || engine.conclude_trial(verdict))
            .await
            .unwrap_or(false);
        if reboot {
            keelson_linux::ask_pid1(
                keelson_contract::pid1::reboot_signal(),
                "reboot to roll back",
            );
        }
        !reboot && self.is_running_good()
    }

    /// True when the running slot is blessed.
    pub fn is_running_good(&self) -> bool {
        self.status()
            .map(|view| {
                view.slots
                    .iter()
                    .any(|slot| slot.slot == view.running && slot.state == SlotState::Good)
            })
            .unwrap_or(false)
    }

    /// The health timeout of a config (its `update.healthTimeoutSeconds`).
    pub fn health_timeout(policy: Option<&keelson_config::model::UpdatePolicy>) -> Duration {
        Duration::from_secs(
            policy
                .and_then(|update| update.health_timeout_seconds)
                .unwrap_or(DEFAULT_HEALTH_TIMEOUT_SECS),
        )
    }
}

/// The bundle's own errors come first: a truncated or corrupted artifact is named as such
/// even when it surfaced inside an ESP operation.
fn bundle_error_first(error: anyhow::Error) -> UpdateError {
    match error.downcast::<BundleError>() {
        Ok(bundle) => UpdateError::Bundle(bundle),
        Err(other) => UpdateError::Io(other),
    }
}

/// Opens a slot partition for writing, exclusively: the kernel refuses when anything holds
/// it (the running slot is held by dm-verity), a second guard besides the slot machine's.
fn open_exclusive(path: &std::path::Path) -> anyhow::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open(path)
        .with_context(|| format!("opening {} for writing", path.display()))
}

/// Hashes the first `size` bytes of `path` as stored on the disk (the page cache is
/// dropped first) and compares them with `sha256`.
fn verify_on_disk(path: &std::path::Path, size: u64, sha256: &str) -> anyhow::Result<()> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: posix_fadvise only advises the kernel about this open descriptor.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
    file.seek(SeekFrom::Start(0))?;
    let (digest, read) = bundle::sha256_of(file.take(size))?;
    anyhow::ensure!(
        read == size,
        "{} holds {read} bytes, {size} were written",
        path.display()
    );
    anyhow::ensure!(
        digest == sha256,
        "{} does not read back as written (SHA-256 {digest}, expected {sha256})",
        path.display()
    );
    Ok(())
}
