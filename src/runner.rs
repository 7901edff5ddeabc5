//! The runner: runs a probe every interval under the timeout, times it, and writes the
//! result once into the snapshot, the metrics and (on a change of state) the log.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::show;
use crate::failure::{Failure, Phase};
use crate::metrics::Metrics;
use crate::probe::{Observation, RedisProbe};
use crate::snapshot::{Publisher, Report, Status};
use crate::target::Target;

/// Probes one Redis target and publishes what it found.
pub struct Runner {
    /// The probe, or why one could not be built (then every run reports that).
    probe: Result<RedisProbe, Failure>,
    target: Target,
    check: String,
    role: String,
    publisher: Publisher,
    metrics: Arc<Metrics>,
    timeout: Duration,
    slo: Duration,
    last: Option<Arc<Report>>,
}

impl Runner {
    pub fn new(
        target: Target,
        timeout: Duration,
        slo: Duration,
        publisher: Publisher,
        metrics: Arc<Metrics>,
    ) -> Runner {
        let role = target.role_label();
        metrics.init_redis(&role);
        Runner {
            probe: RedisProbe::new(target.clone(), timeout),
            check: target.check_name(),
            role,
            target,
            publisher,
            metrics,
            timeout,
            slo,
            last: None,
        }
    }

    /// Probes every `interval` (the first at once) until the task is aborted. A probe that
    /// overruns delays the next one rather than stacking them.
    pub async fn run(mut self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.probe_once().await;
        }
    }

    /// One probe under the timeout; returns the report it published.
    pub async fn probe_once(&mut self) -> Arc<Report> {
        let started = Instant::now();
        let result = match &self.probe {
            Err(failure) => Err((failure.clone(), false)),
            Ok(probe) => match tokio::time::timeout(self.timeout, probe.probe()).await {
                Ok(result) => result.map_err(|f| (f, false)),
                Err(_) => {
                    let phase = probe.phase();
                    Err((
                        Failure::timeout(&self.target, phase, self.timeout),
                        phase == Phase::Connect,
                    ))
                }
            },
        };
        let elapsed = started.elapsed();
        let now = SystemTime::now();
        let pool = self
            .probe
            .as_ref()
            .map(|p| p.pool_state())
            .unwrap_or_default();
        let report = match result {
            Ok(obs) => {
                self.metrics.record_redis_success(
                    &self.role,
                    obs.ping.as_secs_f64(),
                    obs.info.as_ref().ok(),
                    obs.pool,
                );
                self.success(obs, now)
            }
            Err((failure, checkout_timeout)) => {
                self.metrics
                    .record_redis_failure(&self.role, &failure, pool, checkout_timeout);
                self.failure(failure, pool, now)
            }
        };
        tracing::debug!(
            check = %self.check,
            status = report.status.as_str(),
            duration_ms = elapsed.as_secs_f64() * 1e3,
            "probe finished"
        );
        self.log_change(&report);
        let report = Arc::new(report);
        self.publisher.send_replace(Some(report.clone()));
        self.last = Some(report.clone());
        // Last: this wakes the metrics renderer, which reads the snapshot just written.
        let unix = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        self.metrics
            .record_probe(&self.check, unix.as_secs_f64(), elapsed.as_secs_f64());
        report
    }

    fn success(&self, obs: Observation, now: SystemTime) -> Report {
        let mut warnings = Vec::new();
        if obs.ping > self.slo {
            warnings.push(format!(
                "slow: PING took {:.1}ms, over the {} latency SLO",
                obs.ping.as_secs_f64() * 1e3,
                show(self.slo)
            ));
        }
        let info = match &obs.info {
            Ok(info) => Some(info),
            Err(f) => {
                warnings.push(format!(
                    "INFO failed, so clients, memory and evictions are unknown: {}",
                    f.message
                ));
                None
            }
        };
        let mut details = json!({
            "pool": {
                "connections": obs.pool.connections,
                "idle": obs.pool.idle,
                "in_use": obs.pool.in_use(),
            }
        });
        if let Some(i) = info {
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
            if let (Some(d), Some(f)) = (details.as_object_mut(), fields.as_object()) {
                d.extend(f.clone());
            }
        }
        Report {
            status: if warnings.is_empty() {
                Status::Healthy
            } else {
                Status::Degraded
            },
            finished: Instant::now(),
            finished_at: now,
            latency: Some(obs.ping),
            last_success: Some(now),
            consecutive_failures: 0,
            error: None,
            warnings,
            details,
        }
    }

    fn failure(&self, failure: Failure, pool: crate::probe::PoolState, now: SystemTime) -> Report {
        let last = self.last.as_deref();
        Report {
            status: Status::Unhealthy,
            finished: Instant::now(),
            finished_at: now,
            latency: None,
            last_success: last.and_then(|r| r.last_success),
            consecutive_failures: last.map_or(0, |r| r.consecutive_failures) + 1,
            error: Some(failure),
            warnings: Vec::new(),
            details: json!({
                "pool": { "connections": pool.connections, "idle": pool.idle, "in_use": pool.in_use() }
            }),
        }
    }

    /// Logs a change of status, or of cause while unhealthy; a Redis that stays down with the
    /// same cause logs nothing more.
    fn log_change(&self, next: &Report) {
        let prev = self.last.as_deref();
        let same_cause = |a: &Report| {
            a.error.as_ref().map(|f| &f.message) == next.error.as_ref().map(|f| &f.message)
        };
        if prev.is_some_and(|p| p.status == next.status && same_cause(p)) {
            return;
        }
        let (check, endpoint) = (&self.check, self.target.redacted());
        match (next.status, &next.error) {
            (Status::Unhealthy, Some(f)) => tracing::warn!(
                check = %check, endpoint, reason = f.reason.as_str(),
                "{check} is unhealthy: {}", f.message
            ),
            (Status::Degraded, _) => tracing::warn!(
                check = %check, endpoint,
                "{check} is degraded: {}", next.warnings.join("; ")
            ),
            _ => match prev {
                Some(p) if p.status == Status::Unhealthy => tracing::info!(
                    check = %check, endpoint,
                    "{check} is healthy again after {} failed probe(s)", p.consecutive_failures
                ),
                _ => tracing::info!(check = %check, endpoint, "{check} is healthy"),
            },
        }
    }
}
