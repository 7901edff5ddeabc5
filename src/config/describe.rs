//! The effective configuration as `config` prints it.

use super::*;
use crate::text::escape;

impl Config {
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
        line("history queues", &self.history_queues.to_string());
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
            c.broker.as_ref().map_or(
                if self.targets.iter().any(|t| t.cluster().is_some()) {
                    "not watched (Celery cannot use a Redis Cluster; set CELERY_BROKER_URL)"
                } else {
                    "not watched (the broker URL is not probed)"
                },
                |t| t.redacted(),
            ),
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
                "visibility timeout {}, dead after {} missed heartbeats, stalled after {}, a task running too long after {}, forgotten after {}",
                show(c.visibility_timeout),
                c.heartbeat_misses,
                show(c.stall_after),
                show(c.running_max),
                show(c.forget_after)
            ),
        );
        line("celery max workers", &c.max_workers.to_string());
        line(
            "celery beat",
            &if c.beat_expect.is_empty() {
                format!("RedBeat's keys under \"{}\" when present", c.redbeat_prefix)
            } else {
                let tasks: Vec<String> = c
                    .beat_expect
                    .iter()
                    .map(|(n, e)| format!("{n} every {}", show(*e)))
                    .collect();
                format!(
                    "RedBeat's keys under \"{}\" when present, else expected: {}",
                    c.redbeat_prefix,
                    tasks.join(", ")
                )
            },
        );
        let n = &self.notify;
        line(
            "notify",
            &if n.receivers.is_empty() {
                "nothing (SIDECAR_NOTIFY_URL unset)".to_string()
            } else {
                let to: Vec<String> = n
                    .receivers
                    .iter()
                    .map(|r| format!("{} ({})", r.shown(), r.format.as_str()))
                    .collect();
                format!("{}, after a change holds {}", to.join(", "), show(n.after))
            },
        );
        match &self.otel {
            None => line(
                "traces",
                "not exported (no OTLP endpoint, or OTEL_SDK_DISABLED)",
            ),
            Some(o) => {
                line(
                    "traces",
                    &format!(
                        "{} to {} (timeout {})",
                        o.protocol.as_str(),
                        o.endpoint,
                        show(o.timeout)
                    ),
                );
                line("service.name", &o.service_name);
                if !o.headers.is_empty() {
                    line("otlp headers", &redacted(&o.headers));
                }
                line("sampler", &format!("{:?}", o.sampler));
            }
        }
        match &self.otel_metrics {
            None => line(
                "metrics push",
                "off (no OTLP endpoint, OTEL_METRICS_EXPORTER=none or OTEL_SDK_DISABLED)",
            ),
            Some(m) => {
                line(
                    "metrics push",
                    &format!(
                        "{} to {} every {} (timeout {})",
                        m.protocol.as_str(),
                        m.endpoint,
                        show(m.interval),
                        show(m.timeout)
                    ),
                );
                if !m.headers.is_empty() {
                    line("metrics headers", &redacted(&m.headers));
                }
            }
        }
        out
    }
}

/// Header names, their values shown as `***`.
fn redacted(headers: &[(String, Secret)]) -> String {
    let shown: Vec<String> = headers.iter().map(|(k, _)| format!("{k}=***")).collect();
    shown.join(",")
}
