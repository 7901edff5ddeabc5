//! Every example in README.md and docs/: each fenced block is either run here and compared
//! with what the sidecar really prints (digits masked: ports, timings and sizes differ from
//! run to run), or listed with what else runs it. A block added to the docs without either
//! fails `every_example_is_accounted_for`.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::{FAST, Redis, Sidecar, TempDir, Worker, free_port, run, send, wait_for};

/// A fenced block: its file, language and text.
struct Block {
    file: String,
    lang: String,
    text: String,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The fenced blocks of README.md and docs/*.md, in order.
fn blocks() -> Vec<Block> {
    let mut files = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok())
        .map(|e| format!("docs/{}", e.file_name().to_string_lossy()))
        .filter(|f| f.ends_with(".md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        let mut current: Option<Block> = None;
        for line in text.lines() {
            match (&mut current, line.strip_prefix("```")) {
                (None, Some(lang)) if !lang.is_empty() => {
                    current = Some(Block {
                        file: file.clone(),
                        lang: lang.to_string(),
                        text: String::new(),
                    });
                }
                (Some(_), Some("")) => out.push(current.take().unwrap()),
                (Some(b), _) => {
                    b.text.push_str(line);
                    b.text.push('\n');
                }
                _ => {}
            }
        }
    }
    out
}

/// The block of `file` whose text starts with `start`.
fn block(file: &str, start: &str) -> String {
    blocks()
        .into_iter()
        .find(|b| b.file == file && b.text.starts_with(start))
        .unwrap_or_else(|| panic!("no block starting {start:?} in {file}"))
        .text
}

/// Every block, by file and first line, and what runs it: a test of this file, or another.
const ACCOUNTED: &[(&str, &str, &str)] = &[
    (
        "docs/least-privilege.md",
        "ACL SETUSER sidecar ",
        "tests/acl.rs creates users with these lines and finds ACL LOG empty",
    ),
    (
        "docs/without-prometheus.md",
        "OTEL_EXPORTER_OTLP_ENDPOINT=https://",
        "two_variables_push_metrics_and_traces",
    ),
    (
        "README.md",
        "cargo run --release",
        "tests/deploy.rs runs the release binary this builds (with its own Redis: with no settings it would probe the machine's shared one)",
    ),
    ("README.md", "scripts/test", ".ci/run runs exactly this"),
    (
        "README.md",
        "redis-celery-sidecar: configuration error: SIDECAR_PROBE_TIMEOUT",
        "readme_configuration_errors_are_what_the_binary_prints",
    ),
    (
        "README.md",
        "redis:cache  healthy",
        "readme_check_sample_is_what_check_prints",
    ),
    (
        "docs/celery.md",
        "\"celery\": {",
        "celery_and_kombu_docs_have_the_shape_of_a_real_celery_check",
    ),
    (
        "docs/check.md",
        "$ redis-celery-sidecar check --ping",
        "tests/diagnose.rs and tests/celery.rs assert each of its lines (a ping of two live workers, a WRONGPASS)",
    ),
    (
        "docs/dashboard.md",
        "scrape_configs:",
        "dashboard_scrape_config_passes_promtool",
    ),
    (
        "docs/deploy.md",
        "docker build",
        "needs Docker and a registry: scripts/check-dockerfile holds the Dockerfile's build command to the tests' own",
    ),
    (
        "docs/endpoints.md",
        "$ curl -s localhost:9811/readyz?verbose",
        "endpoints_samples_are_what_the_server_answers",
    ),
    (
        "docs/endpoints.md",
        "{",
        "endpoints_samples_are_what_the_server_answers",
    ),
    (
        "docs/kombu.md",
        "\"celery\": {",
        "celery_and_kombu_docs_have_the_shape_of_a_real_celery_check",
    ),
    (
        "docs/performance.md",
        "scripts/bench-report",
        "scripts_take_the_flags_the_docs_show (the report itself takes 30 minutes: BENCHMARKS.md is its output)",
    ),
    (
        "docs/performance.md",
        "scripts/soak",
        "scripts_take_the_flags_the_docs_show",
    ),
    (
        "docs/sentinel.md",
        "app.conf.broker_url = (",
        "tests/sentinel.rs runs a real Celery worker set up so (tests/celery/tasks.py: master_name, sentinel_kwargs' password) beside the sidecar given the matching variables",
    ),
    (
        "docs/status-page.md",
        "{",
        "celery_and_kombu_docs_have_the_shape_of_a_real_celery_check (both blocks)",
    ),
    (
        "docs/traces.md",
        "# A collector on Railway",
        "traces_settings_are_accepted",
    ),
    (
        "docs/urls.md",
        "  tls             ok    TLSv1_3, certificate verified by the CA in",
        "tests/urls.rs and tests/tls.rs assert each phrase of this step",
    ),
];

#[test]
fn every_example_is_accounted_for() {
    let mut missing = Vec::new();
    for b in blocks() {
        let first = b.text.lines().next().unwrap_or("");
        if !ACCOUNTED
            .iter()
            .any(|(f, start, _)| *f == b.file && first.starts_with(start))
        {
            missing.push(format!("{} ```{}: {first}", b.file, b.lang));
        }
    }
    assert!(
        missing.is_empty(),
        "blocks nothing runs (test them, or say in ACCOUNTED what does): {missing:#?}"
    );
}

/// Digits masked: ports, timings, sizes and counts differ from run to run.
fn masked(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut digits = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !digits {
                out.push('N');
            }
            digits = true;
        } else if c == '.' && digits {
            // "1.0" and "0.16" mask the same.
        } else {
            digits = false;
            out.push(c);
        }
    }
    out
}

#[test]
fn readme_configuration_errors_are_what_the_binary_prints() {
    let sample = block(
        "README.md",
        "redis-celery-sidecar: configuration error: SIDECAR_PROBE_TIMEOUT",
    );
    let envs: [&[(&str, &str)]; 2] = [
        &[("SIDECAR_PROBE_TIMEOUT", "9s")],
        &[("REDIS_URL", "http://u:s3cret@h:6379")],
    ];
    let lines: Vec<&str> = sample.lines().collect();
    assert_eq!(lines.len(), envs.len(), "{sample}");
    for (line, env) in lines.iter().zip(envs) {
        let out = run(&["config"], env);
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim_end(), *line);
    }
}

#[test]
fn readme_check_sample_is_what_check_prints() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let out = run(&["check"], &[("REDIS_URL", url.as_str())]);
    assert_eq!(out.status.code(), Some(1));
    let real = String::from_utf8_lossy(&out.stdout).into_owned();
    let sample = block("README.md", "redis:cache  healthy");
    assert_eq!(masked(&sample), masked(&real), "the real output:\n{real}");
}

#[test]
fn endpoints_samples_are_what_the_server_answers() {
    let cache = Redis::start(&["--requirepass", "pw"]);
    let cache_url = format!("redis://default:pw@127.0.0.1:{}/0", cache.port);
    let broker_url = format!("redis://127.0.0.1:{}/0", free_port());
    let mut env: Vec<(&str, &str)> = FAST.to_vec();
    env.extend([
        ("REDIS_URL", cache_url.as_str()),
        ("CELERY_BROKER_URL", broker_url.as_str()),
    ]);
    let sidecar = Sidecar::start(&env);
    let ready = wait_for("both checks reported", Duration::from_secs(15), || {
        let r = sidecar.get("/readyz?verbose");
        (r.body.contains("[+]redis:cache") && r.body.contains("[-]redis:broker")).then_some(r)
    });
    let sample = block(
        "docs/endpoints.md",
        "$ curl -s localhost:9811/readyz?verbose",
    );
    let shown: String = sample.lines().skip(1).map(|l| format!("{l}\n")).collect();
    assert_eq!(
        masked(&shown),
        masked(&ready.body),
        "the real answer:\n{}",
        ready.body
    );

    let health = sidecar.get("/healthz").json();
    let doc: Value = serde_json::from_str(&block("docs/endpoints.md", "{")).expect("JSON");
    assert_eq!(keys(&doc), keys(&health));
    for name in ["redis:cache", "redis:broker"] {
        same_shape(&doc["checks"][name], &health["checks"][name], name);
    }
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// The same keys at every level of objects (and of the first element of arrays); under
/// `queues`, every queue has the keys the docs can show.
fn same_shape(doc: &Value, real: &Value, path: &str) {
    match (doc, real) {
        (Value::Object(d), Value::Object(r)) if path.ends_with("queues") => {
            const ALWAYS: [&str; 3] = ["length", "oldest_age_seconds", "oldest_task"];
            const SOMETIMES: [&str; 3] = ["idle_seconds", "unbound", "stranded"];
            for (name, q) in d.iter().chain(r.iter()) {
                let k = keys(q);
                assert!(
                    ALWAYS.iter().all(|a| k.iter().any(|x| x == a))
                        && k.iter().all(
                            |x| ALWAYS.contains(&x.as_str()) || SOMETIMES.contains(&x.as_str())
                        ),
                    "{path}.{name}: {k:?}"
                );
            }
        }
        (Value::Object(d), Value::Object(r)) => {
            assert_eq!(keys(doc), keys(real), "{path}: the docs vs a real answer");
            for (k, v) in d {
                same_shape(v, &r[k], &format!("{path}.{k}"));
            }
        }
        (Value::Array(d), Value::Array(r)) => {
            if let (Some(a), Some(b)) = (d.first(), r.first()) {
                same_shape(a, b, &format!("{path}[0]"));
            }
        }
        _ => {}
    }
}

#[test]
fn celery_and_kombu_docs_have_the_shape_of_a_real_celery_check() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let app = [("BROKER_URL", url.as_str())];
    let mut env: Vec<(&str, &str)> = FAST.to_vec();
    env.push(("CELERY_BROKER_URL", url.as_str()));
    let sidecar = Sidecar::start(&env);
    let worker = Worker::start(&app, "w1@docs", &["-P", "solo", "-Q", "celery"]);
    worker.wait_ready();
    // A task in a queue nobody consumes: its queue shows the optional fields too.
    send(
        &app,
        r#"[{"task": "add", "args": [1, 1], "queue": "emails"}]"#,
    );
    let real = wait_for(
        "a worker alive and the queue seen",
        Duration::from_secs(30),
        || {
            let c = sidecar.get("/healthz").json()["checks"]["celery"].clone();
            (c["workers_alive"] == 1 && c["queues"]["emails"]["length"] == 1).then_some(c)
        },
    );
    let doc: Value =
        serde_json::from_str(&format!("{{{}}}", block("docs/celery.md", "\"celery\": {")))
            .expect("docs/celery.md's block is JSON");
    same_shape(&doc["celery"], &real, "celery");
    let queue: Value =
        serde_json::from_str(&format!("{{{}}}", block("docs/kombu.md", "\"celery\": {")))
            .expect("docs/kombu.md's block is JSON");
    same_shape(&queue, &real["queues"], "queues");

    // The status page's documents: the same keys as a real answer, each kind of event
    // against a real one of its kind.
    let history = sidecar.get("/api/history").json();
    let doc: Value =
        serde_json::from_str(&block("docs/status-page.md", "{\n  \"interval_seconds\""))
            .expect("docs/status-page.md's history block is JSON");
    same_shape(&doc, &history, "history");
    assert_eq!(history["queues"][0]["name"], "emails", "{history}");
    let events = sidecar.get("/api/events").json();
    let doc: Value = serde_json::from_str(&block("docs/status-page.md", "{\n  \"capacity\""))
        .expect("docs/status-page.md's events block is JSON");
    assert_eq!(keys(&doc), keys(&events));
    for shown in doc["events"].as_array().unwrap() {
        let real = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == shown["kind"])
            .unwrap_or_else(|| panic!("no {} event in {events:#}", shown["kind"]));
        assert_eq!(keys(shown), keys(real), "{shown} vs {real}");
    }
}

#[test]
fn dashboard_scrape_config_passes_promtool() {
    let dir = TempDir::new("docs-prom");
    let alerts = root().join("grafana/alerts.yml");
    let config = block("docs/dashboard.md", "scrape_configs:")
        .replace("grafana/alerts.yml", alerts.to_str().unwrap());
    let file = dir.path().join("prometheus.yml");
    std::fs::write(&file, config).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "config"])
        .arg(&file)
        .output()
        .expect("promtool (scripts/test installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn scripts_take_the_flags_the_docs_show() {
    for start in ["scripts/bench-report", "scripts/soak"] {
        let shown = block("docs/performance.md", start);
        let script = shown.split_whitespace().next().unwrap();
        let out = std::process::Command::new(root().join(script))
            .arg("--help")
            .output()
            .unwrap_or_else(|e| panic!("{script}: {e}"));
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{script} --help: {help}");
        let flags: Vec<&str> = shown
            .split(|c: char| c.is_whitespace() || c == '[' || c == ']')
            .filter(|w| w.starts_with("--"))
            .collect();
        for flag in flags {
            assert!(help.contains(flag), "{script} --help lacks {flag}: {help}");
        }
    }
}

#[test]
fn traces_settings_are_accepted() {
    let shown = block("docs/traces.md", "# A collector on Railway");
    for line in shown.lines().filter(|l| !l.starts_with('#')) {
        let env: Vec<(&str, &str)> = line
            .split_whitespace()
            .map(|pair| pair.split_once('=').expect("NAME=value"))
            .collect();
        let endpoint = env
            .iter()
            .find(|(k, _)| *k == "OTEL_EXPORTER_OTLP_ENDPOINT")
            .unwrap()
            .1;
        let out = run(&["config"], &env);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{line}: {out:?}");
        assert!(
            text.contains(endpoint.trim_end_matches('/')),
            "{line}: {text}"
        );
    }
}

#[test]
fn two_variables_push_metrics_and_traces() {
    let shown = block(
        "docs/without-prometheus.md",
        "OTEL_EXPORTER_OTLP_ENDPOINT=https://",
    );
    let env: Vec<(&str, &str)> = shown
        .lines()
        .map(|l| l.split_once('=').expect("NAME=value"))
        .collect();
    let out = run(&["config"], &env);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let base = env[0].1;
    assert!(
        text.contains(&format!("http/protobuf to {base}/v1/metrics every 60s")),
        "{text}"
    );
    assert!(
        text.contains(&format!("http/protobuf to {base}/v1/traces")),
        "{text}"
    );
    assert!(text.contains("authorization=***"), "{text}");
    assert!(!text.contains("dXNlcjp0b2tlbg"), "{text}");
}
