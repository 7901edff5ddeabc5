//! The Redis targets from REDIS_URL, REDISHOST..., CELERY_BROKER_URL and
//! CELERY_RESULT_BACKEND, each URL read as the app's library reads it.

use super::{ConfigError, DEFAULT_REDIS_URL, Var, invalid, non_empty, vars};
use crate::config::cli::Settings;
use crate::redis::target::{Address, Role, Roots, Target};

/// The targets, whether the local default is probed, notes and warnings.
type Targets = (Vec<Target>, bool, Vec<String>, Vec<String>);

pub(super) fn targets(s: &Settings) -> Result<Targets, ConfigError> {
    let mut ignored = Vec::new();
    let mut warnings = Vec::new();
    let mut wanted = Vec::new();
    let sentinel_master = non_empty(vars::SENTINEL_MASTER, &s.sentinel_master)?;
    let sentinel_password =
        non_empty(vars::SENTINEL_PASSWORD, &s.sentinel_password)?.map(str::to_string);
    let url = |var: Var,
               role: Role,
               text: &str,
               wanted: &mut Vec<Target>,
               ignored: &mut Vec<String>,
               warnings: &mut Vec<String>|
     -> Result<(), ConfigError> {
        let read = Target::read(role, var.env, text).map_err(|e| invalid(var, None, &e.0))?;
        ignored.extend(read.notes);
        warnings.extend(read.warnings);
        if let Some(mut t) = read.target {
            if t.sentinels().is_some() {
                t.configure_sentinels(sentinel_master, None, sentinel_password.clone());
                if t.sentinels().is_some_and(|s| s.master.is_empty()) {
                    return Err(ConfigError::Conflict {
                        var: vars::SENTINEL_MASTER,
                        problem: format!(
                            "is not set, and {} is a Sentinel URL: set it to the master's name, as Celery's master_name transport option (kombu refuses to start without it)",
                            var.env
                        ),
                    });
                }
            }
            wanted.push(t.with_source(var.env));
        }
        Ok(())
    };

    let redis_url = non_empty(vars::REDIS_URL, &s.redis_url)?;
    let host = non_empty(vars::REDISHOST, &s.redis_host)?;
    let port = non_empty(vars::REDISPORT, &s.redis_port)?;
    let password = s.redis_password.as_deref();
    let user = s.redis_user.as_deref();
    let mut parts = None;
    match (redis_url, host) {
        (Some(text), _) => {
            url(
                vars::REDIS_URL,
                Role::Cache,
                text,
                &mut wanted,
                &mut ignored,
                &mut warnings,
            )?;
            if host.is_some() {
                ignored.push(
                    "REDISHOST/REDISPORT/REDISUSER/REDISPASSWORD: REDIS_URL is set and wins".into(),
                );
            }
        }
        (None, Some(host)) => {
            let port = match port {
                None => 6379,
                Some(p) => match p.parse::<u16>() {
                    Ok(p) if p > 0 => p,
                    _ => return Err(invalid(vars::REDISPORT, Some(p), "is not a port (1-65535)")),
                },
            };
            if host.contains(['/', '@', ' ']) {
                return Err(invalid(
                    vars::REDISHOST,
                    None,
                    "must be a host name or address, not a URL (put URLs in REDIS_URL)",
                ));
            }
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if host.contains(':') && bare.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(invalid(
                    vars::REDISHOST,
                    Some(host),
                    "must be a host name without a port (put the port in REDISPORT)",
                ));
            }
            parts = Some(Target::from_parts(host, port, user, password));
        }
        (None, None) => {
            if password.is_some_and(|p| !p.is_empty()) || port.is_some() {
                return Err(ConfigError::Conflict {
                    var: vars::REDISHOST,
                    problem: "is not set, but REDISPORT or REDISPASSWORD is: set REDISHOST, or give the whole URL in REDIS_URL".into(),
                });
            }
        }
    }

    let broker_text = non_empty(vars::CELERY_BROKER_URL, &s.celery_broker_url)?;
    if let Some(text) = broker_text {
        url(
            vars::CELERY_BROKER_URL,
            Role::Broker,
            text,
            &mut wanted,
            &mut ignored,
            &mut warnings,
        )?;
    }
    if let Some(text) = non_empty(vars::CELERY_RESULT_BACKEND, &s.celery_result_backend)? {
        // Celery's `by_url`: `redis+socket://` is the redis backend with a `socket://` URL;
        // `redis`, `rediss` and `sentinel` are its Redis backends.
        let scheme = text.split("://").next().unwrap_or("").to_ascii_lowercase();
        let backend = scheme.split('+').next().unwrap_or("");
        let redis_like = text.contains("://")
            && (matches!(backend, "redis" | "rediss" | "sentinel")
                || matches!(scheme.as_str(), "unix" | "socket"));
        if redis_like {
            url(
                vars::CELERY_RESULT_BACKEND,
                Role::ResultBackend,
                text,
                &mut wanted,
                &mut ignored,
                &mut warnings,
            )?;
        } else {
            // Named only when it is a URL's scheme (`db+postgresql://`, `rpc://`) or a
            // known alias (`django-db`), never when it could be a credential.
            const ALIASES: [&str; 4] = ["django-db", "django-cache", "disabled", "rpc"];
            let scheme = text.split(':').next().unwrap_or("").to_ascii_lowercase();
            let clean = if text.contains("://") {
                scheme.len() <= 24
                    && !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-._".contains(c))
            } else {
                ALIASES.contains(&scheme.as_str())
            };
            ignored.push(if clean {
                format!(
                    "CELERY_RESULT_BACKEND: the {scheme} backend is not Redis, so it is not probed"
                )
            } else {
                "CELERY_RESULT_BACKEND: not a Redis URL, so it is not probed".to_string()
            });
        }
    }
    if let Some(p) = parts {
        wanted.insert(0, p);
    }

    let any_redis = redis_url.is_some() || host.is_some() || broker_text.is_some();
    let default_target =
        wanted.is_empty() && !any_redis && ignored.iter().all(|n| !n.contains("recognised"));
    if default_target {
        wanted
            .push(Target::parse(Role::Cache, DEFAULT_REDIS_URL).expect("the default URL is valid"));
    }
    if wanted.is_empty() {
        return Err(ConfigError::Conflict {
            var: if broker_text.is_some() {
                vars::CELERY_BROKER_URL
            } else {
                vars::REDIS_URL
            },
            problem: "no Redis is left to probe: Redis Cluster over TLS (rediss+cluster://) is recognised but not supported yet; set REDIS_URL to redis+cluster:// or to one node's rediss:// URL meanwhile".into(),
        });
    }
    let extra = extra_roots(s)?;
    let mut merged: Vec<Target> = Vec::new();
    for mut t in wanted {
        t.add_roots(&extra);
        if let Address::Tcp { tls: Some(tls), .. } = t.address() {
            crate::redis::tls::check_files(tls).map_err(|problem| {
                let var = extra
                    .iter()
                    .find(|r| problem.starts_with(r.origin))
                    .map(|r| {
                        if r.origin == "SSL_CERT_FILE" {
                            vars::SSL_CERT_FILE
                        } else {
                            vars::SSL_CERT_DIR
                        }
                    })
                    .unwrap_or_else(|| source_var(&t));
                invalid(var, None, &problem)
            })?;
        }
        match merged.iter_mut().find(|m| m.same_connection(&t)) {
            Some(m) => m.absorb(&t),
            None => merged.push(t),
        }
    }
    Ok((merged, default_target, ignored, warnings))
}

/// SSL_CERT_FILE and SSL_CERT_DIR: roots added to every TLS connection (the TLS targets'
/// and the webhooks'), as OpenSSL's default paths are for the app's Python.
pub(super) fn extra_roots(s: &Settings) -> Result<Vec<Roots>, ConfigError> {
    let mut extra = Vec::new();
    for (var, value) in [
        (vars::SSL_CERT_FILE, &s.ssl_cert_file),
        (vars::SSL_CERT_DIR, &s.ssl_cert_dir),
    ] {
        if let Some(path) = non_empty(var, value)? {
            extra.push(Roots {
                origin: var.env,
                path: path.to_string(),
            });
        }
    }
    Ok(extra)
}

/// The variable a target was read from, for an error about its URL.
fn source_var(t: &Target) -> Var {
    match t.sources().first().copied() {
        Some("CELERY_BROKER_URL") => vars::CELERY_BROKER_URL,
        Some("CELERY_RESULT_BACKEND") => vars::CELERY_RESULT_BACKEND,
        _ => vars::REDIS_URL,
    }
}
