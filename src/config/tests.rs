use super::*;
use crate::text::{escape, unescape};

pub(super) fn settings(pairs: &[(&str, &str)]) -> Settings {
    let mut s = Settings::default();
    for (k, v) in pairs {
        let v = Some(v.to_string());
        match *k {
            "REDIS_URL" => s.redis_url = v,
            "REDISHOST" => s.redis_host = v,
            "REDISPORT" => s.redis_port = v,
            "REDISUSER" => s.redis_user = v,
            "REDISPASSWORD" => s.redis_password = v,
            "CELERY_BROKER_URL" => s.celery_broker_url = v,
            "CELERY_RESULT_BACKEND" => s.celery_result_backend = v,
            "SIDECAR_LISTEN_ADDR" => s.listen_addr = v,
            "PORT" => s.port = v,
            "SIDECAR_PROBE_INTERVAL" => s.probe_interval = v,
            "SIDECAR_PROBE_TIMEOUT" => s.probe_timeout = v,
            "SIDECAR_LATENCY_SLO" => s.latency_slo = v,
            "SIDECAR_AUTH_RECHECK" => s.auth_recheck = v,
            "SIDECAR_READY_CHECKS" => s.ready_checks = v,
            "SIDECAR_AUTH_TOKEN" => s.auth_token = v,
            "SIDECAR_MAX_CONNECTIONS" => s.max_connections = v,
            "SIDECAR_HISTORY_QUEUES" => s.history_queues = v,
            "SIDECAR_LOG_FORMAT" => s.log_format = v,
            "RUST_LOG" => s.log_level = v,
            "SIDECAR_CELERY_QUEUES" => s.celery_queues = v,
            "SIDECAR_CELERY_MIN_WORKERS" => s.celery_min_workers = v,
            "SIDECAR_CELERY_KEYPREFIX" => s.celery_keyprefix = v,
            "SIDECAR_CELERY_SEP" => s.celery_sep = v,
            "SIDECAR_CELERY_PRIORITY_STEPS" => s.celery_priority_steps = v,
            "SIDECAR_CELERY_VISIBILITY_TIMEOUT" => s.celery_visibility_timeout = v,
            "SIDECAR_CELERY_HEARTBEAT_MISSES" => s.celery_heartbeat_misses = v,
            "SIDECAR_CELERY_STALL_AFTER" => s.celery_stall_after = v,
            "SIDECAR_CELERY_RUNNING_MAX" => s.celery_running_max = v,
            "SIDECAR_CELERY_MAX_WORKERS" => s.celery_max_workers = v,
            "SIDECAR_CELERY_FORGET_AFTER" => s.celery_forget_after = v,
            "SIDECAR_CELERY_BEAT_EXPECT" => s.celery_beat_expect = v,
            "SIDECAR_NOTIFY_URL" => s.notify_url = v,
            "SIDECAR_NOTIFY_FORMAT" => s.notify_format = v,
            "SIDECAR_NOTIFY_AFTER" => s.notify_after = v,
            "SSL_CERT_FILE" => s.ssl_cert_file = v,
            "SIDECAR_CELERY_REDBEAT_KEY_PREFIX" => s.celery_redbeat_key_prefix = v,
            "OTEL_EXPORTER_OTLP_ENDPOINT" => s.otel_endpoint = v,
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => s.otel_traces_endpoint = v,
            "OTEL_EXPORTER_OTLP_PROTOCOL" => s.otel_protocol = v,
            "OTEL_EXPORTER_OTLP_HEADERS" => s.otel_headers = v,
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS" => s.otel_traces_headers = v,
            "OTEL_EXPORTER_OTLP_TIMEOUT" => s.otel_timeout = v,
            "OTEL_SERVICE_NAME" => s.otel_service_name = v,
            "OTEL_RESOURCE_ATTRIBUTES" => s.otel_resource_attributes = v,
            "OTEL_TRACES_SAMPLER" => s.otel_traces_sampler = v,
            "OTEL_TRACES_SAMPLER_ARG" => s.otel_traces_sampler_arg = v,
            "OTEL_SDK_DISABLED" => s.otel_sdk_disabled = v,
            "OTEL_TRACES_EXPORTER" => s.otel_traces_exporter = v,
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT" => s.otel_metrics_endpoint = v,
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL" => s.otel_metrics_protocol = v,
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS" => s.otel_metrics_headers = v,
            "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT" => s.otel_metrics_timeout = v,
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE" => s.otel_metrics_temporality = v,
            "OTEL_METRIC_EXPORT_INTERVAL" => s.otel_metric_export_interval = v,
            "OTEL_METRICS_EXPORTER" => s.otel_metrics_exporter = v,
            other => panic!("unknown variable {other}"),
        }
    }
    s
}

#[test]
fn defaults() {
    let c = Config::from_settings(&Settings::default()).unwrap();
    assert!(c.default_target);
    assert_eq!(c.targets.len(), 1);
    assert_eq!(c.targets[0].redacted(), "redis://127.0.0.1:6379/0");
    assert_eq!(c.targets[0].check_names(), ["redis:cache"]);
    assert_eq!(c.listen.to_string(), "[::]:9811");
    assert_eq!(c.probe_interval, Duration::from_secs(5));
    assert_eq!(c.probe_timeout, Duration::from_secs(1));
    assert_eq!(c.latency_slo, Duration::from_millis(100));
    assert_eq!(c.auth_recheck, Duration::from_secs(30));
    assert_eq!(c.ready_checks, vec!["redis:cache"]);
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.log_filter, "info");
    assert!(c.auth_token.is_none());
}

#[test]
fn railway_variables() {
    let c = Config::from_settings(&settings(&[
        ("REDISHOST", "redis.railway.internal"),
        ("REDISPORT", "6379"),
        ("REDISUSER", "default"),
        ("REDISPASSWORD", "pw"),
        ("PORT", "8080"),
    ]))
    .unwrap();
    assert_eq!(
        c.targets[0].redacted(),
        "redis://default:***@redis.railway.internal:6379/0"
    );
    assert_eq!(c.listen.to_string(), "[::]:8080");
    assert!(!c.default_target);
}

#[test]
fn roles_sharing_a_server_are_one_target() {
    let c = Config::from_settings(&settings(&[
        ("REDIS_URL", "redis://:pw@h:6379"),
        ("CELERY_BROKER_URL", "redis://:pw@h:6379/0"),
        ("CELERY_RESULT_BACKEND", "redis://:pw@h:6379/1"),
    ]))
    .unwrap();
    assert_eq!(c.targets.len(), 2, "one probe per distinct server and db");
    assert_eq!(c.targets[0].check_names(), ["redis:cache", "redis:broker"]);
    assert_eq!(c.targets[1].check_names(), ["redis:result_backend"]);
    assert_eq!(
        c.ready_checks,
        ["redis:cache", "redis:broker", "redis:result_backend"]
    );
}

#[test]
fn ready_checks_pick_roles() {
    let c = Config::from_settings(&settings(&[
        ("REDIS_URL", "redis://h:6379"),
        ("CELERY_BROKER_URL", "redis://h:6379/0"),
        ("SIDECAR_READY_CHECKS", "redis:broker"),
    ]))
    .unwrap();
    assert_eq!(c.ready_checks, vec!["redis:broker"]);
}

#[test]
fn non_redis_result_backend_is_noted_not_probed() {
    let c = Config::from_settings(&settings(&[(
        "CELERY_RESULT_BACKEND",
        "db+postgresql://u:pw@db/app",
    )]))
    .unwrap();
    assert!(c.default_target);
    assert!(c.ignored[0].contains("db+postgresql"));
    assert!(!c.describe().contains("pw@"));
    let c = Config::from_settings(&settings(&[("CELERY_RESULT_BACKEND", "hunter2pw")])).unwrap();
    assert!(!c.describe().contains("hunter2pw"), "{}", c.describe());
}

#[test]
fn celery_defaults_and_settings() {
    let config = Config::from_settings(&Settings::default()).unwrap();
    let c = config.celery;
    assert_eq!(c.broker.as_ref(), config.targets.first());
    assert_eq!(c.queues, ["celery"]);
    assert_eq!(c.min_workers, 1);
    assert_eq!(c.keyprefix, None, "found on the broker");
    assert_eq!(c.sep, None);
    assert_eq!(c.priority_steps, None);
    assert_eq!(c.visibility_timeout, Duration::from_secs(3600));
    assert_eq!(c.heartbeat_misses, 2);
    assert_eq!(c.stall_after, Duration::from_secs(300));
    assert_eq!(c.running_max, Duration::from_secs(3600));
    assert_eq!(c.max_workers, 256);
    assert_eq!(c.forget_after, Duration::from_secs(600));
    let c = Config::from_settings(&settings(&[
        ("REDIS_URL", "redis://h/0"),
        ("CELERY_BROKER_URL", "redis://h/3"),
        ("SIDECAR_CELERY_QUEUES", "emails, default,celery"),
        ("SIDECAR_CELERY_MIN_WORKERS", "0"),
        ("SIDECAR_CELERY_KEYPREFIX", "myapp:"),
        ("SIDECAR_CELERY_SEP", ":"),
        ("SIDECAR_CELERY_PRIORITY_STEPS", "0,1,2,3,4,5,6,7,8,9"),
        ("SIDECAR_READY_CHECKS", "redis:broker,celery"),
    ]))
    .unwrap();
    assert_eq!(
        c.celery.broker.as_ref().map(|b| b.check_names()),
        Some(vec!["redis:broker".to_string()])
    );
    assert_eq!(c.celery.queues, ["celery", "emails", "default"]);
    assert_eq!(c.celery.min_workers, 0);
    assert_eq!(c.celery.keyprefix.as_deref(), Some(&b"myapp:"[..]));
    assert_eq!(c.celery.sep.as_deref(), Some(&b":"[..]));
    assert_eq!(c.celery.priority_steps.map(|s| s.len()), Some(10));
    assert_eq!(c.ready_checks, ["redis:broker", "celery"]);
    assert_eq!(unescape("a\\x06\\x16b\\\\").unwrap(), b"a\x06\x16b\\");
    assert_eq!(unescape("\\x0"), None);
    assert_eq!(escape(&[0x06, 0x16, b':']), "\\x06\\x16:");
}

/// A short interval alone starts: the timeout and the SLO the user did not set follow it.
#[test]
fn unset_timeout_and_slo_follow_the_interval() {
    let c = |pairs: &[(&str, &str)]| Config::from_settings(&settings(pairs)).unwrap();
    let ms = Duration::from_millis;
    for (interval, timeout, slo) in [
        ("5s", ms(1000), ms(100)),
        ("1s", ms(800), ms(100)),
        ("500ms", ms(400), ms(100)),
        ("100ms", ms(80), ms(64)),
        ("50ms", ms(40), ms(32)),
    ] {
        let got = c(&[("SIDECAR_PROBE_INTERVAL", interval)]);
        assert_eq!(
            (got.probe_timeout, got.latency_slo),
            (timeout, slo),
            "{interval}"
        );
    }
    // An explicit timeout: the unset SLO follows it.
    let got = c(&[("SIDECAR_PROBE_TIMEOUT", "50ms")]);
    assert_eq!(got.latency_slo, ms(40));
    // Explicit values are kept as written.
    let got = c(&[
        ("SIDECAR_PROBE_INTERVAL", "1s"),
        ("SIDECAR_PROBE_TIMEOUT", "900ms"),
        ("SIDECAR_LATENCY_SLO", "500ms"),
    ]);
    assert_eq!((got.probe_timeout, got.latency_slo), (ms(900), ms(500)));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
    assert_eq!(parse_duration("250us"), Some(Duration::from_micros(250)));
    for bad in ["5", "s", "5x", "-1s", "1.2.3s", "", "1e999s"] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
    assert_eq!(show(Duration::from_millis(100)), "100ms");
    assert_eq!(show(Duration::from_secs(5)), "5s");
}

/// The table of bad settings: each names its variable, none echoes a secret.
#[test]
fn bad_settings_name_their_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("REDIS_URL", "http://u:hunter2@h")],
            "REDIS_URL (--redis-url): scheme \"http\"",
        ),
        (
            &[("REDIS_URL", "redis://u:hunter2@h:70000")],
            "REDIS_URL (--redis-url): invalid port: out of range 0-65535",
        ),
        (
            &[("CELERY_BROKER_URL", "redis://u:hunter2@h/x")],
            "CELERY_BROKER_URL (--celery-broker-url): database \"x\"",
        ),
        (
            &[("REDIS_URL", "")],
            "REDIS_URL (--redis-url) is set but empty",
        ),
        (
            &[("REDISHOST", "h"), ("REDISPORT", "http")],
            "REDISPORT (--redis-port): \"http\" is not a port",
        ),
        (
            &[("REDISPASSWORD", "hunter2")],
            "REDISHOST (--redis-host): is not set",
        ),
        (
            &[("REDISHOST", "redis://u:hunter2@h")],
            "REDISHOST (--redis-host): must be a host name",
        ),
        (
            &[("REDISHOST", "h:6379")],
            "REDISHOST (--redis-host): \"h:6379\" must be a host name without a port",
        ),
        (
            &[("CELERY_BROKER_URL", "amqp://u:hunter2@rabbit//")],
            "CELERY_BROKER_URL (--celery-broker-url): scheme \"amqp\"",
        ),
        (
            &[("CELERY_RESULT_BACKEND", "redis://u:hunter2@h/z")],
            "CELERY_RESULT_BACKEND (--celery-result-backend): database \"z\"",
        ),
        (
            &[("SIDECAR_LISTEN_ADDR", "localhost")],
            "SIDECAR_LISTEN_ADDR (--listen-addr): \"localhost\" is not an address:port",
        ),
        (
            &[("PORT", "99999")],
            "PORT (--port): \"99999\" is not a port",
        ),
        (
            &[("SIDECAR_PROBE_INTERVAL", "5")],
            "SIDECAR_PROBE_INTERVAL (--probe-interval): \"5\" is not a duration",
        ),
        (
            &[("SIDECAR_PROBE_INTERVAL", "10ms")],
            "SIDECAR_PROBE_INTERVAL (--probe-interval): \"10ms\" must be between 50ms and 1h",
        ),
        (
            &[("SIDECAR_PROBE_TIMEOUT", "soon")],
            "SIDECAR_PROBE_TIMEOUT (--probe-timeout): \"soon\" is not a duration",
        ),
        (
            &[("SIDECAR_PROBE_TIMEOUT", "10s")],
            "SIDECAR_PROBE_TIMEOUT (--probe-timeout): 10s must be shorter than the probe interval 5s",
        ),
        (
            &[("SIDECAR_LATENCY_SLO", "2s")],
            "SIDECAR_LATENCY_SLO (--latency-slo): 2s must be above 0 and shorter than the probe timeout 1s",
        ),
        (
            &[
                ("SIDECAR_PROBE_INTERVAL", "1s"),
                ("SIDECAR_PROBE_TIMEOUT", "1s"),
            ],
            "SIDECAR_PROBE_TIMEOUT (--probe-timeout): 1s must be shorter than the probe interval 1s",
        ),
        (
            &[("SIDECAR_AUTH_RECHECK", "100ms")],
            "SIDECAR_AUTH_RECHECK (--auth-recheck): \"100ms\" must be at least 1s",
        ),
        (
            &[("SIDECAR_READY_CHECKS", "redis:nope")],
            "SIDECAR_READY_CHECKS (--ready-checks): \"redis:nope\" is not a check; known checks: redis:cache",
        ),
        (
            &[("SIDECAR_READY_CHECKS", " , ")],
            "SIDECAR_READY_CHECKS (--ready-checks) is set but empty",
        ),
        (
            &[("SIDECAR_AUTH_TOKEN", "  ")],
            "SIDECAR_AUTH_TOKEN (--auth-token) is set but empty",
        ),
        (
            &[("SIDECAR_AUTH_TOKEN", "a b")],
            "SIDECAR_AUTH_TOKEN (--auth-token): must not contain spaces",
        ),
        (
            &[("SIDECAR_LOG_FORMAT", "xml")],
            "SIDECAR_LOG_FORMAT (--log-format): \"xml\" is not a log format",
        ),
        (
            &[("SIDECAR_CELERY_MIN_WORKERS", "-1")],
            "SIDECAR_CELERY_MIN_WORKERS (--celery-min-workers): \"-1\" is not a whole number from 0 to 100000",
        ),
        (
            &[("SIDECAR_CELERY_PRIORITY_STEPS", "9,3")],
            "SIDECAR_CELERY_PRIORITY_STEPS (--celery-priority-steps): \"9,3\" is not an ascending",
        ),
        (
            &[("SIDECAR_CELERY_SEP", "\\x6")],
            "SIDECAR_CELERY_SEP (--celery-sep): has a \\x escape",
        ),
        (
            &[("SIDECAR_CELERY_STALL_AFTER", "10ms")],
            "SIDECAR_CELERY_STALL_AFTER (--celery-stall-after): \"10ms\" must be at least 1s",
        ),
        (
            &[("SIDECAR_CELERY_HEARTBEAT_MISSES", "0")],
            "SIDECAR_CELERY_HEARTBEAT_MISSES (--celery-heartbeat-misses): \"0\" is not a whole number from 1 to 100",
        ),
        (
            &[("SIDECAR_CELERY_BEAT_EXPECT", "tasks.report:10m,tasks.tick")],
            "SIDECAR_CELERY_BEAT_EXPECT (--celery-beat-expect): \"tasks.tick\" is not task.name:interval",
        ),
        (
            &[("SIDECAR_CELERY_BEAT_EXPECT", "tasks.tick:500ms")],
            "SIDECAR_CELERY_BEAT_EXPECT (--celery-beat-expect): \"tasks.tick:500ms\" is not task.name:interval",
        ),
        (
            &[("SIDECAR_CELERY_REDBEAT_KEY_PREFIX", "a\nb")],
            "SIDECAR_CELERY_REDBEAT_KEY_PREFIX (--celery-redbeat-key-prefix): must be at most 200",
        ),
        (
            &[("SIDECAR_CELERY_MAX_WORKERS", "lots")],
            "SIDECAR_CELERY_MAX_WORKERS (--celery-max-workers): \"lots\" is not a whole number",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
            "OTEL_EXPORTER_OTLP_ENDPOINT (--otel-endpoint): is not an http:// or https:// URL",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://u:hunter2@c")],
            "OTEL_EXPORTER_OTLP_ENDPOINT (--otel-endpoint): must not hold credentials",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_HEADERS", "x(key)=hunter2")],
            "OTEL_EXPORTER_OTLP_HEADERS (--otel-headers): x(key) is not a header name",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
            "OTEL_EXPORTER_OTLP_PROTOCOL (--otel-protocol): \"http/json\" is not supported",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key:hunter2")],
            "OTEL_EXPORTER_OTLP_HEADERS (--otel-headers): is not a key=value list",
        ),
        (
            &[("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")],
            "OTEL_EXPORTER_OTLP_TIMEOUT (--otel-timeout): \"soon\" is not a timeout",
        ),
        (
            &[("OTEL_TRACES_SAMPLER", "sometimes")],
            "OTEL_TRACES_SAMPLER (--otel-traces-sampler): \"sometimes\" is not a sampler",
        ),
        (
            &[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ],
            "OTEL_TRACES_SAMPLER_ARG (--otel-traces-sampler-arg): \"2\" is not a ratio",
        ),
        (
            &[("OTEL_SDK_DISABLED", "yes")],
            "OTEL_SDK_DISABLED (--otel-sdk-disabled): \"yes\" is not true or false",
        ),
        (
            &[("RUST_LOG", "info,[")],
            "RUST_LOG (--log-level): \"info,[\" is not valid",
        ),
    ];
    for (pairs, want) in cases {
        let err = Config::from_settings(&settings(pairs))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(want),
            "{pairs:?}\n got: {err}\nwant: {want}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }
}

#[test]
fn describe_redacts() {
    let c = Config::from_settings(&settings(&[
        ("REDIS_URL", "redis://default:hunter2@h:6379"),
        ("SIDECAR_AUTH_TOKEN", "tok3n"),
    ]))
    .unwrap();
    let text = c.describe();
    assert!(text.contains("redis://default:***@h:6379/0"), "{text}");
    assert!(
        !text.contains("hunter2") && !text.contains("tok3n"),
        "{text}"
    );
    assert!(!format!("{c:?}").contains("hunter2"));
    assert!(!format!("{c:?}").contains("tok3n"));
}

#[test]
fn periodic_tasks_expected_and_redbeat_prefix() {
    let c = Config::from_settings(&Settings::default()).unwrap();
    assert!(c.celery.beat_expect.is_empty());
    assert_eq!(c.celery.redbeat_prefix, "redbeat:");
    let c = Config::from_settings(&settings(&[
        (
            "SIDECAR_CELERY_BEAT_EXPECT",
            " tasks.report:10m, app.tasks:tick:2s ,,tasks.report:1h",
        ),
        ("SIDECAR_CELERY_REDBEAT_KEY_PREFIX", "myapp:"),
    ]))
    .unwrap();
    assert_eq!(
        c.celery.beat_expect,
        vec![
            ("tasks.report".to_string(), Duration::from_secs(3600)),
            ("app.tasks:tick".to_string(), Duration::from_secs(2)),
        ]
    );
    assert_eq!(c.celery.redbeat_prefix, "myapp:");
}
