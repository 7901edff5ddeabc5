use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

use super::*;
use crate::telemetry::otlp::Value;

fn text(registry: &Registry) -> String {
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .unwrap();
    String::from_utf8(out).unwrap()
}

fn attr(kv: &[KeyValue]) -> Vec<(String, String)> {
    kv.iter()
        .map(|kv| {
            let Some(Value::StringValue(v)) = kv.value.as_ref().and_then(|v| v.value.clone())
            else {
                panic!("not a string attribute: {kv:?}")
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn value(p: &NumberDataPoint) -> f64 {
    match p.value {
        Some(Number::AsDouble(v)) => v,
        None => panic!("no value"),
    }
}

/// A registry of each kind, with label values the text format escapes, read back.
#[test]
fn every_kind_is_read_back_with_its_labels_and_values() {
    let r = Registry::new();
    let g = IntGauge::with_opts(Opts::new("a_gauge", "A gauge.\nSecond \\ line.")).unwrap();
    g.set(-7);
    r.register(Box::new(g)).unwrap();
    let c = IntCounterVec::new(Opts::new("b_total", "A counter."), &["queue_name"]).unwrap();
    let odd = "we\"ird\\q\nx,}=é";
    c.with_label_values(&[odd]).inc_by(3);
    c.with_label_values(&["plain"]).inc_by(41);
    r.register(Box::new(c)).unwrap();
    let h = HistogramVec::new(
        HistogramOpts::new("c_seconds", "A histogram.").buckets(vec![0.001, 0.01, 0.1]),
        &["role"],
    )
    .unwrap();
    for v in [0.0005, 0.002, 0.003, 0.05, 7.0] {
        h.with_label_values(&["cache"]).observe(v);
    }
    h.with_label_values(&["broker"]).observe(0.02);
    r.register(Box::new(h)).unwrap();
    let text = text(&r);
    let mut fams = Families::new(&text, 10, 20);
    let all: Vec<Metric> = fams.by_ref().collect();
    assert_eq!(fams.skipped, 0, "{text}");
    let names: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["a_gauge", "b_total", "c_seconds"]);

    assert_eq!(all[0].description, "A gauge.\nSecond \\ line.");
    let Some(Data::Gauge(gauge)) = &all[0].data else {
        panic!("{:?}", all[0])
    };
    assert_eq!(gauge.data_points.len(), 1);
    let p = &gauge.data_points[0];
    assert_eq!(
        (p.value, p.time_unix_nano, p.start_time_unix_nano),
        (Some(Number::AsDouble(-7.0)), 20, 0)
    );

    let Some(Data::Sum(sum)) = &all[1].data else {
        panic!("{:?}", all[1])
    };
    assert!(sum.is_monotonic);
    assert_eq!(sum.aggregation_temporality, CUMULATIVE);
    type Point = (Vec<(String, String)>, f64, u64);
    let mut got: Vec<Point> = sum
        .data_points
        .iter()
        .map(|p| (attr(&p.attributes), value(p), p.start_time_unix_nano))
        .collect();
    got.sort_by(|a, b| a.1.total_cmp(&b.1));
    assert_eq!(
        got,
        [
            (vec![("queue_name".into(), odd.into())], 3.0, 10),
            (vec![("queue_name".into(), "plain".into())], 41.0, 10),
        ]
    );

    let Some(Data::Histogram(hist)) = &all[2].data else {
        panic!("{:?}", all[2])
    };
    assert_eq!(hist.aggregation_temporality, CUMULATIVE);
    let cache = hist
        .data_points
        .iter()
        .find(|p| attr(&p.attributes) == [("role".to_string(), "cache".to_string())])
        .unwrap();
    assert_eq!(cache.explicit_bounds, [0.001, 0.01, 0.1]);
    assert_eq!(cache.bucket_counts, [1, 2, 1, 1], "per bucket, +Inf last");
    assert_eq!(cache.count, 5);
    assert!((cache.sum.unwrap() - 7.0555).abs() < 1e-9);
    assert_eq!(cache.start_time_unix_nano, 10);
    let broker = hist
        .data_points
        .iter()
        .find(|p| attr(&p.attributes) == [("role".to_string(), "broker".to_string())])
        .unwrap();
    assert_eq!(broker.bucket_counts, [0, 0, 1, 0]);
    assert_eq!(hist.data_points.len(), 2);
}

#[test]
fn odd_lines_are_skipped_and_counted_not_fatal() {
    let text = "\
stray_sample 1
# HELP x_total Things.
# TYPE x_total counter
x_total{a=\"1\"} 2
x_total{a=\"unterminated} 3
x_total{a=\"2\"} not-a-number
x_total{a=\"3\"} +Inf 1700000000000
# HELP s A summary.
# TYPE s summary
s{quantile=\"0.5\"} 1
s_sum 1
s_count 1
# TYPE y gauge
y NaN
";
    let mut fams = Families::new(text, 0, 1);
    let all: Vec<Metric> = fams.by_ref().collect();
    let names: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["x_total", "y"]);
    assert_eq!(
        fams.skipped, 4,
        "the stray sample, two bad lines, the summary"
    );
    let Some(Data::Sum(sum)) = &all[0].data else {
        panic!()
    };
    let values: Vec<f64> = sum.data_points.iter().map(value).collect();
    assert_eq!(values, [2.0, f64::INFINITY]);
    assert_eq!(points(&all[0]), 2);
    let Some(Data::Gauge(g)) = &all[1].data else {
        panic!()
    };
    assert!(value(&g.data_points[0]).is_nan());
}
