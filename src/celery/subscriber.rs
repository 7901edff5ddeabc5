//! The event subscriber: a dedicated pub/sub connection (not from the pool) PSUBSCRIBEd to
//! the broker's `celeryev` channels. It keeps the worker table and the task counters, and
//! reconnects with backoff when the connection is lost; a PING every 2 s finds a connection
//! that died silently (a frozen or unreachable broker).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};

use super::Shared;
use super::event::{self, Event, WorkerKind};
use super::kombu::{DecodeError, Naming};
use super::workers::Applied;
use crate::failure::{Failure, Phase};
use crate::metrics::Metrics;
use crate::otel;
use crate::target::Target;
use tracing::Instrument;

/// How often the subscription is checked with a PING.
const PING_EVERY: Duration = Duration::from_secs(2);
/// Reconnection backoff: from 250 ms, doubling, up to 10 s.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A subscription that held this long (one PING interval) starts the backoff over.
const BACKOFF_RESET: Duration = PING_EVERY;
/// Undecodable messages are logged at most this often (they are all counted).
const LOG_EVERY: Duration = Duration::from_secs(60);

/// How long to wait before resubscribing, and the backoff after that, given the current
/// backoff and how long the lost subscription held (`None`: it never subscribed). One that
/// held for a PING interval was a working session, lost to a restart or a kill: retry soon,
/// so that a broker back in a second is not watched blind for 10 s. One that failed, or
/// dropped at once, doubles the wait, so a refusing or flapping server is not hammered.
fn next_backoff(current: Duration, held: Option<Duration>) -> (Duration, Duration) {
    let wait = if held.is_some_and(|h| h >= BACKOFF_RESET) {
        BACKOFF_FIRST
    } else {
        current
    };
    (wait, (wait * 2).min(BACKOFF_MAX))
}

pub struct Subscriber {
    target: Target,
    naming: Naming,
    shared: Arc<Mutex<Shared>>,
    /// Wakes the celery runner when a worker comes or goes.
    changed: Arc<Notify>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    last_log: Option<Instant>,
    unlogged: u64,
}

impl Subscriber {
    pub fn new(
        target: Target,
        naming: Naming,
        shared: Arc<Mutex<Shared>>,
        changed: Arc<Notify>,
        metrics: Arc<Metrics>,
        timeout: Duration,
    ) -> Subscriber {
        Subscriber {
            target,
            naming,
            shared,
            changed,
            metrics,
            timeout,
            last_log: None,
            unlogged: 0,
        }
    }

    /// Subscribes, and resubscribes after every loss, until the task is aborted.
    pub async fn run(mut self) {
        let mut backoff = BACKOFF_FIRST;
        loop {
            let lost = self.session().await;
            let held = self.held();
            self.set_down(&lost);
            let wait;
            (wait, backoff) = next_backoff(backoff, held);
            tokio::time::sleep(wait).await;
        }
    }

    /// One connection: subscribe, then handle messages until it is lost; returns why.
    async fn session(&mut self) -> Failure {
        let client = match redis::Client::open(self.target.connection_info()) {
            Ok(c) => c,
            Err(e) => return Failure::from_redis(&e, &self.target),
        };
        let pattern = self.naming.events_pattern();
        let connect = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.psubscribe(pattern.as_slice()).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let command = otel::Command::new(&self.target, "PSUBSCRIBE", None);
        let span = command.span().clone();
        {
            // A reconnection is an event of the subscription's span.
            let shared = self.shared.lock().expect("shared lock is never poisoned");
            let s = &shared.subscription;
            if let Some(previous) = &s.error {
                // A span event only: the log already said the subscription was down.
                tracing::info!(
                    target: otel::SPAN_EVENT,
                    parent: &span,
                    subscriptions = s.connects,
                    previous_error = %previous,
                    "pubsub.reconnect"
                );
            }
        }
        let pubsub = match tokio::time::timeout(self.timeout, connect)
            .instrument(span.clone())
            .await
        {
            Err(_) => {
                let f = Failure::timeout(&self.target, Phase::Connect, self.timeout);
                command.failed(&f);
                return f;
            }
            Ok(Err(e)) => {
                let f = Failure::from_redis(&e, &self.target);
                command.failed(&f);
                return f;
            }
            Ok(Ok(p)) => {
                command.ok();
                p
            }
        };
        drop(span);
        self.set_up();
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(m) => {
                        let channel: Vec<u8> = m.get_channel().unwrap_or_default();
                        self.handle(&channel, m.get_payload_bytes());
                    }
                    None => {
                        return Failure::new(
                            crate::failure::Reason::Connect,
                            format!("the event subscription to {} was closed", self.target.address()),
                        );
                    }
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(self.timeout, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Failure::from_redis(&e, &self.target),
                        Err(_) => return Failure::timeout(&self.target, Phase::Command("PING"), self.timeout),
                    }
                }
            }
        }
    }

    /// How long the subscription has been up, before `set_down` records its loss; `None`
    /// when this session never subscribed.
    fn held(&self) -> Option<Duration> {
        let shared = self.shared.lock().expect("shared lock is never poisoned");
        let s = &shared.subscription;
        s.since.filter(|_| s.up).map(|t| t.elapsed())
    }

    fn set_up(&self) {
        let mut shared = self.shared.lock().expect("shared lock is never poisoned");
        let s = &mut shared.subscription;
        if !s.up && s.error.is_some() {
            tracing::info!(
                endpoint = self.target.redacted(),
                "Celery event subscription is up again"
            );
        }
        s.up = true;
        s.since = Some(Instant::now());
        s.error = None;
        s.connects += 1;
        drop(shared);
        self.metrics.celery.set_subscribed(true);
        self.changed.notify_one();
    }

    fn set_down(&self, why: &Failure) {
        let mut shared = self.shared.lock().expect("shared lock is never poisoned");
        let s = &mut shared.subscription;
        let first = s.up || s.error.as_deref() != Some(why.message.as_str());
        if s.up {
            s.since = Some(Instant::now());
        }
        s.up = false;
        s.error = Some(why.message.clone());
        drop(shared);
        if first {
            tracing::warn!(
                endpoint = self.target.redacted(),
                reason = why.reason.as_str(),
                "Celery event subscription is down, retrying with backoff: {}",
                why.message
            );
        }
        self.metrics.celery.set_subscribed(false);
        self.changed.notify_one();
    }

    /// One message from the event channels.
    fn handle(&mut self, channel: &[u8], payload: &[u8]) {
        if self.naming.routing_key(channel).is_none() {
            return;
        }
        self.metrics.celery.event_received();
        self.shared
            .lock()
            .expect("shared lock is never poisoned")
            .subscription
            .messages += 1;
        let now = Instant::now();
        let events = match event::decode(payload) {
            Ok(events) => events,
            Err(e) => return self.skip(channel, &e, now),
        };
        let mut changed = false;
        let mut skipped = Vec::new();
        let mut shared = self.shared.lock().expect("shared lock is never poisoned");
        for e in events {
            match e {
                Ok(Event::Worker(w)) => {
                    let was_alive = shared
                        .workers
                        .get(&w.hostname)
                        .is_some_and(|k| shared.workers.alive(k, now));
                    match shared.workers.apply(&w, now) {
                        Applied::Added { evicted } => {
                            changed = true;
                            if let Some(name) = evicted {
                                self.metrics.celery.forget_worker(&name);
                            }
                        }
                        Applied::Updated => {
                            changed |= w.kind != WorkerKind::Heartbeat || !was_alive;
                        }
                        Applied::Untracked => {
                            shared.subscription.untracked += 1;
                            self.metrics.celery.untracked();
                        }
                        Applied::Ignored => {}
                    }
                }
                Ok(Event::Task(t)) => {
                    let count = shared.book.record(&t);
                    self.metrics.celery.record_task(&count);
                }
                Ok(Event::Other) => {}
                Err(e) => skipped.push(e),
            }
        }
        drop(shared);
        for e in skipped {
            self.skip(channel, &e, now);
        }
        if changed {
            self.changed.notify_one();
        }
    }

    /// Counts an undecodable message (or event of a batch); logs at most once a minute,
    /// never the payload.
    fn skip(&mut self, channel: &[u8], e: &DecodeError, now: Instant) {
        self.metrics.celery.decode_error("events");
        self.shared
            .lock()
            .expect("shared lock is never poisoned")
            .subscription
            .decode_errors += 1;
        self.unlogged += 1;
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= LOG_EVERY)
        {
            tracing::warn!(
                channel = %String::from_utf8_lossy(channel),
                kind = e.kind(),
                skipped = self.unlogged,
                "skipped undecodable messages on the Celery event channels (logged at most once a minute): {e}"
            );
            self.last_log = Some(now);
            self.unlogged = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn failures_double_the_wait_up_to_the_cap() {
        let mut backoff = BACKOFF_FIRST;
        let mut waits = Vec::new();
        for _ in 0..8 {
            let wait;
            (wait, backoff) = next_backoff(backoff, None);
            waits.push(wait.as_millis());
        }
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 10000, 10000]);
    }

    #[test]
    fn a_subscription_that_held_starts_over_and_one_dropped_at_once_does_not() {
        // Many short sessions (a broker restarted again and again): each retried at once.
        let (wait, next) = next_backoff(BACKOFF_MAX, Some(BACKOFF_RESET));
        assert_eq!((wait, next), (BACKOFF_FIRST, MS(500)));
        // Subscribed, then dropped within the PING interval (a flapping server): keeps doubling.
        let (wait, next) = next_backoff(MS(4000), Some(MS(10)));
        assert_eq!((wait, next), (MS(4000), MS(8000)));
    }
}
