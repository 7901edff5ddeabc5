//! The Celery settings: the broker, the queues, kombu's options when set, and what is
//! healthy.

use std::time::Duration;

use super::{ConfigError, count, duration_or, invalid, non_empty, vars};
use crate::config::cli::Settings;
use crate::redis::target::{Role, Target};
use crate::text::unescape;

/// RedBeat's default `redbeat_key_prefix`.
pub const REDBEAT_PREFIX: &str = "redbeat:";

/// The name of the Celery check.
pub const CELERY_CHECK: &str = "celery";

/// How the sidecar reads Celery's keys and channels on the broker (kombu's transport
/// options), and what it calls healthy.
#[derive(Debug, Clone, PartialEq)]
pub struct CeleryConfig {
    /// The broker: the target with the `broker` role, else the cache; `None` when the
    /// broker URL is one the sidecar does not probe: Celery is not watched.
    pub broker: Option<Target>,
    /// Queues watched whether or not a binding names them (`celery` always among them).
    pub queues: Vec<String>,
    pub min_workers: u32,
    /// kombu's `global_keyprefix`, when set; else found on the broker.
    pub keyprefix: Option<Vec<u8>>,
    /// kombu's `sep`, when set; else found on the broker.
    pub sep: Option<Vec<u8>>,
    /// kombu's `priority_steps` (ascending), when set: only these count in a queue's
    /// length. Else every key kombu can write a priority to counts.
    pub priority_steps: Option<Vec<u32>>,
    pub visibility_timeout: Duration,
    pub heartbeat_misses: u32,
    pub stall_after: Duration,
    /// A task running longer than this is a finding.
    pub running_max: Duration,
    pub max_workers: usize,
    pub forget_after: Duration,
    /// Periodic tasks declared (`SIDECAR_CELERY_BEAT_EXPECT`): task name and interval.
    pub beat_expect: Vec<(String, Duration)>,
    /// RedBeat's `redbeat_key_prefix`.
    pub redbeat_prefix: String,
}

pub(super) fn celery(s: &Settings, targets: &[Target]) -> Result<CeleryConfig, ConfigError> {
    let broker_given = s
        .celery_broker_url
        .as_deref()
        .is_some_and(|t| !t.trim().is_empty());
    let broker = match targets.iter().find(|t| t.roles().contains(&Role::Broker)) {
        Some(t) => Some(t.clone()),
        // A broker URL that is not probed (none is today: Sentinel is, Cluster is refused):
        // Celery is not watched, rather than watched on the cache, which is not where its
        // keys are.
        None if broker_given => None,
        // Never a Redis Cluster: kombu cannot keep Celery's keys on one.
        None => targets
            .iter()
            .find(|t| t.roles().contains(&Role::Cache))
            .or(targets.first())
            .filter(|t| t.cluster().is_none())
            .cloned(),
    };
    let mut queues = vec!["celery".to_string()];
    if let Some(text) = non_empty(vars::CELERY_QUEUES, &s.celery_queues)? {
        for q in text.split(',').map(str::trim).filter(|q| !q.is_empty()) {
            if q.chars().any(char::is_control) || q.len() > 200 {
                return Err(invalid(
                    vars::CELERY_QUEUES,
                    None,
                    "a queue name must be at most 200 characters, none of them control characters",
                ));
            }
            if !queues.iter().any(|known| known == q) {
                queues.push(q.to_string());
            }
        }
    }
    let min_workers = count(
        vars::CELERY_MIN_WORKERS,
        &s.celery_min_workers,
        1,
        0,
        100_000,
    )? as u32;
    let heartbeat_misses = count(
        vars::CELERY_HEARTBEAT_MISSES,
        &s.celery_heartbeat_misses,
        2,
        1,
        100,
    )? as u32;
    let max_workers = count(
        vars::CELERY_MAX_WORKERS,
        &s.celery_max_workers,
        256,
        1,
        100_000,
    )? as usize;
    let keyprefix = match &s.celery_keyprefix {
        None => None,
        Some(text) => unescape(text).map(Some).ok_or_else(|| {
            invalid(
                vars::CELERY_KEYPREFIX,
                None,
                "has a \\x escape that is not two hex digits",
            )
        })?,
    };
    let sep = match non_empty(vars::CELERY_SEP, &s.celery_sep)? {
        None => None,
        Some(text) => unescape(text).map(Some).ok_or_else(|| {
            invalid(
                vars::CELERY_SEP,
                None,
                "has a \\x escape that is not two hex digits",
            )
        })?,
    };
    let priority_steps = match non_empty(vars::CELERY_PRIORITY_STEPS, &s.celery_priority_steps)? {
        None => None,
        Some(text) => {
            let steps: Option<Vec<u32>> = text
                .split(',')
                .map(|p| p.trim().parse::<u32>().ok().filter(|&p| p <= 255))
                .collect();
            match steps {
                Some(steps)
                    if !steps.is_empty()
                        && steps.len() <= 256
                        && steps.windows(2).all(|w| w[0] < w[1]) =>
                {
                    Some(steps)
                }
                _ => {
                    return Err(invalid(
                        vars::CELERY_PRIORITY_STEPS,
                        Some(text),
                        "is not an ascending comma list of priorities from 0 to 255, such as 0,3,6,9",
                    ));
                }
            }
        }
    };
    let visibility_timeout = duration_or(
        vars::CELERY_VISIBILITY_TIMEOUT,
        &s.celery_visibility_timeout,
        "1h",
    )?;
    let stall_after = duration_or(vars::CELERY_STALL_AFTER, &s.celery_stall_after, "5m")?;
    let running_max = duration_or(vars::CELERY_RUNNING_MAX, &s.celery_running_max, "1h")?;
    let forget_after = duration_or(vars::CELERY_FORGET_AFTER, &s.celery_forget_after, "10m")?;
    for (var, value, d) in [
        (
            vars::CELERY_VISIBILITY_TIMEOUT,
            &s.celery_visibility_timeout,
            visibility_timeout,
        ),
        (vars::CELERY_STALL_AFTER, &s.celery_stall_after, stall_after),
        (vars::CELERY_RUNNING_MAX, &s.celery_running_max, running_max),
        (
            vars::CELERY_FORGET_AFTER,
            &s.celery_forget_after,
            forget_after,
        ),
    ] {
        if d < Duration::from_secs(1) {
            return Err(invalid(var, value.as_deref(), "must be at least 1s"));
        }
    }
    let beat_expect = beat_expect(s)?;
    let redbeat_prefix = match non_empty(
        vars::CELERY_REDBEAT_KEY_PREFIX,
        &s.celery_redbeat_key_prefix,
    )? {
        Some(p) if p.chars().any(char::is_control) || p.len() > 200 => {
            return Err(invalid(
                vars::CELERY_REDBEAT_KEY_PREFIX,
                None,
                "must be at most 200 characters, none of them control characters",
            ));
        }
        Some(p) => p.to_string(),
        None => REDBEAT_PREFIX.to_string(),
    };
    Ok(CeleryConfig {
        broker,
        queues,
        min_workers,
        keyprefix,
        sep,
        priority_steps,
        visibility_timeout,
        heartbeat_misses,
        stall_after,
        running_max,
        max_workers,
        forget_after,
        beat_expect,
        redbeat_prefix,
    })
}

/// `SIDECAR_CELERY_BEAT_EXPECT`: `task.name:interval,...`, at most 100 tasks, each interval
/// at least 1s.
fn beat_expect(s: &Settings) -> Result<Vec<(String, Duration)>, ConfigError> {
    let var = vars::CELERY_BEAT_EXPECT;
    let Some(text) = non_empty(var, &s.celery_beat_expect)? else {
        return Ok(Vec::new());
    };
    let mut tasks: Vec<(String, Duration)> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let parsed = item.rsplit_once(':').and_then(|(name, every)| {
            let name = name.trim();
            let every = crate::text::parse_duration(every.trim())?;
            let fine = !name.is_empty()
                && name.len() <= 255
                && !name.chars().any(char::is_control)
                && every >= Duration::from_secs(1);
            fine.then(|| (name.to_string(), every))
        });
        let Some((name, every)) = parsed else {
            return Err(invalid(
                var,
                Some(item),
                "is not task.name:interval (an interval of at least 1s, such as tasks.report:10m)",
            ));
        };
        match tasks.iter_mut().find(|(n, _)| *n == name) {
            Some(t) => t.1 = every,
            None => tasks.push((name, every)),
        }
    }
    if tasks.len() > 100 {
        return Err(invalid(var, None, "names more than 100 tasks"));
    }
    Ok(tasks)
}
