//! Celery beat, watched from the broker. What beat leaves there (fixtures 24 and 42):
//!
//! - With RedBeat (`-S redbeat.RedBeatScheduler`), the schedule is on Redis: a sorted set
//!   `<prefix>:schedule` of entry keys scored by when each is next due (unix seconds), a
//!   hash `<prefix><name>` per entry (`definition`: its schedule; `meta`: `last_run_at`),
//!   and the lock `<prefix>:lock` that the running beat holds and extends at each tick
//!   (released on a warm stop, left to expire after a SIGKILL). An entry still due well
//!   after its time means no beat is sending it.
//! - With the default scheduler, the schedule is a local file; the messages beat sends
//!   carry the header `celery_beat_task: true`, which is gone once a worker takes them,
//!   and task events carry no headers. So the periodic tasks are declared
//!   (`SIDECAR_CELERY_BEAT_EXPECT=name:interval,...`) and their runs heard as task events.
//!
//! Either way a periodic task is overdue when twice its interval has passed since it last
//! ran (at least [`MIN_GRACE`] past its due time).

use std::time::Duration;

use redis::{Pipeline, Value};
use serde_json::Value as Json;

use super::reply::with_scores;

/// RedBeat entries read at most (the ones due first).
pub const MAX_ENTRIES: usize = 100;
/// Less late than this past its due time is never overdue: beat's own tick and the probe's
/// interval.
pub const MIN_GRACE: Duration = Duration::from_secs(10);
/// The grace of an entry whose interval cannot be told (never run, and not an interval
/// schedule): beat's default longest sleep between ticks.
const UNKNOWN_GRACE: Duration = Duration::from_secs(300);

/// Where the sidecar learns of the periodic tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// RedBeat's keys on the broker.
    Redbeat,
    /// `SIDECAR_CELERY_BEAT_EXPECT`, heard as task events.
    Expected,
}

/// A periodic task: when it last ran and is next due (unix seconds), and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct Periodic {
    /// RedBeat's entry name, or the task name declared.
    pub name: String,
    pub last_run: Option<f64>,
    pub due: Option<f64>,
    pub every: Option<Duration>,
}

impl Periodic {
    /// How far past its grace the task is at `now` (unix seconds): `None` while on time.
    pub fn overdue(&self, now: f64) -> Option<Duration> {
        let grace = self.every.map_or(UNKNOWN_GRACE, |e| e.max(MIN_GRACE));
        let late = now - self.due? - grace.as_secs_f64();
        (late > 0.0).then(|| Duration::from_secs_f64(late))
    }
}

/// What is known of beat at one probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Beat {
    pub source: Source,
    /// RedBeat: the lock's time left, `None` when no process holds it.
    pub lock: Option<Duration>,
    /// Due first.
    pub entries: Vec<Periodic>,
    /// RedBeat entries beyond [`MAX_ENTRIES`].
    pub left_out: usize,
}

impl Beat {
    /// The overdue tasks at `now`, most overdue first.
    pub fn overdue(&self, now: f64) -> Vec<(&Periodic, Duration)> {
        let mut late: Vec<_> = self
            .entries
            .iter()
            .filter_map(|p| Some((p, p.overdue(now)?)))
            .collect();
        late.sort_by_key(|l| std::cmp::Reverse(l.1));
        late
    }
}

/// RedBeat's keys under one prefix, read in the queue probe's two round trips.
#[derive(Debug, Clone, PartialEq)]
pub struct RedBeat {
    prefix: String,
}

/// The first round trip's answer: the entries due first (key, due), how many in all, and
/// the lock's time left in milliseconds (negative: not held).
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    entries: Vec<(Vec<u8>, f64)>,
    total: usize,
    lock_ms: i64,
}

impl RedBeat {
    pub fn new(prefix: &str) -> RedBeat {
        RedBeat {
            prefix: prefix.to_string(),
        }
    }

    pub fn schedule_key(&self) -> String {
        format!("{}:schedule", self.prefix)
    }

    pub fn lock_key(&self) -> String {
        format!("{}:lock", self.prefix)
    }

    /// Round trip 1: three commands. Entries scored below zero will never run again
    /// (RedBeat's own reading), so they are not asked for.
    pub fn ask_schedule(&self, pipe: &mut Pipeline) {
        let key = self.schedule_key();
        pipe.cmd("ZRANGEBYSCORE")
            .arg(&key)
            .arg(0)
            .arg("+inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(MAX_ENTRIES);
        pipe.cmd("ZCOUNT").arg(&key).arg(0).arg("+inf");
        pipe.cmd("PTTL").arg(self.lock_key());
    }

    /// Takes the three replies of [`ask_schedule`](Self::ask_schedule); `None` when there is
    /// no RedBeat schedule (or it is not a sorted set).
    pub fn read_schedule(&self, replies: &mut impl Iterator<Item = Value>) -> Option<Schedule> {
        let (range, count, ttl) = (replies.next(), replies.next(), replies.next());
        let total = match count {
            Some(Value::Int(n)) if n > 0 => usize::try_from(n).ok()?,
            _ => return None,
        };
        let entries = with_scores(range);
        let lock_ms = match ttl {
            Some(Value::Int(ms)) => ms,
            _ => -2,
        };
        Some(Schedule {
            entries,
            total,
            lock_ms,
        })
    }

    /// Round trip 2: the definition and meta of each entry read.
    pub fn ask_entries(schedule: &Schedule, pipe: &mut Pipeline) {
        for (key, _) in &schedule.entries {
            pipe.cmd("HMGET").arg(key).arg("definition").arg("meta");
        }
    }

    /// Takes the replies of [`ask_entries`](Self::ask_entries). An entry whose hash is gone
    /// or cannot be read is kept with only its due time; a disabled one is left out.
    pub fn read(&self, schedule: Schedule, replies: &mut impl Iterator<Item = Value>) -> Beat {
        let read = schedule.entries.len();
        let mut entries = Vec::with_capacity(read);
        for (key, due) in schedule.entries {
            let fields = match replies.next() {
                Some(Value::Array(f)) => f,
                _ => Vec::new(),
            };
            let json = |i: usize| match fields.get(i) {
                Some(Value::BulkString(b)) => serde_json::from_slice::<Json>(b).ok(),
                _ => None,
            };
            let (definition, meta) = (json(0), json(1));
            if definition.as_ref().and_then(|d| d["enabled"].as_bool()) == Some(false) {
                continue;
            }
            let name = key.strip_prefix(self.prefix.as_bytes()).unwrap_or(&key);
            let last_run = meta.as_ref().and_then(|m| datetime(&m["last_run_at"]));
            let every = definition
                .as_ref()
                .and_then(|d| interval(&d["schedule"]))
                .or_else(|| {
                    // A crontab or rrule: the gap from the last run to the next.
                    Duration::try_from_secs_f64(due - last_run?)
                        .ok()
                        .filter(|d| !d.is_zero())
                });
            entries.push(Periodic {
                name: String::from_utf8_lossy(name).chars().take(200).collect(),
                last_run,
                due: Some(due),
                every,
            });
        }
        Beat {
            source: Source::Redbeat,
            lock: u64::try_from(schedule.lock_ms)
                .ok()
                .map(Duration::from_millis),
            entries,
            left_out: schedule.total.saturating_sub(read),
        }
    }
}

/// An interval schedule's period: `{"__type__": "interval", "every": 2.0, ...}`.
fn interval(schedule: &Json) -> Option<Duration> {
    if schedule["__type__"] != "interval" {
        return None;
    }
    Duration::try_from_secs_f64(schedule["every"].as_f64()?).ok()
}

/// RedBeat's datetime, `{"__type__": "datetime", "year": ..., "microsecond": ...,
/// "timezone": "UTC"}`, in unix seconds. The timezone is `UTC`, an offset in seconds, or a
/// zone name; a zone name other than UTC cannot be told without a zone database: `None`.
fn datetime(d: &Json) -> Option<f64> {
    if d["__type__"] != "datetime" {
        return None;
    }
    let offset = match &d["timezone"] {
        Json::String(z) if z == "UTC" || z == "Etc/UTC" => 0.0,
        Json::Number(n) => n.as_f64()?,
        _ => return None,
    };
    let part = |k: &str| d[k].as_u64();
    let text = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}",
        part("year")?,
        part("month")?,
        part("day")?,
        part("hour")?,
        part("minute")?,
        part("second")?,
        part("microsecond").unwrap_or(0)
    );
    Some(crate::text::parse_iso8601(&text)? - offset)
}

/// Periodic tasks declared by `SIDECAR_CELERY_BEAT_EXPECT`, and when each was last heard in
/// a task event (any of sent, received, started, succeeded...).
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    tasks: Vec<(String, Duration)>,
    last: Vec<Option<f64>>,
    /// When the sidecar started listening (unix seconds): a task never heard is due one
    /// interval after.
    since: f64,
}

impl Expected {
    pub fn new(tasks: Vec<(String, Duration)>, since: f64) -> Expected {
        Expected {
            last: vec![None; tasks.len()],
            tasks,
            since,
        }
    }

    /// A task event of task `name` at `at` (unix seconds).
    pub fn heard(&mut self, name: &str, at: f64) {
        if let Some(i) = self.tasks.iter().position(|(n, _)| n == name) {
            self.last[i] = Some(self.last[i].map_or(at, |l| l.max(at)));
        }
    }

    /// `None` when nothing is declared.
    pub fn beat(&self) -> Option<Beat> {
        if self.tasks.is_empty() {
            return None;
        }
        let mut entries: Vec<Periodic> = self
            .tasks
            .iter()
            .zip(&self.last)
            .map(|((name, every), last)| Periodic {
                name: name.clone(),
                last_run: *last,
                due: Some(last.unwrap_or(self.since) + every.as_secs_f64()),
                every: Some(*every),
            })
            .collect();
        entries.sort_by(|a, b| {
            a.due
                .partial_cmp(&b.due)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        Some(Beat {
            source: Source::Expected,
            lock: None,
            entries,
            left_out: 0,
        })
    }
}

#[cfg(test)]
mod tests;
