use std::time::Duration;

use crate::config::tests::settings;
use crate::config::{Config, OtlpProtocol, Sampler};

#[test]
fn otel_settings_follow_the_specification() {
    let otel = |pairs: &[(&str, &str)]| Config::from_settings(&settings(pairs)).unwrap().otel;
    assert_eq!(otel(&[]), None, "no endpoint: no exporter");
    assert_eq!(
        otel(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true")
        ]),
        None
    );
    let o = otel(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]).unwrap();
    assert_eq!(o.endpoint, "http://c:4318/v1/traces");
    assert_eq!(o.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(o.timeout, Duration::from_secs(10));
    assert_eq!(o.service_name, "redis-celery-sidecar");
    assert_eq!(o.sampler, Sampler::ParentBasedAlwaysOn);
    let o = otel(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=from-attrs,team=a%20b",
        ),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-api-key=k1,Authorization=Bearer%20t",
        ),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-api-key=k2"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
    ])
    .unwrap();
    assert_eq!(o.endpoint, "http://c:4317", "gRPC takes the endpoint as is");
    assert_eq!(o.timeout, Duration::from_millis(2500));
    assert_eq!(o.service_name, "from-attrs");
    assert_eq!(o.resource, [("team".to_string(), "a b".to_string())]);
    let headers: Vec<(&str, &str)> = o
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.expose()))
        .collect();
    assert_eq!(
        headers,
        [("authorization", "Bearer t"), ("x-api-key", "k2")]
    );
    assert_eq!(o.sampler, Sampler::ParentBasedRatio(0.25));
    let o = otel(&[
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://c/custom"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored"),
        ("OTEL_SERVICE_NAME", "named"),
        ("OTEL_RESOURCE_ATTRIBUTES", "service.name=loses"),
    ])
    .unwrap();
    assert_eq!(
        o.endpoint, "https://c/custom",
        "the traces endpoint is used as is"
    );
    assert_eq!(o.service_name, "named", "the environment's name wins");
    let c = Config::from_settings(&settings(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=hunter2pw"),
    ]))
    .unwrap();
    assert!(
        c.describe().contains("otlp headers       x-api-key=***"),
        "{}",
        c.describe()
    );
    assert!(!c.describe().contains("hunter2pw"));
    assert!(!format!("{c:?}").contains("hunter2pw"));
}

#[test]
fn otlp_metrics_settings_follow_the_specification() {
    let parse = |pairs: &[(&str, &str)]| Config::from_settings(&settings(pairs));
    let push = |pairs: &[(&str, &str)]| parse(pairs).unwrap().otel_metrics;
    assert_eq!(push(&[]), None, "no endpoint: no push");
    let m = push(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otlp.example/otlp/")]).unwrap();
    assert_eq!(m.endpoint, "https://otlp.example/otlp/v1/metrics");
    assert_eq!(m.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(
        m.interval,
        Duration::from_secs(60),
        "the specification's default"
    );
    assert_eq!(m.timeout, Duration::from_secs(10));
    assert_eq!(m.service_name, "redis-celery-sidecar");
    // https with http/protobuf, as hosted backends take it, for both signals.
    let c = parse(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otlp.example/otlp")]).unwrap();
    assert_eq!(
        c.otel.unwrap().endpoint,
        "https://otlp.example/otlp/v1/traces"
    );
    let c = parse(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "https://m.example/custom",
        ),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=k1,x-team=t"),
        ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "X-Api-Key=k2"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "3s"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "15000"),
        ("OTEL_SERVICE_NAME", "svc"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod"),
    ])
    .unwrap();
    let (t, m) = (c.otel.unwrap(), c.otel_metrics.unwrap());
    assert_eq!(t.endpoint, "http://c:4318/v1/traces");
    assert_eq!(t.timeout, Duration::from_millis(2500));
    assert_eq!(m.endpoint, "https://m.example/custom", "used as is");
    assert_eq!(m.timeout, Duration::from_secs(3));
    assert_eq!(m.interval, Duration::from_secs(15));
    let headers: Vec<(&str, &str)> = m
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.expose()))
        .collect();
    assert_eq!(headers, [("x-team", "t"), ("x-api-key", "k2")]);
    assert_eq!(
        (t.service_name.as_str(), &t.resource),
        (m.service_name.as_str(), &m.resource)
    );
    let m = push(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
    ])
    .unwrap();
    assert_eq!(
        (m.endpoint.as_str(), m.protocol),
        ("http://c:4317", OtlpProtocol::Grpc)
    );
    // Turned off three ways; traces stay on.
    for off in [
        ("OTEL_METRICS_EXPORTER", "none"),
        ("OTEL_METRICS_EXPORTER", "prometheus"),
        ("OTEL_SDK_DISABLED", "true"),
    ] {
        let c = parse(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), off]).unwrap();
        assert_eq!(c.otel_metrics, None, "{off:?}");
        assert_eq!(c.otel.is_some(), off.0 != "OTEL_SDK_DISABLED", "{off:?}");
    }
    let c = parse(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
        ("OTEL_TRACES_EXPORTER", "none"),
        ("OTEL_METRICS_EXPORTER", "otlp,prometheus"),
    ])
    .unwrap();
    assert!(c.otel.is_none() && c.otel_metrics.is_some());
    // Bad values name their variable.
    for (var, value, says) in [
        (
            "OTEL_METRICS_EXPORTER",
            "console",
            "use otlp or none or prometheus",
        ),
        ("OTEL_TRACES_EXPORTER", "zipkin", "use otlp or none"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "50", "at least 100"),
        (
            "OTEL_METRIC_EXPORT_INTERVAL",
            "often",
            "an interval in milliseconds",
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
            "delta",
            "cumulative",
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
            "http/json",
            "grpc or http/protobuf",
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "c:4318",
            "not an http",
        ),
    ] {
        let e = parse(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            (var, value),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains(var) && e.contains(says), "{var}={value}: {e}");
    }
    let e = parse(&[
        ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://c:4318"),
        ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-api-key"),
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("OTEL_EXPORTER_OTLP_METRICS_HEADERS"), "{e}");
    let c = parse(&[
        (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "http://c:4318/v1/metrics",
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
            "authorization=Basic%20czNjcjN0cHc=",
        ),
    ])
    .unwrap();
    let shown = c.describe();
    assert!(shown.contains("metrics push"), "{shown}");
    assert!(shown.contains("authorization=***"), "{shown}");
    assert!(!shown.contains("czNjcjN0cHc") && !format!("{c:?}").contains("czNjcjN0cHc"));
}
