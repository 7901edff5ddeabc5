//! The Redis probe: PING timed, INFO read, pool state taken. Only Redis work: interval,
//! timeout, metrics and the snapshot are the runner's.

use std::sync::Mutex;
use std::time::Duration;

use redis::RedisError;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::failure::{Failure, Phase};
use crate::info::{self, Info};
use crate::pool::{self, Conn, ConnectFailure, Manager, Pool};
use crate::target::{Address, Target};

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

/// bb8's view of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolState {
    pub connections: u32,
    pub idle: u32,
}

impl PoolState {
    pub fn in_use(self) -> u32 {
        self.connections.saturating_sub(self.idle)
    }
}

/// Probes one target through its pool.
pub struct RedisProbe {
    target: Target,
    pool: Pool,
    /// Errors of failed connection attempts, from the pool's manager.
    connect_failures: watch::Receiver<Option<ConnectFailure>>,
    /// Where the current probe is, so that a timeout can say what did not answer. A std
    /// mutex: held only to copy a two-word value, never across an await.
    phase: Mutex<Phase>,
    /// The probe timeout, which also bounds a checkout.
    timeout: Duration,
}

/// True for errors below Redis (I/O, a dropped connection), after which the connection
/// is of no more use; false for a reply from the server (NOPERM, LOADING...).
fn connection_lost(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout()
}

impl RedisProbe {
    /// Builds the pool without connecting: the sidecar starts while Redis is down.
    pub fn new(target: Target, timeout: Duration) -> Result<RedisProbe, Failure> {
        let manager =
            Manager::new(&target, timeout).map_err(|e| Failure::from_redis(&e, &target))?;
        let connect_failures = manager.failures();
        Ok(RedisProbe {
            pool: pool::build(manager, timeout),
            target,
            connect_failures,
            phase: Mutex::new(Phase::Connect),
            timeout,
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Where the probe is (or stopped): read by the runner when its timeout fires.
    pub fn phase(&self) -> Phase {
        *self
            .phase
            .lock()
            .expect("phase lock is never held across a panic")
    }

    fn enter(&self, phase: Phase) {
        *self
            .phase
            .lock()
            .expect("phase lock is never held across a panic") = phase;
    }

    pub fn pool_state(&self) -> PoolState {
        let state = self.pool.state();
        PoolState {
            connections: state.connections,
            idle: state.idle_connections,
        }
    }

    /// Resolves with the error of the first connection attempt that started at or after
    /// `since` and failed; older attempts (a previous probe's, finishing late) are ignored.
    async fn connect_failure_since(&self, since: Instant) -> RedisError {
        let mut failures = self.connect_failures.clone();
        loop {
            if let Some(f) = failures
                .borrow_and_update()
                .as_ref()
                .filter(|f| f.started >= since)
            {
                return f.error.clone();
            }
            if failures.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// A connection from the pool, or the real reason there is none.
    async fn checkout(
        &self,
        started: Instant,
    ) -> Result<bb8::PooledConnection<'_, Manager>, Failure> {
        let fail = |e: &RedisError| Failure::from_redis(e, &self.target);
        self.enter(Phase::Connect);
        tokio::select! {
            got = self.pool.get() => match got {
                Ok(conn) => Ok(conn),
                Err(bb8::RunError::User(e)) => Err(fail(&e)),
                // bb8's checkout bound is the probe timeout: the runner's would say the same.
                Err(bb8::RunError::TimedOut) => {
                    Err(Failure::timeout(&self.target, Phase::Connect, self.timeout))
                }
            },
            // A connection attempt of this probe failed: that error is the cause.
            e = self.connect_failure_since(started) => {
                if e.is_connection_dropped() && !e.is_connection_refusal() {
                    // Closed on us: a server that refuses a client says why first.
                    let left = (started + self.timeout).saturating_duration_since(Instant::now());
                    if let Some(said) = greeting(self.target.address(), left).await {
                        return Err(fail(&said));
                    }
                }
                Err(fail(&e))
            }
        }
    }

    /// One probe: a connection from the pool, PING timed, INFO's sections in one pipeline.
    /// A pooled connection found dead (Redis restarted since) is dropped and the probe
    /// retried once on a fresh one, so a restart between probes is not reported as a failure.
    pub async fn probe(&self) -> Result<Observation, Failure> {
        let started = Instant::now();
        let fail = |e: &RedisError| Failure::from_redis(e, &self.target);
        let mut conn = self.checkout(started).await?;
        self.enter(Phase::Command("PING"));
        let mut begun = Instant::now();
        let mut pinged = ping(&mut conn).await;
        if let Err(e) = &pinged
            && conn.used > 1
            && connection_lost(e)
        {
            drop(conn);
            conn = self.checkout(started).await?;
            self.enter(Phase::Command("PING"));
            begun = Instant::now();
            pinged = ping(&mut conn).await;
        }
        pinged.map_err(|e| fail(&e))?;
        let ping = begun.elapsed();

        self.enter(Phase::Command("INFO"));
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
        let pool = self.pool_state();
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

/// What a plain server says to a new connection before anything is sent: Redis writes
/// `-ERR max number of clients reached` (or another error) and closes when it will not take
/// a client. `None` when it says nothing within 250 ms (or the time `left`), or for TLS,
/// where reading raw bytes would tell nothing.
async fn greeting(address: &Address, left: Duration) -> Option<RedisError> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    let read = async {
        let n = match address {
            Address::Tcp { tls: true, .. } => return None,
            Address::Tcp { host, port, .. } => {
                let mut s = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .ok()?;
                s.read(&mut buf).await.ok()?
            }
            Address::Unix { path } => {
                let mut s = tokio::net::UnixStream::connect(path).await.ok()?;
                s.read(&mut buf).await.ok()?
            }
        };
        Some(n)
    };
    let limit = left
        .saturating_sub(Duration::from_millis(5))
        .min(Duration::from_millis(250));
    let n = tokio::time::timeout(limit, read).await.ok()??;
    let line = std::str::from_utf8(&buf[..n]).ok()?.lines().next()?;
    let reply = line.strip_prefix('-')?;
    let (code, detail) = reply.split_once(' ').unwrap_or((reply, ""));
    Some(redis::make_extension_error(
        code.to_string(),
        Some(detail.to_string()),
    ))
}
