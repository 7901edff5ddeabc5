//! The snapshot: the latest report of every check, written by the runners and read by HTTP.
//!
//! Each check has its own `watch` channel: a runner replaces its report in one step, readers
//! clone an `Arc` and never wait on a probe. Whether a report is still fresh is decided at
//! read time, so a stuck probe can never leave a stale "healthy" on display.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::redis::failure::Failure;
use crate::serve::health::{CheckDoc, Details, round3};
use crate::text::rfc3339;
use crate::verdict::Finding;
pub use crate::verdict::Status;

/// What the last finished probe of one check found.
#[derive(Debug, Clone)]
pub struct Report {
    pub status: Status,
    /// When the probe finished, on the runtime's clock (freshness).
    pub finished: Instant,
    /// When the probe finished, on the wall clock (shown).
    pub finished_at: SystemTime,
    /// The latency the SLO is judged on (PING's round trip for Redis).
    pub latency: Option<Duration>,
    pub last_success: Option<SystemTime>,
    pub consecutive_failures: u32,
    /// Why the check is unhealthy.
    pub error: Option<Failure>,
    /// What to do about `error`, when it is known.
    pub fix: Option<String>,
    /// Why the check is degraded, each with what to do.
    pub warnings: Vec<Finding>,
    /// What the check's kind adds to its `/healthz` object (`details`, and for celery
    /// `workers_alive`, `workers`, `queues`, `unacked` at its top level).
    pub details: Details,
}

/// The fixed description of a check and the receiving end of its reports.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    /// Redacted URL, for Redis checks.
    pub endpoint: Option<String>,
    reports: watch::Receiver<Option<Arc<Report>>>,
}

/// The writing end of one check's reports.
pub type Publisher = watch::Sender<Option<Arc<Report>>>;
/// The reading end of one check's reports.
pub type Reports = watch::Receiver<Option<Arc<Report>>>;

/// A check's status as of now: the report's, unless there is no report or it is stale.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub status: Status,
    /// Why it is unhealthy, or for degraded, the first warning.
    pub reason: Option<String>,
}

/// Every check, plus what reading them needs.
#[derive(Debug)]
pub struct Snapshot {
    started: Instant,
    /// A report older than this is stale: three probe intervals.
    max_age: Duration,
    checks: Vec<Check>,
    /// The names of the checks that gate `/readyz`, and the indexes of those registered.
    ready_names: Vec<String>,
    ready: Vec<usize>,
}

impl Snapshot {
    /// An empty snapshot: each runner adds the checks it writes ([`Snapshot::register`]).
    /// `ready` names the checks that gate `/readyz`.
    pub fn new(ready: &[String], probe_interval: Duration) -> Snapshot {
        Snapshot {
            started: Instant::now(),
            max_age: probe_interval * 3,
            checks: Vec::new(),
            ready_names: ready.to_vec(),
            ready: Vec::new(),
        }
    }

    /// Adds the check `name` (shown in the order added) and returns the writing end of its
    /// reports, which the runner that writes them keeps.
    pub fn register(&mut self, name: &str, endpoint: Option<String>) -> Publisher {
        let (tx, rx) = watch::channel(None);
        if self.ready_names.iter().any(|r| r == name) {
            self.ready.push(self.checks.len());
        }
        self.checks.push(Check {
            name: name.to_string(),
            endpoint,
            reports: rx,
        });
        tx
    }

    /// How long since the snapshot was made (at start).
    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    pub fn checks(&self) -> &[Check] {
        &self.checks
    }

    /// The check called `name`.
    pub fn find(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The reports of the check called `name`, as they come.
    pub fn reports(&self, name: &str) -> Option<Reports> {
        self.find(name).map(|c| c.reports.clone())
    }

    pub fn report(&self, check: &Check) -> Option<Arc<Report>> {
        check.reports.borrow().clone()
    }

    /// The check's status as of `now`.
    pub fn verdict(&self, check: &Check, now: Instant) -> Verdict {
        verdict(self.report(check).as_deref(), now, self.max_age)
    }

    /// True when every ready check is healthy or degraded, and fresh.
    pub fn ready(&self, now: Instant) -> bool {
        self.ready
            .iter()
            .all(|&i| self.verdict(&self.checks[i], now).status != Status::Unhealthy)
    }

    /// The `/readyz?verbose` body, Kubernetes style.
    pub fn readyz_verbose(&self, now: Instant) -> (bool, String) {
        let mut out = String::new();
        for &i in &self.ready {
            out.push_str(&readyz_line(
                &self.checks[i],
                &self.verdict(&self.checks[i], now),
            ));
        }
        let ready = self.ready(now);
        out.push_str(if ready {
            "readyz check passed\n"
        } else {
            "readyz check failed\n"
        });
        (ready, out)
    }

    /// The `/healthz` document and the overall status.
    pub fn healthz(&self, now: Instant) -> (Status, Value) {
        let mut overall = Status::Healthy;
        let mut checks = serde_json::Map::new();
        for check in &self.checks {
            let report = self.report(check);
            let verdict = verdict(report.as_deref(), now, self.max_age);
            overall = overall.max(verdict.status);
            checks.insert(
                check.name.clone(),
                check_json(check, report.as_deref(), &verdict),
            );
        }
        let doc = json!({
            "status": overall,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": round3(now.duration_since(self.started).as_secs_f64()),
            "checks": checks,
        });
        (overall, doc)
    }
}

/// One `/readyz?verbose` line: `[+]name ok` or `[-]name failed: reason`.
pub fn readyz_line(check: &Check, verdict: &Verdict) -> String {
    match (verdict.status, &verdict.reason) {
        (Status::Unhealthy, reason) => format!(
            "[-]{} failed: {}\n",
            check.name,
            reason.as_deref().unwrap_or("unknown")
        ),
        (Status::Degraded, Some(reason)) => format!("[+]{} ok (degraded: {reason})\n", check.name),
        _ => format!("[+]{} ok\n", check.name),
    }
}

/// The status of a check as of `now`: unhealthy when it has no report yet or its report is
/// older than `max_age` (the probe loop is stuck), else the report's own.
pub fn verdict(report: Option<&Report>, now: Instant, max_age: Duration) -> Verdict {
    let Some(report) = report else {
        return Verdict {
            status: Status::Unhealthy,
            reason: Some("no probe has finished yet".into()),
        };
    };
    let age = now.saturating_duration_since(report.finished);
    if age > max_age {
        return Verdict {
            status: Status::Unhealthy,
            reason: Some(format!(
                "stale: the last probe finished {:.1}s ago, over the {:.1}s limit (three probe intervals)",
                age.as_secs_f64(),
                max_age.as_secs_f64()
            )),
        };
    }
    let reason = match report.status {
        Status::Unhealthy => report.error.as_ref().map(|f| f.message.clone()),
        Status::Degraded => report.warnings.first().map(|w| w.text.clone()),
        Status::Healthy => None,
    };
    Verdict {
        status: report.status,
        reason,
    }
}

/// What to do about a report's status: the fix of its error, or of its first warning.
pub fn fix(r: &Report) -> Option<&str> {
    match r.status {
        Status::Unhealthy => r.fix.as_deref(),
        Status::Degraded => r.warnings.first().map(|w| w.fix.as_str()),
        Status::Healthy => None,
    }
}

fn check_json(check: &Check, report: Option<&Report>, verdict: &Verdict) -> Value {
    let none = Details::None;
    let details = report.map_or(&none, |r| &r.details);
    let doc = CheckDoc {
        status: verdict.status,
        endpoint: check.endpoint.as_deref(),
        latency_ms: report
            .and_then(|r| r.latency)
            .map(|d| round3(d.as_secs_f64() * 1e3)),
        last_success: report.and_then(|r| r.last_success).map(rfc3339),
        last_probe: report.map(|r| rfc3339(r.finished_at)),
        consecutive_failures: report.map_or(0, |r| r.consecutive_failures),
        error: (verdict.status == Status::Unhealthy)
            .then(|| verdict.reason.clone())
            .flatten(),
        reason: report.and_then(|r| r.error.as_ref().map(|f| f.reason.as_str())),
        fix: report.and_then(fix),
        warnings: report.map_or(Vec::new(), |r| {
            r.warnings.iter().map(|w| w.text.as_str()).collect()
        }),
        findings: report.map_or(&[], |r| r.warnings.as_slice()),
        details: details.doc(),
        celery: details.celery_fields(),
    };
    serde_json::to_value(doc).expect("a check's document serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::failure::Reason;

    fn report(status: Status, finished: Instant) -> Report {
        Report {
            status,
            finished,
            finished_at: SystemTime::now(),
            latency: Some(Duration::from_micros(410)),
            last_success: None,
            consecutive_failures: 0,
            error: (status == Status::Unhealthy)
                .then(|| Failure::new(Reason::Connect, "connection refused by h:1")),
            fix: None,
            warnings: if status == Status::Degraded {
                vec![Finding::new("ping", "slow", "look")]
            } else {
                vec![]
            },
            details: Details::None,
        }
    }

    fn two_checks(interval: Duration) -> (Snapshot, Vec<Publisher>) {
        let mut snap = Snapshot::new(
            &["redis:cache".to_string(), "redis:broker".to_string()],
            interval,
        );
        let tx = vec![
            snap.register("redis:cache", Some("redis://a:6379/0".into())),
            snap.register("redis:broker", Some("redis://b:6379/0".into())),
        ];
        (snap, tx)
    }

    #[test]
    fn overall_is_the_worst() {
        let (snap, tx) = two_checks(Duration::from_secs(5));
        let now = Instant::now();
        for (a, b, want) in [
            (Status::Healthy, Status::Healthy, Status::Healthy),
            (Status::Healthy, Status::Degraded, Status::Degraded),
            (Status::Degraded, Status::Unhealthy, Status::Unhealthy),
            (Status::Unhealthy, Status::Healthy, Status::Unhealthy),
        ] {
            tx[0].send_replace(Some(Arc::new(report(a, now))));
            tx[1].send_replace(Some(Arc::new(report(b, now))));
            let (overall, doc) = snap.healthz(now);
            assert_eq!(overall, want);
            assert_eq!(doc["status"], json!(want.as_str()));
            assert_eq!(snap.ready(now), want != Status::Unhealthy);
        }
    }

    #[test]
    fn no_report_yet_is_not_ready() {
        let (snap, _tx) = two_checks(Duration::from_secs(5));
        let now = Instant::now();
        assert!(!snap.ready(now));
        let (overall, doc) = snap.healthz(now);
        assert_eq!(overall, Status::Unhealthy);
        assert_eq!(
            doc["checks"]["redis:cache"]["error"],
            json!("no probe has finished yet")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_goes_stale_after_three_intervals() {
        let interval = Duration::from_secs(5);
        let (snap, tx) = two_checks(interval);
        for p in &tx {
            p.send_replace(Some(Arc::new(report(Status::Healthy, Instant::now()))));
        }
        assert!(snap.ready(Instant::now()));
        tokio::time::advance(Duration::from_secs(15)).await;
        assert!(
            snap.ready(Instant::now()),
            "exactly three intervals is fresh"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!snap.ready(Instant::now()));
        let (ready, text) = snap.readyz_verbose(Instant::now());
        assert!(!ready);
        assert!(
            text.contains("[-]redis:cache failed: stale: the last probe finished 15.0s ago"),
            "{text}"
        );
        assert!(text.ends_with("readyz check failed\n"));
        // A new report makes it fresh again.
        tx[0].send_replace(Some(Arc::new(report(Status::Healthy, Instant::now()))));
        tx[1].send_replace(Some(Arc::new(report(Status::Degraded, Instant::now()))));
        let (ready, text) = snap.readyz_verbose(Instant::now());
        assert!(ready);
        assert_eq!(
            text,
            "[+]redis:cache ok\n[+]redis:broker ok (degraded: slow)\nreadyz check passed\n"
        );
    }

    #[test]
    fn only_ready_checks_gate_readiness() {
        let mut snap = Snapshot::new(&["redis:cache".to_string()], Duration::from_secs(5));
        let tx = [
            snap.register("redis:cache", None),
            snap.register("redis:broker", None),
        ];
        let now = Instant::now();
        tx[0].send_replace(Some(Arc::new(report(Status::Healthy, now))));
        tx[1].send_replace(Some(Arc::new(report(Status::Unhealthy, now))));
        assert!(snap.ready(now));
        assert_eq!(snap.healthz(now).0, Status::Unhealthy);
    }

    #[test]
    fn healthz_fields() {
        let (snap, tx) = two_checks(Duration::from_secs(5));
        let now = Instant::now();
        tx[0].send_replace(Some(Arc::new(report(Status::Healthy, now))));
        tx[1].send_replace(Some(Arc::new(report(Status::Unhealthy, now))));
        let (_, doc) = snap.healthz(now);
        let cache = &doc["checks"]["redis:cache"];
        assert_eq!(cache["status"], "healthy");
        assert_eq!(cache["endpoint"], "redis://a:6379/0");
        assert_eq!(cache["latency_ms"], json!(0.41));
        assert_eq!(cache["error"], Value::Null);
        let broker = &doc["checks"]["redis:broker"];
        assert_eq!(broker["error"], "connection refused by h:1");
        assert_eq!(broker["reason"], "connect");
        assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
        assert!(doc["uptime_seconds"].is_f64());
    }
}
