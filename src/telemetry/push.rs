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
    ExportMetricsServiceResponse, InstrumentationScope, KeyValue, Resource,
};

/// An exposition at least this long has the heap's free pages handed back after its push.
const TRIM_FROM: usize = 64 * 1024;
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
    /// `ResourceMetrics.resource` and `ScopeMetrics.scope`, encoded once with their keys.
    resource: Vec<u8>,
    scope: Vec<u8>,
    start_ns: u64,
}

/// `ScopeMetrics.metrics`.
const SCOPE_METRICS_METRICS: u32 = 2;

/// An encoded `ExportMetricsServiceRequest`, sent as it is (over gRPC too: its
/// `prost::Message` writes the bytes).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Raw(pub Vec<u8>);

impl prost::Message for Raw {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Never decoded: requests only go out.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// A message as field `tag` of its parent: key, length, bytes.
fn encoded(tag: u32, m: &impl Message) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::message::encode(tag, m, &mut out);
    out
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
                Transport::Grpc {
                    grpc: tonic::client::Grpc::new(endpoint.connect_lazy()),
                    metadata: crate::telemetry::otel::grpc_metadata(&config.headers)?,
                }
            }
        };
        let resource = Resource {
            attributes: resource(&config.service_name, &config.resource),
        };
        let scope = InstrumentationScope {
            name: env!("CARGO_PKG_NAME").to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        Ok(Pusher {
            config: config.clone(),
            transport,
            resource: encoded(1, &resource),
            scope: encoded(1, &scope),
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
            // Only a large exposition leaves enough behind to be worth a walk of the heap.
            let large = body.len() >= TRIM_FROM;
            drop(body);
            if large {
                give_back_freed_memory();
            }
            let missed = started.elapsed().as_nanos() / interval.as_nanos().max(1);
            if missed > 0 {
                EXPORTS
                    .with_label_values(&["dropped"])
                    .inc_by(u64::try_from(missed).unwrap_or(u64::MAX));
            }
        }
    }

    /// Sends one exposition, in requests of at most `MAX_POINTS` points. Each family is
    /// encoded as soon as it is read and its structure dropped: what is held is the request's
    /// bytes and one family.
    pub async fn push(&mut self, body: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(body).map_err(|_| "the exposition is not UTF-8")?;
        let now = unix_nanos(SystemTime::now());
        let mut families = Families::new(text, self.start_ns, now);
        let mut metrics = Vec::new();
        let mut count = 0;
        for metric in families.by_ref() {
            count += points(&metric);
            prost::encoding::message::encode(SCOPE_METRICS_METRICS, &metric, &mut metrics);
            drop(metric);
            if count >= MAX_POINTS {
                let request = self.envelope(&metrics);
                metrics.clear();
                count = 0;
                self.send(request).await?;
            }
        }
        if families.skipped > 0 {
            tracing::debug!(
                lines = families.skipped,
                "lines of the exposition not pushed"
            );
        }
        if !metrics.is_empty() {
            let request = self.envelope(&metrics);
            drop(metrics);
            self.send(request).await?;
        }
        Ok(())
    }

    /// `ExportMetricsServiceRequest { resource_metrics: [ResourceMetrics { resource,
    /// scope_metrics: [ScopeMetrics { scope, metrics }] }] }` around the encoded metrics
    /// (each a field 2 of `ScopeMetrics`), written once, lengths first.
    fn envelope(&self, metrics: &[u8]) -> Raw {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
        let scope_len = self.scope.len() + metrics.len();
        let resource_metrics_len =
            self.resource.len() + key_len(2) + encoded_len_varint(scope_len as u64) + scope_len;
        let mut out = Vec::with_capacity(
            key_len(1) + encoded_len_varint(resource_metrics_len as u64) + resource_metrics_len,
        );
        // ExportMetricsServiceRequest.resource_metrics = 1
        encode_key(1, WireType::LengthDelimited, &mut out);
        encode_varint(resource_metrics_len as u64, &mut out);
        // ResourceMetrics.resource = 1, already encoded
        out.extend_from_slice(&self.resource);
        // ResourceMetrics.scope_metrics = 2
        encode_key(2, WireType::LengthDelimited, &mut out);
        encode_varint(scope_len as u64, &mut out);
        // ScopeMetrics.scope = 1, already encoded; then its metrics (field 2)
        out.extend_from_slice(&self.scope);
        out.extend_from_slice(metrics);
        Raw(out)
    }

    async fn send(&mut self, request: Raw) -> Result<(), String> {
        let timeout = self.config.timeout;
        let response =
            match &mut self.transport {
                Transport::Http { url, client } => {
                    let answer = client
                        .send(&deliver::Post {
                            url,
                            content_type: "application/x-protobuf",
                            headers: &self.config.headers,
                            body: &request.0,
                            timeout,
                        })
                        .await?;
                    drop(request);
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
                        let codec =
                            tonic_prost::ProstCodec::<Raw, ExportMetricsServiceResponse>::default();
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

/// A push reads a large exposition into many small blocks; freed, they would stay in the
/// heap's holes and count in RSS until reused. `malloc_trim` hands the free pages back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn give_back_freed_memory() {
    // SAFETY: malloc_trim only returns free memory to the system; it takes the allocator's
    // lock like any allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn give_back_freed_memory() {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::otlp::{Data, ExportMetricsServiceRequest, Value};

    /// The envelope written by hand decodes as the request it stands for.
    #[test]
    fn the_envelope_is_the_request_it_stands_for() {
        let config = MetricsPush {
            endpoint: "http://127.0.0.1:9/v1/metrics".into(),
            protocol: OtlpProtocol::HttpProtobuf,
            headers: Vec::new(),
            timeout: std::time::Duration::from_secs(1),
            interval: std::time::Duration::from_secs(60),
            service_name: "svc".into(),
            resource: vec![("team".into(), "a".into())],
            roots: Vec::new(),
        };
        let p = Pusher::new(&config).unwrap();
        let mut text = String::from("# HELP g A gauge.\n# TYPE g gauge\n");
        for i in 0..3 {
            text.push_str(&format!("g{{q=\"{i}\"}} {i}\n"));
        }
        let mut metrics = Vec::new();
        for m in Families::new(&text, 1, 2) {
            prost::encoding::message::encode(SCOPE_METRICS_METRICS, &m, &mut metrics);
        }
        let raw = p.envelope(&metrics);
        assert_eq!(raw.encoded_len(), raw.0.len());
        let req = ExportMetricsServiceRequest::decode(raw.0.as_slice()).unwrap();
        let rm = &req.resource_metrics[0];
        let attrs: Vec<(String, String)> = rm
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|kv| match kv.value.as_ref().and_then(|v| v.value.clone()) {
                Some(Value::StringValue(v)) => (kv.key.clone(), v),
                None => panic!(),
            })
            .collect();
        assert_eq!(attrs[0], ("service.name".to_string(), "svc".to_string()));
        assert!(attrs.contains(&("team".to_string(), "a".to_string())));
        let sm = &rm.scope_metrics[0];
        assert_eq!(sm.scope.as_ref().unwrap().name, "redis-celery-sidecar");
        let Some(Data::Gauge(g)) = &sm.metrics[0].data else {
            panic!()
        };
        assert_eq!(g.data_points.len(), 3);
    }
}
