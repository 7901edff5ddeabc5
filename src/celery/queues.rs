//! The queue probe: depth of every queue (priority sub-queues summed), how long its front
//! has not moved and how long nothing has been taken from it, and the reservations
//! (unacked); and the layout of kombu's keys, found on the broker rather than configured.
//!
//! Each cycle: one pipelined round trip reads `LLEN` of every key a queue's messages can be
//! in (its own key and `name SEP step` for steps 1 to 9, for every separator in use),
//! `HLEN unacked`, the oldest entry of `unacked_index` and the count of entries older than
//! the visibility timeout, however many queues there are. When some keys hold messages, a
//! second round trip reads their tails (`LINDEX -1`).
//!
//! **The layout is discovered.** kombu's binding sets (`<prefix>_kombu.binding.<exchange>`)
//! are found with `SCAN MATCH *_kombu.binding.*`, a few pages per cycle at the end of the
//! probe and within what is left of its time, and a finished walk starts again at the next
//! cycle. Where the sets are gives the key prefix (`global_keyprefix`); their members,
//! `routing_key SEP pattern SEP queue`, give the separator (`sep`: a Celery queue's member
//! is `name SEP SEP name`) and the queues. The settings, when given, override what is
//! found; what is found that contradicts them is reported. Several apps' prefixes on one
//! broker db: the one whose workers are heard (else the one with most queues) is watched,
//! and the others are named.
//!
//! **Queues stay watched while they hold tasks.** A queue whose binding set is gone (a
//! FLUSHALL on a Redis that is cache and broker, say) stays watched while any of its keys
//! holds a message (and a minute after), and is reported as unbound. Past `MAX_QUEUES`, the queues named in
//! `SIDECAR_CELERY_QUEUES` stay, and of the others the longest (measured at most once a
//! `RANK_EVERY`) are kept.
//!
//! **Front and progress.** kombu LPUSHes and workers BRPOP, so a key's tail is its oldest
//! message; the probe remembers a fingerprint of each tail and when it first saw it there.
//! A queue's `oldest_age` is how long its oldest front has not moved. Its `idle` time is
//! how long since it last made progress: a front consumed (any key's tail changed or
//! emptied) or the queue getting shorter; a stall is judged on that, not on the age of one
//! low-priority key that waits while higher priorities drain. Both start at 0 when the
//! sidecar starts, with the precision of one probe interval.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::{RedisError, Value};
use tokio::time::Instant;

use super::kombu::{self, DEFAULT_SEP, DecodeError, Naming};
use crate::config::{escape, quoted};
use crate::failure::{Failure, Phase, PhaseCell};
use crate::otel;
use crate::pool::TargetPool;
use tracing::Instrument;

/// Queues watched at most; beyond, the shortest are left out (and said so).
pub const MAX_QUEUES: usize = 2000;
/// How often the queues beyond the cap are measured, to keep the longest.
pub const RANK_EVERY: Duration = Duration::from_secs(60);
/// Keys per SCAN call, and SCAN calls per cycle at most: a walk of a broker db of up to
/// 50,000 keys finishes within one cycle.
const SCAN_COUNT: usize = 5000;
const SCAN_PAGES: usize = 10;
/// Binding sets read at most in one walk.
const MAX_BINDING_SETS: usize = 10 * MAX_QUEUES;
/// Binding sets read (SMEMBERS) per pipeline.
const READ_CHUNK: usize = 1000;
/// LLENs per pipeline when measuring queues beyond the cap.
const RANK_CHUNK: usize = 1000;
/// A key prefix whose workers were heard this recently counts as live.
const HEARD_WITHIN: Duration = Duration::from_secs(60);

/// One queue's state.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueState {
    pub name: String,
    /// Messages waiting, all counted priority keys summed.
    pub length: u64,
    /// How long its oldest message has been at the front (see the module's doc).
    pub oldest_age: Option<Duration>,
    /// The task name of that message, when its envelope says it.
    pub oldest_task: Option<String>,
    /// How long since it last made progress, while it holds messages.
    pub idle: Option<Duration>,
    /// A key Redis would not read as a list (`WRONGTYPE ...`).
    pub error: Option<String>,
    /// Its binding set is gone; it is watched while it holds messages.
    pub unbound: bool,
    /// Messages under priority steps that are not among the app's steps (as set): no
    /// worker of that configuration takes them.
    pub stranded: u64,
}

/// kombu's layout on this broker, as found and as used.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Layout {
    /// The key prefix watched.
    pub prefix: Vec<u8>,
    /// Where it comes from: `set` (SIDECAR_CELERY_KEYPREFIX), `found`, or `default`.
    pub prefix_from: &'static str,
    /// The separators in use, the current one first.
    pub seps: Vec<Vec<u8>>,
    pub sep_from: &'static str,
    /// Priority steps under which messages have been seen waiting.
    pub steps_seen: BTreeSet<u32>,
    /// Every key prefix with binding sets, when there is more than the one watched.
    pub other_prefixes: Vec<Vec<u8>>,
    /// The separators of the workers' own pidbox bindings under the prefix, whatever the
    /// settings, each with the hostnames of its members (stale ones of SIGKILLed workers
    /// included): the dialect `check --ping` must speak.
    pub workers_seps: Vec<(Vec<u8>, Vec<String>)>,
    /// What the broker holds that contradicts a setting: (what, fix).
    pub contradictions: Vec<(String, String)>,
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
    pub layout: Layout,
}

/// A key's tail as last seen.
#[derive(Debug, Clone)]
struct Tail {
    fingerprint: u64,
    since: Instant,
    task: Option<String>,
}

/// A queue the probe knows of.
#[derive(Debug, Clone, Default)]
struct Known {
    /// A binding set names it.
    bound: bool,
    /// `SIDECAR_CELERY_QUEUES` (or `celery`) names it.
    configured: bool,
    /// Its last measured length.
    length: Option<u64>,
    /// When it last made progress (or was first seen).
    progress: Option<Instant>,
    /// When it last held messages.
    nonempty: Option<Instant>,
    /// Which of its keys (bits in [`Naming::key_specs`]' order) held messages at the last
    /// read: those are read with LLEN, the others only checked with one EXISTS.
    live: u64,
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
    /// Once scanned: the sets still to read (SMEMBERS), whether they are all of them, and
    /// what was read of them so far.
    todo: Option<Vec<Vec<u8>>>,
    all: bool,
    read: Vec<(Vec<u8>, Vec<Vec<u8>>)>,
}

/// Everything the probe remembers between cycles. A std mutex: held for map operations,
/// never across an await.
#[derive(Debug)]
struct State {
    naming: Naming,
    known: BTreeMap<String, Known>,
    /// The queues read each cycle (all known ones, up to the cap).
    watched: Vec<String>,
    walk: Option<Walk>,
    /// When a walk last finished.
    walked: Option<Instant>,
    /// When the queues beyond the cap were last measured.
    ranked: Option<Instant>,
    tails: HashMap<Vec<u8>, Tail>,
    layout: Layout,
    /// Key prefixes whose workers were heard, and when (from the event subscriber).
    heard: Vec<(Vec<u8>, Instant)>,
    /// The binding sets as last read (key, members): a walk reads only the sets it has
    /// not read before, and all of them again once a `RANK_EVERY`.
    sets: BTreeMap<Vec<u8>, Vec<Vec<u8>>>,
    /// When every set was last read.
    sets_read: Option<Instant>,
    /// The key prefixes heard at the last choice.
    live: Vec<Vec<u8>>,
}

pub struct QueueProbe {
    pool: TargetPool,
    /// The settings: prefix, separator and steps, when given.
    configured: Naming,
    prefix_set: bool,
    sep_set: bool,
    visibility: Duration,
    timeout: Duration,
    state: Mutex<State>,
    phase: PhaseCell,
}

impl QueueProbe {
    /// `naming` holds the settings; `queues`, the queues always watched.
    pub fn new(
        pool: TargetPool,
        naming: Naming,
        c: &crate::config::CeleryConfig,
        timeout: Duration,
    ) -> QueueProbe {
        let known = c
            .queues
            .iter()
            .map(|q| {
                (
                    q.clone(),
                    Known {
                        configured: true,
                        ..Known::default()
                    },
                )
            })
            .collect::<BTreeMap<_, _>>();
        let layout = Layout {
            prefix: naming.prefix().to_vec(),
            prefix_from: if c.keyprefix.is_some() {
                "set"
            } else {
                "default"
            },
            seps: naming.seps().to_vec(),
            sep_from: if c.sep.is_some() { "set" } else { "default" },
            ..Layout::default()
        };
        QueueProbe {
            pool,
            prefix_set: c.keyprefix.is_some(),
            sep_set: c.sep.is_some(),
            visibility: c.visibility_timeout,
            timeout,
            state: Mutex::new(State {
                watched: known.keys().cloned().collect(),
                known,
                naming: naming.clone(),
                walk: None,
                walked: None,
                ranked: None,
                tails: HashMap::new(),
                layout,
                heard: Vec::new(),
                sets: BTreeMap::new(),
                sets_read: None,
                live: Vec::new(),
            }),
            configured: naming,
            phase: PhaseCell::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("queue state lock is never poisoned")
    }

    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    pub fn pool(&self) -> &TargetPool {
        &self.pool
    }

    /// The names the probe reads now: prefix and separators found (or set).
    pub fn naming(&self) -> Naming {
        self.state().naming.clone()
    }

    /// Key prefixes whose worker events the subscriber heard, and when; they decide which
    /// app is watched when several share the broker db.
    pub fn heard(&self, prefixes: Vec<(Vec<u8>, Instant)>) {
        self.state().heard = prefixes;
    }

    pub async fn probe(&self) -> Result<QueueObservation, Failure> {
        let started = Instant::now();
        let target = self.pool.target();
        let (names, naming, live) = {
            let s = self.state();
            let live: Vec<u64> = s
                .watched
                .iter()
                .map(|q| s.known.get(q).map_or(0, |k| k.live))
                .collect();
            (s.watched.clone(), s.naming.clone(), live)
        };
        let specs = naming.key_specs();
        // Past 64 keys a queue (many separators or steps set), every key is read each time.
        let all_live = if specs.len() > 64 { u64::MAX } else { 0 };
        let live: Vec<u64> = live.into_iter().map(|l| l | all_live | 1).collect();
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        // Round trip 1: LLEN of each queue's keys that held messages last time (its own key
        // always), and one EXISTS over the others: a priority step that starts to be used
        // is seen at once, for one command per queue.
        let mut depths = redis::pipe();
        depths.ignore_errors();
        let mut buf = Vec::with_capacity(256);
        for (name, live) in names.iter().zip(&live) {
            let mut exists = redis::cmd("EXISTS");
            let mut others = false;
            for (i, spec) in specs.iter().enumerate() {
                naming.write_key(name, *spec, &mut buf);
                if bit(*live, i) {
                    depths.cmd("LLEN").arg(&buf);
                } else {
                    exists.arg(&buf);
                    others = true;
                }
            }
            if others {
                depths.add_command(exists);
            }
        }
        depths.cmd("HLEN").arg(naming.unacked());
        depths
            .cmd("ZRANGE")
            .arg(naming.unacked_index())
            .arg(0)
            .arg(0)
            .arg("WITHSCORES");
        depths
            .cmd("ZCOUNT")
            .arg(naming.unacked_index())
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
        drop(depths);
        // A refusal that is not about one key (NOPERM, LOADING...) is the probe's failure.
        if let Some(e) = replies.iter().find_map(fatal) {
            return Err(Failure::from_redis(&e, target));
        }
        let mut replies = replies.into_iter();
        // Per queue, per key (queue q's key i at q * keys + i): its length, once known; and
        // per queue a type error.
        let keys = specs.len();
        let mut lengths: Vec<Option<u64>> = vec![Some(0); names.len() * keys];
        let mut errors: Vec<Option<String>> = vec![None; names.len()];
        for (q, live) in live.iter().enumerate() {
            let mine = &mut lengths[q * keys..(q + 1) * keys];
            let mut others = false;
            for (i, slot) in mine.iter_mut().enumerate() {
                if !bit(*live, i) {
                    others = true;
                    continue;
                }
                *slot = match replies.next() {
                    Some(Value::Int(n)) => Some(u64::try_from(n).unwrap_or(0)),
                    Some(Value::ServerError(e)) => {
                        errors[q] = Some(e.to_string());
                        Some(0)
                    }
                    _ => Some(0),
                };
            }
            // Some of the other keys exist: read in the second round trip.
            let exist = others && matches!(replies.next(), Some(Value::Int(n)) if n > 0);
            if exist {
                for (i, slot) in mine.iter_mut().enumerate() {
                    if !bit(*live, i) {
                        *slot = None;
                    }
                }
            }
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

        // Round trip 2, when there is anything to read: the tails (LINDEX -1) of the counted
        // keys holding messages, and LLEN and tail of the keys the EXISTS found.
        let mut reads = redis::pipe();
        reads.ignore_errors();
        for (q, name) in names.iter().enumerate() {
            for (i, spec) in specs.iter().enumerate() {
                match lengths[q * keys + i] {
                    None => {
                        naming.write_key(name, *spec, &mut buf);
                        reads.cmd("LLEN").arg(&buf);
                        reads.cmd("LINDEX").arg(&buf).arg(-1);
                    }
                    Some(n) if n > 0 && spec.counted => {
                        naming.write_key(name, *spec, &mut buf);
                        reads.cmd("LINDEX").arg(&buf).arg(-1);
                    }
                    Some(_) => {}
                }
            }
        }
        let mut second: std::vec::IntoIter<Value> = Vec::new().into_iter();
        if !reads.is_empty() {
            self.phase.set(Phase::Command("LINDEX"));
            let span = otel::Command::new(target, "PIPELINE", Some(reads.len()));
            match reads
                .query_async::<Vec<Value>>(&mut conn.inner)
                .instrument(span.span().clone())
                .await
            {
                Ok(r) => {
                    span.ok();
                    second = r.into_iter();
                }
                Err(e) => {
                    let failure = conn.fail(&e, target);
                    span.failed(&failure);
                    return Err(failure);
                }
            }
        }
        drop(reads);

        let now = Instant::now();
        let mut bad_messages = Vec::new();
        let mut queues = Vec::with_capacity(names.len());
        {
            let mut guard = self.state();
            let s = &mut *guard;
            for (q, name) in names.into_iter().enumerate() {
                let mut state = QueueState {
                    name,
                    length: 0,
                    oldest_age: None,
                    oldest_task: None,
                    idle: None,
                    error: errors[q].take(),
                    unbound: false,
                    stranded: 0,
                };
                let mut progressed = false;
                let mut now_live = 0u64;
                for (i, spec) in specs.iter().enumerate() {
                    // The tail, read in the second round trip, of the keys that were read there.
                    let (length, tail) = match lengths[q * keys + i] {
                        None => {
                            let n = as_u64(second.next().as_ref());
                            let tail = second.next();
                            (n, tail.filter(|_| spec.counted && n > 0))
                        }
                        Some(n) if n > 0 && spec.counted => (n, second.next()),
                        Some(n) => (n, None),
                    };
                    if length == 0 {
                        if spec.counted && (i == 0 || bit(live[q], i)) {
                            // Emptied since the last cycle: its front was taken.
                            naming.write_key(&state.name, *spec, &mut buf);
                            progressed |= s.tails.remove(&buf).is_some();
                        }
                        continue;
                    }
                    now_live |= 1 << i.min(63);
                    s.layout.steps_seen.insert(spec.step);
                    if !spec.counted {
                        state.stranded += length;
                        continue;
                    }
                    state.length += length;
                    let Some(Value::BulkString(bytes)) = tail else {
                        continue;
                    };
                    naming.write_key(&state.name, *spec, &mut buf);
                    let fingerprint = fingerprint(&bytes);
                    let tail = match s.tails.get_mut(&buf) {
                        Some(t) if t.fingerprint == fingerprint => t,
                        previous => {
                            // A new front: the old one was taken, if there was one.
                            progressed |= previous.is_some();
                            let task = match kombu::decode(&bytes) {
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
                            s.tails.insert(
                                buf.clone(),
                                Tail {
                                    fingerprint,
                                    since: now,
                                    task,
                                },
                            );
                            s.tails.get_mut(&buf).expect("just inserted")
                        }
                    };
                    let age = now.saturating_duration_since(tail.since);
                    if state.oldest_age.is_none_or(|a| age > a) {
                        state.oldest_age = Some(age);
                        state.oldest_task = tail.task.clone();
                    }
                }
                let known = s.known.entry(state.name.clone()).or_default();
                state.unbound = !known.bound && !known.configured;
                known.live = now_live;
                progressed |= known.length.is_some_and(|before| state.length < before);
                if state.length == 0 || progressed || known.progress.is_none() {
                    known.progress = Some(now);
                }
                if state.length > 0 {
                    state.idle = known.progress.map(|t| now.saturating_duration_since(t));
                }
                // The counted length: what progress is judged on, and what ranking compares.
                known.length = Some(state.length);
                if state.length + state.stranded > 0 {
                    known.nonempty = Some(now);
                }
                queues.push(state);
            }
            // Tails of keys that no queue names any more: past what every watched queue's
            // every key could hold, start over.
            if s.tails.len() > 2 * MAX_QUEUES * specs.len() {
                s.tails.clear();
            }
        }

        // Discovery, with at most half of the time left, so that it never costs the probe.
        self.phase.set(Phase::Command("SCAN"));
        let left = (started + self.timeout).saturating_duration_since(Instant::now()) / 2;
        // Cut short by the time limit, it goes on next cycle where it stopped.
        if let Ok(Err(e)) = tokio::time::timeout(left, self.discover(&mut conn.inner)).await {
            tracing::debug!(error = %e, "binding discovery failed; retried next cycle");
        }
        drop(conn);
        let s = self.state();
        let left_out = s.known.len().saturating_sub(s.watched.len());
        Ok(QueueObservation {
            queues,
            unacked,
            oldest_reservation,
            orphaned,
            round_trip,
            bad_messages,
            left_out,
            discovered: s.walked.is_some(),
            layout: s.layout.clone(),
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
    /// SMEMBERS pipelines turn the sets into the layout and the queues, and the next walk
    /// starts at the next cycle. Progress is kept after each page, so a walk cut short by
    /// the time limit goes on where it stopped.
    async fn discover(&self, conn: &mut MultiplexedConnection) -> Result<(), RedisError> {
        for _ in 0..SCAN_PAGES {
            let cursor = {
                let mut s = self.state();
                let walk = s.walk.get_or_insert_with(Walk::default);
                if walk.scanned {
                    break;
                }
                walk.cursor
            };
            let span = otel::Command::new(self.pool.target(), "SCAN", None);
            let page = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(Naming::binding_pattern())
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(conn)
                .instrument(span.span().clone())
                .await;
            let (next, keys): (u64, Vec<Vec<u8>>) = self.traced(span, page)?;
            let mut s = self.state();
            let walk = s.walk.get_or_insert_with(Walk::default);
            walk.sets.extend(keys);
            walk.sets.truncate(MAX_BINDING_SETS);
            walk.cursor = next;
            walk.scanned = next == 0;
        }
        // The sets to read: the new ones, or all of them once a RANK_EVERY (a queue bound
        // to an exchange that already had a set, or unbound from one, shows then). Read a
        // chunk at a time, each kept as it comes, so a walk cut short by the time limit
        // goes on where it stopped.
        {
            let mut guard = self.state();
            let s = &mut *guard;
            let sets_read = s.sets_read;
            let known = &s.sets;
            let Some(w) = s.walk.as_mut().filter(|w| w.scanned) else {
                return Ok(());
            };
            if w.todo.is_none() {
                w.sets.sort_unstable();
                w.sets.dedup();
                w.all = sets_read.is_none_or(|t| t.elapsed() >= RANK_EVERY);
                w.todo = Some(if w.all {
                    w.sets.clone()
                } else {
                    w.sets
                        .iter()
                        .filter(|k| !known.contains_key(*k))
                        .cloned()
                        .collect()
                });
            }
        }
        loop {
            let chunk: Vec<Vec<u8>> = {
                let s = self.state();
                match s.walk.as_ref().and_then(|w| w.todo.as_ref()) {
                    Some(todo) if !todo.is_empty() => {
                        todo.iter().take(READ_CHUNK).cloned().collect()
                    }
                    _ => break,
                }
            };
            let mut pipe = redis::pipe();
            for key in &chunk {
                pipe.cmd("SMEMBERS").arg(key);
            }
            let span = otel::Command::new(self.pool.target(), "PIPELINE", Some(chunk.len()));
            let reply = pipe.query_async(conn).instrument(span.span().clone()).await;
            let members: Vec<Vec<Vec<u8>>> = self.traced(span, reply)?;
            let mut s = self.state();
            if let Some(w) = s.walk.as_mut()
                && let Some(todo) = w.todo.as_mut()
            {
                todo.drain(..chunk.len().min(todo.len()));
                w.read.extend(chunk.into_iter().zip(members));
            }
        }
        let found = {
            let mut guard = self.state();
            let s = &mut *guard;
            let Some(w) = s.walk.take() else {
                return Ok(());
            };
            if w.all {
                s.sets.clear();
                s.sets_read = Some(Instant::now());
            }
            let before = s.sets.len();
            s.sets.retain(|k, _| w.sets.binary_search(k).is_ok());
            // The apps whose workers are heard changed: the choice of prefix may too.
            let live = live_prefixes(&s.heard);
            let changed = w.all || !w.read.is_empty() || s.sets.len() != before || live != s.live;
            s.live = live;
            s.sets.extend(w.read);
            // The same sets as the last walk: nothing to choose again, only the unbound
            // queues to look at.
            changed.then(|| {
                let sets: Vec<(Vec<u8>, Vec<Vec<u8>>)> =
                    s.sets.iter().map(|(k, m)| (k.clone(), m.clone())).collect();
                kombu::Found::read(&sets, self.configured_sep())
            })
        };
        match found {
            Some(found) => self.settle(found),
            None => self.walked(),
        }
        if self.rank_due() {
            self.rank(conn).await?;
        }
        Ok(())
    }

    /// The separator as set, to read members with.
    fn configured_sep(&self) -> Option<&[u8]> {
        self.sep_set.then(|| self.configured.sep())
    }

    /// A finished walk: the layout chosen, the queues known updated (a queue whose binding
    /// is gone stays while it holds messages), and the watched set recomputed.
    fn settle(&self, found: kombu::Found) {
        let mut guard = self.state();
        let s = &mut *guard;
        let now = Instant::now();
        let live: Vec<&[u8]> = s.live.iter().map(Vec::as_slice).collect();
        let chosen = choose(
            &found,
            self.prefix_set.then(|| self.configured.prefix()),
            self.configured_sep(),
            &live,
            &s.layout,
        );
        if chosen.prefix != s.layout.prefix || chosen.seps != s.layout.seps {
            tracing::info!(
                prefix = %escape(&chosen.prefix),
                prefix_from = chosen.prefix_from,
                separators = %chosen.seps.iter().map(|s| escape(s)).collect::<Vec<_>>().join(" "),
                "reading kombu's keys with this key prefix and separator"
            );
        }
        s.naming = self
            .configured
            .with_layout(chosen.prefix.clone(), chosen.seps.clone());
        let steps_seen = std::mem::take(&mut s.layout.steps_seen);
        s.layout = Layout {
            steps_seen,
            ..chosen
        };
        let bound = found.queues(&s.layout.prefix);
        for name in &bound {
            s.known.entry(name.clone()).or_default().bound = true;
        }
        // Unbound, a queue stays while it holds messages (and a while after, so that a
        // queue emptied and refilled at once is not lost).
        s.known.retain(|name, k| {
            k.bound = bound.contains(name);
            k.bound
                || k.configured
                || k.nonempty
                    .is_some_and(|t| now.saturating_duration_since(t) < RANK_EVERY)
        });
        s.watched = watch(&s.known);
        s.walk = None;
        s.walked = Some(now);
    }

    /// A walk that found the same binding sets as the last one: the queues whose binding is
    /// gone are dropped once they have been empty a while.
    fn walked(&self) {
        let mut s = self.state();
        let now = Instant::now();
        let before = s.known.len();
        s.known.retain(|_, k| {
            k.bound
                || k.configured
                || k.nonempty
                    .is_some_and(|t| now.saturating_duration_since(t) < RANK_EVERY)
        });
        if s.known.len() != before {
            s.watched = watch(&s.known);
        }
        s.walked = Some(now);
    }

    fn rank_due(&self) -> bool {
        let s = self.state();
        s.known.len() > MAX_QUEUES && s.ranked.is_none_or(|t| t.elapsed() >= RANK_EVERY)
    }

    /// Measures the queues left out by the cap (their keys under the steps seen), so that
    /// the longest are kept.
    async fn rank(&self, conn: &mut MultiplexedConnection) -> Result<(), RedisError> {
        let (naming, outside, steps) = {
            let s = self.state();
            let watched: BTreeSet<&String> = s.watched.iter().collect();
            let outside: Vec<String> = s
                .known
                .keys()
                .filter(|q| !watched.contains(q))
                .cloned()
                .collect();
            (s.naming.clone(), outside, s.layout.steps_seen.clone())
        };
        let mut measured = Vec::with_capacity(outside.len());
        for chunk in outside.chunks(RANK_CHUNK / (steps.len() + 1)) {
            let mut pipe = redis::pipe();
            let mut per_queue = Vec::with_capacity(chunk.len());
            for q in chunk {
                let keys: Vec<Vec<u8>> = naming
                    .queue_keys(q)
                    .into_iter()
                    .filter(|k| k.counted && (k.step == 0 || steps.contains(&k.step)))
                    .map(|k| k.key)
                    .collect();
                per_queue.push(keys.len());
                for key in keys {
                    pipe.cmd("LLEN").arg(key);
                }
            }
            let span = otel::Command::new(self.pool.target(), "PIPELINE", Some(pipe.len()));
            let reply = pipe.query_async(conn).instrument(span.span().clone()).await;
            let lengths: Vec<u64> = self.traced(span, reply)?;
            let mut lengths = lengths.into_iter();
            for (q, n) in chunk.iter().zip(per_queue) {
                measured.push((q.clone(), lengths.by_ref().take(n).sum::<u64>()));
            }
        }
        let mut s = self.state();
        for (q, length) in measured {
            if let Some(k) = s.known.get_mut(&q) {
                k.length = Some(length);
            }
        }
        s.watched = watch(&s.known);
        s.ranked = Some(Instant::now());
        Ok(())
    }
}

/// The layout a walk's findings and the settings give. The prefix: as set; else the only
/// one with queues; else, among several, the one whose workers are heard, then the one with
/// most queues (then no prefix, then the first by name). The separators: as set; else the
/// workers' own (from their pidbox bindings), then those of the queues' bindings, most used
/// first. With nothing found (no binding set yet, or all flushed), what the `previous` walk
/// found holds; else kombu's defaults.
pub fn choose(
    found: &kombu::Found,
    prefix_set: Option<&[u8]>,
    sep_set: Option<&[u8]>,
    heard: &[&[u8]],
    previous: &Layout,
) -> Layout {
    let with_queues: Vec<&Vec<u8>> = found
        .prefixes
        .iter()
        .filter(|(_, b)| !b.queues.is_empty())
        .map(|(p, _)| p)
        .collect();
    let (prefix, prefix_from) = match prefix_set {
        Some(p) => (p.to_vec(), "set"),
        None => {
            let best = with_queues.iter().max_by_key(|p| {
                let queues = found.prefixes[p.as_slice()].queues.len();
                (
                    heard.contains(&p.as_slice()),
                    queues,
                    p.is_empty(),
                    std::cmp::Reverse(p.as_slice()),
                )
            });
            match best {
                Some(p) => (p.to_vec(), "found"),
                None => match heard.first() {
                    Some(p) => (p.to_vec(), "found"),
                    None if previous.prefix_from == "found" => (previous.prefix.clone(), "found"),
                    None => (Vec::new(), "default"),
                },
            }
        }
    };
    let bound = found.prefixes.get(&prefix);
    let seen_seps: Vec<Vec<u8>> = bound.map(|b| b.seps_in_use()).unwrap_or_default();
    let (seps, sep_from) = match sep_set {
        Some(sep) => (vec![sep.to_vec()], "set"),
        None if !seen_seps.is_empty() => (seen_seps.clone(), "found"),
        None if previous.sep_from == "found" && previous.prefix == prefix => {
            (previous.seps.clone(), "found")
        }
        None => (vec![DEFAULT_SEP.to_vec()], "default"),
    };
    let mut contradictions = Vec::new();
    if let Some(p) = prefix_set
        && !with_queues.is_empty()
        && !with_queues.iter().any(|q| q.as_slice() == p)
    {
        contradictions.push((
            format!(
                "SIDECAR_CELERY_KEYPREFIX is {}, but kombu's bindings on this broker are under {}",
                quoted([p]),
                quoted(with_queues.iter().map(|q| q.as_slice()))
            ),
            "unset SIDECAR_CELERY_KEYPREFIX (the sidecar finds the prefix itself), or set it to the app's broker_transport_options global_keyprefix".into(),
        ));
    }
    if let Some(sep) = sep_set
        && !seen_seps.is_empty()
        && !seen_seps.iter().any(|s| s.as_slice() == sep)
    {
        contradictions.push((
            format!(
                "SIDECAR_CELERY_SEP is {}, but the app's bindings use {}",
                quoted([sep]),
                quoted(seen_seps.iter().map(Vec::as_slice))
            ),
            "unset SIDECAR_CELERY_SEP (the sidecar finds the separator itself), or set it to the app's broker_transport_options sep".into(),
        ));
    }
    let workers_seps = bound
        .map(|b| {
            b.pidbox
                .iter()
                .map(|(sep, hosts)| (sep.clone(), hosts.iter().cloned().collect()))
                .collect()
        })
        .unwrap_or_default();
    Layout {
        workers_seps,
        other_prefixes: found
            .prefixes
            .keys()
            .filter(|p| **p != prefix)
            .cloned()
            .collect(),
        prefix,
        prefix_from,
        seps,
        sep_from,
        steps_seen: BTreeSet::new(),
        contradictions,
    }
}

/// The queues read each cycle: all known ones up to the cap; past it, every configured one
/// and the longest of the others (then by name).
fn watch(known: &BTreeMap<String, Known>) -> Vec<String> {
    if known.len() <= MAX_QUEUES {
        return known.keys().cloned().collect();
    }
    let mut ranked: Vec<(&String, &Known)> = known.iter().collect();
    ranked.sort_by_key(|(name, k)| {
        (
            !k.configured,
            std::cmp::Reverse(k.length.unwrap_or(0)),
            *name,
        )
    });
    let mut watched: Vec<String> = ranked
        .into_iter()
        .take(MAX_QUEUES)
        .map(|(n, _)| n.clone())
        .collect();
    watched.sort();
    watched
}

/// A server error in a pipeline reply that is not about one key's type.
fn fatal(v: &Value) -> Option<RedisError> {
    match v {
        Value::ServerError(e) if e.code() != "WRONGTYPE" => Some(RedisError::from(e.clone())),
        _ => None,
    }
}

/// The key prefixes whose workers were heard within `HEARD_WITHIN`, sorted.
fn live_prefixes(heard: &[(Vec<u8>, Instant)]) -> Vec<Vec<u8>> {
    let mut live: Vec<Vec<u8>> = heard
        .iter()
        .filter(|(_, at)| at.elapsed() <= HEARD_WITHIN)
        .map(|(p, _)| p.clone())
        .collect();
    live.sort();
    live
}

/// Bit `i` of a queue's key mask (the last bit stands for every key past 63).
fn bit(mask: u64, i: usize) -> bool {
    mask & (1 << i.min(63)) != 0
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

#[cfg(test)]
mod tests {
    use super::*;

    fn found(sets: &[(&[u8], &[&[u8]])]) -> kombu::Found {
        let read: Vec<(Vec<u8>, Vec<Vec<u8>>)> = sets
            .iter()
            .map(|(k, ms)| (k.to_vec(), ms.iter().map(|m| m.to_vec()).collect()))
            .collect();
        kombu::Found::read(&read, None)
    }

    #[test]
    fn the_prefix_and_separator_are_found_where_the_bindings_are() {
        let f = found(&[
            (b"myapp:_kombu.binding.celery", &[b"celery::celery"]),
            (b"myapp:_kombu.binding.emails", &[b"emails::emails"]),
            (
                b"myapp:_kombu.binding.celery.pidbox",
                &[b"::w1@h.celery.pidbox"],
            ),
        ]);
        let l = choose(&f, None, None, &[], &Layout::default());
        assert_eq!(
            (l.prefix.as_slice(), l.prefix_from),
            (b"myapp:".as_slice(), "found")
        );
        assert_eq!(l.seps, [b":".to_vec()]);
        assert_eq!(l.sep_from, "found");
        assert!(l.contradictions.is_empty());
        assert_eq!(
            f.queues(b"myapp:"),
            ["celery", "emails"].map(String::from).into()
        );
        // Nothing found any more (flushed): what was found holds.
        let before = l;
        let l = choose(&found(&[]), None, None, &[], &before);
        assert_eq!(
            (l.prefix.as_slice(), l.prefix_from),
            (b"myapp:".as_slice(), "found")
        );
        assert_eq!(l.seps, [b":".to_vec()]);
        // Nothing ever found: kombu's defaults.
        let l = choose(&found(&[]), None, None, &[], &Layout::default());
        assert_eq!(
            (l.prefix.as_slice(), l.prefix_from),
            (b"".as_slice(), "default")
        );
        assert_eq!(l.seps, [DEFAULT_SEP.to_vec()]);
    }

    #[test]
    fn the_workers_pidbox_bindings_give_their_separator_and_hostnames() {
        let f = found(&[(
            b"app:_kombu.binding.celery.pidbox",
            &[
                b"::w1@h.celery.pidbox",
                b"\x06\x16\x06\x16old@h.celery.pidbox",
            ],
        )]);
        let l = choose(&f, None, None, &[b"app:"], &Layout::default());
        assert_eq!(
            l.workers_seps,
            [
                (DEFAULT_SEP.to_vec(), vec!["old@h".to_string()]),
                (b":".to_vec(), vec!["w1@h".to_string()]),
            ]
        );
    }

    #[test]
    fn old_and_new_separators_coexist_the_workers_own_first() {
        let f = found(&[
            (
                b"_kombu.binding.celery",
                &[b"celery\x06\x16\x06\x16celery", b"celery::celery"],
            ),
            (b"_kombu.binding.celery.pidbox", &[b"::w1@h.celery.pidbox"]),
        ]);
        let l = choose(&f, None, None, &[], &Layout::default());
        assert_eq!(
            l.seps[0],
            b":".to_vec(),
            "the live workers' separator first"
        );
        assert!(l.seps.contains(&DEFAULT_SEP.to_vec()));
    }

    #[test]
    fn several_apps_the_one_heard_then_the_one_with_most_queues() {
        let f = found(&[
            (
                b"a:_kombu.binding.celery",
                &[b"celery\x06\x16\x06\x16celery"],
            ),
            (
                b"b:_kombu.binding.celery",
                &[b"celery\x06\x16\x06\x16celery"],
            ),
            (
                b"b:_kombu.binding.emails",
                &[b"emails\x06\x16\x06\x16emails"],
            ),
        ]);
        let l = choose(&f, None, None, &[], &Layout::default());
        assert_eq!(l.prefix, b"b:");
        assert_eq!(l.other_prefixes, [b"a:".to_vec()]);
        let l = choose(&f, None, None, &[b"a:"], &Layout::default());
        assert_eq!(l.prefix, b"a:", "workers heard there");
    }

    #[test]
    fn settings_win_and_a_contradiction_is_said() {
        let f = found(&[(b"myapp:_kombu.binding.celery", &[b"celery::celery"])]);
        let l = choose(
            &f,
            Some(b"other:"),
            Some(b"\x06\x16"),
            &[],
            &Layout::default(),
        );
        assert_eq!(
            (l.prefix.as_slice(), l.prefix_from),
            (b"other:".as_slice(), "set")
        );
        assert_eq!(l.contradictions.len(), 1, "{:?}", l.contradictions);
        assert!(l.contradictions[0].0.starts_with(
            "SIDECAR_CELERY_KEYPREFIX is \"other:\", but kombu's bindings on this broker are under \"myapp:\""
        ));
        let l = choose(&f, None, Some(b"\x06\x16"), &[], &Layout::default());
        assert_eq!(l.seps, [DEFAULT_SEP.to_vec()]);
        assert!(
            l.contradictions[0].0.starts_with(
                "SIDECAR_CELERY_SEP is \"\\x06\\x16\", but the app's bindings use \":\""
            ),
            "{:?}",
            l.contradictions
        );
    }

    #[test]
    fn the_cap_keeps_configured_then_the_longest() {
        let mut known = BTreeMap::new();
        for i in 0..MAX_QUEUES + 2 {
            known.insert(
                format!("q{i:05}"),
                Known {
                    length: Some(if i == MAX_QUEUES + 1 { 50 } else { 0 }),
                    ..Known::default()
                },
            );
        }
        known.insert(
            "zz-configured".into(),
            Known {
                configured: true,
                ..Known::default()
            },
        );
        let w = watch(&known);
        assert_eq!(w.len(), MAX_QUEUES);
        assert!(w.contains(&"zz-configured".to_string()));
        assert!(
            w.contains(&format!("q{:05}", MAX_QUEUES + 1)),
            "the longest"
        );
        assert!(!w.contains(&format!("q{:05}", MAX_QUEUES)));
    }
}
