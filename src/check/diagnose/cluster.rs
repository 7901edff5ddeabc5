//! A Redis Cluster's steps, after the node's own walk: `cluster` (CLUSTER INFO's state
//! and slots) and one `node` step per node (its PING from here), judged as the server
//! judges them.

use super::*;
use crate::redis::cluster;

/// The cluster's steps; false when the cluster does not serve.
pub(super) async fn cluster_steps(d: &mut Diagnosis, resp: &mut Resp, config: &Config) -> bool {
    if d.target.cluster().is_none() {
        return true;
    }
    let target = d.target.clone();
    let limit = config.probe_timeout;
    let asked = target.address().to_string();
    let replies = match tokio::time::timeout(
        limit,
        resp.pipeline(&[&[b"CLUSTER", b"INFO"], &[b"CLUSTER", b"NODES"]]),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return fail_io(
                d,
                "cluster",
                Failure::from_redis(&RedisError::from(e), &target),
            );
        }
        Err(_) => {
            return fail_io(
                d,
                "cluster",
                Failure::timeout(&target, Phase::Command("CLUSTER"), limit),
            );
        }
    };
    let (error, findings) = match (&replies[0], &replies[1]) {
        (Reply::Error(e), _) | (_, Reply::Error(e)) => {
            verdict::cluster_refused(&Failure::from_redis(&server_error(e), &target))
        }
        (info, nodes) => {
            let view = cluster::parse(
                &info.text().unwrap_or_default(),
                &nodes.text().unwrap_or_default(),
                &asked,
            );
            let view = cluster::ping_nodes(&target, view, limit).await;
            d.steps.push(Step::ok(
                "cluster",
                format!(
                    "cluster_state:{}, {} of {} slots assigned, {} ok; {} known nodes",
                    view.state,
                    view.slots_assigned,
                    cluster::SLOTS,
                    view.slots_ok,
                    view.known_nodes
                ),
            ));
            for n in &view.nodes {
                let what = format!("{} {} {}", n.address, n.role, n.id);
                d.steps.push(match (&n.error, n.latency_ms) {
                    (None, Some(ms)) => Step::ok("node", format!("{what}: PING {ms:.1}ms")),
                    (error, _) => Step::warn(
                        "node",
                        format!("{what}: {}", error.as_deref().unwrap_or("no answer")),
                        "see the cluster's findings",
                    ),
                });
            }
            verdict::cluster(&view, config.latency_slo)
        }
    };
    if let Some(cause) = error {
        // The state's step is the failure: replace its summary with the cause.
        d.steps.retain(|s| s.name != "cluster");
        d.steps
            .push(Step::fail("cluster", cause.failure, cause.fix));
        return false;
    }
    for f in findings {
        let address = node_address(&f.text);
        if let Some(step) = d.steps.iter_mut().rev().find(|s| {
            s.name == f.step
                && s.verdict != Verdict::Fail
                && (f.step == "cluster" || s.detail.starts_with(&format!("{address} ")))
        }) {
            step.verdict = Verdict::Warn;
            step.detail = f.text.clone();
            step.fix = Some(f.fix.clone());
        } else {
            d.steps
                .push(Step::warn(f.step, f.text.clone(), f.fix.clone()));
        }
        d.findings.push(f);
    }
    true
}

/// The address a node finding starts with (`127.0.0.1:30001 (master ...) is ...`).
fn node_address(text: &str) -> &str {
    let text = text.strip_prefix("slow: ").unwrap_or(text);
    text.split(' ').next().unwrap_or(text)
}
