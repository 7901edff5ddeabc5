use super::*;
use crate::redis::probe::ResultSample;

const SLO: Duration = Duration::from_millis(100);
const FAST: Duration = Duration::from_millis(1);

fn judge(info: Info, roles: &[Role]) -> Judgement {
    redis(FAST, Ok(&info), roles, SLO)
}

fn texts(j: &Judgement) -> Vec<&str> {
    j.findings.iter().map(|f| f.text.as_str()).collect()
}

#[tokio::test(start_paused = true)]
async fn evictions_are_watched_probe_after_probe() {
    use tokio::time::{Instant, advance};
    let mut e = Evictions::default();
    assert_eq!(
        e.observe(Some(500), Instant::now()),
        0,
        "the first probe sets the base"
    );
    assert_eq!(e.observe(Some(500), Instant::now()), 0);
    assert_eq!(e.observe(Some(530), Instant::now()), 30);
    advance(Duration::from_secs(60)).await;
    assert_eq!(
        e.observe(Some(540), Instant::now()),
        40,
        "added within the window"
    );
    assert_eq!(
        e.observe(None, Instant::now()),
        40,
        "INFO without the field: as before"
    );
    advance(EVICTION_WINDOW).await;
    assert_eq!(
        e.observe(Some(540), Instant::now()),
        40,
        "the window is from the last eviction"
    );
    advance(Duration::from_secs(1)).await;
    assert_eq!(e.observe(Some(540), Instant::now()), 0);
    // Restarted: its count starts over, and counts.
    assert_eq!(e.observe(Some(7), Instant::now()), 7);
}

#[test]
fn evictions_matter_on_a_broker_or_result_backend() {
    let info = Info {
        maxmemory_policy: Some("allkeys-lru".into()),
        ..Info::default()
    };
    assert!(evictions(0, &info, &[Role::Broker]).is_none());
    assert!(
        evictions(5, &info, &[Role::Cache]).is_none(),
        "a cache evicts by design"
    );
    let broker = evictions(5, &info, &[Role::Cache, Role::Broker]).unwrap();
    assert_eq!(
        broker.text,
        "5 key(s) evicted from the Celery broker in the last 10m00s (maxmemory-policy allkeys-lru): queued tasks, reservations and queue bindings can be lost without an error"
    );
    assert!(broker.fix.contains("noeviction"));
    let results = evictions(2, &info, &[Role::ResultBackend]).unwrap();
    assert!(
        results
            .text
            .starts_with("2 key(s) evicted from the Celery result backend")
    );
}

#[test]
fn results_kept_forever_need_a_result_in_the_sample() {
    let info =
        crate::redis::info::parse("# Keyspace\ndb1:keys=4082,expires=2082,avg_ttl=86000000\n");
    let sample = |results| {
        Some(ResultSample {
            sampled: 10,
            results_without_ttl: results,
        })
    };
    let f = results_kept(&info, 1, sample(6)).unwrap();
    assert_eq!(
        f.text,
        "Celery results never expire: 2000 of the 4082 keys in db 1 have no TTL, and 6 of 10 keys sampled are results (celery-task-meta-*) without one; they pile up until memory runs out"
    );
    assert!(f.fix.contains("result_expires"));
    assert!(
        results_kept(&info, 1, sample(0)).is_none(),
        "keys without a TTL, no result"
    );
    assert!(results_kept(&info, 1, None).is_none(), "nothing sampled");
    assert!(
        results_kept(&Info::default(), 1, sample(3)).is_none(),
        "no keyspace"
    );
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
        crate::config::Config::from_settings(&crate::config::cli::Settings::default())
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
            consumed: false,
            redelivery_risk: vec![],
            at_risk: vec![],
            reserved: vec![],
            redelivered: vec![],
            beat: None,
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
            running: &[],
            consuming: None,
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

    #[test]
    fn workers_at_work_without_heartbeats_are_not_a_failure() {
        let working = ["w9@h"];
        let s = Seen {
            consuming: Some(Consuming {
                queue_taken: Some(Duration::from_secs(3)),
                working: &working,
            }),
            ..seen(0, &[])
        };
        let j = run(&s, Ok(obs()));
        assert_eq!(j.status, Status::Degraded, "not unhealthy: work is done");
        assert_eq!(
            j.findings[0].text,
            "0 of the required 1 workers heard by heartbeat, but workers are consuming: task events come from w9@h; a queue's tasks were taken 3.0s ago; they run with --without-heartbeat (or their worker events do not reach /0.celeryev/*), so how many there are is unknown"
        );
        assert!(j.findings[0].fix.contains("--without-heartbeat"));
        // No sign of work: a failure, as before.
        assert_eq!(run(&seen(0, &[]), Ok(obs())).status, Status::Unhealthy);
    }

    #[test]
    fn a_task_running_past_the_bound_is_a_finding() {
        let long = [
            Long {
                name: "tasks.report",
                id: "a1",
                worker: Some("w1@h"),
                running: Duration::from_secs(3700),
            },
            Long {
                name: "tasks.add",
                id: "b2",
                worker: None,
                running: Duration::from_secs(3599),
            },
        ];
        let s = Seen {
            running: &long,
            ..seen(1, &[])
        };
        let j = run(&s, Ok(obs()));
        assert_eq!(j.status, Status::Degraded);
        assert_eq!(j.findings.len(), 1, "only the one past 1h");
        assert_eq!(
            j.findings[0].text,
            "task tasks.report has been running for 1h01m (id a1, on w1@h), over SIDECAR_CELERY_RUNNING_MAX (3600s)"
        );
        assert!(j.findings[0].fix.contains("time_limit"));
        let s = Seen {
            running: &long[1..],
            ..seen(1, &[])
        };
        assert_eq!(run(&s, Ok(obs())).status, Status::Healthy);
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
            running: &[],
            consuming: None,
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
        assert!(texts[0].starts_with("queue celery holds 5 task(s) but its binding set is gone"));
        assert!(texts[1].starts_with("queue celery holds 4 task(s) under priority steps"));
        assert_eq!(texts[2], "SIDECAR_CELERY_SEP is");
        assert!(texts[3].starts_with("1002 queue(s) are not watched"));
    }
}

#[test]
fn an_overdue_periodic_task_names_beat_s_state() {
    use crate::celery::beat::{Beat, Periodic, Source};
    let now = 10_000.0;
    let task = |name: &str, last: Option<f64>, every: u64| Periodic {
        name: name.into(),
        last_run: last,
        due: Some(last.unwrap_or(9_000.0) + every as f64),
        every: Some(Duration::from_secs(every)),
    };
    let mut b = Beat {
        source: Source::Redbeat,
        lock: None,
        entries: vec![
            task("on-time", Some(9_990.0), 60),
            task("tick", Some(9_900.0), 30),
            task("report", Some(9_000.0), 300),
        ],
        left_out: 0,
    };
    let f = beat(&b, now, "redbeat::lock").unwrap();
    assert_eq!(f.step, "celery beat");
    // The most overdue first: report by 400 s, tick by 40 s.
    assert_eq!(
        f.text,
        "periodic task report is overdue by 6m40s (it last ran 16m40s ago, every 5m00s) and no process holds RedBeat's lock (redbeat::lock): celery beat is not running (1 more overdue: tick)"
    );
    b.lock = Some(Duration::from_secs(1200));
    let f = beat(&b, now, "redbeat::lock").unwrap();
    assert!(
        f.text.contains(
            "while RedBeat's lock (redbeat::lock) is held, for 20m00s more: beat is stuck"
        ),
        "{}",
        f.text
    );
    b.source = Source::Expected;
    b.lock = None;
    b.entries = vec![task("tasks.report", None, 300)];
    let f = beat(&b, now, "redbeat::lock").unwrap();
    assert_eq!(
        f.text,
        "periodic task tasks.report is overdue by 6m40s (not heard since the sidecar started, expected every 5m00s by SIDECAR_CELERY_BEAT_EXPECT): celery beat is not running, or the workers send no task events"
    );
    b.entries = vec![task("fine", Some(9_990.0), 60)];
    assert_eq!(beat(&b, now, "redbeat::lock"), None);
}

#[test]
fn a_failed_master_is_the_cause_of_a_failed_cluster() {
    use crate::redis::cluster::{
        parse,
        tests::{INFO, NODES},
    };
    let v = parse(INFO, NODES, "127.0.0.1:30001");
    let (error, findings) = crate::verdict::cluster(&v, Duration::from_secs(1));
    let error = error.expect("cluster_state:fail is unhealthy");
    assert!(
        error
            .failure
            .message
            .contains("5461 of 16384 slots not served")
            && error
                .failure
                .message
                .contains("127.0.0.1:30003 (master 292f8b36, slots 10923-16383)"),
        "{}",
        error.failure.message
    );
    // The failed master is the cause, not also a finding; the replica with no PING yet
    // (latency unknown, no error) is nothing.
    assert!(findings.is_empty(), "{findings:?}");
}
