//! The command line: subcommands, and every setting as a flag with its environment twin.
//!
//! Values are kept as raw strings here; `config` validates them once, so that an error can
//! name the variable and never echo a secret (clap's own value errors would do neither).

use super::vars;
use clap::{Args, Parser, Subcommand};

/// `redis-celery-sidecar [COMMAND] [OPTIONS]`. No `Debug`: it holds secrets as given.
#[derive(Parser)]
#[command(
    name = "redis-celery-sidecar",
    version,
    about = "Tells whether Redis and the Celery workers behind an app are working, and if not, why."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

/// What to do; no subcommand means `serve`.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the HTTP server and the probes (the default).
    Serve,
    /// Diagnose every target step by step, print each step and the cause of a failure
    /// with its fix; exit 0 when all are healthy, 1 otherwise.
    Check {
        /// Print the result as JSON instead of aligned text.
        #[arg(long)]
        json: bool,
        /// Also ping the Celery workers (`inspect ping` over Redis) and list who answered.
        #[arg(long)]
        ping: bool,
        /// Only send a test message to each SIDECAR_NOTIFY_URL and print what it answered.
        #[arg(long)]
        notify_test: bool,
    },
    /// Print the effective configuration, secrets redacted, and exit.
    Config,
}

/// Every setting, as given: a flag wins over its environment variable.
///
/// `hide_env_values` keeps `--help` from printing the current value of a variable, which
/// for most of these may hold a password. No `Debug`, for the same reason.
#[derive(Clone, Default, Args)]
pub struct Settings {
    /// Redis URL of the app's cache (role `cache`).
    #[arg(long = vars::REDIS_URL.flag, env = vars::REDIS_URL.env, global = true, hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Host used to build the cache URL when REDIS_URL is unset.
    #[arg(long = vars::REDISHOST.flag, env = vars::REDISHOST.env, global = true, hide_env_values = true)]
    pub redis_host: Option<String>,
    /// Port used to build the cache URL when REDIS_URL is unset.
    #[arg(long = vars::REDISPORT.flag, env = vars::REDISPORT.env, global = true, hide_env_values = true)]
    pub redis_port: Option<String>,
    /// User used to build the cache URL when REDIS_URL is unset.
    #[arg(long = vars::REDISUSER.flag, env = vars::REDISUSER.env, global = true, hide_env_values = true)]
    pub redis_user: Option<String>,
    /// Password used to build the cache URL when REDIS_URL is unset.
    #[arg(long = vars::REDISPASSWORD.flag, env = vars::REDISPASSWORD.env, global = true, hide_env_values = true)]
    pub redis_password: Option<String>,
    /// Celery broker URL (role `broker`); defaults to the cache URL.
    #[arg(long = vars::CELERY_BROKER_URL.flag, env = vars::CELERY_BROKER_URL.env, global = true, hide_env_values = true)]
    pub celery_broker_url: Option<String>,
    /// Celery result backend (role `result_backend`), probed when it is a Redis URL.
    #[arg(
        long = vars::CELERY_RESULT_BACKEND.flag,
        env = vars::CELERY_RESULT_BACKEND.env,
        global = true,
        hide_env_values = true
    )]
    pub celery_result_backend: Option<String>,
    /// A PEM file of CA certificates trusted for rediss:// beside the built-in roots.
    #[arg(long = vars::SSL_CERT_FILE.flag, env = vars::SSL_CERT_FILE.env, global = true)]
    pub ssl_cert_file: Option<String>,
    /// A directory of PEM CA certificates trusted for rediss:// beside the built-in roots.
    #[arg(long = vars::SSL_CERT_DIR.flag, env = vars::SSL_CERT_DIR.env, global = true)]
    pub ssl_cert_dir: Option<String>,
    /// Listen address; default `[::]:$PORT`, else `[::]:9811`.
    #[arg(
        long = vars::LISTEN_ADDR.flag,
        env = vars::LISTEN_ADDR.env,
        global = true,
        hide_env_values = true
    )]
    pub listen_addr: Option<String>,
    /// Port to listen on when SIDECAR_LISTEN_ADDR is unset (Railway sets it).
    #[arg(long = vars::PORT.flag, env = vars::PORT.env, global = true, hide_env_values = true)]
    pub port: Option<String>,
    /// How often each Redis target is probed, e.g. `5s`.
    #[arg(
        long = vars::PROBE_INTERVAL.flag,
        env = vars::PROBE_INTERVAL.env,
        global = true,
        hide_env_values = true
    )]
    pub probe_interval: Option<String>,
    /// Bound on one probe, connect included, e.g. `1s` (default: 1s, or 80% of a shorter interval).
    #[arg(
        long = vars::PROBE_TIMEOUT.flag,
        env = vars::PROBE_TIMEOUT.env,
        global = true,
        hide_env_values = true
    )]
    pub probe_timeout: Option<String>,
    /// How often a fresh connection re-checks each target's credentials, e.g. `30s`.
    #[arg(
        long = vars::AUTH_RECHECK.flag,
        env = vars::AUTH_RECHECK.env,
        global = true,
        hide_env_values = true
    )]
    pub auth_recheck: Option<String>,
    /// A Redis round trip slower than this makes the check degraded, e.g. `100ms`.
    #[arg(
        long = vars::LATENCY_SLO.flag,
        env = vars::LATENCY_SLO.env,
        global = true,
        hide_env_values = true
    )]
    pub latency_slo: Option<String>,
    /// Comma list of the checks that gate /readyz; default: every Redis target.
    #[arg(
        long = vars::READY_CHECKS.flag,
        env = vars::READY_CHECKS.env,
        global = true,
        hide_env_values = true
    )]
    pub ready_checks: Option<String>,
    /// Bearer token required on /metrics and /healthz.
    #[arg(
        long = vars::AUTH_TOKEN.flag,
        env = vars::AUTH_TOKEN.env,
        global = true,
        hide_env_values = true
    )]
    pub auth_token: Option<String>,
    /// Open HTTP connections at most (default 1024); more are closed at once.
    #[arg(
        long = vars::MAX_CONNECTIONS.flag,
        env = vars::MAX_CONNECTIONS.env,
        global = true,
        hide_env_values = true
    )]
    pub max_connections: Option<String>,
    /// Queues whose length the status page keeps an hour of (the longest; default 10).
    #[arg(
        long = vars::HISTORY_QUEUES.flag,
        env = vars::HISTORY_QUEUES.env,
        global = true,
        hide_env_values = true
    )]
    pub history_queues: Option<String>,
    /// `text` (default) or `json`.
    #[arg(
        long = vars::LOG_FORMAT.flag,
        env = vars::LOG_FORMAT.env,
        global = true,
        hide_env_values = true
    )]
    pub log_format: Option<String>,
    /// Log levels, in tracing's `EnvFilter` syntax (default `info`).
    #[arg(long = vars::RUST_LOG.flag, env = vars::RUST_LOG.env, global = true, hide_env_values = true)]
    pub log_level: Option<String>,
    /// Comma list of Celery queues to watch besides those discovered and `celery`.
    #[arg(
        long = vars::CELERY_QUEUES.flag,
        env = vars::CELERY_QUEUES.env,
        global = true,
        hide_env_values = true
    )]
    pub celery_queues: Option<String>,
    /// Fewer alive Celery workers than this makes the celery check unhealthy (default 1).
    #[arg(
        long = vars::CELERY_MIN_WORKERS.flag,
        env = vars::CELERY_MIN_WORKERS.env,
        global = true,
        hide_env_values = true
    )]
    pub celery_min_workers: Option<String>,
    /// kombu's `global_keyprefix` transport option (default empty).
    #[arg(
        long = vars::CELERY_KEYPREFIX.flag,
        env = vars::CELERY_KEYPREFIX.env,
        global = true,
        hide_env_values = true
    )]
    pub celery_keyprefix: Option<String>,
    /// kombu's `sep` transport option; `\xNN` escapes allowed (default `\x06\x16`).
    #[arg(
        long = vars::CELERY_SEP.flag,
        env = vars::CELERY_SEP.env,
        global = true,
        hide_env_values = true
    )]
    pub celery_sep: Option<String>,
    /// kombu's `priority_steps` transport option (default `0,3,6,9`).
    #[arg(
        long = vars::CELERY_PRIORITY_STEPS.flag,
        env = vars::CELERY_PRIORITY_STEPS.env,
        global = true,
        hide_env_values = true
    )]
    pub celery_priority_steps: Option<String>,
    /// kombu's `visibility_timeout`: older reservations are orphaned (default 1h).
    #[arg(
        long = vars::CELERY_VISIBILITY_TIMEOUT.flag,
        env = vars::CELERY_VISIBILITY_TIMEOUT.env,
        global = true,
        hide_env_values = true
    )]
    pub celery_visibility_timeout: Option<String>,
    /// A worker is dead after this many missed heartbeats (default 2).
    #[arg(
        long = vars::CELERY_HEARTBEAT_MISSES.flag,
        env = vars::CELERY_HEARTBEAT_MISSES.env,
        global = true,
        hide_env_values = true
    )]
    pub celery_heartbeat_misses: Option<String>,
    /// A queue from which nothing has been taken for this long, while it holds tasks, is stalled (default 5m).
    #[arg(
        long = vars::CELERY_STALL_AFTER.flag,
        env = vars::CELERY_STALL_AFTER.env,
        global = true,
        hide_env_values = true
    )]
    pub celery_stall_after: Option<String>,
    /// A task running longer than this is a finding (default 1h).
    #[arg(
        long = vars::CELERY_RUNNING_MAX.flag,
        env = vars::CELERY_RUNNING_MAX.env,
        global = true,
        hide_env_values = true
    )]
    pub celery_running_max: Option<String>,
    /// Webhook URLs to POST state changes to (comma list; secrets).
    #[arg(long = vars::NOTIFY_URL.flag, env = vars::NOTIFY_URL.env, global = true, hide_env_values = true)]
    pub notify_url: Option<String>,
    /// slack, discord or json (default: from each URL's host).
    #[arg(long = vars::NOTIFY_FORMAT.flag, env = vars::NOTIFY_FORMAT.env, global = true, hide_env_values = true)]
    pub notify_format: Option<String>,
    /// How long a change must hold before it is sent (default: two probe intervals).
    #[arg(long = vars::NOTIFY_AFTER.flag, env = vars::NOTIFY_AFTER.env, global = true, hide_env_values = true)]
    pub notify_after: Option<String>,
    /// The master's name for sentinel:// URLs (Celery's `master_name` transport option).
    #[arg(long = vars::SENTINEL_MASTER.flag, env = vars::SENTINEL_MASTER.env, global = true, hide_env_values = true)]
    pub sentinel_master: Option<String>,
    /// The sentinels' own password (`sentinel_kwargs`); a secret.
    #[arg(long = vars::SENTINEL_PASSWORD.flag, env = vars::SENTINEL_PASSWORD.env, global = true, hide_env_values = true)]
    pub sentinel_password: Option<String>,
    /// Periodic tasks expected, `task.name:interval,...`, heard as task events (when beat
    /// is not RedBeat).
    #[arg(
        long = vars::CELERY_BEAT_EXPECT.flag,
        env = vars::CELERY_BEAT_EXPECT.env,
        global = true,
        hide_env_values = true
    )]
    pub celery_beat_expect: Option<String>,
    /// RedBeat's key prefix, as `redbeat_key_prefix` (default `redbeat:`).
    #[arg(
        long = vars::CELERY_REDBEAT_KEY_PREFIX.flag,
        env = vars::CELERY_REDBEAT_KEY_PREFIX.env,
        global = true,
        hide_env_values = true
    )]
    pub celery_redbeat_key_prefix: Option<String>,
    /// How many workers are tracked at most (default 256).
    #[arg(
        long = vars::CELERY_MAX_WORKERS.flag,
        env = vars::CELERY_MAX_WORKERS.env,
        global = true,
        hide_env_values = true
    )]
    pub celery_max_workers: Option<String>,
    /// Workers offline this long are forgotten and their series removed (default 10m).
    #[arg(
        long = vars::CELERY_FORGET_AFTER.flag,
        env = vars::CELERY_FORGET_AFTER.env,
        global = true,
        hide_env_values = true
    )]
    pub celery_forget_after: Option<String>,
    /// OTLP collector base URL (`/v1/traces` is added for http/protobuf).
    #[arg(
        long = vars::OTEL_ENDPOINT.flag,
        env = vars::OTEL_ENDPOINT.env,
        global = true,
        hide_env_values = true
    )]
    pub otel_endpoint: Option<String>,
    /// OTLP traces URL, used as is.
    #[arg(
        long = vars::OTEL_TRACES_ENDPOINT.flag,
        env = vars::OTEL_TRACES_ENDPOINT.env,
        global = true,
        hide_env_values = true
    )]
    pub otel_traces_endpoint: Option<String>,
    /// `http/protobuf` (default) or `grpc`.
    #[arg(
        long = vars::OTEL_PROTOCOL.flag,
        env = vars::OTEL_PROTOCOL.env,
        global = true,
        hide_env_values = true
    )]
    pub otel_protocol: Option<String>,
    /// Protocol for traces, over OTEL_EXPORTER_OTLP_PROTOCOL.
    #[arg(
        long = vars::OTEL_TRACES_PROTOCOL.flag,
        env = vars::OTEL_TRACES_PROTOCOL.env,
        global = true,
        hide_env_values = true
    )]
    pub otel_traces_protocol: Option<String>,
    /// `key=value,...` headers sent to the collector (often an API key).
    #[arg(
        long = vars::OTEL_HEADERS.flag,
        env = vars::OTEL_HEADERS.env,
        global = true,
        hide_env_values = true
    )]
    pub otel_headers: Option<String>,
    /// Headers for traces, added to OTEL_EXPORTER_OTLP_HEADERS.
    #[arg(
        long = vars::OTEL_TRACES_HEADERS.flag,
        env = vars::OTEL_TRACES_HEADERS.env,
        global = true,
        hide_env_values = true
    )]
    pub otel_traces_headers: Option<String>,
    /// Export timeout in milliseconds (default 10000).
    #[arg(
        long = vars::OTEL_TIMEOUT.flag,
        env = vars::OTEL_TIMEOUT.env,
        global = true,
        hide_env_values = true
    )]
    pub otel_timeout: Option<String>,
    /// Export timeout for traces, over OTEL_EXPORTER_OTLP_TIMEOUT.
    #[arg(
        long = vars::OTEL_TRACES_TIMEOUT.flag,
        env = vars::OTEL_TRACES_TIMEOUT.env,
        global = true,
        hide_env_values = true
    )]
    pub otel_traces_timeout: Option<String>,
    /// `service.name` of the spans (default `redis-celery-sidecar`).
    #[arg(long = vars::OTEL_SERVICE_NAME.flag, env = vars::OTEL_SERVICE_NAME.env, global = true, hide_env_values = true)]
    pub otel_service_name: Option<String>,
    /// `key=value,...` resource attributes.
    #[arg(
        long = vars::OTEL_RESOURCE_ATTRIBUTES.flag,
        env = vars::OTEL_RESOURCE_ATTRIBUTES.env,
        global = true,
        hide_env_values = true
    )]
    pub otel_resource_attributes: Option<String>,
    /// `always_on`, `always_off`, `traceidratio`, `parentbased_*` (default `parentbased_always_on`).
    #[arg(
        long = vars::OTEL_TRACES_SAMPLER.flag,
        env = vars::OTEL_TRACES_SAMPLER.env,
        global = true,
        hide_env_values = true
    )]
    pub otel_traces_sampler: Option<String>,
    /// The sampler's argument: the ratio for `traceidratio`.
    #[arg(
        long = vars::OTEL_TRACES_SAMPLER_ARG.flag,
        env = vars::OTEL_TRACES_SAMPLER_ARG.env,
        global = true,
        hide_env_values = true
    )]
    pub otel_traces_sampler_arg: Option<String>,
    /// `true` turns OpenTelemetry off entirely.
    #[arg(long = vars::OTEL_SDK_DISABLED.flag, env = vars::OTEL_SDK_DISABLED.env, global = true, hide_env_values = true)]
    pub otel_sdk_disabled: Option<String>,
    /// `otlp` (default when an endpoint is set) or `none`.
    #[arg(
        long = vars::OTEL_TRACES_EXPORTER.flag,
        env = vars::OTEL_TRACES_EXPORTER.env,
        global = true,
        hide_env_values = true
    )]
    pub otel_traces_exporter: Option<String>,
    /// OTLP metrics URL, used as is.
    #[arg(
        long = vars::OTEL_METRICS_ENDPOINT.flag,
        env = vars::OTEL_METRICS_ENDPOINT.env,
        global = true,
        hide_env_values = true
    )]
    pub otel_metrics_endpoint: Option<String>,
    /// Protocol for metrics, over OTEL_EXPORTER_OTLP_PROTOCOL.
    #[arg(
        long = vars::OTEL_METRICS_PROTOCOL.flag,
        env = vars::OTEL_METRICS_PROTOCOL.env,
        global = true,
        hide_env_values = true
    )]
    pub otel_metrics_protocol: Option<String>,
    /// Headers for metrics, added to OTEL_EXPORTER_OTLP_HEADERS.
    #[arg(
        long = vars::OTEL_METRICS_HEADERS.flag,
        env = vars::OTEL_METRICS_HEADERS.env,
        global = true,
        hide_env_values = true
    )]
    pub otel_metrics_headers: Option<String>,
    /// Export timeout for metrics, over OTEL_EXPORTER_OTLP_TIMEOUT.
    #[arg(
        long = vars::OTEL_METRICS_TIMEOUT.flag,
        env = vars::OTEL_METRICS_TIMEOUT.env,
        global = true,
        hide_env_values = true
    )]
    pub otel_metrics_timeout: Option<String>,
    /// `cumulative`, the only temporality pushed.
    #[arg(
        long = vars::OTEL_METRICS_TEMPORALITY.flag,
        env = vars::OTEL_METRICS_TEMPORALITY.env,
        global = true,
        hide_env_values = true
    )]
    pub otel_metrics_temporality: Option<String>,
    /// Milliseconds between metric pushes (default 60000).
    #[arg(
        long = vars::OTEL_METRIC_EXPORT_INTERVAL.flag,
        env = vars::OTEL_METRIC_EXPORT_INTERVAL.env,
        global = true,
        hide_env_values = true
    )]
    pub otel_metric_export_interval: Option<String>,
    /// `otlp` (default when an endpoint is set) or `none`.
    #[arg(
        long = vars::OTEL_METRICS_EXPORTER.flag,
        env = vars::OTEL_METRICS_EXPORTER.env,
        global = true,
        hide_env_values = true
    )]
    pub otel_metrics_exporter: Option<String>,
}
