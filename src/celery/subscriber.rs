//! The event subscriber: a dedicated pub/sub connection (not from the pool) PSUBSCRIBEd to
//! the broker's `celeryev` channels. It keeps the worker table and the task counters, and
//! reconnects with backoff when the connection is lost; a PING every 2 s finds a connection
//! that died silently (a frozen or unreachable broker).
//!
//! The connection is `check`'s own RESP client, not the redis crate's pub/sub: it can be
//! named in CLIENT LIST before it subscribes, a refusal is told in the server's words, and
//! messages are read from the socket as fast as they are handled, so a flood waits in the
//! kernel and in Redis's output buffer for this client (bounded by its
//! `client-output-buffer-limit pubsub`), never in an unbounded queue here.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};

use super::Shared;
use super::event::{self, Event, TaskKind, WorkerKind};
use super::kombu::{DecodeError, Naming};
use super::metrics::CeleryMetrics;
use super::workers::Applied;
use crate::redis::failure::server_error;
use crate::redis::failure::{Failure, Phase};
use crate::redis::resp::{Reply, Resp};
use crate::redis::span as otel;
use crate::redis::target::Target;
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

/// Opens a raw connection to a target, logged in and named: the server and `check` pass
/// `check`'s own (`crate::check::diagnose::link_boxed`), so that a failure is told in the
/// words of `check`'s step that failed.
pub type Link = for<'a> fn(
    &'a Target,
    Duration,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Resp, Failure>> + Send + 'a>,
>;

pub struct Subscriber {
    target: Target,
    link: Link,
    /// The key prefix is set (SIDECAR_CELERY_KEYPREFIX): only its channels are subscribed;
    /// else every prefix's, and those of the prefix the queue probe found are kept.
    prefix_set: bool,
    shared: Arc<Mutex<Shared>>,
    /// Wakes the celery runner when a worker comes or goes.
    changed: Arc<Notify>,
    metrics: Arc<CeleryMetrics>,
    timeout: Duration,
    last_log: Option<Instant>,
    unlogged: u64,
}

impl Subscriber {
    pub fn new(
        target: Target,
        link: Link,
        prefix_set: bool,
        shared: Arc<Mutex<Shared>>,
        changed: Arc<Notify>,
        metrics: Arc<CeleryMetrics>,
        timeout: Duration,
    ) -> Subscriber {
        Subscriber {
            target,
            link,
            prefix_set,
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
        let naming = self
            .shared
            .lock()
            .expect("shared lock is never poisoned")
            .naming
            .clone();
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
        // A Sentinel target: the master the sentinels name now, and that one is what this
        // subscription is on (left when they name another).
        let at = match crate::redis::sentinel::resolve(&self.target, self.timeout)
            .instrument(span.clone())
            .await
        {
            Ok(at) => at,
            Err(f) => {
                command.failed(&f);
                return f;
            }
        };
        let master = self.target.sentinels().and(at.node());
        let subscribed = subscribe_events(&at, self.link, &naming, self.prefix_set, self.timeout)
            .instrument(span.clone())
            .await;
        let (mut resp, mut narrow) = match subscribed {
            Err(f) => {
                command.failed(&f);
                return f;
            }
            Ok(r) => {
                command.ok();
                r
            }
        };
        drop(span);
        self.set_up();
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // When the answer to the PING sent last is due.
        let mut pong_due: Option<Instant> = None;
        loop {
            let due = pong_due;
            let overdue = async move {
                match due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // Cancel-safe: a read dropped for a PING tick loses nothing.
                read = resp.read() => match read.map(Push::from) {
                    // Anything read proves the connection alive: a PONG queued behind a
                    // backlog of messages is not awaited.
                    Ok(Push::Message { channel, payload }) => {
                        pong_due = None;
                        self.handle(&channel, &payload);
                    }
                    Ok(Push::Pong) => pong_due = None,
                    Ok(Push::Error(text)) => {
                        return Failure::from_redis(&server_error(&text), &self.target);
                    }
                    Ok(Push::Other) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return Failure::new(
                            crate::redis::failure::Reason::Connect,
                            format!("the event subscription to {} was closed", self.target.address()),
                        );
                    }
                    Err(e) => return Failure::from_redis(&redis::RedisError::from(e), &self.target),
                },
                _ = ping.tick() => {
                    if let Some(s) = self.target.sentinels()
                        && master.is_some()
                        && s.current() != master
                    {
                        return Failure::new(
                            crate::redis::failure::Reason::Connect,
                            format!(
                                "the sentinels name a new master for {:?}: subscribing there",
                                s.master
                            ),
                        );
                    }
                    // Subscribed to one prefix only: follow the one the queue probe found.
                    if let Some(old) = &narrow {
                        let now = self.shared.lock().expect("shared lock is never poisoned").naming.clone();
                        if now.prefix() != old.prefix() {
                            let (from, to) = (old.events_pattern(), now.events_pattern());
                            let unsubscribe: [&[u8]; 2] = [b"PUNSUBSCRIBE", &from];
                            let subscribe: [&[u8]; 2] = [b"PSUBSCRIBE", &to];
                            let commands: [&[&[u8]]; 2] = [&unsubscribe, &subscribe];
                            match tokio::time::timeout(self.timeout, resp.send(&commands)).await {
                                Ok(Ok(())) => narrow = Some(now),
                                Ok(Err(e)) => return Failure::from_redis(&redis::RedisError::from(e), &self.target),
                                Err(_) => return Failure::timeout(&self.target, Phase::Command("PSUBSCRIBE"), self.timeout),
                            }
                        }
                    }
                    if pong_due.is_none() {
                        pong_due = Some(Instant::now() + self.timeout);
                    }
                    match tokio::time::timeout(self.timeout, resp.send(&[&[b"PING"]])).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Failure::from_redis(&redis::RedisError::from(e), &self.target),
                        Err(_) => return Failure::timeout(&self.target, Phase::Command("PING"), self.timeout),
                    }
                }
                () = overdue => {
                    return Failure::timeout(&self.target, Phase::Command("PING"), self.timeout);
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
        self.metrics.set_subscribed(true);
        self.changed.notify_one();
    }

    fn set_down(&self, why: &Failure) {
        let mut shared = self.shared.lock().expect("shared lock is never poisoned");
        let s = &mut shared.subscription;
        let first = s.up || s.error.as_ref() != Some(why);
        if s.up {
            s.since = Some(Instant::now());
        }
        s.up = false;
        s.error = Some(why.clone());
        drop(shared);
        if first {
            tracing::warn!(
                endpoint = self.target.redacted(),
                reason = why.reason.as_str(),
                "Celery event subscription is down, retrying with backoff: {}",
                why.message
            );
        }
        self.metrics.set_subscribed(false);
        self.changed.notify_one();
    }

    /// One message from the event channels: kept when it is under the key prefix watched;
    /// under another, only noted as heard (a worker event).
    fn handle(&mut self, channel: &[u8], payload: &[u8]) {
        let now = Instant::now();
        {
            let mut shared = self.shared.lock().expect("shared lock is never poisoned");
            let Some((prefix, key)) = shared.naming.split_event_channel(channel) else {
                return;
            };
            if key.starts_with(b"worker.") {
                shared.heard_under(prefix, now);
            }
            if prefix != shared.naming.prefix() {
                return;
            }
            shared.subscription.messages += 1;
        }
        self.metrics.event_received();
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
                                self.metrics.forget_worker(&name);
                            }
                        }
                        Applied::Updated => {
                            changed |= w.kind != WorkerKind::Heartbeat || !was_alive;
                        }
                        Applied::Untracked => {
                            shared.subscription.untracked += 1;
                            self.metrics.untracked();
                        }
                        Applied::Ignored => {}
                    }
                }
                Ok(Event::Task(t)) => {
                    // task-sent comes from the client; the others from the worker.
                    if t.kind != TaskKind::Sent
                        && let Some(h) = &t.hostname
                    {
                        shared.working(h, now);
                    }
                    let count = shared.book.record(&t, now);
                    shared.beat.heard(&count.name, crate::text::unix_now());
                    self.metrics.record_task(&count);
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
        self.metrics.decode_error("events");
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

/// What a subscribed connection receives.
#[derive(Debug, PartialEq)]
pub enum Push {
    /// A message on a channel the pattern matched.
    Message { channel: Vec<u8>, payload: Vec<u8> },
    /// The answer to a PING.
    Pong,
    /// An error reply (a refused PSUBSCRIBE, say).
    Error(String),
    /// A subscription's confirmation, or anything else.
    Other,
}

impl From<Reply> for Push {
    fn from(reply: Reply) -> Push {
        let mut items = match reply {
            Reply::Error(text) => return Push::Error(text),
            Reply::Array(Some(items)) => items.into_iter(),
            _ => return Push::Other,
        };
        let kind = match items.next() {
            Some(Reply::Bulk(Some(kind))) => kind,
            _ => return Push::Other,
        };
        match (kind.as_slice(), items.next(), items.next(), items.next()) {
            (
                b"pmessage",
                Some(_pattern),
                Some(Reply::Bulk(Some(channel))),
                Some(Reply::Bulk(Some(payload))),
            ) => Push::Message { channel, payload },
            (
                b"message",
                Some(Reply::Bulk(Some(channel))),
                Some(Reply::Bulk(Some(payload))),
                None,
            ) => Push::Message { channel, payload },
            (b"pong", _, _, _) => Push::Pong,
            _ => Push::Other,
        }
    }
}

/// A connection PSUBSCRIBEd to the event channels: of every key prefix on the broker db,
/// unless the prefix is set; when the ACL refuses that pattern (`NOPERM`: a user allowed
/// only its app's channels), of the prefix of `naming`. With it, the naming subscribed to
/// when that is one prefix only.
pub async fn subscribe_events(
    target: &Target,
    link: Link,
    naming: &Naming,
    prefix_set: bool,
    limit: Duration,
) -> Result<(Resp, Option<Naming>), Failure> {
    if !prefix_set {
        match subscribe(target, link, &naming.any_events_pattern(), limit).await {
            Ok(resp) => return Ok((resp, None)),
            Err(f) if f.message.starts_with("NOPERM") => {}
            Err(f) => return Err(f),
        }
    }
    let resp = subscribe(target, link, &naming.events_pattern(), limit).await?;
    Ok((resp, Some(naming.clone())))
}

/// A connection to `target` (made as `check` makes it, and named), PSUBSCRIBEd to
/// `pattern`; or why not, in `check`'s words. `limit` bounds each step.
pub async fn subscribe(
    target: &Target,
    link: Link,
    pattern: &[u8],
    limit: Duration,
) -> Result<Resp, Failure> {
    let mut resp = link(target, limit).await?;
    match tokio::time::timeout(limit, resp.command(&[b"PSUBSCRIBE", pattern])).await {
        Err(_) => Err(Failure::timeout(
            target,
            Phase::Command("PSUBSCRIBE"),
            limit,
        )),
        Ok(Err(e)) => Err(Failure::from_redis(&redis::RedisError::from(e), target)),
        Ok(Ok(Reply::Error(text))) => Err(Failure::from_redis(&server_error(&text), target)),
        Ok(Ok(Reply::Array(Some(items))))
            if items.first() == Some(&Reply::Bulk(Some(b"psubscribe".to_vec()))) =>
        {
            Ok(resp)
        }
        Ok(Ok(other)) => Err(Failure::new(
            crate::redis::failure::Reason::Protocol,
            format!(
                "protocol: {} answered PSUBSCRIBE with {other:?}",
                target.address()
            ),
        )),
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
