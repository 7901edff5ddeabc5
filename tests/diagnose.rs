//! `check` against a zoo of real faults: each exits 1, stops at the step that failed and
//! names the cause with a fix. And `check --ping` against two real Celery workers.
//! (Wrong and missing passwords are also in auth.rs, LOADING and a unix socket in
//! faults.rs, TLS against plain and plain against TLS, and certificates, in tls.rs.)

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use support::{ONE_SHOT, Redis, Worker, run};

/// `check --json` with `env` on top of the one-shot settings: exit code and document.
fn check(args: &[&str], env: &[(&str, &str)]) -> (i32, Value) {
    let mut all = ONE_SHOT.to_vec();
    all.extend_from_slice(env);
    let mut argv = vec!["check", "--json"];
    argv.extend_from_slice(args);
    let out = run(&argv, &all);
    let doc = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json is not JSON ({e}): {out:?}"));
    (out.status.code().unwrap_or(-1), doc)
}

/// The step named `name` of check `check`.
fn step<'a>(doc: &'a Value, check: &str, name: &str) -> &'a Value {
    doc["checks"][check]["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["step"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {check}: {doc:#}"))
}

/// Asserts that `check` failed at step `at` (and went no further), with `reason`, an error
/// containing `cause` and a fix containing `fix`.
fn failed_at(doc: &Value, check: &str, at: &str, reason: &str, cause: &str, fix: &str) {
    let c = &doc["checks"][check];
    assert_eq!(c["status"], "unhealthy", "{doc:#}");
    assert_eq!(c["reason"], reason, "{doc:#}");
    let error = c["error"].as_str().unwrap_or_default();
    assert!(error.contains(cause), "{cause:?} not in {error:?}");
    let steps = c["steps"].as_array().expect("steps");
    let last = steps.last().expect("a step");
    assert_eq!(last["step"], at, "the walk stops at the failure: {doc:#}");
    assert_eq!(last["status"], "fail", "{doc:#}");
    assert!(
        last["fix"].as_str().unwrap_or_default().contains(fix),
        "{fix:?} not in the fix: {last:#}"
    );
    assert_eq!(c["fix"], last["fix"]);
    assert_eq!(doc["status"], "unhealthy");
}

#[test]
fn a_healthy_target_passes_every_step() {
    let redis = Redis::start(&[]);
    let (code, doc) = check(&[], &[("REDIS_URL", &redis.url())]);
    assert_eq!(code, 0, "{doc:#}");
    let names: Vec<&str> = doc["checks"]["redis:cache"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["url", "dns", "tcp", "auth", "ping", "info"]);
    let info = step(&doc, "redis:cache", "info");
    assert_eq!(info["status"], "ok");
    let detail = info["detail"].as_str().unwrap();
    assert!(detail.starts_with("redis 7."), "{detail}");
    assert!(detail.contains("master; clients 1/10000"), "{detail}");
    assert!(detail.contains("(no limit, noeviction)"), "{detail}");
    assert!(doc["checks"]["redis:cache"]["latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(doc["checks"]["celery"]["status"], "healthy");
}

#[test]
fn a_closed_port_is_connection_refused() {
    let url = format!("redis://127.0.0.1:{}/0", support::free_port());
    let (code, doc) = check(&[], &[("REDIS_URL", &url)]);
    assert_eq!(code, 1);
    failed_at(
        &doc,
        "redis:cache",
        "tcp",
        "connect",
        "connection refused by 127.0.0.1:",
        "start Redis, or fix the port",
    );
    // The Celery check on that broker says why it cannot run, and points to the same fix.
    let celery = &doc["checks"]["celery"];
    assert_eq!(celery["status"], "unhealthy");
    assert!(
        celery["error"]
            .as_str()
            .unwrap()
            .starts_with("the broker is not usable: connection refused"),
        "{celery:#}"
    );
}

#[test]
fn an_unknown_host_fails_dns_and_railway_internal_names_are_explained() {
    let (code, doc) = check(&[], &[("REDIS_URL", "redis://no-such-host.invalid:6379")]);
    assert_eq!(code, 1);
    failed_at(
        &doc,
        "redis:cache",
        "dns",
        "dns",
        "DNS lookup of no-such-host.invalid failed",
        "check the host name",
    );
    let (code, doc) = check(&[], &[("REDIS_URL", "redis://redis.railway.internal:6379")]);
    assert_eq!(code, 1);
    failed_at(
        &doc,
        "redis:cache",
        "dns",
        "dns",
        "DNS lookup of redis.railway.internal failed",
        "resolve only inside Railway's private network",
    );
}

#[test]
fn wrong_and_missing_passwords_are_told_apart() {
    let redis = Redis::start(&["--requirepass", "Zoo-pw-51f3a9"]);
    let url = format!("redis://default:not-it@127.0.0.1:{}/0", redis.port);
    let (code, doc) = check(&[], &[("REDIS_URL", &url)]);
    assert_eq!(code, 1);
    failed_at(
        &doc,
        "redis:cache",
        "auth",
        "auth",
        "WRONGPASS",
        "${{Redis.REDIS_URL}}",
    );
    let (code, doc) = check(&[], &[("REDIS_URL", &redis.url())]);
    assert_eq!(code, 1);
    assert_eq!(step(&doc, "redis:cache", "auth")["status"], "skip");
    failed_at(
        &doc,
        "redis:cache",
        "ping",
        "auth",
        "NOAUTH",
        "put it in the URL",
    );
    // And a password without a user sent to a server that has none (with the user
    // `default`, Redis 6+ accepts any password for a nopass user).
    let open = Redis::start(&[]);
    let url = format!("redis://:extra-pw@127.0.0.1:{}/0", open.port);
    let (code, doc) = check(&[], &[("REDIS_URL", &url)]);
    assert_eq!(code, 1);
    failed_at(
        &doc,
        "redis:cache",
        "auth",
        "auth",
        "without any password configured",
        "remove it from the URL",
    );
    let text = doc.to_string();
    assert!(
        !text.contains("Zoo-pw-51f3a9") && !text.contains("extra-pw"),
        "{text}"
    );
}

#[test]
fn a_database_out_of_range_fails_select() {
    let redis = Redis::start(&[]);
    let url = format!("redis://127.0.0.1:{}/99", redis.port);
    let (code, doc) = check(&[], &[("REDIS_URL", &url)]);
    assert_eq!(code, 1);
    failed_at(
        &doc,
        "redis:cache",
        "select",
        "other",
        "ERR DB index is out of range",
        "use a database below the server's `databases`",
    );
    let error = doc["checks"]["redis:cache"]["error"].as_str().unwrap();
    assert!(error.contains("has no database 99"), "{error}");
}

#[test]
fn max_clients_reached_is_named_with_its_fix() {
    let redis = Redis::start(&["--maxclients", "1"]);
    // Take the only client slot and keep it (retried: Redis may still count a client that
    // just closed). Accepted: the server says nothing; refused: it writes the error.
    let holder = support::wait_for("the only client slot", Duration::from_secs(5), || {
        let mut s = TcpStream::connect(("127.0.0.1", redis.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
        let mut buf = [0u8; 64];
        s.read(&mut buf).is_err().then_some(s)
    });
    let (code, doc) = check(&[], &[("REDIS_URL", &redis.url())]);
    assert_eq!(code, 1);
    failed_at(
        &doc,
        "redis:cache",
        "ping",
        "connect",
        "ERR max number of clients reached",
        "raise maxclients",
    );
    assert_eq!(step(&doc, "redis:cache", "tcp")["status"], "ok");
    drop(holder);
}

#[test]
fn a_stopped_server_accepts_but_never_answers() {
    let redis = Redis::start(&[]);
    redis.freeze();
    let (code, doc) = check(
        &[],
        &[
            ("REDIS_URL", &redis.url()),
            ("SIDECAR_PROBE_TIMEOUT", "1s"),
            ("SIDECAR_LATENCY_SLO", "500ms"),
        ],
    );
    redis.thaw();
    assert_eq!(code, 1);
    // The kernel completes the TCP handshake for a stopped process; PING gets no answer.
    assert_eq!(step(&doc, "redis:cache", "tcp")["status"], "ok");
    failed_at(
        &doc,
        "redis:cache",
        "ping",
        "timeout",
        "did not answer PING within 1s",
        "hung, paused, or overloaded",
    );
}

#[test]
fn a_replica_as_the_broker_is_a_failure_and_as_a_cache_a_warning() {
    let primary = Redis::start(&[]);
    let port = primary.port.to_string();
    let replica = Redis::start(&["--replicaof", "127.0.0.1", &port]);
    let (code, doc) = check(
        &[],
        &[
            ("REDIS_URL", &primary.url()),
            ("CELERY_BROKER_URL", &replica.url()),
        ],
    );
    assert_eq!(code, 1);
    assert_eq!(doc["checks"]["redis:cache"]["status"], "healthy");
    failed_at(
        &doc,
        "redis:broker",
        "info",
        "other",
        "a read-only replica is the Celery broker",
        "point CELERY_BROKER_URL at the primary",
    );
    // The walk stops there: the Celery check does not read a replica's queues.
    let celery = &doc["checks"]["celery"];
    assert_eq!(celery["steps"].as_array().unwrap().len(), 1, "{celery:#}");
    assert!(
        celery["error"]
            .as_str()
            .unwrap()
            .starts_with("the broker is not usable: a read-only replica is the Celery broker"),
        "{celery:#}"
    );
    // The same replica as a cache only: degraded, exit 1, with the warning.
    let (code, doc) = check(&[], &[("REDIS_URL", &replica.url())]);
    assert_eq!(code, 1);
    let c = &doc["checks"]["redis:cache"];
    assert_eq!(c["status"], "degraded", "{doc:#}");
    assert!(
        c["warnings"][0]
            .as_str()
            .unwrap()
            .starts_with("a replica: reads work, writes fail with READONLY"),
        "{c:#}"
    );
}

#[test]
fn a_backlog_with_no_worker_names_the_missing_workers() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let ids = support::send(
        &[("BROKER_URL", url.as_str())],
        r#"[{"task": "add", "args": [1, 2]}, {"task": "add", "args": [3, 4]}, {"task": "add", "args": [5, 6], "priority": 9}]"#,
    );
    assert_eq!(ids.len(), 3);
    let (code, doc) = check(
        &[],
        &[("REDIS_URL", &url), ("SIDECAR_CELERY_MIN_WORKERS", "1")],
    );
    assert_eq!(code, 1);
    assert_eq!(doc["checks"]["redis:cache"]["status"], "healthy");
    let queues = step(&doc, "celery", "celery queues");
    assert_eq!(queues["status"], "ok");
    assert!(
        queues["detail"].as_str().unwrap() == "celery 3; unacked 0, orphaned 0",
        "{queues:#}"
    );
    failed_at(
        &doc,
        "celery",
        "celery workers",
        "other",
        "no Celery worker is alive: none was heard recently on /0.celeryev/*",
        "start the workers",
    );
}

/// Every key in db 0, sorted.
fn keys(redis: &Redis) -> Vec<String> {
    keys_in(redis, 0)
}

/// Every key in `db`, sorted.
fn keys_in(redis: &Redis, db: u32) -> Vec<String> {
    let mut k: Vec<String> = redis
        .cli(None, &["-n", &db.to_string(), "--scan"])
        .lines()
        .map(str::to_string)
        .collect();
    k.sort();
    k
}

/// A worker's log holds no error: no lost connection, no control command error, no
/// traceback.
fn no_error_in(w: &Worker) {
    let logs = w.logs();
    for bad in [
        "ERROR",
        "Traceback",
        "Connection to broker lost",
        "delivery_tag",
        "Control command error",
    ] {
        assert!(
            !logs.contains(bad),
            "{bad} in {}'s log:\n{logs}",
            w.hostname
        );
    }
}

/// Workers set up as Celery's Redis broker documentation shows (priority steps 0 to 9,
/// separator `:`, queue_order_strategy priority), with a global_keyprefix and the broker on
/// db 3; `check --ping` told nothing but the broker URL. It speaks their dialect (their
/// separator in the reply binding, their reply keys): both answer, neither logs an error,
/// and nothing is left behind. With the sidecar's default separator instead, every worker
/// logged `Control command error: ValueError('not enough values to unpack ...')`.
#[test]
fn ping_speaks_the_workers_dialect_and_they_log_no_error() {
    let redis = Redis::start(&[]);
    let url = format!("redis://127.0.0.1:{}/3", redis.port);
    let app = [
        ("BROKER_URL", url.as_str()),
        ("SEP", ":"),
        ("STEPS", "0,1,2,3,4,5,6,7,8,9"),
        ("QUEUE_ORDER", "priority"),
        ("KEYPREFIX", "myapp:"),
    ];
    let w1 = Worker::start(&app, "d1@zoo", &["-P", "solo"]);
    let w2 = Worker::start(&app, "d2@zoo", &["-P", "solo"]);
    w1.wait_ready();
    w2.wait_ready();
    let before = keys_in(&redis, 3);
    assert!(
        before
            .iter()
            .any(|k| k == "myapp:_kombu.binding.celery.pidbox"),
        "{before:?}"
    );
    let (code, doc) = check(
        &["--ping"],
        &[
            ("CELERY_BROKER_URL", &url),
            ("SIDECAR_CELERY_MIN_WORKERS", "2"),
        ],
    );
    assert_eq!(code, 0, "{doc:#}");
    let ping = step(&doc, "celery", "celery ping")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ping.starts_with("d1@zoo in "), "{ping}");
    assert!(ping.contains(", d2@zoo in "), "{ping}");
    assert!(
        step(&doc, "celery", "celery workers")["detail"]
            .as_str()
            .unwrap()
            .starts_with("heard 2 in 4.5s: d1@zoo, d2@zoo"),
        "{doc:#}"
    );
    assert_eq!(keys_in(&redis, 3), before, "check --ping left keys behind");
    // A worker logs a control command error when it handles the request: give them time.
    std::thread::sleep(Duration::from_millis(500));
    for w in [&w1, &w2] {
        no_error_in(w);
    }
}

#[test]
fn ping_lists_both_workers_and_leaves_no_key_behind() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let app = [("BROKER_URL", url.as_str())];
    let w1 = Worker::start(&app, "w1@zoo", &["-P", "solo"]);
    let w2 = Worker::start(&app, "w2@zoo", &["-P", "solo"]);
    w1.wait_ready();
    w2.wait_ready();
    let before = keys(&redis);
    assert!(
        before.iter().any(|k| k == "_kombu.binding.celery.pidbox"),
        "the workers bound their pidbox: {before:?}"
    );
    let (code, doc) = check(
        &["--ping"],
        &[("REDIS_URL", &url), ("SIDECAR_CELERY_MIN_WORKERS", "2")],
    );
    assert_eq!(code, 0, "{doc:#}");
    let ping = step(&doc, "celery", "celery ping");
    assert_eq!(ping["status"], "ok");
    let detail = ping["detail"].as_str().unwrap();
    let answered: Vec<&str> = detail
        .split(", ")
        .map(|w| w.split(" in ").next().unwrap())
        .collect();
    assert_eq!(answered, ["w1@zoo", "w2@zoo"], "{detail}");
    for part in detail.split(", ") {
        let ms = part
            .split(" in ")
            .nth(1)
            .unwrap()
            .strip_suffix("ms")
            .unwrap();
        let ms: f64 = ms.parse().unwrap();
        assert!(ms > 0.0 && ms < 1000.0, "{detail}");
    }
    let workers = step(&doc, "celery", "celery workers");
    assert!(
        workers["detail"]
            .as_str()
            .unwrap()
            .starts_with("heard 2 in 4.5s: w1@zoo, w2@zoo"),
        "{workers:#}"
    );
    assert_eq!(keys(&redis), before, "check --ping left keys behind");
    // The envelope carried a delivery_tag: no worker lost its broker connection, or logged
    // any error.
    for w in [&w1, &w2] {
        no_error_in(w);
    }
    // A second ping (the reply bindings existing from the first would show here).
    let (code, doc) = check(
        &["--ping"],
        &[("REDIS_URL", &url), ("SIDECAR_CELERY_MIN_WORKERS", "0")],
    );
    assert_eq!(code, 0, "{doc:#}");
    assert!(
        step(&doc, "celery", "celery ping")["detail"]
            .as_str()
            .unwrap()
            .starts_with("w1@zoo in "),
    );
    assert_eq!(keys(&redis), before, "check --ping left keys behind");
}

#[test]
fn ping_with_no_worker_fails_and_cleans_up() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let before = keys(&redis);
    let (code, doc) = check(
        &["--ping"],
        &[("REDIS_URL", &url), ("SIDECAR_CELERY_MIN_WORKERS", "0")],
    );
    assert_eq!(code, 1);
    assert_eq!(step(&doc, "celery", "celery workers")["status"], "ok");
    failed_at(
        &doc,
        "celery",
        "celery ping",
        "other",
        "no worker answered inspect ping within 1s",
        "are the workers running",
    );
    assert_eq!(keys(&redis), before, "check --ping left keys behind");
}

#[test]
fn a_worker_without_heartbeats_is_found_by_ping() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let app = [("BROKER_URL", url.as_str())];
    // No heartbeats (and so no worker-online): invisible on the event channel, but it
    // answers inspect ping.
    let w = Worker::start(&app, "quiet@zoo", &["-P", "solo", "--without-heartbeat"]);
    w.wait_ready();
    let env = [
        ("REDIS_URL", url.as_str()),
        ("SIDECAR_CELERY_MIN_WORKERS", "1"),
    ];
    let (code, doc) = check(&[], &env);
    assert_eq!(code, 1);
    assert_eq!(doc["checks"]["celery"]["status"], "unhealthy", "{doc:#}");
    let (code, doc) = check(&["--ping"], &env);
    assert_eq!(code, 1, "degraded is not healthy: {doc:#}");
    let c = &doc["checks"]["celery"];
    assert_eq!(c["status"], "degraded", "{doc:#}");
    let workers = step(&doc, "celery", "celery workers");
    assert_eq!(workers["status"], "warn", "{workers:#}");
    assert!(
        workers["detail"]
            .as_str()
            .unwrap()
            .ends_with("but 1 answered inspect ping"),
        "{workers:#}"
    );
    assert!(
        step(&doc, "celery", "celery ping")["detail"]
            .as_str()
            .unwrap()
            .starts_with("quiet@zoo in "),
        "{doc:#}"
    );
}
