//! Celery's metric families (names as celery-exporter's) and how the Celery check's
//! observations set them; registered in the one registry `/metrics` serves.

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use std::sync::{Mutex, PoisonError};

use super::event::TaskKind;
use super::queues::QueueObservation;
use super::tasks::Count;

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

/// `celery_task_runtime` buckets, in seconds: 5 ms to 10 min.
const RUNTIME_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// `celery_task_queue_wait_seconds` buckets: 10 ms to 30 min.
const WAIT_BUCKETS: [f64; 16] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0,
    1800.0,
];

/// Celery's families: names as celery-exporter's, so its dashboards keep working, but no
/// `hostname` label on task series (short-lived hostnames are what grew its series).
pub struct CeleryMetrics {
    queue_length: IntGaugeVec,
    queue_oldest: GaugeVec,
    /// Label-less vectors, so that they can be dropped while the broker cannot be read.
    unacked: IntGaugeVec,
    unacked_oldest: GaugeVec,
    unacked_orphaned: IntGaugeVec,
    queues_left_out: IntGaugeVec,
    workers_alive: IntGauge,
    worker_up: IntGaugeVec,
    worker_active: IntGaugeVec,
    tasks: Vec<(TaskKind, IntCounterVec)>,
    runtime: HistogramVec,
    queue_wait: HistogramVec,
    redelivery_risk: IntGaugeVec,
    queue_unbound: IntGaugeVec,
    redelivered: IntCounterVec,
    unheard_consuming: IntGauge,
    lost: IntCounterVec,
    running_oldest: GaugeVec,
    beat_last_run: GaugeVec,
    beat_overdue: GaugeVec,
    /// The periodic tasks with series.
    beat_shown: Mutex<Vec<String>>,
    decode_errors: IntCounterVec,
    events: IntCounter,
    subscribed: IntGauge,
    untracked: IntCounter,
}

impl CeleryMetrics {
    pub fn new(registry: &Registry) -> Result<CeleryMetrics, prometheus::Error> {
        fn reg<C: prometheus::core::Collector + Clone + 'static>(
            registry: &Registry,
            c: C,
        ) -> Result<C, prometheus::Error> {
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let q = &["queue_name"];
        let h = &["hostname"];
        let mut tasks = Vec::new();
        for kind in TaskKind::ALL {
            let mut labels = vec!["name", "queue_name"];
            if kind == TaskKind::Failed {
                labels.push("exception");
            }
            let c = IntCounterVec::new(
                opts(
                    &format!("celery_task_{}_total", kind.as_str()),
                    &format!("task-{} events, by task name and queue.", kind.as_str()),
                ),
                &labels,
            )?;
            tasks.push((kind, reg(registry, c)?));
        }
        let decode_errors = reg(
            registry,
            IntCounterVec::new(
                opts(
                    "sidecar_decode_errors_total",
                    "Messages that could not be decoded, skipped: source events (pub/sub) or queue (a queued task).",
                ),
                &["source"],
            )?,
        )?;
        for source in ["events", "queue"] {
            decode_errors.with_label_values(&[source]);
        }
        Ok(CeleryMetrics {
            lost: reg(
                registry,
                IntCounterVec::new(
                    opts(
                        "celery_tasks_lost_total",
                        "Tasks running on a worker that went down without a warm shutdown (SIGKILL, OOM, a lost host).",
                    ),
                    &["name"],
                )?,
            )?,
            redelivered: reg(
                registry,
                IntCounterVec::new(
                    opts(
                        "celery_tasks_redelivered_total",
                        "Messages kombu delivered again (marked redelivered: restored after the visibility timeout or a worker's warm shutdown), each counted once when first seen at a queue's front or among the oldest reservations.",
                    ),
                    q,
                )?,
            )?,
            queue_unbound: reg(
                registry,
                IntGaugeVec::new(
                    opts(
                        "celery_queue_unbound",
                        "1 for a queue holding tasks whose kombu binding set is gone (a FLUSHALL?): tasks published to it through an exchange are dropped; only such queues have a series.",
                    ),
                    q,
                )?,
            )?,
            unheard_consuming: reg(
                registry,
                IntGauge::new(
                    "celery_workers_unheard_consuming",
                    "1 while fewer workers than required are heard by heartbeat but work is seen done (task events from unheard workers, or queues taken from): workers with --without-heartbeat.",
                )?,
            )?,
            redelivery_risk: reg(
                registry,
                IntGaugeVec::new(
                    opts(
                        "celery_reservations_redelivery_risk",
                        "Reservations kombu will deliver again before they run (an ETA past the visibility timeout) or unacknowledged near it, among the oldest 200; only queues with any.",
                    ),
                    q,
                )?,
            )?,
            queue_wait: reg(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "celery_task_queue_wait_seconds",
                        "From a task's publication (task-sent), or its ETA when later, to its start (task-started).",
                    )
                    .buckets(WAIT_BUCKETS.to_vec()),
                    q,
                )?,
            )?,
            beat_last_run: reg(
                registry,
                GaugeVec::new(
                    opts(
                        "celery_beat_last_run_timestamp_seconds",
                        "When the periodic task last ran, in Unix seconds: RedBeat's last_run_at, or its last task event heard (SIDECAR_CELERY_BEAT_EXPECT).",
                    ),
                    &["name"],
                )?,
            )?,
            beat_overdue: reg(
                registry,
                GaugeVec::new(
                    opts(
                        "celery_beat_overdue_seconds",
                        "How long the periodic task is overdue: past twice its interval since it last ran (0 while on time).",
                    ),
                    &["name"],
                )?,
            )?,
            beat_shown: Mutex::new(Vec::new()),
            running_oldest: reg(
                registry,
                GaugeVec::new(
                    opts(
                        "celery_task_running_oldest_seconds",
                        "How long the oldest running task of this name has run (0 when none runs), on workers alive.",
                    ),
                    &["name"],
                )?,
            )?,
            queue_length: reg(
                registry,
                IntGaugeVec::new(
                    opts(
                        "celery_queue_length",
                        "Messages waiting, priority sub-queues summed.",
                    ),
                    q,
                )?,
            )?,
            queue_oldest: reg(
                registry,
                GaugeVec::new(
                    opts(
                        "celery_queue_oldest_task_age_seconds",
                        "How long the oldest waiting message has been at the front of the queue.",
                    ),
                    q,
                )?,
            )?,
            unacked: reg(
                registry,
                IntGaugeVec::new(
                    opts(
                        "celery_unacked_tasks",
                        "Reserved (prefetched) messages not yet acknowledged.",
                    ),
                    &[],
                )?,
            )?,
            unacked_oldest: reg(
                registry,
                GaugeVec::new(
                    opts(
                        "celery_unacked_oldest_age_seconds",
                        "Age of the oldest reservation.",
                    ),
                    &[],
                )?,
            )?,
            unacked_orphaned: reg(
                registry,
                IntGaugeVec::new(
                    opts(
                        "celery_unacked_orphaned_tasks",
                        "Reservations older than the visibility timeout (a killed worker's, or ETA tasks past it).",
                    ),
                    &[],
                )?,
            )?,
            queues_left_out: reg(
                registry,
                IntGaugeVec::new(
                    opts(
                        "celery_queues_left_out",
                        "Queues bound on the broker but not watched: beyond the 2,000 watched at most (the shortest).",
                    ),
                    &[],
                )?,
            )?,
            workers_alive: reg(
                registry,
                IntGauge::new(
                    "celery_workers_alive",
                    "Workers whose last heartbeat is recent.",
                )?,
            )?,
            worker_up: reg(
                registry,
                IntGaugeVec::new(
                    opts(
                        "celery_worker_up",
                        "1 while the worker's heartbeats arrive, 0 once it is down.",
                    ),
                    h,
                )?,
            )?,
            worker_active: reg(
                registry,
                IntGaugeVec::new(
                    opts(
                        "celery_worker_tasks_active",
                        "Tasks the worker is executing, from its heartbeat.",
                    ),
                    h,
                )?,
            )?,
            tasks,
            runtime: reg(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "celery_task_runtime",
                        "Task run time in seconds, from task-succeeded.",
                    )
                    .buckets(RUNTIME_BUCKETS.to_vec()),
                    &["name", "queue_name"],
                )?,
            )?,
            decode_errors,
            events: reg(
                registry,
                IntCounter::new(
                    "sidecar_celery_events_total",
                    "Messages received on the celeryev channels, undecodable ones included.",
                )?,
            )?,
            subscribed: reg(
                registry,
                IntGauge::new(
                    "sidecar_celery_subscribed",
                    "1 while the event subscription to the broker is up.",
                )?,
            )?,
            untracked: reg(
                registry,
                IntCounter::new(
                    "celery_workers_untracked_total",
                    "Worker events not tracked because the worker table was full.",
                )?,
            )?,
        })
    }

    pub fn record_task(&self, c: &Count) {
        if let Some((_, counter)) = self.tasks.iter().find(|(k, _)| *k == c.kind) {
            match &c.exception {
                Some(exception) => counter
                    .with_label_values(&[c.name.as_str(), c.queue.as_str(), exception.as_str()])
                    .inc(),
                None => counter
                    .with_label_values(&[c.name.as_str(), c.queue.as_str()])
                    .inc(),
            }
        }
        if let Some(wait) = c.queue_wait {
            self.queue_wait
                .with_label_values(&[c.queue.as_str()])
                .observe(wait);
        }
        if let Some(runtime) = c.runtime.filter(|_| c.kind == TaskKind::Succeeded) {
            self.runtime
                .with_label_values(&[c.name.as_str(), c.queue.as_str()])
                .observe(runtime);
        }
    }

    pub fn decode_error(&self, source: &str) {
        self.decode_errors.with_label_values(&[source]).inc();
    }

    pub fn event_received(&self) {
        self.events.inc();
    }

    pub fn set_subscribed(&self, up: bool) {
        self.subscribed.set(i64::from(up));
    }

    pub fn untracked(&self) {
        self.untracked.inc();
    }

    /// The worker gauges: `alive` first, then each tracked worker's state.
    pub fn set_workers<'a>(
        &self,
        alive: usize,
        workers: impl Iterator<Item = (&'a str, bool, u64)>,
    ) {
        self.workers_alive
            .set(i64::try_from(alive).unwrap_or(i64::MAX));
        for (hostname, up, active) in workers {
            self.worker_up
                .with_label_values(&[hostname])
                .set(i64::from(up));
            self.worker_active
                .with_label_values(&[hostname])
                .set(i64::try_from(active).unwrap_or(i64::MAX));
        }
    }

    /// How long the oldest running task of each name that ever started has run (0 when
    /// none runs).
    pub fn set_running(&self, ages: &[(&str, f64)]) {
        for (name, secs) in ages {
            self.running_oldest.with_label_values(&[name]).set(*secs);
            // Lost tasks counted from 0 for every name that runs: rate() works from the
            // first loss.
            self.lost.with_label_values(&[name]);
        }
    }

    /// Beat's periodic tasks at a judgement: (name, when it last ran if known, seconds
    /// overdue); the series of tasks no longer listed go.
    pub fn set_beat(&self, tasks: &[(&str, Option<f64>, f64)]) {
        let mut shown = self
            .beat_shown
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for old in shown.iter().filter(|o| !tasks.iter().any(|(n, ..)| n == o)) {
            let _ = self.beat_last_run.remove_label_values(&[old]);
            let _ = self.beat_overdue.remove_label_values(&[old]);
        }
        shown.clear();
        for (name, last, overdue) in tasks {
            match last {
                Some(t) => self.beat_last_run.with_label_values(&[name]).set(*t),
                None => {
                    let _ = self.beat_last_run.remove_label_values(&[name]);
                }
            }
            self.beat_overdue.with_label_values(&[name]).set(*overdue);
            shown.push((*name).to_string());
        }
    }

    /// A message delivered again, seen for the first time.
    pub fn redelivered(&self, queue: &str) {
        self.redelivered.with_label_values(&[queue]).inc();
    }

    /// A task lost with its worker.
    pub fn lost(&self, name: &str) {
        self.lost.with_label_values(&[name]).inc();
    }

    /// A forgotten worker's series go.
    pub fn forget_worker(&self, hostname: &str) {
        let _ = self.worker_up.remove_label_values(&[hostname]);
        let _ = self.worker_active.remove_label_values(&[hostname]);
    }

    /// The queue gauges from a probe; series of queues no longer watched are removed.
    pub fn set_queues(&self, obs: &QueueObservation, gone: &[String]) {
        for q in &obs.queues {
            self.queue_length
                .with_label_values(&[q.name.as_str()])
                .set(i64::try_from(q.length).unwrap_or(i64::MAX));
            self.queue_oldest
                .with_label_values(&[q.name.as_str()])
                .set(q.oldest_age.map_or(0.0, |a| a.as_secs_f64()));
        }
        for name in gone {
            let _ = self.queue_length.remove_label_values(&[name.as_str()]);
            let _ = self.queue_oldest.remove_label_values(&[name.as_str()]);
        }
        self.unacked
            .with_label_values(&[] as &[&str])
            .set(i64::try_from(obs.unacked).unwrap_or(i64::MAX));
        self.redelivery_risk.reset();
        self.queue_unbound.reset();
        for q in obs
            .queues
            .iter()
            .filter(|q| q.unbound && q.length + q.stranded > 0)
        {
            self.queue_unbound
                .with_label_values(&[q.name.as_str()])
                .set(1);
        }
        for (queue, n) in &obs.redelivery_risk {
            self.redelivery_risk
                .with_label_values(&[queue.as_str()])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        self.unacked_oldest
            .with_label_values(&[] as &[&str])
            .set(obs.oldest_reservation.map_or(0.0, |a| a.as_secs_f64()));
        self.unacked_orphaned
            .with_label_values(&[] as &[&str])
            .set(i64::try_from(obs.orphaned).unwrap_or(i64::MAX));
        self.queues_left_out
            .with_label_values(&[] as &[&str])
            .set(i64::try_from(obs.left_out).unwrap_or(i64::MAX));
    }

    /// While the broker cannot be read, the queue and reservation series are dropped, not
    /// frozen at their last values.
    pub fn clear_queues(&self, names: &[String]) {
        for name in names {
            let _ = self.queue_length.remove_label_values(&[name.as_str()]);
            let _ = self.queue_oldest.remove_label_values(&[name.as_str()]);
        }
        let _ = self.unacked.remove_label_values(&[] as &[&str]);
        let _ = self.unacked_oldest.remove_label_values(&[] as &[&str]);
        let _ = self.unacked_orphaned.remove_label_values(&[] as &[&str]);
        let _ = self.queues_left_out.remove_label_values(&[] as &[&str]);
        self.queue_unbound.reset();
    }

    /// Whether work is seen done by workers no heartbeat shows, while too few are heard.
    pub fn set_unheard_consuming(&self, yes: bool) {
        self.unheard_consuming.set(i64::from(yes));
    }
}
