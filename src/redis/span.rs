//! The tracing spans of Redis commands, with the OpenTelemetry database conventions'
//! attributes; exported when `telemetry::otel` is set up, free otherwise.

use crate::redis::failure::Failure;
use crate::redis::target::{Address, Target};

/// The target of events meant only as span events (not log lines): the log filter turns
/// it off, the trace layer keeps it.
pub const SPAN_EVENT: &str = "redis_celery_sidecar::span_event";

/// A span around one Redis command or pipeline, with the database semantic conventions'
/// attributes. `operation` is the command (`PING`) or `PIPELINE`. Dropped before `ok` or
/// `failed` (the probe's timeout cut the command short), it ends as a timeout error, so a
/// frozen server shows on the command's span too, not only on the probe's.
pub struct Command {
    span: tracing::Span,
    over: bool,
}

impl Command {
    pub fn new(target: &Target, operation: &'static str, batch: Option<usize>) -> Command {
        let (address, port) = match target.address() {
            Address::Tcp { host, port, .. } => (host.clone(), Some(*port)),
            Address::Unix { path } => (path.clone(), None),
            Address::Sentinel(s) => match s.current() {
                Some(m) => (m.host, Some(m.port)),
                None => (s.master.clone(), None),
            },
        };
        let span = tracing::info_span!(
            target: "redis_celery_sidecar::redis",
            "redis command",
            otel.name = operation,
            otel.kind = "client",
            "db.system.name" = "redis",
            "db.operation.name" = operation,
            "db.namespace" = target.db().to_string(),
            "server.address" = address,
            "server.port" = tracing::field::Empty,
            "db.operation.batch.size" = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            "error.type" = tracing::field::Empty,
        );
        if let Some(port) = port {
            span.record("server.port", i64::from(port));
        }
        // The conventions: a batch size is at least 2 (a pipeline of one is one command).
        if let Some(n) = batch.filter(|n| *n >= 2) {
            span.record("db.operation.batch.size", n as i64);
        }
        Command { span, over: false }
    }

    /// The span, to instrument the command's future with.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The command answered.
    pub fn ok(mut self) {
        self.over = true;
    }

    /// The command failed with `failure`.
    pub fn failed(mut self, failure: &Failure) {
        fail(&self.span, failure);
        self.over = true;
    }
}

impl Drop for Command {
    fn drop(&mut self) {
        if !self.over {
            self.span.record("otel.status_code", "ERROR");
            self.span.record(
                "otel.status_description",
                "cut short: the probe's timeout ran out while waiting for the reply",
            );
            self.span.record("error.type", "timeout");
        }
    }
}

/// Marks `span` failed, with the cause and its `reason` label as `error.type`.
pub fn fail(span: &tracing::Span, failure: &Failure) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", failure.message.as_str());
    span.record("error.type", failure.reason.as_str());
}
