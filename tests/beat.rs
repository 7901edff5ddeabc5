//! Celery beat, against a real `celery beat` of the pinned venv (Celery 5.7, celery-redbeat
//! 2.4.2), a real worker and a real redis-server: with the default scheduler, the periodic
//! tasks declared by SIDECAR_CELERY_BEAT_EXPECT are heard as task events; with RedBeat,
//! its schedule and lock are read from the broker. Beat stopped: the task is overdue, said
//! in /healthz, /metrics and `check`; started again: the finding goes.

mod support;

use serde_json::Value;
use support::{Redis, Sidecar, TempDir, Worker, env, sample, wait_celery, warning};

/// The check's beat finding, if any.
fn overdue(c: &Value) -> Option<String> {
    warning(c, "periodic task ")
}

#[test]
fn a_stopped_default_beat_is_noticed_from_the_tasks_expected() {
    let redis = Redis::start(&[]);
    let broker = format!("redis://127.0.0.1:{}/3", redis.port);
    let schedule = TempDir::new("beat");
    let file = schedule.path().join("schedule");
    let app = [("BROKER_URL", broker.as_str()), ("BEAT_EVERY", "2")];
    let w = Worker::start(&app, "beat-worker@test", &["-P", "solo", "-E"]);
    w.wait_ready();
    let beat_args = ["-s", file.to_str().unwrap()];
    let mut beat = Worker::beat(&app, &beat_args);
    let sidecar = Sidecar::start(&env(
        &broker,
        &[("SIDECAR_CELERY_BEAT_EXPECT", "tasks.tick:2s,tasks.never:1h")],
    ));
    let c = wait_celery(&sidecar, "tasks.tick heard", |c| {
        c["details"]["beat"]["tasks"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["name"] == "tasks.tick"))
            .is_some_and(|t| t["last_run_age_seconds"].as_f64().is_some_and(|a| a < 5.0))
    });
    assert_eq!(c["details"]["beat"]["source"], "expected", "{c:#}");
    assert_eq!(overdue(&c), None, "{c:#}");
    assert!(c["details"]["beat"].get("lock_held").is_none(), "{c:#}");
    let m = sidecar.get("/metrics").body;
    assert_eq!(
        sample(&m, "celery_beat_overdue_seconds{name=\"tasks.tick\"}"),
        Some(0.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "celery_beat_last_run_timestamp_seconds{name=\"tasks.tick\"}"
        )
        .is_some_and(|t| t > 1.7e9),
        "{m}"
    );
    // Never heard: no time of a last run, and within its first hour, not overdue.
    assert_eq!(
        sample(
            &m,
            "celery_beat_last_run_timestamp_seconds{name=\"tasks.never\"}"
        ),
        None
    );
    assert_eq!(
        sample(&m, "celery_beat_overdue_seconds{name=\"tasks.never\"}"),
        Some(0.0)
    );

    beat.terminate();
    let c = wait_celery(&sidecar, "tasks.tick overdue", |c| overdue(c).is_some());
    let text = overdue(&c).unwrap();
    assert!(
        text.starts_with("periodic task tasks.tick is overdue by ")
            && text.contains("last heard ")
            && text.contains(
                "expected every 2.0s by SIDECAR_CELERY_BEAT_EXPECT): celery beat is not running"
            ),
        "{text}"
    );
    assert_eq!(c["status"], "degraded", "{c:#}");
    let m = sidecar.get("/metrics").body;
    assert!(
        sample(&m, "celery_beat_overdue_seconds{name=\"tasks.tick\"}").is_some_and(|s| s > 0.0),
        "{m}"
    );

    let beat = Worker::beat(&app, &beat_args);
    let c = wait_celery(&sidecar, "the finding to go", |c| overdue(c).is_none());
    assert_eq!(c["status"], "healthy", "{c:#}");
    assert!(!beat.logs().contains("ERROR"), "{}", beat.logs());
    assert!(!w.logs().contains("ERROR"), "{}", w.logs());
}

#[test]
fn redbeat_is_read_from_the_broker_with_its_lock() {
    let redis = Redis::start(&[]);
    let broker = redis.url();
    // RedBeat as its documentation shows it configured: its own key prefix, and a short
    // loop so that its lock (five loops) expires soon after a SIGKILL.
    let app = [
        ("BROKER_URL", broker.as_str()),
        ("BEAT_EVERY", "2"),
        ("BEAT_MAX_LOOP", "1"),
        ("REDBEAT_PREFIX", "myapp:"),
    ];
    let args = ["-S", "redbeat.RedBeatScheduler"];
    let mut beat = Worker::beat(&app, &args);
    let e = env(
        &broker,
        &[
            ("SIDECAR_CELERY_MIN_WORKERS", "0"),
            ("SIDECAR_CELERY_REDBEAT_KEY_PREFIX", "myapp:"),
        ],
    );
    let sidecar = Sidecar::start(&e);
    let c = wait_celery(&sidecar, "RedBeat's schedule", |c| {
        c["details"]["beat"]["lock_held"] == true
            && c["details"]["beat"]["tasks"].as_array().is_some_and(|t| {
                t.iter()
                    .any(|t| t["name"] == "tick-every" && t["last_run_age_seconds"].is_number())
            })
    });
    let b = &c["details"]["beat"];
    assert_eq!(b["source"], "redbeat", "{c:#}");
    assert_eq!(overdue(&c), None, "{c:#}");
    let tick = b["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "tick-every")
        .unwrap();
    assert_eq!(tick["every_seconds"], 2.0, "{c:#}");
    // Celery's own daily entry is there too, a crontab.
    assert!(
        b["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "celery.backend_cleanup"),
        "{c:#}"
    );
    let printed = |e: &[(&str, &str)]| {
        let out = support::run(&["check"], e);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = printed(&e);
    assert!(
        out.contains("RedBeat: 2 periodic task(s), myapp::lock held ("),
        "{out}"
    );

    // SIGKILL: the lock stays until it expires; the schedule stops moving.
    beat.kill();
    let c = wait_celery(&sidecar, "tick-every overdue", |c| overdue(c).is_some());
    let text = overdue(&c).unwrap();
    assert!(
        text.starts_with("periodic task tick-every is overdue by "),
        "{text}"
    );
    let c = wait_celery(&sidecar, "the lock to expire", |c| {
        overdue(c).is_some_and(|t| {
            t.contains("no process holds RedBeat's lock (myapp::lock): celery beat is not running")
        })
    });
    assert_eq!(c["details"]["beat"]["lock_held"], false, "{c:#}");
    assert_eq!(c["status"], "degraded", "{c:#}");
    let m = sidecar.get("/metrics").body;
    assert!(
        sample(&m, "celery_beat_overdue_seconds{name=\"tick-every\"}").is_some_and(|s| s > 0.0),
        "{m}"
    );
    let out = printed(&e);
    assert!(
        out.contains("periodic task tick-every is overdue by ")
            && out.contains("myapp::lock not held"),
        "{out}"
    );

    let beat = Worker::beat(&app, &args);
    let c = wait_celery(&sidecar, "beat back", |c| {
        overdue(c).is_none() && c["details"]["beat"]["lock_held"] == true
    });
    assert_eq!(c["status"], "healthy", "{c:#}");
    assert!(!beat.logs().contains("ERROR"), "{}", beat.logs());
    // The sidecar only reads: RedBeat's keys and Celery's are all there is.
    let keys = redis.cli(None, &["KEYS", "*"]);
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort();
    assert!(
        keys.iter()
            .all(|k| k.starts_with("myapp:") || k.starts_with("_kombu.") || *k == "celery"),
        "{keys:?}"
    );
}
