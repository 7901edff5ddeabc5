//! kombu's transport options found on the broker, never configured: apps set up as Celery's
//! Redis broker documentation shows (priority steps, a separator, a global key prefix),
//! watched with only the broker URL. None of these tests sets SIDECAR_CELERY_SEP,
//! SIDECAR_CELERY_PRIORITY_STEPS or SIDECAR_CELERY_KEYPREFIX, except the one about a setting
//! that contradicts the broker.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{FAST, Redis, Sidecar, Worker, celery_count, run, send};

/// Celery's documented priority setup for Redis:
/// `{"priority_steps": list(range(10)), "sep": ":", "queue_order_strategy": "priority"}`.
const DOCS: [(&str, &str); 3] = [
    ("SEP", ":"),
    ("STEPS", "0,1,2,3,4,5,6,7,8,9"),
    ("QUEUE_ORDER", "priority"),
];

/// The app's environment: the broker and `extra` transport options.
fn app<'a>(url: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![("BROKER_URL", url)];
    v.extend_from_slice(extra);
    v
}

/// The sidecar's environment: fast probes, the broker URL and nothing about kombu.
fn env<'a>(url: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = FAST.to_vec();
    v.push(("CELERY_BROKER_URL", url));
    v.extend_from_slice(extra);
    v
}

fn celery(sidecar: &Sidecar) -> Value {
    sidecar.get("/healthz").json()["checks"]["celery"].clone()
}

/// Polls the celery check until `ok` holds; returns it, or panics with the last one.
fn wait_celery(sidecar: &Sidecar, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let c = celery(sidecar);
        if ok(&c) {
            return c;
        }
        if started.elapsed() > Duration::from_secs(40) {
            panic!(
                "timed out waiting for {what}; last celery check:\n{c:#}\nlogs:\n{}",
                sidecar.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The queue lengths the sidecar reports.
fn lengths(c: &Value) -> BTreeMap<String, u64> {
    c["queues"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v["length"].as_u64().unwrap_or(u64::MAX)))
                .collect()
        })
        .unwrap_or_default()
}

/// `check --json` with the fast settings: the document.
fn check(args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut argv = vec!["check", "--json"];
    argv.extend_from_slice(args);
    let out = run(&argv, env);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json is not JSON ({e}): {out:?}"))
}

/// The detail of a step of the celery check.
fn step(doc: &Value, name: &str) -> String {
    doc["checks"]["celery"]["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["step"] == name))
        .map(|s| s["detail"].as_str().unwrap_or_default().to_string())
        .unwrap_or_else(|| panic!("no step {name}: {doc:#}"))
}

/// Tasks of every priority: `n` to `celery`, and a tenth of that to `emails`.
fn backlog(app: &[(&str, &str)], n: usize) {
    let mut sends: Vec<Value> = (0..n)
        .map(|i| json!({"task": "add", "args": [i, 1], "priority": i % 10}))
        .collect();
    sends.extend(
        (0..n / 10)
            .map(|i| json!({"task": "add", "args": [i, 2], "queue": "emails", "priority": 9})),
    );
    assert_eq!(
        send(app, &Value::Array(sends).to_string()).len(),
        n + n / 10
    );
}

/// The documented priority setup, with only CELERY_BROKER_URL: the separator is found,
/// every queue is found, and each length is what Celery itself counts (it was 10 of 100
/// with kombu's defaults assumed, 40 of 100 with the right separator and default steps).
#[test]
fn the_documented_priority_setup_is_found_and_counted_as_celery_counts() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let app = app(&url, &DOCS);
    backlog(&app, 100);
    let sidecar = Sidecar::start(&env(&url, &[]));
    let c = wait_celery(&sidecar, "both queues", |c| {
        c["queues"]["emails"]["length"] == 10
    });
    let counted = celery_count(&app, &["celery", "emails"]);
    assert_eq!(counted["celery"], 100, "Celery's own count");
    let got = lengths(&c);
    assert_eq!(got["celery"], counted["celery"], "{c:#}");
    assert_eq!(got["emails"], counted["emails"], "{c:#}");
    let kombu = &c["details"]["kombu"];
    assert_eq!(kombu["separators"], json!([":"]), "{kombu:#}");
    assert_eq!(kombu["separator_from"], "found");
    assert_eq!(kombu["key_prefix"], "");
    assert_eq!(
        kombu["priority_steps_seen"],
        json!([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    );
    let m = sidecar
        .scrape_when("celery_queue_length{queue_name=\"celery\"}", 100.0)
        .body;
    assert_eq!(
        support::sample(&m, "celery_queue_length{queue_name=\"emails\"}"),
        Some(10.0)
    );
    assert_eq!(support::sample(&m, "celery_queues_left_out"), Some(0.0));
    // check says the same, from the same discovery.
    let doc = check(&[], &env(&url, &[]));
    let queues = step(&doc, "celery queues");
    assert!(queues.starts_with("celery 100, emails 10;"), "{doc:#}");
    let keys = step(&doc, "celery keys");
    assert!(
        keys.starts_with("key prefix \"\" (found), separator \":\" (found), priority steps holding tasks: 0,1,2,3,4,5,6,7,8,9"),
        "{keys}"
    );
}

/// A `global_keyprefix` (and the broker on db 5): the queues, the worker heard on the
/// prefixed channels, and check's report, all found from `myapp:_kombu.binding.*`.
#[test]
fn a_global_keyprefix_is_found_with_its_workers() {
    let redis = Redis::start(&[]);
    let url = format!("redis://127.0.0.1:{}/5", redis.port);
    let app = app(&url, &[("KEYPREFIX", "myapp:")]);
    let sends: Vec<Value> = (0..20)
        .map(|i| json!({"task": "add", "args": [i, 1]}))
        .collect();
    send(&app, &Value::Array(sends).to_string());
    let w = Worker::start(&app, "wp@test", &["-P", "solo", "-Q", "elsewhere"]);
    w.wait_ready();
    let sidecar = Sidecar::start(&env(&url, &[("SIDECAR_CELERY_MIN_WORKERS", "1")]));
    let c = wait_celery(&sidecar, "the prefixed queue and worker", |c| {
        c["queues"]["celery"]["length"] == 20 && c["workers_alive"] == 1
    });
    assert_eq!(c["status"], "healthy", "{c:#}");
    assert_eq!(c["details"]["kombu"]["key_prefix"], "myapp:");
    assert_eq!(c["details"]["kombu"]["key_prefix_from"], "found");
    let doc = check(&[], &env(&url, &[("SIDECAR_CELERY_MIN_WORKERS", "1")]));
    assert_eq!(doc["checks"]["celery"]["status"], "healthy", "{doc:#}");
    assert!(
        step(&doc, "celery queues").starts_with("celery 20,"),
        "{doc:#}"
    );
    assert!(
        step(&doc, "celery workers").starts_with("heard 1 in 4.5s: wp@test"),
        "{doc:#}"
    );
    assert!(
        step(&doc, "celery keys").starts_with("key prefix \"myapp:\" (found)"),
        "{doc:#}"
    );
}

/// Two apps on one broker db under two prefixes: the one whose workers are heard is
/// watched, the other is named.
#[test]
fn of_two_apps_on_one_db_the_one_heard_is_watched_and_the_other_named() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    // "quiet:" has more queues, but no worker; "live:" has its worker.
    let quiet = app(&url, &[("KEYPREFIX", "quiet:")]);
    send(
        &quiet,
        r#"[{"declare": ["a", "b", "c"]}, {"task": "add", "args": [1, 1]}]"#,
    );
    let live = app(&url, &[("KEYPREFIX", "live:")]);
    let w = Worker::start(&live, "wl@test", &["-P", "solo"]);
    w.wait_ready();
    let sidecar = Sidecar::start(&env(&url, &[("SIDECAR_CELERY_MIN_WORKERS", "1")]));
    let c = wait_celery(&sidecar, "the live app watched", |c| {
        c["details"]["kombu"]["key_prefix"] == "live:" && c["workers_alive"] == 1
    });
    assert_eq!(
        c["details"]["kombu"]["other_key_prefixes"],
        json!(["quiet:"])
    );
    assert!(c["queues"]["a"].is_null(), "the other app's queues: {c:#}");
    assert!(
        sidecar
            .logs()
            .contains("reading kombu's keys with this key prefix and separator prefix=live:"),
        "{}",
        sidecar.logs()
    );
}

/// A FLUSHALL on a Redis that is cache and broker deletes kombu's binding sets; a web
/// process goes on publishing on its connection. The queue stays watched while it holds
/// tasks, and the lost binding is a warning.
#[test]
fn a_queue_whose_binding_is_flushed_stays_watched_while_it_holds_tasks() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let app = app(&url, &DOCS);
    send(
        &app,
        r#"[{"task": "add", "args": [1, 1], "queue": "emails"}]"#,
    );
    let sidecar = Sidecar::start(&env(&url, &[]));
    wait_celery(&sidecar, "emails found", |c| {
        c["queues"]["emails"]["length"] == 1
    });
    // The producer declares the queue on its connection once, before the flush.
    let mut ops = vec![
        json!({"task": "add", "args": [0, 0], "queue": "emails"}),
        json!({"flushall": true}),
    ];
    ops.extend(
        (0..62)
            .map(|i| json!({"task": "add", "args": [i, 1], "queue": "emails", "priority": i % 10})),
    );
    send(&app, &Value::Array(ops).to_string());
    assert_eq!(
        redis.cli(None, &["EXISTS", "_kombu.binding.emails"]).trim(),
        "0",
        "the binding is gone"
    );
    let c = wait_celery(&sidecar, "the unbound queue still watched, all 62", |c| {
        c["queues"]["emails"]["unbound"] == true && c["queues"]["emails"]["length"] == 62
    });
    assert_eq!(c["status"], "degraded", "{c:#}");
    let warning = c["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|w| w.contains("binding set is gone"))
        .unwrap_or_else(|| panic!("{c:#}"));
    assert!(
        warning.starts_with("queue emails holds 62 task(s) but its binding set is gone"),
        "{warning}"
    );
    let m = sidecar.get("/metrics").body;
    assert_eq!(
        support::sample(&m, "celery_queue_unbound{queue_name=\"emails\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        support::sample(&m, "celery_queue_unbound{queue_name=\"celery\"}"),
        None,
        "{m}"
    );
    // Still there a few walks later.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(celery(&sidecar)["queues"]["emails"]["length"], 62);
}

/// A queue bound while the sidecar runs is watched within two probe intervals (the walk
/// of the binding sets restarts every cycle).
#[test]
fn a_newly_bound_queue_appears_within_two_probe_intervals() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let app = app(&url, &[]);
    let sidecar = Sidecar::start(&env(&url, &[]));
    wait_celery(&sidecar, "a first probe", |c| {
        c["queues"]["celery"].is_object()
    });
    std::thread::sleep(Duration::from_secs(2));
    let bound = Instant::now();
    send(&app, r#"[{"declare": ["reports"]}]"#);
    let c = wait_celery(&sidecar, "reports watched", |c| {
        c["queues"]["reports"].is_object()
    });
    // The bound is a benchmark figure on a loaded machine; here it is printed.
    eprintln!(
        "watched {:?} after it was bound (interval 1s)",
        bound.elapsed()
    );
    assert!(
        c["queues"]["reports"].get("unbound").is_none(),
        "bound: {c:#}"
    );
}

/// Past the 2,000-queue cap: a queue named in SIDECAR_CELERY_QUEUES is never displaced,
/// the longest of the others are kept, and the ones left out are a warning and a metric.
#[test]
fn the_cap_keeps_configured_and_longest_queues_and_says_what_it_leaves_out() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let app = app(&url, &[]);
    let names: Vec<String> = (0..2010).map(|i| format!("q{i:04}")).collect();
    send(&app, &json!([{"declare": names}]).to_string());
    // The last by name holds tasks: the longest, kept whatever its name.
    send(
        &app,
        r#"[{"task": "add", "args": [1, 1], "queue": "q2009"}, {"task": "add", "args": [1, 2], "queue": "q2009"}]"#,
    );
    let sidecar = Sidecar::start(&env(&url, &[("SIDECAR_CELERY_QUEUES", "zz-named")]));
    let c = wait_celery(&sidecar, "the cap applied", |c| {
        c["details"]["queues_left_out"]
            .as_u64()
            .is_some_and(|n| n > 0)
            && c["queues"]["q2009"]["length"] == 2
    });
    let watched = c["queues"].as_object().unwrap();
    assert_eq!(watched.len(), 2000, "the cap");
    assert!(
        watched.contains_key("zz-named"),
        "named queues are never displaced"
    );
    assert!(watched.contains_key("celery"));
    // 2,010 bound, plus celery and zz-named: 12 left out.
    assert_eq!(c["details"]["queues_left_out"], 12, "{:#}", c["details"]);
    assert_eq!(c["status"], "degraded");
    assert!(
        c["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .is_some_and(|w| w.starts_with("12 queue(s) are not watched"))),
        "{c:#}"
    );
    let m = sidecar.scrape_when("celery_queues_left_out", 12.0).body;
    support::promtool_check_metrics(&m);
}

/// A setting that contradicts what the broker holds is said, once, with the fix: a
/// separator the app does not use, and priority steps that leave tasks uncounted.
#[test]
fn a_setting_that_contradicts_the_broker_is_said() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let app = app(&url, &DOCS);
    backlog(&app, 10);
    let finding = |sidecar: &Sidecar, starts: &str| -> Value {
        let c = wait_celery(sidecar, starts, |c| {
            c["findings"].as_array().is_some_and(|f| {
                f.iter()
                    .any(|f| f["text"].as_str().is_some_and(|t| t.starts_with(starts)))
            })
        });
        assert_eq!(c["status"], "degraded", "{c:#}");
        c["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["text"].as_str().unwrap().starts_with(starts))
            .unwrap()
            .clone()
    };
    let wrong_sep = Sidecar::start(&env(&url, &[("SIDECAR_CELERY_SEP", "\\x06\\x16")]));
    let f = finding(&wrong_sep, "SIDECAR_CELERY_SEP");
    assert_eq!(
        f["text"],
        "SIDECAR_CELERY_SEP is \"\\x06\\x16\", but the app's bindings use \":\""
    );
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .starts_with("unset SIDECAR_CELERY_SEP")
    );
    let logs = wrong_sep.logs();
    assert_eq!(
        logs.matches("SIDECAR_CELERY_SEP is").count(),
        1,
        "said once:\n{logs}"
    );
    // Kombu's default steps where the app uses 0 to 9: counted as the setting says, and the
    // tasks under the other steps named.
    let wrong_steps = Sidecar::start(&env(&url, &[("SIDECAR_CELERY_PRIORITY_STEPS", "0,3,6,9")]));
    let f = finding(
        &wrong_steps,
        "queue celery holds 6 task(s) under priority steps",
    );
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .starts_with("unset SIDECAR_CELERY_PRIORITY_STEPS"),
        "{f:#}"
    );
    assert_eq!(
        celery(&wrong_steps)["queues"]["celery"]["length"],
        4,
        "steps 0, 3, 6, 9"
    );
}

/// A backlog of every priority drained by one slow worker: low priorities wait while high
/// ones are taken, and the queue is never called stalled. The same backlog with no worker
/// is.
#[test]
fn a_draining_priority_backlog_is_never_stalled_and_an_untouched_one_is() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let app = app(&url, &[DOCS[0], DOCS[1], DOCS[2], ("PREFETCH", "1")]);
    let sends: Vec<Value> = (0..40)
        .map(|i| json!({"task": "sleep", "args": [0.25], "priority": i % 10}))
        .collect();
    send(&app, &Value::Array(sends).to_string());
    let stall = [("SIDECAR_CELERY_STALL_AFTER", "2s")];
    let sidecar = Sidecar::start(&env(&url, &stall));
    let stalled = |c: &Value| {
        c["warnings"].as_array().is_some_and(|w| {
            w.iter()
                .any(|w| w.as_str().is_some_and(|w| w.contains("stalled")))
        })
    };
    // No worker: stalled once nothing has been taken for 2 s.
    let c = wait_celery(&sidecar, "the untouched backlog stalled", stalled);
    assert!(
        c["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .starts_with("queue celery is stalled: nothing has been taken from it for")),
        "{c:#}"
    );
    // One worker, one task at a time, 0.25 s each: 10 s to drain. Low priorities wait
    // the whole time, and the queue is never stalled.
    let w = Worker::start(&app, "slow@test", &["-P", "solo", "-c", "1"]);
    w.wait_ready();
    wait_celery(&sidecar, "the stall over", |c| !stalled(c));
    let mut oldest = 0.0f64;
    let mut seen = 0;
    let until = Instant::now() + Duration::from_secs(40);
    loop {
        let c = celery(&sidecar);
        assert!(!stalled(&c), "a draining queue was called stalled: {c:#}");
        let q = &c["queues"]["celery"];
        oldest = oldest.max(q["oldest_age_seconds"].as_f64().unwrap_or(0.0));
        seen += 1;
        if q["length"] == 0 || Instant::now() > until {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(celery(&sidecar)["queues"]["celery"]["length"], 0, "drained");
    assert!(
        oldest > 2.0,
        "a low priority waited longer than the stall window ({oldest} s), unstalled, over {seen} reads"
    );
}
