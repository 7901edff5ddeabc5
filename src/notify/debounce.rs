//! Which state changes are sent, and together. A change is sent once it has held for
//! `after` (a check flapping faster than that sends nothing); changes confirmed within one
//! `group` window of the first go in one message (Redis down takes the celery check with
//! it a probe later: one message, not two). A check's first report, healthy, and a
//! worker's first heartbeat are where things start, not news; a recovery says how long the
//! incident lasted (from when the subject left a good state to when it came back).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::event::{Event, Subject};

/// Subjects remembered at most (workers come and go); past it, the settled ones go.
const MAX_SUBJECTS: usize = 1024;

/// A change to send: the event, `from` being the last state sent (not the last seen), and
/// for a recovery how long the incident lasted.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub event: Event,
    pub lasted: Option<Duration>,
}

#[derive(Debug, Default)]
struct State {
    /// The last state sent (or started from).
    confirmed: Option<&'static str>,
    /// A change seen, and since when it holds.
    pending: Option<(Event, Instant)>,
    /// When the subject left a good state, while it is not back.
    incident: Option<SystemTime>,
}

#[derive(Debug)]
pub struct Debounce {
    after: Duration,
    group: Duration,
    subjects: HashMap<Subject, State>,
    outgoing: Vec<Notice>,
    deadline: Option<Instant>,
}

impl Debounce {
    pub fn new(after: Duration, group: Duration) -> Debounce {
        Debounce {
            after,
            group,
            subjects: HashMap::new(),
            outgoing: Vec::new(),
            deadline: None,
        }
    }

    /// A change seen at `now`.
    pub fn event(&mut self, e: Event, now: Instant) {
        if self.subjects.len() >= MAX_SUBJECTS && !self.subjects.contains_key(&e.subject) {
            self.subjects
                .retain(|_, s| s.pending.is_some() || s.incident.is_some());
        }
        let state = self.subjects.entry(e.subject.clone()).or_default();
        let first = state.confirmed.is_none() && state.pending.is_none();
        if first && e.from.is_none() && matches!(e.to, "healthy" | "up") {
            state.confirmed = Some(e.to);
            return;
        }
        if state.confirmed == Some(e.to) {
            // Back before it held: nothing to say.
            state.pending = None;
            return;
        }
        // The newest state must hold; a pending one of another kind is replaced (and its
        // time with it).
        if let Some((p, _)) = state.pending.as_mut().filter(|(p, _)| p.to == e.to) {
            *p = e;
        } else {
            state.pending = Some((e, now));
        }
    }

    /// The changes that held by `now`; a group to send once its window has passed.
    pub fn tick(&mut self, now: Instant) -> Option<Vec<Notice>> {
        let mut confirmed: Vec<Notice> = Vec::new();
        for state in self.subjects.values_mut() {
            let Some((e, _)) = state
                .pending
                .take_if(|(_, since)| now >= *since + self.after)
            else {
                continue;
            };
            // Good after good (a first report that settled, such as the celery check's
            // grace while heartbeats come in): nothing happened to anyone.
            let was_bad = state
                .confirmed
                .is_some_and(|c| !matches!(c, "healthy" | "up"));
            if !e.is_bad() && !was_bad {
                state.confirmed = Some(e.to);
                continue;
            }
            let lasted = if e.is_bad() {
                if state.incident.is_none() {
                    state.incident = Some(e.at);
                }
                None
            } else {
                state
                    .incident
                    .take()
                    .map(|s| e.at.duration_since(s).unwrap_or_default())
            };
            let event = Event {
                from: state.confirmed,
                ..e
            };
            state.confirmed = Some(event.to);
            confirmed.push(Notice { event, lasted });
        }
        if !confirmed.is_empty() {
            confirmed.sort_by_key(|n| n.event.at);
            self.outgoing.extend(confirmed);
            self.deadline.get_or_insert(now + self.group);
        }
        match self.deadline {
            Some(d) if now >= d => {
                self.deadline = None;
                Some(std::mem::take(&mut self.outgoing))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
