//! The queue probe: depth of every queue (priority sub-queues summed), the age of each
//! queue's oldest waiting message, and the reservations (unacked), read from the broker
//! in one pipelined round trip per cycle however many queues there are.
//!
//! Queues are the ones named in kombu's `_kombu.binding.<exchange>` sets (found with SCAN
//! once a minute, so a large keyspace is not walked every cycle), `SIDECAR_CELERY_QUEUES`,
//! and `celery`.
//!
//! Oldest waiting age: kombu LPUSHes and workers BRPOP, so a list's tail (index -1) is its
//! oldest message. Celery's messages carry no enqueue time, so the probe remembers a
//! fingerprint of each list's tail and when it first saw it there: the age is how long the
//! front of the queue has not moved. It starts at 0 when the sidecar starts or when the
//! previous tail is consumed, so it is a lower bound of a task's wait, exact for what a
//! stall is (nobody taking the next task), with the precision of one probe interval.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{RedisError, Value};
use tokio::time::Instant;

use super::kombu::{self, Naming};
use crate::failure::PhaseCell;
use crate::failure::{Failure, Phase};
use crate::pool::TargetPool;

/// How often binding sets are searched for new queues.
pub const DISCOVER_EVERY: Duration = Duration::from_secs(60);
/// Queues watched at most; beyond, the ones found last are left out (and said so).
pub const MAX_QUEUES: usize = 2000;
/// Keys per SCAN call.
const SCAN_COUNT: usize = 1000;

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
}

/// What one probe of the broker saw.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueObservation {
    pub queues: Vec<QueueState>,
    /// Reserved (prefetched, not yet acknowledged) messages.
    pub unacked: u64,
    /// Age of the oldest reservation, from `unacked_index`'s fetch time.
    pub oldest_reservation: Option<Duration>,
    /// Reservations older than the visibility timeout: what a killed worker leaves behind.
    pub orphaned: u64,
    /// The pipeline's round trip.
    pub round_trip: Duration,
    /// Tail messages that could not be decoded (counted, their bytes never logged).
    pub bad_messages: Vec<kombu::DecodeError>,
    /// Queues left out because of `MAX_QUEUES`.
    pub left_out: usize,
}

/// A list's tail as last seen.
#[derive(Debug, Clone, Copy)]
struct Tail {
    fingerprint: u64,
    since: Instant,
}

#[derive(Debug, Default)]
struct Discovery {
    queues: BTreeSet<String>,
    at: Option<Instant>,
}

pub struct QueueProbe {
    pool: TargetPool,
    naming: Naming,
    configured: Vec<String>,
    visibility: Duration,
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
    ) -> QueueProbe {
        QueueProbe {
            pool,
            naming,
            configured,
            visibility,
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

    pub async fn probe(&self) -> Result<QueueObservation, Failure> {
        let started = Instant::now();
        let target = self.pool.target();
        let due = {
            let d = self
                .discovery
                .lock()
                .expect("discovery lock is never poisoned");
            d.at.is_none_or(|at| at.elapsed() >= DISCOVER_EVERY)
        };
        let mut held = None;
        if due {
            let mut scan = redis::pipe();
            scan.cmd("SCAN")
                .arg(0)
                .arg("MATCH")
                .arg(self.naming.binding_pattern())
                .arg("COUNT")
                .arg(SCAN_COUNT);
            type Page = (u64, Vec<Vec<u8>>);
            let (mut conn, (first,), _): (_, (Page,), _) =
                self.pool.first(started, &self.phase, "SCAN", &scan).await?;
            let found = discover(&mut conn.inner, &self.naming, first)
                .await
                .map_err(|e| conn.fail(&e, target))?;
            let mut d = self
                .discovery
                .lock()
                .expect("discovery lock is never poisoned");
            d.queues = found;
            d.at = Some(Instant::now());
            held = Some(conn);
        }
        let mut names: BTreeSet<String> = self.configured.iter().cloned().collect();
        names.extend(
            self.discovery
                .lock()
                .expect("discovery lock is never poisoned")
                .queues
                .iter()
                .cloned(),
        );
        let total = names.len();
        let names: Vec<String> = names.into_iter().take(MAX_QUEUES).collect();

        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let mut pipe = redis::pipe();
        let keys: Vec<Vec<Vec<u8>>> = names.iter().map(|q| self.naming.queue_keys(q)).collect();
        for key in keys.iter().flatten() {
            pipe.cmd("LLEN").arg(key).cmd("LINDEX").arg(key).arg(-1);
        }
        pipe.cmd("HLEN").arg(self.naming.unacked());
        pipe.cmd("ZRANGE")
            .arg(self.naming.unacked_index())
            .arg(0)
            .arg(0)
            .arg("WITHSCORES");
        pipe.cmd("ZCOUNT")
            .arg(self.naming.unacked_index())
            .arg("-inf")
            .arg(now_unix - self.visibility.as_secs_f64());
        let (conn, replies, round_trip): (_, Vec<Value>, _) = match held {
            Some(mut conn) => {
                self.phase.set(Phase::Command("PIPELINE"));
                let begun = Instant::now();
                let replies = pipe
                    .query_async(&mut conn.inner)
                    .await
                    .map_err(|e| conn.fail(&e, target))?;
                (conn, replies, begun.elapsed())
            }
            None => {
                self.pool
                    .first(started, &self.phase, "PIPELINE", &pipe)
                    .await?
            }
        };
        drop(conn);

        let now = Instant::now();
        let mut replies = replies.into_iter();
        let mut bad_messages = Vec::new();
        let mut tails = self.tails.lock().expect("tails lock is never poisoned");
        let mut queues = Vec::with_capacity(names.len());
        for (name, keys) in names.into_iter().zip(keys) {
            let mut state = QueueState {
                name,
                length: 0,
                oldest_age: None,
                oldest_task: None,
            };
            let mut oldest: Option<(Duration, Vec<u8>)> = None;
            for key in keys {
                let length = as_u64(replies.next().as_ref());
                let tail = replies.next();
                state.length += length;
                let tail = match tail {
                    Some(Value::BulkString(bytes)) if length > 0 => bytes,
                    _ => {
                        tails.remove(&key);
                        continue;
                    }
                };
                let fingerprint = fingerprint(&tail);
                let seen = tails.entry(key).or_insert(Tail {
                    fingerprint,
                    since: now,
                });
                if seen.fingerprint != fingerprint {
                    *seen = Tail {
                        fingerprint,
                        since: now,
                    };
                }
                let age = now.saturating_duration_since(seen.since);
                if oldest.as_ref().is_none_or(|(a, _)| age > *a) {
                    oldest = Some((age, tail));
                }
            }
            if let Some((age, tail)) = oldest {
                state.oldest_age = Some(age);
                match kombu::decode(&tail) {
                    Ok(m) => {
                        state.oldest_task = m.envelope["headers"]["task"]
                            .as_str()
                            .filter(|t| t.len() <= 255)
                            .map(str::to_string);
                    }
                    Err(e) => bad_messages.push(e),
                }
            }
            queues.push(state);
        }
        // Lists that no queue names any more (a queue dropped from the bindings).
        if tails.len() > 4 * MAX_QUEUES {
            tails.clear();
        }
        drop(tails);
        let unacked = as_u64(replies.next().as_ref());
        let oldest_reservation = match replies.next() {
            Some(Value::Array(items)) => items
                .get(1)
                .and_then(as_f64)
                .map(|fetched| Duration::from_secs_f64((now_unix - fetched).max(0.0))),
            _ => None,
        };
        let orphaned = as_u64(replies.next().as_ref());
        Ok(QueueObservation {
            queues,
            unacked,
            oldest_reservation,
            orphaned,
            round_trip,
            bad_messages,
            left_out: total.saturating_sub(MAX_QUEUES),
        })
    }
}

/// Every queue named in a binding set: the rest of the SCAN walk that `first` began, then
/// one SMEMBERS pipeline.
async fn discover(
    conn: &mut redis::aio::MultiplexedConnection,
    naming: &Naming,
    first: (u64, Vec<Vec<u8>>),
) -> Result<BTreeSet<String>, RedisError> {
    let pattern = naming.binding_pattern();
    let (mut cursor, mut sets) = first;
    while cursor != 0 && sets.len() <= 10 * MAX_QUEUES {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(conn)
            .await?;
        sets.extend(keys);
        cursor = next;
    }
    let mut queues = BTreeSet::new();
    if sets.is_empty() {
        return Ok(queues);
    }
    let mut pipe = redis::pipe();
    for key in &sets {
        pipe.cmd("SMEMBERS").arg(key);
    }
    let members: Vec<Vec<Vec<u8>>> = pipe.query_async(conn).await?;
    for (key, members) in sets.iter().zip(members) {
        for member in members {
            if let Some(q) = naming.queue_of_binding(key, &member) {
                queues.insert(q);
            }
        }
    }
    Ok(queues)
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
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::Double(d) => Some(*d),
        Value::Int(n) => Some(*n as f64),
        _ => None,
    }
}
