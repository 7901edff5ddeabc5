//! Celery, watched through the broker alone (no Python): queues and reservations read from
//! kombu's keys, workers and task events heard on the `celeryev` pub/sub channels.
//!
//! - [`kombu`]: key and channel names; the message envelope (pure).
//! - [`event`]: Celery's events decoded from an envelope's body (pure).
//! - [`workers`]: the worker table and its liveness rules (pure).
//! - [`tasks`]: task events turned into counter labels, bounded (pure).
//! - [`queues`]: the queue probe, one pipelined round trip per cycle.
//! - [`subscriber`]: the pub/sub connection that feeds [`Shared`].
//! - [`metrics`]: Celery's metric families, set from what the two above observe.
//!
//! The `celery` check that runs them is the server's (`crate::serve::celery`).

pub mod beat;
pub mod event;
pub mod kombu;
pub mod metrics;
pub mod queues;
pub mod reply;
pub mod subscriber;
pub mod tasks;
pub mod workers;

use tokio::time::Instant;

use kombu::Naming;
use tasks::TaskBook;
use workers::Workers;

/// What the subscriber learns and the runner reads. Behind a std mutex: every critical
/// section is a few map operations, never an await.
#[derive(Debug)]
pub struct Shared {
    pub workers: Workers,
    pub book: TaskBook,
    pub subscription: Subscription,
    /// The names kombu's keys and channels have on this broker, as the queue probe found
    /// them: the subscriber keeps the events of this key prefix.
    pub naming: Naming,
    /// Key prefixes whose worker events were heard, and when (at most `MAX_PREFIXES`):
    /// which app is watched when several share the broker db.
    pub heard: Vec<(Vec<u8>, Instant)>,
    /// Workers heard through their task events (started, succeeded...), and when last:
    /// a worker with `--without-heartbeat` sends no worker event, but `-E` still tells its
    /// name with each task. At most `MAX_WORKING`.
    pub working: Vec<(String, Instant)>,
    /// The periodic tasks declared, and when each was last heard.
    pub beat: beat::Expected,
}

/// Workers remembered from their task events at most.
pub const MAX_WORKING: usize = 64;

/// Key prefixes remembered as heard at most.
pub const MAX_PREFIXES: usize = 16;

/// The state of the event subscription.
#[derive(Debug, Default)]
pub struct Subscription {
    pub up: bool,
    /// When it last came up, or went down.
    pub since: Option<Instant>,
    /// Why it is down.
    pub error: Option<crate::redis::failure::Failure>,
    /// Messages received (undecodable ones included), undecodable messages skipped,
    /// worker events beyond the cap.
    pub messages: u64,
    pub decode_errors: u64,
    pub untracked: u64,
    /// Successful subscriptions so far (1 + reconnections).
    pub connects: u64,
}

impl Shared {
    pub fn new(c: &crate::config::CeleryConfig, naming: Naming) -> Shared {
        Shared {
            workers: Workers::new(c.max_workers, c.heartbeat_misses, c.forget_after),
            book: TaskBook::default(),
            subscription: Subscription::default(),
            naming,
            heard: Vec::new(),
            working: Vec::new(),
            beat: beat::Expected::new(c.beat_expect.clone(), crate::text::unix_now()),
        }
    }

    /// Notes a task event from worker `hostname` at `now`.
    pub fn working(&mut self, hostname: &str, now: Instant) {
        touch(
            &mut self.working,
            hostname.as_bytes(),
            now,
            MAX_WORKING,
            |h| h.as_bytes(),
            |k| String::from_utf8_lossy(k).into_owned(),
        );
    }

    /// Notes a worker event heard under `prefix`.
    pub fn heard_under(&mut self, prefix: &[u8], now: Instant) {
        touch(
            &mut self.heard,
            prefix,
            now,
            MAX_PREFIXES,
            |p| p,
            <[u8]>::to_vec,
        );
    }
}

/// Marks `key` seen at `now` in a list of at most `max` (the least recently seen makes room).
fn touch<K>(
    list: &mut Vec<(K, Instant)>,
    key: &[u8],
    now: Instant,
    max: usize,
    bytes: impl Fn(&K) -> &[u8],
    own: impl Fn(&[u8]) -> K,
) {
    match list.iter_mut().find(|(k, _)| bytes(k) == key) {
        Some((_, at)) => *at = now,
        None => {
            if list.len() >= max {
                list.sort_by_key(|(_, at)| std::cmp::Reverse(*at));
                list.truncate(max - 1);
            }
            list.push((own(key), now));
        }
    }
}
