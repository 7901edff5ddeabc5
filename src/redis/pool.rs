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

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, RedisError};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::redis::capability::{self, Collector};
use crate::redis::failure::{Failure, Phase, PhaseCell, Reason};
use crate::redis::sentinel;
use crate::redis::span as otel;
use crate::redis::target::{Address, Node, Target};
use tracing::Instrument;

/// Connections a target's pool may hold: the probe uses one at a time; the second lets a
/// later probe (Celery's queue scan) run beside it.
pub const MAX_CONNECTIONS: u32 = 2;

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
    /// The server it was made to (a Sentinel target's master, a Cluster target's node);
    /// `None` for a Unix socket. A Sentinel target's is stale once the sentinels name
    /// another.
    pub node: Option<Node>,
}

impl Conn {
    /// The failure a command's error means; a connection that failed below Redis is marked
    /// broken, so bb8 drops it instead of handing it out again.
    pub fn fail(&mut self, e: &RedisError, target: &Target) -> Failure {
        if connection_lost(e) {
            self.broken = true;
        }
        Failure::from_redis(e, target)
    }
}

/// Makes connections for bb8 and reports why one could not be made.
pub struct Manager {
    config: AsyncConnectionConfig,
    /// Bounds the connect and TLS handshake (the redis crate's connection timeout applies
    /// only to connections it makes itself).
    connect_limit: Duration,
    target: Target,
    failures: watch::Sender<Option<ConnectFailure>>,
    /// When a connection last logged in: the credentials worked then.
    verified: Arc<Mutex<Option<Instant>>>,
}

/// A failed connection attempt: when it started, its error, the target it was made to (a
/// Sentinel target's master), and for a master no sentinel named, why.
#[derive(Debug, Clone)]
pub struct ConnectFailure {
    pub started: Instant,
    pub error: RedisError,
    pub at: Target,
    pub known: Option<Failure>,
}

impl Manager {
    /// The redis crate's own connect and response timeouts are set 50% above the probe
    /// timeout: a backstop only, so that the runner's timeout, which knows what the probe
    /// was waiting for, is the one that fires.
    pub fn new(target: &Target, timeout: Duration) -> Manager {
        let backstop = timeout + timeout / 2;
        let config = AsyncConnectionConfig::new().set_response_timeout(Some(backstop));
        Manager {
            config,
            connect_limit: backstop,
            target: target.clone(),
            failures: watch::Sender::new(None),
            verified: Arc::new(Mutex::new(None)),
        }
    }

    /// Each failed connection attempt, newest last (the receiver sees only the latest).
    pub fn failures(&self) -> watch::Receiver<Option<ConnectFailure>> {
        self.failures.subscribe()
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = RedisError;

    /// Connects and logs in (see [`open`]).
    async fn connect(&self) -> Result<Conn, RedisError> {
        let started = Instant::now();
        let at = match sentinel::resolve(&self.target, self.connect_limit).await {
            Ok(at) => at,
            Err(failure) => {
                let error = redis::make_extension_error(
                    "SENTINEL".to_string(),
                    Some(failure.message.clone()),
                );
                self.failures.send_replace(Some(ConnectFailure {
                    started,
                    error: error.clone(),
                    at: self.target.clone(),
                    known: Some(failure),
                }));
                return Err(error);
            }
        };
        // A cluster: the first of its known masters and seeds that accepts.
        let at = crate::redis::cluster::pick(&at, self.connect_limit).await;
        match open(&self.config, &at, self.connect_limit).await {
            Ok(inner) => {
                *self
                    .verified
                    .lock()
                    .expect("verified lock is never poisoned") = Some(Instant::now());
                Ok(Conn {
                    inner,
                    broken: false,
                    used: 0,
                    node: at.node(),
                })
            }
            Err(e) => {
                self.failures.send_replace(Some(ConnectFailure {
                    started,
                    error: e.clone(),
                    at,
                    known: None,
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

/// The byte stream to a target: TCP, a Unix socket, or TLS over TCP made by [`crate::redis::tls`]
/// (the same roots, client certificate and checks as `check`'s). Errors are the I/O errors
/// the redis crate would have given, so that they are classified the same way.
async fn stream(target: &Target) -> Result<Box<dyn crate::redis::resp::Stream>, RedisError> {
    match target.address() {
        // Resolved to its master before a stream is made (see `sentinel::resolve`).
        Address::Sentinel(_) => Err(RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "a Sentinel target is resolved to its master first",
        ))),
        Address::Unix { path } => Ok(Box::new(tokio::net::UnixStream::connect(path).await?)),
        Address::Tcp { host, port, tls } => {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            let _ = tcp.set_nodelay(true);
            let Some(tls) = tls else {
                return Ok(Box::new(tcp));
            };
            let client = crate::redis::tls::client(tls).map_err(|problem| {
                RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "TLS cannot be set up",
                    problem,
                ))
            })?;
            let name = crate::redis::tls::server_name(host).ok_or_else(|| {
                RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "not a name TLS can check",
                    host.clone(),
                ))
            })?;
            let connector = tokio_rustls::TlsConnector::from(client.config);
            Ok(Box::new(connector.connect(name, tcp).await?))
        }
    }
}

/// Opens a connection as the app's client would: AUTH with the target's user and password
/// (the password alone on a Redis before 6, as redis-py retries), SELECT, `CLIENT SETNAME`
/// (so that an admin reading CLIENT LIST sees who holds it; ignored when an ACL forbids it),
/// and one PING, so that errors a server gives only on the first command (NOAUTH, LOADING,
/// "max number of clients reached") count as connection failures. The commands are sent
/// here, not by the redis crate's setup, because the crate replaces the server's refusal of
/// AUTH with a generic "authentication failed": here the server's own words (WRONGPASS,
/// "without any password configured") come back, as `check` shows them. `connect_limit`
/// bounds the TCP connect and the TLS handshake.
pub async fn open(
    config: &AsyncConnectionConfig,
    target: &Target,
    connect_limit: Duration,
) -> Result<MultiplexedConnection, RedisError> {
    let stream = match tokio::time::timeout(connect_limit, stream(target)).await {
        Ok(s) => s?,
        Err(_) => {
            return Err(RedisError::from(std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            )));
        }
    };
    // No CLIENT SETINFO before AUTH (a server with a password would refuse it).
    let settings = redis::RedisConnectionInfo::default().set_skip_set_lib_name();
    let (mut conn, driver) =
        MultiplexedConnection::new_with_config(&settings, stream, config.clone()).await?;
    tokio::spawn(driver);
    if let Some((user, password)) = target.auth() {
        let mut auth = redis::cmd("AUTH");
        if let Some(user) = user {
            auth.arg(user);
        }
        auth.arg(password);
        match run(&mut conn, &auth).await {
            Ok(_) => {}
            Err(e)
                if user.is_some()
                    && e.detail()
                        .is_some_and(|d| d.contains("wrong number of arguments")) =>
            {
                run(&mut conn, redis::cmd("AUTH").arg(password)).await?;
            }
            Err(e) => return Err(e),
        }
    }
    if target.db() != 0 {
        run(&mut conn, redis::cmd("SELECT").arg(target.db())).await?;
    }
    // Not asked again of a server whose ACL refused it (see `capability`).
    let key = target.redacted();
    if capability::refused(key, Collector::ClientName).is_none() {
        match run(
            &mut conn,
            redis::cmd("CLIENT").arg("SETNAME").arg(CLIENT_NAME),
        )
        .await
        {
            Ok(_) => capability::record_allowed(key, Collector::ClientName),
            Err(e) => {
                let failure = Failure::from_redis(&e, target);
                if capability::is_refusal(&failure.message) {
                    capability::record_refusal(key, Collector::ClientName, &failure);
                }
            }
        }
    }
    run(&mut conn, &redis::cmd("PING")).await?;
    Ok(conn)
}

/// One command; an error reply is an error (the redis crate hands it back as a value).
async fn run(
    conn: &mut MultiplexedConnection,
    cmd: &redis::Cmd,
) -> Result<redis::Value, RedisError> {
    conn.req_packed_command(cmd).await?.extract_error()
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

/// True for errors below Redis (I/O, a dropped connection), after which the connection
/// is of no more use; false for a reply from the server (NOPERM, LOADING...).
pub fn connection_lost(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout()
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

/// A target's pool with what its probes need around it: the target, the probe timeout, and
/// the failed connection attempts. Cheap to clone; the Redis probe and the Celery queue
/// probe of the broker share one.
#[derive(Clone)]
pub struct TargetPool {
    pool: Pool,
    failures: watch::Receiver<Option<ConnectFailure>>,
    target: Target,
    /// The probe timeout, which also bounds a checkout.
    timeout: Duration,
    /// How often a fresh connection proves the credentials still work: pooled connections
    /// stay logged in after the password or the ACL changes on the server, while every new
    /// worker and web instance would be refused.
    recheck: Duration,
    /// When a connection last logged in (the manager's).
    verified: Arc<Mutex<Option<Instant>>>,
}

impl TargetPool {
    /// Builds the pool without connecting: the sidecar starts while Redis is down.
    pub fn new(target: &Target, timeout: Duration, recheck: Duration) -> TargetPool {
        let manager = Manager::new(target, timeout);
        let failures = manager.failures();
        let verified = manager.verified.clone();
        TargetPool {
            pool: build(manager, timeout),
            failures,
            target: target.clone(),
            timeout,
            recheck,
            verified,
        }
    }

    /// When the last login is older than the recheck interval, claims the recheck (so that
    /// the probes sharing this pool do not each make one) and returns the time it replaces.
    /// Before any login, the first checkout logs in anyway.
    fn claim_recheck(&self) -> Option<Instant> {
        let mut verified = self
            .verified
            .lock()
            .expect("verified lock is never poisoned");
        let last = verified.filter(|at| at.elapsed() >= self.recheck)?;
        *verified = Some(Instant::now());
        Some(last)
    }

    /// Logs in on a fresh connection, outside the pool, and closes it: the credentials are
    /// still good, or the failure says why not (WRONGPASS after a password change, NOPERM,
    /// "max number of clients reached"...), in the words `check` uses. After a failure the
    /// claim is given back, so that the next probe tries again.
    async fn recheck(&self, started: Instant, last: Instant) -> Result<(), Failure> {
        let began = Instant::now();
        match self.pool.dedicated_connection().await {
            Ok(conn) => {
                drop(conn);
                Ok(())
            }
            Err(e) => {
                *self
                    .verified
                    .lock()
                    .expect("verified lock is never poisoned") = Some(last);
                let attempt = self
                    .failures
                    .borrow()
                    .clone()
                    .filter(|f| f.started >= began);
                Err(match attempt {
                    Some(f) => self.explain_attempt(f, started).await,
                    None => self.explain(&e, started).await,
                })
            }
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The probe timeout, which also bounds a checkout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn state(&self) -> PoolState {
        let state = self.pool.state();
        PoolState {
            connections: state.connections,
            idle: state.idle_connections,
        }
    }

    /// A connection, and the reply to the probe's first command on it (timed). When that
    /// command fails below Redis on a connection that had served before (it died since:
    /// Redis restarted), the connection is dropped and the next one tried, down to a fresh
    /// one, so a restart between probes is not reported as a failure.
    /// `command` names the operation in the span (`PING`, or `PIPELINE` with `batch`).
    pub async fn first<T: redis::FromRedisValue>(
        &self,
        started: Instant,
        phase: &PhaseCell,
        command: &'static str,
        batch: Option<usize>,
        pipe: &redis::Pipeline,
    ) -> Result<(bb8::PooledConnection<'_, Manager>, T, Duration), Failure> {
        if let Some(last) = self.claim_recheck() {
            tracing::debug!(
                endpoint = self.target.redacted(),
                "rechecking the credentials on a fresh connection"
            );
            phase.set(Phase::Connect);
            self.recheck(started, last).await?;
        }
        for _ in 0..=MAX_CONNECTIONS {
            phase.set(Phase::Connect);
            let mut conn = self.checkout(started).await?;
            phase.set(Phase::Command(command));
            let span = otel::Command::new(&self.target, command, batch);
            let begun = Instant::now();
            let reply = pipe
                .query_async::<T>(&mut conn.inner)
                .instrument(span.span().clone())
                .await;
            let took = begun.elapsed();
            match reply {
                Ok(v) => {
                    span.ok();
                    conn.used += 1;
                    return Ok((conn, v, took));
                }
                Err(e) if conn.used > 0 && connection_lost(&e) => {
                    conn.broken = true;
                    span.failed(&Failure::from_redis(&e, &self.target));
                }
                Err(e) => {
                    let failure = conn.fail(&e, &self.target);
                    span.failed(&failure);
                    return Err(failure);
                }
            }
        }
        Err(Failure::new(
            Reason::Connect,
            format!(
                "every pooled connection to {} was dead and no fresh one answered",
                self.target.address()
            ),
        ))
    }

    /// Resolves with the error of the first connection attempt that started at or after
    /// `since` and failed; older attempts (a previous probe's, finishing late) are ignored.
    async fn connect_failure_since(&self, since: Instant) -> ConnectFailure {
        let mut failures = self.failures.clone();
        loop {
            if let Some(f) = failures
                .borrow_and_update()
                .as_ref()
                .filter(|f| f.started >= since)
            {
                return f.clone();
            }
            if failures.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// A connection from the pool, or the real reason there is none. `started` is when
    /// the probe began: connect failures older than that are not this probe's.
    pub async fn checkout(
        &self,
        started: Instant,
    ) -> Result<bb8::PooledConnection<'_, Manager>, Failure> {
        // A connection to a master the sentinels no longer name is dropped for a fresh one.
        for _ in 0..=MAX_CONNECTIONS {
            let mut conn = self.checkout_any(started).await?;
            let stale = self
                .target
                .sentinels()
                .is_some_and(|s| conn.node.is_some() && conn.node != s.current());
            if !stale {
                return Ok(conn);
            }
            conn.broken = true;
        }
        self.checkout_any(started).await
    }

    /// A connection from the pool, whatever master it was made to.
    async fn checkout_any(
        &self,
        started: Instant,
    ) -> Result<bb8::PooledConnection<'_, Manager>, Failure> {
        tokio::select! {
            got = self.pool.get() => match got {
                Ok(conn) => Ok(conn),
                // Not reached with `connect_failure_since` beside it; kept correct.
                Err(bb8::RunError::User(e)) => Err(Failure::from_redis(&e, &self.target)),
                // bb8's checkout bound is the probe timeout: the runner's would say the same.
                Err(bb8::RunError::TimedOut) => {
                    Err(Failure::timeout(&self.target, Phase::Connect, self.timeout))
                }
            },
            // A connection attempt of this probe failed: that error is the cause.
            f = self.connect_failure_since(started) => Err(self.explain_attempt(f, started).await),
        }
    }

    /// The failure a connection attempt means: what no sentinel answered, or its error.
    async fn explain_attempt(&self, f: ConnectFailure, started: Instant) -> Failure {
        match f.known {
            Some(known) => known,
            None => explain(&f.error, &f.at, started, self.timeout).await,
        }
    }

    /// The failure a connection attempt's error means (see [`explain`]).
    async fn explain(&self, e: &RedisError, started: Instant) -> Failure {
        explain(e, &self.target, started, self.timeout).await
    }
}

/// The failure a connection attempt's error to `at` means. A connection closed on us is
/// asked why first: a server that refuses a client says so before closing.
async fn explain(e: &RedisError, at: &Target, started: Instant, timeout: Duration) -> Failure {
    if e.is_connection_dropped() && !e.is_connection_refusal() {
        let left = (started + timeout).saturating_duration_since(Instant::now());
        if let Some(said) = greeting(at.address(), left).await {
            return Failure::from_redis(&said, at);
        }
    }
    Failure::from_redis(e, at)
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
            Address::Tcp { tls: Some(_), .. } | Address::Sentinel(_) => return None,
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
