//! OTLP metrics push: every `OTEL_METRIC_EXPORT_INTERVAL`, the exposition `/metrics` last
//! rendered is read back into OTLP ([`crate::telemetry::convert`]) and sent, over
//! HTTP/protobuf (a POST per request on a fresh connection, https with the built-in roots
//! plus `SSL_CERT_FILE`) or gRPC (one channel, reconnected when needed).
//!
//! Bounded and never in the way: one task does it all, a request waits at most the OTLP
//! timeout, and a push stops at its first failed request. Counters are cumulative, so a
//! push that is lost loses no data, only a point in time: nothing is queued or retried.
//! A push that cannot start on time (the previous one still waiting on a slow collector)
//! is skipped and counted `dropped`; a failed request `failed`, and warned about at most
//! once a minute. A large exposition goes in requests of at most `MAX_POINTS` points, each
//! encoded when the previous one is sent, so memory holds one request at a time.

use std::sync::LazyLock;
use std::time::SystemTime;

use hyper::body::Bytes;
use prometheus::{IntCounterVec, Opts};
use prost::Message;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::{MetricsPush, OtlpProtocol};
use crate::notify::deliver;
use crate::telemetry::convert::{Families, points};
use crate::telemetry::otel::Limiter;
use crate::telemetry::otlp::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse, InstrumentationScope, KeyValue,
    Metric, Resource, ResourceMetrics, ScopeMetrics,
};

/// Data points per request at most.
pub const MAX_POINTS: usize = 2000;
const GRPC_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// `sidecar_otel_metric_exports_total{outcome}`: pushes `sent`, requests `failed`, pushes
/// `dropped` (not started on time).
pub static EXPORTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "sidecar_otel_metric_exports_total",
            "OTLP metric pushes: sent (every request taken), failed (a request refused or unanswered; the push stops there), dropped (not started on time: the previous push was still waiting).",
        ),
        &["outcome"],
    )
    .expect("a valid metric")
});

static FAILURES: Limiter = Limiter::new();

/// How requests reach the collector.
enum Transport {
    Http {
        url: url::Url,
        client: deliver::Client,
    },
    Grpc {
        grpc: tonic::client::Grpc<tonic::transport::Channel>,
        metadata: tonic::metadata::MetadataMap,
    },
}

/// The push: its transport, the resource every request carries, and when counting began.
pub struct Pusher {
    config: MetricsPush,
    transport: Transport,
    resource: Resource,
    start_ns: u64,
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Pusher {
    /// Builds the transport (no connection yet). Must run inside the runtime.
    pub fn new(config: &MetricsPush) -> Result<Pusher, String> {
        let transport = match config.protocol {
            OtlpProtocol::HttpProtobuf => Transport::Http {
                url: url::Url::parse(&config.endpoint)
                    .map_err(|e| format!("the metrics endpoint is not a URL: {e}"))?,
                client: deliver::Client::new(&config.roots),
            },
            OtlpProtocol::Grpc => {
                let mut endpoint = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
                    .map_err(|e| format!("the metrics endpoint is not a gRPC URI: {e}"))?
                    .connect_timeout(config.timeout)
                    .timeout(config.timeout);
                if config.endpoint.starts_with("https://") {
                    endpoint = endpoint
                        .tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots())
                        .map_err(|e| format!("TLS for the metrics endpoint: {e}"))?;
                }
                let mut headers = hyper::HeaderMap::new();
                for (k, v) in &config.headers {
                    let name = hyper::header::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| format!("the header name {k} is not valid gRPC metadata"))?;
                    let value = hyper::header::HeaderValue::from_str(v.expose()).map_err(|_| {
                        format!("the value of header {k} is not valid gRPC metadata")
                    })?;
                    headers.insert(name, value);
                }
                Transport::Grpc {
                    grpc: tonic::client::Grpc::new(endpoint.connect_lazy()),
                    metadata: tonic::metadata::MetadataMap::from_headers(headers),
                }
            }
        };
        Ok(Pusher {
            config: config.clone(),
            transport,
            resource: Resource {
                attributes: resource(&config.service_name, &config.resource),
            },
            start_ns: unix_nanos(SystemTime::now()),
        })
    }

    /// Pushes `exposition()` every interval, for ever.
    pub async fn run(mut self, exposition: impl Fn() -> Bytes) {
        let interval = self.config.interval;
        let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut failing = false;
        loop {
            tick.tick().await;
            let started = Instant::now();
            let body = exposition();
            match self.push(&body).await {
                Ok(()) => {
                    EXPORTS.with_label_values(&["sent"]).inc();
                    if std::mem::take(&mut failing) {
                        tracing::info!("pushing metrics over OTLP works again");
                    }
                }
                Err(problem) => {
                    failing = true;
                    EXPORTS.with_label_values(&["failed"]).inc();
                    if FAILURES.allow() {
                        tracing::warn!(
                            "pushing metrics over OTLP failed: {problem}; the sidecar goes on, /metrics is unaffected (logged at most once a minute, counted in sidecar_otel_metric_exports_total)",
                        );
                    }
                }
            }
            let missed = started.elapsed().as_nanos() / interval.as_nanos().max(1);
            if missed > 0 {
                EXPORTS
                    .with_label_values(&["dropped"])
                    .inc_by(u64::try_from(missed).unwrap_or(u64::MAX));
            }
        }
    }

    /// Sends one exposition, in requests of at most `MAX_POINTS` points.
    pub async fn push(&mut self, body: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(body).map_err(|_| "the exposition is not UTF-8")?;
        let now = unix_nanos(SystemTime::now());
        let mut families = Families::new(text, self.start_ns, now);
        let mut batch = Vec::new();
        let mut count = 0;
        for metric in families.by_ref() {
            count += points(&metric);
            batch.push(metric);
            if count >= MAX_POINTS {
                self.send(std::mem::take(&mut batch)).await?;
                count = 0;
            }
        }
        if families.skipped > 0 {
            tracing::debug!(
                lines = families.skipped,
                "lines of the exposition not pushed"
            );
        }
        if !batch.is_empty() {
            self.send(batch).await?;
        }
        Ok(())
    }

    async fn send(&mut self, metrics: Vec<Metric>) -> Result<(), String> {
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: env!("CARGO_PKG_NAME").to_string(),
                        version: env!("CARGO_PKG_VERSION").to_string(),
                    }),
                    metrics,
                }],
            }],
        };
        let timeout = self.config.timeout;
        let response =
            match &mut self.transport {
                Transport::Http { url, client } => {
                    let body = request.encode_to_vec();
                    drop(request);
                    let answer = client
                        .send(&deliver::Post {
                            url,
                            content_type: "application/x-protobuf",
                            headers: &self.config.headers,
                            body: &body,
                            timeout,
                        })
                        .await?;
                    if !answer.ok() {
                        return Err(format!(
                            "{} answered {} {}",
                            deliver::host_port(url),
                            answer.status,
                            answer.body
                        ));
                    }
                    None
                }
                Transport::Grpc { grpc, metadata } => {
                    let mut req = tonic::Request::new(request);
                    *req.metadata_mut() = metadata.clone();
                    let call = async {
                        grpc.ready()
                            .await
                            .map_err(|e| format!("the collector is not reachable: {e}"))?;
                        let codec = tonic_prost::ProstCodec::<
                            ExportMetricsServiceRequest,
                            ExportMetricsServiceResponse,
                        >::default();
                        let path = tonic::codegen::http::uri::PathAndQuery::from_static(GRPC_PATH);
                        grpc.unary(req, path, codec)
                            .await
                            .map(tonic::Response::into_inner)
                            .map_err(|s| {
                                format!("the collector answered {:?}: {}", s.code(), s.message())
                            })
                    };
                    Some(tokio::time::timeout(timeout, call).await.map_err(|_| {
                        format!("no answer within {}", crate::text::show(timeout))
                    })??)
                }
            };
        if let Some(partial) = response.and_then(|r| r.partial_success)
            && partial.rejected_data_points > 0
            && FAILURES.allow()
        {
            tracing::warn!(
                rejected = partial.rejected_data_points,
                "the collector rejected some metric points: {}",
                crate::text::cut_at(&partial.error_message, 300)
            );
        }
        Ok(())
    }
}

/// The resource of every export, traces' and metrics': `service.name`, `service.version`,
/// `service.instance.id` (this process's, unless `OTEL_RESOURCE_ATTRIBUTES` names one) and
/// the other attributes.
pub fn resource(service_name: &str, attributes: &[(String, String)]) -> Vec<KeyValue> {
    resource_pairs(service_name, attributes)
        .into_iter()
        .map(|(k, v)| KeyValue::new(k, v))
        .collect()
}

/// The resource's attributes as pairs, for the traces' SDK and the push alike.
pub fn resource_pairs(
    service_name: &str,
    attributes: &[(String, String)],
) -> Vec<(String, String)> {
    let mut out = vec![
        ("service.name".to_string(), service_name.to_string()),
        (
            "service.version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ];
    if !attributes.iter().any(|(k, _)| k == "service.instance.id") {
        out.push((
            "service.instance.id".to_string(),
            super::INSTANCE_ID.clone(),
        ));
    }
    out.extend(attributes.iter().cloned());
    out
}
