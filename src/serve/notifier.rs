//! The notifier: the history's state changes, held until they last and grouped
//! ([`crate::notify::debounce`]), then one message per group to each receiver's outbox,
//! sent in order by a task per receiver ([`crate::notify::deliver`]). Nothing here is
//! awaited by a probe or a request: the history hands changes over with `try_send`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::notify::NotifyConfig;
use crate::notify::debounce::Debounce;
use crate::notify::deliver::{self, Outbox, Outcome};
use crate::notify::message;
use crate::serve::history::History;
use crate::serve::metrics::Metrics;

/// Changes waiting to be read by the notifier at most.
const CHANNEL: usize = 1024;
/// How often held changes are looked at.
const TICK: Duration = Duration::from_millis(250);
/// A receiver's failures are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// What messages call the sender.
pub const SERVICE: &str = "redis-celery-sidecar";

/// Starts the notifier on `tasks` when receivers are set.
pub fn start(
    config: &NotifyConfig,
    probe_interval: Duration,
    history: &History,
    metrics: &Arc<Metrics>,
    tasks: &mut JoinSet<()>,
) {
    if config.receivers.is_empty() {
        return;
    }
    let client = Arc::new(deliver::Client::new(&config.roots));
    let (tx, mut rx) = mpsc::channel(CHANNEL);
    history.notify_to(tx);
    let mut outboxes = Vec::new();
    for (i, r) in config.receivers.iter().enumerate() {
        let outbox = Arc::new(Outbox::default());
        outboxes.push((r.format, outbox.clone()));
        let (r, client, metrics) = (r.clone(), client.clone(), metrics.clone());
        let last_log: Mutex<Option<Instant>> = Mutex::new(None);
        tasks.spawn(async move {
            let shown = r.shown();
            let count = |o: Outcome| {
                metrics.notifications.with_label_values(&[o.as_str()]).inc();
            };
            let failed = |why: &str| {
                let mut last = last_log
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    *last = Some(Instant::now());
                    tracing::warn!(
                        receiver = i + 1,
                        "a notification to {shown} was not delivered (retried): {why}"
                    );
                }
            };
            outbox.run(&r, &client, count, failed).await;
        });
    }
    let after = config.after;
    let metrics = metrics.clone();
    tasks.spawn(async move {
        // Changes confirmed within one and a half probe intervals of the first go together
        // (a check that follows another, as celery follows its broker, changes at most a
        // probe later).
        let mut debounce = Debounce::new(after, probe_interval * 3 / 2);
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                e = rx.recv() => match e {
                    Some(e) => debounce.event(e, Instant::now()),
                    None => return,
                },
                _ = tick.tick() => {}
            }
            if let Some(group) = debounce.tick(Instant::now()) {
                for (format, outbox) in &outboxes {
                    let dropped = outbox.push(message::body(*format, &group, SERVICE));
                    metrics
                        .notifications
                        .with_label_values(&[Outcome::Dropped.as_str()])
                        .inc_by(dropped as u64);
                }
            }
        }
    });
}
