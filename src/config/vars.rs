//! The name of every setting, written once: its variable and its flag, for the command
//! line and for every error message.

use std::fmt;

/// A setting's two names, for error messages: `SIDECAR_PROBE_INTERVAL (--probe-interval)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var {
    pub env: &'static str,
    pub flag: &'static str,
}

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (--{})", self.env, self.flag)
    }
}

macro_rules! var {
    ($name:ident, $env:literal, $flag:literal) => {
        pub const $name: Var = Var {
            env: $env,
            flag: $flag,
        };
    };
}

// The names of every setting.
var!(REDIS_URL, "REDIS_URL", "redis-url");
var!(REDISHOST, "REDISHOST", "redis-host");
var!(REDISPORT, "REDISPORT", "redis-port");
var!(REDISUSER, "REDISUSER", "redis-user");
var!(REDISPASSWORD, "REDISPASSWORD", "redis-password");
var!(CELERY_BROKER_URL, "CELERY_BROKER_URL", "celery-broker-url");
var!(
    CELERY_RESULT_BACKEND,
    "CELERY_RESULT_BACKEND",
    "celery-result-backend"
);
var!(SSL_CERT_FILE, "SSL_CERT_FILE", "ssl-cert-file");
var!(SSL_CERT_DIR, "SSL_CERT_DIR", "ssl-cert-dir");
var!(LISTEN_ADDR, "SIDECAR_LISTEN_ADDR", "listen-addr");
var!(PORT, "PORT", "port");
var!(PROBE_INTERVAL, "SIDECAR_PROBE_INTERVAL", "probe-interval");
var!(PROBE_TIMEOUT, "SIDECAR_PROBE_TIMEOUT", "probe-timeout");
var!(LATENCY_SLO, "SIDECAR_LATENCY_SLO", "latency-slo");
var!(AUTH_RECHECK, "SIDECAR_AUTH_RECHECK", "auth-recheck");
var!(READY_CHECKS, "SIDECAR_READY_CHECKS", "ready-checks");
var!(AUTH_TOKEN, "SIDECAR_AUTH_TOKEN", "auth-token");
var!(
    MAX_CONNECTIONS,
    "SIDECAR_MAX_CONNECTIONS",
    "max-connections"
);
var!(HISTORY_QUEUES, "SIDECAR_HISTORY_QUEUES", "history-queues");
var!(LOG_FORMAT, "SIDECAR_LOG_FORMAT", "log-format");
var!(RUST_LOG, "RUST_LOG", "log-level");
var!(CELERY_QUEUES, "SIDECAR_CELERY_QUEUES", "celery-queues");
var!(
    CELERY_MIN_WORKERS,
    "SIDECAR_CELERY_MIN_WORKERS",
    "celery-min-workers"
);
var!(
    CELERY_KEYPREFIX,
    "SIDECAR_CELERY_KEYPREFIX",
    "celery-keyprefix"
);
var!(CELERY_SEP, "SIDECAR_CELERY_SEP", "celery-sep");
var!(
    CELERY_PRIORITY_STEPS,
    "SIDECAR_CELERY_PRIORITY_STEPS",
    "celery-priority-steps"
);
var!(
    CELERY_VISIBILITY_TIMEOUT,
    "SIDECAR_CELERY_VISIBILITY_TIMEOUT",
    "celery-visibility-timeout"
);
var!(
    CELERY_HEARTBEAT_MISSES,
    "SIDECAR_CELERY_HEARTBEAT_MISSES",
    "celery-heartbeat-misses"
);
var!(
    CELERY_STALL_AFTER,
    "SIDECAR_CELERY_STALL_AFTER",
    "celery-stall-after"
);
var!(
    CELERY_RUNNING_MAX,
    "SIDECAR_CELERY_RUNNING_MAX",
    "celery-running-max"
);
var!(NOTIFY_URL, "SIDECAR_NOTIFY_URL", "notify-url");
var!(NOTIFY_FORMAT, "SIDECAR_NOTIFY_FORMAT", "notify-format");
var!(NOTIFY_AFTER, "SIDECAR_NOTIFY_AFTER", "notify-after");
var!(
    SENTINEL_MASTER,
    "SIDECAR_SENTINEL_MASTER",
    "sentinel-master"
);
var!(
    SENTINEL_PASSWORD,
    "SIDECAR_SENTINEL_PASSWORD",
    "sentinel-password"
);
var!(
    CELERY_BEAT_EXPECT,
    "SIDECAR_CELERY_BEAT_EXPECT",
    "celery-beat-expect"
);
var!(
    CELERY_REDBEAT_KEY_PREFIX,
    "SIDECAR_CELERY_REDBEAT_KEY_PREFIX",
    "celery-redbeat-key-prefix"
);
var!(
    CELERY_MAX_WORKERS,
    "SIDECAR_CELERY_MAX_WORKERS",
    "celery-max-workers"
);
var!(
    CELERY_FORGET_AFTER,
    "SIDECAR_CELERY_FORGET_AFTER",
    "celery-forget-after"
);
var!(
    OTEL_ENDPOINT,
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "otel-endpoint"
);
var!(
    OTEL_TRACES_ENDPOINT,
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "otel-traces-endpoint"
);
var!(
    OTEL_PROTOCOL,
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "otel-protocol"
);
var!(
    OTEL_TRACES_PROTOCOL,
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "otel-traces-protocol"
);
var!(OTEL_HEADERS, "OTEL_EXPORTER_OTLP_HEADERS", "otel-headers");
var!(
    OTEL_TRACES_HEADERS,
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "otel-traces-headers"
);
var!(OTEL_TIMEOUT, "OTEL_EXPORTER_OTLP_TIMEOUT", "otel-timeout");
var!(
    OTEL_TRACES_TIMEOUT,
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "otel-traces-timeout"
);
var!(OTEL_SERVICE_NAME, "OTEL_SERVICE_NAME", "otel-service-name");
var!(
    OTEL_RESOURCE_ATTRIBUTES,
    "OTEL_RESOURCE_ATTRIBUTES",
    "otel-resource-attributes"
);
var!(
    OTEL_TRACES_SAMPLER,
    "OTEL_TRACES_SAMPLER",
    "otel-traces-sampler"
);
var!(
    OTEL_TRACES_SAMPLER_ARG,
    "OTEL_TRACES_SAMPLER_ARG",
    "otel-traces-sampler-arg"
);
var!(OTEL_SDK_DISABLED, "OTEL_SDK_DISABLED", "otel-sdk-disabled");
var!(
    OTEL_TRACES_EXPORTER,
    "OTEL_TRACES_EXPORTER",
    "otel-traces-exporter"
);
var!(
    OTEL_METRICS_ENDPOINT,
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "otel-metrics-endpoint"
);
var!(
    OTEL_METRICS_PROTOCOL,
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "otel-metrics-protocol"
);
var!(
    OTEL_METRICS_HEADERS,
    "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    "otel-metrics-headers"
);
var!(
    OTEL_METRICS_TIMEOUT,
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    "otel-metrics-timeout"
);
var!(
    OTEL_METRICS_TEMPORALITY,
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
    "otel-metrics-temporality-preference"
);
var!(
    OTEL_METRIC_EXPORT_INTERVAL,
    "OTEL_METRIC_EXPORT_INTERVAL",
    "otel-metric-export-interval"
);
var!(
    OTEL_METRICS_EXPORTER,
    "OTEL_METRICS_EXPORTER",
    "otel-metrics-exporter"
);
