//! One state change of a check or a worker: what the history keeps, `/api/events` lists and
//! a notification carries.

use std::time::SystemTime;

use serde::Serialize;

use crate::text::rfc3339;

/// One state change of a check or a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at: SystemTime,
    pub subject: Subject,
    /// `None` for a check's first report (or a worker's first heartbeat).
    pub from: Option<&'static str>,
    pub to: &'static str,
    /// The fixed cause (`connect`, `auth`, ...), when there is one.
    pub reason: Option<&'static str>,
    pub sentence: Option<String>,
    pub fix: Option<String>,
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// The checks a runner publishes under (a target with two roles has two).
    Checks(Vec<String>),
    Worker(String),
}

impl Subject {
    /// `redis:cache, redis:broker`, or `Celery worker w1@host`.
    pub fn named(&self) -> String {
        match self {
            Subject::Checks(c) => c.join(", "),
            Subject::Worker(w) => format!("Celery worker {w}"),
        }
    }
}

/// The JSON record of an event, as `/api/events` and the `json` notifications write it.
#[derive(Serialize)]
pub struct EventDoc<'a> {
    pub at: String,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<&'a str>,
    pub from: Option<&'static str>,
    pub to: &'static str,
    pub reason: Option<&'static str>,
    pub sentence: Option<&'a str>,
    pub fix: Option<&'a str>,
}

impl Event {
    pub fn doc(&self) -> EventDoc<'_> {
        let (kind, checks, worker) = match &self.subject {
            Subject::Checks(c) => ("check", Some(c.as_slice()), None),
            Subject::Worker(w) => ("worker", None, Some(w.as_str())),
        };
        EventDoc {
            at: rfc3339(self.at),
            kind,
            checks,
            worker,
            from: self.from,
            to: self.to,
            reason: self.reason,
            sentence: self.sentence.as_deref(),
            fix: self.fix.as_deref(),
        }
    }

    /// A state that needs someone: unhealthy, degraded, a worker down.
    pub fn is_bad(&self) -> bool {
        matches!(self.to, "unhealthy" | "degraded" | "down")
    }
}
