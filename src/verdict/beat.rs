//! Celery beat: a periodic task overdue, and what that says of beat.

use super::Finding;
use crate::celery::beat::{Beat, Source};
use crate::text::human;
use std::time::Duration;

/// The finding for the periodic tasks overdue at `now` (unix seconds), the most overdue
/// named; `lock_key` is RedBeat's lock, as the sentence names it.
pub fn beat(b: &Beat, now: f64, lock_key: &str) -> Option<Finding> {
    let late = b.overdue(now);
    let (first, by) = late.first()?;
    let ago = |t: f64| human(Duration::from_secs_f64((now - t).max(0.0)));
    let every = first.every.map_or("?".to_string(), human);
    let more = match late.len() {
        1 => String::new(),
        n => {
            let names: Vec<&str> = late[1..]
                .iter()
                .take(3)
                .map(|(p, _)| p.name.as_str())
                .collect();
            format!(
                " ({} more overdue: {}{})",
                n - 1,
                names.join(", "),
                if n > 4 { ", ..." } else { "" }
            )
        }
    };
    let name = &first.name;
    let by = human(*by);
    Some(match b.source {
        Source::Redbeat => {
            let last = first.last_run.map_or("it never ran".to_string(), |t| {
                format!("it last ran {} ago", ago(t))
            });
            match b.lock {
                None => Finding::new(
                    "celery beat",
                    format!(
                        "periodic task {name} is overdue by {by} ({last}, every {every}) and no process holds RedBeat's lock ({lock_key}): celery beat is not running{more}"
                    ),
                    "start celery beat, one process (celery -A <app> beat -S redbeat.RedBeatScheduler), and read its log for why it stopped",
                ),
                Some(ttl) => Finding::new(
                    "celery beat",
                    format!(
                        "periodic task {name} is overdue by {by} ({last}, every {every}) while RedBeat's lock ({lock_key}) is held, for {} more: beat is stuck, cannot publish to the broker, or was killed and its lock has not expired yet{more}",
                        human(ttl)
                    ),
                    "read celery beat's log; if it is gone, start it again (a new beat takes over when the old lock expires, redbeat_lock_timeout)",
                ),
            }
        }
        Source::Expected => {
            let last = first
                .last_run
                .map_or("not heard since the sidecar started".to_string(), |t| {
                    format!("last heard {} ago", ago(t))
                });
            Finding::new(
                "celery beat",
                format!(
                    "periodic task {name} is overdue by {by} ({last}, expected every {every} by SIDECAR_CELERY_BEAT_EXPECT): celery beat is not running, or the workers send no task events{more}"
                ),
                "check that one celery beat runs and that the workers run with -E (task events); check the task name in SIDECAR_CELERY_BEAT_EXPECT",
            )
        }
    })
}
