//! The command line: subcommands, and every setting as a flag with its environment twin.
//!
//! Values are kept as raw strings here; `config` validates them once, so that an error can
//! name the variable and never echo a secret (clap's own value errors would do neither).

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
    /// Probe every target once, print status and cause, exit 0 when all are healthy.
    Check {
        /// Print the result as JSON instead of aligned text.
        #[arg(long)]
        json: bool,
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
    #[arg(long, env = "REDIS_URL", global = true, hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Host used to build the cache URL when REDIS_URL is unset.
    #[arg(long, env = "REDISHOST", global = true, hide_env_values = true)]
    pub redis_host: Option<String>,
    /// Port used to build the cache URL when REDIS_URL is unset.
    #[arg(long, env = "REDISPORT", global = true, hide_env_values = true)]
    pub redis_port: Option<String>,
    /// User used to build the cache URL when REDIS_URL is unset.
    #[arg(long, env = "REDISUSER", global = true, hide_env_values = true)]
    pub redis_user: Option<String>,
    /// Password used to build the cache URL when REDIS_URL is unset.
    #[arg(long, env = "REDISPASSWORD", global = true, hide_env_values = true)]
    pub redis_password: Option<String>,
    /// Celery broker URL (role `broker`); defaults to the cache URL.
    #[arg(long, env = "CELERY_BROKER_URL", global = true, hide_env_values = true)]
    pub celery_broker_url: Option<String>,
    /// Celery result backend (role `result_backend`), probed when it is a Redis URL.
    #[arg(
        long,
        env = "CELERY_RESULT_BACKEND",
        global = true,
        hide_env_values = true
    )]
    pub celery_result_backend: Option<String>,
    /// Listen address; default `[::]:$PORT`, else `[::]:9811`.
    #[arg(
        long,
        env = "SIDECAR_LISTEN_ADDR",
        global = true,
        hide_env_values = true
    )]
    pub listen_addr: Option<String>,
    /// Port to listen on when SIDECAR_LISTEN_ADDR is unset (Railway sets it).
    #[arg(long, env = "PORT", global = true, hide_env_values = true)]
    pub port: Option<String>,
    /// How often each Redis target is probed, e.g. `5s`.
    #[arg(
        long,
        env = "SIDECAR_PROBE_INTERVAL",
        global = true,
        hide_env_values = true
    )]
    pub probe_interval: Option<String>,
    /// Bound on one probe, connect included, e.g. `1s`.
    #[arg(
        long,
        env = "SIDECAR_PROBE_TIMEOUT",
        global = true,
        hide_env_values = true
    )]
    pub probe_timeout: Option<String>,
    /// A Redis round trip slower than this makes the check degraded, e.g. `100ms`.
    #[arg(
        long,
        env = "SIDECAR_LATENCY_SLO",
        global = true,
        hide_env_values = true
    )]
    pub latency_slo: Option<String>,
    /// Comma list of the checks that gate /readyz; default: every Redis target.
    #[arg(
        long,
        env = "SIDECAR_READY_CHECKS",
        global = true,
        hide_env_values = true
    )]
    pub ready_checks: Option<String>,
    /// Bearer token required on /metrics and /healthz.
    #[arg(
        long,
        env = "SIDECAR_AUTH_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub auth_token: Option<String>,
    /// `text` (default) or `json`.
    #[arg(
        long,
        env = "SIDECAR_LOG_FORMAT",
        global = true,
        hide_env_values = true
    )]
    pub log_format: Option<String>,
    /// Log levels, in tracing's `EnvFilter` syntax (default `info`).
    #[arg(long, env = "RUST_LOG", global = true, hide_env_values = true)]
    pub log_level: Option<String>,
}
