//! A Redis target: one server and database the app uses, the roles it plays, and its URL,
//! parsed once and shown only redacted.

use std::fmt;

use crate::pyurl;

/// What the app uses a Redis for; the `role` label of every Redis metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Cache,
    Broker,
    ResultBackend,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Cache => "cache",
            Role::Broker => "broker",
            Role::ResultBackend => "result_backend",
        }
    }

    /// The name of this role's check in `/healthz` and `/readyz`.
    pub fn check_name(self) -> String {
        format!("redis:{}", self.as_str())
    }
}

/// Where a target lives, as a person reads it.
#[derive(Clone, PartialEq, Eq)]
pub enum Address {
    /// `tls`: `None` for plain TCP.
    Tcp {
        host: String,
        port: u16,
        tls: Option<Tls>,
    },
    Unix {
        path: String,
    },
}

/// How a TLS connection is made, from the URL's `ssl_*` parameters (as redis-py, kombu and
/// Celery read them) and `SSL_CERT_FILE` / `SSL_CERT_DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// False with `ssl_cert_reqs=none`: encrypted, the certificate not checked.
    pub verify: bool,
    /// False with `ssl_check_hostname=false`: the chain is checked, not the name.
    pub check_hostname: bool,
    /// Roots trusted beside the built-in Mozilla set, in the order they are tried.
    pub roots: Vec<Roots>,
    /// Presented to a server that asks for one (`tls-auth-clients`).
    pub client_cert: Option<ClientCert>,
}

/// A file or directory of trusted CA certificates (PEM) and the setting that named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// `ssl_ca_certs`, `ssl_ca_path`, `SSL_CERT_FILE` or `SSL_CERT_DIR`.
    pub origin: &'static str,
    pub path: String,
}

/// `ssl_certfile` and `ssl_keyfile` (the key may sit in the certificate's file, as
/// Python's `load_cert_chain` allows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: String,
    pub key: Option<String>,
}

impl Tls {
    /// What redis-py does with `rediss://` and no parameter: verify chain and name.
    pub fn verified() -> Tls {
        Tls {
            verify: true,
            check_hostname: true,
            roots: Vec::new(),
            client_cert: None,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp { host, port, .. } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Address::Tcp { host, port, .. } => write!(f, "{host}:{port}"),
            Address::Unix { path } => f.write_str(path),
        }
    }
}

/// One Redis server and database to probe. Several roles share a target when their URLs
/// name the same server, database and credentials.
#[derive(Clone)]
pub struct Target {
    roles: Vec<Role>,
    address: Address,
    db: i64,
    user: Option<String>,
    /// Kept out of `Debug` and `Display`; only `connection_info` hands it to the redis crate.
    password: Option<String>,
    redacted: String,
    /// The variables this target came from (`REDIS_URL`, `REDISHOST`...), for fixes that
    /// name what the user set; empty for the local default.
    sources: Vec<&'static str>,
}

/// Why a URL was refused; the caller adds the variable's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

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
fn library(role: Role) -> &'static str {
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

/// The four TLS parameters Celery's Redis backend reads from a `rediss://` URL.
const CELERY_SSL: &[&str] = &[
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
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

struct Query {
    pairs: Vec<(String, String)>,
    role: Role,
}

impl Query {
    /// redis-py keeps a parameter's first value; kombu and Celery (a dict of `parse_qsl`)
    /// its last.
    fn get(&self, name: &str) -> Option<&str> {
        let mut found = self.pairs.iter().filter(|(k, _)| k == name);
        let hit = match self.role {
            Role::Cache => found.next(),
            _ => found.next_back(),
        };
        hit.map(|(_, v)| v.as_str())
    }

    fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for (k, _) in &self.pairs {
            if !names.contains(&k.as_str()) {
                names.push(k);
            }
        }
        names
    }
}

/// redis-py's `to_bool`: false for 0, F, FALSE, N, NO (any case); kombu's reading of
/// `ssl_check_hostname`: false only for "false".
fn truthy(role: Role, value: &str) -> bool {
    match role {
        Role::Broker => !value.eq_ignore_ascii_case("false"),
        _ => !["0", "F", "FALSE", "N", "NO"].contains(&value.to_ascii_uppercase().as_str()),
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
        if scheme.ends_with("sentinel") {
            notes.push(format!(
                "{variable}: Redis Sentinel ({scheme}://) is recognised but not supported yet, so it is not probed"
            ));
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
        let redacted = redact(&address, db, user.as_deref(), password.is_some());
        Ok(Read {
            target: Some(Target {
                roles: vec![role],
                address,
                db,
                user,
                password,
                redacted,
                sources: Vec::new(),
            }),
            notes,
            warnings,
        })
    }

    /// Adds trusted roots (`SSL_CERT_FILE`, `SSL_CERT_DIR`) after the URL's own, when the
    /// target speaks TLS.
    pub fn add_roots(&mut self, roots: &[Roots]) {
        if let Address::Tcp { tls: Some(tls), .. } = &mut self.address {
            tls.roots.extend(roots.iter().cloned());
        }
    }

    /// The variables this target came from.
    pub fn sources(&self) -> &[&'static str] {
        &self.sources
    }

    /// The target, remembering the variable that gave it.
    pub fn with_source(mut self, variable: &'static str) -> Target {
        self.sources = vec![variable];
        self
    }

    /// Where the user writes this target's credentials, for a fix: `REDISPASSWORD`, `the
    /// URL in CELERY_BROKER_URL`, or both joined.
    pub fn credentials_home(&self) -> String {
        if self.sources.is_empty() {
            return "REDIS_URL (no Redis variable is set)".to_string();
        }
        let homes: Vec<String> = self
            .sources
            .iter()
            .map(|s| match *s {
                "REDISHOST" => "REDISUSER/REDISPASSWORD".to_string(),
                url => format!("the URL in {url}"),
            })
            .collect();
        homes.join(" and ")
    }

    /// How to send a password that is missing: in the URL of each URL variable, or in
    /// REDISPASSWORD.
    pub fn password_fix(&self) -> String {
        let urls: Vec<&str> = self
            .sources
            .iter()
            .copied()
            .filter(|s| *s != "REDISHOST")
            .collect();
        let mut ways = Vec::new();
        if self.sources.contains(&"REDISHOST") {
            ways.push("set REDISPASSWORD".to_string());
        }
        if !urls.is_empty() {
            ways.push(format!(
                "put it in the URL of {} (redis://default:PASSWORD@host:port)",
                urls.join(" and ")
            ));
        }
        if ways.is_empty() {
            ways.push("set REDIS_URL with it (redis://default:PASSWORD@host:port)".into());
        }
        ways.join("; ")
    }

    /// Builds the cache URL from Railway's `REDISHOST`/`REDISPORT`/`REDISUSER`/`REDISPASSWORD`.
    pub fn from_parts(host: &str, port: u16, user: Option<&str>, password: Option<&str>) -> Target {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let address = Address::Tcp {
            host,
            port,
            tls: None,
        };
        let password = password.filter(|p| !p.is_empty()).map(str::to_string);
        // Railway sets REDISUSER=default with or without a password: without one, no AUTH.
        let user = user
            .filter(|u| !u.is_empty() && password.is_some())
            .map(str::to_string);
        let redacted = redact(&address, 0, user.as_deref(), password.is_some());
        Target {
            roles: vec![Role::Cache],
            address,
            db: 0,
            user,
            password,
            redacted,
            sources: vec!["REDISHOST"],
        }
    }

    /// The roles this target plays, in the fixed order cache, broker, result_backend.
    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    /// The checks this target's probe reports under, one per role: `redis:<role>`.
    pub fn check_names(&self) -> Vec<String> {
        self.roles.iter().map(|r| r.check_name()).collect()
    }

    /// The URL with its password replaced by `***`, port and db spelled out.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    pub fn address(&self) -> &Address {
        &self.address
    }

    pub fn db(&self) -> i64 {
        self.db
    }

    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The user as messages show it: `***` when there is no password, since that "user" may
    /// be a password written without its colon (`redis://PASSWORD@host`).
    pub fn user_shown(&self) -> &str {
        match (&self.user, &self.password) {
            (Some(u), Some(_)) => u,
            (Some(_), None) => "***",
            (None, _) => "default",
        }
    }

    /// What AUTH sends, as redis-py sends it: the user and the password, the password alone,
    /// or the user and an empty password; `None` for no AUTH at all.
    pub fn auth(&self) -> Option<(Option<&str>, &str)> {
        match (self.user.as_deref(), self.password.as_deref()) {
            (None, None) => None,
            (user, password) => Some((user, password.unwrap_or(""))),
        }
    }

    /// The password, for scrubbing it out of any text that came back from elsewhere.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// True when `other` names the same server, database and credentials.
    pub fn same_connection(&self, other: &Target) -> bool {
        self.address == other.address
            && self.db == other.db
            && self.user == other.user
            && self.password == other.password
    }

    /// Adds `other`'s roles to this target (after `same_connection` said they are one).
    pub fn absorb(&mut self, other: &Target) {
        for role in &other.roles {
            if !self.roles.contains(role) {
                self.roles.push(*role);
            }
        }
        self.roles.sort();
        for source in &other.sources {
            if !self.sources.contains(source) {
                self.sources.push(source);
            }
        }
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("roles", &self.roles)
            .field("url", &self.redacted)
            .finish()
    }
}

/// The TLS settings of a `redis://` or `rediss://` URL for `role`, `None` for plain TCP.
/// The `ssl_*` parameters read are added to `used`.
fn tls_settings<'q>(
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

fn parse_db(text: &str) -> Result<i64, UrlError> {
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

/// The URL as `config`, `/healthz` and logs show it: the password replaced by `***`, port
/// and database spelled out, and every TLS setting that changes what is trusted.
fn redact(address: &Address, db: i64, user: Option<&str>, has_password: bool) -> String {
    let userinfo = match (user, has_password) {
        (Some(u), true) => format!("{u}:***@"),
        // A user without a password may be a password written without its colon.
        (Some(_), false) => "***@".to_string(),
        (None, true) => ":***@".to_string(),
        (None, false) => String::new(),
    };
    match address {
        Address::Tcp { tls, .. } => {
            let scheme = if tls.is_some() { "rediss" } else { "redis" };
            let mut params: Vec<String> = Vec::new();
            if let Some(t) = tls {
                if !t.verify {
                    params.push("ssl_cert_reqs=none".into());
                } else if !t.check_hostname {
                    params.push("ssl_check_hostname=false".into());
                }
                for r in t.roots.iter().filter(|r| r.origin.starts_with("ssl_")) {
                    params.push(format!("{}={}", r.origin, r.path));
                }
                if let Some(c) = &t.client_cert {
                    params.push(format!("ssl_certfile={}", c.cert));
                    if let Some(k) = &c.key {
                        params.push(format!("ssl_keyfile={k}"));
                    }
                }
            }
            let query = if params.is_empty() {
                String::new()
            } else {
                format!("?{}", params.join("&"))
            };
            format!("{scheme}://{userinfo}{address}/{db}{query}")
        }
        Address::Unix { path } => format!("unix://{userinfo}{path}?db={db}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn railway_url_is_redacted_with_port_and_db() {
        let t = Target::parse(
            Role::Cache,
            "redis://default:s3cr3t@redis.railway.internal:6379",
        )
        .unwrap();
        assert_eq!(
            t.redacted(),
            "redis://default:***@redis.railway.internal:6379/0"
        );
        assert_eq!(t.user(), Some("default"));
        assert_eq!(t.password(), Some("s3cr3t"));
        assert!(!format!("{t:?}").contains("s3cr3t"));
    }

    #[test]
    fn redaction_covers_every_form() {
        let cases = [
            ("redis://127.0.0.1", "redis://127.0.0.1:6379/0"),
            ("redis://:pw@h:1/2", "redis://:***@h:1/2"),
            ("rediss://u:p%40w@h/3", "rediss://u:***@h:6379/3"),
            ("redis://[::1]:6380/1", "redis://[::1]:6380/1"),
            ("redis://h?db=4", "redis://h:6379/4"),
            (
                "redis+unix:///run/redis.sock?db=2&pass=pw",
                "unix://:***@/run/redis.sock?db=2",
            ),
            (
                "unix:///tmp/r.sock?username=app&password=pw",
                "unix://app:***@/tmp/r.sock?db=0",
            ),
            (
                "unix://:pw@/tmp/r.sock?db=3",
                "unix://:***@/tmp/r.sock?db=3",
            ),
            (
                "rediss://h?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem&ssl_check_hostname=false",
                "rediss://h:6379/0?ssl_check_hostname=false&ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem",
            ),
        ];
        for (input, want) in cases {
            let t = Target::parse(Role::Cache, input).unwrap();
            assert_eq!(t.redacted(), want, "{input}");
            assert!(!t.redacted().contains("pw"), "{input}");
        }
    }

    #[test]
    fn tls_without_verification_is_shown() {
        for url in [
            "rediss://h:6380?ssl_cert_reqs=CERT_NONE",
            "rediss://h:6380/0#insecure",
        ] {
            let t = Target::parse(Role::Cache, url).unwrap();
            assert_eq!(
                t.redacted(),
                "rediss://h:6380/0?ssl_cert_reqs=none",
                "{url}"
            );
        }
        let t = Target::parse(Role::Cache, "rediss://h:6380?ssl_cert_reqs=required").unwrap();
        assert_eq!(t.redacted(), "rediss://h:6380/0");
    }

    #[test]
    fn percent_encoded_password_is_decoded() {
        let t = Target::parse(Role::Cache, "rediss://u:p%40w@h/3").unwrap();
        assert_eq!(t.password(), Some("p@w"));
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        let cases = [
            ("http://u:hunter2@h:6379", "scheme \"http\""),
            ("redis://u:hunter2@h:99999", "invalid port"),
            ("redis://u:hunter2@h:6379/-1", "database \"-1\""),
            ("redis://u:hunter2@h:6379?db=x", "database \"x\""),
            (
                "rediss://u:hunter2@h?ssl_cert_reqs=maybe",
                "ssl_cert_reqs \"maybe\"",
            ),
            (
                "rediss://u:hunter2@h?ssl_keyfile=/k.pem",
                "ssl_keyfile is given without",
            ),
            ("socket:///tmp/r.sock", "write redis+socket://"),
            ("redis+socket://", "no path"),
            ("hunter2", "not a valid URL"),
            ("redis+unix://", "no path"),
            ("redis://u:hunter2@h:0", "port 0"),
            ("redis://u:123/hunter2@h", "percent-encode the password"),
            (
                "redis://default:hunter2/w@h:6379/0",
                "percent-encode the password",
            ),
            ("redis://:hunter2#x@h:6379/0", "percent-encode the password"),
            ("redis://:hun?ter2@h:6379", "percent-encode the password"),
            (
                "redis://u:hunter2@h:6379/0/w@x",
                "percent-encode the password",
            ),
        ];
        for (input, want) in cases {
            let err = Target::parse(Role::Cache, input).unwrap_err();
            assert!(err.0.contains(want), "{input}: {}", err.0);
            assert!(!err.0.contains("hunter2"), "{input}: {}", err.0);
        }
    }

    /// Each form as redis-py (cache), kombu (broker) and Celery (result backend) read it,
    /// from their 2026 releases (redis 8.1, kombu 5.7, celery 5.7; checked against them in
    /// tests/urls.rs): the redacted URL, or "warn:" and a piece of the warning.
    #[test]
    fn forms_are_read_as_each_library_reads_them() {
        let cases: &[(&str, [&str; 3])] = &[
            (
                "redis://h:6380/2",
                ["redis://h:6380/2", "redis://h:6380/2", "redis://h:6380/2"],
            ),
            // redis-py and Celery let ?db= win over the path; kombu refuses the parameter.
            (
                "redis://h/2?db=3",
                ["redis://h:6379/3", "redis://h:6379/2", "redis://h:6379/3"],
            ),
            (
                "redis+socket:///tmp/r.sock?virtual_host=2",
                [
                    "unix:///tmp/r.sock?db=2",
                    "unix:///tmp/r.sock?db=2",
                    "unix:///tmp/r.sock?db=2",
                ],
            ),
            (
                "redis+socket:///tmp/r.sock?db=2",
                [
                    "unix:///tmp/r.sock?db=2",
                    "unix:///tmp/r.sock?db=0",
                    "unix:///tmp/r.sock?db=2",
                ],
            ),
            (
                "unix://:pw@/tmp/r.sock?db=2",
                [
                    "unix://:***@/tmp/r.sock?db=2",
                    "unix://:***@/tmp/r.sock?db=2",
                    "unix://:***@/tmp/r.sock?db=2",
                ],
            ),
            // kombu: rediss:// without ssl options does not verify; redis-py does.
            (
                "rediss://h",
                [
                    "rediss://h:6379/0",
                    "rediss://h:6379/0?ssl_cert_reqs=none",
                    "rediss://h:6379/0",
                ],
            ),
            // kombu makes TLS of a redis:// URL with ssl_ parameters.
            (
                "redis://h?ssl_cert_reqs=required",
                ["redis://h:6379/0", "rediss://h:6379/0", "redis://h:6379/0"],
            ),
            (
                "rediss://h?ssl_cert_reqs=CERT_NONE",
                ["rediss://h:6379/0?ssl_cert_reqs=none"; 3],
            ),
            // Celery lets ?password= override the URL's; redis-py only fills a missing one.
            ("redis://u:p@h/0?password=q", ["redis://u:***@h:6379/0"; 3]),
        ];
        for (input, want) in cases {
            for (role, want) in [Role::Cache, Role::Broker, Role::ResultBackend]
                .into_iter()
                .zip(want)
            {
                let t = Target::parse(role, input)
                    .unwrap_or_else(|e| panic!("{input} {role:?}: {e:?}"));
                assert_eq!(t.redacted(), *want, "{input} as {role:?}");
            }
        }
        let pw = |role, input| {
            Target::parse(role, input)
                .unwrap()
                .password()
                .map(str::to_string)
        };
        assert_eq!(
            pw(Role::Cache, "redis://u:p@h/0?password=q").as_deref(),
            Some("p")
        );
        assert_eq!(
            pw(Role::ResultBackend, "redis://u:p@h/0?password=q").as_deref(),
            Some("q")
        );
        assert_eq!(
            pw(Role::Cache, "unix:///s?password=a+b%2B").as_deref(),
            Some("a b+")
        );
    }

    #[test]
    fn what_the_app_would_refuse_is_a_warning_and_nothing_is_dropped_silently() {
        let warned = |role, input: &str, want: &str| {
            let read = Target::read(role, "V", input).unwrap();
            let all = [read.warnings.clone(), read.notes.clone()]
                .concat()
                .join(" | ");
            assert!(all.contains(want), "{input} {role:?}: {all}");
            assert!(!all.contains("s3cret"), "{all}");
        };
        warned(
            Role::Cache,
            "redis://h/abc",
            "redis-py ignores it and uses database 0",
        );
        warned(
            Role::Cache,
            "redis://:s3cret@:6379/0",
            "connects to localhost",
        );
        warned(
            Role::Cache,
            "redis+socket:///s?virtual_host=1",
            "redis-py refuses redis+socket://",
        );
        warned(Role::Cache, "REDIS://h", "only in lowercase");
        warned(
            Role::Cache,
            "redis://h?foo=s3cret",
            "unknown parameter \"foo\"",
        );
        warned(
            Role::Cache,
            "redis://h?socket_timeout=2",
            "V ?socket_timeout: not used by the probe",
        );
        warned(
            Role::Cache,
            "rediss://h?ssl_cert_reqs=CERT_NONE",
            "redis-py refuses ssl_cert_reqs=CERT_NONE",
        );
        warned(
            Role::Cache,
            "redis://h?ssl_ca_certs=/x",
            "refuses TLS parameters in a redis:// URL",
        );
        warned(
            Role::Broker,
            "redis://h?socket_timeout=2",
            "kombu refuses the parameter \"socket_timeout\"",
        );
        warned(Role::Broker, "unix:///s", "No such transport: unix");
        warned(Role::Broker, "redis+unix:///s", "127.0.0.1:6379");
        warned(Role::Broker, "rediss://h", "WITHOUT verifying");
        warned(Role::Broker, "redis://h/0;redis://h2/0", "failover URLs");
        warned(
            Role::Broker,
            "sentinel://h:26379;sentinel://h2:26379",
            "Sentinel",
        );
        warned(
            Role::ResultBackend,
            "rediss://h",
            "Celery refuses a rediss:// result backend without ssl_cert_reqs",
        );
        warned(
            Role::ResultBackend,
            "redis://h?ssl_cert_reqs=none",
            "Celery refuses TLS parameters",
        );
        warned(Role::ResultBackend, "unix:///s", "Celery refuses unix://");
        warned(
            Role::ResultBackend,
            "REDIS://h",
            "Celery accepts the scheme only in lowercase",
        );
        warned(Role::Cache, " redis://h", "whitespace around it");
        warned(
            Role::Cache,
            "redis://h?timeout=3",
            "unknown parameter \"timeout\"",
        );
        warned(
            Role::Cache,
            "unix:///s?socket_keepalive=1",
            "redis-py refuses the parameter \"socket_keepalive\" for this kind",
        );
        warned(
            Role::Cache,
            "redis://h?ssl_ciphers=x",
            "redis-py refuses the parameter \"ssl_ciphers\"",
        );
        warned(
            Role::Cache,
            "rediss://h?ssl_ciphers=x",
            "V ?ssl_ciphers: not used by the probe",
        );
        warned(
            Role::ResultBackend,
            "redis://h/1?virtual_host=2",
            "Celery ignores it here",
        );
        warned(
            Role::Broker,
            "redis://h?credential_provider=x",
            "cannot run a Python credential_provider",
        );
        // A "user" without a password may be the password: never shown.
        warned(Role::Cache, "redis://s3cret@h", "a user and no password");
        let t = Target::parse(Role::Cache, "redis://s3cret@h").unwrap();
        assert_eq!(t.redacted(), "redis://***@h:6379/0");
        assert_eq!(t.user_shown(), "***");
        assert_eq!(t.auth(), Some((Some("s3cret"), "")));
        assert_eq!(
            Target::parse(Role::Cache, "redis://h").unwrap().auth(),
            None
        );
        assert_eq!(
            Target::parse(Role::Cache, "redis://:pw@h").unwrap().auth(),
            Some((None, "pw"))
        );
        for bad in [
            "redis://:s3c[ret@h:6379/0",
            "redis://:s3[c]ret@h:6379/0",
            "unix://:s3cr/et@/run/redis.sock",
            "redis://:12?s3cret=x@h:6379/0",
        ] {
            let e = Target::parse(Role::Cache, bad).unwrap_err().0;
            assert!(e.contains("percent-encode"), "{bad}: {e}");
            assert!(!e.contains("s3c"), "{e}");
        }
        let read = Target::read(Role::Broker, "V", "sentinel://:s3cret@h:26379").unwrap();
        assert!(read.target.is_none());
        // The broker's db comes from the path, as kombu's virtual host.
        assert!(
            Target::parse(Role::Broker, "redis://h/abc")
                .unwrap_err()
                .0
                .contains("database \"abc\"")
        );
    }

    #[test]
    fn same_connection_merges_roles_in_fixed_order() {
        let mut broker = Target::parse(Role::Broker, "redis://:pw@h:6379/0").unwrap();
        let cache = Target::parse(Role::Cache, "redis://:pw@h:6379").unwrap();
        let backend = Target::parse(Role::ResultBackend, "redis://:pw@h:6379/1").unwrap();
        let other_pw = Target::parse(Role::ResultBackend, "redis://:other@h:6379/0").unwrap();
        assert!(broker.same_connection(&cache));
        assert!(!broker.same_connection(&backend));
        assert!(!broker.same_connection(&other_pw));
        broker.absorb(&cache);
        assert_eq!(broker.roles(), [Role::Cache, Role::Broker]);
        assert_eq!(broker.check_names(), ["redis:cache", "redis:broker"]);
    }

    #[test]
    fn an_unencoded_at_sign_alone_is_read_as_the_app_reads_it() {
        // The last @ ends the user information, as in Python's urllib.
        let t = Target::parse(Role::Cache, "redis://default:p@ss@h:6379/0").unwrap();
        assert_eq!(t.password(), Some("p@ss"));
        assert_eq!(t.redacted(), "redis://default:***@h:6379/0");
    }

    #[test]
    fn fixes_name_the_variables_that_were_set() {
        let url = Target::parse(Role::Cache, "redis://h").unwrap();
        assert_eq!(
            url.clone().with_source("REDIS_URL").password_fix(),
            "put it in the URL of REDIS_URL (redis://default:PASSWORD@host:port)"
        );
        let mut parts = Target::from_parts("h", 6379, None, None);
        assert_eq!(parts.password_fix(), "set REDISPASSWORD");
        assert_eq!(parts.credentials_home(), "REDISUSER/REDISPASSWORD");
        parts.absorb(&url.with_source("CELERY_BROKER_URL"));
        assert_eq!(
            parts.password_fix(),
            "set REDISPASSWORD; put it in the URL of CELERY_BROKER_URL (redis://default:PASSWORD@host:port)"
        );
        assert_eq!(
            parts.credentials_home(),
            "REDISUSER/REDISPASSWORD and the URL in CELERY_BROKER_URL"
        );
    }

    #[test]
    fn parts_build_a_redacted_url() {
        let t = Target::from_parts("redis.railway.internal", 6379, Some("default"), Some("pw"));
        assert_eq!(
            t.redacted(),
            "redis://default:***@redis.railway.internal:6379/0"
        );
        let t = Target::from_parts("::1", 6380, None, None);
        assert_eq!(t.redacted(), "redis://[::1]:6380/0");
    }
}
