//! The Redis check, as the [`Runner`](crate::serve::runner::Runner) runs it: PING and INFO
//! through the target's pool, judged by [`verdict::redis`], published under each role's
//! check, with the metrics of each role.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::redis::failure::{Failure, Phase, Reason};
use crate::redis::info::Info;
use crate::redis::pool::{PoolState, TargetPool};
use crate::redis::probe::{Observation, RedisProbe};
use crate::redis::target::Target;
use crate::serve::health::{Details, KeyspaceDoc, RedisDetails, SentinelDoc};
use crate::serve::metrics::Metrics;
use crate::serve::runner::{Probe, failed};
use crate::serve::snapshot::{Report, Status};
use crate::verdict;

/// One Redis target's check.
pub struct RedisCheck {
    probe: RedisProbe,
    target: Target,
    slo: Duration,
    /// The last probe's result, when it finished and how long it took, until judged.
    pending: Option<(Result<Observation, Failure>, SystemTime, Duration)>,
    /// Keys evicted lately (a broker or result backend that evicts loses Celery's data).
    evictions: verdict::Evictions,
}

impl RedisCheck {
    /// `pool` is the target's pool. Every role's metrics start at their initial values.
    pub fn new(target: Target, pool: TargetPool, slo: Duration, metrics: &Metrics) -> RedisCheck {
        for role in target.roles() {
            metrics.init_redis(role.as_str());
            if target.sentinels().is_some() {
                metrics.record_failovers(role.as_str(), 0);
            }
        }
        RedisCheck {
            probe: RedisProbe::new(pool),
            target,
            slo,
            pending: None,
            evictions: verdict::Evictions::default(),
        }
    }

    fn pool_state(&self) -> PoolState {
        self.probe.pool_state()
    }
}

impl Probe for RedisCheck {
    type Observation = Observation;
    const SPAN: &'static str = "probe redis";

    async fn probe(&self) -> Result<Observation, Failure> {
        self.probe.probe().await
    }

    fn timed_out(&self, limit: Duration) -> Failure {
        Failure::timeout(&self.target, self.probe.phase(), limit)
    }

    fn observed(
        &mut self,
        result: Result<Observation, Failure>,
        elapsed: Duration,
        now: SystemTime,
        metrics: &Metrics,
    ) {
        if let Some(s) = self.target.sentinels() {
            let failovers = s.state().failovers;
            for role in self.target.roles() {
                metrics.record_failovers(role.as_str(), failovers);
            }
        }
        match &result {
            Ok(obs) => {
                let db = self.target.db();
                let keys = obs.info.as_ref().ok().and_then(|i| i.db(db));
                for role in self.target.roles() {
                    metrics.record_redis_success(
                        role.as_str(),
                        obs.ping.as_secs_f64(),
                        obs.info.as_ref().ok(),
                        obs.pool,
                    );
                    metrics.record_keys(role.as_str(), db, keys);
                    if self.target.cluster().is_some() {
                        let view = obs.cluster.as_ref().and_then(|c| c.as_ref().ok());
                        metrics.record_cluster(role.as_str(), view);
                    }
                }
            }
            Err(failure) => {
                // A timeout while still waiting for a connection, from bb8 or the runner.
                let checkout_timeout =
                    failure.reason == Reason::Timeout && self.probe.phase() == Phase::Connect;
                let pool = self.pool_state();
                for role in self.target.roles() {
                    metrics.record_redis_failure(role.as_str(), failure, pool, checkout_timeout);
                    metrics.record_keys(role.as_str(), self.target.db(), None);
                    if self.target.cluster().is_some() {
                        metrics.record_cluster(role.as_str(), None);
                    }
                }
            }
        }
        self.pending = Some((result, now, elapsed));
    }

    fn judge(&mut self, last: Option<&Report>, _: &Metrics) -> Option<Report> {
        let (result, now, _) = self.pending.as_ref()?;
        Some(match result {
            Ok(obs) => {
                let mut judged =
                    verdict::redis(obs.ping, obs.info.as_ref(), self.target.roles(), self.slo);
                if let Ok(info) = &obs.info {
                    let recent = self.evictions.observe(info.evicted_keys, Instant::now());
                    let found = [
                        verdict::evictions(recent, info, self.target.roles()),
                        verdict::results_kept(info, self.target.db(), obs.results),
                    ];
                    for f in found.into_iter().flatten() {
                        judged.findings.push(f);
                        judged.status = judged.status.max(Status::Degraded);
                    }
                }
                if let Some(s) = self.target.sentinels() {
                    for f in verdict::sentinel_findings(s, &s.state().views) {
                        judged.findings.push(f);
                        judged.status = judged.status.max(Status::Degraded);
                    }
                }
                if let Some(cluster) = &obs.cluster {
                    let (error, findings) = match cluster {
                        Ok(view) => verdict::cluster(view, self.slo),
                        Err(f) => verdict::cluster_refused(f),
                    };
                    if judged.error.is_none()
                        && let Some(e) = error
                    {
                        judged.error = Some(e);
                        judged.status = Status::Unhealthy;
                    }
                    for f in findings {
                        judged.findings.push(f);
                        judged.status = judged.status.max(Status::Degraded);
                    }
                }
                let (error, fix) = judged.error.map(|c| (c.failure, c.fix)).unzip();
                Report {
                    status: judged.status,
                    finished: Instant::now(),
                    finished_at: *now,
                    latency: Some(obs.ping),
                    last_success: Some(*now),
                    consecutive_failures: 0,
                    error,
                    fix,
                    warnings: judged.findings,
                    details: {
                        let mut d = details(obs.pool, obs.info.as_ref().ok(), &self.target);
                        if let (Details::Redis(r), Some(Ok(view))) = (&mut d, &obs.cluster) {
                            r.cluster = Some(view.clone());
                        }
                        d
                    },
                }
            }
            Err(failure) => failed(
                failure.clone(),
                last,
                *now,
                details(self.pool_state(), None, &self.target),
                Some(verdict::failure_fix(failure, &self.target)),
            ),
        })
    }

    fn published(&self, _: &Report, checks: &[String], metrics: &Metrics) {
        let Some((_, now, elapsed)) = &self.pending else {
            return;
        };
        let unix = crate::text::unix_secs(*now);
        for check in checks {
            metrics.record_probe(check, unix, elapsed.as_secs_f64());
        }
    }
}

/// The `details` of a Redis check: the pool, INFO's figures (with the keys of the
/// target's database) when there are any, and a Sentinel target's sentinels.
fn details(pool: PoolState, info: Option<&Info>, target: &Target) -> Details {
    let db = target.db();
    Details::Redis(Box::new(RedisDetails {
        sentinel: target.sentinels().map(SentinelDoc::from),
        cluster: None,
        pool: pool.into(),
        keyspace: info.and_then(|i| i.db(db)).map(|k| KeyspaceDoc {
            db,
            keys: k.keys,
            expiring: k.expires,
            avg_ttl_seconds: k.avg_ttl_ms as f64 / 1000.0,
        }),
        info: info.cloned(),
    }))
}
