//! The `celery` check. Its report joins two sources: the queue probe, run every probe
//! interval under the timeout, and the worker table the subscriber keeps. Workers are
//! judged again every second (and at once when one comes or goes), so a killed worker is
//! reported down within its heartbeat window, not a probe interval later.
//!
//! Status: unhealthy when the broker cannot be read, or fewer workers than required are
//! alive (after a grace of two heartbeat intervals from each subscription); degraded when
//! the worker data is stale (subscription down), a queue is stalled, or reservations are
//! orphaned; healthy otherwise.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};

use super::Shared;
use super::queues::{QueueObservation, QueueProbe};
use crate::config::{CELERY_CHECK, CeleryConfig, show};
use crate::failure::{Failure, Reason};
use crate::metrics::Metrics;
use crate::runner::log_change;
use crate::snapshot::{Publisher, Report, Status};
use tracing::Instrument;

/// How often workers are judged again between queue probes.
const JUDGE_EVERY: Duration = Duration::from_secs(1);
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

pub struct CeleryRunner {
    probe: Result<QueueProbe, Failure>,
    shared: Arc<Mutex<Shared>>,
    changed: Arc<Notify>,
    publisher: Publisher,
    metrics: Arc<Metrics>,
    config: CeleryConfig,
    interval: Duration,
    timeout: Duration,
    endpoint: String,
    /// A queue pipeline slower than this makes the check degraded.
    slo: Duration,
    queues: Option<QueueRun>,
    /// Queue names in the metrics now, to remove the ones that vanish.
    shown: Vec<String>,
    last: Option<Arc<Report>>,
    last_log: Option<Instant>,
}

impl CeleryRunner {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        probe: Result<QueueProbe, Failure>,
        shared: Arc<Mutex<Shared>>,
        changed: Arc<Notify>,
        publisher: Publisher,
        metrics: Arc<Metrics>,
        config: CeleryConfig,
        interval: Duration,
        timeout: Duration,
        slo: Duration,
        endpoint: String,
    ) -> CeleryRunner {
        CeleryRunner {
            probe,
            shared,
            changed,
            publisher,
            metrics,
            config,
            interval,
            timeout,
            slo,
            endpoint,
            queues: None,
            shown: Vec::new(),
            last: None,
            last_log: None,
        }
    }

    /// Probes the queues at once, then every interval, `offset` into it (see
    /// [`crate::runner::ticks`]); judges workers every second and when one comes or goes.
    pub async fn run(mut self, offset: Duration) {
        let mut probe_tick = crate::runner::ticks(self.interval, offset);
        self.probe_queues().await;
        self.publish();
        // In step with this prober's own ticks, not with the first prober's PINGs.
        let mut judge_tick = tokio::time::interval_at(Instant::now() + offset, JUDGE_EVERY);
        judge_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let changed = self.changed.clone();
        loop {
            tokio::select! {
                _ = probe_tick.tick() => self.probe_queues().await,
                _ = judge_tick.tick() => {}
                () = changed.notified() => {}
            }
            self.publish();
        }
    }

    async fn probe_queues(&mut self) {
        let span = tracing::info_span!(
            "probe",
            otel.name = "probe celery",
            check = CELERY_CHECK,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            "error.type" = tracing::field::Empty,
        );
        let result = match &self.probe {
            Err(f) => Err(f.clone()),
            Ok(p) => {
                let run = tokio::time::timeout(self.timeout, p.probe());
                match run.instrument(span.clone()).await {
                    Ok(r) => r,
                    Err(_) => Err(Failure::timeout(p.pool().target(), p.phase(), self.timeout)),
                }
            }
        };
        if let Err(f) = &result {
            crate::otel::fail(&span, f);
        }
        let _inside = span.enter();
        let now = SystemTime::now();
        match &result {
            Ok(obs) => {
                let names: Vec<String> = obs.queues.iter().map(|q| q.name.clone()).collect();
                let gone: Vec<String> = self
                    .shown
                    .iter()
                    .filter(|n| !names.contains(n))
                    .cloned()
                    .collect();
                self.metrics.celery.set_queues(obs, &gone);
                self.shown = names;
                self.count_bad_messages(obs);
            }
            Err(_) => {
                self.metrics.celery.clear_queues(&self.shown);
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

    fn count_bad_messages(&mut self, obs: &QueueObservation) {
        if obs.bad_messages.is_empty() {
            return;
        }
        for _ in &obs.bad_messages {
            self.metrics.celery.decode_error("queue");
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

    /// Judges the check from the last queue probe and the worker table, and publishes it.
    /// Nothing is published before the first queue probe finished.
    fn publish(&mut self) {
        let Some(run) = &self.queues else {
            return;
        };
        let now = Instant::now();
        let mut shared = self.shared.lock().expect("shared lock is never poisoned");
        // Until the subscriber has connected or failed once, there is nothing to say about
        // workers yet (it takes milliseconds, or the probe timeout at most).
        if shared.subscription.connects == 0 && shared.subscription.error.is_none() {
            return;
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
            self.metrics.celery.forget_worker(&gone);
        }
        let sub = &shared.subscription;
        let workers = &shared.workers;
        let listed: Vec<Value> = workers
            .sorted()
            .iter()
            .map(|w| {
                json!({
                    "hostname": w.hostname,
                    "alive": workers.alive(w, as_of),
                    "active": w.active,
                    "processed": w.processed,
                    "heartbeat_age_seconds": round1(now.saturating_duration_since(w.last_heard)),
                    "freq": w.freq,
                    "pid": w.pid,
                    "sw_ver": w.sw_ver,
                })
            })
            .collect();
        let alive = workers.alive_count(as_of);
        self.metrics.celery.set_workers(
            alive,
            workers
                .sorted()
                .into_iter()
                .map(|w| (w.hostname.as_str(), workers.alive(w, as_of), w.active)),
        );
        let grace = Duration::from_secs_f64(2.0 * workers.longest_freq(as_of));
        let down: Vec<&str> = workers
            .sorted()
            .into_iter()
            .filter(|w| !workers.alive(w, as_of))
            .map(|w| w.hostname.as_str())
            .take(5)
            .collect();
        let seen = Seen {
            subscribed: sub.up,
            cause: sub.error.as_deref(),
            in_grace: sub.up && sub.since.is_some_and(|t| now < t + grace),
            alive,
            down: &down,
        };
        let (status, error, warnings) =
            judge(&self.config, &self.endpoint, self.slo, &run.result, &seen);
        let events = json!({
            "subscribed": sub.up,
            "since_seconds": sub.since.map(|t| round1(now.saturating_duration_since(t))),
            "error": sub.error,
            "received": sub.messages,
            "decode_errors": sub.decode_errors,
            "untracked_workers": sub.untracked,
            "reconnects": sub.connects.saturating_sub(1),
            "tasks_remembered": shared.book.remembered(),
        });
        drop(shared);

        let mut fields = json!({
            "workers_alive": alive,
            "min_workers": self.config.min_workers,
            "workers": listed,
            "queues": {},
            "unacked": null,
        });
        let mut details = json!({ "events": events });
        if let Ok(obs) = &run.result {
            let queues: serde_json::Map<String, Value> = obs
                .queues
                .iter()
                .map(|q| {
                    (
                        q.name.clone(),
                        json!({
                            "length": q.length,
                            "oldest_age_seconds": q.oldest_age.map(round1),
                            "oldest_task": q.oldest_task,
                        }),
                    )
                })
                .collect();
            fields["queues"] = Value::Object(queues);
            fields["unacked"] = json!(obs.unacked);
            details["reservations"] = json!({
                "unacked": obs.unacked,
                "oldest_age_seconds": obs.oldest_reservation.map(round1),
                "orphaned": obs.orphaned,
                "visibility_timeout_seconds": self.config.visibility_timeout.as_secs_f64(),
            });
            details["queues_left_out"] = json!(obs.left_out);
        }
        let report = Report {
            status,
            finished: run.finished,
            finished_at: run.finished_at,
            latency: run.result.as_ref().ok().map(|o| o.round_trip),
            last_success: run.last_success,
            consecutive_failures: run.consecutive_failures,
            error,
            warnings,
            details,
            fields,
        };
        log_change(CELERY_CHECK, &self.endpoint, self.last.as_deref(), &report);
        let report = Arc::new(report);
        self.publisher.send_replace(Some(report.clone()));
        self.last = Some(report);
        let unix = run
            .finished_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.metrics.record_probe(
            CELERY_CHECK,
            unix.as_secs_f64(),
            run.result
                .as_ref()
                .map_or(0.0, |o| o.round_trip.as_secs_f64()),
        );
    }
}

/// What the worker side looks like when the check is judged.
pub struct Seen<'a> {
    pub subscribed: bool,
    /// Why the subscription is down.
    pub cause: Option<&'a str>,
    /// Within two heartbeat intervals of the subscription coming up.
    pub in_grace: bool,
    pub alive: usize,
    /// Some of the workers down, by hostname.
    pub down: &'a [&'a str],
}

/// The status, the cause when unhealthy, the warnings when degraded: a pure function of
/// the settings, the last queue probe and the worker side.
pub fn judge(
    c: &CeleryConfig,
    endpoint: &str,
    slo: Duration,
    queues: &Result<QueueObservation, Failure>,
    seen: &Seen,
) -> (Status, Option<Failure>, Vec<String>) {
    let obs = match queues {
        Err(f) => {
            let f = Failure::new(
                f.reason,
                format!("the broker cannot be read: {}", f.message),
            );
            return (Status::Unhealthy, Some(f), Vec::new());
        }
        Ok(obs) => obs,
    };
    let alive = seen.alive;
    let mut error = None;
    let mut warnings = Vec::new();
    if !seen.subscribed {
        warnings.push(format!(
            "worker data is stale: the event subscription is down ({}); workers are shown as they were when it was lost",
            seen.cause.unwrap_or("connecting")
        ));
    } else if alive < c.min_workers as usize {
        if seen.in_grace {
            warnings.push(format!(
                "waiting for worker heartbeats: {alive} of the required {} heard so far",
                c.min_workers
            ));
        } else if seen.down.is_empty() {
            error = Some(Failure::new(
                Reason::Other,
                format!(
                    "no Celery worker is alive: none was heard recently on the broker's event channels (are the workers running, and connected to {endpoint}?)"
                ),
            ));
        } else {
            error = Some(Failure::new(
                Reason::Other,
                format!(
                    "only {alive} of the required {} Celery workers are alive; down: {}",
                    c.min_workers,
                    seen.down.join(", ")
                ),
            ));
        }
    }
    if obs.round_trip > slo {
        warnings.push(format!(
            "slow: the queue pipeline took {:.1}ms, over the {} latency SLO",
            obs.round_trip.as_secs_f64() * 1e3,
            show(slo)
        ));
    }
    if alive > 0 {
        for q in &obs.queues {
            if let Some(age) = q.oldest_age.filter(|a| *a > c.stall_after) {
                let task = q
                    .oldest_task
                    .as_deref()
                    .map(|t| format!(" ({t})"))
                    .unwrap_or_default();
                warnings.push(format!(
                    "queue {} is stalled: its oldest task{task} has waited {} at the front while {alive} worker(s) are alive: no worker consumes this queue (check the workers' -Q), or the workers lost their broker connection",
                    q.name,
                    human(age)
                ));
            }
        }
    }
    if obs.orphaned > 0 {
        warnings.push(format!(
            "{} reservation(s) are older than the visibility timeout ({}): left by a worker killed while holding prefetched tasks (SIGKILL, OOM), or ETA/countdown tasks scheduled further out than the visibility timeout; kombu delivers such reservations again, so a task may run twice",
            obs.orphaned,
            human(c.visibility_timeout)
        ));
    }
    let status = if error.is_some() {
        Status::Unhealthy
    } else if warnings.is_empty() {
        Status::Healthy
    } else {
        Status::Degraded
    };
    (status, error, warnings)
}

fn round1(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

/// `45.2s`, `6m12s`, `2h05m`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::celery::queues::QueueState;

    fn config() -> CeleryConfig {
        crate::config::Config::from_settings(&crate::cli::Settings::default())
            .unwrap()
            .celery
    }

    fn obs() -> QueueObservation {
        QueueObservation {
            queues: vec![QueueState {
                name: "celery".into(),
                length: 1,
                oldest_age: Some(Duration::from_secs(1)),
                oldest_task: Some("tasks.add".into()),
                error: None,
            }],
            unacked: 0,
            oldest_reservation: None,
            orphaned: 0,
            round_trip: Duration::from_millis(1),
            bad_messages: vec![],
            left_out: 0,
            discovered: true,
        }
    }

    fn seen<'a>(alive: usize, down: &'a [&'a str]) -> Seen<'a> {
        Seen {
            subscribed: true,
            cause: None,
            in_grace: false,
            alive,
            down,
        }
    }

    fn run(
        s: &Seen,
        o: Result<QueueObservation, Failure>,
    ) -> (Status, Option<Failure>, Vec<String>) {
        judge(
            &config(),
            "redis://h:6379/0",
            Duration::from_millis(100),
            &o,
            s,
        )
    }

    #[test]
    fn healthy_with_enough_workers_and_moving_queues() {
        let (status, error, warnings) = run(&seen(1, &[]), Ok(obs()));
        assert_eq!((status, error, warnings.len()), (Status::Healthy, None, 0));
    }

    #[test]
    fn an_unreadable_broker_is_unhealthy_with_its_cause() {
        let f = Failure::new(Reason::Connect, "connection refused by h:6379");
        let (status, error, _) = run(&seen(1, &[]), Err(f));
        assert_eq!(status, Status::Unhealthy);
        let error = error.unwrap();
        assert_eq!(error.reason, Reason::Connect);
        assert_eq!(
            error.message,
            "the broker cannot be read: connection refused by h:6379"
        );
    }

    #[test]
    fn too_few_workers() {
        let (status, error, _) = run(&seen(0, &[]), Ok(obs()));
        assert_eq!(status, Status::Unhealthy);
        assert!(
            error
                .unwrap()
                .message
                .starts_with("no Celery worker is alive")
        );
        let (_, error, _) = run(&seen(0, &["w1@a", "w2@b"]), Ok(obs()));
        assert_eq!(
            error.unwrap().message,
            "only 0 of the required 1 Celery workers are alive; down: w1@a, w2@b"
        );
        let mut s = seen(0, &[]);
        s.in_grace = true;
        let (status, _, warnings) = run(&s, Ok(obs()));
        assert_eq!(status, Status::Degraded);
        assert!(warnings[0].starts_with("waiting for worker heartbeats"));
    }

    #[test]
    fn a_lost_subscription_is_stale_not_zero() {
        let s = Seen {
            subscribed: false,
            cause: Some("NOPERM"),
            in_grace: false,
            alive: 0,
            down: &[],
        };
        let (status, error, warnings) = run(&s, Ok(obs()));
        assert_eq!((status, error), (Status::Degraded, None));
        assert!(
            warnings[0]
                .starts_with("worker data is stale: the event subscription is down (NOPERM)")
        );
    }

    #[test]
    fn stalls_orphans_and_slowness_degrade() {
        let mut o = obs();
        o.queues[0].oldest_age = Some(Duration::from_secs(301));
        let (status, _, warnings) = run(&seen(2, &[]), Ok(o.clone()));
        assert_eq!(status, Status::Degraded);
        assert!(
            warnings[0].starts_with(
                "queue celery is stalled: its oldest task (tasks.add) has waited 5m01s"
            )
        );
        // No worker alive: not a stall (the worker count says it already).
        let (_, _, warnings) = run(&seen(0, &["w"]), Ok(o));
        assert!(warnings.iter().all(|w| !w.contains("stalled")));
        let mut o = obs();
        o.orphaned = 3;
        let (status, _, warnings) = run(&seen(1, &[]), Ok(o));
        assert_eq!(status, Status::Degraded);
        assert!(
            warnings[0]
                .starts_with("3 reservation(s) are older than the visibility timeout (1h00m)"),
            "{warnings:?}"
        );
        let mut o = obs();
        o.round_trip = Duration::from_millis(250);
        let (status, _, warnings) = run(&seen(1, &[]), Ok(o));
        assert_eq!(status, Status::Degraded);
        assert!(warnings[0].starts_with("slow: the queue pipeline took 250.0ms"));
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(45_200)), "45.2s");
        assert_eq!(human(Duration::from_secs(372)), "6m12s");
        assert_eq!(human(Duration::from_secs(7500)), "2h05m");
    }
}
