//! The store: objects by key, written by commands in log order, with a bounded history of
//! events for watches.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::key::{Key, KindRef};

/// Events kept for watches by default: a watcher that falls further behind lists again.
pub const DEFAULT_HISTORY: usize = 4096;

/// One write, as the leader proposes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// The leader's clock when it proposed the write, in milliseconds since the Unix epoch.
    pub at_millis: i64,
    /// The write.
    pub op: Op,
}

/// A write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Creates an object that must not exist yet.
    Create(Value),
    /// Replaces an object that must exist; if the object names a resourceVersion, it must
    /// be the current one.
    Update(Value),
    /// Creates the object, or replaces it whatever its version (a node's own status).
    Apply(Value),
    /// Deletes an object; if a resourceVersion is given, it must be the current one.
    Delete {
        /// Which object.
        key: Key,
        /// The version the writer last saw.
        resource_version: Option<u64>,
    },
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// The object as stored (metadata filled in).
    Written(Value),
    /// The object as it was before it was deleted.
    Deleted(Value),
    /// Nothing was written, and why.
    Refused(Refusal),
}

/// Why a write was refused. Every replica refuses the same writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// Create of an object that exists.
    AlreadyExists(Key),
    /// Update or delete of an object that does not exist.
    NotFound(Key),
    /// The writer's resourceVersion is not the object's.
    Conflict {
        /// Which object.
        key: Key,
        /// The version the writer named.
        expected: u64,
        /// The object's version.
        actual: u64,
    },
    /// The object is not one the store can hold.
    Invalid(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::AlreadyExists(key) => write!(f, "{key} already exists"),
            Refusal::NotFound(key) => write!(f, "{key} does not exist"),
            Refusal::Conflict {
                key,
                expected,
                actual,
            } => write!(
                f,
                "{key} has changed: it is at resourceVersion {actual}, not {expected}; \
                 read it again and retry"
            ),
            Refusal::Invalid(reason) => write!(f, "invalid object: {reason}"),
        }
    }
}

/// The kind of change an event reports, as Kubernetes watches name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    /// The object was created.
    Added,
    /// The object was replaced.
    Modified,
    /// The object was deleted.
    Deleted,
}

/// One change, for watchers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The object after the change (before it, for a delete).
    pub object: Value,
    /// The log index of the change.
    #[serde(skip)]
    pub resource_version: u64,
}

/// A watcher asked to resume from a version the history no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// The oldest version a watch can still resume from.
    pub oldest: u64,
}

impl fmt::Display for Expired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the watch's resourceVersion is too old (the oldest kept is {}): list again",
            self.oldest
        )
    }
}

/// The replicated state.
#[derive(Debug, Clone, PartialEq)]
pub struct Store {
    objects: BTreeMap<Key, Value>,
    applied: u64,
    history: VecDeque<Event>,
    history_limit: usize,
    /// Every change after this version is in `history`: a watch may resume from here on.
    /// It moves when an event is dropped, and a restored snapshot starts it at its index
    /// (the changes before it are not known one by one).
    complete_from: u64,
}

impl Default for Store {
    fn default() -> Store {
        Store::new(DEFAULT_HISTORY)
    }
}

impl Store {
    /// An empty store that keeps `history_limit` events for watches.
    pub fn new(history_limit: usize) -> Store {
        Store {
            objects: BTreeMap::new(),
            applied: 0,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            complete_from: 0,
        }
    }

    /// The log index of the last command applied: the store's resourceVersion.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// One object.
    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Every object of a kind (in one namespace, or in all), by key.
    pub fn list<'a>(
        &'a self,
        kind: &KindRef,
        namespace: Option<&str>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        let kind = kind.clone();
        let namespace = namespace.map(str::to_owned);
        self.objects
            .iter()
            .filter(move |(key, _)| {
                key.kind == kind && (namespace.is_none() || key.namespace == namespace)
            })
            .map(|(_, object)| object)
    }

    /// Applies the command at log index `index` (which must grow from call to call).
    pub fn apply(&mut self, index: u64, command: &Command) -> Outcome {
        self.applied = self.applied.max(index);
        let (outcome, event_type) = self.write(index, command);
        match &outcome {
            Outcome::Written(object) | Outcome::Deleted(object) => {
                self.record(event_type, object.clone(), index)
            }
            Outcome::Refused(_) => {}
        }
        outcome
    }

    /// The write itself, and the event it makes (unused when refused).
    fn write(&mut self, index: u64, command: &Command) -> (Outcome, EventType) {
        let refused = |refusal| (Outcome::Refused(refusal), EventType::Modified);
        match &command.op {
            Op::Create(object) | Op::Update(object) | Op::Apply(object) => {
                let key = match Key::of(object) {
                    Ok(key) => key,
                    Err(reason) => return refused(Refusal::Invalid(reason)),
                };
                let current = self.objects.get(&key);
                let event_type = match current {
                    Some(_) => EventType::Modified,
                    None => EventType::Added,
                };
                let stored = match (&command.op, current) {
                    (Op::Create(_), Some(_)) => return refused(Refusal::AlreadyExists(key)),
                    (Op::Update(_), None) => return refused(Refusal::NotFound(key)),
                    (Op::Update(_), Some(current)) => {
                        if let Err(refusal) = check_version(&key, current, version_of(object)) {
                            return refused(refusal);
                        }
                        stamp(object, &key, index, Some(current), command.at_millis)
                    }
                    (_, current) => stamp(object, &key, index, current, command.at_millis),
                };
                self.objects.insert(key, stored.clone());
                (Outcome::Written(stored), event_type)
            }
            Op::Delete {
                key,
                resource_version,
            } => {
                let Some(current) = self.objects.get(key) else {
                    return refused(Refusal::NotFound(key.clone()));
                };
                if let Err(refusal) = check_version(key, current, *resource_version) {
                    return refused(refusal);
                }
                let removed = self.objects.remove(key).expect("present");
                (Outcome::Deleted(removed), EventType::Deleted)
            }
        }
    }

    fn record(&mut self, event_type: EventType, object: Value, index: u64) {
        if self.history.len() == self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.complete_from = dropped.resource_version;
            }
        }
        self.history.push_back(Event {
            event_type,
            object,
            resource_version: index,
        });
    }

    /// The events after `since` of `kind`, oldest first, or [`Expired`] when events after
    /// `since` have already left the history.
    pub fn events_since(&self, kind: &KindRef, since: u64) -> Result<Vec<&Event>, Expired> {
        if since < self.complete_from {
            return Err(Expired {
                oldest: self.complete_from,
            });
        }
        Ok(self
            .history
            .iter()
            .filter(|event| event.resource_version > since)
            .filter(|event| Key::of(&event.object).is_ok_and(|key| &key.kind == kind))
            .collect())
    }

    /// Everything a snapshot holds: the objects and the last index applied. Watches do
    /// not survive a snapshot install; their clients list again.
    pub fn snapshot(&self) -> Vec<u8> {
        let objects: Vec<&Value> = self.objects.values().collect();
        serde_json::to_vec(&json!({"applied": self.applied, "objects": objects}))
            .expect("JSON values serialise")
    }

    /// The store a snapshot describes.
    pub fn restore(bytes: &[u8], history_limit: usize) -> Result<Store, String> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("snapshot is not JSON: {e}"))?;
        let applied = value["applied"]
            .as_u64()
            .ok_or("snapshot has no applied index")?;
        let mut store = Store::new(history_limit);
        store.applied = applied;
        store.complete_from = applied;
        for object in value["objects"]
            .as_array()
            .ok_or("snapshot has no objects")?
        {
            let key = Key::of(object).map_err(|e| format!("snapshot object: {e}"))?;
            store.objects.insert(key, object.clone());
        }
        Ok(store)
    }
}

fn check_version(key: &Key, current: &Value, expected: Option<u64>) -> Result<(), Refusal> {
    let actual = version_of(current).unwrap_or(0);
    match expected {
        Some(expected) if expected != actual => Err(Refusal::Conflict {
            key: key.clone(),
            expected,
            actual,
        }),
        _ => Ok(()),
    }
}

/// The resourceVersion an object carries, as the store writes it (a decimal string); a
/// writer that gives none (or an empty one) names none.
pub fn version_of(object: &Value) -> Option<u64> {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|text| text.parse().ok())
}

/// The object as stored: the writer's object with the store's metadata. A replaced object
/// keeps its uid and creationTimestamp.
fn stamp(object: &Value, key: &Key, index: u64, current: Option<&Value>, at_millis: i64) -> Value {
    let mut stored = object.clone();
    let (uid, created) = match current {
        Some(current) => (
            current
                .pointer("/metadata/uid")
                .cloned()
                .unwrap_or(Value::Null),
            current
                .pointer("/metadata/creationTimestamp")
                .cloned()
                .unwrap_or(Value::Null),
        ),
        None => (
            Value::String(uid(key, index)),
            Value::String(timestamp(at_millis)),
        ),
    };
    let metadata = &mut stored["metadata"];
    metadata["uid"] = uid;
    metadata["creationTimestamp"] = created;
    metadata["resourceVersion"] = Value::String(index.to_string());
    if let Some(namespace) = &key.namespace {
        metadata["namespace"] = Value::String(namespace.clone());
    }
    stored
}

/// A uid in UUID form, the same on every replica: a hash of the key and the creating index
/// in front, the index itself in the last group (so no two objects ever share one).
fn uid(key: &Key, index: u64) -> String {
    let digest = Sha256::digest(key.to_string().as_bytes());
    let hex: String = digest.iter().take(10).map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{:012x}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        index & 0xffff_ffff_ffff
    )
}

/// RFC 3339 in UTC with seconds, as Kubernetes writes timestamps.
fn timestamp(at_millis: i64) -> String {
    let seconds = at_millis.div_euclid(1000);
    match k8s_openapi::jiff::Timestamp::from_second(seconds) {
        Ok(time) => time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => "1970-01-01T00:00:00Z".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"a": "b"}}})
    }

    fn command(op: Op) -> Command {
        Command {
            at_millis: 1_800_000_000_000,
            op,
        }
    }

    fn nodes() -> KindRef {
        KindRef::new("v1", "Node")
    }

    #[test]
    fn the_store_fills_in_metadata_and_versions_grow_with_the_log() {
        let mut store = Store::default();
        let Outcome::Written(created) = store.apply(3, &command(Op::Create(node("lab-1")))) else {
            panic!("not written")
        };
        assert_eq!(created["metadata"]["resourceVersion"], "3");
        assert_eq!(
            created["metadata"]["creationTimestamp"],
            "2027-01-15T08:00:00Z"
        );
        assert_eq!(created["metadata"]["labels"]["a"], "b");
        let uid = created["metadata"]["uid"].as_str().unwrap().to_owned();
        assert_eq!(uid.len(), 36);
        let mut changed = created.clone();
        changed["metadata"]["labels"]["a"] = json!("c");
        let Outcome::Written(updated) = store.apply(5, &command(Op::Update(changed))) else {
            panic!("not written")
        };
        assert_eq!(updated["metadata"]["resourceVersion"], "5");
        assert_eq!(updated["metadata"]["uid"], uid.as_str());
        assert_eq!(store.applied(), 5);
        let events = store.events_since(&nodes(), 0).unwrap();
        let types: Vec<EventType> = events.iter().map(|e| e.event_type).collect();
        assert_eq!(types, [EventType::Added, EventType::Modified]);
    }

    #[test]
    fn writes_with_a_stale_version_or_the_wrong_existence_are_refused() {
        let mut store = Store::default();
        store.apply(1, &command(Op::Create(node("lab-1"))));
        assert_eq!(
            store.apply(2, &command(Op::Create(node("lab-1")))),
            Outcome::Refused(Refusal::AlreadyExists(Key::of(&node("lab-1")).unwrap()))
        );
        let mut stale = node("lab-1");
        stale["metadata"]["resourceVersion"] = json!("0");
        let Outcome::Refused(conflict) = store.apply(3, &command(Op::Update(stale))) else {
            panic!("a stale update went through")
        };
        assert!(
            conflict.to_string().contains("at resourceVersion 1, not 0"),
            "{conflict}"
        );
        let key = Key::of(&node("lab-2")).unwrap();
        assert_eq!(
            store.apply(
                4,
                &command(Op::Delete {
                    key: key.clone(),
                    resource_version: None
                })
            ),
            Outcome::Refused(Refusal::NotFound(key))
        );
        // Refusals write nothing: one event, the create.
        assert_eq!(store.events_since(&nodes(), 0).unwrap().len(), 1);
        assert_eq!(store.applied(), 4);
    }

    #[test]
    fn a_watch_resumes_from_its_version_or_is_told_to_list_again() {
        let mut store = Store::new(2);
        for index in 1..=4 {
            store.apply(index, &command(Op::Apply(node(&format!("n{index}")))));
        }
        let names = |events: Vec<&Event>| -> Vec<String> {
            events
                .iter()
                .map(|e| e.object["metadata"]["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(names(store.events_since(&nodes(), 3).unwrap()), ["n4"]);
        assert_eq!(
            names(store.events_since(&nodes(), 2).unwrap()),
            ["n3", "n4"]
        );
        let expired = store.events_since(&nodes(), 1).unwrap_err();
        assert_eq!(expired, Expired { oldest: 2 });
        assert!(expired.to_string().contains("list again"));
        // A full history that dropped nothing still serves every version.
        let mut full = Store::new(2);
        full.apply(1, &command(Op::Apply(node("a"))));
        full.apply(2, &command(Op::Apply(node("b"))));
        assert_eq!(names(full.events_since(&nodes(), 0).unwrap()), ["a", "b"]);
    }

    #[test]
    fn after_a_snapshot_restore_older_watches_list_again_and_newer_ones_resume() {
        let mut store = Store::new(16);
        for index in 1..=3 {
            store.apply(index, &command(Op::Apply(node(&format!("n{index}")))));
        }
        let mut restored = Store::restore(&store.snapshot(), 16).unwrap();
        // The changes up to 3 are in the objects, not in an event history.
        assert_eq!(
            restored.events_since(&nodes(), 2).unwrap_err(),
            Expired { oldest: 3 }
        );
        assert!(restored.events_since(&nodes(), 3).unwrap().is_empty());
        restored.apply(4, &command(Op::Apply(node("n4"))));
        assert_eq!(restored.events_since(&nodes(), 3).unwrap().len(), 1);
    }

    #[test]
    fn replicas_that_apply_the_same_log_agree_and_a_snapshot_restores_the_objects() {
        let log = [
            command(Op::Create(node("a"))),
            command(Op::Create(node("b"))),
            command(Op::Delete {
                key: Key::of(&node("a")).unwrap(),
                resource_version: Some(1),
            }),
            command(Op::Apply(node("b"))),
        ];
        let mut one = Store::default();
        let mut two = Store::default();
        for (index, command) in log.iter().enumerate() {
            one.apply(index as u64 + 1, command);
            two.apply(index as u64 + 1, command);
        }
        assert_eq!(one, two);
        let restored = Store::restore(&one.snapshot(), DEFAULT_HISTORY).unwrap();
        assert_eq!(restored.applied(), 4);
        let listed: Vec<&Value> = restored.list(&nodes(), None).collect();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0]["metadata"]["resourceVersion"], "4");
        assert_eq!(listed[0], one.get(&Key::of(&node("b")).unwrap()).unwrap());
    }
}
