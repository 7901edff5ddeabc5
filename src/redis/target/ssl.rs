//! The TLS settings of a URL's `ssl_*` parameters, for each role as its library reads them.

use super::url::{Query, library};
use super::{ClientCert, Role, Roots, Tls, UrlError};
use crate::redis::pyurl;

/// The four TLS parameters Celery's Redis backend reads from a `rediss://` URL.
pub(super) const CELERY_SSL: &[&str] = &[
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
];

/// redis-py's `to_bool`: false for 0, F, FALSE, N, NO (any case); kombu's reading of
/// `ssl_check_hostname`: false only for "false".
fn truthy(role: Role, value: &str) -> bool {
    match role {
        Role::Broker => !value.eq_ignore_ascii_case("false"),
        _ => !["0", "F", "FALSE", "N", "NO"].contains(&value.to_ascii_uppercase().as_str()),
    }
}

/// The TLS settings of a `redis://` or `rediss://` URL for `role`, `None` for plain TCP.
/// The `ssl_*` parameters read are added to `used`.
pub(super) fn tls_settings<'q>(
    role: Role,
    variable: &'static str,
    scheme: &str,
    url: &pyurl::Split,
    query: &'q Query,
    used: &mut Vec<&'q str>,
    warnings: &mut Vec<String>,
) -> Result<Option<Tls>, UrlError> {
    const APPLIED: [&str; 6] = [
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_check_hostname",
    ];
    let given: Vec<&str> = query
        .names()
        .into_iter()
        .filter(|n| APPLIED.contains(n))
        .collect();
    used.extend(given.iter().copied());
    let any_ssl = query.names().iter().any(|n| n.starts_with("ssl_"));
    let tls = scheme == "rediss" || (role == Role::Broker && any_ssl);
    if !tls {
        if !given.is_empty() {
            warnings.push(format!(
                "{variable}: {} refuses TLS parameters in a redis:// URL, and the sidecar does not use them: write rediss:// for TLS",
                library(role)
            ));
        }
        return Ok(None);
    }
    if scheme == "redis" {
        warnings.push(format!(
            "{variable}: kombu connects with TLS when a redis:// URL has ssl_ parameters, and so does the sidecar: write rediss:// to say so"
        ));
    }
    // Celery unquotes its four TLS parameters once more.
    let path = |name: &str| {
        query.get(name).map(|v| {
            if role == Role::ResultBackend && CELERY_SSL.contains(&name) {
                pyurl::unquote(v)
            } else {
                v.to_string()
            }
        })
    };
    let verify = match query.get("ssl_cert_reqs") {
        None if role == Role::Broker && !any_ssl => {
            warnings.push(format!(
                "{variable}: kombu connects to a rediss:// broker without ssl_cert_reqs WITHOUT verifying the certificate (it logs \"defaulting to insecure SSL behaviour\"), and so does the sidecar: add ?ssl_cert_reqs=required"
            ));
            false
        }
        None => {
            if role == Role::ResultBackend {
                warnings.push(format!(
                    "{variable}: Celery refuses a rediss:// result backend without ssl_cert_reqs (\"A rediss:// URL must have parameter ssl_cert_reqs\"): add ?ssl_cert_reqs=required; the sidecar verifies the certificate"
                ));
            }
            true
        }
        Some("required" | "optional") => true,
        Some("none") => false,
        Some(v @ ("CERT_REQUIRED" | "CERT_OPTIONAL" | "CERT_NONE")) => {
            if role == Role::Cache {
                warnings.push(format!(
                    "{variable}: redis-py refuses ssl_cert_reqs={v} (\"Invalid SSL Certificate Requirements Flag\"; it takes none, optional or required); the sidecar reads it as Celery does"
                ));
            }
            v != "CERT_NONE"
        }
        Some(v) => {
            let v: String = v.chars().take(24).collect();
            return Err(UrlError(format!(
                "ssl_cert_reqs \"{v}\" is not none, optional or required (or CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED)"
            )));
        }
    };
    let check_hostname = verify
        && query
            .get("ssl_check_hostname")
            .is_none_or(|v| truthy(role, v));
    let mut roots = Vec::new();
    if let Some(p) = path("ssl_ca_certs") {
        roots.push(Roots {
            origin: "ssl_ca_certs",
            path: p,
        });
    }
    if let Some(p) = path("ssl_ca_path") {
        roots.push(Roots {
            origin: "ssl_ca_path",
            path: p,
        });
    }
    let client_cert = match (path("ssl_certfile"), path("ssl_keyfile")) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(UrlError(
                "ssl_keyfile is given without ssl_certfile: give both (the certificate and its key)".into(),
            ));
        }
        (Some(cert), key) => Some(ClientCert { cert, key }),
    };
    Ok(Some(Tls {
        verify: verify && url.fragment != "insecure",
        check_hostname,
        roots,
        client_cert,
    }))
}
