//! The one judgement of a Redis target. From what a probe saw (PING's round trip, INFO's
//! fields or why INFO was refused), the roles the target plays and the latency SLO: its
//! status, the cause and its fix when unhealthy, the findings and their fixes when degraded.
//! A pure function: the server's runner and `check` both call it, so they cannot disagree
//! about the same Redis.

use std::time::Duration;

use serde::Serialize;

use crate::celery::queues::QueueObservation;
use crate::celery::runner::human;
use crate::config::CeleryConfig;
use crate::config::show;
use crate::failure::{Failure, Reason};
use crate::info::Info;
use crate::snapshot::Status;
use crate::target::Role;

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
        if seen.in_grace {
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
mod tests {
    use super::*;

    const SLO: Duration = Duration::from_millis(100);
    const FAST: Duration = Duration::from_millis(1);

    fn judge(info: Info, roles: &[Role]) -> Judgement {
        redis(FAST, Ok(&info), roles, SLO)
    }

    fn texts(j: &Judgement) -> Vec<&str> {
        j.findings.iter().map(|f| f.text.as_str()).collect()
    }

    #[test]
    fn healthy_slow_and_info_refused() {
        assert_eq!(
            judge(Info::default(), &[Role::Cache]).status,
            Status::Healthy
        );
        let at_slo = redis(SLO, Ok(&Info::default()), &[Role::Cache], SLO);
        assert_eq!(at_slo.status, Status::Healthy, "at the SLO is not over it");
        let slow = redis(
            Duration::from_millis(150),
            Ok(&Info::default()),
            &[Role::Cache],
            SLO,
        );
        assert_eq!(slow.status, Status::Degraded);
        assert_eq!(
            texts(&slow),
            ["slow: PING took 150.0ms, over the 100ms latency SLO"]
        );
        assert_eq!(slow.findings[0].step, "ping");
        let denied = Failure::new(Reason::Auth, "NOPERM: no info");
        let j = redis(FAST, Err(&denied), &[Role::Cache], SLO);
        assert_eq!(j.status, Status::Degraded);
        assert!(j.findings[0].text.starts_with("INFO failed"));
        assert_eq!(j.findings[0].fix, "grant the ACL user +info");
    }

    #[test]
    fn a_replica_is_unusable_where_celery_writes() {
        let replica = Info {
            role: Some("slave".into()),
            ..Info::default()
        };
        let j = judge(replica.clone(), &[Role::Cache]);
        assert_eq!(j.status, Status::Degraded);
        assert!(texts(&j)[0].starts_with("a replica: reads work"));
        for (roles, starts) in [
            (
                &[Role::Cache, Role::Broker][..],
                "a read-only replica is the Celery broker",
            ),
            (
                &[Role::ResultBackend][..],
                "a read-only replica is the Celery result backend",
            ),
        ] {
            let j = judge(replica.clone(), roles);
            assert_eq!(j.status, Status::Unhealthy);
            let cause = j.error.unwrap();
            assert_eq!(cause.failure.reason, Reason::Other);
            assert!(cause.failure.message.starts_with(starts), "{cause:?}");
            assert!(cause.fix.starts_with("point CELERY_"), "{cause:?}");
        }
        let loading = Info {
            loading: Some(true),
            ..Info::default()
        };
        let j = judge(loading, &[Role::Cache]);
        assert_eq!(j.status, Status::Unhealthy);
        assert!(j.error.unwrap().failure.message.starts_with("LOADING"));
    }

    #[test]
    fn limits_eviction_and_persistence() {
        let info = Info {
            connected_clients: Some(95),
            maxclients: Some(100),
            used_memory_bytes: Some(95 << 20),
            maxmemory_bytes: Some(100 << 20),
            maxmemory_policy: Some("allkeys-lru".into()),
            rdb_last_bgsave_status: Some("err".into()),
            ..Info::default()
        };
        let j = judge(info.clone(), &[Role::Broker]);
        assert_eq!(j.status, Status::Degraded);
        assert_eq!(
            texts(&j),
            [
                "95 of 100 clients: near maxclients",
                "memory 95.0 MiB of 100.0 MiB: near maxmemory, keys are evicted (allkeys-lru)",
                "a Celery broker with maxmemory-policy allkeys-lru",
                "the last RDB save failed",
            ]
        );
        // The eviction policy matters only for a broker.
        let j = judge(info, &[Role::Cache]);
        assert!(!texts(&j).iter().any(|t| t.contains("Celery broker")));
        // Without a memory limit, no policy evicts anything.
        let unlimited = Info {
            used_memory_bytes: Some(1 << 20),
            maxmemory_bytes: Some(0),
            maxmemory_policy: Some("allkeys-lru".into()),
            ..Info::default()
        };
        assert_eq!(judge(unlimited, &[Role::Broker]).status, Status::Healthy);
    }

    mod celery {
        use super::super::*;
        use crate::celery::queues::QueueState;

        fn config() -> CeleryConfig {
            crate::config::Config::from_settings(&crate::cli::Settings::default())
                .unwrap()
                .celery
        }

        fn obs() -> QueueObservation {
            QueueObservation {
                queues: vec![QueueState {
                    name: "celery".into(),
                    length: 1,
                    oldest_age: Some(Duration::from_secs(1)),
                    oldest_task: Some("tasks.add".into()),
                    idle: Some(Duration::from_secs(1)),
                    error: None,
                    unbound: false,
                    stranded: 0,
                }],
                unacked: 0,
                oldest_reservation: None,
                orphaned: 0,
                round_trip: Duration::from_millis(1),
                bad_messages: vec![],
                left_out: 0,
                discovered: true,
                layout: Default::default(),
            }
        }

        fn seen<'a>(alive: usize, down: &'a [&'a str]) -> Seen<'a> {
            Seen {
                subscribed: true,
                cause: None,
                held: true,
                in_grace: false,
                alive,
                down,
                channel: "/0.celeryev/*",
            }
        }

        fn run(s: &Seen, o: Result<QueueObservation, Failure>) -> Judgement {
            celery(
                &config(),
                "redis://h:6379/0",
                Duration::from_millis(100),
                None,
                &o,
                s,
            )
        }

        fn error(j: &Judgement) -> &str {
            j.error.as_ref().map_or("", |c| c.failure.message.as_str())
        }

        #[test]
        fn healthy_with_enough_workers_and_moving_queues() {
            let j = run(&seen(1, &[]), Ok(obs()));
            assert_eq!((j.status, j.findings.len()), (Status::Healthy, 0));
        }

        #[test]
        fn an_unusable_or_unreadable_broker_is_unhealthy_with_its_cause() {
            let f = Failure::new(Reason::Connect, "connection refused by h:6379");
            let j = run(&seen(1, &[]), Err(f.clone()));
            assert_eq!(j.status, Status::Unhealthy);
            assert_eq!(j.error.as_ref().unwrap().failure.reason, Reason::Connect);
            assert_eq!(
                error(&j),
                "the broker's queues cannot be read: connection refused by h:6379"
            );
            // The broker's own Redis check failed: that cause, as `check` gives it.
            let broker = Cause::new("info", f, "start Redis");
            let j = celery(
                &config(),
                "redis://h:6379/0",
                Duration::from_millis(100),
                Some(&broker),
                &Ok(obs()),
                &seen(1, &[]),
            );
            assert_eq!(
                error(&j),
                "the broker is not usable: connection refused by h:6379"
            );
            assert_eq!(j.error.unwrap().fix, "start Redis");
        }

        #[test]
        fn too_few_workers() {
            let j = run(&seen(0, &[]), Ok(obs()));
            assert_eq!(j.status, Status::Unhealthy);
            assert!(error(&j).starts_with("no Celery worker is alive"));
            let j = run(&seen(0, &["w1@a", "w2@b"]), Ok(obs()));
            assert_eq!(
                error(&j),
                "only 0 of the required 1 Celery workers are alive; down: w1@a, w2@b"
            );
            let mut s = seen(0, &[]);
            s.in_grace = true;
            let j = run(&s, Ok(obs()));
            assert_eq!(j.status, Status::Degraded);
            assert!(
                j.findings[0]
                    .text
                    .starts_with("waiting for worker heartbeats")
            );
        }

        #[test]
        fn a_lost_subscription_is_stale_not_zero_and_a_refused_one_is_unhealthy() {
            let lost = Failure::new(Reason::Connect, "connection reset");
            let s = Seen {
                subscribed: false,
                cause: Some(&lost),
                held: true,
                in_grace: false,
                alive: 0,
                down: &[],
                channel: "/0.celeryev/*",
            };
            let j = run(&s, Ok(obs()));
            assert_eq!(j.status, Status::Degraded);
            assert!(j.findings[0].text.starts_with(
                "worker data is stale: the event subscription is down (connection reset)"
            ));
            // Never up: not stale (there never was data), and not yet a failure.
            let j = run(&Seen { held: false, ..s }, Ok(obs()));
            assert_eq!(j.status, Status::Degraded);
            assert!(j.findings[0].text.starts_with("no worker data yet"));
            // Refused by the ACL: a setting to change, unhealthy while workers are required.
            let refused = Failure::new(Reason::Auth, "NOPERM: no channels");
            let s = Seen {
                cause: Some(&refused),
                held: false,
                ..s
            };
            let j = run(&s, Ok(obs()));
            assert_eq!(j.status, Status::Unhealthy);
            let cause = j.error.unwrap();
            assert_eq!(cause.failure.reason, Reason::Auth);
            assert_eq!(
                cause.failure.message,
                "the Celery event channels cannot be subscribed: NOPERM: no channels"
            );
            assert!(cause.fix.contains("+psubscribe"));
            let mut c = config();
            c.min_workers = 0;
            let j = celery(&c, "", Duration::from_millis(100), None, &Ok(obs()), &s);
            assert_eq!(j.status, Status::Degraded, "no worker required");
        }

        #[test]
        fn stalls_orphans_and_slowness_degrade() {
            // An old front alone (a low priority waiting while higher ones drain) is no stall.
            let mut o = obs();
            o.queues[0].oldest_age = Some(Duration::from_secs(3000));
            assert_eq!(run(&seen(2, &[]), Ok(o.clone())).status, Status::Healthy);
            // Nothing taken for longer than the stall window is, workers or not.
            o.queues[0].idle = Some(Duration::from_secs(301));
            let j = run(&seen(2, &[]), Ok(o.clone()));
            assert_eq!(j.status, Status::Degraded);
            assert_eq!(
                j.findings[0].text,
                "queue celery is stalled: nothing has been taken from it for 5m01s while 1 task(s) wait (the oldest: tasks.add); 2 worker(s) are alive: none consumes this queue (check the workers' -Q), or they lost their broker connection"
            );
            assert_eq!(
                j.findings[0].fix,
                "start a worker for this queue (celery worker -Q celery), or restart the workers"
            );
            let mut c = config();
            c.min_workers = 0;
            let j = celery(
                &c,
                "",
                Duration::from_millis(100),
                None,
                &Ok(o),
                &seen(0, &[]),
            );
            assert!(
                j.findings[0].text.ends_with("; no worker is alive"),
                "{j:?}"
            );
            let mut o = obs();
            o.orphaned = 3;
            let j = run(&seen(1, &[]), Ok(o));
            assert_eq!(j.status, Status::Degraded);
            assert!(
                j.findings[0]
                    .text
                    .starts_with("3 reservation(s) are older than the visibility timeout (1h00m)"),
                "{j:?}"
            );
            let mut o = obs();
            o.round_trip = Duration::from_millis(250);
            let j = run(&seen(1, &[]), Ok(o));
            assert_eq!(j.status, Status::Degraded);
            assert!(
                j.findings[0]
                    .text
                    .starts_with("slow: the queue pipeline took 250.0ms")
            );
        }

        #[test]
        fn lost_bindings_stranded_tasks_contradictions_and_the_cap_are_said() {
            let mut o = obs();
            o.queues[0].unbound = true;
            o.queues[0].stranded = 4;
            o.layout
                .contradictions
                .push(("SIDECAR_CELERY_SEP is".into(), "unset it".into()));
            o.left_out = 1002;
            let j = run(&seen(1, &[]), Ok(o));
            assert_eq!(j.status, Status::Degraded);
            let texts: Vec<&str> = j.findings.iter().map(|f| f.text.as_str()).collect();
            assert!(
                texts[0].starts_with("queue celery holds 5 task(s) but its binding set is gone")
            );
            assert!(texts[1].starts_with("queue celery holds 4 task(s) under priority steps"));
            assert_eq!(texts[2], "SIDECAR_CELERY_SEP is");
            assert!(texts[3].starts_with("1002 queue(s) are not watched"));
        }
    }
}
