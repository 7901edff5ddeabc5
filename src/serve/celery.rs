//! The `celery` check. Its report joins two sources: the queue probe, run every probe
//! interval under the timeout, and the worker table the subscriber keeps. Workers are
//! judged again every second (and at once when one comes or goes), so a killed worker is
//! reported down within its heartbeat window, not a probe interval later.
//!
//! Status: unhealthy when the broker cannot be read, or fewer workers than required are
//! alive (after a grace of two heartbeat intervals from each subscription); degraded when
//! the worker data is stale (subscription down), a queue is stalled, or reservations are
//! orphaned; healthy otherwise.
//!
//! About 620 lines: `judgement` joins the last queue probe and the worker table in one pass
//! under one lock (workers, running and lost tasks, signs of silent workers at work), in
//! the order the verdict needs them; the parts that only build documents live in
//! [`crate::serve::health`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};

use crate::celery::Shared;
use crate::celery::beat::RedBeat;
use crate::celery::queues::reservations::SeenOnce;
use crate::celery::queues::{QueueObservation, QueueProbe};
use crate::celery::workers::Worker;
use crate::config::{CELERY_CHECK, CeleryConfig};
use crate::redis::failure::Failure;
use crate::redis::target::{Role, Target};
use crate::serve::health::{
    self, BeatDoc, CeleryDetails, CeleryFields, CeleryReport, Details, EventsDoc, LostDoc,
    ReservationsDoc, RunningDoc, RunningTaskDoc, WorkerDoc, round1,
};
use crate::serve::history::History;
use crate::serve::metrics::Metrics;
use crate::serve::runner::Probe;
use crate::serve::snapshot::{Report, Reports, Snapshot, Status};
use crate::text::human;
use crate::verdict::{self, Cause, Consuming, Long, LostTask, Seen};

/// Work seen done (a queue's front taken, task events from a worker not heard by
/// heartbeat) within this long counts as workers consuming.
const CONSUMING_WINDOW: Duration = Duration::from_secs(120);
/// How often workers are judged again between queue probes.
const JUDGE_EVERY: Duration = Duration::from_secs(1);
/// Workers that come or go logged one by one in one judgement at most.
const LOG_WORKERS: usize = 10;
/// Undecodable queued messages are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The last queue probe.
struct QueueRun {
    result: Result<QueueObservation, Failure>,
    finished: Instant,
    finished_at: SystemTime,
    consecutive_failures: u32,
    last_success: Option<SystemTime>,
}

pub struct CeleryCheck {
    probe: QueueProbe,
    shared: Arc<Mutex<Shared>>,
    changed: Arc<Notify>,
    /// The broker's own Redis check.
    broker: Reports,
    config: CeleryConfig,
    endpoint: String,
    /// A queue pipeline slower than this makes the check degraded.
    slo: Duration,
    queues: Option<QueueRun>,
    /// Queue names in the metrics now, to remove the ones that vanish.
    shown: Vec<String>,
    /// The `queues` object of the last probe, shared by the reports until the next.
    queues_json: Option<(Instant, Arc<RawValue>)>,
    /// The workers alive at the last judgement, to log each one that comes or goes.
    up: std::collections::BTreeSet<String>,
    /// Every worker in the table that was ever up: a worker not in it is new.
    known: std::collections::BTreeSet<String>,
    last_log: Option<Instant>,
    /// Workers are judged again every second between queue probes (made when the runner
    /// starts, at its offset).
    judge_tick: Option<tokio::time::Interval>,
    /// Where worker changes and each queue probe's figures are kept for the status page.
    history: Arc<History>,
    /// The queue probe last kept in the history.
    recorded: Option<Instant>,
    /// When a queue probe last saw a queue's front taken (or a queue get shorter).
    last_consumed: Option<Instant>,
    /// Tasks lost with their worker, newest first (at most `MAX_LOST`), and when.
    lost: std::collections::VecDeque<(Instant, LostTask)>,
    /// Messages seen delivered again.
    redelivered: SeenOnce,
}

/// Lost tasks remembered at most.
const MAX_LOST: usize = 20;

/// What the event subscriber hears, as the check reads it: the worker table and task book,
/// and the signal that a worker came or went.
pub struct Heard {
    pub shared: Arc<Mutex<Shared>>,
    pub changed: Arc<Notify>,
}

impl CeleryCheck {
    /// `snapshot` gives the reports of the broker's own Redis check (registered before, by
    /// its runner), which this check follows; `broker` is the broker target.
    pub fn new(
        probe: QueueProbe,
        heard: Heard,
        snapshot: &Snapshot,
        broker: &Target,
        config: CeleryConfig,
        slo: Duration,
        history: Arc<History>,
    ) -> CeleryCheck {
        // The broker's `redis:broker` check, or its cache check when it has no broker role.
        let broker_reports = broker
            .roles()
            .iter()
            .find(|r| **r == Role::Broker)
            .or(broker.roles().first())
            .and_then(|r| snapshot.reports(&r.check_name()))
            .expect("the broker's runner registered its checks first");
        let Heard { shared, changed } = heard;
        CeleryCheck {
            probe,
            shared,
            changed,
            broker: broker_reports,
            config,
            endpoint: broker.redacted().to_string(),
            slo,
            queues: None,
            shown: Vec::new(),
            queues_json: None,
            up: std::collections::BTreeSet::new(),
            known: std::collections::BTreeSet::new(),
            last_log: None,
            judge_tick: None,
            history,
            recorded: None,
            last_consumed: None,
            lost: std::collections::VecDeque::new(),
            redelivered: SeenOnce::default(),
        }
    }

    /// The check's name and the broker's redacted URL, for the runner.
    pub fn check(&self) -> (Vec<String>, String) {
        (vec![CELERY_CHECK.to_string()], self.endpoint.clone())
    }

    fn count_bad_messages(&mut self, obs: &QueueObservation, metrics: &Metrics) {
        if obs.bad_messages.is_empty() {
            return;
        }
        for _ in &obs.bad_messages {
            metrics.celery.decode_error("queue");
        }
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= LOG_EVERY)
        {
            tracing::warn!(
                skipped = obs.bad_messages.len(),
                kind = obs.bad_messages[0].kind(),
                "a queued message could not be decoded (logged at most once a minute): {}",
                obs.bad_messages[0]
            );
            self.last_log = Some(now);
        }
    }

    /// Judges the check from the last queue probe and the worker table. Nothing before the
    /// first queue probe finished, nor before the subscriber connected or failed once.
    fn judgement(&mut self, metrics: &Metrics) -> Option<Report> {
        let run = self.queues.as_ref()?;
        let now = Instant::now();
        let mut shared = self.shared.lock().expect("shared lock is never poisoned");
        // Until the subscriber has connected or failed once, there is nothing to say about
        // workers yet (it takes milliseconds, or the probe timeout at most).
        if shared.subscription.connects == 0 && shared.subscription.error.is_none() {
            return None;
        }
        // While the subscription is down, workers are judged as of the moment it was lost:
        // the data is stale, which is not the same as "no workers". Nobody is forgotten
        // meanwhile either.
        let as_of = if shared.subscription.up {
            now
        } else {
            shared.subscription.since.unwrap_or(now).min(now)
        };
        for gone in shared.workers.forget(as_of) {
            metrics.celery.forget_worker(&gone);
            shared.book.forget_worker(&gone);
        }
        let sub = &shared.subscription;
        let workers = &shared.workers;
        let is_up = |w: &Worker| workers.alive(w, as_of);
        let listed: Vec<WorkerDoc> = workers
            .sorted()
            .iter()
            .map(|w| WorkerDoc {
                hostname: w.hostname.clone(),
                alive: is_up(w),
                active: w.active,
                processed: w.processed,
                heartbeat_age_seconds: round1(now.saturating_duration_since(w.last_heard)),
                freq: w.freq,
                pid: w.pid,
                sw_ver: w.sw_ver.clone(),
            })
            .collect();
        let alive = workers.sorted().into_iter().filter(|w| is_up(w)).count();
        // Each queue probe once in the history, with the workers alive as judged now.
        if self.recorded != Some(run.finished) {
            self.recorded = Some(run.finished);
            if run.result.as_ref().is_ok_and(|o| o.consumed) {
                self.last_consumed = Some(run.finished);
            }
            self.history.celery(
                run.finished_at,
                run.result
                    .as_ref()
                    .ok()
                    .map(|o| o.queues.iter().map(|q| (q.name.as_str(), q.length))),
                alive,
                shared.book.totals(),
            );
        }
        // One log line per worker that comes up or goes down, naming it and why (a few per
        // judgement, then a count: a flood of hostnames must not flood the log).
        let mut logged = 0;
        let mut unlogged = 0;
        // Workers that went down without a warm shutdown: their running tasks are lost.
        let mut went_down: Vec<String> = Vec::new();
        for w in workers.sorted() {
            let is_up = is_up(w);
            if is_up == self.up.contains(&w.hostname) {
                continue;
            }
            let why = (!is_up).then(|| {
                if w.offline {
                    "it sent worker-offline (a warm shutdown)".to_string()
                } else {
                    format!(
                        "no event from it for {} (it heartbeats every {}s; SIDECAR_CELERY_HEARTBEAT_MISSES allows {} missed)",
                        human(as_of.saturating_duration_since(w.last_heard)),
                        w.freq,
                        self.config.heartbeat_misses
                    )
                }
            });
            // Every change is kept in the history (bounded there); the log gets a few.
            if !is_up && !w.offline {
                went_down.push(w.hostname.clone());
            }
            let first = self.known.insert(w.hostname.clone());
            self.history
                .worker(&w.hostname, is_up, first, why.clone(), SystemTime::now());
            if is_up {
                self.up.insert(w.hostname.clone());
            } else {
                self.up.remove(&w.hostname);
            }
            logged += 1;
            if logged > LOG_WORKERS {
                unlogged += 1;
                continue;
            }
            match why {
                None => tracing::info!(
                    worker = %w.hostname,
                    pid = w.pid,
                    "Celery worker {} is up",
                    w.hostname
                ),
                Some(why) => tracing::warn!(
                    worker = %w.hostname,
                    "Celery worker {} is down: {why}",
                    w.hostname
                ),
            }
        }
        let reserved = run
            .result
            .as_ref()
            .map_or(&[][..], |o| o.reserved.as_slice());
        for host in &went_down {
            for r in shared.book.running(|h| h == Some(host.as_str())) {
                metrics.celery.lost(&r.name);
                let task = LostTask {
                    id: r.id.clone(),
                    name: r.name.clone(),
                    worker: host.clone(),
                    ago: Duration::ZERO,
                    fate: verdict::fate(&r.id, reserved, self.config.visibility_timeout),
                };
                tracing::warn!(worker = %host, task = %r.name, "a task was lost with its worker: {} (id {})", r.name, r.id);
                self.lost.push_front((now, task));
                self.lost.truncate(MAX_LOST);
            }
        }
        if unlogged > 0 {
            tracing::warn!("{unlogged} more Celery workers came up or went down at once");
        }
        self.up.retain(|h| workers.get(h).is_some());
        self.known.retain(|h| workers.get(h).is_some());
        metrics.celery.set_workers(
            alive,
            workers
                .sorted()
                .into_iter()
                .map(|w| (w.hostname.as_str(), is_up(w), w.active)),
        );
        let grace = Duration::from_secs_f64(2.0 * workers.longest_freq(as_of));
        let down: Vec<&str> = workers
            .sorted()
            .into_iter()
            .filter(|w| !is_up(w))
            .map(|w| w.hostname.as_str())
            .take(5)
            .collect();
        // Running tasks, on workers alive (a worker down may be lost with its tasks, or only
        // silent): the oldest of each name.
        let mut oldest: Vec<RunningTaskDoc> = Vec::new();
        let running = shared
            .book
            .running(|h| h.is_none_or(|h| workers.get(h).is_some_and(is_up)));
        for r in &running {
            if !oldest.iter().any(|o| o.name == r.name) {
                oldest.push(RunningTaskDoc {
                    name: r.name.clone(),
                    id: r.id.clone(),
                    worker: r.hostname.clone(),
                    running_seconds: round1(now.saturating_duration_since(r.since)),
                });
            }
        }
        let running_count = running.len();
        // Every name that ever started has its series: 0 while none runs (a task quicker
        // than a judgement is never seen running).
        let ages: Vec<(&str, f64)> = shared
            .book
            .started_names()
            .iter()
            .map(|n| {
                let age = oldest.iter().find(|o| &o.name == n);
                (n.as_str(), age.map_or(0.0, |o| o.running_seconds))
            })
            .collect();
        metrics.celery.set_running(&ages);
        let long: Vec<Long> = oldest
            .iter()
            .map(|o| Long {
                name: &o.name,
                id: &o.id,
                worker: o.worker.as_deref(),
                running: Duration::from_secs_f64(o.running_seconds),
            })
            .collect();
        // Workers at work that no worker event shows: task events from a worker not up, or
        // (with none up at all) a queue's front taken.
        let working: Vec<&str> = shared
            .working
            .iter()
            .filter(|(h, at)| {
                now.saturating_duration_since(*at) <= CONSUMING_WINDOW
                    && !workers.get(h).is_some_and(is_up)
            })
            .map(|(h, _)| h.as_str())
            .take(5)
            .collect();
        let queue_taken = self
            .last_consumed
            .map(|t| now.saturating_duration_since(t))
            .filter(|ago| alive == 0 && *ago <= CONSUMING_WINDOW);
        let channel = String::from_utf8_lossy(&shared.naming.events_pattern()).into_owned();
        let seen = Seen {
            subscribed: sub.up,
            cause: sub.error.as_ref(),
            held: sub.connects > 0,
            in_grace: sub.up && sub.since.is_some_and(|t| now < t + grace),
            alive,
            down: &down,
            channel: &channel,
            running: &long,
            consuming: (!working.is_empty() || queue_taken.is_some()).then_some(Consuming {
                queue_taken,
                working: &working,
            }),
        };
        // The broker's own Redis check: a broker unusable as Redis is unusable for Celery,
        // as `check` says it.
        let broker = self.broker.borrow().clone();
        let broker = broker
            .as_deref()
            .filter(|r| r.status == Status::Unhealthy)
            .and_then(|r| {
                r.error.as_ref().map(|f| {
                    Cause::new(
                        "celery broker",
                        f.clone(),
                        r.fix.clone().unwrap_or_else(|| {
                            "fix the broker's connection first (the redis:broker check)".into()
                        }),
                    )
                })
            });
        metrics.celery.set_unheard_consuming(
            seen.consuming.is_some() && seen.subscribed && alive < self.config.min_workers as usize,
        );
        let mut judged = verdict::celery(
            &self.config,
            &self.endpoint,
            self.slo,
            broker.as_ref(),
            &run.result,
            &seen,
        );
        let lost: Vec<LostTask> = self
            .lost
            .iter()
            .map(|(at, t)| LostTask {
                ago: now.saturating_duration_since(*at),
                ..t.clone()
            })
            .collect();
        if let Some(f) = verdict::lost(&lost) {
            judged.findings.push(f);
            judged.status = judged.status.max(Status::Degraded);
        }
        // Beat: RedBeat's schedule when the broker holds one, else the tasks declared.
        let beat = run
            .result
            .as_ref()
            .ok()
            .and_then(|o| o.beat.clone())
            .or_else(|| shared.beat.beat());
        let now_unix = crate::text::unix_now();
        let tasks: Vec<(&str, Option<f64>, f64)> = beat
            .iter()
            .flat_map(|b| &b.entries)
            .map(|p| {
                (
                    p.name.as_str(),
                    p.last_run,
                    p.overdue(now_unix).map_or(0.0, |d| d.as_secs_f64()),
                )
            })
            .collect();
        metrics.celery.set_beat(&tasks);
        if let Some(f) = beat.as_ref().and_then(|b| {
            verdict::beat(
                b,
                now_unix,
                &RedBeat::new(&self.config.redbeat_prefix).lock_key(),
            )
        }) {
            judged.findings.push(f);
            judged.status = judged.status.max(Status::Degraded);
        }
        let events = EventsDoc {
            subscribed: sub.up,
            since_seconds: sub.since.map(|t| round1(now.saturating_duration_since(t))),
            error: sub.error.as_ref().map(|f| f.message.clone()),
            received: sub.messages,
            decode_errors: sub.decode_errors,
            untracked_workers: sub.untracked,
            reconnects: sub.connects.saturating_sub(1),
            tasks_remembered: shared.book.remembered(),
        };
        // The lost tasks run no more.
        for host in &went_down {
            shared.book.take_running_on(host);
        }
        drop(shared);

        let mut fields = CeleryFields {
            workers_alive: alive,
            min_workers: self.config.min_workers,
            workers: listed,
            queues: health::no_queues(),
            unacked: None,
        };
        oldest.truncate(10);
        let mut details = CeleryDetails {
            events,
            running: RunningDoc {
                tasks: running_count,
                oldest,
            },
            lost: lost.iter().map(LostDoc::of).collect(),
            reservations: None,
            queues_left_out: None,
            kombu: None,
            beat: beat.as_ref().map(|b| BeatDoc::of(b, now_unix)),
        };
        if let Ok(obs) = &run.result {
            fields.queues = match &self.queues_json {
                // The queues change with a probe, not with each judgement: one copy.
                Some((at, q)) if *at == run.finished => q.clone(),
                _ => {
                    let q = health::queues_json(obs);
                    self.queues_json = Some((run.finished, q.clone()));
                    q
                }
            };
            fields.unacked = Some(obs.unacked);
            details.reservations = Some(ReservationsDoc {
                unacked: obs.unacked,
                oldest_age_seconds: obs.oldest_reservation.map(round1),
                orphaned: obs.orphaned,
                visibility_timeout_seconds: self.config.visibility_timeout.as_secs_f64(),
                redelivered_seen: self.redelivered.total(),
            });
            details.queues_left_out = Some(obs.left_out);
            details.kombu = Some(health::layout_doc(&obs.layout));
        }
        let (error, fix) = judged.error.map(|c| (c.failure, c.fix)).unzip();
        let report = Report {
            status: judged.status,
            finished: run.finished,
            finished_at: run.finished_at,
            latency: run.result.as_ref().ok().map(|o| o.round_trip),
            last_success: run.last_success,
            consecutive_failures: run.consecutive_failures,
            error,
            fix,
            warnings: judged.findings,
            details: Details::Celery(Box::new(CeleryReport { details, fields })),
        };
        Some(report)
    }
}

impl Probe for CeleryCheck {
    type Observation = QueueObservation;
    const SPAN: &'static str = "probe celery";

    async fn probe(&self) -> Result<QueueObservation, Failure> {
        // Which apps' workers are heard decides which key prefix is watched.
        let heard = self
            .shared
            .lock()
            .expect("shared lock is never poisoned")
            .heard
            .clone();
        self.probe.heard(heard);
        self.probe.probe().await
    }

    fn timed_out(&self, limit: Duration) -> Failure {
        Failure::timeout(self.probe.pool().target(), self.probe.phase(), limit)
    }

    fn observed(
        &mut self,
        result: Result<QueueObservation, Failure>,
        _: Duration,
        now: SystemTime,
        metrics: &Metrics,
    ) {
        // The subscriber keeps the events of the prefix found.
        self.shared
            .lock()
            .expect("shared lock is never poisoned")
            .naming = self.probe.naming();
        match &result {
            Ok(obs) => {
                let names: Vec<String> = obs.queues.iter().map(|q| q.name.clone()).collect();
                let gone: Vec<String> = self
                    .shown
                    .iter()
                    .filter(|n| !names.contains(n))
                    .cloned()
                    .collect();
                metrics.celery.set_queues(obs, &gone);
                self.shown = names;
                for (id, queue) in &obs.redelivered {
                    if self.redelivered.first(id) {
                        metrics.celery.redelivered(queue);
                    }
                }
                self.count_bad_messages(obs, metrics);
            }
            Err(_) => {
                metrics.celery.clear_queues(&self.shown);
                self.shown.clear();
            }
        }
        let previous = self.queues.as_ref();
        let consecutive_failures = match &result {
            Ok(_) => 0,
            Err(_) => previous.map_or(0, |r| r.consecutive_failures) + 1,
        };
        let last_success = match &result {
            Ok(_) => Some(now),
            Err(_) => previous.and_then(|r| r.last_success),
        };
        self.queues = Some(QueueRun {
            result,
            finished: Instant::now(),
            finished_at: now,
            consecutive_failures,
            last_success,
        });
    }

    fn judge(&mut self, _: Option<&Report>, metrics: &Metrics) -> Option<Report> {
        self.judgement(metrics)
    }

    /// The judgements between probes keep to this prober's own offset, not the first
    /// prober's PINGs.
    fn started(&mut self, offset: Duration) {
        self.judge_tick = Some(judge_ticks(offset));
    }

    /// Every second (in step with this prober's offset), and at once when a worker comes or
    /// goes.
    async fn wake(&mut self) {
        let tick = self
            .judge_tick
            .get_or_insert_with(|| judge_ticks(JUDGE_EVERY));
        let changed = self.changed.clone();
        tokio::select! {
            _ = tick.tick() => {}
            () = changed.notified() => {}
        }
    }

    fn published(&self, _: &Report, checks: &[String], metrics: &Metrics) {
        let Some(run) = &self.queues else {
            return;
        };
        let unix = crate::text::unix_secs(run.finished_at);
        for check in checks {
            metrics.record_probe(
                check,
                unix,
                run.result
                    .as_ref()
                    .map_or(0.0, |o| o.round_trip.as_secs_f64()),
            );
        }
    }
}

/// Ticks every second from `first` on; a judgement that overruns delays the next.
fn judge_ticks(first: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval_at(Instant::now() + first, JUDGE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}
