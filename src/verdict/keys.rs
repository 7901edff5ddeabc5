//! What INFO says about a Celery Redis's keys, probe after probe: keys evicted from a
//! broker or result backend, and results kept forever.

use std::time::Duration;

use super::Finding;
use crate::redis::info::Info;
use crate::redis::probe::ResultSample;
use crate::redis::target::Role;
use crate::text::human;

/// How long keys evicted from a broker or result backend keep its check degraded after the
/// last eviction seen.
pub const EVICTION_WINDOW: Duration = Duration::from_secs(600);

/// Keys evicted lately, from INFO's `evicted_keys` probe after probe: the server only says
/// how many since it started, so the rise is watched (a restart starts over; the first
/// probe sets the base, since nobody knows when those evictions were).
#[derive(Debug, Default)]
pub struct Evictions {
    last_total: Option<u64>,
    last_seen: Option<tokio::time::Instant>,
    recent: u64,
}

impl Evictions {
    /// Takes a probe's `evicted_keys` (at `now`) and returns the keys evicted within the
    /// last [`EVICTION_WINDOW`].
    pub fn observe(&mut self, total: Option<u64>, now: tokio::time::Instant) -> u64 {
        if let Some(total) = total {
            let rise = match self.last_total {
                None => 0,
                Some(before) if total >= before => total - before,
                // Restarted: its count starts over.
                Some(_) => total,
            };
            self.last_total = Some(total);
            if rise > 0 {
                if !self.within(now) {
                    self.recent = 0;
                }
                self.recent += rise;
                self.last_seen = Some(now);
            }
        }
        if self.within(now) { self.recent } else { 0 }
    }

    fn within(&self, now: tokio::time::Instant) -> bool {
        self.last_seen
            .is_some_and(|t| now.saturating_duration_since(t) <= EVICTION_WINDOW)
    }
}

/// The finding for keys evicted lately from a Redis that holds Celery's broker or results
/// (a cache alone evicts by design).
pub fn evictions(recent: u64, info: &Info, roles: &[Role]) -> Option<Finding> {
    if recent == 0 {
        return None;
    }
    let policy = info.maxmemory_policy.as_deref().unwrap_or("?");
    let window = human(EVICTION_WINDOW);
    if roles.contains(&Role::Broker) {
        Some(Finding::new(
            "info",
            format!(
                "{recent} key(s) evicted from the Celery broker in the last {window} (maxmemory-policy {policy}): queued tasks, reservations and queue bindings can be lost without an error"
            ),
            "give the broker room and maxmemory-policy noeviction (raise maxmemory), or move the cache's keys to another Redis",
        ))
    } else if roles.contains(&Role::ResultBackend) {
        Some(Finding::new(
            "info",
            format!(
                "{recent} key(s) evicted from the Celery result backend in the last {window} (maxmemory-policy {policy}): results can vanish before the app reads them (AsyncResult.get() then waits, or says PENDING)"
            ),
            "raise maxmemory, or keep results for less time (result_expires)",
        ))
    } else {
        None
    }
}

/// The finding for Celery results kept forever: the result backend's database holds many
/// keys without a TTL (INFO `keyspace`), and a sample of random keys holds results without
/// one. Celery gives every result a TTL unless `result_expires` is `None`, so one such
/// result means none expire.
pub fn results_kept(info: &Info, db: i64, sample: Option<ResultSample>) -> Option<Finding> {
    let keys = info.db(db)?;
    let sample = sample.filter(|s| s.results_without_ttl > 0)?;
    let without = keys.keys.saturating_sub(keys.expires);
    Some(Finding::new(
        "info",
        format!(
            "Celery results never expire: {without} of the {} keys in db {db} have no TTL, and {} of {} keys sampled are results (celery-task-meta-*) without one; they pile up until memory runs out",
            keys.keys, sample.results_without_ttl, sample.sampled
        ),
        "give results an expiry: result_expires in the app (Celery's default is 1 day; None keeps them forever), or ignore_result=True on tasks whose result nobody reads; then delete the old celery-task-meta-* keys",
    ))
}
