//! The Redis probe: PING timed, INFO read, pool state taken. Only Redis work: interval,
//! timeout, metrics and the snapshot are the runner's.

use std::time::Duration;

use redis::RedisError;
use tokio::time::Instant;

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
        let fail = |e: &RedisError| Failure::from_redis(e, self.target());
        let mut ping = redis::pipe();
        ping.cmd("PING");
        let (mut conn, _pong, ping): (_, (String,), _) = self
            .pool
            .first(started, &self.phase, "PING", None, &ping)
            .await?;

        self.phase.set(Phase::Command("INFO"));
        let mut pipe = redis::pipe();
        for section in info::SECTIONS {
            pipe.cmd("INFO").arg(section);
        }
        let span = otel::Command::new(self.target(), "PIPELINE", Some(info::SECTIONS.len()));
        let reply = pipe
            .query_async::<Vec<String>>(&mut conn.inner)
            .instrument(span.span().clone())
            .await;
        let info = match reply {
            Ok(texts) => {
                span.ok();
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
                Err(failure)
            }
        };
        conn.used += 1;
        let pool = self.pool.state();
        drop(conn);
        Ok(Observation { ping, info, pool })
    }
}
