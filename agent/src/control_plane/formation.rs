//! Formation in the agent: the machine of `keelson_control::formation` on the gossip
//! view and the messages of the others, its record on STATE.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use keelson_api::cluster::FormationRequest;
use keelson_control::formation::{Formation, Input, Message, Output, Record};
use keelson_raft::types::node_id;
use keelson_raft::NodeAddr;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{peers_of, ControlPlane, FORMATION_WAIT, TICK};

/// The formation loop: the machine on the gossip view and the messages of the others,
/// until this node is in a cluster; after that it only answers, so that a late candidate
/// learns that a cluster exists.
pub(super) async fn form(
    control: Arc<ControlPlane>,
    mut inbox: mpsc::Receiver<(String, Message)>,
    record_path: PathBuf,
) {
    let record = match load_record(&record_path) {
        Ok(record) => record,
        Err(problem) => {
            warn!("cluster: formation cannot run: {problem}");
            *control.formation_state.lock().unwrap() = problem;
            return;
        }
    };
    let wanted = control.cluster.control_planes() as usize;
    let mut machine = Formation::new(control.me.clone(), control.cluster.role, wanted, record);
    let started = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    loop {
        let inputs = tokio::select! {
            _ = tick.tick() => {
                if control.in_cluster() {
                    vec![Input::ClusterExists]
                } else {
                    let view = peers_of(&control.gossip.members(), &HashMap::new(), Instant::now());
                    let mut inputs = vec![Input::View(view)];
                    if started.elapsed() >= FORMATION_WAIT {
                        inputs.push(Input::WaitOver);
                    }
                    inputs.push(Input::Retry);
                    inputs
                }
            }
            received = inbox.recv() => match received {
                Some((from, message)) => vec![Input::Received { from, message }],
                None => return,
            },
        };
        for input in inputs {
            let outputs = machine.handle(input);
            if let Err(problem) = perform(&control, &record_path, outputs).await {
                warn!("cluster: formation stopped: {problem}");
                *control.formation_state.lock().unwrap() = problem;
                return;
            }
        }
        *control.formation_state.lock().unwrap() = describe(&machine, wanted, started);
    }
}

/// What formation is doing, in a line for `cluster status`.
pub(super) fn describe(machine: &Formation, wanted: usize, started: Instant) -> String {
    if machine.is_over() {
        return String::new();
    }
    if let Some(voters) = machine.candidacy() {
        return format!(
            "forming the cluster: this node stands with voters {}",
            voters.join(", ")
        );
    }
    if let Some(promise) = &machine.record().promise {
        return format!("forming the cluster: supporting {}", promise.candidate);
    }
    let waited = started.elapsed();
    if waited < FORMATION_WAIT {
        format!(
            "forming the cluster: waiting to see {wanted} eligible nodes, for {} s more",
            (FORMATION_WAIT - waited).as_secs()
        )
    } else {
        "forming the cluster: waiting for the best-ranked eligible node to stand".into()
    }
}

/// Carries out the machine's outputs in order: a record is on STATE before anything
/// after it is sent.
pub(super) async fn perform(
    control: &Arc<ControlPlane>,
    record_path: &Path,
    outputs: Vec<Output>,
) -> Result<(), String> {
    for output in outputs {
        match output {
            Output::Save(record) => save_record(record_path, &record)?,
            Output::Send { to, message } => {
                let control = control.clone();
                tokio::spawn(async move { send_formation(&control, &to, &message).await });
            }
            Output::Initialise { voters } => initialise(control, &voters).await?,
        }
    }
    Ok(())
}

/// Initialises Raft with `voters`: the one moment formation exists for.
pub(super) async fn initialise(control: &ControlPlane, voters: &[String]) -> Result<(), String> {
    let local = control
        .local
        .as_ref()
        .ok_or("a worker cannot initialise the cluster")?;
    let mut members = BTreeMap::new();
    for name in voters {
        let api = control
            .endpoint_of(name)
            .ok_or_else(|| format!("gossip lost {name}'s API address"))?;
        members.insert(
            node_id(name),
            NodeAddr {
                name: name.clone(),
                api,
            },
        );
    }
    match local.raft.initialize(members).await {
        Ok(()) => {
            info!(
                "cluster: initialised the control plane with voters {}",
                voters.join(", ")
            );
            Ok(())
        }
        // Initialised before a restart that lost nothing but this run: the record says so.
        Err(error) => {
            warn!("cluster: Raft refused to initialise: {error}");
            Ok(())
        }
    }
}

/// Sends one formation message; a loss is made good by the machine's retries.
pub(super) async fn send_formation(control: &ControlPlane, to: &str, message: &Message) {
    let Some(endpoint) = control.endpoint_of(to) else {
        debug!("cluster: no API address for {to} yet; formation retries");
        return;
    };
    let request = FormationRequest {
        from: control.me.clone(),
        message: serde_json::to_vec(message).unwrap_or_default(),
    };
    let sent = match control.peers.client(&endpoint).await {
        Ok(mut client) => client
            .formation(request)
            .await
            .map(drop)
            .map_err(|status| status.message().to_owned()),
        Err(error) => Err(error.to_string()),
    };
    if let Err(problem) = sent {
        control.peers.forget(&endpoint);
        debug!("cluster: formation message to {to} failed: {problem}");
    }
}

/// The record on STATE, or a fresh one on first boot.
pub(super) fn load_record(path: &Path) -> Result<Record, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| {
            format!(
                "{} is damaged ({error}); with the node out of any cluster, remove it to form anew",
                path.display()
            )
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
        Err(error) => Err(format!("cannot read {}: {error}", path.display())),
    }
}

/// Writes the record durably (synced) before the messages that depend on it go out.
pub(super) fn save_record(path: &Path, record: &Record) -> Result<(), String> {
    if let Some(directory) = path.parent() {
        std::fs::create_dir_all(directory)
            .map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
    }
    let bytes = serde_json::to_vec(record).map_err(|error| error.to_string())?;
    keelson_linux::durable::write(path, &bytes).map_err(|error| {
        format!(
            "cannot keep the formation record in {}: {error}",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_formation_record_survives_a_restart_and_a_damaged_one_is_named() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("cluster/formation.json");
        assert_eq!(load_record(&path).unwrap(), Record::default());
        let record = Record {
            promise: Some(keelson_control::formation::Promise {
                candidate: "node-1".into(),
                attempt: 2,
            }),
            attempts: 0,
            initialised: None,
        };
        save_record(&path, &record).unwrap();
        assert_eq!(load_record(&path).unwrap(), record);
        std::fs::write(&path, "{").unwrap();
        let problem = load_record(&path).unwrap_err();
        assert!(problem.contains("is damaged"), "{problem}");
        assert!(problem.contains("remove it"), "{problem}");
    }
}
