//! A real Prometheus server (Debian's `prometheus`) scrapes a real sidecar watching a real
//! Redis and a real Celery worker running tasks (some failing), with the alert rules
//! loaded. Every expression of the Grafana dashboard, its variables filled in, is evaluated
//! through Prometheus's HTTP API: none errors and each returns data. The dashboard's
//! variable queries return values, and every alert rule evaluates without error. A second
//! job scrapes that sidecar and a replica of it on the same Redis and Celery: every panel
//! shows what it shows with one.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::{FAST, Redis, Sidecar, TempDir, Worker, http, query_escape, send};

const JOB: &str = "redis-celery-sidecar";

struct Prometheus {
    addr: SocketAddr,
    child: Child,
    _dir: TempDir,
}

impl Prometheus {
    /// Scrapes every job's targets each second, with the alert rules loaded.
    fn start(jobs: &[(&str, &[SocketAddr])]) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/alerts.yml");
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n",
            rules.display()
        );
        for (job, targets) in jobs {
            let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ));
        }
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let port = support::free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run prometheus ({e}): run scripts/test, which installs it")
            });
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let p = Prometheus {
            addr,
            child,
            _dir: dir,
        };
        support::wait_for("prometheus to be ready", Duration::from_secs(30), || {
            http(addr, "GET", "/-/ready", "")
                .ok()
                .filter(|r| r.status == 200)
        });
        p
    }

    fn api(&self, path: &str) -> Value {
        let reply = http(self.addr, "GET", path, "").expect("prometheus answers");
        let v: Value = serde_json::from_str(&reply.body)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", reply.body));
        assert_eq!(v["status"], "success", "{path}: {v}");
        v
    }

    /// An instant query's result vector.
    fn query(&self, expr: &str) -> Vec<Value> {
        let v = self.api(&format!("/api/v1/query?query={}", query_escape(expr)));
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A dashboard expression with Grafana's variables filled in: the job, every Redis role
/// and queue (the "All" value), and the rate interval for a 1 s scrape.
fn fill(expr: &str) -> String {
    fill_job(expr, JOB)
}

fn fill_job(expr: &str, job: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$job", job)
        .replace("$role", ".*")
        .replace("$queue", ".*")
}

/// A second job scraping two sidecars on the same Redis and Celery (two app replicas);
/// `JOB` scrapes the first of them alone.
const PAIR: &str = "two-replicas";

/// The panels about each sidecar itself, drawn per instance; every other panel describes
/// Redis or Celery and draws one series per thing described, however many sidecars.
const PER_SIDECAR: [&str; 7] = [
    "Sidecar pool",
    "Check status",
    "Ready and scraped",
    "Probe age",
    "Decoded garbage and events",
    "Sidecar CPU and memory",
    "Build",
];

/// The panels of ages, in seconds.
const AGES: [&str; 4] = [
    "Oldest waiting task",
    "Oldest running task",
    "Periodic tasks (beat)",
    "Probe age",
];

/// An instant query at `time`, as label set (without `job`) to value.
fn at(prometheus: &Prometheus, expr: &str, time: f64) -> std::collections::BTreeMap<String, f64> {
    let v = prometheus.api(&format!(
        "/api/v1/query?query={}&time={time}",
        query_escape(expr)
    ));
    let mut out = std::collections::BTreeMap::new();
    for r in v["data"]["result"].as_array().cloned().unwrap_or_default() {
        let mut labels = r["metric"].as_object().cloned().unwrap_or_default();
        labels.remove("job");
        let value: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
        out.insert(Value::Object(labels).to_string(), value);
    }
    out
}

#[test]
fn every_dashboard_expression_returns_data_from_a_real_prometheus() {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<(String, String)> = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push((
                p["title"].as_str().unwrap().to_string(),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert!(exprs.len() > 25, "{}", exprs.len());

    // A memory limit, so that the maxmemory series has a value to draw.
    let redis = Redis::start(&["--maxmemory", "100mb", "--maxmemory-policy", "noeviction"]);
    let url = redis.url();
    let app = [("BROKER_URL", url.as_str())];
    let worker = Worker::start(&app, "w1@prom", &["-P", "solo", "-E"]);
    worker.wait_ready();
    // A backlog on a queue nobody consumes, bound before the sidecar starts (a new queue is
    // discovered within a minute; this one at the first probe).
    send(
        &app,
        &json!([{"task": "add", "args": [1, 1], "queue": "emails"}]).to_string(),
    );
    // A countdown past the visibility timeout (1 h): reserved now, delivered again before
    // it runs, so the redelivery risk has a series.
    send(
        &app,
        &json!([{"task": "add", "args": [1, 1], "countdown": 4000}]).to_string(),
    );
    let mut env: Vec<(&str, &str)> = FAST
        .iter()
        .copied()
        .filter(|(k, _)| *k != "SIDECAR_CELERY_MIN_WORKERS")
        .collect();
    env.push(("REDIS_URL", &url));
    // A periodic task declared, heard from the tasks sent below: the beat panel's series.
    env.push(("SIDECAR_CELERY_BEAT_EXPECT", "tasks.add:1m"));
    let sidecar = Sidecar::start(&env);
    let replica = Sidecar::start(&env);
    let prometheus = Prometheus::start(&[
        (JOB, &[sidecar.addr]),
        (PAIR, &[sidecar.addr, replica.addr]),
    ]);
    let scraped_since = std::time::Instant::now();
    // A queue holding a task whose binding set is then deleted (as a FLUSHALL would):
    // the unbound queue the integrity panel counts.
    send(
        &app,
        &json!([{"task": "add", "args": [1, 1], "queue": "orphans"}]).to_string(),
    );
    support::wait_for("orphans watched", Duration::from_secs(20), || {
        sidecar
            .get("/metrics")
            .body
            .contains("celery_queue_length{queue_name=\"orphans\"}")
            .then_some(())
    });
    redis.cli(None, &["DEL", "_kombu.binding.orphans"]);

    // Tasks keep coming while Prometheus scrapes: successes, failures, a retry.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        let url = url.clone();
        std::thread::spawn(move || {
            let app = [("BROKER_URL", url.as_str())];
            while !stop.load(Ordering::Relaxed) {
                send(
                    &app,
                    &json!([
                        {"task": "add", "args": [2, 3]},
                        {"task": "sleep", "args": [0.05]},
                        {"task": "boom"},
                        {"task": "retry_once"},
                    ])
                    .to_string(),
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };

    // Wait until every expression returns data (rates need a few scrapes of moving
    // counters); an expression Prometheus rejects fails at once inside `query`.
    let mut empty: Vec<(String, String)> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while std::time::Instant::now() < deadline {
        empty = exprs
            .iter()
            .filter(|(_, e)| prometheus.query(&fill(e)).is_empty())
            .cloned()
            .collect();
        if empty.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(
        empty.is_empty(),
        "dashboard expressions without data after 90 s:\n{}",
        empty
            .iter()
            .map(|(t, e)| format!("[{t}] {}", fill(e)))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Two sidecars on the same Redis and Celery: every panel shows what one shows. The
    // panels about Redis and Celery draw no series per instance, and their values equal
    // the single sidecar's (gauges of the same Redis not summed, events not counted
    // twice); the panels about each sidecar draw the first one as the single job does.
    // Both jobs scrape the first sidecar at their own moments: values that move (ages,
    // rates) may differ by a scrape's worth, never by a factor of two. Compared while the
    // tasks flow.
    // A full minute of both jobs' scrapes first, for the rates' windows.
    let scraping = scraped_since.elapsed();
    if scraping < Duration::from_secs(65) {
        std::thread::sleep(Duration::from_secs(65) - scraping);
    }
    // A value that is off by a scrape's worth in one attempt is not in the next; one that
    // is doubled is in every one.
    let mut wrong = Vec::new();
    for _ in 0..4 {
        wrong = two_sidecars_differ(&prometheus, &exprs, &sidecar.addr.to_string());
        if wrong.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    assert!(
        wrong.is_empty(),
        "panels that differ with two sidecars:\n{}",
        wrong.join("\n")
    );

    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();

    // Some values are what the scenario makes them.
    let value = |expr: &str| -> f64 {
        let r = prometheus.query(expr);
        assert_eq!(r.len(), 1, "{expr}: {r:?}");
        r[0]["value"][1].as_str().unwrap().parse().unwrap()
    };
    assert_eq!(
        value(&format!("celery_workers_alive{{job=\"{JOB}\"}}")),
        1.0
    );
    // The queue nobody consumes.
    let emails = format!("celery_queue_length{{job=\"{JOB}\", queue_name=\"emails\"}} == 1");
    support::wait_for(
        "the emails backlog in Prometheus",
        Duration::from_secs(30),
        || (!prometheus.query(&emails).is_empty()).then_some(()),
    );
    assert_eq!(
        value(&format!("redis_up{{job=\"{JOB}\", role=\"cache\"}}")),
        1.0
    );
    // The queue whose binding set was deleted, counted by the integrity panel.
    let orphans = format!("celery_queue_unbound{{job=\"{JOB}\", queue_name=\"orphans\"}} == 1");
    support::wait_for(
        "the unbound queue in Prometheus",
        Duration::from_secs(30),
        || (!prometheus.query(&orphans).is_empty()).then_some(()),
    );
    let failed = prometheus.query(&format!(
        "celery_task_failed_total{{job=\"{JOB}\", name=\"tasks.boom\"}}"
    ));
    assert_eq!(failed[0]["metric"]["exception"], "ValueError", "{failed:?}");
    // tasks.boom never succeeds: the failure ratio panel says 100% for it (not nothing).
    let (_, ratio) = exprs
        .iter()
        .find(|(title, _)| title == "Failure ratio")
        .unwrap();
    let ratios = prometheus.query(&fill(ratio));
    let boom = ratios
        .iter()
        .find(|r| r["metric"]["name"] == "tasks.boom")
        .unwrap_or_else(|| panic!("{ratios:?}"));
    assert_eq!(boom["value"][1], "1", "{ratios:?}");

    // The variable queries: label_values(metric, label) as the label values API.
    for v in dash["templating"]["list"].as_array().unwrap() {
        let Some(q) = v["definition"].as_str() else {
            continue;
        };
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .expect("label_values(metric, label)");
        let (metric, label) = inner.rsplit_once(", ").unwrap();
        let values = prometheus.api(&format!(
            "/api/v1/label/{label}/values?match[]={}",
            query_escape(&fill(metric))
        ));
        assert!(
            !values["data"].as_array().unwrap().is_empty(),
            "variable {}: {q}",
            v["name"]
        );
    }

    // Every alert rule loaded and evaluates without error.
    let rules = prometheus.api("/api/v1/rules");
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let written =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/alerts.yml"))
            .unwrap()
            .matches("- alert: ")
            .count();
    assert_eq!(loaded.len(), written, "{rules}");
    assert!(written >= 20, "{written}");
    for r in loaded {
        assert_eq!(r["health"], "ok", "{r}");
    }
}

/// What differs between the dashboard over one sidecar (`JOB`) and over two (`PAIR`), at
/// one moment: every expression, its rates over a minute.
fn two_sidecars_differ(
    prometheus: &Prometheus,
    exprs: &[(String, String)],
    first: &str,
) -> Vec<String> {
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - 2.0;
    let mut wrong = Vec::new();
    for (title, expr) in exprs {
        let per_sidecar = PER_SIDECAR.contains(&title.as_str());
        let keep = |m: std::collections::BTreeMap<String, f64>| -> std::collections::BTreeMap<String, f64> {
            m.into_iter()
                .filter(|(labels, _)| {
                    let l: Value = serde_json::from_str(labels).unwrap();
                    l.get("instance").is_none_or(|i| i == first)
                })
                .collect()
        };
        // Over a minute: two jobs' scrapes of a counter that moves in bursts differ by a
        // burst at most.
        let wide = expr.replace("$__rate_interval", "60s");
        let one = at(prometheus, &fill_job(&wide, JOB), time);
        let two = at(prometheus, &fill_job(&wide, PAIR), time);
        if !per_sidecar && two.keys().any(|l| l.contains("\"instance\"")) {
            wrong.push(format!("[{title}] a series per sidecar: {two:?}"));
            continue;
        }
        let (one, two) = if per_sidecar {
            (keep(one), keep(two))
        } else {
            (one, two)
        };
        if one.is_empty() {
            wrong.push(format!("[{title}] no data to compare: {expr}"));
            continue;
        }
        if one.keys().ne(two.keys()) {
            wrong.push(format!("[{title}] {expr}\n  one: {one:?}\n  two: {two:?}"));
            continue;
        }
        // A sidecar's own figures, scraped by each job at its own moment: the same series.
        if per_sidecar {
            continue;
        }
        // Ages move a second a second: a scrape apart is up to two seconds apart.
        let slack = if AGES.contains(&title.as_str()) {
            2.0
        } else {
            0.05
        };
        for (labels, a) in &one {
            let b = two[labels];
            let close =
                (a.is_nan() && b.is_nan()) || (a - b).abs() <= slack + 0.25 * a.abs().max(b.abs());
            if !close {
                wrong.push(format!("[{title}] {labels}: one sidecar {a}, two {b}"));
            }
        }
    }
    wrong
}
