//! Reservations that will be delivered again: read from the oldest entries of kombu's
//! `unacked` hash (the message, with its ETA) and `unacked_index` (when a worker fetched it).
//! kombu gives a reservation to a worker again once it is older than the visibility
//! timeout, acknowledged or not: a task whose ETA lies beyond that, or that has not been
//! acknowledged by then, runs twice (celery/kombu#337). Pure: the probe reads, this judges.

use std::time::Duration;

use serde_json::Value;

/// Reservations inspected at most, the oldest first (`ZRANGE unacked_index 0 N-1`, then
/// `HMGET unacked` of those): the cost of a probe stays bounded whatever the backlog.
pub const MAX_INSPECTED: usize = 200;
/// A reservation older than this share of the visibility timeout is at risk.
pub const AGE_SHARE: f64 = 0.8;
/// Reservations at risk listed at most (all are counted).
const MAX_LISTED: usize = 10;

/// Why a reservation will be delivered again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Risk {
    /// Its ETA is this long after it was fetched, past the visibility timeout.
    EtaBeyond(Duration),
    /// It has been held this long, near the visibility timeout, and not acknowledged.
    Old(Duration),
}

/// One reservation at risk.
#[derive(Debug, Clone, PartialEq)]
pub struct AtRisk {
    pub queue: String,
    pub task: Option<String>,
    pub id: Option<String>,
    pub risk: Risk,
    /// When kombu delivers it again, in Unix seconds.
    pub redelivery_at: f64,
}

/// What the probe read of the oldest reservations: `fetched` (delivery tag, when fetched)
/// and the `HMGET unacked` reply of those tags: the reservations at risk per queue, the
/// first of them, and every task id with when it was fetched.
pub fn read(
    fetched: &[(Vec<u8>, f64)],
    hmget: Option<redis::Value>,
    visibility: Duration,
    now: f64,
) -> Reservations {
    let messages: Vec<Option<Vec<u8>>> = match hmget {
        Some(redis::Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                redis::Value::BulkString(b) => Some(b),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let entries: Vec<(Option<&[u8]>, f64)> = fetched
        .iter()
        .enumerate()
        .map(|(i, (_, at))| (messages.get(i).and_then(|m| m.as_deref()), *at))
        .collect();
    judge(&entries, visibility, now)
}

/// What [`read`] found.
pub struct Reservations {
    /// Reservations at risk, per queue.
    pub risk: Vec<(String, u64)>,
    /// The first of them.
    pub at_risk: Vec<AtRisk>,
    /// Every task id, with when it was fetched.
    pub reserved: Vec<(String, f64)>,
    /// Reserved again after kombu restored them (task id, queue).
    pub redelivered: Vec<(String, String)>,
}

/// The task id of a message kombu delivered again: it marks what it restores (after the
/// visibility timeout, or from a worker's warm shutdown) `redelivered` (fixture 25).
pub fn redelivered(envelope: &Value) -> Option<&str> {
    let marked = envelope["headers"]["redelivered"] == true
        || envelope["properties"]["delivery_info"]["redelivered"] == true;
    marked.then(|| envelope["headers"]["id"].as_str()).flatten()
}

/// The reservations among `entries` (delivery tag's message, if the hash had it, and when
/// it was fetched, in Unix seconds), each message parsed once, as of `now` (Unix
/// seconds): those at risk (how many per queue, and the first few) and every task id.
pub fn judge(entries: &[(Option<&[u8]>, f64)], visibility: Duration, now: f64) -> Reservations {
    let vt = visibility.as_secs_f64();
    let mut per_queue: Vec<(String, u64)> = Vec::new();
    let mut listed = Vec::new();
    let mut reserved = Vec::new();
    let mut again = Vec::new();
    for (message, fetched) in entries {
        let Some(m) = message.and_then(|m| serde_json::from_slice::<Value>(m).ok()) else {
            continue;
        };
        // [message, exchange, routing_key]
        let Some(envelope) = m.get(0).filter(|e| e.is_object()) else {
            continue;
        };
        let headers = &envelope["headers"];
        if let Some(id) = headers["id"].as_str() {
            reserved.push((id.to_string(), *fetched));
        }
        let queue = m[2]
            .as_str()
            .or_else(|| envelope["properties"]["delivery_info"]["routing_key"].as_str())
            .unwrap_or("unknown");
        if let Some(id) = redelivered(envelope) {
            again.push((id.to_string(), queue.to_string()));
        }
        let eta = headers["eta"].as_str().and_then(crate::text::parse_iso8601);
        let age = now - fetched;
        // Past the timeout it is orphaned: delivered again already (the orphaned count).
        if age > vt {
            continue;
        }
        let risk = match eta {
            Some(eta) if eta - fetched > vt => Risk::EtaBeyond(secs(eta - fetched)),
            _ if age > AGE_SHARE * vt => Risk::Old(secs(age)),
            _ => continue,
        };
        match per_queue.iter_mut().find(|(q, _)| q == queue) {
            Some((_, n)) => *n += 1,
            None => per_queue.push((queue.to_string(), 1)),
        }
        if listed.len() < MAX_LISTED {
            listed.push(AtRisk {
                queue: queue.to_string(),
                task: headers["task"].as_str().map(String::from),
                id: headers["id"].as_str().map(String::from),
                risk,
                redelivery_at: fetched + vt,
            });
        }
    }
    Reservations {
        risk: per_queue,
        at_risk: listed,
        reserved,
        redelivered: again,
    }
}

/// Task ids seen delivered again, each counted once (the last [`SEEN_MAX`] remembered).
#[derive(Debug, Default)]
pub struct SeenOnce {
    ids: std::collections::HashSet<String>,
    order: std::collections::VecDeque<String>,
    total: u64,
}

/// Redelivered task ids remembered at most.
pub const SEEN_MAX: usize = 4096;

impl SeenOnce {
    /// True the first time `id` is seen.
    pub fn first(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() >= SEEN_MAX
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        self.ids.insert(id.to_string());
        self.order.push_back(id.to_string());
        self.total += 1;
        true
    }

    /// How many were seen in all.
    pub fn total(&self) -> u64 {
        self.total
    }
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/celery/21-unacked-hash-and-index.json"
        );
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        v["unacked_value_verbatim"]
            .as_str()
            .unwrap()
            .as_bytes()
            .to_vec()
    }

    /// The captured reservation with an ETA put in its headers.
    fn with_eta(eta: &str) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(&fixture()).unwrap();
        v[0]["headers"]["eta"] = Value::String(eta.into());
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn an_eta_beyond_the_visibility_timeout_or_an_old_reservation_is_at_risk() {
        let hour = Duration::from_secs(3600);
        let fetched = 1_795_777_000.0;
        let plain = fixture();
        // Fetched 10 minutes ago, no ETA: fine.
        let Reservations {
            risk: q,
            at_risk: l,
            ..
        } = judge(&[(Some(&plain), fetched)], hour, fetched + 600.0);
        assert!(q.is_empty() && l.is_empty());
        // Held past the hour: orphaned, counted elsewhere.
        let Reservations { risk: q, .. } =
            judge(&[(Some(&plain), fetched)], hour, fetched + 3700.0);
        assert!(q.is_empty());
        // Held 50 minutes: near the hour.
        let Reservations {
            risk: q,
            at_risk: l,
            ..
        } = judge(&[(Some(&plain), fetched)], hour, fetched + 3000.0);
        assert_eq!(q, [("celery".to_string(), 1)]);
        assert_eq!(l[0].risk, Risk::Old(Duration::from_secs(3000)));
        assert_eq!(l[0].task.as_deref(), Some("tasks.sleep"));
        assert_eq!(
            l[0].id.as_deref(),
            Some("e25aa88f-1589-457f-aff3-520c709dd0f1")
        );
        assert_eq!(l[0].redelivery_at, fetched + 3600.0);
        // An ETA 90 minutes after the fetch: delivered again before it runs.
        let late = with_eta("2026-11-27T20:26:40+00:00");
        let eta = crate::text::parse_iso8601("2026-11-27T20:26:40+00:00").unwrap();
        let Reservations {
            risk: q,
            at_risk: l,
            ..
        } = judge(&[(Some(&late), eta - 5400.0)], hour, eta - 5399.0);
        assert_eq!(q, [("celery".to_string(), 1)]);
        assert_eq!(l[0].risk, Risk::EtaBeyond(Duration::from_secs(5400)));
        // An ETA within the timeout: fine.
        let Reservations { risk: q, .. } =
            judge(&[(Some(&late), eta - 1800.0)], hour, eta - 1799.0);
        assert!(q.is_empty());
        // Garbage and a tag whose message is gone are skipped.
        let Reservations { risk: q, .. } = judge(
            &[(Some(b"not json"), 0.0), (None, 0.0), (Some(b"[1]"), 0.0)],
            hour,
            3500.0,
        );
        assert!(q.is_empty());
    }

    /// A real reservation of a countdown=30 task with a 10 s visibility timeout.
    #[test]
    fn a_real_countdown_past_the_timeout_is_at_risk() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/celery/22-unacked-eta-beyond-visibility.json"
        );
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let message = v["unacked_value_verbatim"].as_str().unwrap().as_bytes();
        let fetched = v["unacked_index"][0][1].as_f64().unwrap();
        let now = v["read_at"].as_f64().unwrap();
        let ten = Duration::from_secs(10);
        let Reservations {
            risk: q,
            at_risk: l,
            ..
        } = judge(&[(Some(message), fetched)], ten, now);
        assert_eq!(q, [("celery".to_string(), 1)]);
        let Risk::EtaBeyond(d) = l[0].risk else {
            panic!("{l:?}");
        };
        assert!((29.0..31.0).contains(&d.as_secs_f64()), "{d:?}");
        assert_eq!(
            l[0].id.as_deref(),
            Some("9a81e21a-9583-4cbf-abed-b7eafa9f9849")
        );
        // With a timeout of a minute, the same reservation is fine.
        let Reservations { risk: q, .. } =
            judge(&[(Some(message), fetched)], Duration::from_secs(60), now);
        assert!(q.is_empty());
    }

    /// An acks_late task on a worker SIGKILLed while it ran: its reservation stays, with
    /// its task id, which is how a lost task is known to come back.
    #[test]
    fn a_killed_workers_acks_late_task_is_still_reserved() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/celery/23-acks-late-task-on-a-killed-worker.json"
        );
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let message = v["unacked"].as_object().unwrap().values().next().unwrap();
        let fetched = v["unacked_index"][0][1].as_f64().unwrap();
        let bytes = message.as_str().unwrap().as_bytes();
        let reserved = judge(
            &[(Some(bytes), fetched)],
            Duration::from_secs(3600),
            fetched,
        )
        .reserved;
        assert_eq!(
            reserved,
            [("f6348017-7909-4e64-8fee-b318d76a5917".to_string(), fetched)]
        );
        let heard = v["events_heard_in_order"].as_array().unwrap();
        assert!(
            !heard
                .iter()
                .any(|e| e.as_str().unwrap().starts_with("worker-offline"))
        );
    }

    #[test]
    fn messages_delivered_again_are_told_once() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/celery/25-redelivered-after-a-warm-shutdown.json"
        );
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let front: Value =
            serde_json::from_str(v["queue_front_verbatim"].as_str().unwrap()).unwrap();
        let id = "bfeeabb6-750a-497a-9935-cca22a7b19e0";
        assert_eq!(redelivered(&front), Some(id));
        // Reserved again by a new worker: still marked, in the unacked hash's triple.
        let unacked = v["unacked_value_after_a_new_worker_reserved_it"]
            .as_str()
            .unwrap()
            .as_bytes();
        let r = judge(
            &[(Some(unacked), 1_796_159_560.0)],
            Duration::from_secs(3600),
            1_796_159_561.0,
        );
        assert_eq!(r.redelivered, [(id.to_string(), "celery".to_string())]);
        // A first delivery is not marked.
        let plain: Value = serde_json::from_slice(&fixture()).unwrap();
        assert_eq!(redelivered(&plain[0]), None);
        let r = judge(
            &[(Some(&fixture()), 1_796_159_560.0)],
            Duration::from_secs(3600),
            1_796_159_561.0,
        );
        assert!(r.redelivered.is_empty());

        let mut seen = SeenOnce::default();
        assert!(seen.first(id));
        assert!(
            !seen.first(id),
            "the front, then the reservation: one message"
        );
        for i in 0..SEEN_MAX {
            assert!(seen.first(&i.to_string()));
        }
        assert!(seen.first(id), "forgotten past the bound");
        assert_eq!(seen.total(), SEEN_MAX as u64 + 2);
    }
}
