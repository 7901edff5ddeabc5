//! What each check adds to its `/healthz` object, typed: one type per check kind
//! ([`RedisDetails`], [`CeleryReport`]), serialized to the JSON clients have always received
//! (docs/endpoints.md). [`CheckDoc`] is one check's whole object; [`queues_json`] and
//! [`layout_doc`] make the Celery check's parts from a queue probe.

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::celery::beat::{Beat, Source};
use crate::celery::queues::{Layout, QueueObservation};
use crate::redis::info::Info;
use crate::redis::pool::PoolState;
use crate::text::escape;
use crate::verdict::{Finding, Status};

/// A check's kind-specific part.
#[derive(Debug, Clone, Default)]
pub enum Details {
    /// Nothing to add (no probe has said more yet).
    #[default]
    None,
    Redis(Box<RedisDetails>),
    Celery(Box<CeleryReport>),
}

/// `details` of a Redis check: the pool, and INFO's figures when there are any.
#[derive(Debug, Clone, Serialize)]
pub struct RedisDetails {
    pub pool: PoolDoc,
    #[serde(flatten)]
    pub info: Option<Info>,
    /// The target's database, from INFO `keyspace`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyspace: Option<KeyspaceDoc>,
    /// A Sentinel target's master and sentinels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<SentinelDoc>,
    /// A Redis Cluster's state, slots and nodes, from the last probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::redis::cluster::View>,
}

/// `details.sentinel`: the master the sentinels name, its changes, and each sentinel.
#[derive(Debug, Clone, Serialize)]
pub struct SentinelDoc {
    pub master_name: String,
    /// `host:port` as the sentinels announce it; null before any answered.
    pub master: Option<String>,
    /// Unix seconds of the last change of master seen; null before any.
    pub master_changed_at: Option<f64>,
    pub failovers: u64,
    pub sentinels: Vec<crate::redis::sentinel::View>,
}

impl From<&crate::redis::sentinel::Sentinels> for SentinelDoc {
    fn from(s: &crate::redis::sentinel::Sentinels) -> SentinelDoc {
        let state = s.state();
        SentinelDoc {
            master_name: s.master.clone(),
            master: state.master.map(|m| m.to_string()),
            master_changed_at: state.changed_at.map(crate::text::unix_secs),
            failovers: state.failovers,
            sentinels: state.views,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct KeyspaceDoc {
    pub db: i64,
    pub keys: u64,
    /// Keys with a TTL.
    pub expiring: u64,
    pub avg_ttl_seconds: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct PoolDoc {
    pub connections: u32,
    pub idle: u32,
    pub in_use: u32,
}

impl From<PoolState> for PoolDoc {
    fn from(p: PoolState) -> PoolDoc {
        PoolDoc {
            connections: p.connections,
            idle: p.idle,
            in_use: p.in_use(),
        }
    }
}

/// The Celery check's part: its `details` and the fields at the check's top level.
#[derive(Debug, Clone)]
pub struct CeleryReport {
    pub details: CeleryDetails,
    pub fields: CeleryFields,
}

#[derive(Debug, Clone, Serialize)]
pub struct CeleryDetails {
    pub events: EventsDoc,
    pub running: RunningDoc,
    /// Tasks lost with their worker, newest first (the last 20).
    pub lost: Vec<LostDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservations: Option<ReservationsDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queues_left_out: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kombu: Option<LayoutDoc>,
    /// Celery beat, when RedBeat's keys are on the broker or periodic tasks are declared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beat: Option<BeatDoc>,
}

/// Celery beat's periodic tasks, due first.
#[derive(Debug, Clone, Serialize)]
pub struct BeatDoc {
    pub source: Source,
    /// RedBeat: whether a beat holds its lock, and for how long more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_held: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_ttl_seconds: Option<f64>,
    pub tasks: Vec<PeriodicDoc>,
    /// RedBeat entries beyond the 100 read.
    pub tasks_left_out: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeriodicDoc {
    pub name: String,
    pub last_run_age_seconds: Option<f64>,
    /// Negative: past due.
    pub due_in_seconds: Option<f64>,
    pub every_seconds: Option<f64>,
    pub overdue_seconds: f64,
}

impl BeatDoc {
    /// At `now`, in unix seconds.
    pub fn of(b: &Beat, now: f64) -> BeatDoc {
        let round = |x: f64| (x * 10.0).round() / 10.0;
        BeatDoc {
            source: b.source,
            lock_held: (b.source == Source::Redbeat).then_some(b.lock.is_some()),
            lock_ttl_seconds: b.lock.map(round1),
            tasks: b
                .entries
                .iter()
                .map(|p| PeriodicDoc {
                    name: p.name.clone(),
                    last_run_age_seconds: p.last_run.map(|t| round((now - t).max(0.0))),
                    due_in_seconds: p.due.map(|d| round(d - now)),
                    every_seconds: p.every.map(round1),
                    overdue_seconds: p.overdue(now).map_or(0.0, round1),
                })
                .collect(),
            tasks_left_out: b.left_out,
        }
    }
}

/// The event subscription.
#[derive(Debug, Clone, Serialize)]
pub struct EventsDoc {
    pub subscribed: bool,
    pub since_seconds: Option<f64>,
    pub error: Option<String>,
    pub received: u64,
    pub decode_errors: u64,
    pub untracked_workers: u64,
    pub reconnects: u64,
    pub tasks_remembered: usize,
}

/// Tasks heard to start and not yet to end, on workers alive.
#[derive(Debug, Clone, Serialize)]
pub struct RunningDoc {
    pub tasks: usize,
    /// The oldest running task of each name, oldest first (at most ten names).
    pub oldest: Vec<RunningTaskDoc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunningTaskDoc {
    pub name: String,
    pub id: String,
    pub worker: Option<String>,
    pub running_seconds: f64,
}

/// A task lost with its worker.
#[derive(Debug, Clone, Serialize)]
pub struct LostDoc {
    pub id: String,
    pub name: String,
    pub worker: String,
    pub seconds_ago: f64,
    /// When kombu delivers it again (acks_late), or `null`: gone.
    pub comes_back_at: Option<String>,
}

impl LostDoc {
    pub fn of(t: &crate::verdict::LostTask) -> LostDoc {
        use crate::verdict::Fate;
        LostDoc {
            id: t.id.clone(),
            name: t.name.clone(),
            worker: t.worker.clone(),
            seconds_ago: round1(t.ago),
            comes_back_at: match t.fate {
                Fate::Gone => None,
                Fate::ComesBack(at) => Some(crate::text::rfc3339(
                    std::time::UNIX_EPOCH
                        + std::time::Duration::try_from_secs_f64(at.max(0.0)).unwrap_or_default(),
                )),
            },
        }
    }
}

/// The unacked reservations.
#[derive(Debug, Clone, Serialize)]
pub struct ReservationsDoc {
    pub unacked: u64,
    pub oldest_age_seconds: Option<f64>,
    pub orphaned: u64,
    pub visibility_timeout_seconds: f64,
    /// Messages delivered again seen since the sidecar started.
    pub redelivered_seen: u64,
}

/// kombu's layout as found on the broker (bytes escaped as `config` shows them).
#[derive(Debug, Clone, Serialize)]
pub struct LayoutDoc {
    pub key_prefix: String,
    pub key_prefix_from: &'static str,
    pub separators: Vec<String>,
    pub separator_from: &'static str,
    pub priority_steps_seen: Vec<u32>,
    pub other_key_prefixes: Vec<String>,
}

/// One queue in the Celery check's `queues`: length, oldest front and task always; how long
/// nothing was taken, unbound and stranded only when they say something (with a thousand
/// idle queues, every field is memory held for each report).
#[derive(Debug, Clone, Serialize)]
pub struct QueueDoc<'a> {
    pub length: u64,
    pub oldest_age_seconds: Option<f64>,
    pub oldest_task: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_seconds: Option<f64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unbound: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub stranded: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The Celery check's top-level fields.
#[derive(Debug, Clone, Serialize)]
pub struct CeleryFields {
    pub workers_alive: usize,
    pub min_workers: u32,
    pub workers: Vec<WorkerDoc>,
    /// One object per queue, serialized once per queue probe and shared by the reports
    /// until the next (with a thousand queues, a tree of values, or a copy per judgement,
    /// would be memory held for nothing).
    pub queues: Arc<RawValue>,
    pub unacked: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerDoc {
    pub hostname: String,
    pub alive: bool,
    pub active: u64,
    pub processed: u64,
    pub heartbeat_age_seconds: f64,
    pub freq: f64,
    pub pid: Option<u64>,
    pub sw_ver: Option<String>,
}

/// One check's `/healthz` object.
#[derive(Serialize)]
pub struct CheckDoc<'a> {
    pub status: Status,
    pub endpoint: Option<&'a str>,
    pub latency_ms: Option<f64>,
    pub last_success: Option<String>,
    pub last_probe: Option<String>,
    pub consecutive_failures: u32,
    pub error: Option<String>,
    pub reason: Option<&'static str>,
    pub fix: Option<&'a str>,
    pub warnings: Vec<&'a str>,
    pub findings: &'a [Finding],
    pub details: DetailsDoc<'a>,
    #[serde(flatten)]
    pub celery: Option<&'a CeleryFields>,
}

/// `details` as it serializes: `{}` when there is nothing.
#[derive(Serialize)]
#[serde(untagged)]
pub enum DetailsDoc<'a> {
    Empty(Empty),
    Redis(&'a RedisDetails),
    Celery(&'a CeleryDetails),
}

#[derive(Serialize)]
pub struct Empty {}

impl Details {
    pub fn doc(&self) -> DetailsDoc<'_> {
        match self {
            Details::None => DetailsDoc::Empty(Empty {}),
            Details::Redis(r) => DetailsDoc::Redis(r),
            Details::Celery(c) => DetailsDoc::Celery(&c.details),
        }
    }

    /// The Celery check's top-level fields, for a Celery report.
    pub fn celery_fields(&self) -> Option<&CeleryFields> {
        match self {
            Details::Celery(c) => Some(&c.fields),
            _ => None,
        }
    }
}

/// The `queues` object of the celery check, one [`QueueDoc`] per queue, as JSON text.
pub fn queues_json(obs: &QueueObservation) -> Arc<RawValue> {
    struct Queues<'a>(&'a QueueObservation);
    impl Serialize for Queues<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.queues.iter().map(|q| {
                let doc = QueueDoc {
                    length: q.length,
                    oldest_age_seconds: q.oldest_age.map(round1),
                    oldest_task: q.oldest_task.as_deref(),
                    idle_seconds: q.idle.map(round1),
                    unbound: q.unbound,
                    stranded: q.stranded,
                };
                (&q.name, doc)
            }))
        }
    }
    let raw = serde_json::value::to_raw_value(&Queues(obs)).expect("a queue's document serializes");
    Arc::from(raw)
}

/// What the status page shows of a queue's document.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize)]
pub struct QueueBrief {
    pub length: Option<u64>,
    pub oldest_age_seconds: Option<f64>,
}

/// Reads a `queues` object back, without a copy of what is not asked for: how many queues
/// it holds, and the brief of each whose name `pick` gives a slot below `slots` (the first
/// name given a slot keeps it).
pub fn queue_briefs(
    all: &RawValue,
    slots: usize,
    mut pick: impl FnMut(&str) -> Option<usize>,
) -> (usize, Vec<Option<QueueBrief>>) {
    use serde::de::{self, Deserializer as _, IgnoredAny, MapAccess, Visitor};
    use std::borrow::Cow;

    /// A name, borrowed from the text unless it holds an escape.
    struct Key<'de>(Cow<'de, str>);
    impl<'de> serde::Deserialize<'de> for Key<'de> {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a queue name")
                }
                fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Borrowed(s)))
                }
                fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Owned(s.to_owned())))
                }
            }
            d.deserialize_str(V)
        }
    }
    struct Read<'p, F> {
        pick: &'p mut F,
        total: usize,
        found: Vec<Option<QueueBrief>>,
    }
    impl<'de, F: FnMut(&str) -> Option<usize>> Visitor<'de> for &mut Read<'_, F> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("the queues object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(Key(name)) = map.next_key()? {
                self.total += 1;
                match (self.pick)(&name).filter(|&i| i < self.found.len()) {
                    Some(i) if self.found[i].is_none() => self.found[i] = Some(map.next_value()?),
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(())
        }
    }
    let mut read = Read {
        pick: &mut pick,
        total: 0,
        found: vec![None; slots],
    };
    // The text is ours (queues_json wrote it): it cannot fail to read back.
    let _ = serde_json::Deserializer::from_str(all.get()).deserialize_map(&mut read);
    (read.total, read.found)
}

/// An empty `queues` object.
pub fn no_queues() -> Arc<RawValue> {
    Arc::from(RawValue::from_string("{}".to_owned()).expect("{} is JSON"))
}

/// The layout of kombu's keys as `/healthz` shows it (bytes escaped as `config` does).
pub fn layout_doc(l: &Layout) -> LayoutDoc {
    LayoutDoc {
        key_prefix: escape(&l.prefix),
        key_prefix_from: l.prefix_from,
        separators: l.seps.iter().map(|s| escape(s)).collect(),
        separator_from: l.sep_from,
        priority_steps_seen: l.steps_seen.iter().copied().collect(),
        other_key_prefixes: l.other_prefixes.iter().map(|p| escape(p)).collect(),
    }
}

/// Seconds to one decimal, as the documents show ages.
pub fn round1(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

/// Three decimals, as the documents show milliseconds and seconds.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_briefs_reads_back_what_is_asked_for() {
        let long = "q".repeat(400);
        let all = serde_json::value::to_raw_value(&serde_json::json!({
            "plain": {"length": 3, "oldest_age_seconds": 75.0, "oldest_task": "t\"1"},
            "quo\"te": {"length": 0, "oldest_age_seconds": null, "oldest_task": null},
            long.clone(): {"length": 9, "oldest_age_seconds": 1.5, "oldest_task": null, "unbound": true},
            "unasked": {"length": 1, "oldest_age_seconds": null, "oldest_task": null},
        }))
        .unwrap();
        let wanted = [
            "quo\"te",
            "plain",
            crate::serve::history::cut_str(&long),
            "absent",
        ];
        let (total, briefs) = queue_briefs(&all, wanted.len(), |name| {
            let name = crate::serve::history::cut_str(name);
            wanted.iter().position(|w| *w == name)
        });
        assert_eq!(total, 4);
        let brief = |length, oldest| {
            Some(QueueBrief {
                length: Some(length),
                oldest_age_seconds: oldest,
            })
        };
        assert_eq!(
            briefs,
            vec![
                brief(0, None),
                brief(3, Some(75.0)),
                brief(9, Some(1.5)),
                None
            ]
        );
        let (total, briefs) = queue_briefs(&no_queues(), 1, |_| Some(0));
        assert_eq!((total, briefs), (0, vec![None]));
    }
}
