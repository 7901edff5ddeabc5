//! Configuration: the raw settings validated once into typed values, with errors that name
//! the variable and never echo a secret.

mod celery;
pub mod cli;
mod describe;
pub mod dotenv;
pub mod notify;
mod otel;
mod targets;
pub mod vars;

use crate::text::{parse_duration, show};
pub use celery::{CELERY_CHECK, CeleryConfig, REDBEAT_PREFIX};
pub use otel::{MetricsPush, OtelConfig, OtlpProtocol, Sampler};
pub use vars::Var;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::cli::Settings;
use crate::redis::target::Target;

/// The URL probed when no Redis variable is set.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// The port served when neither `SIDECAR_LISTEN_ADDR` nor `PORT` is set.
pub const DEFAULT_PORT: u16 = 9811;
/// Open HTTP connections at most, by default: far above what scrapers and health checkers
/// use, far below a default file descriptor limit's worth of idle attackers.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Queues the status page keeps an hour of, by default and at most.
pub const DEFAULT_HISTORY_QUEUES: usize = 10;
pub const MAX_HISTORY_QUEUES: usize = 100;

/// A whole number from `min` to `max`, `default` when unset.
fn count(
    var: Var,
    value: &Option<String>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    match non_empty(var, value)? {
        None => Ok(default),
        Some(text) => match text.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(invalid(
                var,
                Some(text),
                &format!("is not a whole number from {min} to {max}"),
            )),
        },
    }
}

/// A configuration error: exit code 2 and this one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// Set, but to nothing (often a Railway reference to a service that does not exist).
    Empty { var: Var },
    /// A value that is not what the variable takes; `value` is shown only for non-secrets.
    Invalid {
        var: Var,
        value: Option<String>,
        problem: String,
    },
    /// Two settings that contradict each other.
    Conflict { var: Var, problem: String },
    /// The `.env` file exists but cannot be used.
    EnvFile { problem: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Empty { var } => write!(f, "{var} is set but empty"),
            ConfigError::Invalid {
                var,
                value: Some(value),
                problem,
            } => write!(f, "{var}: \"{value}\" {problem}"),
            ConfigError::Invalid {
                var,
                value: None,
                problem,
            } => write!(f, "{var}: {problem}"),
            ConfigError::Conflict { var, problem } => write!(f, "{var}: {problem}"),
            ConfigError::EnvFile { problem } => write!(f, ".env {problem}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A secret setting: usable, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration. Nothing reads the environment after this is built.
#[derive(Debug, Clone)]
pub struct Config {
    /// Distinct Redis servers and databases, each probed once whatever roles it plays.
    pub targets: Vec<Target>,
    /// True when no Redis variable was set and the local default is probed.
    pub default_target: bool,
    /// Variables that were read but do not lead to a probe, with why (for `config` and logs).
    pub ignored: Vec<String>,
    /// What the app's own libraries would do differently with the settings (a URL form
    /// redis-py refuses, a parameter nobody reads): shown by `config` and `check`, logged at
    /// start. Never a secret.
    pub warnings: Vec<String>,
    pub listen: SocketAddr,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub latency_slo: Duration,
    /// How often a fresh connection to each target proves the credentials still work
    /// (pooled connections stay logged in after a password or ACL change).
    pub auth_recheck: Duration,
    /// Check names that gate `/readyz`.
    pub ready_checks: Vec<String>,
    pub auth_token: Option<Secret>,
    /// Open HTTP connections at most; more are closed at once.
    pub max_connections: usize,
    /// Queues whose length the history keeps (the longest ones).
    pub history_queues: usize,
    pub log_format: LogFormat,
    /// `RUST_LOG`, already checked to parse.
    pub log_filter: String,
    pub celery: CeleryConfig,
    /// Trace export; `None` without an endpoint or with `OTEL_SDK_DISABLED=true`.
    pub otel: Option<OtelConfig>,
    /// Metrics pushed over OTLP; `None` without an endpoint, with `OTEL_METRICS_EXPORTER=none`
    /// or `OTEL_SDK_DISABLED=true`.
    pub otel_metrics: Option<MetricsPush>,
    /// Where state changes are sent; no receiver: none.
    pub notify: notify::NotifyConfig,
}

impl Config {
    /// Validates every setting; the first error wins.
    pub fn from_settings(s: &Settings) -> Result<Config, ConfigError> {
        let (targets, default_target, ignored, warnings) = targets::targets(s)?;
        let listen = listen_addr(s)?;
        let probe_interval = duration_or(vars::PROBE_INTERVAL, &s.probe_interval, "5s")?;
        if probe_interval < Duration::from_millis(50) || probe_interval > Duration::from_secs(3600)
        {
            return Err(invalid(
                vars::PROBE_INTERVAL,
                s.probe_interval.as_deref(),
                "must be between 50ms and 1h",
            ));
        }
        // Unset, the timeout and the SLO follow what they must be shorter than, so that a
        // short interval alone never trips over a default the user did not write.
        let probe_timeout = match non_empty(vars::PROBE_TIMEOUT, &s.probe_timeout)? {
            None => Duration::from_secs(1).min(probe_interval * 4 / 5),
            Some(_) => duration_or(vars::PROBE_TIMEOUT, &s.probe_timeout, "1s")?,
        };
        let latency_slo = match non_empty(vars::LATENCY_SLO, &s.latency_slo)? {
            None => Duration::from_millis(100).min(probe_timeout * 4 / 5),
            Some(_) => duration_or(vars::LATENCY_SLO, &s.latency_slo, "100ms")?,
        };
        if probe_timeout < Duration::from_millis(10) {
            return Err(invalid(
                vars::PROBE_TIMEOUT,
                s.probe_timeout.as_deref(),
                "must be at least 10ms",
            ));
        }
        if probe_timeout >= probe_interval {
            return Err(ConfigError::Conflict {
                var: vars::PROBE_TIMEOUT,
                problem: format!(
                    "{} must be shorter than the probe interval {} ({})",
                    show(probe_timeout),
                    show(probe_interval),
                    vars::PROBE_INTERVAL.env
                ),
            });
        }
        if latency_slo.is_zero() || latency_slo >= probe_timeout {
            return Err(ConfigError::Conflict {
                var: vars::LATENCY_SLO,
                problem: format!(
                    "{} must be above 0 and shorter than the probe timeout {} ({}): a slower reply is already a failure",
                    show(latency_slo),
                    show(probe_timeout),
                    vars::PROBE_TIMEOUT.env
                ),
            });
        }
        let auth_recheck = duration_or(vars::AUTH_RECHECK, &s.auth_recheck, "30s")?;
        if auth_recheck < Duration::from_secs(1) {
            return Err(invalid(
                vars::AUTH_RECHECK,
                s.auth_recheck.as_deref(),
                "must be at least 1s",
            ));
        }
        let celery = celery::celery(s, &targets)?;
        let otel = otel::otel(s)?;
        let otel_metrics = otel::metrics(s)?;
        let notify = notify::notify(s, probe_interval)?;
        let ready_checks = ready_checks(s, &targets)?;
        let auth_token = match non_empty(vars::AUTH_TOKEN, &s.auth_token)? {
            None => None,
            Some(t) if t.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                return Err(invalid(
                    vars::AUTH_TOKEN,
                    None,
                    "must not contain spaces or control characters",
                ));
            }
            Some(t) => Some(Secret(t.to_string())),
        };
        let max_connections = count(
            vars::MAX_CONNECTIONS,
            &s.max_connections,
            DEFAULT_MAX_CONNECTIONS as u64,
            1,
            1_000_000,
        )? as usize;
        let history_queues = count(
            vars::HISTORY_QUEUES,
            &s.history_queues,
            DEFAULT_HISTORY_QUEUES as u64,
            0,
            MAX_HISTORY_QUEUES as u64,
        )? as usize;
        let log_format = match non_empty(vars::LOG_FORMAT, &s.log_format)? {
            None => LogFormat::Text,
            Some(f) if f.eq_ignore_ascii_case("text") => LogFormat::Text,
            Some(f) if f.eq_ignore_ascii_case("json") => LogFormat::Json,
            Some(f) => {
                return Err(invalid(
                    vars::LOG_FORMAT,
                    Some(f),
                    "is not a log format; use text or json",
                ));
            }
        };
        let log_filter = match s.log_level.as_deref().map(str::trim) {
            None | Some("") => "info".to_string(),
            Some(f) => {
                tracing_subscriber::EnvFilter::builder()
                    .parse(f)
                    .map_err(|e| invalid(vars::RUST_LOG, Some(f), &format!("is not valid: {e}")))?;
                f.to_string()
            }
        };
        Ok(Config {
            targets,
            default_target,
            ignored,
            warnings,
            listen,
            probe_interval,
            probe_timeout,
            latency_slo,
            auth_recheck,
            ready_checks,
            auth_token,
            max_connections,
            history_queues,
            log_format,
            log_filter,
            celery,
            otel,
            otel_metrics,
            notify,
        })
    }
}

fn invalid(var: Var, value: Option<&str>, problem: &str) -> ConfigError {
    ConfigError::Invalid {
        var,
        value: value.map(|v| v.chars().take(80).collect()),
        problem: problem.to_string(),
    }
}

/// `None` when unset; an error when set to blanks.
fn non_empty(var: Var, value: &Option<String>) -> Result<Option<&str>, ConfigError> {
    match value.as_deref().map(str::trim) {
        None => Ok(None),
        Some("") => Err(ConfigError::Empty { var }),
        Some(v) => Ok(Some(v)),
    }
}

fn listen_addr(s: &Settings) -> Result<SocketAddr, ConfigError> {
    if let Some(text) = non_empty(vars::LISTEN_ADDR, &s.listen_addr)? {
        return text.parse().map_err(|_| {
            invalid(
                vars::LISTEN_ADDR,
                Some(text),
                "is not an address:port such as [::]:9811 or 0.0.0.0:9811",
            )
        });
    }
    let port = match non_empty(vars::PORT, &s.port)? {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| invalid(vars::PORT, Some(p), "is not a port (0-65535)"))?,
    };
    Ok(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)))
}

fn ready_checks(s: &Settings, targets: &[Target]) -> Result<Vec<String>, ConfigError> {
    let redis: Vec<String> = targets.iter().flat_map(Target::check_names).collect();
    let Some(text) = non_empty(vars::READY_CHECKS, &s.ready_checks)? else {
        return Ok(redis);
    };
    let mut all = redis;
    all.push(CELERY_CHECK.to_string());
    let mut chosen = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !all.iter().any(|known| known == name) {
            return Err(invalid(
                vars::READY_CHECKS,
                Some(name),
                &format!("is not a check; known checks: {}", all.join(", ")),
            ));
        }
        if !chosen.iter().any(|c| c == name) {
            chosen.push(name.to_string());
        }
    }
    if chosen.is_empty() {
        return Err(ConfigError::Empty {
            var: vars::READY_CHECKS,
        });
    }
    Ok(chosen)
}

fn duration_or(var: Var, value: &Option<String>, default: &str) -> Result<Duration, ConfigError> {
    let text = non_empty(var, value)?.unwrap_or(default);
    parse_duration(text).ok_or_else(|| {
        invalid(
            var,
            Some(text),
            "is not a duration; write a number and a unit, such as 500ms, 5s or 1m",
        )
    })
}

#[cfg(test)]
mod tests;
