//! The pod supervisor: one task per pod drives its container's lifecycle
//! (`keelson_runtime::lifecycle`) with the engine, keeps what must survive on STATE, and
//! answers the API with `v1/Pod`s carrying the kubelet's status.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use keelson_runtime::lifecycle::{Action, Container, Event, State};
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, watch};

use crate::engine::{Engine, Found};
use crate::events::{EventLog, EventType};
use crate::status::{self, ContainerFacts};
use crate::store::{PodRecord, PodStore, SavedRun};

/// Why a request about pods failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodsError {
    /// The pod cannot be admitted (bad or unsupported spec).
    Invalid(String),
    /// A pod of that name exists with another spec.
    Conflict(String),
    /// No such pod.
    NotFound(String),
    /// STATE refused.
    Storage(String),
}

impl std::fmt::Display for PodsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PodsError::Invalid(message)
            | PodsError::Conflict(message)
            | PodsError::NotFound(message)
            | PodsError::Storage(message) => f.write_str(message),
        }
    }
}

/// What a pod's task shares with the API.
struct Shared {
    record: PodRecord,
    container: Container,
    facts: ContainerFacts,
    events: EventLog,
}

impl Shared {
    fn container_name(&self) -> String {
        crate::pod::container(&self.record.pod)
            .map(|container| container.name.clone())
            .unwrap_or_default()
    }
}

struct PodHandle {
    shared: Arc<Mutex<Shared>>,
    /// Asks the pod's task to stop it, with a grace period in place of the pod's own.
    delete: mpsc::Sender<Option<u64>>,
    gone: watch::Receiver<bool>,
}

/// The node's pods.
pub struct Kubelet {
    engine: Arc<Engine>,
    store: PodStore,
    pods: Mutex<BTreeMap<(String, String), PodHandle>>,
    host_ip: Mutex<Option<String>>,
    /// Held through an apply, so that two pods are never given the same name or ids.
    admitting: Mutex<()>,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pods = self.pods.lock().map(|pods| pods.len()).unwrap_or(0);
        f.debug_struct("Kubelet").field("pods", &pods).finish()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

impl Kubelet {
    /// Starts the supervisor: every kept pod comes back, its running container found
    /// again or restarted as its policy says.
    pub fn start(engine: Arc<Engine>, store: PodStore) -> Arc<Kubelet> {
        let kubelet = Arc::new(Kubelet {
            engine,
            store,
            pods: Mutex::new(BTreeMap::new()),
            host_ip: Mutex::new(None),
            admitting: Mutex::new(()),
        });
        let (records, problems) = kubelet.store.load_all();
        for problem in problems {
            tracing::warn!("a kept pod cannot be read: {problem}");
        }
        for record in records {
            kubelet.resume(record);
        }
        kubelet.engine.release_unclaimed_pipes();
        kubelet
    }

    /// Sets the node's address (the pods' `hostIP`).
    pub fn set_host_ip(&self, address: Option<String>) {
        if let Ok(mut host_ip) = self.host_ip.lock() {
            *host_ip = address;
        }
    }

    /// Admits `pod` and starts it. Applying a pod that exists with the same spec changes
    /// nothing (returns false); with another spec it is refused, as pods cannot change.
    pub fn apply(self: &Arc<Self>, pod: Pod) -> Result<(Pod, bool), PodsError> {
        let _admitting = self
            .admitting
            .lock()
            .map_err(|_| PodsError::Storage("the pod supervisor's lock is poisoned".into()))?;
        let uid = uuid::Uuid::new_v4().to_string();
        let admitted =
            crate::pod::admit(pod, &uid, status::time(now())).map_err(PodsError::Invalid)?;
        let key = crate::key(&admitted);
        if let Some(existing) = self.get(&key.0, &key.1) {
            if existing.spec == admitted.spec
                && existing.metadata.labels == admitted.metadata.labels
                && existing.metadata.annotations == admitted.metadata.annotations
            {
                return Ok((existing, false));
            }
            return Err(PodsError::Conflict(format!(
                "pod {}/{} exists with another spec; a pod cannot change: delete it first (keelctl delete pod {})",
                key.0, key.1, key.1
            )));
        }
        let host_users = admitted.spec.as_ref().and_then(|spec| spec.host_users);
        let user_namespace = match host_users {
            Some(false) => {
                let held = self.user_blocks_held();
                let block = crate::userns::first_free_block(held).ok_or_else(|| {
                    PodsError::Invalid(format!(
                        "pod {}/{}: every block of node ids for user namespaces is taken \
                         ({} pods with hostUsers: false); delete one first",
                        key.0,
                        key.1,
                        crate::userns::LAST_BLOCK
                    ))
                })?;
                Some(crate::userns::mapping(block))
            }
            _ => None,
        };
        let record = PodRecord {
            pod: admitted,
            container: Default::default(),
            user_namespace,
        };
        self.store.save(&record).map_err(PodsError::Storage)?;
        tracing::info!(pod = %format!("{}/{}", key.0, key.1), "pod admitted");
        self.resume(record);
        self.get(&key.0, &key.1)
            .map(|pod| (pod, true))
            .ok_or_else(|| PodsError::NotFound("the pod vanished as it started".into()))
    }

    /// Every pod (of `namespace`, when given), with its status.
    pub fn list(&self, namespace: Option<&str>) -> Vec<Pod> {
        let Ok(pods) = self.pods.lock() else {
            return Vec::new();
        };
        pods.iter()
            .filter(|((pod_namespace, _), _)| {
                namespace.is_none_or(|namespace| namespace == pod_namespace)
            })
            .map(|(_, handle)| self.view(handle))
            .collect()
    }

    /// One pod with its status.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Pod> {
        let pods = self.pods.lock().ok()?;
        pods.get(&(namespace.to_owned(), name.to_owned()))
            .map(|handle| self.view(handle))
    }

    /// Stops the pod's container (SIGTERM, SIGKILL after the grace period: `grace_seconds`
    /// when given, else the pod's `terminationGracePeriodSeconds`) and forgets it. Returns
    /// the pod as it was last.
    pub async fn delete(
        &self,
        namespace: &str,
        name: &str,
        grace_seconds: Option<u64>,
    ) -> Result<Pod, PodsError> {
        let (delete, mut gone) = {
            let pods = self
                .pods
                .lock()
                .map_err(|_| PodsError::Storage("poisoned".into()))?;
            let handle = pods
                .get(&(namespace.to_owned(), name.to_owned()))
                .ok_or_else(|| PodsError::NotFound(format!("pod {namespace}/{name} not found")))?;
            (handle.delete.clone(), handle.gone.clone())
        };
        let _ = delete.send(grace_seconds).await;
        let _ = gone.wait_for(|gone| *gone).await;
        let handle = self
            .pods
            .lock()
            .ok()
            .and_then(|mut pods| pods.remove(&(namespace.to_owned(), name.to_owned())));
        let last = handle.map(|handle| self.view(&handle));
        last.ok_or_else(|| PodsError::NotFound(format!("pod {namespace}/{name} not found")))
    }

    /// Reads the pod's shared state.
    fn with_pod<T>(
        &self,
        namespace: &str,
        name: &str,
        read: impl FnOnce(&Shared) -> T,
    ) -> Result<T, PodsError> {
        let poisoned = || PodsError::Storage("the pod table is poisoned".into());
        let pods = self.pods.lock().map_err(|_| poisoned())?;
        let handle = pods
            .get(&(namespace.to_owned(), name.to_owned()))
            .ok_or_else(|| PodsError::NotFound(format!("pod {namespace}/{name} not found")))?;
        let shared = handle.shared.lock().map_err(|_| poisoned())?;
        Ok(read(&shared))
    }

    /// The pod's events as `v1/Event`s, oldest first.
    pub fn events(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<k8s_openapi::api::core::v1::Event>, PodsError> {
        let node = nix::unistd::gethostname()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.with_pod(namespace, name, |shared| {
            shared
                .events
                .events()
                .iter()
                .enumerate()
                .map(|(sequence, event)| {
                    crate::events::to_v1(&shared.record.pod, event, &node, sequence)
                })
                .collect()
        })
    }

    /// The log file of the pod's current (or previous) run of `container` (None: the
    /// pod's only one), and whether that run may still write to it.
    pub fn log_file(
        &self,
        namespace: &str,
        name: &str,
        container: Option<&str>,
        previous: bool,
    ) -> Result<(std::path::PathBuf, bool), PodsError> {
        self.with_pod(namespace, name, |shared| {
            let own = crate::pod::container(&shared.record.pod)
                .map(|container| container.name.as_str())
                .unwrap_or_default();
            if let Some(asked) = container.filter(|asked| *asked != own) {
                return Err(PodsError::NotFound(format!(
                    "container {asked} is not valid for pod {name}: its container is {own}"
                )));
            }
            self.log_file_of(shared, name, previous)
        })?
    }

    fn log_file_of(
        &self,
        shared: &Shared,
        name: &str,
        previous: bool,
    ) -> Result<(std::path::PathBuf, bool), PodsError> {
        let runs = shared.record.container.runs;
        let running = shared.record.container.running.is_some();
        if runs == 0 {
            return Err(PodsError::NotFound(format!(
                "container {} in pod {name} has not started yet",
                crate::pod::container(&shared.record.pod)
                    .map(|container| container.name.as_str())
                    .unwrap_or_default()
            )));
        }
        if previous {
            // As the kubelet does: the previous run is the one `lastState` reports, the
            // run before the current one, or, between runs (backing off), the last one.
            let between_runs = matches!(
                shared.container.state,
                State::BackOff { .. } | State::Creating
            );
            let previous = if shared.container.last.is_none() {
                None
            } else if between_runs {
                runs.checked_sub(1)
            } else {
                runs.checked_sub(2)
            };
            let Some(previous) = previous else {
                return Err(PodsError::NotFound(format!(
                    "previous terminated container {} in pod {name} not found",
                    crate::pod::container(&shared.record.pod)
                        .map(|container| container.name.as_str())
                        .unwrap_or_default()
                )));
            };
            return Ok((self.engine.run_log(&shared.record.pod, previous), false));
        }
        Ok((self.engine.run_log(&shared.record.pod, runs - 1), running))
    }

    /// What `exec` needs to run `command` in the pod's running container.
    pub fn exec_spec(
        &self,
        namespace: &str,
        name: &str,
        command: Vec<String>,
        terminal: bool,
    ) -> Result<keelson_runtime::spec::ExecSpec, PodsError> {
        let running = self.with_pod(namespace, name, |shared| {
            shared.record.container.running.clone()
        })?;
        let running = running.ok_or_else(|| {
            PodsError::Invalid(format!(
                "cannot exec into pod {name}: its container is not running (keelctl get pod {name})"
            ))
        })?;
        if command.is_empty() {
            return Err(PodsError::Invalid(
                "exec needs a command (keelctl exec POD -- COMMAND)".into(),
            ));
        }
        self.engine
            .exec_spec(&running, command, terminal)
            .map_err(PodsError::Storage)
    }

    /// The binary that runs container-exec.
    pub fn helper_binary(&self) -> std::path::PathBuf {
        self.engine.helper_binary().to_owned()
    }

    fn view(&self, handle: &PodHandle) -> Pod {
        let host_ip = self.host_ip.lock().ok().and_then(|host_ip| host_ip.clone());
        let Ok(shared) = handle.shared.lock() else {
            return Pod::default();
        };
        let mut pod = shared.record.pod.clone();
        pod.status = Some(status::pod_status(
            &pod,
            &shared.container,
            &shared.facts,
            host_ip.as_deref(),
        ));
        pod
    }

    /// The blocks of node ids the pods' user namespaces hold.
    fn user_blocks_held(&self) -> Vec<u32> {
        let Ok(pods) = self.pods.lock() else {
            return Vec::new();
        };
        pods.values()
            .filter_map(|handle| {
                let shared = handle.shared.lock().ok()?;
                shared
                    .record
                    .user_namespace
                    .as_ref()
                    .map(crate::userns::block_of)
            })
            .collect()
    }

    /// Starts the task of a kept or new pod.
    fn resume(self: &Arc<Self>, record: PodRecord) {
        let key = crate::key(&record.pod);
        let policy = crate::pod::restart_policy(&record.pod);
        let saved = record.container.clone();
        let last = saved.last.map(Into::into);
        let mut pending = Vec::new();
        let state = match (&saved.running, saved.finished) {
            (Some(running), _) => {
                let run = saved.runs.saturating_sub(1);
                match self.engine.find(&record.pod, run, running) {
                    Found::Running => State::Running {
                        pid: running.pid,
                        started_at: running.started_at,
                    },
                    found => {
                        // Met as running, then told how it ended (or that it is gone).
                        let (exit_code, oom_killed) = match found {
                            Found::Exited(status) => {
                                (status.code(), self.engine.oom_killed(&record.pod))
                            }
                            _ => (137, false),
                        };
                        pending.push(Event::Exited {
                            exit_code,
                            oom_killed,
                            at: now(),
                        });
                        State::Running {
                            pid: running.pid,
                            started_at: running.started_at,
                        }
                    }
                }
            }
            (None, Some(finished)) => State::Terminated(finished.into()),
            (None, None) => State::Creating,
        };
        let container = Container::resume(policy, state, last, saved.restart_count);
        let facts = ContainerFacts {
            image: crate::pod::container(&record.pod)
                .and_then(|container| container.image.clone())
                .unwrap_or_default(),
            image_id: saved.image_id.clone(),
            container_id: saved
                .running
                .as_ref()
                .map(|running| format!("keelson://{}", running.run_id)),
            waiting: None,
            ever_started: saved.first_started_at.is_some(),
            pod_started_at: saved.first_started_at,
        };
        let shared = Arc::new(Mutex::new(Shared {
            record,
            container,
            facts,
            events: EventLog::default(),
        }));
        let (delete_sender, delete_receiver) = mpsc::channel(1);
        let (gone_sender, gone_receiver) = watch::channel(false);
        if let Ok(mut pods) = self.pods.lock() {
            pods.insert(
                key,
                PodHandle {
                    shared: shared.clone(),
                    delete: delete_sender,
                    gone: gone_receiver,
                },
            );
        }
        let worker = Worker {
            kubelet: self.clone(),
            shared,
            exits: None,
            wake: None,
        };
        tokio::spawn(worker.run(pending, delete_receiver, gone_sender));
    }
}

/// One pod's task.
struct Worker {
    kubelet: Arc<Kubelet>,
    shared: Arc<Mutex<Shared>>,
    exits: Option<tokio::task::JoinHandle<Option<keelson_contract::exits::ExitStatus>>>,
    wake: Option<u64>,
}

impl Worker {
    async fn run(
        mut self,
        initial: Vec<Event>,
        mut delete: mpsc::Receiver<Option<u64>>,
        gone: watch::Sender<bool>,
    ) {
        let engine = self.kubelet.engine.clone();
        // A container met running is watched again; one in Creating starts.
        let mut actions = Vec::new();
        if let Some((State::Running { .. }, Some(running))) = self.with(|shared| {
            (
                shared.container.state,
                shared.record.container.running.clone(),
            )
        }) {
            if initial.is_empty() {
                let engine = engine.clone();
                self.exits = Some(tokio::spawn(async move { engine.wait(&running).await }));
            }
        }
        if matches!(
            self.with(|shared| shared.container.state),
            Some(State::Creating)
        ) {
            actions.push(Action::Start);
        }
        for event in initial {
            actions.extend(self.step(event).await);
        }
        let mut deleting = false;
        loop {
            while let Some(action) = actions.pop() {
                actions.extend(self.perform(action).await);
            }
            let finished = self.with(|shared| {
                matches!(shared.container.state, State::Terminated(_))
                    && shared.record.container.running.is_none()
            });
            if deleting && finished == Some(true) {
                break;
            }
            let wake = self.wake;
            tokio::select! {
                exit = async { self.exits.as_mut().expect("guarded").await }, if self.exits.is_some() => {
                    self.exits = None;
                    let status = exit.ok().flatten();
                    actions.extend(self.ended(status).await);
                }
                request = delete.recv(), if !deleting => {
                    deleting = true;
                    let pods_own = self.with(|shared| crate::pod::grace_seconds(&shared.record.pod)).unwrap_or(30);
                    let grace = request.flatten().unwrap_or(pods_own);
                    if let Ok(mut shared) = self.shared.lock() {
                        if matches!(shared.container.state, State::Running { .. }) {
                            let message = format!("Stopping container {}", shared.container_name());
                            shared.events.record(EventType::Normal, "Killing", message, now());
                        }
                    }
                    actions.extend(self.step(Event::StopRequested { at: now(), grace_seconds: grace }).await);
                }
                _ = sleep_until(wake), if wake.is_some() => {
                    self.wake = None;
                    actions.extend(self.step(Event::Tick { at: now() }).await);
                }
            }
        }
        let pod = self.with(|shared| shared.record.pod.clone());
        if let Some(pod) = pod {
            engine.forget(&pod);
            let (namespace, name) = crate::key(&pod);
            if let Err(error) = self.kubelet.store.remove(&namespace, &name) {
                tracing::warn!("{error}");
            }
            tracing::info!(pod = %format!("{namespace}/{name}"), "pod deleted");
        }
        let _ = gone.send(true);
    }

    fn with<T>(&self, read: impl FnOnce(&Shared) -> T) -> Option<T> {
        self.shared.lock().ok().map(|shared| read(&shared))
    }

    /// Steps the lifecycle, keeps the result on STATE, returns the actions.
    async fn step(&mut self, event: Event) -> Vec<Action> {
        let Ok(mut shared) = self.shared.lock() else {
            return Vec::new();
        };
        let actions = match shared.container.step(event) {
            Ok(actions) => actions,
            Err(refused) => {
                tracing::warn!("{refused}");
                Vec::new()
            }
        };
        let container = shared.container.clone();
        let saved = &mut shared.record.container;
        saved.restart_count = container.restart_count;
        saved.last = container.last.map(SavedRun::from);
        saved.finished = match container.state {
            State::Terminated(run) => Some(run.into()),
            _ => None,
        };
        if matches!(shared.container.state, State::BackOff { .. }) {
            if let Some((reason, _)) = shared.facts.waiting.as_mut() {
                if reason == "ErrImagePull" {
                    *reason = "ImagePullBackOff".into();
                }
            }
            let message = backoff_message(&shared);
            shared
                .events
                .record(EventType::Warning, "BackOff", message, now());
        }
        if let Err(error) = self.kubelet.store.save(&shared.record) {
            tracing::warn!("{error}");
        }
        actions
    }

    async fn perform(&mut self, action: Action) -> Vec<Action> {
        let engine = self.kubelet.engine.clone();
        match action {
            Action::Start => {
                let Some((pod, run, user_namespace)) = self.with(|shared| {
                    (
                        shared.record.pod.clone(),
                        shared.record.container.runs,
                        shared.record.user_namespace,
                    )
                }) else {
                    return Vec::new();
                };
                let at = now();
                let mut notes = Vec::new();
                let outcome = engine
                    .start(&pod, run, at, user_namespace, &mut notes)
                    .await;
                if let Ok(mut shared) = self.shared.lock() {
                    for (kind, reason, message) in notes {
                        shared.events.record(kind, reason, message, at);
                    }
                    if let Err(failure) = &outcome {
                        let message = format!("Error: {}", failure.reason);
                        shared
                            .events
                            .record(EventType::Warning, "Failed", message, at);
                    }
                }
                match outcome {
                    Ok(started) => {
                        if let Ok(mut shared) = self.shared.lock() {
                            shared.facts.waiting = None;
                            shared.facts.ever_started = true;
                            shared.facts.image_id = Some(started.image_id.clone());
                            shared.facts.container_id =
                                Some(format!("keelson://{}", started.record.run_id));
                            let saved = &mut shared.record.container;
                            saved.runs = run + 1;
                            saved.running = Some(started.record.clone());
                            saved.image_id = Some(started.image_id);
                            saved.first_started_at.get_or_insert(at);
                            shared.facts.pod_started_at = saved.first_started_at;
                        }
                        let record = started.record.clone();
                        let waiter = engine.clone();
                        self.exits = Some(tokio::spawn(async move { waiter.wait(&record).await }));
                        self.step(Event::Started {
                            pid: started.record.pid,
                            at,
                        })
                        .await
                    }
                    Err(failure) => {
                        tracing::warn!(reason = failure.reason, "{}", failure.message);
                        if let Ok(mut shared) = self.shared.lock() {
                            shared.facts.waiting =
                                Some((failure.reason.to_owned(), failure.message));
                        }
                        self.step(Event::CreateFailed { at }).await
                    }
                }
            }
            Action::Terminate(_) | Action::Kill(_) => {
                let signal = if matches!(action, Action::Kill(_)) {
                    Signal::SIGKILL
                } else {
                    Signal::SIGTERM
                };
                if let Some(Some(running)) =
                    self.with(|shared| shared.record.container.running.clone())
                {
                    engine.signal(&running, signal);
                }
                Vec::new()
            }
            Action::WakeAt(at) => {
                self.wake = Some(self.wake.map_or(at, |wake| wake.min(at)));
                Vec::new()
            }
        }
    }

    /// The run's process ended with `status` (None: no record of how).
    async fn ended(&mut self, status: Option<keelson_contract::exits::ExitStatus>) -> Vec<Action> {
        let engine = self.kubelet.engine.clone();
        let Some((pod, running)) = self.with(|shared| {
            (
                shared.record.pod.clone(),
                shared.record.container.running.clone(),
            )
        }) else {
            return Vec::new();
        };
        let oom_killed = engine.oom_killed(&pod);
        if let Some(running) = &running {
            engine.clean_up(&running.run_id, &pod).await;
        }
        if let Ok(mut shared) = self.shared.lock() {
            shared.record.container.running = None;
        }
        let exit_code = status.map(|status| status.code()).unwrap_or(255);
        self.step(Event::Exited {
            exit_code,
            oom_killed,
            at: now(),
        })
        .await
    }
}

/// The kubelet's words for a container held back by its backoff.
fn backoff_message(shared: &Shared) -> String {
    let pulling = shared
        .facts
        .waiting
        .as_ref()
        .is_some_and(|(reason, _)| reason == "ImagePullBackOff");
    if pulling {
        return format!("Back-off pulling image {:?}", shared.facts.image);
    }
    let pod = &shared.record.pod.metadata;
    format!(
        "Back-off restarting failed container {} in pod {}_{}({})",
        shared.container_name(),
        pod.name.as_deref().unwrap_or_default(),
        pod.namespace.as_deref().unwrap_or_default(),
        pod.uid.as_deref().unwrap_or_default()
    )
}

async fn sleep_until(at: Option<u64>) {
    let wait = at.map(|at| at.saturating_sub(now())).unwrap_or(0);
    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
}
