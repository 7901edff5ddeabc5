//! A real Prometheus server (Debian's `prometheus`) scrapes a real sidecar watching a real
//! Redis and a real Celery worker running tasks (some failing), with the alert rules
//! loaded. Every expression of the Grafana dashboard, its variables filled in, is evaluated
//! through Prometheus's HTTP API: none errors and each returns data. The dashboard's
//! variable queries return values, and every alert rule evaluates without error.

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
    fn start(target: SocketAddr) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        );
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
    expr.replace("$__rate_interval", "30s")
        .replace("$job", JOB)
        .replace("$role", ".*")
        .replace("$queue", ".*")
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
    let prometheus = Prometheus::start(sidecar.addr);
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
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    assert!(
        empty.is_empty(),
        "dashboard expressions without data after 90 s:\n{}",
        empty
            .iter()
            .map(|(t, e)| format!("[{t}] {}", fill(e)))
            .collect::<Vec<_>>()
            .join("\n")
    );

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
    assert_eq!(loaded.len(), 18, "{rules}");
    for r in loaded {
        assert_eq!(r["health"], "ok", "{r}");
    }
}
