//! The Redis probe: PING timed, INFO read, pool state taken. Only Redis work: interval,
//! timeout, metrics and the snapshot are the runner's.

use std::time::Duration;

use redis::RedisError;
use tokio::time::Instant;

use crate::redis::capability::{self, Collector};
use crate::redis::failure::{Failure, Phase, PhaseCell};
use crate::redis::info::{self, Info};
use crate::redis::pool::{PoolState, TargetPool, connection_lost};
use crate::redis::span as otel;
use crate::redis::target::Target;
use tracing::Instrument;

/// What one successful probe saw.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The round trip of one PING on a ready connection: what the latency SLO is about.
    pub ping: Duration,
    /// INFO's fields, or why INFO failed while PING worked (an ACL without `+info`, say).
    pub info: Result<Info, Failure>,
    /// The pool while the probe held its connection.
    pub pool: PoolState,
    /// On a result backend holding many keys without a TTL: what a few random keys are.
    pub results: Option<ResultSample>,
    /// A Redis Cluster: its state, slots and nodes, or why `CLUSTER INFO` failed.
    pub cluster: Option<Result<crate::redis::cluster::View, Failure>>,
}

/// A result backend's database holding at least this many keys without a TTL has a few of
/// its keys sampled, to tell Celery results kept forever from other keys.
pub const RESULTS_SAMPLE_FROM: u64 = 1000;
/// Keys sampled (RANDOMKEY, then their TTL: two round trips, only then).
pub const RESULTS_SAMPLE: usize = 10;

/// What a sample of random keys showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultSample {
    pub sampled: u32,
    /// Of those, Celery results (`celery-task-meta-*`) without a TTL.
    pub results_without_ttl: u32,
}

/// Probes one target through its pool.
pub struct RedisProbe {
    pool: TargetPool,
    /// Where the current probe is, so that a timeout can say what did not answer.
    phase: PhaseCell,
}

impl RedisProbe {
    pub fn new(pool: TargetPool) -> RedisProbe {
        RedisProbe {
            pool,
            phase: PhaseCell::default(),
        }
    }

    pub fn target(&self) -> &Target {
        self.pool.target()
    }

    /// Where the probe is (or stopped): read by the runner when its timeout fires.
    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    pub fn pool_state(&self) -> PoolState {
        self.pool.state()
    }

    /// One probe: a connection from the pool, PING timed, INFO's sections in one pipeline.
    pub async fn probe(&self) -> Result<Observation, Failure> {
        let started = Instant::now();
        // The sentinels first: a master they name anew is the one this probe reaches.
        if self.target().sentinels().is_some() {
            self.phase.set(Phase::Command("SENTINEL"));
            // Half the probe's time at most: the rest is the master's.
            crate::redis::sentinel::survey(self.target(), self.pool.timeout() / 2).await;
        }
        let fail = |e: &RedisError| Failure::from_redis(e, self.target());
        let mut ping = redis::pipe();
        ping.cmd("PING");
        let (mut conn, _pong, ping): (_, (String,), _) = self
            .pool
            .first(started, &self.phase, "PING", None, &ping)
            .await?;

        let key = self.target().redacted();
        // INFO refused by the ACL lately: not asked again (see `capability`), the refusal
        // stands.
        let info = match capability::refused(key, Collector::Info) {
            Some(refusal) => Err(refusal),
            None => {
                self.phase.set(Phase::Command("INFO"));
                let mut pipe = redis::pipe();
                for section in info::SECTIONS {
                    pipe.cmd("INFO").arg(section);
                }
                let span =
                    otel::Command::new(self.target(), "PIPELINE", Some(info::SECTIONS.len()));
                let reply = pipe
                    .query_async::<Vec<String>>(&mut conn.inner)
                    .instrument(span.span().clone())
                    .await;
                match reply {
                    Ok(texts) => {
                        span.ok();
                        capability::record_allowed(key, Collector::Info);
                        Ok(info::parse(&texts.join("\n")))
                    }
                    Err(e) if connection_lost(&e) => {
                        let failure = conn.fail(&e, self.target());
                        span.failed(&failure);
                        return Err(failure);
                    }
                    // The server answered, with a refusal: the probe half-worked.
                    Err(e) => {
                        let failure = fail(&e);
                        span.failed(&failure);
                        if capability::is_refusal(&failure.message) {
                            capability::record_refusal(key, Collector::Info, &failure);
                        }
                        Err(failure)
                    }
                }
            }
        };
        let results = match &info {
            Ok(i)
                if self.samples_results(i)
                    && capability::refused(key, Collector::ResultsSample).is_none() =>
            {
                self.phase.set(Phase::Command("RANDOMKEY"));
                match sample_results(&mut conn.inner).await {
                    Ok(sample) => {
                        capability::record_allowed(key, Collector::ResultsSample);
                        Some(sample)
                    }
                    Err(e) if connection_lost(&e) => {
                        return Err(conn.fail(&e, self.target()));
                    }
                    // Refused (an ACL without +randomkey or +ttl): no sample, no finding.
                    Err(e) => {
                        let failure = fail(&e);
                        if capability::is_refusal(&failure.message) {
                            capability::record_refusal(key, Collector::ResultsSample, &failure);
                        }
                        None
                    }
                }
            }
            _ => None,
        };
        // A cluster's state and nodes on this connection; the nodes' PINGs below, on
        // connections of their own, once this one is back in the pool.
        let cluster = match self.target().cluster() {
            None => None,
            // CLUSTER refused by the ACL lately: not asked again, the refusal stands.
            Some(_) if let Some(refusal) = capability::refused(key, Collector::Cluster) => {
                Some(Err(refusal))
            }
            Some(_) => {
                self.phase.set(Phase::Command("CLUSTER"));
                let mut pipe = redis::pipe();
                pipe.cmd("CLUSTER").arg("INFO").cmd("CLUSTER").arg("NODES");
                match pipe.query_async::<(String, String)>(&mut conn.inner).await {
                    Ok((state, nodes)) => {
                        capability::record_allowed(key, Collector::Cluster);
                        let asked = conn.node.as_ref().map(ToString::to_string);
                        let asked = asked.unwrap_or_default();
                        Some(Ok(crate::redis::cluster::parse(&state, &nodes, &asked)))
                    }
                    Err(e) if connection_lost(&e) => return Err(conn.fail(&e, self.target())),
                    Err(e) => {
                        let failure = fail(&e);
                        if capability::is_refusal(&failure.message) {
                            capability::record_refusal(key, Collector::Cluster, &failure);
                        }
                        Some(Err(failure))
                    }
                }
            }
        };
        conn.used += 1;
        let pool = self.pool.state();
        drop(conn);
        let cluster = match cluster {
            Some(Ok(view)) => {
                let limit = self.pool.timeout() / 2;
                Some(Ok(crate::redis::cluster::ping_nodes(
                    self.target(),
                    view,
                    limit,
                )
                .await))
            }
            other => other,
        };
        Ok(Observation {
            ping,
            info,
            pool,
            results,
            cluster,
        })
    }

    /// A result backend whose database holds [`RESULTS_SAMPLE_FROM`] keys without a TTL.
    fn samples_results(&self, info: &Info) -> bool {
        let target = self.target();
        target
            .roles()
            .contains(&crate::redis::target::Role::ResultBackend)
            && info
                .db(target.db())
                .is_some_and(|d| d.keys.saturating_sub(d.expires) >= RESULTS_SAMPLE_FROM)
    }
}

/// [`RESULTS_SAMPLE`] random keys and their TTLs, in two pipelines.
async fn sample_results(
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<ResultSample, RedisError> {
    let mut pipe = redis::pipe();
    for _ in 0..RESULTS_SAMPLE {
        pipe.cmd("RANDOMKEY");
    }
    let keys: Vec<Option<Vec<u8>>> = pipe.query_async(conn).await?;
    let keys: Vec<Vec<u8>> = keys.into_iter().flatten().collect();
    if keys.is_empty() {
        return Ok(ResultSample {
            sampled: 0,
            results_without_ttl: 0,
        });
    }
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.cmd("TTL").arg(k);
    }
    let ttls: Vec<i64> = pipe.query_async(conn).await?;
    let results_without_ttl = keys
        .iter()
        .zip(&ttls)
        .filter(|(k, ttl)| k.starts_with(b"celery-task-meta-") && **ttl == -1)
        .count();
    Ok(ResultSample {
        sampled: keys.len() as u32,
        results_without_ttl: results_without_ttl as u32,
    })
}
