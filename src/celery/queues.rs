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
//!
//! About 700 lines: `probe` reads one cycle in the order the broker is asked, kept in one
//! function so that the order reads top to bottom; discovery and the cap live beside it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{RedisError, Value};
use tokio::time::Instant;

use super::beat::{Beat, RedBeat};
use super::kombu::{self, DEFAULT_SEP, DecodeError, Naming};
use crate::redis::capability::{self, Collector};
use crate::redis::failure::{Failure, Phase, PhaseCell};
use crate::redis::pool::TargetPool;
use crate::redis::span as otel;
use crate::text::{escape, quoted};
use tracing::Instrument;

mod choose;
mod discovery;
pub mod reservations;

use super::reply::{as_u64, bit, fatal, fingerprint, with_scores};

pub use choose::choose;
use choose::watch;

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
    /// A queue's front was taken, or a queue got shorter, since the last probe.
    pub consumed: bool,
    /// Reservations that will be delivered again, per queue (of the oldest inspected).
    pub redelivery_risk: Vec<(String, u64)>,
    /// The first of them.
    pub at_risk: Vec<reservations::AtRisk>,
    /// The task ids of the oldest reservations, with when they were fetched (Unix seconds).
    pub reserved: Vec<(String, f64)>,
    /// Messages delivered again (kombu's `redelivered` mark), seen at a queue's front or
    /// among the oldest reservations: (task id, queue).
    pub redelivered: Vec<(String, String)>,
    /// RedBeat's schedule, when the broker holds one.
    pub beat: Option<Beat>,
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
    redbeat: RedBeat,
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
            redbeat: RedBeat::new(&c.redbeat_prefix),
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
        let now_unix = crate::text::unix_now();
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
        // The oldest reservations, with when they were fetched: the oldest is the age shown,
        // and their messages are read next for the redelivery risk.
        depths
            .cmd("ZRANGE")
            .arg(naming.unacked_index())
            .arg(0)
            .arg(reservations::MAX_INSPECTED - 1)
            .arg("WITHSCORES");
        depths
            .cmd("ZCOUNT")
            .arg(naming.unacked_index())
            .arg("-inf")
            .arg(now_unix - self.visibility.as_secs_f64());
        // Last, RedBeat's schedule and lock (three commands, whose refusal is not the
        // probe's: beat is watched when it can be, and not asked again lately refused).
        let key = target.redacted();
        let ask_beat = capability::refused(key, Collector::Beat).is_none();
        if ask_beat {
            self.redbeat.ask_schedule(&mut depths);
        }
        let (mut conn, mut replies, round_trip): (_, Vec<Value>, _) = self
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
        let redbeat_replies = if ask_beat {
            replies.split_off(replies.len().saturating_sub(3))
        } else {
            Vec::new()
        };
        if ask_beat {
            let refused = redbeat_replies
                .iter()
                .filter_map(fatal)
                .map(|e| Failure::from_redis(&e, target))
                .find(|f| capability::is_refusal(&f.message));
            match refused {
                Some(f) => capability::record_refusal(key, Collector::Beat, &f),
                None => capability::record_allowed(key, Collector::Beat),
            }
        }
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
        // (delivery tag, when fetched), oldest first.
        let fetched = with_scores(replies.next());
        let oldest_reservation = fetched
            .first()
            .and_then(|(_, at)| Duration::try_from_secs_f64(now_unix - at).ok());
        let orphaned = as_u64(replies.next().as_ref());
        let schedule = self.redbeat.read_schedule(&mut redbeat_replies.into_iter());

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
        // Last: the messages of the oldest reservations.
        if !fetched.is_empty() {
            reads.cmd("HMGET").arg(naming.unacked());
            for (tag, _) in &fetched {
                reads.arg(tag);
            }
        }
        if let Some(schedule) = &schedule {
            RedBeat::ask_entries(schedule, &mut reads);
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
        // Messages kombu delivered again, seen at a queue's front: (task id, queue).
        let mut again: Vec<(String, String)> = Vec::new();
        let mut queues = Vec::with_capacity(names.len());
        // Whether any queue's front was taken, or any queue got shorter, since the last
        // probe: a consumer at work, heard or not.
        let mut consumed = false;
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
                                Ok(m) => {
                                    if let Some(id) = reservations::redelivered(&m.envelope) {
                                        again.push((id.to_string(), state.name.clone()));
                                    }
                                    m.envelope["headers"]["task"]
                                        .as_str()
                                        .filter(|t| t.len() <= 255)
                                        .map(str::to_string)
                                }
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
                consumed |= progressed;
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

        let hmget = if fetched.is_empty() {
            None
        } else {
            second.next()
        };
        let held = reservations::read(&fetched, hmget, self.visibility, now_unix);
        let beat = schedule.map(|schedule| self.redbeat.read(schedule, &mut second));

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
            consumed,
            redelivery_risk: held.risk,
            at_risk: held.at_risk,
            reserved: held.reserved,
            redelivered: again.into_iter().chain(held.redelivered).collect(),
            beat,
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

#[cfg(test)]
mod tests;
