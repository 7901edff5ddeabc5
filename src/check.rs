//! The `check` command: probe every target once and say, per target, whether it works and
//! if not, why.

use std::fmt::Write as _;

use serde_json::Value;
use tokio::time::Instant;

use crate::config::Config;
use crate::snapshot::Status;

/// Probes every target once, concurrently. Returns the exit code (0 all healthy, 1
/// otherwise) and the report to print: aligned text, or the `/healthz` JSON.
pub async fn check(config: &Config, json: bool) -> (u8, String) {
    // The Celery check needs to listen for heartbeats for a while; `check` probes Redis.
    let parts = crate::assemble(config, false);
    let snapshot = parts.snapshot;
    let mut tasks = tokio::task::JoinSet::new();
    for mut runner in parts.runners {
        tasks.spawn(async move { runner.probe_once().await });
    }
    while tasks.join_next().await.is_some() {}
    let (overall, doc) = snapshot.healthz(Instant::now());
    let code = u8::from(overall != Status::Healthy);
    if json {
        let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        text.push('\n');
        return (code, text);
    }
    (code, human(&doc))
}

/// The aligned text report.
fn human(doc: &Value) -> String {
    let mut out = String::new();
    let empty = serde_json::Map::new();
    let checks = doc["checks"].as_object().unwrap_or(&empty);
    let width = checks.keys().map(String::len).max().unwrap_or(0);
    for (name, c) in checks {
        let status = c["status"].as_str().unwrap_or("unknown");
        let endpoint = c["endpoint"].as_str().unwrap_or("");
        let _ = write!(out, "{name:<width$}  {status:<9}  {endpoint}");
        if let Some(ms) = c["latency_ms"].as_f64() {
            let _ = write!(out, "  PING {ms:.2}ms");
        }
        out.push('\n');
        if let Some(error) = c["error"].as_str() {
            let _ = writeln!(out, "{:width$}  cause: {error}", "");
        }
        for w in c["warnings"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "{:width$}  warning: {}", "", w.as_str().unwrap_or(""));
        }
    }
    let _ = writeln!(
        out,
        "overall: {}",
        doc["status"].as_str().unwrap_or("unknown")
    );
    out
}
