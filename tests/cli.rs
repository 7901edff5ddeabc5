//! The binary's commands and exit codes: bad settings exit 2 naming the variable, `config`
//! prints the effective configuration redacted, `.env` is read, `check` exits 0 or 1.

mod support;

use support::{Redis, TempDir, command, run};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Each bad setting: exit 2, one line on stderr naming the variable, no secret echoed.
#[test]
fn bad_settings_exit_2_naming_the_variable() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "REDIS_URL",
            "http://u:Secret-91@h",
            "REDIS_URL (--redis-url): scheme \"http\" is not supported",
        ),
        (
            "REDIS_URL",
            "redis://u:Secret-91@h:99999",
            "REDIS_URL (--redis-url): invalid port: out of range 0-65535",
        ),
        (
            "CELERY_BROKER_URL",
            "redis://u:Secret-91@h/db1",
            "CELERY_BROKER_URL (--celery-broker-url): database \"db1\"",
        ),
        (
            "REDIS_URL",
            "socket:///run/redis.sock",
            "REDIS_URL (--redis-url): socket:// is refused by Celery and kombu",
        ),
        (
            "REDIS_URL",
            "redis://default:Secret-91/x@h:6379/0",
            "REDIS_URL (--redis-url): the URL's user or password seems to hold a /, ?, # or @ that is not percent-encoded, so the URL is cut there: percent-encode the password",
        ),
        (
            "SIDECAR_MAX_CONNECTIONS",
            "0",
            "SIDECAR_MAX_CONNECTIONS (--max-connections): \"0\" is not a whole number from 1 to 1000000",
        ),
        (
            "REDISPORT",
            "six",
            "REDISPORT (--redis-port): \"six\" is not a port",
        ),
        (
            "CELERY_BROKER_URL",
            "amqp://u:Secret-91@rabbit//",
            "CELERY_BROKER_URL (--celery-broker-url): scheme \"amqp\"",
        ),
        (
            "CELERY_RESULT_BACKEND",
            "rediss://u:Secret-91@h:x",
            "CELERY_RESULT_BACKEND (--celery-result-backend): the port is not a number",
        ),
        ("PORT", "eighty", "PORT (--port): \"eighty\" is not a port"),
        (
            "SIDECAR_LISTEN_ADDR",
            "::9811",
            "SIDECAR_LISTEN_ADDR (--listen-addr): \"::9811\" is not an address:port",
        ),
        (
            "SIDECAR_PROBE_INTERVAL",
            "5",
            "SIDECAR_PROBE_INTERVAL (--probe-interval): \"5\" is not a duration",
        ),
        (
            "SIDECAR_PROBE_TIMEOUT",
            "9s",
            "SIDECAR_PROBE_TIMEOUT (--probe-timeout): 9s must be shorter than the probe interval 5s",
        ),
        (
            "SIDECAR_LATENCY_SLO",
            "fast",
            "SIDECAR_LATENCY_SLO (--latency-slo): \"fast\" is not a duration",
        ),
        (
            "SIDECAR_READY_CHECKS",
            "celery-ish",
            "SIDECAR_READY_CHECKS (--ready-checks): \"celery-ish\" is not a check",
        ),
        (
            "SIDECAR_AUTH_TOKEN",
            "",
            "SIDECAR_AUTH_TOKEN (--auth-token) is set but empty",
        ),
        (
            "SIDECAR_LOG_FORMAT",
            "yaml",
            "SIDECAR_LOG_FORMAT (--log-format): \"yaml\" is not a log format",
        ),
        ("RUST_LOG", "debug,=[", "RUST_LOG (--log-level):"),
    ];
    for (var, value, want) in cases {
        let mut env = vec![(*var, *value)];
        if *var == "REDISPORT" {
            env.push(("REDISHOST", "localhost"));
        }
        for args in [&[][..], &["check"], &["config"]] {
            let out = run(args, &env);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{var}={value} {args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
            assert!(
                err.contains(want),
                "{var}={value}:\n got: {err}\nwant: {want}"
            );
            assert!(!err.contains("Secret-91"), "{err}");
        }
    }
}

#[test]
fn flags_win_over_variables() {
    let out = run(
        &["config", "--probe-interval", "2s"],
        &[("SIDECAR_PROBE_INTERVAL", "7s")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("probe interval     2s"),
        "{}",
        stdout(&out)
    );
    let out = run(&["--probe-interval", "nope", "config"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("SIDECAR_PROBE_INTERVAL (--probe-interval)"));
}

/// Only a short interval set (as on Railway with `ON_FAILURE` restarts, where an exit is a
/// crash loop): it starts, with a timeout and an SLO that follow it.
#[test]
fn a_short_interval_alone_starts() {
    for (interval, timeout, slo) in [("1s", "800ms", "100ms"), ("100ms", "80ms", "64ms")] {
        let out = run(&["config"], &[("SIDECAR_PROBE_INTERVAL", interval)]);
        assert_eq!(out.status.code(), Some(0), "{interval}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(
            text.contains(&format!("probe timeout      {timeout}\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("latency SLO        {slo}\n")),
            "{text}"
        );
    }
    let redis = Redis::start(&[]);
    let sidecar = support::Sidecar::start(&[
        ("REDIS_URL", &redis.url()),
        ("SIDECAR_PROBE_INTERVAL", "1s"),
        ("SIDECAR_CELERY_MIN_WORKERS", "0"),
    ]);
    sidecar.wait_status("/readyz", 200);
}

#[test]
fn config_prints_the_effective_configuration_redacted() {
    let out = run(
        &["config"],
        &[
            (
                "REDIS_URL",
                "redis://default:Secret-91@redis.railway.internal:6379",
            ),
            (
                "CELERY_BROKER_URL",
                "redis://default:Secret-91@redis.railway.internal:6379/0",
            ),
            (
                "CELERY_RESULT_BACKEND",
                "redis://default:Secret-91@redis.railway.internal:6379/1",
            ),
            ("PORT", "8080"),
            ("SIDECAR_AUTH_TOKEN", "Tok-1234567"),
        ],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        text.contains(
            "redis:cache,redis:broker           redis://default:***@redis.railway.internal:6379/0"
        ),
        "one target, two checks: {text}"
    );
    assert!(text.contains("redis:result_backend"), "{text}");
    assert!(
        text.contains("redis://default:***@redis.railway.internal:6379/1"),
        "{text}"
    );
    assert!(text.contains("listen             [::]:8080"), "{text}");
    assert!(text.contains("auth token         set (***)"), "{text}");
    assert!(
        !text.contains("Secret-91") && !text.contains("Tok-1234567"),
        "{text}"
    );
}

#[test]
fn no_settings_probe_the_local_default() {
    let out = run(&["config"], &[]);
    let text = stdout(&out);
    assert!(
        text.contains("redis:cache                        redis://127.0.0.1:6379/0"),
        "{text}"
    );
    assert!(text.contains("probing the local default"), "{text}");
    assert!(text.contains("listen             [::]:9811"), "{text}");
}

#[test]
fn dotenv_is_read_and_a_broken_one_is_an_error() {
    let dir = TempDir::new("dotenv");
    std::fs::write(
        dir.path().join(".env"),
        "REDIS_URL=redis://:Secret-91@10.1.2.3:6390/2\nSIDECAR_PROBE_INTERVAL=3s\n",
    )
    .unwrap();
    let out = command(&[], dir.path()).arg("config").output().unwrap();
    let text = stdout(&out);
    assert!(text.contains("redis://:***@10.1.2.3:6390/2"), "{text}");
    assert!(text.contains("probe interval     3s"), "{text}");
    // The environment wins over .env.
    let out = command(&[("SIDECAR_PROBE_INTERVAL", "4s")], dir.path())
        .arg("config")
        .output()
        .unwrap();
    assert!(stdout(&out).contains("probe interval     4s"));

    std::fs::write(dir.path().join(".env"), "REDIS_URL='redis://:Secret-91@h\n").unwrap();
    let out = command(&[], dir.path()).arg("config").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(".env line 1: a value in single quotes is never closed"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("Secret-91"));
}

#[test]
fn help_does_not_print_variable_values() {
    let out = run(&["--help"], &[("REDIS_URL", "redis://:Secret-91@h:6379")]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(text.contains("REDIS_URL"), "{text}");
    assert!(!text.contains("Secret-91"), "{text}");
}

#[test]
fn check_exits_0_when_healthy_and_1_naming_the_cause_otherwise() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let one_shot = |pairs: &[(&'static str, &str)]| {
        let mut e: Vec<(&str, &str)> = support::ONE_SHOT.to_vec();
        e.extend_from_slice(pairs);
        run(&["check"], &e)
    };
    let out = one_shot(&[("REDIS_URL", &url)]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.starts_with("redis:cache  healthy  redis://127.0.0.1:"),
        "{text}"
    );
    // Every step, aligned: name, verdict, detail.
    for line in [
        "\n  url             ok    redis://127.0.0.1:",
        "\n  dns             ok    127.0.0.1 is an address: no lookup\n",
        "\n  tcp             ok    127.0.0.1:",
        "\n  auth            skip  no password in the URL\n",
        "\n  ping            ok    PONG in ",
        "\n  info            ok    redis ",
        "\ncelery  healthy  redis://127.0.0.1:",
        "\n  celery queues   ok    celery 0; unacked 0, orphaned 0\n",
        "\n  celery workers  ok    subscribed to /0.celeryev/*; no worker required (SIDECAR_CELERY_MIN_WORKERS=0), none waited for\n",
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
    assert!(text.ends_with("overall: healthy\n"), "{text}");

    let dead = format!("redis://127.0.0.1:{}/0", support::free_port());
    let out = one_shot(&[("REDIS_URL", &url), ("CELERY_BROKER_URL", &dead)]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("\nredis:broker  unhealthy"), "{text}");
    assert!(
        text.contains("  tcp            FAIL  connection refused by 127.0.0.1:"),
        "{text}"
    );
    assert!(
        text.contains("                       fix: start Redis"),
        "{text}"
    );
    // The Celery check says why it cannot run.
    assert!(
        text.contains("  celery broker  FAIL  the broker is not usable: connection refused"),
        "{text}"
    );
    assert!(text.ends_with("overall: unhealthy\n"), "{text}");

    let out = one_shot(&[("REDIS_URL", "redis://no-such-host.invalid:6379")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("  dns            FAIL  DNS lookup of no-such-host.invalid failed"),
        "{}",
        stdout(&out)
    );
}
