//! Celery's events, decoded from a kombu message body: worker-online/-heartbeat/-offline,
//! and the task-* events. A body is one event object, or (on `task.multi`) an array of them.

use serde_json::Value;

use super::kombu::{self, DecodeError};

/// The longest hostname, task name or task id kept; longer ones are refused.
const MAX_TEXT: usize = 255;

/// A worker's own event.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerEvent {
    pub kind: WorkerKind,
    pub hostname: String,
    /// Seconds between heartbeats, as the worker announces it.
    pub freq: Option<f64>,
    /// Tasks executing now.
    pub active: Option<u64>,
    /// Tasks handled since the worker started.
    pub processed: Option<u64>,
    pub pid: Option<u64>,
    pub sw_ver: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerKind {
    Online,
    Heartbeat,
    Offline,
}

/// A task's event; which fields are present depends on the kind.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEvent {
    pub kind: TaskKind,
    pub uuid: String,
    /// On task-sent and task-received only.
    pub name: Option<String>,
    /// On task-sent only (the client knows where it sent the task).
    pub queue: Option<String>,
    /// The exception's class, from task-failed's `exception` repr (`ValueError('boom!')`).
    pub exception: Option<String>,
    /// Seconds, on task-succeeded.
    pub runtime: Option<f64>,
    /// Who sent the event: the client on task-sent, the worker on the others.
    pub hostname: Option<String>,
    /// The sender's clock, in Unix seconds.
    pub timestamp: Option<f64>,
    /// When the task may start, in Unix seconds on the client's clock (task-sent and
    /// task-received of an ETA or countdown task).
    pub eta: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskKind {
    Sent,
    Received,
    Started,
    Succeeded,
    Failed,
    Retried,
    Rejected,
    Revoked,
}

impl TaskKind {
    pub const ALL: [TaskKind; 8] = [
        TaskKind::Sent,
        TaskKind::Received,
        TaskKind::Started,
        TaskKind::Succeeded,
        TaskKind::Failed,
        TaskKind::Retried,
        TaskKind::Rejected,
        TaskKind::Revoked,
    ];

    /// The word in `celery_task_<word>_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Sent => "sent",
            TaskKind::Received => "received",
            TaskKind::Started => "started",
            TaskKind::Succeeded => "succeeded",
            TaskKind::Failed => "failed",
            TaskKind::Retried => "retried",
            TaskKind::Rejected => "rejected",
            TaskKind::Revoked => "revoked",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Worker(WorkerEvent),
    Task(TaskEvent),
    /// A type the sidecar does not follow (e.g. a custom event): ignored, not an error.
    Other,
}

/// Every event in a raw pub/sub payload. The outer error is for a payload that is not a
/// message at all; in a batch, each event stands alone, so one bad event does not cost the
/// others.
pub fn decode(payload: &[u8]) -> Result<Vec<Result<Event, DecodeError>>, DecodeError> {
    let message = kombu::decode(payload)?;
    match &message.body {
        Value::Array(items) => Ok(items.iter().map(event).collect()),
        Value::Object(_) => Ok(vec![event(&message.body)]),
        _ => Err(DecodeError::Field("body")),
    }
}

/// One event object.
pub fn event(v: &Value) -> Result<Event, DecodeError> {
    let kind = text(v, "type")?.ok_or(DecodeError::Field("type"))?;
    let worker = match kind.as_str() {
        "worker-online" => Some(WorkerKind::Online),
        "worker-heartbeat" => Some(WorkerKind::Heartbeat),
        "worker-offline" => Some(WorkerKind::Offline),
        _ => None,
    };
    if let Some(kind) = worker {
        return Ok(Event::Worker(WorkerEvent {
            kind,
            hostname: text(v, "hostname")?.ok_or(DecodeError::Field("hostname"))?,
            freq: number(v, "freq")?.filter(|f| f.is_finite() && *f > 0.0),
            active: count(v, "active")?,
            processed: count(v, "processed")?,
            pid: count(v, "pid")?,
            sw_ver: text(v, "sw_ver")?,
        }));
    }
    let task = match kind.as_str() {
        "task-sent" => TaskKind::Sent,
        "task-received" => TaskKind::Received,
        "task-started" => TaskKind::Started,
        "task-succeeded" => TaskKind::Succeeded,
        "task-failed" => TaskKind::Failed,
        "task-retried" => TaskKind::Retried,
        "task-rejected" => TaskKind::Rejected,
        "task-revoked" => TaskKind::Revoked,
        _ => return Ok(Event::Other),
    };
    Ok(Event::Task(TaskEvent {
        kind: task,
        uuid: text(v, "uuid")?.ok_or(DecodeError::Field("uuid"))?,
        name: text(v, "name")?,
        queue: text(v, "queue")?,
        exception: match v.get("exception") {
            None | Some(Value::Null) => None,
            Some(Value::String(repr)) => Some(exception_class(repr)),
            Some(_) => return Err(DecodeError::Field("exception")),
        },
        runtime: number(v, "runtime")?.filter(|r| r.is_finite() && *r >= 0.0),
        hostname: text(v, "hostname")?,
        timestamp: number(v, "timestamp")?.filter(|t| t.is_finite() && *t > 0.0),
        eta: match text(v, "eta")? {
            None => None,
            Some(eta) => Some(crate::text::parse_iso8601(&eta).ok_or(DecodeError::Field("eta"))?),
        },
    }))
}

/// A string field: absent or null is `None`; another type, or longer than 255 bytes, is
/// an error.
fn text(v: &Value, field: &'static str) -> Result<Option<String>, DecodeError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= MAX_TEXT => Ok(Some(s.clone())),
        Some(_) => Err(DecodeError::Field(field)),
    }
}

fn number(v: &Value, field: &'static str) -> Result<Option<f64>, DecodeError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(DecodeError::Field(field)),
    }
}

fn count(v: &Value, field: &'static str) -> Result<Option<u64>, DecodeError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(DecodeError::Field(field)),
        Some(_) => Err(DecodeError::Field(field)),
    }
}

/// `ValueError('boom!')` -> `ValueError`; `mymod.MyError(...)` -> `mymod.MyError`. Anything
/// that is not a plain dotted name is `unknown`, so a label never carries a message.
pub fn exception_class(repr: &str) -> String {
    let name = repr.split('(').next().unwrap_or("").trim();
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if ok {
        name.to_string()
    } else {
        "unknown".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/tests/fixtures/celery/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    fn raw(name: &str) -> Vec<u8> {
        fixture(name)["raw_payload_verbatim"]
            .as_str()
            .unwrap()
            .as_bytes()
            .to_vec()
    }

    #[test]
    fn worker_events_from_real_payloads() {
        let online = decode(&raw("01-worker-online.json")).unwrap();
        assert_eq!(
            online,
            [Ok(Event::Worker(WorkerEvent {
                kind: WorkerKind::Online,
                hostname: "w1@vm".into(),
                freq: Some(2.0),
                active: Some(0),
                processed: Some(0),
                pid: Some(5821),
                sw_ver: Some("5.7.0".into()),
            }))]
        );
        let Ok(Event::Worker(hb)) = &decode(&raw("02-worker-heartbeat-idle.json")).unwrap()[0]
        else {
            panic!("not a worker event");
        };
        assert_eq!(hb.kind, WorkerKind::Heartbeat);
        let Ok(Event::Worker(off)) = &decode(&raw("03-worker-offline.json")).unwrap()[0] else {
            panic!("not a worker event");
        };
        assert_eq!(off.kind, WorkerKind::Offline);
        assert_eq!(off.hostname, "w1@vm");
    }

    #[test]
    fn task_sent_is_an_object_with_the_queue() {
        let events = decode(&raw("05-task-sent-client-event.json")).unwrap();
        let [Ok(Event::Task(t))] = events.as_slice() else {
            panic!("{events:?}");
        };
        assert_eq!(t.kind, TaskKind::Sent);
        assert_eq!(t.name.as_deref(), Some("tasks.add"));
        assert_eq!(t.queue.as_deref(), Some("celery"));
    }

    #[test]
    fn task_multi_is_an_array() {
        let events = decode(&raw("06-task-multi-received.json")).unwrap();
        let [Ok(Event::Task(t))] = events.as_slice() else {
            panic!("{events:?}");
        };
        assert_eq!(t.kind, TaskKind::Received);
        assert_eq!(t.name.as_deref(), Some("tasks.add"));
        assert_eq!(t.queue, None, "task-received carries no queue");
        let two = fixture("07-all-event-types-decoded.json")["example_task_multi_with_2_events"]
            ["raw_payload_verbatim"]
            .as_str()
            .unwrap()
            .to_string();
        let events = decode(two.as_bytes()).unwrap();
        assert_eq!(events.len(), 2);
        let Ok(Event::Task(failed)) = &events[0] else {
            panic!()
        };
        assert_eq!(failed.kind, TaskKind::Failed);
        assert_eq!(failed.exception.as_deref(), Some("ValueError"));
    }

    #[test]
    fn every_captured_event_type_decodes() {
        let all = fixture("07-all-event-types-decoded.json");
        for (name, capture) in all["events"].as_object().unwrap() {
            let e = event(&capture["event"]).unwrap_or_else(|e| panic!("{name}: {e}"));
            match (name.as_str(), &e) {
                ("task-succeeded", Event::Task(t)) => assert!(t.runtime.unwrap() > 0.0),
                ("task-revoked", Event::Task(t)) => assert_eq!(t.kind, TaskKind::Revoked),
                ("task-rejected", Event::Task(t)) => assert_eq!(t.kind, TaskKind::Rejected),
                ("task-retried", Event::Task(t)) => assert_eq!(t.kind, TaskKind::Retried),
                (n, Event::Worker(_)) => assert!(n.starts_with("worker-"), "{n}"),
                (n, Event::Task(t)) => {
                    assert!(n.starts_with(&format!("task-{}", t.kind.as_str())), "{n}")
                }
                (n, Event::Other) => panic!("{n} decoded as Other"),
            }
        }
    }

    #[test]
    fn wrong_field_types_are_errors() {
        let cases = [
            (r#"{"type": 5}"#, "type"),
            (r#"{"hostname": "w"}"#, "type"),
            (r#"{"type": "worker-heartbeat"}"#, "hostname"),
            (
                r#"{"type": "worker-heartbeat", "hostname": ["w"]}"#,
                "hostname",
            ),
            (
                r#"{"type": "worker-heartbeat", "hostname": "w", "freq": "2"}"#,
                "freq",
            ),
            (
                r#"{"type": "worker-heartbeat", "hostname": "w", "active": -1}"#,
                "active",
            ),
            (r#"{"type": "task-started"}"#, "uuid"),
            (
                r#"{"type": "task-failed", "uuid": "u", "exception": 3}"#,
                "exception",
            ),
        ];
        for (json, field) in cases {
            let v: Value = serde_json::from_str(json).unwrap();
            assert_eq!(event(&v).unwrap_err(), DecodeError::Field(field), "{json}");
        }
        let long = format!(
            r#"{{"type": "worker-heartbeat", "hostname": "{}"}}"#,
            "w".repeat(300)
        );
        assert!(event(&serde_json::from_str(&long).unwrap()).is_err());
        let custom: Value = serde_json::from_str(r#"{"type": "my-event"}"#).unwrap();
        assert_eq!(event(&custom).unwrap(), Event::Other);
    }

    #[test]
    fn one_bad_event_in_a_batch_spares_the_others() {
        let body = r#"[{"type": "task-started", "uuid": "a"}, {"type": "task-started"}]"#;
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, body);
        let payload =
            format!(r#"{{"body": "{b64}", "properties": {{"body_encoding": "base64"}}}}"#);
        let events = decode(payload.as_bytes()).unwrap();
        assert!(matches!(&events[0], Ok(Event::Task(t)) if t.uuid == "a"));
        assert_eq!(events[1], Err(DecodeError::Field("uuid")));
    }

    #[test]
    fn exception_classes() {
        assert_eq!(exception_class("ValueError('boom!')"), "ValueError");
        assert_eq!(
            exception_class("NotRegistered('tasks.nope')"),
            "NotRegistered"
        );
        assert_eq!(exception_class("app.errors.Oops()"), "app.errors.Oops");
        assert_eq!(exception_class("secret text with spaces"), "unknown");
        assert_eq!(exception_class(""), "unknown");
    }

    #[test]
    fn a_countdown_tasks_events_carry_its_eta() {
        let v = fixture("08-task-countdown-events.json");
        let events: Vec<TaskEvent> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| match event(&e["event"]) {
                Ok(Event::Task(t)) => t,
                other => panic!("{other:?}"),
            })
            .collect();
        let kinds: Vec<TaskKind> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                TaskKind::Sent,
                TaskKind::Received,
                TaskKind::Started,
                TaskKind::Succeeded
            ]
        );
        let sent = &events[0];
        let (eta, ts) = (sent.eta.unwrap(), sent.timestamp.unwrap());
        assert!((eta - ts - 3.0).abs() < 0.1, "countdown=3: {eta} - {ts}");
        assert_eq!(
            events[1].eta, sent.eta,
            "task-received carries the same ETA"
        );
        assert_eq!(events[2].eta, None);
        assert_eq!(events[2].hostname.as_deref(), Some("w1@vm"));
        assert!(
            sent.hostname
                .as_deref()
                .is_some_and(|h| h.starts_with("gen"))
        );
    }
}
