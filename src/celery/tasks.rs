//! The task book: turns task events into counter labels. Most events carry only the task
//! id, so the name (from task-sent or task-received) and the queue (from task-sent only)
//! are remembered per id, in a bounded map. Label values, and their combinations, are
//! capped too, so that garbage on the channel cannot grow the series without bound.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

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
    /// When task-sent was heard (our clock) and its timestamp (the client's clock).
    sent: Option<(Instant, Option<f64>)>,
    /// The ETA, on the client's clock.
    eta: Option<f64>,
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
    /// On task-started, when its task-sent was heard: seconds from publication (or from
    /// its ETA, when later) to the start.
    pub queue_wait: Option<f64>,
}

/// A task heard to start and not yet heard to end.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    pub id: String,
    /// Its name label (capped like the counters').
    pub name: String,
    /// The worker that started it.
    pub hostname: Option<String>,
    /// When task-started was heard, on our clock.
    pub since: Instant,
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
    /// Tasks started and not ended, by id (at most `MAX_IDS`), and the order they started
    /// in (entries of tasks that ended are skipped when met).
    running: HashMap<String, Running>,
    started: VecDeque<(String, Instant)>,
    /// Every name label that started a task (bounded like the labels).
    started_names: Vec<String>,
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
            running: HashMap::new(),
            started: VecDeque::new(),
            started_names: Vec::new(),
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
    /// Records what the event, heard at `now`, says about its task and returns its labels.
    pub fn record(&mut self, e: &TaskEvent, now: Instant) -> Count {
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
                    sent: None,
                    eta: None,
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
        if e.kind == TaskKind::Sent {
            known.sent = Some((now, e.timestamp));
        }
        if e.eta.is_some() && matches!(e.kind, TaskKind::Sent | TaskKind::Received) {
            known.eta = e.eta;
        }
        // Publication (or the ETA, when later) to start, measured on our clock: both events
        // come in as they happen, so clocks that differ between machines do not matter; the
        // ETA counts from the sending client's own timestamp.
        let queue_wait = (e.kind == TaskKind::Started)
            .then_some(known.sent)
            .flatten()
            .map(|(heard, sent_ts)| {
                let delay = match (known.eta, sent_ts) {
                    (Some(eta), Some(ts)) if eta > ts => Duration::from_secs_f64(eta - ts),
                    _ => Duration::ZERO,
                };
                now.saturating_duration_since(heard + delay).as_secs_f64()
            });
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
        match e.kind {
            TaskKind::Started => {
                while self.running.len() >= MAX_IDS {
                    let Some((id, since)) = self.started.pop_front() else {
                        break;
                    };
                    if self.running.get(&id).is_some_and(|r| r.since == since) {
                        self.running.remove(&id);
                    }
                }
                if self.started.len() > 2 * MAX_IDS {
                    let running = &self.running;
                    self.started
                        .retain(|(id, since)| running.get(id).is_some_and(|r| r.since == *since));
                }
                self.started.push_back((e.uuid.clone(), now));
                if !self.started_names.contains(&name) {
                    self.started_names.push(name.clone());
                }
                self.running.insert(
                    e.uuid.clone(),
                    Running {
                        id: e.uuid.clone(),
                        name: name.clone(),
                        hostname: e.hostname.clone(),
                        since: now,
                    },
                );
            }
            TaskKind::Received => {}
            // Ended, or (retried) to be received again.
            _ => {
                self.running.remove(&e.uuid);
            }
        }
        Count {
            kind: e.kind,
            name,
            queue,
            exception,
            runtime: e.runtime,
            queue_wait,
        }
    }

    /// Tasks running now, oldest first, on workers for which `counts` says yes (a worker
    /// that is down may be lost with its tasks, or only silent: its tasks are left out).
    pub fn running(&self, counts: impl Fn(Option<&str>) -> bool) -> Vec<&Running> {
        let mut v: Vec<&Running> = self
            .running
            .values()
            .filter(|r| counts(r.hostname.as_deref()))
            .collect();
        v.sort_by_key(|r| r.since);
        v
    }

    /// Every name label that started a task so far.
    pub fn started_names(&self) -> &[String] {
        &self.started_names
    }

    /// Takes the running tasks of `hostname` out: it went down with them.
    pub fn take_running_on(&mut self, hostname: &str) -> Vec<Running> {
        let ids: Vec<String> = self
            .running
            .values()
            .filter(|r| r.hostname.as_deref() == Some(hostname))
            .map(|r| r.id.clone())
            .collect();
        let mut taken: Vec<Running> = ids
            .iter()
            .filter_map(|id| self.running.remove(id))
            .collect();
        taken.sort_by_key(|r| r.since);
        taken
    }

    /// Forgets the running tasks of a worker that was forgotten.
    pub fn forget_worker(&mut self, hostname: &str) {
        self.running
            .retain(|_, r| r.hostname.as_deref() != Some(hostname));
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
            hostname: None,
            timestamp: None,
            eta: None,
        }
    }

    #[test]
    fn name_and_queue_follow_the_id() {
        let mut book = TaskBook::default();
        let mut sent = ev(TaskKind::Sent, "t1");
        sent.name = Some("tasks.add".into());
        sent.queue = Some("emails".into());
        assert_eq!(book.record(&sent, Instant::now()).queue, "emails");
        let started = book.record(&ev(TaskKind::Started, "t1"), Instant::now());
        assert_eq!(
            (started.name.as_str(), started.queue.as_str()),
            ("tasks.add", "emails")
        );
        let mut done = ev(TaskKind::Succeeded, "t1");
        done.runtime = Some(0.5);
        let c = book.record(&done, Instant::now());
        assert_eq!((c.name.as_str(), c.runtime), ("tasks.add", Some(0.5)));
        assert_eq!(book.remembered(), 0, "an ended task is forgotten");
    }

    #[test]
    fn without_task_sent_the_queue_is_unknown() {
        let mut book = TaskBook::default();
        let mut received = ev(TaskKind::Received, "t2");
        received.name = Some("tasks.sleep".into());
        book.record(&received, Instant::now());
        let mut failed = ev(TaskKind::Failed, "t2");
        failed.exception = Some("ValueError".into());
        let c = book.record(&failed, Instant::now());
        assert_eq!(c.name, "tasks.sleep");
        assert_eq!(c.queue, UNKNOWN);
        assert_eq!(c.exception.as_deref(), Some("ValueError"));
        let orphan = book.record(&ev(TaskKind::Started, "never-seen"), Instant::now());
        assert_eq!(orphan.name, UNKNOWN);
    }

    #[test]
    fn a_rejection_after_a_failure_keeps_its_labels() {
        let mut book = TaskBook::default();
        let mut received = ev(TaskKind::Received, "t3");
        received.name = Some("tasks.rejectme".into());
        book.record(&received, Instant::now());
        book.record(&ev(TaskKind::Failed, "t3"), Instant::now());
        assert_eq!(
            book.record(&ev(TaskKind::Rejected, "t3"), Instant::now())
                .name,
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
                let c = book.record(&sent, Instant::now());
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
        book.record(&a, Instant::now());
        book.record(&ev(TaskKind::Succeeded, "a"), Instant::now());
        for i in 0..(MAX_IDS - 10) {
            book.record(&ev(TaskKind::Sent, &format!("x{i}")), Instant::now());
        }
        // Sent again, late: its old entry still heads the queue.
        let mut again = ev(TaskKind::Sent, "a");
        again.queue = Some("q2".into());
        book.record(&again, Instant::now());
        for i in 0..20 {
            book.record(&ev(TaskKind::Sent, &format!("y{i}")), Instant::now());
        }
        assert_eq!(book.remembered(), MAX_IDS);
        assert_eq!(
            book.record(&ev(TaskKind::Started, "a"), Instant::now())
                .queue,
            "q2"
        );
    }

    #[test]
    fn ids_and_labels_are_bounded() {
        let mut book = TaskBook::default();
        for i in 0..(MAX_IDS + 100) {
            let mut e = ev(TaskKind::Received, &format!("id-{i}"));
            e.name = Some(format!("task-{i}"));
            let c = book.record(&e, Instant::now());
            if i >= MAX_NAMES {
                assert_eq!(c.name, OTHER);
            }
        }
        assert_eq!(book.remembered(), MAX_IDS);
        let mut again = ev(TaskKind::Received, "x");
        again.name = Some("task-3".into());
        assert_eq!(
            book.record(&again, Instant::now()).name,
            "task-3",
            "a known name keeps its label"
        );
    }

    #[test]
    fn queue_wait_counts_from_publication_or_the_eta() {
        let mut book = TaskBook::default();
        let t0 = Instant::now();
        let mut sent = ev(TaskKind::Sent, "w1");
        sent.queue = Some("celery".into());
        sent.timestamp = Some(1000.0);
        book.record(&sent, t0);
        let mut received = ev(TaskKind::Received, "w1");
        received.eta = None;
        book.record(&received, t0 + Duration::from_millis(10));
        let started = book.record(&ev(TaskKind::Started, "w1"), t0 + Duration::from_secs(3));
        assert_eq!(started.queue_wait, Some(3.0));
        assert_eq!(started.queue, "celery");

        // A countdown of 5 s: the wait counts from the ETA, on the client's clock.
        let mut sent = ev(TaskKind::Sent, "w2");
        sent.timestamp = Some(1000.0);
        sent.eta = Some(1005.0);
        book.record(&sent, t0);
        let started = book.record(&ev(TaskKind::Started, "w2"), t0 + Duration::from_secs(6));
        assert_eq!(started.queue_wait, Some(1.0));
        // Started before its ETA (a clock ahead): no negative wait.
        let mut sent = ev(TaskKind::Sent, "w3");
        sent.timestamp = Some(1000.0);
        sent.eta = Some(1010.0);
        book.record(&sent, t0);
        let started = book.record(&ev(TaskKind::Started, "w3"), t0 + Duration::from_secs(2));
        assert_eq!(started.queue_wait, Some(0.0));
        // No task-sent heard (the client sends none): no wait to tell.
        book.record(&ev(TaskKind::Received, "w4"), t0);
        assert_eq!(
            book.record(&ev(TaskKind::Started, "w4"), t0).queue_wait,
            None
        );
    }

    #[test]
    fn running_tasks_until_they_end() {
        let mut book = TaskBook::default();
        let t0 = Instant::now();
        for (id, host, at) in [("a", "w1", 0), ("b", "w2", 1), ("c", "w1", 2)] {
            let mut received = ev(TaskKind::Received, id);
            received.name = Some(format!("tasks.{id}"));
            book.record(&received, t0);
            let mut started = ev(TaskKind::Started, id);
            started.hostname = Some(host.into());
            book.record(&started, t0 + Duration::from_secs(at));
        }
        let ids = |book: &TaskBook, up: &dyn Fn(Option<&str>) -> bool| -> Vec<String> {
            book.running(up).iter().map(|r| r.id.clone()).collect()
        };
        assert_eq!(ids(&book, &|_| true), ["a", "b", "c"], "oldest first");
        assert_eq!(book.running(|_| true)[0].name, "tasks.a");
        assert_eq!(ids(&book, &|h| h != Some("w1")), ["b"]);
        book.record(&ev(TaskKind::Succeeded, "a"), t0);
        book.record(&ev(TaskKind::Retried, "b"), t0);
        assert_eq!(ids(&book, &|_| true), ["c"]);
        book.forget_worker("w1");
        assert!(book.running(|_| true).is_empty());
        // Bounded: the oldest is dropped past MAX_IDS.
        for i in 0..(MAX_IDS + 5) {
            book.record(
                &ev(TaskKind::Started, &format!("r{i}")),
                t0 + Duration::from_millis(i as u64),
            );
        }
        let running = book.running(|_| true);
        assert_eq!(running.len(), MAX_IDS);
        assert_eq!(running[0].id, "r5");
    }

    /// The events of a real countdown task, replayed at the moments they were heard: the
    /// task waited for its ETA, not in the queue.
    #[test]
    fn a_real_countdown_task_waited_only_after_its_eta() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/celery/08-task-countdown-events.json"
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let heard: Vec<(f64, TaskEvent)> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let Ok(crate::celery::event::Event::Task(t)) =
                    crate::celery::event::event(&e["event"])
                else {
                    panic!("{e}");
                };
                (e["heard_at"].as_f64().unwrap(), t)
            })
            .collect();
        let mut book = TaskBook::default();
        let t0 = Instant::now();
        let first = heard[0].0;
        let mut waits = Vec::new();
        for (at, e) in &heard {
            let c = book.record(e, t0 + Duration::from_secs_f64(at - first));
            waits.extend(c.queue_wait);
        }
        assert_eq!(waits.len(), 1);
        assert!(
            waits[0] < 0.5,
            "{waits:?}: it started about 3 s after it was sent"
        );
    }
}
