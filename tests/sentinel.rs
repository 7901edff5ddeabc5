//! Redis Sentinel on a real topology on loopback (a master, a replica, three sentinels,
//! every one with a password): `check` walks the sentinels and names each fault a team
//! meets; the server follows `SENTINEL FAILOVER` with a real Celery worker on the same
//! `sentinel://` broker, counting queues and hearing the worker's events on the new master.
//! One topology serves every case: it takes seconds to form.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

/// `check --json` on the broker URL `url` with `extra` settings: exit code and document.
fn check(url: &str, extra: &[(&str, &str)]) -> (i32, Value) {
    let mut all = ONE_SHOT.to_vec();
    all.push(("CELERY_BROKER_URL", url));
    all.extend_from_slice(extra);
    let out = run(&["check", "--json"], &all);
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json is not JSON ({e}): {out:?}"));
    for secret in [MASTER_PASSWORD, SENTINEL_PASSWORD] {
        let all = format!("{out:?}");
        assert!(!all.contains(secret), "a password in check's output: {all}");
    }
    (out.status.code().unwrap_or(-1), doc)
}

/// The broker check's steps named `name`.
fn steps<'a>(doc: &'a Value, name: &str) -> Vec<&'a Value> {
    doc["checks"]["redis:broker"]["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps: {doc:#}"))
        .iter()
        .filter(|s| s["step"] == name)
        .collect()
}

/// The last step of the broker check's walk.
fn last(doc: &Value) -> &Value {
    doc["checks"]["redis:broker"]["steps"]
        .as_array()
        .and_then(|s| s.last())
        .unwrap_or_else(|| panic!("no steps: {doc:#}"))
}

fn has(v: &Value, field: &str, part: &str) -> bool {
    v[field].as_str().unwrap_or_default().contains(part)
}

const GOOD: [(&str, &str); 2] = [
    ("SIDECAR_SENTINEL_MASTER", MASTER_NAME),
    ("SIDECAR_SENTINEL_PASSWORD", SENTINEL_PASSWORD),
];

fn check_names_each_sentinel_fault(topo: &Topology) {
    let url = topo.url();
    let master = format!("127.0.0.1:{}", topo.master.port);

    // Healthy: each sentinel, the quorum, the master they name, then the master's walk.
    let (code, doc) = check(&url, &GOOD);
    assert_eq!(code, 0, "{doc:#}");
    let sentinels = steps(&doc, "sentinel");
    assert_eq!(sentinels.len(), 3, "{doc:#}");
    for s in &sentinels {
        assert_eq!(s["status"], "ok", "{doc:#}");
        assert!(has(s, "detail", &master), "{s:#}");
    }
    assert_eq!(steps(&doc, "quorum")[0]["status"], "ok", "{doc:#}");
    assert!(has(steps(&doc, "master")[0], "detail", &master), "{doc:#}");
    assert_eq!(steps(&doc, "ping")[0]["status"], "ok", "{doc:#}");

    // A wrong master name: every sentinel says it knows no such master.
    let (code, doc) = check(
        &url,
        &[
            ("SIDECAR_SENTINEL_MASTER", "nosuch"),
            ("SIDECAR_SENTINEL_PASSWORD", SENTINEL_PASSWORD),
        ],
    );
    assert_eq!(code, 1, "{doc:#}");
    let l = last(&doc);
    assert_eq!(
        (&l["step"], &l["status"]),
        (&"sentinel".into(), &"fail".into()),
        "{doc:#}"
    );
    assert!(
        has(l, "detail", "knows no master named \"nosuch\""),
        "{l:#}"
    );
    assert!(has(l, "fix", "SENTINEL MASTERS"), "{l:#}");

    // Sentinels unreachable: one that refuses, and, first in the list, one that accepts
    // and never answers (a hung host). Each is named; the walk goes on through the others
    // (degraded).
    let dead = free_port();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let mut urls = vec![format!(
        "sentinel://:{MASTER_PASSWORD}@127.0.0.1:{silent_port}/0"
    )];
    for s in &topo.sentinels {
        urls.push(format!("sentinel://127.0.0.1:{}/0", s.port));
    }
    urls.push(format!("sentinel://127.0.0.1:{dead}/0"));
    let (code, doc) = check(&urls.join(";"), &GOOD);
    assert_eq!(code, 1, "{doc:#}");
    assert_eq!(
        doc["checks"]["redis:broker"]["status"], "degraded",
        "{doc:#}"
    );
    let unreachable: Vec<_> = steps(&doc, "sentinel")
        .into_iter()
        .filter(|s| s["status"] == "warn")
        .collect();
    assert_eq!(unreachable.len(), 2, "{doc:#}");
    let silent_said = format!("127.0.0.1:{silent_port} did not answer");
    let dead_said = format!("127.0.0.1:{dead} refused the connection");
    assert!(has(unreachable[0], "detail", &silent_said), "{doc:#}");
    assert!(has(unreachable[1], "detail", &dead_said), "{doc:#}");
    assert_eq!(steps(&doc, "ping")[0]["status"], "ok", "{doc:#}");
    drop(silent);

    // The sentinels' password wrong, and missing.
    let (_, doc) = check(
        &url,
        &[
            ("SIDECAR_SENTINEL_MASTER", MASTER_NAME),
            ("SIDECAR_SENTINEL_PASSWORD", "not-the-sentinels-pw"),
        ],
    );
    let l = last(&doc);
    assert_eq!(
        (&l["step"], &l["status"]),
        (&"sentinel".into(), &"fail".into()),
        "{doc:#}"
    );
    assert_eq!(doc["checks"]["redis:broker"]["reason"], "auth", "{doc:#}");
    assert!(
        has(
            l,
            "fix",
            "SIDECAR_SENTINEL_PASSWORD is not the sentinels' password"
        ),
        "{l:#}"
    );
    let (_, doc) = check(&url, &[("SIDECAR_SENTINEL_MASTER", MASTER_NAME)]);
    let l = last(&doc);
    assert!(has(l, "detail", "NOAUTH"), "{l:#}");
    assert!(has(l, "fix", "the sentinels require a password"), "{l:#}");

    // The master's password wrong: the sentinels answer, the master refuses the login.
    let wrong = url.replacen(MASTER_PASSWORD, "not-the-master-pw", 1);
    let (_, doc) = check(&wrong, &GOOD);
    let l = last(&doc);
    assert_eq!(
        (&l["step"], &l["status"]),
        (&"auth".into(), &"fail".into()),
        "{doc:#}"
    );
    assert!(has(l, "detail", "WRONGPASS"), "{l:#}");

    // No quorum: `big` wants 5 sentinels and there are 3.
    let (_, doc) = check(
        &url,
        &[
            ("SIDECAR_SENTINEL_MASTER", "big"),
            ("SIDECAR_SENTINEL_PASSWORD", SENTINEL_PASSWORD),
        ],
    );
    let quorum = steps(&doc, "quorum");
    assert_eq!(quorum[0]["status"], "warn", "{doc:#}");
    assert!(has(quorum[0], "detail", "NOQUORUM"), "{doc:#}");

    // The master announced at an address nothing answers on: the announce-ip mistake.
    let (_, doc) = check(
        &url,
        &[
            ("SIDECAR_SENTINEL_MASTER", "ghost"),
            ("SIDECAR_SENTINEL_PASSWORD", SENTINEL_PASSWORD),
        ],
    );
    let l = last(&doc);
    assert_eq!(
        (&l["step"], &l["status"]),
        (&"tcp".into(), &"fail".into()),
        "{doc:#}"
    );
    assert!(
        has(l, "detail", &format!("127.0.0.1:{}", topo.ghost_port)),
        "{l:#}"
    );
    assert!(has(l, "fix", "announce-ip"), "{l:#}");
}

/// The broker check's `details.sentinel`.
fn sentinel_doc(sidecar: &Sidecar) -> Value {
    sidecar.get("/healthz").json()["checks"]["redis:broker"]["details"]["sentinel"].clone()
}

/// Tasks succeeded, as the sidecar heard them (summed over its series).
fn succeeded(sidecar: &Sidecar) -> f64 {
    let m = sidecar.get("/metrics").body;
    m.lines()
        .filter(|l| l.starts_with("celery_task_succeeded_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn sentinel_targets_are_walked_by_check_and_followed_through_a_failover() {
    let topo = Topology::start();
    check_names_each_sentinel_fault(&topo);

    let url = topo.url();
    let app = [
        ("BROKER_URL", url.as_str()),
        ("MASTER_NAME", MASTER_NAME),
        ("SENTINEL_PASSWORD", SENTINEL_PASSWORD),
    ];
    let mut worker = Worker::start(&app, "w1@sentinel", &["-E", "-P", "solo"]);
    worker.wait_ready();
    let mut env_vars = env(
        &url,
        &[
            ("SIDECAR_CELERY_QUEUES", "parked"),
            ("SIDECAR_CELERY_MIN_WORKERS", "1"),
        ],
    );
    env_vars.extend_from_slice(&GOOD);
    let sidecar = Sidecar::start(&env_vars);
    let old = format!("127.0.0.1:{}", topo.master.port);
    let new = format!("127.0.0.1:{}", topo.replica.port);

    // Before: the master, three sentinels with the quorum, the worker, the queue.
    send(
        &app,
        r#"[{"task": "add", "args": [1, 2], "queue": "parked"}]"#,
    );
    let c = wait_celery(&sidecar, "the worker and the parked task", |c| {
        c["workers_alive"] == 1 && c["queues"]["parked"]["length"] == 1
    });
    assert_eq!(c["status"], "healthy", "{c:#}");
    let doc = sentinel_doc(&sidecar);
    assert_eq!(doc["master"], old.as_str(), "{doc:#}");
    assert_eq!(doc["failovers"], 0, "{doc:#}");
    let views = doc["sentinels"].as_array().unwrap();
    assert_eq!(views.len(), 3, "{doc:#}");
    assert!(
        views
            .iter()
            .all(|v| v["reachable"] == true && v["quorum"] == true && v["master"] == old.as_str()),
        "{doc:#}"
    );
    send(&app, r#"[{"task": "add", "args": [1, 2]}]"#);
    wait_for(
        "a task heard before the failover",
        Duration::from_secs(30),
        || (succeeded(&sidecar) >= 1.0).then_some(()),
    );
    let before = succeeded(&sidecar);

    // The failover, as an operator starts it.
    let said = topo.sentinels[0].cli(&["SENTINEL", "FAILOVER", MASTER_NAME]);
    assert_eq!(said, "OK", "{}", topo.logs());
    wait_for(
        "the sentinels to agree on the new master",
        Duration::from_secs(30),
        || (topo.agreed_master().as_deref() == Some(new.as_str())).then_some(()),
    );
    let doc = wait_for(
        "the sidecar to name the new master",
        Duration::from_secs(30),
        || {
            let doc = sentinel_doc(&sidecar);
            (doc["master"] == new.as_str()).then_some(doc)
        },
    );
    assert_eq!(doc["failovers"], 1, "{doc:#}");
    assert!(doc["master_changed_at"].as_f64().is_some(), "{doc:#}");
    // The sidecar's connections moved: its event subscription (named, psub=1) is on the
    // new master, and nothing of it is left on the old one, which replicates the new one's
    // lists and messages and so could not tell otherwise.
    let ours = |redis: &Redis| -> Vec<String> {
        redis
            .cli(Some(MASTER_PASSWORD), &["CLIENT", "LIST"])
            .lines()
            .filter(|l| l.contains("name=redis-celery-sidecar"))
            .map(str::to_string)
            .collect()
    };
    wait_for(
        "the sidecar's connections on the new master only",
        Duration::from_secs(20),
        || {
            let (on_new, on_old) = (ours(&topo.replica), ours(&topo.master));
            (on_new.iter().any(|l| l.contains(" psub=1 ")) && on_old.is_empty()).then_some(())
        },
    );
    // On the timeline, with both addresses.
    let want = format!("named a new master for \"{MASTER_NAME}\": {new} (it was {old})");
    wait_for(
        "the failover on the timeline",
        Duration::from_secs(10),
        || {
            let events = sidecar.get("/api/events").json();
            events["events"]
                .as_array()?
                .iter()
                .any(|e| e["sentence"].as_str().is_some_and(|t| t.contains(&want)))
                .then_some(())
        },
    );
    let m = sidecar
        .scrape_when("redis_sentinel_failovers_total{role=\"broker\"}", 1.0)
        .body;
    promtool_check_metrics(&m);

    // After: queues counted on the new master, the worker's events heard there.
    send(
        &app,
        r#"[{"task": "add", "args": [3, 4], "queue": "parked"}]"#,
    );
    let c = wait_celery(&sidecar, "two parked tasks on the new master", |c| {
        c["queues"]["parked"]["length"] == 2 && c["workers_alive"] == 1
    });
    let on_new = topo.replica.cli(Some(MASTER_PASSWORD), &["LLEN", "parked"]);
    let on_new = on_new.trim();
    assert_eq!(on_new, "2", "{c:#}");
    send(&app, r#"[{"task": "add", "args": [5, 6]}]"#);
    wait_for(
        "a task heard after the failover",
        Duration::from_secs(40),
        || (succeeded(&sidecar) > before).then_some(()),
    );
    let broker = sidecar.get("/healthz").json()["checks"]["redis:broker"].clone();
    assert_eq!(broker["status"], "healthy", "{broker:#}");
    let logs = sidecar.logs();
    assert!(logs.contains("the sentinels name a new master"), "{logs}");
    for secret in [MASTER_PASSWORD, SENTINEL_PASSWORD] {
        assert!(!logs.contains(secret), "{logs}");
        assert!(!sidecar.get("/healthz").body.contains(secret));
        assert!(!sidecar.get("/metrics").body.contains(secret));
    }
    worker.terminate();
}
