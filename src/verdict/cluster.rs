//! The judgement of a Redis Cluster as one look saw it (`CLUSTER INFO`, `CLUSTER NODES`,
//! each node's PING): unhealthy when the cluster says `cluster_state:fail` (its slots not
//! all served), with the failed nodes named; degraded for a failing or unreachable node,
//! slots not assigned, or a node slower than the SLO. The server's Redis check and
//! `check`'s cluster steps both use it.

use std::time::Duration;

use crate::redis::cluster::{NodeView, SLOTS, View};
use crate::redis::failure::{Failure, Reason};
use crate::text::show;
use crate::verdict::{Cause, Finding};

/// A node as a sentence names it: `127.0.0.1:30001 (master 1a2b3c4d, slots 0-5460)`.
fn named(n: &NodeView) -> String {
    let slots = if n.ranges.is_empty() {
        String::new()
    } else {
        format!(", slots {}", n.ranges.join(" "))
    };
    let address = if n.address.is_empty() {
        "(no address)"
    } else {
        &n.address
    };
    format!("{address} ({} {}{slots})", n.role, n.id)
}

/// Why the cluster does not serve, when it does not; and what degrades it.
pub fn cluster(view: &View, slo: Duration) -> (Option<Cause>, Vec<Finding>) {
    let mut findings = Vec::new();
    let failing: Vec<&NodeView> = view
        .nodes
        .iter()
        .filter(|n| n.failing().is_some())
        .collect();
    let error = (view.state != "ok").then(|| {
        let unserved = SLOTS.saturating_sub(view.slots_ok);
        let masters: Vec<String> = failing
            .iter()
            .filter(|n| n.role == "master" && n.slots > 0)
            .map(|n| named(n))
            .collect();
        let cause = if masters.is_empty() {
            format!(
                "{} of {SLOTS} slots assigned, {} in fail, {} in pfail",
                view.slots_assigned, view.slots_fail, view.slots_pfail
            )
        } else {
            format!(
                "the cluster marks failed, with no replica promoted in its place: {}",
                masters.join("; ")
            )
        };
        Cause::new(
            "cluster",
            Failure::new(
                Reason::Other,
                format!(
                    "cluster_state:{} on {}: {unserved} of {SLOTS} slots not served, so commands on their keys fail (CLUSTERDOWN); {cause}",
                    view.state, view.asked
                ),
            ),
            "start the failed master, or give its slots a master (a replica of it: CLUSTER FAILOVER FORCE on that replica; none: redis-cli --cluster fix); `redis-cli --cluster check <node>` shows the slots not covered",
        )
    });
    if error.is_none() && view.slots_assigned < SLOTS {
        findings.push(Finding::new(
            "cluster",
            format!(
                "only {} of {SLOTS} slots are assigned: keys in the others cannot be written",
                view.slots_assigned
            ),
            "assign the missing slots (redis-cli --cluster fix)",
        ));
    }
    for n in &failing {
        if error.is_some() && n.role == "master" && n.slots > 0 {
            continue;
        }
        findings.push(Finding::new(
            "node",
            format!(
                "{} is marked {} by the cluster",
                named(n),
                n.failing().unwrap_or_default()
            ),
            if n.role == "master" {
                "a replica has taken its slots or will: start the node again; it rejoins as a replica"
            } else {
                "start the replica again: its master has no failover left until it is back"
            },
        ));
    }
    for n in view
        .nodes
        .iter()
        .filter(|n| n.failing().is_none() && n.error.is_some())
    {
        let error = n.error.as_deref().unwrap_or_default();
        if error.starts_with("refused the login") {
            findings.push(Finding::new(
                "node",
                format!("{} {error}", named(n)),
                "the ACL user and password must be the same on every node of the cluster: set them on this one (ACL SETUSER, or requirepass)",
            ));
            continue;
        }
        findings.push(Finding::new(
            "node",
            format!(
                "{} does not answer the sidecar, while the cluster does not mark it failed: {}",
                named(n),
                n.error.as_deref().unwrap_or_default()
            ),
            "the address the cluster announces must be reachable by clients: set `cluster-announce-ip` (and `cluster-announce-port`) on the node when it runs behind NAT or in a container",
        ));
    }
    for n in &view.nodes {
        if let Some(ms) = n.latency_ms
            && ms > slo.as_secs_f64() * 1e3
        {
            findings.push(Finding::new(
                "node",
                format!(
                    "slow: {} answered PING in {ms:.1}ms, over the {} latency SLO",
                    named(n),
                    show(slo)
                ),
                "the node or the network to it is slow: check SLOWLOG and LATENCY DOCTOR on it",
            ));
        }
    }
    (error, findings)
}

/// `CLUSTER INFO` or `CLUSTER NODES` failed while PING worked: a node without cluster
/// support is the wrong URL (unhealthy); a refusal by the ACL hides the cluster (degraded).
pub fn cluster_refused(f: &Failure) -> (Option<Cause>, Vec<Finding>) {
    if f.message.contains("cluster support disabled") {
        let cause = Cause::new(
            "cluster",
            Failure::new(
                Reason::Other,
                format!("the URL is redis+cluster://, and the server is not a cluster node: {f}"),
            ),
            "use redis://host:port for a single Redis; redis+cluster:// is for a Redis Cluster",
        );
        return (Some(cause), Vec::new());
    }
    let finding = Finding::new(
        "cluster",
        format!("CLUSTER INFO failed, so the cluster's state and nodes are unknown: {f}"),
        "grant the ACL user +cluster|info and +cluster|nodes",
    );
    (None, vec![finding])
}
