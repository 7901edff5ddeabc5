//! The task book: turns task events into counter labels. Most events carry only the task
//! id, so the name (from task-sent or task-received) and the queue (from task-sent only)
//! are remembered per id, in a bounded map. Label values are capped too, so that garbage
//! on the channel cannot grow the series without bound.

use std::collections::{HashMap, HashSet, VecDeque};

use super::event::{TaskEvent, TaskKind};

/// Task ids remembered at most (FIFO beyond that): the ones in flight in practice.
pub const MAX_IDS: usize = 4096;
/// Distinct task names, queue names and exception classes used as label values at most;
/// beyond, `other`.
pub const MAX_NAMES: usize = 500;
pub const MAX_QUEUES: usize = 200;
pub const MAX_EXCEPTIONS: usize = 100;
/// The label for what an event did not say and nothing remembered.
pub const UNKNOWN: &str = "unknown";
/// The label for a value beyond a cap.
pub const OTHER: &str = "other";

#[derive(Debug, Default, Clone)]
struct Known {
    name: Option<String>,
    queue: Option<String>,
}

/// A capped set of label values.
#[derive(Debug)]
struct Labels {
    seen: HashSet<String>,
    cap: usize,
}

impl Labels {
    fn new(cap: usize) -> Labels {
        Labels {
            seen: HashSet::new(),
            cap,
        }
    }

    fn admit(&mut self, value: &str) -> String {
        if self.seen.contains(value) {
            return value.to_string();
        }
        if self.seen.len() < self.cap {
            self.seen.insert(value.to_string());
            return value.to_string();
        }
        OTHER.to_string()
    }
}

/// What one task event adds to the counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Count {
    pub kind: TaskKind,
    pub name: String,
    pub queue: String,
    /// On failures: the exception class.
    pub exception: Option<String>,
    /// On successes: seconds.
    pub runtime: Option<f64>,
}

#[derive(Debug)]
pub struct TaskBook {
    known: HashMap<String, Known>,
    order: VecDeque<String>,
    names: Labels,
    queues: Labels,
    exceptions: Labels,
}

impl Default for TaskBook {
    fn default() -> Self {
        TaskBook {
            known: HashMap::new(),
            order: VecDeque::new(),
            names: Labels::new(MAX_NAMES),
            queues: Labels::new(MAX_QUEUES),
            exceptions: Labels::new(MAX_EXCEPTIONS),
        }
    }
}

impl TaskBook {
    /// Records what the event says about its task and returns its labels.
    pub fn record(&mut self, e: &TaskEvent) -> Count {
        if !self.known.contains_key(&e.uuid) {
            self.known.insert(e.uuid.clone(), Known::default());
            self.order.push_back(e.uuid.clone());
            while self.order.len() > MAX_IDS {
                if let Some(old) = self.order.pop_front() {
                    self.known.remove(&old);
                }
            }
        }
        let known = self.known.entry(e.uuid.clone()).or_default();
        if e.name.is_some() {
            known.name = e.name.clone();
        }
        if e.queue.is_some() {
            known.queue = e.queue.clone();
        }
        let (name, queue) = (known.name.clone(), known.queue.clone());
        // A task that ended needs no more remembering (a retry is received again).
        if matches!(
            e.kind,
            TaskKind::Succeeded | TaskKind::Failed | TaskKind::Rejected | TaskKind::Revoked
        ) {
            self.known.remove(&e.uuid);
        }
        Count {
            kind: e.kind,
            name: self.names.admit(name.as_deref().unwrap_or(UNKNOWN)),
            queue: self.queues.admit(queue.as_deref().unwrap_or(UNKNOWN)),
            exception: (e.kind == TaskKind::Failed).then(|| {
                self.exceptions
                    .admit(e.exception.as_deref().unwrap_or(UNKNOWN))
            }),
            runtime: e.runtime,
        }
    }

    /// Ids remembered now (bounded by `MAX_IDS`).
    pub fn remembered(&self) -> usize {
        self.known.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: TaskKind, uuid: &str) -> TaskEvent {
        TaskEvent {
            kind,
            uuid: uuid.into(),
            name: None,
            queue: None,
            exception: None,
            runtime: None,
        }
    }

    #[test]
    fn name_and_queue_follow_the_id() {
        let mut book = TaskBook::default();
        let mut sent = ev(TaskKind::Sent, "t1");
        sent.name = Some("tasks.add".into());
        sent.queue = Some("emails".into());
        assert_eq!(book.record(&sent).queue, "emails");
        let started = book.record(&ev(TaskKind::Started, "t1"));
        assert_eq!(
            (started.name.as_str(), started.queue.as_str()),
            ("tasks.add", "emails")
        );
        let mut done = ev(TaskKind::Succeeded, "t1");
        done.runtime = Some(0.5);
        let c = book.record(&done);
        assert_eq!((c.name.as_str(), c.runtime), ("tasks.add", Some(0.5)));
        assert_eq!(book.remembered(), 0, "an ended task is forgotten");
    }

    #[test]
    fn without_task_sent_the_queue_is_unknown() {
        let mut book = TaskBook::default();
        let mut received = ev(TaskKind::Received, "t2");
        received.name = Some("tasks.sleep".into());
        book.record(&received);
        let mut failed = ev(TaskKind::Failed, "t2");
        failed.exception = Some("ValueError".into());
        let c = book.record(&failed);
        assert_eq!(c.name, "tasks.sleep");
        assert_eq!(c.queue, UNKNOWN);
        assert_eq!(c.exception.as_deref(), Some("ValueError"));
        let orphan = book.record(&ev(TaskKind::Started, "never-seen"));
        assert_eq!(orphan.name, UNKNOWN);
    }

    #[test]
    fn ids_and_labels_are_bounded() {
        let mut book = TaskBook::default();
        for i in 0..(MAX_IDS + 100) {
            let mut e = ev(TaskKind::Received, &format!("id-{i}"));
            e.name = Some(format!("task-{i}"));
            let c = book.record(&e);
            if i >= MAX_NAMES {
                assert_eq!(c.name, OTHER);
            }
        }
        assert_eq!(book.remembered(), MAX_IDS);
        let mut again = ev(TaskKind::Received, "x");
        again.name = Some("task-3".into());
        assert_eq!(
            book.record(&again).name,
            "task-3",
            "a known name keeps its label"
        );
    }
}
