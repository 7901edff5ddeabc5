//! A Sentinel target's first steps: each sentinel asked for the master and the quorum,
//! then the master they name, which the rest of the walk connects to.

use super::*;
use crate::redis::sentinel;

/// Walks the sentinels of `d.target`; on success the diagnosis goes on with the master
/// they name as its target. False when the walk stops here.
pub(super) async fn sentinel_steps(d: &mut Diagnosis, limit: Duration) -> bool {
    let Some(sentinels) = d.target.sentinels().cloned() else {
        return true;
    };
    let began = Instant::now();
    let views = sentinel::survey(&d.target, limit).await;
    let took = began.elapsed();
    // A wrong name or password stops the walk when no sentinel named the master; while
    // one did, the app's client still finds it, and each other sentinel is a warning.
    let none = views.iter().all(|v| v.master.is_none());
    for v in &views {
        let step = match (&v.master, v.miss) {
            (Some(m), _) => Step::ok(
                "sentinel",
                format!("{}: master {:?} is at {m}", v.address, sentinels.master),
            )
            .took(took),
            (None, Some(miss @ ("auth" | "unknown_name"))) if none => {
                let reason = if miss == "auth" {
                    Reason::Auth
                } else {
                    Reason::Other
                };
                Step::fail(
                    "sentinel",
                    Failure::new(reason, v.error.clone().unwrap_or_default()),
                    verdict::sentinel_fix(Some(miss), &sentinels),
                )
            }
            (None, miss) => Step::warn(
                "sentinel",
                v.error.clone().unwrap_or_default(),
                verdict::sentinel_fix(miss, &sentinels),
            ),
        };
        d.steps.push(step);
    }
    if d.steps.iter().any(|s| s.verdict == Verdict::Fail) {
        return false;
    }
    // Disagreement and quorum, as the server judges them.
    for f in verdict::sentinel_findings(&sentinels, &views)
        .into_iter()
        .filter(|f| f.step == "quorum")
    {
        d.steps
            .push(Step::warn(f.step, f.text.clone(), f.fix.clone()));
        d.findings.push(f);
    }
    if views.iter().any(|v| v.quorum == Some(true))
        && !views.iter().any(|v| v.quorum == Some(false))
    {
        d.steps.push(Step::ok(
            "quorum",
            format!(
                "the sentinels can authorize a failover of {:?}",
                sentinels.master
            ),
        ));
    }
    match sentinel::resolve(&d.target, limit).await {
        Ok(master) => {
            d.steps.push(Step::ok(
                "master",
                format!("{} (as the sentinels announce it)", master.address()),
            ));
            d.target = master;
            true
        }
        Err(f) => {
            let fix = verdict::failure_fix(&f, &d.target);
            d.steps.push(Step::fail("master", f, fix));
            false
        }
    }
}

/// After a failed connection to the master the sentinels announce: the announce hint.
pub(super) fn announced_unreachable(d: &mut Diagnosis, original: &Target) {
    if original.sentinels().is_none() {
        return;
    }
    if let Some(step) = d
        .steps
        .iter_mut()
        .rev()
        .find(|s| s.verdict == Verdict::Fail)
        && matches!(step.name, "dns" | "tcp")
        && let Some(reason) = step.reason
    {
        let f = Failure::new(reason, step.detail.clone());
        step.fix = Some(verdict::failure_fix(&f, original));
    }
}
