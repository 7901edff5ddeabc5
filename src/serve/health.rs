//! What each check adds to its `/healthz` object, typed: one type per check kind
//! ([`RedisDetails`], [`CeleryReport`]), serialized to the JSON clients have always received
//! (docs/endpoints.md). [`CheckDoc`] is one check's whole object; [`queues_json`] and
//! [`layout_doc`] make the Celery check's parts from a queue probe.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

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
pub struct QueueDoc {
    pub length: u64,
    pub oldest_age_seconds: Option<f64>,
    pub oldest_task: Option<String>,
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
    /// One object per queue, shared by the reports until the next queue probe (with a
    /// thousand queues, a copy per judgement would be memory held for nothing).
    pub queues: Arc<Value>,
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

/// The `queues` object of the celery check, one [`QueueDoc`] per queue.
pub fn queues_json(obs: &QueueObservation) -> Value {
    let queues: serde_json::Map<String, Value> = obs
        .queues
        .iter()
        .map(|q| {
            let doc = QueueDoc {
                length: q.length,
                oldest_age_seconds: q.oldest_age.map(round1),
                oldest_task: q.oldest_task.clone(),
                idle_seconds: q.idle.map(round1),
                unbound: q.unbound,
                stranded: q.stranded,
            };
            let v = serde_json::to_value(doc).expect("a queue's document serializes");
            (q.name.clone(), v)
        })
        .collect();
    Value::Object(queues)
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
