//! The Prometheus registry and every metric family the sidecar exports.
//!
//! Runners write here after each probe. The text exposition is rendered once per update
//! (and at least every second, for `process_*` and freshness), never per request: a scrape
//! only clones the last rendered body.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Bytes;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::celery::metrics::CeleryMetrics;
use crate::redis::failure::{Failure, Reason};
use crate::redis::info::Info;
use crate::redis::pool::PoolState;
use crate::serve::snapshot::Snapshot;
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
    db_keys: IntGaugeVec,
    db_keys_expiring: IntGaugeVec,
    pool_connections: IntGaugeVec,
    checkout_timeouts: IntCounterVec,
    sentinel_failovers: IntCounterVec,
    /// A Redis Cluster's figures, named as redis_exporter names them, and how each is read.
    cluster: Vec<(IntGaugeVec, ClusterFigure)>,
    check_status: IntGaugeVec,
    ready: IntGauge,
    /// Whether no target's ACL refuses what a collector needs (`capability`).
    collectors: IntGaugeVec,
    /// Open HTTP connections, and those closed at once for the cap.
    pub http_connections: IntGauge,
    pub http_rejected: IntCounter,
    /// Notifications: delivered, attempts failed, given up.
    pub notifications: IntCounterVec,
    last_probe: GaugeVec,
    probe_duration: GaugeVec,
    /// Celery's families.
    pub celery: Arc<CeleryMetrics>,
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
pub fn gzip(data: &[u8]) -> Bytes {
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
        let collectors = gauge(
            "sidecar_collector_enabled",
            "1 when every target's ACL allows what the collector needs (INFO, CLIENT SETNAME, sampling a result backend, reading RedBeat); 0 while one refuses it (tried again every 10 min).",
            &["collector"],
        )?;
        for c in crate::redis::capability::Collector::ALL {
            collectors.with_label_values(&[c.as_str()]).set(1);
        }
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
        let notifications = IntCounterVec::new(
            Opts::new(
                "sidecar_notifications_total",
                "Notifications (SIDECAR_NOTIFY_URL) by outcome: sent, failed (an attempt; retried), dropped (too old, or pushed out of a full outbox).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(notifications.clone()))?;
        for outcome in ["sent", "failed", "dropped"] {
            notifications.with_label_values(&[outcome]);
        }
        let build_info = gauge(
            "sidecar_build_info",
            "Always 1; the version label says which build runs.",
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(crate::serve::process::ProcessCollector::new()?))?;
        let otel = &crate::telemetry::otel::STATS;
        for c in [&otel.exported, &otel.dropped, &otel.failed] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(crate::telemetry::push::EXPORTS.clone()))?;
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
            db_keys: gauge(
                "redis_db_keys",
                "Keys in the target's database (INFO keyspace).",
                &["role", "db"],
            )?,
            db_keys_expiring: gauge(
                "redis_db_keys_expiring",
                "Keys with a TTL in the target's database (INFO keyspace).",
                &["role", "db"],
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
            sentinel_failovers: counter(
                "redis_sentinel_failovers_total",
                "Times the sentinels named a new master for this target.",
                role,
            )?,
            cluster: CLUSTER_FIGURES
                .iter()
                .map(|(name, help, figure)| Ok((gauge(name, help, role)?, *figure)))
                .collect::<Result<_, prometheus::Error>>()?,
            check_status: gauge(
                "sidecar_check_status",
                "0 healthy, 1 degraded, 2 unhealthy.",
                &["check"],
            )?,
            ready,
            collectors,
            http_connections,
            http_rejected,
            notifications,
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
            celery: Arc::new(CeleryMetrics::new(&registry)?),
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

    /// A Redis Cluster target's last look; `None` removes its series (the probe failed).
    pub fn record_cluster(&self, role: &str, view: Option<&crate::redis::cluster::View>) {
        for (gauge, figure) in &self.cluster {
            match view {
                Some(v) => gauge.with_label_values(&[role]).set(figure(v)),
                None => {
                    let _ = gauge.remove_label_values(&[role]);
                }
            }
        }
    }

    /// A Sentinel target's master changes so far (its series exists from the start, at 0).
    pub fn record_failovers(&self, role: &str, total: u64) {
        mirror(&self.sentinel_failovers, role, Some(total));
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

    /// The keys of the target's database (`db`), or none while INFO does not tell them.
    pub fn record_keys(&self, role: &str, db: i64, keys: Option<crate::redis::info::DbKeys>) {
        let db = db.to_string();
        let labels = [role, db.as_str()];
        match keys {
            Some(k) => {
                let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                self.db_keys.with_label_values(&labels).set(n(k.keys));
                self.db_keys_expiring
                    .with_label_values(&labels)
                    .set(n(k.expires));
            }
            None => {
                let _ = self.db_keys.remove_label_values(&labels);
                let _ = self.db_keys_expiring.remove_label_values(&labels);
            }
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
        for (c, on) in crate::redis::capability::enabled() {
            self.collectors
                .with_label_values(&[c.as_str()])
                .set(i64::from(on));
        }
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

/// How a Redis Cluster figure is read from a look.
type ClusterFigure = fn(&crate::redis::cluster::View) -> i64;

/// The Redis Cluster gauges: name, help, and how each is read.
const CLUSTER_FIGURES: [(&str, &str, ClusterFigure); 7] = [
    (
        "redis_cluster_state",
        "CLUSTER INFO cluster_state: 1 ok, 0 fail.",
        |v| i64::from(v.state == "ok"),
    ),
    (
        "redis_cluster_slots_assigned",
        "CLUSTER INFO cluster_slots_assigned.",
        |v| i64::from(v.slots_assigned),
    ),
    (
        "redis_cluster_slots_ok",
        "CLUSTER INFO cluster_slots_ok.",
        |v| i64::from(v.slots_ok),
    ),
    (
        "redis_cluster_slots_pfail",
        "CLUSTER INFO cluster_slots_pfail.",
        |v| i64::from(v.slots_pfail),
    ),
    (
        "redis_cluster_slots_fail",
        "CLUSTER INFO cluster_slots_fail.",
        |v| i64::from(v.slots_fail),
    ),
    (
        "redis_cluster_known_nodes",
        "CLUSTER INFO cluster_known_nodes.",
        |v| i64::from(v.known_nodes),
    ),
    (
        "redis_cluster_nodes_unreachable",
        "Cluster nodes that did not answer the sidecar's PING.",
        |v| v.nodes.iter().filter(|n| n.latency_ms.is_none()).count() as i64,
    ),
];

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
mod tests;
