//! What the sentinels of a Sentinel target say about themselves: each one that cannot
//! answer, disagreement on the master, and a lost quorum are findings (the target still
//! works while its master answers, but a failover may not happen or may not be followed).
//! The server's Redis check and `check`'s sentinel steps both use these words; each
//! finding's step is `sentinel` (one sentinel) or `quorum` (all of them).

use crate::redis::sentinel::{Sentinels, View};
use crate::verdict::Finding;

/// The fix for a sentinel that did not answer, by what went wrong.
pub fn sentinel_fix(miss: Option<&str>, sentinels: &Sentinels) -> String {
    match miss {
        Some("auth") if sentinels.has_password() => {
            "SIDECAR_SENTINEL_PASSWORD is not the sentinels' password: set it to their `requirepass` (what Celery's sentinel_kwargs={'password': ...} holds)".into()
        }
        Some("auth") => {
            "the sentinels require a password: set SIDECAR_SENTINEL_PASSWORD to their `requirepass` (Celery's sentinel_kwargs={'password': ...}); the URL's password is the master's".into()
        }
        Some("down") => {
            "the sentinels consider the master down: they fail over once a quorum agrees; if none is left to promote, start the master or a replica".into()
        }
        Some("unknown_name") => format!(
            "SIDECAR_SENTINEL_MASTER ({:?}) is not a master these sentinels monitor: set it to the name in their `sentinel monitor <name> ...` line (`SENTINEL MASTERS` lists them), the name Celery's master_name transport option gives",
            sentinels.master
        ),
        _ => {
            "start the sentinel, or remove it from the URL: the others still elect a new master while a majority of all sentinels can reach each other".into()
        }
    }
}

/// Findings about the sentinels' last answers: each that did not answer, disagreement on
/// the master, and `CKQUORUM` refusing.
pub fn sentinel_findings(sentinels: &Sentinels, views: &[View]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for v in views.iter().filter(|v| v.master.is_none()) {
        findings.push(Finding::new(
            "sentinel",
            format!(
                "sentinel {} gives no master: {}",
                v.address,
                v.error.as_deref().unwrap_or("no answer")
            ),
            sentinel_fix(v.miss, sentinels),
        ));
    }
    let mut named: Vec<&str> = views.iter().filter_map(|v| v.master.as_deref()).collect();
    named.dedup();
    named.sort_unstable();
    named.dedup();
    if named.len() > 1 {
        findings.push(Finding::new(
            "quorum",
            format!(
                "the sentinels disagree on the master of {:?}: {}",
                sentinels.master,
                named.join(" and ")
            ),
            "a failover is under way, or the sentinels were set up apart: they must monitor the same master under the same name (compare `SENTINEL GET-MASTER-ADDR-BY-NAME` on each)",
        ));
    }
    if let Some(v) = views.iter().find(|v| v.quorum == Some(false)) {
        findings.push(Finding::new(
            "quorum",
            format!(
                "no quorum for {:?}: {}",
                sentinels.master,
                v.error.as_deref().unwrap_or("SENTINEL CKQUORUM refused")
            ),
            "a failover needs the quorum of `sentinel monitor` and a majority of the sentinels able to reach each other: start the missing sentinels, or lower the quorum",
        ));
    }
    findings
}
