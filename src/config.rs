//! Configuration: the raw settings validated once into typed values, with errors that name
//! the variable and never echo a secret.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::cli::Settings;
use crate::target::{Address, Role, Roots, Target};

/// The URL probed when no Redis variable is set.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// The port served when neither `SIDECAR_LISTEN_ADDR` nor `PORT` is set.
pub const DEFAULT_PORT: u16 = 9811;
/// Open HTTP connections at most, by default: far above what scrapers and health checkers
/// use, far below a default file descriptor limit's worth of idle attackers.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

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

/// The names of every setting.
pub mod vars {
    use super::Var;
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
}

/// How traces are exported. `None` in `Config::otel` means no exporter at all.
#[derive(Debug, Clone, PartialEq)]
pub struct OtelConfig {
    /// The URL spans are sent to, resolved as the OTLP specification says.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Sent with every export; values are secrets (API keys).
    pub headers: Vec<(String, Secret)>,
    pub timeout: Duration,
    pub service_name: String,
    /// Other resource attributes, from `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource: Vec<(String, String)>,
    pub sampler: Sampler,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

/// `OTEL_TRACES_SAMPLER` and its argument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedRatio(f64),
}

/// `CeleryConfig::broker` when the broker is not probed: Celery is not watched.
pub const NO_BROKER: usize = usize::MAX;

/// The name of the Celery check.
pub const CELERY_CHECK: &str = "celery";

/// How the sidecar reads Celery's keys and channels on the broker (kombu's transport
/// options), and what it calls healthy.
#[derive(Debug, Clone, PartialEq)]
pub struct CeleryConfig {
    /// Index in `Config::targets` of the broker: the `broker` role, else the cache;
    /// [`NO_BROKER`] when the broker URL is one the sidecar does not probe (Sentinel).
    pub broker: usize,
    /// Queues watched whether or not a binding names them (`celery` always among them).
    pub queues: Vec<String>,
    pub min_workers: u32,
    /// kombu's `global_keyprefix`, when set; else found on the broker.
    pub keyprefix: Option<Vec<u8>>,
    /// kombu's `sep`, when set; else found on the broker.
    pub sep: Option<Vec<u8>>,
    /// kombu's `priority_steps` (ascending), when set: only these count in a queue's
    /// length. Else every key kombu can write a priority to counts.
    pub priority_steps: Option<Vec<u32>>,
    pub visibility_timeout: Duration,
    pub heartbeat_misses: u32,
    pub stall_after: Duration,
    pub max_workers: usize,
    pub forget_after: Duration,
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
    pub log_format: LogFormat,
    /// `RUST_LOG`, already checked to parse.
    pub log_filter: String,
    pub celery: CeleryConfig,
    /// Trace export; `None` without an endpoint or with `OTEL_SDK_DISABLED=true`.
    pub otel: Option<OtelConfig>,
}

impl Config {
    /// Validates every setting; the first error wins.
    pub fn from_settings(s: &Settings) -> Result<Config, ConfigError> {
        let (targets, default_target, ignored, warnings) = targets(s)?;
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
        let celery = celery(s, &targets)?;
        let otel = otel(s)?;
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
            log_format,
            log_filter,
            celery,
            otel,
        })
    }

    /// The effective configuration as `config` prints it: secrets redacted.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: &str| out.push_str(&format!("{k:<18} {v}\n"));
        for t in &self.targets {
            line(
                "target",
                &format!("{:<34} {}", t.check_names().join(","), t.redacted()),
            );
        }
        if self.default_target {
            line("", "(no Redis variable set: probing the local default)");
        }
        for note in &self.ignored {
            line("ignored", note);
        }
        for warning in &self.warnings {
            line("warning", warning);
        }
        line("listen", &self.listen.to_string());
        line("probe interval", &show(self.probe_interval));
        line("probe timeout", &show(self.probe_timeout));
        line("latency SLO", &show(self.latency_slo));
        line("auth recheck", &show(self.auth_recheck));
        line("ready checks", &self.ready_checks.join(","));
        line("max connections", &self.max_connections.to_string());
        line(
            "auth token",
            if self.auth_token.is_some() {
                "set (***)"
            } else {
                "not set: /metrics and /healthz are open"
            },
        );
        line(
            "log format",
            match self.log_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            },
        );
        line("log filter", &self.log_filter);
        let c = &self.celery;
        line(
            "celery broker",
            self.targets
                .get(c.broker)
                .map_or("not watched (the broker URL is not probed)", |t| {
                    t.redacted()
                }),
        );
        line(
            "celery queues",
            &format!("{} (+ discovered)", c.queues.join(",")),
        );
        line("celery min workers", &c.min_workers.to_string());
        let shown = |v: &Option<Vec<u8>>| match v {
            Some(v) => format!("\"{}\"", escape(v)),
            None => "found on the broker".to_string(),
        };
        line(
            "celery keys",
            &format!(
                "prefix {}, sep {}, priority steps {}",
                shown(&c.keyprefix),
                shown(&c.sep),
                match &c.priority_steps {
                    Some(steps) => steps
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                    None => "any (0 to 9)".to_string(),
                }
            ),
        );
        line(
            "celery timing",
            &format!(
                "visibility timeout {}, dead after {} missed heartbeats, stalled after {}, forgotten after {}",
                show(c.visibility_timeout),
                c.heartbeat_misses,
                show(c.stall_after),
                show(c.forget_after)
            ),
        );
        line("celery max workers", &c.max_workers.to_string());
        match &self.otel {
            None => line(
                "traces",
                "not exported (no OTLP endpoint, or OTEL_SDK_DISABLED)",
            ),
            Some(o) => {
                let protocol = match o.protocol {
                    OtlpProtocol::Grpc => "grpc",
                    OtlpProtocol::HttpProtobuf => "http/protobuf",
                };
                line(
                    "traces",
                    &format!("{protocol} to {} (timeout {})", o.endpoint, show(o.timeout)),
                );
                line("service.name", &o.service_name);
                let headers: Vec<String> =
                    o.headers.iter().map(|(k, _)| format!("{k}=***")).collect();
                if !headers.is_empty() {
                    line("otlp headers", &headers.join(","));
                }
                line("sampler", &format!("{:?}", o.sampler));
            }
        }
        out
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

/// The targets, whether the local default is probed, notes and warnings.
type Targets = (Vec<Target>, bool, Vec<String>, Vec<String>);

fn targets(s: &Settings) -> Result<Targets, ConfigError> {
    let mut ignored = Vec::new();
    let mut warnings = Vec::new();
    let mut wanted = Vec::new();
    let url = |var: Var,
               role: Role,
               text: &str,
               wanted: &mut Vec<Target>,
               ignored: &mut Vec<String>,
               warnings: &mut Vec<String>|
     -> Result<(), ConfigError> {
        let read = Target::read(role, var.env, text).map_err(|e| invalid(var, None, &e.0))?;
        ignored.extend(read.notes);
        warnings.extend(read.warnings);
        if let Some(t) = read.target {
            wanted.push(t.with_source(var.env));
        }
        Ok(())
    };

    let redis_url = non_empty(vars::REDIS_URL, &s.redis_url)?;
    let host = non_empty(vars::REDISHOST, &s.redis_host)?;
    let port = non_empty(vars::REDISPORT, &s.redis_port)?;
    let password = s.redis_password.as_deref();
    let user = s.redis_user.as_deref();
    let mut parts = None;
    match (redis_url, host) {
        (Some(text), _) => {
            url(
                vars::REDIS_URL,
                Role::Cache,
                text,
                &mut wanted,
                &mut ignored,
                &mut warnings,
            )?;
            if host.is_some() {
                ignored.push(
                    "REDISHOST/REDISPORT/REDISUSER/REDISPASSWORD: REDIS_URL is set and wins".into(),
                );
            }
        }
        (None, Some(host)) => {
            let port = match port {
                None => 6379,
                Some(p) => match p.parse::<u16>() {
                    Ok(p) if p > 0 => p,
                    _ => return Err(invalid(vars::REDISPORT, Some(p), "is not a port (1-65535)")),
                },
            };
            if host.contains(['/', '@', ' ']) {
                return Err(invalid(
                    vars::REDISHOST,
                    None,
                    "must be a host name or address, not a URL (put URLs in REDIS_URL)",
                ));
            }
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if host.contains(':') && bare.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(invalid(
                    vars::REDISHOST,
                    Some(host),
                    "must be a host name without a port (put the port in REDISPORT)",
                ));
            }
            parts = Some(Target::from_parts(host, port, user, password));
        }
        (None, None) => {
            if password.is_some_and(|p| !p.is_empty()) || port.is_some() {
                return Err(ConfigError::Conflict {
                    var: vars::REDISHOST,
                    problem: "is not set, but REDISPORT or REDISPASSWORD is: set REDISHOST, or give the whole URL in REDIS_URL".into(),
                });
            }
        }
    }

    let broker_text = non_empty(vars::CELERY_BROKER_URL, &s.celery_broker_url)?;
    if let Some(text) = broker_text {
        url(
            vars::CELERY_BROKER_URL,
            Role::Broker,
            text,
            &mut wanted,
            &mut ignored,
            &mut warnings,
        )?;
    }
    if let Some(text) = non_empty(vars::CELERY_RESULT_BACKEND, &s.celery_result_backend)? {
        // Celery's `by_url`: `redis+socket://` is the redis backend with a `socket://` URL;
        // `redis`, `rediss` and `sentinel` are its Redis backends.
        let scheme = text.split("://").next().unwrap_or("").to_ascii_lowercase();
        let backend = scheme.split('+').next().unwrap_or("");
        let redis_like = text.contains("://")
            && (matches!(backend, "redis" | "rediss" | "sentinel")
                || matches!(scheme.as_str(), "unix" | "socket"));
        if redis_like {
            url(
                vars::CELERY_RESULT_BACKEND,
                Role::ResultBackend,
                text,
                &mut wanted,
                &mut ignored,
                &mut warnings,
            )?;
        } else {
            // Named only when it is a URL's scheme (`db+postgresql://`, `rpc://`) or a
            // known alias (`django-db`), never when it could be a credential.
            const ALIASES: [&str; 4] = ["django-db", "django-cache", "disabled", "rpc"];
            let scheme = text.split(':').next().unwrap_or("").to_ascii_lowercase();
            let clean = if text.contains("://") {
                scheme.len() <= 24
                    && !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-._".contains(c))
            } else {
                ALIASES.contains(&scheme.as_str())
            };
            ignored.push(if clean {
                format!(
                    "CELERY_RESULT_BACKEND: the {scheme} backend is not Redis, so it is not probed"
                )
            } else {
                "CELERY_RESULT_BACKEND: not a Redis URL, so it is not probed".to_string()
            });
        }
    }
    if let Some(p) = parts {
        wanted.insert(0, p);
    }

    let any_redis = redis_url.is_some() || host.is_some() || broker_text.is_some();
    let default_target =
        wanted.is_empty() && !any_redis && ignored.iter().all(|n| !n.contains("Sentinel"));
    if default_target {
        wanted
            .push(Target::parse(Role::Cache, DEFAULT_REDIS_URL).expect("the default URL is valid"));
    }
    if wanted.is_empty() {
        return Err(ConfigError::Conflict {
            var: if broker_text.is_some() {
                vars::CELERY_BROKER_URL
            } else {
                vars::REDIS_URL
            },
            problem: "no Redis is left to probe: Redis Sentinel URLs are recognised but not supported yet; set REDIS_URL to the master's redis:// URL to probe it meanwhile".into(),
        });
    }
    // SSL_CERT_FILE and SSL_CERT_DIR add roots to every TLS target, as OpenSSL's default
    // paths do for the app's Python.
    let mut extra = Vec::new();
    for (var, value) in [
        (vars::SSL_CERT_FILE, &s.ssl_cert_file),
        (vars::SSL_CERT_DIR, &s.ssl_cert_dir),
    ] {
        if let Some(path) = non_empty(var, value)? {
            extra.push(Roots {
                origin: var.env,
                path: path.to_string(),
            });
        }
    }
    let mut merged: Vec<Target> = Vec::new();
    for mut t in wanted {
        t.add_roots(&extra);
        if let Address::Tcp { tls: Some(tls), .. } = t.address() {
            crate::tls::check_files(tls).map_err(|problem| {
                let var = extra
                    .iter()
                    .find(|r| problem.starts_with(r.origin))
                    .map(|r| {
                        if r.origin == "SSL_CERT_FILE" {
                            vars::SSL_CERT_FILE
                        } else {
                            vars::SSL_CERT_DIR
                        }
                    })
                    .unwrap_or_else(|| source_var(&t));
                invalid(var, None, &problem)
            })?;
        }
        match merged.iter_mut().find(|m| m.same_connection(&t)) {
            Some(m) => m.absorb(&t),
            None => merged.push(t),
        }
    }
    Ok((merged, default_target, ignored, warnings))
}

/// The variable a target was read from, for an error about its URL.
fn source_var(t: &Target) -> Var {
    match t.sources().first().copied() {
        Some("CELERY_BROKER_URL") => vars::CELERY_BROKER_URL,
        Some("CELERY_RESULT_BACKEND") => vars::CELERY_RESULT_BACKEND,
        _ => vars::REDIS_URL,
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

fn celery(s: &Settings, targets: &[Target]) -> Result<CeleryConfig, ConfigError> {
    let broker_given = s
        .celery_broker_url
        .as_deref()
        .is_some_and(|t| !t.trim().is_empty());
    let broker = match targets
        .iter()
        .position(|t| t.roles().contains(&Role::Broker))
    {
        Some(i) => i,
        // A broker URL that is not probed (Sentinel): Celery is not watched, rather than
        // watched on the cache, which is not where its keys are.
        None if broker_given => NO_BROKER,
        None => targets
            .iter()
            .position(|t| t.roles().contains(&Role::Cache))
            .unwrap_or(0),
    };
    let mut queues = vec!["celery".to_string()];
    if let Some(text) = non_empty(vars::CELERY_QUEUES, &s.celery_queues)? {
        for q in text.split(',').map(str::trim).filter(|q| !q.is_empty()) {
            if q.chars().any(char::is_control) || q.len() > 200 {
                return Err(invalid(
                    vars::CELERY_QUEUES,
                    None,
                    "a queue name must be at most 200 characters, none of them control characters",
                ));
            }
            if !queues.iter().any(|known| known == q) {
                queues.push(q.to_string());
            }
        }
    }
    let min_workers = count(
        vars::CELERY_MIN_WORKERS,
        &s.celery_min_workers,
        1,
        0,
        100_000,
    )? as u32;
    let heartbeat_misses = count(
        vars::CELERY_HEARTBEAT_MISSES,
        &s.celery_heartbeat_misses,
        2,
        1,
        100,
    )? as u32;
    let max_workers = count(
        vars::CELERY_MAX_WORKERS,
        &s.celery_max_workers,
        256,
        1,
        100_000,
    )? as usize;
    let keyprefix = match &s.celery_keyprefix {
        None => None,
        Some(text) => unescape(text).map(Some).ok_or_else(|| {
            invalid(
                vars::CELERY_KEYPREFIX,
                None,
                "has a \\x escape that is not two hex digits",
            )
        })?,
    };
    let sep = match non_empty(vars::CELERY_SEP, &s.celery_sep)? {
        None => None,
        Some(text) => unescape(text).map(Some).ok_or_else(|| {
            invalid(
                vars::CELERY_SEP,
                None,
                "has a \\x escape that is not two hex digits",
            )
        })?,
    };
    let priority_steps = match non_empty(vars::CELERY_PRIORITY_STEPS, &s.celery_priority_steps)? {
        None => None,
        Some(text) => {
            let steps: Option<Vec<u32>> = text
                .split(',')
                .map(|p| p.trim().parse::<u32>().ok().filter(|&p| p <= 255))
                .collect();
            match steps {
                Some(steps)
                    if !steps.is_empty()
                        && steps.len() <= 256
                        && steps.windows(2).all(|w| w[0] < w[1]) =>
                {
                    Some(steps)
                }
                _ => {
                    return Err(invalid(
                        vars::CELERY_PRIORITY_STEPS,
                        Some(text),
                        "is not an ascending comma list of priorities from 0 to 255, such as 0,3,6,9",
                    ));
                }
            }
        }
    };
    let visibility_timeout = duration_or(
        vars::CELERY_VISIBILITY_TIMEOUT,
        &s.celery_visibility_timeout,
        "1h",
    )?;
    let stall_after = duration_or(vars::CELERY_STALL_AFTER, &s.celery_stall_after, "5m")?;
    let forget_after = duration_or(vars::CELERY_FORGET_AFTER, &s.celery_forget_after, "10m")?;
    for (var, value, d) in [
        (
            vars::CELERY_VISIBILITY_TIMEOUT,
            &s.celery_visibility_timeout,
            visibility_timeout,
        ),
        (vars::CELERY_STALL_AFTER, &s.celery_stall_after, stall_after),
        (
            vars::CELERY_FORGET_AFTER,
            &s.celery_forget_after,
            forget_after,
        ),
    ] {
        if d < Duration::from_secs(1) {
            return Err(invalid(var, value.as_deref(), "must be at least 1s"));
        }
    }
    Ok(CeleryConfig {
        broker,
        queues,
        min_workers,
        keyprefix,
        sep,
        priority_steps,
        visibility_timeout,
        heartbeat_misses,
        stall_after,
        max_workers,
        forget_after,
    })
}

fn otel(s: &Settings) -> Result<Option<OtelConfig>, ConfigError> {
    let disabled = match non_empty(vars::OTEL_SDK_DISABLED, &s.otel_sdk_disabled)? {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) => {
            return Err(invalid(
                vars::OTEL_SDK_DISABLED,
                Some(v),
                "is not true or false",
            ));
        }
    };
    let protocol_var = if s.otel_traces_protocol.is_some() {
        (vars::OTEL_TRACES_PROTOCOL, &s.otel_traces_protocol)
    } else {
        (vars::OTEL_PROTOCOL, &s.otel_protocol)
    };
    let protocol = match non_empty(protocol_var.0, protocol_var.1)? {
        None => OtlpProtocol::HttpProtobuf,
        Some("grpc") => OtlpProtocol::Grpc,
        Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
        Some(v) => {
            return Err(invalid(
                protocol_var.0,
                Some(v),
                "is not supported; use grpc or http/protobuf",
            ));
        }
    };
    let url = |var: Var, text: &str| -> Result<String, ConfigError> {
        let parsed = url::Url::parse(text)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        match parsed {
            Some(u) if u.password().is_none() && u.username().is_empty() => Ok(text.to_string()),
            Some(_) => Err(invalid(
                var,
                None,
                "must not hold credentials; put them in OTEL_EXPORTER_OTLP_HEADERS",
            )),
            None => Err(invalid(var, None, "is not an http:// or https:// URL")),
        }
    };
    let endpoint = match (
        non_empty(vars::OTEL_TRACES_ENDPOINT, &s.otel_traces_endpoint)?,
        non_empty(vars::OTEL_ENDPOINT, &s.otel_endpoint)?,
    ) {
        (Some(traces), _) => Some(url(vars::OTEL_TRACES_ENDPOINT, traces)?),
        (None, Some(base)) => {
            let base = url(vars::OTEL_ENDPOINT, base)?;
            Some(match protocol {
                // The signal path is added to the base URL for OTLP/HTTP, not for gRPC.
                OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
                OtlpProtocol::Grpc => base,
            })
        }
        (None, None) => None,
    };
    let mut headers = Vec::new();
    for (var, value) in [
        (vars::OTEL_HEADERS, &s.otel_headers),
        (vars::OTEL_TRACES_HEADERS, &s.otel_traces_headers),
    ] {
        for (k, v) in key_values(var, value, true)? {
            headers.retain(|(known, _): &(String, Secret)| !known.eq_ignore_ascii_case(&k));
            headers.push((k.to_ascii_lowercase(), Secret(v)));
        }
    }
    let timeout_var = if s.otel_traces_timeout.is_some() {
        (vars::OTEL_TRACES_TIMEOUT, &s.otel_traces_timeout)
    } else {
        (vars::OTEL_TIMEOUT, &s.otel_timeout)
    };
    let timeout = match non_empty(timeout_var.0, timeout_var.1)? {
        None => Duration::from_secs(10),
        // The specification's unit is milliseconds; `5s` is taken too.
        Some(text) => match text.parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => parse_duration(text)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    invalid(
                        timeout_var.0,
                        Some(text),
                        "is not a timeout in milliseconds, such as 10000",
                    )
                })?,
        },
    };
    let mut resource = key_values(
        vars::OTEL_RESOURCE_ATTRIBUTES,
        &s.otel_resource_attributes,
        false,
    )?;
    let from_resource = resource
        .iter()
        .position(|(k, _)| k == "service.name")
        .map(|i| resource.remove(i).1);
    let service_name = match non_empty(vars::OTEL_SERVICE_NAME, &s.otel_service_name)? {
        Some(name) => name.to_string(),
        None => from_resource.unwrap_or_else(|| env!("CARGO_PKG_NAME").to_string()),
    };
    let ratio = || -> Result<f64, ConfigError> {
        match non_empty(vars::OTEL_TRACES_SAMPLER_ARG, &s.otel_traces_sampler_arg)? {
            None => Ok(1.0),
            Some(text) => text
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    invalid(
                        vars::OTEL_TRACES_SAMPLER_ARG,
                        Some(text),
                        "is not a ratio from 0 to 1",
                    )
                }),
        }
    };
    let sampler = match non_empty(vars::OTEL_TRACES_SAMPLER, &s.otel_traces_sampler)? {
        None | Some("parentbased_always_on") => Sampler::ParentBasedAlwaysOn,
        Some("always_on") => Sampler::AlwaysOn,
        Some("always_off") => Sampler::AlwaysOff,
        Some("traceidratio") => Sampler::Ratio(ratio()?),
        Some("parentbased_always_off") => Sampler::ParentBasedAlwaysOff,
        Some("parentbased_traceidratio") => Sampler::ParentBasedRatio(ratio()?),
        Some(v) => {
            return Err(invalid(
                vars::OTEL_TRACES_SAMPLER,
                Some(v),
                "is not a sampler; use always_on, always_off, traceidratio or parentbased_always_on, parentbased_always_off, parentbased_traceidratio",
            ));
        }
    };
    if protocol == OtlpProtocol::HttpProtobuf
        && endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("https://"))
    {
        let var = if s.otel_traces_endpoint.is_some() {
            vars::OTEL_TRACES_ENDPOINT
        } else {
            vars::OTEL_ENDPOINT
        };
        return Err(invalid(
            var,
            None,
            "https needs OTEL_EXPORTER_OTLP_PROTOCOL=grpc; http/protobuf is sent over plain http (a collector on the private network)",
        ));
    }
    match endpoint {
        Some(endpoint) if !disabled => Ok(Some(OtelConfig {
            endpoint,
            protocol,
            headers,
            timeout,
            service_name,
            resource,
            sampler,
        })),
        _ => Ok(None),
    }
}

/// `key=value,key2=value2`, values percent-decoded (the W3C baggage format the OTLP
/// variables use). With `secret`, errors never show a value.
fn key_values(
    var: Var,
    value: &Option<String>,
    secret: bool,
) -> Result<Vec<(String, String)>, ConfigError> {
    let Some(text) = value.as_deref().map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let shown = if secret { None } else { Some(item) };
        let Some((k, v)) = item.split_once('=') else {
            return Err(invalid(var, shown, "is not a key=value list"));
        };
        let (k, v) = (
            k.trim(),
            percent_encoding::percent_decode_str(v.trim())
                .decode_utf8()
                .ok()
                .map(|v| v.into_owned()),
        );
        let valid_key = !k.is_empty() && k.chars().all(|c| c.is_ascii_graphic() && c != '=');
        match v {
            Some(v) if valid_key => out.push((k.to_string(), v)),
            _ => {
                return Err(invalid(
                    var,
                    shown,
                    "is not a key=value list with percent-encoded values",
                ));
            }
        }
    }
    Ok(out)
}

/// Reads `\xNN` escapes (and `\\`); everything else is taken as UTF-8 bytes.
pub fn unescape(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (b'\\', Some(b'x')) => {
                let hex = std::str::from_utf8(bytes.get(i + 2..i + 4)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 4;
            }
            (b'\\', Some(b'\\')) => {
                out.push(b'\\');
                i += 2;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Byte strings as sentences quote them: `"a", "\x06\x16"`.
pub fn quoted<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> String {
    items
        .into_iter()
        .map(|b| format!("\"{}\"", escape(b)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Bytes as `config` shows them: printable ASCII as is, others as `\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if (0x20..0x7f).contains(&b) && b != b'\\' {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
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

/// Parses `250us`, `500ms`, `1.5s`, `2m`, `1h`. A bare number has no unit and is refused.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "us" | "µs" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    if !seconds.is_finite() || seconds > 1e9 {
        return None;
    }
    Some(Duration::from_secs_f64(seconds))
}

/// A duration the way a person writes it: `500ms`, `5s`, `1.5s`.
pub fn show(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
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
                "SIDECAR_CELERY_MAX_WORKERS" => s.celery_max_workers = v,
                "SIDECAR_CELERY_FORGET_AFTER" => s.celery_forget_after = v,
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
        let c =
            Config::from_settings(&settings(&[("CELERY_RESULT_BACKEND", "hunter2pw")])).unwrap();
        assert!(!c.describe().contains("hunter2pw"), "{}", c.describe());
    }

    #[test]
    fn celery_defaults_and_settings() {
        let c = Config::from_settings(&Settings::default()).unwrap().celery;
        assert_eq!(c.broker, 0);
        assert_eq!(c.queues, ["celery"]);
        assert_eq!(c.min_workers, 1);
        assert_eq!(c.keyprefix, None, "found on the broker");
        assert_eq!(c.sep, None);
        assert_eq!(c.priority_steps, None);
        assert_eq!(c.visibility_timeout, Duration::from_secs(3600));
        assert_eq!(c.heartbeat_misses, 2);
        assert_eq!(c.stall_after, Duration::from_secs(300));
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
        assert_eq!(c.targets[c.celery.broker].check_names(), ["redis:broker"]);
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

    #[test]
    fn otel_settings_follow_the_specification() {
        let otel = |pairs: &[(&str, &str)]| Config::from_settings(&settings(pairs)).unwrap().otel;
        assert_eq!(otel(&[]), None, "no endpoint: no exporter");
        assert_eq!(
            otel(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true")
            ]),
            None
        );
        let o = otel(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]).unwrap();
        assert_eq!(o.endpoint, "http://c:4318/v1/traces");
        assert_eq!(o.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(o.timeout, Duration::from_secs(10));
        assert_eq!(o.service_name, "redis-celery-sidecar");
        assert_eq!(o.sampler, Sampler::ParentBasedAlwaysOn);
        let o = otel(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=from-attrs,team=a%20b",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-api-key=k1,Authorization=Bearer%20t",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-api-key=k2"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .unwrap();
        assert_eq!(o.endpoint, "http://c:4317", "gRPC takes the endpoint as is");
        assert_eq!(o.timeout, Duration::from_millis(2500));
        assert_eq!(o.service_name, "from-attrs");
        assert_eq!(o.resource, [("team".to_string(), "a b".to_string())]);
        let headers: Vec<(&str, &str)> = o
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        assert_eq!(
            headers,
            [("authorization", "Bearer t"), ("x-api-key", "k2")]
        );
        assert_eq!(o.sampler, Sampler::ParentBasedRatio(0.25));
        let o = otel(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://c/custom"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored"),
            ("OTEL_SERVICE_NAME", "named"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=loses"),
        ])
        .unwrap();
        assert_eq!(
            o.endpoint, "https://c/custom",
            "the traces endpoint is used as is"
        );
        assert_eq!(o.service_name, "named", "the environment's name wins");
        let c = Config::from_settings(&settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=hunter2pw"),
        ]))
        .unwrap();
        assert!(
            c.describe().contains("otlp headers       x-api-key=***"),
            "{}",
            c.describe()
        );
        assert!(!c.describe().contains("hunter2pw"));
        assert!(!format!("{c:?}").contains("hunter2pw"));
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
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector")],
                "OTEL_EXPORTER_OTLP_ENDPOINT (--otel-endpoint): https needs OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
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
}
