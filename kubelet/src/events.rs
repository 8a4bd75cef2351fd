//! A pod's events, as the kubelet records them and `kubectl describe` shows them. Pure: the
//! times are seconds since the epoch that the caller passes in.
//!
//! An event that repeats one already recorded (same type, reason and message) is not
//! added again: its count grows and its last time moves, as the API server's event
//! correlator folds them ("x5 over 10m"). A pod keeps its newest [`MAX_EVENTS`]; they live
//! with the agent (the API server keeps events for an hour; a restarted agent starts
//! afresh).

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Events kept per pod.
pub const MAX_EVENTS: usize = 64;

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something went wrong.
    Warning,
}

impl EventType {
    /// As Kubernetes spells it.
    pub fn name(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// One event, folded with its repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEvent {
    /// Normal or Warning.
    pub kind: EventType,
    /// `Pulling`, `Pulled`, `Created`, `Started`, `Killing`, `BackOff`, `Failed`, …
    pub reason: String,
    /// What happened, in words.
    pub message: String,
    /// How many times it happened.
    pub count: u32,
    /// When it first happened.
    pub first_seen: u64,
    /// When it last happened.
    pub last_seen: u64,
}

/// A pod's events, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventLog {
    events: Vec<PodEvent>,
}

impl EventLog {
    /// Records that `reason` happened at `at`, folding it into an equal event.
    pub fn record(&mut self, kind: EventType, reason: &str, message: String, at: u64) {
        if let Some(index) = self.events.iter().position(|event| {
            event.kind == kind && event.reason == reason && event.message == message
        }) {
            let mut event = self.events.remove(index);
            event.count = event.count.saturating_add(1);
            event.last_seen = event.last_seen.max(at);
            self.events.push(event);
            return;
        }
        if self.events.len() == MAX_EVENTS {
            self.events.remove(0);
        }
        self.events.push(PodEvent {
            kind,
            reason: reason.to_owned(),
            message,
            count: 1,
            first_seen: at,
            last_seen: at,
        });
    }

    /// The events, oldest (by last time) first.
    pub fn events(&self) -> &[PodEvent] {
        &self.events
    }
}

/// `event` as a `v1/Event` about `pod`, from the kubelet of `node`.
pub fn to_v1(pod: &Pod, event: &PodEvent, node: &str, sequence: usize) -> Event {
    let name = pod.metadata.name.clone().unwrap_or_default();
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{sequence}")),
            namespace: pod.metadata.namespace.clone(),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            ..ObjectReference::default()
        },
        type_: Some(event.kind.name().to_owned()),
        reason: Some(event.reason.clone()),
        message: Some(event.message.clone()),
        count: Some(event.count as i32),
        first_timestamp: Some(crate::status::time(event.first_seen)),
        last_timestamp: Some(crate::status::time(event.last_seen)),
        source: Some(EventSource {
            component: Some("kubelet".into()),
            host: Some(node.to_owned()),
        }),
        reporting_component: Some("kubelet".into()),
        reporting_instance: Some(node.to_owned()),
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_fold_into_one_event_that_moves_to_the_end() {
        let mut log = EventLog::default();
        log.record(EventType::Normal, "Pulled", "present".into(), 10);
        log.record(EventType::Warning, "BackOff", "back-off".into(), 20);
        log.record(EventType::Normal, "Started", "started".into(), 25);
        log.record(EventType::Warning, "BackOff", "back-off".into(), 40);
        let reasons: Vec<(&str, u32, u64, u64)> = log
            .events()
            .iter()
            .map(|event| {
                (
                    event.reason.as_str(),
                    event.count,
                    event.first_seen,
                    event.last_seen,
                )
            })
            .collect();
        assert_eq!(
            reasons,
            [
                ("Pulled", 1, 10, 10),
                ("Started", 1, 25, 25),
                ("BackOff", 2, 20, 40)
            ]
        );
    }

    #[test]
    fn a_pod_keeps_its_newest_events() {
        let mut log = EventLog::default();
        for at in 0..(MAX_EVENTS as u64 + 5) {
            log.record(EventType::Normal, "Started", format!("run {at}"), at);
        }
        assert_eq!(log.events().len(), MAX_EVENTS);
        assert_eq!(log.events()[0].message, "run 5");
    }
}
