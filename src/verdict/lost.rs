//! Tasks lost with their worker: running (their task-started was heard, their end was
//! not) on a worker that went down without a warm shutdown (SIGKILL, an OOM kill, a lost
//! host). Whether they come back depends on when Celery acknowledged them: with the
//! default early ack they are gone; with `acks_late` their reservation stays in kombu's
//! `unacked` hash, and kombu delivers them again once the visibility timeout has passed.

use std::time::{Duration, UNIX_EPOCH};

use super::Finding;
use crate::text::{human, rfc3339};

/// How long a loss keeps the check degraded.
pub const LOST_WINDOW: Duration = Duration::from_secs(600);

/// What becomes of a lost task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fate {
    /// Acknowledged when it started: it will not run again.
    Gone,
    /// Still reserved (acks_late): delivered again at this Unix time.
    ComesBack(f64),
}

/// One task lost with its worker.
#[derive(Debug, Clone, PartialEq)]
pub struct LostTask {
    pub id: String,
    pub name: String,
    pub worker: String,
    /// How long ago the loss was seen.
    pub ago: Duration,
    pub fate: Fate,
}

/// The fate of task `id`, lost now: it comes back if it is among the reservations
/// (`(id, fetched)`, Unix seconds), after the visibility timeout from its fetch.
pub fn fate(id: &str, reserved: &[(String, f64)], visibility: Duration) -> Fate {
    reserved
        .iter()
        .find(|(r, _)| r == id)
        .map_or(Fate::Gone, |(_, fetched)| {
            Fate::ComesBack(fetched + visibility.as_secs_f64())
        })
}

/// The finding for the tasks lost within [`LOST_WINDOW`] (newest first), if any.
pub fn lost(tasks: &[LostTask]) -> Option<Finding> {
    let recent: Vec<&LostTask> = tasks.iter().filter(|t| t.ago <= LOST_WINDOW).collect();
    let first = recent.first()?;
    let told: Vec<String> = recent
        .iter()
        .take(3)
        .map(|t| {
            let fate = match t.fate {
                Fate::Gone => "gone: Celery acknowledged it when it started (the default early ack), so nothing runs it again".to_string(),
                Fate::ComesBack(at) => format!(
                    "it comes back: still reserved (acks_late), kombu delivers it again at {}",
                    rfc3339(UNIX_EPOCH + Duration::try_from_secs_f64(at.max(0.0)).unwrap_or_default())
                ),
            };
            format!("{} (id {}) on {}, {} ago: {fate}", t.name, t.id, t.worker, human(t.ago))
        })
        .collect();
    let more = recent.len().saturating_sub(3);
    Some(Finding::new(
        "celery workers",
        format!(
            "{} task(s) lost with a worker that went down without a warm shutdown (killed, out of memory, or its host lost) in the last {}: {}{}",
            recent.len(),
            human(LOST_WINDOW),
            told.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        ),
        format!(
            "find why {} died (an OOM kill: the platform's logs, dmesg); for tasks that must not be lost, acks_late=True with task_reject_on_worker_lost=True, and make them safe to run twice",
            first.worker
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_task_is_gone_or_comes_back() {
        let reserved = [("a".to_string(), 1000.0)];
        let vt = Duration::from_secs(60);
        assert_eq!(fate("a", &reserved, vt), Fate::ComesBack(1060.0));
        assert_eq!(fate("b", &reserved, vt), Fate::Gone);
        let t = |id: &str, ago: u64, fate| LostTask {
            id: id.into(),
            name: "tasks.sleep".into(),
            worker: "w1@h".into(),
            ago: Duration::from_secs(ago),
            fate,
        };
        assert!(lost(&[]).is_none());
        assert!(
            lost(&[t("old", 601, Fate::Gone)]).is_none(),
            "past the window"
        );
        let f = lost(&[t("b", 3, Fate::Gone), t("a", 5, Fate::ComesBack(1060.0))]).unwrap();
        assert_eq!(
            f.text,
            "2 task(s) lost with a worker that went down without a warm shutdown (killed, out of memory, or its host lost) in the last 10m00s: tasks.sleep (id b) on w1@h, 3.0s ago: gone: Celery acknowledged it when it started (the default early ack), so nothing runs it again; tasks.sleep (id a) on w1@h, 5.0s ago: it comes back: still reserved (acks_late), kombu delivers it again at 1970-01-01T00:17:40.000Z"
        );
        assert!(f.fix.starts_with("find why w1@h died"));
    }
}
