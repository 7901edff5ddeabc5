//! `/api/history` and `/api/events`: the page's data as JSON (docs/status-page.md), from
//! the same [`View`] of the history, with the same redaction (endpoints are the redacted
//! URLs; nothing else the history keeps is secret).

use serde::Serialize;

use crate::notify::event::EventDoc;
use crate::serve::health::round3;
use crate::serve::history::{self, Event, Point, View};

#[derive(Serialize)]
struct HistoryDoc<'a> {
    interval_seconds: f64,
    window_seconds: u64,
    points_max: usize,
    targets: Vec<TargetDoc<'a>>,
    queues_shown_max: usize,
    queues: Vec<QueueDoc<'a>>,
    workers_alive: Series,
    tasks_per_minute: Vec<MinuteDoc>,
}

#[derive(Serialize)]
struct TargetDoc<'a> {
    checks: &'a [String],
    endpoint: &'a str,
    ping_p50_ms: Option<f64>,
    ping_p99_ms: Option<f64>,
    /// `[unix seconds, milliseconds or null]`, oldest first.
    ping_ms: Series,
}

#[derive(Serialize)]
struct QueueDoc<'a> {
    name: &'a str,
    length: Series,
}

#[derive(Serialize)]
struct MinuteDoc {
    start: u64,
    succeeded: u64,
    failed: u64,
}

/// `[[t, v], ...]`, as Prometheus' range queries write a series.
type Series = Vec<(f64, Option<f64>)>;

fn series(points: &[Point]) -> Series {
    points
        .iter()
        .map(|p| (p.at as f64 / 1e3, p.value.map(round3)))
        .collect()
}

/// The `/api/history` document.
pub fn history(view: &View) -> String {
    let doc = HistoryDoc {
        interval_seconds: view.interval.as_secs_f64(),
        window_seconds: history::WINDOW.as_secs(),
        points_max: view.points,
        targets: view
            .targets
            .iter()
            .map(|t| TargetDoc {
                checks: &t.checks,
                endpoint: &t.endpoint,
                ping_p50_ms: history::quantile(&t.ping_ms, 0.5).map(round3),
                ping_p99_ms: history::quantile(&t.ping_ms, 0.99).map(round3),
                ping_ms: series(&t.ping_ms),
            })
            .collect(),
        queues_shown_max: view.queue_slots,
        queues: view
            .queues
            .iter()
            .map(|q| QueueDoc {
                name: &q.name,
                length: series(&q.points),
            })
            .collect(),
        workers_alive: series(&view.workers_alive),
        tasks_per_minute: view
            .minutes
            .iter()
            .map(|m| MinuteDoc {
                start: m.start,
                succeeded: m.succeeded,
                failed: m.failed,
            })
            .collect(),
    };
    // Compact: up to 3,600 points a series is for programs; the events are read by people.
    let mut s = serde_json::to_string(&doc).expect("the history document serializes");
    s.push('\n');
    s
}

#[derive(Serialize)]
struct EventsDoc<'a> {
    capacity: usize,
    events: Vec<EventDoc<'a>>,
}

/// The `/api/events` document: newest first.
pub fn events(view: &View) -> String {
    to_json(&EventsDoc {
        capacity: history::EVENTS,
        events: view.events.iter().map(Event::doc).collect(),
    })
}

fn to_json(doc: &impl Serialize) -> String {
    let mut s = serde_json::to_string_pretty(doc).expect("the history documents serialize");
    s.push('\n');
    s
}
