//! OpenTelemetry traces: the tracer provider, a bounded batch processor that exports on
//! the sidecar's runtime and never makes a probe wait, and the span helpers that follow
//! the database semantic conventions.
//!
//! Why not the SDK's own `BatchSpanProcessor`: it exports from a thread of its own, where
//! the async HTTP client panics with "no reactor running" (opentelemetry-rust #3125,
//! #2673), and it does not tell how many spans it dropped. Here `on_end` only `try_send`s
//! into a bounded channel (a full channel drops the span and counts it), and one task on
//! the runtime batches and exports with the OTLP exporter (gRPC through tonic, or
//! HTTP/protobuf through the sidecar's own client, plain or https), each export bounded by
//! the OTLP timeout.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler as SdkSampler, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use hyper::body::Bytes;

use crate::config::{OtelConfig, OtlpProtocol, Sampler, Secret};
use crate::notify::deliver;

/// Finished spans waiting for export at most; beyond, spans are dropped and counted.
const QUEUE: usize = 2048;
/// Spans per export at most, and how long a span waits for its batch at most.
const BATCH: usize = 512;
const BATCH_EVERY: Duration = Duration::from_secs(2);
/// A failing collector is reported at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The export's own figures, registered in every `Metrics` registry.
pub struct OtelStats {
    pub exported: IntCounter,
    pub dropped: IntCounter,
    pub failed: IntCounter,
}

pub static STATS: LazyLock<OtelStats> = LazyLock::new(|| OtelStats {
    exported: IntCounter::new(
        "sidecar_otel_spans_exported_total",
        "Spans the collector accepted.",
    )
    .expect("a valid metric"),
    dropped: IntCounter::new(
        "sidecar_otel_spans_dropped_total",
        "Spans dropped: export queue full (collector slow or down), or a failed export's batch.",
    )
    .expect("a valid metric"),
    failed: IntCounter::new(
        "sidecar_otel_export_failures_total",
        "Exports that failed or timed out.",
    )
    .expect("a valid metric"),
});

/// The running export: shut it down to flush what is pending.
pub struct Exporting {
    provider: SdkTracerProvider,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
}

/// Builds the provider and starts the export task. Must run inside the runtime (the tonic
/// channel and the export task live there).
pub fn start(config: &OtelConfig) -> Result<(Exporting, opentelemetry_sdk::trace::Tracer), String> {
    let exporter = exporter(config)?;
    // The same resource as the metrics push's.
    let resource = crate::telemetry::push::resource_pairs(&config.service_name, &config.resource)
        .into_iter()
        .map(|(k, v)| KeyValue::new(k, v));
    let resource = Resource::builder_empty().with_attributes(resource).build();
    let (tx, rx) = mpsc::channel(QUEUE);
    let (stop_tx, stop_rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel();
    let mut exporter = exporter;
    exporter.set_resource(&resource);
    tokio::spawn(export_loop(exporter, rx, stop_rx, done_tx, config.timeout));
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(sampler(config.sampler))
        .with_span_processor(Bounded { tx })
        .build();
    let tracer = provider.tracer(env!("CARGO_PKG_NAME"));
    Ok((
        Exporting {
            provider,
            stop: Some(stop_tx),
            done: Some(done_rx),
        },
        tracer,
    ))
}

impl Exporting {
    /// Exports what is pending, waiting at most `limit`; the process exits either way.
    pub async fn shutdown(mut self, limit: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take()
            && tokio::time::timeout(limit, done).await.is_err()
        {
            tracing::warn!("pending spans were not all exported within {limit:?} at shutdown");
        }
        let _ = self
            .provider
            .shutdown_with_timeout(Duration::from_millis(10));
    }
}

fn sampler(s: Sampler) -> SdkSampler {
    match s {
        Sampler::AlwaysOn => SdkSampler::AlwaysOn,
        Sampler::AlwaysOff => SdkSampler::AlwaysOff,
        Sampler::Ratio(r) => SdkSampler::TraceIdRatioBased(r),
        Sampler::ParentBasedAlwaysOn => SdkSampler::ParentBased(Box::new(SdkSampler::AlwaysOn)),
        Sampler::ParentBasedAlwaysOff => SdkSampler::ParentBased(Box::new(SdkSampler::AlwaysOff)),
        Sampler::ParentBasedRatio(r) => {
            SdkSampler::ParentBased(Box::new(SdkSampler::TraceIdRatioBased(r)))
        }
    }
}

fn exporter(config: &OtelConfig) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let built = match config.protocol {
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(config.endpoint.clone())
            .with_timeout(config.timeout)
            .with_http_client(Http {
                client: deliver::Client::new(&config.roots),
                headers: config.headers.clone(),
                timeout: config.timeout,
            })
            .build(),
        OtlpProtocol::Grpc => {
            let metadata = grpc_metadata(&config.headers)?;
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.timeout)
                .with_metadata(metadata);
            if config.endpoint.starts_with("https://") {
                builder = builder.with_tls_config(
                    opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                        .with_webpki_roots(),
                );
            }
            builder.build()
        }
    };
    built.map_err(|e| format!("cannot build the OTLP exporter: {e}"))
}

/// The OTLP headers (API keys) as gRPC metadata, for traces and metrics alike.
pub fn grpc_metadata(headers: &[(String, Secret)]) -> Result<tonic::metadata::MetadataMap, String> {
    let mut map = hyper::HeaderMap::new();
    for (k, v) in headers {
        let name = hyper::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("the header name {k} is not valid gRPC metadata"))?;
        let value = hyper::header::HeaderValue::from_str(v.expose())
            .map_err(|_| format!("the value of header {k} is not valid gRPC metadata"))?;
        map.insert(name, value);
    }
    Ok(tonic::metadata::MetadataMap::from_headers(map))
}

/// The HTTP client spans are sent with: the notifications' and the metrics push's
/// ([`deliver::Client`]), so that https takes the built-in roots plus `SSL_CERT_FILE`, and
/// the headers (API keys) are added here, never handed to the exporter.
#[derive(Debug)]
struct Http {
    client: deliver::Client,
    headers: Vec<(String, Secret)>,
    timeout: Duration,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Http {
    async fn send_bytes(
        &self,
        request: hyper::Request<Bytes>,
    ) -> Result<hyper::Response<Bytes>, opentelemetry_http::HttpError> {
        let url = url::Url::parse(&request.uri().to_string())?;
        let content_type = request
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/x-protobuf");
        let answer = self
            .client
            .send(&deliver::Post {
                url: &url,
                content_type,
                headers: &self.headers,
                body: request.body(),
                timeout: self.timeout,
            })
            .await?;
        let mut response = hyper::Response::new(Bytes::from(answer.body));
        *response.status_mut() = hyper::StatusCode::from_u16(answer.status)?;
        Ok(response)
    }
}

/// The span processor: hands finished spans to the export task without ever waiting.
#[derive(Debug)]
struct Bounded {
    tx: mpsc::Sender<SpanData>,
}

/// Logs at most once a minute, each kind of trouble on its own clock.
pub struct Limiter(AtomicU64);

static CLOCK: LazyLock<Instant> = LazyLock::new(Instant::now);
static DROPS: Limiter = Limiter::new();
static FAILURES: Limiter = Limiter::new();

impl Default for Limiter {
    fn default() -> Limiter {
        Limiter::new()
    }
}

impl Limiter {
    pub const fn new() -> Limiter {
        Limiter(AtomicU64::new(u64::MAX))
    }

    /// True at most once a minute.
    pub fn allow(&self) -> bool {
        let now = CLOCK.elapsed().as_secs();
        let last = self.0.load(Ordering::Relaxed);
        if last != u64::MAX && now.saturating_sub(last) < WARN_EVERY.as_secs() {
            return false;
        }
        self.0
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

impl SpanProcessor for Bounded {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        match self.tx.try_send(span) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                STATS.dropped.inc();
                if DROPS.allow() {
                    tracing::warn!(
                        "spans dropped: the export queue ({QUEUE}) is full; the collector is slow or unreachable (logged at most once a minute, counted in sidecar_otel_spans_dropped_total)"
                    );
                }
            }
            // The export has stopped (shutdown): nothing more is sent.
            Err(mpsc::error::TrySendError::Closed(_)) => STATS.dropped.inc(),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Batches spans and exports them, one export at a time, each bounded by `timeout`. On
/// `stop`, exports what is queued and signals `done`.
async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<SpanData>,
    mut stop: oneshot::Receiver<()>,
    done: oneshot::Sender<()>,
    timeout: Duration,
) {
    let mut batch = Vec::new();
    let mut tick = tokio::time::interval(BATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            span = rx.recv() => match span {
                Some(span) => {
                    batch.push(span);
                    if batch.len() >= BATCH {
                        export(&exporter, &mut batch, timeout).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                if !batch.is_empty() {
                    export(&exporter, &mut batch, timeout).await;
                }
            }
            _ = &mut stop => break,
        }
    }
    while let Ok(span) = rx.try_recv() {
        batch.push(span);
        if batch.len() >= BATCH {
            export(&exporter, &mut batch, timeout).await;
        }
    }
    if !batch.is_empty() {
        export(&exporter, &mut batch, timeout).await;
    }
    let _ = done.send(());
}

async fn export(
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: &mut Vec<SpanData>,
    timeout: Duration,
) {
    let spans = std::mem::take(batch);
    let count = spans.len() as u64;
    let result = tokio::time::timeout(timeout, exporter.export(spans)).await;
    let problem = match result {
        Ok(Ok(())) => {
            STATS.exported.inc_by(count);
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {timeout:?}"),
    };
    STATS.failed.inc();
    STATS.dropped.inc_by(count);
    if FAILURES.allow() {
        tracing::warn!(
            spans = count,
            "exporting spans to the OTLP collector failed: {}; the sidecar goes on (logged at most once a minute)",
            problem.chars().take(300).collect::<String>()
        );
    }
}
