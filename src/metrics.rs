//! The Prometheus registry and every metric family the sidecar exports.
//!
//! Runners write here after each probe. The text exposition is rendered once per update
//! (and at least every second, for `process_*` and freshness), never per request: a scrape
//! only clones the last rendered body.

use std::time::Duration;

use hyper::body::Bytes;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::celery::event::TaskKind;
use crate::celery::queues::QueueObservation;
use crate::celery::tasks::Count;
use crate::failure::{Failure, Reason};
use crate::info::Info;
use crate::pool::PoolState;
use crate::snapshot::Snapshot;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// A rendered exposition older than this is rendered again even without a probe (the
/// staleness of checks depends on the time). Not a whole second: a render is timed from the
/// last one, which follows a probe, so with a whole-second period it would fall on the next
/// probe of a whole-second interval, between its PING and the reply, and be counted in it.
pub const RENDER_EVERY: Duration = Duration::from_millis(1100);

/// `redis_ping_duration_seconds` buckets: 100 µs to 2.5 s.
const PING_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The content type of the text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub struct Metrics {
    registry: Registry,
    redis_up: IntGaugeVec,
    ping: HistogramVec,
    failures: IntCounterVec,
    connected_clients: IntGaugeVec,
    blocked_clients: IntGaugeVec,
    maxclients: IntGaugeVec,
    rejected_connections: IntCounterVec,
    evicted_keys: IntCounterVec,
    used_memory: IntGaugeVec,
    maxmemory: IntGaugeVec,
    pool_connections: IntGaugeVec,
    checkout_timeouts: IntCounterVec,
    check_status: IntGaugeVec,
    ready: IntGauge,
    /// Open HTTP connections, and those closed at once for the cap.
    pub http_connections: IntGauge,
    pub http_rejected: IntCounter,
    last_probe: GaugeVec,
    probe_duration: GaugeVec,
    /// Celery's families.
    pub celery: CeleryMetrics,
    /// Signalled by runners after they record a probe.
    updated: Notify,
    /// The last rendered text exposition, plain and gzipped.
    body: watch::Sender<Exposition>,
}

/// One rendering of the text exposition, and its gzip copy made at the same time, so that
/// a scrape (Prometheus asks for gzip) costs a reference count, not a compression.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub plain: Bytes,
    pub gzip: Bytes,
}

/// gzip at a low level: on a metrics page it gets most of the ratio at a fraction of the
/// time of level 6.
fn gzip(data: &[u8]) -> Bytes {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::new(3),
    );
    match enc.write_all(data).and_then(|()| enc.finish()) {
        Ok(out) => Bytes::from(out),
        Err(e) => {
            // Writing to a Vec cannot fail; never serve a truncated body anyway.
            tracing::error!(error = %e, "compressing metrics failed");
            Bytes::new()
        }
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Metrics {
    /// Registers every family, and `process_*` for this process.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let gauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
                let g = IntGaugeVec::new(opts(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(opts(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let float =
            |name: &str, help: &str, labels: &[&str]| -> Result<GaugeVec, prometheus::Error> {
                let g = GaugeVec::new(opts(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let role = &["role"];
        let ping = HistogramVec::new(
            HistogramOpts::new(
                "redis_ping_duration_seconds",
                "Round trip of the probe's PING on a ready connection.",
            )
            .buckets(PING_BUCKETS.to_vec()),
            role,
        )?;
        registry.register(Box::new(ping.clone()))?;
        let ready = IntGauge::new("sidecar_ready", "1 when /readyz answers 200, else 0.")?;
        registry.register(Box::new(ready.clone()))?;
        let http_connections = IntGauge::new(
            "sidecar_http_connections",
            "Open HTTP connections to the sidecar.",
        )?;
        registry.register(Box::new(http_connections.clone()))?;
        let http_rejected = IntCounter::new(
            "sidecar_http_connections_rejected_total",
            "HTTP connections closed at once because SIDECAR_MAX_CONNECTIONS were open.",
        )?;
        registry.register(Box::new(http_rejected.clone()))?;
        let build_info = gauge(
            "sidecar_build_info",
            "Always 1; the version label says which build runs.",
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(crate::process::ProcessCollector::new()?))?;
        let otel = &crate::otel::STATS;
        for c in [&otel.exported, &otel.dropped, &otel.failed] {
            registry.register(Box::new(c.clone()))?;
        }
        Ok(Metrics {
            redis_up: gauge(
                "redis_up",
                "1 when the last probe of this Redis succeeded, else 0.",
                role,
            )?,
            ping,
            failures: counter(
                "redis_probe_failures_total",
                "Failed probes, by cause.",
                &["role", "reason"],
            )?,
            connected_clients: gauge("redis_connected_clients", "INFO connected_clients.", role)?,
            blocked_clients: gauge("redis_blocked_clients", "INFO blocked_clients.", role)?,
            maxclients: gauge("redis_maxclients", "INFO maxclients.", role)?,
            rejected_connections: counter(
                "redis_rejected_connections_total",
                "INFO rejected_connections: connections refused for maxclients.",
                role,
            )?,
            evicted_keys: counter("redis_evicted_keys_total", "INFO evicted_keys.", role)?,
            used_memory: gauge("redis_used_memory_bytes", "INFO used_memory.", role)?,
            maxmemory: gauge(
                "redis_maxmemory_bytes",
                "INFO maxmemory; 0 means no limit.",
                role,
            )?,
            pool_connections: gauge(
                "redis_pool_connections",
                "The sidecar's own pooled connections to this Redis.",
                &["role", "state"],
            )?,
            checkout_timeouts: counter(
                "redis_pool_checkout_timeouts_total",
                "Probes that timed out waiting for a pooled connection.",
                role,
            )?,
            check_status: gauge(
                "sidecar_check_status",
                "0 healthy, 1 degraded, 2 unhealthy.",
                &["check"],
            )?,
            ready,
            http_connections,
            http_rejected,
            last_probe: float(
                "sidecar_last_probe_timestamp_seconds",
                "Unix time the last probe of this check finished.",
                &["check"],
            )?,
            probe_duration: float(
                "sidecar_probe_duration_seconds",
                "How long the last probe of this check took, connect included.",
                &["check"],
            )?,
            celery: CeleryMetrics::new(&registry)?,
            registry,
            updated: Notify::new(),
            body: watch::Sender::new(Exposition::default()),
        })
    }

    /// Creates a target's series at zero, so that `rate()` works from the first failure.
    pub fn init_redis(&self, role: &str) {
        self.redis_up.with_label_values(&[role]).set(0);
        for reason in Reason::ALL {
            self.failures.with_label_values(&[role, reason.as_str()]);
        }
        self.checkout_timeouts.with_label_values(&[role]);
        self.ping.with_label_values(&[role]);
    }

    /// A probe of a Redis target finished.
    pub fn record_probe(&self, check: &str, unix_time: f64, duration: f64) {
        self.last_probe.with_label_values(&[check]).set(unix_time);
        self.probe_duration
            .with_label_values(&[check])
            .set(duration);
        self.updated.notify_one();
    }

    pub fn record_redis_success(
        &self,
        role: &str,
        ping_seconds: f64,
        info: Option<&Info>,
        pool: PoolState,
    ) {
        self.redis_up.with_label_values(&[role]).set(1);
        self.ping.with_label_values(&[role]).observe(ping_seconds);
        self.record_pool(role, pool);
        match info {
            Some(info) => self.record_info(role, info),
            None => self.clear_info(role),
        }
    }

    pub fn record_redis_failure(
        &self,
        role: &str,
        failure: &Failure,
        pool: PoolState,
        checkout_timeout: bool,
    ) {
        self.redis_up.with_label_values(&[role]).set(0);
        self.failures
            .with_label_values(&[role, failure.reason.as_str()])
            .inc();
        if checkout_timeout {
            self.checkout_timeouts.with_label_values(&[role]).inc();
        }
        self.record_pool(role, pool);
        self.clear_info(role);
    }

    fn record_pool(&self, role: &str, pool: PoolState) {
        self.pool_connections
            .with_label_values(&[role, "idle"])
            .set(i64::from(pool.idle));
        self.pool_connections
            .with_label_values(&[role, "in_use"])
            .set(i64::from(pool.in_use()));
    }

    fn record_info(&self, role: &str, info: &Info) {
        let set = |g: &IntGaugeVec, v: Option<u64>| match v {
            Some(v) => g
                .with_label_values(&[role])
                .set(i64::try_from(v).unwrap_or(i64::MAX)),
            None => {
                let _ = g.remove_label_values(&[role]);
            }
        };
        set(&self.connected_clients, info.connected_clients);
        set(&self.blocked_clients, info.blocked_clients);
        set(&self.maxclients, info.maxclients);
        set(&self.used_memory, info.used_memory_bytes);
        set(&self.maxmemory, info.maxmemory_bytes);
        mirror(&self.rejected_connections, role, info.rejected_connections);
        mirror(&self.evicted_keys, role, info.evicted_keys);
    }

    /// Drops the INFO-derived series: while a target is down or INFO is denied they are
    /// absent, not frozen at their last value.
    fn clear_info(&self, role: &str) {
        for g in [
            &self.connected_clients,
            &self.blocked_clients,
            &self.maxclients,
            &self.used_memory,
            &self.maxmemory,
        ] {
            let _ = g.remove_label_values(&[role]);
        }
        for c in [&self.rejected_connections, &self.evicted_keys] {
            let _ = c.remove_label_values(&[role]);
        }
    }

    /// Sets the gauge of one check's status.
    pub fn set_status(&self, check: &str, code: i64) {
        self.check_status.with_label_values(&[check]).set(code);
    }

    /// Renders the exposition: first the gauges that depend on the time (a stale check is
    /// unhealthy, readiness), then every family, into the body scrapes are served.
    pub fn render(&self, snapshot: &Snapshot, now: Instant) {
        for check in snapshot.checks() {
            self.set_status(&check.name, snapshot.verdict(check, now).status.code());
        }
        self.ready.set(i64::from(snapshot.ready(now)));
        let mut out = Vec::with_capacity(self.body.borrow().plain.len() + 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        let gzip = gzip(&out);
        self.body.send_replace(Exposition {
            plain: Bytes::from(out),
            gzip,
        });
    }

    /// Renders at once after every recorded probe, so that `/metrics` never lags `/healthz`,
    /// and at least every `RENDER_EVERY`; runs until aborted. The probers take turns within
    /// the interval (see `runner::ticks`), so a render rarely falls between a PING and its
    /// reply.
    pub async fn render_loop(&self, snapshot: &Snapshot) {
        loop {
            self.render(snapshot, Instant::now());
            let _ = tokio::time::timeout(RENDER_EVERY, self.updated.notified()).await;
        }
    }

    /// The last rendered exposition (reference-counted clones, no copy).
    pub fn exposition(&self) -> Exposition {
        self.body.borrow().clone()
    }
}

/// `celery_task_runtime` buckets, in seconds: 5 ms to 10 min.
const RUNTIME_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Celery's families: names as celery-exporter's, so its dashboards keep working, but no
/// `hostname` label on task series (short-lived hostnames are what grew its series).
pub struct CeleryMetrics {
    queue_length: IntGaugeVec,
    queue_oldest: GaugeVec,
    /// Label-less vectors, so that they can be dropped while the broker cannot be read.
    unacked: IntGaugeVec,
    unacked_oldest: GaugeVec,
    unacked_orphaned: IntGaugeVec,
    queues_left_out: IntGaugeVec,
    workers_alive: IntGauge,
    worker_up: IntGaugeVec,
    worker_active: IntGaugeVec,
    tasks: Vec<(TaskKind, IntCounterVec)>,
    runtime: HistogramVec,
    decode_errors: IntCounterVec,
    events: IntCounter,
    subscribed: IntGauge,
    untracked: IntCounter,
}

impl CeleryMetrics {
    fn new(registry: &Registry) -> Result<CeleryMetrics, prometheus::Error> {
        fn reg<C: prometheus::core::Collector + Clone + 'static>(
            registry: &Registry,
            c: C,
        ) -> Result<C, prometheus::Error> {
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let q = &["queue_name"];
        let h = &["hostname"];
        let mut tasks = Vec::new();
        for kind in TaskKind::ALL {
            let mut labels = vec!["name", "queue_name"];
            if kind == TaskKind::Failed {
                labels.push("exception");
            }
            let c = IntCounterVec::new(
                opts(
                    &format!("celery_task_{}_total", kind.as_str()),
                    &format!("task-{} events, by task name and queue.", kind.as_str()),
                ),
                &labels,
            )?;
            tasks.push((kind, reg(registry, c)?));
        }
        let decode_errors = reg(
            registry,
            IntCounterVec::new(
                opts(
                    "sidecar_decode_errors_total",
                    "Messages that could not be decoded, skipped: source events (pub/sub) or queue (a queued task).",
                ),
                &["source"],
            )?,
        )?;
        for source in ["events", "queue"] {
            decode_errors.with_label_values(&[source]);
        }
        Ok(CeleryMetrics {
            queue_length: reg(
                registry,
                IntGaugeVec::new(
                    opts(
                        "celery_queue_length",
                        "Messages waiting, priority sub-queues summed.",
                    ),
                    q,
                )?,
            )?,
            queue_oldest: reg(
                registry,
                GaugeVec::new(
                    opts(
                        "celery_queue_oldest_task_age_seconds",
                        "How long the oldest waiting message has been at the front of the queue.",
                    ),
                    q,
                )?,
            )?,
            unacked: reg(
                registry,
                IntGaugeVec::new(
                    opts(
                        "celery_unacked_tasks",
                        "Reserved (prefetched) messages not yet acknowledged.",
                    ),
                    &[],
                )?,
            )?,
            unacked_oldest: reg(
                registry,
                GaugeVec::new(
                    opts(
                        "celery_unacked_oldest_age_seconds",
                        "Age of the oldest reservation.",
                    ),
                    &[],
                )?,
            )?,
            unacked_orphaned: reg(
                registry,
                IntGaugeVec::new(
                    opts(
                        "celery_unacked_orphaned_tasks",
                        "Reservations older than the visibility timeout (a killed worker's, or ETA tasks past it).",
                    ),
                    &[],
                )?,
            )?,
            queues_left_out: reg(
                registry,
                IntGaugeVec::new(
                    opts(
                        "celery_queues_left_out",
                        "Queues bound on the broker but not watched: beyond the 2,000 watched at most (the shortest).",
                    ),
                    &[],
                )?,
            )?,
            workers_alive: reg(
                registry,
                IntGauge::new(
                    "celery_workers_alive",
                    "Workers whose last heartbeat is recent.",
                )?,
            )?,
            worker_up: reg(
                registry,
                IntGaugeVec::new(
                    opts(
                        "celery_worker_up",
                        "1 while the worker's heartbeats arrive, 0 once it is down.",
                    ),
                    h,
                )?,
            )?,
            worker_active: reg(
                registry,
                IntGaugeVec::new(
                    opts(
                        "celery_worker_tasks_active",
                        "Tasks the worker is executing, from its heartbeat.",
                    ),
                    h,
                )?,
            )?,
            tasks,
            runtime: reg(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "celery_task_runtime",
                        "Task run time in seconds, from task-succeeded.",
                    )
                    .buckets(RUNTIME_BUCKETS.to_vec()),
                    &["name", "queue_name"],
                )?,
            )?,
            decode_errors,
            events: reg(
                registry,
                IntCounter::new(
                    "sidecar_celery_events_total",
                    "Messages received on the celeryev channels, undecodable ones included.",
                )?,
            )?,
            subscribed: reg(
                registry,
                IntGauge::new(
                    "sidecar_celery_subscribed",
                    "1 while the event subscription to the broker is up.",
                )?,
            )?,
            untracked: reg(
                registry,
                IntCounter::new(
                    "celery_workers_untracked_total",
                    "Worker events not tracked because the worker table was full.",
                )?,
            )?,
        })
    }

    pub fn record_task(&self, c: &Count) {
        if let Some((_, counter)) = self.tasks.iter().find(|(k, _)| *k == c.kind) {
            match &c.exception {
                Some(exception) => counter
                    .with_label_values(&[c.name.as_str(), c.queue.as_str(), exception.as_str()])
                    .inc(),
                None => counter
                    .with_label_values(&[c.name.as_str(), c.queue.as_str()])
                    .inc(),
            }
        }
        if let Some(runtime) = c.runtime.filter(|_| c.kind == TaskKind::Succeeded) {
            self.runtime
                .with_label_values(&[c.name.as_str(), c.queue.as_str()])
                .observe(runtime);
        }
    }

    pub fn decode_error(&self, source: &str) {
        self.decode_errors.with_label_values(&[source]).inc();
    }

    pub fn event_received(&self) {
        self.events.inc();
    }

    pub fn set_subscribed(&self, up: bool) {
        self.subscribed.set(i64::from(up));
    }

    pub fn untracked(&self) {
        self.untracked.inc();
    }

    /// The worker gauges: `alive` first, then each tracked worker's state.
    pub fn set_workers<'a>(
        &self,
        alive: usize,
        workers: impl Iterator<Item = (&'a str, bool, u64)>,
    ) {
        self.workers_alive
            .set(i64::try_from(alive).unwrap_or(i64::MAX));
        for (hostname, up, active) in workers {
            self.worker_up
                .with_label_values(&[hostname])
                .set(i64::from(up));
            self.worker_active
                .with_label_values(&[hostname])
                .set(i64::try_from(active).unwrap_or(i64::MAX));
        }
    }

    /// A forgotten worker's series go.
    pub fn forget_worker(&self, hostname: &str) {
        let _ = self.worker_up.remove_label_values(&[hostname]);
        let _ = self.worker_active.remove_label_values(&[hostname]);
    }

    /// The queue gauges from a probe; series of queues no longer watched are removed.
    pub fn set_queues(&self, obs: &QueueObservation, gone: &[String]) {
        for q in &obs.queues {
            self.queue_length
                .with_label_values(&[q.name.as_str()])
                .set(i64::try_from(q.length).unwrap_or(i64::MAX));
            self.queue_oldest
                .with_label_values(&[q.name.as_str()])
                .set(q.oldest_age.map_or(0.0, |a| a.as_secs_f64()));
        }
        for name in gone {
            let _ = self.queue_length.remove_label_values(&[name.as_str()]);
            let _ = self.queue_oldest.remove_label_values(&[name.as_str()]);
        }
        self.unacked
            .with_label_values(&[] as &[&str])
            .set(i64::try_from(obs.unacked).unwrap_or(i64::MAX));
        self.unacked_oldest
            .with_label_values(&[] as &[&str])
            .set(obs.oldest_reservation.map_or(0.0, |a| a.as_secs_f64()));
        self.unacked_orphaned
            .with_label_values(&[] as &[&str])
            .set(i64::try_from(obs.orphaned).unwrap_or(i64::MAX));
        self.queues_left_out
            .with_label_values(&[] as &[&str])
            .set(i64::try_from(obs.left_out).unwrap_or(i64::MAX));
    }

    /// While the broker cannot be read, the queue and reservation series are dropped, not
    /// frozen at their last values.
    pub fn clear_queues(&self, names: &[String]) {
        for name in names {
            let _ = self.queue_length.remove_label_values(&[name.as_str()]);
            let _ = self.queue_oldest.remove_label_values(&[name.as_str()]);
        }
        let _ = self.unacked.remove_label_values(&[] as &[&str]);
        let _ = self.unacked_oldest.remove_label_values(&[] as &[&str]);
        let _ = self.unacked_orphaned.remove_label_values(&[] as &[&str]);
        let _ = self.queues_left_out.remove_label_values(&[] as &[&str]);
    }
}

/// Makes a counter equal a counter Redis keeps: it only adds, and starts over when Redis did
/// (a restart resets INFO's counters; Prometheus' `rate()` handles the reset).
fn mirror(counter: &IntCounterVec, role: &str, value: Option<u64>) {
    let Some(value) = value else {
        let _ = counter.remove_label_values(&[role]);
        return;
    };
    let c = counter.with_label_values(&[role]);
    let current = c.get();
    if value < current {
        c.reset();
        c.inc_by(value);
    } else {
        c.inc_by(value - current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        let (snapshot, _) = Snapshot::new(vec![], &[], Duration::from_secs(5));
        m.render(&snapshot, Instant::now());
        String::from_utf8(m.exposition().plain.to_vec()).unwrap()
    }

    #[test]
    fn mirrored_counters_follow_redis_and_its_resets() {
        let m = Metrics::new().unwrap();
        let mut info = Info {
            evicted_keys: Some(5),
            ..Info::default()
        };
        m.record_info("cache", &info);
        info.evicted_keys = Some(9);
        m.record_info("cache", &info);
        assert!(text(&m).contains("redis_evicted_keys_total{role=\"cache\"} 9\n"));
        info.evicted_keys = Some(2);
        m.record_info("cache", &info);
        assert!(text(&m).contains("redis_evicted_keys_total{role=\"cache\"} 2\n"));
    }

    #[test]
    fn failure_drops_info_series_and_keeps_up() {
        let m = Metrics::new().unwrap();
        m.init_redis("cache");
        let info = Info {
            connected_clients: Some(3),
            ..Info::default()
        };
        m.record_redis_success("cache", 0.0004, Some(&info), PoolState::default());
        let t = text(&m);
        assert!(
            t.contains("redis_connected_clients{role=\"cache\"} 3\n"),
            "{t}"
        );
        assert!(t.contains("redis_up{role=\"cache\"} 1\n"));
        let f = Failure::new(Reason::Connect, "refused");
        m.record_redis_failure("cache", &f, PoolState::default(), false);
        let t = text(&m);
        assert!(!t.contains("redis_connected_clients{"), "{t}");
        assert!(t.contains("redis_up{role=\"cache\"} 0\n"));
        assert!(t.contains("redis_probe_failures_total{reason=\"connect\",role=\"cache\"} 1\n"));
        assert!(t.contains("redis_probe_failures_total{reason=\"timeout\",role=\"cache\"} 0\n"));
        assert!(t.contains("sidecar_build_info{version=\""));
        assert!(t.contains("process_resident_memory_bytes "));
    }
}
