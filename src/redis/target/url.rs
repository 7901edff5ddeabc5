//! A URL read as the app's own library reads it for a role: redis-py's `from_url` for the
//! cache, kombu's `Connection` for the broker, Celery's Redis backend for the result backend
//! (docs/urls.md has the table this implements, checked against the libraries in
//! tests/urls.rs).

use super::ssl::tls_settings;
use super::{Address, Role, Target, UrlError};
use crate::redis::pyurl;

/// A URL read for one role: the target to probe (`None` for a form that is recognised but
/// not probed, such as Sentinel), notes on what it holds that the probe does not use, and
/// warnings where the app's own library would read it differently or refuse it.
#[derive(Debug, Clone)]
pub struct Read {
    pub target: Option<Target>,
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

/// The library that reads a role's URL in the app.
pub(super) fn library(role: Role) -> &'static str {
    match role {
        Role::Cache => "redis-py",
        Role::Broker => "kombu",
        Role::ResultBackend => "Celery",
    }
}

/// The kinds of connection redis-py makes, as the bits of [`APP_ONLY`]'s masks: each
/// class takes its own keyword arguments and refuses the others.
const TCP: u8 = 1;
const TLS: u8 = 2;
const UNIX: u8 = 4;
const ANY: u8 = TCP | TLS | UNIX;

/// Query parameters the app's clients know that a probe has no use for, with why, and the
/// connections redis-py 8.1 takes them for (elsewhere it refuses to connect).
const APP_ONLY: &[(&str, &str, u8)] = &[
    (
        "socket_timeout",
        "the app's read timeout; a probe's is SIDECAR_PROBE_TIMEOUT",
        ANY,
    ),
    (
        "socket_connect_timeout",
        "the app's connect timeout; a probe's is SIDECAR_PROBE_TIMEOUT",
        ANY,
    ),
    (
        "socket_keepalive",
        "the app's TCP keepalive; a probe uses its connection every interval",
        TCP | TLS,
    ),
    (
        "socket_keepalive_options",
        "the app's TCP keepalive; a probe uses its connection every interval",
        TCP | TLS,
    ),
    (
        "health_check_interval",
        "the app's idle check; a probe PINGs every interval",
        ANY,
    ),
    (
        "max_connections",
        "the app's pool size; the sidecar holds at most 2 connections per Redis",
        ANY,
    ),
    (
        "retry_on_timeout",
        "the app's retries; a probe reports a failure instead of hiding it",
        ANY,
    ),
    (
        "retry_on_error",
        "the app's retries; a probe reports a failure instead of hiding it",
        ANY,
    ),
    (
        "client_name",
        "the app's connection name; the sidecar names its own connections",
        ANY,
    ),
    (
        "protocol",
        "the app's RESP version; the sidecar speaks RESP2, which every server answers",
        ANY,
    ),
    (
        "decode_responses",
        "how the app's client decodes replies",
        ANY,
    ),
    ("encoding", "how the app's client decodes replies", ANY),
    (
        "encoding_errors",
        "how the app's client decodes replies",
        ANY,
    ),
    ("socket_read_size", "the app's read buffer", ANY),
    (
        "legacy_responses",
        "how the app's client shapes replies",
        ANY,
    ),
    ("lib_name", "the app's CLIENT SETINFO", ANY),
    ("lib_version", "the app's CLIENT SETINFO", ANY),
    (
        "ssl_min_version",
        "the sidecar's TLS (rustls) speaks TLS 1.2 and 1.3 only",
        TLS,
    ),
    (
        "ssl_ciphers",
        "the sidecar's TLS (rustls) uses its own safe cipher list",
        TLS,
    ),
    (
        "ssl_include_verify_flags",
        "OpenSSL verify flags; rustls checks the chain its own way",
        TLS,
    ),
    (
        "ssl_exclude_verify_flags",
        "OpenSSL verify flags; rustls checks the chain its own way",
        TLS,
    ),
    (
        "ssl_validate_ocsp",
        "OCSP is not checked by the sidecar",
        TLS,
    ),
    (
        "ssl_validate_ocsp_stapled",
        "OCSP is not checked by the sidecar",
        TLS,
    ),
    (
        "ssl_ocsp_expected_cert",
        "OCSP is not checked by the sidecar",
        TLS,
    ),
];

/// Parameters kombu takes in a broker URL besides `ssl_*` (its `Connection` arguments).
const KOMBU_ARGS: &[&str] = &[
    "insist",
    "connect_timeout",
    "login_method",
    "heartbeat",
    "credential_provider",
];

/// A parameter name fit to repeat in a message.
fn shown(name: &str) -> String {
    if !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        format!("\"{name}\"")
    } else {
        "a parameter with an odd name".to_string()
    }
}

pub(super) struct Query {
    pairs: Vec<(String, String)>,
    role: Role,
}

impl Query {
    /// redis-py keeps a parameter's first value; kombu and Celery (a dict of `parse_qsl`)
    /// its last.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        let mut found = self.pairs.iter().filter(|(k, _)| k == name);
        let hit = match self.role {
            Role::Cache => found.next(),
            _ => found.next_back(),
        };
        hit.map(|(_, v)| v.as_str())
    }

    pub(super) fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for (k, _) in &self.pairs {
            if !names.contains(&k.as_str()) {
                names.push(k);
            }
        }
        names
    }
}

impl Target {
    /// Reads a URL as the app's library for `role` reads it (redis-py for the cache, kombu
    /// for the broker, Celery for the result backend; see docs/urls.md) and returns only
    /// the target, for tests and callers that do not report notes.
    pub fn parse(role: Role, input: &str) -> Result<Target, UrlError> {
        let read = Target::read(role, "the URL", input)?;
        read.target.ok_or_else(|| UrlError(read.notes.join("; ")))
    }

    /// Reads `input`, the value of `variable`, for `role`. Error texts never contain the
    /// URL, which may hold a password.
    pub fn read(role: Role, variable: &'static str, input: &str) -> Result<Read, UrlError> {
        Target::read_url(role, variable, input).map_err(|e| {
            if unencoded_userinfo(input) {
                UrlError(
                    "the URL's user or password seems to hold a /, ?, # or @ that is not percent-encoded, so the URL is cut there: percent-encode the password (/ as %2F, ? as %3F, # as %23, @ as %40, : as %3A)".into(),
                )
            } else {
                e
            }
        })
    }

    fn read_url(role: Role, variable: &'static str, input: &str) -> Result<Read, UrlError> {
        let mut text = input.trim();
        let lib = library(role);
        let mut notes = Vec::new();
        let mut warnings = Vec::new();
        if text.len() != input.len() {
            warnings.push(format!(
                "{variable}: the value has whitespace around it, which the sidecar strips and {lib} does not: the app would refuse the URL or misread its host"
            ));
        }
        let scheme = pyurl::split(text).scheme;
        if !text.contains("://") || scheme.is_empty() {
            return Err(UrlError(
                "not a valid URL; expected redis://[user:password@]host:port/db".into(),
            ));
        }
        if matches!(scheme.as_str(), "sentinel" | "redis+sentinel") {
            let target = super::sentinel_url::read(role, variable, &scheme, text, &mut warnings)?;
            return Ok(Read {
                target: Some(target),
                notes,
                warnings,
            });
        }
        if scheme.ends_with("+cluster") {
            if role == Role::Broker {
                return Err(UrlError(
                    "Redis Cluster cannot be Celery's broker: kombu's Redis transport does not support Cluster; use one Redis, or Redis Sentinel (sentinel://) for failover".into(),
                ));
            }
            if role == Role::Cache && scheme == "redis+cluster" {
                let target = super::cluster_url::read(role, variable, text, &mut warnings)?;
                return Ok(Read {
                    target: Some(target),
                    notes,
                    warnings,
                });
            }
            notes.push(if role == Role::ResultBackend {
                format!(
                    "{variable}: Celery's Redis result backend does not support Redis Cluster ({scheme}://), so it is not probed"
                )
            } else {
                format!(
                    "{variable}: Redis Cluster over TLS ({scheme}://) is recognised but not supported yet, so it is not probed"
                )
            });
            return Ok(Read {
                target: None,
                notes,
                warnings,
            });
        }
        if role == Role::Broker
            && let Some((first, _)) = text.split_once(';')
        {
            notes.push(format!(
                "{variable}: the failover URLs after the first ';' are not probed (kombu turns to them only when the first fails)"
            ));
            text = first;
        }
        let url = pyurl::split(text);
        url.check_brackets().map_err(|e| UrlError(e.to_string()))?;
        if role != Role::Broker && url.raw_scheme != scheme {
            warnings.push(format!(
                "{variable}: {lib} accepts the scheme only in lowercase ({scheme}://): the app would refuse this URL"
            ));
        }
        let query = Query {
            pairs: pyurl::query_pairs(url.query),
            role,
        };
        let decoded = |raw: Option<&str>| raw.map(pyurl::unquote).filter(|v| !v.is_empty());
        let (mut user, mut password) = {
            let (u, p) = url.userinfo();
            (decoded(u), decoded(p))
        };
        let mut used: Vec<&str> = Vec::new();
        // Credentials in the query: redis-py takes them when the URL has none; Celery's
        // backend lets them override; kombu refuses them (below, as any other).
        if role != Role::Broker {
            for (name, slot) in [("username", &mut user), ("password", &mut password)] {
                if let Some(v) = query.get(name) {
                    used.push(name);
                    if role == Role::ResultBackend || slot.is_none() {
                        *slot = Some(v.to_string());
                    }
                }
            }
        }
        if user.is_some() && password.is_none() {
            warnings.push(format!(
                "{variable}: the URL has a user and no password, so {lib} logs in with the user and an empty password, and so does the sidecar (the user is shown as ***, in case it is a password written without the colon: redis://:PASSWORD@host)"
            ));
        }
        let address;
        let db: i64;
        match scheme.as_str() {
            "redis" | "rediss" => {
                let host = match url.hostname() {
                    Some(h) => pyurl::unquote(&h),
                    None => {
                        let fallback = if role == Role::Broker {
                            "127.0.0.1"
                        } else {
                            "localhost"
                        };
                        warnings.push(format!(
                            "{variable}: the URL names no host, so {lib} connects to {fallback}, and so does the sidecar"
                        ));
                        fallback.to_string()
                    }
                };
                if url.path.contains('@')
                    || url.fragment.contains('@')
                    || (url.hostname().is_none() && url.query.contains('@'))
                {
                    return Err(UrlError("an @ after the host".into()));
                }
                let port = url
                    .port()
                    .map_err(|e| UrlError(e.to_string()))?
                    .unwrap_or(6379);
                if port == 0 {
                    return Err(UrlError("port 0 is not a valid Redis port".into()));
                }
                let path = pyurl::unquote(url.path);
                db = match role {
                    Role::Cache => match query.get("db") {
                        Some(d) => {
                            used.push("db");
                            parse_db(d.trim())?
                        }
                        None => {
                            let digits = path.replace('/', "");
                            match digits.trim().parse::<i64>() {
                                _ if digits.is_empty() => 0,
                                Ok(_) => parse_db(digits.trim())?,
                                Err(_) => {
                                    warnings.push(format!(
                                        "{variable}: the path is not a database number, so redis-py ignores it and uses database 0, and so does the sidecar"
                                    ));
                                    0
                                }
                            }
                        }
                    },
                    Role::Broker => {
                        let vhost = path.strip_prefix('/').unwrap_or(&path);
                        let vhost = vhost.strip_prefix('/').unwrap_or(vhost);
                        if vhost.is_empty() {
                            0
                        } else {
                            parse_db(vhost)?
                        }
                    }
                    Role::ResultBackend => {
                        if let Some(d) = query.get("db") {
                            used.push("db");
                            parse_db(d.trim())?
                        } else {
                            let p = path.trim_matches('/');
                            if p.is_empty() { 0 } else { parse_db(p)? }
                        }
                    }
                };
                let tls = tls_settings(
                    role,
                    variable,
                    &scheme,
                    &url,
                    &query,
                    &mut used,
                    &mut warnings,
                )?;
                address = Address::Tcp { host, port, tls };
            }
            "unix" | "redis+unix" => {
                match (role, scheme.as_str()) {
                    (Role::Cache, "unix") => {}
                    (Role::Cache, _) => warnings.push(format!(
                        "{variable}: redis-py refuses redis+unix:// (it takes redis://, rediss:// and unix://): write unix:///path/to/redis.sock?db=N"
                    )),
                    (Role::Broker, "unix") => warnings.push(format!(
                        "{variable}: kombu refuses unix:// (No such transport: unix), so the worker would not start: write redis+socket:///path/to/redis.sock?virtual_host=N"
                    )),
                    (Role::Broker, _) => warnings.push(format!(
                        "{variable}: kombu does not read redis+unix:// as a socket: it connects to 127.0.0.1:6379 database 0 instead; the sidecar probes the socket: write redis+socket:///path/to/redis.sock?virtual_host=N"
                    )),
                    (Role::ResultBackend, _) => warnings.push(format!(
                        "{variable}: Celery refuses {scheme}:// for a result backend: write redis+socket:///path/to/redis.sock?virtual_host=N"
                    )),
                }
                if url.path.contains('@') {
                    return Err(UrlError("an @ in the socket path".into()));
                }
                let path = pyurl::unquote(url.path);
                if path.is_empty() || path == "/" {
                    return Err(UrlError("the unix socket URL has no path".into()));
                }
                // The redis crate's spelling, accepted in redis+unix:// as before.
                if scheme == "redis+unix" {
                    if user.is_none()
                        && let Some(u) = query.get("user")
                    {
                        user = Some(u.to_string());
                    }
                    if password.is_none()
                        && let Some(p) = query.get("pass")
                    {
                        password = Some(p.to_string());
                    }
                    used.extend(["user", "pass"]);
                }
                db = match query.get("db") {
                    Some(d) => {
                        used.push("db");
                        parse_db(d.trim())?
                    }
                    None => 0,
                };
                address = Address::Unix { path };
            }
            "redis+socket" => {
                if role == Role::Cache {
                    warnings.push(format!(
                        "{variable}: redis-py refuses redis+socket:// (a kombu and Celery form): write unix:///path/to/redis.sock?db=N"
                    ));
                }
                if url.path.contains('@') {
                    return Err(UrlError("an @ in the socket path".into()));
                }
                let path = pyurl::unquote(url.path.strip_prefix('/').unwrap_or(url.path));
                if path.is_empty() {
                    return Err(UrlError("the socket URL has no path".into()));
                }
                let vhost = query.get("virtual_host").map(str::to_string);
                used.push("virtual_host");
                let mut number = match vhost {
                    None => 0,
                    Some(v) => {
                        let v = v.strip_prefix('/').unwrap_or(&v).to_string();
                        if v.is_empty() { 0 } else { parse_db(&v)? }
                    }
                };
                if let Some(d) = query.get("db") {
                    used.push("db");
                    match role {
                        Role::Broker => warnings.push(format!(
                            "{variable}: kombu ignores db= in redis+socket:// (the database is ?virtual_host=N), and so does the sidecar"
                        )),
                        _ => number = parse_db(d.trim())?,
                    }
                }
                db = number;
                address = Address::Unix {
                    path: format!("/{path}"),
                };
            }
            "socket" => {
                return Err(UrlError(
                    "socket:// is refused by Celery and kombu (no such backend or transport): write redis+socket:///path/to/redis.sock?virtual_host=N".into(),
                ));
            }
            other => {
                return Err(UrlError(format!(
                    "scheme \"{}\" is not supported; use redis://, rediss://, unix:// or redis+socket://",
                    other.chars().take(24).collect::<String>()
                )));
            }
        }
        if url.fragment == "insecure" && matches!(address, Address::Tcp { .. }) {
            warnings.push(format!(
                "{variable}: #insecure is the Rust redis crate's spelling, which no Python client reads: write ?ssl_cert_reqs=none"
            ));
        }
        // Every other parameter: noted, warned about, never dropped silently.
        let kind = match &address {
            Address::Tcp { tls: None, .. } => TCP,
            Address::Tcp { tls: Some(_), .. } => TLS,
            Address::Unix { .. } => UNIX,
            Address::Sentinel(_) => TCP,
        };
        for name in query.names() {
            if used.contains(&name) {
                continue;
            }
            let refused_by_kombu = role == Role::Broker
                && !name.starts_with("ssl_")
                && !KOMBU_ARGS.contains(&name)
                && scheme != "redis+socket";
            let known = APP_ONLY.iter().find(|(n, _, _)| *n == name);
            if refused_by_kombu {
                warnings.push(format!(
                    "{variable}: kombu refuses the parameter {} in a broker URL (unexpected keyword argument), so the worker would not start: set it in broker_transport_options; the sidecar does not use it",
                    shown(name)
                ));
            } else if name == "credential_provider" {
                warnings.push(format!(
                    "{variable}: the sidecar cannot run a Python credential_provider: it sends the URL's user and password"
                ));
            } else if KOMBU_ARGS.contains(&name) && role == Role::Broker {
                notes.push(format!(
                    "{variable} ?{name}: kombu's, not used by the probe"
                ));
            } else if name == "virtual_host" && role == Role::ResultBackend {
                notes.push(format!(
                    "{variable} ?virtual_host: Celery ignores it here (the database is the path), and so does the sidecar"
                ));
            } else if let Some((_, why, kinds)) = known {
                if kinds & kind != 0 {
                    notes.push(format!("{variable} ?{name}: not used by the probe ({why})"));
                } else {
                    warnings.push(format!(
                        "{variable}: redis-py refuses the parameter {} for this kind of connection (unexpected keyword argument), so the app could not connect; the sidecar does not use it",
                        shown(name)
                    ));
                }
            } else if name == "ssl_password" {
                warnings.push(format!(
                    "{variable}: an encrypted client key (ssl_password) is not supported: give the sidecar the key unencrypted"
                ));
            } else if name.starts_with("ssl_") && kind != TLS {
                warnings.push(format!(
                    "{variable}: the parameter {} is not used here (TLS parameters apply to rediss:// only)",
                    shown(name)
                ));
            } else {
                let consequence = match role {
                    Role::ResultBackend => {
                        "Celery hands it to redis-py, which would refuse to connect: unexpected keyword argument"
                    }
                    _ => "redis-py would refuse to connect: unexpected keyword argument",
                };
                warnings.push(format!(
                    "{variable}: unknown parameter {} ({consequence}); the sidecar does not use it",
                    shown(name)
                ));
            }
        }
        Ok(Read {
            target: Some(Target::new(role, address, db, user, password)),
            notes,
            warnings,
        })
    }
}

/// True when a URL's text has an `@` after a `/`, `?` or `#` that follows the scheme: a
/// password holding one of those, unencoded, which cut the URL short (`redis://:pa/ss@h`).
fn unencoded_userinfo(input: &str) -> bool {
    let Some((_, rest)) = input.trim().split_once("://") else {
        return false;
    };
    match rest.rfind('@') {
        Some(at) => rest[..at].contains(['/', '?', '#']),
        None => false,
    }
}

pub(super) fn parse_db(text: &str) -> Result<i64, UrlError> {
    match text.parse::<i64>() {
        Ok(db) if db >= 0 => Ok(db),
        // Shown only when it cannot be the tail of a password that held a '/'.
        _ if text.len() <= 12 && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
            Err(UrlError(format!("database \"{text}\" is not a number >= 0")))
        }
        _ => Err(UrlError(
            "the database part of the URL is not a number >= 0 (a password with /, @, : or # must be percent-encoded)"
                .into(),
        )),
    }
}
