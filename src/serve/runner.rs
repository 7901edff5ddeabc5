//! The runner: runs a probe every interval under the timeout, times it, and writes the
//! result once into the snapshot, the metrics and (on a change of state) the log.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::time::{Instant, MissedTickBehavior};

use crate::redis::failure::{Failure, Phase, Reason};
use crate::redis::info::Info;
use crate::redis::pool::{PoolState, TargetPool};
use crate::redis::probe::RedisProbe;
use crate::redis::span as otel;
use crate::redis::target::Target;
use crate::serve::metrics::Metrics;
use crate::serve::snapshot::{Publisher, Report, Status};
use crate::verdict;
use tracing::Instrument;

/// One check a target's probe reports under: a target that plays several roles is probed
/// once and its report published under each role's check and `role` label.
pub struct Outlet {
    pub role: &'static str,
    pub check: String,
    pub publisher: Publisher,
}

/// Probes one Redis target and publishes what it found.
pub struct Runner {
    /// The probe, or why one could not be built (then every run reports that).
    probe: Result<RedisProbe, Failure>,
    target: Target,
    outlets: Vec<Outlet>,
    /// The check names joined, for log lines.
    names: String,
    metrics: Arc<Metrics>,
    timeout: Duration,
    slo: Duration,
    last: Option<Arc<Report>>,
}

impl Runner {
    /// `publishers` are in the order of `target.roles()`; `pool` is the target's pool, or
    /// why it could not be built.
    pub fn new(
        target: Target,
        pool: Result<TargetPool, Failure>,
        timeout: Duration,
        slo: Duration,
        publishers: Vec<Publisher>,
        metrics: Arc<Metrics>,
    ) -> Runner {
        let outlets: Vec<Outlet> = target
            .roles()
            .iter()
            .zip(publishers)
            .map(|(role, publisher)| Outlet {
                role: role.as_str(),
                check: role.check_name(),
                publisher,
            })
            .collect();
        for o in &outlets {
            metrics.init_redis(o.role);
        }
        let names: Vec<&str> = outlets.iter().map(|o| o.check.as_str()).collect();
        Runner {
            probe: pool.map(RedisProbe::new),
            names: names.join(","),
            target,
            outlets,
            metrics,
            timeout,
            slo,
            last: None,
        }
    }

    /// Probes at once, then every `interval`, `offset` into it (see [`ticks`]), until the
    /// task is aborted.
    pub async fn run(mut self, interval: Duration, offset: Duration) {
        let mut ticker = ticks(interval, offset);
        self.probe_once().await;
        loop {
            ticker.tick().await;
            self.probe_once().await;
        }
    }

    /// One probe under the timeout; returns the report it published.
    pub async fn probe_once(&mut self) -> Arc<Report> {
        let span = tracing::info_span!(
            "probe",
            otel.name = "probe redis",
            check = %self.names,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            "error.type" = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = match &self.probe {
            Err(failure) => Err(failure.clone()),
            Ok(probe) => {
                let run = tokio::time::timeout(self.timeout, probe.probe());
                match run.instrument(span.clone()).await {
                    Ok(result) => result,
                    Err(_) => Err(Failure::timeout(&self.target, probe.phase(), self.timeout)),
                }
            }
        };
        if let Err(f) = &result {
            otel::fail(&span, f);
        }
        // What follows logs inside the probe's span: its lines carry the trace id.
        let _inside = span.enter();
        let elapsed = started.elapsed();
        let now = SystemTime::now();
        // A timeout while still waiting for a connection, from bb8 or from the runner.
        let checkout_timeout = matches!(&result, Err(f) if f.reason == Reason::Timeout)
            && matches!(&self.probe, Ok(p) if p.phase() == Phase::Connect);
        let report = match result {
            Ok(obs) => {
                for o in &self.outlets {
                    self.metrics.record_redis_success(
                        o.role,
                        obs.ping.as_secs_f64(),
                        obs.info.as_ref().ok(),
                        obs.pool,
                    );
                }
                let judged =
                    verdict::redis(obs.ping, obs.info.as_ref(), self.target.roles(), self.slo);
                let (error, fix) = judged.error.map(|c| (c.failure, c.fix)).unzip();
                Report {
                    status: judged.status,
                    finished: Instant::now(),
                    finished_at: now,
                    latency: Some(obs.ping),
                    last_success: Some(now),
                    consecutive_failures: 0,
                    error,
                    fix,
                    warnings: judged.findings,
                    details: details(obs.pool, obs.info.as_ref().ok()),
                    fields: json!({}),
                    queues: None,
                }
            }
            Err(failure) => {
                let pool = self
                    .probe
                    .as_ref()
                    .map(|p| p.pool_state())
                    .unwrap_or_default();
                for o in &self.outlets {
                    self.metrics
                        .record_redis_failure(o.role, &failure, pool, checkout_timeout);
                }
                failed(failure, self.last.as_deref(), now, details(pool, None))
            }
        };
        tracing::debug!(
            check = %self.names,
            status = report.status.as_str(),
            duration_ms = elapsed.as_secs_f64() * 1e3,
            "probe finished"
        );
        log_change(
            &self.names,
            self.target.redacted(),
            self.last.as_deref(),
            &report,
        );
        let report = Arc::new(report);
        for o in &self.outlets {
            o.publisher.send_replace(Some(report.clone()));
        }
        self.last = Some(report.clone());
        // Last: this wakes the metrics renderer, which reads the snapshot just written.
        let unix = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        for o in &self.outlets {
            self.metrics
                .record_probe(&o.check, unix.as_secs_f64(), elapsed.as_secs_f64());
        }
        report
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

/// The `details` of a Redis check: the pool, and INFO's figures when there are any.
fn details(pool: PoolState, info: Option<&Info>) -> Value {
    let mut details = json!({
        "pool": { "connections": pool.connections, "idle": pool.idle, "in_use": pool.in_use() }
    });
    if let (Some(i), Some(d)) = (info, details.as_object_mut()) {
        let fields = json!({
            "role": i.role,
            "redis_version": i.redis_version,
            "uptime_seconds": i.uptime_seconds,
            "connected_clients": i.connected_clients,
            "blocked_clients": i.blocked_clients,
            "maxclients": i.maxclients,
            "used_memory_bytes": i.used_memory_bytes,
            "maxmemory_bytes": i.maxmemory_bytes,
            "maxmemory_policy": i.maxmemory_policy,
            "evicted_keys": i.evicted_keys,
            "rejected_connections": i.rejected_connections,
        });
        if let Some(f) = fields.as_object() {
            d.extend(f.clone());
        }
    }
    details
}

/// The report of a failed probe: unhealthy, the last success carried over.
pub fn failed(failure: Failure, last: Option<&Report>, now: SystemTime, details: Value) -> Report {
    Report {
        status: Status::Unhealthy,
        finished: Instant::now(),
        finished_at: now,
        latency: None,
        last_success: last.and_then(|r| r.last_success),
        consecutive_failures: last.map_or(0, |r| r.consecutive_failures) + 1,
        error: Some(failure),
        fix: None,
        warnings: Vec::new(),
        details,
        fields: json!({}),
        queues: None,
    }
}

/// Logs a change of status, or of cause while unhealthy; a check that stays down with the
/// same cause logs nothing more. `names` is one check or several joined by commas.
pub fn log_change(names: &str, endpoint: &str, prev: Option<&Report>, next: &Report) {
    let same_cause = |a: &Report| {
        a.error.as_ref().map(|f| &f.message) == next.error.as_ref().map(|f| &f.message)
    };
    if prev.is_some_and(|p| p.status == next.status && same_cause(p)) {
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
            json!({}),
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
            json!({}),
        );
        assert_eq!(next.consecutive_failures, 1);
        assert_eq!(next.last_success, Some(then));
        let third = failed(
            Failure::new(Reason::Connect, "refused"),
            Some(&next),
            then,
            json!({}),
        );
        assert_eq!(third.consecutive_failures, 2);
    }
}
