//! Least privilege on a real Redis 7: users made with exactly the ACL lines of
//! docs/least-privilege.md serve (a cache on database 1, a broker with a real Celery worker
//! and a countdown task reserved) and `check` with the server's `ACL LOG` left empty; a
//! user without INFO is asked for it once, not every probe, and told about it once; a
//! managed-service user without CONFIG or CLIENT breaks nothing.

mod support;

use std::time::Duration;

use support::{FAST, Redis, Sidecar, Worker, run, sample, send, wait_celery, wait_for};

const PASSWORD: &str = "Acl-pw-0ddba11";

/// The ACL lines of docs/least-privilege.md's code blocks, in order (cache, broker).
fn documented() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/least-privilege.md"
    ))
    .unwrap();
    let lines: Vec<String> = doc
        .lines()
        .filter(|l| l.starts_with("ACL SETUSER sidecar "))
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 2, "the cache's and the broker's lines");
    lines
}

/// Creates the user of an ACL line, renamed and with the test's password.
fn create(redis: &Redis, line: &str, name: &str) -> String {
    let line = line
        .replace("ACL SETUSER sidecar ", &format!("ACL SETUSER {name} "))
        .replace(">CHANGE-ME", &format!(">{PASSWORD}"));
    let args: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(redis.cli(None, &args).trim(), "OK", "{line}");
    format!("redis://{name}:{PASSWORD}@127.0.0.1:{}", redis.port)
}

/// `ACL LOG`'s entries: (count, object, username) each.
fn acl_log(redis: &Redis) -> Vec<(u64, String, String)> {
    let out = redis.cli(None, &["ACL", "LOG"]);
    let lines: Vec<&str> = out.lines().collect();
    let mut entries = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if *l == "count" {
            let field = |name: &str| {
                lines[i..]
                    .iter()
                    .position(|x| *x == name)
                    .map(|p| lines[i + p + 1].to_string())
                    .unwrap_or_default()
            };
            entries.push((
                field("count").parse().unwrap(),
                field("object"),
                field("username"),
            ));
        }
    }
    entries
}

fn collector(sidecar: &Sidecar, name: &str) -> Option<f64> {
    let m = sidecar.get("/metrics").body;
    sample(
        &m,
        &format!("sidecar_collector_enabled{{collector=\"{name}\"}}"),
    )
}

#[test]
fn the_documented_acls_leave_acl_log_empty() {
    let redis = Redis::start(&[]);
    let lines = documented();
    let cache = format!("{}/1", create(&redis, &lines[0], "side-cache"));
    let broker = format!("{}/0", create(&redis, &lines[1], "side-broker"));
    assert_eq!(redis.cli(None, &["ACL", "LOG", "RESET"]).trim(), "OK");
    // The app and its worker, as the app's default user.
    let app_url = redis.url();
    let app = [("BROKER_URL", app_url.as_str())];
    let w = Worker::start(&app, "w1@acl", &["-P", "solo", "-E"]);
    w.wait_ready();
    let mut env = FAST.to_vec();
    env.extend_from_slice(&[
        ("REDIS_URL", cache.as_str()),
        ("CELERY_BROKER_URL", broker.as_str()),
        ("SIDECAR_CELERY_MIN_WORKERS", "1"),
        // Fresh connections, each logging in and naming itself, every second.
        ("SIDECAR_AUTH_RECHECK", "1s"),
    ]);
    let sidecar = Sidecar::start(&env);
    // A reservation (a countdown task) and a task run: every read of the probe has work.
    send(
        &app,
        r#"[{"task": "add", "args": [1, 2], "countdown": 30}, {"task": "add", "args": [2, 2]}]"#,
    );
    wait_celery(&sidecar, "the worker alive and a reservation seen", |c| {
        c["status"] == "healthy"
            && c["workers_alive"] == 1
            && c["details"]["reservations"]["unacked"].as_u64() >= Some(1)
    });
    let h = sidecar.wait_status("/healthz", 200).json();
    for check in ["redis:cache", "redis:broker"] {
        assert_eq!(h["checks"][check]["status"], "healthy", "{check}: {h:#}");
    }
    let out = run(&["check"], &env);
    assert!(
        out.status.success(),
        "check with the documented ACL: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A few more probes and rechecks.
    std::thread::sleep(Duration::from_secs(3));
    for c in ["info", "client_name", "results_sample", "beat"] {
        assert_eq!(collector(&sidecar, c), Some(1.0), "{c}");
    }
    // Nothing at all, read raw (so that a reader of entries that missed one cannot pass).
    let log = redis.cli(None, &["ACL", "LOG"]);
    assert_eq!(log.trim(), "", "no NOPERM anywhere: {:?}", acl_log(&redis));
    let logs = sidecar.logs();
    assert!(!logs.contains("NOPERM"), "{logs}");
}

#[test]
fn info_refused_is_asked_once_and_said_once() {
    let redis = Redis::start(&[]);
    let line = documented()[0].replace(" +info", "");
    let url = format!("{}/0", create(&redis, &line, "side-noinfo"));
    let mut env = FAST.to_vec();
    env.extend_from_slice(&[
        ("REDIS_URL", url.as_str()),
        ("SIDECAR_CELERY_MIN_WORKERS", "0"),
    ]);
    let sidecar = Sidecar::start(&env);
    let stamp = |m: &str| {
        sample(
            m,
            "sidecar_last_probe_timestamp_seconds{check=\"redis:cache\"}",
        )
        .unwrap_or(0.0)
    };
    let first = wait_for("a probe", Duration::from_secs(10), || {
        let m = sidecar.get("/metrics").body;
        (stamp(&m) > 0.0).then(|| stamp(&m))
    });
    let info_refusals = || {
        acl_log(&redis)
            .into_iter()
            .filter(|(_, object, _)| object == "info")
            .map(|(count, _, _)| count)
            .sum::<u64>()
    };
    // The first probe's pipeline: one INFO per section, all refused.
    let asked = info_refusals();
    assert!((1..=7).contains(&asked), "{:?}", acl_log(&redis));
    wait_for("five probes", Duration::from_secs(20), || {
        (stamp(&sidecar.get("/metrics").body) >= first + 5.0).then_some(())
    });
    // Up, with its latency; degraded, saying what it cannot see.
    let h = sidecar.get("/healthz").json();
    let c = &h["checks"]["redis:cache"];
    assert_eq!(c["status"], "degraded", "{c:#}");
    assert!(c["latency_ms"].as_f64().unwrap() > 0.0);
    let warning = c["warnings"][0].as_str().unwrap();
    assert!(warning.starts_with("INFO failed"), "{warning}");
    let m = sidecar.get("/metrics").body;
    assert_eq!(sample(&m, "redis_up{role=\"cache\"}"), Some(1.0));
    assert_eq!(collector(&sidecar, "info"), Some(0.0));
    assert_eq!(collector(&sidecar, "client_name"), Some(1.0));
    // Asked at the first probe only, in six or more; logged once.
    assert_eq!(
        info_refusals(),
        asked,
        "INFO asked again: {:?}",
        acl_log(&redis)
    );
    let logs = sidecar.logs();
    assert_eq!(
        logs.matches("the ACL refuses what the info collector needs")
            .count(),
        1,
        "{logs}"
    );
}

#[test]
fn config_and_client_refused_break_nothing() {
    let redis = Redis::start(&[]);
    // As managed services give it: everything but the administrative commands.
    let rules = ["~*", "&*", "+@all", "-config", "-client", "-acl", "-debug"];
    let mut args = vec!["ACL", "SETUSER", "managed", "on", ">Acl-pw-0ddba11"];
    args.extend_from_slice(&rules);
    assert_eq!(redis.cli(None, &args).trim(), "OK");
    let url = format!("redis://managed:{PASSWORD}@127.0.0.1:{}/0", redis.port);
    let app_url = redis.url();
    let app = [("BROKER_URL", app_url.as_str())];
    let w = Worker::start(&app, "w2@acl", &["-P", "solo"]);
    w.wait_ready();
    let mut env = FAST.to_vec();
    env.extend_from_slice(&[
        ("REDIS_URL", url.as_str()),
        ("SIDECAR_CELERY_MIN_WORKERS", "1"),
        ("SIDECAR_AUTH_RECHECK", "1s"),
    ]);
    let sidecar = Sidecar::start(&env);
    wait_celery(&sidecar, "healthy with the worker", |c| {
        c["status"] == "healthy" && c["workers_alive"] == 1
    });
    assert_eq!(
        sidecar.get("/healthz").json()["checks"]["redis:cache"]["status"],
        "healthy"
    );
    assert_eq!(collector(&sidecar, "client_name"), Some(0.0));
    let setname = |log: Vec<(u64, String, String)>| {
        log.into_iter()
            .filter(|(_, object, user)| object == "client|setname" && user == "managed")
            .map(|(count, _, _)| count)
            .sum::<u64>()
    };
    let before = setname(acl_log(&redis));
    assert!(before >= 1, "the refusal was met: {:?}", acl_log(&redis));
    // Fresh connections every second (the recheck): none asks again.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(setname(acl_log(&redis)), before, "{:?}", acl_log(&redis));
    let out = run(&["check"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
