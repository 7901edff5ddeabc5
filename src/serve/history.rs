//! The last hour, in memory, for the status page (`/`) and `/api/history`, `/api/events`:
//! ring buffers at probe resolution per Redis target and per queue shown (the longest
//! queues, `SIDECAR_HISTORY_QUEUES` of them), workers alive, tasks ended per minute, and
//! the last [`EVENTS`] state changes of checks and workers.
//!
//! Every buffer is allocated at start-up, sized by the settings, and text from the network
//! (queue names, worker hostnames, sentences) is cut to [`MAX_TEXT`] bytes: whatever
//! happens, nothing here grows. Writers are the runners, after each report; readers are the
//! HTTP handlers, which copy what they need under the lock (a std mutex: every section is
//! a few copies, never an await).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
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
/// Minutes of task counts kept.
const MINUTES: usize = 60;

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

    pub fn push(&mut self, item: T) {
        let cap = self.buf.len();
        self.buf[self.next] = item;
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

/// A Redis target's PING round trips, in milliseconds.
#[derive(Debug, Clone)]
pub struct TargetSeries {
    /// The checks the target's reports are published under.
    pub checks: Vec<String>,
    pub endpoint: String,
    pub ping_ms: Ring<Point>,
}

/// One queue shown: its length at each Celery probe.
#[derive(Debug, Clone)]
pub struct QueueSeries {
    pub name: String,
    pub length: Ring<Point>,
}

/// Tasks that ended in one minute (heard as events).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Minute {
    /// Unix time of the minute's start, in seconds.
    pub start: u64,
    pub succeeded: u64,
    pub failed: u64,
}

/// One state change of a check or a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at: SystemTime,
    pub subject: Subject,
    /// `None` for a check's first report.
    pub from: Option<&'static str>,
    pub to: &'static str,
    /// The fixed cause (`connect`, `auth`, ...), when there is one.
    pub reason: Option<&'static str>,
    pub sentence: Option<String>,
    pub fix: Option<String>,
}

/// What changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Subject {
    /// The checks a runner publishes under (a target with two roles has two).
    Checks(Vec<String>),
    Worker(String),
}

/// Copies of everything, as of one moment.
#[derive(Debug, Clone)]
pub struct View {
    pub interval: Duration,
    pub points: usize,
    pub targets: Vec<TargetSeries>,
    /// Only the queues still among the longest, longest first.
    pub queues: Vec<QueueSeries>,
    pub queue_slots: usize,
    pub workers_alive: Ring<Point>,
    pub minutes: Ring<Minute>,
    /// Newest first.
    pub events: Vec<Event>,
}

#[derive(Debug)]
struct Inner {
    targets: Vec<TargetSeries>,
    /// At most `SIDECAR_HISTORY_QUEUES` slots; a slot is handed to another queue when
    /// its own is no longer among the longest.
    queues: Vec<QueueSeries>,
    /// The names of the queues now among the longest, longest first.
    top: Vec<String>,
    workers_alive: Ring<Point>,
    minutes: Ring<Minute>,
    /// Task totals at the last Celery record, to count each minute's.
    totals: Option<(u64, u64)>,
    events: VecDeque<Event>,
}

/// The history, shared by the runners (writing) and HTTP (reading).
#[derive(Debug)]
pub struct History {
    interval: Duration,
    points: usize,
    queue_slots: usize,
    inner: Mutex<Inner>,
    /// Bumped by every write: a rendering of an older generation is out of date.
    generation: AtomicU64,
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
            .map(|_| QueueSeries {
                name: String::with_capacity(MAX_TEXT),
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
                minutes: Ring::new(MINUTES + 1),
                totals: None,
                events: VecDeque::with_capacity(EVENTS),
            }),
            generation: AtomicU64::new(0),
        }
    }

    fn write(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.inner.lock().expect("history lock is never poisoned")
    }

    /// How many writes so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// A runner published `next` under `checks` (`prev` was the report before): the
    /// change of state, if it is one, and for a Redis target a point of PING latency.
    pub fn published(
        &self,
        checks: &[String],
        prev: Option<&Report>,
        next: &Report,
        new_probe: bool,
    ) {
        let mut inner = self.write();
        if is_change(prev, next) {
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
            push_event(
                &mut inner.events,
                Event {
                    // When the change was judged: for Celery, a worker can change the
                    // verdict between queue probes.
                    at: SystemTime::now(),
                    subject: Subject::Checks(checks.to_vec()),
                    from: prev.map(|p| p.status.as_str()),
                    to: next.status.as_str(),
                    reason: failure
                        .filter(|_| next.status == Status::Unhealthy)
                        .map(|f| f.reason.as_str()),
                    sentence: sentence.map(cut),
                    fix: fix.map(cut),
                },
            );
        }
        if !new_probe {
            return;
        }
        if let Some(t) = inner.targets.iter_mut().find(|t| t.checks == checks) {
            t.ping_ms.push(Point {
                at: unix_ms(next.finished_at),
                value: next.latency.map(|d| d.as_secs_f64() * 1e3),
            });
        }
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
        let mut inner = self.write();
        push_event(
            &mut inner.events,
            Event {
                at,
                subject: Subject::Worker(cut(hostname.to_string())),
                from: (!first).then_some(if up { "down" } else { "up" }),
                to: if up { "up" } else { "down" },
                reason: None,
                sentence: why.map(cut),
                fix: None,
            },
        );
    }

    /// A Celery probe: every queue's length (`None` when the broker could not be read),
    /// workers alive, and the totals of tasks succeeded and failed heard so far.
    pub fn celery<'a>(
        &self,
        at: SystemTime,
        queues: Option<impl Iterator<Item = (&'a str, u64)>>,
        workers_alive: usize,
        totals: (u64, u64),
    ) {
        let t = unix_ms(at);
        let mut inner = self.write();
        let inner = &mut *inner;
        inner.workers_alive.push(Point {
            at: t,
            value: Some(workers_alive as f64),
        });
        let (succeeded, failed) = match inner.totals.replace(totals) {
            // A restart of the counting (never, today) would read as a drop: count nothing.
            Some((s, f)) => (totals.0.saturating_sub(s), totals.1.saturating_sub(f)),
            None => (0, 0),
        };
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
        let Some(queues) = queues else {
            for q in inner.queues.iter_mut().filter(|q| !q.name.is_empty()) {
                q.length.push(Point { at: t, value: None });
            }
            return;
        };
        // The longest queues, longest first (names cut as they are kept).
        let slots = inner.queues.len();
        let mut all: Vec<(&str, u64)> = queues.map(|(n, l)| (cut_str(n), l)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        all.truncate(slots);
        inner.top.clear();
        inner.top.extend(all.iter().map(|(n, _)| n.to_string()));
        for (name, length) in &all {
            let slot = match inner.queues.iter().position(|q| q.name == *name) {
                Some(i) => i,
                None => {
                    // A free slot, or one whose queue is no longer among the longest.
                    let top = &inner.top;
                    let i = inner
                        .queues
                        .iter()
                        .position(|q| q.name.is_empty() || !top.contains(&q.name))
                        .expect("as many slots as queues kept");
                    let q = &mut inner.queues[i];
                    q.name.clear();
                    q.name.push_str(name);
                    q.length.clear();
                    i
                }
            };
            inner.queues[slot].length.push(Point {
                at: t,
                value: Some(*length as f64),
            });
        }
    }

    /// Everything, copied under the lock.
    pub fn view(&self) -> View {
        let inner = self.inner.lock().expect("history lock is never poisoned");
        let queues = inner
            .top
            .iter()
            .filter_map(|n| inner.queues.iter().find(|q| &q.name == n).cloned())
            .collect();
        View {
            interval: self.interval,
            points: self.points,
            targets: inner.targets.clone(),
            queues,
            queue_slots: self.queue_slots,
            workers_alive: inner.workers_alive.clone(),
            minutes: inner.minutes.clone(),
            events: inner.events.iter().rev().cloned().collect(),
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
fn cut_str(s: &str) -> &str {
    if s.len() <= MAX_TEXT {
        return s;
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn cut(mut s: String) -> String {
    let len = cut_str(&s).len();
    if len < s.len() {
        s.truncate(len);
        s.push('…');
    }
    s
}

/// The `q`-quantile (0 ..= 1) of the values present, nearest rank.
pub fn quantile(points: &Ring<Point>, q: f64) -> Option<f64> {
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
