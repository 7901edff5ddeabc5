//! The connection pool of one target: bb8 over the redis crate's multiplexed connections,
//! remembering why the last connection attempt failed.
//!
//! bb8's `get()` only ever says "Timed out in bb8": connection errors go nowhere useful. This
//! manager publishes each failed attempt's error on a `watch` channel, so a probe waiting on
//! `get()` learns the real cause (refused, DNS, WRONGPASS, TLS...) the moment it happens.
//!
//! We do not use bb8-redis's manager: it connects with the redis crate's fixed defaults (1 s
//! connect, 500 ms response timeout), which would cut a probe short of
//! `SIDECAR_PROBE_TIMEOUT`, and it gives no way to learn why a connect failed.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, RedisError};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::target::Target;

/// Connections a target's pool may hold: the probe uses one at a time; the second lets a
/// later probe (Celery's queue scan) run beside it.
const MAX_CONNECTIONS: u32 = 2;

pub type Pool = bb8::Pool<Manager>;

/// The name the sidecar's connections carry in `CLIENT LIST`.
pub const CLIENT_NAME: &str = env!("CARGO_PKG_NAME");

/// A pooled connection and what the probe learned about it.
pub struct Conn {
    pub inner: MultiplexedConnection,
    /// Set by a probe when the connection failed below Redis (I/O): bb8 then drops it
    /// instead of handing it out again.
    pub broken: bool,
    /// Commands answered on it; 0 means fresh from `connect`.
    pub used: u64,
}

/// Makes connections for bb8 and reports why one could not be made.
pub struct Manager {
    client: Client,
    config: AsyncConnectionConfig,
    failures: watch::Sender<Option<ConnectFailure>>,
}

/// A failed connection attempt: when it started, and its error.
#[derive(Debug, Clone)]
pub struct ConnectFailure {
    pub started: Instant,
    pub error: RedisError,
}

impl Manager {
    /// The redis crate's own connect and response timeouts are set 50% above the probe
    /// timeout: a backstop only, so that the runner's timeout, which knows what the probe
    /// was waiting for, is the one that fires.
    pub fn new(target: &Target, timeout: Duration) -> Result<Manager, RedisError> {
        let client = Client::open(target.connection_info())?;
        let backstop = timeout + timeout / 2;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(backstop))
            .set_response_timeout(Some(backstop));
        Ok(Manager {
            client,
            config,
            failures: watch::Sender::new(None),
        })
    }

    /// Each failed connection attempt, newest last (the receiver sees only the latest).
    pub fn failures(&self) -> watch::Receiver<Option<ConnectFailure>> {
        self.failures.subscribe()
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = RedisError;

    /// Connects, names the connection, and sends one PING, so that errors a server gives
    /// only on the first command (NOAUTH, LOADING, "max number of clients reached") count as
    /// connection failures.
    async fn connect(&self) -> Result<Conn, RedisError> {
        let started = Instant::now();
        let attempt = async {
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&self.config)
                .await?;
            // Named, so that an admin reading CLIENT LIST sees who holds the connection.
            // Ignored when an ACL forbids it (Redis before 7.2 has no CLIENT SETINFO).
            let _ = conn
                .req_packed_command(redis::cmd("CLIENT").arg("SETNAME").arg(CLIENT_NAME))
                .await;
            conn.req_packed_command(&redis::cmd("PING")).await?;
            Ok(conn)
        };
        let result: Result<MultiplexedConnection, RedisError> = attempt.await;
        match result {
            Ok(inner) => Ok(Conn {
                inner,
                broken: false,
                used: 0,
            }),
            Err(e) => {
                self.failures.send_replace(Some(ConnectFailure {
                    started,
                    error: e.clone(),
                }));
                Err(e)
            }
        }
    }

    /// Not used on checkout (the probe's own PING is the test); kept correct anyway.
    async fn is_valid(&self, conn: &mut Conn) -> Result<(), RedisError> {
        conn.inner
            .req_packed_command(&redis::cmd("PING"))
            .await
            .map(drop)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken
    }
}

/// Builds the pool without connecting, so the sidecar starts while Redis is down.
/// `timeout` bounds a checkout; failed connects are not retried inside bb8, the runner's
/// next probe retries. No PING on checkout: the probe's PING is the test, and a probe that
/// finds a pooled connection dead marks it broken and takes a fresh one.
pub fn build(manager: Manager, timeout: Duration) -> Pool {
    bb8::Pool::builder()
        .max_size(MAX_CONNECTIONS)
        .min_idle(None)
        .connection_timeout(timeout)
        .retry_connection(false)
        .test_on_check_out(false)
        .idle_timeout(Some(Duration::from_secs(300)))
        .build_unchecked(manager)
}
