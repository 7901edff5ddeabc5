//! The OpenTelemetry settings (`OTEL_*`), resolved as the OTLP specification says.

use std::time::Duration;

use super::{ConfigError, Secret, Var, invalid, non_empty, parse_duration, vars};
use crate::config::cli::Settings;

/// How traces are exported. `None` in `Config::otel` means no exporter at all.
#[derive(Debug, Clone, PartialEq)]
pub struct OtelConfig {
    /// The URL spans are sent to, resolved as the OTLP specification says.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Sent with every export; values are secrets (API keys).
    pub headers: Vec<(String, Secret)>,
    pub timeout: Duration,
    pub service_name: String,
    /// Other resource attributes, from `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource: Vec<(String, String)>,
    pub sampler: Sampler,
    /// Trusted roots besides the built-in ones, for an https endpoint (`SSL_CERT_FILE`).
    pub roots: Vec<crate::redis::target::Roots>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

impl OtlpProtocol {
    /// As `OTEL_EXPORTER_OTLP_PROTOCOL` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// `OTEL_TRACES_SAMPLER` and its argument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedRatio(f64),
}

/// Metrics pushed over OTLP. `None` in `Config::otel_metrics` means no push.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsPush {
    /// The URL metrics are sent to, resolved as the OTLP specification says.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Sent with every export; values are secrets (API keys).
    pub headers: Vec<(String, Secret)>,
    pub timeout: Duration,
    /// `OTEL_METRIC_EXPORT_INTERVAL`.
    pub interval: Duration,
    pub service_name: String,
    pub resource: Vec<(String, String)>,
    /// Trusted roots besides the built-in ones, for an https endpoint (`SSL_CERT_FILE`).
    pub roots: Vec<crate::redis::target::Roots>,
}

/// One signal's variables: its own, then the shared `OTEL_EXPORTER_OTLP_*` ones.
struct Signal<'a> {
    /// The path added to `OTEL_EXPORTER_OTLP_ENDPOINT` for OTLP/HTTP.
    path: &'static str,
    endpoint: (Var, &'a Option<String>),
    protocol: (Var, &'a Option<String>),
    headers: (Var, &'a Option<String>),
    timeout: (Var, &'a Option<String>),
}

/// Where and how one signal is exported, before the signal's own settings.
struct Export {
    endpoint: String,
    protocol: OtlpProtocol,
    headers: Vec<(String, Secret)>,
    timeout: Duration,
}

fn disabled(s: &Settings) -> Result<bool, ConfigError> {
    match non_empty(vars::OTEL_SDK_DISABLED, &s.otel_sdk_disabled)? {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(invalid(
            vars::OTEL_SDK_DISABLED,
            Some(v),
            "is not true or false",
        )),
    }
}

/// `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER`: whether `otlp` is among them (the
/// default). `also` are values taken to mean "not over OTLP" (for metrics, `prometheus`:
/// `/metrics` is always served).
fn exporter(var: Var, value: &Option<String>, also: &[&str]) -> Result<bool, ConfigError> {
    let Some(text) = non_empty(var, value)? else {
        return Ok(true);
    };
    let mut otlp = false;
    for item in text.split(',').map(str::trim) {
        match item {
            "otlp" => otlp = true,
            "none" => {}
            other if also.contains(&other) => {}
            _ => {
                let mut known = vec!["otlp", "none"];
                known.extend_from_slice(also);
                return Err(invalid(
                    var,
                    Some(item),
                    &format!("is not supported; use {}", known.join(" or ")),
                ));
            }
        }
    }
    Ok(otlp)
}

/// A signal's endpoint, protocol, headers and timeout; `None` without an endpoint.
fn export(s: &Settings, sig: &Signal) -> Result<Option<Export>, ConfigError> {
    let protocol_var = if sig.protocol.1.is_some() {
        sig.protocol
    } else {
        (vars::OTEL_PROTOCOL, &s.otel_protocol)
    };
    let protocol = match non_empty(protocol_var.0, protocol_var.1)? {
        None => OtlpProtocol::HttpProtobuf,
        Some("grpc") => OtlpProtocol::Grpc,
        Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
        Some(v) => {
            return Err(invalid(
                protocol_var.0,
                Some(v),
                "is not supported; use grpc or http/protobuf",
            ));
        }
    };
    let url = |var: Var, text: &str| -> Result<String, ConfigError> {
        let parsed = url::Url::parse(text)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        match parsed {
            Some(u) if u.password().is_none() && u.username().is_empty() => Ok(text.to_string()),
            Some(_) => Err(invalid(
                var,
                None,
                "must not hold credentials; put them in OTEL_EXPORTER_OTLP_HEADERS",
            )),
            None => Err(invalid(var, None, "is not an http:// or https:// URL")),
        }
    };
    let endpoint = match (
        non_empty(sig.endpoint.0, sig.endpoint.1)?,
        non_empty(vars::OTEL_ENDPOINT, &s.otel_endpoint)?,
    ) {
        (Some(own), _) => url(sig.endpoint.0, own)?,
        (None, Some(base)) => {
            let base = url(vars::OTEL_ENDPOINT, base)?;
            match protocol {
                // The signal path is added to the base URL for OTLP/HTTP, not for gRPC.
                OtlpProtocol::HttpProtobuf => {
                    format!("{}{}", base.trim_end_matches('/'), sig.path)
                }
                OtlpProtocol::Grpc => base,
            }
        }
        (None, None) => String::new(),
    };
    let mut headers = Vec::new();
    for (var, value) in [(vars::OTEL_HEADERS, &s.otel_headers), sig.headers] {
        for (k, v) in key_values(var, value, true)? {
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if !k.bytes().all(token) {
                return Err(invalid(var, None, &format!("{k} is not a header name")));
            }
            if v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(invalid(
                    var,
                    None,
                    &format!("the value of {k} holds a control character"),
                ));
            }
            headers.retain(|(known, _): &(String, Secret)| !known.eq_ignore_ascii_case(&k));
            headers.push((k.to_ascii_lowercase(), Secret(v)));
        }
    }
    let timeout_var = if sig.timeout.1.is_some() {
        sig.timeout
    } else {
        (vars::OTEL_TIMEOUT, &s.otel_timeout)
    };
    let timeout =
        millis(timeout_var.0, timeout_var.1, "a timeout")?.unwrap_or(Duration::from_secs(10));
    if endpoint.is_empty() {
        return Ok(None);
    }
    Ok(Some(Export {
        endpoint,
        protocol,
        headers,
        timeout,
    }))
}

/// A duration the specification gives in milliseconds (`10000`); `5s` is taken too.
fn millis(var: Var, value: &Option<String>, what: &str) -> Result<Option<Duration>, ConfigError> {
    let Some(text) = non_empty(var, value)? else {
        return Ok(None);
    };
    match text.parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Some(Duration::from_millis(ms))),
        _ => parse_duration(text)
            .filter(|d| !d.is_zero())
            .map(Some)
            .ok_or_else(|| {
                invalid(
                    var,
                    Some(text),
                    &format!("is not {what} in milliseconds, such as 10000"),
                )
            }),
    }
}

/// `service.name` and the other resource attributes, shared by traces and metrics.
fn resource(s: &Settings) -> Result<(String, Vec<(String, String)>), ConfigError> {
    let mut resource = key_values(
        vars::OTEL_RESOURCE_ATTRIBUTES,
        &s.otel_resource_attributes,
        false,
    )?;
    let from_resource = resource
        .iter()
        .position(|(k, _)| k == "service.name")
        .map(|i| resource.remove(i).1);
    let service_name = match non_empty(vars::OTEL_SERVICE_NAME, &s.otel_service_name)? {
        Some(name) => name.to_string(),
        None => from_resource.unwrap_or_else(|| env!("CARGO_PKG_NAME").to_string()),
    };
    Ok((service_name, resource))
}

pub(super) fn otel(s: &Settings) -> Result<Option<OtelConfig>, ConfigError> {
    let disabled = disabled(s)?;
    let on = exporter(vars::OTEL_TRACES_EXPORTER, &s.otel_traces_exporter, &[])?;
    let export = export(
        s,
        &Signal {
            path: "/v1/traces",
            endpoint: (vars::OTEL_TRACES_ENDPOINT, &s.otel_traces_endpoint),
            protocol: (vars::OTEL_TRACES_PROTOCOL, &s.otel_traces_protocol),
            headers: (vars::OTEL_TRACES_HEADERS, &s.otel_traces_headers),
            timeout: (vars::OTEL_TRACES_TIMEOUT, &s.otel_traces_timeout),
        },
    )?;
    let (service_name, resource) = resource(s)?;
    let ratio = || -> Result<f64, ConfigError> {
        match non_empty(vars::OTEL_TRACES_SAMPLER_ARG, &s.otel_traces_sampler_arg)? {
            None => Ok(1.0),
            Some(text) => text
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    invalid(
                        vars::OTEL_TRACES_SAMPLER_ARG,
                        Some(text),
                        "is not a ratio from 0 to 1",
                    )
                }),
        }
    };
    let sampler = match non_empty(vars::OTEL_TRACES_SAMPLER, &s.otel_traces_sampler)? {
        None | Some("parentbased_always_on") => Sampler::ParentBasedAlwaysOn,
        Some("always_on") => Sampler::AlwaysOn,
        Some("always_off") => Sampler::AlwaysOff,
        Some("traceidratio") => Sampler::Ratio(ratio()?),
        Some("parentbased_always_off") => Sampler::ParentBasedAlwaysOff,
        Some("parentbased_traceidratio") => Sampler::ParentBasedRatio(ratio()?),
        Some(v) => {
            return Err(invalid(
                vars::OTEL_TRACES_SAMPLER,
                Some(v),
                "is not a sampler; use always_on, always_off, traceidratio or parentbased_always_on, parentbased_always_off, parentbased_traceidratio",
            ));
        }
    };
    let Some(export) = export else {
        return Ok(None);
    };
    if disabled || !on {
        return Ok(None);
    }
    Ok(Some(OtelConfig {
        endpoint: export.endpoint,
        protocol: export.protocol,
        headers: export.headers,
        timeout: export.timeout,
        service_name,
        resource,
        sampler,
        roots: super::targets::extra_roots(s)?,
    }))
}

pub(super) fn metrics(s: &Settings) -> Result<Option<MetricsPush>, ConfigError> {
    let disabled = disabled(s)?;
    let on = exporter(
        vars::OTEL_METRICS_EXPORTER,
        &s.otel_metrics_exporter,
        &["prometheus"],
    )?;
    let export = export(
        s,
        &Signal {
            path: "/v1/metrics",
            endpoint: (vars::OTEL_METRICS_ENDPOINT, &s.otel_metrics_endpoint),
            protocol: (vars::OTEL_METRICS_PROTOCOL, &s.otel_metrics_protocol),
            headers: (vars::OTEL_METRICS_HEADERS, &s.otel_metrics_headers),
            timeout: (vars::OTEL_METRICS_TIMEOUT, &s.otel_metrics_timeout),
        },
    )?;
    let interval = millis(
        vars::OTEL_METRIC_EXPORT_INTERVAL,
        &s.otel_metric_export_interval,
        "an interval",
    )?
    .unwrap_or(Duration::from_secs(60));
    if interval < Duration::from_millis(100) {
        return Err(invalid(
            vars::OTEL_METRIC_EXPORT_INTERVAL,
            s.otel_metric_export_interval.as_deref(),
            "must be at least 100 (milliseconds)",
        ));
    }
    match non_empty(vars::OTEL_METRICS_TEMPORALITY, &s.otel_metrics_temporality)? {
        None => {}
        Some(v) if v.eq_ignore_ascii_case("cumulative") => {}
        Some(v) => {
            return Err(invalid(
                vars::OTEL_METRICS_TEMPORALITY,
                Some(v),
                "is not supported: counters are pushed as cumulative sums, as /metrics serves them; use cumulative or leave it unset",
            ));
        }
    }
    let (service_name, resource) = resource(s)?;
    match export {
        Some(e) if on && !disabled => Ok(Some(MetricsPush {
            endpoint: e.endpoint,
            protocol: e.protocol,
            headers: e.headers,
            timeout: e.timeout,
            interval,
            service_name,
            resource,
            roots: super::targets::extra_roots(s)?,
        })),
        _ => Ok(None),
    }
}

/// `key=value,key2=value2`, values percent-decoded (the W3C baggage format the OTLP
/// variables use). With `secret`, errors never show a value.
fn key_values(
    var: Var,
    value: &Option<String>,
    secret: bool,
) -> Result<Vec<(String, String)>, ConfigError> {
    let Some(text) = value.as_deref().map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let shown = if secret { None } else { Some(item) };
        let Some((k, v)) = item.split_once('=') else {
            return Err(invalid(var, shown, "is not a key=value list"));
        };
        let (k, v) = (
            k.trim(),
            percent_encoding::percent_decode_str(v.trim())
                .decode_utf8()
                .ok()
                .map(|v| v.into_owned()),
        );
        let valid_key = !k.is_empty() && k.chars().all(|c| c.is_ascii_graphic() && c != '=');
        match v {
            Some(v) if valid_key => out.push((k.to_string(), v)),
            _ => {
                return Err(invalid(
                    var,
                    shown,
                    "is not a key=value list with percent-encoded values",
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
