//! The last hour, in memory, for the status page (`/`) and `/api/history`, `/api/events`:
//! ring buffers at probe resolution per Redis target and per queue shown (the longest
//! queues, `SIDECAR_HISTORY_QUEUES` of them), workers alive, tasks ended per minute, and
//! the last [`EVENTS`] state changes of checks and workers.
//!
//! The series' buffers are allocated and written at start-up, sized by the settings; the
//! changes are kept [`EVENTS`] for checks and [`EVENTS`] for workers (apart, so that
//! workers coming and going in numbers never push a check's incident out), and text from
//! the network (queue names, worker hostnames, sentences) is cut to [`MAX_TEXT`] bytes:
//! whatever happens, nothing here grows past that. Writers are the runners, after each
//! report; readers are the HTTP handlers, which copy the last [`WINDOW`] under the lock (a
//! std mutex: every section is a few copies, never an await).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::serve::snapshot::{Report, Status};

/// How far back the series go.
pub const WINDOW: Duration = Duration::from_secs(3600);
/// State changes kept.
pub const EVENTS: usize = 100;
/// Points per series at most (a one-second interval).
pub const MAX_POINTS: usize = 3600;
/// Bytes kept of a name or sentence from the network.
pub const MAX_TEXT: usize = 300;
/// Minutes of task counts kept: the hour, and the minute under way.
const MINUTES: usize = 61;

/// A fixed-capacity ring: pushing past the capacity overwrites the oldest. Its slots are
/// written when it is made, so the memory it will ever use is the process's from the start
/// (and shows in RSS at once, not after an hour).
#[derive(Debug, Clone)]
pub struct Ring<T> {
    buf: Vec<T>,
    len: usize,
    /// Where the next push goes.
    next: usize,
}

impl<T: Clone + Default> Ring<T> {
    /// A ring holding `cap` items at most (at least one), allocated and written now.
    pub fn new(cap: usize) -> Ring<T> {
        Ring {
            buf: vec![T::default(); cap.max(1)],
            len: 0,
            next: 0,
        }
    }

    pub fn push(&mut self, item: impl Into<T>) {
        let cap = self.buf.len();
        self.buf[self.next] = item.into();
        self.next = (self.next + 1) % cap;
        self.len = (self.len + 1).min(cap);
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        let (first, second) = if self.len < self.buf.len() {
            (&self.buf[..self.len], &self.buf[..0])
        } else {
            (&self.buf[self.next..], &self.buf[..self.next])
        };
        first.iter().chain(second)
    }

    fn newest(&self) -> Option<usize> {
        (self.len > 0).then(|| (self.next + self.buf.len() - 1) % self.buf.len())
    }

    pub fn last(&self) -> Option<&T> {
        self.newest().map(|i| &self.buf[i])
    }

    pub fn last_mut(&mut self) -> Option<&mut T> {
        self.newest().map(|i| &mut self.buf[i])
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.len = 0;
        self.next = 0;
    }
}

/// One point of a series: when (unix milliseconds), and the value (`None`: the probe
/// failed, a gap in the line).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Point {
    pub at: u64,
    pub value: Option<f64>,
}

/// A point as the rings keep it, in 8 bytes rather than a [`Point`]'s 24 (the rings hold
/// thousands): unix seconds, and the value as an `f32` (exact for counts up to 2^24, seven
/// digits of a latency), NaN for a gap.
#[derive(Debug, Clone, Copy, Default)]
pub struct Kept {
    at: u32,
    value: f32,
}

impl From<Point> for Kept {
    fn from(p: Point) -> Kept {
        Kept {
            at: u32::try_from(p.at / 1000).unwrap_or(u32::MAX),
            value: p.value.map_or(f32::NAN, |v| v as f32),
        }
    }
}

impl From<Kept> for Point {
    fn from(k: Kept) -> Point {
        Point {
            at: u64::from(k.at) * 1000,
            value: (!k.value.is_nan()).then_some(f64::from(k.value)),
        }
    }
}

/// A Redis target's PING round trips, in milliseconds.
#[derive(Debug, Clone)]
pub struct TargetSeries {
    /// The checks the target's reports are published under.
    pub checks: Vec<String>,
    pub endpoint: String,
    pub ping_ms: Ring<Kept>,
}

/// Tasks that ended in one minute (heard as events).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Minute {
    /// Unix time of the minute's start, in seconds.
    pub start: u64,
    pub succeeded: u64,
    pub failed: u64,
}

pub use crate::notify::{Event, Subject};

/// A series as of one moment: its points within the last [`WINDOW`], oldest first.
#[derive(Debug, Clone)]
pub struct SeriesView {
    pub name: String,
    pub points: Vec<Point>,
}

/// A Redis target's series as of one moment.
#[derive(Debug, Clone)]
pub struct TargetView {
    pub checks: Vec<String>,
    pub endpoint: String,
    pub ping_ms: Vec<Point>,
}

/// Copies of everything within the last [`WINDOW`], as of one moment.
#[derive(Debug, Clone)]
pub struct View {
    pub interval: Duration,
    pub points: usize,
    /// When the view was made (unix milliseconds).
    pub now: u64,
    pub targets: Vec<TargetView>,
    /// Only the queues still among the longest, longest first.
    pub queues: Vec<SeriesView>,
    pub queue_slots: usize,
    pub workers_alive: Vec<Point>,
    pub minutes: Vec<Minute>,
    /// Checks' and workers' changes together, newest first.
    pub events: Vec<Event>,
}

/// One queue slot: the queue it holds (`None`: free) and its lengths.
#[derive(Debug)]
struct Slot {
    name: Option<String>,
    length: Ring<Kept>,
}

#[derive(Debug)]
struct Inner {
    targets: Vec<TargetSeries>,
    /// At most `SIDECAR_HISTORY_QUEUES` slots; a slot is handed to another queue when
    /// its own is no longer among the longest.
    queues: Vec<Slot>,
    /// The names of the queues now among the longest, longest first.
    top: Vec<String>,
    workers_alive: Ring<Kept>,
    minutes: Ring<Minute>,
    /// Task totals at the last Celery record, to count each minute's.
    totals: (u64, u64),
    /// Checks' changes and workers' changes, kept apart so that workers coming and going
    /// in numbers never push a check's incident out.
    check_events: VecDeque<Event>,
    worker_events: VecDeque<Event>,
}

/// The history, shared by the runners (writing) and HTTP (reading).
#[derive(Debug)]
pub struct History {
    interval: Duration,
    points: usize,
    queue_slots: usize,
    inner: Mutex<Inner>,
    /// Bumped after every write: a rendering of an older generation is out of date.
    generation: AtomicU64,
    /// Where each change is also sent, when notifications are on (never waited on: a
    /// full channel drops the change, counted by the notifier's absence of it).
    notify: std::sync::OnceLock<tokio::sync::mpsc::Sender<Event>>,
}

/// Points in a [`WINDOW`] at `interval`, within 12 ..= [`MAX_POINTS`].
pub fn points_for(interval: Duration) -> usize {
    let per = interval.as_secs_f64().max(0.001);
    ((WINDOW.as_secs_f64() / per).ceil() as usize).clamp(12, MAX_POINTS)
}

impl History {
    /// Everything allocated now: a series per Redis target (`checks`, `endpoint`), and
    /// `queue_slots` queue series.
    pub fn new(
        interval: Duration,
        queue_slots: usize,
        targets: impl IntoIterator<Item = (Vec<String>, String)>,
    ) -> History {
        let points = points_for(interval);
        let targets = targets
            .into_iter()
            .map(|(checks, endpoint)| TargetSeries {
                checks,
                endpoint,
                ping_ms: Ring::new(points),
            })
            .collect();
        let queues = (0..queue_slots)
            .map(|_| Slot {
                name: None,
                length: Ring::new(points),
            })
            .collect();
        History {
            interval,
            points,
            queue_slots,
            inner: Mutex::new(Inner {
                targets,
                queues,
                top: Vec::with_capacity(queue_slots),
                workers_alive: Ring::new(points),
                minutes: Ring::new(MINUTES),
                totals: (0, 0),
                check_events: VecDeque::with_capacity(EVENTS),
                worker_events: VecDeque::with_capacity(EVENTS),
            }),
            generation: AtomicU64::new(0),
            notify: std::sync::OnceLock::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every section leaves the data whole: a panic elsewhere cannot make it unusable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes with `f`, then bumps the generation (after: a rendering made meanwhile is of
    /// the older one).
    fn write(&self, f: impl FnOnce(&mut Inner)) {
        f(&mut self.lock());
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Sends every change from now on to `tx` too.
    pub fn notify_to(&self, tx: tokio::sync::mpsc::Sender<Event>) {
        let _ = self.notify.set(tx);
    }

    /// Keeps a change, and passes it on to the notifier.
    fn keep(&self, events: &mut VecDeque<Event>, e: Event) {
        if let Some(tx) = self.notify.get()
            && tx.try_send(e.clone()).is_err()
        {
            tracing::warn!("a state change was not passed to the notifier: its queue is full");
        }
        push_event(events, e);
    }

    /// How many writes so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A runner published `next` under `checks` (`prev` was the report before): the
    /// change of state, if it is one, and for a Redis target after a probe (`new_probe`)
    /// a point of PING latency. Call it after the snapshot has the report.
    pub fn published(
        &self,
        checks: &[String],
        prev: Option<&Report>,
        next: &Report,
        new_probe: bool,
    ) {
        let change = is_change(prev, next);
        let target = new_probe && self.lock().targets.iter().any(|t| t.checks == checks);
        let moved = master_moved(prev, next);
        if !change && !target && moved.is_none() {
            return;
        }
        self.write(|inner| {
            // When it was judged: for Celery, a worker can change the verdict between
            // queue probes.
            let event = |reason, sentence: Option<String>, fix: Option<String>| Event {
                at: SystemTime::now(),
                subject: Subject::Checks(checks.to_vec()),
                from: prev.map(|p| p.status.as_str()),
                to: next.status.as_str(),
                reason,
                sentence: sentence.map(cut),
                fix: fix.map(cut),
            };
            // A Sentinel failover: on the timeline, not a change of state to notify.
            if let Some(sentence) = moved {
                push_event(&mut inner.check_events, event(None, Some(sentence), None));
            }
            if change {
                let failure = next.error.as_ref();
                let (sentence, fix) = match next.status {
                    Status::Unhealthy => (failure.map(|f| f.message.clone()), next.fix.clone()),
                    Status::Degraded => next
                        .warnings
                        .first()
                        .map(|w| (Some(w.text.clone()), Some(w.fix.clone())))
                        .unwrap_or_default(),
                    Status::Healthy => (None, None),
                };
                let reason = failure
                    .filter(|_| next.status == Status::Unhealthy)
                    .map(|f| f.reason.as_str());
                self.keep(&mut inner.check_events, event(reason, sentence, fix));
            }
            if let Some(t) = inner.targets.iter_mut().find(|t| t.checks == checks)
                && new_probe
            {
                t.ping_ms.push(Point {
                    at: unix_ms(next.finished_at),
                    value: next.latency.map(|d| d.as_secs_f64() * 1e3),
                });
            }
        });
    }

    /// A worker came up (`first`: heard for the first time) or went down, and why.
    pub fn worker(
        &self,
        hostname: &str,
        up: bool,
        first: bool,
        why: Option<String>,
        at: SystemTime,
    ) {
        self.write(|inner| {
            self.keep(
                &mut inner.worker_events,
                Event {
                    at,
                    subject: Subject::Worker(cut(hostname.to_string())),
                    from: (!first).then_some(if up { "down" } else { "up" }),
                    to: if up { "up" } else { "down" },
                    reason: None,
                    sentence: why.map(cut),
                    fix: None,
                },
            )
        });
    }

    /// A Celery probe: every queue's length (`None` when the broker could not be read),
    /// workers alive, and the totals of tasks succeeded and failed heard so far (since the
    /// sidecar started).
    pub fn celery<'a>(
        &self,
        at: SystemTime,
        queues: Option<impl Iterator<Item = (&'a str, u64)>>,
        workers_alive: usize,
        totals: (u64, u64),
    ) {
        let t = unix_ms(at);
        // The longest queues, longest first, names cut as they are kept (two names alike
        // in their first MAX_TEXT bytes are one).
        let longest = queues.map(|queues| {
            let mut all: Vec<(&str, u64)> = queues.map(|(n, l)| (cut_str(n), l)).collect();
            all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            all.dedup_by(|a, b| a.0 == b.0);
            all.truncate(self.queue_slots);
            all
        });
        self.write(|inner| {
            inner.workers_alive.push(Point {
                at: t,
                value: Some(workers_alive as f64),
            });
            let before = std::mem::replace(&mut inner.totals, totals);
            let succeeded = totals.0.saturating_sub(before.0);
            let failed = totals.1.saturating_sub(before.1);
            let minute = t / 60_000 * 60;
            match inner.minutes.last_mut() {
                Some(m) if m.start == minute => {
                    m.succeeded += succeeded;
                    m.failed += failed;
                }
                _ => inner.minutes.push(Minute {
                    start: minute,
                    succeeded,
                    failed,
                }),
            }
            let Some(longest) = longest else {
                for q in inner.queues.iter_mut().filter(|q| q.name.is_some()) {
                    q.length.push(Point { at: t, value: None });
                }
                return;
            };
            inner.top.clear();
            inner.top.extend(longest.iter().map(|(n, _)| n.to_string()));
            for (name, length) in &longest {
                let held = |q: &Slot| q.name.as_deref() == Some(*name);
                let slot = match inner.queues.iter().position(held) {
                    Some(i) => i,
                    None => {
                        // A free slot, or one whose queue is no longer among the longest.
                        let top = &inner.top;
                        let i = inner
                            .queues
                            .iter()
                            .position(|q| q.name.as_ref().is_none_or(|n| !top.contains(n)))
                            .expect("as many slots as queues kept");
                        let q = &mut inner.queues[i];
                        q.name = Some(name.to_string());
                        q.length.clear();
                        i
                    }
                };
                inner.queues[slot].length.push(Point {
                    at: t,
                    value: Some(*length as f64),
                });
            }
        });
    }

    /// Everything within the last [`WINDOW`] as of `now`, copied under the lock.
    pub fn view(&self, now: SystemTime) -> View {
        let now_ms = unix_ms(now);
        let from = now_ms.saturating_sub(u64::try_from(WINDOW.as_millis()).unwrap_or(0));
        let recent = |r: &Ring<Kept>| -> Vec<Point> {
            r.iter()
                .map(|&k| Point::from(k))
                .filter(|p| p.at >= from)
                .collect()
        };
        let inner = self.lock();
        let queues = inner
            .top
            .iter()
            .filter_map(|n| {
                let q = inner.queues.iter().find(|q| q.name.as_ref() == Some(n))?;
                Some(SeriesView {
                    name: n.clone(),
                    points: recent(&q.length),
                })
            })
            .collect();
        let mut events: Vec<Event> = inner
            .check_events
            .iter()
            .chain(&inner.worker_events)
            .cloned()
            .collect();
        events.sort_by_key(|e| std::cmp::Reverse(e.at));
        View {
            interval: self.interval,
            points: self.points,
            now: now_ms,
            targets: inner
                .targets
                .iter()
                .map(|t| TargetView {
                    checks: t.checks.clone(),
                    endpoint: t.endpoint.clone(),
                    ping_ms: recent(&t.ping_ms),
                })
                .collect(),
            queues,
            queue_slots: self.queue_slots,
            workers_alive: recent(&inner.workers_alive),
            minutes: inner
                .minutes
                .iter()
                .filter(|m| m.start * 1000 + 60_000 > from)
                .copied()
                .collect(),
            events,
        }
    }
}

/// A change worth a line in the timeline: a status change, or a new cause while
/// unhealthy (as the log says it).
pub fn is_change(prev: Option<&Report>, next: &Report) -> bool {
    fn cause(r: &Report) -> Option<&str> {
        r.error.as_ref().map(|f| f.message.as_str())
    }
    !prev.is_some_and(|p| p.status == next.status && cause(p) == cause(next))
}

/// For a Sentinel target whose sentinels named a new master since `prev`: what the
/// timeline says of it.
fn master_moved(prev: Option<&Report>, next: &Report) -> Option<String> {
    fn sentinel(r: &Report) -> Option<&crate::serve::health::SentinelDoc> {
        match &r.details {
            crate::serve::health::Details::Redis(d) => d.sentinel.as_ref(),
            _ => None,
        }
    }
    let (before, after) = (sentinel(prev?)?, sentinel(next)?);
    (after.failovers > before.failovers).then(|| {
        format!(
            "the sentinels named a new master for {:?}: {} (it was {})",
            after.master_name,
            after.master.as_deref().unwrap_or("unknown"),
            before.master.as_deref().unwrap_or("unknown")
        )
    })
}

fn push_event(events: &mut VecDeque<Event>, e: Event) {
    if events.len() == EVENTS {
        events.pop_front();
    }
    events.push_back(e);
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `s` cut to [`MAX_TEXT`] bytes at a character boundary.
pub fn cut_str(s: &str) -> &str {
    crate::text::cut_at(s, MAX_TEXT)
}

/// `s` cut to [`MAX_TEXT`] bytes, the last three an ellipsis when it was cut.
fn cut(mut s: String) -> String {
    if s.len() <= MAX_TEXT {
        return s;
    }
    let end = crate::text::cut_at(&s, MAX_TEXT - '…'.len_utf8()).len();
    s.truncate(end);
    s.push('…');
    s
}

/// The `q`-quantile (0 ..= 1) of the values present, nearest rank.
pub fn quantile(points: &[Point], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = points.iter().filter_map(|p| p.value).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

#[cfg(test)]
mod tests;
