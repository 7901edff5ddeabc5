//! The task book: turns task events into counter labels. Most events carry only the task
//! id, so the name (from task-sent or task-received) and the queue (from task-sent only)
//! are remembered per id, in a bounded map. Label values, and their combinations, are
//! capped too, so that garbage on the channel cannot grow the series without bound.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::event::{TaskEvent, TaskKind};

/// Task ids remembered at most (oldest first out): those sent but not yet ended. With a
/// backlog deeper than this, the oldest tasks' later events lose their queue label.
pub const MAX_IDS: usize = 8192;
/// Distinct task names, queue names and exception classes used as label values at most,
/// and distinct (name, queue) and (name, queue, exception) combinations; beyond, `other`.
pub const MAX_NAMES: usize = 500;
pub const MAX_QUEUES: usize = 200;
pub const MAX_EXCEPTIONS: usize = 100;
pub const MAX_PAIRS: usize = 1000;
pub const MAX_TRIPLES: usize = 1000;
/// The label for what an event did not say and nothing remembered.
pub const UNKNOWN: &str = "unknown";
/// The label for a value beyond a cap.
pub const OTHER: &str = "other";

#[derive(Debug, Clone)]
struct Known {
    name: Option<Arc<str>>,
    queue: Option<Arc<str>>,
    /// Which entry of `order` is this id's, so a stale entry evicts nothing.
    seq: u64,
}

/// A capped set of label values (or combinations of them).
#[derive(Debug)]
struct Capped<T> {
    seen: HashSet<T>,
    cap: usize,
}

impl<T: std::hash::Hash + Eq + Clone> Capped<T> {
    fn new(cap: usize) -> Capped<T> {
        Capped {
            seen: HashSet::new(),
            cap,
        }
    }

    /// True when `value` is (or may now be) one of the admitted values.
    fn admit(&mut self, value: &T) -> bool {
        if self.seen.contains(value) {
            return true;
        }
        if self.seen.len() < self.cap {
            self.seen.insert(value.clone());
            return true;
        }
        false
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
    order: VecDeque<(String, u64)>,
    next_seq: u64,
    names: Capped<String>,
    queues: Capped<String>,
    exceptions: Capped<String>,
    pairs: Capped<(String, String)>,
    triples: Capped<(String, String, String)>,
    /// Task-succeeded and task-failed events heard.
    succeeded: u64,
    failed: u64,
}

impl Default for TaskBook {
    fn default() -> Self {
        TaskBook {
            known: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            names: Capped::new(MAX_NAMES),
            queues: Capped::new(MAX_QUEUES),
            exceptions: Capped::new(MAX_EXCEPTIONS),
            pairs: Capped::new(MAX_PAIRS),
            triples: Capped::new(MAX_TRIPLES),
            succeeded: 0,
            failed: 0,
        }
    }
}

fn label(capped: &mut Capped<String>, value: Option<&str>) -> String {
    let value = value.unwrap_or(UNKNOWN).to_string();
    if capped.admit(&value) {
        value
    } else {
        OTHER.to_string()
    }
}

impl TaskBook {
    /// Records what the event says about its task and returns its labels.
    pub fn record(&mut self, e: &TaskEvent) -> Count {
        match e.kind {
            TaskKind::Succeeded => self.succeeded += 1,
            TaskKind::Failed => self.failed += 1,
            _ => {}
        }
        if !self.known.contains_key(&e.uuid) {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.known.insert(
                e.uuid.clone(),
                Known {
                    name: None,
                    queue: None,
                    seq,
                },
            );
            self.order.push_back((e.uuid.clone(), seq));
            while self.known.len() > MAX_IDS {
                let Some((old, seq)) = self.order.pop_front() else {
                    break;
                };
                if self.known.get(&old).is_some_and(|k| k.seq == seq) {
                    self.known.remove(&old);
                }
            }
            // Entries of ids that ended are stale; keep the queue from growing with them.
            if self.order.len() > 2 * MAX_IDS {
                let known = &self.known;
                self.order
                    .retain(|(id, seq)| known.get(id).is_some_and(|k| k.seq == *seq));
            }
        }
        let known = self.known.get_mut(&e.uuid).expect("inserted above");
        if let Some(name) = &e.name {
            known.name = Some(Arc::from(name.as_str()));
        }
        if let Some(queue) = &e.queue {
            known.queue = Some(Arc::from(queue.as_str()));
        }
        let (name, queue) = (known.name.clone(), known.queue.clone());
        // A task that ended needs no more remembering; a failure may still be followed by
        // its task-rejected, and a retry is received again under the same id.
        if matches!(
            e.kind,
            TaskKind::Succeeded | TaskKind::Rejected | TaskKind::Revoked
        ) {
            self.known.remove(&e.uuid);
        }
        let mut name = label(&mut self.names, name.as_deref());
        let mut queue = label(&mut self.queues, queue.as_deref());
        if !self.pairs.admit(&(name.clone(), queue.clone())) {
            (name, queue) = (OTHER.to_string(), OTHER.to_string());
        }
        let exception = (e.kind == TaskKind::Failed).then(|| {
            let exception = label(&mut self.exceptions, e.exception.as_deref());
            if self
                .triples
                .admit(&(name.clone(), queue.clone(), exception.clone()))
            {
                exception
            } else {
                OTHER.to_string()
            }
        });
        Count {
            kind: e.kind,
            name,
            queue,
            exception,
            runtime: e.runtime,
        }
    }

    /// Ids remembered now (bounded by `MAX_IDS`).
    /// Tasks heard to succeed and to fail so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.succeeded, self.failed)
    }

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
    fn a_rejection_after_a_failure_keeps_its_labels() {
        let mut book = TaskBook::default();
        let mut received = ev(TaskKind::Received, "t3");
        received.name = Some("tasks.rejectme".into());
        book.record(&received);
        book.record(&ev(TaskKind::Failed, "t3"));
        assert_eq!(
            book.record(&ev(TaskKind::Rejected, "t3")).name,
            "tasks.rejectme"
        );
        assert_eq!(book.remembered(), 0);
    }

    #[test]
    fn combinations_are_capped_too() {
        let mut book = TaskBook::default();
        let mut others = 0;
        for n in 0..100 {
            for q in 0..20 {
                let mut sent = ev(TaskKind::Sent, &format!("{n}-{q}"));
                sent.name = Some(format!("n{n}"));
                sent.queue = Some(format!("q{q}"));
                let c = book.record(&sent);
                if c.name == OTHER {
                    assert_eq!(c.queue, OTHER);
                    others += 1;
                }
            }
        }
        assert_eq!(others, 100 * 20 - MAX_PAIRS);
    }

    #[test]
    fn a_re_sent_id_is_not_evicted_by_its_old_entry() {
        let mut book = TaskBook::default();
        let mut a = ev(TaskKind::Sent, "a");
        a.queue = Some("q1".into());
        book.record(&a);
        book.record(&ev(TaskKind::Succeeded, "a"));
        for i in 0..(MAX_IDS - 10) {
            book.record(&ev(TaskKind::Sent, &format!("x{i}")));
        }
        // Sent again, late: its old entry still heads the queue.
        let mut again = ev(TaskKind::Sent, "a");
        again.queue = Some("q2".into());
        book.record(&again);
        for i in 0..20 {
            book.record(&ev(TaskKind::Sent, &format!("y{i}")));
        }
        assert_eq!(book.remembered(), MAX_IDS);
        assert_eq!(book.record(&ev(TaskKind::Started, "a")).queue, "q2");
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
