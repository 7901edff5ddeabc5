//! The text exposition `/metrics` serves, read back into OTLP metrics, family by family:
//! the push sends exactly what a scrape at the same moment would get. Gauges (and untyped
//! families) become gauges; counters monotonic cumulative sums; histograms cumulative
//! histograms with the same bounds, their per-bucket counts the differences of the
//! cumulative `_bucket` series; labels become attributes, names and help stay as they are.

use std::iter::Peekable;
use std::str::Lines;

use crate::telemetry::otlp::{
    CUMULATIVE, Data, Gauge, Histogram, HistogramDataPoint, KeyValue, Metric, Number,
    NumberDataPoint, Sum,
};

/// The families of one exposition, each read when asked for.
pub struct Families<'a> {
    lines: Peekable<Lines<'a>>,
    /// When the sidecar started: the start of every cumulative series.
    start_ns: u64,
    now_ns: u64,
    /// Lines that could not be read, and families of a kind OTLP is not sent (summaries).
    pub skipped: usize,
}

impl<'a> Families<'a> {
    pub fn new(text: &'a str, start_ns: u64, now_ns: u64) -> Families<'a> {
        Families {
            lines: text.lines().peekable(),
            start_ns,
            now_ns,
            skipped: 0,
        }
    }
}

/// The data points a metric holds.
pub fn points(m: &Metric) -> usize {
    match &m.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        None => 0,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Gauge,
    Counter,
    Histogram,
    Other,
}

impl Iterator for Families<'_> {
    type Item = Metric;

    fn next(&mut self) -> Option<Metric> {
        loop {
            // The header: HELP and TYPE, in either order.
            let (mut name, mut help, mut kind) = (None::<String>, String::new(), None);
            while let Some(line) = self.lines.peek() {
                if let Some(rest) = line.strip_prefix("# HELP ") {
                    let (n, h) = rest.split_once(' ').unwrap_or((rest, ""));
                    if name.as_deref().is_some_and(|known| known != n) {
                        break;
                    }
                    name = Some(n.to_string());
                    help = unescape_help(h);
                } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                    let (n, k) = rest.split_once(' ').unwrap_or((rest, ""));
                    if name.as_deref().is_some_and(|known| known != n) || kind.is_some() {
                        break;
                    }
                    name = Some(n.to_string());
                    kind = Some(match k.trim() {
                        "gauge" | "untyped" => Kind::Gauge,
                        "counter" => Kind::Counter,
                        "histogram" => Kind::Histogram,
                        _ => Kind::Other,
                    });
                } else if line.starts_with('#') || line.trim().is_empty() {
                    // Another comment.
                } else {
                    break;
                }
                self.lines.next();
            }
            let Some(name) = name else {
                // A sample line before any header: not ours to guess.
                self.lines.next()?;
                self.skipped += 1;
                continue;
            };
            let kind = kind.unwrap_or(Kind::Gauge);
            let mut samples = Vec::new();
            while let Some(line) = self.lines.peek() {
                if line.starts_with('#') {
                    break;
                }
                let line = self.lines.next().unwrap_or_default();
                if line.trim().is_empty() {
                    continue;
                }
                match sample(line) {
                    Some(s) => samples.push(s),
                    None => self.skipped += 1,
                }
            }
            let data = match kind {
                Kind::Gauge => Data::Gauge(Gauge {
                    data_points: self.numbers(samples, 0),
                }),
                Kind::Counter => Data::Sum(Sum {
                    data_points: self.numbers(samples, self.start_ns),
                    aggregation_temporality: CUMULATIVE,
                    is_monotonic: true,
                }),
                Kind::Histogram => Data::Histogram(Histogram {
                    data_points: self.histogram(&name, samples),
                    aggregation_temporality: CUMULATIVE,
                }),
                Kind::Other => {
                    self.skipped += 1;
                    continue;
                }
            };
            return Some(Metric {
                name,
                description: help,
                unit: String::new(),
                data: Some(data),
            });
        }
    }
}

/// One sample line: the series' name, its labels, its value.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

impl Families<'_> {
    fn numbers(&self, samples: Vec<Sample>, start_ns: u64) -> Vec<NumberDataPoint> {
        samples
            .into_iter()
            .map(|s| NumberDataPoint {
                attributes: attributes(s.labels),
                start_time_unix_nano: start_ns,
                time_unix_nano: self.now_ns,
                value: Some(Number::AsDouble(s.value)),
            })
            .collect()
    }

    /// A histogram's series, in the order the encoder writes them: every `_bucket` of a
    /// label set (ascending `le`), then its `_sum` and `_count`.
    fn histogram(&mut self, name: &str, samples: Vec<Sample>) -> Vec<HistogramDataPoint> {
        let mut out: Vec<HistogramDataPoint> = Vec::new();
        // The label set of the point being read, and its last cumulative count.
        let mut current: Option<Vec<(&str, String)>> = None;
        let mut cumulative = 0u64;
        for mut s in samples {
            let Some(suffix) = s.name.strip_prefix(name) else {
                self.skipped += 1;
                continue;
            };
            let le = s
                .labels
                .iter()
                .position(|(k, _)| *k == "le")
                .map(|i| s.labels.remove(i).1);
            if current.as_ref() != Some(&s.labels) {
                current = Some(s.labels.clone());
                cumulative = 0;
                out.push(HistogramDataPoint {
                    attributes: attributes(s.labels),
                    start_time_unix_nano: self.start_ns,
                    time_unix_nano: self.now_ns,
                    ..Default::default()
                });
            }
            let Some(point) = out.last_mut() else {
                continue;
            };
            // Counts are whole numbers written as floats.
            let count = if s.value.is_finite() && s.value >= 0.0 {
                s.value as u64
            } else {
                0
            };
            match (suffix, le) {
                ("_bucket", Some(le)) => {
                    point.bucket_counts.push(count.saturating_sub(cumulative));
                    cumulative = count;
                    match le.parse::<f64>() {
                        Ok(bound) if bound.is_finite() => point.explicit_bounds.push(bound),
                        Ok(_) => {}
                        Err(_) => self.skipped += 1,
                    }
                }
                ("_sum", None) => point.sum = Some(s.value),
                ("_count", None) => point.count = count,
                _ => self.skipped += 1,
            }
        }
        // Without a +Inf bucket (the encoder always writes one) the rest of the count is
        // above the last bound.
        for p in &mut out {
            if p.bucket_counts.len() == p.explicit_bounds.len() {
                let counted: u64 = p.bucket_counts.iter().sum();
                p.bucket_counts.push(p.count.saturating_sub(counted));
            }
        }
        out
    }
}

fn attributes(labels: Vec<(&str, String)>) -> Vec<KeyValue> {
    labels
        .into_iter()
        .map(|(k, v)| KeyValue::new(k, v))
        .collect()
}

/// `name{k="v",...} value [timestamp]`, label values unescaped.
fn sample(line: &str) -> Option<Sample<'_>> {
    let end = line.find(['{', ' '])?;
    let name = &line[..end];
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"")?;
            let (value, after) = quoted(after)?;
            labels.push((key, value));
            rest = after;
        }
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// A label value up to its closing quote (`\\`, `\"` and `\n` unescaped), and the rest.
fn quoted(text: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &text[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// A HELP text: `\\` and `\n` unescaped.
fn unescape_help(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests;
