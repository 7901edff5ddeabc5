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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
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

pub(super) fn otel(s: &Settings) -> Result<Option<OtelConfig>, ConfigError> {
    let disabled = match non_empty(vars::OTEL_SDK_DISABLED, &s.otel_sdk_disabled)? {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) => {
            return Err(invalid(
                vars::OTEL_SDK_DISABLED,
                Some(v),
                "is not true or false",
            ));
        }
    };
    let protocol_var = if s.otel_traces_protocol.is_some() {
        (vars::OTEL_TRACES_PROTOCOL, &s.otel_traces_protocol)
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
        non_empty(vars::OTEL_TRACES_ENDPOINT, &s.otel_traces_endpoint)?,
        non_empty(vars::OTEL_ENDPOINT, &s.otel_endpoint)?,
    ) {
        (Some(traces), _) => Some(url(vars::OTEL_TRACES_ENDPOINT, traces)?),
        (None, Some(base)) => {
            let base = url(vars::OTEL_ENDPOINT, base)?;
            Some(match protocol {
                // The signal path is added to the base URL for OTLP/HTTP, not for gRPC.
                OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
                OtlpProtocol::Grpc => base,
            })
        }
        (None, None) => None,
    };
    let mut headers = Vec::new();
    for (var, value) in [
        (vars::OTEL_HEADERS, &s.otel_headers),
        (vars::OTEL_TRACES_HEADERS, &s.otel_traces_headers),
    ] {
        for (k, v) in key_values(var, value, true)? {
            headers.retain(|(known, _): &(String, Secret)| !known.eq_ignore_ascii_case(&k));
            headers.push((k.to_ascii_lowercase(), Secret(v)));
        }
    }
    let timeout_var = if s.otel_traces_timeout.is_some() {
        (vars::OTEL_TRACES_TIMEOUT, &s.otel_traces_timeout)
    } else {
        (vars::OTEL_TIMEOUT, &s.otel_timeout)
    };
    let timeout = match non_empty(timeout_var.0, timeout_var.1)? {
        None => Duration::from_secs(10),
        // The specification's unit is milliseconds; `5s` is taken too.
        Some(text) => match text.parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => parse_duration(text)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    invalid(
                        timeout_var.0,
                        Some(text),
                        "is not a timeout in milliseconds, such as 10000",
                    )
                })?,
        },
    };
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
    if protocol == OtlpProtocol::HttpProtobuf
        && endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("https://"))
    {
        let var = if s.otel_traces_endpoint.is_some() {
            vars::OTEL_TRACES_ENDPOINT
        } else {
            vars::OTEL_ENDPOINT
        };
        return Err(invalid(
            var,
            None,
            "https needs OTEL_EXPORTER_OTLP_PROTOCOL=grpc; http/protobuf is sent over plain http (a collector on the private network)",
        ));
    }
    match endpoint {
        Some(endpoint) if !disabled => Ok(Some(OtelConfig {
            endpoint,
            protocol,
            headers,
            timeout,
            service_name,
            resource,
            sampler,
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
