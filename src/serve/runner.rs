//! The runner: one for every kind of probe. It owns the interval, the offset, the
//! timeout, the span, the publishing of each report under its checks and the logging of
//! changes; a [`Probe`] says what is probed and how it is judged. Redis
//! ([`crate::serve::redis`]) and Celery ([`crate::serve::celery`]) are its two kinds:
//! adding one (Sentinel, say) is a file and a line in `lib.rs`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::{Instant, MissedTickBehavior};

use crate::redis::failure::Failure;
use crate::redis::span;
use crate::serve::health::Details;
use crate::serve::history::{History, is_change};
use crate::serve::metrics::Metrics;
use crate::serve::snapshot::{Publisher, Report, Snapshot, Status};
use tracing::Instrument;

/// One kind of probe, as the [`Runner`] runs it.
pub trait Probe: Send + 'static {
    type Observation: Send + 'static;
    /// The span's name: `probe redis`, `probe celery`.
    const SPAN: &'static str;

    /// One probe; the runner bounds it by the timeout.
    fn probe(&self) -> impl Future<Output = Result<Self::Observation, Failure>> + Send;

    /// The failure of a probe the timeout cut short, naming what it was waiting for.
    fn timed_out(&self, limit: Duration) -> Failure;

    /// Takes one probe's result (metrics, what judging needs); `elapsed` is how long it
    /// took, `now` when it finished.
    fn observed(
        &mut self,
        result: Result<Self::Observation, Failure>,
        elapsed: Duration,
        now: SystemTime,
        metrics: &Metrics,
    );

    /// The report to publish now (`last` is the previous one), or `None` while there is
    /// nothing to say yet.
    fn judge(&mut self, last: Option<&Report>, metrics: &Metrics) -> Option<Report>;

    /// Called once after the first probe, with the runner's offset within the interval: a
    /// probe that wakes between probes (see [`Probe::wake`]) keeps its wakes in step with
    /// it, so that they never fall on another prober's PING.
    fn started(&mut self, offset: Duration) {
        let _ = offset;
    }

    /// Resolves when the report should be judged again between probes; never, unless the
    /// probe says otherwise (the Celery check: every second, and when a worker comes or
    /// goes).
    fn wake(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    /// After `report` was published under `checks`: the `sidecar_probe_*` figures.
    fn published(&self, report: &Report, checks: &[String], metrics: &Metrics);
}

/// Where runners write besides the snapshot: the metrics registry and the history.
#[derive(Clone)]
pub struct Outlets {
    pub metrics: Arc<Metrics>,
    pub history: Arc<History>,
}

/// Runs one probe every interval and publishes what it found under its checks.
pub struct Runner<P: Probe> {
    probe: P,
    checks: Vec<String>,
    publishers: Vec<Publisher>,
    /// The check names joined, for log lines.
    names: String,
    endpoint: String,
    metrics: Arc<Metrics>,
    /// Where each state change and each probe's latency is kept for the status page.
    history: Arc<History>,
    interval: Duration,
    timeout: Duration,
    last: Option<Arc<Report>>,
}

impl<P: Probe> Runner<P> {
    /// Registers `checks` (shown with `endpoint`) in `snapshot`: the runner publishes each
    /// report under all of them.
    pub fn new(
        probe: P,
        checks: Vec<String>,
        endpoint: String,
        snapshot: &mut Snapshot,
        outlets: &Outlets,
        interval: Duration,
        timeout: Duration,
    ) -> Runner<P> {
        let publishers = checks
            .iter()
            .map(|c| snapshot.register(c, Some(endpoint.clone())))
            .collect();
        Runner {
            probe,
            names: checks.join(","),
            checks,
            publishers,
            endpoint,
            metrics: outlets.metrics.clone(),
            history: outlets.history.clone(),
            interval,
            timeout,
            last: None,
        }
    }

    /// Probes at once, then every interval, `offset` into it (see [`ticks`]), judging again
    /// whenever the probe wakes, until the task is aborted.
    pub async fn run(mut self, offset: Duration) {
        let mut ticker = ticks(self.interval, offset);
        self.probe_once().await;
        self.probe.started(offset);
        loop {
            let woke = tokio::select! {
                _ = ticker.tick() => false,
                () = self.probe.wake() => true,
            };
            if woke {
                self.publish(false);
            } else {
                self.probe_once().await;
            }
        }
    }

    /// One probe under the timeout, then its report published.
    pub async fn probe_once(&mut self) {
        let span = tracing::info_span!(
            "probe",
            otel.name = P::SPAN,
            check = %self.names,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            "error.type" = tracing::field::Empty,
        );
        let started = Instant::now();
        let run = tokio::time::timeout(self.timeout, self.probe.probe());
        let result = match run.instrument(span.clone()).await {
            Ok(result) => result,
            Err(_) => Err(self.probe.timed_out(self.timeout)),
        };
        if let Err(f) = &result {
            span::fail(&span, f);
        }
        // What follows logs inside the probe's span: its lines carry the trace id.
        let _inside = span.enter();
        let elapsed = started.elapsed();
        self.probe
            .observed(result, elapsed, SystemTime::now(), &self.metrics);
        self.publish(true);
        tracing::debug!(
            check = %self.names,
            status = self.last.as_ref().map_or("none", |r| r.status.as_str()),
            duration_ms = elapsed.as_secs_f64() * 1e3,
            "probe finished"
        );
    }

    /// Judges, logs a change, publishes under every check, keeps the change and (after a
    /// probe, `new_probe`) its latency in the history, then records the figures (last:
    /// that wakes the metrics renderer, which reads the snapshot just written).
    fn publish(&mut self, new_probe: bool) {
        let Some(report) = self.probe.judge(self.last.as_deref(), &self.metrics) else {
            return;
        };
        log_change(&self.names, &self.endpoint, self.last.as_deref(), &report);
        let report = Arc::new(report);
        for p in &self.publishers {
            p.send_replace(Some(report.clone()));
        }
        // After the snapshot: a page rendered for the history's new generation shows the
        // report too.
        self.history
            .published(&self.checks, self.last.as_deref(), &report, new_probe);
        self.last = Some(report.clone());
        self.probe.published(&report, &self.checks, &self.metrics);
    }
}

/// The ticks of a prober after its first probe, made at once: every `interval`, starting
/// one interval plus `offset` from now. The sidecar's probers get offsets spread over the
/// interval, so that they take turns on its one thread instead of all waking together: work
/// done between another probe's PING and its reply would be counted in that PING. A probe
/// that overruns delays the next one rather than stacking them.
pub fn ticks(interval: Duration, offset: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(Instant::now() + interval + offset, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

/// The offset of prober `k` of `n` within `interval`: `k / n` of it.
pub fn offset(interval: Duration, k: usize, n: usize) -> Duration {
    interval.mul_f64(k as f64 / n.max(1) as f64)
}

/// The report of a failed probe: unhealthy, the last success carried over.
pub fn failed(
    failure: Failure,
    last: Option<&Report>,
    now: SystemTime,
    details: Details,
    fix: Option<String>,
) -> Report {
    Report {
        status: Status::Unhealthy,
        finished: Instant::now(),
        finished_at: now,
        latency: None,
        last_success: last.and_then(|r| r.last_success),
        consecutive_failures: last.map_or(0, |r| r.consecutive_failures) + 1,
        error: Some(failure),
        fix,
        warnings: Vec::new(),
        details,
    }
}

/// Logs a change of status, or of cause while unhealthy; a check that stays down with the
/// same cause logs nothing more. `names` is one check or several joined by commas.
pub fn log_change(names: &str, endpoint: &str, prev: Option<&Report>, next: &Report) {
    if !is_change(prev, next) {
        return;
    }
    let verb = if names.contains(',') { "are" } else { "is" };
    let who = names.replace(',', " and ");
    match (next.status, &next.error) {
        (Status::Unhealthy, Some(f)) => tracing::warn!(
            check = names,
            endpoint,
            reason = f.reason.as_str(),
            "{who} {verb} unhealthy: {}",
            f.message
        ),
        (Status::Degraded, _) => tracing::warn!(
            check = names,
            endpoint,
            "{who} {verb} degraded: {}",
            next.warnings
                .iter()
                .map(|w| w.text.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ),
        _ => match prev {
            Some(p) if p.status == Status::Unhealthy && p.consecutive_failures > 0 => {
                tracing::info!(
                    check = names,
                    endpoint,
                    "{who} {verb} healthy again after {} failed probe(s)",
                    p.consecutive_failures
                )
            }
            Some(p) if p.status != Status::Healthy => {
                tracing::info!(check = names, endpoint, "{who} {verb} healthy again")
            }
            _ => tracing::info!(check = names, endpoint, "{who} {verb} healthy"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::failure::Reason;

    #[test]
    fn probers_are_spread_over_the_interval() {
        let i = Duration::from_secs(4);
        let offsets: Vec<_> = (0..4).map(|k| offset(i, k, 4)).collect();
        assert_eq!(offsets, [0, 1000, 2000, 3000].map(Duration::from_millis));
        assert_eq!(offset(i, 0, 1), Duration::ZERO);
        assert_eq!(
            offset(i, 0, 0),
            Duration::ZERO,
            "no probers: no division by zero"
        );
    }

    #[test]
    fn a_failure_counts_and_keeps_the_last_success() {
        let then = SystemTime::now();
        let first = failed(
            Failure::new(Reason::Connect, "refused"),
            None,
            then,
            Details::None,
            None,
        );
        assert_eq!(first.status, Status::Unhealthy);
        assert_eq!(first.consecutive_failures, 1);
        let ok = Report {
            last_success: Some(then),
            consecutive_failures: 0,
            ..first.clone()
        };
        let next = failed(
            Failure::new(Reason::Connect, "refused"),
            Some(&ok),
            then,
            Details::None,
            None,
        );
        assert_eq!(next.consecutive_failures, 1);
        assert_eq!(next.last_success, Some(then));
        let third = failed(
            Failure::new(Reason::Connect, "refused"),
            Some(&next),
            then,
            Details::None,
            None,
        );
        assert_eq!(third.consecutive_failures, 2);
    }
}
