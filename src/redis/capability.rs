//! What a target's ACL lets the sidecar run, learnt by trying: the first probe (and the
//! first connection) is the start-up capability probe. A command the server refuses with
//! `NOPERM` is not sent to that target again for [`RECHECK`], so that a least-privilege
//! user does not fill the server's `ACL LOG` with a refusal per probe (as redis_exporter's
//! users see, oliver006/redis_exporter#460, #896), and a right granted later is noticed
//! within `RECHECK`. Each refusal, and each grant after one, is logged once.
//!
//! Only what the sidecar can do without: INFO (clients, memory, evictions, keys), naming
//! its connections, sampling a result backend's keys, reading RedBeat's schedule. What the
//! checks cannot do without (PING, the queues, the event channels) fails its check instead.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::redis::failure::Failure;

/// A refused command is tried again after this.
pub const RECHECK: Duration = Duration::from_secs(600);

/// What the sidecar collects with a command an ACL may refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Collector {
    /// `INFO`: clients, memory, evictions, rejected connections, keys.
    Info,
    /// `CLIENT SETNAME`: the sidecar's connections named in CLIENT LIST.
    ClientName,
    /// `RANDOMKEY` and `TTL` on a result backend holding many keys without a TTL.
    ResultsSample,
    /// RedBeat's schedule, entries and lock.
    Beat,
    /// `CLUSTER INFO` and `CLUSTER NODES` on a Redis Cluster.
    Cluster,
}

impl Collector {
    pub const ALL: [Collector; 5] = [
        Collector::Info,
        Collector::ClientName,
        Collector::ResultsSample,
        Collector::Beat,
        Collector::Cluster,
    ];

    /// The `collector` label of `sidecar_collector_enabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Collector::Info => "info",
            Collector::ClientName => "client_name",
            Collector::ResultsSample => "results_sample",
            Collector::Beat => "beat",
            Collector::Cluster => "cluster",
        }
    }

    /// What is not seen while it is refused.
    fn missing(self) -> &'static str {
        match self {
            Collector::Info => {
                "clients, memory, evictions, rejected connections and keys are not collected"
            }
            Collector::ClientName => "the sidecar's connections are not named in CLIENT LIST",
            Collector::ResultsSample => "results kept without a TTL are not looked for",
            Collector::Beat => "RedBeat's schedule is not read",
            Collector::Cluster => "the cluster's state, slots and nodes are not seen",
        }
    }
}

/// Refusals in force: by target (its redacted endpoint) and collector, when and what.
type Refusals = HashMap<(String, Collector), (Instant, Failure)>;

static REFUSED: LazyLock<Mutex<Refusals>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn refusals() -> std::sync::MutexGuard<'static, Refusals> {
    REFUSED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The refusal still in force for `collector` on `target`: the command is not to be sent,
/// and this is what the server said. `None`: send it (never refused, or `RECHECK` passed).
pub fn refused(target: &str, collector: Collector) -> Option<Failure> {
    let map = refusals();
    // The usual case, every probe: nothing refused, no key to make.
    if map.is_empty() {
        return None;
    }
    map.get(&(target.to_string(), collector))
        .filter(|(at, _)| at.elapsed() < RECHECK)
        .map(|(_, f)| f.clone())
}

/// The server refused the command (`NOPERM`): not sent again for `RECHECK`. Logged the
/// first time only.
pub fn record_refusal(target: &str, collector: Collector, failure: &Failure) {
    let known = refusals()
        .insert(
            (target.to_string(), collector),
            (Instant::now(), failure.clone()),
        )
        .is_some();
    if !known {
        tracing::warn!(
            endpoint = target,
            collector = collector.as_str(),
            "the ACL refuses what the {} collector needs, so {}; tried again every {} min: {}",
            collector.as_str(),
            collector.missing(),
            RECHECK.as_secs() / 60,
            failure.message
        );
    }
}

/// The server ran the command: a refusal on record is over.
pub fn record_allowed(target: &str, collector: Collector) {
    let mut map = refusals();
    if map.is_empty() {
        return;
    }
    let was_refused = map.remove(&(target.to_string(), collector)).is_some();
    drop(map);
    if was_refused {
        tracing::info!(
            endpoint = target,
            collector = collector.as_str(),
            "the ACL now allows the {} collector",
            collector.as_str()
        );
    }
}

/// Forgets every refusal of `target`: it is another server now (a Sentinel failover), whose
/// ACL may differ.
pub fn forget(target: &str) {
    let mut map = refusals();
    if !map.is_empty() {
        map.retain(|(t, _), _| t != target);
    }
}

/// A server's refusal of a command by its ACL.
pub fn is_refusal(message: &str) -> bool {
    message.starts_with("NOPERM")
}

/// Each collector, and whether no target refuses it: `sidecar_collector_enabled`.
pub fn enabled() -> [(Collector, bool); 5] {
    let map = refusals();
    Collector::ALL.map(|c| (c, !map.keys().any(|(_, k)| *k == c)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::failure::Reason;

    #[test]
    fn a_refusal_holds_per_target_until_allowed() {
        let denied = Failure::new(Reason::Auth, "NOPERM this user has no permissions");
        let t = "redis://capability-test-a:6379/0";
        assert!(refused(t, Collector::Beat).is_none());
        record_refusal(t, Collector::Beat, &denied);
        assert_eq!(refused(t, Collector::Beat), Some(denied.clone()));
        assert!(refused("redis://capability-test-b:6379/0", Collector::Beat).is_none());
        assert!(refused(t, Collector::Info).is_none(), "per collector");
        assert!(enabled().contains(&(Collector::Beat, false)));
        record_allowed(t, Collector::Beat);
        assert!(refused(t, Collector::Beat).is_none());
        assert!(is_refusal(&denied.message) && !is_refusal("ERR unknown command"));
    }
}
