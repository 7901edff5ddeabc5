//! OTLP traces, received by collectors the tests run (HTTP/protobuf and gRPC, decoding the
//! OTLP protobuf): probe spans with the database semantic conventions, an error span while
//! Redis is frozen, no password in the bytes, nothing sent when disabled, and a dead or
//! hung collector that costs the sidecar nothing.

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use support::otlp::{Collector, Protocol, Received};
use support::{FAST, Redis, Sidecar, sample, wait_for};

const PASSWORD: &str = "Otel-pw-4f3e2d1c";

/// Every span received, with its resource's `service.name`.
fn spans(received: &Received) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    for r in received.all().iter().filter(|r| r.is_traces()) {
        let req = ExportTraceServiceRequest::decode(r.body.as_slice()).expect("OTLP protobuf");
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    out.push((service.clone(), span));
                }
            }
        }
    }
    out
}

fn text(v: &Any) -> Option<String> {
    match v {
        Any::StringValue(s) => Some(s.clone()),
        Any::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
}

fn env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = FAST.to_vec();
    v.extend_from_slice(extra);
    v
}

/// Waits for a span matching `ok`.
fn wait_span(received: &Received, what: &str, ok: impl Fn(&Span) -> bool) -> (String, Span) {
    wait_for(what, Duration::from_secs(20), || {
        spans(received).into_iter().find(|(_, s)| ok(s))
    })
}

fn probe_span_checks(received: &Received, redis: &Redis) {
    let (service, probe) = wait_span(received, "a probe redis span", |s| s.name == "probe redis");
    assert_eq!(service, "sidecar-under-test");
    assert_eq!(attr(&probe, "check").as_deref(), Some("redis:cache"));
    let spans = spans(received);
    let child = |name: &str, op: &str| {
        spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| {
                s.name == name
                    && s.parent_span_id == probe.span_id
                    && attr(s, "db.operation.name").as_deref() == Some(op)
            })
            .unwrap_or_else(|| {
                let names: Vec<_> = spans
                    .iter()
                    .map(|(_, s)| (&s.name, attr(s, "db.operation.name")))
                    .collect();
                panic!("no {name} child of the probe span among {names:?}")
            })
            .clone()
    };
    let ping = child("PING", "PING");
    assert_eq!(ping.trace_id, probe.trace_id);
    assert_eq!(attr(&ping, "db.system.name").as_deref(), Some("redis"));
    assert_eq!(attr(&ping, "db.namespace").as_deref(), Some("0"));
    assert_eq!(attr(&ping, "server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(attr(&ping, "server.port"), Some(redis.port.to_string()));
    let info = child("PIPELINE", "PIPELINE");
    assert_eq!(attr(&info, "db.operation.batch.size").as_deref(), Some("7"));
    // The Celery check's probe and its depths pipeline too.
    let (_, celery) = wait_span(received, "a probe celery span", |s| {
        s.name == "probe celery"
    });
    assert_eq!(attr(&celery, "check").as_deref(), Some("celery"));
    wait_span(received, "the event subscription's span", |s| {
        attr(s, "db.operation.name").as_deref() == Some("PSUBSCRIBE")
    });
}

#[test]
fn http_protobuf_carries_probe_spans_and_an_error_span_while_frozen() {
    let redis = Redis::start(&["--requirepass", PASSWORD]);
    let url = format!("redis://default:{PASSWORD}@127.0.0.1:{}/0", redis.port);
    let collector = Collector::start(Protocol::Http);
    let (endpoint, received) = (collector.url(), collector.received.clone());
    let sidecar = Sidecar::start(&env(&[
        ("REDIS_URL", url.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "sidecar-under-test"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=ignored,deployment.environment=test",
        ),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=Key-9a8b7c%2C6d"),
        ("RUST_LOG", "debug"),
    ]));
    probe_span_checks(&received, &redis);
    // The header reaches the collector, decoded once; nothing else shows it.
    let traces: Vec<_> = received
        .all()
        .into_iter()
        .filter(|r| r.is_traces())
        .collect();
    let heads: String = traces.iter().map(|r| r.head.to_ascii_lowercase()).collect();
    assert!(heads.contains("x-api-key: key-9a8b7c,6d"), "{heads}");
    let req = ExportTraceServiceRequest::decode(traces[0].body.as_slice()).unwrap();
    let attrs = &req.resource_spans[0].resource.as_ref().unwrap().attributes;
    let resource = |k: &str| {
        attrs
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
    };
    assert_eq!(resource("deployment.environment").as_deref(), Some("test"));
    assert_eq!(
        resource("service.version").as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );

    // A cut subscription comes back; the reconnection is an event of its PSUBSCRIBE span.
    redis.cli(Some(PASSWORD), &["CLIENT", "KILL", "TYPE", "pubsub"]);
    let (_, resubscribed) = wait_span(&received, "a PSUBSCRIBE span with a reconnect event", |s| {
        attr(s, "db.operation.name").as_deref() == Some("PSUBSCRIBE")
            && s.events.iter().any(|e| e.name == "pubsub.reconnect")
    });
    assert_eq!(
        resubscribed.status.as_ref().map_or(0, |st| st.code),
        0,
        "it worked"
    );

    redis.freeze();
    let (_, failed) = wait_span(&received, "an error span while Redis is frozen", |s| {
        s.name == "probe redis" && s.status.as_ref().is_some_and(|st| st.code == 2)
    });
    let status = failed.status.clone().unwrap();
    assert!(status.message.starts_with("timeout:"), "{}", status.message);
    assert_eq!(attr(&failed, "error.type").as_deref(), Some("timeout"));
    // The command the timeout cut short is an error too, under that probe.
    let (_, cut) = wait_span(&received, "the cut-short PING", |s| {
        s.parent_span_id == failed.span_id
            && attr(s, "db.operation.name").as_deref() == Some("PING")
    });
    assert_eq!(cut.status.as_ref().map(|st| st.code), Some(2));
    assert_eq!(attr(&cut, "error.type").as_deref(), Some("timeout"));
    redis.thaw();

    let bytes = received.bytes();
    assert!(!bytes.is_empty());
    assert!(
        !bytes
            .windows(PASSWORD.len())
            .any(|w| w == PASSWORD.as_bytes()),
        "the password is in the exported bytes"
    );
    let m = sidecar.get("/metrics").body;
    assert!(sample(&m, "sidecar_otel_spans_exported_total").unwrap() > 0.0);
    let logs = sidecar.logs();
    assert!(
        !logs.contains("Key-9a8b7c") && !logs.contains(PASSWORD),
        "a secret in the logs"
    );
}

#[test]
fn grpc_carries_the_same_spans() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let collector = Collector::start(Protocol::Grpc);
    let (endpoint, received) = (collector.url(), collector.received.clone());
    let _sidecar = Sidecar::start(&env(&[
        ("REDIS_URL", url.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "sidecar-under-test"),
    ]));
    probe_span_checks(&received, &redis);
}

#[test]
fn json_log_lines_inside_a_probe_carry_its_trace_ids() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let collector = Collector::start(Protocol::Http);
    let (endpoint, received) = (
        format!("{}/v1/traces", collector.url()),
        collector.received.clone(),
    );
    let sidecar = Sidecar::start(&env(&[
        ("REDIS_URL", url.as_str()),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.as_str()),
        ("SIDECAR_LOG_FORMAT", "json"),
        ("RUST_LOG", "info,redis_celery_sidecar=debug"),
    ]));
    let line = wait_for(
        "a probe's log line with ids",
        Duration::from_secs(15),
        || {
            sidecar.logs().lines().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["message"] == "probe finished"
                    && v["check"] == "redis:cache"
                    && v["trace_id"].is_string())
                .then_some(v)
            })
        },
    );
    assert_eq!(line["span"], "probe");
    let trace_id = line["trace_id"].as_str().unwrap().to_string();
    let span_id = line["span_id"].as_str().unwrap().to_string();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    wait_span(&received, "the span of that log line", |s| {
        hex(&s.trace_id) == trace_id && hex(&s.span_id) == span_id && s.name == "probe redis"
    });
}

#[test]
fn disabled_or_without_endpoint_nothing_is_sent() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let collector = Collector::start(Protocol::Http);
    let (endpoint, received) = (collector.url(), collector.received.clone());
    let disabled = Sidecar::start(&env(&[
        ("REDIS_URL", url.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SDK_DISABLED", "true"),
    ]));
    // Several probe intervals and export batches (2 s) go by.
    disabled.wait_status("/readyz", 200);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        received.count(|_| true),
        0,
        "OTEL_SDK_DISABLED=true sent something"
    );
    let m = disabled.get("/metrics").body;
    assert_eq!(sample(&m, "sidecar_otel_spans_exported_total"), Some(0.0));
    // Sampled out: spans are made but none is exported.
    let sampled_out = Sidecar::start(&env(&[
        ("REDIS_URL", url.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_TRACES_SAMPLER", "always_off"),
    ]));
    sampled_out.wait_status("/readyz", 200);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        received.count(|r| r.is_traces()),
        0,
        "always_off sent spans"
    );
    // No endpoint: no exporter, so no span is ever queued, exported or dropped.
    let none = Sidecar::start(&env(&[("REDIS_URL", url.as_str())]));
    none.wait_status("/readyz", 200);
    std::thread::sleep(Duration::from_secs(3));
    let m = none.get("/metrics").body;
    for series in ["exported", "dropped"] {
        let name = format!("sidecar_otel_spans_{series}_total");
        assert_eq!(sample(&m, &name), Some(0.0), "{name}");
    }
    let out = support::run(
        &["config"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("traces             not exported"));
    let out = support::run(&["config"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("traces             not exported"));
}

/// A collector that accepts connections and never answers.
fn hung_collector() -> (SocketAddr, Arc<Mutex<Vec<TcpStream>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            keep.lock().unwrap().push(stream);
        }
    });
    (addr, held)
}

fn costs_nothing(endpoint: &str, protocol: &str) {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let mut sidecar = Sidecar::start(&env(&[
        ("REDIS_URL", url.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
    ]));
    sidecar.wait_status("/readyz", 200);
    let stamp = |m: &str| {
        sample(
            m,
            "sidecar_last_probe_timestamp_seconds{check=\"redis:cache\"}",
        )
        .unwrap_or(0.0)
    };
    let m = wait_for("a failed export", Duration::from_secs(15), || {
        let m = sidecar.get("/metrics").body;
        (sample(&m, "sidecar_otel_export_failures_total") >= Some(1.0)).then_some(m)
    });
    let first = stamp(&m);
    // Endpoints answer at once and probes keep their 1 s interval meanwhile.
    for _ in 0..6 {
        for path in ["/metrics", "/healthz", "/readyz"] {
            let started = Instant::now();
            let r = sidecar.get(path);
            assert_eq!(r.status, 200, "{path}");
            assert!(
                started.elapsed() < Duration::from_millis(800),
                "{path} took {:?}",
                started.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let m = sidecar.get("/metrics").body;
    assert!(
        stamp(&m) - first >= 1.5,
        "probes slowed down: {first} then {}",
        stamp(&m)
    );
    assert!(sample(&m, "sidecar_otel_export_failures_total").unwrap() >= 1.0);
    let (status, took) = sidecar.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    let logs = sidecar.logs();
    assert_eq!(
        logs.matches("exporting spans to the OTLP collector failed")
            .count(),
        1,
        "warned at most once a minute:\n{logs}"
    );
}

#[test]
fn a_collector_that_is_down_costs_nothing() {
    let port = support::free_port();
    costs_nothing(&format!("http://127.0.0.1:{port}"), "http/protobuf");
    costs_nothing(&format!("http://127.0.0.1:{port}"), "grpc");
}

#[test]
fn a_collector_that_hangs_costs_nothing() {
    let (addr, _held) = hung_collector();
    costs_nothing(&format!("http://{addr}"), "http/protobuf");
    costs_nothing(&format!("http://{addr}"), "grpc");
}
