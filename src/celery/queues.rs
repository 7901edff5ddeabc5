//! The queue probe: depth of every queue (priority sub-queues summed), the age of each
//! queue's oldest waiting message, and the reservations (unacked).
//!
//! Each cycle: one pipelined round trip reads `LLEN` of every sub-queue of every queue,
//! `HLEN unacked`, the oldest entry of `unacked_index` and the count of entries older than
//! the visibility timeout, however many queues there are. When some sub-queues hold
//! messages, a second round trip reads their tails (`LINDEX -1`), for the oldest age.
//!
//! Queues are the ones named in kombu's `_kombu.binding.<exchange>` sets, plus
//! `SIDECAR_CELERY_QUEUES`, plus `celery`. The binding sets are found with SCAN, a few pages
//! per cycle at the end of the probe and within what is left of its time, so a large cache
//! keyspace is walked gradually, never inside one timeout; a finished walk is repeated once
//! a minute.
//!
//! Oldest waiting age: kombu LPUSHes and workers BRPOP, so a list's tail is its oldest
//! message. Celery's messages carry no enqueue time, so the probe remembers a fingerprint
//! of each list's tail and when it first saw it there: the age is how long the front of
//! the queue has not moved. It starts at 0 when the sidecar starts or when the previous
//! tail is consumed, so it is a lower bound of a task's wait, exact for what a stall is
//! (nobody taking the next task), with the precision of one probe interval.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::{RedisError, Value};
use tokio::time::Instant;

use super::kombu::{self, DecodeError, Naming};
use crate::failure::{Failure, Phase, PhaseCell};
use crate::otel;
use crate::pool::TargetPool;
use tracing::Instrument;

/// How often a finished walk of the binding sets is started again.
pub const DISCOVER_EVERY: Duration = Duration::from_secs(60);
/// Queues watched at most; beyond, the ones last in name order are left out (and said so).
pub const MAX_QUEUES: usize = 2000;
/// Keys per SCAN call, and SCAN calls per cycle at most.
const SCAN_COUNT: usize = 1000;
const SCAN_PAGES: usize = 10;
/// Binding sets read at most in one walk.
const MAX_BINDING_SETS: usize = 10 * MAX_QUEUES;

/// One queue's state.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueState {
    pub name: String,
    /// Messages waiting, all priority sub-queues summed.
    pub length: u64,
    /// How long its oldest message has been at the front (see the module's doc).
    pub oldest_age: Option<Duration>,
    /// The task name of that message, when its envelope says it.
    pub oldest_task: Option<String>,
    /// A sub-queue key Redis would not read as a list (`WRONGTYPE ...`).
    pub error: Option<String>,
}

/// What one probe of the broker saw.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueObservation {
    pub queues: Vec<QueueState>,
    /// Reserved (prefetched, not yet acknowledged) messages.
    pub unacked: u64,
    /// Age of the oldest reservation, from `unacked_index`'s fetch time.
    pub oldest_reservation: Option<Duration>,
    /// Reservations older than the visibility timeout.
    pub orphaned: u64,
    /// The first pipeline's round trip (the depths).
    pub round_trip: Duration,
    /// New tail messages that are not kombu envelopes (counted once each; their bytes are
    /// never logged). A tail in another serializer (pickle) or over 1 MiB is not an error:
    /// it only has no task name.
    pub bad_messages: Vec<DecodeError>,
    /// Queues left out because of `MAX_QUEUES`.
    pub left_out: usize,
    /// True once a walk of the binding sets has finished.
    pub discovered: bool,
}

/// A list's tail as last seen.
#[derive(Debug, Clone)]
struct Tail {
    fingerprint: u64,
    since: Instant,
    task: Option<String>,
}

/// The binding-set walk.
#[derive(Debug, Default)]
struct Discovery {
    /// Queues found by the last finished walk.
    queues: BTreeSet<String>,
    /// When the last walk finished.
    at: Option<Instant>,
    /// A walk in progress.
    walk: Option<Walk>,
}

/// A walk of the keyspace for binding sets.
#[derive(Debug, Default)]
struct Walk {
    /// The next SCAN cursor.
    cursor: u64,
    /// Binding sets found so far.
    sets: Vec<Vec<u8>>,
    /// SCAN came back to cursor 0: the keyspace is covered.
    scanned: bool,
}

pub struct QueueProbe {
    pool: TargetPool,
    naming: Naming,
    configured: Vec<String>,
    visibility: Duration,
    timeout: Duration,
    discovery: Mutex<Discovery>,
    tails: Mutex<HashMap<Vec<u8>, Tail>>,
    phase: PhaseCell,
}

impl QueueProbe {
    pub fn new(
        pool: TargetPool,
        naming: Naming,
        configured: Vec<String>,
        visibility: Duration,
        timeout: Duration,
    ) -> QueueProbe {
        QueueProbe {
            pool,
            naming,
            configured,
            visibility,
            timeout,
            discovery: Mutex::new(Discovery::default()),
            tails: Mutex::new(HashMap::new()),
            phase: PhaseCell::default(),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    pub fn pool(&self) -> &TargetPool {
        &self.pool
    }

    /// Configured and discovered queues, in name order, at most `MAX_QUEUES`.
    fn names(&self) -> (Vec<String>, usize, bool) {
        let d = self
            .discovery
            .lock()
            .expect("discovery lock is never poisoned");
        let mut names: BTreeSet<String> = self.configured.iter().cloned().collect();
        names.extend(d.queues.iter().cloned());
        let total = names.len();
        (
            names.into_iter().take(MAX_QUEUES).collect(),
            total.saturating_sub(MAX_QUEUES),
            d.at.is_some(),
        )
    }

    pub async fn probe(&self) -> Result<QueueObservation, Failure> {
        let started = Instant::now();
        let target = self.pool.target();
        let (names, left_out, discovered) = self.names();
        let keys: Vec<Vec<Vec<u8>>> = names.iter().map(|q| self.naming.queue_keys(q)).collect();
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let mut depths = redis::pipe();
        depths.ignore_errors();
        for key in keys.iter().flatten() {
            depths.cmd("LLEN").arg(key);
        }
        depths.cmd("HLEN").arg(self.naming.unacked());
        depths
            .cmd("ZRANGE")
            .arg(self.naming.unacked_index())
            .arg(0)
            .arg(0)
            .arg("WITHSCORES");
        depths
            .cmd("ZCOUNT")
            .arg(self.naming.unacked_index())
            .arg("-inf")
            .arg(now_unix - self.visibility.as_secs_f64());
        let (mut conn, replies, round_trip): (_, Vec<Value>, _) = self
            .pool
            .first(
                started,
                &self.phase,
                "PIPELINE",
                Some(depths.len()),
                &depths,
            )
            .await?;
        // A refusal that is not about one key (NOPERM, LOADING...) is the probe's failure.
        if let Some(e) = replies.iter().find_map(fatal) {
            return Err(Failure::from_redis(&e, target));
        }
        let mut replies = replies.into_iter();
        let mut lengths: Vec<Vec<(u64, Option<String>)>> = Vec::with_capacity(keys.len());
        for queue_keys in &keys {
            lengths.push(
                queue_keys
                    .iter()
                    .map(|_| match replies.next() {
                        Some(Value::Int(n)) => (u64::try_from(n).unwrap_or(0), None),
                        Some(Value::ServerError(e)) => (0, Some(e.to_string())),
                        _ => (0, None),
                    })
                    .collect(),
            );
        }
        let unacked = as_u64(replies.next().as_ref());
        let oldest_reservation = match replies.next() {
            Some(Value::Array(items)) => items
                .get(1)
                .and_then(as_f64)
                .and_then(|fetched| Duration::try_from_secs_f64(now_unix - fetched).ok()),
            _ => None,
        };
        let orphaned = as_u64(replies.next().as_ref());

        // The tails of the sub-queues that hold messages, in a second round trip.
        let waiting: Vec<&Vec<u8>> = keys
            .iter()
            .flatten()
            .zip(lengths.iter().flatten())
            .filter(|(_, (n, _))| *n > 0)
            .map(|(k, _)| k)
            .collect();
        let mut fetched: HashMap<&Vec<u8>, Vec<u8>> = HashMap::new();
        if !waiting.is_empty() {
            self.phase.set(Phase::Command("LINDEX"));
            let mut tails = redis::pipe();
            tails.ignore_errors();
            for key in &waiting {
                tails.cmd("LINDEX").arg(*key).arg(-1);
            }
            let span = otel::Command::new(target, "PIPELINE", Some(waiting.len()));
            let replies: Vec<Value> = match tails
                .query_async(&mut conn.inner)
                .instrument(span.span().clone())
                .await
            {
                Ok(r) => {
                    span.ok();
                    r
                }
                Err(e) => {
                    let failure = conn.fail(&e, target);
                    span.failed(&failure);
                    return Err(failure);
                }
            };
            for (key, reply) in waiting.iter().zip(replies) {
                if let Value::BulkString(bytes) = reply {
                    fetched.insert(*key, bytes);
                }
            }
        }

        let now = Instant::now();
        let mut bad_messages = Vec::new();
        let mut queues = Vec::with_capacity(names.len());
        {
            let mut tails = self.tails.lock().expect("tails lock is never poisoned");
            for ((name, queue_keys), lengths) in names.into_iter().zip(&keys).zip(lengths) {
                let mut state = QueueState {
                    name,
                    length: 0,
                    oldest_age: None,
                    oldest_task: None,
                    error: None,
                };
                for (key, (length, error)) in queue_keys.iter().zip(lengths) {
                    state.length += length;
                    if error.is_some() {
                        state.error = error;
                    }
                    let Some(bytes) = fetched.get(key) else {
                        tails.remove(key);
                        continue;
                    };
                    let fingerprint = fingerprint(bytes);
                    let tail = match tails.get_mut(key) {
                        Some(t) if t.fingerprint == fingerprint => t,
                        _ => {
                            // A new tail: decoded once, for its task name.
                            let task = match kombu::decode(bytes) {
                                Ok(m) => m.envelope["headers"]["task"]
                                    .as_str()
                                    .filter(|t| t.len() <= 255)
                                    .map(str::to_string),
                                Err(DecodeError::ContentType(_) | DecodeError::TooLarge(_)) => None,
                                Err(e) => {
                                    bad_messages.push(e);
                                    None
                                }
                            };
                            tails.insert(
                                key.clone(),
                                Tail {
                                    fingerprint,
                                    since: now,
                                    task,
                                },
                            );
                            tails.get_mut(key).expect("just inserted")
                        }
                    };
                    let age = now.saturating_duration_since(tail.since);
                    if state.oldest_age.is_none_or(|a| age > a) {
                        state.oldest_age = Some(age);
                        state.oldest_task = tail.task.clone();
                    }
                }
                queues.push(state);
            }
            // Tails of lists that no queue names any more.
            if tails.len() > 4 * MAX_QUEUES {
                tails.clear();
            }
        }

        // Discovery, with at most half of the time left, so that it never costs the probe.
        let due = {
            let d = self
                .discovery
                .lock()
                .expect("discovery lock is never poisoned");
            d.walk.is_some() || d.at.is_none_or(|at| at.elapsed() >= DISCOVER_EVERY)
        };
        if due {
            self.phase.set(Phase::Command("SCAN"));
            let left = (started + self.timeout).saturating_duration_since(Instant::now()) / 2;
            // Cut short by the time limit, it goes on next cycle where it stopped.
            if let Ok(Err(e)) = tokio::time::timeout(left, self.discover(&mut conn.inner)).await {
                tracing::debug!(error = %e, "binding discovery failed; retried next cycle");
            }
        }
        drop(conn);
        Ok(QueueObservation {
            queues,
            unacked,
            oldest_reservation,
            orphaned,
            round_trip,
            bad_messages,
            left_out,
            discovered,
        })
    }

    /// Ends a command's span with its result.
    fn traced<T>(
        &self,
        span: otel::Command,
        result: Result<T, RedisError>,
    ) -> Result<T, RedisError> {
        match &result {
            Ok(_) => span.ok(),
            Err(e) => span.failed(&Failure::from_redis(e, self.pool.target())),
        }
        result
    }

    /// A few SCAN pages of the binding-set walk; when the walk has covered the keyspace,
    /// SMEMBERS pipelines turn the sets into queue names. Progress is kept after each page,
    /// so a walk cut short by the time limit goes on where it stopped.
    async fn discover(&self, conn: &mut MultiplexedConnection) -> Result<(), RedisError> {
        let pattern = self.naming.binding_pattern();
        for _ in 0..SCAN_PAGES {
            let cursor = {
                let mut d = self
                    .discovery
                    .lock()
                    .expect("discovery lock is never poisoned");
                let walk = d.walk.get_or_insert_with(Walk::default);
                if walk.scanned {
                    break;
                }
                walk.cursor
            };
            let span = otel::Command::new(self.pool.target(), "SCAN", None);
            let page = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(conn)
                .instrument(span.span().clone())
                .await;
            let (next, keys): (u64, Vec<Vec<u8>>) = self.traced(span, page)?;
            let mut d = self
                .discovery
                .lock()
                .expect("discovery lock is never poisoned");
            let walk = d.walk.get_or_insert_with(Walk::default);
            walk.sets.extend(keys);
            walk.sets.truncate(MAX_BINDING_SETS);
            walk.cursor = next;
            walk.scanned = next == 0;
        }
        let sets = {
            let d = self
                .discovery
                .lock()
                .expect("discovery lock is never poisoned");
            match &d.walk {
                Some(w) if w.scanned => w.sets.clone(),
                _ => return Ok(()),
            }
        };
        let mut queues = BTreeSet::new();
        for chunk in sets.chunks(SCAN_COUNT) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("SMEMBERS").arg(key);
            }
            let span = otel::Command::new(self.pool.target(), "PIPELINE", Some(chunk.len()));
            let reply = pipe.query_async(conn).instrument(span.span().clone()).await;
            let members: Vec<Vec<Vec<u8>>> = self.traced(span, reply)?;
            for (key, members) in chunk.iter().zip(members) {
                queues.extend(
                    members
                        .iter()
                        .filter_map(|m| self.naming.queue_of_binding(key, m)),
                );
            }
        }
        let mut d = self
            .discovery
            .lock()
            .expect("discovery lock is never poisoned");
        d.queues = queues;
        d.at = Some(Instant::now());
        d.walk = None;
        Ok(())
    }
}

/// A server error in a pipeline reply that is not about one key's type.
fn fatal(v: &Value) -> Option<RedisError> {
    match v {
        Value::ServerError(e) if e.code() != "WRONGTYPE" => Some(RedisError::from(e.clone())),
        _ => None,
    }
}

fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn as_u64(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    let x = match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok()?,
        Value::Double(d) => *d,
        Value::Int(n) => *n as f64,
        _ => return None,
    };
    x.is_finite().then_some(x)
}
