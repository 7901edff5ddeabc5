//! The deploy files: the alert rules (promtool check and unit tests, and that the unit tests
//! catch a broken rule), the Dockerfile (its build command is the tests' one, checked by
//! scripts/check-dockerfile, which must also catch a drift; its HEALTHCHECK command run on
//! the release binary that command built), railway.toml's health check path answering 200
//! while Redis is down, and the dashboard's shape.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::{FAST, Redis, Sidecar, TempDir};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn promtool(args: &[&str], dir: &Path) -> Output {
    Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): run scripts/test, which installs it")
        })
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let grafana = root().join("grafana");
    let out = promtool(&["check", "rules", "alerts.yml"], &grafana);
    assert!(out.status.success(), "{}", said(&out));
    assert!(
        said(&out).contains("SUCCESS: 20 rules found"),
        "{}",
        said(&out)
    );
    let out = promtool(&["test", "rules", "alerts.test.yml"], &grafana);
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).contains("SUCCESS"), "{}", said(&out));
}

#[test]
fn every_alert_has_a_summary_a_description_and_a_firing_unit_test() {
    let rules = read("grafana/alerts.yml");
    let tests = read("grafana/alerts.test.yml");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 20, "{alerts:?}");
    for a in &alerts {
        // A firing case names the alert and expects at least one alert with annotations.
        let case = tests
            .split("- eval_time:")
            .find(|c| c.contains(&format!("alertname: {a}\n")) && c.contains("exp_annotations"))
            .unwrap_or_else(|| panic!("no firing unit test for {a}"));
        assert!(
            case.contains("summary:") && case.contains("description:"),
            "{a}"
        );
        let silent = tests
            .split("- eval_time:")
            .any(|c| c.contains(&format!("alertname: {a}\n")) && c.contains("exp_alerts: []"));
        assert!(silent, "no unit test where {a} must stay silent");
    }
    assert_eq!(rules.matches("summary:").count(), alerts.len());
    assert_eq!(rules.matches("description: >-").count(), alerts.len());
}

#[test]
fn the_unit_tests_catch_a_broken_rule() {
    let dir = TempDir::new("rules");
    // The same rules with RedisDown's condition inverted: its unit test must fail.
    let broken = read("grafana/alerts.yml").replace(
        "expr: min without (instance) (redis_up) == 0",
        "expr: min without (instance) (redis_up) == 1",
    );
    assert_ne!(broken, read("grafana/alerts.yml"));
    std::fs::write(dir.path().join("alerts.yml"), broken).unwrap();
    std::fs::write(
        dir.path().join("alerts.test.yml"),
        read("grafana/alerts.test.yml"),
    )
    .unwrap();
    let out = promtool(&["test", "rules", "alerts.test.yml"], dir.path());
    assert!(!out.status.success(), "{}", said(&out));
    assert!(
        said(&out).contains("alertname: RedisDown"),
        "{}",
        said(&out)
    );
}

fn check_dockerfile(dockerfile: &Path, test_script: &Path) -> Output {
    Command::new(root().join("scripts/check-dockerfile"))
        .arg(dockerfile)
        .arg(test_script)
        .output()
        .expect("run scripts/check-dockerfile")
}

#[test]
fn the_dockerfile_builds_with_the_tests_command_and_drift_is_caught() {
    let out = check_dockerfile(&root().join("Dockerfile"), &root().join("scripts/test"));
    assert!(out.status.success(), "{}", said(&out));
    assert!(
        said(&out).starts_with("check-dockerfile: ok (cargo build --release --locked;"),
        "{}",
        said(&out)
    );
    let dir = TempDir::new("docker");
    let original = read("Dockerfile");
    for (from, to, complaint) in [
        (
            " && cargo build --release --locked \\\n && cp",
            " && cargo build --release \\\n && cp",
            "the Dockerfile runs `cargo build --release`, the tests build with `cargo build --release --locked`",
        ),
        (
            "USER 65532:65532",
            "USER root",
            "does not run as a non-root USER",
        ),
        (
            "EXPOSE 9811",
            "EXPOSE 8080",
            "does not EXPOSE the default port 9811",
        ),
        (
            "CMD [\"/usr/local/bin/redis-celery-sidecar\", \"check\"]",
            "CMD curl -f http://localhost:9811/livez",
            "not in exec form",
        ),
        (
            "FROM gcr.io/distroless/cc-debian12:nonroot",
            "FROM rust:1.95-bookworm",
            "neither distroless nor slim",
        ),
    ] {
        assert!(original.contains(from), "{from}");
        let path = dir.path().join("Dockerfile");
        std::fs::write(&path, original.replace(from, to)).unwrap();
        let out = check_dockerfile(&path, &root().join("scripts/test"));
        assert_eq!(out.status.code(), Some(1), "{to}: {}", said(&out));
        assert!(
            said(&out).contains(complaint),
            "{complaint}: {}",
            said(&out)
        );
    }
    // And the other way: the test command changing alone.
    let script = dir.path().join("test");
    std::fs::write(
        &script,
        read("scripts/test").replace(
            "cargo build --release --locked\n",
            "cargo build --release --locked --features x\n",
        ),
    )
    .unwrap();
    let out = check_dockerfile(&root().join("Dockerfile"), &script);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(said(&out).contains("--features x"), "{}", said(&out));
}

/// The release binary scripts/test built with the Dockerfile's command.
fn release_bin() -> PathBuf {
    let bin = std::env::var_os("SIDECAR_TEST_RELEASE_BIN").map(PathBuf::from);
    match bin {
        Some(b) if b.exists() => b,
        _ => panic!(
            "SIDECAR_TEST_RELEASE_BIN is not the release binary: run scripts/test, which builds it with the Dockerfile's command"
        ),
    }
}

/// The Dockerfile's HEALTHCHECK command (exec form).
fn healthcheck_argv() -> Vec<String> {
    let docker = read("Dockerfile");
    let at = docker.find("HEALTHCHECK").expect("a HEALTHCHECK");
    let cmd = docker[at..].split("CMD ").nth(1).expect("CMD");
    let line = cmd.lines().next().unwrap();
    serde_json::from_str(line).expect("exec form")
}

#[test]
fn the_healthcheck_command_runs_on_the_release_binary() {
    let argv = healthcheck_argv();
    assert_eq!(argv[0], "/usr/local/bin/redis-celery-sidecar");
    let redis = Redis::start(&[]);
    let run = |url: &str| {
        let dir = TempDir::new("health");
        Command::new(release_bin())
            .args(&argv[1..])
            .env_clear()
            .env("REDIS_URL", url)
            .env("SIDECAR_CELERY_MIN_WORKERS", "0")
            .current_dir(dir.path())
            .output()
            .expect("run the release binary")
    };
    let out = run(&redis.url());
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(said(&out).contains("overall: healthy"), "{}", said(&out));
    let dead = format!("redis://127.0.0.1:{}/0", support::free_port());
    let out = run(&dead);
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(said(&out).contains("connection refused"), "{}", said(&out));
}

#[test]
fn the_release_binary_needs_only_what_distroless_cc_provides() {
    let out = Command::new("ldd")
        .arg(release_bin())
        .output()
        .expect("run ldd");
    assert!(out.status.success(), "{}", said(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let libs: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(libs.iter().any(|l| l.starts_with("libc.so")), "{text}");
    for lib in libs {
        let name = lib.rsplit('/').next().unwrap();
        assert!(
            [
                "linux-vdso.so",
                "libc.so",
                "libm.so",
                "libgcc_s.so",
                "ld-linux"
            ]
            .iter()
            .any(|ok| name.starts_with(ok)),
            "{name} is not in gcr.io/distroless/cc: {text}"
        );
    }
}

#[test]
fn railways_health_check_path_answers_200_while_redis_is_down() {
    let toml = read("railway.toml");
    assert!(toml.contains("builder = \"DOCKERFILE\""), "{toml}");
    assert!(
        toml.contains("restartPolicyType = \"ON_FAILURE\""),
        "{toml}"
    );
    let path = toml
        .lines()
        .find_map(|l| l.strip_prefix("healthcheckPath = "))
        .expect("healthcheckPath")
        .trim_matches('"')
        .to_string();
    let dead = format!("redis://127.0.0.1:{}/0", support::free_port());
    let mut env = FAST.to_vec();
    env.push(("REDIS_URL", &dead));
    let sidecar = Sidecar::start(&env);
    // Once the first probe failed, /readyz says 503; the deploy check path still says 200.
    sidecar.wait_status("/readyz", 503);
    assert_eq!(sidecar.get(&path).status, 200, "{path}");
}

#[test]
fn the_dashboard_has_a_datasource_variable_and_every_panel_uses_it() {
    let dash: Value = serde_json::from_str(&read("grafana/dashboard.json")).expect("JSON");
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert_eq!(vars[0]["type"], "datasource");
    assert_eq!(vars[0]["query"], "prometheus");
    let panels = dash["panels"].as_array().unwrap();
    let mut titles = Vec::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
        titles.push(p["title"].as_str().unwrap());
    }
    for wanted in [
        "Redis up",
        "PING latency p50 / p99",
        "Clients vs maxclients",
        "Memory vs maxmemory",
        "Evictions and rejected connections",
        "Sidecar pool",
        "Workers alive",
        "Active tasks per worker",
        "Queue length",
        "Oldest waiting task",
        "Reservations",
        "Task rates by outcome",
        "Task runtime p95",
        "Check status",
    ] {
        assert!(titles.contains(&wanted), "no panel {wanted}: {titles:?}");
    }
}
