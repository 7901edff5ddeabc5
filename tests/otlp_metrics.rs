//! OTLP metrics push, received by collectors the tests run (OTLP/HTTP and OTLP/gRPC) and
//! decoded with the `opentelemetry-proto` crate's definitions: every series `/metrics`
//! serves is in the push with the same value (the push and a scrape of the same rendering
//! compared series by series, histogram buckets included), each family of the right kind,
//! with the traces' resource; a collector killed and started again costs the sidecar
//! nothing and the push resumes; no secret in any output.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as Number;
use prost::Message;
use support::otlp::{Collector, Protocol, Request};
use support::{Redis, Sidecar, sample, wait_for};

const PASSWORD: &str = "Push-pw-51c0ffee";
const API_KEY: &str = "Push-key-7e57ab1e";
/// A queue name the text format must escape (quote, backslash) and a space.
const ODD_QUEUE: &str = "odd \"q\\1";

/// A series: its name and its labels, sorted; `le` written as Rust writes the f64.
type Key = (String, Vec<(String, String)>);

fn le(text: &str) -> String {
    match text.parse::<f64>() {
        Ok(v) if v.is_infinite() => "+Inf".to_string(),
        Ok(v) => format!("{v}"),
        Err(_) => panic!("le={text:?} is not a number"),
    }
}

/// Values compared bit for bit, NaN equal to NaN.
fn same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// A scrape, read here independently of the sidecar's own reader: every series and its
/// value, and every family's TYPE.
fn scraped(text: &str) -> (BTreeMap<Key, f64>, BTreeMap<String, String>) {
    let mut series = BTreeMap::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let mut chars = line.char_indices().peekable();
        let mut name = String::new();
        let mut labels = Vec::new();
        let mut rest = "";
        while let Some((i, c)) = chars.next() {
            match c {
                ' ' => {
                    rest = &line[i + 1..];
                    break;
                }
                '{' => {
                    // key="value", ... }
                    loop {
                        let mut key = String::new();
                        for (_, c) in chars.by_ref() {
                            if c == '=' {
                                break;
                            }
                            if c != ',' {
                                key.push(c);
                            }
                        }
                        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                        let mut value = String::new();
                        while let Some((_, c)) = chars.next() {
                            match c {
                                '"' => break,
                                '\\' => match chars.next().unwrap().1 {
                                    'n' => value.push('\n'),
                                    other => value.push(other),
                                },
                                c => value.push(c),
                            }
                        }
                        if key == "le" {
                            value = le(&value);
                        }
                        labels.push((key, value));
                        match chars.next().map(|(_, c)| c) {
                            Some(',') => continue,
                            Some('}') => break,
                            other => panic!("{other:?} after a label in {line}"),
                        }
                    }
                }
                c => name.push(c),
            }
        }
        if rest.is_empty() {
            rest = line[line.rfind(' ').unwrap() + 1..].trim();
        }
        let value: f64 = rest.trim().parse().unwrap_or_else(|_| panic!("{line}"));
        labels.sort();
        series.insert((name, labels), value);
    }
    (series, types)
}

fn attrs(kv: &[KeyValue]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = kv
        .iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Any::StringValue(s)) => s.clone(),
                other => panic!("{}: not a string: {other:?}", kv.key),
            };
            (kv.key.clone(), v)
        })
        .collect();
    out.sort();
    out
}

/// One pushed request: every series as the text format would name it, each family's kind
/// in the text format's words, and the resource's attributes.
struct Pushed {
    series: BTreeMap<Key, f64>,
    kinds: BTreeMap<String, String>,
    resource: Vec<(String, String)>,
}

fn pushed(body: &[u8]) -> Pushed {
    let req = ExportMetricsServiceRequest::decode(body).expect("OTLP metrics protobuf");
    let mut series = BTreeMap::new();
    let mut kinds = BTreeMap::new();
    assert_eq!(req.resource_metrics.len(), 1);
    let rm = &req.resource_metrics[0];
    let resource = attrs(&rm.resource.as_ref().unwrap().attributes);
    for sm in &rm.scope_metrics {
        assert_eq!(sm.scope.as_ref().unwrap().name, "redis-celery-sidecar");
        for m in &sm.metrics {
            let number =
                |p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| match p.value {
                    Some(Number::AsDouble(v)) => v,
                    Some(Number::AsInt(v)) => v as f64,
                    None => panic!("{}: a point without a value", m.name),
                };
            let kind = match m.data.as_ref().unwrap() {
                Data::Gauge(g) => {
                    for p in &g.data_points {
                        series.insert((m.name.clone(), attrs(&p.attributes)), number(p));
                    }
                    "gauge"
                }
                Data::Sum(s) => {
                    assert!(s.is_monotonic, "{}", m.name);
                    assert_eq!(s.aggregation_temporality, 2, "{}: cumulative", m.name);
                    for p in &s.data_points {
                        assert!(
                            p.start_time_unix_nano > 0
                                && p.start_time_unix_nano <= p.time_unix_nano
                        );
                        series.insert((m.name.clone(), attrs(&p.attributes)), number(p));
                    }
                    "counter"
                }
                Data::Histogram(h) => {
                    assert_eq!(h.aggregation_temporality, 2, "{}: cumulative", m.name);
                    for p in &h.data_points {
                        let labels = attrs(&p.attributes);
                        assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
                        let mut cumulative = 0;
                        for (i, n) in p.bucket_counts.iter().enumerate() {
                            cumulative += n;
                            let bound = p
                                .explicit_bounds
                                .get(i)
                                .map_or("+Inf".to_string(), |b| le(&b.to_string()));
                            let mut l = labels.clone();
                            l.push(("le".to_string(), bound));
                            l.sort();
                            series.insert((format!("{}_bucket", m.name), l), cumulative as f64);
                        }
                        series.insert((format!("{}_sum", m.name), labels.clone()), p.sum.unwrap());
                        series.insert((format!("{}_count", m.name), labels), p.count as f64);
                    }
                    "histogram"
                }
                other => panic!("{}: an unexpected kind {other:?}", m.name),
            };
            kinds.insert(m.name.clone(), kind.to_string());
        }
    }
    Pushed {
        series,
        kinds,
        resource,
    }
}

/// What differs between a push and a scrape, for the failure message.
fn differences(push: &BTreeMap<Key, f64>, scrape: &BTreeMap<Key, f64>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in push {
        match scrape.get(k) {
            Some(w) if same(*v, *w) => {}
            Some(w) => out.push(format!("{k:?}: pushed {v}, scraped {w}")),
            None => out.push(format!("{k:?}: pushed {v}, not scraped")),
        }
    }
    for k in scrape.keys().filter(|k| !push.contains_key(*k)) {
        out.push(format!("{k:?}: scraped, not pushed"));
    }
    out
}

fn metrics_requests(c: &Collector) -> Vec<Request> {
    c.received
        .all()
        .into_iter()
        .filter(|r| r.is_metrics())
        .collect()
}

/// A Redis with a password, used as Celery's broker with messages in two queues, one of
/// them with a name the text format must escape.
fn broker() -> (Redis, String) {
    let redis = Redis::start(&["--requirepass", PASSWORD]);
    for (queue, n) in [("celery", 3), (ODD_QUEUE, 2)] {
        for i in 0..n {
            redis.cli(
                Some(PASSWORD),
                &["LPUSH", queue, &format!("not a message {i}")],
            );
        }
    }
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}/0", redis.port);
    (redis, url)
}

fn parity(protocol: Protocol) {
    let (_redis, url) = broker();
    let collector = Collector::start(protocol);
    let endpoint = collector.url();
    let queues = format!("celery,{ODD_QUEUE}");
    let headers = format!("x-api-key={API_KEY}");
    let sidecar = Sidecar::start(&[
        ("CELERY_BROKER_URL", url.as_str()),
        ("SIDECAR_CELERY_QUEUES", queues.as_str()),
        ("SIDECAR_CELERY_MIN_WORKERS", "0"),
        // Slow probes: a rendering lasts long enough to be scraped many times.
        ("SIDECAR_PROBE_INTERVAL", "10s"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.name()),
        ("OTEL_EXPORTER_OTLP_HEADERS", headers.as_str()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "700"),
        ("OTEL_SERVICE_NAME", "push-under-test"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
        ("RUST_LOG", "trace"),
    ]);
    // The Celery check has probed: its queue series are on /metrics.
    sidecar.scrape_when("celery_queue_length{queue_name=\"celery\"}", 3.0);

    // Scrape every rendering while pushes arrive; then compare each push with them.
    let bodies: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
    let done = std::sync::atomic::AtomicBool::new(false);
    let (first, last) = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let r = sidecar.get("/metrics");
                assert_eq!(r.status, 200);
                bodies.lock().unwrap().insert(r.body);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let first = metrics_requests(&collector).len();
        let last = wait_for("five more pushes", Duration::from_secs(30), || {
            let n = metrics_requests(&collector).len();
            (n >= first + 5).then_some(n)
        });
        std::thread::sleep(Duration::from_millis(300));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (first, last)
    });
    let bodies = bodies.into_inner().unwrap();
    let scrapes: Vec<_> = bodies.iter().map(|b| scraped(b)).collect();
    let requests = metrics_requests(&collector);
    for (n, r) in requests[first..last].iter().enumerate() {
        let p = pushed(&r.body);
        let matched = scrapes
            .iter()
            .find(|(s, _)| differences(&p.series, s).is_empty());
        let Some((s, types)) = matched else {
            let closest = scrapes
                .iter()
                .map(|(s, _)| differences(&p.series, s))
                .min_by_key(Vec::len)
                .unwrap();
            panic!(
                "push {n} over {protocol:?} matches none of {} scrapes; closest differs in {closest:#?}",
                scrapes.len()
            );
        };
        assert!(s.len() > 50, "a real exposition: {} series", s.len());
        for (name, kind) in &p.kinds {
            assert_eq!(types.get(name), Some(kind), "{name}'s kind");
        }
        assert_eq!(p.kinds.len(), types.len(), "every family pushed");
        // The resource: the service's name and version, this process's id, the rest.
        let get = |k: &str| {
            p.resource
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("service.name"), Some("push-under-test"));
        assert_eq!(get("service.version"), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(get("deployment.environment"), Some("test"));
        assert_eq!(get("service.instance.id").map(str::len), Some(36));
    }
    // The label that needed escaping came through as it is.
    let p = pushed(&requests[last - 1].body);
    let odd = (
        "celery_queue_length".to_string(),
        vec![("queue_name".to_string(), ODD_QUEUE.to_string())],
    );
    assert_eq!(p.series.get(&odd), Some(&2.0));
    // Histograms keep their buckets: redis_ping_duration_seconds' fourteen bounds.
    let buckets = p
        .series
        .keys()
        .filter(|(name, l)| {
            name == "redis_ping_duration_seconds_bucket"
                && l.iter().any(|(k, v)| k == "role" && v == "broker")
        })
        .count();
    assert_eq!(buckets, 15, "14 bounds and +Inf");

    // The traces went to the same collector with the same resource.
    let traced = wait_for("a trace export", Duration::from_secs(15), || {
        collector.received.all().into_iter().find(|r| r.is_traces())
    });
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    let t = ExportTraceServiceRequest::decode(traced.body.as_slice()).unwrap();
    let trace_resource = attrs(&t.resource_spans[0].resource.as_ref().unwrap().attributes);
    assert_eq!(
        trace_resource, p.resource,
        "traces and metrics: one resource"
    );

    // The API key reached the collector with every push, and nothing else shows a secret.
    for r in &requests {
        assert!(
            r.head
                .to_ascii_lowercase()
                .contains(&format!("x-api-key: {}", API_KEY.to_ascii_lowercase())),
            "{}",
            r.head
        );
    }
    let bytes: Vec<u8> = requests.iter().flat_map(|r| r.body.clone()).collect();
    assert!(
        !bytes
            .windows(PASSWORD.len())
            .any(|w| w == PASSWORD.as_bytes())
    );
    let logs = sidecar.logs();
    assert!(
        !logs.contains(API_KEY) && !logs.contains(PASSWORD),
        "a secret in the logs"
    );
    // Every push is counted (the exposition lags the push by a rendering).
    let m = wait_for("the pushes counted", Duration::from_secs(10), || {
        let m = sidecar.get("/metrics").body;
        let sent = sample(&m, "sidecar_otel_metric_exports_total{outcome=\"sent\"}");
        (sent >= Some(last as f64)).then_some(m)
    });
    let failed = "sidecar_otel_metric_exports_total{outcome=\"failed\"}";
    assert_eq!(sample(&m, failed).unwrap_or(0.0), 0.0);
}

#[test]
fn every_series_of_metrics_is_pushed_with_its_value_over_http() {
    parity(Protocol::Http);
}

#[test]
fn every_series_of_metrics_is_pushed_with_its_value_over_grpc() {
    parity(Protocol::Grpc);
}

/// The collector killed: /metrics, /healthz and the probes go on, the failure is counted
/// and warned about once; started again: the push resumes, on the same connection settings.
fn survives_a_collector_killed(protocol: Protocol) {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let mut collector = Collector::start(protocol);
    let endpoint = match protocol {
        Protocol::Http => format!("{}/v1/metrics", collector.url()),
        Protocol::Grpc => collector.url(),
    };
    let mut env = support::FAST.to_vec();
    env.extend_from_slice(&[
        ("REDIS_URL", url.as_str()),
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", protocol.name()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
    ]);
    let sidecar = Sidecar::start(&env);
    wait_for("two pushes", Duration::from_secs(20), || {
        (metrics_requests(&collector).len() >= 2).then_some(())
    });
    assert_eq!(
        collector.received.count(|r| r.is_traces()),
        0,
        "no traces asked for"
    );
    collector.stop();
    let stamp = |m: &str| {
        sample(
            m,
            "sidecar_last_probe_timestamp_seconds{check=\"redis:cache\"}",
        )
        .unwrap()
    };
    let failed = "sidecar_otel_metric_exports_total{outcome=\"failed\"}";
    let m = wait_for("a failed push", Duration::from_secs(20), || {
        let r = sidecar.get("/metrics");
        assert_eq!(r.status, 200);
        (sample(&r.body, failed) >= Some(1.0)).then_some(r.body)
    });
    // Everything else goes on: probes, /healthz, /readyz.
    let before = stamp(&m);
    wait_for(
        "two more probes while the collector is down",
        Duration::from_secs(20),
        || {
            assert_eq!(sidecar.get("/healthz").status, 200);
            assert_eq!(sidecar.get("/readyz").status, 200);
            let m = sidecar.get("/metrics").body;
            (stamp(&m) >= before + 2.0).then_some(())
        },
    );
    let pushed = metrics_requests(&collector).len();
    collector.resume();
    wait_for("the push resumed", Duration::from_secs(30), || {
        (metrics_requests(&collector).len() >= pushed + 2).then_some(())
    });
    let logs = sidecar.logs();
    assert_eq!(
        logs.matches("pushing metrics over OTLP failed").count(),
        1,
        "warned once, not at every push:\n{logs}"
    );
    assert!(
        logs.contains("pushing metrics over OTLP works again"),
        "{logs}"
    );
    // The last push is a full one.
    let p = pushed_last(&collector);
    assert!(p.series.keys().any(|(name, _)| name == "redis_up"));
}

fn pushed_last(c: &Collector) -> Pushed {
    pushed(&metrics_requests(c).last().unwrap().body)
}

#[test]
fn a_collector_killed_and_started_again_over_http() {
    survives_a_collector_killed(Protocol::Http);
}

#[test]
fn a_collector_killed_and_started_again_over_grpc() {
    survives_a_collector_killed(Protocol::Grpc);
}
