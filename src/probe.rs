//! The Redis probe: PING timed, INFO read, pool state taken. Only Redis work: interval,
//! timeout, metrics and the snapshot are the runner's.

use std::sync::Mutex;
use std::time::Duration;

use redis::RedisError;
use tokio::time::Instant;

use crate::failure::{Failure, Phase};
use crate::info::{self, Info};
use crate::pool::{Conn, PoolState, TargetPool, connection_lost};
use crate::target::Target;

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

/// Where a probe is. A std mutex: held only to copy a two-word value, never across an await.
#[derive(Debug)]
pub struct PhaseCell(Mutex<Phase>);

impl Default for PhaseCell {
    fn default() -> Self {
        PhaseCell(Mutex::new(Phase::Connect))
    }
}

impl PhaseCell {
    pub fn get(&self) -> Phase {
        *self
            .0
            .lock()
            .expect("phase lock is never held across a panic")
    }

    pub fn set(&self, phase: Phase) {
        *self
            .0
            .lock()
            .expect("phase lock is never held across a panic") = phase;
    }
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
    /// A pooled connection found dead (Redis restarted since) is dropped and the probe
    /// retried once on a fresh one, so a restart between probes is not reported as a failure.
    pub async fn probe(&self) -> Result<Observation, Failure> {
        let started = Instant::now();
        let fail = |e: &RedisError| Failure::from_redis(e, self.target());
        self.phase.set(Phase::Connect);
        let mut conn = self.pool.checkout(started).await?;
        self.phase.set(Phase::Command("PING"));
        let mut begun = Instant::now();
        let mut pinged = ping(&mut conn).await;
        if let Err(e) = &pinged
            && conn.used > 1
            && connection_lost(e)
        {
            drop(conn);
            self.phase.set(Phase::Connect);
            conn = self.pool.checkout(started).await?;
            self.phase.set(Phase::Command("PING"));
            begun = Instant::now();
            pinged = ping(&mut conn).await;
        }
        pinged.map_err(|e| fail(&e))?;
        let ping = begun.elapsed();

        self.phase.set(Phase::Command("INFO"));
        let mut pipe = redis::pipe();
        for section in info::SECTIONS {
            pipe.cmd("INFO").arg(section);
        }
        let info = match pipe.query_async::<Vec<String>>(&mut conn.inner).await {
            Ok(texts) => Ok(info::parse(&texts.join("\n"))),
            Err(e) if connection_lost(&e) => {
                conn.broken = true;
                return Err(fail(&e));
            }
            // The server answered, with a refusal: the probe half-worked.
            Err(e) => Err(fail(&e)),
        };
        conn.used += 1;
        let pool = self.pool.state();
        drop(conn);
        Ok(Observation { ping, info, pool })
    }
}

/// One PING; a connection that fails below Redis is marked broken so bb8 drops it.
async fn ping(conn: &mut Conn) -> Result<(), RedisError> {
    conn.used += 1;
    let result = redis::cmd("PING")
        .query_async::<String>(&mut conn.inner)
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(e) => {
            if connection_lost(&e) {
                conn.broken = true;
            }
            Err(e)
        }
    }
}
