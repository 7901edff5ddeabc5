//! The `check` command: every target diagnosed once, step by step (see [`crate::check::diagnose`]),
//! concurrently; a human report or JSON; exit 0 when everything is healthy, 1 otherwise.

pub mod diagnose;
pub mod pidbox;

use std::fmt::Write as _;

use serde_json::{Map, json};

use crate::config::{CELERY_CHECK, Config};
use crate::redis::failure::Reason;
use crate::verdict::Finding;
use diagnose::{Diagnosis, Step, Verdict};

/// Diagnoses every target (the broker with Celery's steps; with `ping`, an active
/// `inspect ping` too). Returns the exit code and the report to print.
pub async fn check(config: &Config, json: bool, ping: bool) -> (u8, String) {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, target) in config.targets.iter().enumerate() {
        let (target, config) = (target.clone(), config.clone());
        let broker = config.celery.broker.as_ref() == Some(&target);
        tasks.spawn(async move {
            (
                i,
                diagnose::diagnose(&target, &config, broker, broker && ping).await,
            )
        });
    }
    let mut done: Vec<(usize, Diagnosis)> = Vec::new();
    // A diagnosis that panicked (a bug) must not vanish from the report: it fails the check.
    let mut crashed = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(d) => done.push(d),
            Err(_) => crashed += 1,
        }
    }
    done.sort_by_key(|(i, _)| *i);
    let mut sections: Vec<(Vec<String>, Diagnosis)> = Vec::new();
    for (_, d) in done {
        let (redis, celery) = split(d);
        let broker = config.celery.broker.as_ref() == Some(&redis.target);
        let celery = broker.then(|| celery_part(&redis, celery));
        sections.push((redis.target.check_names(), redis));
        if let Some(c) = celery {
            sections.push((vec![CELERY_CHECK.to_string()], c));
        }
    }
    let mut worst = sections
        .iter()
        .map(|(_, d)| d.verdict())
        .max()
        .unwrap_or(Verdict::Ok);
    if crashed > 0 {
        worst = Verdict::Fail;
    }
    let overall = status(worst);
    let code = u8::from(overall != "healthy");
    if json {
        let mut checks = Map::new();
        for (names, d) in &sections {
            for name in names {
                checks.insert(name.clone(), diagnose::check_json(d));
            }
        }
        let mut doc = json!({"status": overall, "checks": checks});
        if !config.warnings.is_empty() {
            doc["warnings"] = json!(config.warnings);
        }
        if crashed > 0 {
            doc["crashed"] = json!(crashed);
        }
        let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        text.push('\n');
        return (code, text);
    }
    let mut text: String = config
        .warnings
        .iter()
        .map(|w| format!("warning: {w}\n"))
        .collect();
    text.push_str(&human(&sections, overall));
    if crashed > 0 {
        text.push_str(&format!(
            "{crashed} diagnosis(es) crashed: a bug, please report it (RUST_LOG=debug shows more)\n"
        ));
    }
    (code, text)
}

/// A diagnosis's Redis part and its Celery steps and findings.
fn split(d: Diagnosis) -> (Diagnosis, (Vec<Step>, Vec<Finding>)) {
    let (celery, redis): (Vec<Step>, Vec<Step>) = d
        .steps
        .iter()
        .cloned()
        .partition(|s| s.name.starts_with("celery"));
    let (celery_findings, findings): (Vec<Finding>, Vec<Finding>) = d
        .findings
        .iter()
        .cloned()
        .partition(|f| f.step.starts_with("celery"));
    (
        Diagnosis {
            steps: redis,
            findings,
            ..d
        },
        (celery, celery_findings),
    )
}

/// The Celery check: its steps, or, when the broker itself failed, that failure.
fn celery_part(redis: &Diagnosis, (steps, findings): (Vec<Step>, Vec<Finding>)) -> Diagnosis {
    let mut steps = steps;
    if let Some(failed) = redis.failure() {
        steps.insert(
            0,
            Step {
                name: "celery broker",
                verdict: Verdict::Fail,
                detail: format!("the broker is not usable: {}", failed.detail),
                fix: failed.fix.clone(),
                reason: failed.reason.or(Some(Reason::Other)),
                took: None,
            },
        );
    }
    Diagnosis {
        target: redis.target.clone(),
        steps,
        ping: None,
        info: None,
        findings,
    }
}

fn status(v: Verdict) -> &'static str {
    match v {
        Verdict::Fail => "unhealthy",
        Verdict::Warn => "degraded",
        Verdict::Ok | Verdict::Skip => "healthy",
    }
}

/// The aligned text report: per check a header line, then one line per step, `fix:` under
/// a warning or a failure. Readable without colour.
fn human(sections: &[(Vec<String>, Diagnosis)], overall: &str) -> String {
    let width = sections
        .iter()
        .flat_map(|(_, d)| d.steps.iter().map(|s| s.name.len()))
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (names, d) in sections {
        let _ = writeln!(
            out,
            "{}  {}  {}",
            names.join(", "),
            status(d.verdict()),
            d.target.redacted()
        );
        for s in &d.steps {
            let took = match s.took {
                Some(t) => format!(" ({:.1}ms)", t.as_secs_f64() * 1e3),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "  {:<width$}  {:<4}  {}{took}",
                s.name,
                s.verdict.as_str(),
                s.detail
            );
            if let Some(fix) = &s.fix {
                let _ = writeln!(out, "  {:<width$}        fix: {fix}", "");
            }
        }
        out.push('\n');
    }
    let _ = writeln!(out, "overall: {overall}");
    out
}

/// `check --notify-test`: one test message to each receiver, and what each answered; exit
/// 0 when every one took it (2xx), 1 otherwise (or when none is set).
pub async fn notify_test(config: &Config) -> (u8, String) {
    use crate::notify::{deliver, message};
    let n = &config.notify;
    if n.receivers.is_empty() {
        return (
            1,
            "no receiver: set SIDECAR_NOTIFY_URL to a Slack or Discord webhook URL, or any URL that takes a JSON POST\n".to_string(),
        );
    }
    let client = deliver::Client::new(&n.roots);
    let mut out = String::new();
    let mut code = 0;
    for (i, r) in n.receivers.iter().enumerate() {
        let body = message::test_body(r.format, "redis-celery-sidecar");
        let said = match client.post(r, &body).await {
            Ok(a) if a.ok() => format!("ok    answered {} {}", a.status, a.body),
            Ok(a) => {
                code = 1;
                format!("fail  answered {} {}", a.status, a.body)
            }
            Err(e) => {
                code = 1;
                format!("fail  {e}")
            }
        };
        let _ = writeln!(
            out,
            "notify {} ({}, {})  {}",
            i + 1,
            r.format.as_str(),
            r.shown(),
            said.trim_end()
        );
    }
    (code, out)
}
