//! Lifeguard's suspicion: how long a suspect has to refute, shortened by independent
//! confirmations.
//!
//! SWIM gives a suspect a fixed time to refute before it is declared down; memberlist and
//! foca's LAN settings make it 4·log10(n) probe periods, about 12 s at 1000 nodes. That time
//! guards against one slow or lossy prober: a healthy node must hear of the suspicion and
//! refute it before anyone gives up on it. When several members have failed to reach the
//! suspect on their own, that guard matters less, and waiting the whole time only delays
//! what the cluster already knows. Lifeguard (Dadgar et al., 2018) lets the time shrink
//! with each independent confirmation, from `max` with none to `min` once `wanted` have
//! come in, along a logarithmic curve so that the first confirmations count the most.
//!
//! This module is the bookkeeping alone: which suspicions are open, who has confirmed each,
//! and which are due. It reads no clock; the core hands it the time on its own tick.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::member::NodeId;

/// A suspect's incarnation, as SWIM counts refutations.
pub type Incarnation = foca::Incarnation;

/// The bounds of a suspicion's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuspicionTimes {
    /// The length once `wanted` confirmations have come in.
    pub min: Duration,
    /// The length with no confirmation: the suspecter alone.
    pub max: Duration,
    /// How many confirmations, beyond the first suspicion, bring the length down to `min`.
    pub wanted: u32,
}

impl SuspicionTimes {
    /// The LAN settings: an unconfirmed suspicion lasts as long as memberlist's (`max`,
    /// 4·log10(n) probe periods); three confirmations bring it down to two probe periods,
    /// time enough for a suspect that is alive to answer the confirmers' direct checks.
    pub fn lan(max: Duration, probe_period: Duration) -> SuspicionTimes {
        SuspicionTimes {
            min: (probe_period * 2).min(max),
            max,
            wanted: 3,
        }
    }

    /// How long a suspicion lasts once `confirmations` other members have confirmed it:
    /// `max − (max − min) · ln(c + 1) / ln(wanted + 1)`, never below `min`.
    pub fn length(&self, confirmations: u32) -> Duration {
        if self.wanted == 0 {
            return self.min;
        }
        let counted = confirmations.min(self.wanted);
        let share = f64::from(counted + 1).ln() / f64::from(self.wanted + 1).ln();
        let span = self.max.saturating_sub(self.min).as_secs_f64();
        self.max
            .saturating_sub(Duration::from_secs_f64(span * share))
            .max(self.min)
    }
}

/// One open suspicion, as this node knows it.
#[derive(Debug, Clone)]
struct Open {
    incarnation: Incarnation,
    /// When this node first heard of it, on the core's suspicion clock.
    since: Duration,
    /// The names of the members that found the suspect unreachable.
    suspecters: BTreeSet<String>,
}

/// What [`Suspicions::note`] made of a suspicion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noted {
    /// The first this node heard of the suspect at this incarnation.
    Opened,
    /// A suspecter not heard from before.
    Confirmed,
    /// Nothing new: a suspecter already counted, or an incarnation the suspect has
    /// already refuted.
    Known,
}

/// The suspicions this node is timing.
#[derive(Debug, Clone)]
pub struct Suspicions {
    times: SuspicionTimes,
    open: HashMap<NodeId, Open>,
}

impl Suspicions {
    /// None open yet.
    pub fn new(times: SuspicionTimes) -> Suspicions {
        Suspicions {
            times,
            open: HashMap::new(),
        }
    }

    /// The bounds in use.
    pub fn times(&self) -> SuspicionTimes {
        self.times
    }

    /// `by` found `suspect` (at `incarnation`) unreachable; `now` is the suspicion clock.
    /// A higher incarnation replaces the suspicion (the suspect refuted, and was suspected
    /// again); a lower one is stale and ignored.
    pub fn note(
        &mut self,
        suspect: &NodeId,
        incarnation: Incarnation,
        by: &str,
        now: Duration,
    ) -> Noted {
        let fresh = || Open {
            incarnation,
            since: now,
            suspecters: BTreeSet::from([by.to_owned()]),
        };
        match self.open.get_mut(suspect) {
            None => {
                self.open.insert(suspect.clone(), fresh());
                Noted::Opened
            }
            Some(open) if incarnation > open.incarnation => {
                *open = fresh();
                Noted::Opened
            }
            Some(open) if incarnation < open.incarnation => Noted::Known,
            Some(open) => {
                if open.suspecters.insert(by.to_owned()) {
                    Noted::Confirmed
                } else {
                    Noted::Known
                }
            }
        }
    }

    /// Whether `by` has already been counted against `suspect` at `incarnation`.
    pub fn counted(&self, suspect: &NodeId, incarnation: Incarnation, by: &str) -> bool {
        self.open
            .get(suspect)
            .is_some_and(|open| open.incarnation == incarnation && open.suspecters.contains(by))
    }

    /// Confirmations beyond the first suspicion of `suspect`, if one is open.
    pub fn confirmations(&self, suspect: &NodeId) -> Option<u32> {
        let open = self.open.get(suspect)?;
        Some(u32::try_from(open.suspecters.len()).unwrap_or(u32::MAX) - 1)
    }

    /// The suspicions whose time is up at `now` and that `decider` (this node) counts
    /// among its suspecters, with the incarnation each was about. Only a member that failed
    /// to reach the suspect itself declares it down: SWIM lets a down of any incarnation
    /// win, so one that merely heard of the suspicion, and missed the suspect's refutation,
    /// must not take a live member down for everyone. They stay open until
    /// [`Suspicions::close`].
    pub fn due(&self, now: Duration, decider: &str) -> Vec<(NodeId, Incarnation)> {
        let mut due: Vec<(NodeId, Incarnation)> = self
            .open
            .iter()
            .filter(|(_, open)| open.suspecters.contains(decider))
            .filter(|(_, open)| {
                let confirmations = u32::try_from(open.suspecters.len()).unwrap_or(u32::MAX) - 1;
                now.saturating_sub(open.since) >= self.times.length(confirmations)
            })
            .map(|(suspect, open)| (suspect.clone(), open.incarnation))
            .collect();
        due.sort_by(|left, right| left.0.name.cmp(&right.0.name));
        due
    }

    /// Stops timing `suspect`.
    pub fn close(&mut self, suspect: &NodeId) {
        self.open.remove(suspect);
    }

    /// Keeps only the suspicions `keep` says are still live (the suspect is still known
    /// at that incarnation, and not down).
    pub fn retain(&mut self, mut keep: impl FnMut(&NodeId, Incarnation) -> bool) {
        self.open
            .retain(|suspect, open| keep(suspect, open.incarnation));
    }

    /// Forgets the suspicions older than `age` at `now`, with their suspects: those this
    /// node only heard of, whose end (a refutation or a down) it never heard either.
    pub fn forget_older_than(&mut self, now: Duration, age: Duration) -> Vec<NodeId> {
        let old: Vec<NodeId> = self
            .open
            .iter()
            .filter(|(_, open)| now.saturating_sub(open.since) > age)
            .map(|(suspect, _)| suspect.clone())
            .collect();
        for suspect in &old {
            self.open.remove(suspect);
        }
        old
    }

    /// Whether no suspicion is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times() -> SuspicionTimes {
        SuspicionTimes {
            min: Duration::from_secs(2),
            max: Duration::from_secs(12),
            wanted: 3,
        }
    }

    fn node(name: &str) -> NodeId {
        NodeId::new(name, "10.0.0.1:7946".parse().unwrap(), 1)
    }

    #[test]
    fn the_length_falls_from_max_to_min_as_confirmations_come_in() {
        let times = times();
        assert_eq!(times.length(0), Duration::from_secs(12));
        // ln 2 / ln 4 is one half: the first confirmation takes half the span off.
        assert_eq!(times.length(1), Duration::from_secs(7));
        let two = times.length(2);
        assert!(
            two > Duration::from_secs(2) && two < Duration::from_secs(7),
            "{two:?}"
        );
        assert_eq!(times.length(3), Duration::from_secs(2));
        assert_eq!(times.length(50), Duration::from_secs(2), "never below min");
        let lan = SuspicionTimes::lan(Duration::from_secs(12), Duration::from_secs(1));
        assert_eq!(lan.min, Duration::from_secs(2));
        assert_eq!(
            lan.length(0),
            Duration::from_secs(12),
            "unconfirmed: memberlist's"
        );
    }

    #[test]
    fn a_suspicion_is_due_at_its_shrinking_deadline() {
        let mut suspicions = Suspicions::new(times());
        let suspect = node("n9");
        let at = Duration::from_secs;
        assert_eq!(suspicions.note(&suspect, 4, "n1", at(100)), Noted::Opened);
        assert!(suspicions.due(at(111), "n1").is_empty(), "alone: 12 s");
        assert_eq!(suspicions.due(at(112), "n1"), vec![(suspect.clone(), 4)]);
        assert!(
            suspicions.due(at(112), "n2").is_empty(),
            "a member that only heard of it does not decide"
        );
        assert_eq!(suspicions.note(&suspect, 4, "n1", at(101)), Noted::Known);
        assert_eq!(
            suspicions.note(&suspect, 4, "n2", at(101)),
            Noted::Confirmed
        );
        assert_eq!(suspicions.confirmations(&suspect), Some(1));
        assert!(suspicions.due(at(106), "n1").is_empty());
        assert_eq!(
            suspicions.due(at(107), "n1").len(),
            1,
            "one confirmation: 7 s"
        );
        suspicions.note(&suspect, 4, "n3", at(101));
        suspicions.note(&suspect, 4, "n4", at(101));
        assert!(suspicions.due(at(101), "n1").is_empty(), "never before min");
        assert_eq!(
            suspicions.due(at(102), "n1").len(),
            1,
            "three: min, from the opening"
        );
        assert!(suspicions.counted(&suspect, 4, "n3"));
        assert!(!suspicions.counted(&suspect, 5, "n3"));
    }

    #[test]
    fn a_refutation_starts_the_suspicion_over_and_stale_ones_are_ignored() {
        let mut suspicions = Suspicions::new(times());
        let suspect = node("n9");
        let at = Duration::from_secs;
        suspicions.note(&suspect, 4, "n1", at(0));
        suspicions.note(&suspect, 4, "n2", at(0));
        suspicions.note(&suspect, 4, "n3", at(0));
        assert_eq!(suspicions.note(&suspect, 3, "n5", at(1)), Noted::Known);
        assert_eq!(suspicions.note(&suspect, 5, "n4", at(10)), Noted::Opened);
        assert_eq!(suspicions.confirmations(&suspect), Some(0));
        assert!(
            suspicions.due(at(21), "n4").is_empty(),
            "timed from the new one"
        );
        suspicions.retain(|_, incarnation| incarnation > 5);
        assert!(suspicions.is_empty());
        suspicions.note(&suspect, 6, "n1", at(30));
        suspicions.close(&suspect);
        assert!(suspicions.is_empty());
        suspicions.note(&suspect, 7, "n1", at(40));
        assert!(suspicions.forget_older_than(at(64), at(24)).is_empty());
        assert_eq!(
            suspicions.forget_older_than(at(65), at(24)),
            vec![suspect.clone()]
        );
        assert!(suspicions.is_empty());
        assert_eq!(suspicions.confirmations(&suspect), None);
    }
}
