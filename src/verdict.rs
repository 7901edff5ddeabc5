//! The one judgement of a Redis target. From what a probe saw (PING's round trip, INFO's
//! fields or why INFO was refused), the roles the target plays and the latency SLO: its
//! status, the cause and its fix when unhealthy, the findings and their fixes when degraded.
//! A pure function: the server's runner and `check` both call it, so they cannot disagree
//! about the same Redis.

use std::time::Duration;

use serde::Serialize;

use crate::celery::queues::QueueObservation;
use crate::celery::queues::reservations::Risk;
use crate::config::CeleryConfig;
use crate::redis::failure::{Failure, Reason};
use crate::redis::info::Info;
use crate::redis::target::Role;
use crate::text::human;
use crate::text::show;

mod beat;
mod cluster;
mod fixes;
mod keys;
mod lost;
mod sentinel;
pub use beat::beat;
pub use cluster::{cluster, cluster_refused};
pub use fixes::failure_fix;
pub use keys::{EVICTION_WINDOW, Evictions, evictions, results_kept};
pub use lost::{Fate, LOST_WINDOW, LostTask, fate, lost};
pub use sentinel::{sentinel_findings, sentinel_fix};

/// A check's health. Ordered: the overall status is the worst (greatest) of all checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Degraded,
    Unhealthy,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Degraded => "degraded",
            Status::Unhealthy => "unhealthy",
        }
    }

    /// The value of `sidecar_check_status`.
    pub fn code(self) -> i64 {
        self as i64
    }
}

/// Something wrong that does not stop the check working (it is degraded), and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Which part of the probe saw it: `ping` or `info` (the `check` step).
    #[serde(skip)]
    pub step: &'static str,
    pub text: String,
    pub fix: String,
}

impl Finding {
    pub fn new(step: &'static str, text: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            step,
            text: text.into(),
            fix: fix.into(),
        }
    }
}

/// What makes a check unhealthy, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// Which part of the probe saw it (the `check` step).
    pub step: &'static str,
    pub failure: Failure,
    pub fix: String,
}

impl Cause {
    pub fn new(step: &'static str, failure: Failure, fix: impl Into<String>) -> Cause {
        Cause {
            step,
            failure,
            fix: fix.into(),
        }
    }
}

/// A check's status with its reasons.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub status: Status,
    /// Why it is unhealthy.
    pub error: Option<Cause>,
    /// Why it is degraded.
    pub findings: Vec<Finding>,
}

impl Judgement {
    /// Unhealthy when there is an error, degraded when there are findings.
    pub fn new(error: Option<Cause>, findings: Vec<Finding>) -> Judgement {
        let status = if error.is_some() {
            Status::Unhealthy
        } else if findings.is_empty() {
            Status::Healthy
        } else {
            Status::Degraded
        };
        Judgement {
            status,
            error,
            findings,
        }
    }
}

/// What a successful PING showed, with INFO's fields or why INFO was refused.
pub fn redis(
    ping: Duration,
    info: Result<&Info, &Failure>,
    roles: &[Role],
    slo: Duration,
) -> Judgement {
    let mut findings = Vec::new();
    if ping > slo {
        findings.push(Finding::new(
            "ping",
            format!(
                "slow: PING took {:.1}ms, over the {} latency SLO",
                ping.as_secs_f64() * 1e3,
                show(slo)
            ),
            "Redis or the network is slow: check SLOWLOG, LATENCY DOCTOR, and the distance to the server",
        ));
    }
    let i = match info {
        Err(f) => {
            findings.push(Finding::new(
                "info",
                format!(
                    "INFO failed, so clients, memory and evictions are unknown: {}",
                    f.message
                ),
                "grant the ACL user +info",
            ));
            return Judgement::new(None, findings);
        }
        Ok(i) => i,
    };
    if let Some(error) = unusable(i, roles) {
        return Judgement::new(Some(error), findings);
    }
    let broker = roles.contains(&Role::Broker);
    if let (Some(c), Some(m)) = (i.connected_clients, i.maxclients)
        && m > 0
        && c * 10 >= m * 9
    {
        findings.push(Finding::new(
            "info",
            format!("{c} of {m} clients: near maxclients"),
            "raise maxclients, or find the client that leaks connections (CLIENT LIST)",
        ));
    }
    if let Some(used) = i.used_memory_bytes {
        let max = i.maxmemory_bytes.unwrap_or(0);
        let policy = i.maxmemory_policy.as_deref().unwrap_or("?");
        if max > 0 && used * 10 >= max * 9 {
            findings.push(if policy == "noeviction" {
                Finding::new(
                    "info",
                    format!(
                        "memory {} of {}: near maxmemory with noeviction",
                        mib(used),
                        mib(max)
                    ),
                    "writes will fail with OOM when full: raise maxmemory or free keys",
                )
            } else {
                Finding::new(
                    "info",
                    format!(
                        "memory {} of {}: near maxmemory, keys are evicted ({policy})",
                        mib(used),
                        mib(max)
                    ),
                    "raise maxmemory; evicted keys are lost data",
                )
            });
        }
        // kombu's lists have no TTL: only allkeys-* policies can evict them.
        if broker && max > 0 && policy.starts_with("allkeys-") {
            findings.push(Finding::new(
                "info",
                format!("a Celery broker with maxmemory-policy {policy}"),
                "queued tasks can be evicted and lost: a broker should use noeviction",
            ));
        }
    }
    for (name, status) in [
        ("RDB save", &i.rdb_last_bgsave_status),
        ("AOF write", &i.aof_last_write_status),
    ] {
        if status.as_deref() == Some("err") {
            findings.push(Finding::new(
                "info",
                format!("the last {name} failed"),
                "with stop-writes-on-bgsave-error, Redis refuses writes (MISCONF): check the disk and the Redis log",
            ));
        }
    }
    if i.role.as_deref() == Some("slave") {
        findings.push(Finding::new(
            "info",
            "a replica: reads work, writes fail with READONLY",
            "if the app writes here, use the primary's URL",
        ));
    }
    Judgement::new(None, findings)
}

/// What makes a Redis that answers unusable for its roles: loading its dataset, or a
/// read-only replica where Celery writes (the broker: LPUSH, BRPOP, ZADD; the result
/// backend: SETEX, PUBLISH).
fn unusable(i: &Info, roles: &[Role]) -> Option<Cause> {
    if i.loading == Some(true) {
        return Some(Cause::new(
            "info",
            Failure::new(Reason::Other, "LOADING: Redis is loading its dataset"),
            "wait: it answers when the dataset is loaded",
        ));
    }
    if i.role.as_deref() != Some("slave") {
        return None;
    }
    if roles.contains(&Role::Broker) {
        return Some(Cause::new(
            "info",
            Failure::new(
                Reason::Other,
                "a read-only replica is the Celery broker: workers and clients write (LPUSH, BRPOP, ZADD) and get READONLY errors",
            ),
            "point CELERY_BROKER_URL at the primary (on a managed Redis, its primary endpoint)",
        ));
    }
    if roles.contains(&Role::ResultBackend) {
        return Some(Cause::new(
            "info",
            Failure::new(
                Reason::Other,
                "a read-only replica is the Celery result backend: workers store results (SETEX, PUBLISH) and get READONLY errors",
            ),
            "point CELERY_RESULT_BACKEND at the primary (on a managed Redis, its primary endpoint)",
        ));
    }
    None
}

/// What the worker side looks like when the Celery check is judged.
pub struct Seen<'a> {
    pub subscribed: bool,
    /// Why the subscription is down.
    pub cause: Option<&'a Failure>,
    /// The subscription held at least once: worker data came in.
    pub held: bool,
    /// Within two heartbeat intervals of the subscription coming up.
    pub in_grace: bool,
    pub alive: usize,
    /// Some of the workers down, by hostname.
    pub down: &'a [&'a str],
    /// The event channels' pattern, as the sentences name it.
    pub channel: &'a str,
    /// The oldest running task of each name, oldest first (on workers alive).
    pub running: &'a [Long<'a>],
    /// Work seen done lately by workers that send no heartbeat, if any.
    pub consuming: Option<Consuming<'a>>,
}

/// Signs of workers at work that the worker events do not show.
#[derive(Clone, Copy)]
pub struct Consuming<'a> {
    /// How long since a queue's front was taken (or a queue got shorter).
    pub queue_taken: Option<Duration>,
    /// Workers heard through task events only, not alive by heartbeat.
    pub working: &'a [&'a str],
}

/// A task heard to start and not yet to end.
pub struct Long<'a> {
    pub name: &'a str,
    pub id: &'a str,
    pub worker: Option<&'a str>,
    pub running: Duration,
}

/// The Celery check, from the settings, the broker's own Redis judgement (its cause when
/// unhealthy), the last queue probe and the worker side.
pub fn celery(
    c: &CeleryConfig,
    endpoint: &str,
    slo: Duration,
    broker: Option<&Cause>,
    queues: &Result<QueueObservation, Failure>,
    seen: &Seen,
) -> Judgement {
    if let Some(b) = broker {
        let f = Failure::new(
            b.failure.reason,
            format!("the broker is not usable: {}", b.failure.message),
        );
        return Judgement::new(Some(Cause::new("celery broker", f, b.fix.clone())), vec![]);
    }
    let obs = match queues {
        Err(f) => {
            let f = Failure::new(
                f.reason,
                format!("the broker's queues cannot be read: {}", f.message),
            );
            let fix = if f.reason == Reason::Auth {
                "the sidecar's ACL user needs to read the broker's keys: +@read (LLEN, EXISTS, LINDEX, HLEN, ZRANGE, ZCOUNT, SCAN, SMEMBERS) on ~*"
            } else {
                "the broker did not answer the queue read: see the redis:broker check"
            };
            return Judgement::new(Some(Cause::new("celery queues", f, fix)), vec![]);
        }
        Ok(obs) => obs,
    };
    let alive = seen.alive;
    let mut error = None;
    let mut findings = Vec::new();
    // Refused by the ACL (NOPERM): a WRONGPASS is the broker's own check's to tell.
    let refused = seen
        .cause
        .filter(|f| f.reason == Reason::Auth && f.message.starts_with("NOPERM"));
    if !seen.subscribed {
        if let Some(f) = refused {
            // A refusal is a setting to change, not a passing loss: never "stale".
            let f = Failure::new(
                f.reason,
                format!(
                    "the Celery event channels cannot be subscribed: {}",
                    f.message
                ),
            );
            let fix = "grant the sidecar's ACL user the event channels and PSUBSCRIBE: &* (or a channel pattern covering /<db>.celeryev/*) and +psubscribe";
            if c.min_workers > 0 {
                error = Some(Cause::new("celery workers", f, fix));
            } else {
                findings.push(Finding::new("celery workers", f.message, fix));
            }
        } else if !seen.held {
            findings.push(Finding::new(
                "celery workers",
                format!(
                    "no worker data yet: the event subscription is not up ({})",
                    seen.cause.map_or("connecting", |f| f.message.as_str())
                ),
                "the sidecar retries by itself; if this stays, the broker refuses or drops its pub/sub connection",
            ));
        } else {
            findings.push(Finding::new(
                "celery workers",
                format!(
                    "worker data is stale: the event subscription is down ({}); workers are shown as they were when it was lost",
                    seen.cause.map_or("connecting", |f| f.message.as_str())
                ),
                "the sidecar resubscribes by itself; if it stays down, check the broker's network and its client-output-buffer-limit for pubsub",
            ));
        }
    } else if alive < c.min_workers as usize {
        let fix = "start the workers, with this broker URL and db (CELERY_BROKER_URL on the worker service) and the same key prefix; a worker started with --without-heartbeat is not heard (check --ping finds it)";
        if let Some(w) = &seen.consuming {
            // Work is done: the workers are there, only silent. Not a failure.
            let mut signs = Vec::new();
            if !w.working.is_empty() {
                signs.push(format!("task events come from {}", w.working.join(", ")));
            }
            if let Some(ago) = w.queue_taken {
                signs.push(format!("a queue's tasks were taken {} ago", human(ago)));
            }
            findings.push(Finding::new(
                "celery workers",
                format!(
                    "{alive} of the required {} workers heard by heartbeat, but workers are consuming: {}; they run with --without-heartbeat (or their worker events do not reach {}), so how many there are is unknown",
                    c.min_workers,
                    signs.join("; "),
                    seen.channel
                ),
                "start the workers without --without-heartbeat (a heartbeat is one PUBLISH every 2 s per worker), or set SIDECAR_CELERY_MIN_WORKERS=0 and watch the queues; check --ping asks them directly",
            ));
        } else if seen.in_grace {
            findings.push(Finding::new(
                "celery workers",
                format!(
                    "waiting for worker heartbeats: {alive} of the required {} heard so far",
                    c.min_workers
                ),
                "wait two heartbeat intervals",
            ));
        } else if seen.down.is_empty() {
            error = Some(Cause::new(
                "celery workers",
                Failure::new(
                    Reason::Other,
                    format!(
                        "no Celery worker is alive: none was heard recently on {} (are the workers running, and connected to {endpoint}?)",
                        seen.channel
                    ),
                ),
                fix,
            ));
        } else {
            error = Some(Cause::new(
                "celery workers",
                Failure::new(
                    Reason::Other,
                    format!(
                        "only {alive} of the required {} Celery workers are alive; down: {}",
                        c.min_workers,
                        seen.down.join(", ")
                    ),
                ),
                fix,
            ));
        }
    }
    if obs.round_trip > slo {
        findings.push(Finding::new(
            "celery queues",
            format!(
                "slow: the queue pipeline took {:.1}ms, over the {} latency SLO",
                obs.round_trip.as_secs_f64() * 1e3,
                show(slo)
            ),
            "Redis or the network is slow, or there are very many queues: check SLOWLOG and LATENCY DOCTOR",
        ));
    }
    for q in &obs.queues {
        // Stalled: nothing taken from it for a while, not merely an old message (a low
        // priority waits while higher ones drain).
        if let Some(idle) = q.idle.filter(|i| *i > c.stall_after) {
            let oldest = q
                .oldest_task
                .as_deref()
                .map(|t| format!(" (the oldest: {t})"))
                .unwrap_or_default();
            let who = if alive > 0 {
                format!(
                    "{alive} worker(s) are alive: none consumes this queue (check the workers' -Q), or they lost their broker connection"
                )
            } else {
                "no worker is alive".to_string()
            };
            findings.push(Finding::new(
                "celery queues",
                format!(
                    "queue {} is stalled: nothing has been taken from it for {} while {} task(s) wait{oldest}; {who}",
                    q.name,
                    human(idle),
                    q.length
                ),
                format!(
                    "start a worker for this queue (celery worker -Q {}), or restart the workers",
                    q.name
                ),
            ));
        }
        if q.unbound && q.length + q.stranded > 0 {
            findings.push(Finding::new(
                "celery queues",
                format!(
                    "queue {} holds {} task(s) but its binding set is gone (a FLUSHALL or FLUSHDB on the broker?): it is still watched, but tasks published to it through an exchange other than the default one are dropped until a worker or client declares it again",
                    q.name,
                    q.length + q.stranded
                ),
                "restart the workers (or a client that declares the queue) to bind it again",
            ));
        }
        if q.stranded > 0 {
            findings.push(Finding::new(
                "celery queues",
                format!(
                    "queue {} holds {} task(s) under priority steps that SIDECAR_CELERY_PRIORITY_STEPS does not list: workers with those steps never take them",
                    q.name, q.stranded
                ),
                "unset SIDECAR_CELERY_PRIORITY_STEPS (every step kombu writes is then counted), or make it and the app's priority_steps the same",
            ));
        }
    }
    let long: Vec<&Long> = seen
        .running
        .iter()
        .filter(|l| l.running > c.running_max)
        .collect();
    for l in long.iter().take(3) {
        findings.push(Finding::new(
            "celery tasks",
            format!(
                "task {} has been running for {} (id {}{}), over SIDECAR_CELERY_RUNNING_MAX ({})",
                l.name,
                human(l.running),
                l.id,
                l.worker.map(|w| format!(", on {w}")).unwrap_or_default(),
                show(c.running_max)
            ),
            "find what it waits on (py-spy dump on the worker, celery inspect active); give the task a time_limit / soft_time_limit so that Celery stops it",
        ));
    }
    if long.len() > 3 {
        findings.push(Finding::new(
            "celery tasks",
            format!(
                "{} more task names have a task running over SIDECAR_CELERY_RUNNING_MAX ({})",
                long.len() - 3,
                show(c.running_max)
            ),
            "see celery_task_running_oldest_seconds, or the running list in /healthz",
        ));
    }
    for (text, fix) in &obs.layout.contradictions {
        findings.push(Finding::new("celery keys", text.clone(), fix.clone()));
    }
    if obs.left_out > 0 {
        findings.push(Finding::new(
            "celery queues",
            format!(
                "{} queue(s) are not watched: more than the {} queues watched at most (the shortest are left out)",
                obs.left_out,
                crate::celery::queues::MAX_QUEUES
            ),
            "name the queues that matter in SIDECAR_CELERY_QUEUES: they are never left out",
        ));
    }
    for r in obs.at_risk.iter().take(3) {
        let when = crate::text::rfc3339(
            std::time::UNIX_EPOCH
                + Duration::try_from_secs_f64(r.redelivery_at.max(0.0)).unwrap_or_default(),
        );
        let what = format!(
            "task {} (id {}) in queue {}",
            r.task.as_deref().unwrap_or("?"),
            r.id.as_deref().unwrap_or("?"),
            r.queue
        );
        let text = match r.risk {
            Risk::EtaBeyond(d) => format!(
                "{what} has an ETA {} after a worker reserved it, past the visibility timeout ({}): kombu delivers it again at {when}, before it runs, and it will run twice",
                human(d),
                human(c.visibility_timeout)
            ),
            Risk::Old(d) => format!(
                "{what} has been reserved for {} without an acknowledgement, near the visibility timeout ({}): unless acknowledged by {when}, kombu delivers it again and it may run twice",
                human(d),
                human(c.visibility_timeout)
            ),
        };
        findings.push(Finding::new(
            "celery queues",
            text,
            "raise visibility_timeout in broker_transport_options (and SIDECAR_CELERY_VISIBILITY_TIMEOUT with it) above the longest ETA or countdown, or schedule far-off work with celery beat (celery/kombu#337)",
        ));
    }
    let risky: u64 = obs.redelivery_risk.iter().map(|(_, n)| n).sum();
    if risky as usize > obs.at_risk.len().min(3) {
        findings.push(Finding::new(
            "celery queues",
            format!("{risky} reservations in all will be delivered again before they run or are acknowledged (celery_reservations_redelivery_risk)"),
            "see the ones named above",
        ));
    }
    if obs.orphaned > 0 {
        findings.push(Finding::new(
            "celery queues",
            format!(
                "{} reservation(s) are older than the visibility timeout ({}): left by a worker killed while holding prefetched tasks (SIGKILL, OOM), or ETA/countdown tasks scheduled further out than the visibility timeout; kombu delivers such reservations again, so a task may run twice",
                obs.orphaned,
                human(c.visibility_timeout)
            ),
            "give workers time to stop (SIGTERM, not SIGKILL; enough memory), and keep ETA/countdown within the visibility timeout",
        ));
    }
    Judgement::new(error, findings)
}

/// Bytes in MiB, one decimal: `1.6 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests;
